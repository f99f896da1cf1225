//! TLS and mutual TLS on the REST API listener (`--api-ssl-key/-cert/-ca`,
//! `--api-ssl-request-cert`, `--api-ssl-reject-unauthorized`): what JupyterHub's
//! `internal_ssl` sets up, with the hub presenting a client certificate from the internal CA.
//!
//! CHP hands these flags to node's `https.createServer`, where `rejectUnauthorized` defaults
//! to true: `--api-ssl-request-cert` alone already refuses clients without a certificate
//! from the CA (checked against CHP 5.3.0 with `HUBGATE_BIN`). hubgate does the same; the
//! config file's `reject-unauthorized = false` makes client certificates optional.

use crate::support::tls::{client_config, tls_connect, Ca, CertFiles, ServerTrust, Usage};
use crate::support::*;
use std::io;

/// An internal CA with the API's server certificate and the hub's client certificate, and
/// a second CA that hubgate does not trust, with a client certificate of its own.
struct Pki {
    ca: Ca,
    api: CertFiles,
    hub: CertFiles,
    rogue: CertFiles,
    dir: TempDir,
}

fn pki() -> Pki {
    let dir = TempDir::new("apitls");
    let ca = Ca::new(&dir.path, "internal-ca");
    let api = ca.issue("proxy-api", "localhost", Usage::Server);
    let hub = ca.issue("hub", "hub", Usage::Client);
    let other = Ca::new(&dir.path, "other-ca");
    // Same subject as the hub's: only the issuer differs.
    let rogue = other.issue("rogue", "hub", Usage::Client);
    Pki {
        ca,
        api,
        hub,
        rogue,
        dir,
    }
}

/// hubgate with TLS on the API (certificate from the internal CA, `--api-ssl-ca` the same
/// CA) plus `extra`.
fn start(p: &Pki, extra: &[&str]) -> Hubgate {
    Hubgate::builder()
        .args(&[
            "--api-ssl-key",
            p.api.key.to_str().unwrap(),
            "--api-ssl-cert",
            p.api.cert.to_str().unwrap(),
            "--api-ssl-ca",
            p.ca.cert().to_str().unwrap(),
        ])
        .args(extra)
        .start()
}

/// `GET /api/routes` with the token over TLS, presenting `client` (if any).
fn get_routes(hg: &Hubgate, p: &Pki, client: Option<&CertFiles>) -> io::Result<Response> {
    api_request(hg, p, client, hg.authorize(Req::get("/api/routes")))
}

fn api_request(
    hg: &Hubgate,
    p: &Pki,
    client: Option<&CertFiles>,
    req: Req,
) -> io::Result<Response> {
    let config = client_config(ServerTrust::Ca(p.ca.cert()), client)?;
    let (mut c, server_cert) = tls_connect(hg.api_port, "localhost", config)?;
    assert_eq!(
        server_cert,
        p.api.der(),
        "the API serves its own certificate"
    );
    c.request(&req)
}

/// Asserts that the API refused the TLS client: the handshake fails or, in TLS 1.3 where
/// the client finishes before the server has checked its certificate, the connection ends
/// instead of a response. hubgate (rustls) sends a TLS alert; node (CHP) completes the
/// handshake for a certificate from an unknown CA and then drops the connection.
fn assert_refused(r: io::Result<Response>, who: &str) {
    match r {
        Ok(resp) => panic!(
            "{who}: expected the TLS handshake to be refused, got\n{}",
            resp.describe()
        ),
        Err(e) => {
            let msg = e.to_string();
            let alert = msg.contains("alert");
            let dropped = matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::UnexpectedEof
            );
            if crate::support::process::against_chp() {
                assert!(alert || dropped, "{who}: not refused by TLS: {e:?}");
            } else {
                assert!(alert, "{who}: refused, but not by a TLS alert: {e:?}");
            }
            eprintln!("{who}: refused with {msg}");
        }
    }
}

fn assert_ok(r: io::Result<Response>, who: &str) -> Response {
    let resp = r.unwrap_or_else(|e| panic!("{who}: request over TLS failed: {e}"));
    assert_eq!(resp.status, 200, "{who}: {}", resp.describe());
    assert!(resp.json().is_object(), "{who}: {}", resp.describe());
    resp
}

#[test]
fn internal_ssl_hub_with_a_certificate_from_the_ca_manages_routes() {
    // The flags JupyterHub passes with internal_ssl.
    let p = pki();
    let hg = start(
        &p,
        &["--api-ssl-request-cert", "--api-ssl-reject-unauthorized"],
    );
    assert_ok(get_routes(&hg, &p, Some(&p.hub)), "hub certificate");

    // The whole route life cycle over mTLS, and the route works on the (plain) public side.
    let echo = Backend::echo();
    let body = serde_json::json!({ "target": echo.url() }).to_string();
    let r = api_request(
        &hg,
        &p,
        Some(&p.hub),
        hg.authorize(Req::post("/api/routes/user/alice", body.as_bytes())),
    )
    .expect("POST over mTLS");
    assert_eq!(r.status, 201, "{}", r.describe());
    let table = assert_ok(get_routes(&hg, &p, Some(&p.hub)), "after POST").json();
    assert_eq!(table["/user/alice"]["target"], echo.url(), "{table}");
    assert_eq!(hg.get("/user/alice/lab").status, 200);
    assert_eq!(echo.last().unwrap().target, "/user/alice/lab");
    let r = api_request(
        &hg,
        &p,
        Some(&p.hub),
        hg.authorize(Req::new("DELETE", "/api/routes/user/alice")),
    )
    .expect("DELETE over mTLS");
    assert_eq!(r.status, 204, "{}", r.describe());

    // A client certificate does not replace the token.
    let r = api_request(&hg, &p, Some(&p.hub), Req::get("/api/routes")).expect("no token");
    assert_eq!(r.status, 403, "{}", r.describe());
    // Nor is plain HTTP served on the TLS port.
    if let Ok(r) = try_http(hg.api_port, &hg.authorize(Req::get("/api/routes"))) {
        assert_ne!(
            r.status,
            200,
            "plain HTTP on the API's TLS port: {}",
            r.describe()
        );
    }
}

#[test]
fn reject_unauthorized_refuses_clients_without_a_certificate_from_the_ca() {
    let p = pki();
    let hg = start(
        &p,
        &["--api-ssl-request-cert", "--api-ssl-reject-unauthorized"],
    );
    assert_refused(get_routes(&hg, &p, None), "no client certificate");
    assert_refused(
        get_routes(&hg, &p, Some(&p.rogue)),
        "certificate from another CA",
    );
    // A server certificate from the right CA is not a client certificate (EKU serverAuth).
    assert_refused(
        get_routes(&hg, &p, Some(&p.api)),
        "server certificate as client",
    );
    // Refusals leave the listener serving the hub.
    assert_ok(
        get_routes(&hg, &p, Some(&p.hub)),
        "hub certificate after refusals",
    );
}

#[test]
fn request_cert_alone_refuses_clients_without_a_certificate_as_chp_does() {
    // node's https server defaults rejectUnauthorized to true, and CHP passes `undefined`
    // when --api-ssl-reject-unauthorized is absent.
    let p = pki();
    let hg = start(&p, &["--api-ssl-request-cert"]);
    assert_refused(get_routes(&hg, &p, None), "no client certificate");
    assert_refused(
        get_routes(&hg, &p, Some(&p.rogue)),
        "certificate from another CA",
    );
    assert_ok(get_routes(&hg, &p, Some(&p.hub)), "hub certificate");
}

#[test]
fn client_certificates_are_optional_with_reject_unauthorized_false_in_the_config_file() {
    if crate::support::process::against_chp() {
        eprintln!("skipped: CHP has no config file");
        return;
    }
    let p = pki();
    let conf = p.dir.write(
        "hubgate.toml",
        "[api.tls]\nrequest-cert = true\nreject-unauthorized = false\n",
    );
    let hg = start(&p, &["--config", conf.to_str().unwrap()]);
    assert_ok(get_routes(&hg, &p, None), "no client certificate");
    assert_ok(get_routes(&hg, &p, Some(&p.hub)), "hub certificate");
}

#[test]
fn api_tls_without_request_cert_serves_any_client() {
    let p = pki();
    let hg = start(&p, &[]);
    assert_ok(get_routes(&hg, &p, None), "no client certificate");
    assert_ok(get_routes(&hg, &p, Some(&p.hub)), "hub certificate");
    // The public listener stays plain HTTP.
    assert_eq!(hg.get("/_chp_healthz").status, 200);
}

#[test]
fn request_cert_without_a_ca_is_refused_at_startup() {
    // With no CA no client could ever be verified; CHP would fall back to node's public
    // roots, hubgate refuses to start rather than silently accept or refuse everyone.
    if crate::support::process::against_chp() {
        eprintln!("skipped: CHP starts and verifies clients against node's bundled roots");
        return;
    }
    let p = pki();
    let out = run_cli(
        &[
            "--api-ssl-key",
            p.api.key.to_str().unwrap(),
            "--api-ssl-cert",
            p.api.cert.to_str().unwrap(),
            "--api-ssl-request-cert",
        ],
        &[],
        std::time::Duration::from_secs(10),
    );
    assert_eq!(out.status.and_then(|s| s.code()), Some(1), "{out:?}");
    assert!(
        out.stderr.contains("--api-ssl-key/--api-ssl-cert") && out.stderr.contains("--api-ssl-ca"),
        "the error names the flags: {}",
        out.stderr
    );
}
