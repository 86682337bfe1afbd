//! What the inventory is asked to do, as checked values (parse, don't validate).
//!
//! Every interface (the `/v1` API today, the ACM-compatible API next) turns its own wire types
//! into these, using the constructors here, which refuse bad input with the field it came in.
//! The inventory then works only with values that cannot be wrong: tags within limits, names
//! that are names, a maintenance window that parses, domains that are domains. It never sees a
//! wire type, so it imports nothing from `api/`.

use std::collections::BTreeMap;

use zeroize::Zeroizing;

use super::InventoryError;
use crate::export::{self, ExportFormat};
use crate::model::{
    DaysBeforeExpiry, Domain, KeyAlgorithm, ValidationMethod, WindowSpec, check_common_name,
    check_name, check_tag, parse_domains,
};
use crate::span::{Bounds, Span, bounds};

type Result<T> = std::result::Result<T, InventoryError>;

/// The most tags one certificate carries.
pub const MAX_TAGS: usize = 50;

/// A certificate's tags, each key and value checked, at most [`MAX_TAGS`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tags(BTreeMap<String, String>);

impl Tags {
    pub fn new(tags: BTreeMap<String, String>) -> Result<Self> {
        if tags.len() > MAX_TAGS {
            return Err(InventoryError::invalid(
                "tags",
                format!("at most {MAX_TAGS} tags per certificate"),
            ));
        }
        for (key, value) in &tags {
            check_tag(key, value).map_err(|e| InventoryError::invalid("tags", e))?;
        }
        Ok(Self(tags))
    }

    pub fn into_inner(self) -> BTreeMap<String, String> {
        self.0
    }
}

/// A name given to a certificate or CA, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Name(String);

impl Name {
    pub fn certificate(name: String) -> Result<Self> {
        check_name("certificate", &name).map_err(|e| InventoryError::invalid("name", e))?;
        Ok(Self(name))
    }

    pub fn ca(name: String) -> Result<Self> {
        check_name("CA", &name).map_err(|e| InventoryError::invalid("name", e))?;
        Ok(Self(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// The domains of a certificate: at least one, none twice.
pub fn domains<S: AsRef<str>>(inputs: &[S]) -> Result<Vec<Domain>> {
    parse_domains(inputs).map_err(|e| InventoryError::invalid("domains", e))
}

/// A duration field inside its [`Bounds`] (see [`crate::span::bounds`]), or an error naming it.
pub fn span_within(field: &str, span: Option<Span>, bounds: Bounds) -> Result<Option<Span>> {
    span.map(|s| bounds.check(s))
        .transpose()
        .map_err(|e| InventoryError::invalid(field, format!("{field}: {e}")))
}

/// A `days_before_expiry`, of a request or the account: 1 to 365.
pub fn days_before_expiry(days: u32) -> Result<DaysBeforeExpiry> {
    DaysBeforeExpiry::new(days).map_err(|e| {
        InventoryError::invalid("days_before_expiry", format!("days_before_expiry: {e}"))
    })
}

/// A CA's common name, when one is given.
pub fn common_name(name: Option<String>) -> Result<Option<String>> {
    if let Some(name) = &name {
        check_common_name(name).map_err(|e| InventoryError::invalid("common_name", e))?;
    }
    Ok(name)
}

/// A per-certificate maintenance window from its three fields: cron expression and duration
/// both or neither (a time zone alone means nothing), 1m to 31d long, and parsing.
pub fn window(
    schedule: Option<String>,
    duration: Option<Span>,
    time_zone: Option<String>,
) -> Result<Option<WindowSpec>> {
    let spec = match (schedule, duration) {
        (None, None) if time_zone.is_none() => return Ok(None),
        (Some(schedule), Some(duration)) => WindowSpec {
            schedule,
            duration,
            time_zone,
        },
        _ => {
            return Err(InventoryError::invalid(
                "window",
                "a maintenance window needs both window and window_duration",
            ));
        }
    };
    span_within(
        "window_duration",
        Some(spec.duration),
        bounds::WINDOW_DURATION,
    )?;
    spec.window()
        .map_err(|e| InventoryError::invalid("window", e))?;
    Ok(Some(spec))
}

/// Where a requested certificate comes from.
#[derive(Clone, Debug)]
pub enum Source {
    /// One of certkeeper's CAs (the configured default when `ca` is `None`).
    Private {
        ca: Option<String>,
        validity: Option<Span>,
        client_auth: bool,
    },
    /// An ACME issuer, after validation.
    Public {
        issuer: String,
        validation: ValidationMethod,
    },
}

/// `request`: a new certificate with a key certkeeper generates and keeps.
#[derive(Clone, Debug)]
pub struct CertificateRequest {
    pub domains: Vec<Domain>,
    pub name: Option<Name>,
    pub source: Source,
    pub key_algorithm: Option<KeyAlgorithm>,
    pub tags: Tags,
    pub renew_before: Option<Span>,
    pub days_before_expiry: Option<DaysBeforeExpiry>,
    pub window: Option<WindowSpec>,
}

/// `sign`: a certificate for a caller's CSR (the key stays with the caller).
#[derive(Clone, Debug)]
pub struct SignRequest {
    /// PEM or DER, as the caller gave it.
    pub csr: Vec<u8>,
    pub ca: Option<String>,
    pub validity: Option<Span>,
    pub client_auth: bool,
    pub name: Option<Name>,
    pub tags: Tags,
    pub days_before_expiry: Option<DaysBeforeExpiry>,
}

/// `import`: a certificate and its key from elsewhere.
pub struct ImportRequest {
    pub certificate: Vec<u8>,
    pub private_key: Zeroizing<Vec<u8>>,
    pub chain: Option<Vec<u8>>,
    pub passphrase: Option<Zeroizing<String>>,
    pub allow_expired: bool,
    /// Re-import: a new version of this certificate (id or name), same id.
    pub reimport: Option<String>,
    pub name: Option<Name>,
    pub tags: Tags,
    pub days_before_expiry: Option<DaysBeforeExpiry>,
}

/// An export passphrase, of an acceptable length, wiped when dropped.
pub struct Passphrase(Zeroizing<String>);

impl Passphrase {
    pub fn new(passphrase: Zeroizing<String>) -> Result<Self> {
        export::check_passphrase(&passphrase)
            .map_err(|e| InventoryError::invalid("passphrase", e))?;
        Ok(Self(passphrase))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `export`: the certificate with its key, encrypted under the passphrase.
pub struct ExportRequest {
    pub passphrase: Passphrase,
    pub format: ExportFormat,
    /// An earlier version; the current one when `None`.
    pub version: Option<u32>,
}

/// `tag` / `untag`.
#[derive(Clone, Debug, Default)]
pub struct TagChange {
    pub set: Tags,
    pub remove: Vec<String>,
}

/// `ca create`: a root, a subordinate of one of ours (`parent`), or one signed outside
/// (`external`), never both.
#[derive(Clone, Debug)]
pub struct CaRequest {
    pub name: Name,
    pub parent: Option<String>,
    pub external: bool,
    pub common_name: Option<String>,
    pub key_algorithm: Option<KeyAlgorithm>,
    pub validity: Option<Span>,
    pub path_length: Option<u8>,
    pub permitted_dns: Vec<String>,
}

impl CaRequest {
    /// Checks what the fields allow together.
    pub fn check(self) -> Result<Self> {
        if self.external && self.parent.is_some() {
            return Err(InventoryError::invalid(
                "parent",
                "a CA is either --external or has a --parent, not both",
            ));
        }
        Ok(self)
    }
}

/// `ca install`: the certificate an outside root signed for an external CA.
#[derive(Clone, Debug)]
pub struct InstallCaRequest {
    pub certificate: Vec<u8>,
    pub chain: Option<Vec<u8>>,
}
