//! Small pieces of the HTTP/1.1 wire shared by the direct path's files: field arrays for
//! `httparse`, pingora's reason phrases, the responses hubgate writes itself,
//! and I/O under a deadline.

use std::fmt::Write as _;
use std::io;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::MAX_HEADERS;
use crate::web::Reply;

/// Room for a head's fields, left uninitialised: httparse writes the ones it parses (an
/// initialised array is 8 KiB of stores per parse, three parses per request).
pub(super) fn uninit_fields<'b>() -> [std::mem::MaybeUninit<httparse::Header<'b>>; MAX_HEADERS] {
    [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS]
}

/// The reason phrase pingora writes for a status it builds (the standard one, or none).
pub(super) fn canonical_reason(code: u16) -> &'static str {
    http::StatusCode::from_u16(code)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("")
}

pub(super) fn push_header(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    out.put_slice(name);
    out.put_slice(b": ");
    out.put_slice(value);
    out.put_slice(b"\r\n");
}

/// Writes a response hubgate made itself (an authentication denial) and closes: as pingora's
/// path writes it (`refusal.rs`), fields as given, then `Content-Length`, `Date` and
/// `Connection: close`. The body bytes sent.
pub(super) async fn write_reply<S: AsyncWrite + Unpin>(
    down: &mut S,
    reply: Reply,
    limit: Option<Duration>,
) -> usize {
    let fields = reply
        .headers
        .iter()
        .map(|(k, v)| (k.as_bytes(), v.as_bytes()));
    let out = own_response(reply.status, fields, reply.body.as_bytes(), false);
    match write_down(down, &out, limit).await {
        Ok(()) => reply.body.len(),
        Err(_) => 0,
    }
}

/// A complete response hubgate makes itself, as pingora's server writes one it is given:
/// status line, `fields`, `Content-Length`, `Date`, `Connection`, body.
pub(super) fn own_response<'a>(
    status: u16,
    fields: impl Iterator<Item = (&'a [u8], &'a [u8])>,
    body: &[u8],
    keep: bool,
) -> BytesMut {
    let mut out = BytesMut::with_capacity(body.len() + 256);
    let _ = write!(out, "HTTP/1.1 {status} {}\r\n", canonical_reason(status));
    for (k, v) in fields {
        push_header(&mut out, k, v);
    }
    let _ = write!(out, "Content-Length: {}\r\n", body.len());
    let date = pingora::protocols::http::date::get_cached_date();
    push_header(&mut out, b"Date", date.as_bytes());
    let connection: &[u8] = if keep { b"keep-alive" } else { b"close" };
    push_header(&mut out, b"Connection", connection);
    out.put_slice(b"\r\n");
    out.put_slice(body);
    out
}

/// Runs `io` within `limit` (none: unbounded); a timeout is an `io::ErrorKind::TimedOut`.
pub(super) async fn with_deadline<T>(
    limit: Option<Duration>,
    io: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    match limit {
        Some(d) => tokio::time::timeout(d, io)
            .await
            .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into())),
        None => io.await,
    }
}

pub(super) async fn write_down<S: AsyncWrite + Unpin>(
    down: &mut S,
    bytes: &[u8],
    limit: Option<Duration>,
) -> io::Result<()> {
    with_deadline(limit, async {
        down.write_all(bytes).await?;
        down.flush().await
    })
    .await
}
