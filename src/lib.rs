//! certkeeper: a certificate lifecycle daemon (see README.md and DESIGN.md).
//!
//! One binary: `certkeeper serve` runs the daemon; every other verb is a client of its API.
//! The modules, from the top (the daemon and its interfaces) down to pure leaves:

// The daemon and its interfaces
pub mod api; // HTTP/JSON API under /v1 on the Unix socket; types shared with the CLI
pub mod audit; // who changed what or exported which key: records, to the log and the store
pub mod cli; // verbs, socket client, output formatting
pub mod daemon; // lifecycle only: load, bind, spawn and supervise tasks, notify, signals, drain
pub mod metrics; // Prometheus text exposition: counters and per-certificate gauges
pub mod pki; // [pki]: the URLs certificates carry for CRLs and CA certificates, and their listener
pub mod serve; // HTTP on our listeners: connection cap, header and idle timeouts, graceful stop
pub mod systemd; // sd_notify: READY, RELOADING, STOPPING, the watchdog

// The certificate lifecycle
pub mod acme; // public certificates from ACME CAs: accounts, orders, challenges
pub mod ca; // private CAs: roots, subordinates, leaf issuance, CSR signing, CRLs
pub mod events; // ACM-shaped lifecycle events: types, builders, delivery to sinks
pub mod inventory; // every certificate and CA operation, between API and store
pub mod scheduler; // the one timer task: renewals, expiry, the daily expiry check
pub mod validation; // proof of domain control: DNS delegation, zone publishers, HTTP-01
pub mod wake; // how the inventory tells the scheduler that deadlines moved

// State
pub mod store; // SQLite inventory, group-commit writer, envelope encryption

// Pure rules and types (no I/O)
pub mod config; // raw TOML -> checked Config, once
pub mod model; // domain types shared by daemon, API and CLI
pub mod policy; // timing rules and the planner: what happens next to a certificate, and when
pub mod schedule; // cron schedules and maintenance windows, UTC or a time zone
pub mod span; // durations as operators write them ("90d")

// PKI helpers
pub mod export; // passphrase-encrypted PEM and PKCS#12 export
pub mod import; // checks for certificates brought in from elsewhere
pub mod keys; // key generation, parsing and the canonical PKCS#8 form
pub mod pem; // strict PEM/DER reading of outside input, PEM writing
pub mod x509; // facts from parsed certificates, chain links

// Tools
pub mod argv; // other programs, run without a shell (sinks, publisher and deploy commands)
pub mod atomic_file; // files replaced or created atomically (temp file, fsync, rename/link)
pub mod exit; // process exit codes shared by the daemon and the CLI
pub mod liveness; // asking a task's loop whether it still goes round (the watchdog's probe)
pub mod lock; // taking a poisoned std lock, and why that is safe here
pub mod logging; // journald or stderr, reloadable level
pub mod process; // once at start: no core dumps, the daemon's private umask
pub mod secret_file; // secret files: owner, mode and size checked, contents zeroized
