//! Bearer extraction from `Authorization` (`hubgate::auth::bearer_token`) and the token
//! inspection before signature checks (`hubgate::fuzzing::inspect`).
#![no_main]

use hubgate::auth::MAX_TOKEN_BYTES;
use hubgate::fuzzing::{bearer_token, inspect};
use libfuzzer_sys::fuzz_target;

fn check_inspect(token: &str) {
    if let Ok(u) = inspect(token) {
        assert!(token.len() <= MAX_TOKEN_BYTES);
        assert_eq!(token.split('.').count(), 3);
        assert!(!u.kid.is_empty() && u.kid.len() <= 256);
    }
}

fuzz_target!(|value: &[u8]| {
    if let Ok(Some(token)) = bearer_token(value) {
        assert!(!token.is_empty());
        assert!(!token.contains([',', ' ']), "one token only: {token:?}");
        assert!(token
            .bytes()
            .all(|b| b == b'\t' || (0x20..0x7f).contains(&b)));
        let start = token.as_ptr() as usize - value.as_ptr() as usize;
        assert!(start >= 7 && start + token.len() <= value.len());
        check_inspect(token);
    }
    if let Ok(s) = std::str::from_utf8(value) {
        check_inspect(s);
    }
});
