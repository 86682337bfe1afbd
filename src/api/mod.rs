//! The HTTP/JSON API under `/v1`, served on the Unix socket (DESIGN.md §8).
//!
//! Handlers are thin: decode, call the [`Inventory`], encode. Every error, including a body
//! that does not parse, is too large, or a request that takes too long, comes back as
//! `{"error": {"code", "message"}}` with a fitting status, so clients need one error path.

mod audit;
mod convert;
pub mod types;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{
    DefaultBodyLimit, Extension, FromRequest, FromRequestParts, Path, Query, Request, State,
};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use tower_http::catch_panic::CatchPanicLayer;

use crate::inventory::{Inventory, InventoryError};
use crate::model::{CertificateId, Origin, Status};
use crate::span::Span;
use crate::store::ListFilter;
use types::*;

/// What every handler can reach.
pub struct AppState {
    pub inventory: Arc<Inventory>,
    /// How long audit records are kept (`api.audit-retention`).
    pub audit_retention: Span,
}

type Shared = State<Arc<AppState>>;

/// Limits applied to every request.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_body: usize,
    pub timeout: Duration,
}

pub fn router(state: Arc<AppState>, limits: Limits) -> Router {
    let v1 = Router::new()
        .route("/health", get(health))
        .route("/certificates", get(list).post(request))
        .route("/certificates/import", post(import))
        .route("/sign", post(sign))
        .route("/sign/batch", post(sign_batch))
        .route("/certificates/{id}", get(describe).delete(delete))
        .route("/certificates/{id}/pem", get(pem))
        .route("/certificates/{id}/export", post(export))
        .route("/certificates/{id}/renew", post(renew))
        .route("/certificates/{id}/revoke", post(revoke))
        .route("/certificates/{id}/tags", post(tags))
        .route("/cas", get(ca_list).post(ca_create))
        .route("/cas/{name}", get(ca_describe))
        .route("/cas/{name}/install", post(ca_install))
        .route("/cas/{name}/enable", post(ca_enable))
        .route("/cas/{name}/disable", post(ca_disable))
        .route("/cas/{name}/crl", get(ca_crl))
        .route("/certificates/{id}/explain", get(explain))
        .route("/account", get(account).put(set_account))
        .route("/events", get(events))
        .route("/master-key/rotate", post(rotate))
        .route("/acme/accounts", get(acme_accounts))
        .route("/acme/{issuer}/key-rollover", post(acme_key_rollover))
        .route("/audit", get(audit_log));
    let routes = Router::new()
        .nest("/v1", v1)
        .route("/metrics", get(metrics))
        .fallback(not_found)
        // Outside the deadline, so a call that timed out is recorded with its answer.
        .layer(middleware::from_fn_with_state(limits, deadline))
        // Inside the audit layer, so a handler that panics is recorded with its 500.
        .layer(CatchPanicLayer::custom(panicked))
        .layer(middleware::from_fn_with_state(state.clone(), audit::record));
    with_common_layers(routes, limits).with_state(state)
}

/// The layers every API router has, outermost last: the body limit and JSON for a 405 (each
/// router catches panics itself, inside its own layers).
fn with_common_layers(routes: Router<Arc<AppState>>, limits: Limits) -> Router<Arc<AppState>> {
    routes
        .layer(DefaultBodyLimit::max(limits.max_body))
        .layer(middleware::from_fn(method_not_allowed))
}

/// The routes of `daemon.read-only-socket` (M8 of the security review): what monitoring
/// needs (`list`, `describe`, `explain`, `events`, `metrics`, `check`, `health`) and nothing
/// that changes state or hands out a key. Everything else, including other methods on these
/// paths, is refused with 403 `read-only`, so a script learns why rather than guessing from a
/// 404.
pub fn read_only_router(state: Arc<AppState>, limits: Limits) -> Router {
    let v1 = Router::new()
        .route("/health", get(health).fallback(read_only))
        .route("/certificates", get(list).fallback(read_only))
        .route("/certificates/{id}", get(describe).fallback(read_only))
        .route(
            "/certificates/{id}/explain",
            get(explain).fallback(read_only),
        )
        .route("/events", get(events).fallback(read_only));
    let routes = Router::new()
        .nest("/v1", v1)
        .route("/metrics", get(metrics).fallback(read_only))
        .fallback(read_only)
        .layer(middleware::from_fn_with_state(limits, deadline))
        .layer(CatchPanicLayer::custom(panicked));
    with_common_layers(routes, limits).with_state(state)
}

async fn read_only() -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "read-only",
        "this is the read-only socket: it serves health, list, describe, explain, events and \
         metrics; use daemon.socket for anything else",
    )
}

// --- errors ---------------------------------------------------------------------------------

/// An API error: status, stable code, human message.
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid-input", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        response
            .extensions_mut()
            .insert(audit::ErrorCode(self.code));
        response
    }
}

/// What a 500 says: the cause (a store error, a worker's panic message) is for the log, where
/// the operator reads it, not for every client (security review L1).
const INTERNAL_MESSAGE: &str = "internal error; the daemon's log has the details";

impl From<InventoryError> for ApiError {
    fn from(err: InventoryError) -> Self {
        let (status, code) = status_of(&err);
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %err, "request failed");
            return Self::new(status, code, INTERNAL_MESSAGE);
        }
        Self::new(status, code, err.to_string())
    }
}

/// A handler that panicked: a 500 like any other, instead of a dropped connection.
fn panicked(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("(no message)");
    tracing::error!(panic = message, "request handler panicked");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        INTERNAL_MESSAGE,
    )
    .into_response()
}

/// axum answers a known path with an unknown method by an empty 405: give it the JSON body
/// every other error has.
async fn method_not_allowed(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let response = next.run(req).await;
    if response.status() != StatusCode::METHOD_NOT_ALLOWED {
        return response;
    }
    let allow = response.headers().get(header::ALLOW).cloned();
    let mut answer = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        format!("this endpoint does not take {method}"),
    )
    .into_response();
    if let Some(allow) = allow {
        answer.headers_mut().insert(header::ALLOW, allow);
    }
    answer
}

/// Each inventory error's status and code, once. The codes are part of the API: scripts match
/// on them (README, "API errors"). A batch error has those of the failed request's own error.
fn status_of(err: &InventoryError) -> (StatusCode, &'static str) {
    use InventoryError as E;
    match err {
        E::InRequest { error, .. } => status_of(error),
        E::NotFound(_) => (StatusCode::NOT_FOUND, "not-found"),
        E::Revoked { .. }
        | E::Imported { .. }
        | E::NotImported { .. }
        | E::KeyNotHeld { .. }
        | E::NameTaken { .. }
        | E::NameGivenTwice { .. }
        | E::CaUnavailable { .. }
        | E::CaExists { .. }
        | E::CaInstalled { .. }
        | E::Changed { .. } => (StatusCode::CONFLICT, "conflict"),
        E::InvalidInput { .. } | E::Import(_) | E::CaRefused(_) | E::IssuerRefused(_) => {
            (StatusCode::UNPROCESSABLE_ENTITY, "invalid-input")
        }
        E::ValidationPending(_) => (StatusCode::CONFLICT, "validation-pending"),
        E::RetryAfter { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate-limited"),
        E::CaFailed(_) => (StatusCode::BAD_GATEWAY, "ca-error"),
        E::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting-down"),
        E::StoreFull(_) => (StatusCode::INSUFFICIENT_STORAGE, "store-full"),
        E::StoreUnavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "store-unavailable"),
        E::OutcomeUnknown(_) => (StatusCode::SERVICE_UNAVAILABLE, "outcome-unknown"),
        E::Store(_) | E::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    }
}

/// A JSON body whose rejections are JSON errors too.
struct Body<T>(T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

/// The one parameter of a path (`{id}`, `{name}`, `{issuer}`), whose rejection (a segment
/// whose percent-encoding is not UTF-8, found by fuzzing) is a JSON error too.
struct Segment(String);

impl<S: Send + Sync> FromRequestParts<S> for Segment {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(segment)) => Ok(Self(segment)),
            Err(rejection) if rejection.status() == StatusCode::BAD_REQUEST => {
                Err(ApiError::invalid(rejection.body_text()))
            }
            // A route without its parameter: ours to fix, not the client's.
            Err(rejection) => {
                tracing::error!(error = %rejection.body_text(), "path parameter");
                Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    INTERNAL_MESSAGE,
                ))
            }
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    let status = rejection.status();
    let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
        "payload-too-large"
    } else {
        "invalid-json"
    };
    ApiError::new(status, code, rejection.body_text())
}

fn query_rejection(rejection: QueryRejection) -> ApiError {
    ApiError::invalid(rejection.body_text())
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not-found", "no such API endpoint")
}

/// Bounds how long one request may take. An abandoned request is safe: every change is one
/// store transaction, which either committed before the deadline or never happens.
async fn deadline(State(limits): State<Limits>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limits.timeout, next.run(req)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            "the request took too long",
        )
        .into_response(),
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

/// A router that serves only `/metrics`, for `metrics.listen` (TCP, no API).
pub fn metrics_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn metrics(State(state): Shared) -> Result<Response, ApiError> {
    let inventory = &state.inventory;
    let snapshot = inventory.metrics_snapshot().await?;
    let text = crate::metrics::render(
        inventory.metrics(),
        &snapshot,
        time::OffsetDateTime::now_utc(),
    );
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

// --- certificates ---------------------------------------------------------------------------

async fn health(State(state): Shared) -> ApiResult<Health> {
    let inventory = &state.inventory;
    let cas = inventory.cas().await?.len() as u64;
    let certificates = inventory
        .store()
        .count_certificates()
        .await
        .map_err(InventoryError::from)?;
    let outbox = inventory.outbox_depths().await?.into_iter().collect();
    Ok(Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        certificates,
        cas,
        outbox,
    }))
}

const MAX_PAGE: u32 = 1000;
const DEFAULT_PAGE: u32 = 100;
/// The most `tag=` filters one list takes: no certificate carries more tags than this, and
/// each filter is a subquery (3,000 of them made SQLite give up with a 500).
const MAX_TAG_FILTERS: usize = crate::inventory::requests::MAX_TAGS;

async fn list(
    State(state): Shared,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> ApiResult<CertificateList> {
    let Query(pairs) = query.map_err(query_rejection)?;
    let filter = list_filter(&pairs)?;
    let limit = filter.limit;
    // Ask for one more than a page to learn whether another page follows.
    let mut certificates = state
        .inventory
        .list(&ListFilter {
            limit: limit + 1,
            ..filter
        })
        .await?;
    let next_page = if certificates.len() > limit as usize {
        certificates.truncate(limit as usize);
        certificates.last().map(|c| c.id.to_string())
    } else {
        None
    };
    Ok(Json(CertificateList {
        certificates,
        next_page,
    }))
}

/// Query parameters: `status`, `origin` (repeatable or comma-separated), `tag=KEY` or
/// `tag=KEY=VALUE` (repeatable), `expiring_within=30d`, `limit`, `after`.
fn list_filter(pairs: &[(String, String)]) -> Result<ListFilter, ApiError> {
    let mut filter = ListFilter {
        limit: DEFAULT_PAGE,
        ..ListFilter::default()
    };
    for (key, value) in pairs {
        let invalid =
            |e: &dyn std::fmt::Display| ApiError::invalid(format!("query parameter {key}: {e}"));
        match key.as_str() {
            // Each value once: there are only a few, however often a query repeats them.
            "status" => {
                for part in value.split(',') {
                    let status = part.parse::<Status>().map_err(|e| invalid(&e))?;
                    push_new(&mut filter.statuses, status);
                }
            }
            "origin" => {
                for part in value.split(',') {
                    let origin = part.parse::<Origin>().map_err(|e| invalid(&e))?;
                    push_new(&mut filter.origins, origin);
                }
            }
            "tag" => {
                let (k, v) = match value.split_once('=') {
                    Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
                    None => (value.clone(), None),
                };
                push_new(&mut filter.tags, (k, v));
                if filter.tags.len() > MAX_TAG_FILTERS {
                    return Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "too-many-filters",
                        format!("query parameter tag: at most {MAX_TAG_FILTERS} tag filters"),
                    ));
                }
            }
            "expiring_within" => {
                filter.expiring_within = Some(value.parse::<Span>().map_err(|e| invalid(&e))?);
            }
            "limit" => {
                let limit: u32 = value.parse().map_err(|e| invalid(&e))?;
                if !(1..=MAX_PAGE).contains(&limit) {
                    return Err(invalid(&format!("{limit} is outside 1..={MAX_PAGE}")));
                }
                filter.limit = limit;
            }
            "after" => {
                let id =
                    CertificateId::parse(value).ok_or_else(|| invalid(&"not a certificate id"))?;
                filter.after = Some(id);
            }
            other => {
                return Err(ApiError::invalid(format!(
                    "unknown query parameter {other:?}"
                )));
            }
        }
    }
    Ok(filter)
}

fn push_new<T: PartialEq>(list: &mut Vec<T>, item: T) {
    if !list.contains(&item) {
        list.push(item);
    }
}

async fn request(
    State(state): Shared,
    Body(req): Body<RequestCertificate>,
) -> Result<
    (
        StatusCode,
        Extension<audit::Created>,
        Json<crate::model::Certificate>,
    ),
    ApiError,
> {
    let cert = state.inventory.request(req.try_into()?).await?;
    Ok((StatusCode::CREATED, created(&cert.id), Json(cert)))
}

/// What a creating call tells the audit log it made.
fn created(id: &impl ToString) -> Extension<audit::Created> {
    Extension(audit::Created(id.to_string()))
}

async fn import(
    State(state): Shared,
    Body(req): Body<ImportCertificate>,
) -> Result<
    (
        StatusCode,
        Extension<audit::Created>,
        Json<crate::model::Certificate>,
    ),
    ApiError,
> {
    let reimport = req.certificate_id.is_some();
    let cert = state.inventory.import(req.try_into()?).await?;
    Ok((
        if reimport {
            StatusCode::OK
        } else {
            StatusCode::CREATED
        },
        created(&cert.id),
        Json(cert),
    ))
}

async fn sign(
    State(state): Shared,
    Body(req): Body<SignRequest>,
) -> Result<(StatusCode, Extension<audit::Created>, Json<Signed>), ApiError> {
    let signed = state.inventory.sign(req.try_into()?).await?;
    Ok((
        StatusCode::CREATED,
        created(&signed.certificate.id),
        Json(signed),
    ))
}

async fn sign_batch(
    State(state): Shared,
    Body(batch): Body<SignBatch>,
) -> Result<(StatusCode, Extension<audit::Created>, Json<SignedBatch>), ApiError> {
    let requests = convert::sign_batch(batch.requests)?;
    let signed = state.inventory.sign_batch(requests).await?;
    let ids: Vec<String> = signed
        .iter()
        .map(|s| s.certificate.id.to_string())
        .collect();
    Ok((
        StatusCode::CREATED,
        created(&ids.join(",")),
        Json(SignedBatch { signed }),
    ))
}

async fn describe(
    State(state): Shared,
    Segment(id): Segment,
) -> ApiResult<crate::model::Certificate> {
    Ok(Json(state.inventory.find(&id).await?))
}

async fn delete(
    State(state): Shared,
    Segment(id): Segment,
) -> ApiResult<crate::model::Certificate> {
    Ok(Json(state.inventory.delete(&id).await?))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct VersionQuery {
    version: Option<u32>,
}

async fn pem(
    State(state): Shared,
    Segment(id): Segment,
    query: Result<Query<VersionQuery>, QueryRejection>,
) -> ApiResult<CertificatePem> {
    let Query(query) = query.map_err(query_rejection)?;
    Ok(Json(state.inventory.pem(&id, query.version).await?))
}

async fn export(
    State(state): Shared,
    Segment(id): Segment,
    Body(req): Body<ExportRequest>,
) -> Result<(Extension<audit::CarriesKey>, Json<crate::export::Exported>), ApiError> {
    let exported = state.inventory.export(&id, req.try_into()?).await?;
    Ok((Extension(audit::CarriesKey), Json(exported)))
}

async fn renew(State(state): Shared, Segment(id): Segment) -> ApiResult<crate::model::Certificate> {
    Ok(Json(state.inventory.renew(&id).await?))
}

async fn revoke(
    State(state): Shared,
    Segment(id): Segment,
    Body(req): Body<RevokeRequest>,
) -> ApiResult<crate::model::Certificate> {
    Ok(Json(state.inventory.revoke(&id, req.reason).await?))
}

async fn tags(
    State(state): Shared,
    Segment(id): Segment,
    Body(req): Body<TagsRequest>,
) -> ApiResult<crate::model::Certificate> {
    Ok(Json(state.inventory.tags(&id, req.try_into()?).await?))
}

async fn explain(State(state): Shared, Segment(id): Segment) -> ApiResult<Explanation> {
    Ok(Json(state.inventory.explain(&id).await?))
}

async fn account(State(state): Shared) -> ApiResult<Account> {
    Ok(Json(Account {
        days_before_expiry: state.inventory.days_before_expiry().get(),
    }))
}

async fn set_account(State(state): Shared, Body(req): Body<Account>) -> ApiResult<Account> {
    let days = crate::inventory::requests::days_before_expiry(req.days_before_expiry)?;
    state.inventory.set_days_before_expiry(days).await?;
    account(State(state)).await
}

// --- certificate authorities ----------------------------------------------------------------

async fn ca_list(State(state): Shared) -> ApiResult<CaList> {
    Ok(Json(CaList {
        cas: state.inventory.cas().await?,
    }))
}

async fn ca_create(
    State(state): Shared,
    Body(req): Body<CreateCa>,
) -> Result<(StatusCode, Extension<audit::Created>, Json<CaDetails>), ApiError> {
    let ca = state.inventory.create_ca(req.try_into()?).await?;
    Ok((StatusCode::CREATED, created(&ca.ca.name), Json(ca)))
}

async fn ca_describe(State(state): Shared, Segment(name): Segment) -> ApiResult<CaDetails> {
    Ok(Json(state.inventory.ca(&name).await?))
}

async fn ca_install(
    State(state): Shared,
    Segment(name): Segment,
    Body(req): Body<InstallCa>,
) -> ApiResult<CaDetails> {
    Ok(Json(state.inventory.install_ca(&name, req.into()).await?))
}

async fn ca_enable(State(state): Shared, Segment(name): Segment) -> ApiResult<CaDetails> {
    Ok(Json(state.inventory.set_ca_enabled(&name, true).await?))
}

async fn ca_disable(State(state): Shared, Segment(name): Segment) -> ApiResult<CaDetails> {
    Ok(Json(state.inventory.set_ca_enabled(&name, false).await?))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CrlQuery {
    #[serde(default)]
    format: Option<String>,
}

/// The CRL as PEM text (default) or DER (`?format=der`, `application/pkix-crl`).
async fn ca_crl(
    State(state): Shared,
    Segment(name): Segment,
    query: Result<Query<CrlQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(query_rejection)?;
    let der = state.inventory.crl(&name).await?;
    match query.format.as_deref() {
        None | Some("pem") => Ok((
            [(header::CONTENT_TYPE, "application/x-pem-file")],
            crate::pem::encode("X509 CRL", &der),
        )
            .into_response()),
        Some("der") => Ok(([(header::CONTENT_TYPE, "application/pkix-crl")], der).into_response()),
        Some(other) => Err(ApiError::invalid(format!(
            "format {other:?}: expected pem or der"
        ))),
    }
}

// --- events and keys ------------------------------------------------------------------------

/// A page of a log read in order (events, audit): the entries after `after`, at most `limit`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PageQuery {
    #[serde(default)]
    after: i64,
    #[serde(default)]
    limit: Option<u32>,
}

impl PageQuery {
    fn from(query: Result<Query<Self>, QueryRejection>) -> Result<(i64, u32), ApiError> {
        let Query(query) = query.map_err(query_rejection)?;
        Ok((
            query.after,
            query.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE),
        ))
    }
}

async fn events(
    State(state): Shared,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> ApiResult<EventList> {
    let (after, limit) = PageQuery::from(query)?;
    let store = state.inventory.store();
    let rows = store
        .events_after(after, limit)
        .await
        .map_err(InventoryError::from)?;
    Ok(Json(EventList {
        events: rows
            .into_iter()
            .map(|(cursor, event)| EventEntry { cursor, event })
            .collect(),
    }))
}

/// The audit log, oldest first, a page at a time (`after` = the last `seq` seen).
async fn audit_log(
    State(state): Shared,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> ApiResult<AuditList> {
    let (after, limit) = PageQuery::from(query)?;
    let store = state.inventory.store();
    let records = store
        .audit_after(after, limit)
        .await
        .map_err(InventoryError::from)?;
    Ok(Json(AuditList { records }))
}

async fn acme_accounts(State(state): Shared) -> ApiResult<Vec<AcmeIssuerView>> {
    Ok(Json(state.inventory.acme_accounts().await?))
}

async fn acme_key_rollover(
    State(state): Shared,
    Segment(issuer): Segment,
) -> ApiResult<crate::store::AcmeAccount> {
    Ok(Json(state.inventory.acme_rollover_key(&issuer).await?))
}

async fn rotate(State(state): Shared) -> ApiResult<RotateResult> {
    let (rewrapped, key_usage) = state.inventory.rotate_master_key().await?;
    let current_key_id = state.inventory.store().keyring().current_kid().to_owned();
    tracing::info!(rewrapped, key_id = %current_key_id, "master key rotation done");
    Ok(Json(RotateResult {
        current_key_id,
        rewrapped,
        key_usage,
    }))
}
