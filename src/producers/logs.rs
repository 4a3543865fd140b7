//! `logs`: application log lines, about 3 per second, on `logs/<level>`
//! (`debug`, `info`, `warn`, `error`) with the level as type:
//! `{"level", "service", "message"}`.
//!
//! One topic per level is what makes the pattern demos work: `logs/**` is
//! everything, `logs/error` only what pages someone. Levels are drawn with
//! real-world weights (mostly info, errors rare) at irregular intervals, and
//! messages are filled from templates so the stream does not visibly repeat.

use std::time::Duration;

use fastrand::Rng;
use serde::Serialize;

use super::{Draft, Producer};
use crate::hub::Hub;

pub const LEVELS: [&str; 4] = ["debug", "info", "warn", "error"];
/// Relative weights of [`LEVELS`].
const WEIGHTS: [u32; 4] = [20, 55, 17, 8];

const SERVICES: [&str; 7] = [
    "api-gateway",
    "auth",
    "billing",
    "search",
    "inventory",
    "notifications",
    "worker",
];

const USERS: [&str; 6] = ["alice", "bob", "carol", "dave", "erin", "frank"];
const ROUTES: [&str; 7] = [
    "/api/orders",
    "/api/users/me",
    "/api/search",
    "/api/cart",
    "/api/checkout",
    "/login",
    "/api/products",
];
const HOSTS: [&str; 4] = ["db-primary", "cache-1", "payments.internal", "s3"];

#[derive(Serialize)]
struct Line {
    level: &'static str,
    service: &'static str,
    message: String,
}

pub struct Logs {
    rng: Rng,
}

impl Logs {
    pub fn new() -> Logs {
        Logs { rng: Rng::new() }
    }

    fn level(&mut self) -> &'static str {
        let mut pick = self.rng.u32(0..WEIGHTS.iter().sum::<u32>());
        for (level, weight) in LEVELS.iter().zip(WEIGHTS) {
            if pick < weight {
                return level;
            }
            pick -= weight;
        }
        unreachable!("the pick is below the total weight")
    }

    fn message(&mut self, level: &str) -> String {
        let r = &mut self.rng;
        let user = USERS[r.usize(..USERS.len())];
        let route = ROUTES[r.usize(..ROUTES.len())];
        let host = HOSTS[r.usize(..HOSTS.len())];
        let ms = r.u32(3..900);
        let id = r.u32(10_000..99_999);
        match (level, r.u8(0..4)) {
            ("debug", 0) => format!("cache hit for key session:{id}"),
            ("debug", 1) => format!("query plan chosen in {} µs", r.u32(20..400)),
            ("debug", 2) => format!("connection pool to {host}: {} idle", r.u8(1..20)),
            ("debug", _) => format!(
                "parsed request body for {route} ({} bytes)",
                r.u32(80..9000)
            ),
            ("info", 0) => format!("GET {route} 200 in {ms} ms"),
            ("info", 1) => format!("user {user} signed in"),
            ("info", 2) => format!("order #{id} placed by {user}"),
            ("info", _) => format!("POST {route} 201 in {ms} ms"),
            ("warn", 0) => format!("slow query on {host}: {} ms", r.u32(800..4000)),
            ("warn", 1) => format!("retrying call to {host} (attempt {})", r.u8(2..5)),
            ("warn", 2) => format!("rate limit at 80% for user {user}"),
            ("warn", _) => format!("GET {route} 429 in {ms} ms"),
            (_, 0) => format!("connection to {host} refused"),
            (_, 1) => format!("POST {route} 500 in {ms} ms: internal error"),
            (_, 2) => format!("payment #{id} failed: card declined"),
            (_, _) => format!("timeout after 5000 ms waiting for {host}"),
        }
    }
}

impl Producer for Logs {
    fn name(&self) -> &'static str {
        "logs"
    }

    fn topics(&self) -> Vec<String> {
        LEVELS.iter().map(|l| format!("logs/{l}")).collect()
    }

    /// 100 to 566 ms, 333 on average: about 3 lines a second, irregularly,
    /// as logs come.
    fn period(&mut self) -> Duration {
        Duration::from_millis(self.rng.u64(100..567))
    }

    fn produce(&mut self, _hub: &Hub) -> Vec<Draft> {
        let level = self.level();
        let service = SERVICES[self.rng.usize(..SERVICES.len())];
        let message = self.message(level);
        let line = Line {
            level,
            service,
            message,
        };
        vec![Draft::new(format!("logs/{level}"), level, &line)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_is_the_most_common_level_and_all_occur() {
        let mut logs = Logs {
            rng: Rng::with_seed(5),
        };
        let mut counts = [0usize; 4];
        for _ in 0..10_000 {
            let level = logs.level();
            counts[LEVELS.iter().position(|l| *l == level).unwrap()] += 1;
        }
        assert!(counts.iter().all(|&c| c > 0), "{counts:?}");
        assert!(counts[1] > counts[0] + counts[2] + counts[3], "{counts:?}");
    }

    #[test]
    fn messages_vary() {
        let mut logs = Logs {
            rng: Rng::with_seed(6),
        };
        let messages: std::collections::HashSet<String> =
            (0..200).map(|_| logs.message("info")).collect();
        assert!(messages.len() > 50);
    }
}
