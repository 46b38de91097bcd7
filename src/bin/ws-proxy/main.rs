//! `ws-proxy`: the layer as a standalone WebSocket reverse proxy (e.g. a sidecar).
#![deny(unsafe_code)]

use std::io::IsTerminal;
use std::process::ExitCode;

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use tracing_subscriber::EnvFilter;

mod args;
mod config_file;
mod trim;

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
        args::Command::Check(a) => {
            println!("configuration OK");
            println!("listen = {}", a.listen);
            println!("header_timeout = {:?}", a.header_timeout);
            println!("shutdown_grace = {:?}", a.shutdown_grace);
            if let Some(m) = a.metrics_listen {
                println!("metrics_listen = {m}");
            }
            for (prefix, pool) in &a.routes {
                println!("route {prefix} -> pool {pool}");
            }
            println!("{:#?}", a.layer);
            return ExitCode::SUCCESS;
        }
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
    // Run the server as a task on the runtime's workers: under `block_on` the accept loop would
    // live on the main thread, and every accepted connection would cost a cross-thread wake-up.
    let served = runtime.block_on(async {
        tokio::spawn(serve(args))
            .await
            .unwrap_or_else(|e| Err(format!("server task failed: {e}")))
    });
    match served {
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
    if let Some(addr) = args.metrics_listen {
        serve_metrics(addr).await?;
    }
    let drain = args.layer.shutdown_handle();
    trim::spawn(drain.clone());
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

    // The library's server: hyper gets the socket (tunnels splice), heads have a deadline and
    // a bound, and HTTP/2 (h2c) is served on the same port.
    axum_ws_proxy::serve(listener, app)
        .header_timeout(args.header_timeout)
        .grace(args.shutdown_grace)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .map_err(|e| format!("server failed: {e}"))?;
    tracing::info!(
        sessions = drain.live_sessions(),
        "shutting down: closing sessions with 1001"
    );
    let dropped = drain.shutdown(args.shutdown_grace).await;
    tracing::info!(dropped, "shutdown complete");
    Ok(())
}

/// Installs the Prometheus recorder and serves `GET /metrics` on `addr`.
async fn serve_metrics(addr: std::net::SocketAddr) -> Result<(), String> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("ws_proxy_upstream_handshake_seconds".into()),
            &[
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ],
        )
        .and_then(|b| b.install_recorder())
        .map_err(|e| format!("cannot start metrics: {e}"))?;
    axum_ws_proxy::metrics::describe_metrics();
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr} for metrics: {e}"))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("cannot read the metrics address: {e}"))?;
    let render = handle.clone();
    let app = Router::new().route("/metrics", get(move || async move { render.render() }));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("metrics server failed: {e}");
        }
    });
    // Histograms and summaries need periodic upkeep.
    tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            every.tick().await;
            handle.run_upkeep();
        }
    });
    tracing::info!(metrics = %local, "metrics at /metrics");
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
