//! The single writer: every change to the database goes through this task.
//!
//! Why one writer: SQLite allows one writer at a time anyway, and funnelling writes through one
//! task turns contention into batching. The loop takes the first queued job, then whatever else
//! is already waiting (up to `MAX_BATCH`), runs them in one transaction with a savepoint each,
//! commits once, and only then answers every caller. A job that fails rolls back to its own
//! savepoint and gets its own error; the others still commit. A caller that got `Ok` knows its
//! write is durable (subject to `store.synchronous`).

use std::collections::BTreeMap;

use sqlx::{Connection, SqliteConnection};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

use super::sqlite::Db;
use super::{
    InstalledCa, NewCa, NewCertificate, NewVersion, Revocation, Sealed, SealedRecord, StoreError,
    VersionChange,
};
use crate::model::{CaState, CertificateId, Event, RevocationReason, unix};

/// The most jobs committed together. Large enough to amortise an fsync under load, small
/// enough that one transaction never holds the write lock for long.
const MAX_BATCH: usize = 256;

type Reply = oneshot::Sender<Result<(), StoreError>>;

pub(super) enum Job {
    InsertCertificate {
        new: Box<NewCertificate>,
        key: Option<Sealed>,
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
}

pub(super) async fn spawn(db: Db) -> Result<mpsc::Sender<Job>, StoreError> {
    let mut conn = db.write_connection().await?;
    let (tx, mut rx) = mpsc::channel::<Job>(4 * MAX_BATCH);
    tokio::spawn(async move {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        // `recv` returns None once every Store clone (every sender) is gone: then we are done.
        while let Some(first) = rx.recv().await {
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            commit_batch(&mut conn, &mut batch).await;
        }
    });
    Ok(tx)
}

/// Runs `batch` in one transaction and answers every job. Empties `batch`.
async fn commit_batch(conn: &mut SqliteConnection, batch: &mut Vec<Job>) {
    let mut results: Vec<(Reply, Result<(), StoreError>)> = Vec::with_capacity(batch.len());
    let outcome = async {
        let mut tx = conn.begin().await?;
        for job in batch.drain(..) {
            sqlx::query("SAVEPOINT job").execute(&mut *tx).await?;
            let (reply, result) = apply(&mut tx, job).await;
            let undo = if result.is_ok() {
                "RELEASE job"
            } else {
                "ROLLBACK TO job; RELEASE job"
            };
            sqlx::raw_sql(undo).execute(&mut *tx).await?;
            results.push((reply, result));
        }
        tx.commit().await
    }
    .await;

    match outcome {
        Ok(()) => {
            for (reply, result) in results {
                let _ = reply.send(result);
            }
        }
        Err(err) => {
            // Nothing in this batch is durable: every caller hears so, including those whose own
            // step succeeded. Jobs not reached yet were drained with the batch and are dropped,
            // which their callers see as `Closed`.
            let message = err.to_string();
            for (reply, _) in results {
                let _ = reply.send(Err(StoreError::Database(sqlx::Error::Protocol(
                    message.clone(),
                ))));
            }
            batch.clear();
        }
    }
}

async fn apply(conn: &mut SqliteConnection, job: Job) -> (Reply, Result<(), StoreError>) {
    match job {
        Job::InsertCertificate { new, key, reply } => {
            (reply, insert_certificate(conn, *new, key).await)
        }
        Job::AddVersion {
            id,
            change,
            key,
            reply,
        } => (reply, add_version(conn, &id, *change, key).await),
        Job::Revoke {
            id,
            reason,
            revocations,
            event,
            now,
            reply,
        } => (
            reply,
            revoke(conn, &id, reason, &revocations, event, now).await,
        ),
        Job::Delete { id, reply } => (reply, delete(conn, &id).await),
        Job::SetTags {
            id,
            set,
            remove,
            reply,
        } => (reply, set_tags(conn, &id, &set, &remove).await),
        Job::InsertCa { new, key, reply } => (reply, insert_ca(conn, &new, key).await),
        Job::InstallCa {
            name,
            installed,
            reply,
        } => (reply, install_ca(conn, &name, &installed).await),
        Job::SaveCrl {
            ca,
            number,
            der,
            next_update,
            reply,
        } => (reply, save_crl(conn, &ca, number, der, next_update).await),
        Job::Rewrap { rows, reply } => (reply, rewrap(conn, rows).await),
    }
}

async fn insert_certificate(
    conn: &mut SqliteConnection,
    mut new: NewCertificate,
    key: Option<Sealed>,
) -> Result<(), StoreError> {
    new.name = unique_name(conn, &new.name, new.name_is_default, &new.id).await?;
    let now = unix(OffsetDateTime::now_utc());
    let domains =
        serde_json::to_string(&new.domains).map_err(|e| StoreError::Invalid(e.to_string()))?;
    let version = &new.version;
    sqlx::query(
        "INSERT INTO certificates (id, name, origin, status, issuer, domains, key_algorithm, validity, \
         client_auth, current_version, serial, not_before, not_after, created_at, updated_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?, ?, ?, ?)",
    )
    .bind(new.id.as_str())
    .bind(&new.name)
    .bind(new.origin.as_str())
    .bind(new.status.as_str())
    .bind(&new.issuer)
    .bind(domains)
    .bind(new.key_algorithm.as_str())
    .bind(new.validity.map(|v| v.as_secs() as i64))
    .bind(new.client_auth)
    .bind(version.serial.as_str())
    .bind(unix(version.not_before))
    .bind(unix(version.not_after))
    .bind(now)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    insert_version(conn, &new.id, 1, version, key).await?;
    for (k, v) in &new.tags {
        sqlx::query("INSERT INTO tags (certificate_id, key, value) VALUES (?, ?, ?)")
            .bind(new.id.as_str())
            .bind(k)
            .bind(v)
            .execute(&mut *conn)
            .await?;
    }
    if let Some(event) = new.event {
        insert_event(conn, &event).await?;
    }
    Ok(())
}

/// An explicit name must be free; a default one (the first domain) gets the id's last
/// characters appended when taken, so requests for the same domain never fail on naming.
async fn unique_name(
    conn: &mut SqliteConnection,
    name: &str,
    is_default: bool,
    id: &CertificateId,
) -> Result<String, StoreError> {
    let taken = |candidate: String| async move {
        let row = sqlx::query("SELECT 1 FROM certificates WHERE name = ?")
            .bind(&candidate)
            .fetch_optional(&mut *conn)
            .await?;
        Ok::<_, StoreError>((row.is_some(), candidate))
    };
    let (is_taken, name) = taken(name.to_owned()).await?;
    if !is_taken {
        return Ok(name);
    }
    if !is_default {
        return Err(StoreError::NameTaken(name));
    }
    let suffix: String = id
        .as_str()
        .chars()
        .rev()
        .take(12)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    Ok(format!("{name}-{suffix}"))
}

async fn insert_version(
    conn: &mut SqliteConnection,
    id: &CertificateId,
    version: u32,
    new: &NewVersion,
    key: Option<Sealed>,
) -> Result<(), StoreError> {
    let (kid, blob) = key.map_or((None, None), |s| (Some(s.kid), Some(s.blob)));
    sqlx::query(
        "INSERT INTO versions (certificate_id, version, serial, issuer_ca, not_before, not_after, cert_pem, \
         chain_pem, key_kid, key_blob, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(id.as_str())
    .bind(version)
    .bind(new.serial.as_str())
    .bind(new.issuer_ca.as_deref())
    .bind(unix(new.not_before))
    .bind(unix(new.not_after))
    .bind(&new.cert_pem)
    .bind(&new.chain_pem)
    .bind(kid)
    .bind(blob)
    .bind(unix(OffsetDateTime::now_utc()))
    .execute(conn)
    .await?;
    Ok(())
}

async fn add_version(
    conn: &mut SqliteConnection,
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
    } = change;
    let new = &new;
    // Optimistic concurrency: the caller computed `version` from what it read; if another
    // renewal got there first, this matches no row and the caller hears `Conflict`.
    let updated = sqlx::query(
        "UPDATE certificates SET current_version = ?, serial = ?, not_before = ?, not_after = ?, status = ?, \
         updated_at = ? WHERE id = ? AND current_version = ?",
    )
    .bind(version)
    .bind(new.serial.as_str())
    .bind(unix(new.not_before))
    .bind(unix(new.not_after))
    .bind(status.as_str())
    .bind(unix(OffsetDateTime::now_utc()))
    .bind(id.as_str())
    .bind(version - 1)
    .execute(&mut *conn)
    .await?;
    if updated.rows_affected() != 1 {
        return Err(StoreError::Conflict(format!("certificate {id}")));
    }
    if let Some((domains, algorithm)) = names {
        let domains =
            serde_json::to_string(&domains).map_err(|e| StoreError::Invalid(e.to_string()))?;
        sqlx::query("UPDATE certificates SET domains = ?, key_algorithm = ? WHERE id = ?")
            .bind(domains)
            .bind(algorithm.as_str())
            .bind(id.as_str())
            .execute(&mut *conn)
            .await?;
    }
    insert_version(conn, id, version, new, key).await?;
    if let Some(event) = event {
        insert_event(conn, &event).await?;
    }
    Ok(())
}

async fn revoke(
    conn: &mut SqliteConnection,
    id: &CertificateId,
    reason: RevocationReason,
    revocations: &[Revocation],
    event: Option<Event>,
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    let updated = sqlx::query(
        "UPDATE certificates SET status = 'revoked', revoked_at = ?, revocation_reason = ?, updated_at = ? \
         WHERE id = ? AND status <> 'revoked'",
    )
    .bind(unix(now))
    .bind(reason.as_str())
    .bind(unix(now))
    .bind(id.as_str())
    .execute(&mut *conn)
    .await?;
    if updated.rows_affected() != 1 {
        return Err(StoreError::Conflict(format!(
            "certificate {id} (already revoked?)"
        )));
    }
    for revocation in revocations {
        sqlx::query(
            "INSERT OR IGNORE INTO revocations (ca, serial, revoked_at, reason, certificate_id) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(&revocation.ca)
        .bind(revocation.serial.as_str())
        .bind(unix(now))
        .bind(reason.as_str())
        .bind(id.as_str())
        .execute(&mut *conn)
        .await?;
    }
    if let Some(event) = event {
        insert_event(conn, &event).await?;
    }
    Ok(())
}

async fn delete(conn: &mut SqliteConnection, id: &CertificateId) -> Result<(), StoreError> {
    // Versions and tags go with it (ON DELETE CASCADE); revocations stay for the CRL.
    let deleted = sqlx::query("DELETE FROM certificates WHERE id = ?")
        .bind(id.as_str())
        .execute(conn)
        .await?;
    if deleted.rows_affected() == 0 {
        return Err(StoreError::NotFound(format!("certificate {id}")));
    }
    Ok(())
}

async fn set_tags(
    conn: &mut SqliteConnection,
    id: &CertificateId,
    set: &BTreeMap<String, String>,
    remove: &[String],
) -> Result<(), StoreError> {
    let touched = sqlx::query("UPDATE certificates SET updated_at = ? WHERE id = ?")
        .bind(unix(OffsetDateTime::now_utc()))
        .bind(id.as_str())
        .execute(&mut *conn)
        .await?;
    if touched.rows_affected() == 0 {
        return Err(StoreError::NotFound(format!("certificate {id}")));
    }
    for key in remove {
        sqlx::query("DELETE FROM tags WHERE certificate_id = ? AND key = ?")
            .bind(id.as_str())
            .bind(key)
            .execute(&mut *conn)
            .await?;
    }
    for (key, value) in set {
        sqlx::query("INSERT INTO tags (certificate_id, key, value) VALUES (?, ?, ?) ON CONFLICT DO UPDATE SET value = excluded.value")
            .bind(id.as_str())
            .bind(key)
            .bind(value)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

async fn insert_ca(
    conn: &mut SqliteConnection,
    new: &NewCa,
    key: Sealed,
) -> Result<(), StoreError> {
    let spec = &new.spec;
    let exists = sqlx::query("SELECT 1 FROM cas WHERE name = ?")
        .bind(&spec.name)
        .fetch_optional(&mut *conn)
        .await?;
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
    sqlx::query(
        "INSERT INTO cas (name, parent, external, state, common_name, key_algorithm, validity, path_length, \
         permitted_dns, cert_pem, chain_pem, csr_pem, serial, not_before, not_after, key_kid, key_blob, created_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&spec.name)
    .bind(spec.parent.as_deref())
    .bind(spec.external)
    .bind(state.as_str())
    .bind(&spec.common_name)
    .bind(spec.key_algorithm.as_str())
    .bind(spec.validity.as_secs() as i64)
    .bind(spec.path_length.map(i64::from))
    .bind(permitted)
    .bind(new.cert_pem.as_deref())
    .bind(&new.chain_pem)
    .bind(new.csr_pem.as_deref())
    .bind(new.serial.as_ref().map(|s| s.as_str().to_owned()))
    .bind(new.not_before.map(unix))
    .bind(new.not_after.map(unix))
    .bind(key.kid)
    .bind(key.blob)
    .bind(unix(OffsetDateTime::now_utc()))
    .execute(conn)
    .await?;
    Ok(())
}

async fn install_ca(
    conn: &mut SqliteConnection,
    name: &str,
    installed: &InstalledCa,
) -> Result<(), StoreError> {
    let updated = sqlx::query(
        "UPDATE cas SET state = 'active', cert_pem = ?, chain_pem = ?, serial = ?, not_before = ?, not_after = ? \
         WHERE name = ? AND state = 'pending-certificate'",
    )
    .bind(&installed.cert_pem)
    .bind(&installed.chain_pem)
    .bind(installed.serial.as_str())
    .bind(unix(installed.not_before))
    .bind(unix(installed.not_after))
    .bind(name)
    .execute(conn)
    .await?;
    if updated.rows_affected() != 1 {
        return Err(StoreError::Conflict(format!(
            "CA {name:?} is not waiting for a certificate"
        )));
    }
    Ok(())
}

async fn save_crl(
    conn: &mut SqliteConnection,
    ca: &str,
    number: u64,
    der: Vec<u8>,
    next_update: OffsetDateTime,
) -> Result<(), StoreError> {
    // CRL numbers must only grow: a slower writer with an older number loses.
    let updated = sqlx::query(
        "UPDATE cas SET crl_number = ?, crl_der = ?, crl_next_update = ? WHERE name = ? AND crl_number < ?",
    )
    .bind(number as i64)
    .bind(der)
    .bind(unix(next_update))
    .bind(ca)
    .bind(number as i64)
    .execute(conn)
    .await?;
    if updated.rows_affected() != 1 {
        return Err(StoreError::Conflict(format!("CRL of CA {ca:?}")));
    }
    Ok(())
}

async fn rewrap(
    conn: &mut SqliteConnection,
    rows: Vec<(SealedRecord, Sealed)>,
) -> Result<(), StoreError> {
    for (record, sealed) in rows {
        let query = match &record {
            SealedRecord::Ca(name) => sqlx::query("UPDATE cas SET key_kid = ?, key_blob = ? WHERE name = ?")
                .bind(sealed.kid)
                .bind(sealed.blob)
                .bind(name.clone()),
            SealedRecord::Version(id, version) => sqlx::query(
                "UPDATE versions SET key_kid = ?, key_blob = ? WHERE certificate_id = ? AND version = ?",
            )
            .bind(sealed.kid)
            .bind(sealed.blob)
            .bind(id.as_str().to_owned())
            .bind(*version),
        };
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

async fn insert_event(conn: &mut SqliteConnection, event: &Event) -> Result<(), StoreError> {
    let body = serde_json::to_string(event).map_err(|e| StoreError::Invalid(e.to_string()))?;
    sqlx::query(
        "INSERT INTO events (id, time, detail_type, certificate_id, body) VALUES (?, ?, ?, ?, ?)",
    )
    .bind(&event.id)
    .bind(unix(event.time))
    .bind(&event.detail_type)
    .bind(event.resources.first().map(String::as_str))
    .bind(body)
    .execute(conn)
    .await?;
    Ok(())
}
