//! As much of a WebSocket client (RFC 6455) as a subscriber that only
//! reads needs: the upgrade request's headers, and the server's frames
//! decoded in place from whatever pieces the socket gives, their payloads
//! handed on without being copied or checked as UTF-8 (a client library
//! would make a message of each, an allocation per event). Pings are
//! answered, as the hub closes a socket whose pings go unanswered.

/// Headers of the upgrade request. The key is the RFC's example: the bench
/// does not check the server's answer to it, only its `101` status.
pub const UPGRADE_HEADERS: &[(&str, &str)] = &[
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Version", "13"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
];

const CONTINUATION: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// The longest frame head: 2 bytes, a 64-bit length, a mask.
const MAX_HEAD: usize = 14;

/// Where the decoding of a server's frames is.
#[derive(Debug)]
pub struct Frames {
    state: State,
    /// The payload so far of the control frame being read.
    control: Vec<u8>,
    /// Frames to send back (pongs), masked as a client's must be.
    replies: Vec<u8>,
    /// Whether the server sent a close frame.
    closed: bool,
}

#[derive(Debug)]
enum State {
    /// In a frame's head: its bytes so far.
    Head([u8; MAX_HEAD], usize),
    /// In a frame's payload: its opcode and the bytes still to come.
    Payload(u8, u64),
}

impl Default for Frames {
    fn default() -> Frames {
        Frames {
            state: State::Head([0; MAX_HEAD], 0),
            control: Vec::new(),
            replies: Vec::new(),
            closed: false,
        }
    }
}

impl Frames {
    /// Decodes the next bytes of the stream, handing the payloads of data
    /// frames, in pieces, to `data`.
    pub fn feed(&mut self, mut input: &[u8], data: &mut impl FnMut(&[u8])) -> anyhow::Result<()> {
        while !input.is_empty() {
            match &mut self.state {
                State::Head(head, have) => {
                    let want = head_length(&head[..*have]);
                    let n = (want - *have).min(input.len());
                    head[*have..*have + n].copy_from_slice(&input[..n]);
                    *have += n;
                    input = &input[n..];
                    // The head's length is known from its first two bytes.
                    if *have == want && want == head_length(&head[..*have]) {
                        let (opcode, length) = parse_head(&head[..want])?;
                        self.state = State::Payload(opcode, length);
                        if length == 0 {
                            self.end_of_frame(opcode);
                        }
                    }
                }
                State::Payload(opcode, left) => {
                    let opcode = *opcode;
                    let n = input
                        .len()
                        .min(usize::try_from(*left).unwrap_or(usize::MAX));
                    match opcode {
                        CONTINUATION | TEXT | BINARY => data(&input[..n]),
                        _ => self.control.extend_from_slice(&input[..n]),
                    }
                    input = &input[n..];
                    *left -= n as u64;
                    if *left == 0 {
                        self.end_of_frame(opcode);
                    }
                }
            }
        }
        Ok(())
    }

    /// Finishes the frame whose payload has all come.
    fn end_of_frame(&mut self, opcode: u8) {
        match opcode {
            PING => {
                // FIN and PONG; the mask bit and the length (at most 125 in
                // a control frame); a mask of zeros, which leaves the
                // payload as it is.
                self.replies.extend_from_slice(&[
                    0x80 | PONG,
                    0x80 | self.control.len() as u8,
                    0,
                    0,
                    0,
                    0,
                ]);
                self.replies.extend_from_slice(&self.control);
            }
            CLOSE => self.closed = true,
            _ => {}
        }
        self.control.clear();
        self.state = State::Head([0; MAX_HEAD], 0);
    }

    /// Frames to send back to the server, if any: taken from here.
    pub fn take_replies(&mut self) -> Option<Vec<u8>> {
        (!self.replies.is_empty()).then(|| std::mem::take(&mut self.replies))
    }

    /// Whether the server has closed the WebSocket.
    pub fn closed(&self) -> bool {
        self.closed
    }
}

/// The length of a head that starts with `head`: as far as it tells, at
/// least 2 bytes.
fn head_length(head: &[u8]) -> usize {
    let Some(&second) = head.get(1) else {
        return 2;
    };
    let extended = match second & 0x7F {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if second & 0x80 != 0 { 4 } else { 0 };
    2 + extended + mask
}

/// The opcode and payload length of a whole head.
fn parse_head(head: &[u8]) -> anyhow::Result<(u8, u64)> {
    anyhow::ensure!(head[1] & 0x80 == 0, "the server sent a masked frame");
    let opcode = head[0] & 0x0F;
    let length = match head[1] & 0x7F {
        126 => u64::from(u16::from_be_bytes([head[2], head[3]])),
        127 => u64::from_be_bytes(head[2..10].try_into().expect("8 bytes")),
        short => u64::from(short),
    };
    anyhow::ensure!(
        matches!(opcode, CONTINUATION | TEXT | BINARY | CLOSE | PING | PONG),
        "a frame of unknown opcode {opcode:#x}"
    );
    anyhow::ensure!(
        opcode < CLOSE || length <= 125,
        "a control frame of {length} bytes"
    );
    Ok((opcode, length))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server's frame: unmasked, final.
    fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut frame = vec![0x80 | opcode];
        match payload.len() {
            n if n < 126 => frame.push(n as u8),
            n if n <= 0xFFFF => {
                frame.push(126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(payload);
        frame
    }

    #[test]
    fn payloads_are_decoded_however_the_stream_is_split() {
        let long = vec![b'y'; 300];
        let huge = vec![b'z'; 70_000];
        let mut stream = Vec::new();
        stream.extend(frame(TEXT, b"{\"id\":\"1-0\"}"));
        stream.extend(frame(PING, b"p1"));
        stream.extend(frame(TEXT, &long));
        stream.extend(frame(PONG, b""));
        stream.extend(frame(BINARY, &huge));
        stream.extend(frame(TEXT, b""));
        stream.extend(frame(PING, b""));
        let mut want = b"{\"id\":\"1-0\"}".to_vec();
        want.extend_from_slice(&long);
        want.extend_from_slice(&huge);
        for piece in [1, 2, 3, 7, 100, 4096, stream.len()] {
            let mut frames = Frames::default();
            let mut data = Vec::new();
            for part in stream.chunks(piece) {
                frames
                    .feed(part, &mut |payload| data.extend_from_slice(payload))
                    .unwrap();
            }
            assert!(data == want, "pieces of {piece}");
            assert_eq!(
                frames.take_replies().unwrap(),
                [0x8A, 0x82, 0, 0, 0, 0, b'p', b'1', 0x8A, 0x80, 0, 0, 0, 0],
                "pieces of {piece}"
            );
            assert_eq!(frames.take_replies(), None);
            assert!(!frames.closed());
        }
    }

    #[test]
    fn a_close_frame_closes() {
        let mut frames = Frames::default();
        frames
            .feed(&frame(CLOSE, &[0x03, 0xF5]), &mut |_| {})
            .unwrap();
        assert!(frames.closed());
    }

    #[test]
    fn frames_a_server_may_not_send_are_errors() {
        let masked = [0x81, 0x81, 1, 2, 3, 4, b'a'];
        let unknown = [0x83, 0x00];
        let long_ping = frame(PING, &[0; 126]);
        for input in [&masked[..], &unknown, &long_ping] {
            assert!(
                Frames::default().feed(input, &mut |_| {}).is_err(),
                "{input:?}"
            );
        }
    }
}
