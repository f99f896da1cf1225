//! One way to connect to a [`Target`]: the proxy's upstream peers, the websocket relay's bare
//! streams and the outbound client all go through [`Connector`], so name resolution, TLS
//! verification and client certificates are decided in one place.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use pingora::connectors::TransportConnector;
use pingora::protocols::l4::ext::TcpKeepalive;
use pingora::protocols::Stream;
use pingora::upstreams::peer::HttpPeer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use super::{Resolver, Target, TargetAddr};

/// Client-side TLS toward https targets: a client certificate and a CA list, both optional.
#[derive(Default)]
pub struct ClientTlsMaterial {
    /// Client certificate and key (DER), for pingora peers.
    pub cert_key: Option<Arc<pingora::utils::tls::CertKey>>,
    /// CA certificates to verify targets with (instead of the system roots).
    pub ca: Option<Arc<pingora::protocols::tls::CaType>>,
}

impl fmt::Debug for ClientTlsMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTlsMaterial")
            .field("cert_key", &self.cert_key.is_some())
            .field("ca", &self.ca.is_some())
            .finish()
    }
}

/// The time limits of one upstream connection.
#[derive(Debug, Clone)]
pub struct PeerTimeouts {
    /// Resolving the target's host name.
    pub resolve: Duration,
    /// Establishing the TCP (or unix) connection.
    pub connect: Duration,
    /// Establishing the connection including the TLS handshake.
    pub total_connect: Option<Duration>,
    /// Idle limit on reads and writes.
    pub read: Option<Duration>,
    pub write: Option<Duration>,
    /// How long a pooled idle connection is kept.
    pub idle: Option<Duration>,
}

/// Connects to targets: one resolver, the client TLS material, and whether targets'
/// certificates are verified.
#[derive(Clone)]
pub struct Connector {
    resolver: Arc<Resolver>,
    tls: Arc<ClientTlsMaterial>,
    /// Skip verification of targets' certificates (`--insecure`).
    insecure: bool,
    /// pingora's connector, for TLS streams that hubgate then relays itself (websockets to
    /// `https://` targets): the handshake, CA list, client certificate and verification are
    /// exactly those of the forwarding path, since both start from [`Connector::peer`].
    transport: Arc<TransportConnector>,
}

impl Connector {
    /// A connector sharing `resolver`, verifying https targets with `tls` unless `insecure`.
    pub fn new(resolver: Arc<Resolver>, tls: Arc<ClientTlsMaterial>, insecure: bool) -> Self {
        Connector {
            resolver,
            tls,
            insecure,
            transport: Arc::new(TransportConnector::new(None)),
        }
    }

    /// The same connector, but always verifying certificates (the identity provider is
    /// verified even with `--insecure`, which is about targets only).
    pub fn verifying(&self) -> Connector {
        Connector {
            insecure: false,
            ..self.clone()
        }
    }

    /// The DNS cache this connector uses.
    pub fn resolver(&self) -> &Arc<Resolver> {
        &self.resolver
    }

    /// A pingora peer for `target`, its host name resolved (through the cache).
    pub async fn peer(&self, target: &Target, t: &PeerTimeouts) -> io::Result<HttpPeer> {
        let mut peer = match &target.addr {
            TargetAddr::Ip(a) => HttpPeer::new(*a, target.tls, target.sni.clone()),
            TargetAddr::Name { host, port } => {
                let a = self.resolver.resolve(host, *port, t.resolve).await?;
                HttpPeer::new(a, target.tls, target.sni.clone())
            }
            TargetAddr::Unix(p) => {
                HttpPeer::new_uds(p, false, String::new()).map_err(io::Error::other)?
            }
        };
        peer.options.connection_timeout = Some(t.connect);
        peer.options.total_connection_timeout = t.total_connect;
        peer.options.read_timeout = t.read;
        peer.options.write_timeout = t.write;
        peer.options.idle_timeout = t.idle;
        if target.tls {
            peer.options.verify_cert = !self.insecure;
            peer.options.verify_hostname = !self.insecure;
            peer.options.ca = self.tls.ca.clone();
            peer.client_cert_key = self.tls.cert_key.clone();
        }
        Ok(peer)
    }

    /// A TLS stream to an `https://` target (the handshake done, verified as
    /// [`Connector::peer`] says), within `t.connect` for TCP and `t.total_connect` in all.
    /// TCP keep-alive probes after 60 s idle, as for [`Connector::stream`].
    /// Errors are pingora's, so that [`super::FailureKind::of_pingora`] classifies them as it
    /// does the forwarding path's.
    pub async fn tls_stream(&self, target: &Target, t: &PeerTimeouts) -> pingora::Result<Stream> {
        use pingora::{Error, ErrorType};
        if !target.tls {
            return Error::e_explain(
                ErrorType::InternalError,
                "TLS streams are for https targets",
            );
        }
        let mut peer = self
            .peer(target, t)
            .await
            .map_err(|e| Error::because(ErrorType::ConnectError, "resolving the target", e))?;
        peer.options.tcp_keepalive = Some(TcpKeepalive {
            idle: Duration::from_secs(60),
            interval: Duration::from_secs(15),
            count: 4,
            #[cfg(target_os = "linux")]
            user_timeout: Duration::ZERO,
        });
        // The relay has no idle limit (kernels sit idle for hours): no read/write timeouts.
        peer.options.read_timeout = None;
        peer.options.write_timeout = None;
        let bound = t.total_connect.unwrap_or(t.connect + t.connect);
        match tokio::time::timeout(bound, self.transport.new_stream(&peer)).await {
            Ok(r) => r,
            Err(_) => Error::e_explain(ErrorType::ConnectTimedout, "connect timed out"),
        }
    }

    /// A bare stream to a plain (`http://` or `http+unix://`) target, within `timeout`
    /// (resolution included). TCP streams get `TCP_NODELAY` and keep-alive probes after 60 s
    /// idle, so a dead compute node is noticed under a websocket that sits idle for hours.
    pub async fn stream(&self, target: &Target, timeout: Duration) -> io::Result<TargetStream> {
        if target.tls {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "bare streams are for plain targets",
            ));
        }
        let fut = async {
            match &target.addr {
                TargetAddr::Ip(addr) => TcpStream::connect(addr).await.map(TargetStream::Tcp),
                TargetAddr::Name { host, port } => {
                    let addr = self.resolver.resolve(host, *port, timeout).await?;
                    TcpStream::connect(addr).await.map(TargetStream::Tcp)
                }
                TargetAddr::Unix(path) => UnixStream::connect(path).await.map(TargetStream::Unix),
            }
        };
        let stream = tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        if let TargetStream::Tcp(s) = &stream {
            let _ = s.set_nodelay(true);
            let sock = socket2::SockRef::from(s);
            let _ = sock.set_tcp_keepalive(
                &socket2::TcpKeepalive::new().with_time(Duration::from_secs(60)),
            );
        }
        Ok(stream)
    }
}

/// A bare connection: TCP or unix socket.
#[derive(Debug)]
pub enum TargetStream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl AsyncRead for TargetStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            TargetStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            TargetStream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for TargetStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            TargetStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            TargetStream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            TargetStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            TargetStream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            TargetStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            TargetStream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connector(insecure: bool) -> Connector {
        Connector::new(Arc::default(), Arc::default(), insecure)
    }

    fn timeouts() -> PeerTimeouts {
        PeerTimeouts {
            resolve: Duration::from_secs(1),
            connect: Duration::from_millis(1500),
            total_connect: Some(Duration::from_secs(3)),
            read: Some(Duration::from_secs(4)),
            write: None,
            idle: Some(Duration::from_secs(60)),
        }
    }

    #[tokio::test]
    async fn peers_carry_timeouts_and_verification() {
        let t = Target::parse("https://127.0.0.1:8443/x").expect("target");
        let peer = connector(false).peer(&t, &timeouts()).await.expect("peer");
        assert_eq!(
            peer.options.connection_timeout,
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            peer.options.total_connection_timeout,
            Some(Duration::from_secs(3))
        );
        assert_eq!(peer.options.read_timeout, Some(Duration::from_secs(4)));
        assert_eq!(peer.options.write_timeout, None);
        assert!(peer.options.verify_cert && peer.options.verify_hostname);
        let insecure = connector(true).peer(&t, &timeouts()).await.expect("peer");
        assert!(!insecure.options.verify_cert && !insecure.options.verify_hostname);
        // The identity provider's connector verifies whatever --insecure says.
        let idp = connector(true)
            .verifying()
            .peer(&t, &timeouts())
            .await
            .expect("peer");
        assert!(idp.options.verify_cert);
    }

    #[tokio::test]
    async fn names_resolve_through_the_cache_and_unix_paths_connect() {
        let c = connector(false);
        let t = Target::parse("http://localhost:9/").expect("target");
        let peer = c.peer(&t, &timeouts()).await.expect("localhost resolves");
        assert!(peer._address.to_string().contains(":9"));

        let dir = std::env::temp_dir().join(format!("hubgate-net-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let sock = dir.join("s.sock");
        let _listener = tokio::net::UnixListener::bind(&sock).expect("bind");
        let url = format!(
            "http+unix://{}",
            percent_encoding::utf8_percent_encode(
                &sock.display().to_string(),
                percent_encoding::NON_ALPHANUMERIC
            )
        );
        let t = Target::parse(&url).expect("unix target");
        let s = c
            .stream(&t, Duration::from_secs(1))
            .await
            .expect("connects");
        assert!(matches!(s, TargetStream::Unix(_)));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn bare_streams_refuse_tls_targets_and_report_refusals() {
        let c = connector(false);
        let tls = Target::parse("https://127.0.0.1:1/").expect("target");
        let e = c
            .stream(&tls, Duration::from_secs(1))
            .await
            .expect_err("tls");
        assert_eq!(e.kind(), io::ErrorKind::Unsupported);
        // A port nothing listens on.
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        drop(l);
        let t = Target::parse(&format!("http://127.0.0.1:{port}/")).expect("target");
        let e = c
            .stream(&t, Duration::from_secs(1))
            .await
            .expect_err("refused");
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
    }
}
