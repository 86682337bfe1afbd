//! HTTP-01: the challenge responses, served by certkeeper's own listener or written into a
//! web server's document root.
//!
//! The listener answers only `GET /.well-known/acme-challenge/<token>` (404 for anything
//! else): it is meant to be reachable from the internet on port 80, so it serves nothing more.
//!
//! In a webroot, files and the directories certkeeper creates get their modes explicitly (0644,
//! 0755): the web server reads them as another user, and the packaged unit's `UMask=0077`
//! would otherwise leave them private to certkeeper.

use std::collections::HashMap;
use std::fs::{DirBuilder, Permissions};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::lock;

/// Whether `token` is what RFC 8555 §8.3 allows (base64url, no padding): safe as a file name
/// and as a URL path segment.
pub fn is_token(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= 256
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Where HTTP-01 key authorizations go while an order is being validated.
#[derive(Clone)]
pub enum Tokens {
    /// Served from memory by [`serve`].
    Memory(Arc<RwLock<HashMap<String, String>>>),
    /// Written as `<webroot>/.well-known/acme-challenge/<token>`.
    Webroot(PathBuf),
}

impl Tokens {
    pub fn memory() -> Self {
        Self::Memory(Arc::new(RwLock::new(HashMap::new())))
    }

    pub fn insert(&self, token: &str, key_authorization: &str) {
        match self {
            Self::Memory(map) => {
                lock::write(map).insert(token.to_owned(), key_authorization.to_owned());
            }
            Self::Webroot(root) => {
                let dir = root.join(CHALLENGE_DIR);
                let written = challenge_dir(root).and_then(|()| {
                    crate::atomic_file::replace(
                        &dir.join(token),
                        key_authorization.as_bytes(),
                        0o644,
                    )
                });
                if let Err(err) = written {
                    // The CA will fail the challenge and the order reports it; say why here.
                    tracing::warn!(dir = %dir.display(), error = %err, "cannot write the HTTP-01 challenge file");
                }
            }
        }
    }

    /// Stops serving `token`; a file under a webroot that is not there counts as removed.
    pub fn remove(&self, token: &str) -> std::io::Result<()> {
        match self {
            Self::Memory(map) => {
                lock::write(map).remove(token);
                Ok(())
            }
            Self::Webroot(root) => match std::fs::remove_file(root.join(CHALLENGE_DIR).join(token))
            {
                Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(err),
                _ => Ok(()),
            },
        }
    }

    fn get(&self, token: &str) -> Option<String> {
        match self {
            Self::Memory(map) => lock::read(map).get(token).cloned(),
            Self::Webroot(_) => None,
        }
    }
}

/// Where challenge files go under a webroot (RFC 8555 §8.3).
const CHALLENGE_DIR: &str = ".well-known/acme-challenge";

/// Makes `<root>/.well-known/acme-challenge`, giving each directory it creates mode 0755 (not
/// 0755 minus the umask). The webroot itself must exist, and directories already there are
/// left as the operator made them: with `ProtectSystem=strict` the unit can only write where
/// `ReadWritePaths=` lets it, which must exist before the service starts.
fn challenge_dir(root: &std::path::Path) -> std::io::Result<()> {
    let mut dir = root.to_path_buf();
    for part in [".well-known", "acme-challenge"] {
        dir.push(part);
        match DirBuilder::new().mode(0o755).create(&dir) {
            Ok(()) => std::fs::set_permissions(&dir, Permissions::from_mode(0o755))?,
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// Serves the in-memory tokens on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tokens: Tokens,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/.well-known/acme-challenge/{token}", get(challenge))
        .with_state(tokens);
    crate::serve::serve(listener, app, crate::serve::Limits::PUBLIC, shutdown).await
}

async fn challenge(State(tokens): State<Tokens>, Path(token): Path<String>) -> Response {
    match tokens.get(&token) {
        Some(value) => {
            ([(header::CONTENT_TYPE, "application/octet-stream")], value).into_response()
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_base64url_tokens_reach_the_webroot() {
        assert!(is_token("evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA"));
        for bad in [
            "",
            "../../etc/passwd",
            "a/b",
            "a.b",
            "tok en",
            "abc=",
            "%2e%2e",
        ] {
            assert!(!is_token(bad), "{bad:?}");
        }
        assert!(!is_token(&"a".repeat(257)));
    }
}
