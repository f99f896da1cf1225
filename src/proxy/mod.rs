//! The data plane: pingora's `ProxyHttp` for the public listener.
//!
//! The hooks below are short; each job has a file named for it:
//! - `steps.rs`: what `request_filter` decides, as named steps (health, well-formed request,
//!   accounting, canonical path, own endpoints, route match, authorisation, upstream path,
//!   websocket hand-off); decisions are kept in [`RequestCtx`];
//! - `headers.rs`: the one upstream header builder (HTTP and websocket);
//! - `refusal.rs`: every refusal as one enum, rendered into a response in one place;
//! - `error_pages.rs`: the error target, `--error-path` files or built-in pages;
//! - `forward.rs`: CHP's URL joining, `X-Forwarded-*` and redirect rewriting;
//! - `websocket.rs`, `relay.rs`, `frames.rs`: upgrades relayed by hubgate itself;
//! - `access_log.rs`: the per-request log line.
//!
//! Authentication (finding, verifying and stripping the credential, the identity headers and
//! the denial) is `crate::auth`'s; this module only calls it.

mod access_log;
mod direct;
mod error_pages;
mod forward;
pub(crate) mod frames;
mod front_door;
mod headers;
mod refusal;
mod relay;
mod steps;
mod websocket;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::modules::http::HttpModules;
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType, Result};

pub use error_pages::ErrorRenderer;
pub use front_door::FrontDoor;
pub use refusal::Refusal;

use crate::auth::Allowed;
use crate::config::{AccessLog, Forwarding, Timeouts};
use crate::metrics::Metrics;
use crate::net::{Connector, FailureKind, PeerTimeouts, Target};
use crate::routes::{Route, RouteKind, RouteStore, RouteTable};

/// Requests in flight, for a graceful drain on SIGTERM.
#[derive(Debug, Default)]
pub struct InFlight(AtomicUsize);

impl InFlight {
    /// Number of requests being handled now.
    pub fn count(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }
}

/// Decrements [`InFlight`] when a request ends, however it ends.
pub struct InFlightGuard(Arc<Shared>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.in_flight.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// State shared by every request.
pub struct Shared {
    pub table: Arc<RouteTable>,
    pub forwarding: Forwarding,
    pub timeouts: Timeouts,
    pub metrics: Arc<Metrics>,
    pub errors: ErrorRenderer,
    /// How targets are reached (one resolver, client TLS, `--insecure`).
    pub connector: Connector,
    /// The limits of upstream connections, from `timeouts` ([`upstream_limits`]).
    pub peer_timeouts: PeerTimeouts,
    pub ws_activity_on_server_frames: bool,
    /// Whether the public listener is TLS (`https`/`wss` in `X-Forwarded-Proto`).
    pub listener_tls: bool,
    pub in_flight: InFlight,
    /// Keep-alive idle timeout for client connections, in whole seconds (pingora's unit).
    pub keepalive_secs: u64,
    /// Per-request access log.
    pub access_log: AccessLog,
    /// Token authentication, when configured (swapped whole on a config reload).
    pub auth: arc_swap::ArcSwapOption<crate::auth::Auth>,
    /// The route store (its state shows in `/_chp_healthz`).
    pub store: Arc<dyn RouteStore>,
    /// Set on SIGTERM: relayed websockets send their clients a close frame and end.
    pub draining: tokio::sync::watch::Sender<bool>,
    /// The process's revocation list (kept across `[auth]` reloads).
    pub revocations: Arc<crate::auth::Revocations>,
}

/// The limits of an upstream connection. CHP's `--proxy-timeout` is an idle limit on the
/// upstream socket, connect included, so it also caps the connect timeout.
pub fn upstream_limits(t: &Timeouts) -> PeerTimeouts {
    let connect = t.upstream.map_or(t.connect, |u| u.min(t.connect));
    PeerTimeouts {
        resolve: t.connect,
        connect,
        total_connect: Some(connect + Duration::from_secs(5)),
        read: t.upstream,
        write: t.upstream,
        idle: Some(Duration::from_secs(60)),
    }
}

impl Shared {
    /// Records activity on a route (and times it, for CHP's `last_activity_updating`).
    pub fn record_activity(&self, route: &Route) {
        let started = Instant::now();
        route.touch();
        self.metrics
            .last_activity_updating
            .observe(started.elapsed());
    }
}

/// Per-request state: what the steps decided.
#[derive(Default)]
pub struct RequestCtx {
    /// The matched route, once the request is going to its target.
    route: Option<Arc<Route>>,
    /// Path and query to request from the target.
    upstream_path: String,
    /// Status of the upstream's response, once seen.
    upstream_status: u16,
    websocket: bool,
    /// The authenticated identity, when authentication is on and the path is protected.
    allowed: Option<Allowed>,
    /// Whether `hubgate_upstream_errors_total` already counted this request's failure.
    upstream_error_counted: bool,
    /// When the request started (duration metric) and what kind of route it matched.
    started: Option<Instant>,
    kind: Option<RouteKind>,
    _in_flight: Option<InFlightGuard>,
}

impl RequestCtx {
    /// The target of the route this request goes to.
    fn target(&self) -> Option<&Target> {
        self.route.as_ref().and_then(|r| r.target.as_ref().ok())
    }
}

/// The public listener's proxy logic.
pub struct HubProxy {
    shared: Arc<Shared>,
}

impl HubProxy {
    /// A proxy over shared state.
    pub fn new(shared: Arc<Shared>) -> HubProxy {
        HubProxy { shared }
    }
}

/// The log text CHP writes for a proxy error.
fn chp_message(e: &Error) -> String {
    match e.etype() {
        ErrorType::ConnectRefused => "connect ECONNREFUSED".to_string(),
        ErrorType::ConnectTimedout => "connect ETIMEDOUT".to_string(),
        ErrorType::ReadTimedout => "socket hang up (proxy timeout)".to_string(),
        _ => e.to_string(),
    }
}

#[async_trait]
impl ProxyHttp for HubProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::default()
    }

    fn init_downstream_modules(&self, _modules: &mut HttpModules) {
        // No response compression module: pingora's default adds a disabled one whose
        // per-request context costs CPU for nothing.
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        match self.decide(session, ctx).await {
            Ok(steps::Next::Proxy) => Ok(false),
            Ok(steps::Next::HandedOff) => Ok(true),
            Ok(steps::Next::Reply(reply)) => {
                refusal::write_reply(session, reply).await?;
                Ok(true)
            }
            Err(refusal) => {
                self.render(session, ctx, refusal).await;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let target = ctx
            .target()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no route for request"))?;
        // Websocket upgrades never get here: every target's go to hubgate's relay.
        let peer = self
            .shared
            .connector
            .peer(target, &self.shared.peer_timeouts)
            .await
            .map_err(|e| Error::because(ErrorType::ConnectNoRoute, "resolving target", e))?;
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        upstream.set_raw_path(ctx.upstream_path.as_bytes())?;
        let Some(target) = ctx.target() else {
            return Ok(());
        };
        let auth = self.shared.auth.load();
        let edits = headers::build(
            &upstream.method,
            &upstream.headers,
            &headers::Inputs {
                client_ip: steps::client_ip(session),
                listener_tls: self.shared.listener_tls,
                websocket: ctx.websocket,
                target,
                forwarding: &self.shared.forwarding,
                auth: auth.as_deref(),
                allowed: ctx.allowed.as_ref(),
                client_close: headers::wants_close(&session.req_header().headers),
            },
        );
        edits.apply(upstream)
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if body.as_ref().is_some_and(|b| !b.is_empty()) {
            if let Some(route) = &ctx.route {
                self.shared.record_activity(route);
            }
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let status = upstream_response.status.as_u16();
        ctx.upstream_status = status;
        if self.shared.auth.load().is_some() {
            crate::auth::drop_own_set_cookies(upstream_response)?;
        }
        let fwd = &self.shared.forwarding;
        if fwd.auto_rewrite || fwd.protocol_rewrite.is_some() {
            if let (Some(target), Some(location)) = (
                ctx.target(),
                upstream_response
                    .headers
                    .get(http::header::LOCATION)
                    .and_then(|l| l.to_str().ok()),
            ) {
                let host = session
                    .req_header()
                    .headers
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok());
                if let Some(new) = forward::rewrite_location(status, location, target, host, fwd) {
                    upstream_response.insert_header(http::header::LOCATION, new)?;
                }
            }
        }
        Ok(())
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, _error: &Error) -> bool {
        // `fail_to_proxy` logs every proxy error in CHP's one-line form.
        true
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        e: Box<Error>,
    ) -> Box<Error> {
        ctx.upstream_error_counted = true;
        self.shared
            .metrics
            .upstream_error(FailureKind::of_pingora(&e))
            .inc();
        e
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let no_reuse = |code| FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        };
        if session.response_written().is_some() {
            // Headers (or a 101) already went out: nothing more can be said on this connection.
            return no_reuse(0);
        }
        let refusal = match (e.etype(), e.esource()) {
            (ErrorType::HTTPStatus(code), _) => Refusal::Status(*code, chp_message(e)),
            (
                ErrorType::ReadError
                | ErrorType::WriteError
                | ErrorType::ConnectionClosed
                | ErrorType::ReadTimedout
                | ErrorType::WriteTimedout,
                ErrorSource::Downstream,
            ) => return no_reuse(0),
            (_, ErrorSource::Downstream) => Refusal::Status(400, chp_message(e)),
            // Failures after the connection was made (resets, proxy timeouts) are counted
            // here; connect failures were counted in `fail_to_connect`.
            _ if ctx.route.is_some() => Refusal::Upstream {
                kind: FailureKind::of_pingora(e),
                detail: chp_message(e),
                counted: ctx.upstream_error_counted || e.esource() != &ErrorSource::Upstream,
            },
            _ => Refusal::Status(500, chp_message(e)),
        };
        let code = refusal.status();
        self.render(session, ctx, refusal).await;
        no_reuse(code)
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        if let (Some(started), Some(resp)) = (ctx.started, session.response_written()) {
            let kind = ctx.kind.unwrap_or(RouteKind::Other);
            let status = resp.status.as_u16();
            self.shared
                .metrics
                .observe_request(kind, status, started.elapsed());
            if self.shared.access_log != AccessLog::Off {
                access_log::write(
                    self.shared.access_log,
                    session,
                    ctx.allowed.as_ref(),
                    status,
                    started.elapsed(),
                );
            }
        }
        let status = ctx.upstream_status;
        if status == 0 {
            return;
        }
        self.shared.metrics.requests_proxy(status).inc();
        if e.is_none() && status < 300 {
            if let Some(route) = &ctx.route {
                self.shared.record_activity(route);
            }
        }
    }
}
