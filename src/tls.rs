//! TLS to `wss://` upstreams, through rustls with the `ring` provider chosen explicitly (so no
//! "no process-level CryptoProvider" panic, whatever else the application links).

use std::fmt;
use std::io;
use std::sync::{Arc, OnceLock};

use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::crypto::{self, CryptoProvider};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{
    self, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_rustls::TlsConnector;

/// How the proxy verifies `wss://` upstreams: certificate chain and host name checked against
/// trusted roots (webpki's public roots by default), SNI set to the member's host name.
///
/// ```
/// use axum_ws_proxy::{UpstreamTls, WsProxyLayer};
///
/// let ca = std::fs::read("/etc/ssl/internal-ca.pem").unwrap_or_default();
/// let tls = UpstreamTls::with_root_certificates_pem(&ca);
/// # let _ = tls;
/// let layer = WsProxyLayer::new("wss://chat.internal:443".parse()?).upstream_tls(UpstreamTls::webpki_roots());
/// # Ok::<(), axum_ws_proxy::ParseUpstreamError>(())
/// ```
#[derive(Clone)]
pub struct UpstreamTls {
    connector: TlsConnector,
    insecure: bool,
}

impl UpstreamTls {
    /// Verification against Mozilla's root certificates (the `webpki-roots` crate): what a
    /// public `wss://` endpoint needs. The default.
    pub fn webpki_roots() -> Self {
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        Self::verified(roots)
    }

    /// Verification against the CA certificates in `pem` only (a private CA, as nginx's
    /// `proxy_ssl_trusted_certificate`): public roots are not trusted alongside.
    pub fn with_root_certificates_pem(pem: &[u8]) -> Result<Self, TlsConfigError> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| TlsConfigError(format!("invalid PEM: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| TlsConfigError(format!("unusable CA certificate: {e}")))?;
        }
        if roots.is_empty() {
            return Err(TlsConfigError(
                "no certificates found in the PEM data".into(),
            ));
        }
        Ok(Self::verified(roots))
    }

    /// No certificate or host-name verification at all: anyone on the path can impersonate
    /// the upstream. For tests and emergencies only; a warning is logged when this is built.
    pub fn insecure_skip_verify() -> Self {
        tracing::warn!(
            "TLS certificate verification of upstreams is OFF (insecure_skip_verify): \
             connections to wss:// upstreams can be intercepted"
        );
        let provider = Arc::new(crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map(|b| {
                b.dangerous()
                    .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
                    .with_no_client_auth()
            });
        Self::from_config(config, true)
    }

    /// A rustls configuration of your own (client certificates, pinning, ...). ALPN is set to
    /// `http/1.1` if none is configured.
    pub fn from_rustls(mut config: ClientConfig) -> Self {
        if config.alpn_protocols.is_empty() {
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
        }
        Self {
            connector: TlsConnector::from(Arc::new(config)),
            insecure: false,
        }
    }

    fn verified(roots: RootCertStore) -> Self {
        let provider = Arc::new(crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map(|b| b.with_root_certificates(roots).with_no_client_auth());
        Self::from_config(config, false)
    }

    fn from_config(config: Result<ClientConfig, rustls::Error>, insecure: bool) -> Self {
        // No input is involved: ring supports rustls's default protocol versions.
        let config = config.expect("the ring provider supports TLS 1.2 and 1.3");
        let mut tls = Self::from_rustls(config);
        tls.insecure = insecure;
        tls
    }

    /// The default, built once.
    pub(crate) fn default_shared() -> &'static Self {
        static DEFAULT: OnceLock<UpstreamTls> = OnceLock::new();
        DEFAULT.get_or_init(Self::webpki_roots)
    }

    /// The TLS handshake over `tcp`, with SNI and verification for `host`.
    pub(crate) async fn connect(
        &self,
        host: &str,
        tcp: TcpStream,
    ) -> io::Result<TlsStream<TcpStream>> {
        let name = ServerName::try_from(host.to_owned()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid TLS server name {host:?}"),
            )
        })?;
        self.connector.connect(name, tcp).await
    }
}

impl fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("verify", &!self.insecure)
            .finish()
    }
}

/// A TLS configuration that could not be built (e.g. a CA file without certificates).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsConfigError(String);

impl fmt::Display for TlsConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsConfigError {}

/// Accepts any certificate; handshake signatures are still checked.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
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
        crypto::verify_tls12_signature(
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
        crypto::verify_tls13_signature(
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
