//! The inventory's durable home, behind one interface.
//!
//! Callers see domain types ([`Certificate`], [`CaInfo`], ...) and plaintext keys in
//! [`Zeroizing`] buffers; sealing and unsealing happen here (see [`seal`]), so no caller can
//! forget to encrypt. The backend today is SQLite in WAL mode (`sqlite.rs`); PostgreSQL can be
//! added behind the same methods.
//!
//! Writes go through a single writer task (`writer.rs`) that commits queued writes together:
//! under load, one fsync covers a whole batch, and every caller still gets its answer only after
//! its own write is durable. Reads use a separate pool and never wait for the writer.

mod high_water;
pub mod seal;
mod sqlite;
mod writer;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use zeroize::Zeroizing;

use crate::config::Synchronous;
use crate::events::Event;
use crate::exit;
use crate::metrics::{MetricsRow, MetricsSummary};
use crate::model::{
    CaInfo, CaSpec, Certificate, CertificateId, KeyAlgorithm, Origin, RevocationReason, Serial,
    Status, ValidationMethod,
};
use high_water::{HighWater, Verified};
pub use seal::{Keyring, SealError, Sealed};
pub use sqlite::ListFilter;
use writer::{Answer, Job};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {path}: {source}")]
    Open {
        path: String,
        source: rusqlite::Error,
    },
    #[error("database error: {0}")]
    Database(rusqlite::Error),
    /// The disk holding the database is full. SQLite rolled the transaction back: nothing of
    /// it was written, and writes work again once there is room, without a restart.
    #[error("the disk holding the store is full; nothing was written ({0})")]
    Full(Arc<rusqlite::Error>),
    /// Reading or writing the database file failed (EIO, EROFS, ...) before anything was
    /// committed: nothing was written.
    #[error("the store's database could not be read or written ({0}); nothing was written")]
    Io(Arc<rusqlite::Error>),
    /// A commit failed with an I/O error (an fsync, typically): what reached the disk may or
    /// may not come back after a restart. The writer takes no more writes
    /// ([`StoreError::WriterStopped`]) and the daemon restarts, so that SQLite recovers from
    /// what is on disk; a caller must check whether its change is there before retrying.
    #[error(
        "committing to the store failed with an I/O error ({0}): the change may or may not have been stored; check before retrying"
    )]
    OutcomeUnknown(Arc<rusqlite::Error>),
    /// The writer stopped taking writes after a commit whose outcome is unknown.
    #[error(
        "the store takes no writes until certkeeper restarts: a commit failed with an I/O error ({0})"
    )]
    WriterStopped(Arc<rusqlite::Error>),
    /// `PRAGMA quick_check` found the database file damaged.
    #[error(
        "database {path} is damaged ({detail}); restore it from a backup, or recover it with `sqlite3 {path} .recover`"
    )]
    Damaged { path: String, detail: String },
    /// The database holds fewer commits than certkeeper had acknowledged: a WAL or database
    /// file lost its end, or an older copy was put in place.
    #[error(
        "database {path} is older than certkeeper last left it: it holds {found} commits, {mark} recorded {recorded}; acknowledged changes are missing. If this state is meant (a backup restored on purpose), delete {mark} to accept it"
    )]
    RolledBack {
        path: String,
        mark: String,
        found: u64,
        recorded: u64,
    },
    /// The file recording the last commit (the high-water mark) cannot be read or written.
    #[error("{path}: {reason}")]
    HighWater { path: String, reason: String },
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error("a certificate named {0:?} already exists")]
    NameTaken(String),
    #[error("{0} changed while this operation ran; try again")]
    Conflict(String),
    /// A new version for a certificate revoked since it was read: a revoked certificate
    /// takes none (a renewal that finished after the revocation).
    #[error("certificate {0} was revoked while this operation ran")]
    Revoked(CertificateId),
    #[error("{0} not found")]
    NotFound(String),
    #[error("stored data is invalid: {0}")]
    Invalid(String),
    /// A stored row does not decode: the database was changed outside certkeeper, or damaged.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("the store is shutting down")]
    Closed,
}

/// SQLite's own verdict first: a full disk and an I/O error say what happened to the
/// operation (nothing was written), whatever statement met them.
impl From<rusqlite::Error> for StoreError {
    fn from(err: rusqlite::Error) -> Self {
        match err.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DiskFull) => Self::Full(Arc::new(err)),
            Some(rusqlite::ErrorCode::SystemIoFailure) => Self::Io(Arc::new(err)),
            _ => Self::Database(err),
        }
    }
}

impl StoreError {
    /// Whether the stored data itself is damaged (a row that does not decode, a database file
    /// SQLite finds corrupt): retrying cannot help.
    pub fn is_corrupt(&self) -> bool {
        match self {
            Self::Corrupt(_) | Self::Damaged { .. } => true,
            Self::Database(err) | Self::Open { source: err, .. } => is_damaged_file(err),
            _ => false,
        }
    }

    /// The exit code `serve` stops with on this error (see `src/exit.rs`).
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Seal(_) => exit::CONFIG,
            Self::Corrupt(_) => exit::DATA,
            Self::Damaged { .. } => exit::STORE_DAMAGED,
            Self::Database(err) | Self::Open { source: err, .. } if is_damaged_file(err) => {
                exit::STORE_DAMAGED
            }
            Self::RolledBack { .. } => exit::STORE_ROLLED_BACK,
            Self::OutcomeUnknown(_) | Self::WriterStopped(_) => exit::IO,
            _ => exit::SOFTWARE,
        }
    }
}

/// Whether SQLite finds the database file itself damaged.
fn is_damaged_file(err: &rusqlite::Error) -> bool {
    matches!(
        err.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
    )
}

/// A certificate to create, with its first version (or none yet: a public certificate waiting
/// for validation).
pub struct NewCertificate {
    pub id: CertificateId,
    /// The name to use; when `name_is_default` and it is taken, a unique suffix is added.
    pub name: String,
    pub name_is_default: bool,
    pub origin: Origin,
    pub status: Status,
    pub issuer: String,
    pub domains: Vec<crate::model::Domain>,
    pub key_algorithm: KeyAlgorithm,
    pub validity: Option<crate::span::Span>,
    pub client_auth: bool,
    pub tags: BTreeMap<String, String>,
    pub renew_before: Option<crate::span::Span>,
    pub days_before_expiry: Option<u32>,
    pub maintenance_window: Option<crate::model::WindowSpec>,
    /// The scheduler's first deadline for it (see `certificates.next_action_at`).
    pub next_action_at: Option<OffsetDateTime>,
    /// How a public certificate proves control, and until when it may wait.
    pub validation: Option<(ValidationMethod, OffsetDateTime)>,
    pub version: Option<NewVersion>,
    pub event: Option<Event>,
}

impl NewCertificate {
    /// What the scheduler will have to wake up for once this is stored.
    pub fn deadlines(&self) -> Deadlines {
        Deadlines {
            action: self.next_action_at,
            expiry: self
                .version
                .as_ref()
                .filter(|_| self.status == Status::Issued)
                .map(|v| v.not_after),
        }
    }

    /// The certificate as it reads once stored (before the writer settles its final name).
    pub fn certificate(&self, now: OffsetDateTime) -> Certificate {
        Certificate {
            id: self.id.clone(),
            name: self.name.clone(),
            origin: self.origin,
            status: self.status,
            issuer: self.issuer.clone(),
            domains: self.domains.clone(),
            key_algorithm: self.key_algorithm,
            serial: self.version.as_ref().map(|v| v.serial.clone()),
            not_before: self.version.as_ref().map(|v| v.not_before),
            not_after: self.version.as_ref().map(|v| v.not_after),
            current_version: u32::from(self.version.is_some()),
            validity: self.validity,
            client_auth: self.client_auth,
            tags: self.tags.clone(),
            created_at: now,
            updated_at: now,
            revoked_at: None,
            revocation_reason: None,
            renew_before: self.renew_before,
            days_before_expiry: self.days_before_expiry,
            maintenance_window: self.maintenance_window.clone(),
            validation_method: self.validation.as_ref().map(|(m, _)| *m),
            validation_deadline: self.validation.as_ref().map(|(_, d)| *d),
            validation_records: Vec::new(),
            renewal_info: None,
            renewal: None,
            next_renewal_at: self.next_action_at,
            versions: self
                .version
                .iter()
                .map(|v| crate::model::VersionInfo {
                    version: 1,
                    serial: v.serial.clone(),
                    not_before: v.not_before,
                    not_after: v.not_after,
                    issuer_ca: v.issuer_ca.clone(),
                    key_held: v.key.is_some(),
                    created_at: now,
                })
                .collect(),
        }
    }
}

/// One issued or imported certificate, before it is stored.
pub struct NewVersion {
    pub serial: Serial,
    pub issuer_ca: Option<String>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub cert_pem: String,
    pub chain_pem: String,
    /// Unencrypted PKCS#8; `None` when the key is not ours.
    pub key: Option<Zeroizing<Vec<u8>>>,
}

/// A new version becoming current: a renewal or a re-import.
pub struct VersionChange {
    /// Must be the current version plus one; a concurrent change makes the write a `Conflict`.
    pub version: u32,
    pub new: NewVersion,
    pub status: Status,
    pub event: Option<Event>,
    /// New domains and key algorithm, when they change (a re-import may).
    pub names: Option<(Vec<crate::model::Domain>, KeyAlgorithm)>,
    /// The scheduler's next deadline for the new version (its renewal), if any. Adding a
    /// version also records the renewal as a success and clears failure state.
    pub next_action_at: Option<OffsetDateTime>,
    /// The CA's renewal window for the new version (ARI), if it has one.
    pub renewal_info: Option<crate::model::RenewalInfo>,
}

/// A failed renewal attempt, recorded with its retry time and, when one is due, its
/// "Renewal Action Required" event.
pub struct RenewalFailure {
    pub id: CertificateId,
    pub reason: String,
    pub kind: crate::model::FailureKind,
    pub failed_at: OffsetDateTime,
    pub next_action_at: Option<OffsetDateTime>,
    /// The milestone to record when `event` is raised.
    pub action_required_days: Option<i64>,
    pub event: Option<Event>,
}

/// A scheduled renewal to plan again: the certificate and its own policy overrides.
pub struct Replannable {
    pub id: CertificateId,
    pub lifetime: crate::policy::Lifetime,
    pub renew_before: Option<crate::span::Span>,
    pub window: Option<crate::model::WindowSpec>,
    /// The CA's renewal window (ARI): the plan never goes past its deadline.
    pub renewal_info: Option<crate::model::RenewalInfo>,
    /// When the current version was stored: its real issuance time.
    pub issued_at: Option<OffsetDateTime>,
    /// The current version's number.
    pub version: u32,
}

/// A record certkeeper made visible to answer an ACME challenge, as stored from just before it
/// is published until it is withdrawn (so a crash cannot leave it behind unnoticed).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ChallengeRecord {
    pub kind: ChallengeRecordKind,
    /// The TXT record's name, or the HTTP-01 token.
    pub name: String,
    /// The TXT record's value; empty for a token.
    pub value: String,
    pub certificate: CertificateId,
    /// The order it answers.
    pub order_url: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChallengeRecordKind {
    /// A DNS-01 TXT record in the validation zone.
    Txt,
    /// An HTTP-01 token (served by the daemon, or a file under a webroot).
    Token,
}

impl ChallengeRecordKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Txt => "txt",
            Self::Token => "token",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "txt" => Some(Self::Txt),
            "token" => Some(Self::Token),
            _ => None,
        }
    }
}

/// An ACME account as stored (its credentials are sealed separately).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AcmeAccount {
    /// The `[[acme]]` name.
    pub issuer: String,
    pub directory: String,
    /// The account URL at the CA (its `kid`).
    pub url: String,
    /// The contact URLs the CA has.
    pub contact: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Last change of contact or key.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// What the daily expiry check needs to know about one issued certificate.
#[derive(Clone, Debug)]
pub struct ExpiryCandidate {
    pub id: CertificateId,
    pub name: String,
    pub origin: Origin,
    pub common_name: String,
    pub serial: Serial,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub days_before_expiry: Option<u32>,
    pub renew_before: Option<crate::span::Span>,
    /// UTC day number of the last "Approaching Expiration" event.
    pub expiry_event_day: Option<i64>,
    /// `Some` when the scheduler renews it (it has a next action): the event then means
    /// "overdue", and is sent only while the renewal is failing or overdue.
    pub renewal: Option<crate::policy::RenewalState>,
}

/// A version as read back for `get` and `export`.
pub struct StoredVersion {
    pub version: u32,
    pub serial: Serial,
    pub issuer_ca: Option<String>,
    pub cert_pem: String,
    pub chain_pem: String,
    key: Option<Sealed>,
}

/// A CA with everything needed to sign (the key still sealed).
pub struct StoredCa {
    pub info: CaInfo,
    pub cert_pem: Option<String>,
    pub chain_pem: String,
    pub csr_pem: Option<String>,
    pub crl_number: u64,
    pub crl_der: Option<Vec<u8>>,
    pub crl_next_update: Option<OffsetDateTime>,
    key: Sealed,
}

/// A new CA row.
pub struct NewCa {
    pub spec: CaSpec,
    pub cert_pem: Option<String>,
    pub chain_pem: String,
    pub csr_pem: Option<String>,
    pub serial: Option<Serial>,
    pub not_before: Option<OffsetDateTime>,
    pub not_after: Option<OffsetDateTime>,
    pub key: Zeroizing<Vec<u8>>,
}

/// An external CA's certificate arriving through `ca install`.
pub struct InstalledCa {
    pub cert_pem: String,
    pub chain_pem: String,
    pub serial: Serial,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

/// A revocation to record against the CA that issued a serial.
#[derive(Clone, Debug)]
pub struct Revocation {
    pub ca: String,
    pub serial: Serial,
}

/// How many sealed records each master key id wraps.
pub type KeyUsage = BTreeMap<String, u64>;

/// What the scheduler waits for next: the earliest renewal or other action, and the earliest
/// expiry of an issued certificate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Deadlines {
    pub action: Option<OffsetDateTime>,
    pub expiry: Option<OffsetDateTime>,
}

#[derive(Clone)]
pub struct Store {
    db: sqlite::Db,
    writer: mpsc::Sender<Job>,
    /// `Some` once the writer stopped taking writes (see [`Store::supervise`]).
    writer_stopped: writer::Stopped,
    keyring: Arc<Keyring>,
    /// Notified after every commit (new events may be waiting for delivery).
    events_committed: Arc<tokio::sync::Notify>,
}

impl Store {
    /// Opens (creating if needed) the database, runs pending migrations, and checks it: page
    /// by page, and against its high-water mark. The writer thread stops when the last
    /// `Store` clone is dropped.
    pub async fn open(
        path: &Path,
        synchronous: Synchronous,
        keyring: Keyring,
    ) -> Result<Self, StoreError> {
        let path = path.to_owned();
        let (db, conn, mark) =
            tokio::task::spawn_blocking(move || open_checked(&path, synchronous))
                .await
                .map_err(|e| StoreError::Invalid(format!("open task failed: {e}")))??;
        let events_committed = Arc::new(tokio::sync::Notify::new());
        let (writer, writer_stopped) = writer::spawn(conn, events_committed.clone(), mark)?;
        Ok(Self {
            db,
            writer,
            writer_stopped,
            keyring: Arc::new(keyring),
            events_committed,
        })
    }

    /// Runs until `stop`, or fails when the writer stops taking writes: a commit failed with
    /// an I/O error, so what is on disk is not what this process knows. Only a new process
    /// can go on: SQLite's recovery at open makes the database consistent again, whichever
    /// way that commit went. The daemon supervises this and exits (`exit::IO`) for systemd to
    /// restart it.
    pub async fn supervise(self, stop: CancellationToken) -> Result<(), StoreError> {
        let mut stopped = self.writer_stopped.clone();
        tokio::select! {
            () = stop.cancelled() => Ok(()),
            failure = stopped.wait_for(Option::is_some) => match failure.as_deref() {
                Ok(Some(err)) => Err(StoreError::WriterStopped(err.clone())),
                // The writer thread is gone with every Store: nothing left to supervise.
                Ok(None) | Err(_) => Ok(()),
            },
        }
    }

    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    /// Checks that every sealed record can be opened with the loaded master keys: at start-up,
    /// a wrong key must be a clear error, not garbage later. Opens one record per key id (each
    /// id is one master key) and counts the rest.
    pub async fn check_keys(&self) -> Result<KeyUsage, StoreError> {
        let usage = self.db.key_usage().await?;
        for kid in usage.keys() {
            let one = self.db.sealed_records(kid.clone(), true, 1).await?;
            if let Some((record, sealed)) = one.first() {
                self.keyring.open(&record.name(), sealed)?;
            }
        }
        Ok(usage)
    }

    // --- certificates --------------------------------------------------------------------

    /// Inserts certificates in one transaction: all are stored or none is. Answers them in
    /// the order given.
    pub async fn insert_certificates(
        &self,
        news: Vec<NewCertificate>,
    ) -> Result<Vec<Certificate>, StoreError> {
        let now = OffsetDateTime::now_utc();
        let mut items = Vec::with_capacity(news.len());
        // Build the answers from what we write instead of reading them back: issuance is the
        // hot path, and the only thing the writer may change is a name.
        let mut certs = Vec::with_capacity(news.len());
        for mut new in news {
            // The answer first, while the version still has its key (it says `key_held`).
            certs.push(new.certificate(now));
            let key = new.version.as_mut().and_then(|v| v.key.take());
            let sealed = self.seal_version_key(&new.id, 1, key)?;
            items.push((new, sealed));
        }
        let answer = self
            .write(|reply| Job::InsertCertificates { items, reply })
            .await?;
        if let Answer::Names(names) = answer {
            for (cert, name) in certs.iter_mut().zip(names) {
                cert.name = name;
            }
        }
        Ok(certs)
    }

    /// Adds a version (numbered the current one plus one) and makes it current.
    pub async fn add_version(
        &self,
        id: &CertificateId,
        mut change: VersionChange,
    ) -> Result<Certificate, StoreError> {
        let sealed = self.seal_version_key(id, change.version, change.new.key.take())?;
        let job_id = id.clone();
        self.write(|reply| Job::AddVersion {
            id: job_id,
            change: Box::new(change),
            key: sealed,
            reply,
        })
        .await?;
        self.certificate(id)
            .await?
            .ok_or_else(|| StoreError::NotFound(id.to_string()))
    }

    /// Revokes `id` as read at `version`, with `revocations` (its versions' serials) for the
    /// CRLs. A `Conflict` when it is revoked already, or when a renewal stored a later version
    /// since it was read: `revocations` would miss that version, so the caller reads again.
    pub async fn revoke(
        &self,
        id: &CertificateId,
        version: u32,
        reason: RevocationReason,
        revocations: Vec<Revocation>,
        event: Option<Event>,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let id = id.clone();
        self.write(|reply| Job::Revoke {
            id,
            version,
            reason,
            revocations,
            event,
            now,
            reply,
        })
        .await
        .map(drop)
    }

    pub async fn delete(&self, id: &CertificateId) -> Result<(), StoreError> {
        let id = id.clone();
        self.write(|reply| Job::Delete { id, reply })
            .await
            .map(drop)
    }

    pub async fn set_tags(
        &self,
        id: &CertificateId,
        set: BTreeMap<String, String>,
        remove: Vec<String>,
    ) -> Result<(), StoreError> {
        let id = id.clone();
        self.write(|reply| Job::SetTags {
            id,
            set,
            remove,
            reply,
        })
        .await
        .map(drop)
    }

    /// Looks a certificate up by id or, failing that, by name; includes its versions.
    pub async fn find_certificate(
        &self,
        id_or_name: &str,
    ) -> Result<Option<Certificate>, StoreError> {
        self.db
            .find_certificate(id_or_name.to_owned(), OffsetDateTime::now_utc())
            .await
    }

    pub async fn certificate(&self, id: &CertificateId) -> Result<Option<Certificate>, StoreError> {
        self.db
            .find_certificate(id.as_str().to_owned(), OffsetDateTime::now_utc())
            .await
    }

    pub async fn count_certificates(&self) -> Result<u64, StoreError> {
        self.db.count_certificates().await
    }

    pub async fn list(
        &self,
        filter: &ListFilter,
        now: OffsetDateTime,
    ) -> Result<Vec<Certificate>, StoreError> {
        self.db.list(filter.clone(), now).await
    }

    pub async fn version(
        &self,
        id: &CertificateId,
        version: u32,
    ) -> Result<Option<StoredVersion>, StoreError> {
        self.db.version(id.clone(), version).await
    }

    /// Decrypts a version's private key. Only `export` and renewal should need this.
    pub fn open_version_key(
        &self,
        id: &CertificateId,
        version: &StoredVersion,
    ) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError> {
        let Some(sealed) = &version.key else {
            return Ok(None);
        };
        Ok(Some(
            self.keyring
                .open(&version_record(id, version.version), sealed)?,
        ))
    }

    fn seal_version_key(
        &self,
        id: &CertificateId,
        version: u32,
        key: Option<Zeroizing<Vec<u8>>>,
    ) -> Result<Option<Sealed>, StoreError> {
        Ok(key
            .map(|k| self.keyring.seal(&version_record(id, version), &k))
            .transpose()?)
    }

    // --- certificate authorities -----------------------------------------------------------

    pub async fn insert_ca(&self, mut new: NewCa) -> Result<(), StoreError> {
        let key = std::mem::take(&mut new.key);
        let sealed = self.keyring.seal(&ca_record(&new.spec.name), &key)?;
        self.write(|reply| Job::InsertCa {
            new: Box::new(new),
            key: sealed,
            reply,
        })
        .await
        .map(drop)
    }

    pub async fn install_ca(&self, name: &str, installed: InstalledCa) -> Result<(), StoreError> {
        let name = name.to_owned();
        self.write(|reply| Job::InstallCa {
            name,
            installed: Box::new(installed),
            reply,
        })
        .await
        .map(drop)
    }

    pub async fn save_crl(
        &self,
        ca: &str,
        number: u64,
        der: Vec<u8>,
        next_update: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let ca = ca.to_owned();
        self.write(|reply| Job::SaveCrl {
            ca,
            number,
            der,
            next_update,
            reply,
        })
        .await
        .map(drop)
    }

    pub async fn cas(&self) -> Result<Vec<StoredCa>, StoreError> {
        self.db.cas().await
    }

    pub async fn ca(&self, name: &str) -> Result<Option<StoredCa>, StoreError> {
        self.db.ca(name.to_owned()).await
    }

    pub async fn set_ca_disabled(&self, name: &str, disabled: bool) -> Result<(), StoreError> {
        let name = name.to_owned();
        self.write(|reply| Job::SetCaDisabled {
            name,
            disabled,
            reply,
        })
        .await
        .map(drop)
    }

    pub fn open_ca_key(&self, ca: &StoredCa) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        Ok(self.keyring.open(&ca_record(&ca.info.name), &ca.key)?)
    }

    pub async fn revocations(
        &self,
        ca: &str,
    ) -> Result<Vec<(Serial, OffsetDateTime, RevocationReason)>, StoreError> {
        self.db.revocations(ca.to_owned()).await
    }

    // --- events and keys -------------------------------------------------------------------

    pub async fn events_after(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<(i64, Event)>, StoreError> {
        self.db.events_after(after, limit).await
    }

    /// Rewraps every data key that is not under the current master key. Returns how many
    /// records were rewrapped. Works in batches so the writer is never held for long.
    pub async fn rotate_master_key(&self) -> Result<u64, StoreError> {
        let current = self.keyring.current_kid().to_owned();
        let mut total = 0;
        loop {
            let batch = self.db.sealed_records(current.clone(), false, 500).await?;
            if batch.is_empty() {
                return Ok(total);
            }
            let mut rewrapped = Vec::with_capacity(batch.len());
            for (record, sealed) in batch {
                let new = self.keyring.rewrap(&record.name(), &sealed)?;
                rewrapped.push((record, new));
            }
            total += rewrapped.len() as u64;
            self.write(|reply| Job::Rewrap {
                rows: rewrapped,
                reply,
            })
            .await?;
        }
    }

    pub async fn key_usage(&self) -> Result<KeyUsage, StoreError> {
        self.db.key_usage().await
    }

    // --- lifecycle -----------------------------------------------------------------------------

    /// Records a fresh look at the CA's renewal window (ARI) and the deadline it leads to,
    /// ending the lease the check ran under.
    pub async fn set_renewal_info(
        &self,
        id: &CertificateId,
        info: Option<crate::model::RenewalInfo>,
        next_action_at: Option<OffsetDateTime>,
    ) -> Result<(), StoreError> {
        let id = id.clone();
        self.write(|reply| Job::SetRenewalInfo {
            id,
            info,
            next_action_at,
            reply,
        })
        .await
        .map(|_| ())
    }

    /// Makes the renewals a previous process leased and never finished due now (it crashed or
    /// was killed mid-renewal); returns how many. Only for start-up.
    pub async fn release_leases(&self, now: OffsetDateTime) -> Result<usize, StoreError> {
        match self
            .write(|reply| Job::ReleaseLeases { now, reply })
            .await?
        {
            Answer::Count(n) => Ok(n),
            other => Err(StoreError::Invalid(format!("release answered {other:?}"))),
        }
    }

    /// Claims up to `limit` certificates whose renewal (or retry) is due, leasing them until
    /// `lease_until`.
    pub async fn claim_due(
        &self,
        now: OffsetDateTime,
        limit: usize,
        lease_until: OffsetDateTime,
    ) -> Result<Vec<CertificateId>, StoreError> {
        // Most passes of the scheduler find nothing due: a read says so without a write.
        if !self.db.anything_due(now).await? {
            return Ok(Vec::new());
        }
        match self
            .write(|reply| Job::ClaimDue {
                now,
                limit,
                lease_until,
                reply,
            })
            .await?
        {
            Answer::Ids(ids) => Ok(ids),
            other => Err(StoreError::Invalid(format!("claim answered {other:?}"))),
        }
    }

    pub async fn renewal_failed(&self, failure: RenewalFailure) -> Result<(), StoreError> {
        self.write(|reply| Job::RenewalFailed {
            failure: Box::new(failure),
            reply,
        })
        .await
        .map(drop)
    }

    /// Marks certificates expired with their events; returns how many changed.
    pub async fn mark_expired(
        &self,
        items: Vec<(CertificateId, Event)>,
        now: OffsetDateTime,
    ) -> Result<usize, StoreError> {
        count(
            self.write(|reply| Job::MarkExpired { items, now, reply })
                .await?,
        )
    }

    /// Records expiry events, one per certificate and UTC day; returns how many were new.
    pub async fn expiry_events(
        &self,
        items: Vec<(CertificateId, i64, Event)>,
    ) -> Result<usize, StoreError> {
        count(
            self.write(|reply| Job::ExpiryEvents { items, reply })
                .await?,
        )
    }

    pub async fn set_next_action(
        &self,
        items: Vec<(CertificateId, Option<OffsetDateTime>)>,
    ) -> Result<usize, StoreError> {
        count(
            self.write(|reply| Job::SetNextAction { items, reply })
                .await?,
        )
    }

    pub async fn set_setting(&self, key: &str, value: &str) -> Result<(), StoreError> {
        let (key, value) = (key.to_owned(), value.to_owned());
        self.write(|reply| Job::SetSetting { key, value, reply })
            .await
            .map(drop)
    }

    pub async fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.db.setting(key.to_owned()).await
    }

    /// The earliest moment the scheduler has work: a due action or an expiry.
    pub async fn next_deadline(&self) -> Result<Deadlines, StoreError> {
        self.db.next_deadline().await
    }

    /// Issued certificates whose not-after has passed.
    pub async fn expired_due(
        &self,
        now: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<Certificate>, StoreError> {
        self.db.expired_due(now, limit).await
    }

    /// Issued, unexpired certificates expiring within `horizon`, for the daily check.
    pub async fn expiry_candidates(
        &self,
        now: OffsetDateTime,
        horizon: time::Duration,
    ) -> Result<Vec<ExpiryCandidate>, StoreError> {
        self.db.expiry_candidates(now, horizon).await
    }

    /// Certificates with a healthy scheduled renewal (not failing, not being renewed), for
    /// planning again after a policy change.
    pub async fn replannable(&self) -> Result<Vec<Replannable>, StoreError> {
        self.db.replannable().await
    }

    /// Counts by status and origin, earliest expiry per origin, failing renewals.
    pub async fn metrics_summary(&self, now: OffsetDateTime) -> Result<MetricsSummary, StoreError> {
        self.db.metrics_summary(now).await
    }

    /// Every certificate's metrics labels and values.
    pub async fn metrics_rows(&self) -> Result<Vec<MetricsRow>, StoreError> {
        self.db.metrics_rows().await
    }

    // --- ACME ----------------------------------------------------------------------------------

    /// The stored account of an ACME issuer: (directory, account URL, credentials JSON).
    /// An issuer's ACME account and its credentials (which hold the account's private key).
    pub async fn acme_account(
        &self,
        issuer: &str,
    ) -> Result<Option<(AcmeAccount, Zeroizing<Vec<u8>>)>, StoreError> {
        let Some((account, sealed)) = self.db.acme_account(issuer.to_owned()).await? else {
            return Ok(None);
        };
        let credentials = self.keyring.open(&acme_account_record(issuer), &sealed)?;
        Ok(Some((account, credentials)))
    }

    /// Every stored ACME account, without credentials.
    pub async fn acme_accounts(&self) -> Result<Vec<AcmeAccount>, StoreError> {
        self.db.acme_accounts().await
    }

    /// Stores (or replaces) an ACME account; the credentials hold its private key and are sealed.
    /// Its pending key, if any, is removed in the same transaction: the key just stored is the
    /// account's (after a rollover, the pending one made current).
    pub async fn save_acme_account(
        &self,
        account: AcmeAccount,
        credentials: &[u8],
    ) -> Result<(), StoreError> {
        let credentials = self
            .keyring
            .seal(&acme_account_record(&account.issuer), credentials)?;
        self.write(|reply| Job::SaveAcmeAccount {
            account: Box::new(account),
            credentials,
            reply,
        })
        .await
        .map(drop)
    }

    /// The credentials with the next key of an issuer's account, stored before a key rollover
    /// asks the CA to switch (see `acme::Acme::rollover_key`), if one is left.
    pub async fn acme_pending_key(
        &self,
        issuer: &str,
    ) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError> {
        let Some(sealed) = self.db.acme_pending_key(issuer.to_owned()).await? else {
            return Ok(None);
        };
        Ok(Some(
            self.keyring
                .open(&acme_pending_key_record(issuer), &sealed)?,
        ))
    }

    /// Stores (sealed) credentials with the next key of `issuer`'s account; the account must
    /// be stored.
    pub async fn save_acme_pending_key(
        &self,
        issuer: &str,
        credentials: &[u8],
    ) -> Result<(), StoreError> {
        let sealed = self
            .keyring
            .seal(&acme_pending_key_record(issuer), credentials)?;
        self.set_acme_pending_key(issuer, Some(sealed)).await
    }

    /// Forgets `issuer`'s pending account key (the CA kept the current one).
    pub async fn drop_acme_pending_key(&self, issuer: &str) -> Result<(), StoreError> {
        self.set_acme_pending_key(issuer, None).await
    }

    async fn set_acme_pending_key(
        &self,
        issuer: &str,
        credentials: Option<Sealed>,
    ) -> Result<(), StoreError> {
        self.write(|reply| Job::SetAcmePendingKey {
            issuer: issuer.to_owned(),
            credentials,
            reply,
        })
        .await
        .map(drop)
    }

    /// The order in flight for a certificate: (issuer, order URL, the new key as PKCS#8).
    pub async fn acme_order(
        &self,
        id: &CertificateId,
    ) -> Result<Option<(String, String, Zeroizing<Vec<u8>>)>, StoreError> {
        let Some((issuer, url, sealed)) = self.db.acme_order(id.clone()).await? else {
            return Ok(None);
        };
        let key = self.keyring.open(&acme_order_record(id), &sealed)?;
        Ok(Some((issuer, url, key)))
    }

    /// Records an order and its new key before any challenge is answered.
    pub async fn save_acme_order(
        &self,
        id: &CertificateId,
        issuer: &str,
        order_url: &str,
        key: &[u8],
    ) -> Result<(), StoreError> {
        let key = self.keyring.seal(&acme_order_record(id), key)?;
        let (id, issuer, order_url) = (id.clone(), issuer.to_owned(), order_url.to_owned());
        self.write(|reply| Job::SaveAcmeOrder {
            id,
            issuer,
            order_url,
            key,
            reply,
        })
        .await
        .map(drop)
    }

    pub async fn delete_acme_order(&self, id: &CertificateId) -> Result<(), StoreError> {
        let id = id.clone();
        self.write(|reply| Job::DeleteAcmeOrder { id, reply })
            .await
            .map(drop)
    }

    /// Records `record` before it is published (`true`), or forgets it once withdrawn.
    pub async fn set_challenge_record(
        &self,
        record: &ChallengeRecord,
        present: bool,
    ) -> Result<(), StoreError> {
        let record = Box::new(record.clone());
        self.write(|reply| Job::SetChallengeRecord {
            record,
            present,
            at: OffsetDateTime::now_utc(),
            reply,
        })
        .await
        .map(drop)
    }

    /// The certificates with an ACME order kept for the next attempt, oldest order first.
    pub async fn kept_acme_orders(&self) -> Result<Vec<CertificateId>, StoreError> {
        self.db.kept_acme_orders().await
    }

    /// Every challenge record published and not yet withdrawn, with whether its order is still
    /// the one stored for its certificate (`true`: it may still be needed).
    pub async fn challenge_records(&self) -> Result<Vec<(ChallengeRecord, bool)>, StoreError> {
        self.db.challenge_records().await
    }

    /// Moves a certificate from `from` to `status`; returns whether it changed.
    pub async fn set_status(
        &self,
        id: &CertificateId,
        from: Status,
        status: Status,
        next_action_at: Option<OffsetDateTime>,
        event: Option<Event>,
    ) -> Result<bool, StoreError> {
        let id = id.clone();
        let n = count(
            self.write(|reply| Job::SetStatus {
                id,
                status,
                from,
                next_action_at,
                event,
                reply,
            })
            .await?,
        )?;
        Ok(n == 1)
    }

    /// Whether the writer answers within `timeout`: it goes round, between batches (the
    /// watchdog asks).
    pub async fn writer_alive(&self, timeout: std::time::Duration) -> bool {
        let ping = self.write(|reply| Job::Ping { reply });
        matches!(tokio::time::timeout(timeout, ping).await, Ok(Ok(_)))
    }

    /// Notified after each commit that inserted events; event sinks wait on it instead of
    /// polling.
    pub fn events_committed(&self) -> Arc<tokio::sync::Notify> {
        self.events_committed.clone()
    }

    pub async fn sink_cursor(&self, sink: &str) -> Result<Option<i64>, StoreError> {
        self.db.sink_cursor(sink.to_owned()).await
    }

    pub async fn set_sink_cursor(&self, sink: &str, seq: i64) -> Result<(), StoreError> {
        let sink = sink.to_owned();
        self.write(|reply| Job::SetSinkCursor { sink, seq, reply })
            .await
            .map(drop)
    }

    /// The newest event's cursor (0 when there are none).
    pub async fn last_event_seq(&self) -> Result<i64, StoreError> {
        self.db.last_event_seq().await
    }

    /// Deletes events older than `before` that every sink has (`seq <= max_seq`).
    pub async fn prune_events(
        &self,
        before: OffsetDateTime,
        max_seq: i64,
    ) -> Result<usize, StoreError> {
        count(
            self.write(|reply| Job::PruneEvents {
                before,
                max_seq,
                reply,
            })
            .await?,
        )
    }

    /// Stores one audit record, dropping a few of the oldest from before `prune_before`.
    pub async fn audit(
        &self,
        record: crate::audit::Record,
        prune_before: OffsetDateTime,
    ) -> Result<(), StoreError> {
        self.write(|reply| Job::Audit {
            record: Box::new(record),
            prune_before,
            reply,
        })
        .await
        .map(drop)
    }

    /// Audit records after `after` (a seq; 0 for the first), oldest first.
    pub async fn audit_after(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<crate::audit::Entry>, StoreError> {
        self.db.audit_after(after, limit).await
    }

    /// Events waiting for delivery to `sink` (after its cursor).
    pub async fn outbox_depth(&self, sink: &str) -> Result<i64, StoreError> {
        let cursor = self.sink_cursor(sink).await?.unwrap_or(0);
        self.db.events_count_after(cursor).await
    }

    /// Queues one write and waits until it is committed.
    async fn write(&self, job: impl FnOnce(writer::Reply) -> Job) -> Result<Answer, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.writer
            .send(job(tx))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }
}

/// Opens the database and checks it before anything uses it: `PRAGMA quick_check`, then its
/// commit count against the high-water mark (kept only with `synchronous = full`, see
/// `high_water.rs`). Logs what it holds.
fn open_checked(
    path: &Path,
    synchronous: Synchronous,
) -> Result<(sqlite::Db, rusqlite::Connection, Option<HighWater>), StoreError> {
    let (db, conn) = sqlite::Db::open(path, synchronous)?;
    let started = Instant::now();
    let census = sqlite::check(&conn, path)?;
    let check_ms = started.elapsed().as_millis() as u64;
    let mark = HighWater::beside(path);
    let mark = match (synchronous, mark.verify(path, census.commits)) {
        (Synchronous::Full, Ok(Verified::Checked)) => Some(mark),
        (Synchronous::Full, Ok(Verified::Started)) => {
            info!(mark = %mark.path().display(), commits = census.commits, "no high-water mark yet; starting one from the database as it is");
            Some(mark)
        }
        (Synchronous::Full, Err(err)) => return Err(err),
        // Unsynced commits may be lost to a power cut: no mark to keep, and one found (from
        // a time with `full`) only warns.
        (Synchronous::Normal, verified) => {
            if let Err(err) = verified {
                warn!(error = %err, "store.synchronous = normal: starting anyway");
            }
            None
        }
    };
    info!(
        store = %path.display(),
        certificates = census.certificates,
        last_event_seq = census.last_event_seq,
        commits = census.commits,
        check_ms,
        "store checked"
    );
    Ok((db, conn, mark))
}

/// Which sealed row a key belongs to; its name is also the AEAD associated data.
#[derive(Clone, Debug)]
pub(crate) enum SealedRecord {
    Version(CertificateId, u32),
    Ca(String),
    AcmeAccount(String),
    AcmePendingKey(String),
    AcmeOrder(CertificateId),
}

impl SealedRecord {
    fn name(&self) -> String {
        match self {
            Self::Version(id, v) => version_record(id, *v),
            Self::Ca(name) => ca_record(name),
            Self::AcmeAccount(issuer) => acme_account_record(issuer),
            Self::AcmePendingKey(issuer) => acme_pending_key_record(issuer),
            Self::AcmeOrder(id) => acme_order_record(id),
        }
    }
}

fn acme_account_record(issuer: &str) -> String {
    format!("acme-account/{issuer}")
}

fn acme_pending_key_record(issuer: &str) -> String {
    format!("acme-account-pending/{issuer}")
}

fn acme_order_record(id: &CertificateId) -> String {
    format!("acme-order/{id}")
}

fn version_record(id: &CertificateId, version: u32) -> String {
    format!("{id}/v{version}")
}

fn ca_record(name: &str) -> String {
    format!("ca/{name}")
}

fn count(answer: Answer) -> Result<usize, StoreError> {
    match answer {
        Answer::Count(n) => Ok(n),
        other => Err(StoreError::Invalid(format!(
            "expected a count, got {other:?}"
        ))),
    }
}
impl crate::events::outbox::OutboxError for StoreError {
    fn is_corrupt(&self) -> bool {
        Self::is_corrupt(self)
    }
}

/// The outbox, as event delivery sees it ([`crate::events::outbox`]).
impl crate::events::outbox::Outbox for Store {
    type Error = StoreError;

    fn committed(&self) -> Arc<tokio::sync::Notify> {
        self.events_committed()
    }

    async fn events_after(&self, after: i64, limit: u32) -> Result<Vec<(i64, Event)>, StoreError> {
        Self::events_after(self, after, limit).await
    }

    async fn cursor(&self, sink: &str) -> Result<Option<i64>, StoreError> {
        self.sink_cursor(sink).await
    }

    async fn set_cursor(&self, sink: &str, seq: i64) -> Result<(), StoreError> {
        self.set_sink_cursor(sink, seq).await
    }

    async fn last_seq(&self) -> Result<i64, StoreError> {
        self.last_event_seq().await
    }

    async fn prune(&self, before: OffsetDateTime, max_seq: i64) -> Result<usize, StoreError> {
        self.prune_events(before, max_seq).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Domain, KeyAlgorithm, Origin, RevocationReason, Serial, Status};

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    async fn open(dir: &Path) -> Store {
        let keyring = Keyring::from_bytes(&[7; 32]);
        Store::open(&dir.join("db.sqlite"), Synchronous::Full, keyring)
            .await
            .unwrap()
    }

    fn version(serial: &str, now: OffsetDateTime) -> NewVersion {
        NewVersion {
            serial: Serial::parse(serial).unwrap(),
            issuer_ca: None,
            not_before: now,
            not_after: now + time::Duration::days(30),
            cert_pem: String::new(),
            chain_pem: String::new(),
            key: None,
        }
    }

    /// A private certificate with its first version (serial 01), as `request` stores one.
    async fn issued(store: &Store, now: OffsetDateTime) -> CertificateId {
        let id = CertificateId::generate();
        let new = NewCertificate {
            id: id.clone(),
            name: "race.internal".into(),
            name_is_default: false,
            origin: Origin::Private,
            status: Status::Issued,
            issuer: "default".into(),
            domains: vec![Domain::Dns("race.internal".into())],
            key_algorithm: KeyAlgorithm::EcP256,
            validity: None,
            client_auth: false,
            tags: BTreeMap::new(),
            renew_before: None,
            days_before_expiry: None,
            maintenance_window: None,
            next_action_at: Some(now + time::Duration::days(20)),
            validation: None,
            version: Some(version("01", now)),
            event: None,
        };
        store.insert_certificates(vec![new]).await.unwrap();
        id
    }

    fn renewal(serial: &str, now: OffsetDateTime) -> VersionChange {
        VersionChange {
            version: 2,
            new: version(serial, now),
            status: Status::Issued,
            event: None,
            names: None,
            next_action_at: Some(now + time::Duration::days(20)),
            renewal_info: None,
        }
    }

    /// Found by the crash torture (tests/torture/run): a renewal that read the certificate
    /// before a revocation and stored its version after it made the certificate `issued`
    /// again, with a new version on no revocation list, renewing from then on. A revoked
    /// certificate takes no new version.
    #[test]
    fn a_renewal_finishing_after_a_revocation_does_not_unrevoke_the_certificate() {
        let dir = tempfile::tempdir().unwrap();
        runtime().block_on(async {
            let store = open(dir.path()).await;
            let now = OffsetDateTime::now_utc();
            let id = issued(&store, now).await;
            // The renewal has read version 1 and signed version 2; then the revocation commits.
            store
                .revoke(&id, 1, RevocationReason::KeyCompromise, vec![], None, now)
                .await
                .unwrap();
            let err = store
                .add_version(&id, renewal("02", now))
                .await
                .unwrap_err();
            assert!(matches!(err, StoreError::Revoked(_)), "{err}");
            let cert = store.certificate(&id).await.unwrap().unwrap();
            assert_eq!(cert.status, Status::Revoked);
            assert_eq!(cert.current_version, 1);
            assert_eq!(
                cert.next_renewal_at, None,
                "nothing renews a revoked certificate"
            );
        });
    }

    /// The other order of the same race: a revocation that read version 1 and commits after
    /// a renewal stored version 2 would mark the certificate revoked with version 2 on no
    /// revocation list (and, for ACME, not revoked at the CA). It is refused, for the caller
    /// to read again.
    #[test]
    fn a_revocation_of_a_version_no_longer_current_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        runtime().block_on(async {
            let store = open(dir.path()).await;
            let now = OffsetDateTime::now_utc();
            let id = issued(&store, now).await;
            store.add_version(&id, renewal("02", now)).await.unwrap();
            let err = store
                .revoke(&id, 1, RevocationReason::KeyCompromise, vec![], None, now)
                .await
                .unwrap_err();
            assert!(matches!(err, StoreError::Conflict(_)), "{err}");
            assert_eq!(
                store.certificate(&id).await.unwrap().unwrap().status,
                Status::Issued
            );
            store
                .revoke(&id, 2, RevocationReason::KeyCompromise, vec![], None, now)
                .await
                .unwrap();
        });
    }

    /// Found by the crash torture: a manual renewal of a public certificate deleted while its
    /// order was being created failed on the order's foreign key, a 500 `internal` with
    /// "FOREIGN KEY constraint failed" in the log. The certificate is simply not found.
    #[test]
    fn an_order_for_a_deleted_certificate_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        runtime().block_on(async {
            let store = open(dir.path()).await;
            let id = issued(&store, OffsetDateTime::now_utc()).await;
            store.delete(&id).await.unwrap();
            let err = store
                .save_acme_order(&id, "pebble", "https://ca.test/order/1", b"key")
                .await
                .unwrap_err();
            assert!(matches!(err, StoreError::NotFound(_)), "{err}");
        });
    }
}
