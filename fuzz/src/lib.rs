//! What the fuzz targets share: the instant they take as "now", a small PKI made once by
//! certkeeper's own CA code (for targets that put the fuzzer's bytes next to something valid),
//! the two text formats through which one input carries several fields, and the import harness
//! the PEM and DER targets both run.
//!
//! Every target calls the library's real entry points; nothing here re-implements a check of
//! the product. The properties each target asserts are written next to it, in
//! `fuzz_targets/*.rs`.

use std::collections::HashMap;
use std::sync::OnceLock;

use certkeeper::ca::{self, Authority, LeafRequest};
use certkeeper::import::{self, ImportError, Input};
use certkeeper::model::{CaSpec, Domain, KeyAlgorithm};
use certkeeper::span::Span;
use certkeeper::{keys, pem};
use rustls_pki_types::PrivateKeyDer;
use time::OffsetDateTime;
use time::macros::datetime;

/// "Now" for every target that does not run the daemon: fixed, so that a crash reproduces. The
/// seed certificates (made 2026-12-01, valid ten years) are valid then.
pub const NOW: OffsetDateTime = datetime!(2027-01-01 00:00 UTC);

/// Separates the fields of a multi-field input (a line of its own, unlikely inside PEM text).
pub const SEPARATOR: &[u8] = b"\n----8<----\n";

/// `data` cut at each [`SEPARATOR`].
pub fn fields(data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    while let Some(at) = rest.windows(SEPARATOR.len()).position(|w| w == SEPARATOR) {
        out.push(&rest[..at]);
        rest = &rest[at + SEPARATOR.len()..];
    }
    out.push(rest);
    out
}

/// `key = value` lines (the first `=` splits; blank lines and `#` comments are skipped). The
/// seeds of the text-driven targets are written in this form, so they stay readable.
pub fn settings(text: &str) -> HashMap<&str, &str> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim(), v.trim()))
        .collect()
}

/// A root CA, a subordinate CA constrained to `example.com` under it, and a leaf with its key
/// signed by the subordinate: the valid counterparts the import and CSR targets pair the
/// fuzzer's input with.
pub struct Pki {
    pub root: Authority,
    pub constrained: Authority,
    pub leaf_pem: String,
    pub leaf_der: Vec<u8>,
    /// PKCS#8.
    pub key_pem: String,
    pub key_der: Vec<u8>,
    /// The subordinate, then the root.
    pub chain_pem: String,
}

/// The PKI, made on first use.
pub fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(make_pki)
}

fn spec(name: &str, permitted: &[&str], path_length: Option<u8>) -> CaSpec {
    CaSpec {
        name: name.to_owned(),
        parent: None,
        external: false,
        common_name: format!("certkeeper fuzz {name}"),
        key_algorithm: KeyAlgorithm::EcP256,
        validity: Span::from_days(3650),
        path_length,
        permitted_dns: permitted.iter().map(|s| (*s).to_owned()).collect(),
    }
}

fn load(spec: &CaSpec, created: &ca::CreatedCa) -> Authority {
    let cert = created.cert_pem.as_deref().expect("a signed CA has a certificate");
    Authority::load(
        &spec.name,
        cert,
        &created.chain_pem,
        &created.key,
        spec.permitted_dns.clone(),
        spec.path_length,
    )
    .expect("a CA just made loads")
}

fn make_pki() -> Pki {
    let made = NOW - time::Duration::days(1);
    let root_spec = spec("root", &[], None);
    let root = load(&root_spec, &ca::create_root(&root_spec, made).expect("root CA"));
    let sub_spec = spec("constrained", &["example.com"], Some(0));
    let constrained = load(
        &sub_spec,
        &root
            .create_subordinate(&sub_spec, made)
            .expect("subordinate CA"),
    );
    let key = keys::generate(KeyAlgorithm::EcP256).expect("leaf key");
    let domains: Vec<Domain> =
        certkeeper::model::parse_domains(&["www.example.com", "example.com"]).expect("names");
    let leaf = constrained
        .issue(
            &LeafRequest {
                domains: &domains,
                validity: Span::from_days(365),
                client_auth: false,
            },
            &key,
            made,
        )
        .expect("leaf");
    let leaf_der = pem::certificates(&leaf.cert_pem).remove(0);
    let key_der = key.serialize_der();
    Pki {
        leaf_pem: leaf.cert_pem,
        leaf_der,
        key_pem: pem::encode("PRIVATE KEY", &key_der),
        key_der,
        chain_pem: leaf.chain_pem,
        root,
        constrained,
    }
}

/// The passphrase the encrypted seed keys were written with.
pub const PASSPHRASE: &str = "fuzz";

/// Runs `bytes` through `import::check` in each of its three places (certificate, private key,
/// chain), the other two filled with the valid PKI, so that every input gets past the checks of
/// the inputs it does not replace; then as one input given for all three; and, when it holds
/// [`SEPARATOR`] lines, as certificate, key, chain and passphrase, in that order.
///
/// Properties: no panic; every error has a message; an accepted import is self-consistent
/// (its certificate parses and carries the key's public key, its names are unique) and what
/// it stores imports again to the same result.
pub fn import_each_place(bytes: &[u8], cert: &[u8], key: &[u8]) {
    let pki = pki();
    let chain = pki.chain_pem.as_bytes();
    let cases = [
        (bytes, key, Some(chain)),
        (cert, bytes, Some(chain)),
        (cert, key, Some(bytes)),
        (bytes, bytes, Some(bytes)),
        (bytes, key, None),
    ];
    for (certificate, private_key, chain) in cases {
        for allow_expired in [false, true] {
            let input = Input {
                certificate,
                private_key,
                chain,
                passphrase: Some(PASSPHRASE),
                allow_expired,
            };
            check_import(&input);
        }
    }
    if let [certificate, private_key, rest @ ..] = fields(bytes).as_slice() {
        let passphrase = rest.get(1).map(|p| String::from_utf8_lossy(p));
        check_import(&Input {
            certificate,
            private_key,
            chain: rest.first().copied(),
            passphrase: Some(passphrase.as_deref().unwrap_or(PASSPHRASE)),
            allow_expired: false,
        });
    }
}

/// One `import::check` and the properties above.
pub fn check_import(input: &Input<'_>) {
    let checked = match import::check(input, NOW) {
        Ok(checked) => checked,
        Err(err) => return error_has_a_message(&err),
    };
    let der = pem::certificates(&checked.cert_pem);
    assert_eq!(der.len(), 1, "an accepted import stores one certificate");
    let info = certkeeper::x509::inspect(&der[0]).expect("the stored certificate parses");
    let key = keys::parse_private_key(&PrivateKeyDer::Pkcs8(checked.key.as_slice().into()))
        .expect("the stored key parses");
    assert_eq!(key.spki, info.spki, "the stored key is the certificate's");
    assert_eq!(key.algorithm, checked.key_algorithm);
    assert!(!checked.domains.is_empty(), "an accepted import has names");
    for (i, d) in checked.domains.iter().enumerate() {
        assert!(
            !checked.domains[..i].contains(d),
            "names are unique: {d} twice"
        );
    }
    // What is stored imports again, unchanged.
    let key_pem = pem::encode("PRIVATE KEY", &checked.key);
    let again = import::check(
        &Input {
            certificate: checked.cert_pem.as_bytes(),
            private_key: key_pem.as_bytes(),
            chain: (!checked.chain_pem.is_empty()).then_some(checked.chain_pem.as_bytes()),
            passphrase: None,
            allow_expired: input.allow_expired,
        },
        NOW,
    )
    .unwrap_or_else(|e| panic!("what an import stored does not import again: {e}"));
    assert_eq!(again.cert_pem, checked.cert_pem);
    assert_eq!(again.chain_pem, checked.chain_pem);
    assert_eq!(again.domains, checked.domains);
    assert_eq!(again.key_algorithm, checked.key_algorithm);
}

/// Every error says something (it is what the user reads).
pub fn error_has_a_message(err: &ImportError) {
    assert!(!err.to_string().trim().is_empty(), "empty message: {err:?}");
}
