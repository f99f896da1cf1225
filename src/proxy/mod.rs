//! The data plane: pingora's `ProxyHttp` for the public listener.
//!
//! Per request: canonicalise the path once, match the route, then either hand a websocket
//! upgrade to hubgate's relay or let pingora forward the request with CHP's URL and header
//! semantics. Per-request state lives in [`RequestCtx`]; shared state in [`Shared`].

mod error_pages;
mod forward;
mod frames;
mod relay;
mod resolver;
mod websocket;

use std::borrow::Cow;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use log::{debug, error};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::modules::http::HttpModules;
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType, Result};

pub use error_pages::{auth_page, form_encode, ErrorRenderer};
pub use resolver::Resolver;

use crate::canonical::{self, CanonicalPath};
use crate::config::{Forwarding, Timeouts};
use crate::metrics::Metrics;
use crate::routes::{Route, RouteTable, Target, TargetAddr};
use crate::tls::ClientTlsMaterial;

/// Identity headers a client must not be able to set (they are hubgate's to assert).
const IDENTITY_HEADERS: [&str; 11] = [
    "x-auth-request-user",
    "x-auth-request-email",
    "x-auth-request-groups",
    "x-auth-request-preferred-username",
    "x-auth-request-access-token",
    "x-forwarded-user",
    "x-forwarded-email",
    "x-forwarded-groups",
    "x-forwarded-preferred-username",
    "x-remote-user",
    "remote-user",
];

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
    pub client_tls: Arc<ClientTlsMaterial>,
    pub insecure: bool,
    pub resolver: Resolver,
    pub ws_activity_on_server_frames: bool,
    /// Whether the public listener is TLS (`https`/`wss` in `X-Forwarded-Proto`).
    pub listener_tls: bool,
    pub in_flight: InFlight,
    /// Keep-alive idle timeout for client connections, in whole seconds (pingora's unit).
    pub keepalive_secs: u64,
    /// Per-request access log.
    pub access_log: crate::config::AccessLog,
    /// Token authentication, when configured (swapped whole on a config reload).
    pub auth: arc_swap::ArcSwapOption<crate::auth::Auth>,
    /// The route store (its state shows in `/_chp_healthz`).
    pub store: Arc<dyn crate::routes::RouteStore>,
}

/// Per-request state.
#[derive(Default)]
pub struct RequestCtx {
    route: Option<Arc<Route>>,
    upstream_path: String,
    /// Status of the upstream's response, once seen.
    upstream_status: u16,
    websocket: bool,
    /// The authenticated identity, when authentication is on and the path is protected.
    allowed: Option<crate::auth::Allowed>,
    /// Whether `hubgate_upstream_errors_total` already counted this request's failure.
    upstream_error_counted: bool,
    /// When the request started (duration metric) and what kind of route it matched.
    started: Option<Instant>,
    kind: Option<crate::routes::RouteKind>,
    _in_flight: Option<InFlightGuard>,
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

fn is_websocket_upgrade(req: &RequestHeader) -> bool {
    req.method == http::Method::GET
        && req
            .headers
            .get(http::header::UPGRADE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
}

/// A short label for an upstream I/O failure (metrics).
pub fn io_error_kind(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "refused",
        std::io::ErrorKind::TimedOut => "timeout",
        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe => "reset",
        std::io::ErrorKind::NotFound => "dns",
        _ => "other",
    }
}

fn error_kind(e: &Error) -> &'static str {
    // With TLS 1.3 a target that refuses our client certificate says so only on the first
    // read after the handshake: the failure arrives as a read error carrying a TLS alert.
    let root = e.root_cause();
    let tls_alert = root.downcast_ref::<rustls::Error>().is_some()
        || root
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some());
    if tls_alert {
        return "tls";
    }
    match e.etype() {
        ErrorType::ConnectRefused => "refused",
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
            "timeout"
        }
        ErrorType::ConnectionClosed => "reset",
        ErrorType::TLSHandshakeFailure
        | ErrorType::TLSHandshakeTimedout
        | ErrorType::InvalidCert => "tls",
        _ => "other",
    }
}

/// A request target with the values of secret-looking query parameters replaced by `REDACTED`.
fn redact_query(target: &str) -> String {
    let Some((path, query)) = target.split_once('?') else {
        return target.to_string();
    };
    let secret = |k: &str| {
        let k = k.to_ascii_lowercase();
        [
            "token", "secret", "password", "code", "state", "key", "auth",
        ]
        .iter()
        .any(|s| k.contains(s))
    };
    let redacted: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if secret(k) => format!("{k}=REDACTED"),
            _ => pair.to_string(),
        })
        .collect();
    format!("{path}?{}", redacted.join("&"))
}

/// Removes `Set-Cookie` headers from a target that would set hubgate's own cookies (a user's
/// server must not be able to plant or clear the session).
fn drop_own_set_cookies(resp: &mut ResponseHeader) -> Result<()> {
    let own = |v: &http::HeaderValue| {
        let name = v
            .as_bytes()
            .split(|&b| b == b'=')
            .next()
            .unwrap_or_default();
        let name = name.trim_ascii();
        name == crate::auth::SESSION_COOKIE.as_bytes()
            || name == crate::auth::LOGIN_COOKIE.as_bytes()
    };
    if !resp
        .headers
        .get_all(http::header::SET_COOKIE)
        .iter()
        .any(own)
    {
        return Ok(());
    }
    let kept: Vec<http::HeaderValue> = resp
        .headers
        .get_all(http::header::SET_COOKIE)
        .iter()
        .filter(|v| !own(v))
        .cloned()
        .collect();
    resp.remove_header(&http::header::SET_COOKIE);
    for v in kept {
        resp.append_header(http::header::SET_COOKIE, v)?;
    }
    Ok(())
}

/// The host part of a `Host` header, as CHP takes it (up to the first `:`).
fn routing_host(req: &RequestHeader) -> Cow<'_, str> {
    match req
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
    {
        Some(h) => Cow::Borrowed(h.split(':').next().unwrap_or_default()),
        None => Cow::Borrowed("undefined"),
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

impl HubProxy {
    /// Answers a request that cannot be proxied, logs it as CHP does, and counts it.
    async fn refuse(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        code: u16,
        msg: &str,
    ) -> Result<bool> {
        let sh = &self.shared;
        let url = String::from_utf8_lossy(session.req_header().raw_path()).into_owned();
        error!(
            "{code} {} {} {msg}",
            session.req_header().method,
            url.split('?').next().unwrap_or_default()
        );
        sh.metrics.requests_proxy(code).inc();
        if ctx.websocket {
            websocket::respond_bare(session, code).await;
        } else {
            sh.errors
                .respond(session, &sh.resolver, code, url.as_bytes())
                .await;
        }
        Ok(true)
    }

    /// With authentication on: the headers to remove upstream (inbound identity headers, the
    /// Bearer credential) and, in `set`, the identity headers and the `Cookie` without
    /// hubgate's own cookies.
    fn identity_edits(
        &self,
        req: &RequestHeader,
        ctx: &RequestCtx,
        set: &mut Vec<(http::HeaderName, http::HeaderValue)>,
    ) -> Vec<http::HeaderName> {
        let Some(auth) = self.shared.auth.load_full() else {
            return Vec::new();
        };
        // Only the identity headers the client actually sent: removing an absent name still
        // hashes it in two maps (~7,000 instructions per request for all eleven).
        let mut remove: Vec<http::HeaderName> = IDENTITY_HEADERS
            .iter()
            .filter(|h| req.headers.contains_key(**h))
            .map(|h| http::HeaderName::from_static(h))
            .collect();
        set.retain(|(k, _)| !IDENTITY_HEADERS.contains(&k.as_str()));
        if let Some(allowed) = &ctx.allowed {
            if allowed.kind == crate::auth::CredentialKind::Bearer
                && !auth.config.forward_authorization
            {
                remove.push(http::header::AUTHORIZATION);
            }
            let id = &allowed.identity;
            let mut push = |name: &'static str, value: &str| {
                if let Ok(v) = http::HeaderValue::from_str(value) {
                    set.push((http::HeaderName::from_static(name), v));
                }
            };
            push("x-auth-request-user", &id.user);
            if let Some(email) = &id.email {
                push("x-auth-request-email", email);
            }
            if !id.groups.is_empty() {
                push("x-auth-request-groups", &id.groups.join(","));
            }
        }
        let cookies: Vec<&str> = req
            .headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if cookies.iter().any(|c| {
            c.contains(crate::auth::SESSION_COOKIE) || c.contains(crate::auth::LOGIN_COOKIE)
        }) {
            remove.push(http::header::COOKIE);
            if let Some(kept) = crate::auth::strip_own_cookies(&cookies.join("; ")) {
                if let Ok(v) = http::HeaderValue::from_str(&kept) {
                    set.push((http::header::COOKIE, v));
                }
            }
        }
        remove
    }

    /// One access-log line; secrets in the query are redacted, credentials never logged.
    fn access_log(&self, session: &Session, ctx: &RequestCtx, status: u16, elapsed: Duration) {
        let req = session.req_header();
        let client = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map_or("-".to_string(), |a| a.ip().to_string());
        let target = redact_query(&String::from_utf8_lossy(req.raw_path()));
        let user = ctx
            .allowed
            .as_ref()
            .map_or("-", |a| a.identity.user.as_str());
        let bytes = session.body_bytes_sent();
        let header = |name: http::HeaderName| {
            req.headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_string()
        };
        let micros = elapsed.as_micros();
        match self.shared.access_log {
            crate::config::AccessLog::Json => log::info!(
                "{}",
                serde_json::json!({
                    "client": client, "user": user, "method": req.method.as_str(), "target": target,
                    "status": status, "bytes": bytes, "duration_us": micros as u64,
                    "referer": header(http::header::REFERER), "user_agent": header(http::header::USER_AGENT),
                })
            ),
            _ => log::info!(
                "{client} - {user} \"{} {target} {:?}\" {status} {bytes} \"{}\" \"{}\" {micros}us",
                req.method,
                req.version,
                header(http::header::REFERER),
                header(http::header::USER_AGENT)
            ),
        }
    }

    /// Writes a complete small response.
    async fn write_reply(
        &self,
        session: &mut Session,
        status: u16,
        headers: &[(&'static str, String)],
        body: String,
    ) -> Result<bool> {
        let mut resp = ResponseHeader::build(status, Some(headers.len() + 1))?;
        for (k, v) in headers {
            resp.append_header(*k, v.as_str())?;
        }
        resp.insert_header("Content-Length", body.len().to_string())?;
        session.write_response_header(Box::new(resp), false).await?;
        session
            .write_response_body(Some(Bytes::from(body)), true)
            .await?;
        Ok(true)
    }

    /// Refuses a request for an authentication reason: a login redirect for browsers without a
    /// credential, otherwise 400/401/403/503 with a generic page or JSON body.
    async fn deny(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        reason: crate::auth::Reason,
        presented: bool,
    ) -> Result<bool> {
        let Some(auth) = self.shared.auth.load_full() else {
            return Ok(false);
        };
        let req = session.req_header();
        let accept = req
            .headers
            .get(http::header::ACCEPT)
            .and_then(|a| a.to_str().ok())
            .unwrap_or("");
        let browser = !ctx.websocket
            && (req.method == http::Method::GET || req.method == http::Method::HEAD)
            && accept.contains("text/html")
            && !req.headers.contains_key("x-requested-with");
        let status = reason.status();
        let next = String::from_utf8_lossy(req.raw_path()).into_owned();
        session.set_keepalive(None);
        if status == 401 && browser && auth.login_available() {
            let location = auth.login_url(&next);
            return self
                .write_reply(
                    session,
                    302,
                    &[("Location", location), ("Cache-Control", "no-store".into())],
                    String::new(),
                )
                .await;
        }
        let mut headers: Vec<(&'static str, String)> = vec![("Cache-Control", "no-store".into())];
        if status == 401 {
            let challenge = if presented {
                r#"Bearer realm="hubgate", error="invalid_token""#.to_string()
            } else {
                r#"Bearer realm="hubgate""#.to_string()
            };
            headers.push(("WWW-Authenticate", challenge));
        } else if matches!(
            reason,
            crate::auth::Reason::MfaRequired | crate::auth::Reason::AuthTooOld
        ) {
            headers.push((
                "WWW-Authenticate",
                r#"Bearer realm="hubgate", error="insufficient_user_authentication""#.to_string(),
            ));
        }
        let body = if browser {
            headers.push(("Content-Type", "text/html; charset=utf-8".into()));
            auth_page(status, reason.message())
        } else {
            headers.push(("Content-Type", "application/json".into()));
            serde_json::json!({"status": status, "message": reason.message()}).to_string()
        };
        self.write_reply(session, status, &headers, body).await
    }

    fn peer_for(&self, target: &Target, addr: Option<std::net::SocketAddr>) -> Result<HttpPeer> {
        let sh = &self.shared;
        let mut peer = match (&target.addr, addr) {
            (TargetAddr::Ip(a), _) => HttpPeer::new(*a, target.tls, target.sni.clone()),
            (TargetAddr::Name { .. }, Some(a)) => HttpPeer::new(a, target.tls, target.sni.clone()),
            (TargetAddr::Unix(p), _) => HttpPeer::new_uds(p, false, String::new())?,
            (TargetAddr::Name { .. }, None) => {
                return Err(Error::explain(
                    ErrorType::ConnectNoRoute,
                    "target name not resolved",
                ));
            }
        };
        // CHP's --proxy-timeout is an idle limit on the upstream socket, connect included.
        let connect = sh
            .timeouts
            .upstream
            .map_or(sh.timeouts.connect, |t| t.min(sh.timeouts.connect));
        peer.options.connection_timeout = Some(connect);
        peer.options.total_connection_timeout = Some(connect + Duration::from_secs(5));
        peer.options.read_timeout = sh.timeouts.upstream;
        peer.options.write_timeout = sh.timeouts.upstream;
        peer.options.idle_timeout = Some(Duration::from_secs(60));
        if target.tls {
            peer.options.verify_cert = !sh.insecure;
            peer.options.verify_hostname = !sh.insecure;
            peer.options.ca = sh.client_tls.ca.clone();
            peer.client_cert_key = sh.client_tls.cert_key.clone();
        }
        Ok(peer)
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
        let sh = &self.shared;
        if session.req_header().raw_path() == b"/_chp_healthz" {
            // With authentication on, not ready until every issuer has keys (fail closed).
            let ready = sh.auth.load().as_ref().is_none_or(|a| a.ready());
            let store = sh.store.health().healthz();
            let (code, body) = if let (true, Some((code, body))) = (ready, store) {
                (code, Bytes::from(body))
            } else if ready {
                (200, Bytes::from_static(br#"{"status":"OK"}"#))
            } else {
                (503, Bytes::from_static(br#"{"status":"not ready","reason":"no signing keys loaded for an identity provider yet"}"#))
            };
            let mut resp = ResponseHeader::build(code, Some(2))?;
            resp.insert_header("Content-Type", "application/json")?;
            resp.insert_header("Content-Length", body.len().to_string())?;
            session.write_response_header(Box::new(resp), false).await?;
            session.write_response_body(Some(body), true).await?;
            return Ok(true);
        }
        let req = session.req_header();
        let bad_target = req.raw_path().iter().any(|&b| b <= b' ' || b >= 0x7f);
        if bad_target
            || (req.version == http::Version::HTTP_11
                && !req.headers.contains_key(http::header::HOST))
        {
            // node (so CHP) refuses HTTP/1.1 without Host (RFC 9112 §3.2) and raw spaces,
            // controls or non-ASCII bytes in the request target.
            let mut resp = ResponseHeader::build(400, Some(2))?;
            resp.insert_header("Connection", "close")?;
            resp.insert_header("Content-Length", "0")?;
            session.set_keepalive(None);
            session.write_response_header(Box::new(resp), true).await?;
            return Ok(true);
        }
        ctx.started = Some(Instant::now());
        sh.in_flight.0.fetch_add(1, Ordering::AcqRel);
        ctx._in_flight = Some(InFlightGuard(sh.clone()));
        ctx.websocket = is_websocket_upgrade(session.req_header());
        if ctx.websocket {
            sh.metrics.requests_ws.inc();
        } else {
            sh.metrics.requests_web.inc();
            if let Some(t) = sh.timeouts.downstream {
                session.set_read_timeout(Some(t));
                session.set_write_timeout(Some(t));
            }
            session.set_keepalive(Some(sh.keepalive_secs));
        }

        let raw = session.req_header().raw_path();
        let (path, query) = canonical::split_target(raw);
        let canon: CanonicalPath<'_> = match canonical::canonicalize(path) {
            Ok(c) => c,
            Err(e) => {
                let msg = e.to_string();
                return self.refuse(session, ctx, 500, &msg).await;
            }
        };
        let query = query.map(String::from_utf8_lossy);

        let auth = sh.auth.load_full();
        if let Some(auth) = &auth {
            if canon.decoded.starts_with(crate::auth::login::PREFIX) {
                let reply = auth.handle_own(session.req_header(), &canon.decoded).await;
                return self
                    .write_reply(session, reply.status, &reply.headers, reply.body)
                    .await;
            }
        }
        if let Some(auth) = &auth {
            if canon.decoded.contains('.') && canonical::has_encoded_dot_segments(&canon.decoded) {
                let reason = crate::auth::Reason::BadPath;
                let outcome = crate::auth::Outcome::Deny {
                    reason,
                    identity: None,
                    presented: false,
                };
                auth.record(&outcome, None, &canon.decoded);
                return self.deny(session, ctx, reason, false).await;
            }
        }
        let mut query = query;
        if let (true, Some(param), Some(q)) = (
            ctx.websocket,
            auth.as_ref().and_then(|a| a.config.query_param.as_deref()),
            query.as_deref(),
        ) {
            // A credential in the query never travels further.
            query = Some(Cow::Owned(crate::auth::strip_query_param(q, param)));
        }

        let started = Instant::now();
        let (found, host_len) = if sh.forwarding.host_routing {
            let host = routing_host(session.req_header());
            let key = format!("/{host}{}", canon.decoded);
            (sh.table.lookup(&key), host.len() + 1)
        } else {
            (sh.table.lookup(&canon.decoded), 0)
        };
        sh.metrics.find_target_for_req.observe(started.elapsed());
        ctx.kind = found.as_ref().map(|f| f.route.kind);
        if let Some(auth) = &auth {
            let route = found.as_ref().map(|f| &*f.route);
            let outcome = auth
                .check(session.req_header(), &canon.decoded, route, ctx.websocket)
                .await;
            auth.record(&outcome, route, &canon.decoded);
            match outcome {
                crate::auth::Outcome::Public => {}
                crate::auth::Outcome::Allow(allowed) => ctx.allowed = Some(allowed),
                crate::auth::Outcome::Deny {
                    reason, presented, ..
                } => {
                    return self.deny(session, ctx, reason, presented).await;
                }
            }
        }
        let Some(found) = found else {
            return self.refuse(session, ctx, 404, "").await;
        };
        let route = found.route;
        let target = match &route.target {
            Ok(t) => t,
            Err(e) => {
                let msg = e.to_string();
                return self.refuse(session, ctx, 500, &msg).await;
            }
        };

        let forward_path: &str = if sh.forwarding.include_prefix {
            &canon.forward
        } else {
            forward::strip_prefix(&canon.forward, found.prefix_len.saturating_sub(host_len))
        };
        let upstream_path = forward::upstream_path(
            target,
            forward_path,
            query.as_deref(),
            sh.forwarding.prepend_path,
        );
        debug!(
            "PROXY {} {} to {}",
            if ctx.websocket { "WS" } else { "WEB" },
            canon.forward,
            route.target_str()
        );

        if ctx.websocket && !target.tls {
            let client_ip = session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip());
            let down = forward::Downstream {
                client_ip,
                tls: sh.listener_tls,
                websocket: true,
                target,
            };
            let mut edits =
                forward::request_headers(&session.req_header().headers, &down, &sh.forwarding);
            let removed = self.identity_edits(session.req_header(), ctx, &mut edits);
            let deadline = match (&ctx.allowed, &auth) {
                (Some(a), Some(auth)) if auth.config.close_websockets_on_expiry => {
                    Some(a.expires_at)
                }
                _ => None,
            };
            let upgrade = websocket::Upgrade {
                route: route.clone(),
                target,
                upstream_path: &upstream_path,
                set_headers: &edits,
                removed_headers: &removed,
                close_at: deadline,
            };
            return match websocket::proxy(sh, session, upgrade).await {
                Ok(()) => Ok(true),
                Err((code, msg)) => self.refuse(session, ctx, code, &msg).await,
            };
        }
        if ctx.websocket {
            // https targets keep pingora's own upgrade path; it must not time out idle kernels.
            session.set_read_timeout(None);
        }
        ctx.upstream_path = upstream_path;
        ctx.route = Some(route);
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let route = ctx
            .route
            .as_ref()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no route for request"))?;
        let target = route
            .target
            .as_ref()
            .map_err(|e| Error::explain(ErrorType::InternalError, e.to_string()))?;
        let resolved = match &target.addr {
            TargetAddr::Name { host, port } => Some(
                self.shared
                    .resolver
                    .resolve(host, *port, self.shared.timeouts.connect)
                    .await
                    .map_err(|e| {
                        Error::because(ErrorType::ConnectNoRoute, "resolving target", e)
                    })?,
            ),
            _ => None,
        };
        let mut peer = self.peer_for(target, resolved)?;
        if ctx.websocket {
            peer.options.read_timeout = None;
            peer.options.write_timeout = None;
        }
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let sh = &self.shared;
        upstream.set_raw_path(ctx.upstream_path.as_bytes())?;
        let Some(Ok(target)) = ctx.route.as_ref().map(|r| &r.target) else {
            return Ok(());
        };
        let client_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let down = forward::Downstream {
            client_ip,
            tls: sh.listener_tls,
            websocket: ctx.websocket,
            target,
        };
        let mut edits = forward::request_headers(&upstream.headers, &down, &sh.forwarding);
        for name in self.identity_edits(upstream, ctx, &mut edits) {
            upstream.remove_header(&name);
        }
        for (name, value) in edits {
            upstream.insert_header(name, value)?;
        }
        upstream.remove_header("trailer");
        if !upstream.headers.contains_key(http::header::HOST) {
            // HTTP/1.0 clients may omit Host; node's client then sends the target's.
            upstream.insert_header(http::header::HOST, target.host_header.as_str())?;
        }
        if !ctx.websocket {
            // As node's client does: the client's `close` is passed on, otherwise keep-alive.
            let close = session
                .req_header()
                .headers
                .get(http::header::CONNECTION)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
            let value = if close { "close" } else { "keep-alive" };
            upstream.insert_header(http::header::CONNECTION, value)?;
        }
        let method = &upstream.method;
        if (method == http::Method::DELETE || method == http::Method::OPTIONS)
            && !upstream.headers.contains_key(http::header::CONTENT_LENGTH)
            && !upstream
                .headers
                .contains_key(http::header::TRANSFER_ENCODING)
        {
            upstream.insert_header(http::header::CONTENT_LENGTH, "0")?;
        }
        Ok(())
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
            drop_own_set_cookies(upstream_response)?;
        }
        let fwd = &self.shared.forwarding;
        if fwd.auto_rewrite || fwd.protocol_rewrite.is_some() {
            if let (Some(Ok(target)), Some(location)) = (
                ctx.route.as_ref().map(|r| &r.target),
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
            .upstream_errors
            .with_label_values(&[error_kind(&e)])
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
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            _ => match e.esource() {
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed => 0,
                    ErrorType::ReadTimedout | ErrorType::WriteTimedout => 0,
                    _ => 400,
                },
                _ if ctx.route.is_some() => 503,
                _ => 500,
            },
        };
        if code == 0 {
            return no_reuse(0);
        }
        // Failures after the connection was made (resets, proxy timeouts); connect failures
        // were counted in `fail_to_connect`.
        if code == 503 && e.esource() == &ErrorSource::Upstream && !ctx.upstream_error_counted {
            self.shared
                .metrics
                .upstream_errors
                .with_label_values(&[error_kind(e)])
                .inc();
        }
        let msg = match e.etype() {
            ErrorType::ConnectRefused => "connect ECONNREFUSED".to_string(),
            ErrorType::ConnectTimedout => "connect ETIMEDOUT".to_string(),
            ErrorType::ReadTimedout => "socket hang up (proxy timeout)".to_string(),
            _ => e.to_string(),
        };
        let _ = self.refuse(session, ctx, code, &msg).await;
        no_reuse(code)
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        if let (Some(started), Some(resp)) = (ctx.started, session.response_written()) {
            let kind = ctx.kind.unwrap_or(crate::routes::RouteKind::Other);
            let status = resp.status.as_u16();
            self.shared
                .metrics
                .observe_request(kind, status, started.elapsed());
            if self.shared.access_log != crate::config::AccessLog::Off {
                self.access_log(session, ctx, status, started.elapsed());
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
