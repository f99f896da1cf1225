//! Websockets through the proxy (docs/chp-compatibility.md, websockets): pass-through,
//! headers, errors on upgrade requests, no idle timeout, `x-forwarded-proto: ws`.

use crate::support::ws::{
    raw_upgrade, ws_recv, ws_recv_text, ws_wait_end, WsEnd, CMD_CLOSE, CMD_DROP,
};
use crate::support::*;
use futures_util::future::join_all;
use futures_util::SinkExt;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

const T: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_through_the_proxy_with_forwarded_headers() {
    let hg = Hubgate::start(&[], &[]);
    let ws = WsBackend::echo();
    hg.add_route("/user/alice", &ws.url());
    let path = "/user/alice/api/kernels/k1/channels?session_id=abc%20d";
    let (mut c, resp) = ws_connect(hg.port, path, &[("X-Forwarded-For", "1.2.3.4")])
        .await
        .expect("ws connect");
    assert_eq!(resp.status().as_u16(), 101);

    c.send(Message::Text("hello".into())).await.unwrap();
    assert_eq!(ws_recv_text(&mut c, T).await.as_deref(), Some("hello"));
    c.send(Message::Binary(vec![0u8, 1, 2, 255].into()))
        .await
        .unwrap();
    match ws_recv(&mut c, T).await {
        Some(Message::Binary(b)) => assert_eq!(&b[..], &[0u8, 1, 2, 255]),
        other => panic!("expected binary echo, got {other:?}"),
    }
    // Ping from the client is answered (by the upstream, through the pipe).
    c.send(Message::Ping(b"p".to_vec().into())).await.unwrap();
    let got_pong = tokio::time::timeout(T, async {
        use futures_util::StreamExt;
        while let Some(Ok(m)) = c.next().await {
            if let Message::Pong(p) = m {
                return &p[..] == b"p";
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    assert!(got_pong, "no pong for a ping");

    let rec = ws.requests().pop().expect("upstream saw no upgrade");
    assert_eq!(rec.target, path, "path forwarded raw");
    assert_eq!(rec.header("x-forwarded-proto").as_deref(), Some("ws"));
    assert_eq!(
        rec.header("x-forwarded-host"),
        None,
        "no x-forwarded-host on websockets"
    );
    assert_eq!(
        rec.header("x-forwarded-for").as_deref(),
        Some("1.2.3.4,127.0.0.1")
    );
    assert_eq!(rec.header("x-forwarded-port"), Some(hg.port.to_string()));
    assert_eq!(rec.header("host"), Some(format!("127.0.0.1:{}", hg.port)));
    assert_eq!(
        rec.header("upgrade")
            .map(|v| v.to_ascii_lowercase())
            .as_deref(),
        Some("websocket")
    );
    let _ = c.close(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_websockets() {
    let hg = Hubgate::start(&[], &[]);
    let ws = WsBackend::echo();
    hg.add_route("/user", &ws.url());
    let port = hg.port;
    let t0 = Instant::now();
    let tasks = (0..100).map(|i| async move {
        let (mut c, _) = ws_connect(port, &format!("/user/u{i}/channels"), &[])
            .await
            .map_err(|e| format!("#{i}: {e}"))?;
        for j in 0..5 {
            let msg = format!("ws{i}-msg{j}");
            c.send(Message::Text(msg.clone().into()))
                .await
                .map_err(|e| format!("#{i}: {e}"))?;
            let got = ws_recv_text(&mut c, T).await;
            if got.as_deref() != Some(msg.as_str()) {
                return Err(format!("#{i}: sent {msg}, got {got:?}"));
            }
        }
        Ok::<_, String>(c)
    });
    let results = join_all(tasks).await;
    let errors: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        errors.is_empty(),
        "{} of 100 failed: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    eprintln!("100 websockets x 5 echoes in {:?}", t0.elapsed());
    assert_eq!(ws.opened(), 100);
    for c in results.into_iter().flatten() {
        let mut c = c;
        let _ = c.close(None).await;
    }
    assert!(
        ws.wait_closed(100, T),
        "upstream connections not all closed: {}/100",
        ws.closed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_mib_message_both_ways() {
    let hg = Hubgate::start(&[], &[]);
    let ws = WsBackend::echo();
    hg.add_route("/", &ws.url());
    let (mut c, _) = ws_connect(hg.port, "/big", &[]).await.expect("ws connect");
    let data = pattern_body(1024 * 1024);
    c.send(Message::Binary(data.clone().into())).await.unwrap();
    match ws_recv(&mut c, Duration::from_secs(30)).await {
        Some(Message::Binary(b)) => {
            assert_eq!(b.len(), data.len());
            assert!(b[..] == data[..], "1 MiB binary message corrupted");
        }
        other => panic!("expected the 1 MiB echo, got {:?}", other.map(|m| m.len())),
    }
    let text = String::from_utf8(pattern_body(1024 * 1024)).unwrap();
    c.send(Message::Text(text.clone().into())).await.unwrap();
    assert_eq!(
        ws_recv_text(&mut c, Duration::from_secs(30))
            .await
            .as_deref(),
        Some(text.as_str())
    );
    let _ = c.close(None).await;
}

/// Sends a raw upgrade and returns (bytes received, connection closed).
fn raw_upgrade_response(hg: &Hubgate, path: &str) -> (String, bool) {
    let mut c = hg.proxy_conn();
    let host = c.host.clone();
    c.send_raw(&raw_upgrade(path, &host)).unwrap();
    let (bytes, closed) = c.read_until_close(Duration::from_secs(5));
    (String::from_utf8_lossy(&bytes).into_owned(), closed)
}

#[test]
fn no_route_is_a_bare_404_and_the_connection_closes() {
    let err = Backend::error_target();
    let hg = Hubgate::start(
        &["--error-target", &format!("{}/hub/error", err.url())],
        &[],
    );
    let (text, closed) = raw_upgrade_response(&hg, "/user/nobody/api/kernels/x/channels");
    assert!(
        text.starts_with("HTTP/1.1 404\r\n"),
        "expected a bare 'HTTP/1.1 404' status line, got {text:?}"
    );
    assert!(closed, "connection must close after the 404: {text:?}");
    assert_eq!(
        err.count(),
        0,
        "the error target is not used for websocket requests"
    );
}

#[test]
fn dead_route_is_a_bare_503_and_the_connection_closes() {
    let err = Backend::error_target();
    let hg = Hubgate::start(
        &["--error-target", &format!("{}/hub/error", err.url())],
        &[],
    );
    hg.add_route("/user/dead", &format!("http://127.0.0.1:{}", free_port()));
    let t0 = Instant::now();
    let (text, closed) = raw_upgrade_response(&hg, "/user/dead/api/kernels/x/channels");
    assert!(
        text.starts_with("HTTP/1.1 503\r\n"),
        "expected a bare 'HTTP/1.1 503' status line, got {text:?}"
    );
    assert!(closed, "connection must close after the 503: {text:?}");
    assert!(t0.elapsed() < Duration::from_secs(3));
    assert_eq!(
        err.count(),
        0,
        "the error target is not used for websocket requests"
    );
}

#[test]
fn upstream_answering_the_upgrade_with_plain_http_is_relayed_and_closed() {
    let hg = Hubgate::start(&[], &[]);
    for code in [200u16, 404] {
        let b = Backend::fixed(
            Reply::new(code)
                .header("Content-Type", "text/plain")
                .body("not a websocket"),
        );
        hg.add_route("/user/alice", &b.url());
        let (text, closed) = raw_upgrade_response(&hg, "/user/alice/api/kernels/x/channels");
        assert!(
            text.starts_with(&format!("HTTP/1.1 {code}")),
            "{code}: got {text:?}"
        );
        assert!(
            text.contains("not a websocket"),
            "{code}: body relayed: {text:?}"
        );
        assert!(
            closed,
            "{code}: the client connection must be closed (CHP#557): {text:?}"
        );
        assert_eq!(b.count(), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_websocket_survives_70_seconds() {
    let hg = Hubgate::start(&[], &[]);
    let ws = WsBackend::echo();
    hg.add_route("/user/alice", &ws.url());
    let (mut c, _) = ws_connect(hg.port, "/user/alice/terminals/websocket/1", &[])
        .await
        .expect("ws connect");
    c.send(Message::Text("before".into())).await.unwrap();
    assert_eq!(ws_recv_text(&mut c, T).await.as_deref(), Some("before"));
    // Completely idle: no data, no pings, in either direction.
    tokio::time::sleep(Duration::from_secs(70)).await;
    c.send(Message::Text("after 70 s".into()))
        .await
        .expect("send after idle");
    assert_eq!(
        ws_recv_text(&mut c, T).await.as_deref(),
        Some("after 70 s"),
        "an idle websocket must not be cut (pingora's 60 s default read timeout)"
    );
    assert_eq!(ws.closed(), 0);
    let _ = c.close(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_close_closes_the_client() {
    let hg = Hubgate::start(&[], &[]);
    let ws = WsBackend::echo();
    hg.add_route("/", &ws.url());

    // Close handshake from the server.
    let (mut c, _) = ws_connect(hg.port, "/a", &[]).await.expect("ws connect");
    c.send(Message::Text(CMD_CLOSE.into())).await.unwrap();
    assert_eq!(ws_wait_end(&mut c, T).await, WsEnd::CloseFrame);
    assert_eq!(
        ws_wait_end(&mut c, T).await,
        WsEnd::Eof,
        "TCP closed after the close handshake"
    );

    // The server drops TCP without a close frame.
    let (mut c, _) = ws_connect(hg.port, "/b", &[]).await.expect("ws connect");
    c.send(Message::Text(CMD_DROP.into())).await.unwrap();
    assert_eq!(
        ws_wait_end(&mut c, T).await,
        WsEnd::Eof,
        "client side must be closed when the upstream drops"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_close_closes_the_upstream() {
    let hg = Hubgate::start(&[], &[]);
    let ws = WsBackend::echo();
    hg.add_route("/", &ws.url());

    let (mut c, _) = ws_connect(hg.port, "/a", &[]).await.expect("ws connect");
    c.send(Message::Text("x".into())).await.unwrap();
    assert!(ws_recv_text(&mut c, T).await.is_some());
    c.close(None).await.unwrap();
    // The server's close reply, then end of stream.
    let mut end = ws_wait_end(&mut c, T).await;
    if end == WsEnd::CloseFrame {
        end = ws_wait_end(&mut c, T).await;
    }
    assert_eq!(end, WsEnd::Eof);
    assert!(
        ws.wait_closed(1, T),
        "upstream not closed after a client close handshake"
    );

    // The client vanishes without a close frame.
    let (mut c, _) = ws_connect(hg.port, "/b", &[]).await.expect("ws connect");
    c.send(Message::Text("y".into())).await.unwrap();
    assert!(ws_recv_text(&mut c, T).await.is_some());
    drop(c);
    assert!(
        ws.wait_closed(2, T),
        "upstream not closed after the client dropped TCP"
    );
}
