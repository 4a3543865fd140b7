//! Events' frames written straight onto a WebSocket's connection, under
//! tungstenite: the frames are encoded once for every socket
//! ([`crate::event::Event::ws_frame`]), and a batch of them goes out in one
//! vectored write, where tungstenite would copy and frame each message for
//! each socket.
//!
//! The catch is that tungstenite's frames and ours share one byte stream,
//! so none may start inside another: tungstenite's queued frames (the
//! answer to a ping) are flushed before ours, and a write of ours cut
//! short (by the cut-off of a slow socket) keeps what it has not written,
//! so that the frame it was in is finished before the close frame.

use std::future::poll_fn;
use std::pin::Pin;

use bytes::Bytes;
use futures_util::SinkExt;
use tokio::io::AsyncWrite;
use tokio_tungstenite::tungstenite;

use super::handshake::Socket;
use crate::frame::Chunks;
use crate::http::writev;

/// A batch of frames on its way, and how far it has been written.
pub struct Outgoing {
    /// Whole frames, as [`crate::frame::coalesce`] makes them of a batch.
    chunks: Chunks,
    /// Bytes of `chunks` the socket has taken.
    written: usize,
}

impl Outgoing {
    pub fn new(chunks: Chunks) -> Outgoing {
        Outgoing { chunks, written: 0 }
    }

    /// The bytes of the batch.
    pub fn len(&self) -> usize {
        self.chunks.iter().map(Bytes::len).sum()
    }

    /// Writes what is left of the batch. If the future is dropped before
    /// it ends, the batch knows how far it got.
    pub async fn write(&mut self, socket: &mut Socket) -> tungstenite::Result<()> {
        socket.flush().await?;
        let Outgoing { chunks, written } = self;
        let connection = socket.get_mut();
        poll_fn(|cx| {
            let parts = || chunks.iter().map(|chunk| &chunk[..]);
            writev::poll_write_all(cx, parts, written, |cx, slices| {
                Pin::new(&mut *connection).poll_write_vectored(cx, slices)
            })
        })
        .await?;
        Ok(())
    }

    /// Drops the chunks that no byte of has been written: what is left is
    /// the rest of the chunk the socket took a part of, which must go out
    /// before any other frame.
    pub fn cut_short(&mut self) {
        let mut start = 0;
        let begun = self.chunks.iter().take_while(|chunk| {
            let begun = start < self.written;
            start += chunk.len();
            begun
        });
        let begun = begun.count();
        self.chunks.truncate(begun);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks() -> Chunks {
        [&b"abc"[..], b"de", b"fghi"]
            .into_iter()
            .map(Bytes::from_static)
            .collect()
    }

    fn rest(outgoing: &Outgoing) -> Vec<u8> {
        let chunks = outgoing.chunks.iter().map(|chunk| &chunk[..]);
        writev::unwritten(chunks, outgoing.written)
            .flatten()
            .copied()
            .collect()
    }

    #[test]
    fn cut_short_keeps_only_the_rest_of_a_begun_chunk() {
        for (written, left) in [(0, ""), (1, "bc"), (3, ""), (4, "e"), (7, "hi"), (9, "")] {
            let mut outgoing = Outgoing::new(chunks());
            outgoing.written = written;
            outgoing.cut_short();
            assert_eq!(rest(&outgoing), left.as_bytes(), "after {written}");
        }
    }
}
