//! The direct path (docs/direct-path.md): plain GET and HEAD requests served by hubgate's own
//! HTTP/1.1 forwarding instead of pingora's proxy. Held to pingora's path by a differential
//! test (the same requests through a hubgate with `--no-direct-path`: what the target receives
//! must be the same bytes, what the client receives the same response), and to what it must do
//! on its own: hand every other request to pingora with the bytes it already read, mid
//! connection included; re-frame bodies; survive a target that fails mid-response.
//!
//! The backend is a scripted HTTP/1.1 server written for these tests (std threads and
//! sockets): it answers each path with fixed raw bytes (framings no common server produces on
//! demand: a close-delimited body, an HTTP/1.0 answer, both `Content-Length` and
//! `Transfer-Encoding`, a 103 before the answer, a reset mid-body) and records every request
//! head exactly as received.

use crate::support::auth_proxy::*;
use crate::support::jwt::*;
use crate::support::oidc::*;
use crate::support::*;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The raw answer for a path (`{port}` is replaced by the backend's port), and whether the
/// backend closes the connection after it.
fn script(path: &str) -> (&'static str, bool) {
    if let Some(reply) = cookie_script(path) {
        return (reply, false);
    }
    let p = path.split('?').next().unwrap_or_default();
    match p.trim_start_matches("/user/a") {
        "/cl" => (
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Mixed-Case: v\r\nContent-Length: 5\r\n\r\nhello",
            false,
        ),
        "/chunked" => (
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
            false,
        ),
        "/close" => (
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nuntil the end",
            true,
        ),
        "/http10" => ("HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", true),
        "/204" => ("HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n", false),
        "/304" => ("HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n", false),
        "/redirect" => (
            "HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:{port}/user/a/elsewhere\r\nContent-Length: 0\r\n\r\n",
            false,
        ),
        "/date" => (
            "HTTP/1.1 200 OK\r\ndate: Mon, 01 Jan 2001 00:00:00 GMT\r\nconnection: keep-alive\r\nkeep-alive: timeout=5\r\nContent-Length: 1\r\n\r\nd",
            false,
        ),
        "/both" => (
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            false,
        ),
        "/hints" => (
            "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            false,
        ),
        "/reason" => ("HTTP/1.1 200 Fine Thanks\r\nContent-Length: 0\r\n\r\n", false),
        "/404" => ("HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\nnope", false),
        "/cut" => (
            "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part of it",
            true,
        ),
        _ => ("HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\ndefault", false),
    }
}

/// A scripted backend recording request heads.
struct Scripted {
    port: u16,
    heads: Arc<Mutex<Vec<String>>>,
}

impl Scripted {
    fn start() -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let h = heads.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let h = h.clone();
                std::thread::spawn(move || serve(conn, port, &h));
            }
        });
        Scripted { port, heads }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn take_heads(&self) -> Vec<String> {
        std::mem::take(&mut *self.heads.lock().expect("lock"))
    }
}

fn serve(mut conn: TcpStream, port: u16, heads: &Mutex<Vec<String>>) {
    conn.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut served = 0;
    loop {
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match conn.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(k) => buf.extend_from_slice(&chunk[..k]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let path = head.split(' ').nth(1).unwrap_or("/").to_string();
        heads.lock().expect("lock").push(head);
        served += 1;
        if path.contains("/flaky") && served > 1 {
            // A kept connection the server drops on the request it was reused for, without
            // answering (as a server whose idle timeout fired as the request arrived).
            return;
        }
        let (reply, close) = script(&path);
        let reply = reply.replace("{port}", &port.to_string());
        if conn.write_all(reply.as_bytes()).is_err() || close {
            return;
        }
    }
}

/// A response as compared between the two paths: everything but `Date`'s value.
fn comparable(r: &Response) -> (String, Vec<(String, String)>, Vec<u8>, bool) {
    let headers = r
        .headers
        .iter()
        .map(|(k, v)| {
            if k.eq_ignore_ascii_case("date") {
                (k.clone(), "<date>".to_string())
            } else {
                (k.clone(), v.clone())
            }
        })
        .collect();
    (r.status_line.clone(), headers, r.body.clone(), r.chunked)
}

fn hubgate_to(backend: &Scripted, extra: &[&str]) -> Hubgate {
    let mut args = vec!["--auto-rewrite"];
    args.extend_from_slice(extra);
    let hg = Hubgate::start(&args, &[]);
    hg.add_route("/user/a", &backend.url());
    hg
}

/// The requests of the differential test.
fn requests() -> Vec<Req> {
    let mut out = Vec::new();
    for path in [
        "/user/a/cl",
        "/user/a/chunked",
        "/user/a/close",
        "/user/a/http10",
        "/user/a/204",
        "/user/a/304",
        "/user/a/redirect",
        "/user/a/date",
        "/user/a/both",
        "/user/a/hints",
        "/user/a/reason",
        "/user/a/404",
        "/user/a/x%2Fy/../cl?q=1&token=abc",
    ] {
        for method in ["GET", "HEAD"] {
            out.push(
                Req::new(method, path)
                    .host("hub.example:8000")
                    .header("User-Agent", "direct-path-test")
                    .header("x-Forwarded-For", "192.0.2.1")
                    .header("Accept", "*/*"),
            );
        }
    }
    out.push(
        Req::get("/user/a/cl")
            .host("hub.example")
            .header("Connection", "close")
            .header("X-Custom", "1"),
    );
    out
}

#[test]
fn the_direct_path_answers_as_pingoras_path_does() {
    let backend = Scripted::start();
    let direct = hubgate_to(&backend, &[]);
    let pingora = hubgate_to(&backend, &["--no-direct-path"]);
    for req in requests() {
        let what = format!("{} {}", req.method, req.target);
        let mut answers = Vec::new();
        let mut received = Vec::new();
        for hg in [&direct, &pingora] {
            backend.take_heads();
            let r = hg
                .proxy_conn()
                .request(&req)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            answers.push(comparable(&r));
            received.push(backend.take_heads());
        }
        assert_eq!(answers[0], answers[1], "{what}: the client's response");
        assert_eq!(received[0], received[1], "{what}: what the target received");
        assert_eq!(received[0].len(), 1, "{what}: one request upstream");
    }
}

#[test]
fn bodies_are_reframed_for_the_client() {
    let backend = Scripted::start();
    let hg = hubgate_to(&backend, &[]);
    let r = hg.get("/user/a/chunked");
    assert_eq!((r.status, r.chunked), (200, true), "{}", r.describe());
    assert_eq!(r.text(), "hello world");
    assert_eq!(
        r.header("X-Trailer"),
        None,
        "trailer fields are not forwarded"
    );
    // A body delimited by the target's close goes to the client chunked, on a connection
    // that stays open.
    let mut c = hg.proxy_conn();
    let r = c
        .request(&Req::get("/user/a/close"))
        .expect("close-delimited");
    assert_eq!((r.status, r.chunked), (200, true), "{}", r.describe());
    assert_eq!(r.text(), "until the end");
    assert_eq!(r.header("Connection"), Some("keep-alive"));
    let r = c.request(&Req::get("/user/a/cl")).expect("same connection");
    assert_eq!(r.text(), "hello");
    // Both Content-Length and chunked: chunked wins, Content-Length is dropped.
    let r = hg.get("/user/a/both");
    assert_eq!(
        (r.text().as_str(), r.header("Content-Length")),
        ("abc", None)
    );
}

#[test]
fn requests_the_direct_path_does_not_take_go_to_pingora_mid_connection() {
    let backend = Scripted::start();
    let hg = hubgate_to(&backend, &[]);
    let mut c = hg.proxy_conn();
    // Requests in one write: two GETs (direct, the second from the bytes read with the
    // first), then a POST with a body (pingora, from the bytes the direct path had already
    // read). pingora answers only the first request of a pipelined batch it is given, so the
    // POST is the last.
    let mut wire = Req::get("/user/a/cl").to_bytes("hub");
    wire.extend(Req::get("/user/a/chunked").to_bytes("hub"));
    wire.extend(Req::post("/user/a/p", "a body").to_bytes("hub"));
    c.send_raw(&wire).expect("send");
    let texts: Vec<String> = (0..3)
        .map(|i| {
            c.read_response(false)
                .unwrap_or_else(|e| panic!("response {i}: {e}"))
                .text()
        })
        .collect();
    assert_eq!(texts, ["hello", "hello world", "default"]);
    let heads = backend.take_heads();
    assert_eq!(heads.len(), 3, "{heads:?}");
    assert!(
        heads[2].starts_with("POST /user/a/p HTTP/1.1\r\n"),
        "{}",
        heads[2]
    );
    assert!(heads[2].contains("Content-Length: 6\r\n"), "{}", heads[2]);
    // After a request pingora took, the connection is pingora's: a GET on it still works.
    let mut c = hg.proxy_conn();
    let r = c.request(&Req::post("/user/a/p", "x")).expect("post");
    assert_eq!(r.text(), "default");
    let r = c.request(&Req::get("/user/a/cl")).expect("get after post");
    assert_eq!(r.text(), "hello");
    // A request that does not parse is pingora's to refuse, as before.
    let mut c = hg.proxy_conn();
    c.send_raw(b"GET /user/a/cl HTTP/1.1\r\nHost: h\r\nBad Header\r\n\r\n")
        .expect("send");
    let r = c.read_response(false).expect("an answer");
    assert_eq!(r.status, 400, "{}", r.describe());
}

#[test]
fn a_target_failing_mid_response_closes_the_client_connection() {
    let backend = Scripted::start();
    let hg = hubgate_to(&backend, &[]);
    let mut c = hg.proxy_conn();
    c.send(&Req::get("/user/a/cut")).expect("send");
    let (bytes, closed) = c.read_until_close(Duration::from_secs(10));
    let text = String::from_utf8_lossy(&bytes);
    assert!(closed, "the client connection is closed: {text}");
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.ends_with("only part of it"), "{text}");
    // The proxy goes on serving.
    assert_eq!(hg.get("/user/a/cl").text(), "hello");
}

#[test]
fn a_dead_target_gets_the_error_page_and_the_connection_goes_on() {
    let dead = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!(
        "http://127.0.0.1:{}",
        dead.local_addr().expect("addr").port()
    );
    drop(dead);
    let backend = Scripted::start();
    let hg = hubgate_to(&backend, &[]);
    hg.add_route("/user/dead", &url);
    let mut c = hg.proxy_conn();
    let r = c.request(&Req::get("/user/dead/x")).expect("error page");
    assert_eq!(r.status, 503, "{}", r.describe());
    assert_eq!(r.media_type().as_deref(), Some("text/html"));
    assert!(r.text().contains("503"), "{}", r.text());
    let r = c.request(&Req::get("/user/a/cl")).expect("same connection");
    assert_eq!(r.text(), "hello");
    assert!(
        hg.wait_for_output(
            "503 GET /user/dead/x connect ECONNREFUSED",
            Duration::from_secs(5)
        ),
        "CHP's log line: {}",
        hg.output()
    );
}

/// A scripted answer that tries to set hubgate's own session cookie beside the target's own.
fn cookie_script(path: &str) -> Option<&'static str> {
    path.contains("/cookies").then_some(
        "HTTP/1.1 200 OK\r\nSet-Cookie: __Host-hubgate-session=planted; Path=/\r\nSet-Cookie: mine=1\r\nContent-Length: 2\r\n\r\nok",
    )
}

#[test]
fn authenticated_requests_reach_the_target_as_on_pingoras_path() {
    let key = pool().rsa[0].with_kid("k-rsa");
    let stub = JwksStub::start(&[&key]);
    let backend = Scripted::start();
    let mut proxies = Vec::new();
    for extra in [&[][..], &["--no-direct-path"]] {
        let port = free_port();
        let cfg = AuthCfg::new(port, vec![IssuerCfg::stub(&stub)]);
        let px = start_auth_proxy_with(port, &cfg, Hubgate::builder().args(extra));
        px.wait_ready();
        px.add_route_json(
            "/user/a",
            &serde_json::json!({"target": backend.url(), "user": "alice", "server_name": ""})
                .to_string(),
        );
        proxies.push(px);
    }
    let alice = mint(&key, &claims(&stub.issuer, "alice"));
    let mallory = mint(&key, &claims(&stub.issuer, "mallory"));
    let cases = [
        (
            "alice, her server",
            "/user/a/cl?x=1",
            Some(alice.as_str()),
            200,
        ),
        (
            "alice, cookies",
            "/user/a/cookies",
            Some(alice.as_str()),
            200,
        ),
        ("someone else", "/user/a/cl", Some(mallory.as_str()), 403),
        ("no token", "/user/a/cl", None, 401),
        ("a forged token", "/user/a/cl", Some("e30.e30.AAAA"), 401),
    ];
    for (what, path, token, status) in cases {
        let mut answers = Vec::new();
        let mut received = Vec::new();
        for px in &proxies {
            backend.take_heads();
            let mut req = Req::get(path)
                .host("hub.example")
                .header("Accept", "application/json")
                .header("X-Remote-User", "spoofed")
                .header("X_Remote_User", "spoofed");
            if let Some(t) = token {
                req = req.header("Authorization", &format!("Bearer {t}"));
            }
            let r = px.request(&req);
            assert_eq!(r.status, status, "{what}: {}", r.describe());
            answers.push(comparable(&r));
            received.push(backend.take_heads());
        }
        if path.contains("/cookies") {
            // pingora's path re-appends the target's other cookies after dropping hubgate's
            // own; the direct path leaves them where they were (docs/direct-path.md).
            for a in &mut answers {
                a.1.sort();
            }
        }
        assert_eq!(answers[0], answers[1], "{what}: the client's response");
        assert_eq!(received[0], received[1], "{what}: what the target received");
        if status == 200 {
            let head = &received[0][0];
            assert!(
                head.contains("x-auth-request-user: alice\r\n"),
                "{what}: {head}"
            );
            assert!(
                !head.to_ascii_lowercase().contains("authorization"),
                "{what}: {head}"
            );
            assert!(
                !head.to_ascii_lowercase().contains("remote"),
                "{what}: {head}"
            );
        } else {
            assert!(received[0].is_empty(), "{what}: the target was called");
        }
    }
    let r = proxies[0]
        .request(&Req::get("/user/a/cookies").header("Authorization", &format!("Bearer {alice}")));
    let cookies = r.header_all("Set-Cookie");
    assert_eq!(
        cookies,
        ["mine=1"],
        "hubgate's own cookie is never set by a target"
    );
}

#[test]
fn the_config_file_can_turn_the_direct_path_off() {
    let dead = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!(
        "http://127.0.0.1:{}",
        dead.local_addr().expect("addr").port()
    );
    drop(dead);
    let dir = TempDir::new("direct-off");
    let off = dir.write("off.toml", "[proxy]\ndirect-path = false\n");
    let hg = Hubgate::start(&["--config", &off.to_string_lossy()], &[]);
    hg.add_route("/user/dead", &url);
    // pingora's path closes the connection after an error page (docs/direct-path.md,
    // "Differences on the wire"); the direct path would keep it for the next request.
    let mut c = hg.proxy_conn();
    let r = c.request(&Req::get("/user/dead/x")).expect("error page");
    assert_eq!(r.status, 503, "{}", r.describe());
    assert!(
        c.wait_closed(Duration::from_secs(5)),
        "with direct-path = false the request took pingora's path"
    );
    // A value that is not a boolean stops startup, naming the key.
    let bad = dir.write("bad.toml", "[proxy]\ndirect-path = \"yes\"\n");
    let out = run_cli(
        &["--check-config", "--config", &bad.to_string_lossy()],
        &[],
        Duration::from_secs(10),
    );
    assert!(out.failed_cleanly(), "{out:?}");
    assert!(out.stderr.contains("direct-path"), "{}", out.stderr);
}

#[test]
fn informational_responses_reach_the_client_before_the_answer() {
    let backend = Scripted::start();
    let hg = hubgate_to(&backend, &[]);
    let mut c = hg.proxy_conn();
    c.send(&Req::get("/user/a/hints").header("Connection", "close"))
        .expect("send");
    let (bytes, _) = c.read_until_close(Duration::from_secs(10));
    let text = String::from_utf8_lossy(&bytes);
    let hints = text.find("HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n");
    let answer = text.find("HTTP/1.1 200 OK\r\n");
    assert!(
        hints.is_some() && hints < answer,
        "the 103 first, then the answer: {text}"
    );
    assert!(text.ends_with("\r\n\r\nok"), "{text}");
}

#[test]
fn a_kept_connection_the_target_drops_with_the_request_is_retried_once_on_a_new_one() {
    let backend = Scripted::start();
    let hg = hubgate_to(&backend, &[]);
    let mut c = hg.proxy_conn();
    // The first request leaves its upstream connection in the pool; the second is sent on it,
    // and the target closes it without an answer: GET is idempotent, so the direct path sends
    // it once more on a new connection and the client never sees the failure.
    assert_eq!(
        c.request(&Req::get("/user/a/cl")).expect("first").text(),
        "hello"
    );
    let r = c.request(&Req::get("/user/a/flaky")).expect("retried");
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "default"),
        "{}",
        r.describe()
    );
    let heads = backend.take_heads();
    let flaky = heads
        .iter()
        .filter(|h| h.starts_with("GET /user/a/flaky "))
        .count();
    assert_eq!(
        flaky, 2,
        "sent on the kept connection, then on a new one: {heads:?}"
    );
}

#[test]
fn a_pipelined_head_left_unfinished_is_closed_at_the_keep_alive_timeout() {
    let backend = Scripted::start();
    let hg = hubgate_to(&backend, &["--keep-alive-timeout", "1000"]);
    let mut c = hg.proxy_conn();
    // A complete request and the start of another in one write, then silence: the second
    // head arrived with the first, before the front door's head clock for it could start.
    let mut wire = Req::get("/user/a/cl").to_bytes("hub");
    wire.extend_from_slice(b"GET /user/a/cl HTTP/1.1\r\nHost: hub\r\nX-Partial");
    c.send_raw(&wire).expect("send");
    assert_eq!(c.read_response(false).expect("the first").text(), "hello");
    assert!(
        c.wait_closed(Duration::from_secs(10)),
        "the unfinished head is not waited for past the keep-alive timeout"
    );
}
