//! Public certificates from a real ACME CA (Pebble), through the real binary.
//!
//! HTTP-01 here: Knot answers the test domains' A records (127.0.0.1), Pebble resolves them
//! there and fetches the challenge from certkeeper's own responder on Pebble's HTTP port.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::time::{Duration, Instant};

use common::peers::{
    AriProxy, Knot, Nginx, Pebble, PebbleOptions, Unbound, dns_lookup, free_port, loopback,
    random_eab,
};
use common::{Daemon, id, openssl, wait_until};

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

/// The store files of `state_dir` (the database and its WAL, when there is one).
const STORE_FILES: [&str; 3] = ["certkeeper.db", "certkeeper.db-wal", "certkeeper.db-shm"];

/// Found by the crash torture (tests/torture/run): a daemon killed after the CA revoked a
/// certificate and before the store recorded it left the certificate `issued`, and every
/// later `revoke` failed with the CA's `alreadyRevoked` (502): it could never be revoked.
/// The store is put back here to where such a kill leaves it, the CA's revocation done.
#[test]
fn a_revocation_the_ca_already_made_is_recorded() {
    let knot = customer_zone(&["gone.customer.test"]);
    let pebble = Pebble::start(PebbleOptions::new(knot.addr));
    let mut daemon = Daemon::start_with(Some(&config(&pebble, "")));
    let cert = id(&daemon.json(&[
        "request",
        "gone.customer.test",
        "--issuer",
        "pebble",
        "--validation",
        "http",
    ]));
    let issued = wait_issued(&daemon, &cert);

    daemon.stop();
    let saved = daemon.path("before-revoke");
    std::fs::create_dir(&saved).unwrap();
    for file in STORE_FILES {
        let _ = std::fs::copy(daemon.state_dir.join(file), saved.join(file));
    }
    daemon.spawn();
    daemon.json(&["revoke", &cert, "--reason", "key-compromise"]);
    daemon.stop();
    for file in STORE_FILES {
        let _ = std::fs::remove_file(daemon.state_dir.join(file));
        let _ = std::fs::copy(saved.join(file), daemon.state_dir.join(file));
    }
    // The database is older than the daemon last left it, on purpose: accept it.
    std::fs::remove_file(daemon.state_dir.join("certkeeper.db.last-commit")).unwrap();
    daemon.spawn();
    assert_eq!(daemon.json(&["describe", &cert])["status"], "issued");

    let revoked = daemon.json(&["revoke", &cert, "--reason", "key-compromise"]);
    assert_eq!(revoked["status"], "revoked");
    let hex = issued["serial"].as_str().unwrap().trim_start_matches('0');
    let status = pebble.get(&format!("/cert-status-by-serial/{hex}"));
    assert!(status.contains("Revoked"), "Pebble's view: {status}");
}

/// A `renew` killed after the CA issued its certificate and before the store took it in:
/// the next start takes the certificate in from the kept order (nothing else would before
/// the next renewal is due, and the certificate would age unheld meanwhile). One order per
/// version, and the version is the CA's certificate.
#[test]
fn a_renew_killed_after_the_ca_issued_is_completed_at_the_next_start() {
    let (_knot, pebble, proxy, mut daemon, cert) = renewal_cut_off("resume.customer.test");
    proxy.control(serde_json::json!({"fail_downloads": 0}));
    daemon.spawn();

    let renewed = wait_until(Duration::from_secs(60), "the kept order taken in", || {
        let c = daemon.json(&["describe", &cert]);
        (c["current_version"] == 2).then_some(c)
    });
    let serials = pebble_serials(&pebble);
    assert_eq!(serials.len(), 2, "{serials:?}");
    assert_eq!(
        renewed["serial"].as_str().unwrap().trim_start_matches('0'),
        serials[1].trim_start_matches('0'),
        "the second version is the certificate the CA issued for the cut-off renewal"
    );
    assert_eq!(new_orders(&proxy).len(), 2, "one order per version");
    let log = daemon.log_text();
    assert!(
        log.contains("took in the certificate of an ACME order an interrupted attempt left"),
        "{log}"
    );
}

/// A certificate for `name` requested over HTTP-01 from Pebble (its VA sleeping when
/// `va_sleep`) behind the ARI proxy, whose knobs are set to `control` first.
fn proxied_http_request(
    name: &str,
    va_sleep: bool,
    control: serde_json::Value,
) -> (Knot, Pebble, AriProxy, Daemon, String) {
    let knot = customer_zone(&[name]);
    let pebble = Pebble::start(PebbleOptions {
        va_sleep,
        ..PebbleOptions::new(knot.addr)
    });
    let proxy = AriProxy::start(&pebble);
    proxy.control(control);
    let daemon = Daemon::start_with(Some(&proxied_config(&pebble, &proxy, "")));
    let cert = id(&daemon.json(&[
        "request",
        name,
        "--issuer",
        "pebble",
        "--validation",
        "http",
    ]));
    (knot, pebble, proxy, daemon, cert)
}

/// A certificate for `name` issued over HTTP-01 through the proxy, then a `renew` of it
/// with every certificate download failing at the proxy (which keeps failing them), and the
/// daemon SIGKILLed once one has failed: the CA issued the renewal, the store does not have
/// it, the order is kept. The daemon is left stopped.
fn renewal_cut_off(name: &str) -> (Knot, Pebble, AriProxy, Daemon, String) {
    let (knot, pebble, proxy, mut daemon, cert) = proxied_http_request(
        name,
        false,
        serde_json::json!({"windows": [[86400, 172800]]}),
    );
    wait_issued(&daemon, &cert);
    proxy.control(serde_json::json!({"fail_downloads": 1000}));
    std::thread::scope(|scope| {
        let renew = scope.spawn(|| daemon.ck(&["renew", &cert]));
        wait_until(Duration::from_secs(60), "a failed download", || {
            proxy
                .seen()
                .iter()
                .any(|e| e.get("certificate-download").is_some() && e["status"] == 503)
                .then_some(())
        });
        daemon.signal("KILL");
        assert!(!renew.join().unwrap().status.success());
    });
    daemon.kill();
    (knot, pebble, proxy, daemon, cert)
}

/// The serials Pebble logged issuing, in order (hex, as its management API takes them).
fn pebble_serials(pebble: &Pebble) -> Vec<String> {
    std::fs::read_to_string(&pebble.log)
        .unwrap()
        .lines()
        .filter_map(|l| l.split("Issued certificate serial ").nth(1))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// Found by the crash torture: a `renew` killed after the CA issued its certificate and
/// before the store took it in left that certificate in the kept order, and a later `revoke`
/// dropped the order with it: a live certificate for the names that nobody held or revoked.
/// The revocation now asks the CA for the kept order's certificate and revokes it too.
#[test]
fn a_revocation_takes_the_certificate_of_an_order_a_kill_cut_off() {
    let (_knot, pebble, proxy, mut daemon, cert) = renewal_cut_off("cut.customer.test");
    // At the start the certificate cannot be had either (the CA still fails it): the start
    // leaves the order kept, and it is there when the revocation comes.
    daemon.spawn();
    wait_until(Duration::from_secs(90), "the start to give up", || {
        daemon
            .log_text()
            .contains("could not tell whether the kept ACME order has a certificate")
            .then_some(())
    });
    proxy.control(serde_json::json!({"fail_downloads": 0}));
    assert_eq!(daemon.json(&["describe", &cert])["current_version"], 1);

    let revoked = daemon.json(&["revoke", &cert, "--reason", "key-compromise"]);
    assert_eq!(revoked["status"], "revoked");
    let serials = pebble_serials(&pebble);
    assert_eq!(
        serials.len(),
        2,
        "the issuance and the cut-off renewal: {serials:?}"
    );
    for serial in serials {
        let status = pebble.get(&format!("/cert-status-by-serial/{serial}"));
        assert!(
            status.contains("Revoked"),
            "Pebble's view of {serial}: {status}"
        );
    }
    let log = daemon.log_text();
    assert!(
        log.contains("revoked the certificate of the ACME order kept for it too"),
        "{log}"
    );
}

/// The same, with the CA unable to say at the revocation whether it issued for the kept order
/// (its downloads fail): the revocation is recorded, the order kept, and the next start asks
/// again and revokes that certificate too.
#[test]
fn a_kept_order_a_revocation_could_not_settle_is_settled_at_the_next_start() {
    let (_knot, pebble, proxy, mut daemon, cert) = renewal_cut_off("later.customer.test");
    daemon.spawn();
    let revoked = daemon.json(&["revoke", &cert, "--reason", "key-compromise"]);
    assert_eq!(revoked["status"], "revoked");
    let serials = pebble_serials(&pebble);
    assert_eq!(serials.len(), 2, "{serials:?}");
    let status = |serial: &str| pebble.get(&format!("/cert-status-by-serial/{serial}"));
    assert!(status(&serials[0]).contains("Revoked"));
    assert!(
        !status(&serials[1]).contains("Revoked"),
        "the CA could not give the kept order's certificate"
    );

    proxy.control(serde_json::json!({"fail_downloads": 0}));
    daemon.stop();
    daemon.spawn();
    wait_until(
        Duration::from_secs(60),
        "the kept certificate revoked",
        || status(&serials[1]).contains("Revoked").then_some(()),
    );
    let log = daemon.log_text();
    assert!(
        log.contains("revoked the certificate of the ACME order kept for it too"),
        "{log}"
    );
}

/// Under the packaged unit's `UMask=0077`, with nginx's workers running as www-data as a
/// web server's do: the challenge file and the directories certkeeper makes must be readable
/// by others, or nginx answers 403 and the CA fails the validation (review finding M6).
#[test]
fn http01_through_the_webroot_of_a_real_nginx() {
    use std::os::unix::fs::PermissionsExt as _;
    let knot = customer_zone(&["web.customer.test"]);
    let pebble = Pebble::start(PebbleOptions::new(knot.addr));
    // nginx owns the port Pebble's VA connects to; certkeeper only writes files into its root.
    let nginx = Nginx::start_as(pebble.http_port, "www-data");
    let config = format!(
        "[[acme]]\nname = \"pebble\"\ndirectory = {:?}\ntrusted-roots = {:?}\n\n\
         [validation.http]\nwebroot = {:?}\n",
        pebble.directory_url,
        pebble.tls_root_pem.display().to_string(),
        nginx.root.display().to_string(),
    );
    let daemon = Daemon::start_with_umask(Some(&config), 0o077);

    let requested = daemon.json(&[
        "request",
        "web.customer.test",
        "--issuer",
        "pebble",
        "--validation",
        "http",
    ]);
    let cert = id(&requested);
    let issued = wait_issued(&daemon, &cert);
    assert_eq!(issued["current_version"], 1);

    // The CA's validation went through nginx, for a file certkeeper wrote...
    let requests = nginx.requests();
    let challenge = requests
        .iter()
        .find(|line| line.contains("GET /.well-known/acme-challenge/") && line.contains("\" 200 "))
        .unwrap_or_else(|| panic!("no challenge served by nginx: {requests:#?}"));
    assert!(
        challenge.contains("GET /.well-known/acme-challenge/"),
        "{challenge}"
    );
    let mode =
        |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    let dir = nginx.root.join(".well-known/acme-challenge");
    assert_eq!(mode(&nginx.root.join(".well-known")), 0o755);
    assert_eq!(mode(&dir), 0o755);
    // ...and the file is gone once the order is over.
    wait_until(
        Duration::from_secs(10),
        "the challenge file removed",
        || {
            std::fs::read_dir(&dir)
                .map(|entries| entries.count() == 0)
                .unwrap_or(true)
                .then_some(())
        },
    );
}

#[test]
fn external_account_binding_is_required_by_the_ca_and_works_when_configured() {
    const REQUEST: [&str; 6] = [
        "request",
        "eab.customer.test",
        "--issuer",
        "pebble",
        "--validation",
        "http",
    ];
    let knot = customer_zone(&["eab.customer.test"]);
    let (kid, key) = random_eab();
    let mut options = PebbleOptions::new(knot.addr);
    options.eab = Some((kid.clone(), key.clone()));
    let pebble = Pebble::start(options);

    // Without EAB: the request is refused at once with what to configure, and nothing is
    // stored.
    let without = Daemon::start_with(Some(&config(&pebble, "")));
    let stderr = without.fails(&REQUEST, 65);
    assert!(
        stderr.contains("external account binding") && stderr.contains("eab-kid"),
        "{stderr}"
    );
    assert_eq!(without.count(), 0);
    // The next daemon answers HTTP-01 on the same port.
    drop(without);

    // An EAB key file that is not private, empty or not base64 (L8): the request is refused
    // with the file's name and what is wrong, never the key.
    let staging = tempfile::tempdir().unwrap();
    let hmac = staging.path().join("eab.key");
    let extra = format!(
        "eab-kid = {kid:?}\neab-hmac-file = {:?}\n",
        hmac.display().to_string()
    );
    let bad = Daemon::start_with(Some(&config(&pebble, &extra)));
    let cases: [(String, u32, &str); 3] = [
        (
            format!("{key}\n"),
            0o644,
            "mode 0644 gives group or others access",
        ),
        ("\n".into(), 0o600, "is empty"),
        (format!("{key}!{key}\n"), 0o600, "not base64url"),
    ];
    for (contents, mode, want) in cases {
        std::fs::write(&hmac, contents).unwrap();
        std::fs::set_permissions(&hmac, std::os::unix::fs::PermissionsExt::from_mode(mode))
            .unwrap();
        let stderr = bad.fails(&REQUEST, 65);
        assert!(
            stderr.contains(&format!("eab-hmac-file {}", hmac.display())) && stderr.contains(want),
            "{stderr}"
        );
        assert!(!stderr.contains(&key), "{stderr}");
    }
    drop(bad);

    // With it: issued.
    common::write_secret(&hmac, format!("{key}\n"));
    let with = Daemon::start_with(Some(&config(&pebble, &extra)));
    let cert = id(&with.json(&REQUEST));
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

/// Creates the `_acme-challenge` CNAME a request asked for in Knot's `customer.test.` zone;
/// returns its target.
fn delegate_at_knot(knot: &Knot, requested: &serde_json::Value) -> String {
    let record = &requested["validation_records"][0];
    let (name, target) = (
        record["Name"].as_str().unwrap(),
        record["Value"].as_str().unwrap(),
    );
    knot.nsupdate(
        "customer.test.",
        &[&format!("update add {name} 60 CNAME {target}")],
    );
    target.to_owned()
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

    // Both challenge TXT records (wildcard and base share the name) are withdrawn (in the
    // background, once the order is over).
    let label = target.trim_end_matches('.');
    wait_until(Duration::from_secs(10), "the TXT records withdrawn", || {
        dns_lookup(embedded, label, "TXT")
            .txt()
            .is_empty()
            .then_some(())
    });

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
    let target = delegate_at_knot(&knot, &records);

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
    // What the killed run left at Knot is withdrawn by the run that finished the order.
    wait_until(Duration::from_secs(10), "the TXT withdrawn at Knot", || {
        knot.lookup(&label, "TXT").txt().is_empty().then_some(())
    });
}

/// What an operator writes for a DNS provider certkeeper has no publisher for: here the
/// provider is Knot and its "API" is nsupdate.
fn publisher_script(dir: &std::path::Path, knot: &Knot) -> std::path::PathBuf {
    let script = dir.join("dns-api");
    let calls = dir.join("calls.log");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n\
             # certkeeper's command publisher: dns-api add|remove NAME VALUE\n\
             set -eu\n\
             case \"$1\" in\n\
             \x20 add) line=\"update add $2 60 TXT \\\"$3\\\"\" ;;\n\
             \x20 remove) line=\"update delete $2 TXT \\\"$3\\\"\" ;;\n\
             \x20 *) echo \"unknown action $1\" >&2; exit 2 ;;\n\
             esac\n\
             printf 'server {ip} {port}\\nzone acme.test.\\n%s\\nsend\\n' \"$line\" \\\n\
             \x20 | nsupdate -y {algorithm}:{key}:{secret} -t 10\n\
             echo \"$1 $2 $3\" >> {calls:?}\n",
            ip = knot.addr.ip(),
            port = knot.addr.port(),
            algorithm = common::peers::TSIG_ALGORITHM,
            key = knot.tsig_name,
            secret = knot.tsig_secret_b64,
            calls = calls.display().to_string(),
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    script
}

#[test]
fn dns01_through_a_command_publisher() {
    let knot = Knot::start(&["customer.test.", "acme.test."]);
    let unbound = Unbound::start(&[("customer.test.", knot.addr), ("acme.test.", knot.addr)]);
    let pebble = Pebble::start(PebbleOptions::new(unbound.addr));
    let scripts = tempfile::tempdir().unwrap();
    let script = publisher_script(scripts.path(), &knot);
    let publisher = format!(
        "publisher = \"command\"\ncommand = [{:?}]\n",
        script.display().to_string()
    );
    let daemon = Daemon::start_with(Some(&dns_config(&pebble, unbound.addr, &publisher)));

    let records = request_dns(&daemon, &["mail.customer.test"]);
    let cert = id(&records);
    let target = delegate_at_knot(&knot, &records);
    let issued = wait_issued_after_retries(&daemon, &cert, Duration::from_secs(120));
    assert_eq!(issued["current_version"], 1);
    assert!(san_text(&daemon, &cert).contains("DNS:mail.customer.test"));

    // The script was called to add the record at the CNAME's target, then to remove it.
    let calls_path = scripts.path().join("calls.log");
    let label = target.trim_end_matches('.');
    wait_until(Duration::from_secs(10), "the TXT withdrawn at Knot", || {
        knot.lookup(label, "TXT").txt().is_empty().then_some(())
    });
    let calls = std::fs::read_to_string(&calls_path).unwrap();
    let calls: Vec<&str> = calls.lines().collect();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert!(calls[0].starts_with(&format!("add {label}. ")), "{calls:?}");
    assert!(
        calls[1].starts_with(&format!("remove {label}. ")),
        "{calls:?}"
    );
    assert_eq!(calls[0][4..], calls[1][7..], "the same record: {calls:?}");
}

/// L7 of the security review, for the DNS publisher command: it runs with a clean environment
/// while the daemon has systemd's CREDENTIALS_DIRECTORY and a token in its own; the megabytes
/// it prints on stderr are bounded, and the token it prints is redacted in the renewal reason
/// the API shows and in the events.
#[test]
fn a_dns_command_gets_a_clean_environment_and_its_stderr_is_bounded_and_redacted() {
    let knot = Knot::start(&["customer.test."]);
    let unbound = Unbound::start(&[("customer.test.", knot.addr)]);
    let pebble = Pebble::start(PebbleOptions::new(unbound.addr));
    let scripts = tempfile::tempdir().unwrap();
    let credentials = common::credentials_directory(scripts.path());
    let dump = scripts.path().join("env.txt");
    let secret = "tok-9d2e71b0-daemon-only";
    let script = scripts.path().join("dns-api");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n\
             env > {dump:?}\n\
             yes 'provider: retrying' | head -c 3000000 >&2\n\
             echo >&2\n\
             echo \"dns-api: 403 for token=${{DNS_API_TOKEN:-unset}} Authorization: Bearer {secret}\" >&2\n\
             exit 1\n",
            dump = dump.display().to_string(),
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let publisher = format!(
        "publisher = \"command\"\ncommand = [{:?}]\n",
        script.display().to_string()
    );
    let credentials = credentials.display().to_string();
    let daemon = Daemon::start_with_env(
        Some(&dns_config(&pebble, unbound.addr, &publisher)),
        &[
            ("CREDENTIALS_DIRECTORY", &credentials),
            ("DNS_API_TOKEN", secret),
            ("INVOCATION_ID", "0123456789abcdef0123456789abcdef"),
        ],
    );
    let records = request_dns(&daemon, &["hook.customer.test"]);
    let cert = id(&records);
    delegate_at_knot(&knot, &records);

    let reason = wait_until(Duration::from_secs(60), "the failed publish", || {
        let c = daemon.json(&["describe", &cert]);
        c["renewal"]["reason"]
            .as_str()
            .filter(|r| r.contains("publisher command"))
            .map(str::to_owned)
    });
    assert!(
        reason.contains("dns-api: 403 for token=[redacted] Authorization: Bearer [redacted]"),
        "{reason}"
    );
    assert!(!reason.contains(secret), "{reason}");
    assert!(reason.len() < 4 * 1024, "{} bytes: {reason}", reason.len());
    let events = daemon.ok(&["events", "--output", "json"]);
    assert!(!events.contains(secret), "{events}");
    assert!(
        !daemon.log_text().contains(secret),
        "the token reached the log"
    );

    common::assert_clean_environment(&std::fs::read_to_string(&dump).unwrap(), secret);
}

#[test]
fn a_validation_the_ca_fails_is_withdrawn_kept_as_the_reason_and_retried() {
    // certkeeper publishes into Knot A's `acme.test.`, but the resolver Pebble validates
    // through sends `acme.test.` to Knot B, which never gets the record: the CNAME is right
    // (certkeeper's check passes), the CA finds no TXT and fails the challenge.
    let knot = Knot::start(&["customer.test.", "acme.test."]);
    let elsewhere = Knot::start(&["acme.test."]);
    let unbound = Unbound::start(&[
        ("customer.test.", knot.addr),
        ("acme.test.", elsewhere.addr),
    ]);
    let pebble = Pebble::start(PebbleOptions::new(unbound.addr));
    let publisher = format!(
        "publisher = \"rfc2136\"\nserver = \"{}\"\nkey-name = \"{}\"\nkey-file = {:?}\n",
        knot.addr,
        knot.tsig_name,
        knot.tsig_key_file.display().to_string()
    );
    let daemon = Daemon::start_with(Some(&dns_config(&pebble, unbound.addr, &publisher)));
    // The delegation is in place before the request, so the first attempt orders.
    let target = format!(
        "{}.acme.test.",
        certkeeper::validation::label("shop.customer.test")
    );
    knot.nsupdate(
        "customer.test.",
        &[&format!(
            "update add _acme-challenge.shop.customer.test. 60 CNAME {target}"
        )],
    );
    let cert = id(&request_dns(&daemon, &["shop.customer.test"]));

    let deadline = Instant::now() + Duration::from_secs(60);
    let failed = loop {
        let c = daemon.json(&["describe", &cert]);
        let reason = c["renewal"]["reason"].as_str().unwrap_or_default();
        if !reason.is_empty() {
            break c;
        }
        assert!(
            Instant::now() < deadline,
            "no failed order after 60 s: {c:#}\n{}",
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    // The CA's own problem document, not a paraphrase.
    let reason = failed["renewal"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("urn:ietf:params:acme:error:unauthorized")
            && reason.contains("TXT")
            && reason.contains("_acme-challenge.shop.customer.test"),
        "{reason}"
    );
    assert_eq!(failed["renewal"]["status"], "failed");
    assert_eq!(failed["status"], "pending-validation");
    assert_eq!(failed["renewal"]["failures"], 1, "{failed:#}");
    // Retried later by the scheduler, not at once.
    let next = failed["next_renewal_at"].as_str().unwrap();
    assert!(
        next > failed["renewal"]["failed_at"].as_str().unwrap(),
        "{failed:#}"
    );
    // The record certkeeper published at Knot A was withdrawn after the failure.
    let label = target.trim_end_matches('.');
    wait_until(Duration::from_secs(10), "the TXT withdrawn at Knot", || {
        knot.lookup(label, "TXT").txt().is_empty().then_some(())
    });
    let log = daemon.log_text();
    assert!(log.contains("ACME order failed"), "{log}");
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

// ---------------------------------------------------------------------------------------------
// ARI and profiles, through tests/peers/ari_proxy.py in front of Pebble.

/// `config()` with the directory of `proxy` instead of Pebble's own.
fn proxied_config(pebble: &Pebble, proxy: &AriProxy, extra: &str) -> String {
    config(pebble, extra).replace(&pebble.directory_url, &proxy.directory_url)
}

fn new_orders(proxy: &AriProxy) -> Vec<serde_json::Value> {
    proxy
        .seen()
        .into_iter()
        .filter_map(|e| e.get("new-order").cloned())
        .collect()
}

/// The ARI identifier of a PEM certificate, computed here from openssl's view of it:
/// base64url(authority key identifier) "." base64url(DER serial).
fn ari_id(daemon: &Daemon, pem: &str) -> String {
    use base64::Engine as _;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let hex = |text: &str| -> Vec<u8> {
        let digits: String = text.chars().filter(char::is_ascii_hexdigit).collect();
        (0..digits.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).unwrap())
            .collect()
    };
    daemon.write("ari.pem", pem);
    let dir = daemon.dir.path();
    let serial = openssl(dir, &["x509", "-in", "ari.pem", "-noout", "-serial"]);
    let mut serial = hex(serial.trim().trim_start_matches("serial="));
    if serial[0] & 0x80 != 0 {
        serial.insert(0, 0); // DER INTEGER: positive
    }
    let aki = openssl(
        dir,
        &[
            "x509",
            "-in",
            "ari.pem",
            "-noout",
            "-ext",
            "authorityKeyIdentifier",
        ],
    );
    let aki = aki
        .lines()
        .nth(1)
        .unwrap()
        .trim()
        .trim_start_matches("keyid:");
    format!("{}.{}", b64(&hex(aki)), b64(&serial))
}

#[test]
fn ari_window_drives_renewal_with_replaces_and_a_refused_replacement_is_retried_without() {
    let knot = customer_zone(&["ari.customer.test"]);
    let pebble = Pebble::start(PebbleOptions::new(knot.addr));
    let proxy = AriProxy::start(&pebble);
    // The first certificate's window is open now; the next one's opens in a day. The CA
    // refuses the first replacement order (as if another client had already replaced it).
    proxy.control(serde_json::json!({
        "windows": [[-60, 60], [86_400, 90_000]],
        "retry_after": 3600,
        "reject_replaces": 1,
    }));
    let daemon = Daemon::start_with(Some(&proxied_config(
        &pebble,
        &proxy,
        "profile = \"shortlived\"",
    )));
    let cert = id(&daemon.json(&[
        "request",
        "ari.customer.test",
        "--issuer",
        "pebble",
        "--validation",
        "http",
    ]));

    // Issued, then renewed at once because the CA's window for it is open.
    let renewed = wait_until(Duration::from_secs(90), "the ARI-driven renewal", || {
        let c = daemon.json(&["describe", &cert]);
        (c["current_version"] == 2).then_some(c)
    });
    let v1 = ari_id(&daemon, &daemon.ok(&["get", &cert, "--version", "1"]));
    let orders = new_orders(&proxy);
    assert_eq!(orders.len(), 3, "{orders:#?}\n{}", daemon.log_text());
    assert_eq!(orders[0]["profile"], "shortlived");
    assert!(orders[0].get("replaces").is_none(), "{orders:#?}");
    assert_eq!(orders[1]["replaces"], v1.as_str(), "the renewal names v1");
    assert!(
        orders[2].get("replaces").is_none(),
        "refused as a replacement, ordered again without `replaces`: {orders:#?}"
    );
    assert!(
        daemon
            .log_text()
            .contains("the CA refused the order as a replacement")
    );

    // The new certificate's window opens in a day: certkeeper picked a point inside it and
    // looks again when the CA's Retry-After says (an hour).
    let info = &renewed["renewal_info"];
    let at = |v: &serde_json::Value| {
        time::OffsetDateTime::parse(
            v.as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap()
    };
    let now = time::OffsetDateTime::now_utc();
    let (start, end, pick) = (
        at(&info["window_start"]),
        at(&info["window_end"]),
        at(&info["renew_at"]),
    );
    assert!(
        (start - now - time::Duration::days(1)).abs() < time::Duration::minutes(2),
        "{info:#}"
    );
    assert!(start <= pick && pick <= end, "{info:#}");
    let explained = daemon.json(&["explain", &cert]);
    assert_eq!(
        explained["next_action"], "check-renewal-info",
        "{explained:#}"
    );
    assert_eq!(explained["rule"], "ari");
    let next = at(&explained["next_action_at"]);
    assert!(
        (next - now - time::Duration::hours(1)).abs() < time::Duration::minutes(2),
        "{explained:#}"
    );
    let reasons = explained["reasons"].to_string();
    assert!(
        reasons.contains("the CA suggests renewing between"),
        "{reasons}"
    );

    // A manual renewal names v2, and this time the CA accepts (and reflects) it.
    let v2 = ari_id(&daemon, &daemon.ok(&["get", &cert, "--version", "2"]));
    let third = daemon.json(&["renew", &cert]);
    assert_eq!(third["current_version"], 3);
    let orders = new_orders(&proxy);
    assert_eq!(orders.len(), 4, "{orders:#?}");
    assert_eq!(orders[3]["replaces"], v2.as_str());
    let asked: Vec<String> = proxy
        .seen()
        .iter()
        .filter_map(|e| e["renewal-info"].as_str().map(str::to_owned))
        .collect();
    assert!(asked.contains(&v1) && asked.contains(&v2), "{asked:?}");
}

#[test]
fn a_profile_the_directory_does_not_offer_is_refused_before_any_order() {
    let knot = customer_zone(&[]);
    let pebble = Pebble::start(PebbleOptions::new(knot.addr));
    let proxy = AriProxy::start(&pebble);
    let daemon = Daemon::start_with(Some(&proxied_config(
        &pebble,
        &proxy,
        "profile = \"tlsserver\"",
    )));
    let stderr = daemon.fails(
        &[
            "request",
            "p.customer.test",
            "--issuer",
            "pebble",
            "--validation",
            "http",
        ],
        65,
    );
    assert!(
        stderr.contains("\"tlsserver\"")
            && stderr.contains("classic")
            && stderr.contains("shortlived"),
        "{stderr}"
    );
    assert_eq!(daemon.count(), 0);
    assert!(new_orders(&proxy).is_empty());
}

#[test]
fn short_lived_public_certificates_renew_by_themselves() {
    let knot = customer_zone(&["short.customer.test"]);
    // 60-second certificates: renewal is due a third of the lifetime before expiry.
    let pebble = Pebble::start(PebbleOptions {
        validity_secs: Some(60),
        ..PebbleOptions::new(knot.addr)
    });
    let daemon = Daemon::start_with(Some(&config(&pebble, "")));
    let cert = id(&daemon.json(&[
        "request",
        "short.customer.test",
        "--issuer",
        "pebble",
        "--validation",
        "http",
    ]));
    let first = wait_issued(&daemon, &cert);
    let explained = daemon.json(&["explain", &cert]);
    assert_eq!(explained["next_action"], "renew", "{explained:#}");
    let renewed = wait_until(Duration::from_secs(120), "the automatic renewal", || {
        let c = daemon.json(&["describe", &cert]);
        (c["current_version"] == 2).then_some(c)
    });
    assert_ne!(renewed["serial"], first["serial"]);
    assert_eq!(renewed["status"], "issued");
    let renewal = events_of(&daemon, &cert)
        .into_iter()
        .find(|e| e["detail"]["Action"] == "RENEWAL")
        .expect("a Certificate Available event for the renewal");
    assert_eq!(renewal["detail-type"], "Certificate Available");
    // Renewed before the first version expired, not after.
    let at = |v: &serde_json::Value| {
        time::OffsetDateTime::parse(
            v.as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap()
    };
    assert!(at(&renewed["not_before"]) < at(&first["not_after"]));
}

#[test]
fn account_contact_follows_the_config_and_its_key_can_be_rolled_over() {
    let knot = customer_zone(&["acct.customer.test"]);
    let pebble = Pebble::start(PebbleOptions::new(knot.addr));
    let mut daemon = Daemon::start_with(Some(&config(&pebble, "")));
    let listed = daemon.json(&["acme", "list"]);
    assert_eq!(listed[0]["issuer"], "pebble");
    assert!(
        listed[0]["account"].is_null(),
        "no account before first use"
    );

    let cert = id(&daemon.json(&[
        "request",
        "acct.customer.test",
        "--issuer",
        "pebble",
        "--validation",
        "http",
    ]));
    wait_issued(&daemon, &cert);
    let account = daemon.json(&["acme", "list"])[0]["account"].clone();
    let url = account["url"].as_str().unwrap().to_owned();
    assert!(url.contains("/my-account/"), "{account:#}");
    assert_eq!(
        account["contact"],
        serde_json::json!(["mailto:ops@customer.test"])
    );

    // Key rollover: the CA moves the account to a new key, which then signs the renewal.
    let rolled = daemon.json(&["acme", "rollover-key", "pebble"]);
    assert_eq!(rolled["url"], url.as_str(), "same account, new key");
    assert!(daemon.log_text().contains("ACME account key replaced"));
    assert_eq!(daemon.json(&["renew", &cert])["current_version"], 2);
    let stderr = daemon.fails(&["acme", "rollover-key", "nope"], 65);
    assert!(stderr.contains("no ACME issuer named \"nope\""), "{stderr}");

    // A changed contact in the config reaches the CA the next time the account is used.
    daemon.stop();
    let changed = config(&pebble, "").replace("mailto:ops@", "mailto:security@");
    daemon.write("certkeeper.toml", changed);
    daemon.spawn();
    assert_eq!(daemon.json(&["renew", &cert])["current_version"], 3);
    assert!(daemon.log_text().contains("ACME account contact updated"));
    let account = daemon.json(&["acme", "list"])[0]["account"].clone();
    assert_eq!(account["url"], url.as_str());
    assert_eq!(
        account["contact"],
        serde_json::json!(["mailto:security@customer.test"])
    );
}

/// A shutdown while an attempt waits to retry a request (the CA answering 5xx to every
/// certificate download) ends the wait: the daemon stops before its deadline instead of
/// sitting out the retries (2 + 4 + 8 + 15 s are still ahead once the first one is logged,
/// more than the 20 s deadline), and the order it kept is taken up at the next start.
#[test]
fn a_shutdown_ends_an_attempts_wait_to_retry() {
    let knot = customer_zone(&["halt.customer.test"]);
    let pebble = Pebble::start(PebbleOptions::new(knot.addr));
    let proxy = AriProxy::start(&pebble);
    proxy.control(serde_json::json!({"fail_downloads": 1000, "windows": [[86400, 172800]]}));
    let config = format!(
        "[daemon]\nshutdown-timeout = \"20s\"\n\n{}",
        proxied_config(&pebble, &proxy, "")
    );
    let mut daemon = Daemon::start_with(Some(&config));
    let cert = id(&daemon.json(&[
        "request",
        "halt.customer.test",
        "--issuer",
        "pebble",
        "--validation",
        "http",
    ]));
    wait_until(Duration::from_secs(60), "a retried download", || {
        daemon
            .log_text()
            .contains("retrying an ACME request")
            .then_some(())
    });
    let (status, _) = daemon.stop();
    assert!(status.success(), "{status}");
    let log = daemon.log_text();
    let stopping = log.rfind("stopping: finishing in-flight work").unwrap();
    let after = &log[stopping..];
    assert!(
        after.contains("stopping: the ACME request is not retried") && after.contains("stopped"),
        "the wait was ended: {after}"
    );
    assert!(!after.contains("shutdown deadline passed"), "{after}");

    proxy.control(serde_json::json!({"fail_downloads": 0}));
    daemon.spawn();
    let issued = wait_issued_after_retries(&daemon, &cert, Duration::from_secs(120));
    assert_eq!(issued["current_version"], 1);
    assert_eq!(new_orders(&proxy).len(), 1, "the kept order was taken up");
}

#[test]
fn an_order_finalized_before_a_failure_is_taken_up_again_not_ordered_anew() {
    // The CA finalizes the order, then fails the certificate download (503) seven times:
    // more than one attempt retries (six tries), so the next attempt takes the order up
    // again. (Its ARI window is far ahead, so the new certificate is not renewed at once.)
    let (_knot, _pebble, proxy, daemon, cert) = proxied_http_request(
        "late.customer.test",
        false,
        serde_json::json!({"fail_downloads": 7, "windows": [[86400, 172800]]}),
    );
    let issued = wait_issued_after_retries(&daemon, &cert, Duration::from_secs(150));
    assert_eq!(issued["current_version"], 1);

    let seen = proxy.seen();
    let orders = seen.iter().filter(|e| e.get("new-order").is_some()).count();
    assert_eq!(
        orders, 1,
        "the finalized order was fetched, not replaced: {seen:#?}"
    );
    let downloads: Vec<&serde_json::Value> = seen
        .iter()
        .filter(|e| e.get("certificate-download").is_some())
        .collect();
    assert_eq!(downloads.len(), 8, "{seen:#?}");
    assert!(
        downloads[..7].iter().all(|d| d["status"] == 503),
        "{seen:#?}"
    );
    assert!(downloads[7]["status"].is_null(), "{seen:#?}");
    let log = daemon.log_text();
    assert!(
        log.contains("the order and its challenge records are kept for the next attempt")
            && log.contains("resuming the ACME order in flight"),
        "{log}"
    );
    // The first attempt's failure was transient: the next came on the short ladder (5 s),
    // not the validation ladder's 15 s nor the renewal backoff's minute.
    let gap = downloads[6]["at"].as_f64().unwrap() - downloads[5]["at"].as_f64().unwrap();
    assert!(gap < 12.0, "{gap:.1} s between the attempts: {seen:#?}");
}

#[test]
fn a_ca_answering_429_with_retry_after_is_left_alone_until_then() {
    let (_knot, _pebble, proxy, daemon, cert) = proxied_http_request(
        "busy.customer.test",
        false,
        serde_json::json!({"rate_limit_orders": 1, "rate_limit_retry_after": 20}),
    );
    let limited = wait_until(Duration::from_secs(30), "the 429 to be recorded", || {
        let c = daemon.json(&["describe", &cert]);
        c["renewal"]["reason"].is_string().then_some(c)
    });
    let reason = limited["renewal"]["reason"].as_str().unwrap();
    assert!(reason.contains("asked to wait until"), "{reason}");
    // Asking now gets 429 from the daemon, and the CA hears nothing.
    let seen = proxy.seen().len();
    let out = daemon.ck(&["renew", &cert]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("asked to wait"),
        "{stderr}"
    );
    assert_eq!(proxy.seen().len(), seen);

    wait_issued_after_retries(&daemon, &cert, Duration::from_secs(90));
    let orders: Vec<serde_json::Value> = proxy
        .seen()
        .into_iter()
        .filter(|e| e.get("new-order").is_some())
        .collect();
    assert_eq!(orders[0]["status"], 429, "{orders:#?}");
    let gap = orders[1]["at"].as_f64().unwrap() - orders[0]["at"].as_f64().unwrap();
    // Without Retry-After the first validation retry would come after 15 s.
    assert!(gap >= 20.0, "retried {gap:.1} s after the 429: {orders:#?}");
}

/// A CA (here a proxy in front of Pebble) that answers with a certificate other than the one
/// ordered: a leaf for the old key, a leaf for other names, a chain that does not link. Each
/// fails the attempt with the reason and stores nothing; the next attempt gets a good one
/// (review finding L11).
#[test]
fn a_certificate_the_ca_swapped_is_refused_and_nothing_is_stored() {
    let knot = customer_zone(&["swap.customer.test", "other.customer.test"]);
    let pebble = Pebble::start(PebbleOptions::new(knot.addr));
    let proxy = AriProxy::start(&pebble);
    // Windows far ahead: nothing renews by itself during the test.
    proxy.control(serde_json::json!({"windows": [[86400, 172800]]}));
    let daemon = Daemon::start_with(Some(&proxied_config(&pebble, &proxy, "")));
    let request = |name: &str| {
        id(&daemon.json(&[
            "request",
            name,
            "--issuer",
            "pebble",
            "--validation",
            "http",
        ]))
    };
    let swap = request("swap.customer.test");
    wait_issued(&daemon, &swap);
    let old_leaf = daemon.ok(&["get", &swap, "--part", "cert"]);

    // The leaf of the previous version: the same names, the old key.
    proxy.control(serde_json::json!({"replace_downloads": [{"leaf": old_leaf}]}));
    let stderr = String::from_utf8_lossy(&daemon.ck(&["renew", &swap]).stderr).into_owned();
    assert!(
        stderr.contains("for another public key than the order's"),
        "{stderr}"
    );
    assert_eq!(daemon.json(&["describe", &swap])["current_version"], 1);

    // A genuine leaf whose chain is not its issuer (Pebble's TLS CA instead), on the first
    // issuance of another certificate, run by the scheduler: a failure it records and retries.
    let tls_ca = std::fs::read_to_string(&pebble.tls_root_pem).unwrap();
    proxy.control(serde_json::json!({"replace_downloads": [{"chain": tls_ca}]}));
    let other = request("other.customer.test");
    let failed = wait_until(Duration::from_secs(60), "the failure recorded", || {
        let c = daemon.json(&["describe", &other]);
        c["renewal"]["reason"].is_string().then_some(c)
    });
    let reason = failed["renewal"]["reason"].as_str().unwrap();
    assert!(reason.contains("chain does not link"), "{failed:#}");
    assert_eq!(failed["current_version"], 0, "{failed:#}");
    let issued = wait_issued_after_retries(&daemon, &other, Duration::from_secs(90));
    assert_eq!(issued["current_version"], 1);

    // Another certificate's leaf: other names (and another key).
    let other_leaf = daemon.ok(&["get", &other, "--part", "cert"]);
    proxy.control(serde_json::json!({"replace_downloads": [{"leaf": other_leaf}]}));
    let stderr = String::from_utf8_lossy(&daemon.ck(&["renew", &swap]).stderr).into_owned();
    assert!(
        stderr.contains(
            "a certificate for [other.customer.test] instead of the names ordered [swap.customer.test]"
        ),
        "{stderr}"
    );
    // Nothing replaced: the CA's own answer is stored.
    assert_eq!(daemon.json(&["renew", &swap])["current_version"], 2);
    let replaced = proxy
        .seen()
        .iter()
        .filter(|e| e.get("replaced").is_some())
        .count();
    assert_eq!(replaced, 3);
}

/// The CA switches the account to its new key but its answer is lost (the proxy closes the
/// connection), as it is when the store write fails or the daemon dies right after the switch.
/// The new key was stored as pending before the CA heard of it: the account is settled on it
/// at its next use, in the same run and after a kill -9 and restart (review finding M5).
#[test]
fn a_key_rollover_whose_answer_is_lost_keeps_the_account() {
    let (_knot, _pebble, proxy, mut daemon, cert) = proxied_http_request(
        "roll.customer.test",
        false,
        serde_json::json!({"windows": [[86400, 172800]]}),
    );
    wait_issued(&daemon, &cert);
    let url = daemon.json(&["acme", "list"])[0]["account"]["url"].clone();
    let key_changes = |proxy: &AriProxy| -> Vec<serde_json::Value> {
        proxy
            .seen()
            .into_iter()
            .filter(|e| e.get("key-change").is_some())
            .collect()
    };

    // The CA switches; its answer never reaches certkeeper, for which the rollover failed.
    let lose_next_key_change = |daemon: &Daemon| {
        proxy.control(serde_json::json!({"drop_key_changes": 1}));
        let out = daemon.ck(&["acme", "rollover-key", "pebble"]);
        assert!(!out.status.success(), "{out:?}");
    };

    // In the same run.
    lose_next_key_change(&daemon);
    let changes = key_changes(&proxy);
    assert_eq!(changes.len(), 1, "{changes:#?}");
    assert_eq!(
        changes[0]["key-change"], 200,
        "the CA switched: {changes:#?}"
    );
    assert_eq!(daemon.json(&["renew", &cert])["current_version"], 2);
    assert!(
        daemon
            .log_text()
            .contains("the CA had switched to the pending key"),
        "{}",
        daemon.log_text()
    );

    // Killed right after the switch, before anything else is stored.
    lose_next_key_change(&daemon);
    assert_eq!(key_changes(&proxy)[1]["key-change"], 200);
    daemon.kill();
    daemon.spawn();
    assert_eq!(daemon.json(&["renew", &cert])["current_version"], 3);
    assert_eq!(daemon.json(&["acme", "list"])[0]["account"]["url"], url);

    // A rollover that gets its answer still works, and the key it stored is the one used.
    daemon.json(&["acme", "rollover-key", "pebble"]);
    daemon.stop();
    daemon.spawn();
    assert_eq!(daemon.json(&["renew", &cert])["current_version"], 4);
    let log = daemon.log_text();
    assert_eq!(
        log.matches("the CA had switched to the pending key")
            .count(),
        2,
        "{log}"
    );
}

// Faults (issue 10): a flaky CA, lost answers and kills must not cost a second order or
// certificate, nor leave a challenge record behind. Each test failed before its fix.

/// The `dns_config` of a daemon using RFC 2136 at `knot`, through `proxy` instead of Pebble.
fn rfc2136_config(pebble: &Pebble, unbound: &Unbound, knot: &Knot, proxy: &AriProxy) -> String {
    let publisher = format!(
        "publisher = \"rfc2136\"\nserver = \"{}\"\nkey-name = \"{}\"\nkey-file = {:?}\n",
        knot.addr,
        knot.tsig_name,
        knot.tsig_key_file.display().to_string()
    );
    dns_config(pebble, unbound.addr, &publisher)
        .replace(&pebble.directory_url, &proxy.directory_url)
}

/// The TXT values at each of `labels` (names in the validation zone), as `name value` pairs.
fn txt_at(knot: &Knot, labels: &[String]) -> Vec<(String, String)> {
    labels
        .iter()
        .flat_map(|label| {
            knot.lookup(label, "TXT")
                .txt()
                .into_iter()
                .map(move |value| (label.clone(), value))
        })
        .collect()
}

/// Behaviour 1 of issue 10: the CA takes the challenge answer but its reply is lost (503).
/// That failure says nothing about the order: the token stays served while the CA validates
/// (its VA sleeps up to 15 s first), the request is retried within the attempt on a fresh
/// copy of the order, and the one order issues. Before, the token was withdrawn at once, the
/// CA's validation failed, and a second order was made.
#[test]
fn a_lost_challenge_answer_keeps_the_record_and_the_order() {
    let (_knot, _pebble, proxy, daemon, cert) = proxied_http_request(
        "lost.customer.test",
        true,
        serde_json::json!({"lose_challenge_answers": 1, "windows": [[86400, 172800]]}),
    );
    let issued = wait_issued_after_retries(&daemon, &cert, Duration::from_secs(120));
    assert_eq!(issued["current_version"], 1);
    let seen = proxy.seen();
    let orders = seen.iter().filter(|e| e.get("new-order").is_some()).count();
    assert_eq!(orders, 1, "one order: {seen:#?}\n{}", daemon.log_text());
    // Pebble shows the challenge still pending while its VA sleeps, so the retry answers it
    // again (RFC 8555 §7.5.1 makes that harmless); what matters is that the token stayed.
    let answers: Vec<&serde_json::Value> = seen
        .iter()
        .filter(|e| e.get("challenge").is_some())
        .collect();
    assert_eq!(answers[0]["lost"], true, "{seen:#?}");
}

/// Behaviour 2 of issue 10: a CA that calls an order invalid after it issued the certificate
/// (Pebble did, when a second validation of an issued order failed). The certificate is
/// fetched from the order's certificate URL, not ordered again: one request, one order, one
/// certificate. Before, certkeeper ordered anew and the CA issued a second certificate.
#[test]
fn an_order_the_ca_calls_invalid_after_issuing_is_fetched_not_replaced() {
    let knot = customer_zone(&["twice.customer.test"]);
    let pebble = Pebble::start(PebbleOptions::new(knot.addr));
    let proxy = AriProxy::start(&pebble);
    // Every order answer Pebble calls valid says invalid (with its certificate URL).
    proxy.control(serde_json::json!({
        "invalidate_orders": 1000, "invalidate_only_valid": true, "windows": [[86400, 172800]]
    }));
    let daemon = Daemon::start_with(Some(&proxied_config(&pebble, &proxy, "")));
    let cert = id(&daemon.json(&[
        "request",
        "twice.customer.test",
        "--issuer",
        "pebble",
        "--validation",
        "http",
    ]));
    let issued = wait_issued_after_retries(&daemon, &cert, Duration::from_secs(120));
    assert_eq!(issued["current_version"], 1);
    let seen = proxy.seen();
    let orders = seen.iter().filter(|e| e.get("new-order").is_some()).count();
    assert_eq!(orders, 1, "one order: {seen:#?}\n{}", daemon.log_text());
    assert!(
        seen.iter().any(|e| e.get("invalidated-order").is_some()),
        "the proxy did call the order invalid: {seen:#?}"
    );
    let sans = san_text(&daemon, &cert);
    assert!(sans.contains("DNS:twice.customer.test"), "{sans}");
}

/// Behaviour 3 of issue 10: the daemon is killed after publishing both names' TXT records;
/// the order it resumes turns out invalid. Every record the killed run published is withdrawn
/// (they are recorded in the store before they are published), then a new order issues, and
/// the validation zone ends empty. Before, the invalid-order branch of the resume path
/// withdrew nothing it had not walked, and the killed run's records stayed.
#[test]
fn records_of_a_resumed_order_found_invalid_are_all_withdrawn() {
    let knot = Knot::start(&["customer.test.", "acme.test."]);
    let unbound = Unbound::start(&[("customer.test.", knot.addr), ("acme.test.", knot.addr)]);
    // The VA's 0–15 s sleep keeps the order pending while the daemon is killed.
    let pebble = Pebble::start(PebbleOptions {
        va_sleep: true,
        ..PebbleOptions::new(unbound.addr)
    });
    let proxy = AriProxy::start(&pebble);
    proxy.control(serde_json::json!({"windows": [[86400, 172800]]}));
    let mut daemon = Daemon::start_with(Some(&rfc2136_config(&pebble, &unbound, &knot, &proxy)));
    let records = request_dns(&daemon, &["one.customer.test", "two.customer.test"]);
    let cert = id(&records);
    let mut labels = Vec::new();
    for record in records["validation_records"].as_array().unwrap() {
        labels.push(
            record["Value"]
                .as_str()
                .unwrap()
                .trim_end_matches('.')
                .to_owned(),
        );
        knot.nsupdate(
            "customer.test.",
            &[&format!(
                "update add {} 60 CNAME {}",
                record["Name"].as_str().unwrap(),
                record["Value"].as_str().unwrap()
            )],
        );
    }
    let published = wait_until(
        Duration::from_secs(90),
        "both challenge TXT records at Knot",
        || {
            let txt = txt_at(&knot, &labels);
            (txt.len() == 2).then_some(txt)
        },
    );
    daemon.kill();
    // The order the restarted daemon finds is invalid (once: the next order is left alone).
    proxy.control(serde_json::json!({"invalidate_orders": 1, "invalidate_only_valid": false}));
    daemon.spawn();
    let issued = wait_issued_after_retries(&daemon, &cert, Duration::from_secs(180));
    assert_eq!(issued["current_version"], 1);
    let log = daemon.log_text();
    assert!(
        log.contains("stored ACME order is invalid; starting another"),
        "{log}"
    );
    let left = wait_until(
        Duration::from_secs(30),
        "the validation zone to be empty",
        || {
            let txt = txt_at(&knot, &labels);
            txt.is_empty().then_some(txt)
        },
    );
    assert!(
        left.is_empty(),
        "left behind: {left:?}; the killed run published {published:?}"
    );
}

/// Issue 10: a withdrawal the shutdown deadline cut off is done at the next start. The DNS
/// command hangs when asked to remove (while a flag file exists); the daemon is stopped with
/// a one-second deadline right after the certificate issued; the next start, with a command
/// that works, withdraws the record. Before, nothing remembered it.
#[test]
fn a_withdrawal_cut_off_by_the_shutdown_deadline_is_done_at_the_next_start() {
    let knot = Knot::start(&["customer.test.", "acme.test."]);
    let unbound = Unbound::start(&[("customer.test.", knot.addr), ("acme.test.", knot.addr)]);
    let pebble = Pebble::start(PebbleOptions::new(unbound.addr));
    let scripts = tempfile::tempdir().unwrap();
    let script = publisher_script(scripts.path(), &knot);
    let hang = scripts.path().join("hang");
    // The same script, but `remove` waits for the flag to go, then fails (a run of it that
    // outlives the daemon must not do the next start's work).
    let text = std::fs::read_to_string(&script).unwrap().replacen(
        "set -eu\n",
        &format!(
            "set -eu\nif [ \"$1\" = remove ] && [ -e {hang:?} ]; then\n\
             \x20 while [ -e {hang:?} ]; do sleep 0.2; done\n\
             \x20 exit 1\n\
             fi\n",
            hang = hang.display().to_string()
        ),
        1,
    );
    std::fs::write(&script, text).unwrap();
    std::fs::write(&hang, "").unwrap();
    let publisher = format!(
        "publisher = \"command\"\ncommand = [{:?}]\n",
        script.display().to_string()
    );
    let config = format!(
        "[daemon]\nshutdown-timeout = \"1s\"\n\n{}",
        dns_config(&pebble, unbound.addr, &publisher)
    );
    let mut daemon = Daemon::start_with(Some(&config));
    let records = request_dns(&daemon, &["cut.customer.test"]);
    let cert = id(&records);
    let target = delegate_at_knot(&knot, &records);
    wait_issued_after_retries(&daemon, &cert, Duration::from_secs(120));
    let label = target.trim_end_matches('.').to_owned();
    assert!(
        !knot.lookup(&label, "TXT").txt().is_empty(),
        "the removal hangs"
    );
    daemon.stop();
    assert!(
        !knot.lookup(&label, "TXT").txt().is_empty(),
        "the deadline cut the removal off"
    );
    std::fs::remove_file(&hang).unwrap();
    daemon.spawn();
    wait_until(
        Duration::from_secs(30),
        "the TXT withdrawn at the next start",
        || knot.lookup(&label, "TXT").txt().is_empty().then_some(()),
    );
    let log = daemon.log_text();
    assert!(
        log.contains("withdrawing challenge records left by orders that ended"),
        "{log}"
    );
}

/// `renew` while the scheduler's issuance of the same certificate runs is refused (409), not
/// run beside it: two attempts would take up one order at once, and one's failure would
/// withdraw the other's records.
#[test]
fn renew_during_an_acme_issuance_of_the_same_certificate_is_refused() {
    // The lost answer adds a retry to the attempt, so it is still running below.
    let (_knot, _pebble, proxy, daemon, cert) = proxied_http_request(
        "busy2.customer.test",
        true,
        serde_json::json!({"lose_challenge_answers": 1, "windows": [[86400, 172800]]}),
    );
    wait_until(Duration::from_secs(30), "the challenge answered", || {
        proxy
            .seen()
            .iter()
            .any(|e| e.get("challenge").is_some())
            .then_some(())
    });
    let out = daemon.ck(&["renew", &cert]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("in progress"),
        "{stderr}\n{}",
        daemon.log_text()
    );
    let issued = wait_issued_after_retries(&daemon, &cert, Duration::from_secs(120));
    assert_eq!(issued["current_version"], 1);
    let orders = proxy
        .seen()
        .iter()
        .filter(|e| e.get("new-order").is_some())
        .count();
    assert_eq!(orders, 1);
}
