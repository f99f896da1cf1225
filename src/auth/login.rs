//! hubgate's browser login: OpenID Connect authorization code flow with PKCE.
//!
//! `/_hubgate/login?next=…` → the issuer's authorization endpoint; the issuer sends the user
//! back to `/_hubgate/oidc/callback`, where the code is exchanged, the ID token passes the
//! same checks and MFA rule as any token, and hubgate sets its session cookie before
//! returning the user to `next` (same-origin paths only).
//!
//! `/_hubgate/logout` ends hubgate's session (cookie cleared and its id revoked, so a copy of
//! the cookie is refused too) and, when the issuer publishes an `end_session_endpoint`,
//! sends the browser there (OpenID Connect RP-Initiated Logout 1.0) with `id_token_hint`,
//! `client_id` and `post_logout_redirect_uri` = `{public-url origin}/_hubgate/logged-out`
//! (fixed, same origin: nothing from the request picks where the provider sends the user).
//! The ID token for the hint is kept in its own cookie scoped to `Path=/_hubgate/logout`, so
//! it is not sent with every request and does not grow the session cookie.

use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use log::{info, warn};
use pingora::http::RequestHeader;
use sha2::{Digest, Sha256};

use super::groups::{session_groups, MAX_SESSION_COOKIE_BYTES};
use super::session::{
    set_cookie, set_cookie_at, LoginClaims, SessionClaims, LOGIN_COOKIE, LOGOUT_HINT_COOKIE,
    LOGOUT_HINT_PATH, SESSION_COOKIE,
};
use super::{Auth, Reason};
use crate::net::Fetch;
use crate::time::now_secs;
use crate::web::{form_encode, query_value, Reply};

/// The path prefix of hubgate's own endpoints.
pub const PREFIX: &str = "/_hubgate/";
const LOGIN_LIFETIME: i64 = 600;
const TOKEN_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest ID token kept for `id_token_hint` (with the cookie's name and attributes it
/// stays under browsers' 4096-byte cookie limit).
const MAX_HINT_BYTES: usize = 3900;

/// A page from one of hubgate's own endpoints (the same page as a denial's).
fn page(status: u16, text: &str) -> Reply {
    Reply::html(status, super::denial::page(status, text))
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn random(n: usize) -> Option<String> {
    let mut buf = vec![0u8; n];
    getrandom::fill(&mut buf).ok()?;
    Some(b64(&buf))
}

fn enc(s: &str) -> String {
    form_encode(s.as_bytes())
}

fn query_param(raw: &[u8], name: &str) -> Option<String> {
    query_value(raw, name)
}

/// `next` if it is a same-origin path, else the hub's base URL (no open redirects).
pub fn safe_next(next: Option<&str>, base: &str) -> String {
    let Some(next) = next else {
        return base.to_string();
    };
    let bytes = next.as_bytes();
    let ok = bytes.first() == Some(&b'/')
        && !matches!(bytes.get(1), Some(b'/') | Some(b'\\'))
        && !next.contains('\\')
        && !next.bytes().any(|b| b.is_ascii_control() || b == b' ')
        && next.len() <= 2048
        && !next.to_ascii_lowercase().contains("%2f%2f")
        && !next.starts_with("/%2f")
        && !next.starts_with("/%2F")
        && !next.starts_with("/%5c")
        && !next.starts_with("/%5C");
    if ok {
        next.to_string()
    } else {
        base.to_string()
    }
}

fn cookie(req: &RequestHeader, name: &str) -> Option<String> {
    let values = req
        .headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok());
    super::session::cookie_value(values, name)
        .first()
        .map(|v| v.to_string())
}

impl Auth {
    fn login_issuer(&self, idp: Option<&str>) -> Option<usize> {
        match idp.and_then(|i| i.parse::<usize>().ok()) {
            Some(i)
                if self
                    .issuers
                    .get(i)
                    .is_some_and(|x| x.config.client_id.is_some()) =>
            {
                Some(i)
            }
            _ => self
                .issuers
                .iter()
                .position(|i| i.config.client_id.is_some()),
        }
    }

    /// Whether a browser login is configured (else denials answer 401 instead of redirecting).
    pub fn login_available(&self) -> bool {
        self.login_issuer(None).is_some()
    }

    /// Where a browser without a valid credential is sent.
    pub fn login_url(&self, next: &str) -> String {
        format!("{PREFIX}login?next={}", enc(next))
    }

    fn redirect_uri(&self) -> String {
        format!(
            "{}{PREFIX}oidc/callback",
            self.config.public_origin.as_deref().unwrap_or("")
        )
    }

    /// Handles a request for one of hubgate's own endpoints.
    pub async fn handle_own(&self, req: &RequestHeader, path: &str) -> Reply {
        match path.strip_prefix(PREFIX) {
            Some("login") => self.start_login(req),
            Some("oidc/callback") => self.finish_login(req).await,
            Some("logout") => self.logout(req).await,
            Some("logged-out") => self.logged_out(),
            _ => page(404, "Not found."),
        }
    }

    /// Ends hubgate's session and, when the issuer supports it, the provider's too.
    async fn logout(&self, req: &RequestHeader) -> Reply {
        let next = safe_next(
            query_param(req.raw_path(), "next").as_deref(),
            &self.config.base_url,
        );
        let session = cookie(req, SESSION_COOKIE).and_then(|c| self.cookie_key.read_session(&c));
        let hint = cookie(req, LOGOUT_HINT_COOKIE);
        let mut provider_logout = None;
        if let Some(claims) = &session {
            if let Some(sid) = &claims.sid {
                // A copy of the cookie (another tab, a stolen one) is refused from now on.
                let r = super::Revocation::Session { sid: sid.clone() };
                if let Err(e) = self.revocations.revoke(&r, "logout").await {
                    warn!("logout: session {sid} of {}: {e}", claims.sub);
                }
            }
            info!(
                "logout: user={} session={}",
                claims.sub,
                claims.sid.as_deref().unwrap_or("-")
            );
            provider_logout = self.end_session_url(claims.idp, hint.as_deref());
        }
        let mut r = Reply::redirect(provider_logout.unwrap_or(next));
        r.headers
            .push(("Set-Cookie", set_cookie(SESSION_COOKIE, "", 0)));
        r.headers.push((
            "Set-Cookie",
            set_cookie_at(LOGOUT_HINT_COOKIE, "", 0, LOGOUT_HINT_PATH),
        ));
        r
    }

    /// The provider's logout URL for a session of issuer `idp`, if it publishes one.
    fn end_session_url(&self, idp: usize, hint: Option<&str>) -> Option<String> {
        let issuer = self.issuers.get(idp)?;
        let endpoint = issuer.endpoints()?.end_session_endpoint.clone()?;
        let cfg = &issuer.config;
        let sep = if endpoint.contains('?') { '&' } else { '?' };
        let mut url = format!(
            "{endpoint}{sep}client_id={}",
            enc(cfg.client_id.as_deref()?)
        );
        // Only a token hubgate itself signed the cookie for could be here; still bounded.
        if let Some(h) = hint.filter(|h| h.len() <= super::MAX_TOKEN_BYTES) {
            url.push_str(&format!("&id_token_hint={}", enc(h)));
        }
        if let Some(origin) = &self.config.public_origin {
            url.push_str(&format!(
                "&post_logout_redirect_uri={}",
                enc(&format!("{origin}{PREFIX}logged-out"))
            ));
        }
        Some(url)
    }

    /// Where the provider sends the browser after its logout.
    fn logged_out(&self) -> Reply {
        let login = self.login_url(&self.config.base_url);
        Reply::html(
            200,
            crate::web::page(
                "Logged out",
                "You are logged out of the hub and of your identity provider. Close this tab, or log in again.",
                Some((&login, "Log in again")),
            ),
        )
    }

    fn start_login(&self, req: &RequestHeader) -> Reply {
        let raw = req.raw_path();
        let next = safe_next(query_param(raw, "next").as_deref(), &self.config.base_url);
        let Some(idp) = self.login_issuer(query_param(raw, "idp").as_deref()) else {
            return page(404, "Login is not configured here.");
        };
        // `step_up=1` comes from hubgate's own redirect of a browser whose credential lacked
        // MFA or was too old; a forged one only makes the user authenticate again.
        let step_up =
            self.issuers[idp].config.step_up && query_param(raw, "step_up").as_deref() == Some("1");
        self.authorization_redirect(idp, next, step_up)
    }

    /// Where a browser with a step-up-able refusal is sent: the login through `idp`, asking
    /// for MFA and a fresh authentication.
    pub fn step_up_url(&self, next: &str, idp: usize) -> String {
        format!("{PREFIX}login?next={}&idp={idp}&step_up=1", enc(next))
    }

    /// The redirect to `idp`'s authorization endpoint with a new login-state cookie. A step-up
    /// request also carries `prompt=login`, `max_age` (the issuer's `max-auth-age-seconds`)
    /// and `acr_values` (its `step-up-acr-values`), and marks the login state so that a
    /// second failure ends on a page.
    fn authorization_redirect(&self, idp: usize, next: String, step_up: bool) -> Reply {
        let issuer = &self.issuers[idp];
        let Some(endpoint) = issuer
            .endpoints()
            .and_then(|e| e.authorization_endpoint.clone())
        else {
            return page(503, Reason::KeysUnavailable.message());
        };
        let (Some(state), Some(nonce), Some(verifier)) = (random(16), random(16), random(32))
        else {
            return page(500, "Cannot start a login right now.");
        };
        let challenge = b64(&Sha256::digest(verifier.as_bytes()));
        let claims = LoginClaims {
            iss: String::new(),
            aud: String::new(),
            exp: now_secs() + LOGIN_LIFETIME,
            state: state.clone(),
            nonce: nonce.clone(),
            verifier,
            next,
            idp,
            step_up,
        };
        let Some(login_cookie) = self.cookie_key.sign_login(claims) else {
            return page(500, "Cannot start a login right now.");
        };
        let cfg = &issuer.config;
        let sep = if endpoint.contains('?') { '&' } else { '?' };
        let mut location = format!(
            "{endpoint}{sep}response_type=code&client_id={}&redirect_uri={}&scope={}&state={state}&nonce={nonce}&code_challenge={challenge}&code_challenge_method=S256",
            enc(cfg.client_id.as_deref().unwrap_or_default()),
            enc(&self.redirect_uri()),
            enc(&cfg.scopes.join(" ")),
        );
        if step_up {
            location.push_str(&format!(
                "&prompt=login&max_age={}",
                cfg.max_auth_age.as_secs()
            ));
            if !cfg.step_up_acr_values.is_empty() {
                location.push_str(&format!(
                    "&acr_values={}",
                    enc(&cfg.step_up_acr_values.join(" "))
                ));
            }
        }
        let mut r = Reply::redirect(location);
        r.headers.push((
            "Set-Cookie",
            set_cookie(LOGIN_COOKIE, &login_cookie, LOGIN_LIFETIME),
        ));
        r
    }

    async fn finish_login(&self, req: &RequestHeader) -> Reply {
        let raw = req.raw_path();
        let restart = |why: &str| {
            warn!("login callback refused: {why}");
            self.count_denial(Reason::BadSession);
            let mut r = page(
                400,
                "This login attempt has expired or is invalid. Please start again.",
            );
            r.headers
                .push(("Set-Cookie", set_cookie(LOGIN_COOKIE, "", 0)));
            r
        };
        let Some(login) = cookie(req, LOGIN_COOKIE).and_then(|c| self.cookie_key.read_login(&c))
        else {
            return restart("no valid login-state cookie");
        };
        if query_param(raw, "state").as_deref() != Some(login.state.as_str()) {
            return restart("state does not match");
        }
        let Some(issuer) = self.issuers.get(login.idp) else {
            return restart("unknown issuer in login state");
        };
        let cfg = &issuer.config;
        if let Some(iss) = query_param(raw, "iss") {
            if iss != cfg.issuer {
                return restart("iss parameter names another issuer (mix-up)");
            }
        }
        if let Some(err) = query_param(raw, "error") {
            warn!("identity provider refused the login: {err}");
            return page(403, "The identity provider did not complete the login.");
        }
        let Some(code) = query_param(raw, "code") else {
            return restart("no code");
        };
        let Some(token_endpoint) = issuer.endpoints().and_then(|e| e.token_endpoint.clone()) else {
            return page(503, Reason::KeysUnavailable.message());
        };
        let client_id = cfg.client_id.clone().unwrap_or_default();
        let form = format!(
            "grant_type=authorization_code&code={}&redirect_uri={}&code_verifier={}&client_id={}",
            enc(&code),
            enc(&self.redirect_uri()),
            enc(&login.verifier),
            enc(&client_id)
        );
        let basic;
        let mut headers: Vec<(&str, &str)> = vec![
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Accept", "application/json"),
        ];
        if let Some(secret) = &cfg.client_secret {
            basic = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!(
                    "{}:{}",
                    enc(&client_id),
                    enc(secret)
                ))
            );
            headers.push(("Authorization", basic.as_str()));
        }
        let resp = self
            .client
            .request(
                Fetch::post(&token_endpoint, Bytes::from(form), TOKEN_TIMEOUT, 1 << 20)
                    .with_headers(&headers),
            )
            .await;
        let body = match resp {
            Ok(r) if r.status == 200 => r.body,
            Ok(r) => {
                warn!("token endpoint answered {}", r.status);
                return page(502, "The identity provider did not accept the login.");
            }
            Err(e) => {
                warn!("token endpoint: {e}");
                return page(502, "The identity provider could not be reached.");
            }
        };
        let id_token = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| {
                v.get("id_token")
                    .and_then(|t| t.as_str())
                    .map(str::to_string)
            });
        let Some(id_token) = id_token else {
            return restart("token response without id_token");
        };
        let audience = [client_id];
        let verified = match self
            .verify_token(&id_token, Some(&audience), Some(&login.nonce))
            .await
        {
            Ok(v) => v,
            Err(reason) => return self.refused_login(reason, login),
        };
        let now = now_secs();
        let auth_time = verified.auth_time.unwrap_or(now);
        let mut exp = now + self.config.session_lifetime.as_secs() as i64;
        if cfg.require_mfa {
            exp = exp.min(auth_time + cfg.max_auth_age.as_secs() as i64);
        }
        let identity = verified.identity;
        let Some(sid) = random(16) else {
            return page(500, "Cannot finish the login right now.");
        };
        let session = SessionClaims {
            iss: String::new(),
            aud: String::new(),
            sub: identity.user.clone(),
            email: identity.email.clone(),
            groups: session_groups(&self.config, login.idp, &identity.groups),
            idp: login.idp,
            iat: now,
            exp,
            auth_time,
            sid: Some(sid.clone()),
            psid: identity.idp_sid.clone(),
            // Kept only when the user name is not the subject (the cookie stays small).
            psub: identity
                .idp_sub
                .clone()
                .filter(|_| cfg.username_claim != "sub"),
        };
        let Some(value) = self.cookie_key.sign_session(session) else {
            return page(500, "Cannot finish the login right now.");
        };
        if value.len() > MAX_SESSION_COOKIE_BYTES {
            // Browsers drop a cookie this large and the user would loop through the login:
            // refuse once, clearly, instead (fail closed: no partial group list).
            warn!(
                "login refused: user={} session cookie would be {} bytes (limit {MAX_SESSION_COOKIE_BYTES}); too many groups named by admin-groups/[[auth.policies]]",
                identity.user,
                value.len()
            );
            self.count_denial(Reason::SessionTooLarge);
            return page(403, Reason::SessionTooLarge.message());
        }
        info!(
            "login: user={} via {} session={sid}",
            identity.user, cfg.issuer
        );
        let mut r = Reply::redirect(login.next);
        r.headers
            .push(("Set-Cookie", set_cookie(SESSION_COOKIE, &value, exp - now)));
        r.headers
            .push(("Set-Cookie", set_cookie(LOGIN_COOKIE, "", 0)));
        // Browsers drop cookies over 4 KiB (an ID token with many groups): then the logout
        // goes without `id_token_hint` (`client_id` alone is allowed by RP-Initiated Logout).
        if id_token.len() <= MAX_HINT_BYTES
            && issuer
                .endpoints()
                .is_some_and(|e| e.end_session_endpoint.is_some())
        {
            r.headers.push((
                "Set-Cookie",
                set_cookie_at(LOGOUT_HINT_COOKIE, &id_token, exp - now, LOGOUT_HINT_PATH),
            ));
        }
        r
    }
}

impl Auth {
    /// The answer to a login whose ID token was refused. MFA missing or authentication too
    /// old, with step-up on and not yet tried: back to the issuer asking for what is missing.
    /// Already a step-up: the issuer cannot or will not provide it, so a page that says what
    /// to do next (never another redirect: no loop).
    fn refused_login(&self, reason: Reason, login: LoginClaims) -> Reply {
        warn!("login refused: ID token {}", reason.label());
        self.count_denial(reason);
        let step_up_able = super::denial::is_step_up(reason);
        let issuer = &self.issuers[login.idp].config;
        if step_up_able && issuer.step_up && !login.step_up {
            info!(
                "step-up: asking {} for a fresh multi-factor login ({})",
                issuer.issuer,
                reason.label()
            );
            return self.authorization_redirect(login.idp, login.next, true);
        }
        if step_up_able && login.step_up {
            warn!(
                "step-up not satisfied: {} answered a step-up request with an ID token that still fails the rule ({})",
                issuer.issuer,
                reason.label()
            );
            let mut r = Reply::html(
                403,
                crate::web::page(
                    "403: Second factor needed",
                    STEP_UP_FAILED,
                    Some((&self.login_url(&login.next), "Try again")),
                ),
            );
            r.headers
                .push(("Set-Cookie", set_cookie(LOGIN_COOKIE, "", 0)));
            return r;
        }
        page(reason.status(), reason.message())
    }
}

/// What a researcher reads when the identity provider did not provide MFA even when asked.
const STEP_UP_FAILED: &str = "You signed in, but your identity provider did not confirm a second factor (or a recent sign-in), although this service asked it to. What to do next: make sure a second factor (an authenticator app or security key) is set up in your account at your identity provider, sign out there, then use \"Try again\" and sign in with the second factor. If your account has no second factor, ask your institution's IT support to enable one.";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_must_be_same_origin() {
        let base = "/hub/";
        for bad in [
            "https://evil.com",
            "//evil.com",
            "/\\evil.com",
            "\\/evil.com",
            "/%2F%2Fevil.com",
            "/ /evil.com",
            "https:evil.com",
            "javascript:alert(1)",
            "/a\tb",
            "/a\nb",
        ] {
            assert_eq!(safe_next(Some(bad), base), base, "{bad}");
        }
        assert_eq!(safe_next(Some(&"/x".repeat(2000)), base), base);
        assert_eq!(
            safe_next(Some("/user/alice/lab?x=1"), base),
            "/user/alice/lab?x=1"
        );
        assert_eq!(
            safe_next(Some("/user/alice/@evil.com"), base),
            "/user/alice/@evil.com"
        );
        assert_eq!(safe_next(None, base), base);
    }
}
