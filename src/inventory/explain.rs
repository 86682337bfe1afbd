//! `certkeeper explain`: the planner's decision for a certificate, in words.
//!
//! Nothing here decides anything: [`Inventory::plan`] says what happens next, when and by which
//! rule, and this formats that decision with the facts and settings it weighed, naming the
//! rules' constants from the policy module rather than restating them.

use super::*;
use crate::policy::{
    BACKOFF_MAX, BACKOFF_MIN, NotRenewed, Plan, Rule, TRANSIENT_RETRY_MAX, TRANSIENT_RETRY_MIN,
    URGENT_FRACTION, VALIDATION_RETRY_MAX, VALIDATION_RETRY_MIN,
};

impl Inventory {
    /// What happens next to a certificate, when, and which rule decided it.
    pub async fn explain(&self, id_or_name: &str) -> Result<Explanation> {
        let cert = self.find(id_or_name).await?;
        let now = OffsetDateTime::now_utc();
        let plan = self.plan(&cert, now);
        let settings = self.settings();
        let mut reasons = Vec::new();
        if let Some(lifetime) = cert.lifetime() {
            reasons.push(format!(
                "lifetime {} (not before {}, not after {})",
                span(lifetime.length()),
                rfc3339(lifetime.not_before),
                rfc3339(lifetime.not_after)
            ));
        }
        reasons.extend(decision_reasons(&cert, &plan, &settings));
        let expiry = cert
            .lifetime()
            .map(|lifetime| self.expiry_events(&cert, lifetime, &settings, now));
        if let Some(expiry) = &expiry {
            reasons.push(expiry.reason.clone());
        }
        // The scheduler acts at the stored deadline: the planner's time, unless a CA's
        // Retry-After or a retry already scheduled holds it back further.
        let next_action_at = match (plan.at, cert.next_renewal_at) {
            (Some(planned), Some(stored)) => Some(planned.max(stored)),
            (planned, stored) => planned.or(stored),
        };
        Ok(Explanation {
            id: cert.id.to_string(),
            name: cert.name.clone(),
            status: cert.status.to_string(),
            next_action: plan.step.to_string(),
            next_action_at,
            rule: plan.rule.to_string(),
            reasons,
            expiry_threshold: expiry.as_ref().map(|e| span(e.threshold)),
            expiry_events_from: expiry.as_ref().map(|e| e.from),
            next_expiry_event_at: expiry.and_then(|e| e.next),
            renewal_info: cert.renewal_info.clone(),
        })
    }

    /// When expiry events start for `cert`, and the next daily check that would send one.
    fn expiry_events(
        &self,
        cert: &Certificate,
        lifetime: Lifetime,
        settings: &Settings,
        now: OffsetDateTime,
    ) -> ExpiryEvents {
        let days = cert
            .days_before_expiry
            .map_or(settings.days_before_expiry, DaysBeforeExpiry::from_stored);
        let care = self.care(cert.renewal_state(), cert.renew_before, lifetime, now);
        let threshold = policy::expiry_threshold(days.get(), care, lifetime);
        // Saturating: an imported certificate's dates can sit at either end of what X.509 holds.
        let from = lifetime.not_after.saturating_sub(threshold);
        let (cap, reported) = match care {
            policy::Care::Watched => (String::new(), true),
            policy::Care::Renewed { standing, .. } => (
                format!(
                    " capped at a quarter of the lifetime and at the renewal time, and sent only while the renewal is failing or overdue (now: {standing})"
                ),
                standing != policy::Standing::OnSchedule,
            ),
        };
        let reason = format!(
            "expiry events: days-before-expiry {days}{cap}; daily from {}",
            rfc3339(from)
        );
        let next = (reported && cert.status == Status::Issued && now < lifetime.not_after)
            .then(|| {
                settings
                    .daily_check
                    .next_after(from.max(now).saturating_sub(time::Duration::SECOND))
            })
            .flatten()
            .filter(|at| *at < lifetime.not_after);
        ExpiryEvents {
            threshold,
            from,
            next,
            reason,
        }
    }
}

struct ExpiryEvents {
    threshold: time::Duration,
    from: OffsetDateTime,
    next: Option<OffsetDateTime>,
    reason: String,
}

/// The facts and settings behind the planner's step, one line each.
fn decision_reasons(cert: &Certificate, plan: &Plan, settings: &Settings) -> Vec<String> {
    let mut reasons = Vec::new();
    if let Some(why) = plan.not_renewed {
        reasons.push(not_renewed(why).to_owned());
        return reasons;
    }
    if let Some(failing) = cert.renewal.as_ref().filter(|r| r.failures > 0) {
        reasons.push(format!(
            "{} consecutive renewal failure(s), the last at {}: {}",
            failing.failures,
            failing.failed_at.map(rfc3339).unwrap_or_default(),
            failing.reason.clone().unwrap_or_default()
        ));
    }
    match plan.rule {
        Rule::Backoff | Rule::RetryAfter => reasons.push(format!(
            "retries back off exponentially from {} to {}, never past expiry; a CA's Retry-After holds them back further",
            span(BACKOFF_MIN),
            span(BACKOFF_MAX)
        )),
        Rule::TransientRetry => reasons.push(format!(
            "the last failure was transient (the CA busy or unreachable, the store or DNS server failing for a moment): retrying after {}, doubling up to every {}",
            span(TRANSIENT_RETRY_MIN),
            span(TRANSIENT_RETRY_MAX)
        )),
        Rule::ValidationLadder => reasons.push(format!(
            "waiting for the validation records: looking again after {}, doubling up to every {}",
            span(VALIDATION_RETRY_MIN),
            span(VALIDATION_RETRY_MAX)
        )),
        Rule::FirstIssuance => {
            reasons.push("no version yet: the first issuance is in progress".to_owned());
        }
        _ => {}
    }
    if let Some(own) = plan.own {
        reasons.push(format!(
            "renew-before {} ({}); effective {} before expiry",
            span(plan.renew_before),
            if plan.renew_before_own {
                "set on this certificate"
            } else {
                "renewal.renew-before"
            },
            span(own.renew_before)
        ));
        let window = if plan.window_own {
            cert.maintenance_window
                .as_ref()
                .and_then(|w| w.window().ok())
        } else {
            settings.window.clone()
        };
        if let Some(window) = window {
            reasons.push(format!(
                "maintenance window {} ({}) for {} ({}); ignored once less than 1/{URGENT_FRACTION} of the lifetime remains",
                window.schedule.as_str(),
                window.schedule.time_zone(),
                Span::from_secs(window.duration.as_secs()),
                if plan.window_own { "set on this certificate" } else { "renewal.window" },
            ));
        }
        if let Some(info) = &cert.renewal_info {
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
                rfc3339(own.at)
            ));
        }
    }
    reasons
}

fn not_renewed(why: NotRenewed) -> &'static str {
    match why {
        NotRenewed::Imported => "imported: certkeeper watches it but never renews it",
        NotRenewed::Revoked => "revoked: never renewed",
        NotRenewed::KeyNotHeld => {
            "certkeeper does not hold its key (signed from a CSR): not renewed"
        }
        NotRenewed::ValidationTimedOut => {
            "validation timed out: not ordered again (request it anew once the records exist)"
        }
    }
}

fn span(d: time::Duration) -> Span {
    Span::from_secs(d.whole_seconds().max(0) as u64)
}
