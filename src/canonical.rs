//! The one canonical form of a request path.
//!
//! Routing (and later authorisation) decides on `decoded`, and the URL sent upstream is built
//! from `forward`: both come from the same dot-segment resolution, so a request can never be
//! matched as one path and forwarded as another. This follows what CHP does through node's
//! WHATWG URL parser: `.`/`..` (also `%2e` forms) resolved, `\` taken as `/`, characters the
//! URL standard escapes in paths re-escaped, escapes that were sent kept as sent.

use std::borrow::Cow;

use percent_encoding::percent_decode;
use thiserror::Error;

/// Why a request path cannot be routed (CHP answers these with 500).
#[derive(Debug, Clone, Copy, Error, PartialEq, Eq)]
pub enum PathError {
    /// A `%` not followed by two hex digits.
    #[error("bad percent-encoding in path")]
    BadEscape,
    /// The escapes decode to bytes that are not UTF-8.
    #[error("path does not decode to UTF-8")]
    NotUtf8,
}

/// A request path in its canonical forms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonicalPath<'a> {
    /// The path to forward: dot segments resolved, escapes kept as received.
    pub forward: Cow<'a, str>,
    /// `forward` percent-decoded: what routes are matched against.
    pub decoded: Cow<'a, str>,
}

/// Splits a request target into path and query (without `?`); drops any fragment.
pub fn split_target(target: &[u8]) -> (&[u8], Option<&[u8]>) {
    let target = match target.iter().position(|&b| b == b'#') {
        Some(i) => &target[..i],
        None => target,
    };
    let target = strip_absolute_form(target);
    match target.iter().position(|&b| b == b'?') {
        Some(i) => (&target[..i], Some(&target[i + 1..])),
        None => (target, None),
    }
}

/// `http://host/path` (absolute-form) → `/path`.
fn strip_absolute_form(target: &[u8]) -> &[u8] {
    for scheme in [&b"http://"[..], &b"https://"[..]] {
        if target.len() >= scheme.len() && target[..scheme.len()].eq_ignore_ascii_case(scheme) {
            let rest = &target[scheme.len()..];
            return match rest.iter().position(|&b| b == b'/' || b == b'?') {
                Some(i) if rest[i] == b'/' => &rest[i..],
                _ => b"/",
            };
        }
    }
    target
}

/// Canonicalises the path part of a request target.
pub fn canonicalize(path: &[u8]) -> Result<CanonicalPath<'_>, PathError> {
    let forward: Cow<'_, str> = if needs_rewrite(path) {
        Cow::Owned(rewrite(path))
    } else {
        // `needs_rewrite` is false only for printable ASCII, so this cannot fail.
        match std::str::from_utf8(path) {
            Ok(s) if !s.is_empty() => Cow::Borrowed(s),
            _ => Cow::Owned(rewrite(path)),
        }
    };
    let decoded = decode(&forward)?;
    let decoded = match (decoded, &forward) {
        (Cow::Borrowed(_), Cow::Borrowed(f)) => Cow::Borrowed(*f),
        (d, _) => Cow::Owned(d.into_owned()),
    };
    Ok(CanonicalPath { forward, decoded })
}

/// Whether the decoded path has `.` or `..` segments that only appeared through escapes
/// (`%2e%2e%2f`, `..%2f`, `%5c..`): a target that decodes before resolving would climb out
/// of the matched prefix, so such requests are refused when authorisation depends on the path.
pub fn has_encoded_dot_segments(decoded: &str) -> bool {
    decoded
        .split(['/', '\\'])
        .any(|seg| seg == "." || seg == "..")
}

/// Percent-decodes a path, strictly (bad escapes and non-UTF-8 are errors, as in JS's
/// `decodeURIComponent`).
pub fn decode(s: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = s.as_bytes();
    let Some(first) = bytes.iter().position(|&b| b == b'%') else {
        return Ok(Cow::Borrowed(s));
    };
    let mut i = first;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            if i + 2 >= bytes.len() {
                return Err(PathError::BadEscape);
            }
            if !(bytes[i + 1].is_ascii_hexdigit() && bytes[i + 2].is_ascii_hexdigit()) {
                return Err(PathError::BadEscape);
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    percent_decode(bytes)
        .decode_utf8()
        .map(|c| Cow::Owned(c.into_owned()))
        .map_err(|_| PathError::NotUtf8)
}

/// Whether a byte is escaped by the URL standard's path percent-encode set.
fn must_escape(b: u8) -> bool {
    b <= 0x20 || b >= 0x7f || matches!(b, b'"' | b'#' | b'<' | b'>' | b'?' | b'`' | b'{' | b'}')
}

fn is_dot(seg: &[u8]) -> bool {
    seg == b"." || seg.eq_ignore_ascii_case(b"%2e")
}

fn is_dotdot(seg: &[u8]) -> bool {
    matches!(seg.len(), 2 | 4 | 6)
        && (seg == b".."
            || seg.eq_ignore_ascii_case(b".%2e")
            || seg.eq_ignore_ascii_case(b"%2e.")
            || seg.eq_ignore_ascii_case(b"%2e%2e"))
}

fn needs_rewrite(path: &[u8]) -> bool {
    if path.first() != Some(&b'/') || path.starts_with(b"//") {
        return true;
    }
    path.split(|&b| b == b'/')
        .any(|seg| is_dot(seg) || is_dotdot(seg))
        || path.iter().any(|&b| must_escape(b) || b == b'\\')
}

fn rewrite(path: &[u8]) -> String {
    let mut segments: Vec<&[u8]> = Vec::new();
    // Treat `\` as `/`, as the URL standard does for http(s).
    let normalised: Vec<u8>;
    let path = if path.contains(&b'\\') {
        normalised = path
            .iter()
            .map(|&b| if b == b'\\' { b'/' } else { b })
            .collect();
        &normalised[..]
    } else {
        path
    };
    // Leading slashes collapse to one: the router ignores them, so the decision and the
    // forwarded path must too (`//user/bob` is `/user/bob`, not a path the policy misses).
    let start = path.iter().position(|&b| b != b'/').unwrap_or(path.len());
    let body = &path[start..];
    let parts: Vec<&[u8]> = body.split(|&b| b == b'/').collect();
    let last = parts.len().saturating_sub(1);
    for (i, seg) in parts.iter().enumerate() {
        if is_dotdot(seg) {
            segments.pop();
            if i == last {
                segments.push(b"");
            }
        } else if is_dot(seg) {
            if i == last {
                segments.push(b"");
            }
        } else if seg.is_empty() && segments.is_empty() && i != last {
            // `..` climbed back to the root and left an empty segment behind (`/x/..//y`):
            // dropping it keeps the result free of leading `//`, as the collapse above does,
            // so canonicalising a canonical path changes nothing (found by fuzzing).
        } else {
            segments.push(seg);
        }
    }
    let mut out = String::with_capacity(path.len() + 8);
    for seg in segments {
        out.push('/');
        for &b in seg {
            if must_escape(b) {
                out.push('%');
                out.push(char::from(HEX[(b >> 4) as usize]));
                out.push(char::from(HEX[(b & 0xf) as usize]));
            } else {
                out.push(char::from(b));
            }
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(p: &str) -> (String, String) {
        let c = canonicalize(p.as_bytes()).unwrap();
        (c.forward.into_owned(), c.decoded.into_owned())
    }

    #[test]
    fn plain_paths_borrow() {
        let c = canonicalize(b"/user/alice/lab").unwrap();
        assert!(matches!(c.forward, Cow::Borrowed(_)));
        assert!(matches!(c.decoded, Cow::Borrowed(_)));
    }

    #[test]
    fn escapes_kept_for_forwarding_decoded_for_matching() {
        assert_eq!(
            canon("/user/%61lice/foo"),
            ("/user/%61lice/foo".into(), "/user/alice/foo".into())
        );
        assert_eq!(
            canon("/b%40r/b%20r/rest"),
            ("/b%40r/b%20r/rest".into(), "/b@r/b r/rest".into())
        );
        assert_eq!(
            canon("/user/%E7%A7%80"),
            ("/user/%E7%A7%80".into(), "/user/秀".into())
        );
    }

    #[test]
    fn dot_segments_resolved_in_both() {
        assert_eq!(canon("/user/bob/../alice/x").0, "/user/alice/x");
        assert_eq!(canon("/user/bob/%2e%2E/alice/x").0, "/user/alice/x");
        assert_eq!(canon("/a/./b/.").0, "/a/b/");
        assert_eq!(canon("/a/b/..").0, "/a/");
        assert_eq!(canon("/../../etc").0, "/etc");
        assert_eq!(canon("/a\\..\\b").0, "/b");
        assert_eq!(canon("/a/..%2fb").0, "/a/..%2fb");
        assert_eq!(canon("//user/bob/").0, "/user/bob/");
        assert_eq!(canon("///x").0, "/x");
    }

    #[test]
    fn climbing_to_the_root_leaves_no_leading_double_slash() {
        // fuzz/regressions/canonical-not-idempotent: `//` was forwarded, then `/` on re-reading.
        for (p, want) in [
            ("/x/%2E%2e//", "/"),
            ("/x/..//y", "/y"),
            ("/a/../..//b", "/b"),
            ("/x/..///y/", "/y/"),
            ("/x/../", "/"),
            ("/a//../b", "/a/b"),
        ] {
            let (forward, _) = canon(p);
            assert_eq!(forward, want, "{p}");
            assert_eq!(canon(&forward).0, forward, "not idempotent for {p}");
        }
    }

    #[test]
    fn url_standard_escapes() {
        assert_eq!(canon("/a{b}").0, "/a%7Bb%7D");
        assert_eq!(canon("/a b").0, "/a%20b");
    }

    #[test]
    fn encoded_dot_segments_detected() {
        let d = |p: &str| has_encoded_dot_segments(&canonicalize(p.as_bytes()).unwrap().decoded);
        assert!(d("/user/alice/%2E%2E%2Fbob/"));
        assert!(d("/user/alice/..%2fbob/"));
        assert!(d("/user/alice/%5c..%5cbob/"));
        assert!(!d("/user/alice/a%2Fb/c"));
        assert!(!d("/user/alice/..x/y"));
    }

    #[test]
    fn bad_escapes_are_errors() {
        assert_eq!(canonicalize(b"/%").unwrap_err(), PathError::BadEscape);
        assert_eq!(canonicalize(b"/%Z1").unwrap_err(), PathError::BadEscape);
        assert_eq!(canonicalize(b"/a%4").unwrap_err(), PathError::BadEscape);
        assert_eq!(canonicalize(b"/%C3%28").unwrap_err(), PathError::NotUtf8);
    }

    #[test]
    fn split_target_forms() {
        assert_eq!(split_target(b"/a?b=1#f"), (&b"/a"[..], Some(&b"b=1"[..])));
        assert_eq!(
            split_target(b"http://h:1/x?y"),
            (&b"/x"[..], Some(&b"y"[..]))
        );
        assert_eq!(split_target(b"/a"), (&b"/a"[..], None));
    }
}
