//! The `certkeeper` binary: parse arguments, run the daemon or a client verb, map errors to
//! exit codes (listed in `certkeeper --help`).

use std::process::ExitCode;

use clap::Parser;

use certkeeper::cli::{self, Cli};
use certkeeper::{daemon, exit, logging::Logging, process};

/// Threads for blocking work at most; the systemd unit's `TasksMax=256` leaves room for them,
/// the async workers, the store writer and child processes.
const MAX_BLOCKING_THREADS: usize = 64;

fn main() -> ExitCode {
    // Before anything holds a secret: no core dump may carry the master key or a CA key.
    let dumpable = process::forbid_core_dumps();
    // One crypto provider for every TLS use; fails loudly if another crate enabled ring too.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::parse();
    // A bounded blocking pool (tokio's default allows 512 threads): it is where key
    // derivation, store reads and signing run, and the unit's TasksMax= counts every thread.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .build();
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("certkeeper: cannot start the async runtime: {err}");
            return ExitCode::from(exit::SOFTWARE);
        }
    };
    match cli::serve_args(&cli) {
        Some((config, state_dir)) => {
            process::private_umask();
            let (config, env) = match daemon::load_config(config, state_dir) {
                Ok(loaded) => loaded,
                Err(err) => {
                    eprintln!("certkeeper: {err}");
                    return ExitCode::from(err.exit_code());
                }
            };
            let logging = Logging::init(config.log, &config.log_level);
            if let Err(err) = dumpable {
                tracing::warn!(error = %err, "cannot make the process non-dumpable; a core dump would hold keys");
            }
            match runtime.block_on(daemon::serve(config, env, &logging)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    tracing::error!(error = %err, "certkeeper cannot run");
                    eprintln!("certkeeper: {err}");
                    ExitCode::from(err.exit_code())
                }
            }
        }
        None => match runtime.block_on(cli::run(cli)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(failure) => {
                // An empty message means the verb already printed what the user needs
                // (`check` reports on stdout, as monitoring plugins do).
                if !failure.message.is_empty() {
                    eprintln!("certkeeper: {}", failure.message);
                }
                ExitCode::from(failure.code)
            }
        },
    }
}
