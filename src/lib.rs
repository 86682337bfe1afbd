//! certkeeper: a certificate lifecycle daemon (see README.md and DESIGN.md).
//!
//! One binary: `certkeeper serve` runs the daemon; every other verb is a client of its API.

pub mod acme; // public certificates from ACME CAs: accounts, orders, HTTP-01/DNS-01
pub mod api; // HTTP/JSON API under /v1 on the Unix socket; types shared with the CLI
pub mod ca; // private CAs: roots, subordinates, leaf issuance, CSR signing, CRLs
pub mod cli; // verbs, socket client, output formatting
pub mod config; // raw TOML -> checked Config, once
pub mod daemon; // lifecycle only: load, bind, serve, notify, signals, drain
pub mod events; // ACM-shaped lifecycle events (written to the store's outbox)
pub mod export; // passphrase-encrypted PEM and PKCS#12 export
pub mod fsutil; // atomic file writes
pub mod import; // checks for certificates brought in from elsewhere
pub mod inventory; // every certificate and CA operation, between API and store
pub mod keys; // key generation, parsing and the canonical PKCS#8 form
pub mod lifecycle; // the timer task: renewals, expiry, the daily expiry check
pub mod logging; // journald or stderr, reloadable level
pub mod metrics; // Prometheus text exposition: counters and per-certificate gauges
pub mod model; // domain types shared by daemon, API and CLI; no I/O
pub mod pem; // strict PEM/DER reading of outside input, PEM writing
pub mod policy; // pure timing rules: renewal, jitter, backoff, windows, expiry thresholds
pub mod schedule; // cron schedules and maintenance windows, UTC or a time zone
pub mod sinks;
pub mod span; // durations as operators write them ("90d")
pub mod store; // SQLite inventory, group-commit writer, envelope encryption
pub mod systemd;
pub mod x509; // facts from parsed certificates, chain links // sd_notify and the watchdog // event delivery: journal, signed webhooks, commands
