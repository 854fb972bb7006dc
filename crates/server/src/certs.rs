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
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportFormat {
    /// PEM text.
    Pem,
    /// A PKCS#12 trust store holding the CA certificate. Without a password the certificate is
    /// stored in the clear with no MAC, which is what a JVM given a trust store and no password
    /// reads (it skips encrypted bags it cannot open); with one, it is encrypted and MAC'd.
    Pkcs12 {
        /// The password protecting the file, if any.
        password: Option<String>,
    },
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
        ExportFormat::Pkcs12 { password: None } => trust_store_in_the_clear(&certs),
        ExportFormat::Pkcs12 {
            password: Some(password),
        } => {
            let mut store = p12_keystore::KeyStore::new();
            for (i, c) in certs.iter().enumerate() {
                let cert = p12_keystore::Certificate::from_der(c.as_ref())
                    .map_err(|e| anyhow::anyhow!("reading certificate: {e}"))?;
                store.add_entry(
                    &trust_alias(i),
                    p12_keystore::KeyStoreEntry::Certificate(cert),
                );
            }
            store
                .writer(&password)
                .write()
                .map_err(|e| anyhow::anyhow!("writing PKCS#12: {e}"))
        }
    }
}

/// The alias (friendly name) of the `i`th certificate in an exported trust store.
fn trust_alias(i: usize) -> String {
    format!("msnp24-ca-{i}")
}

/// Java's "trusted certificate" bag attribute: a certificate bag carrying it is a trust anchor
/// for the key usages it lists (`keytool` writes anyExtendedKeyUsage).
pub const JAVA_TRUSTED_KEY_USAGE: &str = "2.16.840.1.113894.746875.1.1";
const ANY_EXTENDED_KEY_USAGE: &str = "2.5.29.37.0";
const FRIENDLY_NAME: &str = "1.2.840.113549.1.9.20";
const PKCS7_DATA: &str = "1.2.840.113549.1.7.1";

/// A password-less PKCS#12 trust store (RFC 7292): one `data` SafeContents of certificate bags,
/// unencrypted, and no `MacData` (a MAC under an empty password proves nothing, and a JVM with
/// no password neither checks one nor opens encrypted bags). p12-keystore always encrypts, so
/// the structure is assembled from the `pkcs12` crate's types.
fn trust_store_in_the_clear(certs: &[CertificateDer<'static>]) -> anyhow::Result<Vec<u8>> {
    use pkcs12::cms::cert::x509::attr::{Attribute, Attributes};
    use pkcs12::cms::cert::x509::der::asn1::SetOfVec;
    use pkcs12::cms::cert::x509::der::asn1::{Any, BmpString, ObjectIdentifier, OctetString};
    use pkcs12::cms::cert::x509::der::{Decode, Encode};
    use pkcs12::cms::content_info::ContentInfo;
    use pkcs12::safe_bag::SafeContents;

    let der = |e: pkcs12::cms::cert::x509::der::Error| anyhow::anyhow!("writing PKCS#12: {e}");
    let oid = |s: &str| ObjectIdentifier::new(s).map_err(|e| anyhow::anyhow!("OID {s}: {e}"));
    let attribute = |id: &str, value: Any| -> anyhow::Result<Attribute> {
        Ok(Attribute {
            oid: oid(id)?,
            values: SetOfVec::try_from(vec![value]).map_err(der)?,
        })
    };
    let mut bags = Vec::with_capacity(certs.len());
    for (i, c) in certs.iter().enumerate() {
        let cert_bag = pkcs12::CertBag {
            cert_id: pkcs12::PKCS_12_X509_CERT_OID,
            cert_value: OctetString::new(c.as_ref()).map_err(der)?,
        };
        let name = BmpString::from_utf8(&trust_alias(i)).map_err(der)?;
        let mut attributes = Attributes::new();
        attributes
            .insert(attribute(
                FRIENDLY_NAME,
                Any::encode_from(&name).map_err(der)?,
            )?)
            .map_err(der)?;
        attributes
            .insert(attribute(
                JAVA_TRUSTED_KEY_USAGE,
                Any::encode_from(&oid(ANY_EXTENDED_KEY_USAGE)?).map_err(der)?,
            )?)
            .map_err(der)?;
        bags.push(pkcs12::SafeBag {
            bag_id: pkcs12::PKCS_12_CERT_BAG_OID,
            bag_value: cert_bag.to_der().map_err(der)?,
            bag_attributes: Some(attributes),
        });
    }
    let data = |bytes: Vec<u8>| -> anyhow::Result<ContentInfo> {
        let octets = OctetString::new(bytes).map_err(der)?;
        Ok(ContentInfo {
            content_type: oid(PKCS7_DATA)?,
            content: Any::from_der(&octets.to_der().map_err(der)?).map_err(der)?,
        })
    };
    let safe_contents: SafeContents = bags;
    let auth_safe: Vec<ContentInfo> = vec![data(safe_contents.to_der().map_err(der)?)?];
    let pfx = pkcs12::Pfx {
        version: pkcs12::pfx::Version::V3,
        auth_safe: data(auth_safe.to_der().map_err(der)?)?,
        mac_data: None,
    };
    pfx.to_der().map_err(der)
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
        let protected = export_trust(
            &c,
            ExportFormat::Pkcs12 {
                password: Some("s3cret".into()),
            },
        )
        .unwrap();
        let policy = p12_keystore::Pkcs12ImportPolicy::Relaxed;
        let store = p12_keystore::KeyStore::from_pkcs12(&protected, "s3cret", policy).unwrap();
        assert_eq!(store.entries_len(), 1);
        assert!(p12_keystore::KeyStore::from_pkcs12(&protected, "wrong", policy).is_err());
    }

    /// What a JVM with no trust store password can read: the certificate bag in a plain `data`
    /// content (not `encryptedData`), Java's trusted attribute on it, and no MAC.
    #[test]
    fn the_password_less_pkcs12_holds_the_ca_in_the_clear_with_java_trust() {
        use pkcs12::cms::cert::x509::der::asn1::{Any, ObjectIdentifier, OctetString};
        use pkcs12::cms::cert::x509::der::{Decode, Encode};
        use pkcs12::cms::content_info::ContentInfo;

        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path(), &["localhost"]);
        let p12 = export_trust(&c, ExportFormat::Pkcs12 { password: None }).unwrap();
        let ca = read_pem_certs(&CertPaths::new(dir.path()).ca_cert).unwrap();

        let data = ObjectIdentifier::new_unwrap(PKCS7_DATA);
        let inner = |ci: &ContentInfo| -> Vec<u8> {
            assert_eq!(ci.content_type, data, "plain data, not encryptedData");
            ci.content
                .decode_as::<OctetString>()
                .unwrap()
                .into_bytes()
                .into_vec()
        };
        let pfx = pkcs12::Pfx::from_der(&p12).unwrap();
        assert!(pfx.mac_data.is_none(), "no MAC without a password");
        let safes = Vec::<ContentInfo>::from_der(&inner(&pfx.auth_safe)).unwrap();
        assert_eq!(safes.len(), 1);
        let bags = pkcs12::safe_bag::SafeContents::from_der(&inner(&safes[0])).unwrap();
        assert_eq!(bags.len(), 1);
        let bag = &bags[0];
        assert_eq!(bag.bag_id, pkcs12::PKCS_12_CERT_BAG_OID);
        // The decoded bag value keeps its `[0] EXPLICIT` wrapper.
        let explicit = Any::from_der(&bag.bag_value).unwrap();
        let cert = pkcs12::CertBag::from_der(explicit.value()).unwrap();
        assert_eq!(cert.cert_id, pkcs12::PKCS_12_X509_CERT_OID);
        assert_eq!(cert.cert_value.as_bytes(), ca[0].as_ref());
        let attributes = bag.bag_attributes.as_ref().unwrap();
        let trusted = attributes
            .iter()
            .find(|a| a.oid == ObjectIdentifier::new_unwrap(JAVA_TRUSTED_KEY_USAGE))
            .expect("Java's trusted-certificate attribute");
        let usage: ObjectIdentifier = trusted.values.get(0).unwrap().decode_as().unwrap();
        assert_eq!(
            usage.to_der().unwrap(),
            ObjectIdentifier::new_unwrap(ANY_EXTENDED_KEY_USAGE)
                .to_der()
                .unwrap()
        );
        assert!(attributes
            .iter()
            .any(|a| a.oid == ObjectIdentifier::new_unwrap(FRIENDLY_NAME)));
    }
}
