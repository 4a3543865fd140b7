//! `POST /topics/{topic}?type=…`: the input's first line is the topic, its
//! second the type (none when empty), the rest the body; the first byte's
//! low bit says whether the body is `application/json`.
#![no_main]

mod checks;

use libfuzzer_sys::fuzz_target;
use sluice::validate;

fuzz_target!(|input: &[u8]| {
    let Some((&flags, input)) = input.split_first() else {
        return;
    };
    let mut parts = input.splitn(3, |&b| b == b'\n');
    let topic = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let kind = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let body = parts.next().unwrap_or_default();
    let kind = (!kind.is_empty()).then_some(kind);
    if let Ok(event) = validate::raw_event(topic, kind, body, flags & 1 == 1) {
        checks::accepted_event(&event);
    }
});
