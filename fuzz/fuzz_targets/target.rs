//! Route-target parsing (`hubgate::net::Target::parse`).
#![no_main]

use hubgate::net::{Target, TargetAddr};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|s: &str| {
    let Ok(t) = Target::parse(s) else {
        return;
    };
    assert!(t.path.starts_with('/'), "path {:?}", t.path);
    assert!(!t.path.contains(['?', '#']));
    assert!(!t.query.contains('#'));
    assert!(!t.host_header.is_empty(), "empty Host for {s:?}");
    match &t.addr {
        TargetAddr::Unix(_) => assert!(t.sni.is_empty() && !t.tls),
        TargetAddr::Name { host, .. } => {
            assert!(!host.is_empty());
            assert!(!t.host_header.contains('@'), "userinfo in Host for {s:?}");
        }
        TargetAddr::Ip(_) => assert!(!t.host_header.contains('@')),
    }
    // What the parser kept describes the same target when parsed again.
    let scheme = match (&t.addr, t.tls) {
        (TargetAddr::Unix(_), _) => "http+unix",
        (_, true) => "https",
        (_, false) => "http",
    };
    let query = if t.query.is_empty() && !s.contains('?') {
        String::new()
    } else {
        format!("?{}", t.query)
    };
    let again = format!("{scheme}://{}{}{query}", t.host_header, t.path);
    let reparsed = Target::parse(&again).expect("a parsed target re-parses");
    assert_eq!(reparsed, t, "{s:?} and {again:?} differ");
});
