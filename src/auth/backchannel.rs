//! OpenID Connect Back-Channel Logout 1.0: the provider posts a `logout_token` to
//! `/_hubgate/backchannel-logout` when a user's session there ends; hubgate then refuses every
//! credential tied to it, on every replica (the revocation list).
//!
//! The token is checked as the specification's §2.6 asks: signature with the issuer's keys
//! (the same key sets as every token), `iss`, `aud` (the login client id), `iat` (not in the
//! future, not older than [`MAX_AGE`]), `exp` when present, a `jti` not seen before, the
//! back-channel `events` member, `sid` or `sub`, and no `nonce`. The answer is 200 with an
//! empty body, or 400 with an OAuth error object (`error_description` says which check
//! failed; the token itself is never logged).

use log::{info, warn};
use serde_json::{Map, Value};

use super::revocation::Revocation;
use super::verify::{self, LOGOUT_TOKEN_TYPES, MAX_TOKEN_BYTES};
use super::{Auth, Reason};
use crate::time::now_secs;
use crate::web::Reply;

/// The endpoint's path.
pub const PATH: &str = "/_hubgate/backchannel-logout";
/// Bodies larger than this are refused unread (a token plus the form's name).
pub const MAX_BODY: usize = MAX_TOKEN_BYTES + 64;
/// Logout tokens older than this (by `iat`) are refused: it also bounds the replay cache.
pub const MAX_AGE: i64 = 300;
const EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// Why a logout token was refused (the `error_description`, and the log line).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogoutError {
    #[error("the body has no logout_token")]
    NoToken,
    #[error("logout_token: {0}")]
    Token(&'static str),
    #[error("logout_token names neither a provider session (sid) nor a subject (sub)")]
    Unmatched,
    #[error("logout_token was already used (jti)")]
    Replayed,
}

fn reply_error(e: &LogoutError) -> Reply {
    let body = serde_json::json!({
        "error": "invalid_request",
        "error_description": e.to_string(),
    });
    Reply::json(400, body.to_string())
}

/// The `logout_token` of an `application/x-www-form-urlencoded` body.
fn form_token(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    text.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        // A JWT has no characters that need escaping, but a client may still escape some.
        (k == "logout_token").then(|| {
            let v = v.replace('+', " ");
            percent_encoding::percent_decode_str(&v)
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

/// The claim checks of §2.6 on a token whose signature is valid.
fn check_claims(
    claims: &Map<String, Value>,
    issuer: &str,
    client_id: &str,
    leeway: i64,
    now: i64,
) -> Result<(), LogoutError> {
    let bad = |why| Err(LogoutError::Token(why));
    if claims.get("iss").and_then(Value::as_str) != Some(issuer) {
        return bad("iss is not the issuer");
    }
    match verify::audience_ok(claims, &[client_id.to_string()]) {
        Ok(true) => {}
        _ => return bad("aud does not name hubgate's client id"),
    }
    let date = |name| {
        verify::date_claim(claims, name).map_err(|_| LogoutError::Token("a date is not a number"))
    };
    match date("iat")? {
        None => return bad("no iat"),
        Some(iat) if iat > now + leeway => return bad("iat is in the future"),
        Some(iat) if iat < now - MAX_AGE - leeway => return bad("iat is too old"),
        Some(_) => {}
    }
    if date("exp")?.is_some_and(|exp| now > exp + leeway) {
        return bad("expired");
    }
    let event = claims
        .get("events")
        .and_then(Value::as_object)
        .and_then(|e| e.get(EVENT));
    if !event.is_some_and(Value::is_object) {
        return bad("events has no back-channel logout event");
    }
    if claims.contains_key("nonce") {
        return bad("has a nonce (it could be an ID token)");
    }
    match claims.get("jti").and_then(Value::as_str) {
        Some(j) if !j.is_empty() && j.len() <= 256 => {}
        _ => return bad("no usable jti"),
    }
    let sid = claims.get("sid").and_then(Value::as_str);
    let sub = claims.get("sub").and_then(Value::as_str);
    if sid.is_none_or(str::is_empty) && sub.is_none_or(str::is_empty) {
        return bad("neither sid nor sub");
    }
    Ok(())
}

impl Auth {
    /// Handles a back-channel logout request's body.
    pub async fn backchannel_logout(&self, body: &[u8]) -> Reply {
        match self.logout_token(body).await {
            Ok(done) => {
                info!("audit {done} route=- path={PATH} decision=revoke reason=backchannel");
                Reply::json(200, String::new())
            }
            Err(e) => {
                warn!("back-channel logout refused: {e}");
                self.count_denial(Reason::BadSession);
                reply_error(&e)
            }
        }
    }

    /// Verifies the token and records the revocation; returns what was revoked (for the log).
    async fn logout_token(&self, body: &[u8]) -> Result<String, LogoutError> {
        let token = form_token(body).ok_or(LogoutError::NoToken)?;
        let label = |r: Reason| LogoutError::Token(r.label());
        let head = verify::inspect_typed(&token, LOGOUT_TOKEN_TYPES, verify::MAX_TOKEN_BYTES)
            .map_err(label)?;
        let (_, issuer, key) = self.key_for(&head).await.map_err(label)?;
        let cfg = &issuer.config;
        // Only a client hubgate logs in with receives logout tokens (their audience).
        let client_id = cfg
            .client_id
            .as_deref()
            .ok_or(LogoutError::Token("the issuer has no client-id here"))?;
        let claims = verify::signed_claims(&token, &head, issuer, &key).map_err(label)?;
        let now = now_secs();
        check_claims(
            &claims,
            &cfg.issuer,
            client_id,
            cfg.leeway.as_secs() as i64,
            now,
        )?;
        let sid = claims
            .get("sid")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty());
        let sub = claims
            .get("sub")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty());
        let revocation = match (sid, sub) {
            (Some(sid), _) => Revocation::IdpSession {
                issuer: cfg.issuer.clone(),
                sid: sid.to_string(),
            },
            // Without a session id, every credential of the subject issued until now ends:
            // by user name when it is the subject (username-claim = "sub"), else by the
            // provider subject that tokens carry and sessions keep (`psub`).
            (None, Some(sub)) if cfg.username_claim == "sub" => Revocation::User {
                user: if cfg.username_lowercase {
                    sub.to_lowercase()
                } else {
                    sub.to_string()
                },
                not_before: now,
            },
            (None, Some(sub)) => Revocation::IdpSubject {
                issuer: cfg.issuer.clone(),
                sub: sub.to_string(),
                not_before: now,
            },
            (None, None) => return Err(LogoutError::Unmatched),
        };
        let jti = claims
            .get("jti")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !self
            .revocations
            .first_use(&cfg.issuer, jti, now + MAX_AGE * 2, now)
        {
            return Err(LogoutError::Replayed);
        }

        match self.revocations.revoke(&revocation, "backchannel").await {
            Ok(()) => {}
            // Recorded here: the provider need not retry; the log says it did not spread.
            Err(super::RevokeError::NotReplicated(e)) => {
                warn!("back-channel logout recorded on this replica only: {e}")
            }
            Err(e) => {
                warn!("back-channel logout not recorded: {e}");
                // Not done: the provider may send the same token again.
                self.revocations.forget_jti(&cfg.issuer, jti);
                return Err(LogoutError::Token("hubgate cannot record it now"));
            }
        }
        Ok(match &revocation {
            Revocation::IdpSession { issuer, sid } => format!("idp_session={sid} issuer={issuer}"),
            Revocation::User { user, .. } => format!("user={user}"),
            Revocation::Session { sid } => format!("session={sid}"),
            Revocation::IdpSubject { issuer, sub, .. } => {
                format!("idp_subject={sub} issuer={issuer}")
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    fn good(now: i64) -> Value {
        serde_json::json!({
            "iss": "https://idp", "aud": "hubgate", "iat": now, "exp": now + 120,
            "jti": "j1", "sid": "s1", "sub": "alice",
            "events": { EVENT: {} },
        })
    }

    #[test]
    fn logout_token_claims() {
        let now = 1_000_000;
        let check = |v: Value| check_claims(&claims(v), "https://idp", "hubgate", 5, now);
        assert_eq!(check(good(now)), Ok(()));
        let with = |k: &str, v: Value| {
            let mut c = good(now);
            c[k] = v;
            check(c)
        };
        let without = |k: &str| {
            let mut c = claims(good(now));
            c.remove(k);
            check(Value::Object(c))
        };
        assert!(with("iss", "https://other".into()).is_err());
        assert!(with("aud", "jupyterhub".into()).is_err());
        assert!(with("iat", (now + 60).into()).is_err());
        assert!(with("iat", (now - MAX_AGE - 60).into()).is_err());
        assert!(with("exp", (now - 60).into()).is_err());
        assert!(with("events", serde_json::json!({"other": {}})).is_err());
        assert!(with("events", serde_json::json!({ EVENT: "x" })).is_err());
        assert!(with("nonce", "n".into()).is_err());
        assert!(without("jti").is_err());
        assert!(without("iat").is_err());
        assert!(without("events").is_err());
        assert_eq!(without("sid"), Ok(()));
        assert_eq!(without("sub"), Ok(()));
        let mut neither = claims(good(now));
        neither.remove("sid");
        neither.remove("sub");
        assert!(check(Value::Object(neither)).is_err());
    }

    #[test]
    fn form_body() {
        assert_eq!(form_token(b"logout_token=a.b.c").as_deref(), Some("a.b.c"));
        assert_eq!(
            form_token(b"x=1&logout_token=a%2Eb.c").as_deref(),
            Some("a.b.c")
        );
        assert_eq!(form_token(b"token=a.b.c"), None);
        assert_eq!(form_token(&[0xff, 0xfe]), None);
    }
}
