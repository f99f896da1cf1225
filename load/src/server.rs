//! `echo-server`: a minimal HTTP/1.1 + websocket echo backend for benchmarks.
//!
//! HTTP: any request gets `200` with a fixed 100-byte body, or 64 KiB when the path ends in
//! `/64k` (query ignored); keep-alive and pipelining; request bodies with Content-Length are
//! read and ignored. A request with `Upgrade: websocket` is answered with `101` and every data
//! message is echoed back.
//!
//! With `--tls-cert`/`--tls-key` it serves the same over TLS (rustls), as a JupyterHub
//! single-user server with internal_ssl does: a backend for `https://` targets.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub struct ServerOpts {
    pub listen: String,
    pub port_file: Option<String>,
    pub max_seconds: Option<u64>,
    /// PEM certificate chain and key: serve TLS
    pub tls: Option<(String, String)>,
}

fn acceptor(cert: &str, key: &str) -> Result<TlsAcceptor, String> {
    let read = |f: &str| std::fs::read(f).map_err(|e| format!("{f}: {e}"));
    let certs = rustls_pemfile::certs(&mut read(cert)?.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{cert}: {e}"))?;
    let key = rustls_pemfile::private_key(&mut read(key)?.as_slice())
        .map_err(|e| format!("{key}: {e}"))?
        .ok_or_else(|| format!("{key}: no private key"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("{cert}: {e}"))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn response(len: usize) -> Vec<u8> {
    let mut r =
        format!("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {len}\r\n\r\n")
            .into_bytes();
    let body: Vec<u8> = (0..len)
        .map(|i| b"abcdefghijklmnopqrstuvwxyz0123456789"[i % 36])
        .collect();
    r.extend_from_slice(&body[..len.saturating_sub(1)]);
    if len > 0 {
        r.push(b'\n');
    }
    r
}

struct Responses {
    small: Vec<u8>,
    large: Vec<u8>,
}

#[derive(Default)]
struct Stats {
    conns: AtomicU64,
    requests: AtomicU64,
    ws: AtomicU64,
}

pub async fn run(o: ServerOpts) -> Result<(), String> {
    let l = TcpListener::bind(&o.listen)
        .await
        .map_err(|e| format!("bind {}: {e}", o.listen))?;
    let addr = l.local_addr().map_err(|e| e.to_string())?;
    if let Some(f) = &o.port_file {
        std::fs::write(f, format!("{}\n", addr.port()))
            .map_err(|e| format!("--port-file {f}: {e}"))?;
    }
    let tls = match &o.tls {
        Some((cert, key)) => Some(acceptor(cert, key)?),
        None => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    eprintln!("hubgate-load echo-server: listening on {scheme}://{addr} (100 B body; /64k: 65536 B; websocket echo)");
    let resp = Arc::new(Responses {
        small: response(100),
        large: response(64 * 1024),
    });
    let stats = Arc::new(Stats::default());
    let accept = async {
        loop {
            match l.accept().await {
                Ok((s, _)) => {
                    let _ = s.set_nodelay(true);
                    stats.conns.fetch_add(1, Ordering::Relaxed);
                    let (resp, stats, tls) = (resp.clone(), stats.clone(), tls.clone());
                    tokio::spawn(async move {
                        let _ = match tls {
                            Some(tls) => match tls.accept(s).await {
                                Ok(s) => serve(s, resp, stats).await,
                                Err(e) => Err(e),
                            },
                            None => serve(s, resp, stats).await,
                        };
                    });
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning
                    eprintln!("hubgate-load echo-server: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    };
    let limit = async {
        match o.max_seconds {
            Some(s) => tokio::time::sleep(Duration::from_secs(s)).await,
            None => std::future::pending().await,
        }
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| e.to_string())?;
    tokio::select! {
        _ = accept => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        _ = limit => eprintln!("hubgate-load echo-server: --max-seconds reached"),
    }
    eprintln!(
        "hubgate-load echo-server: stopping ({} connections, {} http requests, {} websockets)",
        stats.conns.load(Ordering::Relaxed),
        stats.requests.load(Ordering::Relaxed),
        stats.ws.load(Ordering::Relaxed)
    );
    Ok(())
}

struct Head {
    len: usize,
    large: bool,
    head_only: bool,
    close: bool,
    body: u64,
    ws_key: Option<String>,
}

fn parse_head(h: &[u8]) -> Option<Head> {
    let text = std::str::from_utf8(h).ok()?;
    let mut lines = text.split("\r\n");
    let rl = lines.next()?;
    let mut parts = rl.split(' ');
    let method = parts.next()?;
    let target = parts.next()?;
    let version = parts.next().unwrap_or("HTTP/1.0");
    let path = target.split('?').next().unwrap_or("");
    let mut close = version == "HTTP/1.0";
    let mut body = 0;
    let mut upgrade = false;
    let mut ws_key = None;
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let v = v.trim();
        if k.eq_ignore_ascii_case("content-length") {
            body = v.parse().ok()?;
        } else if k.eq_ignore_ascii_case("connection") {
            let v = v.to_ascii_lowercase();
            if v.contains("close") {
                close = true;
            } else if v.contains("keep-alive") {
                close = false;
            }
        } else if k.eq_ignore_ascii_case("upgrade") {
            upgrade = v.eq_ignore_ascii_case("websocket");
        } else if k.eq_ignore_ascii_case("sec-websocket-key") {
            ws_key = Some(v.to_string());
        } else if k.eq_ignore_ascii_case("transfer-encoding") {
            return None; // chunked request bodies are not supported
        }
    }
    Some(Head {
        len: h.len(),
        large: path.ends_with("/64k"),
        head_only: method == "HEAD",
        close,
        body,
        ws_key: if upgrade { ws_key } else { None },
    })
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    resp: Arc<Responses>,
    stats: Arc<Stats>,
) -> io::Result<()> {
    let mut buf = vec![0u8; 8192];
    let (mut start, mut end) = (0usize, 0usize);
    let mut out: Vec<u8> = Vec::new();
    loop {
        // answer every complete request in the buffer (pipelining), then write once
        let mut close = false;
        while let Some(i) = buf[start..end].windows(4).position(|w| w == b"\r\n\r\n") {
            let Some(h) = parse_head(&buf[start..start + i + 4]) else {
                s.write_all(
                    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                )
                .await?;
                return Ok(());
            };
            if let Some(key) = h.ws_key {
                s.write_all(&out).await?;
                let accept = derive_accept_key(key.as_bytes());
                let r = format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n");
                s.write_all(r.as_bytes()).await?;
                let rest = buf[start + h.len..end].to_vec();
                drop(buf);
                stats.ws.fetch_add(1, Ordering::Relaxed);
                return ws_echo(s, rest).await;
            }
            stats.requests.fetch_add(1, Ordering::Relaxed);
            start += h.len;
            // skip a request body
            let mut body = h.body;
            let have = ((end - start) as u64).min(body);
            start += have as usize;
            body -= have;
            while body > 0 {
                let n = s.read(&mut buf).await?;
                if n == 0 {
                    return Ok(());
                }
                let take = (n as u64).min(body);
                body -= take;
                start = take as usize;
                end = n;
            }
            let r = if h.large { &resp.large } else { &resp.small };
            if h.head_only {
                let hl = r.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(0) + 4;
                out.extend_from_slice(&r[..hl]);
            } else if out.is_empty() && start == end {
                // the common case: one request, one response, no copy
                s.write_all(r).await?;
            } else {
                out.extend_from_slice(r);
            }
            if h.close {
                close = true;
                break;
            }
        }
        if !out.is_empty() {
            s.write_all(&out).await?;
            out.clear();
        }
        if close {
            let _ = s.shutdown().await;
            return Ok(());
        }
        if start == end {
            start = 0;
            end = 0;
        } else if end == buf.len() {
            if start == 0 {
                s.write_all(b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .await?;
                return Ok(());
            }
            buf.copy_within(start..end, 0);
            end -= start;
            start = 0;
        }
        let n = s.read(&mut buf[end..]).await?;
        if n == 0 {
            return Ok(());
        }
        end += n;
    }
}

async fn ws_echo<S: AsyncRead + AsyncWrite + Unpin>(s: S, rest: Vec<u8>) -> io::Result<()> {
    let cfg = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let mut ws = WebSocketStream::from_partially_read(s, rest, Role::Server, Some(cfg)).await;
    while let Some(m) = ws.next().await {
        match m {
            Ok(m @ (Message::Binary(_) | Message::Text(_))) => {
                if ws.send(m).await.is_err() {
                    break;
                }
            }
            // a Close is answered by tungstenite on the next poll, after which the stream ends
            Ok(_) => {}
            Err(_) => break,
        }
    }
    Ok(())
}
