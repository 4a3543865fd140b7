//! Reading history by pages, for polling clients (`GET /history`): no
//! subscription, no live part, just what the log holds after a position.

use std::sync::Arc;

use super::Hub;
use crate::event::{Event, EventId};
use crate::log::{EventLog, Gap, LogError, ReadRequest};
use crate::topic::TopicFilter;

/// One page of history for a polling client.
#[derive(Debug, Default)]
pub struct HistoryPage {
    /// Set when history no longer reaches back to the requested position;
    /// `events` then start at the oldest retained.
    pub gap: Option<Gap>,
    /// Matching events, in id order.
    pub events: Vec<Arc<Event>>,
    /// Where the next page starts (pass it back as `after`), or `None` when
    /// the end of history was reached.
    pub next: Option<EventId>,
}

impl Hub {
    /// Up to `limit` events matching `filter` after `after` (`None`: from the
    /// oldest retained).
    pub async fn history(
        &self,
        filter: &TopicFilter,
        after: Option<EventId>,
        limit: usize,
    ) -> Result<HistoryPage, LogError> {
        read_history(&*self.log, filter, after, limit).await
    }
}

/// Reads log pages until `limit` events are collected or the log ends: a
/// page may stop early (a backend bounds how much one read examines), and
/// `next` must be exact either way.
pub(super) async fn read_history(
    log: &dyn EventLog,
    filter: &TopicFilter,
    after: Option<EventId>,
    limit: usize,
) -> Result<HistoryPage, LogError> {
    let mut out = HistoryPage::default();
    let mut cursor = after;
    let mut first = true;
    while out.events.len() < limit {
        let page = log
            .read(ReadRequest {
                after: cursor,
                until: None,
                filter,
                limit: limit - out.events.len(),
            })
            .await?;
        if page.gap.is_some() {
            if !first {
                // Retention overtook this read between two pages: stop before
                // the loss, so that the client's next request (after
                // `cursor`) is the one told about the gap.
                out.next = cursor;
                return Ok(out);
            }
            out.gap = page.gap;
        }
        first = false;
        out.events.extend(page.events);
        if page.done {
            return Ok(out);
        }
        match page.cursor {
            Some(next) => cursor = Some(next),
            // Nothing examined and not done: a read that makes no progress.
            // Hand back the position rather than spin.
            None => break,
        }
    }
    out.next = cursor;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use async_trait::async_trait;
    use chrono::Utc;
    use parking_lot::Mutex;
    use serde_json::value::RawValue;

    use super::*;
    use crate::event::NewEvent;
    use crate::log::{Appended, LogStats, ReadPage, TopicStats};

    fn event(seq: u64, topic: &str) -> Arc<Event> {
        let new = NewEvent {
            topic: topic.into(),
            kind: None,
            data: RawValue::from_string("1".into()).unwrap(),
            key: None,
        };
        Arc::new(Event::new(EventId { ms: 1, seq }, Utc::now(), new))
    }

    /// A log read the way the memory backend reads, with a small scan limit
    /// and ids up to `lost_through` already removed.
    struct VecLog {
        events: Vec<Arc<Event>>,
        scan: usize,
        lost_through: EventId,
    }

    impl VecLog {
        /// Events `first..` of `topics`, in order.
        fn new(first: u64, topics: &[&str], scan: usize) -> VecLog {
            VecLog {
                events: (first..)
                    .zip(topics)
                    .map(|(seq, topic)| event(seq, topic))
                    .collect(),
                scan,
                lost_through: EventId {
                    ms: 1,
                    seq: first.saturating_sub(1),
                },
            }
        }

        fn ids(&self, topic: &str) -> Vec<EventId> {
            let events = self.events.iter().filter(|e| &*e.topic == topic);
            events.map(|e| e.id).collect()
        }
    }

    #[async_trait]
    impl EventLog for VecLog {
        async fn append(&self, _: Vec<NewEvent>) -> Result<Vec<Appended>, LogError> {
            unreachable!()
        }
        async fn read(&self, request: ReadRequest<'_>) -> Result<ReadPage, LogError> {
            let mut page = ReadPage {
                done: true,
                ..ReadPage::default()
            };
            let start = match request.after {
                Some(after) if after < self.lost_through => {
                    page.gap = Some(Gap {
                        oldest: self.events.first().map(|e| e.id),
                    });
                    0
                }
                Some(after) => self.events.partition_point(|e| e.id <= after),
                None => 0,
            };
            for (examined, event) in self.events[start..].iter().enumerate() {
                if examined == self.scan || page.events.len() == request.limit {
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
        async fn enforce_retention(&self) {}
        fn stats(&self) -> LogStats {
            unreachable!()
        }
        fn topics(&self) -> Vec<TopicStats> {
            Vec::new()
        }
    }

    fn filter(topics: &[&str]) -> TopicFilter {
        TopicFilter::parse(topics.iter().copied(), 10).unwrap()
    }

    fn ids(page: &HistoryPage) -> Vec<EventId> {
        page.events.iter().map(|e| e.id).collect()
    }

    #[tokio::test]
    async fn pages_follow_each_other_and_the_last_has_no_next() {
        let log = VecLog::new(0, &["a"; 25], 1000);
        let all = log.ids("a");
        let f = filter(&["a"]);
        let p1 = read_history(&log, &f, None, 10).await.unwrap();
        assert_eq!(ids(&p1), all[..10]);
        assert_eq!(p1.next, Some(all[9]));
        let p2 = read_history(&log, &f, p1.next, 10).await.unwrap();
        assert_eq!(ids(&p2), all[10..20]);
        let p3 = read_history(&log, &f, p2.next, 10).await.unwrap();
        assert_eq!(ids(&p3), all[20..]);
        assert_eq!(p3.next, None);
        assert!(p1.gap.is_none() && p2.gap.is_none() && p3.gap.is_none());
    }

    #[tokio::test]
    async fn pages_that_stop_early_are_continued() {
        // Reads examine 4 events at most; the matches are far apart.
        let mut topics = vec!["noise"; 10];
        topics.extend(["a"; 3]);
        topics.extend(["noise"; 10]);
        topics.push("a");
        topics.extend(["noise"; 5]);
        let log = VecLog::new(0, &topics, 4);
        let wanted = log.ids("a");
        let f = filter(&["a"]);
        let page = read_history(&log, &f, None, 3).await.unwrap();
        assert_eq!(ids(&page), wanted[..3]);
        assert_eq!(page.next, Some(wanted[2]));
        let page = read_history(&log, &f, page.next, 3).await.unwrap();
        assert_eq!(ids(&page), wanted[3..]);
        assert_eq!(page.next, None);
        let page = read_history(&log, &f, None, 4).await.unwrap();
        assert_eq!(ids(&page), wanted);
        assert_eq!(page.next, Some(wanted[3]), "not known to be the end yet");
    }

    #[tokio::test]
    async fn a_lost_position_reports_the_gap_and_starts_at_the_oldest() {
        let log = VecLog::new(3, &["a"; 3], 1000);
        let kept = log.ids("a");
        let page = read_history(&log, &filter(&["a"]), Some(EventId { ms: 1, seq: 1 }), 2)
            .await
            .unwrap();
        assert_eq!(
            page.gap,
            Some(Gap {
                oldest: Some(kept[0])
            })
        );
        assert_eq!(ids(&page), kept[..2]);
        assert_eq!(page.next, Some(kept[1]));
    }

    /// A log that answers reads from a script.
    struct Scripted(Mutex<VecDeque<ReadPage>>);

    #[async_trait]
    impl EventLog for Scripted {
        async fn append(&self, _: Vec<NewEvent>) -> Result<Vec<Appended>, LogError> {
            unreachable!()
        }
        async fn read(&self, _: ReadRequest<'_>) -> Result<ReadPage, LogError> {
            Ok(self.0.lock().pop_front().expect("no more reads expected"))
        }
        async fn enforce_retention(&self) {}
        fn stats(&self) -> LogStats {
            unreachable!()
        }
        fn topics(&self) -> Vec<TopicStats> {
            Vec::new()
        }
    }

    #[tokio::test]
    async fn a_gap_on_a_later_page_ends_the_page_before_it() {
        let (a, b) = (event(0, "a"), event(1, "a"));
        let log = Scripted(Mutex::new(VecDeque::from([
            ReadPage {
                gap: None,
                events: vec![a.clone()],
                cursor: Some(a.id),
                done: false,
            },
            ReadPage {
                gap: Some(Gap { oldest: Some(b.id) }),
                events: vec![b.clone()],
                cursor: Some(b.id),
                done: true,
            },
        ])));
        let page = read_history(&log, &filter(&["a"]), None, 5).await.unwrap();
        assert_eq!(ids(&page), [a.id]);
        assert_eq!(page.gap, None);
        assert_eq!(page.next, Some(a.id), "the next request sees the gap");
    }

    #[tokio::test]
    async fn a_read_without_progress_does_not_spin() {
        let log = Scripted(Mutex::new(VecDeque::from([ReadPage {
            gap: None,
            events: Vec::new(),
            cursor: None,
            done: false,
        }])));
        let after = Some(EventId { ms: 1, seq: 0 });
        let page = read_history(&log, &filter(&["a"]), after, 5).await.unwrap();
        assert!(page.events.is_empty());
        assert_eq!(page.next, after);
    }
}
