//! The inventory: every operation on certificates and CAs, between the API and the store.
//!
//! Each operation checks its input, does the cryptography (key generation and signing run on
//! the blocking pool when they can take long), and hands one complete change to the store,
//! which commits it together with its event. Nothing is stored until everything succeeded, so a
//! failed request leaves no trace.
//!
//! Signing CAs are kept decrypted in memory (`authorities`): decrypting a CA key for every
//! issuance would double the cost of `sign`. They are loaded at start and when a CA is created.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use tokio::sync::Notify;

use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::api::types::{
    CaDetails, CertificatePem, CreateCa, Explanation, ExportRequest, ImportCertificate, InstallCa,
    RequestCertificate, SignRequest, Signed, TagsRequest, file_bytes,
};
use crate::ca::{self, Authority, CaError, Issued, LeafRequest};
use crate::config::{Config, Defaults};
use crate::events::{self, Action};
use crate::export::{self, ExportError, Exported};
use crate::import::{self, ImportError};
use crate::metrics::Metrics;
use crate::model::{
    CaInfo, CaSpec, CaState, Certificate, CertificateId, Domain, KeyAlgorithm, Origin,
    RevocationReason, Status, WindowSpec, check_name, check_tag, parse_domains, rfc3339,
};
use crate::policy::{self, Lifetime};
use crate::schedule::{Schedule, Window};
use crate::span::Span;
use crate::store::{
    InstalledCa, ListFilter, NewCa, NewCertificate, NewVersion, Revocation, Store, StoreError,
    VersionChange,
};

/// How long a CRL is valid; it is re-signed when less than half of this remains.
const CRL_VALIDITY: Span = Span::from_days(7);

#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Import(#[from] ImportError),
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error(transparent)]
    Export(#[from] ExportError),
    #[error(transparent)]
    Store(StoreError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for InventoryError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NameTaken(_) | StoreError::Conflict(_) => {
                InventoryError::Conflict(err.to_string())
            }
            StoreError::NotFound(what) => InventoryError::NotFound(what),
            other => InventoryError::Store(other),
        }
    }
}

impl InventoryError {
    fn invalid(err: impl std::fmt::Display) -> Self {
        InventoryError::Invalid(err.to_string())
    }
}

type Result<T, E = InventoryError> = std::result::Result<T, E>;

pub struct Inventory {
    store: Store,
    authorities: RwLock<HashMap<String, Slot>>,
    /// Reloadable with SIGHUP.
    settings: RwLock<Settings>,
    /// Wakes the lifecycle task when deadlines may have moved.
    wake: Arc<Notify>,
    metrics: Arc<Metrics>,
}

/// A CA as the inventory holds it in memory.
enum Slot {
    /// Ready to sign: key decrypted, certificate parsed.
    Active(Arc<Authority>),
    Disabled,
    /// An external CA waiting for `ca install`.
    Pending,
}

/// The configuration the inventory works with, replaced on reload.
#[derive(Clone, Debug)]
pub struct Settings {
    pub defaults: Defaults,
    pub renew_before: Span,
    pub window: Option<Window>,
    /// The account-wide expiry-event threshold: the stored setting when one was made through
    /// the API, else the config's `events.days-before-expiry`.
    pub days_before_expiry: u32,
    pub daily_check: Schedule,
    /// The configured event sinks, by name.
    pub sinks: Vec<String>,
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

    pub fn from_config(config: &Config) -> Settings {
        Settings {
            defaults: config.defaults.clone(),
            renew_before: config.renewal.renew_before,
            window: config.renewal.window.clone(),
            days_before_expiry: config.events.days_before_expiry,
            daily_check: config.events.daily_check.clone(),
            sinks: config.events.sink_names(),
        }
    }
}

/// The account setting key for the expiry-event threshold.
const DAYS_BEFORE_EXPIRY: &str = "days-before-expiry";
/// The setting recording which renewal policy the stored deadlines were planned under.
const RENEWAL_POLICY: &str = "renewal-policy";

impl Inventory {
    pub fn new(store: Store, settings: Settings) -> Inventory {
        Inventory {
            store,
            authorities: RwLock::new(HashMap::new()),
            settings: RwLock::new(settings),
            wake: Arc::new(Notify::new()),
            metrics: Arc::new(Metrics::default()),
        }
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The notifier the lifecycle task waits on.
    pub fn wake(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    fn changed(&self) {
        self.wake.notify_one();
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
        *self.settings.write().unwrap_or_else(|p| p.into_inner()) = settings;
        if planned_under.as_deref() != Some(fingerprint.as_str()) {
            let n = self.replan().await?;
            self.store.set_setting(RENEWAL_POLICY, &fingerprint).await?;
            if planned_under.is_some() {
                tracing::info!(certificates = n, policy = %fingerprint, "renewal policy changed: renewals planned again");
            }
        }
        self.changed();
        Ok(())
    }

    fn settings(&self) -> Settings {
        self.settings
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn defaults(&self) -> Defaults {
        self.settings().defaults
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
    pub fn days_before_expiry(&self) -> u32 {
        self.settings().days_before_expiry
    }

    async fn stored_days_before_expiry(&self) -> Result<Option<u32>> {
        let Some(text) = self.store.setting(DAYS_BEFORE_EXPIRY).await? else {
            return Ok(None);
        };
        Ok(text.parse().ok())
    }

    /// `certkeeper config set days-before-expiry N` (ACM's account configuration).
    pub async fn set_days_before_expiry(&self, days: u32) -> Result<()> {
        if !(1..=365).contains(&days) {
            return Err(InventoryError::Invalid(format!(
                "days-before-expiry {days} is outside 1..=365"
            )));
        }
        self.store
            .set_setting(DAYS_BEFORE_EXPIRY, &days.to_string())
            .await?;
        self.settings
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .days_before_expiry = days;
        Ok(())
    }

    /// How a certificate is looked after, for its expiry-event threshold.
    pub fn care(
        &self,
        renewed: bool,
        renew_before: Option<Span>,
        lifetime: Lifetime,
    ) -> policy::Care {
        if !renewed {
            return policy::Care::Watched;
        }
        let configured = renew_before.unwrap_or(self.settings().renew_before).time();
        policy::Care::Renewed(policy::effective_renew_before(configured, lifetime.length()).0)
    }

    /// When a certificate we renew should next renew, under the current policy.
    fn plan(
        &self,
        id: &CertificateId,
        lifetime: Lifetime,
        renew_before: Option<Span>,
        window: Option<&WindowSpec>,
        now: OffsetDateTime,
    ) -> OffsetDateTime {
        let settings = self.settings();
        let renew_before = renew_before.unwrap_or(settings.renew_before).time();
        // A stored window always parsed when it was set; if a later version of the cron rules
        // refused it, fall back to the global window rather than never renewing.
        let own = window.and_then(|w| w.window().ok());
        policy::renewal(
            id.as_str(),
            lifetime,
            renew_before,
            own.as_ref().or(settings.window.as_ref()),
            now,
        )
        .at
    }

    /// Plans every scheduled, healthy renewal again (after a policy change). Failing ones keep
    /// their backoff; ones being renewed keep their lease.
    async fn replan(&self) -> Result<usize> {
        let now = OffsetDateTime::now_utc();
        let planned = self.store.replannable().await?;
        let items: Vec<_> = planned
            .into_iter()
            .map(|r| {
                let at = self.plan(&r.id, r.lifetime, r.renew_before, r.window.as_ref(), now);
                (r.id, Some(at))
            })
            .collect();
        Ok(self.store.set_next_action(items).await?)
    }

    /// Creates the configured CAs that do not exist yet (in order, so parents come first), then
    /// loads every active CA for signing. Returns the names of the CAs it created.
    pub async fn start(&self, configured: &[CaSpec]) -> Result<Vec<String>> {
        let mut created = Vec::new();
        for spec in configured {
            if self.store.ca(&spec.name).await?.is_none() {
                self.load_authorities().await?;
                let mut spec = spec.clone();
                if spec.parent.is_some() {
                    spec.validity = self.clamp_to_parent(&spec, None)?;
                }
                self.create_ca_from_spec(spec.clone()).await?;
                created.push(spec.name);
            }
        }
        self.load_authorities().await?;
        Ok(created)
    }

    async fn load_authorities(&self) -> Result<()> {
        let mut loaded = HashMap::new();
        for stored in self.store.cas().await? {
            let cert_pem = match (&stored.cert_pem, stored.info.state) {
                (Some(pem), CaState::Active) => pem,
                // A disabled CA's key is not even decrypted.
                (_, CaState::Disabled) => {
                    loaded.insert(stored.info.name.clone(), Slot::Disabled);
                    continue;
                }
                _ => {
                    loaded.insert(stored.info.name.clone(), Slot::Pending);
                    continue;
                }
            };
            let key = self.store.open_ca_key(&stored)?;
            let info = &stored.info;
            let authority = Authority::load(
                &info.name,
                cert_pem,
                &stored.chain_pem,
                &key,
                info.permitted_dns.clone(),
                info.path_length,
            )?;
            loaded.insert(info.name.clone(), Slot::Active(Arc::new(authority)));
        }
        *self.authorities.write().unwrap_or_else(|p| p.into_inner()) = loaded;
        Ok(())
    }

    fn authority(&self, name: &str) -> Result<Arc<Authority>> {
        let map = self.authorities.read().unwrap_or_else(|p| p.into_inner());
        match map.get(name) {
            Some(Slot::Active(authority)) => Ok(authority.clone()),
            Some(Slot::Disabled) => Err(InventoryError::Conflict(format!(
                "CA {name:?} is disabled (`certkeeper ca enable {name}` lets it issue again)"
            ))),
            Some(Slot::Pending) => Err(InventoryError::Conflict(format!(
                "CA {name:?} is waiting for its certificate (`certkeeper ca install {name}`)"
            ))),
            None => Err(InventoryError::NotFound(format!("CA {name:?}"))),
        }
    }

    // --- certificates ----------------------------------------------------------------------

    pub async fn request(&self, req: RequestCertificate) -> Result<Certificate> {
        let defaults = self.defaults();
        let domains = parse_domains(&req.domains).map_err(InventoryError::invalid)?;
        check_tags(&req.tags)?;
        let maintenance_window =
            window_spec(req.window, req.window_duration, req.window_time_zone)?;
        let name = resolve_name(req.name, &domains)?;
        let ca_name = req.ca.unwrap_or(defaults.ca);
        let authority = self.authority(&ca_name)?;
        let algorithm = req.key_algorithm.unwrap_or(defaults.key_algorithm);
        let validity = req.validity.unwrap_or(defaults.validity);
        let now = OffsetDateTime::now_utc();

        let (issued, key) = {
            let domains = domains.clone();
            blocking(move || -> Result<_> {
                let key = crate::keys::generate(algorithm).map_err(CaError::from)?;
                let request = LeafRequest {
                    domains: &domains,
                    validity,
                    client_auth: req.client_auth,
                };
                let issued = authority.issue(&request, &key, now)?;
                Ok((issued, Zeroizing::new(key.serialize_der())))
            })
            .await??
        };
        let issuance = PrivateIssuance {
            name,
            ca: ca_name,
            domains,
            key_algorithm: algorithm,
            validity,
            client_auth: req.client_auth,
            tags: req.tags,
            renew_before: req.renew_before,
            days_before_expiry: req.days_before_expiry,
            maintenance_window,
        };
        let mut new = issuance.record(issued, Some(key), now);
        let lifetime = Lifetime {
            not_before: new.version.not_before,
            not_after: new.version.not_after,
        };
        new.next_action_at = Some(self.plan(
            &new.id,
            lifetime,
            new.renew_before,
            new.maintenance_window.as_ref(),
            now,
        ));
        let cert = self.store.insert_certificate(new).await?;
        self.metrics.issued(cert.origin);
        self.changed();
        Ok(cert)
    }

    /// Issues a certificate for a caller's CSR. The key stays with the caller; the certificate
    /// is recorded like any other (without a key, so it cannot be exported or renewed by us).
    pub async fn sign(&self, req: SignRequest) -> Result<Signed> {
        let defaults = self.defaults();
        check_tags(&req.tags)?;
        let csr = ca::parse_csr(&file_bytes(&req.csr))?;
        let name = resolve_name(req.name, &csr.domains)?;
        let ca_name = req.ca.unwrap_or(defaults.ca);
        let authority = self.authority(&ca_name)?;
        let validity = req.validity.unwrap_or(defaults.validity);
        let now = OffsetDateTime::now_utc();
        let request = LeafRequest {
            domains: &csr.domains,
            validity,
            client_auth: req.client_auth,
        };
        let issued = authority.issue(&request, &csr.public_key, now)?;
        let (cert_pem, chain_pem) = (issued.cert_pem.clone(), issued.chain_pem.clone());
        let issuance = PrivateIssuance {
            name,
            ca: ca_name,
            domains: csr.domains,
            key_algorithm: csr.key_algorithm,
            validity,
            client_auth: req.client_auth,
            tags: req.tags,
            renew_before: None,
            days_before_expiry: req.days_before_expiry,
            maintenance_window: None,
        };
        let new = issuance.record(issued, None, now);
        let certificate = self.store.insert_certificate(new).await?;
        self.metrics.issued(certificate.origin);
        self.changed();
        Ok(Signed {
            certificate,
            certificate_pem: cert_pem,
            chain_pem,
        })
    }

    pub async fn import(&self, req: ImportCertificate) -> Result<Certificate> {
        check_tags(&req.tags)?;
        let now = OffsetDateTime::now_utc();
        let cert_bytes = file_bytes(&req.certificate);
        let key_bytes = Zeroizing::new(file_bytes(&req.private_key));
        let chain_bytes = req.chain.as_deref().map(file_bytes);
        let passphrase = req.passphrase.map(Zeroizing::new);
        let input = import::Input {
            certificate: &cert_bytes,
            private_key: &key_bytes,
            chain: chain_bytes.as_deref(),
            passphrase: passphrase.as_deref().map(String::as_str),
            allow_expired: req.allow_expired,
        };
        // Decrypting a passphrase-protected key runs a deliberately slow KDF.
        let checked = blocking_scoped(|| import::check(&input, now))?;
        let version = NewVersion {
            serial: checked.info.serial.clone(),
            issuer_ca: None,
            not_before: checked.info.not_before,
            not_after: checked.info.not_after,
            cert_pem: checked.cert_pem,
            chain_pem: checked.chain_pem,
            key: Some(checked.key),
        };
        match req.certificate_id {
            Some(target) => {
                self.reimport(
                    &target,
                    version,
                    checked.domains,
                    checked.key_algorithm,
                    now,
                )
                .await
            }
            None => {
                let (name, name_is_default) = resolve_name(req.name, &checked.domains)?;
                let status = if checked.info.not_after < now {
                    Status::Expired
                } else {
                    Status::Issued
                };
                let mut new = NewCertificate {
                    id: CertificateId::generate(),
                    name,
                    name_is_default,
                    origin: Origin::Imported,
                    status,
                    issuer: checked.info.issuer.clone(),
                    domains: checked.domains,
                    key_algorithm: checked.key_algorithm,
                    validity: None,
                    client_auth: false,
                    tags: req.tags,
                    renew_before: None,
                    days_before_expiry: req.days_before_expiry,
                    maintenance_window: None,
                    next_action_at: None,
                    version,
                    event: None,
                };
                new.event = Some(events::available(
                    &new.certificate(now),
                    Action::Import,
                    now,
                ));
                let cert = self.store.insert_certificate(new).await?;
                self.metrics.issued(cert.origin);
                self.changed();
                Ok(cert)
            }
        }
    }

    async fn reimport(
        &self,
        target: &str,
        version: NewVersion,
        domains: Vec<Domain>,
        key_algorithm: KeyAlgorithm,
        now: OffsetDateTime,
    ) -> Result<Certificate> {
        let cert = self.find(target).await?;
        if cert.origin != Origin::Imported {
            return Err(InventoryError::Conflict(format!(
                "certificate {} is {}; only imported certificates can be re-imported",
                cert.id, cert.origin
            )));
        }
        let mut after = cert.clone();
        after.current_version += 1;
        after.serial = version.serial.clone();
        after.not_after = version.not_after;
        after.domains = domains.clone();
        let event = events::available(&after, Action::Reimport, now);
        let status = if version.not_after < now {
            Status::Expired
        } else {
            Status::Issued
        };
        let change = VersionChange {
            version: cert.current_version + 1,
            new: version,
            status,
            event: Some(event),
            names: Some((domains, key_algorithm)),
            next_action_at: None,
        };
        let cert = self.store.add_version(&cert.id, change).await?;
        self.changed();
        Ok(cert)
    }

    /// Issues a new version of a private certificate: new key, same names, same lifetime.
    pub async fn renew(&self, id_or_name: &str) -> Result<Certificate> {
        let cert = self.find(id_or_name).await?;
        if cert.origin != Origin::Private {
            return Err(InventoryError::Conflict(format!(
                "certificate {} is {}; only private certificates are renewed by certkeeper (re-import imported ones)",
                cert.id, cert.origin
            )));
        }
        if cert.status == Status::Revoked {
            return Err(InventoryError::Conflict(format!(
                "certificate {} is revoked",
                cert.id
            )));
        }
        if !cert.versions.first().is_some_and(|v| v.key_held) {
            return Err(InventoryError::Conflict(format!(
                "certificate {} was signed from a CSR; certkeeper does not hold its key: sign a new CSR instead",
                cert.id
            )));
        }
        let authority = self.authority(&cert.issuer)?;
        let validity = cert.validity.unwrap_or(self.defaults().validity);
        let now = OffsetDateTime::now_utc();
        let (issued, key) = {
            let domains = cert.domains.clone();
            let (algorithm, client_auth) = (cert.key_algorithm, cert.client_auth);
            blocking(move || -> Result<_> {
                let key = crate::keys::generate(algorithm).map_err(CaError::from)?;
                let issued = authority.issue(
                    &LeafRequest {
                        domains: &domains,
                        validity,
                        client_auth,
                    },
                    &key,
                    now,
                )?;
                Ok((issued, Zeroizing::new(key.serialize_der())))
            })
            .await??
        };
        let mut after = cert.clone();
        after.current_version += 1;
        after.serial = issued.serial.clone();
        after.not_after = issued.not_after;
        let event = events::available(&after, Action::Renewal, now);
        let version = NewVersion {
            serial: issued.serial,
            issuer_ca: Some(cert.issuer.clone()),
            not_before: issued.not_before,
            not_after: issued.not_after,
            cert_pem: issued.cert_pem,
            chain_pem: issued.chain_pem,
            key: Some(key),
        };
        let lifetime = Lifetime {
            not_before: version.not_before,
            not_after: version.not_after,
        };
        let change = VersionChange {
            version: cert.current_version + 1,
            new: version,
            status: Status::Issued,
            event: Some(event),
            names: None,
            next_action_at: Some(self.plan(
                &cert.id,
                lifetime,
                cert.renew_before,
                cert.maintenance_window.as_ref(),
                now,
            )),
        };
        let cert = self.store.add_version(&cert.id, change).await?;
        self.changed();
        Ok(cert)
    }

    /// Revokes a certificate. Every version signed by one of our CAs goes onto that CA's CRL
    /// (a renewal does not make the earlier keys trustworthy), and the CRL is re-signed.
    pub async fn revoke(
        &self,
        id_or_name: &str,
        reason: Option<RevocationReason>,
    ) -> Result<Certificate> {
        let cert = self.find(id_or_name).await?;
        if cert.status == Status::Revoked {
            return Err(InventoryError::Conflict(format!(
                "certificate {} is already revoked",
                cert.id
            )));
        }
        if cert.origin == Origin::Imported {
            return Err(InventoryError::Conflict(format!(
                "certificate {} is imported; revoke it with the CA that issued it",
                cert.id
            )));
        }
        let reason = reason.unwrap_or(RevocationReason::Unspecified);
        let revocations: Vec<Revocation> = cert
            .versions
            .iter()
            .filter_map(|v| {
                v.issuer_ca.clone().map(|ca| Revocation {
                    ca,
                    serial: v.serial.clone(),
                })
            })
            .collect();
        let now = OffsetDateTime::now_utc();
        let event = events::revoked(&cert, reason.as_str(), now);
        self.store
            .revoke(&cert.id, reason, revocations.clone(), Some(event), now)
            .await?;
        let mut cas: Vec<&str> = revocations.iter().map(|r| r.ca.as_str()).collect();
        cas.dedup();
        for ca in cas {
            self.refresh_crl(ca, now).await?;
        }
        self.find(cert.id.as_str()).await
    }

    pub async fn delete(&self, id_or_name: &str) -> Result<Certificate> {
        let cert = self.find(id_or_name).await?;
        self.store.delete(&cert.id).await?;
        Ok(cert)
    }

    pub async fn tags(&self, id_or_name: &str, req: TagsRequest) -> Result<Certificate> {
        check_tags(&req.set)?;
        let cert = self.find(id_or_name).await?;
        self.store.set_tags(&cert.id, req.set, req.remove).await?;
        self.find(cert.id.as_str()).await
    }

    pub async fn find(&self, id_or_name: &str) -> Result<Certificate> {
        self.store
            .find_certificate(id_or_name)
            .await?
            .ok_or_else(|| InventoryError::NotFound(format!("certificate {id_or_name:?}")))
    }

    pub async fn list(&self, filter: &ListFilter) -> Result<Vec<Certificate>> {
        Ok(self.store.list(filter, OffsetDateTime::now_utc()).await?)
    }

    pub async fn pem(&self, id_or_name: &str, version: Option<u32>) -> Result<CertificatePem> {
        let cert = self.find(id_or_name).await?;
        let number = version.unwrap_or(cert.current_version);
        let stored =
            self.store.version(&cert.id, number).await?.ok_or_else(|| {
                InventoryError::NotFound(format!("version {number} of {}", cert.id))
            })?;
        Ok(CertificatePem {
            id: cert.id.to_string(),
            version: number,
            certificate: stored.cert_pem,
            chain: stored.chain_pem,
        })
    }

    pub async fn export(&self, id_or_name: &str, req: ExportRequest) -> Result<Exported> {
        export::check_passphrase(&req.passphrase)?;
        let cert = self.find(id_or_name).await?;
        let number = req.version.unwrap_or(cert.current_version);
        let stored =
            self.store.version(&cert.id, number).await?.ok_or_else(|| {
                InventoryError::NotFound(format!("version {number} of {}", cert.id))
            })?;
        let key = self
            .store
            .open_version_key(&cert.id, &stored)?
            .ok_or(ExportError::NoKey)?;
        let passphrase = Zeroizing::new(req.passphrase);
        let format = req.format;
        Ok(blocking(move || {
            export::export(
                format,
                &stored.cert_pem,
                &stored.chain_pem,
                &key,
                &passphrase,
            )
        })
        .await??)
    }

    /// What happens next to a certificate, when, and which rule decided it.
    pub async fn explain(&self, id_or_name: &str) -> Result<Explanation> {
        let cert = self.find(id_or_name).await?;
        let now = OffsetDateTime::now_utc();
        let settings = self.settings();
        let lifetime = Lifetime {
            not_before: cert.not_before,
            not_after: cert.not_after,
        };
        let mut reasons = vec![format!(
            "lifetime {} (not before {}, not after {})",
            Span::from_secs((lifetime.length().whole_seconds()).max(0) as u64),
            rfc3339(cert.not_before),
            rfc3339(cert.not_after)
        )];
        let managed = cert.next_renewal_at.is_some();
        let failing = cert.renewal.as_ref().filter(|r| r.failures > 0);
        let (next_action, rule) = match (managed, failing) {
            (false, _) => {
                reasons.push(match cert.origin {
                    Origin::Imported => {
                        "imported: certkeeper watches it but never renews it".to_owned()
                    }
                    _ if cert.status == Status::Revoked => "revoked: never renewed".to_owned(),
                    _ => "certkeeper does not hold its key (signed from a CSR): not renewed"
                        .to_owned(),
                });
                ("none", "not managed".to_owned())
            }
            (true, Some(renewal)) => {
                reasons.push(format!(
                    "{} consecutive renewal failure(s), the last at {}: {}",
                    renewal.failures,
                    renewal.failed_at.map(rfc3339).unwrap_or_default(),
                    renewal.reason.clone().unwrap_or_default()
                ));
                reasons.push(
                    "retries back off exponentially from 1m to 4h, never past expiry".to_owned(),
                );
                ("retry", policy::Rule::Backoff.to_string())
            }
            (true, None) => {
                let configured = cert.renew_before.unwrap_or(settings.renew_before);
                let own = cert
                    .maintenance_window
                    .as_ref()
                    .and_then(|w| w.window().ok());
                let window = own.as_ref().or(settings.window.as_ref());
                let planned =
                    policy::renewal(cert.id.as_str(), lifetime, configured.time(), window, now);
                reasons.push(format!(
                    "renew-before {configured} ({}); effective {} before expiry",
                    if cert.renew_before.is_some() {
                        "set on this certificate"
                    } else {
                        "renewal.renew-before"
                    },
                    Span::from_secs(planned.renew_before.whole_seconds().max(0) as u64)
                ));
                if let Some(window) = window {
                    reasons.push(format!(
                        "maintenance window {} ({}) for {} ({}); ignored once less than a tenth of the lifetime remains",
                        window.schedule.as_str(),
                        window.schedule.time_zone(),
                        Span::from_secs(window.duration.as_secs()),
                        if own.is_some() { "set on this certificate" } else { "renewal.window" },
                    ));
                }
                ("renew", planned.rule.to_string())
            }
        };
        let days = cert
            .days_before_expiry
            .unwrap_or(settings.days_before_expiry);
        let threshold = policy::expiry_threshold(
            days,
            self.care(managed, cert.renew_before, lifetime),
            lifetime,
        );
        let events_from = cert.not_after - threshold;
        reasons.push(format!(
            "expiry events: days-before-expiry {days}{}; daily from {}",
            if managed {
                " capped at a quarter of the lifetime and at the renewal time (renewal would be overdue)"
            } else {
                ""
            },
            rfc3339(events_from)
        ));
        let next_expiry_event_at = if cert.status == Status::Issued && now < cert.not_after {
            settings
                .daily_check
                .next_after(events_from.max(now) - time::Duration::SECOND)
                .filter(|at| *at < cert.not_after)
        } else {
            None
        };
        Ok(Explanation {
            id: cert.id.to_string(),
            name: cert.name.clone(),
            status: cert.status.to_string(),
            next_action: next_action.to_owned(),
            next_action_at: cert.next_renewal_at,
            rule,
            reasons,
            expiry_threshold: Span::from_secs(threshold.whole_seconds().max(0) as u64),
            expiry_events_from: events_from,
            next_expiry_event_at,
        })
    }

    // --- certificate authorities -----------------------------------------------------------

    pub async fn cas(&self) -> Result<Vec<CaInfo>> {
        Ok(self
            .store
            .cas()
            .await?
            .into_iter()
            .map(|c| c.info)
            .collect())
    }

    pub async fn ca(&self, name: &str) -> Result<CaDetails> {
        let stored = self
            .store
            .ca(name)
            .await?
            .ok_or_else(|| InventoryError::NotFound(format!("CA {name:?}")))?;
        Ok(CaDetails {
            ca: stored.info,
            certificate_pem: stored.cert_pem,
            chain_pem: stored.chain_pem,
            csr_pem: stored.csr_pem,
        })
    }

    pub async fn create_ca(&self, req: CreateCa) -> Result<CaDetails> {
        check_name("CA", &req.name).map_err(InventoryError::invalid)?;
        if req.external && req.parent.is_some() {
            return Err(InventoryError::Invalid(
                "a CA is either --external or has a --parent, not both".into(),
            ));
        }
        let mut spec = CaSpec {
            common_name: req
                .common_name
                .unwrap_or_else(|| format!("certkeeper {} CA", req.name)),
            name: req.name,
            parent: req.parent,
            external: req.external,
            key_algorithm: req.key_algorithm.unwrap_or(KeyAlgorithm::EcP256),
            validity: req.validity.unwrap_or(Span::from_days(3650)),
            path_length: req.path_length,
            permitted_dns: req.permitted_dns,
        };
        if spec.parent.is_some() {
            spec.validity = self.clamp_to_parent(&spec, req.validity)?;
        }
        let name = spec.name.clone();
        self.create_ca_from_spec(spec).await?;
        self.load_authorities().await?;
        self.ca(&name).await
    }

    /// A subordinate without an explicit validity lives as long as its parent allows (at most
    /// the requested default); an explicit one is checked when signing.
    fn clamp_to_parent(&self, spec: &CaSpec, explicit: Option<Span>) -> Result<Span> {
        let parent_name = spec.parent.as_deref().unwrap_or_default();
        let parent = self.authority(parent_name)?;
        if explicit.is_some() {
            return Ok(spec.validity);
        }
        let remaining = (parent.not_after - OffsetDateTime::now_utc() - time::Duration::hours(1))
            .whole_seconds();
        Ok(Span::from_secs(
            spec.validity.as_secs().min(remaining.max(0) as u64),
        ))
    }

    async fn create_ca_from_spec(&self, spec: CaSpec) -> Result<()> {
        if self.store.ca(&spec.name).await?.is_some() {
            return Err(InventoryError::Conflict(format!(
                "CA {:?} already exists",
                spec.name
            )));
        }
        let now = OffsetDateTime::now_utc();
        let created = match &spec.parent {
            Some(parent) => {
                let parent = self.authority(parent)?;
                let spec = spec.clone();
                blocking(move || parent.create_subordinate(&spec, now)).await??
            }
            None if spec.external => {
                let spec = spec.clone();
                blocking(move || ca::create_external(&spec, now)).await??
            }
            None => {
                let spec = spec.clone();
                blocking(move || ca::create_root(&spec, now)).await??
            }
        };
        // Subordinates carry the constraints and path length their parent imposed.
        let mut stored_spec = spec;
        if let Some(cert_pem) = &created.cert_pem {
            stored_spec = effective_spec(stored_spec, cert_pem);
        }
        let name = stored_spec.name.clone();
        self.store
            .insert_ca(NewCa {
                spec: stored_spec,
                cert_pem: created.cert_pem,
                chain_pem: created.chain_pem,
                csr_pem: created.csr_pem,
                serial: created.serial,
                not_before: created.not_before,
                not_after: created.not_after,
                key: created.key,
            })
            .await?;
        if self
            .store
            .ca(&name)
            .await?
            .is_some_and(|c| c.info.state == CaState::Active)
        {
            self.load_authorities().await?;
            self.refresh_crl(&name, now).await?;
        }
        Ok(())
    }

    /// Stops (or resumes) all issuance by a CA: requests, signing and renewals through it fail
    /// while it is disabled. Its key stays sealed in the store.
    pub async fn set_ca_enabled(&self, name: &str, enabled: bool) -> Result<CaDetails> {
        self.store.set_ca_disabled(name, !enabled).await?;
        self.load_authorities().await?;
        self.changed();
        self.ca(name).await
    }

    /// Completes an external CA with the certificate its root signed.
    pub async fn install_ca(&self, name: &str, req: InstallCa) -> Result<CaDetails> {
        let stored = self
            .store
            .ca(name)
            .await?
            .ok_or_else(|| InventoryError::NotFound(format!("CA {name:?}")))?;
        if stored.info.state != CaState::PendingCertificate {
            return Err(InventoryError::Conflict(format!(
                "CA {name:?} already has its certificate"
            )));
        }
        let key = self.store.open_ca_key(&stored)?;
        let public = crate::keys::load_pkcs8(&key).map_err(CaError::from)?;
        let checked = check_ca_certificate(
            &req,
            &rcgen::PublicKeyData::subject_public_key_info(&public),
        )?;
        self.store.install_ca(name, checked).await?;
        self.load_authorities().await?;
        self.refresh_crl(name, OffsetDateTime::now_utc()).await?;
        self.ca(name).await
    }

    /// The CA's current CRL (DER), re-signed first when it is stale.
    pub async fn crl(&self, name: &str) -> Result<Vec<u8>> {
        let now = OffsetDateTime::now_utc();
        let stored = self
            .store
            .ca(name)
            .await?
            .ok_or_else(|| InventoryError::NotFound(format!("CA {name:?}")))?;
        let fresh = stored
            .crl_next_update
            .is_some_and(|next| next - now > CRL_VALIDITY.time() / 2);
        if let (true, Some(der)) = (fresh, stored.crl_der) {
            return Ok(der);
        }
        self.refresh_crl(name, now).await?;
        let stored = self
            .store
            .ca(name)
            .await?
            .ok_or_else(|| InventoryError::NotFound(format!("CA {name:?}")))?;
        stored
            .crl_der
            .ok_or_else(|| InventoryError::Internal(format!("CA {name:?} has no CRL")))
    }

    async fn refresh_crl(&self, name: &str, now: OffsetDateTime) -> Result<()> {
        let authority = self.authority(name)?;
        let stored = self
            .store
            .ca(name)
            .await?
            .ok_or_else(|| InventoryError::NotFound(format!("CA {name:?}")))?;
        let revoked = self.store.revocations(name).await?;
        let number = stored.crl_number + 1;
        let next_update = now + CRL_VALIDITY.time();
        let der = authority.crl(&revoked, number, now, next_update)?;
        match self.store.save_crl(name, number, der, next_update).await {
            // Someone else re-signed concurrently with a number at least as high: theirs stands.
            Ok(()) | Err(StoreError::Conflict(_)) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }

    pub async fn rotate_master_key(&self) -> Result<(u64, BTreeMap<String, u64>)> {
        let rewrapped = self.store.rotate_master_key().await?;
        Ok((rewrapped, self.store.key_usage().await?))
    }
}

/// What `request` and `sign` share once the CA has signed: the record to store, with its
/// ISSUANCE event.
struct PrivateIssuance {
    /// The name and whether it was defaulted (see [`resolve_name`]).
    name: (String, bool),
    ca: String,
    domains: Vec<Domain>,
    key_algorithm: KeyAlgorithm,
    validity: Span,
    client_auth: bool,
    tags: BTreeMap<String, String>,
    renew_before: Option<Span>,
    days_before_expiry: Option<u32>,
    maintenance_window: Option<WindowSpec>,
}

impl PrivateIssuance {
    /// `key` is the private key when we generated it, `None` for a caller's CSR.
    fn record(
        self,
        issued: Issued,
        key: Option<Zeroizing<Vec<u8>>>,
        now: OffsetDateTime,
    ) -> NewCertificate {
        let (name, name_is_default) = self.name;
        let mut new = NewCertificate {
            id: CertificateId::generate(),
            name,
            name_is_default,
            origin: Origin::Private,
            status: Status::Issued,
            issuer: self.ca.clone(),
            domains: self.domains,
            key_algorithm: self.key_algorithm,
            validity: Some(self.validity),
            client_auth: self.client_auth,
            tags: self.tags,
            renew_before: self.renew_before,
            days_before_expiry: self.days_before_expiry,
            maintenance_window: self.maintenance_window,
            next_action_at: None,
            version: NewVersion {
                serial: issued.serial,
                issuer_ca: Some(self.ca),
                not_before: issued.not_before,
                not_after: issued.not_after,
                cert_pem: issued.cert_pem,
                chain_pem: issued.chain_pem,
                key,
            },
            event: None,
        };
        new.event = Some(events::available(
            &new.certificate(now),
            Action::Issuance,
            now,
        ));
        new
    }
}

/// A per-certificate maintenance window from request fields: both or neither, and a cron
/// expression and zone that parse.
fn window_spec(
    schedule: Option<String>,
    duration: Option<Span>,
    time_zone: Option<String>,
) -> Result<Option<WindowSpec>> {
    let spec = match (schedule, duration) {
        (None, None) if time_zone.is_none() => return Ok(None),
        (Some(schedule), Some(duration)) => WindowSpec {
            schedule,
            duration,
            time_zone,
        },
        _ => {
            return Err(InventoryError::Invalid(
                "a maintenance window needs both window and window_duration".into(),
            ));
        }
    };
    if spec.duration.as_secs() < 60 {
        return Err(InventoryError::Invalid(
            "window_duration must be at least 1m".into(),
        ));
    }
    spec.window().map_err(InventoryError::invalid)?;
    Ok(Some(spec))
}

/// A certificate's name: the one given (checked), else its first domain. The flag says it was
/// defaulted, which lets the store make it unique instead of refusing it.
fn resolve_name(name: Option<String>, domains: &[Domain]) -> Result<(String, bool)> {
    match name {
        Some(name) => {
            check_name("certificate", &name).map_err(InventoryError::invalid)?;
            Ok((name, false))
        }
        None => {
            let first = domains
                .first()
                .ok_or_else(|| InventoryError::Invalid("no domains".into()))?;
            Ok((first.to_string(), true))
        }
    }
}

fn check_tags(tags: &BTreeMap<String, String>) -> Result<()> {
    if tags.len() > 50 {
        return Err(InventoryError::Invalid(
            "at most 50 tags per certificate".into(),
        ));
    }
    for (key, value) in tags {
        check_tag(key, value).map_err(InventoryError::invalid)?;
    }
    Ok(())
}

/// Reads the constraints a signed CA certificate really carries back into its spec, so the
/// stored policy matches the certificate (a subordinate inherits its parent's limits).
fn effective_spec(mut spec: CaSpec, cert_pem: &str) -> CaSpec {
    use x509_parser::prelude::FromDer;
    let Some(der) = crate::pem::certificates(cert_pem).into_iter().next() else {
        return spec;
    };
    let Ok((_, cert)) = x509_parser::certificate::X509Certificate::from_der(&der) else {
        return spec;
    };
    if let Ok(Some(bc)) = cert.basic_constraints() {
        spec.path_length = bc.value.path_len_constraint.map(|n| n.min(255) as u8);
    }
    if let Ok(Some(nc)) = cert.name_constraints() {
        spec.permitted_dns = nc
            .value
            .permitted_subtrees
            .iter()
            .flatten()
            .filter_map(|s| match &s.base {
                x509_parser::extensions::GeneralName::DNSName(name) => Some((*name).to_owned()),
                _ => None,
            })
            .collect();
    }
    spec
}

/// Checks the certificate offered for an external CA: one CA certificate for our key, and a
/// chain that links it to its root.
fn check_ca_certificate(req: &InstallCa, our_spki: &[u8]) -> Result<InstalledCa> {
    let bad = |m: String| InventoryError::Invalid(m);
    let blocks = crate::pem::blocks(&file_bytes(&req.certificate))
        .map_err(|e| bad(format!("certificate {e}")))?;
    let [block] = blocks.as_slice() else {
        return Err(bad(format!(
            "certificate holds {} PEM blocks; expected one (put issuers in --chain)",
            blocks.len()
        )));
    };
    let info = crate::x509::inspect(&block.der).map_err(|e| bad(format!("certificate {e}")))?;
    if !info.is_ca {
        return Err(bad(
            "certificate is not a CA certificate (basicConstraints CA:TRUE missing)".into(),
        ));
    }
    if info.spki != our_spki {
        return Err(bad(
            "certificate is not for this CA's key (was it signed from this CA's CSR?)".into(),
        ));
    }
    let mut chain_pem = String::new();
    let mut child = block.der.to_vec();
    if let Some(chain) = &req.chain {
        let blocks =
            crate::pem::blocks(&file_bytes(chain)).map_err(|e| bad(format!("chain {e}")))?;
        for (i, parent) in blocks.iter().enumerate() {
            if !crate::x509::is_signed_by(&child, &parent.der) {
                return Err(bad(format!(
                    "chain element {} does not sign the certificate before it",
                    i + 1
                )));
            }
            chain_pem.push_str(&crate::pem::encode("CERTIFICATE", &parent.der));
            child = parent.der.to_vec();
        }
    }
    Ok(InstalledCa {
        cert_pem: crate::pem::encode("CERTIFICATE", &block.der),
        chain_pem,
        serial: info.serial,
        not_before: info.not_before,
        not_after: info.not_after,
    })
}

/// Runs CPU-heavy work (key generation, KDFs) on the blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| InventoryError::Internal(format!("worker failed: {e}")))
}

/// Like [`blocking`] for work that borrows from the caller: runs it in place, telling the
/// runtime this worker thread may block for a while.
fn blocking_scoped<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}
