//! A raw HTTP/1.1 client: exact request bytes out, exact status line and headers
//! (in order, original case) back.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// Default socket read/write timeout for test clients.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);

pub trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

#[derive(Clone, Debug)]
enum HostHeader {
    Default,
    Omit,
    Value(String),
}

/// A request, serialised verbatim.
#[derive(Clone, Debug)]
pub struct Req {
    pub method: String,
    /// The request target exactly as sent (`/a%20b?x=1`).
    pub target: String,
    pub version: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    host: HostHeader,
    auto_length: bool,
}

impl Req {
    pub fn new(method: &str, target: &str) -> Req {
        Req {
            method: method.to_string(),
            target: target.to_string(),
            version: "HTTP/1.1".to_string(),
            headers: vec![],
            body: vec![],
            host: HostHeader::Default,
            auto_length: true,
        }
    }

    pub fn get(target: &str) -> Req {
        Req::new("GET", target)
    }

    pub fn post(target: &str, body: impl AsRef<[u8]>) -> Req {
        Req::new("POST", target).body(body)
    }

    pub fn header(mut self, k: &str, v: &str) -> Req {
        self.headers.push((k.to_string(), v.to_string()));
        self
    }

    pub fn body(mut self, b: impl AsRef<[u8]>) -> Req {
        self.body = b.as_ref().to_vec();
        self
    }

    /// Sends `body` with `Transfer-Encoding: chunked` in chunks of `chunk` bytes.
    pub fn chunked_body(mut self, b: &[u8], chunk: usize) -> Req {
        let mut out = Vec::with_capacity(b.len() + 64);
        for c in b.chunks(chunk.max(1)) {
            out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
            out.extend_from_slice(c);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n\r\n");
        self.body = out;
        self.headers
            .push(("Transfer-Encoding".into(), "chunked".into()));
        self
    }

    /// `Host: v` instead of the connection's default.
    pub fn host(mut self, v: &str) -> Req {
        self.host = HostHeader::Value(v.to_string());
        self
    }

    /// Sends no Host header at all.
    pub fn no_host(mut self) -> Req {
        self.host = HostHeader::Omit;
        self
    }

    pub fn version(mut self, v: &str) -> Req {
        self.version = v.to_string();
        self
    }

    /// Don't add Content-Length automatically.
    pub fn no_auto_length(mut self) -> Req {
        self.auto_length = false;
        self
    }

    fn has(&self, name: &str) -> bool {
        self.headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case(name))
    }

    pub fn to_bytes(&self, default_host: &str) -> Vec<u8> {
        let mut head = format!("{} {} {}\r\n", self.method, self.target, self.version);
        if !self.has("host") {
            match &self.host {
                HostHeader::Default => head.push_str(&format!("Host: {default_host}\r\n")),
                HostHeader::Value(v) => head.push_str(&format!("Host: {v}\r\n")),
                HostHeader::Omit => {}
            }
        }
        for (k, v) in &self.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        let wants_length =
            !self.body.is_empty() || matches!(self.method.as_str(), "POST" | "PUT" | "PATCH");
        if self.auto_length
            && wants_length
            && !self.has("content-length")
            && !self.has("transfer-encoding")
        {
            head.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(&self.body);
        out
    }
}

/// A parsed response.
#[derive(Clone, Debug)]
pub struct Response {
    /// e.g. `HTTP/1.1 404 Not Found` (without CRLF).
    pub status_line: String,
    pub version: String,
    pub status: u16,
    /// Everything after the code (may be empty: `HTTP/1.1 404`).
    pub reason: String,
    /// In order, original case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The body arrived with `Transfer-Encoding: chunked`.
    pub chunked: bool,
}

impl Response {
    /// First value of a header (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a header, in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response body is not JSON ({e}): {}", self.describe()))
    }

    /// The content-type's media type, lower-cased, without parameters.
    pub fn media_type(&self) -> Option<String> {
        self.header("content-type").map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
    }

    /// Status line, headers and (truncated) body, for assertion messages.
    pub fn describe(&self) -> String {
        let mut s = format!("{}\n", self.status_line);
        for (k, v) in &self.headers {
            s.push_str(&format!("{k}: {v}\n"));
        }
        let body = self.text();
        if body.len() > 600 {
            let mut cut = 600;
            while !body.is_char_boundary(cut) {
                cut -= 1;
            }
            s.push_str(&format!("\n{}… ({} bytes)", &body[..cut], body.len()));
        } else {
            s.push_str(&format!("\n{body}"));
        }
        s
    }
}

enum Ctl {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// One client connection (keep-alive: send several requests in turn).
pub struct Conn {
    r: BufReader<Box<dyn Stream>>,
    ctl: Ctl,
    /// Host header sent by default.
    pub host: String,
}

impl Conn {
    pub fn tcp(port: u16) -> io::Result<Conn> {
        let s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.set_write_timeout(Some(IO_TIMEOUT))?;
        let ctl = Ctl::Tcp(s.try_clone()?);
        Ok(Conn {
            r: BufReader::with_capacity(65536, Box::new(s)),
            ctl,
            host: format!("127.0.0.1:{port}"),
        })
    }

    pub fn unix(path: &Path) -> io::Result<Conn> {
        let s = UnixStream::connect(path)?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.set_write_timeout(Some(IO_TIMEOUT))?;
        let ctl = Ctl::Unix(s.try_clone()?);
        Ok(Conn {
            r: BufReader::with_capacity(65536, Box::new(s)),
            ctl,
            host: "localhost".to_string(),
        })
    }

    /// Wraps an already connected stream (e.g. TLS over `tcp`); `tcp` is the
    /// underlying socket, used for timeouts and shutdown.
    pub fn wrap(stream: Box<dyn Stream>, tcp: TcpStream, host: &str) -> Conn {
        Conn {
            r: BufReader::with_capacity(65536, stream),
            ctl: Ctl::Tcp(tcp),
            host: host.to_string(),
        }
    }

    /// The underlying stream (e.g. to hand to a websocket client). Panics if
    /// response bytes are already buffered.
    pub fn into_stream(self) -> Box<dyn Stream> {
        assert!(
            self.r.buffer().is_empty(),
            "unread bytes in the connection buffer"
        );
        self.r.into_inner()
    }

    pub fn set_read_timeout(&self, d: Duration) {
        let _ = match &self.ctl {
            Ctl::Tcp(s) => s.set_read_timeout(Some(d)),
            Ctl::Unix(s) => s.set_read_timeout(Some(d)),
        };
    }

    pub fn shutdown_write(&self) {
        let _ = match &self.ctl {
            Ctl::Tcp(s) => s.shutdown(Shutdown::Write),
            Ctl::Unix(s) => s.shutdown(Shutdown::Write),
        };
    }

    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        let w = self.r.get_mut();
        w.write_all(bytes)?;
        w.flush()
    }

    pub fn send(&mut self, req: &Req) -> io::Result<()> {
        let bytes = req.to_bytes(&self.host);
        self.send_raw(&bytes)
    }

    pub fn request(&mut self, req: &Req) -> io::Result<Response> {
        self.send(req)?;
        self.read_response(req.method == "HEAD")
    }

    fn read_line(&mut self) -> io::Result<String> {
        let mut line = Vec::new();
        let n = self.r.read_until(b'\n', &mut line)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before a complete response head",
            ));
        }
        while line.last() == Some(&b'\n') || line.last() == Some(&b'\r') {
            line.pop();
        }
        Ok(String::from_utf8_lossy(&line).into_owned())
    }

    /// Reads one response (skipping interim 1xx other than 101).
    pub fn read_response(&mut self, head_request: bool) -> io::Result<Response> {
        loop {
            let status_line = self.read_line()?;
            let mut parts = status_line.splitn(3, ' ');
            let version = parts.next().unwrap_or("").to_string();
            let status: u16 = parts.next().and_then(|c| c.parse().ok()).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad status line {status_line:?}"),
                )
            })?;
            let reason = parts.next().unwrap_or("").to_string();
            let mut headers = Vec::new();
            loop {
                let line = self.read_line()?;
                if line.is_empty() {
                    break;
                }
                match line.split_once(':') {
                    Some((k, v)) => headers.push((k.to_string(), v.trim().to_string())),
                    None => {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("bad header line {line:?}"),
                        ))
                    }
                }
            }
            if (100..200).contains(&status) && status != 101 {
                continue;
            }
            let mut resp = Response {
                status_line,
                version,
                status,
                reason,
                headers,
                body: vec![],
                chunked: false,
            };
            let te_chunked = resp
                .header("transfer-encoding")
                .map(|v| v.to_ascii_lowercase().contains("chunked"))
                .unwrap_or(false);
            if head_request || status == 204 || status == 304 || status == 101 {
                return Ok(resp);
            }
            if te_chunked {
                resp.chunked = true;
                resp.body = self.read_chunked()?;
            } else if let Some(cl) = resp.header("content-length") {
                let n: usize = cl.parse().map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("bad content-length {cl:?}"),
                    )
                })?;
                let mut body = vec![0u8; n];
                self.r.read_exact(&mut body)?;
                resp.body = body;
            } else {
                let mut body = Vec::new();
                match self.r.read_to_end(&mut body) {
                    Ok(_) => {}
                    // rustls reports a missing close_notify as UnexpectedEof.
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {}
                    Err(e) => return Err(e),
                }
                resp.body = body;
            }
            return Ok(resp);
        }
    }

    fn read_chunked(&mut self) -> io::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line = self.read_line()?;
            let size_str = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_str, 16).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad chunk size {line:?}"),
                )
            })?;
            if size == 0 {
                // trailers
                loop {
                    if self.read_line()?.is_empty() {
                        return Ok(body);
                    }
                }
            }
            let start = body.len();
            body.resize(start + size, 0);
            self.r.read_exact(&mut body[start..])?;
            let crlf = self.read_line()?;
            if !crlf.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "chunk not followed by CRLF",
                ));
            }
        }
    }

    /// Reads raw bytes until EOF/reset or `timeout`. Returns (bytes, closed).
    pub fn read_until_close(&mut self, timeout: Duration) -> (Vec<u8>, bool) {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return (out, false);
            }
            self.set_read_timeout(left.max(Duration::from_millis(1)));
            match self.r.read(&mut buf) {
                Ok(0) => return (out, true),
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return (out, false)
                }
                Err(_) => return (out, true),
            }
        }
    }

    /// True if the peer closes the connection (EOF or reset) within `timeout`,
    /// with no further bytes arriving.
    pub fn wait_closed(&mut self, timeout: Duration) -> bool {
        let (bytes, closed) = self.read_until_close(timeout);
        closed && bytes.is_empty()
    }
}

/// One request on a fresh TCP connection to 127.0.0.1:`port`.
pub fn try_http(port: u16, req: &Req) -> io::Result<Response> {
    let mut c = Conn::tcp(port)?;
    c.request(req)
}

/// Like [`try_http`] but panics with context on I/O errors.
pub fn http(port: u16, req: &Req) -> Response {
    try_http(port, req)
        .unwrap_or_else(|e| panic!("{} {} on port {port}: {e}", req.method, req.target))
}

pub fn get(port: u16, path: &str) -> Response {
    http(port, &Req::get(path))
}
