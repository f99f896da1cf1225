//! Why a connection to a target failed, as one closed set of kinds: the label of
//! `hubgate_upstream_errors_total{kind}` and the reason in the log.

use pingora::{Error, ErrorType};

/// The kind of an upstream failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The target refused the connection (nothing listens: the server stopped).
    Refused,
    /// Connecting, reading or writing took too long.
    Timeout,
    /// The connection was reset or closed early.
    Reset,
    /// The TLS handshake failed, or the target refused our client certificate.
    Tls,
    /// The target's host name did not resolve.
    Dns,
    /// Anything else.
    Other,
}

impl FailureKind {
    /// Every kind, in the order the metric's series are created.
    pub const ALL: [FailureKind; 6] = [
        FailureKind::Refused,
        FailureKind::Timeout,
        FailureKind::Reset,
        FailureKind::Tls,
        FailureKind::Dns,
        FailureKind::Other,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            FailureKind::Refused => "refused",
            FailureKind::Timeout => "timeout",
            FailureKind::Reset => "reset",
            FailureKind::Tls => "tls",
            FailureKind::Dns => "dns",
            FailureKind::Other => "other",
        }
    }

    /// The kind of an I/O error from connecting or relaying.
    pub fn of_io(e: &std::io::Error) -> FailureKind {
        // A handshake refused (or a certificate not trusted) by rustls, as tokio-rustls
        // reports it.
        if e.get_ref()
            .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
        {
            return FailureKind::Tls;
        }
        match e.kind() {
            std::io::ErrorKind::ConnectionRefused => FailureKind::Refused,
            std::io::ErrorKind::TimedOut => FailureKind::Timeout,
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe => {
                FailureKind::Reset
            }
            std::io::ErrorKind::NotFound => FailureKind::Dns,
            _ => FailureKind::Other,
        }
    }

    /// The kind of a pingora error from proxying to a target.
    pub fn of_pingora(e: &Error) -> FailureKind {
        // With TLS 1.3 a target that refuses our client certificate says so only on the first
        // read after the handshake: the failure arrives as a read error carrying a TLS alert.
        let root = e.root_cause();
        let tls_alert = root.downcast_ref::<rustls::Error>().is_some()
            || root
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some());
        if tls_alert {
            return FailureKind::Tls;
        }
        match e.etype() {
            ErrorType::ConnectRefused => FailureKind::Refused,
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
                FailureKind::Timeout
            }
            ErrorType::ConnectionClosed => FailureKind::Reset,
            ErrorType::TLSHandshakeFailure
            | ErrorType::TLSHandshakeTimedout
            | ErrorType::InvalidCert => FailureKind::Tls,
            _ => FailureKind::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Error as IoError, ErrorKind};

    #[test]
    fn io_errors_map_to_kinds() {
        let k = |kind| FailureKind::of_io(&IoError::new(kind, "x"));
        assert_eq!(k(ErrorKind::ConnectionRefused), FailureKind::Refused);
        assert_eq!(k(ErrorKind::TimedOut), FailureKind::Timeout);
        assert_eq!(k(ErrorKind::ConnectionReset), FailureKind::Reset);
        assert_eq!(k(ErrorKind::BrokenPipe), FailureKind::Reset);
        assert_eq!(k(ErrorKind::NotFound), FailureKind::Dns);
        assert_eq!(k(ErrorKind::PermissionDenied), FailureKind::Other);
    }

    #[test]
    fn pingora_errors_map_to_kinds() {
        let k = |t| FailureKind::of_pingora(&Error::new(t));
        assert_eq!(k(ErrorType::ConnectRefused), FailureKind::Refused);
        assert_eq!(k(ErrorType::ConnectTimedout), FailureKind::Timeout);
        assert_eq!(k(ErrorType::ReadTimedout), FailureKind::Timeout);
        assert_eq!(k(ErrorType::ConnectionClosed), FailureKind::Reset);
        assert_eq!(k(ErrorType::InvalidCert), FailureKind::Tls);
        assert_eq!(k(ErrorType::InternalError), FailureKind::Other);
        // A TLS alert inside a read error (TLS 1.3 client-certificate refusal).
        let alert = IoError::other(rustls::Error::AlertReceived(
            rustls::AlertDescription::CertificateRequired,
        ));
        let e = Error::because(ErrorType::ReadError, "reading", alert);
        assert_eq!(FailureKind::of_pingora(&e), FailureKind::Tls);
    }

    #[test]
    fn labels_are_distinct() {
        let mut labels: Vec<_> = FailureKind::ALL.iter().map(|k| k.label()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), FailureKind::ALL.len());
    }
}
