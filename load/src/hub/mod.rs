//! `hub`: simulated users against a real JupyterHub, through whatever proxy it uses.
//!
//! Each user, starting at its point of a ramp: logs in (the hub's login form, or a hub API
//! token for hubs with an external login), starts its server (`POST
//! /hub/api/users/{name}/server`, then polls the user model until the server is ready),
//! opens JupyterLab (`/user/{name}/lab` with the OAuth round trip, then the API calls the
//! page makes first: status, kernelspecs, contents), starts a kernel, opens its
//! `channels` websocket and K idle websockets (other tabs), executes code at a pace for the
//! session's length, and stops its server. Each stage is timed; failures are counted by
//! stage and reason. The proxy's CPU and RSS come from /proc when its pid is given.

pub mod client;
pub mod kernel;
pub mod stats;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use client::{form_encode, path_escape, Client, Failure};
use stats::{Live, Stage, Stats};

use crate::conn::Connector;
use crate::report::Watcher;

/// How a simulated user logs in.
#[derive(Clone)]
pub enum Login {
    /// The hub's own login form with this password (DummyAuthenticator, PAM, LDAP, …).
    Form { password: String },
    /// A hub API token per user (`Authorization: token …`), for hubs whose login is
    /// elsewhere (OAuth): the token stands for the logged-in browser.
    ApiToken,
}

#[derive(Clone)]
pub struct User {
    pub name: String,
    /// Hub API token (Login::ApiToken).
    pub api_token: Option<String>,
    /// Bearer token for an authenticating proxy in front of the hub (hubgate's [auth]).
    pub bearer: Option<String>,
}

#[derive(Clone)]
pub struct HubOpts {
    /// The hub's public base path, ending in '/' ("/" or e.g. "/jupyter/").
    pub base: String,
    pub users: Vec<User>,
    pub login: Login,
    pub ramp: Duration,
    /// Executing time per user, from its first kernel reply.
    pub session: Duration,
    pub exec_interval: Duration,
    pub code: String,
    pub expect_output: Option<String>,
    pub idle_ws: usize,
    pub idle_ws_path: String,
    pub spawn_timeout: Duration,
    pub kernel_timeout: Duration,
    pub stop_timeout: Duration,
    pub keep_servers: bool,
    pub progress: bool,
    pub proxy_pid: Option<u32>,
}

/// "NAME TOKEN" lines of a token file (blank lines and `#` comments skipped).
pub fn read_token_file(path: &str) -> Result<Vec<(String, String)>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.split_whitespace().collect::<Vec<_>>()[..] {
            [name, token] => out.push((name.to_string(), token.to_string())),
            _ => return Err(format!("{path}:{}: expected \"NAME TOKEN\"", i + 1)),
        }
    }
    if out.is_empty() {
        return Err(format!("{path}: no \"NAME TOKEN\" lines"));
    }
    Ok(out)
}

/// The system's CA bundle, for https without --ca: $SSL_CERT_FILE, else where Debian,
/// Fedora and Alpine keep it.
pub fn system_ca_bundle() -> Result<String, String> {
    if let Ok(f) = std::env::var("SSL_CERT_FILE") {
        return Ok(f);
    }
    [
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
        "/etc/ssl/cert.pem",
    ]
    .iter()
    .find(|p| std::path::Path::new(p).is_file())
    .map(|p| p.to_string())
    .ok_or_else(|| "no system CA bundle found: give --ca FILE (or --insecure)".to_string())
}

/// Runs the simulation; the summary is printed by the caller.
pub async fn run(connector: Connector, o: HubOpts) -> Result<stats::HubSummary, String> {
    if o.users.is_empty() {
        return Err("no users to simulate".into());
    }
    let stats = Arc::new(Stats::default());
    let live = Arc::new(Live::default());
    let watch: Vec<(String, u32)> = o
        .proxy_pid
        .map(|p| ("proxy".to_string(), p))
        .into_iter()
        .collect();
    let watcher = Watcher::start(&watch);
    let start = Instant::now();
    let progress = stats::spawn_progress(live.clone(), stats.clone(), o.users.len(), o.progress);
    let n = o.users.len();
    let o = Arc::new(o);
    let mut tasks = Vec::new();
    for (i, user) in o.users.iter().cloned().enumerate() {
        let at = start
            + o.ramp.mul_f64(if n > 1 {
                i as f64 / (n - 1) as f64
            } else {
                0.0
            });
        let (o, stats, live, connector) =
            (o.clone(), stats.clone(), live.clone(), connector.clone());
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            live.started.fetch_add(1, Ordering::Relaxed);
            let ok = simulate(connector, &o, &user, &stats, &live).await;
            if ok {
                live.completed.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())?;
    }
    let elapsed = start.elapsed();
    let (mut watched, machine) = watcher.finish();
    live.stop.store(true, Ordering::Relaxed);
    if let Some(p) = progress {
        let _ = p.join();
    }
    Ok(stats.summary(
        n,
        elapsed,
        watched.remove("proxy"),
        machine,
        live.completed.load(Ordering::Relaxed),
    ))
}

/// Times `fut` and records it under `stage`; the failure reason on error.
async fn timed<T>(
    stats: &Stats,
    stage: Stage,
    fut: impl std::future::Future<Output = Result<T, Failure>>,
) -> Result<T, Failure> {
    let t0 = Instant::now();
    let r = fut.await;
    match &r {
        Ok(_) => stats.ok(stage, t0.elapsed()),
        Err(f) => stats.fail(stage, &f.0),
    }
    r
}

/// One user's whole session; true if every stage succeeded.
async fn simulate(
    connector: Connector,
    o: &HubOpts,
    user: &User,
    stats: &Stats,
    live: &Live,
) -> bool {
    let auth = match (&o.login, &user.api_token, &user.bearer) {
        (Login::ApiToken, Some(t), _) => Some(format!("token {t}")),
        (_, _, Some(b)) => Some(format!("Bearer {b}")),
        _ => None,
    };
    let mut c = Client::new(connector, auth);
    let name = path_escape(&user.name);
    let hub = format!("{}hub/", o.base);
    let home = format!("{}user/{name}/", o.base);

    if timed(stats, Stage::Login, login(&mut c, o, &hub, user))
        .await
        .is_err()
    {
        return false;
    }
    live.logged_in.fetch_add(1, Ordering::Relaxed);

    let spawned = timed(stats, Stage::Spawn, spawn(&mut c, o, &hub, &name)).await;
    let mut ok = spawned.is_ok();
    if ok {
        live.running.fetch_add(1, Ordering::Relaxed);
        ok = session(&mut c, o, user, &home, stats, live).await;
        live.running.fetch_sub(1, Ordering::Relaxed);
    }
    // Stop the server even after a failure (a spawn that timed out may still be pending).
    if !o.keep_servers
        && timed(stats, Stage::Stop, stop(&mut c, o, &hub, &name))
            .await
            .is_err()
    {
        ok = false;
    }
    ok
}

async fn login(c: &mut Client, o: &HubOpts, hub: &str, user: &User) -> Result<(), Failure> {
    match &o.login {
        Login::ApiToken => {
            let r = c
                .send("GET", &format!("{hub}api/user"), &[], None)
                .await?
                .expect(&[200])?;
            if r.json()?["name"].as_str() != Some(user.name.as_str()) {
                return Err(Failure::new("token belongs to another user"));
            }
            Ok(())
        }
        Login::Form { password } => {
            let (r, _) = c.get_following(&format!("{hub}login")).await?;
            let r = r.expect(&[200])?;
            let page = String::from_utf8_lossy(&r.body);
            let xsrf = hidden_input(&page, "_xsrf").unwrap_or_default();
            let form = format!(
                "username={}&password={}&_xsrf={}",
                form_encode(&user.name),
                form_encode(password),
                form_encode(&xsrf)
            );
            let r = c
                .send(
                    "POST",
                    &format!("{hub}login"),
                    &[],
                    Some(("application/x-www-form-urlencoded", form.into_bytes())),
                )
                .await?;
            match r.status {
                302 | 303 => Ok(()),
                // The form again: the hub rejected the name or password.
                200 => Err(Failure::new("login rejected")),
                s => Err(Failure::new(format!("status {s}"))),
            }
        }
    }
}

/// `value` of `<input name="NAME" value="…">` in a page.
fn hidden_input(page: &str, name: &str) -> Option<String> {
    let at = page.find(&format!("name=\"{name}\""))?;
    let rest = &page[at..];
    let v = rest.find("value=\"")? + 7;
    let end = rest[v..].find('"')?;
    Some(
        rest[v..v + end]
            .replace("&#34;", "\"")
            .replace("&amp;", "&"),
    )
}

/// The `X-XSRFToken` header for requests under `path` authenticated by cookie.
fn xsrf(c: &Client, path: &str) -> Vec<(&'static str, String)> {
    c.jar
        .get("_xsrf", path)
        .map(|v| vec![("X-XSRFToken", v.to_string())])
        .unwrap_or_default()
}

async fn spawn(c: &mut Client, o: &HubOpts, hub: &str, name: &str) -> Result<(), Failure> {
    let api = format!("{hub}api/users/{name}");
    let h = xsrf(c, hub);
    let r = c
        .send(
            "POST",
            &format!("{api}/server"),
            &h,
            Some(("application/json", b"{}".to_vec())),
        )
        .await?;
    match r.status {
        201 => return Ok(()),
        202 => {}
        // "already running": a server left from an earlier run; use it.
        400 if String::from_utf8_lossy(&r.body).contains("already running") => return Ok(()),
        s => return Err(Failure::new(format!("status {s}"))),
    }
    let deadline = Instant::now() + o.spawn_timeout;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if Instant::now() >= deadline {
            return Err(Failure::new("spawn timeout"));
        }
        let m = c
            .send("GET", &api, &xsrf(c, hub), None)
            .await?
            .expect(&[200])?
            .json()?;
        let server = &m["servers"][""];
        if server["ready"] == true {
            return Ok(());
        }
        if server.is_null() && m["pending"].is_null() {
            return Err(Failure::new("spawn failed"));
        }
    }
}

async fn stop(c: &mut Client, o: &HubOpts, hub: &str, name: &str) -> Result<(), Failure> {
    let api = format!("{hub}api/users/{name}");
    let h = xsrf(c, hub);
    c.send("DELETE", &format!("{api}/server"), &h, None)
        .await?
        .expect(&[202, 204, 400])?;
    let deadline = Instant::now() + o.stop_timeout;
    loop {
        let m = c
            .send("GET", &api, &xsrf(c, hub), None)
            .await?
            .expect(&[200])?
            .json()?;
        if m["servers"][""].is_null() && m["pending"].is_null() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Failure::new("stop timeout"));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// JupyterLab, a kernel, its websocket, idle tabs, and the executions.
async fn session(
    c: &mut Client,
    o: &HubOpts,
    user: &User,
    home: &str,
    stats: &Stats,
    live: &Live,
) -> bool {
    // The page (OAuth round trip with the hub on first visit) and its first API calls.
    let kernel_name = match timed(stats, Stage::Lab, lab(c, home)).await {
        Ok(k) => k,
        Err(_) => return false,
    };

    // A kernel, its channels websocket, and the first execution.
    let session_id = kernel::new_id();
    let t0 = Instant::now();
    let first = async {
        let h = xsrf(c, home);
        let body = serde_json::json!({ "name": kernel_name })
            .to_string()
            .into_bytes();
        let r = c
            .send(
                "POST",
                &format!("{home}api/kernels"),
                &h,
                Some(("application/json", body)),
            )
            .await?
            .expect(&[201])?;
        let id = r.json()?["id"]
            .as_str()
            .ok_or_else(|| Failure::new("no kernel id"))?
            .to_string();
        let mut ws = kernel::open(
            c,
            &format!("{home}api/kernels/{id}/channels?session_id={session_id}"),
            o.kernel_timeout,
        )
        .await?;
        let out =
            kernel::execute(&mut ws, &o.code, &user.name, &session_id, o.kernel_timeout).await?;
        check_output(o, &out)?;
        Ok::<_, Failure>((ws, id))
    };
    let (mut ws, kernel_id) = match first.await {
        Ok(v) => {
            stats.ok(Stage::Kernel, t0.elapsed());
            v
        }
        Err(f) => {
            stats.fail(Stage::Kernel, &f.0);
            return false;
        }
    };
    live.kernels.fetch_add(1, Ordering::Relaxed);

    // Other tabs: idle websockets held until the session ends.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut holders = Vec::new();
    for _ in 0..o.idle_ws {
        let t = Instant::now();
        match kernel::open(c, &format!("{home}{}", o.idle_ws_path), c.timeout()).await {
            Ok(ws) => {
                stats.ok(Stage::IdleWs, t.elapsed());
                live.idle_ws.fetch_add(1, Ordering::Relaxed);
                holders.push(tokio::spawn(kernel::hold(ws, stop_rx.clone())));
            }
            Err(f) => stats.fail(Stage::IdleWs, &f.0),
        }
    }

    // Executions at a pace until the session's end.
    let mut ok = true;
    let end = Instant::now() + o.session;
    let mut next = Instant::now() + o.exec_interval;
    while next < end {
        tokio::time::sleep_until(next.into()).await;
        next += o.exec_interval;
        let t = Instant::now();
        match kernel::execute(&mut ws, &o.code, &user.name, &session_id, o.kernel_timeout).await {
            Ok(out) => match check_output(o, &out) {
                Ok(()) => {
                    stats.exec(t.elapsed());
                    live.executes.fetch_add(1, Ordering::Relaxed);
                }
                Err(f) => {
                    stats.fail(Stage::Execute, &f.0);
                    ok = false;
                }
            },
            Err(f) => {
                stats.fail(Stage::Execute, &f.0);
                ok = false;
                break; // the kernel's socket is in an unknown state
            }
        }
        if next < Instant::now() {
            next = Instant::now(); // behind: no burst to catch up
        }
    }
    // The tab stays open until the session's end even when no execution is due any more.
    if ok {
        tokio::time::sleep_until(end.into()).await;
    }

    let _ = stop_tx.send(true);
    for h in holders {
        let r = h.await.unwrap_or_else(|e| Err(Failure::new(e.to_string())));
        live.idle_ws.fetch_sub(1, Ordering::Relaxed);
        if let Err(f) = r {
            stats.fail(Stage::IdleWs, &f.0);
            ok = false;
        }
    }
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        futures_util::SinkExt::close(&mut ws),
    )
    .await;
    live.kernels.fetch_sub(1, Ordering::Relaxed);
    // Shut the kernel down as closing the notebook does; stopping the server would too.
    let h = xsrf(c, home);
    let _ = c
        .send(
            "DELETE",
            &format!("{home}api/kernels/{kernel_id}"),
            &h,
            None,
        )
        .await;
    ok
}

fn check_output(o: &HubOpts, out: &str) -> Result<(), Failure> {
    match &o.expect_output {
        Some(want) if out.trim_end() != want => Err(Failure::new("unexpected output")),
        _ => Ok(()),
    }
}

/// JupyterLab's page and the first API calls it makes; the default kernel's name.
async fn lab(c: &mut Client, home: &str) -> Result<String, Failure> {
    let (r, path) = c.get_following(&format!("{home}lab")).await?;
    r.expect(&[200])?;
    if !path.starts_with(home) {
        return Err(Failure::new(format!("ended at {path}")));
    }
    c.send("GET", &format!("{home}api/status"), &[], None)
        .await?
        .expect(&[200])?;
    let specs = c
        .send("GET", &format!("{home}api/kernelspecs"), &[], None)
        .await?
        .expect(&[200])?
        .json()?;
    c.send("GET", &format!("{home}api/contents?content=1"), &[], None)
        .await?
        .expect(&[200])?;
    Ok(specs["default"].as_str().unwrap_or("python3").to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_xsrf_input() {
        let page = r#"<form><input type="hidden" name="_xsrf" value="2|ab&amp;c|d" /></form>"#;
        assert_eq!(hidden_input(page, "_xsrf").as_deref(), Some("2|ab&c|d"));
        assert_eq!(hidden_input(page, "other"), None);
    }
}
