//! Checking certificates brought in from elsewhere (`certkeeper import`).
//!
//! Every problem gets its own error naming the input (certificate, private key, chain) and what
//! is wrong with it, and nothing is stored unless every check passes. The checks, in order:
//! one parseable leaf certificate that is not a CA; a supported key type; not expired (unless
//! allowed); one private key, decrypted with the passphrase if it is encrypted, matching the
//! certificate; and a chain in issuer order whose every link verifies and which rustls-webpki
//! accepts as a path from the certificate to the chain's last element.

use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::keys::{self, KeyError};
use crate::model::{Domain, KeyAlgorithm};
use crate::pem::{self, Block, PemError};
use crate::x509::{self, CertInfo};

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{input} {error}")]
    Pem {
        input: &'static str,
        error: PemError,
    },
    #[error("{input} is neither PEM nor a DER {expected}")]
    NotPemOrDer {
        input: &'static str,
        expected: &'static str,
    },
    #[error("{input} holds {count} {what}; expected exactly one{hint}")]
    Count {
        input: &'static str,
        count: usize,
        what: &'static str,
        hint: &'static str,
    },
    #[error("{input} holds a PEM block labelled {label:?}; expected {expected}")]
    WrongLabel {
        input: &'static str,
        label: String,
        expected: &'static str,
    },
    #[error("{input} {error}")]
    X509 {
        input: &'static str,
        error: x509::X509Error,
    },
    #[error(
        "certificate is a CA certificate (basicConstraints CA:TRUE); import the leaf certificate and pass CAs with --chain"
    )]
    CaAsLeaf,
    #[error("certificate expired at {not_after}; pass --allow-expired to import it anyway")]
    Expired { not_after: String },
    #[error("certificate has {0}")]
    UnsupportedKey(KeyError),
    #[error("certificate names no DNS name or IP address certkeeper can manage")]
    NoNames,
    #[error("private key is encrypted; give its passphrase (--passphrase-file)")]
    PassphraseRequired,
    #[error(
        "private key could not be decrypted: wrong passphrase, or an unsupported encryption scheme"
    )]
    WrongPassphrase,
    #[error(
        "private key uses legacy OpenSSL PEM encryption; convert it with `openssl pkcs8 -topk8` first"
    )]
    LegacyEncryption,
    /// The encrypted key asks for more key-derivation work than certkeeper does for anyone.
    #[error("private key encryption asks for {asked}; certkeeper derives at most {limit}")]
    KdfTooCostly { asked: String, limit: String },
    #[error("private key {0}")]
    Key(KeyError),
    #[error("private key does not match the certificate's public key")]
    KeyMismatch,
    #[error("chain element {index} {error}")]
    ChainElement {
        index: usize,
        error: x509::X509Error,
    },
    #[error("chain element {index} (subject {subject:?}) is not a CA certificate")]
    ChainNotCa { index: usize, subject: String },
    #[error(
        "chain is out of order: {what} is signed by chain element {found}, not element {expected}; list each certificate's issuer right after it"
    )]
    ChainOrder {
        what: String,
        expected: usize,
        found: usize,
    },
    #[error(
        "chain does not link: {what} (issuer {issuer:?}) is not signed by chain element {index} (subject {subject:?})"
    )]
    ChainBreak {
        what: String,
        issuer: String,
        index: usize,
        subject: String,
    },
    #[error("chain does not verify: {0}")]
    ChainInvalid(String),
}

/// The passphrase of an encrypted private key; zeroised when dropped.
pub type Passphrase = Zeroizing<String>;

/// A certificate that passed every check, ready to store.
pub struct Checked {
    pub info: CertInfo,
    pub cert_pem: String,
    pub chain_pem: String,
    pub key_algorithm: KeyAlgorithm,
    pub domains: Vec<Domain>,
    /// Unencrypted PKCS#8 DER.
    pub key: Zeroizing<Vec<u8>>,
}

pub struct Input<'a> {
    pub certificate: &'a [u8],
    pub private_key: &'a [u8],
    pub chain: Option<&'a [u8]>,
    pub passphrase: Option<&'a str>,
    pub allow_expired: bool,
}

pub fn check(input: &Input<'_>, now: OffsetDateTime) -> Result<Checked, ImportError> {
    let cert_der = one_certificate(input.certificate)?;
    let info = x509::inspect(&cert_der).map_err(|error| ImportError::X509 {
        input: "certificate",
        error,
    })?;
    if info.is_ca {
        return Err(ImportError::CaAsLeaf);
    }
    let key_algorithm = keys::algorithm_of_spki(&info.spki).map_err(ImportError::UnsupportedKey)?;
    if info.not_after < now && !input.allow_expired {
        return Err(ImportError::Expired {
            not_after: crate::model::rfc3339(info.not_after),
        });
    }
    let key = private_key(input.private_key, input.passphrase)?;
    if key.spki != info.spki {
        return Err(ImportError::KeyMismatch);
    }
    let chain = match input.chain {
        Some(bytes) => chain(bytes)?,
        None => Vec::new(),
    };
    check_links(&cert_der, &chain)?;
    if !chain.is_empty() {
        // Verify at a time inside the certificate's validity when an expired import is allowed,
        // so an allowed expiry does not fail the path check.
        let at = if info.not_after < now {
            info.not_after - time::Duration::seconds(1)
        } else {
            now
        };
        verify_path(&cert_der, &chain, at)?;
    }
    let domains = domains_of(&info)?;
    Ok(Checked {
        cert_pem: pem::encode("CERTIFICATE", &cert_der),
        chain_pem: chain
            .iter()
            .map(|der| pem::encode("CERTIFICATE", der))
            .collect(),
        key_algorithm,
        domains,
        key: key.pkcs8,
        info,
    })
}

fn one_certificate(input: &[u8]) -> Result<Vec<u8>, ImportError> {
    let blocks = pem::blocks(input).map_err(|error| ImportError::Pem {
        input: "certificate",
        error,
    })?;
    let certs = certificate_blocks("certificate", blocks)?;
    match certs.len() {
        1 => Ok(certs.into_iter().next().unwrap_or_default()),
        count => Err(ImportError::Count {
            input: "certificate",
            count,
            what: "certificates",
            hint: " (put intermediate certificates in --chain)",
        }),
    }
}

fn chain(input: &[u8]) -> Result<Vec<Vec<u8>>, ImportError> {
    let blocks = pem::blocks(input).map_err(|error| ImportError::Pem {
        input: "chain",
        error,
    })?;
    let certs = certificate_blocks("chain", blocks)?;
    for (i, der) in certs.iter().enumerate() {
        let info = x509::inspect(der).map_err(|error| ImportError::ChainElement {
            index: i + 1,
            error,
        })?;
        if !info.is_ca {
            return Err(ImportError::ChainNotCa {
                index: i + 1,
                subject: info.subject,
            });
        }
    }
    Ok(certs)
}

/// The DER of each CERTIFICATE block; DER input must itself be a certificate.
fn certificate_blocks(
    input: &'static str,
    blocks: Vec<Block>,
) -> Result<Vec<Vec<u8>>, ImportError> {
    let mut out = Vec::with_capacity(blocks.len());
    for block in blocks {
        match block.label.as_deref() {
            Some("CERTIFICATE") => out.push(block.der.to_vec()),
            Some(label) => {
                return Err(ImportError::WrongLabel {
                    input,
                    label: label.to_owned(),
                    expected: "CERTIFICATE",
                });
            }
            None => {
                if x509::inspect(&block.der).is_err() {
                    // Tell DER junk apart from a DER certificate with bytes after it.
                    if matches!(x509::inspect(&block.der), Err(x509::X509Error::Trailing)) {
                        return Err(ImportError::X509 {
                            input,
                            error: x509::X509Error::Trailing,
                        });
                    }
                    return Err(ImportError::NotPemOrDer {
                        input,
                        expected: "certificate",
                    });
                }
                out.push(block.der.to_vec());
            }
        }
    }
    Ok(out)
}

fn private_key(input: &[u8], passphrase: Option<&str>) -> Result<keys::ParsedKey, ImportError> {
    if input.windows(10).any(|w| w == b"Proc-Type:") {
        return Err(ImportError::LegacyEncryption);
    }
    let blocks = pem::blocks(input).map_err(|error| ImportError::Pem {
        input: "private key",
        error,
    })?;
    let [block] = blocks.as_slice() else {
        return Err(ImportError::Count {
            input: "private key",
            count: blocks.len(),
            what: "PEM blocks",
            hint: "",
        });
    };
    // Every form borrows the block's (zeroized) bytes or the decrypted (zeroized) copy: a key
    // built from a plain Vec would leave its plaintext in freed memory (M1).
    let der = block.der.as_slice();
    let decrypted: Zeroizing<Vec<u8>>;
    let key = match block.label.as_deref() {
        Some("PRIVATE KEY") => PrivateKeyDer::Pkcs8(der.into()),
        Some("EC PRIVATE KEY") => PrivateKeyDer::Sec1(der.into()),
        Some("RSA PRIVATE KEY") => PrivateKeyDer::Pkcs1(der.into()),
        Some("ENCRYPTED PRIVATE KEY") => {
            decrypted = decrypt(der, passphrase)?;
            PrivateKeyDer::Pkcs8(decrypted.as_slice().into())
        }
        Some(label) => {
            return Err(ImportError::WrongLabel {
                input: "private key",
                label: label.to_owned(),
                expected: "PRIVATE KEY, EC PRIVATE KEY, RSA PRIVATE KEY or ENCRYPTED PRIVATE KEY",
            });
        }
        None => match pkcs8::EncryptedPrivateKeyInfoRef::try_from(der) {
            Ok(_) => {
                decrypted = decrypt(der, passphrase)?;
                PrivateKeyDer::Pkcs8(decrypted.as_slice().into())
            }
            Err(_) => PrivateKeyDer::try_from(der).map_err(|_| ImportError::NotPemOrDer {
                input: "private key",
                expected: "private key",
            })?,
        },
    };
    keys::parse_private_key(&key).map_err(ImportError::Key)
}

/// The most PBKDF2 iterations an encrypted key may ask for: about a second of one core here,
/// a hundred times OpenSSL's default (the review's u32::MAX took 7 minutes, past every timeout).
pub const MAX_PBKDF2_ITERATIONS: u32 = 10_000_000;
/// The most memory scrypt may take (128·r·N bytes): 256 MiB, sixteen times OpenSSL's default.
/// The parameters come from the file, and scrypt allocates what they ask for at once (the
/// review's N = 2^40 asked for a petabyte and aborted the daemon).
pub const MAX_SCRYPT_MEMORY: u64 = 256 << 20;
/// The most scrypt work (N·r·p): sixteen times the default's, so `p` cannot stand in for memory.
pub const MAX_SCRYPT_WORK: u64 = 16 * (1 << 14) * 8;

fn decrypt(der: &[u8], passphrase: Option<&str>) -> Result<Zeroizing<Vec<u8>>, ImportError> {
    let passphrase = passphrase.ok_or(ImportError::PassphraseRequired)?;
    let info =
        pkcs8::EncryptedPrivateKeyInfoRef::try_from(der).map_err(|_| ImportError::NotPemOrDer {
            input: "private key",
            expected: "encrypted private key",
        })?;
    check_kdf(&info.encryption_algorithm)?;
    let plain = info
        .decrypt(passphrase)
        .map_err(|_| ImportError::WrongPassphrase)?;
    Ok(Zeroizing::new(plain.as_bytes().to_vec()))
}

/// Refuses key-derivation parameters beyond the bounds above, before any work is done.
fn check_kdf(scheme: &pkcs8::pkcs5::EncryptionScheme) -> Result<(), ImportError> {
    use pkcs8::pkcs5::pbes2::Kdf;
    let Some(params) = scheme.pbes2() else {
        // PBES1 is not decrypted at all: the decryption reports it.
        return Ok(());
    };
    let too_costly = |asked: String, limit: String| ImportError::KdfTooCostly { asked, limit };
    match &params.kdf {
        Kdf::Pbkdf2(p) if p.iteration_count > MAX_PBKDF2_ITERATIONS => Err(too_costly(
            format!("{} PBKDF2 iterations", p.iteration_count),
            format!("{MAX_PBKDF2_ITERATIONS} iterations"),
        )),
        Kdf::Scrypt(s) => {
            let (n, r, p) = (
                s.cost_parameter,
                u64::from(s.block_size),
                u64::from(s.parallelization),
            );
            let memory = n.saturating_mul(r).saturating_mul(128);
            let work = n.saturating_mul(r).saturating_mul(p);
            if memory > MAX_SCRYPT_MEMORY || work > MAX_SCRYPT_WORK {
                return Err(too_costly(
                    format!("scrypt with N={n}, r={r}, p={p}"),
                    format!(
                        "{} MiB of memory and N·r·p = {MAX_SCRYPT_WORK}",
                        MAX_SCRYPT_MEMORY >> 20
                    ),
                ));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Checks that the certificate is signed by chain element 1, element 1 by element 2, and so on,
/// and tells "out of order" (the issuer is elsewhere in the chain) from "does not link". Also
/// run on the chains ACME CAs send.
pub fn check_links(cert: &[u8], chain: &[Vec<u8>]) -> Result<(), ImportError> {
    let mut child: &[u8] = cert;
    let mut what = "the certificate".to_owned();
    for (i, parent) in chain.iter().enumerate() {
        if !x509::is_signed_by(child, parent) {
            if let Some(found) = chain
                .iter()
                .position(|other| x509::is_signed_by(child, other))
            {
                return Err(ImportError::ChainOrder {
                    what,
                    expected: i + 1,
                    found: found + 1,
                });
            }
            let issuer = x509::inspect(child).map(|c| c.issuer).unwrap_or_default();
            let subject = x509::inspect(parent).map(|c| c.subject).unwrap_or_default();
            return Err(ImportError::ChainBreak {
                what,
                issuer,
                index: i + 1,
                subject,
            });
        }
        child = parent;
        what = format!("chain element {}", i + 1);
    }
    Ok(())
}

/// Path validation with rustls-webpki, anchored at the chain's last element. This adds what the
/// link check cannot see: validity periods of the CAs, name constraints, path lengths, EKU.
fn verify_path(cert: &[u8], chain: &[Vec<u8>], at: OffsetDateTime) -> Result<(), ImportError> {
    let invalid = |e: webpki::Error| ImportError::ChainInvalid(format!("{e:?}"));
    let Some((anchor_der, intermediates)) = chain.split_last() else {
        return Ok(());
    };
    let anchor_cert = CertificateDer::from(anchor_der.as_slice());
    let anchor = webpki::anchor_from_trusted_cert(&anchor_cert).map_err(invalid)?;
    let intermediates: Vec<CertificateDer<'_>> = intermediates
        .iter()
        .map(|d| CertificateDer::from(d.as_slice()))
        .collect();
    let leaf_der = CertificateDer::from(cert);
    let leaf = webpki::EndEntityCert::try_from(&leaf_der).map_err(invalid)?;
    let time = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
        at.unix_timestamp().max(0) as u64,
    ));
    let anchors = [anchor];
    let verify = |usage| {
        leaf.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &intermediates,
            time,
            usage,
            None,
            None,
        )
        .map(|_| ())
    };
    // Imported certificates may be server or client certificates: either purpose will do.
    verify(webpki::KeyUsage::server_auth())
        .or_else(|_| verify(webpki::KeyUsage::client_auth()))
        .map_err(invalid)
}

fn domains_of(info: &CertInfo) -> Result<Vec<Domain>, ImportError> {
    let mut domains: Vec<Domain> = Vec::new();
    let candidates = info
        .names
        .iter()
        .cloned()
        .chain(info.common_name.iter().filter_map(|cn| cn.parse().ok()));
    for domain in candidates {
        if !domains.contains(&domain) {
            domains.push(domain);
        }
    }
    // The common name, when it is among the names, goes first: it is what users call the
    // certificate.
    if let Some(cn) = info
        .common_name
        .as_ref()
        .and_then(|cn| cn.parse::<Domain>().ok())
        && let Some(pos) = domains.iter().position(|d| *d == cn)
    {
        let cn = domains.remove(pos);
        domains.insert(0, cn);
    }
    if domains.is_empty() {
        return Err(ImportError::NoNames);
    }
    Ok(domains)
}
