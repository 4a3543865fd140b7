//! History: the ordered log of events, behind one trait.
//!
//! The log is the source of truth. It assigns each event its id; an event
//! exists once `append` has returned it. Replay and live delivery read the
//! same ordered sequence, which is what makes the seam between them exact.
//! Backends: [`memory::MemoryLog`], [`disk::DiskLog`] and
//! [`redis::RedisLog`], which several nodes share (it delivers every node's
//! events through its [`Feed`]).

pub mod disk;
pub mod idempotency;
pub mod memory;
pub mod redis;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use chrono::{DateTime, Utc};

use crate::event::{Event, EventId, NewEvent};
use crate::topic::{Pattern, TopicFilter};
pub use idempotency::Appended;

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

impl Retention {
    /// Whether history holding `count` events of `bytes`, the oldest from
    /// `oldest`, is beyond these limits at `now`.
    pub fn exceeded(
        &self,
        count: usize,
        bytes: u64,
        oldest: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> bool {
        let age = now
            .signed_duration_since(oldest)
            .to_std()
            .unwrap_or_default();
        count > self.max_events || bytes > self.max_bytes || age > self.max_age
    }
}

/// Retention for the whole log, and for topics matching a pattern: each
/// such topic on its own keeps at most its limits (the first matching rule
/// applies), and the global limits apply on top.
#[derive(Debug, Clone)]
pub struct RetentionRules {
    pub global: Retention,
    pub topics: Vec<(Pattern, Retention)>,
}

impl RetentionRules {
    pub fn global(global: Retention) -> Self {
        RetentionRules {
            global,
            topics: Vec::new(),
        }
    }

    /// The index of the rule that governs `topic`.
    fn rule_for(&self, topic: &str) -> Option<usize> {
        self.topics.iter().position(|(p, _)| p.matches(topic))
    }
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

/// Per-topic counts of what history holds, for `/topics`, for finding the
/// topics a pattern can match, and for per-topic retention.
#[derive(Debug, Default)]
pub struct TopicTable {
    topics: HashMap<Box<str>, TopicEntry>,
    /// For topics whose own rule removed events: the highest id removed,
    /// while it is above the log's global mark (below it, the global mark
    /// says as much).
    lost: HashMap<Box<str>, EventId>,
}

#[derive(Debug)]
struct TopicEntry {
    retained: usize,
    bytes: u64,
    last_id: EventId,
    /// The retention rule that governs the topic (an index into
    /// [`RetentionRules::topics`]), found once.
    rule: Option<usize>,
}

impl TopicTable {
    pub fn added(&mut self, topic: &str, id: EventId, size: u64, rules: &RetentionRules) {
        let entry = match self.topics.get_mut(topic) {
            Some(entry) => entry,
            None => self
                .topics
                .entry(topic.into())
                .or_insert_with(|| TopicEntry {
                    retained: 0,
                    bytes: 0,
                    last_id: id,
                    rule: rules.rule_for(topic),
                }),
        };
        entry.retained += 1;
        entry.bytes += size;
        entry.last_id = entry.last_id.max(id);
    }

    /// An event left history under the global limits.
    pub fn removed(&mut self, topic: &str, size: u64) {
        if let Some(entry) = self.topics.get_mut(topic) {
            entry.retained -= 1;
            entry.bytes -= size;
            if entry.retained == 0 {
                self.topics.remove(topic);
            }
        }
    }

    /// An event left history under its topic's own rule: readers of the
    /// topic positioned before it have missed events.
    pub fn removed_by_rule(&mut self, topic: &str, id: EventId, size: u64) {
        self.removed(topic, size);
        self.set_lost(topic, id);
    }

    /// Records that the topic's events up to `id` were removed by its rule.
    pub fn set_lost(&mut self, topic: &str, id: EventId) {
        let mark = self.lost.entry(topic.into()).or_insert(id);
        *mark = (*mark).max(id);
    }

    /// The rule's limits for `topic` with the topic's count and bytes, when
    /// a rule governs it.
    pub fn rule_usage(
        &self,
        topic: &str,
        rules: &RetentionRules,
    ) -> Option<(Retention, usize, u64)> {
        let entry = self.topics.get(topic)?;
        let (_, limits) = rules.topics.get(entry.rule?)?;
        Some((*limits, entry.retained, entry.bytes))
    }

    /// The topics that a retention rule governs.
    pub fn ruled(&self) -> Vec<Box<str>> {
        self.topics
            .iter()
            .filter(|(_, entry)| entry.rule.is_some())
            .map(|(topic, _)| topic.clone())
            .collect()
    }

    /// The highest id removed from `topic`: its own mark, or the global one.
    pub fn topic_lost_through(&self, topic: &str, global: EventId) -> EventId {
        self.lost
            .get(topic)
            .map_or(global, |mark| global.max(*mark))
    }

    /// The highest id that a reader of `filter` may have missed: the global
    /// mark, or a topic's own mark above it.
    pub fn lost_through(&self, filter: &TopicFilter, global: EventId) -> EventId {
        self.lost
            .iter()
            .filter(|(topic, _)| filter.matches(topic))
            .map(|(_, id)| *id)
            .fold(global, EventId::max)
    }

    /// Forgets the topic marks that the global mark has overtaken; returns
    /// their topics, so that a backend can delete its copies.
    pub fn prune_lost(&mut self, global: EventId) -> Vec<Box<str>> {
        let gone: Vec<Box<str>> = self
            .lost
            .iter()
            .filter(|(_, id)| **id <= global)
            .map(|(topic, _)| topic.clone())
            .collect();
        for topic in &gone {
            self.lost.remove(topic);
        }
        gone
    }

    /// The topics with events that `filter` matches.
    pub fn matching<'a>(&'a self, filter: &'a TopicFilter) -> impl Iterator<Item = &'a str> {
        self.topics
            .keys()
            .map(|t| &**t)
            .filter(|t| filter.matches(t))
    }

    pub fn len(&self) -> usize {
        self.topics.len()
    }

    pub fn is_empty(&self) -> bool {
        self.topics.is_empty()
    }

    pub fn stats(&self) -> Vec<TopicStats> {
        self.topics
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
    /// An event whose idempotency key was used within the window is not
    /// stored again: its outcome is the first publish's id.
    async fn append(&self, batch: Vec<NewEvent>) -> Result<Vec<Appended>, LogError>;

    /// Reads matching events after a position, up to a bound.
    async fn read(&self, request: ReadRequest<'_>) -> Result<ReadPage, LogError>;

    /// Drops what retention no longer keeps (age limits need a clock tick
    /// even when nothing is appended), and forgets expired idempotency keys.
    async fn enforce_retention(&self);

    fn stats(&self) -> LogStats;

    fn topics(&self) -> Vec<TopicStats>;

    /// Whether the log can take appends now.
    fn is_healthy(&self) -> bool {
        true
    }

    /// For a log that several nodes share: every committed event of every
    /// node, in id order, read once by this node whatever its number of
    /// subscribers. The hub dispatches these to its subscribers, and its
    /// writer then dispatches nothing itself (its own appends come back
    /// through the feed like anyone's). Called once, at start. A local log
    /// returns `None`: what its writer appends is all there is.
    fn feed(&self) -> Option<Feed> {
        None
    }
}

/// The events of a shared log, as one node reads them.
pub struct Feed {
    /// The last event before the first batch: the node's subscribers get
    /// every later event from the feed, and replay up to it from the log.
    pub after: EventId,
    pub batches: tokio::sync::mpsc::Receiver<FeedBatch>,
}

/// The next events of a [`Feed`], in id order.
pub struct FeedBatch {
    /// Set when retention removed events before this node read them: the
    /// subscribers that may have wanted them must resume through a replay,
    /// which reports the gap.
    pub missed: Option<Missed>,
    pub events: Vec<Arc<Event>>,
}

/// Whose events a feed missed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Missed {
    /// Any topic's (the global limits removed them).
    Any,
    /// These topics' (their own rules removed them).
    Topics(Vec<Box<str>>),
}

impl Missed {
    /// Whether a subscriber of `filter` may have missed events: never one
    /// with no topics (a WebSocket's before its first `subscribe`).
    pub fn affects(&self, filter: &TopicFilter) -> bool {
        match self {
            Missed::Any => !filter.is_empty(),
            Missed::Topics(topics) => topics.iter().any(|topic| filter.matches(topic)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missed_events_affect_the_subscribers_of_their_topics_only() {
        let filter = |topics: &[&str]| TopicFilter::parse(topics.iter().copied(), 10).unwrap();
        let some = Missed::Topics(vec!["a/1".into()]);
        assert!(some.affects(&filter(&["a/*"])));
        assert!(!some.affects(&filter(&["b"])));
        assert!(Missed::Any.affects(&filter(&["b"])));
        let none = TopicFilter::default();
        assert!(
            !Missed::Any.affects(&none),
            "a WebSocket with no topics missed nothing: it is not cut off"
        );
        assert!(!some.affects(&none));
    }
}
