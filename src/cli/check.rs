//! `certkeeper check`: a monitoring plugin (Nagios, Icinga, Sensu...).
//!
//! Convention: one status line on stdout, `SERVICE STATE - summary | perfdata`, and the exit
//! code 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN. The status line names the worst certificate so
//! the alert says what to look at.

use time::OffsetDateTime;

use super::Failure;
use super::client::{Client, encode};
use crate::api::types::CertificateList;
use crate::model::{Certificate, RenewalStatus, Status};
use crate::span::Span;

const OK: u8 = 0;
const WARNING: u8 = 1;
const CRITICAL: u8 = 2;
const UNKNOWN: u8 = 3;

pub(super) async fn run(
    client: &Client,
    warning: Span,
    critical: Span,
    only: Option<&str>,
) -> Result<(), Failure> {
    let certificates = match fetch(client, only).await {
        Ok(certs) => certs,
        Err(err) => {
            println!("CERTKEEPER UNKNOWN - {}", err.message);
            return Err(Failure::new(UNKNOWN, String::new()));
        }
    };
    let (code, line) = evaluate(&certificates, warning, critical, OffsetDateTime::now_utc());
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

/// The check itself, pure: the exit code and the status line.
fn evaluate(
    certs: &[Certificate],
    warning: Span,
    critical: Span,
    now: OffsetDateTime,
) -> (u8, String) {
    // Only certificates in use count: revoked, failed and pending ones are not served (and
    // only issued versions have a not-after).
    let live: Vec<&Certificate> = certs
        .iter()
        .filter(|c| matches!(c.status, Status::Issued | Status::Expired) && c.not_after.is_some())
        .collect();
    let not_after = |c: &Certificate| c.not_after.unwrap_or(now);
    let left = |c: &Certificate| not_after(c) - now;
    let expired: Vec<_> = live.iter().filter(|c| left(c).is_negative()).collect();
    let crit: Vec<_> = live
        .iter()
        .filter(|c| !left(c).is_negative() && left(c) <= critical.time())
        .collect();
    let warn: Vec<_> = live
        .iter()
        .filter(|c| left(c) > critical.time() && left(c) <= warning.time())
        .collect();
    let failing: Vec<_> = live
        .iter()
        .filter(|c| {
            c.renewal
                .as_ref()
                .is_some_and(|r| r.status == RenewalStatus::Failed)
        })
        .collect();
    let nearest = live.iter().min_by_key(|c| not_after(c));

    let code = if !expired.is_empty() || !crit.is_empty() {
        CRITICAL
    } else if !warn.is_empty() || !failing.is_empty() {
        WARNING
    } else {
        OK
    };
    let state = match code {
        OK => "OK",
        WARNING => "WARNING",
        CRITICAL => "CRITICAL",
        _ => "UNKNOWN",
    };
    let days = |c: &Certificate| crate::policy::days_to_expiry(now, not_after(c));
    let mut parts = Vec::new();
    if let Some(c) = expired.first() {
        parts.push(format!(
            "{} expired ({} {} days ago)",
            expired.len(),
            c.name,
            -days(c)
        ));
    }
    if let Some(c) = crit.first() {
        parts.push(format!(
            "{} expiring within {critical} ({} in {} days)",
            crit.len(),
            c.name,
            days(c)
        ));
    }
    if let Some(c) = warn.first() {
        parts.push(format!(
            "{} expiring within {warning} ({} in {} days)",
            warn.len(),
            c.name,
            days(c)
        ));
    }
    if let Some(c) = failing.first() {
        let reason = c
            .renewal
            .as_ref()
            .and_then(|r| r.reason.clone())
            .unwrap_or_default();
        parts.push(format!(
            "{} renewal(s) failing ({}: {reason})",
            failing.len(),
            c.name
        ));
    }
    if parts.is_empty() {
        parts.push(match nearest {
            Some(c) => format!(
                "{} certificates, nearest expiry {} in {} days",
                live.len(),
                c.name,
                days(c)
            ),
            None => "no certificates".to_owned(),
        });
    }
    let min_days = nearest.map_or(0, |c| days(c));
    let perf = format!(
        "certificates={} expired={} critical={} warning={} renewal_failed={} min_days_to_expiry={min_days};{};{}",
        live.len(),
        expired.len(),
        crit.len(),
        warn.len(),
        failing.len(),
        warning.as_secs() / 86_400,
        critical.as_secs() / 86_400,
    );
    (
        code,
        format!("CERTKEEPER {state} - {} | {perf}", parts.join(", ")),
    )
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;
    use crate::model::{CertificateId, KeyAlgorithm, Origin, Renewal, Serial};

    const NOW: OffsetDateTime = datetime!(2026-11-22 12:00 UTC);

    fn cert(name: &str, days_left: i64, status: Status, failing: bool) -> Certificate {
        Certificate {
            id: CertificateId::generate(),
            name: name.into(),
            origin: Origin::Private,
            status,
            issuer: "default".into(),
            domains: vec![],
            key_algorithm: KeyAlgorithm::EcP256,
            serial: Some(Serial::from_bytes(&[1])),
            not_before: Some(NOW - time::Duration::days(10)),
            not_after: Some(NOW + time::Duration::days(days_left)),
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
            renewal: failing.then(|| Renewal {
                status: RenewalStatus::Failed,
                reason: Some("CA offline".into()),
                failures: 2,
                failed_at: Some(NOW),
                action_required_days: None,
            }),
            next_renewal_at: None,
            versions: vec![],
        }
    }

    fn code(certs: &[Certificate]) -> (u8, String) {
        evaluate(certs, Span::from_days(30), Span::from_days(7), NOW)
    }

    #[test]
    fn states_follow_the_worst_certificate() {
        let (c, line) = code(&[cert("a", 90, Status::Issued, false)]);
        assert_eq!(c, OK, "{line}");
        assert!(
            line.starts_with("CERTKEEPER OK - 1 certificates, nearest expiry a in 90 days |"),
            "{line}"
        );
        let (c, line) = code(&[
            cert("a", 90, Status::Issued, false),
            cert("b", 20, Status::Issued, false),
        ]);
        assert_eq!(c, WARNING, "{line}");
        assert!(line.contains("b in 20 days"), "{line}");
        assert_eq!(
            code(&[cert("a", 90, Status::Issued, true)]).0,
            WARNING,
            "failing renewal"
        );
        let (c, line) = code(&[cert("a", 3, Status::Issued, false)]);
        assert_eq!(c, CRITICAL, "{line}");
        let (c, line) = code(&[cert("old", -2, Status::Expired, false)]);
        assert_eq!(c, CRITICAL, "{line}");
        assert!(line.contains("1 expired (old 2 days ago)"), "{line}");
        assert_eq!(
            code(&[cert("gone", -2, Status::Revoked, false)]).0,
            OK,
            "revoked ones are not served"
        );
        assert_eq!(code(&[]).0, OK);
        let (_, line) = code(&[cert("b", 20, Status::Issued, false)]);
        assert!(line.contains("| certificates=1 expired=0 critical=0 warning=1 renewal_failed=0 min_days_to_expiry=20;30;7"), "{line}");
    }
}
