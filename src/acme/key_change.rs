//! Account key rollover (RFC 8555 §7.3.5) to a key made and stored beforehand.
//!
//! instant-acme's `Account::update_key` makes the new key itself and hands it over only once
//! the CA has switched to it: a store write failing then (disk full, EIO) or a crash loses the
//! account for good, since the CA no longer accepts the stored key. So certkeeper makes the new
//! key first ([`next_credentials`]), stores it sealed as the account's pending key, and only
//! then sends the keyChange request here ([`change`]), through the issuer's own HTTPS client.
//! The request is the one instant-acme would send: a JWS signed by the new key, naming the
//! account and the old key, inside a JWS signed by the old key.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use instant_acme::{BodyWrapper, BytesResponse, Error, HttpClient, Problem};
use serde::Deserialize;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};

/// How often a badNonce answer is retried with the nonce it carries (as instant-acme does).
const NONCE_RETRIES: usize = 3;

/// The directory URLs the key change needs.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Directory {
    new_nonce: String,
    key_change: Option<String>,
}

/// `credentials` (instant-acme's serialized `AccountCredentials`) with a freshly made P-256
/// key in place of the account's: the credentials the account has once the CA switched.
pub(super) fn next_credentials(credentials: &[u8]) -> Result<Zeroizing<Vec<u8>>, Error> {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .map_err(|_| Error::Crypto)?;
    let mut value: Value = serde_json::from_slice(credentials)?;
    let Some(fields) = value.as_object_mut() else {
        return Err(Error::Str("account credentials that are not a JSON object"));
    };
    let key = Value::String(URL_SAFE_NO_PAD.encode(pkcs8.as_ref()));
    // serde_json does not zeroise its strings: the keys' are taken out and wiped here.
    wipe(fields.insert("key_pkcs8".to_owned(), key));
    let json = Zeroizing::new(serde_json::to_vec(&value)?);
    wipe(value.as_object_mut().and_then(|f| f.remove("key_pkcs8")));
    Ok(json)
}

fn wipe(value: Option<Value>) {
    if let Some(Value::String(text)) = value {
        drop(Zeroizing::new(text));
    }
}

/// Asks the CA behind `directory_url` to move the account at `account_url` from `old_pkcs8`
/// to `new_pkcs8` (both P-256 PKCS#8). `Ok` means the CA answered that it switched; an
/// [`Error::Api`] that it refused. Any other error leaves the outcome unknown.
pub(super) async fn change(
    http: &dyn HttpClient,
    directory_url: &str,
    account_url: &str,
    old_pkcs8: &[u8],
    new_pkcs8: &[u8],
) -> Result<(), Error> {
    let old = key_pair(old_pkcs8)?;
    let new = key_pair(new_pkcs8)?;
    let directory: Directory =
        serde_json::from_slice(&body(get(http, directory_url).await?).await?)?;
    let Some(url) = directory.key_change else {
        return Err(Error::Unsupported("account key rollover (keyChange)"));
    };
    // The inner JWS: the new key vouches for taking over the account from the old one.
    let inner = jws(
        &new,
        json!({"alg": "ES256", "jwk": jwk(&new), "url": url}),
        &json!({"account": account_url, "oldKey": jwk(&old)}),
    )?;
    let mut nonce = fresh_nonce(http, &directory.new_nonce).await?;
    for attempt in 1..=NONCE_RETRIES {
        let protected = json!({"alg": "ES256", "kid": account_url, "nonce": nonce, "url": url});
        let body_json = serde_json::to_vec(&jws(&old, protected, &inner)?)?;
        let response = post(http, &url, body_json).await?;
        if response.parts.status.is_success() {
            return Ok(());
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

fn key_pair(pkcs8: &[u8]) -> Result<EcdsaKeyPair, Error> {
    EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8)
        .map_err(|_| Error::KeyRejected)
}

/// The public JWK of a P-256 key (RFC 7518 §6.2.1); the uncompressed point is 0x04 ‖ x ‖ y.
fn jwk(key: &EcdsaKeyPair) -> Value {
    let (x, y) = key.public_key().as_ref()[1..].split_at(32);
    json!({"crv": "P-256", "kty": "EC", "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y)})
}

/// A flattened JWS (RFC 7515 §7.2.2) of `payload` under `protected`, signed ES256 by `key`.
fn jws(key: &EcdsaKeyPair, protected: Value, payload: &Value) -> Result<Value, Error> {
    let protected = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&protected)?);
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(payload)?);
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

async fn fresh_nonce(http: &dyn HttpClient, url: &str) -> Result<String, Error> {
    let request = Request::builder()
        .method(Method::HEAD)
        .uri(url)
        .body(BodyWrapper::default())?;
    let response = http.request(request).await?;
    match (response.parts.status, replay_nonce(&response)) {
        (StatusCode::OK | StatusCode::NO_CONTENT, Some(nonce)) => Ok(nonce),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_credentials_replace_only_the_key() {
        let old = br#"{"id":"https://ca/acct/1","key_pkcs8":"AAAA","directory":"https://ca/dir"}"#;
        let next: Value = serde_json::from_slice(&next_credentials(old).unwrap()).unwrap();
        assert_eq!(next["id"], "https://ca/acct/1");
        assert_eq!(next["directory"], "https://ca/dir");
        let key = URL_SAFE_NO_PAD
            .decode(next["key_pkcs8"].as_str().unwrap())
            .unwrap();
        assert!(key_pair(&key).is_ok(), "a P-256 PKCS#8 key");
        // What instant-acme reads back.
        let parsed: instant_acme::AccountCredentials =
            serde_json::from_value(next).expect("instant-acme credentials");
        assert_eq!(parsed.private_key().secret_pkcs8_der(), key.as_slice());
    }
}
