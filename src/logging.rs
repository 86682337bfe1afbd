//! Logging: journald with structured fields when running under systemd, stderr otherwise.
//! The level can change at runtime (config reload) through [`Logging::set_level`].

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, reload};

use crate::config::LogTarget;

pub struct Logging {
    filter: reload::Handle<EnvFilter, Registry>,
    pub target: &'static str,
}

impl Logging {
    /// Installs the global subscriber. `RUST_LOG`, when set, overrides the config's level.
    pub fn init(target: LogTarget, level: &str) -> Self {
        let (filter, handle) = reload::Layer::new(filter_for(level));
        let journald = match target {
            LogTarget::Stderr => None,
            LogTarget::Journald => tracing_journald::layer().ok(),
            // systemd sets JOURNAL_STREAM when stderr is connected to the journal.
            LogTarget::Auto => {
                std::env::var_os("JOURNAL_STREAM").and_then(|_| tracing_journald::layer().ok())
            }
        };
        let used = if journald.is_some() {
            "journald"
        } else {
            "stderr"
        };
        let output = match journald {
            Some(layer) => layer.with_syslog_identifier("certkeeper".into()).boxed(),
            None => tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_target(false)
                .boxed(),
        };
        // A second init (tests) is not an error worth failing for.
        let _ = tracing_subscriber::registry()
            .with(filter)
            .with(output)
            .try_init();
        Self {
            filter: handle,
            target: used,
        }
    }

    pub fn set_level(&self, level: &str) {
        if let Err(err) = self.filter.reload(filter_for(level)) {
            tracing::warn!(error = %err, "cannot change the log level");
        }
    }
}

fn filter_for(level: &str) -> EnvFilter {
    match std::env::var("RUST_LOG") {
        Ok(env) if !env.is_empty() => EnvFilter::new(env),
        // A full directive ("certkeeper=debug,sqlx=info") is used as written.
        _ if level.contains(['=', ',']) => EnvFilter::new(level),
        // Dependencies are noisy at debug level; keep them at warn unless asked otherwise.
        _ => EnvFilter::new(format!("warn,certkeeper={level}")),
    }
}
