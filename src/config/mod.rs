//! Configuration: command line (CHP's flags) over the TOML file over defaults, validated
//! into one internal [`Config`] before anything binds.

pub mod auth;
mod cli;
mod file;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use cli::Cli;
pub use file::FileConfig;
use http::{HeaderName, HeaderValue};
use thiserror::Error;

use crate::net::Target;

/// A configuration that cannot be used; the message names the key and what is allowed.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The config file cannot be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The config file is not valid TOML for hubgate.
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// A value is not allowed.
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
    /// A flag hubgate does not implement.
    #[error("{key} is not supported by hubgate: {reason}")]
    Unsupported { key: String, reason: String },
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        message: message.into(),
    }
}

/// Where a listener listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A unix socket path.
    Unix(PathBuf),
}

impl Listen {
    /// The listener as a URL-ish string for logs (`http://127.0.0.1:8000`).
    pub fn display(&self, scheme: &str) -> String {
        match self {
            // CHP's spelling for all interfaces
            Listen::Tcp(a) if a.ip().is_unspecified() => format!("{scheme}://*:{}", a.port()),
            Listen::Tcp(a) => format!("{scheme}://{a}"),
            Listen::Unix(p) => format!("{scheme}+unix://{}", p.display()),
        }
    }
}

/// TLS on a listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTls {
    /// Certificate chain (PEM).
    pub cert: PathBuf,
    /// Private key (PEM, optionally encrypted with the passphrase).
    pub key: PathBuf,
    /// Passphrase for an encrypted key.
    pub key_passphrase: Option<String>,
    /// CA for client certificates.
    pub client_ca: Option<PathBuf>,
    /// Ask clients for a certificate.
    pub request_cert: bool,
    /// Refuse clients without a valid certificate.
    pub reject_unauthorized: bool,
}

/// TLS toward https targets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTls {
    /// Client certificate (PEM).
    pub cert: Option<PathBuf>,
    /// Client key (PEM).
    pub key: Option<PathBuf>,
    /// CA to verify targets with (instead of the system roots).
    pub ca: Option<PathBuf>,
    /// Skip verification of target certificates.
    pub insecure: bool,
}

/// How proxy errors are rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorPages {
    /// `GET {url}/{code}?url=…` on this server (JupyterHub's `/hub/error`).
    Target(String),
    /// `{code}.html` / `error.html` from this directory.
    Path(PathBuf),
    /// hubgate's built-in pages.
    Builtin,
}

/// How requests are rewritten on their way upstream and back.
#[derive(Debug, Clone)]
pub struct Forwarding {
    pub x_forward: bool,
    pub prepend_path: bool,
    pub include_prefix: bool,
    pub change_origin: bool,
    pub auto_rewrite: bool,
    pub protocol_rewrite: Option<String>,
    pub custom_headers: Vec<(HeaderName, HeaderValue)>,
    pub host_routing: bool,
}

/// Timeouts of the public side and of upstream connections.
#[derive(Debug, Clone)]
pub struct Timeouts {
    /// `--timeout`: idle limit on the incoming socket of web requests.
    pub downstream: Option<Duration>,
    /// `--proxy-timeout`: idle limit on the upstream side of web requests.
    pub upstream: Option<Duration>,
    /// How long a connect to a target may take before the request gets a 503.
    pub connect: Duration,
    /// Keep-alive idle timeout of the public listener.
    pub keep_alive: Duration,
}

/// The limits of a client connection's head phase (`[limits]`), enforced by the public
/// listener's front door before pingora parses the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Longest request line (method, target, version), in bytes: 414 above.
    pub max_request_line: usize,
    /// Longest head (request line and header fields), in bytes: 431 above.
    pub max_head: usize,
    /// Time a client has to send a complete head: 408 after it.
    pub head_timeout: Duration,
    /// `--timeout`: a client silent this long during the head is disconnected.
    pub idle: Option<Duration>,
    /// Connections that may be in their head phase at once; past it the oldest gets 408.
    pub max_pending: usize,
}

impl Default for Limits {
    /// node's (so CHP's) 16 KiB head, nginx's 8 KiB request line, node's 60 s head deadline.
    fn default() -> Self {
        Limits {
            max_request_line: 8 * 1024,
            max_head: 16 * 1024,
            head_timeout: Duration::from_secs(60),
            idle: None,
            max_pending: 1024,
        }
    }
}

/// The validated configuration everything else is built from.
#[derive(Debug, Clone)]
pub struct Config {
    pub proxy_listen: Listen,
    pub proxy_tls: Option<ServerTls>,
    pub api_listen: Listen,
    pub api_tls: Option<ServerTls>,
    /// API token; `None` leaves the API unauthenticated (as CHP does, with a warning).
    pub auth_token: Option<String>,
    pub api_max_body: usize,
    pub metrics_listen: Option<Listen>,
    /// `(listen port, redirect-to port)`.
    pub redirect: Option<(u16, u16)>,
    pub default_target: Option<String>,
    pub error_pages: ErrorPages,
    pub forwarding: Forwarding,
    pub timeouts: Timeouts,
    /// The public listener's head-phase limits.
    pub limits: Limits,
    pub client_tls: ClientTls,
    pub ws_activity_on_server_frames: bool,
    /// Plain GET/HEAD requests go through hubgate's direct path (`--no-direct-path`,
    /// `[proxy] direct-path`).
    pub direct_path: bool,
    pub log_level: log::LevelFilter,
    pub pid_file: Option<PathBuf>,
    pub shutdown_grace: Duration,
    pub threads: usize,
    /// Token authentication (`[auth]`); `None`: behave exactly like CHP.
    pub auth: Option<auth::AuthConfig>,
    /// Per-request access log format.
    pub access_log: AccessLog,
    /// Where the route table is kept.
    pub storage: Storage,
}

/// Where the route table is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Storage {
    /// In this process only (CHP's default `MemoryStore`).
    Memory,
    /// In Redis, shared by every replica that uses the same server and key prefix.
    Redis(RedisStorage),
}

// The store owns its settings type and its URL forms; the configuration only builds it.
pub use crate::routes::RedisStorage;

fn check_storage(
    key: &str,
    backend: Option<&str>,
    s: &file::StorageSection,
) -> Result<Storage, ConfigError> {
    let backend = match backend {
        None | Some("memory") => return Ok(Storage::Memory),
        Some(b) => b,
    };
    if !RedisStorage::is_redis_url(backend) {
        return Err(ConfigError::Unsupported {
            key: key.to_string(),
            reason: format!(
                "{backend:?}: CHP's node storage modules cannot be loaded by hubgate; use `memory` (the default), redis://[user:password@]host:port/db or redis+sentinel://host1,host2/master-name"
            ),
        });
    }
    RedisStorage::check_url(backend).map_err(|e| invalid(key, e.to_string()))?;
    let key_prefix = s
        .key_prefix
        .clone()
        .unwrap_or_else(|| "hubgate".to_string());
    if key_prefix.is_empty()
        || key_prefix.len() > 100
        || !key_prefix
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'{' && b != b'}')
    {
        return Err(invalid(
            "storage.key-prefix",
            format!(
                "{key_prefix:?}: use 1 to 100 printable ASCII characters without spaces or braces"
            ),
        ));
    }
    let flush_ms = s.activity_flush_ms.unwrap_or(2_000);
    if !(50..=60_000).contains(&flush_ms) {
        return Err(invalid(
            "storage.activity-flush-ms",
            "must be between 50 and 60000",
        ));
    }
    Ok(Storage::Redis(RedisStorage {
        url: backend.to_string(),
        key_prefix,
        activity_flush: Duration::from_millis(flush_ms),
    }))
}

/// The access log's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLog {
    Off,
    Combined,
    Json,
}

/// Environment values the configuration reads.
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub auth_token: Option<String>,
    pub ssl_key_passphrase: Option<String>,
    pub api_ssl_key_passphrase: Option<String>,
}

impl Env {
    /// Reads CHP's variables from the process environment.
    pub fn from_process() -> Env {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Env {
            auth_token: var("CONFIGPROXY_AUTH_TOKEN"),
            ssl_key_passphrase: var("CONFIGPROXY_SSL_KEY_PASSPHRASE"),
            api_ssl_key_passphrase: var("CONFIGPROXY_API_SSL_KEY_PASSPHRASE"),
        }
    }
}

/// Reads and parses a config file.
pub fn load_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string().trim_end().to_string(),
    })
}

/// The flag name when the command line gave a value, else the file key.
fn name<'a, T>(cli: &Option<T>, flag: &'a str, key: &'a str) -> &'a str {
    if cli.is_some() {
        flag
    } else {
        key
    }
}

/// "All interfaces", as CHP (node) binds them: `::`, which on Linux also accepts IPv4
/// (hubgate's listeners clear `IPV6_V6ONLY` on it), or `0.0.0.0` where the host has no IPv6
/// (a kernel booted with `ipv6.disable=1`): probed once by binding a throwaway socket.
pub fn all_interfaces() -> IpAddr {
    static ALL: std::sync::OnceLock<IpAddr> = std::sync::OnceLock::new();
    *ALL.get_or_init(|| {
        let v6 = IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED);
        match std::net::TcpListener::bind((v6, 0)) {
            Ok(_) => v6,
            Err(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        }
    })
}

/// Resolves a listen host (`''`/`*` = all interfaces, an IP, or a host name).
fn resolve_ip(
    key: &str,
    ip: Option<&str>,
    default: IpAddr,
    port: u16,
) -> Result<SocketAddr, ConfigError> {
    let ip = match ip {
        None => return Ok(SocketAddr::new(default, port)),
        Some("") | Some("*") => return Ok(SocketAddr::new(all_interfaces(), port)),
        Some(ip) => ip.trim_start_matches('[').trim_end_matches(']'),
    };
    if let Ok(addr) = ip.parse::<IpAddr>() {
        return Ok(SocketAddr::new(addr, port));
    }
    let mut addrs: Vec<SocketAddr> = (ip, port)
        .to_socket_addrs()
        .map_err(|e| {
            invalid(
                key,
                format!("cannot resolve {ip:?} to an address ({e}); give an IP address"),
            )
        })?
        .collect();
    addrs.sort_by_key(|a| !a.is_ipv4());
    addrs.into_iter().next().ok_or_else(|| {
        invalid(
            key,
            format!("{ip:?} resolves to no address; give an IP address"),
        )
    })
}

/// CHP's `--ssl-protocol` picks one protocol method; rustls always offers TLS 1.2 and 1.3.
fn check_protocol(key: &str, v: Option<&str>) -> Result<(), ConfigError> {
    match v {
        None | Some("TLS") | Some("SSLv23") | Some("TLS_method") => Ok(()),
        Some(other) => Err(ConfigError::Unsupported {
            key: key.to_string(),
            reason: format!(
                "{other:?}: hubgate always offers TLS 1.2 and 1.3 and nothing older; remove the flag or pass TLS"
            ),
        }),
    }
}

fn check_readable(key: &str, path: &Path) -> Result<(), ConfigError> {
    std::fs::metadata(path)
        .map(|_| ())
        .map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())))
}

/// Parses `name:value` the way CHP does (split at the first colon, both sides trimmed).
pub fn parse_custom_header(raw: &str) -> Result<(HeaderName, HeaderValue), ConfigError> {
    let no_colon = || ConfigError::Invalid {
        key: "--custom-header".into(),
        message: format!("A colon was expected in custom header: {raw}"),
    };
    let (name, value) = raw.split_once(':').ok_or_else(no_colon)?;
    if name.trim().is_empty() {
        return Err(no_colon());
    }
    let name = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| {
        invalid(
            "--custom-header",
            format!("{:?} is not a valid header name", name.trim()),
        )
    })?;
    let value = HeaderValue::from_str(value.trim()).map_err(|_| {
        invalid(
            "--custom-header",
            format!("{:?} is not a valid header value", value.trim()),
        )
    })?;
    Ok((name, value))
}

fn parse_log_level(key: &str, v: &str) -> Result<log::LevelFilter, ConfigError> {
    match v.to_ascii_lowercase().as_str() {
        "debug" => Ok(log::LevelFilter::Debug),
        "info" => Ok(log::LevelFilter::Info),
        "warn" | "warning" => Ok(log::LevelFilter::Warn),
        "error" => Ok(log::LevelFilter::Error),
        "trace" => Ok(log::LevelFilter::Trace),
        other => Err(invalid(
            key,
            format!("{other:?} is not a log level; use debug, info, warn or error"),
        )),
    }
}

fn check_target(key: &str, url: &str) -> Result<(), ConfigError> {
    Target::parse(url).map(|_| ()).map_err(|e| {
        invalid(
            key,
            format!("{e}; expected a URL like http://127.0.0.1:8081"),
        )
    })
}

impl Config {
    /// Builds the validated configuration from the command line, the file and the environment.
    pub fn build(cli: &Cli, file: &FileConfig, env: &Env) -> Result<Config, ConfigError> {
        // The steps run in this order so that, of several mistakes, the same one is reported
        // first every time.
        reject_unsupported_flags(cli)?;
        let storage = storage(cli, file)?;
        let (proxy_listen, api_listen) = listeners(cli, file)?;
        let (proxy_tls, api_tls) = listener_tls(cli, file, env)?;
        let auth_token = api_token(file, env)?;
        let metrics_listen = metrics_listen(cli, file)?;
        let redirect = redirect(cli, file, &proxy_listen, proxy_tls.is_some())?;
        let default_target = default_target(cli, file)?;
        let error_pages = error_pages(cli, file)?;
        let forwarding = forwarding(cli, file)?;
        let timeouts = timeouts(cli, file)?;
        let limits = limits(file, &timeouts)?;
        let client_tls = client_tls(cli, file)?;
        let server = server_settings(cli, file)?;
        let api_max_body = api_max_body(file)?;
        let auth = file.auth.as_ref().map(|a| a.validate()).transpose()?;
        let access_log = access_log(file)?;

        Ok(Config {
            proxy_listen,
            proxy_tls,
            api_listen,
            api_tls,
            auth_token,
            api_max_body,
            metrics_listen,
            redirect,
            default_target,
            error_pages,
            forwarding,
            timeouts,
            limits,
            client_tls,
            ws_activity_on_server_frames: file.websocket.activity_on_server_frames.unwrap_or(false),
            direct_path: !cli.no_direct_path && file.proxy.direct_path.unwrap_or(true),
            log_level: server.log_level,
            pid_file: cli
                .pid_file
                .clone()
                .or_else(|| file.server.pid_file.clone()),
            shutdown_grace: server.shutdown_grace,
            threads: server.threads,
            auth,
            storage,
            access_log,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn server_tls(
        key_name: &str,
        key: Option<PathBuf>,
        cert: Option<PathBuf>,
        ca: Option<PathBuf>,
        request_cert: bool,
        reject_unauthorized: bool,
        protocol: Option<&str>,
        passphrase: Option<String>,
    ) -> Result<Option<ServerTls>, ConfigError> {
        check_protocol("--ssl-protocol", protocol)?;
        let (key, cert) = match (key, cert) {
            (None, None) => return Ok(None),
            (Some(k), Some(c)) => (k, c),
            _ => return Err(invalid(key_name, "give both the key and the certificate")),
        };
        check_readable(key_name, &key)?;
        check_readable(key_name, &cert)?;
        if let Some(ca) = &ca {
            check_readable(key_name, ca)?;
        }
        // Without a CA no client could be verified: refuse rather than accept everyone.
        if (request_cert || reject_unauthorized) && ca.is_none() {
            return Err(invalid(
                key_name,
                "requesting or requiring client certificates needs the CA that issues them (--ssl-ca / --api-ssl-ca)",
            ));
        }
        Ok(Some(ServerTls {
            cert,
            key,
            key_passphrase: passphrase,
            client_ca: ca,
            request_cert,
            reject_unauthorized,
        }))
    }
}

/// CHP flags that configure OpenSSL knobs rustls does not have.
fn reject_unsupported_flags(cli: &Cli) -> Result<(), ConfigError> {
    for (given, key, reason) in [
        (
            cli.ssl_ciphers.is_some(),
            "--ssl-ciphers",
            "rustls only offers modern AEAD suites and cannot take an OpenSSL cipher list; remove the flag",
        ),
        (
            cli.ssl_dhparam.is_some(),
            "--ssl-dhparam",
            "rustls has no finite-field Diffie-Hellman suites, so DH parameters are never used; remove the flag",
        ),
    ] {
        if given {
            return Err(ConfigError::Unsupported {
                key: key.to_string(),
                reason: reason.to_string(),
            });
        }
    }
    Ok(())
}

/// Where the route table is kept (`--storage-backend` / `[storage]`).
fn storage(cli: &Cli, file: &FileConfig) -> Result<Storage, ConfigError> {
    check_storage(
        name(&cli.storage_backend, "--storage-backend", "storage.backend"),
        cli.storage_backend
            .as_deref()
            .or(file.storage.backend.as_deref()),
        &file.storage,
    )
}

/// The public and the API listener; the API port defaults to the public port + 1.
fn listeners(cli: &Cli, file: &FileConfig) -> Result<(Listen, Listen), ConfigError> {
    let proxy_listen = public_listen(cli, file)?;
    let api_listen = api_listen(cli, file, &proxy_listen)?;
    if let (Listen::Tcp(pa), Listen::Tcp(aa)) = (&proxy_listen, &api_listen) {
        if pa.port() == aa.port()
            && (pa.ip() == aa.ip() || pa.ip().is_unspecified() || aa.ip().is_unspecified())
        {
            return Err(invalid(
                "--api-port",
                format!(
                    "the API port {} is also the proxy port; choose another",
                    aa.port()
                ),
            ));
        }
    }
    Ok((proxy_listen, api_listen))
}

/// The public listener's port (CHP's 8000 by default).
fn public_port(cli: &Cli, file: &FileConfig) -> u16 {
    cli.port.or(file.proxy.port).unwrap_or(8000)
}

fn public_listen(cli: &Cli, file: &FileConfig) -> Result<Listen, ConfigError> {
    let p = &file.proxy;
    let socket = cli.socket.clone().or_else(|| p.socket.clone());
    if socket.is_some() && (cli.ip.is_some() || cli.port.is_some()) && cli.socket.is_none() {
        return Err(invalid(
            "proxy.socket",
            "conflicts with --ip/--port; give one or the other",
        ));
    }
    Ok(match socket {
        Some(path) => Listen::Unix(path),
        None => Listen::Tcp(resolve_ip(
            name(&cli.ip, "--ip", "proxy.ip"),
            cli.ip.as_deref().or(p.ip.as_deref()),
            all_interfaces(),
            public_port(cli, file),
        )?),
    })
}

fn api_listen(cli: &Cli, file: &FileConfig, proxy_listen: &Listen) -> Result<Listen, ConfigError> {
    let a = &file.api;
    let api_socket = cli.api_socket.clone().or_else(|| a.socket.clone());
    let api_port = cli.api_port.or(a.port).unwrap_or(match proxy_listen {
        Listen::Tcp(_) => public_port(cli, file).wrapping_add(1),
        Listen::Unix(_) => 8001,
    });
    Ok(match api_socket {
        Some(path) => Listen::Unix(path),
        None => Listen::Tcp(resolve_ip(
            name(&cli.api_ip, "--api-ip", "api.ip"),
            Some(
                cli.api_ip
                    .as_deref()
                    .or(a.ip.as_deref())
                    .unwrap_or("localhost"),
            ),
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            api_port,
        )?),
    })
}

/// TLS on the public and on the API listener.
fn listener_tls(
    cli: &Cli,
    file: &FileConfig,
    env: &Env,
) -> Result<(Option<ServerTls>, Option<ServerTls>), ConfigError> {
    let (p, a) = (&file.proxy, &file.api);
    // node's TLS server (CHP) defaults `rejectUnauthorized` to true, and CHP leaves it
    // unset without --ssl-reject-unauthorized: requesting a client certificate requires
    // one. Only the config file can make it optional (`reject-unauthorized = false`).
    let proxy_request_cert = cli.ssl_request_cert || p.tls.request_cert.unwrap_or(false);
    let api_request_cert = cli.api_ssl_request_cert || a.tls.request_cert.unwrap_or(false);
    let proxy_tls = Config::server_tls(
        "--ssl-key/--ssl-cert",
        cli.ssl_key.clone().or_else(|| p.tls.key.clone()),
        cli.ssl_cert.clone().or_else(|| p.tls.cert.clone()),
        cli.ssl_ca.clone().or_else(|| p.tls.ca.clone()),
        proxy_request_cert,
        cli.ssl_reject_unauthorized || p.tls.reject_unauthorized.unwrap_or(proxy_request_cert),
        cli.ssl_protocol.as_deref().or(p.tls.protocol.as_deref()),
        env.ssl_key_passphrase.clone(),
    )?;
    let api_tls = Config::server_tls(
        "--api-ssl-key/--api-ssl-cert",
        cli.api_ssl_key.clone().or_else(|| a.tls.key.clone()),
        cli.api_ssl_cert.clone().or_else(|| a.tls.cert.clone()),
        cli.api_ssl_ca.clone().or_else(|| a.tls.ca.clone()),
        api_request_cert,
        cli.api_ssl_reject_unauthorized || a.tls.reject_unauthorized.unwrap_or(api_request_cert),
        cli.ssl_protocol.as_deref().or(a.tls.protocol.as_deref()),
        env.api_ssl_key_passphrase.clone(),
    )?;
    Ok((proxy_tls, api_tls))
}

/// The API token: `CONFIGPROXY_AUTH_TOKEN`, else the file `api.auth-token-file` names.
fn api_token(file: &FileConfig, env: &Env) -> Result<Option<String>, ConfigError> {
    Ok(match (&env.auth_token, &file.api.auth_token_file) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(path)) => {
            let t = std::fs::read_to_string(path).map_err(|e| {
                invalid(
                    "api.auth-token-file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            Some(t.trim().to_string()).filter(|t| !t.is_empty())
        }
        (None, None) => None,
    })
}

/// The metrics listener: off unless a port or a socket is given; loopback by default.
fn metrics_listen(cli: &Cli, file: &FileConfig) -> Result<Option<Listen>, ConfigError> {
    let m = &file.metrics;
    Ok(
        match (
            cli.metrics_socket.clone().or_else(|| m.socket.clone()),
            cli.metrics_port.or(m.port),
        ) {
            (Some(path), _) => Some(Listen::Unix(path)),
            (None, Some(mport)) => Some(Listen::Tcp(resolve_ip(
                name(&cli.metrics_ip, "--metrics-ip", "metrics.ip"),
                cli.metrics_ip.as_deref().or(m.ip.as_deref()),
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                mport,
            )?)),
            (None, None) => None,
        },
    )
}

/// The http → https redirect server as `(listen port, redirect-to port)`.
fn redirect(
    cli: &Cli,
    file: &FileConfig,
    proxy_listen: &Listen,
    proxy_has_tls: bool,
) -> Result<Option<(u16, u16)>, ConfigError> {
    let p = &file.proxy;
    let Some(rp) = cli.redirect_port.or(p.redirect_port) else {
        return Ok(None);
    };
    if !proxy_has_tls {
        return Err(invalid(
            name(&cli.redirect_port, "--redirect-port", "proxy.redirect-port"),
            "needs TLS on the public listener (--ssl-key and --ssl-cert)",
        ));
    }
    let port = public_port(cli, file);
    let to = cli.redirect_to.or(p.redirect_to).unwrap_or(port);
    Ok(match proxy_listen {
        Listen::Unix(_) => None,
        Listen::Tcp(_) if port == 80 => None,
        Listen::Tcp(_) => Some((rp, to)),
    })
}

fn default_target(cli: &Cli, file: &FileConfig) -> Result<Option<String>, ConfigError> {
    let default_target = cli
        .default_target
        .clone()
        .or_else(|| file.proxy.default_target.clone());
    if let Some(t) = &default_target {
        check_target(
            name(
                &cli.default_target,
                "--default-target",
                "proxy.default-target",
            ),
            t,
        )?;
    }
    Ok(default_target)
}

/// How proxy errors are rendered: `--error-target`, `--error-path`, or the built-in pages.
fn error_pages(cli: &Cli, file: &FileConfig) -> Result<ErrorPages, ConfigError> {
    let p = &file.proxy;
    let error_target = cli.error_target.clone().or_else(|| p.error_target.clone());
    let error_path = cli.error_path.clone().or_else(|| p.error_path.clone());
    Ok(match (error_target, error_path) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "--error-target",
                "cannot be combined with --error-path; give one of them",
            ))
        }
        (Some(t), None) => {
            check_target(
                name(&cli.error_target, "--error-target", "proxy.error-target"),
                &t,
            )?;
            ErrorPages::Target(t)
        }
        (None, Some(dir)) => {
            if !dir.is_dir() {
                return Err(invalid(
                    name(&cli.error_path, "--error-path", "proxy.error-path"),
                    format!("{} is not a directory", dir.display()),
                ));
            }
            ErrorPages::Path(dir)
        }
        (None, None) => ErrorPages::Builtin,
    })
}

/// Headers added to every upstream request: the file's table first, then each
/// `--custom-header`.
fn custom_headers(
    cli: &Cli,
    file: &FileConfig,
) -> Result<Vec<(HeaderName, HeaderValue)>, ConfigError> {
    let mut custom_headers = Vec::new();
    if let Some(map) = &file.proxy.custom_headers {
        for (k, v) in map {
            custom_headers.push(parse_custom_header(&format!("{k}:{v}")).map_err(|_| {
                invalid(
                    "proxy.custom-headers",
                    format!("{k:?} = {v:?} is not a valid header"),
                )
            })?);
        }
    }
    for raw in &cli.custom_header {
        custom_headers.push(parse_custom_header(raw)?);
    }
    Ok(custom_headers)
}

/// How requests are rewritten on their way upstream and back.
fn forwarding(cli: &Cli, file: &FileConfig) -> Result<Forwarding, ConfigError> {
    let p = &file.proxy;
    let custom_headers = custom_headers(cli, file)?;
    let protocol_rewrite = cli
        .protocol_rewrite
        .clone()
        .or_else(|| p.protocol_rewrite.clone());
    if let Some(proto) = &protocol_rewrite {
        if proto.is_empty()
            || !proto
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'-' || b == b'.')
        {
            return Err(invalid(
                name(
                    &cli.protocol_rewrite,
                    "--protocol-rewrite",
                    "proxy.protocol-rewrite",
                ),
                format!("{proto:?} is not a URL scheme; use e.g. https"),
            ));
        }
    }
    Ok(Forwarding {
        x_forward: !cli.no_x_forward && p.x_forward.unwrap_or(true),
        prepend_path: !cli.no_prepend_path && p.prepend_path.unwrap_or(true),
        include_prefix: !cli.no_include_prefix && p.include_prefix.unwrap_or(true),
        change_origin: cli.change_origin || p.change_origin.unwrap_or(false),
        auto_rewrite: cli.auto_rewrite || p.auto_rewrite.unwrap_or(false),
        protocol_rewrite: protocol_rewrite.map(|s| s.trim_end_matches(':').to_string()),
        custom_headers,
        host_routing: cli.host_routing || p.host_routing.unwrap_or(false),
    })
}

/// Timeouts; `--timeout`/`--proxy-timeout` of 0 mean none, as in CHP.
fn timeouts(cli: &Cli, file: &FileConfig) -> Result<Timeouts, ConfigError> {
    let p = &file.proxy;
    let ms = |v: Option<u64>| v.filter(|&v| v > 0).map(Duration::from_millis);
    let connect_ms = p.connect_timeout_ms.unwrap_or(5_000);
    if connect_ms == 0 {
        return Err(invalid("proxy.connect-timeout-ms", "must be at least 1"));
    }
    Ok(Timeouts {
        downstream: ms(cli.timeout.or(p.timeout_ms)),
        upstream: ms(cli.proxy_timeout.or(p.proxy_timeout_ms)),
        connect: Duration::from_millis(connect_ms),
        keep_alive: Duration::from_millis(
            cli.keep_alive_timeout
                .or(p.keep_alive_timeout_ms)
                .unwrap_or(5_000),
        ),
    })
}

/// The public listener's head-phase limits (`[limits]`); `--timeout` also bounds a silent
/// client during the head.
fn limits(file: &FileConfig, timeouts: &Timeouts) -> Result<Limits, ConfigError> {
    let l = &file.limits;
    let defaults = Limits::default();
    let limits = Limits {
        max_request_line: l
            .max_request_line_bytes
            .unwrap_or(defaults.max_request_line),
        max_head: l.max_header_bytes.unwrap_or(defaults.max_head),
        head_timeout: l
            .header_timeout_ms
            .map_or(defaults.head_timeout, Duration::from_millis),
        idle: timeouts.downstream,
        max_pending: l.max_pending_connections.unwrap_or(defaults.max_pending),
    };
    for (key, value, min) in [
        ("limits.max-request-line-bytes", limits.max_request_line, 16),
        ("limits.max-header-bytes", limits.max_head, 64),
        ("limits.max-pending-connections", limits.max_pending, 1),
    ] {
        if value < min {
            return Err(invalid(key, format!("must be at least {min}")));
        }
    }
    if limits.max_request_line > limits.max_head {
        return Err(invalid(
            "limits.max-request-line-bytes",
            "must not exceed limits.max-header-bytes (the head includes the request line)",
        ));
    }
    if limits.head_timeout.is_zero() {
        return Err(invalid("limits.header-timeout-ms", "must be at least 1"));
    }
    Ok(limits)
}

/// TLS toward https targets.
fn client_tls(cli: &Cli, file: &FileConfig) -> Result<ClientTls, ConfigError> {
    let c = &file.client_tls;
    let client_tls = ClientTls {
        cert: cli.client_ssl_cert.clone().or_else(|| c.cert.clone()),
        key: cli.client_ssl_key.clone().or_else(|| c.key.clone()),
        ca: cli.client_ssl_ca.clone().or_else(|| c.ca.clone()),
        insecure: cli.insecure || file.proxy.insecure.unwrap_or(false),
    };
    if client_tls.cert.is_some() != client_tls.key.is_some() {
        return Err(invalid(
            "--client-ssl-key/--client-ssl-cert",
            "give both the client key and the client certificate, or neither",
        ));
    }
    for (key, path) in [
        ("--client-ssl-key", &client_tls.key),
        ("--client-ssl-cert", &client_tls.cert),
        ("--client-ssl-ca", &client_tls.ca),
    ] {
        if let Some(path) = path {
            check_readable(key, path)?;
        }
    }
    Ok(client_tls)
}

/// The process-wide settings of `[server]` (and `--log-level`).
struct ServerSettings {
    log_level: log::LevelFilter,
    threads: usize,
    shutdown_grace: Duration,
}

fn server_settings(cli: &Cli, file: &FileConfig) -> Result<ServerSettings, ConfigError> {
    let s = &file.server;
    let log_level = match (&cli.log_level, &s.log_level) {
        (Some(l), _) => parse_log_level("--log-level", l)?,
        (None, Some(l)) => parse_log_level("server.log-level", l)?,
        (None, None) => log::LevelFilter::Info,
    };
    let threads = s.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    if threads == 0 || threads > 1024 {
        return Err(invalid("server.threads", "must be between 1 and 1024"));
    }
    let grace = s.shutdown_grace_seconds.unwrap_or(10);
    if grace > 3600 {
        return Err(invalid(
            "server.shutdown-grace-seconds",
            "must be at most 3600",
        ));
    }
    Ok(ServerSettings {
        log_level,
        threads,
        shutdown_grace: Duration::from_secs(grace),
    })
}

/// The largest API request body accepted (10 MiB by default).
fn api_max_body(file: &FileConfig) -> Result<usize, ConfigError> {
    let api_max_body = file.api.max_body_bytes.unwrap_or(10 * 1024 * 1024);
    if api_max_body == 0 {
        return Err(invalid("api.max-body-bytes", "must be at least 1"));
    }
    Ok(api_max_body)
}

fn access_log(file: &FileConfig) -> Result<AccessLog, ConfigError> {
    match file.server.access_log.as_deref().unwrap_or("off") {
        "off" => Ok(AccessLog::Off),
        "combined" => Ok(AccessLog::Combined),
        "json" => Ok(AccessLog::Json),
        other => Err(invalid(
            "server.access-log",
            format!("{other:?}: use off, combined or json"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn build(args: &[&str]) -> Result<Config, ConfigError> {
        let mut argv = vec!["hubgate"];
        argv.extend_from_slice(args);
        let cli = Cli::try_parse_from(argv).expect("cli parses");
        Config::build(&cli, &FileConfig::default(), &Env::default())
    }

    #[test]
    fn chp_defaults() {
        let c = build(&[]).unwrap();
        assert_eq!(
            c.proxy_listen,
            Listen::Tcp(SocketAddr::new(all_interfaces(), 8000))
        );
        assert_eq!(c.api_listen, Listen::Tcp("127.0.0.1:8001".parse().unwrap()));
        assert!(c.metrics_listen.is_none());
        assert!(c.forwarding.x_forward && c.forwarding.prepend_path && c.forwarding.include_prefix);
        assert_eq!(c.timeouts.keep_alive, Duration::from_secs(5));
        assert_eq!(c.error_pages, ErrorPages::Builtin);
    }

    #[test]
    fn api_port_follows_port() {
        let c = build(&["--ip", "127.0.0.1", "--port", "9000"]).unwrap();
        assert_eq!(c.api_listen, Listen::Tcp("127.0.0.1:9001".parse().unwrap()));
    }

    #[test]
    fn metrics_default_loopback() {
        let c = build(&["--metrics-port", "9100"]).unwrap();
        assert_eq!(
            c.metrics_listen,
            Some(Listen::Tcp("127.0.0.1:9100".parse().unwrap()))
        );
    }

    #[test]
    fn custom_header_parsing() {
        let (n, v) = parse_custom_header(" k2 : host:123 ").unwrap();
        assert_eq!(n.as_str(), "k2");
        assert_eq!(v.to_str().unwrap(), "host:123");
        let err = build(&["--custom-header", "nocolon"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("A colon was expected in custom header: nocolon"),
            "{err}"
        );
    }

    #[test]
    fn unsupported_flags_fail_by_name() {
        assert!(build(&["--ssl-ciphers", "HIGH"])
            .unwrap_err()
            .to_string()
            .contains("--ssl-ciphers"));
        assert!(build(&["--storage-backend", "./redis-store"])
            .unwrap_err()
            .to_string()
            .contains("--storage-backend"));
    }

    #[test]
    fn redirect_needs_tls() {
        assert!(build(&["--redirect-port", "8080"])
            .unwrap_err()
            .to_string()
            .contains("--redirect-port"));
    }

    #[test]
    fn example_config_is_valid() {
        let file: FileConfig =
            toml::from_str(include_str!("../../config/hubgate.example.toml")).unwrap();
        let cli = Cli::try_parse_from(["hubgate"]).unwrap();
        let c = Config::build(&cli, &file, &Env::default()).unwrap();
        assert_eq!(c.api_listen, Listen::Tcp("127.0.0.1:8001".parse().unwrap()));
        assert_eq!(c.shutdown_grace, Duration::from_secs(10));
    }

    #[test]
    fn file_keys_and_overrides() {
        let file: FileConfig = toml::from_str(
            "[proxy]\nport = 9100\nx-forward = false\n[server]\nlog-level = \"debug\"\n",
        )
        .unwrap();
        let cli = Cli::try_parse_from(["hubgate", "--port", "9200"]).unwrap();
        let c = Config::build(&cli, &file, &Env::default()).unwrap();
        assert_eq!(
            c.proxy_listen,
            Listen::Tcp(SocketAddr::new(all_interfaces(), 9200))
        );
        assert!(!c.forwarding.x_forward);
        assert_eq!(c.log_level, log::LevelFilter::Debug);
        let bad = toml::from_str::<FileConfig>("[proxy]\nport = \"notanumber\"\n")
            .unwrap_err()
            .to_string();
        assert!(bad.contains("port"), "{bad}");
        let unknown = toml::from_str::<FileConfig>("[proxy]\nprot = 1\n")
            .unwrap_err()
            .to_string();
        assert!(unknown.contains("prot"), "{unknown}");
    }
    #[test]
    fn limits_have_node_like_defaults_and_bad_values_name_their_key() {
        let cli = Cli::try_parse_from(["hubgate", "--timeout", "1500"]).unwrap();
        let c = Config::build(&cli, &FileConfig::default(), &Env::default()).unwrap();
        assert_eq!(c.limits.max_head, 16 * 1024);
        assert_eq!(c.limits.max_request_line, 8 * 1024);
        assert_eq!(c.limits.head_timeout, Duration::from_secs(60));
        assert_eq!(c.limits.idle, Some(Duration::from_millis(1500)));
        for (toml, key) in [
            ("max-header-bytes = 10", "limits.max-header-bytes"),
            (
                "max-request-line-bytes = 20000",
                "limits.max-request-line-bytes",
            ),
            ("header-timeout-ms = 0", "limits.header-timeout-ms"),
            (
                "max-pending-connections = 0",
                "limits.max-pending-connections",
            ),
        ] {
            let file: FileConfig = toml::from_str(&format!("[limits]\n{toml}\n")).unwrap();
            let err = Config::build(&cli, &file, &Env::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{toml}: {err}");
        }
    }

    #[test]
    fn redis_storage_backend() {
        assert_eq!(build(&[]).unwrap().storage, Storage::Memory);
        assert_eq!(
            build(&["--storage-backend", "memory"]).unwrap().storage,
            Storage::Memory
        );
        let c = build(&["--storage-backend", "redis://127.0.0.1:6379/2"]).unwrap();
        let Storage::Redis(r) = &c.storage else {
            panic!("not redis: {:?}", c.storage)
        };
        assert_eq!(r.url, "redis://127.0.0.1:6379/2");
        assert_eq!(r.key_prefix, "hubgate");
        assert_eq!(r.activity_flush, Duration::from_secs(2));
        assert!(build(&["--storage-backend", "rediss://u:p@redis.example:6380/0"]).is_ok());
        let err = build(&["--storage-backend", "redis://127.0.0.1:6379/notadb"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--storage-backend"), "{err}");
        let err = build(&["--storage-backend", "mysql://x"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("redis://"), "{err}");
    }

    #[test]
    fn redis_storage_from_file() {
        let file: FileConfig = toml::from_str(
            "[storage]\nbackend = \"redis://h:1/0\"\nkey-prefix = \"hub-a\"\nactivity-flush-ms = 500\n",
        )
        .unwrap();
        let cli = Cli::try_parse_from(["hubgate"]).unwrap();
        let c = Config::build(&cli, &file, &Env::default()).unwrap();
        assert_eq!(
            c.storage,
            Storage::Redis(RedisStorage {
                url: "redis://h:1/0".into(),
                key_prefix: "hub-a".into(),
                activity_flush: Duration::from_millis(500),
            })
        );
        // The flag wins over the file.
        let cli = Cli::try_parse_from(["hubgate", "--storage-backend", "memory"]).unwrap();
        assert_eq!(
            Config::build(&cli, &file, &Env::default()).unwrap().storage,
            Storage::Memory
        );
        for bad in [
            "[storage]\nbackend = \"redis://h:1/0\"\nkey-prefix = \"a b\"\n",
            "[storage]\nbackend = \"redis://h:1/0\"\nactivity-flush-ms = 1\n",
        ] {
            let file: FileConfig = toml::from_str(bad).unwrap();
            let cli = Cli::try_parse_from(["hubgate"]).unwrap();
            let err = Config::build(&cli, &file, &Env::default())
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("storage."), "{err}");
        }
    }

    #[test]
    fn redis_sentinel_storage_backend() {
        let url = "redis+sentinel://:pw@127.0.0.1:26379,127.0.0.1:26380/hub?wait-replicas=1";
        let c = build(&["--storage-backend", url]).unwrap();
        let Storage::Redis(r) = &c.storage else {
            panic!("not redis: {:?}", c.storage)
        };
        assert_eq!(r.url, url);
        let err = build(&["--storage-backend", "redis+sentinel://127.0.0.1:26379"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--storage-backend"), "{err}");
        assert!(err.contains("master name"), "{err}");
    }
}
