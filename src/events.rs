//! Lifecycle events in ACM's EventBridge shape (DESIGN.md §5).
//!
//! Events are built here and written by the store in the same transaction as the change they
//! describe (the outbox), so an event exists exactly when its change does.

use serde_json::json;
use time::OffsetDateTime;

use crate::model::{Certificate, Event, Origin, rfc3339};

pub const AVAILABLE: &str = "Certificate Available";
pub const APPROACHING_EXPIRATION: &str = "Certificate Approaching Expiration";
pub const EXPIRED: &str = "Certificate Expired";
pub const ACTION_REQUIRED: &str = "Certificate Renewal Action Required";
pub const REVOKED: &str = "Certificate Revoked";
pub const VALIDATION_PENDING: &str = "Certificate Validation Pending";

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
            Action::Issuance => "ISSUANCE",
            Action::Renewal => "RENEWAL",
            Action::Import => "IMPORT",
            Action::Reimport => "REIMPORT",
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
        "DaysToExpiry": cert.not_after.map(|t| crate::policy::days_to_expiry(now, t)),
    });
    Event::new(AVAILABLE, &cert.id, now, detail)
}

/// `Certificate Revoked`.
pub fn revoked(cert: &Certificate, reason: &str, now: OffsetDateTime) -> Event {
    let detail = json!({
        "CertificateType": certificate_type(cert.origin),
        "CommonName": cert.common_name(),
        "Serial": cert.serial,
        "RevocationReason": reason,
        "RevokedAt": rfc3339(now),
    });
    Event::new(REVOKED, &cert.id, now, detail)
}

fn certificate_type(origin: Origin) -> &'static str {
    match origin {
        Origin::Public => "PUBLIC",
        Origin::Private => "PRIVATE",
        Origin::Imported => "IMPORTED",
    }
}
