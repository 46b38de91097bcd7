//! wss:// upstreams through rustls, with certificates generated at test time.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use axum_ws_proxy::{tls::UpstreamTls, upstream::UpstreamPool, WsProxyLayer};
use common::*;
use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use tokio::net::TcpListener;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::Message;

/// A CA and a server certificate for `localhost` signed by it: (CA PEM, server config).
fn certificates() -> (String, Arc<ServerConfig>) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "axum-ws-proxy test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let chain = vec![CertificateDer::from_pem_slice(leaf.pem().as_bytes()).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(leaf_key.serialize_pem().as_bytes()).unwrap();
    let config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
    (ca_cert.pem(), Arc::new(config))
}

/// A TLS echo upstream; reports the SNI name each client sent.
async fn tls_upstream(
    config: Arc<ServerConfig>,
) -> (
    SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<Option<String>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let acceptor = TlsAcceptor::from(config);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let _ = tx.send(tls.get_ref().1.server_name().map(str::to_owned));
                let Ok(mut ws) = tokio_tungstenite::accept_async(tls).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if m.is_text() && ws.send(m).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (addr, rx)
}

/// `wss://localhost:PORT`, with "localhost" resolved to the test's 127.0.0.1 listener.
fn pool(port: u16) -> UpstreamPool {
    UpstreamPool::from_urls([format!("wss://localhost:{port}")])
        .unwrap()
        .resolver(|_host: String, port: u16| async move {
            Ok(vec![SocketAddr::from(([127, 0, 0, 1], port))])
        })
}

#[tokio::test]
async fn a_wss_upstream_signed_by_a_trusted_ca_works_with_sni() {
    let (ca, server) = certificates();
    let (up, mut sni) = tls_upstream(server).await;
    let tls = UpstreamTls::with_root_certificates_pem(ca.as_bytes()).unwrap();
    let proxy = proxy(WsProxyLayer::new(pool(up.port())).upstream_tls(tls)).await;
    let mut ws = connect(proxy, "/").await;
    ws.send(Message::text("over tls")).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::text("over tls"));
    assert_eq!(sni.recv().await.unwrap().as_deref(), Some("localhost"));
    // Large enough for the proxy's own frame writer and read-ahead, over TLS records.
    let big: String = "tls✓".chars().cycle().take(1_000_000).collect();
    ws.send(Message::text(big.clone())).await.unwrap();
    assert!(
        next_message(&mut ws).await == Message::text(big),
        "changed over TLS"
    );
}

#[tokio::test]
async fn an_untrusted_certificate_is_502_with_the_reason() {
    let (_, server) = certificates();
    let (up, _) = tls_upstream(server).await;
    // Default verification: public roots, which did not sign the test CA.
    let proxy = proxy(WsProxyLayer::new(pool(up.port()))).await;
    let (status, _, body) = http_request(proxy, "/", &UPGRADE_HEADERS).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let body = String::from_utf8_lossy(&body);
    assert!(
        body.contains("TLS handshake with upstream 127.0.0.1:"),
        "{body}"
    );
    assert!(body.contains("UnknownIssuer"), "{body}");
}

#[tokio::test]
async fn a_certificate_for_another_name_is_502() {
    let (ca, server) = certificates();
    let (up, _) = tls_upstream(server).await;
    let tls = UpstreamTls::with_root_certificates_pem(ca.as_bytes()).unwrap();
    // The certificate is for "localhost", not for the IP address.
    let proxy = proxy(
        WsProxyLayer::new(format!("wss://127.0.0.1:{}", up.port()).parse().unwrap())
            .upstream_tls(tls),
    )
    .await;
    let (status, _, body) = http_request(proxy, "/", &UPGRADE_HEADERS).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let body = String::from_utf8_lossy(&body);
    assert!(
        body.contains("certificate not valid for name \"127.0.0.1\""),
        "{body}"
    );
}

#[tokio::test]
async fn insecure_skip_verify_accepts_any_certificate() {
    let (_, server) = certificates();
    let (up, _) = tls_upstream(server).await;
    let proxy =
        proxy(WsProxyLayer::new(pool(up.port())).upstream_tls(UpstreamTls::insecure_skip_verify()))
            .await;
    let mut ws = connect(proxy, "/").await;
    ws.send(Message::text("unverified")).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::text("unverified"));
}

#[tokio::test]
async fn a_plain_upstream_behind_wss_is_502() {
    let plain = echo_upstream().await;
    let tls = UpstreamTls::insecure_skip_verify();
    let proxy =
        proxy(WsProxyLayer::new(format!("wss://{plain}").parse().unwrap()).upstream_tls(tls)).await;
    let (status, _, body) = http_request(proxy, "/", &UPGRADE_HEADERS).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(
        String::from_utf8_lossy(&body).contains("TLS handshake"),
        "{body:?}"
    );
}

#[test]
fn a_ca_file_without_certificates_is_an_error() {
    assert_eq!(
        UpstreamTls::with_root_certificates_pem(b"not a pem")
            .unwrap_err()
            .to_string(),
        "no certificates found in the PEM data"
    );
}

#[tokio::test]
async fn the_binary_trusts_upstream_ca_and_rejects_bad_files() {
    let (ca, server) = certificates();
    let (up, _) = tls_upstream(server).await;
    let dir = std::env::temp_dir().join(format!("ws-proxy-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, &ca).unwrap();
    let bin = env!("CARGO_BIN_EXE_ws-proxy");

    let out = std::process::Command::new(bin)
        .args([
            "--upstream",
            "wss://localhost:1",
            "--upstream-ca",
            "/nonexistent/ca.pem",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("ws-proxy: --upstream-ca: cannot read \"/nonexistent/ca.pem\""),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1);

    let ca_path = ca_file.to_string_lossy().into_owned();
    let upstream = format!("wss://127.0.0.1:{}", up.port());
    let (_child, addr, _) =
        start_ws_proxy(&["--upstream", &upstream, "--upstream-ca", &ca_path]).await;
    // The CA is trusted, but the certificate names "localhost", not 127.0.0.1.
    let (status, _, body) = http_request(addr, "/", &UPGRADE_HEADERS).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(
        String::from_utf8_lossy(&body).contains("certificate not valid for name \"127.0.0.1\""),
        "{body:?}"
    );
}
