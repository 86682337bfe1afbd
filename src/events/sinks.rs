//! Event delivery: every event in the outbox reaches every configured sink, at least once.
//!
//! Each sink has its own task and its own cursor in the outbox (the store's `sink_cursors`): it reads the
//! events after its cursor, delivers them in order, and moves the cursor only past events a
//! sink acknowledged (a 2xx from a webhook, exit 0 from a command). The cursor is saved at most
//! once a second (and when a delivery first fails, and when the daemon stops), not after every
//! delivery: under a burst of issuance each commit carries a few events, and saving after each
//! would double the commits.
//! While a sink fails, it retries the same event with exponential backoff, so events wait
//! instead of being lost; after a restart it resumes from its cursor. A crash delivers the
//! events of the last second again: receivers deduplicate by the event id (the
//! `Idempotency-Key` header).
//!
//! A sink configured for the first time starts at the end of the outbox: it receives what
//! happens from then on, not the history.
//!
//! Sinks: the journal (structured fields), webhooks (JSON POST signed with HMAC-SHA256), and
//! commands (argv, event JSON on stdin).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lc_rs::hmac;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::outbox::{Outbox, OutboxError};
use super::{DetailType, Event};
use crate::argv::{Argv, RunError};
use crate::metrics::Metrics;
use crate::span::Span;

/// Events read per round trip to the store.
const BATCH: u32 = 100;
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// The longest a delivered event's place in the outbox stays unsaved.
const CURSOR_SAVE_INTERVAL: Duration = Duration::from_secs(1);
/// The signature header: `sha256=<hex HMAC-SHA256 of the body>`, as GitHub and others do.
pub const SIGNATURE_HEADER: &str = "X-Certkeeper-Signature";

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("webhook {sink}: secret-file {source}")]
    Secret {
        sink: String,
        source: crate::secret_file::SecretFileError,
    },
    #[error("webhook {sink}: ca-file {path}: {reason}")]
    CaFile {
        sink: String,
        path: String,
        reason: String,
    },
    #[error("webhook {sink}: {0}", sink = .1)]
    Client(reqwest::Error, String),
    #[error("event sinks: the outbox cannot be read: {0}")]
    Outbox(String),
}

/// `[[events.webhook]]`: events POSTed as JSON, signed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookSink {
    pub name: String,
    pub url: String,
    /// The HMAC-SHA256 key is read from this file when the sink starts (a secret file:
    /// [`crate::secret_file`]).
    pub secret_file: std::path::PathBuf,
    /// Only these detail types; empty means all.
    pub detail_types: Vec<DetailType>,
    pub timeout: Span,
    /// Extra CA certificates (PEM) to trust for this URL, besides the system's.
    pub ca_file: Option<std::path::PathBuf>,
}

/// `[[events.command]]`: a program run per event, the event JSON on its stdin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandSink {
    pub name: String,
    pub argv: Argv,
    /// Only these detail types; empty means all.
    pub detail_types: Vec<DetailType>,
    pub timeout: Span,
}

struct Webhook {
    config: WebhookSink,
    client: reqwest::Client,
    key: hmac::Key,
}

/// One way of delivering events.
enum Target {
    Journal,
    Webhook(Box<Webhook>),
    Command(CommandSink),
}

pub struct Sink {
    name: String,
    detail_types: Vec<DetailType>,
    target: Target,
}

impl Sink {
    fn wants(&self, event: &Event) -> bool {
        self.detail_types.is_empty() || self.detail_types.contains(&event.detail_type)
    }
}

/// Builds the sinks named in the config; a secret or CA file that cannot be read is an error
/// at start, not a surprise at the first event.
fn build(configs: &SinkConfigs) -> Result<Vec<Sink>, SinkError> {
    let mut sinks = Vec::new();
    if configs.journal {
        sinks.push(Sink {
            name: "journal".into(),
            detail_types: vec![],
            target: Target::Journal,
        });
    }
    for hook in &configs.webhooks {
        sinks.push(Sink {
            name: hook.name.clone(),
            detail_types: hook.detail_types.clone(),
            target: webhook(hook)?,
        });
    }
    for command in &configs.commands {
        sinks.push(Sink {
            name: command.name.clone(),
            detail_types: command.detail_types.clone(),
            target: Target::Command(command.clone()),
        });
    }
    Ok(sinks)
}

/// Whether `url` is plain `http://` to a host other than this one (loopback is fine: a local
/// relay).
fn plain_http_off_host(url: &str) -> bool {
    let Ok(url) = url::Url::parse(url) else {
        return false;
    };
    let local = match url.host() {
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => true,
    };
    url.scheme() == "http" && !local
}

fn webhook(config: &WebhookSink) -> Result<Target, SinkError> {
    let secret =
        crate::secret_file::read(&config.secret_file).map_err(|source| SinkError::Secret {
            sink: config.name.clone(),
            source,
        })?;
    // A trailing newline from `echo secret > file` is not part of the secret.
    let secret = secret.strip_suffix(b"\n").unwrap_or(&secret);
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    if plain_http_off_host(&config.url) {
        // Signed, so not forgeable, but readable by anyone on the path: names, expiry dates.
        warn!(sink = %config.name, "webhook over plain http to another host: events are sent unencrypted");
    }
    // A receiver's redirect is a failed delivery, not an instruction: following it would
    // re-send the signed event to wherever the receiver (or whoever answers for it) names (L5
    // of the security review).
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(config.timeout.std())
        .user_agent(concat!("certkeeper/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = &config.ca_file {
        let ca_error = |reason: String| SinkError::CaFile {
            sink: config.name.clone(),
            path: path.display().to_string(),
            reason,
        };
        let pem = std::fs::read(path).map_err(|e| ca_error(e.to_string()))?;
        let certs =
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| ca_error(e.to_string()))?;
        builder = builder.tls_certs_merge(certs);
    }
    let client = builder
        .build()
        .map_err(|e| SinkError::Client(e, config.name.clone()))?;
    Ok(Target::Webhook(Box::new(Webhook {
        config: config.clone(),
        client,
        key,
    })))
}

/// The signature of `body` under `key`, as sent in [`SIGNATURE_HEADER`].
pub fn signature(key: &hmac::Key, body: &[u8]) -> String {
    let tag = hmac::sign(key, body);
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// Every sink's configuration, as the config gives it: what sinks are (re)built from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SinkConfigs {
    pub journal: bool,
    pub webhooks: Vec<WebhookSink>,
    pub commands: Vec<CommandSink>,
}

/// Why event delivery stopped while the daemon runs: the daemon then stops too (non-zero), so
/// that systemd restarts it and the operator sees it, instead of events silently waiting.
#[derive(Debug, thiserror::Error)]
pub enum SinkFailure {
    /// The outbox holds data that does not decode: retrying cannot help.
    #[error("event sink {sink}: the outbox is damaged: {reason}")]
    Outbox { sink: String, reason: String },
    #[error("event sink {sink} panicked")]
    Panicked { sink: String },
}

/// A reloaded configuration, and who waits for it to be applied.
pub type Reload = (SinkConfigs, oneshot::Sender<()>);

/// The running sinks, one task each, restarted as a whole when the configuration is reloaded.
pub struct Sinks<O: Outbox> {
    outbox: O,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    running: Generation,
}

/// One start of the sinks: their tasks and the token that stops just them.
struct Generation {
    stop: CancellationToken,
    tasks: JoinSet<Result<(), SinkFailure>>,
    names: HashMap<tokio::task::Id, String>,
}

impl<O: Outbox> Sinks<O> {
    /// Builds the configured sinks and starts them. Each sink's cursor is settled before this
    /// returns (a new sink's at the current end of the outbox), so every event committed
    /// afterwards reaches it: call it before accepting requests.
    pub async fn start(
        configs: &SinkConfigs,
        outbox: O,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Result<Self, SinkError> {
        let sinks = build(configs)?;
        let running = Generation::start(sinks, &outbox, &metrics, &shutdown).await?;
        Ok(Self {
            outbox,
            metrics,
            shutdown,
            running,
        })
    }

    /// Watches the sinks until the daemon stops, then waits for them to save their cursors.
    /// A configuration sent on `reloads` restarts them all (secret and CA files are read
    /// again), and its acknowledgement is sent once the new sinks' cursors are settled, so
    /// they receive every event committed after it; a configuration that cannot be built is
    /// refused and the running sinks go on. Ends early only with a sink's fatal failure.
    pub async fn run(mut self, mut reloads: mpsc::Receiver<Reload>) -> Result<(), SinkFailure> {
        loop {
            tokio::select! {
                // A sink ended: only a fatal failure ends one before the daemon stops.
                Some(ended) = self.running.tasks.join_next_with_id() => {
                    self.running.ended(ended)?;
                }
                // SIGHUP: the reloaded sinks replace the running ones.
                Some((configs, done)) = reloads.recv() => {
                    self.restart(&configs).await?;
                    let _ = done.send(());
                }
                () = self.shutdown.cancelled() => break,
            }
        }
        self.running.stop().await
    }

    async fn restart(&mut self, configs: &SinkConfigs) -> Result<(), SinkFailure> {
        let sinks = match build(configs) {
            Ok(sinks) => sinks,
            Err(err) => {
                error!(error = %err, "reloaded event sinks refused; the running ones go on");
                return Ok(());
            }
        };
        // The old ones save their cursors before the new ones read them.
        self.running.stop().await?;
        let mut sinks = sinks;
        loop {
            match Generation::start(sinks, &self.outbox, &self.metrics, &self.shutdown).await {
                Ok(running) => {
                    self.running = running;
                    info!(
                        sinks = self.running.names.len(),
                        "event sinks restarted with the reloaded configuration"
                    );
                    return Ok(());
                }
                // The cursors could not be read or settled just now: events wait in the
                // outbox meanwhile; try again shortly (they were built a moment ago, so
                // building them again succeeds).
                Err(err) => {
                    error!(error = %err, "starting the reloaded event sinks failed; trying again in 5s");
                    if sleep_or_stop(BACKOFF_MIN * 5, &self.shutdown).await {
                        return Ok(());
                    }
                    match build(configs) {
                        Ok(rebuilt) => sinks = rebuilt,
                        Err(err) => {
                            error!(error = %err, "reloaded event sinks refused");
                            return Ok(());
                        }
                    }
                }
            }
        }
    }
}

impl Generation {
    async fn start<O: Outbox>(
        sinks: Vec<Sink>,
        outbox: &O,
        metrics: &Arc<Metrics>,
        shutdown: &CancellationToken,
    ) -> Result<Self, SinkError> {
        let stop = shutdown.child_token();
        let mut tasks = JoinSet::new();
        let mut names = HashMap::new();
        for sink in sinks {
            let cursor = start_cursor(&sink, outbox)
                .await
                .map_err(|e| SinkError::Outbox(e.to_string()))?;
            info!(sink = %sink.name, cursor, "event sink started");
            let name = sink.name.clone();
            let (outbox, metrics, stop) = (outbox.clone(), metrics.clone(), stop.clone());
            let cursor = Cursor::saved_at(cursor);
            let handle = tasks.spawn(async move { run(sink, cursor, outbox, metrics, stop).await });
            names.insert(handle.id(), name);
        }
        Ok(Self { stop, tasks, names })
    }

    /// A sink that ended: a fatal failure or a panic is the caller's; a clean end (its stop
    /// token) is not.
    fn ended(
        &self,
        ended: Result<(tokio::task::Id, Result<(), SinkFailure>), tokio::task::JoinError>,
    ) -> Result<(), SinkFailure> {
        match ended {
            Ok((_, result)) => result,
            Err(err) => Err(SinkFailure::Panicked {
                sink: self.names.get(&err.id()).cloned().unwrap_or_default(),
            }),
        }
    }

    /// Stops every sink of this generation and waits for it (each saves its cursor).
    async fn stop(&mut self) -> Result<(), SinkFailure> {
        self.stop.cancel();
        let mut first_failure = Ok(());
        while let Some(ended) = self.tasks.join_next_with_id().await {
            if let Err(failure) = self.ended(ended) {
                error!(error = %failure, "event sink failed while stopping");
                first_failure = first_failure.and(Err(failure));
            }
        }
        first_failure
    }
}

/// A sink's place in the outbox: the last event it has, and what the store has of it.
struct Cursor {
    delivered: i64,
    saved: i64,
    saved_when: Instant,
}

impl Cursor {
    fn saved_at(seq: i64) -> Self {
        Self {
            delivered: seq,
            saved: seq,
            saved_when: Instant::now(),
        }
    }

    /// When the delivered position must be saved, if it is ahead of the saved one.
    fn save_due(&self) -> Option<Instant> {
        (self.delivered != self.saved).then_some(self.saved_when + CURSOR_SAVE_INTERVAL)
    }

    /// Saves the delivered position if it is ahead of the saved one.
    async fn save(&mut self, sink: &Sink, outbox: &impl Outbox) {
        if self.delivered == self.saved {
            return;
        }
        match outbox.set_cursor(&sink.name, self.delivered).await {
            Ok(()) => self.saved = self.delivered,
            Err(err) => {
                warn!(sink = %sink.name, error = %err, "saving the delivery cursor failed (events may be delivered again)");
            }
        }
        // Also after a failure: the next try waits its interval rather than hammering.
        self.saved_when = Instant::now();
    }
}

/// One sink's delivery loop, until `shutdown` (then its cursor is saved). Ends early only when
/// the outbox is damaged: delivering past an event that does not decode would lose it, and
/// waiting on it forever would stop every later event without a word.
async fn run(
    sink: Sink,
    mut cursor: Cursor,
    outbox: impl Outbox,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<(), SinkFailure> {
    let committed = outbox.committed();
    // Registered before each read, so an event committed between the read and the wait still
    // wakes us.
    let mut notified = Box::pin(committed.notified());
    // Whether the last read may have left events behind (a full batch): read again at once.
    let mut more = true;
    loop {
        if !more {
            // Nothing new can be there until the next commit with events, which `notified`
            // has been watching since before the last read; meanwhile save the cursor when
            // it is due.
            match wait_for_events(&mut notified, &committed, &shutdown, cursor.save_due()).await {
                Woken::Events => {}
                Woken::SaveDue => {
                    cursor.save(&sink, &outbox).await;
                    continue;
                }
                Woken::Stopping => break,
            }
        }
        let events = match outbox.events_after(cursor.delivered, BATCH).await {
            Ok(events) => events,
            Err(err) if err.is_corrupt() => {
                cursor.save(&sink, &outbox).await;
                return Err(SinkFailure::Outbox {
                    sink: sink.name.clone(),
                    reason: err.to_string(),
                });
            }
            Err(err) => {
                warn!(sink = %sink.name, error = %err, "reading the outbox failed");
                if sleep_or_stop(BACKOFF_MIN * 5, &shutdown).await {
                    break;
                }
                more = true; // read again after the pause, not at the next commit
                continue;
            }
        };
        more = events.len() >= BATCH as usize;
        let mut stopping = false;
        for (seq, event) in events {
            if sink.wants(&event)
                && !deliver_with_retry(&sink, &event, (&mut cursor, &outbox), &metrics, &shutdown)
                    .await
            {
                stopping = true; // the cursor stays before this event
                break;
            }
            cursor.delivered = seq;
        }
        if stopping {
            break;
        }
        if cursor.save_due().is_some_and(|due| due <= Instant::now()) {
            cursor.save(&sink, &outbox).await;
        }
    }
    cursor.save(&sink, &outbox).await;
    Ok(())
}

enum Woken {
    Events,
    SaveDue,
    Stopping,
}

/// Waits for the next commit with events, then registers for the one after it; or until
/// `save_due`, or until the daemon stops.
async fn wait_for_events<'a>(
    notified: &mut std::pin::Pin<Box<tokio::sync::futures::Notified<'a>>>,
    committed: &'a Arc<tokio::sync::Notify>,
    shutdown: &CancellationToken,
    save_due: Option<Instant>,
) -> Woken {
    let save = async {
        match save_due {
            Some(at) => tokio::time::sleep_until(at.into()).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = notified.as_mut() => {}
        () = save => return Woken::SaveDue,
        () = shutdown.cancelled() => return Woken::Stopping,
    }
    notified.set(committed.notified());
    Woken::Events
}

/// Where a sink starts: its saved cursor, or the end of the outbox for a new sink.
async fn start_cursor<O: Outbox>(sink: &Sink, outbox: &O) -> Result<i64, O::Error> {
    if let Some(cursor) = outbox.cursor(&sink.name).await? {
        return Ok(cursor);
    }
    let end = outbox.last_seq().await?;
    outbox.set_cursor(&sink.name, end).await?;
    Ok(end)
}

/// Delivers one event, retrying with backoff until it succeeds. Returns false when the daemon
/// is stopping.
/// At the first failure the cursor is saved (if behind): a receiver that stays down keeps the
/// sink here for a long time, and what it did receive must not come again after a crash.
async fn deliver_with_retry(
    sink: &Sink,
    event: &Event,
    (cursor, outbox): (&mut Cursor, &impl Outbox),
    metrics: &Metrics,
    shutdown: &CancellationToken,
) -> bool {
    let mut backoff = BACKOFF_MIN;
    let mut attempt = 1u32;
    loop {
        let result = tokio::select! {
            result = deliver(sink, event) => result,
            () = shutdown.cancelled() => return false,
        };
        match result {
            Ok(()) => {
                metrics.event_delivered(&sink.name, true);
                return true;
            }
            Err(reason) => {
                metrics.event_delivered(&sink.name, false);
                warn!(sink = %sink.name, event = %event.id, attempt, retry_in_s = backoff.as_secs(), error = %reason, "event delivery failed");
                if attempt == 1 {
                    cursor.save(sink, outbox).await;
                }
            }
        }
        if sleep_or_stop(backoff, shutdown).await {
            return false;
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
        attempt += 1;
    }
}

/// Sleeps; returns true if the daemon started stopping meanwhile.
async fn sleep_or_stop(duration: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(duration) => false,
        () = shutdown.cancelled() => true,
    }
}

/// Why one delivery did not succeed; every kind is retried.
#[derive(Debug, thiserror::Error)]
enum DeliveryError {
    #[error("cannot encode the event: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("{url}: {source}")]
    Request { url: String, source: reqwest::Error },
    #[error("{url}: HTTP {status}")]
    Status {
        url: String,
        status: reqwest::StatusCode,
    },
    #[error("`{command}` failed: {source}")]
    Command { command: String, source: RunError },
}

async fn deliver(sink: &Sink, event: &Event) -> Result<(), DeliveryError> {
    match &sink.target {
        Target::Journal => {
            info!(
                event_id = %event.id,
                detail_type = %event.detail_type,
                certificate = %event.resources.join(","),
                detail = %event.detail,
                "{}", event.detail_type
            );
            Ok(())
        }
        Target::Webhook(hook) => {
            let Webhook {
                config,
                client,
                key,
            } = hook.as_ref();
            let body = serde_json::to_vec(event)?;
            let response = client
                .post(&config.url)
                .header("content-type", "application/json")
                .header(SIGNATURE_HEADER, signature(key, &body))
                .header("Idempotency-Key", &event.id)
                .header("X-Certkeeper-Event-Id", &event.id)
                .header("X-Certkeeper-Event-Type", event.detail_type.as_str())
                .body(body)
                .send()
                .await
                .map_err(|source| DeliveryError::Request {
                    url: config.url.clone(),
                    source,
                })?;
            let status = response.status();
            if status.is_success() {
                Ok(())
            } else {
                Err(DeliveryError::Status {
                    url: config.url.clone(),
                    status,
                })
            }
        }
        Target::Command(command) => run_command(command, event).await,
    }
}

async fn run_command(command: &CommandSink, event: &Event) -> Result<(), DeliveryError> {
    let body = serde_json::to_vec(event)?;
    let certificates = event.resources.join(",");
    let env = [
        ("CERTKEEPER_EVENT_ID", event.id.as_str()),
        ("CERTKEEPER_EVENT_TYPE", event.detail_type.as_str()),
        ("CERTKEEPER_CERTIFICATE_ID", certificates.as_str()),
    ];
    command
        .argv
        .run(&[], &env, Some(&body), command.timeout.std())
        .await
        .map_err(|source| DeliveryError::Command {
            command: command.argv.shown(),
            source,
        })
}

#[cfg(test)]
mod tests {

    #[test]
    fn plain_http_is_flagged_unless_it_stays_on_this_host() {
        for url in [
            "http://hooks.example.com/x",
            "http://10.0.0.5:8080/",
            "http://u@[2001:db8::1]:80/",
        ] {
            assert!(plain_http_off_host(url), "{url}");
        }
        for url in [
            "https://hooks.example.com/x",
            "http://127.0.0.1:18081/hook",
            "http://localhost/",
            "http://[::1]:9000/",
        ] {
            assert!(!plain_http_off_host(url), "{url}");
        }
    }

    use super::*;

    #[test]
    fn signature_matches_a_known_hmac() {
        // RFC 4231 test case 2.
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"Jefe");
        assert_eq!(
            signature(&key, b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
