//! A small outbound HTTP/1.1 client on pingora's connector, for hubgate's own requests:
//! the error-target server, identity-provider discovery, key sets and token exchange.

use std::time::Duration;

use bytes::Bytes;
use pingora::http::RequestHeader;
use thiserror::Error;

use super::{Connector, PeerTimeouts, Target};

/// An outbound request that did not produce a response.
#[derive(Debug, Error)]
pub enum FetchError {
    /// The URL is not one hubgate can request.
    #[error("bad URL {0}: {1}")]
    Url(String, String),
    /// Connecting, sending or reading failed.
    #[error("{0}")]
    Io(String),
    /// The whole exchange took too long.
    #[error("timed out")]
    Timeout,
    /// The response body is larger than allowed.
    #[error("response body larger than {0} bytes")]
    TooLarge(usize),
}

/// A response: status, selected headers, body.
#[derive(Debug)]
pub struct Fetched {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// One outbound request.
pub struct Fetch<'a> {
    pub method: &'a str,
    pub url: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
    pub body: Option<Bytes>,
    /// Limit for the whole exchange: connect, send and read.
    pub timeout: Duration,
    /// Largest response body accepted.
    pub max_body: usize,
}

impl<'a> Fetch<'a> {
    /// A GET without extra headers.
    pub fn get(url: &'a str, timeout: Duration, max_body: usize) -> Fetch<'a> {
        Fetch {
            method: "GET",
            url,
            headers: &[],
            body: None,
            timeout,
            max_body,
        }
    }

    /// A POST of `body`.
    pub fn post(url: &'a str, body: Bytes, timeout: Duration, max_body: usize) -> Fetch<'a> {
        Fetch {
            method: "POST",
            body: Some(body),
            ..Fetch::get(url, timeout, max_body)
        }
    }

    /// The same request with these extra headers.
    pub fn with_headers(self, headers: &'a [(&'a str, &'a str)]) -> Fetch<'a> {
        Fetch { headers, ..self }
    }
}

/// The client: pingora's pooled connector, and hubgate's [`Connector`] for resolution and TLS.
pub struct HttpClient {
    pool: pingora::connectors::http::Connector,
    connector: Connector,
}

fn io<E: std::fmt::Display>(e: E) -> FetchError {
    FetchError::Io(e.to_string())
}

impl HttpClient {
    /// A client connecting through `connector`.
    pub fn new(connector: Connector) -> HttpClient {
        HttpClient {
            pool: pingora::connectors::http::Connector::new(None),
            connector,
        }
    }

    /// Sends one request and reads the whole response (at most `max_body` bytes) within its
    /// `timeout`.
    pub async fn request(&self, fetch: Fetch<'_>) -> Result<Fetched, FetchError> {
        // Boxed: the exchange holds pingora's connector futures (~11 KB), and every caller's
        // future would otherwise carry them inline, the proxy's `request_filter` among them
        // (it can fetch an error page or finish a login): 12 KB copied per proxied request
        // for a path taken a few times a day (docs/performance.md, "Copies per request").
        tokio::time::timeout(fetch.timeout, Box::pin(self.exchange(fetch)))
            .await
            .map_err(|_| FetchError::Timeout)?
    }

    async fn exchange(&self, fetch: Fetch<'_>) -> Result<Fetched, FetchError> {
        let Fetch {
            method,
            url,
            headers,
            body,
            timeout,
            max_body,
        } = fetch;
        let target =
            Target::parse(url).map_err(|e| FetchError::Url(url.to_string(), e.to_string()))?;
        let limits = PeerTimeouts {
            resolve: timeout,
            connect: timeout.min(Duration::from_secs(5)),
            total_connect: None,
            read: Some(timeout),
            write: Some(timeout),
            idle: None,
        };
        let peer = self.connector.peer(&target, &limits).await.map_err(io)?;
        let mut path = target.path.clone();
        if !target.query.is_empty() {
            path.push('?');
            path.push_str(&target.query);
        }
        let mut req = RequestHeader::build(method, path.as_bytes(), None).map_err(io)?;
        req.insert_header("Host", target.host_header.as_str())
            .map_err(io)?;
        for (k, v) in headers {
            req.insert_header(k.to_string(), *v).map_err(io)?;
        }
        if let Some(b) = &body {
            req.insert_header("Content-Length", b.len().to_string())
                .map_err(io)?;
        }
        let (mut session, _) = self.pool.get_http_session(&peer).await.map_err(io)?;
        session
            .write_request_header(Box::new(req))
            .await
            .map_err(io)?;
        if let Some(b) = body {
            session.write_request_body(b, true).await.map_err(io)?;
        }
        session.finish_request_body().await.map_err(io)?;
        session.read_response_header().await.map_err(io)?;
        let header = session
            .response_header()
            .ok_or_else(|| FetchError::Io("no response header".into()))?;
        let status = header.status.as_u16();
        let headers = header.headers.clone();
        let mut out = Vec::new();
        while let Some(chunk) = session.read_response_body().await.map_err(io)? {
            if out.len() + chunk.len() > max_body {
                return Err(FetchError::TooLarge(max_body));
            }
            out.extend_from_slice(&chunk);
        }
        self.pool
            .release_http_session(session, &peer, Some(Duration::from_secs(30)))
            .await;
        Ok(Fetched {
            status,
            headers,
            body: Bytes::from(out),
        })
    }
}
