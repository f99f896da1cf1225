//! The in-memory route table every request is matched against.
//!
//! Readers load an immutable snapshot through `ArcSwap` (no lock a writer can hold);
//! writers serialise on a mutex and publish a new snapshot. The snapshot is a persistent
//! hash map, so a write copies O(log n) nodes, not the table.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;

use super::target::{Target, TargetError};

type Map = imbl::HashMap<Arc<str>, Arc<Route>>;

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
    /// so listing the table appends the activity and closes it without re-serialising.
    data_json: Box<str>,
    /// The target string exactly as POSTed (JupyterHub compares it by string equality).
    target_str: Box<str>,
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
        let target_str = target_str.to_string().into_boxed_str();
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
        let mut json = serde_json::Value::Object(data).to_string();
        json.pop(); // the closing brace; `write_json` re-adds it after `last_activity`
        Route {
            key,
            data_json: json.into_boxed_str(),
            target_str,
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
        &self.target_str
    }

    /// Milliseconds since the epoch of the last recorded activity.
    pub fn last_activity_ms(&self) -> i64 {
        self.last_activity_ms.load(Ordering::Relaxed)
    }

    /// Records activity now.
    pub fn touch(&self) {
        self.last_activity_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// Records activity at a given time (used by stores that merge activity from elsewhere).
    pub fn touch_at(&self, ms: i64) {
        self.last_activity_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// Appends this route's JSON object (data plus `last_activity`) to `out`.
    pub fn write_json(&self, out: &mut String) {
        out.push_str(&self.data_json);
        if self.data_json.len() > 1 {
            out.push(',');
        }
        out.push_str("\"last_activity\":\"");
        crate::timefmt::push_iso_ms(out, self.last_activity_ms());
        out.push_str("\"}");
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
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
    snapshot: ArcSwap<Map>,
    writer: Mutex<()>,
}

impl Default for RouteTable {
    fn default() -> Self {
        RouteTable {
            snapshot: ArcSwap::from_pointee(Map::new()),
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
        let mut next = Map::clone(&self.snapshot.load());
        let form: Arc<str> = Arc::from(segment_form(&route.key));
        next.insert(form, route);
        self.snapshot.store(Arc::new(next));
    }

    /// Removes the route stored under exactly `key`; returns it if it existed.
    pub fn remove(&self, key: &str) -> Option<Arc<Route>> {
        let _guard = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.snapshot.load();
        let form = segment_form(key);
        match current.get(form) {
            Some(r) if &*r.key == key => {
                let mut next = Map::clone(&current);
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
        let mut next = Map::new();
        for route in routes {
            next.insert(Arc::from(segment_form(&route.key)), route);
        }
        self.snapshot.store(Arc::new(next));
    }

    /// All routes, in no particular order.
    pub fn all(&self) -> Vec<Arc<Route>> {
        self.snapshot.load().values().cloned().collect()
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.snapshot.load().len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
