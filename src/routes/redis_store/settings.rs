//! The Redis route store's settings and the backend URL forms it accepts.
//!
//! The configuration builds a [`RedisStorage`] and checks its URL with
//! [`RedisStorage::check_url`]; the store alone knows how to reach Redis, so the URL forms
//! are parsed here and nowhere else.
//!
//! * `redis://[user:password@]host:port/db`, `rediss://…` (TLS): one Redis server.
//! * `redis+sentinel://[[user]:password@]host1[:26379][,host2[:26379]…]/master-name[?options]`,
//!   `rediss+sentinel://…` (TLS to the sentinels and to Redis): ask Redis Sentinel which
//!   server is the master of `master-name`, and ask again after every lost connection, so a
//!   promotion is followed. The user and password are the Redis servers'. Options:
//!   `db=N` (default 0), `sentinel-username=…`, `sentinel-password=…` (when the sentinels
//!   require AUTH), `wait-replicas=N` (default 1) and `wait-timeout-ms=N` (default 1000):
//!   a route write is acknowledged only once N replicas have it (`WAIT`), so a promotion
//!   cannot lose it; `wait-replicas=0` acknowledges on the master alone.

use std::time::Duration;

/// The Redis route store's settings (`[storage]` with a Redis backend).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisStorage {
    /// The backend URL, as given (one of the forms in this module's documentation).
    pub url: String,
    /// Prefix of every key (`{prefix}:format`, `{prefix}:v1:routes`, …).
    pub key_prefix: String,
    /// How often activity is written to and read from Redis.
    pub activity_flush: Duration,
}

/// Default port of Redis Sentinel.
const SENTINEL_PORT: u16 = 26379;

/// Where the store's Redis is, parsed from the URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Endpoint {
    /// One server (`redis://`, `rediss://`), handed to the redis crate as given.
    Direct(String),
    /// The master named by Redis Sentinel.
    Sentinel(SentinelSettings),
}

/// `redis+sentinel://…`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SentinelSettings {
    pub tls: bool,
    /// Sentinel addresses (host, port); IPv6 hosts without brackets.
    pub sentinels: Vec<(String, u16)>,
    pub master_name: String,
    pub db: i64,
    pub username: Option<String>,
    pub password: Option<String>,
    pub sentinel_username: Option<String>,
    pub sentinel_password: Option<String>,
    /// Replicas that must hold a write before it is acknowledged.
    pub wait_replicas: u32,
    pub wait_timeout: Duration,
}

impl SentinelSettings {
    /// The sentinels as URLs the redis crate parses (`redis://host:port` or `rediss://`).
    pub fn sentinel_urls(&self) -> Vec<String> {
        let scheme = if self.tls { "rediss" } else { "redis" };
        self.sentinels
            .iter()
            .map(|(h, p)| {
                if h.contains(':') {
                    format!("{scheme}://[{h}]:{p}")
                } else {
                    format!("{scheme}://{h}:{p}")
                }
            })
            .collect()
    }
}

const SENTINEL_FORM: &str = "redis+sentinel://[[user]:password@]host1[:26379][,host2[:26379]…]/master-name[?db=N&wait-replicas=N&wait-timeout-ms=N&sentinel-password=…]";

/// Why a storage backend URL cannot be used; each message ends with the expected form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error(
        "not a URL; expected redis://[user:password@]host:port/db, rediss://…, or {}",
        SENTINEL_FORM
    )]
    NotAUrl,
    #[error("unknown scheme {0:?}; expected redis://, rediss://, redis+sentinel:// or rediss+sentinel://")]
    Scheme(String),
    #[error("{0}; expected redis://[user:password@]host:port/db or rediss://…")]
    Direct(String),
    #[error("{}; expected {}", .0, SENTINEL_FORM)]
    Sentinel(String),
}

impl RedisStorage {
    /// Checks that `url` is a Redis backend this store can use; the error says what is
    /// wrong and which form is expected.
    pub fn check_url(url: &str) -> Result<(), UrlError> {
        parse(url).map(|_| ())
    }

    /// Whether `url` names a Redis backend at all (by its scheme), valid or not.
    pub fn is_redis_url(url: &str) -> bool {
        let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        matches!(
            scheme.as_deref(),
            Some("redis" | "rediss" | "redis+sentinel" | "rediss+sentinel")
        )
    }

    pub(super) fn endpoint(&self) -> Result<Endpoint, UrlError> {
        parse(&self.url)
    }

    /// The URL with any password replaced by `***`, for logs.
    pub fn redacted_url(&self) -> String {
        let Some((scheme, rest)) = self.url.split_once("://") else {
            return self.url.clone();
        };
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let auth_end = rest.find('/').unwrap_or(rest.len());
        let mut out = match rest[..auth_end].rfind('@') {
            Some(at) => {
                let userinfo = &rest[..at];
                let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
                format!("{scheme}://{user}:***{}", &rest[at..])
            }
            None => format!("{scheme}://{rest}"),
        };
        if let Some(q) = query {
            let q: Vec<String> = q
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("sentinel-password") => {
                        format!("{k}=***")
                    }
                    _ => kv.to_string(),
                })
                .collect();
            out.push('?');
            out.push_str(&q.join("&"));
        }
        out
    }
}

fn parse(url: &str) -> Result<Endpoint, UrlError> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(UrlError::NotAUrl);
    };
    match scheme.to_ascii_lowercase().as_str() {
        "redis" | "rediss" => {
            let info = redis::IntoConnectionInfo::into_connection_info(url)
                .map_err(|e| UrlError::Direct(e.to_string()))?;
            if let redis::ConnectionAddr::Tcp(host, _)
            | redis::ConnectionAddr::TcpTls { host, .. } = info.addr()
            {
                if host.is_empty() {
                    return Err(UrlError::Direct("no host".into()));
                }
            }
            Ok(Endpoint::Direct(url.to_string()))
        }
        "redis+sentinel" => parse_sentinel(false, rest).map(Endpoint::Sentinel),
        "rediss+sentinel" => parse_sentinel(true, rest).map(Endpoint::Sentinel),
        other => Err(UrlError::Scheme(other.to_string())),
    }
}

fn parse_sentinel(tls: bool, rest: &str) -> Result<SentinelSettings, UrlError> {
    let bad = UrlError::Sentinel;
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, q),
        None => (rest, ""),
    };
    let Some((authority, master)) = rest.split_once('/') else {
        return Err(bad("no master name".into()));
    };
    let master_name = master.trim_end_matches('/');
    if master_name.is_empty()
        || !master_name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return Err(bad(format!(
            "master name {master_name:?}: use letters, digits, '.', '_' and '-'"
        )));
    }
    let (userinfo, hosts) = match authority.rfind('@') {
        Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
        None => (None, authority),
    };
    let (username, password) = match userinfo {
        None => (None, None),
        Some(u) => {
            let (user, pass) = u.split_once(':').unwrap_or((u, ""));
            let nonempty = |s: &str| -> Result<Option<String>, UrlError> {
                let d = percent_decode(s).map_err(|e| bad(e.to_string()))?;
                Ok((!d.is_empty()).then_some(d))
            };
            (nonempty(user)?, nonempty(pass)?)
        }
    };
    let mut sentinels = Vec::new();
    for h in hosts.split(',') {
        sentinels.push(parse_host(h).map_err(bad)?);
    }
    let mut s = SentinelSettings {
        tls,
        sentinels,
        master_name: master_name.to_string(),
        db: 0,
        username,
        password,
        sentinel_username: None,
        sentinel_password: None,
        wait_replicas: 1,
        wait_timeout: Duration::from_millis(1_000),
    };
    for kv in query.split('&').filter(|kv| !kv.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        let v = percent_decode(v).map_err(|e| bad(e.to_string()))?;
        let number = |max: u64| -> Result<u64, UrlError> {
            v.parse::<u64>()
                .ok()
                .filter(|n| *n <= max)
                .ok_or_else(|| bad(format!("{k}={v:?}: expected a number up to {max}")))
        };
        match k {
            "db" => s.db = number(1_000_000)? as i64,
            "wait-replicas" => s.wait_replicas = number(100)? as u32,
            "wait-timeout-ms" => {
                let ms = number(60_000)?;
                if ms < 10 {
                    return Err(bad("wait-timeout-ms must be between 10 and 60000".into()));
                }
                s.wait_timeout = Duration::from_millis(ms);
            }
            "sentinel-username" => s.sentinel_username = Some(v),
            "sentinel-password" => s.sentinel_password = Some(v),
            other => return Err(bad(format!("unknown option {other:?}"))),
        }
    }
    Ok(s)
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`.
fn parse_host(h: &str) -> Result<(String, u16), String> {
    let (host, port) = if let Some(v6) = h.strip_prefix('[') {
        let Some((host, after)) = v6.split_once(']') else {
            return Err(format!("sentinel address {h:?}: unclosed '['"));
        };
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| format!("sentinel address {h:?}: junk after ']'"))?,
            ),
        };
        (host, port)
    } else {
        match h.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (h, None),
        }
    };
    if host.is_empty() {
        return Err(format!("sentinel address {h:?}: no host"));
    }
    let port = match port {
        None => SENTINEL_PORT,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("sentinel address {h:?}: bad port"))?,
    };
    Ok((host.to_string(), port))
}

fn percent_decode(s: &str) -> Result<String, &'static str> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("bad %-escape in the URL")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "the URL decodes to invalid UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sentinel(url: &str) -> SentinelSettings {
        match parse(url) {
            Ok(Endpoint::Sentinel(s)) => s,
            other => panic!("{url}: {other:?}"),
        }
    }

    #[test]
    fn sentinel_urls() {
        let s = sentinel("redis+sentinel://h1:26380,h2,[::1]:5/mymaster");
        assert_eq!(
            s.sentinels,
            vec![
                ("h1".to_string(), 26380),
                ("h2".to_string(), 26379),
                ("::1".to_string(), 5)
            ]
        );
        assert_eq!(s.master_name, "mymaster");
        assert_eq!((s.db, s.wait_replicas), (0, 1));
        assert_eq!(s.wait_timeout, Duration::from_secs(1));
        assert!(!s.tls);
        assert_eq!(
            s.sentinel_urls(),
            vec!["redis://h1:26380", "redis://h2:26379", "redis://[::1]:5"]
        );
        let s = sentinel(
            "rediss+sentinel://u:p%40ss@h/m-1?db=3&wait-replicas=0&wait-timeout-ms=250&sentinel-password=sp",
        );
        assert!(s.tls);
        assert_eq!(s.username.as_deref(), Some("u"));
        assert_eq!(s.password.as_deref(), Some("p@ss"));
        assert_eq!((s.db, s.wait_replicas), (3, 0));
        assert_eq!(s.wait_timeout, Duration::from_millis(250));
        assert_eq!(s.sentinel_password.as_deref(), Some("sp"));
        let s = sentinel("redis+sentinel://:pw@h/m");
        assert_eq!((s.username, s.password.as_deref()), (None, Some("pw")));
        for bad in [
            "redis+sentinel://h1,h2",
            "redis+sentinel://h1/",
            "redis+sentinel://h1:0/m",
            "redis+sentinel://h1,/m",
            "redis+sentinel://h/m?db=x",
            "redis+sentinel://h/m?colour=blue",
            "redis+sentinel://h/m?wait-timeout-ms=1",
            "redis+sentinel://[::1/m",
            "redis+sentinel://h/m%2",
            "sentinel://h/m",
        ] {
            assert!(parse(bad).is_err(), "{bad} accepted");
        }
        assert_eq!(
            parse("redis://h:1/2"),
            Ok(Endpoint::Direct("redis://h:1/2".into()))
        );
    }

    #[test]
    fn redaction() {
        let r = |url: &str| RedisStorage {
            url: url.into(),
            key_prefix: "hubgate".into(),
            activity_flush: Duration::from_secs(2),
        };
        assert_eq!(r("redis://h:6379/0").redacted_url(), "redis://h:6379/0");
        assert_eq!(
            r("redis://user:pw@h:6379/0").redacted_url(),
            "redis://user:***@h:6379/0"
        );
        assert_eq!(r("rediss://:pw@h/0").redacted_url(), "rediss://:***@h/0");
        assert_eq!(
            r("redis+sentinel://:pw@a,b/m?db=1&sentinel-password=x").redacted_url(),
            "redis+sentinel://:***@a,b/m?db=1&sentinel-password=***"
        );
    }
}
