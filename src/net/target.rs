//! Parsing of route targets (`http://host:port/path`, `https://…`, `http+unix://…`).
//!
//! CHP accepts any string as a target at POST time and fails at request time with a 500,
//! so a target that does not parse is stored as an error and reported per request.

use std::net::{IpAddr, SocketAddr};

use percent_encoding::percent_decode_str;
use thiserror::Error;

/// Why a route's target cannot be proxied to.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum TargetError {
    /// The string has no `scheme://` part.
    #[error("target {0:?} is not a URL")]
    NotAUrl(String),
    /// The scheme is not one hubgate can proxy to.
    #[error("unsupported target protocol {0:?} (use http, https or http+unix)")]
    Scheme(String),
    /// The authority has no host or a bad port.
    #[error("target {0:?} has an invalid host or port")]
    Authority(String),
    /// The URL has `user:password@`: hubgate would drop it, so the target would not get it.
    #[error(
        "target {0:?} has credentials (user@ or user:password@), which are never sent: remove them"
    )]
    UserInfo(String),
    /// The URL has spaces or control characters.
    #[error("target {0:?} has spaces or control characters")]
    Characters(String),
}

/// Where a target's connections go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetAddr {
    /// An IP literal: no DNS needed.
    Ip(SocketAddr),
    /// A host name, resolved at request time (and cached by the proxy).
    Name { host: String, port: u16 },
    /// A unix socket path (`http+unix://%2Fpath%2Fto%2Fsock`).
    Unix(String),
}

/// A parsed route target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `true` for `https://` targets.
    pub tls: bool,
    /// The address to connect to.
    pub addr: TargetAddr,
    /// The host name used for TLS SNI (empty for unix sockets).
    pub sni: String,
    /// The authority as node's `URL.host` renders it: host, plus `:port` when not the default.
    pub host_header: String,
    /// The target's path (without query), `/` when empty.
    pub path: String,
    /// The target's query, without `?`, empty when absent.
    pub query: String,
}

impl Target {
    /// Parses a target given to the route API: what [`Target::parse`] accepts, less what
    /// could never work as written (spaces and control characters, credentials in the URL).
    /// Routes already stored (e.g. in Redis by an older version) keep the lenient parse.
    pub fn parse_new(s: &str) -> Result<Target, TargetError> {
        if s.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(TargetError::Characters(s.to_string()));
        }
        let target = Target::parse(s)?;
        let rest = s.split_once("://").map_or("", |(_, r)| r);
        let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
        if authority.contains('@') {
            return Err(TargetError::UserInfo(s.to_string()));
        }
        Ok(target)
    }

    /// Parses a target URL the way CHP's `new URL(target)` would, for the schemes we proxy to.
    pub fn parse(s: &str) -> Result<Target, TargetError> {
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| TargetError::NotAUrl(s.to_string()))?;
        let scheme_lc = scheme.to_ascii_lowercase();
        let (tls, unix) = match scheme_lc.as_str() {
            "http" => (false, false),
            "https" => (true, false),
            "http+unix" | "unix+http" => (false, true),
            "" => return Err(TargetError::NotAUrl(s.to_string())),
            _ => return Err(TargetError::Scheme(format!("{scheme_lc}:"))),
        };
        // Fragment is never sent; split off path and query.
        let rest = rest.split_once('#').map_or(rest, |(a, _)| a);
        let auth_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path_query) = rest.split_at(auth_end);
        let (path, query) = match path_query.split_once('?') {
            Some((p, q)) => (p, q),
            None => (path_query, ""),
        };
        let path = if path.is_empty() { "/" } else { path };
        let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        if authority.is_empty() {
            return Err(TargetError::Authority(s.to_string()));
        }

        if unix {
            let socket = percent_decode_str(authority)
                .decode_utf8()
                .map_err(|_| TargetError::Authority(s.to_string()))?
                .into_owned();
            return Ok(Target {
                tls,
                addr: TargetAddr::Unix(socket),
                sni: String::new(),
                host_header: authority.to_string(),
                path: path.to_string(),
                query: query.to_string(),
            });
        }

        let default_port = if tls { 443 } else { 80 };
        let (host, port_str) =
            split_host_port(authority).ok_or_else(|| TargetError::Authority(s.to_string()))?;
        let port = match port_str {
            None | Some("") => default_port,
            Some(p) => p
                .parse::<u16>()
                .map_err(|_| TargetError::Authority(s.to_string()))?,
        };
        if !valid_host(host) {
            return Err(TargetError::Authority(s.to_string()));
        }
        let host_lc = host.to_ascii_lowercase();
        let bare = host_lc.trim_start_matches('[').trim_end_matches(']');
        let addr = match bare.parse::<IpAddr>() {
            Ok(ip) => TargetAddr::Ip(SocketAddr::new(ip, port)),
            Err(_) => TargetAddr::Name {
                host: bare.to_string(),
                port,
            },
        };
        let host_header = if port == default_port {
            host_lc.clone()
        } else {
            // Sized exactly: a route keeps this string for its whole life, and `format!`'s
            // growth would leave it in the next larger allocation (8 bytes more per route).
            let port = port.to_string();
            let mut h = String::with_capacity(host_lc.len() + 1 + port.len());
            h.push_str(&host_lc);
            h.push(':');
            h.push_str(&port);
            h
        };
        Ok(Target {
            tls,
            addr,
            sni: bare.to_string(),
            host_header,
            path: path.to_string(),
            query: query.to_string(),
        })
    }
}

/// Splits `host[:port]` or `[v6][:port]`.
/// A host hubgate can connect to and name in `Host`: a bracketed IPv6 literal, or a name or
/// IPv4 address of letters, digits, `.`, `-`, `_` and `~` (what JupyterHub puts in targets:
/// IPs, node and service names). Anything else — brackets out of place, spaces, non-ASCII,
/// other punctuation — is refused at the route API rather than read one way now and another
/// way later (the `target` fuzz target found both kinds).
fn valid_host(host: &str) -> bool {
    match host.strip_prefix('[') {
        Some(rest) => rest
            .strip_suffix(']')
            .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok()),
        None => {
            !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'~'))
        }
    }
}

fn split_host_port(authority: &str) -> Option<(&str, Option<&str>)> {
    if authority.starts_with('[') {
        let close = authority.find(']')?;
        let host = &authority[..=close];
        let rest = &authority[close + 1..];
        match rest.strip_prefix(':') {
            Some(port) => Some((host, Some(port))),
            None if rest.is_empty() => Some((host, None)),
            None => None,
        }
    } else {
        match authority.rsplit_once(':') {
            // Only a bracketed IPv6 literal may hold a colon: `host::` or an unbracketed
            // `::1:8080` named a host that a second parse read differently (found by the
            // `target` fuzz target). node's URL parser, hence CHP, refuses them too.
            Some((h, _)) if h.contains(':') => None,
            Some((h, p)) => Some((h, Some(p))),
            None => Some((authority, None)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_target() {
        let t = Target::parse("http://127.0.0.1:8081").unwrap();
        assert_eq!(t.addr, TargetAddr::Ip("127.0.0.1:8081".parse().unwrap()));
        assert_eq!(t.host_header, "127.0.0.1:8081");
        assert_eq!(t.path, "/");
        assert!(!t.tls);
    }

    #[test]
    fn name_target_with_path_and_query() {
        let t = Target::parse("https://cn0421.cluster/prefix?a=1").unwrap();
        assert_eq!(
            t.addr,
            TargetAddr::Name {
                host: "cn0421.cluster".into(),
                port: 443
            }
        );
        assert_eq!(t.host_header, "cn0421.cluster");
        assert_eq!(t.path, "/prefix");
        assert_eq!(t.query, "a=1");
        assert!(t.tls);
    }

    #[test]
    fn ipv6_and_unix() {
        let t = Target::parse("http://[::1]:9000/x").unwrap();
        assert_eq!(t.addr, TargetAddr::Ip("[::1]:9000".parse().unwrap()));
        let u = Target::parse("http+unix://%2Ftmp%2Fhub.sock/base").unwrap();
        assert_eq!(u.addr, TargetAddr::Unix("/tmp/hub.sock".into()));
        assert_eq!(u.path, "/base");
    }

    #[test]
    fn new_targets_are_checked_strictly() {
        for ok in [
            "http://127.0.0.1:8888",
            "https://node-7.cluster:48231/user/a/?x=1",
            "http+unix://%2Frun%2Fjupyter%2Fa.sock/",
            "http://[::1]:9000/",
        ] {
            assert!(Target::parse_new(ok).is_ok(), "{ok}");
        }
        let err = |s: &str| Target::parse_new(s).expect_err(s);
        assert!(matches!(
            err("http://u:p@host:80/"),
            TargetError::UserInfo(_)
        ));
        assert!(matches!(err("http://u@host/"), TargetError::UserInfo(_)));
        assert!(matches!(err("not a url"), TargetError::Characters(_)));
        assert!(matches!(err("http://a\tb/"), TargetError::Characters(_)));
        assert!(matches!(err("file:///etc/passwd"), TargetError::Scheme(_)));
        assert!(matches!(err("ftp://127.0.0.1/x"), TargetError::Scheme(_)));
        assert!(matches!(err("127.0.0.1:8000"), TargetError::NotAUrl(_)));
        assert!(matches!(err("http://:80/"), TargetError::Authority(_)));
        // A stored route keeps the lenient parse (credentials dropped, as before).
        assert!(Target::parse("http://u:p@host:80/").is_ok());
        // An @ after the authority is part of the path, not credentials.
        assert!(Target::parse_new("http://host/a@b").is_ok());
    }

    #[test]
    fn bad_targets() {
        assert!(matches!(
            Target::parse("not a url"),
            Err(TargetError::NotAUrl(_))
        ));
        assert!(matches!(
            Target::parse("ftp://x/"),
            Err(TargetError::Scheme(_))
        ));
        assert!(matches!(
            Target::parse("http://h:99999"),
            Err(TargetError::Authority(_))
        ));
        assert!(matches!(
            Target::parse("http:///x"),
            Err(TargetError::Authority(_))
        ));
        // fuzz/regressions/target-colon-in-host: a colon in an unbracketed host.
        for bad in [
            "http://host:://host:99999999",
            "http://host::80/",
            "http://::1:8080/",
        ] {
            assert!(
                matches!(Target::parse(bad), Err(TargetError::Authority(_))),
                "{bad}"
            );
        }
        assert!(Target::parse("http://[::1]:8080/").is_ok());
        // fuzz/regressions/target-bracket-in-host, and other hosts nobody can connect to.
        for bad in [
            "https://]\u{200e}l=hts/:p/t",
            "http://[nothex]:80/",
            "http://a b/",
            "http://h\u{e9}te/",
            "http://x]:80/",
        ] {
            assert!(
                matches!(Target::parse(bad), Err(TargetError::Authority(_))),
                "{bad}"
            );
        }
        for good in [
            "http://jupyter-alice:8888/user/alice/",
            "http://cn0421.cluster.example.org:45123",
            "https://10.0.3.7:8443/",
            "http://hub_internal:8081",
        ] {
            assert!(Target::parse(good).is_ok(), "{good}");
        }
    }
}
