//! Shared harness for hubgate's integration tests.
//!
//! * [`Hubgate`] spawns the real binary (`CARGO_BIN_EXE_hubgate`, or `$HUBGATE_BIN`
//!   to run the same suite against another CHP-compatible binary) on ports from
//!   [`free_port`], captures its output and kills it on drop.
//! * [`client`] is a raw HTTP/1.1 client over `TcpStream`/`UnixStream`/TLS, so tests
//!   see exact bytes.
//! * [`backend`] holds in-process HTTP backends (echo, fixed reply, error target,
//!   black hole) on their own tokio runtime thread; [`ws`] the websocket echo backend
//!   and client helpers; [`tls`] certificate generation and a rustls client.
//! * Authentication: [`jwt`] signing keys and tokens, [`oidc`] the test OpenID provider and
//!   a JWKS stub, [`browser`] a cookie-jar client for login flows, [`auth_proxy`] hubgate
//!   with `[auth]` (config, assertions, a standard environment).
//!
//! Every wait in here is a poll with a deadline; nothing sleeps for synchronisation.
#![allow(dead_code)]

pub mod auth_proxy;
pub mod backend;
pub mod browser;
pub mod client;
pub mod jwt;
pub mod oidc;
pub mod process;
pub mod tls;
pub mod ws;

pub use backend::{Backend, BlackHoleListener, Recorded, Reply};
pub use client::{get, http, try_http, Conn, Req, Response};
pub use process::{run_cli, CliOutput, Hubgate, HubgateBuilder};
pub use ws::{ws_connect, WsBackend};

use std::collections::HashSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The API token every [`Hubgate`] gets unless a test overrides it.
pub const TOKEN: &str = "secret";

fn used_ports() -> &'static Mutex<HashSet<u16>> {
    static USED: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    USED.get_or_init(|| Mutex::new(HashSet::new()))
}

/// Marks a port as taken so that [`free_port`] never hands it out (used for ports
/// the test process itself holds, e.g. backends bound to `127.0.0.1:0`).
pub fn reserve_port(port: u16) {
    used_ports().lock().unwrap().insert(port);
}

/// A port on 127.0.0.1 that was free a moment ago and that this process has never
/// handed out before (bind :0, read, drop).
pub fn free_port() -> u16 {
    loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = l.local_addr().unwrap().port();
        drop(l);
        if used_ports().lock().unwrap().insert(port) {
            return port;
        }
    }
}

/// A port `p` such that `p` and `p + 1` are both free (for CHP's `--api-port`
/// default of `--port + 1`).
pub fn free_port_pair() -> u16 {
    loop {
        let p = free_port();
        if p == u16::MAX {
            continue;
        }
        if let Ok(l) = TcpListener::bind(("127.0.0.1", p + 1)) {
            drop(l);
            if used_ports().lock().unwrap().insert(p + 1) {
                return p;
            }
        }
    }
}

/// A directory under /tmp removed on drop (short paths: unix sockets live here).
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let path = PathBuf::from(format!("/tmp/hgt-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }

    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.path.join(p)
    }

    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let p = self.join(name);
        std::fs::write(&p, contents).expect("write temp file");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Polls `f` every 10 ms until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Percent-encodes everything but ASCII alphanumerics (JS `encodeURIComponent`-ish).
pub fn encode_component(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// FNV-1a 64 of a byte string, as 16 hex digits (the echo backend reports it).
pub fn fnv_hex(data: &[u8]) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in data {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

/// A deterministic, non-repeating-looking body of `len` bytes.
pub fn pattern_body(len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    let mut x: u32 = 0x1234_5678;
    for _ in 0..len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        v.push(b'a' + (x % 26) as u8);
    }
    v
}

/// True if `s` is exactly `YYYY-MM-DDTHH:MM:SS.mmmZ` (JS `Date.toISOString()`).
pub fn is_js_iso(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() != 24 {
        return false;
    }
    for (i, c) in b.iter().enumerate() {
        let ok = match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'.',
            23 => *c == b'Z',
            _ => c.is_ascii_digit(),
        };
        if !ok {
            return false;
        }
    }
    chrono::NaiveDateTime::parse_from_str(&s[..23], "%Y-%m-%dT%H:%M:%S%.3f").is_ok()
}

/// Parses a `last_activity` value into milliseconds since the epoch.
pub fn iso_millis(s: &str) -> i64 {
    chrono::NaiveDateTime::parse_from_str(s.trim_end_matches('Z'), "%Y-%m-%dT%H:%M:%S%.f")
        .unwrap_or_else(|e| panic!("not an ISO timestamp {s:?}: {e}"))
        .and_utc()
        .timestamp_millis()
}

/// Now, in milliseconds since the epoch.
pub fn now_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// An ISO timestamp `offset_ms` from now, formatted like JS `toISOString()`.
pub fn iso_from_now(offset_ms: i64) -> String {
    let t = chrono::Utc::now() + chrono::Duration::milliseconds(offset_ms);
    t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}
