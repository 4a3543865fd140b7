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
//! exchange for one write per tick instead of one per event. The later
//! events of a tick for the subscribers of one topic alone go once into
//! the topic's lane, not into each mailbox (see `hub::lane`).
//!
//! Prompt writes: a subscriber's first event of a tick is not left to its
//! task when the write tick could write it (its task waits, and its
//! connection has an outlet: see `hub::outlet`). Its mailbox goes on the
//! prompt list instead, which a thread of its own writes at once, as the
//! tick writes its lists ([`Fanout::write_prompt`]). Why: a quiet stream
//! (a dashboard's topic, an event every few ticks) gets each event as the
//! first of its tick, and waking its task to write it costs a task switch,
//! the subscription's state machines and a vectored write. Writing it
//! from the prompt writer takes 18-25% off the CPU per delivery of 1,000
//! subscribers of a topic with 50 events/s (docs/BENCHMARKS-LOG.md,
//! "Prompt writes"). The thread is not the tick's, whose pass through a
//! busy topic's readers takes milliseconds: a quiet stream's event would
//! wait behind it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use super::lane::{self, Due, Lane, Recipient, Route};
pub use super::mailbox::Queued;
use super::mailbox::{Ending, LaneEvents, Mailbox, Pushed};
use super::outlet::{LastChunk, Outlet, Source, Wrote};
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
    /// Noted at each write to the client, under one lock, so that
    /// `/clients` reads the count and the last id of the same write.
    pub received: Mutex<Received>,
}

/// What a client has been written.
#[derive(Debug, Default, Clone, Copy)]
pub struct Received {
    pub events: u64,
    pub last_event_id: Option<EventId>,
}

impl ClientInfo {
    /// Notes a batch written to the client.
    pub fn received(&self, batch: &[Queued]) {
        if let Some(last) = batch.last() {
            let mut received = self.received.lock();
            received.events += batch.len() as u64;
            received.last_event_id = Some(last.event.id);
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
            received: Mutex::default(),
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

/// The subscribers of one topic by name.
struct Topic {
    name: Arc<str>,
    /// Those with other topics too: each event goes to each one's mailbox.
    recipients: Vec<Recipient>,
    /// Those with this topic alone (see `hub::lane`).
    lane: Lane,
}

struct Registry {
    next_id: u64,
    subscribers: HashMap<u64, Subscriber>,
    by_topic: HashMap<Arc<str>, Topic>,
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
    /// Mailboxes whose first event of this tick waits for the prompt
    /// writer.
    prompt: Vec<Arc<Mailbox>>,
    /// Topics whose lane holds events of this tick, for the next.
    due: Vec<Arc<str>>,
    /// The hub is shutting down (see [`Fanout::shut_down`]).
    shut: bool,
}

/// The live subscriber registry.
pub struct Fanout {
    registry: Mutex<Registry>,
    metrics: Arc<Metrics>,
    /// Zero: every event wakes its subscribers at once.
    write_delay: Duration,
    /// The thread that writes the prompt list ([`Fanout::write_prompt`]),
    /// unparked when dispatch adds to it.
    prompt_writer: OnceLock<Thread>,
}

/// How many `write_delay`s a pass of the prompt writer may take before it
/// wakes the rest of its list, for their tasks to write (a tick's pass:
/// two). More than the tick's because its lists grow when its thread
/// waits for a core, that is when the cores are all busy: then the tasks'
/// writes, which cost a wake-up and a poll each besides the write, only
/// add to the load. With two delays, the 10,000-subscriber row (2 cores,
/// both busy; docs/BENCHMARKS-LOG.md, "Prompt writes") left most of its
/// writes to the tasks: 5.8-6.6 µs of hub CPU per delivery, p99 125-169
/// ms; with ten, the writer wrote them all: 5.3-5.4 µs, p99 103-137 ms.
const PROMPT_BUDGET: u32 = 10;

/// What the write tick (or the prompt writer) keeps from one pass to the
/// next, so that a pass allocates nothing once the hub has warmed up.
#[derive(Default)]
pub struct TickScratch {
    /// The mailboxes of the pass: those deferred, or the prompt list.
    mailboxes: Vec<Arc<Mailbox>>,
    due: Vec<Arc<str>>,
    lanes: Vec<Due>,
    /// Emptied lanes' vectors, to swap into the lanes at the next tick.
    spare: Vec<Vec<Queued>>,
    batch: Vec<Queued>,
    last: LastChunk,
    /// Readers whose mailbox could not take their lane's events, and the
    /// first of those.
    cut_off: Vec<(u64, EventId)>,
}

/// Where dispatch puts what it does not finish at once: the mailboxes to
/// wake at the next tick, and the subscribers to cut off.
struct Deliveries<'r> {
    tick: Option<u64>,
    deferred: &'r mut Vec<Arc<Mailbox>>,
    prompt: &'r mut Vec<Arc<Mailbox>>,
    cut_off: &'r mut Vec<u64>,
}

impl Deliveries<'_> {
    /// One event into a subscriber's mailbox.
    fn push(&mut self, id: u64, mailbox: &Arc<Mailbox>, queued: &Queued) {
        match mailbox.push(queued.again(), self.tick) {
            Pushed::Queued => {}
            Pushed::Deferred => self.deferred.push(mailbox.clone()),
            Pushed::Prompt => self.prompt.push(mailbox.clone()),
            Pushed::Full => self.cut_off.push(id),
        }
    }

    /// Events of a spilt lane, the first `in_flight` of them a tick's
    /// under way, into a reader's mailbox, which wakes it at once: the
    /// tick is late.
    fn hand(&mut self, id: u64, mailbox: &Mailbox, events: LaneEvents<'_>, in_flight: usize) {
        let tick = self.tick.unwrap_or_default();
        if mailbox.hand_owed(events, in_flight, tick) == Pushed::Full {
            self.cut_off.push(id);
        }
    }
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
                prompt: Vec::new(),
                due: Vec::new(),
                shut: false,
            }),
            metrics,
            write_delay,
            prompt_writer: OnceLock::new(),
        }
    }

    /// The thread that calls [`Fanout::write_prompt`]: dispatch unparks it
    /// when it has something to write. Until there is one, the prompt list
    /// waits for whoever calls it (the hub's unit tests).
    pub fn set_prompt_writer(&self, thread: Thread) {
        let _ = self.prompt_writer.set(thread);
    }

    fn unpark_prompt_writer(&self) {
        if let Some(thread) = self.prompt_writer.get() {
            thread.unpark();
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
        // The events of its lane it was not given yet were dispatched while
        // the old filter stood: they are still its own.
        let handed = reg
            .lane_for(&old)
            .map(|lane| lane.hand_over(&mailbox, reg.tick));
        mailbox.leave_lane();
        if let Some(Err(undelivered)) = handed {
            self.cut_off_slow(&mut reg, id, undelivered);
            return;
        }
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

    /// Hands events, in id order, to every matching subscriber: to its
    /// mailbox, or to its topic's lane (see `hub::lane`). Never waits: a
    /// full mailbox cuts its subscriber off.
    pub fn dispatch(&self, events: &[Arc<Event>]) {
        let dispatched = Instant::now();
        let mut guard = self.registry.lock();
        let reg = &mut *guard;
        let mut cut_off = Vec::new();
        let tick = (!self.write_delay.is_zero()).then_some(reg.tick);
        for event in events {
            let queued = Queued {
                event: event.clone(),
                dispatched: Some(dispatched),
            };
            let Registry {
                by_topic,
                wildcard,
                deferred,
                prompt,
                due,
                ..
            } = reg;
            let mut to = Deliveries {
                tick,
                deferred,
                prompt,
                cut_off: &mut cut_off,
            };
            if let Some(topic) = by_topic.get_mut(&*event.topic) {
                for recipient in &topic.recipients {
                    to.push(recipient.id, &recipient.mailbox, &queued);
                }
                match topic.lane.route(&queued, tick) {
                    Some(Route::EachMailbox) => {
                        for reader in topic.lane.readers() {
                            to.push(reader.id, &reader.mailbox, &queued);
                        }
                    }
                    Some(Route::Due) => due.push(topic.name.clone()),
                    Some(Route::Pending) | None => {}
                    Some(Route::Spill) => {
                        let (lane, mut spilt) = (topic.lane.id(), Vec::new());
                        let (readers, in_flight) = topic.lane.spill(&mut spilt);
                        for reader in readers {
                            let events = LaneEvents {
                                lane,
                                events: &spilt,
                            };
                            to.hand(reader.id, &reader.mailbox, events, in_flight);
                        }
                    }
                }
            }
            for (recipient, filter) in wildcard.iter() {
                if filter.matches(&event.topic) {
                    to.push(recipient.id, &recipient.mailbox, &queued);
                }
            }
            reg.head = event.id;
            // Remove at once, so a cut-off subscriber gets no later event.
            for id in cut_off.drain(..) {
                self.cut_off_slow(reg, id, event.id);
            }
        }
        let prompt = !reg.prompt.is_empty();
        drop(guard);
        if prompt {
            self.unpark_prompt_writer();
        }
    }

    /// Cuts off a subscriber whose mailbox is full, at event `undelivered`.
    fn cut_off_slow(&self, reg: &mut Registry, id: u64, undelivered: EventId) {
        let Some(sub) = reg.remove(id) else {
            return;
        };
        self.metrics.slow_disconnects.inc();
        let info = &sub.info;
        tracing::warn!(
            client_id = %info.client_id,
            client_name = info.client_name.as_deref().unwrap_or(""),
            transport = info.transport.as_str(),
            topics = ?sub.filter.listed().collect::<Vec<_>>(),
            // Its mailbox is full: it is at least this many events
            // behind, plus this one.
            queued = sub.mailbox.capacity(),
            last_event_id = ?info.received.lock().last_event_id,
            undelivered_id = %undelivered,
            remote = ?info.remote_addr,
            "subscriber fell behind its buffer and was disconnected"
        );
        sub.mailbox.close(Ending::CutOff);
        sub.on_cut_off.cancel();
    }

    /// Ends a `write_delay` tick: the subscribers whose events waited for
    /// it get everything queued since their last wake-up, in their mailbox
    /// or their lane, written by the tick itself where it can (see
    /// `hub::outlet`), or else by their task, woken for it.
    ///
    /// The registry is locked only to swap the lists out: dispatch goes on
    /// while the tick writes. A subscriber that an event reaches meanwhile
    /// is left to the tick, which has not come to it yet
    /// (`Mailbox::push`), and a lane's readers get such events from the
    /// tick too (`lane::catch_up`).
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
        let tick = {
            let mut reg = self.registry.lock();
            reg.tick += 1;
            let tick = reg.tick;
            std::mem::swap(&mut reg.deferred, &mut scratch.mailboxes);
            std::mem::swap(&mut reg.due, &mut scratch.due);
            for name in scratch.due.drain(..) {
                let Some(topic) = reg.by_topic.get_mut(&name) else {
                    continue;
                };
                let spare = scratch.spare.pop().unwrap_or_default();
                match topic.lane.take_due(tick, spare) {
                    Ok(due) => scratch.lanes.push(due),
                    Err(spare) => scratch.spare.push(spare),
                }
            }
            tick
        };
        let mut pass = Pass::new(2 * self.write_delay);
        // The mailboxes first: a lane's events go after what a reader's
        // mailbox holds.
        pass.write_mailboxes(tick, scratch);
        for mut due in scratch.lanes.drain(..) {
            for (visited, reader) in due.readers.iter().enumerate() {
                if visited % 16 == 15 {
                    lane::catch_up(&mut due.events, &due.pending);
                }
                let mailbox = &reader.mailbox;
                let events = LaneEvents {
                    lane: due.lane,
                    events: &due.events,
                };
                let wrote = pass.write(mailbox, |outlet| {
                    outlet.write_through(mailbox, tick, Source::Lane(events), &mut scratch.last)
                });
                if wrote == Wrote::Nothing && mailbox.hand(events, tick) == Pushed::Full {
                    let undelivered = mailbox.own(events)[0].event.id;
                    scratch.cut_off.push((reader.id, undelivered));
                }
            }
            due.in_flight.lock().clear();
            due.events.clear();
            scratch.spare.push(due.events);
        }
        scratch.last.clear();
        if !scratch.cut_off.is_empty() {
            let mut reg = self.registry.lock();
            for (id, undelivered) in scratch.cut_off.drain(..) {
                self.cut_off_slow(&mut reg, id, undelivered);
            }
        }
        pass.count(&self.metrics);
    }

    /// Writes the prompt list (see the module's prompt writes) as the tick
    /// writes its deferred mailboxes, for [`PROMPT_BUDGET`] write delays at
    /// most, and wakes those it cannot write for. Returns whether the list
    /// held any.
    pub fn write_prompt(&self, scratch: &mut TickScratch) -> bool {
        let tick = {
            let mut reg = self.registry.lock();
            std::mem::swap(&mut reg.prompt, &mut scratch.mailboxes);
            reg.tick
        };
        if scratch.mailboxes.is_empty() {
            return false;
        }
        let mut pass = Pass::new(PROMPT_BUDGET * self.write_delay);
        pass.write_mailboxes(tick, scratch);
        scratch.last.clear();
        pass.count(&self.metrics);
        true
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
        drop(reg);
        // It ends with the hub.
        self.unpark_prompt_writer();
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
                queue_size: s.mailbox.queue_size()
                    + reg
                        .lane_for(&s.filter)
                        .map_or(0, |lane| lane.waiting_for(&s.mailbox)),
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

/// One pass of the write tick through its subscribers.
struct Pass {
    started: Instant,
    /// Past it, the tick writes no more: it wakes the rest.
    budget: Duration,
    late: bool,
    visited: u64,
    whole: u64,
    partial: u64,
}

impl Pass {
    fn new(budget: Duration) -> Self {
        Pass {
            started: Instant::now(),
            budget,
            late: false,
            visited: 0,
            whole: 0,
            partial: 0,
        }
    }

    /// Writes for the subscriber of `mailbox` through its outlet, with
    /// `write`, unless it has none or the pass is late; wakes it for what
    /// the socket did not take.
    fn write(&mut self, mailbox: &Mailbox, write: impl FnOnce(&dyn Outlet) -> Wrote) -> Wrote {
        // The clock read every few subscribers: a write costs far more.
        if self.visited % 16 == 15 && !self.late {
            self.late = self.started.elapsed() >= self.budget;
        }
        self.visited += 1;
        let wrote = match mailbox.outlet() {
            Some(outlet) if !self.late => write(&**outlet),
            _ => Wrote::Nothing,
        };
        match wrote {
            Wrote::Nothing => {}
            Wrote::All => self.whole += 1,
            Wrote::Part => {
                self.partial += 1;
                mailbox.flush();
            }
        }
        wrote
    }

    /// Writes, in tick `tick`, for each of `scratch.mailboxes` (emptied)
    /// the batch in its mailbox, and wakes those it does not write for.
    fn write_mailboxes(&mut self, tick: u64, scratch: &mut TickScratch) {
        for mailbox in scratch.mailboxes.drain(..) {
            let wrote = self.write(&mailbox, |outlet| {
                let source = Source::Mailbox(&mut scratch.batch);
                outlet.write_through(&mailbox, tick, source, &mut scratch.last)
            });
            if wrote == Wrote::Nothing {
                mailbox.wake_deferred(tick);
            }
        }
    }

    fn count(&self, metrics: &Metrics) {
        metrics.tick_writes_whole.inc_by(self.whole);
        metrics.tick_writes_partial.inc_by(self.partial);
    }
}

impl Registry {
    /// Indexes a subscriber by its topics: the reader of its topic's lane
    /// if it has only that one, a recipient of each if it has several
    /// exact ones, else among the wildcard subscribers.
    fn index(&mut self, id: u64, mailbox: &Arc<Mailbox>, filter: &Arc<TopicFilter>) {
        let recipient = || Recipient {
            id,
            mailbox: mailbox.clone(),
        };
        self.topicless += usize::from(filter.is_empty());
        let Some(topics) = filter.exact_topics() else {
            self.wildcard.push((recipient(), filter.clone()));
            return;
        };
        let sole = filter
            .exact_topics()
            .is_some_and(|mut t| t.nth(1).is_none());
        for name in topics {
            let lane = self.next_id;
            let topic = self
                .by_topic
                .entry(name.into())
                .or_insert_with_key(|name| Topic {
                    name: name.clone(),
                    recipients: Vec::new(),
                    lane: Lane::new(lane),
                });
            // Lanes and subscribers take their numbers from one count.
            self.next_id += 1;
            if sole {
                mailbox.read_lane_after(topic.lane.id(), self.head);
                topic.lane.add_reader(recipient());
            } else {
                topic.recipients.push(recipient());
            }
        }
    }

    fn unindex(&mut self, id: u64, filter: &TopicFilter) {
        self.topicless -= usize::from(filter.is_empty());
        let Some(topics) = filter.exact_topics() else {
            self.wildcard.retain(|(other, _)| other.id != id);
            return;
        };
        for name in topics {
            let Some(topic) = self.by_topic.get_mut(name) else {
                continue;
            };
            if topic.lane.remove_reader(id).is_none() {
                topic.recipients.retain(|other| other.id != id);
            }
            if topic.recipients.is_empty() && topic.lane.readers().is_empty() {
                self.by_topic.remove(name);
            }
        }
    }

    /// The lane that a subscriber with `filter` reads, if it reads one:
    /// that of its topic, if it has only one.
    fn lane_for(&self, filter: &TopicFilter) -> Option<&Lane> {
        let mut topics = filter.exact_topics()?;
        let (topic, None) = (topics.next()?, topics.next()) else {
            return None;
        };
        Some(&self.by_topic.get(topic)?.lane)
    }

    fn remove(&mut self, id: u64) -> Option<Subscriber> {
        let sub = self.subscribers.remove(&id)?;
        self.unindex(id, &sub.filter);
        Some(sub)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll, Waker};

    use futures_util::task::noop_waker_ref;

    use super::*;
    use crate::hub::mailbox::{Taken, Wakes};

    /// 40 subscribers of one topic, each waiting on its mailbox, whose
    /// writes take `cost` each; two events in one tick, so that the second
    /// waits for the next. Returns the writes of that tick, and the tasks
    /// woken by it.
    fn one_tick(write_delay: Duration, cost: Duration) -> (usize, usize) {
        let fanout = ticking(write_delay);
        let outlet = Arc::new(Noted {
            cost,
            ..Noted::default()
        });
        let wakes = Arc::new(Wakes::default());
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let mailboxes = waiting(&fanout, &["t"], &outlet, 40, &mut cx);
        let mut batch = Vec::new();
        fanout.dispatch(&[Event::sample(1)]);
        assert_eq!(
            wakes.count(),
            0,
            "the first event waits for the prompt writer"
        );
        // Taken by the tasks instead, as if woken by something else.
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

    /// `n` subscribers of `topics` whose sockets are `outlet`, each waiting
    /// on its mailbox with the waker of `cx`.
    fn waiting(
        fanout: &Fanout,
        topics: &[&str],
        outlet: &Arc<Noted>,
        n: usize,
        cx: &mut Context<'_>,
    ) -> Vec<Arc<Mailbox>> {
        let filter = Arc::new(TopicFilter::parse(topics.iter().copied(), 10).unwrap());
        let waiting_one = |_| {
            let registration = fanout.register(
                filter.clone(),
                ClientInfo::sample(),
                10,
                CancellationToken::new(),
            );
            let mailbox = registration.mailbox;
            mailbox.set_outlet(outlet.clone());
            assert!(mailbox.poll_take(cx, &mut Vec::new()).is_pending());
            mailbox
        };
        (0..n).map(waiting_one).collect()
    }

    /// A fan-out whose ticks the test calls.
    fn ticking(write_delay: Duration) -> Fanout {
        Fanout::new(EventId::ZERO, Arc::new(Metrics::new("memory")), write_delay)
    }

    /// Takes the batch like a connection's outlet, takes `cost` to write
    /// it, counts its writes and notes the events written, and runs
    /// `during` at its first write: what happens while the tick writes.
    #[derive(Default)]
    struct Noted {
        cost: Duration,
        writes: AtomicUsize,
        written: parking_lot::Mutex<Vec<u64>>,
        during: parking_lot::Mutex<Option<Box<dyn FnOnce() + Send>>>,
    }

    impl Outlet for Noted {
        fn write_through(
            &self,
            mailbox: &Mailbox,
            tick: u64,
            mut source: Source<'_>,
            _: &mut LastChunk,
        ) -> Wrote {
            let Some(batch) = source.take(mailbox, tick) else {
                return Wrote::Nothing;
            };
            let seqs = batch.iter().map(|q| q.event.id.seq);
            self.written.lock().extend(seqs);
            source.done();
            std::thread::sleep(self.cost);
            self.writes.fetch_add(1, Ordering::SeqCst);
            if let Some(during) = self.during.lock().take() {
                during();
            }
            Wrote::All
        }
    }

    /// A subscriber of `topics` whose task waits on its mailbox and whose
    /// socket is a [`Noted`].
    fn noted(fanout: &Fanout, topics: &[&str], buffer: usize) -> (Registration, Arc<Noted>) {
        let filter = Arc::new(TopicFilter::parse(topics.iter().copied(), 10).unwrap());
        let registration = fanout.register(
            filter,
            ClientInfo::sample(),
            buffer,
            CancellationToken::new(),
        );
        let outlet = Arc::new(Noted::default());
        registration.mailbox.set_outlet(outlet.clone());
        let mut cx = Context::from_waker(noop_waker_ref());
        assert!(
            registration
                .mailbox
                .poll_take(&mut cx, &mut Vec::new())
                .is_pending()
        );
        (registration, outlet)
    }

    /// What the subscriber's task takes from its mailbox, and waits again.
    fn taken(mailbox: &Mailbox) -> Vec<u64> {
        let mut cx = Context::from_waker(noop_waker_ref());
        let mut batch = Vec::new();
        let mut seqs = Vec::new();
        while let Poll::Ready(Taken::Events) = mailbox.poll_take(&mut cx, &mut batch) {
            seqs.extend(batch.drain(..).map(|q| q.event.id.seq));
        }
        seqs
    }

    #[test]
    fn a_lane_gives_each_reader_every_event_once_and_in_order() {
        let fanout = Arc::new(ticking(Duration::from_secs(10)));
        let readers: Vec<_> = (0..20).map(|_| noted(&fanout, &["t"], 100)).collect();
        fanout.dispatch(&[Event::sample(1)]);
        for (reader, _) in &readers {
            assert_eq!(
                taken(&reader.mailbox),
                [1],
                "the tick's first event at once"
            );
        }
        fanout.dispatch(&[Event::sample(2), Event::sample(3)]);
        let queued: Vec<usize> = fanout.clients().iter().map(|c| c.queue_size).collect();
        assert_eq!(
            queued, [2; 20],
            "what waits in the lane counts for /clients"
        );
        // One that comes in the middle of the tick: the lane's events so
        // far are not its own.
        let (late, late_outlet) = noted(&fanout, &["t"], 100);
        fanout.dispatch(&[Event::sample(4)]);
        // An event that comes while the tick writes: the readers the tick
        // has not come to yet get it in this pass, the others in the next.
        let during = fanout.clone();
        *readers[0].1.during.lock() = Some(Box::new(move || {
            during.dispatch(&[Event::sample(5)]);
        }));
        fanout.tick(&mut TickScratch::default());
        let written = |outlet: &Noted| outlet.written.lock().clone();
        assert_eq!(written(&readers[0].1), [2, 3, 4]);
        assert_eq!(written(&readers[19].1), [2, 3, 4, 5], "caught up");
        assert_eq!(written(&late_outlet), [4, 5]);
        fanout.tick(&mut TickScratch::default());
        for (reader, outlet) in &readers {
            assert_eq!(written(outlet), [2, 3, 4, 5], "once each");
            assert_eq!(taken(&reader.mailbox), [0; 0], "none left for the task");
        }
        assert_eq!(written(&late_outlet), [4, 5]);
        drop(late);
    }

    #[test]
    fn a_reader_leaving_its_lane_keeps_what_came_while_it_read_it() {
        let fanout = ticking(Duration::from_secs(10));
        let (leaving, leaving_outlet) = noted(&fanout, &["t"], 100);
        let (staying, staying_outlet) = noted(&fanout, &["t"], 100);
        fanout.dispatch(&[Event::sample(1)]);
        assert_eq!(taken(&leaving.mailbox), [1]);
        assert_eq!(taken(&staying.mailbox), [1]);
        fanout.dispatch(&[Event::sample(2)]);
        let filter = Arc::new(TopicFilter::parse(["u", "t"], 10).unwrap());
        fanout.set_filter(leaving.id, filter);
        assert_eq!(taken(&leaving.mailbox), [2], "handed to its mailbox");
        fanout.dispatch(&[Event::sample(3)]);
        fanout.tick(&mut TickScratch::default());
        assert_eq!(staying_outlet.written.lock().clone(), [2, 3]);
        assert_eq!(
            [
                taken(&leaving.mailbox),
                leaving_outlet.written.lock().clone()
            ]
            .concat(),
            [3],
            "now one of the topic's recipients, which the tick wakes"
        );
    }

    #[test]
    fn a_reader_that_leaves_its_lane_during_a_pass_gets_its_events_once_and_in_order() {
        let fanout = Arc::new(ticking(Duration::from_secs(10)));
        // The tick writes to the first while two after its catch-up point
        // (every 16 readers) leave the lane: one adds a topic, the other
        // moves to another topic's lane.
        let readers: Vec<_> = (0..20).map(|_| noted(&fanout, &["t"], 100)).collect();
        let _other = noted(&fanout, &["u"], 100);
        let ((adding, adding_outlet), (moving, moving_outlet)) = (&readers[19], &readers[17]);
        fanout.dispatch(&[Event::sample(1)]);
        for (reader, _) in &readers {
            assert_eq!(taken(&reader.mailbox), [1]);
        }
        fanout.dispatch(&[Event::sample(2)]);
        let tasks_took = Arc::new(parking_lot::Mutex::new([Vec::new(), Vec::new()]));
        let (during, took) = (fanout.clone(), tasks_took.clone());
        let (adding_task, moving_task) = (
            (adding.id, adding.mailbox.clone()),
            (moving.id, moving.mailbox.clone()),
        );
        *readers[0].1.during.lock() = Some(Box::new(move || {
            // The WebSocket sessions change their topics, an event of the
            // old lane comes, and their tasks take what they have.
            let filter =
                |topics: &[&str]| Arc::new(TopicFilter::parse(topics.iter().copied(), 10).unwrap());
            during.set_filter(adding_task.0, filter(&["t", "u"]));
            during.set_filter(moving_task.0, filter(&["u"]));
            during.dispatch(&[Event::sample(3)]);
            let mut took = took.lock();
            took[0].extend(taken(&adding_task.1));
            took[1].extend(taken(&moving_task.1));
        }));
        fanout.tick(&mut TickScratch::default());
        assert_eq!(readers[18].1.written.lock().clone(), [2, 3], "caught up");
        let [adding_took, moving_took] = tasks_took.lock().clone();
        let got = |took: Vec<u64>, outlet: &Noted| [took, outlet.written.lock().clone()].concat();
        assert_eq!(
            got(adding_took, adding_outlet),
            [2, 3],
            "each once, in order"
        );
        assert_eq!(
            got(moving_took, moving_outlet),
            [2],
            "nothing of its old topic's after"
        );
    }

    #[test]
    fn a_lane_the_tick_is_late_for_goes_to_the_mailboxes() {
        let fanout = ticking(Duration::from_secs(10));
        let (waiting, _) = noted(&fanout, &["t"], 3);
        let (busy, _) = noted(&fanout, &["t"], 3);
        fanout.dispatch(&[Event::sample(1)]);
        assert_eq!(taken(&waiting.mailbox), [1]);
        // The busy one took its event and is still writing it.
        let mut cx = Context::from_waker(noop_waker_ref());
        assert!(busy.mailbox.poll_take(&mut cx, &mut Vec::new()).is_ready());
        let events: Vec<_> = (2..=4).map(Event::sample).collect();
        fanout.dispatch(&events);
        assert_eq!(fanout.subscriber_count(), 2, "3 events fit a mailbox of 3");
        let events: Vec<_> = (5..=7).map(Event::sample).collect();
        fanout.dispatch(&events);
        assert_eq!(
            fanout.slow_disconnects(),
            1,
            "the busy one holds 6: cut off"
        );
        assert_eq!(
            busy.mailbox.poll_take(&mut cx, &mut Vec::new()),
            Poll::Ready(Taken::Events)
        );
        assert_eq!(
            taken(&waiting.mailbox),
            [2, 3, 4, 5, 6, 7],
            "it waits: the hub is late"
        );
    }

    #[test]
    fn a_lane_that_spills_during_a_pass_gives_the_readers_after_it_the_events_in_flight() {
        let fanout = Arc::new(ticking(Duration::from_secs(10)));
        let (first, first_outlet) = noted(&fanout, &["t"], 2);
        let (second, second_outlet) = noted(&fanout, &["t"], 2);
        let (busy, _) = noted(&fanout, &["t"], 2);
        fanout.dispatch(&[Event::sample(1)]);
        assert_eq!(taken(&first.mailbox), [1]);
        assert_eq!(taken(&second.mailbox), [1]);
        // The third took its event and is still writing it.
        let mut cx = Context::from_waker(noop_waker_ref());
        assert!(busy.mailbox.poll_take(&mut cx, &mut Vec::new()).is_ready());
        fanout.dispatch(&[Event::sample(2)]);
        // While the tick writes 2 to the first reader, two more events
        // fill the lane (room for 2): it spills into the mailboxes.
        let during = fanout.clone();
        *first_outlet.during.lock() = Some(Box::new(move || {
            during.dispatch(&[Event::sample(3), Event::sample(4)]);
        }));
        fanout.tick(&mut TickScratch::default());
        assert_eq!(*first_outlet.written.lock(), [2]);
        assert_eq!(taken(&first.mailbox), [3, 4]);
        let second_got = [second_outlet.written.lock().clone(), taken(&second.mailbox)].concat();
        assert_eq!(
            second_got,
            [2, 3, 4],
            "2 was in flight, not yet written to it"
        );
        assert_eq!(
            fanout.slow_disconnects(),
            0,
            "3 events for a busy reader with room for 2: one was in flight"
        );
        assert_eq!(taken(&busy.mailbox), [2, 3, 4]);
    }

    #[test]
    fn the_prompt_writer_writes_a_tick_s_first_event_for_the_subscribers_that_wait() {
        let fanout = ticking(Duration::from_secs(10));
        let (waiting, outlet) = noted(&fanout, &["t"], 10);
        let (other, other_outlet) = noted(&fanout, &["t", "u"], 10);
        let wakes = Arc::new(Wakes::default());
        let waker = Waker::from(wakes.clone());
        let with_waker = &mut Context::from_waker(&waker);
        let filter = Arc::new(TopicFilter::parse(["t"], 10).unwrap());
        let no_outlet = fanout.register(filter, ClientInfo::sample(), 10, CancellationToken::new());
        let mut batch = Vec::new();
        assert!(
            no_outlet
                .mailbox
                .poll_take(with_waker, &mut batch)
                .is_pending()
        );

        fanout.dispatch(&[Event::sample(1)]);
        assert_eq!(wakes.count(), 1, "one without an outlet is woken at once");
        assert_eq!(taken(&no_outlet.mailbox), [1]);
        fanout.dispatch(&[Event::sample(2)]);
        let scratch = &mut TickScratch::default();
        assert!(fanout.write_prompt(scratch));
        assert_eq!(
            *outlet.written.lock(),
            [1],
            "the lane's reader: 2 is in the lane"
        );
        assert_eq!(
            *other_outlet.written.lock(),
            [1, 2],
            "with what came before it wrote"
        );
        assert!(!fanout.write_prompt(scratch), "nothing more on the list");

        fanout.dispatch(&[Event::sample(3)]);
        assert!(
            !fanout.write_prompt(scratch),
            "later events wait for the tick"
        );
        fanout.tick(scratch);
        assert_eq!(*outlet.written.lock(), [1, 2, 3]);
        assert_eq!(*other_outlet.written.lock(), [1, 2, 3]);
        assert_eq!(taken(&waiting.mailbox), [] as [u64; 0]);
        assert_eq!(taken(&other.mailbox), [] as [u64; 0]);
    }

    #[test]
    fn the_prompt_writer_wakes_a_subscriber_that_took_its_events_itself() {
        let fanout = ticking(Duration::from_secs(10));
        let (sub, outlet) = noted(&fanout, &["t", "u"], 10);
        fanout.dispatch(&[Event::sample(1)]);
        // Woken by something else (a keep-alive, a WebSocket command), its
        // task takes the event before the prompt writer comes to it, and
        // is still writing it.
        let mut cx = Context::from_waker(noop_waker_ref());
        let took = sub.mailbox.poll_take(&mut cx, &mut Vec::new());
        assert_eq!(took, Poll::Ready(Taken::Events));
        fanout.dispatch(&[Event::sample(2)]);
        let scratch = &mut TickScratch::default();
        assert!(fanout.write_prompt(scratch));
        assert!(outlet.written.lock().is_empty(), "its task is not waiting");
        assert_eq!(taken(&sub.mailbox), [2], "it is woken for what came since");
        fanout.dispatch(&[Event::sample(3)]);
        assert!(!fanout.write_prompt(scratch), "then the tick's rule holds");
        fanout.tick(scratch);
        assert_eq!(
            *outlet.written.lock(),
            [3],
            "it waits again: the tick writes"
        );
    }

    #[test]
    fn the_prompt_writer_writes_for_longer_than_the_tick_before_it_wakes_the_rest() {
        let delay = Duration::from_millis(10);
        let fanout = ticking(delay);
        let outlet = Arc::new(Noted {
            cost: Duration::from_millis(2),
            ..Noted::default()
        });
        let mut cx = Context::from_waker(noop_waker_ref());
        waiting(&fanout, &["t", "u"], &outlet, 40, &mut cx);
        fanout.dispatch(&[Event::sample(1)]);
        assert!(fanout.write_prompt(&mut TickScratch::default()));
        // 80 ms of writes: past the tick's budget (20 ms), within the
        // prompt writer's (100 ms).
        assert_eq!(outlet.writes.load(Ordering::SeqCst), 40);
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
