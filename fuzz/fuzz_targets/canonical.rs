//! Request-target splitting and path canonicalisation (`hubgate::canonical`).
#![no_main]

use hubgate::canonical::{canonicalize, decode, split_target};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (path, query) = split_target(data);
    assert!(!path.contains(&b'#') && !path.contains(&b'?'));
    if let Some(q) = query {
        assert!(!q.contains(&b'#'));
    }
    let Ok(canon) = canonicalize(path) else {
        return;
    };
    // `decoded` is exactly `forward` percent-decoded: routing and forwarding agree.
    assert_eq!(
        decode(&canon.forward).ok().as_deref(),
        Some(&*canon.decoded),
        "decoded differs from decode(forward) for {path:?}"
    );
    // The forwarded path is re-escaped: visible ASCII only, none of the bytes the URL
    // standard escapes in paths.
    assert!(
        canon
            .forward
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"\"<>`{}#?".contains(&b)),
        "unescaped byte in forward path {:?}",
        canon.forward
    );
    // Canonicalising a canonical path changes nothing.
    let again = canonicalize(canon.forward.as_bytes()).expect("a canonical path canonicalises");
    assert_eq!(again.forward, canon.forward, "not idempotent for {path:?}");
    assert_eq!(again.decoded, canon.decoded);
});
