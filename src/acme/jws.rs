//! Signed ACME requests that certkeeper sends itself, beside instant-acme: the account key
//! change (`key_change.rs`) and the download of a certificate from an order instant-acme will
//! not download from (one the CA marked invalid after issuing it). A flattened JWS signed ES256
//! by a P-256 account key, with badNonce answers retried on the nonce they carry, as
//! instant-acme does, through the issuer's own HTTPS client.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use instant_acme::{BodyWrapper, BytesResponse, Error, HttpClient, Problem};
use serde::Deserialize;
use serde_json::{Value, json};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};

/// How often a badNonce answer is retried with the nonce it carries (as instant-acme does).
const NONCE_RETRIES: usize = 3;

/// The directory URLs these requests need.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Directory {
    new_nonce: String,
    pub(super) key_change: Option<String>,
}

impl Directory {
    pub(super) async fn fetch(http: &dyn HttpClient, url: &str) -> Result<Self, Error> {
        Ok(serde_json::from_slice(&body(get(http, url).await?).await?)?)
    }
}

pub(super) fn key_pair(pkcs8: &[u8]) -> Result<EcdsaKeyPair, Error> {
    EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8)
        .map_err(|_| Error::KeyRejected)
}

/// The public JWK of a P-256 key (RFC 7518 §6.2.1); the uncompressed point is 0x04 ‖ x ‖ y.
pub(super) fn jwk(key: &EcdsaKeyPair) -> Value {
    let (x, y) = key.public_key().as_ref()[1..].split_at(32);
    json!({"crv": "P-256", "kty": "EC", "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y)})
}

/// A flattened JWS (RFC 7515 §7.2.2) of `payload` under `protected`, signed ES256 by `key`.
pub(super) fn jws(key: &EcdsaKeyPair, protected: Value, payload: &Value) -> Result<Value, Error> {
    signed(key, protected, &serde_json::to_vec(payload)?)
}

fn signed(key: &EcdsaKeyPair, protected: Value, payload: &[u8]) -> Result<Value, Error> {
    let protected = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&protected)?);
    let payload = URL_SAFE_NO_PAD.encode(payload);
    let signature = key
        .sign(
            &SystemRandom::new(),
            format!("{protected}.{payload}").as_bytes(),
        )
        .map_err(|_| Error::Crypto)?;
    Ok(json!({
        "protected": protected,
        "payload": payload,
        "signature": URL_SAFE_NO_PAD.encode(signature.as_ref()),
    }))
}

/// POSTs `payload` to `url`, signed by the account at `account_url` with `key`; `None` is a
/// POST-as-GET (RFC 8555 §6.3: the empty payload). Returns the answer's body when the CA
/// answered with success, else its problem document as [`Error::Api`].
pub(super) async fn signed_post(
    http: &dyn HttpClient,
    directory: &Directory,
    account_url: &str,
    key: &EcdsaKeyPair,
    url: &str,
    payload: Option<&Value>,
) -> Result<Bytes, Error> {
    let payload = match payload {
        Some(value) => serde_json::to_vec(value)?,
        None => Vec::new(),
    };
    let mut nonce = fresh_nonce(http, &directory.new_nonce).await?;
    for attempt in 1..=NONCE_RETRIES {
        let protected = json!({"alg": "ES256", "kid": account_url, "nonce": nonce, "url": url});
        let body_json = serde_json::to_vec(&signed(key, protected, &payload)?)?;
        let response = post(http, url, body_json).await?;
        if response.parts.status.is_success() {
            return body(response).await;
        }
        let next_nonce = replay_nonce(&response);
        let problem: Problem = serde_json::from_slice(&body(response).await?)?;
        let bad_nonce = problem.r#type.as_deref() == Some("urn:ietf:params:acme:error:badNonce");
        match next_nonce {
            Some(next) if bad_nonce && attempt < NONCE_RETRIES => nonce = next,
            _ => return Err(Error::Api(problem)),
        }
    }
    Err(Error::Str("badNonce on every try"))
}

async fn fresh_nonce(http: &dyn HttpClient, url: &str) -> Result<String, Error> {
    let request = Request::builder()
        .method(Method::HEAD)
        .uri(url)
        .body(BodyWrapper::default())?;
    let response = http.request(request).await?;
    match (response.parts.status, replay_nonce(&response)) {
        (StatusCode::OK | StatusCode::NO_CONTENT, Some(nonce)) => Ok(nonce),
        // A CA busy for a moment: said as a problem, so that it counts as one that passes.
        (status, _) if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS => {
            Err(Error::Api(Problem {
                r#type: None,
                detail: Some(format!("the newNonce resource answered {status}")),
                status: Some(status.as_u16()),
                subproblems: Vec::new(),
            }))
        }
        _ => Err(Error::Str("no nonce from the newNonce resource")),
    }
}

async fn get(http: &dyn HttpClient, url: &str) -> Result<BytesResponse, Error> {
    let request = Request::builder()
        .method(Method::GET)
        .uri(url)
        .body(BodyWrapper::default())?;
    http.request(request).await
}

async fn post(http: &dyn HttpClient, url: &str, body: Vec<u8>) -> Result<BytesResponse, Error> {
    let request = Request::builder()
        .method(Method::POST)
        .uri(url)
        .header(http::header::CONTENT_TYPE, "application/jose+json")
        .body(BodyWrapper::<Bytes>::from(body))?;
    http.request(request).await
}

async fn body(mut response: BytesResponse) -> Result<Bytes, Error> {
    response.body.into_bytes().await.map_err(Error::Other)
}

fn replay_nonce(response: &BytesResponse) -> Option<String> {
    response
        .parts
        .headers
        .get("replay-nonce")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}
