//! Serving HTTP on the daemon's listeners, with the limits a listener needs (H3 of the
//! security review): a cap on connections, a deadline for a request's headers, and an idle
//! timeout.
//!
//! `axum::serve` has none of these: hyper's header timeout needs a timer it does not set, and
//! every connection is accepted. Idle connections then ran the process out of file descriptors,
//! remotely through the HTTP-01 port, which took the Unix-socket API, outgoing ACME, DNS and the
//! store down with it. Here each listener accepts at most [`Limits::max_connections`] at once
//! (more wait in the kernel's backlog, costing us nothing), and a connection that has not sent
//! a whole request head within [`Limits::header_timeout`] is closed. Hyper runs that timer from
//! the moment it waits for a head, so it is also the idle timeout between keep-alive requests.
//! A request that has sent its head is bounded by the router's own deadline (the API's
//! `request-timeout`).
//!
//! Each request carries the [`Peer`] of its connection as an extension: on a Unix socket the
//! kernel's word for who connected (uid, gid, pid, from `SO_PEERCRED`), on TCP the address.
//! The audit log records it.
//!
//! At shutdown the listener stops accepting and every connection finishes its request in
//! flight, then closes (graceful shutdown); the caller bounds how long that may take.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::serve::Listener;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use tracing::debug;

/// How much one listener takes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once.
    pub max_connections: usize,
    /// How long a connection may take to send a request's head, and may stay idle between
    /// requests.
    pub header_timeout: Duration,
    /// Whether a connection may carry more than one request.
    pub keep_alive: bool,
}

impl Limits {
    /// The API socket: every CLI call is one short connection; scripts may hold a few open.
    pub const API: Self = Self {
        max_connections: 256,
        header_timeout: Duration::from_secs(10),
        keep_alive: true,
    };
    /// `daemon.read-only-socket`: open to every local user, so it gets few connections; each
    /// one's reads share the store's small reader pool with the API and the scheduler.
    pub const READ_ONLY: Self = Self {
        max_connections: 16,
        header_timeout: Duration::from_secs(10),
        keep_alive: true,
    };
    /// `metrics.listen`: a few Prometheus servers scraping.
    pub const METRICS: Self = Self {
        max_connections: 32,
        header_timeout: Duration::from_secs(10),
        keep_alive: true,
    };
    /// The HTTP-01 responder, open to the internet: a CA's validators ask once per challenge
    /// from a handful of vantage points; nothing else has business here.
    pub const PUBLIC: Self = Self {
        max_connections: 64,
        header_timeout: Duration::from_secs(5),
        keep_alive: false,
    };
    /// `pki.listen`, where relying parties fetch a CA's CRL or certificate: public too, one
    /// short request each (clients cache what they fetch until the CRL's nextUpdate).
    pub const PKI: Self = Self {
        max_connections: 64,
        header_timeout: Duration::from_secs(5),
        keep_alive: false,
    };
}

/// Who is at the other end of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Peer {
    /// A local process, as the kernel saw it when it connected. `pid` is `None` when the peer
    /// is in another PID namespace.
    Local {
        uid: u32,
        gid: u32,
        pid: Option<i32>,
    },
    /// A TCP client.
    Remote { address: std::net::SocketAddr },
    /// The kernel would not say.
    Unknown,
}

/// A connection that can name its [`Peer`].
pub trait Connection: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    fn peer(&self) -> Peer;
}

impl Connection for tokio::net::UnixStream {
    fn peer(&self) -> Peer {
        match self.peer_cred() {
            Ok(cred) => Peer::Local {
                uid: cred.uid(),
                gid: cred.gid(),
                pid: cred.pid(),
            },
            Err(_) => Peer::Unknown,
        }
    }
}

impl Connection for tokio::net::TcpStream {
    fn peer(&self) -> Peer {
        self.peer_addr()
            .map_or(Peer::Unknown, |address| Peer::Remote { address })
    }
}

/// Serves `router` on `listener` within `limits` until `shutdown`, then waits for the
/// connections to finish their requests.
pub async fn serve<L>(
    mut listener: L,
    router: Router,
    limits: Limits,
    shutdown: CancellationToken,
) -> std::io::Result<()>
where
    L: Listener<Io: Connection>,
{
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    loop {
        // A free slot first, then the next connection: over the cap, connections wait in the
        // backlog instead of holding a descriptor each.
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                // Never closed: the semaphore lives as long as this loop.
                Err(_) => break,
            },
            () = shutdown.cancelled() => break,
        };
        // axum's listeners retry accept errors themselves (skipping a connection reset,
        // waiting a second when out of descriptors).
        let io = tokio::select! {
            (io, _) = listener.accept() => io,
            () = shutdown.cancelled() => break,
        };
        let (router, stop) = (router.clone(), shutdown.clone());
        connections.spawn(async move {
            let _slot = permit;
            serve_connection(io, router, limits, stop).await;
        });
    }
    connections.close();
    connections.wait().await;
    Ok(())
}

async fn serve_connection(
    io: impl Connection,
    router: Router,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let peer = io.peer();
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(peer);
        router.clone().oneshot(request)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(limits.keep_alive);
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        // Stopping: finish the request in flight, then close.
        () = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(err) = result {
        // A client that went away or sent no head in time: nothing to report beyond debug.
        debug!(error = %err, "connection ended");
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use axum::routing::get;

    use super::*;

    /// A server on a Unix socket in `dir` with `limits`; returns the socket path.
    fn start(
        dir: &std::path::Path,
        limits: Limits,
        runtime: &tokio::runtime::Runtime,
    ) -> std::path::PathBuf {
        let path = dir.join("s.sock");
        let listener = {
            let _guard = runtime.enter();
            tokio::net::UnixListener::bind(&path).unwrap()
        };
        let router = Router::new().route("/", get(|| async { "ok" }));
        runtime.spawn(serve(listener, router, limits, CancellationToken::new()));
        path
    }

    #[test]
    fn a_connection_that_sends_no_head_is_closed_and_a_request_is_answered() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            header_timeout: Duration::from_millis(300),
            ..Limits::API
        };
        let path = start(dir.path(), limits, &runtime);

        // Idle: the server closes it (read returns 0) well before the client gives up.
        let mut idle = std::os::unix::net::UnixStream::connect(&path).unwrap();
        idle.set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(idle.read(&mut buf).unwrap(), 0, "closed by the server");

        // Half a head, then nothing: closed the same way.
        let mut slow = std::os::unix::net::UnixStream::connect(&path).unwrap();
        slow.set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n").unwrap();
        let mut answer = Vec::new();
        let _ = slow.read_to_end(&mut answer);
        assert!(
            !String::from_utf8_lossy(&answer).contains("200 OK"),
            "no answer to an unfinished head"
        );

        // A whole request is answered.
        let mut good = std::os::unix::net::UnixStream::connect(&path).unwrap();
        good.set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        good.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        good.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
        assert!(answer.ends_with("ok"), "{answer}");
    }
}
