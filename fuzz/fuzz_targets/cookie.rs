//! `Cookie` parsing: values (`hubgate::fuzzing::cookie_value`), stripping hubgate's own cookies
//! before a request goes upstream (`strip_own_cookies`), and reading session cookies
//! (`CookieKey::read_session`, which must accept nothing it did not sign).
#![no_main]

use hubgate::auth::{LOGIN_COOKIE, SESSION_COOKIE};
use hubgate::fuzzing::{cookie_value, strip_own_cookies, CookieKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &str| {
    let headers: Vec<&str> = input.split('\n').collect();
    let key = CookieKey::new(b"fuzzing-secret-fuzzing-secret-32");
    for name in [SESSION_COOKIE, LOGIN_COOKIE, "other"] {
        for value in cookie_value(headers.iter().copied(), name) {
            assert_eq!(value, value.trim());
            assert!(
                key.read_session(value).is_none(),
                "unsigned session accepted"
            );
            assert!(
                key.read_login(value).is_none(),
                "unsigned login state accepted"
            );
        }
    }
    for header in &headers {
        let Some(kept) = strip_own_cookies(header) else {
            continue;
        };
        assert!(!kept.is_empty());
        for own in [SESSION_COOKIE, LOGIN_COOKIE] {
            assert!(
                cookie_value(std::iter::once(kept.as_str()), own).is_empty(),
                "{own} survives stripping of {header:?}"
            );
        }
        // Other cookies pass through unchanged, and stripping again changes nothing.
        assert_eq!(
            cookie_value(std::iter::once(kept.as_str()), "other"),
            cookie_value(std::iter::once(*header), "other")
        );
        assert_eq!(strip_own_cookies(&kept).as_deref(), Some(kept.as_str()));
    }
});
