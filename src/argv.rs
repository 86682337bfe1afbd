//! Other programs, run without a shell: the one way certkeeper starts a child process.
//!
//! Command event sinks, the DNS publisher command and (next) deploy commands all run an
//! operator's program. An [`Argv`] is that program and its fixed arguments; it cannot be empty
//! (the config refuses an empty list with the key that holds it), so nothing later indexes a
//! list that might be. [`Argv::run`] adds the per-call arguments, environment and input, waits
//! at most a timeout (then the child is killed: `kill_on_drop`), and turns a non-zero exit into
//! a [`RunError`] that carries the command's stderr, which is where operators' scripts say what
//! went wrong.

use std::fmt;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use tokio::io::AsyncWriteExt;

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

    /// Runs the program with its fixed arguments followed by `extra`, the variables in `env`
    /// added to the daemon's environment, and `stdin` as its input (else none). Waits at most
    /// `timeout`; a command still running then is killed. Success is exit status 0.
    pub async fn run(
        &self,
        extra: &[&str],
        env: &[(&str, &str)],
        stdin: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<(), RunError> {
        let mut child = tokio::process::Command::new(&self.program)
            .args(&self.args)
            .args(extra)
            .envs(env.iter().copied())
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| RunError::Start {
                program: self.program.clone(),
                source,
            })?;
        let input = stdin.zip(child.stdin.take());
        // The input is written inside the timeout too: a command that does not read a large
        // input (more than the pipe holds) would otherwise hold us for as long as it runs
        // (L6 of the security review).
        let run = async move {
            if let Some((input, mut pipe)) = input {
                // A command that ignores its input may close stdin early; that is its business.
                let _ = pipe.write_all(input).await;
                // Closed here, so that a command reading to the end sees it.
                drop(pipe);
            }
            child.wait_with_output().await
        };
        let output = tokio::time::timeout(timeout, run)
            .await
            .map_err(|_| RunError::Timeout { after: timeout })?
            .map_err(RunError::Wait)?;
        if output.status.success() {
            return Ok(());
        }
        Err(RunError::Failed {
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
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
    #[error("{status}{}", if stderr.is_empty() { " (no stderr)".to_owned() } else { format!(": {stderr}") })]
    Failed { status: ExitStatus, stderr: String },
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
}
