//! ACME DNS-01 issuance: certkeeper vs lego 4.9, against the same Pebble, Knot and unbound.
//!
//!     cargo bench --bench acme_issuance -- [--certs 50] [--concurrency 10] [--runs 1]
//!         [--clients certkeeper,lego] [--modes sequential,concurrent,bulk]
//!         [--lego-polling-interval 0] [--pause SECONDS] [--keep-logs DIR]
//!
//! One Knot serves `customer.test.` (the `_acme-challenge.<name>` CNAMEs) and `acme.test.`
//! (where both clients write the challenge TXT records, over RFC 2136 with TSIG); one unbound
//! resolves both zones from Knot without caching; one Pebble validates through unbound
//! (`PEBBLE_VA_NOSLEEP=1 PEBBLE_AUTHZREUSE=0 PEBBLE_WFE_NONCEREJECT=0`), so every
//! certificate's validation really follows its CNAME into the other zone. Every certificate
//! is one DNS name with an EC P-256 key; every name is used once (`ck-seq1-7.customer.test`,
//! `lego-conc1-7.customer.test`, ...), so no authorization can be reused.
//!
//! - **sequential**: one certificate at a time: certkeeper gets the next request once the
//!   previous one is issued; lego runs one `lego run` process after another.
//! - **concurrent**: certkeeper gets every request at once and runs `--concurrency` orders at a
//!   time (`[renewal] concurrency` and `max-orders-in-flight`); lego runs `--concurrency`
//!   processes side by side, each starting the next name when it is done.
//!
//! The CNAMEs of a batch are created before it starts (one nsupdate), so the timed part is
//! issuance only. certkeeper's label is `certkeeper::validation::label(name)`, the function the
//! daemon uses, and the bench checks it against the records the daemon returns; lego's target
//! is `<name's first label>.acme.test.`, found by lego itself through the CNAME. Both clients
//! have their ACME account before any timed batch (one untimed certificate each).
//!
//! certkeeper is driven through its HTTP API on the Unix socket (`POST /v1/certificates`).
//! Completion is read from the daemon's own log (`renewal{cert=<id>}: renewed`, written after
//! the version is committed), not by polling the API: polling would add the bench's requests
//! to the daemon's CPU. Each certificate is checked with `GET /v1/certificates/<id>` after the
//! batch (outside the CPU window). CPU: certkeeper's from `/proc/<pid>/stat` (utime + stime)
//! across the batch; lego's is its processes' (this process's cutime + cstime, which count
//! every child reaped, and only lego processes are reaped during a batch); Pebble's, and
//! Knot + unbound's, from their `/proc/<pid>/stat`. `CERTKEEPER_BENCH_LOG` sets the daemon's
//! log filter (`warn,certkeeper=debug` logs each step of every order; keep it with
//! `--keep-logs`). Needs `lego`, `pebble`, `knot`,
//! `unbound`, `knot-dnsutils` and `bind9-dnsutils` (`tests/peers/install.sh`).

mod support;

#[allow(dead_code)] // the bench uses part of the test harness
#[path = "../tests/common/peers.rs"]
mod peers;

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use peers::{Knot, Pebble, PebbleOptions, Unbound};
use support::{Server, call, connect};

/// How long one certificate may take before the bench gives up.
const CERT_TIMEOUT: Duration = Duration::from_secs(300);

struct Args {
    certs: usize,
    concurrency: usize,
    runs: usize,
    clients: Vec<String>,
    modes: Vec<String>,
    /// Copy every log (daemon, Knot, unbound, Pebble, lego) here at the end.
    keep_logs: Option<PathBuf>,
    /// lego's `RFC2136_POLLING_INTERVAL` (seconds): it sleeps this long before its
    /// propagation check.
    lego_polling_interval: u64,
    /// Seconds to wait before each batch but the first: the clients' connections to the CA
    /// sit idle that long, as between real renewals.
    pause: u64,
}

fn args() -> Args {
    let mut args = Args {
        certs: 50,
        concurrency: 10,
        runs: 1,
        clients: vec!["certkeeper".into(), "lego".into()],
        modes: vec!["sequential".into(), "concurrent".into(), "bulk".into()],
        keep_logs: None,
        lego_polling_interval: 0,
        pause: 0,
    };
    let list = |v: Option<String>, what: &str| -> Vec<String> {
        v.unwrap_or_else(|| panic!("{what} needs a value"))
            .split(',')
            .map(str::to_owned)
            .collect()
    };
    let number = |v: Option<String>, what: &str| -> usize {
        v.and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{what} N"))
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--certs" => args.certs = number(it.next(), "--certs"),
            "--concurrency" => args.concurrency = number(it.next(), "--concurrency"),
            "--runs" => args.runs = number(it.next(), "--runs"),
            "--clients" => args.clients = list(it.next(), "--clients"),
            "--modes" => args.modes = list(it.next(), "--modes"),
            "--keep-logs" => args.keep_logs = it.next().map(PathBuf::from),
            "--pause" => args.pause = number(it.next(), "--pause") as u64,
            "--lego-polling-interval" => {
                args.lego_polling_interval = number(it.next(), "--lego-polling-interval") as u64;
            }
            _ => {} // cargo bench passes --bench
        }
    }
    args
}

// ---------------------------------------------------------------------------------------------
// CPU from /proc

/// Fields of `/proc/<pid>/stat` after the command name, parsed as numbers.
fn stat_fields(pid: &str) -> Vec<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    rest.split_whitespace()
        .map(|v| v.parse().unwrap_or(0.0))
        .collect()
}

/// utime + stime of `pid`, in milliseconds (USER_HZ is 100).
fn cpu_ms(pid: u32) -> f64 {
    let f = stat_fields(&pid.to_string());
    (f.get(11).unwrap_or(&0.0) + f.get(12).unwrap_or(&0.0)) * 10.0
}

/// cutime + cstime of this process: the CPU of every child reaped so far, in milliseconds.
fn children_cpu_ms() -> f64 {
    let f = stat_fields("self");
    (f.get(13).unwrap_or(&0.0) + f.get(14).unwrap_or(&0.0)) * 10.0
}

// ---------------------------------------------------------------------------------------------
// The peers

struct Peers {
    knot: Knot,
    unbound: Unbound,
    pebble: Pebble,
}

impl Peers {
    fn start() -> Self {
        let knot = Knot::start(&["customer.test.", "acme.test."]);
        let unbound = Unbound::start(&[("customer.test.", knot.addr), ("acme.test.", knot.addr)]);
        let pebble = Pebble::start(PebbleOptions {
            nonce_reject_percent: 0, // PEBBLE_WFE_NONCEREJECT=0
            va_sleep: false,         // PEBBLE_VA_NOSLEEP=1
            authz_reuse_percent: 0,  // PEBBLE_AUTHZREUSE=0
            ..PebbleOptions::new(unbound.addr)
        });
        Self {
            knot,
            unbound,
            pebble,
        }
    }

    /// Creates `_acme-challenge.<name>. CNAME <target>` for each pair, in one update, and checks
    /// through unbound that the last one resolves.
    fn add_cnames(&self, records: &[(String, String)]) {
        for chunk in records.chunks(25) {
            let lines: Vec<String> = chunk
                .iter()
                .map(|(name, target)| {
                    format!("update add _acme-challenge.{name}. 60 CNAME {target}")
                })
                .collect();
            let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
            self.knot.nsupdate("customer.test.", &lines);
        }
        if let Some((name, target)) = records.last() {
            let answer = self
                .unbound
                .query(&format!("_acme-challenge.{name}."), "CNAME");
            assert_eq!(
                answer,
                vec![target.clone()],
                "CNAME of {name} through unbound"
            );
        }
    }

    /// CPU of Pebble, and of Knot + unbound, in milliseconds.
    fn cpu_ms(&self) -> (f64, f64) {
        (
            cpu_ms(self.pebble.pid()),
            cpu_ms(self.knot.pid()) + cpu_ms(self.unbound.pid()),
        )
    }
}

/// What one batch measured.
struct Batch {
    requested: usize,
    issued: usize,
    wall: Duration,
    /// Request (or process start) to issued, per certificate, sorted.
    latencies: Vec<Duration>,
    client_cpu_ms: f64,
    pebble_cpu_ms: f64,
    dns_cpu_ms: f64,
    /// Failed attempts that were retried (certkeeper) or processes that failed (lego).
    failures: usize,
    /// certkeeper only: mean seconds from the request to the order, from the order to the
    /// CA's certificate, from there to the committed version, and from there to the bench
    /// noticing it in the log.
    phases: Option<[f64; 4]>,
    notes: Vec<String>,
    /// lego only: the log of the slowest process.
    slowest: Option<String>,
}

fn measure_peers<T>(peers: &Peers, f: impl FnOnce() -> T) -> (T, f64, f64) {
    let (pebble0, dns0) = peers.cpu_ms();
    let result = f();
    let (pebble1, dns1) = peers.cpu_ms();
    (result, pebble1 - pebble0, dns1 - dns0)
}

// ---------------------------------------------------------------------------------------------
// certkeeper

struct Certkeeper {
    server: Server,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

fn start_certkeeper(peers: &Peers, concurrency: usize) -> Certkeeper {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("certkeeper.toml");
    let knot = &peers.knot;
    std::fs::write(
        &config,
        format!(
            "[renewal]\nconcurrency = {concurrency}\n\n\
             [[acme]]\nname = \"pebble\"\ndirectory = {directory:?}\n\
             contact = [\"mailto:ops@customer.test\"]\ntrusted-roots = {roots:?}\n\
             max-orders-in-flight = {concurrency}\n\n\
             [validation.dns]\nzone = \"acme.test\"\nnameservers = [\"{resolver}\"]\nttl = 5\n\
             publisher = \"rfc2136\"\nserver = \"{server}\"\nkey-name = \"{key_name}\"\n\
             key-file = {key_file:?}\n",
            directory = peers.pebble.directory_url,
            roots = peers.pebble.tls_root_pem.display().to_string(),
            resolver = peers.unbound.addr,
            server = knot.addr,
            key_name = knot.tsig_name,
            key_file = knot.tsig_key_file.display().to_string(),
        ),
    )
    .expect("write config");
    let log = dir.path().join("daemon.log");
    // Info level: the bench reads "renewed" lines (the daemon's default level is info too).
    // CERTKEEPER_BENCH_LOG=warn,certkeeper=debug shows each step of every order.
    let filter =
        std::env::var("CERTKEEPER_BENCH_LOG").unwrap_or_else(|_| "warn,certkeeper=info".into());
    let server = support::start_certkeeper(&dir.path().join("state"), &config, Some(&log), &filter);
    Certkeeper {
        server,
        log,
        _dir: dir,
    }
}

/// Reads the lines appended to a file since it was opened.
struct LogFollower {
    file: std::fs::File,
    partial: String,
}

impl LogFollower {
    fn open(path: &Path) -> Self {
        let mut file = std::fs::File::open(path).expect("daemon log");
        file.seek(SeekFrom::End(0)).expect("seek log");
        Self {
            file,
            partial: String::new(),
        }
    }

    fn new_lines(&mut self) -> Vec<String> {
        let mut text = String::new();
        self.file.read_to_string(&mut text).expect("read log");
        self.partial.push_str(&text);
        let Some(end) = self.partial.rfind('\n') else {
            return Vec::new();
        };
        let complete: String = self.partial.drain(..=end).collect();
        complete.lines().map(str::to_owned).collect()
    }
}

/// A daemon log line about one certificate: its time, id and message.
struct LogLine {
    at: Option<OffsetDateTime>,
    cert: String,
    line: String,
}

fn parse_log_line(line: &str) -> Option<LogLine> {
    let start = line.find("renewal{cert=")? + "renewal{cert=".len();
    let end = start + line[start..].find('}')?;
    let at = line
        .split_whitespace()
        .next()
        .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok());
    Some(LogLine {
        at,
        cert: line[start..end].to_owned(),
        line: line.to_owned(),
    })
}

/// One certificate in a certkeeper batch.
struct Tracked {
    sent: Instant,
    sent_at: OffsetDateTime,
    order: Option<OffsetDateTime>,
    acme_issued: Option<OffsetDateTime>,
    renewed: Option<OffsetDateTime>,
    seen: Option<Instant>,
}

fn secs(from: OffsetDateTime, to: OffsetDateTime) -> f64 {
    (to - from).as_seconds_f64()
}

/// Requests `names` from certkeeper, `in_flight` at a time from the client's side (1 for the
/// sequential mode; all of them for the concurrent one, where the daemon's own limits decide),
/// and waits until each is issued.
async fn certkeeper_batch(ck: &Certkeeper, names: &[String], in_flight: usize) -> Batch {
    let mut sender = connect(&ck.server.target).await;
    let mut log = LogFollower::open(&ck.log);
    let mut tracked: HashMap<String, Tracked> = HashMap::new();
    let mut ids = Vec::with_capacity(names.len());
    let mut failures = 0;
    let mut notes = Vec::new();
    let cpu0 = ck.server.cpu_ms();
    let started = Instant::now();
    let mut next = 0;
    let mut done = 0;
    while done < names.len() {
        while next < names.len() && next - done < in_flight {
            let name = &names[next];
            let body = serde_json::json!({
                "domains": [name],
                "issuer": "pebble",
                "validation": "dns",
                "key_algorithm": "ec-p256",
            });
            let (sent, sent_at) = (Instant::now(), OffsetDateTime::now_utc());
            let answer = call(
                &mut sender,
                "POST",
                "/v1/certificates",
                serde_json::to_vec(&body).expect("json"),
            )
            .await;
            let cert: serde_json::Value = serde_json::from_slice(&answer).expect("certificate");
            let id = cert["id"].as_str().expect("id").to_owned();
            let expected = format!("{}.acme.test.", certkeeper::validation::label(name));
            assert_eq!(
                cert["validation_records"][0]["Value"], expected,
                "the CNAME the bench created for {name} is the one the daemon asks for"
            );
            tracked.insert(
                id.clone(),
                Tracked {
                    sent,
                    sent_at,
                    order: None,
                    acme_issued: None,
                    renewed: None,
                    seen: None,
                },
            );
            ids.push(id);
            next += 1;
        }
        let mut progressed = false;
        for line in log.new_lines() {
            let Some(parsed) = parse_log_line(&line) else {
                continue;
            };
            let Some(t) = tracked.get_mut(&parsed.cert) else {
                continue;
            };
            if parsed.line.contains("ACME order created") {
                t.order = parsed.at;
            } else if parsed.line.contains("ACME certificate issued") {
                t.acme_issued = parsed.at;
            } else if parsed.line.contains(": renewed") {
                t.renewed = parsed.at;
                t.seen = Some(Instant::now());
                done += 1;
                progressed = true;
            } else if parsed.line.contains("renewal failed") {
                failures += 1;
                notes.push(parsed.line.clone());
            }
        }
        let oldest = tracked
            .values()
            .filter(|t| t.seen.is_none())
            .map(|t| t.sent)
            .min();
        assert!(
            oldest.is_none_or(|sent| sent.elapsed() < CERT_TIMEOUT),
            "certkeeper: a certificate was not issued within {CERT_TIMEOUT:?}; log {}:\n{}",
            ck.log.display(),
            peers::log_tail(&ck.log, 40)
        );
        if !progressed {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let wall = started.elapsed();
    let client_cpu_ms = ck.server.cpu_ms() - cpu0;
    for id in &ids {
        let answer = call(
            &mut sender,
            "GET",
            &format!("/v1/certificates/{id}"),
            vec![],
        )
        .await;
        let cert: serde_json::Value = serde_json::from_slice(&answer).expect("certificate");
        assert_eq!(cert["status"], "issued", "{cert:#}");
    }
    let mut latencies: Vec<Duration> = tracked
        .values()
        .filter_map(|t| t.seen.map(|seen| seen - t.sent))
        .collect();
    latencies.sort();
    let mut sums = [0.0; 4];
    let mut complete = 0;
    for t in tracked.values() {
        if let (Some(order), Some(acme), Some(renewed), Some(seen)) =
            (t.order, t.acme_issued, t.renewed, t.seen)
        {
            sums[0] += secs(t.sent_at, order);
            sums[1] += secs(order, acme);
            sums[2] += secs(acme, renewed);
            sums[3] += ((seen - t.sent).as_secs_f64() - secs(t.sent_at, renewed)).max(0.0);
            complete += 1;
        }
    }
    let phases = (complete > 0).then(|| sums.map(|s| s / complete as f64));
    Batch {
        requested: names.len(),
        issued: latencies.len(),
        wall,
        latencies,
        client_cpu_ms,
        pebble_cpu_ms: 0.0,
        dns_cpu_ms: 0.0,
        failures,
        phases,
        notes,
        slowest: None,
    }
}

// ---------------------------------------------------------------------------------------------
// lego

struct Lego {
    path: PathBuf,
    logs: PathBuf,
    env: Vec<(String, String)>,
    server: String,
    resolver: String,
    _dir: tempfile::TempDir,
}

impl Lego {
    fn new(peers: &Peers, polling_interval: u64) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let knot = &peers.knot;
        let env = [
            (
                "LEGO_CA_CERTIFICATES",
                peers.pebble.tls_root_pem.display().to_string(),
            ),
            ("RFC2136_NAMESERVER", knot.addr.to_string()),
            ("RFC2136_TSIG_KEY", format!("{}.", knot.tsig_name)),
            ("RFC2136_TSIG_SECRET", knot.tsig_secret_b64.clone()),
            (
                "RFC2136_TSIG_ALGORITHM",
                format!("{}.", peers::TSIG_ALGORITHM),
            ),
            // The same TTL as certkeeper's (unbound caches nothing, so it changes nothing).
            ("RFC2136_TTL", "5".to_owned()),
            // lego sleeps one polling interval (default 2 s) after publishing, before its
            // propagation check; the record is visible at once here, so 0 costs lego nothing
            // and measures it at its fastest.
            ("RFC2136_POLLING_INTERVAL", polling_interval.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let logs = dir.path().join("logs");
        std::fs::create_dir(&logs).expect("lego logs dir");
        Self {
            path: dir.path().join("lego"),
            logs,
            env,
            server: peers.pebble.directory_url.clone(),
            resolver: peers.unbound.addr.to_string(),
            _dir: dir,
        }
    }

    /// `_acme-challenge.<name>` points here; lego finds it through the CNAME and writes there.
    fn target(name: &str) -> String {
        let first = name.split('.').next().expect("a label");
        format!("{first}.acme.test.")
    }

    /// One `lego run` for `name`: Ok(wall time) when it exited 0 and wrote the certificate.
    fn run(&self, name: &str) -> Result<Duration, String> {
        let log = self.logs.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("lego log");
        let started = Instant::now();
        let status = Command::new("lego")
            .env_remove("LEGO_DISABLE_CNAME_SUPPORT")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .args(["--server", &self.server])
            .args(["--email", "ops@customer.test", "--accept-tos"])
            .args(["--key-type", "ec256"])
            .arg("--path")
            .arg(&self.path)
            .args(["--dns", "rfc2136", "--dns.disable-cp"])
            .args(["--dns.resolvers", &self.resolver])
            .args(["--domains", name, "run"])
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log handle"))
            .stderr(file)
            .status()
            .expect("run lego (apt-get install lego)");
        let wall = started.elapsed();
        let crt = self.path.join("certificates").join(format!("{name}.crt"));
        if status.success() && crt.is_file() {
            Ok(wall)
        } else {
            Err(format!(
                "lego for {name}: {status}, certificate {}:\n{}",
                if crt.is_file() { "written" } else { "missing" },
                peers::log_tail(&log, 15)
            ))
        }
    }
}

/// `names` through `processes` lego processes side by side, each taking the next name.
fn lego_batch(lego: &Lego, names: &[String], processes: usize) -> Batch {
    let next = AtomicUsize::new(0);
    let results = Mutex::new(Vec::new());
    let cpu0 = children_cpu_ms();
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..processes {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(name) = names.get(i) else { break };
                    let result = lego.run(name).map(|wall| (wall, name.clone()));
                    results
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(result);
                }
            });
        }
    });
    let wall = started.elapsed();
    let client_cpu_ms = children_cpu_ms() - cpu0;
    let results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    let mut ok: Vec<(Duration, String)> = results.iter().filter_map(|r| r.clone().ok()).collect();
    ok.sort();
    let latencies: Vec<Duration> = ok.iter().map(|(wall, _)| *wall).collect();
    let slowest = ok.last().map(|(wall, name)| {
        format!(
            "{name}, {:.2} s:\n{}",
            wall.as_secs_f64(),
            peers::log_tail(&lego.logs.join(format!("{name}.log")), 40)
        )
    });
    let notes: Vec<String> = results.into_iter().filter_map(Result::err).collect();
    Batch {
        requested: names.len(),
        issued: latencies.len(),
        wall,
        latencies,
        client_cpu_ms,
        pebble_cpu_ms: 0.0,
        dns_cpu_ms: 0.0,
        failures: notes.len(),
        phases: None,
        notes,
        slowest,
    }
}

// ---------------------------------------------------------------------------------------------

fn quantile_s(sorted: &[Duration], q: f64) -> f64 {
    support::quantile_ms(sorted, q) / 1000.0
}

fn report(mode: &str, in_flight: usize, client: &str, batch: &Batch) {
    let n = batch.issued.max(1) as f64;
    println!(
        "| {mode} | {in_flight} | {client} | {}/{} | {:.2} | {:.3} | {:.2} | {:.2} | {:.1} | {:.1} | {:.1} | {} |",
        batch.issued,
        batch.requested,
        batch.wall.as_secs_f64(),
        batch.wall.as_secs_f64() / n,
        quantile_s(&batch.latencies, 0.5),
        batch.latencies.last().map_or(0.0, Duration::as_secs_f64),
        batch.client_cpu_ms / n,
        batch.pebble_cpu_ms / n,
        batch.dns_cpu_ms / n,
        batch.failures,
    );
}

/// Sleeps `seconds` before every batch but the first (`--pause`).
fn pause(first_batch: &mut bool, seconds: u64) {
    if !std::mem::take(first_batch) && seconds > 0 {
        std::thread::sleep(Duration::from_secs(seconds));
    }
}

fn command_output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn main() {
    // `cargo test --all-targets` runs this binary without `--bench`: only check it builds.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let args = args();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let peers = Peers::start();
    let run_certkeeper = args.clients.iter().any(|c| c == "certkeeper");
    let run_lego = args.clients.iter().any(|c| c == "lego");

    // Accounts first, outside any timed batch: one certificate each.
    let ck = run_certkeeper.then(|| {
        let ck = start_certkeeper(&peers, args.concurrency);
        let name = "ck-warmup.customer.test".to_owned();
        peers.add_cnames(&[(
            name.clone(),
            format!("{}.acme.test.", certkeeper::validation::label(&name)),
        )]);
        runtime.block_on(certkeeper_batch(&ck, &[name], 1));
        ck
    });
    let lego = run_lego.then(|| {
        let lego = Lego::new(&peers, args.lego_polling_interval);
        let name = "lego-warmup.customer.test";
        peers.add_cnames(&[(name.to_owned(), Lego::target(name))]);
        if let Err(err) = lego.run(name) {
            panic!("lego's first certificate failed: {err}");
        }
        lego
    });

    println!(
        "## ACME DNS-01 issuance: certkeeper vs lego ({} certificates per batch, {} UTC)\n",
        args.certs,
        OffsetDateTime::now_utc()
            .format(&Rfc3339)
            .unwrap_or_default()
    );
    println!(
        "certkeeper {} ({}), {}, Pebble 2.4.0 with PEBBLE_VA_NOSLEEP=1 PEBBLE_AUTHZREUSE=0 \
         PEBBLE_WFE_NONCEREJECT=0, validation through unbound and Knot\n",
        env!("CARGO_PKG_VERSION"),
        command_output("git", &["describe", "--always", "--dirty"]),
        command_output("lego", &["--version"]).replace("version dev", "(Debian 4.9.1)"),
    );
    println!(
        "| mode | in flight | client | issued | wall s | wall s/cert | latency p50 s | latency max s | client CPU ms/cert | Pebble CPU ms/cert | Knot+unbound CPU ms/cert | failed attempts |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut first_batch = true;
    let mut phases = Vec::new();
    let mut notes = Vec::new();
    let mut slowest = Vec::new();
    for run in 1..=args.runs {
        for mode in &args.modes {
            // (name tag, orders in flight, requests the client keeps in flight)
            let (tag, in_flight, client_limit) = match mode.as_str() {
                "sequential" => ("seq", 1, 1),
                "concurrent" => ("conc", args.concurrency, args.concurrency),
                "bulk" => ("bulk", args.concurrency, args.certs),
                other => panic!("unknown mode {other:?} (sequential, concurrent, bulk)"),
            };
            if let Some(ck) = &ck {
                pause(&mut first_batch, args.pause);
                let names: Vec<String> = (1..=args.certs)
                    .map(|i| format!("ck-{tag}{run}-{i}.customer.test"))
                    .collect();
                let cnames: Vec<(String, String)> = names
                    .iter()
                    .map(|n| {
                        (
                            n.clone(),
                            format!("{}.acme.test.", certkeeper::validation::label(n)),
                        )
                    })
                    .collect();
                peers.add_cnames(&cnames);
                let (mut batch, pebble, dns) = measure_peers(&peers, || {
                    runtime.block_on(certkeeper_batch(ck, &names, client_limit))
                });
                (batch.pebble_cpu_ms, batch.dns_cpu_ms) = (pebble, dns);
                report(mode, in_flight, "certkeeper", &batch);
                if let Some(p) = batch.phases {
                    phases.push((mode.clone(), p));
                }
                notes.extend(
                    batch
                        .notes
                        .into_iter()
                        .map(|n| format!("certkeeper {mode}: {n}")),
                );
            }
            // A lego process is its own client: "bulk" would be "concurrent" again.
            if let Some(lego) = lego.as_ref().filter(|_| mode != "bulk") {
                pause(&mut first_batch, args.pause);
                let names: Vec<String> = (1..=args.certs)
                    .map(|i| format!("lego-{tag}{run}-{i}.customer.test"))
                    .collect();
                let cnames: Vec<(String, String)> =
                    names.iter().map(|n| (n.clone(), Lego::target(n))).collect();
                peers.add_cnames(&cnames);
                let (mut batch, pebble, dns) =
                    measure_peers(&peers, || lego_batch(lego, &names, in_flight));
                (batch.pebble_cpu_ms, batch.dns_cpu_ms) = (pebble, dns);
                report(mode, in_flight, "lego", &batch);
                notes.extend(batch.notes.into_iter().map(|n| format!("lego {mode}: {n}")));
                slowest.extend(batch.slowest.map(|log| format!("{mode}: {log}")));
            }
        }
    }
    if !phases.is_empty() {
        println!(
            "\n### Where certkeeper's time goes (mean per certificate, from the daemon's log)\n"
        );
        println!(
            "| mode | request → order created s | order → CA's certificate s | → version committed s | → bench saw it s |"
        );
        println!("|---|---|---|---|---|");
        for (mode, p) in &phases {
            println!(
                "| {mode} | {:.3} | {:.3} | {:.3} | {:.3} |",
                p[0], p[1], p[2], p[3]
            );
        }
    }
    for log in slowest {
        println!("\n### lego's slowest certificate, {log}");
    }
    if !notes.is_empty() {
        println!("\n### Failures\n");
        for note in notes {
            println!("- {note}");
        }
    }
    if let Some(dir) = &args.keep_logs {
        std::fs::create_dir_all(dir).expect("--keep-logs dir");
        let copy = |from: &Path, to: &str| {
            let _ = std::fs::copy(from, dir.join(to));
        };
        copy(&peers.knot.log, "knotd.log");
        copy(&peers.unbound.log, "unbound.log");
        copy(&peers.pebble.log, "pebble.log");
        if let Some(ck) = &ck {
            copy(&ck.log, "certkeeper.log");
        }
        if let Some(lego) = &lego {
            for entry in std::fs::read_dir(&lego.logs)
                .into_iter()
                .flatten()
                .flatten()
            {
                copy(
                    &entry.path(),
                    &format!("lego-{}", entry.file_name().to_string_lossy()),
                );
            }
        }
        println!("\nlogs copied to {}", dir.display());
    }
    if let Some(ck) = &ck {
        // What the daemon costs with nothing to do, after all that: a per-second cost here
        // would inflate the sequential mode's CPU per certificate.
        let cpu0 = ck.server.cpu_ms();
        std::thread::sleep(Duration::from_secs(10));
        println!(
            "\ncertkeeper idle afterwards: {:.1} ms of CPU in 10 s",
            ck.server.cpu_ms() - cpu0
        );
        let log = std::fs::read_to_string(&ck.log).unwrap_or_default();
        let warnings = log.lines().filter(|l| l.contains(" WARN ")).count();
        println!("\ncertkeeper's log during the bench: {warnings} warnings");
        for line in log.lines().filter(|l| l.contains(" WARN ")).take(10) {
            println!("    {line}");
        }
    }
}
