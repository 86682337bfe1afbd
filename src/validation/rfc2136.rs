//! RFC 2136 dynamic updates signed with TSIG (HMAC-SHA256), to an existing primary (BIND, Knot,
//! PowerDNS), over TCP.
//!
//! Publishing adds one RR to the RRset; withdrawing deletes exactly that RR by its rdata. The
//! response code must be NOERROR and the response must carry a valid TSIG signature.
//!
//! Why the exchange is done here rather than with hickory's `Client`: hickory's
//! `DnsMultiplexer` can only sign with TSIG when hickory-net is built with its own dnssec
//! feature, and it verifies the response's TSIG before returning the response, so a server
//! that rejects the key (NOTAUTH with TSIG error BADSIG/BADKEY and an empty MAC) surfaces as
//! an opaque verification error and the response code is lost. We build the message with
//! hickory-proto's `update_message`, sign it with its [`TSigner`], send it over TCP, read the
//! response code first, and verify the response signature (hickory's [`TSigVerifier`]) only
//! for a NOERROR answer.

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine as _;
use hickory_resolver::proto::op::{Message, ResponseCode};
use hickory_resolver::proto::rr::rdata::tsig::TsigAlgorithm;
use hickory_resolver::proto::rr::{TSigVerifier, TSigner};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use zeroize::Zeroizing;

use super::dns::{DnsError, absolute, parse_name};
use super::zone::unix_now;

/// How long one RFC 2136 update (connect, send, answer) may take.
const UPDATE_TIMEOUT: Duration = Duration::from_secs(30);
/// TSIG fudge: how far the server's clock may be from ours, in seconds.
const TSIG_FUDGE: u16 = 300;

/// RFC 2136 updates to one primary.
pub(super) struct Rfc2136 {
    pub(super) server: SocketAddr,
    pub(super) signer: TSigner,
}

/// Reads the base64 TSIG secret (surrounding whitespace ignored) from a secret file
/// ([`crate::secret_file`]) and makes an HMAC-SHA256 signer with `key_name`.
pub(super) fn read_tsig_key(
    key_name: &str,
    key_file: &std::path::Path,
) -> Result<TSigner, DnsError> {
    let key_error = |reason: String| DnsError::KeyFile {
        path: key_file.to_owned(),
        reason,
    };
    let text = crate::secret_file::read(key_file).map_err(|e| key_error(e.problem.to_string()))?;
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    // The decode error is not shown: it quotes the offending symbol of the secret and where
    // it is (L8 of the security review).
    let not_base64 = || key_error("not a base64 secret".into());
    let text = std::str::from_utf8(&text).map_err(|_| not_base64())?.trim();
    let mut secret = Zeroizing::new(Vec::with_capacity(text.len()));
    engine
        .decode_vec(text, &mut secret)
        .map_err(|_| not_base64())?;
    let name = parse_name(&absolute(key_name))?;
    // hickory keeps its own copy for signing, for as long as the publisher lives.
    TSigner::new(secret.to_vec(), TsigAlgorithm::HmacSha256, name, TSIG_FUDGE)
        .map_err(|e| DnsError::Config(format!("TSIG key {key_name}: {e}")))
}

impl Rfc2136 {
    /// Signs `message`, sends it over TCP, and requires a NOERROR answer with a valid
    /// signature. `name` is the record's owner, for messages.
    pub(super) async fn send(&self, mut message: Message, name: &str) -> Result<(), DnsError> {
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
                .map_err(|e| failed(e.to_string()))?;
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

fn verify_response(
    verifier: &mut TSigVerifier,
    response: &[u8],
) -> Result<(), hickory_resolver::proto::ProtoError> {
    verifier.verify(response).map(|_| ())
}

/// How one TCP exchange with the primary failed.
#[derive(Debug, thiserror::Error)]
enum ExchangeError {
    #[error("the update is too large")]
    TooLarge,
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("cannot send: {0}")]
    Send(std::io::Error),
    #[error("no answer: {0}")]
    NoAnswer(std::io::Error),
    #[error("truncated answer: {0}")]
    Truncated(std::io::Error),
}

/// Sends one DNS message over TCP (two-byte length prefix) and returns the answer with `id`.
async fn exchange_tcp(
    server: SocketAddr,
    request: &[u8],
    id: u16,
) -> Result<Vec<u8>, ExchangeError> {
    let length = u16::try_from(request.len()).map_err(|_| ExchangeError::TooLarge)?;
    let mut stream = tokio::net::TcpStream::connect(server)
        .await
        .map_err(ExchangeError::Connect)?;
    let mut framed = Vec::with_capacity(request.len() + 2);
    framed.extend_from_slice(&length.to_be_bytes());
    framed.extend_from_slice(request);
    stream
        .write_all(&framed)
        .await
        .map_err(ExchangeError::Send)?;
    loop {
        let length = stream.read_u16().await.map_err(ExchangeError::NoAnswer)?;
        let mut answer = vec![0u8; usize::from(length)];
        stream
            .read_exact(&mut answer)
            .await
            .map_err(ExchangeError::Truncated)?;
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
