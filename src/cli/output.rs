//! Output for people (aligned tables, key: value blocks) and for scripts (one JSON document).
//!
//! Text for people goes through [`clean`]: much of it comes from outside (an imported
//! certificate's issuer DN, a CA's error text, names stored by older versions), and a terminal
//! must not act on an escape sequence hidden in it. JSON needs nothing: serde escapes controls.

use std::borrow::Cow;
use std::io::Write;

use serde::Serialize;
use time::OffsetDateTime;

use crate::api::types::{CaDetails, CertificateList};
use crate::model::{CaInfo, Certificate};
use crate::serve::Peer;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum Format {
    /// Aligned tables and key: value lines.
    Table,
    /// One JSON document per invocation.
    Json,
}

/// `text` with control characters (NUL, newline, ESC, ...) and the invisible characters that
/// reorder text (bidi overrides) written as `\u{..}` escapes, so it prints as one inert line.
pub(super) fn clean(text: &str) -> Cow<'_, str> {
    let unsafe_char = |c: char| {
        c.is_control()
            || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !text.chars().any(unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if unsafe_char(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

pub(super) fn json<T: Serialize>(value: &T) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)
}

/// Prints rows under a header, each column as wide as its widest cell.
pub(super) fn table(header: &[&str], rows: &[Vec<String>]) -> std::io::Result<()> {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|row| row.iter().map(|cell| clean(cell).into_owned()).collect())
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = std::io::stdout().lock();
    let line =
        |out: &mut dyn Write, cells: &mut dyn Iterator<Item = &str>| -> std::io::Result<()> {
            let mut text = String::new();
            for (i, cell) in cells.enumerate() {
                if i + 1 == widths.len() {
                    text.push_str(cell);
                } else {
                    text.push_str(&format!("{cell:<width$}  ", width = widths[i]));
                }
            }
            writeln!(out, "{}", text.trim_end())
        };
    line(&mut out, &mut header.iter().copied())?;
    for row in &rows {
        line(&mut out, &mut row.iter().map(String::as_str))?;
    }
    Ok(())
}

/// One row of `certkeeper audit`.
pub(super) fn audit_row(entry: &crate::audit::Entry) -> Vec<String> {
    let r = &entry.record;
    let caller = match r.peer {
        Peer::Local { uid, pid, .. } => match pid {
            Some(pid) => format!("uid {uid} pid {pid}"),
            None => format!("uid {uid}"),
        },
        Peer::Remote { address } => address.to_string(),
        Peer::Unknown => "unknown".to_owned(),
    };
    let result = match &r.code {
        Some(code) => format!("{} {code}", r.status),
        None => r.status.to_string(),
    };
    vec![
        entry.seq.to_string(),
        date(r.time),
        caller,
        r.operation.clone(),
        r.target.clone().unwrap_or_else(|| "-".to_owned()),
        result,
    ]
}

pub(super) fn date(t: OffsetDateTime) -> String {
    crate::model::rfc3339(t)
}

/// A time that may not exist yet (before a certificate's first version): "-".
pub(super) fn maybe_date(t: Option<OffsetDateTime>) -> String {
    t.map_or_else(|| "-".to_owned(), date)
}

pub(super) fn certificate_list(list: &CertificateList) -> std::io::Result<()> {
    let rows: Vec<Vec<String>> = list
        .certificates
        .iter()
        .map(|c| {
            vec![
                c.id.to_string(),
                c.name.clone(),
                c.status.to_string(),
                c.origin.to_string(),
                maybe_date(c.not_after),
                c.domains
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
            ]
        })
        .collect();
    table(
        &["ID", "NAME", "STATUS", "ORIGIN", "NOT AFTER", "DOMAINS"],
        &rows,
    )?;
    if let Some(next) = &list.next_page {
        eprintln!("more certificates follow: --after {next} (or --all)");
    }
    Ok(())
}

pub(super) fn certificate(c: &Certificate) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    let mut field = |k: &str, v: String| writeln!(out, "{:<18}{}", format!("{k}:"), clean(&v));
    field("id", c.id.to_string())?;
    field("name", c.name.clone())?;
    field("status", c.status.to_string())?;
    field("origin", c.origin.to_string())?;
    field("issuer", c.issuer.clone())?;
    field(
        "domains",
        c.domains
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
    )?;
    field("key algorithm", c.key_algorithm.to_string())?;
    field(
        "serial",
        c.serial
            .as_ref()
            .map_or_else(|| "-".to_owned(), ToString::to_string),
    )?;
    field("not before", maybe_date(c.not_before))?;
    field("not after", maybe_date(c.not_after))?;
    if let Some(validity) = c.validity {
        field("validity", validity.to_string())?;
    }
    field("client auth", c.client_auth.to_string())?;
    field("current version", c.current_version.to_string())?;
    if !c.tags.is_empty() {
        field(
            "tags",
            c.tags
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", "),
        )?;
    }
    if let (Some(at), Some(reason)) = (c.revoked_at, c.revocation_reason) {
        field("revoked", format!("{} ({reason})", date(at)))?;
    }
    field("created", date(c.created_at))?;
    if let Some(method) = &c.validation_method {
        field("validation", method.to_string())?;
    }
    if let Some(deadline) = c
        .validation_deadline
        .filter(|_| c.status == crate::model::Status::PendingValidation)
    {
        field("validate by", date(deadline))?;
    }
    for record in &c.validation_records {
        field(
            "create record",
            format!("{} {} {}", record.name, record.rtype, record.value),
        )?;
    }
    drop(out);
    if !c.versions.is_empty() {
        println!();
        let rows: Vec<Vec<String>> = c
            .versions
            .iter()
            .map(|v| {
                vec![
                    v.version.to_string(),
                    v.serial.to_string(),
                    date(v.not_before),
                    date(v.not_after),
                    v.issuer_ca.clone().unwrap_or_else(|| "-".into()),
                    if v.key_held {
                        "yes".into()
                    } else {
                        "no".into()
                    },
                ]
            })
            .collect();
        table(
            &[
                "VERSION",
                "SERIAL",
                "NOT BEFORE",
                "NOT AFTER",
                "CA",
                "KEY HELD",
            ],
            &rows,
        )?;
    }
    Ok(())
}

pub(super) fn ca_list(cas: &[CaInfo]) -> std::io::Result<()> {
    let rows: Vec<Vec<String>> = cas
        .iter()
        .map(|ca| {
            vec![
                ca.name.clone(),
                ca.kind.to_string(),
                ca.state.to_string(),
                ca.parent.clone().unwrap_or_else(|| "-".into()),
                ca.key_algorithm.to_string(),
                ca.not_after.map(date).unwrap_or_else(|| "-".into()),
                if ca.permitted_dns.is_empty() {
                    "-".into()
                } else {
                    ca.permitted_dns.join(",")
                },
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "KIND",
            "STATE",
            "PARENT",
            "KEY",
            "NOT AFTER",
            "PERMITTED DNS",
        ],
        &rows,
    )
}

pub(super) fn ca(details: &CaDetails) -> std::io::Result<()> {
    let ca = &details.ca;
    let mut out = std::io::stdout().lock();
    let mut field = |k: &str, v: String| writeln!(out, "{:<16}{}", format!("{k}:"), clean(&v));
    field("name", ca.name.clone())?;
    field("kind", ca.kind.to_string())?;
    field("state", ca.state.to_string())?;
    if let Some(parent) = &ca.parent {
        field("parent", parent.clone())?;
    }
    field("common name", ca.common_name.clone())?;
    field("key algorithm", ca.key_algorithm.to_string())?;
    field(
        "path length",
        ca.path_length
            .map_or_else(|| "unconstrained".into(), |n| n.to_string()),
    )?;
    field(
        "permitted dns",
        if ca.permitted_dns.is_empty() {
            "unconstrained".into()
        } else {
            ca.permitted_dns.join(", ")
        },
    )?;
    if let Some(serial) = &ca.serial {
        field("serial", serial.to_string())?;
    }
    if let (Some(nb), Some(na)) = (ca.not_before, ca.not_after) {
        field("not before", date(nb))?;
        field("not after", date(na))?;
    }
    if let Some(csr) = &details.csr_pem {
        writeln!(
            out,
            "\nHave this CSR signed by the external root, then run `certkeeper ca install {} --certificate FILE`:\n",
            clean(&ca.name)
        )?;
        write!(out, "{csr}")?;
    }
    Ok(())
}

pub(super) fn explanation(e: &crate::api::types::Explanation) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{} ({}), {}", e.id, clean(&e.name), e.status)?;
    match e.next_action_at {
        Some(at) => writeln!(
            out,
            "next action: {} at {} (rule: {})",
            e.next_action,
            date(at),
            e.rule
        )?,
        None => writeln!(out, "next action: {} ({})", e.next_action, e.rule)?,
    }
    match e.next_expiry_event_at {
        Some(at) => writeln!(
            out,
            "next expiry event: {} (threshold {}, from {})",
            date(at),
            e.expiry_threshold
                .map_or_else(|| "-".to_owned(), |t| t.to_string()),
            maybe_date(e.expiry_events_from)
        )?,
        None => writeln!(
            out,
            "next expiry event: none (threshold {}, from {})",
            e.expiry_threshold
                .map_or_else(|| "-".to_owned(), |t| t.to_string()),
            maybe_date(e.expiry_events_from)
        )?,
    }
    for reason in &e.reasons {
        writeln!(out, "  - {}", clean(reason))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_print_as_escapes() {
        assert!(matches!(clean("Team CA, O=Example"), Cow::Borrowed(_)));
        assert_eq!(
            clean("esc\u{1b}[2J\u{1b}]0;pwned\u{7}"),
            "esc\\u{1b}[2J\\u{1b}]0;pwned\\u{7}"
        );
        assert_eq!(clean("a\nb\0c\u{202e}d"), "a\\u{a}b\\u{0}c\\u{202e}d");
        assert_eq!(clean("bücher"), "bücher");
    }
}
