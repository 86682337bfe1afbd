//! SQLite backend: connection setup, migrations, and the read queries.
//!
//! Writes live in `writer.rs`, on the one thread that owns the write connection. Reads take a
//! connection from a small pool on the blocking thread pool: one thread hand-off per read, not
//! per statement, and WAL mode lets them run while the writer commits.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::types::Value;
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, params};
use time::OffsetDateTime;
use tracing::warn;

use super::{Sealed, SealedRecord, StoreError, StoredCa, StoredVersion};
use crate::config::Synchronous;
use crate::events::Event;
use crate::lock;
use crate::metrics::{MetricsRow, MetricsSummary};
use crate::model::{
    CaInfo, CaKind, CaState, Certificate, CertificateId, Origin, Renewal, RevocationReason, Serial,
    Status, VersionInfo, from_unix, unix,
};
use crate::span::Span;

/// The schema, in order. A database records how many it has applied in `PRAGMA user_version`;
/// opening applies the rest, each in its own transaction. Never edit an applied migration: add
/// a new one.
const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/sqlite/0001_inventory.sql"),
    include_str!("../../migrations/sqlite/0002_lifecycle.sql"),
    include_str!("../../migrations/sqlite/0003_acme.sql"),
    include_str!("../../migrations/sqlite/0004_indexes.sql"),
    include_str!("../../migrations/sqlite/0005_commits.sql"),
    include_str!("../../migrations/sqlite/0006_audit.sql"),
    include_str!("../../migrations/sqlite/0007_acme_pending_key.sql"),
    include_str!("../../migrations/sqlite/0008_acme_challenge_records.sql"),
];

/// Read connections kept open; more concurrent reads wait for one.
const READERS: usize = 4;

/// Filters for `list`. All are optional and combine with AND.
#[derive(Clone, Debug, Default)]
pub struct ListFilter {
    pub statuses: Vec<Status>,
    pub origins: Vec<Origin>,
    /// `(key, None)` matches any value of the key.
    pub tags: Vec<(String, Option<String>)>,
    /// Certificates whose not-after is at most this far from now.
    pub expiring_within: Option<Span>,
    /// Return ids strictly after this one (the previous page's last id).
    pub after: Option<CertificateId>,
    pub limit: u32,
}

#[derive(Clone)]
pub(super) struct Db {
    readers: Arc<ReadPool>,
    /// Rows left out of answers because they do not decode (see [`readable`]).
    skipped: Arc<AtomicU64>,
}

struct ReadPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    /// One permit per idle connection: held from taking a connection until it is back.
    available: Arc<tokio::sync::Semaphore>,
}

impl ReadPool {
    /// Runs `f` on an idle connection and puts it back. The caller holds a permit.
    fn with_connection<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let taken = lock::lock(&self.idle).pop();
        let conn = match taken {
            Some(conn) => conn,
            // Only after a reader was lost to a panic: open a fresh one.
            None => open_reader(&self.path)?,
        };
        let result = f(&conn);
        lock::lock(&self.idle).push(conn);
        result
    }
}

impl Db {
    /// Opens the database, applies migrations, and returns the reader pool and the one write
    /// connection.
    pub(super) fn open(
        path: &Path,
        synchronous: Synchronous,
    ) -> Result<(Self, Connection), StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.display().to_string(),
            source,
        };
        let mut writer = Connection::open(path).map_err(open_err)?;
        configure(&writer, synchronous).map_err(open_err)?;
        migrate(&mut writer)?;
        restrict_permissions(path);

        let mut idle = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            idle.push(open_reader(path)?);
        }
        let readers = ReadPool {
            path: path.to_owned(),
            idle: Mutex::new(idle),
            available: Arc::new(tokio::sync::Semaphore::new(READERS)),
        };
        Ok((
            Self {
                readers: Arc::new(readers),
                skipped: Arc::new(AtomicU64::new(0)),
            },
            writer,
        ))
    }

    /// Runs `f` with a read connection on the blocking pool.
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        // The permit guarantees an idle connection exists when we take one. It moves into the
        // blocking task and is released there, after the connection is back: a caller that
        // gives up while waiting (a request cancelled at its deadline) leaves the task running
        // with the connection, and a permit released at that point would let the next read
        // open another one, growing the pool past READERS.
        let permit = self
            .readers
            .available
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Closed)?;
        let pool = self.readers.clone();
        tokio::task::spawn_blocking(move || {
            let result = pool.with_connection(f);
            drop(permit);
            result
        })
        .await
        .map_err(|e| StoreError::Invalid(format!("read task failed: {e}")))?
    }

    /// Runs `f` with a read connection right here, on the async worker: for point lookups
    /// through an index (tens of microseconds), where the two thread hand-offs of [`Db::read`]
    /// cost more than the query. Anything that may scan goes through [`Db::read`].
    async fn read_quick<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(&Connection) -> Result<T, StoreError>,
    {
        let _permit = self
            .readers
            .available
            .acquire()
            .await
            .map_err(|_| StoreError::Closed)?;
        // No await from here on: the connection is back before this future can be dropped.
        self.readers.with_connection(f)
    }

    pub(super) async fn find_certificate(
        &self,
        id_or_name: String,
        now: OffsetDateTime,
    ) -> Result<Option<Certificate>, StoreError> {
        self.read_quick(move |conn| {
            let column = if CertificateId::parse(&id_or_name).is_some() {
                "id"
            } else {
                "name"
            };
            let sql = format!("SELECT * FROM certificates WHERE {column} = ?");
            let cert = conn
                .prepare_cached(&sql)?
                .query_row([&id_or_name], |row| Ok(certificate_from_row(row, now)))
                .optional()?
                .transpose()?;
            let Some(mut cert) = cert else {
                return Ok(None);
            };
            attach_tags(conn, std::slice::from_mut(&mut cert))?;
            cert.versions = versions(conn, &cert.id)?;
            Ok(Some(cert))
        })
        .await
    }

    pub(super) async fn count_certificates(&self) -> Result<u64, StoreError> {
        self.read(|conn| {
            let n: i64 = conn.query_row("SELECT COUNT(*) FROM certificates", [], |r| r.get(0))?;
            Ok(n.max(0) as u64)
        })
        .await
    }

    pub(super) async fn list(
        &self,
        filter: ListFilter,
        now: OffsetDateTime,
    ) -> Result<Vec<Certificate>, StoreError> {
        let skipped = self.skipped.clone();
        self.read(move |conn| {
            let (sql, values) = list_query(&filter, now);
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows = stmt.query_map(rusqlite::params_from_iter(values), |row| {
                Ok((row_id(row), certificate_from_row(row, now)))
            })?;
            let mut certs = Vec::new();
            for row in rows {
                let (id, cert) = row?;
                certs.extend(readable(&skipped, "certificates", &id, cert)?);
            }
            attach_tags(conn, &mut certs)?;
            Ok(certs)
        })
        .await
    }

    pub(super) async fn version(
        &self,
        id: CertificateId,
        version: u32,
    ) -> Result<Option<StoredVersion>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT version, serial, issuer_ca, cert_pem, chain_pem, key_kid, key_blob \
                 FROM versions WHERE certificate_id = ? AND version = ?",
            )?;
            let row = stmt
                .query_row(params![id.as_str(), version], |row| {
                    let kid: Option<String> = row.get("key_kid")?;
                    let blob: Option<Vec<u8>> = row.get("key_blob")?;
                    Ok((
                        row.get::<_, u32>("version")?,
                        row.get::<_, String>("serial")?,
                        row.get("issuer_ca")?,
                        row.get("cert_pem")?,
                        row.get("chain_pem")?,
                        kid.zip(blob).map(|(kid, blob)| Sealed { kid, blob }),
                    ))
                })
                .optional()?;
            let Some((version, serial, issuer_ca, cert_pem, chain_pem, key)) = row else {
                return Ok(None);
            };
            Ok(Some(StoredVersion {
                version,
                serial: parse_serial(&serial)?,
                issuer_ca,
                cert_pem,
                chain_pem,
                key,
            }))
        })
        .await
    }

    pub(super) async fn cas(&self) -> Result<Vec<StoredCa>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached("SELECT * FROM cas ORDER BY created_at, name")?;
            let rows = stmt.query_map([], |row| Ok(ca_from_row(row)))?;
            let mut cas = Vec::new();
            for row in rows {
                cas.push(row??);
            }
            Ok(cas)
        })
        .await
    }

    pub(super) async fn ca(&self, name: String) -> Result<Option<StoredCa>, StoreError> {
        self.read(move |conn| {
            conn.prepare_cached("SELECT * FROM cas WHERE name = ?")?
                .query_row([&name], |row| Ok(ca_from_row(row)))
                .optional()?
                .transpose()
        })
        .await
    }

    pub(super) async fn revocations(
        &self,
        ca: String,
    ) -> Result<Vec<(Serial, OffsetDateTime, RevocationReason)>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT serial, revoked_at, reason FROM revocations WHERE ca = ? ORDER BY revoked_at",
            )?;
            let rows = stmt.query_map([&ca], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?, row.get::<_, String>(2)?))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (serial, at, reason) = row?;
                out.push((parse_serial(&serial)?, from_unix(at), parse_text(&reason, "reason")?));
            }
            Ok(out)
        })
        .await
    }

    pub(super) async fn events_after(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<(i64, Event)>, StoreError> {
        self.read_quick(move |conn| {
            log_page(
                conn,
                "SELECT seq, body FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                after,
                limit,
                "event",
            )
        })
        .await
    }

    pub(super) async fn audit_after(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<crate::audit::Entry>, StoreError> {
        self.read_quick(move |conn| {
            let rows = log_page(
                conn,
                "SELECT seq, body FROM audit WHERE seq > ? ORDER BY seq LIMIT ?",
                after,
                limit,
                "audit record",
            )?;
            Ok(rows
                .into_iter()
                .map(|(seq, record)| crate::audit::Entry { seq, record })
                .collect())
        })
        .await
    }

    pub(super) async fn key_usage(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT key_kid, COUNT(*) FROM versions WHERE key_kid IS NOT NULL GROUP BY key_kid \
                 UNION ALL SELECT key_kid, COUNT(*) FROM cas GROUP BY key_kid \
                 UNION ALL SELECT key_kid, COUNT(*) FROM acme_accounts GROUP BY key_kid \
                 UNION ALL SELECT key_kid, COUNT(*) FROM acme_pending_keys GROUP BY key_kid \
                 UNION ALL SELECT key_kid, COUNT(*) FROM acme_orders GROUP BY key_kid",
            )?;
            let rows = stmt.query_map([], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
            })?;
            let mut usage = BTreeMap::new();
            for row in rows {
                let (kid, n) = row?;
                *usage.entry(kid).or_insert(0) += n.max(0) as u64;
            }
            Ok(usage)
        })
        .await
    }

    /// Sealed records whose master key id equals (`equal`) or differs from `kid`.
    pub(super) async fn sealed_records(
        &self,
        kid: String,
        equal: bool,
        limit: u32,
    ) -> Result<Vec<(SealedRecord, Sealed)>, StoreError> {
        self.read(move |conn| {
            let op = if equal { "=" } else { "<>" };
            let sql = format!(
                "SELECT 'ca', name, 0, key_kid, key_blob FROM cas WHERE key_kid {op} ?1 \
                 UNION ALL SELECT 'account', issuer, 0, key_kid, key_blob FROM acme_accounts WHERE key_kid {op} ?1 \
                 UNION ALL SELECT 'pending', issuer, 0, key_kid, key_blob FROM acme_pending_keys WHERE key_kid {op} ?1 \
                 UNION ALL SELECT 'order', certificate_id, 0, key_kid, key_blob FROM acme_orders WHERE key_kid {op} ?1 \
                 UNION ALL SELECT 'version', certificate_id, version, key_kid, key_blob FROM versions \
                 WHERE key_kid IS NOT NULL AND key_kid {op} ?1 LIMIT ?2"
            );
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows = stmt.query_map(params![kid, limit], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, u32>(2)?,
                    Sealed { kid: row.get(3)?, blob: row.get(4)? },
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (kind, id, version, sealed) = row?;
                let cert_id = |id: &str| {
                    CertificateId::parse(id).ok_or_else(|| StoreError::Corrupt(format!("certificate id {id:?}")))
                };
                let record = match kind.as_str() {
                    "ca" => SealedRecord::Ca(id),
                    "account" => SealedRecord::AcmeAccount(id),
                    "pending" => SealedRecord::AcmePendingKey(id),
                    "order" => SealedRecord::AcmeOrder(cert_id(&id)?),
                    _ => SealedRecord::Version(cert_id(&id)?, version),
                };
                out.push((record, sealed));
            }
            Ok(out)
        })
        .await
    }

    pub(super) async fn setting(&self, key: String) -> Result<Option<String>, StoreError> {
        self.read(move |conn| {
            Ok(conn
                .prepare_cached("SELECT value FROM settings WHERE key = ?")?
                .query_row([&key], |r| r.get(0))
                .optional()?)
        })
        .await
    }

    /// Whether any certificate's next action is due at `now` (through the partial index).
    pub(super) async fn anything_due(&self, now: OffsetDateTime) -> Result<bool, StoreError> {
        self.read_quick(move |conn| {
            Ok(conn.query_row(
                "SELECT EXISTS (SELECT 1 FROM certificates WHERE next_action_at <= ?)",
                [unix(now)],
                |r| r.get(0),
            )?)
        })
        .await
    }

    pub(super) async fn next_deadline(&self) -> Result<super::Deadlines, StoreError> {
        self.read(|conn| {
            let action: Option<i64> = conn.query_row(
                "SELECT MIN(next_action_at) FROM certificates WHERE next_action_at IS NOT NULL",
                [],
                |r| r.get(0),
            )?;
            let expiry: Option<i64> = conn.query_row(
                "SELECT MIN(not_after) FROM certificates WHERE status = 'issued'",
                [],
                |r| r.get(0),
            )?;
            Ok(super::Deadlines {
                action: action.map(from_unix),
                expiry: expiry.map(from_unix),
            })
        })
        .await
    }

    pub(super) async fn expired_due(
        &self,
        now: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<Certificate>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT * FROM certificates WHERE status = 'issued' AND not_after <= ? \
                 ORDER BY not_after LIMIT ?",
            )?;
            // Read the stored status: the point is to find `issued` rows to mark expired.
            let rows = stmt.query_map(params![unix(now), limit], |row| {
                Ok(certificate_from_row(row, OffsetDateTime::UNIX_EPOCH))
            })?;
            let mut out = Vec::new();
            for row in rows {
                out.push(row??);
            }
            Ok(out)
        })
        .await
    }

    pub(super) async fn expiry_candidates(
        &self,
        now: OffsetDateTime,
        horizon: time::Duration,
    ) -> Result<Vec<super::ExpiryCandidate>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, name, origin, domains, serial, not_before, not_after, days_before_expiry, \
                 expiry_event_day, next_action_at, renew_before, renewal_failures FROM certificates \
                 WHERE status = 'issued' AND not_after > ? AND not_after <= ?",
            )?;
            let rows = stmt.query_map(params![unix(now), unix(now + horizon)], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, String>(3)?,
                    row.get::<_, String>(4)?,
                    row.get::<_, i64>(5)?,
                    row.get::<_, i64>(6)?,
                    row.get::<_, Option<i64>>(7)?,
                    row.get::<_, Option<i64>>(8)?,
                    row.get::<_, Option<i64>>(9)?,
                    row.get::<_, Option<i64>>(10)?,
                    row.get::<_, i64>(11)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (id, name, origin, domains, serial, nb, na, days, day, next, renew_before, failures) =
                    row?;
                out.push(super::ExpiryCandidate {
                    id: CertificateId::parse(&id)
                        .ok_or_else(|| StoreError::Corrupt(format!("certificate id {id:?}")))?,
                    name,
                    origin: parse_text(&origin, "origin")?,
                    common_name: first_domain(&domains),
                    serial: parse_serial(&serial)?,
                    not_before: from_unix(nb),
                    not_after: from_unix(na),
                    days_before_expiry: days.map(|d| d.clamp(0, i64::from(u32::MAX)) as u32),
                    expiry_event_day: day,
                    renew_before: renew_before.map(|s| Span::from_secs(s.max(0) as u64)),
                    renewal: next.map(|at| crate::policy::RenewalState {
                        next_action_at: from_unix(at),
                        failures: failures.clamp(0, i64::from(u32::MAX)) as u32,
                    }),
                });
            }
            Ok(out)
        })
        .await
    }

    pub(super) async fn replannable(&self) -> Result<Vec<super::Replannable>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, not_before, not_after, renew_before, maintenance_window, \
                 maintenance_window_seconds, maintenance_window_tz, renewal_info, current_version, \
                 (SELECT created_at FROM versions v WHERE v.certificate_id = certificates.id \
                  AND v.version = certificates.current_version) AS issued_at FROM certificates \
                 WHERE next_action_at IS NOT NULL AND renewal_failures = 0 \
                 AND not_before IS NOT NULL AND not_after IS NOT NULL \
                 AND (renewal_status IS NULL OR renewal_status <> 'pending-auto-renewal')",
            )?;
            let rows = stmt.query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, i64>(2)?,
                    row.get::<_, Option<i64>>(3)?,
                    window_from_row(row)?,
                    row.get::<_, Option<String>>("renewal_info")?,
                    row.get::<_, Option<i64>>("issued_at")?,
                    row.get::<_, u32>("current_version")?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (id, nb, na, rb, window, info, issued_at, version) = row?;
                let id = CertificateId::parse(&id)
                    .ok_or_else(|| StoreError::Corrupt(format!("certificate id {id:?}")))?;
                out.push(super::Replannable {
                    id,
                    lifetime: crate::policy::Lifetime {
                        not_before: from_unix(nb),
                        not_after: from_unix(na),
                    },
                    renew_before: rb.map(|s| Span::from_secs(s.max(0) as u64)),
                    window,
                    renewal_info: parse_renewal_info(info)?,
                    issued_at: issued_at.map(from_unix),
                    version,
                });
            }
            Ok(out)
        })
        .await
    }

    pub(super) async fn acme_account(
        &self,
        issuer: String,
    ) -> Result<Option<(super::AcmeAccount, Sealed)>, StoreError> {
        self.read(move |conn| {
            Ok(conn
                .prepare_cached("SELECT * FROM acme_accounts WHERE issuer = ?")?
                .query_row([&issuer], |r| {
                    let sealed = Sealed {
                        kid: r.get("key_kid")?,
                        blob: r.get("key_blob")?,
                    };
                    Ok((acme_account_from_row(r)?, sealed))
                })
                .optional()?)
        })
        .await
    }

    pub(super) async fn acme_pending_key(
        &self,
        issuer: String,
    ) -> Result<Option<Sealed>, StoreError> {
        self.read(move |conn| {
            Ok(conn
                .prepare_cached("SELECT key_kid, key_blob FROM acme_pending_keys WHERE issuer = ?")?
                .query_row([&issuer], |r| {
                    Ok(Sealed {
                        kid: r.get(0)?,
                        blob: r.get(1)?,
                    })
                })
                .optional()?)
        })
        .await
    }

    pub(super) async fn acme_accounts(&self) -> Result<Vec<super::AcmeAccount>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached("SELECT * FROM acme_accounts ORDER BY issuer")?;
            let rows = stmt.query_map([], acme_account_from_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    pub(super) async fn acme_order(
        &self,
        id: CertificateId,
    ) -> Result<Option<(String, String, Sealed)>, StoreError> {
        self.read_quick(move |conn| {
            Ok(conn
                .prepare_cached("SELECT issuer, order_url, key_kid, key_blob FROM acme_orders WHERE certificate_id = ?")?
                .query_row([id.as_str()], |r| Ok((r.get(0)?, r.get(1)?, Sealed { kid: r.get(2)?, blob: r.get(3)? })))
                .optional()?)
        })
        .await
    }

    pub(super) async fn kept_acme_orders(&self) -> Result<Vec<CertificateId>, StoreError> {
        self.read(move |conn| {
            let mut stmt =
                conn.prepare_cached("SELECT certificate_id FROM acme_orders ORDER BY created_at")?;
            let ids = stmt.query_map([], |r| r.get::<_, String>(0))?;
            let mut kept = Vec::new();
            for id in ids {
                kept.extend(CertificateId::parse(&id?));
            }
            Ok(kept)
        })
        .await
    }

    pub(super) async fn challenge_records(
        &self,
    ) -> Result<Vec<(super::ChallengeRecord, bool)>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT r.kind, r.name, r.value, r.certificate_id, r.order_url, o.order_url IS NOT NULL \
                 FROM acme_challenge_records r LEFT JOIN acme_orders o \
                 ON o.certificate_id = r.certificate_id AND o.order_url = r.order_url \
                 ORDER BY r.published_at",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, bool>(5)?,
                ))
            })?;
            let mut records = Vec::new();
            for row in rows {
                let (kind, name, value, certificate, order_url, live) = row?;
                // A row this version cannot read is left for the version that wrote it.
                let (Some(kind), Some(certificate)) = (
                    super::ChallengeRecordKind::parse(&kind),
                    CertificateId::parse(&certificate),
                ) else {
                    continue;
                };
                records.push((
                    super::ChallengeRecord {
                        kind,
                        name,
                        value,
                        certificate,
                        order_url,
                    },
                    live,
                ));
            }
            Ok(records)
        })
        .await
    }

    pub(super) async fn sink_cursor(&self, sink: String) -> Result<Option<i64>, StoreError> {
        self.read(move |conn| {
            Ok(conn
                .prepare_cached("SELECT seq FROM sink_cursors WHERE sink = ?")?
                .query_row([&sink], |r| r.get(0))
                .optional()?)
        })
        .await
    }

    pub(super) async fn last_event_seq(&self) -> Result<i64, StoreError> {
        self.read(|conn| {
            Ok(conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| r.get(0))?)
        })
        .await
    }

    pub(super) async fn events_count_after(&self, seq: i64) -> Result<i64, StoreError> {
        self.read(move |conn| {
            Ok(
                conn.query_row("SELECT COUNT(*) FROM events WHERE seq > ?", [seq], |r| {
                    r.get(0)
                })?,
            )
        })
        .await
    }

    pub(super) async fn metrics_summary(
        &self,
        now: OffsetDateTime,
    ) -> Result<MetricsSummary, StoreError> {
        let skipped = self.skipped.clone();
        self.read(move |conn| {
            let mut summary = MetricsSummary::default();
            let mut counts = conn.prepare_cached(
                "SELECT CASE WHEN status = 'issued' AND not_after < ?1 THEN 'expired' ELSE status END, \
                 origin, COUNT(*) FROM certificates GROUP BY 1, 2 ORDER BY 1, 2",
            )?;
            let rows = counts.query_map([unix(now)], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?)))?;
            for row in rows {
                let (status, origin, n) = row?;
                let group = format!("status {status:?}, origin {origin:?}");
                let parsed = parse_text(&status, "status").and_then(|s| Ok((s, parse_text(&origin, "origin")?)));
                // A group that does not decode is that many rows left out.
                if let Some((status, origin)) = readable(&skipped, "certificates", &group, parsed)? {
                    summary.counts.push((status, origin, n));
                } else {
                    skipped.fetch_add(n.max(1) as u64 - 1, Ordering::Relaxed);
                }
            }
            let mut earliest = conn.prepare_cached(
                "SELECT origin, MIN(not_after) FROM certificates WHERE status = 'issued' AND not_after >= ? \
                 GROUP BY origin ORDER BY origin",
            )?;
            let rows = earliest.query_map([unix(now)], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
            for row in rows {
                let (origin, at) = row?;
                // Its rows are counted above already.
                if let Ok(origin) = parse_text(&origin, "origin") {
                    summary.earliest_expiry.push((origin, from_unix(at)));
                }
            }
            summary.renewals_failing =
                conn.query_row("SELECT COUNT(*) FROM certificates WHERE renewal_failures > 0", [], |r| r.get(0))?;
            summary.rows_skipped = skipped.load(Ordering::Relaxed);
            Ok(summary)
        })
        .await
    }

    pub(super) async fn metrics_rows(&self) -> Result<Vec<MetricsRow>, StoreError> {
        let skipped = self.skipped.clone();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, name, origin, domains, issuer, status, not_before, not_after, next_action_at, \
                 renewal_failures FROM certificates ORDER BY id",
            )?;
            let rows = stmt.query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, String>(3)?,
                    row.get::<_, String>(4)?,
                    row.get::<_, String>(5)?,
                    row.get::<_, i64>(6)?,
                    row.get::<_, i64>(7)?,
                    row.get::<_, Option<i64>>(8)?,
                    row.get::<_, i64>(9)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (id, name, origin, domains, issuer, status, nb, na, next, failures) = row?;
                let decoded = (|| {
                    Ok(MetricsRow {
                        id: CertificateId::parse(&id)
                            .ok_or_else(|| StoreError::Corrupt(format!("certificate id {id:?}")))?,
                        name,
                        origin: parse_text(&origin, "origin")?,
                        common_name: first_domain(&domains),
                        issuer,
                        status: parse_text(&status, "status")?,
                        not_before: from_unix(nb),
                        not_after: from_unix(na),
                        next_action_at: next.map(from_unix),
                        renewal_failures: failures.clamp(0, i64::from(u32::MAX)) as u32,
                    })
                })();
                out.extend(readable(&skipped, "certificates", &id, decoded)?);
            }
            Ok(out)
        })
        .await
    }
}

fn configure(conn: &Connection, synchronous: Synchronous) -> rusqlite::Result<()> {
    conn.busy_timeout(Duration::from_secs(10))?;
    let sync = match synchronous {
        Synchronous::Full => "FULL",
        Synchronous::Normal => "NORMAL",
    };
    // temp_store: the writer's savepoints (one per job when a commit carries several) keep
    // their undo pages in memory rather than in a temporary file written for every job.
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = {sync}; PRAGMA foreign_keys = ON; \
         PRAGMA cache_size = -16384; PRAGMA temp_store = MEMORY;"
    ))
}

/// What the database holds, for the start-up log.
pub(super) struct Census {
    pub certificates: u64,
    /// The last event's cursor ever given (pruned events count too).
    pub last_event_seq: i64,
    /// Write transactions committed (the high-water mark is checked against it).
    pub commits: u64,
}

/// Reads every page of the database (`PRAGMA quick_check`: the b-trees and their pages, not
/// the indexes against their tables), so that damage in a page nothing touches at start is
/// found now, not in the middle of some later request; then counts what it holds.
pub(super) fn check(conn: &Connection, path: &Path) -> Result<Census, StoreError> {
    let damaged = |detail: String| StoreError::Damaged {
        path: path.display().to_string(),
        detail,
    };
    let problems = (|| {
        let mut stmt = conn.prepare("PRAGMA quick_check(5)")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
    })()
    .map_err(|err| match StoreError::from(err) {
        err if err.is_corrupt() => damaged(err.to_string()),
        other => other,
    })?;
    if problems != ["ok"] {
        return Err(damaged(problems.join("; ")));
    }
    let count = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0));
    Ok(Census {
        certificates: count("SELECT COUNT(*) FROM certificates")?.max(0) as u64,
        last_event_seq: count(
            "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0)",
        )?,
        commits: count("SELECT count FROM commits WHERE id = 1")?.max(0) as u64,
    })
}

fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|source| StoreError::Open {
        path: path.display().to_string(),
        source,
    })?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.execute_batch("PRAGMA cache_size = -16384;")?;
    Ok(conn)
}

/// A page of an append-only log table: `(seq, body)` rows, each body decoded from JSON. A body
/// that does not decode is reported as corruption, naming the row (`what` and its seq).
fn log_page<T: serde::de::DeserializeOwned>(
    conn: &Connection,
    sql: &str,
    after: i64,
    limit: u32,
    what: &str,
) -> Result<Vec<(i64, T)>, StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map(params![after, limit], |row| {
        Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (seq, body) = row?;
        let value = serde_json::from_str(&body)
            .map_err(|e| StoreError::Corrupt(format!("{what} {seq}: {e}")))?;
        out.push((seq, value));
    }
    Ok(out)
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let applied: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let applied = usize::try_from(applied).unwrap_or(0);
    if applied > MIGRATIONS.len() {
        return Err(StoreError::Invalid(format!(
            "the database has schema version {applied}, newer than this certkeeper knows ({}); \
             run a newer certkeeper",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1))?;
        tx.commit()?;
    }
    Ok(())
}

/// Keeps the database (and its WAL and shared-memory files) private to the service.
fn restrict_permissions(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        let _ = std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600));
    }
}

/// Builds the `list` query. Only placeholders carry user input.
fn list_query(filter: &ListFilter, now: OffsetDateTime) -> (String, Vec<Value>) {
    // Pages come in id order, LIMIT rows at a time: walking an id-ordered index (the primary
    // key, or `certificates_status` under a status filter) and stopping at LIMIT matches beats
    // collecting every row in an expiry range to sort it. The unary `+` keeps the expiry terms
    // off `certificates_expiry`, which the planner would otherwise prefer.
    let mut sql = String::from("SELECT * FROM certificates c WHERE 1 = 1");
    let mut values: Vec<Value> = Vec::new();
    if let Some(after) = &filter.after {
        sql.push_str(" AND c.id > ?");
        values.push(Value::Text(after.as_str().to_owned()));
    }
    if !filter.statuses.is_empty() {
        let mut parts = Vec::new();
        for status in &filter.statuses {
            // `issued` past its not-after reads as `expired` (see `effective_status`).
            match status {
                Status::Expired => {
                    parts.push(
                        "(c.status = 'expired' OR (c.status = 'issued' AND +c.not_after < ?))",
                    );
                    values.push(Value::Integer(unix(now)));
                }
                Status::Issued => {
                    parts.push("(c.status = 'issued' AND +c.not_after >= ?)");
                    values.push(Value::Integer(unix(now)));
                }
                other => {
                    parts.push("c.status = ?");
                    values.push(Value::Text(other.as_str().to_owned()));
                }
            }
        }
        sql.push_str(&format!(" AND ({})", parts.join(" OR ")));
    }
    if !filter.origins.is_empty() {
        let marks = vec!["?"; filter.origins.len()].join(", ");
        sql.push_str(&format!(" AND c.origin IN ({marks})"));
        values.extend(
            filter
                .origins
                .iter()
                .map(|o| Value::Text(o.as_str().to_owned())),
        );
    }
    if let Some(within) = filter.expiring_within {
        sql.push_str(" AND +c.not_after <= ?");
        values.push(Value::Integer(unix(now.saturating_add(within.time()))));
    }
    for (key, value) in &filter.tags {
        sql.push_str(
            " AND EXISTS (SELECT 1 FROM tags t WHERE t.certificate_id = c.id AND t.key = ?",
        );
        values.push(Value::Text(key.clone()));
        if let Some(value) = value {
            sql.push_str(" AND t.value = ?");
            values.push(Value::Text(value.clone()));
        }
        sql.push(')');
    }
    sql.push_str(" ORDER BY c.id LIMIT ?");
    values.push(Value::Integer(i64::from(filter.limit)));
    (sql, values)
}

fn attach_tags(conn: &Connection, certs: &mut [Certificate]) -> Result<(), StoreError> {
    if certs.is_empty() {
        return Ok(());
    }
    let marks = vec!["?"; certs.len()].join(", ");
    let sql =
        format!("SELECT certificate_id, key, value FROM tags WHERE certificate_id IN ({marks})");
    let mut stmt = conn.prepare(&sql)?;
    let ids = certs.iter().map(|c| c.id.as_str());
    let rows = stmt.query_map(rusqlite::params_from_iter(ids), |row| {
        Ok((
            row.get::<_, String>(0)?,
            row.get::<_, String>(1)?,
            row.get::<_, String>(2)?,
        ))
    })?;
    let mut by_id: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for row in rows {
        let (id, key, value) = row?;
        by_id.entry(id).or_default().insert(key, value);
    }
    for cert in certs {
        cert.tags = by_id.remove(cert.id.as_str()).unwrap_or_default();
    }
    Ok(())
}

fn versions(conn: &Connection, id: &CertificateId) -> Result<Vec<VersionInfo>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT version, serial, issuer_ca, not_before, not_after, key_blob IS NOT NULL, created_at \
         FROM versions WHERE certificate_id = ? ORDER BY version DESC",
    )?;
    let rows = stmt.query_map([id.as_str()], |row| {
        Ok((
            row.get::<_, u32>(0)?,
            row.get::<_, String>(1)?,
            row.get::<_, Option<String>>(2)?,
            row.get::<_, i64>(3)?,
            row.get::<_, i64>(4)?,
            row.get::<_, bool>(5)?,
            row.get::<_, i64>(6)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (version, serial, issuer_ca, not_before, not_after, key_held, created_at) = row?;
        out.push(VersionInfo {
            version,
            serial: parse_serial(&serial)?,
            issuer_ca,
            not_before: from_unix(not_before),
            not_after: from_unix(not_after),
            key_held,
            created_at: from_unix(created_at),
        });
    }
    Ok(out)
}

/// One row's decoded value, or `None` for a row that does not decode: it is left out of an
/// answer that lists many, logged by `id` and counted (`certkeeper_store_rows_skipped_total`),
/// so that one damaged row does not take `list` or `/metrics` away from everyone. Any other
/// error fails the whole read.
fn readable<T>(
    skipped: &AtomicU64,
    table: &'static str,
    id: &str,
    decoded: Result<T, StoreError>,
) -> Result<Option<T>, StoreError> {
    match decoded {
        Ok(value) => Ok(Some(value)),
        Err(err) if is_undecodable(&err) => {
            skipped.fetch_add(1, Ordering::Relaxed);
            warn!(table, id, error = %err, "a stored row does not decode; left out of the answer");
            Ok(None)
        }
        Err(err) => Err(err),
    }
}

/// Whether `err` is about one row's values (rather than the database failing the read).
fn is_undecodable(err: &StoreError) -> bool {
    use rusqlite::Error as E;
    match err {
        StoreError::Corrupt(_) => true,
        StoreError::Database(err) => matches!(
            err,
            E::InvalidColumnType(..)
                | E::FromSqlConversionFailure(..)
                | E::IntegralValueOutOfRange(..)
                | E::ToSqlConversionFailure(..)
                | E::Utf8Error(..)
        ),
        _ => false,
    }
}

/// A row's `id`, for the log line of a row that does not decode.
fn row_id(row: &Row<'_>) -> String {
    row.get::<_, String>("id")
        .unwrap_or_else(|_| "(unreadable id)".to_owned())
}

/// `issued` certificates past their not-after are shown as `expired` even before the lifecycle
/// task records it, so no reader ever sees an expired certificate called issued.
fn effective_status(
    stored: Status,
    not_after: Option<OffsetDateTime>,
    now: OffsetDateTime,
) -> Status {
    if stored == Status::Issued && not_after.is_some_and(|t| t < now) {
        Status::Expired
    } else {
        stored
    }
}

/// Maps a `certificates` row. The outer `rusqlite::Result` is column access; the inner one is
/// our own validation of the values.
fn certificate_from_row(row: &Row<'_>, now: OffsetDateTime) -> Result<Certificate, StoreError> {
    let id: String = row.get("id")?;
    let domains: String = row.get("domains")?;
    let not_after = row.get::<_, Option<i64>>("not_after")?.map(from_unix);
    let validity: Option<i64> = row.get("validity")?;
    let reason: Option<String> = row.get("revocation_reason")?;
    Ok(Certificate {
        id: CertificateId::parse(&id)
            .ok_or_else(|| StoreError::Corrupt(format!("certificate id {id:?}")))?,
        name: row.get("name")?,
        origin: parse_text(&row.get::<_, String>("origin")?, "origin")?,
        status: effective_status(
            parse_text(&row.get::<_, String>("status")?, "status")?,
            not_after,
            now,
        ),
        issuer: row.get("issuer")?,
        domains: serde_json::from_str(&domains)
            .map_err(|e| StoreError::Corrupt(format!("domains of {id}: {e}")))?,
        key_algorithm: parse_text(&row.get::<_, String>("key_algorithm")?, "key_algorithm")?,
        serial: row
            .get::<_, Option<String>>("serial")?
            .as_deref()
            .map(parse_serial)
            .transpose()?,
        not_before: row.get::<_, Option<i64>>("not_before")?.map(from_unix),
        not_after,
        current_version: row.get("current_version")?,
        validity: validity.map(|s| Span::from_secs(s.max(0) as u64)),
        client_auth: row.get("client_auth")?,
        tags: BTreeMap::new(),
        created_at: from_unix(row.get("created_at")?),
        updated_at: from_unix(row.get("updated_at")?),
        revoked_at: row.get::<_, Option<i64>>("revoked_at")?.map(from_unix),
        revocation_reason: reason
            .map(|r| parse_text(&r, "revocation_reason"))
            .transpose()?,
        renew_before: row
            .get::<_, Option<i64>>("renew_before")?
            .map(|s| Span::from_secs(s.max(0) as u64)),
        days_before_expiry: row
            .get::<_, Option<i64>>("days_before_expiry")?
            .map(|d| d.clamp(0, i64::from(u32::MAX)) as u32),
        maintenance_window: window_from_row(row)?,
        validation_method: row
            .get::<_, Option<String>>("validation_method")?
            .map(|m| parse_text(&m, "validation_method"))
            .transpose()?,
        validation_deadline: row
            .get::<_, Option<i64>>("validation_deadline")?
            .map(from_unix),
        validation_records: Vec::new(),
        renewal: renewal_from_row(row)?,
        renewal_info: parse_renewal_info(row.get("renewal_info")?)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?,
        next_renewal_at: row.get::<_, Option<i64>>("next_action_at")?.map(from_unix),
        versions: Vec::new(),
    })
}

fn acme_account_from_row(row: &Row<'_>) -> rusqlite::Result<super::AcmeAccount> {
    let contact: String = row.get("contact")?;
    Ok(super::AcmeAccount {
        issuer: row.get("issuer")?,
        directory: row.get("directory")?,
        url: row.get("account_url")?,
        contact: serde_json::from_str(&contact)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?,
        created_at: from_unix(row.get("created_at")?),
        updated_at: from_unix(row.get("updated_at")?),
    })
}

fn parse_renewal_info(
    text: Option<String>,
) -> Result<Option<crate::model::RenewalInfo>, StoreError> {
    text.map(|t| serde_json::from_str(&t))
        .transpose()
        .map_err(|e| StoreError::Corrupt(format!("stored renewal info: {e}")))
}

fn window_from_row(row: &Row<'_>) -> rusqlite::Result<Option<crate::model::WindowSpec>> {
    let Some(schedule) = row.get::<_, Option<String>>("maintenance_window")? else {
        return Ok(None);
    };
    let seconds = row
        .get::<_, Option<i64>>("maintenance_window_seconds")?
        .unwrap_or(0);
    Ok(Some(crate::model::WindowSpec {
        schedule,
        duration: Span::from_secs(seconds.max(0) as u64),
        time_zone: row.get("maintenance_window_tz")?,
    }))
}

fn renewal_from_row(row: &Row<'_>) -> Result<Option<Renewal>, StoreError> {
    let Some(status) = row.get::<_, Option<String>>("renewal_status")? else {
        return Ok(None);
    };
    Ok(Some(Renewal {
        status: parse_text(&status, "renewal_status")?,
        reason: row.get("renewal_reason")?,
        failures: row
            .get::<_, i64>("renewal_failures")?
            .clamp(0, i64::from(u32::MAX)) as u32,
        failed_at: row
            .get::<_, Option<i64>>("renewal_failed_at")?
            .map(from_unix),
        action_required_days: row.get("action_required_days")?,
        // An unknown kind (a newer version's) retries as failures did before kinds.
        failure_kind: row
            .get::<_, Option<String>>("renewal_failure_kind")?
            .and_then(|kind| kind.parse().ok()),
    }))
}

fn ca_from_row(row: &Row<'_>) -> Result<StoredCa, StoreError> {
    let permitted: String = row.get("permitted_dns")?;
    let parent: Option<String> = row.get("parent")?;
    let external: bool = row.get("external")?;
    let kind = match (&parent, external) {
        (_, true) => CaKind::External,
        (Some(_), false) => CaKind::Subordinate,
        (None, false) => CaKind::Root,
    };
    let serial: Option<String> = row.get("serial")?;
    let info = CaInfo {
        name: row.get("name")?,
        state: match (
            parse_text::<CaState>(&row.get::<_, String>("state")?, "state")?,
            row.get("disabled")?,
        ) {
            (CaState::Active, true) => CaState::Disabled,
            (state, _) => state,
        },
        kind,
        parent,
        common_name: row.get("common_name")?,
        key_algorithm: parse_text(&row.get::<_, String>("key_algorithm")?, "key_algorithm")?,
        path_length: row
            .get::<_, Option<i64>>("path_length")?
            .map(|n| n.clamp(0, 255) as u8),
        permitted_dns: serde_json::from_str(&permitted)
            .map_err(|e| StoreError::Corrupt(format!("permitted_dns: {e}")))?,
        serial: serial.as_deref().and_then(Serial::parse),
        not_before: row.get::<_, Option<i64>>("not_before")?.map(from_unix),
        not_after: row.get::<_, Option<i64>>("not_after")?.map(from_unix),
        created_at: from_unix(row.get("created_at")?),
    };
    Ok(StoredCa {
        info,
        cert_pem: row.get("cert_pem")?,
        chain_pem: row.get("chain_pem")?,
        csr_pem: row.get("csr_pem")?,
        crl_number: row.get::<_, i64>("crl_number")?.max(0) as u64,
        crl_der: row.get("crl_der")?,
        crl_next_update: row.get::<_, Option<i64>>("crl_next_update")?.map(from_unix),
        key: Sealed {
            kid: row.get("key_kid")?,
            blob: row.get("key_blob")?,
        },
    })
}

fn parse_text<T>(text: &str, column: &str) -> Result<T, StoreError>
where
    T: FromStr<Err = crate::model::UnknownValue>,
{
    text.parse()
        .map_err(|e: crate::model::UnknownValue| StoreError::Corrupt(format!("{column}: {e}")))
}

/// The first domain of a stored `domains` JSON array, without building the whole list.
fn first_domain(json: &str) -> String {
    serde_json::from_str::<Vec<String>>(json)
        .ok()
        .and_then(|d| d.into_iter().next())
        .unwrap_or_default()
}

fn parse_serial(text: &str) -> Result<Serial, StoreError> {
    Serial::parse(text).ok_or_else(|| StoreError::Corrupt(format!("serial {text:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_apply_once_and_refuse_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        drop(Db::open(&path, Synchronous::Full).unwrap());
        // Reopening applies nothing twice.
        let (_, conn) = Db::open(&path, Synchronous::Full).unwrap();
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
        conn.execute_batch("PRAGMA user_version = 99").unwrap();
        drop(conn);
        let err = Db::open(&path, Synchronous::Full)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("schema version 99") && err.contains("newer"),
            "{err}"
        );
    }

    /// L14: a read whose caller gives up while its blocking task runs must not let the pool
    /// grow. Every connection is taken by a read that blocks on `gate`; those callers are
    /// cancelled; the next read then has to wait for a connection to come back instead of
    /// opening a fifth, and the pool ends with READERS connections.
    #[test]
    fn a_cancelled_read_does_not_grow_the_reader_pool() {
        let dir = tempfile::tempdir().unwrap();
        let (db, _writer) = Db::open(&dir.path().join("db.sqlite"), Synchronous::Full).unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        let gate = Arc::new(Mutex::new(()));
        let closed = gate.lock().unwrap();
        runtime.block_on(async {
            let (started, mut running) = tokio::sync::mpsc::unbounded_channel();
            let blocked: Vec<_> = (0..READERS)
                .map(|_| {
                    let (db, gate, started) = (db.clone(), gate.clone(), started.clone());
                    tokio::spawn(async move {
                        db.read(move |_| {
                            started.send(()).unwrap();
                            drop(gate.lock());
                            Ok(())
                        })
                        .await
                    })
                })
                .collect();
            for _ in 0..READERS {
                running.recv().await.unwrap();
            }
            // Every connection is now out, held by a blocking task whose caller goes away.
            for task in blocked {
                task.abort();
                assert!(task.await.unwrap_err().is_cancelled());
            }
            // The tasks still hold every connection: no read may start (a free permit would
            // find the pool empty and open a fifth connection).
            assert_eq!(db.readers.available.available_permits(), 0);
            let one_more = tokio::spawn({
                let db = db.clone();
                async move { db.read(|_| Ok(())).await }
            });
            drop(closed);
            one_more.await.unwrap().unwrap();
        });
        // Dropping the runtime waits for every blocking task: all connections are back.
        drop(runtime);
        assert_eq!(lock::lock(&db.readers.idle).len(), READERS);
    }
}
