//! The front door: what a client connection may cost before it has sent a complete request
//! head (request line and head size, head deadline, `--timeout` during the head, the bound on
//! pending connections), and how the client's connection persistence is respected
//! (HTTP/1.0, `Content-Length` with `Transfer-Encoding`) and absolute-form targets routed.
//! Every test drives the real binary on loopback with small limits, so the time under test
//! stays short; the refusals' exact bytes are node's (CHP's).

use crate::support::*;
use std::time::{Duration, Instant};

const R414: &[u8] = b"HTTP/1.1 414 URI Too Long\r\nConnection: close\r\n\r\n";
const R431: &[u8] = b"HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\n\r\n";
const R408: &[u8] = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n\r\n";

struct Front {
    hg: Hubgate,
    echo: Backend,
    mport: u16,
    _dir: TempDir,
}

/// hubgate with `[limits]` from `limits` (TOML lines), the metrics listener, `args`, and an
/// echo backend on `/`.
fn start(limits: &str, args: &[&str]) -> Front {
    let dir = TempDir::new("front");
    let conf = dir.write("hubgate.toml", format!("[limits]\n{limits}\n"));
    let mport = free_port();
    let hg = Hubgate::builder()
        .args(&["--metrics-port", &mport.to_string()])
        .args(&["--config", &conf.to_string_lossy()])
        .args(args)
        .wait_port(mport)
        .start();
    let echo = Backend::echo();
    hg.add_route("/", &echo.url());
    Front {
        hg,
        echo,
        mport,
        _dir: dir,
    }
}

impl Front {
    fn metric(&self, series: &str) -> f64 {
        let text = get(self.mport, "/metrics").text();
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0.0)
    }

    fn refused(&self, reason: &str) -> f64 {
        self.metric(&format!(
            "hubgate_requests_refused_total{{reason=\"{reason}\"}}"
        ))
    }
}

fn head_with_header(len: usize) -> Vec<u8> {
    let mut h = b"GET /x HTTP/1.1\r\nHost: a\r\nX-Pad: ".to_vec();
    h.extend(std::iter::repeat_n(b'p', len));
    h.extend_from_slice(b"\r\n\r\n");
    h
}

#[test]
fn request_line_and_head_size_are_limited_with_414_and_431() {
    let f = start(
        "max-request-line-bytes = 1024\nmax-header-bytes = 4096",
        &[],
    );

    // Under both limits: proxied.
    let path = format!("/{}", "a".repeat(1000));
    let r = f.hg.get(&path);
    assert_eq!(r.status, 200, "{}", r.describe());
    let mut c = f.hg.proxy_conn();
    c.send_raw(&head_with_header(3900)).expect("send");
    let r = c.read_response(false).expect("response");
    assert_eq!(
        r.status,
        200,
        "a 3.9 KiB head is under 4 KiB: {}",
        r.describe()
    );
    let seen = f.echo.requests().len();

    // A request line over its limit: 414 and close, nothing forwarded.
    let mut c = f.hg.proxy_conn();
    let line = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "b".repeat(1100));
    c.send_raw(line.as_bytes()).expect("send");
    let (bytes, closed) = c.read_until_close(Duration::from_secs(5));
    assert_eq!(bytes, R414, "{}", String::from_utf8_lossy(&bytes));
    assert!(closed, "closed after 414");

    // A head over its limit, sent at once or in pieces: 431 and close.
    let mut c = f.hg.proxy_conn();
    c.send_raw(&head_with_header(5000)).expect("send");
    let (bytes, closed) = c.read_until_close(Duration::from_secs(5));
    assert_eq!(bytes, R431, "{}", String::from_utf8_lossy(&bytes));
    assert!(closed);
    let mut c = f.hg.proxy_conn();
    c.send_raw(b"GET / HTTP/1.1\r\nHost: a\r\n").expect("send");
    for _ in 0..5 {
        // Stops once hubgate has answered and closed.
        if c.send_raw(&[b'X'; 1000]).is_err() {
            break;
        }
    }
    let (bytes, _) = c.read_until_close(Duration::from_secs(5));
    assert_eq!(bytes, R431, "{}", String::from_utf8_lossy(&bytes));

    assert_eq!(
        f.echo.requests().len(),
        seen,
        "refused heads never reach the target"
    );
    assert_eq!(f.refused("request_line_too_long"), 1.0);
    assert_eq!(f.refused("header_too_large"), 2.0);
}

#[test]
fn default_limits_follow_node_16_kib_head() {
    let f = start("", &[]);
    let mut c = f.hg.proxy_conn();
    c.send_raw(&head_with_header(15 * 1024)).expect("send");
    let r = c.read_response(false).expect("response");
    assert_eq!(r.status, 200, "15 KiB head: {}", r.describe());
    let mut c = f.hg.proxy_conn();
    c.send_raw(&head_with_header(17 * 1024)).expect("send");
    let (bytes, _) = c.read_until_close(Duration::from_secs(5));
    assert_eq!(bytes, R431, "{}", String::from_utf8_lossy(&bytes));
}

#[test]
fn a_trickled_head_gets_408_at_the_head_deadline() {
    let f = start("header-timeout-ms = 1500", &[]);
    let mut c = f.hg.proxy_conn();
    let started = Instant::now();
    let head = b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: abcdefghijklmnopqrstuvwxyz";
    let mut answer = Vec::new();
    for b in head {
        // One byte every 250 ms: each read is well within any idle limit.
        if c.send_raw(&[*b]).is_err() {
            break;
        }
        let (bytes, closed) = c.read_until_close(Duration::from_millis(250));
        answer.extend(bytes);
        if closed {
            break;
        }
    }
    let took = started.elapsed();
    assert_eq!(answer, R408, "{}", String::from_utf8_lossy(&answer));
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_secs(4),
        "408 after {took:?}, deadline 1.5 s"
    );
    assert_eq!(f.refused("header_timeout"), 1.0);

    // A reused connection's next head has its own deadline, from its first byte.
    let mut c = f.hg.proxy_conn();
    let r = c.request(&Req::get("/one")).expect("first");
    assert_eq!(r.status, 200);
    std::thread::sleep(Duration::from_millis(1000));
    let r = c
        .request(&Req::get("/two"))
        .expect("second, after 1 s idle");
    assert_eq!(r.status, 200);
}

#[test]
fn timeout_covers_the_head_phase() {
    let f = start("", &["--timeout", "800"]);
    // Silent in the middle of a head.
    let mut c = f.hg.proxy_conn();
    c.send_raw(b"GET / HTTP/1.1\r\nHost: a\r\n").expect("send");
    let started = Instant::now();
    let (bytes, closed) = c.read_until_close(Duration::from_secs(5));
    assert!(closed && bytes.is_empty(), "closed silently: {bytes:?}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(700) && took < Duration::from_secs(3),
        "closed after {took:?}, --timeout 800 ms"
    );
    // Silent from the start.
    let mut c = f.hg.proxy_conn();
    assert!(
        c.wait_closed(Duration::from_secs(5)),
        "silent connection closed"
    );
    // Sending slowly but steadily (every 300 ms) is not silence.
    let mut c = f.hg.proxy_conn();
    for chunk in [
        &b"GET /st"[..],
        b"eady HTTP/1.1\r\n",
        b"Host: a\r\n",
        b"\r\n",
    ] {
        c.send_raw(chunk).expect("send");
        std::thread::sleep(Duration::from_millis(300));
    }
    let r = c.read_response(false).expect("response");
    assert_eq!(r.status, 200, "{}", r.describe());
    assert!(f.refused("idle_timeout") >= 2.0);
}

#[test]
fn past_the_pending_bound_the_oldest_incomplete_head_is_evicted() {
    let f = start("max-pending-connections = 3", &[]);
    // One at a time, so that hubgate sees them in this order (its threads accept in parallel).
    let mut slow = Vec::new();
    for i in 0..3 {
        let mut c = f.hg.proxy_conn();
        c.send_raw(format!("GET /slow{i} HTTP/1.1\r\n").as_bytes())
            .expect("send");
        slow.push(c);
        assert!(
            wait_until(Duration::from_secs(5), || f
                .metric("hubgate_connections_pending_head")
                == f64::from(i + 1)),
            "{} pending heads",
            i + 1
        );
    }
    // A real user still gets through; the oldest stranger is answered 408.
    let r = f.hg.get("/real");
    assert_eq!(r.status, 200, "{}", r.describe());
    let (bytes, closed) = slow[0].read_until_close(Duration::from_secs(5));
    assert_eq!(
        bytes,
        R408,
        "{} pending={} evicted={}",
        String::from_utf8_lossy(&bytes),
        f.metric("hubgate_connections_pending_head"),
        f.refused("too_many_pending")
    );
    assert!(closed);
    assert_eq!(f.refused("too_many_pending"), 1.0);
    // The others are still waiting and can finish their request.
    slow[1].send_raw(b"Host: a\r\n\r\n").expect("send");
    let r = slow[1].read_response(false).expect("response");
    assert_eq!(r.status, 200, "{}", r.describe());
    drop(slow);
    assert!(
        wait_until(Duration::from_secs(5), || f
            .metric("hubgate_connections_pending_head")
            == 0.0),
        "gauge back to 0"
    );
}

#[test]
fn http_1_0_without_keep_alive_is_closed_after_the_response() {
    let f = start("", &[]);
    let mut c = f.hg.proxy_conn();
    c.send_raw(b"GET /ten HTTP/1.0\r\n\r\n").expect("send");
    let started = Instant::now();
    let r = c.read_response(false).expect("response");
    assert_eq!(r.status, 200);
    assert_ne!(
        r.header("connection")
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("keep-alive")
    );
    assert!(c.wait_closed(Duration::from_secs(3)), "closed");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "not held for the keep-alive time"
    );

    // HTTP/1.0 asking for keep-alive is kept.
    let mut c = f.hg.proxy_conn();
    let keep = b"GET /ka HTTP/1.0\r\nConnection: keep-alive\r\n\r\n";
    c.send_raw(keep).expect("send");
    let r = c.read_response(false).expect("response");
    assert_eq!(r.status, 200);
    c.send_raw(keep).expect("send again");
    let r = c
        .read_response(false)
        .expect("second response on the same connection");
    assert_eq!(r.status, 200);
}

#[test]
fn content_length_with_transfer_encoding_is_forwarded_chunked_then_closed() {
    let f = start("", &[]);
    let mut c = f.hg.proxy_conn();
    c.send_raw(
        b"POST /both HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )
    .expect("send");
    let r = c.read_response(false).expect("response");
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(r.json()["body_len"], 3, "chunked framing won: {}", r.text());
    assert_eq!(r.header("connection"), Some("close"));
    assert!(
        c.wait_closed(Duration::from_secs(2)),
        "closed after the response"
    );
    let seen = f.echo.last().expect("forwarded");
    assert!(seen.header("content-length").is_none());
}

#[test]
fn absolute_form_targets_are_routed_on_their_path() {
    let f = start("", &[]);
    let other = Backend::echo();
    f.hg.add_route("/sub", &other.url());
    let mut c = f.hg.proxy_conn();
    c.send_raw(b"GET http://hub.example:8000/sub/x?y=1 HTTP/1.1\r\nHost: hub.example:8000\r\n\r\n")
        .expect("send");
    let r = c.read_response(false).expect("response");
    assert_eq!(r.status, 200, "{}", r.describe());
    let seen = other.last().expect("routed to /sub");
    assert_eq!(seen.target, "/sub/x?y=1");
    assert_eq!(seen.header("host").as_deref(), Some("hub.example:8000"));
    // A Host that disagrees with the target's authority is refused (pingora checks it).
    let mut c = f.hg.proxy_conn();
    c.send_raw(b"GET http://hub.example/sub/x HTTP/1.1\r\nHost: other.example\r\n\r\n")
        .expect("send");
    let r = c.read_response(false).expect("response");
    assert_eq!(r.status, 400, "{}", r.describe());
    assert_eq!(other.requests().len(), 1);
}
