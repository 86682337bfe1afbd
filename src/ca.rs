//! certkeeper's own certificate authorities: creating roots and subordinates, issuing leaf
//! certificates (from our keys or a caller's CSR), and CRLs.
//!
//! A CA whose CRL and certificate are published (`[pki]`, see `src/pki.rs`) puts where to
//! fetch them into everything it signs: cRLDistributionPoints and authorityInfoAccess
//! caIssuers. rcgen has a field for the first; the second is DER we encode here.
//!
//! rcgen signs whatever it is given; the policy is ours and lives here: a CA only signs names
//! inside its DNS name constraints, never past its own expiry, and never more levels of CAs than
//! its path length allows. Everything here is pure computation on keys and parameters; storing
//! the results is the caller's job.

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CidrSubnet,
    CrlDistributionPoint, CustomExtension, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
    GeneralSubtree, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, NameConstraints,
    PublicKeyData, RevokedCertParams, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;
use zeroize::Zeroizing;

use crate::keys::{self, KeyError};
use crate::model::{CaSpec, Domain, KeyAlgorithm, RevocationReason, Serial};
use crate::pem;
use crate::span::Span;

/// Certificates are dated this far back, so a client whose clock runs a little behind does not
/// reject a certificate issued a moment ago.
const BACKDATE: time::Duration = time::Duration::minutes(5);

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("signing failed: {0}")]
    Sign(String),
    #[error("CA {ca:?} may not issue for {name}: outside its permitted names ({permitted})")]
    NameConstraint {
        ca: String,
        name: String,
        permitted: String,
    },
    #[error("CA {ca:?} is constrained to DNS names and may not issue for the IP address {ip}")]
    IpNotPermitted { ca: String, ip: IpAddr },
    #[error("CA {ca:?} expires at {ca_not_after}; a validity of {validity} would outlive it")]
    OutlivesCa {
        ca: String,
        validity: Span,
        ca_not_after: String,
    },
    #[error("CA {ca:?} has path length 0 and may not sign another CA")]
    PathLength { ca: String },
    #[error("invalid permitted DNS name {0:?}")]
    BadConstraint(String),
    #[error("the CSR {0}")]
    Csr(String),
    #[error("validity must be at least 1m")]
    ValidityTooShort,
}

/// A CA ready to sign: its decrypted key, certificate and policy.
pub struct Authority {
    pub name: String,
    issuer: Issuer<'static, KeyPair>,
    pub cert_pem: String,
    /// The issuers above this CA, nearest first, as PEM (empty for a root).
    pub chain_pem: String,
    pub permitted_dns: Vec<String>,
    pub path_length: Option<u8>,
    pub not_after: OffsetDateTime,
    /// Where this CA's CRL and certificate are published, when they are.
    published: Option<Published>,
}

/// Where relying parties fetch what they need to check a certificate a CA signed: the CA's
/// CRL and the CA's own certificate (to build the chain). Both are `http://` URLs, ASCII.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Published {
    pub crl: String,
    pub ca_issuers: String,
}

/// A freshly created CA, before it is stored.
pub struct CreatedCa {
    pub cert_pem: Option<String>,
    pub chain_pem: String,
    pub csr_pem: Option<String>,
    pub serial: Option<Serial>,
    pub not_before: Option<OffsetDateTime>,
    pub not_after: Option<OffsetDateTime>,
    pub key: Zeroizing<Vec<u8>>,
}

/// What a leaf certificate should contain.
pub struct LeafRequest<'a> {
    pub domains: &'a [Domain],
    pub validity: Span,
    pub client_auth: bool,
}

/// A signed leaf certificate.
pub struct Issued {
    pub cert_pem: String,
    pub chain_pem: String,
    pub serial: Serial,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Authority {
    /// Rebuilds a signing CA from what the store holds.
    pub fn load(
        name: &str,
        cert_pem: &str,
        chain_pem: &str,
        key_pkcs8: &[u8],
        permitted_dns: Vec<String>,
        path_length: Option<u8>,
    ) -> Result<Self, CaError> {
        let key = keys::load_pkcs8(key_pkcs8)?;
        let der = pem::certificates(cert_pem)
            .into_iter()
            .next()
            .ok_or_else(|| CaError::Sign("no certificate".into()))?;
        let not_after = crate::x509::inspect(&der)
            .map_err(|e| CaError::Sign(e.to_string()))?
            .not_after;
        let issuer = Issuer::from_ca_cert_der(&CertificateDer::from(der), key)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        Ok(Self {
            name: name.to_owned(),
            issuer,
            cert_pem: cert_pem.to_owned(),
            chain_pem: chain_pem.to_owned(),
            permitted_dns,
            path_length,
            not_after,
            published: None,
        })
    }

    /// This CA, putting `published` into every certificate it signs from now on.
    pub fn with_published(mut self, published: Option<Published>) -> Self {
        self.published = published;
        self
    }

    /// The full chain a leaf of this CA needs: this CA, then its issuers.
    pub fn leaf_chain_pem(&self) -> String {
        format!("{}{}", self.cert_pem, self.chain_pem)
    }

    /// Issues a leaf certificate for `public_key`.
    pub fn issue(
        &self,
        request: &LeafRequest<'_>,
        public_key: &impl PublicKeyData,
        now: OffsetDateTime,
    ) -> Result<Issued, CaError> {
        self.check_names(request.domains)?;
        let (not_before, not_after) = self.validity_window(request.validity, now)?;
        let mut params = CertificateParams::default();
        params.not_before = not_before;
        params.not_after = not_after;
        params.serial_number = Some(random_serial()?);
        params.distinguished_name = DistinguishedName::new();
        if let Some(first) = request.domains.first() {
            params
                .distinguished_name
                .push(DnType::CommonName, first.to_string());
        }
        params.subject_alt_names = request.domains.iter().map(san).collect::<Result<_, _>>()?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if public_key.algorithm() == &rcgen::PKCS_RSA_SHA256 {
            // RSA key exchange in TLS 1.2 needs keyEncipherment; ECDSA and Ed25519 keys must not have it.
            params.key_usages.push(KeyUsagePurpose::KeyEncipherment);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        if request.client_auth {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ClientAuth);
        }
        params.use_authority_key_identifier_extension = true;
        params.key_identifier_method = KeyIdMethod::Sha256;
        self.point_to_published(&mut params);
        let cert = params
            .signed_by(public_key, &self.issuer)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        Ok(Issued {
            cert_pem: cert.pem(),
            chain_pem: self.leaf_chain_pem(),
            serial: Serial::from_bytes(
                params
                    .serial_number
                    .as_ref()
                    .map(SerialNumber::as_ref)
                    .unwrap_or_default(),
            ),
            not_before,
            not_after,
        })
    }

    /// Creates a subordinate CA signed by this one.
    pub fn create_subordinate(
        &self,
        spec: &CaSpec,
        now: OffsetDateTime,
    ) -> Result<CreatedCa, CaError> {
        if self.path_length == Some(0) {
            return Err(CaError::PathLength {
                ca: self.name.clone(),
            });
        }
        let child_permitted = if spec.permitted_dns.is_empty() {
            &self.permitted_dns
        } else {
            &spec.permitted_dns
        };
        for name in child_permitted {
            // An unconstrained parent permits any narrowing; a constrained one only subtrees
            // of its own.
            if !self.permitted_dns.is_empty() && !self.permits(&name.to_ascii_lowercase()) {
                return Err(CaError::NameConstraint {
                    ca: self.name.clone(),
                    name: name.clone(),
                    permitted: self.permitted_dns.join(", "),
                });
            }
        }
        let mut child = spec.clone();
        child.permitted_dns = child_permitted.clone();
        // A child may never allow more levels than its parent has left.
        child.path_length = match (self.path_length, spec.path_length) {
            (Some(parent), Some(own)) => Some(own.min(parent - 1)),
            (Some(parent), None) => Some(parent - 1),
            (None, own) => own,
        };
        let (not_before, not_after) = self.validity_window(spec.validity, now)?;
        let key = keys::generate(spec.key_algorithm)?;
        let mut params = ca_params(&child, not_before, not_after)?;
        self.point_to_published(&mut params);
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        Ok(created(&params, cert.pem(), self.leaf_chain_pem(), key))
    }

    /// A CRL listing `revoked`, numbered `number`, valid until `next_update`.
    pub fn crl(
        &self,
        revoked: &[(Serial, OffsetDateTime, RevocationReason)],
        number: u64,
        now: OffsetDateTime,
        next_update: OffsetDateTime,
    ) -> Result<Vec<u8>, CaError> {
        let params = CertificateRevocationListParams {
            this_update: now - BACKDATE,
            next_update,
            crl_number: SerialNumber::from_slice(&number.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|(serial, at, reason)| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&serial.to_bytes()),
                    revocation_time: *at,
                    reason_code: Some(crl_reason(*reason)),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params
            .signed_by(&self.issuer)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        Ok(crl.der().to_vec())
    }

    /// Adds where to fetch this CA's CRL and certificate to a certificate it signs. A root
    /// gets none: nothing signs it, so there is nothing to fetch for it.
    fn point_to_published(&self, params: &mut CertificateParams) {
        let Some(published) = &self.published else {
            return;
        };
        params.crl_distribution_points = vec![CrlDistributionPoint {
            uris: vec![published.crl.clone()],
        }];
        params
            .custom_extensions
            .push(ca_issuers_extension(&published.ca_issuers));
    }

    fn check_names(&self, domains: &[Domain]) -> Result<(), CaError> {
        if self.permitted_dns.is_empty() {
            return Ok(());
        }
        for domain in domains {
            match domain {
                Domain::Ip(ip) => {
                    return Err(CaError::IpNotPermitted {
                        ca: self.name.clone(),
                        ip: *ip,
                    });
                }
                Domain::Dns(name) => {
                    let base = name.strip_prefix("*.").unwrap_or(name);
                    if !self.permits(base) {
                        return Err(CaError::NameConstraint {
                            ca: self.name.clone(),
                            name: name.clone(),
                            permitted: self.permitted_dns.join(", "),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// RFC 5280 dNSName constraint matching: the name itself or any name below it.
    fn permits(&self, name: &str) -> bool {
        self.permitted_dns.iter().any(|base| {
            let base = base.trim_start_matches('.').to_ascii_lowercase();
            name == base || name.ends_with(&format!(".{base}"))
        })
    }

    fn validity_window(
        &self,
        validity: Span,
        now: OffsetDateTime,
    ) -> Result<(OffsetDateTime, OffsetDateTime), CaError> {
        if validity.as_secs() < 60 {
            return Err(CaError::ValidityTooShort);
        }
        // A date past what `time` holds certainly outlives the CA.
        let not_after = now.checked_add(validity.time());
        let Some(not_after) = not_after.filter(|end| *end <= self.not_after) else {
            return Err(CaError::OutlivesCa {
                ca: self.name.clone(),
                validity,
                ca_not_after: crate::model::rfc3339(self.not_after),
            });
        };
        Ok((now - BACKDATE, not_after))
    }
}

/// When a CA created `now` with `spec` expires. Spans are bounded when parsed, so this fails
/// only for a spec built past those bounds; it must not panic then either.
fn end_of(spec: &CaSpec, now: OffsetDateTime) -> Result<OffsetDateTime, CaError> {
    now.checked_add(spec.validity.time()).ok_or_else(|| {
        CaError::Sign(format!(
            "a validity of {} ends past year 9999",
            spec.validity
        ))
    })
}

/// Creates a self-signed root CA.
pub fn create_root(spec: &CaSpec, now: OffsetDateTime) -> Result<CreatedCa, CaError> {
    if spec.validity.as_secs() < 60 {
        return Err(CaError::ValidityTooShort);
    }
    let key = keys::generate(spec.key_algorithm)?;
    let params = ca_params(spec, now - BACKDATE, end_of(spec, now)?)?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| CaError::Sign(e.to_string()))?;
    Ok(created(&params, cert.pem(), String::new(), key))
}

/// Creates the key and CSR of a CA to be signed by a root outside certkeeper.
pub fn create_external(spec: &CaSpec, now: OffsetDateTime) -> Result<CreatedCa, CaError> {
    let key = keys::generate(spec.key_algorithm)?;
    let mut params = ca_params(spec, now, end_of(spec, now)?)?;
    // A CSR carries only what the requester may ask for: the external root picks the serial,
    // adds its own key identifier and decides on constraints (ours are still enforced by our
    // own policy check before every signature).
    params.serial_number = None;
    params.use_authority_key_identifier_extension = false;
    params.name_constraints = None;
    let csr = params
        .serialize_request(&key)
        .map_err(|e| CaError::Sign(e.to_string()))?;
    Ok(CreatedCa {
        cert_pem: None,
        chain_pem: String::new(),
        csr_pem: Some(csr.pem().map_err(|e| CaError::Sign(e.to_string()))?),
        serial: None,
        not_before: None,
        not_after: None,
        key: Zeroizing::new(key.serialize_der()),
    })
}

fn ca_params(
    spec: &CaSpec,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::default();
    params.not_before = not_before;
    params.not_after = not_after;
    params.serial_number = Some(random_serial()?);
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, spec.common_name.clone());
    params.is_ca = IsCa::Ca(match spec.path_length {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.use_authority_key_identifier_extension = true;
    params.key_identifier_method = KeyIdMethod::Sha256;
    if !spec.permitted_dns.is_empty() {
        let mut permitted = Vec::with_capacity(spec.permitted_dns.len());
        for name in &spec.permitted_dns {
            let base = name.trim_start_matches('.');
            // Validate as a domain name (a constraint like "example.com" must itself be a name).
            let probe = format!("x.{base}");
            probe
                .parse::<Domain>()
                .map_err(|_| CaError::BadConstraint(name.clone()))?;
            permitted.push(GeneralSubtree::DnsName(base.to_ascii_lowercase()));
        }
        // DNS constraints say nothing about IP addresses (RFC 5280), so a DNS-constrained CA
        // also excludes every address: otherwise it could sign for any IP.
        params.name_constraints = Some(NameConstraints {
            permitted_subtrees: permitted,
            excluded_subtrees: vec![
                GeneralSubtree::IpAddress(CidrSubnet::V4([0; 4], [0; 4])),
                GeneralSubtree::IpAddress(CidrSubnet::V6([0; 16], [0; 16])),
            ],
        });
    }
    Ok(params)
}

fn created(
    params: &CertificateParams,
    cert_pem: String,
    chain_pem: String,
    key: KeyPair,
) -> CreatedCa {
    CreatedCa {
        cert_pem: Some(cert_pem),
        chain_pem,
        csr_pem: None,
        serial: params
            .serial_number
            .as_ref()
            .map(|s| Serial::from_bytes(s.as_ref())),
        not_before: Some(params.not_before),
        not_after: Some(params.not_after),
        key: Zeroizing::new(key.serialize_der()),
    }
}

/// A random positive 128-bit serial (RFC 5280 allows 20 octets; CA/B Forum wants 64+ random
/// bits). The first byte is kept in 0x01..=0x7f: positive, and no leading zero to strip.
fn random_serial() -> Result<SerialNumber, CaError> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| CaError::Sign("no randomness".into()))?;
    bytes[0] = (bytes[0] & 0x7f).max(1);
    Ok(SerialNumber::from_slice(&bytes))
}

fn san(domain: &Domain) -> Result<SanType, CaError> {
    Ok(match domain {
        Domain::Dns(name) => SanType::DnsName(
            name.clone()
                .try_into()
                .map_err(|_| CaError::Sign(format!("name {name}")))?,
        ),
        Domain::Ip(ip) => SanType::IpAddress(*ip),
    })
}

/// id-pe-authorityInfoAccess (RFC 5280 §4.2.2.1).
const AUTHORITY_INFO_ACCESS: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 1, 1];
/// id-ad-caIssuers (1.3.6.1.5.5.7.48.2) as a DER OBJECT IDENTIFIER: tag, length, the arcs.
const CA_ISSUERS_OID: [u8; 10] = [0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x02];
/// The context tag of GeneralName's uniformResourceIdentifier: `[6] IMPLICIT IA5String`,
/// primitive.
const URI_TAG: u8 = 0x86;
const SEQUENCE_TAG: u8 = 0x30;

/// A non-critical authorityInfoAccess extension (as RFC 5280 requires) with one caIssuers
/// access description pointing at `url`:
/// `SEQUENCE OF SEQUENCE { accessMethod OID, accessLocation GeneralName }`.
fn ca_issuers_extension(url: &str) -> CustomExtension {
    let location = der(URI_TAG, url.as_bytes());
    let description = der(SEQUENCE_TAG, &[&CA_ISSUERS_OID[..], &location].concat());
    CustomExtension::from_oid_content(AUTHORITY_INFO_ACCESS, der(SEQUENCE_TAG, &description))
}

/// One DER TLV: short-form length under 128, else long form (0x80 | number of length bytes,
/// then the length big-endian without leading zeros).
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    match u8::try_from(content.len()) {
        Ok(short) if short < 0x80 => out.push(short),
        _ => {
            let length = content.len().to_be_bytes();
            let significant = length.iter().skip_while(|b| **b == 0).count();
            // At most 8 length bytes for a usize: 0x88 at most, a valid long form.
            out.push(0x80 | significant as u8);
            out.extend_from_slice(&length[length.len() - significant..]);
        }
    }
    out.extend_from_slice(content);
    out
}

fn crl_reason(reason: RevocationReason) -> rcgen::RevocationReason {
    match reason {
        RevocationReason::Unspecified => rcgen::RevocationReason::Unspecified,
        RevocationReason::KeyCompromise => rcgen::RevocationReason::KeyCompromise,
        RevocationReason::CaCompromise => rcgen::RevocationReason::CaCompromise,
        RevocationReason::AffiliationChanged => rcgen::RevocationReason::AffiliationChanged,
        RevocationReason::Superseded => rcgen::RevocationReason::Superseded,
        RevocationReason::CessationOfOperation => rcgen::RevocationReason::CessationOfOperation,
        RevocationReason::PrivilegeWithdrawn => rcgen::RevocationReason::PrivilegeWithdrawn,
    }
}

/// A caller's certificate signing request, checked and reduced to what we sign.
pub struct Csr {
    pub public_key: rcgen::SubjectPublicKeyInfo,
    pub key_algorithm: KeyAlgorithm,
    pub domains: Vec<Domain>,
}

impl std::fmt::Debug for Csr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Csr")
            .field("key_algorithm", &self.key_algorithm)
            .field("domains", &self.domains)
            .finish()
    }
}

/// Parses a PEM or DER CSR, verifies its self-signature (proof the caller holds the key), and
/// takes its names from the subjectAltName request, or from the common name when there is none.
pub fn parse_csr(input: &[u8]) -> Result<Csr, CaError> {
    let bad = |m: String| CaError::Csr(m);
    let blocks = pem::blocks(input).map_err(|e| bad(e.to_string()))?;
    let [block] = blocks.as_slice() else {
        return Err(bad(format!(
            "input holds {} PEM blocks; expected one CERTIFICATE REQUEST",
            blocks.len()
        )));
    };
    if let Some(label) = &block.label
        && label != "CERTIFICATE REQUEST"
        && label != "NEW CERTIFICATE REQUEST"
    {
        return Err(bad(format!(
            "is a PEM block labelled {label:?}, not CERTIFICATE REQUEST"
        )));
    }
    let (rest, csr) = X509CertificationRequest::from_der(&block.der)
        .map_err(|e| bad(format!("does not parse: {e}")))?;
    if !rest.is_empty() {
        return Err(bad("has trailing data".into()));
    }
    // The key type first: the signature of a key we do not support cannot be checked, and
    // "does not verify" would hide what is really wrong (RSA-1024, P-521, secp256k1).
    let info = &csr.certification_request_info;
    let key_algorithm = keys::algorithm_of(&info.subject_pki).map_err(|e| bad(e.to_string()))?;
    csr.verify_signature()
        .map_err(|_| bad("signature does not verify against its own public key".into()))?;
    let public_key = rcgen::SubjectPublicKeyInfo::from_der(info.subject_pki.raw)
        .map_err(|e| bad(format!("public key: {e}")))?;

    let mut names: Vec<String> = Vec::new();
    for ext in csr.requested_extensions().into_iter().flatten() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext {
            for name in &san.general_names {
                match name {
                    GeneralName::DNSName(dns) => names.push((*dns).to_owned()),
                    GeneralName::IPAddress(bytes) => {
                        let ip = crate::x509::ip_from_bytes(bytes)
                            .ok_or_else(|| bad("has a malformed IP address".into()))?;
                        names.push(ip.to_string());
                    }
                    other => {
                        return Err(bad(format!("requests an unsupported name type: {other}")));
                    }
                }
            }
        }
    }
    if names.is_empty()
        && let Some(cn) = info
            .subject
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
    {
        names.push(cn.to_owned());
    }
    let domains = crate::model::parse_domains(&names).map_err(|e| bad(format!("names: {e}")))?;
    Ok(Csr {
        public_key,
        key_algorithm,
        domains,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, permitted: &[&str], path_length: Option<u8>) -> CaSpec {
        CaSpec {
            name: name.into(),
            parent: None,
            external: false,
            common_name: format!("{name} CA"),
            key_algorithm: KeyAlgorithm::EcP256,
            validity: Span::from_days(3650),
            path_length,
            permitted_dns: permitted.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    fn authority(spec: &CaSpec, created: &CreatedCa) -> Authority {
        Authority::load(
            &spec.name,
            created.cert_pem.as_deref().unwrap(),
            &created.chain_pem,
            &created.key,
            spec.permitted_dns.clone(),
            spec.path_length,
        )
        .unwrap()
    }

    fn domains(names: &[&str]) -> Vec<Domain> {
        crate::model::parse_domains(names).unwrap()
    }

    #[test]
    fn constraints_are_enforced_before_signing() {
        let now = OffsetDateTime::now_utc();
        let spec = spec("team", &["corp.example"], None);
        let ca = authority(&spec, &create_root(&spec, now).unwrap());
        let key = keys::generate(KeyAlgorithm::EcP256).unwrap();
        let ok = |names: &[&str]| {
            let d = domains(names);
            ca.issue(
                &LeafRequest {
                    domains: &d,
                    validity: Span::from_days(30),
                    client_auth: false,
                },
                &key,
                now,
            )
        };
        assert!(ok(&["corp.example", "*.corp.example", "a.b.corp.example"]).is_ok());
        assert!(matches!(
            ok(&["evilcorp.example"]),
            Err(CaError::NameConstraint { .. })
        ));
        assert!(matches!(
            ok(&["10.0.0.1"]),
            Err(CaError::IpNotPermitted { .. })
        ));
    }

    #[test]
    fn validity_may_not_outlive_the_ca() {
        let now = OffsetDateTime::now_utc();
        let mut spec = spec("short", &[], None);
        spec.validity = Span::from_days(10);
        let ca = authority(&spec, &create_root(&spec, now).unwrap());
        let key = keys::generate(KeyAlgorithm::EcP256).unwrap();
        let d = domains(&["a.example"]);
        let err = ca.issue(
            &LeafRequest {
                domains: &d,
                validity: Span::from_days(30),
                client_auth: false,
            },
            &key,
            now,
        );
        assert!(matches!(err, Err(CaError::OutlivesCa { .. })));
    }

    #[test]
    fn path_length_and_constraint_inheritance() {
        let now = OffsetDateTime::now_utc();
        let root_spec = spec("root", &["corp.example"], Some(1));
        let root = authority(&root_spec, &create_root(&root_spec, now).unwrap());
        let wider = spec("wider", &["example"], None);
        assert!(matches!(
            root.create_subordinate(&wider, now),
            Err(CaError::NameConstraint { .. })
        ));
        let mut child_spec = spec("child", &[], None);
        assert!(matches!(
            root.create_subordinate(&child_spec, now),
            Err(CaError::OutlivesCa { .. })
        ));
        child_spec.validity = Span::from_days(365);
        let child_created = root.create_subordinate(&child_spec, now).unwrap();
        let mut inherited = child_spec.clone();
        inherited.permitted_dns = vec!["corp.example".into()];
        inherited.path_length = Some(0);
        let child = authority(&inherited, &child_created);
        let mut grandchild = spec("grandchild", &[], None);
        grandchild.validity = Span::from_days(30);
        assert!(matches!(
            child.create_subordinate(&grandchild, now),
            Err(CaError::PathLength { .. })
        ));
    }

    #[test]
    fn unconstrained_parent_may_create_a_constrained_child() {
        let now = OffsetDateTime::now_utc();
        let root_spec = spec("root", &[], None);
        let root = authority(&root_spec, &create_root(&root_spec, now).unwrap());
        let mut child = spec("corp", &["corp.example"], None);
        child.validity = Span::from_days(30);
        assert!(root.create_subordinate(&child, now).is_ok());
    }

    fn published(ca: &str) -> Published {
        Published {
            crl: format!("http://pki.example/ca/{ca}.crl"),
            ca_issuers: format!("http://pki.example/ca/{ca}.der"),
        }
    }

    /// The CRL distribution point URIs and the caIssuers URIs of `pem`'s certificate, and
    /// whether its authorityInfoAccess is critical.
    fn pointers(pem: &str) -> (Vec<String>, Vec<String>, bool) {
        use x509_parser::extensions::DistributionPointName;
        let der = pem::certificates(pem).remove(0);
        let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&der).unwrap();
        let uri = |name: &GeneralName<'_>| match name {
            GeneralName::URI(uri) => (*uri).to_owned(),
            other => panic!("not a URI: {other:?}"),
        };
        let (mut crl, mut issuers, mut critical) = (Vec::new(), Vec::new(), false);
        for ext in cert.extensions() {
            match ext.parsed_extension() {
                ParsedExtension::CRLDistributionPoints(points) => {
                    for point in points.iter() {
                        if let Some(DistributionPointName::FullName(names)) =
                            &point.distribution_point
                        {
                            crl.extend(names.iter().map(uri));
                        }
                    }
                }
                ParsedExtension::AuthorityInfoAccess(aia) => {
                    critical = ext.critical;
                    for desc in aia.iter() {
                        assert_eq!(
                            desc.access_method,
                            x509_parser::oid_registry::OID_PKIX_ACCESS_DESCRIPTOR_CA_ISSUERS
                        );
                        issuers.push(uri(&desc.access_location));
                    }
                }
                ParsedExtension::UnsupportedExtension { .. } => {
                    panic!("an extension x509-parser cannot parse: {:?}", ext.oid)
                }
                _ => {}
            }
        }
        (crl, issuers, critical)
    }

    fn issue_leaf(ca: &Authority, now: OffsetDateTime) -> Issued {
        let key = keys::generate(KeyAlgorithm::EcP256).unwrap();
        let d = domains(&["a.example"]);
        let request = LeafRequest {
            domains: &d,
            validity: Span::from_days(30),
            client_auth: false,
        };
        ca.issue(&request, &key, now).unwrap()
    }

    #[test]
    fn a_published_ca_points_its_certificates_at_its_crl_and_certificate() {
        let now = OffsetDateTime::now_utc();
        let root_spec = spec("root", &[], None);
        let created = create_root(&root_spec, now).unwrap();
        // A root points nowhere: nothing signs it.
        assert_eq!(
            pointers(created.cert_pem.as_deref().unwrap()),
            (vec![], vec![], false)
        );
        let unpublished = authority(&root_spec, &created);
        assert_eq!(
            pointers(&issue_leaf(&unpublished, now).cert_pem),
            (vec![], vec![], false)
        );

        let root = authority(&root_spec, &created).with_published(Some(published("root")));
        let leaf = issue_leaf(&root, now);
        assert_eq!(
            pointers(&leaf.cert_pem),
            (
                vec!["http://pki.example/ca/root.crl".to_owned()],
                vec!["http://pki.example/ca/root.der".to_owned()],
                false
            )
        );
        // A subordinate's own certificate points at its parent's.
        let mut child = spec("child", &[], None);
        child.validity = Span::from_days(365);
        let sub = root.create_subordinate(&child, now).unwrap();
        assert_eq!(
            pointers(sub.cert_pem.as_deref().unwrap()),
            pointers(&leaf.cert_pem)
        );
    }

    #[test]
    fn long_urls_use_long_form_der_lengths() {
        let now = OffsetDateTime::now_utc();
        let root_spec = spec("root", &[], None);
        let created = create_root(&root_spec, now).unwrap();
        // 100 bytes: a short-form URI in a long-form SEQUENCE; 300: two length bytes each.
        for len in [100, 300] {
            let url = format!("http://pki.example/{}", "a".repeat(len));
            let root = authority(&root_spec, &created).with_published(Some(Published {
                crl: url.clone(),
                ca_issuers: url.clone(),
            }));
            let (crl, issuers, _) = pointers(&issue_leaf(&root, now).cert_pem);
            assert_eq!((crl, issuers), (vec![url.clone()], vec![url]));
        }
        assert_eq!(der(0x04, &[7; 3]), [0x04, 3, 7, 7, 7]);
        assert_eq!(&der(0x04, &[0; 127])[..2], [0x04, 0x7f]);
        assert_eq!(&der(0x04, &[0; 128])[..3], [0x04, 0x81, 0x80]);
        assert_eq!(&der(0x04, &[0; 256])[..4], [0x04, 0x82, 0x01, 0x00]);
    }

    #[test]
    fn external_ca_yields_a_csr() {
        let now = OffsetDateTime::now_utc();
        let created = create_external(&spec("ext", &["corp.example"], Some(0)), now).unwrap();
        assert!(
            created
                .csr_pem
                .unwrap()
                .contains("BEGIN CERTIFICATE REQUEST")
        );
        assert!(created.cert_pem.is_none());
    }

    #[test]
    fn csr_parsing_checks_signature_and_names() {
        let key = keys::generate(KeyAlgorithm::EcP384).unwrap();
        let params =
            CertificateParams::new(vec!["app.example".to_owned(), "10.1.2.3".to_owned()]).unwrap();
        let csr = params.serialize_request(&key).unwrap();
        let parsed = parse_csr(csr.pem().unwrap().as_bytes()).unwrap();
        assert_eq!(parsed.key_algorithm, KeyAlgorithm::EcP384);
        assert_eq!(parsed.domains.len(), 2);

        let mut der = csr.der().to_vec();
        let n = der.len();
        der[n - 5] ^= 0xff; // inside the signature
        assert!(parse_csr(&der).is_err());
        assert!(parse_csr(b"not a csr").is_err());
        let cert_pem = "-----BEGIN CERTIFICATE-----\nAQID\n-----END CERTIFICATE-----\n";
        let err = parse_csr(cert_pem.as_bytes()).unwrap_err().to_string();
        assert!(err.contains("CERTIFICATE REQUEST"), "{err}");
    }
}
