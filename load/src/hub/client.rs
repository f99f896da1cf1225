//! One simulated browser's HTTP side: a keep-alive HTTP/1.1 connection to the hub's public
//! URL, a path-aware cookie jar, redirects followed on the same origin, and whole response
//! bodies (the hub's pages and JSON are read, unlike the other modes' discarded bodies).

use std::io;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::conn::{Conn, Connector};

/// Largest response body kept (JupyterLab's page is ~40 KiB; the API's JSON is small).
const MAX_BODY: usize = 16 * 1024 * 1024;
const MAX_REDIRECTS: usize = 10;

/// Why a request failed, short enough to group failures by ("status 503", "timeout", ...).
#[derive(Debug, Clone)]
pub struct Failure(pub String);

impl Failure {
    pub fn new(s: impl Into<String>) -> Failure {
        Failure(s.into())
    }
    fn io(e: &io::Error) -> Failure {
        match e.kind() {
            io::ErrorKind::TimedOut => Failure::new("timeout"),
            io::ErrorKind::ConnectionRefused => Failure::new("connection refused"),
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => {
                Failure::new("connection reset")
            }
            io::ErrorKind::UnexpectedEof => Failure::new("connection closed"),
            _ => Failure::new(format!("io: {e}")),
        }
    }
}

pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Result<serde_json::Value, Failure> {
        serde_json::from_slice(&self.body).map_err(|_| Failure::new("bad JSON"))
    }

    /// `Err("status N")` unless the status is one of `ok`.
    pub fn expect(self, ok: &[u16]) -> Result<Resp, Failure> {
        if ok.contains(&self.status) {
            Ok(self)
        } else {
            Err(Failure::new(format!("status {}", self.status)))
        }
    }
}

struct Cookie {
    name: String,
    value: String,
    path: String,
}

/// The cookies of one host (this tool talks to one origin).
#[derive(Default)]
pub struct Jar {
    cookies: Vec<Cookie>,
}

fn path_matches(req: &str, cpath: &str) -> bool {
    req == cpath
        || (req.starts_with(cpath) && (cpath.ends_with('/') || req[cpath.len()..].starts_with('/')))
}

impl Jar {
    /// Stores one `Set-Cookie` (expired or emptied cookies are removed).
    fn set(&mut self, header: &str, req_path: &str) {
        let mut parts = header.split(';');
        let Some((name, value)) = parts.next().and_then(|nv| nv.split_once('=')) else {
            return;
        };
        let (name, value) = (
            name.trim().to_string(),
            value.trim().trim_matches('"').to_string(),
        );
        // RFC 6265's default path: the request path up to its last '/'.
        let mut path = match req_path.rfind('/') {
            Some(0) | None => "/".to_string(),
            Some(i) => req_path[..i].to_string(),
        };
        let mut expired = value.is_empty();
        for attr in parts {
            let (k, v) = attr.split_once('=').unwrap_or((attr, ""));
            let (k, v) = (k.trim(), v.trim());
            if k.eq_ignore_ascii_case("path") && v.starts_with('/') {
                path = v.to_string();
            } else if k.eq_ignore_ascii_case("max-age") {
                expired |= v.parse::<i64>().map(|s| s <= 0).unwrap_or(false);
            } else if k.eq_ignore_ascii_case("expires") {
                // Servers clear cookies with a date in 1970; any other date is in the future
                // for a session this short.
                expired |= v.contains("1970");
            }
        }
        self.cookies.retain(|c| !(c.name == name && c.path == path));
        if !expired {
            self.cookies.push(Cookie { name, value, path });
        }
    }

    /// The Cookie header value for `path` (most specific paths first, as browsers send).
    pub fn header_for(&self, path: &str) -> String {
        let path = path.split('?').next().unwrap_or(path);
        let mut m: Vec<&Cookie> = self
            .cookies
            .iter()
            .filter(|c| path_matches(path, &c.path))
            .collect();
        m.sort_by_key(|c| std::cmp::Reverse(c.path.len()));
        m.iter()
            .map(|c| format!("{}={}", c.name, c.value))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// The value of cookie `name` set for exactly `path`.
    pub fn get(&self, name: &str, path: &str) -> Option<&str> {
        self.cookies
            .iter()
            .find(|c| c.name == name && c.path == path)
            .map(|c| c.value.as_str())
    }
}

/// `application/x-www-form-urlencoded` value.
pub fn form_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A user name as one URL path segment (JupyterHub's escaping keeps `@` and `~`).
pub fn path_escape(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'@' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

pub struct Client {
    pub connector: Connector,
    pub jar: Jar,
    /// `Authorization` value sent on every request and websocket upgrade, if any.
    pub authorization: Option<String>,
    stream: Option<BufReader<Conn>>,
}

impl Client {
    pub fn new(connector: Connector, authorization: Option<String>) -> Client {
        Client {
            connector,
            jar: Jar::default(),
            authorization,
            stream: None,
        }
    }

    pub fn timeout(&self) -> Duration {
        self.connector.timeout
    }

    /// One request; a keep-alive connection is reused, and opened again if it was closed.
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<Resp, Failure> {
        let t = self.connector.target.clone();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: hubgate-load\r\n",
            t.authority
        );
        let cookies = self.jar.header_for(path);
        if !cookies.is_empty() {
            head.push_str(&format!("Cookie: {cookies}\r\n"));
        }
        if let Some(a) = &self.authorization {
            head.push_str(&format!("Authorization: {a}\r\n"));
        }
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        let body = match body {
            Some((ctype, b)) => {
                head.push_str(&format!(
                    "Content-Type: {ctype}\r\nContent-Length: {}\r\n",
                    b.len()
                ));
                b
            }
            None if method != "GET" && method != "HEAD" => {
                head.push_str("Content-Length: 0\r\n");
                Vec::new()
            }
            None => Vec::new(),
        };
        head.push_str("\r\n");
        let mut req = head.into_bytes();
        req.extend_from_slice(&body);

        // A reused connection may have been closed by the server while idle: one retry on a
        // fresh connection if nothing came back.
        for attempt in 0..2 {
            let reused = self.stream.is_some();
            if self.stream.is_none() {
                let c = self
                    .connector
                    .connect()
                    .await
                    .map_err(|e| Failure::io(&e))?;
                self.stream = Some(BufReader::new(c));
            }
            let Some(s) = self.stream.as_mut() else {
                return Err(Failure::new("no connection"));
            };
            let r = tokio::time::timeout(self.connector.timeout, exchange(s, &req, method)).await;
            match r {
                Ok(Ok((resp, close))) => {
                    if close {
                        self.stream = None;
                    }
                    for (k, v) in &resp.headers {
                        if k.eq_ignore_ascii_case("set-cookie") {
                            self.jar.set(v, path);
                        }
                    }
                    return Ok(resp);
                }
                Ok(Err(e)) => {
                    self.stream = None;
                    let retry = reused
                        && attempt == 0
                        && matches!(
                            e.kind(),
                            io::ErrorKind::UnexpectedEof
                                | io::ErrorKind::ConnectionReset
                                | io::ErrorKind::BrokenPipe
                        );
                    if !retry {
                        return Err(Failure::io(&e));
                    }
                }
                Err(_) => {
                    self.stream = None;
                    return Err(Failure::new("timeout"));
                }
            }
        }
        Err(Failure::new("connection closed"))
    }

    /// GET `path`, following redirects on this origin; the final response and its path.
    pub async fn get_following(&mut self, path: &str) -> Result<(Resp, String), Failure> {
        let mut path = path.to_string();
        for _ in 0..=MAX_REDIRECTS {
            let r = self
                .send("GET", &path, &[("Accept", "text/html,*/*".into())], None)
                .await?;
            if !matches!(r.status, 301 | 302 | 303 | 307 | 308) {
                return Ok((r, path));
            }
            let loc = r
                .header("location")
                .ok_or_else(|| Failure::new(format!("status {} without Location", r.status)))?;
            path = self.local_path(loc, &path)?;
        }
        Err(Failure::new("too many redirects"))
    }

    /// A Location as a path on this origin (absolute URLs elsewhere are refused: a login
    /// page of another site cannot be simulated here).
    pub fn local_path(&self, loc: &str, from: &str) -> Result<String, Failure> {
        if let Some((_, rest)) = loc.split_once("://") {
            let t = &self.connector.target;
            let (auth, p) = match rest.find('/') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, "/"),
            };
            if !auth.eq_ignore_ascii_case(&t.authority) {
                return Err(Failure::new(format!("redirect to another site ({auth})")));
            }
            return Ok(p.to_string());
        }
        if loc.starts_with('/') {
            return Ok(loc.to_string());
        }
        let dir = &from[..from.rfind('/').map(|i| i + 1).unwrap_or(0)];
        Ok(format!("{dir}{loc}"))
    }
}

async fn exchange(s: &mut BufReader<Conn>, req: &[u8], method: &str) -> io::Result<(Resp, bool)> {
    s.get_mut().write_all(req).await?;
    loop {
        let (resp, close) = read_response(s, method == "HEAD").await?;
        // 1xx interim responses (100 Continue) precede the real one.
        if (100..200).contains(&resp.status) {
            continue;
        }
        return Ok((resp, close));
    }
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

async fn read_line(s: &mut BufReader<Conn>) -> io::Result<String> {
    let mut line = String::new();
    let n = (&mut *s).take(64 * 1024).read_line(&mut line).await?;
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed",
        ));
    }
    if !line.ends_with('\n') {
        return Err(bad("header line too long"));
    }
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

async fn read_response(s: &mut BufReader<Conn>, head_only: bool) -> io::Result<(Resp, bool)> {
    let status_line = read_line(s).await?;
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    let status: u16 = parts
        .next()
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let mut headers = Vec::new();
    loop {
        let l = read_line(s).await?;
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
        if headers.len() > 200 {
            return Err(bad("too many headers"));
        }
    }
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.to_ascii_lowercase())
    };
    let mut close = version == "HTTP/1.0";
    match get("connection").as_deref() {
        Some(v) if v.contains("close") => close = true,
        Some(v) if v.contains("keep-alive") => close = false,
        _ => {}
    }
    let mut body = Vec::new();
    let no_body = head_only || status == 204 || status == 304 || (100..200).contains(&status);
    if !no_body {
        if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            loop {
                let line = read_line(s).await?;
                let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                    .map_err(|_| bad("bad chunk size"))?;
                if size == 0 {
                    while !read_line(s).await?.is_empty() {}
                    break;
                }
                if body.len() + size > MAX_BODY {
                    return Err(bad("response body too large"));
                }
                let at = body.len();
                body.resize(at + size, 0);
                s.read_exact(&mut body[at..]).await?;
                let mut crlf = [0u8; 2];
                s.read_exact(&mut crlf).await?;
            }
        } else if let Some(n) = get("content-length") {
            let n: usize = n.trim().parse().map_err(|_| bad("bad Content-Length"))?;
            if n > MAX_BODY {
                return Err(bad("response body too large"));
            }
            body.resize(n, 0);
            s.read_exact(&mut body).await?;
        } else {
            (&mut *s)
                .take(MAX_BODY as u64)
                .read_to_end(&mut body)
                .await?;
            close = true;
        }
    }
    Ok((
        Resp {
            status,
            headers,
            body,
        },
        close,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jar_paths_and_expiry() {
        let mut j = Jar::default();
        j.set("_xsrf=a; Path=/hub/; HttpOnly", "/hub/login");
        j.set("_xsrf=b; Path=/user/al/", "/user/al/lab");
        j.set("jupyterhub-session-id=s; Path=/", "/hub/login");
        j.set("nopath=n", "/hub/api/x");
        assert_eq!(
            j.header_for("/hub/api/users"),
            "nopath=n; _xsrf=a; jupyterhub-session-id=s"
        );
        assert_eq!(
            j.header_for("/user/al/api/kernels?x=1"),
            "_xsrf=b; jupyterhub-session-id=s"
        );
        assert_eq!(j.header_for("/user/alice/lab"), "jupyterhub-session-id=s");
        assert_eq!(j.get("_xsrf", "/user/al/"), Some("b"));
        j.set("_xsrf=; Path=/hub/; Max-Age=0", "/hub/logout");
        assert_eq!(j.get("_xsrf", "/hub/"), None);
        j.set(
            "jupyterhub-session-id=\"\"; expires=Thu, 01 Jan 1970 00:00:00 GMT; Path=/",
            "/hub/logout",
        );
        assert_eq!(j.header_for("/hub/"), "");
    }

    #[test]
    fn escapes() {
        assert_eq!(form_encode("a b&c=é"), "a+b%26c%3D%C3%A9");
        assert_eq!(path_escape("has@ x/秀"), "has@%20x%2F%E7%A7%80");
    }
}
