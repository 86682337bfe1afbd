//! Process exit codes, shared by the daemon (`serve`) and the client verbs, so that a script
//! or a systemd unit reads the same number for the same kind of failure. They follow
//! sysexits(3) where one fits; `certkeeper --help` lists them.

pub const OK: u8 = 0;
/// The daemon refused the operation (not found, conflict) or a check failed.
pub const FAILED: u8 = 1;
/// Command-line usage error (clap).
pub const USAGE: u8 = 2;
/// The input was rejected as invalid (bad PEM, CSR, names, ...); for `serve`: data in the
/// store does not decode (the unit does not restart on it: the same data would stop it again).
pub const DATA: u8 = 65;
/// A file named on the command line cannot be read.
pub const NO_INPUT: u8 = 66;
/// The daemon cannot be reached.
pub const UNAVAILABLE: u8 = 69;
/// Internal error (in the daemon, or of the client).
pub const SOFTWARE: u8 = 70;
/// `serve`: a file, socket or listener cannot be created (EX_CANTCREAT).
pub const CANT_CREATE: u8 = 73;
/// An I/O error (EX_IOERR): output cannot be written; for `serve`: a commit failed with an I/O
/// error (an fsync), so the store stopped taking writes and the daemon exits for systemd to
/// restart it: SQLite then recovers from what is on disk (the unit restarts on it).
pub const IO: u8 = 74;
/// `serve`: another daemon holds the state directory or the socket; try again later
/// (EX_TEMPFAIL).
pub const TEMP_FAIL: u8 = 75;
/// The configuration is invalid, or the state does not match it (wrong master key).
pub const CONFIG: u8 = 78;
/// `serve`: the database file is damaged (`PRAGMA quick_check` fails, or SQLite finds it
/// corrupt): restore it from a backup. The unit does not restart on it: the same file would
/// stop it again.
pub const STORE_DAMAGED: u8 = 79;
/// `serve`: the database holds fewer commits than certkeeper had acknowledged (its WAL lost
/// its end, or an older copy was put in place). The unit does not restart on it; deleting the
/// high-water mark the message names accepts the database as it is.
pub const STORE_ROLLED_BACK: u8 = 80;
