//! Operations, part 1: the Prometheus `/metrics` listener (`--metrics-port`) and the access
//! log. Every test drives real traffic through the spawned binary and asserts on the
//! difference between two scrapes (parsed here from the text exposition format).

use crate::support::ws::{ws_recv_text, WsEnd};
use crate::support::*;
use base64::Engine as _;
use futures_util::SinkExt;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

const T: Duration = Duration::from_secs(10);
/// How long counters updated after the response (pingora's `logging` phase) may lag.
const SETTLE: Duration = Duration::from_secs(5);
const ISSUER: &str = "https://idp.test";

// ---------------------------------------------------------------------------------------
// Prometheus text format
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

#[derive(Debug, Clone)]
struct Scrape {
    samples: Vec<Sample>,
    text: String,
}

fn parse_value(s: &str) -> f64 {
    match s {
        "+Inf" | "Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        _ => s
            .parse()
            .unwrap_or_else(|e| panic!("bad sample value {s:?}: {e}")),
    }
}

/// Parses `name{k="v",...} value [timestamp]` lines (comments skipped).
fn parse_exposition(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name_end = line
            .find(|c: char| c == '{' || c.is_whitespace())
            .unwrap_or_else(|| panic!("sample line without value: {line:?}"));
        let name = line[..name_end].to_string();
        let mut labels = BTreeMap::new();
        let mut rest = &line[name_end..];
        if let Some(r) = rest.strip_prefix('{') {
            let b = r.as_bytes();
            let mut i = 0;
            loop {
                while i < b.len() && (b[i] == b',' || b[i] == b' ') {
                    i += 1;
                }
                assert!(i < b.len(), "unterminated label set: {line:?}");
                if b[i] == b'}' {
                    i += 1;
                    break;
                }
                let eq = r[i..]
                    .find('=')
                    .unwrap_or_else(|| panic!("label without '=': {line:?}"))
                    + i;
                let key = r[i..eq].trim().to_string();
                assert_eq!(b[eq + 1], b'"', "label value not quoted: {line:?}");
                let mut j = eq + 2;
                let mut val = String::new();
                while b[j] != b'"' {
                    if b[j] == b'\\' {
                        j += 1;
                        val.push(match b[j] {
                            b'n' => '\n',
                            c => c as char,
                        });
                        j += 1;
                    } else {
                        let ch = r[j..].chars().next().unwrap();
                        val.push(ch);
                        j += ch.len_utf8();
                    }
                }
                labels.insert(key, val);
                i = j + 1;
            }
            rest = &r[i..];
        }
        let value = rest
            .split_whitespace()
            .next()
            .unwrap_or_else(|| panic!("no value: {line:?}"));
        out.push(Sample {
            name,
            labels,
            value: parse_value(value),
        });
    }
    out
}

impl Scrape {
    fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// Sum of every sample of `name` whose labels include `labels` (0 if none).
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }

    /// The single sample of `name` with `labels`; None if absent.
    fn one(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let v: Vec<f64> = self.matching(name, labels).map(|s| s.value).collect();
        assert!(
            v.len() <= 1,
            "{name}{labels:?} matches {} samples; be more specific",
            v.len()
        );
        v.first().copied()
    }

    fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|s| s.name == name)
    }

    /// Sample names, plus the family name of `_bucket/_count/_sum` series.
    fn names(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for s in &self.samples {
            out.insert(s.name.clone());
            out.insert(strip_series_suffix(&s.name).to_string());
        }
        out
    }
}

fn strip_series_suffix(name: &str) -> &str {
    for suf in ["_bucket", "_count", "_sum"] {
        if let Some(base) = name.strip_suffix(suf) {
            return base;
        }
    }
    name
}

fn scrape(port: u16) -> Scrape {
    let r = get(port, "/metrics");
    assert_eq!(r.status, 200, "GET /metrics: {}", r.describe());
    let text = r.text();
    Scrape {
        samples: parse_exposition(&text),
        text,
    }
}

/// One expected change between two scrapes.
struct Exp<'a> {
    name: &'a str,
    labels: &'a [(&'a str, &'a str)],
    delta: f64,
}

fn exp<'a>(name: &'a str, labels: &'a [(&'a str, &'a str)], delta: u64) -> Exp<'a> {
    Exp {
        name,
        labels,
        delta: delta as f64,
    }
}

/// Scrapes until every expected delta is reached (counters recorded in the logging phase
/// may trail the response a little), then asserts each delta is exactly as expected.
fn expect_deltas(port: u16, before: &Scrape, exps: &[Exp<'_>]) -> Scrape {
    let deadline = Instant::now() + SETTLE;
    let mut after;
    loop {
        after = scrape(port);
        let reached = exps
            .iter()
            .all(|e| after.sum(e.name, e.labels) - before.sum(e.name, e.labels) >= e.delta);
        if reached || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut bad = Vec::new();
    for e in exps {
        let d = after.sum(e.name, e.labels) - before.sum(e.name, e.labels);
        if d != e.delta {
            bad.push(format!(
                "  {}{:?}: delta {d}, expected {}",
                e.name, e.labels, e.delta
            ));
        }
    }
    assert!(
        bad.is_empty(),
        "metric deltas differ:\n{}\n--- last scrape ---\n{}",
        bad.join("\n"),
        relevant_lines(&after.text, exps)
    );
    after
}

fn relevant_lines(text: &str, exps: &[Exp<'_>]) -> String {
    text.lines()
        .filter(|l| !l.starts_with('#') && exps.iter().any(|e| l.starts_with(e.name)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Scrapes until `f` holds (or the deadline passes); returns the last scrape.
fn scrape_until(
    port: u16,
    timeout: Duration,
    mut f: impl FnMut(&Scrape) -> bool,
) -> (Scrape, bool) {
    let deadline = Instant::now() + timeout;
    loop {
        let s = scrape(port);
        if f(&s) {
            return (s, true);
        }
        if Instant::now() >= deadline {
            return (s, false);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------
// Starting hubgate, auth material
// ---------------------------------------------------------------------------------------

struct Proxy {
    hg: Hubgate,
    mport: u16,
    _dir: TempDir,
}

/// hubgate with `--metrics-port` (default metrics IP) and, if given, `--config` with `toml`
/// (`{dir}` in it is replaced by the temp dir).
fn start(toml: Option<&str>, setup: impl FnOnce(&TempDir)) -> Proxy {
    let dir = TempDir::new("metrics");
    setup(&dir);
    let mport = free_port();
    let mut b = Hubgate::builder()
        .args(&["--metrics-port", &mport.to_string()])
        .wait_port(mport);
    if let Some(t) = toml {
        let t = t.replace("{dir}", &dir.path.to_string_lossy());
        let p = dir.write("hubgate.toml", t);
        b = b.args(&["--config", &p.to_string_lossy()]);
    }
    Proxy {
        hg: b.start(),
        mport,
        _dir: dir,
    }
}

fn openssl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl (is the openssl CLI installed?)");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A JWKS document with one fresh RSA-2048 public key (kid "k1").
fn jwks_document(dir: &TempDir) -> String {
    let key = dir.join("idp-key.pem");
    let key_s = key.to_string_lossy().to_string();
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        &key_s,
    ]);
    let modulus =
        String::from_utf8(openssl(&["rsa", "-in", &key_s, "-noout", "-modulus"])).unwrap();
    let hex = modulus
        .trim()
        .strip_prefix("Modulus=")
        .unwrap_or_else(|| panic!("unexpected openssl output {modulus:?}"));
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    let n = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    json!({"keys": [{"kty": "RSA", "kid": "k1", "use": "sig", "alg": "RS256", "n": n, "e": "AQAB"}]})
        .to_string()
}

fn write_jwks(dir: &TempDir) -> PathBuf {
    let doc = jwks_document(dir);
    dir.write("jwks.json", doc)
}

/// `[auth]` with one issuer whose keys come from `{dir}/jwks.json`, plus `extra` TOML
/// appended inside the issuer table.
fn auth_toml(prefix: &str) -> String {
    format!(
        "{prefix}\n[auth]\naudit-log = \"denials\"\n\n[[auth.issuers]]\nissuer = \"{ISSUER}\"\naudiences = [\"jupyterhub\"]\njwks-file = \"{{dir}}/jwks.json\"\n\n[[auth.policies]]\nprefix = \"/open/\"\naccess = \"public\"\n"
    )
}

/// Waits until `/_chp_healthz` answers 200 (with auth: keys loaded).
fn wait_healthy(hg: &Hubgate) {
    let ok = wait_until(T, || hg.get("/_chp_healthz").status == 200);
    assert!(ok, "never healthy:\n{}", hg.output());
}

/// A minimal HTTP server on a given port answering every request with `body` (JSON).
struct FixedPortServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FixedPortServer {
    fn start(port: u16, body: String) -> FixedPortServer {
        let l = TcpListener::bind(("127.0.0.1", port)).expect("bind the JWKS port");
        l.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                        let mut buf = Vec::new();
                        let mut b = [0u8; 1024];
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            match s.read(&mut b) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => buf.extend_from_slice(&b[..n]),
                            }
                        }
                        let resp = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = s.write_all(resp.as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        FixedPortServer {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for FixedPortServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn b64url(s: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

/// A well-formed but unsigned-by-anyone JWT naming `iss` and kid "k1".
fn fake_jwt(iss: &str) -> String {
    let h = b64url(r#"{"alg":"RS256","kid":"k1","typ":"JWT"}"#);
    let p = b64url(
        &json!({"iss": iss, "aud": "jupyterhub", "sub": "alice", "exp": 4102444800u64}).to_string(),
    );
    format!("{h}.{p}.{}", b64url("not-a-signature"))
}

fn dead_url() -> String {
    format!("http://127.0.0.1:{}", free_port())
}

fn route_json(target: &str, extra: serde_json::Value) -> String {
    let mut v = extra;
    v["target"] = json!(target);
    v.to_string()
}

fn assert_status(r: &Response, want: u16, what: &str) {
    assert_eq!(r.status, want, "{what}: {}", r.describe());
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[test]
fn web_requests_are_counted_by_status_and_route_kind() {
    let p = start(None, |_| {});
    let hg = &p.hg;
    let echo = Backend::echo();
    hg.add_route_json(
        "/user/alice",
        &route_json(&echo.url(), json!({"user": "alice", "server_name": ""})),
    );
    hg.add_route_json("/hub", &route_json(&echo.url(), json!({"hub": true})));
    hg.add_route("/plain", &echo.url());

    let before = scrape(p.mport);
    let (n_user, n_hub, n_other) = (5u64, 3u64, 4u64);
    for i in 0..n_user {
        assert_status(&hg.get(&format!("/user/alice/tree/{i}")), 200, "user route");
    }
    // Keep-alive: several requests on one connection count one each.
    let mut c = hg.proxy_conn();
    for i in 0..n_hub {
        let r = c.request(&Req::get(&format!("/hub/api/x{i}"))).unwrap();
        assert_status(&r, 200, "hub route");
    }
    for i in 0..n_other {
        assert_status(&hg.get(&format!("/plain/p{i}")), 200, "plain route");
    }
    let total = n_user + n_hub + n_other;
    let after = expect_deltas(
        p.mport,
        &before,
        &[
            exp("requests_web", &[], total),
            exp("requests_ws", &[], 0),
            exp("requests_proxy", &[("status", "200")], total),
            exp("requests_proxy", &[], total),
            exp(
                "hubgate_request_duration_seconds_count",
                &[("route_kind", "user"), ("status_class", "2xx")],
                n_user,
            ),
            exp(
                "hubgate_request_duration_seconds_count",
                &[("route_kind", "hub"), ("status_class", "2xx")],
                n_hub,
            ),
            exp(
                "hubgate_request_duration_seconds_count",
                &[("route_kind", "other"), ("status_class", "2xx")],
                n_other,
            ),
            exp(
                "hubgate_request_duration_seconds_count",
                &[("route_kind", "service")],
                0,
            ),
            exp("hubgate_request_duration_seconds_count", &[], total),
            // The +Inf bucket counts every observation.
            exp(
                "hubgate_request_duration_seconds_bucket",
                &[
                    ("route_kind", "user"),
                    ("status_class", "2xx"),
                    ("le", "+Inf"),
                ],
                n_user,
            ),
            exp("hubgate_upstream_errors_total", &[], 0),
        ],
    );
    // Summaries grow with traffic (one lookup and one activity update per request at least).
    for name in ["find_target_for_req", "last_activity_updating"] {
        let count = format!("{name}_count");
        let d = after.sum(&count, &[]) - before.sum(&count, &[]);
        assert!(
            d >= total as f64,
            "{count} grew by {d}, expected at least {total}"
        );
        let sum = format!("{name}_sum");
        assert!(
            after.sum(&sum, &[]) >= before.sum(&sum, &[]) && after.has(&sum),
            "{sum} missing or decreasing"
        );
    }
    let dsum = after.sum("hubgate_request_duration_seconds_sum", &[])
        - before.sum("hubgate_request_duration_seconds_sum", &[]);
    assert!(dsum > 0.0, "duration sum did not grow: {dsum}");
    assert_eq!(echo.count() as u64, total);
}

#[test]
fn dead_upstreams_and_missing_routes_are_counted() {
    let p = start(None, |_| {});
    let hg = &p.hg;
    hg.add_route_json(
        "/user/bob",
        &route_json(&dead_url(), json!({"user": "bob"})),
    );
    let before = scrape(p.mport);
    let k = 3u64;
    for i in 0..k {
        let t0 = Instant::now();
        let r = hg.get(&format!("/user/bob/lab/{i}"));
        assert_status(&r, 503, "dead upstream");
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "503 took {:?}",
            t0.elapsed()
        );
    }
    // No route matches and there is no "/" route.
    assert_status(&hg.get("/nowhere/at/all"), 404, "no route");
    // A websocket upgrade to the dead target: one more refused connection.
    let mut c = hg.proxy_conn();
    c.send_raw(&crate::support::ws::raw_upgrade(
        "/user/bob/api/kernels/k/channels",
        &c.host.clone(),
    ))
    .unwrap();
    let r = c
        .read_response(false)
        .expect("answer to an upgrade to a dead target");
    assert_status(&r, 503, "websocket to a dead upstream");
    expect_deltas(
        p.mport,
        &before,
        &[
            exp("requests_web", &[], k + 1),
            exp("requests_ws", &[], 1),
            exp("requests_proxy", &[("status", "503")], k + 1),
            exp("requests_proxy", &[("status", "404")], 1),
            exp("requests_proxy", &[("status", "200")], 0),
            exp(
                "hubgate_upstream_errors_total",
                &[("kind", "refused")],
                k + 1,
            ),
            exp("hubgate_upstream_errors_total", &[], k + 1),
            exp(
                "hubgate_request_duration_seconds_count",
                &[("status_class", "5xx")],
                k,
            ),
            exp(
                "hubgate_request_duration_seconds_count",
                &[("route_kind", "user"), ("status_class", "5xx")],
                k,
            ),
            exp(
                "hubgate_request_duration_seconds_count",
                &[("status_class", "4xx")],
                1,
            ),
            exp(
                "hubgate_request_duration_seconds_count",
                &[("status_class", "2xx")],
                0,
            ),
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_open_frames_and_bytes() {
    let p = start(None, |_| {});
    let hg = &p.hg;
    let ws = WsBackend::echo();
    hg.add_route_json(
        "/user/carol",
        &route_json(&ws.url(), json!({"user": "carol"})),
    );
    let before = scrape(p.mport);
    assert_eq!(before.one("hubgate_websockets_open", &[]), Some(0.0));
    let (m, f) = (3usize, 4usize);
    let mut clients = Vec::new();
    let mut payload_bytes = 0u64;
    for i in 0..m {
        let (mut c, resp) = ws_connect(
            hg.port,
            &format!("/user/carol/api/kernels/k{i}/channels"),
            &[],
        )
        .await
        .expect("ws connect through hubgate");
        assert_eq!(resp.status().as_u16(), 101);
        for j in 0..f {
            let msg = format!("ws{i}-frame{j}-{}", "x".repeat(10 * j));
            payload_bytes += msg.len() as u64;
            c.send(Message::Text(msg.clone().into())).await.unwrap();
            assert_eq!(ws_recv_text(&mut c, T).await.as_deref(), Some(msg.as_str()));
        }
        clients.push(c);
    }
    let mf = (m * f) as u64;
    let open = expect_deltas(
        p.mport,
        &before,
        &[
            exp("requests_ws", &[], m as u64),
            exp("requests_web", &[], 0),
            exp("requests_proxy", &[("status", "101")], m as u64),
            exp("hubgate_websockets_open", &[], m as u64),
            exp(
                "hubgate_websocket_frames_total",
                &[("direction", "client_to_server")],
                mf,
            ),
            exp(
                "hubgate_websocket_frames_total",
                &[("direction", "server_to_client")],
                mf,
            ),
        ],
    );
    for (dir, min) in [
        // Client frames are masked: payload + at least 6 header bytes each.
        ("client_to_server", payload_bytes + 6 * mf),
        ("server_to_client", payload_bytes + 2 * mf),
    ] {
        let d = open.sum("hubgate_websocket_bytes_total", &[("direction", dir)])
            - before.sum("hubgate_websocket_bytes_total", &[("direction", dir)]);
        assert!(
            d >= min as f64,
            "websocket bytes {dir}: +{d}, expected at least {min} (payload {payload_bytes})"
        );
    }
    assert_eq!(open.one("hubgate_websockets_open", &[]), Some(m as f64));

    for mut c in clients {
        let _ = c.close(None).await;
        let end = crate::support::ws::ws_wait_end(&mut c, T).await;
        assert_ne!(end, WsEnd::StillOpen, "websocket not closed");
    }
    let (closed, ok) = scrape_until(p.mport, T, |s| {
        s.one("hubgate_websockets_open", &[]) == Some(0.0)
    });
    assert!(
        ok,
        "hubgate_websockets_open = {:?} after closing every websocket",
        closed.one("hubgate_websockets_open", &[])
    );
    assert!(ws.wait_closed(m, T), "upstream websockets not closed");
}

#[test]
fn api_calls_are_counted_by_kind_status_and_method() {
    let p = start(None, |_| {});
    let hg = &p.hg;
    let echo = Backend::echo();
    let before = scrape(p.mport);
    assert_eq!(before.one("hubgate_routes", &[]), Some(0.0));
    for u in ["a", "b", "c"] {
        hg.add_route(&format!("/user/{u}"), &echo.url());
    }
    for _ in 0..2 {
        assert_status(&hg.api_get("/api/routes"), 200, "GET /api/routes");
    }
    assert_status(&hg.api_get("/api/routes/user/a"), 200, "GET one route");
    assert_status(&hg.api_delete("/api/routes/user/a"), 204, "DELETE");
    assert_status(
        &hg.api_delete("/api/routes/user/nope"),
        404,
        "DELETE missing",
    );
    // No token: 403, counted too.
    assert_status(&hg.api_raw(&Req::get("/api/routes")), 403, "no token");
    let after = expect_deltas(
        p.mport,
        &before,
        &[
            exp("api_route_add", &[], 3),
            exp("api_route_get", &[], 2),
            exp("api_route_delete", &[], 2),
            exp("requests_api", &[("status", "201")], 3),
            exp("requests_api", &[("status", "200")], 3),
            exp("requests_api", &[("status", "204")], 1),
            exp("requests_api", &[("status", "404")], 1),
            exp("requests_api", &[("status", "403")], 1),
            exp("requests_api", &[], 9),
            exp(
                "hubgate_api_request_duration_seconds_count",
                &[("method", "POST")],
                3,
            ),
            exp(
                "hubgate_api_request_duration_seconds_count",
                &[("method", "GET")],
                4,
            ),
            exp(
                "hubgate_api_request_duration_seconds_count",
                &[("method", "DELETE")],
                2,
            ),
            exp("requests_web", &[], 0),
        ],
    );
    let routes = hg.routes();
    assert_eq!(routes.len(), 2);
    assert_eq!(
        after.one("hubgate_routes", &[]),
        Some(routes.len() as f64),
        "hubgate_routes vs the table {:?}",
        routes.keys().collect::<Vec<_>>()
    );
    hg.add_route("/", &echo.url());
    let s = scrape(p.mport);
    assert_eq!(s.one("hubgate_routes", &[]), Some(3.0), "root route counts");
}

#[test]
fn process_build_and_connection_metrics_are_exported() {
    let p = start(None, |_| {});
    let hg = &p.hg;
    let echo = Backend::echo();
    hg.add_route("/", &echo.url());
    // Hold a couple of client connections open while scraping.
    let mut c1 = hg.proxy_conn();
    let mut c2 = hg.proxy_conn();
    assert_status(&c1.request(&Req::get("/a")).unwrap(), 200, "c1");
    assert_status(&c2.request(&Req::get("/b")).unwrap(), 200, "c2");

    let r = get(p.mport, "/metrics");
    assert_eq!(r.status, 200);
    let ct = r.header("content-type").unwrap_or("");
    assert!(ct.starts_with("text/plain"), "content-type {ct:?}");
    assert!(ct.contains("version=0.0.4"), "content-type {ct:?}");
    assert_eq!(
        get(p.mport, "/other").status,
        404,
        "only /metrics is served"
    );

    let s = scrape(p.mport);
    for name in [
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_cpu_seconds_total",
        "process_start_time_seconds",
        "hubgate_connections_open",
    ] {
        let v = s.one(name, &[]);
        assert!(v.is_some(), "{name} missing from /metrics");
    }
    assert!(s.one("process_resident_memory_bytes", &[]).unwrap() > 1e6);
    assert!(s.one("process_open_fds", &[]).unwrap() >= 5.0);
    assert!(s.one("process_cpu_seconds_total", &[]).unwrap() >= 0.0);
    // Three listeners, two client connections, at least one pooled target connection.
    let conns = s.one("hubgate_connections_open", &[]).unwrap();
    assert!(conns >= 5.0, "hubgate_connections_open = {conns}");
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        s.one("hubgate_build_info", &[("version", version)]),
        Some(1.0),
        "hubgate_build_info{{version={version:?}}}:\n{}",
        s.text
            .lines()
            .filter(|l| l.contains("build_info"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // CHP's series exist before any traffic of their kind.
    for name in [
        "requests_ws",
        "api_route_add",
        "api_route_delete",
        "find_target_for_req_count",
        "last_activity_updating_count",
        "hubgate_websockets_open",
        "hubgate_routes",
    ] {
        assert!(s.has(name), "{name} missing");
    }
    assert!(
        s.one("hubgate_upstream_errors_total", &[("kind", "timeout")])
            .is_some(),
        "upstream error kinds are declared up front"
    );
    drop(c1);
    drop(c2);
}

#[test]
fn the_in_memory_store_reports_itself_up() {
    let p = start(None, |_| {});
    let hg = &p.hg;
    let s = scrape(p.mport);
    assert_eq!(
        s.one("hubgate_store_up", &[("backend", "memory")]),
        Some(1.0),
        "hubgate_store_up{{backend=\"memory\"}}:\n{}",
        relevant_lines(&s.text, &[exp("hubgate_store_up", &[], 0)])
    );
    assert_eq!(
        s.matching("hubgate_store_up", &[]).count(),
        1,
        "one store, one series"
    );
    // Route writes cannot fail in memory, so the value stays 1 after them.
    let echo = Backend::echo();
    hg.add_route("/user/alice", &echo.url());
    hg.delete_route("/user/alice");
    let s = scrape(p.mport);
    assert_eq!(
        s.one("hubgate_store_up", &[("backend", "memory")]),
        Some(1.0)
    );
}

#[test]
fn auth_decisions_and_key_set_age() {
    let p = start(Some(&auth_toml("")), |d| {
        write_jwks(d);
    });
    let hg = &p.hg;
    wait_healthy(hg);
    let echo = Backend::echo();
    hg.add_route_json(
        "/user/alice",
        &route_json(&echo.url(), json!({"user": "alice"})),
    );
    hg.add_route_json("/hub", &route_json(&echo.url(), json!({"hub": true})));
    let before = scrape(p.mport);

    let n_deny = 3u64;
    for i in 0..n_deny {
        let r = hg.get(&format!("/user/alice/tree/{i}"));
        assert_status(&r, 401, "no credential on a user server");
    }
    let n_public = 2u64;
    for _ in 0..n_public {
        assert_status(&hg.get("/hub/login"), 200, "public login page");
    }
    assert_eq!(
        echo.count() as u64,
        n_public,
        "denied requests never reach the target"
    );
    let after = expect_deltas(
        p.mport,
        &before,
        &[
            exp(
                "hubgate_auth_decisions_total",
                &[("result", "deny"), ("reason", "missing_credential")],
                n_deny,
            ),
            exp(
                "hubgate_auth_decisions_total",
                &[("result", "allow"), ("reason", "public")],
                n_public,
            ),
            exp(
                "hubgate_auth_decisions_total",
                &[("result", "deny")],
                n_deny,
            ),
            exp("hubgate_auth_decisions_total", &[], n_deny + n_public),
            exp(
                "hubgate_request_duration_seconds_count",
                &[("route_kind", "hub"), ("status_class", "2xx")],
                n_public,
            ),
        ],
    );
    let age = after
        .one("hubgate_auth_key_set_age_seconds", &[("issuer", ISSUER)])
        .unwrap_or_else(|| panic!("no key-set age for {ISSUER}:\n{}", after.text));
    assert!(
        age.is_finite() && (0.0..60.0).contains(&age),
        "key set age {age} right after start"
    );
    assert_eq!(
        after.one(
            "hubgate_auth_key_refresh_failures_total",
            &[("issuer", ISSUER)]
        ),
        Some(0.0)
    );
    // The audit log (denials) names the reason.
    assert!(
        hg.wait_for_stdout("reason=missing_credential", T),
        "no audit line:\n{}",
        hg.stdout()
    );
}

#[test]
fn unreachable_key_set_is_infinitely_stale_until_it_loads() {
    let jwks_port = free_port();
    let toml = format!(
        "[auth]\n[[auth.issuers]]\nissuer = \"{ISSUER}\"\naudiences = [\"jupyterhub\"]\njwks-url = \"http://127.0.0.1:{jwks_port}/jwks.json\"\nrefresh-seconds = 1\n"
    );
    let p = start(Some(&toml), |_| {});
    let hg = &p.hg;
    let echo = Backend::echo();
    hg.add_route_json(
        "/user/alice",
        &route_json(&echo.url(), json!({"user": "alice"})),
    );

    let (s, ok) = scrape_until(p.mport, T, |s| {
        s.one(
            "hubgate_auth_key_refresh_failures_total",
            &[("issuer", ISSUER)],
        )
        .is_some_and(|v| v >= 1.0)
    });
    assert!(
        ok,
        "no key refresh failure counted:\n{}\n--- output ---\n{}",
        s.text,
        hg.output()
    );
    let age = s.one("hubgate_auth_key_set_age_seconds", &[("issuer", ISSUER)]);
    assert_eq!(
        age,
        Some(f64::INFINITY),
        "never-fetched key set must be +Inf"
    );
    // The text format's spelling is `+Inf`; Prometheus (Go's ParseFloat) also reads `inf`,
    // which is what the prometheus crate writes. Either is accepted here.
    let line = s
        .text
        .lines()
        .find(|l| l.starts_with("hubgate_auth_key_set_age_seconds") && l.contains(ISSUER))
        .unwrap();
    let token = line.rsplit(' ').next().unwrap();
    assert!(
        token.eq_ignore_ascii_case("+inf") || token.eq_ignore_ascii_case("inf"),
        "infinite key-set age written as {token:?}"
    );
    let h = hg.get("/_chp_healthz");
    assert_status(&h, 503, "health before keys load");

    // A credential for this issuer cannot be checked: 503 keys_unavailable.
    let before = scrape(p.mport);
    let r = hg.request(
        &Req::get("/user/alice/tree")
            .header("Authorization", &format!("Bearer {}", fake_jwt(ISSUER))),
    );
    assert_status(&r, 503, "token while keys are unavailable");
    let r = hg.get("/user/alice/tree");
    assert_status(&r, 401, "no credential (decided without keys)");
    expect_deltas(
        p.mport,
        &before,
        &[
            exp(
                "hubgate_auth_decisions_total",
                &[("result", "deny"), ("reason", "keys_unavailable")],
                1,
            ),
            exp(
                "hubgate_auth_decisions_total",
                &[("result", "deny"), ("reason", "missing_credential")],
                1,
            ),
        ],
    );
    assert_eq!(echo.count(), 0);

    // The identity provider comes up: keys load on the next retry, health turns 200.
    let dir = TempDir::new("jwks");
    let _idp = FixedPortServer::start(jwks_port, jwks_document(&dir));
    let t0 = Instant::now();
    assert!(
        wait_until(T, || hg.get("/_chp_healthz").status == 200),
        "healthz still {} after the key set became reachable:\n{}",
        hg.get("/_chp_healthz").status,
        hg.output()
    );
    eprintln!(
        "keys loaded {:?} after the JWKS server started",
        t0.elapsed()
    );
    let s = scrape(p.mport);
    let age = s
        .one("hubgate_auth_key_set_age_seconds", &[("issuer", ISSUER)])
        .unwrap();
    assert!(age.is_finite() && age < 30.0, "age after loading: {age}");
}

#[test]
fn json_access_log_has_one_redacted_line_per_request() {
    let p = start(Some("[server]\naccess-log = \"json\"\n"), |_| {});
    let hg = &p.hg;
    let echo = Backend::echo();
    hg.add_route_json(
        "/user/dora",
        &route_json(&echo.url(), json!({"user": "dora"})),
    );
    let n = 4;
    for i in 0..n {
        let r = hg.request(
            &Req::get(&format!("/user/dora/al-{i}?x=1&token=sekrit{i}&y=2"))
                .header("User-Agent", "metrics-test/1"),
        );
        assert_status(&r, 200, "proxied");
    }
    // The target received the token untouched: only the log redacts it.
    assert!(echo.last().unwrap().target.contains("token=sekrit3"));
    let entries = |out: &str| -> Vec<serde_json::Value> {
        out.lines()
            .filter_map(|l| l.split_once("[hubgate] info: ").map(|(_, rest)| rest))
            .filter(|rest| rest.starts_with('{'))
            .filter_map(|rest| serde_json::from_str::<serde_json::Value>(rest).ok())
            .filter(|v| {
                v["target"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("/user/dora/al-"))
            })
            .collect()
    };
    let ok = wait_until(T, || entries(&hg.stdout()).len() >= n);
    let out = hg.stdout();
    let got = entries(&out);
    assert!(
        ok,
        "expected {n} JSON access lines, got {}:\n{out}",
        got.len()
    );
    assert_eq!(got.len(), n, "one line per request:\n{out}");
    for i in 0..n {
        let want = format!("/user/dora/al-{i}?x=1&token=REDACTED&y=2");
        let line = got
            .iter()
            .find(|v| v["target"] == want.as_str())
            .unwrap_or_else(|| panic!("no access line with target {want}:\n{out}"));
        assert_eq!(line["status"], 200, "{line}");
        assert_eq!(line["method"], "GET", "{line}");
        assert_eq!(line["client"], "127.0.0.1", "{line}");
        assert_eq!(line["user_agent"], "metrics-test/1", "{line}");
        assert!(line["duration_us"].is_u64(), "{line}");
        assert!(line["bytes"].as_u64().is_some_and(|b| b > 0), "{line}");
    }
    assert!(
        !out.contains("sekrit"),
        "a token value leaked into the log:\n{out}"
    );
    // Every line of the JSON log mode is a single line (no pretty-printing).
    for l in out.lines().filter(|l| l.contains("\"target\"")) {
        assert!(
            l.trim_end().ends_with('}'),
            "access line not self-contained: {l}"
        );
    }
}

/// Metric names referenced by an alert or dashboard file (prefixes hubgate owns or CHP
/// defines; `up` and other Prometheus-made series are skipped).
fn referenced_metrics(text: &str) -> BTreeSet<String> {
    const PREFIXES: [&str; 6] = [
        "hubgate_",
        "process_",
        "requests_",
        "api_route_",
        "find_target_for_req",
        "last_activity_updating",
    ];
    let mut out = BTreeSet::new();
    let mut tok = String::new();
    let flush = |tok: &mut String, out: &mut BTreeSet<String>| {
        let t = tok.trim_end_matches(':');
        let valid = t
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_' || c == ':');
        if valid && PREFIXES.iter().any(|p| t.starts_with(p)) {
            out.insert(strip_series_suffix(t).to_string());
        }
        tok.clear();
    };
    for ch in text.chars() {
        if ch.is_ascii_alphanumeric() || ch == '_' || ch == ':' {
            tok.push(ch);
        } else {
            flush(&mut tok, &mut out);
        }
    }
    flush(&mut tok, &mut out);
    // A token with upper-case letters is prose, not a metric name.
    out.retain(|n| {
        n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == ':')
    });
    out
}

/// Store metrics that only the Redis store exports (this hubgate runs the in-memory store);
/// tests/it/redis_store.rs checks that a Redis replica exports them.
const REDIS_STORE_ONLY: [&str; 6] = [
    "hubgate_store_lag_seconds",
    "hubgate_store_master_changes_total",
    "hubgate_store_resyncs_total",
    "hubgate_store_changes_applied_total",
    "hubgate_store_write_errors_total",
    "hubgate_store_propagation_seconds",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_in_alerts_and_dashboard_is_exported() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let alerts = std::fs::read_to_string(root.join("config/prometheus/alerts.yml")).unwrap();
    let dashboard =
        std::fs::read_to_string(root.join("config/grafana/hubgate-dashboard.json")).unwrap();
    let from_alerts = referenced_metrics(&alerts);
    let from_dashboard = referenced_metrics(&dashboard);
    assert!(from_alerts.len() >= 5, "alerts: {from_alerts:?}");
    assert!(from_dashboard.len() >= 10, "dashboard: {from_dashboard:?}");

    // With [auth.hub-grants] too, so that its metrics are exported (no hub listens at port
    // 9: they are exported all the same).
    let toml = auth_toml("[server]\naccess-log = \"json\"\n")
        + "\n[auth.hub-grants]\nhub-api-url = \"http://127.0.0.1:9/hub/api\"\ntoken-file = \"{dir}/hub-token\"\n";
    let p = start(Some(&toml), |d| {
        write_jwks(d);
        d.write("hub-token", "t");
    });
    let hg = &p.hg;
    wait_healthy(hg);
    let echo = Backend::echo();
    let ws = WsBackend::echo();
    hg.add_route_json("/hub", &route_json(&echo.url(), json!({"hub": true})));
    hg.add_route_json(
        "/user/alice",
        &route_json(&echo.url(), json!({"user": "alice"})),
    );
    hg.add_route_json(
        "/open/svc",
        &route_json(&echo.url(), json!({"service": "svc"})),
    );
    hg.add_route("/open/ws", &ws.url());
    hg.add_route("/open/dead", &dead_url());
    // Traffic of every kind: web 2xx (hub, service), 5xx, 404, denial, websocket, API.
    assert_status(&hg.get("/hub/login"), 200, "public hub page");
    assert_status(&hg.get("/open/svc/x"), 200, "public service");
    assert_status(&hg.get("/open/dead/x"), 503, "dead target");
    assert_status(&hg.get("/user/alice/x"), 401, "denied");
    let (mut c, _) = ws_connect(hg.port, "/open/ws/socket", &[])
        .await
        .expect("public websocket");
    c.send(Message::Text("hello".into())).await.unwrap();
    assert_eq!(ws_recv_text(&mut c, T).await.as_deref(), Some("hello"));
    assert_status(&hg.api_get("/api/routes"), 200, "API");
    assert_status(&hg.api_delete("/api/routes/open/dead"), 204, "API delete");

    let s = scrape(p.mport);
    let have = s.names();
    let mut missing = Vec::new();
    for (file, names) in [
        ("config/prometheus/alerts.yml", &from_alerts),
        ("config/grafana/hubgate-dashboard.json", &from_dashboard),
    ] {
        for n in names {
            if !have.contains(n) && !REDIS_STORE_ONLY.contains(&n.as_str()) {
                missing.push(format!("{n} (from {file})"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "metrics referenced but not exported:\n  {}\nexported: {:?}",
        missing.join("\n  "),
        have
    );
    eprintln!(
        "alert metrics checked: {from_alerts:?}\ndashboard metrics checked: {from_dashboard:?}"
    );
    let _ = c.close(None).await;
}
