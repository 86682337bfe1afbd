//! Prometheus metrics, in the text exposition format (version 0.0.4).
//!
//! Two kinds: counters the daemon keeps in memory ([`Metrics`]: issuances, renewals, event
//! deliveries), and gauges read from the store at scrape time (one series per certificate,
//! outbox depth per sink, the event count). Per-certificate series are built from a snapshot
//! of the inventory and streamed as text: at 100,000 certificates that is half a million
//! series, which a registry of in-memory families would hold twice. `promtool check metrics`
//! parses this output in the tests.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use time::OffsetDateTime;

use crate::lock;
use crate::model::{CertificateId, Origin, Status};

/// Inventory-wide figures for `/metrics`, cheap at any size.
#[derive(Clone, Debug, Default)]
pub struct MetricsSummary {
    /// (status as users see it, origin, count).
    pub counts: Vec<(Status, Origin, i64)>,
    /// (origin, earliest not-after of an issued, unexpired certificate).
    pub earliest_expiry: Vec<(Origin, OffsetDateTime)>,
    pub renewals_failing: i64,
    /// Stored rows that did not decode and were left out of answers since start.
    pub rows_skipped: u64,
}

/// One certificate's metrics labels and values.
#[derive(Clone, Debug)]
pub struct MetricsRow {
    pub id: CertificateId,
    pub name: String,
    pub origin: Origin,
    pub common_name: String,
    pub issuer: String,
    pub status: Status,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub next_action_at: Option<OffsetDateTime>,
    pub renewal_failures: u32,
}

/// Counters since the daemon started.
#[derive(Default)]
pub struct Metrics {
    issued: [AtomicU64; 3],
    renewals_ok: AtomicU64,
    renewals_failed: AtomicU64,
    deliveries: Mutex<BTreeMap<(String, bool), u64>>,
}

const ORIGINS: [&str; 3] = ["private", "imported", "public"];

impl Metrics {
    pub fn issued(&self, origin: Origin) {
        let i = ORIGINS
            .iter()
            .position(|o| *o == origin.as_str())
            .unwrap_or(0);
        self.issued[i].fetch_add(1, Ordering::Relaxed);
    }

    pub fn renewal(&self, ok: bool) {
        let counter = if ok {
            &self.renewals_ok
        } else {
            &self.renewals_failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn event_delivered(&self, sink: &str, ok: bool) {
        let mut map = lock::lock(&self.deliveries);
        *map.entry((sink.to_owned(), ok)).or_insert(0) += 1;
    }
}

/// Everything read from the store for one scrape.
pub struct Snapshot {
    /// One entry per certificate; `None` with `metrics.per-certificate = false`.
    pub certificates: Option<Vec<MetricsRow>>,
    pub summary: MetricsSummary,
    pub events_total: i64,
    /// (sink, events waiting).
    pub outbox: Vec<(String, i64)>,
}

/// Renders the whole exposition.
pub fn render(metrics: &Metrics, snapshot: &Snapshot, now: OffsetDateTime) -> String {
    let per_cert_bytes = snapshot.certificates.as_ref().map_or(0, |c| c.len() * 900);
    let mut out = String::with_capacity(1024 + per_cert_bytes);
    family(
        &mut out,
        "certkeeper_build_info",
        "gauge",
        "certkeeper version, always 1",
    );
    let _ = writeln!(
        out,
        "certkeeper_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );

    family(
        &mut out,
        "certkeeper_certificates_issued_total",
        "counter",
        "Certificates issued or imported since start",
    );
    for (i, origin) in ORIGINS.iter().enumerate() {
        let n = metrics.issued[i].load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "certkeeper_certificates_issued_total{{origin=\"{origin}\"}} {n}"
        );
    }
    family(
        &mut out,
        "certkeeper_renewals_total",
        "counter",
        "Renewal attempts since start, by result",
    );
    let _ = writeln!(
        out,
        "certkeeper_renewals_total{{result=\"success\"}} {}",
        metrics.renewals_ok.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "certkeeper_renewals_total{{result=\"failure\"}} {}",
        metrics.renewals_failed.load(Ordering::Relaxed)
    );

    family(
        &mut out,
        "certkeeper_events_total",
        "counter",
        "Events written to the outbox (its sequence number)",
    );
    let _ = writeln!(out, "certkeeper_events_total {}", snapshot.events_total);
    family(
        &mut out,
        "certkeeper_event_deliveries_total",
        "counter",
        "Event delivery attempts since start, by sink and result",
    );
    for ((sink, ok), n) in lock::lock(&metrics.deliveries).iter() {
        let result = if *ok { "success" } else { "failure" };
        let _ = writeln!(
            out,
            "certkeeper_event_deliveries_total{{sink=\"{}\",result=\"{result}\"}} {n}",
            escape(sink)
        );
    }
    family(
        &mut out,
        "certkeeper_outbox_depth",
        "gauge",
        "Events waiting for delivery, by sink",
    );
    for (sink, depth) in &snapshot.outbox {
        let _ = writeln!(
            out,
            "certkeeper_outbox_depth{{sink=\"{}\"}} {depth}",
            escape(sink)
        );
    }

    family(
        &mut out,
        "certkeeper_certificates",
        "gauge",
        "Certificates by status and origin",
    );
    for (status, origin, n) in &snapshot.summary.counts {
        let _ = writeln!(
            out,
            "certkeeper_certificates{{status=\"{status}\",origin=\"{origin}\"}} {n}"
        );
    }
    family(
        &mut out,
        "certkeeper_earliest_expiry_timestamp_seconds",
        "gauge",
        "The earliest end of validity among issued certificates, by origin (Unix time)",
    );
    for (origin, at) in &snapshot.summary.earliest_expiry {
        let _ = writeln!(
            out,
            "certkeeper_earliest_expiry_timestamp_seconds{{origin=\"{origin}\"}} {}",
            at.unix_timestamp()
        );
    }
    family(
        &mut out,
        "certkeeper_renewals_failing",
        "gauge",
        "Certificates whose last renewal attempt failed",
    );
    let _ = writeln!(
        out,
        "certkeeper_renewals_failing {}",
        snapshot.summary.renewals_failing
    );
    family(
        &mut out,
        "certkeeper_store_rows_skipped_total",
        "counter",
        "Stored rows that did not decode and were left out of answers since start (the log names each)",
    );
    let _ = writeln!(
        out,
        "certkeeper_store_rows_skipped_total {}",
        snapshot.summary.rows_skipped
    );

    let Some(certs) = &snapshot.certificates else {
        return out;
    };
    per_cert(
        &mut out,
        certs,
        "certkeeper_certificate_not_after_timestamp_seconds",
        "End of validity (Unix time)",
        |c| Some(c.not_after.unix_timestamp() as f64),
    );
    per_cert(
        &mut out,
        certs,
        "certkeeper_certificate_not_before_timestamp_seconds",
        "Start of validity (Unix time)",
        |c| Some(c.not_before.unix_timestamp() as f64),
    );
    per_cert(
        &mut out,
        certs,
        "certkeeper_certificate_renewal_timestamp_seconds",
        "Next planned renewal or retry (Unix time); absent when not renewed by certkeeper",
        |c| c.next_action_at.map(|t| t.unix_timestamp() as f64),
    );
    per_cert(
        &mut out,
        certs,
        "certkeeper_certificate_days_to_expiry",
        "Days until the end of validity (negative once expired)",
        |c| Some((c.not_after - now).as_seconds_f64() / 86_400.0),
    );
    family(
        &mut out,
        "certkeeper_certificate_status",
        "gauge",
        "1 for the certificate's current status",
    );
    for c in certs {
        let _ = writeln!(
            out,
            "certkeeper_certificate_status{{{},status=\"{}\"}} 1",
            labels(c),
            status(c, now)
        );
    }
    family(
        &mut out,
        "certkeeper_certificate_renewal_failures",
        "gauge",
        "Consecutive failed renewal attempts",
    );
    for c in certs.iter().filter(|c| c.renewal_failures > 0) {
        let _ = writeln!(
            out,
            "certkeeper_certificate_renewal_failures{{{}}} {}",
            labels(c),
            c.renewal_failures
        );
    }
    out
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn per_cert(
    out: &mut String,
    certs: &[MetricsRow],
    name: &str,
    help: &str,
    value: impl Fn(&MetricsRow) -> Option<f64>,
) {
    family(out, name, "gauge", help);
    for c in certs {
        if let Some(v) = value(c) {
            let _ = writeln!(out, "{name}{{{}}} {v}", labels(c));
        }
    }
}

fn labels(c: &MetricsRow) -> String {
    format!(
        "id=\"{}\",name=\"{}\",origin=\"{}\",common_name=\"{}\",issuer=\"{}\"",
        c.id,
        escape(&c.name),
        c.origin,
        escape(&c.common_name),
        escape(&c.issuer)
    )
}

/// The status as users see it: `issued` past its not-after is `expired`.
fn status(c: &MetricsRow, now: OffsetDateTime) -> Status {
    if c.status == Status::Issued && c.not_after < now {
        Status::Expired
    } else {
        c.status
    }
}

/// Label values escape backslash, double quote and newline (the exposition format's rules).
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_label_values() {
        assert_eq!(escape(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape("x\ny"), "x\\ny");
    }
}
