//! Writing a batch of chunks in as few system calls as the socket takes:
//! the detached SSE/NDJSON writer ([`super::direct`]) and the WebSocket
//! session both write a batch of events as one vectored write, which a
//! cut-off stops while it waits for room.

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use smallvec::SmallVec;
use tokio_util::sync::CancellationToken;

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

/// Runs `write` to its end, unless `cut_off` is cancelled while it waits
/// (for room in the socket): `None` then, and the write stops where it is.
///
/// The token is looked at only once the write has had to wait. Most writes
/// complete at once, and making the token's future reads the token's
/// state: a cache line of the subscriber's own, cold by the time its next
/// batch comes, touched by every write for nothing (1.5% of the hub's CPU
/// with 10,000 subscribers). A cut-off subscriber learns of it from its
/// mailbox anyway; the token is for one whose write is stuck.
///
/// The write is pinned by the caller, where it stays: moved in here, it
/// would take room in this future as well as in the caller's (a
/// WebSocket's send made an idle socket's task 200 bytes larger).
pub async fn unless_cut_off<F: Future>(
    write: Pin<&mut F>,
    cut_off: &CancellationToken,
) -> Option<F::Output> {
    tokio::select! {
        biased;
        done = write => Some(done),
        // An async block, so that the token's future is made only when
        // the block is first polled: after the write has had to wait.
        () = async { cut_off.cancelled().await } => None,
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
    use std::future::{pending, ready};
    use std::pin::pin;

    use super::*;

    #[tokio::test]
    async fn a_write_is_stopped_by_a_cut_off_only_while_it_waits() {
        let cut_off = CancellationToken::new();
        assert_eq!(unless_cut_off(pin!(ready(1)), &cut_off).await, Some(1));
        cut_off.cancel();
        assert_eq!(
            unless_cut_off(pin!(ready(2)), &cut_off).await,
            Some(2),
            "a write that completes at once completes"
        );
        assert_eq!(unless_cut_off(pin!(pending::<()>()), &cut_off).await, None);
        let later = CancellationToken::new();
        let stuck = pin!(pending::<()>());
        let waiting = unless_cut_off(stuck, &later);
        let cancel = async {
            tokio::task::yield_now().await;
            later.cancel();
        };
        let (stopped, ()) = tokio::join!(waiting, cancel);
        assert_eq!(stopped, None, "a waiting write is stopped when cut off");
    }

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
