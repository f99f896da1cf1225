//! How a refused request is answered: a login redirect for a browser without a credential,
//! otherwise the status of the [`Reason`] with a `WWW-Authenticate` challenge where one
//! applies and a generic page (browsers) or JSON body (everything else). The precise reason
//! goes to the log and metrics (`Auth::record`), never into the response.

use pingora::http::RequestHeader;

use super::{Auth, Reason};
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
        let status = reason.status();
        if status == 401 && browser && self.login_available() {
            // The credential parameter never goes into a URL hubgate builds.
            let raw = String::from_utf8_lossy(req.raw_path());
            let next = self.extractor().strip_target(&raw);
            return Reply::redirect(self.login_url(&next));
        }
        let challenge = match (status, reason) {
            (401, _) if presented => Some(r#"Bearer realm="hubgate", error="invalid_token""#),
            (401, _) => Some(r#"Bearer realm="hubgate""#),
            (_, Reason::MfaRequired | Reason::AuthTooOld) => {
                Some(r#"Bearer realm="hubgate", error="insufficient_user_authentication""#)
            }
            _ => None,
        };
        let reply = if browser {
            Reply::html(status, page(status, reason.message()))
        } else {
            Reply::json(
                status,
                serde_json::json!({"status": status, "message": reason.message()}).to_string(),
            )
        };
        match challenge {
            Some(c) => reply.with_header("WWW-Authenticate", c.to_string()),
            None => reply,
        }
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
            Some(r#"Bearer realm="hubgate", error="insufficient_user_authentication""#)
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

    fn auth_with_login() -> Auth {
        crate::auth::test_support::auth_from(
            "public-url = \"https://hub.example.org\"\n",
            "client-id = \"hubgate\"\n",
        )
    }
}
