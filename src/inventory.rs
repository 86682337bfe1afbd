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

use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::api::types::{
    CaDetails, CertificatePem, CreateCa, ExportRequest, ImportCertificate, InstallCa,
    RequestCertificate, SignRequest, Signed, TagsRequest, file_bytes,
};
use crate::ca::{self, Authority, CaError, Issued, LeafRequest};
use crate::config::Defaults;
use crate::events::{self, Action};
use crate::export::{self, ExportError, Exported};
use crate::import::{self, ImportError};
use crate::model::{
    CaInfo, CaSpec, CaState, Certificate, CertificateId, Domain, KeyAlgorithm, Origin,
    RevocationReason, Status, check_name, check_tag, parse_domains,
};
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
    authorities: RwLock<HashMap<String, Arc<Authority>>>,
    /// Reloadable with SIGHUP.
    defaults: RwLock<Defaults>,
}

impl Inventory {
    pub fn new(store: Store, defaults: Defaults) -> Inventory {
        Inventory {
            store,
            authorities: RwLock::new(HashMap::new()),
            defaults: RwLock::new(defaults),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn set_defaults(&self, defaults: Defaults) {
        *self.defaults.write().unwrap_or_else(|p| p.into_inner()) = defaults;
    }

    fn defaults(&self) -> Defaults {
        self.defaults
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
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
            let Some(cert_pem) = &stored.cert_pem else {
                continue;
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
            loaded.insert(info.name.clone(), Arc::new(authority));
        }
        *self.authorities.write().unwrap_or_else(|p| p.into_inner()) = loaded;
        Ok(())
    }

    fn authority(&self, name: &str) -> Result<Arc<Authority>> {
        let map = self.authorities.read().unwrap_or_else(|p| p.into_inner());
        map.get(name)
            .cloned()
            .ok_or_else(|| InventoryError::NotFound(format!("active CA {name:?}")))
    }

    // --- certificates ----------------------------------------------------------------------

    pub async fn request(&self, req: RequestCertificate) -> Result<Certificate> {
        let defaults = self.defaults();
        let domains = parse_domains(&req.domains).map_err(InventoryError::invalid)?;
        check_tags(&req.tags)?;
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
        };
        let new = issuance.record(issued, Some(key), now);
        Ok(self.store.insert_certificate(new).await?)
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
        };
        let new = issuance.record(issued, None, now);
        let certificate = self.store.insert_certificate(new).await?;
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
                    version,
                    event: None,
                };
                new.event = Some(events::available(
                    &new.certificate(now),
                    Action::Import,
                    now,
                ));
                Ok(self.store.insert_certificate(new).await?)
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
        };
        Ok(self.store.add_version(&cert.id, change).await?)
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
        let change = VersionChange {
            version: cert.current_version + 1,
            new: version,
            status: Status::Issued,
            event: Some(event),
            names: None,
        };
        Ok(self.store.add_version(&cert.id, change).await?)
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
