//! Websockets of a simulated JupyterLab tab: the kernel's `channels` socket speaking the
//! Jupyter messaging protocol (v5, JSON text frames, jupyter_server's default when no
//! subprotocol is asked for), and idle sockets held open as other tabs hold them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::client::{Client, Failure};
use crate::conn::Conn;

pub type Ws = WebSocketStream<Conn>;

static IDS: AtomicU64 = AtomicU64::new(0);

/// A unique hex id (message ids, session ids): time, process and a counter.
pub fn new_id() -> String {
    let n = IDS.fetch_add(1, Ordering::Relaxed);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    format!("{t:016x}{:08x}{n:08x}", std::process::id())
}

/// Now as ISO 8601 UTC (the `date` of a message header).
fn now_iso() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_micros()
    )
}

/// Opens a websocket to `path` with the client's cookies and Authorization; the handshake
/// may take `timeout` (a kernel's `channels` socket is answered only once the kernel
/// replies to jupyter_server's kernel_info request, which on a busy machine is slow).
pub async fn open(client: &Client, path: &str, timeout: Duration) -> Result<Ws, Failure> {
    let t = &client.connector.target;
    let url = format!(
        "{}://{}{}",
        if t.tls { "wss" } else { "ws" },
        t.authority,
        path
    );
    let mut req = url
        .into_client_request()
        .map_err(|e| Failure::new(format!("websocket request: {e}")))?;
    let h = req.headers_mut();
    let cookies = client.jar.header_for(path);
    let hv = |v: &str| HeaderValue::from_str(v).map_err(|_| Failure::new("bad header value"));
    if !cookies.is_empty() {
        h.insert("cookie", hv(&cookies)?);
    }
    if let Some(a) = &client.authorization {
        h.insert("authorization", hv(a)?);
    }
    // A browser's Origin: the page's own (checked by jupyter_server and, for cookie
    // credentials, by hubgate's [auth]).
    let scheme = if t.tls { "https" } else { "http" };
    h.insert("origin", hv(&format!("{scheme}://{}", t.authority))?);
    let stream = client
        .connector
        .connect()
        .await
        .map_err(|e| Failure::new(format!("websocket connect: {}", e.kind())))?;
    let cfg = WebSocketConfig::default();
    match tokio::time::timeout(
        timeout,
        tokio_tungstenite::client_async_with_config(req, stream, Some(cfg)),
    )
    .await
    {
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(tokio_tungstenite::tungstenite::Error::Http(r))) => Err(Failure::new(format!(
            "websocket status {}",
            r.status().as_u16()
        ))),
        Ok(Err(e)) => Err(Failure::new(format!("websocket handshake: {e}"))),
        Err(_) => Err(Failure::new("websocket handshake timeout")),
    }
}

/// Runs `code` on the kernel: sends an `execute_request` on the shell channel and waits
/// for its `execute_reply` and iopub's `status: idle` (they travel on different kernel
/// sockets, so either may come first). Returns the stdout the code printed.
pub async fn execute(
    ws: &mut Ws,
    code: &str,
    username: &str,
    session: &str,
    timeout: Duration,
) -> Result<String, Failure> {
    let msg_id = new_id();
    let msg = json!({
        "header": {
            "msg_id": msg_id,
            "msg_type": "execute_request",
            "username": username,
            "session": session,
            "date": now_iso(),
            "version": "5.3",
        },
        "parent_header": {},
        "metadata": {},
        "content": {
            "code": code,
            "silent": false,
            "store_history": true,
            "user_expressions": {},
            "allow_stdin": false,
            "stop_on_error": true,
        },
        "channel": "shell",
        "buffers": [],
    });
    ws.send(Message::text(msg.to_string()))
        .await
        .map_err(|e| Failure::new(format!("websocket send: {e}")))?;
    let deadline = Instant::now() + timeout;
    let (mut stdout, mut reply, mut idle) = (String::new(), None, false);
    while reply.is_none() || !idle {
        let frame = match tokio::time::timeout_at(deadline.into(), ws.next()).await {
            Err(_) => return Err(Failure::new("execute timeout")),
            Ok(None) | Ok(Some(Ok(Message::Close(_)))) => {
                return Err(Failure::new("kernel websocket closed"))
            }
            Ok(Some(Err(e))) => return Err(Failure::new(format!("kernel websocket: {e}"))),
            Ok(Some(Ok(Message::Text(t)))) => t,
            Ok(Some(Ok(_))) => continue, // binary frames carry buffers; pings
        };
        let Ok(m) = serde_json::from_str::<serde_json::Value>(frame.as_str()) else {
            return Err(Failure::new("bad kernel message"));
        };
        if m["parent_header"]["msg_id"].as_str() != Some(msg_id.as_str()) {
            continue;
        }
        match m["msg_type"].as_str() {
            Some("stream") if m["content"]["name"] == "stdout" => {
                stdout.push_str(m["content"]["text"].as_str().unwrap_or(""));
            }
            Some("execute_reply") => reply = Some(m["content"]["status"].clone()),
            Some("status") if m["content"]["execution_state"] == "idle" => idle = true,
            _ => {}
        }
    }
    match reply {
        Some(s) if s == "ok" => Ok(stdout),
        Some(s) => Err(Failure::new(format!(
            "execute_reply status {}",
            s.as_str().unwrap_or("?")
        ))),
        None => Err(Failure::new("no execute_reply")),
    }
}

/// Holds an idle websocket until `stop` fires, answering the server's pings (reading is
/// what makes tungstenite answer them). Err if the server closed it first.
pub async fn hold(mut ws: Ws, mut stop: tokio::sync::watch::Receiver<bool>) -> Result<(), Failure> {
    loop {
        tokio::select! {
            _ = stop.changed() => {
                let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
                return Ok(());
            }
            m = ws.next() => match m {
                Some(Ok(Message::Close(_))) | None => {
                    return Err(Failure::new("idle websocket closed by the server"))
                }
                Some(Err(e)) => return Err(Failure::new(format!("idle websocket: {e}"))),
                Some(Ok(_)) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_dates_and_ids() {
        let s = now_iso();
        assert_eq!(s.len(), 27, "{s}");
        assert!(
            s.starts_with("20") && s.ends_with('Z') && &s[10..11] == "T",
            "{s}"
        );
        assert_ne!(new_id(), new_id());
    }
}
