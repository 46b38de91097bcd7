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
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::crypto::{self, CryptoProvider};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{
    self, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_rustls::TlsConnector;

use crate::error::{TlsConfigError, TlsConfigErrorKind};

/// How the proxy verifies `wss://` upstreams: certificate chain and host name checked against
/// trusted roots (webpki's public roots by default), SNI set to the member's host name.
///
/// ```
/// use axum_ws_proxy::{WsProxyLayer, tls::UpstreamTls};
///
/// let ca = std::fs::read("/etc/ssl/internal-ca.pem").unwrap_or_default();
/// let tls = UpstreamTls::with_root_certificates_pem(&ca);
/// # let _ = tls;
/// let layer = WsProxyLayer::new("wss://chat.internal:443".parse()?).upstream_tls(UpstreamTls::webpki_roots());
/// # Ok::<(), axum_ws_proxy::upstream::ParseUpstreamError>(())
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

    /// Verification against the certificates in `pem` only (a private CA, as nginx's
    /// `proxy_ssl_trusted_certificate`): public roots are not trusted alongside.
    ///
    /// A self-signed certificate listed here (as `openssl req -x509` makes it, `CA:TRUE`) is
    /// also accepted when the upstream presents exactly that certificate, still checked for
    /// the host name and its validity period, as OpenSSL (so nginx and HAProxy) and Go (so
    /// Caddy) accept it. Anything else is as strict as a CA: a certificate neither pinned nor
    /// issued by one listed here fails with **502**.
    pub fn with_root_certificates_pem(pem: &[u8]) -> Result<Self, TlsConfigError> {
        let mut roots = RootCertStore::empty();
        let mut pinned = Vec::new();
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| {
                TlsConfigError::new(TlsConfigErrorKind::InvalidPem, format!("invalid PEM: {e}"))
            })?;
            pinned.push(cert.clone());
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
                "no certificates found in the PEM data",
            ));
        }
        let provider = Arc::new(crypto::ring::default_provider());
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| {
                TlsConfigError::new(
                    TlsConfigErrorKind::UnusableCertificate,
                    format!("unusable CA certificates: {e}"),
                )
            })?;
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map(|b| {
                b.dangerous()
                    .with_custom_certificate_verifier(Arc::new(Pinned { inner, pinned }))
                    .with_no_client_auth()
            });
        Ok(Self::from_config(config, false))
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

/// webpki's verification, plus: a listed self-signed certificate presented as it is.
#[derive(Debug)]
struct Pinned {
    inner: Arc<WebPkiServerVerifier>,
    pinned: Vec<CertificateDer<'static>>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let error = match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Ok(verified) => return Ok(verified),
            Err(e) => e,
        };
        // webpki checks the validity period before the basic constraints, so this error means
        // the certificate is in date and its only fault is being a CA: fine when pinned.
        let ca_as_leaf = matches!(
            &error,
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other))
                if other.0.downcast_ref::<webpki::Error>() == Some(&webpki::Error::CaUsedAsEndEntity)
        );
        if ca_as_leaf
            && self
                .pinned
                .iter()
                .any(|p| p.as_ref() == end_entity.as_ref())
        {
            let named = webpki::EndEntityCert::try_from(end_entity)
                .is_ok_and(|ee| ee.verify_is_valid_for_subject_name(server_name).is_ok());
            if named {
                return Ok(ServerCertVerified::assertion());
            }
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName,
            ));
        }
        Err(error)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

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
