//! A subscriber's bounded queue of live events, filled by the fan-out and
//! emptied by the subscriber's transport a whole batch at a time.
//!
//! Why not a channel: a channel wakes its receiver on every send, so each
//! event would cost every subscriber a task wake-up and a socket write.
//! Here pushing and waking are separate: the fan-out decides when a
//! subscriber is worth waking (see `Fanout::dispatch`), and the subscriber
//! takes everything queued since its last wake-up in one swap, which its
//! transport writes as one frame. The queue holds no memory while empty:
//! an idle subscriber costs a few words here.

use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use parking_lot::Mutex;

use crate::event::Event;

/// An event on its way to a subscriber. A live one carries when the fan-out
/// queued it (one `Instant` per dispatch, copied into each entry: no
/// allocation), the start of its fan-out latency; a replayed one, `None`.
#[derive(Debug)]
pub struct Queued {
    pub event: Arc<Event>,
    pub dispatched: Option<Instant>,
}

/// What became of a pushed event.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// The queue holds `capacity` events already: the subscriber is too slow.
    Full,
}

pub struct Mailbox {
    capacity: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    events: Vec<Queued>,
    /// No more events will come (the subscriber was cut off).
    closed: bool,
    /// The subscriber's task, while it waits for events.
    waker: Option<Waker>,
}

/// What the subscriber finds in its mailbox.
pub enum Taken {
    /// Events are in the batch given to `poll_take`.
    Events,
    /// Cut off, and everything queued before has been taken.
    Closed,
}

impl Mailbox {
    pub fn new(capacity: usize) -> Self {
        Mailbox {
            capacity,
            state: Mutex::new(State::default()),
        }
    }

    /// Queues an event without waking the subscriber.
    pub fn push(&self, queued: Queued) -> Pushed {
        let mut state = self.state.lock();
        if state.events.len() >= self.capacity {
            return Pushed::Full;
        }
        state.events.push(queued);
        Pushed::Queued
    }

    /// Wakes the subscriber if it is waiting.
    pub fn wake(&self) {
        let waker = self.state.lock().waker.take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Ends the mailbox: the subscriber takes what is queued, then `Closed`.
    pub fn close(&self) {
        self.state.lock().closed = true;
        self.wake();
    }

    /// Swaps everything queued into `batch` (which must be empty, and
    /// whose allocation the mailbox keeps for the next events), or waits.
    pub fn poll_take(&self, cx: &mut Context<'_>, batch: &mut Vec<Queued>) -> Poll<Taken> {
        debug_assert!(batch.is_empty());
        let mut state = self.state.lock();
        if !state.events.is_empty() {
            std::mem::swap(&mut state.events, batch);
            return Poll::Ready(Taken::Events);
        }
        if state.closed {
            return Poll::Ready(Taken::Closed);
        }
        match &mut state.waker {
            Some(waker) => waker.clone_from(cx.waker()),
            None => state.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Events queued now, for `/clients`.
    pub fn len(&self) -> usize {
        self.state.lock().events.len()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventId, NewEvent};
    use futures_util::task::noop_waker_ref;

    fn queued(seq: u64) -> Queued {
        let new = NewEvent {
            topic: "t".into(),
            kind: None,
            data: serde_json::value::RawValue::from_string("1".into()).unwrap(),
            key: None,
        };
        let id = EventId { ms: 1, seq };
        Queued {
            event: Arc::new(Event::new(id, chrono::Utc::now(), new)),
            dispatched: Some(Instant::now()),
        }
    }

    #[test]
    fn takes_everything_queued_in_order_then_waits() {
        let mailbox = Mailbox::new(3);
        let mut cx = Context::from_waker(noop_waker_ref());
        let mut batch = Vec::new();
        assert!(mailbox.poll_take(&mut cx, &mut batch).is_pending());
        for seq in 0..3 {
            assert_eq!(mailbox.push(queued(seq)), Pushed::Queued);
        }
        assert_eq!(mailbox.push(queued(3)), Pushed::Full, "bounded");
        assert!(matches!(
            mailbox.poll_take(&mut cx, &mut batch),
            Poll::Ready(Taken::Events)
        ));
        let seqs: Vec<u64> = batch.iter().map(|q| q.event.id.seq).collect();
        assert_eq!(seqs, [0, 1, 2]);
        assert_eq!(mailbox.len(), 0);
        batch.clear();
        assert!(mailbox.poll_take(&mut cx, &mut batch).is_pending());
    }

    #[test]
    fn a_closed_mailbox_hands_over_what_it_holds_first() {
        let mailbox = Mailbox::new(10);
        let mut cx = Context::from_waker(noop_waker_ref());
        let mut batch = Vec::new();
        mailbox.push(queued(0));
        mailbox.close();
        assert!(matches!(
            mailbox.poll_take(&mut cx, &mut batch),
            Poll::Ready(Taken::Events)
        ));
        batch.clear();
        assert!(matches!(
            mailbox.poll_take(&mut cx, &mut batch),
            Poll::Ready(Taken::Closed)
        ));
    }

    #[test]
    fn wake_reaches_a_waiting_subscriber_only() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::task::Wake;
        struct Count(AtomicUsize);
        impl Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let mailbox = Mailbox::new(10);
        mailbox.wake();
        assert_eq!(count.0.load(Ordering::SeqCst), 0, "nobody waits yet");
        let mut batch = Vec::new();
        assert!(mailbox.poll_take(&mut cx, &mut batch).is_pending());
        mailbox.push(queued(0));
        assert_eq!(count.0.load(Ordering::SeqCst), 0, "push does not wake");
        mailbox.wake();
        mailbox.wake();
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "one wake per wait");
    }
}
