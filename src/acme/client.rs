//! The HTTPS client instant-acme talks to the CA through, with one addition: it notices when
//! the CA asks to be left alone.
//!
//! A 429 (rate limited) or 5xx answer carrying Retry-After sets a per-issuer "not before"
//! time. Until then certkeeper sends that issuer nothing new (orders and renewal-information
//! checks fail at once with [`super::AcmeError::RateLimited`]), and the scheduler retries no
//! sooner than that, plus jitter. instant-acme already honours Retry-After while polling an
//! order and retries badNonce by itself.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, StatusCode};
use hyper_rustls::HttpsConnectorBuilder;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use instant_acme::{BodyWrapper, BytesResponse, HttpClient};

/// When the CA said to come back; shared by the client and the issuer that owns it.
#[derive(Clone, Debug, Default)]
pub struct Backoff(Arc<Mutex<Option<SystemTime>>>);

impl Backoff {
    /// The time the CA asked to wait for, if it is still ahead.
    pub fn until(&self) -> Option<SystemTime> {
        let slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        slot.filter(|t| *t > SystemTime::now())
    }

    fn push(&self, until: SystemTime) {
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none_or(|t| t < until) {
            *slot = Some(until);
        }
    }
}

/// The CA's Retry-After is followed up to this long; a longer one is treated as this.
const MAX_BACKOFF: Duration = Duration::from_secs(24 * 3600);

struct Client {
    inner: Box<dyn HttpClient>,
    backoff: Backoff,
}

/// An HTTPS client trusting the platform's roots, or only the certificates in `roots_pem`.
pub fn build(roots_pem: Option<&str>, backoff: Backoff) -> Result<Box<dyn HttpClient>, String> {
    let builder = match roots_pem {
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            let ders = crate::pem::certificates(pem);
            if ders.is_empty() {
                return Err("no CERTIFICATE block in the trusted roots".into());
            }
            for der in ders {
                roots
                    .add(rustls_pki_types::CertificateDer::from(der))
                    .map_err(|e| format!("trusted root: {e}"))?;
            }
            HttpsConnectorBuilder::new().with_tls_config(
                rustls::ClientConfig::builder()
                    .with_root_certificates(roots)
                    .with_no_client_auth(),
            )
        }
        None => HttpsConnectorBuilder::new()
            .try_with_platform_verifier()
            .map_err(|e| format!("platform certificate verifier: {e}"))?,
    };
    let connector = builder.https_only().enable_http1().enable_http2().build();
    let hyper: HyperClient<_, BodyWrapper<Bytes>> =
        HyperClient::builder(TokioExecutor::new()).build(connector);
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
            let response = response.await?;
            let status = response.parts.status;
            if (status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error())
                && let Some(wait) = retry_after(&response.parts.headers)
            {
                backoff.push(SystemTime::now() + wait.min(MAX_BACKOFF));
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
    fn backoff_keeps_the_latest_time_and_forgets_past_ones() {
        let backoff = Backoff::default();
        assert_eq!(backoff.until(), None);
        let later = SystemTime::now() + Duration::from_secs(60);
        backoff.push(later);
        backoff.push(SystemTime::now() + Duration::from_secs(5));
        assert_eq!(backoff.until(), Some(later));
        let past = Backoff::default();
        past.push(SystemTime::now() - Duration::from_secs(1));
        assert_eq!(past.until(), None);
    }
}
