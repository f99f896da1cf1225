//! The one upstream header builder, for HTTP requests and websocket upgrades alike. Layers,
//! in order: CHP's `X-Forwarded-*`, custom headers and `--change-origin` (`forward.rs`);
//! the identity boundary (`auth`: client identity headers and the credential removed, the
//! verified identity set); then the differences between the two paths, stated here:
//!
//! | header | HTTP | websocket upgrade |
//! |---|---|---|
//! | `Connection` | `close` if the client said so, else `keep-alive` (as node's client) | the client's (`Upgrade`) |
//! | `Trailer` | removed: pingora re-frames bodies and forwards no trailer fields | kept (an upgrade has no body) |
//! | `Content-Length: 0` | added to a DELETE/OPTIONS without framing (as node) | — (upgrades are GETs) |
//! | `Host` | the target's when the client sent none (HTTP/1.0) | the same |
//!
//! The result is applied to pingora's upstream request (HTTP) or written as the upgrade's
//! request head (websocket, which hubgate sends itself).

use std::net::IpAddr;

use http::header::{HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{HeaderMap, Method};
use pingora::http::RequestHeader;

use super::forward;
use crate::auth::{Allowed, Auth};
use crate::config::Forwarding;
use crate::net::Target;

const TRAILER: HeaderName = HeaderName::from_static("trailer");

/// What the builder needs to know about the request.
pub struct Inputs<'a> {
    /// The client's IP, when it came over TCP.
    pub client_ip: Option<IpAddr>,
    /// Whether the client connection is TLS.
    pub listener_tls: bool,
    /// Whether this is a websocket upgrade.
    pub websocket: bool,
    /// The target of the matched route.
    pub target: &'a Target,
    pub forwarding: &'a Forwarding,
    /// Authentication, when on, and what it allowed (none on public paths).
    pub auth: Option<&'a Auth>,
    pub allowed: Option<&'a Allowed>,
    /// Whether the client asked to close (`Connection: close`). Read from the client's own
    /// request: pingora's upstream copy has its hop-by-hop headers removed already.
    pub client_close: bool,
}

/// pingora's title case for the standard names it knows (`case_header_name.rs` in
/// pingora-http); every other name it writes lowercase.
fn titled(name: &HeaderName) -> Option<&'static str> {
    use http::header::*;
    Some(match *name {
        ACCEPT_RANGES => "Accept-Ranges",
        AGE => "Age",
        CACHE_CONTROL => "Cache-Control",
        CONNECTION => "Connection",
        CONTENT_TYPE => "Content-Type",
        CONTENT_ENCODING => "Content-Encoding",
        CONTENT_LENGTH => "Content-Length",
        DATE => "Date",
        TRANSFER_ENCODING => "Transfer-Encoding",
        HOST => "Host",
        SERVER => "Server",
        SET_COOKIE => "Set-Cookie",
        _ => return None,
    })
}

/// How pingora spells a header name it sets (the direct path writes set fields this way, so
/// its wire matches pingora's: docs/direct-path.md).
pub fn spelling(name: &HeaderName) -> &str {
    titled(name).unwrap_or(name.as_str())
}

/// How the names hubgate sets itself are written upstream by [`UpstreamHeaders::apply`]: as
/// pingora writes them by default, so the wire is unchanged; `None` for a name pingora must
/// spell itself (a custom header: nothing static to point at).
fn wire_spelling(name: &HeaderName) -> Option<&'static str> {
    const LOWERCASE: [&str; 7] = [
        "x-forwarded-for",
        "x-forwarded-port",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-auth-request-user",
        "x-auth-request-email",
        "x-auth-request-groups",
    ];
    titled(name).or_else(|| LOWERCASE.into_iter().find(|n| *n == name.as_str()))
}

/// Whether a request's `Connection` header is `close`.
pub fn wants_close(headers: &HeaderMap) -> bool {
    headers
        .get(CONNECTION)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"))
}

/// The edits to the client's headers for the upstream request.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct UpstreamHeaders {
    /// Client headers not to forward.
    pub remove: Vec<HeaderName>,
    /// Headers to set (each replaces any of the same name), in order.
    pub set: Vec<(HeaderName, HeaderValue)>,
}

/// Builds the upstream edits for a request with `method` and client `headers`.
pub fn build(method: &Method, headers: &HeaderMap, i: &Inputs<'_>) -> UpstreamHeaders {
    let down = forward::Downstream {
        client_ip: i.client_ip,
        tls: i.listener_tls,
        websocket: i.websocket,
        target: i.target,
    };
    let mut set = forward::request_headers(headers, &down, i.forwarding);
    let mut remove = match i.auth {
        Some(auth) => auth.upstream_edits(headers, i.allowed, &mut set),
        None => Vec::new(),
    };
    if !headers.contains_key(HOST) && !set.iter().any(|(k, _)| k == HOST) {
        // HTTP/1.0 clients may omit Host; node's client then sends the target's.
        if let Ok(v) = HeaderValue::from_str(&i.target.host_header) {
            set.push((HOST, v));
        }
    }
    if i.websocket {
        return UpstreamHeaders { remove, set };
    }
    // Only when sent: removing an absent name still hashes it, and pushing it would allocate
    // the removal list on every request.
    if headers.contains_key(TRAILER) {
        remove.push(TRAILER);
    }
    // As node's client does: the client's `close` is passed on, otherwise keep-alive.
    set.push((
        CONNECTION,
        HeaderValue::from_static(if i.client_close {
            "close"
        } else {
            "keep-alive"
        }),
    ));
    if (method == Method::DELETE || method == Method::OPTIONS)
        && !headers.contains_key(CONTENT_LENGTH)
        && !headers.contains_key(TRANSFER_ENCODING)
    {
        set.push((CONTENT_LENGTH, HeaderValue::from_static("0")));
    }
    UpstreamHeaders { remove, set }
}

impl UpstreamHeaders {
    /// Applies the edits to pingora's upstream request (HTTP path).
    pub fn apply(self, upstream: &mut RequestHeader) -> pingora::Result<()> {
        for name in &self.remove {
            upstream.remove_header(name);
        }
        // pingora parses a request with room for exactly its own headers: reserve once rather
        // than grow both maps at every insert, and insert the names hubgate always sets under
        // their fixed spelling, so nothing is parsed or copied (the vendored pingora-http
        // patch, docs/pingora-patches.md; 11 allocations per request fewer).
        upstream.reserve(self.set.len());
        for (name, value) in self.set {
            match wire_spelling(&name) {
                Some(spelling) => upstream.insert_header_spelled(name, spelling, value),
                None => upstream.insert_header(name, value)?,
            }
        }
        Ok(())
    }

    /// The upgrade request head as it goes to the target (websocket path): the client's
    /// headers in their order, less the removed and the replaced ones, then the set ones.
    pub fn head(&self, req: &RequestHeader, upstream_path: &str) -> Vec<u8> {
        let mut head = Vec::with_capacity(1024);
        head.extend_from_slice(req.method.as_str().as_bytes());
        head.push(b' ');
        head.extend_from_slice(upstream_path.as_bytes());
        head.extend_from_slice(b" HTTP/1.1\r\n");
        let mut line = |name: &HeaderName, value: &HeaderValue| {
            head.extend_from_slice(name.as_str().as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(value.as_bytes());
            head.extend_from_slice(b"\r\n");
        };
        for (name, value) in req.headers.iter() {
            if self.set.iter().any(|(n, _)| n == name) || self.remove.contains(name) {
                continue;
            }
            line(name, value);
        }
        for (name, value) in &self.set {
            line(name, value);
        }
        head.extend_from_slice(b"\r\n");
        head
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::proxy::forward::tests::fwd;

    fn forwarding(x_forward: bool) -> Forwarding {
        Forwarding { x_forward, ..fwd() }
    }

    fn req(method: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build(method, b"/user/a/x", None).expect("request");
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).expect("header");
        }
        r
    }

    fn inputs<'a>(target: &'a Target, f: &'a Forwarding, websocket: bool) -> Inputs<'a> {
        Inputs {
            client_ip: Some("192.0.2.7".parse().expect("ip")),
            listener_tls: false,
            websocket,
            target,
            forwarding: f,
            auth: None,
            allowed: None,
            client_close: wants_close(&HeaderMap::new()),
        }
    }

    fn names(h: &UpstreamHeaders) -> Vec<&str> {
        h.set.iter().map(|(k, _)| k.as_str()).collect()
    }

    #[test]
    fn http_requests_get_connection_and_lose_trailer() {
        let t = Target::parse("http://127.0.0.1:9000").expect("target");
        let f = fwd();
        let r = req(
            "GET",
            &[("Host", "hub"), ("Trailer", "x"), ("Connection", "close")],
        );
        let i = Inputs {
            client_close: wants_close(&r.headers),
            ..inputs(&t, &f, false)
        };
        let h = build(&r.method, &r.headers, &i);
        assert!(h.remove.contains(&TRAILER));
        assert_eq!(
            h.set.iter().find(|(k, _)| k == CONNECTION).map(|(_, v)| v),
            Some(&HeaderValue::from_static("close"))
        );
        assert_eq!(
            names(&h),
            [
                "x-forwarded-for",
                "x-forwarded-port",
                "x-forwarded-proto",
                "x-forwarded-host",
                "connection"
            ]
        );
        let r = req("DELETE", &[("Host", "hub")]);
        let h = build(&r.method, &r.headers, &inputs(&t, &f, false));
        assert!(h
            .set
            .contains(&(CONTENT_LENGTH, HeaderValue::from_static("0"))));
        assert!(h
            .set
            .contains(&(CONNECTION, HeaderValue::from_static("keep-alive"))));
    }

    #[test]
    fn websocket_upgrades_keep_the_clients_connection() {
        let t = Target::parse("http://127.0.0.1:9000").expect("target");
        let f = fwd();
        let r = req(
            "GET",
            &[
                ("Host", "hub"),
                ("Connection", "Upgrade"),
                ("Upgrade", "websocket"),
            ],
        );
        let h = build(&r.method, &r.headers, &inputs(&t, &f, true));
        assert!(h.remove.is_empty());
        assert_eq!(
            names(&h),
            ["x-forwarded-for", "x-forwarded-port", "x-forwarded-proto"]
        );
        let head = String::from_utf8(h.head(&r, "/x?y=1")).expect("utf-8");
        assert!(head.starts_with("GET /x?y=1 HTTP/1.1\r\n"));
        assert!(head.contains("connection: Upgrade\r\n"));
        assert!(head.contains("x-forwarded-proto: ws\r\n"));
        assert!(head.ends_with("\r\n\r\n"));
    }

    #[test]
    fn host_falls_back_to_the_targets_on_both_paths() {
        let t = Target::parse("http://node7:8888/").expect("target");
        let f = forwarding(false);
        for ws in [false, true] {
            let r = req("GET", &[]);
            let h = build(&r.method, &r.headers, &inputs(&t, &f, ws));
            assert!(h
                .set
                .contains(&(HOST, HeaderValue::from_static("node7:8888"))));
        }
        // The client's Host is forwarded as it is.
        let r = req("GET", &[("Host", "hub.example.org")]);
        let h = build(&r.method, &r.headers, &inputs(&t, &f, false));
        assert!(!h.set.iter().any(|(k, _)| k == HOST));
    }

    #[test]
    fn applying_replaces_and_removes() {
        let t = Target::parse("http://127.0.0.1:9000").expect("target");
        let f = fwd();
        let mut r = req(
            "GET",
            &[
                ("Host", "hub"),
                ("X-Forwarded-Proto", "evil"),
                ("Trailer", "x"),
            ],
        );
        let h = build(&r.method, &r.headers, &inputs(&t, &f, false));
        h.apply(&mut r).expect("applied");
        assert!(r.headers.get("trailer").is_none());
        // Appended to the client's, as http-proxy does.
        assert_eq!(
            r.headers.get("x-forwarded-proto").map(|v| v.as_bytes()),
            Some(&b"evil,http"[..])
        );
        assert_eq!(r.headers.get_all("x-forwarded-proto").iter().count(), 1);
    }
}
