//! The target's response on the direct path: its framing (RFC 9112 §6.3, as pingora's client
//! reads it), the head the client gets (pingora's rules), and the body forwarded.

use std::fmt::Write as _;

use bytes::{BufMut, BytesMut};
use http::Method;
use log::debug;
use tokio::io::{AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;

use super::chunked::{self, Decoder};
use super::wire::{push_header, uninit_fields, with_deadline, write_down};
use super::{BODY_READ, READ_CHUNK};
use crate::net::Target;
use crate::proxy::{forward, Shared};

/// The framing of an upstream response body (RFC 9112 §6.3, as pingora's client reads it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Until the target closes: forwarded chunked, the connection not reused.
    Close,
}

/// A parsed upstream response head, with what the direct path must know of it.
pub(super) struct ResponseHead {
    pub status: u16,
    /// Bytes of the head in the read buffer.
    pub len: usize,
    pub framing: Framing,
    /// The target may keep the connection (HTTP/1.1 without `Connection: close`).
    pub reusable: bool,
}

/// The response head for the client, as pingora's path writes it: the target's status
/// line and fields in their order and spelling, `Content-Length` dropped when
/// `Transfer-Encoding` is present, a body delimited by close re-framed as chunked (HTTP/1.1),
/// `Location` rewritten (`--auto-rewrite`, `--protocol-rewrite`), and `Date` and
/// `Connection` set (in place when the target sent them).
pub(super) fn response_head(
    sh: &Shared,
    raw: &[u8],
    resp: &ResponseHead,
    target: &Target,
    host: Option<&str>,
    keep: bool,
) -> BytesMut {
    let mut hs = uninit_fields();
    let mut parsed = httparse::Response::new(&mut []);
    let _ = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut parsed,
        raw,
        &mut hs,
    );
    let fwd = &sh.forwarding;
    let mut out = BytesMut::with_capacity(raw.len() + 96);
    let version = if resp.framing == Framing::Close || parsed.version == Some(1) {
        "HTTP/1.1 "
    } else {
        "HTTP/1.0 "
    };
    out.put_slice(version.as_bytes());
    let _ = write!(out, "{}", resp.status);
    out.put_u8(b' ');
    out.put_slice(parsed.reason.unwrap_or_default().as_bytes());
    out.put_slice(b"\r\n");
    let has_te = parsed
        .headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("transfer-encoding"));
    let date = pingora::protocols::http::date::get_cached_date();
    let connection: &[u8] = if keep { b"keep-alive" } else { b"close" };
    let (mut date_done, mut conn_done, mut location_done) = (false, false, false);
    // A target must not set or clear hubgate's own cookies (as `drop_own_set_cookies`).
    let auth_on = sh.auth.load().is_some();
    for h in parsed.headers.iter() {
        let name = h.name;
        let dropped = (has_te && name.eq_ignore_ascii_case("content-length"))
            || (auth_on
                && name.eq_ignore_ascii_case("set-cookie")
                && crate::auth::sets_own_cookie(h.value));
        if dropped {
            continue;
        } else if name.eq_ignore_ascii_case("date") {
            if !date_done {
                date_done = true;
                push_header(&mut out, b"Date", date.as_bytes());
            }
        } else if name.eq_ignore_ascii_case("connection") {
            if !conn_done {
                conn_done = true;
                push_header(&mut out, b"Connection", connection);
            }
        } else if name.eq_ignore_ascii_case("location")
            && (fwd.auto_rewrite || fwd.protocol_rewrite.is_some())
        {
            if location_done {
                continue;
            }
            location_done = true;
            let new = std::str::from_utf8(h.value)
                .ok()
                .and_then(|l| forward::rewrite_location(resp.status, l, target, host, fwd));
            match new {
                Some(new) => push_header(&mut out, b"location", new.as_bytes()),
                None => push_header(&mut out, name.as_bytes(), h.value),
            }
        } else {
            push_header(&mut out, name.as_bytes(), h.value);
        }
    }
    if resp.framing == Framing::Close {
        push_header(&mut out, b"Transfer-Encoding", b"chunked");
    }
    if !date_done {
        push_header(&mut out, b"Date", date.as_bytes());
    }
    if !conn_done {
        push_header(&mut out, b"Connection", connection);
    }
    out.put_slice(b"\r\n");
    out
}

/// The facts of a parsed response head; `None` for framing pingora would refuse (a
/// `Content-Length` that is not one number).
pub(super) fn response_facts(
    resp: &httparse::Response<'_, '_>,
    len: usize,
    method: &Method,
) -> Option<ResponseHead> {
    let status = resp.code?;
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut te = false;
    let mut close = resp.version != Some(1);
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            // Identical repeats, also comma-joined, are one length (RFC 9110 §8.6, as
            // pingora accepts them); anything else is refused.
            for part in std::str::from_utf8(h.value).ok()?.split(',') {
                let v: u64 = part.trim().parse().ok()?;
                if length.is_some_and(|l| l != v) {
                    return None;
                }
                length = Some(v);
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            te = true;
            // The last coding decides (RFC 9112 §6.3).
            chunked = h
                .value
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if h.name.eq_ignore_ascii_case("connection") {
            let v = h.value;
            if v.split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
            {
                close = true;
            } else if resp.version == Some(0)
                && v.split(|&b| b == b',')
                    .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"keep-alive"))
            {
                close = false;
            }
        }
    }
    let framing = if *method == Method::HEAD || status < 200 || status == 204 || status == 304 {
        Framing::None
    } else if te {
        if chunked {
            Framing::Chunked
        } else {
            Framing::Close
        }
    } else if let Some(l) = length {
        Framing::Length(l)
    } else {
        Framing::Close
    };
    Some(ResponseHead {
        status,
        len,
        framing,
        reusable: !close,
    })
}

/// Forwards the body after writing `head`: the number of body bytes sent, or on a failure of
/// either side, those sent until then.
pub(super) async fn forward_body<S>(
    up: &mut TcpStream,
    down: &mut S,
    mut rbuf: BytesMut,
    head: BytesMut,
    framing: Framing,
    sh: &Shared,
) -> Result<usize, usize>
where
    S: AsyncWrite + Unpin,
{
    let read_t = sh.peer_timeouts.read;
    let write_t = sh.timeouts.downstream;
    let mut out = head;
    let mut sent = 0usize;
    match framing {
        Framing::None => {
            write_down(down, &out, write_t).await.map_err(|_| sent)?;
        }
        Framing::Length(total) => {
            let mut left = total;
            loop {
                let n = (rbuf.len() as u64).min(left) as usize;
                if !out.is_empty() {
                    // The head goes out with the body bytes read with it: one write for a
                    // small response.
                    out.put_slice(&rbuf[..n]);
                    write_down(down, &out, write_t).await.map_err(|_| sent)?;
                    out.clear();
                } else if n > 0 {
                    // Later reads go out as read, without a copy.
                    write_down(down, &rbuf[..n], write_t)
                        .await
                        .map_err(|_| sent)?;
                }
                let _ = rbuf.split_to(n);
                left -= n as u64;
                sent += n;
                if left == 0 {
                    break;
                }
                // Up to 64 KiB per read for a large body (fewer reads and writes), a small
                // buffer for a small one.
                rbuf.reserve(
                    usize::try_from(left)
                        .unwrap_or(usize::MAX)
                        .clamp(READ_CHUNK, BODY_READ),
                );
                match with_deadline(read_t, up.read_buf(&mut rbuf)).await {
                    Ok(0) | Err(_) => return Err(sent),
                    Ok(_) => {}
                }
            }
        }
        Framing::Chunked | Framing::Close => {
            let mut decoder = Decoder::default();
            let mut ended = false;
            loop {
                if framing == Framing::Chunked {
                    loop {
                        match decoder.step(&mut rbuf) {
                            Ok(chunked::Step::Data(d)) => {
                                put_chunk(&mut out, &d);
                                sent += d.len();
                            }
                            Ok(chunked::Step::More) => break,
                            Ok(chunked::Step::Done) => {
                                ended = true;
                                break;
                            }
                            Err(e) => {
                                debug!("{e}");
                                return Err(sent);
                            }
                        }
                    }
                } else if !rbuf.is_empty() {
                    let d = rbuf.split().freeze();
                    put_chunk(&mut out, &d);
                    sent += d.len();
                }
                if ended {
                    out.put_slice(b"0\r\n\r\n");
                }
                if !out.is_empty() {
                    write_down(down, &out, write_t).await.map_err(|_| sent)?;
                    out.clear();
                }
                if ended {
                    break;
                }
                rbuf.reserve(READ_CHUNK);
                match with_deadline(read_t, up.read_buf(&mut rbuf)).await {
                    Ok(0) if framing == Framing::Close => {
                        out.put_slice(b"0\r\n\r\n");
                        write_down(down, &out, write_t).await.map_err(|_| sent)?;
                        break;
                    }
                    Ok(0) | Err(_) => return Err(sent),
                    Ok(_) => {}
                }
            }
        }
    }
    Ok(sent)
}

fn put_chunk(out: &mut BytesMut, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    let _ = write!(out, "{:x}\r\n", data.len());
    out.put_slice(data);
    out.put_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::super::MAX_HEADERS;
    use super::*;

    fn facts(head: &[u8], method: Method) -> Option<(u16, Framing, bool)> {
        let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut hs);
        let Ok(httparse::Status::Complete(n)) = resp.parse(head) else {
            panic!("head")
        };
        response_facts(&resp, n, &method).map(|r| (r.status, r.framing, r.reusable))
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        let g = Method::GET;
        assert_eq!(
            facts(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", g.clone()),
            Some((200, Framing::Length(5), true))
        );
        assert_eq!(
            facts(
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
                Method::HEAD
            ),
            Some((200, Framing::None, true))
        );
        assert_eq!(
            facts(
                b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
                g.clone()
            ),
            Some((204, Framing::None, true))
        );
        assert_eq!(
            facts(
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                g.clone()
            ),
            Some((200, Framing::Chunked, true))
        );
        assert_eq!(
            facts(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
                g.clone()
            ),
            Some((200, Framing::Close, true))
        );
        assert_eq!(
            facts(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", g.clone()),
            Some((200, Framing::Close, false))
        );
        assert_eq!(
            facts(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", g.clone()),
            Some((200, Framing::Length(1), false))
        );
        assert_eq!(
            facts(
                b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n",
                g.clone()
            ),
            Some((200, Framing::Length(1), true))
        );
        assert_eq!(
            facts(
                b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\n",
                g.clone()
            ),
            Some((200, Framing::Length(2), true))
        );
        // Conflicting or unparseable lengths are refused, as pingora refuses them.
        assert_eq!(
            facts(
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                g.clone()
            ),
            None
        );
        assert_eq!(
            facts(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", g),
            None
        );
    }
}
