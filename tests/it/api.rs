//! The CHP-compatible REST API (`/api/routes`): docs/chp-compatibility.md, the REST API
//! and the behaviour observed on live CHP.

use crate::support::*;
use serde_json::json;
use std::time::{Duration, Instant};

fn hg() -> Hubgate {
    Hubgate::start(&[], &[])
}

fn keys(m: &serde_json::Map<String, serde_json::Value>) -> Vec<String> {
    let mut k: Vec<String> = m.keys().cloned().collect();
    k.sort();
    k
}

#[test]
fn get_all_routes_with_and_without_trailing_slash() {
    let hg = hg();
    let r = hg.api_get("/api/routes");
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(
        r.media_type().as_deref(),
        Some("application/json"),
        "{}",
        r.describe()
    );
    assert_eq!(r.json(), json!({}));

    hg.add_route("/user/alice", "http://127.0.0.1:9999");
    hg.add_route("/user/bob", "http://127.0.0.1:9998");
    for p in ["/api/routes", "/api/routes/"] {
        let r = hg.api_get(p);
        assert_eq!(r.status, 200, "GET {p}: {}", r.describe());
        assert_eq!(r.media_type().as_deref(), Some("application/json"));
        let v = r.json();
        let m = v.as_object().unwrap();
        assert_eq!(keys(m), vec!["/user/alice", "/user/bob"], "GET {p}: {v}");
        assert_eq!(v["/user/alice"]["target"], "http://127.0.0.1:9999");
        assert_eq!(v["/user/bob"]["target"], "http://127.0.0.1:9998");
    }
}

#[test]
fn get_one_route_with_and_without_trailing_slash_and_404() {
    let hg = hg();
    hg.add_route("/user/alice", "http://127.0.0.1:9999");
    for p in ["/api/routes/user/alice", "/api/routes/user/alice/"] {
        let r = hg.api_get(p);
        assert_eq!(r.status, 200, "GET {p}: {}", r.describe());
        assert_eq!(r.media_type().as_deref(), Some("application/json"));
        let v = r.json();
        assert_eq!(v["target"], "http://127.0.0.1:9999", "{v}");
        assert!(v["last_activity"].is_string(), "{v}");
    }
    // Missing, and a mere prefix of an existing route: exact lookup, 404, empty body.
    for p in [
        "/api/routes/user/bob",
        "/api/routes/user",
        "/api/routes/user/alice/lab",
    ] {
        let r = hg.api_get(p);
        assert_eq!(r.status, 404, "GET {p}: {}", r.describe());
        assert!(
            r.body.is_empty(),
            "GET {p}: 404 body should be empty: {}",
            r.describe()
        );
    }
}

#[test]
fn post_creates_route_with_201_and_empty_body() {
    let hg = hg();
    let r = hg.api_post(
        "/api/routes/user/alice",
        r#"{"target":"http://127.0.0.1:9999"}"#,
    );
    assert_eq!(r.status, 201, "{}", r.describe());
    assert!(
        r.body.is_empty(),
        "201 body must be empty: {}",
        r.describe()
    );
    assert_eq!(
        hg.route("/user/alice").unwrap()["target"],
        "http://127.0.0.1:9999"
    );
}

#[test]
fn post_trailing_slash_is_normalised() {
    let hg = hg();
    hg.add_route("/user/alice/", "http://127.0.0.1:9999");
    assert_eq!(keys(&hg.routes()), vec!["/user/alice"]);
}

#[test]
fn post_replaces_route_and_drops_old_extra_keys() {
    let hg = hg();
    hg.add_route_json(
        "/user/alice",
        r#"{"target":"http://127.0.0.1:1111","user":"alice","extra":1}"#,
    );
    let v = hg.route("/user/alice").unwrap();
    assert_eq!(v["user"], "alice");
    assert_eq!(v["extra"], 1);
    hg.add_route_json("/user/alice", r#"{"target":"http://127.0.0.1:2222"}"#);
    let v = hg.route("/user/alice").unwrap();
    let mut k: Vec<&String> = v.as_object().unwrap().keys().collect();
    k.sort();
    assert_eq!(
        k,
        vec!["last_activity", "target"],
        "old keys must be dropped: {v}"
    );
    assert_eq!(v["target"], "http://127.0.0.1:2222");
}

#[test]
fn extra_keys_are_stored_and_echoed() {
    let hg = hg();
    let data = json!({
        "target": "http://127.0.0.1:9999",
        "user": "alice",
        "server_name": "",
        "jupyterhub": true,
        "n": 1.5,
        "nothing": null,
        "nested": {"a": [1, 2, {"b": null}], "s": "x y"}
    });
    hg.add_route_json("/user/alice", &data.to_string());
    let v = hg.route("/user/alice").unwrap();
    for (k, want) in data.as_object().unwrap() {
        assert_eq!(&v[k], want, "key {k} in {v}");
    }
    let all = hg.routes();
    for (k, want) in data.as_object().unwrap() {
        assert_eq!(&all["/user/alice"][k], want, "key {k} in GET /api/routes");
    }
}

#[test]
fn target_is_returned_exactly_as_posted() {
    let hg = hg();
    for (key, target) in [
        ("/a", "http://127.0.0.1:8888/"),
        ("/b", "HTTP://Example.COM:80/x/../y?q=1"),
        ("/c", "http+unix://%2Ftmp%2Fx.sock/user/c/"),
    ] {
        hg.add_route(key, target);
        assert_eq!(hg.route(key).unwrap()["target"], target, "route {key}");
    }
}

#[test]
fn routes_that_could_never_be_proxied_are_refused_with_the_reason() {
    // CHP stores these and fails per request (500) or never matches; hubgate answers 400
    // (README, "Differences from CHP").
    let hg = hg();
    hg.add_route("/hub", "http://127.0.0.1:8081");
    let before = hg.routes();
    for (key, target, reason) in [
        ("/c", "not a url", "spaces or control characters"),
        ("/d", "ftp://127.0.0.1/x", "unsupported target protocol"),
        ("/e", "file:///etc/passwd", "unsupported target protocol"),
        ("/f", "http//missing-colon", "is not a URL"),
        ("/g", "http://user:secret@127.0.0.1:1/", "credentials"),
        (
            "/user/%2e%2e/hub",
            "http://127.0.0.1:1/",
            "'.' or '..' segment",
        ),
        ("/user/../hub", "http://127.0.0.1:1/", "'.' or '..' segment"),
        ("/user/a%00b", "http://127.0.0.1:1/", "control characters"),
    ] {
        let body = serde_json::json!({ "target": target }).to_string();
        let r = hg.api_post(&format!("/api/routes{key}"), &body);
        assert_eq!(r.status, 400, "POST {key} {target}: {}", r.describe());
        assert!(
            r.text().contains(reason),
            "POST {key} {target}: {:?} does not say {reason:?}",
            r.text()
        );
    }
    assert_eq!(hg.routes(), before, "a refused route was stored");
    assert_eq!(hg.route("/hub").unwrap()["target"], "http://127.0.0.1:8081");
}

#[test]
fn last_activity_is_js_iso_and_set_at_post_time() {
    let hg = hg();
    let before = now_millis();
    // An incoming last_activity is overwritten.
    hg.add_route_json(
        "/user/alice",
        r#"{"target":"http://127.0.0.1:9999","last_activity":"2000-01-01T00:00:00.000Z"}"#,
    );
    let after = now_millis();
    let la = hg.last_activity("/user/alice");
    assert!(
        is_js_iso(&la),
        "last_activity {la:?} is not YYYY-MM-DDTHH:MM:SS.mmmZ"
    );
    let t = iso_millis(&la);
    assert!(
        t >= before - 1 && t <= after + 1,
        "last_activity {la} not within POST time [{before}, {after}]"
    );
    let all = hg.routes();
    let la2 = all["/user/alice"]["last_activity"].as_str().unwrap();
    assert!(is_js_iso(la2), "{la2:?}");

    // Re-POSTing resets it to the new POST time.
    std::thread::sleep(Duration::from_millis(20));
    hg.add_route("/user/alice", "http://127.0.0.1:9999");
    let la3 = hg.last_activity("/user/alice");
    assert!(
        iso_millis(&la3) > t,
        "re-POST must move last_activity: {la} -> {la3}"
    );
}

#[test]
fn post_without_string_target_is_400() {
    let hg = hg();
    for body in [
        "{}",
        r#"{"target":5}"#,
        r#"{"target":null}"#,
        r#"{"target":["http://127.0.0.1:1"]}"#,
        r#"{"target":{"url":"http://127.0.0.1:1"}}"#,
        "null",
        "[1]",
        r#""http://127.0.0.1:1""#,
        "5",
    ] {
        let r = hg.api_post("/api/routes/user/alice", body);
        assert_eq!(r.status, 400, "body {body}: {}", r.describe());
        assert_eq!(r.text(), "Must specify 'target' as string", "body {body}");
    }
    assert!(hg.routes().is_empty(), "no route may be created by a 400");
}

#[test]
fn post_invalid_json_is_400() {
    let hg = hg();
    for body in [
        "{bad",
        "",
        r#"{"target": "http://x",}"#,
        "{'target': 'http://x'}",
    ] {
        let r = hg.api_post("/api/routes/user/alice", body);
        assert_eq!(r.status, 400, "body {body:?}: {}", r.describe());
        assert!(
            r.text().starts_with("Body not valid JSON: "),
            "body {body:?}: 400 text should start with 'Body not valid JSON: ': {}",
            r.describe()
        );
    }
    assert!(hg.routes().is_empty());
}

#[test]
fn invalid_json_is_400_even_with_a_wrong_or_missing_token() {
    let hg = hg();
    let r = hg.api_raw(
        &Req::post("/api/routes/user/alice", "{bad").header("Authorization", "token wrong"),
    );
    assert_eq!(r.status, 400, "{}", r.describe());
    let r = hg.api_raw(&Req::post("/api/routes/user/alice", "{bad"));
    assert_eq!(r.status, 400, "{}", r.describe());
    // ...but a valid body with a wrong token is 403.
    let r = hg.api_raw(
        &Req::post(
            "/api/routes/user/alice",
            r#"{"target":"http://127.0.0.1:1"}"#,
        )
        .header("Authorization", "token wrong"),
    );
    assert_eq!(r.status, 403, "{}", r.describe());
}

#[test]
fn post_without_path_creates_root_route() {
    let hg = hg();
    hg.add_route("", "http://127.0.0.1:9999");
    let all = hg.routes();
    assert_eq!(keys(&all), vec!["/"]);
    assert_eq!(all["/"]["target"], "http://127.0.0.1:9999");
    // `/api/routes/` is the root too.
    hg.add_route("/", "http://127.0.0.1:9998");
    let all = hg.routes();
    assert_eq!(keys(&all), vec!["/"]);
    assert_eq!(all["/"]["target"], "http://127.0.0.1:9998");
}

#[test]
fn delete_is_204_then_404() {
    let hg = hg();
    hg.add_route("/user/alice", "http://127.0.0.1:9999");
    hg.add_route("/user/bob", "http://127.0.0.1:9999");
    let r = hg.api_delete("/api/routes/user/alice");
    assert_eq!(r.status, 204, "{}", r.describe());
    assert!(r.body.is_empty());
    assert!(hg.route("/user/alice").is_none());
    assert_eq!(keys(&hg.routes()), vec!["/user/bob"]);
    let r = hg.api_delete("/api/routes/user/alice");
    assert_eq!(r.status, 404, "{}", r.describe());
    assert!(r.body.is_empty(), "{}", r.describe());
}

#[test]
fn delete_trailing_slash_is_normalised() {
    let hg = hg();
    hg.add_route("/user/alice", "http://127.0.0.1:9999");
    let r = hg.api_delete("/api/routes/user/alice/");
    assert_eq!(r.status, 204, "{}", r.describe());
    assert!(hg.routes().is_empty());
}

#[test]
fn delete_api_routes_slash_removes_root() {
    let hg = hg();
    hg.add_route("/", "http://127.0.0.1:9999");
    hg.add_route("/user/alice", "http://127.0.0.1:9999");
    let r = hg.api_delete("/api/routes/");
    assert_eq!(r.status, 204, "{}", r.describe());
    assert_eq!(keys(&hg.routes()), vec!["/user/alice"]);
}

#[test]
fn delete_api_routes_without_path_answers_4xx_instead_of_hanging() {
    // CHP never answers this (TypeError); hubgate must answer, promptly, with a 4xx.
    let hg = hg();
    hg.add_route("/user/alice", "http://127.0.0.1:9999");
    let mut c = hg.api_conn();
    c.set_read_timeout(Duration::from_secs(2));
    let t0 = Instant::now();
    let r = c
        .request(&hg.authorize(Req::new("DELETE", "/api/routes")))
        .unwrap_or_else(|e| panic!("DELETE /api/routes got no answer within 2 s ({e})"));
    assert!(t0.elapsed() < Duration::from_secs(2));
    assert!(
        (400..500).contains(&r.status),
        "DELETE /api/routes: {}",
        r.describe()
    );
    assert_eq!(
        keys(&hg.routes()),
        vec!["/user/alice"],
        "other routes untouched"
    );
}

#[test]
fn invalid_escape_in_api_path_is_400() {
    // CHP hangs here; hubgate answers 400.
    let hg = hg();
    let mut c = hg.api_conn();
    c.set_read_timeout(Duration::from_secs(2));
    let r = c
        .request(&hg.authorize(Req::get("/api/routes/%ZZ")))
        .unwrap_or_else(|e| panic!("GET /api/routes/%ZZ got no answer within 2 s ({e})"));
    assert_eq!(r.status, 400, "{}", r.describe());
    for method in ["POST", "DELETE"] {
        let mut c = hg.api_conn();
        c.set_read_timeout(Duration::from_secs(2));
        let req = Req::new(method, "/api/routes/user/%E0%A4%A").body(if method == "POST" {
            r#"{"target":"http://127.0.0.1:1"}"#
        } else {
            ""
        });
        let r = c.request(&hg.authorize(req)).unwrap_or_else(|e| {
            panic!("{method} with a bad escape got no answer within 2 s ({e})")
        });
        assert!((400..500).contains(&r.status), "{method}: {}", r.describe());
    }
    assert!(hg.routes().is_empty());
}

#[test]
fn keys_are_percent_decoded() {
    let hg = hg();
    hg.add_route("/user/b%40r%20x/", "http://127.0.0.1:1");
    hg.add_route("/user/%E7%A7%80%E6%A8%B9", "http://127.0.0.1:2");
    hg.add_route("/a%2Fb", "http://127.0.0.1:3");
    let all = hg.routes();
    assert_eq!(
        keys(&all),
        vec!["/a/b", "/user/b@r x", "/user/秀樹"],
        "{all:?}"
    );
    assert_eq!(all["/user/秀樹"]["target"], "http://127.0.0.1:2");
    // GET with either spelling of the same decoded key.
    for p in [
        "/api/routes/user/b%40r%20x",
        "/api/routes/user/b@r%20x",
        "/api/routes/a/b",
    ] {
        let r = hg.api_get(p);
        assert_eq!(r.status, 200, "GET {p}: {}", r.describe());
    }
    let r = hg.api_delete("/api/routes/user/b%40r%20x");
    assert_eq!(r.status, 204, "{}", r.describe());
    let r = hg.api_delete("/api/routes/user/%E7%A7%80%E6%A8%B9/");
    assert_eq!(r.status, 204, "{}", r.describe());
    assert_eq!(keys(&hg.routes()), vec!["/a/b"]);
}

#[test]
fn double_slash_keys_follow_chp() {
    // Observed on CHP 5.3.0: POST (and GET) trim two trailing slashes, DELETE one.
    // (Written descriptions of CHP say GET trims one; live CHP answers
    // GET //double// with 200.)
    let hg = hg();
    hg.add_route("//double//", "http://127.0.0.1:1");
    assert_eq!(keys(&hg.routes()), vec!["//double"]);
    for p in ["//double", "//double/", "//double//"] {
        let r = hg.api_get(&format!("/api/routes{p}"));
        assert_eq!(r.status, 200, "GET {p}: {}", r.describe());
    }
    let r = hg.api_get("/api/routes///double");
    assert_eq!(r.status, 404, "GET ///double: {}", r.describe());
    let r = hg.api_delete("/api/routes//double//");
    assert_eq!(r.status, 404, "DELETE //double//: {}", r.describe());
    let r = hg.api_delete("/api/routes//double");
    assert_eq!(r.status, 204, "DELETE //double: {}", r.describe());
    assert!(hg.routes().is_empty());
}

#[test]
fn auth_header_rules() {
    let hg = hg();
    let cases: &[(Option<&str>, u16)] = &[
        (None, 403),
        (Some("token wrong"), 403),
        (Some("Bearer secret"), 403),
        (Some("Token secret"), 403),
        (Some("tokensecret"), 403),
        (Some("token secretX"), 403),
        (Some("token "), 403),
        (Some("token secret"), 200),
        // The unanchored /token\s+(\S+)/ quirk.
        (Some("xtoken secret"), 200),
        (Some("token secret extra"), 200),
        (Some("token    secret"), 200),
        (Some("Bearer x token secret"), 200),
    ];
    for (auth, want) in cases {
        let mut req = Req::get("/api/routes");
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        let r = hg.api_raw(&req);
        assert_eq!(r.status, *want, "Authorization {auth:?}: {}", r.describe());
        if *want == 403 {
            assert!(
                r.body.is_empty(),
                "403 must have an empty body: {}",
                r.describe()
            );
        }
    }
}

#[test]
fn unauthorised_post_and_delete_change_nothing() {
    let hg = hg();
    hg.add_route("/user/alice", "http://127.0.0.1:1");
    let r = hg.api_raw(&Req::post(
        "/api/routes/user/bob",
        r#"{"target":"http://127.0.0.1:2"}"#,
    ));
    assert_eq!(r.status, 403, "{}", r.describe());
    assert!(r.body.is_empty());
    let r = hg.api_raw(
        &Req::new("DELETE", "/api/routes/user/alice").header("Authorization", "Bearer secret"),
    );
    assert_eq!(r.status, 403, "{}", r.describe());
    assert!(r.body.is_empty());
    let r = hg.api_raw(&Req::get("/api/routes/user/alice"));
    assert_eq!(r.status, 403, "{}", r.describe());
    assert_eq!(keys(&hg.routes()), vec!["/user/alice"]);
}

#[test]
fn other_methods_are_405_even_without_token() {
    let hg = hg();
    for path in ["/api/routes", "/api/routes/user/alice"] {
        for method in ["PUT", "PATCH", "HEAD", "OPTIONS"] {
            for authed in [false, true] {
                let mut req = Req::new(method, path);
                if method == "PUT" || method == "PATCH" {
                    req = req.body(r#"{"target":"http://127.0.0.1:1"}"#);
                }
                if authed {
                    req = hg.authorize(req);
                }
                let r = hg.api_raw(&req);
                assert_eq!(
                    r.status,
                    405,
                    "{method} {path} (token: {authed}): {}",
                    r.describe()
                );
                if method != "HEAD" {
                    assert_eq!(r.text(), "Method not supported", "{method} {path}");
                }
            }
        }
    }
    assert!(hg.routes().is_empty());
}

#[test]
fn paths_outside_api_routes_are_404() {
    let hg = hg();
    for path in [
        "/api",
        "/api/",
        "/",
        "/api/routesX",
        "/apiroutes",
        "/api/route",
        "/x/api/routes",
    ] {
        for authed in [false, true] {
            let mut req = Req::get(path);
            if authed {
                req = hg.authorize(req);
            }
            let r = hg.api_raw(&req);
            assert_eq!(
                r.status,
                404,
                "GET {path} (token: {authed}): {}",
                r.describe()
            );
            assert_eq!(r.text(), "Not Found", "GET {path}");
        }
    }
}

#[test]
fn inactive_since_filters_routes() {
    let hg = hg();
    hg.add_route("/a", "http://127.0.0.1:1");
    std::thread::sleep(Duration::from_millis(30));
    let mid = iso_from_now(0);
    std::thread::sleep(Duration::from_millis(30));
    hg.add_route("/b", "http://127.0.0.1:1");

    let get = |q: &str| {
        let r = hg.api_get(&format!("/api/routes?{q}"));
        assert_eq!(r.status, 200, "?{q}: {}", r.describe());
        let v = r.json();
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    let future = iso_from_now(3_600_000);
    let past = iso_from_now(-3_600_000);
    assert_eq!(get(&format!("inactive_since={future}")), vec!["/a", "/b"]);
    assert_eq!(get(&format!("inactiveSince={future}")), vec!["/a", "/b"]);
    assert_eq!(get(&format!("inactive_since={past}")), Vec::<String>::new());
    assert_eq!(get(&format!("inactiveSince={past}")), Vec::<String>::new());
    assert_eq!(get(&format!("inactive_since={mid}")), vec!["/a"]);
    assert_eq!(get(&format!("inactiveSince={mid}")), vec!["/a"]);
    // Query values are percent-decoded.
    assert_eq!(
        get("inactive_since=2020-01-01T00%3A00%3A00.000Z"),
        Vec::<String>::new()
    );
    // Also on the trailing-slash form.
    let r = hg.api_get(&format!("/api/routes/?inactive_since={mid}"));
    assert_eq!(r.status, 200);
    assert_eq!(r.json().as_object().unwrap().len(), 1, "{}", r.describe());
}

#[test]
fn inactive_since_rejects_non_iso_values() {
    let hg = hg();
    hg.add_route("/a", "http://127.0.0.1:1");
    let r = hg.api_get("/api/routes?inactive_since=xyz");
    assert_eq!(r.status, 400, "{}", r.describe());
    assert_eq!(r.text(), "Invalid datestamp 'xyz' must be ISO8601.");
    let r = hg.api_get("/api/routes?inactiveSince=xyz");
    assert_eq!(r.status, 400, "{}", r.describe());
    assert_eq!(r.text(), "Invalid datestamp 'xyz' must be ISO8601.");
    // A bare epoch is rejected (as Date.parse does).
    let r = hg.api_get("/api/routes?inactive_since=1700000000");
    assert_eq!(r.status, 400, "{}", r.describe());
    assert_eq!(r.text(), "Invalid datestamp '1700000000' must be ISO8601.");
}

#[test]
fn body_over_size_limit_is_413() {
    let hg = hg();
    // A valid JSON body of 20 MiB.
    let mut body = br#"{"target":"http://127.0.0.1:1","pad":""#.to_vec();
    body.extend(std::iter::repeat_n(b'a', 20 * 1024 * 1024));
    body.extend_from_slice(br#""}"#);
    let req = hg.authorize(Req::post("/api/routes/user/big", &body));
    let bytes = req.to_bytes(&format!("127.0.0.1:{}", hg.api_port));
    // Write from another thread: the server may answer before reading everything.
    let sock = std::net::TcpStream::connect(("127.0.0.1", hg.api_port)).unwrap();
    let mut writer = sock.try_clone().unwrap();
    let t = std::thread::spawn(move || {
        use std::io::Write;
        let _ = writer.write_all(&bytes);
    });
    let mut reader = Conn::wrap(Box::new(sock.try_clone().unwrap()), sock, "127.0.0.1");
    reader.set_read_timeout(Duration::from_secs(30));
    let r = reader
        .read_response(false)
        .expect("a response to a 20 MiB POST");
    assert_eq!(r.status, 413, "{}", r.describe());
    drop(reader);
    let _ = t.join();
    assert!(hg.route("/user/big").is_none());
    // Still serving.
    assert_eq!(hg.api_get("/api/routes").status, 200);
}

#[test]
fn no_token_configured_means_open_api() {
    for hg in [
        Hubgate::builder().no_token().start(),
        Hubgate::builder().token("").start(),
    ] {
        let r = hg.api_raw(&Req::post(
            "/api/routes/user/alice",
            r#"{"target":"http://127.0.0.1:1"}"#,
        ));
        assert_eq!(r.status, 201, "{}", r.describe());
        let r = hg.api_raw(&Req::get("/api/routes"));
        assert_eq!(r.status, 200, "{}", r.describe());
        assert_eq!(r.json()["/user/alice"]["target"], "http://127.0.0.1:1");
        // Any Authorization header is fine too.
        let r = hg.api_raw(&Req::get("/api/routes").header("Authorization", "token whatever"));
        assert_eq!(r.status, 200, "{}", r.describe());
        let r = hg.api_raw(&Req::new("DELETE", "/api/routes/user/alice"));
        assert_eq!(r.status, 204, "{}", r.describe());
    }
}

#[test]
fn default_target_is_an_ordinary_root_route() {
    let hg = Hubgate::start(&["--default-target", "http://127.0.0.1:9/hub"], &[]);
    let all = hg.routes();
    assert_eq!(keys(&all), vec!["/"], "{all:?}");
    assert_eq!(all["/"]["target"], "http://127.0.0.1:9/hub");
    assert!(
        is_js_iso(all["/"]["last_activity"].as_str().unwrap_or("")),
        "{all:?}"
    );
    // It can be replaced and deleted like any other route.
    let r = hg.api_delete("/api/routes/");
    assert_eq!(r.status, 204, "{}", r.describe());
    assert!(hg.routes().is_empty());
}

#[test]
fn host_routing_adds_host_field() {
    let hg = Hubgate::start(&["--host-routing"], &[]);
    hg.add_route("/alice.example.org/user/alice", "http://127.0.0.1:1");
    hg.add_route("/", "http://127.0.0.1:2");
    let v = hg.route("/alice.example.org/user/alice").unwrap();
    assert_eq!(v["host"], "alice.example.org", "{v}");
    let all = hg.routes();
    assert!(
        all["/"].get("host").is_none(),
        "root route has no host: {all:?}"
    );
}

#[test]
fn api_keeps_the_connection_alive() {
    let hg = hg();
    let mut c = hg.api_conn();
    for i in 0..5 {
        let r = c
            .request(&hg.authorize(Req::post(
                &format!("/api/routes/u{i}"),
                r#"{"target":"http://127.0.0.1:1"}"#,
            )))
            .unwrap();
        assert_eq!(r.status, 201);
        let r = c
            .request(&hg.authorize(Req::get(&format!("/api/routes/u{i}"))))
            .unwrap();
        assert_eq!(r.status, 200);
        let r = c.request(&Req::get("/api/routes")).unwrap();
        assert_eq!(r.status, 403);
    }
    assert_eq!(hg.routes().len(), 5);
}

#[test]
fn body_limit_is_configurable() {
    // hubgate's own `[api] max-body-bytes`.
    let dir = TempDir::new("api-limit");
    let cfg = dir.write("hubgate.toml", "[api]\nmax-body-bytes = 1024\n");
    let hg = Hubgate::start(&["--config", &cfg.to_string_lossy()], &[]);
    let small = r#"{"target":"http://127.0.0.1:1"}"#;
    assert_eq!(hg.api_post("/api/routes/small", small).status, 201);
    let big = format!(
        r#"{{"target":"http://127.0.0.1:1","pad":"{}"}}"#,
        "a".repeat(2048)
    );
    let r = hg.api_post("/api/routes/big", &big);
    assert_eq!(r.status, 413, "{}", r.describe());
    assert!(hg.route("/big").is_none());
}
