//! Which requests the direct path takes: decided from the parsed head alone, before anything
//! happens (docs/direct-path.md, "What it takes").

use http::Method;

/// Request header fields that send a request to pingora's path: message framing, upgrades,
/// expectations and hop-by-hop fields pingora removes or acts on (see docs/direct-path.md).
const NOT_DIRECT: [&str; 11] = [
    "content-length",
    "transfer-encoding",
    "upgrade",
    "expect",
    "te",
    "trailer",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "http2-settings",
];

/// A request the direct path takes: what [`take`] found in its head.
pub(super) struct Taken<'r> {
    pub method: Method,
    pub path: &'r [u8],
    /// The client asked to close after this request.
    pub close: bool,
    pub host: Option<&'r [u8]>,
}

/// Decides from a parsed head whether the direct path takes the request: a GET or HEAD over
/// HTTP/1.1 with one `Host`, an origin-form target of printable ASCII, no body, no upgrade, no
/// expectation, and `Connection` at most `keep-alive` or `close`. Pure: nothing is counted or
/// logged, so a request not taken goes to pingora as if the direct path did not exist.
pub(super) fn take<'r>(req: &httparse::Request<'_, 'r>) -> Option<Taken<'r>> {
    let method = match req.method? {
        "GET" => Method::GET,
        "HEAD" => Method::HEAD,
        _ => return None,
    };
    if req.version != Some(1) {
        return None;
    }
    let path = req.path?.as_bytes();
    if path.first() != Some(&b'/') || path.iter().any(|&b| b <= b' ' || b >= 0x7f) {
        return None;
    }
    if path == b"/_chp_healthz" {
        return None;
    }
    let (mut host, mut hosts, mut close, mut connections) = (None, 0, false, 0);
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("host") {
            hosts += 1;
            host = Some(h.value);
        } else if name.eq_ignore_ascii_case("connection") {
            connections += 1;
            let v = h.value.trim_ascii();
            if v.eq_ignore_ascii_case(b"close") {
                close = true;
            } else if !v.eq_ignore_ascii_case(b"keep-alive") {
                return None;
            }
        } else if NOT_DIRECT.iter().any(|n| name.eq_ignore_ascii_case(n)) {
            return None;
        }
    }
    if hosts != 1 || connections > 1 || host.is_some_and(|h| h.contains(&b'@') || h.is_empty()) {
        return None;
    }
    Some(Taken {
        method,
        path,
        close,
        host,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_take(head: &[u8]) -> Option<(Method, Vec<u8>, bool)> {
        let mut hs = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut hs);
        assert!(matches!(req.parse(head), Ok(httparse::Status::Complete(_))));
        take(&req).map(|t| (t.method, t.path.to_vec(), t.close))
    }

    #[test]
    fn only_plain_gets_and_heads_are_taken() {
        let ok = parse_take(b"GET /user/a/x?y=1 HTTP/1.1\r\nHost: h\r\nAccept: */*\r\n\r\n");
        assert_eq!(ok, Some((Method::GET, b"/user/a/x?y=1".to_vec(), false)));
        let close = parse_take(b"HEAD / HTTP/1.1\r\nHost: h\r\nConnection: Close\r\n\r\n");
        assert_eq!(close, Some((Method::HEAD, b"/".to_vec(), true)));
        for not in [
            &b"POST / HTTP/1.1\r\nHost: h\r\n\r\n"[..],
            b"GET / HTTP/1.0\r\nHost: h\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: u@h\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, x-secret\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\nConnection: close\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nTE: trailers\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nProxy-Connection: keep-alive\r\n\r\n",
            b"GET http://h/ HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET * HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET /_chp_healthz HTTP/1.1\r\nHost: h\r\n\r\n",
        ] {
            assert_eq!(parse_take(not), None, "{}", String::from_utf8_lossy(not));
        }
    }
}
