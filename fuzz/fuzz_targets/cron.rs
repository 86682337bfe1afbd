//! Cron schedules (`renewal.window`, `events.daily-check`, a certificate's maintenance
//! window): input lines are the expression, the time zone (empty: UTC), "now" as Unix seconds
//! and the window's duration in seconds, through `Schedule::parse` and the questions the
//! scheduler and `explain` ask of a schedule and a `Window`.
//!
//! Properties: no panic; an error has a message quoting the expression; a schedule keeps the
//! operator's text; `next_after(now)` is an occurrence strictly after `now` with none between
//! (`last_at_or_before` finds it, and finds nothing later than `now` just before it);
//! `last_at_or_before(now)` is at or before `now`; a window is open at each of its starts,
//! `next_open` is `now` inside a window and the next start outside one.
#![no_main]

use std::time::Duration;

use certkeeper::schedule::{Schedule, Window};
use libfuzzer_sys::fuzz_target;
use time::OffsetDateTime;

/// 1900 to 2101: past the crate's last year (2100), so the end of the range is fuzzed too.
const RANGE: std::ops::RangeInclusive<i64> = -2_208_988_800..=4_133_980_800;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let expr = lines.next().unwrap_or_default();
    let tz = lines.next().filter(|l| !l.is_empty());
    let now = lines
        .next()
        .and_then(|l| l.trim().parse::<i64>().ok())
        .map_or(certkeeper_fuzz::NOW, |secs| {
            OffsetDateTime::from_unix_timestamp(secs.clamp(*RANGE.start(), *RANGE.end()))
                .expect("inside time's range")
        });
    let duration = lines
        .next()
        .and_then(|l| l.trim().parse::<u64>().ok())
        .map_or(Duration::from_secs(3600), |s| Duration::from_secs(s.clamp(1, 31 * 86_400)));

    let schedule = match Schedule::parse(expr, tz) {
        Ok(schedule) => schedule,
        Err(err) => {
            let message = err.to_string();
            assert!(message.contains(&format!("{expr:?}")), "{message}");
            return;
        }
    };
    assert_eq!(schedule.as_str(), expr);
    let second = time::Duration::SECOND;
    if let Some(next) = schedule.next_after(now) {
        assert!(next > now, "next_after({now}) = {next}");
        assert_eq!(schedule.last_at_or_before(next), Some(next), "{next} is an occurrence");
        if let Some(before) = schedule.last_at_or_before(next - second) {
            assert!(before <= now, "{before} lies between {now} and next_after = {next}");
        }
    }
    if let Some(last) = schedule.last_at_or_before(now) {
        assert!(last <= now, "last_at_or_before({now}) = {last}");
        if let Some(after) = schedule.next_after(last) {
            assert!(after > last);
        }
    }

    let window = Window {
        schedule: schedule.clone(),
        duration,
    };
    let next = schedule.next_after(now);
    match window.next_open(now) {
        Some(open) if window.contains(now) => assert_eq!(open, now),
        open => {
            assert!(!window.contains(now));
            assert_eq!(open, next, "outside a window the next one opens at the next start");
        }
    }
    if let Some(start) = next {
        assert!(window.contains(start), "a window is open at its start {start}");
    }
});
