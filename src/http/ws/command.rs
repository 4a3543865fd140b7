//! The commands a WebSocket client sends, parsed from one text frame.
//! Pure: bytes in, a command or an error out.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::event::NewEvent;
use crate::http::errors::ApiError;
use crate::validate;

#[derive(Debug)]
pub enum Command {
    Subscribe {
        topics: Vec<String>,
        last_event_id: Option<String>,
    },
    Unsubscribe {
        topics: Vec<String>,
    },
    Publish(NewEvent),
    Ping,
}

/// A refused command: the error, and its `op` when it could be read.
#[derive(Debug)]
pub struct Refused {
    pub op: Option<String>,
    pub error: ApiError,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Subscribe {
    topics: Vec<String>,
    #[serde(default)]
    last_event_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Unsubscribe {
    topics: Vec<String>,
}

fn invalid(op: Option<&str>, message: String) -> Refused {
    Refused {
        op: op.map(String::from),
        error: ApiError::bad_request("invalid_command", message),
    }
}

/// Parses `{"op": …, …}`. The other fields stay raw JSON until the command
/// is known, so a published event's data reaches the log byte for byte.
pub fn parse(text: &str) -> Result<Command, Refused> {
    let mut fields: BTreeMap<String, Box<RawValue>> = serde_json::from_str(text)
        .map_err(|e| invalid(None, format!("a command is a JSON object: {e}")))?;
    let op: String = match fields.remove("op") {
        Some(raw) => serde_json::from_str(raw.get())
            .map_err(|_| invalid(None, "\"op\" must be a string".into()))?,
        None => return Err(invalid(None, "a command needs an \"op\"".into())),
    };
    let rest = serde_json::to_string(&fields).expect("raw JSON fields serialize");
    let shape = |e: serde_json::Error| invalid(Some(&op), format!("{op}: {e}"));
    match op.as_str() {
        "subscribe" => {
            let Subscribe {
                topics,
                last_event_id,
            } = serde_json::from_str(&rest).map_err(shape)?;
            Ok(Command::Subscribe {
                topics,
                last_event_id,
            })
        }
        "unsubscribe" => {
            let Unsubscribe { topics } = serde_json::from_str(&rest).map_err(shape)?;
            Ok(Command::Unsubscribe { topics })
        }
        "publish" => validate::json_event(rest.as_bytes())
            .map(Command::Publish)
            .map_err(|e| Refused {
                op: Some(op.clone()),
                error: e.into(),
            }),
        "ping" if fields.is_empty() => Ok(Command::Ping),
        "ping" => Err(invalid(Some(&op), "ping takes no other field".into())),
        other => Err(Refused {
            op: Some(other.to_string()),
            error: ApiError::bad_request(
                "unknown_op",
                format!("unknown op {other:?}: use subscribe, unsubscribe, publish or ping"),
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(text: &str) -> Refused {
        parse(text).expect_err(text)
    }

    #[test]
    fn commands_parse() {
        assert!(matches!(
            parse(r#"{"op":"subscribe","topics":["a","b/*"],"last_event_id":"1-0"}"#),
            Ok(Command::Subscribe { topics, last_event_id: Some(id) }) if topics == ["a", "b/*"] && id == "1-0"
        ));
        assert!(matches!(
            parse(r#"{"op":"unsubscribe","topics":["a"]}"#),
            Ok(Command::Unsubscribe { .. })
        ));
        assert!(matches!(parse(r#"{"op":"ping"}"#), Ok(Command::Ping)));
    }

    #[test]
    fn publish_keeps_data_verbatim() {
        let Ok(Command::Publish(event)) =
            parse(r#"{"data":[1.10, 18446744073709551616],"op":"publish","topic":"t","type":"x"}"#)
        else {
            panic!("publish parses");
        };
        assert_eq!(event.data.get(), "[1.10,18446744073709551616]");
        assert_eq!(event.kind.as_deref(), Some("x"));
    }

    #[test]
    fn bad_commands_are_refused_with_a_reason() {
        assert_eq!(refused("[]").error.code, "invalid_command");
        assert_eq!(refused("nope").error.code, "invalid_command");
        assert_eq!(refused(r#"{"topics":[]}"#).error.code, "invalid_command");
        assert_eq!(refused(r#"{"op":1}"#).error.code, "invalid_command");
        let unknown = refused(r#"{"op":"dance"}"#);
        assert_eq!(
            (unknown.op.as_deref(), unknown.error.code),
            (Some("dance"), "unknown_op")
        );
        assert_eq!(
            refused(r#"{"op":"subscribe"}"#).error.code,
            "invalid_command"
        );
        assert_eq!(
            refused(r#"{"op":"subscribe","topics":["a"],"extra":1}"#)
                .error
                .code,
            "invalid_command"
        );
        assert_eq!(
            refused(r#"{"op":"ping","x":1}"#).error.code,
            "invalid_command"
        );
        assert_eq!(
            refused(r#"{"op":"publish","topic":"a b","data":1}"#)
                .error
                .code,
            "invalid_topic"
        );
        assert_eq!(
            refused(r#"{"op":"publish","topic":"a"}"#).error.code,
            "invalid_json"
        );
    }
}
