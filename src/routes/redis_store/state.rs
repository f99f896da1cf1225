//! What a replica knows about the shared table: the revision its local table reflects, its
//! place in the change stream, and the revision of the last change applied to each route.
//!
//! Everything here is synchronous and free of I/O (unit-tested without Redis); the caller
//! holds the state's mutex for the duration of one call, never across an await.

use std::collections::HashMap;
use std::sync::Arc;

use log::warn;
use serde::Deserialize;

use super::super::table::{now_ms, segment_form, Route, RouteTable};

/// How a route is stored in the routes hash, under its segment form (`user/alice` for
/// `/user/alice`): `{"key":"/user/alice","data":{…the POSTed object…}}`. Keys that differ
/// only in leading or trailing slashes share a slot, exactly as they do in [`RouteTable`].
pub(super) fn stored_value(key: &str, data: &serde_json::Map<String, serde_json::Value>) -> String {
    format!(
        "{}{}}}",
        value_prefix(key),
        serde_json::Value::Object(data.clone())
    )
}

/// The start of [`stored_value`] for `key`, which the delete script compares so that it
/// deletes a slot only when it holds exactly this key.
pub(super) fn value_prefix(key: &str) -> String {
    let quoted = serde_json::to_string(key).unwrap_or_else(|_| "\"\"".to_string());
    format!("{{\"key\":{quoted},\"data\":")
}

#[derive(Deserialize)]
struct Stored {
    key: String,
    data: serde_json::Map<String, serde_json::Value>,
}

/// Decodes a stored value into a route.
pub(super) fn decode(value: &str, last_activity_ms: i64) -> Result<Route, String> {
    let stored: Stored = serde_json::from_str(value).map_err(|e| e.to_string())?;
    if !stored.data.get("target").is_some_and(|t| t.is_string()) {
        return Err("no string target".to_string());
    }
    Ok(Route::new_at(
        Arc::from(stored.key),
        stored.data,
        last_activity_ms,
    ))
}

/// One entry of the change stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Change {
    /// The stream entry ID (`<ms>-<seq>`).
    pub id: String,
    /// The store's revision after this change.
    pub rev: u64,
    /// `add`, `del` or `reset`.
    pub op: String,
    /// The route key (decoded, as the API shows it).
    pub key: String,
    /// For `add`: the stored value.
    pub route: String,
    /// For `add`: the route's activity (ms since the epoch) when it was written.
    pub at: i64,
}

impl Change {
    /// Parses an entry's field list (`[name, value, name, value, …]`).
    pub fn parse(id: String, fields: Vec<String>) -> Result<Change, String> {
        let mut c = Change {
            id,
            rev: 0,
            op: String::new(),
            key: String::new(),
            route: String::new(),
            at: 0,
        };
        let mut it = fields.into_iter();
        while let (Some(name), Some(value)) = (it.next(), it.next()) {
            match name.as_str() {
                "rev" => c.rev = value.parse().map_err(|_| format!("bad rev {value:?}"))?,
                "op" => c.op = value,
                "key" => c.key = value,
                "route" => c.route = value,
                "at" => c.at = value.parse().unwrap_or(0),
                _ => {}
            }
        }
        if c.rev == 0 {
            return Err(format!("change {} has no revision", c.id));
        }
        Ok(c)
    }

    /// When Redis added the entry (the ms part of its ID).
    pub fn written_ms(&self) -> Option<i64> {
        self.id.split('-').next()?.parse().ok()
    }
}

/// A consistent read of the whole store (one MULTI/EXEC).
#[derive(Debug, Default)]
pub(super) struct Snapshot {
    pub epoch: Option<String>,
    pub rev: u64,
    /// Segment form → stored value.
    pub routes: HashMap<String, String>,
    /// Segment form → last activity (ms).
    pub activity: HashMap<String, i64>,
    /// ID of the newest stream entry, if any.
    pub last_id: Option<String>,
}

#[derive(Debug, Clone)]
struct Entry {
    /// Revision of the last change applied to this slot.
    rev: u64,
    /// The stored value, `None` once deleted (a tombstone, dropped once the stream is past it).
    value: Option<Box<str>>,
}

/// A route write this replica made itself, applied before its change comes back on the
/// stream (read-your-writes on the replica JupyterHub talks to).
pub(super) enum LocalWrite {
    Add { value: String, route: Box<Route> },
    Del { key: String },
}

/// What this replica knows about the store.
#[derive(Debug, Default)]
pub(super) struct SyncState {
    /// The store's identity; a different one means Redis lost or replaced its data.
    pub epoch: Option<String>,
    /// Every change up to this revision is reflected in the local table.
    pub applied: u64,
    /// Where to read the stream from.
    pub last_id: String,
    entries: HashMap<Arc<str>, Entry>,
    tombstones: usize,
}

impl SyncState {
    /// Nothing loaded yet: read the stream from its start.
    pub fn new() -> SyncState {
        SyncState {
            last_id: "0-0".to_string(),
            ..Default::default()
        }
    }

    /// Applies stream entries in order. `Err` says why the table must be reloaded instead
    /// (a gap in the revisions, a reset, an unknown operation); entries before it stay applied.
    pub fn apply_stream(
        &mut self,
        table: &RouteTable,
        changes: &[Change],
        mut applied: impl FnMut(&Change),
    ) -> Result<(), String> {
        for c in changes {
            if c.rev <= self.applied {
                return Err(format!(
                    "change at revision {} is not newer than the table's revision {}",
                    c.rev, self.applied
                ));
            }
            if c.rev != self.applied + 1 {
                return Err(format!(
                    "missed changes: expected revision {}, the stream has {}",
                    self.applied + 1,
                    c.rev
                ));
            }
            let form = segment_form(&c.key);
            let newer_here = self.entries.get(form).is_some_and(|e| e.rev >= c.rev);
            match c.op.as_str() {
                "add" if !newer_here => match decode(&c.route, c.at) {
                    Ok(route) => {
                        table.insert(Arc::new(route));
                        self.entries.insert(
                            Arc::from(form),
                            Entry {
                                rev: c.rev,
                                value: Some(c.route.clone().into_boxed_str()),
                            },
                        );
                    }
                    Err(e) => warn!("route store: ignoring unreadable route {:?}: {e}", c.key),
                },
                "del" if !newer_here => {
                    table.remove(&c.key);
                    self.tombstone(form, c.rev);
                }
                "add" | "del" => {}
                "reset" => return Err("the store was re-seeded".to_string()),
                other => return Err(format!("unknown change {other:?} in the stream")),
            }
            self.applied = c.rev;
            self.last_id.clone_from(&c.id);
            applied(c);
        }
        self.prune();
        Ok(())
    }

    /// Applies a write this replica made (store revision `rev`, in store `epoch`) unless the
    /// table already reflects it or something newer.
    pub fn apply_local(&mut self, table: &RouteTable, epoch: &str, rev: u64, write: LocalWrite) {
        if self.epoch.as_deref() != Some(epoch) || rev <= self.applied {
            return;
        }
        let key = match &write {
            LocalWrite::Add { route, .. } => route.key.to_string(),
            LocalWrite::Del { key } => key.clone(),
        };
        let form = segment_form(&key);
        if self.entries.get(form).is_some_and(|e| e.rev >= rev) {
            return;
        }
        match write {
            LocalWrite::Add { value, route } => {
                table.insert(Arc::from(route));
                self.entries.insert(
                    Arc::from(form),
                    Entry {
                        rev,
                        value: Some(value.into_boxed_str()),
                    },
                );
            }
            LocalWrite::Del { key } => {
                table.remove(&key);
                self.tombstone(form, rev);
            }
        }
    }

    /// Replaces the table with a snapshot. Routes whose stored value did not change keep
    /// their `Route` (and so the activity recorded on it). With `keep_newer`, writes of
    /// this replica newer than the snapshot are kept: a write that raced the snapshot on
    /// the same connection. Without it the snapshot is the whole truth: after a
    /// reconnection (possibly to a promoted replica that never saw writes the old master
    /// had not confirmed) or when the store is behind this table. Returns the number of
    /// routes.
    pub fn load(&mut self, table: &RouteTable, snap: Snapshot, keep_newer: bool) -> usize {
        let same_epoch = snap.epoch.is_some() && snap.epoch == self.epoch;
        let newer: Vec<(Arc<str>, Entry)> = if same_epoch && keep_newer {
            self.entries
                .iter()
                .filter(|(_, e)| e.rev > snap.rev)
                .map(|(k, e)| (k.clone(), e.clone()))
                .collect()
        } else {
            Vec::new()
        };
        let current: HashMap<String, Arc<Route>> = table
            .all()
            .into_iter()
            .map(|r| (segment_form(&r.key).to_string(), r))
            .collect();
        let mut routes = Vec::with_capacity(snap.routes.len());
        let mut entries = HashMap::with_capacity(snap.routes.len());
        for (form, value) in snap.routes {
            if newer.iter().any(|(k, _)| **k == *form) {
                continue;
            }
            let at = snap.activity.get(&form).copied();
            let unchanged = self
                .entries
                .get(form.as_str())
                .and_then(|e| e.value.as_deref())
                == Some(value.as_str());
            let route = match current.get(&form) {
                Some(r) if unchanged => {
                    if let Some(at) = at {
                        r.touch_at(at);
                    }
                    r.clone()
                }
                _ => match decode(&value, at.unwrap_or_else(now_ms)) {
                    Ok(r) => Arc::new(r),
                    Err(e) => {
                        warn!("route store: ignoring unreadable route {form:?}: {e}");
                        continue;
                    }
                },
            };
            routes.push(route);
            entries.insert(
                Arc::from(form.as_str()),
                Entry {
                    rev: snap.rev,
                    value: Some(value.into_boxed_str()),
                },
            );
        }
        for (form, entry) in newer {
            if entry.value.is_some() {
                if let Some(r) = current.get(&*form) {
                    routes.push(r.clone());
                }
            }
            entries.insert(form, entry);
        }
        let n = routes.len();
        table.replace_all(routes);
        self.entries = entries;
        self.tombstones = 0;
        self.applied = snap.rev;
        self.epoch = snap.epoch;
        self.last_id = snap.last_id.unwrap_or_else(|| "0-0".to_string());
        n
    }

    /// The routes this replica holds, as `(segment form, stored value, last activity)`, to
    /// write back into a store that lost them.
    pub fn seed(&self, table: &RouteTable) -> Vec<(String, String, i64)> {
        table
            .all()
            .into_iter()
            .filter_map(|r| {
                let form = segment_form(&r.key);
                let value = self.entries.get(form)?.value.as_deref()?;
                Some((form.to_string(), value.to_string(), r.last_activity_ms()))
            })
            .collect()
    }

    fn tombstone(&mut self, form: &str, rev: u64) {
        self.entries
            .insert(Arc::from(form), Entry { rev, value: None });
        self.tombstones += 1;
    }

    /// Drops tombstones the stream is past (nothing older can be applied any more).
    fn prune(&mut self) {
        if self.tombstones < 1024 {
            return;
        }
        let applied = self.applied;
        self.entries
            .retain(|_, e| e.value.is_some() || e.rev > applied);
        self.tombstones = self.entries.values().filter(|e| e.value.is_none()).count();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn data(target: &str) -> serde_json::Map<String, serde_json::Value> {
        json!({ "target": target }).as_object().cloned().unwrap()
    }

    fn add(rev: u64, key: &str, target: &str) -> Change {
        Change {
            id: format!("{}-0", 1000 + rev),
            rev,
            op: "add".into(),
            key: key.into(),
            route: stored_value(key, &data(target)),
            at: 1_000 + rev as i64,
        }
    }

    fn del(rev: u64, key: &str) -> Change {
        Change {
            id: format!("{}-0", 1000 + rev),
            rev,
            op: "del".into(),
            key: key.into(),
            route: String::new(),
            at: 0,
        }
    }

    fn state() -> SyncState {
        SyncState {
            epoch: Some("e1".into()),
            last_id: "0-0".into(),
            ..Default::default()
        }
    }

    fn target(t: &RouteTable, key: &str) -> Option<String> {
        t.get(key).map(|r| r.target_str().to_string())
    }

    #[test]
    fn stored_value_round_trip() {
        let v = stored_value("/user/a\"b", &data("http://h:1"));
        assert!(v.starts_with(&value_prefix("/user/a\"b")), "{v}");
        let r = decode(&v, 42).unwrap();
        assert_eq!(&*r.key, "/user/a\"b");
        assert_eq!(r.target_str(), "http://h:1");
        assert_eq!(r.last_activity_ms(), 42);
        assert!(decode("{\"key\":\"/x\",\"data\":{}}", 1).is_err());
    }

    #[test]
    fn stream_applies_in_order_and_detects_gaps() {
        let t = RouteTable::new();
        let mut s = state();
        let mut seen = 0;
        s.apply_stream(
            &t,
            &[add(1, "/a", "http://h:1"), add(2, "/b", "http://h:2")],
            |_| seen += 1,
        )
        .unwrap();
        assert_eq!(seen, 2);
        assert_eq!(s.applied, 2);
        assert_eq!(s.last_id, "1002-0");
        assert_eq!(t.get("/a").unwrap().last_activity_ms(), 1001);
        s.apply_stream(&t, &[del(3, "/a")], |_| {}).unwrap();
        assert!(t.get("/a").is_none());
        let gap = s.apply_stream(&t, &[add(5, "/c", "http://h:3")], |_| {});
        assert!(gap.unwrap_err().contains("expected revision 4"));
        assert!(t.get("/c").is_none());
        assert!(s
            .apply_stream(&t, &[add(3, "/c", "http://h:3")], |_| {})
            .is_err());
        let mut reset = add(4, "", "");
        reset.op = "reset".into();
        assert!(s.apply_stream(&t, &[reset], |_| {}).is_err());
    }

    #[test]
    fn own_writes_apply_at_once_and_are_not_undone_by_older_changes() {
        let t = RouteTable::new();
        let mut s = state();
        // This replica wrote revision 3; the stream still has 1 and 2 to deliver.
        let route = Box::new(decode(&stored_value("/a", &data("http://mine")), 5).unwrap());
        s.apply_local(
            &t,
            "e1",
            3,
            LocalWrite::Add {
                value: stored_value("/a", &data("http://mine")),
                route,
            },
        );
        assert_eq!(target(&t, "/a").as_deref(), Some("http://mine"));
        let before = t.get("/a").unwrap();
        s.apply_stream(
            &t,
            &[add(1, "/a", "http://older"), add(2, "/b", "http://h:2")],
            |_| {},
        )
        .unwrap();
        assert_eq!(target(&t, "/a").as_deref(), Some("http://mine"));
        s.apply_stream(&t, &[add(3, "/a", "http://mine")], |_| {})
            .unwrap();
        // The echo of our own write does not replace the route (its activity survives).
        assert!(Arc::ptr_eq(&before, &t.get("/a").unwrap()));
        // A write already covered by the stream, or from another epoch, changes nothing.
        s.apply_local(&t, "e1", 2, LocalWrite::Del { key: "/a".into() });
        s.apply_local(&t, "e0", 9, LocalWrite::Del { key: "/a".into() });
        assert!(t.get("/a").is_some());
        s.apply_local(&t, "e1", 4, LocalWrite::Del { key: "/a".into() });
        assert!(t.get("/a").is_none());
        s.apply_stream(&t, &[del(4, "/a")], |_| {}).unwrap();
        assert!(t.get("/a").is_none());
    }

    #[test]
    fn load_replaces_keeps_unchanged_routes_and_newer_local_writes() {
        let t = RouteTable::new();
        let mut s = state();
        s.apply_stream(
            &t,
            &[add(1, "/a", "http://h:1"), add(2, "/b", "http://h:2")],
            |_| {},
        )
        .unwrap();
        let a = t.get("/a").unwrap();
        a.touch_at(50_000);
        // A local write at revision 10, newer than the snapshot (revision 9).
        let v = stored_value("/new", &data("http://new"));
        let route = Box::new(decode(&v, 7).unwrap());
        s.apply_local(&t, "e1", 10, LocalWrite::Add { value: v, route });
        let snap = Snapshot {
            epoch: Some("e1".into()),
            rev: 9,
            routes: HashMap::from([
                ("a".to_string(), stored_value("/a", &data("http://h:1"))),
                ("c".to_string(), stored_value("/c", &data("http://h:3"))),
            ]),
            activity: HashMap::from([("a".to_string(), 40_000), ("c".to_string(), 60_000)]),
            last_id: Some("9999-0".into()),
        };
        assert_eq!(s.load(&t, snap, true), 3);
        assert!(Arc::ptr_eq(&a, &t.get("/a").unwrap()));
        assert_eq!(a.last_activity_ms(), 50_000);
        assert!(t.get("/b").is_none());
        assert_eq!(t.get("/c").unwrap().last_activity_ms(), 60_000);
        assert_eq!(target(&t, "/new").as_deref(), Some("http://new"));
        assert_eq!((s.applied, s.last_id.as_str()), (9, "9999-0"));
        // Its change then comes back on the stream and is recognised.
        s.apply_stream(&t, &[add(10, "/new", "http://new")], |_| {})
            .unwrap();
        let seed = s.seed(&t);
        assert_eq!(seed.len(), 3);
        assert!(seed.iter().any(|(f, _, at)| f == "a" && *at == 50_000));
    }

    #[test]
    fn load_without_keep_newer_takes_the_snapshot_as_the_truth() {
        // After a failover the new master may be behind this table: a write the old master
        // took (but never confirmed) must not survive the reload.
        let t = RouteTable::new();
        let mut s = state();
        s.apply_stream(&t, &[add(1, "/a", "http://h:1")], |_| {})
            .unwrap();
        let v = stored_value("/unconfirmed", &data("http://new"));
        let route = Box::new(decode(&v, 7).unwrap());
        s.apply_local(&t, "e1", 5, LocalWrite::Add { value: v, route });
        assert!(t.get("/unconfirmed").is_some());
        let snap = Snapshot {
            epoch: Some("e1".into()),
            rev: 1,
            routes: HashMap::from([("a".to_string(), stored_value("/a", &data("http://h:1")))]),
            activity: HashMap::new(),
            last_id: Some("1-0".into()),
        };
        assert_eq!(s.load(&t, snap, false), 1);
        assert!(t.get("/unconfirmed").is_none());
        assert_eq!(s.applied, 1);
        // The new timeline's next revision applies normally, even for the same key.
        s.apply_stream(&t, &[add(2, "/unconfirmed", "http://h:9")], |_| {})
            .unwrap();
        assert_eq!(target(&t, "/unconfirmed").as_deref(), Some("http://h:9"));
    }

    #[test]
    fn slash_variants_share_a_slot() {
        let t = RouteTable::new();
        let mut s = state();
        s.apply_stream(
            &t,
            &[
                add(1, "/double", "http://h:1"),
                add(2, "//double", "http://h:2"),
            ],
            |_| {},
        )
        .unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(target(&t, "//double").as_deref(), Some("http://h:2"));
    }

    #[test]
    fn change_parsing() {
        let c = Change::parse(
            "1700000000123-4".into(),
            [
                "rev", "7", "op", "add", "key", "/a", "route", "{}", "at", "99",
            ]
            .map(String::from)
            .to_vec(),
        )
        .unwrap();
        assert_eq!(
            (c.rev, c.op.as_str(), c.key.as_str(), c.at),
            (7, "add", "/a", 99)
        );
        assert_eq!(c.written_ms(), Some(1_700_000_000_123));
        assert!(Change::parse("1-0".into(), vec![]).is_err());
    }
}
