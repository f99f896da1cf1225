//! Route matching on the data plane (docs/chp-compatibility.md, routing): the
//! segment-prefix trie on the decoded, dot-resolved path, and host routing.

use crate::support::*;
use std::time::{Duration, Instant};

/// Sends `req` through the proxy, asserts 200 and that exactly one of `backends`
/// received it; returns that backend's name and what it received.
fn hit(hg: &Hubgate, req: &Req, backends: &[(&str, &Backend)]) -> (String, Recorded) {
    for (_, b) in backends {
        b.clear();
    }
    let r = hg.request(req);
    assert_eq!(
        r.status,
        200,
        "{} {}: {}",
        req.method,
        req.target,
        r.describe()
    );
    let got: Vec<(&str, Recorded)> = backends
        .iter()
        .filter_map(|(n, b)| b.last().map(|rec| (*n, rec)))
        .collect();
    assert_eq!(
        got.len(),
        1,
        "{}: expected exactly one backend hit, got {:?}",
        req.target,
        got.iter().map(|g| g.0).collect::<Vec<_>>()
    );
    for (_, b) in backends {
        assert!(b.count() <= 1);
    }
    let (n, rec) = got.into_iter().next().unwrap();
    (n.to_string(), rec)
}

fn hit_path(hg: &Hubgate, path: &str, backends: &[(&str, &Backend)]) -> (String, Recorded) {
    hit(hg, &Req::get(path), backends)
}

#[test]
fn longest_whole_segment_prefix_wins() {
    let hg = Hubgate::start(&[], &[]);
    let (r, u, a, l) = (
        Backend::echo(),
        Backend::echo(),
        Backend::echo(),
        Backend::echo(),
    );
    hg.add_route("/", &r.url());
    hg.add_route("/user", &u.url());
    hg.add_route("/user/alice", &a.url());
    hg.add_route("/user/alice/lab", &l.url());
    let bs = [("root", &r), ("user", &u), ("alice", &a), ("lab", &l)];
    for (path, want) in [
        ("/", "root"),
        ("/other", "root"),
        ("/userx", "root"),
        ("/user", "user"),
        ("/user/", "user"),
        ("/user/bob", "user"),
        ("/user/alicex/foo", "user"),
        ("/user/alice", "alice"),
        ("/user/alice/", "alice"),
        ("/user/alice/x", "alice"),
        ("/user/alice/labx", "alice"),
        ("/user/alice/lab", "lab"),
        ("/user/alice/lab/", "lab"),
        ("/user/alice/lab/tree/a.ipynb", "lab"),
    ] {
        let (got, rec) = hit_path(&hg, path, &bs);
        assert_eq!(got, want, "{path}");
        assert_eq!(rec.target, path, "{path} must be forwarded unchanged");
    }
}

#[test]
fn matching_is_case_sensitive_and_empty_segments_count() {
    let hg = Hubgate::start(&[], &[]);
    let (r, a) = (Backend::echo(), Backend::echo());
    hg.add_route("/", &r.url());
    hg.add_route("/user/alice", &a.url());
    let bs = [("root", &r), ("alice", &a)];
    for (path, want) in [
        ("/user/alice/foo", "alice"),
        ("/user/ALICE/foo", "root"),
        ("/User/alice/foo", "root"),
        ("/user//alice/foo", "root"),
        ("/user/alicex/foo", "root"),
    ] {
        let (got, rec) = hit_path(&hg, path, &bs);
        assert_eq!(got, want, "{path}");
        assert_eq!(rec.target, path);
    }
}

#[test]
fn percent_escapes_match_the_decoded_route_and_are_forwarded_raw() {
    let hg = Hubgate::start(&[], &[]);
    let (r, a, b, h) = (
        Backend::echo(),
        Backend::echo(),
        Backend::echo(),
        Backend::echo(),
    );
    hg.add_route("/", &r.url());
    hg.add_route("/user/alice", &a.url());
    hg.add_route("/user/b%40r", &b.url()); // key /user/b@r
    hg.add_route("/user/%E7%A7%80%E6%A8%B9", &h.url()); // key /user/秀樹
    let bs = [("root", &r), ("alice", &a), ("b@r", &b), ("hideki", &h)];
    for (path, want) in [
        ("/user/%61lice/foo", "alice"),
        ("/user/%61lice", "alice"),
        ("/user/%61LICE/foo", "root"),
        ("/user/b%40r/x", "b@r"),
        ("/user/b@r/x", "b@r"),
        ("/user/b%40r", "b@r"),
        ("/user/%E7%A7%80%E6%A8%B9/tree?x=%20", "hideki"),
        // The lookup path is decoded before it is split into segments (CHP).
        ("/user/alice%2Fx", "alice"),
    ] {
        let (got, rec) = hit_path(&hg, path, &bs);
        assert_eq!(got, want, "{path}");
        assert_eq!(rec.target, path, "{path} must be forwarded raw");
    }
}

#[test]
fn dot_segments_are_resolved_for_matching_and_forwarding() {
    let hg = Hubgate::start(&[], &[]);
    let (r, a, b) = (Backend::echo(), Backend::echo(), Backend::echo());
    hg.add_route("/", &r.url());
    hg.add_route("/user/alice", &a.url());
    hg.add_route("/user/bob", &b.url());
    let bs = [("root", &r), ("alice", &a), ("bob", &b)];
    for (path, want, forwarded) in [
        ("/user/bob/../alice/x", "alice", "/user/alice/x"),
        ("/user/alice/./x", "alice", "/user/alice/x"),
        ("/user/bob/./../alice/x?q=1", "alice", "/user/alice/x?q=1"),
        ("/user/alice/x/../../bob/y", "bob", "/user/bob/y"),
        ("/user/alice/..", "root", "/user/"),
        ("/user/alice/../../../../etc", "root", "/etc"),
        ("/user/bob/%2e%2e/alice/x", "alice", "/user/alice/x"),
    ] {
        let (got, rec) = hit_path(&hg, path, &bs);
        assert_eq!(got, want, "{path}");
        assert_eq!(rec.target, forwarded, "{path}");
    }
}

#[test]
fn query_string_is_ignored_for_matching() {
    let hg = Hubgate::start(&[], &[]);
    let (a, b) = (Backend::echo(), Backend::echo());
    hg.add_route("/user/alice", &a.url());
    hg.add_route("/user/bob", &b.url());
    let bs = [("alice", &a), ("bob", &b)];
    for (path, want) in [
        ("/user/alice?next=/user/bob", "alice"),
        ("/user/alice/?x=1&y=/user/bob/z", "alice"),
        ("/user/bob/tree?a=%2F..%2Falice", "bob"),
    ] {
        let (got, rec) = hit_path(&hg, path, &bs);
        assert_eq!(got, want, "{path}");
        assert_eq!(rec.target, path);
    }
}

#[test]
fn root_route_is_the_fallback_and_no_route_is_404() {
    let hg = Hubgate::start(&[], &[]);
    let (r, a) = (Backend::echo(), Backend::echo());
    hg.add_route("/user/alice", &a.url());
    let resp = hg.get("/user/bob/x");
    assert_eq!(resp.status, 404, "{}", resp.describe());
    let resp = hg.get("/");
    assert_eq!(resp.status, 404, "{}", resp.describe());
    assert_eq!(
        a.count(),
        0,
        "no backend may be called for an unrouted path"
    );
    hg.add_route("/", &r.url());
    let (got, _) = hit_path(&hg, "/user/bob/x", &[("root", &r), ("alice", &a)]);
    assert_eq!(got, "root");
}

#[test]
fn invalid_percent_escape_is_500() {
    let hg = Hubgate::start(&[], &[]);
    let r = Backend::echo();
    hg.add_route("/", &r.url());
    for path in ["/%", "/user/alice/%zz", "/%E0%A4%A"] {
        let resp = hg.get(path);
        assert_eq!(resp.status, 500, "{path}: {}", resp.describe());
    }
    assert_eq!(
        r.count(),
        0,
        "the backend must not be called for a bad escape"
    );
}

#[test]
fn route_changes_take_effect_on_the_very_next_request() {
    let hg = Hubgate::start(&[], &[]);
    let (a, b) = (Backend::echo(), Backend::echo());
    // One client keep-alive connection across all changes.
    let mut c = hg.proxy_conn();
    let mut send = |path: &str| c.request(&Req::get(path)).expect("proxy request").status;
    assert_eq!(send("/user/alice/x"), 404);
    hg.add_route("/user/alice", &a.url());
    assert_eq!(send("/user/alice/x"), 200);
    assert_eq!((a.count(), b.count()), (1, 0));
    hg.add_route("/user/alice", &b.url());
    assert_eq!(send("/user/alice/x"), 200);
    assert_eq!((a.count(), b.count()), (1, 1));
    hg.add_route("/user/alice/lab", &a.url());
    assert_eq!(send("/user/alice/lab/x"), 200);
    assert_eq!((a.count(), b.count()), (2, 1));
    hg.delete_route("/user/alice/lab");
    assert_eq!(send("/user/alice/lab/x"), 200);
    assert_eq!((a.count(), b.count()), (2, 2));
    hg.delete_route("/user/alice");
    assert_eq!(send("/user/alice/x"), 404);
    assert_eq!((a.count(), b.count()), (2, 2));
}

/// 100,000 routes in a release build; 20,000 in a debug build, where 100,000
/// POSTs take ~45 s on 2 cores (`HUBGATE_TEST_ROUTES` overrides).
#[test]
fn lookup_works_with_many_routes() {
    let default_n = if cfg!(debug_assertions) {
        20_000
    } else {
        100_000
    };
    let n: usize = std::env::var("HUBGATE_TEST_ROUTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_n);
    assert!(n >= 100);
    let hg = Hubgate::start(&[], &[]);
    let (a, z) = (Backend::echo(), Backend::echo());
    let t0 = Instant::now();
    let mut c = hg.api_conn();
    let auth = format!("token {TOKEN}");
    let host = c.host.clone();
    let a_body = format!(r#"{{"target":"{}","user":"u"}}"#, a.url());
    let z_body = format!(r#"{{"target":"{}","user":"u"}}"#, z.url());
    let tenth = n / 10;
    let mut mark = t0;
    let mut first_decile = Duration::ZERO;
    for i in 0..n {
        if i == tenth {
            first_decile = mark.elapsed();
        }
        if i == n - tenth {
            mark = Instant::now();
        }
        let body = if i == n - 1 { &z_body } else { &a_body };
        let raw = format!(
            "POST /api/routes/user/u{i} HTTP/1.1\r\nHost: {host}\r\nAuthorization: {auth}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        c.send_raw(raw.as_bytes()).unwrap();
        let r = c
            .read_response(false)
            .unwrap_or_else(|e| panic!("POST #{i}: {e}"));
        assert_eq!(r.status, 201, "POST #{i}: {}", r.describe());
    }
    let last_decile = mark.elapsed();
    let post_time = t0.elapsed();
    eprintln!(
        "{n} routes POSTed over one keep-alive connection in {post_time:?} ({:.0}/s)",
        n as f64 / post_time.as_secs_f64()
    );
    eprintln!("first 10% of POSTs: {first_decile:?}, last 10%: {last_decile:?}");
    assert!(
        last_decile < first_decile * 3 + Duration::from_millis(200),
        "adding a route slows down with the table size: first 10% {first_decile:?}, last 10% {last_decile:?}"
    );
    // Lookups.
    let t1 = Instant::now();
    let (got, rec) = hit_path(
        &hg,
        &format!("/user/u{}/lab", n - 1),
        &[("a", &a), ("z", &z)],
    );
    assert_eq!(got, "z");
    assert_eq!(rec.target, format!("/user/u{}/lab", n - 1));
    let (got, _) = hit_path(&hg, "/user/u0/tree", &[("a", &a), ("z", &z)]);
    assert_eq!(got, "a");
    let (got, _) = hit_path(&hg, &format!("/user/u{}", n / 2), &[("a", &a), ("z", &z)]);
    assert_eq!(got, "a");
    let resp = hg.get(&format!("/user/u{n}/x"));
    assert_eq!(resp.status, 404);
    let resp = hg.get(&format!("/user/u{}x/y", n - 1));
    assert_eq!(resp.status, 404);
    eprintln!("lookups took {:?}", t1.elapsed());
    // The whole table.
    let t2 = Instant::now();
    let all = hg.routes();
    assert_eq!(all.len(), n);
    eprintln!("GET /api/routes with {n} routes took {:?}", t2.elapsed());
    assert!(
        t0.elapsed() < Duration::from_secs(120),
        "too slow: {:?}",
        t0.elapsed()
    );
}

#[test]
fn host_routing_uses_the_host_as_first_segment() {
    let hg = Hubgate::start(&["--host-routing"], &[]);
    let (r, a, al) = (Backend::echo(), Backend::echo(), Backend::echo());
    hg.add_route("/", &r.url());
    hg.add_route("/alice.example.org", &a.url());
    hg.add_route("/alice.example.org/user/alice", &al.url());
    let bs = [("root", &r), ("alice-host", &a), ("alice-user", &al)];
    for (host, path, want) in [
        ("alice.example.org", "/", "alice-host"),
        ("alice.example.org", "/tree/x", "alice-host"),
        ("alice.example.org:8443", "/tree/x", "alice-host"),
        ("alice.example.org", "/user/alice/lab?x=1", "alice-user"),
        ("alice.example.org:443", "/user/alice/lab", "alice-user"),
        ("bob.example.org", "/user/alice/lab", "root"),
        // CHP does not lower-case the host.
        ("ALICE.example.org", "/tree/x", "root"),
        ("Alice.Example.Org:8443", "/user/alice", "root"),
    ] {
        let (got, rec) = hit(&hg, &Req::get(path).host(host), &bs);
        assert_eq!(got, want, "Host {host} {path}");
        assert_eq!(
            rec.target, path,
            "Host {host}: the forwarded path excludes the host"
        );
        assert_eq!(
            rec.header("host").as_deref(),
            Some(host),
            "Host header passed through"
        );
    }
    // The path alone is not a route in host-routing mode.
    let (got, _) = hit(
        &hg,
        &Req::get("/alice.example.org/x").host("other.org"),
        &bs,
    );
    assert_eq!(got, "root");
}
