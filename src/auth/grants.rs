//! Who besides the owner may use a user's server, as JupyterHub says: shares (JupyterHub 5+
//! sharing, to a user or a hub group) and roles granting `access:servers` (configured in
//! `[auth.hub-grants] roles`, since the hub's REST API does not publish role definitions).
//!
//! Rules (`docs/security.md`, "Shared servers and roles"):
//! - never a hub request per request: a background task polls the hub's groups (and users'
//!   roles) and the shares of every owner a refused request asked about, every `refresh`;
//! - a request about an owner whose shares are missing or stale starts one fetch of them
//!   (at most one per owner per `refresh`, at most [`FETCH_SLOTS`] at once), or joins the
//!   one running, and waits for it at most `miss-wait`;
//! - data older than `max-stale` is not used: a grant that depends on it is refused (503,
//!   "try again"), while owners and admins are unaffected;
//! - a revoked share or role stops working within `refresh` + one poll while the hub
//!   answers, and within `max-stale` (+ `miss-wait`) when it does not.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use log::{info, warn};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::Deserialize;
use tokio::sync::{Notify, Semaphore};

use crate::config::auth::HubGrantsConfig;
use crate::net::{Fetch, HttpClient};

/// Owner share fetches started by requests that may run at once.
pub const FETCH_SLOTS: usize = 4;
/// Largest page of a hub listing accepted.
const MAX_PAGE_BYTES: usize = 16 * 1024 * 1024;
/// Items asked for per page (the hub caps it at its `api_page_max_limit`, 200 by default).
const PAGE_LIMIT: usize = 200;
/// An owner nobody asked about for this long is no longer polled.
const MIN_IDLE: Duration = Duration::from_secs(600);

/// Characters kept as they are in a path segment (RFC 3986 unreserved).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// One `access:servers` scope (or `shares`, which includes it), with its filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessScope {
    /// Every server.
    All,
    /// Every server of this user.
    User(String),
    /// One server: owner and server name (`""` for the default server).
    Server(String, String),
    /// Every server of every member of this hub group.
    Group(String),
}

impl AccessScope {
    /// Parses `access:servers[!user=U|!server=U/S|!group=G]` (or the same with `shares`);
    /// any other scope is `None`.
    pub fn parse(scope: &str) -> Option<AccessScope> {
        let (base, filter) = match scope.split_once('!') {
            Some((b, f)) => (b, Some(f)),
            None => (scope, None),
        };
        if base != "access:servers" && base != "shares" {
            return None;
        }
        let Some(filter) = filter else {
            return Some(AccessScope::All);
        };
        let (kind, value) = filter.split_once('=')?;
        if value.is_empty() {
            return None;
        }
        match kind {
            "user" => Some(AccessScope::User(value.to_string())),
            "group" => Some(AccessScope::Group(value.to_string())),
            "server" => {
                let (owner, server) = value.split_once('/')?;
                (!owner.is_empty())
                    .then(|| AccessScope::Server(owner.to_string(), server.to_string()))
            }
            _ => None,
        }
    }

    /// Whether this scope reaches `owner`'s server `server` (`None`: the route did not say
    /// which server, so only scopes covering all of the owner's servers count).
    fn covers(&self, owner: &str, server: Option<&str>, dir: Option<&Directory>) -> bool {
        match self {
            AccessScope::All => true,
            AccessScope::User(u) => u == owner,
            AccessScope::Server(u, s) => u == owner && server == Some(s.as_str()),
            // Without fresh group data, group-filtered scopes cannot be checked: not used.
            AccessScope::Group(g) => dir.is_some_and(|d| d.in_group(owner, g)),
        }
    }
}

/// What the hub's groups and users say (one poll).
#[derive(Debug, Default)]
pub struct Directory {
    fetched_at: Option<Instant>,
    /// Hub group → its members.
    members: HashMap<String, HashSet<String>>,
    /// User → their hub groups.
    groups_of: HashMap<String, Vec<String>>,
    /// User → scopes of roles assigned to them directly.
    user_scopes: HashMap<String, Vec<AccessScope>>,
    /// Group → scopes of roles assigned to the group.
    group_scopes: HashMap<String, Vec<AccessScope>>,
}

impl Directory {
    fn in_group(&self, user: &str, group: &str) -> bool {
        self.members.get(group).is_some_and(|m| m.contains(user))
    }

    /// The `access:servers` scopes `user` holds through roles, directly or through groups.
    fn scopes_of<'a>(&'a self, user: &str) -> impl Iterator<Item = &'a AccessScope> + 'a {
        let direct = self.user_scopes.get(user).into_iter().flatten();
        let via_groups = self
            .groups_of
            .get(user)
            .into_iter()
            .flatten()
            .filter_map(|g| self.group_scopes.get(g))
            .flatten();
        direct.chain(via_groups)
    }
}

/// Whom a share is granted to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grantee {
    User(String),
    Group(String),
}

/// One share of one of the owner's servers that includes access.
#[derive(Debug, Clone)]
pub struct Share {
    pub server: String,
    pub with: Grantee,
}

/// An owner's shares (one poll).
#[derive(Debug, Default)]
pub struct OwnerShares {
    fetched_at: Option<Instant>,
    shares: Vec<Share>,
}

/// The answer for a non-owner, non-admin user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// A share of this server to the user or one of their hub groups.
    Share,
    /// A role (directly or through a hub group) with a covering `access:servers`.
    Role,
    /// Nothing grants access (with fresh data).
    None,
    /// Nothing grants access, and the data that might have is missing or too old.
    Unavailable,
}

/// The decision over fresh data (`None`: missing or older than `max-stale`).
pub fn decide(
    dir: Option<&Directory>,
    shares: Option<&OwnerShares>,
    user: &str,
    owner: &str,
    server: Option<&str>,
) -> Grant {
    if let Some(d) = dir {
        if d.scopes_of(user).any(|s| s.covers(owner, server, dir)) {
            return Grant::Role;
        }
    }
    if let (Some(shares), Some(server)) = (shares, server) {
        let shared = shares.shares.iter().any(|s| {
            s.server == server
                && match &s.with {
                    Grantee::User(u) => u == user,
                    Grantee::Group(g) => dir.is_some_and(|d| d.in_group(user, g)),
                }
        });
        if shared {
            return Grant::Share;
        }
    }
    if dir.is_none() || shares.is_none() {
        Grant::Unavailable
    } else {
        Grant::None
    }
}

/// Why a hub listing could not be used.
#[derive(Debug, thiserror::Error)]
pub enum GrantsError {
    #[error("GET {0}: {1}")]
    Fetch(String, String),
    #[error("GET {0}: HTTP status {1}{2}")]
    Status(String, u16, &'static str),
    #[error("GET {0}: not the expected JSON ({1})")]
    Parse(String, String),
    #[error("GET {0}: more than {1} entries (auth.hub-grants.max-entries)")]
    TooMany(String, usize),
}

/// Counters and gauges (exported with the key-set metrics).
#[derive(Default)]
pub struct Stats {
    /// Decisions: share, role, none, unavailable, owner_cap.
    pub decisions: [AtomicU64; 5],
    /// Failed polls: directory, shares.
    pub failures: [AtomicU64; 2],
}

/// The metric labels of [`Stats::decisions`].
pub const DECISION_LABELS: [&str; 5] = ["share", "role", "none", "unavailable", "owner_cap"];

struct OwnerEntry {
    shares: Arc<OwnerShares>,
    last_used: Instant,
    last_attempt: Option<Instant>,
    /// A fetch is running: a request without fresh data waits for it (at most `miss-wait`).
    in_flight: bool,
    fetched: Arc<Notify>,
}

/// The grants learned from the hub.
pub struct Grants {
    cfg: HubGrantsConfig,
    roles: HashMap<String, Vec<AccessScope>>,
    client: Arc<HttpClient>,
    directory: ArcSwapOption<Directory>,
    owners: Mutex<HashMap<String, OwnerEntry>>,
    slots: Semaphore,
    /// When a refusal warning was last logged (seconds since the epoch).
    last_warn: std::sync::atomic::AtomicI64,
    pub stats: Stats,
}

#[derive(Deserialize)]
struct Page {
    items: Vec<serde_json::Value>,
    #[serde(rename = "_pagination")]
    pagination: Option<Pagination>,
}

#[derive(Deserialize)]
struct Pagination {
    next: Option<NextPage>,
}

#[derive(Deserialize)]
struct NextPage {
    offset: usize,
}

#[derive(Deserialize)]
struct GroupModel {
    name: String,
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    roles: Vec<String>,
}

#[derive(Deserialize)]
struct UserModel {
    name: String,
    #[serde(default)]
    roles: Vec<String>,
}

#[derive(Deserialize)]
struct Named {
    name: String,
}

#[derive(Deserialize)]
struct ShareModel {
    server: Named,
    #[serde(default)]
    scopes: Vec<String>,
    user: Option<Named>,
    group: Option<Named>,
}

impl Grants {
    /// Grants per `cfg`, nothing fetched yet.
    pub fn new(cfg: HubGrantsConfig, client: Arc<HttpClient>) -> Grants {
        let roles = cfg
            .roles
            .iter()
            .map(|(name, scopes)| {
                (
                    name.clone(),
                    scopes
                        .iter()
                        .filter_map(|s| AccessScope::parse(s))
                        .collect(),
                )
            })
            .collect();
        Grants {
            cfg,
            roles,
            client,
            directory: ArcSwapOption::empty(),
            owners: Mutex::new(HashMap::new()),
            slots: Semaphore::new(FETCH_SLOTS),
            last_warn: Default::default(),
            stats: Stats::default(),
        }
    }

    fn fresh(&self, fetched_at: Option<Instant>) -> bool {
        fetched_at.is_some_and(|t| t.elapsed() <= self.cfg.max_stale)
    }

    fn count(&self, label: &str) {
        if let Some(i) = DECISION_LABELS.iter().position(|l| *l == label) {
            self.stats.decisions[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Seconds since the groups and roles were fetched (`None`: never).
    pub fn directory_age(&self) -> Option<Duration> {
        self.directory
            .load()
            .as_ref()
            .and_then(|d| d.fetched_at)
            .map(|t| t.elapsed())
    }

    /// Seconds after which a websocket opened through a grant is closed (`max-stale`): by
    /// then the grant has been polled again, and a reopened websocket is checked again.
    pub fn recheck_secs(&self) -> i64 {
        i64::try_from(self.cfg.max_stale.as_secs()).unwrap_or(i64::MAX)
    }

    /// Owners whose shares are kept.
    pub fn owners_watched(&self) -> usize {
        self.owners.lock().map_or(0, |o| o.len())
    }

    /// Whether `user` may use `owner`'s server `server` (called only once the owner rule has
    /// refused: not the owner, not an admin).
    pub async fn allows(self: &Arc<Self>, user: &str, owner: &str, server: Option<&str>) -> Grant {
        let dir = self.directory.load_full();
        let dir = dir.as_deref().filter(|d| self.fresh(d.fetched_at));
        // A role needs no owner data: answer without touching the owners' map.
        if decide(dir, None, user, owner, server) == Grant::Role {
            self.count("role");
            return Grant::Role;
        }
        let wait = match self.watch(owner) {
            Ok(w) => w,
            Err(()) => {
                self.count("owner_cap");
                if self.warn_now() {
                    warn!("auth.hub-grants: {} owners watched already (max-owners); {user} refused on {owner}'s server (such refusals are logged at most once a minute; the audit log has each)", self.cfg.max_owners);
                }
                return Grant::Unavailable;
            }
        };
        if let Some(notified) = wait {
            // The first fetch of this owner's shares: wait a bounded time for it.
            let _ = tokio::time::timeout(self.cfg.miss_wait, notified).await;
        }
        let shares = self.shares_of(owner);
        let shares = shares.as_deref().filter(|s| self.fresh(s.fetched_at));
        let grant = decide(dir, shares, user, owner, server);
        self.count(match grant {
            Grant::Share => "share",
            Grant::Role => "role",
            Grant::None => "none",
            Grant::Unavailable => "unavailable",
        });
        if grant == Grant::Unavailable && self.warn_now() {
            warn!("auth.hub-grants: the hub's grants are missing or older than max-stale-seconds ({}s); {user} refused on {owner}'s server (such refusals are logged at most once a minute; the audit log has each)", self.cfg.max_stale.as_secs());
        }
        grant
    }

    /// Whether a refusal warning may be logged now: at most one a minute, so that a hub
    /// outage does not write one line per request.
    fn warn_now(&self) -> bool {
        let now = crate::time::now_secs();
        let last = self.last_warn.load(Ordering::Relaxed);
        now - last >= 60
            && self
                .last_warn
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    fn shares_of(&self, owner: &str) -> Option<Arc<OwnerShares>> {
        let owners = self.owners.lock().ok()?;
        owners.get(owner).map(|e| e.shares.clone())
    }

    /// Marks `owner` as watched; when its shares are not fresh and no fetch was started
    /// within `refresh`, starts one and returns the notification to wait for. `Err`: the
    /// map is full.
    #[allow(clippy::result_unit_err)]
    fn watch(
        self: &Arc<Self>,
        owner: &str,
    ) -> Result<Option<tokio::sync::futures::OwnedNotified>, ()> {
        let mut owners = self.owners.lock().map_err(|_| ())?;
        if !owners.contains_key(owner) && owners.len() >= self.cfg.max_owners {
            return Err(());
        }
        let now = Instant::now();
        let entry = owners
            .entry(owner.to_string())
            .or_insert_with(|| OwnerEntry {
                shares: Arc::default(),
                last_used: now,
                last_attempt: None,
                in_flight: false,
                fetched: Arc::new(Notify::new()),
            });
        entry.last_used = now;
        if self.fresh(entry.shares.fetched_at) {
            return Ok(None);
        }
        // At most one fetch per owner per `refresh` (the hub is not asked per request).
        let asked_recently = entry
            .last_attempt
            .is_some_and(|t| t.elapsed() < self.cfg.refresh);
        if !entry.in_flight && !asked_recently {
            entry.last_attempt = Some(now);
            entry.in_flight = true;
            let grants = self.clone();
            let owner = owner.to_string();
            tokio::spawn(async move {
                let Ok(_slot) = grants.slots.acquire().await else {
                    return;
                };
                if let Some(e) = grants.refresh_owner(&owner).await {
                    warn!("auth.hub-grants: shares of {owner}: {e}");
                }
            });
        }
        // Created under the lock, so the fetch's notification cannot be missed.
        Ok(entry
            .in_flight
            .then(|| entry.fetched.clone().notified_owned()))
    }

    /// Fetches one owner's shares and stores them (kept as they were when the fetch fails).
    /// Returns the failure, counted but not logged (a poll logs one line for all owners).
    async fn refresh_owner(&self, owner: &str) -> Option<GrantsError> {
        let result = self.fetch_shares(owner).await;
        let mut owners = self.owners.lock().ok()?;
        let entry = owners.get_mut(owner)?;
        entry.in_flight = false;
        entry.fetched.notify_waiters();
        match result {
            Ok(shares) => {
                entry.shares = Arc::new(OwnerShares {
                    fetched_at: Some(Instant::now()),
                    shares,
                });
                None
            }
            Err(e) => {
                self.stats.failures[1].fetch_add(1, Ordering::Relaxed);
                Some(e)
            }
        }
    }

    async fn fetch_shares(&self, owner: &str) -> Result<Vec<Share>, GrantsError> {
        let path = format!("/shares/{}", utf8_percent_encode(owner, SEGMENT));
        let items = match self.list(&path).await {
            // No such user at the hub: nothing is shared.
            Err(GrantsError::Status(_, 404, _)) => return Ok(Vec::new()),
            other => other?,
        };
        let mut out = Vec::new();
        for item in items {
            let s: ShareModel = serde_json::from_value(item)
                .map_err(|e| GrantsError::Parse(path.clone(), e.to_string()))?;
            let server = s.server.name;
            let access = s
                .scopes
                .iter()
                .filter_map(|sc| AccessScope::parse(sc))
                .any(|sc| sc.covers(owner, Some(&server), None));
            let with = match (s.user, s.group) {
                (Some(u), _) => Grantee::User(u.name),
                (None, Some(g)) => Grantee::Group(g.name),
                (None, None) => continue,
            };
            if access {
                out.push(Share { server, with });
            }
        }
        Ok(out)
    }

    /// Fetches the hub's groups (members, roles) and, when roles are configured, its users'
    /// roles.
    async fn fetch_directory(&self) -> Result<Directory, GrantsError> {
        let mut dir = Directory::default();
        let role_scopes = |roles: &[String]| -> Vec<AccessScope> {
            roles
                .iter()
                .filter_map(|r| self.roles.get(r))
                .flatten()
                .cloned()
                .collect()
        };
        for item in self.list("/groups").await? {
            let g: GroupModel = serde_json::from_value(item)
                .map_err(|e| GrantsError::Parse("/groups".into(), e.to_string()))?;
            for u in &g.users {
                dir.groups_of
                    .entry(u.clone())
                    .or_default()
                    .push(g.name.clone());
            }
            let scopes = role_scopes(&g.roles);
            if !scopes.is_empty() {
                dir.group_scopes.insert(g.name.clone(), scopes);
            }
            dir.members.insert(g.name, g.users.into_iter().collect());
        }
        if !self.roles.is_empty() {
            for item in self.list("/users").await? {
                let u: UserModel = serde_json::from_value(item)
                    .map_err(|e| GrantsError::Parse("/users".into(), e.to_string()))?;
                let scopes = role_scopes(&u.roles);
                if !scopes.is_empty() {
                    dir.user_scopes.insert(u.name, scopes);
                }
            }
        }
        dir.fetched_at = Some(Instant::now());
        Ok(dir)
    }

    /// Every item of a paginated hub listing (at most `max-entries`).
    async fn list(&self, path: &str) -> Result<Vec<serde_json::Value>, GrantsError> {
        let auth = format!("token {}", self.cfg.token);
        let headers = [
            ("Authorization", auth.as_str()),
            ("Accept", "application/jupyterhub-pagination+json"),
        ];
        let mut out = Vec::new();
        let mut offset = 0;
        loop {
            let url = format!(
                "{}{path}?offset={offset}&limit={PAGE_LIMIT}",
                self.cfg.hub_api_url
            );
            let r = self
                .client
                .request(
                    Fetch::get(&url, self.cfg.request_timeout, MAX_PAGE_BYTES)
                        .with_headers(&headers),
                )
                .await
                .map_err(|e| GrantsError::Fetch(path.to_string(), e.to_string()))?;
            if r.status != 200 {
                let hint = match r.status {
                    401 => " (is the token in auth.hub-grants.token-file valid?)",
                    403 => " (the token lacks a scope listed in docs/security.md)",
                    _ => "",
                };
                return Err(GrantsError::Status(path.to_string(), r.status, hint));
            }
            let page: Page = serde_json::from_slice(&r.body)
                .map_err(|e| GrantsError::Parse(path.to_string(), e.to_string()))?;
            let got = page.items.len();
            out.extend(page.items);
            if out.len() > self.cfg.max_entries {
                return Err(GrantsError::TooMany(path.to_string(), self.cfg.max_entries));
            }
            match page.pagination.and_then(|p| p.next) {
                // A next page that does not move forward would loop forever.
                Some(next) if got > 0 && next.offset > offset => offset = next.offset,
                _ => return Ok(out),
            }
        }
    }

    /// One poll: the directory, then (if the hub answered) every watched owner's shares;
    /// owners idle for long are dropped.
    async fn poll(self: &Arc<Self>) {
        match self.fetch_directory().await {
            Ok(dir) => {
                let first = self.directory.load().is_none();
                self.directory.store(Some(Arc::new(dir)));
                if first {
                    info!(
                        "auth.hub-grants: groups and roles loaded from {}",
                        self.cfg.hub_api_url
                    );
                }
            }
            Err(e) => {
                self.stats.failures[0].fetch_add(1, Ordering::Relaxed);
                let age = self
                    .directory_age()
                    .map_or("never loaded".to_string(), |a| {
                        format!("{}s old", a.as_secs())
                    });
                // The shares would fail the same way, each after a timeout: with many
                // owners one poll would then last (owners / FETCH_SLOTS) × request-timeout.
                warn!("auth.hub-grants: groups and roles: {e}; the copy in use is {age}; owners' shares not polled this time");
                return;
            }
        }
        let idle = (self.cfg.refresh * 10).max(MIN_IDLE);
        let owners: Vec<String> = {
            let Ok(mut owners) = self.owners.lock() else {
                return;
            };
            owners.retain(|_, e| e.last_used.elapsed() < idle);
            let now = Instant::now();
            owners
                .iter_mut()
                // One started by a request is still running: not asked twice.
                .filter(|(_, e)| !e.in_flight)
                .map(|(name, e)| {
                    e.last_attempt = Some(now);
                    e.in_flight = true;
                    name.clone()
                })
                .collect()
        };
        let mut tasks = tokio::task::JoinSet::new();
        for owner in owners {
            let grants = self.clone();
            tasks.spawn(async move {
                let _slot = grants.slots.acquire().await.ok()?;
                grants.refresh_owner(&owner).await.map(|e| (owner, e))
            });
        }
        let (mut failed, mut example) = (0, None);
        while let Some(done) = tasks.join_next().await {
            if let Ok(Some(failure)) = done {
                failed += 1;
                example.get_or_insert(failure);
            }
        }
        if let Some((owner, e)) = example {
            warn!("auth.hub-grants: shares of {failed} owner(s) not refreshed, e.g. {owner}: {e}");
        }
    }

    /// The refresh loop: poll now, then every `refresh`; ends when the grants are dropped
    /// (a reload replaced the configuration).
    pub async fn run_refresh(grants: Weak<Grants>) {
        loop {
            let Some(g) = grants.upgrade() else {
                return;
            };
            let started = Instant::now();
            g.poll().await;
            let wait = g.cfg.refresh.saturating_sub(started.elapsed());
            drop(g);
            tokio::time::sleep(wait.max(Duration::from_millis(100))).await;
        }
    }
}

/// The metrics' names and help texts.
const METRICS: [(&str, &str); 4] = [
    (
        "hubgate_auth_hub_grants_decisions_total",
        "Non-owner requests decided with the hub's grants, by result",
    ),
    (
        "hubgate_auth_hub_grants_fetch_failures_total",
        "Failed polls of the hub's REST API, by what was fetched",
    ),
    (
        "hubgate_auth_hub_grants_age_seconds",
        "Seconds since the hub's groups and roles were fetched (+Inf: never)",
    ),
    (
        "hubgate_auth_hub_grants_owners",
        "Owners whose shares are polled",
    ),
];

/// The metrics' descriptions (registered once; values computed at scrape time).
pub fn metric_descs() -> prometheus::Result<Vec<prometheus::core::Desc>> {
    METRICS
        .iter()
        .enumerate()
        .map(|(i, (name, help))| {
            let labels = match i {
                0 => vec!["grant".to_string()],
                1 => vec!["what".to_string()],
                _ => Vec::new(),
            };
            prometheus::core::Desc::new(
                name.to_string(),
                help.to_string(),
                labels,
                Default::default(),
            )
        })
        .collect()
}

/// The metrics' current values.
pub fn metric_families(g: &Grants) -> prometheus::Result<Vec<prometheus::proto::MetricFamily>> {
    use prometheus::core::Collector;
    let opts = |i: usize| prometheus::Opts::new(METRICS[i].0, METRICS[i].1);
    let decisions = prometheus::IntCounterVec::new(opts(0), &["grant"])?;
    for (label, n) in DECISION_LABELS.iter().zip(&g.stats.decisions) {
        decisions
            .with_label_values(&[label])
            .inc_by(n.load(Ordering::Relaxed));
    }
    let failures = prometheus::IntCounterVec::new(opts(1), &["what"])?;
    for (label, n) in ["directory", "shares"].iter().zip(&g.stats.failures) {
        failures
            .with_label_values(&[label])
            .inc_by(n.load(Ordering::Relaxed));
    }
    let age = prometheus::Gauge::with_opts(opts(2))?;
    age.set(g.directory_age().map_or(f64::INFINITY, |a| a.as_secs_f64()));
    let owners = prometheus::IntGauge::with_opts(opts(3))?;
    owners.set(g.owners_watched() as i64);
    let mut out = decisions.collect();
    out.extend(failures.collect());
    out.extend(age.collect());
    out.extend(owners.collect());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(
        groups: &[(&str, &[&str])],
        users: &[(&str, &[&str])],
        gscopes: &[(&str, &[&str])],
    ) -> Directory {
        let mut d = Directory {
            fetched_at: Some(Instant::now()),
            ..Directory::default()
        };
        for (g, members) in groups {
            for m in *members {
                d.groups_of
                    .entry(m.to_string())
                    .or_default()
                    .push(g.to_string());
            }
            d.members.insert(
                g.to_string(),
                members.iter().map(|m| m.to_string()).collect(),
            );
        }
        let parse = |s: &[&str]| s.iter().filter_map(|s| AccessScope::parse(s)).collect();
        for (u, s) in users {
            d.user_scopes.insert(u.to_string(), parse(s));
        }
        for (g, s) in gscopes {
            d.group_scopes.insert(g.to_string(), parse(s));
        }
        d
    }

    fn shares(list: &[(&str, Grantee)]) -> OwnerShares {
        OwnerShares {
            fetched_at: Some(Instant::now()),
            shares: list
                .iter()
                .map(|(s, w)| Share {
                    server: s.to_string(),
                    with: w.clone(),
                })
                .collect(),
        }
    }

    #[test]
    fn scopes_parse() {
        assert_eq!(AccessScope::parse("access:servers"), Some(AccessScope::All));
        assert_eq!(
            AccessScope::parse("access:servers!user=alice"),
            Some(AccessScope::User("alice".into()))
        );
        assert_eq!(
            AccessScope::parse("access:servers!server=alice/"),
            Some(AccessScope::Server("alice".into(), "".into()))
        );
        assert_eq!(
            AccessScope::parse("shares!server=alice/gpu"),
            Some(AccessScope::Server("alice".into(), "gpu".into()))
        );
        assert_eq!(
            AccessScope::parse("access:servers!group=course"),
            Some(AccessScope::Group("course".into()))
        );
        for bad in [
            "access:services",
            "read:servers",
            "access:servers!user",
            "access:servers!user=",
            "access:servers!server=alice",
            "access:servers!server=/x",
            "access:servers!service=x",
            "access:serversX",
        ] {
            assert_eq!(AccessScope::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn shares_to_users_and_groups() {
        let d = dir(&[("course", &["bob", "dave"])], &[], &[]);
        let s = shares(&[
            ("", Grantee::User("bob".into())),
            ("gpu", Grantee::Group("course".into())),
        ]);
        assert_eq!(
            decide(Some(&d), Some(&s), "bob", "alice", Some("")),
            Grant::Share
        );
        assert_eq!(
            decide(Some(&d), Some(&s), "dave", "alice", Some("")),
            Grant::None
        );
        assert_eq!(
            decide(Some(&d), Some(&s), "dave", "alice", Some("gpu")),
            Grant::Share
        );
        assert_eq!(
            decide(Some(&d), Some(&s), "erin", "alice", Some("gpu")),
            Grant::None
        );
        // The route did not name its server: no share applies.
        assert_eq!(
            decide(Some(&d), Some(&s), "bob", "alice", None),
            Grant::None
        );
        // A group share needs fresh group data; a user share does not.
        assert_eq!(
            decide(None, Some(&s), "dave", "alice", Some("gpu")),
            Grant::Unavailable
        );
        assert_eq!(
            decide(None, Some(&s), "bob", "alice", Some("")),
            Grant::Share
        );
        // No fresh shares: unavailable, not "none".
        assert_eq!(
            decide(Some(&d), None, "bob", "alice", Some("")),
            Grant::Unavailable
        );
    }

    #[test]
    fn roles_direct_and_through_groups() {
        let d = dir(
            &[("helpers", &["carol"]), ("course", &["alice"])],
            &[
                ("ian", &["access:servers"]),
                ("tom", &["access:servers!server=alice/gpu"]),
                ("gina", &["access:servers!group=course"]),
            ],
            &[("helpers", &["access:servers!user=alice"])],
        );
        let none = OwnerShares {
            fetched_at: Some(Instant::now()),
            shares: Vec::new(),
        };
        let s = Some(&none);
        assert_eq!(decide(Some(&d), s, "ian", "zoe", Some("")), Grant::Role);
        assert_eq!(
            decide(Some(&d), s, "carol", "alice", Some("x")),
            Grant::Role
        );
        assert_eq!(decide(Some(&d), s, "carol", "zoe", Some("")), Grant::None);
        assert_eq!(
            decide(Some(&d), s, "tom", "alice", Some("gpu")),
            Grant::Role
        );
        assert_eq!(decide(Some(&d), s, "tom", "alice", Some("")), Grant::None);
        assert_eq!(decide(Some(&d), s, "gina", "alice", Some("")), Grant::Role);
        assert_eq!(decide(Some(&d), s, "gina", "zoe", Some("")), Grant::None);
        // Roles need the directory: without it nothing is granted by them.
        assert_eq!(decide(None, s, "ian", "zoe", Some("")), Grant::Unavailable);
    }

    /// Grants against a hub address where nothing listens (a real refused connection).
    fn unreachable_hub(max_owners: usize) -> Arc<Grants> {
        let cfg = HubGrantsConfig {
            hub_api_url: "http://127.0.0.1:1/hub/api".into(),
            token: "t".into(),
            refresh: Duration::from_secs(30),
            max_stale: Duration::from_secs(60),
            request_timeout: Duration::from_secs(2),
            miss_wait: Duration::from_secs(5),
            max_owners,
            max_entries: 10,
            roles: Vec::new(),
        };
        let connector = crate::net::Connector::new(Arc::default(), Arc::default(), false);
        Arc::new(Grants::new(cfg, Arc::new(HttpClient::new(connector))))
    }

    #[tokio::test]
    async fn unreachable_hub_refuses_and_owners_are_capped() {
        let g = unreachable_hub(1);
        // The first request about alice starts a fetch, which fails: refused, not allowed,
        // and without waiting the whole miss-wait (the failed fetch wakes the request).
        let started = Instant::now();
        assert_eq!(g.allows("bob", "alice", Some("")).await, Grant::Unavailable);
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{:?}",
            started.elapsed()
        );
        // Asked again within `refresh`: no new fetch, no wait.
        let started = Instant::now();
        assert_eq!(g.allows("bob", "alice", Some("")).await, Grant::Unavailable);
        assert!(started.elapsed() < Duration::from_millis(500));
        // A second owner is over max-owners.
        assert_eq!(g.allows("bob", "zoe", Some("")).await, Grant::Unavailable);
        assert_eq!(g.owners_watched(), 1);
        let n = |i: usize| g.stats.decisions[i].load(Ordering::Relaxed);
        assert_eq!((n(3), n(4)), (2, 1));
        assert_eq!(g.stats.failures[1].load(Ordering::Relaxed), 1);
        let families = metric_families(&g).expect("metrics");
        let names: Vec<&str> = families.iter().map(|f| f.name()).collect();
        assert_eq!(names, METRICS.map(|m| m.0));
        assert_eq!(metric_descs().expect("descs").len(), METRICS.len());
    }

    #[test]
    fn share_models_from_the_hub() {
        // The REST model of GET /hub/api/shares/{owner} (JupyterHub 5+).
        let item = serde_json::json!({
            "server": {"user": {"name": "alice"}, "name": "", "url": "/user/alice/", "ready": true},
            "scopes": ["access:servers!server=alice/"],
            "user": {"name": "bob"}, "group": null, "kind": "user",
            "created_at": "2026-01-01T00:00:00Z"
        });
        let s: ShareModel = serde_json::from_value(item).expect("share model");
        assert_eq!(s.server.name, "");
        assert_eq!(s.user.map(|u| u.name).as_deref(), Some("bob"));
        assert!(s
            .scopes
            .iter()
            .filter_map(|sc| AccessScope::parse(sc))
            .any(|sc| sc.covers("alice", Some(""), None)));
        assert_eq!(
            utf8_percent_encode("a b/ç", SEGMENT).to_string(),
            "a%20b%2F%C3%A7"
        );
    }
}
