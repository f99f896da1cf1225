//! A chunked response body, decoded as it arrives (RFC 9112 §7.1), for the direct path.
//!
//! Chunk-size lines are parsed by `httparse::parse_chunk_size` (extensions ignored); the
//! data is split off the read buffer without a copy; trailer fields are read and dropped, as
//! pingora's path drops them (docs/direct-path.md). Anything malformed is an error: the
//! response is cut and the connection to the target is not reused.

use bytes::{Bytes, BytesMut};

/// Longest chunk-size line, and longest trailer section, accepted.
const MAX_LINE: usize = 4096;
const MAX_TRAILERS: usize = 64 * 1024;

/// A malformed chunked body.
#[derive(Debug, PartialEq, Eq)]
pub struct Malformed(&'static str);

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed chunked body: {}", self.0)
    }
}

/// What the decoder has for the caller.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Body bytes.
    Data(Bytes),
    /// Nothing until more bytes are read.
    More,
    /// The body is complete (the last chunk and the trailers were consumed).
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Size,
    Data(u64),
    DataEnd,
    Trailers(usize),
    Done,
}

/// Decodes one chunked body.
#[derive(Debug)]
pub struct Decoder {
    state: State,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder { state: State::Size }
    }
}

impl Decoder {
    /// Whether the whole body was decoded.
    #[cfg(test)]
    pub fn done(&self) -> bool {
        self.state == State::Done
    }

    /// The next step, consuming from `buf` what it decodes.
    pub fn step(&mut self, buf: &mut BytesMut) -> Result<Step, Malformed> {
        loop {
            match self.state {
                State::Done => return Ok(Step::Done),
                State::Size => match httparse::parse_chunk_size(buf) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        let _ = buf.split_to(used);
                        self.state = if size == 0 {
                            State::Trailers(0)
                        } else {
                            State::Data(size)
                        };
                    }
                    Ok(httparse::Status::Partial) if buf.len() > MAX_LINE => {
                        return Err(Malformed("chunk-size line too long"))
                    }
                    Ok(httparse::Status::Partial) => return Ok(Step::More),
                    Err(_) => return Err(Malformed("bad chunk-size line")),
                },
                State::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Step::More);
                    }
                    let n = (buf.len() as u64).min(left) as usize;
                    let data = buf.split_to(n).freeze();
                    self.state = if left == n as u64 {
                        State::DataEnd
                    } else {
                        State::Data(left - n as u64)
                    };
                    return Ok(Step::Data(data));
                }
                State::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Step::More);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(Malformed("chunk data not followed by CRLF"));
                    }
                    let _ = buf.split_to(2);
                    self.state = State::Size;
                }
                State::Trailers(seen) => {
                    let Some(lf) = memchr::memchr(b'\n', buf) else {
                        if seen + buf.len() > MAX_TRAILERS {
                            return Err(Malformed("trailer section too large"));
                        }
                        return Ok(Step::More);
                    };
                    let line = buf.split_to(lf + 1);
                    if line.len() > 2 || (line.len() == 2 && line[0] != b'\r') {
                        let seen = seen + line.len();
                        if seen > MAX_TRAILERS {
                            return Err(Malformed("trailer section too large"));
                        }
                        self.state = State::Trailers(seen);
                    } else {
                        self.state = State::Done;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `wire` fed in pieces of `piece` bytes; the body and whether it ended.
    fn decode(wire: &[u8], piece: usize) -> Result<(Vec<u8>, bool), Malformed> {
        let mut d = Decoder::default();
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        for part in wire.chunks(piece.max(1)) {
            buf.extend_from_slice(part);
            loop {
                match d.step(&mut buf)? {
                    Step::Data(b) => body.extend_from_slice(&b),
                    Step::More => break,
                    Step::Done => return Ok((body, true)),
                }
            }
        }
        Ok((body, d.done()))
    }

    #[test]
    fn bodies_decode_whatever_the_read_sizes() {
        let wire = b"5\r\nhello\r\n1;ext=1\r\n \r\nA\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\n";
        for piece in [1, 2, 3, 7, wire.len()] {
            let (body, done) = decode(wire, piece).expect("well formed");
            assert_eq!(body, b"hello 0123456789", "piece {piece}");
            assert!(done);
        }
        let (body, done) = decode(b"0\r\n\r\n", 1).expect("empty body");
        assert!(body.is_empty() && done);
        // Incomplete: not done.
        let (_, done) = decode(b"5\r\nhel", 2).expect("so far so good");
        assert!(!done);
    }

    #[test]
    fn malformed_bodies_are_errors() {
        for bad in [
            &b"zz\r\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhelloXX0\r\n\r\n",
            b"-1\r\n",
        ] {
            assert!(
                decode(bad, 1).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = vec![b'1'; MAX_LINE + 10];
        assert!(decode(&long, 64).is_err());
        let mut trailers = b"0\r\n".to_vec();
        trailers.extend(std::iter::repeat_n(b"X-A: b\r\n".as_slice(), 10_000).flatten());
        assert!(decode(&trailers, 4096).is_err());
    }
}
