//! A WebSocket client's text frame: one JSON command.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    let _ = sluice::http::parse_ws_command(text);
});
