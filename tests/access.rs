//! Who may do what, and what is left behind: the read-only socket, the audit log, socket and
//! state-directory modes, and no core dumps (M1, M7, M8 and L12 of the security review).
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{BIN, Daemon, http, id, wait_until};

/// Files named like a core dump in `dir` (`core`, or `core.PID` with core_uses_pid).
fn cores_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name == "core" || name.starts_with("core."))
        .collect()
}

/// Runs `program args` under `ulimit -c unlimited` in `dir`.
fn with_cores_on(dir: &Path, program: &str, args: &[&str]) -> Child {
    Command::new("sh")
        .arg("-c")
        .arg("ulimit -c unlimited && exec \"$0\" \"$@\"")
        .arg(program)
        .args(args)
        .current_dir(dir)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("CREDENTIALS_DIRECTORY")
        .env_remove("STATE_DIRECTORY")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// SIGABRT, whose default action is a core dump (SIGSEGV sent with kill(1) is caught by Rust's
/// stack-overflow handler and would not end the daemon; SIGQUIT is ignored by whatever a
/// non-interactive shell started with `&`, which a test run may well be). Fails after a minute.
fn crash(child: &mut Child) {
    let status = Command::new("kill")
        .args(["-ABRT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let ended = wait_until(Duration::from_secs(60), "the crash", || {
        child.try_wait().unwrap()
    });
    assert!(!ended.success(), "{ended}");
}

/// M1: a crashing daemon writes no core file, even with core dumps switched on. A plain
/// process in the same setup does write one: that is what makes the check able to fail.
#[test]
fn a_crashing_daemon_leaves_no_core_dump() {
    let pattern = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap();
    assert!(
        !pattern.starts_with('|') && !pattern.contains('/'),
        "this test needs core_pattern to write into the working directory; it is {pattern:?}"
    );
    let dir = tempfile::tempdir().unwrap();
    let control = dir.path().join("control");
    let daemon = dir.path().join("daemon");
    std::fs::create_dir(&control).unwrap();
    std::fs::create_dir(&daemon).unwrap();

    let mut sleeper = with_cores_on(&control, "sleep", &["60"]);
    // Signalled before the shell has exec'd it (a loaded machine), the shell would take the
    // SIGABRT instead; so wait for the exec.
    let comm = format!("/proc/{}/comm", sleeper.id());
    wait_until(
        Duration::from_secs(60),
        "the control process to start",
        || {
            std::fs::read_to_string(&comm)
                .is_ok_and(|name| name.trim() == "sleep")
                .then_some(())
        },
    );
    crash(&mut sleeper);
    assert!(
        !cores_in(&control).is_empty(),
        "the control process left no core: the machine does not dump cores here"
    );

    let state = daemon.join("state");
    let mut serve = with_cores_on(
        &daemon,
        BIN,
        &["serve", "--state-dir", state.to_str().unwrap()],
    );
    let socket = state.join("api.sock");
    wait_until(Duration::from_secs(60), "the daemon to listen", || {
        std::os::unix::net::UnixStream::connect(&socket).ok()
    });
    crash(&mut serve);
    assert_eq!(
        cores_in(&daemon),
        Vec::<String>::new(),
        "no core dump of the daemon"
    );
}

/// A daemon with `daemon.read-only-socket` at `<dir>/public/ro.sock`, in a temp directory
/// every user may traverse (the state directory itself stays 0700).
fn with_read_only_socket() -> (Daemon, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let public = dir.path().join("public");
    std::fs::create_dir(&public).unwrap();
    std::fs::set_permissions(&public, std::fs::Permissions::from_mode(0o755)).unwrap();
    let read_only = public.join("ro.sock");
    let state = dir.path().join("state");
    let config = format!(
        "[daemon]\nstate-dir = \"{}\"\nread-only-socket = \"{}\"\n",
        state.display(),
        read_only.display()
    );
    let daemon = Daemon::start_in(dir, Some(&config));
    std::fs::set_permissions(
        daemon.config.as_ref().unwrap(),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    (daemon, read_only)
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// M8: the read-only socket answers every read monitoring needs and refuses, with 403
/// `read-only`, everything that changes state or hands out a key; nothing it refuses happens.
#[test]
fn the_read_only_socket_serves_reads_and_refuses_the_rest() {
    let (daemon, ro) = with_read_only_socket();
    assert_eq!(mode(&ro), 0o666, "read-only socket's default mode");
    assert_eq!(mode(&daemon.socket), 0o660, "the API socket keeps its own");
    let cert = id(&daemon.json(&["request", "ro.internal"]));

    for path in [
        "/v1/health".to_owned(),
        "/v1/certificates".to_owned(),
        format!("/v1/certificates/{cert}"),
        format!("/v1/certificates/{cert}/explain"),
        "/v1/events".to_owned(),
        "/metrics".to_owned(),
    ] {
        let (status, body) = http(&ro, "GET", &path, None);
        assert_eq!(status, 200, "GET {path}: {body}");
    }

    let export = br#"{"passphrase":"correct horse battery","format":"pem"}"#;
    for (method, path, body) in [
        (
            "POST",
            "/v1/certificates".to_owned(),
            Some(&br#"{"domains":["x.internal"]}"#[..]),
        ),
        (
            "POST",
            format!("/v1/certificates/{cert}/export"),
            Some(&export[..]),
        ),
        ("GET", format!("/v1/certificates/{cert}/pem"), None),
        ("DELETE", format!("/v1/certificates/{cert}"), None),
        ("POST", format!("/v1/certificates/{cert}/renew"), None),
        ("POST", "/v1/cas/default/disable".to_owned(), None),
        ("POST", "/v1/master-key/rotate".to_owned(), None),
        (
            "PUT",
            "/v1/account".to_owned(),
            Some(&br#"{"days_before_expiry":10}"#[..]),
        ),
        ("GET", "/v1/audit".to_owned(), None),
        ("GET", "/v1/cas".to_owned(), None),
        ("GET", "/v1/no-such-thing".to_owned(), None),
    ] {
        let (status, answer) = http(&ro, method, &path, body);
        assert_eq!(status, 403, "{method} {path}: {answer}");
        let error: serde_json::Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(
            error["error"]["code"], "read-only",
            "{method} {path}: {answer}"
        );
    }
    // Nothing refused happened: one certificate, still there, CA enabled, account unchanged.
    assert_eq!(daemon.count(), 1);
    let ca = daemon.json(&["ca", "describe", "default"]);
    assert_eq!(ca["state"], "active", "{ca}");
    let (_, account) = http(&daemon.socket, "GET", "/v1/account", None);
    assert!(!account.contains(":10"), "account unchanged: {account}");
}

/// M8 as the review found it: a monitoring user who may not use the API socket runs
/// `certkeeper check`, `list` and `describe` with no flags (the CLI falls back to the
/// read-only socket named in the config), and cannot export a key.
#[test]
fn a_monitoring_user_can_check_but_not_export() {
    let (daemon, _ro) = with_read_only_socket();
    let cert = id(&daemon.json(&["request", "mon.internal"]));
    let config = daemon.config.clone().unwrap();
    let as_nobody = |args: &[&str]| {
        Command::new("setpriv")
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", BIN])
            .args(args)
            .arg("--config")
            .arg(&config)
            .env_remove("CERTKEEPER_SOCKET")
            .output()
            .unwrap()
    };
    let check = as_nobody(&["check"]);
    let line = String::from_utf8_lossy(&check.stdout);
    assert_eq!(
        check.status.code(),
        Some(0),
        "check as nobody: {line} {}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(line.starts_with("CERTKEEPER OK"), "{line}");
    let list = as_nobody(&["list"]);
    assert!(
        list.status.success(),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );
    assert!(String::from_utf8_lossy(&list.stdout).contains("mon.internal"));

    let pass = daemon.write("pass.txt", "correct horse battery\n");
    std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o644)).unwrap();
    let export = as_nobody(&["export", &cert, "--passphrase-file", pass.to_str().unwrap()]);
    assert_eq!(
        export.status.code(),
        Some(69),
        "export as nobody must not reach the API: {}",
        String::from_utf8_lossy(&export.stdout)
    );
    assert!(!String::from_utf8_lossy(&export.stdout).contains("PRIVATE KEY"));
}

/// Audit records as `certkeeper audit --output json` prints them, one per line.
fn audit_records(daemon: &Daemon) -> Vec<serde_json::Value> {
    daemon
        .ok(&["audit", "--output", "json"])
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// M7: every call that changes state or exports a key leaves a record with the caller's uid
/// and pid, the operation, what it named, and how it ended, failures included; reads leave
/// none. The records are in the log too, and survive a restart.
#[test]
fn the_audit_log_names_who_exported_deleted_and_disabled() {
    let mut daemon = Daemon::start();
    let cert = id(&daemon.json(&["request", "audit.internal"]));
    let pass = daemon.write("pass.txt", "correct horse battery\n");
    daemon.ok(&["export", &cert, "--passphrase-file", pass.to_str().unwrap()]);
    daemon.ok(&["list"]);
    daemon.ok(&["describe", &cert]);
    daemon.ok(&["ca", "disable", "default"]);
    daemon.ok(&["ca", "enable", "default"]);
    daemon.ok(&["delete", &cert]);
    daemon.fails(&["delete", "no-such-certificate"], 1);

    let records = audit_records(&daemon);
    let summary: Vec<(String, String, u64)> = records
        .iter()
        .map(|r| {
            (
                r["operation"].as_str().unwrap().to_owned(),
                r["target"].as_str().unwrap_or("-").to_owned(),
                r["status"].as_u64().unwrap(),
            )
        })
        .collect();
    let expected = [
        ("POST /v1/certificates", cert.as_str(), 201),
        ("POST /v1/certificates/{id}/export", cert.as_str(), 200),
        ("POST /v1/cas/{name}/disable", "default", 200),
        ("POST /v1/cas/{name}/enable", "default", 200),
        ("DELETE /v1/certificates/{id}", cert.as_str(), 200),
        ("DELETE /v1/certificates/{id}", "no-such-certificate", 404),
    ];
    let expected: Vec<(String, String, u64)> = expected
        .iter()
        .map(|(o, t, s)| ((*o).to_owned(), (*t).to_owned(), *s))
        .collect();
    assert_eq!(summary, expected, "{records:#?}");
    assert_eq!(records[5]["code"], "not-found");

    // Who: this test process's uid; the pid of the CLI process that made the call.
    let uid = u64::from(own_uid());
    for record in &records {
        assert_eq!(record["peer"]["kind"], "local", "{record}");
        assert_eq!(record["peer"]["uid"].as_u64(), Some(uid), "{record}");
        let pid = record["peer"]["pid"].as_u64().unwrap();
        assert_ne!(pid, u64::from(daemon.pid()), "the caller, not the daemon");
    }
    let log = daemon.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("audit") && l.contains("/export") && l.contains(&cert)),
        "the export is in the log too"
    );

    daemon.stop();
    daemon.spawn();
    assert_eq!(audit_records(&daemon).len(), 6, "kept across a restart");
}

/// The uid of this process, as the kernel reports it in `/proc/self/status`.
fn own_uid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// L12: a state directory others may enter is made private at start (the review's 0755
/// directory was used as it was), and no socket mode may open the full API to every user.
#[test]
fn an_open_state_directory_is_made_private_and_a_world_writable_api_socket_refused() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    let daemon = Daemon::start_in(dir, None);
    assert_eq!(mode(&daemon.state_dir), 0o700);
    assert!(
        daemon.log_text().contains("made it 0700"),
        "{}",
        daemon.log_text()
    );

    for (mode, key) in [
        ("0666", "daemon.socket-mode"),
        ("0662", "daemon.socket-mode"),
        ("0466", "daemon.socket-mode"),
    ] {
        let config = daemon.write("open.toml", format!("[daemon]\nsocket-mode = \"{mode}\"\n"));
        let out = Command::new(BIN)
            .args(["config", "check", "--config", config.to_str().unwrap()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{mode}: {stderr}");
        assert!(stderr.contains(key), "{mode}: {stderr}");
    }
}
