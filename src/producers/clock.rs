//! `clock`: a tick every second on topic `clock`, type `tick`:
//! `{"time", "unix_ms"}`, the same instant as RFC 3339 (UTC, milliseconds)
//! and as milliseconds since the Unix epoch.
//!
//! The simplest stream there is: one event a second, whose content says when
//! it was made, so a client can see its own delay and any gap at a glance.

use std::time::Duration;

use serde::Serialize;

use super::{Draft, Producer};
use crate::event::{format_time, now_ms};
use crate::hub::Hub;

const PERIOD: Duration = Duration::from_secs(1);

#[derive(Serialize)]
struct Tick {
    time: String,
    unix_ms: u64,
}

pub struct Clock;

impl Producer for Clock {
    fn name(&self) -> &'static str {
        "clock"
    }

    fn topics(&self) -> Vec<String> {
        vec!["clock".into()]
    }

    fn period(&mut self) -> Duration {
        PERIOD
    }

    fn produce(&mut self, _hub: &Hub) -> Vec<Draft> {
        let (time, unix_ms) = now_ms();
        let tick = Tick {
            time: format_time(time),
            unix_ms,
        };
        vec![Draft::new("clock", "tick", &tick)]
    }
}
