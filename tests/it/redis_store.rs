//! Scale-out: hubgate replicas sharing one route table through Redis.
//!
//! Each test starts its own `redis-server` on a free loopback port (`--save ''
//! --appendonly no`, so a restart loses everything, like a cache node that was replaced)
//! and two or three hubgate replicas with `--storage-backend redis://127.0.0.1:PORT/0`.
//! Every process is stopped when its handle drops. The tests run one at a time: each runs
//! several processes on a two-core machine, and the convergence figure wants it quiet.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::*;

/// Deadline for anything that should converge "at once" (it takes milliseconds).
const T: Duration = Duration::from_secs(10);
/// Activity exchange interval the replicas here use (`[storage] activity-flush-ms`).
const FLUSH_MS: u64 = 200;

fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------- redis-server

/// A `redis-server` on 127.0.0.1, killed on drop.
struct Redis {
    port: u16,
    child: Option<Child>,
}

impl Redis {
    fn start() -> Redis {
        Redis::start_on(free_port())
    }

    fn start_on(port: u16) -> Redis {
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!("cannot start redis-server ({e}); scripts/setup.sh installs it")
        });
        let r = Redis {
            port,
            child: Some(child),
        };
        assert!(
            wait_until(T, || r.try_conn().is_some()),
            "redis-server on port {port} does not answer"
        );
        r
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn try_conn(&self) -> Option<redis::Connection> {
        let client = redis::Client::open(self.url()).ok()?;
        let mut c = client
            .get_connection_with_timeout(Duration::from_millis(300))
            .ok()?;
        let pong: String = redis::cmd("PING").query(&mut c).ok()?;
        (pong == "PONG").then_some(c)
    }

    fn conn(&self) -> redis::Connection {
        self.try_conn().expect("connect to redis-server")
    }

    /// SIGKILL: the server vanishes with its data.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A new, empty server on the same port.
    fn restart(&mut self) {
        self.kill();
        let port = self.port;
        let fresh = Redis::start_on(port);
        *self = fresh;
    }

    fn query<V: redis::FromRedisValue>(&self, cmd: &mut redis::Cmd) -> V {
        cmd.query(&mut self.conn()).expect("redis command")
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------- replicas

/// A hubgate replica with its metrics port.
struct Replica {
    hg: Hubgate,
    metrics_port: u16,
}

impl std::ops::Deref for Replica {
    type Target = Hubgate;
    fn deref(&self) -> &Hubgate {
        &self.hg
    }
}

/// Settings shared by the replicas of one test.
struct Setup {
    backend: String,
    config: PathBuf,
    _dir: TempDir,
}

impl Setup {
    fn new(redis: &Redis) -> Setup {
        Setup::with_backend(&redis.url(), "")
    }

    fn with_backend(backend: &str, extra_toml: &str) -> Setup {
        let dir = TempDir::new("redis");
        let config = dir.write(
            "hubgate.toml",
            format!("[storage]\nactivity-flush-ms = {FLUSH_MS}\n{extra_toml}"),
        );
        Setup {
            backend: backend.to_string(),
            config,
            _dir: dir,
        }
    }

    /// Starts a replica and waits until its listeners accept (not until it is ready).
    fn spawn(&self, extra: &[&str]) -> Replica {
        let metrics_port = free_port();
        let hg = Hubgate::builder()
            .args(&[
                "--config",
                self.config.to_str().unwrap(),
                "--storage-backend",
                &self.backend,
                "--metrics-port",
                &metrics_port.to_string(),
            ])
            .args(extra)
            .wait_port(metrics_port)
            .start();
        Replica { hg, metrics_port }
    }

    /// Starts a replica and waits until it has loaded the table.
    fn replica(&self, extra: &[&str]) -> Replica {
        let r = self.spawn(extra);
        r.wait_ready();
        r
    }

    fn replicas(&self, n: usize) -> Vec<Replica> {
        (0..n).map(|_| self.replica(&[])).collect()
    }
}

impl Replica {
    fn healthz(&self) -> Response {
        self.get("/_chp_healthz")
    }

    fn wait_ready(&self) {
        assert!(
            wait_until(T, || self.healthz().status == 200),
            "replica not ready: {}\n{}",
            self.healthz().describe(),
            self.output()
        );
    }

    fn metrics_text(&self) -> String {
        get(self.metrics_port, "/metrics").text()
    }

    /// The value of a metric that has one series (`name value` or `name{labels} value`).
    fn metric(&self, name: &str) -> f64 {
        let text = self.metrics_text();
        text.lines()
            .find_map(|l| {
                let rest = l.strip_prefix(name)?;
                // Not a longer name that merely starts with `name`.
                let value = match rest.strip_prefix('{') {
                    Some(labelled) => labelled.split_once("} ")?.1,
                    None => rest.strip_prefix(' ')?,
                };
                value.trim().parse().ok()
            })
            .unwrap_or_else(|| panic!("no metric {name} in\n{text}"))
    }

    /// True if the scrape has a series of `name` with exactly the label set `labels`
    /// (e.g. `{backend="redis"}`).
    fn has_series(&self, name: &str, labels: &str) -> bool {
        let prefix = format!("{name}{labels} ");
        self.metrics_text().lines().any(|l| l.starts_with(&prefix))
    }

    /// The table as `key → data without last_activity`.
    fn table(&self) -> BTreeMap<String, serde_json::Value> {
        self.routes()
            .into_iter()
            .map(|(k, mut v)| {
                if let Some(o) = v.as_object_mut() {
                    o.remove("last_activity");
                }
                (k, v)
            })
            .collect()
    }

    fn try_post(&self, key: &str, target: &str) -> Response {
        let body = serde_json::json!({ "target": target }).to_string();
        self.api_post(&format!("/api/routes{key}"), &body)
    }

    fn has_route(&self, key: &str) -> bool {
        self.api_get(&format!("/api/routes{key}")).status == 200
    }
}

fn wait_route(r: &Replica, key: &str, present: bool) {
    assert!(
        wait_until(T, || r.has_route(key) == present),
        "route {key} should be {} on the replica on port {}\n{}",
        if present { "present" } else { "absent" },
        r.port,
        r.output()
    );
}

/// Waits until every replica shows the same table; returns it.
fn wait_same_tables(replicas: &[&Replica]) -> BTreeMap<String, serde_json::Value> {
    let mut tables = Vec::new();
    let same = wait_until(T, || {
        tables = replicas.iter().map(|r| r.table()).collect::<Vec<_>>();
        tables.windows(2).all(|w| w[0] == w[1])
    });
    assert!(
        same,
        "replica tables differ: {:#?}",
        tables
            .iter()
            .map(|t| t.keys().collect::<Vec<_>>())
            .collect::<Vec<_>>()
    );
    tables.swap_remove(0)
}

fn redis_slots(redis: &Redis) -> Vec<String> {
    let mut slots: Vec<String> = redis.query(redis::cmd("HKEYS").arg("hubgate:v1:routes"));
    slots.sort();
    slots
}

// ---------------------------------------------------------------- tests

#[test]
fn a_write_on_one_replica_routes_through_the_others() {
    let _g = serial();
    let redis = Redis::start();
    let setup = Setup::new(&redis);
    let rs = setup.replicas(3);
    let echo = Backend::echo();

    rs[0].add_route_json(
        "/user/alice",
        &serde_json::json!({"target": echo.url(), "user": "alice", "server_name": "", "jupyterhub": true})
            .to_string(),
    );
    for r in &rs[1..] {
        let mut last = None;
        let routed = wait_until(T, || {
            let resp = r.get("/user/alice/lab?x=1");
            let ok = resp.status == 200;
            last = Some(resp);
            ok
        });
        assert!(
            routed,
            "replica on {} does not route /user/alice: {}",
            r.port,
            last.map(|r| r.describe()).unwrap_or_default()
        );
        let route = r.route("/user/alice").expect("route on every replica");
        assert_eq!(route["user"], "alice", "{route}");
        assert_eq!(route["jupyterhub"], true, "{route}");
        assert!(
            is_js_iso(route["last_activity"].as_str().unwrap()),
            "{route}"
        );
    }
    assert_eq!(echo.last().unwrap().target, "/user/alice/lab?x=1");
    assert_eq!(redis_slots(&redis), vec!["user/alice"]);

    // Delete through another replica: gone everywhere, requests 404 everywhere.
    rs[1].delete_route("/user/alice");
    for r in &rs {
        wait_route(r, "/user/alice", false);
        assert_eq!(r.get("/user/alice/lab").status, 404);
    }
    assert!(redis_slots(&redis).is_empty());
    // Deleting again is a 404 from any replica, as with CHP.
    assert_eq!(rs[2].api_delete("/api/routes/user/alice").status, 404);
    let h = rs[0].healthz();
    assert_eq!(h.json()["store"], "up", "{}", h.describe());
    // Every store metric the dashboard shows is exported by a Redis replica (the in-memory
    // store exports only hubgate_store_up; tests/it/metrics.rs checks the rest).
    let shown = dashboard_store_metrics();
    assert_eq!(shown.len(), 7, "store metrics on the dashboard: {shown:?}");
    let text = rs[0].metrics_text();
    for name in &shown {
        assert!(
            text.lines().any(|l| l.starts_with(name.as_str())),
            "{name} is on the dashboard but not exported with Redis:\n{text}"
        );
    }
    assert!(
        rs[0].has_series("hubgate_store_up", r#"{backend="redis"}"#),
        "{text}"
    );
}

/// The `hubgate_store_*` metric families the Grafana dashboard queries.
fn dashboard_store_metrics() -> std::collections::BTreeSet<String> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/grafana/hubgate-dashboard.json"
    );
    let text = std::fs::read_to_string(path).unwrap();
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("hubgate_store_"))
        .map(|w| {
            ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| w.strip_suffix(s))
                .unwrap_or(w)
                .to_string()
        })
        .collect()
}

#[test]
fn concurrent_writers_on_different_replicas_converge() {
    let _g = serial();
    let redis = Redis::start();
    let setup = Setup::new(&redis);
    let rs = Arc::new(setup.replicas(3));
    let per = 40;
    let writers: Vec<_> = (0..3)
        .map(|w| {
            let rs = rs.clone();
            thread::spawn(move || {
                let r = &rs[w];
                for i in 0..per {
                    let key = format!("/user/w{w}-{i}");
                    let resp = r.try_post(&key, &format!("http://127.0.0.1:{}", 1000 + w));
                    assert_eq!(resp.status, 201, "{}", resp.describe());
                    // Every writer also fights over one key.
                    let resp = r.try_post("/shared", &format!("http://127.0.0.1:{}", 2000 + w));
                    assert_eq!(resp.status, 201, "{}", resp.describe());
                    if i % 4 == 3 {
                        r.delete_route(&key);
                    }
                }
            })
        })
        .collect();
    for w in writers {
        w.join().expect("writer thread");
    }
    let refs: Vec<&Replica> = rs.iter().collect();
    let table = wait_same_tables(&refs);
    let mut expected: Vec<String> = (0..3)
        .flat_map(|w| {
            (0..per)
                .filter(|i| i % 4 != 3)
                .map(move |i| format!("/user/w{w}-{i}"))
        })
        .collect();
    expected.push("/shared".into());
    expected.sort();
    assert_eq!(table.keys().cloned().collect::<Vec<_>>(), expected);
    // The store agrees with the replicas.
    let mut slots: Vec<String> = expected
        .iter()
        .map(|k| k.trim_matches('/').to_string())
        .collect();
    slots.sort();
    assert_eq!(redis_slots(&redis), slots);
    let stored: String = redis.query(redis::cmd("HGET").arg("hubgate:v1:routes").arg("shared"));
    let stored: serde_json::Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(stored["data"]["target"], table["/shared"]["target"]);
    let rev: u64 = redis.query(redis::cmd("GET").arg("hubgate:v1:rev"));
    assert_eq!(rev, 3 * (per as u64 * 2 + per as u64 / 4));
}

#[test]
fn redis_outage_routing_continues_writes_503_then_resync() {
    let _g = serial();
    let mut redis = Redis::start();
    let setup = Setup::new(&redis);
    let rs = setup.replicas(2);
    let echo = Backend::echo();
    rs[0].add_route("/user/a", &echo.url());
    wait_route(&rs[1], "/user/a", true);
    assert_eq!(rs[1].metric("hubgate_store_up"), 1.0);
    assert!(rs[1].has_series("hubgate_store_up", r#"{backend="redis"}"#));

    redis.kill();
    for r in &rs {
        assert!(
            wait_until(T, || r.metric("hubgate_store_up") == 0.0),
            "store_up should drop to 0\n{}",
            r.output()
        );
    }
    // Writes are refused with a clear message (JupyterHub retries 5xx)...
    let resp = rs[0].try_post("/user/b", &echo.url());
    assert_eq!(resp.status, 503, "{}", resp.describe());
    assert!(resp.text().contains("unreachable"), "{}", resp.describe());
    let resp = rs[1].api_delete("/api/routes/user/a");
    assert_eq!(resp.status, 503, "{}", resp.describe());
    // ...while both replicas keep routing from their copy and stay ready.
    for r in &rs {
        assert_eq!(r.get("/user/a/x").status, 200);
        let h = r.healthz();
        assert_eq!(h.status, 200, "{}", h.describe());
        assert_eq!(h.json()["store"], "down", "{}", h.describe());
        assert!(r.metric("hubgate_store_lag_seconds") >= 0.0);
        assert!(r.has_route("/user/a"));
    }
    assert!(rs[0].output().contains("lost Redis"), "{}", rs[0].output());

    // Redis comes back empty: the replicas restore the table and carry on.
    redis.restart();
    for r in &rs {
        assert!(
            wait_until(T, || r.metric("hubgate_store_up") == 1.0),
            "store_up should return to 1\n{}",
            r.output()
        );
        assert!(r.metric("hubgate_store_resyncs_total") >= 2.0);
    }
    assert!(
        wait_until(T, || redis_slots(&redis) == vec!["user/a".to_string()]),
        "the replicas should restore their routes into the new Redis"
    );
    rs[1].add_route("/user/b", &echo.url());
    wait_route(&rs[0], "/user/b", true);
    assert_eq!(rs[0].get("/user/b/y").status, 200);
    rs[0].delete_route("/user/a");
    wait_route(&rs[1], "/user/a", false);
    let refs: Vec<&Replica> = rs.iter().collect();
    let table = wait_same_tables(&refs);
    assert_eq!(table.keys().collect::<Vec<_>>(), vec!["/user/b"]);
}

#[test]
fn a_stored_target_that_cannot_be_proxied_answers_500() {
    // The API refuses such targets; a store written by something else (an older version, a
    // hand edit) can still hold one, and a request for it gets CHP's 500, not a crash.
    let _g = serial();
    let redis = Redis::start();
    let setup = Setup::new(&redis);
    let a = setup.replica(&[]);
    a.add_route("/user/bad", "http://127.0.0.1:1");
    let stored: String = redis.query(redis::cmd("HGET").arg("hubgate:v1:routes").arg("user/bad"));
    let mut value: serde_json::Value = serde_json::from_str(&stored).unwrap();
    value["data"]["target"] = serde_json::json!("ftp://127.0.0.1/x");
    let _: () = redis.query(
        redis::cmd("HSET")
            .arg("hubgate:v1:routes")
            .arg("user/bad")
            .arg(value.to_string()),
    );
    // A replica started now loads the edited table.
    let b = setup.replica(&[]);
    assert_eq!(b.route("/user/bad").unwrap()["target"], "ftp://127.0.0.1/x");
    let r = b.get("/user/bad/x");
    assert_eq!(r.status, 500, "{}", r.describe());
    assert_eq!(b.healthz().status, 200);
    drop(a);
}

#[test]
fn a_restarted_replica_loads_the_full_table_while_others_keep_writing() {
    let _g = serial();
    let redis = Redis::start();
    let setup = Setup::new(&redis);
    let a = Arc::new(setup.replica(&[]));
    let b = setup.replica(&[]);
    for i in 0..20 {
        a.add_route(&format!("/user/pre{i}"), "http://127.0.0.1:1");
    }
    let c = setup.replica(&[]);
    wait_same_tables(&[&a, &b, &c]);

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (a, stop) = (a.clone(), stop.clone());
        thread::spawn(move || {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                a.add_route(&format!("/user/live{i}"), "http://127.0.0.1:2");
                if i % 3 == 0 {
                    a.delete_route(&format!("/user/pre{}", i / 3 % 20));
                    a.add_route(&format!("/user/pre{}", i / 3 % 20), "http://127.0.0.1:3");
                }
                i += 1;
                thread::sleep(Duration::from_millis(5));
            }
            i
        })
    };
    let mut c = c;
    c.hg.terminate(T);
    thread::sleep(Duration::from_millis(300)); // changes it misses
    let c = setup.replica(&[]);
    thread::sleep(Duration::from_millis(300)); // changes it follows
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = writer.join().expect("writer");
    assert!(written > 20, "the writer made only {written} changes");
    let table = wait_same_tables(&[&a, &b, &c]);
    assert_eq!(table.len(), 20 + written, "{:?}", table.keys());
}

#[test]
fn a_replica_that_missed_changes_notices_and_resyncs() {
    let _g = serial();
    let redis = Redis::start();
    let setup = Setup::new(&redis);
    let rs = setup.replicas(2);
    rs[0].add_route("/user/first", "http://127.0.0.1:1");
    wait_route(&rs[1], "/user/first", true);
    let resyncs = rs[1].metric("hubgate_store_resyncs_total");

    // Freeze replica 1, change the table, and trim the stream past what it has read.
    rs[1].signal(libc::SIGSTOP);
    for i in 0..5 {
        rs[0].add_route(&format!("/user/missed{i}"), "http://127.0.0.1:2");
    }
    rs[0].delete_route("/user/first");
    let _: i64 = redis.query(
        redis::cmd("XTRIM")
            .arg("hubgate:v1:changes")
            .arg("MAXLEN")
            .arg(0),
    );
    rs[1].signal(libc::SIGCONT);

    let table = wait_same_tables(&[&rs[0], &rs[1]]);
    assert_eq!(table.len(), 5, "{table:?}");
    assert!(rs[1].metric("hubgate_store_resyncs_total") > resyncs);
    // And it follows the stream again afterwards.
    rs[0].add_route("/user/after", "http://127.0.0.1:3");
    wait_route(&rs[1], "/user/after", true);
}

#[test]
fn activity_on_one_replica_shows_in_the_others_api() {
    let _g = serial();
    let redis = Redis::start();
    let setup = Setup::new(&redis);
    let rs = setup.replicas(2);
    let echo = Backend::echo();
    rs[0].add_route("/user/act", &echo.url());
    wait_route(&rs[1], "/user/act", true);
    let added = iso_millis(&rs[1].last_activity("/user/act"));
    assert_eq!(
        added,
        iso_millis(&rs[0].last_activity("/user/act")),
        "both replicas report the time the route was added"
    );

    thread::sleep(Duration::from_millis(50));
    let before_request = now_millis();
    assert_eq!(rs[0].get("/user/act/api/kernels").status, 200);
    let started = Instant::now();
    let mut seen = 0;
    // Two exchange intervals, plus slack for a busy machine.
    let moved = wait_until(Duration::from_millis(FLUSH_MS * 2 + 2_000), || {
        seen = iso_millis(&rs[1].last_activity("/user/act"));
        seen >= before_request
    });
    assert!(
        moved,
        "activity on replica 0 should reach replica 1 (saw {seen}, request at {before_request})"
    );
    println!(
        "activity reached the other replica after {:?} (flush interval {FLUSH_MS} ms)",
        started.elapsed()
    );
    let score: f64 = redis.query(
        redis::cmd("ZSCORE")
            .arg("hubgate:v1:activity")
            .arg("user/act"),
    );
    assert!(score as i64 >= before_request);
    // inactive_since filters on the merged value on every replica.
    let since = iso_from_now(-60_000);
    let r = rs[1].api_get(&format!("/api/routes?inactive_since={since}"));
    assert_eq!(r.json(), serde_json::json!({}), "{}", r.describe());
}

#[test]
fn a_replica_started_while_redis_is_down_is_not_ready_until_loaded() {
    let _g = serial();
    let port = free_port();
    let setup = Setup::with_backend(&format!("redis://127.0.0.1:{port}/0"), "");
    let r = setup.spawn(&["--default-target", "http://127.0.0.1:9"]);
    let h = r.healthz();
    assert_eq!(h.status, 503, "{}", h.describe());
    assert_eq!(h.json()["status"], "not ready", "{}", h.describe());
    assert!(
        h.json()["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("not loaded"),
        "{}",
        h.describe()
    );
    let resp = r.try_post("/user/x", "http://127.0.0.1:1");
    assert_eq!(resp.status, 503, "{}", resp.describe());
    assert_eq!(r.metric("hubgate_store_up"), 0.0);
    assert!(
        r.wait_for_output("not ready until it is loaded", T),
        "{}",
        r.output()
    );

    let redis = Redis::start_on(port);
    r.wait_ready();
    assert_eq!(r.healthz().json()["store"], "up");
    // --default-target went into the shared table once it was loaded.
    assert_eq!(r.table()["/"]["target"], "http://127.0.0.1:9");
    assert_eq!(redis_slots(&redis), vec![""]);
    r.add_route("/user/x", "http://127.0.0.1:1");
}

#[test]
fn default_target_does_not_overwrite_the_hub_route() {
    let _g = serial();
    let redis = Redis::start();
    let setup = Setup::new(&redis);
    let a = setup.replica(&["--default-target", "http://127.0.0.1:9"]);
    let b = setup.replica(&[]);
    assert!(wait_until(T, || b
        .table()
        .get("/")
        .is_some_and(|r| r["target"] == "http://127.0.0.1:9")));
    // JupyterHub registers its hub route...
    b.add_route_json(
        "/",
        r#"{"target":"http://127.0.0.1:8081","hub":true,"jupyterhub":true}"#,
    );
    assert!(wait_until(T, || a
        .table()
        .get("/")
        .is_some_and(|r| r["hub"] == true)));
    // ...and a replica restarting with --default-target leaves it alone.
    drop(a);
    let a = setup.replica(&["--default-target", "http://127.0.0.1:9"]);
    let table = wait_same_tables(&[&a, &b]);
    assert_eq!(table["/"]["target"], "http://127.0.0.1:8081");
}

#[test]
fn a_store_in_a_newer_format_is_refused() {
    let _g = serial();
    let redis = Redis::start();
    let _: () = redis.query(redis::cmd("SET").arg("hubgate:format").arg("2"));
    let setup = Setup::new(&redis);
    let (port, api) = (free_port(), free_port());
    let out = run_cli(
        &[
            "--ip",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--api-port",
            &api.to_string(),
            "--config",
            setup.config.to_str().unwrap(),
            "--storage-backend",
            &redis.url(),
        ],
        &[],
        T,
    );
    assert!(out.failed_cleanly(), "{out:?}");
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(
        text.contains("format \"2\"") && text.contains("newer hubgate"),
        "{text}"
    );
    // Its data is untouched; another key prefix on the same server works.
    let format: String = redis.query(redis::cmd("GET").arg("hubgate:format"));
    assert_eq!(format, "2");
    let other = Setup::with_backend(&redis.url(), "key-prefix = \"hub2\"\n");
    let r = other.replica(&[]);
    r.add_route("/user/x", "http://127.0.0.1:1");
    let slots: Vec<String> = redis.query(redis::cmd("HKEYS").arg("hub2:v1:routes"));
    assert_eq!(slots, vec!["user/x"]);
}

#[test]
fn convergence_latency_and_write_throughput() {
    let _g = serial();
    let redis = Redis::start();
    let setup = Setup::new(&redis);
    let rs = setup.replicas(2);
    let n = 200;
    let mut lat = Vec::with_capacity(n);
    let started = Instant::now();
    for i in 0..n {
        let key = format!("/user/c{i}");
        let t0 = Instant::now();
        let resp = rs[0].try_post(&key, "http://127.0.0.1:1");
        assert_eq!(resp.status, 201, "{}", resp.describe());
        let path = format!("/api/routes{key}");
        let mut c = 0;
        while rs[1].api_get(&path).status != 200 {
            c += 1;
            assert!(t0.elapsed() < T, "{key} never reached replica 1");
            if c > 20 {
                thread::sleep(Duration::from_micros(200));
            }
        }
        lat.push(t0.elapsed());
    }
    let total = started.elapsed();
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1];
    let (p50, p99, max) = (pct(0.50), pct(0.99), lat[lat.len() - 1]);
    println!(
        "convergence over {n} writes (POST on replica 0 until GET on replica 1 sees it): p50 {p50:?} p99 {p99:?} max {max:?}"
    );

    // API write throughput against Redis: one client, then four at once.
    let t = Instant::now();
    for i in 0..n {
        let resp = rs[0].try_post(&format!("/user/s{i}"), "http://127.0.0.1:1");
        assert_eq!(resp.status, 201);
    }
    let serial_rate = n as f64 / t.elapsed().as_secs_f64();
    let rs = Arc::new(rs);
    let t = Instant::now();
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let rs = rs.clone();
            thread::spawn(move || {
                for i in 0..n / 4 {
                    let resp = rs[c % 2].try_post(&format!("/user/p{c}-{i}"), "http://127.0.0.1:1");
                    assert_eq!(resp.status, 201);
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    let parallel_rate = n as f64 / t.elapsed().as_secs_f64();
    println!(
        "API writes: {serial_rate:.0}/s from one client, {parallel_rate:.0}/s from four clients over two replicas (first loop incl. polling: {total:?})"
    );
    let applied = rs[1].metric("hubgate_store_changes_applied_total");
    assert!(
        applied >= (n * 2) as f64,
        "replica 1 applied {applied} changes"
    );
    wait_same_tables(&[&rs[0], &rs[1]]);
    assert!(
        p99 < Duration::from_millis(100),
        "convergence p99 {p99:?} is over 100 ms (p50 {p50:?})"
    );
}

/// Revocation by an operator on one replica (item: "an account is compromised at 3 a.m."):
/// the other replica refuses the user's credentials and closes their open websocket with a
/// close frame (1008) within the poll interval, and a replica started later learns it from
/// the store. The identity provider is a key-set stub (tokens are minted by the test).
#[test]
fn a_revocation_on_one_replica_is_in_force_on_all_and_closes_their_websockets() {
    use crate::support::auth_proxy::{AuthCfg, IssuerCfg};
    use crate::support::jwt::{claims, mint, pool};
    use crate::support::oidc::JwksStub;
    use crate::support::ws::{ws_close_frame, ws_recv_text};
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;

    let _g = serial();
    let redis = Redis::start();
    let key = pool().rsa[0].with_kid("k-rsa");
    let stub = JwksStub::start(&[&key]);
    let auth = AuthCfg::new(free_port(), vec![IssuerCfg::stub(&stub)]).to_toml();
    let setup = Setup::with_backend(&redis.url(), &auth);
    let a = setup.replica(&[]);
    let b = setup.replica(&[]);
    let files = Backend::echo();
    let kernels = WsBackend::echo();
    for (prefix, target) in [
        ("/user/alice", files.url()),
        ("/user/alice/api/kernels", kernels.url()),
    ] {
        let body = serde_json::json!({"target": target, "user": "alice"}).to_string();
        assert_eq!(
            a.api_post(&format!("/api/routes{prefix}"), &body).status,
            201
        );
    }
    wait_route(&b, "/user/alice/api/kernels", true);
    let alice = mint(&key, &claims(&stub.issuer, "alice"));
    let bearer = format!("Bearer {alice}");
    let get_b =
        |r: &Replica| r.request(&Req::get("/user/alice/tree").header("Authorization", &bearer));
    assert_eq!(get_b(&b).status, 200);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut ws = rt.block_on(async {
        let (mut ws, _) = ws_connect(
            b.port,
            "/user/alice/api/kernels/k1/channels",
            &[("Authorization", &bearer)],
        )
        .await
        .expect("websocket through replica B");
        ws.send(Message::Text("hi".into())).await.unwrap();
        assert_eq!(ws_recv_text(&mut ws, T).await.as_deref(), Some("hi"));
        ws
    });

    // Revoked on A.
    let r = a.api_post("/api/_hubgate/revocations", r#"{"user":"alice"}"#);
    assert_eq!(r.status, 201, "{}", r.describe());
    // B closes the websocket with 1008 and refuses the token.
    let t0 = Instant::now();
    let frame = rt.block_on(ws_close_frame(&mut ws, T));
    assert_eq!(
        frame,
        Some((1008, "credential revoked".to_string())),
        "{}",
        b.output()
    );
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "took {:?}",
        t0.elapsed()
    );
    assert!(kernels.wait_closed(1, T));
    assert_eq!(get_b(&b).status, 401);
    assert_eq!(get_b(&a).status, 401);
    assert!(b
        .metrics_text()
        .contains(r#"hubgate_auth_revocations_total{kind="user",source="replica"} 1"#));
    // Kept in Redis, so a replica started now refuses it too.
    let fields: Vec<String> = redis.query(redis::cmd("HKEYS").arg("hubgate:v1:revocations"));
    assert_eq!(fields, vec!["u\u{1f}alice".to_string()]);
    let c = setup.replica(&[]);
    assert!(wait_until(T, || get_b(&c).status == 401), "{}", c.output());
}
