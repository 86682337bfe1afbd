//! Cron schedules: when maintenance windows open and when the daily expiry check runs.
//!
//! A [`Schedule`] is a cron expression bound to the time zone whose wall clock it reads (UTC
//! unless configured). A [`Window`] is a schedule plus a duration: renewals and deploys may run
//! from each occurrence until the duration has elapsed. Everything here is pure: `now` is always
//! passed in, so the scheduler and `certkeeper explain` get the same answers and tests use plain
//! tables of instants.
//!
//! # Syntax
//! - **5 fields, crontab** (`m h dom mon dow`, what operators write): translated to the `cron`
//!   crate's form by prepending a seconds field `0` and renumbering day-of-week. Crontab counts
//!   0-7 with 0 and 7 = Sunday, 1 = Monday; the crate counts 1-7 with **1 = Sunday** (Quartz),
//!   and rejects 0. Numbers, ranges (`1-5`), lists (`1,3,5`) and steps (`*/2`, `1-5/2`) are
//!   expanded and renumbered, so crontab `1-5` is Monday to Friday and `5-7` is Friday to Sunday.
//!   Names (`MON`, `tue`, ...) mean the same in both and pass through unchanged. `N/step`
//!   without a range is rejected: crontab has no such form and its meaning would be a guess.
//! - **Shortcuts**: `@yearly` (`@annually`), `@monthly`, `@weekly` (Sunday 00:00), `@daily`
//!   (`@midnight`), `@hourly`, as in crontab.
//! - **6 or 7 fields** (seconds first, optional year 1970-2100): passed to the crate unchanged,
//!   with the crate's own rules: day-of-week 1 = Sunday, `?` means `*`.
//!
//! # Day-of-month and day-of-week both restricted
//! Crontab (Vixie cron) runs such a job on days matching *either* field (`0 3 1 * 1`: the 1st of
//! the month and every Monday); the `cron` crate runs it on days matching *both*. An operator
//! copying a crontab line would silently get a different schedule, so certkeeper rejects a
//! 5-field expression in which neither field is `*` (or `?`). The 6/7-field form keeps the
//! crate's AND, which is its documented meaning.
//!
//! # Time zones and daylight saving time
//! The fields describe wall-clock times in the schedule's zone. A wall-clock time `L` that
//! matches the fields is **due at the first instant at which the zone's clock shows `L` or
//! later**. That one rule settles both DST edges the way an operator watching the clock expects:
//! - spring forward (Europe/Berlin, 2026-03-29, 02:00 -> 03:00): a 02:30 job, whose time never
//!   appears, runs once at 03:00 CEST, the first instant after the gap. The `cron` crate alone
//!   would skip that day, which for a daily check or a maintenance window means a lost day.
//!   Several matches inside one gap (`*/15`) collapse into that single run.
//! - fall back (2026-10-25, 03:00 -> 02:00): a 02:30 job runs once, at 02:30 CEST, the first
//!   time the clock shows 02:30. The crate alone would run it twice. Jobs that run more often
//!   than the repeated hour lasts also skip its second pass (an hourly job runs at 02:00 CEST and
//!   next at 03:00 CET, two hours later); write such schedules in UTC if that matters.
//!
//! The crate is therefore only ever asked about wall-clock times, tagged UTC because it wants a
//! zone (every wall-clock time then exists exactly once), and the mapping to instants happens
//! here. Window durations are elapsed time, not wall-clock time.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, MappedLocalTime, NaiveDateTime, TimeDelta, TimeZone, Utc};
use chrono_tz::{GapInfo, Tz};
use time::OffsetDateTime;

/// A cron expression and the time zone whose wall clock it reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// The expression in the crate's 6/7-field form (crontab input already translated),
    /// evaluated only over wall-clock times (see the module comment).
    cron: cron::Schedule,
    /// The text as the operator wrote it: error messages and `explain` must quote what the
    /// operator wrote, not our translation.
    text: String,
    /// The zone whose wall clock the fields describe; UTC unless configured.
    tz: Tz,
}

/// A maintenance window: open from each occurrence of `schedule` for `duration` (elapsed time).
/// Windows may overlap (a duration longer than the schedule's period keeps the window open).
/// A zero duration is never open; config rejects it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window {
    pub schedule: Schedule,
    pub duration: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error(
        "invalid cron expression {expr:?}: expected 5 fields (crontab) or 6-7 (with seconds), got {got}"
    )]
    FieldCount { expr: String, got: usize },
    #[error(
        "invalid cron expression {expr:?}: day-of-month {day_of_month:?} and day-of-week \
         {day_of_week:?} are both restricted; crontab would run on days matching either, \
         certkeeper refuses to guess: restrict only one of them (or use the 6-field form, where \
         a day must match both)"
    )]
    BothDaysRestricted {
        expr: String,
        day_of_month: String,
        day_of_week: String,
    },
    /// A field is malformed or out of range; `reason` is ours or the `cron` crate's text.
    #[error("invalid cron expression {expr:?}: {reason}")]
    Invalid { expr: String, reason: String },
    #[error(
        "unknown time zone {zone:?} for cron expression {expr:?} (expected an IANA name such as \"Europe/Berlin\")"
    )]
    UnknownTimeZone { expr: String, zone: String },
}

/// How far back `last_at_or_before` looks (wall-clock time): enough for any schedule without
/// a year field (the longest gap, Feb 29 across a leap year, is 4 years within the crate's
/// 1970-2100).
const LOOKBACK: TimeDelta = TimeDelta::days(8 * 366);

impl Schedule {
    /// Parses standard 5-field crontab syntax ("m h dom mon dow"), a shortcut (`@daily`) or the
    /// cron crate's 6/7-field form (seconds first, optional year). `tz` is an IANA name
    /// ("Europe/Berlin") or None for UTC.
    pub fn parse(expr: &str, tz: Option<&str>) -> Result<Self, ScheduleError> {
        let translated = to_quartz(expr)?;
        let cron = cron::Schedule::try_from(translated.quartz.as_str()).map_err(|e| {
            ScheduleError::Invalid {
                expr: expr.to_owned(),
                reason: translated.explain(expr, &e),
            }
        })?;
        // The crate accepts expressions no date satisfies (February 30): a window that never
        // opens should fail at startup, not wait silently.
        if let Some(epoch) = DateTime::from_timestamp(-1, 0)
            && cron.after(&epoch).next().is_none()
        {
            return Err(ScheduleError::Invalid {
                expr: expr.to_owned(),
                reason: "no date matches it (e.g. February 30)".into(),
            });
        }
        let tz = match tz {
            None => Tz::UTC,
            Some(zone) => zone
                .parse::<Tz>()
                .map_err(|_| ScheduleError::UnknownTimeZone {
                    expr: expr.to_owned(),
                    zone: zone.to_owned(),
                })?,
        };
        Ok(Self {
            cron,
            text: expr.to_owned(),
            tz,
        })
    }

    /// The first occurrence strictly after `now`, in UTC. None past the crate's last year (2100).
    pub fn next_after(&self, now: OffsetDateTime) -> Option<OffsetDateTime> {
        let now = to_chrono(now)?;
        // Every wall-clock time up to the one the clock shows now was due at or before now
        // (`due_at` never decreases as the wall clock advances, and the current reading was due
        // by now at the latest), so the search starts there. Only in the second pass of a
        // repeated hour does it meet matches that were already due; it steps over them.
        self.matches_after(self.wall_clock(now))
            .filter_map(|wall| self.due_at(wall))
            .find(|&due| due > now)
            .and_then(to_time)
    }

    /// The most recent occurrence at or before `now`, in UTC, looking back at most 8 years.
    pub fn last_at_or_before(&self, now: OffsetDateTime) -> Option<OffsetDateTime> {
        let now = to_chrono(now)?;
        let wall_now = self.wall_clock(now);
        let earliest = wall_now.checked_sub_signed(LOOKBACK)?;
        // In the second pass of a repeated hour, later readings of the clock were already due:
        // the latest of those (at most the hour's matches) is the one.
        let later = self
            .matches_after(wall_now)
            .filter_map(|wall| self.due_at(wall))
            .take_while(|&due| due <= now)
            .last();
        // Otherwise the latest match the clock has shown, which was due by now (`due_at` never
        // decreases as the wall clock advances, and the current reading was due by now at the
        // latest). The crate finds it going back field by field; scanning forward from a point
        // far enough back would visit every match in between (a schedule matching every second
        // of January took 13 s to answer in December).
        later
            .or_else(|| {
                self.matches_up_to(wall_now)
                    .take_while(|&wall| wall >= earliest)
                    .find_map(|wall| self.due_at(wall))
            })
            .and_then(to_time)
    }

    /// The text as the operator wrote it.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The IANA name of the zone the fields are read in ("UTC" by default).
    pub fn time_zone(&self) -> &'static str {
        self.tz.name()
    }

    /// What the zone's clock shows at `t`.
    fn wall_clock(&self, t: DateTime<Utc>) -> NaiveDateTime {
        t.with_timezone(&self.tz).naive_local()
    }

    /// Wall-clock times matching the fields, strictly after `wall`, in order.
    fn matches_after(&self, wall: NaiveDateTime) -> impl Iterator<Item = NaiveDateTime> + '_ {
        self.cron.after(&wall.and_utc()).map(|t| t.naive_utc())
    }

    /// Wall-clock times matching the fields, at or before `wall`, latest first.
    fn matches_up_to(&self, wall: NaiveDateTime) -> impl Iterator<Item = NaiveDateTime> + '_ {
        // Going back, the crate starts strictly before the whole second it is given.
        let from = wall + TimeDelta::nanoseconds(1);
        self.cron
            .after(&from.and_utc())
            .rev()
            .map(|t| t.naive_utc())
    }

    /// The instant a matching wall-clock time comes due: the first instant at which the zone's
    /// clock shows `wall` or later. None only if the time zone data cannot place a gap's end.
    fn due_at(&self, wall: NaiveDateTime) -> Option<DateTime<Utc>> {
        match self.tz.from_local_datetime(&wall) {
            MappedLocalTime::Single(t) => Some(t.with_timezone(&Utc)),
            // Shown twice (fall back): the first time is when the clock reached it.
            MappedLocalTime::Ambiguous(earlier, _) => Some(earlier.with_timezone(&Utc)),
            // Never shown (spring forward): the clock passes it at the end of the gap.
            MappedLocalTime::None => GapInfo::new(&wall, &self.tz)?
                .end
                .map(|t| t.with_timezone(&Utc)),
        }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Window {
    /// Is `now` inside a window: did an occurrence at or before `now` start less than
    /// `duration` ago? The start instant is inside, start + duration is not.
    pub fn contains(&self, now: OffsetDateTime) -> bool {
        // The latest start is enough: every window lasts equally long, so it ends last.
        let Some(start) = self.schedule.last_at_or_before(now) else {
            return false;
        };
        let end = time::Duration::try_from(self.duration)
            .ok()
            .and_then(|d| start.checked_add(d));
        // An end beyond what `time` can represent is never reached.
        end.is_none_or(|end| now < end)
    }

    /// `now` if inside a window, else the start of the next one.
    pub fn next_open(&self, now: OffsetDateTime) -> Option<OffsetDateTime> {
        if self.contains(now) {
            return Some(now);
        }
        self.schedule.next_after(now)
    }
}

/// An expression in the crate's 6/7-field form, and how it relates to the operator's text.
struct Translated {
    /// Fields joined by single spaces (so a column maps back to a field).
    quartz: String,
    /// Whether we prepended the seconds field (crontab input): the operator's field `i` is our
    /// field `i + 1`.
    seconds_added: bool,
}

/// Turns any accepted syntax into the crate's 6/7-field form.
fn to_quartz(expr: &str) -> Result<Translated, ScheduleError> {
    let fields: Vec<&str> = expr.split_whitespace().collect();
    let translated = |quartz: String, seconds_added| Translated {
        quartz,
        seconds_added,
    };
    match fields[..] {
        [shortcut] if shortcut.starts_with('@') => match expand_shortcut(shortcut) {
            Some(expanded) => Ok(translated(expanded.to_owned(), false)),
            None => Err(ScheduleError::Invalid {
                expr: expr.to_owned(),
                reason: format!(
                    "unknown shortcut {shortcut:?} (expected @yearly, @annually, @monthly, \
                     @weekly, @daily, @midnight or @hourly)"
                ),
            }),
        },
        [minute, hour, day_of_month, month, day_of_week] => {
            if restricted(day_of_month) && restricted(day_of_week) {
                return Err(ScheduleError::BothDaysRestricted {
                    expr: expr.to_owned(),
                    day_of_month: day_of_month.to_owned(),
                    day_of_week: day_of_week.to_owned(),
                });
            }
            let day_of_week =
                crontab_day_of_week(day_of_week).map_err(|reason| ScheduleError::Invalid {
                    expr: expr.to_owned(),
                    reason: reason.to_string(),
                })?;
            let text = format!("0 {minute} {hour} {day_of_month} {month} {day_of_week}");
            Ok(translated(text, true))
        }
        [_, _, _, _, _, _] | [_, _, _, _, _, _, _] => Ok(translated(fields.join(" "), false)),
        _ => Err(ScheduleError::FieldCount {
            expr: expr.to_owned(),
            got: fields.len(),
        }),
    }
}

/// The crate's fields in order: name, and what is allowed (the crate's own range messages say
/// "less than 59" where 59 is allowed, so we state the range ourselves).
const FIELDS: [(&str, &str); 7] = [
    ("second", "0-59"),
    ("minute", "0-59"),
    ("hour", "0-23"),
    ("day-of-month", "1-31"),
    ("month", "1-12 or JAN-DEC"),
    ("day-of-week", "1-7 or SUN-SAT, 1 = Sunday"),
    ("year", "1970-2100"),
];

impl Translated {
    /// Restates a crate parse error in the operator's terms. The crate's message is the
    /// expression it parsed (our translation), a line with a caret under the failing field, then
    /// the reason (sometimes empty): we name the field and quote the operator's own text of it.
    fn explain(&self, expr: &str, e: &cron::error::Error) -> String {
        let text = e.to_string();
        let mut lines = text.lines().skip(1);
        let Some(column) = lines.next().and_then(|caret| caret.find('^')) else {
            return text.split_whitespace().collect::<Vec<_>>().join(" ");
        };
        let message = lines.collect::<Vec<_>>().join(" ");
        let index = self.quartz[..column.min(self.quartz.len())]
            .matches(' ')
            .count();
        let Some(&(name, allowed)) = FIELDS.get(index) else {
            return message;
        };
        let allowed = match (name, self.seconds_added) {
            ("day-of-week", true) => "0-7 or SUN-SAT, 0 and 7 = Sunday",
            _ => allowed,
        };
        let theirs = index.checked_sub(usize::from(self.seconds_added));
        let field = theirs
            .and_then(|i| expr.split_whitespace().nth(i))
            .unwrap_or("");
        let message = message.trim();
        if message.is_empty() {
            format!("{name} field {field:?} is invalid (allowed: {allowed})")
        } else {
            format!("{name} field {field:?} is invalid (allowed: {allowed}): {message}")
        }
    }
}

/// Crontab's shortcuts in the crate's form (the crate's own `@weekly` agrees, Sunday 00:00,
/// but spelling them out keeps the meaning visible here).
fn expand_shortcut(shortcut: &str) -> Option<&'static str> {
    let expanded = match shortcut.to_ascii_lowercase().as_str() {
        "@yearly" | "@annually" => "0 0 0 1 1 *",
        "@monthly" => "0 0 0 1 * *",
        "@weekly" => "0 0 0 * * SUN",
        "@daily" | "@midnight" => "0 0 0 * * *",
        "@hourly" => "0 0 * * * *",
        _ => return None,
    };
    Some(expanded)
}

/// Whether a crontab day field narrows the days (`*` and `?` do not).
fn restricted(field: &str) -> bool {
    !matches!(field, "*" | "?")
}

/// Renumbers a crontab day-of-week field (0-7, 0 and 7 = Sunday) for the crate (1-7, 1 =
/// Sunday). Numeric items are expanded to the days they name; named items pass through.
fn crontab_day_of_week(field: &str) -> Result<String, DayOfWeekError> {
    if !restricted(field) {
        return Ok(field.to_owned());
    }
    let mut items = Vec::new();
    for item in field.split(',') {
        if item.bytes().any(|b| b.is_ascii_alphabetic()) {
            items.push(item.to_owned());
            continue;
        }
        let days = crontab_days(item).map_err(|why| DayOfWeekError {
            item: item.to_owned(),
            why,
        })?;
        // The crate numbers from Sunday = 1.
        items.extend(days.map(|day| (day % 7 + 1).to_string()));
    }
    Ok(items.join(","))
}

/// A crontab day-of-week item that does not name days.
#[derive(Debug, thiserror::Error)]
#[error("day-of-week {item:?}: {why} (crontab days are 0-7, 0 and 7 = Sunday)")]
struct DayOfWeekError {
    item: String,
    why: &'static str,
}

/// The crontab day numbers one numeric list item names: `3`, `1-5`, `*/2` or `1-5/2`.
fn crontab_days(item: &str) -> Result<impl Iterator<Item = u32>, &'static str> {
    let (range, step) = match item.split_once('/') {
        Some((range, step)) => (range, Some(step.parse::<usize>().map_err(|_| "bad step")?)),
        None => (item, None),
    };
    let (first, last) = match range.split_once('-') {
        // 0-6, not 0-7: `*/n` then names the same days either way, and Sunday only once.
        None if range == "*" => (0, 6),
        None if step.is_some() => return Err("a step needs a range, e.g. 1-5/2 or */2"),
        None => (day_number(range)?, day_number(range)?),
        Some((first, last)) => (day_number(first)?, day_number(last)?),
    };
    if first > last {
        return Err("a range must run forwards, e.g. 5-7 for Friday to Sunday");
    }
    let step = step.unwrap_or(1);
    if step == 0 {
        return Err("a step must be at least 1");
    }
    Ok((first..=last).step_by(step))
}

fn day_number(text: &str) -> Result<u32, &'static str> {
    match text.parse::<u32>() {
        Ok(day) if day <= 7 => Ok(day),
        _ => Err("not a day number"),
    }
}

fn to_chrono(t: OffsetDateTime) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.unix_timestamp(), t.nanosecond())
}

fn to_time(t: DateTime<Utc>) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp(t.timestamp())
        .ok()?
        .replace_nanosecond(t.timestamp_subsec_nanos())
        .ok()
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use time::Weekday;
    use time::format_description::well_known::Rfc3339;

    use super::*;

    /// An instant: RFC 3339, or "2026-11-23 09:00[:SS[.f]]" in UTC.
    fn at(text: &str) -> OffsetDateTime {
        let mut rfc3339 = text.replace(' ', "T");
        if !text.contains('T') {
            if text.len() == 16 {
                rfc3339.push_str(":00");
            }
            rfc3339.push('Z');
        }
        OffsetDateTime::parse(&rfc3339, &Rfc3339).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn schedule(expr: &str, tz: Option<&str>) -> Schedule {
        Schedule::parse(expr, tz).unwrap_or_else(|e| panic!("{expr}: {e}"))
    }

    const BERLIN: Option<&str> = Some("Europe/Berlin");

    /// Occurrences from `from` (exclusive) up to `until` (exclusive).
    fn occurrences(s: &Schedule, from: &str, until: &str) -> Vec<OffsetDateTime> {
        let until = at(until);
        std::iter::successors(s.next_after(at(from)), |&t| s.next_after(t))
            .take_while(|&t| t < until)
            .collect()
    }

    /// Checks `(expression, now, expected)` rows of one search in one zone.
    fn check(
        tz: Option<&str>,
        search: fn(&Schedule, OffsetDateTime) -> Option<OffsetDateTime>,
        rows: &[(&str, &str, &str)],
    ) {
        for &(expr, now, want) in rows {
            let got = search(&schedule(expr, tz), at(now));
            assert_eq!(got, Some(at(want)), "{expr} ({tz:?}) from {now}");
            assert_eq!(got.map(|t| t.offset()), Some(time::UtcOffset::UTC));
        }
    }

    #[test]
    fn next_after_table() {
        #[rustfmt::skip]
        let rows = [
            // The default daily check.
            ("0 9 * * *", "2026-11-22 10:00", "2026-11-23 09:00"),
            ("0 9 * * *", "2026-11-23 08:59:59.999", "2026-11-23 09:00"),
            // Strictly after: an occurrence at `now` is not the next one.
            ("0 9 * * *", "2026-11-23 09:00", "2026-11-24 09:00"),
            // `now` in another offset is an instant like any other.
            ("0 9 * * *", "2026-11-23T10:30:00+02:00", "2026-11-23 09:00"),
            // Monday to Friday, from a Saturday and from a Friday after the run.
            ("0 3 * * 1-5", "2026-11-28 12:00", "2026-11-30 03:00"),
            ("0 3 * * 1-5", "2026-11-27 04:00", "2026-11-30 03:00"),
            // 0 and 7 are both Sunday.
            ("0 3 * * 0", "2026-11-28 12:00", "2026-11-29 03:00"),
            ("0 3 * * 7", "2026-11-28 12:00", "2026-11-29 03:00"),
            ("0 3 * * SUN", "2026-11-28 12:00", "2026-11-29 03:00"),
            ("*/15 * * * *", "2026-11-22 10:07:30", "2026-11-22 10:15"),
            ("*/15 * * * *", "2026-11-22 10:45", "2026-11-22 11:00"),
            ("*/15 * * * *", "2026-12-31 23:59", "2027-01-01 00:00"),
            // Shortcuts; 2026-11-24 is a Tuesday, @weekly is Sunday 00:00.
            ("@weekly", "2026-11-24 00:00", "2026-11-29 00:00"),
            ("@daily", "2026-11-24 00:00", "2026-11-25 00:00"),
            ("@midnight", "2026-11-24 00:00", "2026-11-25 00:00"),
            ("@hourly", "2026-11-24 00:00:01", "2026-11-24 01:00"),
            ("@monthly", "2026-11-24 00:00", "2026-12-01 00:00"),
            ("@yearly", "2026-11-24 00:00", "2027-01-01 00:00"),
            ("@annually", "2026-11-24 00:00", "2027-01-01 00:00"),
            // Day 31 skips the months without one; Feb 29 waits for a leap year.
            ("0 0 31 * *", "2026-11-01 00:00", "2026-12-31 00:00"),
            ("0 0 29 2 *", "2026-11-22 00:00", "2028-02-29 00:00"),
            // 6 fields: seconds first, the crate's day numbers (2 = Monday).
            ("0 0 9 * * *", "2026-11-22 10:00", "2026-11-23 09:00"),
            ("30 0 9 * * *", "2026-11-22 10:00", "2026-11-23 09:00:30"),
            ("0 0 3 * * 2", "2026-11-28 12:00", "2026-11-30 03:00"),
            // 6 fields, both day fields: a day must match both; 2026-06-01 is a Monday.
            ("0 0 3 1 * MON", "2026-05-02 00:00", "2026-06-01 03:00"),
            // 7 fields: the year.
            ("0 0 9 1 1 * 2028", "2026-11-22 00:00", "2028-01-01 09:00"),
        ];
        check(None, Schedule::next_after, &rows);
        // Nothing after the last year.
        assert_eq!(
            schedule("0 0 9 1 1 * 2028", None).next_after(at("2028-01-01 09:00")),
            None
        );

        #[rustfmt::skip]
        let rows = [
            // 09:00 in Berlin is 08:00Z in winter and 07:00Z in summer.
            ("0 9 * * *", "2026-11-22 10:00", "2026-11-23 08:00"),
            ("0 9 * * *", "2026-07-01 10:00", "2026-07-02 07:00"),
            // Days of the week are the zone's: Monday 00:30 in Berlin is Sunday 23:30Z.
            ("30 0 * * 1", "2026-11-28 00:00", "2026-11-29 23:30"),
        ];
        check(BERLIN, Schedule::next_after, &rows);
    }

    #[test]
    fn last_at_or_before_table() {
        #[rustfmt::skip]
        let rows = [
            // At or before: an occurrence at `now` is the answer.
            ("0 9 * * *", "2026-11-23 09:00", "2026-11-23 09:00"),
            ("0 9 * * *", "2026-11-23 09:00:00.5", "2026-11-23 09:00"),
            ("0 9 * * *", "2026-11-23 08:59:59", "2026-11-22 09:00"),
            ("0 9 * * *", "2026-11-23 23:00", "2026-11-23 09:00"),
            ("* * * * * *", "2026-11-23 08:30:00.25", "2026-11-23 08:30"),
            ("*/15 * * * *", "2026-11-23 08:29", "2026-11-23 08:15"),
            ("0 3 * * 1-5", "2026-11-29 12:00", "2026-11-27 03:00"),
            ("@weekly", "2026-11-28 23:59:59", "2026-11-22 00:00"),
            ("@monthly", "2026-03-15 00:00", "2026-03-01 00:00"),
            // Yearly: months back, and across a year boundary.
            ("@yearly", "2026-11-22 00:00", "2026-01-01 00:00"),
            ("@yearly", "2026-01-01 00:00", "2026-01-01 00:00"),
            ("@yearly", "2025-12-31 23:59:59", "2025-01-01 00:00"),
            ("0 0 1 12 *", "2026-11-22 00:00", "2025-12-01 00:00"),
            ("0 0 29 2 *", "2026-11-22 00:00", "2024-02-29 00:00"),
            // A year field, within the 8 years searched.
            ("0 0 0 1 1 * 2020", "2026-11-22 00:00", "2020-01-01 00:00"),
        ];
        check(None, Schedule::last_at_or_before, &rows);
        check(
            BERLIN,
            Schedule::last_at_or_before,
            &[("0 9 * * *", "2026-11-23 08:30", "2026-11-23 08:00")],
        );
        // Beyond 8 years, or only in the future: none.
        for expr in ["0 0 0 1 1 * 2010", "0 0 0 1 1 * 2028"] {
            assert_eq!(
                schedule(expr, None).last_at_or_before(at("2026-11-22 00:00")),
                None
            );
        }
    }

    /// Found by the `cron` fuzz target: asked in December, a schedule matching every second
    /// of January visited all 2.6 million of January's matches to find the last one (13 s in a
    /// debug build), and the planner asks that of a certificate's window at every plan. The
    /// second expression is the fuzzer's own input (its month field `1-` is read as January).
    #[test]
    fn the_last_occurrence_of_a_dense_schedule_is_found_at_once() {
        for expr in ["* * * * 1 *", "* 2/1 * * 1- 1*,5"] {
            let s = schedule(expr, None);
            let started = std::time::Instant::now();
            let last = s.last_at_or_before(at("2026-12-31 12:00"));
            let took = started.elapsed();
            assert_eq!(last, Some(at("2026-01-31 23:59:59")), "{expr}");
            assert!(took < Duration::from_secs(1), "{expr}: {took:?}");
        }
    }

    #[test]
    fn crontab_day_of_week_numbers_name_the_right_days() {
        use Weekday::*;
        const ALL: &[Weekday] = &[
            Sunday, Monday, Tuesday, Wednesday, Thursday, Friday, Saturday,
        ];
        #[rustfmt::skip]
        let cases: &[(&str, &[Weekday])] = &[
            ("*", ALL),
            ("?", ALL),
            ("0", &[Sunday]),
            ("7", &[Sunday]),
            ("0,7", &[Sunday]),
            ("1", &[Monday]),
            ("6", &[Saturday]),
            ("1-5", &[Monday, Tuesday, Wednesday, Thursday, Friday]),
            ("5-7", &[Sunday, Friday, Saturday]),
            ("0-6", ALL),
            ("1-7", ALL),
            ("1,3,5", &[Monday, Wednesday, Friday]),
            ("6,0", &[Sunday, Saturday]),
            ("*/2", &[Sunday, Tuesday, Thursday, Saturday]),
            ("*/3", &[Sunday, Wednesday, Saturday]),
            ("1-5/2", &[Monday, Wednesday, Friday]),
            ("0-7/7", &[Sunday]),
            // Names pass through, alone or mixed with numbers.
            ("MON-FRI", &[Monday, Tuesday, Wednesday, Thursday, Friday]),
            ("sat,Sun", &[Sunday, Saturday]),
            ("mon,3", &[Monday, Wednesday]),
        ];
        for &(field, want) in cases {
            let expr = format!("0 3 * * {field}");
            // One week, from Sunday 2026-11-22.
            let s = schedule(&expr, None);
            let days: Vec<Weekday> = occurrences(&s, "2026-11-21 12:00", "2026-11-28 12:00")
                .iter()
                .map(|t| t.weekday())
                .collect();
            assert_eq!(days, want, "{expr}");
        }
        // The shortcut and its crontab spelling agree.
        let weekly = schedule("@weekly", None);
        let spelled = schedule("0 0 * * 0", None);
        let from = "2026-11-01 00:00";
        let until = "2027-01-01 00:00";
        assert_eq!(
            occurrences(&weekly, from, until),
            occurrences(&spelled, from, until)
        );
    }

    /// What the `cron` crate itself does, pinned so a version bump that changes it fails here
    /// rather than in production: Quartz day numbers, and DST gaps skipped, folds run twice.
    #[test]
    fn cron_crate_behaviour_we_correct_for() {
        use chrono::Datelike;
        let saturday = Utc.with_ymd_and_hms(2026, 11, 28, 12, 0, 0).unwrap();
        let next_day = |expr: &str| {
            let s = cron::Schedule::from_str(expr).unwrap();
            s.after(&saturday).next().unwrap().weekday()
        };
        assert_eq!(next_day("0 0 3 * * 1"), chrono::Weekday::Sun);
        assert_eq!(next_day("0 0 3 * * 2"), chrono::Weekday::Mon);
        assert_eq!(next_day("0 0 3 * * 7"), chrono::Weekday::Sat);
        assert!(cron::Schedule::from_str("0 0 3 * * 0").is_err());
        assert!(
            cron::Schedule::from_str("0 3 * * *").is_err(),
            "no 5-field form"
        );

        let berlin = chrono_tz::Europe::Berlin;
        let s = cron::Schedule::from_str("0 30 2 * * *").unwrap();
        let utc = |t: DateTime<Tz>| t.with_timezone(&Utc).to_rfc3339();
        let spring: Vec<_> = s
            .after(&berlin.with_ymd_and_hms(2026, 3, 28, 12, 0, 0).unwrap())
            .take(1)
            .map(utc)
            .collect();
        assert_eq!(spring, ["2026-03-30T00:30:00+00:00"], "skips 2026-03-29");
        let autumn: Vec<_> = s
            .after(&berlin.with_ymd_and_hms(2026, 10, 24, 12, 0, 0).unwrap())
            .take(2)
            .map(utc)
            .collect();
        assert_eq!(
            autumn,
            ["2026-10-25T00:30:00+00:00", "2026-10-25T01:30:00+00:00"],
            "runs twice on 2026-10-25"
        );
    }

    #[test]
    fn spring_forward_runs_skipped_times_once_at_the_end_of_the_gap() {
        // Europe/Berlin, 2026-03-29: at 01:00Z the clock jumps from 02:00 CET to 03:00 CEST.
        let cases: &[(&str, &str, &str, &[&str])] = &[
            // The day before, the day itself (at 03:00 CEST), the day after (CEST).
            (
                "30 2 * * *",
                "2026-03-27 12:00",
                "2026-03-31 00:00",
                &["2026-03-28 01:30", "2026-03-29 01:00", "2026-03-30 00:30"],
            ),
            // 02:00 itself never shows either.
            (
                "0 2 * * *",
                "2026-03-28 12:00",
                "2026-03-29 12:00",
                &["2026-03-29 01:00"],
            ),
            // 03:00 is shown: it runs at 03:00 CEST, once.
            (
                "0 3 * * *",
                "2026-03-28 12:00",
                "2026-03-29 12:00",
                &["2026-03-29 01:00"],
            ),
            // 02:00, 02:15, 02:30, 02:45 and 03:00 all fall due at 03:00 CEST: one run.
            (
                "*/15 * * * *",
                "2026-03-29 00:40",
                "2026-03-29 01:20",
                &["2026-03-29 00:45", "2026-03-29 01:00", "2026-03-29 01:15"],
            ),
            // A job in the gap on one day of the week only.
            (
                "30 2 * * 0",
                "2026-03-22 12:00",
                "2026-04-06 00:00",
                &["2026-03-29 01:00", "2026-04-05 00:30"],
            ),
        ];
        for &(expr, from, until, want) in cases {
            let got = occurrences(&schedule(expr, BERLIN), from, until);
            let want: Vec<_> = want.iter().map(|t| at(t)).collect();
            assert_eq!(got, want, "{expr}");
        }
        let s = schedule("30 2 * * *", BERLIN);
        assert_eq!(
            s.last_at_or_before(at("2026-03-29 05:00")),
            Some(at("2026-03-29 01:00"))
        );
        assert_eq!(
            s.last_at_or_before(at("2026-03-29 00:59:59")),
            Some(at("2026-03-28 01:30"))
        );
    }

    #[test]
    fn fall_back_runs_repeated_times_once() {
        // Europe/Berlin, 2026-10-25: at 01:00Z the clock goes back from 03:00 CEST to 02:00 CET.
        let cases: &[(&str, &str, &str, &[&str])] = &[
            // 02:30 CEST (00:30Z) only, not 02:30 CET (01:30Z) as well.
            (
                "30 2 * * *",
                "2026-10-24 12:00",
                "2026-10-27 00:00",
                &["2026-10-25 00:30", "2026-10-26 01:30"],
            ),
            // Hourly: 02:00 CEST, then 03:00 CET; the second 02:00 does not run.
            (
                "0 * * * *",
                "2026-10-24 23:30",
                "2026-10-25 03:30",
                &["2026-10-25 00:00", "2026-10-25 02:00", "2026-10-25 03:00"],
            ),
        ];
        for &(expr, from, until, want) in cases {
            let got = occurrences(&schedule(expr, BERLIN), from, until);
            let want: Vec<_> = want.iter().map(|t| at(t)).collect();
            assert_eq!(got, want, "{expr}");
        }
        // Asked during the second 02:xx, the 02:30 job has run today already.
        let s = schedule("30 2 * * *", BERLIN);
        assert_eq!(
            s.next_after(at("2026-10-25 01:15")),
            Some(at("2026-10-26 01:30"))
        );
        assert_eq!(
            s.next_after(at("2026-10-25 00:15")),
            Some(at("2026-10-25 00:30"))
        );
        assert_eq!(
            s.last_at_or_before(at("2026-10-25 01:45")),
            Some(at("2026-10-25 00:30"))
        );
        // ... and at 02:10 CET the latest quarter-hour was 02:45 CEST, later on the wall clock.
        let quarters = schedule("*/15 * * * *", BERLIN);
        assert_eq!(
            quarters.last_at_or_before(at("2026-10-25 01:10")),
            Some(at("2026-10-25 00:45"))
        );
        assert_eq!(
            quarters.next_after(at("2026-10-25 01:10")),
            Some(at("2026-10-25 02:00"))
        );
    }

    #[test]
    fn other_zones_and_odd_transitions() {
        // Lord Howe Island moves its clock by half an hour: 02:00 -> 02:30 at 15:30Z.
        let s = schedule("15 2 * * *", Some("Australia/Lord_Howe"));
        assert_eq!(
            s.next_after(at("2026-10-03 00:00")),
            Some(at("2026-10-03 15:30"))
        );
        // Samoa skipped 2011-12-30 entirely: the 09:00 job ran when the clock showed
        // 2011-12-31 00:00 (+14), then again at 09:00 that day.
        let s = schedule("0 9 * * *", Some("Pacific/Apia"));
        assert_eq!(
            occurrences(&s, "2011-12-29 20:00", "2011-12-31 00:00"),
            [at("2011-12-30 10:00"), at("2011-12-30 19:00")]
        );
        // New York: 09:00 EST is 14:00Z.
        let s = schedule("0 9 * * *", Some("America/New_York"));
        assert_eq!(
            s.next_after(at("2026-11-22 00:00")),
            Some(at("2026-11-22 14:00"))
        );
        // Naming UTC is the same as naming nothing.
        assert_eq!(
            schedule("0 9 * * *", Some("UTC")).next_after(at("2026-11-22 10:00")),
            schedule("0 9 * * *", None).next_after(at("2026-11-22 10:00")),
        );
    }

    /// The two searches agree everywhere, DST days included: the latest occurrence at or before
    /// `now` is followed directly by the first one after `now`, and a zone's wall clock never
    /// shows the same matching time twice.
    #[test]
    fn backward_and_forward_searches_agree() {
        let schedules = [
            ("0 9 * * *", None),
            ("*/15 * * * *", None),
            ("0 3 * * 1-5", None),
            ("@yearly", None),
            ("*/15 * * * *", BERLIN),
            ("30 2 * * *", BERLIN),
            ("0 * * * *", BERLIN),
            ("0 2 * * 0", BERLIN),
            ("*/20 * * * *", Some("Australia/Lord_Howe")),
        ];
        let starts = [
            "2026-03-28 20:00",
            "2026-10-24 20:00",
            "2026-04-04 10:00",
            "2026-10-03 10:00",
        ];
        for (expr, tz) in schedules {
            let s = schedule(expr, tz);
            for start in starts {
                let start = at(start);
                // Every 7 minutes 13 seconds for 12 hours.
                for step in 0..100 {
                    let now = start + time::Duration::seconds(433 * step);
                    let next = s.next_after(now).unwrap();
                    assert!(next > now, "{expr} {now}");
                    if let Some(last) = s.last_at_or_before(now) {
                        assert!(last <= now, "{expr} {now}");
                        assert_eq!(s.next_after(last), Some(next), "{expr} {now}: {last}");
                    }
                    assert_eq!(s.last_at_or_before(next), Some(next), "{expr} {now}");
                }
                let wall: Vec<_> = std::iter::successors(s.next_after(start), |&t| s.next_after(t))
                    .take(60)
                    .map(|t| s.wall_clock(to_chrono(t).unwrap()))
                    .collect();
                assert!(wall.windows(2).all(|w| w[0] < w[1]), "{expr}: {wall:?}");
            }
        }
    }

    #[test]
    fn both_day_fields_restricted_is_rejected_in_crontab_form() {
        for expr in ["0 3 1 * 1", "0 3 1,15 * MON", "0 3 */2 * 1-5"] {
            let err = Schedule::parse(expr, None).unwrap_err();
            assert!(
                matches!(err, ScheduleError::BothDaysRestricted { .. }),
                "{expr}: {err}"
            );
        }
        assert_eq!(
            Schedule::parse("0 3 1 * 1", None).unwrap_err().to_string(),
            "invalid cron expression \"0 3 1 * 1\": day-of-month \"1\" and day-of-week \"1\" are \
             both restricted; crontab would run on days matching either, certkeeper refuses to \
             guess: restrict only one of them (or use the 6-field form, where a day must match \
             both)"
        );
        for expr in [
            "0 3 1 * *",
            "0 3 * * 1",
            "0 3 ? * 1",
            "0 3 1 * ?",
            "0 0 3 1 * 2",
        ] {
            schedule(expr, None);
        }
    }

    #[test]
    fn bad_input_gives_errors_naming_the_expression() {
        #[rustfmt::skip]
        let cases: &[(&str, Option<&str>, &str)] = &[
            ("0 9 * *", None, "expected 5 fields (crontab) or 6-7 (with seconds), got 4"),
            ("0 0 9 * * * 2027 1", None, "got 8"),
            ("", None, "got 0"),
            ("daily", None, "got 1"),
            ("@reboot", None, "unknown shortcut \"@reboot\""),
            ("61 * * * *", None, "minute field \"61\" is invalid (allowed: 0-59)"),
            ("0 24 * * *", None, "hour field \"24\" is invalid (allowed: 0-23)"),
            ("0 9 32 * *", None, "day-of-month field \"32\" is invalid (allowed: 1-31)"),
            ("0 9 * 13 *", None, "month field \"13\" is invalid"),
            ("0 9 * * FOO", None, "day-of-week field \"FOO\" is invalid (allowed: 0-7 or SUN-SAT"),
            ("0 9 * * 8", None, "day-of-week \"8\": not a day number"),
            ("0 9 * * 5-1", None, "a range must run forwards"),
            ("0 9 * * 1/2", None, "a step needs a range"),
            ("0 9 * * */0", None, "a step must be at least 1"),
            ("0 9 * * 1,,2", None, "day-of-week \"\""),
            ("*/0 * * * *", None, "minute field \"*/0\" is invalid"),
            // 6/7 fields: the crate's ranges.
            ("0 0 9 * * 0", None, "day-of-week field \"0\" is invalid (allowed: 1-7 or SUN-SAT, 1 = Sunday)"),
            ("0 0 9 * * * 2200", None, "year field \"2200\" is invalid (allowed: 1970-2100)"),
            ("60 0 9 * * *", None, "second field \"60\" is invalid"),
            ("0 9 * * *", Some("Mars/Olympus_Mons"), "unknown time zone \"Mars/Olympus_Mons\""),
            ("0 9 * * *", Some("europe/berlin"), "unknown time zone"),
            ("0 0 30 2 *", None, "no date matches it"),
            ("0 0 31 4,6 *", None, "no date matches it"),
            ("0 0 0 31 2 MON", None, "no date matches it"),
        ];
        for &(expr, tz, want) in cases {
            let err = Schedule::parse(expr, tz).unwrap_err().to_string();
            assert!(
                err.contains(&format!("{expr:?}")),
                "{err:?} should quote {expr:?}"
            );
            assert!(
                err.contains(want),
                "{expr}: {err:?} should contain {want:?}"
            );
            assert!(!err.contains('\n'), "{err:?} should be one line");
        }
        assert_eq!(
            Schedule::parse("0 9 * *", None).unwrap_err().to_string(),
            "invalid cron expression \"0 9 * *\": expected 5 fields (crontab) or 6-7 (with \
             seconds), got 4"
        );
    }

    #[test]
    fn windows_open_at_each_occurrence_for_the_duration() {
        let two_hours = Duration::from_secs(2 * 3600);
        let nightly = Window {
            schedule: schedule("0 2 * * *", None),
            duration: two_hours,
        };
        let contains = [
            ("2026-11-23 01:59:59", false),
            ("2026-11-23 02:00", true),
            ("2026-11-23 03:00", true),
            ("2026-11-23 03:59:59.999", true),
            ("2026-11-23 04:00", false),
            ("2026-11-23 12:00", false),
        ];
        for (now, want) in contains {
            assert_eq!(nightly.contains(at(now)), want, "{now}");
        }
        let next_open = [
            ("2026-11-23 01:00", "2026-11-23 02:00"),
            ("2026-11-23 02:00", "2026-11-23 02:00"),
            ("2026-11-23 03:00", "2026-11-23 03:00"),
            ("2026-11-23 04:00", "2026-11-24 02:00"),
        ];
        for (now, want) in next_open {
            assert_eq!(nightly.next_open(at(now)), Some(at(want)), "{now}");
        }

        // Across midnight.
        let late = Window {
            schedule: schedule("0 23 * * *", None),
            duration: 3 * two_hours / 2,
        };
        assert!(late.contains(at("2026-11-23 01:00")));
        assert_eq!(
            late.next_open(at("2026-11-23 02:00")),
            Some(at("2026-11-23 23:00"))
        );

        // Sundays 02:00-04:00: from a Monday, the next Sunday.
        let sunday = Window {
            schedule: schedule("0 2 * * 0", None),
            duration: two_hours,
        };
        assert_eq!(
            sunday.next_open(at("2026-11-23 12:00")),
            Some(at("2026-11-29 02:00"))
        );
        assert!(sunday.contains(at("2026-11-29 03:30")));

        // Overlapping windows: always open.
        let always = Window {
            schedule: schedule("0 * * * *", None),
            duration: two_hours,
        };
        assert!(always.contains(at("2026-11-23 12:34:56")));

        // A zero duration is never open.
        let empty = Window {
            schedule: schedule("0 2 * * *", None),
            duration: Duration::ZERO,
        };
        assert!(!empty.contains(at("2026-11-23 02:00")));
        assert_eq!(
            empty.next_open(at("2026-11-23 02:00")),
            Some(at("2026-11-24 02:00"))
        );

        // A duration too long for `time` is open for good.
        let forever = Window {
            schedule: schedule("@yearly", None),
            duration: Duration::MAX,
        };
        assert!(forever.contains(at("2026-11-23 02:00")));
    }

    #[test]
    fn windows_across_daylight_saving_time() {
        let hour = Duration::from_secs(3600);
        // 02:00 Berlin does not exist on 2026-03-29: the window opens at 03:00 CEST and lasts
        // an hour of elapsed time.
        let w = Window {
            schedule: schedule("0 2 * * *", BERLIN),
            duration: hour,
        };
        assert_eq!(
            w.next_open(at("2026-03-28 23:00")),
            Some(at("2026-03-29 01:00"))
        );
        assert!(w.contains(at("2026-03-29 01:30")));
        assert!(!w.contains(at("2026-03-29 02:00")));
        // On 2026-10-25 it opens once, at the first 02:00 (CEST), and closes at 02:00 CET.
        assert_eq!(
            w.next_open(at("2026-10-24 23:00")),
            Some(at("2026-10-25 00:00"))
        );
        assert!(w.contains(at("2026-10-25 00:59:59")));
        assert!(!w.contains(at("2026-10-25 01:30")));
        assert_eq!(
            w.next_open(at("2026-10-25 01:30")),
            Some(at("2026-10-26 01:00"))
        );
    }

    #[test]
    fn keeps_the_text_and_zone_as_written() {
        let s = schedule("0  9 * * *", BERLIN);
        assert_eq!(s.as_str(), "0  9 * * *");
        assert_eq!(s.to_string(), "0  9 * * *");
        assert_eq!(s.time_zone(), "Europe/Berlin");
        assert_eq!(schedule("@daily", None).time_zone(), "UTC");
        // Extra spaces change nothing else.
        assert_eq!(
            s.next_after(at("2026-11-22 10:00")),
            schedule("0 9 * * *", BERLIN).next_after(at("2026-11-22 10:00"))
        );
    }
}
