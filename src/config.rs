//! Every setting of `sluice serve`, in one struct, from one place.
//!
//! Sources, lowest precedence first: built-in defaults, the TOML file given
//! by `--config`, the conventional `HOST`/`PORT`/`LOG_LEVEL` variables,
//! `SLUICE_<SETTING>` variables, command-line flags. Keys are the flag names
//! with `_` for `-` (`--history-max-events` is `history_max_events` in TOML
//! and `SLUICE_HISTORY_MAX_EVENTS` in the environment).

use std::collections::HashSet;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use clap::{Args, ValueEnum};
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::log::{Retention, RetentionRules};
use crate::topic::{Pattern, PatternSet};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Where history lives: backends of one trait (`log::EventLog`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    /// In this process only: lost at exit.
    Memory,
    /// An embedded log in `data_dir` (fjall): survives restarts and crashes.
    Disk,
    /// Redis Streams at `redis_url`, shared by every node pointing there.
    Redis,
}

impl StorageKind {
    pub fn name(self) -> &'static str {
        match self {
            StorageKind::Memory => "memory",
            StorageKind::Disk => "disk",
            StorageKind::Redis => "redis",
        }
    }
}

/// When the disk log syncs to stable storage (see docs/API.md for exactly
/// what each promises).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Fsync {
    /// Before every acknowledgement (concurrent publishes share one sync).
    Always,
    /// Every `fsync_interval`; each publish is written to the OS before it
    /// is acknowledged.
    Interval,
}

/// The longest duration a setting may have. The hub adds some of them to
/// the clock, whose readings end about 292 billion years on (a
/// `header_timeout` of 500 billion years panicked every connection's
/// task); anything over a century is a mistake, refused with its name.
const LONGEST_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// The resolved configuration of a running hub.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on, `host:port`.
    pub listen: String,
    /// A `tracing` filter: `info`, `debug`, `sluice=debug,tower_http=warn`…
    pub log_level: String,
    pub log_format: LogFormat,
    pub storage: StorageKind,
    /// Events kept in history, all topics together.
    pub history_max_events: usize,
    /// Age after which events leave history.
    #[serde(with = "humantime_serde")]
    pub history_max_age: Duration,
    /// Total size of the events kept in history.
    pub history_max_bytes: ByteSize,
    /// Where the disk log keeps its files (`storage = "disk"`).
    pub data_dir: PathBuf,
    /// When the disk log syncs to stable storage.
    pub fsync: Fsync,
    /// How often `fsync = "interval"` syncs.
    #[serde(with = "humantime_serde")]
    pub fsync_interval: Duration,
    /// The Redis that holds history (`storage = "redis"`):
    /// `redis://[user:password@]host:port/db`, or `rediss://` for TLS.
    pub redis_url: String,
    /// The first part of every Redis key: nodes with the same Redis and
    /// prefix form one hub.
    pub redis_prefix: String,
    /// Events a subscriber may have queued before it is cut off as too slow
    /// (four times that while it waits for the hub: `hub::mailbox::LATE_ROOM`).
    pub subscriber_buffer: usize,
    /// The reconnection delay SSE clients are told to use.
    pub retry_ms: u64,
    /// Silence after which a keep-alive goes out on a stream.
    #[serde(with = "humantime_serde")]
    pub keepalive: Duration,
    /// Longest a live event may wait to share a socket write with the
    /// events after it on the same connection; zero writes each at once.
    /// A connection's first event in a period goes out at once.
    ///
    /// 15 ms by default: under one frame of a 60 Hz display, and the
    /// longest delay whose p99 publish-to-receive latency stays under 20 ms
    /// with room to spare (16-18 ms at 1,000 events/s to 1,000 subscribers
    /// on every host measured since the tick writes lanes), for a third
    /// fewer socket writes than 10 ms, the costliest part of a delivery
    /// (docs/BENCHMARKS.md, "What a write delay buys").
    #[serde(with = "humantime_serde")]
    pub write_delay: Duration,
    /// Topics and patterns one subscription may name.
    pub max_topics: usize,
    /// Largest request body accepted.
    pub max_body: ByteSize,
    /// Origins allowed by CORS, comma-separated, or `*`.
    pub cors_origins: String,
    /// Kernel send buffer of each connection (SO_SNDBUF); the kernel's
    /// default when unset. Smaller values bound the memory a stalled reader
    /// holds and let the hub notice it sooner.
    pub socket_send_buffer: Option<ByteSize>,
    /// Connections open at once, all clients together; beyond, a new
    /// connection is answered `503` and closed.
    pub max_connections: usize,
    /// Connections open at once from one client address (an IPv6 client's
    /// /64); beyond, `429` and closed.
    pub max_connections_per_ip: usize,
    /// Requests one HTTP/2 connection may have open at once (its
    /// concurrent streams: each SSE or NDJSON subscription is one).
    pub max_streams_per_connection: u32,
    /// Publishes per second allowed to one publisher (a token's subject, or
    /// else a client address), in bursts of up to one second's worth; 0 for
    /// no limit.
    pub publish_rate: u32,
    /// Longest URL (path and query) accepted.
    pub max_url_length: ByteSize,
    /// Largest request header section (names and values) accepted.
    pub max_header_size: ByteSize,
    /// Time a client has to send a request's headers (and, on a new
    /// connection, to finish the TLS handshake and send its first request).
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// PEM certificate chain for HTTPS; with `tls_key`.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for HTTPS; with `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Announce connections and subscription changes on `$sys/clients` and
    /// `$sys/subscriptions` (stored in history like any event).
    pub lifecycle_events: bool,
    /// Run the demo producers (`producers`): live sample data on real topics.
    pub demo: bool,
    /// The demo producers to run, comma-separated; each runs only if named.
    pub demo_producers: String,
    /// Ticker symbols of the `trades` producer, comma-separated; each is a
    /// topic segment (`trades/<SYMBOL>`).
    pub demo_symbols: String,
    /// Data set the `measurements` producer replays (JSON array or NDJSON);
    /// the sample embedded in the binary when unset.
    pub dataset: Option<PathBuf>,
    /// How long a publish's idempotency key is remembered: a retry with the
    /// same key within it is answered with the original id.
    #[serde(with = "humantime_serde")]
    pub idempotency_window: Duration,
    /// The HS256 secret that signs the JWTs this hub accepts.
    pub jwt_secret: Option<Secret>,
    /// A PEM file with the RSA or EC public key that verifies the JWTs
    /// this hub accepts (RS256, ES256); instead of `jwt_secret`.
    pub jwt_public_key: Option<PathBuf>,
    /// The cookie that may carry a JWT.
    pub jwt_cookie: String,
    /// Topics read only with a grant: patterns, comma-separated (with the
    /// `[[topics]]` tables that say `private = true`).
    pub private_topics: String,
    /// Subscribing needs a token even to public topics.
    pub require_subscribe_token: bool,
    /// Without a key, accept publishes and admin requests from any
    /// address, not only from loopback ones.
    pub allow_anonymous_publish: bool,
    /// Settings for the topics that match a pattern: the `[[topics]]`
    /// tables of the config file, the first matching one applying.
    pub topics: Vec<TopicSettings>,
}

/// A secret setting: shown as `***` in debug output, so it never reaches
/// a log.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// A `[[topics]]` table: settings for each topic matching `pattern`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicSettings {
    /// A topic or pattern, as in a subscription (`metrics/**`).
    pub pattern: String,
    /// Events kept per matching topic.
    pub history_max_events: Option<usize>,
    /// Age after which a matching topic's events leave history.
    #[serde(default, with = "humantime_serde")]
    pub history_max_age: Option<Duration>,
    /// Total size kept per matching topic.
    pub history_max_bytes: Option<ByteSize>,
    /// Matching topics are read only with a grant (see `private_topics`).
    #[serde(default)]
    pub private: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8000".into(),
            log_level: "info".into(),
            log_format: LogFormat::Text,
            storage: StorageKind::Disk,
            history_max_events: 10_000,
            history_max_age: Duration::from_secs(24 * 3600),
            history_max_bytes: ByteSize::gib(1),
            data_dir: "./sluice-data".into(),
            fsync: Fsync::Interval,
            fsync_interval: Duration::from_millis(100),
            redis_url: "redis://127.0.0.1:6379".into(),
            redis_prefix: "sluice".into(),
            subscriber_buffer: 1000,
            retry_ms: 5000,
            keepalive: Duration::from_secs(15),
            write_delay: Duration::from_millis(15),
            max_topics: 100,
            max_body: ByteSize::mib(1),
            cors_origins: "*".into(),
            socket_send_buffer: None,
            max_connections: 10_000,
            max_connections_per_ip: 256,
            max_streams_per_connection: 100,
            publish_rate: 0,
            max_url_length: ByteSize::kib(8),
            max_header_size: ByteSize::kib(16),
            header_timeout: Duration::from_secs(10),
            tls_cert: None,
            tls_key: None,
            lifecycle_events: true,
            demo: false,
            demo_producers: crate::producers::NAMES.join(","),
            demo_symbols: "AAPL,GOOGL".into(),
            dataset: None,
            idempotency_window: Duration::from_secs(600),
            jwt_secret: None,
            jwt_public_key: None,
            jwt_cookie: "sluice_token".into(),
            private_topics: String::new(),
            require_subscribe_token: false,
            allow_anonymous_publish: false,
            topics: Vec::new(),
        }
    }
}

/// The flags of `sluice serve`. Every one is optional so that an absent flag
/// lets a lower source decide; the values are checked when merged.
#[derive(Debug, Clone, Default, Args, Serialize)]
pub struct ServeArgs {
    /// TOML file with settings (keys as the flags, with `_` for `-`).
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8000; HOST and PORT honoured].
    #[arg(long, value_name = "HOST:PORT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// Log filter, e.g. info or debug [default: info; LOG_LEVEL honoured].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
    /// Log line format [default: text].
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
    /// History backend [default: disk].
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageKind>,
    /// Events kept in history [default: 10000].
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history_max_events: Option<usize>,
    /// Age after which events leave history, e.g. 24h, 30m [default: 24h].
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history_max_age: Option<String>,
    /// Total size of history, e.g. 512MiB [default: 1GiB].
    #[arg(long, value_name = "SIZE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history_max_bytes: Option<String>,
    /// Directory of the disk log [default: ./sluice-data].
    #[arg(long, value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// When the disk log syncs: always or interval [default: interval].
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fsync: Option<Fsync>,
    /// Sync period of --fsync interval, e.g. 100ms [default: 100ms].
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fsync_interval: Option<String>,
    /// Redis of --storage redis [default: redis://127.0.0.1:6379].
    #[arg(long, value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_url: Option<String>,
    /// Prefix of the Redis keys; nodes sharing it form one hub [default:
    /// sluice].
    #[arg(long, value_name = "PREFIX")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_prefix: Option<String>,
    /// Events queued per subscriber before it is cut off as too slow;
    /// four times that while the hub itself is behind [default: 1000].
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscriber_buffer: Option<usize>,
    /// Reconnection delay told to SSE clients, in ms [default: 5000].
    #[arg(long, value_name = "MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_ms: Option<u64>,
    /// Keep-alive after this much silence on a stream [default: 15s].
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keepalive: Option<String>,
    /// Longest a live event waits to share a write with the next ones, 0
    /// for none [default: 15ms].
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub write_delay: Option<String>,
    /// Topics and patterns per subscription [default: 100].
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_topics: Option<usize>,
    /// Largest request body, e.g. 1MiB [default: 1MiB].
    #[arg(long, value_name = "SIZE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_body: Option<String>,
    /// CORS origins, comma-separated, or * [default: *].
    #[arg(long, value_name = "ORIGINS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cors_origins: Option<String>,
    /// Per-connection kernel send buffer, e.g. 64KiB [default: kernel's].
    #[arg(long, value_name = "SIZE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket_send_buffer: Option<String>,
    /// Connections open at once, all clients [default: 10000].
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    /// Connections open at once from one client address [default: 256].
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections_per_ip: Option<usize>,
    /// Concurrent requests on one HTTP/2 connection [default: 100].
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_streams_per_connection: Option<u32>,
    /// Publishes per second per publisher (token subject or address); 0 for
    /// no limit [default: 0].
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publish_rate: Option<u32>,
    /// Longest URL accepted, e.g. 8KiB [default: 8KiB].
    #[arg(long, value_name = "SIZE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_url_length: Option<String>,
    /// Largest request header section, e.g. 16KiB [default: 16KiB].
    #[arg(long, value_name = "SIZE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_header_size: Option<String>,
    /// Time to send a request's headers, e.g. 10s [default: 10s].
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header_timeout: Option<String>,
    /// PEM certificate chain: serve HTTPS (with --tls-key).
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// Publish lifecycle events on $sys/clients and $sys/subscriptions:
    /// true or false [default: true].
    #[arg(long, value_name = "BOOL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lifecycle_events: Option<bool>,
    /// Run the demo producers: live sample data on real topics.
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub demo: bool,
    /// Demo producers to run, comma-separated [default: all of metrics,
    /// logs, alerts, heartbeat, trades, clock, measurements].
    #[arg(long, value_name = "NAMES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub demo_producers: Option<String>,
    /// Symbols of the demo trades, comma-separated [default: AAPL,GOOGL].
    #[arg(long, value_name = "SYMBOLS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub demo_symbols: Option<String>,
    /// Data set for the demo measurements: JSON array or NDJSON [default:
    /// a built-in sample].
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dataset: Option<PathBuf>,
    /// How long idempotency keys are remembered, e.g. 10m [default: 10m].
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_window: Option<String>,
    /// HS256 secret of the JWTs accepted, at least 32 bytes [default: none,
    /// see docs/API.md#security].
    #[arg(long, value_name = "SECRET")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt_secret: Option<String>,
    /// PEM file of the RSA or EC public key of the JWTs accepted (RS256,
    /// ES256), instead of --jwt-secret.
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt_public_key: Option<PathBuf>,
    /// Cookie that may carry the JWT [default: sluice_token].
    #[arg(long, value_name = "NAME")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt_cookie: Option<String>,
    /// Topics read only with a grant: comma-separated patterns, e.g.
    /// 'secret/**,users/*' (needs a JWT key).
    #[arg(long, value_name = "PATTERNS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub private_topics: Option<String>,
    /// Subscribing needs a token even to public topics (needs a JWT key).
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub require_subscribe_token: bool,
    /// Without a JWT key, accept publishes and admin requests from any
    /// address, not only loopback ones.
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub allow_anonymous_publish: bool,
}

impl Config {
    /// Merges all sources, in order of precedence.
    pub fn load(args: &ServeArgs) -> anyhow::Result<Config> {
        // Settings with a value of their own; tables (`topics`) live only
        // in the file.
        let known: HashSet<String> = serde_json::to_value(Config::default())
            .ok()
            .and_then(|v| {
                v.as_object().map(|o| {
                    o.iter()
                        .filter(|(_, value)| !value.is_array())
                        .map(|(key, _)| key.clone())
                        .collect()
                })
            })
            .unwrap_or_default();
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = &args.config {
            if !path.exists() {
                anyhow::bail!("config file {} does not exist", path.display());
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        if let Some(listen) = conventional_listen() {
            figment = figment.merge(Serialized::default("listen", listen));
        }
        figment = figment
            .merge(Env::raw().only(&["LOG_LEVEL"]).lowercase(true))
            .merge(
                Env::prefixed("SLUICE_")
                    .filter(move |key| known.contains(&key.as_str().to_ascii_lowercase())),
            )
            .merge(Serialized::defaults(args));
        Self::checked(figment)
    }

    /// The settings of a config file's text over the defaults, checked as
    /// at start: what `--config` gives, without the environment and flags.
    pub fn from_toml(text: &str) -> anyhow::Result<Config> {
        Self::checked(
            Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(text)),
        )
    }

    fn checked(figment: Figment) -> anyhow::Result<Config> {
        let config: Config = figment.extract()?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> anyhow::Result<()> {
        let positive = [
            ("history_max_events", self.history_max_events),
            ("subscriber_buffer", self.subscriber_buffer),
            ("max_topics", self.max_topics),
            ("max_connections", self.max_connections),
            ("max_connections_per_ip", self.max_connections_per_ip),
            (
                "max_streams_per_connection",
                self.max_streams_per_connection as usize,
            ),
        ];
        for (name, value) in positive {
            if value == 0 {
                anyhow::bail!("{name} must be at least 1");
            }
        }
        let durations = [
            ("keepalive", self.keepalive),
            ("history_max_age", self.history_max_age),
            ("fsync_interval", self.fsync_interval),
            ("idempotency_window", self.idempotency_window),
            ("header_timeout", self.header_timeout),
        ];
        for (name, value) in durations {
            if value.is_zero() {
                anyhow::bail!("{name} must be longer than zero");
            }
            if value > LONGEST_DURATION {
                anyhow::bail!("{name} must be at most 100 years");
            }
        }
        if self.write_delay >= self.keepalive {
            anyhow::bail!("write_delay must be shorter than keepalive");
        }
        if self.redis_prefix.is_empty() || self.redis_prefix.contains(char::is_whitespace) {
            anyhow::bail!("redis_prefix must be a non-empty word without spaces");
        }
        self.retention_rules()?;
        self.check_auth()?;
        if self.max_body.as_u64() == 0 {
            anyhow::bail!("max_body must be at least 1 byte");
        }
        if self.max_url_length.as_u64() < 64 || self.max_header_size.as_u64() < 1024 {
            anyhow::bail!("max_url_length must be at least 64 bytes, max_header_size 1KiB");
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            anyhow::bail!("tls_cert and tls_key go together: give both, or neither");
        }
        let names = crate::producers::NAMES;
        if let Some(unknown) = self
            .demo_producer_list()
            .iter()
            .find(|n| !names.contains(n))
        {
            anyhow::bail!(
                "demo_producers: unknown producer {unknown:?}; known: {}",
                names.join(", ")
            );
        }
        let symbols = self.demo_symbol_list();
        if symbols.is_empty() {
            anyhow::bail!("demo_symbols must name at least one symbol");
        }
        for symbol in &symbols {
            if symbol.contains('/') || crate::topic::validate_publish_topic(symbol).is_err() {
                anyhow::bail!(
                    "demo_symbols: {symbol:?} is not a topic segment (A-Z a-z 0-9 . _ ~ : @ -)"
                );
            }
        }
        Ok(())
    }

    /// What history keeps: the global limits and each `[[topics]]` table's.
    pub fn retention_rules(&self) -> anyhow::Result<RetentionRules> {
        let global = Retention {
            max_events: self.history_max_events,
            max_age: self.history_max_age,
            max_bytes: self.history_max_bytes.as_u64(),
        };
        let mut topics = Vec::new();
        for (index, table) in self.topics.iter().enumerate() {
            let at = || format!("[[topics]] table {} ({:?})", index + 1, table.pattern);
            let pattern = Pattern::parse(&table.pattern)
                .map_err(|e| anyhow::anyhow!("{}: pattern: {e}", at()))?;
            if table.history_max_events == Some(0)
                || table
                    .history_max_age
                    .is_some_and(|age| age.is_zero() || age > LONGEST_DURATION)
                || table
                    .history_max_bytes
                    .is_some_and(|bytes| bytes.as_u64() == 0)
            {
                anyhow::bail!(
                    "{}: history limits must be above zero, and ages at most 100 years",
                    at()
                );
            }
            let limited = table.history_max_events.is_some()
                || table.history_max_age.is_some()
                || table.history_max_bytes.is_some();
            if !limited {
                // Only other settings (`private`): not a retention rule.
                continue;
            }
            let limits = Retention {
                max_events: table.history_max_events.unwrap_or(usize::MAX),
                max_age: table.history_max_age.unwrap_or(Duration::MAX),
                max_bytes: table.history_max_bytes.map_or(u64::MAX, |b| b.as_u64()),
            };
            topics.push((pattern, limits));
        }
        // The hub's own lifecycle events are bounded unless a table says
        // otherwise, so that connections coming and going cannot crowd the
        // publishers' events out of the global limits.
        let lifecycle = Retention {
            max_events: 1000,
            max_age: Duration::from_secs(3600),
            max_bytes: u64::MAX,
        };
        topics.push((
            Pattern::parse("$sys/**").expect("a valid pattern"),
            lifecycle,
        ));
        Ok(RetentionRules { global, topics })
    }

    /// The key, cookie and topic settings of authentication, which
    /// `auth::Auth` reads: private topics and a required token make sense
    /// only with a key, and a key is one secret or one public key.
    fn check_auth(&self) -> anyhow::Result<()> {
        let has_key = match (&self.jwt_secret, &self.jwt_public_key) {
            (Some(_), Some(_)) => {
                anyhow::bail!("jwt_secret and jwt_public_key: give one key, not both")
            }
            (Some(secret), None) if secret.0.len() < 32 => anyhow::bail!(
                "jwt_secret must be at least 32 bytes (256 bits); make one with \
                 `openssl rand -base64 32`"
            ),
            (secret, key) => secret.is_some() || key.is_some(),
        };
        if !crate::auth::valid_cookie_name(&self.jwt_cookie) {
            anyhow::bail!(
                "jwt_cookie {:?} is not a cookie name (letters, digits and !#$%&'*+-.^_`|~)",
                self.jwt_cookie
            );
        }
        let private = self.private_topics();
        PatternSet::parse(private.iter().copied())
            .map_err(|e| anyhow::anyhow!("private_topics: {e}"))?;
        if !has_key && !private.is_empty() {
            anyhow::bail!(
                "private topics need a JWT key to grant them: set jwt_secret or jwt_public_key"
            );
        }
        if !has_key && self.require_subscribe_token {
            anyhow::bail!(
                "require_subscribe_token needs a JWT key: set jwt_secret or jwt_public_key"
            );
        }
        Ok(())
    }

    /// The private topic patterns: `private_topics`, then the `[[topics]]`
    /// tables with `private = true`.
    pub fn private_topics(&self) -> Vec<&str> {
        let tables = self.topics.iter().filter(|t| t.private);
        let mut list = comma_list(&self.private_topics);
        list.extend(tables.map(|t| t.pattern.as_str()));
        list
    }

    /// The demo producers named in `demo_producers`, without duplicates.
    pub fn demo_producer_list(&self) -> Vec<&str> {
        comma_list(&self.demo_producers)
    }

    /// The symbols of `demo_symbols`, without duplicates, in order.
    pub fn demo_symbol_list(&self) -> Vec<String> {
        comma_list(&self.demo_symbols)
            .into_iter()
            .map(String::from)
            .collect()
    }

    /// The CORS origins, or `None` for any origin.
    pub fn cors_origin_list(&self) -> Option<Vec<String>> {
        let list: Vec<String> = self
            .cors_origins
            .split(',')
            .map(str::trim)
            .filter(|o| !o.is_empty())
            .map(String::from)
            .collect();
        (!list.iter().any(|o| o == "*")).then_some(list)
    }
}

/// The non-empty, trimmed entries of a comma-separated list, first
/// occurrence kept.
fn comma_list(value: &str) -> Vec<&str> {
    let mut list: Vec<&str> = Vec::new();
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        if !list.contains(&entry) {
            list.push(entry);
        }
    }
    list
}

/// `listen` from the `HOST` and `PORT` variables that platforms set, when
/// either is present; the default address fills in the other half.
fn conventional_listen() -> Option<String> {
    let host = std::env::var("HOST").ok();
    let port = std::env::var("PORT").ok();
    if host.is_none() && port.is_none() {
        return None;
    }
    let host = host.unwrap_or_else(|| "127.0.0.1".into());
    let port = port.unwrap_or_else(|| "8000".into());
    Some(if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    })
}

#[cfg(test)]
// figment's Jail takes closures returning its (large) error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use figment::Jail;

    fn load(args: ServeArgs) -> Config {
        Config::load(&args).expect("config loads")
    }

    #[test]
    fn defaults() {
        Jail::expect_with(|_| {
            let c = load(ServeArgs::default());
            assert_eq!(c.listen, "127.0.0.1:8000");
            assert_eq!(c.history_max_events, 10_000);
            assert_eq!(c.history_max_age, Duration::from_secs(86_400));
            assert_eq!(c.max_body, ByteSize::mib(1));
            assert_eq!(c.cors_origin_list(), None);
            Ok(())
        });
    }

    #[test]
    fn flag_beats_env_beats_file_beats_default() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "s.toml",
                "history_max_events = 5\nretry_ms = 7\nkeepalive = \"3s\"\nmax_topics = 9",
            )?;
            jail.set_env("SLUICE_RETRY_MS", "8");
            jail.set_env("SLUICE_HISTORY_MAX_EVENTS", "6");
            let args = ServeArgs {
                config: Some("s.toml".into()),
                history_max_events: Some(4),
                ..Default::default()
            };
            let c = load(args);
            assert_eq!(c.history_max_events, 4, "flag wins");
            assert_eq!(c.retry_ms, 8, "env beats file");
            assert_eq!(c.keepalive, Duration::from_secs(3), "file beats default");
            assert_eq!(c.max_topics, 9);
            assert_eq!(c.subscriber_buffer, 1000, "default");
            Ok(())
        });
    }

    #[test]
    fn host_port_and_log_level_are_honoured() {
        Jail::expect_with(|jail| {
            jail.set_env("PORT", "9123");
            jail.set_env("LOG_LEVEL", "debug");
            let c = load(ServeArgs::default());
            assert_eq!(c.listen, "127.0.0.1:9123");
            assert_eq!(c.log_level, "debug");
            jail.set_env("SLUICE_LISTEN", "0.0.0.0:1");
            assert_eq!(load(ServeArgs::default()).listen, "0.0.0.0:1");
            Ok(())
        });
    }

    #[test]
    fn sizes_and_durations_parse() {
        Jail::expect_with(|jail| {
            jail.set_env("SLUICE_MAX_BODY", "64KiB");
            let args = ServeArgs {
                history_max_age: Some("90m".into()),
                ..Default::default()
            };
            let c = load(args);
            assert_eq!(c.max_body, ByteSize::kib(64));
            assert_eq!(c.history_max_age, Duration::from_secs(5400));
            Ok(())
        });
    }

    #[test]
    fn bad_values_and_unknown_keys_are_errors() {
        Jail::expect_with(|jail| {
            jail.create_file("bad.toml", "histroy_max_events = 5")?;
            let args = ServeArgs {
                config: Some("bad.toml".into()),
                ..Default::default()
            };
            assert!(Config::load(&args).is_err(), "typo in file");
            let args = ServeArgs {
                keepalive: Some("soon".into()),
                ..Default::default()
            };
            assert!(Config::load(&args).is_err());
            let args = ServeArgs {
                subscriber_buffer: Some(0),
                ..Default::default()
            };
            assert!(Config::load(&args).is_err());
            let args = ServeArgs {
                config: Some("missing.toml".into()),
                ..Default::default()
            };
            assert!(Config::load(&args).is_err());
            // Unrelated SLUICE_ variables are not settings and are ignored.
            jail.set_env("SLUICE_SOMETHING_ELSE", "x");
            assert!(Config::load(&ServeArgs::default()).is_ok());
            Ok(())
        });
    }

    #[test]
    fn demo_settings_default() {
        Jail::expect_with(|_| {
            let c = load(ServeArgs::default());
            assert!(!c.demo);
            assert_eq!(
                c.demo_producer_list(),
                [
                    "metrics",
                    "logs",
                    "alerts",
                    "heartbeat",
                    "trades",
                    "clock",
                    "measurements"
                ]
            );
            assert_eq!(c.demo_symbol_list(), ["AAPL", "GOOGL"]);
            assert_eq!(c.dataset, None);
            Ok(())
        });
    }

    #[test]
    fn demo_settings_come_from_file_env_and_flags() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "d.toml",
                "demo = true\ndemo_symbols = \"MSFT\"\ndataset = \"f.ndjson\"",
            )?;
            let args = ServeArgs {
                config: Some("d.toml".into()),
                ..Default::default()
            };
            let c = load(args.clone());
            assert!(c.demo, "an absent --demo flag leaves the file's true");
            assert_eq!(c.demo_symbol_list(), ["MSFT"]);
            assert_eq!(c.dataset, Some(PathBuf::from("f.ndjson")));

            jail.set_env("SLUICE_DEMO_PRODUCERS", "clock, metrics,clock");
            jail.set_env("SLUICE_DEMO_SYMBOLS", "AAPL,NVDA");
            let c = load(args.clone());
            assert_eq!(c.demo_producer_list(), ["clock", "metrics"]);
            assert_eq!(c.demo_symbol_list(), ["AAPL", "NVDA"]);

            let c = load(ServeArgs {
                demo_symbols: Some("TSLA".into()),
                dataset: Some("g.json".into()),
                ..args
            });
            assert_eq!(c.demo_symbol_list(), ["TSLA"], "flag beats env");
            assert_eq!(c.dataset, Some(PathBuf::from("g.json")));

            jail.set_env("SLUICE_DEMO", "true");
            assert!(load(ServeArgs::default()).demo, "from the environment");
            jail.set_env("SLUICE_DEMO", "false");
            assert!(!load(ServeArgs::default()).demo);
            let flag = ServeArgs {
                demo: true,
                ..Default::default()
            };
            assert!(load(flag).demo, "the flag beats the environment");
            Ok(())
        });
    }

    #[test]
    fn demo_flags_parse_from_the_command_line() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            serve: ServeArgs,
        }
        let cli = Cli::parse_from(["sluice", "--demo", "--demo-producers", "clock"]);
        assert!(cli.serve.demo);
        assert_eq!(cli.serve.demo_producers.as_deref(), Some("clock"));
        let cli = Cli::parse_from(["sluice", "--dataset", "x.json"]);
        assert!(!cli.serve.demo, "--dataset alone is allowed");
        assert_eq!(cli.serve.dataset, Some(PathBuf::from("x.json")));
    }

    #[test]
    fn bad_demo_settings_are_errors() {
        Jail::expect_with(|_| {
            for (producers, symbols) in [
                ("clock,nope", "AAPL"),
                ("Clock", "AAPL"),
                ("clock", "a/b"),
                ("clock", "A B"),
                ("clock", "AAPL,$X"),
                ("clock", " , "),
                ("clock", "*"),
            ] {
                let args = ServeArgs {
                    demo_producers: Some(producers.into()),
                    demo_symbols: Some(symbols.into()),
                    ..Default::default()
                };
                let error = Config::load(&args).expect_err(&format!("{producers} {symbols}"));
                assert!(error.to_string().starts_with("demo_"), "{error}");
            }
            // An empty list of producers is valid: --demo then runs none.
            let args = ServeArgs {
                demo_producers: Some(String::new()),
                ..Default::default()
            };
            assert!(Config::load(&args).is_ok());
            Ok(())
        });
    }

    #[test]
    fn limits_and_tls_settings() {
        Jail::expect_with(|jail| {
            let c = load(ServeArgs::default());
            assert_eq!((c.max_connections, c.max_connections_per_ip), (10_000, 256));
            assert_eq!((c.max_streams_per_connection, c.publish_rate), (100, 0));
            assert_eq!(
                (c.max_url_length, c.max_header_size),
                (ByteSize::kib(8), ByteSize::kib(16))
            );
            assert_eq!(c.header_timeout, Duration::from_secs(10));
            assert_eq!((c.tls_cert, c.tls_key), (None, None));
            jail.set_env("SLUICE_PUBLISH_RATE", "20");
            jail.set_env("SLUICE_HEADER_TIMEOUT", "3s");
            let c = load(ServeArgs {
                max_connections_per_ip: Some(4),
                max_url_length: Some("2KiB".into()),
                tls_cert: Some("c.pem".into()),
                tls_key: Some("k.pem".into()),
                ..Default::default()
            });
            assert_eq!((c.publish_rate, c.max_connections_per_ip), (20, 4));
            assert_eq!(c.header_timeout, Duration::from_secs(3));
            assert_eq!(c.max_url_length, ByteSize::kib(2));
            assert_eq!(c.tls_key, Some(PathBuf::from("k.pem")));
            let bad_settings: [fn(&mut ServeArgs); 6] = [
                |a| a.max_connections = Some(0),
                |a| a.header_timeout = Some("0s".into()),
                |a| a.header_timeout = Some("500000000000years".into()),
                |a| a.keepalive = Some("101years".into()),
                |a| a.max_header_size = Some("100".into()),
                |a| a.tls_cert = Some("c.pem".into()),
            ];
            for set in bad_settings {
                let mut bad = ServeArgs::default();
                set(&mut bad);
                assert!(Config::load(&bad).is_err(), "{bad:?}");
            }
            Ok(())
        });
    }

    #[test]
    fn redis_settings_come_from_file_env_and_flags() {
        Jail::expect_with(|jail| {
            let c = load(ServeArgs::default());
            assert_eq!(c.redis_url, "redis://127.0.0.1:6379");
            assert_eq!(c.redis_prefix, "sluice");
            jail.create_file(
                "r.toml",
                "storage = \"redis\"\nredis_url = \"redis://db:6380/2\"\nredis_prefix = \"a\"",
            )?;
            let args = ServeArgs {
                config: Some("r.toml".into()),
                ..Default::default()
            };
            let c = load(args.clone());
            assert_eq!(c.storage, StorageKind::Redis);
            assert_eq!(c.storage.name(), "redis");
            assert_eq!(
                (c.redis_url.as_str(), c.redis_prefix.as_str()),
                ("redis://db:6380/2", "a")
            );
            jail.set_env("SLUICE_REDIS_PREFIX", "b");
            assert_eq!(load(args.clone()).redis_prefix, "b", "env beats file");
            let c = load(ServeArgs {
                redis_url: Some("rediss://:pw@db:6390".into()),
                ..args
            });
            assert_eq!(c.redis_url, "rediss://:pw@db:6390", "flag beats file");
            for bad in ["", "two words"] {
                let args = ServeArgs {
                    redis_prefix: Some(bad.into()),
                    ..Default::default()
                };
                assert!(Config::load(&args).is_err(), "prefix {bad:?}");
            }
            Ok(())
        });
    }

    #[test]
    fn a_config_text_reads_as_its_file_does() {
        let c = Config::from_toml("publish_rate = 5\nmax_url_length = \"1KiB\"").unwrap();
        assert_eq!((c.publish_rate, c.max_url_length), (5, ByteSize::kib(1)));
        assert_eq!(c.max_connections, 10_000, "defaults under the file");
        for bad in [
            "publish_rate = -1",
            "nope = 1",
            "max_topics = 0",
            "[[topics]]\npattern = \"**/a\"",
        ] {
            assert!(Config::from_toml(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn auth_settings_come_from_file_env_and_flags() {
        Jail::expect_with(|jail| {
            let c = load(ServeArgs::default());
            assert_eq!(
                (c.jwt_secret.clone(), c.jwt_public_key.clone()),
                (None, None)
            );
            assert_eq!(c.jwt_cookie, "sluice_token");
            assert!(!c.require_subscribe_token && !c.allow_anonymous_publish);
            jail.create_file(
                "a.toml",
                "jwt_secret = \"0123456789abcdef0123456789abcdef\"\n\
                 private_topics = \"a/**, c\"\n\
                 [[topics]]\npattern = \"b/*\"\nprivate = true\n\
                 [[topics]]\npattern = \"b/x\"\nhistory_max_events = 5\n",
            )?;
            let args = ServeArgs {
                config: Some("a.toml".into()),
                ..Default::default()
            };
            let c = load(args.clone());
            assert_eq!(c.private_topics(), ["a/**", "c", "b/*"]);
            assert_eq!(format!("{:?}", c.jwt_secret), "Some(***)", "never logged");
            // A table that only says `private` is no retention rule.
            let rules = c.retention_rules().unwrap();
            assert_eq!(rules.topics[0].0.as_str(), "b/x");
            jail.set_env("SLUICE_REQUIRE_SUBSCRIBE_TOKEN", "true");
            jail.set_env("SLUICE_JWT_COOKIE", "auth");
            let c = load(args);
            assert!(c.require_subscribe_token);
            assert_eq!(c.jwt_cookie, "auth");
            Ok(())
        });
    }

    #[test]
    fn auth_settings_that_cannot_work_are_errors() {
        Jail::expect_with(|_| {
            let secret = || Some("0123456789abcdef0123456789abcdef".to_string());
            for (args, error) in [
                (
                    ServeArgs {
                        jwt_secret: secret(),
                        jwt_public_key: Some("k.pem".into()),
                        ..Default::default()
                    },
                    "not both",
                ),
                (
                    ServeArgs {
                        jwt_secret: Some("short".into()),
                        ..Default::default()
                    },
                    "at least 32 bytes",
                ),
                (
                    ServeArgs {
                        private_topics: Some("a/**".into()),
                        ..Default::default()
                    },
                    "need a JWT key",
                ),
                (
                    ServeArgs {
                        require_subscribe_token: true,
                        ..Default::default()
                    },
                    "needs a JWT key",
                ),
                (
                    ServeArgs {
                        jwt_secret: secret(),
                        private_topics: Some("a/**/b".into()),
                        ..Default::default()
                    },
                    "private_topics",
                ),
                (
                    ServeArgs {
                        jwt_cookie: Some("a b".into()),
                        ..Default::default()
                    },
                    "not a cookie name",
                ),
            ] {
                let message = Config::load(&args).expect_err(error).to_string();
                assert!(message.contains(error), "{message}");
            }
            Ok(())
        });
    }

    #[test]
    fn cors_list() {
        let c = Config {
            cors_origins: "https://a.example, https://b.example".into(),
            ..Config::default()
        };
        assert_eq!(
            c.cors_origin_list().unwrap(),
            ["https://a.example", "https://b.example"]
        );
    }
}
