//! Logout against the real OpenID provider (tests/oidc, `--logout-origin`):
//! RP-Initiated Logout 1.0 from `/_hubgate/logout` (session revoked — a copy of the cookie
//! too — and its websockets closed with 1008, then the provider's end-session endpoint with
//! `id_token_hint`, back to `/_hubgate/logged-out`), and Back-Channel Logout 1.0 (the
//! provider posts a logout token when the user logs out there; every hubgate session tied
//! to that provider session is refused). Logout tokens the provider would never send are
//! minted by a key-set stub (no real peer sends a forged or replayed token).

use crate::support::auth_proxy::*;
use crate::support::browser::*;
use crate::support::jwt::*;
use crate::support::oidc::*;
use crate::support::ws::{ws_close_frame, ws_recv_text, WsBackend, WsClient};
use crate::support::*;
use futures_util::SinkExt;
use serde_json::json;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

const T: Duration = Duration::from_secs(10);

struct Env {
    idp: OidcProvider,
    px: AuthProxy,
    port: u16,
    alice: Backend,
    kernels: WsBackend,
}

fn env() -> Env {
    let p = pool();
    let port = free_port();
    let idp = OidcProvider::start(
        ProviderOptions::new(&[&p.rsa[1].with_kid("idp-rsa")])
            .hubgate_port(port)
            .logout_port(port),
    );
    let mut iss = IssuerCfg::new(&idp.issuer);
    iss.client_id = Some("hubgate".into());
    let px = start_ready(port, &AuthCfg::new(port, vec![iss]));
    let hub = Backend::echo();
    let alice = Backend::echo();
    let kernels = WsBackend::echo();
    px.add_route_json(
        "/",
        &json!({"target": hub.url(), "jupyterhub": true}).to_string(),
    );
    for (prefix, target) in [
        ("/user/alice", alice.url()),
        ("/user/alice/api/kernels", kernels.url()),
    ] {
        px.add_route_json(
            prefix,
            &json!({"target": target, "user": "alice"}).to_string(),
        );
    }
    Env {
        idp,
        px,
        port,
        alice,
        kernels,
    }
}

/// Logs `who` in through the real provider; returns the session cookie's value.
fn login(env: &Env, b: &mut Browser, who: &str) -> String {
    let start = login_start(b, env.port, "/user/alice/");
    let back = env.idp.authorize(
        b,
        &start.auth_url,
        &LoginAs::user(who),
        &format!("http://127.0.0.1:{}/_hubgate/oidc/callback", env.port),
    );
    let r = b.get(&back);
    assert_eq!(r.status, 302, "callback: {}", r.describe());
    set_cookie(&r, SESSION_COOKIE)
        .unwrap_or_else(|| panic!("no session cookie: {}", r.describe()))
        .value
}

/// A request with only this session cookie (API-style: refusals are 401, not redirects).
fn with_session(path: &str, session: &str) -> Req {
    Req::get(path).header("Cookie", &format!("{SESSION_COOKIE}={session}"))
}

/// A kernel websocket of alice's on `session`, from the hub's own origin; echo checked.
async fn kernel_websocket(port: u16, session: &str) -> WsClient {
    let origin = format!("http://127.0.0.1:{port}");
    let cookie = format!("{SESSION_COOKIE}={session}");
    let (mut ws, _) = ws_connect(
        port,
        "/user/alice/api/kernels/k1/channels",
        &[("Cookie", &cookie), ("Origin", &origin)],
    )
    .await
    .expect("websocket on the session");
    ws.send(Message::Text("hi".into())).await.unwrap();
    assert_eq!(ws_recv_text(&mut ws, T).await.as_deref(), Some("hi"));
    ws
}

/// Confirms the provider's logout page (the form oidc-provider renders) as the user would.
fn confirm_provider_logout(env: &Env, b: &mut Browser, page: &Response) -> Response {
    let html = page.text();
    let xsrf = html
        .split("name=\"xsrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no xsrf in the provider's logout page: {html}"));
    b.post_form(
        &format!("{}/session/end/confirm", env.idp.issuer),
        &[("xsrf", xsrf), ("logout", "yes")],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rp_initiated_logout_ends_the_session_everywhere_and_the_providers_too() {
    let env = env();
    let port = env.port;
    let mut b = Browser::html();
    let session = login(&env, &mut b, "alice");
    // The ID token for the logout hint is in its own cookie, sent only to the logout path.
    let hint = b
        .jar
        .get(port, LOGOUT_HINT_COOKIE)
        .expect("logout hint cookie");
    assert_eq!(hint.path, "/_hubgate/logout");
    assert!(hint.has("httponly") && hint.has("secure"), "{hint:?}");
    assert_eq!(jwt_claims(&hint.value)["aud"], "hubgate");
    assert!(
        jwt_claims(&hint.value)["sid"].is_string(),
        "ID token without sid"
    );
    let r = b.send(port, Req::get("/user/alice/tree"));
    assert_eq!(r.status, 200, "{}", r.describe());
    let seen = env.alice.last().unwrap();
    assert!(
        !seen
            .header("cookie")
            .unwrap_or_default()
            .contains("hubgate"),
        "hubgate's cookies reached the server: {:?}",
        seen.header("cookie")
    );

    let mut ws = kernel_websocket(port, &session).await;

    // Logout: cookies cleared, and the browser is sent to the provider's end-session
    // endpoint with the ID token as hint and hubgate's fixed logged-out page to return to.
    let r = b.send(port, Req::get("/_hubgate/logout"));
    assert_eq!(r.status, 302, "{}", r.describe());
    let location = r.header("location").unwrap().to_string();
    assert!(
        location.starts_with(&format!("{}/session/end?", env.idp.issuer)),
        "{location}"
    );
    assert_eq!(
        query_param(&location, "client_id").as_deref(),
        Some("hubgate")
    );
    assert_eq!(
        query_param(&location, "id_token_hint"),
        Some(hint.value.clone())
    );
    assert_eq!(
        query_param(&location, "post_logout_redirect_uri"),
        Some(format!("http://127.0.0.1:{port}/_hubgate/logged-out"))
    );
    assert!(set_cookie(&r, SESSION_COOKIE).is_some_and(|c| c.is_removal()));
    assert!(set_cookie(&r, LOGOUT_HINT_COOKIE).is_some_and(|c| c.is_removal()));

    // The session is revoked on the spot: its websocket closes with 1008 on both sides,
    // and a copy of the cookie (another tab, a stolen one) is refused.
    assert_eq!(
        ws_close_frame(&mut ws, T).await,
        Some((1008, "credential revoked".to_string()))
    );
    assert!(env.kernels.wait_closed(1, T));
    let r = env.px.request(&with_session("/user/alice/tree", &session));
    assert_eq!(
        r.status,
        401,
        "copy of the logged-out cookie: {}",
        r.describe()
    );
    assert!(env.px.denials("revoked") >= 1.0);
    env.px
        .wait_audit(&["path=/user/alice/tree", "decision=deny reason=revoked"]);

    // At the provider: confirm, then back to hubgate's page, which says what to do next.
    let page = b.get(&location);
    assert_eq!(page.status, 200, "{}", page.describe());
    let r = confirm_provider_logout(&env, &mut b, &page);
    assert!(matches!(r.status, 302 | 303), "{}", r.describe());
    let back = r.header("location").unwrap().to_string();
    assert!(
        back.starts_with(&format!("http://127.0.0.1:{port}/_hubgate/logged-out")),
        "{back}"
    );
    let r = b.get(&back);
    assert_eq!(r.status, 200, "{}", r.describe());
    assert!(r.text().contains("You are logged out"), "{}", r.text());
    assert!(r.text().contains("/_hubgate/login"), "{}", r.text());
    // The provider's session is over: a new login asks for credentials again.
    let start = login_start(&mut b, port, "/user/alice/");
    let r = b.get(&start.auth_url);
    let mut url = start.auth_url.clone();
    let mut r = r;
    while matches!(r.status, 302 | 303) {
        url = resolve(&url, r.header("location").unwrap());
        if url.contains("/interaction/") {
            break;
        }
        r = b.get(&url);
    }
    assert!(
        url.contains("/interaction/"),
        "no login prompt after logout: {url}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backchannel_logout_from_the_provider_refuses_that_providers_session() {
    let env = env();
    let port = env.port;
    let mut b = Browser::html();
    let session = login(&env, &mut b, "alice");
    // A second, unrelated browser of alice's: another provider session.
    let mut other = Browser::html();
    let other_session = login(&env, &mut other, "alice");
    let mut ws = kernel_websocket(port, &session).await;

    // alice logs out at the provider directly (not through hubgate).
    let page = b.get(&format!("{}/session/end?client_id=hubgate", env.idp.issuer));
    assert_eq!(page.status, 200, "{}", page.describe());
    let r = confirm_provider_logout(&env, &mut b, &page);
    assert!(matches!(r.status, 200 | 302 | 303), "{}", r.describe());
    // The provider posted a logout token to hubgate, which accepted it.
    assert!(
        wait_until(T, || env.idp.output().contains("backchannel 200")),
        "no accepted back-channel logout:\n{}\n{}",
        env.idp.output(),
        env.px.output()
    );
    env.px.wait_audit(&[
        "path=/_hubgate/backchannel-logout",
        "decision=revoke reason=backchannel",
    ]);
    // That provider session's hubgate session is refused, and its websocket closed.
    let r = env.px.request(&with_session("/user/alice/tree", &session));
    assert_eq!(r.status, 401, "{}", r.describe());
    assert_eq!(
        ws_close_frame(&mut ws, T).await,
        Some((1008, "credential revoked".to_string()))
    );
    // The other browser's session belongs to another provider session: still valid.
    let r = env
        .px
        .request(&with_session("/user/alice/tree", &other_session));
    assert_eq!(r.status, 200, "{}", r.describe());
    let m = env.px.metrics();
    assert_eq!(
        metric_sum(
            &m,
            "hubgate_auth_revocations_total",
            &[("kind", "idp_session"), ("source", "backchannel")]
        ),
        1.0,
        "{m}"
    );
}

/// Logout tokens no real provider sends (forged claims, replays), from a key-set stub.
#[test]
fn backchannel_logout_refuses_bad_tokens_and_replays() {
    let p = pool();
    let key = p.rsa[0].with_kid("k-rsa");
    let stub = JwksStub::start(&[&key]);
    let port = free_port();
    let mut iss = IssuerCfg::stub(&stub);
    iss.client_id = Some("hubgate".into());
    let px = start_ready(port, &AuthCfg::new(port, vec![iss]));
    let token = |edit: &dyn Fn(&mut serde_json::Map<String, serde_json::Value>)| {
        let mut c = json!({
            "iss": stub.issuer, "aud": "hubgate", "iat": now(), "exp": now() + 120,
            "jti": nonce_string(), "sid": "provider-session-1", "sub": "alice",
            "events": {"http://schemas.openid.net/event/backchannel-logout": {}},
        });
        edit(c.as_object_mut().unwrap());
        sign_raw(
            r#"{"alg":"RS256","kid":"k-rsa","typ":"logout+jwt"}"#,
            &c.to_string(),
            &key,
            jsonwebtoken::Algorithm::RS256,
        )
    };
    let post = |body: String| {
        px.request(
            &Req::post("/_hubgate/backchannel-logout", body)
                .header("Content-Type", "application/x-www-form-urlencoded"),
        )
    };
    let bad = |body: String, says: &str| {
        let r = post(body);
        assert_eq!(r.status, 400, "{says}: {}", r.describe());
        let v: serde_json::Value = serde_json::from_str(&r.text()).unwrap();
        assert_eq!(v["error"], "invalid_request", "{says}");
        assert!(
            v["error_description"]
                .as_str()
                .unwrap_or_default()
                .contains(says),
            "{says}: {v}"
        );
    };
    bad(String::new(), "no logout_token");
    bad("logout_token=x.y.z".into(), "logout_token");
    bad(
        format!(
            "logout_token={}",
            token(&|c| {
                c.insert("nonce".into(), json!("n"));
            })
        ),
        "nonce",
    );
    bad(
        format!(
            "logout_token={}",
            token(&|c| {
                c.insert("aud".into(), json!("jupyterhub"));
            })
        ),
        "aud",
    );
    bad(
        format!(
            "logout_token={}",
            token(&|c| {
                c.remove("events");
            })
        ),
        "events",
    );
    bad(
        format!(
            "logout_token={}",
            token(&|c| {
                c.remove("jti");
            })
        ),
        "jti",
    );
    bad(
        format!(
            "logout_token={}",
            token(&|c| {
                c.insert("iat".into(), json!(now() - 3600));
            })
        ),
        "iat",
    );
    bad(
        format!(
            "logout_token={}",
            token(&|c| {
                c.remove("sid");
                c.remove("sub");
            })
        ),
        "neither sid nor sub",
    );
    // An access token is not a logout token (typ), even with the right claims.
    let as_access = sign_raw(
        r#"{"alg":"RS256","kid":"k-rsa","typ":"at+jwt"}"#,
        &json!({"iss": stub.issuer, "aud": "hubgate", "iat": now(), "jti": "j-at", "sid": "s",
                "events": {"http://schemas.openid.net/event/backchannel-logout": {}}})
        .to_string(),
        &key,
        jsonwebtoken::Algorithm::RS256,
    );
    bad(format!("logout_token={as_access}"), "malformed");
    // Not a POST; too large.
    let r = px.get("/_hubgate/backchannel-logout");
    assert_eq!(r.status, 405, "{}", r.describe());
    let r = post(format!("logout_token={}", "a".repeat(20_000)));
    assert_eq!(r.status, 413, "{}", r.describe());

    // A good one is accepted once; the same token again is a replay.
    let good = token(&|_| {});
    let r = post(format!("logout_token={good}"));
    assert_eq!(r.status, 200, "{}", r.describe());
    bad(format!("logout_token={good}"), "already used");
    px.assert_not_logged(&good);

    // Without sid: every credential of that provider subject issued until now is refused
    // (the user name here is preferred_username, not the subject); other users' are not.
    let alice = mint(&key, &claims(&stub.issuer, "alice"));
    let bob = mint(&key, &claims(&stub.issuer, "bob"));
    let status = |t: &str| px.get_bearer("/hub/api/user", t).status;
    // (no routes: an allowed request ends in 404)
    assert_eq!(status(&alice), 404);
    let by_subject = token(&|c| {
        c.remove("sid");
        c.insert("sub".into(), jwt_claims(&alice)["sub"].clone());
    });
    let r = post(format!("logout_token={by_subject}"));
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(
        status(&alice),
        401,
        "alice's token after a logout of her subject"
    );
    assert_eq!(status(&bob), 404, "bob's token");
    px.wait_audit(&[
        "audit idp_subject=sub-alice",
        "decision=revoke reason=backchannel",
    ]);
    let m = px.metrics();
    assert_eq!(
        metric_sum(
            &m,
            "hubgate_auth_revocations_total",
            &[("kind", "idp_subject"), ("source", "backchannel")]
        ),
        1.0
    );
    assert_eq!(
        metric_sum(
            &m,
            "hubgate_auth_revocations_total",
            &[("kind", "idp_session"), ("source", "backchannel")]
        ),
        1.0
    );
}
