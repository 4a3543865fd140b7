//! Topic names and patterns: what a publish names, and what a subscription
//! lists (comma-separated, as in `?topics=`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::topic::{Pattern, TopicFilter, validate_publish_topic};

fuzz_target!(|input: &[u8]| {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    // As one name or pattern.
    let pattern = Pattern::parse(text);
    if validate_publish_topic(text).is_ok() {
        let pattern = pattern.expect("a valid topic is a valid pattern");
        assert!(pattern.is_exact(), "a topic has no wildcard");
        assert!(pattern.matches(text), "a topic matches itself");
    }
    // As a subscription's list, matched against each of its entries.
    let entries: Vec<&str> = text.split(',').collect();
    if let Ok(filter) = TopicFilter::parse(entries.iter().copied(), 100) {
        for entry in &entries {
            if validate_publish_topic(entry).is_ok() {
                assert!(filter.matches(entry), "{entry:?} is listed");
            }
        }
    }
});
