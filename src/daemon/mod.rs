//! The daemon's lifecycle, and nothing else: load, open, bind, notify, serve, reload, drain.
//!
//! Order matters and is the contract with systemd (`Type=notify`): READY is sent only once the
//! config is checked, the master key loaded, the store open and verified against that key, the
//! configured CAs exist, and the API socket accepts connections. On SIGTERM the socket stops
//! accepting, in-flight requests get until `daemon.shutdown-timeout` to finish (each change is
//! one store transaction, so an abandoned request leaves nothing half-done), then we exit 0.
//! A task that ends while the daemon runs stops it the same way, with a non-zero exit.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::UnixListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::acme::Acme;
use crate::api::{self, AppState, Limits};
use crate::config::{self, Config, ConfigError, Environment, HttpValidation, MasterKeySource};
use crate::events::sinks::{self, SinkConfigs, Sinks};
use crate::exit;
use crate::inventory::{Inventory, InventoryError, Settings};
use crate::liveness::{self, Probe};
use crate::logging::Logging;
use crate::pki::{self, PkiConfig};
use crate::scheduler;
use crate::serve;
use crate::store::{Keyring, SealError, Store, StoreError};
use crate::systemd;
use crate::validation::dns::{DnsError, DnsValidator};
use crate::validation::http::{self, Tokens};

mod tasks;

use tasks::{TaskError, Tasks};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    MasterKey(#[from] SealError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("starting the inventory: {0}")]
    Inventory(#[from] InventoryError),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("validation.dns: {0}")]
    Dns(#[from] DnsError),
    #[error("another certkeeper daemon is using the state directory {0}")]
    AlreadyRunning(PathBuf),
    #[error("another process is serving the API socket {0}")]
    SocketInUse(PathBuf),
    #[error(
        "daemon.socket {0} exists and is not a socket; certkeeper replaces only a socket there"
    )]
    NotASocket(PathBuf),
    #[error(
        "the state directory {path} is mode {mode:04o} and owned by uid {owner}, not by this \
         daemon: it holds the database and the master key, so it must be private (chmod 0700 \
         and chown it to the daemon's user)"
    )]
    StateDirShared {
        path: PathBuf,
        mode: u32,
        owner: u32,
    },
    #[error(transparent)]
    Sink(#[from] sinks::SinkError),
    #[error("{task} ended while the daemon was running: {reason}")]
    TaskEnded {
        task: &'static str,
        reason: String,
        exit_code: u8,
    },
}

impl DaemonError {
    /// The process exit code: 78 (EX_CONFIG) for anything the operator fixes in configuration,
    /// including a master key that does not open the stored keys.
    pub fn exit_code(&self) -> u8 {
        match self {
            // The outbox could not be read at start: the store's trouble, not the config's.
            Self::Sink(sinks::SinkError::Outbox(_)) => exit::SOFTWARE,
            Self::Config(_)
            | Self::MasterKey(_)
            | Self::Sink(_)
            | Self::NotASocket(_)
            | Self::StateDirShared { .. } => exit::CONFIG,
            Self::Store(err) | Self::Inventory(InventoryError::Store(err)) => err.exit_code(),
            Self::AlreadyRunning(_) | Self::SocketInUse(_) => exit::TEMP_FAIL,
            Self::Io { .. } => exit::CANT_CREATE,
            Self::Dns(DnsError::Bind { .. }) => exit::CANT_CREATE,
            Self::Dns(_) => exit::CONFIG,
            Self::TaskEnded { exit_code, .. } => *exit_code,
            Self::Inventory(_) => exit::SOFTWARE,
        }
    }
}

/// Loads the configuration `serve` runs with (before logging starts, which it configures).
pub fn load_config(
    config_flag: Option<PathBuf>,
    state_dir_flag: Option<PathBuf>,
) -> Result<(Config, Environment), DaemonError> {
    let env = Environment::from_process(state_dir_flag);
    let config = Config::load(config::locate(config_flag).as_deref(), &env)?;
    Ok((config, env))
}

/// Runs the daemon until SIGTERM or SIGINT, or until one of its tasks ends (an error: the
/// daemon then exits non-zero so that systemd restarts it).
pub async fn serve(
    mut config: Config,
    env: Environment,
    logging: &Logging,
) -> Result<(), DaemonError> {
    info!(
        config = %config.source.as_deref().map_or_else(|| "built-in default".into(), |p| p.display().to_string()),
        state_dir = %config.state_dir.display(),
        log = logging.target,
        "starting certkeeper {}", env!("CARGO_PKG_VERSION")
    );
    create_private_dir(&config.state_dir)?;
    keep_private(&config.state_dir)?;
    let _lock = lock_state_dir(&config.state_dir)?;
    let (tokens, http01) = http01(&config).await?;
    let shutdown = CancellationToken::new();
    let mut tasks = Tasks::default();
    let inventory = open_inventory(&config, tokens, &shutdown, &mut tasks).await?;
    if let (Some(listener), Some(tokens)) = (http01, inventory.http_tokens()) {
        tasks.spawn(
            "HTTP-01 responder",
            http::serve(listener, tokens, shutdown.clone()),
        );
    }
    // Background work first: event sinks settle their cursors before any request can commit
    // an event, and the scheduler owns the deadlines.
    let sinks = start_background(&config, &inventory, &shutdown, &mut tasks).await?;
    // Once the sinks' cursors are settled (it may commit events). In the background: it asks
    // the CA, and nothing waits for it (cut off by a stop, it is done at the next start).
    let taking_up = inventory.clone();
    tokio::spawn(async move { taking_up.take_up_kept_orders().await });
    let state = Arc::new(AppState {
        inventory,
        audit_retention: config.audit_retention,
    });
    // The API socket last: a client that can connect to it finds every other listener bound.
    serve_pki(&config, &state.inventory, &shutdown, &mut tasks).await?;
    serve_api(&config, &state, &shutdown, &mut tasks).await?;
    systemd::ready();
    if let Some(interval) = systemd::watchdog_interval() {
        info!(
            interval_ms = interval.as_millis() as u64,
            "watchdog enabled"
        );
        let alive = sinks.probe.clone();
        let store = state.inventory.store().clone();
        // Both are asked at once, within half an interval: a ping then comes at most 1.5
        // intervals after the last, inside systemd's 2 (the interval is half of WatchdogSec).
        let budget = interval / 2;
        let stuck = move || {
            let (alive, store) = (alive.clone(), store.clone());
            async move {
                match tokio::join!(alive.answered(budget), store.writer_alive(budget)) {
                    (false, _) => Some("scheduler"),
                    (_, false) => Some("store writer"),
                    (true, true) => None,
                }
            }
        };
        let stop = shutdown.clone();
        tasks.spawn("watchdog", async move {
            systemd::watchdog(interval, stop, stuck).await;
            Ok::<(), TaskError>(())
        });
    }

    let ended = tokio::select! {
        // SIGTERM or SIGINT (SIGHUP reloads and keeps waiting).
        () = wait_for_stop(&mut config, &env, &state, logging, &sinks.reloads) => None,
        // A task ended while the daemon runs: part of it is gone.
        ended = tasks.first_ended() => Some(ended),
    };
    if let Some(ended) = &ended {
        tasks::report(ended);
    }

    info!(
        deadline_s = config.shutdown_timeout.as_secs(),
        "stopping: finishing in-flight work"
    );
    systemd::stopping();
    shutdown.cancel();
    // In-flight API requests and renewals get the same deadline; each is one store
    // transaction, so whatever is cut off leaves nothing half-written (a renewal's lease makes
    // the next start retry it). Event sinks save their cursors.
    let drained = tokio::time::timeout(config.shutdown_timeout.std(), async {
        tasks.drain().await;
        state.inventory.drain().await;
    });
    match drained.await {
        Ok(()) => info!("stopped"),
        Err(_) => warn!(
            "shutdown deadline passed; abandoning in-flight work (nothing half-written is kept)"
        ),
    }
    let _ = std::fs::remove_file(&config.socket);
    if let Some(path) = &config.read_only_socket {
        let _ = std::fs::remove_file(path);
    }
    match ended {
        None => Ok(()),
        Some(ended) => Err(DaemonError::TaskEnded {
            task: ended.task,
            reason: ended.reason,
            exit_code: ended.exit_code,
        }),
    }
}

/// HTTP-01: the tokens' home and, for `validation.http.listen`, the bound listener (bound
/// before READY, so a taken port is a start-up error, not a failed order later).
async fn http01(
    config: &Config,
) -> Result<(Option<Tokens>, Option<tokio::net::TcpListener>), DaemonError> {
    match &config.validation.http {
        None => Ok((None, None)),
        Some(HttpValidation::Webroot(dir)) => Ok((Some(Tokens::Webroot(dir.clone())), None)),
        Some(HttpValidation::Listen(addr)) => {
            let listener = bind_tcp(*addr, "cannot bind validation.http.listen").await?;
            info!(%addr, "HTTP-01 responder listening");
            Ok((Some(Tokens::memory()), Some(listener)))
        }
    }
}

/// Master key, store (verified against the key), ACME issuers, settings, configured CAs.
async fn open_inventory(
    config: &Config,
    tokens: Option<Tokens>,
    shutdown: &CancellationToken,
    tasks: &mut Tasks,
) -> Result<Arc<Inventory>, DaemonError> {
    let keyring = load_keyring(config)?;
    let store = Store::open(&config.store_path, config.synchronous, keyring).await?;
    let usage = store.check_keys().await?;
    info!(store = %config.store_path.display(), sealed_records = usage.values().sum::<u64>(), "store open, keys verified");
    // The embedded DNS server (when configured) answers before READY, like the HTTP-01 one.
    let dns = match (&config.validation.dns, config.acme.is_empty()) {
        (Some(dns), false) => {
            let validator = DnsValidator::start(dns, shutdown.clone()).await?;
            info!(zone = %dns.zone, publisher = ?validator, "DNS-01 validation ready");
            if let Some(served) = validator.take_server() {
                tasks.spawn("embedded DNS server", async move {
                    match served.await {
                        Ok(result) => result.map_err(TaskError::from),
                        Err(err) => Err(TaskError::from(err)),
                    }
                });
            }
            Some(Arc::new(validator))
        }
        _ => None,
    };
    let acme = (!config.acme.is_empty()).then(|| {
        let acme = Acme::new(
            store.clone(),
            &config.acme,
            config.validation.clone(),
            tokens,
            dns,
        )
        .stopping(shutdown.clone());
        // What a crash or the last shutdown's deadline left in DNS or a webroot.
        acme.withdraw_left_over();
        Arc::new(acme)
    });
    tasks.spawn("store writer", store.clone().supervise(shutdown.clone()));
    let published = config.pki.as_ref().map(|p| p.base_url.clone());
    let inventory =
        Arc::new(Inventory::new(store, Settings::from_config(config), acme).publishing(published));
    // Picks up the account settings stored through the API.
    inventory.apply(Settings::from_config(config)).await?;
    for name in inventory.start(&config.cas).await? {
        info!(ca = %name, "created CA");
    }
    Ok(inventory)
}

/// What the running daemon keeps of its background work: where reloaded sink
/// configurations go, and how the watchdog asks whether the scheduler goes round.
struct Background {
    reloads: mpsc::Sender<sinks::Reload>,
    probe: Probe,
}

/// Starts the event sinks (their cursors settled before this returns) and the scheduler.
async fn start_background(
    config: &Config,
    inventory: &Arc<Inventory>,
    shutdown: &CancellationToken,
    tasks: &mut Tasks,
) -> Result<Background, DaemonError> {
    let configs = config.events.sinks();
    let sinks = Sinks::start(
        &configs,
        inventory.store().clone(),
        inventory.metrics().clone(),
        shutdown.clone(),
    )
    .await?;
    let (reloads, reloaded) = mpsc::channel(1);
    tasks.spawn("event sinks", sinks.run(reloaded));
    let (probe, probed) = liveness::channel();
    let (inventory, stop) = (inventory.clone(), shutdown.clone());
    tasks.spawn("scheduler", async move {
        scheduler::run(inventory, probed, stop).await;
        Ok::<(), TaskError>(())
    });
    Ok(Background { reloads, probe })
}

/// Binds the API socket (and `metrics.listen`) and serves until `shutdown`.
async fn serve_api(
    config: &Config,
    state: &Arc<AppState>,
    shutdown: &CancellationToken,
    tasks: &mut Tasks,
) -> Result<(), DaemonError> {
    if let Some(addr) = config.metrics_listen {
        let listener = bind_tcp(addr, "cannot bind metrics.listen").await?;
        info!(%addr, "metrics listening");
        let app = api::metrics_router(state.clone());
        tasks.spawn(
            "metrics listener",
            serve::serve(listener, app, serve::Limits::METRICS, shutdown.clone()),
        );
    }
    let limits = Limits {
        max_body: config.max_request_body,
        timeout: config.request_timeout.std(),
    };
    if let Some(path) = &config.read_only_socket {
        let listener = bind_socket(path, config.read_only_socket_mode)?;
        info!(socket = %path.display(), "read-only API listening");
        warn_if_unreachable(path);
        let app = api::read_only_router(state.clone(), limits);
        tasks.spawn(
            "read-only API server",
            serve::serve(listener, app, serve::Limits::READ_ONLY, shutdown.clone()),
        );
    }
    let listener = bind_socket(&config.socket, config.socket_mode)?;
    info!(socket = %config.socket.display(), "API listening");
    let app = api::router(state.clone(), limits);
    tasks.spawn(
        "API server",
        serve::serve(listener, app, serve::Limits::API, shutdown.clone()),
    );
    Ok(())
}

/// Binds `pki.listen`, where relying parties fetch the CAs' CRLs and certificates, and serves
/// it until `shutdown`.
async fn serve_pki(
    config: &Config,
    inventory: &Arc<Inventory>,
    shutdown: &CancellationToken,
    tasks: &mut Tasks,
) -> Result<(), DaemonError> {
    let Some(PkiConfig {
        base_url,
        listen: Some(addr),
    }) = &config.pki
    else {
        return Ok(());
    };
    let listener = bind_tcp(*addr, "cannot bind pki.listen").await?;
    info!(%addr, base_url = %base_url, "PKI listener serving CRLs and CA certificates");
    tasks.spawn(
        "PKI listener",
        serve::serve(
            listener,
            pki::router(inventory.clone(), base_url),
            serve::Limits::PKI,
            shutdown.clone(),
        ),
    );
    Ok(())
}

/// Binds a TCP listener of the config (`what` names its key), before READY: a taken port is a
/// start-up error.
async fn bind_tcp(
    addr: std::net::SocketAddr,
    what: &'static str,
) -> Result<tokio::net::TcpListener, DaemonError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| DaemonError::Io {
            what,
            path: addr.to_string().into(),
            source,
        })
}

/// Handles signals until one asks us to stop. SIGHUP reloads the config; a config that does
/// not load is logged and the running one kept.
async fn wait_for_stop(
    config: &mut Config,
    env: &Environment,
    state: &AppState,
    logging: &Logging,
    sinks: &mpsc::Sender<sinks::Reload>,
) {
    let (Ok(mut hup), Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::hangup()),
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        error!("cannot install signal handlers; stopping");
        return;
    };
    loop {
        tokio::select! {
            // SIGHUP: reload, then keep serving.
            _ = hup.recv() => reload(config, env, state, logging, sinks).await,
            // SIGTERM (systemctl stop) or SIGINT (Ctrl-C): leave the loop and drain.
            _ = term.recv() => return,
            _ = int.recv() => return,
        }
    }
}

async fn reload(
    config: &mut Config,
    env: &Environment,
    state: &AppState,
    logging: &Logging,
    sinks: &mpsc::Sender<sinks::Reload>,
) {
    systemd::reloading();
    let Some(source) = config.source.clone() else {
        info!("SIGHUP: running on the built-in default; nothing to reload");
        systemd::reloaded();
        return;
    };
    match Config::load(Some(&source), env) {
        Err(err) => error!(error = %err, "config reload rejected; keeping the running config"),
        Ok(new) => {
            for key in restart_only_changes(config, &new) {
                warn!(key, "changed; takes effect at the next restart");
            }
            logging.set_level(&new.log_level);
            // Restarted even when unchanged (secret and CA files are read again), and before
            // the new settings apply, so that new sinks get the events those cause.
            restart_sinks(sinks, new.events.sinks()).await;
            if let Err(err) = state.inventory.apply(Settings::from_config(&new)).await {
                error!(error = %err, "applying the reloaded renewal settings failed");
            }
            match state.inventory.start(&new.cas).await {
                Ok(created) => created
                    .iter()
                    .for_each(|name| info!(ca = %name, "created CA")),
                Err(err) => error!(error = %err, "creating configured CAs failed"),
            }
            *config = keep_running(config, new);
            info!(config = %source.display(), "config reloaded");
        }
    }
    systemd::reloaded();
}

/// Hands the reloaded sink configuration to the running sinks and waits until they run it
/// (or refused it, which they log).
async fn restart_sinks(sinks: &mpsc::Sender<sinks::Reload>, configs: SinkConfigs) {
    let (done, applied) = oneshot::channel();
    if sinks.send((configs, done)).await.is_err() || applied.await.is_err() {
        // The sinks' task has ended; the supervisor is stopping the daemon already.
        warn!("event sinks are not running; the reloaded sinks are not applied");
    }
}

/// The keys marked `[restart]` in the annotated config that `new` changes: they were bound,
/// opened or built once at start (sockets, listeners, the store, the master keys, the API
/// limits, the ACME issuers and validation) and a reload cannot apply them.
fn restart_only_changes(running: &Config, new: &Config) -> Vec<&'static str> {
    [
        ("daemon.state-dir", running.state_dir != new.state_dir),
        ("daemon.socket", running.socket != new.socket),
        ("daemon.socket-mode", running.socket_mode != new.socket_mode),
        (
            "daemon.read-only-socket",
            running.read_only_socket != new.read_only_socket,
        ),
        (
            "daemon.read-only-socket-mode",
            running.read_only_socket_mode != new.read_only_socket_mode,
        ),
        ("daemon.log", running.log != new.log),
        (
            "secrets.master-key-file",
            running.master_key != new.master_key,
        ),
        (
            "secrets.previous-master-key-files",
            running.previous_master_keys != new.previous_master_keys,
        ),
        ("store.path", running.store_path != new.store_path),
        ("store.synchronous", running.synchronous != new.synchronous),
        (
            "api.request-timeout",
            running.request_timeout != new.request_timeout,
        ),
        (
            "api.max-request-body",
            running.max_request_body != new.max_request_body,
        ),
        (
            "api.audit-retention",
            running.audit_retention != new.audit_retention,
        ),
        (
            "metrics.listen",
            running.metrics_listen != new.metrics_listen,
        ),
        ("acme", running.acme != new.acme),
        ("validation", running.validation != new.validation),
        ("pki", running.pki != new.pki),
    ]
    .into_iter()
    .filter_map(|(key, changed)| changed.then_some(key))
    .collect()
}

/// The reloaded config as the daemon now runs it: `new`, with the restart-only keys still as
/// they were started, so the next reload compares against what really runs.
fn keep_running(running: &Config, new: Config) -> Config {
    Config {
        state_dir: running.state_dir.clone(),
        socket: running.socket.clone(),
        socket_mode: running.socket_mode,
        read_only_socket: running.read_only_socket.clone(),
        read_only_socket_mode: running.read_only_socket_mode,
        log: running.log,
        master_key: running.master_key.clone(),
        previous_master_keys: running.previous_master_keys.clone(),
        store_path: running.store_path.clone(),
        synchronous: running.synchronous,
        request_timeout: running.request_timeout,
        max_request_body: running.max_request_body,
        audit_retention: running.audit_retention,
        metrics_listen: running.metrics_listen,
        acme: running.acme.clone(),
        validation: running.validation.clone(),
        pki: running.pki.clone(),
        ..new
    }
}

fn create_private_dir(dir: &Path) -> Result<(), DaemonError> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| DaemonError::Io {
            what: "cannot create state directory",
            path: dir.to_owned(),
            source,
        })
}

/// An existing state directory that others may enter is made private when it is ours, and
/// refused when it is not (L12 of the security review: a 0755 directory was used as it was,
/// and its 0660 socket let the operator's group in).
fn keep_private(dir: &Path) -> Result<(), DaemonError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let io = |what, source| DaemonError::Io {
        what,
        path: dir.to_owned(),
        source,
    };
    let meta = std::fs::metadata(dir).map_err(|e| io("cannot read state directory", e))?;
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 == 0 {
        return Ok(());
    }
    // Only a directory that is certkeeper's is changed: empty, or holding its lock file. A
    // state-dir pointed at a shared directory (/srv, /var/lib) is refused, not locked down.
    let ours = std::fs::read_dir(dir)
        .map_err(|e| io("cannot read state directory", e))?
        .filter_map(Result::ok)
        .all(|entry| {
            let name = entry.file_name();
            name == "lock"
                || name == "master-key"
                || name.to_string_lossy().starts_with("certkeeper.db")
                || name.to_string_lossy().ends_with(".sock")
        });
    if !ours || meta.uid() != rustix::process::geteuid().as_raw() {
        return Err(DaemonError::StateDirShared {
            path: dir.to_owned(),
            mode,
            owner: meta.uid(),
        });
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| io("cannot make the state directory private", e))?;
    warn!(dir = %dir.display(), was = %format!("{mode:04o}"), "state directory was open to others; made it 0700");
    Ok(())
}

/// One daemon per state directory: two writers on one database would corrupt each other's view
/// of the inventory. The lock is released when the file handle drops (or the process dies).
fn lock_state_dir(dir: &Path) -> Result<std::fs::File, DaemonError> {
    let path = dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| DaemonError::Io {
            what: "cannot open lock file",
            path: path.clone(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(DaemonError::AlreadyRunning(dir.to_owned())),
        Err(std::fs::TryLockError::Error(source)) => Err(DaemonError::Io {
            what: "cannot lock",
            path,
            source,
        }),
    }
}

fn load_keyring(config: &Config) -> Result<Keyring, DaemonError> {
    let create = matches!(config.master_key, MasterKeySource::StateDir(_));
    let (keyring, created) = Keyring::load(
        config.master_key.path(),
        create,
        &config.previous_master_keys,
    )?;
    if created {
        warn!(
            path = %config.master_key.path().display(),
            key_id = keyring.current_kid(),
            "created a new master key (0400); back it up: without it no stored private key can be decrypted"
        );
    } else {
        info!(path = %config.master_key.path().display(), key_id = keyring.current_kid(), "master key loaded");
    }
    Ok(keyring)
}

/// The read-only socket is for users outside the daemon's group: say so when its directory
/// keeps them out.
fn warn_if_unreachable(socket: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Some(dir) = socket.parent() else {
        return;
    };
    if let Ok(meta) = std::fs::metadata(dir)
        && meta.permissions().mode() & 0o001 == 0
    {
        warn!(
            socket = %socket.display(),
            dir = %dir.display(),
            "other users cannot reach daemon.read-only-socket: its directory is not searchable by them"
        );
    }
}

/// Binds the API socket. A leftover socket file from a crash is replaced; one that still
/// answers belongs to a running daemon and is left alone.
fn bind_socket(path: &Path, mode: u32) -> Result<UnixListener, DaemonError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |what, source| DaemonError::Io {
        what,
        path: path.to_owned(),
        source,
    };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        // Only a socket is ours to replace: anything else at the path is somebody's file.
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            return Err(DaemonError::NotASocket(path.to_owned()));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(DaemonError::SocketInUse(path.to_owned()));
        }
        std::fs::remove_file(path).map_err(|e| io("cannot remove stale socket", e))?;
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_private_dir(parent)?;
    }
    let listener = UnixListener::bind(path).map_err(|e| io("cannot bind API socket", e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| io("cannot set mode of", e))?;
    Ok(listener)
}
