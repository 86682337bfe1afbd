//! The single writer: every change to the database goes through this thread.
//!
//! Why one writer: SQLite allows one writer at a time anyway, and funnelling writes through one
//! thread turns contention into batching. The loop takes the first queued job, then whatever
//! else is already waiting (up to `MAX_BATCH`), runs them in one transaction, commits once, and
//! only then answers every caller. When a batch holds several jobs each gets a savepoint: a job
//! that fails rolls back to its own savepoint and gets its own error; the others still commit.
//! A caller that got `Ok` knows its write is durable (subject to `store.synchronous`).
//!
//! Why a thread and not a task: statements run synchronously on the connection, so a job costs
//! two thread hand-offs (queue in, answer out) however many statements it runs.

use std::collections::BTreeMap;

use rusqlite::hooks::Action;
use rusqlite::{Connection, ErrorCode, OptionalExtension, TransactionBehavior, params};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use time::OffsetDateTime;

use tokio::sync::{Notify, mpsc, oneshot, watch};
use tracing::error;

use super::high_water::HighWater;
use super::{
    InstalledCa, NewCa, NewCertificate, NewVersion, RenewalFailure, Revocation, Sealed,
    SealedRecord, StoreError, VersionChange,
};
use crate::events::Event;
use crate::model::{CaState, CertificateId, RevocationReason, Status, unix};

/// The most jobs committed together. Large enough to amortise an fsync under load, small
/// enough that one transaction never holds the write lock for long.
const MAX_BATCH: usize = 256;

/// What a committed job answers.
#[derive(Debug)]
pub(super) enum Answer {
    Done,
    /// The names inserted certificates got, in order.
    Names(Vec<String>),
    /// The certificates a claim took.
    Ids(Vec<CertificateId>),
    /// How many rows a bulk job changed.
    Count(usize),
}

pub(super) type Reply = oneshot::Sender<Result<Answer, StoreError>>;

pub(super) enum Job {
    /// No change: answered between batches, so an answer says the writer goes round (the
    /// watchdog asks). Never part of a transaction.
    Ping {
        reply: Reply,
    },
    /// Certificates with their first version's sealed key, all or none.
    InsertCertificates {
        items: Vec<(NewCertificate, Option<Sealed>)>,
        reply: Reply,
    },
    AddVersion {
        id: CertificateId,
        change: Box<VersionChange>,
        key: Option<Sealed>,
        reply: Reply,
    },
    Revoke {
        id: CertificateId,
        version: u32,
        reason: RevocationReason,
        revocations: Vec<Revocation>,
        event: Option<Event>,
        now: OffsetDateTime,
        reply: Reply,
    },
    Delete {
        id: CertificateId,
        reply: Reply,
    },
    SetTags {
        id: CertificateId,
        set: BTreeMap<String, String>,
        remove: Vec<String>,
        reply: Reply,
    },
    InsertCa {
        new: Box<NewCa>,
        key: Sealed,
        reply: Reply,
    },
    InstallCa {
        name: String,
        installed: Box<InstalledCa>,
        reply: Reply,
    },
    SaveCrl {
        ca: String,
        number: u64,
        der: Vec<u8>,
        next_update: OffsetDateTime,
        reply: Reply,
    },
    Rewrap {
        rows: Vec<(SealedRecord, Sealed)>,
        reply: Reply,
    },
    ClaimDue {
        now: OffsetDateTime,
        limit: usize,
        lease_until: OffsetDateTime,
        reply: Reply,
    },
    RenewalFailed {
        failure: Box<RenewalFailure>,
        reply: Reply,
    },
    ReleaseLeases {
        now: OffsetDateTime,
        reply: Reply,
    },
    SetRenewalInfo {
        id: CertificateId,
        info: Option<crate::model::RenewalInfo>,
        next_action_at: Option<OffsetDateTime>,
        reply: Reply,
    },
    MarkExpired {
        items: Vec<(CertificateId, Event)>,
        now: OffsetDateTime,
        reply: Reply,
    },
    ExpiryEvents {
        items: Vec<(CertificateId, i64, Event)>,
        reply: Reply,
    },
    SetNextAction {
        items: Vec<(CertificateId, Option<OffsetDateTime>)>,
        reply: Reply,
    },
    SetSetting {
        key: String,
        value: String,
        reply: Reply,
    },
    SetCaDisabled {
        name: String,
        disabled: bool,
        reply: Reply,
    },
    SetSinkCursor {
        sink: String,
        seq: i64,
        reply: Reply,
    },
    PruneEvents {
        before: OffsetDateTime,
        max_seq: i64,
        reply: Reply,
    },
    /// One audit record; the oldest records before `prune_before` go, a few per record.
    Audit {
        record: Box<crate::audit::Record>,
        prune_before: OffsetDateTime,
        reply: Reply,
    },
    SaveAcmeAccount {
        account: Box<super::AcmeAccount>,
        credentials: Sealed,
        reply: Reply,
    },
    /// Stores (`Some`) or removes an ACME account's pending key.
    SetAcmePendingKey {
        issuer: String,
        credentials: Option<Sealed>,
        reply: Reply,
    },
    SaveAcmeOrder {
        id: CertificateId,
        issuer: String,
        order_url: String,
        key: Sealed,
        reply: Reply,
    },
    DeleteAcmeOrder {
        id: CertificateId,
        reply: Reply,
    },
    /// Records a challenge record about to be published (`present`), or forgets a withdrawn one.
    SetChallengeRecord {
        record: Box<super::ChallengeRecord>,
        present: bool,
        at: OffsetDateTime,
        reply: Reply,
    },
    SetStatus {
        id: CertificateId,
        status: Status,
        /// Only when the certificate is still in this status (no race with an issuance).
        from: Status,
        next_action_at: Option<OffsetDateTime>,
        event: Option<Event>,
        reply: Reply,
    },
}

impl Job {
    fn reply(self) -> Reply {
        match self {
            Self::InsertCertificates { reply, .. }
            | Self::AddVersion { reply, .. }
            | Self::Revoke { reply, .. }
            | Self::Delete { reply, .. }
            | Self::SetTags { reply, .. }
            | Self::InsertCa { reply, .. }
            | Self::InstallCa { reply, .. }
            | Self::SaveCrl { reply, .. }
            | Self::Rewrap { reply, .. }
            | Self::ClaimDue { reply, .. }
            | Self::RenewalFailed { reply, .. }
            | Self::ReleaseLeases { reply, .. }
            | Self::SetRenewalInfo { reply, .. }
            | Self::MarkExpired { reply, .. }
            | Self::ExpiryEvents { reply, .. }
            | Self::SetNextAction { reply, .. }
            | Self::SetSetting { reply, .. }
            | Self::SetCaDisabled { reply, .. }
            | Self::SetSinkCursor { reply, .. }
            | Self::PruneEvents { reply, .. }
            | Self::Audit { reply, .. }
            | Self::SaveAcmeAccount { reply, .. }
            | Self::SetAcmePendingKey { reply, .. }
            | Self::SaveAcmeOrder { reply, .. }
            | Self::DeleteAcmeOrder { reply, .. }
            | Self::SetChallengeRecord { reply, .. }
            | Self::SetStatus { reply, .. }
            | Self::Ping { reply } => reply,
        }
    }
}

/// What the writer says about itself: `Some` once it stopped taking writes, with the error of
/// the commit whose outcome is unknown.
pub(super) type Stopped = watch::Receiver<Option<Arc<rusqlite::Error>>>;

/// Starts the writer thread on `conn`. It ends when every sender (every `Store` clone) is gone.
/// `events_committed` is notified after a commit that inserted events, so event sinks wake up
/// for them (and only for them: most commits carry none). Each commit's number goes to `mark`
/// before anyone hears of the commit.
pub(super) fn spawn(
    mut conn: Connection,
    events_committed: Arc<Notify>,
    mark: Option<HighWater>,
) -> Result<(mpsc::Sender<Job>, Stopped), StoreError> {
    let (tx, mut rx) = mpsc::channel::<Job>(4 * MAX_BATCH);
    let (stop, stopped) = watch::channel(None);
    // Set by SQLite for every row inserted into `events`, whatever statement did it. A job
    // rolled back to its savepoint may leave it set: a sink then looks and finds nothing new.
    let inserted = Arc::new(AtomicBool::new(false));
    let flag = inserted.clone();
    conn.update_hook(Some(move |action, _db: &str, table: &str, _row| {
        if action == Action::SQLITE_INSERT && table == "events" {
            flag.store(true, Ordering::Relaxed);
        }
    }))
    .map_err(StoreError::from)?;
    let writer = Writer {
        conn,
        inserted,
        events_committed,
        mark,
    };
    std::thread::Builder::new()
        .name("certkeeper-store".into())
        .spawn(move || {
            if let Some(failure) = writer.run(&mut rx) {
                error!(error = %failure, "a commit failed with an I/O error; the store takes no more writes, and certkeeper stops so that SQLite recovers from what is on disk");
                let _ = stop.send(Some(failure.clone()));
                refuse_all(&mut rx, &failure);
            }
        })
        .map_err(|e| StoreError::Invalid(format!("cannot start the store writer: {e}")))?;
    Ok((tx, stopped))
}

/// The write connection and what a commit tells.
struct Writer {
    conn: Connection,
    inserted: Arc<AtomicBool>,
    events_committed: Arc<Notify>,
    mark: Option<HighWater>,
}

impl Writer {
    /// Commits batches until every sender is gone (`None`), or until a commit's outcome is
    /// unknown: then it returns that commit's error and takes nothing more from the queue.
    fn run(mut self, rx: &mut mpsc::Receiver<Job>) -> Option<Arc<rusqlite::Error>> {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while let Some(first) = rx.blocking_recv() {
            answer_or_queue(first, &mut batch);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(job) => answer_or_queue(job, &mut batch),
                    Err(_) => break,
                }
            }
            if batch.is_empty() {
                continue;
            }
            self.inserted.store(false, Ordering::Relaxed);
            match self.commit_batch(&mut batch) {
                Outcome::Committed if self.inserted.load(Ordering::Relaxed) => {
                    self.events_committed.notify_waiters();
                }
                Outcome::Committed | Outcome::NotCommitted => {}
                Outcome::Unknown(failure) => return Some(failure),
            }
        }
        None
    }

    /// Runs `batch` in one transaction and answers every job. Empties `batch`.
    fn commit_batch(&mut self, batch: &mut Vec<Job>) -> Outcome {
        let mut answers: Vec<(Reply, Result<Answer, StoreError>)> = Vec::with_capacity(batch.len());
        let failed = match transact(&mut self.conn, batch, &mut answers) {
            Ok(Some(commit)) => {
                // Recorded before anyone is told: every acknowledged commit is under the mark.
                if let Some(mark) = &self.mark
                    && let Err(err) = mark.record(commit)
                {
                    error!(error = %err, commit, "cannot record the last commit; a later rollback of the database may go unnoticed");
                }
                for (reply, result) in answers {
                    let _ = reply.send(result);
                }
                return Outcome::Committed;
            }
            Ok(None) => {
                for (reply, result) in answers {
                    let _ = reply.send(result);
                }
                return Outcome::NotCommitted;
            }
            Err(failed) => failed,
        };
        // Nothing in this batch is known durable: every caller hears so, including those whose
        // own step succeeded, and jobs not reached yet.
        let (err, unknown) = match failed {
            Failed::Commit(err) => {
                let unknown = err.sqlite_error_code() == Some(ErrorCode::SystemIoFailure);
                (Arc::new(err), unknown)
            }
            Failed::Work(err) => (Arc::new(err), false),
        };
        let fail = || {
            Err(if unknown {
                StoreError::OutcomeUnknown(err.clone())
            } else {
                rolled_back(&err)
            })
        };
        for (reply, _) in answers {
            let _ = reply.send(fail());
        }
        for job in batch.drain(..) {
            let _ = job.reply().send(fail());
        }
        if unknown {
            Outcome::Unknown(err)
        } else {
            Outcome::NotCommitted
        }
    }
}

/// How a batch ended.
enum Outcome {
    Committed,
    /// Rolled back: nothing of it was written.
    NotCommitted,
    /// The commit failed with an I/O error: it may or may not be on disk.
    Unknown(Arc<rusqlite::Error>),
}

/// Where a batch's transaction failed.
enum Failed {
    /// Before COMMIT: the transaction is rolled back, nothing was written.
    Work(rusqlite::Error),
    /// COMMIT itself. A full disk is rolled back too (the commit frame never got whole to the
    /// WAL); an I/O error, a failed fsync above all, leaves its frames in the WAL, where
    /// recovery may find them after a restart.
    Commit(rusqlite::Error),
}

/// Runs the jobs in one transaction, their answers into `answers`; returns the commit's
/// number, or `None` when the one job of a batch failed (rolled back).
fn transact(
    conn: &mut Connection,
    batch: &mut Vec<Job>,
    answers: &mut Vec<(Reply, Result<Answer, StoreError>)>,
) -> Result<Option<u64>, Failed> {
    let single = batch.len() == 1;
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(Failed::Work)?;
    for job in batch.drain(..) {
        if single {
            // Alone in its transaction: no savepoint needed; on failure, returning without
            // commit drops `tx`, which rolls the one job back.
            let (reply, result) = apply(&tx, job);
            let failed = result.is_err();
            answers.push((reply, result));
            if failed {
                return Ok(None);
            }
        } else {
            tx.execute_batch("SAVEPOINT job").map_err(Failed::Work)?;
            let (reply, result) = apply(&tx, job);
            let undo = if result.is_ok() {
                "RELEASE job"
            } else {
                "ROLLBACK TO job; RELEASE job"
            };
            tx.execute_batch(undo).map_err(Failed::Work)?;
            answers.push((reply, result));
        }
    }
    let commit = count_commit(&tx).map_err(Failed::Work)?;
    tx.commit().map_err(Failed::Commit)?;
    Ok(Some(commit))
}

/// Numbers this commit, in the same transaction: the database's own count of its commits,
/// which the high-water mark outside it is checked against at start.
fn count_commit(tx: &Connection) -> rusqlite::Result<u64> {
    let n: i64 = tx
        .prepare_cached("UPDATE commits SET count = count + 1 WHERE id = 1 RETURNING count")?
        .query_row([], |r| r.get(0))?;
    Ok(n.max(0) as u64)
}

/// The error every job of a batch rolled back by `err` gets.
fn rolled_back(err: &Arc<rusqlite::Error>) -> StoreError {
    match err.sqlite_error_code() {
        Some(ErrorCode::DiskFull) => StoreError::Full(err.clone()),
        Some(ErrorCode::SystemIoFailure) => StoreError::Io(err.clone()),
        _ => StoreError::Invalid(format!("commit failed: {err}")),
    }
}

/// Once stopped: every write is refused, and pings still answer (the writer is not stuck).
fn refuse_all(rx: &mut mpsc::Receiver<Job>, failure: &Arc<rusqlite::Error>) {
    while let Some(job) = rx.blocking_recv() {
        let answer = match job {
            Job::Ping { .. } => Ok(Answer::Done),
            _ => Err(StoreError::WriterStopped(failure.clone())),
        };
        let _ = job.reply().send(answer);
    }
}

/// A ping is answered at once; any other job waits for its batch.
fn answer_or_queue(job: Job, batch: &mut Vec<Job>) {
    match job {
        Job::Ping { reply } => {
            let _ = reply.send(Ok(Answer::Done));
        }
        job => batch.push(job),
    }
}

fn apply(conn: &Connection, job: Job) -> (Reply, Result<Answer, StoreError>) {
    let none = |r: Result<(), StoreError>| r.map(|()| Answer::Done);
    match job {
        Job::InsertCertificates { items, reply } => (
            reply,
            items
                .into_iter()
                .map(|(new, key)| insert_certificate(conn, new, key))
                .collect::<Result<_, _>>()
                .map(Answer::Names),
        ),
        Job::AddVersion {
            id,
            change,
            key,
            reply,
        } => (reply, none(add_version(conn, &id, *change, key))),
        Job::Revoke {
            id,
            version,
            reason,
            revocations,
            event,
            now,
            reply,
        } => (
            reply,
            none(revoke(
                conn,
                (&id, version),
                reason,
                &revocations,
                event.as_ref(),
                now,
            )),
        ),
        Job::Delete { id, reply } => (reply, none(delete(conn, &id))),
        Job::SetTags {
            id,
            set,
            remove,
            reply,
        } => (reply, none(set_tags(conn, &id, &set, &remove))),
        Job::InsertCa { new, key, reply } => (reply, none(insert_ca(conn, &new, key))),
        Job::InstallCa {
            name,
            installed,
            reply,
        } => (reply, none(install_ca(conn, &name, &installed))),
        Job::SaveCrl {
            ca,
            number,
            der,
            next_update,
            reply,
        } => (reply, none(save_crl(conn, &ca, number, &der, next_update))),
        Job::Rewrap { rows, reply } => (reply, none(rewrap(conn, rows))),
        Job::ClaimDue {
            now,
            limit,
            lease_until,
            reply,
        } => (
            reply,
            claim_due(conn, now, limit, lease_until).map(Answer::Ids),
        ),
        Job::RenewalFailed { failure, reply } => (reply, none(renewal_failed(conn, &failure))),
        Job::ReleaseLeases { now, reply } => (reply, release_leases(conn, now).map(Answer::Count)),
        Job::SetRenewalInfo {
            id,
            info,
            next_action_at,
            reply,
        } => (
            reply,
            none(set_renewal_info(conn, &id, info.as_ref(), next_action_at)),
        ),
        Job::MarkExpired { items, now, reply } => {
            (reply, mark_expired(conn, &items, now).map(Answer::Count))
        }
        Job::ExpiryEvents { items, reply } => {
            (reply, expiry_events(conn, &items).map(Answer::Count))
        }
        Job::SetNextAction { items, reply } => {
            (reply, set_next_action(conn, &items).map(Answer::Count))
        }
        Job::SetSetting { key, value, reply } => (reply, none(set_setting(conn, &key, &value))),
        Job::SetCaDisabled {
            name,
            disabled,
            reply,
        } => (reply, none(set_ca_disabled(conn, &name, disabled))),
        Job::SetSinkCursor { sink, seq, reply } => (reply, none(set_sink_cursor(conn, &sink, seq))),
        Job::PruneEvents {
            before,
            max_seq,
            reply,
        } => (
            reply,
            prune_events(conn, before, max_seq).map(Answer::Count),
        ),
        Job::Audit {
            record,
            prune_before,
            reply,
        } => (reply, none(audit(conn, &record, prune_before))),
        Job::SaveAcmeAccount {
            account,
            credentials,
            reply,
        } => (reply, none(save_acme_account(conn, &account, credentials))),
        Job::SetAcmePendingKey {
            issuer,
            credentials,
            reply,
        } => (
            reply,
            none(set_acme_pending_key(conn, &issuer, credentials)),
        ),
        Job::SaveAcmeOrder {
            id,
            issuer,
            order_url,
            key,
            reply,
        } => (
            reply,
            none(save_acme_order(conn, &id, &issuer, &order_url, key)),
        ),
        Job::DeleteAcmeOrder { id, reply } => (
            reply,
            conn.execute(
                "DELETE FROM acme_orders WHERE certificate_id = ?",
                [id.as_str()],
            )
            .map(|_| Answer::Done)
            .map_err(StoreError::from),
        ),
        Job::SetChallengeRecord {
            record,
            present,
            at,
            reply,
        } => (
            reply,
            none(set_challenge_record(conn, &record, present, at)),
        ),
        Job::SetStatus {
            id,
            status,
            from,
            next_action_at,
            event,
            reply,
        } => (
            reply,
            set_status(conn, &id, status, from, next_action_at, event.as_ref()).map(Answer::Count),
        ),
        // Answered before batching; one that got here changes nothing.
        Job::Ping { reply } => (reply, Ok(Answer::Done)),
    }
}

/// Inserts a certificate with its first version, if it has one; returns the name it got.
fn insert_certificate(
    conn: &Connection,
    new: NewCertificate,
    key: Option<Sealed>,
) -> Result<String, StoreError> {
    let now = unix(OffsetDateTime::now_utc());
    let domains =
        serde_json::to_string(&new.domains).map_err(|e| StoreError::Invalid(e.to_string()))?;
    let version = new.version.as_ref();
    let mut insert = conn.prepare_cached(
        "INSERT INTO certificates (id, name, origin, status, issuer, domains, key_algorithm, validity, \
         client_auth, current_version, serial, not_before, not_after, created_at, updated_at, \
         renew_before, days_before_expiry, next_action_at, maintenance_window, \
         maintenance_window_seconds, maintenance_window_tz, validation_method, validation_deadline) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )?;
    let mut row = |name: &str| {
        insert.execute(params![
            new.id.as_str(),
            name,
            new.origin.as_str(),
            new.status.as_str(),
            new.issuer,
            domains,
            new.key_algorithm.as_str(),
            new.validity.map(|v| v.as_secs() as i64),
            new.client_auth,
            u32::from(version.is_some()),
            version.map(|v| v.serial.as_str().to_owned()),
            version.map(|v| unix(v.not_before)),
            version.map(|v| unix(v.not_after)),
            now,
            now,
            new.renew_before.map(|v| v.as_secs() as i64),
            new.days_before_expiry,
            new.next_action_at.map(unix),
            new.maintenance_window.as_ref().map(|w| w.schedule.as_str()),
            new.maintenance_window
                .as_ref()
                .map(|w| w.duration.as_secs() as i64),
            new.maintenance_window
                .as_ref()
                .and_then(|w| w.time_zone.as_deref()),
            new.validation.as_ref().map(|(method, _)| method.as_str()),
            new.validation.as_ref().map(|(_, deadline)| unix(*deadline)),
        ])
    };
    // The unique index decides whether a name is free, in the same statement that takes it.
    // An explicit name must be free; a default one (the first domain) gets the end of the id
    // appended, so requests for the same domain never fail on naming.
    let name = match row(&new.name) {
        Ok(_) => new.name.clone(),
        Err(err) if is_unique_violation(&err) && new.name_is_default => {
            let suffix = &new.id.as_str()[new.id.as_str().len() - 12..];
            let name = format!("{}-{suffix}", new.name);
            row(&name)?;
            name
        }
        Err(err) if is_unique_violation(&err) => return Err(StoreError::NameTaken(new.name)),
        Err(err) => return Err(err.into()),
    };
    if let Some(version) = version {
        insert_version(conn, &new.id, 1, version, key)?;
    }
    let mut tag =
        conn.prepare_cached("INSERT INTO tags (certificate_id, key, value) VALUES (?, ?, ?)")?;
    for (k, v) in &new.tags {
        tag.execute(params![new.id.as_str(), k, v])?;
    }
    if let Some(event) = &new.event {
        insert_event(conn, event)?;
    }
    Ok(name)
}

fn is_unique_violation(err: &rusqlite::Error) -> bool {
    matches!(err, rusqlite::Error::SqliteFailure(e, _) if e.code == ErrorCode::ConstraintViolation)
}

fn insert_version(
    conn: &Connection,
    id: &CertificateId,
    version: u32,
    new: &NewVersion,
    key: Option<Sealed>,
) -> Result<(), StoreError> {
    let (kid, blob) = key.map_or((None, None), |s| (Some(s.kid), Some(s.blob)));
    conn.prepare_cached(
        "INSERT INTO versions (certificate_id, version, serial, issuer_ca, not_before, not_after, cert_pem, \
         chain_pem, key_kid, key_blob, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )?
    .execute(params![
        id.as_str(),
        version,
        new.serial.as_str(),
        new.issuer_ca,
        unix(new.not_before),
        unix(new.not_after),
        new.cert_pem,
        new.chain_pem,
        kid,
        blob,
        unix(OffsetDateTime::now_utc()),
    ])?;
    Ok(())
}

fn add_version(
    conn: &Connection,
    id: &CertificateId,
    change: VersionChange,
    key: Option<Sealed>,
) -> Result<(), StoreError> {
    let VersionChange {
        version,
        new,
        status,
        event,
        names,
        next_action_at,
        renewal_info,
    } = change;
    // Optimistic concurrency: the caller computed `version` from what it read; if another
    // renewal got there first, this matches no row and the caller hears `Conflict`.
    let updated = conn
        .prepare_cached(
            "UPDATE certificates SET current_version = ?, serial = ?, not_before = ?, not_after = ?, \
             status = ?, updated_at = ?, next_action_at = ?, renewal_status = 'success', \
             renewal_reason = NULL, renewal_failure_kind = NULL, renewal_failures = 0, renewal_failed_at = NULL, \
             action_required_days = NULL, expiry_event_day = NULL, renewal_info = ? \
             WHERE id = ? AND current_version = ? AND status <> 'revoked'",
        )?
        .execute(params![
            version,
            new.serial.as_str(),
            unix(new.not_before),
            unix(new.not_after),
            status.as_str(),
            unix(OffsetDateTime::now_utc()),
            next_action_at.map(unix),
            renewal_info_json(renewal_info.as_ref())?,
            id.as_str(),
            version - 1,
        ])?;
    if updated != 1 {
        // A revocation since the caller read it: the new version must not make a revoked
        // certificate issued again (found by the crash torture).
        let status: Option<String> = conn
            .query_row(
                "SELECT status FROM certificates WHERE id = ?",
                [id.as_str()],
                |row| row.get(0),
            )
            .optional()?;
        if status.as_deref() == Some(Status::Revoked.as_str()) {
            return Err(StoreError::Revoked(id.clone()));
        }
        return Err(StoreError::Conflict(format!("certificate {id}")));
    }
    if let Some((domains, algorithm)) = names {
        let domains =
            serde_json::to_string(&domains).map_err(|e| StoreError::Invalid(e.to_string()))?;
        conn.execute(
            "UPDATE certificates SET domains = ?, key_algorithm = ? WHERE id = ?",
            params![domains, algorithm.as_str(), id.as_str()],
        )?;
    }
    insert_version(conn, id, version, &new, key)?;
    // An ACME order that produced this version is done.
    conn.execute(
        "DELETE FROM acme_orders WHERE certificate_id = ?",
        [id.as_str()],
    )?;
    if let Some(event) = &event {
        insert_event(conn, event)?;
    }
    Ok(())
}

fn revoke(
    conn: &Connection,
    (id, version): (&CertificateId, u32),
    reason: RevocationReason,
    revocations: &[Revocation],
    event: Option<&Event>,
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    // Only as read: a version stored since would be missing from `revocations`, on no CRL
    // and (public) not revoked at the CA, under a certificate marked revoked.
    let updated = conn.execute(
        "UPDATE certificates SET status = 'revoked', revoked_at = ?, revocation_reason = ?, updated_at = ?, \
         next_action_at = NULL \
         WHERE id = ? AND status <> 'revoked' AND current_version = ?",
        params![unix(now), reason.as_str(), unix(now), id.as_str(), version],
    )?;
    if updated != 1 {
        return Err(StoreError::Conflict(format!(
            "certificate {id} (revoked, or renewed, meanwhile)"
        )));
    }
    for revocation in revocations {
        conn.execute(
            "INSERT OR IGNORE INTO revocations (ca, serial, revoked_at, reason, certificate_id) \
             VALUES (?, ?, ?, ?, ?)",
            params![
                revocation.ca,
                revocation.serial.as_str(),
                unix(now),
                reason.as_str(),
                id.as_str()
            ],
        )?;
    }
    if let Some(event) = event {
        insert_event(conn, event)?;
    }
    Ok(())
}

fn delete(conn: &Connection, id: &CertificateId) -> Result<(), StoreError> {
    // Versions and tags go with it (ON DELETE CASCADE); revocations stay for the CRL.
    let deleted = conn.execute("DELETE FROM certificates WHERE id = ?", [id.as_str()])?;
    if deleted == 0 {
        return Err(StoreError::NotFound(format!("certificate {id}")));
    }
    Ok(())
}

fn set_tags(
    conn: &Connection,
    id: &CertificateId,
    set: &BTreeMap<String, String>,
    remove: &[String],
) -> Result<(), StoreError> {
    let touched = conn.execute(
        "UPDATE certificates SET updated_at = ? WHERE id = ?",
        params![unix(OffsetDateTime::now_utc()), id.as_str()],
    )?;
    if touched == 0 {
        return Err(StoreError::NotFound(format!("certificate {id}")));
    }
    for key in remove {
        conn.execute(
            "DELETE FROM tags WHERE certificate_id = ? AND key = ?",
            params![id.as_str(), key],
        )?;
    }
    for (key, value) in set {
        conn.execute(
            "INSERT INTO tags (certificate_id, key, value) VALUES (?, ?, ?) \
             ON CONFLICT DO UPDATE SET value = excluded.value",
            params![id.as_str(), key, value],
        )?;
    }
    Ok(())
}

fn insert_ca(conn: &Connection, new: &NewCa, key: Sealed) -> Result<(), StoreError> {
    let spec = &new.spec;
    let exists = conn
        .query_row("SELECT 1 FROM cas WHERE name = ?", [&spec.name], |_| Ok(()))
        .optional()?;
    if exists.is_some() {
        return Err(StoreError::Conflict(format!(
            "CA {:?} already exists",
            spec.name
        )));
    }
    let state = if new.cert_pem.is_some() {
        CaState::Active
    } else {
        CaState::PendingCertificate
    };
    let permitted = serde_json::to_string(&spec.permitted_dns)
        .map_err(|e| StoreError::Invalid(e.to_string()))?;
    conn.execute(
        "INSERT INTO cas (name, parent, external, state, common_name, key_algorithm, validity, path_length, \
         permitted_dns, cert_pem, chain_pem, csr_pem, serial, not_before, not_after, key_kid, key_blob, \
         created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        params![
            spec.name,
            spec.parent,
            spec.external,
            state.as_str(),
            spec.common_name,
            spec.key_algorithm.as_str(),
            spec.validity.as_secs() as i64,
            spec.path_length.map(i64::from),
            permitted,
            new.cert_pem,
            new.chain_pem,
            new.csr_pem,
            new.serial.as_ref().map(|s| s.as_str().to_owned()),
            new.not_before.map(unix),
            new.not_after.map(unix),
            key.kid,
            key.blob,
            unix(OffsetDateTime::now_utc()),
        ],
    )?;
    Ok(())
}

fn install_ca(conn: &Connection, name: &str, installed: &InstalledCa) -> Result<(), StoreError> {
    let updated = conn.execute(
        "UPDATE cas SET state = 'active', cert_pem = ?, chain_pem = ?, serial = ?, not_before = ?, \
         not_after = ? WHERE name = ? AND state = 'pending-certificate'",
        params![
            installed.cert_pem,
            installed.chain_pem,
            installed.serial.as_str(),
            unix(installed.not_before),
            unix(installed.not_after),
            name,
        ],
    )?;
    if updated != 1 {
        return Err(StoreError::Conflict(format!(
            "CA {name:?} is not waiting for a certificate"
        )));
    }
    Ok(())
}

fn save_crl(
    conn: &Connection,
    ca: &str,
    number: u64,
    der: &[u8],
    next_update: OffsetDateTime,
) -> Result<(), StoreError> {
    // CRL numbers must only grow: a slower writer with an older number loses.
    let updated = conn.execute(
        "UPDATE cas SET crl_number = ?1, crl_der = ?2, crl_next_update = ?3 WHERE name = ?4 AND crl_number < ?1",
        params![number as i64, der, unix(next_update), ca],
    )?;
    if updated != 1 {
        return Err(StoreError::Conflict(format!("CRL of CA {ca:?}")));
    }
    Ok(())
}

fn rewrap(conn: &Connection, rows: Vec<(SealedRecord, Sealed)>) -> Result<(), StoreError> {
    for (record, sealed) in rows {
        match &record {
            SealedRecord::Ca(name) => conn.execute(
                "UPDATE cas SET key_kid = ?, key_blob = ? WHERE name = ?",
                params![sealed.kid, sealed.blob, name],
            )?,
            SealedRecord::Version(id, version) => conn.execute(
                "UPDATE versions SET key_kid = ?, key_blob = ? WHERE certificate_id = ? AND version = ?",
                params![sealed.kid, sealed.blob, id.as_str(), version],
            )?,
            SealedRecord::AcmeAccount(issuer) => conn.execute(
                "UPDATE acme_accounts SET key_kid = ?, key_blob = ? WHERE issuer = ?",
                params![sealed.kid, sealed.blob, issuer],
            )?,
            SealedRecord::AcmePendingKey(issuer) => conn.execute(
                "UPDATE acme_pending_keys SET key_kid = ?, key_blob = ? WHERE issuer = ?",
                params![sealed.kid, sealed.blob, issuer],
            )?,
            SealedRecord::AcmeOrder(id) => conn.execute(
                "UPDATE acme_orders SET key_kid = ?, key_blob = ? WHERE certificate_id = ?",
                params![sealed.kid, sealed.blob, id.as_str()],
            )?,
        };
    }
    Ok(())
}

fn insert_event(conn: &Connection, event: &Event) -> Result<(), StoreError> {
    let body = serde_json::to_string(event).map_err(|e| StoreError::Invalid(e.to_string()))?;
    conn.prepare_cached(
        "INSERT INTO events (id, time, detail_type, certificate_id, body) VALUES (?, ?, ?, ?, ?)",
    )?
    .execute(params![
        event.id,
        unix(event.time),
        event.detail_type.as_str(),
        event.resources.first(),
        body,
    ])?;
    Ok(())
}

/// Takes up to `limit` certificates whose next action is due and leases them: their deadline
/// moves to `lease_until`, so they are not claimed twice, and a crash mid-renewal retries them
/// when the lease runs out.
fn claim_due(
    conn: &Connection,
    now: OffsetDateTime,
    limit: usize,
    lease_until: OffsetDateTime,
) -> Result<Vec<CertificateId>, StoreError> {
    let mut due = conn.prepare_cached(
        "SELECT id FROM certificates WHERE next_action_at <= ? ORDER BY next_action_at LIMIT ?",
    )?;
    let ids: Vec<String> = due
        .query_map(params![unix(now), limit as i64], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    let mut lease = conn.prepare_cached(
        "UPDATE certificates SET next_action_at = ?, renewal_status = 'pending-auto-renewal' WHERE id = ?",
    )?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        lease.execute(params![unix(lease_until), id])?;
        out.push(
            CertificateId::parse(&id).ok_or_else(|| StoreError::Invalid(format!("id {id:?}")))?,
        );
    }
    Ok(out)
}

fn renewal_info_json(
    info: Option<&crate::model::RenewalInfo>,
) -> Result<Option<String>, StoreError> {
    info.map(serde_json::to_string)
        .transpose()
        .map_err(|e| StoreError::Invalid(format!("renewal info: {e}")))
}

fn set_renewal_info(
    conn: &Connection,
    id: &CertificateId,
    info: Option<&crate::model::RenewalInfo>,
    next_action_at: Option<OffsetDateTime>,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "UPDATE certificates SET renewal_info = ?, next_action_at = ?, \
         renewal_status = CASE renewal_status WHEN 'pending-auto-renewal' THEN 'success' \
         ELSE renewal_status END WHERE id = ?",
    )?
    .execute(params![
        renewal_info_json(info)?,
        next_action_at.map(unix),
        id.as_str()
    ])?;
    Ok(())
}

/// Makes every leased certificate due now: called at start, when no renewal can be running
/// (the state directory is locked), so each lease belongs to a process that is gone.
fn release_leases(conn: &Connection, now: OffsetDateTime) -> Result<usize, StoreError> {
    let released = conn
        .prepare_cached(
            "UPDATE certificates SET next_action_at = ? \
             WHERE renewal_status = 'pending-auto-renewal' AND next_action_at > ?",
        )?
        .execute(params![unix(now), unix(now)])?;
    Ok(released)
}

/// Records a failed renewal and its event; a certificate deleted meanwhile gets neither (its
/// event would announce a certificate that no longer exists).
fn renewal_failed(conn: &Connection, failure: &RenewalFailure) -> Result<(), StoreError> {
    let changed = conn
        .prepare_cached(
            "UPDATE certificates SET renewal_status = 'failed', renewal_reason = ?, \
         renewal_failure_kind = ?, renewal_failures = renewal_failures + 1, renewal_failed_at = ?, \
         next_action_at = CASE WHEN status = 'revoked' THEN NULL ELSE ? END, \
         action_required_days = COALESCE(?, action_required_days) WHERE id = ?",
        )?
        .execute(params![
            failure.reason,
            failure.kind.as_str(),
            unix(failure.failed_at),
            failure.next_action_at.map(unix),
            failure.action_required_days,
            failure.id.as_str(),
        ])?;
    if changed == 0 {
        return Err(StoreError::NotFound(format!("certificate {}", failure.id)));
    }
    if let Some(event) = &failure.event {
        insert_event(conn, event)?;
    }
    Ok(())
}

/// Marks certificates expired, each with its event; a certificate renewed or already marked in
/// the meantime is left alone (and its event dropped).
fn mark_expired(
    conn: &Connection,
    items: &[(CertificateId, Event)],
    now: OffsetDateTime,
) -> Result<usize, StoreError> {
    let mut update = conn.prepare_cached(
        "UPDATE certificates SET status = 'expired', updated_at = ? \
         WHERE id = ? AND status = 'issued' AND not_after <= ?",
    )?;
    let mut changed = 0;
    for (id, event) in items {
        if update.execute(params![unix(now), id.as_str(), unix(now)])? == 1 {
            insert_event(conn, event)?;
            changed += 1;
        }
    }
    Ok(changed)
}

/// Records "Approaching Expiration" events, at most one per certificate and UTC day.
fn expiry_events(
    conn: &Connection,
    items: &[(CertificateId, i64, Event)],
) -> Result<usize, StoreError> {
    let mut update = conn.prepare_cached(
        "UPDATE certificates SET expiry_event_day = ?1 \
         WHERE id = ?2 AND (expiry_event_day IS NULL OR expiry_event_day < ?1)",
    )?;
    let mut changed = 0;
    for (id, day, event) in items {
        if update.execute(params![day, id.as_str()])? == 1 {
            insert_event(conn, event)?;
            changed += 1;
        }
    }
    Ok(changed)
}

fn set_next_action(
    conn: &Connection,
    items: &[(CertificateId, Option<OffsetDateTime>)],
) -> Result<usize, StoreError> {
    let mut update =
        conn.prepare_cached("UPDATE certificates SET next_action_at = ? WHERE id = ?")?;
    let mut changed = 0;
    for (id, at) in items {
        changed += update.execute(params![at.map(unix), id.as_str()])?;
    }
    Ok(changed)
}

fn set_ca_disabled(conn: &Connection, name: &str, disabled: bool) -> Result<(), StoreError> {
    let changed = conn.execute(
        "UPDATE cas SET disabled = ? WHERE name = ?",
        params![disabled, name],
    )?;
    if changed == 0 {
        return Err(StoreError::NotFound(format!("CA {name:?}")));
    }
    Ok(())
}

/// Cursors only move forward: a slow, stale acknowledgement cannot rewind a sink.
fn set_sink_cursor(conn: &Connection, sink: &str, seq: i64) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO sink_cursors (sink, seq) VALUES (?1, ?2) \
         ON CONFLICT DO UPDATE SET seq = MAX(seq, excluded.seq)",
    )?
    .execute(params![sink, seq])?;
    Ok(())
}

fn prune_events(
    conn: &Connection,
    before: OffsetDateTime,
    max_seq: i64,
) -> Result<usize, StoreError> {
    Ok(conn.execute(
        "DELETE FROM events WHERE time < ? AND seq <= ?",
        params![unix(before), max_seq],
    )?)
}

/// How many of the oldest audit records one new record may take with it: enough to keep up
/// with any rate of calls (each removes more than it adds), few enough to cost nothing.
const AUDIT_PRUNE_STEP: i64 = 4;

fn audit(
    conn: &Connection,
    record: &crate::audit::Record,
    prune_before: OffsetDateTime,
) -> Result<(), StoreError> {
    let body = serde_json::to_string(record)
        .map_err(|e| StoreError::Invalid(format!("audit record: {e}")))?;
    conn.prepare_cached("INSERT INTO audit (time, operation, target, body) VALUES (?, ?, ?, ?)")?
        .execute(params![
            unix(record.time),
            record.operation,
            record.target,
            body
        ])?;
    // The oldest rows by seq are the oldest by time (both grow together), so looking at the
    // first few by primary key finds every expired row without an index on time.
    conn.prepare_cached(
        "DELETE FROM audit WHERE seq IN (SELECT seq FROM audit ORDER BY seq LIMIT ?) AND time < ?",
    )?
    .execute(params![AUDIT_PRUNE_STEP, unix(prune_before)])?;
    Ok(())
}

fn save_acme_account(
    conn: &Connection,
    account: &super::AcmeAccount,
    credentials: Sealed,
) -> Result<(), StoreError> {
    let contact = serde_json::to_string(&account.contact)
        .map_err(|e| StoreError::Invalid(format!("contact: {e}")))?;
    conn.execute(
        "INSERT INTO acme_accounts (issuer, directory, account_url, contact, key_kid, key_blob, \
         created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7) \
         ON CONFLICT (issuer) DO UPDATE SET directory = ?2, account_url = ?3, contact = ?4, \
         key_kid = ?5, key_blob = ?6, updated_at = ?7",
        params![
            account.issuer,
            account.directory,
            account.url,
            contact,
            credentials.kid,
            credentials.blob,
            unix(OffsetDateTime::now_utc())
        ],
    )?;
    // The account's key is now what was just stored: a pending one is settled.
    set_acme_pending_key(conn, &account.issuer, None)
}

/// Stores `issuer`'s pending account key, or removes it (`None`).
fn set_acme_pending_key(
    conn: &Connection,
    issuer: &str,
    credentials: Option<Sealed>,
) -> Result<(), StoreError> {
    match credentials {
        Some(sealed) => conn.execute(
            "INSERT INTO acme_pending_keys (issuer, key_kid, key_blob, created_at) \
             VALUES (?1, ?2, ?3, ?4) ON CONFLICT (issuer) DO UPDATE SET key_kid = ?2, \
             key_blob = ?3, created_at = ?4",
            params![
                issuer,
                sealed.kid,
                sealed.blob,
                unix(OffsetDateTime::now_utc())
            ],
        )?,
        None => conn.execute("DELETE FROM acme_pending_keys WHERE issuer = ?", [issuer])?,
    };
    Ok(())
}

fn save_acme_order(
    conn: &Connection,
    id: &CertificateId,
    issuer: &str,
    order_url: &str,
    key: Sealed,
) -> Result<(), StoreError> {
    // Deleted while its order was being created (a renewal through the API racing a
    // deletion): not found, rather than the foreign key's failure.
    let exists: Option<i64> = conn
        .query_row(
            "SELECT 1 FROM certificates WHERE id = ?",
            [id.as_str()],
            |row| row.get(0),
        )
        .optional()?;
    if exists.is_none() {
        return Err(StoreError::NotFound(format!("certificate {id}")));
    }
    conn.execute(
        "INSERT INTO acme_orders (certificate_id, issuer, order_url, key_kid, key_blob, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (certificate_id) DO UPDATE SET issuer = ?2, \
         order_url = ?3, key_kid = ?4, key_blob = ?5, created_at = ?6",
        params![id.as_str(), issuer, order_url, key.kid, key.blob, unix(OffsetDateTime::now_utc())],
    )?;
    Ok(())
}

fn set_challenge_record(
    conn: &Connection,
    record: &super::ChallengeRecord,
    present: bool,
    at: OffsetDateTime,
) -> Result<(), StoreError> {
    let kind = record.kind.as_str();
    if present {
        conn.execute(
            "INSERT INTO acme_challenge_records (kind, name, value, certificate_id, order_url, published_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
             ON CONFLICT (kind, name, value, certificate_id, order_url) DO UPDATE SET published_at = ?6",
            params![kind, record.name, record.value, record.certificate.as_str(), record.order_url, unix(at)],
        )?;
    } else {
        conn.execute(
            "DELETE FROM acme_challenge_records WHERE kind = ? AND name = ? AND value = ? \
             AND certificate_id = ? AND order_url = ?",
            params![
                kind,
                record.name,
                record.value,
                record.certificate.as_str(),
                record.order_url
            ],
        )?;
    }
    Ok(())
}

/// Moves a certificate from `from` to `status` (e.g. pending-validation to
/// validation-timed-out), with its event; a certificate no longer in `from` is left alone.
fn set_status(
    conn: &Connection,
    id: &CertificateId,
    status: Status,
    from: Status,
    next_action_at: Option<OffsetDateTime>,
    event: Option<&Event>,
) -> Result<usize, StoreError> {
    let changed = conn.execute(
        "UPDATE certificates SET status = ?, next_action_at = ?, updated_at = ? WHERE id = ? AND status = ?",
        params![status.as_str(), next_action_at.map(unix), unix(OffsetDateTime::now_utc()), id.as_str(), from.as_str()],
    )?;
    if changed == 1
        && let Some(event) = event
    {
        insert_event(conn, event)?;
    }
    Ok(changed)
}

fn set_setting(conn: &Connection, key: &str, value: &str) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT DO UPDATE SET value = excluded.value",
        params![key, value],
    )?;
    Ok(())
}
