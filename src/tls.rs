//! TLS for every connection vigil opens or serves: etcd, the database
//! (monitoring sessions and the replication settings vigil writes), the
//! peers' APIs, and the API itself.
//!
//! One crypto provider everywhere (rustls with ring); certificates and
//! keys are PEM files named in the config. The database modes follow
//! libpq's `sslmode`, which DBAs already know:
//!
//! | `database.tls` | encrypted | certificate chain checked | host name checked |
//! |---|---|---|---|
//! | `off` (default) | no | - | - |
//! | `require` | yes | only if `ca_file` is set (as libpq does) | no |
//! | `verify-ca` | yes | yes | no |
//! | `verify-full` | yes | yes | yes |

use anyhow::{anyhow, bail, Context, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How a client connection to the database is protected.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    #[default]
    Off,
    Require,
    VerifyCa,
    VerifyFull,
}

impl TlsMode {
    /// The libpq `sslmode` of the same meaning.
    pub fn sslmode(self) -> &'static str {
        match self {
            TlsMode::Off => "disable",
            TlsMode::Require => "require",
            TlsMode::VerifyCa => "verify-ca",
            TlsMode::VerifyFull => "verify-full",
        }
    }
}

/// The crypto provider of every TLS connection (ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Makes ring the process-wide default provider (the HTTP client library
/// needs one). Harmless when called twice.
pub fn install_default_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Reads a PEM file: a regular file of reasonable size (a path to a
/// device or a fifo is an error, not a hang).
pub fn read_pem(path: &Path) -> Result<Vec<u8>> {
    const LIMIT: u64 = 1 << 20;
    let meta = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if !meta.is_file() {
        bail!("{} is not a regular file", path.display());
    }
    if meta.len() > LIMIT {
        bail!("{} is {} bytes, too large for a PEM file", path.display(), meta.len());
    }
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem = read_pem(path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .with_context(|| format!("{} is not a PEM certificate file", path.display()))?;
    if certs.is_empty() {
        bail!("{} holds no PEM certificate", path.display());
    }
    Ok(certs)
}

pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(&read_pem(path)?).with_context(|| format!("{} holds no PEM private key", path.display()))
}

fn roots(ca_file: &Path) -> Result<RootCertStore> {
    let mut store = RootCertStore::empty();
    for c in load_certs(ca_file)? {
        store.add(c).with_context(|| format!("{}: not a usable CA certificate", ca_file.display()))?;
    }
    Ok(store)
}

/// A client configuration: `mode` says what is checked, `ca_file` against
/// what, `identity` is a client certificate and key to present.
pub fn client_config(mode: TlsMode, ca_file: Option<&Path>, identity: Option<(&Path, &Path)>) -> Result<rustls::ClientConfig> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow!("TLS: {e}"))?;
    let verifier: Arc<dyn ServerCertVerifier> = match (mode, ca_file) {
        (TlsMode::Off, _) | (TlsMode::Require, None) => Arc::new(AnyCertificate(provider)),
        (_, None) => bail!("TLS mode {} needs a CA file", mode.sslmode()),
        (TlsMode::VerifyFull, Some(ca)) => WebPkiServerVerifier::builder_with_provider(Arc::new(roots(ca)?), provider).build()?,
        (TlsMode::Require | TlsMode::VerifyCa, Some(ca)) => {
            Arc::new(ChainOnly(WebPkiServerVerifier::builder_with_provider(Arc::new(roots(ca)?), provider).build()?))
        }
    };
    let builder = builder.dangerous().with_custom_certificate_verifier(verifier);
    Ok(match identity {
        Some((cert, key)) => builder.with_client_auth_cert(load_certs(cert)?, load_key(key)?)?,
        None => builder.with_no_client_auth(),
    })
}

/// The API's server configuration.
pub fn server_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig> {
    let mut c = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow!("TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(load_certs(cert)?, load_key(key)?)
        .context("the API certificate and key do not match")?;
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(c)
}

/// `require` without a CA: encrypted, the certificate not checked (libpq's
/// `sslmode=require`). Signatures are still verified, so the handshake
/// proves the server holds the key of the certificate it sent.
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
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to the CA; the name in the certificate
/// may differ from the host connected to.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. })) => {
                Ok(ServerCertVerified::assertion())
            }
            other => other,
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// The database's TLS settings, as the engines need them.
#[derive(Debug, Clone, Default)]
pub struct DbTls {
    pub mode: TlsMode,
    pub ca_file: Option<PathBuf>,
}

impl DbTls {
    /// The connector of tokio-postgres. With mode `off` it is never used
    /// (the connection says `sslmode=disable`).
    pub fn pg_connector(&self) -> Result<tokio_postgres_rustls::MakeRustlsConnect> {
        Ok(tokio_postgres_rustls::MakeRustlsConnect::new(client_config(self.mode, self.ca_file.as_deref(), None)?))
    }

    /// tokio-postgres's mode for a connection to `host`. A unix socket
    /// never carries TLS (libpq ignores sslmode there too): it is local,
    /// and the server's own file permissions guard it.
    pub fn pg_ssl_mode(&self, host: &str) -> tokio_postgres::config::SslMode {
        match self.mode {
            TlsMode::Off => tokio_postgres::config::SslMode::Disable,
            _ if host.starts_with('/') => tokio_postgres::config::SslMode::Disable,
            _ => tokio_postgres::config::SslMode::Require,
        }
    }

    /// The libpq keywords for conninfo strings written for replicas and
    /// the PostgreSQL tools (`primary_conninfo`, pg_rewind, pg_basebackup);
    /// none with mode `off` (libpq's own default then applies).
    pub fn libpq_params(&self) -> Vec<(&'static str, String)> {
        if self.mode == TlsMode::Off {
            return vec![];
        }
        let mut p = vec![("sslmode", self.mode.sslmode().to_string())];
        if let Some(ca) = &self.ca_file {
            p.push(("sslrootcert", ca.display().to_string()));
        }
        p
    }

    /// mysql_async's options (None: plain connection).
    pub fn mysql_ssl_opts(&self) -> Option<mysql_async::SslOpts> {
        if self.mode == TlsMode::Off {
            return None;
        }
        let mut o = mysql_async::SslOpts::default().with_disable_built_in_roots(self.ca_file.is_some());
        if let Some(ca) = &self.ca_file {
            o = o.with_root_certs(vec![ca.clone().into()]);
        }
        match (self.mode, &self.ca_file) {
            (TlsMode::VerifyFull, _) => o,
            (TlsMode::Require, None) => o.with_danger_accept_invalid_certs(true),
            _ => o.with_danger_skip_domain_validation(true),
        }
        .into()
    }

    /// The `CHANGE MASTER TO` / `CHANGE REPLICATION SOURCE TO` options a
    /// MariaDB/MySQL replica gets (`master` selects the old spelling).
    pub fn mysql_source_options(&self, master: bool) -> String {
        let p = if master { "MASTER" } else { "SOURCE" };
        if self.mode == TlsMode::Off {
            return String::new();
        }
        let mut s = format!(", {p}_SSL = 1");
        if let Some(ca) = &self.ca_file {
            s.push_str(&format!(", {p}_SSL_CA = {}", crate::engine::mysql::dialect::sql_string(&ca.display().to_string())));
        }
        let verify = self.mode == TlsMode::VerifyFull;
        s.push_str(&format!(", {p}_SSL_VERIFY_SERVER_CERT = {}", verify as u8));
        s
    }

    /// mariadb-dump / mysqldump options.
    pub fn mysql_client_args(&self) -> Vec<String> {
        if self.mode == TlsMode::Off {
            return vec![];
        }
        let mut a = vec!["--ssl".to_string()];
        if let Some(ca) = &self.ca_file {
            a.push(format!("--ssl-ca={}", ca.display()));
        }
        if self.mode == TlsMode::VerifyFull {
            a.push("--ssl-verify-server-cert".into());
        }
        a
    }
}

/// An HTTP client for outside services (Alertmanager, webhooks, health
/// checks): HTTPS verified against the system's CAs.
pub fn http_client(timeout: Option<Duration>) -> reqwest::Client {
    install_default_provider();
    let b = reqwest::Client::builder();
    let b = match timeout {
        Some(t) => b.timeout(t),
        None => b,
    };
    b.build().expect("HTTP client")
}

/// The HTTP client that talks to the peers' APIs: trusts `ca_file` when
/// the APIs serve HTTPS.
pub fn api_client(ca_file: Option<&Path>, timeout: Duration) -> Result<reqwest::Client> {
    install_default_provider();
    let b = reqwest::Client::builder().timeout(timeout);
    Ok(match ca_file {
        Some(ca) => b.tls_backend_preconfigured(client_config(TlsMode::VerifyFull, Some(ca), None)?).build()?,
        None => b.build()?,
    })
}

/// A TCP listener whose connections are TLS: handshakes run in their own
/// tasks (bounded by a deadline), so a slow or silent client never holds
/// up the others.
pub struct TlsListener {
    rx: tokio::sync::mpsc::Receiver<(tokio_rustls::server::TlsStream<tokio::net::TcpStream>, std::net::SocketAddr)>,
    local: std::net::SocketAddr,
}

impl TlsListener {
    pub fn new(tcp: tokio::net::TcpListener, config: rustls::ServerConfig) -> Result<Self> {
        let local = tcp.local_addr()?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (sock, peer) = match tcp.accept().await {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "API accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                if tx.is_closed() {
                    return;
                }
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(Duration::from_secs(5), acceptor.accept(sock)).await {
                        Ok(Ok(s)) => {
                            let _ = tx.send((s, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "API TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "API TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { rx, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The accept task only ends when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libpq_parameters_follow_the_mode() {
        let t = DbTls { mode: TlsMode::VerifyFull, ca_file: Some("/etc/vigil/ca.pem".into()) };
        assert_eq!(t.libpq_params(), vec![("sslmode", "verify-full".to_string()), ("sslrootcert", "/etc/vigil/ca.pem".to_string())]);
        assert!(DbTls::default().libpq_params().is_empty());
    }

    #[test]
    fn replication_options_follow_the_mode() {
        let t = DbTls { mode: TlsMode::VerifyCa, ca_file: Some("/ca.pem".into()) };
        assert_eq!(t.mysql_source_options(true), ", MASTER_SSL = 1, MASTER_SSL_CA = '/ca.pem', MASTER_SSL_VERIFY_SERVER_CERT = 0");
        let t = DbTls { mode: TlsMode::VerifyFull, ca_file: Some("/ca.pem".into()) };
        assert_eq!(t.mysql_source_options(false), ", SOURCE_SSL = 1, SOURCE_SSL_CA = '/ca.pem', SOURCE_SSL_VERIFY_SERVER_CERT = 1");
        assert_eq!(DbTls::default().mysql_source_options(true), "");
        assert!(DbTls::default().mysql_ssl_opts().is_none());
    }

    #[test]
    fn verifying_modes_need_a_ca() {
        assert!(client_config(TlsMode::VerifyFull, None, None).is_err());
        assert!(client_config(TlsMode::Require, None, None).is_ok());
        let e = client_config(TlsMode::VerifyCa, Some(Path::new("/nonexistent/ca.pem")), None).unwrap_err();
        assert!(format!("{e:#}").contains("/nonexistent/ca.pem"), "{e:#}");
        // A device is refused at once, not read for ever.
        let e = load_certs(Path::new("/dev/zero")).unwrap_err();
        assert!(format!("{e:#}").contains("not a regular file"), "{e:#}");
    }
}
