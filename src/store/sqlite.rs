//! SQLite backend: connection setup, migrations, and the read queries.
//!
//! Writes live in `writer.rs`, which owns the one write connection. Reads go through a small
//! pool; WAL mode lets them run while the writer commits.

use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{ConnectOptions, QueryBuilder, Row, Sqlite, SqliteConnection, SqlitePool};
use time::OffsetDateTime;

use super::{Sealed, SealedRecord, StoreError, StoredCa, StoredVersion};
use crate::config::Synchronous;
use crate::model::{
    CaInfo, CaKind, CaState, Certificate, CertificateId, Event, Origin, RevocationReason, Serial,
    Status, VersionInfo, from_unix, unix,
};
use crate::span::Span;

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
    pub(super) read: SqlitePool,
    options: SqliteConnectOptions,
}

impl Db {
    pub(super) async fn open(path: &Path, synchronous: Synchronous) -> Result<Db, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.display().to_string(),
            source,
        };
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(match synchronous {
                Synchronous::Full => SqliteSynchronous::Full,
                Synchronous::Normal => SqliteSynchronous::Normal,
            })
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10))
            .pragma("cache_size", "-16384")
            .disable_statement_logging();

        // Migrate on a dedicated connection before anything else reads.
        let mut conn = options.connect().await.map_err(open_err)?;
        sqlx::migrate!("migrations/sqlite").run(&mut conn).await?;
        drop(conn);
        restrict_permissions(path);

        let read = SqlitePoolOptions::new()
            .max_connections(4)
            .min_connections(1)
            .connect_with(options.clone().read_only(true))
            .await
            .map_err(open_err)?;
        Ok(Db { read, options })
    }

    pub(super) async fn write_connection(&self) -> Result<SqliteConnection, StoreError> {
        Ok(self.options.connect().await?)
    }

    pub(super) async fn find_certificate(
        &self,
        id_or_name: &str,
        now: OffsetDateTime,
    ) -> Result<Option<Certificate>, StoreError> {
        let column = if CertificateId::parse(id_or_name).is_some() {
            "id"
        } else {
            "name"
        };
        let sql = format!("SELECT * FROM certificates WHERE {column} = ?");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id_or_name)
            .fetch_optional(&self.read)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let mut cert = certificate_from_row(&row, now)?;
        self.attach_tags(std::slice::from_mut(&mut cert)).await?;
        cert.versions = self.versions(&cert.id).await?;
        Ok(Some(cert))
    }

    pub(super) async fn count_certificates(&self) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM certificates")
            .fetch_one(&self.read)
            .await?;
        Ok(n.max(0) as u64)
    }

    pub(super) async fn list(
        &self,
        filter: &ListFilter,
        now: OffsetDateTime,
    ) -> Result<Vec<Certificate>, StoreError> {
        let mut q: QueryBuilder<Sqlite> =
            QueryBuilder::new("SELECT * FROM certificates c WHERE 1 = 1");
        if let Some(after) = &filter.after {
            q.push(" AND c.id > ").push_bind(after.as_str().to_owned());
        }
        if !filter.statuses.is_empty() {
            q.push(" AND (");
            for (i, status) in filter.statuses.iter().enumerate() {
                if i > 0 {
                    q.push(" OR ");
                }
                // `issued` past its not-after reads as `expired` (see `effective_status`).
                match status {
                    Status::Expired => q
                        .push("(c.status = 'expired' OR (c.status = 'issued' AND c.not_after < ")
                        .push_bind(unix(now))
                        .push("))"),
                    Status::Issued => q
                        .push("(c.status = 'issued' AND c.not_after >= ")
                        .push_bind(unix(now))
                        .push(")"),
                    other => q.push("c.status = ").push_bind(other.as_str()),
                };
            }
            q.push(")");
        }
        if !filter.origins.is_empty() {
            q.push(" AND c.origin IN (");
            let mut list = q.separated(", ");
            for origin in &filter.origins {
                list.push_bind(origin.as_str());
            }
            q.push(")");
        }
        if let Some(within) = filter.expiring_within {
            q.push(" AND c.not_after <= ")
                .push_bind(unix(now + within.time()));
        }
        for (key, value) in &filter.tags {
            q.push(" AND EXISTS (SELECT 1 FROM tags t WHERE t.certificate_id = c.id AND t.key = ")
                .push_bind(key.clone());
            if let Some(value) = value {
                q.push(" AND t.value = ").push_bind(value.clone());
            }
            q.push(")");
        }
        q.push(" ORDER BY c.id LIMIT ")
            .push_bind(i64::from(filter.limit));
        let rows = q.build().fetch_all(&self.read).await?;
        let mut certs = rows
            .iter()
            .map(|r| certificate_from_row(r, now))
            .collect::<Result<Vec<_>, _>>()?;
        self.attach_tags(&mut certs).await?;
        Ok(certs)
    }

    async fn attach_tags(&self, certs: &mut [Certificate]) -> Result<(), StoreError> {
        if certs.is_empty() {
            return Ok(());
        }
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
            "SELECT certificate_id, key, value FROM tags WHERE certificate_id IN (",
        );
        let mut ids = q.separated(", ");
        for cert in certs.iter() {
            ids.push_bind(cert.id.as_str().to_owned());
        }
        q.push(")");
        let mut by_id: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for row in q.build().fetch_all(&self.read).await? {
            let id: String = row.try_get("certificate_id")?;
            by_id
                .entry(id)
                .or_default()
                .insert(row.try_get("key")?, row.try_get("value")?);
        }
        for cert in certs {
            cert.tags = by_id.remove(cert.id.as_str()).unwrap_or_default();
        }
        Ok(())
    }

    async fn versions(&self, id: &CertificateId) -> Result<Vec<VersionInfo>, StoreError> {
        let rows = sqlx::query(
            "SELECT version, serial, issuer_ca, not_before, not_after, key_blob IS NOT NULL AS key_held, created_at \
             FROM versions WHERE certificate_id = ? ORDER BY version DESC",
        )
        .bind(id.as_str())
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(VersionInfo {
                    version: row.try_get("version")?,
                    serial: serial(row, "serial")?,
                    issuer_ca: row.try_get("issuer_ca")?,
                    not_before: from_unix(row.try_get("not_before")?),
                    not_after: from_unix(row.try_get("not_after")?),
                    key_held: row.try_get("key_held")?,
                    created_at: from_unix(row.try_get("created_at")?),
                })
            })
            .collect()
    }

    pub(super) async fn version(
        &self,
        id: &CertificateId,
        version: u32,
    ) -> Result<Option<StoredVersion>, StoreError> {
        let row = sqlx::query("SELECT * FROM versions WHERE certificate_id = ? AND version = ?")
            .bind(id.as_str())
            .bind(version)
            .fetch_optional(&self.read)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let key = match (
            row.try_get::<Option<String>, _>("key_kid")?,
            row.try_get::<Option<Vec<u8>>, _>("key_blob")?,
        ) {
            (Some(kid), Some(blob)) => Some(Sealed { kid, blob }),
            _ => None,
        };
        Ok(Some(StoredVersion {
            version: row.try_get("version")?,
            serial: serial(&row, "serial")?,
            issuer_ca: row.try_get("issuer_ca")?,
            cert_pem: row.try_get("cert_pem")?,
            chain_pem: row.try_get("chain_pem")?,
            key,
        }))
    }

    pub(super) async fn cas(&self) -> Result<Vec<StoredCa>, StoreError> {
        let rows = sqlx::query("SELECT * FROM cas ORDER BY created_at, name")
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(ca_from_row).collect()
    }

    pub(super) async fn ca(&self, name: &str) -> Result<Option<StoredCa>, StoreError> {
        let row = sqlx::query("SELECT * FROM cas WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.read)
            .await?;
        row.as_ref().map(ca_from_row).transpose()
    }

    pub(super) async fn revocations(
        &self,
        ca: &str,
    ) -> Result<Vec<(Serial, OffsetDateTime, RevocationReason)>, StoreError> {
        let rows = sqlx::query(
            "SELECT serial, revoked_at, reason FROM revocations WHERE ca = ? ORDER BY revoked_at",
        )
        .bind(ca)
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    serial(row, "serial")?,
                    from_unix(row.try_get("revoked_at")?),
                    parse(row, "reason")?,
                ))
            })
            .collect()
    }

    pub(super) async fn events_after(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<(i64, Event)>, StoreError> {
        let rows = sqlx::query("SELECT seq, body FROM events WHERE seq > ? ORDER BY seq LIMIT ?")
            .bind(after)
            .bind(limit)
            .fetch_all(&self.read)
            .await?;
        rows.iter()
            .map(|row| {
                let body: String = row.try_get("body")?;
                let event = serde_json::from_str(&body)
                    .map_err(|e| StoreError::Invalid(format!("event: {e}")))?;
                Ok((row.try_get("seq")?, event))
            })
            .collect()
    }

    pub(super) async fn key_usage(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        let rows = sqlx::query(
            "SELECT key_kid, COUNT(*) AS n FROM versions WHERE key_kid IS NOT NULL GROUP BY key_kid \
             UNION ALL SELECT key_kid, COUNT(*) FROM cas GROUP BY key_kid",
        )
        .fetch_all(&self.read)
        .await?;
        let mut usage = BTreeMap::new();
        for row in rows {
            let n: i64 = row.try_get("n")?;
            *usage.entry(row.try_get("key_kid")?).or_insert(0) += n as u64;
        }
        Ok(usage)
    }

    pub(super) async fn one_sealed_record(
        &self,
        kid: &str,
    ) -> Result<Option<(String, Sealed)>, StoreError> {
        let batch = self.sealed_records(kid, true, 1).await?;
        Ok(batch
            .into_iter()
            .next()
            .map(|(record, sealed)| (record.name(), sealed)))
    }

    pub(super) async fn sealed_records_not_under(
        &self,
        kid: &str,
        limit: u32,
    ) -> Result<Vec<(SealedRecord, Sealed)>, StoreError> {
        self.sealed_records(kid, false, limit).await
    }

    /// Sealed records whose kid equals (`equal`) or differs from `kid`.
    async fn sealed_records(
        &self,
        kid: &str,
        equal: bool,
        limit: u32,
    ) -> Result<Vec<(SealedRecord, Sealed)>, StoreError> {
        let op = if equal { "=" } else { "<>" };
        let sql = format!(
            "SELECT 'ca' AS kind, name AS id, 0 AS version, key_kid, key_blob FROM cas WHERE key_kid {op} ?1 \
             UNION ALL SELECT 'version', certificate_id, version, key_kid, key_blob FROM versions \
             WHERE key_kid IS NOT NULL AND key_kid {op} ?1 LIMIT ?2"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(kid)
            .bind(limit)
            .fetch_all(&self.read)
            .await?;
        rows.iter()
            .map(|row| {
                let kind: String = row.try_get("kind")?;
                let id: String = row.try_get("id")?;
                let record = if kind == "ca" {
                    SealedRecord::Ca(id)
                } else {
                    let id = CertificateId::parse(&id)
                        .ok_or_else(|| StoreError::Invalid(format!("id {id:?}")))?;
                    SealedRecord::Version(id, row.try_get("version")?)
                };
                Ok((
                    record,
                    Sealed {
                        kid: row.try_get("key_kid")?,
                        blob: row.try_get("key_blob")?,
                    },
                ))
            })
            .collect()
    }

    pub(super) async fn integrity_check(&self) -> Result<String, StoreError> {
        Ok(sqlx::query_scalar("PRAGMA integrity_check")
            .fetch_one(&self.read)
            .await?)
    }
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

/// `issued` certificates past their not-after are shown as `expired` even before the lifecycle
/// task records it, so no reader ever sees an expired certificate called issued.
fn effective_status(stored: Status, not_after: OffsetDateTime, now: OffsetDateTime) -> Status {
    if stored == Status::Issued && not_after < now {
        Status::Expired
    } else {
        stored
    }
}

fn certificate_from_row(row: &SqliteRow, now: OffsetDateTime) -> Result<Certificate, StoreError> {
    let domains: String = row.try_get("domains")?;
    let not_after = from_unix(row.try_get("not_after")?);
    let validity: Option<i64> = row.try_get("validity")?;
    let id: String = row.try_get("id")?;
    Ok(Certificate {
        id: CertificateId::parse(&id)
            .ok_or_else(|| StoreError::Invalid(format!("certificate id {id:?}")))?,
        name: row.try_get("name")?,
        origin: parse(row, "origin")?,
        status: effective_status(parse(row, "status")?, not_after, now),
        issuer: row.try_get("issuer")?,
        domains: serde_json::from_str(&domains)
            .map_err(|e| StoreError::Invalid(format!("domains of {id}: {e}")))?,
        key_algorithm: parse(row, "key_algorithm")?,
        serial: serial(row, "serial")?,
        not_before: from_unix(row.try_get("not_before")?),
        not_after,
        current_version: row.try_get("current_version")?,
        validity: validity.map(|s| Span::from_secs(s.max(0) as u64)),
        client_auth: row.try_get("client_auth")?,
        tags: BTreeMap::new(),
        created_at: from_unix(row.try_get("created_at")?),
        updated_at: from_unix(row.try_get("updated_at")?),
        revoked_at: row.try_get::<Option<i64>, _>("revoked_at")?.map(from_unix),
        revocation_reason: row
            .try_get::<Option<String>, _>("revocation_reason")?
            .map(|r| {
                r.parse()
                    .map_err(|e: crate::model::UnknownValue| StoreError::Invalid(e.to_string()))
            })
            .transpose()?,
        versions: Vec::new(),
    })
}

fn ca_from_row(row: &SqliteRow) -> Result<StoredCa, StoreError> {
    let permitted: String = row.try_get("permitted_dns")?;
    let parent: Option<String> = row.try_get("parent")?;
    let external: bool = row.try_get("external")?;
    let kind = match (&parent, external) {
        (_, true) => CaKind::External,
        (Some(_), false) => CaKind::Subordinate,
        (None, false) => CaKind::Root,
    };
    let serial_text: Option<String> = row.try_get("serial")?;
    let info = CaInfo {
        name: row.try_get("name")?,
        state: parse::<CaState>(row, "state")?,
        kind,
        parent,
        common_name: row.try_get("common_name")?,
        key_algorithm: parse(row, "key_algorithm")?,
        path_length: row
            .try_get::<Option<i64>, _>("path_length")?
            .map(|n| n.clamp(0, 255) as u8),
        permitted_dns: serde_json::from_str(&permitted)
            .map_err(|e| StoreError::Invalid(format!("permitted_dns: {e}")))?,
        serial: serial_text.as_deref().and_then(Serial::parse),
        not_before: row.try_get::<Option<i64>, _>("not_before")?.map(from_unix),
        not_after: row.try_get::<Option<i64>, _>("not_after")?.map(from_unix),
        created_at: from_unix(row.try_get("created_at")?),
    };
    Ok(StoredCa {
        info,
        cert_pem: row.try_get("cert_pem")?,
        chain_pem: row.try_get("chain_pem")?,
        csr_pem: row.try_get("csr_pem")?,
        crl_number: row.try_get::<i64, _>("crl_number")?.max(0) as u64,
        crl_der: row.try_get("crl_der")?,
        crl_next_update: row
            .try_get::<Option<i64>, _>("crl_next_update")?
            .map(from_unix),
        key: Sealed {
            kid: row.try_get("key_kid")?,
            blob: row.try_get("key_blob")?,
        },
    })
}

fn parse<T>(row: &SqliteRow, column: &str) -> Result<T, StoreError>
where
    T: FromStr<Err = crate::model::UnknownValue>,
{
    let text: String = row.try_get(column)?;
    text.parse()
        .map_err(|e: crate::model::UnknownValue| StoreError::Invalid(format!("{column}: {e}")))
}

fn serial(row: &SqliteRow, column: &str) -> Result<Serial, StoreError> {
    let text: String = row.try_get(column)?;
    Serial::parse(&text).ok_or_else(|| StoreError::Invalid(format!("{column}: {text:?}")))
}
