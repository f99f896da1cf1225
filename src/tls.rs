//! TLS material: listener certificates (served through a swappable resolver, so a later
//! reload never drops a connection), client-certificate verification, and the client side
//! toward https targets.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use pingora::listeners::tls::TlsSettings;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use thiserror::Error;

use crate::config::ServerTls;
use crate::net::ClientTlsMaterial;

/// TLS material that cannot be loaded; names the file and what is wrong.
#[derive(Debug, Error)]
pub enum TlsError {
    /// A file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// A file holds no usable PEM item of the expected kind.
    #[error("{path}: {what}")]
    Content { path: String, what: String },
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// Loads a PEM certificate chain.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Content {
            path: path.display().to_string(),
            what: format!("not a PEM certificate file ({e})"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Content {
            path: path.display().to_string(),
            what: "no CERTIFICATE block found".into(),
        });
    }
    Ok(certs)
}

/// Loads a PEM private key (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path, passphrase: Option<&str>) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    let text = String::from_utf8_lossy(&pem);
    if text.contains("ENCRYPTED") {
        let hint = if passphrase.is_some() {
            "is encrypted; hubgate cannot decrypt private keys yet: decrypt it with `openssl pkey -in KEY -out KEY.plain` and protect the file's permissions instead"
        } else {
            "is encrypted and no passphrase was given; decrypt it with `openssl pkey -in KEY -out KEY.plain`"
        };
        return Err(TlsError::Content {
            path: path.display().to_string(),
            what: hint.into(),
        });
    }
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| TlsError::Content {
            path: path.display().to_string(),
            what: format!("not a PEM key file ({e})"),
        })?
        .ok_or_else(|| TlsError::Content {
            path: path.display().to_string(),
            what: "no PRIVATE KEY block found".into(),
        })
}

fn certified_key(tls: &ServerTls) -> Result<CertifiedKey, TlsError> {
    let certs = load_certs(&tls.cert)?;
    let key = load_key(&tls.key, tls.key_passphrase.as_deref())?;
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(certs, key, &provider).map_err(|e| TlsError::Content {
        path: format!("{} with {}", tls.cert.display(), tls.key.display()),
        what: format!("the certificate and key do not load together ({e})"),
    })
}

/// Serves the current certificate; `reload` swaps it without touching open connections.
pub struct ReloadableCert {
    current: ArcSwap<CertifiedKey>,
}

impl fmt::Debug for ReloadableCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadableCert").finish_non_exhaustive()
    }
}

impl ReloadableCert {
    /// Loads the certificate and key named in `tls`.
    pub fn load(tls: &ServerTls) -> Result<ReloadableCert, TlsError> {
        Ok(ReloadableCert {
            current: ArcSwap::from_pointee(certified_key(tls)?),
        })
    }

    /// Re-reads the files; on error the old certificate stays in use.
    pub fn reload(&self, tls: &ServerTls) -> Result<(), TlsError> {
        self.current.store(Arc::new(certified_key(tls)?));
        Ok(())
    }
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let _ = hello;
        Some(self.current.load_full())
    }
}

fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|e| TlsError::Content {
            path: path.display().to_string(),
            what: format!("unusable CA certificate ({e})"),
        })?;
    }
    Ok(roots)
}

/// Builds pingora's TLS settings for a listener.
pub fn listener_settings(tls: &ServerTls) -> Result<(TlsSettings, Arc<ReloadableCert>), TlsError> {
    let resolver = Arc::new(ReloadableCert::load(tls)?);
    // The file paths are not used once a resolver is set; pingora only needs them non-empty.
    let mut settings = TlsSettings::intermediate("", "").map_err(|e| TlsError::Content {
        path: tls.cert.display().to_string(),
        what: e.to_string(),
    })?;
    settings.set_cert_resolver(resolver.clone());
    if let Some(ca) = &tls.client_ca {
        if tls.request_cert {
            let roots = Arc::new(load_roots(ca)?);
            let builder = WebPkiClientVerifier::builder(roots);
            let builder = if tls.reject_unauthorized {
                builder
            } else {
                builder.allow_unauthenticated()
            };
            let verifier = builder.build().map_err(|e| TlsError::Content {
                path: ca.display().to_string(),
                what: format!("cannot verify clients with this CA ({e})"),
            })?;
            settings.set_client_cert_verifier(verifier);
        }
    }
    Ok((settings, resolver))
}

/// Loads the client certificate, key and CA toward https targets given in the configuration.
pub fn client_material(cfg: &crate::config::ClientTls) -> Result<ClientTlsMaterial, TlsError> {
    let mut out = ClientTlsMaterial::default();
    if let (Some(cert), Some(key)) = (&cfg.cert, &cfg.key) {
        let certs: Vec<Vec<u8>> = load_certs(cert)?.into_iter().map(|c| c.to_vec()).collect();
        let key = load_key(key, None)?;
        out.cert_key = Some(Arc::new(pingora::utils::tls::CertKey::new(
            certs,
            key.secret_der().to_vec(),
        )));
    }
    if let Some(ca) = &cfg.ca {
        let list: Vec<pingora::utils::tls::WrappedX509> = load_certs(ca)?
            .into_iter()
            .map(|c| {
                pingora::utils::tls::WrappedX509::new(c.to_vec(), pingora::utils::tls::parse_x509)
            })
            .collect();
        out.ca = Some(Arc::from(list.into_boxed_slice()));
    }
    Ok(out)
}
