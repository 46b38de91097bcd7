//! TLS at the edge: `ws-proxy --tls-cert/--tls-key` serving `wss://` over HTTP/1.1 and
//! WebSocket over HTTP/2 (ALPN `h2`, RFC 8441), SNI, rotation, client certificates, the TLS
//! handshake under the header deadline, and pinned self-signed upstream certificates. A test
//! CA made with rcgen; real sockets, the real binary.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use futures_util::SinkExt;
use http::{Method, Request, StatusCode};
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SerialNumber};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// A test CA that issues server and client certificates.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        Self {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// (certificate PEM, key PEM) for `names`, with serial number `serial`.
    fn issue(&self, names: &[&str], serial: u64) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.serial_number = Some(SerialNumber::from(serial));
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(self.pem.as_bytes()).unwrap())
            .unwrap();
        roots
    }
}

fn dir() -> PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("edge-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes a certificate and key to `name.crt` / `name.key`; returns their paths as strings.
fn write_pair(name: &str, (cert, key): &(String, String)) -> (String, String) {
    let (c, k) = (
        dir().join(format!("{name}.crt")),
        dir().join(format!("{name}.key")),
    );
    std::fs::write(&c, cert).unwrap();
    std::fs::write(&k, key).unwrap();
    (c.display().to_string(), k.display().to_string())
}

fn client_config(ca: &Ca, alpn: &[&[u8]], client_cert: Option<&(String, String)>) -> ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(ca.roots());
    let mut config = match client_cert {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

/// A verified TLS connection to `addr` for `name`.
async fn tls_connect(
    addr: SocketAddr,
    name: &str,
    config: ClientConfig,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let server_name = ServerName::try_from(name.to_owned()).unwrap();
    TlsConnector::from(Arc::new(config))
        .connect(server_name, tcp)
        .await
}

/// The certificate the server presented (DER), to compare with the one expected.
fn presented(tls: &TlsStream<TcpStream>) -> Vec<u8> {
    tls.get_ref().1.peer_certificates().unwrap()[0]
        .as_ref()
        .to_vec()
}

fn der(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .as_ref()
        .to_vec()
}

/// Waits until a new handshake presents `expected`.
async fn until_presented(proxy: SocketAddr, ca: &Ca, expected: &str, what: &str) {
    let expected = der(expected);
    within(what, async {
        loop {
            let tls = tls_connect(proxy, "localhost", client_config(ca, &[], None))
                .await
                .unwrap();
            if presented(&tls) == expected {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await
}

/// `wss://name/` over HTTP/1.1 on an established TLS stream: echoes one message.
async fn wss_echo(
    tls: TlsStream<TcpStream>,
    name: &str,
    text: &str,
) -> WebSocketStream<TlsStream<TcpStream>> {
    let (mut ws, res) = tokio_tungstenite::client_async(format!("wss://{name}/"), tls)
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SWITCHING_PROTOCOLS);
    ws.send(Message::text(text)).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::text(text));
    ws
}

async fn start(args: &[&str]) -> (tokio::process::Child, SocketAddr, Option<SocketAddr>) {
    start_ws_proxy(args).await
}

/// `ws-proxy` in front of an echo upstream, serving TLS with `cert`/`key`, plus `extra` flags.
async fn start_tls(
    (cert, key): &(String, String),
    extra: &[&str],
) -> (tokio::process::Child, SocketAddr, Option<SocketAddr>) {
    let up = echo_upstream().await;
    let upstream = format!("ws://{up}");
    let mut args = vec![
        "--upstream",
        &upstream,
        "--tls-cert",
        cert,
        "--tls-key",
        key,
    ];
    args.extend_from_slice(extra);
    start(&args).await
}

#[tokio::test]
async fn wss_through_ws_proxy_over_http1() {
    let ca = Ca::new("edge test CA");
    let files = write_pair("h1", &ca.issue(&["localhost"], 1));
    let (_child, proxy, _) = start_tls(&files, &[]).await;
    // ALPN http/1.1, and no ALPN at all: both HTTP/1.1.
    for alpn in [&[&b"http/1.1"[..]][..], &[]] {
        let tls = tls_connect(proxy, "localhost", client_config(&ca, alpn, None))
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), alpn.first().copied());
        wss_echo(tls, "localhost", "over tls").await;
    }
    // Plain HTTP on the TLS port is not served: the handshake fails and the connection closes.
    let mut tcp = TcpStream::connect(proxy).await.unwrap();
    // The proxy may reset the connection as soon as the bytes fail as a ClientHello.
    let _ = tcp
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let mut got = Vec::new();
    let _ = within(
        "the close",
        tokio::io::AsyncReadExt::read_to_end(&mut tcp, &mut got),
    )
    .await;
    assert!(!String::from_utf8_lossy(&got).contains("200"), "{got:?}");
}

#[tokio::test]
async fn websocket_over_http2_negotiated_by_alpn() {
    let ca = Ca::new("edge test CA");
    let (cert, key) = write_pair("h2", &ca.issue(&["localhost"], 2));
    let (up, mut seen) = recording_upstream(&[]).await;
    let (_child, proxy, metrics) = start(&[
        "--upstream",
        &format!("ws://{up}"),
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--metrics-listen",
        "127.0.0.1:0",
    ])
    .await;
    let tls = tls_connect(
        proxy,
        "localhost",
        client_config(&ca, &[b"h2", b"http/1.1"], None),
    )
    .await
    .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .method(Method::CONNECT)
        .uri("https://localhost/room")
        .extension(hyper::ext::Protocol::from_static("websocket"))
        .header("sec-websocket-version", "13")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let mut res = within("the h2 answer", send.send_request(req))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let upgraded = within("the h2 stream", hyper::upgrade::on(&mut res))
        .await
        .unwrap();
    let mut ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await;
    ws.send(Message::text("h2 over tls")).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::text("h2 over tls"));
    // The upstream is told the client came over TLS.
    let (_, headers) = within("the upstream request", seen.recv()).await.unwrap();
    assert_eq!(headers["x-forwarded-proto"], "https");
    // Operators can count RFC 8441 sessions from browsers.
    let (_, _, body) = http_request(metrics.unwrap(), "/metrics", &[]).await;
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("ws_proxy_sessions_opened_total{protocol=\"h2\",tls=\"true\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn sni_picks_the_certificate_for_the_name() {
    let ca = Ca::new("edge test CA");
    let chat = ca.issue(&["chat.test"], 10);
    let admin = ca.issue(&["admin.test", "*.admin.test"], 11);
    let (chat_cert, chat_key) = write_pair("sni-chat", &chat);
    let (admin_cert, admin_key) = write_pair("sni-admin", &admin);
    let file = write_config(
        "sni.toml",
        &format!(
            "tls_cert = {chat_cert:?}\ntls_key = {chat_key:?}\n\n[[tls.certificates]]\ncert = {admin_cert:?}\nkey = {admin_key:?}\n"
        ),
    );
    let up = echo_upstream().await;
    let (_child, proxy, _) = start(&[
        "--upstream",
        &format!("ws://{up}"),
        "--config",
        file.to_str().unwrap(),
    ])
    .await;
    for (name, expected) in [
        ("chat.test", &chat.0),
        ("admin.test", &admin.0),
        ("eu.admin.test", &admin.0),
    ] {
        let tls = tls_connect(proxy, name, client_config(&ca, &[], None))
            .await
            .unwrap();
        assert_eq!(presented(&tls), der(expected), "{name}");
        wss_echo(tls, name, name).await;
    }
    // An unknown name gets the default (first) certificate, which a verifying client refuses.
    assert!(
        tls_connect(proxy, "other.test", client_config(&ca, &[], None))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn certificates_rotate_on_sighup_and_on_file_change_without_dropping_sessions() {
    let ca = Ca::new("edge test CA");
    let first = ca.issue(&["localhost"], 100);
    let (cert, key) = write_pair("rotate", &first);
    let up = echo_upstream().await;
    let (child, proxy, metrics) = start(&[
        "--upstream",
        &format!("ws://{up}"),
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--metrics-listen",
        "127.0.0.1:0",
    ])
    .await;
    let tls = tls_connect(proxy, "localhost", client_config(&ca, &[], None))
        .await
        .unwrap();
    assert_eq!(presented(&tls), der(&first.0));
    let mut before = wss_echo(tls, "localhost", "before").await;

    // SIGHUP: the new certificate for new handshakes; the open session keeps echoing.
    let second = ca.issue(&["localhost"], 101);
    write_pair("rotate", &second);
    let pid = child.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    until_presented(proxy, &ca, &second.0, "the new certificate after SIGHUP").await;
    before.send(Message::text("after sighup")).await.unwrap();
    assert_eq!(
        next_message(&mut before).await,
        Message::text("after sighup")
    );

    // A broken replacement: the running certificate stays, and the error is counted.
    std::fs::write(&key, "not a key").unwrap();
    std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    let metrics = metrics.unwrap();
    within("the failed reload to be counted", async {
        loop {
            let (_, _, body) = http_request(metrics, "/metrics", &[]).await;
            if String::from_utf8_lossy(&body)
                .contains("ws_proxy_config_reloads_total{result=\"error\"} 1")
            {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
    let tls = tls_connect(proxy, "localhost", client_config(&ca, &[], None))
        .await
        .unwrap();
    assert_eq!(
        presented(&tls),
        der(&second.0),
        "the running certificate stays"
    );

    // Replaced on disk, as cert-manager does (new files renamed into place): picked up by the
    // watcher without a signal.
    let third = ca.issue(&["localhost"], 102);
    let (tmp_cert, tmp_key) = write_pair("rotate-next", &third);
    std::fs::rename(&tmp_key, &key).unwrap();
    std::fs::rename(&tmp_cert, &cert).unwrap();
    until_presented(
        proxy,
        &ca,
        &third.0,
        "the new certificate after the file change",
    )
    .await;
    before
        .send(Message::text("after the file change"))
        .await
        .unwrap();
    assert_eq!(
        next_message(&mut before).await,
        Message::text("after the file change")
    );
}

#[tokio::test]
async fn client_certificates_are_required_and_verified() {
    let ca = Ca::new("edge test CA");
    let clients = Ca::new("client CA");
    let files = write_pair("mtls", &ca.issue(&["localhost"], 20));
    let client_ca = dir().join("clients.pem");
    std::fs::write(&client_ca, &clients.pem).unwrap();
    let (_child, proxy, _) =
        start_tls(&files, &["--tls-client-ca", client_ca.to_str().unwrap()]).await;
    let alice = clients.issue(&["alice.clients.test"], 21);
    let tls = tls_connect(proxy, "localhost", client_config(&ca, &[], Some(&alice)))
        .await
        .unwrap();
    wss_echo(tls, "localhost", "with a client certificate").await;
    // Without one, or with one from another CA: no session (TLS 1.3 reports the refusal on
    // the first read, so try the upgrade).
    let stranger = ca.issue(&["mallory.test"], 22);
    for cert in [None, Some(&stranger)] {
        let refused = match tls_connect(proxy, "localhost", client_config(&ca, &[], cert)).await {
            Err(_) => true,
            Ok(tls) => tokio_tungstenite::client_async("wss://localhost/", tls)
                .await
                .is_err(),
        };
        assert!(refused, "a session without a valid client certificate");
    }
}

/// A client that stalls mid-handshake is cut at the header deadline and delays nobody.
#[tokio::test]
async fn a_stalled_tls_handshake_is_cut_at_the_header_timeout() {
    let ca = Ca::new("edge test CA");
    let files = write_pair("stall", &ca.issue(&["localhost"], 30));
    let (_child, proxy, _) = start_tls(&files, &["--header-timeout", "1s"]).await;
    let mut stalled = TcpStream::connect(proxy).await.unwrap();
    // The start of a ClientHello record, and nothing more.
    stalled
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let tls = tls_connect(proxy, "localhost", client_config(&ca, &[], None))
        .await
        .unwrap();
    wss_echo(tls, "localhost", "not delayed").await;
    let mut rest = Vec::new();
    let _ = within("the stalled connection to be closed", async {
        tokio::io::AsyncReadExt::read_to_end(&mut stalled, &mut rest).await
    })
    .await;
    let took = started.elapsed();
    assert!(
        took < std::time::Duration::from_secs(3),
        "cut after {took:?}"
    );
}

/// An upstream whose self-signed certificate (CA:TRUE, as `openssl req -x509` makes it) is
/// listed in --upstream-ca is accepted; another self-signed one is still refused.
#[tokio::test]
async fn a_pinned_self_signed_upstream_certificate_is_accepted() {
    let self_signed = |name: &str| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let pinned = self_signed("pinned");
    let up = tls_echo_upstream(&pinned).await;
    let ca_file = dir().join("pinned.pem");
    std::fs::write(&ca_file, &pinned.0).unwrap();
    let (_child, proxy, _) = start(&[
        "--upstream",
        &format!("wss://localhost:{}", up.port()),
        "--upstream-ca",
        ca_file.to_str().unwrap(),
    ])
    .await;
    let mut ws = connect(proxy, "/").await;
    ws.send(Message::text("pinned")).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::text("pinned"));

    let other = self_signed("other");
    let other_file = dir().join("other.pem");
    std::fs::write(&other_file, &other.0).unwrap();
    let (_child2, proxy2, _) = start(&[
        "--upstream",
        &format!("wss://localhost:{}", up.port()),
        "--upstream-ca",
        other_file.to_str().unwrap(),
    ])
    .await;
    let (status, _, body) = http_request(proxy2, "/", &UPGRADE_HEADERS).await;
    assert_eq!(
        status,
        StatusCode::BAD_GATEWAY,
        "{}",
        String::from_utf8_lossy(&body)
    );
}

/// A TLS echo upstream on 127.0.0.1 with the given certificate and key.
async fn tls_echo_upstream((cert, key): &(String, String)) -> SocketAddr {
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
        PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut ws) = tokio_tungstenite::accept_async(tls).await else {
                    return;
                };
                while let Some(Ok(m)) = futures_util::StreamExt::next(&mut ws).await {
                    if m.is_text() && ws.send(m).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn bad_tls_flags_are_one_line_and_exit_code_2() {
    let ca = Ca::new("edge test CA");
    let (cert, key) = write_pair("flags", &ca.issue(&["localhost"], 40));
    let (_, other_key) = write_pair("flags-other", &ca.issue(&["localhost"], 41));
    let junk = dir().join("junk.pem");
    std::fs::write(&junk, "junk").unwrap();
    let junk = junk.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &["--tls-cert", &cert],
            "ws-proxy: --tls-cert needs --tls-key",
        ),
        (&["--tls-key", &key], "ws-proxy: --tls-key needs --tls-cert"),
        (
            &["--tls-client-ca", &cert],
            "ws-proxy: --tls-client-ca needs --tls-cert and --tls-key",
        ),
        (
            &["--tls-cert", "/nonexistent.crt", "--tls-key", &key],
            "ws-proxy: --tls-cert/--tls-key: cannot read /nonexistent.crt",
        ),
        (
            &["--tls-cert", &cert, "--tls-key", &other_key],
            "the key does not match the certificate",
        ),
        (
            &["--tls-cert", junk, "--tls-key", &key],
            "no certificate found",
        ),
        (
            &["--tls-cert", &cert, "--tls-key", junk],
            "no usable private key",
        ),
        (
            &[
                "--tls-cert",
                &cert,
                "--tls-key",
                &key,
                "--tls-client-ca",
                junk,
            ],
            "ws-proxy: --tls-client-ca: ",
        ),
    ];
    for (args, expected) in cases {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ws-proxy"))
            .args(["--upstream", "ws://127.0.0.1:1"])
            .args(*args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: one line: {err}");
        assert!(
            err.contains(expected),
            "{args:?}: expected {expected:?} in {err}"
        );
    }
}

/// In the library: the verified client certificate is in the request's extensions, so a
/// routing hook can authorise on it and forward it upstream (nginx's
/// `proxy_set_header X-SSL-Client-Cert $ssl_client_escaped_cert`).
#[tokio::test]
async fn a_routing_hook_sees_and_forwards_the_client_certificate() {
    use axum_ws_proxy::{
        hooks::Refusal,
        tls::{ServerTls, TlsInfo},
        WsProxyLayer,
    };
    use base64::Engine;
    let ca = Ca::new("edge test CA");
    let clients = Ca::new("client CA");
    let (cert, key) = write_pair("hook", &ca.issue(&["localhost"], 50));
    let client_ca = dir().join("hook-clients.pem");
    std::fs::write(&client_ca, &clients.pem).unwrap();
    let tls = ServerTls::from_pem_files(&cert, &key)
        .unwrap()
        .client_ca_file(&client_ca)
        .unwrap();
    let (up, mut seen) = recording_upstream(&[]).await;
    let layer = WsProxyLayer::new(upstream(up)).route(|req| {
        let leaf = req
            .extensions()
            .get::<TlsInfo>()
            .and_then(|tls| tls.peer_certificates.first().cloned())
            .ok_or_else(|| Refusal::new(StatusCode::FORBIDDEN, "a client certificate is needed"))?;
        let value = base64::engine::general_purpose::STANDARD.encode(leaf.as_ref());
        let value = value
            .parse()
            .map_err(|_| Refusal::new(StatusCode::BAD_REQUEST, "bad cert"))?;
        req.upstream_headers().insert("x-client-cert", value);
        Ok(())
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = listener.local_addr().unwrap();
    let app = axum::Router::new().layer(layer);
    tokio::spawn(std::future::IntoFuture::into_future(
        axum_ws_proxy::serve(listener, app).tls(tls),
    ));
    let alice = clients.issue(&["alice.clients.test"], 51);
    let tls = tls_connect(proxy, "localhost", client_config(&ca, &[], Some(&alice)))
        .await
        .unwrap();
    wss_echo(tls, "localhost", "authorised").await;
    let (_, headers) = within("the upstream request", seen.recv()).await.unwrap();
    let expected = base64::engine::general_purpose::STANDARD.encode(der(&alice.0));
    assert_eq!(headers["x-client-cert"], expected.as_str());
    assert_eq!(headers["x-forwarded-proto"], "https");
}
