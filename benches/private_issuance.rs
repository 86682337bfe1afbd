//! Private issuance throughput: certkeeper vs `cfssl serve`, side by side, same client.
//!
//!     cargo bench --bench private_issuance -- [--requests N] [--concurrency 1,4,16]
//!         [--batch 10,100] [--ops sign,batch,full] [--synchronous full|normal]
//!
//! (a) sign: the caller's CSR is signed (certkeeper also records the certificate durably);
//!     also, certkeeper only, `POST /v1/sign/batch` with B CSRs per request (cfssl has no
//!     batch: compare with its one-CSR rate), rates counted in certificates;
//! (b) full issuance: the server generates the key and signs (certkeeper also seals the key and
//!     commits it durably; cfssl's `newcert` returns the key and stores nothing).
//! Both servers get the same pre-generated CSRs over keep-alive HTTP/1.1 connections from one
//! client process: certkeeper on its Unix socket, cfssl on loopback TCP. Server CPU comes from
//! /proc/<pid>/stat, peak RSS from VmHWM. Then an in-process breakdown of where certkeeper's
//! time goes. Needs `cfssl` (Debian golang-cfssl) and `openssl`.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use time::OffsetDateTime;

use certkeeper::ca::{self, Authority, LeafRequest};
use certkeeper::model::{CaSpec, KeyAlgorithm};
use certkeeper::span::Span;

mod support;

use support::{Server, Target, call, connect, csrs, quantile_ms, wait_for};

struct Args {
    requests: usize,
    concurrency: Vec<usize>,
    /// certkeeper's `store.synchronous`: "full" (default, fsync per commit) or "normal".
    synchronous: String,
    /// CSRs per `/v1/sign/batch` request, one row each (none: `--batch 0`).
    batches: Vec<usize>,
    /// Which operations to run: `sign`, `batch`, `full`.
    ops: Vec<String>,
}

fn args() -> Args {
    let mut args = Args {
        requests: 20_000,
        concurrency: vec![1, 4, 16],
        synchronous: "full".into(),
        batches: vec![10, 100],
        ops: vec!["sign".into(), "batch".into(), "full".into()],
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--requests" => {
                args.requests = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--requests N");
            }
            "--concurrency" => {
                args.concurrency = it
                    .next()
                    .expect("--concurrency 1,4")
                    .split(',')
                    .map(|c| c.parse().expect("number"))
                    .collect();
            }
            "--batch" => {
                args.batches = it
                    .next()
                    .expect("--batch 10,100")
                    .split(',')
                    .map(|c| c.parse().expect("number"))
                    .filter(|&b| b > 0)
                    .collect();
            }
            "--ops" => {
                args.ops = it
                    .next()
                    .expect("--ops sign,batch,full")
                    .split(',')
                    .map(str::to_owned)
                    .collect();
            }
            "--synchronous" => {
                args.synchronous = it.next().expect("--synchronous full|normal");
            }
            _ => {} // cargo bench passes --bench
        }
    }
    args
}

fn start_certkeeper(dir: &Path, synchronous: &str) -> Server {
    let config = dir.join("certkeeper.toml");
    std::fs::write(&config, format!("[store]\nsynchronous = {synchronous:?}\n")).expect("config");
    support::start_certkeeper(&dir.join("certkeeper"), &config, None, "warn")
}

fn start_cfssl(dir: &Path) -> Server {
    let run = |args: &[&str]| {
        let ok = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        assert!(ok.is_ok_and(|s| s.success()), "openssl {args:?}");
    };
    run(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        "cfssl-ca-key.pem",
    ]);
    run(&[
        "req",
        "-new",
        "-x509",
        "-key",
        "cfssl-ca-key.pem",
        "-subj",
        "/CN=cfssl bench CA",
        "-days",
        "3650",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        "-out",
        "cfssl-ca.pem",
    ]);
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
        listener.local_addr().expect("addr").port()
    };
    let child = Command::new("cfssl")
        .args([
            "serve",
            "-address",
            "127.0.0.1",
            "-port",
            &port.to_string(),
            "-ca",
            "cfssl-ca.pem",
            "-ca-key",
            "cfssl-ca-key.pem",
            "-loglevel",
            "5",
        ])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start cfssl serve (apt-get install golang-cfssl)");
    let addr = format!("127.0.0.1:{port}");
    wait_for("cfssl to listen", Duration::from_secs(30), || {
        std::net::TcpStream::connect(&addr).is_ok()
    });
    Server {
        name: "cfssl",
        child,
        target: Target::Tcp(addr),
    }
}

/// One request body per operation and server.
fn body(server: &str, op: Op, csrs: &[String], i: usize) -> (String, Vec<u8>) {
    let csr = &csrs[i % csrs.len()];
    let json = match (server, op) {
        ("certkeeper", Op::Sign) => serde_json::json!({ "csr": csr }),
        ("certkeeper", Op::SignBatch(n)) => {
            let requests: Vec<_> = (0..n)
                .map(|k| serde_json::json!({ "csr": csrs[(i * n + k) % csrs.len()] }))
                .collect();
            serde_json::json!({ "requests": requests })
        }
        ("certkeeper", Op::Full) => {
            serde_json::json!({ "domains": [format!("host{i}.bench.internal")] })
        }
        (_, Op::Sign) => serde_json::json!({ "certificate_request": csr }),
        (_, Op::Full) => serde_json::json!({
            "request": { "CN": format!("host{i}.bench.internal"), "hosts": [format!("host{i}.bench.internal")],
                         "key": { "algo": "ecdsa", "size": 256 } }
        }),
        (other, Op::SignBatch(_)) => panic!("{other} has no batch signing"),
    };
    let path = match (server, op) {
        ("certkeeper", Op::Sign) => "/v1/sign",
        ("certkeeper", Op::SignBatch(_)) => "/v1/sign/batch",
        ("certkeeper", Op::Full) => "/v1/certificates",
        (_, Op::Full) => "/api/v1/cfssl/newcert",
        (_, _) => "/api/v1/cfssl/sign",
    };
    (path.to_owned(), serde_json::to_vec(&json).expect("json"))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Sign,
    /// Signing with this many CSRs per request.
    SignBatch(usize),
    Full,
}

impl Op {
    fn certificates_per_request(self) -> usize {
        match self {
            Self::SignBatch(n) => n,
            Self::Sign | Self::Full => 1,
        }
    }
}

struct Run {
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Per certificate (a batch request counts as its certificates).
    cpu_ms_per_req: f64,
    /// Bytes the server wrote per certificate (socket answers included).
    written_per_cert: f64,
}

async fn run(server: &Server, op: Op, csrs: &[String], requests: usize, concurrency: usize) -> Run {
    let cpu_before = server.cpu_ms();
    let written_before = server.written_bytes();
    let started = Instant::now();
    let per_task = requests / concurrency;
    let tasks: Vec<_> = (0..concurrency)
        .map(|t| {
            let target = server.target.clone();
            let name = server.name;
            let csrs = csrs.to_vec();
            tokio::spawn(async move {
                let mut sender = connect(&target).await;
                let mut latencies = Vec::with_capacity(per_task);
                for k in 0..per_task {
                    let i = t * per_task + k;
                    let (path, bytes) = body(name, op, &csrs, i);
                    let sent = Instant::now();
                    call(&mut sender, "POST", &path, bytes).await;
                    latencies.push(sent.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(requests);
    for task in tasks {
        latencies.extend(task.await.expect("client task"));
    }
    let wall = started.elapsed();
    latencies.sort();
    let done = (latencies.len() * op.certificates_per_request()) as f64;
    Run {
        rate: done / wall.as_secs_f64(),
        p50_ms: quantile_ms(&latencies, 0.50),
        p99_ms: quantile_ms(&latencies, 0.99),
        cpu_ms_per_req: (server.cpu_ms() - cpu_before) / done,
        written_per_cert: (server.written_bytes() - written_before) / done,
    }
}

fn c_max(concurrency: &[usize]) -> usize {
    concurrency.iter().copied().max().unwrap_or(1)
}

/// Mean time of `f` over `n` runs, in microseconds.
fn time_us(n: usize, mut f: impl FnMut()) -> f64 {
    let started = Instant::now();
    for _ in 0..n {
        f();
    }
    started.elapsed().as_secs_f64() * 1e6 / n as f64
}

fn breakdown(dir: &Path) {
    let now = OffsetDateTime::now_utc();
    let spec = CaSpec {
        name: "bench".into(),
        parent: None,
        external: false,
        common_name: "bench CA".into(),
        key_algorithm: KeyAlgorithm::EcP256,
        validity: Span::from_days(3650),
        path_length: None,
        permitted_dns: vec![],
    };
    let created = ca::create_root(&spec, now).expect("root");
    let authority = Authority::load(
        "bench",
        created.cert_pem.as_deref().expect("cert"),
        "",
        &created.key,
        vec![],
        None,
    )
    .expect("load");
    let domains = certkeeper::model::parse_domains(&["svc.bench.internal"]).expect("domains");
    let request = LeafRequest {
        domains: &domains,
        validity: Span::from_days(90),
        client_auth: false,
    };
    let key = certkeeper::keys::generate(KeyAlgorithm::EcP256).expect("key");
    let csr = csrs(1).remove(0);
    let ring = certkeeper::store::Keyring::from_bytes(&[7; 32]);
    let pkcs8 = key.serialize_der();
    let n = 2000;
    let keygen = time_us(n, || drop(certkeeper::keys::generate(KeyAlgorithm::EcP256)));
    let csr_parse = time_us(n, || drop(ca::parse_csr(csr.as_bytes())));
    let sign = time_us(n, || drop(authority.issue(&request, &key, now)));
    let seal = time_us(n, || drop(ring.seal("ck-x/v1", &pkcs8)));
    let fsync = {
        use std::io::Write;
        let path = dir.join("fsync-probe");
        let mut file = std::fs::File::create(&path).expect("probe");
        time_us(200, || {
            file.write_all(&[0u8; 4096]).expect("write");
            file.sync_data().expect("fdatasync");
        })
    };
    println!("\n### Where certkeeper's time goes (in-process, one core, mean of {n})\n");
    println!("| step | µs |\n|---|---|");
    println!("| ECDSA P-256 key generation | {keygen:.1} |");
    println!("| CSR parse + signature check | {csr_parse:.1} |");
    println!("| leaf signing (build + ECDSA sign + PEM) | {sign:.1} |");
    println!("| sealing the key (data key, AES-256-GCM, key wrap) | {seal:.1} |");
    println!("| one 4 KiB write + fdatasync on the state disk (commit floor) | {fsync:.1} |");
}

fn main() {
    // `cargo test --all-targets` runs this binary without `--bench`: only check it builds.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let args = args();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let csrs = csrs(1000);
    let certkeeper = start_certkeeper(dir.path(), &args.synchronous);
    let cfssl = start_cfssl(dir.path());

    println!(
        "## Private issuance: certkeeper (store.synchronous = {}) vs cfssl serve ({} requests per cell)\n",
        args.synchronous, args.requests
    );
    println!(
        "| operation | clients | server | certificates /s | p50 ms (per request) | p99 ms | server CPU ms/certificate | server KiB written/certificate |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let batches = args.batches.iter().map(|&n| Op::SignBatch(n));
    let wanted = |name: &str| args.ops.iter().any(|o| o == name);
    let ops = [Op::Sign]
        .into_iter()
        .chain(batches)
        .chain([Op::Full])
        .filter(|op| match op {
            Op::Sign => wanted("sign"),
            Op::SignBatch(_) => wanted("batch"),
            Op::Full => wanted("full"),
        });
    for op in ops {
        let requests = match op {
            Op::Sign => args.requests,
            Op::SignBatch(n) => (args.requests / n).max(c_max(&args.concurrency)),
            Op::Full => args.requests / 4,
        };
        for &c in &args.concurrency {
            for server in [&certkeeper, &cfssl] {
                if matches!(op, Op::SignBatch(_)) && server.name != "certkeeper" {
                    continue;
                }
                // Warm up connections, caches and the allocator.
                runtime.block_on(run(
                    server,
                    op,
                    &csrs,
                    (200 / op.certificates_per_request()).max(c),
                    c,
                ));
                let r = runtime.block_on(run(server, op, &csrs, requests, c));
                let label = match op {
                    Op::Sign => "sign CSR".to_owned(),
                    Op::SignBatch(n) => format!("sign CSR, {n} per request"),
                    Op::Full => "full issuance".to_owned(),
                };
                println!(
                    "| {label} | {c} | {} | {:.0} | {:.2} | {:.2} | {:.3} | {:.1} |",
                    server.name,
                    r.rate,
                    r.p50_ms,
                    r.p99_ms,
                    r.cpu_ms_per_req,
                    r.written_per_cert / 1024.0
                );
            }
        }
    }
    println!(
        "\nPeak RSS: certkeeper {:.1} MiB, cfssl {:.1} MiB",
        certkeeper.peak_rss_mib(),
        cfssl.peak_rss_mib()
    );
    breakdown(dir.path());
}
