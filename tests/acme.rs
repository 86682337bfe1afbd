//! Public certificates from a real ACME CA (Pebble), through the real binary.
//!
//! HTTP-01 here: Knot answers the test domains' A records (127.0.0.1), Pebble resolves them
//! there and fetches the challenge from certkeeper's own responder on Pebble's HTTP port.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::time::{Duration, Instant};

use common::peers::{Knot, Pebble, PebbleOptions, random_eab};
use common::{Daemon, id, openssl};

fn wait_until<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = f() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Knot serving `customer.test.` with A records for `names`.
fn customer_zone(names: &[&str]) -> Knot {
    let knot = Knot::start(&["customer.test."]);
    let updates: Vec<String> = names
        .iter()
        .map(|n| format!("update add {n}. 60 A 127.0.0.1"))
        .collect();
    let updates: Vec<&str> = updates.iter().map(String::as_str).collect();
    knot.nsupdate("customer.test.", &updates);
    knot
}

fn config(pebble: &Pebble, extra: &str) -> String {
    format!(
        "[[acme]]\nname = \"pebble\"\ndirectory = {:?}\ncontact = [\"mailto:ops@customer.test\"]\ntrusted-roots = {:?}\n{extra}\n\
         [validation.http]\nlisten = \"127.0.0.1:{}\"\n",
        pebble.directory_url,
        pebble.tls_root_pem.display().to_string(),
        pebble.http_port
    )
}

fn events_of(daemon: &Daemon, cert: &str) -> Vec<serde_json::Value> {
    daemon
        .ok(&["events", "--output", "json"])
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["resources"][0] == cert)
        .collect()
}

fn wait_issued(daemon: &Daemon, cert: &str) -> serde_json::Value {
    wait_until(
        Duration::from_secs(90),
        "the certificate to be issued",
        || {
            let c = daemon.json(&["describe", cert]);
            if c["renewal"]["status"] == "failed" {
                panic!("issuance failed: {c:#}\n{}", daemon.log_text());
            }
            (c["status"] == "issued").then_some(c)
        },
    )
}

#[test]
fn http01_issues_a_public_certificate_that_chains_to_the_ca() {
    let knot = customer_zone(&["www.customer.test", "app.customer.test"]);
    let pebble = Pebble::start(PebbleOptions::new(knot.addr));
    let daemon = Daemon::start_with(Some(&config(&pebble, "")));

    let requested = daemon.json(&[
        "request",
        "www.customer.test",
        "app.customer.test",
        "--issuer",
        "pebble",
        "--validation",
        "http",
    ]);
    assert_eq!(requested["origin"], "public");
    assert_eq!(requested["status"], "pending-validation");
    assert_eq!(requested["current_version"], 0);
    let cert = id(&requested);

    let issued = wait_issued(&daemon, &cert);
    assert_eq!(issued["current_version"], 1);
    assert_eq!(issued["issuer"], "pebble");
    assert!(
        issued["next_renewal_at"].is_string(),
        "public certificates renew by themselves"
    );

    // The chain verifies against Pebble's issuing root, fetched from its management API.
    let dir = daemon.dir.path();
    daemon.write("root.pem", pebble.issuance_root_pem());
    daemon.write("leaf.pem", daemon.ok(&["get", &cert, "--part", "cert"]));
    daemon.write("chain.pem", daemon.ok(&["get", &cert, "--part", "chain"]));
    let verified = openssl(
        dir,
        &[
            "verify",
            "-CAfile",
            "root.pem",
            "-untrusted",
            "chain.pem",
            "leaf.pem",
        ],
    );
    assert!(verified.contains("leaf.pem: OK"), "{verified}");
    let text = openssl(
        dir,
        &[
            "x509",
            "-in",
            "leaf.pem",
            "-noout",
            "-ext",
            "subjectAltName",
        ],
    );
    assert!(
        text.contains("DNS:www.customer.test") && text.contains("DNS:app.customer.test"),
        "{text}"
    );

    // The key is ours and exportable.
    let pass = daemon.write("pass.txt", "correct horse\n");
    daemon.ok(&[
        "export",
        &cert,
        "--passphrase-file",
        pass.to_str().unwrap(),
        "--out",
        "bundle.pem",
    ]);
    let key_pub = openssl(
        dir,
        &[
            "pkey",
            "-in",
            "bundle.pem",
            "-passin",
            "pass:correct horse",
            "-pubout",
        ],
    );
    let cert_pub = openssl(dir, &["x509", "-in", "leaf.pem", "-noout", "-pubkey"]);
    assert_eq!(key_pub, cert_pub);

    let events = events_of(&daemon, &cert);
    let types: Vec<&str> = events
        .iter()
        .map(|e| e["detail-type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        ["Certificate Validation Pending", "Certificate Available"],
        "{events:#?}"
    );
    assert_eq!(events[1]["detail"]["Action"], "ISSUANCE");
    assert_eq!(events[0]["detail"]["ValidationMethod"], "http");

    // A manual renewal through the same path: a new version from the CA.
    let renewed = daemon.json(&["renew", &cert]);
    assert_eq!(renewed["current_version"], 2);
    assert_ne!(renewed["serial"], issued["serial"]);

    // Revocation happens at the CA, for every version still valid.
    let revoked = daemon.json(&["revoke", &cert, "--reason", "key-compromise"]);
    assert_eq!(revoked["status"], "revoked");
    for serial in [&issued["serial"], &renewed["serial"]] {
        let hex = serial.as_str().unwrap().trim_start_matches('0');
        let status = pebble.get(&format!("/cert-status-by-serial/{hex}"));
        assert!(
            status.contains("Revoked"),
            "Pebble's view of {hex}: {status}"
        );
    }
}

#[test]
fn external_account_binding_is_required_by_the_ca_and_works_when_configured() {
    let knot = customer_zone(&["eab.customer.test"]);
    let (kid, key) = random_eab();
    let mut options = PebbleOptions::new(knot.addr);
    options.eab = Some((kid.clone(), key.clone()));
    let pebble = Pebble::start(options);

    // Without EAB: a clear reason on the certificate, not a silent failure.
    let without = Daemon::start_with(Some(&config(&pebble, "")));
    let cert = id(&without.json(&[
        "request",
        "eab.customer.test",
        "--issuer",
        "pebble",
        "--validation",
        "http",
    ]));
    let failed = wait_until(
        Duration::from_secs(60),
        "the failure to be recorded",
        || {
            let c = without.json(&["describe", &cert]);
            (c["renewal"]["status"] == "failed").then_some(c)
        },
    );
    let reason = failed["renewal"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("external account binding") && reason.contains("eab-kid"),
        "{reason}"
    );
    assert_eq!(failed["status"], "pending-validation");
    // The second daemon answers HTTP-01 on the same port.
    drop(without);

    // With it: issued.
    let staging = tempfile::tempdir().unwrap();
    let hmac = staging.path().join("eab.key");
    std::fs::write(&hmac, format!("{key}\n")).unwrap();
    let extra = format!(
        "eab-kid = {kid:?}\neab-hmac-file = {:?}\n",
        hmac.display().to_string()
    );
    let with = Daemon::start_with(Some(&config(&pebble, &extra)));
    let cert = id(&with.json(&[
        "request",
        "eab.customer.test",
        "--issuer",
        "pebble",
        "--validation",
        "http",
    ]));
    wait_issued(&with, &cert);
}

#[test]
fn public_requests_are_checked_before_they_are_accepted() {
    let knot = customer_zone(&[]);
    let pebble = Pebble::start(PebbleOptions::new(knot.addr));
    let daemon = Daemon::start_with(Some(&config(&pebble, "")));
    let cases: [(&[&str], &str); 4] = [
        (
            &[
                "request",
                "x.customer.test",
                "--issuer",
                "nope",
                "--validation",
                "http",
            ],
            "no ACME issuer named",
        ),
        (
            &[
                "request",
                "*.customer.test",
                "--issuer",
                "pebble",
                "--validation",
                "http",
            ],
            "wildcard",
        ),
        (
            &[
                "request",
                "x.customer.test",
                "--issuer",
                "pebble",
                "--validation",
                "dns",
            ],
            "not configured",
        ),
        (
            &[
                "request",
                "x.customer.test",
                "--issuer",
                "pebble",
                "--validation",
                "http",
                "--key-algorithm",
                "ed25519",
            ],
            "Ed25519",
        ),
    ];
    for (args, message) in cases {
        let stderr = daemon.fails(args, 65);
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
    assert_eq!(daemon.count(), 0);
}
