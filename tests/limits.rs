//! Hostile input through the real binary and its socket (security review L1, L2, L3, M2):
//! every out-of-range value gets a 4xx naming the field, no request panics the daemon, a 500
//! says nothing of its cause, and what the CLI prints cannot drive the terminal.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use common::{Daemon, http, id, make_csr, openssl};

/// POSTs `body` (JSON) to `path`; returns the status and the parsed error body.
fn post(d: &Daemon, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
    let (status, text) = http(&d.socket, "POST", path, Some(body.to_string().as_bytes()));
    (status, parse(status, &text))
}

fn get(d: &Daemon, path: &str) -> (u16, serde_json::Value) {
    let (status, text) = http(&d.socket, "GET", path, None);
    (status, parse(status, &text))
}

fn parse(status: u16, text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{status}: not JSON ({e}): {text:?}"))
}

/// Asserts an error answer: status, code, and every needle in the message.
fn refused(answer: (u16, serde_json::Value), status: u16, code: &str, needles: &[&str]) {
    let (got, body) = answer;
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert_eq!(got, status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    for needle in needles {
        assert!(message.contains(needle), "{needle:?} not in {message:?}");
    }
}

fn no_panics(d: &Daemon) {
    let log = d.log_text();
    assert!(!log.contains("panicked"), "the daemon panicked:\n{log}");
}

fn csr(d: &Daemon, stem: &str, san: &str) -> String {
    make_csr(d.dir.path(), stem, &format!("{stem}.internal"), san);
    std::fs::read_to_string(d.path(&format!("{stem}.csr"))).unwrap()
}

/// L1: each of the review's overflow panics (ca.rs:307 through request and sign, ca.rs:325,
/// store/sqlite.rs:788), sent as the review sent it. Before: 500 with the panic text, or a
/// dropped connection (status 0).
#[test]
fn durations_past_a_hundred_years_are_refused_naming_the_field() {
    let d = Daemon::start();
    let csr = csr(&d, "a", "DNS:a.internal");
    for validity in ["3000000d", "30000000000000w"] {
        let body = serde_json::json!({ "domains": ["a.internal"], "validity": validity });
        refused(
            post(&d, "/v1/certificates", &body),
            422,
            "invalid-json",
            &["validity", validity, "100 years"],
        );
        let body = serde_json::json!({ "csr": csr, "validity": validity });
        refused(
            post(&d, "/v1/sign", &body),
            422,
            "invalid-json",
            &["validity", validity],
        );
    }
    let body = serde_json::json!({ "name": "big", "validity": "3000000d" });
    refused(
        post(&d, "/v1/cas", &body),
        422,
        "invalid-json",
        &["validity", "100 years"],
    );
    refused(
        get(&d, "/v1/certificates?expiring_within=3000000d"),
        400,
        "invalid-input",
        &["expiring_within", "100 years"],
    );
    // The longest span there is works where no other bound applies.
    let (status, body) = get(&d, "/v1/certificates?expiring_within=36525d");
    assert_eq!(status, 200, "{body}");
    no_panics(&d);
}

/// L1, L2: the per-field ranges of the API (README "Limits").
#[test]
fn request_fields_are_range_checked() {
    let d = Daemon::start();
    let csr = csr(&d, "b", "DNS:b.internal");
    let request = |extra: serde_json::Value| {
        let mut body = serde_json::json!({ "domains": ["b.internal"] });
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };
    for (extra, needles) in [
        (
            serde_json::json!({ "renew_before": "3651d" }),
            &["renew_before: 3651d is outside 1s..=3650d"][..],
        ),
        (
            serde_json::json!({ "days_before_expiry": 4294967295u32 }),
            &["days_before_expiry: 4294967295 is outside 1..=365"],
        ),
        (
            serde_json::json!({ "days_before_expiry": 0 }),
            &["days_before_expiry: 0 is outside 1..=365"],
        ),
        (
            serde_json::json!({ "window": "0 2 * * 0", "window_duration": "32d" }),
            &["window_duration: 32d is outside 1m..=31d"],
        ),
        (
            serde_json::json!({ "validity": "30s" }),
            &["validity: 30s is outside 1m..=36525d"],
        ),
    ] {
        refused(
            post(&d, "/v1/certificates", &request(extra)),
            422,
            "invalid-input",
            needles,
        );
    }
    // The review's renew_before, refused when parsed.
    refused(
        post(
            &d,
            "/v1/certificates",
            &request(serde_json::json!({ "renew_before": "3000000d" })),
        ),
        422,
        "invalid-json",
        &["renew_before", "100 years"],
    );
    // The review's explain panic started with sign (and import) taking any number.
    let body = serde_json::json!({ "csr": csr, "days_before_expiry": 4294967295u32 });
    refused(
        post(&d, "/v1/sign", &body),
        422,
        "invalid-input",
        &["days_before_expiry", "1..=365"],
    );
    let signed = d.ok(&["sign", "--csr", "b.csr", "--validity", "2d"]);
    d.write("b.pem", common::first_certificate(&signed));
    let body = serde_json::json!({
        "certificate": std::fs::read_to_string(d.path("b.pem")).unwrap(),
        "private_key": std::fs::read_to_string(d.path("b.key")).unwrap(),
        "days_before_expiry": 4294967295u32,
    });
    refused(
        post(&d, "/v1/certificates/import", &body),
        422,
        "invalid-input",
        &["days_before_expiry", "1..=365"],
    );
    assert_eq!(d.count(), 1, "only the plain sign stored a certificate");
    no_panics(&d);
}

/// Runs `sql` on certificate `cert`'s row while the daemon is stopped, then starts it again:
/// what an older version or a damaged file may have left.
fn change_row(d: &mut Daemon, sql: &str, cert: &str) {
    d.stop();
    let db = rusqlite::Connection::open(d.state_dir.join("certkeeper.db")).unwrap();
    assert_eq!(db.execute(sql, [cert]).unwrap(), 1);
    drop(db);
    d.spawn();
}

/// L1 (`inventory/explain.rs:120`): a row stored before requests were checked holds
/// days_before_expiry 4294967295. Before: every `explain` of it panicked (no answer).
#[test]
fn explain_answers_for_an_out_of_range_stored_threshold() {
    let mut d = Daemon::start();
    let cert = id(&d.json(&["request", "old.internal"]));
    change_row(
        &mut d,
        "UPDATE certificates SET days_before_expiry = 4294967295 WHERE id = ?",
        &cert,
    );
    let (status, body) = get(&d, &format!("/v1/certificates/{cert}/explain"));
    assert_eq!(status, 200, "{body}");
    let reasons = body["reasons"].to_string();
    assert!(reasons.contains("days-before-expiry 365"), "{reasons}");
    no_panics(&d);
}

/// L1: a 500 names no cause; the log does. The row's origin is damaged, so reading it fails.
#[test]
fn an_internal_error_keeps_its_cause_in_the_log() {
    let mut d = Daemon::start();
    let cert = id(&d.json(&["request", "bad.internal"]));
    change_row(
        &mut d,
        "UPDATE certificates SET origin = 'bogus-origin' WHERE id = ?",
        &cert,
    );
    let answer = get(&d, &format!("/v1/certificates/{cert}"));
    let text = answer.1.to_string();
    refused(
        answer,
        500,
        "internal",
        &["the daemon's log has the details"],
    );
    assert!(!text.contains("bogus-origin"), "{text}");
    assert!(d.log_text().contains("bogus-origin"), "{}", d.log_text());
}

/// L2: names, common names and domains that are not what they look like.
#[test]
fn names_and_domains_that_mislead_are_refused() {
    let d = Daemon::start();
    for common_name in [
        "nul\u{0}x",
        "two\nlines",
        "\u{1b}[2J\u{1b}]0;pwned",
        &"x".repeat(65),
    ] {
        let body = serde_json::json!({ "name": "esc", "common_name": common_name });
        refused(
            post(&d, "/v1/cas", &body),
            422,
            "invalid-input",
            &["invalid common name"],
        );
    }
    refused(
        post(&d, "/v1/cas", &serde_json::json!({ "name": ".." })),
        422,
        "invalid-input",
        &["invalid CA name \"..\""],
    );
    let body = serde_json::json!({ "domains": ["dots.internal"], "name": ".." });
    refused(
        post(&d, "/v1/certificates", &body),
        422,
        "invalid-input",
        &["invalid certificate name \"..\""],
    );
    for domain in ["1.2.3.4.", "010.1.1.1"] {
        let body = serde_json::json!({ "domains": [domain] });
        refused(
            post(&d, "/v1/certificates", &body),
            422,
            "invalid-input",
            &[domain, "reads as an IP address"],
        );
    }
    let many: Vec<String> = (0..101).map(|i| format!("h{i}.internal")).collect();
    refused(
        post(
            &d,
            "/v1/certificates",
            &serde_json::json!({ "domains": many }),
        ),
        422,
        "invalid-input",
        &["101 names", "at most 100"],
    );
    let sans: Vec<String> = many.iter().map(|n| format!("DNS:{n}")).collect();
    let csr = csr(&d, "many", &sans.join(","));
    refused(
        post(&d, "/v1/sign", &serde_json::json!({ "csr": csr })),
        422,
        "invalid-input",
        &["at most 100"],
    );
    let hundred = serde_json::json!({ "domains": &many[..100] });
    let (status, body) = post(&d, "/v1/certificates", &hundred);
    assert_eq!(status, 201, "{body}");
    assert_eq!(d.count(), 1);
    no_panics(&d);
}

/// L2: an imported certificate's issuer DN holding terminal escapes prints inert.
#[test]
fn describe_prints_control_characters_as_escapes() {
    let d = Daemon::start();
    let dir = d.dir.path();
    let evil = "/CN=evil\u{1b}[2J\u{1b}]0;pwned\u{7}";
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "evil.key",
            "-out",
            "evil.pem",
            "-days",
            "30",
            "-utf8",
            "-subj",
            evil,
        ],
    );
    make_csr(dir, "leaf", "leaf.internal", "DNS:leaf.internal");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "evil.pem",
            "-CAkey",
            "evil.key",
            "-days",
            "20",
            "-copy_extensions",
            "copy",
            "-out",
            "leaf.pem",
        ],
    );
    let cert = id(&d.json(&[
        "import",
        "--certificate",
        "leaf.pem",
        "--private-key",
        "leaf.key",
    ]));
    let shown = d.ok(&["describe", &cert]);
    assert!(
        !shown.contains('\u{1b}') && !shown.contains('\u{7}'),
        "{shown:?}"
    );
    let issuer = shown.lines().find(|l| l.starts_with("issuer:")).unwrap();
    assert!(
        issuer.contains("evil\\u{1b}[2J\\u{1b}]0;pwned\\u{7}"),
        "{issuer}"
    );
    let listed = d.ok(&["list"]);
    assert!(!listed.contains('\u{1b}'), "{listed:?}");
}

/// L3: a 405 has a JSON body like every other error (it was empty).
#[test]
fn an_unknown_method_gets_a_json_error() {
    let d = Daemon::start();
    let (status, text) = http(&d.socket, "PATCH", "/v1/certificates", Some(b"{}"));
    refused(
        (status, parse(status, &text)),
        405,
        "method-not-allowed",
        &["does not take PATCH"],
    );
}

/// L3: 3,000 `tag=` filters gave a 500 ("Expression tree is too large").
#[test]
fn list_filters_are_capped() {
    let d = Daemon::start();
    let tags: Vec<String> = (0..3000).map(|i| format!("tag=k{i}")).collect();
    refused(
        get(&d, &format!("/v1/certificates?{}", tags.join("&"))),
        400,
        "too-many-filters",
        &["tag", "at most 50"],
    );
    let fifty: Vec<String> = (0..50).map(|i| format!("tag=k{i}")).collect();
    let (status, body) = get(&d, &format!("/v1/certificates?{}", fifty.join("&")));
    assert_eq!(status, 200, "{body}");
    // Repeating a status does not grow the query.
    let statuses = vec!["issued"; 5000].join(",");
    let (status, body) = get(&d, &format!("/v1/certificates?status={statuses}"));
    assert_eq!(status, 200, "{body}");
}

/// L3: an unsupported CSR key is named, not reported as a signature that does not verify.
#[test]
fn unsupported_csr_keys_are_named() {
    let d = Daemon::start();
    let dir = d.dir.path();
    for (stem, key, needle) in [
        ("rsa1024", &["rsa:1024"][..], "RSA 1024-bit"),
        (
            "p521",
            &["ec", "-pkeyopt", "ec_paramgen_curve:P-521"],
            "EC P-521",
        ),
        (
            "k256",
            &["ec", "-pkeyopt", "ec_paramgen_curve:secp256k1"],
            "EC curve",
        ),
    ] {
        let mut args = vec!["req", "-new", "-newkey"];
        args.extend(key);
        let keyout = format!("{stem}.key");
        let out = format!("{stem}.csr");
        args.extend([
            "-nodes",
            "-keyout",
            &keyout,
            "-subj",
            "/CN=k.internal",
            "-out",
            &out,
        ]);
        openssl(dir, &args);
        let csr = std::fs::read_to_string(d.path(&out)).unwrap();
        refused(
            post(&d, "/v1/sign", &serde_json::json!({ "csr": csr })),
            422,
            "invalid-input",
            &["unsupported key type", needle],
        );
    }
    no_panics(&d);
}
