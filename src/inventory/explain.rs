//! `certkeeper explain`: what happens next to a certificate, when, and which rule decided it.

use super::*;

impl Inventory {
    /// What happens next to a certificate, when, and which rule decided it.
    pub async fn explain(&self, id_or_name: &str) -> Result<Explanation> {
        let cert = self.find(id_or_name).await?;
        let now = OffsetDateTime::now_utc();
        let settings = self.settings();
        let Some(lifetime) = cert.lifetime() else {
            return Ok(Explanation {
                id: cert.id.to_string(),
                name: cert.name.clone(),
                status: cert.status.to_string(),
                next_action: "issue".to_owned(),
                next_action_at: cert.next_renewal_at,
                rule: "first issuance".to_owned(),
                reasons: vec!["no version yet: the first issuance is in progress".to_owned()],
                expiry_threshold: None,
                expiry_events_from: None,
                next_expiry_event_at: None,
                renewal_info: None,
            });
        };
        let mut reasons = vec![format!(
            "lifetime {} (not before {}, not after {})",
            Span::from_secs((lifetime.length().whole_seconds()).max(0) as u64),
            rfc3339(lifetime.not_before),
            rfc3339(lifetime.not_after)
        )];
        let managed = cert.next_renewal_at.is_some();
        let failing = cert.renewal.as_ref().filter(|r| r.failures > 0);
        let (next_action, rule) = match (managed, failing) {
            (false, _) => {
                reasons.push(match cert.origin {
                    Origin::Imported => {
                        "imported: certkeeper watches it but never renews it".to_owned()
                    }
                    _ if cert.status == Status::Revoked => "revoked: never renewed".to_owned(),
                    _ => "certkeeper does not hold its key (signed from a CSR): not renewed"
                        .to_owned(),
                });
                ("none", "not managed".to_owned())
            }
            (true, Some(renewal)) => {
                reasons.push(format!(
                    "{} consecutive renewal failure(s), the last at {}: {}",
                    renewal.failures,
                    renewal.failed_at.map(rfc3339).unwrap_or_default(),
                    renewal.reason.clone().unwrap_or_default()
                ));
                reasons.push(
                    "retries back off exponentially from 1m to 4h, never past expiry".to_owned(),
                );
                ("retry", policy::Rule::Backoff.to_string())
            }
            (true, None) => {
                let configured = cert.renew_before.unwrap_or(settings.renew_before);
                let own = cert
                    .maintenance_window
                    .as_ref()
                    .and_then(|w| w.window().ok());
                let window = own.as_ref().or(settings.window.as_ref());
                let planned =
                    policy::renewal(cert.id.as_str(), lifetime, configured.time(), window, now);
                reasons.push(format!(
                    "renew-before {configured} ({}); effective {} before expiry",
                    if cert.renew_before.is_some() {
                        "set on this certificate"
                    } else {
                        "renewal.renew-before"
                    },
                    Span::from_secs(planned.renew_before.whole_seconds().max(0) as u64)
                ));
                if let Some(window) = window {
                    reasons.push(format!(
                        "maintenance window {} ({}) for {} ({}); ignored once less than a tenth of the lifetime remains",
                        window.schedule.as_str(),
                        window.schedule.time_zone(),
                        Span::from_secs(window.duration.as_secs()),
                        if own.is_some() { "set on this certificate" } else { "renewal.window" },
                    ));
                }
                match &cert.renewal_info {
                    Some(info) => {
                        reasons.push(format!(
                            "the CA suggests renewing between {} and {} (ACME renewal information, asked at {}{}); certkeeper picked {}",
                            rfc3339(info.window_start),
                            rfc3339(info.window_end),
                            rfc3339(info.checked_at),
                            info.explanation_url.as_ref().map(|u| format!(", see {u}")).unwrap_or_default(),
                            rfc3339(info.renew_at),
                        ));
                        reasons.push(format!(
                            "the CA's window is asked for again at {}; the earlier of its chosen time and certkeeper's own ({}) wins",
                            rfc3339(info.next_check),
                            rfc3339(planned.at)
                        ));
                        if info.next_check < info.renew_at.min(planned.at) {
                            ("check-renewal-info", "ari".to_owned())
                        } else if info.renew_at < planned.at {
                            ("renew", "ari-window".to_owned())
                        } else {
                            ("renew", planned.rule.to_string())
                        }
                    }
                    None => ("renew", planned.rule.to_string()),
                }
            }
        };
        let days = cert
            .days_before_expiry
            .unwrap_or(settings.days_before_expiry);
        let threshold = policy::expiry_threshold(
            days,
            self.care(managed, cert.renew_before, lifetime),
            lifetime,
        );
        let events_from = lifetime.not_after - threshold;
        reasons.push(format!(
            "expiry events: days-before-expiry {days}{}; daily from {}",
            if managed {
                " capped at a quarter of the lifetime and at the renewal time (renewal would be overdue)"
            } else {
                ""
            },
            rfc3339(events_from)
        ));
        let next_expiry_event_at = if cert.status == Status::Issued && now < lifetime.not_after {
            settings
                .daily_check
                .next_after(events_from.max(now) - time::Duration::SECOND)
                .filter(|at| *at < lifetime.not_after)
        } else {
            None
        };
        Ok(Explanation {
            id: cert.id.to_string(),
            name: cert.name.clone(),
            status: cert.status.to_string(),
            next_action: next_action.to_owned(),
            next_action_at: cert.next_renewal_at,
            rule,
            reasons,
            expiry_threshold: Some(Span::from_secs(threshold.whole_seconds().max(0) as u64)),
            expiry_events_from: Some(events_from),
            next_expiry_event_at,
            renewal_info: cert.renewal_info.clone(),
        })
    }
}
