//! certkeeper's certificate authorities through the real binary: subordinates, name constraints,
//! path length, revocation and CRLs, external CAs signed by an outside root. Checked with the
//! `openssl` CLI and rustls-webpki.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::path::Path;

use common::pki::{aki, ders, parse, pem_blocks, ski, webpki_name, webpki_verify};
use common::{Daemon, id, openssl, openssl_try};
use rustls_pki_types::CertificateDer;

// --- helpers ---------------------------------------------------------------------------------

/// `openssl verify` that must succeed.
fn verify_ok(dir: &Path, args: &[&str]) {
    let mut all = vec!["verify"];
    all.extend(args);
    let out = openssl(dir, &all);
    assert!(out.contains(": OK"), "openssl {all:?}: {out}");
}

/// Writes `ca certificate NAME` (the CA then its issuers) to `file`, returning the DERs.
fn write_ca(d: &Daemon, name: &str, file: &str) -> Vec<CertificateDer<'static>> {
    let pem = d.ok(&["ca", "certificate", name]);
    d.write(file, &pem);
    ders(&pem)
}

/// Writes only the first certificate of `ca certificate NAME` to `file`.
fn write_ca_only(d: &Daemon, name: &str, file: &str) -> CertificateDer<'static> {
    let pem = d.ok(&["ca", "certificate", name]);
    let first = pem_blocks(&pem).remove(0);
    d.write(file, &first);
    ders(&first).remove(0)
}

/// Requests a certificate and writes its leaf to `file`; returns (JSON, fullchain DERs).
fn request_leaf(
    d: &Daemon,
    args: &[&str],
    file: &str,
) -> (serde_json::Value, Vec<CertificateDer<'static>>) {
    let mut all = vec!["request"];
    all.extend(args);
    let cert = d.json(&all);
    let cert_id = id(&cert);
    let leaf = d.ok(&["get", &cert_id, "--part", "cert"]);
    d.write(file, &leaf);
    let full = d.ok(&["get", &cert_id]);
    (cert, ders(&full))
}

fn ca_entry(d: &Daemon, name: &str) -> serde_json::Value {
    let list = d.json(&["ca", "list"]);
    list["cas"]
        .as_array()
        .expect("cas array")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("CA {name} not listed: {list}"))
        .clone()
}

// --- 1. subordinate chain --------------------------------------------------------------------

#[test]
fn subordinate_ca_chain_verifies() {
    let d = Daemon::start();
    let dir = d.dir.path();
    let root = write_ca(&d, "default", "root.pem").remove(0);

    let created = d.json(&["ca", "create", "team-ca", "--parent", "default"]);
    assert_eq!(created["kind"], "subordinate", "{created}");
    assert_eq!(created["parent"], "default");
    assert_eq!(created["state"], "active");
    let team_chain = write_ca(&d, "team-ca", "team-chain.pem");
    assert_eq!(
        team_chain.len(),
        2,
        "ca certificate prints the CA then its root"
    );
    assert_eq!(team_chain[1], root);
    let team = write_ca_only(&d, "team-ca", "team.pem");
    assert_eq!(team, team_chain[0]);

    // The subordinate's certificate: signed by the root, a CA, linked by key identifiers.
    let (tx, rx) = (parse(&team), parse(&root));
    assert_eq!(tx.issuer(), rx.subject());
    assert!(
        tx.basic_constraints()
            .expect("bc")
            .expect("bc present")
            .value
            .ca
    );
    assert!(
        tx.key_usage()
            .expect("ku")
            .expect("ku present")
            .value
            .key_cert_sign()
    );
    assert_eq!(aki(&tx), ski(&rx), "team-ca AKI = root SKI");
    verify_ok(dir, &["-CAfile", "root.pem", "team.pem"]);

    let (cert, full) = request_leaf(
        &d,
        &["svc.team.internal", "--ca", "team-ca", "--validity", "30d"],
        "leaf.pem",
    );
    assert_eq!(cert["issuer"], "team-ca");
    assert_eq!(full.len(), 3, "fullchain = leaf + team-ca + root");
    assert_eq!(full[1], team, "second is team-ca");
    assert_eq!(full[2], root, "third is the root");
    let lx = parse(&full[0]);
    assert_eq!(lx.issuer(), tx.subject());
    assert_eq!(aki(&lx), ski(&tx), "leaf AKI = team-ca SKI");

    verify_ok(
        dir,
        &["-CAfile", "root.pem", "-untrusted", "team.pem", "leaf.pem"],
    );
    let (ok, out) = openssl_try(dir, &["verify", "-CAfile", "root.pem", "leaf.pem"]);
    assert!(
        !ok,
        "without the intermediate the leaf must not verify: {out}"
    );

    webpki_verify(
        &full[0],
        &root,
        std::slice::from_ref(&team),
        webpki::KeyUsage::server_auth(),
    )
    .expect("webpki with intermediate");
    webpki_name(&full[0], "svc.team.internal").expect("webpki name");
    assert!(
        webpki_verify(&full[0], &root, &[], webpki::KeyUsage::server_auth()).is_err(),
        "webpki must need the intermediate"
    );
}

// --- 2. name constraints ---------------------------------------------------------------------

/// Checks a CA `ca` constrained to corp.example: the extension as openssl shows it, issuance
/// inside the subtree (verified by openssl and webpki against `anchor`, with `intermediates`
/// written to `untrusted` when there are any), and refusals outside it.
fn check_constrained(
    d: &Daemon,
    ca: &str,
    anchor_file: &str,
    anchor: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'static>],
) {
    let dir = d.dir.path();
    let ca_file = format!("{ca}.pem");
    write_ca_only(d, ca, &ca_file);
    let text = openssl(dir, &["x509", "-in", &ca_file, "-noout", "-text"]);
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let nc = lines
        .iter()
        .position(|l| l.starts_with("X509v3 Name Constraints"))
        .unwrap_or_else(|| panic!("{ca}: no Name Constraints extension:\n{text}"));
    assert_eq!(lines[nc + 1], "Permitted:", "{ca}:\n{text}");
    assert_eq!(lines[nc + 2], "DNS:corp.example", "{ca}:\n{text}");
    assert_eq!(
        d.json(&["ca", "describe", ca])["permitted_dns"],
        serde_json::json!(["corp.example"])
    );

    let mut verify: Vec<&str> = vec!["-CAfile", anchor_file];
    if !intermediates.is_empty() {
        verify.extend(["-untrusted", &ca_file]);
    }
    let verify_leaf = |leaf: &str| {
        let mut args = verify.clone();
        args.push(leaf);
        verify_ok(dir, &args);
    };

    // Inside the constraint: issued and verifiable.
    let a_file = format!("{ca}-a.pem");
    let (_, full) = request_leaf(
        d,
        &["a.corp.example", "--ca", ca, "--name", &format!("{ca}-a")],
        &a_file,
    );
    assert_eq!(
        full.len(),
        2 + intermediates.len(),
        "{ca}: fullchain length"
    );
    verify_leaf(&a_file);
    webpki_verify(
        &full[0],
        anchor,
        intermediates,
        webpki::KeyUsage::server_auth(),
    )
    .unwrap_or_else(|e| panic!("{ca}: webpki a.corp.example: {e:?}"));
    webpki_name(&full[0], "a.corp.example").expect("webpki name");
    // The constraint's own name and a wildcard below it are inside too.
    let wild_file = format!("{ca}-wild.pem");
    let (_, full) = request_leaf(
        d,
        &[
            "corp.example",
            "*.corp.example",
            "--ca",
            ca,
            "--name",
            &format!("{ca}-wild"),
        ],
        &wild_file,
    );
    verify_leaf(&wild_file);
    webpki_verify(
        &full[0],
        anchor,
        intermediates,
        webpki::KeyUsage::server_auth(),
    )
    .unwrap_or_else(|e| panic!("{ca}: webpki wildcard: {e:?}"));

    // Outside: refused as invalid input, nothing stored.
    let count = d.count();
    let err = d.fails(&["request", "evil.example", "--ca", ca], 65);
    assert!(err.contains("outside its permitted names"), "{ca}: {err}");
    let err = d.fails(&["request", "evilcorp.example", "--ca", ca], 65);
    assert!(
        err.contains("outside its permitted names"),
        "{ca}: a suffix is not a subtree: {err}"
    );
    let err = d.fails(
        &["request", "b.corp.example", "evil.example", "--ca", ca],
        65,
    );
    assert!(err.contains("outside its permitted names"), "{ca}: {err}");
    let err = d.fails(&["request", "10.0.0.1", "--ca", ca], 65);
    assert!(err.contains("IP address"), "{ca}: {err}");
    let err = d.fails(&["request", "c.corp.example", "10.0.0.1", "--ca", ca], 65);
    assert!(err.contains("IP address"), "{ca}: {err}");
    assert_eq!(
        d.count(),
        count,
        "{ca}: refused requests leave nothing behind"
    );

    // A subordinate cannot widen the constraint; one inside it inherits it.
    d.fails(
        &[
            "ca",
            "create",
            &format!("{ca}-wider"),
            "--parent",
            ca,
            "--permit-dns",
            "example",
        ],
        65,
    );
    let child = d.json(&["ca", "create", &format!("{ca}-child"), "--parent", ca]);
    assert_eq!(
        child["permitted_dns"],
        serde_json::json!(["corp.example"]),
        "{child}"
    );
    d.fails(
        &["request", "evil.example", "--ca", &format!("{ca}-child")],
        65,
    );
}

/// The case: a constrained subordinate of the unconstrained default root.
#[test]
fn name_constrained_subordinate() {
    let d = Daemon::start();
    let root = write_ca(&d, "default", "root.pem").remove(0);
    let created = d.json(&[
        "ca",
        "create",
        "corp",
        "--parent",
        "default",
        "--permit-dns",
        "corp.example",
    ]);
    assert_eq!(created["kind"], "subordinate");
    let corp = write_ca_only(&d, "corp", "corp.pem");
    check_constrained(&d, "corp", "root.pem", &root, &[corp]);
}

/// The same policy on a constrained root (no parent involved).
#[test]
fn name_constrained_root() {
    let d = Daemon::start();
    let created = d.json(&["ca", "create", "corp-root", "--permit-dns", "corp.example"]);
    assert_eq!(created["kind"], "root");
    let root = write_ca_only(&d, "corp-root", "corp-root-anchor.pem");
    check_constrained(&d, "corp-root", "corp-root-anchor.pem", &root, &[]);
}

// --- 3. path length --------------------------------------------------------------------------

#[test]
fn path_length_zero_forbids_sub_cas() {
    let d = Daemon::start();
    let dir = d.dir.path();
    write_ca(&d, "default", "root.pem");
    let p0 = d.json(&[
        "ca",
        "create",
        "p0",
        "--parent",
        "default",
        "--path-length",
        "0",
    ]);
    assert_eq!(p0["path_length"], 0, "{p0}");
    write_ca_only(&d, "p0", "p0.pem");
    let text = openssl(dir, &["x509", "-in", "p0.pem", "-noout", "-text"]);
    assert!(text.contains("CA:TRUE, pathlen:0"), "{text}");

    let err = d.fails(&["ca", "create", "child", "--parent", "p0"], 65);
    assert!(err.contains("path length"), "{err}");
    d.fails(&["ca", "describe", "child"], 1);

    // p0 still issues leaf certificates.
    request_leaf(&d, &["leaf.p0.internal", "--ca", "p0"], "leaf.pem");
    verify_ok(
        dir,
        &["-CAfile", "root.pem", "-untrusted", "p0.pem", "leaf.pem"],
    );
}

// --- 4. revocation and CRLs ------------------------------------------------------------------

fn crl_serials(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Serial Number: "))
        .map(|s| s.trim().to_owned())
        .collect()
}

#[test]
fn revocation_puts_every_version_on_the_crl() {
    let d = Daemon::start();
    let dir = d.dir.path();
    write_ca(&d, "default", "root.pem");

    let (first, _) = request_leaf(&d, &["rev.internal", "--validity", "30d"], "v1.pem");
    let cert_id = id(&first);
    let renewed = d.json(&["renew", &cert_id]);
    let v2_pem = d.ok(&["get", &cert_id, "--part", "cert"]);
    d.write("v2.pem", &v2_pem);
    let serials = [
        first["serial"].as_str().expect("serial").to_owned(),
        renewed["serial"].as_str().expect("serial").to_owned(),
    ];
    assert_ne!(serials[0], serials[1]);

    // Before revocation: an empty CRL, and the CRL check passes.
    d.ok(&["ca", "crl", "default", "--out", "crl0.pem"]);
    let text = openssl(dir, &["crl", "-in", "crl0.pem", "-noout", "-text"]);
    assert!(crl_serials(&text).is_empty(), "{text}");
    verify_ok(
        dir,
        &[
            "-crl_check",
            "-CRLfile",
            "crl0.pem",
            "-CAfile",
            "root.pem",
            "v2.pem",
        ],
    );

    let revoked = d.json(&["revoke", &cert_id, "--reason", "key-compromise"]);
    assert_eq!(revoked["status"], "revoked", "{revoked}");
    assert_eq!(revoked["revocation_reason"], "key-compromise");
    let described = d.json(&["describe", &cert_id]);
    assert_eq!(described["status"], "revoked");
    assert!(described["revoked_at"].is_string(), "{described}");

    // PEM CRL, via stdout.
    let crl_pem = d.ok(&["ca", "crl", "default"]);
    assert!(crl_pem.starts_with("-----BEGIN X509 CRL-----"), "{crl_pem}");
    d.write("crl.pem", &crl_pem);
    let text = openssl(dir, &["crl", "-in", "crl.pem", "-noout", "-text"]);
    let listed = crl_serials(&text);
    for serial in &serials {
        assert!(
            listed.contains(&serial.to_uppercase()),
            "serial {serial} not on the CRL {listed:?}:\n{text}"
        );
    }
    assert_eq!(listed.len(), 2, "{text}");
    assert_eq!(
        text.matches("Key Compromise").count(),
        2,
        "each entry carries the reason:\n{text}"
    );
    assert!(text.contains("X509v3 CRL Number"), "{text}");
    assert!(text.contains("X509v3 Authority Key Identifier"), "{text}");
    let (_, out) = openssl_try(
        dir,
        &["crl", "-in", "crl.pem", "-CAfile", "root.pem", "-noout"],
    );
    assert!(out.contains("verify OK"), "CRL signature: {out}");

    for leaf in ["v1.pem", "v2.pem"] {
        let (ok, out) = openssl_try(
            dir,
            &[
                "verify",
                "-crl_check",
                "-CRLfile",
                "crl.pem",
                "-CAfile",
                "root.pem",
                leaf,
            ],
        );
        assert!(!ok, "{leaf} must fail the CRL check: {out}");
        assert!(out.contains("certificate revoked"), "{leaf}: {out}");
    }
    // Without the CRL check the certificate itself is still well-formed.
    verify_ok(dir, &["-CAfile", "root.pem", "v2.pem"]);

    // DER CRL.
    d.ok(&[
        "ca", "crl", "default", "--format", "der", "--out", "crl.der",
    ]);
    let der = std::fs::read(d.path("crl.der")).expect("read DER CRL");
    assert_eq!(der.first(), Some(&0x30), "DER starts with a SEQUENCE");
    let text = openssl(
        dir,
        &["crl", "-inform", "DER", "-in", "crl.der", "-noout", "-text"],
    );
    let listed = crl_serials(&text);
    for serial in &serials {
        assert!(listed.contains(&serial.to_uppercase()), "DER CRL: {text}");
    }
    let (_, out) = openssl_try(
        dir,
        &[
            "crl", "-inform", "DER", "-in", "crl.der", "-CAfile", "root.pem", "-noout",
        ],
    );
    assert!(out.contains("verify OK"), "DER CRL signature: {out}");
    // DER on stdout too.
    let out = d.ck(&["ca", "crl", "default", "--format", "der"]);
    assert!(out.status.success());
    assert_eq!(out.stdout.first(), Some(&0x30));

    // Revoking twice is refused; so is renewing a revoked certificate.
    let err = d.fails(&["revoke", &cert_id], 1);
    assert!(err.contains("already revoked"), "{err}");
    d.fails(&["renew", &cert_id], 1);
    assert_eq!(d.json(&["describe", &cert_id])["status"], "revoked");
}

// --- 5. external CA --------------------------------------------------------------------------

const EXT_CNF: &str = "\
basicConstraints=critical,CA:TRUE
keyUsage=critical,keyCertSign,cRLSign
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid:always
";

/// Signs `csr` as a CA certificate with the outside root, writing `out`.
fn outside_sign(dir: &Path, csr: &str, out: &str) {
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            csr,
            "-CA",
            "outside-root.pem",
            "-CAkey",
            "outside-root.key",
            "-CAcreateserial",
            "-days",
            "1825",
            "-sha256",
            "-extfile",
            "ext.cnf",
            "-out",
            out,
        ],
    );
}

#[test]
fn external_ca_signed_by_an_outside_root() {
    let d = Daemon::start();
    let dir = d.dir.path();

    // The outside root, made with openssl.
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-384",
            "-nodes",
            "-keyout",
            "outside-root.key",
            "-subj",
            "/O=Outside/CN=Outside Root",
            "-days",
            "3650",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-out",
            "outside-root.pem",
        ],
    );
    d.write("ext.cnf", EXT_CNF);

    // Create: a CSR on stdout.
    let csr = d.ok(&["ca", "create", "ext", "--external"]);
    assert!(
        csr.starts_with("-----BEGIN CERTIFICATE REQUEST-----"),
        "stdout is the CSR alone:\n{csr}"
    );
    assert_eq!(pem_blocks(&csr).len(), 1, "{csr}");
    d.write("ext.csr", &csr);
    let out = openssl(
        dir,
        &["req", "-in", "ext.csr", "-noout", "-verify", "-text"],
    );
    assert!(
        out.contains("CA:TRUE"),
        "CSR requests a CA certificate:\n{out}"
    );

    let pending = d.json(&["ca", "describe", "ext"]);
    assert_eq!(pending["state"], "pending-certificate", "{pending}");
    assert_eq!(pending["kind"], "external");
    assert_eq!(ca_entry(&d, "ext")["state"], "pending-certificate");

    // Not usable before install.
    let err = d.fails(&["request", "early.ext.internal", "--ca", "ext"], 1);
    assert!(err.contains("waiting for its certificate"), "{err}");
    d.fails(&["ca", "certificate", "ext"], 1);

    outside_sign(dir, "ext.csr", "ext.pem");
    verify_ok(dir, &["-CAfile", "outside-root.pem", "ext.pem"]);

    // A certificate for a different key is refused (ext's certificate offered for ext2).
    d.ok(&["ca", "create", "ext2", "--external"]);
    let err = d.fails(
        &[
            "ca",
            "install",
            "ext2",
            "--certificate",
            "ext.pem",
            "--chain",
            "outside-root.pem",
        ],
        65,
    );
    assert!(err.contains("key"), "{err}");
    assert_eq!(ca_entry(&d, "ext2")["state"], "pending-certificate");
    // ... as is a chain that does not sign the certificate.
    let default_root = d.ok(&["ca", "certificate", "default"]);
    d.write("wrong-chain.pem", &default_root);
    d.fails(
        &[
            "ca",
            "install",
            "ext",
            "--certificate",
            "ext.pem",
            "--chain",
            "wrong-chain.pem",
        ],
        65,
    );
    assert_eq!(ca_entry(&d, "ext")["state"], "pending-certificate");

    let installed = d.json(&[
        "ca",
        "install",
        "ext",
        "--certificate",
        "ext.pem",
        "--chain",
        "outside-root.pem",
    ]);
    assert_eq!(installed["state"], "active", "{installed}");
    let entry = ca_entry(&d, "ext");
    assert_eq!(entry["state"], "active", "{entry}");
    assert_eq!(entry["kind"], "external");
    // Installing again is a conflict.
    d.fails(&["ca", "install", "ext", "--certificate", "ext.pem"], 1);

    let outside = ders(&std::fs::read_to_string(d.path("outside-root.pem")).expect("root"));
    let ext = ders(&std::fs::read_to_string(d.path("ext.pem")).expect("ext")).remove(0);
    let chain = write_ca(&d, "ext", "ext-chain.pem");
    assert_eq!(chain, vec![ext.clone(), outside[0].clone()]);

    let (cert, full) = request_leaf(
        &d,
        &["svc.ext.internal", "--ca", "ext", "--validity", "30d"],
        "leaf.pem",
    );
    assert_eq!(cert["issuer"], "ext");
    assert_eq!(full.len(), 3, "fullchain = leaf + ext + outside root");
    assert_eq!(full[1], ext);
    assert_eq!(full[2], outside[0]);
    assert_eq!(
        aki(&parse(&full[0])),
        ski(&parse(&ext)),
        "leaf AKI = ext SKI"
    );
    verify_ok(
        dir,
        &[
            "-CAfile",
            "outside-root.pem",
            "-untrusted",
            "ext.pem",
            "leaf.pem",
        ],
    );
    webpki_verify(
        &full[0],
        &outside[0],
        std::slice::from_ref(&ext),
        webpki::KeyUsage::server_auth(),
    )
    .expect("webpki via outside root");
    webpki_name(&full[0], "svc.ext.internal").expect("webpki name");

    // The external CA signs its CRL too.
    d.ok(&["ca", "crl", "ext", "--out", "ext-crl.pem"]);
    let (_, out) = openssl_try(
        dir,
        &[
            "crl",
            "-in",
            "ext-crl.pem",
            "-CAfile",
            "ext-chain.pem",
            "-noout",
        ],
    );
    assert!(out.contains("verify OK"), "{out}");
}

// --- 6. duplicate names ----------------------------------------------------------------------

#[test]
fn duplicate_ca_names_are_refused() {
    let d = Daemon::start();
    let err = d.fails(&["ca", "create", "default"], 1);
    assert!(err.contains("already exists"), "{err}");
    d.ok(&["ca", "create", "team", "--parent", "default"]);
    let before = d.ok(&["ca", "certificate", "team"]);
    let err = d.fails(&["ca", "create", "team", "--parent", "default"], 1);
    assert!(err.contains("already exists"), "{err}");
    d.fails(&["ca", "create", "team", "--external"], 1);
    d.fails(&["ca", "create", "team"], 1);
    // The original is untouched.
    assert_eq!(d.ok(&["ca", "certificate", "team"]), before);
    let names: Vec<String> = d.json(&["ca", "list"])["cas"]
        .as_array()
        .expect("cas")
        .iter()
        .map(|c| c["name"].as_str().expect("name").to_owned())
        .collect();
    assert_eq!(
        names.iter().filter(|n| *n == "team").count(),
        1,
        "{names:?}"
    );
    assert_eq!(
        names.iter().filter(|n| *n == "default").count(),
        1,
        "{names:?}"
    );
}
