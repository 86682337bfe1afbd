//! What inventory operations answer besides certificates: shapes the API sends as they are.

use serde::{Deserialize, Serialize};

use crate::model::{CaInfo, Certificate};
use crate::span::Span;

/// A certificate's PEM: the leaf and its issuers.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CertificatePem {
    pub id: String,
    pub version: u32,
    pub certificate: String,
    pub chain: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Signed {
    pub certificate: Certificate,
    pub certificate_pem: String,
    pub chain_pem: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CaDetails {
    #[serde(flatten)]
    pub ca: CaInfo,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_pem: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub chain_pem: String,
    /// External CAs waiting for `ca install`: the CSR to have signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csr_pem: Option<String>,
}

/// A configured ACME issuer and its account at the CA (`None` before first use).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AcmeIssuerView {
    pub issuer: String,
    pub account: Option<crate::store::AcmeAccount>,
}

/// `certkeeper explain`: what happens next to a certificate, when, and why.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Explanation {
    pub id: String,
    pub name: String,
    pub status: String,
    /// `renew`, `retry`, `check-renewal-info` (ask the CA for its renewal window again), or
    /// `none`.
    pub next_action: String,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub next_action_at: Option<time::OffsetDateTime>,
    /// The rule that decided `next_action_at` (renew-before, lifetime clamp, window, ...).
    pub rule: String,
    /// One line per fact that went into the decision.
    pub reasons: Vec<String>,
    /// Expiry events start this long before expiry (`None` before the first version).
    pub expiry_threshold: Option<Span>,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub expiry_events_from: Option<time::OffsetDateTime>,
    /// The next daily check that would send an "Approaching Expiration" event.
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub next_expiry_event_at: Option<time::OffsetDateTime>,
    /// The CA's suggested renewal window (ACME renewal information), when it offers one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal_info: Option<crate::model::RenewalInfo>,
}
