//! Writing a batch of chunks in as few system calls as the socket takes:
//! the detached SSE/NDJSON writer ([`super::direct`]) and the WebSocket
//! session both write a batch of events as one vectored write.

use std::io::{self, IoSlice};
use std::task::{Context, Poll, ready};

use smallvec::SmallVec;

/// The slices of one write attempt, inline up to eight: a batch's chunks
/// (see [`crate::frame::coalesce`]) and their framing, with no allocation.
pub type Slices<'a> = SmallVec<[IoSlice<'a>; 8]>;

/// Polls `write` (one vectored write attempt) until all of `parts` is
/// written, counting in `written` the bytes of them written so far.
///
/// The slices of each attempt are made anew, on the stack, from `parts`
/// and `written`: a write that waits for room keeps only the count. A
/// subscriber's task is as large as the largest state of its future, idle
/// or not, so slices kept across the wait would cost every idle subscriber
/// their size.
pub fn poll_write_all<'a, P>(
    cx: &mut Context<'_>,
    parts: impl Fn() -> P,
    written: &mut usize,
    mut write: impl FnMut(&mut Context<'_>, &[IoSlice<'_>]) -> Poll<io::Result<usize>>,
) -> Poll<io::Result<()>>
where
    P: Iterator<Item = &'a [u8]>,
{
    loop {
        let slices: Slices<'_> = unwritten(parts(), *written).map(IoSlice::new).collect();
        if slices.is_empty() {
            return Poll::Ready(Ok(()));
        }
        match ready!(write(cx, &slices))? {
            0 => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            n => *written += n,
        }
    }
}

/// What is left of `parts` once their first `written` bytes are out;
/// empty parts left out.
pub fn unwritten<'a>(
    parts: impl Iterator<Item = &'a [u8]>,
    mut written: usize,
) -> impl Iterator<Item = &'a [u8]> {
    parts.filter_map(move |part| {
        let skip = written.min(part.len());
        written -= skip;
        (skip < part.len()).then(|| &part[skip..])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_left_starts_after_what_was_written() {
        let parts: [&[u8]; 4] = [b"abc", b"", b"de", b"fghi"];
        for (written, left) in [
            (0, "abcdefghi"),
            (2, "cdefghi"),
            (3, "defghi"),
            (6, "ghi"),
            (9, ""),
        ] {
            let rest: Vec<u8> = unwritten(parts.into_iter(), written)
                .inspect(|part| assert!(!part.is_empty()))
                .flatten()
                .copied()
                .collect();
            assert_eq!(rest, left.as_bytes(), "after {written}");
        }
    }
}
