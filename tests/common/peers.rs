//! Real peers for ACME tests: Pebble (Let's Encrypt's test CA), Knot (authoritative DNS with
//! RFC 2136 updates and TSIG), unbound (a recursive resolver that follows CNAMEs across
//! zones, as Let's Encrypt's does) and nginx (a web server whose root takes HTTP-01 files). Each runs from its Debian package (`tests/peers/install.sh`)
//! in its own temp dir, on free 127.0.0.1 ports, with its output in a log file there.
//!
//! `start` waits until the peer answers (30 s at most) and panics with the tail of the peer's
//! log when it cannot be started: a test that needs a peer fails, it is never skipped. Drop
//! sends SIGKILL to the peer's pid (never by name) and reaps it.
//!
//! See /work/shared/PEERS.md for the facts behind the settings used here.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use tempfile::TempDir;

/// How long a peer may take to answer after it was spawned.
pub(crate) const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The TSIG algorithm of [`Knot`]'s key.
pub(crate) const TSIG_ALGORITHM: &str = "hmac-sha256";

/// Ports handed out by [`free_port`] in this process, so two peers never get the same one.
static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A loopback port that is free for both TCP and UDP right now (bind 127.0.0.1:0, read the port,
/// check UDP on the same port, drop both). Never returns the same port twice in one process.
pub(crate) fn free_port() -> u16 {
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let handed_out = handed_out.get_or_insert_with(HashSet::new);
    for _ in 0..1000 {
        let tcp =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a TCP port on 127.0.0.1");
        let port = tcp.local_addr().expect("local addr").port();
        if handed_out.contains(&port) || UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).is_err() {
            continue;
        }
        handed_out.insert(port);
        return port;
    }
    panic!("no loopback port free for both TCP and UDP after 1000 tries");
}

/// `127.0.0.1:port`.
pub(crate) fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// The last `lines` lines of a log file (or a note that it cannot be read).
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(err) => format!("(cannot read {}: {err})", path.display()),
    }
}

/// Finds a program on PATH or in the sbin directories (`knotd` and `unbound` live in
/// /usr/sbin, which is not always on a test's PATH); panics with how to install it.
fn program(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!("`{name}` is not installed: run tests/peers/install.sh (as root or with sudo)")
        })
}

/// Random bytes from the system RNG.
fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    aws_lc_rs::rand::fill(&mut bytes).expect("system random");
    bytes
}

/// A spawned peer process with its log; SIGKILLed (by pid) and reaped on drop.
struct Running {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Running {
    /// Spawns `cmd` with stdin closed and stdout + stderr appended to `log`.
    fn spawn(name: &'static str, mut cmd: Command, log: PathBuf) -> Self {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("peer log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file handle"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {name} ({cmd:?}): {e}"));
        Self { name, child, log }
    }

    /// Polls `ready` until it returns true; panics with the log tail when the process exits
    /// first or [`START_TIMEOUT`] passes.
    fn wait_ready(&mut self, mut ready: impl FnMut() -> bool) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if ready() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited with {status} before it was ready; log {}:\n{}",
                    self.name,
                    self.log.display(),
                    log_tail(&self.log, 40)
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} (pid {}) did not answer within {START_TIMEOUT:?}; log {}:\n{}",
                self.name,
                self.child.id(),
                self.log.display(),
                log_tail(&self.log, 40)
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn log_tail(&self) -> String {
        log_tail(&self.log, 40)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Child::kill sends SIGKILL to this pid only.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tcp_answers(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A zone name with its final dot.
fn absolute(zone: &str) -> String {
    if zone.ends_with('.') {
        zone.to_owned()
    } else {
        format!("{zone}.")
    }
}

// ---------------------------------------------------------------------------------------------
// DNS queries

/// One resource record of an answer section, in presentation format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Record {
    /// Owner name, absolute (`lbl.acme.test.`).
    pub name: String,
    /// Type mnemonic (`TXT`, `CNAME`, ...).
    pub rtype: String,
    pub ttl: u32,
    /// Rdata in presentation format: a TXT record's is quoted (`"hello"`), a CNAME's is the
    /// absolute target.
    pub rdata: String,
}

/// A DNS response as `kdig` saw it.
#[derive(Clone, Debug)]
pub(crate) struct Answer {
    /// The response code: 0 NOERROR, 2 SERVFAIL, 3 NXDOMAIN, 5 REFUSED, ...
    pub rcode: u16,
    /// The answer section in order (a CNAME chain comes first, then the target's records).
    pub records: Vec<Record>,
}

impl Answer {
    /// The response code's name (`NOERROR`, `NXDOMAIN`, ...).
    pub(crate) fn rcode_name(&self) -> String {
        match self.rcode {
            0 => "NOERROR".into(),
            1 => "FORMERR".into(),
            2 => "SERVFAIL".into(),
            3 => "NXDOMAIN".into(),
            4 => "NOTIMP".into(),
            5 => "REFUSED".into(),
            9 => "NOTAUTH".into(),
            other => format!("RCODE{other}"),
        }
    }

    /// Every answer record's rdata, in order.
    pub(crate) fn rdata(&self) -> Vec<String> {
        self.records.iter().map(|r| r.rdata.clone()).collect()
    }

    /// The TXT records' values, unquoted (character-strings of one record are concatenated).
    pub(crate) fn txt(&self) -> Vec<String> {
        self.records
            .iter()
            .filter(|r| r.rtype == "TXT")
            .map(|r| unquote_txt(&r.rdata))
            .collect()
    }
}

/// Concatenates the quoted character-strings of a TXT rdata (`"a" "b"` → `ab`), undoing
/// backslash escapes (`\"`, `\\`, `\DDD`).
pub(crate) fn unquote_txt(rdata: &str) -> String {
    let mut bytes = Vec::new();
    let mut chars = rdata.bytes().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match c {
            b'"' => quoted = !quoted,
            b'\\' => {
                let digits: Vec<u8> = std::iter::from_fn(|| chars.next_if(u8::is_ascii_digit))
                    .take(3)
                    .collect();
                if digits.len() == 3 {
                    let value = digits
                        .iter()
                        .fold(0u32, |n, d| n * 10 + u32::from(d - b'0'));
                    bytes.push(u8::try_from(value).unwrap_or(b'?'));
                } else if let Some(next) = chars.next() {
                    bytes.push(next);
                }
            }
            b' ' | b'\t' if !quoted => {}
            other => bytes.push(other),
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Sends one query for `name`/`rtype` to `server` with `kdig` (UDP, recursion desired, 2 s
/// timeout, one retry) and parses its JSON (RFC 8427) output. Panics when no response comes
/// back; an NXDOMAIN or SERVFAIL is a response (see [`Answer::rcode`]).
pub(crate) fn dns_lookup(server: SocketAddr, name: &str, rtype: &str) -> Answer {
    let out = Command::new(program("kdig"))
        .arg(format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string(), name, rtype])
        .args(["+json", "+timeout=2", "+retry=1"])
        .output()
        .expect("run kdig");
    let text = output_text(&out);
    assert!(
        out.status.success(),
        "kdig {name} {rtype} @{server} failed ({}):\n{text}",
        out.status
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("kdig {name} {rtype} @{server}: bad JSON ({e}):\n{text}"));
    let rcode = json["RCODE"]
        .as_u64()
        .and_then(|n| u16::try_from(n).ok())
        .unwrap_or_else(|| panic!("kdig {name} {rtype} @{server}: no RCODE:\n{text}"));
    let records = answer_records(&json);
    Answer { rcode, records }
}

/// The answer section of one message of `kdig +json` output (RFC 8427).
fn answer_records(message: &serde_json::Value) -> Vec<Record> {
    message["answerRRs"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|rr| {
            let rtype = rr["TYPEname"].as_str().unwrap_or_default().to_owned();
            let rdata = rr
                .get(format!("rdata{rtype}"))
                .or_else(|| rr.get("RDATAHEX"))
                .and_then(serde_json::Value::as_str)
                .unwrap_or_default()
                .to_owned();
            Record {
                name: rr["NAME"].as_str().unwrap_or_default().to_owned(),
                ttl: rr["TTL"]
                    .as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .unwrap_or_default(),
                rtype,
                rdata,
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Knot

/// A running Knot DNS server (authoritative) on `127.0.0.1:port`, UDP and TCP, accepting
/// RFC 2136 dynamic updates signed with its TSIG key ([`TSIG_ALGORITHM`]).
pub(crate) struct Knot {
    /// Where it answers, UDP and TCP.
    pub addr: SocketAddr,
    /// The zones it serves, absolute (`customer.test.`).
    pub zones: Vec<String>,
    /// The TSIG key's name (`certkeeper-test`).
    pub tsig_name: String,
    /// The TSIG secret, standard base64 (32 random bytes).
    pub tsig_secret_b64: String,
    /// A file holding only `tsig_secret_b64` (no newline, mode 0600), for certkeeper's
    /// `secret_file`-style setting.
    pub tsig_key_file: PathBuf,
    /// knotd's stdout and stderr.
    pub log: PathBuf,
    process: Running,
    dir: TempDir,
}

impl Knot {
    /// Starts knotd serving `zones` (each e.g. `"customer.test."`; the final dot is optional).
    /// Each zone has a SOA (serial 1, minimum TTL 60), `NS ns.<zone>` and `ns.<zone> A
    /// 127.0.0.1`, accepts dynamic updates signed with the TSIG key (hmac-sha256) and zone
    /// transfers from 127.0.0.1 ([`Knot::axfr`]). Returns once every zone answers its SOA.
    pub(crate) fn start(zones: &[&str]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("knot-")
            .tempdir()
            .expect("tempdir");
        let root = dir.path();
        let port = free_port();
        let zones: Vec<String> = zones.iter().map(|z| absolute(z)).collect();
        let tsig_name = "certkeeper-test".to_owned();
        let tsig_secret_b64 =
            base64::engine::general_purpose::STANDARD.encode(random_bytes::<32>());
        let tsig_key_file = root.join("tsig.key");
        std::fs::write(&tsig_key_file, &tsig_secret_b64).expect("write TSIG key file");
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&tsig_key_file, std::fs::Permissions::from_mode(0o600))
                .expect("chmod TSIG key file");
        }
        std::fs::create_dir(root.join("db")).expect("knot db dir");

        let mut config = format!(
            "server:\n    listen: 127.0.0.1@{port}\n    rundir: \"{root}\"\n\
             log:\n  - target: stderr\n    any: info\n\
             database:\n    storage: \"{root}/db\"\n\
             key:\n  - id: {tsig_name}\n    algorithm: {TSIG_ALGORITHM}\n    secret: {tsig_secret_b64}\n\
             acl:\n  - id: tsig-update\n    key: {tsig_name}\n    action: update\n\
             \x20 - id: loopback-transfer\n    address: 127.0.0.1\n    action: transfer\n\
             template:\n  - id: default\n    storage: \"{root}\"\n    zonefile-sync: -1\n    \
             journal-content: all\n    acl: [tsig-update, loopback-transfer]\n\
             zone:\n",
            root = root.display()
        );
        for zone in &zones {
            let file = format!("{}zone", zone);
            writeln!(config, "  - domain: {zone}\n    file: \"{file}\"").expect("fmt");
            std::fs::write(
                root.join(&file),
                format!(
                    "$ORIGIN {zone}\n$TTL 60\n@ SOA ns.{zone} hostmaster.{zone} 1 3600 600 86400 60\n\
                     @ NS ns.{zone}\nns A 127.0.0.1\n"
                ),
            )
            .expect("write zone file");
        }
        let config_path = root.join("knot.conf");
        std::fs::write(&config_path, config).expect("write knot.conf");

        let log = root.join("knotd.log");
        let mut cmd = Command::new(program("knotd"));
        cmd.arg("-c").arg(&config_path).current_dir(root);
        let process = Running::spawn("knotd", cmd, log.clone());
        let mut knot = Self {
            addr: loopback(port),
            zones,
            tsig_name,
            tsig_secret_b64,
            tsig_key_file,
            log,
            process,
            dir,
        };
        let (addr, zones) = (knot.addr, knot.zones.clone());
        knot.process.wait_ready(|| {
            tcp_answers(addr)
                && zones.iter().all(|zone| {
                    let answer = dns_lookup(addr, zone, "SOA");
                    answer.rcode == 0 && answer.records.iter().any(|r| r.rtype == "SOA")
                })
        });
        knot
    }

    /// Runs `nsupdate` against this server, signed with the TSIG key, for `zone`: `commands`
    /// are nsupdate lines such as `"update add _acme-challenge.www.customer.test. 60 CNAME
    /// abc.acme.test."` (`server`, `zone` and `send` are added). Panics with nsupdate's output
    /// when the update fails (e.g. `NOTAUTH(BADSIG)`, `REFUSED`).
    pub(crate) fn nsupdate(&self, zone: &str, commands: &[&str]) {
        let out = self.nsupdate_with_secret(zone, commands, &self.tsig_secret_b64);
        assert!(
            out.status.success(),
            "nsupdate for {zone} on {} failed ({}):\n{}\nknotd log:\n{}",
            self.addr,
            out.status,
            output_text(&out),
            self.process.log_tail()
        );
    }

    /// Like [`Knot::nsupdate`] with another secret (standard base64) and no assertion: for
    /// tests of what a wrong key gets.
    pub(crate) fn nsupdate_with_secret(
        &self,
        zone: &str,
        commands: &[&str],
        secret_b64: &str,
    ) -> Output {
        let mut script = format!(
            "server {} {}\nzone {}\n",
            self.addr.ip(),
            self.addr.port(),
            absolute(zone)
        );
        for command in commands {
            writeln!(script, "{command}").expect("fmt");
        }
        script.push_str("send\n");
        let script_path = self.dir.path().join("nsupdate.txt");
        std::fs::write(&script_path, &script).expect("write nsupdate script");
        Command::new(program("nsupdate"))
            .arg("-y")
            .arg(format!("{TSIG_ALGORITHM}:{}:{secret_b64}", self.tsig_name))
            .args(["-t", "10"])
            .arg(&script_path)
            .output()
            .expect("run nsupdate")
    }

    /// Queries Knot directly with `kdig`: the answer records' rdata in presentation format
    /// (Knot answers a CNAME without following it into another zone).
    pub(crate) fn query(&self, name: &str, rtype: &str) -> Vec<String> {
        self.lookup(name, rtype).rdata()
    }

    /// The full answer of [`Knot::query`] (response code and records).
    pub(crate) fn lookup(&self, name: &str, rtype: &str) -> Answer {
        dns_lookup(self.addr, name, rtype)
    }

    /// Every record of `zone` as Knot holds it now, by zone transfer (AXFR over TCP, allowed
    /// from 127.0.0.1): what a test asks when it must know that nothing at all was left behind,
    /// at names it would not think to query. The SOA appears twice (it opens and closes the
    /// transfer). Panics unless Knot answers the transfer.
    pub(crate) fn axfr(&self, zone: &str) -> Vec<Record> {
        let zone = absolute(zone);
        let out = Command::new(program("kdig"))
            .arg(format!("@{}", self.addr.ip()))
            .args(["-p", &self.addr.port().to_string(), &zone, "AXFR"])
            .args(["+json", "+timeout=5", "+retry=1"])
            .output()
            .expect("run kdig");
        let text = output_text(&out);
        assert!(
            out.status.success(),
            "kdig {zone} AXFR @{} failed ({}):\n{text}\nknotd log:\n{}",
            self.addr,
            out.status,
            self.process.log_tail()
        );
        // One JSON object per DNS message; a large zone comes in several.
        let messages: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("kdig {zone} AXFR: bad JSON ({e}):\n{text}"));
        messages.iter().flat_map(answer_records).collect()
    }

    /// knotd's pid.
    pub(crate) fn pid(&self) -> u32 {
        self.process.child.id()
    }

    /// The last lines of knotd's log.
    pub(crate) fn log_tail(&self) -> String {
        self.process.log_tail()
    }

    /// The temp dir holding the config, zone files, database and log.
    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }
}

// ---------------------------------------------------------------------------------------------
// unbound

/// A running nginx serving a document root over plain HTTP on `127.0.0.1:port`: the web server
/// an HTTP-01 webroot belongs to. Its access log records every request.
pub(crate) struct Nginx {
    pub port: u16,
    pub root: PathBuf,
    pub access_log: PathBuf,
    process: Running,
    _dir: TempDir,
}

impl Nginx {
    /// Starts `nginx -p DIR -c DIR/nginx.conf` in the foreground (`daemon off`, per PEERS.md)
    /// serving `DIR/www` on `port`. Workers run as root so they can read a root inside a 0700
    /// temp dir.
    pub(crate) fn start(port: u16) -> Self {
        Self::start_as(port, "root")
    }

    /// Like [`Nginx::start`], with workers running as `user` (e.g. `www-data`), as a web
    /// server's do: they read only what is readable by others. The temp dir and the root are
    /// then 0755.
    pub(crate) fn start_as(port: u16, user: &str) -> Self {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::Builder::new()
            .prefix("nginx-")
            .tempdir()
            .expect("tempdir");
        let prefix = dir.path();
        let root = prefix.join("www");
        std::fs::create_dir(&root).expect("webroot");
        if user != "root" {
            for path in [prefix, root.as_path()] {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
                    .expect("chmod 0755");
            }
        }
        let access_log = prefix.join("access.log");
        let config = format!(
            "daemon off;\nmaster_process on;\nworker_processes 1;\nuser {user};\n\
             pid {prefix}/nginx.pid;\nerror_log {prefix}/error.log info;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n  access_log {access};\n  client_body_temp_path {prefix}/tmp;\n\
             \x20 default_type application/octet-stream;\n\
             \x20 server {{\n    listen 127.0.0.1:{port};\n    root {root};\n  }}\n}}\n",
            prefix = prefix.display(),
            access = access_log.display(),
            root = root.display(),
        );
        let config_path = prefix.join("nginx.conf");
        std::fs::write(&config_path, config).expect("write nginx.conf");
        let log = prefix.join("error.log");
        let mut cmd = Command::new(program("nginx"));
        cmd.arg("-p")
            .arg(prefix)
            .arg("-c")
            .arg(&config_path)
            .arg("-e")
            .arg(&log);
        let mut process = Running::spawn("nginx", cmd, log);
        process.wait_ready(|| tcp_answers(loopback(port)));
        Self {
            port,
            root,
            access_log,
            process,
            _dir: dir,
        }
    }

    /// The requests nginx logged so far, one line each.
    pub(crate) fn requests(&self) -> Vec<String> {
        std::fs::read_to_string(&self.access_log)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Nginx {
    /// SIGTERM first: the master stops its workers (SIGKILL, from `Running`, would leave the
    /// worker serving the port). SIGKILL follows if it has not exited within 5 s.
    fn drop(&mut self) {
        let pid = self.process.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.process.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A running unbound (recursive resolver) on `127.0.0.1:port`, UDP and TCP, resolving only
/// its stub zones (no cache: every query goes to the authoritative servers).
pub(crate) struct Unbound {
    /// Where it answers, UDP and TCP.
    pub addr: SocketAddr,
    /// unbound's stdout and stderr.
    pub log: PathBuf,
    process: Running,
    dir: TempDir,
}

impl Unbound {
    /// Starts a resolver with one `stub-zone` per zone in `stubs` (pairs of zone and
    /// authoritative server; a zone listed twice gets both servers). It follows CNAMEs across
    /// zones, does no DNSSEC validation, and caches nothing (`cache-max-ttl: 0`,
    /// `cache-max-negative-ttl: 0`), so a record changed on the authoritative server is
    /// visible at once. Settings per PEERS.md.
    pub(crate) fn start(stubs: &[(&str, SocketAddr)]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("unbound-")
            .tempdir()
            .expect("tempdir");
        let root = dir.path();
        let port = free_port();
        let mut config = format!(
            "server:\n\
             \x20   interface: 127.0.0.1@{port}\n\
             \x20   port: {port}\n\
             \x20   do-ip4: yes\n\
             \x20   do-ip6: no\n\
             \x20   do-udp: yes\n\
             \x20   do-tcp: yes\n\
             \x20   access-control: 127.0.0.0/8 allow\n\
             \x20   do-not-query-localhost: no\n\
             \x20   local-zone: \"test.\" nodefault\n\
             \x20   domain-insecure: \"test.\"\n\
             \x20   module-config: \"iterator\"\n\
             \x20   cache-max-ttl: 0\n\
             \x20   cache-max-negative-ttl: 0\n\
             \x20   username: \"\"\n\
             \x20   chroot: \"\"\n\
             \x20   directory: \"{root}\"\n\
             \x20   pidfile: \"{root}/unbound.pid\"\n\
             \x20   do-daemonize: no\n\
             \x20   use-syslog: no\n\
             \x20   logfile: \"\"\n\
             \x20   verbosity: 1\n\
             \x20   num-threads: 1\n\
             remote-control:\n\
             \x20   control-enable: no\n",
            root = root.display()
        );
        let mut grouped: BTreeMap<String, Vec<SocketAddr>> = BTreeMap::new();
        for (zone, server) in stubs {
            grouped.entry(absolute(zone)).or_default().push(*server);
        }
        for (zone, servers) in &grouped {
            writeln!(config, "stub-zone:\n    name: \"{zone}\"").expect("fmt");
            for server in servers {
                writeln!(config, "    stub-addr: {}@{}", server.ip(), server.port()).expect("fmt");
            }
        }
        let config_path = root.join("unbound.conf");
        std::fs::write(&config_path, config).expect("write unbound.conf");

        let log = root.join("unbound.log");
        let mut cmd = Command::new(program("unbound"));
        cmd.arg("-d").arg("-c").arg(&config_path).current_dir(root);
        let process = Running::spawn("unbound", cmd, log.clone());
        let mut unbound = Self {
            addr: loopback(port),
            log,
            process,
            dir,
        };
        let addr = unbound.addr;
        unbound.process.wait_ready(|| tcp_answers(addr));
        unbound
    }

    /// Resolves `name`/`rtype` through unbound: the answer records' rdata in presentation
    /// format, the CNAME chain first (`["lbl.acme.test.", "\"hello\""]`).
    pub(crate) fn query(&self, name: &str, rtype: &str) -> Vec<String> {
        self.lookup(name, rtype).rdata()
    }

    /// The full answer of [`Unbound::query`] (response code and records).
    pub(crate) fn lookup(&self, name: &str, rtype: &str) -> Answer {
        dns_lookup(self.addr, name, rtype)
    }

    /// unbound's pid.
    pub(crate) fn pid(&self) -> u32 {
        self.process.child.id()
    }

    /// The last lines of unbound's log.
    pub(crate) fn log_tail(&self) -> String {
        self.process.log_tail()
    }

    /// The temp dir holding the config and log.
    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }
}

// ---------------------------------------------------------------------------------------------
// Pebble

/// How to run [`Pebble`]. Start from [`PebbleOptions::new`] and change fields:
/// `PebbleOptions { validity_secs: Some(300), ..PebbleOptions::new(unbound.addr) }`.
#[derive(Clone, Debug)]
pub(crate) struct PebbleOptions {
    /// The resolver Pebble's VA uses for DNS-01 and for the addresses of HTTP-01/TLS-ALPN-01
    /// names (`-dnsserver`); normally an [`Unbound`] in front of a [`Knot`].
    pub dns_server: SocketAddr,
    /// `(kid, base64url HMAC key)`: when set, `externalAccountBindingRequired` is true and this
    /// is the only key (see [`random_eab`]).
    pub eab: Option<(String, String)>,
    /// `PEBBLE_WFE_NONCEREJECT`: percent of good nonces rejected with badNonce (default 0).
    pub nonce_reject_percent: u8,
    /// When false (default), `PEBBLE_VA_NOSLEEP=1`: no random 0–15 s sleep per validation.
    pub va_sleep: bool,
    /// `certificateValidityPeriod` in seconds (Pebble's default, 5 years, when `None`).
    pub validity_secs: Option<u64>,
    /// `PEBBLE_AUTHZREUSE`: percent of valid authorizations reused (default 0).
    pub authz_reuse_percent: u8,
    /// Run with `-strict`.
    pub strict: bool,
    /// More environment, e.g. `("PEBBLE_VA_ALWAYS_VALID", "1")` or `("PEBBLE_CHAIN_LENGTH",
    /// "3")`. Other `PEBBLE_*` variables of the test's environment are not passed on.
    pub env: Vec<(String, String)>,
}

impl PebbleOptions {
    /// Deterministic defaults: no EAB, no badNonce, no VA sleep, no authz reuse, default
    /// validity.
    pub(crate) fn new(dns_server: SocketAddr) -> Self {
        Self {
            dns_server,
            eab: None,
            nonce_reject_percent: 0,
            va_sleep: false,
            validity_secs: None,
            authz_reuse_percent: 0,
            strict: false,
            env: Vec::new(),
        }
    }
}

/// A fresh EAB credential: `("kid-<hex>", <32 random bytes, base64url without padding>)`.
pub(crate) fn random_eab() -> (String, String) {
    let kid: String = random_bytes::<6>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let key = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes::<32>());
    (format!("kid-{kid}"), key)
}

/// A running Pebble (ACME test CA). All state is in memory: each start has a new issuance root
/// and no accounts.
pub(crate) struct Pebble {
    /// `https://127.0.0.1:<port>/dir`.
    pub directory_url: String,
    /// The CA (PEM file) that signed Pebble's HTTPS listener certificate (for `localhost`,
    /// `127.0.0.1`, `::1`): the ACME client must trust it.
    pub tls_root_pem: PathBuf,
    /// `https://127.0.0.1:<port>` (same TLS certificate): `/roots/0`, `/intermediates/0`,
    /// `/cert-status-by-serial/<hex>`.
    pub management_url: String,
    /// Where Pebble's VA connects for HTTP-01 (`httpPort`) on the validated name's address.
    pub http_port: u16,
    /// Where Pebble's VA connects for TLS-ALPN-01 (`tlsPort`).
    pub tls_port: u16,
    /// The EAB credential when one is required.
    pub eab: Option<(String, String)>,
    /// Pebble's stdout and stderr.
    pub log: PathBuf,
    process: Running,
    dir: TempDir,
}

impl Pebble {
    /// Starts Pebble on free 127.0.0.1 ports with a fresh TLS certificate, and returns once
    /// its directory answers over HTTPS.
    pub(crate) fn start(options: PebbleOptions) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("pebble-")
            .tempdir()
            .expect("tempdir");
        let root = dir.path();
        let (listen, management) = (free_port(), free_port());
        let (http_port, tls_port) = (free_port(), free_port());

        let (ca_pem, cert_pem, key_pem) = tls_certificate();
        let tls_root_pem = root.join("tls-ca.pem");
        std::fs::write(&tls_root_pem, ca_pem).expect("write TLS CA");
        std::fs::write(root.join("tls-cert.pem"), cert_pem).expect("write TLS cert");
        std::fs::write(root.join("tls-key.pem"), key_pem).expect("write TLS key");

        let mut settings = serde_json::json!({
            "listenAddress": format!("127.0.0.1:{listen}"),
            "managementListenAddress": format!("127.0.0.1:{management}"),
            "certificate": root.join("tls-cert.pem"),
            "privateKey": root.join("tls-key.pem"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": options.eab.is_some(),
            "externalAccountMACKeys": {},
            "domainBlocklist": [],
        });
        if let Some((kid, key)) = &options.eab {
            settings["externalAccountMACKeys"][kid] = key.clone().into();
        }
        if let Some(secs) = options.validity_secs {
            settings["certificateValidityPeriod"] = secs.into();
        }
        let config_path = root.join("pebble-config.json");
        std::fs::write(
            &config_path,
            serde_json::to_vec_pretty(&serde_json::json!({ "pebble": settings })).expect("json"),
        )
        .expect("write pebble config");

        let log = root.join("pebble.log");
        let mut cmd = Command::new(program("pebble"));
        cmd.arg("-config")
            .arg(&config_path)
            .arg("-dnsserver")
            .arg(options.dns_server.to_string())
            .current_dir(root);
        if options.strict {
            cmd.arg("-strict");
        }
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("PEBBLE_") {
                cmd.env_remove(name);
            }
        }
        if !options.va_sleep {
            cmd.env("PEBBLE_VA_NOSLEEP", "1");
        }
        cmd.env(
            "PEBBLE_WFE_NONCEREJECT",
            options.nonce_reject_percent.to_string(),
        )
        .env("PEBBLE_AUTHZREUSE", options.authz_reuse_percent.to_string())
        .envs(options.env.iter().map(|(k, v)| (k, v)));
        let process = Running::spawn("pebble", cmd, log.clone());
        let mut pebble = Self {
            directory_url: format!("https://127.0.0.1:{listen}/dir"),
            tls_root_pem,
            management_url: format!("https://127.0.0.1:{management}"),
            http_port,
            tls_port,
            eab: options.eab,
            log,
            process,
            dir,
        };
        let (directory, ca) = (pebble.directory_url.clone(), pebble.tls_root_pem.clone());
        let roots = format!("{}/roots/0", pebble.management_url);
        // curl only (no bare TCP probes: Pebble logs each as a TLS handshake error).
        pebble.process.wait_ready(|| {
            curl(&ca, &directory).is_ok_and(|body| body.contains("newOrder"))
                && curl(&ca, &roots).is_ok()
        });
        pebble
    }

    /// GETs `url` (absolute, or a path on the management API such as `/roots/0`) trusting
    /// [`Pebble::tls_root_pem`]; panics unless it answers 2xx. Returns the body.
    pub(crate) fn get(&self, url: &str) -> String {
        let url = if url.starts_with('/') {
            format!("{}{url}", self.management_url)
        } else {
            url.to_owned()
        };
        curl(&self.tls_root_pem, &url).unwrap_or_else(|e| {
            panic!(
                "GET {url} from Pebble failed: {e}\npebble log:\n{}",
                self.process.log_tail()
            )
        })
    }

    /// The directory, parsed.
    pub(crate) fn directory(&self) -> serde_json::Value {
        let body = self.get(&self.directory_url);
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("bad directory JSON ({e}):\n{body}"))
    }

    /// The root that signs issued certificates (`/roots/0`, PEM). New on each start.
    pub(crate) fn issuance_root_pem(&self) -> String {
        self.pem("/roots/0")
    }

    /// The intermediate that signs issued certificates (`/intermediates/0`, PEM).
    pub(crate) fn intermediate_pem(&self) -> String {
        self.pem("/intermediates/0")
    }

    fn pem(&self, path: &str) -> String {
        let body = self.get(path);
        assert!(
            body.contains("-----BEGIN CERTIFICATE-----"),
            "GET {path} from Pebble is not a PEM certificate:\n{body}"
        );
        body
    }

    /// Pebble's pid.
    pub(crate) fn pid(&self) -> u32 {
        self.process.child.id()
    }

    /// The last lines of Pebble's log.
    pub(crate) fn log_tail(&self) -> String {
        self.process.log_tail()
    }

    /// The temp dir holding the config, TLS files and log.
    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// A test CA and a leaf for `localhost`, `127.0.0.1`, `::1` signed by it (ECDSA P-256):
/// `(ca_pem, leaf_pem, leaf_key_pem)`.
fn tls_certificate() -> (String, String, String) {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "certkeeper test: Pebble TLS CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("CA key"))
        .expect("self-sign CA");

    let mut leaf_params = CertificateParams::new(vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ])
    .expect("leaf params");
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_key = KeyPair::generate().expect("leaf key");
    let leaf = leaf_params.signed_by(&leaf_key, &ca).expect("sign leaf");
    (ca.pem(), leaf.pem(), leaf_key.serialize_pem())
}

/// `curl` GET trusting `ca`: the body on 2xx, otherwise curl's error.
fn curl(ca: &Path, url: &str) -> Result<String, String> {
    let out = Command::new(program("curl"))
        .args(["--silent", "--show-error", "--fail", "--max-time", "10"])
        .arg("--cacert")
        .arg(ca)
        .arg(url)
        .output()
        .map_err(|e| format!("cannot run curl: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "curl exited with {}: {}",
            out.status,
            output_text(&out)
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// ARI and profiles in front of Pebble

/// `tests/peers/ari_proxy.py` in front of a [`Pebble`]: the same CA, plus ACME renewal
/// information (RFC 9773) and profiles, which Debian's Pebble lacks. It serves HTTPS with
/// Pebble's certificate, so clients trust [`Pebble::tls_root_pem`] for it too.
pub(crate) struct AriProxy {
    /// `https://127.0.0.1:<port>/dir`.
    pub directory_url: String,
    /// One JSON object per line: `{"new-order": <payload>}` or `{"renewal-info": <certID>}`.
    pub requests: PathBuf,
    /// The proxy's stderr (one line per request).
    pub log: PathBuf,
    base_url: String,
    ca: PathBuf,
    process: Running,
    _dir: TempDir,
}

impl AriProxy {
    /// Starts the proxy for `pebble` (which must outlive it) and returns once its directory
    /// answers with `renewalInfo`. A certificate's suggested window is, by default, [now − 60
    /// s, now + 60 s] (renew now) from the first time it is asked about, with `Retry-After:
    /// 3600`; change that with [`AriProxy::control`].
    pub(crate) fn start(pebble: &Pebble) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("ari-proxy-")
            .tempdir()
            .expect("tempdir");
        let port = free_port();
        let upstream = pebble.directory_url.trim_end_matches("/dir").to_owned();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/ari_proxy.py");
        let requests = dir.path().join("requests.jsonl");
        let log = dir.path().join("ari-proxy.log");
        let mut cmd = Command::new("/usr/bin/python3");
        cmd.arg(script)
            .arg("--listen")
            .arg(port.to_string())
            .arg("--upstream")
            .arg(&upstream)
            .arg("--ca")
            .arg(&pebble.tls_root_pem)
            .arg("--cert")
            .arg(pebble.dir().join("tls-cert.pem"))
            .arg("--key")
            .arg(pebble.dir().join("tls-key.pem"))
            .arg("--log")
            .arg(&requests);
        let process = Running::spawn("ari_proxy.py", cmd, log.clone());
        let base_url = format!("https://127.0.0.1:{port}");
        let mut proxy = Self {
            directory_url: format!("{base_url}/dir"),
            requests,
            log,
            base_url,
            ca: pebble.tls_root_pem.clone(),
            process,
            _dir: dir,
        };
        let (ca, url) = (proxy.ca.clone(), proxy.directory_url.clone());
        proxy
            .process
            .wait_ready(|| curl(&ca, &url).is_ok_and(|body| body.contains("renewalInfo")));
        proxy
    }

    /// Changes the proxy's behaviour: `{"windows": [[start_s, end_s], ...]}` (each new
    /// certificate takes the first, offsets from that moment; the last one stays),
    /// `{"forget": true}` (certificates get new windows), `{"retry_after": s}`,
    /// `{"reject_replaces": n}` (refuse the next n orders carrying `replaces` with
    /// alreadyReplaced).
    pub(crate) fn control(&self, settings: serde_json::Value) {
        let out = Command::new(program("curl"))
            .args(["--silent", "--show-error", "--fail", "--max-time", "10"])
            .arg("--cacert")
            .arg(&self.ca)
            .args(["-H", "Content-Type: application/json", "--data"])
            .arg(settings.to_string())
            .arg(format!("{}/test-control", self.base_url))
            .output()
            .expect("run curl");
        assert!(
            out.status.success(),
            "control of the ARI proxy failed: {}\n{}",
            output_text(&out),
            self.process.log_tail()
        );
    }

    /// The newOrder payloads and renewal-info requests seen so far, in order.
    pub(crate) fn seen(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.requests)
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).expect("proxy log line is JSON"))
            .collect()
    }

    pub(crate) fn log_tail(&self) -> String {
        self.process.log_tail()
    }
}
