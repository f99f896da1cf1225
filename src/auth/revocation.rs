//! Revoked credentials: every credential of a user issued at or before an instant, one of
//! hubgate's sessions, or every session tied to one identity-provider session (`sid`, from
//! OpenID Connect Back-Channel Logout).
//!
//! One list per process, shared by every `[auth]` generation (a reload keeps it), checked on
//! every request after verification (cached verifications included) and by every open
//! websocket when the list changes. While the list is empty the check is one atomic load.
//! Entries are kept for `revocation-lifetime-seconds` (at least the longest credential
//! lifetime) and there are at most `revocation-capacity` of them: more are refused, never
//! evicted (evicting would bring a revoked credential back).
//!
//! Replication: each entry has a text form ([`Revocation::encode`]) that the Redis route
//! store keeps in a hash and other replicas poll (see `docs/security.md`, "Revocation").

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use log::{info, warn};
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts};

use super::verify::Identity;
use crate::routes::RevocationStore;

/// One revocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revocation {
    /// Every credential of `user` issued at or before `not_before` (seconds since the epoch).
    User { user: String, not_before: i64 },
    /// One of hubgate's sessions (its `sid` claim).
    Session { sid: String },
    /// Every session tied to this identity-provider session.
    IdpSession { issuer: String, sid: String },
    /// Every credential of the provider's subject `sub` issued at or before `not_before`
    /// (back-channel logout without `sid`, when the user name is another claim).
    IdpSubject {
        issuer: String,
        sub: String,
        not_before: i64,
    },
}

/// Why a revocation was not recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RevokeError {
    #[error("the revocation list is full (auth.revocation-capacity)")]
    Full,
    #[error("a revocation needs a non-empty user or session id of at most 256 bytes")]
    Invalid,
    /// In force on this replica, but the shared store did not take it.
    #[error("revoked on this replica only: the shared store did not accept it ({0})")]
    NotReplicated(String),
}

/// Where revocations come from (the `source` label).
const SOURCES: [&str; 4] = ["api", "logout", "backchannel", "replica"];

/// How often a replica looks for revocations made elsewhere.
pub const POLL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);

const MAX_ID: usize = 256;

impl Revocation {
    /// The store form: a field and a value (`until` is when the entry may be dropped).
    pub fn encode(&self, until: i64) -> (String, String) {
        match self {
            Revocation::User { user, not_before } => {
                (format!("u\u{1f}{user}"), format!("{until} {not_before}"))
            }
            Revocation::Session { sid } => (format!("s\u{1f}{sid}"), until.to_string()),
            Revocation::IdpSession { issuer, sid } => {
                (format!("p\u{1f}{issuer}\u{1f}{sid}"), until.to_string())
            }
            Revocation::IdpSubject {
                issuer,
                sub,
                not_before,
            } => (
                format!("b\u{1f}{issuer}\u{1f}{sub}"),
                format!("{until} {not_before}"),
            ),
        }
    }

    /// Reads [`Revocation::encode`]'s form back: the revocation and its `until`.
    pub fn decode(field: &str, value: &str) -> Option<(Revocation, i64)> {
        let mut parts = value.split(' ');
        let until: i64 = parts.next()?.parse().ok()?;
        let (kind, rest) = field.split_once('\u{1f}')?;
        let r = match kind {
            "u" => Revocation::User {
                user: rest.to_string(),
                not_before: parts.next()?.parse().ok()?,
            },
            "s" => Revocation::Session {
                sid: rest.to_string(),
            },
            "p" => {
                let (issuer, sid) = rest.split_once('\u{1f}')?;
                Revocation::IdpSession {
                    issuer: issuer.to_string(),
                    sid: sid.to_string(),
                }
            }
            "b" => {
                let (issuer, sub) = rest.split_once('\u{1f}')?;
                Revocation::IdpSubject {
                    issuer: issuer.to_string(),
                    sub: sub.to_string(),
                    not_before: parts.next()?.parse().ok()?,
                }
            }
            _ => return None,
        };
        r.valid().then_some((r, until))
    }

    fn valid(&self) -> bool {
        let ok = |s: &str| !s.is_empty() && s.len() <= MAX_ID && !s.contains('\u{1f}');
        match self {
            Revocation::User { user, .. } => ok(user),
            Revocation::Session { sid } => ok(sid),
            Revocation::IdpSession { issuer, sid } => ok(sid) && !issuer.contains('\u{1f}'),
            Revocation::IdpSubject { issuer, sub, .. } => ok(sub) && !issuer.contains('\u{1f}'),
        }
    }

    /// The metric label of its kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Revocation::User { .. } => "user",
            Revocation::Session { .. } => "session",
            Revocation::IdpSession { .. } => "idp_session",
            Revocation::IdpSubject { .. } => "idp_subject",
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct UserEntry {
    not_before: i64,
    until: i64,
}

#[derive(Debug, Clone)]
struct IdpEntry {
    issuer: String,
    until: i64,
    /// For subjects: credentials issued at or before this are refused (unused for sessions).
    not_before: i64,
}

struct RevocationMetrics {
    added: IntCounterVec,
    refused: IntCounter,
    expired: IntCounter,
    entries: IntGauge,
    websockets_closed: IntCounter,
}

/// Metric collectors for the registry.
pub type Collectors = Vec<Box<dyn prometheus::core::Collector>>;

/// The process's revocation list.
pub struct Revocations {
    users: DashMap<String, UserEntry>,
    sessions: DashMap<String, i64>,
    /// Keyed by the provider's `sid`, one entry per issuer that used it; the issuer is
    /// compared on lookup (no key built per request).
    idp_sessions: DashMap<String, Vec<IdpEntry>>,
    /// Keyed by the provider's `sub`, one entry per issuer.
    idp_subjects: DashMap<String, Vec<IdpEntry>>,
    /// Whether any entry exists: the per-request check is one load while the list is empty.
    active: AtomicBool,
    lifetime: AtomicI64,
    capacity: AtomicUsize,
    /// Bumped on every change: open websockets re-check their credential.
    changed: tokio::sync::watch::Sender<u64>,
    metrics: RevocationMetrics,
    /// The shared store, when replicas share one.
    store: std::sync::OnceLock<Arc<dyn RevocationStore>>,
    /// Back-channel logout tokens seen (`issuer` + `jti` → until when kept).
    seen_jti: DashMap<String, i64>,
}

impl Revocations {
    /// An empty list; its metrics are returned for the registry.
    pub fn new() -> prometheus::Result<(Arc<Revocations>, Collectors)> {
        let added = IntCounterVec::new(
            Opts::new(
                "hubgate_auth_revocations_total",
                "Revocations recorded, by kind and source (api, backchannel, logout, replica)",
            ),
            &["kind", "source"],
        )?;
        // Every series exists from the start (at 0), so dashboards and alerts see them.
        for kind in ["user", "session", "idp_session", "idp_subject"] {
            for source in SOURCES {
                added.with_label_values(&[kind, source]);
            }
        }
        let refused = IntCounter::new(
            "hubgate_auth_revocations_refused_total",
            "Revocations not recorded because the list was full (auth.revocation-capacity)",
        )?;
        let expired = IntCounter::new(
            "hubgate_auth_revocations_expired_total",
            "Revocations dropped after auth.revocation-lifetime-seconds",
        )?;
        let entries = IntGauge::new("hubgate_auth_revocations", "Revocations in the list now")?;
        let websockets_closed = IntCounter::new(
            "hubgate_auth_websockets_closed_revoked_total",
            "Websockets closed (1008) because their credential was revoked",
        )?;
        let collectors: Collectors = vec![
            Box::new(added.clone()),
            Box::new(refused.clone()),
            Box::new(expired.clone()),
            Box::new(entries.clone()),
            Box::new(websockets_closed.clone()),
        ];
        let list = Arc::new(Revocations {
            users: DashMap::new(),
            sessions: DashMap::new(),
            idp_sessions: DashMap::new(),
            idp_subjects: DashMap::new(),
            active: AtomicBool::new(false),
            lifetime: AtomicI64::new(24 * 3600),
            capacity: AtomicUsize::new(100_000),
            changed: tokio::sync::watch::channel(0).0,
            metrics: RevocationMetrics {
                added,
                refused,
                expired,
                entries,
                websockets_closed,
            },
            store: std::sync::OnceLock::new(),
            seen_jti: DashMap::new(),
        });
        Ok((list, collectors))
    }

    /// A list for unit tests (metrics unregistered).
    pub fn unregistered() -> Arc<Revocations> {
        match Revocations::new() {
            Ok((list, _)) => list,
            // The metric definitions are constants: this cannot fail.
            Err(e) => panic!("revocation metrics: {e}"),
        }
    }

    /// Applies `[auth]`'s limits (at start and on every reload).
    pub fn configure(&self, lifetime: std::time::Duration, capacity: usize) {
        self.lifetime
            .store(lifetime.as_secs() as i64, Ordering::Relaxed);
        self.capacity.store(capacity, Ordering::Relaxed);
    }

    /// How long a new entry is kept from `now`.
    pub fn until(&self, now: i64) -> i64 {
        now + self.lifetime.load(Ordering::Relaxed)
    }

    fn contains(&self, r: &Revocation) -> bool {
        match r {
            Revocation::User { user, .. } => self.users.contains_key(user.as_str()),
            Revocation::Session { sid } => self.sessions.contains_key(sid.as_str()),
            Revocation::IdpSession { issuer, sid } => self
                .idp_sessions
                .get(sid.as_str())
                .is_some_and(|v| v.iter().any(|e| e.issuer == *issuer)),
            Revocation::IdpSubject { issuer, sub, .. } => self
                .idp_subjects
                .get(sub.as_str())
                .is_some_and(|v| v.iter().any(|e| e.issuer == *issuer)),
        }
    }

    fn len(&self) -> usize {
        self.users.len() + self.sessions.len() + self.idp_sessions.len() + self.idp_subjects.len()
    }

    /// Records a revocation until `until`; `source` is the metric label. Returns whether it
    /// changed the list (a replica's copy of an entry already here does not).
    pub fn add(
        &self,
        r: &Revocation,
        until: i64,
        source: &str,
        now: i64,
    ) -> Result<bool, RevokeError> {
        if !r.valid() {
            return Err(RevokeError::Invalid);
        }
        if until <= now {
            return Ok(false);
        }
        // Only a new entry needs room: a replica's copy of one already here never fails.
        if !self.contains(r) && self.len() >= self.capacity.load(Ordering::Relaxed) {
            self.expire(now);
            if self.len() >= self.capacity.load(Ordering::Relaxed) {
                self.metrics.refused.inc();
                return Err(RevokeError::Full);
            }
        }
        let changed = match r {
            Revocation::User { user, not_before } => {
                let mut changed = true;
                self.users
                    .entry(user.clone())
                    .and_modify(|e| {
                        // A later not-before covers an earlier one; never move it back.
                        changed = *not_before > e.not_before;
                        e.not_before = e.not_before.max(*not_before);
                        e.until = e.until.max(until);
                    })
                    .or_insert(UserEntry {
                        not_before: *not_before,
                        until,
                    });
                changed
            }
            Revocation::Session { sid } => {
                let mut changed = true;
                self.sessions
                    .entry(sid.clone())
                    .and_modify(|u| {
                        changed = false;
                        *u = (*u).max(until);
                    })
                    .or_insert(until);
                changed
            }
            Revocation::IdpSession { issuer, sid } => {
                Self::add_idp(&self.idp_sessions, sid, issuer, 0, until)
            }
            Revocation::IdpSubject {
                issuer,
                sub,
                not_before,
            } => Self::add_idp(&self.idp_subjects, sub, issuer, *not_before, until),
        };
        // After the entry is in (see `expire`).
        self.active.store(true, Ordering::SeqCst);
        self.metrics.entries.set(self.len() as i64);
        if changed {
            self.metrics
                .added
                .with_label_values(&[r.kind(), source])
                .inc();
            self.changed.send_modify(|n| *n += 1);
        }
        Ok(changed)
    }

    /// Adds or tightens the entry of `issuer` under `key`; whether it changed what is refused.
    fn add_idp(
        map: &DashMap<String, Vec<IdpEntry>>,
        key: &str,
        issuer: &str,
        not_before: i64,
        until: i64,
    ) -> bool {
        let mut entries = map.entry(key.to_string()).or_default();
        match entries.iter_mut().find(|e| e.issuer == issuer) {
            Some(e) => {
                let changed = not_before > e.not_before;
                e.not_before = e.not_before.max(not_before);
                e.until = e.until.max(until);
                changed
            }
            None => {
                entries.push(IdpEntry {
                    issuer: issuer.to_string(),
                    until,
                    not_before,
                });
                true
            }
        }
    }

    /// Records a revocation here and in the shared store (if any). An entry the store did
    /// not take still applies on this replica (`NotReplicated`).
    pub async fn revoke(&self, r: &Revocation, source: &str) -> Result<(), RevokeError> {
        let now = crate::time::now_secs();
        let until = self.until(now);
        self.add(r, until, source, now)?;
        if let Some(store) = self.store.get() {
            let (field, value) = r.encode(until);
            store
                .put(&field, &value, until)
                .await
                .map_err(RevokeError::NotReplicated)?;
        }
        Ok(())
    }

    /// Starts the list's task (call once, within a tokio runtime; it ends when the list is
    /// dropped): expiry every minute and, with a shared `store`, sharing revocations through
    /// it and following the ones other replicas make there.
    pub fn start(self: &Arc<Self>, store: Option<Arc<dyn RevocationStore>>) {
        if let Some(store) = &store {
            if self.store.set(store.clone()).is_err() {
                return;
            }
        }
        let list = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut version = None;
            let mut failing = false;
            let mut tick = tokio::time::interval(POLL_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last_expiry = crate::time::now_secs();
            loop {
                tick.tick().await;
                let Some(list) = list.upgrade() else { break };
                let now = crate::time::now_secs();
                if now - last_expiry >= 60 {
                    list.expire(now);
                    last_expiry = now;
                }
                let Some(store) = &store else { continue };
                match store.load(&mut version).await {
                    Ok(Some(entries)) => {
                        failing = false;
                        for (field, value) in entries {
                            match Revocation::decode(&field, &value) {
                                Some((r, until)) => {
                                    if let Err(e) = list.add(&r, until, "replica", now) {
                                        warn!("revocation from the store not applied: {e}");
                                    }
                                }
                                None => warn!("revocation store: unreadable entry {field:?}"),
                            }
                        }
                    }
                    Ok(None) => failing = false,
                    Err(e) => {
                        if !failing {
                            warn!("revocation store: {e}; revocations made on other replicas are not seen until it is back");
                        }
                        failing = true;
                        // Everything is read again once the store is back.
                        version = None;
                    }
                }
            }
            info!("revocation replication stopped");
        });
    }

    /// Forgets a logout token id (its logout could not be recorded: the provider may retry).
    pub fn forget_jti(&self, issuer: &str, jti: &str) {
        self.seen_jti.remove(&format!("{issuer}\u{1f}{jti}"));
    }

    /// Whether this logout token id is new (it is then remembered until `until`). A full
    /// cache forgets old ids: a replayed logout token only revokes the same session again.
    pub fn first_use(&self, issuer: &str, jti: &str, until: i64, now: i64) -> bool {
        let key = format!("{issuer}\u{1f}{jti}");
        if self.seen_jti.len() >= self.capacity.load(Ordering::Relaxed) {
            self.seen_jti.retain(|_, u| *u > now);
            if self.seen_jti.len() >= self.capacity.load(Ordering::Relaxed) {
                self.seen_jti.clear();
            }
        }
        match self.seen_jti.entry(key) {
            dashmap::mapref::entry::Entry::Occupied(e) if *e.get() > now => false,
            e => {
                e.insert(until);
                true
            }
        }
    }

    /// Drops entries past their `until`.
    pub fn expire(&self, now: i64) {
        let before = self.len();
        self.users.retain(|_, e| e.until > now);
        self.sessions.retain(|_, until| *until > now);
        for map in [&self.idp_sessions, &self.idp_subjects] {
            map.retain(|_, v| {
                v.retain(|e| e.until > now);
                !v.is_empty()
            });
        }
        self.seen_jti.retain(|_, u| *u > now);
        let after = self.len();
        self.metrics
            .expired
            .inc_by(before.saturating_sub(after) as u64);
        self.metrics.entries.set(after as i64);
        if after == 0 {
            self.active.store(false, Ordering::SeqCst);
            // An entry added meanwhile set `active` before or after this store; if before,
            // it is counted here and `active` is set again.
            if self.len() > 0 {
                self.active.store(true, Ordering::SeqCst);
            }
        }
    }

    /// Whether a verified credential is revoked. `issuer` is the URL of the identity's issuer.
    pub fn is_revoked(&self, identity: &Identity, issuer: &str, now: i64) -> bool {
        if !self.active.load(Ordering::SeqCst) {
            return false;
        }
        if let Some(e) = self.users.get(identity.user.as_str()) {
            // A credential without `iat` or `auth_time` cannot show it is newer: refused.
            if now < e.until && identity.issued_at.is_none_or(|t| t <= e.not_before) {
                return true;
            }
        }
        if let Some(sid) = &identity.sid {
            if self.sessions.get(sid.as_str()).is_some_and(|u| now < *u) {
                return true;
            }
        }
        if let Some(sid) = &identity.idp_sid {
            if self
                .idp_sessions
                .get(sid.as_str())
                .is_some_and(|v| v.iter().any(|e| now < e.until && e.issuer == issuer))
            {
                return true;
            }
        }
        if let Some(sub) = &identity.idp_sub {
            let older = |e: &IdpEntry| identity.issued_at.is_none_or(|t| t <= e.not_before);
            if self.idp_subjects.get(sub.as_str()).is_some_and(|v| {
                v.iter()
                    .any(|e| now < e.until && e.issuer == issuer && older(e))
            }) {
                return true;
            }
        }
        false
    }

    /// A receiver that sees every change (for open websockets).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Counts a websocket closed because its credential was revoked.
    pub fn count_websocket_closed(&self) {
        self.metrics.websockets_closed.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(
        user: &str,
        issued_at: Option<i64>,
        sid: Option<&str>,
        idp_sid: Option<&str>,
    ) -> Identity {
        Identity {
            user: user.into(),
            email: None,
            groups: Vec::new(),
            admin: false,
            issuer: 0,
            issued_at,
            sid: sid.map(str::to_string),
            idp_sid: idp_sid.map(str::to_string),
            idp_sub: Some(format!("sub-{user}")),
        }
    }

    #[test]
    fn user_not_before_refuses_older_credentials_only() {
        let list = Revocations::unregistered();
        let alice_old = identity("alice", Some(100), None, None);
        let alice_new = identity("alice", Some(201), None, None);
        let alice_unknown = identity("alice", None, None, None);
        let bob = identity("bob", Some(100), None, None);
        assert!(!list.is_revoked(&alice_old, "i", 150));
        let r = Revocation::User {
            user: "alice".into(),
            not_before: 200,
        };
        assert_eq!(list.add(&r, 1000, "api", 200), Ok(true));
        assert!(list.is_revoked(&alice_old, "i", 201));
        assert!(list.is_revoked(&alice_unknown, "i", 201));
        assert!(!list.is_revoked(&alice_new, "i", 201));
        assert!(!list.is_revoked(&bob, "i", 201));
        // An earlier not-before (a replica's older entry) does not move it back.
        let older = Revocation::User {
            user: "alice".into(),
            not_before: 50,
        };
        assert_eq!(list.add(&older, 1000, "replica", 201), Ok(false));
        assert!(list.is_revoked(&alice_old, "i", 202));
        // After its lifetime the entry no longer applies, and expiry drops it.
        assert!(!list.is_revoked(&alice_old, "i", 1000));
        list.expire(1000);
        assert!(!list.active.load(Ordering::Relaxed));
    }

    #[test]
    fn sessions_by_own_and_provider_sid() {
        let list = Revocations::unregistered();
        let s = identity("alice", Some(100), Some("h1"), Some("p1"));
        list.add(&Revocation::Session { sid: "h2".into() }, 500, "api", 100)
            .unwrap();
        assert!(!list.is_revoked(&s, "https://idp", 101));
        list.add(
            &Revocation::IdpSession {
                issuer: "https://other".into(),
                sid: "p1".into(),
            },
            500,
            "backchannel",
            100,
        )
        .unwrap();
        assert!(
            !list.is_revoked(&s, "https://idp", 101),
            "other issuer's sid"
        );
        list.add(&Revocation::Session { sid: "h1".into() }, 500, "api", 100)
            .unwrap();
        assert!(list.is_revoked(&s, "https://idp", 101));
    }

    #[test]
    fn provider_subject_not_before() {
        let list = Revocations::unregistered();
        let r = Revocation::IdpSubject {
            issuer: "https://idp".into(),
            sub: "sub-alice".into(),
            not_before: 200,
        };
        assert_eq!(list.add(&r, 1000, "backchannel", 200), Ok(true));
        assert!(list.is_revoked(
            &identity("alice", Some(150), None, None),
            "https://idp",
            201
        ));
        assert!(!list.is_revoked(
            &identity("alice", Some(201), None, None),
            "https://idp",
            202
        ));
        assert!(!list.is_revoked(
            &identity("alice", Some(150), None, None),
            "https://other",
            201
        ));
        assert!(!list.is_revoked(&identity("bob", Some(150), None, None), "https://idp", 201));
    }

    #[test]
    fn capacity_refuses_instead_of_evicting() {
        let list = Revocations::unregistered();
        list.configure(std::time::Duration::from_secs(100), 2);
        for sid in ["a", "b"] {
            list.add(&Revocation::Session { sid: sid.into() }, 50, "api", 0)
                .unwrap();
        }
        let c = Revocation::Session { sid: "c".into() };
        assert_eq!(list.add(&c, 50, "api", 0), Err(RevokeError::Full));
        assert_eq!(list.metrics.refused.get(), 1);
        // An entry already here is not refused (a replica's copy).
        let a = Revocation::Session { sid: "a".into() };
        assert_eq!(list.add(&a, 50, "replica", 0), Ok(false));
        // Once the others expired there is room again.
        assert_eq!(list.add(&c, 200, "api", 60), Ok(true));
        assert_eq!(list.metrics.expired.get(), 2);
    }

    #[test]
    fn store_form_round_trips_and_rejects_junk() {
        for r in [
            Revocation::User {
                user: "alice".into(),
                not_before: 42,
            },
            Revocation::Session { sid: "abc".into() },
            Revocation::IdpSession {
                issuer: "https://idp".into(),
                sid: "s-1".into(),
            },
            Revocation::IdpSubject {
                issuer: "https://idp".into(),
                sub: "sub-alice".into(),
                not_before: 7,
            },
        ] {
            let (f, v) = r.encode(99);
            assert_eq!(Revocation::decode(&f, &v), Some((r, 99)));
        }
        assert_eq!(Revocation::decode("x\u{1f}a", "1"), None);
        assert_eq!(Revocation::decode("u\u{1f}alice", "1"), None);
        assert_eq!(Revocation::decode("s\u{1f}", "1"), None);
        assert_eq!(Revocation::decode("s\u{1f}a", "soon"), None);
    }
}
