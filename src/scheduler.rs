//! The scheduler: the one timer task that renews certificates, marks them expired and
//! runs the daily expiry check (DESIGN.md §4, §5).
//!
//! The shape is mini-redis's expiry task. The loop asks the store for the earliest deadline
//! (a renewal or retry due, an issued certificate's expiry) and the daily check's next
//! occurrence, sleeps until the earliest of them, and is woken early through [`Wake`] when the
//! inventory changes in a way that can bring a deadline earlier. When nothing is due it does
//! nothing: no polling.
//!
//! Deadlines live in the store (`certificates.next_action_at`), written together with each
//! change, so a restart loses nothing. A renewal is claimed by moving its deadline forward by
//! a lease: at most `renewal.concurrency` run at once, none runs twice, and one interrupted by
//! a crash is retried when its lease runs out. A lease can also run out under a renewal that
//! is still going (waiting for the issuer's `max-orders-in-flight`, or a slow CA): the claim
//! then hands its id out again, and the set of renewals running in this process
//! ([`InFlight`]) keeps it from starting a second time.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration as StdDuration;

use time::{Duration, OffsetDateTime};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, warn};

use crate::events::{self, Event};
use crate::inventory::{Inventory, InventoryError};
use crate::liveness::Probed;
use crate::model::{CertificateId, DaysBeforeExpiry, rfc3339};
use crate::policy::{self, AfterFailure, Step};
use crate::schedule::Schedule;
use crate::store::{Deadlines, ExpiryCandidate};
use crate::wake::Wake;

/// How long a claimed renewal may take before it is considered abandoned and retried.
const LEASE: Duration = Duration::minutes(15);
/// Expiries handled per pass; a backlog is worked through pass by pass.
const EXPIRY_BATCH: u32 = 500;
/// The longest the loop sleeps without re-reading deadlines: a guard against clock jumps
/// (suspend, NTP steps), which `sleep_until` on the monotonic clock does not see.
const MAX_SLEEP: StdDuration = StdDuration::from_secs(3600);

/// Runs until `shutdown`, then waits for the renewals in flight (the caller bounds the wait).
///
/// The settings it works under (the daily check's schedule, how many renewals run at once,
/// event retention and the sinks it prunes for) are read from the inventory at every pass, so
/// a reload (SIGHUP) applies them at the next pass, which the reload's wake-up starts at once.
/// `probed` answers the watchdog from the loop's `select!`: an answer means the loop goes
/// round.
pub async fn run(inventory: Arc<Inventory>, mut probed: Probed, shutdown: CancellationToken) {
    let wake = inventory.wake();
    let settings = inventory.settings();
    let mut permits = Permits::new(settings.concurrency);
    let renewals = TaskTracker::new();
    let in_flight = InFlight::default();
    let now = OffsetDateTime::now_utc();
    // Renewals interrupted by a crash or a kill are taken up again at once (an ACME order in
    // flight is resumed) rather than when their lease would have run out.
    match inventory.store().release_leases(now).await {
        Ok(0) => {}
        Ok(released) => info!(released, "taking up renewals interrupted by the last stop"),
        Err(err) => warn!(error = %err, "releasing stale renewal leases failed"),
    }
    // Catch up on a daily check missed while the daemon was down; the per-day marker in the
    // store keeps it from repeating one already sent today.
    daily(&inventory, now).await;
    let mut daily_check = settings.daily_check;
    let mut next_daily = daily_check.next_after(now);

    // The earliest expiry of an issued certificate as of the last pass. A change can only
    // bring an earlier one that the next pass's read picks up, so until this time has come
    // there is nothing to mark expired. `None` at first: look once.
    let mut next_expiry: Option<OffsetDateTime> = None;
    let mut looked = false;
    'passes: loop {
        wake.awake();
        // The one clock read of the pass: every decision in it is made at this instant; the
        // sleep after it is measured on the monotonic clock from the same point.
        let now = OffsetDateTime::now_utc();
        let started = tokio::time::Instant::now();
        let settings = inventory.settings();
        permits.resize(settings.concurrency);
        if !same_schedule(&settings.daily_check, &daily_check) {
            info!(daily_check = %settings.daily_check.as_str(), "daily expiry check rescheduled");
            daily_check = settings.daily_check.clone();
            next_daily = daily_check.next_after(now);
        }
        if !looked || next_expiry.is_some_and(|at| at <= now) {
            expire_due(&inventory, now).await;
            looked = true;
        }
        if next_daily.is_some_and(|at| at <= now) {
            daily(&inventory, now).await;
            events::outbox::prune(inventory.store(), &settings.sinks, settings.retention, now)
                .await;
            next_daily = daily_check.next_after(now);
        }
        let running = Running {
            permits: &permits.semaphore,
            tasks: &renewals,
            in_flight: &in_flight,
        };
        start_due_renewals(&inventory, &running, &wake, now).await;

        let deadlines = match inventory.store().next_deadline().await {
            Ok(deadlines) => deadlines,
            Err(err) => {
                warn!(error = %err, "reading the next deadline failed; retrying in a minute");
                Deadlines {
                    action: Some(now + Duration::minutes(1)),
                    expiry: Some(now + Duration::minutes(1)),
                }
            }
        };
        next_expiry = deadlines.expiry;
        let sleep = sleep_for(now, deadlines, next_daily, permits.available());
        wake.sleeping_until(now + sleep);
        let sleep = tokio::time::sleep_until(started + sleep);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                // The earliest deadline arrived (or the guard interval passed): go round again.
                () = &mut sleep => continue 'passes,
                // The inventory changed (issuance, renewal, revocation, config): deadlines may
                // have moved earlier.
                () = wake.notified() => continue 'passes,
                // The watchdog asks whether the loop goes round: it does; keep sleeping.
                reply = probed.question() => {
                    let _ = reply.send(());
                }
                // The daemon is stopping: stop claiming work and let running renewals finish.
                () = shutdown.cancelled() => break 'passes,
            }
        }
    }
    renewals.close();
    renewals.wait().await;
}

fn same_schedule(a: &Schedule, b: &Schedule) -> bool {
    a.as_str() == b.as_str() && a.time_zone() == b.time_zone()
}

/// The renewal permits, resized when `renewal.concurrency` is reloaded. Permits held by
/// running renewals cannot be taken back: a smaller size is reached as they come back.
struct Permits {
    semaphore: Arc<Semaphore>,
    size: usize,
    /// Permits to forget as they come back (the size went down while they were held).
    owed: usize,
}

impl Permits {
    fn new(size: usize) -> Self {
        Self {
            semaphore: Arc::new(Semaphore::new(size)),
            size,
            owed: 0,
        }
    }

    fn resize(&mut self, size: usize) {
        if size > self.size {
            let more = size - self.size;
            // Growing first pays back what is owed.
            let repaid = more.min(self.owed);
            self.owed -= repaid;
            self.semaphore.add_permits(more - repaid);
        } else {
            self.owed += self.size - size;
        }
        if size != self.size {
            info!(from = self.size, to = size, "renewal concurrency changed");
            self.size = size;
        }
        self.owed -= self.semaphore.forget_permits(self.owed);
    }

    fn available(&self) -> usize {
        self.semaphore.available_permits()
    }
}

/// How long the loop sleeps: until the earliest action, expiry or daily check, at most
/// [`MAX_SLEEP`]. With no permit free, an action already past is not one: that renewal can
/// only wait for a running one to finish (which wakes the loop), and going round again for it
/// would spin. Expiries never wait for permits.
fn sleep_for(
    now: OffsetDateTime,
    deadlines: Deadlines,
    next_daily: Option<OffsetDateTime>,
    free_permits: usize,
) -> StdDuration {
    let action = deadlines.action.filter(|at| *at > now || free_permits > 0);
    action
        .into_iter()
        .chain(deadlines.expiry)
        .chain(next_daily)
        .min()
        .map_or(MAX_SLEEP, |at| to_std(at - now).min(MAX_SLEEP))
}

fn to_std(d: Duration) -> StdDuration {
    StdDuration::try_from(d).unwrap_or(StdDuration::ZERO)
}

/// The certificates whose renewal runs on a task of this process, so that a claim whose lease
/// ran out under a renewal still going does not start it again.
#[derive(Clone, Default)]
struct InFlight(Arc<Mutex<HashSet<CertificateId>>>);

impl InFlight {
    /// Marks `id` as running until the returned guard is dropped; `None` when it already is.
    fn start(&self, id: &CertificateId) -> Option<Renewing> {
        crate::lock::lock(&self.0)
            .insert(id.clone())
            .then(|| Renewing {
                set: self.clone(),
                id: id.clone(),
            })
    }
}

/// One entry of [`InFlight`], removed when the renewal's task ends (even by a panic).
struct Renewing {
    set: InFlight,
    id: CertificateId,
}

impl Drop for Renewing {
    fn drop(&mut self) {
        crate::lock::lock(&self.set.0).remove(&self.id);
    }
}

/// What running renewals share: the permits, the task set the shutdown waits for, and the
/// ids in flight.
struct Running<'a> {
    permits: &'a Arc<Semaphore>,
    tasks: &'a TaskTracker,
    in_flight: &'a InFlight,
}

/// Claims due renewals while permits are free and runs each on its own task.
async fn start_due_renewals(
    inventory: &Arc<Inventory>,
    running: &Running<'_>,
    wake: &Arc<Wake>,
    now: OffsetDateTime,
) {
    let free = running.permits.available_permits();
    if free == 0 {
        return;
    }
    let claimed = match inventory.store().claim_due(now, free, now + LEASE).await {
        Ok(ids) => ids,
        Err(err) => {
            warn!(error = %err, "claiming due renewals failed");
            return;
        }
    };
    for id in claimed {
        // Its lease ran out while it still runs: the claim just gave it another, and the
        // running renewal writes the next deadline when it ends.
        let Some(renewing) = running.in_flight.start(&id) else {
            debug!(cert = %id, "lease renewed under a renewal still running");
            continue;
        };
        // A permit is free for each claimed id (we claimed no more than were free, and only
        // this loop takes permits); `acquire_owned` fails only if the semaphore is closed.
        let Ok(permit) = running.permits.clone().acquire_owned().await else {
            return;
        };
        let (inventory, wake) = (inventory.clone(), wake.clone());
        running.tasks.spawn(async move {
            // Whatever happens to the renewal (even a panic), the permit comes back, the id
            // leaves the set in flight, and the loop is woken to look at the changed deadlines.
            let _done = Done {
                permit: Some(permit),
                renewing: Some(renewing),
                wake,
            };
            let span = tracing::info_span!("renewal", cert = %id);
            renew_one(&inventory, &id, now).instrument(span).await;
        });
    }
}

/// Held by a running renewal: when it ends, its id leaves the set in flight, its permit is
/// released and the loop is woken.
struct Done {
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    renewing: Option<Renewing>,
    wake: Arc<Wake>,
}

impl Drop for Done {
    fn drop(&mut self) {
        // Both go back before the wake-up, so the woken loop finds the permit free and does
        // not take the certificate for one still running.
        drop(self.renewing.take());
        drop(self.permit.take());
        self.wake.changed();
    }
}

/// Carries out one certificate's due step, as the planner decides it at `now`: a renewal
/// (or first issuance, or retry), or a new look at the CA's renewal window. A failure is
/// recorded with its retry time and, at a milestone, its Renewal Action Required event (or the
/// validation time-out), all decided by the planner too.
async fn renew_one(inventory: &Inventory, id: &CertificateId, now: OffsetDateTime) {
    let cert = match inventory.find(id.as_str()).await {
        Ok(cert) => cert,
        // Deleted since it was claimed: nothing left to do.
        Err(InventoryError::NotFound(_)) => return,
        Err(err) => {
            warn!(error = %err, "reading the certificate failed; the lease will retry it");
            return;
        }
    };
    let plan = inventory.plan(&cert, now);
    if plan.holds_a_claim(now) {
        if let Err(err) = inventory.reschedule(&cert, plan.at).await {
            warn!(error = %err, "rescheduling failed; the lease will retry it");
        }
        return;
    }
    let step = match plan.step {
        Step::CheckRenewalInfo => match inventory.check_renewal_info(&cert, now).await {
            Ok(false) => return,
            Ok(true) => Step::Renew,
            Err(err) => {
                warn!(error = %err, "checking renewal information failed; renewing");
                Step::Renew
            }
        },
        step => step,
    };
    debug!(%step, rule = %plan.rule, "due");
    let outcome = inventory.renew_certificate(cert.clone()).await;
    inventory.metrics().renewal(outcome.is_ok());
    let err = match outcome {
        Ok(cert) => {
            info!(serial = ?cert.serial, not_after = ?cert.not_after.map(rfc3339), version = cert.current_version, "renewed");
            return;
        }
        // Revoked while it renewed: the new version was not kept, and nothing renews it again.
        Err(InventoryError::Revoked { .. }) => {
            info!("revoked during its renewal; the new version is not kept");
            return;
        }
        Err(err) => err,
    };
    // The time of the failure is a fact of the attempt (which may have taken a minute), not
    // of the pass that started it.
    match inventory
        .renewal_failed(&cert, &err, OffsetDateTime::now_utc())
        .await
    {
        Ok(AfterFailure::TimedOut) => warn!(error = %err, "validation timed out"),
        Ok(AfterFailure::Retry {
            at,
            rule,
            failures,
            days_left,
            ..
        }) => {
            warn!(failures, days_left, retry_at = %rfc3339(at), %rule, error = %err, "renewal failed");
        }
        Err(InventoryError::NotFound(_)) => {}
        Err(record) => {
            warn!(error = %err, record_error = %record, "renewal failed; recording it failed too (the lease will retry it)");
        }
    }
}

/// Marks issued certificates past their not-after as expired, each with its event.
async fn expire_due(inventory: &Inventory, now: OffsetDateTime) {
    loop {
        let due = match inventory.store().expired_due(now, EXPIRY_BATCH).await {
            Ok(due) if !due.is_empty() => due,
            Ok(_) => return,
            Err(err) => {
                warn!(error = %err, "reading expired certificates failed");
                return;
            }
        };
        let full = due.len() as u32 == EXPIRY_BATCH;
        let items = due
            .iter()
            .map(|cert| (cert.id.clone(), events::expired(cert, now)))
            .collect();
        match inventory.store().mark_expired(items, now).await {
            Ok(n) if n > 0 => info!(count = n, "certificates expired"),
            Ok(_) => {}
            Err(err) => {
                warn!(error = %err, "marking certificates expired failed");
                return;
            }
        }
        if !full {
            return;
        }
    }
}

/// The daily check: "Approaching Expiration" for every issued certificate inside its
/// threshold, at most once per certificate and UTC day.
async fn daily(inventory: &Inventory, now: OffsetDateTime) -> usize {
    let started = std::time::Instant::now();
    let days = inventory.days_before_expiry();
    // No certificate's threshold exceeds the account threshold or the largest per-certificate
    // override (365 days), so nothing further out needs reading.
    let horizon = Duration::days(365);
    let candidates = match inventory.store().expiry_candidates(now, horizon).await {
        Ok(c) => c,
        Err(err) => {
            warn!(error = %err, "daily expiry check failed to read certificates");
            return 0;
        }
    };
    let today = now.unix_timestamp().div_euclid(86_400);
    let items: Vec<_> = candidates
        .iter()
        .filter_map(|c| {
            approaching(inventory, c, days, today, now).map(|event| (c.id.clone(), today, event))
        })
        .collect();
    let due = items.len();
    let sent = match inventory.store().expiry_events(items).await {
        Ok(n) => n,
        Err(err) => {
            warn!(error = %err, "daily expiry check failed to record events");
            return 0;
        }
    };
    info!(
        checked = candidates.len(),
        due,
        sent,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "daily expiry check"
    );
    sent
}

fn approaching(
    inventory: &Inventory,
    c: &ExpiryCandidate,
    account_days: DaysBeforeExpiry,
    today: i64,
    now: OffsetDateTime,
) -> Option<Event> {
    if c.expiry_event_day.is_some_and(|day| day >= today) {
        return None;
    }
    let lifetime = policy::Lifetime {
        not_before: c.not_before,
        not_after: c.not_after,
    };
    let care = inventory.care(c.renewal, c.renew_before, lifetime, now);
    let days = c
        .days_before_expiry
        .map_or(account_days, DaysBeforeExpiry::from_stored);
    if !policy::approaching_expiration_due(now, lifetime, days.get(), care, None) {
        return None;
    }
    Some(events::approaching_expiration(
        &c.id,
        &c.name,
        &c.common_name,
        &c.serial,
        c.origin,
        c.not_after,
        now,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_renewal_still_running_is_not_started_again_when_its_lease_is_claimed() {
        let in_flight = InFlight::default();
        let id = CertificateId::generate();
        let first = in_flight.start(&id).expect("not running yet");
        // The lease ran out and the claim handed the same id out again.
        assert!(in_flight.start(&id).is_none(), "started twice");
        let other = CertificateId::generate();
        assert!(
            in_flight.start(&other).is_some(),
            "others are not held back"
        );
        // The first renewal ended: the next claim runs it.
        drop(first);
        assert!(in_flight.start(&id).is_some());
    }

    #[test]
    fn a_past_deadline_waits_for_a_free_permit_instead_of_spinning() {
        let now = OffsetDateTime::UNIX_EPOCH + Duration::days(20_000);
        let at = |secs: i64| Some(now + Duration::seconds(secs));
        let actions = |action| Deadlines {
            action,
            expiry: None,
        };
        let daily = at(2 * 3600);
        // A permit is free: the due renewal is claimed at once.
        assert_eq!(sleep_for(now, actions(at(-5)), daily, 1), StdDuration::ZERO);
        // None is free: the loop sleeps until the next daily check (or a wake-up).
        assert_eq!(
            sleep_for(now, actions(at(-5)), daily, 0),
            StdDuration::from_secs(2 * 3600).min(MAX_SLEEP)
        );
        assert_eq!(sleep_for(now, actions(at(-5)), None, 0), MAX_SLEEP);
        // A deadline still ahead counts whatever the permits.
        assert_eq!(
            sleep_for(now, actions(at(30)), daily, 0),
            StdDuration::from_secs(30)
        );
        assert_eq!(sleep_for(now, Deadlines::default(), None, 3), MAX_SLEEP);
        // An expiry never waits for a permit, even behind a past action.
        let both = Deadlines {
            action: at(-5),
            expiry: at(40),
        };
        assert_eq!(sleep_for(now, both, daily, 0), StdDuration::from_secs(40));
        let expired = Deadlines {
            action: at(-5),
            expiry: at(-1),
        };
        assert_eq!(sleep_for(now, expired, daily, 0), StdDuration::ZERO);
    }
}
