//! Websocket upgrades with authentication (docs/security.md, tokens in the query string
//! and websocket threats): the upgrade is authorised like any request, the query-parameter credential is
//! removed before forwarding, cookies need a same-origin `Origin`, relays close when
//! the credential expires, and a refused upgrade is not turned into a raw tunnel.

use crate::support::auth_proxy::*;
use crate::support::jwt::*;
use crate::support::oidc::*;
use crate::support::ws::{raw_upgrade, ws_close_frame, ws_recv_text, ws_wait_end, WsEnd};
use crate::support::*;
use futures_util::SinkExt;
use serde_json::json;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::{self as tung, Message};

const T: Duration = Duration::from_secs(10);
/// (what, path, headers, expected status)
type RefusalCase<'a> = (&'a str, String, Vec<(&'a str, String)>, u16);

const CHANNELS: &str = "/user/alice/api/kernels/k1/channels";

/// The env with alice's and bob's routes pointing at websocket echo backends.
fn ws_env(tweak: impl FnOnce(&mut AuthCfg)) -> (AuthEnv, WsBackend, WsBackend) {
    let env = AuthEnv::start_with(tweak);
    let wa = WsBackend::echo();
    let wb = WsBackend::echo();
    env.px.add_route_json(
        "/user/alice",
        &json!({"target": wa.url(), "user": "alice"}).to_string(),
    );
    env.px.add_route_json(
        "/user/bob",
        &json!({"target": wb.url(), "user": "bob"}).to_string(),
    );
    (env, wa, wb)
}

/// The HTTP status of a refused handshake (panics if it was accepted).
async fn refused(port: u16, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    match ws_connect(port, path, headers).await {
        Ok((_, resp)) => panic!("{path}: upgrade accepted ({})", resp.status()),
        Err(tung::Error::Http(resp)) => {
            let body = resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            (resp.status().as_u16(), body)
        }
        Err(e) => panic!("{path}: unexpected handshake error {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_upgrade_happy_path_and_refusals() {
    let (env, wa, wb) = ws_env(|_| {});
    let port = env.px.port;
    let alice = env.token("alice");
    let auth = format!("Bearer {alice}");
    let (mut c, resp) = ws_connect(
        port,
        &format!("{CHANNELS}?session_id=s1"),
        &[("Authorization", &auth)],
    )
    .await
    .expect("alice's upgrade");
    assert_eq!(resp.status().as_u16(), 101);
    c.send(Message::Text("ping-1".into())).await.unwrap();
    assert_eq!(ws_recv_text(&mut c, T).await.as_deref(), Some("ping-1"));
    let rec = wa.requests().pop().unwrap();
    assert_eq!(rec.header("x-auth-request-user").as_deref(), Some("alice"));
    assert_eq!(rec.target, format!("{CHANNELS}?session_id=s1"));
    let _ = c.close(None).await;

    // Refusals: no 101, no upstream upgrade.
    let expired = env.token_with("alice", |c| {
        c.insert("exp".into(), json!(now() - 3600));
    });
    let no_mfa = env.token_with("alice", |c| {
        c.insert("acr".into(), json!(SFA_ACR));
        c.insert("amr".into(), json!(["pwd"]));
    });
    let bearer = |t: &str| format!("Bearer {t}");
    let cases: Vec<RefusalCase> = vec![
        ("no credential", CHANNELS.into(), vec![], 401),
        (
            "expired",
            CHANNELS.into(),
            vec![("Authorization", bearer(&expired))],
            401,
        ),
        (
            "no MFA",
            CHANNELS.into(),
            vec![("Authorization", bearer(&no_mfa))],
            403,
        ),
        (
            "alice to bob's kernel",
            "/user/bob/api/kernels/k1/channels".into(),
            vec![("Authorization", bearer(&alice))],
            403,
        ),
        (
            "query param not enabled",
            format!("{CHANNELS}?hubgate_token={alice}"),
            vec![],
            401,
        ),
        (
            "Jupyter ?token=",
            format!("{CHANNELS}?token={alice}"),
            vec![],
            401,
        ),
        (
            "token in Sec-WebSocket-Protocol",
            CHANNELS.into(),
            vec![(
                "Sec-WebSocket-Protocol",
                format!("v1.kernel.websocket.jupyter.org, {alice}"),
            )],
            401,
        ),
    ];
    for (what, path, headers, want) in &cases {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (status, body) = refused(port, path, &h).await;
        assert_eq!(status, *want, "{what}: {body}");
        for w in REASON_WORDS {
            assert!(!body.contains(w), "{what}: body reveals {w}: {body}");
        }
    }
    assert_eq!(wa.count(), 1, "a refused upgrade reached alice's server");
    assert_eq!(wb.count(), 0, "a refused upgrade reached bob's server");
    assert!(env.px.denials("not_owner") >= 1.0);
    env.px.assert_not_logged(&alice);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row10_query_param_credential_is_removed_before_forwarding() {
    let (env, wa, _wb) = ws_env(|c| c.query_param = Some("hubgate_token".into()));
    let port = env.px.port;
    let alice = env.token("alice");
    for (sent, want) in [
        (
            format!("{CHANNELS}?session_id=s1&hubgate_token={alice}"),
            format!("{CHANNELS}?session_id=s1"),
        ),
        (
            format!("{CHANNELS}?hubgate_token={alice}&session_id=s2"),
            format!("{CHANNELS}?session_id=s2"),
        ),
    ] {
        let (mut c, resp) = ws_connect(port, &sent, &[])
            .await
            .expect("upgrade with query token");
        assert_eq!(resp.status().as_u16(), 101);
        c.send(Message::Text("x".into())).await.unwrap();
        assert_eq!(ws_recv_text(&mut c, T).await.as_deref(), Some("x"));
        let rec = wa.requests().pop().unwrap();
        assert_eq!(rec.target, want, "query credential not removed");
        assert_eq!(rec.header("x-auth-request-user").as_deref(), Some("alice"));
        let _ = c.close(None).await;
    }
    // Alone in the query string.
    let (mut c, _) = ws_connect(port, &format!("{CHANNELS}?hubgate_token={alice}"), &[])
        .await
        .expect("upgrade with only the query token");
    let rec = wa.requests().pop().unwrap();
    assert!(
        !rec.target.contains("hubgate_token") && !rec.target.contains(&alice),
        "{}",
        rec.target
    );
    assert!(
        rec.target == CHANNELS || rec.target == format!("{CHANNELS}?"),
        "{}",
        rec.target
    );
    let _ = c.close(None).await;
    // Query token plus a Bearer header: two credentials.
    let (status, _) = refused(
        port,
        &format!("{CHANNELS}?hubgate_token={alice}"),
        &[("Authorization", &format!("Bearer {}", env.token("alice")))],
    )
    .await;
    assert_eq!(status, 400, "two credentials on an upgrade");
    // A bad query token is refused like a bad header token.
    let (status, _) = refused(port, &format!("{CHANNELS}?hubgate_token=abc.def.ghi"), &[]).await;
    assert_eq!(status, 401);
    // Never in logs or metrics.
    env.px.assert_not_logged(&alice);
    assert!(!env.px.metrics().contains(&alice[..40]), "token in metrics");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row13_cookie_upgrades_need_our_origin() {
    let p = pool();
    let key = p.rsa[2].with_kid("fake-idp");
    let stub = JwksStub::start(&[&key]);
    let port = free_port();
    let mut iss = IssuerCfg::new(&stub.issuer);
    iss.client_id = Some("hubgate".into());
    let px = start_ready(port, &AuthCfg::new(port, vec![iss]));
    let wa = WsBackend::echo();
    px.add_route_json(
        "/user/alice",
        &json!({"target": wa.url(), "user": "alice"}).to_string(),
    );
    let session = fake_session(port, &stub, &key, "alice");
    let cookie = format!("{SESSION_COOKIE}={session}; _xsrf=abc");
    let origin = format!("http://127.0.0.1:{port}");
    let (mut c, resp) = ws_connect(port, CHANNELS, &[("Cookie", &cookie), ("Origin", &origin)])
        .await
        .expect("cookie upgrade from our origin");
    assert_eq!(resp.status().as_u16(), 101);
    c.send(Message::Text("hi".into())).await.unwrap();
    assert_eq!(ws_recv_text(&mut c, T).await.as_deref(), Some("hi"));
    let rec = wa.requests().pop().unwrap();
    let fwd_cookie = rec.header("cookie").unwrap_or_default();
    assert!(
        !fwd_cookie.contains(SESSION_COOKIE),
        "session cookie forwarded on upgrade: {fwd_cookie}"
    );
    assert!(fwd_cookie.contains("_xsrf=abc"), "{fwd_cookie}");
    let _ = c.close(None).await;

    let before = px.denials("origin_mismatch");
    for evil in [
        "https://evil.example".to_string(),
        format!("http://127.0.0.1:{port}.evil.example"),
        format!("https://127.0.0.1:{port}"),
        format!("http://127.0.0.1:{}", port + 1),
        "null".to_string(),
    ] {
        let (status, _) = refused(port, CHANNELS, &[("Cookie", &cookie), ("Origin", &evil)]).await;
        assert_eq!(status, 403, "Origin {evil}");
    }
    assert!(
        px.denials("origin_mismatch") - before >= 5.0,
        "reason=origin_mismatch"
    );
    assert_eq!(wa.count(), 1, "cross-site upgrade reached the server");
    px.assert_not_logged(&session);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row13_relay_closes_when_the_credential_expires() {
    let (env_on, wa_on, _) = ws_env(|c| c.issuers[0].leeway = 0);
    let (env_off, wa_off, _) = ws_env(|c| {
        c.issuers[0].leeway = 0;
        c.close_websockets_on_expiry = false;
    });
    let exp = now() + 3;
    let tok_on = env_on.token_with("alice", |c| {
        c.insert("exp".into(), json!(exp));
    });
    let tok_off = env_off.token_with("alice", |c| {
        c.insert("exp".into(), json!(exp));
    });
    let (mut on, _) = ws_connect(
        env_on.px.port,
        CHANNELS,
        &[("Authorization", &format!("Bearer {tok_on}"))],
    )
    .await
    .expect("upgrade (close on expiry)");
    let (mut off, _) = ws_connect(
        env_off.px.port,
        CHANNELS,
        &[("Authorization", &format!("Bearer {tok_off}"))],
    )
    .await
    .expect("upgrade (no close on expiry)");
    let t0 = Instant::now();
    on.send(Message::Text("a".into())).await.unwrap();
    assert_eq!(ws_recv_text(&mut on, T).await.as_deref(), Some("a"));
    // Still open a little before exp.
    assert_eq!(
        ws_wait_end(&mut on, Duration::from_millis(1500)).await,
        WsEnd::StillOpen
    );
    // Closed soon after exp (exp is whole seconds: allow 3 s of slack), with a close frame
    // saying why (1008, policy violation) to the client and to the kernel's server.
    let end = ws_close_frame(&mut on, Duration::from_secs(6)).await;
    assert_eq!(
        end,
        Some((1008, "credential expired".to_string())),
        "no 1008 close frame {:?} after the token expired",
        t0.elapsed()
    );
    assert!(
        wa_on.wait_closed(1, T),
        "upstream side of the relay not closed"
    );
    assert_eq!(
        wa_on.close_frames(),
        vec![(1008, "credential expired".to_string())]
    );
    // Without close-websockets-on-expiry the relay outlives the token.
    off.send(Message::Text("b".into())).await.unwrap();
    assert_eq!(ws_recv_text(&mut off, T).await.as_deref(), Some("b"));
    assert_eq!(wa_off.closed(), 0);
    let _ = off.close(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row13_refused_upstream_upgrade_is_not_a_tunnel() {
    let env = AuthEnv::start();
    let nope = Backend::fixed(Reply::new(404).body("no such kernel"));
    env.px.add_route_json(
        "/user/alice",
        &json!({"target": nope.url(), "user": "alice"}).to_string(),
    );
    let alice = env.token("alice");
    let mut conn = env.px.proxy_conn();
    let mut req = raw_upgrade(CHANNELS, &format!("127.0.0.1:{}", env.px.port));
    let auth = format!("Authorization: Bearer {alice}\r\n\r\n");
    req.truncate(req.len() - 2);
    req.extend_from_slice(auth.as_bytes());
    conn.send_raw(&req).unwrap();
    let r = conn.read_response(false).expect("response to the upgrade");
    assert_eq!(r.status, 404, "{}", r.describe());
    // The same connection, a request without any credential: authenticated as usual.
    let second = Req::get("/user/alice/api/contents");
    // (A closed connection is also fine.)
    if let Ok(r) = conn.request(&second) {
        assert_eq!(
            r.status,
            401,
            "second request on the refused upgrade's connection: {}",
            r.describe()
        );
    }
    assert_eq!(
        nope.count(),
        1,
        "bytes after a refused upgrade reached the backend"
    );
}
