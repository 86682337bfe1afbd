//! How certkeeper behaves with a large inventory (issue 3's scale benchmark).
//!
//!     cargo bench --bench inventory_scale -- [--sizes 10000,100000,1000000]
//!
//! For each size: fill a fresh daemon through its API (half private certificates it renews,
//! 30-395 day lifetimes; half signed from CSRs, which it only watches, 1-90 days, so that
//! about a quarter of the inventory is inside the 45-day expiry threshold), restart it, and
//! measure: time from exec to READY (a real sd_notify socket), the start-up daily expiry check
//! (first run of the day, sending events; and a second run with nothing left to send), `list`
//! page latency, scheduler CPU while nothing is due, a `/metrics` scrape, and steady and peak
//! RSS.

mod support;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{Server, Target, call, connect, csrs, quantile_ms, wait_for};

/// Deterministic pseudo-random numbers (xorshift): the same inventory on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low + 1)
    }
}

const CLIENTS: usize = 16;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return; // `cargo test --all-targets` only checks that this builds
    }
    let mut sizes = vec![10_000, 100_000];
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--sizes" {
            sizes = args
                .next()
                .expect("--sizes N,M")
                .split(',')
                .map(|n| n.parse().expect("number"))
                .collect();
        }
    }
    let csrs = csrs(512);
    println!(
        "| certificates | fill rate /s | db size MiB | ready s | daily check (events sent) s | daily check (none due) s | list p50 ms | list p99 ms | filtered list p50 ms | idle CPU % | /metrics s (MiB) | RSS steady MiB | RSS peak MiB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for size in sizes {
        measure(size, &csrs);
    }
}

fn measure(size: usize, csrs: &[String]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let config = dir.path().join("certkeeper.toml");
    // Journal sink on (events are logged), at warn so the log stays small; the lifecycle's own
    // info lines carry the daily check's timing.
    std::fs::write(&config, "[events]\njournal = true\n").expect("config");
    let log = dir.path().join("daemon.log");
    let rust_log = "warn,certkeeper::scheduler=info";

    let mut server = support::start_certkeeper(&state, &config, Some(&log), rust_log);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let started = Instant::now();
    let ids = runtime.block_on(fill(&server.target, size, csrs));
    let fill_rate = size as f64 / started.elapsed().as_secs_f64();
    server.stop();
    let db_mib = dir_size(&state) as f64 / (1024.0 * 1024.0);

    // Restart with a real notification socket, to time READY as systemd sees it.
    let (ready_s, mut server) = start_notified(&state, &config, &log, rust_log);
    let first_check = wait_daily_check(&log, 2);
    let (list_p50, list_p99, filtered_p50) = runtime.block_on(list_latency(&server.target, &ids));
    let (metrics_s, metrics_mib) = runtime.block_on(scrape(&server.target));
    wait_outbox_drained(&runtime, &server.target);
    let idle_cpu = idle_cpu_percent(&server, Duration::from_secs(30));
    let rss = server.rss_mib();
    let peak = server.peak_rss_mib();
    server.stop();

    // A second start on the same UTC day: every event already went out, the check only reads.
    let (_, mut again) = start_notified(&state, &config, &log, rust_log);
    let second_check = wait_daily_check(&log, 3);
    again.stop();

    println!(
        "| {size} | {fill_rate:.0} | {db_mib:.0} | {ready_s:.2} | {:.2} ({}) | {:.2} | {list_p50:.2} | {list_p99:.2} | {filtered_p50:.2} | {idle_cpu:.2} | {metrics_s:.2} ({metrics_mib:.0}) | {rss:.0} | {peak:.0} |",
        first_check.0, first_check.1, second_check.0
    );
}

/// Issues `size` certificates over `CLIENTS` connections; returns their ids.
async fn fill(target: &Target, size: usize, csrs: &[String]) -> Vec<String> {
    let per_client = size / CLIENTS;
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let target = target.clone();
            let csrs = csrs.to_vec();
            tokio::spawn(async move {
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (c as u64 + 1));
                let mut sender = connect(&target).await;
                let mut ids = Vec::with_capacity(per_client);
                for k in 0..per_client {
                    let i = c * per_client + k;
                    let (path, body) = if i.is_multiple_of(2) {
                        let days = rng.between(30, 395);
                        ("/v1/certificates", serde_json::json!({ "domains": [format!("host{i}.scale.internal")], "validity": format!("{days}d") }))
                    } else {
                        let days = rng.between(1, 90);
                        ("/v1/sign", serde_json::json!({ "csr": csrs[i % csrs.len()], "validity": format!("{days}d"), "name": format!("signed{i}") }))
                    };
                    let bytes = call(&mut sender, "POST", path, serde_json::to_vec(&body).expect("json")).await;
                    let value: serde_json::Value = serde_json::from_slice(&bytes).expect("answer");
                    let id = value["id"].as_str().or_else(|| value["certificate"]["id"].as_str()).expect("id");
                    ids.push(id.to_owned());
                }
                ids
            })
        })
        .collect();
    let mut ids = Vec::with_capacity(size);
    for task in tasks {
        ids.extend(task.await.expect("client"));
    }
    ids.sort();
    ids
}

fn start_notified(state: &Path, config: &Path, log: &Path, rust_log: &str) -> (f64, Server) {
    let notify_path = state.with_file_name("notify.sock");
    let _ = std::fs::remove_file(&notify_path);
    let notify = UnixDatagram::bind(&notify_path).expect("notify socket");
    notify
        .set_read_timeout(Some(Duration::from_secs(600)))
        .expect("timeout");
    let started = Instant::now();
    let child = Command::new(support::BIN)
        .args(["serve", "--state-dir"])
        .arg(state)
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", rust_log)
        .env("NOTIFY_SOCKET", &notify_path)
        .stderr(Stdio::from(
            std::fs::OpenOptions::new()
                .append(true)
                .open(log)
                .expect("log"),
        ))
        .spawn()
        .expect("start certkeeper");
    let mut buf = [0u8; 256];
    loop {
        let n = notify.recv(&mut buf).expect("READY within 10 minutes");
        if String::from_utf8_lossy(&buf[..n]).contains("READY=1") {
            break;
        }
    }
    let ready = started.elapsed().as_secs_f64();
    (
        ready,
        Server {
            name: "certkeeper",
            child,
            target: Target::Unix(state.join("api.sock")),
        },
    )
}

/// Waits for the `n`-th "daily expiry check" log line; returns (seconds, events sent).
fn wait_daily_check(log: &Path, n: usize) -> (f64, u64) {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(line) = text
            .lines()
            .filter(|l| l.contains("daily expiry check"))
            .nth(n - 1)
        {
            let field = |name: &str| -> u64 {
                line.split_whitespace()
                    .find_map(|w| w.strip_prefix(&format!("{name}=")))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0)
            };
            return (field("elapsed_ms") as f64 / 1000.0, field("sent"));
        }
        assert!(
            Instant::now() < deadline,
            "no daily expiry check #{n} in the log"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn list_latency(target: &Target, ids: &[String]) -> (f64, f64, f64) {
    let mut sender = connect(target).await;
    let mut rng = Rng(42);
    let mut plain = Vec::new();
    for _ in 0..300 {
        let after = &ids[rng.next() as usize % ids.len()];
        let started = Instant::now();
        call(
            &mut sender,
            "GET",
            &format!("/v1/certificates?limit=100&after={after}"),
            vec![],
        )
        .await;
        plain.push(started.elapsed());
    }
    let mut filtered = Vec::new();
    for _ in 0..100 {
        let started = Instant::now();
        call(
            &mut sender,
            "GET",
            "/v1/certificates?limit=100&status=issued&expiring_within=30d",
            vec![],
        )
        .await;
        filtered.push(started.elapsed());
    }
    plain.sort();
    filtered.sort();
    (
        quantile_ms(&plain, 0.5),
        quantile_ms(&plain, 0.99),
        quantile_ms(&filtered, 0.5),
    )
}

async fn scrape(target: &Target) -> (f64, f64) {
    let mut sender = connect(target).await;
    let started = Instant::now();
    let body = call(&mut sender, "GET", "/metrics", vec![]).await;
    (
        started.elapsed().as_secs_f64(),
        body.len() as f64 / (1024.0 * 1024.0),
    )
}

/// Waits until every sink has every event (`/v1/health` reports the outbox per sink), so idle
/// CPU is measured idle.
fn wait_outbox_drained(runtime: &tokio::runtime::Runtime, target: &Target) {
    wait_for("the outbox to drain", Duration::from_secs(1800), || {
        runtime.block_on(async {
            let mut sender = connect(target).await;
            let body = call(&mut sender, "GET", "/v1/health", vec![]).await;
            let health: serde_json::Value = serde_json::from_slice(&body).expect("health");
            let waiting: i64 = health["outbox"]
                .as_object()
                .map_or(0, |o| o.values().filter_map(|v| v.as_i64()).sum());
            if waiting > 0 {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            waiting == 0
        })
    });
}

/// CPU used by the daemon over `window` while nothing is due, as a percentage of one core.
fn idle_cpu_percent(server: &Server, window: Duration) -> f64 {
    let before = server.cpu_ms();
    std::thread::sleep(window);
    (server.cpu_ms() - before) / window.as_millis() as f64 * 100.0
}

fn dir_size(path: &Path) -> u64 {
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}
