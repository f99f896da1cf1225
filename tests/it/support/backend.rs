//! In-process HTTP backends, each on its own tokio runtime thread, recording every
//! request they receive (and, for HTTPS backends, every TLS handshake).

use super::{fnv_hex, reserve_port};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::oneshot;

/// A request as the backend received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    /// Raw request target as received (`/a%20b?x=1`).
    pub target: String,
    pub version: String,
    /// In order, original case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Recorded {
    /// All values of `name` (case-insensitive) joined with "," (node style).
    pub fn header(&self, name: &str) -> Option<String> {
        let vals: Vec<&str> = self
            .headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect();
        if vals.is_empty() {
            None
        } else {
            Some(vals.join(","))
        }
    }

    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }
}

/// What an HTTPS backend saw in one TLS handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Handshake {
    /// Completed; the DER of the certificate the client presented, if any.
    Done { client_cert: Option<Vec<u8>> },
    /// Failed, with the server side's error (e.g. no or an untrusted client certificate).
    Failed(String),
}

/// Completes a server-side TLS handshake on `s` and records it in `log`; `None` if it failed.
pub(crate) async fn accept_tls(
    acceptor: &tokio_rustls::TlsAcceptor,
    s: tokio::net::TcpStream,
    log: &Mutex<Vec<Handshake>>,
) -> Option<tokio_rustls::server::TlsStream<tokio::net::TcpStream>> {
    match acceptor.accept(s).await {
        Ok(tls) => {
            let client_cert = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.to_vec());
            log.lock().unwrap().push(Handshake::Done { client_cert });
            Some(tls)
        }
        Err(e) => {
            log.lock().unwrap().push(Handshake::Failed(e.to_string()));
            None
        }
    }
}

/// What a backend answers.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    /// Reason phrase (default: a standard one, or "Whatever").
    pub reason: Option<String>,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Wait this long before writing the response.
    pub delay: Duration,
    /// Send the body with `Transfer-Encoding: chunked` (in several chunks).
    pub chunked: bool,
    /// Close the connection after the response (and send `Connection: close`).
    pub close: bool,
    /// Never answer; hold the connection open.
    pub hang: bool,
}

impl Reply {
    pub fn new(status: u16) -> Reply {
        Reply {
            status,
            reason: None,
            headers: vec![],
            body: vec![],
            delay: Duration::ZERO,
            chunked: false,
            close: false,
            hang: false,
        }
    }
    pub fn header(mut self, k: &str, v: &str) -> Reply {
        self.headers.push((k.to_string(), v.to_string()));
        self
    }
    pub fn body(mut self, b: impl AsRef<[u8]>) -> Reply {
        self.body = b.as_ref().to_vec();
        self
    }
    pub fn json(self, v: &serde_json::Value) -> Reply {
        self.header("Content-Type", "application/json")
            .body(v.to_string())
    }
    pub fn delay(mut self, d: Duration) -> Reply {
        self.delay = d;
        self
    }
    pub fn chunked(mut self) -> Reply {
        self.chunked = true;
        self
    }
    pub fn close(mut self) -> Reply {
        self.close = true;
        self
    }
    pub fn hang(mut self) -> Reply {
        self.hang = true;
        self
    }
    pub fn reason(mut self, r: &str) -> Reply {
        self.reason = Some(r.to_string());
        self
    }
}

pub type Handler = Arc<dyn Fn(&Recorded) -> Reply + Send + Sync>;

/// The echo reply: JSON `{"method","path","headers","body_len","body_fnv"}`,
/// `path` the raw request target, header names lower-cased, repeats joined by ",".
pub fn echo_reply(req: &Recorded) -> Reply {
    let mut headers = serde_json::Map::new();
    for (k, v) in &req.headers {
        let k = k.to_ascii_lowercase();
        match headers.get_mut(&k) {
            Some(serde_json::Value::String(s)) => {
                s.push(',');
                s.push_str(v);
            }
            _ => {
                headers.insert(k, serde_json::Value::String(v.clone()));
            }
        }
    }
    let v = serde_json::json!({
        "method": req.method,
        "path": req.target,
        "headers": headers,
        "body_len": req.body.len(),
        "body_fnv": fnv_hex(&req.body),
    });
    Reply::new(200).json(&v)
}

/// The error-target reply to `GET /<prefix>/{code}?url=<escaped>`: 200,
/// `text/plain`, `X-Error-Custom: yes`, body `{code} {decoded url}`.
pub fn error_target_reply(req: &Recorded) -> Reply {
    let (path, query) = req
        .target
        .split_once('?')
        .unwrap_or((req.target.as_str(), ""));
    let code = path.rsplit('/').next().unwrap_or("");
    let mut url = String::new();
    for pair in query.split('&') {
        if let Some(v) = pair.strip_prefix("url=") {
            url = percent_encoding::percent_decode_str(v)
                .decode_utf8_lossy()
                .into_owned();
        }
    }
    Reply::new(200)
        .header("Content-Type", "text/plain")
        .header("X-Error-Custom", "yes")
        .body(format!("{code} {url}"))
}

fn reason_for(code: u16) -> &'static str {
    match code {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        418 => "I'm a teapot",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Whatever",
    }
}

enum AnyListener {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener),
    Tls(std::net::TcpListener, Arc<rustls::ServerConfig>),
}

/// A running backend; stopped (its runtime dropped, connections closed) on drop.
pub struct Backend {
    /// TCP port (0 for a unix-socket backend).
    pub port: u16,
    pub unix_path: Option<PathBuf>,
    /// Serves HTTPS ([`Backend::start_tls`]).
    tls: bool,
    log: Arc<Mutex<Vec<Recorded>>>,
    handshakes: Arc<Mutex<Vec<Handshake>>>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Backend {
    /// A TCP backend on 127.0.0.1 answering with `handler`.
    pub fn start(handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) -> Backend {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind backend");
        let port = l.local_addr().unwrap().port();
        reserve_port(port);
        Self::run(AnyListener::Tcp(l), port, None, Arc::new(handler))
    }

    /// An HTTPS backend on 127.0.0.1 with the server side of `config` (see
    /// [`super::tls::server_config`]); every handshake is recorded ([`Backend::handshakes`]).
    pub fn start_tls(
        config: Arc<rustls::ServerConfig>,
        handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static,
    ) -> Backend {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind backend");
        let port = l.local_addr().unwrap().port();
        reserve_port(port);
        Self::run(AnyListener::Tls(l, config), port, None, Arc::new(handler))
    }

    /// A unix-socket backend at `path`.
    pub fn start_unix(
        path: &Path,
        handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static,
    ) -> Backend {
        let _ = std::fs::remove_file(path);
        let l = std::os::unix::net::UnixListener::bind(path).expect("bind unix backend");
        Self::run(
            AnyListener::Unix(l),
            0,
            Some(path.to_path_buf()),
            Arc::new(handler),
        )
    }

    /// JSON echo backend (see [`echo_reply`]).
    pub fn echo() -> Backend {
        Backend::start(echo_reply)
    }

    pub fn echo_unix(path: &Path) -> Backend {
        Backend::start_unix(path, echo_reply)
    }

    /// Always answers `reply`.
    pub fn fixed(reply: Reply) -> Backend {
        Backend::start(move |_| reply.clone())
    }

    /// Error-target backend (see [`error_target_reply`]).
    pub fn error_target() -> Backend {
        Backend::start(error_target_reply)
    }

    pub fn error_target_unix(path: &Path) -> Backend {
        Backend::start_unix(path, error_target_reply)
    }

    /// Accepts and reads requests but never answers.
    pub fn black_hole() -> Backend {
        Backend::start(|_| Reply::new(200).hang())
    }

    fn run(
        listener: AnyListener,
        port: u16,
        unix_path: Option<PathBuf>,
        handler: Handler,
    ) -> Backend {
        let log: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let handshakes: Arc<Mutex<Vec<Handshake>>> = Arc::default();
        let tls = matches!(listener, AnyListener::Tls(..));
        let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
        let log2 = log.clone();
        let handshakes2 = handshakes.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                match listener {
                    AnyListener::Tcp(l) => {
                        l.set_nonblocking(true).unwrap();
                        let l = tokio::net::TcpListener::from_std(l).unwrap();
                        loop {
                            tokio::select! {
                                _ = &mut stop_rx => break,
                                acc = l.accept() => if let Ok((s, _)) = acc {
                                    let _ = s.set_nodelay(true);
                                    tokio::spawn(serve_conn(s, handler.clone(), log2.clone()));
                                }
                            }
                        }
                    }
                    AnyListener::Unix(l) => {
                        l.set_nonblocking(true).unwrap();
                        let l = tokio::net::UnixListener::from_std(l).unwrap();
                        loop {
                            tokio::select! {
                                _ = &mut stop_rx => break,
                                acc = l.accept() => if let Ok((s, _)) = acc {
                                    tokio::spawn(serve_conn(s, handler.clone(), log2.clone()));
                                }
                            }
                        }
                    }
                    AnyListener::Tls(l, config) => {
                        l.set_nonblocking(true).unwrap();
                        let l = tokio::net::TcpListener::from_std(l).unwrap();
                        let acceptor = tokio_rustls::TlsAcceptor::from(config);
                        loop {
                            tokio::select! {
                                _ = &mut stop_rx => break,
                                acc = l.accept() => if let Ok((s, _)) = acc {
                                    let _ = s.set_nodelay(true);
                                    let (acceptor, handler, log, hs) =
                                        (acceptor.clone(), handler.clone(), log2.clone(), handshakes2.clone());
                                    tokio::spawn(async move {
                                        if let Some(tls) = accept_tls(&acceptor, s, &hs).await {
                                            serve_conn(tls, handler, log).await;
                                        }
                                    });
                                }
                            }
                        }
                    }
                }
            });
            // Dropping the runtime drops every connection task.
        });
        Backend {
            port,
            unix_path,
            tls,
            log,
            handshakes,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:<port>` (`https://` for a TLS backend)
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Every TLS handshake so far, in order (empty for a plain backend).
    pub fn handshakes(&self) -> Vec<Handshake> {
        self.handshakes.lock().unwrap().clone()
    }

    /// Waits until at least `n` TLS handshakes (completed or failed) happened.
    pub fn wait_handshakes(&self, n: usize, timeout: Duration) -> bool {
        super::wait_until(timeout, || self.handshakes.lock().unwrap().len() >= n)
    }

    /// `http+unix://<percent-encoded socket path>`
    pub fn unix_url(&self) -> String {
        let p = self.unix_path.as_ref().expect("not a unix backend");
        format!(
            "http+unix://{}",
            super::encode_component(&p.to_string_lossy())
        )
    }

    pub fn addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.log.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.log.lock().unwrap().len()
    }

    pub fn last(&self) -> Option<Recorded> {
        self.log.lock().unwrap().last().cloned()
    }

    pub fn clear(&self) {
        self.log.lock().unwrap().clear();
    }

    /// Waits until at least `n` requests were received.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.count() >= n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.count() >= n
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(p) = &self.unix_path {
            let _ = std::fs::remove_file(p);
        }
    }
}

async fn read_line<S: AsyncRead + Unpin>(r: &mut BufReader<S>) -> std::io::Result<Option<String>> {
    let mut line = Vec::new();
    let n = r.read_until(b'\n', &mut line).await?;
    if n == 0 {
        return Ok(None);
    }
    while line.last() == Some(&b'\n') || line.last() == Some(&b'\r') {
        line.pop();
    }
    Ok(Some(String::from_utf8_lossy(&line).into_owned()))
}

fn bad(msg: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.to_string())
}

async fn read_request<S: AsyncRead + AsyncWrite + Unpin>(
    r: &mut BufReader<S>,
) -> std::io::Result<Option<Recorded>> {
    let first = match read_line(r).await? {
        Some(l) => l,
        None => return Ok(None),
    };
    let mut parts = first.split(' ');
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let version = parts.next().unwrap_or("").to_string();
    let mut headers = Vec::new();
    loop {
        let line = read_line(r).await?.ok_or_else(|| bad("eof in headers"))?;
        if line.is_empty() {
            break;
        }
        let (k, v) = line.split_once(':').ok_or_else(|| bad("bad header"))?;
        headers.push((k.to_string(), v.trim().to_string()));
    }
    let mut req = Recorded {
        method,
        target,
        version,
        headers,
        body: vec![],
    };
    if req
        .header("expect")
        .map(|v| v.eq_ignore_ascii_case("100-continue"))
        .unwrap_or(false)
    {
        r.get_mut()
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await?;
    }
    let chunked = req
        .header("transfer-encoding")
        .map(|v| v.to_ascii_lowercase().contains("chunked"))
        .unwrap_or(false);
    if chunked {
        let mut body = Vec::new();
        loop {
            let line = read_line(r)
                .await?
                .ok_or_else(|| bad("eof in chunk size"))?;
            let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| bad("bad chunk size"))?;
            if size == 0 {
                loop {
                    let t = read_line(r).await?.ok_or_else(|| bad("eof in trailers"))?;
                    if t.is_empty() {
                        break;
                    }
                }
                break;
            }
            let start = body.len();
            body.resize(start + size, 0);
            r.read_exact(&mut body[start..]).await?;
            read_line(r).await?;
        }
        req.body = body;
    } else if let Some(cl) = req.header("content-length") {
        let n: usize = cl
            .split(',')
            .next()
            .unwrap_or("")
            .trim()
            .parse()
            .map_err(|_| bad("bad content-length"))?;
        let mut body = vec![0u8; n];
        r.read_exact(&mut body).await?;
        req.body = body;
    }
    Ok(Some(req))
}

async fn write_reply<S: AsyncWrite + Unpin>(
    w: &mut S,
    reply: &Reply,
    close: bool,
) -> std::io::Result<()> {
    let reason = reply
        .reason
        .clone()
        .unwrap_or_else(|| reason_for(reply.status).to_string());
    let mut head = format!("HTTP/1.1 {} {}\r\n", reply.status, reason);
    let has = |n: &str| reply.headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(n));
    for (k, v) in &reply.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    let bodiless = reply.status == 204 || reply.status == 304 || (100..200).contains(&reply.status);
    if reply.chunked && !bodiless {
        head.push_str("Transfer-Encoding: chunked\r\n");
    } else if !has("content-length") && !bodiless {
        head.push_str(&format!("Content-Length: {}\r\n", reply.body.len()));
    }
    if close && !has("connection") {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    w.write_all(head.as_bytes()).await?;
    if !bodiless {
        if reply.chunked {
            // A few uneven chunks, flushed separately.
            let n = reply.body.len();
            let cuts = [0, n / 7, n / 2, n];
            for win in cuts.windows(2) {
                let c = &reply.body[win[0]..win[1]];
                if c.is_empty() {
                    continue;
                }
                w.write_all(format!("{:x}\r\n", c.len()).as_bytes()).await?;
                w.write_all(c).await?;
                w.write_all(b"\r\n").await?;
                w.flush().await?;
            }
            w.write_all(b"0\r\n\r\n").await?;
        } else {
            w.write_all(&reply.body).await?;
        }
    }
    w.flush().await
}

async fn serve_conn<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    handler: Handler,
    log: Arc<Mutex<Vec<Recorded>>>,
) {
    let mut r = BufReader::with_capacity(65536, stream);
    loop {
        let req = match read_request(&mut r).await {
            Ok(Some(req)) => req,
            _ => return,
        };
        log.lock().unwrap().push(req.clone());
        let reply = handler(&req);
        if reply.hang {
            let mut buf = [0u8; 4096];
            loop {
                match r.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        }
        if !reply.delay.is_zero() {
            tokio::time::sleep(reply.delay).await;
        }
        let client_close = req
            .header("connection")
            .map(|v| v.to_ascii_lowercase().contains("close"))
            .unwrap_or(false)
            || req.version == "HTTP/1.0";
        let close = reply.close || client_close;
        if write_reply(r.get_mut(), &reply, close).await.is_err() {
            return;
        }
        if close {
            let _ = r.get_mut().shutdown().await;
            return;
        }
    }
}

/// A TCP listener whose accept queue is full: connects to it hang in SYN-SENT,
/// like a black-holed address, but on 127.0.0.1.
pub struct BlackHoleListener {
    pub port: u16,
    _sock: socket2::Socket,
    _fillers: Vec<std::net::TcpStream>,
}

impl BlackHoleListener {
    pub fn new() -> BlackHoleListener {
        use socket2::{Domain, Socket, Type};
        let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        let addr: SocketAddr = ([127, 0, 0, 1], 0).into();
        sock.bind(&addr.into()).unwrap();
        sock.listen(0).unwrap();
        let port = sock.local_addr().unwrap().as_socket().unwrap().port();
        reserve_port(port);
        let mut fillers = Vec::new();
        let target: SocketAddr = ([127, 0, 0, 1], port).into();
        for _ in 0..8 {
            match std::net::TcpStream::connect_timeout(&target, Duration::from_millis(300)) {
                Ok(s) => fillers.push(s),
                Err(_) => break,
            }
        }
        BlackHoleListener {
            port,
            _sock: sock,
            _fillers: fillers,
        }
    }

    /// True if a fresh connect does not complete within `d` (the queue is full).
    pub fn connect_hangs(&self, d: Duration) -> bool {
        let target: SocketAddr = ([127, 0, 0, 1], self.port).into();
        std::net::TcpStream::connect_timeout(&target, d).is_err()
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}
