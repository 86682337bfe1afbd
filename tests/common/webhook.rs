//! A real HTTP receiver for webhook tests: it listens on a loopback port, verifies each
//! request's `X-Certkeeper-Signature` (HMAC-SHA256 of the body) with its own implementation
//! (aws-lc's HMAC, not certkeeper's code), records what arrived, and can be switched to
//! answer 503 to play a receiver that is down.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One delivery as the receiver saw it.
#[derive(Clone, Debug)]
pub(crate) struct Delivery {
    pub id: String,
    pub detail_type: String,
    pub idempotency_key: String,
    pub signature_ok: bool,
    pub body: serde_json::Value,
}

pub(crate) struct Receiver {
    pub url: String,
    down: Arc<AtomicBool>,
    /// Answer 307 to this location instead of accepting.
    redirect: Arc<Mutex<Option<String>>>,
    accepted: Arc<Mutex<Vec<Delivery>>>,
    /// Requests answered 503 while down.
    pub refused: Arc<Mutex<u32>>,
}

impl Receiver {
    pub(crate) fn start(secret: &[u8]) -> Self {
        Self::start_with(secret, None)
    }

    /// An HTTPS receiver presenting `cert_chain_pem` with `key_pem` (rustls).
    pub(crate) fn start_tls(secret: &[u8], cert_chain_pem: &[u8], key_pem: &[u8]) -> Self {
        use rustls_pki_types::pem::PemObject;
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let certs = rustls_pki_types::CertificateDer::pem_slice_iter(cert_chain_pem)
            .collect::<Result<Vec<_>, _>>()
            .expect("certificate chain");
        let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key_pem).expect("private key");
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("TLS config");
        Self::start_with(secret, Some(Arc::new(config)))
    }

    fn start_with(secret: &[u8], tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind receiver");
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{}/hook", listener.local_addr().expect("addr"));
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
        let down = Arc::new(AtomicBool::new(false));
        let redirect = Arc::new(Mutex::new(None));
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let refused = Arc::new(Mutex::new(0));
        let (d, a, r) = (
            (down.clone(), redirect.clone()),
            accepted.clone(),
            refused.clone(),
        );
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (key, d, a, r, tls) =
                    (key.clone(), d.clone(), a.clone(), r.clone(), tls.clone());
                std::thread::spawn(move || {
                    let _ = match tls {
                        Some(config) => match rustls::ServerConnection::new(config) {
                            Ok(conn) => {
                                serve(rustls::StreamOwned::new(conn, stream), &key, &d, &a, &r)
                            }
                            Err(_) => Ok(()),
                        },
                        None => serve(stream, &key, &d, &a, &r),
                    };
                });
            }
        });
        Self {
            url,
            down,
            redirect,
            accepted,
            refused,
        }
    }

    pub(crate) fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// While set, every request is answered `307` to `location` (and counted as refused).
    pub(crate) fn set_redirect(&self, location: Option<&str>) {
        *self.redirect.lock().expect("lock") = location.map(str::to_owned);
    }

    pub(crate) fn deliveries(&self) -> Vec<Delivery> {
        self.accepted.lock().expect("lock").clone()
    }

    /// Waits until `count` distinct event ids have arrived; panics after `timeout`.
    pub(crate) fn wait_for(&self, count: usize, timeout: Duration) -> Vec<Delivery> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.deliveries();
            let mut ids: Vec<&str> = got.iter().map(|d| d.id.as_str()).collect();
            ids.sort();
            ids.dedup();
            if ids.len() >= count {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {count} events arrived: {got:#?}",
                ids.len()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn serve(
    stream: impl Read + Write,
    key: &aws_lc_rs::hmac::Key,
    (down, redirect): &(Arc<AtomicBool>, Arc<Mutex<Option<String>>>),
    accepted: &Mutex<Vec<Delivery>>,
    refused: &Mutex<u32>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line)?;
            let line = line.trim_end().to_owned();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
            }
        }
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let length: usize = header("content-length").parse().unwrap_or(0);
        let mut body = vec![0u8; length];
        reader.read_exact(&mut body)?;
        let location = redirect.lock().expect("lock").clone();
        let status = if let Some(location) = location {
            *refused.lock().expect("lock") += 1;
            format!("307 Temporary Redirect\r\nlocation: {location}")
        } else if down.load(Ordering::SeqCst) {
            *refused.lock().expect("lock") += 1;
            "503 Service Unavailable".to_owned()
        } else {
            let expected = aws_lc_rs::hmac::sign(key, &body);
            let hex: String = expected
                .as_ref()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            accepted.lock().expect("lock").push(Delivery {
                id: json["id"].as_str().unwrap_or_default().to_owned(),
                detail_type: json["detail-type"].as_str().unwrap_or_default().to_owned(),
                idempotency_key: header("idempotency-key"),
                signature_ok: header("x-certkeeper-signature") == format!("sha256={hex}"),
                body: json,
            });
            "200 OK".to_owned()
        };
        let writer = reader.get_mut();
        write!(writer, "HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n")?;
        writer.flush()?;
    }
}
