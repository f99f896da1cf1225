//! What `request_filter` decides, as named steps in the order they run. Each step either
//! lets the request go on, answers it, or refuses it with a [`Refusal`]; what a step decides
//! for later hooks is kept in [`RequestCtx`].

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use log::debug;
use pingora::http::RequestHeader;
use pingora::proxy::Session;

use super::{forward, headers, websocket, HubProxy, InFlightGuard, Refusal, RequestCtx};
use crate::auth::backchannel;
use crate::auth::Auth;
use crate::canonical;
use crate::routes::Match;
use crate::web::Reply;

/// How `request_filter` goes on after the steps.
pub(super) enum Next {
    /// pingora forwards the request to `ctx.route`'s target at `ctx.upstream_path`.
    Proxy,
    /// hubgate answers the request itself.
    Reply(Reply),
    /// The websocket relay took the connection over.
    HandedOff,
}

/// The client's IP, when it came over TCP.
pub(super) fn client_ip(session: &Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}

fn is_websocket_upgrade(req: &RequestHeader) -> bool {
    req.method == http::Method::GET
        && req
            .headers
            .get(http::header::UPGRADE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
}

/// Step: refuse what node (so CHP) refuses before routing: HTTP/1.1 without `Host`
/// (RFC 9112 §3.2), and raw spaces, controls or non-ASCII bytes in the request target.
fn well_formed(req: &RequestHeader) -> Result<(), Refusal> {
    let bad_target = has_bad_bytes(req.raw_path());
    let no_host =
        req.version == http::Version::HTTP_11 && !req.headers.contains_key(http::header::HOST);
    if bad_target || no_host {
        return Err(Refusal::Malformed);
    }
    Ok(())
}

/// Whether the client's connection may carry another request after this one (RFC 9112
/// §9.3): HTTP/1.1 unless `Connection: close`; HTTP/1.0 only with `Connection: keep-alive`.
fn persistent(req: &RequestHeader) -> bool {
    let has_token = |token: &str| {
        req.headers
            .get_all(http::header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    match req.version {
        http::Version::HTTP_10 | http::Version::HTTP_09 => has_token("keep-alive"),
        _ => !has_token("close"),
    }
}

/// Step: an absolute-form request target (`GET http://host/path HTTP/1.1`) becomes
/// origin-form, as a server must accept it (RFC 9112 §3.2.2): the route is found on its
/// path, and its authority replaces `Host` (the same section says the received `Host` is
/// ignored), so host routing and the target see one host. A target with userinfo or without
/// a host is malformed.
fn origin_form(req: &mut RequestHeader) -> Result<(), Refusal> {
    let raw = req.raw_path();
    let scheme_len = [&b"http://"[..], b"https://"]
        .iter()
        .find(|s| raw.len() >= s.len() && raw[..s.len()].eq_ignore_ascii_case(s))
        .map(|s| s.len());
    let Some(scheme_len) = scheme_len else {
        return Ok(());
    };
    let rest = &raw[scheme_len..];
    let end = rest
        .iter()
        .position(|&b| b == b'/' || b == b'?' || b == b'#')
        .unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if authority.is_empty() || authority.contains(&b'@') || has_bad_bytes(authority) {
        return Err(Refusal::Malformed);
    }
    let authority = String::from_utf8_lossy(authority).into_owned();
    let path = match tail.first() {
        Some(b'/') => tail.to_vec(),
        Some(b'?') => [b"/".as_slice(), tail].concat(),
        _ => b"/".to_vec(),
    };
    req.set_raw_path(&path).map_err(|_| Refusal::Malformed)?;
    req.insert_header(http::header::HOST, authority)
        .map_err(|_| Refusal::Malformed)?;
    Ok(())
}

/// Whether a raw request target holds bytes node refuses: spaces, controls, non-ASCII.
fn has_bad_bytes(raw: &[u8]) -> bool {
    raw.iter().any(|&b| b <= b' ' || b >= 0x7f)
}

/// The host part of a `Host` header, as CHP takes it (up to the first `:`).
fn routing_host(req: &RequestHeader) -> &str {
    match req
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
    {
        Some(h) => h.split(':').next().unwrap_or_default(),
        None => "undefined",
    }
}

impl HubProxy {
    /// The steps, in order.
    pub(super) async fn decide(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Next, Refusal> {
        if !persistent(session.req_header()) {
            session.set_keepalive(None);
        }
        origin_form(session.req_header_mut())?;
        if let Some(reply) = self.health(session.req_header()) {
            return Ok(Next::Reply(reply));
        }
        well_formed(session.req_header())?;
        self.begin(session, ctx);

        let (path, query) = canonical::split_target(session.req_header().raw_path());
        let canon = canonical::canonicalize(path).map_err(Refusal::BadPath)?;
        let auth = self.shared.auth.load_full();
        if let Some(auth) = &auth {
            if canon.decoded == backchannel::PATH {
                return Ok(Next::Reply(backchannel_logout(auth, session).await));
            }
            if let Some(reply) = own_endpoint(auth, session.req_header(), &canon.decoded).await {
                return Ok(Next::Reply(reply));
            }
            auth.screen_path(session.req_header(), &canon.decoded, ctx.websocket)
                .map_err(Refusal::Denied)?;
        }

        let (found, host_len) = self.match_route(session.req_header(), &canon.decoded);
        ctx.kind = found.as_ref().map(|f| f.route.kind);
        if let Some(auth) = &auth {
            let route = found.as_ref().map(|f| &*f.route);
            ctx.allowed = auth
                .authorize(session.req_header(), &canon.decoded, route, ctx.websocket)
                .await
                .map_err(Refusal::Denied)?;
        }
        let found = found.ok_or(Refusal::NoRoute)?;
        let route = found.route;
        let target = route
            .target
            .as_ref()
            .map_err(|e| Refusal::BadTarget(e.clone()))?;

        let query = query.map(String::from_utf8_lossy);
        let query = match (&auth, query) {
            (Some(auth), Some(q)) => Some(auth.extractor().upstream_query(q)),
            (_, q) => q,
        };
        let forward_path: &str = if self.shared.forwarding.include_prefix {
            &canon.forward
        } else {
            forward::strip_prefix(&canon.forward, found.prefix_len.saturating_sub(host_len))
        };
        let upstream_path = forward::upstream_path(
            target,
            forward_path,
            query.as_deref(),
            self.shared.forwarding.prepend_path,
        );
        debug!(
            "PROXY {} {} to {}",
            if ctx.websocket { "WS" } else { "WEB" },
            canon.forward,
            route.target_str()
        );

        if ctx.websocket {
            return self
                .hand_off_websocket(session, ctx, &route, &upstream_path, auth.as_deref())
                .await;
        }
        ctx.upstream_path = upstream_path;
        ctx.route = Some(route);
        Ok(Next::Proxy)
    }

    /// Step: `/_chp_healthz`, CHP's health check (with authentication on, not ready until every
    /// issuer has keys: fail closed; a route store may report its own state).
    fn health(&self, req: &RequestHeader) -> Option<Reply> {
        if req.raw_path() != b"/_chp_healthz" {
            return None;
        }
        let sh = &self.shared;
        let ready = sh.auth.load().as_ref().is_none_or(|a| a.ready());
        let (status, body) = match (ready, sh.store.health().healthz()) {
            (true, Some((code, body))) => (code, body),
            (true, None) => (200, r#"{"status":"OK"}"#.to_string()),
            (false, _) => (
                503,
                r#"{"status":"not ready","reason":"no signing keys loaded for an identity provider yet"}"#
                    .to_string(),
            ),
        };
        Some(Reply {
            status,
            headers: vec![("Content-Type", "application/json".into())],
            body,
        })
    }

    /// Step: start accounting for a request that will be routed: its clock, the in-flight
    /// count (SIGTERM drains it), web or websocket counters, and the client-side timeouts.
    fn begin(&self, session: &mut Session, ctx: &mut RequestCtx) {
        let sh = &self.shared;
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
            // Only lengthen a keep-alive pingora kept: it turns it off for a request framed
            // by both `Content-Length` and `Transfer-Encoding` (forwarded chunked, but the
            // sender may disagree on where it ended: RFC 9112 §6.1), after removing the
            // `Content-Length`, so that case is only visible here as keep-alive being off.
            if persistent(session.req_header()) && session.get_keepalive().is_some() {
                session.set_keepalive(Some(sh.keepalive_secs));
            }
        }
    }

    /// Step: the route for the canonical path (the longest matching prefix; with
    /// `--host-routing`, keyed by host first). Returns the match and the length of the host
    /// part of the key.
    fn match_route(&self, req: &RequestHeader, decoded: &str) -> (Option<Match>, usize) {
        let sh = &self.shared;
        let started = Instant::now();
        let found = if sh.forwarding.host_routing {
            let host = routing_host(req);
            let key = format!("/{host}{decoded}");
            (sh.table.lookup(&key), host.len() + 1)
        } else {
            (sh.table.lookup(decoded), 0)
        };
        sh.metrics.find_target_for_req.observe(started.elapsed());
        found
    }

    /// Step: a websocket upgrade goes to hubgate's own relay (plain and `https://` targets).
    async fn hand_off_websocket(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        route: &Arc<crate::routes::Route>,
        upstream_path: &str,
        auth: Option<&Auth>,
    ) -> Result<Next, Refusal> {
        let sh = &self.shared;
        let Ok(target) = route.target.as_ref() else {
            return Err(Refusal::NoRoute);
        };
        let edits = headers::build(
            &session.req_header().method,
            &session.req_header().headers,
            &headers::Inputs {
                client_ip: client_ip(session),
                listener_tls: sh.listener_tls,
                websocket: true,
                target,
                forwarding: &sh.forwarding,
                auth,
                allowed: ctx.allowed.as_ref(),
                client_close: false,
            },
        );
        let close_at = match (&ctx.allowed, auth) {
            (Some(a), Some(auth)) if auth.config.close_websockets_on_expiry => Some(a.expires_at),
            _ => None,
        };
        let revocation = match (&ctx.allowed, auth) {
            (Some(a), Some(auth)) => Some(websocket::RevocationWatch {
                list: auth.revocations.clone(),
                identity: a.identity.clone(),
                issuer: auth
                    .issuers
                    .get(a.identity.issuer)
                    .map_or_else(String::new, |i| i.config.issuer.clone()),
            }),
            _ => None,
        };
        let head = edits.head(session.req_header(), upstream_path);
        websocket::proxy(
            sh,
            session,
            websocket::Upgrade {
                route: route.clone(),
                head,
                close_at,
                revocation,
            },
        )
        .await?;
        Ok(Next::HandedOff)
    }
}

/// Step: hubgate's own endpoints (`/_hubgate/…`: login, callback, logout; the back-channel
/// logout, which has a body, is [`backchannel_logout`]).
async fn own_endpoint(auth: &Auth, req: &RequestHeader, decoded: &str) -> Option<Reply> {
    if !decoded.starts_with(crate::auth::login::PREFIX) {
        return None;
    }
    Some(auth.handle_own(req, decoded).await)
}

/// `POST /_hubgate/backchannel-logout`: the body is read here, bounded in size and time.
async fn backchannel_logout(auth: &Auth, session: &mut Session) -> Reply {
    if session.req_header().method != http::Method::POST {
        return Reply::json(405, String::new()).with_header("Allow", "POST".into());
    }
    let read = async {
        let mut body = Vec::new();
        while let Some(chunk) = session.read_request_body().await.ok()? {
            if body.len() + chunk.len() > backchannel::MAX_BODY {
                return Some(Err(()));
            }
            body.extend_from_slice(&chunk);
        }
        Some(Ok(body))
    };
    match tokio::time::timeout(BACKCHANNEL_BODY_TIMEOUT, read).await {
        Ok(Some(Ok(body))) => auth.backchannel_logout(&body).await,
        Ok(Some(Err(()))) => {
            auth.count_denial(crate::auth::Reason::TooLarge);
            Reply::json(413, String::new())
        }
        _ => Reply::json(400, String::new()),
    }
}

/// How long the provider has to send a back-channel logout body.
const BACKCHANNEL_BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    fn req(
        method: &str,
        path: &[u8],
        version: http::Version,
        headers: &[(&str, &str)],
    ) -> RequestHeader {
        let mut r = RequestHeader::build(method, path, None).expect("request");
        r.set_version(version);
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).expect("header");
        }
        r
    }

    #[test]
    fn malformed_requests_are_refused_before_routing() {
        let v11 = http::Version::HTTP_11;
        let ok = req("GET", b"/a", v11, &[("Host", "h")]);
        assert!(well_formed(&ok).is_ok());
        assert!(matches!(
            well_formed(&req("GET", b"/a", v11, &[])),
            Err(Refusal::Malformed)
        ));
        // HTTP/1.0 may omit Host.
        assert!(well_formed(&req("GET", b"/a", http::Version::HTTP_10, &[])).is_ok());
        // (pingora's request builder refuses these bytes, so the check is tested on its own.)
        for bad in [&b"/a b"[..], b"/a\x01", b"/\xc3\xa9", b"/a\x7f"] {
            assert!(has_bad_bytes(bad));
        }
        assert!(!has_bad_bytes(b"/user/a/%20?x=~"));
    }

    #[test]
    fn persistence_follows_the_client() {
        let (v10, v11) = (http::Version::HTTP_10, http::Version::HTTP_11);
        assert!(!persistent(&req("GET", b"/", v10, &[])));
        assert!(persistent(&req(
            "GET",
            b"/",
            v10,
            &[("Connection", "Keep-Alive")]
        )));
        assert!(persistent(&req("GET", b"/", v11, &[])));
        assert!(!persistent(&req(
            "GET",
            b"/",
            v11,
            &[("Connection", "foo, close")]
        )));
    }

    #[test]
    fn absolute_form_targets_become_origin_form() {
        let v11 = http::Version::HTTP_11;
        let mut r = req(
            "GET",
            b"http://Other.example:8000/user/a?x=1",
            v11,
            &[("Host", "h")],
        );
        origin_form(&mut r).expect("accepted");
        assert_eq!(r.raw_path(), b"/user/a?x=1");
        assert_eq!(r.headers["host"], "Other.example:8000");
        let mut r = req("GET", b"HTTPS://h2?q", v11, &[]);
        origin_form(&mut r).expect("accepted");
        assert_eq!(r.raw_path(), b"/?q");
        assert_eq!(r.headers["host"], "h2");
        let mut r = req("GET", b"/plain", v11, &[("Host", "h")]);
        origin_form(&mut r).expect("origin-form untouched");
        assert_eq!(r.raw_path(), b"/plain");
        assert_eq!(r.headers["host"], "h");
        for bad in [&b"http://user@h/"[..], b"http:///x"] {
            let mut r = req("GET", bad, v11, &[]);
            assert!(matches!(origin_form(&mut r), Err(Refusal::Malformed)));
        }
    }

    #[test]
    fn websocket_upgrades_are_gets_with_upgrade_websocket() {
        let v11 = http::Version::HTTP_11;
        assert!(is_websocket_upgrade(&req(
            "GET",
            b"/",
            v11,
            &[("Upgrade", "WebSocket")]
        )));
        assert!(!is_websocket_upgrade(&req(
            "POST",
            b"/",
            v11,
            &[("Upgrade", "websocket")]
        )));
        assert!(!is_websocket_upgrade(&req(
            "GET",
            b"/",
            v11,
            &[("Upgrade", "h2c")]
        )));
        assert!(!is_websocket_upgrade(&req("GET", b"/", v11, &[])));
    }

    #[test]
    fn host_routing_takes_the_name_before_the_port() {
        let v11 = http::Version::HTTP_11;
        assert_eq!(
            routing_host(&req("GET", b"/", v11, &[("Host", "a.example:8000")])),
            "a.example"
        );
        assert_eq!(routing_host(&req("GET", b"/", v11, &[])), "undefined");
    }
}
