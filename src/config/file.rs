//! The TOML config file (`--config FILE`): the external, stable shape of hubgate's settings.
//!
//! Keys are kebab-case and unknown keys are errors, so a typo is caught at startup instead
//! of being silently ignored. Everything here is optional; [`super::Config::build`] applies
//! defaults and command-line overrides and validates the result.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct FileConfig {
    /// The public listener and how requests are forwarded.
    #[serde(default)]
    pub proxy: ProxySection,
    /// The REST API listener.
    #[serde(default)]
    pub api: ApiSection,
    /// The metrics listener.
    #[serde(default)]
    pub metrics: MetricsSection,
    /// TLS toward https targets.
    #[serde(default)]
    pub client_tls: TlsSection,
    /// Websocket behaviour.
    #[serde(default)]
    pub websocket: WebsocketSection,
    /// Process-wide settings.
    #[serde(default)]
    pub server: ServerSection,
    /// Where routes are stored.
    #[serde(default)]
    pub storage: StorageSection,
    /// What a client connection may cost before it has sent a complete request head.
    #[serde(default)]
    pub limits: LimitsSection,
    /// Token authentication; absent means CHP behaviour (no authentication).
    pub auth: Option<super::auth::AuthSection>,
}

/// `[proxy]`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ProxySection {
    pub ip: Option<String>,
    pub port: Option<u16>,
    pub socket: Option<PathBuf>,
    pub default_target: Option<String>,
    pub error_target: Option<String>,
    pub error_path: Option<PathBuf>,
    pub host_routing: Option<bool>,
    pub x_forward: Option<bool>,
    pub prepend_path: Option<bool>,
    pub include_prefix: Option<bool>,
    pub change_origin: Option<bool>,
    pub auto_rewrite: Option<bool>,
    pub protocol_rewrite: Option<String>,
    /// Extra request headers to upstreams, name → value.
    pub custom_headers: Option<BTreeMap<String, String>>,
    pub insecure: Option<bool>,
    pub timeout_ms: Option<u64>,
    pub proxy_timeout_ms: Option<u64>,
    /// How long to wait for a compute node to accept a connection before answering 503.
    pub connect_timeout_ms: Option<u64>,
    pub keep_alive_timeout_ms: Option<u64>,
    /// Serve plain GET/HEAD requests on hubgate's own HTTP/1.1 path (docs/direct-path.md).
    pub direct_path: Option<bool>,
    pub redirect_port: Option<u16>,
    pub redirect_to: Option<u16>,
    /// `[proxy.tls]`: TLS on the public listener.
    #[serde(default)]
    pub tls: TlsSection,
}

/// `[api]`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ApiSection {
    pub ip: Option<String>,
    pub port: Option<u16>,
    pub socket: Option<PathBuf>,
    /// A file holding the API token (the environment's CONFIGPROXY_AUTH_TOKEN wins).
    pub auth_token_file: Option<PathBuf>,
    /// Largest accepted request body, in bytes (413 above).
    pub max_body_bytes: Option<usize>,
    /// `[api.tls]`.
    #[serde(default)]
    pub tls: TlsSection,
}

/// `[metrics]`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct MetricsSection {
    pub ip: Option<String>,
    pub port: Option<u16>,
    pub socket: Option<PathBuf>,
}

/// A TLS section (`[proxy.tls]`, `[api.tls]`, `[client-tls]`).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct TlsSection {
    pub key: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub ca: Option<PathBuf>,
    pub request_cert: Option<bool>,
    pub reject_unauthorized: Option<bool>,
    pub protocol: Option<String>,
}

/// `[websocket]`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct WebsocketSection {
    /// Count server→client frames as activity too (CHP counts only client→server).
    pub activity_on_server_frames: Option<bool>,
}

/// `[server]`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ServerSection {
    /// Worker threads for the public listener (default: number of CPUs).
    pub threads: Option<usize>,
    /// Longest time SIGTERM waits for in-flight requests before exiting.
    pub shutdown_grace_seconds: Option<u64>,
    pub pid_file: Option<PathBuf>,
    pub log_level: Option<String>,
    /// One line per request: `off` (default), `combined` or `json`.
    pub access_log: Option<String>,
}

/// `[limits]`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct LimitsSection {
    /// Longest request line in bytes (default 8192): 414 above.
    pub max_request_line_bytes: Option<usize>,
    /// Longest request head, request line included, in bytes (default 16384): 431 above.
    pub max_header_bytes: Option<usize>,
    /// Time to send a complete request head (default 60000 ms): 408 after it.
    pub header_timeout_ms: Option<u64>,
    /// Connections that may be in their head phase at once (default 1024); past it the
    /// oldest is answered 408 and closed.
    pub max_pending_connections: Option<usize>,
}

/// `[storage]`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct StorageSection {
    /// `memory` (default), or `redis://[user:password@]host:port/db` (`rediss://` for TLS)
    /// to share one route table between replicas, or `redis+sentinel://host1,host2/master`
    /// (`rediss+sentinel://` for TLS) to follow Redis Sentinel's failovers.
    pub backend: Option<String>,
    /// Redis backend: prefix of every key hubgate uses (default `hubgate`).
    pub key_prefix: Option<String>,
    /// Redis backend: how often each replica writes its routes' activity to Redis and reads
    /// the other replicas' (default 2000 ms).
    pub activity_flush_ms: Option<u64>,
}
