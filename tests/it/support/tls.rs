//! Certificates (openssl CLI): self-signed server certificates, and a private CA issuing
//! server and client certificates for mutual TLS. A rustls client that can present a
//! client certificate and shows the certificate the server presented, and rustls server
//! configurations for TLS backends.

use super::client::{Conn, IO_TIMEOUT};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::io::{self, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// A certificate and its private key, as PEM files.
#[derive(Clone, Debug)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertFiles {
    /// DER of the first certificate in the file: what a peer sees in the handshake.
    pub fn der(&self) -> Vec<u8> {
        self.chain()
            .into_iter()
            .next()
            .expect("a certificate in the PEM")
            .to_vec()
    }

    /// The certificate chain, for a rustls configuration.
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        let pem = std::fs::read(&self.cert).expect("read certificate");
        rustls_pemfile::certs(&mut pem.as_slice())
            .collect::<Result<_, _>>()
            .expect("parsable certificates")
    }

    /// The private key, for a rustls configuration.
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        let pem = std::fs::read(&self.key).expect("read key");
        rustls_pemfile::private_key(&mut pem.as_slice())
            .expect("a parsable key")
            .expect("a private key in the PEM")
    }
}

/// The key type of a generated certificate.
#[derive(Clone, Copy, Debug)]
pub enum KeyKind {
    Rsa2048,
    /// ECDSA P-256: much faster to generate than RSA.
    EcP256,
}

impl KeyKind {
    fn newkey_args(self) -> &'static [&'static str] {
        match self {
            KeyKind::Rsa2048 => &["-newkey", "rsa:2048"],
            KeyKind::EcP256 => &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"],
        }
    }
}

fn run_openssl(cmd: &mut Command) {
    let out = cmd
        .output()
        .expect("run openssl (is the openssl CLI installed?)");
    assert!(
        out.status.success(),
        "openssl {:?} failed: {}",
        cmd.get_args().collect::<Vec<_>>(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The extensions of a server certificate for localhost/127.0.0.1. Not a CA: webpki
/// refuses a CA certificate as the server's own.
const SERVER_EXTS: [&str; 6] = [
    "-addext",
    "subjectAltName=DNS:localhost,IP:127.0.0.1",
    "-addext",
    "basicConstraints=critical,CA:FALSE",
    "-addext",
    "extendedKeyUsage=serverAuth",
];

/// Writes `cert.pem` and `key.pem` into `dir` (created if missing): a self-signed server
/// certificate for localhost and 127.0.0.1 with subject `CN=cn`, serial `serial` (openssl
/// picks one if `None`).
pub fn self_signed_cert(dir: &Path, cn: &str, serial: Option<&str>, key: KeyKind) -> CertFiles {
    std::fs::create_dir_all(dir).expect("create certificate dir");
    let files = CertFiles {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    let mut cmd = Command::new("openssl");
    cmd.args(["req", "-x509", "-nodes", "-days", "2"])
        .args(key.newkey_args())
        .args(["-subj", &format!("/CN={cn}")]);
    if let Some(s) = serial {
        cmd.args(["-set_serial", s]);
    }
    cmd.args(SERVER_EXTS)
        .arg("-keyout")
        .arg(&files.key)
        .arg("-out")
        .arg(&files.cert);
    run_openssl(&mut cmd);
    files
}

/// Writes `cert.pem` and `key.pem` (RSA 2048, self-signed, SAN localhost and
/// 127.0.0.1) into `dir`.
pub fn generate_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let f = self_signed_cert(dir, "localhost", None, KeyKind::Rsa2048);
    (f.cert, f.key)
}

/// What a CA-issued certificate is for.
#[derive(Clone, Copy, Debug)]
pub enum Usage {
    /// TLS server for localhost / 127.0.0.1.
    Server,
    /// TLS client (mutual TLS).
    Client,
}

/// A private certificate authority in a directory; issues ECDSA certificates.
pub struct Ca {
    pub files: CertFiles,
    dir: PathBuf,
    serial: AtomicU32,
}

impl Ca {
    /// A new self-signed CA `CN=cn` with its files under `dir/cn/`.
    pub fn new(dir: &Path, cn: &str) -> Ca {
        let dir = dir.join(cn);
        std::fs::create_dir_all(&dir).expect("create CA dir");
        let files = CertFiles {
            cert: dir.join("ca.pem"),
            key: dir.join("ca-key.pem"),
        };
        run_openssl(
            Command::new("openssl")
                .args(["req", "-x509", "-nodes", "-days", "2"])
                .args(KeyKind::EcP256.newkey_args())
                .args(["-subj", &format!("/CN={cn}")])
                .args(["-addext", "basicConstraints=critical,CA:TRUE"])
                .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
                .arg("-keyout")
                .arg(&files.key)
                .arg("-out")
                .arg(&files.cert),
        );
        Ca {
            files,
            dir,
            serial: AtomicU32::new(1),
        }
    }

    /// The CA certificate (what a peer trusts).
    pub fn cert(&self) -> &Path {
        &self.files.cert
    }

    /// Issues a certificate `CN=cn` for `usage`, written as `{name}.pem` / `{name}-key.pem`
    /// next to the CA.
    pub fn issue(&self, name: &str, cn: &str, usage: Usage) -> CertFiles {
        let files = CertFiles {
            cert: self.dir.join(format!("{name}.pem")),
            key: self.dir.join(format!("{name}-key.pem")),
        };
        let serial = self.serial.fetch_add(1, Ordering::SeqCst) + 0x1000;
        let mut cmd = Command::new("openssl");
        // `req -x509 -CA` (OpenSSL 3) signs with the CA in one step.
        cmd.args(["req", "-x509", "-nodes", "-days", "2"])
            .args(KeyKind::EcP256.newkey_args())
            .args(["-subj", &format!("/CN={cn}")])
            .args(["-set_serial", &serial.to_string()])
            .arg("-CA")
            .arg(&self.files.cert)
            .arg("-CAkey")
            .arg(&self.files.key);
        match usage {
            Usage::Server => {
                cmd.args(SERVER_EXTS);
            }
            Usage::Client => {
                cmd.args(["-addext", "basicConstraints=critical,CA:FALSE"])
                    .args(["-addext", "extendedKeyUsage=clientAuth"]);
            }
        }
        cmd.arg("-keyout")
            .arg(&files.key)
            .arg("-out")
            .arg(&files.cert);
        run_openssl(&mut cmd);
        files
    }
}

/// How a test client checks the server's certificate.
#[derive(Clone, Copy, Debug)]
pub enum ServerTrust<'a> {
    /// Trust only the certificates in this PEM file.
    Ca(&'a Path),
    /// Accept any certificate (the handshake signature is still checked): for tests that
    /// only want to see which certificate is served.
    Any,
}

/// Accepts any server certificate, but still checks the handshake signature against it.
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
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
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca_pem: &Path) -> io::Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    let mut rd = BufReader::new(std::fs::File::open(ca_pem)?);
    for c in rustls_pemfile::certs(&mut rd) {
        roots.add(c?).map_err(|e| io::Error::other(e.to_string()))?;
    }
    Ok(roots)
}

/// A rustls client configuration: `trust` for the server, optionally presenting `client`.
pub fn client_config(
    trust: ServerTrust<'_>,
    client: Option<&CertFiles>,
) -> io::Result<Arc<rustls::ClientConfig>> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| io::Error::other(e.to_string()))?;
    let builder = match trust {
        ServerTrust::Ca(ca) => builder.with_root_certificates(roots(ca)?),
        ServerTrust::Any => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny(provider))),
    };
    let config = match client {
        Some(c) => builder
            .with_client_auth_cert(c.chain(), c.private_key())
            .map_err(|e| io::Error::other(e.to_string()))?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// A TLS connection to 127.0.0.1:`port` with SNI `server_name`; the handshake is complete
/// on return, so certificate errors surface here. Also returns the DER of the certificate
/// the server presented.
pub fn tls_connect(
    port: u16,
    server_name: &str,
    config: Arc<rustls::ClientConfig>,
) -> io::Result<(Conn, Vec<u8>)> {
    let name = ServerName::try_from(server_name.to_string())
        .map_err(|e| io::Error::other(e.to_string()))?;
    let conn =
        rustls::ClientConnection::new(config, name).map_err(|e| io::Error::other(e.to_string()))?;
    let tcp = TcpStream::connect(("127.0.0.1", port))?;
    tcp.set_nodelay(true)?;
    tcp.set_read_timeout(Some(IO_TIMEOUT))?;
    tcp.set_write_timeout(Some(IO_TIMEOUT))?;
    let ctl = tcp.try_clone()?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    let der = tls
        .conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .ok_or_else(|| io::Error::other("no peer certificate"))?;
    Ok((
        Conn::wrap(Box::new(tls), ctl, &format!("localhost:{port}")),
        der,
    ))
}

/// A TLS connection to 127.0.0.1:`port` trusting only `ca_pem`, with SNI
/// `server_name`.
pub fn tls_conn(port: u16, ca_pem: &Path, server_name: &str) -> io::Result<Conn> {
    let config = client_config(ServerTrust::Ca(ca_pem), None)?;
    tls_connect(port, server_name, config).map(|(c, _)| c)
}

/// A rustls server configuration for a TLS backend serving `server`; with `client_ca`,
/// clients must present a certificate issued by it (the handshake fails otherwise).
pub fn server_config(server: &CertFiles, client_ca: Option<&Path>) -> Arc<rustls::ServerConfig> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("TLS versions");
    let builder = match client_ca {
        Some(ca) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots(ca).expect("read client CA")),
                provider(),
            )
            .build()
            .expect("client verifier");
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    Arc::new(
        builder
            .with_single_cert(server.chain(), server.private_key())
            .expect("server certificate and key"),
    )
}
