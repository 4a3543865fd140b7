//! History in Redis Streams, shared by every node that points at the same
//! Redis and key prefix: any node takes any publish and serves any
//! subscriber, with the same ids, the same order and the same replay.
//!
//! One stream, `<prefix>:events`, holds every event in total order. Redis
//! assigns the ids (`XADD … *`), which are `<ms>-<seq>` like ours and
//! strictly increasing whichever node appends. Each event is also added,
//! under the same id, to its topic's stream, `<prefix>:topic:<topic>`, so
//! that replaying a few topics costs in proportion to their events; a
//! pattern that matches many topics reads the main stream instead. The
//! layout and the scripts' shared code are in `redis.lua`.
//!
//! Every change is one Lua script, atomic in Redis: an append checks the
//! idempotency keys (`<prefix>:key:<key>`, expiring after the window, so
//! they work across nodes), adds the events and their keys, and applies
//! retention; the pass every second applies the age limits and returns the
//! figures that `/health` and `/topics` show (cached here, since those
//! calls do not wait for Redis). Reads are scripts too, so the gap check
//! and the events read see one state.
//!
//! Each node reads every event back once through its feed
//! ([`EventLog::feed`]), whatever its number of subscribers, and dispatches
//! it to its own subscribers: so events published on any node reach every
//! node's subscribers in id order. After an outage the feed resumes from
//! the last id it read.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::DateTime;
use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Client, RedisError, Script, ScriptInvocation, Value};
use serde_json::value::RawValue;
use tokio::sync::mpsc;

use super::{
    Appended, EventLog, Feed, FeedBatch, LogError, LogStats, Missed, ReadPage, ReadRequest,
    Retention, RetentionRules, TopicStats, gap_after,
};
use crate::event::{Event, EventId, NewEvent};

/// Code shared by the scripts: the key layout, retention, id comparison.
const PRELUDE: &str = include_str!("redis.lua");

/// Appends a batch. ARGV: prefix, idempotency window in ms, the global
/// limits (3), then for each event: topic, type, data, key ('' for none)
/// and its topic's rule limits (3, -1 for none). Returns, per event, its
/// id and 1 for a duplicate (the first publish's id) or 0.
const APPEND: &str = r#"
init()
local now = now_ms()
local global = limits(3)
local out, ruled = {}, {}
for i = 6, #ARGV, 7 do
  local topic, kind, data, key = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local known = key ~= '' and redis.call('GET', P .. ':key:' .. key)
  if known then
    out[#out + 1] = known
    out[#out + 1] = 1
  else
    local f = { 'topic', topic, 'data', data }
    if kind ~= '' then
      f[5] = 'type'
      f[6] = kind
    end
    local id = redis.call('XADD', EV, '*', unpack(f))
    redis.call('XADD', TP .. topic, id, unpack(f))
    local n = size(f)
    redis.call('HINCRBY', META, 'bytes', n)
    redis.call('HSET', META, 'last_id', id)
    redis.call('HINCRBY', COUNTS, topic, 1)
    redis.call('HINCRBY', BYTES, topic, n)
    redis.call('HSET', LAST, topic, id)
    if key ~= '' then
      redis.call('SET', P .. ':key:' .. key, id, 'PX', ARGV[2])
    end
    if ARGV[i + 4] ~= '-1' or ARGV[i + 5] ~= '-1' or ARGV[i + 6] ~= '-1' then
      ruled[topic] = limits(i + 4)
    end
    out[#out + 1] = id
    out[#out + 1] = 0
  end
end
-- A topic's own rule first, so that its removals count toward the global
-- limits (as in the other backends).
for topic, lim in pairs(ruled) do
  evict_topic(topic, lim, now, EVICT)
end
evict_global(global, now, EVICT)
return out
"#;

/// The pass every second. ARGV: prefix, the global limits (3), then for
/// each topic under a rule: the topic and its limits (3). Returns the
/// figures: meta, the number of events, the oldest id ('' for none),
/// per-topic counts and last ids.
const TICK: &str = r#"
init()
local now = now_ms()
local budget = EVICT
for i = 5, #ARGV, 4 do
  if budget <= 0 then
    break
  end
  budget = budget - evict_topic(ARGV[i], limits(i + 1), now, budget)
end
evict_global(limits(2), now, math.max(budget, 0))
-- A topic's mark that the global mark overtook says nothing more.
local meta = redis.call('HGETALL', META)
local lost = field(meta, 'lost_through')
for i = 1, #meta, 2 do
  if string.sub(meta[i], 1, 5) == 'lost/' and not before(lost, meta[i + 1]) then
    redis.call('HDEL', META, meta[i])
  end
end
return { redis.call('HGETALL', META), redis.call('XLEN', EV), oldest(),
  redis.call('HGETALL', COUNTS), redis.call('HGETALL', LAST) }
"#;

/// Reads events. ARGV: prefix, after ('' for the oldest), until ('' for
/// the end), limit, then 'scan' (the main stream) or 'topics' followed by
/// the topics whose streams to merge. Returns meta, the oldest id ('' for
/// none), the events (as XRANGE gives them) and 1 when the read reached
/// `until`.
const READ: &str = r#"
local meta = redis.call('HGETALL', META)
local after, upto, limit = ARGV[2], ARGV[3], tonumber(ARGV[4])
local last = field(meta, 'last_id')
-- An id never issued here reads from the oldest.
if after ~= '' and (not last or before(last, after)) then
  after = ''
end
local from = after == '' and '-' or '(' .. after
local to = upto == '' and '+' or upto
local events, done = {}, true
if ARGV[5] == 'scan' then
  events = redis.call('XRANGE', EV, from, to, 'COUNT', limit)
  done = #events < limit
else
  -- Each topic's first limit + 1 events, merged in id order.
  local lists, at = {}, {}
  for i = 6, #ARGV do
    lists[#lists + 1] = redis.call('XRANGE', TP .. ARGV[i], from, to, 'COUNT', limit + 1)
    at[#at + 1] = 1
  end
  while #events < limit do
    local best
    for j = 1, #lists do
      local e = lists[j][at[j]]
      if e and (not best or before(e[1], lists[best][at[best]][1])) then
        best = j
      end
    end
    if not best then
      break
    end
    events[#events + 1] = lists[best][at[best]]
    at[best] = at[best] + 1
  end
  for j = 1, #lists do
    if lists[j][at[j]] then
      done = false
    end
  end
end
return { meta, oldest(), events, done and 1 or 0 }
"#;

/// What the feed reads. ARGV: prefix, the last id read, how many at most.
/// Returns meta (whose marks tell whether retention removed events that
/// this node had not read yet) and the events after that id.
const FEED: &str = r#"
return { redis.call('HGETALL', META), redis.call('XRANGE', EV, '(' .. ARGV[2], '+', 'COUNT', tonumber(ARGV[3])) }
"#;

/// Up to this many matching topics, a read merges their streams; beyond,
/// it reads the main stream.
const INDEX_TOPICS: usize = 64;
/// Events a read of the main stream examines at most.
const SCAN_LIMIT: usize = 1024;
/// Events the feed reads, and the hub dispatches, at once at most: well
/// under a subscriber's default buffer (1000), which a larger dispatch
/// could fill before its connection had a chance to take any.
const FEED_CHUNK: usize = 256;
/// How long the feed's `XREAD` waits for new events before it looks again.
const FEED_BLOCK: Duration = Duration::from_secs(1);
/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a command may take: generous, since a script appending a large
/// batch takes a while, and a timed-out write may still have been stored.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// The pause before the feed tries a lost connection again.
const RETRY: Duration = Duration::from_millis(250);
/// Batches the feed may have read ahead of the hub's dispatch.
const FEED_QUEUE: usize = 64;

/// How to reach the Redis log.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// `redis://[user:password@]host:port/db`, or `rediss://` for TLS.
    pub url: String,
    /// The first part of every key, so that several hubs can share a Redis.
    pub prefix: String,
    pub retention: RetentionRules,
    pub idempotency_window: Duration,
}

pub struct RedisLog {
    client: Client,
    conn: ConnectionManager,
    prefix: String,
    rules: RetentionRules,
    window_ms: u64,
    scripts: Arc<Scripts>,
    shared: Arc<Shared>,
}

struct Scripts {
    append: Script,
    tick: Script,
    read: Script,
    feed: Script,
}

/// What the log, its feed and the admin endpoints share.
struct Shared {
    /// False after a round trip to Redis failed, until one succeeds.
    healthy: AtomicBool,
    cache: Mutex<Cache>,
}

/// What is known of the log without asking Redis: the figures of the last
/// pass, and the topics the feed has seen since.
struct Cache {
    stats: LogStats,
    topics: HashMap<Box<str>, TopicStats>,
    /// Every topic with an event up to this id is in `topics`: a read of a
    /// pattern goes no further, so it cannot miss a topic just created.
    known_through: EventId,
}

/// The figures a pass returns.
struct Snapshot {
    stats: LogStats,
    topics: HashMap<Box<str>, TopicStats>,
}

impl Cache {
    fn apply(&mut self, snapshot: Snapshot) {
        let head = snapshot.stats.head;
        let mut topics = snapshot.topics;
        // Topics the feed saw after the pass's snapshot are not in it yet.
        for (name, topic) in self.topics.drain() {
            if topic.last_id > head && !topics.contains_key(&name) {
                topics.insert(name, topic);
            }
        }
        self.topics = topics;
        self.stats = snapshot.stats;
        self.known_through = self.known_through.max(head);
    }

    /// The feed read `event`.
    fn saw(&mut self, event: &Event) {
        let topic = self
            .topics
            .entry(event.topic.clone())
            .or_insert_with(|| TopicStats {
                name: event.topic.clone(),
                last_id: event.id,
                retained: 0,
            });
        topic.retained += 1;
        topic.last_id = topic.last_id.max(event.id);
        self.known_through = self.known_through.max(event.id);
    }
}

/// The URL without its password, for messages.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

/// Limits as script arguments: -1 for none.
fn limit_args(limits: &Retention) -> [i64; 3] {
    let or_none = |value: u64| i64::try_from(value).unwrap_or(-1);
    [
        or_none(limits.max_events as u64),
        or_none(u64::try_from(limits.max_age.as_millis()).unwrap_or(u64::MAX)),
        or_none(limits.max_bytes),
    ]
}

fn bad_reply(what: &str) -> RedisError {
    RedisError::from((
        redis::ErrorKind::Parse,
        "unexpected reply",
        what.to_string(),
    ))
}

fn array(value: Value) -> Result<Vec<Value>, RedisError> {
    match value {
        Value::Array(items) => Ok(items),
        Value::Nil => Ok(Vec::new()),
        _ => Err(bad_reply("not an array")),
    }
}

fn text(value: Value) -> Result<String, RedisError> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes).map_err(|_| bad_reply("not UTF-8")),
        Value::SimpleString(text) => Ok(text),
        Value::Int(n) => Ok(n.to_string()),
        _ => Err(bad_reply("not a string")),
    }
}

fn int(value: Value) -> Result<i64, RedisError> {
    match value {
        Value::Int(n) => Ok(n),
        other => text(other)?
            .parse()
            .map_err(|_| bad_reply("not an integer")),
    }
}

fn event_id(text: &str) -> Result<EventId, RedisError> {
    text.parse().map_err(|_| bad_reply("not an id"))
}

/// An id, or `None` for ''.
fn optional_id(value: Value) -> Result<Option<EventId>, RedisError> {
    let text = text(value)?;
    (!text.is_empty()).then(|| event_id(&text)).transpose()
}

/// A hash as HGETALL gives it: field, value, field, value…
fn pairs(value: Value) -> Result<Vec<(String, String)>, RedisError> {
    let mut items = array(value)?.into_iter();
    let mut out = Vec::new();
    while let (Some(field), Some(value)) = (items.next(), items.next()) {
        out.push((text(field)?, text(value)?));
    }
    Ok(out)
}

/// The log's marks, from its meta hash.
struct Meta {
    lost_through: EventId,
    last_id: EventId,
    bytes: u64,
    /// Per topic: the highest id its own rule removed.
    topic_lost: Vec<(String, EventId)>,
}

impl Meta {
    /// An empty meta hash (Redis lost its data) counts as a log that holds
    /// nothing: every position is a gap.
    fn parse(value: Value) -> Result<Meta, RedisError> {
        let mut meta = Meta {
            lost_through: EventId::ZERO,
            last_id: EventId::ZERO,
            bytes: 0,
            topic_lost: Vec::new(),
        };
        for (field, value) in pairs(value)? {
            match field.as_str() {
                "lost_through" => meta.lost_through = event_id(&value)?,
                "last_id" => meta.last_id = event_id(&value)?,
                "bytes" => meta.bytes = value.parse().unwrap_or(0),
                _ => {
                    if let Some(topic) = field.strip_prefix("lost/") {
                        meta.topic_lost.push((topic.to_string(), event_id(&value)?));
                    }
                }
            }
        }
        Ok(meta)
    }
}

/// The id of a stream entry.
fn entry_id(value: &Value) -> Result<EventId, RedisError> {
    match value {
        Value::Array(parts) => event_id(&text(parts.first().cloned().unwrap_or(Value::Nil))?),
        _ => Err(bad_reply("not a stream entry")),
    }
}

/// An event as XRANGE gives it: its id and its fields.
fn entry(value: Value) -> Result<Event, RedisError> {
    let mut parts = array(value)?.into_iter();
    let (Some(id), Some(fields)) = (parts.next(), parts.next()) else {
        return Err(bad_reply("not a stream entry"));
    };
    let id = event_id(&text(id)?)?;
    let (mut topic, mut kind, mut data) = (None, None, None);
    for (field, value) in pairs(fields)? {
        match field.as_str() {
            "topic" => topic = Some(value),
            "type" => kind = Some(value),
            "data" => data = Some(value),
            _ => {}
        }
    }
    let (Some(topic), Some(data)) = (topic, data) else {
        return Err(bad_reply("an event without topic or data"));
    };
    let data = RawValue::from_string(data).map_err(|_| bad_reply("data is not JSON"))?;
    Ok(new_event(
        id,
        NewEvent {
            topic,
            kind,
            data,
            key: None,
        },
    ))
}

/// An event's time is its id's millisecond, on Redis's clock, so that
/// every node gives it the same.
fn new_event(id: EventId, new: NewEvent) -> Event {
    let time = DateTime::from_timestamp_millis(i64::try_from(id.ms).unwrap_or(i64::MAX))
        .unwrap_or_default();
    Event::new(id, time, new)
}

fn snapshot(value: Value) -> Result<Snapshot, RedisError> {
    let mut parts = array(value)?.into_iter();
    let mut next = || parts.next().ok_or_else(|| bad_reply("short reply"));
    let meta = Meta::parse(next()?)?;
    let retained = usize::try_from(int(next()?)?).unwrap_or(0);
    let oldest = optional_id(next()?)?;
    let counts = pairs(next()?)?;
    let last: HashMap<String, String> = pairs(next()?)?.into_iter().collect();
    let mut topics = HashMap::new();
    for (name, count) in counts {
        let Some(last_id) = last.get(&name) else {
            continue;
        };
        let name: Box<str> = name.into();
        topics.insert(
            name.clone(),
            TopicStats {
                name,
                last_id: event_id(last_id)?,
                retained: count.parse().unwrap_or(0),
            },
        );
    }
    Ok(Snapshot {
        stats: LogStats {
            retained,
            bytes: meta.bytes,
            oldest,
            head: meta.last_id,
        },
        topics,
    })
}

impl RedisLog {
    /// Connects to Redis, creates the log's marks if it is new, and reads
    /// its figures. Fails, with the reason, when Redis cannot be reached:
    /// a node must know where the shared log stands before it serves.
    pub async fn connect(options: RedisOptions) -> anyhow::Result<RedisLog> {
        let shown = redacted(&options.url);
        let client = Client::open(options.url.as_str())
            .map_err(|e| anyhow::anyhow!("invalid redis_url {shown}: {e}"))?;
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(0)
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        let conn = ConnectionManager::new_with_config(client.clone(), config)
            .await
            .map_err(|e| anyhow::anyhow!("cannot connect to Redis at {shown}: {e}"))?;
        let script = |body: &str| Script::new(&[PRELUDE, body].concat());
        let log = RedisLog {
            client,
            conn,
            prefix: options.prefix,
            window_ms: u64::try_from(options.idempotency_window.as_millis()).unwrap_or(u64::MAX),
            rules: options.retention,
            scripts: Arc::new(Scripts {
                append: script(APPEND),
                tick: script(TICK),
                read: script(READ),
                feed: script(FEED),
            }),
            shared: Arc::new(Shared {
                healthy: AtomicBool::new(true),
                cache: Mutex::new(Cache {
                    stats: LogStats {
                        retained: 0,
                        bytes: 0,
                        oldest: None,
                        head: EventId::ZERO,
                    },
                    topics: HashMap::new(),
                    known_through: EventId::ZERO,
                }),
            }),
        };
        log.tick()
            .await
            .map_err(|e| anyhow::anyhow!("cannot use Redis at {shown}: {e}"))?;
        let stats = log.stats();
        tracing::info!(
            redis = %shown,
            prefix = %log.prefix,
            events = stats.retained,
            last_id = %stats.head,
            "redis log connected"
        );
        Ok(log)
    }

    /// Runs a script on the shared connection, and records whether Redis
    /// answered.
    async fn call(&self, invocation: &ScriptInvocation<'_>) -> Result<Value, RedisError> {
        let result = invocation.invoke_async(&mut self.conn.clone()).await;
        self.shared.note(result.as_ref().err());
        result
    }

    /// Applies retention and refreshes the cached figures.
    async fn tick(&self) -> Result<(), RedisError> {
        let mut invocation = self.scripts.tick.prepare_invoke();
        invocation
            .arg(&self.prefix)
            .arg(&limit_args(&self.rules.global)[..]);
        let ruled: Vec<(Box<str>, Retention)> = {
            let cache = self.shared.cache.lock();
            cache
                .topics
                .keys()
                .filter_map(|topic| {
                    let rule = self.rules.rule_for(topic)?;
                    Some((topic.clone(), self.rules.topics[rule].1))
                })
                .collect()
        };
        for (topic, limits) in &ruled {
            invocation.arg(&**topic).arg(&limit_args(limits)[..]);
        }
        let snapshot = snapshot(self.call(&invocation).await?)?;
        self.shared.cache.lock().apply(snapshot);
        Ok(())
    }

    /// The topics a read merges (`None`: read the main stream), and how far
    /// it may read.
    fn plan_read(&self, request: &ReadRequest<'_>) -> (Option<Vec<String>>, Option<EventId>) {
        let filter = request.filter;
        if let Some(exact) = filter.exact_topics() {
            let topics: Vec<String> = exact.map(String::from).collect();
            return (
                (topics.len() <= INDEX_TOPICS).then_some(topics),
                request.until,
            );
        }
        let cache = self.shared.cache.lock();
        let topics: Vec<String> = cache
            .topics
            .keys()
            .filter(|topic| filter.matches(topic))
            .map(|topic| topic.to_string())
            .collect();
        if topics.len() > INDEX_TOPICS {
            return (None, request.until);
        }
        let until = match request.until {
            Some(until) => until.min(cache.known_through),
            None => cache.known_through,
        };
        (Some(topics), Some(until))
    }
}

impl Shared {
    /// Records the outcome of a round trip, and logs when Redis is lost or
    /// back.
    fn note(&self, error: Option<&RedisError>) {
        let ok = error.is_none();
        if self.healthy.swap(ok, Ordering::Relaxed) != ok {
            match error {
                None => tracing::info!("redis is reachable again"),
                Some(error) => tracing::warn!(%error, "redis is unreachable"),
            }
        }
    }
}

/// What a publisher is told when an append fails: whether its events may
/// have been stored all the same.
fn append_error(error: &RedisError) -> LogError {
    let unsent = error.is_connection_refusal()
        || (!error.is_io_error() && !error.is_connection_dropped() && !error.is_timeout());
    LogError::Unavailable(if unsent {
        format!("redis cannot take the events, nothing was stored: {error}")
    } else {
        format!(
            "the connection to redis failed during the write, so the events may have \
             been stored: {error} (a retry with the same idempotency key tells)"
        )
    })
}

fn read_error(error: &RedisError) -> LogError {
    LogError::Unavailable(format!("redis cannot be read: {error}"))
}

#[async_trait]
impl EventLog for RedisLog {
    async fn append(&self, batch: Vec<NewEvent>) -> Result<Vec<Appended>, LogError> {
        let mut invocation = self.scripts.append.prepare_invoke();
        invocation
            .arg(&self.prefix)
            .arg(self.window_ms)
            .arg(&limit_args(&self.rules.global)[..]);
        let none = Retention {
            max_events: usize::MAX,
            max_age: Duration::MAX,
            max_bytes: u64::MAX,
        };
        for event in &batch {
            let rule = self.rules.rule_for(&event.topic);
            let limits = rule.map_or(none, |rule| self.rules.topics[rule].1);
            invocation
                .arg(&event.topic)
                .arg(event.kind.as_deref().unwrap_or(""))
                .arg(event.data.get())
                .arg(event.key.as_deref().unwrap_or(""))
                .arg(&limit_args(&limits)[..]);
        }
        let reply = self.call(&invocation).await.map_err(|e| append_error(&e))?;
        let parse = || -> Result<Vec<Appended>, RedisError> {
            let mut items = array(reply)?.into_iter();
            let mut out = Vec::with_capacity(batch.len());
            for mut new in batch {
                let (Some(id), Some(duplicate)) = (items.next(), items.next()) else {
                    return Err(bad_reply("short append reply"));
                };
                let id = event_id(&text(id)?)?;
                out.push(if int(duplicate)? == 1 {
                    Appended::Duplicate(id)
                } else {
                    new.key = None;
                    Appended::New(Arc::new(new_event(id, new)))
                });
            }
            Ok(out)
        };
        // The events are stored: an unreadable reply is a bug, but the
        // publisher must not be told that nothing was stored.
        parse().map_err(|e| {
            LogError::Unavailable(format!(
                "the events were stored but redis's reply was unreadable: {e}"
            ))
        })
    }

    async fn read(&self, request: ReadRequest<'_>) -> Result<ReadPage, LogError> {
        let (topics, until) = self.plan_read(&request);
        let mut invocation = self.scripts.read.prepare_invoke();
        invocation
            .arg(&self.prefix)
            .arg(request.after.map_or(String::new(), |id| id.to_string()))
            .arg(until.map_or(String::new(), |id| id.to_string()));
        match &topics {
            Some(topics) => invocation.arg(request.limit).arg("topics").arg(&topics[..]),
            None => invocation.arg(SCAN_LIMIT).arg("scan"),
        };
        let reply = self.call(&invocation).await.map_err(|e| read_error(&e))?;
        let parse = || -> Result<ReadPage, RedisError> {
            let mut parts = array(reply)?.into_iter();
            let mut next = || parts.next().ok_or_else(|| bad_reply("short read reply"));
            let meta = Meta::parse(next()?)?;
            let oldest = optional_id(next()?)?;
            let entries = array(next()?)?;
            let done = int(next()?)? == 1;
            let lost = meta
                .topic_lost
                .iter()
                .filter(|(topic, _)| request.filter.matches(topic))
                .map(|(_, id)| *id)
                .fold(meta.lost_through, EventId::max);
            let mut page = ReadPage {
                gap: gap_after(request.after, lost, meta.last_id, oldest),
                done,
                ..ReadPage::default()
            };
            let scanned = entries.len();
            for entry in entries {
                let event = self::entry(entry)?;
                if topics.is_none() && page.events.len() == request.limit {
                    page.done = false;
                    return Ok(page);
                }
                page.cursor = Some(event.id);
                if topics.is_some() || request.filter.matches(&event.topic) {
                    page.events.push(Arc::new(event));
                }
            }
            if topics.is_none() {
                page.done = scanned < SCAN_LIMIT;
            }
            Ok(page)
        };
        parse().map_err(|e| read_error(&e))
    }

    async fn enforce_retention(&self) {
        if let Err(error) = self.tick().await {
            tracing::debug!(%error, "retention pass failed");
        }
    }

    fn stats(&self) -> LogStats {
        self.shared.cache.lock().stats
    }

    fn topics(&self) -> Vec<TopicStats> {
        self.shared.cache.lock().topics.values().cloned().collect()
    }

    fn is_healthy(&self) -> bool {
        self.shared.healthy.load(Ordering::Relaxed)
    }

    fn feed(&self) -> Option<Feed> {
        let after = self.stats().head;
        let (tx, batches) = mpsc::channel(FEED_QUEUE);
        let reader = FeedReader {
            client: self.client.clone(),
            events: format!("{}:events", self.prefix),
            prefix: self.prefix.clone(),
            scripts: self.scripts.clone(),
            shared: self.shared.clone(),
            position: after,
            reported: Reported::default(),
            tx,
        };
        tokio::spawn(reader.run());
        Some(Feed { after, batches })
    }
}

/// Reads every event of the shared log once, in id order, and hands it to
/// the hub.
struct FeedReader {
    client: Client,
    prefix: String,
    events: String,
    scripts: Arc<Scripts>,
    shared: Arc<Shared>,
    /// The last id read: the next read starts after it, after an outage too.
    position: EventId,
    reported: Reported,
    tx: mpsc::Sender<FeedBatch>,
}

impl FeedReader {
    /// Runs until the hub stops taking batches.
    async fn run(mut self) {
        let mut conn: Option<MultiplexedConnection> = None;
        // Whether the last read reached the end: then wait for more.
        let mut wait = false;
        let mut down = false;
        while !self.tx.is_closed() {
            let result = match &mut conn {
                Some(conn) => self.step(conn, &mut wait).await,
                None => {
                    let config = AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(CONNECT_TIMEOUT))
                        .set_response_timeout(Some(FEED_BLOCK + RESPONSE_TIMEOUT));
                    self.client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await
                        .map(|c| {
                            conn = Some(c);
                        })
                }
            };
            match result {
                Ok(()) if down => {
                    down = false;
                    tracing::info!(after = %self.position, "feed: redis is back, reading on");
                }
                Ok(()) => {}
                Err(error) => {
                    if !down {
                        down = true;
                        tracing::warn!(
                            %error,
                            after = %self.position,
                            "feed: redis is unreachable; will read on from the last id"
                        );
                    }
                    conn = None;
                    wait = false;
                    tokio::select! {
                        _ = self.tx.closed() => return,
                        _ = tokio::time::sleep(RETRY) => {}
                    }
                }
            }
        }
    }

    /// Waits for events after the position if the last read found none,
    /// then reads the next ones and hands them on.
    async fn step(
        &mut self,
        conn: &mut MultiplexedConnection,
        wait: &mut bool,
    ) -> Result<(), RedisError> {
        if *wait {
            let mut xread = redis::cmd("XREAD");
            xread
                .arg("COUNT")
                .arg(1)
                .arg("BLOCK")
                .arg(FEED_BLOCK.as_millis() as u64)
                .arg("STREAMS")
                .arg(&self.events)
                .arg(self.position.to_string());
            let block = xread.query_async::<Value>(conn);
            let woke = tokio::select! {
                _ = self.tx.closed() => return Ok(()),
                woke = block => woke?,
            };
            if woke == Value::Nil {
                return Ok(());
            }
        }
        let reply: Value = self
            .scripts
            .feed
            .arg(&self.prefix)
            .arg(self.position.to_string())
            .arg(FEED_CHUNK)
            .invoke_async(conn)
            .await?;
        let mut parts = array(reply)?.into_iter();
        let (Some(meta), Some(entries)) = (parts.next(), parts.next()) else {
            return Err(bad_reply("short feed reply"));
        };
        let missed = self.reported.missed(&Meta::parse(meta)?, self.position);
        let entries = array(entries)?;
        *wait = entries.len() < FEED_CHUNK;
        let mut events = Vec::with_capacity(entries.len());
        for value in entries {
            let id = entry_id(&value)?;
            match entry(value) {
                Ok(event) => events.push(Arc::new(event)),
                // Not written by Sluice: skipped, never read again.
                Err(error) => {
                    tracing::warn!(%error, %id, "feed: skipped an entry that is not an event")
                }
            }
            self.position = id;
        }
        {
            let mut cache = self.shared.cache.lock();
            for event in &events {
                cache.saw(event);
            }
        }
        if (missed.is_some() || !events.is_empty())
            && self.tx.send(FeedBatch { missed, events }).await.is_err()
        {
            tracing::debug!("feed: the hub stopped");
        }
        Ok(())
    }
}

/// The retention marks (the global one under "") that a feed reported.
#[derive(Default)]
struct Reported(HashMap<String, EventId>);

impl Reported {
    /// Which events retention removed before a feed at `position` read
    /// them: those up to a mark above the position, not reported yet (a
    /// mark is the id of an event removed, so the feed never read it).
    fn missed(&mut self, meta: &Meta, position: EventId) -> Option<Missed> {
        self.0.retain(|_, id| *id > position);
        let marks = std::iter::once(("", meta.lost_through))
            .chain(meta.topic_lost.iter().map(|(t, id)| (t.as_str(), *id)));
        let mut any = false;
        let mut topics = Vec::new();
        for (topic, mark) in marks {
            if mark <= position || self.0.get(topic).is_some_and(|r| *r >= mark) {
                continue;
            }
            self.0.insert(topic.to_string(), mark);
            if topic.is_empty() {
                any = true;
            } else {
                topics.push(topic.into());
            }
        }
        if any {
            Some(Missed::Any)
        } else {
            (!topics.is_empty()).then_some(Missed::Topics(topics))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(
            redacted("redis://:secret@127.0.0.1:6379/0"),
            "redis://***@127.0.0.1:6379/0"
        );
        assert_eq!(redacted("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }

    fn id(ms: u64) -> EventId {
        EventId { ms, seq: 0 }
    }

    fn meta(lost_through: u64, topics: &[(&str, u64)]) -> Meta {
        Meta {
            lost_through: id(lost_through),
            last_id: id(100),
            bytes: 0,
            topic_lost: topics
                .iter()
                .map(|(t, ms)| (t.to_string(), id(*ms)))
                .collect(),
        }
    }

    #[test]
    fn a_feed_reports_marks_above_its_position_once() {
        let mut reported = Reported::default();
        assert_eq!(reported.missed(&meta(10, &[("a", 12)]), id(20)), None);
        assert_eq!(
            reported.missed(&meta(10, &[("a", 25), ("b", 12)]), id(20)),
            Some(Missed::Topics(vec!["a".into()]))
        );
        assert_eq!(
            reported.missed(&meta(10, &[("a", 25)]), id(20)),
            None,
            "once"
        );
        // Another topic's mark below one already reported is still news.
        assert_eq!(
            reported.missed(&meta(10, &[("a", 25), ("b", 22)]), id(20)),
            Some(Missed::Topics(vec!["b".into()]))
        );
        assert_eq!(
            reported.missed(&meta(30, &[("a", 25)]), id(20)),
            Some(Missed::Any)
        );
        assert_eq!(reported.missed(&meta(30, &[]), id(40)), None);
    }

    #[test]
    fn a_pass_keeps_the_topics_the_feed_saw_after_it() {
        let stats = |head| LogStats {
            retained: 0,
            bytes: 0,
            oldest: None,
            head: id(head),
        };
        let topic = |name: &str, last| TopicStats {
            name: name.into(),
            last_id: id(last),
            retained: 1,
        };
        let mut cache = Cache {
            stats: stats(0),
            topics: HashMap::new(),
            known_through: id(0),
        };
        for (name, last) in [("old", 5), ("gone", 7), ("new", 12)] {
            cache.topics.insert(name.into(), topic(name, last));
        }
        let snapshot = Snapshot {
            stats: stats(10),
            topics: [("old".into(), topic("old", 5))].into_iter().collect(),
        };
        cache.apply(snapshot);
        let mut names: Vec<&str> = cache.topics.keys().map(|t| &**t).collect();
        names.sort();
        assert_eq!(names, ["new", "old"], "gone was emptied by retention");
        assert_eq!(cache.known_through, id(10));
    }

    #[test]
    fn unlimited_is_minus_one() {
        let limits = Retention {
            max_events: usize::MAX,
            max_age: Duration::MAX,
            max_bytes: u64::MAX,
        };
        assert_eq!(limit_args(&limits), [-1, -1, -1]);
        let limits = Retention {
            max_events: 10,
            max_age: Duration::from_secs(2),
            max_bytes: 100,
        };
        assert_eq!(limit_args(&limits), [10, 2000, 100]);
    }
}
