//! `Span`: a length of time written the way operators write it (`90d`, `12h`, `1h30m`).
//!
//! Config files, CLI flags and API fields all use this one spelling, so a value can be copied
//! from one to the other. Months and years are deliberately absent: they have no fixed length,
//! and a certificate's validity must be exact.

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
        Ok(Self::from_secs(total))
    }
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
}
