//! Websocket echo backend (tokio-tungstenite) and client helpers.
#![allow(clippy::result_large_err)] // tungstenite's handshake types are large; their signatures are fixed

use super::backend::{accept_tls, Handshake, Recorded};
use super::reserve_port;
use futures_util::{SinkExt, StreamExt};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub use tokio_tungstenite::tungstenite;

pub type WsClient = WebSocketStream<tokio::net::TcpStream>;

/// Text messages the echo backend treats as commands instead of echoing.
pub const CMD_CLOSE: &str = "__close__"; // server sends a close frame, then closes TCP
pub const CMD_DROP: &str = "__drop__"; // server drops the TCP connection without a close frame

#[derive(Clone, Default)]
pub struct WsOptions {
    /// Sent by the server right after the handshake.
    pub greeting: Option<String>,
    /// Close frames received from clients (code, reason), shared by every connection.
    pub close_frames: Arc<Mutex<Vec<(u16, String)>>>,
}

/// A websocket echo server on 127.0.0.1 that records each upgrade request
/// (raw target and headers) and counts opened/closed connections.
pub struct WsBackend {
    pub port: u16,
    /// Serves `wss` ([`WsBackend::start_tls`]).
    tls: bool,
    log: Arc<Mutex<Vec<Recorded>>>,
    handshakes: Arc<Mutex<Vec<Handshake>>>,
    opened: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
    close_frames: Arc<Mutex<Vec<(u16, String)>>>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl WsBackend {
    pub fn echo() -> WsBackend {
        WsBackend::start(WsOptions::default())
    }

    pub fn start(opts: WsOptions) -> WsBackend {
        Self::run(opts, None)
    }

    /// A websocket echo server behind TLS with the server side of `config` (see
    /// [`super::tls::server_config`]); every handshake is recorded ([`WsBackend::handshakes`]).
    pub fn start_tls(opts: WsOptions, config: Arc<rustls::ServerConfig>) -> WsBackend {
        Self::run(opts, Some(config))
    }

    fn run(opts: WsOptions, tls: Option<Arc<rustls::ServerConfig>>) -> WsBackend {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind ws backend");
        let port = l.local_addr().unwrap().port();
        reserve_port(port);
        let log: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let opened = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
        let handshakes: Arc<Mutex<Vec<Handshake>>> = Arc::default();
        let (log2, opened2, closed2) = (log.clone(), opened.clone(), closed.clone());
        let handshakes2 = handshakes.clone();
        let close_frames = opts.close_frames.clone();
        let is_tls = tls.is_some();
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                l.set_nonblocking(true).unwrap();
                let l = tokio::net::TcpListener::from_std(l).unwrap();
                loop {
                    tokio::select! {
                        _ = &mut stop_rx => break,
                        acc = l.accept() => if let Ok((s, _)) = acc {
                            let _ = s.set_nodelay(true);
                            let (opts, log, opened, closed) =
                                (opts.clone(), log2.clone(), opened2.clone(), closed2.clone());
                            match acceptor.clone() {
                                None => {
                                    tokio::spawn(ws_conn(s, opts, log, opened, closed));
                                }
                                Some(acceptor) => {
                                    let hs = handshakes2.clone();
                                    tokio::spawn(async move {
                                        if let Some(tls) = accept_tls(&acceptor, s, &hs).await {
                                            ws_conn(tls, opts, log, opened, closed).await;
                                        }
                                    });
                                }
                            }
                        }
                    }
                }
            });
            rt.shutdown_timeout(Duration::from_millis(100));
        });
        WsBackend {
            port,
            tls: is_tls,
            log,
            handshakes,
            opened,
            closed,
            close_frames,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:<port>` (CHP targets are http URLs even for websockets;
    /// `https://` for a TLS backend).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Every TLS handshake so far, in order (empty for a plain backend).
    pub fn handshakes(&self) -> Vec<Handshake> {
        self.handshakes.lock().unwrap().clone()
    }

    /// Recorded upgrade requests (body empty).
    pub fn requests(&self) -> Vec<Recorded> {
        self.log.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.log.lock().unwrap().len()
    }

    pub fn opened(&self) -> usize {
        self.opened.load(Ordering::SeqCst)
    }

    /// Connections whose handler finished (peer closed, close handshake, drop).
    pub fn closed(&self) -> usize {
        self.closed.load(Ordering::SeqCst)
    }

    /// Close frames received from clients so far (code, reason).
    pub fn close_frames(&self) -> Vec<(u16, String)> {
        self.close_frames.lock().unwrap().clone()
    }

    pub fn wait_closed(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.closed() >= n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.closed() >= n
    }
}

impl Drop for WsBackend {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn ws_conn<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    s: S,
    opts: WsOptions,
    log: Arc<Mutex<Vec<Recorded>>>,
    opened: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
) {
    let cb = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        let headers = req
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        log.lock().unwrap().push(Recorded {
            method: req.method().to_string(),
            target: req.uri().to_string(),
            version: format!("{:?}", req.version()),
            headers,
            body: vec![],
        });
        Ok(resp)
    };
    let mut ws = match tokio_tungstenite::accept_hdr_async(s, cb).await {
        Ok(ws) => ws,
        Err(_) => return,
    };
    opened.fetch_add(1, Ordering::SeqCst);
    if let Some(g) = &opts.greeting {
        let _ = ws.send(Message::Text(g.clone().into())).await;
    }
    while let Some(msg) = ws.next().await {
        match msg {
            Ok(Message::Text(t)) => {
                if t.as_str() == CMD_CLOSE {
                    let _ = ws.close(None).await;
                    // Wait (bounded) for the client's close reply, then drop.
                    let _ = tokio::time::timeout(Duration::from_secs(5), async {
                        while let Some(Ok(_)) = ws.next().await {}
                    })
                    .await;
                    break;
                }
                if t.as_str() == CMD_DROP {
                    break;
                }
                if ws.send(Message::Text(t)).await.is_err() {
                    break;
                }
            }
            Ok(Message::Binary(b)) => {
                if ws.send(Message::Binary(b)).await.is_err() {
                    break;
                }
            }
            Ok(Message::Close(frame)) => {
                let (code, reason) = frame.map_or((1005, String::new()), |f| {
                    (u16::from(f.code), f.reason.as_str().to_string())
                });
                opts.close_frames.lock().unwrap().push((code, reason));
            }
            Ok(_) => {} // ping (auto-pong), pong
            Err(_) => break,
        }
    }
    drop(ws);
    closed.fetch_add(1, Ordering::SeqCst);
}

/// Opens a websocket to `ws://127.0.0.1:<port><path>` with extra headers.
pub async fn ws_connect(
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(WsClient, tungstenite::handshake::client::Response), tungstenite::Error> {
    let mut req = format!("ws://127.0.0.1:{port}{path}").into_client_request()?;
    for (k, v) in headers {
        let name: tungstenite::http::HeaderName = k.parse().expect("header name");
        req.headers_mut()
            .append(name, HeaderValue::from_str(v).expect("header value"));
    }
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(tungstenite::Error::Io)?;
    tcp.set_nodelay(true).ok();
    tokio_tungstenite::client_async(req, tcp).await
}

/// Receives the next data message (text or binary), skipping pings/pongs, within
/// `timeout`. `None` on close, error or timeout.
pub async fn ws_recv(ws: &mut WsClient, timeout: Duration) -> Option<Message> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(m @ (Message::Text(_) | Message::Binary(_))))) => return Some(m),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)))) => continue,
            _ => return None,
        }
    }
}

/// Receives the next text message as a String.
pub async fn ws_recv_text(ws: &mut WsClient, timeout: Duration) -> Option<String> {
    match ws_recv(ws, timeout).await {
        Some(Message::Text(t)) => Some(t.as_str().to_string()),
        _ => None,
    }
}

/// What the client saw when the other side went away.
#[derive(Debug, PartialEq, Eq)]
pub enum WsEnd {
    /// A close frame arrived.
    CloseFrame,
    /// The stream ended or errored without a close frame.
    Eof,
    /// Nothing happened within the timeout.
    StillOpen,
}

/// Reads until the connection ends (ignoring data) or `timeout`.
pub async fn ws_wait_end(ws: &mut WsClient, timeout: Duration) -> WsEnd {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return WsEnd::StillOpen,
            Ok(None) | Ok(Some(Err(_))) => return WsEnd::Eof,
            Ok(Some(Ok(Message::Close(_)))) => return WsEnd::CloseFrame,
            Ok(Some(Ok(_))) => continue,
        }
    }
}

/// The next close frame's code and reason (data is skipped); `None` if the connection
/// ended without one or nothing came within `timeout`.
pub async fn ws_close_frame(ws: &mut WsClient, timeout: Duration) -> Option<(u16, String)> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Close(f)))) => {
                return Some(f.map_or((1005, String::new()), |f| {
                    (u16::from(f.code), f.reason.as_str().to_string())
                }))
            }
            Ok(Some(Ok(_))) => continue,
            _ => return None,
        }
    }
}

/// A raw websocket upgrade request for `path` (for error-path tests).
pub fn raw_upgrade(path: &str, host: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}
