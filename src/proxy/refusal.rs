//! Every way a request is refused or fails before the target answers, as one enum, and the
//! one place that turns it into a response: CHP's status and log line, the error target or
//! page (or a bare status line for websockets), authentication's denial, and the metrics.
//! The HTTP path and the websocket path both end here.

use std::borrow::Cow;

use bytes::Bytes;
use log::error;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

use super::{websocket, HubProxy, RequestCtx};
use crate::canonical::PathError;
use crate::net::{FailureKind, TargetError};
use crate::web::Reply;

/// Why a request got no answer from its target.
#[derive(Debug)]
pub enum Refusal {
    /// A request target with raw spaces, controls or non-ASCII bytes, or HTTP/1.1 without
    /// `Host`: node (so CHP) answers a bare 400 and closes the connection.
    Malformed,
    /// The path cannot be decoded (bad percent-encoding): CHP's 500.
    BadPath(PathError),
    /// No route matches: 404.
    NoRoute,
    /// The matched route's target is not a URL hubgate can proxy to: CHP's 500.
    BadTarget(TargetError),
    /// The target could not be reached or failed before answering: 503. `counted`: the
    /// failure is already in `hubgate_upstream_errors_total` (pingora's connect hook).
    Upstream {
        kind: FailureKind,
        detail: String,
        counted: bool,
    },
    /// Any other failure with the status to answer (pingora's own errors: 400 for a bad
    /// request, 500 for an internal error, or an explicit status).
    Status(u16, String),
    /// Authentication refused the request; the response was built by `auth`.
    Denied(Reply),
    /// The request line is longer than `limits.max-request-line-bytes`: 414, then close.
    /// Found by the front door before pingora parses the head (`crate::front_door`).
    RequestLineTooLong,
    /// The head is larger than `limits.max-header-bytes`: 431, then close (node's answer).
    HeaderTooLarge,
    /// The head was not complete in time (`limits.header-timeout-ms`, or evicted as the
    /// oldest of too many pending connections): 408, then close (node's answer).
    HeaderTimeout,
}

impl Refusal {
    /// The status the client gets.
    pub fn status(&self) -> u16 {
        match self {
            Refusal::Malformed => 400,
            Refusal::BadPath(_) | Refusal::BadTarget(_) => 500,
            Refusal::NoRoute => 404,
            Refusal::Upstream { .. } => 503,
            Refusal::Status(code, _) => *code,
            Refusal::Denied(reply) => reply.status,
            Refusal::RequestLineTooLong => 414,
            Refusal::HeaderTooLarge => 431,
            Refusal::HeaderTimeout => 408,
        }
    }

    /// The exact bytes of a refusal given before any request exists (no session to render
    /// into): node's form, a status line with `Connection: close` and no body.
    pub fn raw_response(&self) -> Option<&'static [u8]> {
        match self {
            Refusal::RequestLineTooLong => {
                Some(b"HTTP/1.1 414 URI Too Long\r\nConnection: close\r\n\r\n")
            }
            Refusal::HeaderTooLarge => {
                Some(b"HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\n\r\n")
            }
            Refusal::HeaderTimeout => {
                Some(b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n\r\n")
            }
            _ => None,
        }
    }

    /// The text of CHP's error log line (empty for a 404, as in CHP).
    pub fn message(&self) -> Cow<'_, str> {
        match self {
            Refusal::Malformed
            | Refusal::NoRoute
            | Refusal::Denied(_)
            | Refusal::RequestLineTooLong
            | Refusal::HeaderTooLarge
            | Refusal::HeaderTimeout => Cow::Borrowed(""),
            Refusal::BadPath(e) => Cow::Owned(e.to_string()),
            Refusal::BadTarget(e) => Cow::Owned(e.to_string()),
            Refusal::Upstream { detail, .. } | Refusal::Status(_, detail) => {
                Cow::Borrowed(detail.as_str())
            }
        }
    }

    /// The upstream failure kind to count, if this refusal is one not counted yet.
    pub fn uncounted_failure(&self) -> Option<FailureKind> {
        match self {
            Refusal::Upstream {
                kind,
                counted: false,
                ..
            } => Some(*kind),
            _ => None,
        }
    }
}

impl HubProxy {
    /// Answers a refused request: the one place a refusal becomes a response.
    pub(super) async fn render(&self, session: &mut Session, ctx: &RequestCtx, refusal: Refusal) {
        let sh = &self.shared;
        match refusal {
            Refusal::Malformed => {
                session.set_keepalive(None);
                let _ = write_empty_close(session, 400).await;
            }
            r
            @ (Refusal::RequestLineTooLong | Refusal::HeaderTooLarge | Refusal::HeaderTimeout) => {
                // Normally answered by the front door; the same bare answer if reached here.
                session.set_keepalive(None);
                let _ = write_empty_close(session, r.status()).await;
            }
            Refusal::Denied(reply) => {
                session.set_keepalive(None);
                let _ = write_reply(session, reply).await;
            }
            other => {
                let code = other.status();
                if let Some(kind) = other.uncounted_failure() {
                    sh.metrics.upstream_error(kind).inc();
                }
                let url = String::from_utf8_lossy(session.req_header().raw_path()).into_owned();
                error!(
                    "{code} {} {} {}",
                    session.req_header().method,
                    url.split('?').next().unwrap_or_default(),
                    other.message()
                );
                sh.metrics.requests_proxy(code).inc();
                if ctx.websocket {
                    websocket::respond_bare(session, code).await;
                } else {
                    sh.errors.respond(session, code, url.as_bytes()).await;
                }
            }
        }
    }
}

/// Writes a complete small response hubgate made itself.
pub(super) async fn write_reply(session: &mut Session, reply: Reply) -> pingora::Result<()> {
    let mut resp = ResponseHeader::build(reply.status, Some(reply.headers.len() + 1))?;
    for (k, v) in &reply.headers {
        resp.append_header(*k, v.as_str())?;
    }
    resp.insert_header("Content-Length", reply.body.len().to_string())?;
    session.write_response_header(Box::new(resp), false).await?;
    session
        .write_response_body(Some(Bytes::from(reply.body)), true)
        .await
}

async fn write_empty_close(session: &mut Session, status: u16) -> pingora::Result<()> {
    let mut resp = ResponseHeader::build(status, Some(2))?;
    resp.insert_header("Connection", "close")?;
    resp.insert_header("Content-Length", "0")?;
    session.write_response_header(Box::new(resp), true).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_chp() {
        assert_eq!(Refusal::Malformed.status(), 400);
        assert_eq!(Refusal::NoRoute.status(), 404);
        assert_eq!(
            Refusal::BadTarget(TargetError::NotAUrl("x".into())).status(),
            500
        );
        assert_eq!(Refusal::BadPath(PathError::BadEscape).status(), 500);
        let up = Refusal::Upstream {
            kind: FailureKind::Refused,
            detail: "connect ECONNREFUSED".into(),
            counted: false,
        };
        assert_eq!(up.status(), 503);
        assert_eq!(up.message(), "connect ECONNREFUSED");
        assert_eq!(up.uncounted_failure(), Some(FailureKind::Refused));
        let counted = Refusal::Upstream {
            kind: FailureKind::Refused,
            detail: String::new(),
            counted: true,
        };
        assert_eq!(counted.uncounted_failure(), None);
        assert_eq!(Refusal::Status(400, "bad".into()).status(), 400);
        assert_eq!(Refusal::Denied(Reply::json(403, "{}".into())).status(), 403);
        // CHP logs a 404 with no message.
        assert_eq!(Refusal::NoRoute.message(), "");
        assert!(Refusal::BadTarget(TargetError::NotAUrl("x".into()))
            .message()
            .contains("not a URL"));
    }
}
