//! `certkeeper import` through the real binary and daemon, with material made by the real
//! `openssl` CLI: what is accepted, what is rejected (exit 65, one line naming the problem,
//! nothing stored), re-import as a new version, and that the key never reaches disk in plaintext.
//!
//! Expired certificates: the openssl on the test machine is 3.0, whose `x509 -req` has no
//! `-not_before`/`-not_after` (added in 3.4) and `faketime` is not installed, so expired
//! certificates are issued with `openssl ca -startdate ... -enddate ...`, which 3.0 does support.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use common::{Daemon, http, id, openssl};

/// Extensions for a CA certificate signed with `openssl x509 -req -extfile`.
const CA_EXT: &str = "basicConstraints=critical,CA:TRUE
keyUsage=critical,keyCertSign,cRLSign
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid:always
";

/// Extensions for a TLS server leaf certificate.
const LEAF_EXT: &str = "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=DNS:shop.example.com
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid
";

/// A minimal `openssl ca` configuration, used only to back-date certificates (see the module
/// comment).
const CA_CNF: &str = "[ ca ]
default_ca = CA_default
[ CA_default ]
database = ca-index.txt
new_certs_dir = .
serial = ca-serial.txt
default_md = sha256
policy = policy_any
unique_subject = no
[ policy_any ]
commonName = supplied
";

const P256: &[&str] = &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"];
const P521: &[&str] = &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-521"];
const RSA1024: &[&str] = &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024"];

fn ossl(d: &Daemon, args: &[&str]) -> String {
    openssl(d.dir.path(), args)
}

fn read(d: &Daemon, name: &str) -> Vec<u8> {
    std::fs::read(d.path(name)).unwrap_or_else(|e| panic!("read {name}: {e}"))
}

fn read_text(d: &Daemon, name: &str) -> String {
    String::from_utf8(read(d, name)).expect("utf-8 file")
}

/// Writes `name` as a new private key of the given `openssl genpkey` kind.
fn genkey(d: &Daemon, name: &str, kind: &[&str]) {
    let mut args = vec!["genpkey"];
    args.extend_from_slice(kind);
    args.extend(["-out", name]);
    ossl(d, &args);
}

/// A self-signed root `{p}root.pem`/`.key`, an intermediate `{p}int.pem`/`.key` signed by it, and
/// `{p}chain.pem` (intermediate then root, issuer order).
fn ca_pair(d: &Daemon, p: &str) {
    d.write("ca.ext", CA_EXT);
    let (root_key, root) = (format!("{p}root.key"), format!("{p}root.pem"));
    let (int_key, int_csr, int) = (
        format!("{p}int.key"),
        format!("{p}int.csr"),
        format!("{p}int.pem"),
    );
    genkey(d, &root_key, P256);
    ossl(
        d,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            &root_key,
            "-subj",
            &format!("/CN={p}Test Root CA"),
            "-days",
            "3650",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-out",
            &root,
        ],
    );
    genkey(d, &int_key, P256);
    ossl(
        d,
        &[
            "req",
            "-new",
            "-key",
            &int_key,
            "-subj",
            &format!("/CN={p}Test Intermediate CA"),
            "-out",
            &int_csr,
        ],
    );
    ossl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            &int_csr,
            "-CA",
            &root,
            "-CAkey",
            &root_key,
            "-CAcreateserial",
            "-days",
            "1825",
            "-extfile",
            "ca.ext",
            "-out",
            &int,
        ],
    );
    let chain = format!("{}{}", read_text(d, &int), read_text(d, &root));
    d.write(&format!("{p}chain.pem"), chain);
}

/// A CSR `{name}.csr` for CN=shop.example.com with a new key `{name}.key` of `kind`.
fn leaf_csr(d: &Daemon, name: &str, kind: &[&str]) {
    d.write("leaf.ext", LEAF_EXT);
    let key = format!("{name}.key");
    genkey(d, &key, kind);
    ossl(
        d,
        &[
            "req",
            "-new",
            "-key",
            &key,
            "-subj",
            "/CN=shop.example.com",
            "-out",
            &format!("{name}.csr"),
        ],
    );
}

/// A leaf `{name}.pem` with key `{name}.key` (of `kind`), signed by `{ca}int`, valid 90 days.
fn leaf(d: &Daemon, ca: &str, name: &str, kind: &[&str]) {
    leaf_csr(d, name, kind);
    ossl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}int.pem"),
            "-CAkey",
            &format!("{ca}int.key"),
            "-CAcreateserial",
            "-days",
            "90",
            "-extfile",
            "leaf.ext",
            "-out",
            &format!("{name}.pem"),
        ],
    );
}

/// Signs `{name}.csr` into `{name}.pem` with `{issuer}.pem`/`.key`, valid from `start` to `end`
/// (YYYYMMDDHHMMSSZ), with the extensions in `ext`: `openssl ca`, because it can back-date.
fn ca_sign(d: &Daemon, name: &str, issuer: &str, ext: &str, start: &str, end: &str) {
    if !d.path("ca.cnf").exists() {
        d.write("ca.cnf", CA_CNF);
        d.write("ca-index.txt", "");
        d.write("ca-serial.txt", "1000\n");
    }
    ossl(
        d,
        &[
            "ca",
            "-batch",
            "-notext",
            "-config",
            "ca.cnf",
            "-cert",
            &format!("{issuer}.pem"),
            "-keyfile",
            &format!("{issuer}.key"),
            "-in",
            &format!("{name}.csr"),
            "-startdate",
            start,
            "-enddate",
            end,
            "-extfile",
            ext,
            "-out",
            &format!("{name}.pem"),
        ],
    );
}

/// The serial as `openssl x509 -serial` prints it, lower-cased (certkeeper's form).
fn serial_of(d: &Daemon, cert: &str) -> String {
    let out = ossl(d, &["x509", "-in", cert, "-noout", "-serial"]);
    out.trim()
        .strip_prefix("serial=")
        .unwrap_or_else(|| panic!("unexpected openssl -serial output {out:?}"))
        .to_ascii_lowercase()
}

/// The base64 body of every PEM block in `text`, whitespace removed, with its label.
fn pem_blocks(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut label: Option<String> = None;
    let mut body = String::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(l) = line
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
        {
            label = Some(l.to_owned());
            body.clear();
        } else if line.starts_with("-----END ") {
            out.push((label.take().expect("END without BEGIN"), body.clone()));
        } else if label.is_some() {
            body.push_str(line);
        }
    }
    out
}

/// Runs `import` with `args`, which must be rejected with exit 65 and a one-line message
/// containing every one of `needles`, storing nothing. Returns the message.
fn rejected(d: &Daemon, args: &[&str], needles: &[&str]) -> String {
    let before = d.count();
    let mut all = vec!["import"];
    all.extend_from_slice(args);
    let stderr = d.fails(&all, 65);
    let message = stderr.trim();
    if std::env::var_os("SHOW_MESSAGES").is_some() {
        eprintln!("MESSAGE: {message}");
    }
    assert_eq!(
        message.lines().count(),
        1,
        "expected a one-line message for {all:?}, got:\n{stderr}"
    );
    for needle in needles {
        assert!(
            message.contains(needle),
            "message for {all:?} should contain {needle:?}: {message}"
        );
    }
    assert_eq!(d.count(), before, "a rejected import stored something");
    message.to_owned()
}

fn path(d: &Daemon, name: &str) -> String {
    d.path(name).to_str().expect("utf-8 path").to_owned()
}

/// `--certificate {cert} --private-key {key}` with paths in the daemon's dir.
fn files(d: &Daemon, cert: &str, key: &str) -> Vec<String> {
    vec![
        "--certificate".into(),
        path(d, cert),
        "--private-key".into(),
        path(d, key),
    ]
}

fn with_chain(d: &Daemon, cert: &str, key: &str, chain: &str) -> Vec<String> {
    let mut args = files(d, cert, key);
    args.extend(["--chain".into(), path(d, chain)]);
    args
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

fn import_json(d: &Daemon, args: &[String]) -> serde_json::Value {
    let mut all = vec!["import"];
    all.extend(strs(args));
    d.json(&all)
}

#[test]
fn imports_leaf_key_and_chain() {
    let d = Daemon::start();
    ca_pair(&d, "");
    leaf(&d, "", "leaf", P256);

    let cert = import_json(
        &d,
        &[
            with_chain(&d, "leaf.pem", "leaf.key", "chain.pem"),
            vec!["--tag".into(), "team=shop".into()],
        ]
        .concat(),
    );
    assert_eq!(cert["status"], "issued");
    assert_eq!(cert["origin"], "imported");
    assert_eq!(cert["domains"], serde_json::json!(["shop.example.com"]));
    assert_eq!(cert["name"], "shop.example.com");
    assert_eq!(cert["key_algorithm"], "ec-p256");
    assert_eq!(cert["serial"], serial_of(&d, "leaf.pem"));
    assert_eq!(cert["current_version"], 1);
    assert_eq!(cert["tags"]["team"], "shop");
    assert_eq!(d.count(), 1);

    let cid = id(&cert);
    let described = d.json(&["describe", &cid]);
    assert_eq!(described["id"], cid.as_str());
    assert_eq!(described["serial"], serial_of(&d, "leaf.pem"));
    assert_eq!(described["status"], "issued");
    let table = d.ok(&["describe", &cid]);
    assert!(table.contains(&cid), "describe shows the id:\n{table}");
    assert!(
        table.contains("shop.example.com"),
        "describe shows the domain:\n{table}"
    );

    let expected: Vec<_> = ["leaf.pem", "int.pem", "root.pem"]
        .iter()
        .flat_map(|f| pem_blocks(&read_text(&d, f)))
        .collect();
    let got = pem_blocks(&d.ok(&["get", &cid]));
    assert_eq!(
        got, expected,
        "get prints the leaf, then intermediate, then root"
    );
    let leaf_only = pem_blocks(&d.ok(&["get", &cid, "--part", "cert"]));
    assert_eq!(leaf_only, expected[..1]);
}

#[test]
fn imports_der_certificate_and_der_key() {
    let d = Daemon::start();
    ca_pair(&d, "");
    leaf(&d, "", "leaf", P256);
    ossl(
        &d,
        &[
            "x509", "-in", "leaf.pem", "-outform", "DER", "-out", "leaf.der",
        ],
    );
    ossl(
        &d,
        &[
            "pkey",
            "-in",
            "leaf.key",
            "-outform",
            "DER",
            "-out",
            "leaf.key.der",
        ],
    );
    assert!(!read(&d, "leaf.der").starts_with(b"-----"));

    let cert = import_json(&d, &files(&d, "leaf.der", "leaf.key.der"));
    assert_eq!(cert["status"], "issued");
    assert_eq!(cert["origin"], "imported");
    assert_eq!(cert["domains"], serde_json::json!(["shop.example.com"]));
    assert_eq!(cert["serial"], serial_of(&d, "leaf.pem"));
    let got = pem_blocks(&d.ok(&["get", &id(&cert), "--part", "cert"]));
    assert_eq!(got, pem_blocks(&read_text(&d, "leaf.pem")));

    // A DER SEC1 ("traditional") key works too.
    ossl(
        &d,
        &[
            "ec",
            "-in",
            "leaf.key",
            "-outform",
            "DER",
            "-out",
            "leaf.sec1.der",
        ],
    );
    let cert = import_json(
        &d,
        &[
            files(&d, "leaf.der", "leaf.sec1.der"),
            vec!["--name".into(), "shop-sec1".into()],
        ]
        .concat(),
    );
    assert_eq!(cert["name"], "shop-sec1");
    assert_eq!(d.count(), 2);
}

#[test]
fn rejects_input_that_is_neither_pem_nor_der() {
    let d = Daemon::start();
    ca_pair(&d, "");
    leaf(&d, "", "leaf", P256);
    // Deterministic "random" bytes (xorshift), so a failure reproduces.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let noise: Vec<u8> = (0..2048)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    d.write("noise.bin", &noise);
    d.write("notes.txt", "this is a note, not a certificate\n");

    for junk in ["noise.bin", "notes.txt"] {
        rejected(
            &d,
            &strs(&files(&d, junk, "leaf.key")),
            &["certificate is neither PEM nor a DER certificate"],
        );
        rejected(
            &d,
            &strs(&files(&d, "leaf.pem", junk)),
            &["private key is neither PEM nor a DER private key"],
        );
    }
}

#[test]
fn rejects_several_certificates_in_certificate_file() {
    let d = Daemon::start();
    ca_pair(&d, "");
    leaf(&d, "", "leaf", P256);
    let both = format!("{}{}", read_text(&d, "leaf.pem"), read_text(&d, "int.pem"));
    d.write("fullchain.pem", both);
    rejected(
        &d,
        &strs(&files(&d, "fullchain.pem", "leaf.key")),
        &["certificate holds 2 certificates", "--chain"],
    );
}

#[test]
fn rejects_key_that_does_not_match() {
    let d = Daemon::start();
    ca_pair(&d, "");
    leaf(&d, "", "leaf", P256);
    genkey(&d, "other.key", P256);
    rejected(
        &d,
        &strs(&files(&d, "leaf.pem", "other.key")),
        &["private key does not match the certificate"],
    );
}

#[test]
fn encrypted_key_needs_the_right_passphrase() {
    let d = Daemon::start();
    ca_pair(&d, "");
    leaf(&d, "", "leaf", P256);
    ossl(
        &d,
        &[
            "pkcs8",
            "-topk8",
            "-v2",
            "aes-256-cbc",
            "-in",
            "leaf.key",
            "-passout",
            "pass:correct horse battery",
            "-out",
            "leaf.enc.key",
        ],
    );
    assert!(read_text(&d, "leaf.enc.key").contains("BEGIN ENCRYPTED PRIVATE KEY"));
    d.write("right.pass", "correct horse battery\n");
    d.write("wrong.pass", "incorrect horse battery\n");

    let args = files(&d, "leaf.pem", "leaf.enc.key");
    rejected(
        &d,
        &strs(&args),
        &["private key is encrypted", "passphrase"],
    );

    let wrong = [
        args.clone(),
        vec!["--passphrase-file".into(), path(&d, "wrong.pass")],
    ]
    .concat();
    rejected(&d, &strs(&wrong), &["private key could not be decrypted"]);

    let right = [
        args,
        vec!["--passphrase-file".into(), path(&d, "right.pass")],
    ]
    .concat();
    let cert = import_json(&d, &right);
    assert_eq!(cert["status"], "issued");
    assert_eq!(cert["serial"], serial_of(&d, "leaf.pem"));
    assert_eq!(d.count(), 1);

    // The same in DER (EncryptedPrivateKeyInfo without PEM armour).
    ossl(
        &d,
        &[
            "pkcs8",
            "-topk8",
            "-v2",
            "aes-256-cbc",
            "-in",
            "leaf.key",
            "-passout",
            "pass:correct horse battery",
            "-outform",
            "DER",
            "-out",
            "leaf.enc.der",
        ],
    );
    let args = files(&d, "leaf.pem", "leaf.enc.der");
    rejected(
        &d,
        &strs(&args),
        &["private key is encrypted", "passphrase"],
    );
    let wrong = [
        args.clone(),
        vec!["--passphrase-file".into(), path(&d, "wrong.pass")],
    ]
    .concat();
    rejected(&d, &strs(&wrong), &["private key could not be decrypted"]);
    let right = [
        args,
        vec!["--passphrase-file".into(), path(&d, "right.pass")],
        vec!["--name".into(), "shop-der".into()],
    ]
    .concat();
    let cert = import_json(&d, &right);
    assert_eq!(cert["name"], "shop-der");
    assert_eq!(d.count(), 2);
}

#[test]
fn rejects_chain_that_does_not_link_or_is_out_of_order() {
    let d = Daemon::start();
    ca_pair(&d, "");
    ca_pair(&d, "other-");
    leaf(&d, "", "leaf", P256);

    rejected(
        &d,
        &strs(&with_chain(&d, "leaf.pem", "leaf.key", "other-chain.pem")),
        &["chain does not link"],
    );

    let reversed = format!("{}{}", read_text(&d, "root.pem"), read_text(&d, "int.pem"));
    d.write("reversed.pem", reversed);
    rejected(
        &d,
        &strs(&with_chain(&d, "leaf.pem", "leaf.key", "reversed.pem")),
        &["chain is out of order", "element 2"],
    );
}

#[test]
fn expired_certificate_needs_allow_expired() {
    let d = Daemon::start();
    ca_pair(&d, "");
    // An intermediate valid 2019-2030 and a leaf it issued that was valid only in January 2020,
    // so that the chain was valid while the leaf was.
    genkey(&d, "old-int.key", P256);
    ossl(
        &d,
        &[
            "req",
            "-new",
            "-key",
            "old-int.key",
            "-subj",
            "/CN=Old Intermediate CA",
            "-out",
            "old-int.csr",
        ],
    );
    ca_sign(
        &d,
        "old-int",
        "root",
        "ca.ext",
        "20190101000000Z",
        "20300101000000Z",
    );
    leaf_csr(&d, "old", P256);
    ca_sign(
        &d,
        "old",
        "old-int",
        "leaf.ext",
        "20200101000000Z",
        "20200201000000Z",
    );
    let chain = format!(
        "{}{}",
        read_text(&d, "old-int.pem"),
        read_text(&d, "root.pem")
    );
    d.write("old-chain.pem", chain);

    let args = files(&d, "old.pem", "old.key");
    rejected(
        &d,
        &strs(&args),
        &["certificate expired at", "--allow-expired"],
    );
    let args = with_chain(&d, "old.pem", "old.key", "old-chain.pem");
    rejected(
        &d,
        &strs(&args),
        &["certificate expired at", "--allow-expired"],
    );

    let cert = import_json(&d, &[args, vec!["--allow-expired".into()]].concat());
    assert_eq!(cert["status"], "expired");
    assert_eq!(cert["origin"], "imported");
    assert_eq!(cert["serial"], serial_of(&d, "old.pem"));
    assert!(
        cert["not_after"]
            .as_str()
            .expect("not_after")
            .starts_with("2020-02-01T00:00:00"),
        "{cert}"
    );
    assert_eq!(d.count(), 1);
    let expected: Vec<_> = ["old.pem", "old-int.pem", "root.pem"]
        .iter()
        .flat_map(|f| pem_blocks(&read_text(&d, f)))
        .collect();
    assert_eq!(pem_blocks(&d.ok(&["get", &id(&cert)])), expected);
}

#[test]
fn rejects_unsupported_key_types() {
    let d = Daemon::start();
    ca_pair(&d, "");
    leaf(&d, "", "p521", P521);
    rejected(
        &d,
        &strs(&files(&d, "p521.pem", "p521.key")),
        &["unsupported key type", "P-521"],
    );
    leaf(&d, "", "rsa1024", RSA1024);
    rejected(
        &d,
        &strs(&files(&d, "rsa1024.pem", "rsa1024.key")),
        &["unsupported key type", "1024"],
    );
}

#[test]
fn rejects_ca_certificate_as_leaf() {
    let d = Daemon::start();
    ca_pair(&d, "");
    rejected(
        &d,
        &strs(&files(&d, "int.pem", "int.key")),
        &["certificate is a CA certificate"],
    );
    rejected(
        &d,
        &strs(&files(&d, "root.pem", "root.key")),
        &["certificate is a CA certificate"],
    );
}

#[test]
fn rejects_trailing_garbage() {
    let d = Daemon::start();
    ca_pair(&d, "");
    leaf(&d, "", "leaf", P256);
    // Explanatory text before a block is allowed (RFC 7468); after the last block it is not.
    let prefixed = format!("Subject: shop.example.com\n{}", read_text(&d, "leaf.pem"));
    d.write("prefixed.pem", prefixed);
    let trailing = format!(
        "{}this line should not be here\n",
        read_text(&d, "leaf.pem")
    );
    d.write("trailing.pem", trailing);
    rejected(
        &d,
        &strs(&files(&d, "trailing.pem", "leaf.key")),
        &["certificate has trailing garbage"],
    );
    let key_trailing = format!("{}junk\n", read_text(&d, "leaf.key"));
    d.write("trailing.key", key_trailing);
    rejected(
        &d,
        &strs(&files(&d, "leaf.pem", "trailing.key")),
        &["private key has trailing garbage"],
    );
    // The same certificate with text only before it imports.
    let cert = import_json(&d, &files(&d, "prefixed.pem", "leaf.key"));
    assert_eq!(cert["serial"], serial_of(&d, "leaf.pem"));
}

#[test]
fn rejects_oversized_input() {
    let d = Daemon::start();
    ca_pair(&d, "");
    leaf(&d, "", "leaf", P256);
    // Otherwise valid: 300 KiB of explanatory text before the block, which RFC 7468 allows.
    let padding = "explanatory text\n".repeat(300 * 1024 / 17);
    let big = format!("{padding}{}", read_text(&d, "leaf.pem"));
    assert!(big.len() > 256 * 1024);
    d.write("big.pem", &big);
    rejected(
        &d,
        &strs(&files(&d, "big.pem", "leaf.key")),
        &["262144-byte limit"],
    );
    let big_chain = format!("{padding}{}", read_text(&d, "chain.pem"));
    d.write("big-chain.pem", big_chain);
    rejected(
        &d,
        &strs(&with_chain(&d, "leaf.pem", "leaf.key", "big-chain.pem")),
        &["limit"],
    );

    // The CLI checks the size before sending; the daemon enforces the same limit on API input.
    let body = serde_json::json!({
        "certificate": big,
        "private_key": read_text(&d, "leaf.key"),
    })
    .to_string();
    let (status, answer) = http(
        &d.socket,
        "POST",
        "/v1/certificates/import",
        Some(body.as_bytes()),
    );
    assert_eq!(status, 422, "{answer}");
    assert!(
        answer.contains("certificate is") && answer.contains("262144-byte limit"),
        "{answer}"
    );
    assert_eq!(d.count(), 0);
}

#[test]
fn rejects_legacy_encrypted_key() {
    let d = Daemon::start();
    ca_pair(&d, "");
    leaf(&d, "", "leaf", P256);
    // OpenSSL 3's `openssl ec` writes the traditional SEC1 form with Proc-Type/DEK-Info headers.
    ossl(
        &d,
        &[
            "ec",
            "-in",
            "leaf.key",
            "-aes256",
            "-passout",
            "pass:legacy pass",
            "-out",
            "legacy.key",
        ],
    );
    let text = read_text(&d, "legacy.key");
    assert!(
        text.contains("BEGIN EC PRIVATE KEY") && text.contains("Proc-Type: 4,ENCRYPTED"),
        "{text}"
    );
    d.write("legacy.pass", "legacy pass\n");
    let args = files(&d, "leaf.pem", "legacy.key");
    rejected(&d, &strs(&args), &["legacy OpenSSL PEM encryption"]);
    // Even with the right passphrase: certkeeper does not implement the legacy scheme.
    let with_pass = [
        args,
        vec!["--passphrase-file".into(), path(&d, "legacy.pass")],
    ]
    .concat();
    rejected(&d, &strs(&with_pass), &["legacy", "openssl pkcs8 -topk8"]);
}

#[test]
fn reimport_adds_a_version_only_to_imported_certificates() {
    let d = Daemon::start();
    ca_pair(&d, "");
    leaf(&d, "", "v1", P256);
    leaf(&d, "", "v2", P256);

    let first = import_json(&d, &with_chain(&d, "v1.pem", "v1.key", "chain.pem"));
    let cid = id(&first);
    assert_eq!(first["current_version"], 1);

    let second = import_json(
        &d,
        &[
            with_chain(&d, "v2.pem", "v2.key", "chain.pem"),
            vec!["--certificate-id".into(), cid.clone()],
        ]
        .concat(),
    );
    assert_eq!(id(&second), cid);
    assert_eq!(second["current_version"], 2);
    assert_eq!(second["serial"], serial_of(&d, "v2.pem"));
    assert_eq!(d.count(), 1);

    let described = d.json(&["describe", &cid]);
    assert_eq!(described["current_version"], 2);
    let versions = described["versions"].as_array().expect("versions array");
    assert_eq!(versions.len(), 2, "{described}");
    let serials: Vec<&str> = versions
        .iter()
        .map(|v| v["serial"].as_str().expect("serial"))
        .collect();
    let (s1, s2) = (serial_of(&d, "v1.pem"), serial_of(&d, "v2.pem"));
    assert!(
        serials.contains(&s1.as_str()) && serials.contains(&s2.as_str()),
        "{serials:?}"
    );
    let current = pem_blocks(&d.ok(&["get", &cid, "--part", "cert"]));
    assert_eq!(current, pem_blocks(&read_text(&d, "v2.pem")));
    let old = pem_blocks(&d.ok(&["get", &cid, "--version", "1", "--part", "cert"]));
    assert_eq!(old, pem_blocks(&read_text(&d, "v1.pem")));

    // A certificate certkeeper issued itself cannot be re-imported.
    let private = d.json(&["request", "x.example"]);
    assert_eq!(private["origin"], "private");
    let before = d.count();
    let mut args = vec!["import"];
    let reimport = [
        files(&d, "v2.pem", "v2.key"),
        vec!["--certificate-id".into(), id(&private)],
    ]
    .concat();
    args.extend(strs(&reimport));
    let stderr = d.fails(&args, 1);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("only imported certificates can be re-imported"),
        "{stderr}"
    );
    assert_eq!(d.count(), before);
    let private_after = d.json(&["describe", &id(&private)]);
    assert_eq!(private_after["current_version"], 1);
    assert_eq!(private_after["serial"], private["serial"]);
}

/// Every regular file under `dir`, recursively.
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read state dir") {
        let entry = entry.expect("dir entry");
        let kind = entry.file_type().expect("file type");
        if kind.is_dir() {
            out.extend(files_under(&entry.path()));
        } else if kind.is_file() {
            out.push(entry.path());
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn assert_key_absent(d: &Daemon, secrets: &[(&str, &[u8])]) {
    let all = files_under(&d.state_dir);
    assert!(
        all.iter()
            .any(|p| p.file_name().is_some_and(|n| n == "certkeeper.db")),
        "no certkeeper.db among {all:?}"
    );
    for file in all {
        let bytes = std::fs::read(&file).expect("read state file");
        for (what, secret) in secrets {
            assert!(
                !contains(&bytes, secret),
                "{} holds the imported key's {what} in plaintext",
                file.display()
            );
        }
    }
}

#[test]
fn imported_key_is_not_stored_in_plaintext() {
    let mut d = Daemon::start();
    ca_pair(&d, "");
    leaf(&d, "", "leaf", P256);
    ossl(
        &d,
        &[
            "pkey",
            "-in",
            "leaf.key",
            "-outform",
            "DER",
            "-out",
            "leaf.pk8.der",
        ],
    );
    ossl(
        &d,
        &[
            "ec",
            "-in",
            "leaf.key",
            "-outform",
            "DER",
            "-out",
            "leaf.sec1.der",
        ],
    );
    let pkcs8 = read(&d, "leaf.pk8.der");
    let sec1 = read(&d, "leaf.sec1.der");
    // SEC1 ECPrivateKey for P-256: 30 77 02 01 01 04 20 <32-byte private scalar> ...
    assert_eq!(&sec1[..7], &[0x30, 0x77, 0x02, 0x01, 0x01, 0x04, 0x20]);
    let scalar = sec1[7..39].to_vec();
    let key_pem_body = pem_blocks(&read_text(&d, "leaf.key"))[0].1.clone();

    let cert = import_json(&d, &with_chain(&d, "leaf.pem", "leaf.key", "chain.pem"));
    assert_eq!(cert["status"], "issued");
    // Also a second version, so the key passes through the re-import path too.
    import_json(
        &d,
        &[
            files(&d, "leaf.pem", "leaf.key"),
            vec!["--certificate-id".into(), id(&cert)],
        ]
        .concat(),
    );

    let secrets: [(&str, &[u8]); 3] = [
        ("PKCS#8 DER", &pkcs8),
        ("private scalar", &scalar),
        ("PEM text", key_pem_body.as_bytes()),
    ];
    // While running (the WAL may hold the newest pages) ...
    assert_key_absent(&d, &secrets);
    // ... and after a clean stop, when SQLite has checkpointed into certkeeper.db.
    let (status, _) = d.stop();
    assert!(status.success(), "{status}");
    assert_key_absent(&d, &secrets);
    let log = d.log_text();
    assert!(
        !log.contains(&key_pem_body),
        "the daemon log holds the private key"
    );
}

/// An openssl-encrypted `leaf.key` with its KDF parameters rewritten by `change`, as a PEM
/// `ENCRYPTED PRIVATE KEY`: what a hostile or careless file can ask for.
fn reencrypted(d: &Daemon, kdf: &str, change: impl Fn(&mut pkcs8::pkcs5::pbes2::Kdf)) -> String {
    use pkcs8::der::{Decode, Encode};
    let out = format!("leaf.{kdf}.der");
    let mut args = vec!["pkcs8", "-topk8", "-v2", "aes-256-cbc"];
    if kdf == "scrypt" {
        args.push("-scrypt");
    }
    args.extend([
        "-in", "leaf.key", "-passout", "pass:x", "-outform", "DER", "-out", &out,
    ]);
    ossl(d, &args);
    let der = read(d, &out);
    let info = pkcs8::EncryptedPrivateKeyInfoRef::from_der(&der).unwrap();
    let mut scheme = info.encryption_algorithm.clone();
    let pkcs8::pkcs5::EncryptionScheme::Pbes2(params) = &mut scheme else {
        panic!("openssl -v2 makes PBES2")
    };
    change(&mut params.kdf);
    let hostile = pkcs8::EncryptedPrivateKeyInfoRef {
        encryption_algorithm: scheme,
        encrypted_data: info.encrypted_data,
    }
    .to_der()
    .unwrap();
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, hostile);
    format!("-----BEGIN ENCRYPTED PRIVATE KEY-----\n{b64}\n-----END ENCRYPTED PRIVATE KEY-----\n")
}

/// H2 and M3 of the security review: an encrypted key's KDF parameters come from the file.
/// scrypt with N = 2^40 allocated a petabyte and aborted the daemon; PBKDF2 with u32::MAX
/// iterations pinned a core for minutes, past the request timeout. Both are refused before
/// any derivation, with a message, and the daemon serves on.
#[test]
fn encrypted_keys_asking_for_unbounded_kdf_work_are_refused_before_deriving() {
    use pkcs8::pkcs5::pbes2::Kdf;
    let d = Daemon::start();
    ca_pair(&d, "");
    leaf(&d, "", "leaf", P256);
    d.write("x.pass", "x\n");
    type Change = Box<dyn Fn(&mut Kdf)>;
    let cases: [(&str, Change, &str); 3] = [
        (
            "scrypt",
            Box::new(|kdf| {
                if let Kdf::Scrypt(s) = kdf {
                    s.cost_parameter = 1 << 40;
                }
            }),
            "scrypt with N=1099511627776",
        ),
        (
            "scrypt",
            Box::new(|kdf| {
                if let Kdf::Scrypt(s) = kdf {
                    s.parallelization = 4096;
                }
            }),
            "p=4096",
        ),
        (
            "pbkdf2",
            Box::new(|kdf| {
                if let Kdf::Pbkdf2(p) = kdf {
                    p.iteration_count = u32::MAX;
                }
            }),
            "4294967295 PBKDF2 iterations",
        ),
    ];
    for (kdf, change, asked) in cases {
        d.write("hostile.key", reencrypted(&d, kdf, change));
        let args = [
            files(&d, "leaf.pem", "hostile.key"),
            vec!["--passphrase-file".into(), path(&d, "x.pass")],
        ]
        .concat();
        rejected(&d, &strs(&args), &[asked, "certkeeper derives at most"]);
        assert_eq!(d.count(), 0, "nothing stored");
    }
    // Still serving, and an ordinary scrypt key (openssl's N = 2^14) still imports.
    d.write("plain.key", reencrypted(&d, "scrypt", |_| {}));
    let args = [
        files(&d, "leaf.pem", "plain.key"),
        vec!["--passphrase-file".into(), path(&d, "x.pass")],
    ]
    .concat();
    assert_eq!(import_json(&d, &args)["status"], "issued");
}

/// L4 of the security review: the answer to a request or import said `key_held: false` while
/// describe said true (the key was taken out for sealing before the answer was built).
#[test]
fn creation_answers_say_whether_the_key_is_held() {
    let d = Daemon::start();
    ca_pair(&d, "");
    leaf(&d, "", "leaf", P256);
    let imported = import_json(&d, &files(&d, "leaf.pem", "leaf.key"));
    assert_eq!(imported["versions"][0]["key_held"], true, "{imported:#}");
    let requested = d.json(&["request", "held.internal"]);
    assert_eq!(requested["versions"][0]["key_held"], true, "{requested:#}");
    for cert in [&imported, &requested] {
        let described = d.json(&["describe", cert["id"].as_str().unwrap()]);
        assert_eq!(described["versions"][0]["key_held"], true);
    }
}
