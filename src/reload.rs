//! Reloading without a restart: on SIGHUP the configuration is rebuilt and, if it validates,
//! the TLS certificates and the `[auth]` settings are swapped in; certificate files are also
//! watched and reloaded when they change. Open connections and websockets are untouched (the
//! certificate resolver serves new handshakes only), and anything that fails to load leaves
//! the running setting in place, with a log line saying why.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use log::{error, info, warn};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::auth::Auth;
use crate::config::{self, Cli, Config, Env, FileConfig, ServerTls};
use crate::metrics::Metrics;
use crate::net::HttpClient;
use crate::proxy::Shared;
use crate::tls::ReloadableCert;

/// How often certificate files are checked for changes.
const WATCH_INTERVAL: Duration = Duration::from_secs(2);
/// How long a reloaded `[auth]` may take to fetch its keys before the reload is refused.
const AUTH_LOAD_TIMEOUT: Duration = Duration::from_secs(15);

/// What the configuration was built from, to build it again.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    pub cli: Cli,
    pub env: Env,
}

impl ConfigSource {
    /// Rebuilds the configuration from the same flags and a fresh read of the file.
    pub fn build(&self) -> Result<Config, config::ConfigError> {
        let file = match &self.cli.config {
            Some(path) => config::load_file(path)?,
            None => FileConfig::default(),
        };
        Config::build(&self.cli, &file, &self.env)
    }
}

/// A listener certificate and the settings it was loaded from.
pub struct CertSlot {
    pub name: &'static str,
    pub resolver: Arc<ReloadableCert>,
    pub tls: Mutex<ServerTls>,
    mtimes: Mutex<Vec<Option<SystemTime>>>,
}

fn mtimes(tls: &ServerTls) -> Vec<Option<SystemTime>> {
    [&tls.cert, &tls.key]
        .iter()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

impl CertSlot {
    /// A slot for a listener's certificate.
    pub fn new(name: &'static str, resolver: Arc<ReloadableCert>, tls: ServerTls) -> CertSlot {
        let m = mtimes(&tls);
        CertSlot {
            name,
            resolver,
            tls: Mutex::new(tls),
            mtimes: Mutex::new(m),
        }
    }

    fn reload(&self, tls: Option<ServerTls>, why: &str) {
        let mut current = self.tls.lock().unwrap_or_else(|e| e.into_inner());
        let tls = tls.unwrap_or_else(|| current.clone());
        match self.resolver.reload(&tls) {
            Ok(()) => {
                info!(
                    "{} certificate reloaded from {} ({why})",
                    self.name,
                    tls.cert.display()
                );
                *self.mtimes.lock().unwrap_or_else(|e| e.into_inner()) = mtimes(&tls);
                *current = tls;
            }
            Err(e) => error!(
                "{} certificate reload refused ({why}): {e}; the current certificate stays in use",
                self.name
            ),
        }
    }

    fn changed(&self) -> bool {
        let tls = self.tls.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let now = mtimes(&tls);
        let mut seen = self.mtimes.lock().unwrap_or_else(|e| e.into_inner());
        if now != *seen {
            // Both files are usually replaced together; the next check reloads once they settle.
            *seen = now;
            return true;
        }
        false
    }
}

/// The reload service.
pub struct Reloader {
    pub source: ConfigSource,
    pub shared: Arc<Shared>,
    pub http_client: Arc<HttpClient>,
    pub metrics: Arc<Metrics>,
    pub certs: Vec<CertSlot>,
}

impl Reloader {
    async fn reload_all(&self) {
        info!("SIGHUP: reloading the configuration");
        let config = match self.source.build() {
            Ok(c) => c,
            Err(e) => {
                error!("reload refused: {e}; the running configuration is kept");
                return;
            }
        };
        for slot in &self.certs {
            let tls = match slot.name {
                "proxy" => config.proxy_tls.clone(),
                _ => config.api_tls.clone(),
            };
            if tls.is_none() {
                warn!(
                    "{}: TLS cannot be turned off without a restart; reloading the current files",
                    slot.name
                );
            }
            slot.reload(tls, "SIGHUP");
        }
        if self.certs.is_empty() && (config.proxy_tls.is_some() || config.api_tls.is_some()) {
            warn!("TLS cannot be turned on without a restart");
        }
        match config.auth {
            None => {
                if self.shared.auth.load().is_some() {
                    warn!("reload: the [auth] section is gone: authentication is now OFF");
                }
                self.shared.auth.store(None);
            }
            Some(auth_config) => {
                let auth = Arc::new(
                    Auth::new(auth_config, self.http_client.clone(), &self.metrics)
                        .with_revocations(self.shared.revocations.clone()),
                );
                match tokio::time::timeout(AUTH_LOAD_TIMEOUT, auth.load_all()).await {
                    Ok(Ok(())) => {
                        auth.spawn_refresh();
                        self.shared.auth.store(Some(auth.clone()));
                        info!("[auth] reloaded: {}", auth.describe());
                    }
                    Ok(Err(e)) => error!("[auth] reload refused: cannot load keys ({e}); the running settings are kept"),
                    Err(_) => error!("[auth] reload refused: key sets did not load within {AUTH_LOAD_TIMEOUT:?}; the running settings are kept"),
                }
            }
        }
    }
}

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            error!("cannot install the SIGHUP handler: reload needs a restart");
            return;
        };
        let mut tick = tokio::time::interval(WATCH_INTERVAL);
        loop {
            tokio::select! {
                _ = hup.recv() => self.reload_all().await,
                _ = tick.tick() => {
                    for slot in &self.certs {
                        if slot.changed() {
                            slot.reload(None, "file changed");
                        }
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}
