//! History on disk, in an embedded fjall database (an LSM tree with a
//! checksummed write-ahead journal), so that a restart, even `kill -9`,
//! loses no acknowledged event.
//!
//! Layout, one keyspace each:
//! - `events`: id (16 bytes, big-endian `ms` then `seq`, so keys sort as
//!   ids do) → the event record (see [`encode`]);
//! - `by_topic`: topic, a 0 byte, id → nothing: an index that makes the
//!   replay of a topic cost in proportion to that topic's events;
//! - `keys`: id, then an idempotency key → nothing: the keys of recent
//!   publishes, in time order so that expired ones are found first;
//! - `meta`: the format version, the last id issued and the highest id
//!   removed (globally, and per topic where a topic's own rule removed
//!   events), so that ids continue upward and gaps are known after a
//!   restart.
//!
//! Every append is one atomic write batch: the events, their index
//! entries, their idempotency keys, the new last id, and whatever the
//! global retention limits remove. A topic's own rule is applied right
//! after, in a batch of its own. With
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

use super::idempotency::{IdempotencyKeys, Plan};
use super::{
    Appended, EventLog, LogError, LogStats, ReadPage, ReadRequest, RetentionRules, TopicStats,
    TopicTable, gap_after,
};
use crate::config::Fsync;
use crate::event::{Event, EventId, IdGenerator, NewEvent, now_ms};
use crate::topic::TopicFilter;

/// The on-disk format this code reads and writes.
const FORMAT: &[u8] = b"sluice-disk-1";
const META_FORMAT: &[u8] = b"format";
const META_LAST_ID: &[u8] = b"last_id";
const META_LOST_THROUGH: &[u8] = b"lost_through";
/// Followed by a topic: the highest id that topic's own rule removed.
const META_TOPIC_LOST: &[u8] = b"lost/";

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
    pub retention: RetentionRules,
    pub idempotency_window: Duration,
}

pub struct DiskLog {
    shared: Arc<Shared>,
}

struct Shared {
    db: Database,
    events: Keyspace,
    by_topic: Keyspace,
    keys: Keyspace,
    meta: Keyspace,
    persist: PersistMode,
    rules: RetentionRules,
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
    keys: IdempotencyKeys,
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

/// Where a topic's index entries start: its name and a 0 byte (which no
/// topic contains), so that `a` does not cover `a/b`.
fn topic_prefix(topic: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(topic.len() + 17);
    key.extend_from_slice(topic.as_bytes());
    key.push(0);
    key
}

fn topic_key(topic: &str, id: EventId) -> Vec<u8> {
    let mut key = topic_prefix(topic);
    key.extend_from_slice(&id_key(id));
    key
}

fn idempotency_key(id: EventId, key: &str) -> Vec<u8> {
    [&id_key(id)[..], key.as_bytes()].concat()
}

fn topic_lost_key(topic: &str) -> Vec<u8> {
    [META_TOPIC_LOST, topic.as_bytes()].concat()
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
            key: None,
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
        let journals = journal_sizes(dir);
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
        let (events, by_topic, keys, meta) = (
            open("events")?,
            open("by_topic")?,
            open("keys")?,
            open("meta")?,
        );
        let state = load_state(dir, &db, &events, &keys, &meta, &options)?;
        let shared = Arc::new(Shared {
            persist: match options.fsync {
                Fsync::Always => PersistMode::SyncAll,
                Fsync::Interval => PersistMode::Buffer,
            },
            rules: options.retention,
            state: Mutex::new(state),
            healthy: AtomicBool::new(true),
            db,
            events,
            by_topic,
            keys,
            meta,
        });
        if options.fsync == Fsync::Interval {
            spawn_syncer(Arc::downgrade(&shared), options.fsync_interval);
        }
        report_torn_tail(
            &journals,
            &journal_sizes(dir),
            shared.state.lock().ids.last(),
        );
        tracing::info!(
            dir = %dir.display(),
            events = shared.state.lock().count,
            "disk log opened"
        );
        Ok(DiskLog { shared })
    }
}

/// How far each journal file (`<n>.jnl`) in `dir` holds data: its length
/// without the trailing zeros of the space fjall reserves ahead of writes.
fn journal_sizes(dir: &Path) -> Vec<(PathBuf, u64)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "jnl"))
        .filter_map(|path| Some((path.clone(), data_end(&path).ok()?)))
        .collect()
}

/// The offset after the last non-zero byte of a file, reading backwards.
fn data_end(path: &Path) -> std::io::Result<u64> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path)?;
    let mut end = file.metadata()?.len();
    let mut chunk = vec![0u8; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(chunk.len() as u64);
        let part = &mut chunk[..(end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(part)?;
        if let Some(last) = part.iter().rposition(|&b| b != 0) {
            return Ok(start + last as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

/// Says what recovery cut off. A crash while a batch was being written
/// leaves it incomplete at the end of the journal; fjall's recovery drops
/// it (it was never acknowledged: acknowledgement follows the write) and
/// truncates the file, so the journal holds less data after opening.
fn report_torn_tail(before: &[(PathBuf, u64)], after: &[(PathBuf, u64)], last_id: EventId) {
    for (path, size) in before {
        let Some((_, now)) = after.iter().find(|(p, _)| p == path) else {
            continue;
        };
        if now < size {
            tracing::warn!(
                journal = %path.display(),
                dropped_bytes = size - now,
                last_id = %last_id,
                "a torn write at the end of the log was cut off: {} bytes of a batch \
                 that a crash interrupted, never acknowledged; the log ends at event {last_id}",
                size - now
            );
        }
    }
}

/// Reads the format, the id bounds, the per-topic counts and marks, and the
/// idempotency keys still within their window.
fn load_state(
    dir: &Path,
    db: &Database,
    events: &Keyspace,
    keys: &Keyspace,
    meta: &Keyspace,
    options: &DiskOptions,
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
        keys: IdempotencyKeys::new(options.idempotency_window),
    };
    for entry in events.iter() {
        let (key, record) = entry.into_inner().map_err(|e| fail(&e))?;
        let id = key_id(&key).ok_or_else(|| fail(&"damaged event key"))?;
        let event = decode(id, &record).map_err(|e| fail(&e))?;
        let size = event.approx_size() as u64;
        state.count += 1;
        state.bytes += size;
        state
            .topics
            .added(&event.topic, id, size, &options.retention);
    }
    for entry in meta.prefix(META_TOPIC_LOST) {
        let (key, value) = entry.into_inner().map_err(|e| fail(&e))?;
        let topic = std::str::from_utf8(&key[META_TOPIC_LOST.len()..]);
        match (topic, key_id(&value)) {
            (Ok(topic), Some(id)) => state.topics.set_lost(topic, id),
            _ => return Err(fail(&"damaged metadata: a topic's lost mark")),
        }
    }
    // Expired keys too (a lookup ignores them): the next retention pass
    // removes them from memory and disk together.
    for entry in keys.iter() {
        let key = entry.key().map_err(|e| fail(&e))?;
        let id = key_id(&key).ok_or_else(|| fail(&"damaged idempotency key"))?;
        let name = std::str::from_utf8(&key[16..]).map_err(|_| fail(&"damaged idempotency key"))?;
        state.keys.insert(name.into(), id);
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
    fn append(&self, batch: Vec<NewEvent>) -> Result<Vec<Appended>, LogError> {
        let (time, ms) = now_ms();
        let mut state = self.state.lock();
        let plan = Plan::new(batch, &state.keys, &state.ids, time, ms);
        let new: Vec<Arc<Event>> = plan.new_events().cloned().collect();
        let mut write = self.db.batch().durability(Some(self.persist));
        // A batch larger than history keeps only its newest events; the
        // others are still published (dispatched live), just not stored.
        let unstored = new.len().saturating_sub(self.rules.global.max_events);
        let stored = &new[unstored..];
        for event in stored {
            write.insert(&self.events, id_key(event.id), encode(event));
            write.insert(&self.by_topic, topic_key(&event.topic, event.id), []);
        }
        for (key, id) in &plan.keys {
            write.insert(&self.keys, idempotency_key(*id, key), []);
        }
        write.insert(&self.meta, META_LAST_ID, id_key(plan.ids.last()));
        let lost = unstored.checked_sub(1).map(|last| new[last].id);
        if let Some(lost) = lost {
            write.insert(&self.meta, META_LOST_THROUGH, id_key(lost));
        }
        self.commit(write)?;
        let state = &mut *state;
        let appended = plan.commit(&mut state.keys, &mut state.ids);
        let mut ruled: Vec<Box<str>> = Vec::new();
        for event in stored {
            let size = event.approx_size() as u64;
            state.count += 1;
            state.bytes += size;
            state
                .topics
                .added(&event.topic, event.id, size, &self.rules);
            if state.topics.rule_usage(&event.topic, &self.rules).is_some()
                && !ruled.contains(&event.topic)
            {
                ruled.push(event.topic.clone());
            }
        }
        if let Some(lost) = lost {
            state.lost_through = state.lost_through.max(lost);
        }
        // The events are stored; retention follows: each topic's own rule
        // first, then the global limits on what remains, so that a rule's
        // removals count toward them. A failure only delays it to the next
        // pass.
        let retained = self
            .enforce_rules(state, &ruled, time)
            .and_then(|()| self.enforce_global(state, time));
        if let Err(error) = retained {
            tracing::warn!(%error, "retention after an append failed");
        }
        Ok(appended)
    }

    /// Removes the oldest events beyond the global limits, in a write of
    /// their own with the new lost mark. Not synced: a removal lost to a
    /// crash is made again by the next pass.
    fn enforce_global(&self, state: &mut State, now: DateTime<Utc>) -> Result<(), LogError> {
        let mut write = self.db.batch().durability(Some(PersistMode::Buffer));
        let evicted = self.plan_eviction(&mut write, state, now)?;
        if evicted.is_empty() {
            return Ok(());
        }
        self.commit(write)?;
        state.forget(&evicted);
        Ok(())
    }

    /// Commits a write batch, and records whether the disk takes writes:
    /// after a failed write or sync, fjall refuses writes until restarted.
    fn commit(&self, write: fjall::OwnedWriteBatch) -> Result<(), LogError> {
        let result = write.commit();
        self.healthy.store(result.is_ok(), Ordering::Relaxed);
        result.map_err(unavailable)
    }

    /// Adds to `write` the removal of the oldest events beyond the global
    /// limits; returns what it removes.
    fn plan_eviction(
        &self,
        write: &mut fjall::OwnedWriteBatch,
        state: &State,
        now: DateTime<Utc>,
    ) -> Result<Vec<(EventId, Box<str>, u64)>, LogError> {
        let limits = self.rules.global;
        let (mut count, mut bytes) = (state.count, state.bytes);
        let mut evicted = Vec::new();
        for entry in self.events_after(state.lost_through) {
            if evicted.len() == EVICT_LIMIT {
                break;
            }
            let (key, record) = entry.into_inner().map_err(unavailable)?;
            let id = key_id(&key).ok_or_else(|| unavailable("damaged event key"))?;
            let event = decode(id, &record).map_err(unavailable)?;
            if !limits.exceeded(count, bytes, event.time, now) {
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

    /// Removes the oldest events of each of `topics` beyond its own rule's
    /// limits, and records how far each topic lost events.
    fn enforce_rules(
        &self,
        state: &mut State,
        topics: &[Box<str>],
        now: DateTime<Utc>,
    ) -> Result<(), LogError> {
        if topics.is_empty() {
            return Ok(());
        }
        let mut write = self.db.batch().durability(Some(self.persist));
        let mut evicted = Vec::new();
        for topic in topics {
            let Some((limits, mut count, mut bytes)) = state.topics.rule_usage(topic, &self.rules)
            else {
                continue;
            };
            let mut last = None;
            // From the topic's lost mark on, past the deletion markers of
            // what was removed before (see `events_after`).
            let from = state.topics.topic_lost_through(topic, state.lost_through);
            let lower = Bound::Excluded(topic_key(topic, from));
            let upper = Bound::Included(topic_key(topic, EventId::MAX));
            for entry in self.by_topic.range((lower, upper)) {
                if evicted.len() == EVICT_LIMIT {
                    break;
                }
                let key = entry.key().map_err(unavailable)?;
                let id = key_id(&key[key.len() - 16..])
                    .ok_or_else(|| unavailable("damaged index key"))?;
                let Some(record) = self.events.get(id_key(id)).map_err(unavailable)? else {
                    continue;
                };
                let event = decode(id, &record).map_err(unavailable)?;
                if !limits.exceeded(count, bytes, event.time, now) {
                    break;
                }
                let size = event.approx_size() as u64;
                write.remove(&self.events, id_key(id));
                write.remove(&self.by_topic, key);
                (count, bytes) = (count - 1, bytes - size);
                evicted.push((id, topic.clone(), size));
                last = Some(id);
            }
            if let Some(last) = last {
                write.insert(&self.meta, topic_lost_key(topic), id_key(last));
            }
        }
        if evicted.is_empty() {
            return Ok(());
        }
        self.commit(write)?;
        for (id, topic, size) in &evicted {
            state.count -= 1;
            state.bytes -= size;
            state.topics.removed_by_rule(topic, *id, *size);
        }
        Ok(())
    }

    /// The periodic pass: global limits, every ruled topic, expired
    /// idempotency keys, and topic marks that the global mark overtook.
    fn enforce_retention(&self) -> Result<(), LogError> {
        let (now, ms) = now_ms();
        let mut state = self.state.lock();
        let ruled = state.topics.ruled();
        self.enforce_rules(&mut state, &ruled, now)?;
        let mut write = self.db.batch().durability(Some(self.persist));
        let evicted = self.plan_eviction(&mut write, &state, now)?;
        let expired = state.keys.expire(ms);
        for (id, key) in &expired {
            write.remove(&self.keys, idempotency_key(*id, key));
        }
        if !evicted.is_empty() || !expired.is_empty() {
            self.commit(write)?;
            state.forget(&evicted);
        }
        let lost_through = state.lost_through;
        let overtaken = state.topics.prune_lost(lost_through);
        if !overtaken.is_empty() {
            let mut write = self.db.batch().durability(Some(self.persist));
            for topic in overtaken {
                write.remove(&self.meta, topic_lost_key(&topic));
            }
            self.commit(write)?;
        }
        Ok(())
    }

    fn read(&self, request: OwnedRead) -> Result<ReadPage, LogError> {
        let state = self.state.lock();
        let oldest = self.oldest(state.lost_through)?;
        let lost = state
            .topics
            .lost_through(&request.filter, state.lost_through);
        let gap = gap_after(request.after, lost, state.ids.last(), oldest);
        // Retained events are all above the lost marks: reading on from the
        // reader's own position skips nothing it could still get. An id
        // never issued here reads from the start.
        let after = request.after.filter(|after| *after <= state.ids.last());
        let matching: Vec<String> = state
            .topics
            .matching(&request.filter)
            .map(String::from)
            .collect();
        // The state stays locked for the read: retention cannot remove
        // events between the gap check above and the read below.
        let mut page = if matching.len() <= INDEX_TOPICS {
            self.read_indexed(&state, &matching, after, request.until, request.limit)?
        } else {
            self.read_scan(&state, &request.filter, after, request.until, request.limit)?
        };
        page.gap = gap;
        Ok(page)
    }

    /// Merges the index ranges of a few topics: cost in proportion to
    /// their events, however busy the rest of the log is.
    fn read_indexed(
        &self,
        state: &State,
        topics: &[String],
        after: Option<EventId>,
        until: Option<EventId>,
        limit: usize,
    ) -> Result<ReadPage, LogError> {
        let mut ids = Vec::new();
        for topic in topics {
            // Nothing at or below the topic's lost mark is left.
            let lost = state.topics.topic_lost_through(topic, state.lost_through);
            let from = after.unwrap_or(EventId::ZERO).max(lost);
            let lower = Bound::Excluded(topic_key(topic, from));
            let upper = Bound::Included(topic_key(topic, until.unwrap_or(EventId::MAX)));
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
        state: &State,
        filter: &TopicFilter,
        after: Option<EventId>,
        until: Option<EventId>,
        limit: usize,
    ) -> Result<ReadPage, LogError> {
        let from = after.unwrap_or(EventId::ZERO).max(state.lost_through);
        let lower = Bound::Excluded(id_key(from).to_vec());
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

    /// The oldest retained event's id; every event up to `lost_through` is
    /// gone, so the search starts above it.
    fn oldest(&self, lost_through: EventId) -> Result<Option<EventId>, LogError> {
        match self.events_after(lost_through).next() {
            None => Ok(None),
            Some(entry) => Ok(key_id(&entry.key().map_err(unavailable)?)),
        }
    }

    /// The events after `lost_through`, in id order. Starting there rather
    /// than at the first key skips the deletion markers that removed
    /// events leave in the LSM tree until compaction drops them, which a
    /// scan from the start would walk through on every retention pass.
    fn events_after(&self, lost_through: EventId) -> fjall::Iter {
        let lower = Bound::Excluded(id_key(lost_through).to_vec());
        self.events.range((lower, Bound::Unbounded))
    }
}

impl State {
    fn forget(&mut self, evicted: &[(EventId, Box<str>, u64)]) {
        for (id, topic, size) in evicted {
            self.count -= 1;
            self.bytes -= size;
            self.topics.removed(topic, *size);
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
    async fn append(&self, batch: Vec<NewEvent>) -> Result<Vec<Appended>, LogError> {
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
            oldest: self.shared.oldest(state.lost_through).ok().flatten(),
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
                    key: None,
                },
            );
            let back = decode(event.id, &encode(&event)).unwrap();
            assert_eq!(back.envelope_line(), event.envelope_line());
        }
        assert!(decode(EventId { ms: 1, seq: 0 }, &[1, 2, 3]).is_err());
        assert!(decode(EventId { ms: 1, seq: 0 }, &[]).is_err());
    }
}
