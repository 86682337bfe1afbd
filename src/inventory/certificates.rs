//! Certificate operations: request, sign, import and re-import, renew, revoke, delete, tags,
//! reads and export.

use std::collections::HashSet;

use crate::acme::KeptCertificate;
use crate::model::RenewalStatus;

use super::*;

impl Inventory {
    /// A new certificate: issued at once by one of our CAs, or accepted to wait for
    /// validation and be ordered from an ACME CA.
    pub async fn request(&self, req: CertificateRequest) -> Result<Certificate> {
        let (ca, validity, client_auth) = match &req.source {
            Source::Private {
                ca,
                validity,
                client_auth,
            } => (ca.clone(), *validity, *client_auth),
            Source::Public { issuer, validation } => {
                let (issuer, validation) = (issuer.clone(), *validation);
                return self.request_public(req, issuer, validation).await;
            }
        };
        let defaults = self.defaults();
        let domains = req.domains;
        let name = resolve_name(req.name, &domains)?;
        let ca_name = ca.unwrap_or_else(|| defaults.ca.clone());
        let authority = self.authority(&ca_name)?;
        let algorithm = req.key_algorithm.unwrap_or(defaults.key_algorithm);
        let validity = defaults
            .validity(validity)
            .map_err(|e| InventoryError::invalid("validity", e))?;
        let now = OffsetDateTime::now_utc();

        let (issued, key) = {
            let domains = domains.clone();
            blocking(move || -> Result<_> {
                let key = crate::keys::generate(algorithm).map_err(CaError::from)?;
                let request = LeafRequest {
                    domains: &domains,
                    validity,
                    client_auth,
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
            client_auth,
            tags: req.tags.into_inner(),
            renew_before: req.renew_before,
            days_before_expiry: req.days_before_expiry.map(DaysBeforeExpiry::get),
            maintenance_window: req.window,
        };
        let lifetime = issued.lifetime();
        let mut new = issuance.record(issued, Some(key), now);
        new.next_action_at = self.deadline_of_new_version(
            (&new.id, 1),
            lifetime,
            (new.renew_before, new.maintenance_window.as_ref()),
            None,
            (now, now),
        );
        let cert = self.insert(new).await?;
        self.metrics.issued(cert.origin);
        Ok(cert)
    }

    /// Issues a certificate for a caller's CSR. The key stays with the caller; the certificate
    /// is recorded like any other (without a key, so it cannot be exported or renewed by us).
    pub async fn sign(&self, req: SignRequest) -> Result<Signed> {
        let defaults = self.defaults();
        let authority = self.authority(req.ca.as_deref().unwrap_or(&defaults.ca))?;
        let (new, pems) = sign_one(req, &defaults, &authority, OffsetDateTime::now_utc())?;
        let certificate = self.insert(new).await?;
        self.metrics.issued(certificate.origin);
        Ok(pems.signed(certificate))
    }

    /// Signs several CSRs and records them in one transaction: all are issued or none is (the
    /// error names the request at fault as `requests[i]`). The signing is spread over the
    /// cores; the commit, the expensive part of a single `sign`, is paid once.
    pub async fn sign_batch(&self, requests: Vec<SignRequest>) -> Result<Vec<Signed>> {
        if requests.is_empty() || requests.len() > MAX_SIGN_BATCH {
            return Err(InventoryError::invalid(
                "requests",
                format!(
                    "a batch holds 1 to {MAX_SIGN_BATCH} requests, not {}",
                    requests.len()
                ),
            ));
        }
        // Names given twice in one batch: found here, so a name taken in the store can only
        // be taken by an earlier certificate, and is reported at its one request below.
        let mut given: HashMap<String, usize> = HashMap::new();
        for (i, req) in requests.iter().enumerate() {
            if let Some(name) = &req.name
                && let Some(first) = given.insert(name.as_str().to_owned(), i)
            {
                let name = name.as_str().to_owned();
                return Err(InventoryError::NameGivenTwice { name, first }.in_request(i));
            }
        }
        let defaults = self.defaults();
        let now = OffsetDateTime::now_utc();
        // Look up each CA once, on this thread: a missing or disabled one fails the batch
        // before any signing.
        let mut work = Vec::with_capacity(requests.len());
        let mut authorities: HashMap<String, Arc<Authority>> = HashMap::new();
        for (i, req) in requests.into_iter().enumerate() {
            let ca = req.ca.clone().unwrap_or_else(|| defaults.ca.clone());
            let authority = match authorities.get(&ca) {
                Some(authority) => authority.clone(),
                None => {
                    let authority = self.authority(&ca).map_err(|e| e.in_request(i))?;
                    authorities.insert(ca, authority.clone());
                    authority
                }
            };
            work.push((i, req, authority));
        }
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let per_task = work.len().div_ceil(cores);
        let mut tasks = Vec::new();
        while !work.is_empty() {
            let chunk: Vec<_> = work.drain(..per_task.min(work.len())).collect();
            let defaults = defaults.clone();
            tasks.push(blocking(move || {
                chunk
                    .into_iter()
                    .map(|(i, req, authority)| {
                        sign_one(req, &defaults, &authority, now).map_err(|e| e.in_request(i))
                    })
                    .collect::<Result<Vec<_>>>()
            }));
        }
        let mut news = Vec::new();
        let mut pems = Vec::new();
        for task in tasks {
            for (new, pem) in task.await?? {
                news.push(new);
                pems.push(pem);
            }
        }
        let stored = match self.insert_all(news).await {
            Ok(stored) => stored,
            // The one error a single request can cause in the store: say which.
            Err(StoreError::NameTaken(name)) => {
                let index = given.get(&name).copied();
                let err = InventoryError::NameTaken { name };
                return Err(match index {
                    Some(i) => err.in_request(i),
                    None => err,
                });
            }
            Err(err) => return Err(err.into()),
        };
        for cert in &stored {
            self.metrics.issued(cert.origin);
        }
        Ok(pems
            .into_iter()
            .zip(stored)
            .map(|(pem, cert)| pem.signed(cert))
            .collect())
    }

    /// Brings in a certificate issued elsewhere, or a new version of one imported before.
    pub async fn import(&self, req: ImportRequest) -> Result<Certificate> {
        let now = OffsetDateTime::now_utc();
        // Decrypting a passphrase-protected key runs a deliberately slow KDF (bounded by the
        // import checks): on the blocking pool, so the request's deadline can still answer, and
        // at most a few at once, so imports cannot take every core from signing and renewals.
        let files = (
            req.certificate,
            req.private_key,
            req.chain,
            req.passphrase,
            req.allow_expired,
        );
        let checked = {
            let _permit = self
                .kdf
                .acquire()
                .await
                .map_err(|_| InventoryError::ShuttingDown)?;
            blocking(move || {
                let (certificate, private_key, chain, passphrase, allow_expired) = files;
                let input = import::Input {
                    certificate: &certificate,
                    private_key: &private_key,
                    chain: chain.as_deref(),
                    passphrase: passphrase.as_deref().map(String::as_str),
                    allow_expired,
                };
                import::check(&input, now)
            })
            .await??
        };
        let version = NewVersion {
            serial: checked.info.serial.clone(),
            issuer_ca: None,
            not_before: checked.info.not_before,
            not_after: checked.info.not_after,
            cert_pem: checked.cert_pem,
            chain_pem: checked.chain_pem,
            key: Some(checked.key),
        };
        match req.reimport {
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
                    tags: req.tags.into_inner(),
                    renew_before: None,
                    days_before_expiry: req.days_before_expiry.map(DaysBeforeExpiry::get),
                    maintenance_window: None,
                    next_action_at: None,
                    validation: None,
                    version: Some(version),
                    event: None,
                };
                new.event = Some(events::available(
                    &new.certificate(now),
                    Action::Import,
                    now,
                ));
                let cert = self.insert(new).await?;
                self.metrics.issued(cert.origin);
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
            return Err(InventoryError::NotImported {
                id: cert.id,
                origin: cert.origin,
            });
        }
        let mut after = cert.clone();
        after.current_version += 1;
        after.serial = Some(version.serial.clone());
        after.not_before = Some(version.not_before);
        after.not_after = Some(version.not_after);
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
            renewal_info: None,
        };
        let cert = self.store.add_version(&cert.id, change).await?;
        self.changed();
        Ok(cert)
    }

    /// Issues a new version of a certificate: new key, same names, same lifetime (private),
    /// or a new order from its ACME CA (public).
    pub async fn renew(&self, id_or_name: &str) -> Result<Certificate> {
        let cert = self.find(id_or_name).await?;
        self.renew_certificate(cert).await
    }

    /// [`Inventory::renew`] of a certificate already read (the scheduler has it).
    pub async fn renew_certificate(&self, cert: Certificate) -> Result<Certificate> {
        match cert.origin {
            Origin::Private => {}
            Origin::Public => return self.issue_public(cert).await,
            Origin::Imported => {
                return Err(InventoryError::Imported {
                    id: cert.id,
                    operation: Operation::Renew,
                });
            }
        }
        if cert.status == Status::Revoked {
            return Err(InventoryError::Revoked {
                id: cert.id,
                operation: Operation::Renew,
            });
        }
        if !cert.versions.first().is_some_and(|v| v.key_held) {
            return Err(InventoryError::KeyNotHeld {
                id: cert.id,
                operation: Operation::Renew,
            });
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
        let event = events::available(&issued.next_version_of(&cert), Action::Renewal, now);
        let lifetime = issued.lifetime();
        let version = issued.into_version(Some(cert.issuer.clone()), Some(key));
        let change = VersionChange {
            version: cert.current_version + 1,
            new: version,
            status: Status::Issued,
            event: Some(event),
            names: None,
            next_action_at: self.deadline_of_new_version(
                (&cert.id, cert.current_version + 1),
                lifetime,
                (cert.renew_before, cert.maintenance_window.as_ref()),
                None,
                (now, now),
            ),
            renewal_info: None,
        };
        let cert = self.store.add_version(&cert.id, change).await?;
        self.changed();
        Ok(cert)
    }

    /// Accepts a public certificate: it waits in `pending-validation` (with an event listing
    /// the records to create) and the scheduler orders it from the ACME CA.
    async fn request_public(
        &self,
        req: CertificateRequest,
        issuer: String,
        method: ValidationMethod,
    ) -> Result<Certificate> {
        let acme = self.acme()?.clone();
        let domains = req.domains;
        let (name, name_is_default) = resolve_name(req.name, &domains)?;
        let algorithm = req.key_algorithm.unwrap_or(self.defaults().key_algorithm);
        acme.check_request(&issuer, method, algorithm, &domains)
            .await?;
        let now = OffsetDateTime::now_utc();
        let deadline = now.saturating_add(acme.validation().timeout.time());
        let mut new = NewCertificate {
            id: CertificateId::generate(),
            name,
            name_is_default,
            origin: Origin::Public,
            status: Status::PendingValidation,
            issuer,
            domains,
            key_algorithm: algorithm,
            validity: None,
            client_auth: false,
            tags: req.tags.into_inner(),
            renew_before: req.renew_before,
            days_before_expiry: req.days_before_expiry.map(DaysBeforeExpiry::get),
            maintenance_window: req.window,
            // Due now: the scheduler checks validation and orders at once.
            next_action_at: Some(now),
            validation: Some((method, deadline)),
            version: None,
            event: None,
        };
        let records = acme.records(method, &new.domains);
        new.event = Some(events::validation_pending(
            &new.id,
            &new.domains,
            method,
            &records,
            deadline,
            now,
        ));
        let mut cert = self.insert(new).await?;
        cert.validation_records = records;
        Ok(cert)
    }

    /// First issuance or renewal of a public certificate through its ACME issuer: new key,
    /// same names, same validation.
    async fn issue_public(&self, cert: Certificate) -> Result<Certificate> {
        let Some(_issuing) = Issuing::start(&self.issuing, &cert.id) else {
            return Err(InventoryError::Changed {
                what: format!(
                    "certificate {}: an ACME issuance for it is in progress; try again once it ends",
                    cert.id
                ),
            });
        };
        if cert.status == Status::Revoked {
            return Err(InventoryError::Revoked {
                id: cert.id,
                operation: Operation::Renew,
            });
        }
        // Read before the guard was taken: an attempt that held it meanwhile (the start taking
        // in a kept order's certificate) may have made the version this one was to make.
        if let Some(now) = self.store.certificate(&cert.id).await?
            && now.current_version != cert.current_version
        {
            return Ok(now);
        }
        let method = cert.validation_method.unwrap_or(ValidationMethod::Dns);
        let acme = self.acme()?;
        // With renewal information for the current version, the CA links the renewal to it.
        let replacing = match (&cert.renewal_info, cert.current_version) {
            (Some(_), version) if version > 0 => self
                .store
                .version(&cert.id, version)
                .await?
                .map(|stored| stored.cert_pem),
            _ => None,
        };
        let issued = acme.issue(&cert, method, replacing.as_deref()).await?;
        self.add_public_version(acme, &cert, issued).await
    }

    /// Takes in, at start, the certificate of an ACME order kept from an attempt a kill or
    /// crash cut off after the CA issued it: a `renew` through the API is not retried by
    /// anyone, so without this the certificate would wait unheld (and age) until the next
    /// renewal is due. Only issued public certificates the scheduler is not about to renew: a
    /// first issuance is due anyway, and an order the CA has not issued for is left to the
    /// next attempt. Best effort, logged.
    pub async fn take_up_kept_orders(&self) {
        let Some(acme) = &self.acme else {
            return;
        };
        let kept = match self.store.kept_acme_orders().await {
            Ok(kept) => kept,
            Err(err) => {
                tracing::warn!(error = %err, "could not read the kept ACME orders");
                return;
            }
        };
        // One the scheduler renews (claimed by a run a kill cut off, due soon, or retrying
        // a failure) is left to it: its attempt takes the order up, and the two must not
        // race. Asked again once the guard is held.
        let idle = |cert: &Certificate| {
            let soon = OffsetDateTime::now_utc() + time::Duration::minutes(2);
            cert.status == Status::Issued
                && cert.origin == Origin::Public
                && cert.renewal.as_ref().is_none_or(|r| {
                    r.failures == 0 && r.status != RenewalStatus::PendingAutoRenewal
                })
                && cert.next_renewal_at.is_some_and(|at| at > soon)
        };
        for id in kept {
            let cert = match self.store.certificate(&id).await {
                Ok(Some(cert)) if cert.status == Status::Revoked => {
                    self.settle_revoked(acme, &cert).await;
                    continue;
                }
                Ok(Some(cert)) if idle(&cert) => cert,
                Ok(_) => continue,
                Err(err) => {
                    tracing::warn!(cert = %id, error = %err, "could not read a certificate with a kept ACME order");
                    continue;
                }
            };
            // An attempt under way takes the order up itself.
            let Some(_issuing) = Issuing::start(&self.issuing, &cert.id) else {
                continue;
            };
            let cert = match self.store.certificate(&id).await {
                Ok(Some(again))
                    if idle(&again) && again.current_version == cert.current_version =>
                {
                    again
                }
                _ => continue,
            };
            if let Some(issued) = acme.kept_issuance(&cert).await {
                match self.add_public_version(acme, &cert, issued).await {
                    Ok(updated) => {
                        tracing::info!(cert = %cert.id, version = updated.current_version, "took in the certificate of an ACME order an interrupted attempt left");
                        // Its order is done: what it published goes.
                        acme.withdraw_left_over();
                    }
                    Err(err) => {
                        tracing::warn!(cert = %cert.id, error = %err, "could not take in the certificate of a kept ACME order");
                    }
                }
            }
        }
    }

    /// The order a revocation kept because the CA could not say whether it had issued for
    /// it: asked again; a certificate it issued is revoked too, then the order is dropped.
    async fn settle_revoked(&self, acme: &Acme, cert: &Certificate) {
        let reason = cert
            .revocation_reason
            .unwrap_or(RevocationReason::Unspecified);
        match acme.kept_certificate(&cert.id).await {
            KeptCertificate::Issued(chain) => {
                if let Err(err) = self.revoke_kept(acme, cert, &chain, reason).await {
                    tracing::warn!(cert = %cert.id, error = %err, "revoking the certificate of a revoked certificate's kept ACME order failed; asked again at the next start");
                    return;
                }
                acme.abandon(&cert.id).await;
            }
            KeptCertificate::None => acme.abandon(&cert.id).await,
            KeptCertificate::Unknown => {}
        }
    }

    /// Stores `issued` (from the ACME CA) as `cert`'s next version.
    async fn add_public_version(
        &self,
        acme: &Acme,
        cert: &Certificate,
        issued: crate::acme::Issued,
    ) -> Result<Certificate> {
        let crate::acme::Issued {
            certificate: issued,
            key,
        } = issued;
        let now = OffsetDateTime::now_utc();
        let lifetime = issued.lifetime();
        // The CA's window for the new certificate; without one (no ARI, or the CA could not
        // be asked just now) the renewal follows certkeeper's own rule.
        let renewal_info = match acme.renewal_window(&cert.issuer, &issued.cert_pem).await {
            Ok(window) => window
                .map(|w| policy::choose_renewal_time(w, None, now, renewal::random_fraction())),
            Err(err) => {
                tracing::warn!(cert = %cert.id, error = %err, "renewal information unavailable; renewing on certkeeper's own schedule");
                None
            }
        };
        let action = if cert.current_version == 0 {
            Action::Issuance
        } else {
            Action::Renewal
        };
        let event = events::available(&issued.next_version_of(cert), action, now);
        let cert_pem = issued.cert_pem.clone();
        let change = VersionChange {
            version: cert.current_version + 1,
            new: issued.into_version(None, Some(key)),
            status: Status::Issued,
            event: Some(event),
            names: None,
            next_action_at: self.deadline_of_new_version(
                (&cert.id, cert.current_version + 1),
                lifetime,
                (cert.renew_before, cert.maintenance_window.as_ref()),
                renewal_info.as_ref(),
                (now, now),
            ),
            renewal_info,
        };
        let updated = match self.store.add_version(&cert.id, change).await {
            Ok(updated) => updated,
            Err(err @ StoreError::Revoked(_)) => {
                self.discard_issued(acme, cert, &cert_pem).await;
                return Err(err.into());
            }
            Err(err) => return Err(err.into()),
        };
        self.metrics.issued(Origin::Public);
        self.changed();
        Ok(updated)
    }

    /// A certificate the ACME CA issued for one revoked while its order ran: nobody will
    /// hold it (the store refused it), so it is revoked at the CA too, with the certificate's
    /// reason, and its order dropped. Best effort: a failure is logged.
    async fn discard_issued(&self, acme: &Acme, cert: &Certificate, cert_pem: &str) {
        let reason = match self.find(cert.id.as_str()).await {
            Ok(now) => now
                .revocation_reason
                .unwrap_or(RevocationReason::Unspecified),
            Err(_) => RevocationReason::Unspecified,
        };
        if let Err(err) = acme.revoke(&cert.issuer, cert_pem, reason).await {
            tracing::warn!(cert = %cert.id, error = %err, "revoking the certificate issued for a revoked one at the CA failed");
        }
        if let Err(err) = self.store.delete_acme_order(&cert.id).await {
            tracing::warn!(cert = %cert.id, error = %err, "dropping the order of a revoked certificate failed");
        }
        acme.withdraw_left_over();
    }

    /// Revokes at the CA the certificate it issued for `cert`'s kept order (`chain`), then
    /// drops the order (its records are withdrawn with the revocation, or at the next start).
    async fn revoke_kept(
        &self,
        acme: &Acme,
        cert: &Certificate,
        chain: &str,
        reason: RevocationReason,
    ) -> Result<()> {
        match acme.revoke(&cert.issuer, chain, reason).await {
            Ok(()) => {
                tracing::info!(cert = %cert.id, "revoked the certificate of the ACME order kept for it too (issued, never stored)");
            }
            Err(err) if already_revoked(&err) => {}
            Err(err) => return Err(err.into()),
        }
        self.store.delete_acme_order(&cert.id).await?;
        Ok(())
    }

    /// Revokes a certificate. Every version signed by one of our CAs goes onto that CA's CRL
    /// (a renewal does not make the earlier keys trustworthy), and the CRL is re-signed.
    pub async fn revoke(
        &self,
        id_or_name: &str,
        reason: Option<RevocationReason>,
    ) -> Result<Certificate> {
        let reason = reason.unwrap_or(RevocationReason::Unspecified);
        // Serials the ACME CA has revoked in this call, so that a retry does not ask again.
        let mut at_ca = HashSet::new();
        let mut attempt = 1;
        loop {
            match self.revoke_as_read(id_or_name, reason, &mut at_ca).await {
                // A renewal stored a version after the read: read again, and revoke that one
                // too (a revocation by someone else meanwhile is found by the read).
                Err(InventoryError::Changed { .. }) if attempt < REVOKE_ATTEMPTS => attempt += 1,
                result => return result,
            }
        }
    }

    /// One attempt of [`Inventory::revoke`]: what it reads now is what it revokes, or the
    /// store refuses it (`Changed`).
    async fn revoke_as_read(
        &self,
        id_or_name: &str,
        reason: RevocationReason,
        at_ca: &mut HashSet<String>,
    ) -> Result<Certificate> {
        let cert = self.find(id_or_name).await?;
        if cert.status == Status::Revoked {
            return Err(InventoryError::Revoked {
                id: cert.id,
                operation: Operation::Revoke,
            });
        }
        if cert.origin == Origin::Imported {
            return Err(InventoryError::Imported {
                id: cert.id,
                operation: Operation::Revoke,
            });
        }
        let now = OffsetDateTime::now_utc();
        let mut keep_order = false;
        if cert.origin == Origin::Public {
            // At the CA first: only a revocation the CA accepted is recorded. Every version
            // still valid goes (a renewal does not make the earlier keys trustworthy).
            let acme = self.acme()?;
            for version in cert.versions.iter().filter(|v| v.not_after > now) {
                if at_ca.contains(version.serial.as_str()) {
                    continue;
                }
                let stored = self.store.version(&cert.id, version.version).await?;
                if let Some(stored) = stored {
                    match acme.revoke(&cert.issuer, &stored.cert_pem, reason).await {
                        Ok(()) => {}
                        // Revoked by an earlier attempt that died before the store recorded
                        // it (a crash, a kill): what was asked is done.
                        Err(err) if already_revoked(&err) => {
                            tracing::info!(cert = %cert.id, serial = %version.serial.as_str(), "the CA had revoked this version already");
                        }
                        Err(err) => return Err(err.into()),
                    }
                    at_ca.insert(version.serial.as_str().to_owned());
                }
            }
            // A certificate the CA issued for the kept order of an attempt cut off before the
            // store took it in: nobody holds it, and it would outlive the revocation. Once the
            // CA has revoked it, its order goes at once: nothing may take it in later.
            match acme.kept_certificate(&cert.id).await {
                KeptCertificate::Issued(chain) => {
                    self.revoke_kept(acme, &cert, &chain, reason).await?;
                }
                KeptCertificate::None => {}
                // Kept, for the next start to ask again (`take_up_kept_orders`).
                KeptCertificate::Unknown => keep_order = true,
            }
        }
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
        let event = events::revoked(&cert, reason, now);
        self.store
            .revoke(
                &cert.id,
                cert.current_version,
                reason,
                revocations.clone(),
                Some(event),
                now,
            )
            .await?;
        // A revoked certificate is not renewed: an order kept for it is of no more use.
        if let Some(acme) = &self.acme
            && cert.origin == Origin::Public
            && !keep_order
        {
            acme.abandon(&cert.id).await;
        }
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
        // Its order went with it; what that order published goes now, not at the next start.
        if let Some(acme) = &self.acme
            && cert.origin == Origin::Public
        {
            acme.withdraw_left_over();
        }
        Ok(cert)
    }

    pub async fn tags(&self, id_or_name: &str, change: TagChange) -> Result<Certificate> {
        let cert = self.find(id_or_name).await?;
        self.store
            .set_tags(&cert.id, change.set.into_inner(), change.remove)
            .await?;
        self.find(cert.id.as_str()).await
    }

    pub async fn find(&self, id_or_name: &str) -> Result<Certificate> {
        let mut cert = self
            .store
            .find_certificate(id_or_name)
            .await?
            .ok_or_else(|| InventoryError::NotFound(Missing::Certificate(id_or_name.to_owned())))?;
        if let (Some(method), Some(acme)) = (cert.validation_method, &self.acme) {
            cert.validation_records = acme.records(method, &cert.domains);
        }
        Ok(cert)
    }

    pub async fn list(&self, filter: &ListFilter) -> Result<Vec<Certificate>> {
        Ok(self.store.list(filter, OffsetDateTime::now_utc()).await?)
    }

    pub async fn pem(&self, id_or_name: &str, version: Option<u32>) -> Result<CertificatePem> {
        let cert = self.find(id_or_name).await?;
        let number = version.unwrap_or(cert.current_version);
        let stored = self.version(&cert.id, number).await?;
        Ok(CertificatePem {
            id: cert.id.to_string(),
            version: number,
            certificate: stored.cert_pem,
            chain: stored.chain_pem,
        })
    }

    pub async fn export(&self, id_or_name: &str, req: ExportRequest) -> Result<Exported> {
        let cert = self.find(id_or_name).await?;
        let number = req.version.unwrap_or(cert.current_version);
        let stored = self.version(&cert.id, number).await?;
        let key =
            self.store
                .open_version_key(&cert.id, &stored)?
                .ok_or(InventoryError::KeyNotHeld {
                    id: cert.id,
                    operation: Operation::Export,
                })?;
        let ExportRequest {
            passphrase, format, ..
        } = req;
        Ok(blocking(move || {
            export::export(
                format,
                &stored.cert_pem,
                &stored.chain_pem,
                &key,
                passphrase.as_str(),
            )
        })
        .await??)
    }

    /// One stored version of a certificate.
    pub(super) async fn version(&self, id: &CertificateId, number: u32) -> Result<StoredVersion> {
        self.store.version(id, number).await?.ok_or_else(|| {
            InventoryError::NotFound(Missing::Version {
                id: id.clone(),
                version: number,
            })
        })
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
            validation: None,
            version: Some(issued.into_version(Some(self.ca), key)),
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

/// A certificate's name: the one given, else its first domain. The flag says it was
/// defaulted, which lets the store make it unique instead of refusing it.
fn resolve_name(name: Option<Name>, domains: &[Domain]) -> Result<(String, bool)> {
    match (name, domains.first()) {
        (Some(name), _) => Ok((name.into_string(), false)),
        (None, Some(first)) => Ok((first.to_string(), true)),
        // A CSR or an imported certificate without any name.
        (None, None) => Err(InventoryError::invalid("name", "no domains")),
    }
}

/// The most CSRs one `sign_batch` takes: its transaction stays short, its body under the
/// default request limit (a P-256 CSR is about 0.5 KiB).
pub(super) const MAX_SIGN_BATCH: usize = 1000;

/// What a signed certificate is answered with besides its record.
struct SignedPem {
    certificate_pem: String,
    chain_pem: String,
}

impl SignedPem {
    fn signed(self, certificate: Certificate) -> Signed {
        Signed {
            certificate,
            certificate_pem: self.certificate_pem,
            chain_pem: self.chain_pem,
        }
    }
}

/// Checks a CSR and signs it: the record to store and the PEM to answer. CPU only (the CSR's
/// signature check and ours), no I/O.
fn sign_one(
    req: SignRequest,
    defaults: &Defaults,
    authority: &Authority,
    now: OffsetDateTime,
) -> Result<(NewCertificate, SignedPem)> {
    let csr = ca::parse_csr(&req.csr)?;
    let name = resolve_name(req.name, &csr.domains)?;
    let validity = defaults
        .validity(req.validity)
        .map_err(|e| InventoryError::invalid("validity", e))?;
    let request = LeafRequest {
        domains: &csr.domains,
        validity,
        client_auth: req.client_auth,
    };
    let issued = authority.issue(&request, &csr.public_key, now)?;
    let pem = SignedPem {
        certificate_pem: issued.cert_pem.clone(),
        chain_pem: issued.chain_pem.clone(),
    };
    let issuance = PrivateIssuance {
        name,
        ca: req.ca.unwrap_or_else(|| defaults.ca.clone()),
        domains: csr.domains,
        key_algorithm: csr.key_algorithm,
        validity,
        client_auth: req.client_auth,
        tags: req.tags.into_inner(),
        renew_before: None,
        days_before_expiry: req.days_before_expiry.map(DaysBeforeExpiry::get),
        maintenance_window: None,
    };
    Ok((issuance.record(issued, None, now), pem))
}

impl Issued {
    fn lifetime(&self) -> Lifetime {
        Lifetime {
            not_before: self.not_before,
            not_after: self.not_after,
        }
    }

    /// `cert` as it reads once this is its next version (what its event reports).
    fn next_version_of(&self, cert: &Certificate) -> Certificate {
        let mut after = cert.clone();
        after.current_version += 1;
        after.serial = Some(self.serial.clone());
        after.not_before = Some(self.not_before);
        after.not_after = Some(self.not_after);
        after
    }

    /// The version to store: signed by `issuer_ca` when it is one of ours, with the key when
    /// we hold it.
    fn into_version(
        self,
        issuer_ca: Option<String>,
        key: Option<Zeroizing<Vec<u8>>>,
    ) -> NewVersion {
        NewVersion {
            serial: self.serial,
            issuer_ca,
            not_before: self.not_before,
            not_after: self.not_after,
            cert_pem: self.cert_pem,
            chain_pem: self.chain_pem,
            key,
        }
    }
}

/// How often a revocation reads again when renewals keep storing versions under it.
const REVOKE_ATTEMPTS: u32 = 5;

/// One entry of [`Inventory`]'s set of certificates being issued through ACME, removed when
/// the issuance ends (even by a panic).
struct Issuing<'a> {
    set: &'a std::sync::Mutex<HashSet<CertificateId>>,
    id: CertificateId,
}

impl<'a> Issuing<'a> {
    fn start(
        set: &'a std::sync::Mutex<HashSet<CertificateId>>,
        id: &CertificateId,
    ) -> Option<Self> {
        lock::lock(set).insert(id.clone()).then(|| Self {
            set,
            id: id.clone(),
        })
    }
}

impl Drop for Issuing<'_> {
    fn drop(&mut self) {
        lock::lock(self.set).remove(&self.id);
    }
}

/// Whether the ACME CA refused a revocation because the certificate is revoked already
/// (RFC 8555 §7.6 `alreadyRevoked`).
fn already_revoked(err: &crate::acme::AcmeError) -> bool {
    matches!(
        err,
        crate::acme::AcmeError::Protocol {
            source: instant_acme::Error::Api(problem),
            ..
        } if problem.r#type.as_deref() == Some("urn:ietf:params:acme:error:alreadyRevoked")
    )
}
