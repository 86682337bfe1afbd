//! Certificate authority operations, and the decrypted signing CAs kept in memory.

use super::*;

impl Inventory {
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

    pub(super) async fn load_authorities(&self) -> Result<()> {
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
            )?
            .with_published(self.published.as_ref().map(|b| b.published(&info.name)));
            loaded.insert(info.name.clone(), Slot::Active(Arc::new(authority)));
        }
        *lock::write(&self.authorities) = loaded;
        Ok(())
    }

    pub(super) fn authority(&self, name: &str) -> Result<Arc<Authority>> {
        let map = lock::read(&self.authorities);
        match map.get(name) {
            Some(Slot::Active(authority)) => Ok(authority.clone()),
            Some(Slot::Disabled) => Err(InventoryError::CaUnavailable {
                name: name.to_owned(),
                state: CaState::Disabled,
            }),
            Some(Slot::Pending) => Err(InventoryError::CaUnavailable {
                name: name.to_owned(),
                state: CaState::PendingCertificate,
            }),
            None => Err(missing_ca(name)),
        }
    }

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
        let stored = self.store.ca(name).await?.ok_or_else(|| missing_ca(name))?;
        Ok(CaDetails {
            ca: stored.info,
            certificate_pem: stored.cert_pem,
            chain_pem: stored.chain_pem,
            csr_pem: stored.csr_pem,
        })
    }

    pub async fn create_ca(&self, req: CaRequest) -> Result<CaDetails> {
        let name = req.name.into_string();
        let mut spec = CaSpec {
            common_name: req
                .common_name
                .unwrap_or_else(|| format!("certkeeper {name} CA")),
            name,
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
    pub(super) fn clamp_to_parent(&self, spec: &CaSpec, explicit: Option<Span>) -> Result<Span> {
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
            return Err(InventoryError::CaExists { name: spec.name });
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
    pub async fn install_ca(&self, name: &str, req: InstallCaRequest) -> Result<CaDetails> {
        let stored = self.store.ca(name).await?.ok_or_else(|| missing_ca(name))?;
        if stored.info.state != CaState::PendingCertificate {
            return Err(InventoryError::CaInstalled {
                name: name.to_owned(),
            });
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

    /// The CA's current CRL (DER), re-signed first when it is stale. A disabled CA cannot
    /// re-sign (its key stays sealed): its last CRL is given until its nextUpdate, never after.
    pub async fn crl(&self, name: &str) -> Result<Vec<u8>> {
        let now = OffsetDateTime::now_utc();
        let stored = self.store.ca(name).await?.ok_or_else(|| missing_ca(name))?;
        if let (false, Some(der)) = (crl_due(stored.crl_next_update, now), &stored.crl_der) {
            return Ok(der.clone());
        }
        match self.refresh_crl(name, now).await {
            Err(InventoryError::CaUnavailable {
                state: CaState::Disabled,
                ..
            }) if crl_current(stored.crl_next_update, now) => stored
                .crl_der
                .ok_or_else(|| InventoryError::Internal(Internal::NoCrl(name.to_owned()))),
            Err(err) => Err(err),
            Ok(()) => {
                let stored = self.store.ca(name).await?.ok_or_else(|| missing_ca(name))?;
                stored
                    .crl_der
                    .ok_or_else(|| InventoryError::Internal(Internal::NoCrl(name.to_owned())))
            }
        }
    }

    /// A CA's own certificate (DER), as its `[pki]` caIssuers URL serves it.
    pub async fn ca_certificate_der(&self, name: &str) -> Result<Vec<u8>> {
        let stored = self.store.ca(name).await?.ok_or_else(|| missing_ca(name))?;
        let pem = stored
            .cert_pem
            .ok_or_else(|| InventoryError::CaUnavailable {
                name: name.to_owned(),
                state: CaState::PendingCertificate,
            })?;
        crate::pem::certificates(&pem)
            .into_iter()
            .next()
            .map(|der| der.to_vec())
            .ok_or_else(|| InventoryError::Internal(Internal::CaCertificate(name.to_owned())))
    }

    pub(super) async fn refresh_crl(&self, name: &str, now: OffsetDateTime) -> Result<()> {
        let authority = self.authority(name)?;
        let stored = self.store.ca(name).await?.ok_or_else(|| missing_ca(name))?;
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
}

/// Whether a CRL valid until `next_update` is to be re-signed at `now`: when there is none, or
/// less than half of [`CRL_VALIDITY`] is left. Whoever fetches one then has days before it
/// runs out, and a CRL is never handed out past its nextUpdate.
fn crl_due(next_update: Option<OffsetDateTime>, now: OffsetDateTime) -> bool {
    next_update.is_none_or(|next| next - now <= CRL_VALIDITY.time() / 2)
}

/// Whether a CRL valid until `next_update` may still be relied on at `now`.
fn crl_current(next_update: Option<OffsetDateTime>, now: OffsetDateTime) -> bool {
    next_update.is_some_and(|next| now < next)
}

/// A CA as the inventory holds it in memory.
pub(super) enum Slot {
    /// Ready to sign: key decrypted, certificate parsed.
    Active(Arc<Authority>),
    Disabled,
    /// An external CA waiting for `ca install`.
    Pending,
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
fn check_ca_certificate(req: &InstallCaRequest, our_spki: &[u8]) -> Result<InstalledCa> {
    let bad = |m: String| InventoryError::invalid("certificate", m);
    let blocks =
        crate::pem::blocks(&req.certificate).map_err(|e| bad(format!("certificate {e}")))?;
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
        let blocks = crate::pem::blocks(chain).map_err(|e| bad(format!("chain {e}")))?;
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

fn missing_ca(name: &str) -> InventoryError {
    InventoryError::NotFound(Missing::Ca(name.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crl_is_re_signed_once_half_its_validity_is_gone_and_never_served_late() {
        let now = OffsetDateTime::now_utc();
        let left = |d: time::Duration| Some(now + d);
        let half = CRL_VALIDITY.time() / 2;
        assert!(crl_due(None, now), "no CRL yet");
        assert!(!crl_due(left(CRL_VALIDITY.time()), now), "just signed");
        assert!(!crl_due(left(half + time::Duration::minutes(1)), now));
        assert!(crl_due(left(half), now));
        assert!(crl_due(left(time::Duration::minutes(1)), now));
        assert!(crl_due(left(-time::Duration::minutes(1)), now), "expired");

        // What a disabled CA may still give: only a CRL before its nextUpdate.
        assert!(crl_current(left(time::Duration::minutes(1)), now));
        assert!(!crl_current(left(time::Duration::ZERO), now));
        assert!(!crl_current(left(-time::Duration::minutes(1)), now));
        assert!(!crl_current(None, now));
    }
}
