//! How a request is rewritten on its way to a target, and a redirect on its way back:
//! CHP's include-prefix / prepend-path URL joining, the `X-Forwarded-*` set, custom
//! headers, `--change-origin`, and `--auto-rewrite` / `--protocol-rewrite`.

use std::io::Write;
use std::net::IpAddr;

use http::header::{HeaderName, HeaderValue, HOST};
use http::HeaderMap;

use crate::config::Forwarding;
use crate::net::Target;

/// Strips a matched route prefix from a raw (escaped) path, given the prefix's length in the
/// decoded path. Escapes are walked so that `/user/%61lice/foo` minus `/user/alice` is `/foo`
/// (CHP cuts the raw URL by the decoded length and gets `/ce/foo`).
pub fn strip_prefix(forward: &str, decoded_len: usize) -> &str {
    let bytes = forward.as_bytes();
    let (mut raw, mut dec) = (0, 0);
    while dec < decoded_len && raw < bytes.len() {
        raw += if bytes[raw] == b'%' && raw + 2 < bytes.len() {
            3
        } else {
            1
        };
        dec += 1;
    }
    &forward[raw.min(forward.len())..]
}

/// The path and query to request from the target (http-proxy's `urlJoin` of the target's
/// path and the request's path, query strings merged with `&`).
pub fn upstream_path(
    target: &Target,
    path: &str,
    query: Option<&str>,
    prepend_path: bool,
) -> String {
    let (tpath, tquery) = if prepend_path {
        (target.path.as_str(), target.query.as_str())
    } else {
        ("/", "")
    };
    let mut out = String::with_capacity(
        tpath.len() + path.len() + query.map_or(0, str::len) + tquery.len() + 2,
    );
    out.push_str(tpath);
    if path.is_empty() {
        // The whole path was the stripped prefix: the target's path alone (as CHP sends it).
    } else if out.ends_with('/') {
        out.push_str(path.strip_prefix('/').unwrap_or(path));
    } else if path.starts_with('/') {
        out.push_str(path);
    } else {
        out.push('/');
        out.push_str(path);
    }
    let q = query.filter(|q| !q.is_empty());
    match (tquery.is_empty(), q) {
        (true, None) => {}
        (false, None) => {
            out.push('?');
            out.push_str(tquery);
        }
        (true, Some(q)) => {
            out.push('?');
            out.push_str(q);
        }
        (false, Some(q)) => {
            out.push('?');
            out.push_str(tquery);
            out.push('&');
            out.push_str(q);
        }
    }
    out
}

/// What the proxy knows about the downstream connection, for `X-Forwarded-*`.
pub struct Downstream<'a> {
    /// The client's IP, when it came over TCP.
    pub client_ip: Option<IpAddr>,
    /// Whether the client connection is TLS.
    pub tls: bool,
    /// Whether this is a websocket upgrade (`ws`/`wss`, and no `X-Forwarded-Host`).
    pub websocket: bool,
    /// The target of the matched route.
    pub target: &'a Target,
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// An IP address as a header value, formatted on the stack (one allocation, the value's).
fn ip_value(ip: IpAddr) -> Option<HeaderValue> {
    let mut buf = [0u8; 48];
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    write!(cursor, "{ip}").ok()?;
    let len = usize::try_from(cursor.position()).ok()?;
    HeaderValue::from_bytes(&buf[..len]).ok()
}

/// The value of one `X-Forwarded-*` header: the client's lines of it joined as node joins
/// repeated headers (`", "`), then ours appended with `","` as http-proxy does; `None` when
/// the client sent none and we add nothing.
fn forwarded(
    headers: &HeaderMap,
    name: &HeaderName,
    ours: Option<HeaderValue>,
) -> Option<HeaderValue> {
    let mut lines = headers.get_all(name).iter().filter_map(|v| v.to_str().ok());
    let Some(first) = lines.next() else {
        // The common case: nothing to merge, so no string is built.
        return ours;
    };
    let mut joined = first.to_string();
    for v in lines {
        joined.push_str(", ");
        joined.push_str(v);
    }
    if let Some(ours) = ours.as_ref().and_then(|v| v.to_str().ok()) {
        if !joined.is_empty() {
            joined.push(',');
        }
        joined.push_str(ours);
    }
    HeaderValue::from_str(&joined).ok()
}

/// The request headers to send upstream, computed from the client's headers: the
/// `X-Forwarded-*` set (on by default), then custom headers (which override), then
/// `--change-origin`. Returns the `(name, value)` pairs to set.
pub fn request_headers(
    headers: &HeaderMap,
    down: &Downstream<'_>,
    fwd: &Forwarding,
) -> Vec<(HeaderName, HeaderValue)> {
    let mut out = Vec::with_capacity(5 + fwd.custom_headers.len());
    if fwd.x_forward {
        let host = headers.get(HOST);
        let port = host
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.rsplit_once(':'))
            .map(|(_, p)| p)
            .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|p| HeaderValue::from_str(p).ok())
            .unwrap_or_else(|| HeaderValue::from_static(if down.tls { "443" } else { "80" }));
        let proto = HeaderValue::from_static(match (down.websocket, down.tls) {
            (false, false) => "http",
            (false, true) => "https",
            (true, false) => "ws",
            (true, true) => "wss",
        });
        let ip = down.client_ip.and_then(ip_value);
        for (name, ours) in [
            (X_FORWARDED_FOR, ip),
            (X_FORWARDED_PORT, Some(port)),
            (X_FORWARDED_PROTO, Some(proto)),
        ] {
            if let Some(v) = forwarded(headers, &name, ours) {
                out.push((name, v));
            }
        }
        // The client's X-Forwarded-Host wins; websockets get none of ours (as http-proxy).
        let ours_host = if down.websocket {
            None
        } else {
            Some(host.cloned().unwrap_or(HeaderValue::from_static("")))
        };
        if let Some(v) = forwarded(headers, &X_FORWARDED_HOST, None).or(ours_host) {
            out.push((X_FORWARDED_HOST, v));
        }
    }
    for (name, value) in &fwd.custom_headers {
        out.retain(|(k, _)| k != name);
        out.push((name.clone(), value.clone()));
    }
    if fwd.change_origin {
        if let Ok(v) = HeaderValue::from_str(&down.target.host_header) {
            out.retain(|(k, _)| k != HOST);
            out.push((HOST, v));
        }
    }
    out
}

/// `--auto-rewrite` / `--protocol-rewrite`: the new `Location` for a redirect from `target`,
/// or `None` to leave it alone. Applies to 201/301/302/307/308 whose Location points at the
/// target's own host, like http-proxy's `setRedirectHostRewrite`.
pub fn rewrite_location(
    status: u16,
    location: &str,
    target: &Target,
    request_host: Option<&str>,
    fwd: &Forwarding,
) -> Option<String> {
    if !(fwd.auto_rewrite || fwd.protocol_rewrite.is_some())
        || !matches!(status, 201 | 301 | 302 | 307 | 308)
    {
        return None;
    }
    let (scheme, rest) = location.split_once("://")?;
    let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(auth_end);
    let scheme_lc = scheme.to_ascii_lowercase();
    let default_port = |s: &str| match s {
        "http" | "ws" => Some("80"),
        "https" | "wss" => Some("443"),
        _ => None,
    };
    // Compare as node's URL.host: lower-case, default port dropped.
    let (lhost, lport) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => (h, Some(p)),
        _ => (authority, None),
    };
    let lport = lport.filter(|p| Some(*p) != default_port(&scheme_lc) && !p.is_empty());
    let normalised = match lport {
        Some(p) => format!("{}:{p}", lhost.to_ascii_lowercase()),
        None => lhost.to_ascii_lowercase(),
    };
    if normalised != target.host_header {
        return None;
    }
    let (mut host, mut port) = (lhost.to_string(), lport.map(str::to_string));
    if fwd.auto_rewrite {
        if let Some(rh) = request_host {
            match rh.rsplit_once(':') {
                Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) && !p.is_empty() => {
                    host = h.to_string();
                    port = Some(p.to_string());
                }
                // A Host without a port keeps the Location's port (URL.host setter semantics).
                _ => host = rh.to_string(),
            }
        }
    }
    // As node's URL setters in http-proxy's order: the host is set while the scheme is still
    // the Location's (its default port is dropped then), and the protocol after (the new
    // scheme's default port is dropped too). `Host: name:80` with `--protocol-rewrite https`
    // thus gives `https://name/`.
    let port = port.filter(|p| Some(p.as_str()) != default_port(&scheme_lc));
    let new_scheme = fwd.protocol_rewrite.clone().unwrap_or(scheme_lc);
    let port = port.filter(|p| Some(p.as_str()) != default_port(&new_scheme));
    Some(match port {
        Some(p) => format!("{new_scheme}://{host}:{p}{tail}"),
        None => format!("{new_scheme}://{host}{tail}"),
    })
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// CHP's defaults (`--no-x-forward` off): shared with the header builder's tests.
    pub(in crate::proxy) fn fwd() -> Forwarding {
        Forwarding {
            x_forward: true,
            prepend_path: true,
            include_prefix: true,
            change_origin: false,
            auto_rewrite: false,
            protocol_rewrite: None,
            custom_headers: Vec::new(),
            host_routing: false,
        }
    }

    #[test]
    fn join_paths_like_http_proxy() {
        let t = Target::parse("http://h:1/foo").unwrap();
        assert_eq!(
            upstream_path(&t, "/bar/rest", Some("x=1"), true),
            "/foo/bar/rest?x=1"
        );
        assert_eq!(
            upstream_path(&t, "/bar/rest", Some("x=1"), false),
            "/bar/rest?x=1"
        );
        let root = Target::parse("http://h:1").unwrap();
        assert_eq!(
            upstream_path(&root, "/user/%61lice/x", None, true),
            "/user/%61lice/x"
        );
        let tq = Target::parse("http://h:1/foo/?a=1").unwrap();
        assert_eq!(
            upstream_path(&tq, "/bar", Some("b=2"), true),
            "/foo/bar?a=1&b=2"
        );
        assert_eq!(upstream_path(&root, "", None, true), "/");
        assert_eq!(upstream_path(&t, "", Some("x=1"), true), "/foo?x=1");
    }

    #[test]
    fn strip_decoded_prefix_from_raw_path() {
        assert_eq!(
            strip_prefix("/user/%61lice/foo", "/user/alice".len()),
            "/foo"
        );
        assert_eq!(strip_prefix("/user/alice", "/user/alice".len()), "");
        assert_eq!(strip_prefix("/bar/rest", 4), "/rest");
    }

    #[test]
    fn forwarded_headers_append_without_space() {
        let mut h = HeaderMap::new();
        h.insert(HOST, HeaderValue::from_static("hub.example:8443"));
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        let t = Target::parse("http://127.0.0.1:9").unwrap();
        let down = Downstream {
            client_ip: Some(IpAddr::from([127, 0, 0, 1])),
            tls: false,
            websocket: false,
            target: &t,
        };
        let out = request_headers(&h, &down, &fwd());
        let get = |n: &str| {
            out.iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.to_str().unwrap().to_string())
        };
        assert_eq!(get("x-forwarded-for").as_deref(), Some("1.2.3.4,127.0.0.1"));
        assert_eq!(get("x-forwarded-port").as_deref(), Some("8443"));
        assert_eq!(get("x-forwarded-proto").as_deref(), Some("http"));
        assert_eq!(get("x-forwarded-host").as_deref(), Some("hub.example:8443"));
        let ws = Downstream {
            client_ip: None,
            tls: false,
            websocket: true,
            target: &t,
        };
        let out = request_headers(&HeaderMap::new(), &ws, &fwd());
        assert!(!out.iter().any(|(k, _)| k == "x-forwarded-host"));
        assert!(out
            .iter()
            .any(|(k, v)| k == "x-forwarded-proto" && v == "ws"));
    }

    #[test]
    fn custom_headers_override_xfwd() {
        let mut f = fwd();
        f.custom_headers.push((
            HeaderName::from_static("x-forwarded-proto"),
            HeaderValue::from_static("https"),
        ));
        f.change_origin = true;
        let t = Target::parse("http://127.0.0.1:9").unwrap();
        let down = Downstream {
            client_ip: None,
            tls: false,
            websocket: false,
            target: &t,
        };
        let out = request_headers(&HeaderMap::new(), &down, &f);
        assert!(out
            .iter()
            .any(|(k, v)| k == "x-forwarded-proto" && v == "https"));
        assert!(out.iter().any(|(k, v)| k == HOST && v == "127.0.0.1:9"));
    }

    #[test]
    fn location_rewrites() {
        let t = Target::parse("http://127.0.0.1:19101").unwrap();
        let mut f = fwd();
        f.auto_rewrite = true;
        f.protocol_rewrite = Some("https".into());
        assert_eq!(
            rewrite_location(
                302,
                "http://127.0.0.1:19101/elsewhere",
                &t,
                Some("other.example.org:8443"),
                &f
            )
            .as_deref(),
            Some("https://other.example.org:8443/elsewhere")
        );
        // The Location scheme's default port goes before the protocol changes (as node).
        assert_eq!(
            rewrite_location(302, "http://127.0.0.1:19101/e", &t, Some("h.org:80"), &f).as_deref(),
            Some("https://h.org/e")
        );
        assert_eq!(
            rewrite_location(302, "http://127.0.0.1:19101/e", &t, Some("h.org:443"), &f).as_deref(),
            Some("https://h.org/e")
        );
        assert_eq!(
            rewrite_location(200, "http://127.0.0.1:19101/x", &t, Some("a:1"), &f),
            None
        );
        assert_eq!(
            rewrite_location(302, "http://elsewhere/x", &t, Some("a:1"), &f),
            None
        );
        f.protocol_rewrite = None;
        assert_eq!(
            rewrite_location(301, "http://127.0.0.1:19101/x", &t, Some("hub.org"), &f).as_deref(),
            Some("http://hub.org:19101/x")
        );
    }
}
