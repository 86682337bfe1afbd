//! Shared by the benchmarks: running servers, reading their CPU and memory from /proc, and a
//! keep-alive HTTP/1.1 client over a Unix socket or TCP.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_certkeeper");

/// A server process we started; killed on drop.
pub(crate) struct Server {
    pub name: &'static str,
    pub child: Child,
    pub target: Target,
}

#[derive(Clone)]
pub(crate) enum Target {
    Unix(PathBuf),
    Tcp(String),
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// User + system CPU time so far, in milliseconds.
    pub(crate) fn cpu_ms(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // Fields after the command name (which is in parentheses): utime is 14th, stime 15th.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        (field(11) + field(12)) * 1000.0 / 100.0 // USER_HZ is 100 on Linux
    }

    /// Bytes the process has written through write(2) and friends so far (`wchar` in
    /// /proc/<pid>/io): for the store, its WAL and checkpoint writes.
    #[allow(dead_code)] // not every benchmark reports it
    pub(crate) fn written_bytes(&self) -> f64 {
        std::fs::read_to_string(format!("/proc/{}/io", self.child.id()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("wchar:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }

    fn status_kib(&self, key: &str) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    pub(crate) fn peak_rss_mib(&self) -> f64 {
        self.status_kib("VmHWM:") / 1024.0
    }

    pub(crate) fn rss_mib(&self) -> f64 {
        self.status_kib("VmRSS:") / 1024.0
    }

    /// SIGTERM and wait.
    pub(crate) fn stop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

pub(crate) fn wait_for(what: &str, timeout: Duration, ready: impl Fn() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ready() {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Starts `certkeeper serve` on `state` with `config`, stderr to `log` (or inherited).
pub(crate) fn start_certkeeper(
    state: &std::path::Path,
    config: &std::path::Path,
    log: Option<&std::path::Path>,
    rust_log: &str,
) -> Server {
    let stderr = match log {
        Some(path) => Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .expect("log"),
        ),
        None => Stdio::inherit(),
    };
    let child = Command::new(BIN)
        .args(["serve", "--state-dir"])
        .arg(state)
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", rust_log)
        .stderr(stderr)
        .spawn()
        .expect("start certkeeper");
    let socket = state.join("api.sock");
    let probe = socket.clone();
    wait_for("certkeeper to listen", Duration::from_secs(120), || {
        std::os::unix::net::UnixStream::connect(&probe).is_ok()
    });
    Server {
        name: "certkeeper",
        child,
        target: Target::Unix(socket),
    }
}

pub(crate) async fn connect(target: &Target) -> SendRequest<Full<Bytes>> {
    macro_rules! handshake {
        ($stream:expr) => {{
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new($stream))
                .await
                .expect("handshake");
            tokio::spawn(conn);
            sender
        }};
    }
    match target {
        Target::Unix(path) => handshake!(
            tokio::net::UnixStream::connect(path)
                .await
                .expect("connect")
        ),
        Target::Tcp(addr) => {
            let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
            stream.set_nodelay(true).expect("nodelay");
            handshake!(stream)
        }
    }
}

/// One request on a kept-alive connection; panics on a non-2xx answer.
pub(crate) async fn call(
    sender: &mut SendRequest<Full<Bytes>>,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> Bytes {
    let request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "bench")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("request");
    sender.ready().await.expect("connection ready");
    let response = sender.send_request(request).await.expect("response");
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    assert!(
        status.is_success(),
        "{method} {path}: HTTP {status}: {}",
        String::from_utf8_lossy(&bytes)
    );
    bytes
}

/// `n` distinct P-256 CSRs, PEM.
pub(crate) fn csrs(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let key = rcgen::KeyPair::generate().expect("key");
            let params = rcgen::CertificateParams::new(vec![format!("svc{i}.bench.internal")])
                .expect("params");
            params
                .serialize_request(&key)
                .expect("csr")
                .pem()
                .expect("pem")
        })
        .collect()
}

/// The value at quantile `q` of sorted samples, in milliseconds.
pub(crate) fn quantile_ms(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)].as_secs_f64() * 1000.0
}
