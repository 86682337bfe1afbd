//! Proves the peer harness (tests/common/peers.rs) and the DNS path Pebble needs for DNS-01
//! through a delegated `_acme-challenge` CNAME: Knot serves both zones, unbound follows the
//! CNAME across them, Pebble resolves through unbound. A peer that cannot start fails the
//! test; nothing is skipped.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::process::Command;
use std::time::Instant;

use common::peers::{Knot, Pebble, PebbleOptions, Unbound, random_eab};

#[test]
fn peers_start_and_dns01_path_follows_cname_across_zones() {
    // lego is the benchmark's reference client.
    let lego = Command::new("lego")
        .arg("--version")
        .output()
        .expect("lego must be installed: run tests/peers/install.sh");
    assert!(lego.status.success(), "lego --version: {lego:?}");
    let lego_version = String::from_utf8_lossy(&lego.stdout);
    assert!(lego_version.contains("lego version"), "{lego_version}");

    // 1. Knot with both zones.
    let started = Instant::now();
    let knot = Knot::start(&["customer.test.", "acme.test."]);
    eprintln!("knot started in {:?} on {}", started.elapsed(), knot.addr);
    assert_eq!(
        std::fs::read_to_string(&knot.tsig_key_file).unwrap(),
        knot.tsig_secret_b64
    );
    assert_eq!(knot.query("ns.acme.test.", "A"), ["127.0.0.1"]);

    // 2. unbound with a stub for each zone.
    let started = Instant::now();
    let unbound = Unbound::start(&[("customer.test.", knot.addr), ("acme.test.", knot.addr)]);
    eprintln!(
        "unbound started in {:?} on {}",
        started.elapsed(),
        unbound.addr
    );

    // 3. The delegation and the challenge record, each in its own zone.
    knot.nsupdate(
        "customer.test.",
        &["update add _acme-challenge.www.customer.test. 60 CNAME lbl.acme.test."],
    );
    knot.nsupdate(
        "acme.test.",
        &["update add lbl.acme.test. 60 TXT \"hello\""],
    );

    // A wrong TSIG secret is refused.
    let wrong = knot.nsupdate_with_secret(
        "acme.test.",
        &["update add other.acme.test. 60 TXT \"no\""],
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
    );
    assert!(
        !wrong.status.success(),
        "nsupdate with a wrong key: {wrong:?}"
    );
    assert!(knot.query("other.acme.test.", "TXT").is_empty());

    // 4. unbound follows the CNAME into the other zone; Knot answers only the CNAME.
    let name = "_acme-challenge.www.customer.test.";
    let resolved = unbound.lookup(name, "TXT");
    assert_eq!(resolved.rcode, 0, "{resolved:?}\n{}", unbound.log_tail());
    assert_eq!(resolved.txt(), ["hello"], "{resolved:?}");
    assert_eq!(unbound.query(name, "TXT"), ["lbl.acme.test.", "\"hello\""]);
    assert_eq!(knot.query(name, "TXT"), ["lbl.acme.test."]);
    assert!(knot.lookup(name, "TXT").txt().is_empty());

    // No cache: a change on Knot is visible through unbound at once.
    knot.nsupdate(
        "acme.test.",
        &["update delete lbl.acme.test. 60 TXT \"hello\""],
    );
    knot.nsupdate(
        "acme.test.",
        &["update add lbl.acme.test. 60 TXT \"again\""],
    );
    assert_eq!(unbound.lookup(name, "TXT").txt(), ["again"]);

    // 5. Pebble resolving through unbound.
    let started = Instant::now();
    let pebble = Pebble::start(PebbleOptions::new(unbound.addr));
    eprintln!(
        "pebble started in {:?}: {}",
        started.elapsed(),
        pebble.directory_url
    );
    let directory = pebble.directory();
    assert!(directory["newOrder"].is_string(), "{directory}");
    assert_ne!(
        directory["meta"]["externalAccountRequired"], true,
        "{directory}"
    );
    let root = pebble.issuance_root_pem();
    assert!(
        root.trim_start().starts_with("-----BEGIN CERTIFICATE-----"),
        "{root}"
    );
    let intermediate = pebble.intermediate_pem();
    assert!(
        intermediate.contains("-----BEGIN CERTIFICATE-----"),
        "{intermediate}"
    );
    assert_ne!(root, intermediate);
    // The TLS root is the listener's, not the issuance root.
    let tls_root = std::fs::read_to_string(&pebble.tls_root_pem).unwrap();
    assert_ne!(tls_root, root);

    // 6. Pebble requiring EAB.
    let started = Instant::now();
    let eab = random_eab();
    let with_eab = Pebble::start(PebbleOptions {
        eab: Some(eab.clone()),
        validity_secs: Some(300),
        ..PebbleOptions::new(unbound.addr)
    });
    eprintln!("pebble (EAB) started in {:?}", started.elapsed());
    assert_eq!(with_eab.eab.as_ref(), Some(&eab));
    let directory = with_eab.directory();
    assert_eq!(
        directory["meta"]["externalAccountRequired"], true,
        "{directory}"
    );
    assert_ne!(
        with_eab.issuance_root_pem(),
        root,
        "each Pebble has its own root"
    );

    // Drop kills by pid: the processes are gone afterwards.
    let pids = [knot.pid(), unbound.pid(), pebble.pid(), with_eab.pid()];
    drop((knot, unbound, pebble, with_eab));
    for pid in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "pid {pid} still exists after drop"
        );
    }
}
