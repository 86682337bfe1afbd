//! Exporting a certificate with its private key, encrypted under a caller's passphrase.
//!
//! The only way a private key ever leaves certkeeper. Two formats: PEM with the key as PBES2
//! encrypted PKCS#8 (PBKDF2-HMAC-SHA256, AES-256-CBC: what `openssl pkcs8` reads), and PKCS#12
//! (AES-256 PBES2 with an HMAC-SHA256 MAC, or the legacy 3DES/SHA-1 form for old Java and
//! Windows consumers that cannot read anything newer).

use base64::Engine;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::pem;

/// PBKDF2 iterations for the exported key: the passphrase is the only protection of a key that
/// leaves the server, so guessing must be expensive (OWASP 2023 asks for 600,000 with SHA-256;
/// this keeps one export under a second on a small machine).
const PBKDF2_ITERATIONS: u32 = 310_000;
/// PKCS#12 iterations: the crate's KDF is slower per iteration; common tools use 2,048-10,000.
const PKCS12_ITERATIONS: u32 = 100_000;

pub const MIN_PASSPHRASE: usize = 4;
pub const MAX_PASSPHRASE: usize = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ExportFormat {
    /// Certificate, chain and encrypted key as PEM text.
    #[default]
    Pem,
    /// PKCS#12 with modern encryption (AES-256, HMAC-SHA256).
    Pkcs12,
    /// PKCS#12 with 3DES and SHA-1, for consumers that cannot read anything newer.
    Pkcs12Legacy,
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("passphrase must be {MIN_PASSPHRASE} to {MAX_PASSPHRASE} characters")]
    Passphrase,
    #[error("encryption failed: {0}")]
    Crypto(String),
}

/// An export as the API returns it: PEM text, or PKCS#12 bytes in base64.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Exported {
    pub format: ExportFormat,
    /// PEM: the leaf certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    /// PEM: the issuers, nearest first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<String>,
    /// PEM: the passphrase-encrypted PKCS#8 key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
    /// PKCS#12: the whole file, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pkcs12: Option<String>,
}

pub fn check_passphrase(passphrase: &str) -> Result<(), ExportError> {
    let n = passphrase.chars().count();
    if !(MIN_PASSPHRASE..=MAX_PASSPHRASE).contains(&n) {
        return Err(ExportError::Passphrase);
    }
    Ok(())
}

pub fn export(
    format: ExportFormat,
    cert_pem: &str,
    chain_pem: &str,
    key_pkcs8: &[u8],
    passphrase: &str,
) -> Result<Exported, ExportError> {
    check_passphrase(passphrase)?;
    let key = pkcs8_v1(key_pkcs8)?;
    match format {
        ExportFormat::Pem => Ok(Exported {
            format,
            certificate: Some(cert_pem.to_owned()),
            chain: Some(chain_pem.to_owned()),
            private_key: Some(encrypt_pkcs8(key.as_bytes(), passphrase)?),
            pkcs12: None,
        }),
        ExportFormat::Pkcs12 | ExportFormat::Pkcs12Legacy => {
            let bytes = pkcs12(format, cert_pem, chain_pem, key.as_bytes(), passphrase)?;
            Ok(Exported {
                format,
                certificate: None,
                chain: None,
                private_key: None,
                pkcs12: Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
            })
        }
    }
}

/// The key as a PKCS#8 v1 document (RFC 5208), without the public key a v2 one (RFC 5958)
/// may carry: Ed25519 keys are generated as v2, which OpenSSL 3.0 does not read (the crash
/// torture found exported Ed25519 keys that `openssl pkey` refused). Every reader takes v1,
/// and the public key follows from the private one. Zeroized when dropped.
fn pkcs8_v1(key_pkcs8: &[u8]) -> Result<pkcs8::SecretDocument, ExportError> {
    let crypto = |e: &dyn std::fmt::Display| ExportError::Crypto(e.to_string());
    let mut info = pkcs8::PrivateKeyInfoRef::try_from(key_pkcs8).map_err(|e| crypto(&e))?;
    info.public_key = None;
    pkcs8::SecretDocument::try_from(info).map_err(|e| crypto(&e))
}

fn encrypt_pkcs8(key_pkcs8: &[u8], passphrase: &str) -> Result<String, ExportError> {
    let crypto = |e: &dyn std::fmt::Display| ExportError::Crypto(e.to_string());
    let mut salt = [0u8; 16];
    let mut iv = [0u8; 16];
    aws_lc_rs::rand::fill(&mut salt).map_err(|e| crypto(&e))?;
    aws_lc_rs::rand::fill(&mut iv).map_err(|e| crypto(&e))?;
    let params = pkcs8::pkcs5::pbes2::Parameters::generate_pbkdf2_sha256_aes256cbc(
        PBKDF2_ITERATIONS,
        &salt,
        iv,
    )
    .map_err(|e| crypto(&e))?;
    let info = pkcs8::PrivateKeyInfoRef::try_from(key_pkcs8).map_err(|e| crypto(&e))?;
    let doc = info
        .encrypt_with_params(params, passphrase)
        .map_err(|e| crypto(&e))?;
    Ok(pem::encode("ENCRYPTED PRIVATE KEY", doc.as_bytes()))
}

fn pkcs12(
    format: ExportFormat,
    cert_pem: &str,
    chain_pem: &str,
    key_pkcs8: &[u8],
    passphrase: &str,
) -> Result<Zeroizing<Vec<u8>>, ExportError> {
    let crypto = |e: &dyn std::fmt::Display| ExportError::Crypto(e.to_string());
    let mut certs = Vec::new();
    for der in pem::certificates(cert_pem)
        .into_iter()
        .chain(pem::certificates(chain_pem))
    {
        certs.push(p12_keystore::Certificate::from_der(&der).map_err(|e| crypto(&e))?);
    }
    let key = p12_keystore::PrivateKey::from_der(key_pkcs8).map_err(|e| crypto(&e))?;
    let local_key_id = certs
        .first()
        .map(|c| digest(c.as_der()))
        .unwrap_or_default();
    let chain = p12_keystore::PrivateKeyChain::new(local_key_id, key, certs);
    let mut store = p12_keystore::KeyStore::new();
    store.add_entry(
        "certkeeper",
        p12_keystore::KeyStoreEntry::PrivateKeyChain(chain),
    );
    let (encryption, mac) = match format {
        ExportFormat::Pkcs12Legacy => (
            p12_keystore::EncryptionAlgorithm::PbeWithShaAnd3KeyTripleDesCbc,
            p12_keystore::MacAlgorithm::HmacSha1,
        ),
        _ => (
            p12_keystore::EncryptionAlgorithm::PbeWithHmacSha256AndAes256,
            p12_keystore::MacAlgorithm::HmacSha256,
        ),
    };
    let bytes = store
        .writer(passphrase)
        .encryption_algorithm(encryption)
        .encryption_iterations(PKCS12_ITERATIONS)
        .mac_algorithm(mac)
        .mac_iterations(PKCS12_ITERATIONS)
        .write()
        .map_err(|e| crypto(&e))?;
    Ok(Zeroizing::new(bytes))
}

/// The PKCS#12 localKeyId links the key bag to its certificate bag: the leaf's SHA-1, as
/// OpenSSL writes it.
fn digest(der: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, der)
        .as_ref()
        .to_vec()
}

#[cfg(test)]
mod tests {
    use rcgen::PublicKeyData as _;

    use super::*;
    use crate::model::KeyAlgorithm;

    /// Ed25519 keys come out of generation as PKCS#8 v2; what is exported is v1, and the same
    /// key.
    #[test]
    fn exported_keys_are_pkcs8_v1_of_the_same_key() {
        for algorithm in [KeyAlgorithm::Ed25519, KeyAlgorithm::EcP256] {
            let generated = crate::keys::generate(algorithm).unwrap().serialize_der();
            let v1 = pkcs8_v1(&generated).unwrap();
            let info = pkcs8::PrivateKeyInfoRef::try_from(v1.as_bytes()).unwrap();
            assert_eq!(info.version(), pkcs8::Version::V1, "{algorithm:?}");
            let original = crate::keys::load_pkcs8(&generated).unwrap();
            let exported = crate::keys::load_pkcs8(v1.as_bytes()).unwrap();
            assert_eq!(
                exported.subject_public_key_info(),
                original.subject_public_key_info(),
                "{algorithm:?}"
            );
        }
    }
}
