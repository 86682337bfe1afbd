//! Private keys: generation, parsing of keys users bring, and the one canonical form we keep.
//!
//! Whatever comes in (PKCS#8, SEC1 "EC PRIVATE KEY", PKCS#1 "RSA PRIVATE KEY", encrypted PKCS#8),
//! what we store and sign with is unencrypted PKCS#8 DER held in [`Zeroizing`] memory, sealed at
//! rest by `store::seal`. Key material never reaches a `Debug` or `Display` impl.

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::{EcdsaKeyPair, RsaKeyPair};
use rcgen::{
    KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_ED25519, PKCS_RSA_SHA256,
    PublicKeyData, RsaKeySize,
};
use rustls_pki_types::PrivateKeyDer;
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;
use zeroize::Zeroizing;

use crate::model::KeyAlgorithm;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the private key is not a valid PKCS#8, SEC1 or PKCS#1 key")]
    Unparsable,
    #[error(
        "unsupported key type: {0} (supported: ec-p256, ec-p384, rsa-2048, rsa-3072, rsa-4096, ed25519)"
    )]
    Unsupported(String),
    #[error("key generation failed for {0}")]
    Generation(KeyAlgorithm),
}

/// Generates a fresh key pair for `alg`. RSA-4096 takes a second or more: call from a blocking
/// context.
pub fn generate(alg: KeyAlgorithm) -> Result<KeyPair, KeyError> {
    let rsa = |size| KeyPair::generate_rsa_for(&PKCS_RSA_SHA256, size);
    let result = match alg {
        KeyAlgorithm::EcP256 => KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256),
        KeyAlgorithm::EcP384 => KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384),
        KeyAlgorithm::Ed25519 => KeyPair::generate_for(&PKCS_ED25519),
        KeyAlgorithm::Rsa2048 => rsa(RsaKeySize::_2048),
        KeyAlgorithm::Rsa3072 => rsa(RsaKeySize::_3072),
        KeyAlgorithm::Rsa4096 => rsa(RsaKeySize::_4096),
    };
    result.map_err(|_| KeyError::Generation(alg))
}

/// Loads a key we stored ourselves (PKCS#8 DER).
pub fn load_pkcs8(der: &[u8]) -> Result<KeyPair, KeyError> {
    // Borrowed, not copied: a copy in a plain Vec would stay in freed memory (M1).
    let key = PrivateKeyDer::Pkcs8(der.into());
    KeyPair::try_from(&key).map_err(|_| KeyError::Unparsable)
}

/// The algorithm of a public key, from its SubjectPublicKeyInfo DER.
pub fn algorithm_of_spki(spki_der: &[u8]) -> Result<KeyAlgorithm, KeyError> {
    let (_, spki) = SubjectPublicKeyInfo::from_der(spki_der).map_err(|_| KeyError::Unparsable)?;
    algorithm_of(&spki)
}

pub fn algorithm_of(spki: &SubjectPublicKeyInfo<'_>) -> Result<KeyAlgorithm, KeyError> {
    let oid = spki.algorithm.algorithm.to_id_string();
    match spki.parsed() {
        Ok(PublicKey::EC(_)) => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|o| o.to_id_string())
                .unwrap_or_default();
            match curve.as_str() {
                "1.2.840.10045.3.1.7" => Ok(KeyAlgorithm::EcP256),
                "1.3.132.0.34" => Ok(KeyAlgorithm::EcP384),
                "1.3.132.0.35" => Err(KeyError::Unsupported("EC P-521".into())),
                other => Err(KeyError::Unsupported(format!("EC curve {other}"))),
            }
        }
        Ok(PublicKey::RSA(rsa)) => match rsa.key_size() {
            2048 => Ok(KeyAlgorithm::Rsa2048),
            3072 => Ok(KeyAlgorithm::Rsa3072),
            4096 => Ok(KeyAlgorithm::Rsa4096),
            bits => Err(KeyError::Unsupported(format!("RSA {bits}-bit"))),
        },
        _ if oid == "1.3.101.112" => Ok(KeyAlgorithm::Ed25519),
        Ok(PublicKey::DSA(_)) => Err(KeyError::Unsupported("DSA".into())),
        _ => Err(KeyError::Unsupported(format!("public key algorithm {oid}"))),
    }
}

/// A private key brought in by a user, turned into our canonical form.
pub struct ParsedKey {
    pub algorithm: KeyAlgorithm,
    /// Unencrypted PKCS#8 DER.
    pub pkcs8: Zeroizing<Vec<u8>>,
    /// The SubjectPublicKeyInfo DER of the matching public key, to compare with a certificate.
    pub spki: Vec<u8>,
}

impl std::fmt::Debug for ParsedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParsedKey")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// Parses a plaintext private key in any of the DER forms rustls-pki-types recognises and
/// normalises it to PKCS#8.
pub fn parse_private_key(key: &PrivateKeyDer<'_>) -> Result<ParsedKey, KeyError> {
    let pkcs8: Zeroizing<Vec<u8>> = match key {
        PrivateKeyDer::Pkcs8(der) => Zeroizing::new(der.secret_pkcs8_der().to_vec()),
        PrivateKeyDer::Sec1(der) => sec1_to_pkcs8(der.secret_sec1_der())?,
        PrivateKeyDer::Pkcs1(der) => {
            let rsa =
                RsaKeyPair::from_der(der.secret_pkcs1_der()).map_err(|_| KeyError::Unparsable)?;
            let doc = rsa.as_der().map_err(|_| KeyError::Unparsable)?;
            Zeroizing::new(doc.as_ref().to_vec())
        }
        _ => return Err(KeyError::Unparsable),
    };
    let pair = load_pkcs8(&pkcs8).map_err(|_| unsupported_or_unparsable(&pkcs8))?;
    let spki = pair.subject_public_key_info();
    let algorithm = algorithm_of_spki(&spki)?;
    Ok(ParsedKey {
        algorithm,
        pkcs8,
        spki,
    })
}

fn sec1_to_pkcs8(der: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let curves = [
        &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        &aws_lc_rs::signature::ECDSA_P384_SHA384_ASN1_SIGNING,
    ];
    for curve in curves {
        if let Ok(pair) = EcdsaKeyPair::from_private_key_der(curve, der) {
            let doc = pair.to_pkcs8v1().map_err(|_| KeyError::Unparsable)?;
            return Ok(Zeroizing::new(doc.as_ref().to_vec()));
        }
    }
    let p521 = &aws_lc_rs::signature::ECDSA_P521_SHA512_ASN1_SIGNING;
    if EcdsaKeyPair::from_private_key_der(p521, der).is_ok() {
        return Err(KeyError::Unsupported("EC P-521".into()));
    }
    Err(KeyError::Unparsable)
}

/// Tells a well-formed key of an algorithm we do not support from plain garbage, so the user
/// hears "unsupported key type: EC P-521" rather than "not a key".
fn unsupported_or_unparsable(pkcs8: &[u8]) -> KeyError {
    match pkcs8::PrivateKeyInfoRef::try_from(pkcs8) {
        Ok(info) => {
            let oid = info.algorithm.oid.to_string();
            let curve = info
                .algorithm
                .parameters_oid()
                .map(|o| o.to_string())
                .unwrap_or_default();
            match (oid.as_str(), curve.as_str()) {
                ("1.2.840.10045.2.1", "1.3.132.0.35") => KeyError::Unsupported("EC P-521".into()),
                ("1.2.840.113549.1.1.1", _) => {
                    KeyError::Unsupported("RSA key of an unsupported size".into())
                }
                ("1.3.101.113", _) => KeyError::Unsupported("Ed448".into()),
                ("1.2.840.10040.4.1", _) => KeyError::Unsupported("DSA".into()),
                _ => KeyError::Unsupported(format!("private key algorithm {oid}")),
            }
        }
        Err(_) => KeyError::Unparsable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_round_trip_through_pkcs8() {
        for alg in [
            KeyAlgorithm::EcP256,
            KeyAlgorithm::EcP384,
            KeyAlgorithm::Ed25519,
            KeyAlgorithm::Rsa2048,
        ] {
            let pair = generate(alg).unwrap();
            let parsed =
                parse_private_key(&PrivateKeyDer::Pkcs8(pair.serialize_der().into())).unwrap();
            assert_eq!(parsed.algorithm, alg);
            assert_eq!(parsed.spki, pair.subject_public_key_info());
        }
    }

    #[test]
    fn garbage_is_unparsable() {
        let key = PrivateKeyDer::Pkcs8(vec![0x30, 0x03, 0x02, 0x01, 0x00].into());
        assert!(matches!(parse_private_key(&key), Err(KeyError::Unparsable)));
    }
}
