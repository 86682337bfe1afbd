//! The audit middleware of the API socket: every call that is not a read becomes an
//! [`audit::Record`] (see `src/audit.rs` for what is recorded and why).
//!
//! It wraps the request deadline, so a call cut off by `api.request-timeout` is recorded too
//! (with its 503), and it runs after routing, so the operation is the route the router chose.
//! Handlers add what only they know to their answer: the id they created ([`Created`]), and
//! whether the answer carries a private key ([`CarriesKey`]), which is withheld when its record
//! cannot be stored.

use std::sync::Arc;

use axum::extract::{FromRequestParts, MatchedPath, RawPathParams, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use time::OffsetDateTime;

use super::{ApiError, AppState};
use crate::audit::Record;
use crate::serve::Peer;

/// In an answer: the certificate or CA the call created, for the record's target.
#[derive(Clone, Debug)]
pub(super) struct Created(pub(super) String);

/// In an answer: it holds a private key. Such an answer is sent only once it is audited.
#[derive(Clone, Copy, Debug)]
pub(super) struct CarriesKey;

/// In an error answer: its API error code.
#[derive(Clone, Copy, Debug)]
pub(super) struct ErrorCode(pub(super) &'static str);

pub(super) async fn record(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    if matches!(*request.method(), Method::GET | Method::HEAD) {
        return next.run(request).await;
    }
    // An unknown endpoint changes nothing: it is answered 404 by the fallback, unrecorded.
    let Some(route) = request.extensions().get::<MatchedPath>().cloned() else {
        return next.run(request).await;
    };
    let operation = format!("{} {}", request.method(), route.as_str());
    let peer = request
        .extensions()
        .get::<Peer>()
        .copied()
        .unwrap_or(Peer::Unknown);
    let (mut parts, body) = request.into_parts();
    let named = RawPathParams::from_request_parts(&mut parts, &state)
        .await
        .ok()
        .and_then(|params| params.iter().next().map(|(_, value)| value.to_owned()));
    let response = next.run(Request::from_parts(parts, body)).await;

    let extensions = response.extensions();
    let record = Record {
        time: OffsetDateTime::now_utc(),
        peer,
        operation,
        target: named.or_else(|| extensions.get::<Created>().map(|c| c.0.clone())),
        status: response.status().as_u16(),
        code: extensions.get::<ErrorCode>().map(|c| c.0.to_owned()),
    };
    record.log();
    let carries_key = extensions.get::<CarriesKey>().is_some();
    let prune_before = record.time - state.audit_retention.time();
    match state.inventory.store().audit(record, prune_before).await {
        Ok(()) => response,
        Err(err) if carries_key => {
            tracing::error!(error = %err, "cannot store the audit record of a key export; refusing the export");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "audit-unavailable",
                "the export could not be recorded in the audit log, so the key is not handed out",
            )
            .into_response()
        }
        Err(err) => {
            // The change is made and the log has its record; only `certkeeper audit` lacks it.
            tracing::error!(error = %err, "cannot store an audit record (it is in the log)");
            response
        }
    }
}
