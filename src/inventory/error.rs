//! What went wrong with an inventory operation, as data.
//!
//! Each variant says what happened and carries what a caller needs to act on it, so the API
//! maps each variant to a status and a stable code once (and the ACM-compatible API to ACM's
//! exception names), and the scheduler reads a retry time, without anyone reading messages.
//! Errors of the layers below are sorted here, where their meaning for the user is known: a
//! CA protocol fault is never reported as invalid input, a CSR the CA refuses is.

use std::fmt;

use time::OffsetDateTime;

use crate::acme::AcmeError;
use crate::ca::CaError;
use crate::export::ExportError;
use crate::import::ImportError;
use crate::keys::KeyError;
use crate::model::{CaState, CertificateId, FailureKind, Origin};
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// No such certificate, version or CA.
    #[error("{0} not found")]
    NotFound(Missing),
    /// The certificate is revoked: nothing more is done to it.
    #[error("certificate {id} is {}revoked", if *.operation == Operation::Revoke { "already " } else { "" })]
    Revoked {
        id: CertificateId,
        operation: Operation,
    },
    /// The operation is for certificates certkeeper issues; this one was imported.
    #[error("certificate {id} is imported; {}", .operation.for_imported())]
    Imported {
        id: CertificateId,
        operation: Operation,
    },
    /// Re-import is for imported certificates only.
    #[error("certificate {id} is {origin}; only imported certificates can be re-imported")]
    NotImported { id: CertificateId, origin: Origin },
    /// The certificate was signed from a caller's CSR: its key never reached certkeeper.
    #[error("certificate {id} was signed from a CSR: certkeeper does not hold its private key{}", .operation.for_csr())]
    KeyNotHeld {
        id: CertificateId,
        operation: Operation,
    },
    /// Another certificate has this name.
    #[error("a certificate named {name:?} already exists")]
    NameTaken { name: String },
    /// Two requests of one batch give the same name.
    #[error("the name {name:?} is already given to requests[{first}]")]
    NameGivenTwice { name: String, first: usize },
    /// The CA exists but cannot issue now.
    #[error("CA {name:?} {}", ca_state_hint(.name, *.state))]
    CaUnavailable { name: String, state: CaState },
    #[error("CA {name:?} already exists")]
    CaExists { name: String },
    /// `ca install` for a CA that is not waiting for a certificate.
    #[error("CA {name:?} already has its certificate")]
    CaInstalled { name: String },
    /// A request field that does not hold a usable value.
    #[error("{reason}")]
    InvalidInput { field: String, reason: String },
    /// The input was refused by the import checks (PEM, keys, chains, expiry).
    #[error(transparent)]
    Import(#[from] ImportError),
    /// The private CA refused to sign this (a CSR, names outside its constraints, a validity
    /// past its own).
    #[error(transparent)]
    CaRefused(CaError),
    /// The request does not work with the ACME issuer's configuration (no such issuer, method
    /// not configured, a key type or name the CA will not take, a profile it does not offer).
    #[error(transparent)]
    IssuerRefused(Box<AcmeError>),
    /// Validation records are not in place yet: the certificate waits for them.
    #[error(transparent)]
    ValidationPending(Box<AcmeError>),
    /// The CA asked to wait: nothing is sent to it before `until`.
    #[error("{source}")]
    RetryAfter {
        until: OffsetDateTime,
        source: Box<AcmeError>,
    },
    /// The CA failed, refused the order, broke the protocol or could not be reached.
    #[error(transparent)]
    CaFailed(Box<AcmeError>),
    /// The record changed while this operation ran; trying again may succeed.
    #[error("{what} changed while this operation ran; try again")]
    Changed { what: String },
    /// The store's disk is full: nothing was written, and the same request works once there
    /// is room.
    #[error(transparent)]
    StoreFull(StoreError),
    /// The store cannot do this now (an I/O error, or it stopped taking writes until a
    /// restart): nothing was written.
    #[error(transparent)]
    StoreUnavailable(StoreError),
    /// A commit failed so that nobody knows whether the change was stored: check before
    /// retrying (a retried creation could make a second certificate).
    #[error(transparent)]
    OutcomeUnknown(StoreError),
    /// The store failed.
    #[error(transparent)]
    Store(StoreError),
    /// One request of a batch failed: which, and how.
    #[error("requests[{index}]: {error}")]
    InRequest { index: usize, error: Box<Self> },
    /// Something on our side failed that no input can cause (cryptography, a worker thread).
    #[error("internal error: {0}")]
    Internal(Internal),
    /// The daemon is stopping; the operation was not done.
    #[error("the daemon is shutting down")]
    ShuttingDown,
}

/// What was looked for and not found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Missing {
    /// A certificate, by the id or name given.
    Certificate(String),
    Version {
        id: CertificateId,
        version: u32,
    },
    Ca(String),
    /// As the store describes it.
    Stored(String),
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Certificate(given) => write!(f, "certificate {given:?}"),
            Self::Version { id, version } => write!(f, "version {version} of {id}"),
            Self::Ca(name) => write!(f, "CA {name:?}"),
            Self::Stored(what) => f.write_str(what),
        }
    }
}

/// The operation an error refused, for its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Renew,
    Revoke,
    Export,
}

impl Operation {
    fn for_imported(self) -> &'static str {
        match self {
            Self::Renew => "certkeeper does not renew it (re-import a new one)",
            Self::Revoke => "revoke it with the CA that issued it",
            Self::Export => "its key is exported with the certificate it came with",
        }
    }

    fn for_csr(self) -> &'static str {
        match self {
            Self::Renew => ": sign a new CSR instead",
            Self::Revoke | Self::Export => "",
        }
    }
}

fn ca_state_hint(name: &str, state: CaState) -> String {
    match state {
        CaState::Disabled => {
            format!("is disabled (`certkeeper ca enable {name}` lets it issue again)")
        }
        CaState::PendingCertificate => {
            format!("is waiting for its certificate (`certkeeper ca install {name}`)")
        }
        CaState::Active => "is active".to_owned(),
    }
}

/// A failure on certkeeper's side, kept with its cause.
#[derive(Debug, thiserror::Error)]
pub enum Internal {
    #[error("a worker thread failed: {0}")]
    Worker(#[from] tokio::task::JoinError),
    #[error(transparent)]
    Ca(CaError),
    #[error(transparent)]
    Export(ExportError),
    #[error(transparent)]
    Acme(Box<AcmeError>),
    #[error("CA {0:?} has no CRL")]
    NoCrl(String),
    #[error("the stored certificate of CA {0:?} is not PEM")]
    CaCertificate(String),
    #[error("the store answered no certificate")]
    NothingStored,
}

impl InventoryError {
    /// A request field that does not hold a usable value.
    pub fn invalid(field: impl Into<String>, reason: impl fmt::Display) -> Self {
        Self::InvalidInput {
            field: field.into(),
            reason: reason.to_string(),
        }
    }

    /// This error, as the failure of request `index` of a batch.
    pub fn in_request(self, index: usize) -> Self {
        Self::InRequest {
            index,
            error: Box::new(self),
        }
    }

    /// What this error, as the failure of a renewal or first issuance, says about the next
    /// attempt: records still missing, a passing fault, or a refusal.
    pub fn failure_kind(&self) -> FailureKind {
        match self {
            Self::ValidationPending(_) => FailureKind::AwaitingRecords,
            Self::RetryAfter { .. }
            | Self::ShuttingDown
            | Self::StoreFull(_)
            | Self::StoreUnavailable(_)
            | Self::OutcomeUnknown(_)
            | Self::Store(_)
            | Self::Changed { .. } => FailureKind::Transient,
            Self::CaFailed(err) if err.is_transient() => FailureKind::Transient,
            Self::InRequest { error, .. } => error.failure_kind(),
            _ => FailureKind::Refused,
        }
    }

    /// When the next attempt may be made, if the other side said (an ACME CA's Retry-After).
    pub fn retry_not_before(&self) -> Option<OffsetDateTime> {
        match self {
            Self::RetryAfter { until, .. } => Some(*until),
            Self::InRequest { error, .. } => error.retry_not_before(),
            _ => None,
        }
    }
}

impl From<StoreError> for InventoryError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NameTaken(name) => Self::NameTaken { name },
            StoreError::Conflict(what) => Self::Changed { what },
            // Only a new version meets a revocation it did not see: a renewal's.
            StoreError::Revoked(id) => Self::Revoked {
                id,
                operation: Operation::Renew,
            },
            StoreError::NotFound(what) => Self::NotFound(Missing::Stored(what)),
            StoreError::Closed => Self::ShuttingDown,
            StoreError::Full(_) => Self::StoreFull(err),
            StoreError::Io(_) | StoreError::WriterStopped(_) => Self::StoreUnavailable(err),
            StoreError::OutcomeUnknown(_) => Self::OutcomeUnknown(err),
            other => Self::Store(other),
        }
    }
}

impl From<CaError> for InventoryError {
    fn from(err: CaError) -> Self {
        match err {
            // No input makes key generation fail. A signing failure can come from input rcgen
            // refuses (a name, an installed CA's certificate): it stays the CA's refusal.
            CaError::Key(KeyError::Generation(_)) => Self::Internal(Internal::Ca(err)),
            refused => Self::CaRefused(refused),
        }
    }
}

impl From<ExportError> for InventoryError {
    fn from(err: ExportError) -> Self {
        match err {
            ExportError::Passphrase => Self::invalid("passphrase", err),
            other => Self::Internal(Internal::Export(other)),
        }
    }
}

impl From<AcmeError> for InventoryError {
    fn from(err: AcmeError) -> Self {
        use AcmeError as A;
        match err {
            A::UnknownIssuer(_)
            | A::MethodNotConfigured(_)
            | A::MethodNotAcme(_)
            | A::Unsupported { .. }
            | A::Config { .. } => Self::IssuerRefused(Box::new(err)),
            A::Delegation(_) => Self::ValidationPending(Box::new(err)),
            A::RateLimited { until, .. } => Self::RetryAfter {
                until,
                source: Box::new(err),
            },
            A::Protocol { .. }
            | A::Validation { .. }
            | A::Order { .. }
            | A::CaFault { .. }
            | A::Unsettled { .. }
            | A::Dns(_) => Self::CaFailed(Box::new(err)),
            A::Store(store) => store.into(),
            A::ShuttingDown => Self::ShuttingDown,
            A::Internal(_) | A::KeyNotPromoted { .. } => {
                Self::Internal(Internal::Acme(Box::new(err)))
            }
        }
    }
}

impl From<tokio::task::JoinError> for InventoryError {
    fn from(err: tokio::task::JoinError) -> Self {
        Self::Internal(Internal::Worker(err))
    }
}
