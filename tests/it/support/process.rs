//! Spawning the real hubgate binary.

use super::client::{Conn, Req, Response};
use super::{free_port, wait_until, TOKEN};
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How long a freshly spawned proxy may take to accept on all its listeners.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// The binary under test: `$HUBGATE_BIN` if set (e.g. CHP's
/// `node_modules/.bin/configurable-http-proxy` to check the suite against ground
/// truth), else the hubgate binary cargo built for this test run.
pub fn hubgate_bin() -> PathBuf {
    match std::env::var_os("HUBGATE_BIN") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_hubgate")),
    }
}

/// True when the suite runs against real CHP (`$HUBGATE_BIN` pointing at it).
pub fn against_chp() -> bool {
    hubgate_bin()
        .to_string_lossy()
        .contains("configurable-http-proxy")
}

type Buf = Arc<Mutex<Vec<u8>>>;

fn pump(mut r: impl Read + Send + 'static, buf: Buf, echo: Option<&'static str>) {
    thread::spawn(move || {
        let mut b = [0u8; 16384];
        loop {
            match r.read(&mut b) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if let Some(tag) = echo {
                        eprint!("[{tag}] {}", String::from_utf8_lossy(&b[..n]));
                    }
                    buf.lock().unwrap().extend_from_slice(&b[..n]);
                }
            }
        }
    });
}

fn echo_output() -> bool {
    std::env::var_os("HUBGATE_TEST_ECHO").is_some()
}

/// Spawns a command with piped output captured by reader threads. The child gets
/// SIGKILL if the spawning thread dies (`PR_SET_PDEATHSIG`), so a crashed or killed
/// test run leaves no proxy behind.
fn spawn_captured(cmd: &mut Command) -> (Child, Buf, Buf) {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {:?}: {e}", cmd.get_program()));
    let out: Buf = Arc::default();
    let err: Buf = Arc::default();
    let echo = echo_output();
    pump(
        child.stdout.take().unwrap(),
        out.clone(),
        echo.then_some("stdout"),
    );
    pump(
        child.stderr.take().unwrap(),
        err.clone(),
        echo.then_some("stderr"),
    );
    (child, out, err)
}

fn send_signal(child: &Child, sig: libc::c_int) {
    unsafe {
        libc::kill(child.id() as libc::pid_t, sig);
    }
}

/// Waits for `child` to exit, up to `timeout`.
fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// Result of running the binary to completion.
#[derive(Debug)]
pub struct CliOutput {
    /// `None` if it had to be killed at the deadline.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    pub fn success(&self) -> bool {
        self.status.map(|s| s.success()).unwrap_or(false)
    }
    pub fn failed_cleanly(&self) -> bool {
        matches!(self.status, Some(s) if !s.success() && s.code().is_some())
    }
}

/// Runs the binary with exactly `args` (no implicit listen flags) until it exits,
/// killing it after `timeout`.
pub fn run_cli(args: &[&str], env: &[(&str, &str)], timeout: Duration) -> CliOutput {
    let mut cmd = Command::new(hubgate_bin());
    cmd.args(args).env_remove("CONFIGPROXY_AUTH_TOKEN");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let (mut child, out, err) = spawn_captured(&mut cmd);
    let status = wait_child(&mut child, timeout);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    // Let the reader threads drain the pipes.
    thread::sleep(Duration::from_millis(50));
    let stdout = String::from_utf8_lossy(&out.lock().unwrap()).into_owned();
    let stderr = String::from_utf8_lossy(&err.lock().unwrap()).into_owned();
    CliOutput {
        status,
        stdout,
        stderr,
    }
}

/// Builder for a [`Hubgate`] process.
#[derive(Clone)]
pub struct HubgateBuilder {
    args: Vec<String>,
    env: Vec<(String, String)>,
    token: Option<String>,
    tcp_proxy: bool,
    tcp_api: bool,
    proxy_socket: Option<PathBuf>,
    api_socket: Option<PathBuf>,
    wait_tcp: Vec<u16>,
    wait_unix: Vec<PathBuf>,
    ready_timeout: Duration,
    fixed_port: Option<u16>,
    implicit_api_port: Option<u16>,
}

impl Default for HubgateBuilder {
    fn default() -> Self {
        HubgateBuilder {
            args: vec![],
            env: vec![],
            token: Some(TOKEN.to_string()),
            tcp_proxy: true,
            tcp_api: true,
            proxy_socket: None,
            api_socket: None,
            wait_tcp: vec![],
            wait_unix: vec![],
            ready_timeout: READY_TIMEOUT,
            fixed_port: None,
            implicit_api_port: None,
        }
    }
}

impl HubgateBuilder {
    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }

    pub fn args<S: AsRef<str>>(mut self, args: &[S]) -> Self {
        self.args
            .extend(args.iter().map(|s| s.as_ref().to_string()));
        self
    }

    /// Sets an environment variable. `CONFIGPROXY_AUTH_TOKEN` here replaces the
    /// default token (and is what the `api_*` helpers send).
    pub fn env(mut self, k: &str, v: &str) -> Self {
        if k == "CONFIGPROXY_AUTH_TOKEN" {
            self.token = Some(v.to_string());
        } else {
            self.env.push((k.to_string(), v.to_string()));
        }
        self
    }

    pub fn envs(mut self, env: &[(&str, &str)]) -> Self {
        for (k, v) in env {
            self = self.env(k, v);
        }
        self
    }

    pub fn token(mut self, t: &str) -> Self {
        self.token = Some(t.to_string());
        self
    }

    /// Leaves `CONFIGPROXY_AUTH_TOKEN` unset: the API is open.
    pub fn no_token(mut self) -> Self {
        self.token = None;
        self
    }

    /// Public listener on a unix socket (`--socket`) instead of `--ip/--port`.
    pub fn proxy_socket(mut self, path: &Path) -> Self {
        self.tcp_proxy = false;
        self.proxy_socket = Some(path.to_path_buf());
        self
    }

    /// API listener on a unix socket (`--api-socket`) instead of `--api-ip/--api-port`.
    pub fn api_socket(mut self, path: &Path) -> Self {
        self.tcp_api = false;
        self.api_socket = Some(path.to_path_buf());
        self
    }

    /// Use this public port instead of a fresh one.
    pub fn port(mut self, p: u16) -> Self {
        self.fixed_port = Some(p);
        self
    }

    /// Don't pass `--api-ip/--api-port`; expect the API on 127.0.0.1:`api_port`
    /// anyway (CHP's `--port + 1` default).
    pub fn implicit_api_port(mut self, api_port: u16) -> Self {
        self.tcp_api = false;
        self.implicit_api_port = Some(api_port);
        self
    }

    /// Also wait for this TCP port (e.g. `--redirect-port`, `--metrics-port`).
    pub fn wait_port(mut self, p: u16) -> Self {
        self.wait_tcp.push(p);
        self
    }

    pub fn wait_socket(mut self, p: &Path) -> Self {
        self.wait_unix.push(p.to_path_buf());
        self
    }

    pub fn ready_timeout(mut self, d: Duration) -> Self {
        self.ready_timeout = d;
        self
    }

    /// Spawns without waiting for readiness.
    pub fn spawn(&self) -> Hubgate {
        let port = if self.tcp_proxy {
            self.fixed_port.unwrap_or_else(free_port)
        } else {
            0
        };
        let api_port = if self.tcp_api {
            free_port()
        } else {
            self.implicit_api_port.unwrap_or(0)
        };
        let mut cmd = Command::new(hubgate_bin());
        if self.tcp_proxy {
            cmd.args(["--ip", "127.0.0.1", "--port", &port.to_string()]);
        }
        if let Some(s) = &self.proxy_socket {
            cmd.arg("--socket").arg(s);
        }
        if self.tcp_api {
            cmd.args(["--api-ip", "127.0.0.1", "--api-port", &api_port.to_string()]);
        }
        if let Some(s) = &self.api_socket {
            cmd.arg("--api-socket").arg(s);
        }
        cmd.args(&self.args);
        cmd.env_remove("CONFIGPROXY_AUTH_TOKEN");
        if let Some(t) = &self.token {
            cmd.env("CONFIGPROXY_AUTH_TOKEN", t);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let (child, stdout, stderr) = spawn_captured(&mut cmd);
        Hubgate {
            child: Some(child),
            exit: None,
            port,
            api_port,
            token: self.token.clone(),
            proxy_socket: self.proxy_socket.clone(),
            api_socket: self.api_socket.clone(),
            stdout,
            stderr,
        }
    }

    /// Spawns and waits until every listener accepts a connection. Retries with
    /// fresh ports if the process died of a port clash; panics with the captured
    /// output otherwise.
    pub fn start(&self) -> Hubgate {
        for attempt in 0..3 {
            let mut hg = self.spawn();
            let mut tcp = self.wait_tcp.clone();
            if self.tcp_proxy {
                tcp.push(hg.port);
            }
            if self.tcp_api || self.implicit_api_port.is_some() {
                tcp.push(hg.api_port);
            }
            let mut unix = self.wait_unix.clone();
            unix.extend(self.proxy_socket.iter().cloned());
            unix.extend(self.api_socket.iter().cloned());
            match hg.wait_ready(&tcp, &unix, self.ready_timeout) {
                Ok(()) => return hg,
                Err(why) => {
                    let out = hg.output();
                    let clash = out.contains("in use") || out.contains("AddrInUse");
                    if clash && attempt < 2 && self.fixed_port.is_none() {
                        continue;
                    }
                    panic!(
                        "hubgate not ready: {why}\nargs: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                        self.args,
                        hg.stdout(),
                        hg.stderr()
                    );
                }
            }
        }
        unreachable!()
    }
}

/// A running hubgate process. Killed (SIGTERM, then SIGKILL) on drop.
pub struct Hubgate {
    child: Option<Child>,
    exit: Option<ExitStatus>,
    /// Public port (0 with `--socket`).
    pub port: u16,
    /// API port (0 with `--api-socket`).
    pub api_port: u16,
    /// Token the `api_*` helpers send (`None`: no Authorization header).
    pub token: Option<String>,
    pub proxy_socket: Option<PathBuf>,
    pub api_socket: Option<PathBuf>,
    stdout: Buf,
    stderr: Buf,
}

impl Hubgate {
    pub fn builder() -> HubgateBuilder {
        HubgateBuilder::default()
    }

    /// `--ip 127.0.0.1 --port P --api-ip 127.0.0.1 --api-port A` + `args`, token
    /// "secret" unless `env` sets `CONFIGPROXY_AUTH_TOKEN`; waits until ready.
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Hubgate {
        HubgateBuilder::default().args(args).envs(env).start()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    fn wait_ready(
        &mut self,
        tcp: &[u16],
        unix: &[PathBuf],
        timeout: Duration,
    ) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_wait() {
                return Err(format!("process exited early with {st}"));
            }
            let tcp_ok = tcp.iter().all(|p| {
                let addr: SocketAddr = ([127, 0, 0, 1], *p).into();
                TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            });
            let unix_ok = unix.iter().all(|p| UnixStream::connect(p).is_ok());
            if tcp_ok && unix_ok {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "listeners {tcp:?} {unix:?} not accepting after {timeout:?}"
                ));
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Exit status if the process has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    self.exit = Some(st);
                }
            }
        }
        self.exit
    }

    pub fn is_running(&mut self) -> bool {
        self.try_wait().is_none()
    }

    pub fn signal(&self, sig: libc::c_int) {
        if let Some(c) = self.child.as_ref() {
            send_signal(c, sig);
        }
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.exit.is_none() {
            if let Some(c) = self.child.as_mut() {
                self.exit = wait_child(c, timeout);
            }
        }
        self.exit
    }

    /// SIGTERM, then the exit status; panics (after SIGKILL) if the process is
    /// still running after `timeout`.
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(st) = self.try_wait() {
            return st;
        }
        self.signal(libc::SIGTERM);
        match self.wait_exit(timeout) {
            Some(st) => st,
            None => {
                if let Some(c) = self.child.as_mut() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                panic!(
                    "hubgate did not exit within {timeout:?} of SIGTERM\n--- output ---\n{}",
                    self.output()
                );
            }
        }
    }

    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// stdout followed by stderr.
    pub fn output(&self) -> String {
        format!("{}{}", self.stdout(), self.stderr())
    }

    /// Waits until `needle` appears in stdout (or, with `any_stream`, in either).
    pub fn wait_for_stdout(&self, needle: &str, timeout: Duration) -> bool {
        wait_until(timeout, || self.stdout().contains(needle))
    }

    pub fn wait_for_output(&self, needle: &str, timeout: Duration) -> bool {
        wait_until(timeout, || self.output().contains(needle))
    }

    // ---- public listener ----------------------------------------------------

    /// A connection to the public listener (TCP or `--socket`).
    pub fn proxy_conn(&self) -> Conn {
        match &self.proxy_socket {
            Some(p) => Conn::unix(p).expect("connect proxy socket"),
            None => Conn::tcp(self.port).expect("connect proxy port"),
        }
    }

    /// One request on a fresh connection to the public listener.
    pub fn request(&self, req: &Req) -> Response {
        let mut c = self.proxy_conn();
        c.request(req)
            .unwrap_or_else(|e| panic!("proxy request {} {} failed: {e}", req.method, req.target))
    }

    pub fn get(&self, path: &str) -> Response {
        self.request(&Req::get(path))
    }

    // ---- API listener -------------------------------------------------------

    pub fn api_conn(&self) -> Conn {
        match &self.api_socket {
            Some(p) => Conn::unix(p).expect("connect API socket"),
            None => Conn::tcp(self.api_port).expect("connect API port"),
        }
    }

    /// Adds `Authorization: token <t>` when a token is configured.
    pub fn authorize(&self, req: Req) -> Req {
        match &self.token {
            Some(t) if !t.is_empty() => req.header("Authorization", &format!("token {t}")),
            _ => req,
        }
    }

    /// Sends `req` to the API as is (no Authorization added).
    pub fn api_raw(&self, req: &Req) -> Response {
        let mut c = self.api_conn();
        c.request(req)
            .unwrap_or_else(|e| panic!("API request {} {} failed: {e}", req.method, req.target))
    }

    /// `req` with the token, on a fresh API connection.
    pub fn api(&self, req: Req) -> Response {
        let req = self.authorize(req);
        self.api_raw(&req)
    }

    /// `GET <path>` on the API with the token (`path` is the full path, e.g.
    /// `/api/routes/user/alice`).
    pub fn api_get(&self, path: &str) -> Response {
        self.api(Req::get(path))
    }

    pub fn api_post(&self, path: &str, body: &str) -> Response {
        self.api(Req::new("POST", path).body(body.as_bytes()))
    }

    pub fn api_delete(&self, path: &str) -> Response {
        self.api(Req::new("DELETE", path))
    }

    /// POSTs `{"target": target}` to `/api/routes<key>`; asserts 201.
    pub fn add_route(&self, key: &str, target: &str) {
        let body = serde_json::json!({ "target": target }).to_string();
        self.add_route_json(key, &body);
    }

    /// POSTs a raw JSON body to `/api/routes<key>`; asserts 201.
    pub fn add_route_json(&self, key: &str, body: &str) {
        let r = self.api_post(&format!("/api/routes{key}"), body);
        assert_eq!(
            r.status,
            201,
            "POST /api/routes{key} {body}: {}",
            r.describe()
        );
    }

    pub fn delete_route(&self, key: &str) {
        let r = self.api_delete(&format!("/api/routes{key}"));
        assert_eq!(r.status, 204, "DELETE /api/routes{key}: {}", r.describe());
    }

    /// `GET /api/routes<key>`: the route's JSON, or None on 404 (the root route
    /// is read from the whole table).
    pub fn route(&self, key: &str) -> Option<serde_json::Value> {
        if key.is_empty() || key == "/" {
            // `/api/routes/` lists every route; the root comes from the table.
            return self.routes().get("/").cloned();
        }
        let r = self.api_get(&format!("/api/routes{key}"));
        match r.status {
            200 => Some(r.json()),
            404 => None,
            _ => panic!("GET /api/routes{key}: {}", r.describe()),
        }
    }

    /// The whole table from `GET /api/routes`.
    pub fn routes(&self) -> serde_json::Map<String, serde_json::Value> {
        let r = self.api_get("/api/routes");
        assert_eq!(r.status, 200, "GET /api/routes: {}", r.describe());
        match r.json() {
            serde_json::Value::Object(m) => m,
            other => panic!("GET /api/routes is not an object: {other}"),
        }
    }

    /// The route's `last_activity` string.
    pub fn last_activity(&self, key: &str) -> String {
        let v = self
            .route(key)
            .unwrap_or_else(|| panic!("route {key} missing"));
        v["last_activity"]
            .as_str()
            .unwrap_or_else(|| panic!("route {key} has no last_activity string: {v}"))
            .to_string()
    }
}

impl Drop for Hubgate {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(None) = child.try_wait() {
                send_signal(&child, libc::SIGTERM);
                if wait_child(&mut child, Duration::from_millis(500)).is_none() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
    }
}
