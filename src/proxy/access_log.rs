//! The per-request access log line (`--access-log combined|json`): secrets in the query are
//! redacted and credentials are never logged.

use std::time::Duration;

use pingora::proxy::Session;

use crate::auth::Allowed;
use crate::config::AccessLog;
use crate::web::redact_query;

/// Writes one access-log line for a finished request.
pub fn write(
    format: AccessLog,
    session: &Session,
    allowed: Option<&Allowed>,
    status: u16,
    elapsed: Duration,
) {
    let req = session.req_header();
    let client = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map_or("-".to_string(), |a| a.ip().to_string());
    let target = redact_query(&String::from_utf8_lossy(req.raw_path()));
    let user = allowed.map_or("-", |a| a.identity.user.as_str());
    let bytes = session.body_bytes_sent();
    let header = |name: http::HeaderName| {
        req.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string()
    };
    let micros = elapsed.as_micros();
    match format {
        AccessLog::Json => log::info!(
            "{}",
            serde_json::json!({
                "client": client, "user": user, "method": req.method.as_str(), "target": target,
                "status": status, "bytes": bytes, "duration_us": micros as u64,
                "referer": header(http::header::REFERER), "user_agent": header(http::header::USER_AGENT),
            })
        ),
        _ => log::info!(
            "{client} - {user} \"{} {target} {:?}\" {status} {bytes} \"{}\" \"{}\" {micros}us",
            req.method,
            req.version,
            header(http::header::REFERER),
            header(http::header::USER_AGENT)
        ),
    }
}
