//! systemd integration: readiness, reload and stop notifications, and the watchdog.
//!
//! All of it is a no-op outside systemd (no `NOTIFY_SOCKET`), so the daemon runs the same way
//! from a terminal and from a unit.

use std::future::Future;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

pub fn ready() {
    notify(&[NotifyState::Ready, NotifyState::Status("serving")]);
}

pub fn reloading() {
    notify(&[NotifyState::Reloading]);
}

pub fn reloaded() {
    notify(&[
        NotifyState::Ready,
        NotifyState::Status("serving (config reloaded)"),
    ]);
}

pub fn stopping() {
    notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

fn notify(states: &[NotifyState<'_>]) {
    if let Err(err) = sd_notify::notify(states) {
        tracing::warn!(error = %err, "cannot notify systemd");
    }
}

/// The watchdog's ping interval, half of `WATCHDOG_USEC`, when systemd's watchdog is on.
pub fn watchdog_interval() -> Option<Duration> {
    Some(sd_notify::watchdog_enabled()? / 2)
}

/// Pings systemd's watchdog every `interval` while `stuck()` finds every watched part going
/// round (`None`). While one does not answer, no ping is sent and the part is named in the
/// log: if it stays stuck, systemd restarts the daemon, which is the point. A bare timer would
/// keep pinging for a runtime whose scheduler or store writer has wedged. Runs until `stop`.
pub async fn watchdog<F, Fut>(interval: Duration, stop: CancellationToken, mut stuck: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<&'static str>>,
{
    let mut tick = tokio::time::interval(interval);
    loop {
        tokio::select! {
            // Shutdown: stop pinging; STOPPING has been sent, so systemd will not expect more.
            () = stop.cancelled() => return,
            // Interval elapsed: ask the watched parts.
            _ = tick.tick() => {}
        }
        match stuck().await {
            None => notify(&[NotifyState::Watchdog]),
            Some(part) => {
                tracing::error!(
                    part,
                    "not answering: the watchdog is not pinged (systemd restarts the daemon if this lasts)"
                );
            }
        }
    }
}
