//! Publish-to-receive latency, on one clock: each event published carries
//! in its data the time it was sent, in microseconds since the run's epoch
//! (a monotonic `Instant` of the bench, which both publishes and
//! subscribes), and subscribers find it in whatever bytes reach them.
//!
//! The stamp is `%t` and twelve digits. It survives every transport
//! unchanged (an SSE `data:` line, a JSON string in an NDJSON line or a
//! WebSocket frame, nchan's raw message), and `%` appears nowhere else in
//! what the hubs send for a bench's events (ids, topics, times, keep-alives):
//! so a subscriber counts events and takes their latencies by scanning for
//! `%` with `memchr`, without parsing frames or JSON.

use std::time::Duration;

/// Bytes of a stamp.
pub const LEN: usize = MARK.len() + DIGITS;

const MARK: &[u8; 2] = b"%t";

/// Digits of the microseconds: 10¹² µs is eleven days.
const DIGITS: usize = 12;

/// Checks that events of `size` bytes of data have room for their stamp.
pub fn check_size(size: usize) -> anyhow::Result<()> {
    anyhow::ensure!(
        size >= LEN,
        "--size must be at least {LEN} bytes: the data starts with its stamp"
    );
    Ok(())
}

/// Writes the stamp of `micros` over the first `LEN` bytes of `into`.
pub fn write(into: &mut [u8], micros: u64) {
    into[..MARK.len()].copy_from_slice(MARK);
    let mut rest = micros;
    for digit in into[MARK.len()..LEN].iter_mut().rev() {
        *digit = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
}

/// A time as stamps give it: microseconds (since the run's epoch).
pub fn micros(duration: Duration) -> u64 {
    duration.as_micros() as u64
}

/// Finds the stamps of a stream given in pieces, however it is split.
#[derive(Debug, Default)]
pub struct Scanner {
    state: State,
}

#[derive(Debug, Default, Clone, Copy)]
enum State {
    /// Looking for a `%`.
    #[default]
    Idle,
    /// After a `%`.
    Mark,
    /// In the digits: how many, and their value so far.
    Digits(usize, u64),
}

impl Scanner {
    /// Scans the next piece of the stream, handing each stamp's microseconds
    /// to `found`.
    pub fn feed(&mut self, mut bytes: &[u8], found: &mut impl FnMut(u64)) {
        while let Some((&byte, rest)) = bytes.split_first() {
            self.state = match self.state {
                State::Idle => match memchr::memchr(MARK[0], bytes) {
                    Some(at) => {
                        bytes = &bytes[at + 1..];
                        State::Mark
                    }
                    None => return,
                },
                State::Mark => {
                    bytes = rest;
                    match byte {
                        b't' => State::Digits(0, 0),
                        b'%' => State::Mark,
                        _ => State::Idle,
                    }
                }
                State::Digits(seen, value) if byte.is_ascii_digit() => {
                    bytes = rest;
                    let value = value * 10 + u64::from(byte - b'0');
                    if seen + 1 == DIGITS {
                        found(value);
                        State::Idle
                    } else {
                        State::Digits(seen + 1, value)
                    }
                }
                // Not a stamp after all; the byte is looked at again.
                State::Digits(..) => State::Idle,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamped(micros: u64, size: usize) -> Vec<u8> {
        let mut data = vec![b'x'; size];
        write(&mut data, micros);
        data
    }

    #[test]
    fn stamps_are_fixed_width() {
        assert_eq!(stamped(1_234_567, LEN + 2), b"%t000001234567xx");
        assert_eq!(stamped(0, LEN), b"%t000000000000");
    }

    #[test]
    fn stamps_are_found_in_any_framing_however_it_is_split() {
        let mut stream = Vec::new();
        stream.extend_from_slice(b"retry: 5000\n\n: keepalive\n\n");
        for micros in [17, 999_999_999_998, 5_000_001] {
            stream.extend_from_slice(b"id: 1795330686916-0\ndata: ");
            stream.extend_from_slice(&stamped(micros, 40));
            stream.extend_from_slice(b"\n\n{\"id\":\"1-0\",\"topic\":\"bench/1\",\"data\":\"");
            stream.extend_from_slice(&stamped(micros + 1, 20));
            stream.extend_from_slice(b"\",\"time\":\"2026-11-22T06:58:27.398Z\"}\n");
        }
        // Near misses: a `%` without `t`, too few digits, a doubled `%`.
        stream.extend_from_slice(b"%x000000000001 %t12345x %%t000000000042");
        let want = [
            17,
            18,
            999_999_999_998,
            999_999_999_999,
            5_000_001,
            5_000_002,
            42,
        ];
        for piece in 1..=stream.len() {
            let mut scanner = Scanner::default();
            let mut found = Vec::new();
            for part in stream.chunks(piece) {
                scanner.feed(part, &mut |micros| found.push(micros));
            }
            assert_eq!(found, want, "pieces of {piece}");
        }
    }
}
