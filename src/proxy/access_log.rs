//! The per-request access log line (`--access-log combined|json`): secrets in the query are
//! redacted and credentials are never logged.

use std::net::IpAddr;
use std::time::Duration;

use pingora::proxy::Session;

use crate::auth::Allowed;
use crate::config::AccessLog;
use crate::web::redact_query;

/// Writes one access-log line for a request pingora's path finished.
pub fn write(
    format: AccessLog,
    session: &Session,
    allowed: Option<&Allowed>,
    status: u16,
    elapsed: Duration,
) {
    let req = session.req_header();
    let header = |name: http::HeaderName| req.headers.get(name).and_then(|v| v.to_str().ok());
    let version = format!("{:?}", req.version);
    write_line(
        format,
        &Line {
            client: session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip()),
            user: allowed.map(|a| a.identity.user.as_str()),
            method: req.method.as_str(),
            target: req.raw_path(),
            version: &version,
            status,
            bytes: session.body_bytes_sent(),
            referer: header(http::header::REFERER),
            user_agent: header(http::header::USER_AGENT),
            elapsed,
        },
    );
}

/// What one access-log line says (pingora's path and the direct path fill it alike).
pub struct Line<'a> {
    pub client: Option<IpAddr>,
    pub user: Option<&'a str>,
    pub method: &'a str,
    /// The request target as received.
    pub target: &'a [u8],
    pub version: &'a str,
    pub status: u16,
    /// Response body bytes sent.
    pub bytes: usize,
    pub referer: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    pub elapsed: Duration,
}

/// Writes one access-log line.
pub fn write_line(format: AccessLog, l: &Line<'_>) {
    let client = l.client.map_or("-".to_string(), |ip| ip.to_string());
    let target = redact_query(&String::from_utf8_lossy(l.target));
    let user = l.user.unwrap_or("-");
    let (referer, user_agent) = (l.referer.unwrap_or("-"), l.user_agent.unwrap_or("-"));
    let micros = l.elapsed.as_micros();
    match format {
        AccessLog::Json => log::info!(
            "{}",
            serde_json::json!({
                "client": client, "user": user, "method": l.method, "target": target,
                "status": l.status, "bytes": l.bytes, "duration_us": micros as u64,
                "referer": referer, "user_agent": user_agent,
            })
        ),
        _ => log::info!(
            "{client} - {user} \"{} {target} {}\" {} {} \"{referer}\" \"{user_agent}\" {micros}us",
            l.method,
            l.version,
            l.status,
            l.bytes,
        ),
    }
}
