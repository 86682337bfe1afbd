//! Request and response bodies of the HTTP API, shared by the daemon and the CLI.
//!
//! JSON keys are snake_case; enum values kebab-case (the model's spellings). Request bodies
//! reject unknown fields so a typo in a script fails loudly instead of being ignored.
//!
//! Fields that carry a file (certificates, keys, CSRs) take either PEM text or the base64 of DER
//! bytes; see [`file_bytes`].

use std::collections::BTreeMap;

use base64::Engine;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::events::Event;
use crate::export::ExportFormat;
use crate::model::{CaInfo, Certificate, KeyAlgorithm, RevocationReason, ValidationMethod};
use crate::span::Span;

pub use crate::inventory::views::{AcmeIssuerView, CaDetails, CertificatePem, Explanation, Signed};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestCertificate {
    pub domains: Vec<String>,
    #[serde(default)]
    pub name: Option<String>,
    /// The issuing CA; the configured default when absent.
    #[serde(default)]
    pub ca: Option<String>,
    #[serde(default)]
    pub key_algorithm: Option<KeyAlgorithm>,
    #[serde(default)]
    pub validity: Option<Span>,
    #[serde(default)]
    pub client_auth: bool,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Renew this long before expiry (clamped for short lifetimes); the configured default
    /// when absent.
    #[serde(default)]
    pub renew_before: Option<Span>,
    /// Expiry events start this many days before expiry; the account setting when absent.
    #[serde(default)]
    pub days_before_expiry: Option<u32>,
    /// An ACME issuer from the config: the certificate is public, issued by that CA after
    /// validation. Absent: a private certificate from `ca` (or the default CA).
    #[serde(default)]
    pub issuer: Option<String>,
    /// Public certificates: `dns` (CNAME delegation) or `http` (HTTP-01).
    #[serde(default)]
    pub validation: Option<ValidationMethod>,
    /// This certificate's maintenance window (cron); `renewal.window` when absent.
    #[serde(default)]
    pub window: Option<String>,
    #[serde(default)]
    pub window_duration: Option<Span>,
    #[serde(default)]
    pub window_time_zone: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignRequest {
    pub csr: String,
    #[serde(default)]
    pub ca: Option<String>,
    #[serde(default)]
    pub validity: Option<Span>,
    #[serde(default)]
    pub client_auth: bool,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    #[serde(default)]
    pub days_before_expiry: Option<u32>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportCertificate {
    pub certificate: String,
    /// Zeroized when dropped, as every copy of a key or passphrase in the daemon is (M1).
    pub private_key: Zeroizing<String>,
    #[serde(default)]
    pub chain: Option<String>,
    #[serde(default)]
    pub passphrase: Option<Zeroizing<String>>,
    #[serde(default)]
    pub allow_expired: bool,
    /// Re-import: add the certificate as a new version of this one (same id).
    #[serde(default)]
    pub certificate_id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    #[serde(default)]
    pub days_before_expiry: Option<u32>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportRequest {
    pub passphrase: Zeroizing<String>,
    #[serde(default)]
    pub format: ExportFormat,
    /// An earlier version; the current one when absent.
    #[serde(default)]
    pub version: Option<u32>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    #[serde(default)]
    pub reason: Option<RevocationReason>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TagsRequest {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateCa {
    pub name: String,
    #[serde(default)]
    pub parent: Option<String>,
    #[serde(default)]
    pub external: bool,
    #[serde(default)]
    pub common_name: Option<String>,
    #[serde(default)]
    pub key_algorithm: Option<KeyAlgorithm>,
    #[serde(default)]
    pub validity: Option<Span>,
    #[serde(default)]
    pub path_length: Option<u8>,
    #[serde(default)]
    pub permitted_dns: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstallCa {
    pub certificate: String,
    #[serde(default)]
    pub chain: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CertificateList {
    pub certificates: Vec<Certificate>,
    /// Pass as `after` to get the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_page: Option<String>,
}

/// `POST /v1/sign/batch`: several CSRs, signed and recorded all or none.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignBatch {
    pub requests: Vec<SignRequest>,
}

/// The answer to a [`SignBatch`], in the order of its requests.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SignedBatch {
    pub signed: Vec<Signed>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CaList {
    pub cas: Vec<CaInfo>,
}

/// `GET /v1/audit`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AuditList {
    /// Oldest first; pass the last `seq` as `after` to continue.
    pub records: Vec<crate::audit::Entry>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EventList {
    /// Each event with its cursor; pass the last cursor as `after` to continue.
    pub events: Vec<EventEntry>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EventEntry {
    pub cursor: i64,
    #[serde(flatten)]
    pub event: Event,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
    pub version: String,
    pub certificates: u64,
    pub cas: u64,
    /// Events waiting for delivery, per sink.
    pub outbox: BTreeMap<String, i64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RotateResult {
    pub current_key_id: String,
    pub rewrapped: u64,
    /// Sealed records per master key id after rotation.
    pub key_usage: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}

/// Turns a file field into bytes: PEM text as is, otherwise base64-decoded DER. Text that is
/// neither is passed through unchanged, so the parser reports "neither PEM nor DER".
pub fn file_bytes(field: &str) -> Vec<u8> {
    if field.contains("-----BEGIN ") {
        return field.as_bytes().to_vec();
    }
    // Sized once and zeroized: for a private key, this is the key in base64.
    let mut compact = Zeroizing::new(String::with_capacity(field.len()));
    compact.extend(field.chars().filter(|c| !c.is_ascii_whitespace()));
    base64::engine::general_purpose::STANDARD
        .decode(compact.as_bytes())
        .unwrap_or_else(|_| field.as_bytes().to_vec())
}

/// The inverse of [`file_bytes`], for the CLI: UTF-8 PEM stays text, anything else is base64.
pub fn file_field(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) if text.contains("-----BEGIN ") => text.to_owned(),
        _ => base64::engine::general_purpose::STANDARD.encode(bytes),
    }
}

/// ACM's account configuration.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Account {
    /// Expiry events start this many days before expiry (1-365).
    pub days_before_expiry: u32,
}
