//! A topic's lane: the events that wait for the `write_delay` tick, kept
//! once for every subscriber whose only topic it is.
//!
//! Why: a busy topic's subscribers all get the same events. Pushing each
//! event into each subscriber's mailbox costs a lock, a reference count
//! and a cache line per subscriber per event, on the publishing path
//! (session 11's profile put it at 11% of the hub's CPU). A lane takes the
//! event once instead; the tick then writes the lane's batch, made into
//! one chunk per encoding, to each reader that waits (`hub::outlet`), and
//! hands it to the mailbox of each reader that does not. Only the first
//! event of a tick still goes to every reader's mailbox at once, so that a
//! quiet stream's events are not delayed (see `fanout`'s write
//! coalescing).
//!
//! A pass of the tick through a thousand readers takes milliseconds, and
//! events keep coming meanwhile. The tick takes those too as it goes
//! ([`catch_up`]), as it would find them in each reader's mailbox; each
//! reader's mailbox notes the lane it reads and the last of its events it
//! was given, so that the next tick skips them for it. A reader that
//! leaves the lane (a WebSocket session that changes its topics) takes
//! what it was not given yet into its mailbox, the events the tick is
//! writing included ([`Lane::hand_over`]), and from then on takes nothing
//! from the lane, which the tick may still hold.
//!
//! A subscriber with several topics, or a wildcard, gets each event in its
//! mailbox as before: its batch is its own mix of topics, in id order.

use std::sync::Arc;

use parking_lot::Mutex;

use super::mailbox::{LaneEvents, Mailbox, Pushed, Queued};
use crate::event::EventId;

/// A subscriber as the fan-out's index holds it, in a lane or elsewhere:
/// what dispatch and the tick need, without a lookup by id.
#[derive(Clone)]
pub struct Recipient {
    pub id: u64,
    pub mailbox: Arc<Mailbox>,
}

/// Events of a lane, shared by the fan-out, under the registry's lock, and
/// the tick, which reads them while it writes.
pub type Shared = Arc<Mutex<Vec<Queued>>>;

/// One topic's lane. The fan-out's registry owns it, under its lock.
pub struct Lane {
    /// Tells it apart from the lanes before and after it (see
    /// [`LaneEvents`]).
    id: u64,
    /// Shared with the tick, which goes through them without the
    /// registry's lock; copied when they change while the tick holds them.
    readers: Arc<Vec<Recipient>>,
    /// The events that wait for the next tick.
    pending: Shared,
    /// The events the tick is writing, until its pass through the readers
    /// ends.
    in_flight: Shared,
    /// The tick (plus one) in which the readers were last woken, or written
    /// to, for this lane.
    woken_in: u64,
    /// The lane is on the tick's list.
    due: bool,
}

/// Where an event of the lane goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// To every reader's mailbox, which wakes it: the lane's first event
    /// of the tick, or any event without a tick.
    EachMailbox,
    /// Into the lane, which must now be put on the tick's list.
    Due,
    /// Into the lane, already on the tick's list.
    Pending,
    /// Into the lane, which now holds as many events as a subscriber may
    /// wait for (the tick is that late): hand them to the readers'
    /// mailboxes now ([`Lane::spill`]), where their bounds apply.
    Spill,
}

/// What a due lane gives the tick.
pub struct Due {
    pub lane: u64,
    /// The events that waited for the tick (the tick's own copy of the
    /// lane's in-flight ones, to which it adds as it catches up).
    pub events: Vec<Queued>,
    pub readers: Arc<Vec<Recipient>>,
    /// Where the events that come during the tick's pass wait.
    pub pending: Shared,
    /// The lane's copy of the events, emptied when the pass ends.
    pub in_flight: Shared,
}

impl Lane {
    pub fn new(id: u64) -> Self {
        Lane {
            id,
            readers: Arc::default(),
            pending: Shared::default(),
            in_flight: Shared::default(),
            woken_in: 0,
            due: false,
        }
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn readers(&self) -> &[Recipient] {
        &self.readers
    }

    /// A new reader, whose mailbox knows from which event the lane's
    /// events are its own ([`Mailbox::read_lane_after`]).
    pub fn add_reader(&mut self, reader: Recipient) {
        Arc::make_mut(&mut self.readers).push(reader);
    }

    pub fn remove_reader(&mut self, id: u64) -> Option<Recipient> {
        let readers = Arc::make_mut(&mut self.readers);
        let at = readers.iter().position(|reader| reader.id == id)?;
        Some(readers.swap_remove(at))
    }

    /// How many of the events waiting for the tick are for the reader
    /// with `mailbox`.
    pub fn waiting_for(&self, mailbox: &Mailbox) -> usize {
        let pending = self.pending.lock();
        mailbox.own(self.events(&pending)).len()
    }

    /// Hands a reader that leaves the lane, at tick `tick`, what it was not
    /// given yet ([`Lane::owed`]). Else the first of them, if its mailbox
    /// cannot take them.
    pub fn hand_over(&self, mailbox: &Mailbox, tick: u64) -> Result<(), EventId> {
        let mut owed = Vec::new();
        let in_flight = self.owed(&mut owed);
        let batch = self.events(&owed);
        match mailbox.hand_owed(batch, in_flight, tick) {
            Pushed::Full => Err(mailbox.own(batch)[0].event.id),
            _ => Ok(()),
        }
    }

    /// What the lane may owe a reader, copied into `into` (empty): the
    /// events a tick under way is writing, then those that wait; returns
    /// how many were in flight. A reader the tick has not come to yet was
    /// not given the first: handed the waiting events alone, it would
    /// count everything before them as given, and the tick would then
    /// skip them for it, a silent gap. A reader's mailbox takes only its
    /// own of these ([`Mailbox::own`]), so one the tick has written to
    /// gets none twice.
    fn owed(&self, into: &mut Vec<Queued>) -> usize {
        into.extend(self.in_flight.lock().iter().map(Queued::again));
        let in_flight = into.len();
        into.extend(self.pending.lock().iter().map(Queued::again));
        in_flight
    }

    fn events<'e>(&self, events: &'e [Queued]) -> LaneEvents<'e> {
        LaneEvents {
            lane: self.id,
            events,
        }
    }

    /// Routes an event of tick `tick` (`None`: no tick), and keeps it if
    /// the route says so; `None` if the lane has no readers. A lane holds
    /// at most what its readers' mailboxes may (they share the hub's
    /// `subscriber_buffer`).
    pub fn route(&mut self, queued: &Queued, tick: Option<u64>) -> Option<Route> {
        let room = self.readers.first()?.mailbox.capacity();
        let Some(tick) = tick.map(|tick| tick + 1) else {
            return Some(Route::EachMailbox);
        };
        let route = if self.due {
            Route::Pending
        } else if self.woken_in == tick {
            self.due = true;
            Route::Due
        } else {
            self.woken_in = tick;
            return Some(Route::EachMailbox);
        };
        let mut pending = self.pending.lock();
        pending.push(queued.again());
        if pending.len() >= room {
            return Some(Route::Spill);
        }
        Some(route)
    }

    /// Empties the lane for [`Route::Spill`]: what it may owe its readers
    /// goes into `into` ([`Lane::owed`]). Gives its readers and how many
    /// of `into` were in flight. It stays on the tick's list.
    pub fn spill(&mut self, into: &mut Vec<Queued>) -> (&[Recipient], usize) {
        let in_flight = self.owed(into);
        self.pending.lock().clear();
        (&self.readers, in_flight)
    }

    /// For tick `tick`, which starts, if the lane is on its list: its
    /// events, now in flight, copied into `into` (empty). Events that come
    /// from now on are for the next tick, which the lane is then on the
    /// list of.
    pub fn take_due(&mut self, tick: u64, mut into: Vec<Queued>) -> Result<Due, Vec<Queued>> {
        if !std::mem::take(&mut self.due) {
            return Err(into);
        }
        self.woken_in = tick + 1;
        let mut pending = self.pending.lock();
        let mut in_flight = self.in_flight.lock();
        // Emptied at the end of the last pass: its room goes to `pending`.
        debug_assert!(in_flight.is_empty());
        std::mem::swap(&mut *pending, &mut *in_flight);
        into.extend(in_flight.iter().map(Queued::again));
        Ok(Due {
            lane: self.id,
            events: into,
            readers: self.readers.clone(),
            pending: self.pending.clone(),
            in_flight: self.in_flight.clone(),
        })
    }
}

/// Adds to `events` those of `pending` that came after them: the tick,
/// part way through a lane's readers, takes the events published since it
/// began, for the readers it has not come to yet.
pub fn catch_up(events: &mut Vec<Queued>, pending: &Mutex<Vec<Queued>>) {
    let pending = pending.lock();
    let after = match events.last() {
        Some(last) => pending.partition_point(|q| q.event.id <= last.event.id),
        None => 0,
    };
    events.extend(pending[after..].iter().map(Queued::again));
}
