//! Authentication and authorisation in front of the route table.
//!
//! Per request: find exactly one credential (Bearer token, hubgate's session cookie, or —
//! websocket upgrades only, when enabled — a query parameter), verify it (a cache keyed by
//! the credential's hash skips repeated signature checks), then decide with the path's
//! policy and the matched route's owner. The decision is made on the canonical path, which
//! is also what is forwarded. Reasons go to the log and metrics, never to the client.

pub mod backchannel;
mod cache;
mod credential;
mod denial;
pub mod grants;
mod groups;
mod keys;
pub mod login;
mod reason;
pub mod revocation;
pub(crate) mod session;
mod upstream;
pub(crate) mod verify;

use std::sync::Arc;
use std::time::Duration;

use log::{info, warn};
use pingora::http::RequestHeader;
use prometheus::IntCounter;

pub use credential::{bearer_token, CredentialKind, Extractor};
pub use keys::{parse_key_set, IssuerKeys, KeyError};
pub use reason::Reason;
pub use revocation::{Revocation, Revocations, RevokeError};
pub use session::{strip_own_cookies, CookieKey, LOGIN_COOKIE, SESSION_COOKIE};
pub use upstream::{drop_own_set_cookies, sets_own_cookie, IDENTITY_HEADERS};
pub use verify::{Identity, Verified, MAX_TOKEN_BYTES};

use crate::config::auth::{Access, AuditLog, AuthConfig};
use crate::metrics::Metrics;
use crate::net::HttpClient;
use crate::routes::Route;
use crate::time::now_secs;
use crate::web::Reply;

/// An issuer whose keys could not be loaded (a reloaded `[auth]` is then not used).
#[derive(Debug, thiserror::Error)]
#[error("{issuer}: {source}")]
pub struct LoadError {
    pub issuer: String,
    #[source]
    pub source: KeyError,
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
    allow: [IntCounter; 7],
}

const ALLOW_LABELS: [&str; 7] = [
    "public",
    "authenticated",
    "owner",
    "admin",
    "group",
    "shared",
    "role",
];

fn allow_index(why: &str) -> usize {
    ALLOW_LABELS.iter().position(|l| *l == why).unwrap_or(1)
}

/// Everything authentication needs at request time.
pub struct Auth {
    pub config: AuthConfig,
    pub issuers: Vec<Arc<IssuerKeys>>,
    pub cookie_key: CookieKey,
    cache: cache::VerifiedCache,
    pub client: Arc<HttpClient>,
    counters: Counters,
    /// The process's revocation list (kept across reloads: see [`Auth::with_revocations`]).
    pub revocations: Arc<Revocations>,
    /// Who else may use a server, learned from the hub (`[auth.hub-grants]`).
    pub grants: Option<Arc<grants::Grants>>,
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
        let grants = config
            .hub_grants
            .clone()
            .map(|g| Arc::new(grants::Grants::new(g, client.clone())));
        Auth {
            grants,
            cache: cache::VerifiedCache::new(config.cache_size, config.cache_ttl),
            cookie_key: CookieKey::new(if secret.is_empty() { b"\0" } else { &secret }),
            config,
            issuers,
            client,
            counters: Counters { deny, allow },
            revocations: Revocations::unregistered(),
        }
    }

    /// Uses the process's revocation list (shared by every `[auth]` generation) with this
    /// configuration's limits.
    pub fn with_revocations(mut self, revocations: Arc<Revocations>) -> Auth {
        revocations.configure(
            self.config.revocation_lifetime,
            self.config.revocation_capacity,
        );
        self.revocations = revocations;
        self
    }

    /// Whether a verified identity's credential was revoked.
    pub fn revoked(&self, identity: &Identity) -> bool {
        let issuer = self
            .issuers
            .get(identity.issuer)
            .map_or("", |i| i.config.issuer.as_str());
        self.revocations.is_revoked(identity, issuer, now_secs())
    }

    /// A one-line description for the startup log.
    pub fn describe(&self) -> String {
        let issuers: Vec<String> = self
            .issuers
            .iter()
            .map(|i| {
                let login = match (i.config.client_id.is_some(), i.config.step_up) {
                    (true, true) => ", browser login, step-up",
                    (true, false) => ", browser login",
                    _ => "",
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
        let grants = self
            .config
            .hub_grants
            .as_ref()
            .map(|g| {
                format!(
                    "; shares and roles from {} every {}s (unused past {}s)",
                    g.hub_api_url,
                    g.refresh.as_secs(),
                    g.max_stale.as_secs()
                )
            })
            .unwrap_or_default();
        format!("authentication on; issuers: {}{grants}", issuers.join(", "))
    }

    /// Whether every issuer has a usable key set (the health endpoint's readiness).
    pub fn ready(&self) -> bool {
        self.issuers.iter().all(|i| i.ready())
    }

    /// Starts the key-set refresh tasks (call from within a tokio runtime).
    pub fn spawn_refresh(self: &Arc<Self>) {
        if let Some(g) = &self.grants {
            // Holds only a weak reference: the loop ends when a reload drops this `Auth`.
            tokio::spawn(grants::Grants::run_refresh(Arc::downgrade(g)));
        }
        for issuer in &self.issuers {
            let issuer = issuer.clone();
            let auth = Arc::downgrade(self);
            let client = self.client.clone();
            tokio::spawn(async move {
                let watcher = issuer.clone();
                let refresh = tokio::spawn(issuer.run_refresh(client));
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
    pub async fn load_all(&self) -> Result<(), LoadError> {
        for issuer in &self.issuers {
            issuer
                .load(&self.client)
                .await
                .map_err(|source| LoadError {
                    issuer: issuer.config.issuer.clone(),
                    source,
                })?;
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

    /// The issuer a token names and the key its header picks (fetching the key set again
    /// for an unknown key id, within the issuer's refetch limit).
    async fn key_for(
        &self,
        head: &verify::Unverified,
    ) -> Result<(usize, &Arc<IssuerKeys>, Arc<keys::VerifyKey>), Reason> {
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
                Box::pin(issuer.refetch_for_unknown_kid(&self.client)).await;
                self.cache.purge_kids(&issuer.removed.load());
                match issuer.get(&head.kid) {
                    Ok(Some(k)) => k,
                    Ok(None) => return Err(Reason::UnknownKey),
                    Err(keys::NoKeySet) => return Err(Reason::KeysUnavailable),
                }
            }
        };
        Ok((index, issuer, key))
    }

    /// Verifies an identity-provider token (Bearer or query parameter).
    pub async fn verify_token(
        &self,
        token: &str,
        expect_aud: Option<&[String]>,
        nonce: Option<&str>,
    ) -> Result<Verified, Reason> {
        // Only the login callback passes a nonce: its ID token comes from the token endpoint.
        let limit = if nonce.is_some() {
            verify::MAX_ID_TOKEN_BYTES
        } else {
            MAX_TOKEN_BYTES
        };
        let head = verify::inspect_within(token, limit)?;
        let (index, issuer, key) = self.key_for(&head).await?;
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
                issued_at: Some(claims.iat),
                sid: claims.sid,
                idp_sid: claims.psid,
                // Absent when the user name is the subject (`username-claim = "sub"`): a logout
                // by subject then revokes the user.
                idp_sub: claims.psub,
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
        let (kind, value) = match self.extractor().extract(req, websocket) {
            Ok(Some(c)) => c,
            Ok(None) => return deny(Reason::MissingCredential, None, false),
            Err(r) => return deny(r, None, true),
        };
        let verified = match self.verify_credential(kind, &value).await {
            Ok(v) => v,
            Err(r) => return deny(r, None, true),
        };
        let identity = verified.identity;
        // After verification and after the cache: a cached credential is revoked too.
        if self.revoked(&identity) {
            return deny(Reason::Revoked, Some(identity), true);
        }
        if websocket && kind == CredentialKind::Session && !self.origin_ok(req) {
            return deny(Reason::OriginMismatch, Some(identity), true);
        }
        let why = match access {
            Access::Public | Access::Authenticated => "authenticated",
            Access::Owner => match route.and_then(|r| r.user.as_deref()) {
                Some(owner) if owner == identity.user => "owner",
                Some(_) if identity.admin => "admin",
                Some(owner) => match self.granted(&identity.user, owner, route).await {
                    Ok(why) => why,
                    Err(reason) => return deny(reason, Some(identity), true),
                },
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
        // A websocket let through by the hub's grants is closed (and, reopened by the client,
        // checked again) within max-stale, so a revoked share does not live on in it.
        let expires_at = match (why, &self.grants) {
            ("shared" | "role", Some(g)) => verified
                .expires_at
                .min(now_secs().saturating_add(g.recheck_secs())),
            _ => verified.expires_at,
        };
        Outcome::Allow(Allowed {
            identity,
            expires_at,
            kind,
            why,
        })
    }

    /// Whether the hub grants `user` another user's server (`[auth.hub-grants]`): the
    /// allow label, or the refusal's reason.
    async fn granted(
        &self,
        user: &str,
        owner: &str,
        route: Option<&Route>,
    ) -> Result<&'static str, Reason> {
        let Some(g) = &self.grants else {
            return Err(Reason::NotOwner);
        };
        let server = route.and_then(|r| r.server_name());
        // Boxed: a rare path's future kept out of every request's (see `verify_token`).
        match Box::pin(g.allows(user, owner, server.as_deref())).await {
            grants::Grant::Share => Ok("shared"),
            grants::Grant::Role => Ok("role"),
            grants::Grant::None => Err(Reason::NotOwner),
            grants::Grant::Unavailable => Err(Reason::GrantsUnavailable),
        }
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

    /// Where this configuration looks for credentials.
    pub fn extractor(&self) -> Extractor<'_> {
        Extractor {
            query_param: self.config.query_param.as_deref(),
        }
    }

    /// The proxy's one call per request: decide (`check`), count and log the decision
    /// (`record`), and on refusal build the response (`denial`). `Ok(None)`: a public path.
    pub async fn authorize(
        &self,
        req: &RequestHeader,
        path: &str,
        route: Option<&Route>,
        websocket: bool,
    ) -> Result<Option<Allowed>, Reply> {
        let outcome = self.check(req, path, route, websocket).await;
        self.record(&outcome, route, path);
        match outcome {
            Outcome::Public => Ok(None),
            Outcome::Allow(allowed) => Ok(Some(allowed)),
            Outcome::Deny {
                reason, presented, ..
            } => Err(self.denial(req, reason, presented, websocket)),
        }
    }

    /// Refuses paths that must not reach a policy decision: encoded dot segments (`%2e%2e`),
    /// which a user's server may decode into a path the policy never saw.
    pub fn screen_path(
        &self,
        req: &RequestHeader,
        decoded: &str,
        websocket: bool,
    ) -> Result<(), Reply> {
        if !(decoded.contains('.') && crate::canonical::has_encoded_dot_segments(decoded)) {
            return Ok(());
        }
        let reason = Reason::BadPath;
        let outcome = Outcome::Deny {
            reason,
            identity: None,
            presented: false,
        };
        self.record(&outcome, None, decoded);
        Err(self.denial(req, reason, false, websocket))
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
        let mut descs = vec![
            desc(
                "hubgate_auth_key_set_age_seconds",
                "Seconds since the issuer's key set was fetched",
            )?,
            desc(
                "hubgate_auth_key_refresh_failures_total",
                "Failed key-set fetches",
            )?,
        ];
        descs.extend(grants::metric_descs()?);
        Ok(KeySetMetrics { current, descs })
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
        if let Some(g) = &auth.grants {
            out.extend(grants::metric_families(g).unwrap_or_default());
        }
        out
    }
}

/// Builds an [`Auth`] from a small `[auth]` configuration with one issuer and an empty key
/// set file, for unit tests of the pieces that need no keys.
#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    /// `top` is added to `[auth]`, `issuer` to its one `[[issuers]]` table.
    pub fn auth_from(top: &str, issuer: &str) -> Auth {
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "hubgate-auth-test-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let jwks = dir.join("jwks.json");
        std::fs::write(&jwks, r#"{"keys": []}"#).expect("jwks written");
        let section: crate::config::auth::AuthSection = toml::from_str(&format!(
            "{top}[[issuers]]\nissuer = \"https://idp\"\naudiences = [\"jupyterhub\"]\njwks-file = {:?}\n{issuer}",
            jwks.display().to_string()
        ))
        .expect("auth section");
        let config = section.validate().expect("valid auth config");
        let _ = std::fs::remove_dir_all(&dir);
        let metrics = Metrics::new(Arc::new(crate::routes::RouteTable::new())).expect("metrics");
        let connector = crate::net::Connector::new(Arc::default(), Arc::default(), false);
        Auth::new(config, Arc::new(HttpClient::new(connector)), &metrics)
    }

    /// An [`Auth`] with `top` added to `[auth]`.
    pub fn auth_with(top: &str) -> Auth {
        auth_from(top, "")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_request_future_is_small() {
        // The proxy's request filter holds `check`'s future on every request, authentication
        // on or off: a rare path's large future inlined here (the key-set refetch, 11 KiB)
        // once cost an 11 KiB copy per request.
        let auth = test_support::auth_with("");
        let req = RequestHeader::build("GET", b"/user/a/", None).expect("request");
        let size = std::mem::size_of_val(&auth.check(&req, "/user/a/", None, false));
        assert!(size <= 2048, "Auth::check's future is {size} bytes");
        let size = std::mem::size_of_val(&auth.authorize(&req, "/user/a/", None, false));
        assert!(size <= 2048, "Auth::authorize's future is {size} bytes");
    }

    #[test]
    fn encoded_dot_segments_are_refused_before_policy() {
        let auth = test_support::auth_with("");
        // The canonical decoded form of `/user/a/%2e%2e/b/`: a dot segment only escapes made.
        let req = RequestHeader::build("GET", b"/user/a/%2e%2e/b/", None).expect("request");
        let refused = auth.screen_path(&req, "/user/a/../b/", false).err();
        assert_eq!(refused.map(|r| r.status), Some(400));
        assert!(auth.screen_path(&req, "/user/a/b.txt", false).is_ok());
        assert!(auth.screen_path(&req, "/user/a/.hidden/", false).is_ok());
    }
}
