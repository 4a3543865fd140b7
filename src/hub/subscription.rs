//! One subscriber's view of the hub: replay from the log, then live events,
//! with keep-alives in between. Transports turn its items into bytes.
//!
//! Events come in batches: a page of replay, or everything the mailbox
//! gathered since the subscriber last looked (see the write coalescing of
//! `fanout`). A transport writes a batch as one frame, one socket write.
//!
//! The seam is exact because registration and replay share one boundary:
//! the subscriber registers for live events first, which tells it the id of
//! the last event dispatched (`head`). Every event after `head` reaches its
//! queue; every event up to `head` is already in the log. So it replays
//! `(last_event_id, head]` from the log and then drains its queue: nothing
//! is missed and nothing comes twice, however fast publishers publish.

use std::future::poll_fn;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::fanout::{ClientInfo, Fanout};
use super::mailbox::{Ending, Mailbox, Queued, Taken};
use crate::event::EventId;
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
pub enum Item<'a> {
    /// One or more events, in id order, to write together.
    Events(&'a [Queued]),
    /// History no longer reaches back to `requested`; delivery goes on from
    /// `oldest`, the oldest event retained.
    Gap {
        requested: EventId,
        oldest: Option<EventId>,
    },
    KeepAlive,
    /// Nothing new to send, but the write tick left part of a batch in
    /// the connection's outlet (see `hub::outlet`): write it.
    Flush,
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
    done: bool,
}

pub struct Subscription {
    id: u64,
    log: Arc<dyn EventLog>,
    fanout: Arc<Fanout>,
    filter: Arc<TopicFilter>,
    info: Arc<ClientInfo>,
    mailbox: Arc<Mailbox>,
    /// The batch being written; cleared, with its allocation kept, when
    /// the next is asked for.
    batch: Vec<Queued>,
    replay: Option<Replay>,
    /// The batch holds a replay page that a gap item went out before: it
    /// is the next item.
    after_gap: bool,
    /// The first replay page, read when the subscription opened: the next
    /// item.
    read_ahead: Option<Result<Paged, End>>,
}

/// What reading one replay page gave.
#[derive(Debug, Clone, Copy)]
enum Paged {
    /// The batch holds the page's events.
    Events,
    /// History no longer reaches back to `requested`; the batch holds the
    /// page's events, if any, which go out after the gap.
    Gap {
        requested: EventId,
        oldest: Option<EventId>,
    },
    /// Nothing matched on this page, or the replay is over.
    Empty,
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
        let replay = (request.resume != Resume::Live).then_some(Replay {
            cursor,
            position: cursor,
            until: registration.head,
            done: false,
        });
        Subscription {
            id: registration.id,
            log,
            fanout,
            filter,
            info: request.info,
            mailbox: registration.mailbox,
            batch: Vec::new(),
            replay,
            after_gap: false,
            read_ahead: None,
        }
    }

    /// Reads the first page of a replay now, rather than at the first
    /// `next`. The hub opens the subscription, reads ahead, and only then
    /// announces the connection: its own lifecycle events, stored in
    /// history like any other, must not push out of a small history the
    /// events the client came back for.
    pub async fn read_ahead(&mut self) {
        if self.replay.is_some() {
            self.read_ahead = Some(self.read_page().await);
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
    pub async fn next(&mut self) -> Result<Item<'_>, End> {
        if let Some(paged) = self.read_ahead.take() {
            match paged? {
                Paged::Events => return Ok(self.deliver()),
                Paged::Gap { requested, oldest } => return Ok(Item::Gap { requested, oldest }),
                Paged::Empty => {}
            }
        }
        if std::mem::take(&mut self.after_gap) {
            return Ok(self.deliver());
        }
        self.batch.clear();
        loop {
            if self.replay.is_some() {
                match self.read_page().await? {
                    Paged::Events => return Ok(self.deliver()),
                    Paged::Gap { requested, oldest } => {
                        return Ok(Item::Gap { requested, oldest });
                    }
                    Paged::Empty => continue,
                }
            }
            // Live events, keep-alives and the ending all come through
            // the mailbox: one waker to wait on (see `hub::mailbox`).
            let Subscription { mailbox, batch, .. } = self;
            return match poll_fn(|cx| mailbox.poll_take(cx, batch)).await {
                Taken::Events => Ok(self.deliver()),
                Taken::KeepAlive => Ok(Item::KeepAlive),
                Taken::Flush => Ok(Item::Flush),
                Taken::Ended(Ending::CutOff) => Err(End::CutOff),
                Taken::Ended(Ending::Shutdown) => Err(End::Closed),
            };
        }
    }

    /// Reads the replay's next page into the batch (which is empty).
    async fn read_page(&mut self) -> Result<Paged, End> {
        let Some(replay) = &mut self.replay else {
            return Ok(Paged::Empty);
        };
        // Checked between pages: a long replay stops at shutdown.
        if self.mailbox.is_shut() {
            return Err(End::Closed);
        }
        if replay.done {
            self.replay = None;
            return Ok(Paged::Empty);
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
        // After a gap, reading goes on from the oldest event retained.
        replay.cursor = match page.cursor {
            Some(cursor) => Some(cursor),
            None if page.gap.is_some() => None,
            None => replay.cursor,
        };
        replay.done = page.done;
        if let Some(last) = page.events.last() {
            replay.position = Some(last.id);
        }
        let events = page.events.into_iter();
        self.batch.extend(events.map(|event| Queued {
            event,
            dispatched: None,
        }));
        if !self.batch.is_empty() || page.gap.is_some() {
            // What this page sends keeps the connection alive.
            self.mailbox.sent();
        }
        if let (Some(gap), Some(requested)) = (page.gap, requested) {
            self.fanout.metrics().gaps.inc();
            self.after_gap = !self.batch.is_empty();
            return Ok(Paged::Gap {
                requested,
                oldest: gap.oldest,
            });
        }
        Ok(if self.batch.is_empty() {
            Paged::Empty
        } else {
            Paged::Events
        })
    }

    /// Hands the batch to the transport, noting what the client received.
    fn deliver(&mut self) -> Item<'_> {
        self.info.received(&self.batch);
        Item::Events(&self.batch)
    }

    /// The subscriber's mailbox, for its connection to give it an outlet.
    pub fn mailbox(&self) -> &Mailbox {
        &self.mailbox
    }

    pub fn info(&self) -> &Arc<ClientInfo> {
        &self.info
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.fanout.unregister(self.id);
        // The write tick may still hold the mailbox in its list: it must
        // take nothing more from it, for the connection may go on with
        // another subscription through the same outlet (a WebSocket's).
        self.mailbox.close(Ending::Shutdown);
    }
}

#[cfg(test)]
mod tests {
    use std::pin::pin;
    use std::task::{Context, Poll};
    use std::time::Duration;

    use futures_util::task::noop_waker_ref;

    use super::*;
    use crate::event::Event;
    use crate::frame;
    use crate::log::memory::MemoryLog;
    use crate::log::{Retention, RetentionRules};
    use crate::metrics::Metrics;
    use crate::test_alloc::allocations;

    fn event(seq: u64) -> Arc<Event> {
        let event = Event::sample(seq);
        // Encoded once per event, for all its subscribers.
        event.sse_frame(false);
        event
    }

    /// The hot path's promise: once a subscriber's queues have grown, a
    /// live event reaches it, from the fan-out to the chunk its transport
    /// writes, without an allocation.
    #[test]
    fn a_live_event_reaches_its_subscriber_without_an_allocation() {
        let metrics = Arc::new(Metrics::new("memory"));
        let fanout = Arc::new(Fanout::new(EventId::ZERO, metrics, Duration::ZERO));
        let retention = Retention {
            max_events: 1000,
            max_age: Duration::from_secs(3600),
            max_bytes: u64::MAX,
        };
        let log = Arc::new(MemoryLog::new(
            RetentionRules::global(retention),
            Duration::from_secs(60),
        ));
        let request = SubscribeRequest {
            filter: TopicFilter::parse(["t"], 1).unwrap(),
            resume: Resume::Live,
            info: ClientInfo::sample(),
            on_cut_off: CancellationToken::new(),
        };
        let mut subscription = Subscription::open(request, log, fanout.clone(), 10);
        let events: Vec<Arc<Event>> = (1..=100).map(event).collect();
        let mut cx = Context::from_waker(noop_waker_ref());
        let mut deliver = |event: &Arc<Event>| {
            fanout.dispatch(std::slice::from_ref(event));
            let mut next = pin!(subscription.next());
            let Poll::Ready(Ok(Item::Events(batch))) = next.as_mut().poll(&mut cx) else {
                panic!("the event is there");
            };
            let chunks = frame::coalesce(batch.iter().map(|q| q.event.sse_frame(false)));
            assert_eq!(chunks.len(), 1);
            assert_eq!(&chunks[0], event.sse_frame(false));
        };
        // The mailbox's queue and the subscription's batch swap places at
        // each take: two events give both their room.
        deliver(&events[0]);
        deliver(&events[1]);
        let before = allocations();
        for event in &events[2..] {
            deliver(event);
        }
        assert_eq!(allocations() - before, 0, "for 98 events");
    }
}
