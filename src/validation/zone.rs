//! The embedded authoritative server for the validation zone (acme-dns style: the zone's NS
//! points at certkeeper).
//!
//! A hickory-server [`Server`] serves one in-memory zone ([`InMemoryZoneHandler`] in a
//! [`Catalog`]) over UDP and TCP: its SOA (serial bumped on every change), `NS ns.<zone>.`, and
//! the TXT records published. Names outside the zone get REFUSED. The zone is changed in memory
//! directly; nothing is persisted (a challenge lives for seconds, and a restart re-publishes
//! what an order still needs).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hickory_resolver::proto::rr::rdata::{NS, SOA};
use hickory_resolver::proto::rr::{LowerName, Name, RData, Record, RecordSet, RrKey};
use hickory_server::Server;
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use super::dns::DnsError;

/// The task serving the zone.
pub(super) type Served = tokio::task::JoinHandle<Result<(), DnsError>>;

/// How long the embedded server keeps an idle TCP connection.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// The zone served by the embedded server.
pub(super) struct EmbeddedZone {
    handler: Arc<InMemoryZoneHandler>,
    /// The current SOA record; its serial is bumped on every change. The lock also
    /// serializes changes.
    soa: Mutex<Record>,
}

/// Builds the zone (SOA, NS) and serves it on `listen`, UDP and TCP, until `stop`. The task
/// that serves it ends only at `stop`, or with an error if the server ends by itself.
pub(super) async fn start(
    zone: &Name,
    ttl: u32,
    listen: SocketAddr,
    stop: CancellationToken,
) -> Result<(EmbeddedZone, Served), DnsError> {
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
    let served = tokio::spawn(async move {
        let shutdown = server.shutdown_token().clone();
        let done = server.block_until_done();
        tokio::pin!(done);
        let result = tokio::select! {
            // Every socket task ended on its own: the zone is no longer served.
            result = &mut done => result.map_err(|e| e.to_string()).and(Err("its sockets closed".to_owned())),
            () = stop.cancelled() => {
                shutdown.cancel();
                done.await.map_err(|e| e.to_string())
            }
        };
        tracing::debug!(zone = %zone_text, "embedded DNS server stopped");
        result.map_err(|reason| DnsError::Stopped {
            zone: zone_text,
            reason,
        })
    });
    tracing::info!(zone = %zone, %listen, "embedded DNS server listening (UDP and TCP)");
    Ok((
        EmbeddedZone {
            handler,
            soa: Mutex::new(soa),
        },
        served,
    ))
}

impl EmbeddedZone {
    /// Adds `record` to its RRset (a value already there is left as is) and bumps the serial.
    pub(super) async fn add(&self, record: Record) {
        let mut soa = self.soa.lock().await;
        let serial = next_serial(&soa);
        if self.handler.upsert(record, serial).await {
            self.set_serial(&mut soa, serial).await;
        }
    }

    /// Removes the RR with `record`'s rdata from its RRset (the others stay) and bumps the
    /// serial; the RRset goes away with its last RR.
    pub(super) async fn remove(&self, record: Record) {
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

pub(super) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}
