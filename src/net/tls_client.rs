//! The rustls client configuration for TLS streams hubgate relays itself (websockets to
//! `https://` targets).
//!
//! pingora's connector builds a new `ClientConfig` for *every* connection when the peer
//! carries a CA list or a client certificate (`--client-ssl-ca`, `--client-ssl-cert`: the
//! JupyterHub internal_ssl case): a new root store and a new session cache, which then
//! keeps the target's session tickets, each with a copy of its certificate chain. A
//! `ClientConnection` holds its configuration for its whole life, so every idle websocket
//! to an https target carried all of that (`docs/performance.md`, "Websocket memory
//! path"). This configuration is built once, from the same material and with the same
//! rules as the forwarding path's peers ([`super::Connector::peer`]): the CA list of
//! `--client-ssl-ca` (the system roots without it), the client certificate, TLS 1.2 and
//! 1.3, HTTP/1.1 by ALPN, and certificate plus host name verification unless
//! `--insecure`. Sessions are resumed from one bounded cache for the process.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::ClientTlsMaterial;

/// Builds the configuration; the error says what in the material rustls refuses.
pub fn client_config(
    material: &ClientTlsMaterial,
    insecure: bool,
) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    match &material.ca {
        Some(list) => {
            for ca in list.iter() {
                roots
                    .add(CertificateDer::from(ca))
                    .map_err(|e| format!("unusable CA certificate for https targets: {e}"))?;
            }
        }
        // What pingora's connector trusts without a CA list (SSL_CERT_FILE/SSL_CERT_DIR
        // included).
        None => pingora::tls::load_platform_certs_incl_env_into_store(&mut roots)
            .map_err(|e| format!("cannot load the system's CA certificates: {e}"))?,
    }
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let mut config = match &material.cert_key {
        Some(ck) => {
            let mut chain: Vec<CertificateDer<'static>> = vec![ck.leaf().into()];
            chain.extend(ck.intermediates().into_iter().map(CertificateDer::from));
            let key = PrivateKeyDer::try_from(ck.key().clone())
                .map_err(|e| format!("client key for https targets: {e}"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("client certificate for https targets: {e}"))?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    if insecure {
        config
            .dangerous()
            .set_certificate_verifier(Arc::new(AnyCertificate(provider)));
    }
    Ok(Arc::new(config))
}

/// `--insecure`: any certificate is accepted, as pingora's `SkipAll` does for the forwarding
/// path; the handshake's signatures are still checked against the certificate presented.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
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
        verify_tls12_signature(
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
        verify_tls13_signature(
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
