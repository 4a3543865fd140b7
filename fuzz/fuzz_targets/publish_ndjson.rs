//! `POST /publish` with `application/x-ndjson`: a batch, one event per line,
//! then an `Idempotency-Key` applied to it.
#![no_main]

mod checks;

use libfuzzer_sys::fuzz_target;
use sluice::validate;

fuzz_target!(|body: &[u8]| {
    if let Ok(mut events) = validate::ndjson_batch(body) {
        assert!(!events.is_empty(), "a batch has at least one event");
        for event in &events {
            checks::accepted_event(event);
        }
        let _ = validate::apply_request_key(&mut events, "retry-1");
    }
});
