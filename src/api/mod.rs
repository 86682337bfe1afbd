//! The HTTP/JSON API under `/v1`, served on the Unix socket (DESIGN.md §8).
//!
//! Handlers are thin: decode, call the [`Inventory`], encode. Every error, including a body
//! that does not parse, is too large, or a request that takes too long, comes back as
//! `{"error": {"code", "message"}}` with a fitting status, so clients need one error path.

mod convert;
pub mod types;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;

use crate::inventory::{Inventory, InventoryError};
use crate::model::{CertificateId, Origin, Status};
use crate::span::Span;
use crate::store::ListFilter;
use types::*;

/// What every handler can reach.
pub struct AppState {
    pub inventory: Arc<Inventory>,
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
        .route("/acme/{issuer}/key-rollover", post(acme_key_rollover));
    Router::new()
        .nest("/v1", v1)
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(limits, deadline))
        .layer(DefaultBodyLimit::max(limits.max_body))
        .with_state(state)
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
        (self.status, Json(body)).into_response()
    }
}

impl From<InventoryError> for ApiError {
    fn from(err: InventoryError) -> Self {
        let (status, code) = status_of(&err);
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %err, "request failed");
        }
        Self::new(status, code, err.to_string())
    }
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
            "status" => {
                for part in value.split(',') {
                    filter
                        .statuses
                        .push(part.parse::<Status>().map_err(|e| invalid(&e))?);
                }
            }
            "origin" => {
                for part in value.split(',') {
                    filter
                        .origins
                        .push(part.parse::<Origin>().map_err(|e| invalid(&e))?);
                }
            }
            "tag" => {
                let (k, v) = match value.split_once('=') {
                    Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
                    None => (value.clone(), None),
                };
                filter.tags.push((k, v));
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

async fn request(
    State(state): Shared,
    Body(req): Body<RequestCertificate>,
) -> Result<(StatusCode, Json<crate::model::Certificate>), ApiError> {
    let cert = state.inventory.request(req.try_into()?).await?;
    Ok((StatusCode::CREATED, Json(cert)))
}

async fn import(
    State(state): Shared,
    Body(req): Body<ImportCertificate>,
) -> Result<(StatusCode, Json<crate::model::Certificate>), ApiError> {
    let reimport = req.certificate_id.is_some();
    let cert = state.inventory.import(req.try_into()?).await?;
    Ok((
        if reimport {
            StatusCode::OK
        } else {
            StatusCode::CREATED
        },
        Json(cert),
    ))
}

async fn sign(
    State(state): Shared,
    Body(req): Body<SignRequest>,
) -> Result<(StatusCode, Json<Signed>), ApiError> {
    let signed = state.inventory.sign(req.try_into()?).await?;
    Ok((StatusCode::CREATED, Json(signed)))
}

async fn sign_batch(
    State(state): Shared,
    Body(batch): Body<SignBatch>,
) -> Result<(StatusCode, Json<SignedBatch>), ApiError> {
    let requests = convert::sign_batch(batch.requests)?;
    let signed = state.inventory.sign_batch(requests).await?;
    Ok((StatusCode::CREATED, Json(SignedBatch { signed })))
}

async fn describe(
    State(state): Shared,
    Path(id): Path<String>,
) -> ApiResult<crate::model::Certificate> {
    Ok(Json(state.inventory.find(&id).await?))
}

async fn delete(
    State(state): Shared,
    Path(id): Path<String>,
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
    Path(id): Path<String>,
    query: Result<Query<VersionQuery>, QueryRejection>,
) -> ApiResult<CertificatePem> {
    let Query(query) = query.map_err(query_rejection)?;
    Ok(Json(state.inventory.pem(&id, query.version).await?))
}

async fn export(
    State(state): Shared,
    Path(id): Path<String>,
    Body(req): Body<ExportRequest>,
) -> ApiResult<crate::export::Exported> {
    Ok(Json(state.inventory.export(&id, req.try_into()?).await?))
}

async fn renew(
    State(state): Shared,
    Path(id): Path<String>,
) -> ApiResult<crate::model::Certificate> {
    Ok(Json(state.inventory.renew(&id).await?))
}

async fn revoke(
    State(state): Shared,
    Path(id): Path<String>,
    Body(req): Body<RevokeRequest>,
) -> ApiResult<crate::model::Certificate> {
    Ok(Json(state.inventory.revoke(&id, req.reason).await?))
}

async fn tags(
    State(state): Shared,
    Path(id): Path<String>,
    Body(req): Body<TagsRequest>,
) -> ApiResult<crate::model::Certificate> {
    Ok(Json(state.inventory.tags(&id, req.try_into()?).await?))
}

async fn explain(State(state): Shared, Path(id): Path<String>) -> ApiResult<Explanation> {
    Ok(Json(state.inventory.explain(&id).await?))
}

async fn account(State(state): Shared) -> ApiResult<Account> {
    Ok(Json(Account {
        days_before_expiry: state.inventory.days_before_expiry(),
    }))
}

async fn set_account(State(state): Shared, Body(req): Body<Account>) -> ApiResult<Account> {
    state
        .inventory
        .set_days_before_expiry(req.days_before_expiry)
        .await?;
    Ok(Json(Account {
        days_before_expiry: state.inventory.days_before_expiry(),
    }))
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
) -> Result<(StatusCode, Json<CaDetails>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(state.inventory.create_ca(req.try_into()?).await?),
    ))
}

async fn ca_describe(State(state): Shared, Path(name): Path<String>) -> ApiResult<CaDetails> {
    Ok(Json(state.inventory.ca(&name).await?))
}

async fn ca_install(
    State(state): Shared,
    Path(name): Path<String>,
    Body(req): Body<InstallCa>,
) -> ApiResult<CaDetails> {
    Ok(Json(state.inventory.install_ca(&name, req.into()).await?))
}

async fn ca_enable(State(state): Shared, Path(name): Path<String>) -> ApiResult<CaDetails> {
    Ok(Json(state.inventory.set_ca_enabled(&name, true).await?))
}

async fn ca_disable(State(state): Shared, Path(name): Path<String>) -> ApiResult<CaDetails> {
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
    Path(name): Path<String>,
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

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    #[serde(default)]
    after: i64,
    #[serde(default)]
    limit: Option<u32>,
}

async fn events(
    State(state): Shared,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> ApiResult<EventList> {
    let Query(query) = query.map_err(query_rejection)?;
    let limit = query.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
    let rows = state
        .inventory
        .store()
        .events_after(query.after, limit)
        .await
        .map_err(InventoryError::from)?;
    Ok(Json(EventList {
        events: rows
            .into_iter()
            .map(|(cursor, event)| EventEntry { cursor, event })
            .collect(),
    }))
}

async fn acme_accounts(State(state): Shared) -> ApiResult<Vec<AcmeIssuerView>> {
    Ok(Json(state.inventory.acme_accounts().await?))
}

async fn acme_key_rollover(
    State(state): Shared,
    Path(issuer): Path<String>,
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
