//! HTTP/1.1 responses as the bench reads them: the head (status and how the
//! body ends), and the body, decoded in place from whatever pieces the
//! socket gives (chunked, of a length, or up to the connection's end).

use anyhow::Context;
use hyper::StatusCode;

/// Headers of a response that the bench reads.
const MAX_HEADERS: usize = 64;

/// The longest chunk size or trailer line taken.
const MAX_LINE: usize = 1024;

/// The status and framing of a complete response head at the start of
/// `bytes`, and the head's length; `None` while it is incomplete.
pub fn parse_head(bytes: &[u8]) -> anyhow::Result<Option<(StatusCode, Framing, usize)>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let length = match response
        .parse(bytes)
        .context("the hub's answer is not HTTP")?
    {
        httparse::Status::Complete(length) => length,
        httparse::Status::Partial => return Ok(None),
    };
    let status = StatusCode::from_u16(response.code.unwrap_or_default())?;
    let header = |name: &str| {
        response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_ascii_lowercase())
    };
    let framing = if header("transfer-encoding").is_some_and(|te| te.ends_with("chunked")) {
        Framing::chunked()
    } else if let Some(length) = header("content-length") {
        Framing::Length(length.parse().context("a malformed Content-Length")?)
    } else {
        Framing::Close
    };
    Ok(Some((status, framing, length)))
}

/// How a response body's end is known, and how far it has come.
#[derive(Debug, PartialEq)]
pub enum Framing {
    Chunked(Chunked),
    /// Bytes of the body still to come.
    Length(u64),
    /// The body ends when the connection does.
    Close,
}

/// Where a chunked body's decoding is.
#[derive(Debug, PartialEq)]
pub enum Chunked {
    /// In a chunk's size line: what has come of it.
    Size(Vec<u8>),
    /// In a chunk's data: bytes still to come.
    Data(u64),
    /// In the CRLF after a chunk's data: bytes of it seen.
    DataEnd(usize),
    /// After the last chunk, in the trailer: the current line so far.
    Trailer(Vec<u8>),
    Done,
}

impl Framing {
    /// A chunked body, before its first chunk.
    pub fn chunked() -> Framing {
        Framing::Chunked(Chunked::Size(Vec::new()))
    }

    /// Whether the whole body has been decoded.
    pub fn ended(&self) -> bool {
        matches!(self, Framing::Length(0) | Framing::Chunked(Chunked::Done))
    }

    /// Decodes the start of `input`, handing body data to `sink`, up to the
    /// body's end; returns how many bytes of `input` that took (the rest
    /// belongs to what follows the response).
    pub fn feed(
        &mut self,
        input: &[u8],
        sink: &mut impl FnMut(&[u8]) -> anyhow::Result<()>,
    ) -> anyhow::Result<usize> {
        let chunked = match self {
            Framing::Chunked(chunked) => chunked,
            Framing::Length(left) => {
                let n = input
                    .len()
                    .min(usize::try_from(*left).unwrap_or(usize::MAX));
                sink(&input[..n])?;
                *left -= n as u64;
                return Ok(n);
            }
            Framing::Close => {
                sink(input)?;
                return Ok(input.len());
            }
        };
        let mut rest = input;
        while !rest.is_empty() {
            match chunked {
                Chunked::Size(line) => {
                    let Some(size) = take_line(line, &mut rest, chunk_size)? else {
                        break;
                    };
                    *chunked = match size {
                        0 => Chunked::Trailer(Vec::new()),
                        size => Chunked::Data(size),
                    };
                }
                Chunked::Data(left) => {
                    let n = rest.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                    sink(&rest[..n])?;
                    rest = &rest[n..];
                    *left -= n as u64;
                    if *left == 0 {
                        *chunked = Chunked::DataEnd(0);
                    }
                }
                Chunked::DataEnd(seen) => {
                    anyhow::ensure!(rest[0] == b"\r\n"[*seen], "a chunk not followed by CRLF");
                    rest = &rest[1..];
                    *seen += 1;
                    if *seen == 2 {
                        *chunked = Chunked::Size(Vec::new());
                    }
                }
                Chunked::Trailer(line) => {
                    let Some(blank) = take_line(line, &mut rest, |line| Ok(line.is_empty()))?
                    else {
                        break;
                    };
                    if blank {
                        *chunked = Chunked::Done;
                    } else {
                        line.clear();
                    }
                }
                Chunked::Done => break,
            }
        }
        Ok(input.len() - rest.len())
    }
}

/// Takes `rest` up to its first `\n` (taken too) as the end of the line
/// begun in `line`, and hands the whole line, without its line end, to
/// `parse`; returns `None` when `rest` had no `\n` (then all of it went onto
/// `line`, to be continued by the next input). A line that comes whole in
/// `rest` is parsed where it is, not copied: a stream has a chunk size line
/// before every event.
fn take_line<T>(
    line: &mut Vec<u8>,
    rest: &mut &[u8],
    parse: impl FnOnce(&[u8]) -> anyhow::Result<T>,
) -> anyhow::Result<Option<T>> {
    let too_long = || anyhow::anyhow!("a chunk size or trailer line too long");
    let Some(end) = memchr::memchr(b'\n', rest) else {
        line.extend_from_slice(rest);
        *rest = &[];
        return match line.len() <= MAX_LINE {
            true => Ok(None),
            false => Err(too_long()),
        };
    };
    let content = &rest[..end];
    *rest = &rest[end + 1..];
    let whole: &[u8] = match line.is_empty() {
        true => content,
        false => {
            line.extend_from_slice(content);
            line
        }
    };
    anyhow::ensure!(whole.len() < MAX_LINE, too_long());
    parse(whole.strip_suffix(b"\r").unwrap_or(whole)).map(Some)
}

/// The size in a chunk size line (`1a3;ext=1`), hexadecimal.
fn chunk_size(line: &[u8]) -> anyhow::Result<u64> {
    let digits = line.split(|&b| b == b';').next().unwrap_or_default();
    let digits = std::str::from_utf8(digits).ok().map(str::trim);
    digits
        .filter(|d| !d.is_empty() && d.len() <= 16)
        .and_then(|d| u64::from_str_radix(d, 16).ok())
        .with_context(|| {
            format!(
                "a malformed chunk size line: {:?}",
                String::from_utf8_lossy(line)
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `piece` bytes as a reader would (what a
    /// piece leaves is fed again with the next); returns the body and the
    /// bytes after it.
    fn decode(
        mut framing: Framing,
        input: &[u8],
        piece: usize,
    ) -> anyhow::Result<(Vec<u8>, Vec<u8>, bool)> {
        let mut body = Vec::new();
        let mut pending = Vec::new();
        for part in input.chunks(piece) {
            pending.extend_from_slice(part);
            if framing.ended() {
                continue;
            }
            let used = framing.feed(&pending, &mut |data| {
                body.extend_from_slice(data);
                Ok(())
            })?;
            pending.drain(..used);
        }
        let ended = framing.ended();
        Ok((body, pending, ended))
    }

    #[test]
    fn chunked_bodies_decode_however_they_are_split() {
        let input = b"5\r\nhello\r\n19;name=value\r\n{\"id\":\"1-0\",\"data\":12345}\r\n0\r\nX-Trailer: 1\r\n\r\nHTTP/1.1";
        for piece in 1..=input.len() {
            let (body, after, ended) = decode(Framing::chunked(), input, piece).unwrap();
            assert_eq!(
                body, b"hello{\"id\":\"1-0\",\"data\":12345}",
                "pieces of {piece}"
            );
            assert_eq!(
                (after.as_slice(), ended),
                (&b"HTTP/1.1"[..], true),
                "pieces of {piece}"
            );
        }
        let (body, _, ended) = decode(Framing::chunked(), b"3\r\nabc\r\n2\r\nde", 4).unwrap();
        assert_eq!((body.as_slice(), ended), (&b"abcde"[..], false));
    }

    #[test]
    fn malformed_chunks_are_errors() {
        for input in [
            &b"zz\r\nab\r\n"[..],
            b"\r\n",
            b"2\r\nabXY",
            b"12345678901234567\r\n",
        ] {
            assert!(
                decode(Framing::chunked(), input, input.len()).is_err(),
                "{input:?}"
            );
        }
        let long = vec![b'1'; MAX_LINE + 1];
        assert!(decode(Framing::chunked(), &long, 100).is_err());
    }

    #[test]
    fn bodies_of_a_length_or_up_to_the_end() {
        let (body, after, ended) = decode(Framing::Length(5), b"hello, more", 3).unwrap();
        assert_eq!(
            (body.as_slice(), after.as_slice(), ended),
            (&b"hello"[..], &b", more"[..], true)
        );
        assert!(Framing::Length(0).ended());
        let (body, _, ended) = decode(Framing::Close, b"all of it", 2).unwrap();
        assert_eq!((body.as_slice(), ended), (&b"all of it"[..], false));
    }

    #[test]
    fn heads_give_status_framing_and_length() {
        let head = b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n";
        let (status, framing, length) = parse_head(head).unwrap().unwrap();
        assert_eq!((status, framing), (StatusCode::OK, Framing::chunked()));
        assert_eq!(&head[length..], b"5\r\n");
        let (status, framing, _) =
            parse_head(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 12\r\n\r\n")
                .unwrap()
                .unwrap();
        assert_eq!(
            (status, framing),
            (StatusCode::BAD_REQUEST, Framing::Length(12))
        );
        let (_, framing, _) = parse_head(b"HTTP/1.1 200 OK\r\n\r\n").unwrap().unwrap();
        assert_eq!(framing, Framing::Close);
        assert!(
            parse_head(b"HTTP/1.1 200 OK\r\ncontent-")
                .unwrap()
                .is_none()
        );
        assert!(parse_head(b"<html>\r\n\r\n").is_err());
    }
}
