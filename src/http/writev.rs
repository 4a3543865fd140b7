//! Writing a batch of chunks in as few system calls as the socket takes:
//! the detached SSE/NDJSON writer ([`super::direct`]) and the WebSocket
//! session both write a batch of events as one vectored write.

use std::io::{self, IoSlice};
use std::task::{Context, Poll, ready};

use smallvec::SmallVec;

/// The slices of one write, held inline up to eight: a batch's chunks (see
/// [`crate::frame::coalesce`]) and their framing, with no allocation.
pub type Slices<'a> = SmallVec<[IoSlice<'a>; 8]>;

/// Polls `write` (one vectored write attempt) until all of `slices` is
/// written, advancing them past what each write took.
pub fn poll_write_all(
    cx: &mut Context<'_>,
    slices: &mut &mut [IoSlice<'_>],
    mut write: impl FnMut(&mut Context<'_>, &[IoSlice<'_>]) -> Poll<io::Result<usize>>,
) -> Poll<io::Result<()>> {
    while !slices.is_empty() {
        match ready!(write(cx, slices))? {
            0 => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            n => IoSlice::advance_slices(slices, n),
        }
    }
    Poll::Ready(Ok(()))
}
