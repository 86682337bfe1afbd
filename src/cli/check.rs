//! `certkeeper check`: a monitoring plugin (Nagios, Icinga, Sensu...).
//!
//! Convention: one status line on stdout, `SERVICE STATE - summary | perfdata`, and the exit
//! code 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN. The status line names the worst certificate so
//! the alert says what to look at.

use time::OffsetDateTime;

use super::Failure;
use super::client::{Client, encode};
use crate::api::types::CertificateList;
use crate::model::{Certificate, Status};
use crate::policy::{self, Standing};
use crate::span::Span;

const OK: u8 = 0;
const WARNING: u8 = 1;
const CRITICAL: u8 = 2;
const UNKNOWN: u8 = 3;

pub(super) async fn run(
    client: &Client,
    thresholds: Thresholds,
    only: Option<&str>,
) -> Result<(), Failure> {
    let certificates = match fetch(client, only).await {
        Ok(certs) => certs,
        Err(err) => {
            println!("CERTKEEPER UNKNOWN - {}", err.message);
            return Err(Failure::new(UNKNOWN, String::new()));
        }
    };
    let (code, line) = evaluate(&certificates, thresholds, OffsetDateTime::now_utc());
    println!("{line}");
    if code == OK {
        Ok(())
    } else {
        Err(Failure::new(code, String::new()))
    }
}

async fn fetch(client: &Client, only: Option<&str>) -> Result<Vec<Certificate>, Failure> {
    if let Some(one) = only {
        return Ok(vec![
            client
                .get(&format!("/v1/certificates/{}", encode(one)))
                .await?,
        ]);
    }
    let mut all = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut path = "/v1/certificates?limit=1000".to_owned();
        if let Some(after) = &after {
            path.push_str(&format!("&after={}", encode(after)));
        }
        let page: CertificateList = client.get(&path).await?;
        all.extend(page.certificates);
        match page.next_page {
            Some(next) => after = Some(next),
            None => return Ok(all),
        }
    }
}

/// The thresholds a check runs under.
#[derive(Clone, Copy, Debug)]
pub(super) struct Thresholds {
    /// WARNING / CRITICAL when this little time is left, for certificates certkeeper does not
    /// renew (and for all with `fixed`).
    pub warning: Span,
    pub critical: Span,
    /// `--fixed-thresholds`: the spans apply to renewed certificates too, instead of their
    /// renewal plan.
    pub fixed: bool,
}

/// What one certificate contributes to the check, worst first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Finding {
    Expired,
    /// Renewed by certkeeper, in the last tenth of its lifetime, and failing, overdue, or there
    /// past the grace.
    Unrenewed,
    /// Not renewed (or `--fixed-thresholds`): inside `--critical`.
    Critical,
    /// Not renewed (or `--fixed-thresholds`): inside `--warning`.
    Warning,
    /// Renewed: the planned renewal is over an hour late and nothing has been tried.
    Overdue,
    /// Renewed: the last attempt failed.
    Failing,
    Fine,
}

impl Finding {
    fn code(self) -> u8 {
        match self {
            Self::Expired | Self::Unrenewed | Self::Critical => CRITICAL,
            Self::Warning | Self::Overdue | Self::Failing => WARNING,
            Self::Fine => OK,
        }
    }
}

/// A certificate certkeeper renews follows its renewal plan ([`policy::standing`]): a healthy
/// 6-day certificate is always inside any fixed threshold, and a check that always fires gets
/// switched off. The others (imported, signed from a CSR, or all with `fixed`) are weighed
/// against the spans; a failing renewal warns either way.
fn finding(cert: &Certificate, thresholds: Thresholds, now: OffsetDateTime) -> Finding {
    let (Some(lifetime), renewal) = (cert.lifetime(), cert.renewal_state()) else {
        return Finding::Fine;
    };
    if let (Some(renewal), false) = (renewal, thresholds.fixed) {
        return match policy::standing(lifetime, renewal, now) {
            Standing::OnSchedule => Finding::Fine,
            Standing::Failing => Finding::Failing,
            Standing::Overdue => Finding::Overdue,
            Standing::Unrenewed => Finding::Unrenewed,
            Standing::Expired => Finding::Expired,
        };
    }
    let left = lifetime.not_after - now;
    if left.is_negative() {
        Finding::Expired
    } else if left <= thresholds.critical.time() {
        Finding::Critical
    } else if left <= thresholds.warning.time() {
        Finding::Warning
    } else if failing(cert) {
        Finding::Failing
    } else {
        Finding::Fine
    }
}

fn failing(cert: &Certificate) -> bool {
    cert.renewal.as_ref().is_some_and(|r| r.failures > 0)
}

/// The check itself, pure: the exit code and the status line.
fn evaluate(certs: &[Certificate], thresholds: Thresholds, now: OffsetDateTime) -> (u8, String) {
    // Only certificates in use count: revoked, failed and pending ones are not served (and
    // only issued versions have a not-after).
    let live: Vec<(&Certificate, Finding)> = certs
        .iter()
        .filter(|c| matches!(c.status, Status::Issued | Status::Expired) && c.not_after.is_some())
        .map(|c| (c, finding(c, thresholds, now)))
        .collect();
    let with = |finding: Finding| -> Vec<&Certificate> {
        live.iter()
            .filter(|(_, f)| *f == finding)
            .map(|(c, _)| *c)
            .collect()
    };
    let code = live.iter().map(|(_, f)| *f).min().map_or(OK, Finding::code);
    let state = match code {
        OK => "OK",
        WARNING => "WARNING",
        CRITICAL => "CRITICAL",
        _ => "UNKNOWN",
    };
    let not_after = |c: &Certificate| c.not_after.unwrap_or(now);
    let nearest = live.iter().map(|(c, _)| *c).min_by_key(|c| not_after(c));
    let mut parts: Vec<String> = [
        Finding::Expired,
        Finding::Unrenewed,
        Finding::Critical,
        Finding::Warning,
        Finding::Overdue,
        Finding::Failing,
    ]
    .into_iter()
    .filter_map(|f| summary(f, &with(f), thresholds, now))
    .collect();
    if parts.is_empty() {
        parts.push(match nearest {
            Some(c) => format!(
                "{} certificates, nearest expiry {} in {}",
                live.len(),
                c.name,
                left(c, now)
            ),
            None => "no certificates".to_owned(),
        });
    }
    let count = |f| with(f).len();
    let perf = format!(
        "certificates={} expired={} critical={} warning={} renewal_failed={} renewal_overdue={} min_days_to_expiry={};{};{}",
        live.len(),
        count(Finding::Expired),
        count(Finding::Unrenewed) + count(Finding::Critical),
        count(Finding::Warning),
        live.iter().filter(|(c, _)| failing(c)).count(),
        count(Finding::Overdue),
        nearest.map_or(0, |c| policy::days_to_expiry(now, not_after(c))),
        thresholds.warning.as_secs() / 86_400,
        thresholds.critical.as_secs() / 86_400,
    );
    (
        code,
        format!("CERTKEEPER {state} - {} | {perf}", parts.join(", ")),
    )
}

/// The status line's words for the certificates with one finding (the first one named).
fn summary(
    finding: Finding,
    certs: &[&Certificate],
    thresholds: Thresholds,
    now: OffsetDateTime,
) -> Option<String> {
    let c = certs.first()?;
    let (n, name, left) = (certs.len(), &c.name, left(c, now));
    Some(match finding {
        Finding::Expired => format!("{n} expired ({name} {} ago)", ago(c, now)),
        Finding::Unrenewed => format!("{n} expiring unrenewed ({name} in {left})"),
        Finding::Critical => format!(
            "{n} expiring within {} ({name} in {left})",
            thresholds.critical
        ),
        Finding::Warning => format!(
            "{n} expiring within {} ({name} in {left})",
            thresholds.warning
        ),
        Finding::Overdue => format!(
            "{n} renewal(s) overdue ({name}, due {} ago)",
            duration(now - c.next_renewal_at.unwrap_or(now))
        ),
        Finding::Failing => {
            let reason = c.renewal.as_ref().and_then(|r| r.reason.as_deref());
            format!(
                "{n} renewal(s) failing ({name}: {})",
                reason.unwrap_or_default()
            )
        }
        Finding::Fine => return None,
    })
}

/// Time left before expiry.
fn left(cert: &Certificate, now: OffsetDateTime) -> String {
    duration(cert.not_after.unwrap_or(now) - now)
}

/// Time since expiry.
fn ago(cert: &Certificate, now: OffsetDateTime) -> String {
    duration(now - cert.not_after.unwrap_or(now))
}

/// In whole days from a day on, else in minutes: `13h4m` says more than `0 days`.
fn duration(d: time::Duration) -> String {
    if d >= time::Duration::DAY {
        format!("{} days", d.whole_days())
    } else {
        minutes(d).to_string()
    }
}

/// A span rounded down to whole minutes (at least `0s`).
fn minutes(d: time::Duration) -> Span {
    Span::from_secs((d.whole_minutes().max(0) * 60) as u64)
}

#[cfg(test)]
mod tests {
    use time::Duration;
    use time::macros::datetime;

    use super::*;
    use crate::model::{CertificateId, KeyAlgorithm, Origin, Renewal, RenewalStatus, Serial};

    const NOW: OffsetDateTime = datetime!(2026-11-22 12:00 UTC);

    /// A certificate with `lifetime` of life, `left` of it remaining; renewed when `next` (its
    /// next renewal or retry, from now) is given, after `failures` failed attempts.
    fn cert(
        name: &str,
        (lifetime, left): (Duration, Duration),
        next: Option<Duration>,
        failures: u32,
    ) -> Certificate {
        let not_after = NOW + left;
        Certificate {
            id: CertificateId::generate(),
            name: name.into(),
            origin: if next.is_some() {
                Origin::Private
            } else {
                Origin::Imported
            },
            status: if left.is_negative() {
                Status::Expired
            } else {
                Status::Issued
            },
            issuer: "default".into(),
            domains: vec![],
            key_algorithm: KeyAlgorithm::EcP256,
            serial: Some(Serial::from_bytes(&[1])),
            not_before: Some(not_after - lifetime),
            not_after: Some(not_after),
            current_version: 1,
            validity: None,
            client_auth: false,
            tags: Default::default(),
            created_at: NOW,
            updated_at: NOW,
            revoked_at: None,
            revocation_reason: None,
            renew_before: None,
            days_before_expiry: None,
            maintenance_window: None,
            validation_method: None,
            validation_deadline: None,
            validation_records: vec![],
            renewal_info: None,
            renewal: (failures > 0).then(|| Renewal {
                status: RenewalStatus::Failed,
                reason: Some("CA offline".into()),
                failures,
                failed_at: Some(NOW),
                action_required_days: None,
                failure_kind: Some(crate::model::FailureKind::Transient),
            }),
            next_renewal_at: next.map(|d| NOW + d),
            versions: vec![],
        }
    }

    const DEFAULTS: Thresholds = Thresholds {
        warning: Span::from_days(30),
        critical: Span::from_days(7),
        fixed: false,
    };

    fn check(certs: &[Certificate]) -> (u8, String) {
        evaluate(certs, DEFAULTS, NOW)
    }

    /// The lifetimes of issue 9 (24 hours, 6, 45, 90 and 395 days), renewed by certkeeper:
    /// quiet while on schedule, WARNING while failing or overdue, CRITICAL when failing or
    /// overdue inside the last tenth, or expired. A fixed 7-day threshold would page for every
    /// 24-hour and 6-day certificate all their lives.
    #[test]
    fn renewed_certificates_follow_their_renewal_plan() {
        for days in [1, 6, 45, 90, 395] {
            let life = Duration::days(days);
            // Renewed at a third of the lifetime (a half below 10 days) or 60 days before.
            let renew_before = policy::effective_renew_before(Duration::days(60), life).0;
            let tenth = life / 10;
            let rows = [
                ("healthy", life - Duration::HOUR, Some(life / 3), 0, OK),
                (
                    "renewal just due",
                    renew_before,
                    Some(-Duration::MINUTE),
                    0,
                    OK,
                ),
                (
                    "held by a window",
                    tenth + Duration::MINUTE,
                    Some(Duration::MINUTE),
                    0,
                    OK,
                ),
                (
                    "failing",
                    renew_before - Duration::HOUR,
                    Some(Duration::MINUTE),
                    2,
                    WARNING,
                ),
                (
                    "overdue",
                    renew_before - Duration::HOUR * 2,
                    Some(-Duration::HOUR * 2),
                    0,
                    WARNING,
                ),
                (
                    "failing near expiry",
                    tenth - Duration::MINUTE,
                    Some(Duration::MINUTE),
                    9,
                    CRITICAL,
                ),
                (
                    "overdue near expiry",
                    tenth / 2,
                    Some(tenth / 2 - renew_before),
                    0,
                    CRITICAL,
                ),
                (
                    "expired",
                    -Duration::MINUTE,
                    Some(Duration::MINUTE),
                    30,
                    CRITICAL,
                ),
            ];
            for (what, left, next, failures, expected) in rows {
                let c = cert("c", (life, left), next, failures);
                let (code, line) = check(&[c]);
                assert_eq!(code, expected, "{days}-day certificate, {what}: {line}");
            }
        }
    }

    #[test]
    fn the_status_line_names_the_worst_certificate() {
        let year = Duration::days(395);
        let week = Duration::days(6);
        let (c, line) = check(&[cert(
            "a",
            (year, Duration::days(90)),
            Some(Duration::days(30)),
            0,
        )]);
        assert_eq!(c, OK, "{line}");
        assert!(
            line.starts_with("CERTKEEPER OK - 1 certificates, nearest expiry a in 90 days |"),
            "{line}"
        );
        let short = cert(
            "short",
            (week, Duration::days(5)),
            Some(Duration::days(2)),
            0,
        );
        let (c, line) = check(std::slice::from_ref(&short));
        assert_eq!(c, OK, "{line}");
        assert!(line.contains("nearest expiry short in 5 days"), "{line}");
        let failing = cert("f", (week, Duration::days(2)), Some(Duration::MINUTE), 2);
        let (c, line) = check(&[short.clone(), failing]);
        assert_eq!(c, WARNING, "{line}");
        assert!(
            line.contains("1 renewal(s) failing (f: CA offline)"),
            "{line}"
        );
        let overdue = cert(
            "late",
            (week, Duration::days(2)),
            Some(-Duration::hours(3)),
            0,
        );
        let (_, line) = check(&[overdue]);
        assert!(
            line.contains("1 renewal(s) overdue (late, due 3h ago)"),
            "{line}"
        );
        let day = Duration::DAY;
        let dying = cert(
            "dying",
            (day, Duration::minutes(90)),
            Some(Duration::MINUTE),
            7,
        );
        let (c, line) = check(&[short, dying]);
        assert_eq!(c, CRITICAL, "{line}");
        assert!(
            line.starts_with("CERTKEEPER CRITICAL - 1 expiring unrenewed (dying in 1h30m)"),
            "{line}"
        );
        assert!(
            line.contains("renewal_failed=1 renewal_overdue=0"),
            "{line}"
        );
        let (c, line) = check(&[cert("old", (year, -Duration::days(2)), None, 0)]);
        assert_eq!(c, CRITICAL, "{line}");
        assert!(line.contains("1 expired (old 2 days ago)"), "{line}");
        let mut gone = cert("gone", (year, -Duration::days(2)), None, 0);
        gone.status = Status::Revoked;
        assert_eq!(check(&[gone]).0, OK, "revoked ones are not served");
        assert_eq!(check(&[]).0, OK);
    }

    /// Certificates nobody renews keep the fixed thresholds; `--fixed-thresholds` applies them
    /// to renewed ones too.
    #[test]
    fn fixed_thresholds_for_what_certkeeper_does_not_renew() {
        let year = Duration::days(395);
        let imported = |left| cert("imp", (year, Duration::days(left)), None, 0);
        assert_eq!(check(&[imported(90)]).0, OK);
        let (c, line) = check(&[imported(20)]);
        assert_eq!(c, WARNING, "{line}");
        assert!(
            line.contains("1 expiring within 30d (imp in 20 days)"),
            "{line}"
        );
        assert!(line.contains("| certificates=1 expired=0 critical=0 warning=1 renewal_failed=0 renewal_overdue=0 min_days_to_expiry=20;30;7"), "{line}");
        let (c, line) = check(&[imported(3)]);
        assert_eq!(c, CRITICAL, "{line}");
        assert!(
            line.contains("1 expiring within 1w (imp in 3 days)"),
            "{line}"
        );

        let week = Duration::days(6);
        let healthy = cert(
            "short",
            (week, Duration::days(5)),
            Some(Duration::days(2)),
            0,
        );
        assert_eq!(check(std::slice::from_ref(&healthy)).0, OK);
        let fixed = Thresholds {
            fixed: true,
            ..DEFAULTS
        };
        let (c, line) = evaluate(&[healthy], fixed, NOW);
        assert_eq!(c, CRITICAL, "{line}");
        let failing = cert("f", (year, Duration::days(90)), Some(Duration::MINUTE), 1);
        assert_eq!(evaluate(&[failing], fixed, NOW).0, WARNING, "failing warns");
    }
}
