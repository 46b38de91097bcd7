//! `ws-proxy`: the layer as a standalone WebSocket reverse proxy (e.g. a sidecar).

use std::io::IsTerminal;
use std::process::ExitCode;

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use tracing_subscriber::EnvFilter;

mod args;
mod server;

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

async fn serve(mut args: args::Args) -> Result<(), String> {
    if args.insecure_skip_verify {
        // UpstreamTls logs its own warning too; this one names the flag.
        tracing::warn!("--insecure-skip-verify: wss:// upstream certificates are NOT verified");
        args.layer = args
            .layer
            .upstream_tls(axum_ws_proxy::UpstreamTls::insecure_skip_verify());
    }
    let drain = args.layer.shutdown_handle();
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .layer(args.layer.clone());

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("cannot read the listening address: {e}"))?;
    tracing::info!(listen = %local, upstream = %args.layer.pool(), "ws-proxy listening");

    server::serve(
        listener,
        app,
        args.header_timeout,
        args.shutdown_grace,
        shutdown_signal(),
    )
    .await;
    tracing::info!(
        sessions = drain.live_sessions(),
        "shutting down: closing sessions with 1001"
    );
    let dropped = drain.shutdown(args.shutdown_grace).await;
    tracing::info!(dropped, "shutdown complete");
    Ok(())
}

/// SIGTERM (what Kubernetes sends) or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    () = interrupt => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => interrupt.await,
        }
    }
    #[cfg(not(unix))]
    interrupt.await;
}
