//! `Last-Event-ID` and `last_event_id`: an event id `<ms>-<seq>`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::event::EventId;

fuzz_target!(|input: &[u8]| {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    if let Ok(id) = text.parse::<EventId>() {
        let printed = id.to_string();
        assert_eq!(
            printed.parse::<EventId>().ok(),
            Some(id),
            "{printed} reads back"
        );
    }
});
