//! In-memory history: a ring of the most recent events, bounded by count and
//! age. Lost at exit, but ids stay unique across restarts because they start
//! from the clock (see [`crate::event::EventId`]), and any id from before the
//! start is reported as a gap.

use std::collections::VecDeque;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use parking_lot::Mutex;

use super::{
    EventLog, LogError, LogStats, ReadPage, ReadRequest, Retention, TopicStats, TopicTable,
    gap_after,
};
use crate::event::{Event, EventId, IdGenerator, NewEvent, now_ms};

/// Most events one read examines, so that a read for a rare topic holds the
/// lock only briefly; the caller continues from the returned cursor.
const SCAN_LIMIT: usize = 4096;

pub struct MemoryLog {
    inner: Mutex<Inner>,
    retention: Retention,
}

struct Inner {
    events: VecDeque<Arc<Event>>,
    ids: IdGenerator,
    /// The highest id that may have been issued and is no longer held:
    /// everything issued after it is still here. A reader positioned below it
    /// has missed events.
    lost_through: EventId,
    topics: TopicTable,
    /// Sum of `Event::approx_size` of the events held.
    bytes: u64,
}

impl MemoryLog {
    pub fn new(retention: Retention) -> Self {
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
                ids: IdGenerator::above(floor),
                lost_through: floor,
                topics: TopicTable::default(),
                bytes: 0,
            }),
            retention,
        }
    }
}

impl Inner {
    fn evict_front(&mut self) {
        let Some(event) = self.events.pop_front() else {
            return;
        };
        self.lost_through = self.lost_through.max(event.id);
        self.bytes -= event.approx_size() as u64;
        self.topics.removed(&event.topic);
    }

    fn enforce(&mut self, retention: Retention, now: DateTime<Utc>) {
        while self.events.len() > retention.max_events || self.bytes > retention.max_bytes {
            self.evict_front();
        }
        let max_age =
            chrono::Duration::from_std(retention.max_age).unwrap_or(chrono::Duration::MAX);
        while self
            .events
            .front()
            .is_some_and(|e| now.signed_duration_since(e.time) > max_age)
        {
            self.evict_front();
        }
    }

    /// Where a read after `after` starts, and whether events were lost there.
    fn start(&self, after: Option<EventId>) -> (usize, Option<super::Gap>) {
        let oldest = self.events.front().map(|e| e.id);
        match (
            after,
            gap_after(after, self.lost_through, self.ids.last(), oldest),
        ) {
            (Some(after), None) => (self.events.partition_point(|e| e.id <= after), None),
            (_, gap) => (0, gap),
        }
    }
}

#[async_trait]
impl EventLog for MemoryLog {
    async fn append(&self, batch: Vec<NewEvent>) -> Result<Vec<Arc<Event>>, LogError> {
        let (time, ms) = now_ms();
        let mut inner = self.inner.lock();
        let mut appended = Vec::with_capacity(batch.len());
        for new in batch {
            let id = inner.ids.next(ms);
            let event = Arc::new(Event::new(id, time, new));
            inner.topics.added(&event.topic, id);
            inner.bytes += event.approx_size() as u64;
            inner.events.push_back(event.clone());
            appended.push(event);
        }
        inner.enforce(self.retention, time);
        Ok(appended)
    }

    async fn read(&self, request: ReadRequest<'_>) -> Result<ReadPage, LogError> {
        let inner = self.inner.lock();
        let (start, gap) = inner.start(request.after);
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
            if request.filter.matches(&event.topic) {
                page.events.push(event.clone());
            }
        }
        Ok(page)
    }

    async fn enforce_retention(&self) {
        let (now, _) = now_ms();
        self.inner.lock().enforce(self.retention, now);
    }

    fn stats(&self) -> LogStats {
        let inner = self.inner.lock();
        LogStats {
            retained: inner.events.len(),
            bytes: inner.bytes,
            oldest: inner.events.front().map(|e| e.id),
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
    use crate::log::Gap;
    use crate::topic::TopicFilter;
    use serde_json::value::RawValue;

    fn new(topic: &str) -> NewEvent {
        NewEvent {
            topic: topic.into(),
            kind: None,
            data: RawValue::from_string("1".into()).unwrap(),
        }
    }

    fn log(max_events: usize) -> MemoryLog {
        MemoryLog::new(Retention {
            max_events,
            max_age: std::time::Duration::from_secs(3600),
            max_bytes: u64::MAX,
        })
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
        assert!(evs[0].id < evs[1].id && evs[1].id < evs[2].id);
        let page = read_all(&log, Some(evs[0].id), &["a"]).await;
        assert_eq!(page.gap, None);
        assert_eq!(page.events.len(), 1);
        assert_eq!(page.events[0].id, evs[2].id);
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
        assert_eq!(read_all(&log, Some(evs[0].id), &["a"]).await.gap, None);
        let before_first = EventId {
            ms: evs[0].id.ms,
            seq: evs[0].id.seq.wrapping_sub(1),
        };
        let page = read_all(&log, Some(before_first), &["a"]).await;
        assert_eq!(
            page.gap,
            Some(Gap {
                oldest: Some(evs[1].id)
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
            ms: ev[0].id.ms + 1_000_000,
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
                until: Some(evs[4].id),
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
                until: Some(evs[4].id),
                filter: &filter,
                limit: 3,
            })
            .await
            .unwrap();
        assert_eq!(
            page.events.iter().map(|e| e.id).collect::<Vec<_>>(),
            [evs[3].id, evs[4].id]
        );
        assert!(page.done);
    }

    #[tokio::test]
    async fn bytes_bound_history_too() {
        let log = MemoryLog::new(Retention {
            max_events: 1000,
            max_age: std::time::Duration::from_secs(3600),
            max_bytes: 3 * 66,
        });
        // Each event is 1 topic byte + 1 data byte + 64 of overhead.
        let evs = log
            .append((0..5).map(|_| new("a")).collect())
            .await
            .unwrap();
        assert_eq!(log.stats().retained, 3);
        assert_eq!(log.stats().oldest, Some(evs[2].id));
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
}
