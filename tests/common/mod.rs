//! Test harness: runs the real `certkeeper` binary on a temporary state directory and drives it
//! through its real socket with the real CLI. Everything is cleaned up on drop.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
#![allow(dead_code)]

pub(crate) mod peers;
pub(crate) mod pki;
pub(crate) mod webhook;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_certkeeper");

/// Polls `f` every 200 ms until it gives a value; fails the test after `timeout`.
pub(crate) fn wait_until<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = f() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Makes `{stem}.key` and a P-256 CSR `{stem}.csr` in `dir` for `cn` with `san` (openssl
/// syntax, e.g. `DNS:a.internal,IP:10.0.0.1`).
pub(crate) fn make_csr(dir: &Path, stem: &str, cn: &str, san: &str) {
    openssl(
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
            &format!("{stem}.key"),
            "-subj",
            &format!("/CN={cn}"),
            "-addext",
            &format!("subjectAltName={san}"),
            "-out",
            &format!("{stem}.csr"),
        ],
    );
}

/// Runs `cmd`, which must exit by itself (a `serve` whose start fails), returning (exit code,
/// stderr). One that keeps running is killed after a minute (exit code `None`), so the test
/// fails, not hangs.
pub(crate) fn must_exit(mut cmd: Command) -> (Option<i32>, String) {
    let mut child = cmd.stderr(Stdio::piped()).spawn().expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("wait");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A running daemon with its own state directory.
pub(crate) struct Daemon {
    pub dir: tempfile::TempDir,
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    pub config: Option<PathBuf>,
    pub log: PathBuf,
    /// The umask the daemon runs under (the test's own when `None`).
    pub umask: Option<u32>,
    /// Variables `serve` gets on top of the test's (cleaned) environment.
    env: Vec<(String, String)>,
    child: Option<Child>,
}

impl Daemon {
    /// Starts on the built-in default (no config file).
    pub(crate) fn start() -> Self {
        Self::start_with(None)
    }

    /// Starts with `config` written to a file (state-dir is forced to the temp dir by flag).
    pub(crate) fn start_with(config: Option<&str>) -> Self {
        Self::start_under(tempfile::tempdir().expect("tempdir"), config, None, &[])
    }

    /// Starts in `dir` (state in `dir/state`), for a config that names paths inside it.
    pub(crate) fn start_in(dir: tempfile::TempDir, config: Option<&str>) -> Self {
        Self::start_under(dir, config, None, &[])
    }

    /// Like [`Daemon::start_with`], under `umask` (e.g. 0o077, the packaged unit's `UMask=`).
    pub(crate) fn start_with_umask(config: Option<&str>, umask: u32) -> Self {
        Self::start_under(
            tempfile::tempdir().expect("tempdir"),
            config,
            Some(umask),
            &[],
        )
    }

    /// Like [`Daemon::start_with`], with `env` set for the daemon (e.g. systemd's
    /// `CREDENTIALS_DIRECTORY`, which the harness otherwise removes).
    pub(crate) fn start_with_env(config: Option<&str>, env: &[(&str, &str)]) -> Self {
        Self::start_under(tempfile::tempdir().expect("tempdir"), config, None, env)
    }

    fn start_under(
        dir: tempfile::TempDir,
        config: Option<&str>,
        umask: Option<u32>,
        env: &[(&str, &str)],
    ) -> Self {
        let state_dir = dir.path().join("state");
        let config_path = config.map(|text| {
            let path = dir.path().join("certkeeper.toml");
            std::fs::write(&path, text).expect("write config");
            path
        });
        let mut daemon = Self {
            socket: state_dir.join("api.sock"),
            log: dir.path().join("daemon.log"),
            state_dir,
            config: config_path,
            dir,
            umask,
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            child: None,
        };
        daemon.spawn();
        daemon
    }

    /// Starts the process again on the same state directory (after `stop` or `kill`).
    pub(crate) fn spawn(&mut self) {
        let child = self.command().spawn().expect("spawn certkeeper serve");
        self.child = Some(child);
        self.wait_ready();
    }

    /// The `serve` command this daemon runs, for tests that want to inspect a failing start.
    pub(crate) fn command(&self) -> Command {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        // A shell sets the umask, then becomes certkeeper (same pid): std has no umask setter.
        let mut cmd = match self.umask {
            Some(umask) => {
                let mut sh = Command::new("/bin/sh");
                sh.arg("-c")
                    .arg(format!("umask {umask:03o} && exec \"$0\" \"$@\""))
                    .arg(BIN);
                sh
            }
            None => Command::new(BIN),
        };
        cmd.arg("serve").arg("--state-dir").arg(&self.state_dir);
        if let Some(config) = &self.config {
            cmd.arg("--config").arg(config);
        }
        cmd.env_remove("CERTKEEPER_SOCKET")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("STATE_DIRECTORY")
            .env_remove("CREDENTIALS_DIRECTORY")
            .env("RUST_LOG", "certkeeper=debug")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log);
        cmd
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "certkeeper serve exited with {status} before it was ready:\n{}",
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "certkeeper serve not ready in 60 s:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub(crate) fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// SIGTERM and wait; returns the exit status and how long the stop took.
    pub(crate) fn stop(&mut self) -> (std::process::ExitStatus, Duration) {
        let started = Instant::now();
        self.signal("TERM");
        let status = self.child.take().expect("running").wait().expect("wait");
        (status, started.elapsed())
    }

    /// Runs `serve` for a start that must fail, returning (exit code, stderr). One that starts
    /// instead is killed after a minute (exit code `None`), so the test fails, not hangs.
    pub(crate) fn failed_start(&self) -> (Option<i32>, String) {
        must_exit(self.command())
    }

    /// Waits (up to `timeout`, then fails the test) for the daemon to exit on its own.
    pub(crate) fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let child = self.child.as_mut().expect("running");
        let status = wait_until(timeout, "certkeeper serve to exit", || {
            child.try_wait().expect("wait")
        });
        self.child = None;
        status
    }

    /// SIGKILL: no chance to clean up.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs a CLI verb against this daemon.
    pub(crate) fn ck(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .env("CERTKEEPER_SOCKET", &self.socket)
            .env_remove("CERTKEEPER_CONFIG")
            .current_dir(self.dir.path())
            .output()
            .expect("run certkeeper")
    }

    /// Runs a verb that must succeed, returning stdout.
    pub(crate) fn ok(&self, args: &[&str]) -> String {
        let out = self.ck(args);
        assert!(
            out.status.success(),
            "certkeeper {args:?} failed with {}:\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

    /// Runs a verb with `--output json` that must succeed and parses its output.
    pub(crate) fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.extend(["--output", "json"]);
        let text = self.ok(&all);
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("bad JSON from {args:?}: {e}\n{text}"))
    }

    /// Runs a verb that must fail with `code`, returning stderr.
    pub(crate) fn fails(&self, args: &[&str], code: i32) -> String {
        let out = self.ck(args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(
            out.status.code(),
            Some(code),
            "certkeeper {args:?}: expected exit {code}\nstdout: {}\nstderr: {stderr}",
            String::from_utf8_lossy(&out.stdout)
        );
        stderr
    }

    /// Number of certificates in the inventory.
    pub(crate) fn count(&self) -> usize {
        let list = self.json(&["list", "--all", "--limit", "1000"]);
        list["certificates"]
            .as_array()
            .expect("certificates array")
            .len()
    }

    /// A path inside this daemon's temp dir.
    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub(crate) fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, contents).expect("write test file");
        path
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Writes a secret file as an operator should: mode 0600 (certkeeper refuses secret files that
/// group or others can read).
pub(crate) fn write_secret(path: &Path, contents: impl AsRef<[u8]>) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, contents).expect("write secret file");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod 0600");
}

/// A directory laid out as systemd's `$CREDENTIALS_DIRECTORY` for certkeeper: `master-key`
/// (0400, made by `certkeeper master-key generate`) under `dir/credentials`.
pub(crate) fn credentials_directory(dir: &Path) -> PathBuf {
    let credentials = dir.join("credentials");
    std::fs::create_dir(&credentials).expect("credentials dir");
    let out = Command::new(BIN)
        .args(["master-key", "generate", "--out"])
        .arg(credentials.join("master-key"))
        .output()
        .expect("run certkeeper master-key generate");
    assert!(out.status.success(), "{out:?}");
    credentials
}

/// Checks an `env` dump made by a child of the daemon: it may see the allowlist (README
/// "Commands"), the `CERTKEEPER_*` variables of its call and what `sh` adds itself, and not
/// `secret`.
pub(crate) fn assert_clean_environment(dump: &str, secret: &str) {
    const ALLOWED: [&str; 5] = ["PATH", "HOME", "LANG", "TZ", "TMPDIR"];
    const SHELL: [&str; 3] = ["PWD", "SHLVL", "_"];
    let names: Vec<&str> = dump
        .lines()
        .filter_map(|line| line.split_once('=').map(|(name, _)| name))
        .collect();
    assert!(names.contains(&"PATH"), "{dump}");
    for name in &names {
        assert!(
            ALLOWED.contains(name)
                || name.starts_with("LC_")
                || name.starts_with("CERTKEEPER_")
                || SHELL.contains(name),
            "{name} passed to a child:\n{dump}"
        );
    }
    assert!(!dump.contains(secret), "{dump}");
}

/// Runs `openssl` with `args` in `dir`; panics with its output on failure.
pub(crate) fn openssl(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl must be installed");
    assert!(
        out.status.success(),
        "openssl {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Like [`openssl`] but returns whether it succeeded and its combined output.
pub(crate) fn openssl_try(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl must be installed");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The id of a certificate from its JSON.
pub(crate) fn id(cert: &serde_json::Value) -> String {
    cert["id"].as_str().expect("id").to_owned()
}

/// The first certificate of a PEM bundle (as `sign` prints it: the leaf, then its chain).
pub(crate) fn first_certificate(pem: &str) -> String {
    const END: &str = "-----END CERTIFICATE-----";
    pem.split(END).next().unwrap_or_default().to_owned() + END + "\n"
}

/// One raw HTTP/1.1 request over the API socket; returns the status code and body, or status 0
/// when the daemon cannot be reached. For tests of the API itself (error shapes, limits) and
/// for load that would be slow through the CLI.
pub(crate) fn http(socket: &Path, method: &str, path: &str, body: Option<&[u8]>) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = match std::os::unix::net::UnixStream::connect(socket) {
        Ok(stream) => stream,
        Err(err) => return (0, err.to_string()),
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .expect("timeout");
    let body = body.unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: certkeeper\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    // A daemon killed between the connect and the write (the kill -9 tests) is unreachable too.
    if let Err(err) = stream.write_all(head.as_bytes()) {
        return (0, err.to_string());
    }
    // The server may answer (e.g. 413) before reading a large body; a broken pipe is fine then.
    let _ = stream.write_all(body);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// `PRAGMA integrity_check` of the database at `db`, read-only ("ok" when whole).
pub(crate) fn integrity_check(db: &Path) -> String {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    conn.query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .unwrap()
}
