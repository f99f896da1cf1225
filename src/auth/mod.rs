//! Authentication and authorisation in front of the route table.
//!
//! Per request: find exactly one credential (Bearer token, hubgate's session cookie, or —
//! websocket upgrades only, when enabled — a query parameter), verify it (a cache keyed by
//! the credential's hash skips repeated signature checks), then decide with the path's
//! policy and the matched route's owner. The decision is made on the canonical path, which
//! is also what is forwarded. Reasons go to the log and metrics, never to the client.

mod cache;
mod keys;
pub mod login;
mod session;
mod verify;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use log::{info, warn};
use pingora::http::RequestHeader;
use prometheus::IntCounter;

pub use keys::{parse_key_set, IssuerKeys};
pub use session::{strip_own_cookies, CookieKey, LOGIN_COOKIE, SESSION_COOKIE};
pub use verify::{Identity, Verified, MAX_TOKEN_BYTES};

use crate::config::auth::{Access, AuditLog, AuthConfig};
use crate::http_client::HttpClient;
use crate::metrics::Metrics;
use crate::proxy::Resolver;
use crate::routes::Route;

/// Why a request was refused (the metric label and log reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    MissingCredential,
    MultipleCredentials,
    Malformed,
    TooLarge,
    UnknownIssuer,
    UnknownKey,
    BadSignature,
    BadAlgorithm,
    Expired,
    NotYetValid,
    IssuedInFuture,
    WrongAudience,
    WrongIssuer,
    MissingClaim,
    MfaRequired,
    AuthTooOld,
    NoUsername,
    KeysUnavailable,
    NotOwner,
    NotInGroup,
    OriginMismatch,
    BadSession,
    BadPath,
}

impl Reason {
    const ALL: [Reason; 23] = [
        Reason::MissingCredential,
        Reason::MultipleCredentials,
        Reason::Malformed,
        Reason::TooLarge,
        Reason::UnknownIssuer,
        Reason::UnknownKey,
        Reason::BadSignature,
        Reason::BadAlgorithm,
        Reason::Expired,
        Reason::NotYetValid,
        Reason::IssuedInFuture,
        Reason::WrongAudience,
        Reason::WrongIssuer,
        Reason::MissingClaim,
        Reason::MfaRequired,
        Reason::AuthTooOld,
        Reason::NoUsername,
        Reason::KeysUnavailable,
        Reason::NotOwner,
        Reason::NotInGroup,
        Reason::OriginMismatch,
        Reason::BadSession,
        Reason::BadPath,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Reason::MissingCredential => "missing_credential",
            Reason::MultipleCredentials => "multiple_credentials",
            Reason::Malformed => "malformed",
            Reason::TooLarge => "too_large",
            Reason::UnknownIssuer => "unknown_issuer",
            Reason::UnknownKey => "unknown_key",
            Reason::BadSignature => "bad_signature",
            Reason::BadAlgorithm => "bad_algorithm",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::IssuedInFuture => "issued_in_future",
            Reason::WrongAudience => "wrong_audience",
            Reason::WrongIssuer => "wrong_issuer",
            Reason::MissingClaim => "missing_claim",
            Reason::MfaRequired => "mfa_required",
            Reason::AuthTooOld => "auth_too_old",
            Reason::NoUsername => "no_username",
            Reason::KeysUnavailable => "keys_unavailable",
            Reason::NotOwner => "not_owner",
            Reason::NotInGroup => "not_in_group",
            Reason::OriginMismatch => "origin_mismatch",
            Reason::BadSession => "bad_session",
            Reason::BadPath => "bad_path",
        }
    }

    /// The HTTP status a denial for this reason gets.
    pub fn status(self) -> u16 {
        match self {
            Reason::MultipleCredentials | Reason::BadPath => 400,
            Reason::KeysUnavailable => 503,
            Reason::MfaRequired
            | Reason::AuthTooOld
            | Reason::NoUsername
            | Reason::NotOwner
            | Reason::NotInGroup
            | Reason::OriginMismatch => 403,
            _ => 401,
        }
    }

    /// What the user is told (generic: the precise reason stays in the log).
    pub fn message(self) -> &'static str {
        match self {
            Reason::NotOwner => "This server belongs to another user.",
            Reason::MfaRequired | Reason::AuthTooOld => {
                "Multi-factor authentication is required. Please log in again with your second factor."
            }
            Reason::NoUsername | Reason::NotInGroup => "Your account is not active for this service.",
            Reason::OriginMismatch => "Cross-site request refused.",
            Reason::MultipleCredentials => "More than one credential was sent; send exactly one.",
            Reason::KeysUnavailable => "The login service is not available right now. Please try again in a minute.",
            Reason::BadPath => "This address is not valid.",
            // Every 401 says the same: expired and forged credentials are not told apart.
            _ => "Please log in: your login is missing or has expired.",
        }
    }
}

/// Which credential a request carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialKind {
    Bearer,
    Session,
    Query,
}

/// An allowed request's identity and how long its credential lasts.
#[derive(Debug, Clone)]
pub struct Allowed {
    pub identity: Arc<Identity>,
    /// Seconds since the epoch after which the credential is no longer valid.
    pub expires_at: i64,
    pub kind: CredentialKind,
    /// Why it was allowed (metric label).
    pub why: &'static str,
}

/// The outcome of the check.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// A public path: no credential needed.
    Public,
    /// Allowed.
    Allow(Allowed),
    /// Refused.
    Deny {
        reason: Reason,
        identity: Option<Arc<Identity>>,
        /// Whether a credential was presented (for `WWW-Authenticate: error="invalid_token"`).
        presented: bool,
    },
}

struct Counters {
    deny: Vec<IntCounter>,
    allow: [IntCounter; 5],
}

const ALLOW_LABELS: [&str; 5] = ["public", "authenticated", "owner", "admin", "group"];

fn allow_index(why: &str) -> usize {
    ALLOW_LABELS.iter().position(|l| *l == why).unwrap_or(1)
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> i64 {
    crate::routes::now_ms() / 1000
}

/// Everything authentication needs at request time.
pub struct Auth {
    pub config: AuthConfig,
    pub issuers: Vec<Arc<IssuerKeys>>,
    pub cookie_key: CookieKey,
    cache: cache::VerifiedCache,
    pub client: Arc<HttpClient>,
    pub resolver: Arc<Resolver>,
    counters: Counters,
}

impl Auth {
    /// Builds authentication from its configuration.
    pub fn new(config: AuthConfig, client: Arc<HttpClient>, metrics: &Metrics) -> Auth {
        let secret = match &config.session_secret {
            Some(s) => s.clone(),
            None => {
                warn!(
                    "auth.session-secret-file is not set: session cookies are signed with a random key and end when hubgate restarts (and are not shared between replicas)"
                );
                let mut s = vec![0u8; 32];
                if getrandom::fill(&mut s).is_err() {
                    // Without randomness no session can be trusted: make every cookie fail.
                    s = Vec::new();
                }
                s
            }
        };
        let deny = Reason::ALL
            .iter()
            .map(|r| {
                metrics
                    .auth_decisions
                    .with_label_values(&["deny", r.label()])
            })
            .collect();
        let allow = ALLOW_LABELS.map(|l| metrics.auth_decisions.with_label_values(&["allow", l]));
        let issuers = config
            .issuers
            .iter()
            .cloned()
            .map(|c| Arc::new(IssuerKeys::new(c)))
            .collect();
        Auth {
            cache: cache::VerifiedCache::new(config.cache_size, config.cache_ttl),
            cookie_key: CookieKey::new(if secret.is_empty() { b"\0" } else { &secret }),
            config,
            issuers,
            client,
            resolver: Arc::new(Resolver::default()),
            counters: Counters { deny, allow },
        }
    }

    /// A one-line description for the startup log.
    pub fn describe(&self) -> String {
        let issuers: Vec<String> = self
            .issuers
            .iter()
            .map(|i| {
                let login = if i.config.client_id.is_some() {
                    ", browser login"
                } else {
                    ""
                };
                format!(
                    "{} (MFA {}{login})",
                    i.config.issuer,
                    if i.config.require_mfa {
                        "required"
                    } else {
                        "not required"
                    }
                )
            })
            .collect();
        format!("authentication on; issuers: {}", issuers.join(", "))
    }

    /// Whether every issuer has a usable key set (the health endpoint's readiness).
    pub fn ready(&self) -> bool {
        self.issuers.iter().all(|i| i.ready())
    }

    /// Starts the key-set refresh tasks (call from within a tokio runtime).
    pub fn spawn_refresh(self: &Arc<Self>) {
        for issuer in &self.issuers {
            let issuer = issuer.clone();
            let auth = Arc::downgrade(self);
            let client = self.client.clone();
            let resolver = self.resolver.clone();
            tokio::spawn(async move {
                let watcher = issuer.clone();
                let refresh = tokio::spawn(issuer.run_refresh(client, resolver));
                let mut seen = watcher.removed.load_full();
                loop {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    // This configuration was replaced by a reload and is no longer used.
                    let Some(auth) = auth.upgrade() else {
                        refresh.abort();
                        break;
                    };
                    // Purge cached verifications whose key left the set.
                    let now = watcher.removed.load_full();
                    if !Arc::ptr_eq(&now, &seen) {
                        auth.cache.purge_kids(&now);
                        seen = now;
                    }
                }
            });
        }
    }

    /// Loads every issuer's keys once (for a reload: a new configuration is used only when
    /// all its issuers have keys).
    pub async fn load_all(&self) -> Result<(), String> {
        for issuer in &self.issuers {
            issuer
                .load(&self.client, &self.resolver)
                .await
                .map_err(|e| format!("{}: {e}", issuer.config.issuer))?;
        }
        Ok(())
    }

    /// The access rule for a (decoded, canonical) path: the longest matching prefix.
    pub fn access_for(&self, path: &str) -> &Access {
        for p in &self.config.policies {
            let matches = if p.prefix.ends_with('/') {
                path.starts_with(&p.prefix) || path == p.prefix.trim_end_matches('/')
            } else {
                path == p.prefix
                    || path
                        .strip_prefix(p.prefix.as_str())
                        .is_some_and(|rest| rest.starts_with('/'))
            };
            if matches {
                return &p.access;
            }
        }
        &Access::Authenticated
    }

    /// Extracts the request's one credential (borrowed from the request where it can be: this
    /// runs on every request, and a token is about a kilobyte).
    fn credential<'r>(
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
        for value in req.headers.get_all(http::header::AUTHORIZATION) {
            if let Some(token) = bearer_token(value.as_bytes())? {
                add(CredentialKind::Bearer, Cow::Borrowed(token))?;
            }
        }
        let cookies = req
            .headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok());
        for v in session::cookie_value(cookies, SESSION_COOKIE) {
            add(CredentialKind::Session, Cow::Borrowed(v))?;
        }
        if websocket {
            if let Some(param) = &self.config.query_param {
                if let Some(v) = query_value(req.raw_path(), param) {
                    add(CredentialKind::Query, Cow::Owned(v))?;
                }
            }
        }
        Ok(found)
    }

    /// Verifies an identity-provider token (Bearer or query parameter).
    pub async fn verify_token(
        &self,
        token: &str,
        expect_aud: Option<&[String]>,
        nonce: Option<&str>,
    ) -> Result<Verified, Reason> {
        let head = verify::inspect(token)?;
        let (index, issuer) = self
            .issuers
            .iter()
            .enumerate()
            .find(|(_, i)| i.config.issuer == head.iss)
            .ok_or(Reason::UnknownIssuer)?;
        let key = match issuer.get(&head.kid) {
            Err(keys::NoKeySet) => return Err(Reason::KeysUnavailable),
            Ok(Some(k)) => k,
            Ok(None) => {
                // Boxed: this rare path's future (a key-set fetch) is ~11 KiB, and unboxed it
                // made every request's future that large, with authentication off as well
                // (the proxy's request filter holds `check`'s future): an 11 KiB copy per request.
                Box::pin(issuer.refetch_for_unknown_kid(&self.client, &self.resolver)).await;
                self.cache.purge_kids(&issuer.removed.load());
                match issuer.get(&head.kid) {
                    Ok(Some(k)) => k,
                    Ok(None) => return Err(Reason::UnknownKey),
                    Err(keys::NoKeySet) => return Err(Reason::KeysUnavailable),
                }
            }
        };
        let expect = verify::Expect {
            audiences: expect_aud.unwrap_or(&issuer.config.audiences),
            nonce,
        };
        verify::verify_with(token, &head, issuer, index, &key, &expect, now_secs())
    }

    fn verify_session(&self, value: &str, now: i64) -> Result<Verified, Reason> {
        let claims = self
            .cookie_key
            .read_session(value)
            .ok_or(Reason::BadSession)?;
        let issuer = self.issuers.get(claims.idp).ok_or(Reason::BadSession)?;
        let cfg = &issuer.config;
        if cfg.require_mfa && now - claims.auth_time > cfg.max_auth_age.as_secs() as i64 {
            return Err(Reason::AuthTooOld);
        }
        let admin = claims.groups.iter().any(|g| cfg.admin_groups.contains(g));
        Ok(Verified {
            identity: Arc::new(Identity {
                user: claims.sub,
                email: claims.email,
                groups: claims.groups,
                admin,
                issuer: claims.idp,
            }),
            expires_at: claims.exp,
            auth_time: Some(claims.auth_time),
            kid: Arc::from(""),
        })
    }

    /// Verifies a credential of a known kind, using the verified-credential cache.
    pub async fn verify_credential(
        &self,
        kind: CredentialKind,
        value: &str,
    ) -> Result<Verified, Reason> {
        let now = now_secs();
        let key = cache::VerifiedCache::key(kind, value);
        if let Some(hit) = self.cache.get(&key, now) {
            // The MFA age can run out while a token is cached.
            if let Some(issuer) = self.issuers.get(hit.identity.issuer) {
                let cfg = &issuer.config;
                let too_old = cfg.require_mfa
                    && hit
                        .auth_time
                        .is_some_and(|t| now - t > cfg.max_auth_age.as_secs() as i64);
                if !too_old {
                    return Ok(hit);
                }
            }
        }
        let verified = match kind {
            CredentialKind::Session => self.verify_session(value, now)?,
            _ => self.verify_token(value, None, None).await?,
        };
        self.cache.insert(key, &verified, now);
        Ok(verified)
    }

    /// Decides on a request: `path` is the canonical decoded path, `route` the matched route.
    pub async fn check(
        &self,
        req: &RequestHeader,
        path: &str,
        route: Option<&Route>,
        websocket: bool,
    ) -> Outcome {
        let access = self.access_for(path);
        if *access == Access::Public {
            return Outcome::Public;
        }
        let deny = |reason, identity, presented| Outcome::Deny {
            reason,
            identity,
            presented,
        };
        let (kind, value) = match self.credential(req, websocket) {
            Ok(Some(c)) => c,
            Ok(None) => return deny(Reason::MissingCredential, None, false),
            Err(r) => return deny(r, None, true),
        };
        let verified = match self.verify_credential(kind, &value).await {
            Ok(v) => v,
            Err(r) => return deny(r, None, true),
        };
        let identity = verified.identity;
        if websocket && kind == CredentialKind::Session && !self.origin_ok(req) {
            return deny(Reason::OriginMismatch, Some(identity), true);
        }
        let why = match access {
            Access::Public | Access::Authenticated => "authenticated",
            Access::Owner => match route.and_then(|r| r.user.as_deref()) {
                Some(owner) if owner == identity.user => "owner",
                Some(_) if identity.admin => "admin",
                Some(_) => return deny(Reason::NotOwner, Some(identity), true),
                // A route without an owner (the hub's, while the server is not running).
                None => "authenticated",
            },
            Access::Group(groups) => {
                if identity.groups.iter().any(|g| groups.contains(g)) {
                    "group"
                } else if identity.admin {
                    "admin"
                } else {
                    return deny(Reason::NotInGroup, Some(identity), true);
                }
            }
        };
        Outcome::Allow(Allowed {
            identity,
            expires_at: verified.expires_at,
            kind,
            why,
        })
    }

    fn origin_ok(&self, req: &RequestHeader) -> bool {
        let Some(origin) = req
            .headers
            .get(http::header::ORIGIN)
            .and_then(|o| o.to_str().ok())
        else {
            // Browsers always send Origin on websocket upgrades; other clients are not CSWSH.
            return true;
        };
        match &self.config.public_origin {
            Some(expected) => origin.eq_ignore_ascii_case(expected),
            None => {
                let host = req
                    .headers
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or("");
                origin
                    .split_once("://")
                    .is_some_and(|(_, h)| h.eq_ignore_ascii_case(host))
            }
        }
    }

    /// Counts a refusal that happened outside [`Auth::check`] (the login callback).
    pub fn count_denial(&self, reason: Reason) {
        if let Some(i) = Reason::ALL.iter().position(|r| *r == reason) {
            self.counters.deny[i].inc();
        }
    }

    /// Counts and (per `audit-log`) logs a decision.
    pub fn record(&self, outcome: &Outcome, route: Option<&Route>, path: &str) {
        let (decision, user, reason) = match outcome {
            Outcome::Public => {
                self.counters.allow[0].inc();
                return;
            }
            Outcome::Allow(a) => {
                self.counters.allow[allow_index(a.why)].inc();
                ("allow", a.identity.user.as_str(), a.why)
            }
            Outcome::Deny {
                reason, identity, ..
            } => {
                if let Some(i) = Reason::ALL.iter().position(|r| r == reason) {
                    self.counters.deny[i].inc();
                }
                (
                    "deny",
                    identity.as_ref().map_or("-", |i| i.user.as_str()),
                    reason.label(),
                )
            }
        };
        let log = match self.config.audit_log {
            AuditLog::All => true,
            AuditLog::Denials => decision == "deny",
            AuditLog::Off => false,
        };
        if log {
            let route = route.map_or("-", |r| &*r.key);
            info!(
                "audit user={user} route={route} path={path} decision={decision} reason={reason}"
            );
        }
    }
}

/// The token of one `Authorization` value: `Ok(None)` for another scheme (e.g. JupyterHub's
/// `token …`, which goes through to the hub), `Malformed` for a value that is not visible
/// ASCII (what `HeaderValue::to_str` accepts), `MultipleCredentials` for a Bearer value that
/// holds more than one token.
fn bearer_token(value: &[u8]) -> Result<Option<&str>, Reason> {
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

/// A query parameter's value (form-decoded), from a raw request target.
fn query_value(raw: &[u8], name: &str) -> Option<String> {
    let raw = std::str::from_utf8(raw).ok()?;
    let query = raw.split_once('?')?.1;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| {
            percent_encoding::percent_decode_str(&v.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

/// The request target's query without the credential parameter (it never reaches targets).
pub fn strip_query_param(query: &str, name: &str) -> String {
    query
        .split('&')
        .filter(|pair| !pair.is_empty() && pair.split('=').next() != Some(name))
        .collect::<Vec<_>>()
        .join("&")
}

/// Key-set gauges per issuer, computed at scrape time.
pub struct KeySetMetrics {
    /// The authentication in use now (it can be swapped by a reload).
    current: Box<dyn Fn() -> Option<Arc<Auth>> + Send + Sync>,
    descs: Vec<prometheus::core::Desc>,
}

impl KeySetMetrics {
    /// Metrics over `auth`'s issuers.
    pub fn new(
        current: Box<dyn Fn() -> Option<Arc<Auth>> + Send + Sync>,
    ) -> prometheus::Result<KeySetMetrics> {
        let desc = |name: &str, help: &str| {
            prometheus::core::Desc::new(
                name.into(),
                help.into(),
                vec!["issuer".into()],
                Default::default(),
            )
        };
        Ok(KeySetMetrics {
            current,
            descs: vec![
                desc(
                    "hubgate_auth_key_set_age_seconds",
                    "Seconds since the issuer's key set was fetched",
                )?,
                desc(
                    "hubgate_auth_key_refresh_failures_total",
                    "Failed key-set fetches",
                )?,
            ],
        })
    }
}

impl prometheus::core::Collector for KeySetMetrics {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let Some(auth) = (self.current)() else {
            return Vec::new();
        };
        let age = prometheus::GaugeVec::new(
            prometheus::Opts::new(
                "hubgate_auth_key_set_age_seconds",
                "Seconds since the issuer's key set was fetched",
            ),
            &["issuer"],
        );
        let failures = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "hubgate_auth_key_refresh_failures_total",
                "Failed key-set fetches",
            ),
            &["issuer"],
        );
        let (Ok(age), Ok(failures)) = (age, failures) else {
            return Vec::new();
        };
        for issuer in &auth.issuers {
            let name = issuer.config.issuer.as_str();
            // Never fetched: report "infinitely" stale so the alert fires.
            let secs = issuer.age().map_or(f64::INFINITY, |a| a.as_secs_f64());
            age.with_label_values(&[name]).set(secs);
            failures
                .with_label_values(&[name])
                .inc_by(issuer.failures.load(std::sync::atomic::Ordering::Relaxed));
        }
        let mut out = prometheus::core::Collector::collect(&age);
        out.extend(prometheus::core::Collector::collect(&failures));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params() {
        assert_eq!(
            query_value(b"/a?x=1&hubgate_token=abc", "hubgate_token").as_deref(),
            Some("abc")
        );
        assert_eq!(query_value(b"/a?x=1", "hubgate_token"), None);
        assert_eq!(
            strip_query_param("x=1&hubgate_token=abc&y=2", "hubgate_token"),
            "x=1&y=2"
        );
        assert_eq!(strip_query_param("hubgate_token=abc", "hubgate_token"), "");
    }

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
    fn per_request_future_is_small() {
        // The proxy's request filter holds `check`'s future on every request, authentication
        // on or off: a rare path's large future inlined here (the key-set refetch, 11 KiB)
        // once cost an 11 KiB copy per request.
        let dir = std::env::temp_dir().join(format!("hubgate-auth-future-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let jwks = dir.join("jwks.json");
        std::fs::write(&jwks, r#"{"keys": []}"#).expect("jwks written");
        let section: crate::config::auth::AuthSection = toml::from_str(&format!(
            "[[issuers]]\nissuer = \"https://idp\"\naudiences = [\"jupyterhub\"]\njwks-file = {:?}\n",
            jwks.display().to_string()
        ))
        .expect("auth section");
        let config = section.validate().expect("valid auth config");
        let _ = std::fs::remove_dir_all(&dir);
        let metrics = Metrics::new(Arc::new(crate::routes::RouteTable::new())).expect("metrics");
        let client = Arc::new(HttpClient::new(Arc::new(Default::default()), false));
        let auth = Auth::new(config, client, &metrics);
        let req = RequestHeader::build("GET", b"/user/a/", None).expect("request");
        let size = std::mem::size_of_val(&auth.check(&req, "/user/a/", None, false));
        assert!(size <= 2048, "Auth::check's future is {size} bytes");
    }

    #[test]
    fn reasons_have_statuses_and_labels() {
        for r in Reason::ALL {
            assert!(matches!(r.status(), 400 | 401 | 403 | 503));
            assert!(!r.label().is_empty());
            assert!(!r.message().is_empty());
        }
    }
}
