//! Builds the pingora server from a validated [`Config`] and runs it: the public proxy, the
//! REST API, metrics and the HTTP→HTTPS redirect as services of one process, plus a
//! readiness task (startup log lines, pid file) and a drain-aware SIGTERM handler.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use http::Response;
use log::{error, info, warn};
use pingora::apps::http_app::{HttpServer, ServeHttp};
use pingora::listeners::{L4BufferSettings, ListenerConfig, TcpSocketOptions};
use pingora::protocols::http::ServerSession;
use pingora::proxy::HttpProxy;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;
use thiserror::Error;

use crate::api::RoutesApi;
use crate::auth::Auth;
use crate::config::{Config, Listen, Storage};
use crate::metrics::{Metrics, MetricsApp};
use crate::net::Connector;
use crate::net::HttpClient;
use crate::proxy::{ErrorRenderer, FrontDoor, HubProxy, Shared};
use crate::reload::{CertSlot, ConfigSource, Reloader};
use crate::routes::{MemoryStore, RedisStore, RouteStore, RouteTable};
use crate::tls::{self, TlsError};

/// Why the server could not be built.
#[derive(Debug, Error)]
pub enum StartError {
    /// TLS files could not be loaded.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// Metrics could not be registered (a bug).
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// A listener address cannot be used.
    #[error("{0}")]
    Listen(String),
    /// The route store cannot be set up.
    #[error("{0}")]
    Store(String),
}

/// A built server, ready to run.
pub struct Hubgate {
    server: Server,
    shared: Arc<Shared>,
    pid_file: Option<PathBuf>,
    grace: Duration,
}

fn listener(listen: &Listen, l4: Option<L4BufferSettings>) -> Result<ListenerConfig, StartError> {
    let cfg = match listen {
        // `::` takes IPv4 too (see `config::all_interfaces`), whatever net.ipv6.bindv6only says
        Listen::Tcp(addr) if addr.ip().is_unspecified() && addr.is_ipv6() => {
            let mut options = TcpSocketOptions::default();
            options.ipv6_only = Some(false);
            ListenerConfig::tcp(addr.to_string()).tcp_socket_options(options)
        }
        Listen::Tcp(addr) => ListenerConfig::tcp(addr.to_string()),
        Listen::Unix(path) => {
            // A socket file left by a previous run would make the bind fail.
            if path.exists() {
                std::fs::remove_file(path).map_err(|e| {
                    StartError::Listen(format!("cannot replace {}: {e}", path.display()))
                })?;
            }
            ListenerConfig::uds(path.display().to_string())
        }
    };
    Ok(match l4 {
        Some(settings) => cfg.l4_buffer(settings),
        None => cfg,
    })
}

/// Answers every request with a redirect to the HTTPS listener (`--redirect-port`).
struct RedirectApp {
    to_port: u16,
}

#[async_trait]
impl ServeHttp for RedirectApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let host = session
            .req_header()
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(|h| h.split(':').next().unwrap_or_default().to_string());
        let Some(host) = host.filter(|h| !h.is_empty()) else {
            return Response::builder()
                .status(400)
                .header(http::header::CONTENT_LENGTH, 0)
                .body(Vec::new())
                .unwrap_or_default();
        };
        let path = String::from_utf8_lossy(session.req_header().raw_path()).into_owned();
        let location = if self.to_port == 443 {
            format!("https://{host}{path}")
        } else {
            format!("https://{host}:{}{path}", self.to_port)
        };
        Response::builder()
            .status(301)
            .header(http::header::LOCATION, location)
            .header(http::header::CONTENT_LENGTH, 0)
            .body(Vec::new())
            .unwrap_or_default()
    }
}

/// Starts fetching and refreshing the identity providers' key sets.
struct KeyRefresh(Arc<Shared>);

#[async_trait]
impl BackgroundService for KeyRefresh {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if let Some(auth) = self.0.auth.load_full() {
            auth.spawn_refresh();
        }
        // Revocations expire, and replicas sharing a Redis store share them.
        self.0.revocations.start(self.0.store.revocation_store());
        let _ = shutdown.changed().await;
    }
}

/// Logs CHP's startup lines and writes the pid file once the listeners accept connections.
struct Readiness {
    checks: Vec<Listen>,
    lines: Vec<String>,
    pid_file: Option<PathBuf>,
}

async fn accepts(listen: &Listen) -> bool {
    match listen {
        Listen::Tcp(addr) => {
            let ip = if addr.ip().is_unspecified() {
                std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
            } else {
                addr.ip()
            };
            tokio::net::TcpStream::connect((ip, addr.port()))
                .await
                .is_ok()
        }
        Listen::Unix(path) => tokio::net::UnixStream::connect(path).await.is_ok(),
    }
}

#[async_trait]
impl BackgroundService for Readiness {
    async fn start(&self, _shutdown: ShutdownWatch) {
        let deadline = Instant::now() + Duration::from_secs(10);
        for listen in &self.checks {
            while !accepts(listen).await {
                if Instant::now() > deadline {
                    error!("listener {} did not come up", listen.display("http"));
                    std::process::exit(1);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        for line in &self.lines {
            info!("{line}");
        }
        if let Some(pid_file) = &self.pid_file {
            if let Err(e) = std::fs::write(pid_file, std::process::id().to_string()) {
                error!("cannot write pid file {}: {e}", pid_file.display());
            }
        }
    }
}

/// SIGTERM: stop accepting, let in-flight requests finish (up to the grace period), exit.
/// SIGINT: exit now. Both remove the pid file.
struct Signals {
    shared: Arc<Shared>,
    pid_file: Option<PathBuf>,
    grace: Duration,
}

fn remove_pid_file(pid_file: &Option<PathBuf>) {
    if let Some(p) = pid_file {
        let _ = std::fs::remove_file(p);
    }
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            error!("cannot install signal handlers");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => {
                info!("Terminated: finishing {} in-flight request(s), at most {:?}", self.shared.in_flight.count(), self.grace);
                let shared = self.shared.clone();
                let pid_file = self.pid_file.clone();
                let grace = self.grace;
                // Websockets relayed by hubgate send their clients a close frame now (kernels
                // reconnect; a reset looks like a crash), and are waited for below.
                self.shared.draining.send_replace(true);
                std::thread::spawn(move || {
                    let start = Instant::now();
                    // Let pingora stop its accept loops before sampling.
                    std::thread::sleep(Duration::from_millis(50));
                    let busy = |s: &Shared| s.in_flight.count() > 0 || s.metrics.websockets_open.get() > 0;
                    while busy(&shared) && start.elapsed() < grace {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    if shared.in_flight.count() > 0 {
                        warn!("grace period over with {} request(s) in flight", shared.in_flight.count());
                    }
                    remove_pid_file(&pid_file);
                    std::process::exit(0);
                });
                ShutdownSignal::GracefulTerminate
            }
            _ = int.recv() => {
                info!("Interrupted");
                remove_pid_file(&self.pid_file);
                std::process::exit(130);
            }
        }
    }
}

/// pingora's keep-alive timeout is in whole seconds: round `--keep-alive-timeout` up, so an
/// idle client connection is never closed before the configured time (a balancer in front
/// expects it to stay open that long; closing early gives its users 502s).
fn keepalive_secs(keep_alive: Duration) -> u64 {
    let secs = keep_alive.as_secs() + u64::from(keep_alive.subsec_nanos() > 0);
    secs.max(1)
}

impl Hubgate {
    /// Builds every service from the configuration. Nothing binds until [`Hubgate::run`].
    pub fn build(config: Config, source: ConfigSource) -> Result<Hubgate, StartError> {
        let mut server = pingora_server(&config);
        let store = route_store(&config, &mut server)?;
        let metrics = metrics(store.as_ref())?;
        let (shared, idp_client) = shared_state(&config, &store, &metrics)?;
        seed_default_route(&config, store.table());

        let mut ready = Readiness {
            checks: vec![config.proxy_listen.clone(), config.api_listen.clone()],
            lines: startup_lines(&config, store.as_ref(), shared.auth.load_full().as_deref()),
            pid_file: config.pid_file.clone(),
        };
        // Certificates of the TLS listeners, for the reloader to swap on SIGHUP.
        let mut certs = Vec::new();
        server.add_service(proxy_service(
            &server, &config, &shared, &metrics, &mut certs,
        )?);
        server.add_service(api_service(
            &config, &shared, &metrics, &mut certs, &mut ready,
        )?);
        if let Some(listen) = &config.metrics_listen {
            server.add_service(metrics_service(listen, &metrics, &mut ready)?);
        }
        if let Some((port, to)) = config.redirect {
            server.add_service(redirect_service(port, to, &mut ready)?);
        }
        if let Some(target) = &config.default_target {
            ready.lines.push(format!("Route added / -> {target}"));
        }

        server.add_service(background_service("auth keys", KeyRefresh(shared.clone())));
        server.add_service(background_service(
            "reload",
            Reloader {
                source,
                shared: shared.clone(),
                http_client: idp_client,
                metrics: metrics.clone(),
                certs,
            },
        ));
        server.add_service(background_service("readiness", ready));

        Ok(Hubgate {
            server,
            shared,
            pid_file: config.pid_file.clone(),
            grace: config.shutdown_grace,
        })
    }

    /// Runs until SIGTERM/SIGINT; exits the process.
    pub fn run(self) -> ! {
        let signals = Signals {
            shared: self.shared.clone(),
            pid_file: self.pid_file.clone(),
            grace: self.grace,
        };
        self.server.run(RunArgs {
            shutdown_signal: Box::new(signals),
        });
        remove_pid_file(&self.pid_file);
        std::process::exit(0);
    }
}

fn pingora_server(config: &Config) -> Server {
    let conf = ServerConf {
        threads: config.threads,
        grace_period_seconds: Some(config.shutdown_grace.as_secs()),
        graceful_shutdown_timeout_seconds: Some(1),
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    server
}

/// The route store; a Redis store also gets its sync task added to `server`.
fn route_store(config: &Config, server: &mut Server) -> Result<Arc<dyn RouteStore>, StartError> {
    match &config.storage {
        Storage::Memory => Ok(Arc::new(MemoryStore::new())),
        Storage::Redis(settings) => {
            // The shared store writes --default-target itself, once it has loaded the table.
            let redis = RedisStore::new(settings.clone(), config.default_target.clone())
                .map_err(StartError::Store)?;
            server.add_service(background_service("route store", redis.sync_service()));
            Ok(Arc::new(redis))
        }
    }
}

/// The metrics registry, with the store's own collectors.
fn metrics(store: &dyn RouteStore) -> Result<Arc<Metrics>, StartError> {
    let metrics = Arc::new(Metrics::new(store.table().clone())?);
    for c in store.collectors()? {
        metrics.register(c)?;
    }
    Ok(metrics)
}

/// The state every proxied request reads, and the client for the identity providers.
fn shared_state(
    config: &Config,
    store: &Arc<dyn RouteStore>,
    metrics: &Arc<Metrics>,
) -> Result<(Arc<Shared>, Arc<HttpClient>), StartError> {
    // One DNS cache and one client TLS setup for everything hubgate connects to.
    let connector = Connector::new(
        Arc::default(),
        Arc::new(tls::client_material(&config.client_tls)?),
        config.client_tls.insecure,
    );
    let http_client = Arc::new(HttpClient::new(connector.clone()));
    let idp_client = Arc::new(HttpClient::new(connector.verifying()));
    // One revocation list for the process: every `[auth]` generation (reloads) uses it.
    let (revocations, collectors) = crate::auth::Revocations::new()?;
    for c in collectors {
        metrics.register(c)?;
    }
    let auth = config
        .auth
        .clone()
        // The identity provider is always verified: `--insecure` is about targets only.
        .map(|a| {
            Arc::new(
                Auth::new(a, idp_client.clone(), metrics).with_revocations(revocations.clone()),
            )
        });

    let shared = Arc::new(Shared {
        table: store.table().clone(),
        forwarding: config.forwarding.clone(),
        timeouts: config.timeouts.clone(),
        metrics: metrics.clone(),
        errors: ErrorRenderer::new(&config.error_pages, http_client.clone()),
        connector,
        peer_timeouts: crate::proxy::upstream_limits(&config.timeouts),
        ws_activity_on_server_frames: config.ws_activity_on_server_frames,
        listener_tls: config.proxy_tls.is_some(),
        in_flight: Default::default(),
        keepalive_secs: keepalive_secs(config.timeouts.keep_alive),
        auth: arc_swap::ArcSwapOption::new(auth),
        access_log: config.access_log,
        store: store.clone(),
        draining: tokio::sync::watch::channel(false).0,
        revocations,
    });

    let current = Arc::downgrade(&shared);
    metrics.register(Box::new(crate::auth::KeySetMetrics::new(Box::new(
        move || current.upgrade().and_then(|s| s.auth.load_full()),
    ))?))?;
    Ok((shared, idp_client))
}

/// `--default-target` as the `/` route of an in-memory table.
fn seed_default_route(config: &Config, table: &RouteTable) {
    if let (Some(target), Storage::Memory) = (&config.default_target, &config.storage) {
        let mut data = serde_json::Map::new();
        data.insert("target".into(), serde_json::Value::String(target.clone()));
        table.insert(Arc::new(crate::routes::Route::new(Arc::from("/"), data)));
    }
}

/// CHP's startup lines about the proxy; the services add their own.
fn startup_lines(config: &Config, store: &dyn RouteStore, auth: Option<&Auth>) -> Vec<String> {
    let proxy_scheme = if config.proxy_tls.is_some() {
        "https"
    } else {
        "http"
    };
    vec![
        format!(
            "hubgate {} starting; route store: {}",
            env!("CARGO_PKG_VERSION"),
            store.describe()
        ),
        format!(
            "Proxying {} to {}",
            config.proxy_listen.display(proxy_scheme),
            config.default_target.as_deref().unwrap_or("(no default)")
        ),
        match auth {
            Some(a) => a.describe(),
            None => "authentication off (no [auth] section): hubgate behaves like configurable-http-proxy".into(),
        },
    ]
}

/// The public proxy service.
fn proxy_service(
    server: &Server,
    config: &Config,
    shared: &Arc<Shared>,
    metrics: &Metrics,
    certs: &mut Vec<CertSlot>,
) -> Result<Service<FrontDoor<HttpProxy<HubProxy>>>, StartError> {
    // Public listener: no L4 read buffer, so idle websockets hold no buffer at all. The
    // write buffer stays (also with TLS): it puts a response's head and body into one
    // send; dropping it on a TLS listener cost a third send per HTTPS response and saved
    // nothing measurable per idle wss (BENCHMARKS.md).
    // The front door watches each request's head before pingora parses it: size limits,
    // the head deadline and the bound on pending connections (docs/security.md).
    let mut proxy = Service::new(
        "hubgate proxy".to_string(),
        FrontDoor::new(
            pingora::proxy::http_proxy(&server.configuration, HubProxy::new(shared.clone())),
            config.limits.clone(),
            metrics,
            config.direct_path.then(|| shared.clone()),
        ),
    );
    let public_buffers = L4BufferSettings {
        read: Some(0),
        write: None,
    };
    let mut public = listener(&config.proxy_listen, Some(public_buffers))?;
    if let Some(tls_cfg) = &config.proxy_tls {
        let (settings, resolver) = tls::listener_settings(tls_cfg)?;
        public = public.tls(settings);
        certs.push(CertSlot::new("proxy", resolver, tls_cfg.clone()));
    }
    proxy.add_listener(public);
    proxy.threads = Some(config.threads);
    Ok(proxy)
}

/// The REST API service.
fn api_service(
    config: &Config,
    shared: &Arc<Shared>,
    metrics: &Arc<Metrics>,
    certs: &mut Vec<CertSlot>,
    ready: &mut Readiness,
) -> Result<Service<HttpServer<RoutesApi>>, StartError> {
    if config.auth_token.is_none() {
        warn!("REST API is not authenticated.");
    }
    let api = RoutesApi::new(
        shared.store.clone(),
        config.auth_token.clone(),
        config.api_max_body,
        config.forwarding.host_routing,
        metrics.clone(),
    )
    .with_revocations(shared.revocations.clone());
    let mut api_service = Service::new("hubgate api".to_string(), HttpServer::new_app(api));
    let mut api_listener = listener(&config.api_listen, None)?;
    if let Some(tls_cfg) = &config.api_tls {
        let (settings, resolver) = tls::listener_settings(tls_cfg)?;
        api_listener = api_listener.tls(settings);
        certs.push(CertSlot::new("api", resolver, tls_cfg.clone()));
    }
    api_service.add_listener(api_listener);
    api_service.threads = Some(1);
    let api_scheme = if config.api_tls.is_some() {
        "https"
    } else {
        "http"
    };
    ready.lines.push(format!(
        "Proxy API at {}/api/routes",
        config.api_listen.display(api_scheme)
    ));
    Ok(api_service)
}

/// The Prometheus metrics service.
fn metrics_service(
    listen: &Listen,
    metrics: &Arc<Metrics>,
    ready: &mut Readiness,
) -> Result<Service<HttpServer<MetricsApp>>, StartError> {
    let mut svc = Service::new(
        "hubgate metrics".to_string(),
        HttpServer::new_app(MetricsApp::new(metrics.clone())),
    );
    svc.add_listener(listener(listen, None)?);
    svc.threads = Some(1);
    ready.lines.push(format!(
        "Serve metrics at {}/metrics",
        listen.display("http")
    ));
    ready.checks.push(listen.clone());
    Ok(svc)
}

/// The HTTP → HTTPS redirect service (`--redirect-port`).
fn redirect_service(
    port: u16,
    to: u16,
    ready: &mut Readiness,
) -> Result<Service<HttpServer<RedirectApp>>, StartError> {
    let listen = Listen::Tcp(std::net::SocketAddr::new(
        crate::config::all_interfaces(),
        port,
    ));
    let mut svc = Service::new(
        "hubgate redirect".to_string(),
        HttpServer::new_app(RedirectApp { to_port: to }),
    );
    svc.add_listener(listener(&listen, None)?);
    svc.threads = Some(1);
    ready.lines.push(format!(
        "Added HTTP to HTTPS redirection from {port} to {to}"
    ));
    ready.checks.push(listen);
    Ok(svc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_alive_is_rounded_up_to_whole_seconds() {
        let ms = Duration::from_millis;
        assert_eq!(keepalive_secs(ms(5000)), 5);
        assert_eq!(keepalive_secs(ms(1500)), 2);
        assert_eq!(keepalive_secs(ms(61_001)), 62);
        assert_eq!(keepalive_secs(ms(1)), 1);
        assert_eq!(keepalive_secs(ms(0)), 1);
    }
}
