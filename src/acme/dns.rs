//! DNS-01 through CNAME delegation: publishing challenge TXT records in the validation zone,
//! and checking that the customers' `_acme-challenge` CNAMEs point into it.
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
//!   - *embedded*: certkeeper is the zone's authoritative server (acme-dns style; the zone's NS
//!     points at it). A hickory-server [`Server`] serves one in-memory zone
//!     ([`InMemoryZoneHandler`] in a [`Catalog`]) over UDP and TCP: its SOA (serial bumped on
//!     every change), `NS ns.<zone>.`, and the TXT records published. Names outside the zone
//!     get REFUSED. The zone is changed in memory directly; nothing is persisted (a challenge
//!     lives for seconds, and a restart re-publishes what an order still needs).
//!   - *rfc2136*: a dynamic UPDATE signed with TSIG (HMAC-SHA256) to an existing primary
//!     (BIND, Knot, PowerDNS), over TCP. Publishing adds one RR to the RRset; withdrawing
//!     deletes exactly that RR by its rdata. The response code must be NOERROR and the
//!     response must carry a valid TSIG signature.
//!   - *command*: `argv... add|remove <name> <value>`, run without a shell, 60 s at most.
//!
//! Two values at one name must coexist (a wildcard and its base validate through the same
//! CNAME at the same time, and two orders for one name may overlap), so every publisher adds
//! to the RRset and removes only the exact value, never the whole RRset.
//!
//! Names are compared case-insensitively and accepted with or without the final dot; what is
//! published is always the lower-case absolute name (`lbl.acme.example.`).
//!
//! Why the RFC 2136 exchange is done here rather than with hickory's `Client`: hickory's
//! `DnsMultiplexer` can only sign with TSIG when hickory-net is built with its own dnssec
//! feature, and it verifies the response's TSIG before returning the response, so a server
//! that rejects the key (NOTAUTH with TSIG error BADSIG/BADKEY and an empty MAC) surfaces as
//! an opaque verification error and the response code is lost. We build the message with
//! hickory-proto's `update_message`, sign it with its [`TSigner`], send it over TCP, read the
//! response code first, and verify the response signature (hickory's [`TSigVerifier`]) only
//! for a NOERROR answer.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::op::{Message, ResponseCode, update_message};
use hickory_resolver::proto::rr::rdata::tsig::TsigAlgorithm;
use hickory_resolver::proto::rr::rdata::{CNAME, NS, SOA, TXT};
use hickory_resolver::proto::rr::{
    LowerName, Name, RData, Record, RecordSet, RecordType, RrKey, TSigVerifier, TSigner,
};
use hickory_server::Server;
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::Mutex;
use tokio_util::sync::{CancellationToken, DropGuard};
use zeroize::Zeroizing;

use super::ValidationRecord;
use crate::config::{DnsValidation, Publisher};

/// How long a publisher command may run.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one RFC 2136 update (connect, send, answer) may take.
const UPDATE_TIMEOUT: Duration = Duration::from_secs(30);
/// TSIG fudge: how far the server's clock may be from ours, in seconds.
const TSIG_FUDGE: u16 = 300;
/// How long the embedded server keeps an idle TCP connection.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
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
    /// The publisher command could not be run, timed out, or exited unsuccessfully.
    #[error("publisher command `{command}` failed: {reason}")]
    Command {
        /// The command line that was run: the program (`...` standing for its fixed
        /// arguments, which are not shown), the action, the name and the value.
        command: String,
        /// Exit status and stderr, or why it could not run.
        reason: String,
    },
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
}

impl std::fmt::Debug for DnsValidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let publisher = match &self.publisher {
            Backend::Embedded(_) => "embedded".to_owned(),
            Backend::Rfc2136(update) => format!("rfc2136 to {}", update.server),
            Backend::Command(argv) => format!("command {}", shown_command(argv)),
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
    Command(Vec<String>),
}

/// The zone served by the embedded server.
struct EmbeddedZone {
    handler: Arc<InMemoryZoneHandler>,
    /// The current SOA record; its serial is bumped on every change. The lock also
    /// serializes changes.
    soa: Mutex<Record>,
}

/// RFC 2136 updates to one primary.
struct Rfc2136 {
    server: SocketAddr,
    signer: TSigner,
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
    ) -> Result<DnsValidator, DnsError> {
        let zone_text = absolute(&config.zone);
        if zone_text == "." {
            return Err(DnsError::Config(
                "the validation zone must not be the root".into(),
            ));
        }
        let zone = parse_name(&zone_text)?;
        let resolver = build_resolver(&config.nameservers)?;
        let (publisher, server) = match &config.publisher {
            Publisher::Embedded { listen } => {
                let token = shutdown.child_token();
                let embedded = start_embedded(&zone, config.ttl, *listen, token.clone()).await?;
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
                let signer = read_tsig_key(key_name, key_file)?;
                (
                    Backend::Rfc2136(Rfc2136 {
                        server: *server,
                        signer,
                    }),
                    None,
                )
            }
            Publisher::Command { argv } => {
                if argv.first().is_none_or(|program| program.is_empty()) {
                    return Err(DnsError::Config(
                        "the publisher command is empty (validation.dns.command)".into(),
                    ));
                }
                (Backend::Command(argv.clone()), None)
            }
        };
        Ok(DnsValidator {
            zone,
            ttl: config.ttl,
            resolver,
            publisher,
            _server: server,
        })
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
fn absolute(name: &str) -> String {
    let trimmed = name.trim().trim_end_matches('.');
    format!("{}.", trimmed.to_ascii_lowercase())
}

/// Parses an absolute name (as made by [`absolute`]).
fn parse_name(text: &str) -> Result<Name, DnsError> {
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

// ---------------------------------------------------------------------------------------------
// Resolver

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

// ---------------------------------------------------------------------------------------------
// Embedded authoritative server

/// Builds the zone (SOA, NS) and serves it on `listen`, UDP and TCP, until `stop`.
async fn start_embedded(
    zone: &Name,
    ttl: u32,
    listen: SocketAddr,
    stop: CancellationToken,
) -> Result<EmbeddedZone, DnsError> {
    let name = |prefix: &str| {
        Name::from_ascii(prefix)
            .and_then(|n| n.append_domain(zone))
            .map_err(|e| DnsError::Config(format!("validation zone {zone}: {e}")))
    };
    let ns = name("ns")?;
    let hostmaster = name("hostmaster")?;
    // The serial starts at the current time so that it also grows across restarts.
    let serial = u32::try_from(unix_now() % (1 << 31)).unwrap_or(1);
    let soa = Record::from_rdata(
        zone.clone(),
        ttl,
        RData::SOA(SOA::new(
            ns.clone(),
            hostmaster,
            serial,
            3600,
            600,
            86400,
            ttl,
        )),
    );
    let handler = Arc::new(InMemoryZoneHandler::empty(
        zone.clone(),
        ZoneType::Primary,
        AxfrPolicy::Deny,
    ));
    let added = handler.upsert(soa.clone(), serial).await
        && handler
            .upsert(
                Record::from_rdata(zone.clone(), ttl, RData::NS(NS(ns))),
                serial,
            )
            .await;
    if !added {
        return Err(DnsError::Config(format!(
            "cannot build the embedded zone {zone}"
        )));
    }

    let udp = tokio::net::UdpSocket::bind(listen)
        .await
        .map_err(|source| DnsError::Bind {
            protocol: "UDP",
            listen,
            source,
        })?;
    let tcp = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| DnsError::Bind {
            protocol: "TCP",
            listen,
            source,
        })?;

    let mut catalog = Catalog::new();
    let zone_handler: Arc<dyn ZoneHandler> = handler.clone();
    catalog.upsert(LowerName::new(zone), vec![zone_handler]);
    let mut server = Server::new(catalog);
    server.register_socket(udp);
    server.register_listener(tcp, TCP_IDLE_TIMEOUT, 32);
    let zone_text = zone.to_string();
    tokio::spawn(async move {
        stop.cancelled().await;
        if let Err(error) = server.shutdown_gracefully().await {
            tracing::warn!(zone = %zone_text, %error, "embedded DNS server stopped with an error");
        }
        tracing::debug!(zone = %zone_text, "embedded DNS server stopped");
    });
    tracing::info!(zone = %zone, %listen, "embedded DNS server listening (UDP and TCP)");
    Ok(EmbeddedZone {
        handler,
        soa: Mutex::new(soa),
    })
}

impl EmbeddedZone {
    /// Adds `record` to its RRset (a value already there is left as is) and bumps the serial.
    async fn add(&self, record: Record) {
        let mut soa = self.soa.lock().await;
        let serial = next_serial(&soa);
        if self.handler.upsert(record, serial).await {
            self.set_serial(&mut soa, serial).await;
        }
    }

    /// Removes the RR with `record`'s rdata from its RRset (the others stay) and bumps the
    /// serial; the RRset goes away with its last RR.
    async fn remove(&self, record: Record) {
        let mut soa = self.soa.lock().await;
        let serial = next_serial(&soa);
        let removed = {
            let mut records = self.handler.records_mut().await;
            let key = RrKey::new(LowerName::new(&record.name), record.record_type());
            match records.get(&key) {
                Some(rrset) => {
                    let mut rrset = RecordSet::clone(rrset);
                    let removed = rrset.remove(&record, serial);
                    if rrset.is_empty() {
                        records.remove(&key);
                    } else if removed {
                        records.insert(key, Arc::new(rrset));
                    }
                    removed
                }
                None => false,
            }
        };
        if removed {
            self.set_serial(&mut soa, serial).await;
        }
    }

    /// Replaces the SOA with one carrying `serial`.
    async fn set_serial(&self, soa: &mut Record, serial: u32) {
        if let RData::SOA(rdata) = &mut soa.data {
            rdata.serial = serial;
        }
        self.handler.upsert(soa.clone(), serial).await;
    }
}

/// The serial after `soa`'s (RFC 1982 arithmetic wraps; 0 is skipped).
fn next_serial(soa: &Record) -> u32 {
    let current = match &soa.data {
        RData::SOA(rdata) => rdata.serial,
        _ => 0,
    };
    current.wrapping_add(1).max(1)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// RFC 2136

/// Reads the base64 TSIG secret (surrounding whitespace ignored) and makes an HMAC-SHA256
/// signer with `key_name`.
fn read_tsig_key(key_name: &str, key_file: &std::path::Path) -> Result<TSigner, DnsError> {
    let key_error = |reason: String| DnsError::KeyFile {
        path: key_file.to_owned(),
        reason,
    };
    let text = Zeroizing::new(
        std::fs::read_to_string(key_file).map_err(|e| key_error(format!("cannot read: {e}")))?,
    );
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    let secret = engine
        .decode(text.trim())
        .map_err(|e| key_error(format!("not a base64 secret: {e}")))?;
    if secret.is_empty() {
        return Err(key_error("the secret is empty".into()));
    }
    let name = parse_name(&absolute(key_name))?;
    TSigner::new(secret, TsigAlgorithm::HmacSha256, name, TSIG_FUDGE)
        .map_err(|e| DnsError::Config(format!("TSIG key {key_name}: {e}")))
}

impl Rfc2136 {
    /// Signs `message`, sends it over TCP, and requires a NOERROR answer with a valid
    /// signature. `name` is the record's owner, for messages.
    async fn send(&self, mut message: Message, name: &str) -> Result<(), DnsError> {
        let failed = |reason: String| DnsError::UpdateFailed {
            server: self.server,
            name: name.to_owned(),
            reason,
        };
        let verifier = message
            .finalize(&self.signer, unix_now())
            .map_err(|e| failed(format!("cannot sign the update: {e}")))?;
        let request = message
            .to_vec()
            .map_err(|e| failed(format!("cannot encode the update: {e}")))?;
        let id = message.metadata.id;
        let started = std::time::Instant::now();
        let response =
            tokio::time::timeout(UPDATE_TIMEOUT, exchange_tcp(self.server, &request, id))
                .await
                .map_err(|_| failed(format!("no answer within {}s", UPDATE_TIMEOUT.as_secs())))?
                .map_err(failed)?;
        tracing::debug!(server = %self.server, name, elapsed_ms = started.elapsed().as_millis() as u64, "RFC 2136 update answered");
        let answer = Message::from_vec(&response)
            .map_err(|e| failed(format!("cannot decode the answer: {e}")))?;
        let code = answer.metadata.response_code;
        if code != ResponseCode::NoError {
            let tsig_error = answer
                .signature()
                .and_then(|sig| sig.data.error.as_ref())
                .map(|e| format!(" (TSIG {})", tsig_error_name(u16::from(*e))));
            return Err(DnsError::UpdateRefused {
                server: self.server,
                name: name.to_owned(),
                rcode: format!(
                    "{}{}",
                    rcode_name(code),
                    tsig_error.clone().unwrap_or_default()
                ),
                hint: refusal_hint(code, tsig_error.is_some()).to_owned(),
            });
        }
        match verifier {
            Some(mut verifier) => verify_response(&mut verifier, &response)
                .map_err(|e| failed(format!("the answer's TSIG signature is not valid: {e}"))),
            None => Ok(()),
        }
    }
}

fn verify_response(verifier: &mut TSigVerifier, response: &[u8]) -> Result<(), String> {
    verifier
        .verify(response)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Sends one DNS message over TCP (two-byte length prefix) and returns the answer with `id`.
async fn exchange_tcp(server: SocketAddr, request: &[u8], id: u16) -> Result<Vec<u8>, String> {
    let length = u16::try_from(request.len()).map_err(|_| "the update is too large".to_owned())?;
    let mut stream = tokio::net::TcpStream::connect(server)
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let mut framed = Vec::with_capacity(request.len() + 2);
    framed.extend_from_slice(&length.to_be_bytes());
    framed.extend_from_slice(request);
    stream
        .write_all(&framed)
        .await
        .map_err(|e| format!("cannot send: {e}"))?;
    loop {
        let length = stream
            .read_u16()
            .await
            .map_err(|e| format!("no answer: {e}"))?;
        let mut answer = vec![0u8; usize::from(length)];
        stream
            .read_exact(&mut answer)
            .await
            .map_err(|e| format!("truncated answer: {e}"))?;
        // The first two bytes are the message ID; skip anything that is not our answer.
        if answer.len() >= 2 && u16::from_be_bytes([answer[0], answer[1]]) == id {
            return Ok(answer);
        }
    }
}

/// The mnemonic of a response code (`NOTAUTH`).
fn rcode_name(code: ResponseCode) -> String {
    match u16::from(code) {
        0 => "NOERROR".into(),
        1 => "FORMERR".into(),
        2 => "SERVFAIL".into(),
        3 => "NXDOMAIN".into(),
        4 => "NOTIMP".into(),
        5 => "REFUSED".into(),
        6 => "YXDOMAIN".into(),
        7 => "YXRRSET".into(),
        8 => "NXRRSET".into(),
        9 => "NOTAUTH".into(),
        10 => "NOTZONE".into(),
        other => format!("RCODE{other}"),
    }
}

/// The mnemonic of a TSIG error (RFC 8945).
fn tsig_error_name(code: u16) -> String {
    match code {
        16 => "BADSIG".into(),
        17 => "BADKEY".into(),
        18 => "BADTIME".into(),
        22 => "BADTRUNC".into(),
        other => format!("error {other}"),
    }
}

/// What an error code from an update server usually means.
fn refusal_hint(code: ResponseCode, tsig_error: bool) -> &'static str {
    match u16::from(code) {
        9 if tsig_error => ": TSIG key rejected? (check key-name, key-file and the clocks)",
        9 => ": the server is not authoritative for the zone, or rejected the TSIG key",
        5 => ": the key may not update this name (check the server's update policy / ACL)",
        10 => ": the name is not in the zone the server serves",
        2 => ": the server could not apply the update",
        4 => ": the server does not accept dynamic updates",
        _ => "",
    }
}

// ---------------------------------------------------------------------------------------------
// Command

/// The command as shown in errors and logs: the program, with `...` for any fixed arguments
/// (they may hold credentials).
fn shown_command(argv: &[String]) -> String {
    match argv {
        [] => String::new(),
        [program] => program.clone(),
        [program, ..] => format!("{program} ..."),
    }
}

/// Runs `argv... action name value` (no shell), with [`COMMAND_TIMEOUT`]; a non-zero exit is
/// an error carrying the command's stderr.
async fn run_command(
    argv: &[String],
    action: &str,
    name: &str,
    value: &str,
) -> Result<(), DnsError> {
    let command_line = format!("{} {action} {name} {value}", shown_command(argv));
    let failed = |reason: String| DnsError::Command {
        command: command_line.clone(),
        reason,
    };
    let Some((program, args)) = argv.split_first() else {
        return Err(failed("the command is empty".into()));
    };
    let child = tokio::process::Command::new(program)
        .args(args)
        .args([action, name, value])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| failed(format!("cannot start {program}: {e}")))?;
    let output = tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| {
            failed(format!(
                "still running after {}s (killed)",
                COMMAND_TIMEOUT.as_secs()
            ))
        })?
        .map_err(|e| failed(format!("cannot wait for it: {e}")))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stderr = stderr.trim();
    Err(failed(if stderr.is_empty() {
        format!("{} (no stderr)", output.status)
    } else {
        format!("{}: {stderr}", output.status)
    }))
}
