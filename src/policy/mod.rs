//! The timing rules (DESIGN.md §4), as pure functions: no I/O, no clock, `now` passed in.
//!
//! Everything the scheduler, the expiry-event check and `certkeeper explain` decide about time
//! is computed here, so that one table of tests pins the behaviour down:
//!
//! - **Renewal**: `renew-before` (default 60 days) clamped to a third of the lifetime (half
//!   below 10 days), minus a small deterministic jitter, then held for a maintenance window
//!   unless less than a tenth of the lifetime would remain.
//! - **Failure backoff**: exponential from one minute to four hours, never past expiry.
//! - **Expiry events**: `days-before-expiry` (default 45); for certificates we renew, the event
//!   means "renewal is overdue", so the threshold is `min(days, lifetime / 4)`, and it is sent
//!   only while the renewal is failing or overdue.
//! - **Standing**: a renewed certificate is on schedule, failing, overdue (its planned time an
//!   hour past), unrenewed (failing or overdue inside the last tenth of its life) or expired:
//!   what `certkeeper check` and the alert rules report instead of fixed days-left thresholds.
//! - **Renewal Action Required**: at the first failure, then as 45/30/15/7/3/1 days remain.
//!
//! [`planner`] composes these into the one decision the scheduler carries out and `explain`
//! prints: what happens next to a certificate, when, and which rule decided.

mod planner;

use std::fmt;

use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use crate::schedule::Window;

pub use planner::{
    ARI_MAX_CHECK, ARI_MIN_CHECK, ARI_RETRY, AfterFailure, Facts, Failure, Failures, NotRenewed,
    Plan, Rules, Step, SuggestedWindow, after_failure, choose_renewal_time, next_step,
    renewal_floor, renewal_info_unavailable,
};

/// ACM's rule: renew 60 days before expiry (clamped for short lifetimes).
pub const DEFAULT_RENEW_BEFORE: Duration = Duration::days(60);
/// ACM's default: expiry events start 45 days before expiry.
pub const DEFAULT_DAYS_BEFORE_EXPIRY: u32 = 45;
/// Failure backoff bounds.
pub const BACKOFF_MIN: Duration = Duration::minutes(1);
pub const BACKOFF_MAX: Duration = Duration::hours(4);
/// How soon a transient failure (the CA busy, unreachable or asking to wait briefly; the store
/// or DNS server failing for a moment) is retried: from this, doubling, spread like the backoff.
pub const TRANSIENT_RETRY_MIN: Duration = Duration::seconds(5);
pub const TRANSIENT_RETRY_MAX: Duration = Duration::minutes(5);
/// How often a certificate waiting for its validation records looks again: from this, doubling.
pub const VALIDATION_RETRY_MIN: Duration = Duration::seconds(15);
pub const VALIDATION_RETRY_MAX: Duration = Duration::minutes(15);
/// Days before expiry at which a failing renewal raises `Renewal Action Required` again.
pub const ACTION_REQUIRED_DAYS: [i64; 6] = [45, 30, 15, 7, 3, 1];

/// A maintenance window is ignored once less than this part of the lifetime would remain.
pub const URGENT_FRACTION: i32 = 10;

/// Which rule decided a time; `explain` prints it (its spelling is part of the JSON).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// `renew-before` as configured (the lifetime is long enough).
    RenewBefore,
    /// `renew-before` clamped to a third (or half) of the lifetime.
    LifetimeClamp,
    /// Held until the maintenance window opens.
    Window,
    /// The window was ignored: less than a tenth of the lifetime would remain.
    Urgent,
    /// Retrying after a failure the CA or certkeeper refused.
    Backoff,
    /// Retrying soon after a transient failure (the CA busy or unreachable).
    TransientRetry,
    /// The CA's Retry-After held the retry back further than the backoff would.
    RetryAfter,
    /// The CA's suggested renewal window (ARI) came before certkeeper's own time.
    AriWindow,
    /// The next look at the CA's renewal window comes before any renewal.
    AriCheck,
    /// No version yet: issue as soon as validation allows.
    FirstIssuance,
    /// Waiting for the validation records: looking again soon.
    ValidationLadder,
    /// certkeeper does not renew the certificate.
    NotRenewed,
    /// Held back until the version has served two fifths of its real life (from issuance).
    Floor,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::RenewBefore => "renew-before",
            Self::LifetimeClamp => "lifetime clamp",
            Self::Window => "maintenance window",
            Self::Urgent => "expiry near: maintenance window overridden",
            Self::Backoff => "retry backoff after a failure",
            Self::TransientRetry => "retry soon after a transient failure",
            Self::RetryAfter => "retry backoff: the CA asked to wait (Retry-After)",
            Self::AriWindow => "ari-window",
            Self::AriCheck => "ari",
            Self::FirstIssuance => "first issuance",
            Self::ValidationLadder => "waiting for validation records",
            Self::NotRenewed => "not managed",
            Self::Floor => "renewal floor: not before two fifths of the real lifetime",
        })
    }
}

/// The renewal window an ACME CA suggests for a certificate (RFC 9773), and what certkeeper
/// made of it ([`choose_renewal_time`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewalInfo {
    #[serde(with = "time::serde::rfc3339")]
    pub window_start: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub window_end: OffsetDateTime,
    /// The point chosen at random inside the window (now, when the window has begun).
    #[serde(with = "time::serde::rfc3339")]
    pub renew_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub checked_at: OffsetDateTime,
    /// When to ask the CA again (its Retry-After, within a minute and a day).
    #[serde(with = "time::serde::rfc3339")]
    pub next_check: OffsetDateTime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub explanation_url: Option<String>,
}

/// What the renewal rules need to know about one certificate.
#[derive(Clone, Copy, Debug)]
pub struct Lifetime {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Lifetime {
    pub fn length(&self) -> Duration {
        (self.not_after - self.not_before).max(Duration::ZERO)
    }
}

/// A planned renewal: when, and which rule decided it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Planned {
    pub at: OffsetDateTime,
    pub rule: Rule,
    /// How long before expiry the renewal is due, after clamping (before jitter and windows).
    pub renew_before: Duration,
}

/// `min(renew_before, lifetime / 3)`, or `lifetime / 2` below ten days, with the rule that won.
pub fn effective_renew_before(renew_before: Duration, lifetime: Duration) -> (Duration, Rule) {
    let clamp = if lifetime < Duration::days(10) {
        lifetime / 2
    } else {
        lifetime / 3
    };
    if renew_before <= clamp {
        (renew_before, Rule::RenewBefore)
    } else {
        (clamp, Rule::LifetimeClamp)
    }
}

/// How much earlier than its nominal time a certificate renews, so that certificates issued
/// together spread out. Deterministic (a hash of the id, so it survives restarts), and at most
/// 5% of the renewal window, capped at 12 hours.
pub fn jitter(id: &str, renew_before: Duration) -> Duration {
    let bound: Duration = (renew_before / 20_i32).min(Duration::hours(12));
    let bound_secs = bound.whole_seconds();
    if bound_secs <= 0 {
        return Duration::ZERO;
    }
    Duration::seconds((fnv1a(id.as_bytes()) % bound_secs as u64) as i64)
}

/// FNV-1a: a stable, dependency-free hash; only its spread matters here, not its strength.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// When a healthy certificate should renew.
pub fn renewal(
    id: &str,
    lifetime: Lifetime,
    renew_before: Duration,
    window: Option<&Window>,
    now: OffsetDateTime,
) -> Planned {
    let (effective, rule) = effective_renew_before(renew_before, lifetime.length());
    let nominal = lifetime.not_after - effective - jitter(id, effective);
    let planned = Planned {
        at: nominal,
        rule,
        renew_before: effective,
    };
    hold_for_window(planned, lifetime, window, now)
}

/// Moves `planned` into the next maintenance window, unless doing so would leave less than a
/// tenth of the lifetime: then the renewal happens when that point is reached, window or not.
fn hold_for_window(
    planned: Planned,
    lifetime: Lifetime,
    window: Option<&Window>,
    now: OffsetDateTime,
) -> Planned {
    let Some(window) = window else { return planned };
    let urgent_from = lifetime.not_after - lifetime.length() / URGENT_FRACTION;
    let earliest = planned.at.max(now);
    if earliest >= urgent_from {
        return Planned {
            at: earliest,
            rule: Rule::Urgent,
            ..planned
        };
    }
    match window.next_open(earliest) {
        Some(open) if open == earliest => planned,
        Some(open) if open < urgent_from => Planned {
            at: open,
            rule: Rule::Window,
            ..planned
        },
        _ => Planned {
            at: urgent_from,
            rule: Rule::Urgent,
            ..planned
        },
    }
}

/// When to retry after the `failures`-th consecutive failure (1 = the first): exponential from
/// one minute, capped at four hours, spread by a deterministic ±10%, and never after expiry.
pub fn retry(
    id: &str,
    failures: u32,
    failed_at: OffsetDateTime,
    not_after: OffsetDateTime,
) -> OffsetDateTime {
    laddered(
        (BACKOFF_MIN, BACKOFF_MAX),
        id,
        failures,
        failed_at,
        not_after,
    )
}

/// [`retry`] on the short ladder of transient failures: from five seconds, at most every five
/// minutes.
pub fn transient_retry(
    id: &str,
    failures: u32,
    failed_at: OffsetDateTime,
    not_after: OffsetDateTime,
) -> OffsetDateTime {
    laddered(
        (TRANSIENT_RETRY_MIN, TRANSIENT_RETRY_MAX),
        id,
        failures,
        failed_at,
        not_after,
    )
}

fn laddered(
    (min, max): (Duration, Duration),
    id: &str,
    failures: u32,
    failed_at: OffsetDateTime,
    not_after: OffsetDateTime,
) -> OffsetDateTime {
    let exponent = failures.saturating_sub(1).min(20);
    let base = (min * 2_i32.pow(exponent)).min(max);
    // ±10%, from the id and the attempt number, so many certificates failing together (a CA
    // outage) do not retry in lockstep.
    // Counted in milliseconds: the short ladder's first step (5 s) spreads too.
    let spread = (base.whole_milliseconds() / 10).clamp(0, i128::from(i64::MAX)) as i64;
    let offset = if spread > 0 {
        let h = fnv1a(format!("{id}/{failures}").as_bytes());
        (h % (2 * spread as u64 + 1)) as i64 - spread
    } else {
        0
    };
    let at = failed_at + base + Duration::milliseconds(offset);
    // Never past expiry while there is time left: halve the remaining time instead, so the last
    // attempts converge on expiry (at least ten seconds apart). After expiry the certificate is
    // still needed, so retries go on at the normal pace.
    if at > not_after && failed_at < not_after {
        failed_at + ((not_after - failed_at) / 2_i32).max(Duration::seconds(10))
    } else {
        at
    }
}

/// The retry time for a server that asked to wait until `until`: then, plus a jitter of up to
/// a tenth of the wait (at most 5 minutes), spread by certificate id.
pub fn after_retry_after(id: &str, now: OffsetDateTime, until: OffsetDateTime) -> OffsetDateTime {
    let wait = (until - now).max(Duration::ZERO);
    let spread = (wait / 10_i32).min(Duration::minutes(5));
    let spread_ms = spread.whole_milliseconds().max(0) as u64;
    let jitter = if spread_ms == 0 {
        0
    } else {
        fnv1a(id.as_bytes()) % (spread_ms + 1)
    };
    until.max(now) + Duration::milliseconds(jitter as i64)
}

/// When a certificate waiting for validation (its first issuance) looks again after the
/// `attempts`-th miss: 15 s, doubling, at most every 15 minutes. Someone is creating a DNS
/// record; it should be noticed soon after it appears, without hammering the resolver or the
/// CA for the 72 hours a validation may take.
pub fn validation_retry(attempts: u32, failed_at: OffsetDateTime) -> OffsetDateTime {
    let exponent = attempts.saturating_sub(1).min(20);
    let delay = (VALIDATION_RETRY_MIN * 2_i32.pow(exponent)).min(VALIDATION_RETRY_MAX);
    failed_at + delay
}

/// How a certificate is looked after, for its expiry events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Care {
    /// Watched only (imported, or a key certkeeper does not hold).
    Watched,
    /// Renewed by certkeeper this long before expiry (the effective, clamped renew-before),
    /// and how that renewal stands.
    Renewed {
        renew_before: Duration,
        standing: Standing,
    },
}

/// The expiry-event threshold: `days` for certificates we only watch; for ones we renew the
/// event means "renewal is overdue", so `min(days, lifetime / 4)`, and never earlier than the
/// renewal itself is due (a per-certificate renew-before can be shorter than a quarter).
pub fn expiry_threshold(days_before_expiry: u32, care: Care, lifetime: Lifetime) -> Duration {
    let days = Duration::days(i64::from(days_before_expiry));
    match care {
        Care::Watched => days,
        Care::Renewed { renew_before, .. } => days.min(lifetime.length() / 4).min(renew_before),
    }
}

/// Whole days from `now` to `not_after`, rounded down (ACM's `DaysToExpiry`); negative after.
pub fn days_to_expiry(now: OffsetDateTime, not_after: OffsetDateTime) -> i64 {
    (not_after - now).whole_seconds().div_euclid(86_400)
}

/// Whether an `Approaching Expiration` event is due today: inside the threshold, not yet
/// expired, not already sent on this UTC day, and, for a certificate certkeeper renews, only
/// while its renewal is failing or overdue. A renewal held for a maintenance window may
/// legitimately come inside the threshold (up to the last tenth of the lifetime): a
/// certificate renewed on schedule never reports, whatever its lifetime.
pub fn approaching_expiration_due(
    now: OffsetDateTime,
    lifetime: Lifetime,
    days_before_expiry: u32,
    care: Care,
    last_sent: Option<OffsetDateTime>,
) -> bool {
    let threshold = expiry_threshold(days_before_expiry, care, lifetime);
    let inside = lifetime.not_after - now <= threshold && now < lifetime.not_after;
    let reported = match care {
        Care::Watched => true,
        Care::Renewed { standing, .. } => standing != Standing::OnSchedule,
    };
    inside && reported && last_sent.is_none_or(|sent| sent.date() < now.date())
}

/// How long after its planned time a renewal that has not happened counts as overdue: an
/// hour, or a tenth of the lifetime when that is shorter. The scheduler takes a due renewal up
/// at once and pushes its deadline out by its lease while it runs, so a planned time an hour
/// past means the scheduler is not getting to it, not that it is busy.
pub const OVERDUE_GRACE: Duration = Duration::HOUR;

/// What is known from outside about the renewal of a certificate certkeeper renews: the next
/// time the scheduler acts on it (the planner's renewal or retry time, stored as its deadline)
/// and the consecutive failures so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RenewalState {
    pub next_action_at: OffsetDateTime,
    pub failures: u32,
}

/// Where a renewed certificate stands against its renewal plan. `certkeeper check`, the
/// shipped alert rules and the expiry events report this instead of fixed days-left
/// thresholds, which a healthy 6-day certificate would be inside all its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    /// The renewal is planned, or became due less than [`overdue_grace`] ago: nothing to say.
    OnSchedule,
    /// The last attempt failed; retries are planned (WARNING).
    Failing,
    /// The planned time passed more than [`overdue_grace`] ago without an attempt (WARNING).
    Overdue,
    /// In the last tenth of the lifetime ([`URGENT_FRACTION`], the part in which the planner
    /// overrides maintenance windows), and failing, overdue, or there for longer than the
    /// overdue grace: it may expire (CRITICAL).
    Unrenewed,
    Expired,
}

impl fmt::Display for Standing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::OnSchedule => "on schedule",
            Self::Failing => "failing",
            Self::Overdue => "overdue",
            Self::Unrenewed => "not renewed with under a tenth of the lifetime left",
            Self::Expired => "expired",
        })
    }
}

/// [`OVERDUE_GRACE`], or a tenth of the lifetime when that is shorter.
pub fn overdue_grace(lifetime: Lifetime) -> Duration {
    OVERDUE_GRACE.min(lifetime.length() / URGENT_FRACTION)
}

/// Where a certificate with `lifetime` and `renewal` stands at `now`.
pub fn standing(lifetime: Lifetime, renewal: RenewalState, now: OffsetDateTime) -> Standing {
    if now >= lifetime.not_after {
        return Standing::Expired;
    }
    let grace = overdue_grace(lifetime);
    let troubled = if renewal.failures > 0 {
        Some(Standing::Failing)
    } else if now - renewal.next_action_at > grace {
        Some(Standing::Overdue)
    } else {
        None
    };
    // The last part of the life: the planner ignores windows here, so a renewal held by one
    // starts as this part begins. Critical when the renewal is in trouble, and also when the
    // certificate has stayed here longer than the grace whatever its deadline says: a renewal
    // that hangs or dies keeps pushing its deadline out by its lease, so it never looks
    // overdue and never counts a failure.
    let urgent_from = lifetime.not_after - lifetime.length() / URGENT_FRACTION;
    if now > urgent_from && (troubled.is_some() || now - urgent_from > grace) {
        return Standing::Unrenewed;
    }
    troubled.unwrap_or(Standing::OnSchedule)
}

/// Whether a failing renewal should raise `Renewal Action Required` now, given the milestone
/// (days left) it last raised one for. Returns the milestone to record.
///
/// The first failure always raises one (milestone = the days left then); later failures raise
/// one when the days left have crossed a milestone of 45/30/15/7/3/1 below the last one raised.
/// Milestones skipped while the daemon was down are not replayed: only the one just crossed.
pub fn action_required(days_left: i64, last_milestone: Option<i64>) -> Option<i64> {
    let Some(last) = last_milestone else {
        return Some(days_left);
    };
    // The smallest milestone not yet passed, i.e. the one most recently crossed.
    let current = ACTION_REQUIRED_DAYS
        .iter()
        .rev()
        .copied()
        .find(|m| days_left <= *m)?;
    (current < last).then_some(current)
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    const NOW: OffsetDateTime = datetime!(2026-11-22 12:00 UTC);

    fn lifetime(days: i64) -> Lifetime {
        Lifetime {
            not_before: NOW,
            not_after: NOW + Duration::days(days),
        }
    }

    /// DESIGN.md §4's table: (lifetime days, renews this many days before expiry, the rule).
    pub(crate) const DESIGN_ROWS: [(i64, f64, Rule); 6] = [
        (395, 60.0, Rule::RenewBefore),
        (198, 60.0, Rule::RenewBefore),
        (100, 100.0 / 3.0, Rule::LifetimeClamp),
        (90, 30.0, Rule::LifetimeClamp),
        (45, 15.0, Rule::LifetimeClamp),
        (6, 3.0, Rule::LifetimeClamp),
    ];

    /// DESIGN.md §4's table: how long before expiry each lifetime renews.
    #[test]
    fn renewal_window_table() {
        for (days, expected_days, rule) in DESIGN_ROWS {
            let (effective, got) =
                effective_renew_before(DEFAULT_RENEW_BEFORE, lifetime(days).length());
            let got_days = effective.as_seconds_f64() / 86_400.0;
            assert!(
                (got_days - expected_days).abs() < 1e-6,
                "{days}-day lifetime: {got_days} days"
            );
            assert_eq!(got, rule, "{days}-day lifetime");
        }
        // The boundary: 10 days is "long" (a third), just under is "short" (a half).
        let (at_ten, _) = effective_renew_before(DEFAULT_RENEW_BEFORE, Duration::days(10));
        assert_eq!(at_ten, Duration::days(10) / 3);
        let (under, _) =
            effective_renew_before(DEFAULT_RENEW_BEFORE, Duration::days(10) - Duration::SECOND);
        assert_eq!(under, (Duration::days(10) - Duration::SECOND) / 2);
        // A per-certificate renew-before shorter than the clamp wins.
        assert_eq!(
            effective_renew_before(Duration::days(7), Duration::days(90)),
            (Duration::days(7), Rule::RenewBefore)
        );
    }

    #[test]
    fn renewal_time_includes_bounded_deterministic_jitter() {
        let lt = lifetime(90);
        let a = renewal("ck-a", lt, DEFAULT_RENEW_BEFORE, None, NOW);
        assert_eq!(
            a,
            renewal("ck-a", lt, DEFAULT_RENEW_BEFORE, None, NOW),
            "deterministic"
        );
        let nominal = lt.not_after - Duration::days(30);
        assert!(a.at <= nominal && a.at > nominal - Duration::hours(12) - Duration::SECOND);
        // Certificates issued together spread out.
        let times: std::collections::BTreeSet<_> = (0..100)
            .map(|i| renewal(&format!("ck-{i}"), lt, DEFAULT_RENEW_BEFORE, None, NOW).at)
            .collect();
        assert!(
            times.len() > 90,
            "only {} distinct renewal times",
            times.len()
        );
        // Six-day certificates: jitter stays within 5% of the 3-day window.
        let short = lifetime(6);
        for i in 0..100 {
            let p = renewal(&format!("ck-{i}"), short, DEFAULT_RENEW_BEFORE, None, NOW);
            let before_expiry = short.not_after - p.at;
            assert!(
                before_expiry >= Duration::days(3)
                    && before_expiry <= Duration::days(3) + Duration::days(3) / 20
            );
        }
    }

    fn window(expr: &str, hours: u64) -> Window {
        Window {
            schedule: crate::schedule::Schedule::parse(expr, None).unwrap(),
            duration: std::time::Duration::from_secs(hours * 3600),
        }
    }

    #[test]
    fn maintenance_windows_hold_renewals_unless_expiry_is_near() {
        // 90-day certificate renewing 30 days before expiry; window Sundays 02:00-04:00 UTC.
        let lt = lifetime(90);
        let sunday = window("0 2 * * 0", 2);
        let p = renewal("ck-w", lt, DEFAULT_RENEW_BEFORE, Some(&sunday), NOW);
        assert_eq!(p.rule, Rule::Window);
        assert_eq!(p.at.weekday(), time::Weekday::Sunday);
        assert_eq!((p.at.hour(), p.at.minute()), (2, 0));
        let nominal = renewal("ck-w", lt, DEFAULT_RENEW_BEFORE, None, NOW).at;
        assert!(p.at >= nominal && p.at - nominal <= Duration::days(7));

        // Already inside a window at the nominal time: unchanged.
        let always = window("0 * * * *", 1);
        assert_eq!(
            renewal("ck-w", lt, DEFAULT_RENEW_BEFORE, Some(&always), NOW).rule,
            Rule::LifetimeClamp
        );

        // A window that opens only once a year cannot hold a renewal past the last tenth.
        let yearly = window("0 0 1 1 *", 1);
        let p = renewal("ck-w", lt, DEFAULT_RENEW_BEFORE, Some(&yearly), NOW);
        assert_eq!(p.rule, Rule::Urgent);
        assert_eq!(p.at, lt.not_after - Duration::days(9));

        // Already inside the last tenth: renew now.
        let late = NOW + Duration::days(85);
        let p = renewal("ck-w", lt, DEFAULT_RENEW_BEFORE, Some(&sunday), late);
        assert_eq!((p.at, p.rule), (late, Rule::Urgent));
    }

    #[test]
    fn backoff_grows_to_a_cap_and_never_passes_expiry() {
        let far = NOW + Duration::days(30);
        let delays: Vec<Duration> = (1..=12).map(|n| retry("ck-b", n, NOW, far) - NOW).collect();
        assert!(
            delays[0] >= Duration::seconds(54) && delays[0] <= Duration::seconds(66),
            "{:?}",
            delays[0]
        );
        assert!(delays[1] >= Duration::seconds(108) && delays[1] <= Duration::seconds(132));
        for d in &delays {
            assert!(*d <= BACKOFF_MAX + BACKOFF_MAX / 10, "{d:?}");
        }
        assert!(
            delays[11] >= BACKOFF_MAX - BACKOFF_MAX / 10,
            "capped near four hours"
        );
        // Close to expiry: the retry lands just before it, never after.
        let soon = NOW + Duration::minutes(30);
        let at = retry("ck-b", 10, NOW, soon);
        assert!(at < soon && at > NOW, "{at}");
        // Already expired: keep trying on the normal schedule.
        let past = NOW - Duration::days(1);
        assert!(retry("ck-b", 1, NOW, past) > NOW);
        // Deterministic but spread across certificates.
        assert_eq!(retry("ck-b", 3, NOW, far), retry("ck-b", 3, NOW, far));
        let spread: std::collections::BTreeSet<_> = (0..50)
            .map(|i| retry(&format!("ck-{i}"), 3, NOW, far))
            .collect();
        assert!(spread.len() > 10);
    }

    #[test]
    fn retry_after_is_honoured_with_bounded_jitter() {
        let now = datetime!(2026-01-01 00:00 UTC);
        for id in ["ck-a", "ck-b", "ck-c"] {
            let at = after_retry_after(id, now, now + Duration::seconds(100));
            assert!(at >= now + Duration::seconds(100) && at <= now + Duration::seconds(110));
            let far = after_retry_after(id, now, now + Duration::hours(10));
            assert!(far >= now + Duration::hours(10));
            assert!(far <= now + Duration::hours(10) + Duration::minutes(5));
        }
        // A time already past: now.
        assert_eq!(
            after_retry_after("ck-a", now, now - Duration::seconds(5)),
            now
        );
    }

    #[test]
    fn validation_retries_look_soon_then_settle() {
        let delays: Vec<i64> = (1..=8)
            .map(|n| (validation_retry(n, NOW) - NOW).whole_seconds())
            .collect();
        assert_eq!(delays, [15, 30, 60, 120, 240, 480, 900, 900]);
    }

    /// A renewed certificate's care, as the daily check weighs it.
    fn renewed(lifetime: Lifetime, standing: Standing) -> Care {
        Care::Renewed {
            renew_before: effective_renew_before(DEFAULT_RENEW_BEFORE, lifetime.length()).0,
            standing,
        }
    }

    #[test]
    fn expiry_threshold_table() {
        // (lifetime days, managed, expected threshold days)
        let cases = [
            (395, true, 45.0),
            (198, true, 45.0),
            (100, true, 25.0),
            (90, true, 22.5),
            (45, true, 11.25),
            (6, true, 1.5),
            (90, false, 45.0),
            (6, false, 45.0),
        ];
        for (days, managed, expected) in cases {
            let lt = lifetime(days);
            let care = if managed {
                renewed(lt, Standing::Failing)
            } else {
                Care::Watched
            };
            let t = expiry_threshold(DEFAULT_DAYS_BEFORE_EXPIRY, care, lt);
            let got = t.as_seconds_f64() / 86_400.0;
            assert!(
                (got - expected).abs() < 1e-9,
                "{days} days managed={managed}: {got}"
            );
        }
        let care = |renew_before| Care::Renewed {
            renew_before,
            standing: Standing::Failing,
        };
        assert_eq!(
            expiry_threshold(10, care(Duration::days(60)), lifetime(395)),
            Duration::days(10)
        );
        // A renew-before shorter than a quarter of the lifetime: events only once overdue.
        assert_eq!(
            expiry_threshold(45, care(Duration::days(7)), lifetime(90)),
            Duration::days(7)
        );
    }

    #[test]
    fn approaching_expiration_fires_once_per_day_inside_the_threshold() {
        let lt = |days| Lifetime {
            not_before: NOW - Duration::days(300),
            not_after: NOW + Duration::days(days),
        };
        let due = |days_left, threshold, sent| {
            approaching_expiration_due(NOW, lt(days_left), threshold, Care::Watched, sent)
        };
        assert!(due(10, 45, None));
        assert!(!due(10, 45, Some(NOW - Duration::hours(3))));
        assert!(due(10, 45, Some(NOW - Duration::days(1))));
        assert!(!due(10, 9, None), "outside the threshold");
        assert!(due(10, 10, None), "exactly at it");
        assert!(!due(0, 45, None), "expired");
    }

    /// A certificate with `lifetime_days` of life and `left` of it remaining at `NOW`.
    fn living(lifetime_days: i64, left: Duration) -> Lifetime {
        Lifetime {
            not_before: NOW + left - Duration::days(lifetime_days),
            not_after: NOW + left,
        }
    }

    /// The lifetimes of issue 9: 24 hours, 6, 45, 90 and 395 days.
    const LIFETIMES: [i64; 5] = [1, 6, 45, 90, 395];

    /// Healthy (on schedule: quiet, also when a maintenance window held the renewal inside the
    /// expiry threshold), failing, overdue, unrenewed near expiry, expired: for every lifetime,
    /// the standing and whether the daily check sends Approaching Expiration.
    #[test]
    fn standing_and_expiry_events_follow_the_renewal_plan() {
        for days in LIFETIMES {
            let length = Duration::days(days);
            let renew_before = effective_renew_before(DEFAULT_RENEW_BEFORE, length).0;
            let tenth = length / URGENT_FRACTION;
            let threshold = expiry_threshold(
                45,
                renewed(lifetime(days), Standing::Failing),
                lifetime(days),
            );
            let state = |next: Duration, failures: u32| RenewalState {
                next_action_at: NOW + next,
                failures,
            };
            // (what, time left, renewal, standing, Approaching Expiration sent)
            let rows = [
                (
                    "fresh",
                    length * 9 / 10,
                    state(length / 3, 0),
                    Standing::OnSchedule,
                    false,
                ),
                (
                    "renewal just due",
                    renew_before,
                    state(-Duration::MINUTE, 0),
                    Standing::OnSchedule,
                    false,
                ),
                (
                    "held by a window",
                    tenth + Duration::MINUTE,
                    state(Duration::MINUTE, 0),
                    Standing::OnSchedule,
                    false,
                ),
                (
                    "failing",
                    renew_before - Duration::MINUTE,
                    state(Duration::MINUTE, 1),
                    Standing::Failing,
                    false,
                ),
                (
                    "failing inside the threshold",
                    threshold - Duration::MINUTE,
                    state(Duration::MINUTE, 9),
                    Standing::Failing,
                    true,
                ),
                (
                    "overdue",
                    renew_before - Duration::HOUR * 2,
                    state(-Duration::HOUR * 2, 0),
                    Standing::Overdue,
                    false,
                ),
                (
                    "failing near expiry",
                    tenth - Duration::MINUTE,
                    state(Duration::MINUTE, 20),
                    Standing::Unrenewed,
                    true,
                ),
                (
                    "overdue near expiry",
                    tenth / 2,
                    state(tenth / 2 - renew_before, 0),
                    Standing::Unrenewed,
                    true,
                ),
                (
                    "expired",
                    -Duration::MINUTE,
                    state(Duration::MINUTE, 30),
                    Standing::Expired,
                    false,
                ),
            ];
            for (what, left, renewal, expected, event) in rows {
                let lt = living(days, left);
                let got = standing(lt, renewal, NOW);
                assert_eq!(got, expected, "{days}-day certificate, {what}");
                let care = renewed(lt, got);
                assert_eq!(
                    approaching_expiration_due(NOW, lt, 45, care, None),
                    event,
                    "{days}-day certificate, {what}: event"
                );
            }
            // Imported ones keep the fixed threshold, whatever their lifetime.
            let imported = living(days, Duration::days(45.min(days)) - Duration::MINUTE);
            assert!(approaching_expiration_due(
                NOW,
                imported,
                45,
                Care::Watched,
                None
            ));
        }
    }

    #[test]
    fn overdue_waits_an_hour_or_a_tenth_of_short_lifetimes() {
        assert_eq!(overdue_grace(lifetime(1)), Duration::HOUR);
        assert_eq!(overdue_grace(lifetime(395)), Duration::HOUR);
        let brief = Lifetime {
            not_before: NOW,
            not_after: NOW + Duration::minutes(30),
        };
        assert_eq!(overdue_grace(brief), Duration::minutes(3));
    }

    #[test]
    fn days_to_expiry_rounds_down() {
        assert_eq!(days_to_expiry(NOW, NOW + Duration::days(10)), 10);
        assert_eq!(
            days_to_expiry(NOW, NOW + Duration::days(10) - Duration::SECOND),
            9
        );
        assert_eq!(days_to_expiry(NOW, NOW - Duration::SECOND), -1);
    }

    #[test]
    fn action_required_milestones() {
        assert_eq!(action_required(50, None), Some(50), "first failure always");
        assert_eq!(action_required(49, Some(50)), None);
        assert_eq!(action_required(45, Some(50)), Some(45));
        assert_eq!(action_required(44, Some(45)), None);
        assert_eq!(action_required(29, Some(45)), Some(30));
        assert_eq!(
            action_required(2, Some(30)),
            Some(3),
            "skipped milestones are not replayed"
        );
        assert_eq!(action_required(2, Some(3)), None);
        assert_eq!(action_required(1, Some(3)), Some(1));
        assert_eq!(action_required(0, Some(1)), None);
        assert_eq!(
            action_required(-2, Some(1)),
            None,
            "after expiry: no more milestones"
        );
        assert_eq!(action_required(10, None), Some(10));
    }
}
