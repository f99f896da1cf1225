//! The credential of a request: found in exactly one place (a Bearer `Authorization` value,
//! hubgate's session cookie, or — websocket upgrades only, when configured — a query
//! parameter), and removed from everything that goes upstream. Finding and removing live
//! together so that a new place to carry a credential cannot be read here and forgotten there.

use std::borrow::Cow;

use http::header::{HeaderName, HeaderValue, AUTHORIZATION, COOKIE};
use http::HeaderMap;
use pingora::http::RequestHeader;

use super::session::{self, strip_own_cookies, LOGIN_COOKIE, SESSION_COOKIE};
use super::Reason;
use crate::web::{query_value, strip_query_param};

/// Which credential a request carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialKind {
    Bearer,
    Session,
    Query,
}

/// Where credentials are looked for (from the `[auth]` configuration).
#[derive(Debug, Clone, Copy)]
pub struct Extractor<'c> {
    /// The query parameter that may carry a token on websocket upgrades.
    pub query_param: Option<&'c str>,
}

impl<'c> Extractor<'c> {
    /// The request's one credential, borrowed from the request where it can be (this runs on
    /// every request, and a token is about a kilobyte). `Ok(None)`: no credential.
    pub fn extract<'r>(
        &self,
        req: &'r RequestHeader,
        websocket: bool,
    ) -> Result<Option<(CredentialKind, Cow<'r, str>)>, Reason> {
        let mut found: Option<(CredentialKind, Cow<'r, str>)> = None;
        // The same value sent twice (e.g. Bearer and the query parameter) is one credential;
        // two different ones are refused.
        let mut add = |kind, value: Cow<'r, str>| match &found {
            Some((_, first)) if *first != value => Err(Reason::MultipleCredentials),
            Some(_) => Ok(()),
            None => {
                found = Some((kind, value));
                Ok(())
            }
        };
        for value in req.headers.get_all(AUTHORIZATION) {
            if let Some(token) = bearer_token(value.as_bytes())? {
                add(CredentialKind::Bearer, Cow::Borrowed(token))?;
            }
        }
        let cookies = req
            .headers
            .get_all(COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok());
        for v in session::cookie_value(cookies, SESSION_COOKIE) {
            add(CredentialKind::Session, Cow::Borrowed(v))?;
        }
        if websocket {
            if let Some(param) = self.query_param {
                if let Some(v) = query_value(req.raw_path(), param) {
                    add(CredentialKind::Query, Cow::Owned(v))?;
                }
            }
        }
        Ok(found)
    }

    /// The query to forward, and to put in any URL hubgate builds from the request (the
    /// login `next`): without the credential parameter, on every request — it is read only
    /// from websocket upgrades, but a token in any URL must not reach a user's server, come
    /// back after login, or leak through `Referer`.
    pub fn upstream_query<'q>(&self, query: Cow<'q, str>) -> Cow<'q, str> {
        match self.query_param {
            Some(param) if query_has_param(&query, param) => {
                Cow::Owned(strip_query_param(&query, param))
            }
            _ => query,
        }
    }

    /// A raw request target (`/path?query`) without the credential parameter.
    pub fn strip_target<'t>(&self, target: &'t str) -> Cow<'t, str> {
        match target.split_once('?') {
            Some((path, query)) => match self.upstream_query(Cow::Borrowed(query)) {
                Cow::Borrowed(_) => Cow::Borrowed(target),
                Cow::Owned(q) if q.is_empty() => Cow::Owned(path.to_string()),
                Cow::Owned(q) => Cow::Owned(format!("{path}?{q}")),
            },
            None => Cow::Borrowed(target),
        }
    }
}

/// Whether a query string has a `name=…` (or bare `name`) pair.
fn query_has_param(query: &str, name: &str) -> bool {
    query
        .split('&')
        .any(|pair| pair.split('=').next() == Some(name))
}

/// What of the client's credentials is removed before the request goes upstream: the
/// `Authorization` header when it carried the Bearer credential (unless configured to forward
/// it), and hubgate's own cookies. `set` receives the `Cookie` header to send instead.
pub fn strip_upstream(
    headers: &HeaderMap,
    bearer_used: bool,
    forward_authorization: bool,
    remove: &mut Vec<HeaderName>,
    set: &mut Vec<(HeaderName, HeaderValue)>,
) {
    if bearer_used && !forward_authorization {
        remove.push(AUTHORIZATION);
    }
    let cookies = headers.get_all(COOKIE);
    if !cookies
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|c| c.contains(SESSION_COOKIE) || c.contains(LOGIN_COOKIE))
    {
        return;
    }
    let joined = cookies
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join("; ");
    remove.push(COOKIE);
    if let Some(kept) = strip_own_cookies(&joined) {
        if let Ok(v) = HeaderValue::from_str(&kept) {
            set.push((COOKIE, v));
        }
    }
}

/// The token of one `Authorization` value: `Ok(None)` for another scheme (e.g. JupyterHub's
/// `token …`, which goes through to the hub), `Malformed` for a value that is not visible
/// ASCII (what `HeaderValue::to_str` accepts), `MultipleCredentials` for a Bearer value that
/// holds more than one token.
pub fn bearer_token(value: &[u8]) -> Result<Option<&str>, Reason> {
    // Tokens are about a kilobyte and this runs on every request: each check is one pass
    // without early exit, which the compiler vectorises (`to_str` and `str::contains` with
    // a char pattern were byte and char loops, ~0.9 µs per request together).
    let visible = value.iter().fold(true, |ok, &b| {
        ok & ((0x20..0x7f).contains(&b) | (b == b'\t'))
    });
    if !visible {
        return Err(Reason::Malformed);
    }
    let v = std::str::from_utf8(value)
        .map_err(|_| Reason::Malformed)?
        .trim();
    if v.len() <= 7 || !v.as_bytes()[..7].eq_ignore_ascii_case(b"bearer ") {
        return Ok(None);
    }
    let token = v[7..].trim();
    let separators = token
        .bytes()
        .fold(0u8, |n, b| n | u8::from(b == b',') | u8::from(b == b' '));
    if separators != 0 {
        return Err(Reason::MultipleCredentials);
    }
    Ok(Some(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(path: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", path.as_bytes(), None).expect("request");
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).expect("header");
        }
        r
    }

    const EX: Extractor<'static> = Extractor {
        query_param: Some("hubgate_token"),
    };

    #[test]
    fn bearer_values() {
        assert_eq!(bearer_token(b"Bearer abc.def.ghi"), Ok(Some("abc.def.ghi")));
        assert_eq!(bearer_token(b"  bEaReR \t abc  "), Ok(Some("abc")));
        // Other schemes are not hubgate's credential (JupyterHub API tokens, Basic).
        assert_eq!(bearer_token(b"token abc"), Ok(None));
        assert_eq!(bearer_token(b"Basic YTpi"), Ok(None));
        assert_eq!(bearer_token(b"Bearer"), Ok(None));
        assert_eq!(bearer_token(b"Bearer "), Ok(None));
        assert_eq!(
            bearer_token(b"Bearer a, Bearer b"),
            Err(Reason::MultipleCredentials)
        );
        assert_eq!(
            bearer_token(b"Bearer a b"),
            Err(Reason::MultipleCredentials)
        );
        // Not visible ASCII: refused whatever the scheme, as `HeaderValue::to_str` would.
        assert_eq!(bearer_token(b"Bearer a\x7fb"), Err(Reason::Malformed));
        assert_eq!(
            bearer_token("token \u{e9}".as_bytes()),
            Err(Reason::Malformed)
        );
        assert_eq!(bearer_token(b"Bearer a\x01"), Err(Reason::Malformed));
        // A long token (the vectorised passes run over whole chunks and a tail).
        let long = format!("Bearer {}", "x".repeat(1000));
        assert_eq!(bearer_token(long.as_bytes()), Ok(Some(&long[7..])));
        let sep = format!("Bearer {},y", "x".repeat(1000));
        assert_eq!(
            bearer_token(sep.as_bytes()),
            Err(Reason::MultipleCredentials)
        );
    }

    #[test]
    fn extraction_finds_exactly_one_credential() {
        let got = |r: &RequestHeader, ws| {
            EX.extract(r, ws)
                .map(|c| c.map(|(k, v)| (k, v.into_owned())))
        };
        assert_eq!(got(&req("/a", &[]), false), Ok(None));
        assert_eq!(
            got(&req("/a", &[("Authorization", "Bearer t1")]), false),
            Ok(Some((CredentialKind::Bearer, "t1".into())))
        );
        let cookie = format!("x=1; {SESSION_COOKIE}=s1");
        assert_eq!(
            got(&req("/a", &[("Cookie", &cookie)]), false),
            Ok(Some((CredentialKind::Session, "s1".into())))
        );
        // The query parameter counts on websocket upgrades only.
        assert_eq!(got(&req("/a?hubgate_token=q1", &[]), false), Ok(None));
        assert_eq!(
            got(&req("/a?hubgate_token=q1", &[]), true),
            Ok(Some((CredentialKind::Query, "q1".into())))
        );
        // The same value twice is one credential; two different ones are refused.
        assert_eq!(
            got(
                &req("/a?hubgate_token=t1", &[("Authorization", "Bearer t1")]),
                true
            ),
            Ok(Some((CredentialKind::Bearer, "t1".into())))
        );
        assert_eq!(
            got(
                &req("/a", &[("Authorization", "Bearer t1"), ("Cookie", &cookie)]),
                false
            ),
            Err(Reason::MultipleCredentials)
        );
        assert_eq!(
            got(
                &req(
                    "/a",
                    &[
                        ("Authorization", "Bearer t1"),
                        ("Authorization", "Bearer t2")
                    ]
                ),
                false
            ),
            Err(Reason::MultipleCredentials)
        );
        // Another scheme is not a credential for hubgate.
        assert_eq!(
            got(&req("/a", &[("Authorization", "token hub-api")]), false),
            Ok(None)
        );
    }

    #[test]
    fn the_query_credential_never_travels_upstream() {
        let q = |s: &'static str| EX.upstream_query(Cow::Borrowed(s));
        assert_eq!(q("x=1&hubgate_token=abc&y=2"), "x=1&y=2");
        assert_eq!(q("hubgate_token=abc"), "");
        assert_eq!(q("hubgate_token"), "");
        // Untouched (and not copied) without the parameter; a longer name is another one.
        assert!(matches!(q("x=1&y=2"), Cow::Borrowed("x=1&y=2")));
        assert_eq!(q("hubgate_token2=a"), "hubgate_token2=a");
        let none = Extractor { query_param: None };
        assert_eq!(
            none.upstream_query(Cow::Borrowed("hubgate_token=a")),
            "hubgate_token=a"
        );
        assert_eq!(EX.strip_target("/a/b?hubgate_token=t"), "/a/b");
        assert_eq!(EX.strip_target("/a?x=1&hubgate_token=t"), "/a?x=1");
        assert!(matches!(EX.strip_target("/a?x=1"), Cow::Borrowed("/a?x=1")));
        assert_eq!(EX.strip_target("/a"), "/a");
    }

    #[test]
    fn own_cookies_and_the_bearer_are_stripped() {
        let cookie = format!("a=1; {SESSION_COOKIE}=s; b=2; {LOGIN_COOKIE}=l");
        let r = req("/a", &[("Authorization", "Bearer t"), ("Cookie", &cookie)]);
        let (mut remove, mut set) = (Vec::new(), Vec::new());
        strip_upstream(&r.headers, true, false, &mut remove, &mut set);
        assert_eq!(remove, vec![AUTHORIZATION, COOKIE]);
        assert_eq!(set, vec![(COOKIE, HeaderValue::from_static("a=1; b=2"))]);
        // Forwarding the Bearer on purpose; only hubgate's cookies, so no Cookie at all.
        let only_ours = format!("{SESSION_COOKIE}=s");
        let r = req(
            "/a",
            &[("Authorization", "Bearer t"), ("Cookie", &only_ours)],
        );
        let (mut remove, mut set) = (Vec::new(), Vec::new());
        strip_upstream(&r.headers, true, true, &mut remove, &mut set);
        assert_eq!(remove, vec![COOKIE]);
        assert!(set.is_empty());
        // A session credential leaves Authorization (e.g. a hub API token) alone.
        let r = req("/a", &[("Authorization", "token hub"), ("Cookie", "a=1")]);
        let (mut remove, mut set) = (Vec::new(), Vec::new());
        strip_upstream(&r.headers, false, false, &mut remove, &mut set);
        assert!(remove.is_empty() && set.is_empty());
    }
}
