//! Lifecycle events in ACM's EventBridge shape (DESIGN.md §5): their types, one builder per
//! event, and their delivery.
//!
//! Every event certkeeper emits is built here, by the builder named after it, so the shape of
//! each body is written once; nothing else can make an [`Event`] ([`Event::new`] is private to
//! this module, and the envelope's fields can only be read elsewhere). The store writes an
//! event in the same transaction as the change it describes (the outbox), so an event exists
//! exactly when its change does; [`sinks`] then delivers it to every configured sink, at least
//! once, through what [`outbox::Outbox`] says the store must offer.
//!
//! [`DetailType`] is the closed set of event types: a sink's filter parses into it, so a
//! filter cannot name an event that does not exist.

pub mod outbox;
pub mod sinks;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::json;
use time::OffsetDateTime;

use crate::model::{
    Certificate, CertificateId, Domain, Origin, RevocationReason, Serial, UnknownValue,
    ValidationMethod, ValidationRecord, rfc3339, spelled,
};
use crate::policy::days_to_expiry;

/// What an event is about (ACM's `detail-type`, plus ours).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DetailType {
    Available,
    ApproachingExpiration,
    Expired,
    RenewalActionRequired,
    Revoked,
    ValidationPending,
    /// Reserved for deployment (DESIGN.md §7): a sink may already filter on it.
    Deployed,
    /// Reserved for deployment (DESIGN.md §7).
    DeploymentFailed,
}

spelled!(DetailType, "detail type", {
    Available => "Certificate Available",
    ApproachingExpiration => "Certificate Approaching Expiration",
    Expired => "Certificate Expired",
    RenewalActionRequired => "Certificate Renewal Action Required",
    Revoked => "Certificate Revoked",
    ValidationPending => "Certificate Validation Pending",
    Deployed => "Certificate Deployed",
    DeploymentFailed => "Certificate Deployment Failed",
});

impl Serialize for DetailType {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for DetailType {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A lifecycle event, shaped like ACM's EventBridge events.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub version: String,
    pub id: String,
    #[serde(rename = "detail-type")]
    pub detail_type: DetailType,
    pub source: String,
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    pub resources: Vec<String>,
    pub detail: serde_json::Value,
}

impl Event {
    fn new(
        detail_type: DetailType,
        certificate: &CertificateId,
        now: OffsetDateTime,
        detail: serde_json::Value,
    ) -> Self {
        Self {
            version: "0".to_owned(),
            id: uuid::Uuid::now_v7().to_string(),
            detail_type,
            source: "certkeeper".to_owned(),
            time: now,
            resources: vec![certificate.to_string()],
            detail,
        }
    }
}

/// Why a certificate became available (ACM's `Action`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Issuance,
    Renewal,
    Import,
    Reimport,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Self::Issuance => "ISSUANCE",
            Self::Renewal => "RENEWAL",
            Self::Import => "IMPORT",
            Self::Reimport => "REIMPORT",
        }
    }
}

/// `Certificate Available`. Built from the certificate as it will be after the change.
pub fn available(cert: &Certificate, action: Action, now: OffsetDateTime) -> Event {
    let detail = json!({
        "Action": action.as_str(),
        "CertificateType": certificate_type(cert.origin),
        "CommonName": cert.common_name(),
        "Domains": cert.domains,
        "Serial": cert.serial,
        "Version": cert.current_version,
        "CertificateCreatedDate": rfc3339(cert.created_at),
        "CertificateExpirationDate": cert.not_after.map(rfc3339),
        "DaysToExpiry": cert.not_after.map(|t| days_to_expiry(now, t)),
    });
    Event::new(DetailType::Available, &cert.id, now, detail)
}

/// `Certificate Approaching Expiration`, from the daily check (which reads only these fields,
/// not whole certificates).
pub fn approaching_expiration(
    id: &CertificateId,
    name: &str,
    common_name: &str,
    serial: &Serial,
    origin: Origin,
    not_after: OffsetDateTime,
    now: OffsetDateTime,
) -> Event {
    let detail = json!({
        "CommonName": common_name,
        "Serial": serial,
        "DaysToExpiry": days_to_expiry(now, not_after),
        "CertificateExpirationDate": rfc3339(not_after),
        "Origin": origin,
        "Name": name,
    });
    Event::new(DetailType::ApproachingExpiration, id, now, detail)
}

/// `Certificate Expired`: an issued certificate passed its not-after unrenewed.
pub fn expired(cert: &Certificate, now: OffsetDateTime) -> Event {
    let detail = json!({
        "CommonName": cert.common_name(),
        "Serial": cert.serial,
        "CertificateExpirationDate": cert.not_after.map(rfc3339),
        "Origin": cert.origin,
    });
    Event::new(DetailType::Expired, &cert.id, now, detail)
}

/// `Certificate Renewal Action Required` after a failed renewal (the first, or one at a
/// 45/30/15/7/3/1-day milestone; the planner's `after_failure` decides when).
pub fn renewal_failed(
    cert: &Certificate,
    days_left: i64,
    reason: &str,
    failures: u32,
    now: OffsetDateTime,
) -> Event {
    let detail = json!({
        "CommonName": cert.common_name(),
        "Serial": cert.serial,
        "DaysToExpiry": days_left,
        "RenewalStatusReason": reason,
        "Failures": failures,
    });
    Event::new(DetailType::RenewalActionRequired, &cert.id, now, detail)
}

/// `Certificate Renewal Action Required` for a certificate that waited for validation past
/// its deadline (it becomes `validation-timed-out`).
pub fn validation_timed_out(cert: &Certificate, reason: &str, now: OffsetDateTime) -> Event {
    let detail = json!({
        "CommonName": cert.common_name(),
        "RenewalStatusReason": format!("validation timed out: {reason}"),
        "ValidationMethod": cert.validation_method,
    });
    Event::new(DetailType::RenewalActionRequired, &cert.id, now, detail)
}

/// `Certificate Validation Pending`: what the user must create before the certificate can be
/// issued, and until when.
pub fn validation_pending(
    id: &CertificateId,
    domains: &[Domain],
    method: ValidationMethod,
    records: &[ValidationRecord],
    deadline: OffsetDateTime,
    now: OffsetDateTime,
) -> Event {
    let detail = json!({
        "CommonName": domains.first().map(ToString::to_string),
        "ValidationMethod": method,
        "Records": records,
        "Deadline": rfc3339(deadline),
    });
    Event::new(DetailType::ValidationPending, id, now, detail)
}

/// `Certificate Revoked`.
pub fn revoked(cert: &Certificate, reason: RevocationReason, now: OffsetDateTime) -> Event {
    let detail = json!({
        "CertificateType": certificate_type(cert.origin),
        "CommonName": cert.common_name(),
        "Serial": cert.serial,
        "RevocationReason": reason.as_str(),
        "RevokedAt": rfc3339(now),
    });
    Event::new(DetailType::Revoked, &cert.id, now, detail)
}

fn certificate_type(origin: Origin) -> &'static str {
    match origin {
        Origin::Public => "PUBLIC",
        Origin::Private => "PRIVATE",
        Origin::Imported => "IMPORTED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detail_types_are_spelled_as_acm_spells_them_and_nothing_else_parses() {
        for t in DetailType::ALL {
            assert_eq!(t.as_str().parse::<DetailType>(), Ok(*t));
            let json = serde_json::to_string(t).unwrap();
            assert_eq!(serde_json::from_str::<DetailType>(&json).unwrap(), *t);
        }
        assert_eq!(
            DetailType::RenewalActionRequired.as_str(),
            "Certificate Renewal Action Required"
        );
        let err = "Certificate Exploded".parse::<DetailType>().unwrap_err();
        assert!(err.to_string().contains("unknown detail type"), "{err}");
        assert!(serde_json::from_str::<DetailType>("\"certificate available\"").is_err());
    }
}
