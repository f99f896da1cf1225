//! What reaches the upstream and what comes back (docs/chp-compatibility.md): prefix
//! handling, request headers, responses and keep-alive, redirect rewriting, the health
//! check, unix-socket targets.

use crate::support::*;
use serde_json::json;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Starts hubgate with `args`, one echo backend and the route `key` → echo+`tpath`.
fn setup(args: &[&str], key: &str, tpath: &str) -> (Hubgate, Backend) {
    let hg = Hubgate::start(args, &[]);
    let echo = Backend::echo();
    hg.add_route(key, &format!("{}{tpath}", echo.url()));
    (hg, echo)
}

/// Sends `req`, asserts 200 and returns what the echo backend received.
fn through(hg: &Hubgate, echo: &Backend, req: &Req) -> Recorded {
    echo.clear();
    let r = hg.request(req);
    assert_eq!(
        r.status,
        200,
        "{} {}: {}",
        req.method,
        req.target,
        r.describe()
    );
    let rec = echo.last().expect("backend received nothing");
    assert_eq!(echo.count(), 1);
    rec
}

fn upstream_path(hg: &Hubgate, echo: &Backend, path: &str) -> String {
    through(hg, echo, &Req::get(path)).target
}

#[test]
fn target_path_is_prepended_and_prefix_included_by_default() {
    let (hg, echo) = setup(&[], "/bar", "/foo");
    assert_eq!(
        upstream_path(&hg, &echo, "/bar/rest?x=1"),
        "/foo/bar/rest?x=1"
    );
    assert_eq!(upstream_path(&hg, &echo, "/bar"), "/foo/bar");
    hg.add_route("/baz", &format!("{}/foo/", echo.url()));
    assert_eq!(
        upstream_path(&hg, &echo, "/baz/rest"),
        "/foo/baz/rest",
        "slashes merged at the join"
    );
}

#[test]
fn no_prepend_path() {
    let (hg, echo) = setup(&["--no-prepend-path"], "/bar", "/foo");
    assert_eq!(
        upstream_path(&hg, &echo, "/bar/rest/of/it?x=1"),
        "/bar/rest/of/it?x=1"
    );
}

#[test]
fn no_include_prefix() {
    let (hg, echo) = setup(&["--no-include-prefix"], "/bar", "/foo");
    assert_eq!(
        upstream_path(&hg, &echo, "/bar/rest/of/it?x=1"),
        "/foo/rest/of/it?x=1"
    );
    // The decoded prefix is stripped properly (CHP cuts the raw URL: `/ce/foo`).
    hg.add_route("/user/alice", &echo.url());
    assert_eq!(upstream_path(&hg, &echo, "/user/alice/foo"), "/foo");
    assert_eq!(upstream_path(&hg, &echo, "/user/%61lice/foo"), "/foo");
    assert_eq!(upstream_path(&hg, &echo, "/user/alice/?x=1"), "/?x=1");
}

#[test]
fn no_prepend_path_and_no_include_prefix() {
    let (hg, echo) = setup(
        &["--no-prepend-path", "--no-include-prefix"],
        "/bar",
        "/foo",
    );
    assert_eq!(upstream_path(&hg, &echo, "/bar/rest/of/it"), "/rest/of/it");
}

#[test]
fn target_query_is_merged_with_request_query() {
    let (hg, echo) = setup(&[], "/bar", "/foo?a=1");
    assert_eq!(
        upstream_path(&hg, &echo, "/bar/x?b=2"),
        "/foo/bar/x?a=1&b=2"
    );
    assert_eq!(upstream_path(&hg, &echo, "/bar/x"), "/foo/bar/x?a=1");
}

#[test]
fn uri_encoding_is_preserved() {
    let (hg, echo) = setup(&[], "/", "");
    for path in [
        "/b%40r/b%20r/rest",
        "/b@r/b%20r/rest",
        "/a%2Fb/c",
        "/x%3Fy/z?q=%20&r=a+b&s=%2F",
        "/%E7%A7%80%E6%A8%B9/tree",
        "/user/a:b/c;d=e/~f/!$&'()*,",
    ] {
        assert_eq!(upstream_path(&hg, &echo, path), path);
    }
}

#[test]
fn x_forwarded_headers_are_added() {
    let (hg, echo) = setup(&[], "/", "");
    let rec = through(&hg, &echo, &Req::get("/x").host("example.com:1234"));
    assert_eq!(rec.header("x-forwarded-for").as_deref(), Some("127.0.0.1"));
    assert_eq!(rec.header("x-forwarded-port").as_deref(), Some("1234"));
    assert_eq!(rec.header("x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(
        rec.header("x-forwarded-host").as_deref(),
        Some("example.com:1234")
    );
    assert_eq!(
        rec.header("host").as_deref(),
        Some("example.com:1234"),
        "Host passes through"
    );

    // Port from Host, or 80 without one (not the listener's port).
    let rec = through(&hg, &echo, &Req::get("/x").host("example.com"));
    assert_eq!(rec.header("x-forwarded-port").as_deref(), Some("80"));
    assert_eq!(
        rec.header("x-forwarded-host").as_deref(),
        Some("example.com")
    );

    // Existing values: for/port/proto appended without a space; host only if absent.
    let rec = through(
        &hg,
        &echo,
        &Req::get("/x")
            .host("example.com:1234")
            .header("X-Forwarded-For", "1.2.3.4")
            .header("X-Forwarded-Port", "443")
            .header("X-Forwarded-Proto", "https")
            .header("X-Forwarded-Host", "orig.example"),
    );
    assert_eq!(
        rec.header("x-forwarded-for").as_deref(),
        Some("1.2.3.4,127.0.0.1")
    );
    assert_eq!(rec.header("x-forwarded-port").as_deref(), Some("443,1234"));
    assert_eq!(
        rec.header("x-forwarded-proto").as_deref(),
        Some("https,http")
    );
    assert_eq!(
        rec.header("x-forwarded-host").as_deref(),
        Some("orig.example")
    );
}

#[test]
fn no_x_forward() {
    let (hg, echo) = setup(&["--no-x-forward"], "/", "");
    let rec = through(&hg, &echo, &Req::get("/x").host("example.com:1234"));
    for h in [
        "x-forwarded-for",
        "x-forwarded-port",
        "x-forwarded-proto",
        "x-forwarded-host",
    ] {
        assert_eq!(
            rec.header(h),
            None,
            "{h} must not be added with --no-x-forward"
        );
    }
    let rec = through(
        &hg,
        &echo,
        &Req::get("/x").header("X-Forwarded-For", "1.2.3.4"),
    );
    assert_eq!(
        rec.header("x-forwarded-for").as_deref(),
        Some("1.2.3.4"),
        "client value untouched"
    );
}

#[test]
fn custom_headers_are_added_and_override() {
    let (hg, echo) = setup(
        &[
            "--custom-header",
            "X-A: 1",
            "--custom-header",
            " k2 : host:123 ",
            "--custom-header",
            "X-Forwarded-Proto: https",
        ],
        "/",
        "",
    );
    let rec = through(&hg, &echo, &Req::get("/x").header("X-A", "client"));
    assert_eq!(
        rec.header("x-a").as_deref(),
        Some("1"),
        "custom header overrides the client's"
    );
    assert_eq!(
        rec.header("k2").as_deref(),
        Some("host:123"),
        "name and value trimmed, split at the first colon"
    );
    assert_eq!(
        rec.header("x-forwarded-proto").as_deref(),
        Some("https"),
        "custom header overrides xfwd"
    );
    assert_eq!(rec.header("x-forwarded-for").as_deref(), Some("127.0.0.1"));
}

#[test]
fn host_passthrough_and_change_origin() {
    let (hg, echo) = setup(&[], "/", "");
    let rec = through(&hg, &echo, &Req::get("/x").host("example.com:1234"));
    assert_eq!(rec.header("host").as_deref(), Some("example.com:1234"));

    let (hg, echo) = setup(&["--change-origin"], "/", "");
    let rec = through(&hg, &echo, &Req::get("/x").host("example.com:1234"));
    assert_eq!(
        rec.header("host"),
        Some(format!("127.0.0.1:{}", echo.port)),
        "--change-origin sets Host to the target"
    );
}

#[test]
fn client_headers_method_and_body_are_forwarded() {
    let (hg, echo) = setup(&[], "/", "");
    for method in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
        let body: &[u8] = if method == "GET" {
            b""
        } else {
            b"{\"k\":\"v\"}"
        };
        let rec = through(
            &hg,
            &echo,
            &Req::new(method, "/api/contents/x")
                .header("Cookie", "a=1; b=2")
                .header("X-XSRFToken", "tok")
                .header("Content-Type", "application/json")
                .header("X-Dup", "1")
                .header("X-Dup", "2")
                .body(body),
        );
        assert_eq!(rec.method, method);
        assert_eq!(rec.body, body);
        assert_eq!(rec.header("cookie").as_deref(), Some("a=1; b=2"));
        assert_eq!(rec.header("x-xsrftoken").as_deref(), Some("tok"));
        // Two header lines or one joined line (node joins with ", "): same list.
        assert_eq!(
            rec.header("x-dup").map(|v| v.replace(", ", ",")).as_deref(),
            Some("1,2")
        );
    }
}

#[test]
fn upstream_status_headers_and_body_are_copied() {
    let hg = Hubgate::start(&[], &[]);
    let b = Backend::fixed(
        Reply::new(201)
            .header("X-Custom", "a")
            .header("Set-Cookie", "a=1; Path=/")
            .header("Set-Cookie", "b=2; HttpOnly")
            .header("Cache-Control", "no-store")
            .header("Content-Type", "text/x-test")
            .body("hello"),
    );
    hg.add_route("/", &b.url());
    let r = hg.get("/x");
    assert_eq!(r.status, 201, "{}", r.describe());
    assert_eq!(r.header("x-custom"), Some("a"));
    assert_eq!(
        r.header_all("set-cookie"),
        vec!["a=1; Path=/", "b=2; HttpOnly"],
        "{}",
        r.describe()
    );
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.header("content-type"), Some("text/x-test"));
    assert_eq!(r.text(), "hello");

    for code in [204u16, 404, 418, 500, 502] {
        let b = Backend::fixed(Reply::new(code).body(if code == 204 { "" } else { "body" }));
        hg.add_route("/", &b.url());
        let r = hg.get("/x");
        assert_eq!(r.status, code, "{}", r.describe());
        if code != 204 {
            assert_eq!(r.text(), "body", "upstream {code} body relayed as is");
        }
    }
}

#[test]
fn chunked_upstream_response_is_relayed_intact() {
    let hg = Hubgate::start(&[], &[]);
    let body = pattern_body(100 * 1024 + 7);
    let b = Backend::fixed(
        Reply::new(200)
            .header("Content-Type", "text/plain")
            .body(&body)
            .chunked(),
    );
    hg.add_route("/", &b.url());
    let r = hg.get("/x");
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), body.len());
    assert!(r.body == body, "chunked body corrupted");
}

#[test]
fn large_request_bodies_arrive_intact() {
    let (hg, echo) = setup(&[], "/", "");
    for len in [64 * 1024, 10 * 1024 * 1024] {
        let body = pattern_body(len);
        echo.clear();
        let r = hg.request(
            &Req::post("/upload", &body).header("Content-Type", "application/octet-stream"),
        );
        assert_eq!(r.status, 200, "{len}: {}", r.describe());
        let v = r.json();
        assert_eq!(v["body_len"], json!(len), "{len}");
        assert_eq!(
            v["body_fnv"],
            json!(fnv_hex(&body)),
            "{len}: body corrupted"
        );
        assert_eq!(echo.count(), 1);
    }
    // A chunked request body.
    let body = pattern_body(1024 * 1024 + 3);
    let r = hg.request(&Req::new("POST", "/upload").chunked_body(&body, 70_000));
    assert_eq!(r.status, 200, "{}", r.describe());
    let v = r.json();
    assert_eq!(v["body_len"], json!(body.len()));
    assert_eq!(v["body_fnv"], json!(fnv_hex(&body)));
}

#[test]
fn large_response_bodies_arrive_intact() {
    let hg = Hubgate::start(&[], &[]);
    for len in [64 * 1024, 10 * 1024 * 1024] {
        let body = pattern_body(len);
        let b = Backend::fixed(
            Reply::new(200)
                .header("Content-Type", "application/octet-stream")
                .body(&body),
        );
        hg.add_route("/", &b.url());
        let r = hg.get("/download");
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len(), len);
        assert!(r.body == body, "{len}-byte response corrupted");
    }
}

/// A backend answering `/<code>` with that status and a Location pointing at
/// itself (`/foreign/...`: at another host).
fn redirecting_backend() -> Backend {
    let me: Arc<OnceLock<String>> = Arc::default();
    let me2 = me.clone();
    let b = Backend::start(move |req| {
        let code: u16 = req
            .path()
            .trim_start_matches('/')
            .split('/')
            .next()
            .unwrap_or("")
            .parse()
            .unwrap_or(302);
        let loc = if req.path().contains("/foreign") {
            "http://elsewhere.example/x".to_string()
        } else {
            format!("{}/elsewhere?a=1", me2.get().unwrap())
        };
        Reply::new(code).header("Location", &loc).body("moved")
    });
    me.set(b.url()).unwrap();
    b
}

#[test]
fn location_is_untouched_by_default() {
    let hg = Hubgate::start(&[], &[]);
    let b = redirecting_backend();
    hg.add_route("/", &b.url());
    let r = hg.request(&Req::get("/302").host("other.example.org:8443"));
    assert_eq!(r.status, 302);
    assert_eq!(
        r.header("location"),
        Some(format!("{}/elsewhere?a=1", b.url()).as_str())
    );
}

#[test]
fn auto_rewrite_and_protocol_rewrite() {
    let b = redirecting_backend();
    let bu = b.url();
    let host = "other.example.org:8443";
    let cases: &[(&[&str], &str, String)] = &[
        (
            &["--auto-rewrite"],
            "/302",
            "http://other.example.org:8443/elsewhere?a=1".into(),
        ),
        (
            &["--auto-rewrite", "--protocol-rewrite", "https"],
            "/302",
            "https://other.example.org:8443/elsewhere?a=1".into(),
        ),
        (
            &["--protocol-rewrite", "https"],
            "/302",
            format!("https://127.0.0.1:{}/elsewhere?a=1", b.port),
        ),
        // 201 is rewritten too (the regex quirk), as are 301/307/308.
        (
            &["--auto-rewrite"],
            "/201",
            "http://other.example.org:8443/elsewhere?a=1".into(),
        ),
        (
            &["--auto-rewrite"],
            "/301",
            "http://other.example.org:8443/elsewhere?a=1".into(),
        ),
        (
            &["--auto-rewrite"],
            "/307",
            "http://other.example.org:8443/elsewhere?a=1".into(),
        ),
        (
            &["--auto-rewrite"],
            "/308",
            "http://other.example.org:8443/elsewhere?a=1".into(),
        ),
        // Not for other statuses, nor for other hosts.
        (
            &["--auto-rewrite", "--protocol-rewrite", "https"],
            "/303",
            format!("{bu}/elsewhere?a=1"),
        ),
        (
            &["--auto-rewrite", "--protocol-rewrite", "https"],
            "/200",
            format!("{bu}/elsewhere?a=1"),
        ),
        (
            &["--auto-rewrite", "--protocol-rewrite", "https"],
            "/302/foreign",
            "http://elsewhere.example/x".into(),
        ),
    ];
    for (args, path, want) in cases {
        let hg = Hubgate::start(args, &[]);
        hg.add_route("/", &bu);
        let r = hg.request(&Req::get(path).host(host));
        assert_eq!(
            r.header("location"),
            Some(want.as_str()),
            "{args:?} {path}: {}",
            r.describe()
        );
    }
    // Observed on live CHP: a request Host without a port keeps the backend's port.
    let hg = Hubgate::start(&["--auto-rewrite"], &[]);
    hg.add_route("/", &bu);
    let r = hg.request(&Req::get("/302").host("other.example.org"));
    assert_eq!(
        r.header("location"),
        Some(format!("http://other.example.org:{}/elsewhere?a=1", b.port).as_str()),
        "{}",
        r.describe()
    );
}

#[test]
fn health_check() {
    let hg = Hubgate::start(&[], &[]);
    // Served with no routes at all.
    let r = hg.get("/_chp_healthz");
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(r.media_type().as_deref(), Some("application/json"));
    assert_eq!(r.text(), r#"{"status":"OK"}"#);
    // Still served by the proxy with a root route; a query string makes it an
    // ordinary proxied request.
    let echo = Backend::echo();
    hg.add_route("/", &echo.url());
    let r = hg.get("/_chp_healthz");
    assert_eq!(r.text(), r#"{"status":"OK"}"#);
    assert_eq!(echo.count(), 0);
    let r = hg.get("/_chp_healthz?x=1");
    assert_eq!(r.status, 200);
    assert_eq!(echo.count(), 1);
    assert_eq!(echo.last().unwrap().target, "/_chp_healthz?x=1");
}

#[test]
fn two_requests_over_one_client_connection() {
    let (hg, echo) = setup(&[], "/", "");
    let mut c = hg.proxy_conn();
    for i in 0..3 {
        let r = c
            .request(&Req::get(&format!("/ka/{i}")))
            .expect("keep-alive request");
        assert_eq!(r.status, 200, "{}", r.describe());
        assert_ne!(
            r.header("connection").map(|v| v.to_ascii_lowercase()),
            Some("close".into())
        );
        assert_eq!(r.json()["path"], format!("/ka/{i}"));
        let r = c
            .request(&Req::post("/ka/post", "data"))
            .expect("keep-alive POST");
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["body_len"], 4);
    }
    assert_eq!(echo.count(), 6);
}

#[test]
fn unix_socket_target() {
    let dir = TempDir::new("unix-target");
    let sock = dir.join("echo.sock");
    let echo = Backend::echo_unix(&sock);
    let hg = Hubgate::start(&[], &[]);
    hg.add_route("/unix", &echo.unix_url());
    let r = hg.get("/unix/x?y=1");
    assert_eq!(
        r.status,
        200,
        "target {}: {}",
        echo.unix_url(),
        r.describe()
    );
    assert_eq!(r.json()["path"], "/unix/x?y=1");
    // The older `unix+http` spelling.
    let enc = encode_component(&sock.to_string_lossy());
    hg.add_route("/unix2", &format!("unix+http://{enc}"));
    let r = hg.get("/unix2/z");
    assert_eq!(r.status, 200, "unix+http target: {}", r.describe());
    assert_eq!(r.json()["path"], "/unix2/z");
}

#[test]
fn http11_request_without_host_is_400() {
    let (hg, echo) = setup(&[], "/", "");
    let r = hg.request(&Req::get("/x").no_host());
    assert_eq!(r.status, 400, "{}", r.describe());
    assert_eq!(echo.count(), 0);
}

#[test]
fn slow_upstream_within_timeouts_completes() {
    let hg = Hubgate::start(&[], &[]);
    let b = Backend::fixed(
        Reply::new(200)
            .body("late")
            .delay(Duration::from_millis(1500)),
    );
    hg.add_route("/", &b.url());
    let r = hg.get("/slow");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "late");
}

#[test]
fn idle_client_connection_closed_after_keep_alive_timeout() {
    let (hg, _echo) = setup(&["--keep-alive-timeout", "1000"], "/", "");
    let mut c = hg.proxy_conn();
    let r = c.request(&Req::get("/x")).expect("request");
    assert_eq!(r.status, 200);
    let t0 = std::time::Instant::now();
    assert!(
        c.wait_closed(Duration::from_secs(5)),
        "idle keep-alive connection not closed within 5 s of --keep-alive-timeout 1000"
    );
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(800),
        "closed after {took:?}, before the 1 s keep-alive timeout"
    );
}
