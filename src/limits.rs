//! Limits against careless and hostile clients, shared by the accept loop
//! (`server.rs`) and the HTTP handlers (`http/limits.rs`): connections open
//! at once, in all and per client address; publishes per second per
//! publisher; and the log line each refusal gets, at most one per kind and
//! interval, so that a flood of refusals is not also a flood of log lines.
//!
//! Everything here is counting: what a refusal looks like on the wire is
//! decided by its caller.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::config::Config;

/// At most one log line per kind of refusal in this interval; the line
/// says how many refusals it stands for.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// The rate limiter's table is swept of idle publishers once it holds
/// this many (and then whenever it has doubled since the last sweep).
const SWEEP_FROM: usize = 4096;

pub struct Limits {
    max_connections: usize,
    max_connections_per_ip: usize,
    connections: Mutex<Connections>,
    publishes: Option<RateLimiter>,
    logs: Mutex<HashMap<&'static str, LogWindow>>,
}

#[derive(Default)]
struct Connections {
    open: usize,
    per_client: HashMap<IpAddr, usize>,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `max_connections` are open.
    Busy,
    /// `max_connections_per_ip` are open from this client.
    PerClient,
}

/// An admitted connection, counted until this is dropped.
pub struct Admitted {
    limits: Arc<Limits>,
    client: IpAddr,
}

/// Whom a publish is counted against.
#[derive(Debug, Clone, Copy)]
pub enum Publisher<'a> {
    /// A token's subject (`sub`): the same allowance on every connection.
    Subject(&'a str),
    /// A client address, when no token names the publisher.
    Address(IpAddr),
}

impl Limits {
    pub fn new(config: &Config) -> Arc<Limits> {
        Arc::new(Limits {
            max_connections: config.max_connections,
            max_connections_per_ip: config.max_connections_per_ip,
            connections: Mutex::default(),
            publishes: (config.publish_rate > 0).then(|| RateLimiter::new(config.publish_rate)),
            logs: Mutex::default(),
        })
    }

    /// Counts a new connection from `ip`, unless a limit is reached.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admitted, Refusal> {
        let client = client_address(ip);
        let mut connections = self.connections.lock();
        if connections.open >= self.max_connections {
            return Err(Refusal::Busy);
        }
        let from_client = connections.per_client.entry(client).or_default();
        if *from_client >= self.max_connections_per_ip {
            return Err(Refusal::PerClient);
        }
        *from_client += 1;
        connections.open += 1;
        Ok(Admitted {
            limits: self.clone(),
            client,
        })
    }

    /// Takes one publish from `publisher`'s allowance; when it has none
    /// left, says how long until it has one.
    pub fn take_publish(&self, publisher: Publisher<'_>, now: Instant) -> Result<(), Duration> {
        let Some(limiter) = &self.publishes else {
            return Ok(());
        };
        let key = match publisher {
            Publisher::Subject(subject) => format!("sub:{subject}"),
            Publisher::Address(ip) => format!("ip:{}", client_address(ip)),
        };
        limiter.take(&key, now)
    }

    /// Logs a refusal at `warn`, unless one of the same `kind` was logged
    /// less than `LOG_EVERY` ago: then it is only counted, and the next
    /// line says how many were not logged.
    pub fn log_refusal(&self, kind: &'static str, detail: std::fmt::Arguments<'_>) {
        if let Some(unlogged) = self.should_log(kind, Instant::now()) {
            tracing::warn!(limit = kind, unlogged, "refused: {detail}");
        }
    }

    /// Whether a refusal of `kind` at `now` gets a log line, and if so how
    /// many before it did not.
    fn should_log(&self, kind: &'static str, now: Instant) -> Option<u64> {
        let mut logs = self.logs.lock();
        let window = logs.entry(kind).or_insert(LogWindow {
            logged: None,
            unlogged: 0,
        });
        match window.logged {
            Some(at) if now.saturating_duration_since(at) < LOG_EVERY => {
                window.unlogged += 1;
                None
            }
            _ => {
                window.logged = Some(now);
                Some(std::mem::take(&mut window.unlogged))
            }
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut connections = self.limits.connections.lock();
        connections.open -= 1;
        if let Some(count) = connections.per_client.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                connections.per_client.remove(&self.client);
            }
        }
    }
}

/// The address a client is counted under: IPv4 addresses as they are
/// (IPv4-mapped IPv6 ones too), IPv6 by their /64 network, the block a
/// single host is usually given.
pub fn client_address(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & !(u128::from(u64::MAX)))),
        },
    }
}

struct LogWindow {
    logged: Option<Instant>,
    unlogged: u64,
}

/// A token bucket per key: `rate` tokens a second, up to `rate` held.
struct RateLimiter {
    rate: f64,
    buckets: Mutex<Buckets>,
}

struct Buckets {
    by_key: HashMap<String, Bucket>,
    sweep_at: usize,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimiter {
    fn new(rate: u32) -> RateLimiter {
        RateLimiter {
            rate: f64::from(rate),
            buckets: Mutex::new(Buckets {
                by_key: HashMap::new(),
                sweep_at: SWEEP_FROM,
            }),
        }
    }

    /// The bucket's tokens at `now`.
    fn refilled(&self, bucket: &Bucket, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        (bucket.tokens + elapsed * self.rate).min(self.rate)
    }

    fn take(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock();
        if !buckets.by_key.contains_key(key) && buckets.by_key.len() >= buckets.sweep_at {
            // A full bucket is the same as none: forget those.
            buckets
                .by_key
                .retain(|_, bucket| self.refilled(bucket, now) < self.rate);
            buckets.sweep_at = SWEEP_FROM.max(2 * buckets.by_key.len());
        }
        let bucket = match buckets.by_key.get_mut(key) {
            Some(bucket) => bucket,
            None => buckets.by_key.entry(key.to_owned()).or_insert(Bucket {
                tokens: self.rate,
                at: now,
            }),
        };
        bucket.tokens = self.refilled(bucket, now);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / self.rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn limits(config: Config) -> Arc<Limits> {
        Limits::new(&config)
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn connections_are_counted_in_all_and_per_client() {
        let limits = limits(Config {
            max_connections: 3,
            max_connections_per_ip: 2,
            ..Config::default()
        });
        let a1 = limits.admit(ip("10.0.0.1")).unwrap();
        let _a2 = limits.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(limits.admit(ip("10.0.0.1")).err(), Some(Refusal::PerClient));
        let _b = limits.admit(ip("10.0.0.2")).unwrap();
        assert_eq!(limits.admit(ip("10.0.0.3")).err(), Some(Refusal::Busy));
        drop(a1);
        assert!(limits.admit(ip("10.0.0.1")).is_ok(), "a slot came free");
        drop(limits.admit(ip("10.0.0.9")));
        assert_eq!(
            limits.connections.lock().per_client.len(),
            2,
            "no entry left at 0"
        );
    }

    #[test]
    fn ipv6_clients_count_by_their_64() {
        assert_eq!(
            client_address(ip("2001:db8:1:2:a::1")),
            ip("2001:db8:1:2::")
        );
        assert_eq!(client_address(ip("::ffff:10.1.2.3")), ip("10.1.2.3"));
        assert_eq!(client_address(ip("10.1.2.3")), ip("10.1.2.3"));
        let limits = limits(Config {
            max_connections_per_ip: 1,
            ..Config::default()
        });
        let _first = limits.admit(ip("2001:db8::1")).unwrap();
        assert!(limits.admit(ip("2001:db8::2")).is_err(), "same /64");
        assert!(limits.admit(ip("2001:db8:0:1::1")).is_ok(), "another /64");
    }

    #[test]
    fn publishes_are_limited_per_publisher() {
        let limits = limits(Config {
            publish_rate: 2,
            ..Config::default()
        });
        let now = Instant::now();
        let a = Publisher::Address(IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert!(limits.take_publish(a, now).is_ok());
        assert!(limits.take_publish(a, now).is_ok());
        let wait = limits.take_publish(a, now).unwrap_err();
        assert_eq!(
            wait,
            Duration::from_millis(500),
            "one token comes in 1/rate s"
        );
        assert!(
            limits
                .take_publish(Publisher::Subject("alice"), now)
                .is_ok()
        );
        assert!(
            limits
                .take_publish(Publisher::Subject("127.0.0.1"), now)
                .is_ok(),
            "a subject never shares an address's bucket"
        );
        let later = now + Duration::from_millis(500);
        assert!(limits.take_publish(a, later).is_ok(), "refilled");
        assert!(limits.take_publish(a, later).is_err());
    }

    #[test]
    fn no_publish_rate_means_no_limit() {
        let limits = limits(Config::default());
        let now = Instant::now();
        assert!((0..10_000).all(|_| limits.take_publish(Publisher::Subject("s"), now).is_ok()));
    }

    #[test]
    fn idle_publishers_are_forgotten() {
        let limiter = RateLimiter::new(10);
        let now = Instant::now();
        for i in 0..SWEEP_FROM - 1 {
            limiter.take(&i.to_string(), now).unwrap();
        }
        for _ in 0..10 {
            limiter
                .take("drained", now + Duration::from_millis(900))
                .unwrap();
        }
        limiter.take("new", now + Duration::from_secs(1)).unwrap();
        let buckets = limiter.buckets.lock();
        let mut kept: Vec<&str> = buckets.by_key.keys().map(String::as_str).collect();
        kept.sort();
        assert_eq!(kept, ["drained", "new"], "full buckets are swept");
    }

    #[test]
    fn refusals_are_logged_once_per_interval() {
        let limits = limits(Config::default());
        let now = Instant::now();
        assert_eq!(limits.should_log("a", now), Some(0));
        for _ in 0..1000 {
            assert_eq!(limits.should_log("a", now + Duration::from_secs(1)), None);
        }
        assert_eq!(limits.should_log("b", now), Some(0), "each kind on its own");
        assert_eq!(limits.should_log("a", now + LOG_EVERY), Some(1000));
        assert_eq!(limits.should_log("a", now + LOG_EVERY), None);
    }
}
