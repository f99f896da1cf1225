//! The identity boundary toward user servers, set and stripped in one place: client-sent
//! identity headers are removed (they are hubgate's to assert), the verified identity is set,
//! the credential is removed (through [`super::credential`]), and on the way back a user's
//! server cannot set hubgate's own cookies.

use http::header::{HeaderName, HeaderValue, SET_COOKIE};
use http::HeaderMap;
use pingora::http::ResponseHeader;

use super::credential::{self, CredentialKind};
use super::session::{LOGIN_COOKIE, SESSION_COOKIE};
use super::{Allowed, Auth};

/// Identity headers a client must not be able to set (they are hubgate's to assert).
pub const IDENTITY_HEADERS: [&str; 11] = [
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

/// Client-sent forwarding headers that are removed when authentication is on: hubgate never
/// sets them, and a user's server would build its URLs (redirects, links) from a stranger's
/// value. (`X-Forwarded-Host` is kept as CHP keeps it: a load balancer in front of hubgate
/// sets it; see docs/security.md, "What is stripped and what is forwarded".)
pub const UNTRUSTED_FORWARDING: [&str; 1] = ["x-forwarded-prefix"];

/// Whether two lowercase header names are the same once `_` and `-` are taken as equal: WSGI,
/// CGI, PHP and Rails fold both into one variable (`HTTP_X_REMOTE_USER`), so a client's
/// `X_Remote_User` would reach a user's server as the identity header itself.
fn same_folded(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .all(|(x, y)| x == y || (matches!(x, b'-' | b'_') && matches!(y, b'-' | b'_')))
}

/// Whether a client header must not reach a user's server with authentication on: an identity
/// header or an untrusted forwarding header, in any spelling a backend folds into it.
pub fn is_stripped_header(name: &str) -> bool {
    IDENTITY_HEADERS
        .iter()
        .chain(UNTRUSTED_FORWARDING.iter())
        .any(|h| same_folded(name, h))
}

impl Auth {
    /// The upstream edits for a request with these headers: inbound identity headers and the
    /// credential removed, the identity of `allowed` (none on public paths) set. Headers in
    /// `set` from other layers that collide with identity headers are dropped from it.
    pub fn upstream_edits(
        &self,
        headers: &HeaderMap,
        allowed: Option<&Allowed>,
        set: &mut Vec<(HeaderName, HeaderValue)>,
    ) -> Vec<HeaderName> {
        // Only the names the client actually sent (removing an absent name still hashes it in
        // two maps: ~7,000 instructions per request for eleven names), in every spelling.
        let mut remove: Vec<HeaderName> = headers
            .keys()
            .filter(|k| is_stripped_header(k.as_str()))
            .cloned()
            .collect();
        set.retain(|(k, _)| !IDENTITY_HEADERS.contains(&k.as_str()));
        if let Some(allowed) = allowed {
            let id = &allowed.identity;
            let mut push = |name: &'static str, value: &str| {
                if let Ok(v) = HeaderValue::from_str(value) {
                    set.push((HeaderName::from_static(name), v));
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
        let bearer = allowed.is_some_and(|a| a.kind == CredentialKind::Bearer);
        credential::strip_upstream(
            headers,
            bearer,
            self.config.forward_authorization,
            &mut remove,
            set,
        );
        remove
    }
}

/// Whether a `Set-Cookie` value sets one of hubgate's own cookies.
pub fn sets_own_cookie(value: &[u8]) -> bool {
    let name = value.split(|&b| b == b'=').next().unwrap_or_default();
    let name = name.trim_ascii();
    name == SESSION_COOKIE.as_bytes() || name == LOGIN_COOKIE.as_bytes()
}

/// Removes `Set-Cookie` headers from a target that would set hubgate's own cookies (a user's
/// server must not be able to plant or clear the session).
pub fn drop_own_set_cookies(resp: &mut ResponseHeader) -> pingora::Result<()> {
    let own = |v: &HeaderValue| sets_own_cookie(v.as_bytes());
    if !resp.headers.get_all(SET_COOKIE).iter().any(own) {
        return Ok(());
    }
    let kept: Vec<HeaderValue> = resp
        .headers
        .get_all(SET_COOKIE)
        .iter()
        .filter(|v| !own(v))
        .cloned()
        .collect();
    resp.remove_header(&SET_COOKIE);
    for v in kept {
        resp.append_header(SET_COOKIE, v)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::auth::test_support::auth_with;
    use crate::auth::Identity;

    fn allowed(kind: CredentialKind) -> Allowed {
        Allowed {
            identity: Arc::new(Identity {
                user: "alice".into(),
                email: Some("alice@example.org".into()),
                groups: vec!["g1".into(), "g2".into()],
                admin: false,
                issuer: 0,
                issued_at: None,
                sid: None,
                idp_sid: None,
                idp_sub: None,
            }),
            expires_at: 0,
            kind,
            why: "owner",
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    #[test]
    fn client_identity_is_replaced_by_the_verified_one() {
        let auth = auth_with("");
        let h = headers(&[
            ("X-Auth-Request-User", "mallory"),
            ("Remote-User", "mallory"),
            ("Authorization", "Bearer tok"),
            ("X-Other", "kept"),
        ]);
        // Another layer (custom headers) tried to set an identity header: dropped.
        let mut set = vec![(
            HeaderName::from_static("x-forwarded-user"),
            HeaderValue::from_static("custom"),
        )];
        let a = allowed(CredentialKind::Bearer);
        let remove = auth.upstream_edits(&h, Some(&a), &mut set);
        let names: Vec<&str> = remove.iter().map(|n| n.as_str()).collect();
        assert_eq!(
            names,
            ["x-auth-request-user", "remote-user", "authorization"]
        );
        let got: Vec<(&str, &str)> = set
            .iter()
            .map(|(k, v)| (k.as_str(), v.to_str().expect("ascii")))
            .collect();
        assert_eq!(
            got,
            [
                ("x-auth-request-user", "alice"),
                ("x-auth-request-email", "alice@example.org"),
                ("x-auth-request-groups", "g1,g2"),
            ]
        );
    }

    #[test]
    fn identity_headers_are_stripped_in_every_spelling() {
        let auth = auth_with("");
        let h = headers(&[
            ("X_Remote_User", "mallory"),
            ("x-auth-request_user", "mallory"),
            ("REMOTE_USER", "mallory"),
            ("X-Forwarded-Prefix", "/evil"),
            ("X_Forwarded_Prefix", "/evil"),
            ("X-Forwarded-Host", "lb.example.org"),
            ("X-Remote-Users", "kept: another name"),
            ("X-Remote", "kept"),
        ]);
        let mut set = Vec::new();
        let a = allowed(CredentialKind::Session);
        let remove = auth.upstream_edits(&h, Some(&a), &mut set);
        let mut names: Vec<&str> = remove.iter().map(|n| n.as_str()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "remote_user",
                "x-auth-request_user",
                "x-forwarded-prefix",
                "x_forwarded_prefix",
                "x_remote_user"
            ]
        );
        assert!(is_stripped_header("x-forwarded_user"));
        assert!(!is_stripped_header("x-forwarded-host"));
        assert!(!is_stripped_header("x-forwarded-for"));
        assert!(!is_stripped_header("remote-user2"));
    }

    #[test]
    fn public_paths_get_no_identity_but_lose_spoofed_headers() {
        let auth = auth_with("");
        let h = headers(&[
            ("X-Forwarded-User", "mallory"),
            ("Authorization", "Bearer t"),
        ]);
        let mut set = Vec::new();
        let remove = auth.upstream_edits(&h, None, &mut set);
        // No credential was used, so Authorization is not ours to remove.
        assert_eq!(remove, vec![HeaderName::from_static("x-forwarded-user")]);
        assert!(set.is_empty());
    }

    #[test]
    fn forward_authorization_keeps_the_bearer() {
        let auth = auth_with("forward-authorization = true\n");
        let h = headers(&[("Authorization", "Bearer tok")]);
        let mut set = Vec::new();
        let remove = auth.upstream_edits(&h, Some(&allowed(CredentialKind::Bearer)), &mut set);
        assert!(remove.is_empty());
        // A session-cookie credential never removes Authorization.
        let remove = auth.upstream_edits(&h, Some(&allowed(CredentialKind::Session)), &mut set);
        assert!(remove.is_empty());
    }

    #[test]
    fn targets_cannot_set_hubgate_cookies() {
        let mut resp = ResponseHeader::build(200, None).expect("response");
        resp.append_header("Set-Cookie", format!("{SESSION_COOKIE}=evil; Path=/"))
            .expect("h");
        resp.append_header("Set-Cookie", "app=1; Path=/")
            .expect("h");
        resp.append_header("Set-Cookie", format!(" {LOGIN_COOKIE} =x"))
            .expect("h");
        drop_own_set_cookies(&mut resp).expect("filtered");
        let left: Vec<_> = resp.headers.get_all(SET_COOKIE).iter().collect();
        assert_eq!(left, [HeaderValue::from_static("app=1; Path=/")]);
    }
}
