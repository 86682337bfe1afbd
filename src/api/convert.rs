//! Wire types in, the inventory's checked requests out.
//!
//! Each `/v1` body becomes the request type the inventory takes, through the constructors of
//! [`crate::inventory::requests`], which name the field at fault. Decoding the wire format
//! (files as PEM or base64 DER) happens here too: the inventory only ever sees bytes.

use zeroize::Zeroizing;

use super::types::{
    CreateCa, ExportRequest, ImportCertificate, InstallCa, RequestCertificate, SignRequest,
    TagsRequest, file_bytes,
};
use crate::inventory::{self, InventoryError, Name, Passphrase, Source, Tags, requests};
use crate::span::bounds;

type Result<T> = std::result::Result<T, InventoryError>;

impl TryFrom<RequestCertificate> for inventory::CertificateRequest {
    type Error = InventoryError;

    fn try_from(req: RequestCertificate) -> Result<Self> {
        let source = match req.issuer {
            Some(issuer) => {
                if req.ca.is_some() || req.validity.is_some() || req.client_auth {
                    return Err(InventoryError::invalid(
                        "issuer",
                        "ca, validity and client_auth are for private certificates; an ACME CA decides these (see its profile)",
                    ));
                }
                Source::Public {
                    issuer,
                    validation: req
                        .validation
                        .unwrap_or(crate::model::ValidationMethod::Dns),
                }
            }
            None => Source::Private {
                ca: req.ca,
                validity: requests::span_within("validity", req.validity, bounds::VALIDITY)?,
                client_auth: req.client_auth,
            },
        };
        Ok(Self {
            domains: requests::domains(&req.domains)?,
            tags: Tags::new(req.tags)?,
            window: requests::window(req.window, req.window_duration, req.window_time_zone)?,
            name: req.name.map(Name::certificate).transpose()?,
            source,
            key_algorithm: req.key_algorithm,
            renew_before: requests::span_within(
                "renew_before",
                req.renew_before,
                bounds::RENEW_BEFORE,
            )?,
            days_before_expiry: req
                .days_before_expiry
                .map(requests::days_before_expiry)
                .transpose()?,
        })
    }
}

impl TryFrom<SignRequest> for inventory::SignRequest {
    type Error = InventoryError;

    fn try_from(req: SignRequest) -> Result<Self> {
        Ok(Self {
            tags: Tags::new(req.tags)?,
            name: req.name.map(Name::certificate).transpose()?,
            csr: file_bytes(&req.csr),
            ca: req.ca,
            validity: requests::span_within("validity", req.validity, bounds::VALIDITY)?,
            client_auth: req.client_auth,
            days_before_expiry: req
                .days_before_expiry
                .map(requests::days_before_expiry)
                .transpose()?,
        })
    }
}

/// A batch: each request converted, an error naming the one at fault (`requests[i]`).
pub(super) fn sign_batch(requests: Vec<SignRequest>) -> Result<Vec<inventory::SignRequest>> {
    requests
        .into_iter()
        .enumerate()
        .map(|(i, req)| req.try_into().map_err(|e: InventoryError| e.in_request(i)))
        .collect()
}

impl TryFrom<ImportCertificate> for inventory::ImportRequest {
    type Error = InventoryError;

    fn try_from(req: ImportCertificate) -> Result<Self> {
        Ok(Self {
            tags: Tags::new(req.tags)?,
            name: req.name.map(Name::certificate).transpose()?,
            certificate: file_bytes(&req.certificate),
            private_key: Zeroizing::new(file_bytes(&req.private_key)),
            chain: req.chain.as_deref().map(file_bytes),
            passphrase: req.passphrase,
            allow_expired: req.allow_expired,
            reimport: req.certificate_id,
            days_before_expiry: req
                .days_before_expiry
                .map(requests::days_before_expiry)
                .transpose()?,
        })
    }
}

impl TryFrom<ExportRequest> for inventory::ExportRequest {
    type Error = InventoryError;

    fn try_from(req: ExportRequest) -> Result<Self> {
        Ok(Self {
            passphrase: Passphrase::new(req.passphrase)?,
            format: req.format,
            version: req.version,
        })
    }
}

impl TryFrom<TagsRequest> for inventory::TagChange {
    type Error = InventoryError;

    fn try_from(req: TagsRequest) -> Result<Self> {
        Ok(Self {
            set: Tags::new(req.set)?,
            remove: req.remove,
        })
    }
}

impl TryFrom<CreateCa> for inventory::CaRequest {
    type Error = InventoryError;

    fn try_from(req: CreateCa) -> Result<Self> {
        Self {
            name: Name::ca(req.name)?,
            parent: req.parent,
            external: req.external,
            common_name: requests::common_name(req.common_name)?,
            key_algorithm: req.key_algorithm,
            validity: requests::span_within("validity", req.validity, bounds::VALIDITY)?,
            path_length: req.path_length,
            permitted_dns: req.permitted_dns,
        }
        .check()
    }
}

impl From<InstallCa> for inventory::InstallCaRequest {
    fn from(req: InstallCa) -> Self {
        Self {
            certificate: file_bytes(&req.certificate),
            chain: req.chain.as_deref().map(file_bytes),
        }
    }
}
