//! Topic names and the patterns subscriptions use.
//!
//! A topic is 1 to 256 bytes of `A-Z a-z 0-9 . _ ~ : @ -` in segments joined
//! by single `/`. A pattern is a topic whose segments may also be `*` (exactly
//! one segment) or, as the last segment, `**` (one or more segments). Topics
//! whose first segment starts with `$` are the hub's own: publishers cannot
//! use them, and a wildcard in the first segment does not match them (as in
//! MQTT), so `**` never mixes hub internals into user streams.

use std::collections::HashSet;
use std::fmt;

pub const MAX_TOPIC_LEN: usize = 256;

/// Why a topic or pattern is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic is empty")]
    Empty,
    #[error("topic {0:?} is longer than {MAX_TOPIC_LEN} bytes")]
    TooLong(String),
    #[error("topic {0:?} has an empty segment (leading, trailing or double '/')")]
    EmptySegment(String),
    #[error("topic {0:?} has a character outside A-Z a-z 0-9 . _ ~ : @ - and the '/' separator")]
    BadCharacter(String),
    #[error("topic {0:?} is reserved: topics starting with '$' belong to the hub")]
    Reserved(String),
    #[error("pattern {0:?} has a partial wildcard: '*' and '**' must be whole segments")]
    PartialWildcard(String),
    #[error("pattern {0:?} has '**' before its last segment")]
    InnerDoubleStar(String),
    #[error("a subscription names no topic")]
    NoTopics,
    #[error("a subscription names more than {0} topics")]
    TooMany(usize),
}

fn is_topic_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b':' | b'@' | b'-')
}

/// Checks the length and the segment structure common to names and patterns,
/// calling `segment` on each segment for the rest.
fn check_segments(
    raw: &str,
    mut segment: impl FnMut(usize, &str) -> Result<(), TopicError>,
) -> Result<(), TopicError> {
    if raw.is_empty() {
        return Err(TopicError::Empty);
    }
    if raw.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong(raw.into()));
    }
    for (i, seg) in raw.split('/').enumerate() {
        if seg.is_empty() {
            return Err(TopicError::EmptySegment(raw.into()));
        }
        segment(i, seg)?;
    }
    Ok(())
}

/// Checks a literal segment; a leading `$` is allowed on the first segment
/// only when `reserved_ok`.
fn check_literal(raw: &str, index: usize, seg: &str, reserved_ok: bool) -> Result<(), TopicError> {
    let body = match seg.strip_prefix('$') {
        Some(rest) if index == 0 => {
            if !reserved_ok {
                return Err(TopicError::Reserved(raw.into()));
            }
            rest
        }
        _ => seg,
    };
    if body.bytes().all(is_topic_byte) {
        Ok(())
    } else {
        Err(TopicError::BadCharacter(raw.into()))
    }
}

/// Validates a topic that a client publishes to.
pub fn validate_publish_topic(raw: &str) -> Result<(), TopicError> {
    check_segments(raw, |i, seg| check_literal(raw, i, seg, false))
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(Box<str>),
    /// `*`: exactly one segment.
    One,
    /// `**` as the last segment: one or more segments.
    Rest,
}

/// A parsed topic or pattern from a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    raw: Box<str>,
    segments: Vec<Segment>,
}

impl Pattern {
    pub fn parse(raw: &str) -> Result<Pattern, TopicError> {
        let count = raw.split('/').count();
        let mut segments = Vec::with_capacity(count);
        check_segments(raw, |i, seg| {
            let parsed = match seg {
                "*" => Segment::One,
                "**" if i + 1 == count => Segment::Rest,
                "**" => return Err(TopicError::InnerDoubleStar(raw.into())),
                s if s.contains('*') => return Err(TopicError::PartialWildcard(raw.into())),
                s => {
                    check_literal(raw, i, s, true)?;
                    Segment::Literal(s.into())
                }
            };
            segments.push(parsed);
            Ok(())
        })?;
        Ok(Pattern {
            raw: raw.into(),
            segments,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// True when the pattern has no wildcard: it names one topic.
    pub fn is_exact(&self) -> bool {
        self.segments
            .iter()
            .all(|s| matches!(s, Segment::Literal(_)))
    }

    pub fn matches(&self, topic: &str) -> bool {
        let mut parts = topic.split('/');
        for (i, seg) in self.segments.iter().enumerate() {
            let part = parts.next();
            match (seg, part) {
                (_, None) => return false,
                (Segment::Literal(lit), Some(part)) if **lit != *part => return false,
                (Segment::Literal(_), Some(_)) => {}
                (Segment::One | Segment::Rest, Some(part)) if i == 0 && part.starts_with('$') => {
                    return false;
                }
                (Segment::One, Some(_)) => {}
                (Segment::Rest, Some(_)) => return true,
            }
        }
        parts.next().is_none()
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// The set of topics and patterns one subscription asked for.
#[derive(Debug, Clone, Default)]
pub struct TopicFilter {
    exact: HashSet<Box<str>>,
    wildcards: Vec<Pattern>,
    /// As the client listed them (deduplicated), for `/clients`.
    listed: Vec<Box<str>>,
}

impl TopicFilter {
    /// Parses a subscription's entries, refusing an empty list and more than
    /// `max` entries.
    pub fn parse<'a>(
        entries: impl IntoIterator<Item = &'a str>,
        max: usize,
    ) -> Result<TopicFilter, TopicError> {
        let mut filter = TopicFilter::default();
        for entry in entries {
            let pattern = Pattern::parse(entry)?;
            if filter.listed.iter().any(|l| **l == *entry) {
                continue;
            }
            if filter.listed.len() == max {
                return Err(TopicError::TooMany(max));
            }
            filter.listed.push(entry.into());
            if pattern.is_exact() {
                filter.exact.insert(entry.into());
            } else {
                filter.wildcards.push(pattern);
            }
        }
        if filter.listed.is_empty() {
            return Err(TopicError::NoTopics);
        }
        Ok(filter)
    }

    pub fn matches(&self, topic: &str) -> bool {
        self.exact.contains(topic) || self.wildcards.iter().any(|p| p.matches(topic))
    }

    /// The exact topics, when the filter has no wildcard: the fan-out then
    /// indexes the subscriber by topic instead of testing it on every event.
    pub fn exact_topics(&self) -> Option<impl Iterator<Item = &str>> {
        self.wildcards
            .is_empty()
            .then(|| self.exact.iter().map(|t| &**t))
    }

    /// The entries as listed by the client.
    pub fn listed(&self) -> impl Iterator<Item = &str> {
        self.listed.iter().map(|t| &**t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, topic: &str) -> bool {
        Pattern::parse(pattern).unwrap().matches(topic)
    }

    #[test]
    fn valid_names() {
        for ok in ["a", "a/b", "A-Z.0_9~:@", "x/y/z/w", &"a".repeat(256)] {
            assert_eq!(validate_publish_topic(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn invalid_names() {
        let long = "a".repeat(257);
        for bad in [
            "", "/a", "a/", "a//b", "a b", "a*", "*", "é", "a?b", "a#", "a+b", &long, "a,b",
        ] {
            assert!(validate_publish_topic(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn reserved_names_cannot_be_published() {
        assert!(matches!(
            validate_publish_topic("$sluice/x"),
            Err(TopicError::Reserved(_))
        ));
        assert!(validate_publish_topic("a/$b").is_err());
        assert!(Pattern::parse("$sluice/clients").is_ok());
    }

    #[test]
    fn single_star_matches_one_segment() {
        assert!(m("trades/*", "trades/AAPL"));
        assert!(!m("trades/*", "trades"));
        assert!(!m("trades/*", "trades/AAPL/x"));
        assert!(m("*/b", "a/b"));
        assert!(m("*", "a"));
        assert!(!m("*", "a/b"));
        assert!(m("a/*/c", "a/x/c"));
        assert!(!m("a/*/c", "a/x/d"));
    }

    #[test]
    fn double_star_matches_one_or_more_trailing_segments() {
        assert!(m("logs/**", "logs/a"));
        assert!(m("logs/**", "logs/a/b"));
        assert!(!m("logs/**", "logs"));
        assert!(!m("logs/**", "logsx/a"));
        assert!(m("**", "a"));
        assert!(m("**", "a/b/c"));
        assert!(m("a/*/**", "a/b/c"));
        assert!(!m("a/*/**", "a/b"));
    }

    #[test]
    fn exact_patterns_match_exactly() {
        assert!(m("a/b", "a/b"));
        assert!(!m("a/b", "a/b/c"));
        assert!(!m("a/b", "a"));
        assert!(!m("a", "ab"));
    }

    #[test]
    fn wildcards_skip_reserved_topics() {
        assert!(!m("**", "$sluice/x"));
        assert!(!m("*/x", "$sluice/x"));
        assert!(m("$sluice/*", "$sluice/x"));
    }

    #[test]
    fn bad_patterns() {
        assert!(matches!(
            Pattern::parse("tr*"),
            Err(TopicError::PartialWildcard(_))
        ));
        assert!(matches!(
            Pattern::parse("a/***"),
            Err(TopicError::PartialWildcard(_))
        ));
        assert!(matches!(
            Pattern::parse("**/a"),
            Err(TopicError::InnerDoubleStar(_))
        ));
        assert!(matches!(
            Pattern::parse("a/**/b"),
            Err(TopicError::InnerDoubleStar(_))
        ));
        assert!(Pattern::parse("a//*").is_err());
    }

    #[test]
    fn filter_limits_and_dedup() {
        assert_eq!(
            TopicFilter::parse(Vec::<&str>::new(), 3).unwrap_err(),
            TopicError::NoTopics
        );
        assert_eq!(
            TopicFilter::parse(["a", "b", "c", "d"], 3).unwrap_err(),
            TopicError::TooMany(3)
        );
        assert!(
            TopicFilter::parse(["a", "a", "b", "b", "c"], 3).is_ok(),
            "duplicates count once"
        );
        let f = TopicFilter::parse(["a", "a", "b/*"], 3).unwrap();
        assert_eq!(f.listed().collect::<Vec<_>>(), ["a", "b/*"]);
        assert!(f.matches("a") && f.matches("b/x") && !f.matches("b"));
        assert!(f.exact_topics().is_none());
        let exact = TopicFilter::parse(["x", "y"], 3).unwrap();
        let mut topics: Vec<_> = exact.exact_topics().unwrap().collect();
        topics.sort();
        assert_eq!(topics, ["x", "y"]);
    }
}
