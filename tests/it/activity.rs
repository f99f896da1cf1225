//! `last_activity` bookkeeping (docs/chp-compatibility.md, activity tracking).

use crate::support::ws::{ws_recv_text, WsOptions};
use crate::support::*;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

use futures_util::SinkExt;

/// A gap so that millisecond timestamps differ.
fn gap() {
    std::thread::sleep(Duration::from_millis(20));
}

/// Asserts `last_activity` of `key` moves past `before` (polling up to 2 s: the
/// update may land just after the response).
fn assert_moves(hg: &Hubgate, key: &str, before: &str, what: &str) {
    let mut now = String::new();
    let moved = wait_until(Duration::from_secs(2), || {
        now = hg.last_activity(key);
        now != before
    });
    assert!(
        moved,
        "{what}: last_activity of {key} should move, stayed {before}"
    );
    assert!(
        iso_millis(&now) > iso_millis(before),
        "{what}: {before} -> {now} went backwards"
    );
}

/// Asserts `last_activity` of `key` is still `before` after a short while.
fn assert_unchanged(hg: &Hubgate, key: &str, before: &str, what: &str) {
    std::thread::sleep(Duration::from_millis(250));
    assert_eq!(
        hg.last_activity(key),
        before,
        "{what}: last_activity of {key} must not move"
    );
}

#[test]
fn successful_requests_update_last_activity() {
    let hg = Hubgate::start(&[], &[]);
    for code in [200u16, 201, 204] {
        let b = Backend::fixed(Reply::new(code).body(if code == 204 { "" } else { "ok" }));
        hg.add_route("/user/alice", &b.url());
        let before = hg.last_activity("/user/alice");
        gap();
        let r = hg.get("/user/alice/api/status");
        assert_eq!(r.status, code);
        assert_moves(&hg, "/user/alice", &before, &format!("GET answered {code}"));
    }
}

#[test]
fn non_2xx_upstream_responses_do_not_update_last_activity() {
    let hg = Hubgate::start(&[], &[]);
    for code in [301u16, 302, 304, 404, 500, 503] {
        let b = Backend::fixed(
            Reply::new(code)
                .header("Location", "/elsewhere")
                .body(if code == 304 { "" } else { "no" }),
        );
        hg.add_route("/user/alice", &b.url());
        let before = hg.last_activity("/user/alice");
        gap();
        let r = hg.get("/user/alice/x");
        assert_eq!(r.status, code);
        assert_eq!(b.count(), 1);
        assert_unchanged(&hg, "/user/alice", &before, &format!("GET answered {code}"));
    }
}

#[test]
fn request_body_updates_last_activity_even_on_upstream_404() {
    let hg = Hubgate::start(&[], &[]);
    let b = Backend::fixed(Reply::new(404).body("no"));
    hg.add_route("/user/alice", &b.url());
    let before = hg.last_activity("/user/alice");
    gap();
    let r = hg.request(&Req::post("/user/alice/api/contents", "some body bytes"));
    assert_eq!(r.status, 404);
    assert_moves(&hg, "/user/alice", &before, "POST with a body answered 404");
}

#[test]
fn proxy_errors_do_not_update_last_activity() {
    let hg = Hubgate::start(&[], &[]);
    let dead = format!("http://127.0.0.1:{}", free_port());
    hg.add_route("/user/dead", &dead);
    let before = hg.last_activity("/user/dead");
    gap();
    let r = hg.get("/user/dead/x");
    assert_eq!(r.status, 503);
    assert_unchanged(&hg, "/user/dead", &before, "503 from a dead upstream");

    // A bad escape under a live route: 500, no activity.
    let b = Backend::echo();
    hg.add_route("/user/alice", &b.url());
    let before = hg.last_activity("/user/alice");
    gap();
    let r = hg.get("/user/alice/%");
    assert_eq!(r.status, 500);
    assert_eq!(b.count(), 0);
    assert_unchanged(&hg, "/user/alice", &before, "500 for a bad escape");
}

#[test]
fn only_the_matched_route_is_updated() {
    let hg = Hubgate::start(&[], &[]);
    let b = Backend::echo();
    for k in ["/", "/user/alice", "/user/alice/lab", "/user/bob"] {
        hg.add_route(k, &b.url());
    }
    let before: Vec<String> = ["/", "/user/alice", "/user/alice/lab", "/user/bob"]
        .iter()
        .map(|k| hg.last_activity(k))
        .collect();
    gap();
    assert_eq!(hg.get("/user/alice/lab/tree").status, 200);
    assert_eq!(hg.get("/_chp_healthz").status, 200);
    assert_moves(
        &hg,
        "/user/alice/lab",
        &before[2],
        "GET /user/alice/lab/tree",
    );
    assert_eq!(
        hg.last_activity("/"),
        before[0],
        "health checks are not activity"
    );
    assert_eq!(
        hg.last_activity("/user/alice"),
        before[1],
        "only the longest match moves"
    );
    assert_eq!(hg.last_activity("/user/bob"), before[3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_client_frames_update_but_open_and_server_frames_do_not() {
    let hg = Hubgate::start(&[], &[]);
    let ws = WsBackend::start(WsOptions {
        greeting: Some("connected".into()),
        ..Default::default()
    });
    hg.add_route("/user/alice", &ws.url());
    let before = hg.last_activity("/user/alice");
    gap();
    let (mut c, resp) = ws_connect(hg.port, "/user/alice/api/kernels/k1/channels", &[])
        .await
        .expect("websocket through hubgate");
    assert_eq!(resp.status().as_u16(), 101);
    assert_eq!(
        ws_recv_text(&mut c, Duration::from_secs(5))
            .await
            .as_deref(),
        Some("connected")
    );
    assert_unchanged(
        &hg,
        "/user/alice",
        &before,
        "websocket open + server message",
    );

    c.send(Message::Text("hello".into())).await.unwrap();
    assert_eq!(
        ws_recv_text(&mut c, Duration::from_secs(5))
            .await
            .as_deref(),
        Some("hello")
    );
    assert_moves(&hg, "/user/alice", &before, "client websocket frame");
    let _ = c.close(None).await;
}
