//! `POST /publish` with `application/json`: one event object.
#![no_main]

mod checks;

use libfuzzer_sys::fuzz_target;
use sluice::validate;

fuzz_target!(|body: &[u8]| {
    if let Ok(event) = validate::json_event(body) {
        checks::accepted_event(&event);
    }
});
