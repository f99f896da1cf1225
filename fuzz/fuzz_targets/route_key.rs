//! Route keys from the API path (`hubgate::fuzzing::route_path`, `post_key`,
//! `hubgate::routes::trim_prefix`), and that a route posted under a key is found there.
#![no_main]

use std::sync::Arc;

use hubgate::fuzzing::{post_key, route_path};
use hubgate::routes::{trim_prefix, Route, RouteTable};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|rest: &str| {
    let Ok(path) = route_path(rest) else {
        return;
    };
    if rest.is_empty() {
        assert!(path.is_none());
    }
    let key = post_key(path.as_deref());
    assert!(key.starts_with('/'), "key {key:?} has no leading slash");
    let once = trim_prefix(&key);
    assert!(once.starts_with('/'));
    assert!(once.len() <= key.len());
    if key == "/" || !key.ends_with('/') {
        assert_eq!(once, key, "trim_prefix moved a clean key");
    }

    let mut data = serde_json::Map::new();
    data.insert("target".into(), "http://127.0.0.1:8888".into());
    let table = RouteTable::new();
    table.insert(Arc::new(Route::new(Arc::from(key.as_str()), data)));
    assert!(
        table.get(&key).is_some(),
        "stored route {key:?} not found by key"
    );
    // A request for the key itself, and for anything under it, goes to the route.
    let found = table.lookup(&key).expect("route matches its own key");
    assert_eq!(&*found.route.key, key.as_str());
    assert!(found.prefix_len <= key.len());
    let below = format!("{}/below", key.trim_end_matches('/'));
    assert!(
        table.lookup(&below).is_some(),
        "{below:?} not under {key:?}"
    );
});
