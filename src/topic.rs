//! Topic names and the patterns subscriptions use.
//!
//! A topic is 1 to 256 bytes of `A-Z a-z 0-9 . _ ~ : @ -` in segments joined
//! by single `/`. A pattern is a topic whose segments may also be `*` (exactly
//! one segment) or, as the last segment, `**` (one or more segments). Topics
//! whose first segment starts with `$` are the hub's own: publishers cannot
//! use them, and a wildcard in the first segment does not match them (as in
//! MQTT), so `**` never mixes hub internals into user streams.
//!
//! Topics are also public or private ([`Access`]): a subscriber reads a
//! private topic only when its grants cover it, and a [`TopicFilter`]
//! restricted by an `Access` never matches a private topic it may not read.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

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

    /// Whether some topic matches both `self` and `other`.
    pub fn overlaps(&self, other: &Pattern) -> bool {
        let wildcard = |s: &Segment| !matches!(s, Segment::Literal(_));
        let (mut a, mut b) = (self.segments.iter(), other.segments.iter());
        let mut first = true;
        loop {
            match (a.next(), b.next()) {
                (None, None) => return true,
                (None, Some(_)) | (Some(_), None) => return false,
                // A wildcard in the first segment never matches a `$` topic.
                (Some(Segment::Literal(lit)), Some(w)) | (Some(w), Some(Segment::Literal(lit)))
                    if first && wildcard(w) && lit.starts_with('$') =>
                {
                    return false;
                }
                (Some(Segment::Literal(x)), Some(Segment::Literal(y))) if x != y => return false,
                // `**` takes whatever the other has left, one segment or more.
                (Some(Segment::Rest), Some(_)) | (Some(_), Some(Segment::Rest)) => return true,
                _ => first = false,
            }
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// Topics and patterns tested together: the exact ones by one hash lookup,
/// the wildcards one by one.
#[derive(Debug, Clone, Default)]
pub struct PatternSet {
    exact: HashSet<Box<str>>,
    wildcards: Vec<Pattern>,
}

impl PatternSet {
    /// Parses every entry; an empty list is an empty set.
    pub fn parse<'a>(entries: impl IntoIterator<Item = &'a str>) -> Result<PatternSet, TopicError> {
        let mut set = PatternSet::default();
        for entry in entries {
            set.insert(Pattern::parse(entry)?);
        }
        Ok(set)
    }

    fn insert(&mut self, pattern: Pattern) {
        if pattern.is_exact() {
            self.exact.insert(pattern.raw);
        } else if !self.wildcards.contains(&pattern) {
            self.wildcards.push(pattern);
        }
    }

    pub fn matches(&self, topic: &str) -> bool {
        self.exact.contains(topic) || self.wildcards.iter().any(|p| p.matches(topic))
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcards.is_empty()
    }

    /// The patterns of the set that some topic of `pattern` matches.
    fn overlapping(&self, pattern: &Pattern) -> impl Iterator<Item = &Pattern> {
        self.wildcards.iter().filter(|p| p.overlaps(pattern))
    }
}

/// Which topics a subscriber may read: the public ones, and the private
/// ones its grants cover. A topic is private when `private` matches it.
#[derive(Debug, Clone)]
pub struct Access {
    private: Arc<PatternSet>,
    grants: Arc<PatternSet>,
}

impl Access {
    pub fn new(private: Arc<PatternSet>, grants: Arc<PatternSet>) -> Access {
        Access { private, grants }
    }

    pub fn allows(&self, topic: &str) -> bool {
        !self.private.matches(topic) || self.grants.matches(topic)
    }
}

/// The set of topics and patterns one subscription asked for.
#[derive(Debug, Clone, Default)]
pub struct TopicFilter {
    patterns: PatternSet,
    /// As the client listed them (deduplicated), for `/clients`.
    listed: Vec<Box<str>>,
    /// What the wildcards may match beyond what they name: `None` when
    /// none of them can match a private topic (see [`TopicFilter::restrict`]).
    access: Option<Access>,
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
            filter.patterns.insert(pattern);
        }
        if filter.listed.is_empty() {
            return Err(TopicError::NoTopics);
        }
        Ok(filter)
    }

    /// Limits the filter to what `access` lets its subscriber read. An
    /// exact topic it may not read is refused: the first such topic is the
    /// error. A wildcard keeps matching only the topics `access` allows; the
    /// check is kept for the private patterns a wildcard can overlap, and
    /// dropped when there are none, so a filter that cannot meet a private
    /// topic costs nothing more to match. Exact topics are never checked
    /// again, which keeps the fan-out's index by topic valid.
    pub fn restrict(mut self, access: &Access) -> Result<TopicFilter, String> {
        if let Some(denied) = self.patterns.exact.iter().find(|t| !access.allows(t)) {
            return Err(denied.to_string());
        }
        let mut private = PatternSet::default();
        for wildcard in &self.patterns.wildcards {
            for pattern in access.private.overlapping(wildcard) {
                private.insert(pattern.clone());
            }
            for topic in &access.private.exact {
                if wildcard.matches(topic) {
                    private.exact.insert(topic.clone());
                }
            }
        }
        self.access = (!private.is_empty()).then(|| Access {
            private: Arc::new(private),
            grants: access.grants.clone(),
        });
        Ok(self)
    }

    pub fn matches(&self, topic: &str) -> bool {
        self.patterns.exact.contains(topic)
            || (self.patterns.wildcards.iter().any(|p| p.matches(topic))
                && self.access.as_ref().is_none_or(|a| a.allows(topic)))
    }

    /// The exact topics, when the filter has no wildcard: the fan-out then
    /// indexes the subscriber by topic instead of testing it on every event.
    pub fn exact_topics(&self) -> Option<impl Iterator<Item = &str>> {
        self.patterns
            .wildcards
            .is_empty()
            .then(|| self.patterns.exact.iter().map(|t| &**t))
    }

    /// Whether the filter lists nothing (a WebSocket's before its first
    /// `subscribe`): it matches no topic.
    pub fn is_empty(&self) -> bool {
        self.listed.is_empty()
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

    fn overlap(a: &str, b: &str) -> bool {
        let (a, b) = (Pattern::parse(a).unwrap(), Pattern::parse(b).unwrap());
        assert_eq!(a.overlaps(&b), b.overlaps(&a), "symmetric");
        a.overlaps(&b)
    }

    #[test]
    fn patterns_overlap_when_a_topic_matches_both() {
        for (a, b) in [
            ("**", "secret/**"),
            ("*/x", "secret/*"),
            ("a/*/c", "a/b/*"),
            ("a/**", "a/b/c/d"),
            ("*", "users"),
            ("$sys/*", "$sys/**"),
            ("a/*/**", "a/b/c"),
        ] {
            assert!(overlap(a, b), "{a} and {b}");
        }
        for (a, b) in [
            ("**", "$sys/**"),
            ("*/clients", "$sys/clients"),
            ("trades/*", "secret/**"),
            ("a/*", "a/b/c"),
            ("a/**", "a"),
            ("a/*/**", "a/b"),
            ("*", "a/*"),
        ] {
            assert!(!overlap(a, b), "{a} and {b}");
        }
    }

    fn access(private: &[&str], grants: &[&str]) -> Access {
        let set = |list: &[&str]| Arc::new(PatternSet::parse(list.iter().copied()).unwrap());
        Access::new(set(private), set(grants))
    }

    #[test]
    fn private_topics_need_a_grant() {
        let a = access(&["secret/**", "users/*", "$sys/**"], &["secret/alice/**"]);
        assert!(a.allows("public") && a.allows("users/a/b"));
        assert!(a.allows("secret/alice/x") && !a.allows("secret/bob/x"));
        assert!(!a.allows("users/bob") && !a.allows("$sys/clients"));
    }

    #[test]
    fn a_restricted_filter_refuses_private_exact_topics() {
        let a = access(&["secret/**", "$sys/**"], &["secret/alice"]);
        let restrict = |entries: &[&str]| {
            TopicFilter::parse(entries.iter().copied(), 10)
                .unwrap()
                .restrict(&a)
        };
        assert_eq!(restrict(&["x", "secret/bob"]).unwrap_err(), "secret/bob");
        assert_eq!(restrict(&["$sys/clients"]).unwrap_err(), "$sys/clients");
        let granted = restrict(&["secret/alice", "x"]).unwrap();
        assert!(granted.matches("secret/alice") && granted.exact_topics().is_some());
    }

    #[test]
    fn a_restricted_wildcard_never_matches_a_private_topic_it_may_not_read() {
        let a = access(&["secret/**", "users/bob", "$sys/**"], &["secret/alice/*"]);
        let all = TopicFilter::parse(["**"], 10)
            .unwrap()
            .restrict(&a)
            .unwrap();
        assert!(all.matches("trades/x") && all.matches("secret/alice/y"));
        assert!(!all.matches("secret/bob/y") && !all.matches("users/bob"));
        let sys = TopicFilter::parse(["$sys/*"], 10)
            .unwrap()
            .restrict(&a)
            .unwrap();
        assert!(!sys.matches("$sys/clients"));
        // A wildcard that cannot meet a private topic keeps no check at all.
        let trades = TopicFilter::parse(["trades/*"], 10).unwrap();
        assert!(trades.restrict(&a).unwrap().access.is_none());
        let users = TopicFilter::parse(["users/*"], 10).unwrap();
        let users = users.restrict(&a).unwrap();
        assert!(users.matches("users/alice") && !users.matches("users/bob"));
    }
}
