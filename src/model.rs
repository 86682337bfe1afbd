//! Domain types shared by the daemon, the API and the CLI. No I/O lives here.
//!
//! The words follow DESIGN.md §2: a *certificate* is the managed object with a stable id, and
//! each issuance (or import) adds a *version*. Enum spellings on the wire are kebab-case, exactly
//! as ACM and DESIGN.md spell them, because users' scripts will match on them.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Where a certificate's versions come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    /// Issued by an ACME CA.
    Public,
    /// Issued by one of certkeeper's own CAs.
    Private,
    /// Brought in from elsewhere: watched, never renewed by us.
    Imported,
}

/// ACM's certificate status set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    PendingValidation,
    Issued,
    Inactive,
    Expired,
    ValidationTimedOut,
    Revoked,
    Failed,
}

/// The key algorithms certkeeper generates and accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyAlgorithm {
    EcP256,
    EcP384,
    // kebab-case puts no hyphen before digits: spell these out to match `spelled!` below.
    #[serde(rename = "rsa-2048")]
    Rsa2048,
    #[serde(rename = "rsa-3072")]
    Rsa3072,
    #[serde(rename = "rsa-4096")]
    Rsa4096,
    Ed25519,
}

/// Implements `as_str`, `Display` and `FromStr` for a fieldless enum from one table of
/// spellings, so the string forms used by SQL, the CLI and serde cannot drift apart.
macro_rules! spelled {
    ($ty:ty, $what:literal, { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $ty {
            pub const ALL: &'static [$ty] = &[$(<$ty>::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $(<$ty>::$variant => $text),+ }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $ty {
            type Err = UnknownValue;

            fn from_str(s: &str) -> Result<Self, UnknownValue> {
                match s {
                    $($text => Ok(<$ty>::$variant),)+
                    _ => Err(UnknownValue {
                        what: $what,
                        value: s.to_owned(),
                        expected: &[$($text),+],
                    }),
                }
            }
        }
    };
}

pub(crate) use spelled;

spelled!(Origin, "origin", { Public => "public", Private => "private", Imported => "imported" });
spelled!(Status, "status", {
    PendingValidation => "pending-validation",
    Issued => "issued",
    Inactive => "inactive",
    Expired => "expired",
    ValidationTimedOut => "validation-timed-out",
    Revoked => "revoked",
    Failed => "failed",
});
spelled!(KeyAlgorithm, "key algorithm", {
    EcP256 => "ec-p256",
    EcP384 => "ec-p384",
    Rsa2048 => "rsa-2048",
    Rsa3072 => "rsa-3072",
    Rsa4096 => "rsa-4096",
    Ed25519 => "ed25519",
});

/// A string that is not one of an enum's spellings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {value:?} (expected one of: {})", expected.join(", "))]
pub struct UnknownValue {
    pub what: &'static str,
    pub value: String,
    pub expected: &'static [&'static str],
}

/// How control of a certificate's domains is proven (DESIGN.md §6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ValidationMethod {
    /// A DNS record: for ACME, DNS-01 through a CNAME into the validation zone.
    Dns,
    /// HTTP-01 (ACME only).
    Http,
    /// Approval mail to the domain's administrative addresses (private CAs).
    Email,
    /// No proof asked (a private CA's policy).
    None,
}

spelled!(ValidationMethod, "validation method", {
    Dns => "dns",
    Http => "http",
    Email => "email",
    None => "none",
});

/// The reasons RFC 5280 §5.3.1 allows on a CRL entry (the ones a user would pick).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RevocationReason {
    Unspecified,
    KeyCompromise,
    CaCompromise,
    AffiliationChanged,
    Superseded,
    CessationOfOperation,
    PrivilegeWithdrawn,
}

spelled!(RevocationReason, "revocation reason", {
    Unspecified => "unspecified",
    KeyCompromise => "key-compromise",
    CaCompromise => "ca-compromise",
    AffiliationChanged => "affiliation-changed",
    Superseded => "superseded",
    CessationOfOperation => "cessation-of-operation",
    PrivilegeWithdrawn => "privilege-withdrawn",
});

/// One name a certificate covers: a DNS name (possibly a wildcard) or an IP address.
///
/// Parsing normalises DNS names to lower case without a trailing dot, so that two spellings of
/// one name compare equal everywhere (constraints, duplicates, lookups).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Domain {
    Dns(String),
    Ip(IpAddr),
}

impl Domain {
    pub fn is_wildcard(&self) -> bool {
        matches!(self, Self::Dns(name) if name.starts_with("*."))
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Dns(name) => f.write_str(name),
            Self::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// Why a string is not a usable certificate name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid domain {input:?}: {reason}")]
pub struct DomainError {
    pub input: String,
    pub reason: &'static str,
}

impl FromStr for Domain {
    type Err = DomainError;

    /// A name as a user gives it: every rule below, including the one against names that read
    /// as IP addresses.
    fn from_str(input: &str) -> Result<Self, DomainError> {
        Self::parse(input, Strictness::Input)
    }
}

/// Which rules a name is held to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Strictness {
    /// New input: every rule.
    Input,
    /// Read back from the store or an event: the rules a name was accepted under before the
    /// all-digits rule (L2) came in, so a certificate stored earlier stays readable and
    /// monitored instead of turning into an undecodable row.
    Stored,
}

impl Domain {
    fn parse(input: &str, strictness: Strictness) -> Result<Self, DomainError> {
        let fail = |reason| DomainError {
            input: input.to_owned(),
            reason,
        };
        if let Ok(ip) = input.parse::<IpAddr>() {
            return Ok(Self::Ip(ip));
        }
        let name = input
            .strip_suffix('.')
            .unwrap_or(input)
            .to_ascii_lowercase();
        if name.is_empty() {
            return Err(fail("empty name"));
        }
        if !name.is_ascii() {
            return Err(fail("non-ASCII name: give the IDNA (xn--) form"));
        }
        if name.len() > 253 {
            return Err(fail("longer than 253 characters"));
        }
        let labels: Vec<&str> = name.split('.').collect();
        if labels.len() < 2 && labels[0] != "localhost" {
            return Err(fail("a single label is not a fully qualified name"));
        }
        for (i, label) in labels.iter().enumerate() {
            if *label == "*" {
                if i != 0 {
                    return Err(fail("a wildcard is allowed only as the leftmost label"));
                }
                if labels.len() < 3 {
                    return Err(fail("a wildcard needs at least two labels after it"));
                }
                continue;
            }
            check_label(label).map_err(fail)?;
        }
        // "1.2.3.4." or "010.1.1.1" are not IP addresses to `IpAddr` but are to many resolvers
        // and browsers (inet_aton reads octal and short forms): no TLD is all digits, so such a
        // name can only be an address in disguise (RFC 1123 §2.1, RFC 3696 §2).
        if strictness == Strictness::Input
            && labels
                .last()
                .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(fail(
                "the last label is all digits, which reads as an IP address: give the address itself",
            ));
        }
        Ok(Self::Dns(name))
    }
}

fn check_label(label: &str) -> Result<(), &'static str> {
    if label.is_empty() {
        return Err("empty label");
    }
    if label.len() > 63 {
        return Err("a label is longer than 63 characters");
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err("a label starts or ends with '-'");
    }
    if label.contains('*') {
        return Err("'*' is allowed only as a whole leftmost label");
    }
    if !label
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err("only letters, digits, '-' and '_' are allowed");
    }
    Ok(())
}

impl Serialize for Domain {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Domain {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text, Strictness::Stored).map_err(serde::de::Error::custom)
    }
}

/// The most names one certificate we issue may cover. Each name rides in every event for the
/// certificate (10,000 names made 200 kB events); public CAs stop at 100 too.
pub const MAX_DOMAINS: usize = 100;

/// Parses a list of names, rejecting duplicates: the first name becomes the common name, and a
/// duplicate is almost always a typo the user wants to hear about. At most [`MAX_DOMAINS`].
pub fn parse_domains<S: AsRef<str>>(inputs: &[S]) -> Result<Vec<Domain>, DomainError> {
    if inputs.len() > MAX_DOMAINS {
        return Err(DomainError {
            input: format!("{} names", inputs.len()),
            reason: "a certificate covers at most 100 names",
        });
    }
    let mut domains: Vec<Domain> = Vec::with_capacity(inputs.len());
    for input in inputs {
        let domain: Domain = input.as_ref().parse()?;
        if domains.contains(&domain) {
            return Err(DomainError {
                input: input.as_ref().to_owned(),
                reason: "listed twice",
            });
        }
        domains.push(domain);
    }
    if domains.is_empty() {
        return Err(DomainError {
            input: String::new(),
            reason: "at least one domain is required",
        });
    }
    Ok(domains)
}

/// A certificate serial number, kept as lower-case hex without separators (what `openssl x509
/// -serial` prints, lower-cased), so that it can be compared and indexed as text.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Serial(String);

impl Serial {
    pub fn from_bytes(bytes: &[u8]) -> Self {
        // Strip the sign-padding zero byte DER adds to positive integers with the top bit set.
        let trimmed = match bytes {
            [0, rest @ ..] if !rest.is_empty() => rest,
            _ => bytes,
        };
        Self(trimmed.iter().map(|b| format!("{b:02x}")).collect())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        (0..self.0.len())
            .step_by(2)
            .filter_map(|i| u8::from_str_radix(self.0.get(i..i + 2)?, 16).ok())
            .collect()
    }

    /// Accepts the hex form with optional `:` separators (as `openssl x509 -text` prints it).
    pub fn parse(text: &str) -> Option<Self> {
        let hex: String = text
            .chars()
            .filter(|c| *c != ':')
            .collect::<String>()
            .to_ascii_lowercase();
        let valid = !hex.is_empty()
            && hex.len().is_multiple_of(2)
            && hex.bytes().all(|b| b.is_ascii_hexdigit());
        valid.then_some(Self(hex))
    }
}

impl fmt::Display for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The stable identifier of a certificate: `ck-` followed by a UUIDv7, so ids sort by creation
/// time (which makes them a natural pagination cursor).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CertificateId(String);

impl CertificateId {
    pub const PREFIX: &'static str = "ck-";

    pub fn generate() -> Self {
        Self(format!("{}{}", Self::PREFIX, uuid::Uuid::now_v7()))
    }

    /// Accepts only well-formed ids; anything else is treated as a certificate name by callers.
    pub fn parse(text: &str) -> Option<Self> {
        let uuid = text.strip_prefix(Self::PREFIX)?;
        uuid::Uuid::parse_str(uuid).ok()?;
        Some(Self(text.to_ascii_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CertificateId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Names used for certificates, CAs and tags: short, printable, no surprises in a shell.
pub fn check_name(what: &'static str, name: &str) -> Result<(), NameError> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '*');
    if name.is_empty() || name.len() > 128 || !name.chars().all(ok_char) {
        return Err(NameError {
            what,
            name: name.to_owned(),
        });
    }
    // "." and ".." read as paths wherever a name ends up in one (a script's `--out-dir`).
    if name.starts_with(CertificateId::PREFIX) || name.bytes().all(|b| b == b'.') {
        return Err(NameError {
            what,
            name: name.to_owned(),
        });
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid {what} name {name:?}: use 1-128 characters from letters, digits, '-', '_', '.', '*', not only dots, not starting with \"ck-\""
)]
pub struct NameError {
    pub what: &'static str,
    pub name: String,
}

/// The longest common name: X.520's upper bound (RFC 5280 appendix A, `ub-common-name`).
pub const MAX_COMMON_NAME: usize = 64;

/// A CA's common name: free text, but one line of at most [`MAX_COMMON_NAME`] characters with
/// no control characters, since it is printed in terminals and logs and written into every
/// certificate the CA signs.
pub fn check_common_name(name: &str) -> Result<(), CommonNameError> {
    let reason = if name.trim().is_empty() {
        "it is empty"
    } else if name.chars().count() > MAX_COMMON_NAME {
        "it is longer than 64 characters"
    } else if name.chars().any(|c| c.is_control()) {
        "it holds a control character (NUL, newline, ESC, ...)"
    } else {
        return Ok(());
    };
    Err(CommonNameError {
        name: name.to_owned(),
        reason,
    })
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid common name {name:?}: {reason}")]
pub struct CommonNameError {
    pub name: String,
    pub reason: &'static str,
}

/// How many days before expiry "Approaching Expiration" events start (ACM's
/// `DaysBeforeExpiry`): 1 to 365, as ACM allows. One type for the account setting, the config
/// and every request, so no path stores a number the expiry arithmetic cannot take.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DaysBeforeExpiry(u32);

/// A `days_before_expiry` outside 1..=365.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0} is outside 1..=365 days")]
pub struct DaysOutOfRange(pub u32);

impl DaysBeforeExpiry {
    pub const MIN: u32 = 1;
    pub const MAX: u32 = 365;

    pub fn new(days: u32) -> Result<Self, DaysOutOfRange> {
        if (Self::MIN..=Self::MAX).contains(&days) {
            Ok(Self(days))
        } else {
            Err(DaysOutOfRange(days))
        }
    }

    /// A value read back from the store, brought into range: rows written before requests
    /// were checked may hold anything (4294967295 made `explain` panic).
    pub fn from_stored(days: u32) -> Self {
        Self(days.clamp(Self::MIN, Self::MAX))
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Display for DaysBeforeExpiry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A tag key and value, as ACM has them.
pub fn check_tag(key: &str, value: &str) -> Result<(), TagError> {
    let printable = |s: &str| s.chars().all(|c| !c.is_control());
    if key.is_empty() || key.len() > 128 || !printable(key) || key.contains('=') {
        return Err(TagError {
            key: key.to_owned(),
            reason: "a key needs 1-128 printable characters without '='",
        });
    }
    if value.len() > 256 || !printable(value) {
        return Err(TagError {
            key: key.to_owned(),
            reason: "a value holds at most 256 printable characters",
        });
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid tag {key:?}: {reason}")]
pub struct TagError {
    pub key: String,
    pub reason: &'static str,
}

/// What a new CA should look like: from the config's `[[ca]]` tables or `certkeeper ca create`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaSpec {
    pub name: String,
    /// The certkeeper CA that signs this one; `None` with `external = false` makes a root.
    pub parent: Option<String>,
    /// Signed by a CA outside certkeeper: creation yields a CSR, `ca install` completes it.
    pub external: bool,
    pub common_name: String,
    pub key_algorithm: KeyAlgorithm,
    pub validity: crate::span::Span,
    /// How many CAs may sit below this one; `None` leaves it unconstrained.
    pub path_length: Option<u8>,
    /// DNS name constraints (RFC 5280 §4.2.1.10); empty means unconstrained.
    pub permitted_dns: Vec<String>,
}

/// A managed certificate as the API shows it. Never holds key material.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Certificate {
    pub id: CertificateId,
    pub name: String,
    pub origin: Origin,
    pub status: Status,
    /// The CA name (private), ACME issuer name (public) or issuer DN (imported).
    pub issuer: String,
    pub domains: Vec<Domain>,
    pub key_algorithm: KeyAlgorithm,
    /// The current version's serial and validity; `None` until the first version is issued
    /// (a public certificate waiting for validation).
    pub serial: Option<Serial>,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub not_before: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub not_after: Option<OffsetDateTime>,
    pub current_version: u32,
    /// The lifetime requested for versions we issue; `None` for imported certificates.
    pub validity: Option<crate::span::Span>,
    pub client_auth: bool,
    pub tags: std::collections::BTreeMap<String, String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub revoked_at: Option<OffsetDateTime>,
    #[serde(default)]
    pub revocation_reason: Option<RevocationReason>,
    /// Per-certificate `renew-before`; `None` uses the configured default.
    #[serde(default)]
    pub renew_before: Option<crate::span::Span>,
    /// Per-certificate expiry-event threshold in days; `None` uses the account setting.
    #[serde(default)]
    pub days_before_expiry: Option<u32>,
    /// Per-certificate maintenance window; `None` uses `renewal.window`.
    #[serde(default)]
    pub maintenance_window: Option<WindowSpec>,
    /// Public certificates: how domain control is proven.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_method: Option<ValidationMethod>,
    /// While `pending-validation`: when it becomes `validation-timed-out`.
    #[serde(
        with = "time::serde::rfc3339::option",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub validation_deadline: Option<OffsetDateTime>,
    /// DNS validation: the records to create once (filled by `describe`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub validation_records: Vec<ValidationRecord>,
    /// ACM's renewal summary; `None` until the first renewal attempt.
    #[serde(default)]
    pub renewal: Option<Renewal>,
    /// Public certificates whose CA offers ACME renewal information: its suggested window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal_info: Option<RenewalInfo>,
    /// When the scheduler next acts on this certificate (renewal or retry); `None` when it
    /// will not (imported, revoked, a key certkeeper does not hold).
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub next_renewal_at: Option<OffsetDateTime>,
    /// Filled by `describe`; empty in lists.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub versions: Vec<VersionInfo>,
}

pub use crate::policy::RenewalInfo;

/// A DNS record the user creates once so that certkeeper can validate by itself from then on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidationRecord {
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "Type")]
    pub rtype: String,
    #[serde(rename = "Value")]
    pub value: String,
}

/// A maintenance window as stored and shown: when it opens (cron), for how long, in which zone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowSpec {
    pub schedule: String,
    pub duration: crate::span::Span,
    #[serde(default)]
    pub time_zone: Option<String>,
}

impl WindowSpec {
    pub fn window(&self) -> Result<crate::schedule::Window, crate::schedule::ScheduleError> {
        let schedule = crate::schedule::Schedule::parse(&self.schedule, self.time_zone.as_deref())?;
        Ok(crate::schedule::Window {
            schedule,
            duration: self.duration.std(),
        })
    }
}

/// The state of the latest renewal (ACM's `RenewalSummary`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Renewal {
    pub status: RenewalStatus,
    /// Why the last attempt failed (the CA's or our error), when it did.
    #[serde(default)]
    pub reason: Option<String>,
    /// Consecutive failures; reset by a success.
    pub failures: u32,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub failed_at: Option<OffsetDateTime>,
    /// Days to expiry when the last "Renewal Action Required" event was raised.
    #[serde(default)]
    pub action_required_days: Option<i64>,
    /// What the last failure said, which decides how soon the next attempt comes.
    #[serde(default)]
    pub failure_kind: Option<FailureKind>,
}

/// What a failed attempt said about the next one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureKind {
    /// The validation records are not in place yet (an `_acme-challenge` CNAME missing):
    /// someone is creating them, so the next look comes soon (the validation ladder).
    AwaitingRecords,
    /// The conversation failed, not the request: the CA was busy, unreachable or asked to
    /// wait, or the store or DNS server failed for a moment (a short ladder).
    Transient,
    /// The CA or certkeeper refused the request: retried on the renewal backoff.
    Refused,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RenewalStatus {
    PendingAutoRenewal,
    PendingValidation,
    Success,
    Failed,
}

impl Certificate {
    /// The current version's validity; `None` before the first version.
    pub fn lifetime(&self) -> Option<crate::policy::Lifetime> {
        Some(crate::policy::Lifetime {
            not_before: self.not_before?,
            not_after: self.not_after?,
        })
    }

    /// Its renewal as `check` and the expiry events weigh it; `None` when certkeeper does not
    /// renew it (no next action: imported, revoked, a key certkeeper does not hold).
    pub fn renewal_state(&self) -> Option<crate::policy::RenewalState> {
        Some(crate::policy::RenewalState {
            next_action_at: self.next_renewal_at?,
            failures: self.renewal.as_ref().map_or(0, |r| r.failures),
        })
    }

    pub fn common_name(&self) -> String {
        self.domains
            .first()
            .map(ToString::to_string)
            .unwrap_or_default()
    }
}

/// One version of a certificate, without its PEM or key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    pub version: u32,
    pub serial: Serial,
    #[serde(with = "time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    /// The certkeeper CA that signed this version, if one did.
    pub issuer_ca: Option<String>,
    /// Whether certkeeper holds this version's private key (false for `sign`).
    pub key_held: bool,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// A certificate authority held by certkeeper, as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaInfo {
    pub name: String,
    pub state: CaState,
    /// `root`, `subordinate` (of another certkeeper CA) or `external` (of an outside root).
    pub kind: CaKind,
    pub parent: Option<String>,
    pub common_name: String,
    pub key_algorithm: KeyAlgorithm,
    pub path_length: Option<u8>,
    pub permitted_dns: Vec<String>,
    pub serial: Option<Serial>,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub not_before: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub not_after: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CaState {
    Active,
    /// Issues nothing until `ca enable`.
    Disabled,
    /// An external subordinate waiting for `ca install`.
    PendingCertificate,
}

spelled!(RenewalStatus, "renewal status", {
    PendingAutoRenewal => "pending-auto-renewal",
    PendingValidation => "pending-validation",
    Success => "success",
    Failed => "failed",
});

spelled!(FailureKind, "failure kind", {
    AwaitingRecords => "awaiting-records",
    Transient => "transient",
    Refused => "refused",
});

spelled!(CaState, "CA state", {
    Active => "active",
    Disabled => "disabled",
    PendingCertificate => "pending-certificate",
});

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CaKind {
    Root,
    Subordinate,
    External,
}

spelled!(CaKind, "CA kind", { Root => "root", Subordinate => "subordinate", External => "external" });

/// RFC 3339 text, the one way times are written for people and in messages.
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

/// Seconds since the Unix epoch, the form times take in the store.
pub fn unix(t: OffsetDateTime) -> i64 {
    t.unix_timestamp()
}

/// The inverse of [`unix`]; out-of-range values (never written by us) clamp to the epoch.
pub fn from_unix(secs: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(secs).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_normalise_and_reject() {
        assert_eq!(
            "WWW.Example.COM.".parse::<Domain>(),
            Ok(Domain::Dns("www.example.com".into()))
        );
        assert_eq!(
            "*.example.com".parse::<Domain>().map(|d| d.is_wildcard()),
            Ok(true)
        );
        assert!(matches!("10.0.0.1".parse::<Domain>(), Ok(Domain::Ip(_))));
        assert!(matches!("::1".parse::<Domain>(), Ok(Domain::Ip(_))));
        for bad in [
            "",
            "a..b",
            "-a.com",
            "a-.com",
            "www.*.com",
            "*.com",
            "exa mple.com",
            "bücher.de",
            "x",
            "1.2.3.4.",
            "010.1.1.1",
            "host.123",
        ] {
            assert!(bad.parse::<Domain>().is_err(), "{bad:?} should be rejected");
        }
        let long_label = format!("{}.com", "a".repeat(64));
        assert!(long_label.parse::<Domain>().is_err());
        // Refused as input, but a name stored before that rule still reads back.
        assert!("host.123".parse::<Domain>().is_err());
        let stored: Domain = serde_json::from_str("\"host.123\"").unwrap();
        assert_eq!(stored, Domain::Dns("host.123".into()));
    }

    #[test]
    fn duplicate_domains_are_rejected() {
        let err = parse_domains(&["a.example", "A.example."]).unwrap_err();
        assert_eq!(err.reason, "listed twice");
        assert!(parse_domains::<&str>(&[]).is_err());
    }

    #[test]
    fn at_most_a_hundred_domains() {
        let names: Vec<String> = (0..=MAX_DOMAINS).map(|i| format!("h{i}.example")).collect();
        assert!(parse_domains(&names[..MAX_DOMAINS]).is_ok());
        let err = parse_domains(&names).unwrap_err().to_string();
        assert!(
            err.contains("101 names") && err.contains("at most 100"),
            "{err}"
        );
    }

    #[test]
    fn names_and_common_names_are_printable() {
        for bad in ["..", ".", "ck-x", "a b"] {
            assert!(check_name("CA", bad).is_err(), "{bad:?}");
        }
        assert!(check_name("certificate", "a.b..c").is_ok());
        assert!(check_common_name("Team CA (2026)").is_ok());
        for bad in ["esc\u{1b}[2J", "nul\0", "two\nlines", "", &"x".repeat(65)] {
            let err = check_common_name(bad).unwrap_err().to_string();
            assert!(err.starts_with("invalid common name"), "{err}");
        }
        assert!(DaysBeforeExpiry::new(0).is_err() && DaysBeforeExpiry::new(366).is_err());
        assert_eq!(DaysBeforeExpiry::from_stored(u32::MAX).get(), 365);
    }

    #[test]
    fn serials_round_trip() {
        let serial = Serial::from_bytes(&[0x00, 0x80, 0x01]);
        assert_eq!(serial.as_str(), "8001");
        assert_eq!(serial.to_bytes(), vec![0x80, 0x01]);
        assert_eq!(Serial::parse("80:01"), Some(serial));
        assert_eq!(Serial::parse("xyz"), None);
    }

    #[test]
    fn enum_spellings_round_trip() {
        for status in Status::ALL {
            assert_eq!(status.as_str().parse::<Status>(), Ok(*status));
            let json = serde_json::to_string(status).unwrap();
            assert_eq!(json, format!("\"{}\"", status.as_str()));
        }
        for alg in KeyAlgorithm::ALL {
            assert_eq!(alg.as_str().parse::<KeyAlgorithm>(), Ok(*alg));
            assert_eq!(
                serde_json::to_string(alg).unwrap(),
                format!("\"{}\"", alg.as_str())
            );
        }
        for origin in Origin::ALL {
            assert_eq!(
                serde_json::to_string(origin).unwrap(),
                format!("\"{}\"", origin.as_str())
            );
        }
        for reason in RevocationReason::ALL {
            assert_eq!(
                serde_json::to_string(reason).unwrap(),
                format!("\"{}\"", reason.as_str())
            );
        }
        for state in CaState::ALL {
            assert_eq!(
                serde_json::to_string(state).unwrap(),
                format!("\"{}\"", state.as_str())
            );
        }
        let err = "p256".parse::<KeyAlgorithm>().unwrap_err();
        assert!(err.to_string().contains("ec-p256"), "{err}");
    }

    #[test]
    fn ids_parse_only_when_well_formed() {
        let id = CertificateId::generate();
        assert_eq!(CertificateId::parse(id.as_str()), Some(id));
        assert_eq!(CertificateId::parse("ck-nope"), None);
        assert_eq!(CertificateId::parse("web"), None);
    }
}
