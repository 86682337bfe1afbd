//! DNS validation through CNAME delegation: publishing challenge TXT records in the validation
//! zone, and checking that the customers' CNAMEs point into it.
//!
//! The user creates `_acme-challenge.<domain> CNAME <label>.<zone>.` once (see
//! [`super::delegations`]); from then on certkeeper answers every DNS-01 challenge for that
//! domain by publishing a TXT record at `<label>.<zone>.`, in a zone it controls. One
//! [`DnsValidator`] does both halves:
//!
//! - **Checking delegations** ([`DnsValidator::check_delegations`]): a stub resolver (the
//!   configured nameservers, else the system's) is asked for the CNAME itself (query type
//!   CNAME, so it is not followed) at each record's name. The resolver caches nothing: a
//!   certificate waits in `pending-validation` until the record appears, and a cached negative
//!   answer would only delay that.
//! - **Publishing** ([`DnsValidator::publish`] / [`DnsValidator::withdraw`]) through one of
//!   three publishers:
//!   - *embedded*: certkeeper is the zone's authoritative server ([`super::zone`]);
//!   - *rfc2136*: a dynamic UPDATE signed with TSIG to an existing primary ([`super::rfc2136`]);
//!   - *command*: `argv... add|remove <name> <value>`, run without a shell ([`crate::argv`]),
//!     60 s at most.
//!
//! Two values at one name must coexist (a wildcard and its base validate through the same
//! CNAME at the same time, and two orders for one name may overlap), so every publisher adds
//! to the RRset and removes only the exact value, never the whole RRset.
//!
//! Names are compared case-insensitively and accepted with or without the final dot; what is
//! published is always the lower-case absolute name (`lbl.acme.example.`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::op::update_message;
use hickory_resolver::proto::rr::rdata::{CNAME, TXT};
use hickory_resolver::proto::rr::{Name, RData, Record, RecordSet, RecordType};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::rfc2136::{self, Rfc2136};
use super::zone::{self, EmbeddedZone};
use crate::argv::{Argv, RunError};
use crate::config::{DnsValidation, Publisher};
use crate::model::ValidationRecord;

/// How long a publisher command may run.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// How many delegation lookups run at once.
const CONCURRENT_LOOKUPS: usize = 8;
/// The longest character-string of a TXT record.
const TXT_CHUNK: usize = 255;

/// What went wrong while publishing, withdrawing or checking DNS records. Each message names
/// the server, name or file involved.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// The `[validation.dns]` settings cannot work (bad zone, empty command, ...).
    #[error("DNS validation setup: {0}")]
    Config(String),
    /// The TSIG key file cannot be read or does not hold a base64 secret.
    #[error("TSIG key file {path}: {reason}")]
    KeyFile {
        /// The configured key file.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
    /// The embedded authoritative server cannot listen.
    #[error("embedded DNS server cannot listen on {protocol} {listen}: {source}")]
    Bind {
        /// `"UDP"` or `"TCP"`.
        protocol: &'static str,
        /// The configured address.
        listen: SocketAddr,
        /// The bind error.
        source: std::io::Error,
    },
    /// The resolver cannot be built (e.g. no usable /etc/resolv.conf and no nameservers).
    #[error("cannot set up the DNS resolver: {0}")]
    Resolver(String),
    /// A name is not a valid domain name.
    #[error("invalid DNS name {name:?}: {reason}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A TXT value cannot be published (empty, or not printable ASCII).
    #[error("invalid TXT value {value:?}: {reason}")]
    InvalidValue {
        /// The value as given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A record to publish or withdraw is not inside the validation zone.
    #[error("{name} is outside the validation zone {zone}")]
    OutsideZone {
        /// The record's name (absolute).
        name: String,
        /// The validation zone (absolute).
        zone: String,
    },
    /// A delegation record of a type other than CNAME was given to check.
    #[error("cannot check {name}: record type {rtype} is not supported (only CNAME)")]
    UnsupportedRecord {
        /// The record's name.
        name: String,
        /// Its type.
        rtype: String,
    },
    /// Resolving a CNAME failed for another reason than "no such record" (timeout, SERVFAIL,
    /// ...): whether the delegation exists is unknown.
    #[error("resolving the CNAME at {name} failed: {reason}")]
    Lookup {
        /// The name looked up.
        name: String,
        /// The resolver's error.
        reason: String,
    },
    /// The RFC 2136 server answered with an error response code.
    #[error("rfc2136 update of {name} to {server} refused: {rcode}{hint}")]
    UpdateRefused {
        /// The primary server.
        server: SocketAddr,
        /// The name being changed.
        name: String,
        /// The response code's mnemonic (`NOTAUTH`, `REFUSED`, ...), with the TSIG error when
        /// the response carries one (`NOTAUTH (TSIG BADSIG)`).
        rcode: String,
        /// What the code usually means here (starts with `": "`, or empty).
        hint: String,
    },
    /// The RFC 2136 exchange itself failed (connection, timeout, bad or unsigned response).
    #[error("rfc2136 update of {name} to {server} failed: {reason}")]
    UpdateFailed {
        /// The primary server.
        server: SocketAddr,
        /// The name being changed.
        name: String,
        /// What failed.
        reason: String,
    },
    /// The embedded server stopped serving while the daemon ran.
    #[error("embedded DNS server for {zone} stopped: {reason}")]
    Stopped {
        /// The validation zone.
        zone: String,
        /// What ended it.
        reason: String,
    },
    /// The publisher command could not be run, timed out, or exited unsuccessfully.
    #[error("publisher command `{command}` failed: {reason}")]
    Command {
        /// The command line that was run: the program (`...` standing for its fixed
        /// arguments, which are not shown), the action, the name and the value.
        command: String,
        /// Exit status and stderr, or why it could not run.
        reason: RunError,
    },
}

impl DnsError {
    /// A failure that may pass by itself (the server did not answer, a lookup failed, the
    /// publisher command failed or timed out), not a setting or a value that can never work.
    pub fn is_passing(&self) -> bool {
        matches!(
            self,
            Self::Lookup { .. }
                | Self::UpdateFailed { .. }
                | Self::Stopped { .. }
                | Self::Command { .. }
        )
    }
}

/// A delegation that is not (yet) in place: the record the user must create, and what a
/// resolver sees at its name instead.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DelegationProblem {
    /// The expected record (`_acme-challenge.<domain>. CNAME <label>.<zone>.`).
    pub record: ValidationRecord,
    /// The CNAME target found at the name, or `None` when there is no CNAME there.
    pub found: Option<String>,
}

/// Publishes DNS-01 TXT records in the validation zone and checks `_acme-challenge` CNAME
/// delegations; see the module documentation. Share it behind an `Arc`: every method takes
/// `&self` and may run concurrently.
pub struct DnsValidator {
    /// The validation zone, absolute and lower case (`acme.example.`).
    zone: Name,
    /// TTL of the TXT records published.
    ttl: u32,
    resolver: TokioResolver,
    publisher: Backend,
    /// Stops the embedded server when the validator is dropped (it also stops on the
    /// shutdown token given to [`DnsValidator::start`]).
    _server: Option<DropGuard>,
    /// The task serving the embedded zone, until the daemon takes it to supervise.
    served: std::sync::Mutex<Option<zone::Served>>,
}

impl std::fmt::Debug for DnsValidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let publisher = match &self.publisher {
            Backend::Embedded(_) => "embedded".to_owned(),
            Backend::Rfc2136(update) => format!("rfc2136 to {}", update.server),
            Backend::Command(argv) => format!("command {}", argv.shown()),
        };
        f.debug_struct("DnsValidator")
            .field("zone", &self.zone.to_string())
            .field("ttl", &self.ttl)
            .field("publisher", &publisher)
            .finish_non_exhaustive()
    }
}

/// How TXT records reach the zone.
enum Backend {
    Embedded(Box<EmbeddedZone>),
    Rfc2136(Rfc2136),
    Command(Argv),
}

impl DnsValidator {
    /// Starts the embedded authoritative server when the publisher is Embedded (binds UDP and
    /// TCP on `listen`; serves ONLY the validation zone: SOA, NS, and the TXT records
    /// published; REFUSED for names outside it), reads the TSIG key for Rfc2136 (error if
    /// unreadable or not base64), builds the resolver (configured nameservers, else the
    /// system's).
    ///
    /// The embedded server stops when `shutdown` is cancelled or the validator is dropped.
    pub async fn start(
        config: &DnsValidation,
        shutdown: CancellationToken,
    ) -> Result<Self, DnsError> {
        let zone_text = absolute(&config.zone);
        if zone_text == "." {
            return Err(DnsError::Config(
                "the validation zone must not be the root".into(),
            ));
        }
        let zone = parse_name(&zone_text)?;
        let resolver = build_resolver(&config.nameservers)?;
        let mut served = None;
        let (publisher, server) = match &config.publisher {
            Publisher::Embedded { listen } => {
                let token = shutdown.child_token();
                let (embedded, task) =
                    zone::start(&zone, config.ttl, *listen, token.clone()).await?;
                served = Some(task);
                (
                    Backend::Embedded(Box::new(embedded)),
                    Some(token.drop_guard()),
                )
            }
            Publisher::Rfc2136 {
                server,
                key_name,
                key_file,
            } => {
                let signer = rfc2136::read_tsig_key(key_name, key_file)?;
                (
                    Backend::Rfc2136(Rfc2136 {
                        server: *server,
                        signer,
                    }),
                    None,
                )
            }
            Publisher::Command { argv } => (Backend::Command(argv.clone()), None),
        };
        Ok(Self {
            zone,
            ttl: config.ttl,
            resolver,
            publisher,
            _server: server,
            served: std::sync::Mutex::new(served),
        })
    }

    /// The task serving the embedded zone (once; `None` for the other publishers), for the
    /// daemon to supervise: it ends only when the server stops.
    pub fn take_server(&self) -> Option<tokio::task::JoinHandle<Result<(), DnsError>>> {
        crate::lock::lock(&self.served).take()
    }

    /// The validation zone, absolute and lower case (`acme.example.`).
    pub fn zone(&self) -> String {
        self.zone.to_string()
    }

    /// For each record, asks the resolver for the CNAME at `record.name` (query type CNAME,
    /// not following it) and returns the records that are missing or point elsewhere, each
    /// with what was found. The lookups run concurrently (a few at a time); problems come back in the order of
    /// `records`. A lookup that fails for another reason than "no such record" (timeout,
    /// SERVFAIL) is an error: the state of the delegation is then unknown.
    pub async fn check_delegations(
        &self,
        records: &[ValidationRecord],
    ) -> Result<Vec<DelegationProblem>, DnsError> {
        let mut lookups = tokio::task::JoinSet::new();
        let permits = Arc::new(tokio::sync::Semaphore::new(CONCURRENT_LOOKUPS));
        for (index, record) in records.iter().enumerate() {
            if !record.rtype.eq_ignore_ascii_case("CNAME") {
                return Err(DnsError::UnsupportedRecord {
                    name: record.name.clone(),
                    rtype: record.rtype.clone(),
                });
            }
            let name = parse_name(&absolute(&record.name))?;
            let resolver = self.resolver.clone();
            let permits = permits.clone();
            lookups.spawn(async move {
                let _permit = permits.acquire_owned().await;
                (index, lookup_cname(&resolver, name).await)
            });
        }
        let mut found: Vec<Option<Option<String>>> = vec![None; records.len()];
        while let Some(joined) = lookups.join_next().await {
            let (index, result) =
                joined.map_err(|e| DnsError::Resolver(format!("lookup task failed: {e}")))?;
            if let Some(slot) = found.get_mut(index) {
                *slot = Some(result?);
            }
        }
        Ok(records
            .iter()
            .zip(found)
            .filter_map(|(record, found)| {
                let found = found.flatten();
                let expected = absolute(&record.value);
                match &found {
                    Some(target) if *target == expected => None,
                    _ => Some(DelegationProblem {
                        record: record.clone(),
                        found,
                    }),
                }
            })
            .collect())
    }

    /// Adds the TXT value `value` at `name` (an FQDN inside the zone, trailing dot) with the
    /// configured TTL, keeping other values at that name (a wildcard and its base validate
    /// through one name at the same time, so two values must coexist). Publishing a value
    /// that is already there is not an error.
    pub async fn publish(&self, name: &str, value: &str) -> Result<(), DnsError> {
        let (owner, text) = self.owner(name)?;
        let txt = txt_rdata(value)?;
        match &self.publisher {
            Backend::Embedded(zone) => {
                zone.add(Record::from_rdata(owner, self.ttl, RData::TXT(txt)))
                    .await;
                Ok(())
            }
            Backend::Rfc2136(update) => {
                let record = Record::from_rdata(owner, self.ttl, RData::TXT(txt));
                let message = update_message::append(
                    RecordSet::from(record),
                    self.zone.clone(),
                    false,
                    false,
                );
                update.send(message, &text).await
            }
            Backend::Command(argv) => run_command(argv, "add", &text, value).await,
        }
    }

    /// Removes exactly that TXT value at `name`, leaving any other values (never the whole
    /// RRset: concurrent orders for the same name must not break each other). Withdrawing a
    /// value that is not there is not an error.
    pub async fn withdraw(&self, name: &str, value: &str) -> Result<(), DnsError> {
        let (owner, text) = self.owner(name)?;
        let txt = txt_rdata(value)?;
        match &self.publisher {
            Backend::Embedded(zone) => {
                zone.remove(Record::from_rdata(owner, self.ttl, RData::TXT(txt)))
                    .await;
                Ok(())
            }
            Backend::Rfc2136(update) => {
                // RFC 2136 §2.5.4: TTL 0, class NONE (set by delete_by_rdata).
                let record = Record::from_rdata(owner, 0, RData::TXT(txt));
                let message = update_message::delete_by_rdata(
                    RecordSet::from(record),
                    self.zone.clone(),
                    false,
                );
                update.send(message, &text).await
            }
            Backend::Command(argv) => run_command(argv, "remove", &text, value).await,
        }
    }

    /// `name` as an absolute lower-case [`Name`] and text, checked to be inside the zone.
    fn owner(&self, name: &str) -> Result<(Name, String), DnsError> {
        let text = absolute(name);
        let owner = parse_name(&text)?;
        if !self.zone.zone_of(&owner) {
            return Err(DnsError::OutsideZone {
                name: text,
                zone: self.zone.to_string(),
            });
        }
        Ok((owner, text))
    }
}

/// `name` lower case with exactly one final dot (`"WWW.Example.com"` → `"www.example.com."`).
pub(super) fn absolute(name: &str) -> String {
    let trimmed = name.trim().trim_end_matches('.');
    format!("{}.", trimmed.to_ascii_lowercase())
}

/// Parses an absolute name (as made by [`absolute`]).
pub(super) fn parse_name(text: &str) -> Result<Name, DnsError> {
    let invalid = |reason: String| DnsError::InvalidName {
        name: text.to_owned(),
        reason,
    };
    if text.starts_with('.') || text.contains("..") {
        return Err(invalid("empty label".into()));
    }
    let name = Name::from_ascii(text).map_err(|e| invalid(e.to_string()))?;
    if !name.is_fqdn() {
        return Err(invalid("not an absolute name".into()));
    }
    Ok(name)
}

/// The TXT rdata for `value`, split into character-strings of at most 255 bytes.
fn txt_rdata(value: &str) -> Result<TXT, DnsError> {
    let invalid = |reason: &str| DnsError::InvalidValue {
        value: value.to_owned(),
        reason: reason.to_owned(),
    };
    if value.is_empty() {
        return Err(invalid("empty"));
    }
    if !value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(invalid("only printable ASCII is published"));
    }
    // ASCII only, so every byte boundary is a char boundary.
    let chunks = value
        .as_bytes()
        .chunks(TXT_CHUNK)
        .map(|chunk| String::from_utf8_lossy(chunk).into_owned())
        .collect();
    Ok(TXT::new(chunks))
}

/// A resolver on `nameservers` (UDP, then TCP on truncation or error), or the system's when
/// empty. Nothing is cached, positive or negative.
fn build_resolver(nameservers: &[SocketAddr]) -> Result<TokioResolver, DnsError> {
    let mut builder = if nameservers.is_empty() {
        TokioResolver::builder_tokio().map_err(|e| {
            DnsError::Resolver(format!(
                "no nameservers configured and the system's cannot be read: {e}"
            ))
        })?
    } else {
        let servers = nameservers
            .iter()
            .map(|addr| {
                let mut udp = ConnectionConfig::udp();
                udp.port = addr.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = addr.port();
                NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
            })
            .collect();
        TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(servers),
            TokioRuntimeProvider::default(),
        )
    };
    let options = builder.options_mut();
    options.cache_size = 0;
    options.positive_max_ttl = Some(Duration::ZERO);
    options.negative_max_ttl = Some(Duration::ZERO);
    options.use_hosts_file = ResolveHosts::Never;
    options.try_tcp_on_error = true;
    builder
        .build()
        .map_err(|e| DnsError::Resolver(e.to_string()))
}

/// The CNAME target at `name` (absolute, lower case), `None` when the name has no CNAME
/// (NXDOMAIN or no data).
async fn lookup_cname(resolver: &TokioResolver, name: Name) -> Result<Option<String>, DnsError> {
    match resolver.lookup(name.clone(), RecordType::CNAME).await {
        Ok(lookup) => Ok(lookup
            .answers()
            .iter()
            .find_map(|record| match &record.data {
                RData::CNAME(CNAME(target)) if record.name == name => {
                    Some(absolute(&target.to_ascii()))
                }
                _ => None,
            })),
        Err(e) if e.is_no_records_found() => Ok(None),
        Err(e) => Err(DnsError::Lookup {
            name: name.to_string(),
            reason: e.to_string(),
        }),
    }
}

/// Runs `argv... action name value` with [`COMMAND_TIMEOUT`].
async fn run_command(argv: &Argv, action: &str, name: &str, value: &str) -> Result<(), DnsError> {
    argv.run(&[action, name, value], &[], None, COMMAND_TIMEOUT)
        .await
        .map_err(|reason| DnsError::Command {
            command: format!("{} {action} {name} {value}", argv.shown()),
            reason,
        })
}
