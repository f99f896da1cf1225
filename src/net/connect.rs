//! One way to connect to a [`Target`]: the proxy's upstream peers, the websocket relay's bare
//! streams and the outbound client all go through [`Connector`], so name resolution, TLS
//! verification and client certificates are decided in one place.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use pingora::tls::TlsConnector;
use pingora::upstreams::peer::HttpPeer;
use rustls::pki_types::ServerName;
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
    /// The TLS client for streams hubgate relays itself (websockets to `https://` targets):
    /// one configuration for the process, built on first use from the same material and
    /// rules as [`Connector::peer`] (see [`super::tls_client`]); the error, if rustls
    /// refuses the material, is returned to every such connection.
    relay_tls: Arc<OnceLock<Result<TlsConnector, String>>>,
}

/// A TLS stream to an `https://` target, straight over its socket.
pub type TlsTargetStream = pingora::tls::ClientTlsStream<TcpStream>;

impl Connector {
    /// A connector sharing `resolver`, verifying https targets with `tls` unless `insecure`.
    pub fn new(resolver: Arc<Resolver>, tls: Arc<ClientTlsMaterial>, insecure: bool) -> Self {
        Connector {
            resolver,
            tls,
            insecure,
            relay_tls: Arc::default(),
        }
    }

    /// The same connector, but always verifying certificates (the identity provider is
    /// verified even with `--insecure`, which is about targets only).
    pub fn verifying(&self) -> Connector {
        Connector {
            insecure: false,
            relay_tls: if self.insecure {
                Arc::default()
            } else {
                self.relay_tls.clone()
            },
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
    /// [`Connector::peer`] says), within `t.connect` for TCP and `t.total_connect` in all
    /// (twice `t.connect` without it). TCP keep-alive probes after 60 s idle and no read or
    /// write timeouts, as for [`Connector::stream`]: the relay has no idle limit.
    ///
    /// Not pingora's connector: it builds a configuration per connection for peers with a
    /// CA list or client certificate, and its stream wrapper keeps digests and a copy of
    /// the peer's certificates; an idle websocket held all of it for hours
    /// (`docs/performance.md`, "Websocket memory path").
    pub async fn tls_stream(
        &self,
        target: &Target,
        t: &PeerTimeouts,
    ) -> io::Result<TlsTargetStream> {
        if !target.tls {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "TLS streams are for https targets",
            ));
        }
        let tls = self
            .relay_tls
            .get_or_init(|| {
                super::tls_client::client_config(&self.tls, self.insecure).map(TlsConnector::from)
            })
            .as_ref()
            // A rustls error inside: classified as a TLS failure, as pingora's InvalidCert was.
            .map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    rustls::Error::General(e.clone()),
                )
            })?
            .clone();
        let name = ServerName::try_from(target.sni.clone())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let bound = t.total_connect.unwrap_or(t.connect + t.connect);
        let connect = async {
            let tcp = tokio::time::timeout(t.connect, self.tcp(target, t.resolve))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
            tls.connect(name, tcp).await
        };
        tokio::time::timeout(bound, connect)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))?
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
                TargetAddr::Unix(path) => UnixStream::connect(path).await.map(TargetStream::Unix),
                _ => self.tcp(target, timeout).await.map(TargetStream::Tcp),
            }
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))?
    }

    /// A TCP connection to `target` (its name resolved within `resolve`), with `TCP_NODELAY`
    /// and keep-alive probes after 60 s idle, then every 15 s.
    async fn tcp(&self, target: &Target, resolve: Duration) -> io::Result<TcpStream> {
        let addr = match &target.addr {
            TargetAddr::Ip(addr) => *addr,
            TargetAddr::Name { host, port } => self.resolver.resolve(host, *port, resolve).await?,
            TargetAddr::Unix(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "a unix socket target has no TCP address",
                ))
            }
        };
        let s = TcpStream::connect(addr).await?;
        let _ = s.set_nodelay(true);
        let sock = socket2::SockRef::from(&s);
        let _ = sock.set_tcp_keepalive(
            &socket2::TcpKeepalive::new()
                .with_time(Duration::from_secs(60))
                .with_interval(Duration::from_secs(15)),
        );
        Ok(s)
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
