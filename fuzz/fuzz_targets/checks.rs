//! What every accepted event must satisfy, whatever parser produced it.

use sluice::event::NewEvent;
use sluice::{topic, validate};

/// A valid publish topic, and data that is JSON and already compact:
/// validating the event again changes nothing.
pub fn accepted_event(event: &NewEvent) {
    topic::validate_publish_topic(&event.topic).expect("an accepted topic is valid");
    serde_json::from_str::<serde::de::IgnoredAny>(event.data.get()).expect("accepted data is JSON");
    let again = validate::new_event(event.topic.clone(), event.kind.clone(), &event.data)
        .expect("an accepted event validates again");
    assert_eq!(
        again.data.get(),
        event.data.get(),
        "compacting twice changes nothing"
    );
}
