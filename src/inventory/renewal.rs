//! Renewal decisions for stored certificates: the facts the planner ([`policy::next_step`])
//! weighs, drawn from a certificate and the settings, and the store changes that carry a
//! decision out (a new deadline, a failure with its event, a validation time-out).

use super::*;
use crate::policy::{AfterFailure, Facts, Failure, Failures, NotRenewed, Plan, Rules, Step};
use crate::store::RenewalFailure;

impl Inventory {
    /// What happens next to `cert` at `now`, and why.
    pub fn plan(&self, cert: &Certificate, now: OffsetDateTime) -> Plan {
        let settings = self.settings();
        let window = own_window(cert.maintenance_window.as_ref());
        policy::next_step(&facts(cert, window.as_ref()), &rules(&settings), now)
    }

    /// The deadline of a certificate whose current version is new (just issued, renewed or
    /// replanned): healthy, under its own settings and the CA's window when there is one.
    pub(super) fn deadline_of_new_version(
        &self,
        (id, version): (&CertificateId, u32),
        lifetime: Lifetime,
        (renew_before, window): (Option<Span>, Option<&WindowSpec>),
        renewal_info: Option<&RenewalInfo>,
        (issued_at, now): (OffsetDateTime, OffsetDateTime),
    ) -> Option<OffsetDateTime> {
        let settings = self.settings();
        let window = own_window(window);
        let facts = Facts {
            id: id.as_str(),
            renewed: Ok(()),
            lifetime: Some(lifetime),
            version,
            issued_at: Some(issued_at),
            validation_deadline: None,
            failures: None,
            renewal_info,
            renew_before: renew_before.map(Span::time),
            window: window.as_ref(),
        };
        policy::next_step(&facts, &rules(&settings), now).at
    }

    /// Plans every scheduled, healthy renewal again (after a policy change). Failing ones keep
    /// their backoff; ones being renewed keep their lease.
    pub(super) async fn replan(&self, now: OffsetDateTime) -> Result<usize> {
        let planned = self.store.replannable().await?;
        let items: Vec<_> = planned
            .into_iter()
            .map(|r| {
                let at = self.deadline_of_new_version(
                    (&r.id, r.version),
                    r.lifetime,
                    (r.renew_before, r.window.as_ref()),
                    r.renewal_info.as_ref(),
                    (r.issued_at.unwrap_or(r.lifetime.not_before), now),
                );
                (r.id, at)
            })
            .collect();
        Ok(self.store.set_next_action(items).await?)
    }

    /// A step the scheduler took up before its time (its deadline and the plan disagree, as
    /// after a policy change): only its deadline moves.
    pub async fn reschedule(&self, cert: &Certificate, at: Option<OffsetDateTime>) -> Result<()> {
        self.store
            .set_renewal_info(&cert.id, cert.renewal_info.clone(), at)
            .await?;
        Ok(())
    }

    /// For [`Step::CheckRenewalInfo`]: asks the CA for its renewal window again and plans under
    /// the answer. Returns true when the renewal is due now (the CA's window has begun); else
    /// the new window and deadline are stored.
    pub async fn check_renewal_info(
        &self,
        cert: &Certificate,
        now: OffsetDateTime,
    ) -> Result<bool> {
        let Some(previous) = cert.renewal_info.as_ref() else {
            return Ok(true);
        };
        let current = self.version(&cert.id, cert.current_version).await?;
        let info = match self
            .acme()?
            .renewal_window(&cert.issuer, &current.cert_pem)
            .await
        {
            Ok(Some(window)) => Some(policy::choose_renewal_time(
                window,
                Some(previous),
                now,
                random_fraction(),
            )),
            // The CA stopped offering renewal information: certkeeper's own plan holds.
            Ok(None) => None,
            Err(err) => {
                tracing::warn!(cert = %cert.id, error = %err, "checking the renewal window failed");
                Some(policy::renewal_info_unavailable(previous, now))
            }
        };
        let mut after = cert.clone();
        after.renewal_info = info.clone();
        let plan = self.plan(&after, now);
        if plan.step == Step::Renew && plan.is_due(now) {
            tracing::info!(cert = %cert.id, "the CA's renewal window has begun");
            return Ok(true);
        }
        self.store.set_renewal_info(&cert.id, info, plan.at).await?;
        Ok(false)
    }

    /// Records a failed attempt on `cert` (as read before the attempt) at `at`: the retry time
    /// and, at a milestone, the Renewal Action Required event; or, past its validation
    /// deadline, the time-out with its event. Returns what was decided.
    pub async fn renewal_failed(
        &self,
        cert: &Certificate,
        err: &InventoryError,
        at: OffsetDateTime,
    ) -> Result<AfterFailure> {
        let window = own_window(cert.maintenance_window.as_ref());
        let failure = Failure {
            at,
            kind: err.failure_kind(),
            retry_not_before: err.retry_not_before(),
        };
        let decided = policy::after_failure(&facts(cert, window.as_ref()), failure);
        let reason = err.to_string();
        match decided {
            AfterFailure::TimedOut => {
                let event = events::validation_timed_out(cert, &reason, at);
                let timed_out = self
                    .store
                    .set_status(
                        &cert.id,
                        Status::PendingValidation,
                        Status::ValidationTimedOut,
                        None,
                        Some(event),
                    )
                    .await?;
                // No longer waiting (issued or deleted meanwhile): nothing timed out.
                if !timed_out {
                    return Err(InventoryError::NotFound(Missing::Certificate(
                        cert.id.to_string(),
                    )));
                }
                // Not retried any more: an order kept for it is of no more use.
                if let Some(acme) = &self.acme {
                    acme.abandon(&cert.id).await;
                }
            }
            AfterFailure::Retry {
                at: retry_at,
                failures,
                days_left,
                milestone,
                ..
            } => {
                let event = milestone
                    .map(|_| events::renewal_failed(cert, days_left, &reason, failures, at));
                let failure = RenewalFailure {
                    id: cert.id.clone(),
                    next_action_at: Some(retry_at),
                    kind: failure.kind,
                    reason,
                    failed_at: at,
                    action_required_days: milestone,
                    event,
                };
                self.store.renewal_failed(failure).await?;
            }
        }
        Ok(decided)
    }
}

/// The facts the planner weighs for a stored certificate; `window` is its own maintenance
/// window, parsed.
fn facts<'a>(cert: &'a Certificate, window: Option<&'a Window>) -> Facts<'a> {
    let renewed = match (cert.origin, cert.status) {
        (Origin::Imported, _) => Err(NotRenewed::Imported),
        (_, Status::Revoked) => Err(NotRenewed::Revoked),
        (_, Status::ValidationTimedOut) => Err(NotRenewed::ValidationTimedOut),
        (Origin::Private, _) if !cert.versions.first().is_some_and(|v| v.key_held) => {
            Err(NotRenewed::KeyNotHeld)
        }
        _ => Ok(()),
    };
    Facts {
        id: cert.id.as_str(),
        renewed,
        lifetime: cert.lifetime(),
        version: cert.current_version,
        issued_at: cert
            .versions
            .iter()
            .find(|v| v.version == cert.current_version)
            .map(|v| v.created_at),
        validation_deadline: cert
            .validation_deadline
            .filter(|_| cert.status == Status::PendingValidation),
        failures: cert
            .renewal
            .as_ref()
            .filter(|r| r.failures > 0)
            .map(|r| Failures {
                count: r.failures,
                kind: r.failure_kind,
                last: r.failed_at.unwrap_or(cert.updated_at),
                milestone: r.action_required_days,
            }),
        renewal_info: cert.renewal_info.as_ref(),
        renew_before: cert.renew_before.map(Span::time),
        window,
    }
}

fn rules(settings: &Settings) -> Rules<'_> {
    Rules {
        renew_before: settings.renew_before.time(),
        window: settings.window.as_ref(),
    }
}

/// A certificate's own maintenance window. A stored window always parsed when it was set; if a
/// later version of the cron rules refused it, the global window applies rather than none.
fn own_window(spec: Option<&WindowSpec>) -> Option<Window> {
    spec.and_then(|w| w.window().ok())
}

/// A uniformly random number in `[0, 1)`: where in the CA's renewal window to renew.
pub(super) fn random_fraction() -> f64 {
    let mut bytes = [0u8; 8];
    if aws_lc_rs::rand::fill(&mut bytes).is_err() {
        return 0.5;
    }
    // 53 random bits: every value is an exact f64 below 1.
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}
