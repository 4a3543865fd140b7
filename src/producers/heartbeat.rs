//! `heartbeat`: at start and every 30 s on topic `heartbeat`, type
//! `heartbeat`: `{"time", "clients"}`, with the hub's time (RFC 3339, UTC,
//! milliseconds) and how many subscribers it has.
//!
//! A slow, predictable event a client can use to tell "connected but quiet"
//! from "cut off", and one that shows a figure of the hub itself.

use std::time::Duration;

use chrono::Utc;
use serde::Serialize;

use super::{Draft, Producer};
use crate::event::format_time;
use crate::hub::Hub;

const PERIOD: Duration = Duration::from_secs(30);

#[derive(Serialize)]
struct Beat {
    time: String,
    clients: usize,
}

pub struct Heartbeat;

impl Producer for Heartbeat {
    fn name(&self) -> &'static str {
        "heartbeat"
    }

    fn topics(&self) -> Vec<String> {
        vec!["heartbeat".into()]
    }

    fn period(&mut self) -> Duration {
        PERIOD
    }

    fn produce(&mut self, hub: &Hub) -> Vec<Draft> {
        let beat = Beat {
            time: format_time(Utc::now()),
            clients: hub.client_count(),
        };
        vec![Draft::new("heartbeat", "heartbeat", &beat)]
    }
}
