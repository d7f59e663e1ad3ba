//! The serving certificate: a CA and a certificate it signs for the names a client in or out of
//! a cluster uses (the listen IP, loopback, `kubernetes.default.svc...`), made once in the TLS
//! directory and reused on restart so clients keep trusting `ca.crt`.

use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::TlsAcceptor;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("TLS file {path}: {reason}")]
    Pem { path: PathBuf, reason: String },
    #[error("generating the TLS certificates: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS server configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The names the serving certificate is valid for besides the listen IP.
const NAMES: [&str; 7] = [
    "127.0.0.1",
    "::1",
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
];

/// Makes `ca.crt`, `tls.crt` and `tls.key` in `dir` unless `ca.crt` is there, then loads the
/// serving certificate and key.
pub fn acceptor(dir: &Path, listen_ip: IpAddr) -> Result<TlsAcceptor, TlsError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| TlsError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    if !dir.join("ca.crt").exists() {
        generate(dir, listen_ip)?;
    }
    let crt = dir.join("tls.crt");
    let key = dir.join("tls.key");
    let pem = |path: &Path| {
        let path = path.to_owned();
        move |e: rustls::pki_types::pem::Error| TlsError::Pem {
            path,
            reason: e.to_string(),
        }
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&crt)
        .map_err(pem(&crt))?
        .collect::<Result<_, _>>()
        .map_err(pem(&crt))?;
    let key = PrivateKeyDer::from_pem_file(&key).map_err(pem(&key))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn generate(dir: &Path, listen_ip: IpAddr) -> Result<(), TlsError> {
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "wiremesh-fake-apiserver-ca");
    ca.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
    ];
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let mut names: Vec<String> = vec![listen_ip.to_string()];
    for n in NAMES {
        if !names.iter().any(|x| x == n) {
            names.push(n.to_owned());
        }
    }
    let mut leaf = CertificateParams::new(names)?;
    leaf.distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    leaf.use_authority_key_identifier_extension = true;
    leaf.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_key = KeyPair::generate()?;
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer)?;

    write(&dir.join("tls.key"), &leaf_key.serialize_pem(), 0o600)?;
    write(&dir.join("tls.crt"), &leaf_cert.pem(), 0o644)?;
    // ca.crt last: its presence says the set is complete.
    write(&dir.join("ca.crt"), &ca_cert.pem(), 0o644)
}

fn write(path: &Path, text: &str, mode: u32) -> Result<(), TlsError> {
    use std::io::Write;
    let io = |source| TlsError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    file.write_all(text.as_bytes()).map_err(io)
}
