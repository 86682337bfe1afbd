//! Proof of control of a domain (DESIGN.md §6), whoever asks for it: ACME orders today,
//! private CAs' validation policies next.
//!
//! - [`dns`]: CNAME delegation checks and publishing TXT records in the validation zone, through
//!   one of three publishers: [`zone`] (certkeeper's own authoritative server), [`rfc2136`]
//!   (dynamic updates to an existing server) or a command.
//! - [`http`]: HTTP-01 responses, from certkeeper's own listener or a web server's webroot.
//!
//! The records a user creates once are derived here ([`delegations`]), so that `describe`, the
//! Validation Pending event and the check before an order all name the same ones.

pub mod dns;
pub mod http;
mod rfc2136;
mod zone;

use crate::model::{Domain, ValidationRecord};

/// `_acme-challenge.<name>. CNAME <label>.<zone>.` for each DNS name. The label is derived
/// from the name alone (SHA-256, base32, 16 characters), so it never changes: the record is
/// created once and serves every renewal, and `*.example.com` and `example.com` share it.
pub fn delegations(domains: &[Domain], zone: &str) -> Vec<ValidationRecord> {
    let mut records: Vec<ValidationRecord> = Vec::new();
    for domain in domains {
        let Domain::Dns(name) = domain else { continue };
        let base = name.strip_prefix("*.").unwrap_or(name);
        let record = ValidationRecord {
            name: format!("_acme-challenge.{base}."),
            rtype: "CNAME".to_owned(),
            value: format!("{}.{zone}.", label(base)),
        };
        if !records.contains(&record) {
            records.push(record);
        }
    }
    records
}

/// The stable delegation label of a base name.
pub fn label(base: &str) -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, base.as_bytes());
    // 16 base32 characters = 80 bits: collisions within one zone are not a concern.
    let bits = digest.as_ref()[..10]
        .iter()
        .fold(0u128, |acc, b| (acc << 8) | u128::from(*b));
    (0..16)
        .map(|i| ALPHABET[((bits >> (75 - 5 * i)) & 31) as usize] as char)
        .collect()
}

/// What the user still has to create, as one line: "create NAME CNAME VALUE (it points to X);
/// ...".
pub fn describe_problems(problems: &[dns::DelegationProblem]) -> String {
    problems
        .iter()
        .map(|p| {
            let found = match &p.found {
                Some(target) => format!("it points to {target}"),
                None => "it does not exist yet".to_owned(),
            };
            format!(
                "create {} {} {} ({found})",
                p.record.name, p.record.rtype, p.record.value
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}
