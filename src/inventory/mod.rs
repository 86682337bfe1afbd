//! The inventory: every operation on certificates and CAs, between the API and the store.
//!
//! Each operation checks its input, does the cryptography (key generation and signing run on
//! the blocking pool when they can take long), and hands one complete change to the store,
//! which commits it together with its event. Nothing is stored until everything succeeded, so a
//! failed request leaves no trace.
//!
//! Signing CAs are kept decrypted in memory (`authorities`): decrypting a CA key for every
//! issuance would double the cost of `sign`. They are loaded at start and when a CA is created.

mod cas;
mod certificates;
mod error;
mod explain;
mod renewal;
pub mod requests;
pub mod views;

pub use error::{Internal, InventoryError, Missing, Operation};
pub use requests::{
    CaRequest, CertificateRequest, ExportRequest, ImportRequest, InstallCaRequest, Name,
    Passphrase, SignRequest, Source, TagChange, Tags,
};
pub use views::{AcmeIssuerView, CaDetails, CertificatePem, Explanation, Signed};

use cas::Slot;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, RwLock};

use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::acme::Acme;
use crate::ca::{self, Authority, CaError, Issued, LeafRequest};
use crate::config::{Config, Defaults};
use crate::events::{self, Action};
use crate::export::{self, Exported};
use crate::import;
use crate::lock;
use crate::metrics::Metrics;
use crate::model::{
    CaInfo, CaSpec, CaState, Certificate, CertificateId, DaysBeforeExpiry, Domain, KeyAlgorithm,
    Origin, RevocationReason, Status, ValidationMethod, WindowSpec, rfc3339,
};
use crate::pki::BaseUrl;
use crate::policy::{self, Lifetime, RenewalInfo};
use crate::schedule::{Schedule, Window};
use crate::span::Span;
use crate::store::{
    Deadlines, InstalledCa, ListFilter, NewCa, NewCertificate, NewVersion, Revocation, Store,
    StoreError, StoredVersion, VersionChange,
};
use crate::validation::http::Tokens;
use crate::wake::Wake;

/// How long a CRL is valid; it is re-signed when less than half of this remains (and at every
/// revocation), so whoever fetches one gets at least 3.5 days before its nextUpdate. A week is
/// what public CAs use for subscriber CRLs (the CA/Browser Forum allows at most 10 days).
const CRL_VALIDITY: Span = Span::from_days(7);

type Result<T, E = InventoryError> = std::result::Result<T, E>;

pub struct Inventory {
    store: Store,
    authorities: RwLock<HashMap<String, Slot>>,
    /// Reloadable with SIGHUP.
    settings: RwLock<Settings>,
    /// Wakes the scheduler when deadlines may have moved.
    wake: Arc<Wake>,
    metrics: Arc<Metrics>,
    /// ACME issuers, when any are configured.
    acme: Option<Arc<Acme>>,
    /// Certificates with an ACME issuance running (from the scheduler or `renew`): one at a
    /// time per certificate, from the order to the stored version, so two attempts never
    /// take up one order (or make two).
    issuing: std::sync::Mutex<HashSet<CertificateId>>,
    /// Key derivations (decrypting imported keys) running at once.
    kdf: tokio::sync::Semaphore,
    /// `[pki] base-url`: where the CAs publish their CRLs and certificates, which they say in
    /// what they sign.
    published: Option<BaseUrl>,
}

/// How many imported keys are decrypted at once.
const KDF_CONCURRENCY: usize = 2;

/// The configuration the inventory works with, replaced on reload.
#[derive(Clone, Debug)]
pub struct Settings {
    pub defaults: Defaults,
    pub renew_before: Span,
    pub window: Option<Window>,
    /// The account-wide expiry-event threshold: the stored setting when one was made through
    /// the API, else the config's `events.days-before-expiry`.
    pub days_before_expiry: DaysBeforeExpiry,
    pub daily_check: Schedule,
    /// The configured event sinks, by name.
    pub sinks: Vec<String>,
    pub metrics_per_certificate: bool,
    /// Renewals running at once.
    pub concurrency: usize,
    /// Events older than this are pruned once every sink has them.
    pub retention: Span,
}

impl Settings {
    /// Everything that decides a healthy certificate's renewal time, as text.
    fn renewal_fingerprint(&self) -> String {
        let window = self.window.as_ref().map_or_else(String::new, |w| {
            format!(
                "{} ({}) for {}s",
                w.schedule.as_str(),
                w.schedule.time_zone(),
                w.duration.as_secs()
            )
        });
        format!("renew-before {}; window {window}", self.renew_before)
    }

    pub fn from_config(config: &Config) -> Self {
        Self {
            defaults: config.defaults.clone(),
            renew_before: config.renewal.renew_before,
            window: config.renewal.window.clone(),
            days_before_expiry: config.events.days_before_expiry,
            daily_check: config.events.daily_check.clone(),
            sinks: config.events.sink_names(),
            metrics_per_certificate: config.metrics_per_certificate,
            concurrency: config.renewal.concurrency,
            retention: config.events.retention,
        }
    }
}

/// The account setting key for the expiry-event threshold.
const DAYS_BEFORE_EXPIRY: &str = "days-before-expiry";
/// The setting recording which renewal policy the stored deadlines were planned under.
const RENEWAL_POLICY: &str = "renewal-policy";

impl Inventory {
    pub fn new(store: Store, settings: Settings, acme: Option<Arc<Acme>>) -> Self {
        Self {
            store,
            authorities: RwLock::new(HashMap::new()),
            settings: RwLock::new(settings),
            wake: Arc::new(Wake::default()),
            metrics: Arc::new(Metrics::default()),
            acme,
            issuing: std::sync::Mutex::new(HashSet::new()),
            kdf: tokio::sync::Semaphore::new(KDF_CONCURRENCY),
            published: None,
        }
    }

    /// This inventory, its CAs publishing under `base` (before [`Inventory::start`] loads them).
    pub fn publishing(mut self, base: Option<BaseUrl>) -> Self {
        self.published = base;
        self
    }

    /// The HTTP-01 tokens the daemon's responder serves, when ACME uses a listener.
    pub fn http_tokens(&self) -> Option<Tokens> {
        self.acme.as_ref().and_then(|a| a.http_tokens())
    }

    /// Waits for background work that outlives requests (challenge records being withdrawn).
    pub async fn drain(&self) {
        if let Some(acme) = &self.acme {
            acme.drain().await;
        }
    }

    fn acme(&self) -> Result<&Arc<Acme>> {
        self.acme
            .as_ref()
            .ok_or_else(|| InventoryError::invalid("issuer", "no [[acme]] issuer is configured"))
    }

    /// The configured ACME issuers and their accounts.
    pub async fn acme_accounts(&self) -> Result<Vec<AcmeIssuerView>> {
        let Some(acme) = &self.acme else {
            return Ok(Vec::new());
        };
        Ok(acme
            .accounts()
            .await?
            .into_iter()
            .map(|(issuer, account)| AcmeIssuerView { issuer, account })
            .collect())
    }

    /// Replaces an ACME issuer's account key at the CA.
    pub async fn acme_rollover_key(&self, issuer: &str) -> Result<crate::store::AcmeAccount> {
        Ok(self.acme()?.rollover_key(issuer).await?)
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The notifier the scheduler waits on.
    pub fn wake(&self) -> Arc<Wake> {
        self.wake.clone()
    }

    fn changed(&self) {
        self.wake.changed();
    }

    /// Stores a new certificate and tells the scheduler about its deadlines.
    async fn insert(&self, new: NewCertificate) -> Result<Certificate> {
        let mut stored = self.insert_all(vec![new]).await?;
        stored
            .pop()
            .ok_or(InventoryError::Internal(Internal::NothingStored))
    }

    /// Stores new certificates in one transaction (all or none) and tells the scheduler
    /// about their deadlines.
    async fn insert_all(&self, news: Vec<NewCertificate>) -> Result<Vec<Certificate>, StoreError> {
        let deadlines: Vec<_> = news.iter().map(NewCertificate::deadlines).collect();
        let stored = self.store.insert_certificates(news).await?;
        for Deadlines { action, expiry } in deadlines {
            self.wake.deadline(action);
            self.wake.deadline(expiry);
        }
        Ok(stored)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Applies a reloaded configuration. When the renewal policy changed, every scheduled
    /// renewal is planned again under it. The account's stored days-before-expiry (set through
    /// the API) keeps winning over the file.
    pub async fn apply(&self, mut settings: Settings) -> Result<()> {
        if let Some(days) = self.stored_days_before_expiry().await? {
            settings.days_before_expiry = days;
        }
        // The policy the stored deadlines were planned under is recorded with them, so a change
        // made between two runs (edit the file, restart) is noticed as well as one on SIGHUP.
        let fingerprint = settings.renewal_fingerprint();
        let planned_under = self.store.setting(RENEWAL_POLICY).await?;
        *lock::write(&self.settings) = settings;
        if planned_under.as_deref() != Some(fingerprint.as_str()) {
            let n = self.replan(OffsetDateTime::now_utc()).await?;
            self.store.set_setting(RENEWAL_POLICY, &fingerprint).await?;
            if planned_under.is_some() {
                tracing::info!(certificates = n, policy = %fingerprint, "renewal policy changed: renewals planned again");
            }
        }
        self.changed();
        Ok(())
    }

    /// The settings in force (replaced on reload).
    pub fn settings(&self) -> Settings {
        lock::read(&self.settings).clone()
    }

    fn defaults(&self) -> Defaults {
        self.settings().defaults
    }

    /// What `/metrics` shows, read from the store.
    pub async fn metrics_snapshot(&self) -> Result<crate::metrics::Snapshot> {
        let now = OffsetDateTime::now_utc();
        let certificates = if self.settings().metrics_per_certificate {
            Some(self.store.metrics_rows().await?)
        } else {
            None
        };
        Ok(crate::metrics::Snapshot {
            certificates,
            summary: self.store.metrics_summary(now).await?,
            events_total: self.store.last_event_seq().await?,
            outbox: self.outbox_depths().await?,
        })
    }

    /// Events waiting for each configured sink.
    pub async fn outbox_depths(&self) -> Result<Vec<(String, i64)>> {
        let mut depths = Vec::new();
        for sink in self.settings().sinks {
            let depth = self.store.outbox_depth(&sink).await?;
            depths.push((sink, depth));
        }
        Ok(depths)
    }

    /// The account-wide expiry-event threshold in days.
    pub fn days_before_expiry(&self) -> DaysBeforeExpiry {
        self.settings().days_before_expiry
    }

    async fn stored_days_before_expiry(&self) -> Result<Option<DaysBeforeExpiry>> {
        let Some(text) = self.store.setting(DAYS_BEFORE_EXPIRY).await? else {
            return Ok(None);
        };
        Ok(text.parse().ok().map(DaysBeforeExpiry::from_stored))
    }

    /// `certkeeper config set days-before-expiry N` (ACM's account configuration).
    pub async fn set_days_before_expiry(&self, days: DaysBeforeExpiry) -> Result<()> {
        self.store
            .set_setting(DAYS_BEFORE_EXPIRY, &days.to_string())
            .await?;
        lock::write(&self.settings).days_before_expiry = days;
        Ok(())
    }

    /// How a certificate is looked after, for its expiry events: watched, or renewed (`renewal`
    /// is `Some`) under its own or the configured renew-before, standing where it does at `now`.
    pub fn care(
        &self,
        renewal: Option<policy::RenewalState>,
        renew_before: Option<Span>,
        lifetime: Lifetime,
        now: OffsetDateTime,
    ) -> policy::Care {
        let Some(renewal) = renewal else {
            return policy::Care::Watched;
        };
        let configured = renew_before.unwrap_or(self.settings().renew_before).time();
        policy::Care::Renewed {
            renew_before: policy::effective_renew_before(configured, lifetime.length()).0,
            standing: policy::standing(lifetime, renewal, now),
        }
    }

    pub async fn rotate_master_key(&self) -> Result<(u64, BTreeMap<String, u64>)> {
        let rewrapped = self.store.rotate_master_key().await?;
        Ok((rewrapped, self.store.key_usage().await?))
    }
}

/// Runs CPU-heavy work (key generation, KDFs) on the blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    Ok(tokio::task::spawn_blocking(f).await?)
}
