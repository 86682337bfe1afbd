//! `Span`: a length of time written the way operators write it (`90d`, `12h`, `1h30m`).
//!
//! Config files, CLI flags and API fields all use this one spelling, so a value can be copied
//! from one to the other. Months and years are deliberately absent: they have no fixed length,
//! and a certificate's validity must be exact.
//!
//! Every span parsed from outside (config, API, CLI) is at most [`Span::MAX`], so adding one to
//! any date certkeeper handles stays inside `time`'s range; each field then has its own sane
//! range ([`Bounds`], the table in [`bounds`]), checked where the field is read, so the error
//! names the field.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Span(std::time::Duration);

const UNITS: &[(char, u64)] = &[
    ('w', 604_800),
    ('d', 86_400),
    ('h', 3_600),
    ('m', 60),
    ('s', 1),
];

impl Span {
    /// The longest span certkeeper parses: 100 years (36525d). Longer values are typing
    /// mistakes, and they would push dates past what `time` and X.509 can hold.
    pub const MAX: Self = Self::from_days(36_525);

    /// A span from a count of seconds. For constants and stored values: input from outside goes
    /// through `FromStr`, which enforces [`Span::MAX`].
    pub const fn from_secs(secs: u64) -> Self {
        Self(std::time::Duration::from_secs(secs))
    }

    pub const fn from_days(days: u64) -> Self {
        Self::from_secs(days * 86_400)
    }

    pub fn as_secs(self) -> u64 {
        self.0.as_secs()
    }

    pub fn std(self) -> std::time::Duration {
        self.0
    }

    pub fn time(self) -> time::Duration {
        time::Duration::seconds(i64::try_from(self.as_secs()).unwrap_or(i64::MAX))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid duration {input:?}: {reason} (write e.g. \"90d\", \"12h\", \"1h30m\"; units w, d, h, m, s)"
)]
pub struct SpanError {
    input: String,
    reason: &'static str,
}

impl FromStr for Span {
    type Err = SpanError;

    fn from_str(input: &str) -> Result<Self, SpanError> {
        let fail = |reason| SpanError {
            input: input.to_owned(),
            reason,
        };
        let mut rest = input.trim();
        if rest.is_empty() {
            return Err(fail("empty"));
        }
        let mut total: u64 = 0;
        while !rest.is_empty() {
            let digits = rest
                .find(|c: char| !c.is_ascii_digit())
                .ok_or_else(|| fail("a number needs a unit"))?;
            if digits == 0 {
                return Err(fail("expected a number"));
            }
            let number: u64 = rest[..digits]
                .parse()
                .map_err(|_| fail("number too large"))?;
            let unit = rest[digits..]
                .chars()
                .next()
                .ok_or_else(|| fail("a number needs a unit"))?;
            let (_, scale) = UNITS
                .iter()
                .find(|(u, _)| *u == unit)
                .ok_or_else(|| fail("unknown unit"))?;
            let part = number
                .checked_mul(*scale)
                .ok_or_else(|| fail("too large"))?;
            total = total.checked_add(part).ok_or_else(|| fail("too large"))?;
            rest = &rest[digits + unit.len_utf8()..];
        }
        if total > Self::MAX.as_secs() {
            return Err(fail(
                "longer than 36525d (100 years), the most certkeeper takes",
            ));
        }
        Ok(Self::from_secs(total))
    }
}

/// The range one field's span must fall in (inclusive), so that every timeout, window and
/// threshold is one a person could mean.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    pub min: Span,
    pub max: Span,
}

/// A span outside its field's [`Bounds`]. The caller names the field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{span} is outside {}..={}", .bounds.min, .bounds.max)]
pub struct OutOfBounds {
    pub span: Span,
    pub bounds: Bounds,
}

impl Bounds {
    pub const fn new(min: Span, max: Span) -> Self {
        Self { min, max }
    }

    /// `span` when it is inside these bounds.
    pub fn check(self, span: Span) -> Result<Span, OutOfBounds> {
        if (self.min..=self.max).contains(&span) {
            Ok(span)
        } else {
            Err(OutOfBounds { span, bounds: self })
        }
    }
}

/// The range of every duration field, config and API alike (README "Limits" and the comments of
/// config/certkeeper.toml state them; keep the three in step).
pub mod bounds {
    use super::{Bounds, Span};

    const MINUTE: Span = Span::from_secs(60);
    const HOUR: Span = Span::from_secs(3_600);

    /// `daemon.shutdown-timeout`, `api.request-timeout`, and each event sink's `timeout`.
    pub const TIMEOUT: Bounds = Bounds::new(Span::from_secs(1), HOUR);
    /// `renewal.renew-before` and a certificate's `renew_before`: past ten years it only means
    /// "renew at once", which the planner's floor turns into a loop of early renewals anyway.
    pub const RENEW_BEFORE: Bounds = Bounds::new(Span::from_secs(1), Span::from_days(3_650));
    /// `renewal.window-duration` and a certificate's `window_duration`.
    pub const WINDOW_DURATION: Bounds = Bounds::new(MINUTE, Span::from_days(31));
    /// `api.audit-retention`: at least a day, so a record outlives the call it describes.
    pub const AUDIT_RETENTION: Bounds = Bounds::new(Span::from_days(1), Span::from_days(36_500));
    /// `events.retention`.
    pub const RETENTION: Bounds = Bounds::new(Span::from_secs(1), Span::from_days(3_650));
    /// `validation.timeout`: how long a public certificate waits for its records.
    pub const VALIDATION_TIMEOUT: Bounds = Bounds::new(Span::from_secs(10), Span::from_days(30));
    /// Certificate and CA validity (`validity`, `defaults.*validity`, `[[ca]] validity`).
    pub const VALIDITY: Bounds = Bounds::new(MINUTE, Span::MAX);
}

impl fmt::Display for Span {
    /// Writes the shortest exact form, so `Display` and `FromStr` round-trip.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut secs = self.as_secs();
        if secs == 0 {
            return f.write_str("0s");
        }
        for (unit, scale) in UNITS {
            // Weeks read worse than days for certificate lifetimes ("57w" vs "399d"): use them
            // only when nothing smaller is left over and the number stays small.
            if *unit == 'w' && (!secs.is_multiple_of(*scale) || secs / scale > 8) {
                continue;
            }
            if secs >= *scale {
                write!(f, "{}{}", secs / scale, unit)?;
                secs %= scale;
            }
        }
        Ok(())
    }
}

impl Serialize for Span {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let cases = [
            ("90d", 90 * 86_400),
            ("1h30m", 5_400),
            ("2w", 1_209_600),
            ("45s", 45),
            ("0s", 0),
        ];
        for (text, secs) in cases {
            let span: Span = text.parse().unwrap();
            assert_eq!(span.as_secs(), secs, "{text}");
            assert_eq!(span.to_string(), text);
        }
        assert_eq!("395d".parse::<Span>().unwrap().to_string(), "395d");
        assert_eq!("3650d".parse::<Span>().unwrap().to_string(), "3650d");
    }

    #[test]
    fn rejects_bad_input() {
        for bad in [
            "",
            "d",
            "90",
            "90y",
            "1.5d",
            "-1d",
            "99999999999999999999d",
            "1d x",
        ] {
            assert!(bad.parse::<Span>().is_err(), "{bad:?} should be rejected");
        }
        let err = "90y".parse::<Span>().unwrap_err().to_string();
        assert!(err.contains("unknown unit") && err.contains("90y"), "{err}");
    }

    #[test]
    fn longer_than_a_hundred_years_is_refused() {
        assert_eq!("36525d".parse::<Span>().unwrap(), Span::MAX);
        for too_long in ["36525d1s", "3000000d", "30000000000000w", "5000000d"] {
            let err = too_long.parse::<Span>().unwrap_err().to_string();
            assert!(err.contains(too_long) && err.contains("100 years"), "{err}");
        }
    }

    #[test]
    fn bounds_name_the_range() {
        let err = bounds::RETENTION
            .check("5000d".parse().unwrap())
            .unwrap_err()
            .to_string();
        assert_eq!(err, "5000d is outside 1s..=3650d");
        assert!(bounds::WINDOW_DURATION.check(Span::from_secs(60)).is_ok());
        assert!(bounds::WINDOW_DURATION.check(Span::from_secs(59)).is_err());
    }
}
