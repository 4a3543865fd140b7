//! History: the ordered log of events, behind one trait.
//!
//! The log is the source of truth. It assigns each event its id; an event
//! exists once `append` has returned it. Replay and live delivery read the
//! same ordered sequence, which is what makes the seam between them exact.
//! Backends: [`memory::MemoryLog`] and [`disk::DiskLog`] (Redis Streams is
//! to come as a further implementation of [`EventLog`]).

pub mod disk;
pub mod memory;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::event::{Event, EventId, NewEvent};
use crate::topic::TopicFilter;

/// What history keeps: events beyond any of these limits are removed,
/// oldest first.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub max_events: usize,
    pub max_age: Duration,
    /// Total size of the events kept (topic, type and data bytes, plus a
    /// fixed overhead per event).
    pub max_bytes: u64,
}

/// Whether a reader positioned after `after` has missed events: either
/// some event after it was removed (`after` is below `lost_through`, the
/// highest id that may have been issued and is no longer held), or the id
/// was never issued here (it is above the last one issued).
pub fn gap_after(
    after: Option<EventId>,
    lost_through: EventId,
    last_issued: EventId,
    oldest: Option<EventId>,
) -> Option<Gap> {
    let after = after?;
    (after < lost_through || after > last_issued).then_some(Gap { oldest })
}

/// Per-topic counts of what history holds, for `/topics` and for finding
/// the topics a pattern can match.
#[derive(Debug, Default)]
pub struct TopicTable(HashMap<Box<str>, TopicEntry>);

#[derive(Debug)]
struct TopicEntry {
    retained: usize,
    last_id: EventId,
}

impl TopicTable {
    pub fn added(&mut self, topic: &str, id: EventId) {
        match self.0.get_mut(topic) {
            Some(entry) => {
                entry.retained += 1;
                entry.last_id = entry.last_id.max(id);
            }
            None => {
                self.0.insert(
                    topic.into(),
                    TopicEntry {
                        retained: 1,
                        last_id: id,
                    },
                );
            }
        }
    }

    pub fn removed(&mut self, topic: &str) {
        if let Some(entry) = self.0.get_mut(topic) {
            entry.retained -= 1;
            if entry.retained == 0 {
                self.0.remove(topic);
            }
        }
    }

    /// The topics with events that `filter` matches.
    pub fn matching<'a>(&'a self, filter: &'a TopicFilter) -> impl Iterator<Item = &'a str> {
        self.0.keys().map(|t| &**t).filter(|t| filter.matches(t))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn stats(&self) -> Vec<TopicStats> {
        self.0
            .iter()
            .map(|(name, t)| TopicStats {
                name: name.clone(),
                last_id: t.last_id,
                retained: t.retained,
            })
            .collect()
    }
}

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
    /// The retained events' size, as `history_max_bytes` counts it.
    pub bytes: u64,
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
