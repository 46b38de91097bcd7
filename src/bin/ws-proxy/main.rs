//! `ws-proxy`: the layer as a standalone WebSocket reverse proxy (e.g. a sidecar).

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::process::ExitCode;

use axum::http::StatusCode;
use axum::routing::get;
use axum::serve::ListenerExt;
use axum::Router;
use axum_ws_proxy::WsProxyLayer;
use tracing_subscriber::EnvFilter;

mod args;

fn main() -> ExitCode {
    let command = match args::parse(std::env::args().skip(1)) {
        Ok(c) => c,
        Err(msg) => {
            eprintln!("ws-proxy: {msg}");
            return ExitCode::from(2);
        }
    };
    let args = match command {
        args::Command::Help => {
            println!("{}", args::USAGE);
            return ExitCode::SUCCESS;
        }
        args::Command::Version => {
            println!("ws-proxy {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        args::Command::Run(a) => a,
    };

    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ws-proxy: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("ws-proxy: {msg}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: args::Args) -> Result<(), String> {
    let mut layer = WsProxyLayer::new(args.pool.clone());
    if let Some(t) = args.connect_timeout {
        layer = layer.connect_timeout(t);
    }
    if let Some(n) = args.max_message_size {
        layer = layer.max_message_size(n).max_frame_size(n);
    }
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .layer(layer);

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("cannot read the listening address: {e}"))?;
    tracing::info!(listen = %local, upstream = %args.pool, "ws-proxy listening");
    // Small messages must not wait for Nagle's algorithm; the bridge batches writes itself.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
    .map_err(|e| format!("server error: {e}"))
}
