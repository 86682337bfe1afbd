//! `[pki]` through the real binary: certificates carry where their CA's CRL and certificate
//! are, the daemon serves both there over real HTTP (fetched with curl), the CRL verifies with
//! `openssl` and lists a revocation at once, DigiCert's pkilint finds nothing to warn about,
//! and unusable base URLs stop the daemon with a config error.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::peers::free_port;
use common::pki::{pem_blocks, pkilint};
use common::{Daemon, id, openssl, openssl_try, wait_until};

/// A daemon publishing under `http://127.0.0.1:PORT/pki/` and serving it on PORT; returns it
/// and the base URL.
fn publishing_daemon() -> (Daemon, String) {
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}/pki/");
    let config = format!("[pki]\nlisten = \"127.0.0.1:{port}\"\nbase-url = \"{base}\"\n");
    (Daemon::start_with(Some(&config)), base)
}

/// GETs `url` with curl into `dir/file` (when given); returns the status and content type.
fn fetch(dir: &Path, url: &str, file: Option<&str>, method: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "-X", method, "-o", file.unwrap_or("/dev/null")])
        .args(["-w", "%{http_code} %{content_type}", url])
        .current_dir(dir)
        .output()
        .expect("curl must be installed");
    assert!(out.status.success(), "curl {url}: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (code, content_type) = text.split_once(' ').unwrap_or((&text, ""));
    (code.parse().unwrap(), content_type.to_owned())
}

/// The first certificate of `ca certificate NAME`, written to `file`.
fn write_ca_only(d: &Daemon, name: &str, file: &str) -> String {
    let first = pem_blocks(&d.ok(&["ca", "certificate", name])).remove(0);
    d.write(file, &first);
    first
}

fn text_of(dir: &Path, file: &str) -> String {
    openssl(dir, &["x509", "-in", file, "-noout", "-text"])
}

/// The certificate's pointers, as openssl prints them.
fn assert_points_at(text: &str, base: &str, ca: &str) {
    let crl = format!("URI:{base}ca/{ca}.crl");
    let issuers = format!("CA Issuers - URI:{base}ca/{ca}.der");
    assert!(text.contains("X509v3 CRL Distribution Points"), "{text}");
    assert!(text.contains(&crl), "no {crl}:\n{text}");
    assert!(text.contains("Authority Information Access"), "{text}");
    assert!(text.contains(&issuers), "no {issuers}:\n{text}");
    assert!(
        !text.contains("Authority Information Access: critical"),
        "{text}"
    );
}

/// Fetches CA `ca`'s CRL from `base` and writes it as `{stem}.der` and `{stem}.pem`.
fn fetch_crl(dir: &Path, base: &str, ca: &str, stem: &str) {
    let der = format!("{stem}.der");
    let fetched = fetch(dir, &format!("{base}ca/{ca}.crl"), Some(&der), "GET");
    assert_eq!(fetched, (200, "application/pkix-crl".to_owned()));
    let pem = format!("{stem}.pem");
    openssl(dir, &["crl", "-inform", "DER", "-in", &der, "-out", &pem]);
}

fn verify_leaf(dir: &Path, crl: &str) -> (bool, String) {
    openssl_try(
        dir,
        &[
            "verify",
            "-crl_check",
            "-CRLfile",
            crl,
            "-CAfile",
            "root.pem",
            "-untrusted",
            "team.pem",
            "leaf.pem",
        ],
    )
}

/// Creates CA `team` under `default` and a leaf it signs; writes `root.pem`, `team.pem` and
/// `leaf.pem`. Returns the leaf's JSON and the team CA's PEM.
fn team_and_leaf(d: &Daemon) -> (serde_json::Value, String) {
    d.ok(&["ca", "create", "team", "--parent", "default"]);
    let cert = d.json(&["request", "app.internal", "--ca", "team"]);
    d.write("leaf.pem", d.ok(&["get", &id(&cert), "--part", "cert"]));
    write_ca_only(d, "default", "root.pem");
    (cert, write_ca_only(d, "team", "team.pem"))
}

#[test]
fn certificates_point_at_the_crl_and_ca_certificate_the_daemon_serves() {
    let (d, base) = publishing_daemon();
    let dir = d.dir.path();
    let (cert, team_pem) = team_and_leaf(&d);

    // The leaf points at its issuer's files; the subordinate's own certificate at its
    // parent's; the root at nothing.
    assert_points_at(&text_of(dir, "leaf.pem"), &base, "team");
    assert_points_at(&text_of(dir, "team.pem"), &base, "default");
    let root = text_of(dir, "root.pem");
    assert!(!root.contains("CRL Distribution Points"), "{root}");
    assert!(!root.contains("Authority Information Access"), "{root}");

    // caIssuers: the CA certificate itself, DER.
    let fetched = fetch(dir, &format!("{base}ca/team.der"), Some("team.der"), "GET");
    assert_eq!(fetched, (200, "application/pkix-cert".to_owned()));
    let converted = openssl(dir, &["x509", "-inform", "DER", "-in", "team.der"]);
    assert_eq!(converted, team_pem);

    // The CRL: signed by the CA, and the leaf passes a CRL check against it.
    fetch_crl(dir, &base, "team", "crl0");
    let (_, out) = openssl_try(
        dir,
        &["crl", "-in", "crl0.pem", "-CAfile", "team.pem", "-noout"],
    );
    assert!(out.contains("verify OK"), "CRL signature: {out}");
    let (ok, out) = verify_leaf(dir, "crl0.pem");
    assert!(ok && out.contains("leaf.pem: OK"), "{out}");

    // A revocation is on the next fetch.
    d.ok(&["revoke", &id(&cert), "--reason", "key-compromise"]);
    fetch_crl(dir, &base, "team", "crl1");
    let text = openssl(dir, &["crl", "-in", "crl1.pem", "-noout", "-text"]);
    let serial = cert["serial"].as_str().unwrap().to_uppercase();
    assert!(text.contains(&format!("Serial Number: {serial}")), "{text}");
    let (ok, out) = verify_leaf(dir, "crl1.pem");
    assert!(!ok && out.contains("certificate revoked"), "{out}");
}

#[test]
fn the_listener_serves_nothing_but_the_cas_files() {
    let (d, base) = publishing_daemon();
    let dir = d.dir.path();
    let origin = base.trim_end_matches("pki/");
    for url in [
        format!("{base}ca/nope.crl"),
        format!("{base}ca/nope.der"),
        format!("{base}ca/default.pem"),
        format!("{base}ca/"),
        base.clone(),
        format!("{origin}ca/default.crl"),
        format!("{origin}v1/health"),
    ] {
        assert_eq!(fetch(dir, &url, None, "GET").0, 404, "{url}");
    }
    let crl = format!("{base}ca/default.crl");
    assert_eq!(fetch(dir, &crl, None, "POST").0, 405);
    // An external CA waiting for its certificate has nothing to publish yet.
    d.ok(&["ca", "create", "offline", "--external"]);
    assert_eq!(
        fetch(dir, &format!("{base}ca/offline.der"), None, "GET").0,
        404
    );
    assert_eq!(
        fetch(dir, &format!("{base}ca/offline.crl"), None, "GET").0,
        404
    );
}

#[test]
fn pkilint_finds_nothing_to_warn_about_in_certificates_and_crls() {
    let (d, base) = publishing_daemon();
    let dir = d.dir.path();
    let (cert, _) = team_and_leaf(&d);
    d.ok(&["revoke", &id(&cert), "--reason", "superseded"]);
    fetch_crl(dir, &base, "team", "crl");
    fetch_crl(dir, &base, "default", "root-crl");

    for file in ["leaf.pem", "team.pem"] {
        let findings = pkilint("lint_pkix_cert", &[], &dir.join(file));
        assert_eq!(findings.trim(), "", "{file}");
    }
    for (file, profile) in [
        ("crl.der", "PKIX"),
        ("crl.der", "BR"),
        ("root-crl.der", "PKIX"),
    ] {
        let findings = pkilint("lint_crl", &["-t", "CRL", "-p", profile], &dir.join(file));
        assert_eq!(findings.trim(), "", "{file} ({profile})");
    }
}

#[test]
fn an_unusable_base_url_is_a_config_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    for (url, says) in [
        ("ftp://pki.example.com/", "ftp: URL"),
        ("https://pki.example.com/", "must be plain http://"),
        ("pki.example.com", "not an absolute URL"),
        ("http://pki example/", "not an absolute URL"),
    ] {
        let config = dir.path().join("certkeeper.toml");
        std::fs::write(&config, format!("[pki]\nbase-url = \"{url}\"\n")).unwrap();
        let state = dir.path().join("state");
        let state = state.to_str().unwrap();
        for verb in [
            &["serve", "--state-dir", state][..],
            &["config", "check"][..],
        ] {
            let mut cmd = Command::new(common::BIN);
            cmd.arg("--config").arg(&config).args(verb);
            let (code, stderr) = common::must_exit(cmd);
            assert_eq!(code, Some(78), "{verb:?} {url}: {stderr}");
            assert!(
                stderr.contains("pki.base-url") && stderr.contains(url) && stderr.contains(says),
                "{verb:?} {url}: {stderr}"
            );
            assert!(!stderr.contains("panicked"), "{stderr}");
        }
    }
}

#[test]
fn a_reloaded_base_url_waits_for_a_restart() {
    let (d, base) = publishing_daemon();
    let config = d.config.as_ref().unwrap();
    let text = std::fs::read_to_string(config).unwrap();
    std::fs::write(config, text.replace(&base, "http://pki.example.com/")).unwrap();
    d.signal("HUP");
    let log = wait_until(Duration::from_secs(60), "the reload", || {
        Some(d.log_text()).filter(|log| log.contains("config reloaded"))
    });
    let warned = log
        .lines()
        .any(|l| l.contains("takes effect at the next restart") && l.contains("pki"));
    assert!(warned, "{log}");
    // What the running listener serves is still what certificates say.
    let cert = d.json(&["request", "after-reload.internal"]);
    d.write("leaf.pem", d.ok(&["get", &id(&cert), "--part", "cert"]));
    assert_points_at(&text_of(d.dir.path(), "leaf.pem"), &base, "default");
}

#[test]
fn the_listener_closes_a_connection_that_sends_nothing() {
    use std::io::Read;
    let (_d, base) = publishing_daemon();
    let addr = base.trim_start_matches("http://").trim_end_matches("/pki/");
    let mut idle = std::net::TcpStream::connect(addr).unwrap();
    // Far longer than the listener's header timeout: a read that ends in 0 was closed by it.
    idle.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut buf = [0u8; 64];
    assert_eq!(idle.read(&mut buf).unwrap(), 0, "closed by the server");
}
