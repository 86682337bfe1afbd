//! The audit log (M7 of the security review): one record for every API call that changes state
//! or hands out a key, saying who made it, what it was, what it named and how it ended.
//!
//! Who is the kernel's word, not the caller's: the uid, gid and pid of the process at the
//! other end of the Unix socket (`SO_PEERCRED`, see [`crate::serve::Peer`]). What is the
//! method and route as the router matched them (`POST /v1/certificates/{id}/export`), so a new
//! endpoint is audited the day it is added, with no table to keep in step.
//!
//! Each record goes to two places: the log (the journal under systemd, with the fields as
//! journal fields, `AUDIT=true` to select them; the target is `RESOURCE` there, as journald's
//! `TARGET` is the log target), written first and always; and the store, from
//! which `certkeeper audit` reads it. A key is exported only once its record is stored: if the
//! store cannot take the record, the export is refused.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::serve::Peer;
use crate::span::Span;

/// How long records are kept when `api.audit-retention` is not set.
pub const DEFAULT_RETENTION: Span = Span::from_days(365);

/// One audited call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    pub peer: Peer,
    /// Method and route template, e.g. `DELETE /v1/certificates/{id}`.
    pub operation: String,
    /// The certificate, CA or ACME issuer the call named in its path, or the one it created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The HTTP status of the answer.
    pub status: u16,
    /// The API error code when the call failed (`not-found`, `conflict`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

impl Record {
    pub fn succeeded(&self) -> bool {
        self.status < 400
    }

    /// Writes the record to the log, with every part as a field.
    pub fn log(&self) {
        let (uid, gid, pid, address) = match self.peer {
            Peer::Local { uid, gid, pid } => (Some(uid), Some(gid), pid, None),
            Peer::Remote { address } => (None, None, None, Some(address)),
            Peer::Unknown => (None, None, None, None),
        };
        tracing::info!(
            audit = true,
            peer_uid = uid,
            peer_gid = gid,
            peer_pid = pid,
            peer_address = address.map(tracing::field::display),
            operation = %self.operation,
            resource = self.target.as_deref(),
            status = self.status,
            code = self.code.as_deref(),
            "audit"
        );
    }
}

/// A stored record and its position in the log (strictly increasing, for paging).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Entry {
    pub seq: i64,
    #[serde(flatten)]
    pub record: Record,
}
