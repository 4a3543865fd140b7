//! Fan-out: who is subscribed to what, and handing each new event to the
//! mailbox of every matching subscriber.
//!
//! Subscribers with only exact topics are indexed by topic, so an event costs
//! one hash lookup plus its real recipients; subscribers with a wildcard are
//! tested one by one. Each subscriber owns a bounded [`Mailbox`] of
//! `Arc<Event>`: the event (and its encodings) exists once, whatever the
//! number of subscribers. A subscriber whose mailbox is full is too slow: it
//! is removed and its connection is closed, so it can never hold memory or
//! the publisher back. It reconnects with `Last-Event-ID` and loses nothing
//! that is still in history.
//!
//! Write coalescing: waking a subscriber costs a task switch and a socket
//! write, far more than queueing one more event. So a subscriber is woken
//! at once for the first event of a `write_delay` tick, and later events of
//! the same tick only mark it for the next tick ([`Fanout::tick`]), when
//! it takes all of them and writes them as one frame. A quiet stream's
//! events go out at once; a busy one's wait at most `write_delay`, in
//! exchange for one write per tick instead of one per event.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

pub use super::mailbox::Queued;
use super::mailbox::{Ending, Mailbox, Pushed};
use super::outlet::{LastChunk, Wrote};
use crate::event::{Event, EventId};
use crate::metrics::Metrics;
use crate::topic::TopicFilter;

/// How a subscriber is connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Sse,
    Ndjson,
    Ws,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Sse => "sse",
            Transport::Ndjson => "ndjson",
            Transport::Ws => "ws",
        }
    }
}

/// Who a subscriber is, for `/clients`, and what it has received.
#[derive(Debug)]
pub struct ClientInfo {
    pub client_id: String,
    pub client_name: Option<String>,
    pub tags: Vec<String>,
    pub transport: Transport,
    pub remote_addr: Option<SocketAddr>,
    pub connected_at: DateTime<Utc>,
    pub events_received: AtomicU64,
    pub last_event_id: Mutex<Option<EventId>>,
}

impl ClientInfo {
    /// Notes a batch written to the client.
    pub fn received(&self, batch: &[Queued]) {
        if let Some(last) = batch.last() {
            let received = batch.len() as u64;
            self.events_received.fetch_add(received, Ordering::Relaxed);
            *self.last_event_id.lock() = Some(last.event.id);
        }
    }
}

/// Subscribers for the hub's unit tests.
#[cfg(test)]
impl ClientInfo {
    /// An SSE subscriber with no name, connected now.
    pub fn sample() -> Arc<ClientInfo> {
        Arc::new(ClientInfo {
            client_id: "c".into(),
            client_name: None,
            tags: Vec::new(),
            transport: Transport::Sse,
            remote_addr: None,
            connected_at: Utc::now(),
            events_received: AtomicU64::new(0),
            last_event_id: Mutex::new(None),
        })
    }
}

/// A subscriber as `/clients` shows it.
pub struct ClientSnapshot {
    pub info: Arc<ClientInfo>,
    pub topics: Vec<String>,
    pub queue_size: usize,
}

struct Subscriber {
    mailbox: Arc<Mailbox>,
    filter: Arc<TopicFilter>,
    info: Arc<ClientInfo>,
    /// Cancelled to close the subscriber's connection when it is cut off.
    on_cut_off: CancellationToken,
}

/// A subscriber as the topic index holds it: what dispatch needs, without
/// a lookup by id per recipient.
struct Recipient {
    id: u64,
    mailbox: Arc<Mailbox>,
}

struct Registry {
    next_id: u64,
    subscribers: HashMap<u64, Subscriber>,
    by_topic: HashMap<Box<str>, Vec<Recipient>>,
    /// Subscribers with a pattern, and their filters.
    wildcard: Vec<(Recipient, Arc<TopicFilter>)>,
    /// Subscribers with no topics (see [`Fanout::subscriber_count`]).
    topicless: usize,
    /// The last event handed to subscribers: a new subscriber gets every
    /// later event live and replays up to this one from the log.
    head: EventId,
    /// Counts `write_delay` ticks.
    tick: u64,
    /// Mailboxes with events queued in this tick, to wake at the next.
    deferred: Vec<Arc<Mailbox>>,
    /// The hub is shutting down (see [`Fanout::shut_down`]).
    shut: bool,
}

/// The live subscriber registry.
pub struct Fanout {
    registry: Mutex<Registry>,
    metrics: Arc<Metrics>,
    /// Zero: every event wakes its subscribers at once.
    write_delay: Duration,
}

/// What the write tick keeps from one tick to the next, so that a tick
/// allocates nothing once the hub has warmed up.
#[derive(Default)]
pub struct TickScratch {
    deferred: Vec<Arc<Mailbox>>,
    batch: Vec<Queued>,
    last: LastChunk,
}

/// What `register` hands back to a new subscriber.
pub struct Registration {
    pub id: u64,
    pub mailbox: Arc<Mailbox>,
    /// Events up to this id are not delivered live: replay them from the log.
    pub head: EventId,
}

impl Fanout {
    /// A registry whose first live event comes after `head` (the log's
    /// head). With a non-zero `write_delay`, [`Fanout::tick`] must be called
    /// every `write_delay`.
    pub fn new(head: EventId, metrics: Arc<Metrics>, write_delay: Duration) -> Self {
        Fanout {
            registry: Mutex::new(Registry {
                next_id: 0,
                subscribers: HashMap::new(),
                by_topic: HashMap::new(),
                wildcard: Vec::new(),
                topicless: 0,
                head,
                tick: 0,
                deferred: Vec::new(),
                shut: false,
            }),
            metrics,
            write_delay,
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn register(
        &self,
        filter: Arc<TopicFilter>,
        info: Arc<ClientInfo>,
        buffer: usize,
        on_cut_off: CancellationToken,
    ) -> Registration {
        let mailbox = Arc::new(Mailbox::new(buffer));
        let mut reg = self.registry.lock();
        if reg.shut {
            mailbox.close(Ending::Shutdown);
        }
        let id = reg.next_id;
        reg.next_id += 1;
        reg.index(id, &mailbox, &filter);
        reg.subscribers.insert(
            id,
            Subscriber {
                mailbox: mailbox.clone(),
                filter,
                info,
                on_cut_off,
            },
        );
        Registration {
            id,
            mailbox,
            head: reg.head,
        }
    }

    pub fn unregister(&self, id: u64) {
        self.registry.lock().remove(id);
    }

    /// Changes what a registered subscriber receives, from the next
    /// dispatched event on.
    pub fn set_filter(&self, id: u64, filter: Arc<TopicFilter>) {
        let mut reg = self.registry.lock();
        let Some(sub) = reg.subscribers.get(&id) else {
            return;
        };
        let (old, mailbox) = (sub.filter.clone(), sub.mailbox.clone());
        reg.unindex(id, &old);
        reg.index(id, &mailbox, &filter);
        if let Some(sub) = reg.subscribers.get_mut(&id) {
            sub.filter = filter;
        }
    }

    /// Cuts off the subscribers whose topics `affected` selects, closing
    /// their connections as for a slow subscriber (but not counted as
    /// one): they reconnect and resume through a replay. For a shared log
    /// whose feed lost events before this node could deliver them. Returns
    /// how many were cut off.
    pub fn cut_off(&self, affected: impl Fn(&TopicFilter) -> bool) -> usize {
        let mut reg = self.registry.lock();
        let ids: Vec<u64> = reg
            .subscribers
            .iter()
            .filter(|(_, sub)| affected(&sub.filter))
            .map(|(id, _)| *id)
            .collect();
        for id in &ids {
            if let Some(sub) = reg.remove(*id) {
                sub.mailbox.close(Ending::CutOff);
                sub.on_cut_off.cancel();
            }
        }
        ids.len()
    }

    /// Hands events, in id order, to every matching subscriber's mailbox.
    /// Never waits: a full mailbox cuts its subscriber off.
    pub fn dispatch(&self, events: &[Arc<Event>]) {
        let dispatched = Instant::now();
        let mut guard = self.registry.lock();
        let reg = &mut *guard;
        let mut cut_off = Vec::new();
        let tick = (!self.write_delay.is_zero()).then_some(reg.tick);
        for event in events {
            let exact = reg.by_topic.get(&*event.topic).map(Vec::as_slice);
            let wildcard = reg
                .wildcard
                .iter()
                .filter(|(_, filter)| filter.matches(&event.topic))
                .map(|(recipient, _)| recipient);
            for recipient in exact.unwrap_or_default().iter().chain(wildcard) {
                let queued = Queued {
                    event: event.clone(),
                    dispatched: Some(dispatched),
                };
                match recipient.mailbox.push(queued, tick) {
                    Pushed::Queued => {}
                    Pushed::Deferred => reg.deferred.push(recipient.mailbox.clone()),
                    Pushed::Full => cut_off.push(recipient.id),
                }
            }
            reg.head = event.id;
            // Remove at once, so a cut-off subscriber gets no later event.
            for id in cut_off.drain(..) {
                if let Some(sub) = reg.remove(id) {
                    self.metrics.slow_disconnects.inc();
                    let info = &sub.info;
                    tracing::warn!(
                        client_id = %info.client_id,
                        client_name = info.client_name.as_deref().unwrap_or(""),
                        transport = info.transport.as_str(),
                        topics = ?sub.filter.listed().collect::<Vec<_>>(),
                        // Its mailbox is full: it is at least this many
                        // events behind, plus this one.
                        queued = sub.mailbox.capacity(),
                        last_event_id = ?*info.last_event_id.lock(),
                        undelivered_id = %event.id,
                        remote = ?info.remote_addr,
                        "subscriber fell behind its buffer and was disconnected"
                    );
                    sub.mailbox.close(Ending::CutOff);
                    sub.on_cut_off.cancel();
                }
            }
        }
    }

    /// Ends a `write_delay` tick: the subscribers whose events waited for
    /// it get everything queued since their last wake-up, written by the
    /// tick itself where it can (see `hub::outlet`), or else by their
    /// task, woken for it.
    ///
    /// The registry is locked only to swap the list out: dispatch goes on
    /// while the tick writes. A subscriber that an event reaches meanwhile
    /// is left to the tick, which has not come to it yet
    /// (`Mailbox::push`).
    ///
    /// The tick writes for two `write_delay`s at most: the subscribers it
    /// has not come to by then are woken, and their tasks write in
    /// parallel on the delivery runtime's threads. One thread's writes are
    /// the cheapest, but a pass much longer than a tick leaves the other
    /// cores of a large machine idle while events wait. Not one delay: on
    /// a small, busy machine a pass often takes more than one (1,000
    /// subscribers at 10 ms on 2 cores), and waking the rest then cost
    /// more CPU per delivery than the late tick did.
    pub fn tick(&self, scratch: &mut TickScratch) {
        let started = Instant::now();
        let tick = {
            let mut reg = self.registry.lock();
            reg.tick += 1;
            std::mem::swap(&mut reg.deferred, &mut scratch.deferred);
            reg.tick
        };
        let (mut whole, mut partial) = (0, 0);
        let mut late = false;
        for (done, mailbox) in scratch.deferred.drain(..).enumerate() {
            // The clock read every few subscribers: a write costs far more.
            if done % 16 == 15 && !late {
                late = started.elapsed() >= 2 * self.write_delay;
            }
            let wrote = match mailbox.outlet() {
                Some(outlet) if !late => {
                    outlet.write_through(&mailbox, tick, &mut scratch.batch, &mut scratch.last)
                }
                _ => Wrote::Nothing,
            };
            match wrote {
                Wrote::Nothing => mailbox.wake_deferred(tick),
                Wrote::All => whole += 1,
                Wrote::Part => {
                    partial += 1;
                    mailbox.flush();
                }
            }
        }
        scratch.last.clear();
        self.metrics.tick_writes_whole.inc_by(whole);
        self.metrics.tick_writes_partial.inc_by(partial);
    }

    /// Counts a keep-alive tick in every mailbox (see `hub::clock`); the
    /// subscribers silent for long enough wake to send a keep-alive. One
    /// pass under the registry's lock, a few nanoseconds a subscriber,
    /// once per quarter of `keepalive`.
    pub fn keepalive_tick(&self) {
        for sub in self.registry.lock().subscribers.values() {
            sub.mailbox.keepalive_tick();
        }
    }

    /// Ends every subscription, and any opened from now on, for the hub is
    /// shutting down.
    pub fn shut_down(&self) {
        let mut reg = self.registry.lock();
        reg.shut = true;
        for sub in reg.subscribers.values() {
            sub.mailbox.close(Ending::Shutdown);
        }
    }

    /// Subscribers with topics. A WebSocket with none is registered all the
    /// same, for the keep-alive tick and the shutdown to reach it, but is
    /// no subscriber (of `/health` or `/clients`).
    pub fn subscriber_count(&self) -> usize {
        let reg = self.registry.lock();
        reg.subscribers.len() - reg.topicless
    }

    /// Subscribers cut off as too slow since start.
    pub fn slow_disconnects(&self) -> u64 {
        self.metrics.slow_disconnects.get()
    }

    pub fn clients(&self) -> Vec<ClientSnapshot> {
        let reg = self.registry.lock();
        reg.subscribers
            .values()
            .filter(|s| !s.filter.is_empty())
            .map(|s| ClientSnapshot {
                info: s.info.clone(),
                topics: s.filter.listed().map(String::from).collect(),
                queue_size: s.mailbox.queue_size(),
            })
            .collect()
    }

    /// For each given topic, the number of subscribers it reaches; also
    /// lists topics subscribed to by name that have no events yet. The
    /// counting happens outside the lock, so it never delays dispatch.
    pub fn subscriber_counts<'a>(
        &self,
        topics: impl Iterator<Item = &'a str>,
    ) -> Vec<(String, usize)> {
        let (filters, named): (Vec<Arc<TopicFilter>>, Vec<String>) = {
            let reg = self.registry.lock();
            (
                reg.subscribers.values().map(|s| s.filter.clone()).collect(),
                reg.by_topic.keys().map(|t| t.to_string()).collect(),
            )
        };
        let mut all: Vec<String> = topics.map(String::from).chain(named).collect();
        all.sort();
        all.dedup();
        all.into_iter()
            .map(|topic| {
                let count = filters.iter().filter(|f| f.matches(&topic)).count();
                (topic, count)
            })
            .collect()
    }
}

impl Registry {
    fn index(&mut self, id: u64, mailbox: &Arc<Mailbox>, filter: &Arc<TopicFilter>) {
        let recipient = || Recipient {
            id,
            mailbox: mailbox.clone(),
        };
        self.topicless += usize::from(filter.is_empty());
        match filter.exact_topics() {
            Some(topics) => {
                for topic in topics {
                    self.by_topic
                        .entry(topic.into())
                        .or_default()
                        .push(recipient());
                }
            }
            None => self.wildcard.push((recipient(), filter.clone())),
        }
    }

    fn unindex(&mut self, id: u64, filter: &TopicFilter) {
        self.topicless -= usize::from(filter.is_empty());
        match filter.exact_topics() {
            Some(topics) => {
                for topic in topics {
                    if let Some(recipients) = self.by_topic.get_mut(topic) {
                        recipients.retain(|other| other.id != id);
                        if recipients.is_empty() {
                            self.by_topic.remove(topic);
                        }
                    }
                }
            }
            None => self.wildcard.retain(|(other, _)| other.id != id),
        }
    }

    fn remove(&mut self, id: u64) -> Option<Subscriber> {
        let sub = self.subscribers.remove(&id)?;
        self.unindex(id, &sub.filter);
        Some(sub)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::task::{Context, Waker};

    use futures_util::task::noop_waker_ref;

    use super::*;
    use crate::hub::mailbox::Wakes;
    use crate::hub::outlet::Outlet;

    /// Takes the batch like a connection's outlet, and takes `cost` to
    /// write it.
    struct Slow {
        cost: Duration,
        writes: AtomicUsize,
    }

    impl Outlet for Slow {
        fn write_through(
            &self,
            mailbox: &Mailbox,
            tick: u64,
            batch: &mut Vec<Queued>,
            _: &mut LastChunk,
        ) -> Wrote {
            if !mailbox.take_waiting(tick, batch) {
                return Wrote::Nothing;
            }
            batch.clear();
            std::thread::sleep(self.cost);
            self.writes.fetch_add(1, Ordering::SeqCst);
            Wrote::All
        }
    }

    /// 40 subscribers of one topic, each waiting on its mailbox, whose
    /// writes take `cost` each; two events in one tick, so that the second
    /// waits for the next. Returns the writes of that tick, and the tasks
    /// woken by it.
    fn one_tick(write_delay: Duration, cost: Duration) -> (usize, usize) {
        let fanout = Fanout::new(EventId::ZERO, Arc::new(Metrics::new("memory")), write_delay);
        let filter = Arc::new(TopicFilter::parse(["t"], 10).unwrap());
        let outlet = Arc::new(Slow {
            cost,
            writes: AtomicUsize::new(0),
        });
        let wakes = Arc::new(Wakes::default());
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let mailboxes: Vec<_> = (0..40)
            .map(|_| {
                let registration = fanout.register(
                    filter.clone(),
                    ClientInfo::sample(),
                    10,
                    CancellationToken::new(),
                );
                registration.mailbox.set_outlet(outlet.clone());
                registration.mailbox
            })
            .collect();
        let mut batch = Vec::new();
        for mailbox in &mailboxes {
            assert!(mailbox.poll_take(&mut cx, &mut batch).is_pending());
        }
        fanout.dispatch(&[Event::sample(1)]);
        assert_eq!(wakes.count(), 40, "the first event wakes");
        for mailbox in &mailboxes {
            assert!(mailbox.poll_take(&mut cx, &mut batch).is_ready());
            batch.clear();
            let noop = &mut Context::from_waker(noop_waker_ref());
            assert!(mailbox.poll_take(noop, &mut batch).is_pending());
        }
        fanout.dispatch(&[Event::sample(2)]);
        fanout.tick(&mut TickScratch::default());
        let writes = outlet.writes.load(Ordering::SeqCst);
        let woken = mailboxes
            .iter()
            .filter(|mailbox| {
                let noop = &mut Context::from_waker(noop_waker_ref());
                let taken = mailbox.poll_take(noop, &mut batch).is_ready();
                batch.clear();
                taken
            })
            .count();
        (writes, woken)
    }

    #[test]
    fn the_tick_writes_for_the_subscribers_that_wait() {
        assert_eq!(one_tick(Duration::from_secs(10), Duration::ZERO), (40, 0));
    }

    #[test]
    fn past_two_write_delays_the_tick_wakes_the_rest_to_write_for_themselves() {
        let (writes, woken) = one_tick(Duration::from_millis(1), Duration::from_millis(1));
        assert_eq!(writes, 15, "the clock is first read before the 16th");
        assert_eq!(woken, 25, "the rest are left to their tasks");
    }
}
