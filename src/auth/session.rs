//! hubgate's own cookies: the session (who logged in, with MFA, when) and the short-lived
//! login state (state, nonce, PKCE verifier, where to return). Both are JWTs signed with
//! hubgate's secret (HS256) and read back only by hubgate; identity-provider tokens are never
//! accepted with this key.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// The session cookie's name (`__Host-`: Secure, Path=/, no Domain, set by this origin only).
pub const SESSION_COOKIE: &str = "__Host-hubgate-session";
/// The login-state cookie's name.
pub const LOGIN_COOKIE: &str = "__Host-hubgate-login";

/// The cookie holding the ID token for the provider's logout (`id_token_hint`). Sent only
/// to the logout endpoint (`Path`), so it neither grows every request nor reaches servers.
pub const LOGOUT_HINT_COOKIE: &str = "__Secure-hubgate-logout";
/// The path [`LOGOUT_HINT_COOKIE`] is scoped to.
pub const LOGOUT_HINT_PATH: &str = "/_hubgate/logout";

const SESSION_AUDIENCE: &str = "hubgate-session";
const LOGIN_AUDIENCE: &str = "hubgate-login";
const ISSUER: &str = "hubgate";

/// What a session cookie holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionClaims {
    pub iss: String,
    pub aud: String,
    /// The JupyterHub user name.
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    /// Index of the issuer the user logged in with.
    pub idp: usize,
    pub iat: i64,
    pub exp: i64,
    /// When the user authenticated (with MFA) at the identity provider.
    pub auth_time: i64,
    /// hubgate's id of this session (random), for revoking it alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    /// The identity provider's session id from the ID token (back-channel logout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub psid: Option<String>,
    /// The identity provider's subject, when the user name is another claim (back-channel
    /// logout by subject).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub psub: Option<String>,
}

/// What the login-state cookie holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LoginClaims {
    pub iss: String,
    pub aud: String,
    pub exp: i64,
    pub state: String,
    pub nonce: String,
    pub verifier: String,
    pub next: String,
    pub idp: usize,
    /// This login is a step-up (it asked the issuer for MFA / a fresh login): if its ID token
    /// still fails the MFA rule, the user gets a page, never another redirect.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub step_up: bool,
}

/// Signs and checks hubgate's cookies.
pub struct CookieKey {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

fn validation(aud: &str) -> Validation {
    let mut v = Validation::new(Algorithm::HS256);
    v.leeway = 0;
    v.set_audience(&[aud]);
    v.set_issuer(&[ISSUER]);
    v.set_required_spec_claims(&["exp", "iss", "aud"]);
    v
}

impl CookieKey {
    /// A key from a secret (at least 32 bytes).
    pub fn new(secret: &[u8]) -> CookieKey {
        CookieKey {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
        }
    }

    /// Signs session claims (`iss`/`aud` are filled in).
    pub fn sign_session(&self, mut claims: SessionClaims) -> Option<String> {
        claims.iss = ISSUER.into();
        claims.aud = SESSION_AUDIENCE.into();
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding).ok()
    }

    /// Checks a session cookie's signature and expiry.
    pub fn read_session(&self, value: &str) -> Option<SessionClaims> {
        jsonwebtoken::decode::<SessionClaims>(value, &self.decoding, &validation(SESSION_AUDIENCE))
            .ok()
            .map(|d| d.claims)
    }

    /// Signs login-state claims.
    pub fn sign_login(&self, mut claims: LoginClaims) -> Option<String> {
        claims.iss = ISSUER.into();
        claims.aud = LOGIN_AUDIENCE.into();
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding).ok()
    }

    /// Checks a login-state cookie.
    pub fn read_login(&self, value: &str) -> Option<LoginClaims> {
        jsonwebtoken::decode::<LoginClaims>(value, &self.decoding, &validation(LOGIN_AUDIENCE))
            .ok()
            .map(|d| d.claims)
    }
}

/// A `Set-Cookie` value for one of hubgate's cookies.
pub fn set_cookie(name: &str, value: &str, max_age: i64) -> String {
    set_cookie_at(name, value, max_age, "/")
}

/// A `Set-Cookie` value for one of hubgate's cookies, scoped to `path`.
pub fn set_cookie_at(name: &str, value: &str, max_age: i64, path: &str) -> String {
    format!("{name}={value}; Path={path}; Max-Age={max_age}; Secure; HttpOnly; SameSite=Lax")
}

/// Finds a cookie's value in `Cookie` header values.
pub fn cookie_value<'a>(headers: impl Iterator<Item = &'a str>, name: &str) -> Vec<&'a str> {
    let mut out = Vec::new();
    for header in headers {
        for pair in header.split(';') {
            if let Some((k, v)) = pair.trim().split_once('=') {
                if k == name {
                    out.push(v.trim());
                }
            }
        }
    }
    out
}

/// A `Cookie` header value without hubgate's own cookies (they never reach user servers).
pub fn strip_own_cookies(header: &str) -> Option<String> {
    let kept: Vec<&str> = header
        .split(';')
        .map(str::trim)
        .filter(|pair| {
            let name = pair.split('=').next().unwrap_or_default();
            !pair.is_empty()
                && name != SESSION_COOKIE
                && name != LOGIN_COOKIE
                && name != LOGOUT_HINT_COOKIE
        })
        .collect();
    (!kept.is_empty()).then(|| kept.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> SessionClaims {
        SessionClaims {
            iss: String::new(),
            aud: String::new(),
            sub: "alice".into(),
            email: None,
            groups: vec!["physics".into()],
            idp: 0,
            iat: crate::time::now_secs(),
            exp: crate::time::now_secs() + 60,
            auth_time: crate::time::now_secs(),
            sid: Some("s1".into()),
            psid: None,
            psub: None,
        }
    }

    #[test]
    fn session_round_trip_and_tamper() {
        let key = CookieKey::new(&[7u8; 32]);
        let token = key.sign_session(claims()).unwrap();
        assert_eq!(key.read_session(&token).unwrap().sub, "alice");
        let other = CookieKey::new(&[8u8; 32]);
        assert!(other.read_session(&token).is_none());
        let mut bytes = token.into_bytes();
        let i = bytes.len() - 3;
        bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
        assert!(key
            .read_session(&String::from_utf8(bytes).unwrap())
            .is_none());
        let mut expired = claims();
        expired.exp -= 120;
        assert!(key
            .read_session(&key.sign_session(expired).unwrap())
            .is_none());
    }

    #[test]
    fn login_cookie_is_not_a_session() {
        let key = CookieKey::new(&[7u8; 32]);
        let login = key
            .sign_login(LoginClaims {
                iss: String::new(),
                aud: String::new(),
                exp: crate::time::now_secs() + 60,
                state: "s".into(),
                nonce: "n".into(),
                verifier: "v".into(),
                next: "/".into(),
                idp: 0,
                step_up: false,
            })
            .unwrap();
        assert!(key.read_session(&login).is_none());
        assert!(key.read_login(&login).is_some());
    }

    #[test]
    fn cookies_parsed_and_stripped() {
        let h = format!("a=1; {SESSION_COOKIE}=xyz; b=2");
        assert_eq!(
            cookie_value([h.as_str()].into_iter(), SESSION_COOKIE),
            vec!["xyz"]
        );
        assert_eq!(strip_own_cookies(&h).as_deref(), Some("a=1; b=2"));
        assert_eq!(strip_own_cookies(&format!("{SESSION_COOKIE}=x")), None);
    }
}
