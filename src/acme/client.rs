//! The HTTPS client instant-acme talks to the CA through, with one addition: it notices when
//! the CA asks to be left alone.
//!
//! A 429 (rate limited) or 5xx answer carrying Retry-After sets a per-issuer "not before"
//! time (for a 429, at most five minutes ahead). Until then certkeeper sends that issuer
//! nothing new (orders and renewal-information checks fail at once with
//! [`super::AcmeError::RateLimited`]); the certificate whose attempt got the answer is retried
//! no sooner than the whole Retry-After, plus jitter. instant-acme already honours
//! Retry-After while polling an order and retries badNonce by itself.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, StatusCode};
use hyper_rustls::HttpsConnectorBuilder;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use instant_acme::{BodyWrapper, BytesResponse, HttpClient};

use crate::lock;

/// When the CA said to come back; shared by the client and the issuer that owns it.
///
/// Two readings of one Retry-After: the *block* stops all traffic to the CA (a 5xx says the CA
/// is in trouble; a 429 may be about one name or one account, so it blocks everything for at
/// most [`MAX_BLOCK_ON_429`]), and the *advice* is the whole wait, for the attempt that got it
/// (its certificate is retried no sooner).
#[derive(Clone, Debug, Default)]
pub struct Backoff(Arc<Mutex<State>>);

#[derive(Debug, Default)]
struct State {
    block: Option<SystemTime>,
    /// (until, when it was received)
    advice: Option<(SystemTime, SystemTime)>,
}

impl Backoff {
    /// Until when nothing new goes to the CA, if that is still ahead.
    pub fn blocked_until(&self) -> Option<SystemTime> {
        let state = lock::lock(&self.0);
        state.block.filter(|t| *t > SystemTime::now())
    }

    /// The wait the CA asked for in an answer received at or after `since`, if still ahead.
    pub fn advice_since(&self, since: SystemTime) -> Option<SystemTime> {
        let state = lock::lock(&self.0);
        state
            .advice
            .filter(|(until, received)| *received >= since && *until > SystemTime::now())
            .map(|(until, _)| until)
    }

    fn push(&self, status: StatusCode, wait: Duration) {
        let now = SystemTime::now();
        let wait = wait.min(MAX_BACKOFF);
        let block = if status == StatusCode::TOO_MANY_REQUESTS {
            wait.min(MAX_BLOCK_ON_429)
        } else {
            wait
        };
        let mut state = lock::lock(&self.0);
        let block = now + block;
        if state.block.is_none_or(|t| t < block) {
            state.block = Some(block);
        }
        state.advice = Some((now + wait, now));
    }
}

/// How long a connection to the CA may sit idle in the pool before it is closed.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long one request may wait for the CA's answer (its headers).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// The CA's Retry-After is followed up to this long; a longer one is treated as this.
const MAX_BACKOFF: Duration = Duration::from_secs(24 * 3600);

/// How long one 429 stops traffic for every certificate of the issuer. Let's Encrypt's limits
/// are mostly per name or per account action: one certificate's long wait must not hold back
/// the others' renewals for hours.
const MAX_BLOCK_ON_429: Duration = Duration::from_secs(5 * 60);

struct Client {
    inner: Box<dyn HttpClient>,
    backoff: Backoff,
}

/// Why the HTTPS client to a CA cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no CERTIFICATE block in the trusted roots")]
    NoRoots,
    #[error("trusted root: {0}")]
    Root(rustls::Error),
    #[error("platform certificate verifier: {0}")]
    Verifier(rustls::Error),
}

/// An HTTPS client trusting the platform's roots, or only the certificates in `roots_pem`.
pub fn build(
    roots_pem: Option<&str>,
    backoff: Backoff,
) -> Result<Box<dyn HttpClient>, ClientError> {
    let builder = match roots_pem {
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            let ders = crate::pem::certificates(pem);
            if ders.is_empty() {
                return Err(ClientError::NoRoots);
            }
            for der in ders {
                roots
                    .add(rustls_pki_types::CertificateDer::from(der))
                    .map_err(ClientError::Root)?;
            }
            HttpsConnectorBuilder::new().with_tls_config(
                rustls::ClientConfig::builder()
                    .with_root_certificates(roots)
                    .with_no_client_auth(),
            )
        }
        None => HttpsConnectorBuilder::new()
            .try_with_platform_verifier()
            .map_err(ClientError::Verifier)?,
    };
    let connector = builder.https_only().enable_http1().enable_http2().build();
    // certkeeper talks to a CA in bursts hours apart. A connection idle that long may be dead
    // without a word (a server's idle timeout, a NAT or firewall forgetting it). Once, in the
    // benchmark, every request of a burst after minutes of quiet hung until its timeout (the
    // cause is not pinned down: a 240 s pause alone did not bring it back). So idle
    // connections are dropped after 30 s, and an HTTP/2 connection in use is pinged and
    // closed when it stops answering.
    let hyper: HyperClient<_, BodyWrapper<Bytes>> = HyperClient::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .http2_keep_alive_interval(Some(Duration::from_secs(15)))
        .http2_keep_alive_timeout(Duration::from_secs(10))
        .build(connector);
    Ok(Box::new(Client {
        inner: Box::new(hyper),
        backoff,
    }))
}

impl HttpClient for Client {
    fn request(
        &self,
        req: Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let response = self.inner.request(req);
        let backoff = self.backoff.clone();
        Box::pin(async move {
            // A CA that never answers must not hold an order (and its renewal permit) forever.
            let response = tokio::time::timeout(REQUEST_TIMEOUT, response)
                .await
                .map_err(|_| {
                    instant_acme::Error::Other(
                        format!("no answer within {}s", REQUEST_TIMEOUT.as_secs()).into(),
                    )
                })??;
            let status = response.parts.status;
            if (status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error())
                && let Some(wait) = retry_after(&response.parts.headers)
            {
                backoff.push(status, wait);
            }
            Ok(response)
        })
    }
}

/// Retry-After as delay-seconds or an HTTP date (RFC 9110 §10.2.3).
fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let format = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    let at = time::PrimitiveDateTime::parse(value, &format)
        .ok()?
        .assume_utc();
    let at = SystemTime::from(at);
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> http::HeaderMap {
        let mut map = http::HeaderMap::new();
        map.insert(http::header::RETRY_AFTER, value.parse().unwrap());
        map
    }

    #[test]
    fn retry_after_accepts_seconds_and_dates_and_ignores_garbage() {
        assert_eq!(retry_after(&headers("120")), Some(Duration::from_secs(120)));
        assert_eq!(retry_after(&headers(" 7 ")), Some(Duration::from_secs(7)));
        // A date in the past means "now".
        assert_eq!(
            retry_after(&headers("Fri, 31 Dec 1999 23:59:59 GMT")),
            Some(Duration::ZERO)
        );
        let soon = retry_after(&headers("Fri, 31 Dec 2100 23:59:59 GMT")).unwrap();
        assert!(soon > Duration::from_secs(365 * 24 * 3600));
        for bad in ["", "-5", "soon", "1.5", "Fri, 31 Dec 1999"] {
            assert_eq!(retry_after(&headers(bad)), None, "{bad:?}");
        }
        assert_eq!(retry_after(&http::HeaderMap::new()), None);
    }

    #[test]
    fn a_429_blocks_the_issuer_briefly_and_advises_its_whole_wait() {
        let backoff = Backoff::default();
        let start = SystemTime::now();
        assert_eq!(backoff.blocked_until(), None);
        backoff.push(StatusCode::TOO_MANY_REQUESTS, Duration::from_secs(3 * 3600));
        let block = backoff.blocked_until().unwrap();
        assert!(block <= SystemTime::now() + MAX_BLOCK_ON_429, "{block:?}");
        let advice = backoff.advice_since(start).unwrap();
        assert!(
            advice >= start + Duration::from_secs(3 * 3600 - 5),
            "{advice:?}"
        );
        // An attempt that began after the answer was not told to wait.
        assert_eq!(
            backoff.advice_since(SystemTime::now() + Duration::from_secs(1)),
            None
        );
        // A 5xx blocks for its whole wait; a shorter later one does not shorten the block.
        let busy = Backoff::default();
        busy.push(StatusCode::SERVICE_UNAVAILABLE, Duration::from_secs(600));
        busy.push(StatusCode::SERVICE_UNAVAILABLE, Duration::from_secs(5));
        assert!(busy.blocked_until().unwrap() > SystemTime::now() + Duration::from_secs(590));
        // Waits are capped at a day; a past one is forgotten.
        let long = Backoff::default();
        long.push(StatusCode::BAD_GATEWAY, Duration::from_secs(10 * 24 * 3600));
        assert!(long.blocked_until().unwrap() <= SystemTime::now() + MAX_BACKOFF);
        let past = Backoff::default();
        past.push(StatusCode::SERVICE_UNAVAILABLE, Duration::ZERO);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(past.blocked_until(), None);
        assert_eq!(past.advice_since(start), None);
    }
}
