//! DNS messages to the embedded zone server (`[validation.dns] publisher = "embedded"`): the
//! real server, started once through `DnsValidator::start` on a loopback port with one
//! challenge TXT record published through `DnsValidator::publish`, gets each input as a UDP
//! datagram, followed by a query of our own for that record.
//!
//! Properties: no panic, and the server keeps answering (our query is answered within 10 s
//! after every input); every reply parses as a DNS message; an answer holds only records of
//! the names asked about (no zone transfer, no records of other names); and no message from
//! outside changes the zone (after every input our record is still served, with its value).
#![no_main]

use std::net::{SocketAddr, UdpSocket};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use certkeeper::config::{DnsValidation, Publisher};
use certkeeper::validation::dns::DnsValidator;
use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use libfuzzer_sys::fuzz_target;
use tokio::runtime::Runtime;
use tokio_util::sync::CancellationToken;

const ZONE: &str = "acme.fuzz.example";
const RECORD: &str = "abcdefghijklmnop.acme.fuzz.example.";
const VALUE: &str = "the-challenge-value";
/// How long the server may take to answer our query after an input.
const PATIENCE: Duration = Duration::from_secs(10);

struct Server {
    runtime: Runtime,
    /// Serves the zone until dropped.
    _validator: DnsValidator,
    socket: tokio::net::UdpSocket,
    next_id: AtomicU16,
}

/// A loopback port free for both UDP and TCP just now (the server binds both).
fn free_port() -> SocketAddr {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind UDP");
        let addr = udp.local_addr().expect("local address");
        if std::net::TcpListener::bind(addr).is_ok() {
            return addr;
        }
    }
}

fn start() -> Server {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let listen = free_port();
    let config = DnsValidation {
        zone: ZONE.to_owned(),
        publisher: Publisher::Embedded { listen },
        nameservers: vec![listen],
        ttl: 60,
    };
    let (validator, socket) = runtime.block_on(async {
        let validator = DnsValidator::start(&config, CancellationToken::new())
            .await
            .expect("the embedded server starts");
        validator
            .publish(RECORD, VALUE)
            .await
            .expect("publishing into the embedded zone");
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("client socket");
        socket.connect(listen).await.expect("connect");
        (validator, socket)
    });
    Server {
        runtime,
        _validator: validator,
        socket,
        next_id: AtomicU16::new(1),
    }
}

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(start)
}

fn our_query(id: u16) -> Vec<u8> {
    let mut message = Message::new(id, MessageType::Query, OpCode::Query);
    message.add_query(Query::query(Name::from_ascii(RECORD).expect("name"), RecordType::TXT));
    message.to_vec().expect("our query encodes")
}

/// Checks one reply; `true` when it is the answer to our query `id`.
fn check_reply(bytes: &[u8], id: u16) -> bool {
    let reply = Message::from_vec(bytes)
        .unwrap_or_else(|e| panic!("a reply that is not DNS ({e}): {bytes:02x?}"));
    for answer in &reply.answers {
        assert!(
            reply.queries.iter().any(|q| q.name() == &answer.name),
            "an answer about {} to a question about {:?}",
            answer.name,
            reply.queries.iter().map(|q| q.name().to_string()).collect::<Vec<_>>()
        );
    }
    let record = Name::from_ascii(RECORD).expect("name");
    let ours = reply.metadata.id == id
        && reply.metadata.message_type == MessageType::Response
        && reply.queries.len() == 1
        && reply.queries[0].name() == &record
        && reply.queries[0].query_type() == RecordType::TXT;
    if ours {
        let served = reply.answers.iter().any(|r| match &r.data {
            RData::TXT(txt) => txt.txt_data.iter().any(|d| &**d == VALUE.as_bytes()),
            _ => false,
        });
        assert!(served, "the published record is gone after an input: {reply:?}");
    }
    ours
}

fuzz_target!(|data: &[u8]| {
    let server = server();
    let id = server.next_id.fetch_add(1, Ordering::Relaxed);
    server.runtime.block_on(async {
        // Too large for a datagram: nothing reaches the server (libFuzzer's inputs are smaller).
        let _ = server.socket.send(data).await;
        server.socket.send(&our_query(id)).await.expect("send our query");
        let mut buffer = vec![0; 65_535];
        loop {
            let received = tokio::time::timeout(PATIENCE, server.socket.recv(&mut buffer)).await;
            let size = match received {
                Ok(Ok(size)) => size,
                Ok(Err(e)) => panic!("receiving from the embedded server: {e}"),
                Err(_) => panic!("the embedded server stopped answering after {data:02x?}"),
            };
            if check_reply(&buffer[..size], id) {
                break;
            }
        }
    });
});
