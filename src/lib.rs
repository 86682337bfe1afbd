//! certkeeper: a certificate lifecycle daemon (see README.md and DESIGN.md).
//!
//! One binary: `certkeeper serve` runs the daemon; every other verb is a client of its API.

pub mod config; // raw TOML -> checked Config, once
pub mod keys; // key generation, parsing and the canonical PKCS#8 form
pub mod model; // domain types shared by daemon, API and CLI; no I/O
pub mod span; // durations as operators write them ("90d")
pub mod store; // SQLite inventory, group-commit writer, envelope encryption
