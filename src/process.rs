//! Protections for the whole process, set once at start (M1 of the security review).
//!
//! A core dump of certkeeper would hold the master key and every CA key in the clear, in a
//! file outside the state directory that backups and crash reporters pick up. The unit sets
//! `LimitCORE=0`, but the binary also runs outside systemd, so it makes itself non-dumpable
//! first thing: the kernel then writes no core on a crash, and other processes of the same
//! user can neither ptrace it nor read its memory through `/proc/PID/mem`.
//!
//! The daemon also runs under a private umask: every file and socket it creates starts as
//! owner-only, and whatever must be shared (the API sockets, webroot challenge files, deployed
//! certificates) gets its mode set explicitly. That closes the window between `bind` and
//! `chmod` in which a socket had the caller's umask-derived mode.

use rustix::fs::Mode;
use rustix::process::{DumpableBehavior, set_dumpable_behavior, umask};

/// No core dumps and no ptrace or `/proc/PID/mem` reading by other processes. Every command
/// calls it: the CLI handles exported keys and passphrases too. Failing is only logged by the
/// caller: the kernel always allows it, so an error means an unusual sandbox, not an attack.
pub fn forbid_core_dumps() -> std::io::Result<()> {
    set_dumpable_behavior(DumpableBehavior::NotDumpable).map_err(std::io::Error::from)
}

/// The daemon's umask: files it creates are owner-only unless it says otherwise.
pub fn private_umask() {
    umask(Mode::from_raw_mode(0o077));
}
