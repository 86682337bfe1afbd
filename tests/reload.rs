//! What a running daemon does with a reloaded config (SIGHUP) and with a task that dies,
//! through the real binary: a reload applies every key not marked `[restart]` (here the daily
//! check's schedule and a new webhook sink) without a restart, and warns about those it cannot;
//! a task that ends while the daemon runs stops it with a non-zero exit and an error line
//! naming the task, so that systemd restarts it.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::webhook::Receiver;
use common::{Daemon, id, wait_until};

/// A config with `daily_check` and, when given, one webhook to `hook_url`.
fn config(dir: &std::path::Path, daily_check: &str, hook_url: Option<&str>) -> String {
    let mut text = format!("[events]\ndaily-check = {daily_check:?}\n");
    if let Some(url) = hook_url {
        let secret = dir.join("hook.secret");
        common::write_secret(&secret, "reload secret\n");
        text.push_str(&format!(
            "[[events.webhook]]\nname = \"added\"\nurl = {url:?}\nsecret-file = {:?}\n",
            secret.display().to_string()
        ));
    }
    text
}

fn approaching(daemon: &Daemon, cert: &str) -> usize {
    daemon
        .ok(&["events", "--output", "json"])
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| {
            e["detail-type"] == "Certificate Approaching Expiration" && e["resources"][0] == cert
        })
        .count()
}

/// Imports a certificate that expires in two days: inside the 45-day threshold, so every daily
/// check that runs sends it an Approaching Expiration event (once per UTC day).
fn import_expiring(daemon: &Daemon) -> String {
    let dir = daemon.dir.path();
    common::make_csr(dir, "soon", "soon.internal", "DNS:soon.internal");
    let signed = daemon.ok(&["sign", "--csr", "soon.csr", "--validity", "2d"]);
    daemon.write("soon.pem", common::first_certificate(&signed));
    id(&daemon.json(&[
        "import",
        "--certificate",
        "soon.pem",
        "--private-key",
        "soon.key",
        "--name",
        "soon",
    ]))
}

#[test]
fn sighup_applies_a_new_daily_check_and_a_new_webhook_without_a_restart() {
    let staging = tempfile::tempdir().unwrap();
    // A daily check that will not run during the test (New Year), and no webhook.
    let daemon = Daemon::start_with(Some(&config(staging.path(), "0 0 1 1 *", None)));
    let pid = daemon.pid();
    // Imported after the start's catch-up check: only a later check can announce it.
    let cert = import_expiring(&daemon);
    assert_eq!(approaching(&daemon, &cert), 0);

    // The file now runs the check every two seconds and adds a webhook; it also changes a
    // key only a restart applies.
    let receiver = Receiver::start(b"reload secret");
    let reloaded = config(daemon.dir.path(), "*/2 * * * * *", Some(&receiver.url))
        + "[api]\nrequest-timeout = \"30s\"\n";
    std::fs::write(daemon.config.as_ref().unwrap(), reloaded).unwrap();
    daemon.signal("HUP");

    let delivered = wait_until(
        Duration::from_secs(60),
        "the reloaded daily check's event at the reloaded webhook",
        || {
            let got: Vec<_> = receiver
                .deliveries()
                .into_iter()
                .filter(|d| {
                    d.detail_type == "Certificate Approaching Expiration"
                        && d.body["resources"][0] == cert.as_str()
                })
                .collect();
            (!got.is_empty()).then_some(got)
        },
    );
    assert!(delivered[0].signature_ok, "{:?}", delivered[0]);
    assert_eq!(approaching(&daemon, &cert), 1, "once per UTC day");
    assert_eq!(daemon.pid(), pid, "the same process: no restart");

    let log = daemon.log_text();
    assert!(
        log.contains("daily expiry check rescheduled"),
        "the scheduler took the new schedule:\n{log}"
    );
    let restart_warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("takes effect at the next restart"))
        .collect();
    assert_eq!(restart_warnings.len(), 1, "{restart_warnings:?}");
    assert!(
        restart_warnings[0].contains("api.request-timeout"),
        "{restart_warnings:?}"
    );
}

#[test]
fn a_task_that_dies_stops_the_daemon_non_zero_with_an_error_naming_it() {
    let mut daemon = Daemon::start();
    daemon.json(&["request", "before.internal"]);
    let (status, _) = daemon.stop();
    assert!(status.success());

    // The outbox gets a row this certkeeper cannot read (a damaged file, a downgrade): an
    // event of a type that does not exist. The journal sink meets it right after the start.
    let db = rusqlite::Connection::open(daemon.state_dir.join("certkeeper.db")).unwrap();
    let body = serde_json::json!({
        "version": "0",
        "id": "0190d9c4-0000-7000-8000-000000000000",
        "detail-type": "Certificate Exploded",
        "source": "certkeeper",
        "time": "2026-12-01T00:00:00Z",
        "resources": [],
        "detail": {},
    });
    db.execute(
        "INSERT INTO events (id, time, detail_type, certificate_id, body) VALUES (?, 0, ?, NULL, ?)",
        rusqlite::params![
            "0190d9c4-0000-7000-8000-000000000000",
            "Certificate Exploded",
            body.to_string()
        ],
    )
    .unwrap();
    drop(db);

    let mut child = daemon.command().stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the daemon went on running with a dead event sink");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    // EX_DATAERR, which the unit does not restart on: the same row would stop it again.
    assert_eq!(status.code(), Some(65), "{stderr}");
    let error_line = stderr
        .lines()
        .find(|l| l.contains("ERROR") && l.contains("task ended while the daemon was running"))
        .unwrap_or_else(|| panic!("no error line naming the task:\n{stderr}"));
    assert!(error_line.contains("event sinks"), "{error_line}");
    assert!(
        error_line.contains("event sink journal: the outbox is damaged")
            && error_line.contains("Certificate Exploded"),
        "{error_line}"
    );
}

/// Security review L13: a reload rejected for a value of the wrong type logs the file, key and
/// expected type, not the value (here a token where an argv belongs).
#[test]
fn a_rejected_reload_does_not_log_the_value() {
    let daemon = Daemon::start_with(Some("[events]\ndaily-check = \"0 0 1 1 *\"\n"));
    std::fs::write(
        daemon.config.as_ref().unwrap(),
        "[[events.command]]\nname = \"hook\"\nargv = \"/usr/bin/notify --token SUPERSECRETTOKEN123\"\n",
    )
    .unwrap();
    daemon.signal("HUP");
    let line = wait_until(Duration::from_secs(60), "the rejected reload", || {
        daemon
            .log_text()
            .lines()
            .find(|l| l.contains("config reload rejected"))
            .map(str::to_owned)
    });
    assert!(
        line.contains("certkeeper.toml:3:")
            && line.contains("events.command[0].argv: invalid type: string, expected a sequence"),
        "{line}"
    );
    assert!(!daemon.log_text().contains("SUPERSECRETTOKEN123"));
    // The running config is kept.
    daemon.json(&["list"]);
}
