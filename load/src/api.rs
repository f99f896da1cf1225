//! `api-fill` and `api-churn`: load on the CHP route API (`/api/routes`) the way JupyterHub
//! drives it — `Authorization: token T`, JSON bodies shaped like JupyterHub's user routes.
//!
//! - `api-fill`: N sequential `POST /api/routes{prefix}{i}` (or `DELETE` with `--delete`) over
//!   ONE keep-alive connection, as a hub restoring its routes does; reports the total time and
//!   the per-request latency.
//! - `api-churn`: route writes at a fixed rate (open loop, latency from each write's intended
//!   send time), alternately adding a route and deleting it again, on a few connections; run it
//!   next to a proxied load to see what route updates cost the requests.
//!
//! Both reuse `http.rs`'s response reader over `conn.rs`'s connections.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::conn::{Conn, Connector};
use super::hist::Histogram;
use super::http::{exchange, Reader};
use super::report::{Counters, Latency, Summary, Watcher};
use super::RunOpts;

/// What every API mode needs: where the routes go and how to authenticate.
#[derive(Clone)]
pub struct ApiCommon {
    /// Route keys are `{prefix}{name}`; starts with `/`.
    pub prefix: String,
    /// The `target` every added route points at.
    pub target: String,
    /// `Authorization: token T` (CHP's scheme) when given.
    pub token: Option<String>,
    /// Extra "Name: value" headers.
    pub headers: Vec<String>,
}

pub struct FillOpts {
    pub routes: u64,
    /// First route number (so a second fill can add routes after the first).
    pub first: u64,
    /// DELETE the routes instead of adding them.
    pub delete: bool,
    /// Give up after this long (the requests done so far are reported).
    pub max_time: Option<Duration>,
    pub common: ApiCommon,
}

pub struct ChurnOpts {
    /// Route writes per second, all connections together.
    pub rate: f64,
    pub duration: Duration,
    pub connections: u64,
    pub common: ApiCommon,
}

/// The path of the routes collection under the URL's path: `http://h:8001` →
/// `/api/routes`; a URL that already ends in `/api/routes` is kept as is.
pub fn api_base(url_path: &str) -> String {
    let p = url_path
        .split('?')
        .next()
        .unwrap_or("")
        .trim_end_matches('/');
    if p.ends_with("/api/routes") {
        p.to_string()
    } else {
        format!("{p}/api/routes")
    }
}

/// The JupyterHub user a route key belongs to: its last segment (`/user/bench-7` → `bench-7`).
fn user_of(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}

/// The body JupyterHub's `add_route` posts for a user's default server (docs/chp-compatibility.md).
pub fn route_body(key: &str, target: &str) -> String {
    serde_json::json!({
        "user": user_of(key),
        "server_name": "",
        "target": target,
        "jupyterhub": true,
    })
    .to_string()
}

/// Check the options shared by the API modes.
pub fn check_common(c: &ApiCommon) -> Result<(), String> {
    if !c.prefix.starts_with('/') {
        return Err(format!("--prefix {:?}: must start with /", c.prefix));
    }
    if c.prefix.contains(['?', '#', ' ']) || c.prefix.chars().any(char::is_control) {
        return Err(format!(
            "--prefix {:?}: no spaces, '?' or '#' (it goes into the request line as is)",
            c.prefix
        ));
    }
    for h in &c.headers {
        if !h.contains(':') {
            return Err(format!("--header {h:?}: expected \"Name: value\""));
        }
    }
    Ok(())
}

/// Builds API requests for one target (the part of each request that never changes is
/// formatted once).
struct Requests {
    base: String,
    /// Host, User-Agent, Authorization and extra headers, each ending in CRLF.
    fixed: String,
    target: String,
}

impl Requests {
    fn new(authority: &str, url_path: &str, c: &ApiCommon) -> Requests {
        let mut fixed = format!("Host: {authority}\r\nUser-Agent: hubgate-load\r\n");
        if let Some(t) = &c.token {
            fixed.push_str(&format!("Authorization: token {t}\r\n"));
        }
        for h in &c.headers {
            fixed.push_str(h.trim());
            fixed.push_str("\r\n");
        }
        Requests {
            base: api_base(url_path),
            fixed,
            target: c.target.clone(),
        }
    }

    /// `POST {base}{key}` with JupyterHub's body.
    fn post(&self, key: &str) -> Vec<u8> {
        let body = route_body(key, &self.target);
        format!(
            "POST {}{key} HTTP/1.1\r\n{}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.base,
            self.fixed,
            body.len()
        )
        .into_bytes()
    }

    /// `DELETE {base}{key}` (no body, as JupyterHub sends it).
    fn delete(&self, key: &str) -> Vec<u8> {
        format!("DELETE {}{key} HTTP/1.1\r\n{}\r\n", self.base, self.fixed).into_bytes()
    }
}

/// The status a successful write answers: 201 for a POST, 204 for a DELETE (CHP and hubgate).
fn expected(delete: bool) -> u16 {
    if delete {
        204
    } else {
        201
    }
}

/// One connection's state: the connection (None after an error) and its read buffer.
struct Client {
    conn: Connector,
    c: Option<Conn>,
    reader: Reader,
    reconnects: u64,
}

impl Client {
    async fn new(conn: Connector) -> Result<Client, String> {
        let c = conn
            .connect()
            .await
            .map_err(|e| format!("connect to {}: {e}", conn.target.url))?;
        Ok(Client {
            conn,
            c: Some(c),
            reader: Reader::new(),
            reconnects: 0,
        })
    }

    /// One request; `Ok(status)` or the error (the connection is then dropped and reopened
    /// for the next request). A connect failure is an `Err` too.
    async fn send(&mut self, req: &[u8], read: &mut u64) -> Result<u16, String> {
        if self.c.is_none() {
            let s = self.conn.connect().await.map_err(|e| e.to_string())?;
            self.c = Some(s);
            self.reader = Reader::new();
            self.reconnects += 1;
        }
        let Some(s) = self.c.as_mut() else {
            return Err("no connection".into());
        };
        match exchange(s, &mut self.reader, req, false, self.conn.timeout, read).await {
            Ok(resp) => {
                if resp.close {
                    self.c = None;
                }
                Ok(resp.status)
            }
            Err(e) => {
                self.c = None;
                Err(e.to_string())
            }
        }
    }
}

/// Consecutive failed requests after which a run gives up (the API is gone, not slow).
const GIVE_UP_AFTER: u64 = 20;

pub async fn run_fill(conn: Connector, o: FillOpts, run: &RunOpts) -> Result<Summary, String> {
    let t = conn.target.clone();
    let reqs = Requests::new(&t.authority, &t.path, &o.common);
    let want = expected(o.delete);
    let mut client = Client::new(conn).await?;

    let counters = Arc::new(Counters::default());
    let stop = Arc::new(AtomicBool::new(false));
    let progress = super::report::spawn_progress(
        "api-fill",
        "req",
        counters.clone(),
        stop.clone(),
        run.progress,
    );
    let watcher = Watcher::start(&run.watch);
    let start = Instant::now();
    let deadline = o.max_time.map(|d| start + d);
    let mut hist = Histogram::default();
    let mut status: BTreeMap<String, u64> = BTreeMap::new();
    let mut failed_in_a_row = 0;
    let mut first_error = None;
    let mut stopped_early = false;
    for i in o.first..o.first.saturating_add(o.routes) {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            stopped_early = true;
            break;
        }
        let key = format!("{}{i}", o.common.prefix);
        let req = if o.delete {
            reqs.delete(&key)
        } else {
            reqs.post(&key)
        };
        let mut read = 0;
        let t0 = Instant::now();
        let r = client.send(&req, &mut read).await;
        Counters::add(&counters.bytes_written, req.len() as u64);
        Counters::add(&counters.bytes_read, read);
        match r {
            Ok(code) => {
                hist.record(t0.elapsed().as_nanos() as u64);
                *status.entry(code.to_string()).or_default() += 1;
                Counters::add(&counters.done, 1);
                if code != want {
                    Counters::add(&counters.errors, 1);
                }
                failed_in_a_row = 0;
            }
            Err(e) => {
                Counters::add(&counters.errors, 1);
                first_error.get_or_insert(e);
                failed_in_a_row += 1;
                if failed_in_a_row >= GIVE_UP_AFTER {
                    stopped_early = true;
                    break;
                }
            }
        }
    }
    let elapsed = start.elapsed();
    let (watch, machine) = watcher.finish();
    stop.store(true, Ordering::Relaxed);
    if let Some(p) = progress {
        let _ = p.join();
    }
    let mut extra = BTreeMap::new();
    extra.insert(
        "method".to_string(),
        serde_json::json!(if o.delete { "DELETE" } else { "POST" }),
    );
    extra.insert("routes_asked".to_string(), serde_json::json!(o.routes));
    extra.insert(
        "total_s".to_string(),
        serde_json::json!((elapsed.as_secs_f64() * 1e4).round() / 1e4),
    );
    extra.insert(
        "reconnects".to_string(),
        serde_json::json!(client.reconnects),
    );
    if stopped_early {
        extra.insert("stopped_early".to_string(), serde_json::json!(true));
    }
    if let Some(e) = first_error {
        extra.insert("first_error".to_string(), serde_json::json!(e));
    }
    Ok(Summary {
        mode: "api-fill".into(),
        url: t.url.clone(),
        connections: 1,
        duration_s: elapsed.as_secs_f64(),
        requests: hist.count(),
        errors: Counters::get(&counters.errors),
        rps: hist.count() as f64 / elapsed.as_secs_f64(),
        latency_us: Latency::from_hist(&hist),
        bytes_read: Counters::get(&counters.bytes_read),
        bytes_written: Counters::get(&counters.bytes_written),
        status,
        extra,
        watch,
        machine,
    })
}

/// What a churn connection does with its k-th write: even k adds route `k/2` of this
/// connection, odd k deletes it again, so a connection never has more than one route of its
/// own in the table and every DELETE finds its route.
#[derive(Debug, PartialEq, Eq)]
pub struct ChurnOp {
    pub delete: bool,
    pub key: String,
}

pub fn churn_op(prefix: &str, conn: u64, k: u64) -> ChurnOp {
    ChurnOp {
        delete: k % 2 == 1,
        key: format!("{prefix}{conn}-{}", k / 2),
    }
}

/// When write `k` of connection `i` (of `n`) is due, in seconds after the start: the writes of
/// all connections interleave into one schedule of `rate` per second.
pub fn churn_due(i: u64, k: u64, n: u64, rate: f64) -> f64 {
    (i + k * n) as f64 / rate
}

struct ChurnResult {
    post: Histogram,
    delete: Histogram,
    lag: Histogram,
    status: BTreeMap<u16, u64>,
    cleanup: u64,
    reconnects: u64,
    first_error: Option<String>,
}

pub async fn run_churn(conn: Connector, o: ChurnOpts, run: &RunOpts) -> Result<Summary, String> {
    let t = conn.target.clone();
    let reqs = Arc::new(Requests::new(&t.authority, &t.path, &o.common));
    // Connect everything first, so the measured window is load only.
    let mut clients = Vec::new();
    for _ in 0..o.connections {
        clients.push(Client::new(conn.clone()).await?);
    }
    let counters = Arc::new(Counters::default());
    let stop = Arc::new(AtomicBool::new(false));
    let progress = super::report::spawn_progress(
        "api-churn",
        "write",
        counters.clone(),
        stop.clone(),
        run.progress,
    );
    let watcher = Watcher::start(&run.watch);
    let start = Instant::now();
    let deadline = start + o.duration;
    let n = o.connections;
    let mut tasks = Vec::new();
    for (i, mut client) in clients.into_iter().enumerate() {
        let (counters, reqs, prefix) = (counters.clone(), reqs.clone(), o.common.prefix.clone());
        let (rate, i) = (o.rate, i as u64);
        tasks.push(tokio::spawn(async move {
            let mut res = ChurnResult {
                post: Histogram::default(),
                delete: Histogram::default(),
                lag: Histogram::default(),
                status: BTreeMap::new(),
                cleanup: 0,
                reconnects: 0,
                first_error: None,
            };
            let mut k = 0u64;
            let mut failed_in_a_row = 0;
            loop {
                let at = start + Duration::from_secs_f64(churn_due(i, k, n, rate));
                if at >= deadline {
                    break;
                }
                tokio::time::sleep_until(at.into()).await;
                res.lag.record(at.elapsed().as_nanos() as u64);
                let op = churn_op(&prefix, i, k);
                k += 1;
                let req = if op.delete {
                    reqs.delete(&op.key)
                } else {
                    reqs.post(&op.key)
                };
                let mut read = 0;
                let r = client.send(&req, &mut read).await;
                Counters::add(&counters.bytes_written, req.len() as u64);
                Counters::add(&counters.bytes_read, read);
                match r {
                    Ok(code) => {
                        // latency from the intended send time: a stalled API is not hidden
                        // by this client waiting for it
                        let ns = at.elapsed().as_nanos() as u64;
                        if op.delete {
                            res.delete.record(ns);
                        } else {
                            res.post.record(ns);
                        }
                        *res.status.entry(code).or_default() += 1;
                        Counters::add(&counters.done, 1);
                        if code != expected(op.delete) {
                            Counters::add(&counters.errors, 1);
                        }
                        failed_in_a_row = 0;
                    }
                    Err(e) => {
                        Counters::add(&counters.errors, 1);
                        res.first_error.get_or_insert(e);
                        failed_in_a_row += 1;
                        if failed_in_a_row >= GIVE_UP_AFTER {
                            break;
                        }
                    }
                }
            }
            // The last write was an add: delete that route again (not measured), so a churn
            // leaves the table as it found it.
            if k % 2 == 1 && failed_in_a_row < GIVE_UP_AFTER {
                let op = churn_op(&prefix, i, k);
                let mut read = 0;
                if client.send(&reqs.delete(&op.key), &mut read).await.is_ok() {
                    res.cleanup += 1;
                }
            }
            res.reconnects = client.reconnects;
            res
        }));
    }
    let mut post = Histogram::default();
    let mut delete = Histogram::default();
    let mut lag = Histogram::default();
    let mut status: BTreeMap<String, u64> = BTreeMap::new();
    let (mut cleanup, mut reconnects, mut first_error) = (0, 0, None);
    for t in tasks {
        let r = t.await.map_err(|e| e.to_string())?;
        post.merge(&r.post);
        delete.merge(&r.delete);
        lag.merge(&r.lag);
        for (k, v) in r.status {
            *status.entry(k.to_string()).or_default() += v;
        }
        cleanup += r.cleanup;
        reconnects += r.reconnects;
        if first_error.is_none() {
            first_error = r.first_error;
        }
    }
    let elapsed = start.elapsed();
    let (watch, machine) = watcher.finish();
    stop.store(true, Ordering::Relaxed);
    if let Some(p) = progress {
        let _ = p.join();
    }
    let mut all = post.clone();
    all.merge(&delete);
    let mut extra = BTreeMap::new();
    extra.insert("target_rate".to_string(), serde_json::json!(o.rate));
    let pct = |h: &Histogram| {
        let l = Latency::from_hist(h);
        serde_json::json!({"count": h.count(), "p50": l.p50, "p99": l.p99, "max": l.max})
    };
    extra.insert("post_us".to_string(), pct(&post));
    extra.insert("delete_us".to_string(), pct(&delete));
    let l = Latency::from_hist(&lag);
    extra.insert(
        "send_lag_us".to_string(),
        serde_json::json!({"p50": l.p50, "p99": l.p99, "max": l.max}),
    );
    extra.insert("cleanup_deletes".to_string(), serde_json::json!(cleanup));
    extra.insert("reconnects".to_string(), serde_json::json!(reconnects));
    if let Some(e) = first_error {
        extra.insert("first_error".to_string(), serde_json::json!(e));
    }
    // The achieved rate is over the scheduled window, not the time the last write took to
    // come back, so a rate kept up with reads as the rate asked for.
    let window = o.duration.as_secs_f64().min(elapsed.as_secs_f64());
    Ok(Summary {
        mode: "api-churn".into(),
        url: t.url.clone(),
        connections: o.connections,
        duration_s: elapsed.as_secs_f64(),
        requests: all.count(),
        errors: Counters::get(&counters.errors),
        rps: all.count() as f64 / window,
        latency_us: Latency::from_hist(&all),
        bytes_read: Counters::get(&counters.bytes_read),
        bytes_written: Counters::get(&counters.bytes_written),
        status,
        extra,
        watch,
        machine,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn common() -> ApiCommon {
        ApiCommon {
            prefix: "/user/bench-".into(),
            target: "http://127.0.0.1:9100".into(),
            token: Some("T".into()),
            headers: vec![],
        }
    }

    #[test]
    fn base_path() {
        assert_eq!(api_base("/"), "/api/routes");
        assert_eq!(api_base(""), "/api/routes");
        assert_eq!(api_base("/api/routes"), "/api/routes");
        assert_eq!(api_base("/api/routes/"), "/api/routes");
        assert_eq!(api_base("/proxy/"), "/proxy/api/routes");
        assert_eq!(api_base("/?x=1"), "/api/routes");
    }

    #[test]
    fn body_is_jupyterhubs() {
        let v: serde_json::Value =
            serde_json::from_str(&route_body("/user/bench-7", "http://h:1")).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"user": "bench-7", "server_name": "", "target": "http://h:1", "jupyterhub": true})
        );
        // quotes in a prefix are escaped, not pasted
        let v: serde_json::Value = serde_json::from_str(&route_body("/u/a\"b", "t")).unwrap();
        assert_eq!(v["user"], "a\"b");
    }

    #[test]
    fn requests() {
        let r = Requests::new("127.0.0.1:8001", "/", &common());
        let post = String::from_utf8(r.post("/user/bench-3")).unwrap();
        let (head, body) = post.split_once("\r\n\r\n").unwrap();
        assert!(
            head.starts_with("POST /api/routes/user/bench-3 HTTP/1.1\r\nHost: 127.0.0.1:8001\r\n")
        );
        assert!(head.contains("\r\nAuthorization: token T\r\n"));
        assert!(head.contains(&format!("\r\nContent-Length: {}", body.len())));
        let del = String::from_utf8(r.delete("/user/bench-3")).unwrap();
        assert!(del.starts_with("DELETE /api/routes/user/bench-3 HTTP/1.1\r\n"));
        assert!(del.ends_with("\r\n\r\n") && !del.contains("Content-Length"));
    }

    #[test]
    fn options_checked() {
        assert!(check_common(&common()).is_ok());
        let mut c = common();
        c.prefix = "user/".into();
        assert!(check_common(&c).is_err());
        c.prefix = "/user/a b".into();
        assert!(check_common(&c).is_err());
        let mut c = common();
        c.headers = vec!["NoColon".into()];
        assert!(check_common(&c).is_err());
    }

    #[test]
    fn churn_schedule() {
        // a connection adds a route, then deletes that same route, then the next one
        assert_eq!(
            churn_op("/c/", 1, 0),
            ChurnOp {
                delete: false,
                key: "/c/1-0".into()
            }
        );
        assert_eq!(
            churn_op("/c/", 1, 1),
            ChurnOp {
                delete: true,
                key: "/c/1-0".into()
            }
        );
        assert_eq!(churn_op("/c/", 1, 2).key, "/c/1-1");
        // 2 connections at 1000/s: connection 0 at 0, 2, 4 ms; connection 1 at 1, 3, 5 ms
        let due: Vec<f64> = (0..3)
            .flat_map(|k| (0..2).map(move |i| churn_due(i, k, 2, 1000.0)))
            .collect();
        for (j, d) in due.iter().enumerate() {
            assert!((d - j as f64 / 1000.0).abs() < 1e-12, "{due:?}");
        }
    }

    /// A stand-in API that answers 201/204 and counts connections and requests.
    async fn fake_api() -> (std::net::SocketAddr, Arc<std::sync::Mutex<(u64, u64)>>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let seen = Arc::new(std::sync::Mutex::new((0u64, 0u64)));
        let s2 = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                s2.lock().unwrap().0 += 1;
                let seen = s2.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        // one whole request (head + Content-Length body) at a time
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..end]).to_string();
                            let len: usize = head
                                .lines()
                                .find_map(|l| l.strip_prefix("Content-Length: "))
                                .map(|v| v.parse().unwrap())
                                .unwrap_or(0);
                            if buf.len() < end + 4 + len {
                                break;
                            }
                            buf.drain(..end + 4 + len);
                            seen.lock().unwrap().1 += 1;
                            let code = if head.starts_with("DELETE") {
                                "204 No Content"
                            } else {
                                "201 Created"
                            };
                            let resp = format!("HTTP/1.1 {code}\r\nContent-Length: 0\r\n\r\n");
                            if s.write_all(resp.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                });
            }
        });
        (addr, seen)
    }

    async fn connector(addr: std::net::SocketAddr) -> Connector {
        let t = super::super::conn::Target::parse(&format!("http://{addr}"), ("http", "https"))
            .await
            .unwrap();
        Connector::new(t, None, false, Duration::from_secs(5)).unwrap()
    }

    fn quiet() -> RunOpts {
        RunOpts {
            progress: false,
            watch: vec![],
        }
    }

    #[tokio::test]
    async fn fill_uses_one_connection() {
        let (addr, seen) = fake_api().await;
        let o = FillOpts {
            routes: 300,
            first: 0,
            delete: false,
            max_time: None,
            common: common(),
        };
        let s = run_fill(connector(addr).await, o, &quiet()).await.unwrap();
        assert_eq!((s.requests, s.errors), (300, 0));
        assert_eq!(s.status.get("201"), Some(&300));
        assert_eq!(*seen.lock().unwrap(), (1, 300));
    }

    #[tokio::test]
    async fn churn_keeps_rate_and_cleans_up() {
        let (addr, seen) = fake_api().await;
        let o = ChurnOpts {
            rate: 400.0,
            duration: Duration::from_millis(500),
            connections: 2,
            common: common(),
        };
        let s = run_churn(connector(addr).await, o, &quiet()).await.unwrap();
        assert_eq!(s.errors, 0);
        // 200 writes scheduled; the adds and deletes pair up
        assert_eq!(s.requests, 200);
        let cleanup = s.extra["cleanup_deletes"].as_u64().unwrap();
        assert_eq!(
            s.status.get("201").copied().unwrap_or(0),
            s.status.get("204").copied().unwrap_or(0) + cleanup
        );
        assert_eq!(seen.lock().unwrap().0, 2);
    }
}
