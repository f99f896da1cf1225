//! Operations, part 2: certificate rotation without a restart. hubgate watches the
//! `--ssl-key/--ssl-cert` files (every 2 s) and reloads them on SIGHUP together with the
//! `--config` file; new handshakes get the new certificate, open connections and websockets
//! are untouched, and anything that fails to load leaves the running setting in place.

use crate::support::tls::{client_config, self_signed_cert, CertFiles, KeyKind, ServerTrust};
use crate::support::ws::tungstenite;
use crate::support::*;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// hubgate checks the files every 2 s; a swap may straddle two checks.
const SWAP_DEADLINE: Duration = Duration::from_secs(6);
const T: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// Certificates and a TLS client that shows the served certificate
// ---------------------------------------------------------------------------------------

struct CertPair {
    files: CertFiles,
    /// DER of the certificate (what a client sees in the handshake).
    der: Vec<u8>,
}

/// A self-signed server certificate for localhost/127.0.0.1 with its own CN and serial.
fn make_cert(dir: &Path, cn: &str, serial: &str, key: KeyKind) -> CertPair {
    let files = self_signed_cert(dir, cn, Some(serial), key);
    let der = files.der();
    CertPair { files, der }
}

/// Replaces `dst` with `contents` atomically (write aside, rename over).
fn replace_file(dst: &Path, contents: &[u8]) {
    let tmp = dst.with_extension("new");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, dst).unwrap();
}

/// Installs `pair` as the live files: key first, then certificate.
fn install(pair: &CertPair, live_cert: &Path, live_key: &Path) {
    replace_file(live_key, &std::fs::read(&pair.files.key).unwrap());
    replace_file(live_cert, &std::fs::read(&pair.files.cert).unwrap());
}

/// A TLS connection to 127.0.0.1:`port` (SNI localhost) and the DER of the certificate
/// the server presented; any certificate is accepted (the test only wants to see which one
/// is served), the handshake signature is still checked.
fn tls_connect(port: u16) -> io::Result<(Conn, Vec<u8>)> {
    crate::support::tls::tls_connect(port, "localhost", client_config(ServerTrust::Any, None)?)
}

/// The certificate a fresh handshake gets.
fn served_cert(port: u16) -> Vec<u8> {
    tls_connect(port)
        .unwrap_or_else(|e| panic!("TLS handshake with hubgate failed: {e}"))
        .1
}

fn which(der: &[u8], a: &CertPair, b: &CertPair) -> &'static str {
    if der == a.der.as_slice() {
        "A"
    } else if der == b.der.as_slice() {
        "B"
    } else {
        "neither A nor B"
    }
}

type WsSync = tungstenite::WebSocket<Box<dyn crate::support::client::Stream>>;

/// A wss websocket through hubgate on its own TLS connection.
fn open_wss(port: u16, path: &str) -> (WsSync, Vec<u8>) {
    let (c, der) = tls_connect(port).expect("TLS handshake for wss");
    c.set_read_timeout(T);
    let stream = c.into_stream();
    let url = format!("wss://localhost:{port}{path}");
    let (sock, resp) =
        tungstenite::client::client(url.as_str(), stream).expect("wss upgrade through hubgate");
    assert_eq!(resp.status().as_u16(), 101);
    (sock, der)
}

fn ws_echo(sock: &mut WsSync, msg: &str) {
    sock.send(tungstenite::Message::Text(msg.to_string().into()))
        .unwrap_or_else(|e| panic!("send {msg:?} on the old websocket: {e}"));
    loop {
        match sock
            .read()
            .unwrap_or_else(|e| panic!("read echo of {msg:?} on the old websocket: {e}"))
        {
            tungstenite::Message::Text(t) => {
                assert_eq!(t.as_str(), msg);
                return;
            }
            _ => continue,
        }
    }
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

struct Setup {
    hg: Hubgate,
    a: CertPair,
    b: CertPair,
    live_cert: PathBuf,
    live_key: PathBuf,
    dir: TempDir,
}

/// hubgate serving cert A from live files (B prepared aside), with `extra` args.
fn start(extra: &[&str]) -> Setup {
    let dir = TempDir::new("tlsreload");
    let a = make_cert(&dir.join("a"), "hubgate-cert-a", "0xA1", KeyKind::Rsa2048);
    let b = make_cert(&dir.join("b"), "hubgate-cert-b", "0xB2", KeyKind::EcP256);
    assert_ne!(a.der, b.der);
    std::fs::create_dir_all(dir.join("live")).unwrap();
    let live_cert = dir.join("live/cert.pem");
    let live_key = dir.join("live/key.pem");
    install(&a, &live_cert, &live_key);
    let hg = Hubgate::builder()
        .args(&[
            "--ssl-key",
            &live_key.to_string_lossy(),
            "--ssl-cert",
            &live_cert.to_string_lossy(),
            // Idle keep-alive connections must outlive the swap.
            "--keep-alive-timeout",
            "60000",
        ])
        .args(extra)
        .start();
    Setup {
        hg,
        a,
        b,
        live_cert,
        live_key,
        dir,
    }
}

fn request_ok(c: &mut Conn, path: &str, what: &str) {
    let r = c
        .request(&Req::get(path))
        .unwrap_or_else(|e| panic!("{what}: request {path} failed: {e}"));
    assert_eq!(r.status, 200, "{what}: {}", r.describe());
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[test]
fn changed_certificate_files_are_served_to_new_connections_only() {
    let s = start(&[]);
    let hg = &s.hg;
    let echo = Backend::echo();
    let ws = WsBackend::echo();
    hg.add_route("/user/alice", &echo.url());
    hg.add_route("/user/ws", &ws.url());

    // Before: A, on a kept-alive HTTPS connection and on a wss websocket.
    let (mut old, der) = tls_connect(hg.port).expect("TLS handshake");
    assert_eq!(which(&der, &s.a, &s.b), "A");
    request_ok(&mut old, "/user/alice/before", "old connection");
    let (mut old_ws, ws_der) = open_wss(hg.port, "/user/ws/api/kernels/k/channels");
    assert_eq!(which(&ws_der, &s.a, &s.b), "A");
    ws_echo(&mut old_ws, "before the swap");

    // (a) Swap the files for B.
    install(&s.b, &s.live_cert, &s.live_key);
    let t0 = Instant::now();
    let mut last = Vec::new();
    let swapped = wait_until(SWAP_DEADLINE, || {
        last = served_cert(hg.port);
        last == s.b.der
    });
    assert!(
        swapped,
        "new connections still get certificate {} {:?} after the files changed\n--- output ---\n{}",
        which(&last, &s.a, &s.b),
        t0.elapsed(),
        hg.output()
    );
    eprintln!("certificate B served {:?} after the swap", t0.elapsed());
    assert!(
        hg.wait_for_stdout("proxy certificate reloaded from", T),
        "no reload line:\n{}",
        hg.stdout()
    );
    let (mut fresh, der) = tls_connect(hg.port).unwrap();
    assert_eq!(which(&der, &s.a, &s.b), "B");
    request_ok(&mut fresh, "/user/alice/new-conn", "new connection");
    // The open connection and websocket (handshaken with A) keep working.
    request_ok(&mut old, "/user/alice/after", "old keep-alive connection");
    ws_echo(&mut old_ws, "after the swap");
    assert!(
        echo.requests()
            .iter()
            .any(|r| r.target == "/user/alice/after"),
        "old connection's request did not reach the target"
    );

    // (b) A broken certificate file is refused; B stays in use.
    let refused_before = count(&hg.stdout(), "certificate reload refused");
    replace_file(
        &s.live_cert,
        b"-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n",
    );
    let refused = wait_until(SWAP_DEADLINE, || {
        count(&hg.stdout(), "certificate reload refused") > refused_before
    });
    assert!(
        refused,
        "no 'certificate reload refused' line after the certificate became garbage\n--- stdout ---\n{}",
        hg.stdout()
    );
    let line = hg
        .stdout()
        .lines()
        .rfind(|l| l.contains("certificate reload refused"))
        .unwrap()
        .to_string();
    assert!(
        line.contains("error") && line.contains("current certificate stays in use"),
        "refusal line: {line}"
    );
    for i in 0..3 {
        let (mut c, der) = tls_connect(hg.port).expect("handshake after a refused reload");
        assert_eq!(
            which(&der, &s.a, &s.b),
            "B",
            "handshake #{i} after the refused reload"
        );
        request_ok(
            &mut c,
            &format!("/user/alice/post-garbage-{i}"),
            "new connection",
        );
    }
    request_ok(&mut old, "/user/alice/still", "old keep-alive connection");
    ws_echo(&mut old_ws, "after the refused reload");
    let mut hg = s.hg;
    assert!(hg.is_running(), "hubgate exited:\n{}", hg.output());
    let _ = old_ws.close(None);
    drop(s.dir);
}

#[test]
fn sighup_refuses_a_broken_config_and_reloads_a_valid_one() {
    let dir = TempDir::new("hupconf");
    let conf = dir.write("hubgate.toml", "[server]\nlog-level = \"info\"\n");
    let conf_s = conf.to_string_lossy().to_string();
    let s = start(&["--config", &conf_s]);
    let mut hg = s.hg;
    let echo = Backend::echo();
    hg.add_route("/user/alice", &echo.url());
    // Fully up (readiness line logged) before signalling.
    assert!(
        hg.wait_for_stdout("Proxying", T),
        "no readiness line:\n{}",
        hg.output()
    );
    let (mut old, der) = tls_connect(hg.port).unwrap();
    assert_eq!(which(&der, &s.a, &s.b), "A");
    request_ok(&mut old, "/user/alice/0", "before SIGHUP");

    // A broken file: the running configuration is kept.
    let broken = "[server]\nlog-level = \"info\"\naccess-log = \"loud\"\n";
    std::fs::write(&conf, broken).unwrap();
    let check = run_cli(&["--config", &conf_s, "--check-config"], &[], T);
    assert!(
        check.failed_cleanly(),
        "the broken file should fail --check-config: {check:?}"
    );
    let reloading = |hg: &Hubgate| count(&hg.stdout(), "reloading the configuration");
    let refusals = |hg: &Hubgate| count(&hg.stdout(), "reload refused");
    let (hups0, refused0) = (reloading(&hg), refusals(&hg));
    hg.signal(libc::SIGHUP);
    assert!(
        wait_until(T, || refusals(&hg) > refused0),
        "no 'reload refused' after SIGHUP with a broken config\n--- output ---\n{}",
        hg.output()
    );
    assert!(
        reloading(&hg) > hups0,
        "SIGHUP not logged:\n{}",
        hg.stdout()
    );
    let line = hg
        .stdout()
        .lines()
        .rfind(|l| l.contains("reload refused"))
        .unwrap()
        .to_string();
    assert!(
        line.contains("access-log") || line.contains("loud"),
        "refusal names the key: {line}"
    );
    assert!(hg.is_running(), "hubgate died on SIGHUP:\n{}", hg.output());
    let (mut c, der) = tls_connect(hg.port).expect("handshake after the refused reload");
    assert_eq!(which(&der, &s.a, &s.b), "A");
    request_ok(
        &mut c,
        "/user/alice/1",
        "new connection after refused reload",
    );
    request_ok(
        &mut old,
        "/user/alice/2",
        "old connection after refused reload",
    );

    // A valid file: reloaded (certificates re-read from the same paths).
    std::fs::write(
        &conf,
        "[server]\nlog-level = \"info\"\naccess-log = \"off\"\n",
    )
    .unwrap();
    let (hups1, refused1) = (reloading(&hg), refusals(&hg));
    let cert_reloads = count(&hg.stdout(), "(SIGHUP)");
    hg.signal(libc::SIGHUP);
    assert!(
        wait_until(T, || reloading(&hg) > hups1),
        "no 'reloading the configuration' after SIGHUP with a valid config\n--- output ---\n{}",
        hg.output()
    );
    assert!(
        wait_until(T, || count(&hg.stdout(), "(SIGHUP)") > cert_reloads),
        "certificate not re-read on SIGHUP:\n{}",
        hg.stdout()
    );
    assert!(
        hg.stdout()
            .lines()
            .any(|l| l.contains("proxy certificate reloaded from") && l.contains("(SIGHUP)")),
        "{}",
        hg.stdout()
    );
    assert_eq!(
        refusals(&hg),
        refused1,
        "a valid reload was refused:\n{}",
        hg.stdout()
    );
    assert!(hg.is_running());
    let (mut c, der) = tls_connect(hg.port).unwrap();
    assert_eq!(which(&der, &s.a, &s.b), "A");
    request_ok(&mut c, "/user/alice/3", "new connection after reload");
    request_ok(&mut old, "/user/alice/4", "old connection after reload");
    // SIGHUP + the certificate files now holding B: the signal applies them at once.
    install(&s.b, &s.live_cert, &s.live_key);
    hg.signal(libc::SIGHUP);
    let mut last = Vec::new();
    assert!(
        wait_until(SWAP_DEADLINE, || {
            last = served_cert(hg.port);
            last == s.b.der
        }),
        "still {} after SIGHUP with new files",
        which(&last, &s.a, &s.b)
    );
    request_ok(&mut old, "/user/alice/5", "old connection after the swap");
    assert_eq!(echo.count(), 6);
    drop(s.dir);
    drop(dir);
}
