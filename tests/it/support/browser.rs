//! A browser-ish HTTP client for login flows: URL and form helpers, `Set-Cookie`
//! parsing, a cookie jar, and a [`Browser`] that follows redirects across hubgate and the
//! OpenID provider.

use super::client::{Conn, Req, Response};

/// application/x-www-form-urlencoded body / query string.
pub fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                super::encode_component(k),
                super::encode_component(v)
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// Percent-decodes (no `+` handling).
pub fn pct_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// Query parameters of a URL or path (`+` is a space), decoded.
pub fn query_params(url: &str) -> Vec<(String, String)> {
    let q = match url.split_once('?') {
        Some((_, q)) => q.split('#').next().unwrap_or(""),
        None => return vec![],
    };
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                pct_decode(&k.replace('+', " ")),
                pct_decode(&v.replace('+', " ")),
            )
        })
        .collect()
}

pub fn query_param(url: &str, name: &str) -> Option<String> {
    query_params(url)
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

/// Splits `http://127.0.0.1:PORT/path?q` into (port, "/path?q").
pub fn split_url(url: &str) -> (u16, String) {
    let rest = url
        .strip_prefix("http://127.0.0.1:")
        .unwrap_or_else(|| panic!("not a loopback http URL: {url}"));
    let (port, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/".to_string()),
    };
    (port.parse().expect("port"), path)
}

// ====================================================================== cookie jar

#[derive(Clone, Debug)]
pub struct Cookie {
    pub name: String,
    pub value: String,
    pub path: String,
    /// Attributes as sent, lower-cased names (`secure`, `httponly`, `samesite=lax`, ...).
    pub attrs: Vec<String>,
}

/// Parses one `Set-Cookie` value.
pub fn parse_set_cookie(v: &str) -> Cookie {
    let mut parts = v.split(';');
    let nv = parts.next().unwrap_or("").trim();
    let (name, value) = nv.split_once('=').unwrap_or((nv, ""));
    let mut path = "/".to_string();
    let mut attrs = vec![];
    for a in parts {
        let a = a.trim();
        if let Some(p) = a
            .strip_prefix("path=")
            .or_else(|| a.strip_prefix("Path="))
            .or_else(|| a.strip_prefix("PATH="))
        {
            path = p.to_string();
        }
        attrs.push(a.to_ascii_lowercase());
    }
    Cookie {
        name: name.to_string(),
        value: value.to_string(),
        path,
        attrs,
    }
}

impl Cookie {
    pub fn attr(&self, name: &str) -> Option<String> {
        let name = name.to_ascii_lowercase();
        self.attrs.iter().find_map(|a| {
            let (k, v) = a.split_once('=').unwrap_or((a.as_str(), ""));
            (k.trim() == name).then(|| v.trim().to_string())
        })
    }
    pub fn has(&self, flag: &str) -> bool {
        self.attr(flag).is_some()
    }
    /// Max-Age=0, or an Expires in the past, or an empty value.
    pub fn is_removal(&self) -> bool {
        self.value.is_empty()
            || self
                .attr("max-age")
                .map(|v| v.trim() == "0" || v.starts_with('-'))
                .unwrap_or(false)
            || self
                .attr("expires")
                .map(|v| v.contains("1970"))
                .unwrap_or(false)
    }
}

/// A cookie jar per port that ignores `Secure` (tests talk plain http to loopback) and
/// honours `Path`.
#[derive(Default, Clone, Debug)]
pub struct Jar {
    cookies: Vec<(u16, Cookie)>,
}

impl Jar {
    pub fn store(&mut self, port: u16, resp: &Response) {
        for v in resp.header_all("set-cookie") {
            let c = parse_set_cookie(v);
            self.cookies
                .retain(|(p, o)| !(*p == port && o.name == c.name && o.path == c.path));
            if !c.is_removal() {
                self.cookies.push((port, c));
            }
        }
    }

    pub fn header_for(&self, port: u16, path: &str) -> Option<String> {
        let path = path.split('?').next().unwrap_or("/");
        let mut matching: Vec<&Cookie> = self
            .cookies
            .iter()
            .filter(|(p, c)| {
                *p == port
                    && (c.path == "/"
                        || path == c.path
                        || path.starts_with(&format!("{}/", c.path.trim_end_matches('/'))))
            })
            .map(|(_, c)| c)
            .collect();
        matching.sort_by_key(|c| std::cmp::Reverse(c.path.len()));
        if matching.is_empty() {
            None
        } else {
            Some(
                matching
                    .iter()
                    .map(|c| format!("{}={}", c.name, c.value))
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        }
    }

    pub fn get(&self, port: u16, name: &str) -> Option<Cookie> {
        self.cookies
            .iter()
            .find(|(p, c)| *p == port && c.name == name)
            .map(|(_, c)| c.clone())
    }

    pub fn remove(&mut self, port: u16, name: &str) {
        self.cookies
            .retain(|(p, c)| !(*p == port && c.name == name));
    }
}

/// A minimal browser: sends requests to `http://127.0.0.1:<port>` URLs with the
/// jar's cookies and records the cookies it gets back. Redirects are never followed
/// automatically.
#[derive(Default)]
pub struct Browser {
    pub jar: Jar,
    /// Extra headers on every request (e.g. `Accept: text/html`).
    pub headers: Vec<(String, String)>,
}

impl Browser {
    pub fn new() -> Browser {
        Browser::default()
    }

    pub fn html() -> Browser {
        Browser {
            jar: Jar::default(),
            headers: vec![(
                "Accept".into(),
                "text/html,application/xhtml+xml,*/*;q=0.8".into(),
            )],
        }
    }

    pub fn send(&mut self, port: u16, mut req: Req) -> Response {
        for (k, v) in &self.headers {
            req = req.header(k, v);
        }
        if let Some(c) = self.jar.header_for(port, &req.target) {
            req = req.header("Cookie", &c);
        }
        let mut conn = Conn::tcp(port).unwrap_or_else(|e| panic!("connect {port}: {e}"));
        let resp = conn
            .request(&req)
            .unwrap_or_else(|e| panic!("{} {} on {port}: {e}", req.method, req.target));
        self.jar.store(port, &resp);
        resp
    }

    /// GET an absolute loopback URL.
    pub fn get(&mut self, url: &str) -> Response {
        let (port, path) = split_url(url);
        self.send(port, Req::get(&path))
    }

    pub fn post_form(&mut self, url: &str, pairs: &[(&str, &str)]) -> Response {
        let (port, path) = split_url(url);
        self.send(
            port,
            Req::post(&path, form(pairs))
                .header("Content-Type", "application/x-www-form-urlencoded"),
        )
    }
}

/// Resolves a `Location` against the URL it came from.
pub fn resolve(base: &str, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        return location.to_string();
    }
    let (port, _) = split_url(base);
    if location.starts_with('/') {
        format!("http://127.0.0.1:{port}{location}")
    } else {
        panic!("relative Location {location:?} not supported")
    }
}
