//! Writing through at the write tick: the tick writes a waiting
//! subscriber's batch to its socket itself, instead of waking the
//! subscriber's task to do it.
//!
//! Why: with a `write_delay`, a busy topic's subscribers are all woken by
//! the tick, once per tick each, and each wake-up costs a task switch,
//! the subscription's and the transport's state machines and a vectored
//! write: about twice what the socket write alone costs (`sluice bench
//! floor` measures the write alone). At the tick, most subscribers are
//! waiting with nothing else to do. For those, the tick takes the batch,
//! encodes it (once for every subscriber with the same batch: see
//! [`LastChunk`]) and sends it, and the task sleeps on.
//!
//! The subscriber's task stays the owner of its stream: the tick writes
//! only while the task waits for its mailbox, and an outlet serializes the
//! tick's writes with the task's own, so that nothing is written out of
//! order. What a full socket does not take at once is left to the task,
//! which writes it before anything else ([`Wrote::Part`]): a slow reader
//! keeps its own task waiting, never the tick.
//!
//! Only the connections whose socket the hub writes itself have an outlet
//! (`http::outlet`: plain-text HTTP/1.1 SSE and NDJSON, and WebSockets
//! upgraded from plain-text HTTP/1.1); the others are woken as before.

use std::sync::Arc;

use bytes::Bytes;

pub use super::mailbox::{LaneEvents, Mailbox, Queued};
use crate::event::Event;

/// A subscriber's socket, as the write tick may write to it.
pub trait Outlet: Send + Sync {
    /// Takes the subscriber's batch from `source` if its task waits for it
    /// (see [`Source::take`]), and writes it, with no write of the task's
    /// own in between.
    fn write_through(
        &self,
        mailbox: &Mailbox,
        tick: u64,
        source: Source<'_>,
        last: &mut LastChunk,
    ) -> Wrote;
}

/// Where the tick finds a subscriber's batch.
pub enum Source<'a> {
    /// In its mailbox: taken into this vector, empty, and left empty.
    Mailbox(&'a mut Vec<Queued>),
    /// In its topic's lane (see `hub::lane`): its own among these events,
    /// shared with the lane's other readers.
    Lane(LaneEvents<'a>),
}

impl Source<'_> {
    /// The batch, if the subscriber's task waits for it, in tick `tick`
    /// ([`Mailbox::take_waiting`], [`Mailbox::claim_waiting`]). Then the
    /// write tick writes it, and the task is not woken.
    pub fn take(&mut self, mailbox: &Mailbox, tick: u64) -> Option<&[Queued]> {
        match self {
            Source::Mailbox(batch) => mailbox.take_waiting(tick, batch).then_some(&batch[..]),
            Source::Lane(events) => mailbox.claim_waiting(tick, *events),
        }
    }

    /// Lets go of the batch written.
    pub fn done(self) {
        if let Source::Mailbox(batch) = self {
            batch.clear();
        }
    }
}

/// What the tick did with a subscriber's batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wrote {
    /// Nothing: the task is busy, the outlet is closed or owes the task a
    /// write, or there was no batch. The task is woken to carry on.
    Nothing,
    /// The whole batch went out; the task sleeps on.
    All,
    /// The socket took part of it: the rest waits in the outlet for the
    /// task, which must be woken to write it ([`Mailbox::flush`]).
    Part,
}

/// A batch made into the bytes of one write.
#[derive(Clone, Default)]
pub struct Chunk {
    pub bytes: Bytes,
    /// Of which the events' frames, without the framing around them.
    pub frames: usize,
}

/// The last chunk the tick made, kept for the next subscriber whose batch
/// is the same events in the same encoding. The subscribers of one topic
/// get the same batch in a tick and come one after another in the tick's
/// list, so one chunk made serves them all: one copy of the frames per
/// topic and tick instead of one per subscriber.
#[derive(Default)]
pub struct LastChunk {
    /// Which encoding made it (see [`LastChunk::get_or_make`]).
    encoding: usize,
    /// Its events. Held, so that no other event can take one's address.
    events: Vec<Arc<Event>>,
    chunk: Chunk,
}

impl LastChunk {
    /// The chunk of `batch` in `encoding`, a value that tells encodings
    /// apart while the batch's events live (the address of the first
    /// event's frame in it, which is held here with the event): the last
    /// one if it was made of the same, or `make`'s.
    pub fn get_or_make(
        &mut self,
        encoding: usize,
        batch: &[Queued],
        make: impl FnOnce(&[Queued]) -> Chunk,
    ) -> Chunk {
        let same = encoding == self.encoding
            && batch.len() == self.events.len()
            && batch
                .iter()
                .zip(&self.events)
                .all(|(queued, event)| Arc::ptr_eq(&queued.event, event));
        if !same {
            self.chunk = make(batch);
            self.encoding = encoding;
            self.events.clear();
            self.events
                .extend(batch.iter().map(|queued| queued.event.clone()));
        }
        self.chunk.clone()
    }

    /// Lets go of the events and the chunk, at the end of a tick.
    pub fn clear(&mut self) {
        self.events.clear();
        self.chunk = Chunk::default();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    fn batch(events: &[&Arc<Event>]) -> Vec<Queued> {
        events
            .iter()
            .map(|event| Queued {
                event: Arc::clone(event),
                dispatched: Some(Instant::now()),
            })
            .collect()
    }

    #[test]
    fn a_chunk_is_made_once_for_the_same_events_in_the_same_encoding() {
        let (a, b, c) = (Event::sample(1), Event::sample(2), Event::sample(3));
        let mut last = LastChunk::default();
        let made = std::cell::Cell::new(0);
        let chunk = |last: &mut LastChunk, encoding, batch: &[Queued]| {
            let chunk = last.get_or_make(encoding, batch, |batch| {
                made.set(made.get() + 1);
                Chunk {
                    bytes: Bytes::from(format!("{encoding}:{}", batch.len())),
                    frames: batch.len(),
                }
            });
            chunk.bytes
        };
        assert_eq!(chunk(&mut last, 1, &batch(&[&a, &b])), "1:2");
        assert_eq!(chunk(&mut last, 1, &batch(&[&a, &b])), "1:2");
        assert_eq!(made.get(), 1, "the same batch again: the same chunk");
        chunk(&mut last, 2, &batch(&[&a, &b]));
        assert_eq!(made.get(), 2, "another encoding");
        chunk(&mut last, 2, &batch(&[&a, &c]));
        assert_eq!(made.get(), 3, "the same ends and length, another event");
        chunk(&mut last, 2, &batch(&[&a]));
        assert_eq!(made.get(), 4, "fewer events");
        last.clear();
        chunk(&mut last, 2, &batch(&[&a]));
        assert_eq!(made.get(), 5, "nothing is kept past a tick");
    }
}
