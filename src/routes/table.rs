//! The in-memory route table every request is matched against.
//!
//! Readers load an immutable snapshot through `ArcSwap` (no lock a writer can hold);
//! writers serialise on a mutex and publish a new snapshot.
//!
//! Memory per route matters (a hub may hold 100,000 routes; the target is ≤ 0.5 KiB each, `docs/performance.md`). The
//! snapshot is 256 hash tables (shards) of route pointers in 16 groups of 16, each shared
//! between snapshots until a write changes it: a write copies one shard (≈ n/256 pointers),
//! its group and the group list (16 pointers each), not the table. A table holds only the pointer to each route (8 bytes and a control byte, hashed by
//! the route's own key: no copy of the key); a persistent HAMT (`imbl`) took 60–100 bytes per
//! route at 10,000–100,000 routes (BENCHMARKS.md, "Route table"). The target string as posted
//! is a slice of the stored JSON rather than a second copy, and `Route` is kept within 208
//! bytes (see `route_fits_its_size_class`).

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use hashbrown::HashTable;

use crate::net::{Target, TargetError};
pub(crate) use crate::time::now_ms;

/// Shards per group and groups per snapshot (256 shards). A write copies one shard, its group
/// and the group list: about `2 × 16 + n / 256` reference counts touched, where one flat list
/// of 256 shards cost `256 + n / 256` (a tenth of a POST's CPU at 10,000 routes).
const FANOUT: usize = 16;

/// One shard: routes hashed by their segment form (see [`segment_form`]).
type Shard = HashTable<Arc<Route>>;

type Group = [Arc<Shard>; FANOUT];

/// An immutable state of the table.
#[derive(Clone, Debug)]
struct Snapshot {
    /// Keyed (SipHash) so that route keys chosen to collide cannot slow lookups down.
    hasher: std::collections::hash_map::RandomState,
    groups: [Arc<Group>; FANOUT],
    len: usize,
}

impl Snapshot {
    fn empty(hasher: std::collections::hash_map::RandomState) -> Snapshot {
        // every shard starts as the same empty table, in the same group; the first write to
        // one copies the group and the table
        let empty = Arc::new(Shard::new());
        let group = Arc::new(std::array::from_fn(|_| empty.clone()));
        Snapshot {
            hasher,
            groups: std::array::from_fn(|_| Arc::clone(&group)),
            len: 0,
        }
    }

    fn hash(&self, form: &str) -> u64 {
        self.hasher.hash_one(form)
    }

    /// The group and shard of a hash: bits 32–39, which hashbrown uses for neither the bucket
    /// index (the low bits) nor the control byte (the top 7), so the shards' tables stay well
    /// spread.
    fn place(hash: u64) -> (usize, usize) {
        let bits = (hash >> 32) as usize;
        ((bits / FANOUT) % FANOUT, bits % FANOUT)
    }

    fn shard(&self, hash: u64) -> &Shard {
        let (g, s) = Self::place(hash);
        &self.groups[g][s]
    }

    fn shard_mut(groups: &mut [Arc<Group>; FANOUT], hash: u64) -> &mut Shard {
        let (g, s) = Self::place(hash);
        Arc::make_mut(&mut Arc::make_mut(&mut groups[g])[s])
    }

    fn get(&self, form: &str) -> Option<&Arc<Route>> {
        let h = self.hash(form);
        self.shard(h).find(h, |r| segment_form(&r.key) == form)
    }

    /// Inserts or replaces (whatever the exact key: same segment form, same route slot).
    fn insert(&mut self, route: Arc<Route>) {
        let Snapshot {
            hasher,
            groups,
            len,
        } = self;
        let form = segment_form(&route.key);
        let h = hasher.hash_one(form);
        let shard = Self::shard_mut(groups, h);
        match shard.find_mut(h, |r| segment_form(&r.key) == form) {
            Some(slot) => *slot = route,
            None => {
                shard.insert_unique(h, route, |r| hasher.hash_one(segment_form(&r.key)));
                *len += 1;
            }
        }
    }

    fn remove(&mut self, form: &str) -> Option<Arc<Route>> {
        let h = self.hash(form);
        let shard = Self::shard_mut(&mut self.groups, h);
        let (route, _) = shard
            .find_entry(h, |r| segment_form(&r.key) == form)
            .ok()?
            .remove();
        self.len -= 1;
        Some(route)
    }

    fn routes(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.groups
            .iter()
            .flat_map(|g| g.iter())
            .flat_map(|s| s.iter())
    }
}

/// What a route serves, from the data JupyterHub posts with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    /// `{"hub": true}`: the hub itself.
    Hub,
    /// `{"user": …}`: a user's server.
    User,
    /// `{"service": …}`: a JupyterHub service.
    Service,
    /// Anything else (admin routes, `--default-target`).
    Other,
}

impl RouteKind {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            RouteKind::Hub => "hub",
            RouteKind::User => "user",
            RouteKind::Service => "service",
            RouteKind::Other => "other",
        }
    }

    /// Index into per-kind arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// One route: the stored JSON, its parsed target and its activity clock.
#[derive(Debug)]
pub struct Route {
    /// The decoded key as the API shows it (`/user/alice`).
    pub key: Arc<str>,
    /// The POSTed object serialised without its closing `}` (and without `last_activity`),
    /// so listing the table appends the activity and closes it without re-serialising; then,
    /// only when the target needed escaping in the JSON, the target as posted.
    data_json: Box<str>,
    /// Where the target string exactly as POSTed is in `data_json` (JupyterHub compares it by
    /// string equality): inside the JSON when it needed no escaping there, else after it.
    target_at: u32,
    /// The target's length inside the JSON, or [`TARGET_AFTER_JSON`]: then the JSON ends at
    /// `target_at` and the target runs to the end of `data_json`. (Two bytes rather than a
    /// second offset keep `Route` in its allocator size class.)
    target_len: u16,
    /// The parsed target, or why it cannot be used (a 500 at request time, as in CHP).
    pub target: Result<Target, TargetError>,
    /// The JupyterHub user this route belongs to (`"user"` in the POSTed data).
    pub user: Option<Box<str>>,
    /// What JupyterHub registered this route for (metrics label).
    pub kind: RouteKind,
    last_activity_ms: AtomicI64,
}

impl Route {
    /// Builds a route from its key and the POSTed object (which must hold a string `target`).
    pub fn new(key: Arc<str>, mut data: serde_json::Map<String, serde_json::Value>) -> Route {
        data.remove("last_activity");
        let target_str = data
            .get("target")
            .and_then(|t| t.as_str())
            .unwrap_or_default();
        let target = Target::parse(target_str);
        let (mut json, found) = object_json(&data);
        let (target_at, target_len) = match found {
            Some(at) if target_str.len() < usize::from(TARGET_AFTER_JSON) => {
                (at, target_str.len() as u16)
            }
            _ => {
                let at = json.len();
                json.push_str(target_str);
                (at, TARGET_AFTER_JSON)
            }
        };
        // An API body is limited to api.max-body-bytes (10 MiB by default), far below 4 GiB;
        // past that, `target_str` and `write_json` would give "" rather than panic.
        let target_at = u32::try_from(target_at).unwrap_or(u32::MAX);
        let user = data
            .get("user")
            .and_then(|u| u.as_str())
            .map(|u| u.to_string().into_boxed_str());
        let kind = if user.is_some() {
            RouteKind::User
        } else if data.get("hub").and_then(|h| h.as_bool()) == Some(true) {
            RouteKind::Hub
        } else if data.contains_key("service") {
            RouteKind::Service
        } else {
            RouteKind::Other
        };
        Route {
            key,
            // A fresh allocation of the exact size: shrinking the built string in place
            // (`into_boxed_str`) would keep its larger block (mimalloc keeps a block that is
            // at least half used), 32 bytes more per JupyterHub route.
            data_json: Box::from(json.as_str()),
            target_at,
            target_len,
            target,
            user,
            kind,
            last_activity_ms: AtomicI64::new(now_ms()),
        }
    }

    /// Builds a route whose activity clock starts at `last_activity_ms` instead of now (a
    /// route loaded from a shared store keeps the activity it had there).
    pub fn new_at(
        key: Arc<str>,
        data: serde_json::Map<String, serde_json::Value>,
        last_activity_ms: i64,
    ) -> Route {
        let route = Route::new(key, data);
        route
            .last_activity_ms
            .store(last_activity_ms, Ordering::Relaxed);
        route
    }

    /// The target string as POSTed.
    pub fn target_str(&self) -> &str {
        let at = self.target_at as usize;
        let target = if self.target_len == TARGET_AFTER_JSON {
            self.data_json.get(at..)
        } else {
            self.data_json.get(at..at + usize::from(self.target_len))
        };
        target.unwrap_or_default()
    }

    /// The stored JSON: the POSTed object without its closing brace.
    fn json(&self) -> &str {
        if self.target_len == TARGET_AFTER_JSON {
            self.data_json
                .get(..self.target_at as usize)
                .unwrap_or_default()
        } else {
            &self.data_json
        }
    }

    /// The `server_name` JupyterHub posted with a user's route (`""` for the default
    /// server). Parsed on each call: only refused requests that consult the hub's grants ask.
    pub fn server_name(&self) -> Option<String> {
        let mut json = String::with_capacity(self.json().len() + 1);
        json.push_str(self.json());
        json.push('}');
        let data: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&json).ok()?;
        match data.get("server_name") {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            _ => None,
        }
    }

    /// Milliseconds since the epoch of the last recorded activity.
    pub fn last_activity_ms(&self) -> i64 {
        self.last_activity_ms.load(Ordering::Relaxed)
    }

    /// Records activity now. Written at most once per millisecond: a store on every request
    /// would pull the route's cache line away from the other worker threads reading it.
    pub fn touch(&self) {
        let now = now_ms();
        if self.last_activity_ms.load(Ordering::Relaxed) != now {
            self.last_activity_ms.store(now, Ordering::Relaxed);
        }
    }

    /// Records activity at a given time (used by stores that merge activity from elsewhere).
    pub fn touch_at(&self, ms: i64) {
        self.last_activity_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// Appends this route's JSON object (data plus `last_activity`) to `out`.
    pub fn write_json(&self, out: &mut String) {
        let json = self.json();
        out.push_str(json);
        if json.len() > 1 {
            out.push(',');
        }
        out.push_str("\"last_activity\":\"");
        crate::time::push_iso_ms(out, self.last_activity_ms());
        out.push_str("\"}");
    }
}

/// `Route::target_len` when the target is stored after the JSON.
const TARGET_AFTER_JSON: u16 = u16::MAX;

/// `data` as serde_json's compact form writes it, without the closing brace, and where in it
/// the text of a string `target` is when that needed no escaping. Built entry by entry (in
/// the map's order, as `Value::to_string` would) to learn that position.
fn object_json(data: &serde_json::Map<String, serde_json::Value>) -> (String, Option<usize>) {
    let mut json = String::with_capacity(128);
    json.push('{');
    let mut target_at = None;
    for (i, (k, v)) in data.iter().enumerate() {
        if i > 0 {
            json.push(',');
        }
        push_json(&mut json, &serde_json::Value::String(k.clone()));
        json.push(':');
        match v {
            serde_json::Value::String(t) if k == "target" && !needs_escape(t) => {
                json.push('"');
                target_at = Some(json.len());
                json.push_str(t);
                json.push('"');
            }
            _ => push_json(&mut json, v),
        }
    }
    (json, target_at)
}

fn push_json(out: &mut String, v: &serde_json::Value) {
    use std::fmt::Write;
    // `Value`'s Display is serde_json's compact serialisation
    let _ = write!(out, "{v}");
}

/// Whether serde_json escapes anything in `s` (it escapes `"`, `\` and control characters).
fn needs_escape(s: &str) -> bool {
    s.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20)
}

/// The first 16 bytes of `s` (zero-padded) as a big-endian integer: ordering these orders the
/// byte strings, except that equal values need a full comparison.
fn sort_prefix(s: &[u8]) -> u128 {
    let mut b = [0u8; 16];
    let n = s.len().min(16);
    b[..n].copy_from_slice(&s[..n]);
    u128::from_be_bytes(b)
}

/// CHP's `trim_prefix`: ensure a leading `/`, drop one trailing `/` (except for `/`).
pub fn trim_prefix(path: &str) -> String {
    let mut p = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    if p.len() > 1 && p.ends_with('/') {
        p.pop();
    }
    p
}

/// Why a route key cannot be stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// NUL or another control character: no request path can carry it.
    #[error("route path {0:?} has control characters")]
    Control(String),
    /// A `.` or `..` segment: every request path is canonicalised without them, so the
    /// route could never match, and `/user/%2e%2e/hub` would otherwise replace `/hub`.
    #[error("route path {0:?} has a '.' or '..' segment")]
    DotSegment(String),
}

/// Checks a decoded, trimmed route key given to the route API.
pub fn check_key(key: &str) -> Result<(), KeyError> {
    if key.chars().any(char::is_control) {
        return Err(KeyError::Control(key.to_string()));
    }
    if key.split(['/', '\\']).any(|seg| seg == "." || seg == "..") {
        return Err(KeyError::DotSegment(key.to_string()));
    }
    Ok(())
}

/// The form the matcher compares: the key without leading or trailing slashes
/// (CHP's trie splits `/user/alice/` into `["user", "alice"]`).
pub(super) fn segment_form(key: &str) -> &str {
    key.trim_matches('/')
}

/// A successful lookup: the route, and how many bytes of the looked-up path it matched.
#[derive(Debug, Clone)]
pub struct Match {
    /// The matched route.
    pub route: Arc<Route>,
    /// Length of the matched prefix within the looked-up path (leading slashes included).
    pub prefix_len: usize,
}

/// The route table: lock-free reads, serialised writes.
#[derive(Debug)]
pub struct RouteTable {
    snapshot: ArcSwap<Snapshot>,
    writer: Mutex<()>,
}

impl Default for RouteTable {
    fn default() -> Self {
        RouteTable {
            snapshot: ArcSwap::from_pointee(Snapshot::empty(Default::default())),
            writer: Mutex::new(()),
        }
    }
}

impl RouteTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Longest whole-segment prefix match of a decoded path (CHP's URLTrie semantics).
    pub fn lookup(&self, path: &str) -> Option<Match> {
        let snap = self.snapshot.load();
        let lead = path.len() - path.trim_start_matches('/').len();
        let mut cand = path.trim_matches('/');
        loop {
            if let Some(route) = snap.get(cand) {
                return Some(Match {
                    route: route.clone(),
                    prefix_len: lead + cand.len(),
                });
            }
            if cand.is_empty() {
                return None;
            }
            cand = match cand.rfind('/') {
                Some(i) => &cand[..i],
                None => "",
            };
        }
    }

    /// The route stored under exactly this (normalised) key.
    pub fn get(&self, key: &str) -> Option<Arc<Route>> {
        let snap = self.snapshot.load();
        snap.get(segment_form(key))
            .filter(|r| &*r.key == key)
            .cloned()
    }

    /// Inserts or replaces a route.
    pub fn insert(&self, route: Arc<Route>) {
        let _guard = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = Snapshot::clone(&self.snapshot.load());
        next.insert(route);
        self.snapshot.store(Arc::new(next));
    }

    /// Removes the route stored under exactly `key`; returns it if it existed.
    pub fn remove(&self, key: &str) -> Option<Arc<Route>> {
        let _guard = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.snapshot.load();
        let form = segment_form(key);
        match current.get(form) {
            Some(r) if &*r.key == key => {
                let mut next = Snapshot::clone(&current);
                let removed = next.remove(form);
                self.snapshot.store(Arc::new(next));
                removed
            }
            _ => None,
        }
    }

    /// Replaces the whole table at once (used by stores that resynchronise).
    pub fn replace_all(&self, routes: impl IntoIterator<Item = Arc<Route>>) {
        let _guard = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = Snapshot::empty(self.snapshot.load().hasher.clone());
        for route in routes {
            next.insert(route);
        }
        self.snapshot.store(Arc::new(next));
    }

    /// Calls `f` with every route of one snapshot, in key order. Cheaper than sorting
    /// [`RouteTable::all`]: no reference count is touched per route.
    pub fn for_each_sorted(&self, mut f: impl FnMut(&Route)) {
        let snap = self.snapshot.load();
        // Keys share long prefixes (`/user/`), so comparing them byte by byte is most of a
        // sort. The 16 bytes after the leading `/` (`user/` and most user names), as one
        // integer, order nearly all keys; only keys equal there are compared in full. One pass
        // over the routes: in a large table each route and key is a cache miss.
        let mut routes: Vec<(u128, &[u8], &Route)> = Vec::with_capacity(snap.len);
        for r in snap.routes() {
            let key = r.key.as_bytes();
            let rest = key.strip_prefix(b"/").unwrap_or(key);
            routes.push((sort_prefix(rest), rest, r.as_ref()));
        }
        routes.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(b.1)));
        for (_, _, route) in routes {
            f(route);
        }
    }

    /// All routes, in no particular order.
    pub fn all(&self) -> Vec<Arc<Route>> {
        self.snapshot.load().routes().cloned().collect()
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.snapshot.load().len
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_that_no_request_can_reach_are_refused() {
        for ok in [
            "/",
            "/user/alice",
            "/user/has@/",
            "/user/秀樹",
            "/hub.example.org/user/a",
            "/user/a.b/.x",
        ] {
            assert_eq!(check_key(ok), Ok(()), "{ok}");
        }
        assert!(matches!(
            check_key("/user/../hub"),
            Err(KeyError::DotSegment(_))
        ));
        assert!(matches!(
            check_key("/user/a/."),
            Err(KeyError::DotSegment(_))
        ));
        assert!(matches!(
            check_key("/user\\..\\hub"),
            Err(KeyError::DotSegment(_))
        ));
        assert!(matches!(check_key("/user/a\0b"), Err(KeyError::Control(_))));
        assert!(matches!(check_key("/user/a\nb"), Err(KeyError::Control(_))));
    }
    use serde_json::json;

    #[test]
    fn server_name_as_posted() {
        let data = |v: serde_json::Value| v.as_object().cloned().unwrap_or_default();
        let named = Route::new(
            Arc::from("/user/alice/gpu"),
            data(
                json!({"target": "http://127.0.0.1:1/\"q", "user": "alice", "server_name": "gpu"}),
            ),
        );
        assert_eq!(named.server_name().as_deref(), Some("gpu"));
        let default = Route::new(
            Arc::from("/user/alice"),
            data(json!({"target": "http://127.0.0.1:1", "user": "alice", "server_name": ""})),
        );
        assert_eq!(default.server_name().as_deref(), Some(""));
        let unnamed = Route::new(
            Arc::from("/user/bob"),
            data(json!({"target": "http://127.0.0.1:1", "user": "bob"})),
        );
        assert_eq!(unnamed.server_name(), None);
    }

    fn route(key: &str, target: &str) -> Arc<Route> {
        let data = json!({ "target": target })
            .as_object()
            .cloned()
            .unwrap_or_default();
        Arc::new(Route::new(Arc::from(key), data))
    }

    #[test]
    fn longest_segment_prefix() {
        let t = RouteTable::new();
        t.insert(route("/", "http://127.0.0.1:1"));
        t.insert(route("/user/alice", "http://127.0.0.1:2"));
        t.insert(route("/user/alice/gpu", "http://127.0.0.1:3"));
        let key = |p: &str| t.lookup(p).map(|m| m.route.key.to_string());
        assert_eq!(key("/user/alice").as_deref(), Some("/user/alice"));
        assert_eq!(key("/user/alice/").as_deref(), Some("/user/alice"));
        assert_eq!(key("/user/alice/lab/tree").as_deref(), Some("/user/alice"));
        assert_eq!(key("/user/alice/gpu/x").as_deref(), Some("/user/alice/gpu"));
        assert_eq!(key("/user/alicex").as_deref(), Some("/"));
        assert_eq!(key("/user//alice/x").as_deref(), Some("/"));
        assert_eq!(key("/user/ALICE").as_deref(), Some("/"));
        assert_eq!(t.lookup("/user/alice/x").map(|m| m.prefix_len), Some(11));
    }

    #[test]
    fn no_root_means_no_match() {
        let t = RouteTable::new();
        t.insert(route("/user/alice", "http://127.0.0.1:2"));
        assert!(t.lookup("/hub/login").is_none());
        assert!(t.lookup("/").is_none());
    }

    #[test]
    fn exact_key_get_and_remove() {
        let t = RouteTable::new();
        t.insert(route("//double", "http://127.0.0.1:2"));
        assert!(t.get("//double").is_some());
        assert!(t.get("/double").is_none());
        assert!(t.remove("//double/").is_none());
        assert!(t.remove("//double").is_some());
        assert!(t.is_empty());
    }

    #[test]
    fn stored_json_is_serde_jsons() {
        for v in [
            json!({"target": "http://h:1", "user": "alice", "server_name": "", "jupyterhub": true}),
            json!({"user": "a\"b", "target": "http://h/\"q\\\n", "x": {"target": "nested"}}),
            json!({"target": 5, "list": [1, "two", null], "ü": "☃"}),
            json!({"n": 1.5}),
            json!({}),
        ] {
            let map = v.as_object().cloned().unwrap_or_default();
            let r = Route::new(Arc::from("/k"), map.clone());
            let mut want = serde_json::Value::Object(map.clone()).to_string();
            want.pop();
            assert_eq!(r.json(), want);
            let target = map.get("target").and_then(|t| t.as_str()).unwrap_or("");
            assert_eq!(r.target_str(), target);
            let mut listed = String::new();
            r.write_json(&mut listed);
            let back: serde_json::Value = serde_json::from_str(&listed).unwrap();
            assert_eq!(
                back["target"],
                map.get("target").cloned().unwrap_or_default()
            );
        }
    }

    #[test]
    fn same_segment_form_replaces() {
        let t = RouteTable::new();
        t.insert(route("/user/a", "http://127.0.0.1:1"));
        t.insert(route("//user/a/", "http://127.0.0.1:2"));
        assert_eq!(t.len(), 1);
        assert!(t.get("/user/a").is_none());
        assert_eq!(
            t.get("//user/a/").map(|r| r.target_str().to_string()),
            Some("http://127.0.0.1:2".into())
        );
        assert_eq!(
            t.lookup("/user/a/x").map(|m| m.route.key.to_string()),
            Some("//user/a/".into())
        );
        let mut keys = Vec::new();
        t.insert(route("/", "http://127.0.0.1:3"));
        t.for_each_sorted(|r| keys.push(r.key.to_string()));
        assert_eq!(keys, ["/", "//user/a/"]);
        assert_eq!(t.all().len(), 2);
    }

    /// A route is allocated as `Arc<Route>` (16 bytes of counts + the route). At 208 bytes that
    /// is 224, an exact size class of mimalloc (and jemalloc); one byte more costs 32 bytes per
    /// route (the 256 class). Grow `Route` or `Target` only knowing that.
    #[test]
    #[cfg(target_pointer_width = "64")]
    fn route_fits_its_size_class() {
        assert!(
            std::mem::size_of::<Route>() <= 208,
            "Route is {} bytes",
            std::mem::size_of::<Route>()
        );
    }

    #[test]
    fn long_and_escaped_targets() {
        let long = format!("http://h:1/{}", "x".repeat(70_000));
        for target in [long.as_str(), "http://h:1/\"q\\", ""] {
            let data = json!({"a": 1, "target": target, "z": "\"end"});
            let r = Route::new(
                Arc::from("/k"),
                data.as_object().cloned().unwrap_or_default(),
            );
            assert_eq!(r.target_str(), target);
            let mut want = data.to_string();
            want.pop();
            assert_eq!(r.json(), want);
        }
    }

    #[test]
    fn sorted_like_bytes() {
        let t = RouteTable::new();
        let keys = [
            "/user/a",
            "/user/a\u{0}",
            "/user/a\u{0}x",
            "/user/ab",
            "/user/abcdefghij1",
            "/user/abcdefghij0",
            "/user/b",
            "/",
            "/user/Z",
            "/user/ä",
            "/user/abcdefgh",
        ];
        for k in keys {
            t.insert(route(k, "http://127.0.0.1:1"));
        }
        let mut got = Vec::new();
        t.for_each_sorted(|r| got.push(r.key.to_string()));
        let mut want: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        want.sort();
        assert_eq!(got, want);
        // all keys sharing a prefix longer than 8 bytes
        let t = RouteTable::new();
        for i in [10, 2, 33, 1, 200, 7] {
            t.insert(route(&format!("/user/someone-{i}"), "http://127.0.0.1:1"));
        }
        let mut got = Vec::new();
        t.for_each_sorted(|r| got.push(r.key.to_string()));
        let mut want = got.clone();
        want.sort();
        assert_eq!(got, want);
        RouteTable::new().for_each_sorted(|_| panic!("empty table"));
    }

    #[test]
    fn many_writes_match_a_model() {
        // enough keys to fill every shard of every group, with replacements and removals
        let t = RouteTable::new();
        let mut model = std::collections::BTreeMap::new();
        for i in 0..3000 {
            let key = format!("/user/u{i}");
            let target = format!("http://127.0.0.1:{}", 1000 + i);
            t.insert(route(&key, &target));
            model.insert(key, target);
        }
        for i in (0..3000).step_by(3) {
            let key = format!("/user/u{i}");
            assert!(t.remove(&key).is_some());
            model.remove(&key);
        }
        for i in (1..3000).step_by(7) {
            let key = format!("/user/u{i}");
            t.insert(route(&key, "http://127.0.0.1:9"));
            model.insert(key, "http://127.0.0.1:9".into());
        }
        assert_eq!(t.len(), model.len());
        for i in 0..3000 {
            let key = format!("/user/u{i}");
            assert_eq!(
                t.lookup(&format!("{key}/lab"))
                    .map(|m| m.route.target_str().to_string()),
                model.get(&key).cloned(),
                "{key}"
            );
        }
        let mut listed = Vec::new();
        t.for_each_sorted(|r| listed.push((r.key.to_string(), r.target_str().to_string())));
        assert_eq!(listed, model.into_iter().collect::<Vec<_>>());
    }

    #[test]
    fn json_round_trip() {
        let data = json!({"target": "http://h:1/\"q", "user": "alice", "n": 1});
        let r = Route::new(
            Arc::from("/user/alice"),
            data.as_object().cloned().unwrap_or_default(),
        );
        let mut s = String::new();
        r.write_json(&mut s);
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["user"], "alice");
        assert_eq!(v["n"], 1);
        assert!(v["last_activity"].as_str().unwrap().ends_with('Z'));
        assert_eq!(r.target_str(), "http://h:1/\"q");
        assert_eq!(r.user.as_deref(), Some("alice"));
    }
}
