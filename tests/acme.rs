//! Public certificates from a real ACME CA (Pebble), through the real binary.
//!
//! HTTP-01 here: Knot answers the test domains' A records (127.0.0.1), Pebble resolves them
//! there and fetches the challenge from certkeeper's own responder on Pebble's HTTP port.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::time::{Duration, Instant};

use common::peers::{
    Knot, Pebble, PebbleOptions, Unbound, dns_lookup, free_port, loopback, random_eab,
};
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

// ---------------------------------------------------------------------------------------------
// DNS-01 through CNAME delegation.
//
// Knot serves the customer's zone `customer.test.` (where the `_acme-challenge` CNAMEs go) and,
// for the rfc2136 publisher, the validation zone `acme.test.`; with the embedded publisher
// certkeeper serves `acme.test.` itself. unbound resolves both zones for Pebble's VA and for
// certkeeper's delegation checks, following the CNAME from one zone into the other.

/// `[[acme]]` for `pebble` with DNS-01 through `acme.test.` published by `publisher` (TOML
/// lines of `[validation.dns]`), checked through `resolver`.
fn dns_config(pebble: &Pebble, resolver: std::net::SocketAddr, publisher: &str) -> String {
    format!(
        "[[acme]]\nname = \"pebble\"\ndirectory = {:?}\ncontact = [\"mailto:ops@customer.test\"]\ntrusted-roots = {:?}\n\n\
         [validation.dns]\nzone = \"acme.test\"\nnameservers = [\"{resolver}\"]\nttl = 5\n{publisher}\n",
        pebble.directory_url,
        pebble.tls_root_pem.display().to_string(),
    )
}

fn request_dns(daemon: &Daemon, names: &[&str]) -> serde_json::Value {
    let mut args = vec!["request"];
    args.extend_from_slice(names);
    args.extend_from_slice(&["--issuer", "pebble", "--validation", "dns"]);
    daemon.json(&args)
}

/// Waits until `cert` is issued, tolerating failed attempts while its validation is pending
/// (the CNAME not there yet): those are retried by the daemon.
fn wait_issued_after_retries(daemon: &Daemon, cert: &str, timeout: Duration) -> serde_json::Value {
    let deadline = Instant::now() + timeout;
    loop {
        let c = daemon.json(&["describe", cert]);
        assert_ne!(
            c["status"],
            "validation-timed-out",
            "{c:#}\n{}",
            daemon.log_text()
        );
        if c["status"] == "issued" {
            return c;
        }
        assert!(
            Instant::now() < deadline,
            "not issued after {timeout:?}: {c:#}\n{}",
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn san_text(daemon: &Daemon, cert: &str) -> String {
    daemon.write("leaf.pem", daemon.ok(&["get", cert, "--part", "cert"]));
    openssl(
        daemon.dir.path(),
        &[
            "x509",
            "-in",
            "leaf.pem",
            "-noout",
            "-ext",
            "subjectAltName",
        ],
    )
}

#[test]
fn dns01_with_the_embedded_server_waits_for_the_cname_then_issues_a_wildcard() {
    let knot = Knot::start(&["customer.test."]);
    let embedded = loopback(free_port());
    let unbound = Unbound::start(&[("customer.test.", knot.addr), ("acme.test.", embedded)]);
    let pebble = Pebble::start(PebbleOptions::new(unbound.addr));
    let publisher = format!("publisher = \"embedded\"\nlisten = \"{embedded}\"\n");
    let daemon = Daemon::start_with(Some(&dns_config(&pebble, unbound.addr, &publisher)));

    // The embedded server answers for the validation zone before the daemon is ready.
    let ns = dns_lookup(embedded, "acme.test.", "NS");
    assert_eq!(ns.rdata(), ["ns.acme.test."], "{ns:?}");

    let requested = request_dns(&daemon, &["*.shop.customer.test", "shop.customer.test"]);
    assert_eq!(requested["status"], "pending-validation");
    let cert = id(&requested);

    // One CNAME serves the wildcard and its base; describe shows it, exactly.
    let records = requested["validation_records"].as_array().unwrap().clone();
    assert_eq!(records.len(), 1, "{requested:#}");
    let name = records[0]["Name"].as_str().unwrap().to_owned();
    let target = records[0]["Value"].as_str().unwrap().to_owned();
    assert_eq!(name, "_acme-challenge.shop.customer.test.");
    assert_eq!(records[0]["Type"], "CNAME");
    assert!(target.ends_with(".acme.test."), "{target}");
    let table = daemon.ok(&["describe", &cert, "--output", "table"]);
    assert!(table.contains(&name) && table.contains(&target), "{table}");

    // Without the CNAME the daemon keeps the certificate pending and says what is missing;
    // no order is placed (the CA would only fail it).
    let waiting = wait_until(Duration::from_secs(30), "a first attempt", || {
        let c = daemon.json(&["describe", &cert]);
        c["renewal"]["reason"].is_string().then_some(c)
    });
    let reason = waiting["renewal"]["reason"].as_str().unwrap();
    assert!(
        reason.contains(&name) && reason.contains(&target) && reason.contains("does not exist"),
        "{reason}"
    );
    assert_eq!(waiting["status"], "pending-validation");
    assert!(!daemon.log_text().contains("ACME order created"));
    // Asking for it now gets the same answer, as a conflict rather than a CA failure.
    let stderr = daemon.ck(&["renew", &cert]);
    assert!(!stderr.status.success());
    assert!(
        String::from_utf8_lossy(&stderr.stderr).contains("does not exist yet"),
        "{stderr:?}"
    );

    // The customer creates the CNAME; the next retry issues.
    knot.nsupdate(
        "customer.test.",
        &[&format!("update add {name} 60 CNAME {target}")],
    );
    let issued = wait_issued_after_retries(&daemon, &cert, Duration::from_secs(120));
    assert_eq!(issued["current_version"], 1);
    let sans = san_text(&daemon, &cert);
    assert!(
        sans.contains("DNS:*.shop.customer.test") && sans.contains("DNS:shop.customer.test"),
        "{sans}"
    );

    // Both challenge TXT records (wildcard and base share the name) were withdrawn.
    let label = target.trim_end_matches('.');
    let txt = dns_lookup(embedded, label, "TXT");
    assert!(txt.txt().is_empty(), "{txt:?}");

    // A renewal needs no human: the same CNAME serves it.
    let renewed = daemon.json(&["renew", &cert]);
    assert_eq!(renewed["current_version"], 2);
}

#[test]
fn dns01_through_rfc2136_survives_a_restart_mid_order_and_a_flaky_ca() {
    let knot = Knot::start(&["customer.test.", "acme.test."]);
    let unbound = Unbound::start(&[("customer.test.", knot.addr), ("acme.test.", knot.addr)]);
    // badNonce on 30 % of requests and the VA's random 0–15 s sleep before each validation.
    let pebble = Pebble::start(PebbleOptions {
        nonce_reject_percent: 30,
        va_sleep: true,
        ..PebbleOptions::new(unbound.addr)
    });
    let publisher = format!(
        "publisher = \"rfc2136\"\nserver = \"{}\"\nkey-name = \"{}\"\nkey-file = {:?}\n",
        knot.addr,
        knot.tsig_name,
        knot.tsig_key_file.display().to_string()
    );
    let config = dns_config(&pebble, unbound.addr, &publisher);
    let mut daemon = Daemon::start_with(Some(&config));

    // The delegation exists before the request (the usual case once it was set up).
    let records = daemon.json(&[
        "request",
        "api.customer.test",
        "--issuer",
        "pebble",
        "--validation",
        "dns",
    ]);
    let cert = id(&records);
    let record = &records["validation_records"][0];
    let (name, target) = (
        record["Name"].as_str().unwrap().to_owned(),
        record["Value"].as_str().unwrap().to_owned(),
    );
    knot.nsupdate(
        "customer.test.",
        &[&format!("update add {name} 60 CNAME {target}")],
    );

    // Killed once the order exists and its challenge is published at Knot.
    let label = target.trim_end_matches('.').to_owned();
    wait_until(Duration::from_secs(90), "the challenge TXT at Knot", || {
        (!knot.lookup(&label, "TXT").txt().is_empty()).then_some(())
    });
    assert!(daemon.log_text().contains("ACME order created"));
    daemon.kill();
    daemon.spawn();

    let issued = wait_issued_after_retries(&daemon, &cert, Duration::from_secs(180));
    assert_eq!(issued["current_version"], 1, "one certificate, not two");
    let log = daemon.log_text();
    assert!(
        log.contains("resuming the ACME order in flight"),
        "the order was resumed, not replaced:\n{log}"
    );
    let sans = san_text(&daemon, &cert);
    assert!(sans.contains("DNS:api.customer.test"), "{sans}");
    // What the killed run left at Knot was withdrawn by the run that finished the order.
    assert!(knot.lookup(&label, "TXT").txt().is_empty());
}

#[test]
fn dns01_gives_up_after_the_validation_timeout() {
    let knot = Knot::start(&["customer.test."]);
    let embedded = loopback(free_port());
    let unbound = Unbound::start(&[("customer.test.", knot.addr), ("acme.test.", embedded)]);
    let pebble = Pebble::start(PebbleOptions::new(unbound.addr));
    let publisher = format!("publisher = \"embedded\"\nlisten = \"{embedded}\"\n");
    let config = format!(
        "[validation]\ntimeout = \"10s\"\n\n{}",
        dns_config(&pebble, unbound.addr, &publisher)
    );
    let daemon = Daemon::start_with(Some(&config));
    let cert = id(&request_dns(&daemon, &["late.customer.test"]));

    let timed_out = wait_until(Duration::from_secs(90), "the validation timeout", || {
        let c = daemon.json(&["describe", &cert]);
        (c["status"] == "validation-timed-out").then_some(c)
    });
    assert_eq!(timed_out["current_version"], 0);
    let events = events_of(&daemon, &cert);
    let last = events.last().unwrap();
    assert_eq!(
        last["detail-type"], "Certificate Renewal Action Required",
        "{events:#?}"
    );
    let reason = last["detail"]["RenewalStatusReason"].as_str().unwrap();
    assert!(
        reason.contains("validation timed out")
            && reason.contains("_acme-challenge.late.customer.test."),
        "{reason}"
    );
    // It is no longer retried.
    let attempts = daemon.log_text().matches("renewal failed").count();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        daemon.log_text().matches("renewal failed").count(),
        attempts
    );
}
