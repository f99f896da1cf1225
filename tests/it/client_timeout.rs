//! Client-side idle limits of the public listener: `--keep-alive-timeout` (idle time
//! between requests on a kept-alive connection, CHP's `keepAliveTimeout`, default 5000 ms)
//! and `--timeout` (idle time of a client in the middle of a web request, CHP's
//! `req.socket.setTimeout`). Each test checks both sides of the limit on real connections:
//! a connection idle for less is still usable, one idle for longer is closed by hubgate.
//! The waits here are the passage of time under test, kept short by small limits.

use crate::support::*;
use std::time::{Duration, Instant};

/// Room for timer granularity and a loaded machine around a limit.
const EARLY: Duration = Duration::from_millis(100);

fn echo_proxy(args: &[&str]) -> (Hubgate, Backend) {
    let hg = Hubgate::start(args, &[]);
    let echo = Backend::echo();
    hg.add_route("/", &echo.url());
    (hg, echo)
}

/// Asserts `c` stays open and silent for `d` (an idle period below the limit).
fn assert_still_open(c: &mut Conn, d: Duration, what: &str) {
    let (bytes, closed) = c.read_until_close(d);
    assert!(
        !closed && bytes.is_empty(),
        "{what}: connection closed={closed} after less than the limit, bytes {:?}",
        String::from_utf8_lossy(&bytes)
    );
}

/// Waits for hubgate to close `c` and returns how long that took from `since`. Like CHP,
/// hubgate just closes the connection: no response is written.
fn closed_after(c: &mut Conn, since: Instant, within: Duration, what: &str) -> Duration {
    let (bytes, closed) = c.read_until_close(within);
    let took = since.elapsed();
    assert!(
        closed,
        "{what}: still open {took:?} after going idle (limit exceeded)"
    );
    assert!(
        bytes.is_empty(),
        "{what}: bytes before the close: {:?}",
        String::from_utf8_lossy(&bytes)
    );
    took
}

#[test]
fn keep_alive_timeout_keeps_a_connection_idle_for_less_and_closes_one_idle_for_longer() {
    // 1500 ms: not a whole number of seconds, so a limit rounded down would show.
    let limit = Duration::from_millis(1500);
    let (hg, echo) = echo_proxy(&["--keep-alive-timeout", "1500"]);
    let mut c = hg.proxy_conn();
    let r = c.request(&Req::get("/first")).expect("first request");
    assert_eq!(r.status, 200, "{}", r.describe());

    // Idle for 1.2 s (< 1.5 s): the same connection still serves the next request.
    assert_still_open(&mut c, Duration::from_millis(1200), "idle 1.2 s");
    let r = c
        .request(&Req::get("/second"))
        .expect("the connection idle for less than the limit was closed");
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(echo.last().unwrap().target, "/second");

    // The idle clock restarts after each response: now left idle, it is closed once the
    // limit has passed, and not before.
    let idle_since = Instant::now();
    let took = closed_after(
        &mut c,
        idle_since,
        Duration::from_secs(5),
        "idle past the limit",
    );
    assert!(
        took + EARLY >= limit,
        "closed after {took:?}, before the {limit:?} keep-alive timeout"
    );
    // hubgate's HTTP stack counts keep-alive in whole seconds (rounded up).
    assert!(
        took <= limit + Duration::from_millis(1500),
        "closed only after {took:?} (limit {limit:?})"
    );
    eprintln!("idle keep-alive connection closed after {took:?}");
    assert_eq!(echo.count(), 2);
}

#[test]
fn timeout_keeps_a_client_pausing_for_less_and_closes_one_stalling_for_longer() {
    // A long keep-alive, so that only --timeout can close the connection.
    let limit = Duration::from_millis(1000);
    let (hg, echo) = echo_proxy(&["--timeout", "1000", "--keep-alive-timeout", "60000"]);
    let head = "POST /upload HTTP/1.1\r\nHost: hub\r\nContent-Length: 10\r\n\r\n";

    // Half the body, a 600 ms pause (< 1 s), the rest: a normal response.
    let mut c = hg.proxy_conn();
    c.send_raw(format!("{head}01234").as_bytes()).unwrap();
    assert_still_open(&mut c, Duration::from_millis(600), "paused 0.6 s");
    c.send_raw(b"56789").unwrap();
    let r = c.read_response(false).expect("response after the pause");
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(r.json()["body_len"], 10, "{}", r.describe());
    assert_eq!(r.json()["body_fnv"], fnv_hex(b"0123456789"));

    // Half the body, then silence: hubgate drops the client once the limit has passed.
    let before = echo.count();
    let mut c = hg.proxy_conn();
    c.send_raw(format!("{head}01234").as_bytes()).unwrap();
    let stalled_since = Instant::now();
    let took = closed_after(
        &mut c,
        stalled_since,
        Duration::from_secs(5),
        "stalled upload",
    );
    assert!(
        took + EARLY >= limit,
        "closed after {took:?}, before the {limit:?} --timeout"
    );
    assert!(
        took <= limit + Duration::from_millis(1500),
        "closed only after {took:?} (limit {limit:?})"
    );
    eprintln!("stalled client closed after {took:?}");
    assert_eq!(
        echo.count(),
        before,
        "the incomplete request reached the target"
    );
    // The listener is unaffected.
    assert_eq!(hg.get("/after").status, 200);
}
