//! The whole job in one process: an echo WebSocket server (the "upstream"), and an axum app in
//! front of it with `WsProxyLayer`, serving a page to try it from a browser.
//!
//! ```text
//! cargo run --example quickstart            # listens on 127.0.0.1:3000 (or a free port)
//! cargo run --example quickstart -- 0.0.0.0:8080
//! cargo run --example quickstart -- --tls   # https:// and wss://, HTTP/2 included
//! ```
//!
//! With `--tls` it makes a certificate for `localhost` and `127.0.0.1` at start and prints its
//! public-key pin, so a browser can trust it for this run (Chromium:
//! `--ignore-certificate-errors-spki-list=PIN`); over HTTPS, Chromium carries the page's
//! WebSocket over HTTP/2 (RFC 8441) through the proxy.
//!
//! The echo upstream chooses the subprotocol `echo.v1` when offered, and answers the message
//! `/close` by closing with code 4000, so the page shows both crossing the proxy. (The
//! browser test in `tests/browser.rs` drives this same code in headless Chromium.)

use std::net::SocketAddr;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::response::Html;
use axum::routing::get;
use axum::Router;
#[cfg(all(feature = "serve", feature = "tls"))]
use axum_ws_proxy::tls::ServerTls;
use axum_ws_proxy::{Deflate, WsProxyLayer};
use tokio::net::TcpListener;

const PAGE: &str = include_str!("quickstart.html");

#[allow(dead_code)] // also compiled into tests/browser.rs, which has its own entry point
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().init();
    let upstream = echo_upstream().await?;

    let args: Vec<String> = std::env::args().skip(1).collect();
    let tls = args.iter().any(|a| a == "--tls");
    let listener = match args.iter().find(|a| !a.starts_with("--")) {
        Some(addr) => TcpListener::bind(addr.as_str()).await?,
        None => match TcpListener::bind("127.0.0.1:3000").await {
            Ok(l) => l,
            Err(_) => TcpListener::bind("127.0.0.1:0").await?, // 3000 is taken
        },
    };
    let addr = listener.local_addr()?;
    let app = app(upstream)?;
    if tls {
        #[cfg(all(feature = "serve", feature = "tls"))]
        {
            let (server_tls, pin) = tls_certificate()?;
            let port = addr.port();
            println!("WebSocket proxy ready: open https://localhost:{port}/ in a browser");
            println!("  the certificate is made for this run; its public-key pin is {pin}");
            println!(
                "  chromium --ignore-certificate-errors-spki-list={pin} https://localhost:{port}/"
            );
            println!("  (other browsers: accept the certificate warning once)");
            axum_ws_proxy::serve(listener, app).tls(server_tls).await?;
            return Ok(());
        }
        #[cfg(not(all(feature = "serve", feature = "tls")))]
        return Err("--tls needs the crate's `serve` and `tls` features (on by default)".into());
    }
    println!("WebSocket proxy ready: open http://{addr}/ in a browser");
    println!("  or connect a client to ws://{addr}/echo (echo upstream at ws://{upstream})");
    #[cfg(feature = "serve")]
    axum_ws_proxy::serve(listener, app).await?;
    #[cfg(not(feature = "serve"))]
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}

#[cfg(all(feature = "serve", feature = "tls"))]
#[allow(dead_code)] // used by main and by tests/browser.rs, not by the examples that share this file
/// A certificate for `localhost` and `127.0.0.1`, made now, and its public-key pin (base64
/// SHA-256 of the SubjectPublicKeyInfo, what Chromium's spki list and HPKP use).
pub fn tls_certificate() -> Result<(ServerTls, String), Box<dyn std::error::Error>> {
    use base64::Engine;
    use rcgen::PublicKeyData;
    let key = rcgen::KeyPair::generate()?;
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?
        .self_signed(&key)?;
    let spki = ring::digest::digest(&ring::digest::SHA256, &key.subject_public_key_info());
    let pin = base64::engine::general_purpose::STANDARD.encode(spki.as_ref());
    let tls = ServerTls::from_pem(cert.pem().as_bytes(), key.serialize_pem().as_bytes())?;
    Ok((tls, pin))
}

/// The app: the page at `/`, and every WebSocket upgrade proxied to `upstream`. The echo
/// upstream has no compression; `Deflate::Always` compresses toward the browser anyway (the
/// page shows `permessage-deflate` among the WebSocket's extensions).
pub fn app(upstream: SocketAddr) -> Result<Router, axum_ws_proxy::upstream::ParseUpstreamError> {
    Ok(Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .layer(WsProxyLayer::new(format!("ws://{upstream}").parse()?).deflate(Deflate::Always)))
}

/// The upstream: any WebSocket service; here an axum echo server on a free port.
pub async fn echo_upstream() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let echo = Router::new()
        .fallback(|ws: WebSocketUpgrade| async { ws.protocols(["echo.v1"]).on_upgrade(echo) });
    tokio::spawn(async move { axum::serve(listener, echo).await });
    Ok(addr)
}

/// Echoes text and binary; `/close` closes with 4000 and a reason.
async fn echo(mut socket: WebSocket) {
    while let Some(Ok(msg)) = socket.recv().await {
        let reply = match msg {
            Message::Text(t) if t.as_str() == "/close" => Message::Close(Some(CloseFrame {
                code: 4000,
                reason: "goodbye from the upstream".into(),
            })),
            Message::Text(_) | Message::Binary(_) => msg,
            _ => continue,
        };
        if socket.send(reply).await.is_err() {
            break;
        }
    }
}
