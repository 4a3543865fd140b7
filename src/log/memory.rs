//! In-memory history: a ring of the most recent events, bounded by count,
//! bytes and age, globally and per topic. Lost at exit, but ids stay unique
//! across restarts because they start from the clock (see
//! [`crate::event::EventId`]), and any id from before the start is reported
//! as a gap.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use parking_lot::Mutex;

use super::idempotency::{IdempotencyKeys, Plan};
use super::{
    Appended, EventLog, LogError, LogStats, ReadPage, ReadRequest, RetentionRules, TopicStats,
    TopicTable, gap_after,
};
use crate::event::{Event, EventId, IdGenerator, NewEvent, now_ms};

/// Most events one read examines, so that a read for a rare topic holds the
/// lock only briefly; the caller continues from the returned cursor.
const SCAN_LIMIT: usize = 4096;
/// Removed events in the ring from which it is compacted.
const COMPACT_AT: usize = 1024;

pub struct MemoryLog {
    inner: Mutex<Inner>,
    rules: RetentionRules,
}

struct Inner {
    events: VecDeque<Arc<Event>>,
    /// Events that a topic's own rule removed from the middle of `events`:
    /// reads skip them, and they leave `events` when they reach its front.
    removed: HashSet<EventId>,
    /// The retained events of each topic that a rule governs, oldest first.
    ruled: HashMap<Box<str>, VecDeque<Arc<Event>>>,
    ids: IdGenerator,
    /// The highest id that may have been issued and is no longer held:
    /// everything issued after it is still here. A reader positioned below it
    /// has missed events.
    lost_through: EventId,
    topics: TopicTable,
    /// Sum of `Event::approx_size` of the events held.
    bytes: u64,
    keys: IdempotencyKeys,
}

impl MemoryLog {
    pub fn new(rules: RetentionRules, idempotency_window: Duration) -> Self {
        let (_, now) = now_ms();
        // Ids of an earlier run are all below the current millisecond: treat
        // them as issued and lost.
        let floor = EventId {
            ms: now.saturating_sub(1),
            seq: u64::MAX,
        };
        MemoryLog {
            inner: Mutex::new(Inner {
                events: VecDeque::new(),
                removed: HashSet::new(),
                ruled: HashMap::new(),
                ids: IdGenerator::above(floor),
                lost_through: floor,
                topics: TopicTable::default(),
                bytes: 0,
                keys: IdempotencyKeys::new(idempotency_window),
            }),
            rules,
        }
    }
}

impl Inner {
    fn retained(&self) -> usize {
        self.events.len() - self.removed.len()
    }

    fn add(&mut self, event: Arc<Event>, rules: &RetentionRules) {
        let size = event.approx_size() as u64;
        self.topics.added(&event.topic, event.id, size, rules);
        self.bytes += size;
        if self.topics.rule_usage(&event.topic, rules).is_some() {
            self.ruled
                .entry(event.topic.clone())
                .or_default()
                .push_back(event.clone());
        }
        self.events.push_back(event);
    }

    /// Removes the oldest event (under the global limits).
    fn evict_front(&mut self) {
        let Some(event) = self.events.pop_front() else {
            return;
        };
        self.lost_through = self.lost_through.max(event.id);
        if self.removed.remove(&event.id) {
            return; // its topic's rule removed it already
        }
        self.bytes -= event.approx_size() as u64;
        self.topics
            .removed(&event.topic, event.approx_size() as u64);
        if let Some(ruled) = self.ruled.get_mut(&event.topic) {
            ruled.pop_front();
            if ruled.is_empty() {
                self.ruled.remove(&event.topic);
            }
        }
    }

    /// Removes the oldest events of `topic` beyond its rule's limits.
    fn enforce_rule(&mut self, topic: &str, rules: &RetentionRules, now: DateTime<Utc>) {
        while let Some((limits, count, bytes)) = self.topics.rule_usage(topic, rules) {
            let Some(ruled) = self.ruled.get_mut(topic) else {
                break;
            };
            match ruled.front() {
                Some(oldest) if limits.exceeded(count, bytes, oldest.time, now) => {}
                _ => break,
            }
            let oldest = ruled.pop_front().expect("front exists");
            if ruled.is_empty() {
                self.ruled.remove(topic);
            }
            let size = oldest.approx_size() as u64;
            self.bytes -= size;
            self.topics.removed_by_rule(topic, oldest.id, size);
            self.removed.insert(oldest.id);
        }
        while self
            .events
            .front()
            .is_some_and(|e| self.removed.contains(&e.id))
        {
            self.evict_front();
        }
        // Removed events behind an older kept one stay in the ring until it
        // goes; once they are most of it, one pass drops them all (each
        // removal pays for its share of the pass).
        if self.removed.len() > COMPACT_AT && self.removed.len() * 2 > self.events.len() {
            let removed = std::mem::take(&mut self.removed);
            self.events.retain(|e| !removed.contains(&e.id));
        }
    }

    /// Applies the rules of `topics`, then the global limits to what
    /// remains (so that a rule's removals count toward them).
    fn enforce<'a>(
        &mut self,
        rules: &RetentionRules,
        topics: impl IntoIterator<Item = &'a str>,
        now: DateTime<Utc>,
    ) {
        for topic in topics {
            self.enforce_rule(topic, rules, now);
        }
        let global = rules.global;
        while let Some(oldest) = self.events.front() {
            if !global.exceeded(self.retained(), self.bytes, oldest.time, now) {
                break;
            }
            self.evict_front();
        }
        self.topics.prune_lost(self.lost_through);
    }

    /// Where a read after `after` starts, and whether events were lost there.
    fn start(&self, request: &ReadRequest<'_>) -> (usize, Option<super::Gap>) {
        let oldest = self.events.front().map(|e| e.id);
        let lost = self.topics.lost_through(request.filter, self.lost_through);
        let gap = gap_after(request.after, lost, self.ids.last(), oldest);
        match request.after {
            // Retained events are all above the lost mark: reading on from
            // the reader's own position skips nothing it could still get.
            Some(after) if after <= self.ids.last() => {
                (self.events.partition_point(|e| e.id <= after), gap)
            }
            _ => (0, gap),
        }
    }
}

#[async_trait]
impl EventLog for MemoryLog {
    async fn append(&self, batch: Vec<NewEvent>) -> Result<Vec<Appended>, LogError> {
        let (time, ms) = now_ms();
        let mut inner = self.inner.lock();
        let plan = Plan::new(batch, &inner.keys, &inner.ids, time, ms);
        let mut touched: Vec<Box<str>> = Vec::new();
        for event in plan.new_events() {
            inner.add(event.clone(), &self.rules);
            if inner.ruled.contains_key(&event.topic) && !touched.contains(&event.topic) {
                touched.push(event.topic.clone());
            }
        }
        let inner = &mut *inner;
        let appended = plan.commit(&mut inner.keys, &mut inner.ids);
        inner.enforce(&self.rules, touched.iter().map(|t| &**t), time);
        Ok(appended)
    }

    async fn read(&self, request: ReadRequest<'_>) -> Result<ReadPage, LogError> {
        let inner = self.inner.lock();
        let (start, gap) = inner.start(&request);
        let mut page = ReadPage {
            gap,
            done: true,
            ..ReadPage::default()
        };
        for (examined, event) in inner.events.range(start..).enumerate() {
            if request.until.is_some_and(|until| event.id > until) {
                return Ok(page);
            }
            if examined == SCAN_LIMIT || page.events.len() == request.limit {
                page.done = false;
                return Ok(page);
            }
            page.cursor = Some(event.id);
            if request.filter.matches(&event.topic) && !inner.removed.contains(&event.id) {
                page.events.push(event.clone());
            }
        }
        Ok(page)
    }

    async fn enforce_retention(&self) {
        let (now, ms) = now_ms();
        let mut inner = self.inner.lock();
        let ruled = inner.topics.ruled();
        inner.enforce(&self.rules, ruled.iter().map(|t| &**t), now);
        inner.keys.expire(ms);
    }

    fn stats(&self) -> LogStats {
        let inner = self.inner.lock();
        LogStats {
            retained: inner.retained(),
            bytes: inner.bytes,
            oldest: inner
                .events
                .iter()
                .find(|e| !inner.removed.contains(&e.id))
                .map(|e| e.id),
            head: inner.ids.last(),
        }
    }

    fn topics(&self) -> Vec<TopicStats> {
        self.inner.lock().topics.stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::{Gap, Retention};
    use crate::topic::TopicFilter;
    use serde_json::value::RawValue;

    fn new(topic: &str) -> NewEvent {
        NewEvent {
            topic: topic.into(),
            kind: None,
            data: RawValue::from_string("1".into()).unwrap(),
            key: None,
        }
    }

    fn log(max_events: usize) -> MemoryLog {
        MemoryLog::new(
            RetentionRules::global(Retention {
                max_events,
                max_age: Duration::from_secs(3600),
                max_bytes: u64::MAX,
            }),
            Duration::from_secs(600),
        )
    }

    async fn read_all(log: &MemoryLog, after: Option<EventId>, topics: &[&str]) -> ReadPage {
        let filter = TopicFilter::parse(topics.iter().copied(), 10).unwrap();
        log.read(ReadRequest {
            after,
            until: None,
            filter: &filter,
            limit: 1000,
        })
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn ids_increase_and_reads_resume_after_an_id() {
        let log = log(100);
        let evs = log
            .append(vec![new("a"), new("b"), new("a")])
            .await
            .unwrap();
        assert!(evs[0].id() < evs[1].id() && evs[1].id() < evs[2].id());
        let page = read_all(&log, Some(evs[0].id()), &["a"]).await;
        assert_eq!(page.gap, None);
        assert_eq!(page.events.len(), 1);
        assert_eq!(page.events[0].id, evs[2].id());
        assert!(page.done);
    }

    #[tokio::test]
    async fn evicted_positions_are_gaps() {
        let log = log(2);
        let evs = log
            .append(vec![new("a"), new("a"), new("a")])
            .await
            .unwrap();
        // evs[0] was evicted, but the client holding it missed nothing.
        assert_eq!(read_all(&log, Some(evs[0].id()), &["a"]).await.gap, None);
        let before_first = EventId {
            ms: evs[0].id().ms,
            seq: evs[0].id().seq.wrapping_sub(1),
        };
        let page = read_all(&log, Some(before_first), &["a"]).await;
        assert_eq!(
            page.gap,
            Some(Gap {
                oldest: Some(evs[1].id())
            })
        );
        assert_eq!(page.events.len(), 2);
    }

    #[tokio::test]
    async fn ids_from_before_the_start_or_never_issued_are_gaps() {
        let log = log(10);
        let old = EventId { ms: 1, seq: 0 };
        assert_eq!(
            read_all(&log, Some(old), &["a"]).await.gap,
            Some(Gap { oldest: None })
        );
        let ev = log.append(vec![new("a")]).await.unwrap();
        let future = EventId {
            ms: ev[0].id().ms + 1_000_000,
            seq: 0,
        };
        assert!(read_all(&log, Some(future), &["a"]).await.gap.is_some());
    }

    #[tokio::test]
    async fn reads_stop_at_until_and_respect_limit() {
        let log = log(100);
        let evs = log
            .append((0..10).map(|_| new("a")).collect())
            .await
            .unwrap();
        let filter = TopicFilter::parse(["a"], 1).unwrap();
        let page = log
            .read(ReadRequest {
                after: None,
                until: Some(evs[4].id()),
                filter: &filter,
                limit: 3,
            })
            .await
            .unwrap();
        assert_eq!(page.events.len(), 3);
        assert!(!page.done);
        let page = log
            .read(ReadRequest {
                after: page.cursor,
                until: Some(evs[4].id()),
                filter: &filter,
                limit: 3,
            })
            .await
            .unwrap();
        assert_eq!(
            page.events.iter().map(|e| e.id).collect::<Vec<_>>(),
            [evs[3].id(), evs[4].id()]
        );
        assert!(page.done);
    }

    #[tokio::test]
    async fn bytes_bound_history_too() {
        let log = MemoryLog::new(
            RetentionRules::global(Retention {
                max_events: 1000,
                max_age: Duration::from_secs(3600),
                max_bytes: 3 * 66,
            }),
            Duration::from_secs(600),
        );
        // Each event is 1 topic byte + 1 data byte + 64 of overhead.
        let evs = log
            .append((0..5).map(|_| new("a")).collect())
            .await
            .unwrap();
        assert_eq!(log.stats().retained, 3);
        assert_eq!(log.stats().oldest, Some(evs[2].id()));
    }

    #[tokio::test]
    async fn topic_stats_follow_retention() {
        let log = log(2);
        log.append(vec![new("a"), new("b"), new("b")])
            .await
            .unwrap();
        let mut topics = log.topics();
        topics.sort_by(|x, y| x.name.cmp(&y.name));
        assert_eq!(topics.len(), 1, "a was evicted entirely");
        assert_eq!(&*topics[0].name, "b");
        assert_eq!(topics[0].retained, 2);
    }

    /// A rule that keeps 2 events of `chatty` while `quiet`'s one old event
    /// holds the front of the ring.
    fn chatty_rule() -> MemoryLog {
        let rules = RetentionRules {
            global: Retention {
                max_events: 100_000,
                max_age: Duration::from_secs(3600),
                max_bytes: u64::MAX,
            },
            topics: vec![(
                crate::topic::Pattern::parse("chatty").unwrap(),
                Retention {
                    max_events: 2,
                    max_age: Duration::MAX,
                    max_bytes: u64::MAX,
                },
            )],
        };
        MemoryLog::new(rules, Duration::from_secs(600))
    }

    #[tokio::test]
    async fn a_topic_rule_removes_from_the_middle_and_the_ring_stays_bounded() {
        let log = chatty_rule();
        let quiet = log.append(vec![new("quiet")]).await.unwrap();
        let mut last = Vec::new();
        for _ in 0..5000 {
            last = log.append(vec![new("chatty")]).await.unwrap();
        }
        assert_eq!(log.stats().retained, 3);
        assert_eq!(log.stats().oldest, Some(quiet[0].id()));
        assert!(
            log.inner.lock().events.len() <= 2 * COMPACT_AT + 3,
            "removed events are compacted away"
        );
        let page = read_all(&log, None, &["chatty", "quiet"]).await;
        assert_eq!(page.events.len(), 3);
        assert_eq!(page.events[2].id, last[0].id());
        // The quiet topic's reader missed nothing; chatty's did.
        assert_eq!(
            read_all(&log, Some(quiet[0].id()), &["quiet"]).await.gap,
            None
        );
        assert!(
            read_all(&log, Some(quiet[0].id()), &["chatty"])
                .await
                .gap
                .is_some()
        );
    }
}
