//! Lifecycle automation through the real binary, in real time with short lifetimes: the daemon
//! renews by itself, backs off on failure, sends expiry events, delivers events to a real HTTP
//! receiver and a command, and exposes metrics that promtool accepts. No timed assertions:
//! every wait is "until it happens, or fail after a generous bound".
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::webhook::Receiver;
use common::{BIN, Daemon, id};

/// Polls `f` until it returns `Some`, failing after `timeout` with `what`.
fn wait_until<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = f() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn events(daemon: &Daemon) -> Vec<serde_json::Value> {
    let out = daemon.ok(&["events", "--output", "json"]);
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn events_for(daemon: &Daemon, cert: &str, detail_type: &str) -> Vec<serde_json::Value> {
    events(daemon)
        .into_iter()
        .filter(|e| e["detail-type"] == detail_type && e["resources"][0] == cert)
        .collect()
}

fn version(daemon: &Daemon, cert: &str) -> u64 {
    daemon.json(&["describe", cert])["current_version"]
        .as_u64()
        .unwrap()
}

fn public_key(daemon: &Daemon, cert: &str, version: u64) -> String {
    let pem = daemon.ok(&[
        "get",
        cert,
        "--part",
        "cert",
        "--version",
        &version.to_string(),
    ]);
    let path = daemon.write(&format!("{cert}-{version}.pem"), pem);
    common::openssl(
        daemon.dir.path(),
        &["x509", "-in", path.to_str().unwrap(), "-noout", "-pubkey"],
    )
}

/// Short lifetimes: 90 s certificates that renew 80 s before expiry, so a renewal is due
/// about ten seconds after issuance (not-before is backdated five minutes, so the lifetime is
/// 6.5 minutes and the clamp to half of it does not apply).
const SHORT: [&str; 4] = ["--validity", "90s", "--renew-before", "80s"];

#[test]
fn renews_by_itself_and_resumes_after_a_restart() {
    let mut daemon = Daemon::start();
    let mut args = vec!["request", "auto.internal"];
    args.extend(SHORT);
    let cert = id(&daemon.json(&args));
    let first_serial = daemon.json(&["describe", &cert])["serial"]
        .as_str()
        .unwrap()
        .to_owned();

    wait_until(
        Duration::from_secs(60),
        "the first automatic renewal",
        || (version(&daemon, &cert) >= 2).then_some(()),
    );
    let described = daemon.json(&["describe", &cert]);
    assert_ne!(
        described["serial"].as_str().unwrap(),
        first_serial,
        "a renewal issues a new serial"
    );
    assert_eq!(described["renewal"]["status"], "success");
    assert_ne!(
        public_key(&daemon, &cert, 1),
        public_key(&daemon, &cert, 2),
        "and a new key"
    );
    let renewal_events = events_for(&daemon, &cert, "Certificate Available");
    assert!(
        renewal_events
            .iter()
            .any(|e| e["detail"]["Action"] == "RENEWAL"),
        "a Certificate Available RENEWAL event: {renewal_events:#?}"
    );

    // Restart mid-way: the schedule lives in the store, so renewals continue.
    let reached = version(&daemon, &cert);
    let (status, _) = daemon.stop();
    assert!(status.success());
    daemon.spawn();
    wait_until(
        Duration::from_secs(60),
        "a renewal after the restart",
        || (version(&daemon, &cert) > reached).then_some(()),
    );
    let explained = daemon.json(&["explain", &cert]);
    assert_eq!(explained["next_action"], "renew", "{explained}");
}

#[test]
fn a_failing_renewal_backs_off_raises_action_required_and_recovers() {
    let daemon = Daemon::start();
    daemon.ok(&["ca", "create", "team", "--parent", "default"]);
    let mut args = vec!["request", "fragile.internal", "--ca", "team"];
    args.extend(SHORT);
    let cert = id(&daemon.json(&args));
    // The CA's key becomes unavailable: every renewal through it fails.
    daemon.ok(&["ca", "disable", "team"]);

    let failed = wait_until(Duration::from_secs(60), "a failed renewal", || {
        let c = daemon.json(&["describe", &cert]);
        (c["renewal"]["status"] == "failed").then_some(c)
    });
    assert_eq!(
        failed["status"], "issued",
        "a failed renewal leaves the certificate issued"
    );
    let reason = failed["renewal"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("CA \"team\" is disabled"),
        "the reason names the problem: {reason}"
    );
    // Backoff: the retry is about a minute after the failure (1 min ± 10%), not immediate.
    let failed_at = time_of(&failed["renewal"]["failed_at"]);
    let retry_at = time_of(&failed["next_renewal_at"]);
    let delay = retry_at - failed_at;
    assert!(
        (50..=70).contains(&delay),
        "retry {delay} s after the failure"
    );
    let action = events_for(&daemon, &cert, "Certificate Renewal Action Required");
    assert_eq!(action.len(), 1, "raised at the first failure: {action:#?}");
    assert!(
        action[0]["detail"]["RenewalStatusReason"]
            .as_str()
            .unwrap()
            .contains("team")
    );
    let explained = daemon.json(&["explain", &cert]);
    assert_eq!(explained["next_action"], "retry", "{explained}");
    assert!(
        explained["rule"].as_str().unwrap().contains("backoff"),
        "{explained}"
    );
    // Thresholds below the certificate's 90 s lifetime, so only the failure counts.
    let (code, line) = check(&daemon, &["--warning", "1s", "--critical", "1s"]);
    assert_eq!(code, 1, "a failing renewal is a WARNING: {line}");
    assert!(line.contains("renewal(s) failing"), "{line}");

    // The CA comes back: the scheduled retry succeeds by itself.
    daemon.ok(&["ca", "enable", "team"]);
    let recovered = wait_until(Duration::from_secs(100), "the retry to succeed", || {
        let c = daemon.json(&["describe", &cert]);
        (c["current_version"] == 2).then_some(c)
    });
    assert_eq!(recovered["renewal"]["status"], "success");
    assert_eq!(recovered["renewal"]["failures"], 0);
    let metrics = daemon.ok(&["metrics"]);
    assert!(
        metrics.contains("certkeeper_renewals_total{result=\"failure\"} "),
        "{metrics}"
    );
}

fn time_of(value: &serde_json::Value) -> i64 {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("not a time: {value}"));
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .unwrap()
        .unix_timestamp()
}

/// Runs `certkeeper check` and returns its exit code and status line.
fn check(daemon: &Daemon, args: &[&str]) -> (i32, String) {
    let mut all = vec!["check"];
    all.extend(args);
    let out = daemon.ck(&all);
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
    )
}

#[test]
fn imported_certificates_get_expiry_events_and_are_never_renewed() {
    // The daily check every two seconds instead of daily, to see it work in real time.
    let daemon = Daemon::start_with(Some("[events]\ndaily-check = \"*/2 * * * * *\"\n"));
    let dir = daemon.dir.path();
    common::openssl(
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "imp.key",
            "-subj",
            "/CN=imported.internal",
            "-out",
            "imp.csr",
        ],
    );
    // A certificate from elsewhere (here: our CA, through sign), living 70 seconds.
    let signed = daemon.ok(&[
        "sign",
        "--csr",
        "imp.csr",
        "--validity",
        "70s",
        "--name",
        "issued-elsewhere",
    ]);
    let leaf = signed
        .split("-----END CERTIFICATE-----")
        .next()
        .unwrap()
        .to_owned()
        + "-----END CERTIFICATE-----\n";
    daemon.write("imp.pem", leaf);
    let cert = id(&daemon.json(&[
        "import",
        "--certificate",
        "imp.pem",
        "--private-key",
        "imp.key",
    ]));

    let approaching = wait_until(
        Duration::from_secs(30),
        "an Approaching Expiration event",
        || {
            let e = events_for(&daemon, &cert, "Certificate Approaching Expiration");
            (!e.is_empty()).then_some(e)
        },
    );
    assert_eq!(approaching[0]["detail"]["DaysToExpiry"], 0);
    assert_eq!(approaching[0]["detail"]["CommonName"], "imported.internal");
    let expired = wait_until(
        Duration::from_secs(120),
        "a Certificate Expired event",
        || {
            let e = events_for(&daemon, &cert, "Certificate Expired");
            (!e.is_empty()).then_some(e)
        },
    );
    assert_eq!(expired.len(), 1);
    let described = daemon.json(&["describe", &cert]);
    assert_eq!(described["status"], "expired");
    assert_eq!(
        described["current_version"], 1,
        "imported certificates are never renewed"
    );
    assert!(described["next_renewal_at"].is_null());
    // Many daily checks ran; the event went out once for the day.
    assert_eq!(
        events_for(&daemon, &cert, "Certificate Approaching Expiration").len(),
        1
    );
    let (code, line) = check(&daemon, &[]);
    assert_eq!(code, 2, "an expired certificate is CRITICAL: {line}");
}

#[test]
fn webhooks_are_signed_wait_while_the_receiver_is_down_and_survive_a_restart() {
    let receiver = Receiver::start(b"hook secret");
    let config = |dir: &std::path::Path| {
        let secret = dir.join("hook.secret");
        std::fs::write(&secret, "hook secret\n").unwrap();
        format!(
            "[[events.webhook]]\nname = \"ops\"\nurl = {:?}\nsecret-file = {:?}\ndetail-types = [\"Certificate Available\", \"Certificate Revoked\"]\n",
            receiver.url,
            secret.display().to_string()
        )
    };
    let staging = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start_with(Some(&config(staging.path())));

    for i in 0..2 {
        daemon.json(&["request", &format!("hook{i}.internal")]);
    }
    receiver.wait_for(2, Duration::from_secs(30));

    receiver.set_down(true);
    let mut ids = Vec::new();
    for i in 2..5 {
        ids.push(id(&daemon.json(&["request", &format!("hook{i}.internal")])));
    }
    daemon.ok(&["revoke", &ids[0]]);
    wait_until(
        Duration::from_secs(30),
        "delivery attempts against the down receiver",
        || (*receiver.refused.lock().unwrap() >= 2).then_some(()),
    );
    let metrics = daemon.ok(&["metrics"]);
    let depth_line = metrics
        .lines()
        .find(|l| l.starts_with("certkeeper_outbox_depth{sink=\"ops\"}"))
        .unwrap()
        .to_owned();
    assert_ne!(
        depth_line, "certkeeper_outbox_depth{sink=\"ops\"} 0",
        "events wait while the receiver is down"
    );

    // Restart while the receiver is still down: the cursor is in the store.
    daemon.stop();
    daemon.spawn();
    receiver.set_down(false);
    let got = receiver.wait_for(6, Duration::from_secs(60));

    let mut by_id = std::collections::BTreeMap::new();
    for d in &got {
        assert!(
            d.signature_ok,
            "every delivery is signed with the shared secret: {d:?}"
        );
        assert_eq!(d.idempotency_key, d.id);
        // Duplicates are allowed (at least once), but only as the same event.
        let previous = by_id.insert(d.id.clone(), d.body.clone());
        if let Some(previous) = previous {
            assert_eq!(previous, d.body, "a duplicate carries the same event");
        }
    }
    assert_eq!(
        by_id.len(),
        6,
        "5 issuances and 1 revocation, none lost: {got:#?}"
    );
    assert!(got.iter().any(|d| d.detail_type == "Certificate Revoked"));
    // The filter kept other detail types out.
    assert!(got.iter().all(
        |d| d.detail_type == "Certificate Available" || d.detail_type == "Certificate Revoked"
    ));
}

#[test]
fn command_sinks_get_event_json_on_stdin() {
    let staging = tempfile::tempdir().unwrap();
    let log = staging.path().join("events.jsonl");
    let config = format!(
        "[events]\njournal = false\n[[events.command]]\nname = \"recorder\"\nargv = [\"tee\", \"-a\", {:?}]\n",
        log.display().to_string()
    );
    let daemon = Daemon::start_with(Some(&config));
    let cert = id(&daemon.json(&["request", "cmd.internal"]));
    let text = wait_until(
        Duration::from_secs(30),
        "the command to record the event",
        || {
            std::fs::read_to_string(&log)
                .ok()
                .filter(|t| t.contains(&cert))
        },
    );
    let event: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(event["detail-type"], "Certificate Available");
    assert_eq!(event["source"], "certkeeper");
    assert_eq!(event["detail"]["Action"], "ISSUANCE");
}

#[test]
fn metrics_parse_with_promtool_and_check_exit_codes_follow_the_plugin_convention() {
    let daemon = Daemon::start();
    let ok = id(&daemon.json(&["request", "fine.internal"]));
    let text = daemon.ok(&["metrics"]);
    promtool_check_metrics(&text);
    for family in [
        "certkeeper_certificate_not_after_timestamp_seconds",
        "certkeeper_certificate_not_before_timestamp_seconds",
        "certkeeper_certificate_renewal_timestamp_seconds",
        "certkeeper_certificate_days_to_expiry",
        "certkeeper_certificate_status",
        "certkeeper_build_info",
        "certkeeper_outbox_depth",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "{family} missing:\n{text}"
        );
    }
    assert!(text.contains(&format!("certkeeper_certificate_status{{id=\"{ok}\",name=\"fine.internal\",origin=\"private\",common_name=\"fine.internal\",issuer=\"default\",status=\"issued\"}} 1")), "{text}");

    assert_eq!(check(&daemon, &[]).0, 0);
    daemon.json(&["request", "soon.internal", "--validity", "20d"]);
    let (code, line) = check(&daemon, &["--warning", "30d", "--critical", "7d"]);
    assert_eq!(code, 1, "{line}");
    assert!(
        line.starts_with("CERTKEEPER WARNING - 1 expiring within 30d (soon.internal in 19 days)"),
        "{line}"
    );
    daemon.json(&["request", "urgent.internal", "--validity", "3d"]);
    let (code, line) = check(&daemon, &[]);
    assert_eq!(code, 2, "{line}");
    assert!(line.contains("| certificates=3"), "{line}");
    assert_eq!(
        check(&daemon, &["--certificate", &ok]).0,
        0,
        "one certificate only"
    );
    // Daemon unreachable: UNKNOWN.
    let out = Command::new(BIN)
        .args(["check", "--socket", "/nonexistent.sock"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("CERTKEEPER UNKNOWN - "));
}

fn promtool_check_metrics(text: &str) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) must be installed: tests/peers/install.sh");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // promtool exits 1 both for unparsable input and for naming lints. The one lint allowed is
    // the unit of `certkeeper_certificate_days_to_expiry`, a name the product specifies (days
    // are what people read; the timestamp families carry the same fact in seconds).
    let allowed =
        "certkeeper_certificate_days_to_expiry use base unit \"seconds\" instead of \"days\"";
    let problems: Vec<&str> = report
        .lines()
        .filter(|l| !l.trim().is_empty() && *l != allowed)
        .collect();
    assert!(
        problems.is_empty(),
        "promtool rejected the metrics:\n{report}\n{text}"
    );
}

#[test]
fn shipped_alert_rules_pass_promtool() {
    let rules = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/alerts.yml");
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .expect("promtool");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let test = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/alerts.test.yml");
    let out = Command::new("promtool")
        .args(["test", "rules"])
        .arg(&test)
        .output()
        .expect("promtool");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn account_days_before_expiry_is_set_through_the_api() {
    let daemon = Daemon::start();
    assert_eq!(daemon.json(&["config", "get"])["days_before_expiry"], 45);
    assert_eq!(
        daemon.json(&["config", "set", "days-before-expiry", "30"])["days_before_expiry"],
        30
    );
    let stderr = daemon.fails(&["config", "set", "days-before-expiry", "400"], 65);
    assert!(stderr.contains("1..=365"), "{stderr}");
    let imported_like =
        id(&daemon.json(&["request", "thr.internal", "--days-before-expiry", "10"]));
    let explained = daemon.json(&["explain", &imported_like]);
    assert!(
        explained["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r.as_str().unwrap().contains("days-before-expiry 10"))
    );
}
