//! https targets that require a client certificate (`--client-ssl-key/-cert/-ca`): with
//! JupyterHub's `internal_ssl`, single-user servers only accept connections from holders of
//! a certificate from the internal CA, so the proxy must present its own. The targets here
//! are real TLS servers (tokio-rustls) that refuse the handshake without such a certificate
//! and record what each handshake presented.

use crate::support::backend::{echo_reply, Handshake};
use crate::support::tls::{server_config, Ca, CertFiles, Usage};
use crate::support::ws::{ws_recv_text, WsOptions};
use crate::support::*;
use futures_util::{SinkExt, StreamExt};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

const T: Duration = Duration::from_secs(10);
/// A failed target handshake must turn into an error page quickly, not after a timeout
/// (the connect timeout is 5 s).
const FAST: Duration = Duration::from_secs(3);

struct Pki {
    ca: Ca,
    /// The single-user server's certificate (localhost, 127.0.0.1).
    server: CertFiles,
    /// The proxy's client certificate (JupyterHub's `proxy-client`).
    proxy_client: CertFiles,
    _dir: TempDir,
}

fn pki() -> Pki {
    let dir = TempDir::new("targettls");
    let ca = Ca::new(&dir.path, "internal-ca");
    let server = ca.issue("user-server", "localhost", Usage::Server);
    let proxy_client = ca.issue("proxy-client", "proxy-client", Usage::Client);
    Pki {
        ca,
        server,
        proxy_client,
        _dir: dir,
    }
}

/// The flags JupyterHub passes with internal_ssl (the two no-op ones included).
fn client_flags(p: &Pki) -> Vec<String> {
    [
        "--client-ssl-key",
        p.proxy_client.key.to_str().unwrap(),
        "--client-ssl-cert",
        p.proxy_client.cert.to_str().unwrap(),
        "--client-ssl-ca",
        p.ca.cert().to_str().unwrap(),
        "--client-ssl-request-cert",
        "--client-ssl-reject-unauthorized",
    ]
    .map(String::from)
    .to_vec()
}

/// An https echo target that requires a client certificate from the internal CA.
fn mtls_target(p: &Pki) -> Backend {
    Backend::start_tls(server_config(&p.server, Some(p.ca.cert())), echo_reply)
}

#[test]
fn https_target_requiring_a_client_certificate_gets_the_proxys() {
    let p = pki();
    let target = mtls_target(&p);
    let hg = Hubgate::builder().args(&client_flags(&p)).start();
    hg.add_route("/user/alice", &target.url());
    assert!(target.url().starts_with("https://127.0.0.1:"));

    let r = hg.get("/user/alice/api/status?x=1");
    assert_eq!(r.status, 200, "{}\n{}", r.describe(), hg.output());
    assert_eq!(r.json()["path"], "/user/alice/api/status?x=1");
    // A second request (pooled or new connection) works the same.
    let r = hg.request(&Req::post("/user/alice/api/contents", b"{}"));
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(r.json()["method"], "POST");
    assert_eq!(target.count(), 2);

    let handshakes = target.handshakes();
    assert!(!handshakes.is_empty());
    let want = p.proxy_client.der();
    for h in &handshakes {
        assert_eq!(
            h,
            &Handshake::Done {
                client_cert: Some(want.clone())
            },
            "every handshake presents the proxy's client certificate"
        );
    }
}

#[test]
fn without_a_client_certificate_the_target_refuses_and_the_user_gets_503_at_once() {
    let p = pki();
    let target = mtls_target(&p);

    // Trusting the target's CA but holding no client certificate: the target refuses the
    // handshake.
    let mport = free_port();
    let hg = Hubgate::builder()
        .args(&["--client-ssl-ca", p.ca.cert().to_str().unwrap()])
        .args(&["--metrics-port", &mport.to_string()])
        .start();
    hg.add_route("/user/alice", &target.url());
    let t0 = Instant::now();
    let r = hg.get("/user/alice/lab");
    let took = t0.elapsed();
    assert_eq!(r.status, 503, "{}\n{}", r.describe(), hg.output());
    assert!(took < FAST, "503 after {took:?}");
    assert!(
        target.wait_handshakes(1, T),
        "the target saw no handshake at all"
    );
    for h in target.handshakes() {
        match h {
            Handshake::Failed(e) => assert!(
                e.to_ascii_lowercase().contains("certificate"),
                "target handshake failed for another reason: {e}"
            ),
            Handshake::Done { client_cert } => {
                panic!("handshake completed without the client certificate: {client_cert:?}")
            }
        }
    }
    assert_eq!(target.count(), 0, "no request reached the target");
    // The proxy keeps serving, and the next request fails the same way.
    assert_eq!(hg.get("/user/alice/lab").status, 503);
    assert_eq!(hg.get("/_chp_healthz").status, 200);
    // Counted as a TLS failure (the runbook of HubgateUpstreamErrors sends `tls` to the
    // certificates), although TLS 1.3 reports it only on the first read.
    let metrics = get(mport, "/metrics").text();
    let tls = crate::support::auth_proxy::metric_sum(
        &metrics,
        "hubgate_upstream_errors_total",
        &[("kind", "tls")],
    );
    assert_eq!(tls, 2.0, "{metrics}");
    drop(hg);

    // No client flags at all: the target's certificate is from a CA hubgate does not trust
    // either; still a prompt 503.
    let hg = Hubgate::start(&[], &[]);
    hg.add_route("/user/alice", &target.url());
    let t0 = Instant::now();
    let r = hg.get("/user/alice/lab");
    assert_eq!(r.status, 503, "{}", r.describe());
    assert!(t0.elapsed() < FAST, "503 after {:?}", t0.elapsed());
    assert_eq!(target.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_to_an_https_target_presents_the_client_certificate() {
    let p = pki();
    let ws = WsBackend::start_tls(
        WsOptions::default(),
        server_config(&p.server, Some(p.ca.cert())),
    );
    let hg = Hubgate::builder().args(&client_flags(&p)).start();
    hg.add_route("/user/alice", &ws.url());
    assert!(ws.url().starts_with("https://"));

    let (mut c, resp) = ws_connect(hg.port, "/user/alice/api/kernels/k/channels", &[])
        .await
        .unwrap_or_else(|e| panic!("upgrade through hubgate: {e}\n{}", hg.output()));
    assert_eq!(resp.status().as_u16(), 101);
    c.send(Message::Text("over mtls".into())).await.unwrap();
    assert_eq!(ws_recv_text(&mut c, T).await.as_deref(), Some("over mtls"));

    let rec = ws.requests().pop().expect("the target saw the upgrade");
    assert_eq!(rec.target, "/user/alice/api/kernels/k/channels");
    assert_eq!(
        ws.handshakes(),
        vec![Handshake::Done {
            client_cert: Some(p.proxy_client.der())
        }]
    );
    let _ = c.close(None).await;
}

/// `https://` targets take hubgate's own relay, as plain ones do: on SIGTERM the kernel's
/// websocket gets a close frame (1001, going away), which pingora's upgrade path never sent,
/// and messages keep flowing both ways until then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_to_an_https_target_is_relayed_by_hubgate_and_closed_with_1001_on_sigterm() {
    let p = pki();
    let ws = WsBackend::start_tls(
        WsOptions::default(),
        server_config(&p.server, Some(p.ca.cert())),
    );
    let mut hg = Hubgate::builder().args(&client_flags(&p)).start();
    hg.add_route("/user/alice", &ws.url());

    let (mut c, resp) = ws_connect(hg.port, "/user/alice/api/kernels/k/channels", &[])
        .await
        .unwrap_or_else(|e| panic!("upgrade through hubgate: {e}\n{}", hg.output()));
    assert_eq!(resp.status().as_u16(), 101);
    for i in 0..3 {
        let text = format!("message {i}");
        c.send(Message::Text(text.clone().into())).await.unwrap();
        assert_eq!(
            ws_recv_text(&mut c, T).await.as_deref(),
            Some(text.as_str())
        );
    }

    hg.signal(libc::SIGTERM);
    let frame = tokio::time::timeout(T, async {
        loop {
            match c.next().await {
                Some(Ok(Message::Close(frame))) => return Ok(frame),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(format!("error instead of a close frame: {e}")),
                None => return Err("ended without a close frame".to_string()),
            }
        }
    })
    .await
    .expect("close frame within 10 s")
    .unwrap_or_else(|e| panic!("{e}\n{}", hg.output()));
    let frame = frame.expect("close frame with a code");
    assert_eq!(frame.code, CloseCode::Away, "{frame:?}");
    assert!(
        hg.wait_exit(T).is_some_and(|s| s.success()),
        "{}",
        hg.output()
    );
}

/// A kernel's websocket to an `https://` target ends the way a plain one does when an
/// operator revokes the user: a close frame (1008, "credential revoked") to the browser and
/// to the kernel's server at once, not when the token expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_to_an_https_target_gets_1008_when_its_credential_is_revoked() {
    use crate::support::auth_proxy::{start_auth_proxy_with, AuthCfg, IssuerCfg};
    use crate::support::jwt::{claims, mint, pool};
    use crate::support::oidc::JwksStub;
    use crate::support::ws::ws_close_frame;
    let p = pki();
    let ws = WsBackend::start_tls(
        WsOptions::default(),
        server_config(&p.server, Some(p.ca.cert())),
    );
    let key = pool().rsa[0].with_kid("k-rsa");
    let stub = JwksStub::start(&[&key]);
    let port = free_port();
    let cfg = AuthCfg::new(port, vec![IssuerCfg::stub(&stub)]);
    let px = start_auth_proxy_with(port, &cfg, Hubgate::builder().args(&client_flags(&p)));
    px.wait_ready();
    px.add_route_json(
        "/user/alice",
        &serde_json::json!({"target": ws.url(), "user": "alice"}).to_string(),
    );
    let token = mint(&key, &claims(&stub.issuer, "alice"));
    let (mut c, _) = ws_connect(
        port,
        "/user/alice/api/kernels/k/channels",
        &[("Authorization", &format!("Bearer {token}"))],
    )
    .await
    .unwrap_or_else(|e| panic!("upgrade through hubgate: {e}\n{}", px.output()));
    c.send(Message::Text("over tls".into())).await.unwrap();
    assert_eq!(ws_recv_text(&mut c, T).await.as_deref(), Some("over tls"));

    let r = crate::auth_revocation::revoke(&px, r#"{"user":"alice"}"#);
    assert_eq!(r.status, 201, "{}", r.describe());
    assert_eq!(
        ws_close_frame(&mut c, T).await,
        Some((1008, "credential revoked".to_string()))
    );
    assert!(ws.wait_closed(1, T), "the kernel side stayed open");
    assert_eq!(ws.close_frames(), vec![(1008, "credential revoked".into())]);
}

/// Websockets to `https://` targets use hubgate's own TLS client (one configuration for the
/// process, not pingora's per-connection one): it must verify the target's certificate as
/// the forwarding path does, refuse an untrusted one promptly (counted as a TLS failure),
/// and accept any certificate with `--insecure`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_to_an_https_target_verifies_its_certificate_unless_insecure() {
    let p = pki();
    // No client certificate required: only the proxy's verification of the target decides.
    let ws = WsBackend::start_tls(WsOptions::default(), server_config(&p.server, None));
    let path = "/user/alice/api/kernels/k/channels";

    // Without --client-ssl-ca the internal CA is not trusted (system roots only).
    let mport = free_port();
    let hg = Hubgate::builder()
        .args(&["--metrics-port", &mport.to_string()])
        .start();
    hg.add_route("/user/alice", &ws.url());
    let t0 = Instant::now();
    match ws_connect(hg.port, path, &[]).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
            assert_eq!(r.status().as_u16(), 503, "{}", hg.output())
        }
        Err(e) => panic!("expected a 503 answer, got {e}\n{}", hg.output()),
        Ok((_, r)) => panic!("an untrusted target was relayed: {}", r.status()),
    }
    assert!(t0.elapsed() < FAST, "503 after {:?}", t0.elapsed());
    assert!(ws.requests().is_empty(), "the upgrade reached the target");
    let metrics = get(mport, "/metrics").text();
    let tls = crate::support::auth_proxy::metric_sum(
        &metrics,
        "hubgate_upstream_errors_total",
        &[("kind", "tls")],
    );
    assert_eq!(tls, 1.0, "{metrics}");
    drop(hg);

    // Trusting the internal CA: relayed.
    let hg = Hubgate::builder()
        .args(&["--client-ssl-ca", p.ca.cert().to_str().unwrap()])
        .start();
    hg.add_route("/user/alice", &ws.url());
    let (mut c, resp) = ws_connect(hg.port, path, &[])
        .await
        .unwrap_or_else(|e| panic!("upgrade through hubgate: {e}\n{}", hg.output()));
    assert_eq!(resp.status().as_u16(), 101);
    c.send(Message::Text("trusted".into())).await.unwrap();
    assert_eq!(ws_recv_text(&mut c, T).await.as_deref(), Some("trusted"));
    let _ = c.close(None).await;
    drop(hg);

    // --insecure: the untrusted certificate is accepted.
    let hg = Hubgate::builder().args(&["--insecure"]).start();
    hg.add_route("/user/alice", &ws.url());
    let (mut c, resp) = ws_connect(hg.port, path, &[])
        .await
        .unwrap_or_else(|e| panic!("upgrade through hubgate --insecure: {e}\n{}", hg.output()));
    assert_eq!(resp.status().as_u16(), 101);
    c.send(Message::Text("insecure".into())).await.unwrap();
    assert_eq!(ws_recv_text(&mut c, T).await.as_deref(), Some("insecure"));
    let _ = c.close(None).await;
    assert_eq!(ws.requests().len(), 2, "two upgrades reached the target");
}
