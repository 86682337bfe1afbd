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

pub mod seal;
mod sqlite;
mod writer;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};
use zeroize::Zeroizing;

use crate::config::Synchronous;
use crate::model::{
    CaInfo, CaSpec, Certificate, CertificateId, Event, KeyAlgorithm, Origin, RevocationReason,
    Serial, Status,
};
pub use seal::{Keyring, SealError, Sealed};
pub use sqlite::ListFilter;
use writer::Job;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {path}: {source}")]
    Open {
        path: String,
        source: rusqlite::Error,
    },
    #[error("database error: {0}")]
    Database(#[from] rusqlite::Error),
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error("a certificate named {0:?} already exists")]
    NameTaken(String),
    #[error("{0} changed while this operation ran; try again")]
    Conflict(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("stored data is invalid: {0}")]
    Invalid(String),
    #[error("the store is shutting down")]
    Closed,
}

/// A certificate to create, with its first version.
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
    pub version: NewVersion,
    pub event: Option<Event>,
}

impl NewCertificate {
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
            serial: self.version.serial.clone(),
            not_before: self.version.not_before,
            not_after: self.version.not_after,
            current_version: 1,
            validity: self.validity,
            client_auth: self.client_auth,
            tags: self.tags.clone(),
            created_at: now,
            updated_at: now,
            revoked_at: None,
            revocation_reason: None,
            versions: vec![crate::model::VersionInfo {
                version: 1,
                serial: self.version.serial.clone(),
                not_before: self.version.not_before,
                not_after: self.version.not_after,
                issuer_ca: self.version.issuer_ca.clone(),
                key_held: self.version.key.is_some(),
                created_at: now,
            }],
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

#[derive(Clone)]
pub struct Store {
    db: sqlite::Db,
    writer: mpsc::Sender<Job>,
    keyring: Arc<Keyring>,
}

impl Store {
    /// Opens (creating if needed) the database and runs pending migrations. The writer thread
    /// stops when the last `Store` clone is dropped.
    pub async fn open(
        path: &Path,
        synchronous: Synchronous,
        keyring: Keyring,
    ) -> Result<Store, StoreError> {
        let path = path.to_owned();
        let (db, conn) = tokio::task::spawn_blocking(move || sqlite::Db::open(&path, synchronous))
            .await
            .map_err(|e| StoreError::Invalid(format!("open task failed: {e}")))??;
        let writer = writer::spawn(conn)?;
        Ok(Store {
            db,
            writer,
            keyring: Arc::new(keyring),
        })
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

    pub async fn insert_certificate(
        &self,
        mut new: NewCertificate,
    ) -> Result<Certificate, StoreError> {
        let sealed = self.seal_version_key(&new.id, 1, new.version.key.take())?;
        // Build the answer from what we wrote instead of reading it back: issuance is the hot
        // path, and the only thing the writer may change is the name.
        let mut cert = new.certificate(OffsetDateTime::now_utc());
        let name = self
            .write(|reply| Job::InsertCertificate {
                new: Box::new(new),
                key: sealed,
                reply,
            })
            .await?;
        cert.name = name.unwrap_or(cert.name);
        Ok(cert)
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

    pub async fn revoke(
        &self,
        id: &CertificateId,
        reason: RevocationReason,
        revocations: Vec<Revocation>,
        event: Option<Event>,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let id = id.clone();
        self.write(|reply| Job::Revoke {
            id,
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

    /// SQLite's own consistency check; "ok" when the file is sound.
    pub async fn integrity_check(&self) -> Result<String, StoreError> {
        self.db.integrity_check().await
    }

    /// Queues one write and waits until it is committed. Answers the name an inserted
    /// certificate got; `None` for other writes.
    async fn write(
        &self,
        job: impl FnOnce(writer::Reply) -> Job,
    ) -> Result<Option<String>, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.writer
            .send(job(tx))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }
}

/// Which sealed row a key belongs to; its name is also the AEAD associated data.
#[derive(Clone, Debug)]
pub(crate) enum SealedRecord {
    Version(CertificateId, u32),
    Ca(String),
}

impl SealedRecord {
    fn name(&self) -> String {
        match self {
            SealedRecord::Version(id, v) => version_record(id, *v),
            SealedRecord::Ca(name) => ca_record(name),
        }
    }
}

fn version_record(id: &CertificateId, version: u32) -> String {
    format!("{id}/v{version}")
}

fn ca_record(name: &str) -> String {
    format!("ca/{name}")
}
