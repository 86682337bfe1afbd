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
use instant_acme::{Error, HttpClient};
use serde_json::{Value, json};
use zeroize::Zeroizing;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};

use super::jws::{Directory, jwk, jws, key_pair, signed_post};

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
    let directory = Directory::fetch(http, directory_url).await?;
    let Some(url) = directory.key_change.clone() else {
        return Err(Error::Unsupported("account key rollover (keyChange)"));
    };
    // The inner JWS: the new key vouches for taking over the account from the old one.
    let inner = jws(
        &new,
        json!({"alg": "ES256", "jwk": jwk(&new), "url": url}),
        &json!({"account": account_url, "oldKey": jwk(&old)}),
    )?;
    signed_post(http, &directory, account_url, &old, &url, Some(&inner))
        .await
        .map(drop)
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
