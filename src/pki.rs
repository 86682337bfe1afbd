//! Publishing what a relying party fetches to check a private certificate: the issuing CA's
//! CRL and the CA's own certificate, over plain HTTP (`[pki]`).
//!
//! `base-url` fixes one layout for every CA: CA `NAME` publishes its CRL at
//! `<base-url>ca/NAME.crl` (DER, `application/pkix-crl`) and its certificate at
//! `<base-url>ca/NAME.der` (DER, `application/pkix-cert`). A CA puts those two URLs into every
//! certificate it signs while `[pki]` is configured, subordinate CAs' own certificates
//! included (`src/ca.rs`); what it signed before keeps what it has, since a signed certificate
//! cannot change. The URLs are plain `http://`, as RFC 5280 (§4.2.1.13, §4.2.2.1) describes and
//! the CA/Browser Forum requires: a client checking whether a TLS certificate is revoked must
//! not need TLS to find out, and both documents are signed, so they need no channel security.
//!
//! `listen` serves them: GET and HEAD of those paths, below the base URL's path so that a
//! proxy in front can pass requests on unchanged, and nothing else (no listing). It is meant to
//! face relying parties, so it runs under the small public limits of `serve::Limits::PKI`. The CRL comes from
//! the store, re-signed first when it is stale (`Inventory::crl`): no one is ever served a CRL
//! past its nextUpdate.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use tracing::error;

use crate::ca::Published;
use crate::inventory::{Inventory, InventoryError};
use crate::model::{CaState, check_name};

/// How long one fetch may take, head read to answer (a CRL may be re-signed and stored).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Every certificate carries the base URL twice; a longer one is most likely a mistake.
const MAX_BASE_URL: usize = 200;

/// `pki.base-url`, checked: an absolute `http://` URL with a host, no credentials, query or
/// fragment, its path ending in `/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseUrl(url::Url);

/// Why `pki.base-url` cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("{text:?} is not an absolute URL: {reason}")]
    Malformed {
        text: String,
        reason: url::ParseError,
    },
    #[error(
        "{0:?} is https: CRL and CA-certificate URLs must be plain http:// (RFC 5280, CA/Browser Forum): a client checking a TLS certificate's revocation cannot depend on TLS, and both documents are signed"
    )]
    Https(String),
    #[error("{text:?} is a {scheme}: URL; CRL and CA-certificate URLs are http://")]
    Scheme { text: String, scheme: String },
    /// Without the URL: it may hold a password.
    #[error("must not carry a user name or password")]
    Credentials,
    #[error("{0:?} has a query or fragment; the CA's files are appended to its path")]
    QueryOrFragment(String),
    #[error("{text:?} is {length} characters long; at most {MAX_BASE_URL}")]
    TooLong { text: String, length: usize },
}

impl BaseUrl {
    pub fn parse(text: &str) -> Result<Self, UrlError> {
        let mut url = url::Url::parse(text).map_err(|reason| UrlError::Malformed {
            text: text.to_owned(),
            reason,
        })?;
        match url.scheme() {
            "http" => {}
            "https" => return Err(UrlError::Https(text.to_owned())),
            scheme => {
                return Err(UrlError::Scheme {
                    text: text.to_owned(),
                    scheme: scheme.to_owned(),
                });
            }
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(UrlError::Credentials);
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(UrlError::QueryOrFragment(text.to_owned()));
        }
        if !url.path().ends_with('/') {
            let path = format!("{}/", url.path());
            url.set_path(&path);
        }
        // The serialised form is what certificates carry: ASCII (IDNA hosts, percent-encoded
        // paths), as their IA5String needs.
        let length = url.as_str().len();
        if length > MAX_BASE_URL {
            return Err(UrlError::TooLong {
                text: text.to_owned(),
                length,
            });
        }
        Ok(Self(url))
    }

    /// Where CA `ca` publishes, as its certificates say.
    pub fn published(&self, ca: &str) -> Published {
        Published {
            crl: format!("{}ca/{ca}{CRL}", self.0),
            ca_issuers: format!("{}ca/{ca}{CERTIFICATE}", self.0),
        }
    }

    /// The path the listener serves the CAs' files under.
    fn directory(&self) -> String {
        format!("{}ca/", self.0.path())
    }
}

impl std::fmt::Display for BaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

const CRL: &str = ".crl";
const CERTIFICATE: &str = ".der";

/// `[pki]`: where the CAs' files are published, and whether certkeeper serves them itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PkiConfig {
    pub base_url: BaseUrl,
    /// Without it, the operator publishes the files some other way (`certkeeper ca crl`,
    /// `ca certificate`) at the same URLs.
    pub listen: Option<std::net::SocketAddr>,
}

/// One file the listener serves.
#[derive(Debug, PartialEq, Eq)]
enum Document<'a> {
    Crl(&'a str),
    Certificate(&'a str),
}

impl<'a> Document<'a> {
    /// The document at `path`, when `path` names one below `directory`.
    fn at(path: &'a str, directory: &str) -> Option<Self> {
        let file = path.strip_prefix(directory)?;
        let (document, name): (fn(&'a str) -> Self, _) =
            match (file.strip_suffix(CRL), file.strip_suffix(CERTIFICATE)) {
                (Some(name), _) => (Self::Crl, name),
                (_, Some(name)) => (Self::Certificate, name),
                _ => return None,
            };
        // A CA name, or nothing to look up (this also keeps '/' and '%' out).
        check_name("CA", name).ok()?;
        Some(document(name))
    }
}

struct Served {
    inventory: Arc<Inventory>,
    directory: String,
}

/// The router of `pki.listen`: the CAs' CRLs and certificates below `base`'s path, 404 for
/// anything else.
pub fn router(inventory: Arc<Inventory>, base: &BaseUrl) -> Router {
    let served = Served {
        inventory,
        directory: base.directory(),
    };
    // A fallback rather than routes: the base path is the operator's, and must not be read as
    // axum's route syntax.
    Router::new().fallback(fetch).with_state(Arc::new(served))
}

async fn fetch(State(served): State<Arc<Served>>, method: Method, uri: Uri) -> Response {
    let Some(document) = Document::at(uri.path(), &served.directory) else {
        return not_found();
    };
    if method != Method::GET && method != Method::HEAD {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            [(header::ALLOW, "GET, HEAD")],
        )
            .into_response();
    }
    let answer = async {
        match document {
            Document::Crl(ca) => served
                .inventory
                .crl(ca)
                .await
                .map(|der| der_response("application/pkix-crl", der)),
            Document::Certificate(ca) => served
                .inventory
                .ca_certificate_der(ca)
                .await
                .map(|der| der_response("application/pkix-cert", der)),
        }
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, answer).await {
        Ok(Ok(response)) => response,
        Ok(Err(err)) => error_response(&err),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "timed out\n").into_response(),
    }
}

fn der_response(content_type: &'static str, der: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, content_type)], der).into_response()
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}

/// A relying party learns only what it needs: absent, or not available now.
fn error_response(err: &InventoryError) -> Response {
    match err {
        InventoryError::NotFound(_)
        | InventoryError::CaUnavailable {
            state: CaState::PendingCertificate,
            ..
        } => not_found(),
        InventoryError::CaUnavailable { .. } => {
            (StatusCode::SERVICE_UNAVAILABLE, "not available\n").into_response()
        }
        other => {
            error!(error = %other, "serving a CA's published file failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error\n").into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_are_plain_http_and_end_in_a_slash() {
        let base = BaseUrl::parse("http://PKI.example.com").unwrap();
        assert_eq!(base.to_string(), "http://pki.example.com/");
        assert_eq!(
            base.published("team-ca"),
            Published {
                crl: "http://pki.example.com/ca/team-ca.crl".into(),
                ca_issuers: "http://pki.example.com/ca/team-ca.der".into(),
            }
        );
        let base = BaseUrl::parse("http://127.0.0.1:8089/pki").unwrap();
        assert_eq!(base.to_string(), "http://127.0.0.1:8089/pki/");
        assert_eq!(base.directory(), "/pki/ca/");
        // IA5String: the host as IDNA, the path percent-encoded.
        let base = BaseUrl::parse("http://bücher.example/ä b/").unwrap();
        assert_eq!(base.to_string(), "http://xn--bcher-kva.example/%C3%A4%20b/");
    }

    #[test]
    fn unusable_base_urls_say_why() {
        let cases = [
            ("pki.example.com", "not an absolute URL"),
            ("http://", "not an absolute URL"),
            ("http://exa mple.com/", "not an absolute URL"),
            ("http://example.com:99999/", "not an absolute URL"),
            ("https://pki.example.com/", "must be plain http://"),
            ("ftp://pki.example.com/", "a ftp: URL"),
            ("ldap://pki.example.com/", "a ldap: URL"),
            ("http://pki.example.com/?a=b", "query or fragment"),
            ("http://pki.example.com/#x", "query or fragment"),
        ];
        for (text, says) in cases {
            let err = BaseUrl::parse(text).unwrap_err().to_string();
            assert!(err.contains(says), "{text}: {err}");
        }
        // A password is never echoed.
        let err = BaseUrl::parse("http://u:hunter2@pki.example.com/")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("hunter2"), "{err}");
        let long = format!("http://pki.example.com/{}/", "a".repeat(200));
        assert!(matches!(
            BaseUrl::parse(&long),
            Err(UrlError::TooLong { .. })
        ));
    }

    #[test]
    fn only_a_cas_two_files_are_documents() {
        let dir = "/pki/ca/";
        assert_eq!(
            Document::at("/pki/ca/team.crl", dir),
            Some(Document::Crl("team"))
        );
        assert_eq!(
            Document::at("/pki/ca/team.v2.der", dir),
            Some(Document::Certificate("team.v2"))
        );
        for path in [
            "/pki/ca/",
            "/pki/ca/.crl",
            "/pki/ca/team",
            "/pki/ca/team.pem",
            "/pki/ca/a/b.crl",
            "/pki/ca/a%2Fb.crl",
            "/ca/team.crl",
            "/pki/team.crl",
        ] {
            assert_eq!(Document::at(path, dir), None, "{path}");
        }
    }
}
