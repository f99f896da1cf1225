//! The command line and process lifecycle: docs/chp-compatibility.md (flags, env, signals, pid
//! file, readiness strings) plus hubgate's `--config`/`--check-config`.

use crate::support::*;
use std::time::{Duration, Instant};

const EXIT: Duration = Duration::from_secs(10);

/// `--ip/--port/--api-ip/--api-port` on fresh ports, then `extra`.
fn listen_args(extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = vec![
        "--ip".into(),
        "127.0.0.1".into(),
        "--port".into(),
        free_port().to_string(),
        "--api-ip".into(),
        "127.0.0.1".into(),
        "--api-port".into(),
        free_port().to_string(),
    ];
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn run(args: &[String]) -> CliOutput {
    let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    run_cli(&a, &[("CONFIGPROXY_AUTH_TOKEN", TOKEN)], EXIT)
}

#[test]
fn version_flag() {
    for flag in ["--version", "-V"] {
        let out = run_cli(&[flag], &[], EXIT);
        assert!(out.success(), "{flag}: {out:?}");
        let has_version = out.stdout.split(|c: char| c.is_whitespace()).any(|w| {
            w.split('.').count() >= 2
                && w.split('.')
                    .all(|p| !p.is_empty() && p.chars().next().unwrap().is_ascii_digit())
        });
        assert!(has_version, "{flag} should print a version number: {out:?}");
    }
}

#[test]
fn unknown_flag_fails_naming_it() {
    let out = run(&listen_args(&["--bogus-flag"]));
    assert!(out.failed_cleanly(), "{out:?}");
    assert!(
        out.stderr.contains("--bogus-flag"),
        "stderr should name the flag: {out:?}"
    );
}

#[test]
fn custom_header_without_colon_fails() {
    let out = run(&listen_args(&["--custom-header", "foo"]));
    assert!(out.failed_cleanly(), "{out:?}");
    assert!(out.stderr.contains("colon was expected"), "{out:?}");
}

#[test]
fn error_target_with_error_path_fails() {
    let dir = TempDir::new("cli-err");
    let p = dir.path.to_string_lossy().to_string();
    let out = run(&listen_args(&[
        "--error-target",
        "http://127.0.0.1:9/hub/error",
        "--error-path",
        &p,
    ]));
    assert!(out.failed_cleanly(), "{out:?}");
}

#[test]
fn redirect_port_without_ssl_fails() {
    let rp = free_port().to_string();
    let out = run(&listen_args(&["--redirect-port", &rp]));
    assert!(out.failed_cleanly(), "{out:?}");
}

#[test]
fn socket_conflicts_with_port() {
    let dir = TempDir::new("cli-conflict");
    let s = dir.join("p.sock").to_string_lossy().to_string();
    let out = run(&listen_args(&["--socket", &s]));
    assert!(
        out.failed_cleanly(),
        "--socket with --ip/--port must be rejected: {out:?}"
    );
}

#[test]
fn unknown_storage_backend_fails_clearly() {
    let out = run(&listen_args(&["--storage-backend", "./no-such-store.js"]));
    assert!(out.failed_cleanly(), "{out:?}");
    assert!(
        out.stderr.to_lowercase().contains("storage"),
        "stderr should mention the storage backend: {out:?}"
    );
}

#[test]
fn default_target_prints_route_added() {
    let url = "http://127.0.0.1:9/hub";
    let hg = Hubgate::start(&["--default-target", url], &[]);
    let line = format!("Route added / -> {url}");
    assert!(
        hg.wait_for_stdout(&line, Duration::from_secs(5)),
        "stdout lacks {line:?}:\n{}",
        hg.output()
    );
}

#[test]
fn listeners_accept_within_10_seconds_of_spawn() {
    let t0 = Instant::now();
    let hg = Hubgate::builder()
        .ready_timeout(Duration::from_secs(10))
        .start();
    eprintln!("ready after {:?}", t0.elapsed());
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert_eq!(hg.get("/_chp_healthz").status, 200);
    assert_eq!(hg.api_get("/api/routes").status, 200);
}

#[test]
fn api_port_defaults_to_port_plus_one() {
    let p = free_port_pair();
    let hg = Hubgate::builder().port(p).implicit_api_port(p + 1).start();
    let r = hg.api_get("/api/routes");
    assert_eq!(r.status, 200, "{}", r.describe());
}

#[test]
fn pid_file_written_after_listening_and_removed_on_sigterm() {
    let dir = TempDir::new("pid");
    let pid_file = dir.join("hubgate.pid");
    let mut hg = Hubgate::start(&["--pid-file", &pid_file.to_string_lossy()], &[]);
    let mut contents = String::new();
    assert!(
        wait_until(Duration::from_secs(2), || {
            contents = std::fs::read_to_string(&pid_file).unwrap_or_default();
            !contents.trim().is_empty()
        }),
        "pid file not written"
    );
    assert_eq!(contents.trim(), hg.pid().to_string());
    hg.terminate(EXIT);
    assert!(
        wait_until(Duration::from_millis(500), || !pid_file.exists()),
        "pid file must be removed on exit"
    );
}

#[test]
fn sigterm_exits_promptly_after_in_flight_requests_complete() {
    let mut hg = Hubgate::start(&[], &[]);
    let slow = Backend::fixed(
        Reply::new(200)
            .body("slow done")
            .delay(Duration::from_secs(1)),
    );
    hg.add_route("/", &slow.url());
    let port = hg.port;
    let t = std::thread::spawn(move || try_http(port, &Req::get("/slow")));
    assert!(
        slow.wait_for(1, Duration::from_secs(5)),
        "backend never got the request"
    );
    let t0 = Instant::now();
    let status = hg.terminate(EXIT);
    let took = t0.elapsed();
    eprintln!("exited with {status} {took:?} after SIGTERM");
    let r = t
        .join()
        .unwrap()
        .expect("the in-flight request was cut by SIGTERM");
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(r.text(), "slow done");
    assert!(took < EXIT);
}

#[test]
fn sigterm_and_sigint_exit_when_idle() {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let mut hg = Hubgate::start(&[], &[]);
        let t0 = Instant::now();
        hg.signal(sig);
        let st = hg.wait_exit(EXIT);
        assert!(
            st.is_some(),
            "signal {sig}: still running after {EXIT:?}\n{}",
            hg.output()
        );
        eprintln!(
            "signal {sig}: exited with {:?} after {:?}",
            st.unwrap(),
            t0.elapsed()
        );
    }
}

#[test]
fn unix_socket_listeners() {
    let dir = TempDir::new("sockets");
    let ps = dir.join("proxy.sock");
    let api = dir.join("api.sock");
    let hg = Hubgate::builder()
        .proxy_socket(&ps)
        .api_socket(&api)
        .start();
    let echo = Backend::echo();
    hg.add_route("/user/alice", &echo.url());
    let r = hg.get("/user/alice/x?y=1");
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(r.json()["path"], "/user/alice/x?y=1");
    let r = hg.get("/_chp_healthz");
    assert_eq!(r.status, 200);
    let r = hg.api_raw(&Req::get("/api/routes"));
    assert_eq!(r.status, 403, "the API socket still checks the token");
}

#[test]
fn many_chp_flags_are_accepted_together() {
    let m = free_port();
    let dir = TempDir::new("flags");
    let args: Vec<String> = [
        "--log-level",
        "debug",
        "--timeout",
        "30000",
        "--proxy-timeout",
        "30000",
        "--keep-alive-timeout",
        "5000",
        "--auto-rewrite",
        "--change-origin",
        "--protocol-rewrite",
        "https",
        "--insecure",
        "--custom-header",
        "X-A: 1",
        "--custom-header",
        "X-B:2",
        "--metrics-ip",
        "127.0.0.1",
        "--metrics-port",
        &m.to_string(),
        "--pid-file",
        &dir.join("p.pid").to_string_lossy(),
        "--default-target",
        "http://127.0.0.1:9",
        "--error-target",
        "http://127.0.0.1:9/hub/error",
        "--no-x-forward",
        "--no-prepend-path",
        "--no-include-prefix",
        "--host-routing",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let hg = Hubgate::builder().args(&args).wait_port(m).start();
    assert_eq!(hg.get("/_chp_healthz").status, 200);
    assert_eq!(hg.routes().len(), 1);
    let r = http(m, &Req::get("/metrics"));
    assert_eq!(r.status, 200, "{}", r.describe());
    for level in ["info", "warn", "error"] {
        let hg = Hubgate::start(&["--log-level", level], &[]);
        assert_eq!(hg.get("/_chp_healthz").status, 200);
    }
}

#[test]
fn check_config_accepts_a_good_file() {
    let dir = TempDir::new("cfg-good");
    let f = dir.write(
        "hubgate.toml",
        "[proxy]\nport = 18000\n\n[api]\nport = 18001\n",
    );
    let out = run_cli(
        &["--check-config", "--config", &f.to_string_lossy()],
        &[],
        EXIT,
    );
    assert!(out.success(), "{out:?}");
}

#[test]
fn check_config_rejects_a_bad_value_naming_the_key() {
    let dir = TempDir::new("cfg-bad");
    let f = dir.write("hubgate.toml", "[proxy]\nport = \"notanumber\"\n");
    let out = run_cli(
        &["--check-config", "--config", &f.to_string_lossy()],
        &[],
        EXIT,
    );
    assert!(out.failed_cleanly(), "{out:?}");
    assert!(
        out.stderr.contains("port"),
        "stderr should name the key: {out:?}"
    );
    // Without --check-config the same file stops startup too.
    let out = run(&listen_args(&["--config", &f.to_string_lossy()]));
    assert!(out.failed_cleanly(), "{out:?}");
    assert!(out.stderr.contains("port"), "{out:?}");
}

#[test]
fn check_config_rejects_an_unknown_key_naming_it() {
    let dir = TempDir::new("cfg-typo");
    let f = dir.write("hubgate.toml", "[proxy]\nprot = 8000\n");
    let out = run_cli(
        &["--check-config", "--config", &f.to_string_lossy()],
        &[],
        EXIT,
    );
    assert!(out.failed_cleanly(), "{out:?}");
    assert!(
        out.stderr.contains("prot"),
        "stderr should name the unknown key: {out:?}"
    );
}

#[test]
fn check_config_does_not_listen() {
    let p = free_port();
    let out = run_cli(
        &[
            "--check-config",
            "--ip",
            "127.0.0.1",
            "--port",
            &p.to_string(),
            "--api-ip",
            "127.0.0.1",
            "--api-port",
            &free_port().to_string(),
        ],
        &[],
        EXIT,
    );
    assert!(out.success(), "{out:?}");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", p)).is_err(),
        "--check-config must not start listeners"
    );
}

/// GET /_chp_healthz over a plain socket to `addr`; the status code, or None.
fn healthz_status(addr: std::net::SocketAddr) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, EXIT).ok()?;
    s.set_read_timeout(Some(EXIT)).ok()?;
    s.write_all(b"GET /_chp_healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.get(9..12)?.parse().ok()
}

#[test]
fn empty_ip_listens_on_every_family_and_a_repeated_flag_keeps_the_last_value() {
    // The z2jh chart passes `--ip=`; CHP then takes IPv4 and IPv6. The builder's own
    // `--ip 127.0.0.1` comes first: the later `--ip=` wins, as in CHP.
    let hg = Hubgate::builder().arg("--ip=").start();
    let line = format!("Proxying http://*:{}", hg.port);
    assert!(
        hg.wait_for_stdout(&line, EXIT),
        "stdout lacks {line:?}:\n{}",
        hg.output()
    );
    let v4 = std::net::SocketAddr::from(([127, 0, 0, 1], hg.port));
    assert_eq!(healthz_status(v4), Some(200), "{}", hg.output());
    // Only where this host has IPv6 at all (a kernel may be booted without it).
    if std::net::TcpListener::bind("[::1]:0").is_ok() {
        let v6 = std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, hg.port));
        assert_eq!(healthz_status(v6), Some(200), "{}", hg.output());
    }
}
