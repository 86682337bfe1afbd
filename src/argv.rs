//! Other programs, run without a shell: the one way certkeeper starts a child process.
//!
//! Command event sinks, the DNS publisher command and (next) deploy commands all run an
//! operator's program. An [`Argv`] is that program and its fixed arguments; it cannot be empty
//! (the config refuses an empty list with the key that holds it), so nothing later indexes a
//! list that might be. [`Argv::run`] adds the per-call arguments, environment and input, waits
//! at most a timeout (then the child is killed: `kill_on_drop`), and turns a non-zero exit into
//! a [`RunError`] that carries the command's stderr, which is where operators' scripts say what
//! went wrong.
//!
//! Every child is started the same way here, so that none can be given more than it needs (L7
//! of the security review):
//! - **A clean environment.** Only [`INHERITED`] and `LC_*` pass from the daemon's own
//!   environment, then the caller's `CERTKEEPER_*` variables. systemd's variables stay behind
//!   (`CREDENTIALS_DIRECTORY` says where the master key is, `NOTIFY_SOCKET` would let a child
//!   speak for the daemon, `WATCHDOG_*`, `LISTEN_*`, `INVOCATION_ID`), and so does anything an
//!   operator exported into the daemon's environment (`AWS_SECRET_ACCESS_KEY=...`).
//! - **Bounded output.** stdout goes to /dev/null (nothing reads it); stderr is read to its end
//!   but only its last [`STDERR_KEPT`] bytes are kept, so a command printing gigabytes costs
//!   time (within its timeout), not memory.
//! - **Redacted stderr.** What is kept is redacted ([`redact`]: values after secret-looking
//!   names, bearer tokens, URL passwords, long opaque strings) before it becomes part of an
//!   error, because errors travel: into logs, renewal reasons, events and webhooks.

mod redact;

use std::ffi::OsString;
use std::fmt;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// The daemon's variables a child inherits (with `LC_*`): where programs are found, the
/// locale, the time zone, and the home and temporary directories (a provider's CLI finds its
/// configuration under `$HOME`). Nothing else: see the module header.
pub const INHERITED: &[&str] = &["PATH", "HOME", "LANG", "TZ", "TMPDIR"];
/// How much of a command's stderr is kept for its error: the last bytes, where scripts
/// usually say what went wrong. Enough for a few lines, small enough for a renewal reason.
pub const STDERR_KEPT: usize = 2048;

/// A program and its fixed arguments; never empty.
#[derive(Clone, PartialEq, Eq)]
pub struct Argv {
    program: String,
    args: Vec<String>,
}

/// An argument list without a program.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("must name a program (an empty list or an empty first element)")]
pub struct EmptyArgv;

impl Argv {
    /// `argv[0]` is the program, the rest its arguments.
    pub fn new(argv: Vec<String>) -> Result<Self, EmptyArgv> {
        let mut parts = argv.into_iter();
        match parts.next() {
            Some(program) if !program.is_empty() => Ok(Self {
                program,
                args: parts.collect(),
            }),
            _ => Err(EmptyArgv),
        }
    }

    pub fn program(&self) -> &str {
        &self.program
    }

    /// The command as shown in errors and logs: the program, with `...` standing for the fixed
    /// arguments, which may hold credentials (`--token=...`).
    pub fn shown(&self) -> String {
        if self.args.is_empty() {
            self.program.clone()
        } else {
            format!("{} ...", self.program)
        }
    }

    /// Runs the program with its fixed arguments followed by `extra`, in a clean environment
    /// ([`INHERITED`], `LC_*`) with the variables in `env` added, and `stdin` as its input (else
    /// none). Waits at most `timeout`, the input written and stderr read included; a command
    /// still running then is killed. Success is exit status 0.
    pub async fn run(
        &self,
        extra: &[&str],
        env: &[(&str, &str)],
        stdin: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<(), RunError> {
        let mut child = self
            .command(extra, env, stdin.is_some())
            .spawn()
            .map_err(|source| RunError::Start {
                program: self.program.clone(),
                source,
            })?;
        let input = stdin.zip(child.stdin.take());
        let stderr = child.stderr.take();
        // Input, stderr and exit are waited for together: a command may fill its stderr pipe
        // before it reads its input. All of it inside the timeout: a command that does not read
        // a large input (more than the pipe holds) would otherwise hold us for as long as it
        // runs (L6 of the security review).
        let run = async move {
            let (_, stderr, status) =
                tokio::join!(write_input(input), read_tail(stderr), child.wait());
            Ok::<_, std::io::Error>((status?, stderr?))
        };
        let (status, stderr) = tokio::time::timeout(timeout, run)
            .await
            .map_err(|_| RunError::Timeout { after: timeout })?
            .map_err(RunError::Wait)?;
        if status.success() {
            return Ok(());
        }
        Err(RunError::Failed {
            status,
            stderr: Stderr::new(&stderr),
        })
    }

    /// The child as [`Argv::run`] starts it: the clean environment, stdout to /dev/null, stderr
    /// and (with `input`) stdin piped, killed when dropped.
    fn command(
        &self,
        extra: &[&str],
        env: &[(&str, &str)],
        input: bool,
    ) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(&self.program);
        command
            .args(&self.args)
            .args(extra)
            .env_clear()
            .envs(inherited(std::env::vars_os()))
            .envs(env.iter().copied())
            .stdin(if input { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    }
}

/// The variables of `vars` (the daemon's environment) that a child may see: [`INHERITED`] and
/// `LC_*`, but no name that looks like it holds a secret, even there.
fn inherited(
    vars: impl IntoIterator<Item = (OsString, OsString)>,
) -> impl Iterator<Item = (OsString, OsString)> {
    vars.into_iter().filter(|(name, _)| {
        name.to_str().is_some_and(|name| {
            (INHERITED.contains(&name) || name.starts_with("LC_")) && !redact::is_secret_name(name)
        })
    })
}

/// Writes a command's input and closes its stdin, so that a command reading to the end sees it.
async fn write_input(input: Option<(&[u8], tokio::process::ChildStdin)>) {
    if let Some((input, mut pipe)) = input {
        // A command that ignores its input may close stdin early; that is its business.
        let _ = pipe.write_all(input).await;
    }
}

/// The end of what a command wrote on a pipe: its last [`STDERR_KEPT`] bytes at most.
#[derive(Debug, Default)]
struct Tail {
    bytes: Vec<u8>,
    /// How many bytes came before `bytes` and were dropped.
    dropped: u64,
}

/// Reads `pipe` to its end, keeping only its tail: memory stays under twice [`STDERR_KEPT`]
/// whatever the command prints.
async fn read_tail(pipe: Option<impl AsyncRead + Unpin>) -> std::io::Result<Tail> {
    let mut tail = Tail::default();
    let Some(mut pipe) = pipe else {
        return Ok(tail);
    };
    let mut buf = [0u8; 8192];
    loop {
        let n = pipe.read(&mut buf).await?;
        if n == 0 {
            return Ok(tail);
        }
        tail.bytes.extend_from_slice(&buf[..n]);
        if tail.bytes.len() > 2 * STDERR_KEPT {
            let cut = tail.bytes.len() - STDERR_KEPT;
            tail.bytes.drain(..cut);
            tail.dropped += cut as u64;
        }
    }
}

/// A failed command's stderr as errors show it: its last [`STDERR_KEPT`] bytes, control
/// characters replaced, secrets redacted ([`redact::redact`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stderr {
    text: String,
    /// How many bytes before `text` are not shown.
    omitted: u64,
}

impl Stderr {
    fn new(tail: &Tail) -> Self {
        let (mut kept, mut omitted) = (tail.bytes.as_slice(), tail.dropped);
        if kept.len() > STDERR_KEPT {
            omitted += (kept.len() - STDERR_KEPT) as u64;
            kept = &kept[kept.len() - STDERR_KEPT..];
        }
        let mut text = String::from_utf8_lossy(kept).into_owned();
        if omitted > 0 {
            // The cut may fall inside a secret too short to look like one: its first word
            // goes.
            let word = text.find(char::is_whitespace).unwrap_or(text.len());
            omitted += word as u64;
            text.drain(..word);
        }
        let shown: String = text
            .trim()
            .chars()
            .map(|c| match c {
                '\n' | '\t' => c,
                c if c.is_control() => char::REPLACEMENT_CHARACTER,
                c => c,
            })
            .collect();
        Self {
            text: redact::redact(&shown),
            omitted,
        }
    }

    /// The shown text (redacted); empty when the command wrote nothing on stderr.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the command wrote nothing (visible) on stderr.
    pub fn is_empty(&self) -> bool {
        self.text.is_empty() && self.omitted == 0
    }
}

impl fmt::Display for Stderr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.omitted > 0 {
            write!(f, "[{} bytes before this not shown] ", self.omitted)?;
        }
        f.write_str(&self.text)
    }
}

/// Shows only [`Argv::shown`]: fixed arguments stay out of debug output too.
impl fmt::Debug for Argv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown())
    }
}

impl<'de> Deserialize<'de> for Argv {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let argv = Vec::<String>::deserialize(deserializer)?;
        Self::new(argv).map_err(serde::de::Error::custom)
    }
}

/// Why a command did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot start {program}: {source}")]
    Start {
        program: String,
        source: std::io::Error,
    },
    #[error("still running after {after:?} (killed)")]
    Timeout { after: Duration },
    #[error("cannot wait for it: {0}")]
    Wait(std::io::Error),
    /// The command ran and failed; its stderr is bounded and redacted ([`Stderr`]).
    #[error("{status}{}", if stderr.is_empty() { " (no stderr)".to_owned() } else { format!(": {stderr}") })]
    Failed { status: ExitStatus, stderr: Stderr },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(parts: &[&str]) -> Argv {
        Argv::new(parts.iter().map(|s| (*s).to_owned()).collect()).unwrap()
    }

    #[test]
    fn an_argv_names_a_program() {
        assert_eq!(Argv::new(vec![]), Err(EmptyArgv));
        assert_eq!(Argv::new(vec![String::new(), "x".into()]), Err(EmptyArgv));
        let a = argv(&["/bin/deploy", "--token=s3cret"]);
        assert_eq!(a.program(), "/bin/deploy");
        assert_eq!(a.shown(), "/bin/deploy ...");
        assert_eq!(
            format!("{a:?}"),
            "/bin/deploy ...",
            "no arguments in debug output"
        );
        assert_eq!(argv(&["true"]).shown(), "true");
        let parsed: Result<Argv, _> = serde_json::from_str("[]");
        assert!(
            parsed
                .unwrap_err()
                .to_string()
                .contains("must name a program")
        );
    }

    #[tokio::test]
    async fn runs_without_a_shell_and_reports_how_it_failed() {
        let ok = argv(&["sh", "-c", "read line; test \"$line\" = \"$WANT\""]);
        ok.run(
            &[],
            &[("WANT", "hello")],
            Some(b"hello\n"),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        let err = ok
            .run(
                &[],
                &[("WANT", "other")],
                Some(b"hello\n"),
                Duration::from_secs(10),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, RunError::Failed { .. }), "{err}");
        assert_eq!(err.to_string(), "exit status: 1 (no stderr)");

        let loud = argv(&["sh", "-c", "echo \"no $1\" >&2; exit 3", "sh"]);
        let err = loud
            .run(&["way"], &[], None, Duration::from_secs(10))
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "exit status: 3: no way");

        let slow = argv(&["sleep", "30"]);
        let err = slow
            .run(&[], &[], None, Duration::from_millis(100))
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "still running after 100ms (killed)");

        // A large input the command never reads does not hold the timeout back.
        let deaf = argv(&["sleep", "30"]);
        let big = vec![b'x'; 1 << 20];
        let err = deaf
            .run(&[], &[], Some(&big), Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(matches!(err, RunError::Timeout { .. }), "{err}");

        let missing = argv(&["/nonexistent/certkeeper-test"]);
        let err = missing
            .run(&[], &[], None, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cannot start /nonexistent/certkeeper-test:"),
            "{err}"
        );
    }

    #[test]
    fn children_inherit_only_the_allowlist() {
        let daemon_env = [
            ("PATH", "/usr/bin"),
            ("HOME", "/var/lib/certkeeper"),
            ("LANG", "C.UTF-8"),
            ("LC_ALL", "C"),
            ("LC_SECRET_TOKEN", "x"),
            ("TZ", "UTC"),
            ("TMPDIR", "/tmp"),
            (
                "CREDENTIALS_DIRECTORY",
                "/run/credentials/certkeeper.service",
            ),
            ("NOTIFY_SOCKET", "/run/systemd/notify"),
            ("WATCHDOG_USEC", "30000000"),
            ("LISTEN_FDS", "1"),
            ("INVOCATION_ID", "abc"),
            ("AWS_SECRET_ACCESS_KEY", "x"),
            ("RUST_LOG", "debug"),
        ]
        .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        let passed: Vec<String> = inherited(daemon_env)
            .map(|(k, _)| k.into_string().unwrap())
            .collect();
        assert_eq!(passed, ["PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR"]);
    }

    #[tokio::test]
    async fn stderr_is_bounded_and_redacted() {
        // Megabytes on stdout and stderr, then the error with a token: only the tail is kept.
        let loud = argv(&[
            "sh",
            "-c",
            "head -c 4000000 /dev/zero; yes 'progress line' | head -c 3000000 >&2; \
             echo 'auth failed: token=s3cr3t-value Authorization: Bearer abc.def' >&2; exit 1",
        ]);
        let err = loud
            .run(&[], &[], None, Duration::from_secs(60))
            .await
            .unwrap_err();
        let RunError::Failed { stderr, .. } = &err else {
            panic!("{err}");
        };
        assert!(
            stderr.as_str().len() <= STDERR_KEPT,
            "{}",
            stderr.as_str().len()
        );
        let message = err.to_string();
        assert!(
            message.contains("auth failed: token=[redacted] Authorization: Bearer [redacted]"),
            "{message}"
        );
        assert!(
            !message.contains("s3cr3t") && !message.contains("abc.def"),
            "{message}"
        );
        assert!(
            message.contains("bytes before this not shown] progress line"),
            "{message}"
        );

        // Control characters (a terminal escape) do not pass.
        let escape = argv(&["sh", "-c", "printf 'bad\\033]0;title\\007 x' >&2; exit 1"]);
        let err = escape
            .run(&[], &[], None, Duration::from_secs(10))
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "exit status: 1: bad\u{fffd}]0;title\u{fffd} x"
        );
    }
}
