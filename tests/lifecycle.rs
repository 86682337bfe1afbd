//! Lifecycle automation through the real binary, in real time with short lifetimes: the daemon
//! renews by itself, backs off on failure, sends expiry events, delivers events to a real HTTP
//! receiver and a command, and exposes metrics that promtool accepts. No timed assertions:
//! every wait is "until it happens, or fail after a generous bound".
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::process::Command;
use std::time::Duration;

use common::webhook::Receiver;
use common::{BIN, Daemon, id, wait_until};

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
/// Lets requests ask for the short validities these tests run on in real time.
const SHORT_LIVED: &str = "[defaults]\nminimum-validity = \"1m\"\n";

#[test]
fn renews_by_itself_and_resumes_after_a_restart() {
    let mut daemon = Daemon::start_with(Some(SHORT_LIVED));
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

/// `fragile.internal`, three minutes from CA `team`, which is then disabled: every renewal
/// fails. The first attempt comes at the renewal floor (72 s, two fifths of the real life),
/// leaving more than the first backoff before expiry.
fn fragile(daemon: &Daemon, args: &[&str]) -> String {
    daemon.ok(&["ca", "create", "team", "--parent", "default"]);
    let mut all = vec![
        "request",
        "fragile.internal",
        "--ca",
        "team",
        "--validity",
        "3m",
    ];
    all.extend(args);
    let cert = id(&daemon.json(&all));
    // The CA's key becomes unavailable: every renewal through it fails.
    daemon.ok(&["ca", "disable", "team"]);
    cert
}

#[test]
fn a_failing_renewal_backs_off_raises_action_required_and_recovers() {
    let daemon = Daemon::start_with(Some(SHORT_LIVED));
    let cert = fragile(&daemon, &["--renew-before", "170s"]);

    let failed = wait_until(Duration::from_secs(120), "a failed renewal", || {
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
    // Thresholds below the certificate's three-minute lifetime, so only the failure counts.
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

/// Issue 9: short lifetimes must not page anyone. Healthy certificates of 24 hours to 395 days
/// are quiet in `check`; one whose renewal a maintenance window holds until the last tenth of
/// its life sends no Approaching Expiration (it is on schedule); one whose renewal fails is a
/// WARNING with the event, then CRITICAL once under a tenth of its life is left.
#[test]
fn check_and_expiry_events_follow_the_renewal_plan() {
    let daemon = Daemon::start_with(Some(&format!(
        "{SHORT_LIVED}[events]\ndaily-check = \"*/2 * * * * *\"\n"
    )));
    // Eight minutes of life (backdated five): inside its last tenth 48 s before expiry.
    let fragile = fragile(&daemon, &[]);
    // Held for a yearly window: renewed when a tenth of its six minutes is left, inside the
    // quarter that is its expiry-event threshold.
    let held = id(&daemon.json(&[
        "request",
        "held.internal",
        "--validity",
        "1m",
        "--window",
        "0 0 1 1 *",
        "--window-duration",
        "1h",
    ]));
    for validity in ["24h", "6d", "45d", "90d", "395d"] {
        daemon.json(&[
            "request",
            &format!("v{validity}.internal"),
            "--validity",
            validity,
        ]);
    }
    let (code, line) = check(&daemon, &[]);
    assert_eq!(code, 0, "all on schedule: {line}");
    assert!(line.contains("7 certificates"), "{line}");

    wait_until(Duration::from_secs(120), "the held renewal", || {
        (version(&daemon, &held) > 1).then_some(())
    });
    assert_eq!(
        events_for(&daemon, &held, "Certificate Approaching Expiration"),
        Vec::<serde_json::Value>::new(),
        "renewed on schedule: no expiry event"
    );

    let failing = check_until(&daemon, 1, "a failing renewal");
    assert!(
        failing.contains("1 renewal(s) failing (fragile.internal: "),
        "{failing}"
    );
    wait_until(Duration::from_secs(60), "an expiry event", || {
        let e = events_for(&daemon, &fragile, "Certificate Approaching Expiration");
        (!e.is_empty()).then_some(())
    });
    let critical = check_until(&daemon, 2, "under a tenth of the life left");
    assert!(
        critical.starts_with("CERTKEEPER CRITICAL - 1 expiring unrenewed (fragile.internal in "),
        "{critical}"
    );
}

/// Runs `certkeeper check` until it exits with `code`; its status line.
fn check_until(daemon: &Daemon, code: i32, what: &str) -> String {
    wait_until(Duration::from_secs(120), what, || {
        let (got, line) = check(daemon, &[]);
        (got == code).then_some(line)
    })
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
    let daemon = Daemon::start_with(Some(&format!(
        "{SHORT_LIVED}[events]\ndaily-check = \"*/2 * * * * *\"\n"
    )));
    let dir = daemon.dir.path();
    common::make_csr(dir, "imp", "imported.internal", "DNS:imported.internal");
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
    daemon.write("imp.pem", common::first_certificate(&signed));
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
        common::write_secret(&secret, "hook secret\n");
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

    // A crash while the receiver is still down: the cursor is in the store (saved when the
    // first delivery failed), so what the receiver had does not come again.
    daemon.kill();
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
    assert_eq!(
        got.len(),
        6,
        "nothing delivered before the crash came again: {got:#?}"
    );
    assert!(got.iter().any(|d| d.detail_type == "Certificate Revoked"));
    // The filter kept other detail types out.
    assert!(got.iter().all(
        |d| d.detail_type == "Certificate Available" || d.detail_type == "Certificate Revoked"
    ));

    // Two more events, and a clean stop right after their delivery: the second is delivered
    // within a second of the first, whose delivery may have saved the cursor, so only the
    // stop saves it past the second. The restarted daemon sends neither again.
    daemon.json(&["request", "hook5.internal"]);
    daemon.json(&["request", "hook6.internal"]);
    let before = receiver
        .wait_for(got.len() + 2, Duration::from_secs(30))
        .len();
    std::thread::sleep(Duration::from_millis(300)); // the daemon reads the receiver's 200
    daemon.stop();
    daemon.spawn();
    daemon.json(&["request", "hook7.internal"]);
    receiver.wait_for(before + 1, Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(2));
    let after_wait = receiver.deliveries();
    assert_eq!(
        after_wait.len(),
        before + 1,
        "after a clean stop only the new event arrives: {:#?}",
        &after_wait[before..]
    );
    assert!(
        after_wait
            .last()
            .is_some_and(|d| d.body["detail"]["CommonName"] == "hook7.internal")
    );
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

/// L7 of the security review: a command runs with a clean environment (no systemd variables,
/// nothing secret-looking the daemon was given), and what it prints on stderr is bounded and
/// redacted before it reaches the log.
#[test]
fn command_sinks_get_a_clean_environment_and_their_stderr_is_bounded_and_redacted() {
    let staging = tempfile::tempdir().unwrap();
    let credentials = common::credentials_directory(staging.path());
    let dump = staging.path().join("env.txt");
    let secret = "tok-5f3a9c1e-daemon-only";
    let config = format!(
        "[events]\njournal = false\n\
         [[events.command]]\nname = \"env-dump\"\nargv = [\"sh\", \"-c\", \"env > \\\"$0\\\"\", {dump:?}]\n\
         [[events.command]]\nname = \"noisy\"\nargv = [\"sh\", \"-c\", \"yes 'progress line' | head -c 3000000 >&2; echo \\\"upload failed: api_token=$0 Authorization: Bearer $0\\\" >&2; exit 1\", {secret:?}]\n",
        dump = dump.display().to_string(),
    );
    let credentials = credentials.display().to_string();
    let daemon = Daemon::start_with_env(
        Some(&config),
        &[
            ("CREDENTIALS_DIRECTORY", &credentials),
            ("DNS_API_TOKEN", secret),
            ("INVOCATION_ID", "0123456789abcdef0123456789abcdef"),
        ],
    );
    let cert = id(&daemon.json(&["request", "env.internal"]));
    let text = wait_until(Duration::from_secs(30), "the environment dump", || {
        std::fs::read_to_string(&dump)
            .ok()
            .filter(|t| t.contains(&cert))
    });
    common::assert_clean_environment(&text, secret);
    for name in [
        "CERTKEEPER_EVENT_ID",
        "CERTKEEPER_EVENT_TYPE",
        "CERTKEEPER_CERTIFICATE_ID",
    ] {
        assert!(
            text.contains(&format!("{name}=")),
            "{name} missing:\n{text}"
        );
    }

    // The failing sink's error is logged: its stderr's tail, redacted, not 3 MB of it.
    let log = wait_until(Duration::from_secs(30), "the noisy sink's failure", || {
        Some(daemon.log_text()).filter(|log| log.contains("upload failed"))
    });
    assert!(!log.contains(secret), "the token reached the log:\n{log}");
    let line = log.lines().find(|l| l.contains("upload failed")).unwrap();
    assert!(
        line.contains("api_token=[redacted] Authorization: Bearer [redacted]"),
        "{line}"
    );
    assert!(line.len() < 4 * 1024, "{} bytes: {line}", line.len());
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
    // Renewed certificates follow their renewal plan; --fixed-thresholds weighs them against
    // the spans like certificates nobody renews.
    daemon.json(&["request", "soon.internal", "--validity", "20d"]);
    let fixed = ["--warning", "30d", "--critical", "7d", "--fixed-thresholds"];
    let (code, line) = check(&daemon, &fixed);
    assert_eq!(code, 1, "{line}");
    assert!(
        line.starts_with("CERTKEEPER WARNING - 1 expiring within 30d (soon.internal in 19 days)"),
        "{line}"
    );
    daemon.json(&["request", "urgent.internal", "--validity", "3d"]);
    let (code, line) = check(&daemon, &["--fixed-thresholds"]);
    assert_eq!(code, 2, "{line}");
    assert!(line.contains("| certificates=3"), "{line}");
    let (code, line) = check(&daemon, &[]);
    assert_eq!(code, 0, "renewed on schedule: {line}");
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

#[test]
fn a_renewal_policy_changed_between_runs_replans_stored_deadlines() {
    let mut daemon = Daemon::start_with(Some("[renewal]\nrenew-before = \"60d\"\n"));
    let cert = daemon.json(&["request", "replan.internal", "--validity", "395d"]);
    let not_after = time_of(&cert["not_after"]);
    let before_expiry =
        |c: &serde_json::Value| (not_after - time_of(&c["next_renewal_at"])) as f64 / 86_400.0;
    let first = before_expiry(&cert);
    assert!(
        (60.0..60.6).contains(&first),
        "renews 60 days (plus jitter) before expiry: {first}"
    );

    daemon.stop();
    std::fs::write(
        daemon.config.as_ref().unwrap(),
        "[renewal]\nrenew-before = \"30d\"\n",
    )
    .unwrap();
    daemon.spawn();
    let replanned = daemon.json(&["describe", &id(&cert)]);
    let second = before_expiry(&replanned);
    assert!(
        (30.0..30.6).contains(&second),
        "planned again under the new policy: {second}"
    );
    assert!(
        daemon.log_text().contains("renewal policy changed"),
        "{}",
        daemon.log_text()
    );
}

/// Webhooks verify the receiver's TLS certificate: against the system's roots plus
/// `ca-file` when given. Without it, a private CA's receiver is refused and events wait.
#[test]
fn webhook_tls_is_verified_with_an_optional_custom_ca() {
    let pki = tempfile::tempdir().unwrap();
    let dir = pki.path();
    let ssl = |args: &[&str]| common::openssl(dir, args);
    ssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "ca.key",
        "-subj",
        "/CN=hooks test CA",
        "-days",
        "2",
        "-out",
        "ca.pem",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
    ]);
    common::make_csr(dir, "hook", "127.0.0.1", "IP:127.0.0.1");
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    ssl(&[
        "x509",
        "-req",
        "-in",
        "hook.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
        "-out",
        "hook.pem",
    ]);
    let receiver = Receiver::start_tls(
        b"tls secret",
        &std::fs::read(dir.join("hook.pem")).unwrap(),
        &std::fs::read(dir.join("hook.key")).unwrap(),
    );
    common::write_secret(&dir.join("secret"), "tls secret");
    let config = |ca: bool| {
        let mut text = format!(
            "[[events.webhook]]\nname = \"tls\"\nurl = {:?}\nsecret-file = {:?}\n",
            receiver.url,
            dir.join("secret").display().to_string()
        );
        if ca {
            text.push_str(&format!(
                "ca-file = {:?}\n",
                dir.join("ca.pem").display().to_string()
            ));
        }
        text
    };

    // Without the custom CA: the handshake fails, nothing is delivered, the error is logged.
    let untrusting = Daemon::start_with(Some(&config(false)));
    untrusting.json(&["request", "untrusted.internal"]);
    wait_until(Duration::from_secs(30), "a logged TLS failure", || {
        untrusting
            .log_text()
            .contains("event delivery failed")
            .then_some(())
    });
    assert!(
        receiver.deliveries().is_empty(),
        "an unverified receiver must get nothing"
    );

    // With it: delivered over verified TLS.
    let trusting = Daemon::start_with(Some(&config(true)));
    let cert = id(&trusting.json(&["request", "trusted.internal"]));
    let got = receiver.wait_for(1, Duration::from_secs(30));
    assert!(
        got.iter()
            .any(|d| d.signature_ok && d.body["resources"][0] == cert.as_str()),
        "{got:#?}"
    );
}

/// Events are pruned after the retention period, but never before every sink has them.
#[test]
fn retention_never_prunes_undelivered_events() {
    let receiver = Receiver::start(b"s");
    let staging = tempfile::tempdir().unwrap();
    common::write_secret(&staging.path().join("secret"), "s");
    let config = format!(
        "[events]\ndaily-check = \"*/1 * * * * *\"\nretention = \"1s\"\n[[events.webhook]]\nname = \"slow\"\nurl = {:?}\nsecret-file = {:?}\n",
        receiver.url,
        staging.path().join("secret").display().to_string()
    );
    receiver.set_down(true);
    let daemon = Daemon::start_with(Some(&config));
    let cert = id(&daemon.json(&["request", "kept.internal"]));
    // Several daily checks (each prunes) run while the receiver refuses the event.
    wait_until(Duration::from_secs(30), "refused deliveries", || {
        (*receiver.refused.lock().unwrap() >= 3).then_some(())
    });
    assert_eq!(
        events_for(&daemon, &cert, "Certificate Available").len(),
        1,
        "kept while undelivered"
    );
    receiver.set_down(false);
    receiver.wait_for(1, Duration::from_secs(60));
    wait_until(
        Duration::from_secs(30),
        "the delivered event to be pruned",
        || {
            events_for(&daemon, &cert, "Certificate Available")
                .is_empty()
                .then_some(())
        },
    );
}

#[test]
fn aggregate_metrics_without_per_certificate_series() {
    let daemon = Daemon::start_with(Some("[metrics]\nper-certificate = false\n"));
    daemon.json(&["request", "one.internal"]);
    daemon.json(&["request", "two.internal", "--validity", "3d"]);
    let text = daemon.ok(&["metrics"]);
    promtool_check_metrics(&text);
    assert!(
        !text.contains("certkeeper_certificate_status{"),
        "no per-certificate series:\n{text}"
    );
    assert!(
        text.contains("certkeeper_certificates{status=\"issued\",origin=\"private\"} 2"),
        "{text}"
    );
    assert!(text.contains("certkeeper_renewals_failing 0"), "{text}");
    let earliest = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("certkeeper_earliest_expiry_timestamp_seconds{origin=\"private\"} ")
        })
        .unwrap();
    let left = earliest.parse::<i64>().unwrap() - time::OffsetDateTime::now_utc().unix_timestamp();
    assert!(
        (3 * 86_400 - 120..=3 * 86_400).contains(&left),
        "the 3-day certificate is the earliest: {left} s left"
    );
}

#[test]
fn metrics_are_served_on_the_optional_tcp_listener() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let daemon = Daemon::start_with(Some(&format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n")));
    daemon.json(&["request", "scraped.internal"]);
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.contains("certkeeper_certificate_status{") && text.contains("scraped.internal"),
        "{text}"
    );
    // Only metrics on that port: the API stays on the socket.
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .write_all(b"GET /v1/certificates HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 404"), "{text}");
}

#[test]
fn a_certificate_window_holds_its_renewal() {
    let daemon = Daemon::start();
    let cert = daemon.json(&[
        "request",
        "windowed.internal",
        "--validity",
        "90d",
        "--window",
        "0 3 * * 2",
        "--window-duration",
        "2h",
        "--window-time-zone",
        "Europe/Berlin",
    ]);
    let at = time::OffsetDateTime::parse(
        cert["next_renewal_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let local = at.to_offset(time::UtcOffset::from_hms(1, 0, 0).unwrap());
    assert_eq!(local.weekday(), time::Weekday::Tuesday, "{at}");
    assert_eq!(
        (local.hour(), local.minute()),
        (3, 0),
        "03:00 Berlin (winter time in February) {at}"
    );
    let explained = daemon.json(&["explain", &id(&cert)]);
    assert_eq!(explained["rule"], "maintenance window", "{explained}");
    let stderr = daemon.fails(
        &[
            "request",
            "bad.internal",
            "--window",
            "0 3 * *",
            "--window-duration",
            "2h",
        ],
        65,
    );
    assert!(stderr.contains("0 3 * *"), "{stderr}");
}

/// H1 of the security review: a validity shorter than the five minutes certkeeper backdates by
/// used to make every new version due at once (thousands of versions and events a minute). A
/// new version now waits until it has served two fifths of its real life; and by default such
/// validities are refused, naming the setting.
#[test]
fn a_three_minute_certificate_does_not_renew_in_a_loop() {
    let daemon = Daemon::start_with(Some(SHORT_LIVED));
    let cert = daemon.json(&["request", "brief.internal", "--validity", "3m"]);
    let created = at(&cert["created_at"]);
    let next = at(&cert["next_renewal_at"]);
    assert!(
        next >= created + time::Duration::seconds(60),
        "the first renewal waits for the floor: created {created}, next {next}"
    );
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        version(&daemon, &id(&cert)),
        1,
        "no renewal in the first seconds"
    );
    let explained = daemon.json(&["explain", &id(&cert)]);
    assert_eq!(explained["next_action"], "renew", "{explained}");
    assert!(
        explained["rule"]
            .as_str()
            .unwrap()
            .contains("renewal floor"),
        "{explained}"
    );

    // Under the default minimum (1h) the same request is refused.
    let strict = Daemon::start();
    let stderr = strict.fails(&["request", "brief.internal", "--validity", "3m"], 65);
    assert!(stderr.contains("defaults.minimum-validity"), "{stderr}");
    assert_eq!(strict.count(), 0, "nothing stored");
}

fn at(value: &serde_json::Value) -> time::OffsetDateTime {
    time::OffsetDateTime::parse(
        value.as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap()
}

/// L5 of the security review: a webhook receiver answering 307 made certkeeper re-send the
/// signed event to the location it named, and count that as delivered. A redirect is now a
/// failed delivery, retried at the configured URL; the other location never hears of it.
#[test]
fn webhooks_do_not_follow_redirects() {
    let receiver = Receiver::start(b"hook secret");
    let elsewhere = Receiver::start(b"hook secret");
    receiver.set_redirect(Some(&elsewhere.url));
    let staging = tempfile::tempdir().unwrap();
    let secret = staging.path().join("hook.secret");
    common::write_secret(&secret, "hook secret\n");
    let daemon = Daemon::start_with(Some(&format!(
        "[[events.webhook]]\nname = \"ops\"\nurl = {:?}\nsecret-file = {:?}\n",
        receiver.url,
        secret.display().to_string()
    )));
    daemon.json(&["request", "redirected.internal"]);
    wait_until(
        Duration::from_secs(30),
        "two delivery attempts answered with a redirect",
        || (*receiver.refused.lock().unwrap() >= 2).then_some(()),
    );
    assert!(
        elsewhere.deliveries().is_empty(),
        "the redirect's target got the event: {:?}",
        elsewhere.deliveries()
    );
    receiver.set_redirect(None);
    let got = receiver.wait_for(1, Duration::from_secs(60));
    assert_eq!(got[0].detail_type, "Certificate Available");
    assert!(elsewhere.deliveries().is_empty());
}
