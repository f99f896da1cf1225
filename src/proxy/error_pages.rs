//! Proxy error responses (404 no route, 503 target down, 500 bad request or target):
//! from the `--error-target` server (JupyterHub's `/hub/error`), from `--error-path` files,
//! or hubgate's built-in pages. The status is always the proxy's own, as in CHP.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use log::{debug, error};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

use crate::config::ErrorPages;
use crate::net::{Fetch, FetchError, HttpClient};
use crate::web::{self, form_encode};

/// The error-target server fetch may take this long before the plain fallback is used.
const ERROR_TARGET_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest error page body taken from the error target.
const MAX_ERROR_BODY: usize = 1024 * 1024;

enum Mode {
    /// `scheme://host[:port]/path/` of the error target, and its query without `url`.
    Target {
        url_prefix: String,
        other_query: String,
    },
    Path(PathBuf),
    Builtin,
}

/// Renders error responses.
pub struct ErrorRenderer {
    mode: Mode,
    client: Arc<HttpClient>,
}

/// An error page fetched or read, ready to send.
pub(super) struct Page {
    pub content_type: Option<Bytes>,
    pub content_encoding: Option<Bytes>,
    pub body: Bytes,
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
    web::page(title, text, None)
}

impl ErrorRenderer {
    /// Builds the renderer for the configured error pages.
    pub fn new(pages: &ErrorPages, client: Arc<HttpClient>) -> ErrorRenderer {
        let mode = match pages {
            ErrorPages::Target(url) => {
                let (base, query) = url.split_once('?').unwrap_or((url.as_str(), ""));
                let mut url_prefix = base.split('#').next().unwrap_or_default().to_string();
                if !url_prefix.ends_with('/') {
                    url_prefix.push('/');
                }
                let other_query = query
                    .split('&')
                    .filter(|kv| !kv.is_empty() && kv.split('=').next() != Some("url"))
                    .collect::<Vec<_>>()
                    .join("&");
                Mode::Target {
                    url_prefix,
                    other_query,
                }
            }
            ErrorPages::Path(dir) => Mode::Path(dir.clone()),
            ErrorPages::Builtin => Mode::Builtin,
        };
        ErrorRenderer { mode, client }
    }

    async fn fetch(
        &self,
        url_prefix: &str,
        other_query: &str,
        code: u16,
        raw_url: &[u8],
    ) -> Result<Page, FetchError> {
        let mut url = format!("{url_prefix}{code}?");
        if !other_query.is_empty() {
            url.push_str(other_query);
            url.push('&');
        }
        url.push_str("url=");
        url.push_str(&form_encode(raw_url));
        debug!("Requesting custom error page: {url}");
        let fetched = self
            .client
            .request(Fetch::get(&url, ERROR_TARGET_TIMEOUT, MAX_ERROR_BODY))
            .await?;
        let get = |name: &str| {
            fetched
                .headers
                .get(name)
                .map(|v| Bytes::copy_from_slice(v.as_bytes()))
        };
        Ok(Page {
            content_type: get("content-type"),
            content_encoding: get("content-encoding"),
            body: fetched.body,
        })
    }

    async fn page(&self, code: u16, raw_url: &[u8]) -> Option<Page> {
        match &self.mode {
            Mode::Target {
                url_prefix,
                other_query,
            } => {
                let fetch = self.fetch(url_prefix, other_query, code, raw_url);
                match tokio::time::timeout(ERROR_TARGET_TIMEOUT, fetch).await {
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

    /// The error page for `code`, or the reason phrase alone when there is none.
    pub(super) async fn page_or_reason(&self, code: u16, raw_url: &[u8]) -> Page {
        self.page(code, raw_url).await.unwrap_or_else(|| Page {
            content_type: None,
            content_encoding: None,
            body: Bytes::from_static(web::reason_phrase(code).as_bytes()),
        })
    }

    /// Writes the error response for `code` (the original request URL is `raw_url`).
    pub async fn respond(&self, session: &mut Session, code: u16, raw_url: &[u8]) {
        let page = self.page_or_reason(code, raw_url).await;
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
    fn builtin_pages_name_the_code() {
        assert!(builtin_page(404).contains("404"));
        assert!(builtin_page(503).contains("503"));
        assert!(builtin_page(500).contains("500"));
    }
}
