//! `ws-echo` (websocket round trips, kernel-like sessions) and `ws-hold` (many idle websockets).

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::conn::{Conn, Connector};
use super::hist::Histogram;
use super::report::{Counters, Latency, Summary, Watcher};
use super::RunOpts;

pub type Ws = WebSocketStream<Conn>;

#[derive(Clone)]
pub struct WsCommon {
    pub headers: Vec<String>,
    pub token: Option<String>,
    pub size: usize,
    pub text: bool,
}

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// TCP(+TLS) connect and websocket handshake, with the connector's timeout.
pub async fn open(conn: &Connector, c: &WsCommon, read_buf: usize) -> io::Result<Ws> {
    let t = &conn.target;
    let url = format!(
        "{}://{}{}",
        if t.tls { "wss" } else { "ws" },
        t.authority,
        t.path
    );
    let mut req = url.into_client_request().map_err(io_err)?;
    for h in &c.headers {
        let (k, v) = h
            .split_once(':')
            .ok_or_else(|| io_err(format!("--header {h:?}: expected \"Name: value\"")))?;
        req.headers_mut().append(
            HeaderName::from_bytes(k.trim().as_bytes()).map_err(io_err)?,
            HeaderValue::from_str(v.trim()).map_err(io_err)?,
        );
    }
    if let Some(tok) = &c.token {
        req.headers_mut().insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {tok}")).map_err(io_err)?,
        );
    }
    let cfg = WebSocketConfig::default()
        .read_buffer_size(read_buf)
        .write_buffer_size(0);
    let stream = conn.connect().await?;
    match tokio::time::timeout(
        conn.timeout,
        tokio_tungstenite::client_async_with_config(req, stream, Some(cfg)),
    )
    .await
    {
        Ok(Ok((ws, _resp))) => Ok(ws),
        Ok(Err(e)) => Err(io_err(format!("websocket handshake: {e}"))),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "websocket handshake timed out",
        )),
    }
}

fn message(c: &WsCommon) -> Message {
    if c.text {
        Message::text("x".repeat(c.size))
    } else {
        Message::Binary(Bytes::from(vec![b'x'; c.size]))
    }
}

/// Send `msg` and wait for a data message back (pings/pongs skipped). Returns the reply's length.
async fn echo(ws: &mut Ws, msg: Message) -> io::Result<usize> {
    ws.send(msg).await.map_err(io_err)?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Binary(b))) => return Ok(b.len()),
            Some(Ok(Message::Text(t))) => return Ok(t.len()),
            Some(Ok(Message::Close(_))) | None => {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed"))
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(io_err(e)),
        }
    }
}

pub struct EchoOpts {
    pub connections: u64,
    pub duration: Option<Duration>,
    pub messages: Option<u64>,
    /// Messages per second per connection (None: next message as soon as the echo is back).
    pub rate: Option<f64>,
    pub common: WsCommon,
}

pub async fn run_echo(conn: Connector, o: EchoOpts, run: &RunOpts) -> Result<Summary, String> {
    let t = conn.target.clone();
    let read_buf = (o.common.size + 64).clamp(4096, 128 * 1024);
    let mut socks = Vec::new();
    for _ in 0..o.connections {
        socks.push(
            open(&conn, &o.common, read_buf)
                .await
                .map_err(|e| format!("{}: {e}", t.url))?,
        );
    }
    let counters = Arc::new(Counters::default());
    let stop = Arc::new(AtomicBool::new(false));
    let budget = Arc::new(AtomicI64::new(
        o.messages.map(|n| n as i64).unwrap_or(i64::MAX),
    ));
    let progress = super::report::spawn_progress(
        "ws-echo",
        "msg",
        counters.clone(),
        stop.clone(),
        run.progress,
    );
    let watcher = Watcher::start(&run.watch);
    let start = Instant::now();
    let deadline = o.duration.map(|d| start + d);
    let msg = message(&o.common);
    let size = o.common.size as u64;
    let n = o.connections;
    let mut tasks = Vec::new();
    for (i, mut ws) in socks.into_iter().enumerate() {
        let (counters, budget, msg) = (counters.clone(), budget.clone(), msg.clone());
        let rate = o.rate;
        let timeout = conn.timeout;
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::default();
            let mut k = 0u64;
            // spread the connections' schedules over one interval
            let offset = rate.map(|r| i as f64 / (r * n as f64)).unwrap_or(0.0);
            loop {
                let intended = rate.map(|r| {
                    let at = start + Duration::from_secs_f64(offset + k as f64 / r);
                    k += 1;
                    at
                });
                if let Some(at) = intended {
                    if deadline.is_some_and(|d| at >= d) {
                        break;
                    }
                    tokio::time::sleep_until(at.into()).await;
                } else if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                if budget.fetch_sub(1, Ordering::Relaxed) <= 0 {
                    break;
                }
                let t0 = intended.unwrap_or_else(Instant::now);
                match tokio::time::timeout(timeout, echo(&mut ws, msg.clone())).await {
                    Ok(Ok(len)) => {
                        hist.record(t0.elapsed().as_nanos() as u64);
                        Counters::add(&counters.done, 1);
                        Counters::add(&counters.bytes_written, size);
                        Counters::add(&counters.bytes_read, len as u64);
                    }
                    _ => {
                        Counters::add(&counters.errors, 1);
                        return hist; // this session is dead
                    }
                }
            }
            let _ = tokio::time::timeout(Duration::from_millis(500), ws.close(None)).await;
            hist
        }));
    }
    let mut hist = Histogram::default();
    for t in tasks {
        hist.merge(&t.await.map_err(|e| e.to_string())?);
    }
    let elapsed = start.elapsed();
    let (watch, machine) = watcher.finish();
    stop.store(true, Ordering::Relaxed);
    if let Some(p) = progress {
        let _ = p.join();
    }
    let mut extra = BTreeMap::new();
    extra.insert(
        "message_bytes".to_string(),
        serde_json::json!(o.common.size),
    );
    if let Some(r) = o.rate {
        extra.insert("rate_per_connection".to_string(), serde_json::json!(r));
    }
    Ok(Summary {
        mode: "ws-echo".into(),
        url: t.url.clone(),
        connections: o.connections,
        duration_s: elapsed.as_secs_f64(),
        requests: hist.count(),
        errors: Counters::get(&counters.errors),
        rps: hist.count() as f64 / elapsed.as_secs_f64(),
        latency_us: Latency::from_hist(&hist),
        bytes_read: Counters::get(&counters.bytes_read),
        bytes_written: Counters::get(&counters.bytes_written),
        status: BTreeMap::new(),
        extra,
        watch,
        machine,
    })
}

pub struct HoldOpts {
    pub connections: u64,
    pub in_flight: usize,
    /// Longest hold after all are open.
    pub hold: Duration,
    pub stop_file: Option<String>,
    pub ready_file: Option<String>,
    pub common: WsCommon,
}

/// Open N websockets (K handshakes in flight), echo once on each, hold them until the hold time
/// ends or the stop file appears, then close them. Watched processes are sampled over the whole
/// run (open + hold); their rss_end is taken just before closing.
pub async fn run_hold(conn: Connector, o: HoldOpts, run: &RunOpts) -> Result<Summary, String> {
    let t = conn.target.clone();
    if let Some(f) = &o.stop_file {
        let _ = std::fs::remove_file(f);
    }
    let counters = Arc::new(Counters::default());
    let stop = Arc::new(AtomicBool::new(false));
    let progress = super::report::spawn_progress(
        "ws-hold",
        "opened",
        counters.clone(),
        stop.clone(),
        run.progress,
    );
    let watcher = Watcher::start(&run.watch);
    let start = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(o.in_flight.max(1)));
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    let msg = message(&o.common);
    let mut tasks = Vec::new();
    for _ in 0..o.connections {
        let (conn, common, sem, counters, msg) = (
            conn.clone(),
            o.common.clone(),
            sem.clone(),
            counters.clone(),
            msg.clone(),
        );
        let mut release = release_rx.clone();
        tasks.push(tokio::spawn(async move {
            // Ok(latency ns of connect+handshake+echo) once released, and whether it survived the hold
            let permit = sem.acquire_owned().await.ok();
            let t0 = Instant::now();
            let opened = async {
                let mut ws = open(&conn, &common, 4096).await?;
                let len = tokio::time::timeout(conn.timeout, echo(&mut ws, msg))
                    .await
                    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "echo timed out"))??;
                Ok::<_, io::Error>((ws, len))
            }
            .await;
            drop(permit);
            let (mut ws, len) = match opened {
                Ok(x) => x,
                Err(e) => {
                    Counters::add(&counters.errors, 1);
                    return (None, Some(e.to_string()), false);
                }
            };
            let lat = t0.elapsed().as_nanos() as u64;
            Counters::add(&counters.done, 1);
            Counters::add(&counters.open, 1);
            Counters::add(&counters.bytes_read, len as u64);
            Counters::add(&counters.bytes_written, common.size as u64);
            // hold: wait for release, noticing if the connection dies meanwhile
            let survived = tokio::select! {
                _ = release.wait_for(|r| *r) => true,
                _ = async { loop { match ws.next().await { Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break, _ => {} } } } => false,
            };
            counters.open.fetch_sub(1, Ordering::Relaxed);
            if survived {
                let _ = tokio::time::timeout(Duration::from_millis(200), ws.close(None)).await;
            }
            (Some(lat), None, survived)
        }));
    }
    // wait until every connection attempt has finished opening
    let total = o.connections;
    loop {
        let settled = Counters::get(&counters.done) + Counters::get(&counters.errors);
        if settled >= total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let open_time = start.elapsed();
    let opened = Counters::get(&counters.done);
    let failed = Counters::get(&counters.errors);
    if run.progress {
        eprintln!(
            "hubgate-load ws-hold: {opened} open, {failed} failed in {:.2} s; holding up to {:.0} s{}",
            open_time.as_secs_f64(),
            o.hold.as_secs_f64(),
            o.stop_file.as_deref().map(|f| format!(" or until {f} exists")).unwrap_or_default()
        );
    }
    if let Some(f) = &o.ready_file {
        let line = format!(
            "{{\"opened\": {opened}, \"failed\": {failed}, \"open_time_s\": {:.3}}}\n",
            open_time.as_secs_f64()
        );
        std::fs::write(f, line).map_err(|e| format!("--ready-file {f}: {e}"))?;
    }
    let hold_start = Instant::now();
    while hold_start.elapsed() < o.hold {
        if o.stop_file
            .as_deref()
            .is_some_and(|f| std::path::Path::new(f).exists())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let held = hold_start.elapsed();
    let still_open = Counters::get(&counters.open);
    let (watch, machine) = watcher.finish();
    let _ = release_tx.send(true);
    let mut hist = Histogram::default();
    let mut dropped = 0u64;
    let mut first_error: Option<String> = None;
    for t in tasks {
        let (lat, err, survived) = t.await.map_err(|e| e.to_string())?;
        if let Some(l) = lat {
            hist.record(l);
            if !survived {
                dropped += 1;
            }
        }
        if first_error.is_none() {
            first_error = err;
        }
    }
    stop.store(true, Ordering::Relaxed);
    if let Some(p) = progress {
        let _ = p.join();
    }
    let mut extra = BTreeMap::new();
    extra.insert("opened".to_string(), serde_json::json!(opened));
    extra.insert("failed".to_string(), serde_json::json!(failed));
    extra.insert("dropped_while_held".to_string(), serde_json::json!(dropped));
    extra.insert(
        "open_at_end_of_hold".to_string(),
        serde_json::json!(still_open),
    );
    extra.insert(
        "open_time_s".to_string(),
        serde_json::json!((open_time.as_secs_f64() * 1000.0).round() / 1000.0),
    );
    extra.insert(
        "held_s".to_string(),
        serde_json::json!((held.as_secs_f64() * 1000.0).round() / 1000.0),
    );
    extra.insert("in_flight".to_string(), serde_json::json!(o.in_flight));
    if let Some(e) = first_error {
        extra.insert("first_error".to_string(), serde_json::json!(e));
    }
    Ok(Summary {
        mode: "ws-hold".into(),
        url: t.url.clone(),
        connections: o.connections,
        duration_s: start.elapsed().as_secs_f64(),
        requests: opened,
        errors: failed + dropped,
        rps: opened as f64 / open_time.as_secs_f64().max(1e-9),
        latency_us: Latency::from_hist(&hist),
        bytes_read: Counters::get(&counters.bytes_read),
        bytes_written: Counters::get(&counters.bytes_written),
        status: BTreeMap::new(),
        extra,
        watch,
        machine,
    })
}
