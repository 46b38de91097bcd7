//! TLS at the edge for [`serve`](crate::serve()): certificates chosen by SNI, ALPN `h2` and
//! `http/1.1`, optional client certificates, and rotation without dropping a connection.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use tokio_rustls::rustls::crypto::{self, CryptoProvider};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};

use crate::error::{TlsConfigError, TlsConfigErrorKind};
use crate::transport::TlsInfo;

/// TLS for [`serve`](crate::serve()) (feature `tls`): what nginx's `listen 443 ssl http2`,
/// `ssl_certificate`, `ssl_certificate_key` and `ssl_client_certificate` configure.
///
/// - **Protocols**: TLS 1.3 and 1.2 only, rustls with the ring provider. ALPN offers `h2`
///   (feature `http2`: browsers then carry WebSockets over HTTP/2, RFC 8441) and `http/1.1`;
///   a client that offers no ALPN gets HTTP/1.1.
/// - **Certificates**: one or more chains with their keys; the one whose names (SANs) match the
///   client's SNI is presented, the first when none matches or no SNI is sent.
/// - **Client certificates** ([`client_ca_file`](Self::client_ca_file)): required and
///   verified; without a valid one the handshake fails. The verified chain is in every
///   request's extensions as [`TlsInfo`].
/// - **Rotation**: [`reload`](Self::reload) re-reads the files (all clones share them): new
///   handshakes get the new certificates, connections and sessions already open are untouched;
///   a file that does not load keeps the running certificates. [`watch`](Self::watch) does it
///   when the files change (Kubernetes swaps Secret files through a symlink).
///
/// The TLS handshake counts inside [`Serve::header_timeout`](crate::serve::Serve::header_timeout).
/// Connections over TLS cannot splice (the bytes are encrypted in user space): tunnels over
/// them use the buffered path.
///
/// ```no_run
/// use axum::{routing::get, Router};
/// use axum_ws_proxy::{WsProxyLayer, tls::ServerTls};
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let tls = ServerTls::from_pem_files("/etc/tls/chat.crt", "/etc/tls/chat.key")?
///     .certificate_files("/etc/tls/admin.crt", "/etc/tls/admin.key")?; // chosen by SNI
/// tokio::spawn(tls.clone().watch(std::time::Duration::from_secs(5)));
/// let app = Router::new()
///     .route("/healthz", get(|| async { "ok" }))
///     .layer(WsProxyLayer::new("ws://127.0.0.1:3000".parse()?));
/// let listener = tokio::net::TcpListener::bind("0.0.0.0:443").await?;
/// axum_ws_proxy::serve(listener, app).tls(tls).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ServerTls {
    shared: Arc<Shared>,
}

struct Shared {
    current: RwLock<Arc<ServerConfig>>,
    /// Where the configuration comes from, for reloads; `None` for PEM bytes or a caller's
    /// own `ServerConfig`.
    files: Option<Files>,
    /// Modification times seen by `watch`.
    seen: RwLock<Vec<Option<SystemTime>>>,
}

#[derive(Clone, Debug, Default)]
struct Files {
    certificates: Vec<(PathBuf, PathBuf)>,
    client_ca: Option<PathBuf>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", &self.shared.files)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// One certificate chain and its private key, PEM files (as nginx's `ssl_certificate` and
    /// `ssl_certificate_key`).
    pub fn from_pem_files(
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<Self, TlsConfigError> {
        Self::from_files(Files {
            certificates: vec![(cert.as_ref().to_owned(), key.as_ref().to_owned())],
            client_ca: None,
        })
    }

    /// Another certificate chain and key, presented to clients whose SNI names one of its
    /// names (the first certificate stays the default). Returns a new `ServerTls`; `self` is
    /// unchanged.
    pub fn certificate_files(
        &self,
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<Self, TlsConfigError> {
        let mut files = self.files()?;
        files
            .certificates
            .push((cert.as_ref().to_owned(), key.as_ref().to_owned()));
        Self::from_files(files)
    }

    /// Requires a client certificate issued by a CA in this PEM file (mTLS; nginx's
    /// `ssl_client_certificate` with `ssl_verify_client on`). Returns a new `ServerTls`.
    pub fn client_ca_file(&self, ca: impl AsRef<Path>) -> Result<Self, TlsConfigError> {
        let mut files = self.files()?;
        files.client_ca = Some(ca.as_ref().to_owned());
        Self::from_files(files)
    }

    /// One certificate chain and key from PEM bytes (cannot be reloaded from disk).
    pub fn from_pem(cert_chain: &[u8], key: &[u8]) -> Result<Self, TlsConfigError> {
        let certified = certified_key(cert_chain, key)?;
        Ok(Self::new(server_config(vec![certified], None)?, None))
    }

    /// A rustls configuration of your own, for full control. ALPN is set to `h2` (with the
    /// `http2` feature) and `http/1.1` if it has none. Cannot be reloaded from disk.
    pub fn from_rustls(mut config: ServerConfig) -> Self {
        if config.alpn_protocols.is_empty() {
            config.alpn_protocols = alpn();
        }
        Self::new(config, None)
    }

    fn new(config: ServerConfig, files: Option<Files>) -> Self {
        let seen = files.as_ref().map(mtimes).unwrap_or_default();
        Self {
            shared: Arc::new(Shared {
                current: RwLock::new(Arc::new(config)),
                files,
                seen: RwLock::new(seen),
            }),
        }
    }

    fn files(&self) -> Result<Files, TlsConfigError> {
        self.shared.files.clone().ok_or_else(|| {
            TlsConfigError::new(
                TlsConfigErrorKind::NotFromFiles,
                "this ServerTls was not made from files",
            )
        })
    }

    fn from_files(files: Files) -> Result<Self, TlsConfigError> {
        let config = load(&files)?;
        Ok(Self::new(config, Some(files)))
    }

    /// Re-reads the certificate, key and client CA files: new handshakes use them, open
    /// connections are untouched. On an error (a missing or broken file, a key that does not
    /// match) the running certificates stay and the error names the file. Each call is logged
    /// and counted in `ws_proxy_tls_reloads_total{result}`. It reads files: call it where
    /// blocking is fine (`spawn_blocking`), as [`watch`](Self::watch) does.
    pub fn reload(&self) -> Result<(), TlsConfigError> {
        let result = self.reload_files();
        match &result {
            Ok(()) => {
                crate::metrics::tls_reloaded(true);
                tracing::info!("TLS certificates reloaded");
            }
            Err(e) => {
                crate::metrics::tls_reloaded(false);
                tracing::error!("TLS certificates not reloaded, the running ones stay: {e}");
            }
        }
        result
    }

    fn reload_files(&self) -> Result<(), TlsConfigError> {
        let files = self.files()?;
        let seen = mtimes(&files);
        let config = load(&files)?;
        *self
            .shared
            .current
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
        *self.shared.seen.write().unwrap_or_else(|e| e.into_inner()) = seen;
        Ok(())
    }

    /// Checks the files every `every` and [reloads](Self::reload) when one of them changed
    /// (modification time, following symlinks, so a Kubernetes Secret update counts); runs
    /// until dropped. File reads run on a blocking thread.
    pub async fn watch(self, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let this = self.clone();
            let _ = tokio::task::spawn_blocking(move || {
                let Some(files) = this.shared.files.clone() else {
                    return;
                };
                let now = mtimes(&files);
                let seen = this
                    .shared
                    .seen
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                if now != seen && this.reload().is_err() {
                    // Retry only when the files change again, not every tick.
                    *this.shared.seen.write().unwrap_or_else(|e| e.into_inner()) = now;
                }
            })
            .await;
        }
    }

    /// The configuration new handshakes use.
    pub(crate) fn current(&self) -> Arc<ServerConfig> {
        self.shared
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(crypto::ring::default_provider())
}

fn alpn() -> Vec<Vec<u8>> {
    let mut protocols = Vec::new();
    if cfg!(feature = "http2") {
        protocols.push(b"h2".to_vec());
    }
    protocols.push(b"http/1.1".to_vec());
    protocols
}

fn mtimes(files: &Files) -> Vec<Option<SystemTime>> {
    files
        .certificates
        .iter()
        .flat_map(|(c, k)| [c, k])
        .chain(files.client_ca.as_ref())
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

fn read(path: &Path) -> Result<Vec<u8>, TlsConfigError> {
    std::fs::read(path).map_err(|e| {
        TlsConfigError::new(
            TlsConfigErrorKind::Read,
            format!("cannot read {}: {e}", path.display()),
        )
    })
}

fn load(files: &Files) -> Result<ServerConfig, TlsConfigError> {
    let mut keys = Vec::new();
    for (cert, key) in &files.certificates {
        let certified = certified_key(&read(cert)?, &read(key)?)
            .map_err(|e| e.in_files(&format!("{} / {}", cert.display(), key.display())))?;
        keys.push(certified);
    }
    let client_ca = match &files.client_ca {
        Some(path) => {
            Some(roots(&read(path)?).map_err(|e| e.in_files(&path.display().to_string()))?)
        }
        None => None,
    };
    server_config(keys, client_ca)
}

fn roots(pem: &[u8]) -> Result<RootCertStore, TlsConfigError> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| {
            TlsConfigError::new(TlsConfigErrorKind::InvalidPem, format!("invalid PEM: {e}"))
        })?;
        roots.add(cert).map_err(|e| {
            TlsConfigError::new(
                TlsConfigErrorKind::UnusableCertificate,
                format!("unusable CA certificate: {e}"),
            )
        })?;
    }
    if roots.is_empty() {
        return Err(TlsConfigError::new(
            TlsConfigErrorKind::NoCertificate,
            "no certificates found",
        ));
    }
    Ok(roots)
}

/// A chain and its key, checked to belong together.
fn certified_key(chain: &[u8], key: &[u8]) -> Result<Arc<CertifiedKey>, TlsConfigError> {
    let chain = CertificateDer::pem_slice_iter(chain)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            TlsConfigError::new(
                TlsConfigErrorKind::InvalidPem,
                format!("invalid certificate PEM: {e}"),
            )
        })?;
    if chain.is_empty() {
        return Err(TlsConfigError::new(
            TlsConfigErrorKind::NoCertificate,
            "no certificate found",
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| {
        TlsConfigError::new(
            TlsConfigErrorKind::NoPrivateKey,
            format!("no usable private key: {e}"),
        )
    })?;
    let signing = provider().key_provider.load_private_key(key).map_err(|e| {
        TlsConfigError::new(
            TlsConfigErrorKind::UnsupportedKey,
            format!("unsupported private key: {e}"),
        )
    })?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| {
        TlsConfigError::new(
            TlsConfigErrorKind::KeyMismatch,
            format!("the key does not match the certificate ({e})"),
        )
    })?;
    Ok(Arc::new(certified))
}

fn server_config(
    keys: Vec<Arc<CertifiedKey>>,
    client_ca: Option<RootCertStore>,
) -> Result<ServerConfig, TlsConfigError> {
    let fail = |e: rustls::Error| TlsConfigError::new(TlsConfigErrorKind::Rustls, e.to_string());
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(fail)?;
    let builder = match client_ca {
        Some(roots) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| {
                    TlsConfigError::new(
                        TlsConfigErrorKind::UnusableCertificate,
                        format!("client CA: {e}"),
                    )
                })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(BySni(keys)));
    config.alpn_protocols = alpn();
    Ok(config)
}

/// Picks the certificate whose names match the client's SNI; the first one otherwise.
#[derive(Debug)]
struct BySni(Vec<Arc<CertifiedKey>>);

impl ResolvesServerCert for BySni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let by_name = hello.server_name().and_then(|sni| {
            let name = ServerName::try_from(sni).ok()?;
            self.0.iter().find(|key| {
                key.end_entity_cert().is_ok_and(|der| {
                    webpki::EndEntityCert::try_from(der)
                        .is_ok_and(|ee| ee.verify_is_valid_for_subject_name(&name).is_ok())
                })
            })
        });
        by_name.or_else(|| self.0.first()).cloned()
    }
}

/// What a finished handshake established.
pub(crate) fn info(conn: &rustls::ServerConnection) -> TlsInfo {
    TlsInfo {
        alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
        server_name: conn.server_name().map(str::to_owned),
        peer_certificates: conn
            .peer_certificates()
            .map(<[_]>::to_vec)
            .unwrap_or_default(),
    }
}
