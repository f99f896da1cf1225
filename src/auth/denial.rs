//! How a refused request is answered: a login redirect for a browser without a credential,
//! otherwise the status of the [`Reason`] with a `WWW-Authenticate` challenge where one
//! applies and a generic page (browsers) or JSON body (everything else). The precise reason
//! goes to the log and metrics (`Auth::record`), never into the response.

use pingora::http::RequestHeader;

use super::{Auth, CredentialKind, Reason};
use crate::web::{self, Reply};

/// The HTML page for an authentication denial or a login problem.
pub fn page(status: u16, text: &str) -> String {
    let title = match status {
        401 => "Login required",
        403 => "Access denied",
        503 => "Login unavailable",
        _ => "Login problem",
    };
    web::page(
        &format!("{status}: {title}"),
        text,
        Some(("/_hubgate/login", "Log in")),
    )
}

/// Whether a request looks like a browser navigating (it can follow a login redirect and
/// wants a page), as opposed to a script, an XHR or a websocket.
fn is_browser(req: &RequestHeader, websocket: bool) -> bool {
    let accept = req
        .headers
        .get(http::header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .unwrap_or("");
    !websocket
        && (req.method == http::Method::GET || req.method == http::Method::HEAD)
        && accept.contains("text/html")
        && !req.headers.contains_key("x-requested-with")
}

/// Whether a refusal can be cured by authenticating again, with MFA and recently
/// (RFC 9470 step-up); every other refusal is about who the user is, not how they logged in.
pub(super) fn is_step_up(reason: Reason) -> bool {
    matches!(reason, Reason::MfaRequired | Reason::AuthTooOld)
}

impl Auth {
    /// The response refusing `req` for `reason`; `presented` says whether a credential was sent
    /// (a 401 then says `error="invalid_token"`).
    pub fn denial(
        &self,
        req: &RequestHeader,
        reason: Reason,
        presented: bool,
        websocket: bool,
    ) -> Reply {
        let browser = is_browser(req, websocket);
        if is_step_up(reason) {
            return self.step_up_denial(req, reason, browser, websocket);
        }
        let status = reason.status();
        if status == 401 && browser && self.login_available() {
            // The credential parameter never goes into a URL hubgate builds.
            return Reply::redirect(self.login_url(&self.next_of(req)));
        }
        let challenge = match status {
            401 if presented => Some(r#"Bearer realm="hubgate", error="invalid_token""#),
            401 => Some(r#"Bearer realm="hubgate""#),
            _ => None,
        };
        let mut reply = body(status, reason, browser);
        if status == 503 {
            // Keys or the hub's grants unavailable: a condition that passes. Clients that
            // honour Retry-After come back later instead of retrying at once.
            reply = reply.with_header("Retry-After", "60".to_string());
        }
        match challenge {
            Some(c) => reply.with_header("WWW-Authenticate", c.to_string()),
            None => reply,
        }
    }

    /// The request's own target without the credential parameter, for `next`.
    fn next_of(&self, req: &RequestHeader) -> String {
        let raw = String::from_utf8_lossy(req.raw_path());
        self.extractor().strip_target(&raw).into_owned()
    }

    /// A genuine credential that fails only the MFA or authentication-age rule. A browser with
    /// hubgate's session is sent through the login of its issuer asking for what is missing
    /// (when that issuer has `step-up`); anything else gets the RFC 9470 challenge: 401 with
    /// `error="insufficient_user_authentication"` and the issuer's `acr_values` and `max_age`
    /// (a browser without step-up, and a websocket upgrade, get the same challenge on a 403).
    fn step_up_denial(
        &self,
        req: &RequestHeader,
        reason: Reason,
        browser: bool,
        websocket: bool,
    ) -> Reply {
        // This is the rare path: reading the credential's issuer again here keeps the
        // per-request outcome unchanged.
        let (kind, issuer) = self.credential_issuer(req, websocket).unzip();
        let cfg = issuer.and_then(|i| self.issuers.get(i)).map(|i| &i.config);
        // Only hubgate's own session is replaced by a login: a browser that sends a Bearer
        // token would send the same token again after it and loop.
        let session = kind == Some(CredentialKind::Session);
        if let (true, true, Some(i), Some(true)) =
            (browser, session, issuer, cfg.map(|c| c.step_up))
        {
            return Reply::redirect(self.step_up_url(&self.next_of(req), i));
        }
        let mut challenge = String::from(
            r#"Bearer realm="hubgate", error="insufficient_user_authentication", error_description="A fresh multi-factor authentication is required""#,
        );
        if let Some(cfg) = cfg.filter(|c| c.require_mfa) {
            if !cfg.step_up_acr_values.is_empty() {
                // Validated in src/config/auth.rs: no quotes, backslashes or spaces inside.
                challenge.push_str(&format!(
                    r#", acr_values="{}""#,
                    cfg.step_up_acr_values.join(" ")
                ));
            }
            challenge.push_str(&format!(", max_age=\"{}\"", cfg.max_auth_age.as_secs()));
        }
        // RFC 9470 §3 answers 401; a browser's page and a websocket upgrade keep the 403 they
        // always had (neither can act on the challenge; scripts watching for 403 stay right).
        let status = if browser || websocket { 403 } else { 401 };
        body(status, reason, browser).with_header("WWW-Authenticate", challenge)
    }

    /// The issuer of the request's credential (a session cookie's login issuer, a token's
    /// `iss`), if it names a configured one.
    fn credential_issuer(
        &self,
        req: &RequestHeader,
        websocket: bool,
    ) -> Option<(CredentialKind, usize)> {
        let (kind, value) = self.extractor().extract(req, websocket).ok()??;
        let issuer = match kind {
            CredentialKind::Session => self.cookie_key.read_session(&value)?.idp,
            _ => {
                let iss = super::verify::inspect(&value).ok()?.iss;
                self.issuers.iter().position(|i| i.config.issuer == iss)?
            }
        };
        Some((kind, issuer))
    }
}

/// A denial's body: a page for browsers, JSON for everything else.
fn body(status: u16, reason: Reason, browser: bool) -> Reply {
    if browser {
        Reply::html(status, page(status, reason.message()))
    } else {
        Reply::json(
            status,
            serde_json::json!({"status": status, "message": reason.message()}).to_string(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::test_support::auth_with;

    fn req(method: &str, path: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build(method, path.as_bytes(), None).expect("request");
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).expect("header");
        }
        r
    }

    fn header<'a>(r: &'a Reply, name: &str) -> Option<&'a str> {
        r.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    const HTML: (&str, &str) = ("Accept", "text/html,application/xhtml+xml");

    #[test]
    fn unavailable_checks_say_when_to_come_back() {
        let auth = auth_with("");
        for reason in [Reason::KeysUnavailable, Reason::GrantsUnavailable] {
            let r = auth.denial(&req("GET", "/user/a/", &[HTML]), reason, true, false);
            assert_eq!(r.status, 503, "{reason:?}");
            assert_eq!(header(&r, "Retry-After"), Some("60"), "{reason:?}");
            assert_eq!(header(&r, "WWW-Authenticate"), None, "{reason:?}");
        }
        let r = auth.denial(&req("GET", "/user/a/", &[]), Reason::NotOwner, true, false);
        assert_eq!(header(&r, "Retry-After"), None);
    }

    #[test]
    fn scripts_get_json_and_a_challenge() {
        let auth = auth_with("");
        let r = auth.denial(
            &req("GET", "/user/a/", &[]),
            Reason::MissingCredential,
            false,
            false,
        );
        assert_eq!(r.status, 401);
        assert_eq!(
            header(&r, "WWW-Authenticate"),
            Some(r#"Bearer realm="hubgate""#)
        );
        assert_eq!(header(&r, "Content-Type"), Some("application/json"));
        assert_eq!(header(&r, "Cache-Control"), Some("no-store"));
        let body: serde_json::Value = serde_json::from_str(&r.body).expect("json");
        assert_eq!(body["status"], 401);
        let r = auth.denial(&req("GET", "/user/a/", &[]), Reason::Expired, true, false);
        assert_eq!(
            header(&r, "WWW-Authenticate"),
            Some(r#"Bearer realm="hubgate", error="invalid_token""#)
        );
    }

    #[test]
    fn expired_and_forged_look_the_same() {
        let auth = auth_with("");
        let a = auth.denial(&req("GET", "/x", &[]), Reason::Expired, true, false);
        let b = auth.denial(&req("GET", "/x", &[]), Reason::BadSignature, true, false);
        assert_eq!(a, b);
        assert!(!a.body.contains("expired\""));
    }

    #[test]
    fn browsers_get_a_page_and_mfa_gets_its_challenge() {
        let auth = auth_with("");
        // No browser login configured here: a page rather than a redirect.
        let r = auth.denial(
            &req("GET", "/user/a/", &[HTML]),
            Reason::MissingCredential,
            false,
            false,
        );
        assert_eq!(r.status, 401);
        assert!(r.body.contains("<h1>401: Login required</h1>"));
        let r = auth.denial(
            &req("GET", "/user/a/", &[HTML]),
            Reason::MfaRequired,
            true,
            false,
        );
        assert_eq!(r.status, 403);
        assert_eq!(
            header(&r, "WWW-Authenticate"),
            Some(
                r#"Bearer realm="hubgate", error="insufficient_user_authentication", error_description="A fresh multi-factor authentication is required""#
            )
        );
        assert!(r.body.contains("403: Access denied"));
        let r = auth.denial(
            &req("GET", "/user/b/", &[HTML]),
            Reason::NotOwner,
            true,
            false,
        );
        assert_eq!(header(&r, "WWW-Authenticate"), None);
        assert!(r.body.contains("belongs to another user"));
    }

    #[test]
    fn xhr_posts_and_websockets_are_not_browsers() {
        assert!(is_browser(&req("GET", "/", &[HTML]), false));
        assert!(is_browser(&req("HEAD", "/", &[HTML]), false));
        assert!(!is_browser(&req("GET", "/", &[HTML]), true));
        assert!(!is_browser(&req("POST", "/", &[HTML]), false));
        assert!(!is_browser(
            &req("GET", "/", &[HTML, ("X-Requested-With", "XMLHttpRequest")]),
            false
        ));
        assert!(!is_browser(
            &req("GET", "/", &[("Accept", "application/json")]),
            false
        ));
    }

    #[test]
    fn login_redirect_for_browsers_when_login_is_configured() {
        let auth = auth_with_login();
        let r = auth.denial(
            &req("GET", "/user/a/lab?x=1", &[HTML]),
            Reason::MissingCredential,
            false,
            false,
        );
        assert_eq!(r.status, 302);
        assert_eq!(
            header(&r, "Location"),
            Some("/_hubgate/login?next=%2Fuser%2Fa%2Flab%3Fx%3D1")
        );
        // A token in the query does not come back through the login.
        let auth = crate::auth::test_support::auth_from(
            "public-url = \"https://hub.example.org\"\nquery-param = \"hubgate_token\"\n",
            "client-id = \"hubgate\"\n",
        );
        let r = auth.denial(
            &req("GET", "/user/a/lab?hubgate_token=abc&x=1", &[HTML]),
            Reason::MissingCredential,
            false,
            false,
        );
        assert_eq!(
            header(&r, "Location"),
            Some("/_hubgate/login?next=%2Fuser%2Fa%2Flab%3Fx%3D1")
        );
        // Not for scripts, and not for 403s.
        let r = auth.denial(
            &req("GET", "/user/a/", &[]),
            Reason::MissingCredential,
            false,
            false,
        );
        assert_eq!(r.status, 401);
        let r = auth.denial(
            &req("GET", "/user/b/", &[HTML]),
            Reason::NotOwner,
            true,
            false,
        );
        assert_eq!(r.status, 403);
    }

    /// A session cookie of issuer 0 signed with `auth`'s key.
    fn session_cookie(auth: &Auth) -> String {
        let now = crate::time::now_secs();
        let value = auth
            .cookie_key
            .sign_session(crate::auth::session::SessionClaims {
                iss: String::new(),
                aud: String::new(),
                sub: "a".into(),
                email: None,
                groups: vec![],
                idp: 0,
                iat: now,
                exp: now + 60,
                auth_time: now - 7200,
                sid: None,
                psid: None,
                psub: None,
            })
            .expect("signed");
        format!("{}={value}", crate::auth::SESSION_COOKIE)
    }

    const STEP_UP_ISSUER: &str = "client-id = \"hubgate\"\nmfa-acr = [\"https://refeds.org/profile/mfa\"]\nmax-auth-age-seconds = 3600\n";

    #[test]
    fn step_up_redirects_sessions_and_challenges_everything_else() {
        let auth = crate::auth::test_support::auth_from(
            "public-url = \"https://hub.example.org\"\n",
            STEP_UP_ISSUER,
        );
        let cookie = session_cookie(&auth);
        let with = |extra: &[(&str, &str)]| {
            let mut h = vec![("Cookie", cookie.as_str())];
            h.extend_from_slice(extra);
            req("GET", "/user/a/lab?x=1", &h)
        };
        // A browser with hubgate's session: back through the login, asking for MFA.
        for reason in [Reason::AuthTooOld, Reason::MfaRequired] {
            let r = auth.denial(&with(&[HTML]), reason, true, false);
            assert_eq!(r.status, 302, "{reason:?}");
            assert_eq!(
                header(&r, "Location"),
                Some("/_hubgate/login?next=%2Fuser%2Fa%2Flab%3Fx%3D1&idp=0&step_up=1")
            );
        }
        // An API client: RFC 9470, 401 with what the issuer requires.
        let want = r#"Bearer realm="hubgate", error="insufficient_user_authentication", error_description="A fresh multi-factor authentication is required", acr_values="https://refeds.org/profile/mfa", max_age="3600""#;
        let r = auth.denial(&with(&[]), Reason::AuthTooOld, true, false);
        assert_eq!(r.status, 401);
        assert_eq!(header(&r, "WWW-Authenticate"), Some(want));
        assert_eq!(header(&r, "Content-Type"), Some("application/json"));
        // A websocket upgrade: no redirect, the 403 it always had, with the challenge.
        let r = auth.denial(&with(&[HTML]), Reason::MfaRequired, true, true);
        assert_eq!(r.status, 403);
        assert_eq!(header(&r, "WWW-Authenticate"), Some(want));
        // A browser sending a Bearer token would send it again after a login: a page.
        let seg =
            |v: &str| base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, v);
        let token = format!(
            "{}.{}.c2ln",
            seg(r#"{"alg":"RS256","kid":"k1"}"#),
            seg(r#"{"iss":"https://idp"}"#)
        );
        let bearer = format!("Bearer {token}");
        let r = auth.denial(
            &req(
                "GET",
                "/user/a/",
                &[HTML, ("Authorization", bearer.as_str())],
            ),
            Reason::MfaRequired,
            true,
            false,
        );
        assert_eq!(r.status, 403);
        assert_eq!(header(&r, "WWW-Authenticate"), Some(want));
        assert!(r.body.contains("403: Access denied"));
        // Other refusals are not step-up-able.
        let r = auth.denial(&with(&[HTML]), Reason::NotOwner, true, false);
        assert_eq!(r.status, 403);
        assert_eq!(header(&r, "WWW-Authenticate"), None);
    }

    #[test]
    fn step_up_off_gives_the_page_with_the_challenge() {
        let auth = crate::auth::test_support::auth_from(
            "public-url = \"https://hub.example.org\"\n",
            &format!("{STEP_UP_ISSUER}step-up = false\n"),
        );
        let cookie = session_cookie(&auth);
        let r = auth.denial(
            &req("GET", "/user/a/", &[HTML, ("Cookie", cookie.as_str())]),
            Reason::AuthTooOld,
            true,
            false,
        );
        assert_eq!(r.status, 403);
        assert!(header(&r, "WWW-Authenticate").is_some_and(|c| c.contains(r#"max_age="3600""#)));
        assert!(r.body.contains("second factor"));
    }

    fn auth_with_login() -> Auth {
        crate::auth::test_support::auth_from(
            "public-url = \"https://hub.example.org\"\n",
            "client-id = \"hubgate\"\n",
        )
    }
}
