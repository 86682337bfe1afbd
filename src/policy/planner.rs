//! The planner: what happens next to one certificate, and when, as one pure function.
//!
//! In the shape of ntpd-rs's `handle_timer`: facts and rules in, `now` (and, for the ACME
//! renewal window, a random number) passed in, a decision out; no clock, no store, no network.
//! The scheduler carries the decision out, `certkeeper explain` prints it, and the inventory
//! stores its time as the certificate's deadline, so the three cannot disagree.
//!
//! - [`next_step`]: the next [`Step`] (issue, renew, retry, check renewal information, or
//!   nothing), its time, and the [`Rule`] that decided it;
//! - [`after_failure`]: what a failed attempt leads to (the retry time, the Renewal Action
//!   Required milestone, or the validation time-out);
//! - [`choose_renewal_time`]: the point inside a CA's suggested renewal window (ARI).
//!
//! New lifecycle stages add a [`Step`] and its rows here (validation time-out and resend,
//! deploy, verify), not branches in the scheduler.

use std::fmt;

use time::{Duration, OffsetDateTime};

use super::{
    Lifetime, Planned, RenewalInfo, Rule, action_required, after_retry_after, days_to_expiry,
    renewal, retry, transient_retry, validation_retry,
};
use crate::model::FailureKind;
use crate::schedule::Window;

/// How soon the CA's renewal window is asked for again after asking failed.
pub const ARI_RETRY: Duration = Duration::HOUR;
/// The CA's Retry-After for renewal information is kept within these (RFC 9773 §4.3.3).
pub const ARI_MIN_CHECK: Duration = Duration::MINUTE;
pub const ARI_MAX_CHECK: Duration = Duration::DAY;
/// A step whose time is this close is due now: stored deadlines have whole seconds.
const DUE_SLACK: Duration = Duration::SECOND;

/// What is done next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The first version: order it (public) as soon as validation allows.
    Issue,
    /// A new version before the current one expires.
    Renew,
    /// Try again after failed attempts.
    Retry,
    /// Ask the CA for its renewal window again (ACME renewal information).
    CheckRenewalInfo,
    /// Nothing: certkeeper does not renew this certificate.
    None,
}

impl Step {
    /// The spelling `explain` shows (part of its JSON).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Issue => "issue",
            Self::Renew => "renew",
            Self::Retry => "retry",
            Self::CheckRenewalInfo => "check-renewal-info",
            Self::None => "none",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why certkeeper does not renew a certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotRenewed {
    /// Imported: watched, renewed by whoever issued it.
    Imported,
    Revoked,
    /// Signed from a caller's CSR: certkeeper has no key to renew with.
    KeyNotHeld,
    /// Waited for validation past its deadline.
    ValidationTimedOut,
}

/// A certificate's failed attempts so far (consecutive; a success resets them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Failures {
    pub count: u32,
    /// What the last one said; `None` for failures recorded before kinds were.
    pub kind: Option<FailureKind>,
    /// When the last one failed.
    pub last: OffsetDateTime,
    /// Days to expiry when the last Renewal Action Required event was raised.
    pub milestone: Option<i64>,
}

/// What the planner knows about one certificate.
#[derive(Clone, Copy, Debug)]
pub struct Facts<'a> {
    /// Spreads jitter and backoff across certificates, deterministically.
    pub id: &'a str,
    /// `Err` when certkeeper does not renew it.
    pub renewed: Result<(), NotRenewed>,
    /// The current version's validity; `None` before the first version.
    pub lifetime: Option<Lifetime>,
    /// The current version's number (1 for the first issuance).
    pub version: u32,
    /// When the current version was really issued. CAs backdate not-before (ours by five
    /// minutes), so the lifetime overstates how long a version has existed; `None` takes
    /// not-before.
    pub issued_at: Option<OffsetDateTime>,
    /// Waiting for its first validation until then (`pending-validation`).
    pub validation_deadline: Option<OffsetDateTime>,
    pub failures: Option<Failures>,
    /// The CA's renewal window and the point chosen in it.
    pub renewal_info: Option<&'a RenewalInfo>,
    /// This certificate's own `renew-before` and maintenance window, when set.
    pub renew_before: Option<Duration>,
    pub window: Option<&'a Window>,
}

/// The configured rules the facts are weighed under.
#[derive(Clone, Copy, Debug)]
pub struct Rules<'a> {
    /// `renewal.renew-before`.
    pub renew_before: Duration,
    /// `renewal.window`.
    pub window: Option<&'a Window>,
}

/// A decision: the step, when, which rule decided, and what it weighed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    pub step: Step,
    /// `None` with [`Step::None`].
    pub at: Option<OffsetDateTime>,
    pub rule: Rule,
    /// certkeeper's own renewal time for the current version, before the CA's window and
    /// failures are weighed: what `explain` compares them with.
    pub own: Option<Planned>,
    /// Where the renew-before and window in `own` came from.
    pub renew_before: Duration,
    pub renew_before_own: bool,
    pub window_own: bool,
    /// Why nothing is planned, with [`Step::None`].
    pub not_renewed: Option<NotRenewed>,
}

impl Plan {
    /// Whether the step is due at `now` (whole-second deadlines count as due in their second).
    pub fn is_due(&self, now: OffsetDateTime) -> bool {
        self.at.is_some_and(|at| at <= now + DUE_SLACK)
    }

    /// For a certificate the scheduler claimed (its stored deadline came): whether the plan
    /// holds it back instead of carrying the step out. The stored deadline is the plan made
    /// when it was set, and it stands: a renewal claimed after its maintenance window closed
    /// (a long queue, a daemon that was down) renews now, not a window later. Only two things
    /// hold a claim: the certificate is no longer renewed, or its version has not served its
    /// floor yet.
    pub fn holds_a_claim(&self, now: OffsetDateTime) -> bool {
        self.step == Step::None || (self.rule == Rule::Floor && !self.is_due(now))
    }
}

/// The next step for a certificate, at `now`.
pub fn next_step(facts: &Facts<'_>, rules: &Rules<'_>, now: OffsetDateTime) -> Plan {
    let renew_before = facts.renew_before.unwrap_or(rules.renew_before);
    let window = facts.window.or(rules.window);
    let plan = |step, at, rule, own| Plan {
        step,
        at,
        rule,
        own,
        renew_before,
        renew_before_own: facts.renew_before.is_some(),
        window_own: facts.window.is_some(),
        not_renewed: None,
    };
    if let Err(why) = facts.renewed {
        return Plan {
            not_renewed: Some(why),
            ..plan(Step::None, None, Rule::NotRenewed, None)
        };
    }
    let own = facts
        .lifetime
        .map(|lifetime| renewal(facts.id, lifetime, renew_before, window, now));
    match (facts.failures, facts.validation_deadline, own) {
        (Some(f), _, _) => {
            let (at, rule) = ladder(facts, f.kind, f.count, f.last);
            plan(Step::Retry, Some(at), rule, own)
        }
        (None, _, None) | (None, Some(_), _) => {
            plan(Step::Issue, Some(now), Rule::FirstIssuance, own)
        }
        (None, None, Some(own)) => {
            let decided = healthy(own, facts.renewal_info, now, plan);
            floored(decided, facts)
        }
    }
}

/// The earliest a healthy version renews: once it has served two fifths of the life it really
/// has, counted from its issuance. Without it a validity shorter than the CA's backdating (or a
/// CA's renewal window that lies in the past) would make every new version due at once, and
/// the certificate would renew in a loop; with it, a version renews at most once and never
/// before it has served that part of its life. Two fifths, not a half: short lifetimes renew at
/// half their life minus a jitter of up to 5% of that, and the floor must not take the jitter's
/// spread away. It binds only when the backdating is a large part of the lifetime (minutes),
/// and for renewal windows a CA places earlier.
pub fn renewal_floor(lifetime: Lifetime, issued_at: Option<OffsetDateTime>) -> OffsetDateTime {
    let issued = issued_at
        .unwrap_or(lifetime.not_before)
        .clamp(lifetime.not_before, lifetime.not_after);
    issued + (lifetime.not_after - issued) * 2 / 5
}

/// `plan` held back to the renewal floor when it would renew earlier. A CA's renewal window
/// may bring the renewal of a first version before the floor (the CA may know of a coming
/// revocation); a version a renewal created waits for its floor even then, so a CA whose
/// windows always lie in the past cannot make certkeeper order in a loop.
fn floored(plan: Plan, facts: &Facts<'_>) -> Plan {
    let (Some(at), Some(lifetime), Step::Renew) = (plan.at, facts.lifetime, plan.step) else {
        return plan;
    };
    if plan.rule == Rule::AriWindow && facts.version <= 1 {
        return plan;
    }
    let floor = renewal_floor(lifetime, facts.issued_at);
    if at >= floor {
        return plan;
    }
    Plan {
        at: Some(floor),
        rule: Rule::Floor,
        ..plan
    }
}

/// A healthy certificate renews at certkeeper's own time or the CA's chosen point, whichever
/// is first; when the next look at the CA's window comes before both, that is the step,
/// unless one of them has already come (then the renewal is due, without asking again).
fn healthy(
    own: Planned,
    info: Option<&RenewalInfo>,
    now: OffsetDateTime,
    plan: impl Fn(Step, Option<OffsetDateTime>, Rule, Option<Planned>) -> Plan,
) -> Plan {
    let renewal_came = |info: &RenewalInfo| info.renew_at.min(own.at) <= now;
    match info {
        Some(info) if info.next_check < info.renew_at.min(own.at) && !renewal_came(info) => plan(
            Step::CheckRenewalInfo,
            Some(info.next_check),
            Rule::AriCheck,
            Some(own),
        ),
        Some(info) if info.renew_at < own.at => {
            plan(Step::Renew, Some(info.renew_at), Rule::AriWindow, Some(own))
        }
        _ => plan(Step::Renew, Some(own.at), own.rule, Some(own)),
    }
}

/// The expiry that bounds retries; a certificate without a version has none pressing.
fn not_after(facts: &Facts<'_>, at: OffsetDateTime) -> OffsetDateTime {
    facts
        .lifetime
        .map_or(at + Duration::days(3650), |l| l.not_after)
}

/// When the `failures`-th consecutive failure, the last at `at`, retries, by what it said:
/// missing validation records look again soon (someone is creating them, and a record may
/// appear at any moment), a transient failure retries on a short ladder, a refusal backs off.
/// Failures recorded before kinds were keep the ladder they had: validation records while
/// waiting for validation, else the backoff.
fn ladder(
    facts: &Facts<'_>,
    kind: Option<FailureKind>,
    failures: u32,
    at: OffsetDateTime,
) -> (OffsetDateTime, Rule) {
    let not_after = not_after(facts, at);
    match kind {
        Some(FailureKind::AwaitingRecords) => {
            (validation_retry(failures, at), Rule::ValidationLadder)
        }
        None if facts.validation_deadline.is_some() => {
            (validation_retry(failures, at), Rule::ValidationLadder)
        }
        Some(FailureKind::Transient) => (
            transient_retry(facts.id, failures, at, not_after),
            Rule::TransientRetry,
        ),
        Some(FailureKind::Refused) | None => {
            (retry(facts.id, failures, at, not_after), Rule::Backoff)
        }
    }
}

/// Transient failures in a row before one raises Renewal Action Required: on the transient
/// ladder (5 s doubling to 5 min) the eighth comes about ten minutes after the first (plus
/// each attempt's own retries, up to half a minute each), long past a badNonce run or a CA's
/// restart, soon enough for anyone to act on an outage ...
pub(crate) const TRANSIENT_QUIET_FAILURES: u32 = 8;
/// ... unless the certificate has this many days left or fewer,
const TRANSIENT_QUIET_DAYS_LEFT: i64 = 7;
/// ... or the CA asked to wait longer than this (Retry-After) before the next try.
const TRANSIENT_QUIET_RETRY_AFTER: Duration = Duration::minutes(15);

/// One failed attempt.
#[derive(Clone, Copy, Debug)]
pub struct Failure {
    pub at: OffsetDateTime,
    /// What it said: which ladder the retry takes.
    pub kind: FailureKind,
    /// The CA said not to come back before then (Retry-After).
    pub retry_not_before: Option<OffsetDateTime>,
}

/// What a failed attempt leads to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterFailure {
    /// The certificate waited for validation past its deadline: it stops being retried.
    TimedOut,
    /// Try again at `at`; raise Renewal Action Required when `milestone` is set.
    Retry {
        at: OffsetDateTime,
        rule: Rule,
        /// Consecutive failures including this one.
        failures: u32,
        days_left: i64,
        /// The milestone (days left) to record with the event, when one is due.
        milestone: Option<i64>,
    },
}

/// What follows `failure` for a certificate with `facts` (its failures before this one).
///
/// The retry takes the ladder of what the failure said ([`ladder`]), never past expiry. A
/// first issuance waiting for validation raises no event (the Validation Pending event already
/// said what to do) until its deadline, when it times out; a transient failure (the CA busy or
/// unreachable for a moment) raises none before [`TRANSIENT_QUIET_FAILURES`] in a row; anything
/// else raises Renewal Action Required at the first failure and at each 45/30/15/7/3/1-day
/// milestone. A CA's Retry-After always holds, plus jitter.
pub fn after_failure(facts: &Facts<'_>, failure: Failure) -> AfterFailure {
    let at = failure.at;
    if facts.validation_deadline.is_some_and(|d| d <= at) {
        return AfterFailure::TimedOut;
    }
    let previous = facts.failures;
    let failures = previous.map_or(0, |f| f.count) + 1;
    let not_after = not_after(facts, at);
    let days_left = days_to_expiry(at, not_after);
    let (retry_at, rule) = ladder(facts, Some(failure.kind), failures, at);
    // Waiting for a first validation raises no event: Validation Pending said what to do.
    // Nor does a blip at the CA that the next tries on the short ladder may well get past;
    // but a CA that asks for a long pause, or a certificate close to expiry, is said at once.
    let quiet = failure.kind == FailureKind::Transient
        && failures < TRANSIENT_QUIET_FAILURES
        && days_left > TRANSIENT_QUIET_DAYS_LEFT
        && failure
            .retry_not_before
            .is_none_or(|until| until - at <= TRANSIENT_QUIET_RETRY_AFTER);
    let milestone = if facts.validation_deadline.is_some() || quiet {
        None
    } else {
        action_required(days_left, previous.and_then(|f| f.milestone))
    };
    let (retry_at, rule) = match failure.retry_not_before {
        Some(until) => {
            let asked = after_retry_after(facts.id, at, until);
            if asked > retry_at {
                (asked, Rule::RetryAfter)
            } else {
                (retry_at, rule)
            }
        }
        None => (retry_at, rule),
    };
    AfterFailure::Retry {
        at: retry_at,
        rule,
        failures,
        days_left,
        milestone,
    }
}

/// A renewal window a CA suggested (RFC 9773 §4.2), as it answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SuggestedWindow {
    pub start: OffsetDateTime,
    pub end: OffsetDateTime,
    /// How long until the CA wants to be asked again (its Retry-After).
    pub retry_after: Option<Duration>,
    pub explanation_url: Option<String>,
}

/// Where in the CA's window certkeeper renews: at `random` (in `[0, 1)`) of the way through
/// it, now once the window has begun, and the same point as before while the CA's window stays
/// the same (so asking again does not move the renewal around). The next look follows the
/// CA's Retry-After, kept between [`ARI_MIN_CHECK`] and [`ARI_MAX_CHECK`].
pub fn choose_renewal_time(
    window: SuggestedWindow,
    previous: Option<&RenewalInfo>,
    now: OffsetDateTime,
    random: f64,
) -> RenewalInfo {
    let (start, end) = (window.start, window.end);
    let renew_at = match previous {
        Some(p) if p.window_start == start && p.window_end == end => p.renew_at,
        _ if start <= now => now,
        _ => start + (end - start).max(Duration::ZERO) * random.clamp(0.0, 1.0),
    };
    let retry_after = window
        .retry_after
        .unwrap_or(ARI_MAX_CHECK)
        .clamp(ARI_MIN_CHECK, ARI_MAX_CHECK);
    RenewalInfo {
        window_start: start,
        window_end: end,
        renew_at,
        checked_at: now,
        next_check: now + retry_after,
        explanation_url: window.explanation_url,
    }
}

/// The window known before, to be asked for again after [`ARI_RETRY`] because asking failed.
pub fn renewal_info_unavailable(previous: &RenewalInfo, now: OffsetDateTime) -> RenewalInfo {
    RenewalInfo {
        next_check: now + ARI_RETRY,
        ..previous.clone()
    }
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;
    use crate::policy::{BACKOFF_MAX, DEFAULT_RENEW_BEFORE, TRANSIENT_RETRY_MAX, jitter};
    use crate::schedule::Schedule;

    const NOW: OffsetDateTime = datetime!(2026-11-22 12:00 UTC);
    const ID: &str = "ck-planner";

    fn lifetime(days: i64) -> Lifetime {
        Lifetime {
            not_before: NOW,
            not_after: NOW + Duration::days(days),
        }
    }

    /// A healthy certificate issued now with `days` of lifetime.
    fn healthy(days: i64) -> Facts<'static> {
        Facts {
            id: ID,
            renewed: Ok(()),
            lifetime: Some(lifetime(days)),
            version: 2,
            issued_at: Some(NOW),
            validation_deadline: None,
            failures: None,
            renewal_info: None,
            renew_before: None,
            window: None,
        }
    }

    const RULES: Rules<'static> = Rules {
        renew_before: DEFAULT_RENEW_BEFORE,
        window: None,
    };

    fn window(expr: &str, hours: u64) -> Window {
        Window {
            schedule: Schedule::parse(expr, None).unwrap(),
            duration: std::time::Duration::from_secs(hours * 3600),
        }
    }

    fn info(renew_at: OffsetDateTime, next_check: OffsetDateTime) -> RenewalInfo {
        RenewalInfo {
            window_start: renew_at - Duration::hours(1),
            window_end: renew_at + Duration::hours(1),
            renew_at,
            checked_at: NOW,
            next_check,
            explanation_url: None,
        }
    }

    /// DESIGN.md §4: how long before expiry each lifetime renews, through the planner.
    #[test]
    fn design_rows_renew_at_the_clamped_time() {
        for (days, before_days, rule) in crate::policy::tests::DESIGN_ROWS {
            let plan = next_step(&healthy(days), &RULES, NOW);
            assert_eq!((plan.step, plan.rule), (Step::Renew, rule), "{days} days");
            let effective = Duration::seconds_f64(before_days * 86_400.0);
            let nominal = lifetime(days).not_after - effective;
            let at = plan.at.unwrap();
            assert_eq!(
                at,
                nominal - jitter(ID, plan.own.unwrap().renew_before),
                "{days} days"
            );
            assert!(
                nominal - at <= Duration::hours(12),
                "{days} days: jitter is bounded"
            );
            assert!(!plan.is_due(NOW), "{days} days: not due at issuance");
        }
    }

    /// One row per step, with the rule that decides it.
    #[test]
    fn every_step_with_its_rule() {
        let failures = |count, last| {
            Some(Failures {
                count,
                kind: None,
                last,
                milestone: None,
            })
        };
        let deadline = Some(NOW + Duration::hours(72));
        let imported = Facts {
            renewed: Err(NotRenewed::Imported),
            ..healthy(90)
        };
        let pending = Facts {
            lifetime: None,
            validation_deadline: deadline,
            ..healthy(90)
        };
        let pending_missing_records = Facts {
            failures: failures(3, NOW),
            ..pending
        };
        let failing = Facts {
            failures: failures(2, NOW),
            ..healthy(90)
        };
        let rows: [(&str, Facts<'_>, Step, Rule, Option<OffsetDateTime>); 5] = [
            ("imported", imported, Step::None, Rule::NotRenewed, None),
            (
                "first issuance",
                pending,
                Step::Issue,
                Rule::FirstIssuance,
                Some(NOW),
            ),
            (
                "validation records missing",
                pending_missing_records,
                Step::Retry,
                Rule::ValidationLadder,
                Some(NOW + Duration::seconds(60)),
            ),
            (
                "failing",
                failing,
                Step::Retry,
                Rule::Backoff,
                Some(retry(ID, 2, NOW, NOW + Duration::days(90))),
            ),
            (
                "healthy",
                healthy(90),
                Step::Renew,
                Rule::LifetimeClamp,
                next_step(&healthy(90), &RULES, NOW).own.map(|p| p.at),
            ),
        ];
        for (name, facts, step, rule, at) in rows {
            let plan = next_step(&facts, &RULES, NOW);
            assert_eq!((plan.step, plan.rule, plan.at), (step, rule, at), "{name}");
        }
        for why in [
            NotRenewed::Imported,
            NotRenewed::Revoked,
            NotRenewed::KeyNotHeld,
            NotRenewed::ValidationTimedOut,
        ] {
            let facts = Facts {
                renewed: Err(why),
                failures: failures(5, NOW),
                ..healthy(90)
            };
            let plan = next_step(&facts, &RULES, NOW);
            assert_eq!((plan.step, plan.not_renewed), (Step::None, Some(why)));
            assert!(!plan.is_due(NOW + Duration::days(1000)), "never due");
        }
        // The first issuance is always due; a deadline a fraction of a second ahead is too
        // (stored deadlines have whole seconds).
        assert!(next_step(&pending, &RULES, NOW).is_due(NOW));
        let mut soon = next_step(&healthy(90), &RULES, NOW);
        soon.at = Some(NOW + Duration::milliseconds(600));
        assert!(soon.is_due(NOW));
        soon.at = Some(NOW + Duration::seconds(2));
        assert!(!soon.is_due(NOW));
    }

    /// The CA's window (ARI) against certkeeper's own plan, and the next look at it.
    #[test]
    fn ari_window_inside_and_outside_the_own_plan() {
        let own = next_step(&healthy(90), &RULES, NOW).at.unwrap();
        let rows = [
            // The CA's point comes first: it wins.
            (
                own - Duration::days(5),
                own,
                Step::Renew,
                Rule::AriWindow,
                own - Duration::days(5),
            ),
            // Ours comes first: ours wins (a window past our time never delays a renewal).
            (
                own + Duration::days(5),
                own + Duration::days(1),
                Step::Renew,
                Rule::LifetimeClamp,
                own,
            ),
            // Asking again comes before either renewal: that is the step.
            (
                own - Duration::days(5),
                NOW + Duration::hours(6),
                Step::CheckRenewalInfo,
                Rule::AriCheck,
                NOW + Duration::hours(6),
            ),
        ];
        for (renew_at, next_check, step, rule, at) in rows {
            let ari = info(renew_at, next_check);
            let facts = Facts {
                renewal_info: Some(&ari),
                ..healthy(90)
            };
            let plan = next_step(&facts, &RULES, NOW);
            assert_eq!(
                (plan.step, plan.rule, plan.at),
                (step, rule, Some(at)),
                "{ari:?}"
            );
            assert_eq!(plan.own.map(|p| p.at), Some(own), "own plan reported");
        }
        // A CA window that has begun makes the renewal due now, once the version has served
        // two fifths of its life; a version younger than that waits for it (a CA whose
        // window always lies in the past cannot make certkeeper renew in a loop).
        let later = NOW + Duration::days(40);
        let begun = info(later - Duration::minutes(5), later + Duration::hours(1));
        let facts = Facts {
            renewal_info: Some(&begun),
            ..healthy(90)
        };
        assert!(next_step(&facts, &RULES, later).is_due(later));
        let early = NOW + Duration::days(1);
        let begun = info(early - Duration::minutes(5), early + Duration::hours(1));
        let facts = Facts {
            renewal_info: Some(&begun),
            ..healthy(90)
        };
        let plan = next_step(&facts, &RULES, early);
        assert_eq!(plan.rule, Rule::Floor);
        assert_eq!(plan.at, Some(NOW + Duration::days(36)));
        // A first version may go early on the CA's word (a revocation may be coming): once.
        let first = Facts {
            version: 1,
            ..facts
        };
        let plan = next_step(&first, &RULES, early);
        assert_eq!(plan.rule, Rule::AriWindow);
        assert!(plan.is_due(early));
    }

    /// A claimed certificate is held back only when it is not renewed or not past its floor.
    #[test]
    fn a_claim_is_held_only_by_the_floor_or_no_renewal() {
        let sunday = window("0 2 * * 0", 2);
        let rules = Rules {
            window: Some(&sunday),
            ..RULES
        };
        // Planned now, the renewal would wait for the next window: a claim still renews.
        let plan = next_step(&healthy(90), &rules, NOW + Duration::days(61));
        assert_eq!(plan.rule, Rule::Window);
        assert!(!plan.holds_a_claim(NOW + Duration::days(61)));
        // No longer renewed: held.
        let imported = Facts {
            renewed: Err(NotRenewed::Imported),
            ..healthy(90)
        };
        assert!(next_step(&imported, &RULES, NOW).holds_a_claim(NOW));
        // A version that has not served its floor: held until then, not after.
        let brief = Facts {
            lifetime: Some(Lifetime {
                not_before: NOW - Duration::minutes(5),
                not_after: NOW + Duration::minutes(3),
            }),
            ..healthy(90)
        };
        let plan = next_step(&brief, &RULES, NOW);
        assert_eq!(plan.rule, Rule::Floor);
        assert!(plan.holds_a_claim(NOW));
        assert!(!plan.holds_a_claim(plan.at.unwrap()));
    }

    /// H1: whatever the validity and the CA's backdating, a new version is never due at once,
    /// and renews after its floor; the floor never takes away the jitter of lifetimes of days.
    #[test]
    fn no_validity_renews_a_new_version_at_once() {
        let backdate = Duration::minutes(5);
        for secs in [
            60,
            90,
            180,
            299,
            300,
            301,
            600,
            3600,
            86_400,
            6 * 86_400,
            90 * 86_400,
        ] {
            let issued = NOW;
            let lifetime = Lifetime {
                not_before: issued - backdate,
                not_after: issued + Duration::seconds(secs),
            };
            let facts = Facts {
                lifetime: Some(lifetime),
                issued_at: Some(issued),
                ..healthy(90)
            };
            let plan = next_step(&facts, &RULES, issued);
            let at = plan.at.unwrap();
            assert!(at > issued && at < lifetime.not_after, "{secs}s: {at}");
            assert!(!plan.is_due(issued), "{secs}s");
            assert!(at >= renewal_floor(lifetime, Some(issued)), "{secs}s");
            if secs >= 86_400 {
                assert_ne!(plan.rule, Rule::Floor, "{secs}s: the floor does not bind");
            }
        }
    }

    #[test]
    fn maintenance_window_held_and_overridden() {
        let sunday = window("0 2 * * 0", 2);
        let yearly = window("0 0 1 1 *", 1);
        // The global window holds the renewal until a Sunday 02:00.
        let rules = Rules {
            window: Some(&sunday),
            ..RULES
        };
        let plan = next_step(&healthy(90), &rules, NOW);
        assert_eq!((plan.step, plan.rule), (Step::Renew, Rule::Window));
        let at = plan.at.unwrap();
        assert_eq!((at.weekday(), at.hour()), (time::Weekday::Sunday, 2));
        assert!(!plan.window_own);
        // A certificate's own window wins over the global one; one that would hold the
        // renewal past the last tenth of the lifetime is overridden.
        let facts = Facts {
            window: Some(&yearly),
            ..healthy(90)
        };
        let plan = next_step(&facts, &rules, NOW);
        assert_eq!((plan.rule, plan.window_own), (Rule::Urgent, true));
        assert_eq!(plan.at, Some(lifetime(90).not_after - Duration::days(9)));
        // Inside the last tenth already: due now, window or not.
        let late = NOW + Duration::days(85);
        let plan = next_step(&healthy(90), &rules, late);
        assert_eq!((plan.rule, plan.at), (Rule::Urgent, Some(late)));
        assert!(plan.is_due(late));
    }

    #[test]
    fn failures_back_off_never_past_expiry_and_raise_milestones() {
        let failure = |at| Failure {
            at,
            kind: FailureKind::Refused,
            retry_not_before: None,
        };
        // The first failure raises the event (at the days left), later ones only at
        // milestones; retries grow and are capped.
        let mut facts = healthy(90);
        let mut at = NOW + Duration::days(60);
        let mut milestones = Vec::new();
        let mut delays = Vec::new();
        for _ in 0..12 {
            let AfterFailure::Retry {
                at: retry_at,
                rule,
                failures,
                days_left,
                milestone,
            } = after_failure(&facts, failure(at))
            else {
                panic!("a renewal never times out");
            };
            assert_eq!(rule, Rule::Backoff);
            assert!(retry_at > at && retry_at <= at + BACKOFF_MAX + BACKOFF_MAX / 10);
            delays.push(retry_at - at);
            if let Some(m) = milestone {
                milestones.push((days_left, m));
            }
            facts.failures = Some(Failures {
                count: failures,
                kind: Some(FailureKind::Refused),
                last: at,
                milestone: milestone.or(facts.failures.and_then(|f| f.milestone)),
            });
            at = retry_at;
        }
        assert_eq!(milestones, [(30, 30)], "first failure at 30 days left");
        assert!(delays[0] < delays[5] && delays[11] >= BACKOFF_MAX - BACKOFF_MAX / 10);

        // Days later, crossing 15 days left raises the next milestone, once.
        let AfterFailure::Retry { milestone, .. } = after_failure(
            &facts,
            failure(NOW + Duration::days(75) + Duration::hours(1)),
        ) else {
            panic!()
        };
        assert_eq!(milestone, Some(15));

        // Close to expiry the retry lands before it, never after.
        let expiring = Facts {
            failures: Some(Failures {
                count: 9,
                kind: Some(FailureKind::Refused),
                last: NOW,
                milestone: Some(1),
            }),
            lifetime: Some(Lifetime {
                not_before: NOW - Duration::days(89),
                not_after: NOW + Duration::minutes(30),
            }),
            ..healthy(90)
        };
        let AfterFailure::Retry { at, .. } = after_failure(&expiring, failure(NOW)) else {
            panic!()
        };
        assert!(at > NOW && at < NOW + Duration::minutes(30), "{at}");
        let plan = next_step(&expiring, &RULES, NOW);
        assert!(plan.at.unwrap() < NOW + Duration::minutes(30));

        // A CA's Retry-After holds the retry back beyond the backoff.
        let until = NOW + Duration::hours(6);
        let AfterFailure::Retry { at, rule, .. } = after_failure(
            &healthy(90),
            Failure {
                at: NOW,
                kind: FailureKind::Transient,
                retry_not_before: Some(until),
            },
        ) else {
            panic!()
        };
        assert_eq!(rule, Rule::RetryAfter);
        assert!(at >= until && at <= until + Duration::minutes(5));
    }

    #[test]
    fn a_pending_validation_retries_soon_then_times_out_without_milestones() {
        let deadline = NOW + Duration::hours(72);
        let pending = Facts {
            lifetime: None,
            validation_deadline: Some(deadline),
            ..healthy(90)
        };
        let failure = |at| Failure {
            at,
            kind: FailureKind::AwaitingRecords,
            retry_not_before: None,
        };
        assert_eq!(
            after_failure(&pending, failure(NOW)),
            AfterFailure::Retry {
                at: NOW + Duration::seconds(15),
                rule: Rule::ValidationLadder,
                failures: 1,
                days_left: 3650,
                milestone: None,
            }
        );
        assert_eq!(
            after_failure(&pending, failure(deadline)),
            AfterFailure::TimedOut
        );
    }

    #[test]
    fn transient_failures_raise_renewal_action_required_only_once_they_persist() {
        let mut facts = healthy(90);
        let mut at = NOW + Duration::days(60);
        let mut raised = Vec::new();
        let mut elapsed = Duration::ZERO;
        for _ in 0..12 {
            let AfterFailure::Retry {
                at: retry_at,
                failures,
                milestone,
                ..
            } = after_failure(
                &facts,
                Failure {
                    at,
                    kind: FailureKind::Transient,
                    retry_not_before: None,
                },
            )
            else {
                panic!("a renewal never times out");
            };
            if milestone.is_some() {
                raised.push((failures, elapsed));
            }
            facts.failures = Some(Failures {
                count: failures,
                kind: Some(FailureKind::Transient),
                last: at,
                milestone: milestone.or(facts.failures.and_then(|f| f.milestone)),
            });
            elapsed += retry_at - at;
            at = retry_at;
        }
        assert_eq!(raised.len(), 1, "{raised:?}");
        let (failures, after) = raised[0];
        assert_eq!(failures, TRANSIENT_QUIET_FAILURES);
        assert!(
            after >= Duration::minutes(9) && after <= Duration::minutes(12),
            "raised {after} after the first failure"
        );
        // A refusal after a few transient failures raises it at once.
        facts.failures = Some(Failures {
            count: 2,
            kind: Some(FailureKind::Transient),
            last: at,
            milestone: None,
        });
        let AfterFailure::Retry { milestone, .. } = after_failure(
            &facts,
            Failure {
                at,
                kind: FailureKind::Refused,
                retry_not_before: None,
            },
        ) else {
            panic!()
        };
        assert!(
            milestone.is_some(),
            "a refusal is raised at its first failure"
        );

        // Nor is a transient failure quiet close to expiry, or when the CA asks for a long
        // pause.
        let first = |facts: &Facts<'_>, at, retry_not_before| {
            let AfterFailure::Retry { milestone, .. } = after_failure(
                facts,
                Failure {
                    at,
                    kind: FailureKind::Transient,
                    retry_not_before,
                },
            ) else {
                panic!()
            };
            milestone
        };
        let fresh = healthy(90);
        let early = NOW + Duration::days(60);
        assert_eq!(first(&fresh, early, None), None);
        assert_eq!(
            first(&fresh, early, Some(early + Duration::minutes(10))),
            None
        );
        assert!(first(&fresh, early, Some(early + Duration::hours(1))).is_some());
        assert!(first(&fresh, NOW + Duration::days(84), None).is_some());
    }

    /// Issue 10: a badNonce that outlasted the attempt's own retries waited like a missing
    /// CNAME (15 s, doubling to 15 minutes: eight minutes after a few). Each kind now has its
    /// ladder, for a first issuance and a renewal alike, and the plan read back from the store
    /// agrees with the retry time decided at the failure.
    #[test]
    fn each_kind_of_failure_retries_on_its_own_ladder() {
        let pending = Facts {
            lifetime: None,
            validation_deadline: Some(NOW + Duration::hours(72)),
            ..healthy(90)
        };
        let renewing = healthy(90);
        for (facts, what) in [(&pending, "first issuance"), (&renewing, "renewal")] {
            let mut delays = Vec::new();
            for kind in [
                FailureKind::AwaitingRecords,
                FailureKind::Transient,
                FailureKind::Refused,
            ] {
                let mut facts = *facts;
                let mut at = NOW;
                let mut delay = Vec::new();
                for _ in 0..6 {
                    let AfterFailure::Retry {
                        at: retry_at,
                        rule,
                        failures,
                        ..
                    } = after_failure(
                        &facts,
                        Failure {
                            at,
                            kind,
                            retry_not_before: None,
                        },
                    )
                    else {
                        panic!("{what}: {kind:?} before the deadline retries");
                    };
                    let expected = match kind {
                        FailureKind::AwaitingRecords => Rule::ValidationLadder,
                        FailureKind::Transient => Rule::TransientRetry,
                        FailureKind::Refused => Rule::Backoff,
                    };
                    assert_eq!(rule, expected, "{what}: {kind:?}");
                    facts.failures = Some(Failures {
                        count: failures,
                        kind: Some(kind),
                        last: at,
                        milestone: facts.failures.and_then(|f| f.milestone),
                    });
                    let plan = next_step(&facts, &RULES, at);
                    assert_eq!(
                        (plan.at, plan.rule),
                        (Some(retry_at), expected),
                        "{what}: {kind:?}: the stored failure plans the same retry"
                    );
                    delay.push(retry_at - at);
                    at = retry_at;
                }
                delays.push(delay);
            }
            let [records, transient, refused] = &delays[..] else {
                unreachable!()
            };
            assert_eq!(records[0], Duration::seconds(15), "{what}");
            assert!(
                transient[0] >= Duration::milliseconds(4500)
                    && transient[0] <= Duration::milliseconds(5500),
                "{what}: {:?}",
                transient[0]
            );
            assert!(refused[0] >= Duration::seconds(54), "{what}");
            // Six transient failures take about five minutes in all, where the validation
            // ladder waits eight for the sixth alone.
            let sum = |d: &Vec<Duration>| d.iter().copied().fold(Duration::ZERO, |a, b| a + b);
            assert!(
                sum(transient) < Duration::minutes(6),
                "{what}: {}",
                sum(transient)
            );
            assert_eq!(records[5], Duration::minutes(8), "{what}");
            assert!(transient[5] <= TRANSIENT_RETRY_MAX + TRANSIENT_RETRY_MAX / 10);
            assert!(sum(refused) > sum(transient), "{what}");
        }

        // Failures recorded before kinds were keep their old ladders.
        let legacy = |facts: Facts<'static>| Facts {
            failures: Some(Failures {
                count: 1,
                kind: None,
                last: NOW,
                milestone: None,
            }),
            ..facts
        };
        let plan = next_step(&legacy(pending), &RULES, NOW);
        assert_eq!(plan.rule, Rule::ValidationLadder);
        let plan = next_step(&legacy(renewing), &RULES, NOW);
        assert_eq!(plan.rule, Rule::Backoff);
    }

    #[test]
    fn renewal_time_inside_the_cas_window() {
        let window = |start: OffsetDateTime, retry_after| SuggestedWindow {
            start,
            end: start + Duration::days(2),
            retry_after,
            explanation_url: None,
        };
        let start = NOW + Duration::days(10);
        let hour = Some(Duration::HOUR);
        // The random input decides the point; the window's start and middle.
        let at = |random| choose_renewal_time(window(start, hour), None, NOW, random).renew_at;
        assert_eq!(at(0.0), start);
        assert_eq!(at(0.5), start + Duration::days(1));
        assert!(at(0.999_999) < start + Duration::days(2));
        // The same window as before keeps the point chosen then.
        let first = choose_renewal_time(window(start, hour), None, NOW, 0.25);
        let again = choose_renewal_time(window(start, hour), Some(&first), NOW, 0.9);
        assert_eq!(again.renew_at, first.renew_at);
        // A window that has begun: now.
        let begun = choose_renewal_time(window(NOW - Duration::hours(1), hour), None, NOW, 0.9);
        assert_eq!(begun.renew_at, NOW);
        // The next look follows Retry-After, within a minute and a day.
        for (retry_after, next) in [
            (hour, Duration::HOUR),
            (Some(Duration::seconds(5)), ARI_MIN_CHECK),
            (Some(Duration::days(3)), ARI_MAX_CHECK),
            (None, ARI_MAX_CHECK),
        ] {
            let info = choose_renewal_time(window(start, retry_after), None, NOW, 0.5);
            assert_eq!(info.next_check, NOW + next, "{retry_after:?}");
        }
        assert_eq!(
            renewal_info_unavailable(&first, NOW).next_check,
            NOW + ARI_RETRY
        );
    }
}
