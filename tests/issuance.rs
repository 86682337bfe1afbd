//! Issuing private certificates through the real binary, checked by outside verifiers: the
//! `openssl` CLI and rustls-webpki, plus a field-by-field reading with x509-parser.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::path::Path;

use common::pki::{aki, ders, parse, pem_blocks, ski, webpki_name, webpki_verify};
use common::{Daemon, id, make_csr, openssl, openssl_try};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::public_key::PublicKey;

const BACKDATE_SECS: i64 = 5 * 60;
const DAY: i64 = 86_400;

// --- helpers ---------------------------------------------------------------------------------

fn rfc3339(v: &serde_json::Value) -> OffsetDateTime {
    OffsetDateTime::parse(v.as_str().expect("time string"), &Rfc3339).expect("RFC 3339 time")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SAN entries as "DNS:x" / "IP:a.b.c.d" strings, in certificate order.
fn sans(cert: &X509Certificate<'_>) -> Vec<String> {
    let san = cert
        .subject_alternative_name()
        .expect("SAN parses")
        .expect("SAN present");
    san.value
        .general_names
        .iter()
        .map(|n| match n {
            GeneralName::DNSName(d) => format!("DNS:{d}"),
            GeneralName::IPAddress(b) if b.len() == 4 => {
                format!("IP:{}", std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]))
            }
            other => format!("OTHER:{other}"),
        })
        .collect()
}

/// Writes the default CA's certificate to `root.pem` and returns its DER.
fn write_root(d: &Daemon) -> CertificateDer<'static> {
    let root_pem = d.ok(&["ca", "certificate", "default"]);
    let root = ders(&root_pem);
    assert_eq!(root.len(), 1, "a root CA has no issuers:\n{root_pem}");
    d.write("root.pem", &root_pem);
    root.into_iter().next().expect("root")
}

fn pubkey_of_cert(dir: &Path, file: &str) -> String {
    openssl(dir, &["x509", "-in", file, "-noout", "-pubkey"])
}

// --- 1. every key algorithm ------------------------------------------------------------------

struct Expect {
    alg: &'static str,
    /// A fragment `openssl x509 -text` prints for this key type.
    openssl_text: &'static [&'static str],
    /// The SubjectPublicKeyInfo algorithm OID.
    spki_oid: &'static str,
    /// RSA modulus / EC field size in bits (0: not checked through x509-parser).
    bits: usize,
    rsa: bool,
}

const ALGORITHMS: &[Expect] = &[
    Expect {
        alg: "ec-p256",
        openssl_text: &[
            "id-ecPublicKey",
            "Public-Key: (256 bit)",
            "NIST CURVE: P-256",
        ],
        spki_oid: "1.2.840.10045.2.1",
        bits: 256,
        rsa: false,
    },
    Expect {
        alg: "ec-p384",
        openssl_text: &[
            "id-ecPublicKey",
            "Public-Key: (384 bit)",
            "NIST CURVE: P-384",
        ],
        spki_oid: "1.2.840.10045.2.1",
        bits: 384,
        rsa: false,
    },
    Expect {
        alg: "rsa-2048",
        openssl_text: &["rsaEncryption", "Public-Key: (2048 bit)"],
        spki_oid: "1.2.840.113549.1.1.1",
        bits: 2048,
        rsa: true,
    },
    Expect {
        alg: "rsa-3072",
        openssl_text: &["rsaEncryption", "Public-Key: (3072 bit)"],
        spki_oid: "1.2.840.113549.1.1.1",
        bits: 3072,
        rsa: true,
    },
    Expect {
        alg: "rsa-4096",
        openssl_text: &["rsaEncryption", "Public-Key: (4096 bit)"],
        spki_oid: "1.2.840.113549.1.1.1",
        bits: 4096,
        rsa: true,
    },
    Expect {
        alg: "ed25519",
        openssl_text: &["ED25519"],
        spki_oid: "1.3.101.112",
        bits: 0,
        rsa: false,
    },
];

const DOMAINS: [&str; 3] = ["app.internal", "www.app.internal", "10.1.2.3"];

/// Requests one certificate and checks everything about it. Returns the `key_algorithm` the
/// JSON reported (checked by the caller after everything else, so one wrong spelling does not
/// hide the other checks).
fn check_issuance(
    d: &Daemon,
    root: &CertificateDer<'_>,
    e: &Expect,
    client_auth: bool,
) -> serde_json::Value {
    let dir = d.dir.path();
    let name = format!("app-{}{}", e.alg, if client_auth { "-client" } else { "" });
    let mut args = vec!["request"];
    args.extend(DOMAINS);
    args.extend([
        "--key-algorithm",
        e.alg,
        "--validity",
        "90d",
        "--name",
        &name,
    ]);
    if client_auth {
        args.push("--client-auth");
    }
    let before = OffsetDateTime::now_utc();
    let cert = d.json(&args);
    let after = OffsetDateTime::now_utc();
    let ctx = format!(
        "[{}{}]",
        e.alg,
        if client_auth { " client-auth" } else { "" }
    );
    assert_eq!(cert["status"], "issued", "{ctx} {cert}");
    assert_eq!(cert["current_version"], 1, "{ctx}");
    assert_eq!(
        cert["domains"],
        serde_json::json!(DOMAINS),
        "{ctx} domains as requested"
    );
    assert_eq!(cert["client_auth"], client_auth, "{ctx}");
    let id = id(&cert);

    // The PEM: fullchain = leaf + root; cert and chain parts agree with it.
    let full = d.ok(&["get", &id]);
    let leaf_pem = d.ok(&["get", &id, "--part", "cert"]);
    let chain_pem = d.ok(&["get", &id, "--part", "chain"]);
    let full_ders = ders(&full);
    assert_eq!(
        full_ders.len(),
        2,
        "{ctx} fullchain is leaf + root:\n{full}"
    );
    assert_eq!(
        ders(&leaf_pem),
        vec![full_ders[0].clone()],
        "{ctx} --part cert"
    );
    assert_eq!(
        ders(&chain_pem),
        vec![full_ders[1].clone()],
        "{ctx} --part chain"
    );
    assert_eq!(
        &full_ders[1], root,
        "{ctx} chain is the default CA certificate"
    );
    let leaf_file = format!("leaf-{name}.pem");
    let full_file = format!("full-{name}.pem");
    d.write(&leaf_file, &leaf_pem);
    d.write(&full_file, &full);

    // openssl verifies the `get` output against the CA certificate.
    let out = openssl(dir, &["verify", "-CAfile", "root.pem", &full_file]);
    assert!(out.contains(": OK"), "{ctx} openssl verify: {out}");
    let out = openssl(
        dir,
        &[
            "verify",
            "-purpose",
            "sslserver",
            "-CAfile",
            "root.pem",
            &leaf_file,
        ],
    );
    assert!(
        out.contains(": OK"),
        "{ctx} openssl verify sslserver: {out}"
    );
    for name in DOMAINS {
        let flag = if name.parse::<std::net::IpAddr>().is_ok() {
            "-verify_ip"
        } else {
            "-verify_hostname"
        };
        let out = openssl(
            dir,
            &["verify", "-CAfile", "root.pem", flag, name, &leaf_file],
        );
        assert!(out.contains(": OK"), "{ctx} openssl {flag} {name}: {out}");
    }
    let (ok, out) = openssl_try(
        dir,
        &[
            "verify",
            "-CAfile",
            "root.pem",
            "-verify_hostname",
            "other.internal",
            &leaf_file,
        ],
    );
    assert!(
        !ok,
        "{ctx} a name not in the certificate must not verify: {out}"
    );

    // rustls-webpki verifies the chain and every name.
    let leaf = &full_ders[0];
    webpki_verify(leaf, root, &[], webpki::KeyUsage::server_auth())
        .unwrap_or_else(|err| panic!("{ctx} webpki server_auth: {err:?}"));
    for name in DOMAINS {
        webpki_name(leaf, name).unwrap_or_else(|err| panic!("{ctx} webpki name {name}: {err:?}"));
    }
    assert!(
        webpki_name(leaf, "other.internal").is_err(),
        "{ctx} webpki accepted a name not in the certificate"
    );
    let client = webpki_verify(leaf, root, &[], webpki::KeyUsage::client_auth());
    if client_auth {
        client.unwrap_or_else(|err| panic!("{ctx} webpki client_auth: {err:?}"));
    } else {
        assert!(
            client.is_err(),
            "{ctx} a server-only certificate must not verify for client auth"
        );
    }

    // Field by field.
    let x = parse(leaf);
    let root_x = parse(root);
    assert_eq!(
        sans(&x),
        vec!["DNS:app.internal", "DNS:www.app.internal", "IP:10.1.2.3"],
        "{ctx} SANs exactly as requested"
    );
    let cns: Vec<&str> = x
        .subject()
        .iter_common_name()
        .map(|cn| cn.as_str().expect("CN string"))
        .collect();
    assert_eq!(cns, vec!["app.internal"], "{ctx} CN = first domain");
    assert_eq!(x.issuer(), root_x.subject(), "{ctx} issuer is the root");

    let eku = x
        .extended_key_usage()
        .expect("EKU parses")
        .expect("EKU present");
    assert!(eku.value.server_auth, "{ctx} serverAuth");
    assert_eq!(eku.value.client_auth, client_auth, "{ctx} clientAuth");
    assert!(
        !eku.value.any
            && !eku.value.code_signing
            && !eku.value.email_protection
            && !eku.value.time_stamping
            && !eku.value.ocsp_signing
            && eku.value.other.is_empty(),
        "{ctx} no other EKU: {:?}",
        eku.value
    );

    let bc = x
        .basic_constraints()
        .expect("basicConstraints parses")
        .expect("basicConstraints present");
    assert!(!bc.value.ca, "{ctx} CA:FALSE");

    let ku = x.key_usage().expect("KU parses").expect("keyUsage present");
    assert!(ku.value.digital_signature(), "{ctx} digitalSignature");
    assert!(!ku.value.key_cert_sign(), "{ctx} no keyCertSign on a leaf");
    assert_eq!(
        ku.value.key_encipherment(),
        e.rsa,
        "{ctx} keyEncipherment only for RSA keys"
    );

    let leaf_ski = ski(&x).unwrap_or_else(|| panic!("{ctx} SKI missing"));
    assert!(!leaf_ski.is_empty(), "{ctx} SKI empty");
    let leaf_aki = aki(&x).unwrap_or_else(|| panic!("{ctx} AKI missing"));
    assert_eq!(
        Some(leaf_aki),
        ski(&root_x),
        "{ctx} AKI = the issuing CA's SKI"
    );

    let spki = x.public_key();
    assert_eq!(
        spki.algorithm.algorithm.to_id_string(),
        e.spki_oid,
        "{ctx} key algorithm OID"
    );
    if e.bits != 0 {
        let parsed = spki.parsed().expect("public key parses");
        match (&parsed, e.rsa) {
            (PublicKey::RSA(_), true) | (PublicKey::EC(_), false) => {}
            _ => panic!("{ctx} unexpected key type"),
        }
        assert_eq!(parsed.key_size(), e.bits, "{ctx} key size");
    }
    let text = openssl(dir, &["x509", "-in", &leaf_file, "-noout", "-text"]);
    for fragment in e.openssl_text {
        assert!(
            text.contains(fragment),
            "{ctx} openssl text lacks {fragment:?}:\n{text}"
        );
    }
    assert!(
        text.contains("DNS:app.internal, DNS:www.app.internal, IP Address:10.1.2.3"),
        "{ctx} openssl SAN line:\n{text}"
    );
    assert!(text.contains("CA:FALSE"), "{ctx}\n{text}");
    assert!(
        text.contains("X509v3 Subject Key Identifier"),
        "{ctx}\n{text}"
    );
    assert!(
        text.contains("X509v3 Authority Key Identifier"),
        "{ctx}\n{text}"
    );
    let eku_line = text
        .lines()
        .skip_while(|l| !l.contains("X509v3 Extended Key Usage"))
        .nth(1)
        .unwrap_or_default()
        .trim()
        .to_owned();
    let want_eku = if client_auth {
        "TLS Web Server Authentication, TLS Web Client Authentication"
    } else {
        "TLS Web Server Authentication"
    };
    assert_eq!(eku_line, want_eku, "{ctx} openssl EKU");

    // Validity: not_before backdated 5 minutes, not_after = issuance + 90 days.
    let nb = x.validity().not_before.timestamp();
    let na = x.validity().not_after.timestamp();
    let lifetime = na - nb;
    let want = 90 * DAY + BACKDATE_SECS;
    assert!(
        (lifetime - want).abs() <= 1,
        "{ctx} not_after - not_before = {lifetime}s, want {want}s"
    );
    let issued_lo = before.unix_timestamp() - 2;
    let issued_hi = after.unix_timestamp() + 2;
    assert!(
        (issued_lo - BACKDATE_SECS..=issued_hi - BACKDATE_SECS).contains(&nb),
        "{ctx} not_before {nb} is not 5 minutes before the request ({issued_lo}..{issued_hi})"
    );
    assert!(
        (issued_lo + 90 * DAY..=issued_hi + 90 * DAY).contains(&na),
        "{ctx} not_after {na} is not request time + 90 days"
    );
    assert_eq!(
        rfc3339(&cert["not_before"]).unix_timestamp(),
        nb,
        "{ctx} JSON not_before matches the certificate"
    );
    assert_eq!(
        rfc3339(&cert["not_after"]).unix_timestamp(),
        na,
        "{ctx} JSON not_after matches the certificate"
    );

    // Serial: positive, 16 bytes, as the API reports it.
    let serial = x.raw_serial();
    assert_eq!(
        serial.len(),
        16,
        "{ctx} serial {} is not 16 bytes",
        hex(serial)
    );
    assert!(
        serial[0] != 0 && serial[0] & 0x80 == 0,
        "{ctx} serial {} not positive/minimal",
        hex(serial)
    );
    assert_eq!(cert["serial"], hex(serial), "{ctx} JSON serial");
    cert["key_algorithm"].clone()
}

#[test]
fn every_key_algorithm_issues_verifiable_certificates() {
    let d = Daemon::start();
    let root = write_root(&d);
    let mut reported = Vec::new();
    for e in ALGORITHMS {
        reported.push((e.alg, check_issuance(&d, &root, e, false)));
    }
    // --client-auth adds clientAuth (checked with one EC and one RSA key).
    check_issuance(&d, &root, &ALGORITHMS[0], true);
    check_issuance(&d, &root, &ALGORITHMS[2], true);
    // The JSON spells the algorithm as the CLI and config do (kebab-case: "rsa-2048").
    let wrong: Vec<String> = reported
        .iter()
        .filter(|(alg, json)| json != alg)
        .map(|(alg, json)| format!("--key-algorithm {alg} is reported as {json}"))
        .collect();
    assert!(wrong.is_empty(), "JSON key_algorithm spellings: {wrong:?}");
}

// --- 2. serial uniqueness --------------------------------------------------------------------

#[test]
fn serials_are_unique() {
    let d = Daemon::start();
    let mut serials = std::collections::BTreeSet::new();
    let n = 30;
    for i in 0..n {
        let cert = d.json(&["request", &format!("s{i}.internal"), "--validity", "10d"]);
        let serial = cert["serial"].as_str().expect("serial").to_owned();
        assert_eq!(serial.len(), 32, "16-byte serial as hex: {serial}");
        let pem = d.ok(&["get", &id(&cert), "--part", "cert"]);
        let der = ders(&pem).remove(0);
        assert_eq!(hex(parse(&der).raw_serial()), serial);
        assert!(
            serials.insert(serial.clone()),
            "serial {serial} issued twice"
        );
    }
    assert_eq!(serials.len(), n);
    // The CA's own serial is distinct from every leaf's too.
    let ca = d.json(&["ca", "describe", "default"]);
    let ca_serial = ca["serial"].as_str().expect("CA serial");
    assert!(!serials.contains(ca_serial));
}

// --- 3. default validity ---------------------------------------------------------------------

#[test]
fn default_validity_is_395_days() {
    let d = Daemon::start();
    let cert = d.json(&["request", "default.internal"]);
    let pem = d.ok(&["get", &id(&cert), "--part", "cert"]);
    let der = ders(&pem).remove(0);
    let x = parse(&der);
    let lifetime = x.validity().not_after.timestamp() - x.validity().not_before.timestamp();
    let want = 395 * DAY + BACKDATE_SECS;
    assert!(
        (lifetime - want).abs() <= 1,
        "default lifetime {lifetime}s, want 395 days + 5 minutes ({want}s)"
    );
    let json_lifetime = rfc3339(&cert["not_after"]) - rfc3339(&cert["not_before"]);
    assert!((json_lifetime.whole_seconds() - want).abs() <= 1);
    // The default key algorithm is ec-p256.
    assert_eq!(cert["key_algorithm"], "ec-p256");
}

// --- 4. sign -------------------------------------------------------------------------------

#[test]
fn sign_issues_for_a_csr_without_holding_the_key() {
    let d = Daemon::start();
    let dir = d.dir.path();
    let root = write_root(&d);
    make_csr(dir, "svc", "svc.internal", "DNS:svc.internal,IP:10.9.8.7");

    let out = d.ck(&["sign", "--csr", "svc.csr", "--validity", "30d"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "sign failed: {stderr}");
    let signed = String::from_utf8(out.stdout).expect("utf-8");
    let blocks = pem_blocks(&signed);
    assert_eq!(blocks.len(), 2, "sign prints leaf + chain:\n{signed}");
    d.write("signed.pem", &signed);
    d.write("signed-leaf.pem", &blocks[0]);
    assert_eq!(ders(&blocks[1]), vec![root.clone()], "chain is the root");

    let out = openssl(dir, &["verify", "-CAfile", "root.pem", "signed-leaf.pem"]);
    assert!(out.contains(": OK"), "{out}");
    let leaf = ders(&blocks[0]).remove(0);
    webpki_verify(&leaf, &root, &[], webpki::KeyUsage::server_auth()).expect("webpki");
    webpki_name(&leaf, "svc.internal").expect("webpki svc.internal");
    webpki_name(&leaf, "10.9.8.7").expect("webpki 10.9.8.7");
    let x = parse(&leaf);
    assert_eq!(sans(&x), vec!["DNS:svc.internal", "IP:10.9.8.7"]);
    let lifetime = x.validity().not_after.timestamp() - x.validity().not_before.timestamp();
    assert!(
        (lifetime - (30 * DAY + BACKDATE_SECS)).abs() <= 1,
        "lifetime {lifetime}"
    );

    // The certificate carries the CSR's public key.
    let cert_key = pubkey_of_cert(dir, "signed-leaf.pem");
    let csr_key = openssl(dir, &["pkey", "-in", "svc.key", "-pubout"]);
    assert_eq!(
        cert_key, csr_key,
        "certificate key differs from the CSR key"
    );

    // It is in the inventory, without a key.
    let list = d.json(&["list"]);
    let entry = list["certificates"]
        .as_array()
        .expect("certificates")
        .iter()
        .find(|c| c["name"] == "svc.internal")
        .unwrap_or_else(|| panic!("signed certificate not listed: {list}"))
        .clone();
    let cert_id = id(&entry);
    assert!(
        stderr.contains(&cert_id),
        "sign names the id on stderr: {stderr}"
    );
    assert_eq!(entry["serial"], hex(x.raw_serial()));
    assert_eq!(entry["status"], "issued");
    assert_eq!(entry["origin"], "private");
    let described = d.json(&["describe", &cert_id]);
    assert_eq!(described["versions"][0]["key_held"], false, "{described}");
    assert_eq!(d.ok(&["get", &cert_id, "--part", "cert"]), blocks[0]);

    // No key, so no export.
    d.write("pass.txt", "correct horse battery staple\n");
    let err = d.fails(&["export", &cert_id, "--passphrase-file", "pass.txt"], 1);
    assert!(err.contains("does not hold"), "{err}");

    // A CSR whose signature does not verify (one byte of the DER signature flipped).
    openssl(
        dir,
        &[
            "req", "-in", "svc.csr", "-outform", "DER", "-out", "svc.der",
        ],
    );
    let mut der = std::fs::read(d.path("svc.der")).expect("read DER CSR");
    let last = der.len() - 1;
    der[last] ^= 0xff;
    d.write("broken.der", &der);
    let (ok, _) = openssl_try(
        dir,
        &["req", "-inform", "DER", "-in", "broken.der", "-noout"],
    );
    assert!(
        ok,
        "the broken CSR must still parse (only its signature is wrong)"
    );
    let err = d.fails(&["sign", "--csr", "broken.der"], 65);
    assert!(err.contains("signature"), "{err}");

    // Failed signs left nothing behind.
    assert_eq!(d.count(), 1);

    // A CSR for a name outside a constrained CA (a constrained root here: constrained
    // subordinates are covered in tests/ca.rs).
    d.ok(&["ca", "create", "corp", "--permit-dns", "corp.example"]);
    make_csr(dir, "evil", "evil.example", "DNS:evil.example");
    let err = d.fails(&["sign", "--csr", "evil.csr", "--ca", "corp"], 65);
    assert!(err.contains("outside its permitted names"), "{err}");
    // ... while one inside it is signed.
    make_csr(dir, "good", "a.corp.example", "DNS:a.corp.example");
    d.ok(&["sign", "--csr", "good.csr", "--ca", "corp"]);
    assert_eq!(d.count(), 2);
}

#[test]
fn sign_batch_issues_every_csr_or_none() {
    let d = Daemon::start();
    let dir = d.dir.path();
    write_root(&d);
    for stem in ["a", "b", "c"] {
        make_csr(
            dir,
            stem,
            &format!("{stem}.internal"),
            &format!("DNS:{stem}.internal"),
        );
    }
    std::fs::create_dir(d.path("out")).expect("mkdir out");

    // Several CSRs: one transaction, one file per CSR, each leaf with its own CSR's key.
    let out = d.ck(&[
        "sign",
        "--csr",
        "a.csr",
        "--csr",
        "b.csr",
        "--csr",
        "c.csr",
        "--out-dir",
        "out",
        "--validity",
        "7d",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "batch sign failed: {stderr}");
    assert_eq!(stderr.matches("issued ck-").count(), 3, "{stderr}");
    for stem in ["a", "b", "c"] {
        let chain = std::fs::read_to_string(d.path(&format!("out/{stem}.pem"))).expect("out");
        let blocks = pem_blocks(&chain);
        assert_eq!(blocks.len(), 2, "{stem}: leaf + root");
        d.write(&format!("{stem}-leaf.pem"), &blocks[0]);
        let verified = openssl(
            dir,
            &["verify", "-CAfile", "root.pem", &format!("{stem}-leaf.pem")],
        );
        assert!(verified.contains(": OK"), "{verified}");
        let leaf = ders(&blocks[0]).remove(0);
        webpki_name(&leaf, &format!("{stem}.internal")).expect("name");
        assert_eq!(
            pubkey_of_cert(dir, &format!("{stem}-leaf.pem")),
            openssl(dir, &["pkey", "-in", &format!("{stem}.key"), "-pubout"]),
            "{stem}: the certificate carries its CSR's key"
        );
    }
    assert_eq!(d.count(), 3);

    // One bad CSR in the middle: the error names it, and neither of the good ones is issued.
    openssl(
        dir,
        &["req", "-in", "b.csr", "-outform", "DER", "-out", "b.der"],
    );
    let mut der = std::fs::read(d.path("b.der")).expect("read DER CSR");
    let last = der.len() - 1;
    der[last] ^= 0xff;
    d.write("broken.der", &der);
    std::fs::create_dir(d.path("out2")).expect("mkdir out2");
    let err = d.fails(
        &[
            "sign",
            "--csr",
            "a.csr",
            "--csr",
            "broken.der",
            "--csr",
            "c.csr",
            "--out-dir",
            "out2",
        ],
        65,
    );
    assert!(
        err.contains("requests[1]") && err.contains("signature"),
        "{err}"
    );
    assert_eq!(d.count(), 3, "a failed batch stores nothing");
    assert!(
        !d.path("out2/a.pem").exists(),
        "a failed batch writes no file"
    );

    // JSON: one document listing every certificate in order.
    let json = d.json(&["sign", "--csr", "a.csr", "--csr", "b.csr"]);
    let signed = json["signed"].as_array().expect("signed");
    assert_eq!(signed.len(), 2, "{json}");
    assert_eq!(signed[0]["certificate"]["domains"][0], "a.internal");
    assert_eq!(signed[1]["certificate"]["domains"][0], "b.internal");
    assert_eq!(d.count(), 5);

    // Usage: several CSRs need a place for their files, and cannot share one name.
    let sign_two = |extra: &[&str]| {
        let mut args = vec!["sign", "--csr", "a.csr", "--csr", "b.csr"];
        args.extend(extra);
        d.fails(&args, 2)
    };
    let err = sign_two(&[]);
    assert!(err.contains("--out-dir"), "{err}");
    let err = sign_two(&["--name", "x", "--out-dir", "out"]);
    assert!(err.contains("--name"), "{err}");
    let err = sign_two(&["--out-dir", "missing"]);
    assert!(err.contains("missing: not a directory"), "{err}");
    assert_eq!(
        d.count(),
        5,
        "nothing is signed before the output is known to be writable"
    );
    // A certificate never replaces its own CSR.
    d.write("d.pem", std::fs::read(d.path("a.csr")).expect("a.csr"));
    let err = d.fails(&["sign", "--csr", "d.pem", "--out-dir", "."], 2);
    assert!(err.contains("overwrite its CSR"), "{err}");

    // Through the API: explicit names that clash fail the batch, naming the request.
    let csr = std::fs::read_to_string(d.path("a.csr")).expect("a.csr");
    let request = |name: &str| serde_json::json!({ "csr": csr, "name": name });
    let body = serde_json::json!({ "requests": [request("one"), request("one")] }).to_string();
    let (status, text) = common::http(&d.socket, "POST", "/v1/sign/batch", Some(body.as_bytes()));
    assert_eq!(status, 409, "{text}");
    assert!(
        text.contains("requests[1]") && text.contains("one"),
        "{text}"
    );
    // ... and so does one taken by a certificate already stored.
    let body = serde_json::json!({ "requests": [request("two"), request("a.internal-x")] });
    d.ok(&["sign", "--csr", "c.csr", "--name", "a.internal-x"]);
    let body = body.to_string();
    let (status, text) = common::http(&d.socket, "POST", "/v1/sign/batch", Some(body.as_bytes()));
    assert_eq!(status, 409, "{text}");
    assert!(
        text.contains("requests[1]") && text.contains("a.internal-x"),
        "{text}"
    );
    assert_eq!(d.count(), 6);
    // An empty batch and one over the limit are refused before any signing.
    let body = serde_json::json!({ "requests": [] }).to_string();
    let (status, text) = common::http(&d.socket, "POST", "/v1/sign/batch", Some(body.as_bytes()));
    assert_eq!(status, 422, "{text}");
    let many: Vec<_> = (0..1001)
        .map(|_| serde_json::json!({ "csr": csr }))
        .collect();
    let body = serde_json::json!({ "requests": many }).to_string();
    let (status, text) = common::http(&d.socket, "POST", "/v1/sign/batch", Some(body.as_bytes()));
    assert_eq!(status, 422, "{text}");
    assert!(text.contains("1 to 1000"), "{text}");
    // Malformed bodies: a JSON error naming what is wrong, nothing signed.
    for (body, names) in [
        (r#"{"requests": "a.csr"}"#, "requests"),
        (r#"{"requests": [{"csr": "x", "colour": 1}]}"#, "colour"),
        (r#"{"requests": [{"csr": "#, "EOF"),
    ] {
        let (status, text) =
            common::http(&d.socket, "POST", "/v1/sign/batch", Some(body.as_bytes()));
        assert!((400..500).contains(&status), "{status} {text}");
        assert!(
            text.contains("invalid-json") && text.contains(names),
            "{text}"
        );
    }
    assert_eq!(d.count(), 6);
}

// --- 5. renew ------------------------------------------------------------------------------

#[test]
fn renew_adds_a_version_with_a_new_key_and_serial() {
    let d = Daemon::start();
    let dir = d.dir.path();
    let root = write_root(&d);
    let first = d.json(&["request", "renew.internal", "--validity", "30d"]);
    let cert_id = id(&first);
    let v1_pem = d.ok(&["get", &cert_id, "--part", "cert"]);

    let renewed = d.json(&["renew", &cert_id]);
    assert_eq!(renewed["id"], first["id"], "same id after renewal");
    assert_eq!(renewed["current_version"], 2);
    assert_eq!(renewed["status"], "issued");
    assert_ne!(renewed["serial"], first["serial"], "new serial");

    let described = d.json(&["describe", &cert_id]);
    let versions = described["versions"].as_array().expect("versions");
    assert_eq!(versions.len(), 2, "{described}");
    let numbers: std::collections::BTreeSet<u64> = versions
        .iter()
        .map(|v| v["version"].as_u64().expect("version"))
        .collect();
    assert_eq!(numbers, [1, 2].into_iter().collect());
    for v in versions {
        assert_eq!(v["key_held"], true);
        let want = if v["version"] == 1 {
            &first["serial"]
        } else {
            &renewed["serial"]
        };
        assert_eq!(&v["serial"], want, "{v}");
    }

    let v2_pem = d.ok(&["get", &cert_id, "--part", "cert"]);
    assert_ne!(v1_pem, v2_pem);
    assert_eq!(
        d.ok(&["get", &cert_id, "--part", "cert", "--version", "2"]),
        v2_pem
    );
    assert_eq!(
        d.ok(&["get", &cert_id, "--part", "cert", "--version", "1"]),
        v1_pem,
        "version 1 is still retrievable unchanged"
    );
    d.fails(&["get", &cert_id, "--version", "3"], 1);

    d.write("v1.pem", &v1_pem);
    d.write("v2.pem", &v2_pem);
    assert_ne!(
        pubkey_of_cert(dir, "v1.pem"),
        pubkey_of_cert(dir, "v2.pem"),
        "renewal must generate a new key"
    );
    let v1 = ders(&v1_pem).remove(0);
    let v2 = ders(&v2_pem).remove(0);
    let (x1, x2) = (parse(&v1), parse(&v2));
    assert_eq!(hex(x2.raw_serial()), renewed["serial"]);
    assert_eq!(sans(&x1), sans(&x2), "same names");
    let lifetime = x2.validity().not_after.timestamp() - x2.validity().not_before.timestamp();
    assert!(
        (lifetime - (30 * DAY + BACKDATE_SECS)).abs() <= 1,
        "renewal keeps the requested lifetime: {lifetime}"
    );
    let out = openssl(dir, &["verify", "-CAfile", "root.pem", "v2.pem"]);
    assert!(out.contains(": OK"), "{out}");
    webpki_verify(&v2, &root, &[], webpki::KeyUsage::server_auth()).expect("webpki v2");
    webpki_name(&v2, "renew.internal").expect("webpki name v2");
}
