//! Self-signed certificates (openssl CLI) and a rustls client connection.

use super::client::{Conn, IO_TIMEOUT};
use std::io::{self, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

/// Writes `cert.pem` and `key.pem` (RSA 2048, self-signed, SAN localhost and
/// 127.0.0.1) into `dir`.
pub fn generate_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
        ])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        // Not a CA: webpki refuses a CA certificate as the server's own.
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .args(["-addext", "extendedKeyUsage=serverAuth"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl (is the openssl CLI installed?)");
    assert!(
        out.status.success(),
        "openssl req failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

/// A TLS connection to 127.0.0.1:`port` trusting only `ca_pem`, with SNI
/// `server_name`.
pub fn tls_conn(port: u16, ca_pem: &Path, server_name: &str) -> io::Result<Conn> {
    let mut roots = rustls::RootCertStore::empty();
    let mut rd = BufReader::new(std::fs::File::open(ca_pem)?);
    for c in rustls_pemfile::certs(&mut rd) {
        roots.add(c?).map_err(|e| io::Error::other(e.to_string()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| io::Error::other(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(server_name.to_string())
        .map_err(|e| io::Error::other(e.to_string()))?;
    let conn = rustls::ClientConnection::new(Arc::new(config), name)
        .map_err(|e| io::Error::other(e.to_string()))?;
    let tcp = TcpStream::connect(("127.0.0.1", port))?;
    tcp.set_nodelay(true)?;
    tcp.set_read_timeout(Some(IO_TIMEOUT))?;
    tcp.set_write_timeout(Some(IO_TIMEOUT))?;
    let ctl = tcp.try_clone()?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    // Complete the handshake now so certificate errors surface here.
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    Ok(Conn::wrap(Box::new(tls), ctl, &format!("localhost:{port}")))
}
