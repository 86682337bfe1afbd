//! Durations and the renewal planner (DESIGN.md §4): spans as operators write them, through
//! `Span::from_str` and the bounds each field has, then a certificate's lifetime, its own and
//! the configured renew-before and maintenance windows, its failures and a CA's renewal window
//! (ARI) through `policy::next_step`, `policy::after_failure` and `policy::standing`.
//!
//! The input is `key = value` lines (see `corpus-seeds/spans_and_plan/`): `lifetime`,
//! `renew-before`, `rules-renew-before` and `*window-duration` are spans; `not-before` is Unix
//! seconds; `now`, `issued`, `failed-at`, `ari-start`, `ari-end` and `ari-checked` are spans
//! after `not-before` (a leading `-`: before it); `window`/`cert-window` are cron expressions
//! with `*-tz`; `failures`, `version`, `ari-retry-after` (seconds) and `ari-random` (0 to
//! 2^32-1) are numbers.
//!
//! Properties, for every lifetime certkeeper issues (1m to 36525d) and every renew-before it
//! accepts (1s to 3650d), seen at a `now` inside the lifetime:
//! - the effective renew-before is DESIGN.md's `min(renew-before, lifetime / 3)` (`/ 2` below
//!   ten days);
//! - certkeeper's own renewal time falls strictly after not-before and before not-after;
//!   without a window it is the nominal time minus a jitter of at most 5% of the effective
//!   renew-before (12 h at most); a window-held one lies inside the window, or no later than
//!   the start of the lifetime's last tenth (or now, or the nominal time, when later);
//! - a planned renewal (any rule: ARI window, floor) falls at or after not-before and before
//!   not-after, never after certkeeper's own time except when the floor holds it back, and a
//!   renewed version never renews before its floor;
//! - a retry comes after the failure, and not past expiry (bar the ten seconds the last
//!   attempts keep apart);
//! - a span that parses prints as text that parses back to it, and a span that does not parse
//!   has a message quoting it.
#![no_main]

use std::collections::HashMap;

use certkeeper::policy::{
    self, AfterFailure, Facts, Failure, Failures, Lifetime, Rule, Rules, Step, SuggestedWindow,
};
use certkeeper::model::FailureKind;
use certkeeper::schedule::{Schedule, Window};
use certkeeper::span::{Span, bounds};
use libfuzzer_sys::fuzz_target;
use time::{Duration, OffsetDateTime};

/// Not-before between 1950 and 2200: with the longest lifetime, still far inside `time`.
const NOT_BEFORE: std::ops::RangeInclusive<i64> = -631_152_000..=7_258_118_400;

/// A span through the product's parser: `Err(())` when the text is given but does not parse
/// (the message is checked here), `Ok(None)` when absent.
fn span(settings: &HashMap<&str, &str>, key: &str) -> Result<Option<Span>, ()> {
    let Some(text) = settings.get(key) else {
        return Ok(None);
    };
    match text.parse::<Span>() {
        Ok(span) => {
            let shown = span.to_string();
            assert_eq!(shown.parse::<Span>(), Ok(span), "{text:?} prints as {shown:?}");
            assert!(span <= Span::MAX);
            Ok(Some(span))
        }
        Err(err) => {
            assert!(err.to_string().contains(&format!("{text:?}")), "{err}");
            Err(())
        }
    }
}

/// `not_before` moved by a span (a leading `-` moves it back); `None` when absent or unparsable.
fn offset(settings: &HashMap<&str, &str>, key: &str, from: OffsetDateTime) -> Option<OffsetDateTime> {
    let text = settings.get(key)?;
    let (back, text) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let by = text.parse::<Span>().ok()?.time();
    Some(if back { from - by } else { from + by })
}

fn number<T: std::str::FromStr>(settings: &HashMap<&str, &str>, key: &str) -> Option<T> {
    settings.get(key)?.parse().ok()
}

/// `prefix`, `prefix-tz` and `prefix-duration` as a window; `Err(())` when given but invalid.
fn window(settings: &HashMap<&str, &str>, prefix: &str) -> Result<Option<Window>, ()> {
    let Some(expr) = settings.get(prefix) else {
        return Ok(None);
    };
    let tz = settings.get(format!("{prefix}-tz").as_str()).copied();
    let schedule = Schedule::parse(expr, tz).map_err(|_| ())?;
    let duration = span(settings, &format!("{prefix}-duration"))?.unwrap_or(Span::from_secs(3600));
    let duration = bounds::WINDOW_DURATION.check(duration).map_err(|_| ())?;
    Ok(Some(Window {
        schedule,
        duration: duration.std(),
    }))
}

/// DESIGN.md §4, written out again as the oracle.
fn design_renew_before(renew_before: Duration, lifetime: Duration) -> Duration {
    let clamp = if lifetime < Duration::days(10) {
        lifetime / 2
    } else {
        lifetime / 3
    };
    renew_before.min(clamp)
}

fn run(text: &str) -> Result<(), ()> {
    let settings = certkeeper_fuzz::settings(text);
    let lifetime_span = bounds::VALIDITY
        .check(span(&settings, "lifetime")?.unwrap_or(Span::from_days(90)))
        .map_err(|_| ())?;
    let checked = |key| -> Result<Option<Duration>, ()> {
        match span(&settings, key)? {
            Some(s) => Ok(Some(bounds::RENEW_BEFORE.check(s).map_err(|_| ())?.time())),
            None => Ok(None),
        }
    };
    let cert_renew_before = checked("renew-before")?;
    let rules_renew_before = checked("rules-renew-before")?.unwrap_or(policy::DEFAULT_RENEW_BEFORE);
    let rules_window = window(&settings, "window")?;
    let cert_window = window(&settings, "cert-window")?;

    let not_before = number::<i64>(&settings, "not-before")
        .map(|s| s.clamp(*NOT_BEFORE.start(), *NOT_BEFORE.end()))
        .map(|s| OffsetDateTime::from_unix_timestamp(s).expect("in range"))
        .unwrap_or(certkeeper_fuzz::NOW - Duration::days(10));
    let lifetime = Lifetime {
        not_before,
        not_after: not_before + lifetime_span.time(),
    };
    let now = offset(&settings, "now", not_before).unwrap_or(not_before + Duration::DAY);
    // A version is issued before it is looked at.
    let issued_at = offset(&settings, "issued", not_before).map(|t| t.min(now));
    let version = number::<u32>(&settings, "version").unwrap_or(2);
    let id = settings.get("id").copied().unwrap_or("ck-fuzz");
    let failures = number::<u32>(&settings, "failures")
        .filter(|n| *n > 0)
        .map(|count| Failures {
            count,
            kind: failure_kind(&settings, "failure-kind"),
            last: offset(&settings, "failed-at", not_before).unwrap_or(now),
            milestone: number(&settings, "milestone"),
        });
    // The CA's window as `renewal_window` hands it on (it refuses one ending before it
    // starts), placed in it when it was last asked (`ari-checked`, during the lifetime).
    let ari = match (
        offset(&settings, "ari-start", not_before),
        offset(&settings, "ari-end", not_before),
    ) {
        (Some(start), Some(end)) if end > start => {
            let checked = offset(&settings, "ari-checked", not_before)
                .unwrap_or(now)
                .clamp(not_before, now.max(not_before));
            let random = f64::from(number::<u32>(&settings, "ari-random").unwrap_or(1 << 31))
                / 4_294_967_296.0;
            let suggested = SuggestedWindow {
                start,
                end,
                retry_after: number::<i64>(&settings, "ari-retry-after").map(Duration::seconds),
                explanation_url: None,
            };
            let info = policy::choose_renewal_time(suggested, None, checked, random);
            if start > checked {
                assert!(start <= info.renew_at && info.renew_at <= end, "{info:?}");
            } else {
                assert_eq!(info.renew_at, checked);
            }
            let wait = info.next_check - checked;
            assert!(policy::ARI_MIN_CHECK <= wait && wait <= policy::ARI_MAX_CHECK);
            Some(info)
        }
        _ => None,
    };

    let facts = Facts {
        id,
        renewed: Ok(()),
        lifetime: Some(lifetime),
        version,
        issued_at,
        validation_deadline: None,
        failures,
        renewal_info: ari.as_ref(),
        renew_before: cert_renew_before,
        window: cert_window.as_ref(),
    };
    let rules = Rules {
        renew_before: rules_renew_before,
        window: rules_window.as_ref(),
    };
    let plan = policy::next_step(&facts, &rules, now);
    let _ = policy::standing(
        lifetime,
        policy::RenewalState {
            next_action_at: plan.at.unwrap_or(now),
            failures: failures.map_or(0, |f| f.count),
        },
        now,
    );
    let failure = Failure {
        at: now,
        kind: failure_kind(&settings, "kind").unwrap_or(FailureKind::Refused),
        retry_not_before: offset(&settings, "retry-not-before", not_before),
    };
    if let AfterFailure::Retry { at, .. } = policy::after_failure(&facts, failure) {
        assert!(at > now, "a retry at {at} does not come after the failure at {now}");
    }

    let (not_before, not_after) = (lifetime.not_before, lifetime.not_after);
    if !(not_before <= now && now < not_after) {
        return Ok(());
    }
    let own = plan.own.expect("a renewed certificate with a version has its own time");
    let length = lifetime.length();
    let renew_before = cert_renew_before.unwrap_or(rules_renew_before);
    let effective = design_renew_before(renew_before, length);
    assert_eq!(own.renew_before, effective, "the clamp of DESIGN.md §4");
    assert!(
        not_before < own.at && own.at < not_after,
        "own renewal at {} outside {not_before}..{not_after}: {plan:?}",
        own.at
    );
    let nominal = not_after - effective;
    let jitter_bound = (effective / 20_i32).min(Duration::hours(12));
    match cert_window.as_ref().or(rules_window.as_ref()) {
        None => assert!(
            nominal - jitter_bound <= own.at && own.at <= nominal,
            "{} is not {nominal} less a jitter of at most {jitter_bound}",
            own.at
        ),
        Some(window) => {
            let urgent_from = not_after - length / policy::URGENT_FRACTION;
            match own.rule {
                Rule::Window => assert!(window.contains(own.at), "held to {} outside the window", own.at),
                // The last tenth: at its start, or now, or at the nominal time if that already
                // lies in it.
                Rule::Urgent => assert!(own.at <= urgent_from.max(now).max(nominal), "{own:?}"),
                _ => assert!(own.at <= nominal),
            }
        }
    }

    match plan.step {
        Step::Renew => {
            let at = plan.at.expect("a renewal has a time");
            assert!(
                not_before <= at && at < not_after,
                "renewal at {at} outside {not_before}..{not_after}: {plan:?}"
            );
            assert!(at <= own.at || plan.rule == Rule::Floor, "{plan:?}");
            let floor = policy::renewal_floor(lifetime, issued_at);
            if version > 1 {
                assert!(at >= floor, "renewed version renews at {at}, before its floor {floor}");
            }
        }
        Step::Retry => {
            let at = plan.at.expect("a retry has a time");
            let last = failures.expect("a retry follows a failure").last;
            assert!(at > last, "retry at {at} not after the failure at {last}");
            if last < not_after {
                let latest = not_after.max(last + Duration::seconds(10));
                assert!(at <= latest, "retry at {at} past expiry {not_after}");
            }
        }
        Step::CheckRenewalInfo => assert!(ari.is_some()),
        Step::Issue | Step::None => panic!("a renewed certificate with a version: {plan:?}"),
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&String::from_utf8_lossy(data));
});

/// A failure kind named by `key` (`awaiting-records`, `transient`, `refused`), if any.
fn failure_kind(settings: &HashMap<&str, &str>, key: &str) -> Option<FailureKind> {
    settings.get(key).and_then(|text| text.parse().ok())
}
