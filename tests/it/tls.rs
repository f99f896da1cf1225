//! TLS on the public listener (`--ssl-key/--ssl-cert`) and the HTTP→HTTPS
//! redirect server (`--redirect-port/--redirect-to`): docs/chp-compatibility.md, TLS.

use crate::support::tls::{generate_cert, tls_conn};
use crate::support::ws::tungstenite;
use crate::support::*;
use std::path::PathBuf;
use std::time::Duration;

struct TlsProxy {
    hg: Hubgate,
    cert: PathBuf,
    _dir: TempDir,
}

fn start_tls(extra: &[&str], wait: Option<u16>) -> TlsProxy {
    let dir = TempDir::new("tls");
    let (cert, key) = generate_cert(&dir.path);
    let mut b = Hubgate::builder()
        .args(&[
            "--ssl-key",
            &key.to_string_lossy(),
            "--ssl-cert",
            &cert.to_string_lossy(),
        ])
        .args(extra);
    if let Some(p) = wait {
        b = b.wait_port(p);
    }
    TlsProxy {
        hg: b.start(),
        cert,
        _dir: dir,
    }
}

#[test]
fn https_request_is_proxied() {
    let t = start_tls(&[], None);
    let echo = Backend::echo();
    t.hg.add_route("/user/alice", &echo.url());
    let mut c = tls_conn(t.hg.port, &t.cert, "localhost").expect("TLS handshake with hubgate");
    let r = c
        .request(&Req::get("/user/alice/x?y=1"))
        .expect("HTTPS request");
    assert_eq!(r.status, 200, "{}", r.describe());
    let rec = echo.last().unwrap();
    assert_eq!(rec.target, "/user/alice/x?y=1");
    assert_eq!(rec.header("x-forwarded-proto").as_deref(), Some("https"));
    assert_eq!(rec.header("x-forwarded-port"), Some(t.hg.port.to_string()));
    // Keep-alive over TLS; Host without a port → 443.
    let r = c
        .request(&Req::get("/user/alice/y").host("hub.example.org"))
        .expect("second HTTPS request");
    assert_eq!(r.status, 200);
    assert_eq!(
        echo.last().unwrap().header("x-forwarded-port").as_deref(),
        Some("443")
    );
    let r = c.request(&Req::get("/_chp_healthz")).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), r#"{"status":"OK"}"#);
    // The API stays plain HTTP.
    assert_eq!(t.hg.api_get("/api/routes").status, 200);
}

#[test]
fn wss_upgrade_gets_x_forwarded_proto_wss() {
    let t = start_tls(&[], None);
    let ws = WsBackend::echo();
    t.hg.add_route("/user/alice", &ws.url());
    let c = tls_conn(t.hg.port, &t.cert, "localhost").expect("TLS handshake");
    let stream = c.into_stream();
    let url = format!(
        "wss://localhost:{}/user/alice/api/kernels/k/channels",
        t.hg.port
    );
    let (mut sock, resp) =
        tungstenite::client::client(url.as_str(), stream).expect("wss upgrade through hubgate");
    assert_eq!(resp.status().as_u16(), 101);
    sock.send(tungstenite::Message::Text("over tls".into()))
        .unwrap();
    loop {
        match sock.read().expect("read echo") {
            tungstenite::Message::Text(t) => {
                assert_eq!(t.as_str(), "over tls");
                break;
            }
            _ => continue,
        }
    }
    let rec = ws.requests().pop().unwrap();
    assert_eq!(rec.header("x-forwarded-proto").as_deref(), Some("wss"));
    assert_eq!(rec.target, "/user/alice/api/kernels/k/channels");
    let _ = sock.close(None);
}

#[test]
fn plain_http_to_the_tls_port_is_not_served() {
    let t = start_tls(&[], None);
    let echo = Backend::echo();
    t.hg.add_route("/", &echo.url());
    if let Ok(r) = try_http(t.hg.port, &Req::get("/x")) {
        assert_ne!(
            r.status, 200,
            "plain HTTP must not be proxied on the TLS port"
        );
    }
    assert_eq!(echo.count(), 0);
}

#[test]
fn redirect_port_answers_301_to_https() {
    let rp = free_port();
    let t = start_tls(&["--redirect-port", &rp.to_string()], Some(rp));
    assert!(
        t.hg.wait_for_stdout(
            "Added HTTP to HTTPS redirection from",
            Duration::from_secs(5)
        ),
        "stdout lacks the redirect readiness line:\n{}",
        t.hg.output()
    );
    let r = http(
        rp,
        &Req::get("/user/x?y=1").host(&format!("example.org:{rp}")),
    );
    assert_eq!(r.status, 301, "{}", r.describe());
    assert_eq!(
        r.header("location"),
        Some(format!("https://example.org:{}/user/x?y=1", t.hg.port).as_str())
    );
    let r = http(rp, &Req::get("/").host("example.org"));
    assert_eq!(r.status, 301);
    assert_eq!(
        r.header("location"),
        Some(format!("https://example.org:{}/", t.hg.port).as_str())
    );
}

#[test]
fn redirect_to_overrides_the_port() {
    // CHP 5.3.0 compares the *string* "443" with 443, so it keeps ":443" when it
    // comes from --redirect-to; both spellings are the same URL.
    for (to, want) in [
        (
            "443",
            vec!["https://example.org/a?b=c", "https://example.org:443/a?b=c"],
        ),
        ("8443", vec!["https://example.org:8443/a?b=c"]),
    ] {
        let rp = free_port();
        let t = start_tls(
            &["--redirect-port", &rp.to_string(), "--redirect-to", to],
            Some(rp),
        );
        let r = http(rp, &Req::get("/a?b=c").host(&format!("example.org:{rp}")));
        assert_eq!(r.status, 301, "{}", r.describe());
        let loc = r.header("location").unwrap_or("");
        assert!(
            want.contains(&loc),
            "--redirect-to {to}: Location {loc:?}, want one of {want:?}"
        );
        drop(t);
    }
}

#[test]
fn redirect_without_host_is_400() {
    let rp = free_port();
    let _t = start_tls(&["--redirect-port", &rp.to_string()], Some(rp));
    let r = http(rp, &Req::get("/x").no_host().version("HTTP/1.0"));
    assert_eq!(r.status, 400, "{}", r.describe());
    let r = http(rp, &Req::get("/x").no_host());
    assert_eq!(r.status, 400, "{}", r.describe());
}

type Wss = tungstenite::WebSocket<Box<dyn crate::support::client::Stream>>;

/// A wss websocket through hubgate's TLS listener to `ws`'s echo.
fn open_wss(t: &TlsProxy, path: &str) -> Wss {
    let c = tls_conn(t.hg.port, &t.cert, "localhost").expect("TLS handshake");
    c.set_read_timeout(Duration::from_secs(10));
    let url = format!("wss://localhost:{}{path}", t.hg.port);
    let (sock, resp) = tungstenite::client::client(url.as_str(), c.into_stream())
        .expect("wss upgrade through hubgate");
    assert_eq!(resp.status().as_u16(), 101);
    sock
}

fn echoed(sock: &mut Wss, msg: tungstenite::Message) {
    sock.send(msg.clone()).expect("send over wss");
    loop {
        match sock.read().expect("read the echo over wss") {
            m @ (tungstenite::Message::Text(_) | tungstenite::Message::Binary(_)) => {
                assert!(m == msg, "echo differs ({} bytes sent)", msg.len());
                return;
            }
            _ => continue,
        }
    }
}

// After the 101, hubgate takes the client's TLS stream out of pingora's wrapper and frees its
// L4 buffers (docs/pingora-patches.md): what goes through must be unchanged, in both
// directions, for messages spanning many TLS records, and the endings must be TLS-clean.
#[test]
fn wss_relay_carries_many_and_large_messages_and_the_clients_close() {
    let t = start_tls(&[], None);
    let ws = WsBackend::echo();
    t.hg.add_route("/user/alice", &ws.url());
    let mut sock = open_wss(&t, "/user/alice/api/kernels/k/channels");
    for i in 0..200 {
        echoed(
            &mut sock,
            tungstenite::Message::Text(format!("msg {i}").into()),
        );
    }
    // 256 KiB: 16 TLS records each way, more than any buffer on the path.
    let big: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
    echoed(&mut sock, tungstenite::Message::Binary(big.into()));
    sock.close(Some(tungstenite::protocol::CloseFrame {
        code: tungstenite::protocol::frame::coding::CloseCode::Normal,
        reason: "done".into(),
    }))
    .expect("send close");
    // The client's close frame reaches the kernel side as sent.
    assert!(
        ws.wait_closed(1, Duration::from_secs(5)),
        "the backend's websocket did not close"
    );
    assert_eq!(ws.close_frames(), vec![(1000, "done".to_string())]);
}

#[test]
fn wss_gets_1001_on_sigterm() {
    let t = start_tls(&[], None);
    let ws = WsBackend::echo();
    t.hg.add_route("/user/alice", &ws.url());
    let mut sock = open_wss(&t, "/user/alice/api/kernels/k/channels");
    echoed(&mut sock, tungstenite::Message::Text("before".into()));
    t.hg.signal(libc::SIGTERM);
    let frame = loop {
        match sock.read() {
            Ok(tungstenite::Message::Close(frame)) => break frame,
            Ok(_) => continue,
            Err(e) => panic!("error instead of a close frame over wss: {e}"),
        }
    };
    let frame = frame.expect("a close frame with a code");
    assert_eq!(
        frame.code,
        tungstenite::protocol::frame::coding::CloseCode::Away,
        "{frame:?}"
    );
}
