//! The store when its disk fails or its files are damaged, with real faults: `strace` injects
//! errors into the running daemon's system calls (EIO on fsync, ENOSPC on writes), and the
//! database and its WAL are damaged on disk between runs.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Daemon, http, integrity_check, wait_until};

/// `strace` attached to a running daemon, making every call of `syscalls` fail with `error`
/// until dropped (then it detaches and the daemon runs on untouched).
struct Injection {
    strace: Child,
}

impl Injection {
    fn start(daemon: &Daemon, syscalls: &str, error: &str) -> Self {
        let log = daemon.path(&format!("strace-{}.log", std::process::id()));
        let strace = Command::new("strace")
            .args(["-f", "-p", &daemon.pid().to_string()])
            .args(["-e", &format!("trace={syscalls}")])
            .args(["-e", &format!("inject={syscalls}:error={error}")])
            .arg("-o")
            .arg(daemon.path("strace-calls.log"))
            .stderr(std::fs::File::create(&log).unwrap())
            .stdout(Stdio::null())
            .spawn()
            .expect("strace must be installed (tests/peers/install.sh)");
        // Its first words on stderr are the attach; until then nothing is injected.
        wait_until(Duration::from_secs(30), "strace to attach", || {
            std::fs::read_to_string(&log)
                .unwrap()
                .contains("attached")
                .then_some(())
        });
        Self { strace }
    }
}

impl Drop for Injection {
    fn drop(&mut self) {
        // SIGTERM: strace detaches and lets the daemon run on.
        let _ = Command::new("kill")
            .arg(self.strace.id().to_string())
            .status();
        let _ = self.strace.wait();
    }
}

/// POSTs a new private certificate for `domain`; returns (status, error code or id).
fn create(daemon: &Daemon, domain: &str) -> (u16, String) {
    let body = format!(r#"{{"domains":["{domain}"]}}"#);
    let (status, body) = http(
        &daemon.socket,
        "POST",
        "/v1/certificates",
        Some(body.as_bytes()),
    );
    let value: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    let said = value["error"]["code"]
        .as_str()
        .or_else(|| value["id"].as_str())
        .unwrap_or_default();
    (status, said.to_owned())
}

fn db(daemon: &Daemon) -> PathBuf {
    daemon.state_dir.join("certkeeper.db")
}

#[test]
fn a_failed_fsync_at_commit_answers_outcome_unknown_and_the_daemon_restarts() {
    let mut daemon = Daemon::start();
    assert_eq!(create(&daemon, "before.internal").0, 201);
    let (status, code) = {
        let _eio = Injection::start(&daemon, "fsync,fdatasync", "EIO");
        create(&daemon, "phantom.internal")
    };
    // Not "failed" (it may be on disk) and not "created" (it may not be).
    assert_eq!((status, code.as_str()), (503, "outcome-unknown"));
    // The writer took no more writes and the daemon stopped, for systemd to restart it.
    let exit = daemon.wait_exit(Duration::from_secs(60));
    assert_eq!(exit.code(), Some(74), "{}", daemon.log_text());
    assert!(
        daemon
            .log_text()
            .contains("a commit failed with an I/O error")
    );

    // The restart recovers whatever reached the disk: the database is whole, and the
    // phantom either is there in full or not at all.
    daemon.spawn();
    daemon.ok(&["describe", "before.internal"]);
    let phantom = daemon.ck(&["describe", "phantom.internal"]);
    assert!(
        phantom.status.success() || phantom.status.code() == Some(1),
        "{phantom:?}"
    );
    assert_eq!(integrity_check(&db(&daemon)), "ok");
}

#[test]
fn a_full_disk_answers_store_full_and_writes_resume_without_a_restart() {
    let daemon = Daemon::start();
    let answer = {
        let _full = Injection::start(&daemon, "pwrite64", "ENOSPC");
        create(&daemon, "full.internal")
    };
    assert_eq!(answer, (507, "store-full".to_owned()));
    // Rolled back cleanly: nothing of it is stored, and the next write works.
    daemon.fails(&["describe", "full.internal"], 1);
    assert_eq!(create(&daemon, "after.internal").0, 201);
    daemon.ok(&["describe", "after.internal"]);
}

#[test]
fn a_damaged_page_stops_the_start_with_exit_79() {
    let mut daemon = Daemon::start();
    assert_eq!(create(&daemon, "a.internal").0, 201);
    daemon.stop(); // a clean stop: the WAL is checkpointed into the database file
    // A page nothing reads at start (the tags index; no certificate has tags).
    let page = root_page(&db(&daemon), "tags_key_value");
    overwrite_page(&db(&daemon), page);

    let (code, stderr) = daemon.failed_start();
    assert_eq!(code, Some(79), "{stderr}");
    assert!(
        stderr.contains(&db(&daemon).display().to_string()) && stderr.contains("damaged"),
        "{stderr}"
    );
    assert_unit_does_not_restart_on(79);
}

#[test]
fn a_database_that_lost_acknowledged_commits_is_refused_until_accepted() {
    let mut daemon = Daemon::start();
    create_all(&daemon, &["one.internal", "two.internal", "three.internal"]);
    daemon.kill(); // -9: the commits stay in the WAL
    // The WAL loses its last frame, and with it the last acknowledged commit (the review's
    // `c3`: SQLite then opens an older, consistent database without a word). That commit is
    // the audit record of the third creation, which follows the creation's own commit.
    let wal = daemon.state_dir.join("certkeeper.db-wal");
    let len = std::fs::metadata(&wal).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&wal).unwrap();
    file.set_len(len - (24 + 4096)).unwrap();
    drop(file);

    let (code, stderr) = daemon.failed_start();
    assert_eq!(code, Some(80), "{stderr}");
    let mark = daemon.state_dir.join("certkeeper.db.last-commit");
    assert!(
        stderr.contains("older than certkeeper last left it")
            && stderr.contains(&format!("delete {}", mark.display())),
        "{stderr}"
    );
    assert_unit_does_not_restart_on(80);

    // The documented way to accept the database as it is.
    std::fs::remove_file(&mark).unwrap();
    daemon.spawn();
    assert_eq!(daemon.count(), 3);
    let audit = daemon.ok(&["audit", "--output", "json"]);
    assert_eq!(
        audit.lines().count(),
        2,
        "the third creation's record is lost: {audit}"
    );
    let log = daemon.log_text();
    assert!(log.contains("no high-water mark yet"), "{log}");
    assert!(
        log.contains("certificates=3") && log.contains("last_event_seq="),
        "{log}"
    );
}

#[test]
fn one_undecodable_row_leaves_list_and_metrics_working() {
    let mut daemon = Daemon::start();
    create_all(
        &daemon,
        &["good1.internal", "bad.internal", "good2.internal"],
    );
    let bad = common::id(&daemon.json(&["describe", "bad.internal"]));
    daemon.stop();
    let conn = rusqlite::Connection::open(db(&daemon)).unwrap();
    conn.execute(
        "UPDATE certificates SET status = 'no-such-status' WHERE id = ?",
        [&bad],
    )
    .unwrap();
    drop(conn);

    daemon.spawn();
    let list = daemon.json(&["list", "--all"]);
    let names: Vec<_> = list["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(!names.contains(&"bad.internal".to_owned()), "{names:?}");
    let (status, metrics) = http(&daemon.socket, "GET", "/metrics", None);
    assert_eq!(status, 200, "{metrics}");
    let skipped = metrics
        .lines()
        .find_map(|l| l.strip_prefix("certkeeper_store_rows_skipped_total "))
        .unwrap_or_else(|| panic!("{metrics}"));
    assert_ne!(skipped, "0", "{metrics}");
    let log = daemon.log_text();
    assert!(
        log.contains("a stored row does not decode") && log.contains(&bad),
        "{log}"
    );
}

fn create_all(daemon: &Daemon, domains: &[&str]) {
    for domain in domains {
        assert_eq!(create(daemon, domain).0, 201);
    }
}

/// The same start would fail the same way: systemd must not loop on it.
fn assert_unit_does_not_restart_on(code: u8) {
    let unit = include_str!("../systemd/certkeeper.service");
    let line = unit
        .lines()
        .find(|l| l.starts_with("RestartPreventExitStatus="))
        .unwrap();
    assert!(
        line.split(['=', ' ']).any(|c| c == code.to_string()),
        "{line}"
    );
}

fn root_page(db: &Path, name: &str) -> u32 {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row(
        "SELECT rootpage FROM sqlite_schema WHERE name = ?",
        [name],
        |r| r.get(0),
    )
    .unwrap()
}

/// Fills page `page` (numbered from 1, 4 KiB) with 0x5a bytes.
fn overwrite_page(db: &Path, page: u32) {
    use std::io::{Seek, SeekFrom, Write};
    let mut file = std::fs::OpenOptions::new().write(true).open(db).unwrap();
    file.seek(SeekFrom::Start(u64::from(page - 1) * 4096))
        .unwrap();
    file.write_all(&[0x5a; 4096]).unwrap();
}
