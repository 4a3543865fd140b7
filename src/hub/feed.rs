//! Dispatch from a shared log's feed: with several nodes on one log, each
//! node hands its subscribers the events the feed reads, every node's, in
//! id order, instead of what its own writer appended.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::fanout::Fanout;
use crate::log::FeedBatch;

/// Dispatches each batch of the feed until shutdown or the feed's end.
pub(super) async fn run(
    mut batches: mpsc::Receiver<FeedBatch>,
    fanout: Arc<Fanout>,
    shutdown: CancellationToken,
) {
    loop {
        let batch = tokio::select! {
            _ = shutdown.cancelled() => return,
            batch = batches.recv() => match batch {
                Some(batch) => batch,
                None => return,
            },
        };
        if let Some(missed) = &batch.missed {
            // Events are gone that this node never read: the subscribers
            // that may have wanted them resume through a replay, which
            // tells them of the gap.
            let closed = fanout.cut_off(|filter| missed.affects(filter));
            tracing::warn!(
                ?missed,
                subscribers = closed,
                "retention removed events before this node read them; \
                 their subscribers reconnect and are told of the gap"
            );
        }
        fanout.dispatch(&batch.events);
    }
}
