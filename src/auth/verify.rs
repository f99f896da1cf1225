//! Verification of an identity provider's token: the check list in `docs/security.md`,
//! "Token checks". `jsonwebtoken` checks only the signature (with the
//! algorithm pinned to the key); every claim is checked here, with explicit leeway, so no
//! crate default (60 s leeway, unchecked `nbf`, optional `iss`/`aud`) can weaken it.

use std::sync::Arc;

use base64::Engine;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};

use super::keys::IssuerKeys;
use super::Reason;

/// Tokens longer than this are refused before any decoding.
pub const MAX_TOKEN_BYTES: usize = 8192;

/// The limit for an ID token at the login callback. It comes from the issuer's token endpoint
/// over hubgate's own connection (body at most 1 MiB), not from a client, and a user in
/// hundreds of groups gets an ID token well over [`MAX_TOKEN_BYTES`].
pub const MAX_ID_TOKEN_BYTES: usize = 64 * 1024;

/// Who a verified credential belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The JupyterHub user name.
    pub user: String,
    pub email: Option<String>,
    pub groups: Vec<String>,
    /// Member of one of the issuer's admin groups.
    pub admin: bool,
    /// Index of the issuer in the configuration.
    pub issuer: usize,
    /// When the credential was issued (`iat`, else `auth_time`): a user's revocation refuses
    /// credentials issued at or before it.
    pub issued_at: Option<i64>,
    /// hubgate's session id (session cookies only), for revoking one session.
    pub sid: Option<String>,
    /// The identity provider's session id (`sid` claim), for back-channel logout.
    pub idp_sid: Option<String>,
    /// The identity provider's subject (`sub`), for back-channel logout by subject.
    pub idp_sub: Option<String>,
}

/// A verified credential: identity and the instants that bound its use.
#[derive(Debug, Clone)]
pub struct Verified {
    pub identity: Arc<Identity>,
    /// `exp` (seconds since the epoch).
    pub expires_at: i64,
    /// `auth_time`, when present.
    pub auth_time: Option<i64>,
    /// The signing key's id (to purge the cache when the key leaves the set).
    pub kid: Arc<str>,
}

fn b64(seg: &str) -> Result<Vec<u8>, Reason> {
    if seg
        .bytes()
        .any(|b| !(b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
    {
        return Err(Reason::Malformed);
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(seg)
        .map_err(|_| Reason::Malformed)
}

fn number(claims: &Map<String, Value>, name: &str) -> Result<Option<i64>, Reason> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(f) if (0.0..1e12).contains(&f) => Ok(Some(f as i64)),
            _ => Err(Reason::Malformed),
        },
        Some(_) => Err(Reason::Malformed),
    }
}

/// Whether the token's `acr`/`amr` show multi-factor authentication under the issuer's rule.
fn has_mfa(claims: &Map<String, Value>, acr: &[String], amr: &[String]) -> bool {
    let acr_ok = claims
        .get("acr")
        .and_then(Value::as_str)
        .is_some_and(|a| acr.iter().any(|x| x == a));
    // `amr` must be an array of strings: a string "mfa" is a type error, not a match.
    let amr_ok = match claims.get("amr") {
        Some(Value::Array(items)) => {
            items.iter().all(Value::is_string)
                && items
                    .iter()
                    .filter_map(Value::as_str)
                    .any(|m| amr.iter().any(|x| x == m))
        }
        _ => false,
    };
    acr_ok || amr_ok
}

/// The user name from a claim, as JupyterHub would name the user.
fn username(claims: &Map<String, Value>, claim: &str, lowercase: bool) -> Result<String, Reason> {
    let raw = claims
        .get(claim)
        .and_then(Value::as_str)
        .ok_or(Reason::NoUsername)?;
    let name = if lowercase {
        raw.to_lowercase()
    } else {
        raw.to_string()
    };
    if name.is_empty() || name.len() > 255 || name.chars().any(|c| c.is_control() || c == '/') {
        return Err(Reason::NoUsername);
    }
    Ok(name)
}

fn groups(claims: &Map<String, Value>, claim: &str) -> Vec<String> {
    match claims.get(claim) {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|g| g.as_str().map(str::to_string))
            .collect(),
        Some(Value::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    }
}

/// The parts of a token read before its signature is checked, only to pick issuer and key.
pub struct Unverified {
    pub alg: Algorithm,
    pub kid: String,
    pub iss: String,
}

/// The `typ` header values of access and ID tokens.
const TOKEN_TYPES: &[&str] = &["jwt", "at+jwt", "application/at+jwt", "application/jwt"];
/// The `typ` of a back-channel logout token (OpenID Connect Back-Channel Logout 1.0 §2.4):
/// accepted only where a logout token is expected, so one is never taken for a credential.
pub const LOGOUT_TOKEN_TYPES: &[&str] = &["logout+jwt", "application/logout+jwt", "jwt"];

/// Shape, header and issuer checks (steps 2–4); no key needed yet.
pub fn inspect(token: &str) -> Result<Unverified, Reason> {
    inspect_typed(token, TOKEN_TYPES, MAX_TOKEN_BYTES)
}

/// [`inspect`] with another size limit (ID tokens at the login callback).
pub fn inspect_within(token: &str, max_bytes: usize) -> Result<Unverified, Reason> {
    inspect_typed(token, TOKEN_TYPES, max_bytes)
}

/// [`inspect`] accepting the `typ` values in `types` (lowercase), up to `max_bytes`.
pub fn inspect_typed(token: &str, types: &[&str], max_bytes: usize) -> Result<Unverified, Reason> {
    if token.len() > max_bytes {
        return Err(Reason::TooLarge);
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Reason::Malformed);
    };
    if s.is_empty() {
        return Err(Reason::Malformed);
    }
    let header: Map<String, Value> =
        serde_json::from_slice(&b64(h)?).map_err(|_| Reason::Malformed)?;
    b64(s)?;
    if header.contains_key("crit") {
        // RFC 7515 §4.1.11: unknown critical parameters must be refused; we know none.
        return Err(Reason::Malformed);
    }
    let alg: Algorithm = header
        .get("alg")
        .and_then(Value::as_str)
        .and_then(|a| a.parse().ok())
        .ok_or(Reason::BadAlgorithm)?;
    if let Some(typ) = header.get("typ") {
        let typ = typ.as_str().ok_or(Reason::Malformed)?.to_ascii_lowercase();
        if !types.contains(&typ.as_str()) {
            return Err(Reason::Malformed);
        }
    }
    let kid = match header.get("kid") {
        Some(Value::String(k)) if !k.is_empty() && k.len() <= 256 => k.clone(),
        Some(_) => return Err(Reason::Malformed),
        None => return Err(Reason::UnknownKey),
    };
    let payload: Map<String, Value> =
        serde_json::from_slice(&b64(p)?).map_err(|_| Reason::Malformed)?;
    let iss = match payload.get("iss") {
        Some(Value::String(i)) => i.clone(),
        Some(_) => return Err(Reason::WrongIssuer),
        None => return Err(Reason::MissingClaim),
    };
    Ok(Unverified { alg, kid, iss })
}

/// What the caller expects of the token besides the issuer's rules.
pub struct Expect<'a> {
    /// Audiences to accept (the issuer's, or the login client id for ID tokens).
    pub audiences: &'a [String],
    /// For ID tokens from the login flow: the nonce sent with the request.
    pub nonce: Option<&'a str>,
}

/// The claims of a token whose signature checks with `key` under the issuer's algorithms
/// (step 5); no claim is checked here.
pub fn signed_claims(
    token: &str,
    head: &Unverified,
    issuer: &IssuerKeys,
    key: &super::keys::VerifyKey,
) -> Result<Map<String, Value>, Reason> {
    let cfg = &issuer.config;
    if !cfg.algorithms.contains(&head.alg) || !key.algorithms.contains(&head.alg) {
        return Err(Reason::BadAlgorithm);
    }
    let mut validation = Validation::new(head.alg);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    let data =
        jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::InvalidSignature => Reason::BadSignature,
                K::InvalidAlgorithm | K::InvalidAlgorithmName | K::InvalidKeyFormat => {
                    Reason::BadAlgorithm
                }
                _ => Reason::Malformed,
            }
        })?;
    Ok(data.claims)
}

/// Whether `claims`' `aud` (a string or an array of strings) names one of `audiences`.
pub fn audience_ok(claims: &Map<String, Value>, audiences: &[String]) -> Result<bool, Reason> {
    match claims.get("aud") {
        Some(Value::String(a)) => Ok(audiences.iter().any(|x| x == a)),
        Some(Value::Array(items)) => Ok(items.iter().all(Value::is_string)
            && items
                .iter()
                .filter_map(Value::as_str)
                .any(|a| audiences.iter().any(|x| x == a))),
        None => Err(Reason::MissingClaim),
        Some(_) => Ok(false),
    }
}

/// A numeric date claim (`exp`, `iat`, …), if present; a non-number is malformed.
pub fn date_claim(claims: &Map<String, Value>, name: &str) -> Result<Option<i64>, Reason> {
    number(claims, name)
}

/// Signature and claim checks (steps 5–9) with the key already selected.
pub fn verify_with(
    token: &str,
    head: &Unverified,
    issuer: &IssuerKeys,
    issuer_index: usize,
    key: &super::keys::VerifyKey,
    expect: &Expect<'_>,
    now: i64,
) -> Result<Verified, Reason> {
    let cfg = &issuer.config;
    let claims = signed_claims(token, head, issuer, key)?;
    let leeway = cfg.leeway.as_secs() as i64;

    if claims.get("iss").and_then(Value::as_str) != Some(cfg.issuer.as_str()) {
        return Err(Reason::WrongIssuer);
    }
    if !audience_ok(&claims, expect.audiences)? {
        return Err(Reason::WrongAudience);
    }
    let exp = number(&claims, "exp")?.ok_or(Reason::MissingClaim)?;
    if now > exp + leeway {
        return Err(Reason::Expired);
    }
    if number(&claims, "nbf")?.is_some_and(|nbf| nbf > now + leeway) {
        return Err(Reason::NotYetValid);
    }
    if number(&claims, "iat")?.is_some_and(|iat| iat > now + leeway) {
        return Err(Reason::IssuedInFuture);
    }
    match claims.get("sub") {
        Some(Value::String(s)) if !s.is_empty() => {}
        _ => return Err(Reason::MissingClaim),
    }
    if let Some(nonce) = expect.nonce {
        if claims.get("nonce").and_then(Value::as_str) != Some(nonce) {
            return Err(Reason::Malformed);
        }
    }
    let auth_time = number(&claims, "auth_time")?;
    if cfg.require_mfa {
        if !has_mfa(&claims, &cfg.mfa_acr, &cfg.mfa_amr) {
            return Err(Reason::MfaRequired);
        }
        match auth_time {
            None => return Err(Reason::MfaRequired),
            Some(t) if now - t > cfg.max_auth_age.as_secs() as i64 => {
                return Err(Reason::AuthTooOld)
            }
            Some(_) => {}
        }
    }
    let user = username(&claims, &cfg.username_claim, cfg.username_lowercase)?;
    let groups = groups(&claims, &cfg.groups_claim);
    let admin = groups.iter().any(|g| cfg.admin_groups.contains(g));
    let email = claims
        .get("email")
        .and_then(Value::as_str)
        .map(str::to_string);
    let issued_at = number(&claims, "iat")?.or(auth_time);
    let idp_sid = claims
        .get("sid")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty() && s.len() <= 256)
        .map(str::to_string);
    Ok(Verified {
        identity: Arc::new(Identity {
            user,
            email,
            groups,
            admin,
            issuer: issuer_index,
            issued_at,
            sid: None,
            idp_sid,
            idp_sub: claims
                .get("sub")
                .and_then(Value::as_str)
                .map(str::to_string),
        }),
        expires_at: exp + leeway,
        auth_time,
        kid: Arc::from(head.kid.as_str()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(v: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
    }

    #[test]
    fn inspect_rejects_bad_shapes() {
        let h = seg(r#"{"alg":"RS256","kid":"k1"}"#);
        let p = seg(r#"{"iss":"https://idp"}"#);
        assert!(inspect(&format!("{h}.{p}.c2ln")).is_ok());
        assert_eq!(inspect(&format!("{h}.{p}")).err(), Some(Reason::Malformed));
        assert_eq!(inspect(&format!("{h}.{p}.")).err(), Some(Reason::Malformed));
        assert_eq!(
            inspect(&format!("{h}.{p}.c2ln.x")).err(),
            Some(Reason::Malformed)
        );
        assert_eq!(
            inspect(&format!("{h}=.{p}.c2ln")).err(),
            Some(Reason::Malformed)
        );
        let none = seg(r#"{"alg":"none","kid":"k1"}"#);
        assert_eq!(
            inspect(&format!("{none}.{p}.c2ln")).err(),
            Some(Reason::BadAlgorithm)
        );
        let crit = seg(r#"{"alg":"RS256","kid":"k1","crit":["exp"]}"#);
        assert_eq!(
            inspect(&format!("{crit}.{p}.c2ln")).err(),
            Some(Reason::Malformed)
        );
        let iss_array = seg(r#"{"iss":["https://idp"]}"#);
        assert_eq!(
            inspect(&format!("{h}.{iss_array}.c2ln")).err(),
            Some(Reason::WrongIssuer)
        );
        assert_eq!(
            inspect(&"a".repeat(MAX_TOKEN_BYTES + 1)).err(),
            Some(Reason::TooLarge)
        );
    }

    #[test]
    fn id_tokens_may_be_larger_than_bearer_tokens() {
        // An ID token of a user in 300 groups: over the Bearer limit, within the ID-token one.
        let groups: Vec<String> = (0..300)
            .map(|i| format!("project-hpc-{i:05}-climate-modelling"))
            .collect();
        let h = seg(r#"{"alg":"RS256","kid":"k1"}"#);
        let p = seg(&serde_json::json!({"iss": "https://idp", "groups": groups}).to_string());
        let token = format!("{h}.{p}.c2ln");
        assert!(token.len() > MAX_TOKEN_BYTES);
        assert_eq!(inspect(&token).err(), Some(Reason::TooLarge));
        assert!(inspect_within(&token, MAX_ID_TOKEN_BYTES).is_ok());
        let huge = "a".repeat(MAX_ID_TOKEN_BYTES + 1);
        assert_eq!(
            inspect_within(&huge, MAX_ID_TOKEN_BYTES).err(),
            Some(Reason::TooLarge)
        );
    }

    #[test]
    fn mfa_rule() {
        let m = |v: serde_json::Value| v.as_object().cloned().unwrap_or_default();
        let acr = vec!["https://refeds.org/profile/mfa".to_string()];
        let amr = vec!["mfa".to_string(), "otp".to_string()];
        assert!(has_mfa(
            &m(serde_json::json!({"acr": "https://refeds.org/profile/mfa"})),
            &acr,
            &amr
        ));
        assert!(has_mfa(
            &m(serde_json::json!({"amr": ["pwd", "otp"]})),
            &acr,
            &amr
        ));
        assert!(!has_mfa(&m(serde_json::json!({"amr": "mfa"})), &acr, &amr));
        assert!(!has_mfa(
            &m(serde_json::json!({"amr": ["pwd"], "acr": "https://refeds.org/profile/sfa"})),
            &acr,
            &amr
        ));
        assert!(!has_mfa(
            &m(serde_json::json!({"amr": ["nomfa"]})),
            &acr,
            &amr
        ));
    }
}
