//! Revocation by operators (`POST /api/_hubgate/revocations` on the API listener): every
//! credential of a user issued until now is refused from then on — cached verifications
//! included — and that user's open websockets get a close frame (1008) at once; other users
//! are untouched. Bad bodies answer 400 with a reason, a missing token 403.

use crate::support::auth_proxy::*;
use crate::support::jwt::*;
use crate::support::ws::{ws_close_frame, ws_recv_text, WsBackend};
use crate::support::*;
use futures_util::SinkExt;
use serde_json::json;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

const T: Duration = Duration::from_secs(10);
const CHANNELS: &str = "/user/alice/api/kernels/k1/channels";
const REVOCATIONS: &str = "/api/_hubgate/revocations";

/// `POST /api/_hubgate/revocations` with `body` (with the API token).
pub fn revoke(px: &AuthProxy, body: &str) -> Response {
    px.api(Req::new("POST", REVOCATIONS).body(body.as_bytes()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_user_refuses_older_credentials_and_closes_their_websockets() {
    let env = AuthEnv::start();
    let ws = WsBackend::echo();
    // Alice's kernels on a websocket server, the rest of her server on the echo backend.
    env.px.add_route_json(
        "/user/alice/api/kernels",
        &json!({"target": ws.url(), "user": "alice"}).to_string(),
    );
    let alice = env.token("alice");
    let bob = env.token("bob");
    // Verified once, so the next uses come from the verified-token cache.
    env.assert_allowed(
        "/user/alice/api/contents",
        &alice,
        &env.alice,
        "alice before",
    );
    env.assert_allowed("/user/bob/api/contents", &bob, &env.bob, "bob before");
    let (mut c, _) = crate::support::ws::ws_connect(
        env.px.port,
        CHANNELS,
        &[("Authorization", &format!("Bearer {alice}"))],
    )
    .await
    .expect("alice's websocket");
    c.send(Message::Text("before".into())).await.unwrap();
    assert_eq!(ws_recv_text(&mut c, T).await.as_deref(), Some("before"));

    // Without the API token: refused, nothing revoked.
    let r = env
        .px
        .api_raw(&Req::new("POST", REVOCATIONS).body(br#"{"user":"alice"}"#));
    assert_eq!(r.status, 403, "{}", r.describe());
    // Bad bodies: 400 with a reason.
    for (body, says) in [
        ("{}", "exactly one"),
        (r#"{"user":"alice","session":"s"}"#, "exactly one"),
        (r#"{"user":"alice","until":1}"#, "unknown field"),
        (r#"{"user":""}"#, "non-empty"),
        ("not json", "Bad revocation"),
    ] {
        let r = revoke(&env.px, body);
        assert_eq!(r.status, 400, "{body}: {}", r.describe());
        assert!(r.text().contains(says), "{body}: {}", r.text());
    }
    env.assert_allowed(
        "/user/alice/api/contents",
        &alice,
        &env.alice,
        "alice, nothing revoked yet",
    );

    // The operator revokes alice.
    let r = revoke(&env.px, r#"{"user":"alice"}"#);
    assert_eq!(r.status, 201, "{}", r.describe());
    let answer: serde_json::Value = serde_json::from_str(&r.text()).unwrap();
    assert_eq!(answer["user"], "alice");
    let not_before = answer["not_before"].as_i64().expect("not_before");
    assert!((now() - not_before).abs() <= 2, "{answer}");

    // Her websocket is closed now, with a close frame saying why, on both sides.
    assert_eq!(
        ws_close_frame(&mut c, T).await,
        Some((1008, "credential revoked".to_string()))
    );
    assert!(ws.wait_closed(1, T), "the kernel side stayed open");
    assert_eq!(ws.close_frames(), vec![(1008, "credential revoked".into())]);

    // Her token (cached) is refused, with the generic body; bob's still works.
    let r = env.assert_denied(
        "/user/alice/api/contents",
        &alice,
        401,
        "alice's revoked token",
    );
    assert_generic_body(&r, "revoked");
    assert!(env.px.denials("revoked") >= 1.0);
    env.assert_allowed("/user/bob/api/contents", &bob, &env.bob, "bob after");
    // A new upgrade with the old token is refused too.
    assert!(crate::support::ws::ws_connect(
        env.px.port,
        CHANNELS,
        &[("Authorization", &format!("Bearer {alice}"))],
    )
    .await
    .is_err());
    // A token without iat is dated by its auth_time (before the revocation): refused too.
    let undated = env.token_with("alice", |c| {
        c.remove("iat");
        c.insert("auth_time".into(), json!(not_before - 5));
    });
    env.assert_denied(
        "/user/alice/api/contents",
        &undated,
        401,
        "token without iat",
    );

    // A token issued after the revocation works (once the clock has moved past it).
    assert!(wait_until(T, || now() > not_before));
    let fresh = env.token_with("alice", |c| {
        c.insert("iat".into(), json!(now()));
    });
    env.assert_allowed(
        "/user/alice/api/contents",
        &fresh,
        &env.alice,
        "alice's new token",
    );

    // Audit log and metrics.
    env.px
        .wait_audit(&["audit user=alice", "decision=revoke reason=api"]);
    let m = env.px.metrics();
    assert_eq!(
        metric_sum(
            &m,
            "hubgate_auth_revocations_total",
            &[("kind", "user"), ("source", "api")]
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric_sum(&m, "hubgate_auth_websockets_closed_revoked_total", &[]),
        1.0
    );
    assert_eq!(metric_sum(&m, "hubgate_auth_revocations", &[]), 1.0);
    env.px.assert_not_logged(&alice);
}
