//! What event delivery needs from the store's outbox, as a trait the store implements.
//!
//! The store writes events in the same transaction as their change; the sinks read them back
//! in order and remember how far each got. Writing that need down here, instead of calling the
//! store directly, keeps this module below the store (the store depends on [`super::Event`],
//! not the other way round) and is the whole of what a second store backend must offer for
//! delivery.

use std::fmt::Display;
use std::future::Future;
use std::sync::Arc;

use time::OffsetDateTime;
use tokio::sync::Notify;
use tracing::{info, warn};

use super::Event;
use crate::span::Span;

/// A failure to read or write the outbox.
pub trait OutboxError: Display + Send {
    /// Whether the stored data itself is damaged, so that retrying cannot help.
    fn is_corrupt(&self) -> bool;
}

/// The outbox: events in commit order (by sequence number), and a cursor per sink.
pub trait Outbox: Clone + Send + Sync + 'static {
    type Error: OutboxError;

    /// Notified after every commit that inserted events.
    fn committed(&self) -> Arc<Notify>;

    /// Up to `limit` events after sequence number `after`, in order.
    fn events_after(
        &self,
        after: i64,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<(i64, Event)>, Self::Error>> + Send;

    /// The sequence number of the last event `sink` has, if it has a cursor.
    fn cursor(&self, sink: &str) -> impl Future<Output = Result<Option<i64>, Self::Error>> + Send;

    fn set_cursor(
        &self,
        sink: &str,
        seq: i64,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// The sequence number of the newest event (0 when there is none).
    fn last_seq(&self) -> impl Future<Output = Result<i64, Self::Error>> + Send;

    /// Deletes events older than `before` with `seq <= max_seq`; returns how many.
    fn prune(
        &self,
        before: OffsetDateTime,
        max_seq: i64,
    ) -> impl Future<Output = Result<usize, Self::Error>> + Send;
}

/// Prunes events older than `retention` that every sink in `sinks` has acknowledged. A sink
/// without a cursor yet (or a failed read) prunes nothing: what it may still need stays.
pub async fn prune(outbox: &impl Outbox, sinks: &[String], retention: Span, now: OffsetDateTime) {
    let Ok(mut max_seq) = outbox.last_seq().await else {
        return;
    };
    for name in sinks {
        match outbox.cursor(name).await {
            Ok(Some(cursor)) => max_seq = max_seq.min(cursor),
            _ => return,
        }
    }
    // Saturating: a retention reaching before year -9999 keeps everything, it does not panic.
    match outbox
        .prune(now.saturating_sub(retention.time()), max_seq)
        .await
    {
        Ok(0) => {}
        Ok(n) => info!(pruned = n, "old events pruned"),
        Err(err) => warn!(error = %err, "pruning events failed"),
    }
}
