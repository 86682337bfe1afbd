//! Reading certificates: the facts certkeeper needs from one DER certificate, and chain checks.

use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use crate::model::{Domain, Serial};

/// What we keep from a parsed certificate.
#[derive(Clone, Debug)]
pub struct CertInfo {
    pub serial: Serial,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// The SubjectPublicKeyInfo DER, to compare with a private key.
    pub spki: Vec<u8>,
    pub is_ca: bool,
    pub subject: String,
    pub issuer: String,
    pub self_issued: bool,
    /// DNS and IP subject alternative names (others are ignored), in certificate order.
    pub names: Vec<Domain>,
    /// The subject's common name, if any.
    pub common_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum X509Error {
    #[error("is not a valid X.509 certificate ({0})")]
    Malformed(String),
    #[error("has trailing data after the certificate")]
    Trailing,
}

/// Parses exactly one DER certificate (no trailing bytes).
pub fn inspect(der: &[u8]) -> Result<CertInfo, X509Error> {
    let (rest, cert) =
        X509Certificate::from_der(der).map_err(|e| X509Error::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(X509Error::Trailing);
    }
    Ok(info(&cert))
}

fn info(cert: &X509Certificate<'_>) -> CertInfo {
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            let parsed = match name {
                GeneralName::DNSName(dns) => dns.parse().ok(),
                GeneralName::IPAddress(bytes) => ip_from_bytes(bytes).map(Domain::Ip),
                _ => None,
            };
            names.extend(parsed);
        }
    }
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned);
    CertInfo {
        serial: Serial::from_bytes(cert.raw_serial()),
        not_before: cert.validity().not_before.to_datetime(),
        not_after: cert.validity().not_after.to_datetime(),
        spki: cert.public_key().raw.to_vec(),
        is_ca: cert.is_ca(),
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        self_issued: cert.subject().as_raw() == cert.issuer().as_raw(),
        names,
        common_name,
    }
}

pub fn ip_from_bytes(bytes: &[u8]) -> Option<std::net::IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(std::net::IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(std::net::IpAddr::from),
        _ => None,
    }
}

/// Whether `child` names `parent` as its issuer and carries a valid signature by its key.
pub fn is_signed_by(child_der: &[u8], parent_der: &[u8]) -> bool {
    let (Ok((_, child)), Ok((_, parent))) = (
        X509Certificate::from_der(child_der),
        X509Certificate::from_der(parent_der),
    ) else {
        return false;
    };
    child.issuer().as_raw() == parent.subject().as_raw()
        && child.verify_signature(Some(parent.public_key())).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_garbage_and_trailing_bytes() {
        assert!(matches!(
            inspect(&[0x30, 0x03, 0x02, 0x01, 0x00]),
            Err(X509Error::Malformed(_))
        ));
        let pair = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["a.example".into()])
            .unwrap()
            .self_signed(&pair)
            .unwrap();
        let mut der = cert.der().to_vec();
        let info = inspect(&der).unwrap();
        assert_eq!(info.names, vec![Domain::Dns("a.example".into())]);
        assert!(info.self_issued);
        assert!(is_signed_by(&der, &der));
        der.push(0);
        assert_eq!(inspect(&der).err(), Some(X509Error::Trailing));
    }
}
