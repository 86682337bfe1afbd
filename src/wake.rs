//! How the rest of the daemon tells the scheduler that deadlines may have moved.
//!
//! It lives apart from the scheduler because it is the one thing the inventory needs from it:
//! the inventory wakes the timer task after a change, and the timer task calls the inventory to
//! act. With `Wake` in its own file neither imports the other's module for that.

use std::sync::atomic::{AtomicI64, Ordering};

use time::OffsetDateTime;
use tokio::sync::Notify;

/// A wake-up for the scheduler's loop.
///
/// A new certificate only adds deadlines, and wakes the loop only when one of them comes
/// before the loop's next look: a burst of issuance (deadlines weeks away) leaves it asleep
/// instead of costing a store read per certificate. Any other change wakes it.
pub struct Wake {
    notify: Notify,
    /// When the sleeping loop looks next, in Unix milliseconds; `i64::MAX` while it is awake
    /// (a deadline added during a pass may have been missed by its reads: look again).
    until_ms: AtomicI64,
}

impl Default for Wake {
    fn default() -> Self {
        Self {
            notify: Notify::new(),
            until_ms: AtomicI64::new(i64::MAX),
        }
    }
}

impl Wake {
    /// Something changed that the loop must look at (a revocation, a new policy, a renewal
    /// ended).
    pub fn changed(&self) {
        self.notify.notify_one();
    }

    /// A deadline was added (`None`: none was): the loop looks again if it comes first.
    pub fn deadline(&self, at: Option<OffsetDateTime>) {
        let Some(at) = at else { return };
        if unix_ms(at) < self.until_ms.load(Ordering::SeqCst) {
            self.notify.notify_one();
        }
    }

    /// The loop is running a pass: every change counts.
    pub(crate) fn awake(&self) {
        self.until_ms.store(i64::MAX, Ordering::SeqCst);
    }

    /// The loop sleeps until `at` unless woken.
    pub(crate) fn sleeping_until(&self, at: OffsetDateTime) {
        self.until_ms.store(unix_ms(at), Ordering::SeqCst);
    }

    pub(crate) async fn notified(&self) {
        self.notify.notified().await;
    }
}

fn unix_ms(at: OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use time::Duration;

    use super::*;

    /// Whether `wake` holds a notification (taken if so): its future, polled once.
    fn woken(wake: &Wake) -> bool {
        let mut notified = std::pin::pin!(wake.notified());
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        notified.as_mut().poll(&mut cx).is_ready()
    }

    #[test]
    fn only_an_earlier_deadline_wakes_the_sleeping_loop() {
        let now = OffsetDateTime::UNIX_EPOCH + Duration::days(20_000);
        let wake = Wake::default();
        // Awake (a pass in progress): every deadline counts, the pass may have missed it.
        wake.deadline(Some(now + Duration::days(300)));
        assert!(woken(&wake));
        // Asleep until an hour from now.
        wake.sleeping_until(now + Duration::hours(1));
        wake.deadline(Some(now + Duration::days(30)));
        wake.deadline(None);
        assert!(!woken(&wake), "a later deadline lets the loop sleep");
        wake.deadline(Some(now + Duration::minutes(5)));
        assert!(woken(&wake), "an earlier one wakes it");
        // Any other change always wakes it.
        wake.changed();
        assert!(woken(&wake));
        wake.awake();
        wake.deadline(Some(now + Duration::days(300)));
        assert!(woken(&wake));
    }
}
