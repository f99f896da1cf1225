//! The front door: what a connection to the public listener may cost before it has sent a
//! complete request head.
//!
//! pingora 0.9 reads a request head of up to 1 MiB and has no deadline for the head as a
//! whole (only a per-read timeout), and exposes no setting for either. Rather than patch
//! pingora, every public connection is wrapped, before pingora parses anything, in a
//! [`FrontStream`] that watches the head phase of each request on the connection:
//!
//! - the request line and the whole head are counted as they arrive; past the limit the
//!   client gets 414 / 431 and the connection is closed, so no more than the limit (plus one
//!   read) is ever buffered for a stranger;
//! - the head must be complete within a total deadline (408), and with `--timeout` a client
//!   silent that long during the head is disconnected;
//! - connections still in their head phase are bounded: past the bound the oldest one is
//!   answered 408 and closed, so slow strangers cannot hold every slot while real users
//!   (who send their head at once) get through.
//!
//! [`FrontDoor`] runs pingora's HTTP/1 keep-alive loop itself (the same steps as pingora's
//! own `ServerApp` for HTTP apps) so that it knows where each request's head starts: at
//! accept for a new connection, and at the first byte after a reused connection went idle.
//! An idle keep-alive connection between requests is not in its head phase: it has already
//! completed a request, and pingora closes it after the keep-alive timeout.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use async_trait::async_trait;
use bytes::BytesMut;
use pingora::apps::{HttpServerApp, ReusedHttpStream, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, Stream, UniqueID,
    UniqueIDType, ALPN,
};
use pingora::proxy::{HttpProxy, ProxyHttp};
use pingora::server::ShutdownWatch;
use prometheus::{IntCounter, IntGauge};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::direct::{Conn, Direct, Served};
use super::Refusal;
use crate::config::Limits;
use crate::metrics::Metrics;

/// Why the front door ended a connection in its head phase (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadRefusal {
    /// 414.
    RequestLineTooLong,
    /// 431.
    HeadTooLarge,
    /// 408: the total deadline passed.
    HeadTimeout,
    /// 408: evicted as the oldest pending connection when the bound was reached.
    TooManyPending,
    /// Closed without an answer: silent for `--timeout`.
    Idle,
}

impl HeadRefusal {
    /// Every reason, in the order of [`FrontMetrics::refused`].
    pub const ALL: [HeadRefusal; 5] = [
        HeadRefusal::RequestLineTooLong,
        HeadRefusal::HeadTooLarge,
        HeadRefusal::HeadTimeout,
        HeadRefusal::TooManyPending,
        HeadRefusal::Idle,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            HeadRefusal::RequestLineTooLong => "request_line_too_long",
            HeadRefusal::HeadTooLarge => "header_too_large",
            HeadRefusal::HeadTimeout => "header_timeout",
            HeadRefusal::TooManyPending => "too_many_pending",
            HeadRefusal::Idle => "idle_timeout",
        }
    }

    fn index(self) -> usize {
        HeadRefusal::ALL
            .iter()
            .position(|r| *r == self)
            .unwrap_or_default()
    }

    /// The refusal the client is answered with (`None`: closed silently, as node does when
    /// `--timeout` fires).
    fn refusal(self) -> Option<Refusal> {
        match self {
            HeadRefusal::RequestLineTooLong => Some(Refusal::RequestLineTooLong),
            HeadRefusal::HeadTooLarge => Some(Refusal::HeaderTooLarge),
            HeadRefusal::HeadTimeout | HeadRefusal::TooManyPending => Some(Refusal::HeaderTimeout),
            HeadRefusal::Idle => None,
        }
    }
}

/// The front door's metrics, resolved once.
struct FrontMetrics {
    /// `hubgate_requests_refused_total{reason}`, one per [`HeadRefusal::ALL`].
    refused: Vec<IntCounter>,
}

/// One connection in its head phase, as the registry sees it.
struct Slot {
    evicted: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

/// Connections in their head phase, oldest first.
struct Pending {
    next: AtomicU64,
    slots: Mutex<BTreeMap<u64, Arc<Slot>>>,
    max: usize,
    gauge: IntGauge,
}

impl Pending {
    fn enter(&self) -> (u64, Arc<Slot>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(Slot {
            evicted: AtomicBool::new(false),
            waker: Mutex::new(None),
        });
        let evict = {
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            slots.insert(id, slot.clone());
            let evict = if slots.len() > self.max {
                slots.pop_first().map(|(_, s)| s)
            } else {
                None
            };
            self.gauge.set(slots.len() as i64);
            evict
        };
        if let Some(old) = evict {
            old.evicted.store(true, Ordering::Release);
            let waker = old.waker.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(w) = waker {
                w.wake();
            }
        }
        (id, slot)
    }

    fn leave(&self, id: u64) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.remove(&id);
        self.gauge.set(slots.len() as i64);
    }
}

/// Shared by every connection of the public listener.
struct Door {
    limits: Limits,
    pending: Pending,
    metrics: FrontMetrics,
}

/// Where a connection is in its current request.
enum Phase {
    /// Between requests on a reused connection: waiting for the first byte.
    Idle,
    /// Reading a head.
    Head(Box<HeadState>),
    /// The head is complete: body, response, upgraded bytes. Nothing is watched.
    Done,
    /// Writing a refusal, then draining the client for a moment so that the answer is not
    /// destroyed by a reset, then end of stream.
    Refusing {
        bytes: &'static [u8],
        written: usize,
        shut: bool,
        drained: usize,
        linger: Pin<Box<Sleep>>,
    },
    /// End of stream for pingora.
    Closed,
}

struct HeadState {
    id: u64,
    slot: Arc<Slot>,
    deadline: Pin<Box<Sleep>>,
    idle: Option<Pin<Box<Sleep>>>,
    scan: HeadScan,
}

/// How far a head has been scanned: plain counters, so that a head can be scanned before
/// anything is allocated or registered for it.
#[derive(Debug, Default)]
struct HeadScan {
    /// Bytes of the head so far, and of the current line (without CR).
    total: usize,
    line: usize,
    /// Complete lines seen (0 while in the request line).
    lines: usize,
}

/// What a scan of head bytes found.
#[derive(Debug, PartialEq, Eq)]
enum Scan {
    More,
    Complete,
    Refuse(HeadRefusal),
}

impl HeadScan {
    /// Scans the next bytes of a head: line by line with `memchr` (a head is mostly long
    /// lines: cookies, tokens; a byte-by-byte loop cost 2.5 % of the proxy's CPU per request
    /// with an 825-byte bearer token), with exactly the outcome of a byte-by-byte scan (the
    /// test `scan_matches_the_byte_by_byte_definition` holds it to that): CR bytes do not
    /// count toward a line; a request line over `max_request_line` bytes, or a head over
    /// `max_head` before its blank line, is refused at the byte that crosses the limit.
    fn scan(&mut self, bytes: &[u8], limits: &Limits) -> Scan {
        let mut start = 0;
        while start < bytes.len() {
            let rest = &bytes[start..];
            let (seg, newline) = match memchr::memchr(b'\n', rest) {
                Some(k) => (&rest[..k], true),
                None => (rest, false),
            };
            if !seg.is_empty() {
                let counted = seg.len() - memchr::memchr_iter(b'\r', seg).count();
                self.line += counted;
                if self.lines == 0 && self.line > limits.max_request_line {
                    return Scan::Refuse(HeadRefusal::RequestLineTooLong);
                }
                if self.total + start + seg.len() > limits.max_head {
                    return Scan::Refuse(self.too_large());
                }
            }
            if !newline {
                break;
            }
            let at = start + seg.len(); // the newline's index in `bytes`
            if self.line == 0 && self.lines > 0 {
                // The blank line: the head is complete. Bytes after it (a body, or a
                // pipelined request) are pingora's business.
                return Scan::Complete;
            }
            if self.line > 0 {
                self.lines += 1;
                self.line = 0;
            } // else: an empty line before a request
            if self.total + at + 1 > limits.max_head {
                return Scan::Refuse(self.too_large());
            }
            start = at + 1;
        }
        self.total += bytes.len();
        Scan::More
    }

    fn too_large(&self) -> HeadRefusal {
        if self.lines == 0 {
            HeadRefusal::RequestLineTooLong
        } else {
            HeadRefusal::HeadTooLarge
        }
    }
}

/// How long a refused client's remaining bytes are read and discarded, and how many.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 64 * 1024;

/// A public connection watched during each request's head phase.
pub struct FrontStream {
    inner: Stream,
    door: Arc<Door>,
    phase: Phase,
    /// Set by [`FrontDoor`] when pingora hands the connection back for another request.
    next_request: Arc<AtomicBool>,
}

impl fmt::Debug for FrontStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrontStream")
            .field("inner", &self.inner)
            .finish()
    }
}

impl FrontStream {
    /// The connection pingora accepted (the websocket relay unwraps plain sockets).
    pub fn inner(&self) -> &Stream {
        &self.inner
    }

    /// The wrapped connection, out of the front door (which has nothing left to watch on it:
    /// its head was read), leaving `placeholder` in its place.
    pub fn into_inner(mut self, placeholder: Stream) -> Stream {
        self.leave_head();
        std::mem::replace(&mut self.inner, placeholder)
    }

    /// Registers the connection as one with an incomplete head, with its deadlines.
    fn start_head(&mut self, scan: HeadScan) {
        let (id, slot) = self.door.pending.enter();
        let limits = &self.door.limits;
        let now = Instant::now();
        self.phase = Phase::Head(Box::new(HeadState {
            id,
            slot,
            deadline: Box::pin(tokio::time::sleep_until(now + limits.head_timeout)),
            idle: limits
                .idle
                .map(|t| Box::pin(tokio::time::sleep_until(now + t))),
            scan,
        }));
    }

    /// A new request may start on this connection (pingora is about to read its head).
    fn next_request(&mut self) {
        self.leave_head();
        if !matches!(self.phase, Phase::Refusing { .. } | Phase::Closed) {
            self.phase = Phase::Idle;
        }
    }

    fn leave_head(&mut self) {
        if let Phase::Head(h) = &self.phase {
            self.door.pending.leave(h.id);
            self.phase = Phase::Done;
        }
    }

    fn refuse(&mut self, why: HeadRefusal) {
        self.door.metrics.refused[why.index()].inc();
        self.leave_head();
        self.phase = match why.refusal().and_then(|r| r.raw_response()) {
            Some(bytes) => Phase::Refusing {
                bytes,
                written: 0,
                shut: false,
                drained: 0,
                linger: Box::pin(tokio::time::sleep(LINGER)),
            },
            None => Phase::Closed,
        };
    }

    /// Refuses a head whose newest bytes (from `before` in `buf`) passed a limit: nothing of
    /// it reaches pingora.
    fn refuse_read(
        &mut self,
        why: HeadRefusal,
        buf: &mut ReadBuf<'_>,
        before: usize,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        buf.set_filled(before);
        self.refuse(why);
        self.poll_refusing(cx)
    }

    /// Drives a refusal: write it, shut the write side, read and discard what the client
    /// still sends for a moment, then end of stream.
    fn poll_refusing(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let Phase::Refusing {
                bytes,
                written,
                shut,
                drained,
                linger,
            } = &mut self.phase
            else {
                return Poll::Ready(Ok(()));
            };
            if *written < bytes.len() {
                match Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..]) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                        self.phase = Phase::Closed;
                        return Poll::Ready(Ok(()));
                    }
                    Poll::Ready(Ok(n)) => *written += n,
                    Poll::Pending => return Poll::Pending,
                }
                continue;
            }
            if !*shut {
                match Pin::new(&mut self.inner).poll_flush(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(_) => {}
                }
                match Pin::new(&mut self.inner).poll_shutdown(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(_) => *shut = true,
                }
            }
            if linger.as_mut().poll(cx).is_ready() || *drained >= LINGER_BYTES {
                self.phase = Phase::Closed;
                return Poll::Ready(Ok(()));
            }
            let mut scratch = [0u8; 4096];
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.inner).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                    *drained += buf.filled().len();
                }
                Poll::Ready(_) => {
                    self.phase = Phase::Closed;
                    return Poll::Ready(Ok(()));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl Drop for FrontStream {
    fn drop(&mut self) {
        self.leave_head();
    }
}

impl AsyncRead for FrontStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.next_request.swap(false, Ordering::AcqRel) {
            this.next_request();
        }
        match &mut this.phase {
            Phase::Closed => return Poll::Ready(Ok(())),
            Phase::Refusing { .. } => return this.poll_refusing(cx),
            Phase::Head(h) => {
                let why = if h.slot.evicted.load(Ordering::Acquire) {
                    Some(HeadRefusal::TooManyPending)
                } else if h.deadline.as_mut().poll(cx).is_ready() {
                    Some(HeadRefusal::HeadTimeout)
                } else if h
                    .idle
                    .as_mut()
                    .is_some_and(|i| i.as_mut().poll(cx).is_ready())
                {
                    Some(HeadRefusal::Idle)
                } else {
                    *h.slot.waker.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some(cx.waker().clone());
                    // An eviction between the check and the waker's registration.
                    h.slot
                        .evicted
                        .load(Ordering::Acquire)
                        .then_some(HeadRefusal::TooManyPending)
                };
                if let Some(why) = why {
                    this.refuse(why);
                    return this.poll_refusing(cx);
                }
            }
            Phase::Idle | Phase::Done => {}
        }
        let before = buf.filled().len();
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        if !matches!(res, Poll::Ready(Ok(()))) {
            return res;
        }
        let got = buf.filled().len() - before;
        if got == 0 {
            this.leave_head();
            return res;
        }
        match &mut this.phase {
            // The first bytes of a request on a reused connection. Nearly every request
            // arrives whole in one read, so its bytes are scanned before anything is set up:
            // a head complete here never takes the registry's lock (shared by every worker
            // thread), allocates its slot or creates its timers. Only a head still incomplete
            // after this read is registered and given its deadlines.
            Phase::Idle => {
                let mut scan = HeadScan::default();
                match scan.scan(&buf.filled()[before..], &this.door.limits) {
                    Scan::Complete => this.phase = Phase::Done,
                    Scan::More => this.start_head(scan),
                    Scan::Refuse(why) => return this.refuse_read(why, buf, before, cx),
                }
            }
            Phase::Head(h) => {
                if let (Some(idle), Some(t)) = (h.idle.as_mut(), this.door.limits.idle) {
                    idle.as_mut().reset(Instant::now() + t);
                }
                match h.scan.scan(&buf.filled()[before..], &this.door.limits) {
                    Scan::More => {}
                    Scan::Complete => this.leave_head(),
                    Scan::Refuse(why) => return this.refuse_read(why, buf, before, cx),
                }
            }
            // Body, response, upgraded bytes: not looked at.
            Phase::Done | Phase::Refusing { .. } | Phase::Closed => {}
        }
        res
    }
}

impl AsyncWrite for FrontStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for FrontStream {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for FrontStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for FrontStream {
    fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for FrontStream {
    fn get_timing_digest(&self) -> Vec<Option<pingora::protocols::TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for FrontStream {
    fn get_proxy_digest(&self) -> Option<Arc<pingora::protocols::raw_connect::ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl GetSocketDigest for FrontStream {
    fn get_socket_digest(&self) -> Option<Arc<pingora::protocols::SocketDigest>> {
        self.inner.get_socket_digest()
    }
}

#[async_trait]
impl Peek for FrontStream {}

/// The public listener's app: pingora's HTTP proxy behind the front door.
pub struct FrontDoor<A> {
    app: Arc<A>,
    door: Arc<Door>,
    /// The direct path, when on: requests it takes never reach `app` (`direct/`).
    direct: Option<Direct>,
}

impl<A> FrontDoor<A> {
    /// Wraps `app` (pingora's `HttpProxy`); with `direct`, the direct path over that shared
    /// state serves the requests it takes.
    pub fn new(
        app: A,
        limits: Limits,
        metrics: &Metrics,
        direct: Option<Arc<super::Shared>>,
    ) -> FrontDoor<A> {
        let pending = Pending {
            next: AtomicU64::new(0),
            slots: Mutex::new(BTreeMap::new()),
            max: limits.max_pending.max(1),
            gauge: metrics.connections_pending_head.clone(),
        };
        let metrics = FrontMetrics {
            refused: HeadRefusal::ALL
                .iter()
                .map(|r| metrics.requests_refused.with_label_values(&[r.label()]))
                .collect(),
        };
        FrontDoor {
            app: Arc::new(app),
            door: Arc::new(Door {
                limits,
                pending,
                metrics,
            }),
            direct: direct.map(Direct::new),
        }
    }
}

/// The application behind the front door: pingora's `HttpServerApp`, whose request future the
/// front door's keep-alive loop holds inline. Through the trait's `process_new_http` every
/// request's future (~14 KB) would be allocated and copied into a box; the vendored
/// pingora-proxy patch exposes the same body as a plain `async fn`
/// (docs/pingora-patches.md).
pub trait InlineHttpApp: HttpServerApp + Send + Sync + 'static {
    fn process_inline<'a>(
        self: &'a Arc<Self>,
        session: ServerSession,
        shutdown: &'a ShutdownWatch,
    ) -> impl Future<Output = Option<ReusedHttpStream>> + Send + 'a;
}

impl<SV, C> InlineHttpApp for HttpProxy<SV, C>
where
    SV: ProxyHttp + Send + Sync + 'static,
    <SV as ProxyHttp>::CTX: Send + Sync,
    C: pingora::connectors::http::custom::Connector,
{
    fn process_inline<'a>(
        self: &'a Arc<Self>,
        session: ServerSession,
        shutdown: &'a ShutdownWatch,
    ) -> impl Future<Output = Option<ReusedHttpStream>> + Send + 'a {
        self.process_new_http_inline(session, shutdown)
    }
}

#[async_trait]
impl<A> ServerApp for FrontDoor<A>
where
    A: InlineHttpApp,
{
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        if !matches!(stream.selected_alpn_proto(), None | Some(ALPN::H1)) {
            // The public listener offers HTTP/1 only; anything else keeps pingora's handling.
            return ServerApp::process_new(&self.app, stream, shutdown).await;
        }
        let next_request = Arc::new(AtomicBool::new(false));
        let mut front = FrontStream {
            inner: stream,
            door: self.door.clone(),
            phase: Phase::Done,
            next_request: next_request.clone(),
        };
        // A new connection counts as pending from its accept: one that never sends a byte
        // holds a slot and meets the head deadline.
        front.start_head(HeadScan::default());
        let limit = self
            .app
            .server_options()
            .and_then(|o| o.keepalive_request_limit);
        // The direct path serves what it takes; the first request it does not take goes to
        // pingora with the bytes already read, and the connection stays with pingora.
        let mut prefix = BytesMut::new();
        let mut served = 0;
        if let Some(direct) = &self.direct {
            let client_ip = front
                .inner
                .get_socket_digest()
                .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
            loop {
                let conn = Conn {
                    client_ip,
                    shutdown,
                    served,
                    request_limit: limit.map(|l| l as usize),
                };
                match direct.serve(&mut front, &mut prefix, &conn).await {
                    Served::Again => {
                        served += 1;
                        next_request.store(true, Ordering::Release);
                    }
                    Served::Close => return None,
                    Served::Fallback => break,
                }
            }
        }
        let mut session = ServerSession::new_http1(Box::new(front));
        if !prefix.is_empty() {
            session.set_pipelined_prefix(prefix);
        }
        if *shutdown.borrow() {
            session.set_keepalive(None);
        } else {
            session.set_keepalive(Some(60));
        }
        session.set_keepalive_reuses_remaining(
            limit.map(|l| l.saturating_sub(u32::try_from(served).unwrap_or(u32::MAX))),
        );
        let mut result = self.app.process_inline(session, shutdown).await;
        while let Some((stream, settings)) = result.map(|r| r.consume()) {
            next_request.store(true, Ordering::Release);
            let mut session = ServerSession::new_http1(stream);
            if let Some(settings) = settings {
                settings.apply_to_session(&mut session);
            }
            result = self.app.process_inline(session, shutdown).await;
        }
        None
    }

    async fn cleanup(&self) {
        self.app.http_cleanup().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head() -> HeadScan {
        HeadScan::default()
    }

    /// The scan's definition, byte by byte (the implementation before it went line by line).
    fn scan_bytewise(h: &mut HeadScan, bytes: &[u8], limits: &Limits) -> Scan {
        for (i, &b) in bytes.iter().enumerate() {
            match b {
                b'\n' if h.line == 0 && h.lines == 0 => {}
                b'\n' if h.line == 0 => return Scan::Complete,
                b'\n' => {
                    h.lines += 1;
                    h.line = 0;
                }
                b'\r' => {}
                _ => {
                    h.line += 1;
                    if h.lines == 0 && h.line > limits.max_request_line {
                        return Scan::Refuse(HeadRefusal::RequestLineTooLong);
                    }
                }
            }
            if h.total + i + 1 > limits.max_head {
                return Scan::Refuse(if h.lines == 0 {
                    HeadRefusal::RequestLineTooLong
                } else {
                    HeadRefusal::HeadTooLarge
                });
            }
        }
        h.total += bytes.len();
        Scan::More
    }

    #[test]
    fn scan_matches_the_byte_by_byte_definition() {
        // Random heads made of the bytes that matter (CR, LF, others), cut into random reads,
        // against small limits: every read's outcome and the counters must agree.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for case in 0..20_000 {
            let limits = Limits {
                max_request_line: 1 + (next() % 40) as usize,
                max_head: 1 + (next() % 120) as usize,
                ..Default::default()
            };
            let len = (next() % 160) as usize;
            let head: Vec<u8> = (0..len)
                .map(|_| match next() % 10 {
                    0 | 1 => b'\n',
                    2 => b'\r',
                    _ => b'a',
                })
                .collect();
            let (mut fast, mut slow) = (head_scan(), head_scan());
            let mut rest = head.as_slice();
            while !rest.is_empty() {
                let n = 1 + (next() as usize % rest.len());
                let (chunk, tail) = rest.split_at(n);
                let (a, b) = (
                    fast.scan(chunk, &limits),
                    scan_bytewise(&mut slow, chunk, &limits),
                );
                assert_eq!(a, b, "case {case}: {head:?} at {n} bytes, {limits:?}");
                if a != Scan::More {
                    break;
                }
                assert_eq!(
                    (fast.total, fast.line, fast.lines),
                    (slow.total, slow.line, slow.lines),
                    "case {case}: {head:?}"
                );
                rest = tail;
            }
        }
    }

    fn head_scan() -> HeadScan {
        HeadScan::default()
    }

    #[test]
    fn the_head_is_measured_until_the_blank_line() {
        let limits = Limits {
            max_request_line: 20,
            max_head: 60,
            ..Default::default()
        };
        let mut h = head();
        assert_eq!(
            h.scan(b"\r\nGET /a HTTP/1.1\r\nHost: x\r\n", &limits),
            Scan::More
        );
        // The blank line ends the head; a body after it is not counted.
        let rest = [b"\r\n".as_slice(), &[b'x'; 100]].concat();
        assert_eq!(h.scan(&rest, &limits), Scan::Complete);
        // Bare LF line ends are accepted as well.
        assert_eq!(head().scan(b"GET / HTTP/1.0\n\n", &limits), Scan::Complete);

        let mut h = head();
        assert_eq!(
            h.scan(b"GET /aaaaaaaaaaaaaaaaaaaaaaaaaa", &limits),
            Scan::Refuse(HeadRefusal::RequestLineTooLong)
        );

        let mut h = head();
        assert_eq!(h.scan(b"GET / HTTP/1.1\r\n", &limits), Scan::More);
        assert_eq!(h.scan(b"A: aaaaaaaaaaaaaa\r\n", &limits), Scan::More);
        assert_eq!(
            h.scan(b"B: bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb\r\n", &limits),
            Scan::Refuse(HeadRefusal::HeadTooLarge)
        );
    }

    #[test]
    fn the_oldest_pending_connection_is_evicted_past_the_bound() {
        let gauge = IntGauge::new("p", "x").expect("gauge");
        let pending = Pending {
            next: AtomicU64::new(0),
            slots: Mutex::new(BTreeMap::new()),
            max: 2,
            gauge: gauge.clone(),
        };
        let (a, sa) = pending.enter();
        let (b, sb) = pending.enter();
        assert_eq!(gauge.get(), 2);
        let (_c, sc) = pending.enter();
        assert!(sa.evicted.load(Ordering::Acquire));
        assert!(!sb.evicted.load(Ordering::Acquire) && !sc.evicted.load(Ordering::Acquire));
        assert_eq!(gauge.get(), 2);
        pending.leave(b);
        pending.leave(a); // already gone: no effect
        assert_eq!(gauge.get(), 1);
    }
}
