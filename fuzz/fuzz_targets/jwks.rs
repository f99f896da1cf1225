//! JWKS documents (`hubgate::auth::parse_key_set`).
#![no_main]

use hubgate::fuzzing::parse_key_set;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|doc: &[u8]| {
    let Ok((keys, skipped)) = parse_key_set(doc) else {
        return;
    };
    let listed: serde_json::Value = serde_json::from_slice(doc).expect("parsed once");
    let n = listed["keys"].as_array().expect("a keys array").len();
    // Every JWK is either kept (kids can repeat) or counted as skipped.
    assert!(keys.len() + skipped <= n);
    assert!(skipped <= n);
    for (kid, key) in &keys {
        assert!(!key.algorithms.is_empty(), "key {kid:?} without algorithms");
        // Never a shared-secret algorithm: that would let anyone holding the public key sign.
        assert!(key
            .algorithms
            .iter()
            .all(|a| !format!("{a:?}").starts_with("HS")));
    }
});
