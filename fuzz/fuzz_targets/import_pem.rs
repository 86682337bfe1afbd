//! Import of PEM input (`certkeeper import`, `POST /v1/certificates/import`): certificates,
//! private keys (PKCS#8, SEC1, PKCS#1, encrypted PKCS#8) and chains as PEM text, through
//! `import::check` in each of its three places (see `import_each_place` for the properties).
//! Seeds: openssl-made certificates, keys of every supported and several unsupported types,
//! encrypted keys (passphrase "fuzz") and chains.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let pki = certkeeper_fuzz::pki();
    certkeeper_fuzz::import_each_place(data, pki.leaf_pem.as_bytes(), pki.key_pem.as_bytes());
});
