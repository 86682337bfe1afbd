//! CSR signing (`certkeeper sign`, `POST /v1/sign`): arbitrary PEM or DER through
//! `ca::parse_csr` and, when accepted, `Authority::issue`, as the inventory's `sign_one` does,
//! by an unconstrained root and by a subordinate constrained to `example.com`.
//!
//! Properties: no panic; every refusal has a message; a CSR that parses has 1 to 100 names;
//! the unconstrained root signs every CSR that parses; the constrained CA signs exactly those
//! whose names are all DNS names inside its constraint; what is signed parses, is no CA,
//! carries the CSR's public key and exactly its names, runs for the validity asked and is
//! signed by its CA.
#![no_main]

use certkeeper::ca::{self, LeafRequest};
use certkeeper::model::{Domain, MAX_DOMAINS};
use certkeeper::span::Span;
use certkeeper::{pem, x509};
use certkeeper_fuzz::NOW;
use libfuzzer_sys::fuzz_target;
use rcgen::PublicKeyData;

/// What the constraint `example.com` permits (RFC 5280: the name or any name below it).
fn permitted(domain: &Domain) -> bool {
    match domain {
        Domain::Ip(_) => false,
        Domain::Dns(name) => {
            let base = name.strip_prefix("*.").unwrap_or(name);
            base == "example.com" || base.ends_with(".example.com")
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let csr = match ca::parse_csr(data) {
        Ok(csr) => csr,
        Err(err) => {
            assert!(!err.to_string().trim().is_empty(), "{err:?}");
            return;
        }
    };
    assert!((1..=MAX_DOMAINS).contains(&csr.domains.len()));
    let pki = certkeeper_fuzz::pki();
    let validity = Span::from_days(90);
    let request = LeafRequest {
        domains: &csr.domains,
        validity,
        client_auth: data.len() % 2 == 0,
    };
    for (authority, constrained) in [(&pki.root, false), (&pki.constrained, true)] {
        let expected = !constrained || csr.domains.iter().all(permitted);
        let issued = match authority.issue(&request, &csr.public_key, NOW) {
            Ok(issued) => issued,
            Err(err) => {
                assert!(!err.to_string().trim().is_empty(), "{err:?}");
                assert!(
                    !expected,
                    "CA {} refused a CSR it should sign ({:?}): {err}",
                    authority.name, csr.domains
                );
                continue;
            }
        };
        assert!(expected, "CA {} signed {:?}", authority.name, csr.domains);
        let der = pem::certificates(&issued.cert_pem);
        assert_eq!(der.len(), 1);
        let info = x509::inspect(&der[0]).expect("what a CA signs parses");
        assert!(!info.is_ca);
        assert_eq!(info.spki, csr.public_key.subject_public_key_info());
        assert_eq!(info.names, csr.domains);
        assert_eq!(info.not_after, issued.not_after);
        assert_eq!(issued.not_after - NOW, validity.time());
        let ca_der = pem::certificates(&authority.cert_pem).remove(0);
        assert!(x509::is_signed_by(&der[0], &ca_der), "signed by its CA");
    }
});
