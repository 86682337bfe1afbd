//! Domain names as users give them (requests, CSRs, certificates, imports): each line of the
//! input through `Domain::from_str`, all lines through `parse_domains`, and the accepted
//! names through the `_acme-challenge` delegation records derived from them.
//!
//! Properties: no panic; an accepted DNS name is ASCII lower case, at most 253 characters,
//! without a trailing dot or an empty label, a wildcard only as its whole leftmost label, not
//! an IP address in disguise (its last label is not all digits, and it does not parse as an
//! address); every accepted name prints as a name that parses back to itself, and is read back
//! from the store (the lenient `Deserialize`) as itself; a list that parses has 1 to 100
//! names, no two alike; each DNS base name has exactly one delegation record, whose 16-letter
//! label is the same for a wildcard and its base.
#![no_main]

use std::net::IpAddr;

use certkeeper::model::{Domain, MAX_DOMAINS, parse_domains};
use certkeeper::validation::{delegations, label};
use libfuzzer_sys::fuzz_target;

const ZONE: &str = "acme.example.net";

fn check_domain(input: &str, domain: &Domain) {
    let shown = domain.to_string();
    assert_eq!(shown.parse::<Domain>().as_ref(), Ok(domain), "{input:?} prints as {shown:?}");
    let stored: Domain = serde_json::from_value(serde_json::Value::String(shown.clone()))
        .unwrap_or_else(|e| panic!("{shown:?} does not read back: {e}"));
    assert_eq!(&stored, domain);
    let Domain::Dns(name) = domain else { return };
    assert!(name.is_ascii() && !name.bytes().any(|b| b.is_ascii_uppercase()), "{name:?}");
    assert!(!name.is_empty() && name.len() <= 253, "{name:?}");
    assert!(!name.ends_with('.'), "{name:?}");
    let labels: Vec<&str> = name.split('.').collect();
    for (i, l) in labels.iter().enumerate() {
        assert!(!l.is_empty() && l.len() <= 63, "{name:?}");
        assert!(!l.contains('*') || (i == 0 && *l == "*"), "{name:?}");
    }
    let last = labels.last().copied().unwrap_or_default();
    assert!(!last.bytes().all(|b| b.is_ascii_digit()), "{name:?} reads as an address");
    assert!(name.parse::<IpAddr>().is_err(), "{name:?} is an address");
}

fn check_delegations(domains: &[Domain]) {
    let records = delegations(domains, ZONE);
    let mut bases: Vec<&str> = domains
        .iter()
        .filter_map(|d| match d {
            Domain::Dns(name) => Some(name.strip_prefix("*.").unwrap_or(name)),
            Domain::Ip(_) => None,
        })
        .collect();
    bases.sort_unstable();
    bases.dedup();
    assert_eq!(records.len(), bases.len(), "one record per base name");
    for base in bases {
        let record = records
            .iter()
            .find(|r| r.name == format!("_acme-challenge.{base}."))
            .unwrap_or_else(|| panic!("no record for {base}"));
        let label = label(base);
        assert_eq!(label.len(), 16);
        assert!(label.bytes().all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b)));
        assert_eq!(record.value, format!("{label}.{ZONE}."));
        assert_eq!(record.rtype, "CNAME");
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let lines: Vec<&str> = text.split('\n').collect();
    for line in &lines {
        if let Ok(domain) = line.parse::<Domain>() {
            check_domain(line, &domain);
        }
    }
    match parse_domains(&lines) {
        Ok(domains) => {
            assert!((1..=MAX_DOMAINS).contains(&domains.len()));
            for (i, d) in domains.iter().enumerate() {
                assert!(!domains[..i].contains(d), "{d} twice");
                assert_eq!(lines[i].parse::<Domain>().as_ref(), Ok(d));
            }
            check_delegations(&domains);
        }
        Err(err) => assert!(!err.to_string().is_empty()),
    }
});
