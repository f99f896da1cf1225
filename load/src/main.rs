//! hubgate-load: a small load generator and echo backend for benchmarking hubgate (or any
//! HTTP/websocket reverse proxy, e.g. in front of JupyterHub).
//!
//! ```text
//! hubgate-load http URL [-c 64] [-d 10s | -n 100000] [--rate 5000]   keep-alive GETs
//! hubgate-load ws-echo URL [-c 64] [-s 128] [--rate 10] [-d 10s]     websocket round trips
//! hubgate-load ws-hold URL [-c 5000] [--in-flight 256] [--hold 60s]  many idle websockets
//! hubgate-load echo-server [--listen 127.0.0.1:9100] [--tls-cert C --tls-key K]  HTTP + websocket echo backend
//! hubgate-load api-fill URL -n 10000 --token T [--prefix /user/bench-]  route POSTs, one connection
//! hubgate-load api-churn URL --rate 1000 -d 10s --token T              route adds/deletes at a rate
//! hubgate-load hub URL -u 50 --ramp 60s --session 5m [--proxy-pid P]   simulated JupyterHub users
//! ```
//!
//! Progress goes to stderr once a second; the summary is a table on stdout and, with
//! `--json FILE`, a JSON document. `--watch NAME=PID` samples that process tree's CPU time and
//! RSS from /proc during the measured window (e.g. the proxy under test).

mod api;
mod conn;
mod hist;
mod http;
mod hub;
mod report;
mod server;
mod ws;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "hubgate-load",
    version,
    about = "Load generator and echo backend for benchmarking hubgate and other HTTP/websocket proxies"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Keep-alive HTTP/1.1 requests: closed loop (-c connections as fast as answered) or
    /// fixed rate (--rate, open loop; latency counted from each request's intended send time).
    Http(HttpArgs),
    /// Websocket sessions sending a message and waiting for its echo, as fast as echoed or at
    /// --rate messages/s per connection; reports round-trip latency.
    WsEcho(WsEchoArgs),
    /// Open many websockets (with --in-flight handshakes at a time), echo once on each, and hold
    /// them idle for --hold or until --stop-file exists; reports opened/failed counts.
    WsHold(WsHoldArgs),
    /// HTTP + websocket echo backend: 100-byte body, 64 KiB for paths ending in /64k, websocket
    /// echo on Upgrade. Runs until SIGINT/SIGTERM (or --max-seconds).
    EchoServer(EchoServerArgs),
    /// Add N routes through the proxy's REST API (CHP's `POST /api/routes/<path>`, JupyterHub's
    /// body and `Authorization: token T`), one after the other over ONE keep-alive connection;
    /// reports the total time and the latency of each POST. URL is the API's base
    /// (http://127.0.0.1:8001).
    ApiFill(ApiFillArgs),
    /// Route writes at a fixed rate through the REST API: each connection adds a route and
    /// deletes it again, alternately; latency from each write's intended send time. Reports the
    /// achieved rate, errors, and POST/DELETE latency.
    ApiChurn(ApiChurnArgs),
    /// Simulated users against a JupyterHub through its proxy: log in, start a server, open
    /// JupyterLab, start a kernel, execute code on its websocket at a pace while holding idle
    /// websockets, stop. Logins spread over --ramp; per-stage times and failures.
    Hub(HubArgs),
}

#[derive(Args, Clone)]
struct Common {
    /// Target URL (http:// or https://; ws:// or wss:// for websockets)
    url: String,
    /// Extra request header "Name: value" (repeatable)
    #[arg(short = 'H', long = "header")]
    header: Vec<String>,
    /// Send "Authorization: Bearer TOKEN" ("Authorization: token TOKEN" in the api-* modes,
    /// as JupyterHub sends it to the proxy's API). Also read from HUBGATE_LOAD_TOKEN, which
    /// keeps the token out of the process list (command lines are world-readable; the
    /// environment is not)
    #[arg(long, env = "HUBGATE_LOAD_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Connect / request / handshake timeout
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
    /// PEM file with the CA(s) or self-signed certificate to trust for https/wss
    #[arg(long)]
    ca: Option<String>,
    /// Do not verify the server certificate (https/wss)
    #[arg(long)]
    insecure: bool,
    /// Runtime worker threads (1 = a single-threaded runtime; fine on a pinned core)
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Write the summary as JSON to FILE
    #[arg(long, value_name = "FILE")]
    json: Option<String>,
    /// No once-a-second progress line on stderr
    #[arg(long)]
    no_progress: bool,
    /// Sample CPU time and RSS of process PID and its children during the run, reported
    /// under NAME (repeatable), e.g. --watch proxy=1234
    #[arg(long, value_name = "NAME=PID", value_parser = parse_watch)]
    watch: Vec<(String, u32)>,
}

#[derive(Args)]
struct HttpArgs {
    #[command(flatten)]
    common: Common,
    /// Connections (each keeps one request in flight)
    #[arg(short, long, default_value_t = 64)]
    connections: u64,
    /// Run time (default 10s unless -n is given)
    #[arg(short, long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Stop after this many requests
    #[arg(short = 'n', long)]
    requests: Option<u64>,
    /// Fixed total rate in requests/s, spread over the connections (open loop)
    #[arg(short, long)]
    rate: Option<f64>,
    /// Request method (GET, HEAD, ...); no request body is sent
    #[arg(long, default_value = "GET")]
    method: String,
}

#[derive(Args)]
struct WsEchoArgs {
    #[command(flatten)]
    common: Common,
    /// Websocket connections
    #[arg(short, long, default_value_t = 64)]
    connections: u64,
    /// Message size in bytes
    #[arg(short, long, default_value_t = 128)]
    size: usize,
    /// Messages per second per connection (default: the next as soon as the echo is back)
    #[arg(short, long)]
    rate: Option<f64>,
    /// Run time (default 10s unless -n is given)
    #[arg(short, long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Stop after this many round trips in total
    #[arg(short = 'n', long)]
    messages: Option<u64>,
    /// Send text frames instead of binary
    #[arg(long)]
    text: bool,
}

#[derive(Args)]
struct WsHoldArgs {
    #[command(flatten)]
    common: Common,
    /// Websockets to open and hold
    #[arg(short, long, default_value_t = 1000)]
    connections: u64,
    /// Handshakes in flight while opening
    #[arg(short = 'k', long, default_value_t = 256)]
    in_flight: usize,
    /// Longest hold once all are open
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    hold: Duration,
    /// End the hold early when this file exists (it is removed at start)
    #[arg(long, value_name = "FILE")]
    stop_file: Option<String>,
    /// Written (a JSON line with opened/failed counts) once every websocket is open or failed
    #[arg(long, value_name = "FILE")]
    ready_file: Option<String>,
    /// Size of the one echo message on each websocket
    #[arg(short, long, default_value_t = 16)]
    size: usize,
}

#[derive(Args)]
struct EchoServerArgs {
    /// Address to listen on (port 0 picks a free port; see --port-file)
    #[arg(long, default_value = "127.0.0.1:9100")]
    listen: String,
    /// Write the bound port to FILE
    #[arg(long, value_name = "FILE")]
    port_file: Option<String>,
    /// Runtime worker threads (1 = single-threaded)
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Exit after this many seconds
    #[arg(long)]
    max_seconds: Option<u64>,
    /// Serve TLS with this PEM certificate chain (needs --tls-key): an `https://` backend
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<String>,
    /// PEM private key for --tls-cert
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<String>,
}

#[derive(Args)]
struct ApiArgs {
    #[command(flatten)]
    common: Common,
    /// Route keys are PREFIX followed by a name (a number for api-fill)
    #[arg(long, default_value = "/user/bench-")]
    prefix: String,
    /// The target of every route added (a backend URL; the API does not check it)
    #[arg(long, default_value = "http://127.0.0.1:9100")]
    target: String,
}

#[derive(Args)]
struct ApiFillArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// Routes to add (or delete)
    #[arg(short = 'n', long, default_value_t = 10_000)]
    routes: u64,
    /// Number of the first route (PREFIX{first} .. PREFIX{first+n-1})
    #[arg(long, default_value_t = 0)]
    first: u64,
    /// DELETE the routes instead of adding them
    #[arg(long)]
    delete: bool,
    /// Stop after this long even if not all routes are done
    #[arg(short, long, value_parser = parse_duration)]
    duration: Option<Duration>,
}

#[derive(Args)]
struct ApiChurnArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// Route writes per second, all connections together (half adds, half deletes)
    #[arg(short, long, default_value_t = 1000.0)]
    rate: f64,
    /// Run time
    #[arg(short, long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Connections (each keeps one write in flight)
    #[arg(short, long, default_value_t = 2)]
    connections: u64,
}

#[derive(Args)]
struct HubArgs {
    /// The hub's public URL (the proxy's address, with the hub's base URL if it has one),
    /// e.g. https://hub.example.org/ or http://127.0.0.1:8000/
    url: String,
    /// Simulated users (names PREFIX1 … PREFIXN; with --api-tokens, the file's first N)
    #[arg(short = 'u', long, default_value_t = 10)]
    users: usize,
    /// User names are this prefix and a number
    #[arg(long, default_value = "load-user-")]
    user_prefix: String,
    /// Password for the hub's login form (any works with the DummyAuthenticator). Also read
    /// from HUBGATE_LOAD_PASSWORD
    #[arg(
        long,
        env = "HUBGATE_LOAD_PASSWORD",
        hide_env_values = true,
        default_value = "hubgate-load"
    )]
    password: String,
    /// Hubs with an external login: a file of "NAME TOKEN" lines (hub API tokens, sent as
    /// `Authorization: token …` instead of the login form)
    #[arg(long, value_name = "FILE", conflicts_with = "bearer_file")]
    api_tokens: Option<String>,
    /// An authenticating proxy in front of the hub (hubgate's [auth]): a file of "NAME TOKEN"
    /// lines; each user sends its token as `Authorization: Bearer …` on every request and
    /// websocket, and logs in at the hub's form as well
    #[arg(long, value_name = "FILE")]
    bearer_file: Option<String>,
    /// Logins are spread evenly over this time
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    ramp: Duration,
    /// How long each user executes code, from its first kernel reply
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    session: Duration,
    /// Time between executions on a user's kernel
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    exec_interval: Duration,
    /// Code each execution runs
    #[arg(long, default_value = "print(6*7)")]
    code: String,
    /// Expected stdout of --code (an execution printing anything else fails); "" to not check
    #[arg(long, default_value = "42")]
    expect_output: String,
    /// Idle websockets per user, held open for the session as other browser tabs hold them
    #[arg(long, default_value_t = 2)]
    idle_ws: usize,
    /// Path (under /user/NAME/) the idle websockets open
    #[arg(long, default_value = "api/events/subscribe")]
    idle_ws_path: String,
    /// Longest wait for a server to start
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    spawn_timeout: Duration,
    /// Longest wait for the kernel websocket's handshake (answered once the kernel is up)
    /// and for one execution
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    kernel_timeout: Duration,
    /// Longest wait for a server to stop
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    stop_timeout: Duration,
    /// Leave the servers running at the end
    #[arg(long)]
    keep_servers: bool,
    /// The proxy's pid: its (and its children's) CPU time and RSS during the run, from /proc
    #[arg(long, value_name = "PID")]
    proxy_pid: Option<u32>,
    /// Connect / request / websocket handshake timeout
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    timeout: Duration,
    /// PEM file with the CA(s) to trust for https (default: the system's CA bundle)
    #[arg(long)]
    ca: Option<String>,
    /// Do not verify the server certificate (https)
    #[arg(long)]
    insecure: bool,
    /// Runtime worker threads
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Write the summary as JSON to FILE
    #[arg(long, value_name = "FILE")]
    json: Option<String>,
    /// No once-a-second progress line on stderr
    #[arg(long)]
    no_progress: bool,
}

impl ApiArgs {
    fn common(&self) -> Result<api::ApiCommon, String> {
        let c = api::ApiCommon {
            prefix: self.prefix.clone(),
            target: self.target.clone(),
            token: self.common.token.clone(),
            headers: self.common.header.clone(),
        };
        api::check_common(&c)?;
        Ok(c)
    }
}

/// What every load mode needs besides its own options.
pub struct RunOpts {
    pub progress: bool,
    pub watch: Vec<(String, u32)>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("bad duration {s:?} (e.g. 10, 10s, 500ms, 2m)"))?;
    if !(v.is_finite() && v >= 0.0) {
        return Err(format!("bad duration {s:?}"));
    }
    Ok(Duration::from_secs_f64(v * mult))
}

fn parse_watch(s: &str) -> Result<(String, u32), String> {
    let (name, pid) = s.split_once('=').ok_or("expected NAME=PID")?;
    let pid: u32 = pid.parse().map_err(|_| format!("bad pid in {s:?}"))?;
    if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
        return Err(format!("no process {pid}"));
    }
    Ok((name.to_string(), pid))
}

/// Raise the soft open-files limit to the hard limit (thousands of sockets).
fn raise_nofile() {
    // SAFETY: plain libc calls on a local struct.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    raise_nofile();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hubgate-load: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), String> {
    let threads = match &cli.cmd {
        Cmd::Http(a) => a.common.threads,
        Cmd::WsEcho(a) => a.common.threads,
        Cmd::WsHold(a) => a.common.threads,
        Cmd::EchoServer(a) => a.threads,
        Cmd::ApiFill(a) => a.api.common.threads,
        Cmd::ApiChurn(a) => a.api.common.threads,
        Cmd::Hub(a) => a.threads,
    };
    let rt = runtime(threads).map_err(|e| e.to_string())?;
    let res = rt.block_on(async move {
        let (summary, json) = match cli.cmd {
            Cmd::EchoServer(a) => {
                return server::run(server::ServerOpts {
                    listen: a.listen,
                    port_file: a.port_file,
                    max_seconds: a.max_seconds,
                    tls: a.tls_cert.zip(a.tls_key),
                })
                .await
            }
            Cmd::Hub(a) => return run_hub(a).await,
            Cmd::Http(a) => {
                let (c, ro) = prepare(&a.common, ("http", "https")).await?;
                if a.connections == 0 {
                    return Err("--connections must be at least 1".into());
                }
                let pace = match a.rate {
                    Some(r) if r > 0.0 => http::Pace::Rate(r),
                    Some(_) => return Err("--rate must be positive".into()),
                    None => http::Pace::Closed,
                };
                let o = http::HttpOpts {
                    connections: a.connections,
                    duration: default_duration(a.duration, a.requests),
                    requests: a.requests,
                    pace,
                    method: a.method,
                    headers: a.common.header.clone(),
                    token: a.common.token.clone(),
                };
                (http::run(c, o, &ro).await?, a.common.json)
            }
            Cmd::WsEcho(a) => {
                let (c, ro) = prepare(&a.common, ("ws", "wss")).await?;
                if a.connections == 0 {
                    return Err("--connections must be at least 1".into());
                }
                if a.rate.is_some_and(|r| r <= 0.0) {
                    return Err("--rate must be positive".into());
                }
                let o = ws::EchoOpts {
                    connections: a.connections,
                    duration: default_duration(a.duration, a.messages),
                    messages: a.messages,
                    rate: a.rate,
                    common: ws::WsCommon {
                        headers: a.common.header.clone(),
                        token: a.common.token.clone(),
                        size: a.size,
                        text: a.text,
                    },
                };
                (ws::run_echo(c, o, &ro).await?, a.common.json)
            }
            Cmd::WsHold(a) => {
                let (c, ro) = prepare(&a.common, ("ws", "wss")).await?;
                let o = ws::HoldOpts {
                    connections: a.connections,
                    in_flight: a.in_flight,
                    hold: a.hold,
                    stop_file: a.stop_file,
                    ready_file: a.ready_file,
                    common: ws::WsCommon {
                        headers: a.common.header.clone(),
                        token: a.common.token.clone(),
                        size: a.size,
                        text: false,
                    },
                };
                (ws::run_hold(c, o, &ro).await?, a.common.json)
            }
            Cmd::ApiFill(a) => {
                let common = a.api.common()?;
                let (c, ro) = prepare(&a.api.common, ("http", "https")).await?;
                let o = api::FillOpts {
                    routes: a.routes,
                    first: a.first,
                    delete: a.delete,
                    max_time: a.duration,
                    common,
                };
                (api::run_fill(c, o, &ro).await?, a.api.common.json)
            }
            Cmd::ApiChurn(a) => {
                let common = a.api.common()?;
                let (c, ro) = prepare(&a.api.common, ("http", "https")).await?;
                if a.connections == 0 {
                    return Err("--connections must be at least 1".into());
                }
                if !(a.rate.is_finite() && a.rate > 0.0) {
                    return Err("--rate must be positive".into());
                }
                let o = api::ChurnOpts {
                    rate: a.rate,
                    duration: a.duration,
                    connections: a.connections,
                    common,
                };
                (api::run_churn(c, o, &ro).await?, a.api.common.json)
            }
        };
        summary.emit(json.as_deref())
    });
    // Don't wait for stray tasks (e.g. connections still closing).
    rt.shutdown_timeout(Duration::from_millis(200));
    res
}

fn default_duration(d: Option<Duration>, n: Option<u64>) -> Option<Duration> {
    match (d, n) {
        (None, None) => Some(Duration::from_secs(10)),
        (d, _) => d,
    }
}

async fn prepare(c: &Common, schemes: (&str, &str)) -> Result<(conn::Connector, RunOpts), String> {
    let target = conn::Target::parse(&c.url, schemes).await?;
    let connector = conn::Connector::new(target, c.ca.as_deref(), c.insecure, c.timeout)?;
    Ok((
        connector,
        RunOpts {
            progress: !c.no_progress,
            watch: c.watch.clone(),
        },
    ))
}

async fn run_hub(a: HubArgs) -> Result<(), String> {
    let target = conn::Target::parse(&a.url, ("http", "https")).await?;
    let mut base = target
        .path
        .split(['?', '#'])
        .next()
        .unwrap_or("/")
        .to_string();
    if !base.ends_with('/') {
        base.push('/');
    }
    let ca = match (&a.ca, target.tls && !a.insecure) {
        (Some(c), _) => Some(c.clone()),
        (None, true) => Some(hub::system_ca_bundle()?),
        (None, false) => None,
    };
    let url = target.url.clone();
    let connector = conn::Connector::new(target, ca.as_deref(), a.insecure, a.timeout)?;
    if a.users == 0 {
        return Err("--users must be at least 1".into());
    }
    if a.exec_interval.is_zero() {
        return Err("--exec-interval must be positive".into());
    }
    let bearers = match &a.bearer_file {
        Some(f) => Some(hub::read_token_file(f).map_err(|e| format!("--bearer-file {e}"))?),
        None => None,
    };
    let (login, mut users) = match &a.api_tokens {
        Some(f) => {
            let t = hub::read_token_file(f).map_err(|e| format!("--api-tokens {e}"))?;
            if t.len() < a.users {
                return Err(format!(
                    "--api-tokens {f}: {} users, --users asks for {}",
                    t.len(),
                    a.users
                ));
            }
            let users = t
                .into_iter()
                .take(a.users)
                .map(|(name, tok)| hub::User {
                    name,
                    api_token: Some(tok),
                    bearer: None,
                })
                .collect();
            (hub::Login::ApiToken, users)
        }
        None => {
            let users: Vec<hub::User> = (1..=a.users)
                .map(|i| hub::User {
                    name: format!("{}{i}", a.user_prefix),
                    api_token: None,
                    bearer: None,
                })
                .collect();
            (
                hub::Login::Form {
                    password: a.password.clone(),
                },
                users,
            )
        }
    };
    if let Some(b) = bearers {
        // The users are the bearer file's (their names must match the tokens' users).
        if b.len() < a.users {
            return Err(format!(
                "--bearer-file: {} users, --users asks for {}",
                b.len(),
                a.users
            ));
        }
        users = b
            .into_iter()
            .take(a.users)
            .map(|(name, tok)| hub::User {
                name,
                api_token: None,
                bearer: Some(tok),
            })
            .collect();
    }
    let expect_output = (!a.expect_output.is_empty()).then(|| a.expect_output.clone());
    let o = hub::HubOpts {
        base,
        users,
        login,
        ramp: a.ramp,
        session: a.session,
        exec_interval: a.exec_interval,
        code: a.code.clone(),
        expect_output,
        idle_ws: a.idle_ws,
        idle_ws_path: a.idle_ws_path.trim_start_matches('/').to_string(),
        spawn_timeout: a.spawn_timeout,
        kernel_timeout: a.kernel_timeout,
        stop_timeout: a.stop_timeout,
        keep_servers: a.keep_servers,
        progress: !a.no_progress,
        proxy_pid: a.proxy_pid,
    };
    let mut summary = hub::run(connector, o).await?;
    summary.url = url;
    for (k, v) in [
        ("ramp_s", serde_json::json!(a.ramp.as_secs_f64())),
        ("session_s", serde_json::json!(a.session.as_secs_f64())),
        (
            "exec_interval_s",
            serde_json::json!(a.exec_interval.as_secs_f64()),
        ),
        ("idle_ws_per_user", serde_json::json!(a.idle_ws)),
        (
            "login",
            serde_json::json!(if a.api_tokens.is_some() {
                "api-token"
            } else {
                "form"
            }),
        ),
        ("bearer", serde_json::json!(a.bearer_file.is_some())),
    ] {
        summary.settings.insert(k.to_string(), v);
    }
    summary.emit(a.json.as_deref())
}
