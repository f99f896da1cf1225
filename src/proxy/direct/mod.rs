//! The direct path: hubgate's own HTTP/1.1 forwarding for the common request, beside
//! pingora's proxy.
//!
//! pingora's per-request structure (its sessions, header maps parsed, cloned and
//! re-serialised, the proxy phases, the keep-alive pool cycle) costs about twice nginx's CPU
//! per small request, spread over a hundred functions (docs/performance.md, "The direct
//! path"). For the requests that make up most of a hub's traffic, the front door serves the
//! request here instead: the head is parsed once with `httparse`, the upstream head is written
//! from the client's bytes with the same edits as pingora's path (`headers.rs`), and the
//! response is forwarded with pingora's framing rules. Every other request goes to pingora
//! untouched, with the bytes already read handed over: the decision is made on the parsed
//! head before anything happens (no metric, no log, nothing sent), see [`take`].
//!
//! What the direct path takes, and why the rest goes to pingora, is written in
//! docs/direct-path.md, with each difference from pingora's path on the wire.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method};
use log::{debug, error};
use pingora::http::RequestHeader;
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{access_log, forward, headers, InFlightGuard, Refusal, Shared};
use crate::auth::{Allowed, Auth};
use crate::canonical;
use crate::config::AccessLog;
use crate::net::{FailureKind, Pool, Target, TargetAddr};
use crate::routes::Route;

mod chunked;
mod response;
mod take;
mod wire;

use response::{forward_body, response_facts, response_head, Framing, ResponseHead};
use take::{take, Taken};
use wire::{own_response, push_header, uninit_fields, with_deadline, write_down, write_reply};

/// Header fields parsed in a head, as pingora's parser allows.
pub(super) const MAX_HEADERS: usize = 256;
/// Largest upstream response head (pingora's limit on its path).
const MAX_RESPONSE_HEAD: usize = 1024 * 1024;
/// Read buffer for upstream response heads and small bodies, and the largest body read.
pub(super) const READ_CHUNK: usize = 16 * 1024;
pub(super) const BODY_READ: usize = 64 * 1024;
/// Idle upstream connections kept, and for how long (the values of pingora's pool on its
/// path: `src/net/connect.rs` and pingora's default pool size).
const POOL_SIZE: usize = 128;
const POOL_IDLE: Duration = Duration::from_secs(60);

/// What became of the connection after [`Direct::serve`].
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Served {
    /// The request was answered; the connection may carry another.
    Again,
    /// The connection is finished (closed by the client, refused by the front door, or not
    /// reusable after this exchange).
    Close,
    /// The request is not one the direct path takes: pingora parses it from the bytes kept.
    Fallback,
}

/// The direct path's state: the shared proxy state and its upstream pool.
pub(super) struct Direct {
    shared: Arc<Shared>,
    pool: Pool,
}

/// One connection's facts the direct path needs.
pub(super) struct Conn<'a> {
    pub client_ip: Option<IpAddr>,
    pub shutdown: &'a ShutdownWatch,
    /// Requests already served on this connection (0 for the first).
    pub served: usize,
    /// pingora's limit of requests per connection, if any.
    pub request_limit: Option<usize>,
}

/// Why an exchange with the target failed.
#[derive(Debug)]
enum UpstreamError {
    /// Before any byte of the response: the client gets the error page.
    Before { kind: FailureKind, detail: String },
    /// After the response started (the target failed mid-body, or the client went away or
    /// timed out while it was written): the client connection is closed. The status sent.
    After { status: u16, sent: usize },
}

fn io_failure(e: &io::Error, what: &str) -> UpstreamError {
    UpstreamError::Before {
        kind: FailureKind::of_io(e),
        detail: format!("{what}: {e}"),
    }
}

impl Direct {
    pub(super) fn new(shared: Arc<Shared>) -> Direct {
        Direct {
            shared,
            pool: Pool::new(POOL_SIZE, POOL_IDLE),
        }
    }

    /// Serves one request from `down`, whose bytes already read are in `buf`. On
    /// [`Served::Fallback`], `buf` holds the request's bytes (and any after them) untouched.
    pub(super) async fn serve<S>(&self, down: &mut S, buf: &mut BytesMut, conn: &Conn<'_>) -> Served
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let sh = &self.shared;
        // The head: read until httparse has all of it (the front door bounds its size and
        // time, and answers 408/414/431 itself: the read then ends). The parsed head lives
        // only in this loop's scope, never across an await (its field array is 8 KiB).
        let (head_len, mut plan) = loop {
            if !buf.is_empty() {
                let mut hs = uninit_fields();
                let mut req = httparse::Request::new(&mut []);
                match req.parse_with_uninit_headers(buf, &mut hs) {
                    Ok(httparse::Status::Complete(n)) => match self.plan(&req, buf, conn) {
                        Some(plan) => break (n, plan),
                        None => return Served::Fallback,
                    },
                    Ok(httparse::Status::Partial) => {}
                    Err(_) => return Served::Fallback,
                }
            }
            match self.read_more(down, buf, conn).await {
                // End of stream (or a refusal by the front door), an error, a timeout.
                Some(0) | None => return Served::Close,
                Some(_) => {}
            }
        };
        // From here the request is the direct path's: accounted as pingora's path would.
        let head = buf.split_to(head_len).freeze();
        let started = Instant::now();
        sh.metrics.find_target_for_req.observe(plan.lookup_time);
        sh.in_flight
            .0
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let _in_flight = InFlightGuard(sh.clone());
        sh.metrics.requests_web.inc();

        let keep = !plan.close
            && !*conn.shutdown.borrow()
            && conn
                .request_limit
                .is_none_or(|limit| conn.served + 1 < limit);
        let Ok(target) = plan.route.target.as_ref() else {
            return Served::Close; // checked in `plan`
        };
        let host = plan
            .host
            .as_ref()
            .and_then(|r| std::str::from_utf8(&head[r.clone()]).ok());
        let path = &head[plan.path.clone()];
        let field = |r: &Option<std::ops::Range<usize>>| {
            r.as_ref()
                .and_then(|r| std::str::from_utf8(&head[r.clone()]).ok())
        };
        let log = |status: u16, sent: usize, user: Option<&str>| {
            let elapsed = started.elapsed();
            sh.metrics.observe_request(plan.route.kind, status, elapsed);
            if sh.access_log != AccessLog::Off {
                access_log::write_line(
                    sh.access_log,
                    &access_log::Line {
                        client: conn.client_ip,
                        user,
                        method: plan.method.as_str(),
                        target: path,
                        version: "HTTP/1.1",
                        status,
                        bytes: sent,
                        referer: field(&plan.referer),
                        user_agent: field(&plan.user_agent),
                        elapsed,
                    },
                );
            }
        };

        // Authentication, when on: the verdict as pingora's path reaches it (`steps.rs`);
        // a denial is answered here and the connection closed, as there.
        let mut allowed: Option<Allowed> = None;
        let mut upstream_head = std::mem::take(&mut plan.upstream_head);
        if let Some(ap) = plan.auth.take() {
            let AuthPlan {
                auth,
                mut header,
                decoded,
                upstream_path,
            } = *ap;
            let verdict = match auth.screen_path(&header, &decoded, false) {
                Err(reply) => Err(reply),
                Ok(()) => {
                    auth.authorize(&header, &decoded, Some(&plan.route), false)
                        .await
                }
            };
            match verdict {
                Err(reply) => {
                    let status = reply.status;
                    let sent = write_reply(down, reply, sh.timeouts.downstream).await;
                    log(status, sent, None);
                    return Served::Close;
                }
                Ok(a) => allowed = a,
            }
            match self.authenticated_head(
                &mut header,
                &auth,
                allowed.as_ref(),
                target,
                &upstream_path,
                conn,
                plan.close,
            ) {
                Some(h) => upstream_head = h,
                None => return Served::Close,
            }
        }
        let user = allowed.as_ref().map(|a| a.identity.user.as_str());
        let outcome = self
            .exchange(
                down,
                target,
                &plan.route,
                &upstream_head,
                &plan.method,
                host,
                keep,
            )
            .await;
        let (status, sent, reusable) = match outcome {
            Ok(done) => (done.status, done.body_bytes, keep),
            Err(UpstreamError::Before { kind, detail }) => {
                sh.metrics.upstream_error(kind).inc();
                let refusal = Refusal::Upstream {
                    kind,
                    detail,
                    counted: true,
                };
                let code = refusal.status();
                let url = String::from_utf8_lossy(path);
                error!(
                    "{code} {} {} {}",
                    plan.method,
                    url.split('?').next().unwrap_or_default(),
                    refusal.message()
                );
                sh.metrics.requests_proxy(code).inc();
                let (ok, sent) = self.error_page(down, code, path, keep).await;
                (code, sent, keep && ok)
            }
            Err(UpstreamError::After { status, sent }) => (status, sent, false),
        };
        if status != 0 {
            log(status, sent, user);
        }
        if reusable {
            Served::Again
        } else {
            Served::Close
        }
    }

    /// Decides whether the direct path takes a parsed request and, if so, everything it
    /// needs: the route, the upstream head, where in the head the fields it keeps are.
    /// Without side effects: `None` sends the request to pingora untouched. A path that does
    /// not decode, no route, or a target the direct path does not reach (https, unix sockets,
    /// a bad URL) go to pingora, whose answers for them stay the only ones.
    fn plan(&self, req: &httparse::Request<'_, '_>, buf: &[u8], conn: &Conn<'_>) -> Option<Plan> {
        let sh = &self.shared;
        if sh.forwarding.host_routing {
            // Host routing runs on pingora's path (docs/direct-path.md).
            return None;
        }
        let taken = take(req)?;
        let auth = sh.auth.load_full();
        let (path, query) = canonical::split_target(taken.path);
        let canon = canonical::canonicalize(path).ok()?;
        if auth.is_some() && canon.decoded.starts_with(crate::auth::login::PREFIX) {
            // hubgate's own endpoints (login, logout, back-channel logout): pingora's path.
            return None;
        }
        let lookup_started = Instant::now();
        let found = sh.table.lookup(&canon.decoded)?;
        let lookup_time = lookup_started.elapsed();
        let route = found.route;
        let target = route.target.as_ref().ok()?;
        if target.tls || matches!(target.addr, TargetAddr::Unix(_)) {
            return None;
        }
        let query = query.map(String::from_utf8_lossy);
        let query = match (&auth, query) {
            (Some(auth), Some(q)) => Some(auth.extractor().upstream_query(q)),
            (_, q) => q,
        };
        let forward_path: &str = if sh.forwarding.include_prefix {
            &canon.forward
        } else {
            forward::strip_prefix(&canon.forward, found.prefix_len)
        };
        let upstream_path = forward::upstream_path(
            target,
            forward_path,
            query.as_deref(),
            sh.forwarding.prepend_path,
        );
        // Without authentication the upstream head is written now, from the client's bytes.
        // With it, the edits depend on the verdict: the request is kept as pingora's request
        // header (what `auth` reads), and the head is written from it after the verdict, as
        // pingora's path writes it.
        let (upstream_head, auth) = match auth {
            None => (
                self.upstream_head(req, &taken, target, &upstream_path, conn),
                None,
            ),
            Some(auth) => {
                let header = request_header(req, &taken)?;
                let decoded = canon.decoded.clone().into_owned();
                (
                    BytesMut::new(),
                    Some(Box::new(AuthPlan {
                        auth,
                        header,
                        decoded,
                        upstream_path,
                    })),
                )
            }
        };
        let at = |part: &[u8]| {
            let start = part.as_ptr() as usize - buf.as_ptr() as usize;
            start..start + part.len()
        };
        let logged = |name: &str| {
            if sh.access_log == AccessLog::Off {
                return None;
            }
            req.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| at(h.value))
        };
        let fwd = &sh.forwarding;
        debug!("PROXY WEB {} to {}", canon.forward, route.target_str());
        Some(Plan {
            upstream_head,
            auth,
            method: taken.method,
            close: taken.close,
            path: at(taken.path),
            host: if fwd.auto_rewrite || fwd.protocol_rewrite.is_some() {
                taken.host.map(at)
            } else {
                None
            },
            referer: logged("referer"),
            user_agent: logged("user-agent"),
            lookup_time,
            route,
        })
    }

    /// Reads more of the client's bytes into `buf`: `None` on an error, a timeout or shutdown.
    /// The first request's head is bounded by the front door (its deadline runs from
    /// accept). On a reused connection each wait is bounded by the keep-alive timeout and ends
    /// at shutdown, as pingora's keep-alive loop does: also when `buf` already holds the start
    /// of a pipelined head, which the front door did not see begin (it arrived with the
    /// previous request) and so does not time.
    async fn read_more<S>(&self, down: &mut S, buf: &mut BytesMut, conn: &Conn<'_>) -> Option<usize>
    where
        S: AsyncRead + Unpin,
    {
        buf.reserve(4096);
        if conn.served == 0 {
            return down.read_buf(buf).await.ok();
        }
        let mut shutdown = conn.shutdown.clone();
        if *shutdown.borrow() {
            return None;
        }
        let keepalive = Duration::from_secs(self.shared.keepalive_secs);
        tokio::select! {
            biased;
            r = tokio::time::timeout(keepalive, down.read_buf(buf)) => r.ok()?.ok(),
            _ = shutdown.changed() => None,
        }
    }

    /// The request head for the target: the client's fields in their order and spelling, less
    /// `Connection` (pingora removes it, then sets its own), with the edits of `headers.rs`
    /// applied as pingora applies them (a set field replaces the client's in place, a new one
    /// is appended).
    fn upstream_head(
        &self,
        req: &httparse::Request<'_, '_>,
        taken: &Taken<'_>,
        target: &Target,
        upstream_path: &str,
        conn: &Conn<'_>,
    ) -> BytesMut {
        // The builder reads only a few of the client's fields: those go in a small map.
        let mut view = HeaderMap::with_capacity(2);
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("host")
                || (h.name.len() > 12
                    && h.name.as_bytes()[..12].eq_ignore_ascii_case(b"x-forwarded-"))
            {
                if let (Ok(n), Ok(v)) = (
                    HeaderName::from_bytes(h.name.as_bytes()),
                    HeaderValue::from_bytes(h.value),
                ) {
                    view.append(n, v);
                }
            }
        }
        let edits = headers::build(
            &taken.method,
            &view,
            &self.inputs(conn, target, None, None, taken.close),
        );
        let mut out = BytesMut::with_capacity(upstream_path.len() + 64 + req.headers.len() * 48);
        out.put_slice(taken.method.as_str().as_bytes());
        out.put_u8(b' ');
        out.put_slice(upstream_path.as_bytes());
        out.put_slice(b" HTTP/1.1\r\n");
        // Which set fields went out in place of the client's: on the stack for the usual
        // handful (X-Forwarded-*, Connection, a few custom headers).
        let mut small = [false; 16];
        let mut large = Vec::new();
        let done: &mut [bool] = match small.get_mut(..edits.set.len()) {
            Some(d) => d,
            None => {
                large.resize(edits.set.len(), false);
                &mut large
            }
        };
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("connection")
                || edits
                    .remove
                    .iter()
                    .any(|n| h.name.eq_ignore_ascii_case(n.as_str()))
            {
                continue;
            }
            match edits
                .set
                .iter()
                .position(|(n, _)| h.name.eq_ignore_ascii_case(n.as_str()))
            {
                Some(i) if done[i] => {}
                Some(i) => {
                    done[i] = true;
                    let (n, v) = &edits.set[i];
                    push_header(&mut out, headers::spelling(n).as_bytes(), v.as_bytes());
                }
                None => push_header(&mut out, h.name.as_bytes(), h.value),
            }
        }
        for (i, (n, v)) in edits.set.iter().enumerate() {
            if !done[i] {
                push_header(&mut out, headers::spelling(n).as_bytes(), v.as_bytes());
            }
        }
        out.put_slice(b"\r\n");
        out
    }

    /// What the header builder needs to know of a request on the direct path (never a
    /// websocket).
    fn inputs<'a>(
        &'a self,
        conn: &Conn<'_>,
        target: &'a Target,
        auth: Option<&'a Auth>,
        allowed: Option<&'a Allowed>,
        client_close: bool,
    ) -> headers::Inputs<'a> {
        headers::Inputs {
            client_ip: conn.client_ip,
            listener_tls: self.shared.listener_tls,
            websocket: false,
            target,
            forwarding: &self.shared.forwarding,
            auth,
            allowed,
            client_close,
        }
    }

    /// The upstream head of an authenticated request, as pingora's path writes it: its
    /// `Connection` removed, the edits of `headers.rs` (identity headers set, the credential
    /// and client-sent identity headers removed) applied to pingora's request header, which
    /// is then written with its own serialiser. `None` if an edit is refused.
    #[allow(clippy::too_many_arguments)]
    fn authenticated_head(
        &self,
        header: &mut RequestHeader,
        auth: &Auth,
        allowed: Option<&Allowed>,
        target: &Target,
        upstream_path: &str,
        conn: &Conn<'_>,
        close: bool,
    ) -> Option<BytesMut> {
        let edits = headers::build(
            &header.method,
            &header.headers,
            &self.inputs(conn, target, Some(auth), allowed, close),
        );
        header.remove_header(&http::header::CONNECTION);
        edits.apply(header).ok()?;
        let mut out = BytesMut::with_capacity(upstream_path.len() + 64 + header.headers.len() * 48);
        out.put_slice(header.method.as_str().as_bytes());
        out.put_u8(b' ');
        out.put_slice(upstream_path.as_bytes());
        out.put_slice(b" HTTP/1.1\r\n");
        header.header_to_h1_wire(&mut out);
        out.put_slice(b"\r\n");
        Some(out)
    }

    /// Sends the request to the target and forwards the response.
    #[allow(clippy::too_many_arguments)]
    async fn exchange<S>(
        &self,
        down: &mut S,
        target: &Target,
        route: &Arc<Route>,
        head: &[u8],
        method: &Method,
        host: Option<&str>,
        keep: bool,
    ) -> Result<Exchanged, UpstreamError>
    where
        S: AsyncWrite + Unpin,
    {
        let sh = &self.shared;
        let t = &sh.peer_timeouts;
        let addr = match &target.addr {
            TargetAddr::Ip(a) => *a,
            TargetAddr::Name { host, port } => sh
                .connector
                .resolver()
                .resolve(host, *port, t.resolve)
                .await
                .map_err(|e| UpstreamError::Before {
                    kind: FailureKind::of_io(&e),
                    detail: format!("resolving target: {e}"),
                })?,
            TargetAddr::Unix(_) => {
                return Err(UpstreamError::Before {
                    kind: FailureKind::Other,
                    detail: "unix socket target on the direct path".into(),
                })
            }
        };
        // A pooled connection the target closed meanwhile fails at once: the request is then
        // sent once more on a new connection (GET and HEAD are idempotent), as pingora retries.
        let mut rbuf = BytesMut::new();
        let (mut up, resp) = loop {
            let (mut up, reused) = match self.pool.take(addr) {
                Some(c) => (c, true),
                None => (self.connect(addr).await?, false),
            };
            rbuf.clear();
            let sent = with_deadline(t.write, up.write_all(head)).await;
            let resp = match sent {
                Ok(()) => self.read_head(&mut up, &mut rbuf, method).await,
                Err(e) => Err(io_failure(&e, "writing request")),
            };
            match resp {
                Ok(r) => break (up, r),
                Err(UpstreamError::Before {
                    kind: FailureKind::Reset,
                    ..
                }) if reused && rbuf.is_empty() => continue,
                Err(e) => return Err(e),
            }
        };
        // Informational responses go to the client as they come (pingora's path does too);
        // a 101 to a request that asked for no upgrade is an error.
        let mut resp = resp;
        loop {
            if resp.status == 101 {
                return Err(UpstreamError::Before {
                    kind: FailureKind::Other,
                    detail: "101 response to a request without Upgrade".into(),
                });
            }
            if resp.status >= 200 {
                break;
            }
            let head = rbuf.split_to(resp.len);
            write_down(down, &head, sh.timeouts.downstream)
                .await
                .map_err(|_| UpstreamError::After { status: 0, sent: 0 })?;
            resp = self.read_head(&mut up, &mut rbuf, method).await?;
        }
        let status = resp.status;
        let out_head = response_head(sh, &rbuf[..resp.len], &resp, target, host, keep);
        let _ = rbuf.split_to(resp.len);
        // Counted once the target answered, whatever happens to the body (pingora's path
        // counts in its logging phase from the status it saw).
        sh.metrics.requests_proxy(status).inc();
        let body_bytes = forward_body(&mut up, down, rbuf, out_head, resp.framing, sh)
            .await
            .map_err(|sent| UpstreamError::After { status, sent })?;
        if resp.reusable && resp.framing != Framing::Close {
            self.pool.put(addr, up);
        }
        if status < 300 {
            sh.record_activity(route);
        }
        Ok(Exchanged { status, body_bytes })
    }

    async fn connect(&self, addr: SocketAddr) -> Result<TcpStream, UpstreamError> {
        let t = &self.shared.peer_timeouts;
        match tokio::time::timeout(t.connect, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                Ok(s)
            }
            Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
                Err(UpstreamError::Before {
                    kind: FailureKind::Refused,
                    detail: "connect ECONNREFUSED".into(),
                })
            }
            Ok(Err(e)) => Err(io_failure(&e, "connect")),
            Err(_) => Err(UpstreamError::Before {
                kind: FailureKind::Timeout,
                detail: "connect ETIMEDOUT".into(),
            }),
        }
    }

    /// Reads and parses a response head (the bytes stay in `rbuf`).
    async fn read_head(
        &self,
        up: &mut TcpStream,
        rbuf: &mut BytesMut,
        method: &Method,
    ) -> Result<ResponseHead, UpstreamError> {
        let t = &self.shared.peer_timeouts;
        loop {
            if !rbuf.is_empty() {
                let mut hs = uninit_fields();
                let mut resp = httparse::Response::new(&mut []);
                match httparse::ParserConfig::default()
                    .parse_response_with_uninit_headers(&mut resp, rbuf, &mut hs)
                {
                    Ok(httparse::Status::Complete(len)) => {
                        return response_facts(&resp, len, method).ok_or(UpstreamError::Before {
                            kind: FailureKind::Other,
                            detail: "invalid response framing".into(),
                        })
                    }
                    Ok(httparse::Status::Partial) => {}
                    Err(e) => {
                        return Err(UpstreamError::Before {
                            kind: FailureKind::Other,
                            detail: format!("invalid response head: {e}"),
                        })
                    }
                }
                if rbuf.len() > MAX_RESPONSE_HEAD {
                    return Err(UpstreamError::Before {
                        kind: FailureKind::Other,
                        detail: format!("response head larger than {MAX_RESPONSE_HEAD}"),
                    });
                }
            }
            rbuf.reserve(READ_CHUNK);
            match with_deadline(t.read, up.read_buf(rbuf)).await {
                Ok(0) => {
                    return Err(UpstreamError::Before {
                        kind: FailureKind::Reset,
                        detail: "socket hang up".into(),
                    })
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                    return Err(UpstreamError::Before {
                        kind: FailureKind::Timeout,
                        detail: "socket hang up (proxy timeout)".into(),
                    })
                }
                Err(e) => return Err(io_failure(&e, "reading response")),
            }
        }
    }

    /// Writes the error page for `code`; whether the client connection can be reused, and
    /// the body bytes sent.
    async fn error_page<S>(
        &self,
        down: &mut S,
        code: u16,
        raw_url: &[u8],
        keep: bool,
    ) -> (bool, usize)
    where
        S: AsyncWrite + Unpin,
    {
        let page = self.shared.errors.page_or_reason(code, raw_url).await;
        let fields = [
            page.content_type
                .as_deref()
                .map(|v| (&b"Content-Type"[..], v)),
            page.content_encoding
                .as_deref()
                .map(|v| (&b"Content-Encoding"[..], v)),
        ];
        let out = own_response(code, fields.into_iter().flatten(), &page.body, keep);
        let ok = write_down(down, &out, self.shared.timeouts.downstream)
            .await
            .is_ok();
        (ok, page.body.len())
    }
}

/// What the direct path will do with a request it takes; positions are in its head.
struct Plan {
    route: Arc<Route>,
    /// Empty when `auth` is set: written after the verdict.
    upstream_head: BytesMut,
    auth: Option<Box<AuthPlan>>,
    method: Method,
    /// The client asked to close after this request.
    close: bool,
    /// The request target as received.
    path: std::ops::Range<usize>,
    /// `Host`, kept only when a `Location` may be rewritten with it.
    host: Option<std::ops::Range<usize>>,
    /// For the access log, when it is on.
    referer: Option<std::ops::Range<usize>>,
    user_agent: Option<std::ops::Range<usize>>,
    lookup_time: Duration,
}

/// A request to authenticate before it goes on.
struct AuthPlan {
    auth: Arc<Auth>,
    /// The request as pingora's header type (what `auth` reads and edits).
    header: RequestHeader,
    decoded: String,
    upstream_path: String,
}

/// The client's request as pingora's parser builds it: method, target, version, and every
/// field with its spelling, in order. `None` if pingora would refuse it.
fn request_header(req: &httparse::Request<'_, '_>, taken: &Taken<'_>) -> Option<RequestHeader> {
    let mut header =
        RequestHeader::build(taken.method.clone(), taken.path, Some(req.headers.len())).ok()?;
    for h in req.headers.iter() {
        let value = HeaderValue::from_bytes(h.value).ok()?;
        header.append_header(h.name.to_string(), value).ok()?;
    }
    Some(header)
}

/// What a completed exchange produced.
struct Exchanged {
    status: u16,
    body_bytes: usize,
}
