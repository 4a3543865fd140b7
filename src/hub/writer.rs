//! The single writer: the one task that appends to the log and dispatches.
//!
//! Every publish, whatever its transport, becomes a request on one bounded
//! channel. The writer takes all requests waiting at once, appends them to
//! the log as one batch (so a slow backend, such as an fsync, is paid once
//! per batch: group commit), hands the new events to the fan-out in id
//! order (an idempotent retry's duplicate is answered, never delivered),
//! and only then answers each publisher. One writer means append
//! order and dispatch order are the same by construction. With a log that
//! several nodes share, the log's feed dispatches instead (`hub::feed`):
//! the writer then answers once the events are stored. Either way the
//! writer counts the events it stored (`sluice_events_published_total`):
//! on a shared log, this node's publishes, not every node's.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::fanout::Fanout;
use crate::event::NewEvent;
use crate::log::{Appended, EventLog, LogError};
use crate::metrics::Metrics;

/// Publish requests waiting for the writer; publishers wait when it is full.
const QUEUE: usize = 1024;
/// Requests merged into one append at most.
const MAX_GROUP: usize = 256;

/// Each event's outcome, in the order published.
pub type Reply = Result<Vec<Appended>, LogError>;

struct Request {
    events: Vec<NewEvent>,
    reply: oneshot::Sender<Reply>,
}

/// The publishers' side of the writer.
#[derive(Clone)]
pub struct Writer {
    requests: mpsc::Sender<Request>,
}

impl Writer {
    /// Starts the writer task, which dispatches what it appends to
    /// `dispatch`, if given. It ends when every `Writer` is dropped, after
    /// finishing the requests already queued.
    pub fn spawn(
        log: Arc<dyn EventLog>,
        dispatch: Option<Arc<Fanout>>,
        metrics: Arc<Metrics>,
    ) -> (Writer, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(run(rx, log, dispatch, metrics));
        (Writer { requests: tx }, task)
    }

    /// Appends a batch (all or nothing) and returns its outcomes once the
    /// events are in the log and handed to the fan-out.
    pub async fn publish(&self, events: Vec<NewEvent>) -> Reply {
        let (reply, answer) = oneshot::channel();
        let stopped = || LogError::Unavailable("the hub is shutting down".into());
        self.requests
            .send(Request { events, reply })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

async fn run(
    mut requests: mpsc::Receiver<Request>,
    log: Arc<dyn EventLog>,
    dispatch: Option<Arc<Fanout>>,
    metrics: Arc<Metrics>,
) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    while requests.recv_many(&mut group, MAX_GROUP).await > 0 {
        let sizes: Vec<usize> = group.iter().map(|r| r.events.len()).collect();
        let batch = group.iter_mut().flat_map(|r| r.events.drain(..)).collect();
        match log.append(batch).await {
            Ok(outcomes) => {
                // Lifecycle events (`$sys/…`) are the hub's, not published.
                let published = outcomes
                    .iter()
                    .filter(|outcome| {
                        matches!(outcome, Appended::New(event) if !event.topic.starts_with('$'))
                    })
                    .count();
                metrics.events_published.inc_by(published as u64);
                if let Some(fanout) = &dispatch {
                    let new: Vec<_> = outcomes
                        .iter()
                        .filter_map(|outcome| match outcome {
                            Appended::New(event) => Some(event.clone()),
                            Appended::Duplicate(_) => None,
                        })
                        .collect();
                    fanout.dispatch(&new);
                }
                let mut outcomes = outcomes.into_iter();
                for (request, size) in group.drain(..).zip(sizes) {
                    // A publisher that went away before its answer is fine:
                    // its events are stored all the same.
                    let _ = request
                        .reply
                        .send(Ok(outcomes.by_ref().take(size).collect()));
                }
            }
            Err(error) => {
                for request in group.drain(..) {
                    let _ = request.reply.send(Err(error.clone()));
                }
            }
        }
    }
}
