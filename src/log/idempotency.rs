//! Idempotency keys: a publisher that retries a publish (after a timeout,
//! a dropped connection, a crash of its own) names it with a key, and the
//! log answers a repeat within the window with the original id instead of
//! storing the event twice.
//!
//! The check lives in the log, under the same lock as id assignment, so two
//! concurrent publishes with one key cannot both store; a backend that
//! persists events persists their keys in the same atomic write, so the
//! answer holds across a restart. A key's time is its event id's
//! millisecond (ids come from the clock), which orders keys for expiry
//! without storing a second timestamp.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use crate::event::{Event, EventId, IdGenerator, NewEvent};

/// Most keys remembered at once: beyond it the oldest are forgotten before
/// their window ends, so that a flood of keys cannot exhaust memory.
pub const MAX_KEYS: usize = 1_000_000;

/// The keys of the recent publishes, oldest first.
#[derive(Debug)]
pub struct IdempotencyKeys {
    window_ms: u64,
    by_key: HashMap<Arc<str>, EventId>,
    by_age: VecDeque<(EventId, Arc<str>)>,
}

impl IdempotencyKeys {
    pub fn new(window: Duration) -> Self {
        IdempotencyKeys {
            window_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX),
            by_key: HashMap::new(),
            by_age: VecDeque::new(),
        }
    }

    /// Whether a key with this id is past the window at `now_ms`.
    pub fn expired(&self, id: EventId, now_ms: u64) -> bool {
        id.ms.saturating_add(self.window_ms) < now_ms
    }

    /// The id first published under `key`, if that is within the window.
    pub fn get(&self, key: &str, now_ms: u64) -> Option<EventId> {
        let id = *self.by_key.get(key)?;
        (!self.expired(id, now_ms)).then_some(id)
    }

    /// Remembers a key; keys are inserted in id order.
    pub fn insert(&mut self, key: Arc<str>, id: EventId) {
        if let Some(old) = self.by_key.insert(key.clone(), id) {
            // An expired key used again: its old entry goes with the queue.
            self.by_age.retain(|(at, k)| !(*at == old && *k == key));
        }
        self.by_age.push_back((id, key));
    }

    /// Forgets the keys past the window (and the oldest beyond
    /// [`MAX_KEYS`]); returns them so that a backend can delete its copies.
    pub fn expire(&mut self, now_ms: u64) -> Vec<(EventId, Arc<str>)> {
        let mut gone = Vec::new();
        while let Some((id, _)) = self.by_age.front() {
            if !self.expired(*id, now_ms) && self.by_age.len() <= MAX_KEYS {
                break;
            }
            let (id, key) = self.by_age.pop_front().expect("front exists");
            self.by_key.remove(&key);
            gone.push((id, key));
        }
        gone
    }

    pub fn len(&self) -> usize {
        self.by_age.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_age.is_empty()
    }
}

/// What happened to one event of an append.
#[derive(Debug, Clone)]
pub enum Appended {
    /// Stored under a new id (and to be delivered).
    New(Arc<Event>),
    /// Its key was already used within the window: nothing was stored, and
    /// this is the id of the first publish.
    Duplicate(EventId),
}

impl Appended {
    pub fn id(&self) -> EventId {
        match self {
            Appended::New(event) => event.id,
            Appended::Duplicate(id) => *id,
        }
    }
}

/// An append planned but not yet committed: backends write `new` (and the
/// `keys`), then call [`Plan::commit`].
pub struct Plan {
    pub outcome: Vec<Appended>,
    /// The keys of the new events, to store with them.
    pub keys: Vec<(Arc<str>, EventId)>,
    /// The id generator after the batch, to keep once the write succeeded.
    pub ids: IdGenerator,
}

impl Plan {
    /// Assigns ids to a batch, in order, turning events whose key is known
    /// (already stored, or earlier in the same batch) into duplicates.
    pub fn new(
        batch: Vec<NewEvent>,
        keys: &IdempotencyKeys,
        ids: &IdGenerator,
        time: chrono::DateTime<chrono::Utc>,
        ms: u64,
    ) -> Plan {
        let mut ids = ids.clone();
        let mut plan_keys: Vec<(Arc<str>, EventId)> = Vec::new();
        let mut outcome = Vec::with_capacity(batch.len());
        for mut new in batch {
            let key = new.key.take();
            let known = key.as_deref().and_then(|key| {
                keys.get(key, ms).or_else(|| {
                    plan_keys
                        .iter()
                        .find(|(k, _)| **k == *key)
                        .map(|(_, id)| *id)
                })
            });
            if let Some(id) = known {
                outcome.push(Appended::Duplicate(id));
                continue;
            }
            let event = Event::new(ids.next(ms), time, new);
            if let Some(key) = key {
                plan_keys.push((key.into(), event.id));
            }
            outcome.push(Appended::New(Arc::new(event)));
        }
        Plan {
            outcome,
            keys: plan_keys,
            ids,
        }
    }

    /// The events that are new, in id order.
    pub fn new_events(&self) -> impl Iterator<Item = &Arc<Event>> {
        self.outcome.iter().filter_map(|a| match a {
            Appended::New(event) => Some(event),
            Appended::Duplicate(_) => None,
        })
    }

    /// Records what the committed write stored.
    pub fn commit(self, keys: &mut IdempotencyKeys, ids: &mut IdGenerator) -> Vec<Appended> {
        for (key, id) in self.keys {
            keys.insert(key, id);
        }
        *ids = self.ids;
        self.outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    fn new(key: Option<&str>) -> NewEvent {
        NewEvent {
            topic: "t".into(),
            kind: None,
            data: RawValue::from_string("1".into()).unwrap(),
            key: key.map(Into::into),
        }
    }

    #[test]
    fn a_known_key_is_a_duplicate_within_the_window_only() {
        let mut keys = IdempotencyKeys::new(Duration::from_millis(1000));
        let mut ids = IdGenerator::above(EventId { ms: 0, seq: 0 });
        let (time, ms) = (chrono::Utc::now(), 10_000);
        let plan = Plan::new(
            vec![new(Some("a")), new(None), new(Some("a")), new(Some("b"))],
            &keys,
            &ids,
            time,
            ms,
        );
        assert_eq!(plan.new_events().count(), 3);
        let out = plan.commit(&mut keys, &mut ids);
        assert!(matches!(out[2], Appended::Duplicate(id) if id == out[0].id()));
        assert_eq!(keys.len(), 2);

        let again = Plan::new(vec![new(Some("b"))], &keys, &ids, time, ms + 1000);
        assert!(matches!(again.outcome[0], Appended::Duplicate(id) if id == out[3].id()));
        let later = Plan::new(vec![new(Some("b"))], &keys, &ids, time, ms + 1001);
        assert!(matches!(later.outcome[0], Appended::New(_)), "window over");

        assert_eq!(keys.expire(ms + 1001).len(), 2);
        assert!(keys.is_empty());
    }

    #[test]
    fn a_key_used_again_after_expiry_is_kept_once() {
        let mut keys = IdempotencyKeys::new(Duration::from_millis(10));
        keys.insert("k".into(), EventId { ms: 1, seq: 0 });
        keys.insert("k".into(), EventId { ms: 50, seq: 0 });
        assert_eq!(keys.len(), 1);
        assert_eq!(keys.get("k", 55), Some(EventId { ms: 50, seq: 0 }));
    }
}
