//! DNS-01 publishing and delegation checks (`certkeeper::validation::dns`) against real peers: Knot
//! takes RFC 2136 updates signed with TSIG, unbound resolves across zones the way Let's
//! Encrypt's resolver does, kdig queries the embedded authoritative server over UDP and TCP,
//! and a real script stands in for a publisher command. A peer that cannot start fails the
//! test; nothing is skipped.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use certkeeper::argv::Argv;
use certkeeper::config::{DnsValidation, Publisher};
use certkeeper::model::ValidationRecord;
use certkeeper::validation::dns::{DelegationProblem, DnsError, DnsValidator};
use common::peers::{Knot, Unbound, dns_lookup, free_port, loopback, unquote_txt};
use tokio_util::sync::CancellationToken;

fn config(zone: &str, publisher: Publisher, nameservers: Vec<SocketAddr>) -> DnsValidation {
    DnsValidation {
        zone: zone.to_owned(),
        publisher,
        nameservers,
        ttl: 60,
    }
}

fn sorted(mut values: Vec<String>) -> Vec<String> {
    values.sort();
    values
}

/// One query with `kdig +tcp` (the harness's `dns_lookup` is UDP only): the response code
/// and the TXT values of the answer.
fn kdig_tcp(server: SocketAddr, name: &str, rtype: &str) -> (u64, Vec<String>) {
    let out = Command::new("kdig")
        .arg(format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string(), name, rtype])
        .args(["+tcp", "+json", "+timeout=2", "+retry=1"])
        .output()
        .expect("run kdig");
    assert!(out.status.success(), "kdig +tcp {name} {rtype}: {out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("kdig +tcp: bad JSON ({e}): {out:?}"));
    let txt = json["answerRRs"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter(|rr| rr["TYPEname"] == "TXT")
        .map(|rr| unquote_txt(rr["rdataTXT"].as_str().unwrap()))
        .collect();
    (json["RCODE"].as_u64().unwrap(), txt)
}

/// The serial of the SOA at `zone` on `server`.
fn soa_serial(server: SocketAddr, zone: &str) -> u64 {
    let answer = dns_lookup(server, zone, "SOA");
    assert_eq!(answer.rcode_name(), "NOERROR", "{answer:?}");
    let soa = answer
        .records
        .iter()
        .find(|r| r.rtype == "SOA")
        .unwrap_or_else(|| panic!("no SOA at {zone}: {answer:?}"));
    soa.rdata
        .split_whitespace()
        .nth(2)
        .unwrap()
        .parse()
        .unwrap()
}

/// Writes an executable shell script.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc2136_publishes_two_values_and_withdraws_exactly_one() {
    let knot = Knot::start(&["customer.test.", "acme.test."]);
    let rfc2136 = |key_file: PathBuf| Publisher::Rfc2136 {
        server: knot.addr,
        key_name: knot.tsig_name.clone(),
        key_file,
    };
    let shutdown = CancellationToken::new();
    let dns = DnsValidator::start(
        &config("acme.test", rfc2136(knot.tsig_key_file.clone()), vec![]),
        shutdown.clone(),
    )
    .await
    .unwrap();

    // Two values at one name coexist (a wildcard and its base).
    dns.publish("lbl.acme.test.", "value-one").await.unwrap();
    dns.publish("lbl.acme.test.", "value-two").await.unwrap();
    assert_eq!(
        sorted(dns_lookup(knot.addr, "lbl.acme.test.", "TXT").txt()),
        ["value-one", "value-two"]
    );
    let answer = dns_lookup(knot.addr, "lbl.acme.test.", "TXT");
    assert!(answer.records.iter().all(|r| r.ttl == 60), "{answer:?}");
    // Publishing again is harmless; names are case-insensitive, the final dot optional.
    dns.publish("LBL.Acme.Test", "value-one").await.unwrap();
    assert_eq!(
        sorted(dns_lookup(knot.addr, "lbl.acme.test.", "TXT").txt()),
        ["value-one", "value-two"]
    );

    // Withdrawing one leaves the other.
    dns.withdraw("Lbl.acme.test", "value-one").await.unwrap();
    assert_eq!(
        dns_lookup(knot.addr, "lbl.acme.test.", "TXT").txt(),
        ["value-two"]
    );
    // Withdrawing what is not there changes nothing and is not an error.
    dns.withdraw("lbl.acme.test.", "never-published")
        .await
        .unwrap();
    assert_eq!(
        dns_lookup(knot.addr, "lbl.acme.test.", "TXT").txt(),
        ["value-two"]
    );
    dns.withdraw("lbl.acme.test.", "value-two").await.unwrap();
    assert_eq!(
        dns_lookup(knot.addr, "lbl.acme.test.", "TXT").rcode_name(),
        "NXDOMAIN"
    );

    // Outside the zone: refused locally, nothing sent.
    let err = dns
        .publish("_acme-challenge.www.customer.test.", "x")
        .await
        .unwrap_err();
    assert!(matches!(err, DnsError::OutsideZone { .. }), "{err}");
    assert!(err.to_string().contains("acme.test."), "{err}");

    // A wrong secret: Knot answers NOTAUTH (BADSIG) and the error says so.
    let dir = tempfile::tempdir().unwrap();
    let wrong = dir.path().join("wrong.key");
    common::write_secret(&wrong, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n");
    let bad = DnsValidator::start(
        &config("acme.test", rfc2136(wrong), vec![]),
        shutdown.clone(),
    )
    .await
    .unwrap();
    let err = bad
        .publish("lbl.acme.test.", "value-three")
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, DnsError::UpdateRefused { .. }), "{message}");
    assert!(message.contains("refused"), "{message}");
    assert!(message.contains("NOTAUTH"), "{message}");
    assert!(message.contains("BADSIG"), "{message}");
    assert!(message.contains(&knot.addr.to_string()), "{message}");
    assert!(
        dns_lookup(knot.addr, "lbl.acme.test.", "TXT")
            .txt()
            .is_empty()
    );

    // A key file that is missing or not base64 fails at start.
    let missing = dir.path().join("missing.key");
    let err = DnsValidator::start(
        &config("acme.test", rfc2136(missing), vec![]),
        shutdown.clone(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, DnsError::KeyFile { .. }), "{err}");
    assert!(err.to_string().contains("missing.key"), "{err}");
    let garbage = dir.path().join("garbage.key");
    common::write_secret(&garbage, "not base64 at all!");
    let err = DnsValidator::start(
        &config("acme.test", rfc2136(garbage), vec![]),
        shutdown.clone(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, DnsError::KeyFile { .. }), "{err}");
    assert!(err.to_string().ends_with("not a base64 secret"), "{err}");

    // An unreachable server is an error naming it.
    let nobody = loopback(free_port());
    let unreachable = DnsValidator::start(
        &config(
            "acme.test",
            Publisher::Rfc2136 {
                server: nobody,
                key_name: knot.tsig_name.clone(),
                key_file: knot.tsig_key_file.clone(),
            },
            vec![],
        ),
        shutdown.clone(),
    )
    .await
    .unwrap();
    let err = unreachable
        .publish("lbl.acme.test.", "x")
        .await
        .unwrap_err();
    assert!(matches!(err, DnsError::UpdateFailed { .. }), "{err}");
    assert!(err.to_string().contains(&nobody.to_string()), "{err}");
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_server_answers_for_its_zone_only_and_unbound_follows_the_cname_to_it() {
    let listen = loopback(free_port());
    let shutdown = CancellationToken::new();
    let dns = DnsValidator::start(
        &config("acme.test", Publisher::Embedded { listen }, vec![]),
        shutdown.clone(),
    )
    .await
    .unwrap();

    // SOA and NS at the apex, authoritative.
    let serial_before = soa_serial(listen, "acme.test.");
    assert_eq!(
        dns_lookup(listen, "acme.test.", "NS").rdata(),
        ["ns.acme.test."]
    );

    dns.publish("lbl.acme.test.", "value-one").await.unwrap();
    dns.publish("LBL.ACME.TEST", "value-two").await.unwrap();
    let serial_after = soa_serial(listen, "acme.test.");
    assert!(
        serial_after >= serial_before + 2,
        "serial {serial_before} -> {serial_after}"
    );
    // UDP and TCP.
    let answer = dns_lookup(listen, "lbl.acme.test.", "TXT");
    assert_eq!(answer.rcode_name(), "NOERROR");
    assert_eq!(sorted(answer.txt()), ["value-one", "value-two"]);
    assert!(answer.records.iter().all(|r| r.ttl == 60), "{answer:?}");
    let (rcode, txt) = kdig_tcp(listen, "lbl.acme.test.", "TXT");
    assert_eq!(rcode, 0);
    assert_eq!(sorted(txt), ["value-one", "value-two"]);
    let (rcode, _) = kdig_tcp(listen, "acme.test.", "SOA");
    assert_eq!(rcode, 0);

    // Names outside the zone are refused; unknown names inside it do not exist.
    assert_eq!(
        dns_lookup(listen, "www.example.com.", "A").rcode_name(),
        "REFUSED"
    );
    assert_eq!(dns_lookup(listen, "test.", "SOA").rcode_name(), "REFUSED");
    assert_eq!(
        dns_lookup(listen, "other.acme.test.", "TXT").rcode_name(),
        "NXDOMAIN"
    );
    let err = dns.publish("lbl.example.com.", "x").await.unwrap_err();
    assert!(matches!(err, DnsError::OutsideZone { .. }), "{err}");

    // Nobody else writes to the zone or transfers it: dynamic updates are not implemented,
    // AXFR is refused.
    let dir = tempfile::tempdir().unwrap();
    let update = dir.path().join("update.txt");
    std::fs::write(
        &update,
        format!(
            "server {} {}\nzone acme.test.\nupdate add lbl.acme.test. 60 TXT \"intruder\"\nsend\n",
            listen.ip(),
            listen.port()
        ),
    )
    .unwrap();
    let out = Command::new("nsupdate")
        .args(["-t", "5"])
        .arg(&update)
        .output()
        .unwrap();
    assert!(!out.status.success(), "nsupdate succeeded: {out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("NOTIMP"), "{stderr}");
    let out = Command::new("kdig")
        .arg(format!("@{}", listen.ip()))
        .args(["-p", &listen.port().to_string(), "acme.test.", "AXFR"])
        .args(["+timeout=2", "+retry=0"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("value-one"), "AXFR answered: {text}");
    assert!(
        !text.contains("TXT") && !text.contains("SOA"),
        "AXFR answered: {text}"
    );
    assert_eq!(
        sorted(dns_lookup(listen, "lbl.acme.test.", "TXT").txt()),
        ["value-one", "value-two"]
    );

    // Withdrawing one value leaves the other; the serial moves on.
    dns.withdraw("lbl.acme.test.", "value-one").await.unwrap();
    assert_eq!(
        dns_lookup(listen, "lbl.acme.test.", "TXT").txt(),
        ["value-two"]
    );
    assert!(soa_serial(listen, "acme.test.") > serial_after);

    // The full path Pebble uses: unbound follows the customer's CNAME (Knot) into the
    // validation zone (the embedded server).
    let knot = Knot::start(&["customer.test."]);
    knot.nsupdate(
        "customer.test.",
        &["update add _acme-challenge.www.customer.test. 60 CNAME lbl.acme.test."],
    );
    let unbound = Unbound::start(&[("customer.test.", knot.addr), ("acme.test.", listen)]);
    let answer = unbound.lookup("_acme-challenge.www.customer.test.", "TXT");
    assert_eq!(answer.rcode_name(), "NOERROR", "{answer:?}");
    assert_eq!(answer.rdata().first().unwrap(), "lbl.acme.test.");
    assert_eq!(answer.txt(), ["value-two"]);
    dns.publish("lbl.acme.test.", "value-three").await.unwrap();
    // unbound (cache-max-ttl 0) may answer from its cache within the same second.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let txt = sorted(
            unbound
                .lookup("_acme-challenge.www.customer.test.", "TXT")
                .txt(),
        );
        if txt == ["value-three", "value-two"] {
            break;
        }
        assert!(Instant::now() < deadline, "unbound still sees {txt:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    dns.withdraw("lbl.acme.test.", "value-two").await.unwrap();
    dns.withdraw("lbl.acme.test.", "value-three").await.unwrap();
    assert_eq!(
        dns_lookup(listen, "lbl.acme.test.", "TXT").rcode_name(),
        "NXDOMAIN"
    );

    // The server stops on shutdown: the port is closed.
    shutdown.cancel();
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect_timeout(&listen, Duration::from_millis(200)).is_ok() {
        assert!(
            Instant::now() < deadline,
            "the embedded server still accepts TCP on {listen} after shutdown"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(dns);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_server_cannot_take_a_port_in_use() {
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let listen = taken.local_addr().unwrap();
    let err = DnsValidator::start(
        &config("acme.test", Publisher::Embedded { listen }, vec![]),
        CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, DnsError::Bind { .. }), "{err}");
    assert!(err.to_string().contains(&listen.to_string()), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_server_stops_when_the_validator_is_dropped() {
    let listen = loopback(free_port());
    let dns = DnsValidator::start(
        &config("acme.test", Publisher::Embedded { listen }, vec![]),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    assert!(soa_serial(listen, "acme.test.") > 0);
    drop(dns);
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect_timeout(&listen, Duration::from_millis(200)).is_ok() {
        assert!(Instant::now() < deadline, "still listening on {listen}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The port can be bound again (UDP too).
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::UdpSocket::bind(listen).is_err() {
        assert!(Instant::now() < deadline, "UDP {listen} still bound");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_delegations_through_unbound_reports_missing_and_wrong_cnames() {
    let knot = Knot::start(&["customer.test.", "acme.test."]);
    knot.nsupdate(
        "customer.test.",
        &[
            "update add _acme-challenge.ok.customer.test. 60 CNAME lbl-ok.acme.test.",
            "update add _acme-challenge.wrong.customer.test. 60 CNAME elsewhere.acme.test.",
            "update add _acme-challenge.txt.customer.test. 60 TXT \"not a cname\"",
        ],
    );
    let unbound = Unbound::start(&[("customer.test.", knot.addr), ("acme.test.", knot.addr)]);
    let dns = DnsValidator::start(
        &config(
            "acme.test",
            Publisher::Command {
                argv: argv(vec!["/bin/false".into()]),
            },
            vec![unbound.addr],
        ),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    let record = |name: &str, value: &str| ValidationRecord {
        name: name.to_owned(),
        rtype: "CNAME".to_owned(),
        value: value.to_owned(),
    };
    let ok = record("_acme-challenge.ok.customer.test.", "lbl-ok.acme.test.");
    // Case and the final dot do not matter.
    let ok_other_spelling = record("_acme-challenge.OK.customer.test", "LBL-OK.acme.test");
    let missing = record(
        "_acme-challenge.missing.customer.test.",
        "lbl-missing.acme.test.",
    );
    let wrong = record(
        "_acme-challenge.wrong.customer.test.",
        "lbl-wrong.acme.test.",
    );
    let txt_only = record("_acme-challenge.txt.customer.test.", "lbl-txt.acme.test.");

    assert_eq!(
        dns.check_delegations(&[ok.clone(), ok_other_spelling.clone()])
            .await
            .unwrap(),
        []
    );
    assert_eq!(dns.check_delegations(&[]).await.unwrap(), []);
    let problems = dns
        .check_delegations(&[missing.clone(), ok.clone(), wrong.clone(), txt_only.clone()])
        .await
        .unwrap();
    assert_eq!(
        problems,
        [
            DelegationProblem {
                record: missing.clone(),
                found: None
            },
            DelegationProblem {
                record: wrong.clone(),
                found: Some("elsewhere.acme.test.".into())
            },
            DelegationProblem {
                record: txt_only,
                found: None
            },
        ]
    );
    // Serializable for the API.
    let json = serde_json::to_value(&problems[1]).unwrap();
    assert_eq!(json["found"], "elsewhere.acme.test.");

    // The user fixes both. certkeeper's resolver caches nothing; unbound (cache-max-ttl 0)
    // may still answer from its cache within the same second, so poll briefly.
    knot.nsupdate(
        "customer.test.",
        &[
            "update add _acme-challenge.missing.customer.test. 60 CNAME lbl-missing.acme.test.",
            "update delete _acme-challenge.wrong.customer.test. CNAME",
            "update add _acme-challenge.wrong.customer.test. 60 CNAME lbl-wrong.acme.test.",
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let problems = dns
            .check_delegations(&[missing.clone(), ok.clone(), wrong.clone()])
            .await
            .unwrap();
        if problems.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still reported after the fix: {problems:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A resolver that does not answer is an error, not "missing".
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let nobody = DnsValidator::start(
        &config(
            "acme.test",
            Publisher::Command {
                argv: argv(vec!["/bin/false".into()]),
            },
            vec![silent.local_addr().unwrap()],
        ),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    let started = Instant::now();
    let err = nobody
        .check_delegations(&[record(
            "_acme-challenge.ok.customer.test.",
            "lbl-ok.acme.test.",
        )])
        .await
        .unwrap_err();
    assert!(matches!(err, DnsError::Lookup { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("_acme-challenge.ok.customer.test."),
        "{err}"
    );
    eprintln!(
        "unanswered lookup failed after {:?}: {err}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_publisher_runs_argv_without_a_shell_and_reports_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("calls.log");
    let recorder = script(
        dir.path(),
        "record.sh",
        &format!(
            "printf '%s|' \"$@\" >> '{}'\necho >> '{}'",
            log.display(),
            log.display()
        ),
    );
    // The fixed argument has a space and a `$`: passed as one argument, not through a shell.
    let argv_parts = vec![
        recorder.to_string_lossy().into_owned(),
        "--zone file $HOME".to_owned(),
    ];
    let dns = DnsValidator::start(
        &config(
            "acme.test",
            Publisher::Command {
                argv: argv(argv_parts),
            },
            vec![],
        ),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    dns.publish("lbl.acme.test.", "value-one").await.unwrap();
    dns.publish("LBL.acme.test", "value-two").await.unwrap();
    dns.withdraw("lbl.acme.test.", "value-one").await.unwrap();
    let calls = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        calls.lines().collect::<Vec<_>>(),
        [
            "--zone file $HOME|add|lbl.acme.test.|value-one|",
            "--zone file $HOME|add|lbl.acme.test.|value-two|",
            "--zone file $HOME|remove|lbl.acme.test.|value-one|",
        ]
    );
    let err = dns.publish("www.example.com.", "x").await.unwrap_err();
    assert!(matches!(err, DnsError::OutsideZone { .. }), "{err}");
    assert_eq!(std::fs::read_to_string(&log).unwrap(), calls, "not run");

    // A failing command: the error carries its exit status and stderr.
    let failing = script(
        dir.path(),
        "fail.sh",
        "echo 'zone acme.test is read-only' >&2\nexit 1",
    );
    let dns = DnsValidator::start(
        &config(
            "acme.test",
            Publisher::Command {
                argv: argv(vec![
                    failing.to_string_lossy().into_owned(),
                    "--token=s3cret".into(),
                ]),
            },
            vec![],
        ),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    let err = dns
        .publish("lbl.acme.test.", "value-one")
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, DnsError::Command { .. }), "{message}");
    assert!(message.contains("zone acme.test is read-only"), "{message}");
    assert!(message.contains("exit status: 1"), "{message}");
    assert!(
        message.contains("fail.sh ... add lbl.acme.test. value-one"),
        "{message}"
    );
    // Fixed arguments may hold credentials: not shown.
    assert!(!message.contains("s3cret"), "{message}");
    let err = dns
        .withdraw("lbl.acme.test.", "value-one")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("read-only"), "{err}");

    // A program that does not exist.
    let dns = DnsValidator::start(
        &config(
            "acme.test",
            Publisher::Command {
                argv: argv(vec![dir.path().join("nope").to_string_lossy().into_owned()]),
            },
            vec![],
        ),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    let err = dns.publish("lbl.acme.test.", "v").await.unwrap_err();
    assert!(err.to_string().contains("cannot start"), "{err}");

    // An empty command cannot even be configured: there is no Argv without a program.
    assert!(Argv::new(vec![]).is_err());
}

fn argv(parts: Vec<String>) -> Argv {
    Argv::new(parts).unwrap()
}
