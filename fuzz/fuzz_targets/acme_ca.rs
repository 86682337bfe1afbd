//! A conversation with an ACME CA whose every answer is the fuzzer's: the real `Acme` (the
//! one the daemon builds, with its own HTTPS client, trusting `trusted-roots`) talks to a CA
//! on a loopback port that answers each request, in order, with the next reply of the input.
//! Each input first names what certkeeper does: `issue` (`Acme::issue`: account, order,
//! HTTP-01 challenge, polling, finalizing, the chain checks), `window` (`Acme::renewal_window`:
//! account, renewal information, Retry-After) or `rollover` (`Acme::rollover_key`: the
//! account key change certkeeper signs and sends itself).
//!
//! An input is that word, then replies separated by `certkeeper_fuzz::SEPARATOR` lines, each
//! `STATUS`, header lines, a blank line and the body; `$BASE` stands for the CA's URL (so a
//! directory can point back at it), and a reply without `Replay-Nonce` gets a fresh one. A
//! request past the last reply gets a 500 problem document. Each input talks to a new issuer
//! (its own name, account and backoff) over the same store; tokio's clock is paused, so the
//! polling and Retry-After waits of a conversation take no time.
//!
//! Properties: no panic and no hang (the whole conversation ends within libFuzzer's time-out);
//! every failure is an `AcmeError` with a message naming the issuer (or the store); a
//! certificate is never accepted from this CA (it cannot hold the order's new key, so
//! `accept_chain` must refuse whatever it sends); a renewal window the CA gives ends after it
//! starts.
#![no_main]

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use certkeeper::acme::{Acme, AcmeError};
use certkeeper::ca::LeafRequest;
use certkeeper::config::{AcmeIssuer, Config, Environment, ValidationConfig};
use certkeeper::model::{
    Certificate, CertificateId, Domain, KeyAlgorithm, Origin, Status, ValidationMethod,
};
use certkeeper::store::NewCertificate;
use certkeeper::span::Span;
use certkeeper::store::{Keyring, Store};
use certkeeper::validation::http::Tokens;
use certkeeper::{keys, pem};
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use libfuzzer_sys::fuzz_target;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::runtime::Runtime;

/// The most replies one input holds.
const MAX_REPLIES: usize = 32;

struct Reply {
    status: StatusCode,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Bytes,
}

/// The CA's side: the replies still to give.
#[derive(Default)]
struct Script {
    replies: Mutex<VecDeque<Reply>>,
    nonces: AtomicU64,
}

struct Harness {
    runtime: Runtime,
    store: Store,
    base: String,
    roots: std::path::PathBuf,
    script: Arc<Script>,
    /// Names each input's issuer.
    inputs: AtomicU64,
    /// A certificate our CA signed (with an authority key identifier), for `window`.
    leaf_pem: String,
    _dir: tempfile::TempDir,
}

async fn answer(script: Arc<Script>, request: Request<Incoming>) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    // The body is read as a CA would, then forgotten.
    let _ = request.into_body().collect().await;
    let reply = lock(&script.replies).pop_front().unwrap_or_else(|| Reply {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        headers: vec![(http::header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"))],
        body: Bytes::from_static(br#"{"type":"urn:ietf:params:acme:error:serverInternal","detail":"the script ended","status":500}"#),
    });
    let mut response = Response::new(Full::new(reply.body));
    *response.status_mut() = reply.status;
    let headers = response.headers_mut();
    for (name, value) in reply.headers {
        headers.append(name, value);
    }
    if !headers.contains_key("replay-nonce") {
        let n = script.nonces.fetch_add(1, Ordering::Relaxed);
        let nonce = HeaderValue::from_str(&format!("fuzz-nonce-{n}")).expect("ASCII");
        headers.insert("replay-nonce", nonce);
    }
    Ok(response)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Serves HTTPS on a loopback port with a certificate for 127.0.0.1 signed by the fuzz root.
async fn serve(script: Arc<Script>) -> SocketAddr {
    let pki = certkeeper_fuzz::pki();
    let key = keys::generate(KeyAlgorithm::EcP256).expect("server key");
    let ip = [Domain::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST))];
    let issued = pki
        .root
        .issue(
            &LeafRequest {
                domains: &ip,
                validity: Span::from_days(3650),
                client_auth: false,
            },
            &key,
            time::OffsetDateTime::now_utc(),
        )
        .expect("server certificate");
    let chain: Vec<CertificateDer<'static>> = pem::certificates(&issued.cert_pem)
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(chain, PrivateKeyDer::Pkcs8(key.serialize_der().into()))
        .expect("server config");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { continue };
            let (acceptor, script) = (acceptor.clone(), script.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let service = hyper::service::service_fn(move |r| answer(script.clone(), r));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    addr
}

fn start() -> Harness {
    // As `main` does: the daemon's TLS uses aws-lc-rs.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temporary directory");
    let env = Environment {
        state_dir_flag: Some(dir.path().to_owned()),
        ..Environment::default()
    };
    let config = Config::parse("[store]\nsynchronous = \"normal\"\n", Path::new("fuzz.toml"), &env)
        .expect("config");
    let roots = dir.path().join("roots.pem");
    std::fs::write(&roots, &certkeeper_fuzz::pki().root.cert_pem).expect("roots");
    let script = Arc::new(Script::default());
    let (store, addr) = runtime.block_on(async {
        let (keyring, _) = Keyring::load(config.master_key.path(), true, &[]).expect("key");
        let store = Store::open(&config.store_path, config.synchronous, keyring)
            .await
            .expect("store");
        (store, serve(script.clone()).await)
    });
    let leaf_pem = certkeeper_fuzz::pki().leaf_pem.clone();
    Harness {
        runtime,
        store,
        base: format!("https://{addr}"),
        roots,
        script,
        inputs: AtomicU64::new(0),
        leaf_pem,
        _dir: dir,
    }
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(start)
}

/// `STATUS\nheader: value\n...\n\nbody`.
fn reply(text: &[u8], base: &str) -> Reply {
    let (head, body) = match text.windows(2).position(|w| w == b"\n\n") {
        Some(at) => (&text[..at], &text[at + 2..]),
        None => (text, &b""[..]),
    };
    let head = String::from_utf8_lossy(head).replace("$BASE", base);
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.trim().parse::<u16>().ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .filter_map(|(n, v)| {
            Some((
                HeaderName::from_bytes(n.trim().as_bytes()).ok()?,
                HeaderValue::from_str(v.trim()).ok()?,
            ))
        })
        .collect();
    let body = String::from_utf8_lossy(body).replace("$BASE", base);
    Reply {
        status,
        headers,
        body: Bytes::from(body.into_bytes()),
    }
}

/// A public certificate waiting for its first issuance, stored as a request stores one (the
/// order is recorded against it).
async fn certificate(store: &Store, issuer: &str) -> Certificate {
    let new = NewCertificate {
        id: CertificateId::generate(),
        name: "fuzz".to_owned(),
        name_is_default: true,
        origin: Origin::Public,
        status: Status::PendingValidation,
        issuer: issuer.to_owned(),
        domains: certkeeper::model::parse_domains(&["example.com", "www.example.com"])
            .expect("names"),
        key_algorithm: KeyAlgorithm::EcP256,
        validity: None,
        client_auth: false,
        tags: Default::default(),
        renew_before: None,
        days_before_expiry: None,
        maintenance_window: None,
        next_action_at: None,
        validation: Some((
            ValidationMethod::Http,
            time::OffsetDateTime::now_utc() + time::Duration::days(3),
        )),
        version: None,
        event: None,
    };
    let mut stored = store.insert_certificates(vec![new]).await.expect("stored");
    stored.remove(0)
}

/// Known and open (reported, not fixed here): instant-acme 0.8.5 panics (an `expect`, its
/// lib.rs:143) when a directory's newNonce is a URL the `http` crate cannot parse, such as
/// `"$BE/SAnonce"`. The fix belongs in `src/acme/mod.rs` (check the directory's URLs before
/// instant-acme uses them). Until then inputs carrying such a directory are skipped, so that
/// the target goes on finding anything else; remove this with the fix.
fn known_panic(replies: &VecDeque<Reply>) -> bool {
    replies.iter().any(|reply| {
        serde_json::from_slice::<serde_json::Value>(&reply.body)
            .ok()
            .and_then(|json| json.get("newNonce")?.as_str().map(str::to_owned))
            .is_some_and(|nonce| nonce.parse::<http::Uri>().is_err())
    })
}

/// A failure says what happened, naming the issuer it happened with.
fn check_error(issuer: &str, err: &AcmeError) {
    let message = err.to_string();
    // For whoever writes seeds: how far a conversation got.
    if std::env::var_os("FUZZ_SHOW_ERRORS").is_some() {
        eprintln!("{message}");
    }
    assert!(!message.trim().is_empty(), "{err:?}");
    if !matches!(err, AcmeError::Store(_) | AcmeError::Internal(_) | AcmeError::ShuttingDown) {
        assert!(message.contains(issuer), "{message}");
    }
}

fuzz_target!(|data: &[u8]| {
    let harness = harness();
    let mut fields = certkeeper_fuzz::fields(data).into_iter();
    let op = fields.next().map(|f| String::from_utf8_lossy(f).trim().to_owned()).unwrap_or_default();
    {
        let mut replies = lock(&harness.script.replies);
        replies.clear();
        replies.extend(fields.take(MAX_REPLIES).map(|f| reply(f, &harness.base)));
        if known_panic(&replies) {
            return;
        }
    }
    let n = harness.inputs.fetch_add(1, Ordering::Relaxed);
    let name = format!("fuzz-ca-{n}");
    let issuer = AcmeIssuer {
        name: name.clone(),
        directory: format!("{}/directory", harness.base),
        contact: vec!["mailto:fuzz@example.com".to_owned()],
        eab: None,
        profile: None,
        trusted_roots: Some(harness.roots.clone()),
        max_orders_in_flight: 4,
    };
    let validation = ValidationConfig {
        timeout: Span::from_days(3),
        dns: None,
        http: None,
    };
    let acme = Acme::new(
        harness.store.clone(),
        &[issuer],
        validation,
        Some(Tokens::memory()),
        None,
    );
    harness.runtime.block_on(async {
        match op.as_str() {
            "window" => match acme.renewal_window(&name, &harness.leaf_pem).await {
                Ok(Some(window)) => assert!(window.end > window.start, "{window:?}"),
                Ok(None) => {}
                Err(err) => check_error(&name, &err),
            },
            "rollover" => {
                if let Err(err) = acme.rollover_key(&name).await {
                    check_error(&name, &err);
                }
            }
            _ => match acme
                .issue(&certificate(&harness.store, &name).await, ValidationMethod::Http, None)
                .await
            {
                Ok(_) => panic!("a certificate for a key this CA never saw was accepted"),
                Err(err) => check_error(&name, &err),
            },
        }
        acme.drain().await;
    });
});
