//! A subscriber's bounded queue of live events, filled by the fan-out and
//! emptied by the subscriber's transport a whole batch at a time.
//!
//! Why not a channel: a channel wakes its receiver on every send, so each
//! event would cost every subscriber a task wake-up and a socket write.
//! Here a push wakes the subscriber only for its first event of a
//! `write_delay` tick; later ones of the same tick wait for the fan-out's
//! next tick (see the write coalescing of `fanout`). The subscriber takes
//! everything queued since its last wake-up in one swap, which its
//! transport writes as one frame. The queue and the waking rule share one
//! lock, so a push touches one place in memory. The queue holds no memory
//! while empty: an idle subscriber costs a few words here.
//!
//! The mailbox is also how the hub's keep-alive tick and its shutdown reach
//! the subscriber (see `hub::clock`), so that a waiting subscriber waits on
//! this one waker alone: a second thing to wait on (a watch channel, a
//! token) would register and unregister a waiter under a lock of its own
//! on every wake-up.
//!
//! A subscriber whose connection has an [`Outlet`] can have its batch
//! written by the write tick itself while its task waits here
//! ([`Mailbox::take_waiting`]; see `hub::outlet`).

use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use parking_lot::{Mutex, MutexGuard};

use super::clock::KEEPALIVE_TICKS;
use super::outlet::Outlet;
use crate::event::{Event, EventId};

/// An event on its way to a subscriber. A live one carries when the fan-out
/// queued it (one `Instant` per dispatch, copied into each entry: no
/// allocation), the start of its fan-out latency; a replayed one, `None`.
#[derive(Debug)]
pub struct Queued {
    pub event: Arc<Event>,
    pub dispatched: Option<Instant>,
}

impl Queued {
    /// The same event, queued once more: for one more subscriber.
    pub fn again(&self) -> Queued {
        Queued {
            event: self.event.clone(),
            dispatched: self.dispatched,
        }
    }
}

/// What became of a pushed event.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    /// Queued, and the subscriber woken (or already due to wake).
    Queued,
    /// Queued for the end of the tick: the fan-out must wake this mailbox
    /// then, with [`Mailbox::wake_deferred`].
    Deferred,
    /// Queued, the subscriber's first event of the tick, and its task waits
    /// with an outlet: the fan-out must hand the mailbox to the prompt
    /// writer, which writes the batch through the outlet or wakes the task
    /// ([`Mailbox::wake_deferred`]), as the tick does.
    Prompt,
    /// The queue holds `capacity` events already, and the subscriber is
    /// busy writing (its socket is full: it is too slow), or holds
    /// [`LATE_ROOM`] times that.
    Full,
}

/// How many times its capacity a subscriber's queue may hold while the
/// subscriber waits for events, that is while its writer is not held up
/// by its socket: the hub is then behind, not the reader, and cutting the
/// reader off would punish it for the hub's lateness. Seen at the start
/// of a fan-out to 1,000 subscribers at 6,000 events/s on 2 busy cores
/// (docs/BENCHMARKS-LOG.md, run 8): with a queue of 1,000 events (167 ms
/// of that stream), half the subscribers were cut off while their sockets
/// had room; the longest wait with 4,000 was about 300 ms. The room is
/// still a bound: a subscriber's queue never holds more.
pub const LATE_ROOM: usize = 4;

pub struct Mailbox {
    capacity: usize,
    state: Mutex<State>,
    /// The subscriber's socket, if the write tick may write to it.
    outlet: OnceLock<Arc<dyn Outlet>>,
}

#[derive(Default)]
struct State {
    events: Vec<Queued>,
    /// No more events will come, and why.
    ended: Option<Ending>,
    /// Keep-alive ticks since the subscriber last sent something: at
    /// [`KEEPALIVE_TICKS`], it sends a keep-alive.
    quiet: u64,
    /// The subscriber's task, while it waits for events.
    waker: Option<Waker>,
    /// The last `write_delay` tick in which the subscriber was woken (plus
    /// one, so that the default is no tick).
    woken_in: u64,
    /// Events wait for the end of the tick.
    deferred: bool,
    /// The subscriber's task waits here, with nothing else under way: the
    /// write tick may take its batch ([`Mailbox::take_waiting`]).
    waiting: bool,
    /// The write tick left part of a write in the outlet for the task.
    flush: bool,
    /// The lane it reads, if any (see `hub::lane`).
    reading: Option<Reading>,
}

/// Where a subscriber is in the lane it reads.
#[derive(Clone, Copy)]
struct Reading {
    lane: u64,
    /// The last event of the lane it was given, or the head when it began
    /// to read the lane: the lane's events up to this one are not for it.
    given: EventId,
}

/// Events of one lane (see `hub::lane`), with the lane's number: a
/// subscriber takes only those of the lane it reads, and a write tick
/// still holding a lane it has left gives it nothing more.
#[derive(Clone, Copy)]
pub struct LaneEvents<'e> {
    pub lane: u64,
    pub events: &'e [Queued],
}

impl State {
    /// Whether the write tick may write for the subscriber in tick `tick`
    /// (the one that starts): its task waits, with nothing under way. If
    /// so, notes the tick as [`Mailbox::wake_deferred`] does.
    fn claim(&mut self, tick: u64) -> bool {
        if !self.tick_may_write() {
            return false;
        }
        self.quiet = 0;
        self.deferred = false;
        self.woken_in = tick + 1;
        true
    }

    /// The subscriber's task waits with nothing under way: a write of the
    /// tick's (or the prompt writer's) would be the next on its socket.
    fn tick_may_write(&self) -> bool {
        self.waiting && !self.flush && self.ended.is_none()
    }

    /// Its own among a lane's events: none unless it reads that lane.
    fn own<'e>(&self, batch: LaneEvents<'e>) -> &'e [Queued] {
        let events = batch.events;
        match self.reading {
            Some(Reading { lane, given }) if lane == batch.lane => match events.first() {
                // Nearly always: it has been given everything before these.
                Some(first) if first.event.id > given => events,
                _ => &events[events.partition_point(|q| q.event.id <= given)..],
            },
            _ => &[],
        }
    }

    /// Notes `own` (not empty) as given.
    fn given(&mut self, own: &[Queued]) {
        if let Some(reading) = &mut self.reading {
            reading.given = own[own.len() - 1].event.id;
        }
    }

    /// What [`Mailbox::poll_take`] hands over, if anything.
    fn take(&mut self, batch: &mut Vec<Queued>) -> Option<Taken> {
        if self.ended == Some(Ending::Shutdown) {
            return Some(Taken::Ended(Ending::Shutdown));
        }
        if !self.events.is_empty() {
            self.quiet = 0;
            std::mem::swap(&mut self.events, batch);
            return Some(Taken::Events);
        }
        if let Some(ending) = self.ended {
            return Some(Taken::Ended(ending));
        }
        if self.quiet >= KEEPALIVE_TICKS {
            self.quiet = 0;
            return Some(Taken::KeepAlive);
        }
        self.flush.then_some(Taken::Flush)
    }
}

/// Why a mailbox takes no more events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The subscriber was cut off: it takes what is queued first.
    CutOff,
    /// The hub is shutting down: queued events are left behind.
    Shutdown,
}

/// What the subscriber finds in its mailbox.
#[derive(Debug, PartialEq, Eq)]
pub enum Taken {
    /// Events are in the batch given to `poll_take`.
    Events,
    /// Nothing has been sent for [`KEEPALIVE_TICKS`] keep-alive ticks.
    KeepAlive,
    /// The mailbox ended; after a cut-off, everything queued before has
    /// been taken.
    Ended(Ending),
    /// Nothing new, but the write tick left part of a batch in the
    /// subscriber's outlet, for its task to write.
    Flush,
}

impl Mailbox {
    pub fn new(capacity: usize) -> Self {
        Mailbox {
            capacity,
            state: Mutex::new(State::default()),
            outlet: OnceLock::new(),
        }
    }

    /// Lets the write tick write to the subscriber's socket from now on.
    pub fn set_outlet(&self, outlet: Arc<dyn Outlet>) {
        // Set once: a subscription has one connection.
        let _ = self.outlet.set(outlet);
    }

    pub fn outlet(&self) -> Option<&Arc<dyn Outlet>> {
        self.outlet.get()
    }

    /// For the write tick, in tick `tick` (the one that starts): swaps the
    /// queued events into `batch` (which must be empty) if the subscriber's
    /// task waits for them and owes no flush, as [`Mailbox::poll_take`]
    /// would have, and notes the tick as [`Mailbox::wake_deferred`] does,
    /// without waking the task.
    pub fn take_waiting(&self, tick: u64, batch: &mut Vec<Queued>) -> bool {
        debug_assert!(batch.is_empty());
        let mut state = self.state.lock();
        if state.events.is_empty() || !state.claim(tick) {
            return false;
        }
        std::mem::swap(&mut state.events, batch);
        true
    }

    /// The subscriber begins to read lane `lane`, whose events up to
    /// `head` are not its own.
    pub fn read_lane_after(&self, lane: u64, head: EventId) {
        self.state.lock().reading = Some(Reading { lane, given: head });
    }

    /// The subscriber reads no lane any more: a write tick that still
    /// holds the one it read gives it nothing more.
    pub fn leave_lane(&self) {
        self.state.lock().reading = None;
    }

    /// Its own among the events of a lane, in id order: those it was not
    /// given yet, if it reads that lane.
    pub fn own<'e>(&self, batch: LaneEvents<'e>) -> &'e [Queued] {
        self.state.lock().own(batch)
    }

    /// For the write tick, in tick `tick`: its own among the events of its
    /// lane (see `hub::lane`), if the tick may write them itself, as
    /// [`Mailbox::take_waiting`] would take a batch: the task waits, and
    /// nothing queued here must go before them. They count as given.
    pub fn claim_waiting<'e>(&self, tick: u64, batch: LaneEvents<'e>) -> Option<&'e [Queued]> {
        let mut state = self.state.lock();
        let own = state.own(batch);
        if own.is_empty() || !state.events.is_empty() || !state.claim(tick) {
            return None;
        }
        state.given(own);
        Some(own)
    }

    /// Queues its own among the events of its lane at once, and wakes the
    /// subscriber for them, in tick `tick` (the one that starts): those
    /// the tick could not write itself. Full, with nothing queued, if they
    /// do not fit (the rule of [`Mailbox::push`]).
    pub fn hand(&self, batch: LaneEvents<'_>, tick: u64) -> Pushed {
        self.hand_owed(batch, 0, tick)
    }

    /// [`Mailbox::hand`] for what a lane owes a reader when it spills or
    /// the reader leaves it (`Lane::owed`), whose first `in_flight` are
    /// the batch of a tick under way: those do not count against the
    /// subscriber's room. A reader the tick has not come to yet gets them
    /// on top of the lane's waiting events, up to twice its capacity at
    /// once; the hub's lateness put them there, not the reader's, which
    /// is judged as it would have been without them.
    pub fn hand_owed(&self, batch: LaneEvents<'_>, in_flight: usize, tick: u64) -> Pushed {
        let mut state = self.state.lock();
        let events = state.own(batch);
        if state.ended.is_some() || events.is_empty() {
            return Pushed::Queued;
        }
        // Its own are the last of the batch: those before the waiting ones
        // were in flight.
        let waiting_ones = batch.events.len() - in_flight;
        let counted = state.events.len() + events.len().min(waiting_ones);
        if counted > self.capacity && (!state.waiting || counted > LATE_ROOM * self.capacity) {
            return Pushed::Full;
        }
        state.given(events);
        state.events.extend(events.iter().map(Queued::again));
        wake_in(state, tick);
        Pushed::Queued
    }

    /// Wakes the subscriber to write what the write tick left in its
    /// outlet.
    pub fn flush(&self) {
        let mut state = self.state.lock();
        state.flush = true;
        let waker = state.waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Queues an event during write tick `tick`: the subscriber is woken
    /// if this is its first event of the tick (or handed to the prompt
    /// writer, if the write tick may write for it), or for every event
    /// without a tick (`write_delay` zero).
    pub fn push(&self, queued: Queued, tick: Option<u64>) -> Pushed {
        let mut state = self.state.lock();
        if state.ended.is_some() {
            // Nobody will take it: the subscription is ending.
            return Pushed::Queued;
        }
        let queued_now = state.events.len();
        if queued_now >= self.capacity
            && (!state.waiting || queued_now >= LATE_ROOM * self.capacity)
        {
            return Pushed::Full;
        }
        state.events.push(queued);
        if state.deferred {
            // A tick will wake the subscriber: the next, or the one under
            // way, which has not come to it yet (it goes through its list
            // after it starts, while events keep coming).
            return Pushed::Queued;
        }
        let tick = tick.map(|tick| tick + 1);
        if tick.is_some_and(|tick| tick == state.woken_in) {
            state.deferred = true;
            return Pushed::Deferred;
        }
        state.woken_in = tick.unwrap_or_default();
        if tick.is_some() && state.tick_may_write() && self.outlet.get().is_some() {
            // Later events of the tick join this one until the prompt
            // writer takes them, as they would for a tick under way.
            state.deferred = true;
            return Pushed::Prompt;
        }
        let waker = state.waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
        Pushed::Queued
    }

    /// Wakes the subscriber for the events that waited for the end of a
    /// tick; `tick` is the one that starts.
    pub fn wake_deferred(&self, tick: u64) {
        wake_in(self.state.lock(), tick);
    }

    /// Ends the mailbox (the first ending stays): after a cut-off the
    /// subscriber takes what is queued, then `Ended`.
    pub fn close(&self, ending: Ending) {
        let mut state = self.state.lock();
        state.ended.get_or_insert(ending);
        let waker = state.waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Whether the hub is shutting down, for a subscriber that is not
    /// waiting here (one that replays from the log).
    pub fn is_shut(&self) -> bool {
        self.state.lock().ended == Some(Ending::Shutdown)
    }

    /// Counts a keep-alive tick: one that ends [`KEEPALIVE_TICKS`] of them
    /// without a send wakes the subscriber to send a keep-alive.
    pub fn keepalive_tick(&self) {
        let mut state = self.state.lock();
        state.quiet += 1;
        if state.quiet != KEEPALIVE_TICKS {
            return;
        }
        let waker = state.waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// The subscriber sent something that did not come from here (a page
    /// of its replay): the silence starts again.
    pub fn sent(&self) {
        self.state.lock().quiet = 0;
    }

    /// Swaps everything queued into `batch` (which must be empty, and
    /// whose allocation the mailbox keeps for the next events), or a due
    /// keep-alive, or the ending, or waits. Taking events or a keep-alive
    /// counts as a send.
    pub fn poll_take(&self, cx: &mut Context<'_>, batch: &mut Vec<Queued>) -> Poll<Taken> {
        debug_assert!(batch.is_empty());
        let mut state = self.state.lock();
        let taken = state.take(batch);
        // Whatever the task writes next goes after what the tick left, so
        // any write flushes it.
        state.flush &= taken.is_none();
        state.waiting = taken.is_none();
        if let Some(taken) = taken {
            return Poll::Ready(taken);
        }
        match &mut state.waker {
            Some(waker) => waker.clone_from(cx.waker()),
            None => state.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Events queued now, for `/clients`.
    pub fn queue_size(&self) -> usize {
        self.state.lock().events.len()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

/// Wakes the subscriber in tick `tick` (the one that starts), for events
/// that waited for it: later ones of the tick wait for the next.
fn wake_in(mut state: MutexGuard<'_, State>, tick: u64) {
    state.deferred = false;
    state.woken_in = tick + 1;
    let waker = state.waker.take();
    drop(state);
    if let Some(waker) = waker {
        waker.wake();
    }
}

/// A waker that counts its wake-ups, for the hub's unit tests.
#[cfg(test)]
#[derive(Default)]
pub struct Wakes(std::sync::atomic::AtomicUsize);

#[cfg(test)]
impl std::task::Wake for Wakes {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[cfg(test)]
impl Wakes {
    pub fn count(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::task::noop_waker_ref;

    fn queued(seq: u64) -> Queued {
        Queued {
            event: Event::sample(seq),
            dispatched: Some(Instant::now()),
        }
    }

    #[test]
    fn takes_everything_queued_in_order_then_waits() {
        let mailbox = Mailbox::new(3);
        let mut cx = Context::from_waker(noop_waker_ref());
        let mut batch = Vec::new();
        for seq in 0..3 {
            assert_eq!(mailbox.push(queued(seq), None), Pushed::Queued);
        }
        assert_eq!(mailbox.push(queued(3), None), Pushed::Full, "bounded");
        assert_eq!(
            mailbox.poll_take(&mut cx, &mut batch),
            Poll::Ready(Taken::Events)
        );
        let seqs: Vec<u64> = batch.iter().map(|q| q.event.id.seq).collect();
        assert_eq!(seqs, [0, 1, 2]);
        assert_eq!(mailbox.queue_size(), 0);
        batch.clear();
        assert!(mailbox.poll_take(&mut cx, &mut batch).is_pending());
    }

    #[test]
    fn a_subscriber_that_waits_is_not_cut_off_for_the_hub_s_lateness() {
        let mailbox = Mailbox::new(3);
        let mut cx = Context::from_waker(noop_waker_ref());
        let mut batch = Vec::new();
        assert!(mailbox.poll_take(&mut cx, &mut batch).is_pending());
        for seq in 0..3 * LATE_ROOM as u64 {
            assert_eq!(mailbox.push(queued(seq), None), Pushed::Queued);
        }
        assert_eq!(
            mailbox.push(queued(99), None),
            Pushed::Full,
            "still bounded: LATE_ROOM times its capacity"
        );
        // Once it takes a batch it writes, until it waits again: a full
        // queue then means its socket holds it up.
        assert!(mailbox.poll_take(&mut cx, &mut batch).is_ready());
        for seq in 0..3 {
            assert_eq!(mailbox.push(queued(seq), None), Pushed::Queued);
        }
        assert_eq!(mailbox.push(queued(3), None), Pushed::Full);
    }

    #[test]
    fn a_lane_reader_is_given_each_event_of_its_lane_once() {
        let mailbox = Mailbox::new(10);
        let mut cx = Context::from_waker(noop_waker_ref());
        let mut batch = Vec::new();
        let seqs = |events: &[Queued]| events.iter().map(|q| q.event.id.seq).collect::<Vec<_>>();
        let of = |lane, events| LaneEvents { lane, events };
        mailbox.read_lane_after(7, EventId { ms: 1, seq: 1 });
        let lane: Vec<Queued> = (1..=4).map(queued).collect();
        assert!(
            mailbox.claim_waiting(1, of(7, &lane)).is_none(),
            "its task never waited"
        );
        assert!(mailbox.poll_take(&mut cx, &mut batch).is_pending());
        assert!(
            mailbox.claim_waiting(1, of(8, &lane)).is_none(),
            "another lane's"
        );
        let own = mailbox.claim_waiting(1, of(7, &lane)).expect("it waits");
        assert_eq!(seqs(own), [2, 3, 4], "after the head it began at");
        assert!(
            mailbox.claim_waiting(2, of(7, &lane)).is_none(),
            "all given"
        );
        assert_eq!(mailbox.own(of(7, &lane)).len(), 0);

        let lane: Vec<Queued> = (3..=6).map(queued).collect();
        assert_eq!(mailbox.hand(of(7, &lane), 2), Pushed::Queued);
        assert_eq!(
            mailbox.poll_take(&mut cx, &mut batch),
            Poll::Ready(Taken::Events)
        );
        assert_eq!(seqs(&batch), [5, 6], "handed: those not given yet");
        batch.clear();
        assert!(mailbox.poll_take(&mut cx, &mut batch).is_pending());
        mailbox.push(queued(7), None);
        let lane = [queued(8)];
        assert!(
            mailbox.claim_waiting(3, of(7, &lane)).is_none(),
            "what its mailbox holds goes first"
        );
        assert_eq!(mailbox.hand(of(7, &lane), 3), Pushed::Queued);
        assert!(mailbox.poll_take(&mut cx, &mut batch).is_ready());
        assert_eq!(seqs(&batch), [7, 8]);

        batch.clear();
        mailbox.leave_lane();
        let lane = [queued(9)];
        assert_eq!(mailbox.own(of(7, &lane)).len(), 0, "it reads no lane");
        assert_eq!(mailbox.hand(of(7, &lane), 4), Pushed::Queued);
        assert!(mailbox.poll_take(&mut cx, &mut batch).is_pending());
    }

    #[test]
    fn a_spilt_lane_s_events_in_flight_do_not_count_against_a_busy_reader() {
        let mailbox = Mailbox::new(2);
        mailbox.read_lane_after(7, EventId::ZERO);
        // Its task has never waited: it is busy (replaying, writing).
        let lane: Vec<Queued> = (1..=4).map(queued).collect();
        let events = LaneEvents {
            lane: 7,
            events: &lane,
        };
        assert_eq!(mailbox.hand(events, 1), Pushed::Full, "4 > its capacity");
        assert_eq!(
            mailbox.hand_owed(events, 2, 1),
            Pushed::Queued,
            "2 in flight, and 2 waiting in the lane"
        );
        assert_eq!(mailbox.queue_size(), 4);
        let more = [queued(5)];
        let events = LaneEvents {
            lane: 7,
            events: &more,
        };
        assert_eq!(mailbox.hand_owed(events, 0, 1), Pushed::Full, "then 5 > 2");
    }

    #[test]
    fn a_closed_mailbox_hands_over_what_it_holds_first() {
        let mailbox = Mailbox::new(10);
        let mut cx = Context::from_waker(noop_waker_ref());
        let mut batch = Vec::new();
        mailbox.push(queued(0), None);
        mailbox.close(Ending::CutOff);
        mailbox.close(Ending::Shutdown);
        assert!(!mailbox.is_shut(), "the first ending stays");
        assert_eq!(
            mailbox.poll_take(&mut cx, &mut batch),
            Poll::Ready(Taken::Events)
        );
        batch.clear();
        assert_eq!(
            mailbox.poll_take(&mut cx, &mut batch),
            Poll::Ready(Taken::Ended(Ending::CutOff))
        );
    }

    #[test]
    fn at_shutdown_queued_events_are_left_behind() {
        let mailbox = Mailbox::new(10);
        let mut cx = Context::from_waker(noop_waker_ref());
        let mut batch = Vec::new();
        mailbox.push(queued(0), None);
        mailbox.close(Ending::Shutdown);
        assert!(mailbox.is_shut());
        assert_eq!(
            mailbox.poll_take(&mut cx, &mut batch),
            Poll::Ready(Taken::Ended(Ending::Shutdown))
        );
        assert_eq!(mailbox.push(queued(1), None), Pushed::Queued);
        assert!(batch.is_empty());
    }

    /// A mailbox of 10, and a waker that counts its wake-ups.
    fn counted() -> (Mailbox, Arc<Wakes>, Waker) {
        let wakes = Arc::new(Wakes::default());
        let waker = Waker::from(wakes.clone());
        (Mailbox::new(10), wakes, waker)
    }

    #[test]
    fn only_the_first_event_of_a_tick_wakes_the_subscriber() {
        let (mailbox, wakes, waker) = counted();
        let mut cx = Context::from_waker(&waker);
        let mut batch = Vec::new();
        assert!(mailbox.poll_take(&mut cx, &mut batch).is_pending());
        assert_eq!(mailbox.push(queued(0), Some(7)), Pushed::Queued);
        assert_eq!(wakes.count(), 1, "the first event of tick 7 wakes");
        assert!(mailbox.poll_take(&mut cx, &mut batch).is_ready());
        batch.clear();
        assert!(mailbox.poll_take(&mut cx, &mut batch).is_pending());
        assert_eq!(mailbox.push(queued(1), Some(7)), Pushed::Deferred);
        assert_eq!(mailbox.push(queued(2), Some(7)), Pushed::Queued);
        assert_eq!(wakes.count(), 1, "later ones of tick 7 wait");
        mailbox.wake_deferred(8);
        assert_eq!(wakes.count(), 2, "the end of the tick wakes");
        assert!(mailbox.poll_take(&mut cx, &mut batch).is_ready());
        assert_eq!(batch.len(), 2, "both, in one batch");
        batch.clear();
        assert!(mailbox.poll_take(&mut cx, &mut batch).is_pending());
        assert_eq!(
            mailbox.push(queued(3), Some(8)),
            Pushed::Deferred,
            "woken in 8"
        );
        mailbox.wake_deferred(9);
        assert_eq!(mailbox.push(queued(4), Some(10)), Pushed::Queued);
        assert_eq!(wakes.count(), 3, "a waker is woken once");
    }

    #[test]
    fn a_tick_under_way_takes_the_events_that_come_before_it_reaches_the_mailbox() {
        let (mailbox, wakes, waker) = counted();
        let mut cx = Context::from_waker(&waker);
        let mut batch = Vec::new();
        assert!(mailbox.poll_take(&mut cx, &mut batch).is_pending());
        assert_eq!(mailbox.push(queued(0), Some(7)), Pushed::Queued);
        assert!(mailbox.poll_take(&mut cx, &mut batch).is_ready());
        batch.clear();
        assert!(mailbox.poll_take(&mut cx, &mut batch).is_pending());
        assert_eq!(mailbox.push(queued(1), Some(7)), Pushed::Deferred);
        // Tick 8 has started, and not come to this mailbox yet.
        assert_eq!(mailbox.push(queued(2), Some(8)), Pushed::Queued);
        assert_eq!(wakes.count(), 1, "left to the tick");
        assert!(mailbox.take_waiting(8, &mut batch), "the task waits");
        assert_eq!(batch.len(), 2, "the tick takes both");
        assert_eq!(wakes.count(), 1, "and the task sleeps on");
        batch.clear();
        assert_eq!(
            mailbox.push(queued(3), Some(8)),
            Pushed::Deferred,
            "the next tick's"
        );
    }

    #[test]
    fn the_tick_takes_nothing_from_a_task_that_does_not_wait() {
        let (mailbox, wakes, waker) = counted();
        let mut cx = Context::from_waker(&waker);
        let mut batch = Vec::new();
        mailbox.push(queued(0), Some(1));
        assert!(!mailbox.take_waiting(1, &mut batch), "never waited");
        assert!(mailbox.poll_take(&mut cx, &mut batch).is_ready());
        mailbox.push(queued(1), Some(1));
        let mut taken = Vec::new();
        assert!(!mailbox.take_waiting(2, &mut taken), "busy with its batch");
        batch.clear();
        assert!(mailbox.poll_take(&mut cx, &mut batch).is_ready());
        batch.clear();
        assert!(mailbox.poll_take(&mut cx, &mut batch).is_pending());
        assert!(!mailbox.take_waiting(2, &mut taken), "nothing queued");

        // What the tick could not write: any next write takes it first.
        mailbox.flush();
        assert_eq!(wakes.count(), 1);
        mailbox.push(queued(2), Some(3));
        assert!(!mailbox.take_waiting(3, &mut taken), "a flush is owed");
        assert_eq!(
            mailbox.poll_take(&mut cx, &mut batch),
            Poll::Ready(Taken::Events)
        );
        batch.clear();
        mailbox.flush();
        assert_eq!(
            mailbox.poll_take(&mut cx, &mut batch),
            Poll::Ready(Taken::Flush)
        );
        assert!(mailbox.poll_take(&mut cx, &mut batch).is_pending());
        mailbox.push(queued(3), Some(4));
        assert!(mailbox.take_waiting(4, &mut taken), "waits again");
    }

    #[test]
    fn without_ticks_every_event_wakes() {
        let (mailbox, wakes, waker) = counted();
        let mut cx = Context::from_waker(&waker);
        let mut batch = Vec::new();
        for seq in 0..3 {
            assert!(mailbox.poll_take(&mut cx, &mut batch).is_pending());
            assert_eq!(mailbox.push(queued(seq), None), Pushed::Queued);
            assert!(mailbox.poll_take(&mut cx, &mut batch).is_ready());
            batch.clear();
        }
        assert_eq!(wakes.count(), 3);
    }

    #[test]
    fn a_keepalive_is_due_after_keepalive_ticks_without_a_send() {
        let (mailbox, wakes, waker) = counted();
        let mut cx = Context::from_waker(&waker);
        let mut batch = Vec::new();
        let quiet = |mailbox: &Mailbox, ticks: u64| {
            for _ in 0..ticks {
                mailbox.keepalive_tick();
            }
        };
        assert!(mailbox.poll_take(&mut cx, &mut batch).is_pending());
        quiet(&mailbox, KEEPALIVE_TICKS - 1);
        assert_eq!(wakes.count(), 0);
        mailbox.keepalive_tick();
        assert_eq!(wakes.count(), 1, "woken for a keep-alive");
        assert_eq!(
            mailbox.poll_take(&mut cx, &mut batch),
            Poll::Ready(Taken::KeepAlive)
        );
        assert!(mailbox.poll_take(&mut cx, &mut batch).is_pending());

        // Taking events, or a send of the subscriber's own, starts the
        // silence again.
        quiet(&mailbox, KEEPALIVE_TICKS - 1);
        mailbox.push(queued(0), None);
        assert!(mailbox.poll_take(&mut cx, &mut batch).is_ready());
        batch.clear();
        quiet(&mailbox, KEEPALIVE_TICKS - 1);
        mailbox.sent();
        quiet(&mailbox, KEEPALIVE_TICKS - 1);
        assert!(mailbox.poll_take(&mut cx, &mut batch).is_pending());

        // Events due with a keep-alive go instead of it.
        quiet(&mailbox, 1);
        mailbox.push(queued(1), None);
        assert_eq!(
            mailbox.poll_take(&mut cx, &mut batch),
            Poll::Ready(Taken::Events)
        );
        batch.clear();
        assert!(mailbox.poll_take(&mut cx, &mut batch).is_pending());
    }
}
