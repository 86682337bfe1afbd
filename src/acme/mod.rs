//! Public certificates from ACME CAs (RFC 8555), through instant-acme.
//!
//! One [`Acme`] holds every configured issuer. Issuing (first issuance or renewal, the same
//! path) runs as a scheduler task and goes:
//!
//! 1. the issuer's account: loaded from the store (sealed, it holds the account key), or
//!    created on first use (with EAB when configured) and stored before anything else. A
//!    pending key left by a key rollover whose outcome is unknown is settled first: the CA
//!    says which key the account has;
//! 2. the order: resumed from the store when one is in flight for this certificate (a restart
//!    mid-order continues it instead of starting another), else created, and its URL stored
//!    together with the new private key **before any challenge is answered**;
//! 3. each pending authorization: the challenge of the certificate's validation method is
//!    solved (HTTP-01 token served, or DNS-01 TXT published) and marked ready;
//! 4. polling until the order is ready (fast at first, honouring the CA's Retry-After), then
//!    finalizing with our own CSR and downloading the chain;
//! 5. cleanup of everything published, whatever happened.
//!
//! Errors carry the CA's problem document, which ends up in the certificate's renewal reason
//! and the "Renewal Action Required" event. Retrying is the lifecycle's job (backoff).

pub mod client;
mod jws;
mod key_change;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, CertificateIdentifier, ChallengeStatus,
    ChallengeType, ExternalAccountKey, Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use time::OffsetDateTime;
use tokio::sync::{Mutex, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};
use zeroize::Zeroizing;

use crate::config::{AcmeIssuer, ValidationConfig};
use crate::keys;
use crate::model::CertificateId;
use crate::model::{Certificate, Domain, KeyAlgorithm, ValidationMethod, ValidationRecord};
use crate::policy::SuggestedWindow;
use crate::store::{ChallengeRecord, ChallengeRecordKind, Store, StoreError};
use crate::validation::{delegations, describe_problems, dns, http, label};

#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("no ACME issuer named {0:?} is configured")]
    UnknownIssuer(String),
    /// The issuer's configuration does not work with its CA (EAB required, a profile the
    /// directory does not offer, an unreadable trusted-roots or EAB key file).
    #[error("ACME issuer {issuer}: {message}")]
    Config { issuer: String, message: String },
    /// The request asks for something ACME cannot give (a wildcard over HTTP-01, a key type
    /// CAs do not certify).
    #[error("ACME issuer {issuer}: {what}")]
    Unsupported { issuer: String, what: &'static str },
    /// The CA answered something the protocol does not allow (a renewal window that ends
    /// before it starts, an unparsable certificate).
    #[error("ACME issuer {issuer}: the CA answered {message}")]
    CaFault { issuer: String, message: String },
    #[error("ACME issuer {issuer}: {source}")]
    Protocol {
        issuer: String,
        source: instant_acme::Error,
    },
    #[error("ACME issuer {issuer}: validation of {identifier} failed: {detail}")]
    Validation {
        issuer: String,
        identifier: String,
        detail: String,
    },
    #[error("ACME issuer {issuer}: the order became {status:?}: {detail}")]
    Order {
        issuer: String,
        status: String,
        detail: String,
    },
    #[error("validation method {0} is not configured (see [validation] in the config)")]
    MethodNotConfigured(ValidationMethod),
    #[error("validation method {0} is not one ACME offers: use dns or http")]
    MethodNotAcme(ValidationMethod),
    /// Some `_acme-challenge` CNAMEs are not in place yet: the certificate stays pending.
    #[error("waiting for DNS: {}", describe_problems(.0))]
    Delegation(Vec<dns::DelegationProblem>),
    #[error("DNS: {0}")]
    Dns(#[from] dns::DnsError),
    /// The CA answered 429 or 5xx with Retry-After: nothing is sent to it before `until`.
    #[error("ACME issuer {issuer} asked to wait until {}: {detail}", crate::model::rfc3339(*.until))]
    RateLimited {
        issuer: String,
        until: OffsetDateTime,
        detail: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The CA moved the account to its new key, which is in use, but storing it as the
    /// account's key failed: it stays stored as the pending key, settled at the next start.
    #[error(
        "ACME issuer {issuer}: the CA switched the account to its new key, kept as the pending key; making it the stored account key failed: {source}"
    )]
    KeyNotPromoted { issuer: String, source: StoreError },
    /// Our own side failed (key generation, CSR encoding, credentials that do not serialize).
    #[error("ACME: {0}")]
    Internal(String),
    /// The order failed in a way that left open whether the CA issued its certificate (it
    /// could not be asked, or the download failed): kept, and asked again next time.
    #[error(
        "ACME issuer {issuer}: {detail}; whether the CA issued the certificate of order {order} is not known yet, so the order is kept"
    )]
    Unsettled {
        issuer: String,
        order: String,
        detail: String,
    },
    #[error("shutting down")]
    ShuttingDown,
}

impl AcmeError {
    /// When the CA allows the next attempt, if it said (a Retry-After, also one that ended a
    /// poll).
    pub fn retry_not_before(&self) -> Option<OffsetDateTime> {
        match self {
            Self::RateLimited { until, .. } => Some(*until),
            Self::Protocol {
                source: instant_acme::Error::Timeout(Some(next)),
                ..
            } => {
                let wait = next.saturating_duration_since(std::time::Instant::now());
                time::Duration::try_from(wait)
                    .ok()
                    .map(|wait| OffsetDateTime::now_utc() + wait)
            }
            _ => None,
        }
    }

    /// A failure of the conversation, not of the order: the CA's order is still good, so the
    /// next attempt takes it up again (with the challenge records it has) instead of ordering
    /// anew.
    fn keeps_order(&self) -> bool {
        match self {
            Self::RateLimited { .. } | Self::Store(_) | Self::Unsettled { .. } => true,
            Self::Dns(err) => err.is_passing(),
            Self::Protocol { source, .. } => transient(source),
            _ => false,
        }
    }

    /// Whether the next attempt may succeed soon without anyone changing anything: the CA was
    /// busy or unreachable, or the store or the DNS server failed for a moment. The scheduler
    /// retries these on a short ladder, anything else on the renewal backoff (a rate limit
    /// without a Retry-After among them: it may last hours).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Protocol { source, .. } if rate_limited(source) => false,
            _ => self.keeps_order(),
        }
    }
}

/// Whether `err` says nothing about the order itself: a lost connection, a nonce the CA
/// refused once too often, the CA busy or broken for a moment (a 5xx problem, or a body that
/// is not JSON at all, as a proxy's error page is).
fn transient(err: &instant_acme::Error) -> bool {
    match err {
        instant_acme::Error::Api(problem) => {
            matches!(
                problem.r#type.as_deref(),
                Some(
                    "urn:ietf:params:acme:error:badNonce"
                        | "urn:ietf:params:acme:error:rateLimited"
                        | "urn:ietf:params:acme:error:serverInternal"
                )
            ) || problem.status.is_some_and(|status| status >= 500)
        }
        instant_acme::Error::Http(_)
        | instant_acme::Error::Hyper(_)
        | instant_acme::Error::Json(_)
        | instant_acme::Error::Timeout(_)
        | instant_acme::Error::Other(_) => true,
        _ => false,
    }
}

/// What the CA has for a certificate's kept order.
pub enum KeptCertificate {
    /// No order is kept, or the CA issued nothing for it.
    None,
    /// The certificate chain the CA issued for it.
    Issued(String),
    /// The CA could not be asked, or could not say (logged).
    Unknown,
}

/// [`KeptCertificate`] with what taking the certificate in needs.
enum Kept {
    None,
    Issued(KeptIssuance),
    Unknown,
}

/// A kept order's certificate, as the CA gave it.
struct KeptIssuance {
    runtime: Arc<IssuerRuntime>,
    url: String,
    key: Zeroizing<Vec<u8>>,
    chain: String,
}

/// A certificate the CA issued, ready to become a version.
pub struct Issued {
    pub certificate: crate::ca::Issued,
    /// The certificate's new private key, PKCS#8.
    pub key: Zeroizing<Vec<u8>>,
}

/// How challenges of one kind are answered.
#[derive(Clone)]
enum Solver {
    Http(http::Tokens),
    Dns(Arc<dns::DnsValidator>),
}

struct IssuerRuntime {
    config: AcmeIssuer,
    /// Loaded or created on first use.
    account: Mutex<Option<Account>>,
    /// Orders in flight for this issuer.
    orders: Semaphore,
    /// Set by the HTTPS client when the CA answers 429/5xx with Retry-After.
    backoff: client::Backoff,
}

impl IssuerRuntime {
    /// Fails at once while the CA's Retry-After holds, without contacting it.
    fn check_backoff(&self) -> Result<(), AcmeError> {
        match self.backoff.blocked_until() {
            Some(until) => Err(AcmeError::RateLimited {
                issuer: self.config.name.clone(),
                until: until.into(),
                detail: "not contacting the CA before then".into(),
            }),
            None => Ok(()),
        }
    }

    /// An error of an attempt begun at `started` that got a Retry-After becomes a
    /// [`AcmeError::RateLimited`] until then.
    fn with_backoff(&self, err: AcmeError, started: SystemTime) -> AcmeError {
        match (self.backoff.advice_since(started), &err) {
            (
                Some(until),
                AcmeError::Protocol { .. } | AcmeError::Validation { .. } | AcmeError::Order { .. },
            ) => AcmeError::RateLimited {
                issuer: self.config.name.clone(),
                until: until.into(),
                detail: err.to_string(),
            },
            _ => err,
        }
    }
}

pub struct Acme {
    store: Store,
    issuers: HashMap<String, Arc<IssuerRuntime>>,
    http: Option<http::Tokens>,
    dns: Option<Arc<dns::DnsValidator>>,
    validation: ValidationConfig,
    /// Challenge records being withdrawn after their order ended; waited for at shutdown.
    cleanup: TaskTracker,
    /// Cancelled when the daemon stops: an attempt then no longer waits to retry a request
    /// (it ends as a transient failure, which keeps the order and its records).
    stopping: CancellationToken,
}

/// Polling an order: quick at first (CAs usually validate within a second or two), then
/// backing off, for up to two minutes. A Retry-After from the CA overrides the delay.
const POLL: RetryPolicy = RetryPolicy::new()
    .initial_delay(Duration::from_millis(250))
    .backoff(1.5)
    .timeout(Duration::from_secs(120));

impl Acme {
    pub fn new(
        store: Store,
        issuers: &[AcmeIssuer],
        validation: ValidationConfig,
        http: Option<http::Tokens>,
        dns: Option<Arc<dns::DnsValidator>>,
    ) -> Self {
        let issuers = issuers
            .iter()
            .map(|config| {
                let runtime = IssuerRuntime {
                    orders: Semaphore::new(config.max_orders_in_flight),
                    config: config.clone(),
                    account: Mutex::new(None),
                    backoff: client::Backoff::default(),
                };
                (config.name.clone(), Arc::new(runtime))
            })
            .collect();
        Self {
            store,
            issuers,
            http,
            dns,
            validation,
            cleanup: TaskTracker::new(),
            stopping: CancellationToken::new(),
        }
    }

    /// Ends the in-attempt waits for a retry when `stopping` is cancelled, so a shutdown is
    /// not held up to its deadline by a CA that answers 5xx.
    #[must_use]
    pub fn stopping(mut self, stopping: CancellationToken) -> Self {
        self.stopping = stopping;
        self
    }

    /// Waits for the challenge records still being withdrawn (the caller bounds the wait).
    pub async fn drain(&self) {
        self.cleanup.close();
        self.cleanup.wait().await;
    }

    pub fn http_tokens(&self) -> Option<http::Tokens> {
        self.http.clone()
    }

    pub fn has_issuer(&self, name: &str) -> bool {
        self.issuers.contains_key(name)
    }

    pub fn validation(&self) -> &ValidationConfig {
        &self.validation
    }

    /// What the user must create for `method` before the CA can validate: for `dns`, one
    /// CNAME per name (a wildcard and its base share it), the same for every renewal.
    pub fn records(&self, method: ValidationMethod, domains: &[Domain]) -> Vec<ValidationRecord> {
        match (method, &self.validation.dns) {
            (ValidationMethod::Dns, Some(dns)) => delegations(domains, &dns.zone),
            _ => Vec::new(),
        }
    }

    /// Checks a request before it is accepted: the issuer exists, the method is configured,
    /// the key type is one ACME CAs issue for, and the issuer's account works with its
    /// configuration (EAB, profile offered by the directory). A CA that cannot be reached
    /// just now does not refuse the request: the order waits for it.
    pub async fn check_request(
        &self,
        issuer: &str,
        method: ValidationMethod,
        algorithm: KeyAlgorithm,
        domains: &[Domain],
    ) -> Result<(), AcmeError> {
        if !self.has_issuer(issuer) {
            return Err(AcmeError::UnknownIssuer(issuer.to_owned()));
        }
        match method {
            ValidationMethod::Http if self.http.is_some() => {}
            ValidationMethod::Dns if self.dns.is_some() => {}
            ValidationMethod::Http | ValidationMethod::Dns => {
                return Err(AcmeError::MethodNotConfigured(method));
            }
            ValidationMethod::Email | ValidationMethod::None => {
                return Err(AcmeError::MethodNotAcme(method));
            }
        }
        if method == ValidationMethod::Http && domains.iter().any(Domain::is_wildcard) {
            return Err(AcmeError::Unsupported {
                issuer: issuer.to_owned(),
                what: "wildcard names can only be validated with --validation dns",
            });
        }
        if algorithm == KeyAlgorithm::Ed25519 {
            return Err(AcmeError::Unsupported {
                issuer: issuer.to_owned(),
                what: "ACME CAs do not issue for Ed25519 keys; use ec-p256, ec-p384 or rsa-*",
            });
        }
        if let Some(runtime) = self.issuers.get(issuer) {
            match self.account(runtime).await {
                Err(err @ AcmeError::Config { .. }) => return Err(err),
                Err(err) => {
                    warn!(issuer, error = %err, "cannot reach the ACME CA now; the order will wait for it");
                }
                Ok(_) => {}
            }
        }
        Ok(())
    }

    /// Replaces the issuer's account key (RFC 8555 §7.3.5) so that no failure can lose the
    /// account: the new key is made and stored (sealed) as the account's pending key before
    /// the CA hears of it, and made the account's key once the CA has switched. When the CA's
    /// answer is lost, the next use of the account asks it which key it has (see
    /// [`Acme::settle_pending_key`]). Returns the account as stored.
    pub async fn rollover_key(&self, issuer: &str) -> Result<crate::store::AcmeAccount, AcmeError> {
        let runtime = self
            .issuers
            .get(issuer)
            .ok_or_else(|| AcmeError::UnknownIssuer(issuer.to_owned()))?;
        if self.store.acme_pending_key(issuer).await?.is_some() {
            // An earlier rollover is not settled (its answer was lost, or the CA switched and
            // the store did not take the new key). Settle it first, by asking the CA, so this
            // one starts from the key the CA has; a new pending key would overwrite the only
            // copy of the key that works.
            *runtime.account.lock().await = None;
            self.account(runtime).await?;
            if self.store.acme_pending_key(issuer).await?.is_some() {
                return Err(AcmeError::Internal(format!(
                    "an earlier key rollover of {issuer} is still not stored (the daemon uses the new key); \
                     retry once the store takes writes again"
                )));
            }
        }
        self.account(runtime).await?;
        // No order may start with the old key while the CA switches.
        let mut slot = runtime.account.lock().await;
        let (mut record, credentials) =
            self.store.acme_account(issuer).await?.ok_or_else(|| {
                AcmeError::Internal(format!(
                    "the account of {issuer} vanished from the store during the rollover"
                ))
            })?;
        let protocol = |source| AcmeError::Protocol {
            issuer: issuer.to_owned(),
            source,
        };
        let next = key_change::next_credentials(&credentials).map_err(protocol)?;
        let next_account = builder(runtime)?
            .from_credentials(parse_credentials(issuer, &next)?)
            .await
            .map_err(protocol)?;
        self.store.save_acme_pending_key(issuer, &next).await?;
        let (old_key, new_key) = (
            private_key(issuer, &credentials)?,
            private_key(issuer, &next)?,
        );
        let http = http_client(runtime)?;
        let outcome =
            key_change::change(&*http, &record.directory, &record.url, &old_key, &new_key).await;
        match outcome {
            Ok(()) => {}
            Err(source @ instant_acme::Error::Api(_)) if !transient(&source) => {
                // The CA refused: the account keeps its key.
                if let Err(err) = self.store.drop_acme_pending_key(issuer).await {
                    warn!(issuer, error = %err, "could not forget the pending ACME account key; it is settled at the next use");
                }
                return Err(protocol(source));
            }
            Err(source) => {
                // The CA may have switched or not: the next use of the account asks it.
                *slot = None;
                warn!(issuer, error = %source, "no answer to the ACME account key change; the account is settled at its next use");
                return Err(protocol(source));
            }
        }
        // The CA now accepts only the new key, whatever the store manages next.
        *slot = Some(next_account);
        record.updated_at = OffsetDateTime::now_utc();
        self.store
            .save_acme_account(record.clone(), &next)
            .await
            .map_err(|source| AcmeError::KeyNotPromoted {
                issuer: issuer.to_owned(),
                source,
            })?;
        info!(issuer, account = %record.url, "ACME account key replaced");
        Ok(record)
    }

    /// Settles a pending account key left by a rollover whose outcome is unknown (no answer
    /// from the CA, a crash, a store write failing after the switch): the CA is asked whether
    /// the pending key is the account's (a newAccount request with onlyReturnExisting, signed by
    /// it). Returns the credentials to use: the pending ones, made the account's, or the stored
    /// ones when the CA kept the old key.
    async fn settle_pending_key(
        &self,
        runtime: &IssuerRuntime,
        stored: &crate::store::AcmeAccount,
        current: Zeroizing<Vec<u8>>,
        pending: Zeroizing<Vec<u8>>,
    ) -> Result<Zeroizing<Vec<u8>>, AcmeError> {
        let issuer = &runtime.config.name;
        let protocol = |source| AcmeError::Protocol {
            issuer: issuer.clone(),
            source,
        };
        let der =
            rustls_pki_types::PrivatePkcs8KeyDer::from(private_key(issuer, &pending)?.to_vec());
        let key = instant_acme::Key::from_pkcs8_der(der.clone_key()).map_err(protocol)?;
        let found = builder(runtime)?
            .from_key((key, der.into()), stored.directory.clone())
            .await;
        match found {
            Ok((account, _)) if account.id() == stored.url => {
                let mut record = stored.clone();
                record.updated_at = OffsetDateTime::now_utc();
                // Used from now on whatever the store says; a failed write is retried at the
                // next start, by asking the CA again.
                match self.store.save_acme_account(record, &pending).await {
                    Ok(()) => {
                        info!(issuer, account = %stored.url, "ACME account key rollover completed: the CA had switched to the pending key");
                    }
                    Err(err) => {
                        warn!(issuer, error = %err, "the CA switched the ACME account to the pending key; storing it as the account's failed");
                    }
                }
                Ok(pending)
            }
            Ok((account, _)) => Err(ca_fault(
                &runtime.config,
                &format!(
                    "that the pending account key belongs to {}, not to {}",
                    account.id(),
                    stored.url
                ),
            )),
            Err(instant_acme::Error::Api(problem))
                if problem.r#type.as_deref()
                    == Some("urn:ietf:params:acme:error:accountDoesNotExist") =>
            {
                self.store.drop_acme_pending_key(issuer).await?;
                info!(issuer, account = %stored.url, "the CA kept the ACME account key; the pending key is dropped");
                Ok(current)
            }
            Err(source) => Err(protocol(source)),
        }
    }

    /// The configured issuers with their accounts (`None` before first use).
    pub async fn accounts(
        &self,
    ) -> Result<Vec<(String, Option<crate::store::AcmeAccount>)>, AcmeError> {
        let stored = self.store.acme_accounts().await?;
        let mut names: Vec<&String> = self.issuers.keys().collect();
        names.sort();
        Ok(names
            .into_iter()
            .map(|name| {
                let account = stored
                    .iter()
                    .find(|a| {
                        &a.issuer == name && a.directory == self.issuers[name].config.directory
                    })
                    .cloned();
                (name.clone(), account)
            })
            .collect())
    }

    /// Revokes a certificate at its ACME CA (RFC 8555 §7.6), signed with the account key.
    pub async fn revoke(
        &self,
        issuer: &str,
        cert_pem: &str,
        reason: crate::model::RevocationReason,
    ) -> Result<(), AcmeError> {
        use crate::model::RevocationReason as R;
        use instant_acme::RevocationReason as Acme;
        let runtime = self
            .issuers
            .get(issuer)
            .ok_or_else(|| AcmeError::UnknownIssuer(issuer.to_owned()))?;
        let account = self.account(runtime).await?;
        let der = crate::pem::certificates(cert_pem)
            .into_iter()
            .next()
            .ok_or_else(|| AcmeError::Internal("no certificate to revoke".into()))?;
        let der = rustls_pki_types::CertificateDer::from(der);
        let reason = match reason {
            R::Unspecified => Acme::Unspecified,
            R::KeyCompromise => Acme::KeyCompromise,
            R::CaCompromise => Acme::CaCompromise,
            R::AffiliationChanged => Acme::AffiliationChanged,
            R::Superseded => Acme::Superseded,
            R::CessationOfOperation => Acme::CessationOfOperation,
            R::PrivilegeWithdrawn => Acme::PrivilegeWithdrawn,
        };
        account
            .revoke(&instant_acme::RevocationRequest {
                certificate: &der,
                reason: Some(reason),
            })
            .await
            .map_err(|source| AcmeError::Protocol {
                issuer: issuer.to_owned(),
                source,
            })
    }

    /// The renewal window the CA suggests for `cert_pem` (ACME renewal information, RFC
    /// 9773), as it answered, or `None` when its directory offers none. Where in the window to
    /// renew is the planner's choice ([`crate::policy::choose_renewal_time`]).
    pub async fn renewal_window(
        &self,
        issuer: &str,
        cert_pem: &str,
    ) -> Result<Option<SuggestedWindow>, AcmeError> {
        let runtime = self
            .issuers
            .get(issuer)
            .ok_or_else(|| AcmeError::UnknownIssuer(issuer.to_owned()))?;
        runtime.check_backoff()?;
        let started = SystemTime::now();
        let account = self.account(runtime).await?;
        let id = certificate_id(cert_pem)?;
        let (info, retry_after) = match account.renewal_info(&id).await {
            Ok(answer) => answer,
            Err(instant_acme::Error::Unsupported(_)) => return Ok(None),
            Err(source) => {
                return Err(runtime.with_backoff(
                    AcmeError::Protocol {
                        issuer: issuer.to_owned(),
                        source,
                    },
                    started,
                ));
            }
        };
        let (start, end) = (info.suggested_window.start, info.suggested_window.end);
        if end <= start {
            return Err(ca_fault(
                &runtime.config,
                &format!(
                    "renewal information for {id} whose window ends ({end}) before it starts ({start})"
                ),
            ));
        }
        Ok(Some(SuggestedWindow {
            start,
            end,
            retry_after: time::Duration::try_from(retry_after).ok(),
            explanation_url: info.explanation_url,
        }))
    }

    /// Issues (or renews) `cert` through its ACME issuer with its validation method. A
    /// renewal whose CA offers renewal information names the certificate it replaces
    /// (`replaces`, RFC 9773 §5); `replacing` is that certificate's PEM.
    ///
    /// Challenge records live as long as the order that needs them: an attempt that ends with
    /// the order kept for the next one (a conversation that failed, not the order) leaves them
    /// in place, since the CA may still be validating; an issued, failed or abandoned order
    /// has everything recorded for the certificate withdrawn.
    pub async fn issue(
        &self,
        cert: &Certificate,
        method: ValidationMethod,
        replacing: Option<&str>,
    ) -> Result<Issued, AcmeError> {
        let runtime = self
            .issuers
            .get(&cert.issuer)
            .ok_or_else(|| AcmeError::UnknownIssuer(cert.issuer.clone()))?;
        // At most max-orders-in-flight per issuer; the semaphore lives as long as the issuer.
        let _permit = runtime
            .orders
            .acquire()
            .await
            .map_err(|_| AcmeError::ShuttingDown)?;
        runtime.check_backoff()?;
        let solver = match (method, &self.http, &self.dns) {
            (ValidationMethod::Http, Some(tokens), _) => Solver::Http(tokens.clone()),
            (ValidationMethod::Dns, _, Some(validator)) => {
                // No order before every delegation is in place: the CA would only fail it.
                let records = self.records(method, &cert.domains);
                let problems = validator.check_delegations(&records).await?;
                if !problems.is_empty() {
                    return Err(AcmeError::Delegation(problems));
                }
                Solver::Dns(validator.clone())
            }
            (ValidationMethod::Http | ValidationMethod::Dns, _, _) => {
                return Err(AcmeError::MethodNotConfigured(method));
            }
            (ValidationMethod::Email | ValidationMethod::None, _, _) => {
                return Err(AcmeError::MethodNotAcme(method));
            }
        };
        let started = SystemTime::now();
        let account = self.account(runtime).await?;
        let replaces = replacing.map(certificate_id).transpose()?;
        let mut published = Vec::new();
        let result = self
            .run_order(runtime, &account, cert, replaces, &solver, &mut published)
            .await
            .map_err(|err| runtime.with_backoff(err, started));
        match &result {
            Ok(_) => {
                // An issued certificate does not wait for the cleanup: an authoritative server
                // can take a while to apply an update (Knot took half a second in the
                // benchmark). No later order publishes these values again (new order, new
                // tokens). What is withdrawn is fixed now, so the next order's records are
                // never part of it.
                let records = self.recorded(&cert.id, published).await;
                if !records.is_empty() {
                    let withdrawer = self.withdrawer();
                    self.cleanup
                        .spawn(async move { withdrawer.withdraw_all(records).await });
                }
            }
            Err(err) if err.keeps_order() => {
                warn!(cert = %cert.id, error = %err, "ACME attempt failed; the order and its challenge records are kept for the next attempt");
            }
            Err(err) => {
                warn!(cert = %cert.id, error = %err, "ACME order failed");
                // A failed order is not resumed: the next attempt starts a fresh one, and
                // nothing published for this one is of use any more.
                let _ = self.store.delete_acme_order(&cert.id).await;
                let records = self.recorded(&cert.id, published).await;
                self.withdrawer().withdraw_all(records).await;
            }
        }
        result
    }

    /// Withdraws, in the background, the challenge records that crashes, kills or a shutdown
    /// deadline left behind: those recorded for an order that is no longer stored (the
    /// certificate was issued, its order failed, or it was deleted). Records of orders still
    /// stored stay: those orders are taken up again.
    pub fn withdraw_left_over(&self) {
        let (store, withdrawer) = (self.store.clone(), self.withdrawer());
        self.cleanup.spawn(async move {
            match store.challenge_records().await {
                Ok(records) => {
                    let orphans: Vec<ChallengeRecord> = records
                        .into_iter()
                        .filter_map(|(record, live)| (!live).then_some(record))
                        .collect();
                    if !orphans.is_empty() {
                        info!(
                            records = orphans.len(),
                            "withdrawing challenge records left by orders that ended"
                        );
                        withdrawer.withdraw_all(orphans).await;
                    }
                }
                Err(err) => {
                    warn!(error = %err, "reading the challenge records left over failed; they are withdrawn at the next start");
                }
            }
        });
    }

    /// The certificate the CA issued for the order kept for `cert`, if it did: an attempt a
    /// kill or crash cut off after the CA issued, before the store took the certificate in
    /// (a renewal asked for through the API is not taken up again until the next one is
    /// due). Asked before a revocation, which must take that certificate with it. Best
    /// effort: when the CA cannot tell, that is logged with the order, and `None` returned.
    pub async fn kept_certificate(&self, cert: &CertificateId) -> KeptCertificate {
        match self.kept(cert).await {
            Kept::Issued(kept) => KeptCertificate::Issued(kept.chain),
            Kept::None => KeptCertificate::None,
            Kept::Unknown => KeptCertificate::Unknown,
        }
    }

    /// The certificate the CA issued for the order kept for `cert`, checked as a new version
    /// of it (names, the order's key, the chain's links), for the start to take in: an
    /// attempt a kill cut off after the CA issued (a `renew`, which nothing else takes up
    /// before the next renewal is due). `None` when there is none or it cannot be known
    /// (logged); the order is then left for the next attempt.
    pub async fn kept_issuance(&self, cert: &Certificate) -> Option<Issued> {
        let Kept::Issued(kept) = self.kept(&cert.id).await else {
            return None;
        };
        match accept_chain(&kept.runtime.config, cert, &kept.chain, kept.key) {
            Ok(issued) => Some(issued),
            Err(err) => {
                warn!(cert = %cert.id, order = %kept.url, error = %err, "the certificate of the kept ACME order is not one for this certificate; left to the next attempt");
                None
            }
        }
    }

    /// What the CA has for the order kept for `cert`.
    async fn kept(&self, cert: &CertificateId) -> Kept {
        let (issuer, url, key) = match self.store.acme_order(cert).await {
            Ok(Some(order)) => order,
            Ok(None) => return Kept::None,
            Err(err) => {
                warn!(cert = %cert, error = %err, "could not read the ACME order kept for the certificate");
                return Kept::Unknown;
            }
        };
        let Some(runtime) = self.issuers.get(&issuer).cloned() else {
            warn!(cert = %cert, order = %url, %issuer, "the ACME order kept for the certificate is from an issuer no longer configured");
            return Kept::Unknown;
        };
        let account = match self.account(&runtime).await {
            Ok(account) => account,
            Err(err) => {
                warn!(cert = %cert, order = %url, error = %err, "could not ask the CA whether the kept ACME order has a certificate; the order stays kept");
                return Kept::Unknown;
            }
        };
        match self.certificate_after_all(&runtime, &account, &url).await {
            AfterAll::Issued(chain) => Kept::Issued(KeptIssuance {
                runtime,
                url,
                key,
                chain,
            }),
            AfterAll::NoCertificate => Kept::None,
            AfterAll::Unknown(why) => {
                warn!(cert = %cert, order = %url, why = %why, "could not tell whether the kept ACME order has a certificate; the order stays kept");
                Kept::Unknown
            }
        }
    }

    /// Gives up the order kept for `cert` (revoked, or its validation timed out: no attempt
    /// will take it up again) and withdraws everything recorded for it, in the background.
    pub async fn abandon(&self, cert: &CertificateId) {
        if let Err(err) = self.store.delete_acme_order(cert).await {
            warn!(cert = %cert, error = %err, "could not drop the ACME order of a certificate no longer renewed; its records are withdrawn at a later start");
            return;
        }
        let records = self.recorded(cert, Vec::new()).await;
        if !records.is_empty() {
            let withdrawer = self.withdrawer();
            self.cleanup
                .spawn(async move { withdrawer.withdraw_all(records).await });
        }
    }

    /// Everything recorded for `cert`'s orders (the store's rows and what this attempt
    /// published), to withdraw once the order is over.
    async fn recorded(
        &self,
        cert: &CertificateId,
        published: Vec<ChallengeRecord>,
    ) -> Vec<ChallengeRecord> {
        let mut records = published;
        match self.store.challenge_records().await {
            Ok(stored) => {
                for (record, _) in stored {
                    if &record.certificate == cert && !records.contains(&record) {
                        records.push(record);
                    }
                }
            }
            Err(err) => {
                warn!(cert = %cert, error = %err, "reading the challenge records of an order failed; what this run published is withdrawn, the rest at the next start");
            }
        }
        records
    }

    fn withdrawer(&self) -> Withdrawer {
        Withdrawer {
            store: self.store.clone(),
            http: self.http.clone(),
            dns: self.dns.clone(),
        }
    }

    /// Takes the order of `cert` (resumed or new) to an issued certificate. A request that
    /// fails without saying anything about the order (see [`retriable`]) is tried again within
    /// this attempt, from a fresh copy of the order: every step is safe to repeat
    /// ([`Acme::advance`]). Before the attempt gives up on an order for any other reason, the
    /// CA is asked whether the order has a certificate after all, which is then taken: one
    /// request, one certificate.
    async fn run_order(
        &self,
        runtime: &IssuerRuntime,
        account: &Account,
        cert: &Certificate,
        replaces: Option<CertificateIdentifier<'static>>,
        solver: &Solver,
        published: &mut Vec<ChallengeRecord>,
    ) -> Result<Issued, AcmeError> {
        let issuer = &runtime.config;
        let protocol = |source| AcmeError::Protocol {
            issuer: issuer.name.clone(),
            source,
        };
        let mut conversation = Conversation::new(runtime, &self.stopping);
        let (mut order, key) = self
            .resume_or_create(runtime, account, cert, replaces, &mut conversation)
            .await?;
        let url = order.url().to_owned();
        loop {
            let err = match self
                .advance(runtime, account, &mut order, cert, &key, solver, published)
                .await
            {
                Ok(chain) => {
                    let issued = accept_chain(issuer, cert, &chain, key)?;
                    info!(cert = %cert.id, issuer = %issuer.name, serial = %issued.certificate.serial, "ACME certificate issued");
                    return Ok(issued);
                }
                Err(err) => err,
            };
            if let AcmeError::Protocol { source, .. } = &err
                && conversation.again(source).await
            {
                order = conversation
                    .retry(|| account.order(url.clone()))
                    .await
                    .map_err(protocol)?;
                continue;
            }
            // An order about to be dropped (a kept one is looked at again next time).
            if !err.keeps_order()
                && matches!(
                    err,
                    AcmeError::Protocol { .. }
                        | AcmeError::Validation { .. }
                        | AcmeError::Order { .. }
                )
            {
                match self.certificate_after_all(runtime, account, &url).await {
                    AfterAll::Issued(chain) => {
                        let issued = accept_chain(issuer, cert, &chain, key)?;
                        info!(cert = %cert.id, issuer = %issuer.name, serial = %issued.certificate.serial, order = %url, "ACME certificate issued before the order failed; taking it");
                        return Ok(issued);
                    }
                    AfterAll::Unknown(why) => {
                        return Err(AcmeError::Unsettled {
                            issuer: issuer.name.clone(),
                            order: url,
                            detail: format!("{err}; {why}"),
                        });
                    }
                    AfterAll::NoCertificate => {}
                }
            }
            return Err(err);
        }
    }

    /// Takes `order` from wherever it stands to its certificate chain. Safe to repeat on a
    /// fresh copy of the order after any failed request: a challenge is answered only while it
    /// is pending, the order finalized only while it is ready, and a record this attempt
    /// published already is not published again.
    #[allow(clippy::too_many_arguments)]
    async fn advance(
        &self,
        runtime: &IssuerRuntime,
        account: &Account,
        order: &mut instant_acme::Order,
        cert: &Certificate,
        key: &[u8],
        solver: &Solver,
        published: &mut Vec<ChallengeRecord>,
    ) -> Result<String, AcmeError> {
        let issuer = &runtime.config;
        let protocol = |source| AcmeError::Protocol {
            issuer: issuer.name.clone(),
            source,
        };
        if order.state().status == OrderStatus::Pending {
            self.answer_challenges(issuer, order, cert, solver, published)
                .await?;
            debug!(cert = %cert.id, "challenges answered");
        }
        // Where the order stands decides the next step: a resumed order may be past
        // validation (ready) or already finalized (processing, valid).
        let status = match order.state().status {
            OrderStatus::Pending => {
                let url = order.url().to_owned();
                let poll = async { order.poll_ready(&POLL).await.map_err(protocol) };
                self.unless_stopping(issuer, &url, poll).await?
            }
            other => other,
        };
        match status {
            OrderStatus::Ready => {
                debug!(cert = %cert.id, "order ready; finalizing");
                let csr = csr_der(key, &cert.domains)?;
                order.finalize_csr(&csr).await.map_err(protocol)?;
            }
            OrderStatus::Processing | OrderStatus::Valid => {
                debug!(cert = %cert.id, ?status, "order finalized before; fetching the certificate");
            }
            OrderStatus::Invalid | OrderStatus::Pending => {
                // A CA may call an order invalid after it issued its certificate (a second
                // validation failing): the certificate is ours all the same.
                if let Some(location) = order.state().certificate.clone() {
                    return self.download(runtime, account, &location).await;
                }
                return Err(order_failure(issuer, order, status).await);
            }
        }
        // A CA that issues while answering the finalize request needs no poll.
        let url = order.url().to_owned();
        if matches!(
            order.state().status,
            OrderStatus::Processing | OrderStatus::Valid
        ) && let Some(chain) = order.certificate().await.map_err(protocol)?
        {
            return Ok(chain);
        }
        let poll = async { order.poll_certificate(&POLL).await.map_err(protocol) };
        self.unless_stopping(issuer, &url, poll).await
    }

    /// `poll` (of the order at `url`), ended when the daemon stops: the order is then
    /// unsettled, kept with its records for the next start, instead of holding the shutdown
    /// up to its deadline for as long as the CA takes.
    async fn unless_stopping<T>(
        &self,
        issuer: &AcmeIssuer,
        url: &str,
        poll: impl Future<Output = Result<T, AcmeError>>,
    ) -> Result<T, AcmeError> {
        tokio::select! {
            result = poll => result,
            () = self.stopping.cancelled() => Err(AcmeError::Unsettled {
                issuer: issuer.name.clone(),
                order: url.to_owned(),
                detail: "the daemon stopped while the CA was working on the order".into(),
            }),
        }
    }

    /// Publishes the record of each pending authorization's challenge and tells the CA it is
    /// ready. A challenge the CA is validating already (answered by an interrupted run) gets
    /// its record published again, since that run's may have gone with it (an HTTP-01 token
    /// held in memory), but is not answered twice.
    async fn answer_challenges(
        &self,
        issuer: &AcmeIssuer,
        order: &mut instant_acme::Order,
        cert: &Certificate,
        solver: &Solver,
        published: &mut Vec<ChallengeRecord>,
    ) -> Result<(), AcmeError> {
        let protocol = |source| AcmeError::Protocol {
            issuer: issuer.name.clone(),
            source,
        };
        let order_url = order.url().to_owned();
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.map_err(protocol)?;
            match authz.status {
                AuthorizationStatus::Valid => continue,
                AuthorizationStatus::Pending => {}
                other => {
                    return Err(AcmeError::Validation {
                        issuer: issuer.name.clone(),
                        identifier: authz.identifier().to_string(),
                        detail: format!("authorization is {other:?}"),
                    });
                }
            }
            let base = match authz.identifier().identifier {
                Identifier::Dns(name) => name.clone(),
                Identifier::Ip(ip) => ip.to_string(),
                other => format!("{other:?}"),
            };
            let challenge_type = solver.challenge_type();
            let Some(mut challenge) = authz.challenge(challenge_type.clone()) else {
                return Err(AcmeError::Validation {
                    issuer: issuer.name.clone(),
                    identifier: base,
                    detail: format!("the CA offers no {challenge_type:?} challenge"),
                });
            };
            if !matches!(
                challenge.status,
                ChallengeStatus::Pending | ChallengeStatus::Processing
            ) {
                // Valid: the authorization follows; invalid: the order's status says why.
                continue;
            }
            let record = solver.record(&issuer.name, &cert.id, &order_url, &base, &challenge)?;
            if !published.contains(&record) {
                // Recorded first: a crash between the two leaves a row for a record that may
                // not exist, which withdrawing later does no harm.
                self.store.set_challenge_record(&record, true).await?;
                published.push(record.clone());
                solver.publish(&record, &challenge).await?;
            }
            if challenge.status == ChallengeStatus::Pending {
                challenge.set_ready().await.map_err(protocol)?;
            }
        }
        Ok(())
    }

    /// What the CA has for the order at `url`, asked before the order is given up: a
    /// certificate (taken, whatever the order's status says), certainly none (the order is
    /// invalid, or still pending or ready), or not known (the CA could not be asked, the
    /// order is still being finalized, the download failed). A certificate the CA issued is
    /// never replaced by a second one, so only the second answer drops the order.
    async fn certificate_after_all(
        &self,
        runtime: &IssuerRuntime,
        account: &Account,
        url: &str,
    ) -> AfterAll {
        let mut conversation = Conversation::new(runtime, &self.stopping);
        let mut order = match conversation.retry(|| account.order(url.to_owned())).await {
            Ok(order) => order,
            Err(err) => {
                return AfterAll::Unknown(format!("asking the CA for the order failed: {err}"));
            }
        };
        let state = order.state();
        match (state.certificate.clone(), state.status) {
            (Some(location), _) => match self.download(runtime, account, &location).await {
                Ok(chain) => AfterAll::Issued(chain),
                Err(err) => AfterAll::Unknown(format!("downloading its certificate failed: {err}")),
            },
            (None, status @ (OrderStatus::Processing | OrderStatus::Valid)) => {
                AfterAll::Unknown(format!("the order is {status:?} without a certificate yet"))
            }
            (None, OrderStatus::Invalid | OrderStatus::Pending | OrderStatus::Ready) => {
                AfterAll::NoCertificate
            }
        }
    }

    /// Downloads the certificate chain at `location` with a POST-as-GET signed by the
    /// issuer's account, whatever its order's status (instant-acme downloads only from valid
    /// orders).
    async fn download(
        &self,
        runtime: &IssuerRuntime,
        account: &Account,
        location: &str,
    ) -> Result<String, AcmeError> {
        let issuer = &runtime.config.name;
        let protocol = |source| AcmeError::Protocol {
            issuer: issuer.clone(),
            source,
        };
        let (record, credentials) = self.store.acme_account(issuer).await?.ok_or_else(|| {
            AcmeError::Internal(format!("the account of {issuer} is not in the store"))
        })?;
        if record.url != account.id() {
            return Err(AcmeError::Internal(format!(
                "the stored account of {issuer} is not the one in use"
            )));
        }
        let key = jws::key_pair(&private_key(issuer, &credentials)?).map_err(protocol)?;
        let http = http_client(runtime)?;
        let mut conversation = Conversation::new(runtime, &self.stopping);
        let body = conversation
            .retry(|| async {
                let directory = jws::Directory::fetch(&*http, &record.directory).await?;
                jws::signed_post(&*http, &directory, &record.url, &key, location, None).await
            })
            .await
            .map_err(protocol)?;
        String::from_utf8(body.to_vec())
            .map_err(|_| ca_fault(&runtime.config, "a certificate chain that is not text"))
    }

    /// The order for `cert` and its key: the one stored if the CA can still give a certificate
    /// for it, else a new one, recorded with its new key before anything else happens. The
    /// records published for a stored order that turned out dead are withdrawn first.
    async fn resume_or_create(
        &self,
        runtime: &IssuerRuntime,
        account: &Account,
        cert: &Certificate,
        replaces: Option<CertificateIdentifier<'static>>,
        conversation: &mut Conversation<'_>,
    ) -> Result<(instant_acme::Order, Zeroizing<Vec<u8>>), AcmeError> {
        let issuer = &runtime.config;
        let protocol = |source| AcmeError::Protocol {
            issuer: issuer.name.clone(),
            source,
        };
        if let Some((stored_issuer, url, key)) = self.store.acme_order(&cert.id).await?
            && stored_issuer == issuer.name
        {
            match conversation.retry(|| account.order(url.clone())).await {
                Ok(mut order) => {
                    let state = order.state();
                    if state.status != OrderStatus::Invalid || state.certificate.is_some() {
                        info!(cert = %cert.id, order = %url, status = ?state.status, "resuming the ACME order in flight");
                        return Ok((order, key));
                    }
                    info!(cert = %cert.id, order = %url, "stored ACME order is invalid; starting another");
                }
                // The CA could not be asked: keep the order for the next attempt.
                Err(err) if transient(&err) => return Err(protocol(err)),
                Err(err) => {
                    info!(cert = %cert.id, order = %url, error = %err, "stored ACME order unusable; starting another");
                }
            }
            // Whatever the interrupted runs published for that order is of no more use.
            let records = self.recorded(&cert.id, Vec::new()).await;
            self.withdrawer().withdraw_all(records).await;
            // That answer may have come with a Retry-After.
            runtime.check_backoff()?;
        }
        let identifiers: Vec<Identifier> = cert
            .domains
            .iter()
            .map(|d| match d {
                Domain::Dns(name) => Identifier::Dns(name.clone()),
                Domain::Ip(ip) => Identifier::Ip(*ip),
            })
            .collect();
        let new_order = || {
            let order = NewOrder::new(&identifiers);
            match &issuer.profile {
                Some(profile) => order.profile(profile),
                None => order,
            }
        };
        // The key first: a failure here must not leave an order behind at the CA.
        let algorithm = cert.key_algorithm;
        let key = tokio::task::spawn_blocking(move || {
            keys::generate(algorithm).map(|k| Zeroizing::new(k.serialize_der()))
        })
        .await
        .map_err(|e| AcmeError::Internal(format!("key generation: {e}")))?
        .map_err(|e| AcmeError::Internal(format!("key generation: {e}")))?;
        // A new order is sent again only after a badNonce, which the CA refused before
        // reading it: after any other failure it may have created the order, and a second
        // request would leave one behind (the next attempt orders anew instead).
        let plain = new_order();
        let order = match replaces {
            None => conversation
                .retry_if(bad_nonce, || account.new_order(&plain))
                .await
                .map_err(protocol)?,
            Some(replaces) => {
                let id = replaces.to_string();
                let replacing = new_order().replaces(replaces);
                match conversation
                    .retry_if(bad_nonce, || account.new_order(&replacing))
                    .await
                {
                    Ok(order) => order,
                    // The CA would not take this order as the replacement (already replaced,
                    // another account's certificate), or created it without the link
                    // (instant-acme's "replaces field mismatch"): an order without `replaces`
                    // still renews; ARI only loses the link.
                    Err(err)
                        if matches!(&err, instant_acme::Error::Api(_)) && !transient(&err)
                            || matches!(&err, instant_acme::Error::Other(_))
                                && err.to_string().contains("replaces field mismatch") =>
                    {
                        warn!(cert = %cert.id, replaces = %id, error = %err, "the CA refused the order as a replacement; ordering without `replaces`");
                        conversation
                            .retry_if(bad_nonce, || account.new_order(&plain))
                            .await
                            .map_err(protocol)?
                    }
                    Err(err) => return Err(protocol(err)),
                }
            }
        };
        // Logged before it is stored: a kill or a store failure in between leaves an order at
        // the CA that nothing resumes, and the log is then the only place that names it.
        info!(cert = %cert.id, order = %order.url(), "ACME order created");
        if let Err(err) = self
            .store
            .save_acme_order(&cert.id, &issuer.name, order.url(), &key)
            .await
        {
            warn!(cert = %cert.id, order = %order.url(), error = %err, "the ACME order could not be stored: nothing resumes it, and it is left pending at the CA (where it expires)");
            return Err(err.into());
        }
        Ok((order, key))
    }

    /// The issuer's account, loaded once per daemon run (and created on first use).
    async fn account(&self, runtime: &IssuerRuntime) -> Result<Account, AcmeError> {
        let mut slot = runtime.account.lock().await;
        if let Some(account) = slot.as_ref() {
            return Ok(account.clone());
        }
        let issuer = &runtime.config;
        let protocol = |source| AcmeError::Protocol {
            issuer: issuer.name.clone(),
            source,
        };
        let stored = self
            .store
            .acme_account(&issuer.name)
            .await?
            .filter(|(stored, _)| stored.directory == issuer.directory);
        let account = match stored {
            Some((mut stored, credentials)) => {
                let credentials = match self.store.acme_pending_key(&issuer.name).await? {
                    Some(pending) => {
                        self.settle_pending_key(runtime, &stored, credentials, pending)
                            .await?
                    }
                    None => credentials,
                };
                let parsed = parse_credentials(&issuer.name, &credentials)?;
                let account = builder(runtime)?
                    .from_credentials(parsed)
                    .await
                    .map_err(protocol)?;
                // The config's contact list is what the CA should have.
                if stored.contact != issuer.contact {
                    let contact: Vec<&str> = issuer.contact.iter().map(String::as_str).collect();
                    account.update_contacts(&contact).await.map_err(protocol)?;
                    info!(issuer = %issuer.name, contact = ?issuer.contact, "ACME account contact updated");
                    stored.contact = issuer.contact.clone();
                    self.store.save_acme_account(stored, &credentials).await?;
                }
                account
            }
            None => {
                let contact: Vec<&str> = issuer.contact.iter().map(String::as_str).collect();
                let new = NewAccount {
                    contact: &contact,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                };
                let eab = match &issuer.eab {
                    Some((kid, file)) => Some(eab_key(issuer, kid, file)?),
                    None => None,
                };
                let (account, credentials) = builder(runtime)?
                    .create(&new, issuer.directory.clone(), eab.as_ref())
                    .await
                    .map_err(|source| match &source {
                        instant_acme::Error::Api(problem)
                            if problem.r#type.as_deref() == Some("urn:ietf:params:acme:error:externalAccountRequired") =>
                        {
                            setup(issuer, "the CA requires external account binding: set eab-kid and eab-hmac-file")
                        }
                        _ => AcmeError::Protocol { issuer: issuer.name.clone(), source },
                    })?;
                let json = Zeroizing::new(
                    serde_json::to_vec(&credentials)
                        .map_err(|e| AcmeError::Internal(format!("account credentials: {e}")))?,
                );
                let now = OffsetDateTime::now_utc();
                let record = crate::store::AcmeAccount {
                    issuer: issuer.name.clone(),
                    directory: issuer.directory.clone(),
                    url: account.id().to_owned(),
                    contact: issuer.contact.clone(),
                    created_at: now,
                    updated_at: now,
                };
                self.store.save_acme_account(record, &json).await?;
                info!(issuer = %issuer.name, account = %account.id(), "ACME account created");
                account
            }
        };
        if let Some(profile) = &issuer.profile
            && !account.profiles().any(|p| p.name == profile)
        {
            let offered: Vec<String> = account.profiles().map(|p| p.name.to_owned()).collect();
            return Err(setup(
                issuer,
                &format!(
                    "the directory does not offer profile {profile:?} (offered: {})",
                    if offered.is_empty() {
                        "none".into()
                    } else {
                        offered.join(", ")
                    }
                ),
            ));
        }
        *slot = Some(account.clone());
        Ok(account)
    }
}

impl Solver {
    fn challenge_type(&self) -> ChallengeType {
        match self {
            Self::Http(_) => ChallengeType::Http01,
            Self::Dns(_) => ChallengeType::Dns01,
        }
    }

    /// The record answering `challenge` for `base` (the identifier, without `*.`) in the
    /// order at `order_url`.
    fn record(
        &self,
        issuer: &str,
        cert: &CertificateId,
        order_url: &str,
        base: &str,
        challenge: &instant_acme::ChallengeHandle<'_>,
    ) -> Result<ChallengeRecord, AcmeError> {
        let (kind, name, value) = match self {
            Self::Http(_) => {
                // The token becomes a file name under a webroot: nothing but base64url.
                if !http::is_token(&challenge.token) {
                    return Err(AcmeError::Validation {
                        issuer: issuer.to_owned(),
                        identifier: base.to_owned(),
                        detail: format!(
                            "the CA sent an HTTP-01 token that is not base64url: {:?}",
                            challenge.token
                        ),
                    });
                }
                (
                    ChallengeRecordKind::Token,
                    challenge.token.clone(),
                    String::new(),
                )
            }
            Self::Dns(validator) => {
                let (name, value) = txt_record(validator, base, challenge);
                (ChallengeRecordKind::Txt, name, value)
            }
        };
        Ok(ChallengeRecord {
            kind,
            name,
            value,
            certificate: cert.clone(),
            order_url: order_url.to_owned(),
        })
    }

    /// Makes `record` visible to the CA.
    async fn publish(
        &self,
        record: &ChallengeRecord,
        challenge: &instant_acme::ChallengeHandle<'_>,
    ) -> Result<(), AcmeError> {
        match self {
            Self::Http(tokens) => {
                tokens.insert(&record.name, challenge.key_authorization().as_str());
            }
            Self::Dns(validator) => validator.publish(&record.name, &record.value).await?,
        }
        Ok(())
    }
}

/// What [`Acme::certificate_after_all`] found.
enum AfterAll {
    Issued(String),
    NoCertificate,
    Unknown(String),
}

/// Withdraws challenge records and forgets them in the store once they are gone. A record
/// that cannot be withdrawn now (the DNS server does not answer) stays recorded, and is
/// withdrawn at the next start.
struct Withdrawer {
    store: Store,
    http: Option<http::Tokens>,
    dns: Option<Arc<dns::DnsValidator>>,
}

impl Withdrawer {
    async fn withdraw_all(&self, records: Vec<ChallengeRecord>) {
        // A record another order holds too (a CA reusing an authorization for two orders)
        // stays published for it: only this order's row goes.
        let stored = self.store.challenge_records().await.unwrap_or_default();
        for record in records {
            let shared = stored.iter().any(|(other, _)| {
                other.kind == record.kind
                    && other.name == record.name
                    && other.value == record.value
                    && (other.certificate != record.certificate
                        || other.order_url != record.order_url)
            });
            if (shared || self.withdraw(&record).await)
                && let Err(err) = self.store.set_challenge_record(&record, false).await
            {
                warn!(name = %record.name, error = %err, "could not forget a withdrawn challenge record; it is withdrawn again at the next start");
            }
        }
    }

    /// Whether `record` is gone; a failure is logged and the record stays recorded, to be
    /// withdrawn at the next start (a stale record is harmless meanwhile, and the order's
    /// outcome matters more).
    async fn withdraw(&self, record: &ChallengeRecord) -> bool {
        match (record.kind, &self.http, &self.dns) {
            (ChallengeRecordKind::Token, Some(tokens), _) => match tokens.remove(&record.name) {
                Ok(()) => true,
                Err(err) => {
                    warn!(token = %record.name, error = %err, "could not remove an HTTP-01 challenge file; it is tried again at the next start");
                    false
                }
            },
            (ChallengeRecordKind::Txt, _, Some(validator)) => {
                match validator.withdraw(&record.name, &record.value).await {
                    Ok(()) => true,
                    Err(err) => {
                        warn!(name = %record.name, error = %err, "could not withdraw a DNS-01 TXT record; it is tried again at the next start");
                        false
                    }
                }
            }
            (kind, _, _) => {
                warn!(name = %record.name, kind = kind.as_str(), "a challenge record is left from a validation method no longer configured; withdraw it by hand (it stays listed until the method is configured again)");
                false
            }
        }
    }
}

/// Retrying, within one attempt, the requests that failed without saying anything about the
/// order: a badNonce past instant-acme's own three tries, a lost connection, a 5xx. At 40 %
/// badNonce a request fails all three of instant-acme's tries about 6 % of the time; ending
/// the attempt there would leave the CA validating challenges for an order nobody follows.
/// The budget is small (five retries, waiting 30 s in all unless the CA asks for up to a minute
/// more) so that a CA that is really down ends the attempt soon, and the scheduler's short
/// ladder takes over.
struct Conversation<'a> {
    runtime: &'a IssuerRuntime,
    stopping: &'a CancellationToken,
    retries: usize,
}

/// The waits between the tries of one attempt.
const CONVERSATION_RETRIES: [Duration; 5] = [
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
    Duration::from_secs(8),
    Duration::from_secs(15),
];

/// A Retry-After up to this long is waited for within the attempt; a longer one ends it.
const RETRY_AFTER_WITHIN_ATTEMPT: Duration = Duration::from_secs(60);

impl<'a> Conversation<'a> {
    fn new(runtime: &'a IssuerRuntime, stopping: &'a CancellationToken) -> Self {
        Self {
            runtime,
            stopping,
            retries: 0,
        }
    }

    /// Whether to try again after `err`; if so, waits first (the CA's Retry-After when it
    /// gave a short one, else the next step of [`CONVERSATION_RETRIES`]).
    async fn again(&mut self, err: &instant_acme::Error) -> bool {
        let Some(step) = CONVERSATION_RETRIES.get(self.retries) else {
            return false;
        };
        if !retriable(err) {
            return false;
        }
        if self.stopping.is_cancelled() {
            debug!(issuer = %self.runtime.config.name, "stopping: the ACME request is not retried");
            return false;
        }
        let wait = match self.runtime.backoff.blocked_until() {
            Some(until) => match until.duration_since(SystemTime::now()) {
                Ok(wait) if wait > RETRY_AFTER_WITHIN_ATTEMPT => return false,
                Ok(wait) => wait,
                Err(_) => *step,
            },
            None => *step,
        };
        self.retries += 1;
        debug!(issuer = %self.runtime.config.name, error = %err, retry = self.retries, wait_ms = wait.as_millis() as u64, "retrying an ACME request");
        tokio::select! {
            () = tokio::time::sleep(wait) => true,
            () = self.stopping.cancelled() => {
                debug!(issuer = %self.runtime.config.name, "stopping: the ACME request is not retried");
                false
            }
        }
    }

    /// `request`, tried again while [`Conversation::again`] says so.
    async fn retry<T, F, Fut>(&mut self, request: F) -> Result<T, instant_acme::Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, instant_acme::Error>>,
    {
        self.retry_if(|_| true, request).await
    }

    /// [`Conversation::retry`] for a request that may be sent again only after an error
    /// `resend` accepts.
    async fn retry_if<T, F, Fut>(
        &mut self,
        resend: fn(&instant_acme::Error) -> bool,
        mut request: F,
    ) -> Result<T, instant_acme::Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, instant_acme::Error>>,
    {
        loop {
            match request().await {
                Err(err) if resend(&err) && self.again(&err).await => {}
                other => return other,
            }
        }
    }
}

/// A failed request worth sending again soon: one the CA refused for its nonce or could not
/// answer (a 5xx, a lost connection, a body that is not JSON). Not a rate limit (those last
/// minutes to hours: the scheduler honours them), a poll that timed out (the order is slow,
/// not the conversation; the next attempt looks again) nor an error whose cause is unknown.
fn retriable(err: &instant_acme::Error) -> bool {
    match err {
        instant_acme::Error::Api(_) => transient(err) && !rate_limited(err),
        instant_acme::Error::Http(_)
        | instant_acme::Error::Hyper(_)
        | instant_acme::Error::Json(_) => true,
        _ => false,
    }
}

fn bad_nonce(err: &instant_acme::Error) -> bool {
    matches!(err, instant_acme::Error::Api(problem)
        if problem.r#type.as_deref() == Some("urn:ietf:params:acme:error:badNonce"))
}

fn rate_limited(err: &instant_acme::Error) -> bool {
    matches!(err, instant_acme::Error::Api(problem)
        if problem.r#type.as_deref() == Some("urn:ietf:params:acme:error:rateLimited"))
}

/// The TXT record answering `challenge` for `base`: its name in the validation zone and value.
fn txt_record(
    validator: &dns::DnsValidator,
    base: &str,
    challenge: &instant_acme::ChallengeHandle<'_>,
) -> (String, String) {
    let name = format!("{}.{}", label(base), validator.zone());
    (name, challenge.key_authorization().dns_value())
}

/// How often the CA's renewal window is checked, whatever its Retry-After says.
/// The ARI identifier of a certificate: its authority key identifier and serial (RFC 9773 §4.1).
fn certificate_id(cert_pem: &str) -> Result<CertificateIdentifier<'static>, AcmeError> {
    let der = crate::pem::certificates(cert_pem)
        .into_iter()
        .next()
        .ok_or_else(|| AcmeError::Internal("no certificate to identify".into()))?;
    let der = rustls_pki_types::CertificateDer::from(der);
    CertificateIdentifier::try_from(&der)
        .map(CertificateIdentifier::into_owned)
        .map_err(AcmeError::Internal)
}

fn setup(issuer: &AcmeIssuer, message: &str) -> AcmeError {
    AcmeError::Config {
        issuer: issuer.name.clone(),
        message: message.to_owned(),
    }
}

fn ca_fault(issuer: &AcmeIssuer, message: &str) -> AcmeError {
    AcmeError::CaFault {
        issuer: issuer.name.clone(),
        message: message.to_owned(),
    }
}

/// An account builder whose HTTPS client is [`http_client`].
fn builder(runtime: &IssuerRuntime) -> Result<instant_acme::AccountBuilder, AcmeError> {
    Ok(Account::builder_with_http(http_client(runtime)?))
}

/// Stored account credentials (instant-acme's serialized form).
fn parse_credentials(issuer: &str, json: &[u8]) -> Result<AccountCredentials, AcmeError> {
    serde_json::from_slice(json)
        .map_err(|e| AcmeError::Internal(format!("stored account of {issuer}: {e}")))
}

/// The account key (PKCS#8) inside stored credentials.
fn private_key(issuer: &str, json: &[u8]) -> Result<Zeroizing<Vec<u8>>, AcmeError> {
    let credentials = parse_credentials(issuer, json)?;
    Ok(Zeroizing::new(
        credentials.private_key().secret_pkcs8_der().to_vec(),
    ))
}

/// An HTTPS client to the issuer's CA that trusts `trusted-roots` (else the platform's roots)
/// and reports the CA's Retry-After to the issuer's backoff.
fn http_client(runtime: &IssuerRuntime) -> Result<Box<dyn instant_acme::HttpClient>, AcmeError> {
    let issuer = &runtime.config;
    let roots = match &issuer.trusted_roots {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| setup(issuer, &format!("trusted-roots {}: {e}", path.display())))?,
        ),
        None => None,
    };
    let http = client::build(roots.as_deref(), runtime.backoff.clone()).map_err(|e| {
        let source = issuer
            .trusted_roots
            .as_ref()
            .map(|p| format!(" ({})", p.display()))
            .unwrap_or_default();
        setup(issuer, &format!("HTTPS client{source}: {e}"))
    })?;
    Ok(http)
}

fn eab_key(
    issuer: &AcmeIssuer,
    kid: &str,
    file: &std::path::Path,
) -> Result<ExternalAccountKey, AcmeError> {
    use base64::Engine;
    let text =
        crate::secret_file::read(file).map_err(|e| setup(issuer, &format!("eab-hmac-file {e}")))?;
    let not_base64 = || {
        setup(
            issuer,
            &format!("eab-hmac-file {}: not base64url", file.display()),
        )
    };
    let trimmed = std::str::from_utf8(&text).map_err(|_| not_base64())?.trim();
    let key = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(trimmed.trim_end_matches('='))
        .or_else(|_| base64::engine::general_purpose::STANDARD.decode(trimmed))
        .map(Zeroizing::new)
        .map_err(|_| not_base64())?;
    Ok(ExternalAccountKey::new(kid.to_owned(), &key))
}

/// Why an order ended badly: the order's own problem, or the first failed authorization's.
async fn order_failure(
    issuer: &AcmeIssuer,
    order: &mut instant_acme::Order,
    status: OrderStatus,
) -> AcmeError {
    if let Some(problem) = &order.state().error {
        return AcmeError::Order {
            issuer: issuer.name.clone(),
            status: format!("{status:?}"),
            detail: problem.to_string(),
        };
    }
    let mut authorizations = order.authorizations();
    while let Some(Ok(authz)) = authorizations.next().await {
        if authz.status == AuthorizationStatus::Invalid {
            let detail = authz
                .challenges
                .iter()
                .find_map(|c| c.error.as_ref().map(ToString::to_string))
                .unwrap_or_else(|| "authorization invalid".into());
            return AcmeError::Validation {
                issuer: issuer.name.clone(),
                identifier: authz.identifier().to_string(),
                detail,
            };
        }
    }
    AcmeError::Order {
        issuer: issuer.name.clone(),
        status: format!("{status:?}"),
        detail: "no detail from the CA".into(),
    }
}

/// A CSR for `domains` signed with `key`.
fn csr_der(key: &[u8], domains: &[Domain]) -> Result<Vec<u8>, AcmeError> {
    let pair = keys::load_pkcs8(key).map_err(|e| AcmeError::Internal(format!("CSR: {e}")))?;
    let names: Vec<String> = domains.iter().map(ToString::to_string).collect();
    let mut params = rcgen::CertificateParams::new(names)
        .map_err(|e| AcmeError::Internal(format!("CSR: {e}")))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params
        .serialize_request(&pair)
        .map_err(|e| AcmeError::Internal(format!("CSR: {e}")))?;
    Ok(csr.der().to_vec())
}

/// Splits the CA's PEM chain into the leaf and its issuers, after checking that it is what
/// `cert`'s order asked for: the leaf names exactly the requested names and certifies the
/// order's key, and each certificate is signed by the next. A CA (or a proxy in front of it)
/// answering anything else fails the attempt with the reason, before anything is stored: a
/// certificate that does not match its key would be deployed broken.
fn accept_chain(
    issuer: &AcmeIssuer,
    cert: &Certificate,
    chain: &str,
    key: Zeroizing<Vec<u8>>,
) -> Result<Issued, AcmeError> {
    let ders = crate::pem::certificates(chain);
    let Some((leaf, rest)) = ders.split_first() else {
        return Err(ca_fault(issuer, "no certificate"));
    };
    let info = crate::x509::inspect(leaf)
        .map_err(|e| ca_fault(issuer, &format!("a certificate that {e}")))?;
    check_names(issuer, &cert.domains, &info.names)?;
    let spki = rcgen::PublicKeyData::subject_public_key_info(
        &keys::load_pkcs8(&key)
            .map_err(|e| AcmeError::Internal(format!("the order's key: {e}")))?,
    );
    if info.spki != spki {
        return Err(ca_fault(
            issuer,
            &format!(
                "a certificate (serial {}) for another public key than the order's",
                info.serial
            ),
        ));
    }
    crate::import::check_links(leaf, rest)
        .map_err(|e| ca_fault(issuer, &format!("a certificate whose {e}")))?;
    let certificate = crate::ca::Issued {
        cert_pem: crate::pem::encode("CERTIFICATE", leaf),
        chain_pem: rest
            .iter()
            .map(|d| crate::pem::encode("CERTIFICATE", d))
            .collect(),
        serial: info.serial,
        not_before: info.not_before,
        not_after: info.not_after,
    };
    Ok(Issued { certificate, key })
}

/// The names a certificate carries must be the ones ordered, in any order.
fn check_names(issuer: &AcmeIssuer, wanted: &[Domain], got: &[Domain]) -> Result<(), AcmeError> {
    let set = |names: &[Domain]| -> std::collections::BTreeSet<String> {
        names.iter().map(ToString::to_string).collect()
    };
    let (wanted, got) = (set(wanted), set(got));
    if wanted == got {
        return Ok(());
    }
    let list = |names: &std::collections::BTreeSet<String>| {
        names.iter().cloned().collect::<Vec<_>>().join(", ")
    };
    Err(ca_fault(
        issuer,
        &format!(
            "a certificate for [{}] instead of the names ordered [{}]",
            list(&got),
            list(&wanted)
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(kind: &str) -> instant_acme::Error {
        let json =
            format!(r#"{{"type":"urn:ietf:params:acme:error:{kind}","detail":"x","status":400}}"#);
        instant_acme::Error::Api(serde_json::from_str(&json).unwrap())
    }

    #[test]
    fn only_failures_of_the_conversation_keep_the_order() {
        for kind in ["badNonce", "rateLimited", "serverInternal"] {
            assert!(transient(&problem(kind)), "{kind}");
        }
        for kind in [
            "malformed",
            "unauthorized",
            "orderNotReady",
            "rejectedIdentifier",
        ] {
            assert!(!transient(&problem(kind)), "{kind}");
        }
        assert!(transient(&instant_acme::Error::Timeout(None)));
        let json = serde_json::from_str::<serde_json::Value>("<html>").unwrap_err();
        assert!(
            transient(&instant_acme::Error::Json(json)),
            "a proxy's error page"
        );
        let gateway = r#"{"type":"about:blank","detail":"x","status":503}"#;
        assert!(transient(&instant_acme::Error::Api(
            serde_json::from_str(gateway).unwrap()
        )));
        assert!(!transient(&instant_acme::Error::Crypto));

        let protocol = |source| AcmeError::Protocol {
            issuer: "ca".into(),
            source,
        };
        assert!(protocol(problem("badNonce")).is_transient());
        assert!(!protocol(problem("unauthorized")).is_transient());
        let failed = AcmeError::Order {
            issuer: "ca".into(),
            status: "Invalid".into(),
            detail: "x".into(),
        };
        assert!(
            !failed.is_transient(),
            "an invalid order is not taken up again"
        );
    }
}
