//! Import of DER input: the same `import::check` as `import_pem` with DER in each place, and the
//! DER readers under it on their own: `x509::inspect` (one certificate, nothing after it), the
//! private key parser in each of the forms rustls-pki-types names, and the public key type.
//!
//! Properties: no panic; a key that parses reports the type of its own public key, and its
//! canonical PKCS#8 form loads.
#![no_main]

use certkeeper::{keys, x509};
use libfuzzer_sys::fuzz_target;
use rustls_pki_types::PrivateKeyDer;

fuzz_target!(|data: &[u8]| {
    let pki = certkeeper_fuzz::pki();
    certkeeper_fuzz::import_each_place(data, &pki.leaf_der, &pki.key_der);

    if let Ok(info) = x509::inspect(data) {
        // What `describe` and the metrics show must not fail on any certificate that parsed.
        let _ = keys::algorithm_of_spki(&info.spki);
        let _ = certkeeper::model::rfc3339(info.not_after);
    }
    let forms = [
        PrivateKeyDer::Pkcs8(data.into()),
        PrivateKeyDer::Sec1(data.into()),
        PrivateKeyDer::Pkcs1(data.into()),
    ];
    for key in forms {
        if let Ok(parsed) = keys::parse_private_key(&key) {
            let algorithm = keys::algorithm_of_spki(&parsed.spki)
                .expect("a parsed key's public key has a supported type");
            assert_eq!(algorithm, parsed.algorithm);
            keys::load_pkcs8(&parsed.pkcs8).expect("the canonical PKCS#8 form loads");
        }
    }
});
