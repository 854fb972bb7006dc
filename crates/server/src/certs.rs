//! Certificates: a local certificate authority created in the data directory on first run, and a
//! server certificate it signs for the configured host names, used by every TLS listener. Clients
//! trust the CA once (`msnp24 cert export`); an operator's own certificate replaces all of this.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::Config;
use crate::tokens::write_private;

/// The certificate chain and key in use, and where they are on disk.
pub struct TlsMaterial {
    /// Certificate chain, leaf first.
    pub certs: Vec<CertificateDer<'static>>,
    /// Private key.
    pub key: PrivateKeyDer<'static>,
    /// PEM file of the server certificate.
    pub cert_path: PathBuf,
    /// PEM file of the local CA, when the server generated its own certificates.
    pub ca_path: Option<PathBuf>,
}

/// Where the generated files live.
pub struct CertPaths {
    /// CA certificate (PEM): what clients trust.
    pub ca_cert: PathBuf,
    /// CA private key (PEM, mode 0600).
    pub ca_key: PathBuf,
    /// Server certificate (PEM).
    pub server_cert: PathBuf,
    /// Server private key (PEM, mode 0600).
    pub server_key: PathBuf,
    /// The host names the server certificate was issued for, one per line.
    pub server_names: PathBuf,
}

impl CertPaths {
    /// The paths inside `data_dir/tls`.
    pub fn new(data_dir: &Path) -> CertPaths {
        let dir = data_dir.join("tls");
        CertPaths {
            ca_cert: dir.join("ca.crt"),
            ca_key: dir.join("ca.key"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
            server_names: dir.join("server.names"),
        }
    }
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

fn read_text(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))
}

fn rc(e: rcgen::Error) -> anyhow::Error {
    anyhow::anyhow!("certificate generation: {e}")
}

/// Replaces a private file: written aside and renamed, so a crash never leaves half a key.
fn replace_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    write_private(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn replace_public(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Loads the local CA, creating it on first run. Returns its certificate (re-derived from the
/// stored PEM so it can sign) and key.
fn ensure_ca(paths: &CertPaths) -> anyhow::Result<(rcgen::Certificate, KeyPair)> {
    if paths.ca_cert.exists() && paths.ca_key.exists() {
        let key = KeyPair::from_pem(&read_text(&paths.ca_key)?).map_err(rc)?;
        let params =
            CertificateParams::from_ca_cert_pem(&read_text(&paths.ca_cert)?).map_err(rc)?;
        // Re-signing the parsed parameters gives an equivalent issuer (same name and key) for
        // signing; the file on disk, which clients trust, is left as it is.
        let cert = params.self_signed(&key).map_err(rc)?;
        return Ok((cert, key));
    }
    if let Some(dir) = paths.ca_cert.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let key = KeyPair::generate().map_err(rc)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(rc)?;
    let mut dn = DistinguishedName::new();
    let tag: u32 = rand::random();
    dn.push(DnType::CommonName, format!("msnp24 local CA {tag:08x}"));
    dn.push(DnType::OrganizationName, "msnp24");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(3650);
    let cert = params.self_signed(&key).map_err(rc)?;
    replace_private(&paths.ca_key, key.serialize_pem().as_bytes())?;
    replace_public(&paths.ca_cert, cert.pem().as_bytes())?;
    tracing::warn!(
        ca = %paths.ca_cert.display(),
        "created a local certificate authority: clients must trust this file (msnp24 cert export)"
    );
    Ok((cert, key))
}

fn issue_server_cert(paths: &CertPaths, names: &[String]) -> anyhow::Result<()> {
    let (ca, ca_key) = ensure_ca(paths)?;
    let key = KeyPair::generate().map_err(rc)?;
    let mut params = CertificateParams::new(names.to_vec()).map_err(rc)?;
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        names.first().cloned().unwrap_or_else(|| "localhost".into()),
    );
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    // 825 days is the longest server-certificate lifetime some client platforms accept.
    params.not_after = now + time::Duration::days(825);
    let cert = params.signed_by(&key, &ca, &ca_key).map_err(rc)?;
    replace_private(&paths.server_key, key.serialize_pem().as_bytes())?;
    replace_public(&paths.server_cert, cert.pem().as_bytes())?;
    replace_public(&paths.server_names, names.join("\n").as_bytes())?;
    tracing::info!(names = ?names, cert = %paths.server_cert.display(), "issued a server certificate from the local CA");
    Ok(())
}

/// The operator's certificate from config, or the local CA's server certificate for
/// `config.tls_names`, issued on first run and again whenever the names change.
pub fn load_or_generate(config: &Config) -> anyhow::Result<TlsMaterial> {
    match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => {
            return Ok(TlsMaterial {
                certs: read_pem_certs(cert)?,
                key: read_pem_key(key)?,
                cert_path: cert.clone(),
                ca_path: None,
            })
        }
        (None, None) => {}
        _ => anyhow::bail!("tls_cert and tls_key must be given together"),
    }
    if config.tls_names.is_empty() {
        anyhow::bail!("tls_names is empty: the server certificate needs at least one name");
    }
    let paths = CertPaths::new(&config.data_dir);
    let current = std::fs::read_to_string(&paths.server_names).ok();
    let wanted = config.tls_names.join("\n");
    if !paths.ca_cert.exists()
        || !paths.server_cert.exists()
        || !paths.server_key.exists()
        || current.as_deref() != Some(wanted.as_str())
    {
        issue_server_cert(&paths, &config.tls_names)?;
    }
    let mut certs = read_pem_certs(&paths.server_cert)?;
    // Sending the CA along lets clients that trust it build the chain without a lookup.
    certs.extend(read_pem_certs(&paths.ca_cert)?);
    tracing::info!(ca = %paths.ca_cert.display(), "TLS uses the local CA; clients trust this certificate");
    Ok(TlsMaterial {
        certs,
        key: read_pem_key(&paths.server_key)?,
        cert_path: paths.server_cert,
        ca_path: Some(paths.ca_cert),
    })
}

/// Formats `msnp24 cert export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// PEM text.
    Pem,
    /// A PKCS#12 trust store holding the CA certificate (empty password).
    Pkcs12,
}

/// The certificate clients must trust (the local CA, or the operator's chain), in `format`;
/// creates the CA if the server has not run yet.
pub fn export_trust(config: &Config, format: ExportFormat) -> anyhow::Result<Vec<u8>> {
    let certs = match &config.tls_cert {
        Some(cert) => read_pem_certs(cert)?,
        None => {
            let paths = CertPaths::new(&config.data_dir);
            ensure_ca(&paths)?;
            read_pem_certs(&paths.ca_cert)?
        }
    };
    match format {
        ExportFormat::Pem => {
            let mut out = String::new();
            for c in &certs {
                out.push_str(&pem_encode("CERTIFICATE", c.as_ref()));
            }
            Ok(out.into_bytes())
        }
        ExportFormat::Pkcs12 => {
            let mut store = p12_keystore::KeyStore::new();
            for (i, c) in certs.iter().enumerate() {
                let cert = p12_keystore::Certificate::from_der(c.as_ref())
                    .map_err(|e| anyhow::anyhow!("reading certificate: {e}"))?;
                store.add_entry(
                    &format!("msnp24-ca-{i}"),
                    p12_keystore::KeyStoreEntry::Certificate(cert),
                );
            }
            store
                .writer("")
                .write()
                .map_err(|e| anyhow::anyhow!("writing PKCS#12: {e}"))
        }
    }
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path, names: &[&str]) -> Config {
        Config {
            data_dir: dir.to_path_buf(),
            tls_names: names.iter().map(|s| s.to_string()).collect(),
            ..Config::default()
        }
    }

    #[test]
    fn ca_is_kept_and_server_cert_follows_names() {
        let dir = tempfile::tempdir().unwrap();
        let m1 = load_or_generate(&config(dir.path(), &["localhost", "login.live.com"])).unwrap();
        let ca1 = std::fs::read(m1.ca_path.as_ref().unwrap()).unwrap();
        let m2 = load_or_generate(&config(dir.path(), &["localhost", "login.live.com"])).unwrap();
        assert_eq!(m1.certs, m2.certs, "unchanged names reuse the certificate");
        let m3 = load_or_generate(&config(dir.path(), &["localhost", "api.skype.com"])).unwrap();
        assert_ne!(
            m1.certs[0], m3.certs[0],
            "new names, new server certificate"
        );
        assert_eq!(
            std::fs::read(m3.ca_path.as_ref().unwrap()).unwrap(),
            ca1,
            "same CA"
        );
        assert_eq!(m3.certs.len(), 2);
    }

    #[test]
    fn an_operators_certificate_replaces_the_local_ca() {
        let dir = tempfile::tempdir().unwrap();
        let own = rcgen::generate_simple_self_signed(vec!["chat.example.org".into()]).unwrap();
        let (cert, key) = (dir.path().join("own.crt"), dir.path().join("own.key"));
        std::fs::write(&cert, own.cert.pem()).unwrap();
        std::fs::write(&key, own.key_pair.serialize_pem()).unwrap();
        let c = Config {
            tls_cert: Some(cert.clone()),
            tls_key: Some(key),
            ..config(dir.path(), &["localhost"])
        };
        let m = load_or_generate(&c).unwrap();
        assert_eq!(m.ca_path, None);
        assert_eq!(m.certs, vec![own.cert.der().clone()]);
        assert!(
            !CertPaths::new(dir.path()).ca_cert.exists(),
            "no local CA was made"
        );
        assert_eq!(
            export_trust(&c, ExportFormat::Pem).unwrap(),
            std::fs::read(&cert).unwrap()
        );
        let half = Config { tls_key: None, ..c };
        assert!(
            load_or_generate(&half).is_err(),
            "a certificate without its key is refused"
        );
    }

    #[test]
    fn exports_pem_and_pkcs12() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path(), &["localhost"]);
        let pem = export_trust(&c, ExportFormat::Pem).unwrap();
        assert_eq!(
            pem,
            std::fs::read(CertPaths::new(dir.path()).ca_cert).unwrap()
        );
        let p12 = export_trust(&c, ExportFormat::Pkcs12).unwrap();
        let store = p12_keystore::KeyStore::from_pkcs12(
            &p12,
            "",
            p12_keystore::Pkcs12ImportPolicy::Relaxed,
        )
        .unwrap();
        assert_eq!(store.entries_len(), 1);
    }
}
