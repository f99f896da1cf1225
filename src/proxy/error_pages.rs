//! Proxy error responses (404 no route, 503 target down, 500 bad request or target):
//! from the `--error-target` server (JupyterHub's `/hub/error`), from `--error-path` files,
//! or hubgate's built-in pages. The status is always the proxy's own, as in CHP.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use log::{debug, error};
use pingora::connectors::http::Connector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use pingora::upstreams::peer::HttpPeer;

use super::resolver::Resolver;
use crate::config::ErrorPages;
use crate::routes::{Target, TargetAddr};
use crate::tls::ClientTlsMaterial;

/// The error-target server fetch may take this long before the plain fallback is used.
const ERROR_TARGET_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest error page body taken from the error target.
const MAX_ERROR_BODY: usize = 1024 * 1024;

enum Mode {
    Target {
        target: Target,
        path_prefix: String,
        other_query: String,
    },
    Path(PathBuf),
    Builtin,
}

/// Renders error responses.
pub struct ErrorRenderer {
    mode: Mode,
    connector: Connector,
    client_tls: Arc<ClientTlsMaterial>,
    insecure: bool,
}

/// An error page fetched or read, ready to send.
struct Page {
    content_type: Option<Bytes>,
    content_encoding: Option<Bytes>,
    body: Bytes,
}

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

fn reason(code: u16) -> &'static str {
    http::StatusCode::from_u16(code)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error")
}

fn builtin_page(code: u16) -> String {
    let (title, text) = match code {
        404 => (
            "404: Not Found",
            "No service is registered at this URL. If this is your notebook server, it may have stopped: go back to the hub's home page and start it again.",
        ),
        503 => (
            "503: Service Unavailable",
            "The server registered at this URL is not answering. It may still be starting, or its job may have ended. Try again in a moment, or restart it from the hub's home page.",
        ),
        _ => (
            "500: Proxy Error",
            "The proxy could not handle this request. If it keeps happening, tell the people who run this service, with the time it happened.",
        ),
    };
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title>\
<style>body{{font-family:sans-serif;max-width:40em;margin:4em auto;color:#222}}</style></head>\
<body><h1>{title}</h1><p>{text}</p></body></html>\n"
    )
}

impl ErrorRenderer {
    /// Builds the renderer for the configured error pages.
    pub fn new(
        pages: &ErrorPages,
        client_tls: Arc<ClientTlsMaterial>,
        insecure: bool,
    ) -> ErrorRenderer {
        let mode = match pages {
            ErrorPages::Target(url) => match Target::parse(url) {
                Ok(target) => {
                    let mut path_prefix = target.path.clone();
                    if !path_prefix.ends_with('/') {
                        path_prefix.push('/');
                    }
                    let other_query = target
                        .query
                        .split('&')
                        .filter(|kv| !kv.is_empty() && kv.split('=').next() != Some("url"))
                        .collect::<Vec<_>>()
                        .join("&");
                    Mode::Target {
                        target,
                        path_prefix,
                        other_query,
                    }
                }
                // Validated at startup; unreachable in practice.
                Err(_) => Mode::Builtin,
            },
            ErrorPages::Path(dir) => Mode::Path(dir.clone()),
            ErrorPages::Builtin => Mode::Builtin,
        };
        ErrorRenderer {
            mode,
            connector: Connector::new(None),
            client_tls,
            insecure,
        }
    }

    async fn fetch(&self, resolver: &Resolver, code: u16, raw_url: &[u8]) -> Result<Page, String> {
        let Mode::Target {
            target,
            path_prefix,
            other_query,
        } = &self.mode
        else {
            return Err("no error target".into());
        };
        let mut peer = match &target.addr {
            TargetAddr::Ip(a) => HttpPeer::new(*a, target.tls, target.sni.clone()),
            TargetAddr::Name { host, port } => {
                let a = resolver
                    .resolve(host, *port, ERROR_TARGET_TIMEOUT)
                    .await
                    .map_err(|e| e.to_string())?;
                HttpPeer::new(a, target.tls, target.sni.clone())
            }
            TargetAddr::Unix(p) => {
                HttpPeer::new_uds(p, false, String::new()).map_err(|e| e.to_string())?
            }
        };
        peer.options.connection_timeout = Some(Duration::from_secs(3));
        peer.options.read_timeout = Some(ERROR_TARGET_TIMEOUT);
        if target.tls {
            peer.options.verify_cert = !self.insecure;
            peer.options.verify_hostname = !self.insecure;
            peer.options.ca = self.client_tls.ca.clone();
            peer.client_cert_key = self.client_tls.cert_key.clone();
        }
        let mut path = format!("{path_prefix}{code}?");
        if !other_query.is_empty() {
            path.push_str(other_query);
            path.push('&');
        }
        path.push_str("url=");
        path.push_str(&form_encode(raw_url));
        debug!("Requesting custom error page: {path}");

        let mut req =
            RequestHeader::build("GET", path.as_bytes(), None).map_err(|e| e.to_string())?;
        req.insert_header("Host", target.host_header.as_str())
            .map_err(|e| e.to_string())?;
        let (mut client, _) = self
            .connector
            .get_http_session(&peer)
            .await
            .map_err(|e| e.to_string())?;
        client
            .write_request_header(Box::new(req))
            .await
            .map_err(|e| e.to_string())?;
        client
            .finish_request_body()
            .await
            .map_err(|e| e.to_string())?;
        client
            .read_response_header()
            .await
            .map_err(|e| e.to_string())?;
        let header = client.response_header().ok_or("no response header")?;
        let get = |name: &str| {
            header
                .headers
                .get(name)
                .map(|v| Bytes::copy_from_slice(v.as_bytes()))
        };
        let (content_type, content_encoding) = (get("content-type"), get("content-encoding"));
        let mut body = Vec::new();
        while let Some(chunk) = client
            .read_response_body()
            .await
            .map_err(|e| e.to_string())?
        {
            if body.len() + chunk.len() > MAX_ERROR_BODY {
                return Err("error page too large".into());
            }
            body.extend_from_slice(&chunk);
        }
        self.connector
            .release_http_session(client, &peer, Some(Duration::from_secs(30)))
            .await;
        Ok(Page {
            content_type,
            content_encoding,
            body: Bytes::from(body),
        })
    }

    async fn page(&self, resolver: &Resolver, code: u16, raw_url: &[u8]) -> Option<Page> {
        match &self.mode {
            Mode::Target { .. } => {
                match tokio::time::timeout(
                    ERROR_TARGET_TIMEOUT,
                    self.fetch(resolver, code, raw_url),
                )
                .await
                {
                    Ok(Ok(page)) => Some(page),
                    Ok(Err(e)) => {
                        error!("Failed to get custom error page: {e}");
                        None
                    }
                    Err(_) => {
                        error!("Failed to get custom error page: timed out");
                        None
                    }
                }
            }
            Mode::Path(dir) => {
                for name in [format!("{code}.html"), "error.html".to_string()] {
                    let file = dir.join(&name);
                    match tokio::fs::read(&file).await {
                        Ok(body) => {
                            return Some(Page {
                                content_type: Some(Bytes::from_static(b"text/html")),
                                content_encoding: None,
                                body: Bytes::from(body),
                            })
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                        Err(e) => {
                            error!("Error reading {} {e}", file.display());
                            return None;
                        }
                    }
                }
                error!("No error file {}", dir.join("error.html").display());
                None
            }
            Mode::Builtin => Some(Page {
                content_type: Some(Bytes::from_static(b"text/html")),
                content_encoding: None,
                body: Bytes::from(builtin_page(code)),
            }),
        }
    }

    /// Writes the error response for `code` (the original request URL is `raw_url`).
    pub async fn respond(
        &self,
        session: &mut Session,
        resolver: &Resolver,
        code: u16,
        raw_url: &[u8],
    ) {
        let page = self
            .page(resolver, code, raw_url)
            .await
            .unwrap_or_else(|| Page {
                content_type: None,
                content_encoding: None,
                body: Bytes::from_static(reason(code).as_bytes()),
            });
        let Ok(mut resp) = ResponseHeader::build(code, Some(4)) else {
            return;
        };
        if let Some(ct) = page.content_type {
            let _ = resp.insert_header("Content-Type", ct.as_ref());
        }
        if let Some(ce) = page.content_encoding {
            let _ = resp.insert_header("Content-Encoding", ce.as_ref());
        }
        let _ = resp.insert_header("Content-Length", page.body.len().to_string());
        if session
            .write_response_header(Box::new(resp), false)
            .await
            .is_ok()
        {
            let _ = session.write_response_body(Some(page.body), true).await;
        }
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
    }

    #[test]
    fn builtin_pages_name_the_code() {
        assert!(builtin_page(404).contains("404"));
        assert!(builtin_page(503).contains("503"));
        assert!(builtin_page(500).contains("500"));
    }
}
