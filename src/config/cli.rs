//! The command line: every configurable-http-proxy 5.3 flag, same names and meanings,
//! plus hubgate's `--config` and `--check-config`.
//!
//! Values are left unset here when not given, so that the config file can supply them
//! and flags can override the file; defaults are applied in [`super::Config::build`].

use std::path::PathBuf;

use clap::{ArgAction, Parser};

/// hubgate: a drop-in replacement for configurable-http-proxy in front of JupyterHub.
#[derive(Debug, Default, Clone, Parser)]
// args_override_self: a flag given twice keeps its last value, as CHP's option parser
// (commander) does; scripts that append an override to a base command line rely on it.
#[command(name = "hubgate", version, about, long_about = None, args_override_self = true)]
pub struct Cli {
    /// hubgate's own settings (TOML); flags given on the command line override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Validate the configuration and exit (0 when valid).
    #[arg(long)]
    pub check_config: bool,

    /// Public-facing IP of the proxy (default: all interfaces).
    #[arg(long, value_name = "ip-address")]
    pub ip: Option<String>,
    /// Public-facing port of the proxy (default 8000).
    #[arg(long, value_name = "n")]
    pub port: Option<u16>,
    /// Path to a UNIX domain socket for the proxy (instead of --ip/--port).
    #[arg(long, value_name = "path", conflicts_with_all = ["ip", "port"])]
    pub socket: Option<PathBuf>,

    /// SSL key to use, if any.
    #[arg(long, value_name = "keyfile")]
    pub ssl_key: Option<PathBuf>,
    /// SSL certificate to use, if any.
    #[arg(long, value_name = "certfile")]
    pub ssl_cert: Option<PathBuf>,
    /// SSL certificate authority, for verifying client certificates.
    #[arg(long, value_name = "ca-file")]
    pub ssl_ca: Option<PathBuf>,
    /// Request a client certificate on the public listener.
    #[arg(long)]
    pub ssl_request_cert: bool,
    /// Reject clients whose certificate does not verify against --ssl-ca.
    #[arg(long)]
    pub ssl_reject_unauthorized: bool,
    /// Restrict the TLS protocol (TLSv1_2, TLSv1_3; TLS or SSLv23 for both).
    #[arg(long, value_name = "ssl-protocol")]
    pub ssl_protocol: Option<String>,
    /// OpenSSL cipher list (not supported: rustls uses its own safe list).
    #[arg(long, value_name = "cipher-suite")]
    pub ssl_ciphers: Option<String>,
    /// Allow RC4 (accepted for compatibility; has no effect, as in CHP 5).
    #[arg(long)]
    pub ssl_allow_rc4: bool,
    /// Diffie-Hellman parameters file (not supported: rustls has no DHE suites).
    #[arg(long, value_name = "dhparam-file")]
    pub ssl_dhparam: Option<PathBuf>,

    /// Inward-facing IP for API requests (default localhost).
    #[arg(long, value_name = "ip")]
    pub api_ip: Option<String>,
    /// Inward-facing port for API requests (default --port + 1).
    #[arg(long, value_name = "n")]
    pub api_port: Option<u16>,
    /// Path to a UNIX domain socket for the API (instead of --api-ip/--api-port).
    #[arg(long, value_name = "path", conflicts_with_all = ["api_ip", "api_port"])]
    pub api_socket: Option<PathBuf>,
    /// SSL key for the API.
    #[arg(long, value_name = "keyfile")]
    pub api_ssl_key: Option<PathBuf>,
    /// SSL certificate for the API.
    #[arg(long, value_name = "certfile")]
    pub api_ssl_cert: Option<PathBuf>,
    /// SSL certificate authority for the API's client certificates.
    #[arg(long, value_name = "ca-file")]
    pub api_ssl_ca: Option<PathBuf>,
    /// Request a client certificate on the API listener.
    #[arg(long)]
    pub api_ssl_request_cert: bool,
    /// Reject API clients whose certificate does not verify against --api-ssl-ca.
    #[arg(long)]
    pub api_ssl_reject_unauthorized: bool,

    /// Client key for https targets.
    #[arg(long, value_name = "keyfile")]
    pub client_ssl_key: Option<PathBuf>,
    /// Client certificate for https targets.
    #[arg(long, value_name = "certfile")]
    pub client_ssl_cert: Option<PathBuf>,
    /// CA used to verify https targets.
    #[arg(long, value_name = "ca-file")]
    pub client_ssl_ca: Option<PathBuf>,
    /// Accepted for compatibility (JupyterHub passes it); meaningless for outgoing requests.
    #[arg(long)]
    pub client_ssl_request_cert: bool,
    /// Accepted for compatibility (JupyterHub passes it); meaningless for outgoing requests.
    #[arg(long)]
    pub client_ssl_reject_unauthorized: bool,

    /// Default proxy target (a route for `/`).
    #[arg(long, value_name = "url")]
    pub default_target: Option<String>,
    /// Alternate server for handling proxy errors (GET {url}/{code}?url=…).
    #[arg(long, value_name = "url")]
    pub error_target: Option<String>,
    /// Directory of {code}.html error pages (error.html as the fallback).
    #[arg(long, value_name = "path")]
    pub error_path: Option<PathBuf>,
    /// Redirect HTTP requests on this port to the HTTPS port.
    #[arg(long, value_name = "redirect-port")]
    pub redirect_port: Option<u16>,
    /// Redirect HTTP requests to this port (default --port).
    #[arg(long, value_name = "port")]
    pub redirect_to: Option<u16>,
    /// Write the PID to this file once listening; removed on exit.
    #[arg(long, value_name = "pid-file")]
    pub pid_file: Option<PathBuf>,
    /// Don't add X-Forwarded-* headers to proxied requests.
    #[arg(long)]
    pub no_x_forward: bool,
    /// Send every request through pingora's proxy path, none through hubgate's direct
    /// HTTP/1.1 path (docs/direct-path.md).
    #[arg(long)]
    pub no_direct_path: bool,
    /// Don't prepend the target's path to the proxied request path.
    #[arg(long)]
    pub no_prepend_path: bool,
    /// Don't include the route prefix in the proxied request path.
    #[arg(long)]
    pub no_include_prefix: bool,
    /// Rewrite the Location host/port of redirects to the request's Host.
    #[arg(long)]
    pub auto_rewrite: bool,
    /// Set the upstream Host header to the target's host:port.
    #[arg(long)]
    pub change_origin: bool,
    /// Rewrite the Location scheme of redirects to this protocol.
    #[arg(long, value_name = "proto")]
    pub protocol_rewrite: Option<String>,
    /// Add or override a request header to upstreams, "name: value" (repeatable).
    #[arg(long, value_name = "header", action = ArgAction::Append)]
    pub custom_header: Vec<String>,
    /// Don't verify the certificates of https targets.
    #[arg(long)]
    pub insecure: bool,
    /// Route by host: the first segment of each route is a host name.
    #[arg(long)]
    pub host_routing: bool,
    /// IP for the metrics server (default 127.0.0.1; CHP's default is all interfaces).
    #[arg(long, value_name = "ip")]
    pub metrics_ip: Option<String>,
    /// Port of the metrics server (no metrics server unless given).
    #[arg(long, value_name = "n")]
    pub metrics_port: Option<u16>,
    /// Path to a UNIX domain socket for metrics (instead of --metrics-ip/--metrics-port).
    #[arg(long, value_name = "path", conflicts_with_all = ["metrics_ip", "metrics_port"])]
    pub metrics_socket: Option<PathBuf>,
    /// Log level (debug, info, warn, error).
    #[arg(long, value_name = "loglevel")]
    pub log_level: Option<String>,
    /// Timeout (ms) on the incoming socket of web requests.
    #[arg(long, value_name = "n")]
    pub timeout: Option<u64>,
    /// Timeout (ms) for proxied requests: an upstream idle this long gives a 503.
    #[arg(long, value_name = "n")]
    pub proxy_timeout: Option<u64>,
    /// Route store: `memory` (default), `redis://[user:password@]host:port/db` (also
    /// `rediss://`) to share one route table between replicas, or
    /// `redis+sentinel://[:password@]host1:26379,host2:26379/master-name[?db=N]` to follow
    /// Redis Sentinel's failovers. CHP's node modules cannot be loaded.
    #[arg(long, value_name = "storage-backend")]
    pub storage_backend: Option<String>,
    /// Keep-alive idle timeout (ms) of the public listener (default 5000).
    #[arg(long, value_name = "timeout")]
    pub keep_alive_timeout: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_flag_keeps_its_last_value_and_repeatable_ones_accumulate() {
        let cli = Cli::try_parse_from([
            "hubgate",
            "--port",
            "1",
            "--port",
            "2",
            "--ip",
            "127.0.0.1",
            "--ip",
            "::1",
            "--custom-header",
            "a: 1",
            "--custom-header",
            "b: 2",
        ])
        .expect("repeated flags parse");
        assert_eq!(cli.port, Some(2));
        assert_eq!(cli.ip.as_deref(), Some("::1"));
        assert_eq!(cli.custom_header, vec!["a: 1", "b: 2"]);
    }
}
