//! SIGTERM's bound: a request longer than `server.shutdown-grace-seconds` is cut at the bound,
//! new connections are refused while draining, and open websockets get a close frame (1001,
//! going away) rather than a reset. Real binary, real HTTP and websocket backends, loopback.

use crate::support::ws::ws_connect;
use crate::support::*;
use futures_util::StreamExt;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_cuts_at_the_grace_bound_refuses_new_connections_and_closes_websockets_with_1001() {
    let dir = TempDir::new("shutdown");
    let conf = dir.write("hubgate.toml", "[server]\nshutdown-grace-seconds = 2\n");
    let mut hg = Hubgate::builder()
        .args(&["--config", &conf.to_string_lossy()])
        .start();
    let slow = Backend::fixed(Reply::new(200).body("late").delay(Duration::from_secs(30)));
    let ws = WsBackend::echo();
    hg.add_route("/", &slow.url());
    hg.add_route("/ws", &ws.url());
    let port = hg.port;

    let (mut client, resp) = ws_connect(port, "/ws/k", &[]).await.expect("ws connect");
    assert_eq!(resp.status().as_u16(), 101);
    let long = std::thread::spawn(move || {
        let started = Instant::now();
        (try_http(port, &Req::get("/slow")), started)
    });
    assert!(
        slow.wait_for(1, Duration::from_secs(5)),
        "backend got the long request"
    );

    let t0 = Instant::now();
    hg.signal(libc::SIGTERM);

    // The websocket: a close frame with 1001, not a reset.
    let got = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match client.next().await {
                Some(Ok(Message::Close(frame))) => return Ok(frame),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(format!("error instead of a close frame: {e}")),
                None => return Err("ended without a close frame".to_string()),
            }
        }
    })
    .await
    .expect("close frame within 5 s");
    let frame = got.expect("close frame").expect("close frame with a code");
    assert_eq!(frame.code, CloseCode::Away, "{frame:?}");

    // New connections are refused while the long request drains.
    assert!(
        wait_until(Duration::from_secs(1), || try_http(port, &Req::get("/new"))
            .is_err()),
        "a new request was served while draining"
    );
    assert!(hg.is_running(), "still draining the long request");

    // The long request is cut at the bound (2 s), not served, and hubgate exits.
    let status = hg.wait_exit(Duration::from_secs(10)).expect("exited");
    let took = t0.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(
        took >= Duration::from_millis(1800) && took < Duration::from_secs(5),
        "exit {took:?} after SIGTERM, grace 2 s"
    );
    let (res, started) = long.join().expect("thread");
    assert!(
        res.is_err(),
        "the long request was cut: {:?}",
        res.map(|r| r.status)
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}
