//! Websocket upgrades: taken out of pingora after routing and relayed by hubgate.
//!
//! pingora's upgraded-body path keeps ~70 KiB per idle websocket and applies its 60 s read
//! timeout to upgraded connections; kernels sit idle for hours. So after routing, the
//! downstream connection is taken from pingora (its session is swapped for an inert one),
//! the upgrade request is written to the target by hand (over a bare socket, or over a TLS
//! stream from pingora's connector for `https://` targets), and [`Relay`] copies bytes both
//! ways with no idle timeout. Failures before the upgrade answer with CHP's bare status line.

use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use log::{debug, error, info};
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType,
};
use pingora::proxy::Session;
use pingora::tls::ServerTlsStream;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use super::frames::{close_frame, CLOSE_POLICY};
use super::relay::Relay;
use super::{Refusal, Shared};
use crate::auth::{Identity, Revocations};
use crate::net::{FailureKind, TargetStream, TlsTargetStream};
use crate::routes::Route;

/// An inert stream that stands in for the downstream connection once hubgate owns it: reads
/// yield one canned request head, then nothing; writes vanish.
#[derive(Debug)]
struct Inert {
    head: &'static [u8],
    pos: usize,
}

impl AsyncRead for Inert {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.pos >= self.head.len() {
            return Poll::Pending;
        }
        let n = buf.remaining().min(self.head.len() - self.pos);
        buf.put_slice(&self.head[self.pos..self.pos + n]);
        self.pos += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Inert {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[async_trait]
impl Shutdown for Inert {
    async fn shutdown(&mut self) {}
}
impl UniqueID for Inert {
    fn id(&self) -> UniqueIDType {
        0
    }
}
impl Ssl for Inert {}
impl GetTimingDigest for Inert {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        Vec::new()
    }
}
impl GetProxyDigest for Inert {
    fn get_proxy_digest(&self) -> Option<Arc<pingora::protocols::raw_connect::ProxyDigest>> {
        None
    }
}
impl GetSocketDigest for Inert {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        None
    }
}
#[async_trait]
impl Peek for Inert {}

/// Takes the downstream connection out of pingora; `None` if it is not HTTP/1.
async fn take_downstream(session: &mut Session) -> Option<Stream> {
    session.as_downstream().as_http1()?;
    let mut inert = ServerSession::new_http1(Box::new(Inert {
        head: b"GET / HTTP/1.1\r\nHost: hubgate\r\n\r\n",
        pos: 0,
    }));
    // Parse the canned head so pingora's remaining phases see a well-formed request.
    if !matches!(inert.read_request().await, Ok(true)) {
        return None;
    }
    inert.set_keepalive(None);
    let real = std::mem::replace(&mut *session.downstream_session, inert);
    match real {
        ServerSession::H1(h1) => Some(h1.into_inner()),
        other => {
            *session.downstream_session = other;
            None
        }
    }
}

/// Answers a websocket request with CHP's bare status line and closes the connection.
pub async fn respond_bare(session: &mut Session, code: u16) {
    if let Some(mut stream) = take_downstream(session).await {
        let line = format!("HTTP/1.1 {code}\r\nContent-Length: 0\r\n\r\n");
        let _ = stream.write_all(line.as_bytes()).await;
        let _ = stream.flush().await;
        let _ = stream.shutdown().await;
    } else {
        let _ = session.respond_error(code).await;
    }
}

/// One side of a relayed websocket: a bare socket, a TLS stream to an `https://` target
/// (boxed: rustls's connection state would make every `Conn` as large), a TLS client
/// connection taken out of pingora's wrapper, or a client connection still inside it
/// (anything unexpected).
enum Conn {
    Bare(TargetStream),
    Tls(Box<TlsTargetStream>),
    TlsClient(Box<ServerTlsStream<L4Stream>>),
    Pingora(Stream),
}

/// Takes a TLS client connection out of pingora's `TlsStream` once the upgrade is answered.
///
/// pingora's wrapper kept, for the connection's life, its digests and (before the vendored
/// patch) room for both handshake futures; its L4 stream kept a 1.4 KiB write buffer. The relay
/// holds rustls's stream alone, over the L4 stream with its buffers freed (the vendored
/// pingora-core patch, docs/pingora-patches.md). Anything else is given back untouched.
fn unwrap_tls_client(down: Stream) -> Result<Conn, Stream> {
    type PingoraTls = pingora::protocols::tls::TlsStream<L4Stream>;
    let is_tls = |s: &Stream| s.as_any().is::<PingoraTls>();
    let fronted = match down
        .as_any()
        .downcast_ref::<super::front_door::FrontStream>()
    {
        Some(front) if is_tls(front.inner()) => true,
        Some(_) => return Err(down),
        None if is_tls(&down) => false,
        None => return Err(down),
    };
    // The types were checked above: the two downcasts below cannot fail (if they did, the
    // connection would close, never be misused).
    let closed = || -> Stream { Box::new(Inert { head: b"", pos: 0 }) };
    let inner = if fronted {
        match down.into_any().downcast::<super::front_door::FrontStream>() {
            Ok(front) => (*front).into_inner(closed()),
            Err(_) => return Err(closed()),
        }
    } else {
        down
    };
    let Ok(tls) = inner.into_any().downcast::<PingoraTls>() else {
        return Err(closed());
    };
    match tls.into_established() {
        Some(pingora::tls::TlsStream::Server(mut stream)) => {
            // After the flushed 101 nothing is buffered; if something were, the buffers stay.
            stream.get_mut().0.free_buffers();
            Ok(Conn::TlsClient(Box::new(stream)))
        }
        // A listener's connection is a server stream, established once a request was read;
        // anything else closes (dropped here).
        other => {
            debug!(
                "websocket client: unexpected TLS stream state ({}), closing",
                if other.is_some() {
                    "client side"
                } else {
                    "no handshake"
                }
            );
            Err(closed())
        }
    }
}

/// Unwraps a plain client connection from pingora's stream once the upgrade is answered.
///
/// pingora's L4 stream keeps a write buffer (1.4 KiB) and its digests for the connection's
/// whole life; an idle kernel websocket held that for hours. A duplicate of the descriptor
/// becomes a bare tokio socket, and pingora's wrapper is dropped (it deregisters and closes
/// its own descriptor; the socket stays open through the duplicate). Nothing is buffered
/// in the wrapper at this point: reads are unbuffered on the public listener and the 101
/// was flushed. TLS connections and anything unexpected stay wrapped.
fn unwrap_client(down: Stream) -> Conn {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let down = match unwrap_tls_client(down) {
        Ok(conn) => return conn,
        Err(down) => down,
    };
    // The public listener's connections are inside the front door's wrapper.
    let l4 = match down
        .as_any()
        .downcast_ref::<super::front_door::FrontStream>()
    {
        Some(front) => front.inner().as_any().downcast_ref::<L4Stream>(),
        None => down.as_any().downcast_ref::<L4Stream>(),
    };
    let Some(fd) = l4.map(|l4| l4.as_raw_fd()) else {
        return Conn::Pingora(down);
    };
    let mut domain: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `fd` is the open socket `down` owns; the out-pointers are valid for their size.
    let got = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_DOMAIN,
            (&mut domain as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    // SAFETY: as above; F_DUPFD_CLOEXEC returns a new descriptor we then own.
    let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if got != 0 || dup < 0 {
        return Conn::Pingora(down);
    }
    // SAFETY: `dup` was just returned by fcntl and is owned by nothing else.
    let owned = unsafe { OwnedFd::from_raw_fd(dup) };
    let bare = match domain {
        libc::AF_INET | libc::AF_INET6 => TcpStream::from_std(std::net::TcpStream::from(owned))
            .map(|s| Conn::Bare(TargetStream::Tcp(s))),
        libc::AF_UNIX => UnixStream::from_std(std::os::unix::net::UnixStream::from(owned))
            .map(|s| Conn::Bare(TargetStream::Unix(s))),
        _ => return Conn::Pingora(down),
    };
    match bare {
        Ok(conn) => conn,
        Err(e) => {
            debug!("websocket client stays in pingora's stream: {e}");
            Conn::Pingora(down)
        }
    }
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Conn::Bare(TargetStream::Tcp(_)) => "tcp",
            Conn::Bare(TargetStream::Unix(_)) => "unix",
            Conn::Tls(_) => "tls",
            Conn::TlsClient(_) => "tls client",
            Conn::Pingora(_) => "pingora",
        })
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Bare(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s).poll_read(cx, buf),
            Conn::TlsClient(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Pingora(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Bare(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s).poll_write(cx, buf),
            Conn::TlsClient(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Pingora(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Bare(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s).poll_flush(cx),
            Conn::TlsClient(s) => Pin::new(s).poll_flush(cx),
            Conn::Pingora(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Bare(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s).poll_shutdown(cx),
            Conn::TlsClient(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Pingora(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Reads the upstream's response head (up to 64 KiB); returns it with any bytes after it.
async fn read_response_head(up: &mut Conn) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(1024);
    // On the heap: an array here would live in the relay task for the websocket's whole life.
    let mut chunk = vec![0u8; 4096];
    loop {
        let n = up.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "upstream closed before answering",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.windows(4).any(|w| w == b"\r\n\r\n") {
            return Ok(buf);
        }
        if buf.len() > 64 * 1024 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "upstream response head too large",
            ));
        }
    }
}

/// `Content-Length` of a response head, if it has one.
fn content_length_of(head: &[u8]) -> Option<usize> {
    let text = std::str::from_utf8(head).ok()?;
    text.split("\r\n").find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse().ok())?
    })
}

fn status_of(head: &[u8]) -> Option<u16> {
    let line_end = head.iter().position(|&b| b == b'\r')?;
    let line = std::str::from_utf8(&head[..line_end]).ok()?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A websocket close frame from a server (unmasked), status 1001 "going away" (RFC 6455
/// §7.4.1): sent to clients when hubgate shuts down.
const CLOSE_GOING_AWAY: [u8; 4] = [0x88, 0x02, 0x03, 0xE9];

/// How long a close frame may take to write before the connection is just closed.
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// What an open websocket re-checks when the revocation list changes.
pub struct RevocationWatch {
    pub list: Arc<Revocations>,
    pub identity: Arc<Identity>,
    /// The identity's issuer URL (for provider-session revocations).
    pub issuer: String,
}

impl RevocationWatch {
    /// Resolves once the credential is revoked (checked at once, then on every change).
    async fn revoked(self) {
        let mut changes = self.list.subscribe();
        loop {
            if self
                .list
                .is_revoked(&self.identity, &self.issuer, crate::time::now_secs())
            {
                return;
            }
            if changes.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }
}

/// Writes `frame` if there is room within [`CLOSE_WRITE_TIMEOUT`], then closes `conn`.
async fn close_with<C: AsyncWrite + Unpin>(conn: &mut C, frame: Option<&[u8]>) {
    if let Some(frame) = frame {
        let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, async {
            conn.write_all(frame).await?;
            conn.flush().await
        })
        .await;
    }
    let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, conn.shutdown()).await;
}

/// What a websocket upgrade is sent with.
pub struct Upgrade {
    pub route: Arc<Route>,
    /// The request head for the target (`headers::UpstreamHeaders::head`).
    pub head: Vec<u8>,
    /// When the credential expires (seconds since the epoch): the websocket is closed then.
    pub close_at: Option<i64>,
    /// The credential's revocation check: the websocket is closed when it is revoked.
    pub revocation: Option<RevocationWatch>,
}

/// Proxies a websocket upgrade for `route` (any target) with hubgate's own relay. Returns
/// the refusal when the upgrade never reached the target, for the caller to render.
pub async fn proxy(
    shared: &Arc<Shared>,
    session: &mut Session,
    upgrade: Upgrade,
) -> Result<(), Refusal> {
    let Upgrade {
        route,
        head,
        close_at,
        revocation,
    } = upgrade;
    let target = route
        .target
        .as_ref()
        .map_err(|e| Refusal::BadTarget(e.clone()))?;
    let upstream_failed = |e: std::io::Error| Refusal::Upstream {
        kind: FailureKind::of_io(&e),
        detail: e.to_string(),
        counted: false,
    };
    let mut up = if target.tls {
        // `https://` targets (JupyterHub's internal_ssl): hubgate's TLS client, verified as
        // the forwarding path's peers; the relay below is the same as for plain targets.
        let stream = shared
            .connector
            .tls_stream(target, &shared.peer_timeouts)
            .await
            .map_err(upstream_failed)?;
        Conn::Tls(Box::new(stream))
    } else {
        let stream = shared
            .connector
            .stream(target, shared.timeouts.connect)
            .await
            .map_err(upstream_failed)?;
        Conn::Bare(stream)
    };
    // TLS streams buffer records until flushed: the head goes out on the flush.
    let sent = match up.write_all(&head).await {
        Ok(()) => up.flush().await,
        Err(e) => Err(e),
    };
    if let Err(e) = sent {
        // Counted as before this refactor: only connect failures count for websockets.
        return Err(Refusal::Upstream {
            kind: FailureKind::of_io(&e),
            detail: e.to_string(),
            counted: true,
        });
    }
    drop(head);
    let Some(mut down) = take_downstream(session).await else {
        return Err(Refusal::Status(
            500,
            "websocket over a non-HTTP/1 connection".into(),
        ));
    };
    let shared = shared.clone();
    tokio::spawn(async move {
        let response = match read_response_head(&mut up).await {
            Ok(r) => r,
            Err(e) => {
                error!("503 GET {} {e}", route.key);
                shared.metrics.requests_proxy(503).inc();
                let _ = down
                    .write_all(b"HTTP/1.1 503\r\nContent-Length: 0\r\n\r\n")
                    .await;
                let _ = down.shutdown().await;
                return;
            }
        };
        let status = status_of(&response).unwrap_or(0);
        shared.metrics.requests_proxy(status).inc();
        if down.write_all(&response).await.is_err() || down.flush().await.is_err() {
            return;
        }
        if status != 101 {
            // A plain answer to an upgrade: relay it and close, so neither socket lingers
            // (the CHP#557 leak). Bounded, in case the target keeps the connection open.
            let head_end = response
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map_or(response.len(), |i| i + 4);
            let relay_rest = async {
                match content_length_of(&response[..head_end]) {
                    Some(len) => {
                        let remaining = len.saturating_sub(response.len() - head_end) as u64;
                        tokio::io::copy(&mut (&mut up).take(remaining), &mut down).await
                    }
                    None => tokio::io::copy(&mut up, &mut down).await,
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(30), relay_rest).await;
            let _ = down.flush().await;
            let _ = down.shutdown().await;
            return;
        }
        // The response head is written; don't keep its buffer for the websocket's lifetime.
        drop(response);
        shared.metrics.websockets_open.inc();
        let server_activity = shared.ws_activity_on_server_frames;
        let route_key = route.key.clone();
        let mut client_frames = super::frames::FrameCounter::default();
        let mut server_frames = super::frames::FrameCounter::default();
        let client_route = route.clone();
        let client_shared = shared.clone();
        let relay_shared = shared.clone();
        let at_boundary = Arc::new(AtomicBool::new(true));
        let boundary = at_boundary.clone();
        let client_at_boundary = Arc::new(AtomicBool::new(true));
        let client_boundary = client_at_boundary.clone();
        let relay = Relay::new(
            unwrap_client(down),
            up,
            move |data: &[u8]| {
                let m = &client_shared.metrics;
                m.ws_bytes[0].inc_by(data.len() as u64);
                m.ws_frames[0].inc_by(client_frames.feed(data));
                client_boundary.store(client_frames.at_boundary(), Ordering::Release);
                client_shared.record_activity(&client_route);
            },
            move |data: &[u8]| {
                let m = &relay_shared.metrics;
                m.ws_bytes[1].inc_by(data.len() as u64);
                m.ws_frames[1].inc_by(server_frames.feed(data));
                boundary.store(server_frames.at_boundary(), Ordering::Release);
                if server_activity {
                    relay_shared.record_activity(&route);
                }
            },
        );
        // The credential that opened this websocket expires: close it then.
        let expiry = async move {
            match close_at {
                Some(at) => {
                    let wait = Duration::from_secs((at - crate::time::now_secs()).max(0) as u64);
                    tokio::time::sleep(wait).await
                }
                None => std::future::pending().await,
            }
        };
        // SIGTERM: the client gets a close frame (1001, going away) instead of a reset.
        let mut drain = shared.draining.subscribe();
        let draining = async move {
            if drain.wait_for(|d| *d).await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        let revoked = async move {
            match revocation {
                Some(watch) => watch.revoked().await,
                None => std::future::pending().await,
            }
        };
        let mut relay = relay;
        // Why hubgate ends the websocket: a close frame (1008, with the reason) goes to both
        // sides where a frame boundary allows it, then both connections close.
        let policy_reason = tokio::select! {
            r = &mut relay => {
                if let Err(e) = r { debug!("websocket closed: {e}") }
                shared.metrics.websockets_open.dec();
                return;
            }
            _ = expiry => {
                // Also when a share or role let it in: such a websocket is rechecked on reconnect
                // within [auth.hub-grants] max-stale-seconds.
                info!(
                    "websocket on {} closed: its credential (or the hub grant that let it in) expired",
                    route_key
                );
                Some("credential expired")
            }
            _ = revoked => {
                info!("websocket on {} closed: its credential was revoked", route_key);
                shared.revocations.count_websocket_closed();
                Some("credential revoked")
            }
            _ = draining => None,
        };
        // A close frame can only go between the target's frames: when the target is
        // mid-frame (or the client is not taking bytes), just close.
        let Some(reason) = policy_reason else {
            let clean = relay.idle_toward_a() && at_boundary.load(Ordering::Acquire);
            let (mut down, mut up) = relay.into_parts();
            close_with(&mut down, clean.then_some(&CLOSE_GOING_AWAY[..])).await;
            close_with(&mut up, None).await;
            shared.metrics.websockets_open.dec();
            return;
        };
        let clean_down = relay.idle_toward_a() && at_boundary.load(Ordering::Acquire);
        let clean_up = relay.idle_toward_b() && client_at_boundary.load(Ordering::Acquire);
        let (mut down, mut up) = relay.into_parts();
        let to_client = close_frame(CLOSE_POLICY, reason, None);
        close_with(&mut down, clean_down.then_some(&to_client[..])).await;
        // Toward the server the frame is masked (RFC 6455 §5.3), with a fresh key.
        let mut key = [0u8; 4];
        let to_server = getrandom::fill(&mut key)
            .ok()
            .map(|()| close_frame(CLOSE_POLICY, reason, Some(key)));
        close_with(&mut up, to_server.as_deref().filter(|_| clean_up)).await;
        shared.metrics.websockets_open.dec();
    });
    Ok(())
}
