//! Sluice, a real-time event streaming hub.
//!
//! The path of one event, one module per stage:
//! `http::publish` → `validate` → `hub` (single writer) → `log` (assigns the
//! id) → `hub::fanout` (encode once, per-subscriber bounded queues) →
//! `http::sse` | `http::ndjson` (transport writers).

pub mod auth;
pub mod bench;
pub mod client;
pub mod config;
pub mod event;
pub mod frame;
pub mod http;
pub mod hub;
pub mod limits;
pub mod log;
pub mod metrics;
pub mod producers;
pub mod server;
#[cfg(test)]
mod test_alloc;
pub mod tls;
pub mod topic;
pub mod validate;
