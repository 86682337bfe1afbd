//! The API router (`/v1` on the Unix socket): the real axum router over the real inventory
//! and store, built as the daemon builds them (`daemon::open_inventory`, `serve_api`) on a
//! built-in-default config with `[pki]` in a temporary state directory, takes arbitrary
//! requests through `tower::ServiceExt::oneshot`; so do the read-only socket's router and
//! `pki.listen`'s (the CRLs and CA certificates relying parties fetch, under `/pki/`).
//!
//! An input is up to eight requests, separated by `certkeeper_fuzz::SEPARATOR` lines, each
//! written as `METHOD URI`, header lines, a blank line and the body (see
//! `corpus-seeds/api_router/`), sent in order so that one input can create a certificate and
//! then act on it: `$ID` in a URI or body stands for the id of the last certificate created.
//! The state persists between inputs and is made anew every `RESET_EVERY` inputs, so that the
//! store stays small.
//!
//! Properties: no panic (a handler's panic, which the catch-panic layer would turn into a 500,
//! aborts the fuzzer: the panic hook runs first); no 500 at all and no other 5xx than those the
//! README's API section gives (502 ca-error, 503 timeout/shutting-down/store-unavailable/
//! outcome-unknown/audit-unavailable, 507 store-full); every error status of the two API
//! routers carries the documented `{"error": {"code", "message"}}` body, and the read-only one
//! refuses anything but its reads with 403 `read-only`; the PKI listener answers only 200,
//! 404, 405 or 503 (a disabled CA's CRL past its next update).
#![no_main]

use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use certkeeper::api::{self, AppState, Limits};
use certkeeper::config::{Config, Environment};
use certkeeper::inventory::{Inventory, Settings};
use certkeeper::store::{Keyring, Store};
use http::{HeaderName, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use tokio::runtime::Runtime;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Inputs between two fresh states.
const RESET_EVERY: u64 = 20_000;
const MAX_REQUESTS: usize = 8;
/// The store's writes are acknowledged without waiting for the disk: durability is not under
/// test here, and `full` would make every creating request an fsync.
const CONFIG: &str = "[store]\nsynchronous = \"normal\"\n\n[pki]\nbase-url = \"http://pki.fuzz.example/pki/\"\n";

/// One daemon's worth of state.
struct Daemon {
    router: Router,
    read_only: Router,
    pki: Router,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

/// Which of the daemon's routers a request went to.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Listener {
    Api,
    ReadOnly,
    Pki,
}

struct Harness {
    runtime: Runtime,
    daemon: Option<Daemon>,
    inputs: u64,
}

async fn start() -> Daemon {
    let dir = tempfile::tempdir().expect("temporary state directory");
    let env = Environment {
        state_dir_flag: Some(dir.path().to_owned()),
        ..Environment::default()
    };
    let config = Config::parse(CONFIG, Path::new("fuzz.toml"), &env).expect("config");
    let (keyring, _) = Keyring::load(config.master_key.path(), true, &config.previous_master_keys)
        .expect("master key");
    let store = Store::open(&config.store_path, config.synchronous, keyring)
        .await
        .expect("store");
    store.check_keys().await.expect("keys");
    let stop = CancellationToken::new();
    tokio::spawn(store.clone().supervise(stop.clone()));
    let published = config.pki.as_ref().map(|p| p.base_url.clone());
    let inventory = Arc::new(
        Inventory::new(store, Settings::from_config(&config), None).publishing(published),
    );
    inventory
        .apply(Settings::from_config(&config))
        .await
        .expect("settings");
    inventory.start(&config.cas).await.expect("the default CA");
    let base = &config.pki.as_ref().expect("[pki] is configured").base_url;
    let pki = certkeeper::pki::router(inventory.clone(), base);
    let state = Arc::new(AppState {
        inventory,
        audit_retention: config.audit_retention,
    });
    let limits = Limits {
        max_body: config.max_request_body,
        timeout: config.request_timeout.std(),
    };
    Daemon {
        router: api::router(state.clone(), limits),
        read_only: api::read_only_router(state, limits),
        pki,
        stop,
        _dir: dir,
    }
}

fn harness() -> &'static Mutex<Harness> {
    static HARNESS: std::sync::OnceLock<Mutex<Harness>> = std::sync::OnceLock::new();
    HARNESS.get_or_init(|| {
        Mutex::new(Harness {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime"),
            daemon: None,
            inputs: 0,
        })
    })
}

/// `METHOD URI\nheader: value\n...\n\nbody`, with `$ID` replaced; `None` when the request line
/// is not one an HTTP server would pass on.
fn request(text: &[u8], id: &str) -> Option<Request<Body>> {
    let (head, body) = match text.windows(2).position(|w| w == b"\n\n") {
        Some(at) => (&text[..at], &text[at + 2..]),
        None => (text, &b""[..]),
    };
    let head = String::from_utf8_lossy(head).replace("$ID", id);
    let mut lines = head.lines();
    let (method, uri) = lines.next()?.split_once(' ')?;
    let mut builder = Request::builder()
        .method(Method::from_bytes(method.as_bytes()).ok()?)
        .uri(Uri::try_from(uri.trim()).ok()?);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.trim().as_bytes()),
            HeaderValue::from_str(value.trim()),
        ) {
            builder = builder.header(name, value);
        }
    }
    let body = replace(body, b"$ID", id.as_bytes());
    builder.body(Body::from(body)).ok()
}

fn replace(haystack: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len());
    let mut rest = haystack;
    while let Some(at) = rest.windows(from.len()).position(|w| w == from) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(to);
        rest = &rest[at + from.len()..];
    }
    out.extend_from_slice(rest);
    out
}

/// The 5xx answers the README documents, by status and code.
fn documented_5xx(status: StatusCode, code: &str) -> bool {
    matches!(
        (status.as_u16(), code),
        (502, "ca-error")
            | (503, "timeout" | "shutting-down" | "store-unavailable" | "outcome-unknown")
            | (503, "audit-unavailable")
            | (507, "store-full")
    )
}

/// Sends one request; returns the id of a certificate it created, if it did.
async fn send(router: &Router, listener: Listener, request: Request<Body>) -> Option<String> {
    let method = request.method().clone();
    let uri = request.uri().clone();
    let response = router
        .clone()
        .oneshot(request)
        .await
        .unwrap_or_else(|e| match e {});
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("the router's bodies do not fail")
        .to_bytes();
    if listener == Listener::Pki {
        let status = status.as_u16();
        assert!(
            matches!(status, 200 | 404 | 405 | 503),
            "PKI listener: {method} {uri}: {status} {}",
            String::from_utf8_lossy(&body)
        );
        return None;
    }
    let json: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
    // A HEAD answer has no body to carry the error.
    if (status.is_client_error() || status.is_server_error()) && method != Method::HEAD {
        let code = json
            .as_ref()
            .and_then(|j| j["error"]["code"].as_str())
            .map(str::to_owned);
        let message = json.as_ref().and_then(|j| j["error"]["message"].as_str());
        let (Some(code), Some(_)) = (&code, message) else {
            panic!(
                "{method} {uri}: {status} without the documented error body: {}",
                String::from_utf8_lossy(&body)
            );
        };
        if status.is_server_error() {
            assert!(
                documented_5xx(status, code),
                "{method} {uri}: {status} {}",
                String::from_utf8_lossy(&body)
            );
        }
        if listener == Listener::ReadOnly && status == StatusCode::FORBIDDEN {
            assert_eq!(code, "read-only", "{method} {uri}");
        }
        return None;
    }
    if listener == Listener::ReadOnly {
        let read = matches!(method, Method::GET | Method::HEAD);
        assert!(read, "the read-only socket did {method} {uri}: {status}");
    }
    if status == StatusCode::CREATED {
        return json
            .as_ref()
            .and_then(|j| j["id"].as_str().or(j["certificate"]["id"].as_str()))
            .map(str::to_owned);
    }
    None
}

fuzz_target!(|data: &[u8]| {
    let mut harness = harness().lock().unwrap_or_else(|e| e.into_inner());
    let harness = &mut *harness;
    harness.inputs += 1;
    if harness.inputs % RESET_EVERY == 0
        && let Some(old) = harness.daemon.take()
    {
        old.stop.cancel();
        drop(old);
    }
    let runtime = &harness.runtime;
    let daemon = harness
        .daemon
        .get_or_insert_with(|| runtime.block_on(start()));
    let routers = [
        (daemon.router.clone(), Listener::Api),
        (daemon.read_only.clone(), Listener::ReadOnly),
        (daemon.pki.clone(), Listener::Pki),
    ];
    runtime.block_on(async {
        let mut id = String::from("ck-00000000-0000-0000-0000-000000000000");
        for text in certkeeper_fuzz::fields(data).into_iter().take(MAX_REQUESTS) {
            for (router, listener) in &routers {
                let Some(request) = request(text, &id) else {
                    break;
                };
                if let Some(created) = send(router, *listener, request).await {
                    id = created;
                }
            }
        }
    });
});
