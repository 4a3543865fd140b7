//! One subscriber's view of the hub: replay from the log, then live events,
//! with keep-alives in between. Transports turn its items into bytes.
//!
//! The seam is exact because registration and replay share one boundary:
//! the subscriber registers for live events first, which tells it the id of
//! the last event dispatched (`head`). Every event after `head` reaches its
//! queue; every event up to `head` is already in the log. So it replays
//! `(last_event_id, head]` from the log and then drains its queue: nothing
//! is missed and nothing comes twice, however fast publishers publish.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::fanout::{ClientInfo, Fanout, Queued};
use crate::event::{Event, EventId};
use crate::log::{EventLog, ReadRequest};
use crate::topic::TopicFilter;

/// Events read from the log per page during replay.
const REPLAY_PAGE: usize = 256;

/// Where a subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// Only events published from now on.
    Live,
    /// Everything retained, then live.
    Earliest,
    /// Everything after this id, then live.
    After(EventId),
}

/// What a transport writes next.
#[derive(Debug)]
pub enum Item {
    Event {
        event: Arc<Event>,
        /// For a live event, when the fan-out queued it (`None` when
        /// replayed from history): the start of its fan-out latency.
        dispatched: Option<std::time::Instant>,
    },
    /// History no longer reaches back to `requested`; delivery goes on from
    /// `oldest`, the oldest event retained.
    Gap {
        requested: EventId,
        oldest: Option<EventId>,
    },
    KeepAlive,
}

/// Why a subscription ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The hub is shutting down: end the response cleanly so the client
    /// reconnects (to this hub after a restart, or to another).
    Closed,
    /// The subscriber fell behind its buffer and was cut off: abort.
    CutOff,
    /// History could not be read: end cleanly so the client reconnects.
    Failed,
}

struct Replay {
    /// The position to read after; `None` is the start of history.
    cursor: Option<EventId>,
    /// The client's position: the last id it was sent, or the one it
    /// resumed from. A gap names it as `requested`.
    position: Option<EventId>,
    until: EventId,
    pending: VecDeque<Arc<Event>>,
    done: bool,
}

pub struct Subscription {
    id: u64,
    log: Arc<dyn EventLog>,
    fanout: Arc<Fanout>,
    filter: Arc<TopicFilter>,
    info: Arc<ClientInfo>,
    queue: mpsc::Receiver<Queued>,
    replay: Option<Replay>,
    keepalive: Duration,
    last_sent: Instant,
    keepalive_timer: Pin<Box<Sleep>>,
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    /// The same signal, checked between replay pages.
    shutting_down: CancellationToken,
}

/// Everything needed to open a subscription.
pub struct SubscribeRequest {
    pub filter: TopicFilter,
    pub resume: Resume,
    pub info: Arc<ClientInfo>,
    /// Cancelled when the subscriber is cut off, to close its connection.
    pub on_cut_off: CancellationToken,
}

impl Subscription {
    pub(super) fn open(
        request: SubscribeRequest,
        log: Arc<dyn EventLog>,
        fanout: Arc<Fanout>,
        buffer: usize,
        keepalive: Duration,
        shutdown: CancellationToken,
    ) -> Subscription {
        let filter = Arc::new(request.filter);
        let registration = fanout.register(
            filter.clone(),
            request.info.clone(),
            buffer,
            request.on_cut_off,
        );
        let cursor = match request.resume {
            Resume::Live => None,
            Resume::Earliest => None,
            Resume::After(id) => Some(id),
        };
        if request.resume != Resume::Live {
            fanout.metrics().replays.inc();
        }
        let replay = (request.resume != Resume::Live).then(|| Replay {
            cursor,
            position: cursor,
            until: registration.head,
            pending: VecDeque::new(),
            done: false,
        });
        let now = Instant::now();
        Subscription {
            id: registration.id,
            log,
            fanout,
            filter,
            info: request.info,
            queue: registration.queue,
            replay,
            keepalive,
            last_sent: now,
            keepalive_timer: Box::pin(tokio::time::sleep_until(now + keepalive)),
            shutdown: Box::pin(shutdown.clone().cancelled_owned()),
            shutting_down: shutdown,
        }
    }

    /// Changes the topics this subscription receives: live events from
    /// the next one dispatched, and the rest of a replay still under way.
    pub fn set_filter(&mut self, filter: TopicFilter) {
        self.filter = Arc::new(filter);
        self.fanout.set_filter(self.id, self.filter.clone());
    }

    pub fn filter(&self) -> &TopicFilter {
        &self.filter
    }

    /// The next item to send, or why the stream ends.
    pub async fn next(&mut self) -> Result<Item, End> {
        loop {
            if self.shutting_down.is_cancelled() {
                return Err(End::Closed);
            }
            if let Some(replay) = &mut self.replay {
                if let Some(event) = replay.pending.pop_front() {
                    replay.position = Some(event.id);
                    return Ok(self.deliver(event, None));
                }
                if replay.done {
                    self.replay = None;
                    continue;
                }
                let page = self
                    .log
                    .read(ReadRequest {
                        after: replay.cursor,
                        until: Some(replay.until),
                        filter: &self.filter,
                        limit: REPLAY_PAGE,
                    })
                    .await
                    .map_err(|error| {
                        tracing::warn!(%error, "replay failed; closing the stream");
                        End::Failed
                    })?;
                let requested = replay.position;
                replay.pending.extend(page.events);
                // After a gap, reading goes on from the oldest event retained.
                replay.cursor = match page.cursor {
                    Some(cursor) => Some(cursor),
                    None if page.gap.is_some() => None,
                    None => replay.cursor,
                };
                replay.done = page.done;
                if let (Some(gap), Some(requested)) = (page.gap, requested) {
                    self.fanout.metrics().gaps.inc();
                    return Ok(Item::Gap {
                        requested,
                        oldest: gap.oldest,
                    });
                }
                continue;
            }
            tokio::select! {
                biased;
                _ = &mut self.shutdown => return Err(End::Closed),
                queued = self.queue.recv() => {
                    return match queued {
                        Some(Queued { event, dispatched }) => Ok(self.deliver(event, Some(dispatched))),
                        None => Err(End::CutOff),
                    };
                }
                _ = &mut self.keepalive_timer => {
                    let due = self.last_sent + self.keepalive;
                    if Instant::now() >= due {
                        self.last_sent = Instant::now();
                        self.keepalive_timer.as_mut().reset(self.last_sent + self.keepalive);
                        return Ok(Item::KeepAlive);
                    }
                    // Events went out since the timer was set: wait the rest.
                    self.keepalive_timer.as_mut().reset(due);
                }
            }
        }
    }

    fn deliver(&mut self, event: Arc<Event>, dispatched: Option<std::time::Instant>) -> Item {
        self.info.events_received.fetch_add(1, Ordering::Relaxed);
        *self.info.last_event_id.lock() = Some(event.id);
        self.last_sent = Instant::now();
        Item::Event { event, dispatched }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.fanout.unregister(self.id);
    }
}
