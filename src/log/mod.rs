//! History: the ordered log of events, behind one trait.
//!
//! The log is the source of truth. It assigns each event its id; an event
//! exists once `append` has returned it. Replay and live delivery read the
//! same ordered sequence, which is what makes the seam between them exact.
//! Backends: [`memory::MemoryLog`] (the on-disk log and Redis Streams are to
//! come as further implementations of [`EventLog`]).

pub mod memory;

use std::sync::Arc;

use async_trait::async_trait;

use crate::event::{Event, EventId, NewEvent};
use crate::topic::TopicFilter;

/// Why the log could not do what was asked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LogError {
    /// The backend cannot take writes now (disk full, Redis down…).
    #[error("history is unavailable: {0}")]
    Unavailable(String),
}

/// The history no longer holds everything after the requested position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    /// The oldest id still retained, where reading goes on.
    pub oldest: Option<EventId>,
}

/// One page of a read.
#[derive(Debug, Default)]
pub struct ReadPage {
    /// Set when events after the requested position were lost (retention, or
    /// an earlier run); `events` then start at the oldest retained one.
    pub gap: Option<Gap>,
    /// Matching events, in id order.
    pub events: Vec<Arc<Event>>,
    /// Where the next page starts: the last id examined, matching or not.
    /// `None` when nothing was examined.
    pub cursor: Option<EventId>,
    /// True when the read reached `until` (or the end of the log).
    pub done: bool,
}

/// A read of the log.
#[derive(Debug, Clone, Copy)]
pub struct ReadRequest<'a> {
    /// Read events after this id; `None` reads from the oldest retained.
    pub after: Option<EventId>,
    /// Stop at this id (inclusive); `None` reads to the end.
    pub until: Option<EventId>,
    pub filter: &'a TopicFilter,
    /// Most matching events to return.
    pub limit: usize,
}

/// What `/topics` shows of a topic.
#[derive(Debug, Clone)]
pub struct TopicStats {
    pub name: Box<str>,
    pub last_id: EventId,
    pub retained: usize,
}

/// Summary figures for the admin endpoints.
#[derive(Debug, Clone, Copy)]
pub struct LogStats {
    pub retained: usize,
    pub oldest: Option<EventId>,
    /// The last id issued, retained or not (for a fresh log, the floor below
    /// which every id counts as lost history).
    pub head: EventId,
}

#[async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// Appends a batch, all or nothing, assigning increasing ids in order.
    async fn append(&self, batch: Vec<NewEvent>) -> Result<Vec<Arc<Event>>, LogError>;

    /// Reads matching events after a position, up to a bound.
    async fn read(&self, request: ReadRequest<'_>) -> Result<ReadPage, LogError>;

    /// Drops what retention no longer keeps (age limits need a clock tick
    /// even when nothing is appended).
    async fn enforce_retention(&self);

    fn stats(&self) -> LogStats;

    fn topics(&self) -> Vec<TopicStats>;

    /// Whether the log can take appends now.
    fn is_healthy(&self) -> bool {
        true
    }
}
