//! History on disk, in an embedded fjall database (an LSM tree with a
//! checksummed write-ahead journal), so that a restart, even `kill -9`,
//! loses no acknowledged event.
//!
//! Layout, one keyspace each:
//! - `events`: id (16 bytes, big-endian `ms` then `seq`, so keys sort as
//!   ids do) → the event record (see [`encode`]);
//! - `by_topic`: topic, a 0 byte, id → nothing: an index that makes the
//!   replay of a topic cost in proportion to that topic's events;
//! - `meta`: the format version, the last id issued and the highest id
//!   removed, so that ids continue upward and gaps are known after a
//!   restart.
//!
//! Every append is one atomic write batch: the events, their index
//! entries, the new last id, and whatever retention removes. With
//! `fsync = interval` the batch is written to the OS (which survives the
//! process crashing) before the publish is acknowledged, and a thread
//! syncs the journal to disk every `fsync_interval`; with `fsync = always`
//! the batch is synced before the acknowledgement. The single writer
//! (`hub::writer`) hands all waiting publishes to one append, so concurrent
//! publishers share one sync.

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use parking_lot::Mutex;
use serde_json::value::RawValue;

use super::{
    EventLog, LogError, LogStats, ReadPage, ReadRequest, Retention, TopicStats, TopicTable,
    gap_after,
};
use crate::config::Fsync;
use crate::event::{Event, EventId, IdGenerator, NewEvent, now_ms};
use crate::topic::TopicFilter;

/// The on-disk format this code reads and writes.
const FORMAT: &[u8] = b"sluice-disk-1";
const META_FORMAT: &[u8] = b"format";
const META_LAST_ID: &[u8] = b"last_id";
const META_LOST_THROUGH: &[u8] = b"lost_through";

/// Most events one read examines in a full scan (a pattern that matches
/// many topics); the caller continues from the cursor.
const SCAN_LIMIT: usize = 4096;
/// Up to this many matching topics, a read merges their index ranges
/// instead of scanning every event.
const INDEX_TOPICS: usize = 64;
/// Most events one retention pass removes, so that it never holds the log
/// for long; the next append or tick goes on.
const EVICT_LIMIT: usize = 4096;

/// How to open the disk log.
#[derive(Debug, Clone)]
pub struct DiskOptions {
    pub dir: PathBuf,
    pub fsync: Fsync,
    pub fsync_interval: Duration,
    pub retention: Retention,
}

pub struct DiskLog {
    shared: Arc<Shared>,
}

struct Shared {
    db: Database,
    events: Keyspace,
    by_topic: Keyspace,
    meta: Keyspace,
    persist: PersistMode,
    retention: Retention,
    state: Mutex<State>,
    /// False after a write or sync failed: `/health` reports degraded.
    healthy: AtomicBool,
}

/// What is known about the log without reading it: kept in step with every
/// committed batch, rebuilt by a scan at start-up.
struct State {
    ids: IdGenerator,
    lost_through: EventId,
    count: usize,
    bytes: u64,
    topics: TopicTable,
}

fn id_key(id: EventId) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&id.ms.to_be_bytes());
    key[8..].copy_from_slice(&id.seq.to_be_bytes());
    key
}

fn key_id(key: &[u8]) -> Option<EventId> {
    let ms = u64::from_be_bytes(key.get(..8)?.try_into().ok()?);
    let seq = u64::from_be_bytes(key.get(8..16)?.try_into().ok()?);
    Some(EventId { ms, seq })
}

fn topic_key(topic: &str, id: EventId) -> Vec<u8> {
    let mut key = Vec::with_capacity(topic.len() + 17);
    key.extend_from_slice(topic.as_bytes());
    key.push(0);
    key.extend_from_slice(&id_key(id));
    key
}

/// An event record: version 1, time in ms, topic, type (empty for none),
/// then the data's JSON text.
fn encode(event: &Event) -> Vec<u8> {
    let kind = event.kind.as_deref().unwrap_or("");
    let data = event.data.get();
    let mut out = Vec::with_capacity(13 + event.topic.len() + kind.len() + data.len());
    out.push(1);
    out.extend_from_slice(&event.time.timestamp_millis().to_be_bytes());
    out.extend_from_slice(&(event.topic.len() as u16).to_be_bytes());
    out.extend_from_slice(event.topic.as_bytes());
    out.extend_from_slice(&(kind.len() as u16).to_be_bytes());
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(data.as_bytes());
    out
}

/// Reads a record's fields in order.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn text(&mut self) -> Option<&'a str> {
        let len = u16::from_be_bytes(self.bytes(2)?.try_into().ok()?) as usize;
        std::str::from_utf8(self.bytes(len)?).ok()
    }
}

fn decode(id: EventId, record: &[u8]) -> Result<Event, String> {
    let mut fields = Fields(record);
    let parsed = (|| {
        if fields.bytes(1)? != [1] {
            return None;
        }
        let time = i64::from_be_bytes(fields.bytes(8)?.try_into().ok()?);
        let time = DateTime::<Utc>::from_timestamp_millis(time)?;
        let topic = fields.text()?;
        let kind = fields.text()?;
        let data = RawValue::from_string(std::str::from_utf8(fields.0).ok()?.to_owned()).ok()?;
        Some((time, topic, kind, data))
    })();
    let (time, topic, kind, data) =
        parsed.ok_or_else(|| format!("event {id}: unreadable record"))?;
    Ok(Event::new(
        id,
        time,
        NewEvent {
            topic: topic.to_owned(),
            kind: (!kind.is_empty()).then(|| kind.to_owned()),
            data,
        },
    ))
}

fn unavailable(error: impl std::fmt::Display) -> LogError {
    LogError::Unavailable(error.to_string())
}

impl DiskLog {
    /// Opens (or creates) the log in `options.dir`. Refuses, with a reason,
    /// a directory that another process holds, that is in another format,
    /// or that cannot be read: never a silent empty start.
    pub fn open(options: DiskOptions) -> anyhow::Result<DiskLog> {
        let dir = &options.dir;
        std::fs::create_dir_all(dir).map_err(|e| {
            anyhow::anyhow!("cannot create the data directory {}: {e}", dir.display())
        })?;
        let db = Database::builder(dir).open().map_err(|e| match e {
            fjall::Error::Locked => anyhow::anyhow!(
                "the data directory {} is in use by another running sluice",
                dir.display()
            ),
            other => anyhow::anyhow!("cannot open the data directory {}: {other}", dir.display()),
        })?;
        let open = |name: &str| {
            db.keyspace(name, KeyspaceCreateOptions::default)
                .map_err(|e| anyhow::anyhow!("cannot open {name} in {}: {e}", dir.display()))
        };
        let (events, by_topic, meta) = (open("events")?, open("by_topic")?, open("meta")?);
        let state = load_state(dir, &db, &events, &meta)?;
        let shared = Arc::new(Shared {
            persist: match options.fsync {
                Fsync::Always => PersistMode::SyncAll,
                Fsync::Interval => PersistMode::Buffer,
            },
            retention: options.retention,
            state: Mutex::new(state),
            healthy: AtomicBool::new(true),
            db,
            events,
            by_topic,
            meta,
        });
        if options.fsync == Fsync::Interval {
            spawn_syncer(Arc::downgrade(&shared), options.fsync_interval);
        }
        tracing::info!(
            dir = %dir.display(),
            events = shared.state.lock().count,
            "disk log opened"
        );
        Ok(DiskLog { shared })
    }
}

/// Reads the format, the id bounds and the per-topic counts.
fn load_state(
    dir: &Path,
    db: &Database,
    events: &Keyspace,
    meta: &Keyspace,
) -> anyhow::Result<State> {
    let fail = |e: &dyn std::fmt::Display| {
        anyhow::anyhow!("cannot read the data directory {}: {e}", dir.display())
    };
    let get_id = |key: &[u8]| -> anyhow::Result<Option<EventId>> {
        match meta.get(key).map_err(|e| fail(&e))? {
            None => Ok(None),
            Some(value) => key_id(&value)
                .map(Some)
                .ok_or_else(|| fail(&"damaged metadata")),
        }
    };
    match meta.get(META_FORMAT).map_err(|e| fail(&e))? {
        Some(format) if &*format == FORMAT => {}
        Some(format) => anyhow::bail!(
            "the data directory {} holds format {:?}; this sluice reads {:?}",
            dir.display(),
            String::from_utf8_lossy(&format),
            String::from_utf8_lossy(FORMAT)
        ),
        None if !events.is_empty().map_err(|e| fail(&e))? => {
            anyhow::bail!(
                "the data directory {} has events but no format mark",
                dir.display()
            )
        }
        None => {
            // A new log treats ids from before its creation as lost, like
            // the memory log; the floor is kept, so it holds after restarts.
            let (_, now) = now_ms();
            let floor = EventId {
                ms: now.saturating_sub(1),
                seq: u64::MAX,
            };
            let mut init = db.batch().durability(Some(PersistMode::SyncAll));
            init.insert(meta, META_LOST_THROUGH, id_key(floor));
            init.insert(meta, META_LAST_ID, id_key(floor));
            init.insert(meta, META_FORMAT, FORMAT);
            init.commit().map_err(|e| fail(&e))?;
        }
    }
    let (last_issued, lost_through) = match (get_id(META_LAST_ID)?, get_id(META_LOST_THROUGH)?) {
        (Some(last), Some(lost)) => (last, lost),
        _ => return Err(fail(&"damaged metadata: missing id bounds")),
    };
    let mut state = State {
        ids: IdGenerator::above(last_issued.max(lost_through)),
        lost_through,
        count: 0,
        bytes: 0,
        topics: TopicTable::default(),
    };
    for entry in events.iter() {
        let (key, record) = entry.into_inner().map_err(|e| fail(&e))?;
        let id = key_id(&key).ok_or_else(|| fail(&"damaged event key"))?;
        let event = decode(id, &record).map_err(|e| fail(&e))?;
        state.count += 1;
        state.bytes += event.approx_size() as u64;
        state.topics.added(&event.topic, id);
    }
    Ok(state)
}

/// Syncs the journal every `interval` while the log is open.
fn spawn_syncer(log: Weak<Shared>, interval: Duration) {
    std::thread::Builder::new()
        .name("sluice-fsync".into())
        .spawn(move || {
            loop {
                std::thread::sleep(interval);
                let Some(log) = log.upgrade() else { return };
                if let Err(error) = log.db.persist(PersistMode::SyncAll) {
                    log.healthy.store(false, Ordering::Relaxed);
                    tracing::error!(%error, "periodic fsync of the disk log failed");
                }
            }
        })
        .expect("a thread starts");
}

impl Shared {
    fn append(&self, batch: Vec<NewEvent>) -> Result<Vec<Arc<Event>>, LogError> {
        let (time, ms) = now_ms();
        let mut state = self.state.lock();
        let mut ids = state.ids.clone();
        let mut write = self.db.batch().durability(Some(self.persist));
        // A batch larger than history keeps only its newest events; the
        // others are still published (dispatched live), just not stored.
        let unstored = batch.len().saturating_sub(self.retention.max_events);
        let mut appended = Vec::with_capacity(batch.len());
        for (index, new) in batch.into_iter().enumerate() {
            let event = Event::new(ids.next(ms), time, new);
            if index >= unstored {
                write.insert(&self.events, id_key(event.id), encode(&event));
                write.insert(&self.by_topic, topic_key(&event.topic, event.id), []);
            }
            appended.push(Arc::new(event));
        }
        write.insert(&self.meta, META_LAST_ID, id_key(ids.last()));
        let stored = &appended[unstored..];
        let added: u64 = stored.iter().map(|e| e.approx_size() as u64).sum();
        let evicted = self.plan_eviction(
            &mut write,
            state.count + stored.len(),
            state.bytes + added,
            time,
        )?;
        let lost = unstored.checked_sub(1).map(|last| appended[last].id);
        if let Some(lost) = lost {
            // After plan_eviction's own mark: the higher id wins.
            write.insert(&self.meta, META_LOST_THROUGH, id_key(lost));
        }
        self.commit(write)?;
        state.ids = ids;
        for event in stored {
            state.count += 1;
            state.bytes += event.approx_size() as u64;
            state.topics.added(&event.topic, event.id);
        }
        state.forget(&evicted);
        if let Some(lost) = lost {
            state.lost_through = state.lost_through.max(lost);
        }
        Ok(appended)
    }

    /// Commits a write batch, and records whether the disk takes writes:
    /// after a failed write or sync, fjall refuses writes until restarted.
    fn commit(&self, write: fjall::OwnedWriteBatch) -> Result<(), LogError> {
        let result = write.commit();
        self.healthy.store(result.is_ok(), Ordering::Relaxed);
        result.map_err(unavailable)
    }

    /// Adds to `write` the removal of the oldest events beyond retention,
    /// given the count and bytes after the write; returns what it removes.
    fn plan_eviction(
        &self,
        write: &mut fjall::OwnedWriteBatch,
        count: usize,
        bytes: u64,
        now: DateTime<Utc>,
    ) -> Result<Vec<(EventId, Box<str>, u64)>, LogError> {
        let limits = self.retention;
        let max_age = chrono::Duration::from_std(limits.max_age).unwrap_or(chrono::Duration::MAX);
        let (mut count, mut bytes) = (count, bytes);
        let mut evicted = Vec::new();
        for entry in self.events.iter() {
            if evicted.len() == EVICT_LIMIT {
                break;
            }
            let (key, record) = entry.into_inner().map_err(unavailable)?;
            let id = key_id(&key).ok_or_else(|| unavailable("damaged event key"))?;
            let event = decode(id, &record).map_err(unavailable)?;
            let too_old = now.signed_duration_since(event.time) > max_age;
            if count <= limits.max_events && bytes <= limits.max_bytes && !too_old {
                break;
            }
            let size = event.approx_size() as u64;
            write.remove(&self.events, key);
            write.remove(&self.by_topic, topic_key(&event.topic, id));
            count -= 1;
            bytes -= size;
            evicted.push((id, event.topic, size));
        }
        if let Some((last, _, _)) = evicted.last() {
            write.insert(&self.meta, META_LOST_THROUGH, id_key(*last));
        }
        Ok(evicted)
    }

    fn enforce_retention(&self) -> Result<(), LogError> {
        let (now, _) = now_ms();
        let mut state = self.state.lock();
        let mut write = self.db.batch().durability(Some(self.persist));
        let evicted = self.plan_eviction(&mut write, state.count, state.bytes, now)?;
        if evicted.is_empty() {
            return Ok(());
        }
        self.commit(write)?;
        state.forget(&evicted);
        Ok(())
    }

    fn read(&self, request: OwnedRead) -> Result<ReadPage, LogError> {
        let state = self.state.lock();
        let oldest = self.oldest()?;
        let gap = gap_after(request.after, state.lost_through, state.ids.last(), oldest);
        let after = if gap.is_some() { None } else { request.after };
        let matching: Vec<String> = state
            .topics
            .matching(&request.filter)
            .map(String::from)
            .collect();
        // The state stays locked for the read: retention cannot remove
        // events between the gap check above and the read below.
        let mut page = if matching.len() <= INDEX_TOPICS {
            self.read_indexed(&matching, after, request.until, request.limit)?
        } else {
            self.read_scan(&request.filter, after, request.until, request.limit)?
        };
        page.gap = gap;
        Ok(page)
    }

    /// Merges the index ranges of a few topics: cost in proportion to
    /// their events, however busy the rest of the log is.
    fn read_indexed(
        &self,
        topics: &[String],
        after: Option<EventId>,
        until: Option<EventId>,
        limit: usize,
    ) -> Result<ReadPage, LogError> {
        let mut ids = Vec::new();
        for topic in topics {
            let lower = match after {
                Some(after) => Bound::Excluded(topic_key(topic, after)),
                None => Bound::Included(topic_key(topic, EventId { ms: 0, seq: 0 })),
            };
            let upper = match until {
                Some(until) => Bound::Included(topic_key(topic, until)),
                None => Bound::Included(topic_key(
                    topic,
                    EventId {
                        ms: u64::MAX,
                        seq: u64::MAX,
                    },
                )),
            };
            for entry in self.by_topic.range((lower, upper)).take(limit + 1) {
                let key = entry.key().map_err(unavailable)?;
                let id = key_id(&key[key.len() - 16..])
                    .ok_or_else(|| unavailable("damaged index key"))?;
                ids.push(id);
            }
        }
        ids.sort_unstable();
        let done = ids.len() <= limit;
        ids.truncate(limit);
        let mut page = ReadPage {
            done,
            cursor: ids.last().copied(),
            ..ReadPage::default()
        };
        for id in ids {
            // Retention may remove an event between the index and here.
            if let Some(record) = self.events.get(id_key(id)).map_err(unavailable)? {
                page.events
                    .push(Arc::new(decode(id, &record).map_err(unavailable)?));
            }
        }
        Ok(page)
    }

    /// Scans events in order, for patterns that match many topics.
    fn read_scan(
        &self,
        filter: &TopicFilter,
        after: Option<EventId>,
        until: Option<EventId>,
        limit: usize,
    ) -> Result<ReadPage, LogError> {
        let lower = after.map_or(Bound::Unbounded, |a| Bound::Excluded(id_key(a).to_vec()));
        let upper = until.map_or(Bound::Unbounded, |u| Bound::Included(id_key(u).to_vec()));
        let mut page = ReadPage {
            done: true,
            ..ReadPage::default()
        };
        for (examined, entry) in self.events.range((lower, upper)).enumerate() {
            if examined == SCAN_LIMIT || page.events.len() == limit {
                page.done = false;
                break;
            }
            let (key, record) = entry.into_inner().map_err(unavailable)?;
            let id = key_id(&key).ok_or_else(|| unavailable("damaged event key"))?;
            page.cursor = Some(id);
            let event = decode(id, &record).map_err(unavailable)?;
            if filter.matches(&event.topic) {
                page.events.push(Arc::new(event));
            }
        }
        Ok(page)
    }

    fn oldest(&self) -> Result<Option<EventId>, LogError> {
        match self.events.first_key_value() {
            None => Ok(None),
            Some(entry) => Ok(key_id(&entry.key().map_err(unavailable)?)),
        }
    }
}

impl State {
    fn forget(&mut self, evicted: &[(EventId, Box<str>, u64)]) {
        for (id, topic, size) in evicted {
            self.count -= 1;
            self.bytes -= size;
            self.topics.removed(topic);
            self.lost_through = self.lost_through.max(*id);
        }
    }
}

/// A read request that can move to a blocking thread.
struct OwnedRead {
    after: Option<EventId>,
    until: Option<EventId>,
    filter: TopicFilter,
    limit: usize,
}

/// Runs blocking disk work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, LogError> + Send + 'static,
) -> Result<T, LogError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| LogError::Unavailable(format!("disk task failed: {e}")))?
}

#[async_trait]
impl EventLog for DiskLog {
    async fn append(&self, batch: Vec<NewEvent>) -> Result<Vec<Arc<Event>>, LogError> {
        let shared = self.shared.clone();
        blocking(move || shared.append(batch)).await
    }

    async fn read(&self, request: ReadRequest<'_>) -> Result<ReadPage, LogError> {
        let shared = self.shared.clone();
        let request = OwnedRead {
            after: request.after,
            until: request.until,
            filter: request.filter.clone(),
            limit: request.limit,
        };
        blocking(move || shared.read(request)).await
    }

    async fn enforce_retention(&self) {
        let shared = self.shared.clone();
        if let Err(error) = blocking(move || shared.enforce_retention()).await {
            tracing::warn!(%error, "retention pass failed");
        }
    }

    fn stats(&self) -> LogStats {
        let state = self.shared.state.lock();
        LogStats {
            retained: state.count,
            bytes: state.bytes,
            oldest: self.shared.oldest().ok().flatten(),
            head: state.ids.last(),
        }
    }

    fn topics(&self) -> Vec<TopicStats> {
        self.shared.state.lock().topics.stats()
    }

    fn is_healthy(&self) -> bool {
        self.shared.healthy.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_as_ids_do() {
        let a = EventId { ms: 9, seq: 5 };
        let b = EventId { ms: 10, seq: 0 };
        assert!(id_key(a) < id_key(b));
        assert_eq!(key_id(&id_key(b)), Some(b));
        assert!(
            topic_key("a", b) < topic_key("a/b", a),
            "a topic's range excludes longer topics"
        );
    }

    #[test]
    fn records_round_trip() {
        let time = DateTime::from_timestamp_millis(1_700_000_000_123).unwrap();
        for kind in [None, Some("t".to_string())] {
            let event = Event::new(
                EventId { ms: 1, seq: 2 },
                time,
                NewEvent {
                    topic: "a/b".into(),
                    kind: kind.clone(),
                    data: RawValue::from_string("{\"x\":[1.50]}".into()).unwrap(),
                },
            );
            let back = decode(event.id, &encode(&event)).unwrap();
            assert_eq!(back.envelope_line(), event.envelope_line());
        }
        assert!(decode(EventId { ms: 1, seq: 0 }, &[1, 2, 3]).is_err());
        assert!(decode(EventId { ms: 1, seq: 0 }, &[]).is_err());
    }
}
