//! systemd integration: readiness, reload and stop notifications, and the watchdog.
//!
//! All of it is a no-op outside systemd (no `NOTIFY_SOCKET`), so the daemon runs the same way
//! from a terminal and from a unit.

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

/// When systemd's watchdog is on (`WATCHDOG_USEC`), pings it at half the interval until
/// `stop` is cancelled. The pings come from the runtime: if the runtime wedges, they stop and
/// systemd restarts us, which is the point.
pub fn spawn_watchdog(stop: CancellationToken) -> Option<Duration> {
    let interval = sd_notify::watchdog_enabled()? / 2;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        loop {
            tokio::select! {
                // Shutdown: stop pinging; STOPPING has been sent, so systemd will not expect more.
                () = stop.cancelled() => return,
                // Interval elapsed: we are alive.
                _ = tick.tick() => notify(&[NotifyState::Watchdog]),
            }
        }
    });
    Some(interval)
}
