//! Asking a task's loop whether it still goes round: what the watchdog pings systemd on.
//!
//! A task that is alive but stuck (a deadlock, a blocking call on the runtime, a loop that no
//! longer polls its select) looks exactly like a healthy idle one from outside. A [`Probe`]
//! sends the loop a question it answers from its `select!`; no answer within the watchdog
//! interval means the loop is not going round, and systemd should restart the daemon.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

/// The asking end, held by the watchdog.
#[derive(Clone)]
pub struct Probe(mpsc::Sender<oneshot::Sender<()>>);

/// The answering end, polled by the probed loop.
pub struct Probed(mpsc::Receiver<oneshot::Sender<()>>);

pub fn channel() -> (Probe, Probed) {
    // One question in flight is enough: the watchdog asks once per interval.
    let (tx, rx) = mpsc::channel(1);
    (Probe(tx), Probed(rx))
}

impl Probe {
    /// Whether the loop answered within `timeout`.
    pub async fn answered(&self, timeout: Duration) -> bool {
        let (tx, rx) = oneshot::channel();
        let asked = async { self.0.send(tx).await.is_ok() && rx.await.is_ok() };
        tokio::time::timeout(timeout, asked).await.unwrap_or(false)
    }
}

impl Probed {
    /// The next question; answer it with `send(())`. Pending forever once every probe is
    /// gone (no watchdog), so a `select!` branch on it is simply never taken.
    pub async fn question(&mut self) -> oneshot::Sender<()> {
        match self.0.recv().await {
            Some(reply) => reply,
            None => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_loop_that_answers_is_alive_one_that_does_not_is_not() {
        let (probe, mut probed) = channel();
        let answering = tokio::spawn(async move {
            loop {
                let _ = probed.question().await.send(());
            }
        });
        assert!(probe.answered(Duration::from_secs(5)).await);
        answering.abort();
        let _ = answering.await;
        assert!(!probe.answered(Duration::from_millis(50)).await, "gone");

        let (probe, _stuck) = channel();
        assert!(
            !probe.answered(Duration::from_millis(50)).await,
            "alive but never asks"
        );
    }
}
