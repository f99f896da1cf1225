//! The JSON body of `POST /api/routes` (`hubgate::fuzzing::parse_body`, `route_data`) and the
//! route built from it (`hubgate::routes::Route`): the stored JSON and target read back as
//! posted.
#![no_main]

use std::sync::Arc;

use hubgate::fuzzing::{parse_body, route_data};
use hubgate::routes::Route;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let value = match parse_body(body) {
        Ok(v) => v,
        Err(why) => {
            assert!(why.starts_with("Body not valid JSON: SyntaxError: "));
            return;
        }
    };
    let Ok(data) = route_data(value) else {
        return;
    };
    let target = data["target"]
        .as_str()
        .expect("route_data keeps a string target");
    let route = Route::new(Arc::from("/fuzz"), data.clone());
    assert_eq!(route.target_str(), target, "target not kept as posted");
    assert_eq!(
        route.user.as_deref(),
        data.get("user").and_then(|u| u.as_str())
    );

    let mut out = String::new();
    route.write_json(&mut out);
    let listed: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("listed JSON {out:?}: {e}"));
    let mut listed = match listed {
        serde_json::Value::Object(m) => m,
        other => panic!("listed route is not an object: {other}"),
    };
    assert!(listed
        .remove("last_activity")
        .is_some_and(|v| v.is_string()));
    let mut posted = data;
    posted.remove("last_activity");
    assert_eq!(listed, posted, "listed route differs from the posted data");
});
