//! Target URLs, TCP/TLS connections.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};

/// A parsed `http(s)://` or `ws(s)://` URL, resolved once.
#[derive(Clone)]
pub struct Target {
    pub url: String,
    pub tls: bool,
    pub host: String,
    /// `host[:port]` as it goes into the Host header.
    pub authority: String,
    /// Path and query (at least `/`).
    pub path: String,
    pub addr: SocketAddr,
}

impl Target {
    pub async fn parse(url: &str, schemes: (&str, &str)) -> Result<Target, String> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| format!("{url}: expected {}://host[:port]/path", schemes.0))?;
        let tls = if scheme.eq_ignore_ascii_case(schemes.0) {
            false
        } else if scheme.eq_ignore_ascii_case(schemes.1) {
            true
        } else {
            return Err(format!(
                "{url}: scheme must be {} or {}",
                schemes.0, schemes.1
            ));
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_string()),
            Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
            None => (rest, "/".to_string()),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(format!("{url}: bad host"));
        }
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = if let Some(h) = authority.strip_prefix('[') {
            let (h, after) = h
                .split_once(']')
                .ok_or_else(|| format!("{url}: bad IPv6 host"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| format!("{url}: bad port"))?,
                None => default_port,
            };
            (h.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (
                    h.to_string(),
                    p.parse().map_err(|_| format!("{url}: bad port"))?,
                ),
                None => (authority.to_string(), default_port),
            }
        };
        let addr = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| format!("{url}: cannot resolve {host}: {e}"))?
            .next()
            .ok_or_else(|| format!("{url}: {host} has no address"))?;
        Ok(Target {
            url: url.to_string(),
            tls,
            host,
            authority: authority.to_string(),
            path,
            addr,
        })
    }
}

/// TLS client settings: trust the PEM certificates in `ca` (a CA bundle or a self-signed
/// server certificate), or nothing at all with `insecure`.
pub fn tls_connector(
    ca: Option<&str>,
    insecure: bool,
) -> Result<tokio_rustls::TlsConnector, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let mut config = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
            .with_no_client_auth()
    } else {
        let ca = ca.ok_or("an https/wss URL needs --ca FILE (PEM; e.g. /etc/ssl/certs/ca-certificates.crt) or --insecure")?;
        let pem = std::fs::read(ca).map_err(|e| format!("--ca {ca}: {e}"))?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert = cert.map_err(|e| format!("--ca {ca}: {e}"))?;
            roots.add(cert).map_err(|e| format!("--ca {ca}: {e}"))?;
        }
        if roots.is_empty() {
            return Err(format!("--ca {ca}: no certificate found"));
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A client connection: plain TCP or TLS over TCP.
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// How to connect to a target.
#[derive(Clone)]
pub struct Connector {
    pub target: Arc<Target>,
    pub tls: Option<tokio_rustls::TlsConnector>,
    pub timeout: Duration,
}

impl Connector {
    pub fn new(
        target: Target,
        ca: Option<&str>,
        insecure: bool,
        timeout: Duration,
    ) -> Result<Connector, String> {
        let tls = if target.tls {
            Some(tls_connector(ca, insecure)?)
        } else {
            None
        };
        Ok(Connector {
            target: Arc::new(target),
            tls,
            timeout,
        })
    }

    pub async fn connect(&self) -> io::Result<Conn> {
        let fut = async {
            let tcp = TcpStream::connect(self.target.addr).await?;
            tcp.set_nodelay(true)?;
            match &self.tls {
                None => Ok(Conn::Plain(tcp)),
                Some(tls) => {
                    let name = ServerName::try_from(self.target.host.clone())
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                    Ok(Conn::Tls(Box::new(tls.connect(name, tcp).await?)))
                }
            }
        };
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(s) => s.is_write_vectored(),
            Conn::Tls(s) => s.is_write_vectored(),
        }
    }
}
