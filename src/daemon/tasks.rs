//! The daemon's long-running tasks, in one set, supervised.
//!
//! Every task the daemon starts (the API and metrics listeners, the HTTP-01 responder, the
//! embedded DNS server, the scheduler, the event sinks, the watchdog) runs in this set under a
//! name. None of them ends while the daemon runs: one that does, cleanly, with an error, or by
//! panicking, means part of the daemon is gone (a panicked scheduler renews nothing again while
//! `/v1/health` stays green). [`Tasks::first_ended`] reports it, and the daemon stops with a
//! non-zero exit so that systemd restarts it.

use std::collections::HashMap;
use std::future::Future;

use tokio::task::{Id, JoinError, JoinSet};
use tracing::{error, warn};

use crate::events::sinks::SinkFailure;
use crate::exit;
use crate::store::StoreError;

/// Why a task ended.
pub(super) type TaskError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Default)]
pub(super) struct Tasks {
    set: JoinSet<Result<(), TaskError>>,
    names: HashMap<Id, &'static str>,
}

/// A task that ended, and how.
pub(super) struct Ended {
    pub task: &'static str,
    /// Its error, or why ending at all is one.
    pub reason: String,
    /// The exit code its end calls for: on data the store holds that does not decode, one
    /// systemd does not restart on (restarting would meet the same data again); on a store
    /// that stopped taking writes, `exit::IO` (a restart is what it needs).
    pub exit_code: u8,
}

impl Tasks {
    /// Runs `task` in the set under `name`.
    pub(super) fn spawn<E: Into<TaskError>>(
        &mut self,
        name: &'static str,
        task: impl Future<Output = Result<(), E>> + Send + 'static,
    ) {
        let handle = self
            .set
            .spawn(async move { task.await.map_err(Into::into) });
        self.names.insert(handle.id(), name);
    }

    /// The first task to end. While the daemon runs, any end is a failure. Pending forever
    /// when the set is empty.
    pub(super) async fn first_ended(&mut self) -> Ended {
        match self.set.join_next_with_id().await {
            Some(joined) => self.ended(joined),
            None => std::future::pending().await,
        }
    }

    /// After shutdown: waits for every task, logging the ones that failed as they stopped.
    pub(super) async fn drain(&mut self) {
        while let Some(joined) = self.set.join_next_with_id().await {
            let failed = matches!(&joined, Ok((_, Err(_))) | Err(_));
            if failed {
                let ended = self.ended(joined);
                warn!(task = ended.task, error = %ended.reason, "task failed while stopping");
            }
        }
    }

    fn ended(&mut self, joined: Result<(Id, Result<(), TaskError>), JoinError>) -> Ended {
        let (id, reason, exit_code) = match joined {
            Ok((id, Ok(()))) => (id, "it stopped on its own".to_owned(), exit::SOFTWARE),
            Ok((id, Err(err))) => (id, err.to_string(), exit_code(&*err)),
            Err(err) if err.is_panic() => (err.id(), "it panicked".to_owned(), exit::SOFTWARE),
            Err(err) => (err.id(), err.to_string(), exit::SOFTWARE),
        };
        let task = self.names.remove(&id).unwrap_or("a task");
        Ended {
            task,
            reason,
            exit_code,
        }
    }
}

/// The exit code for a task that ended with `err`.
fn exit_code(err: &(dyn std::error::Error + 'static)) -> u8 {
    if let Some(SinkFailure::Outbox { .. }) = err.downcast_ref::<SinkFailure>() {
        return exit::DATA;
    }
    err.downcast_ref::<StoreError>()
        .map_or(exit::SOFTWARE, StoreError::exit_code)
}

/// Logs the end of a task while the daemon runs, as the error it is.
pub(super) fn report(ended: &Ended) {
    error!(task = ended.task, error = %ended.reason, "task ended while the daemon was running; stopping so that systemd restarts certkeeper");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_ended_task_is_named_with_how_it_ended() {
        let mut tasks = Tasks::default();
        tasks.spawn("sleeper", async {
            tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
            Ok::<(), TaskError>(())
        });
        tasks.spawn("failing", async { Err::<(), _>("the outbox is damaged") });
        let ended = tasks.first_ended().await;
        assert_eq!(
            (ended.task, ended.reason.as_str()),
            ("failing", "the outbox is damaged")
        );

        let mut tasks = Tasks::default();
        tasks.spawn("panicking", async {
            if true {
                panic!("boom");
            }
            Ok::<(), TaskError>(())
        });
        let ended = tasks.first_ended().await;
        assert_eq!(
            (ended.task, ended.reason.as_str()),
            ("panicking", "it panicked")
        );

        let mut tasks = Tasks::default();
        tasks.spawn("quitter", async { Ok::<(), TaskError>(()) });
        assert_eq!(tasks.first_ended().await.reason, "it stopped on its own");
    }
}
