//! hubgate's keep-alive pools of upstream connections: pingora's (the vendored pingora-core
//! patch, docs/pingora-patches.md, removed the task that watched each idle pooled connection)
//! and the direct path's (docs/direct-path.md); both check a pooled connection when it is
//! taken. These tests hold each pool, on its path (`PATHS`), to what the watcher used to
//! guarantee, from the backend's side: connections are reused; one the server closed while
//! idle, or that sent bytes nobody asked for, is never used for a request (the request gets a
//! fresh connection and its own answer, never a stale one).
//!
//! The backend here is a small HTTP/1.1 server written for these tests (std threads and
//! sockets): no real server closes its idle connections or writes unasked bytes on demand, and
//! the tests need to count the connections it accepted. It answers every request with the
//! number of the connection that carried it.

use crate::support::*;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the backend does after each response.
#[derive(Clone, Copy, PartialEq)]
enum After {
    /// Keeps the connection open for the next request.
    KeepOpen,
    /// Closes the connection (without announcing it: no `Connection: close`).
    Close,
    /// Keeps it open; the test writes a stray response on it (`write_stray`) while it is idle.
    Garbage,
}

struct PoolBackend {
    port: u16,
    accepted: Arc<AtomicUsize>,
    /// The connection that served the last response (for `write_stray`).
    last: Arc<Mutex<Option<TcpStream>>>,
}

impl PoolBackend {
    fn start(after: After) -> PoolBackend {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let last = Arc::new(Mutex::new(None));
        let (count, last2) = (accepted.clone(), last.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let n = count.fetch_add(1, Ordering::SeqCst) + 1;
                let last = last2.clone();
                std::thread::spawn(move || serve(conn, n, after, &last));
            }
        });
        PoolBackend {
            port,
            accepted,
            last,
        }
    }

    /// Writes a response nobody asked for on the connection that served the last one (idle in
    /// hubgate's pool by then); returns once the bytes are in hubgate's receive queue (a
    /// loopback write delivers them before it returns).
    fn write_stray(&self) {
        let stray = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale";
        let mut last = self.last.lock().expect("lock");
        let conn = last.as_mut().expect("a connection served a response");
        conn.write_all(stray.as_bytes())
            .expect("write the stray response");
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// Serves GETs on one connection, answering each with `conn <n>`.
fn serve(mut conn: TcpStream, n: usize, after: After, last: &Mutex<Option<TcpStream>>) {
    conn.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(k) => head.extend_from_slice(&buf[..k]),
            }
        }
        head.clear();
        let body = format!("conn {n}");
        let reply = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if after == After::Garbage {
            // Before the response goes out, so that `write_stray`, called once the client has
            // it, finds this connection.
            if let Ok(clone) = conn.try_clone() {
                *last.lock().expect("lock") = Some(clone);
            }
        }
        if conn.write_all(reply.as_bytes()).is_err() || after == After::Close {
            return;
        }
    }
}

/// The two request paths: the direct path (the default for these GETs) and pingora's.
const PATHS: [&[&str]; 2] = [&[], &["--no-direct-path"]];

fn proxy_to(backend: &PoolBackend, args: &[&str]) -> Hubgate {
    let hg = Hubgate::start(args, &[]);
    hg.add_route("/", &backend.url());
    hg
}

/// Sends `/x/1`, `/x/2`, … over one client connection (so each request starts only after the
/// previous one returned its upstream connection to the pool) and checks each answer.
fn each_request_answered_by(hg: &Hubgate, n: usize, expect: impl Fn(usize) -> String) {
    let mut c = hg.proxy_conn();
    for i in 1..=n {
        let r = c
            .request(&Req::get(&format!("/x/{i}")))
            .unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(r.status, 200, "request {i}: {}", r.describe());
        assert_eq!(r.text(), expect(i), "request {i}");
    }
}

#[test]
fn sequential_requests_reuse_one_upstream_connection() {
    for args in PATHS {
        let backend = PoolBackend::start(After::KeepOpen);
        let hg = proxy_to(&backend, args);
        each_request_answered_by(&hg, 20, |_| "conn 1".into());
        assert_eq!(backend.accepted(), 1, "{args:?}");
    }
}

#[test]
fn a_connection_the_server_closed_while_idle_is_never_used() {
    for args in PATHS {
        let backend = PoolBackend::start(After::Close);
        let hg = proxy_to(&backend, args);
        each_request_answered_by(&hg, 10, |i| format!("conn {i}"));
        assert_eq!(backend.accepted(), 10, "{args:?}");
    }
}

#[test]
fn a_connection_with_unasked_bytes_is_dropped_not_read_as_the_next_answer() {
    for args in PATHS {
        unasked_bytes_are_never_an_answer(args);
    }
}

fn unasked_bytes_are_never_an_answer(args: &[&str]) {
    let backend = PoolBackend::start(After::Garbage);
    let hg = proxy_to(&backend, args);
    let mut c = hg.proxy_conn();
    for i in 1..=10 {
        let r = c
            .request(&Req::get(&format!("/x/{i}")))
            .unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(r.status, 200, "request {i}: {}", r.describe());
        // Never the stray "stale" body: each request gets a new connection's own answer.
        assert_eq!(r.text(), format!("conn {i}"), "request {i}");
        // The connection that served it is idle in hubgate's pool now: the server sends a
        // response nobody asked for, before the next request is even sent.
        backend.write_stray();
    }
    assert_eq!(backend.accepted(), 10);
}
