//! TLS for the MSNP and HTTPS listeners: rustls with the ring provider.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::Config;
use crate::tokens::write_private;

/// The certificate chain and key in use, and where the certificate is on disk.
pub struct TlsMaterial {
    /// Certificate chain, leaf first.
    pub certs: Vec<CertificateDer<'static>>,
    /// Private key.
    pub key: PrivateKeyDer<'static>,
    /// PEM file of the certificate.
    pub cert_path: PathBuf,
}

fn read_pem_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem =
        std::fs::read(path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("parsing {}: {e}", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{} holds no certificate", path.display());
    }
    Ok(certs)
}

fn read_pem_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    let pem =
        std::fs::read(path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| anyhow::anyhow!("parsing {}: {e}", path.display()))?
        .ok_or_else(|| anyhow::anyhow!("{} holds no private key", path.display()))
}

/// The operator's certificate from config, or a self-signed one generated in the data directory
/// on first run and reused afterwards.
pub fn load_or_generate(config: &Config) -> anyhow::Result<TlsMaterial> {
    if let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) {
        return Ok(TlsMaterial {
            certs: read_pem_certs(cert)?,
            key: read_pem_key(key)?,
            cert_path: cert.clone(),
        });
    }
    if config.tls_cert.is_some() != config.tls_key.is_some() {
        anyhow::bail!("tls_cert and tls_key must be given together");
    }
    let dir = config.data_dir.join("tls");
    let cert_path = dir.join("server.crt");
    let key_path = dir.join("server.key");
    if !cert_path.exists() || !key_path.exists() {
        std::fs::create_dir_all(&dir)?;
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let generated = rcgen::generate_simple_self_signed(names)
            .map_err(|e| anyhow::anyhow!("generating a certificate: {e}"))?;
        let _ = std::fs::remove_file(&key_path);
        write_private(&key_path, generated.key_pair.serialize_pem().as_bytes())?;
        std::fs::write(&cert_path, generated.cert.pem())?;
        tracing::warn!(
            cert = %cert_path.display(),
            "no TLS certificate configured: generated a self-signed one (clients must trust this file)"
        );
    }
    Ok(TlsMaterial {
        certs: read_pem_certs(&cert_path)?,
        key: read_pem_key(&key_path)?,
        cert_path,
    })
}

/// A rustls acceptor for the given material.
pub fn acceptor(material: &TlsMaterial) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(material.certs.clone(), material.key.clone_key())?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
