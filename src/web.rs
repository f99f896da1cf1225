//! Small web helpers shared by the proxy and authentication: form/query encoding, the query
//! string edits hubgate makes, and the small self-contained replies (pages, redirects, JSON)
//! that hubgate writes itself. A leaf: imports no other hubgate module.

/// `application/x-www-form-urlencoded` serialisation of one value (what `URLSearchParams`
/// produces): alphanumerics and `*-._` stay, space becomes `+`, the rest is `%XX`.
pub fn form_encode(value: &[u8]) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for &b in value {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                out.push(char::from(b))
            }
            b' ' => out.push('+'),
            _ => {
                out.push('%');
                out.push(char::from(b"0123456789ABCDEF"[(b >> 4) as usize]));
                out.push(char::from(b"0123456789ABCDEF"[(b & 15) as usize]));
            }
        }
    }
    out
}

/// A query parameter's value (form-decoded), from a raw request target (`/path?query`).
pub fn query_value(raw: &[u8], name: &str) -> Option<String> {
    let raw = std::str::from_utf8(raw).ok()?;
    let query = raw.split_once('?')?.1;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| {
            percent_encoding::percent_decode_str(&v.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

/// A query string (without `?`) without every `name=…` pair (and without empty pairs).
pub fn strip_query_param(query: &str, name: &str) -> String {
    query
        .split('&')
        .filter(|pair| !pair.is_empty() && pair.split('=').next() != Some(name))
        .collect::<Vec<_>>()
        .join("&")
}

/// A request target with the values of secret-looking query parameters replaced by
/// `REDACTED` (for logs).
pub fn redact_query(target: &str) -> String {
    let Some((path, query)) = target.split_once('?') else {
        return target.to_string();
    };
    let secret = |k: &str| {
        let k = k.to_ascii_lowercase();
        [
            "token", "secret", "password", "code", "state", "key", "auth",
        ]
        .iter()
        .any(|s| k.contains(s))
    };
    let redacted: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if secret(k) => format!("{k}=REDACTED"),
            _ => pair.to_string(),
        })
        .collect();
    format!("{path}?{}", redacted.join("&"))
}

/// The canonical reason phrase of a status code (`"Error"` for unknown codes).
pub fn reason_phrase(code: u16) -> &'static str {
    http::StatusCode::from_u16(code)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error")
}

/// Escapes text for HTML element content and double-quoted attribute values.
pub fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

/// A small self-contained HTML page: a heading, a paragraph and optionally one link. Every
/// page hubgate makes itself (error pages, login and denial pages) has this one shape, so a
/// researcher meets the same readable page whatever went wrong.
pub fn page(heading: &str, text: &str, link: Option<(&str, &str)>) -> String {
    let heading = html_escape(heading);
    let text = html_escape(text);
    let link = link.map_or(String::new(), |(href, label)| {
        format!(
            "<p><a href=\"{}\">{}</a></p>",
            html_escape(href),
            html_escape(label)
        )
    });
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{heading}</title>\
<style>body{{font-family:sans-serif;max-width:40em;margin:4em auto;color:#222}}</style></head>\
<body><h1>{heading}</h1><p>{text}</p>{link}</body></html>\n"
    )
}

/// A complete small response that hubgate writes itself (not proxied): a redirect, a page or a
/// JSON body. The proxy writes it in one place (`proxy::refusal`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

impl Reply {
    /// A `302` to `location`, not cached.
    pub fn redirect(location: String) -> Reply {
        Reply {
            status: 302,
            headers: vec![("Location", location), ("Cache-Control", "no-store".into())],
            body: String::new(),
        }
    }

    /// An HTML page, not cached.
    pub fn html(status: u16, body: String) -> Reply {
        Reply {
            status,
            headers: vec![
                ("Content-Type", "text/html; charset=utf-8".into()),
                ("Cache-Control", "no-store".into()),
            ],
            body,
        }
    }

    /// A JSON body, not cached.
    pub fn json(status: u16, body: String) -> Reply {
        Reply {
            status,
            headers: vec![
                ("Content-Type", "application/json".into()),
                ("Cache-Control", "no-store".into()),
            ],
            body,
        }
    }

    /// The same reply with one more header.
    pub fn with_header(mut self, name: &'static str, value: String) -> Reply {
        self.headers.push((name, value));
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_encoding_matches_url_search_params() {
        assert_eq!(
            form_encode(b"/nothing/here?q=1"),
            "%2Fnothing%2Fhere%3Fq%3D1"
        );
        assert_eq!(form_encode(b"/a b~"), "%2Fa+b%7E");
        assert_eq!(form_encode("é".as_bytes()), "%C3%A9");
    }

    #[test]
    fn query_params() {
        assert_eq!(
            query_value(b"/a?x=1&hubgate_token=abc", "hubgate_token").as_deref(),
            Some("abc")
        );
        assert_eq!(query_value(b"/a?t=a%2Bb+c", "t").as_deref(), Some("a+b c"));
        assert_eq!(query_value(b"/a?x=1", "hubgate_token"), None);
        assert_eq!(query_value(b"/a", "x"), None);
        assert_eq!(
            strip_query_param("x=1&hubgate_token=abc&y=2", "hubgate_token"),
            "x=1&y=2"
        );
        assert_eq!(strip_query_param("hubgate_token=abc", "hubgate_token"), "");
        // A name that only starts the same is another parameter.
        assert_eq!(
            strip_query_param("hubgate_token2=a&&b=c", "hubgate_token"),
            "hubgate_token2=a&b=c"
        );
    }

    #[test]
    fn redaction_hides_secret_values_only() {
        assert_eq!(
            redact_query("/a?token=s3cret&x=1&client_secret=z"),
            "/a?token=REDACTED&x=1&client_secret=REDACTED"
        );
        assert_eq!(redact_query("/a?x=1"), "/a?x=1");
        assert_eq!(redact_query("/a"), "/a");
    }

    #[test]
    fn pages_escape_what_they_show() {
        let p = page(
            "404: Not Found",
            "a <b> & \"c\"",
            Some(("/x?a=1&b=2", "Go")),
        );
        assert!(p.contains("<h1>404: Not Found</h1>"));
        assert!(p.contains("a &lt;b&gt; &amp; &quot;c&quot;"));
        assert!(p.contains("href=\"/x?a=1&amp;b=2\""));
        assert!(!page("t", "x", None).contains("<a "));
    }

    #[test]
    fn replies() {
        let r = Reply::redirect("/login".into());
        assert_eq!(r.status, 302);
        assert!(r.headers.contains(&("Location", "/login".into())));
        let j = Reply::json(401, "{}".into()).with_header("WWW-Authenticate", "Bearer".into());
        assert_eq!(j.headers.len(), 3);
        assert_eq!(reason_phrase(404), "Not Found");
        assert_eq!(reason_phrase(599), "Error");
    }
}
