//! `ws-proxy`: the layer as a standalone WebSocket reverse proxy (e.g. a sidecar).
#![deny(unsafe_code)]

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// glibc's, with over-aligned blocks (tokio's tasks and registrations) taken from `malloc`.
#[cfg(all(
    target_os = "linux",
    target_env = "gnu",
    not(any(feature = "mimalloc", feature = "jemalloc"))
))]
#[global_allocator]
static ALLOCATOR: aligned::Aligned = aligned::Aligned;

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use axum_ws_proxy::{ReloadHandle, ReloadableLayer};
use tower::Layer;

mod admin;
#[cfg(all(
    target_os = "linux",
    target_env = "gnu",
    not(any(feature = "mimalloc", feature = "jemalloc"))
))]
mod aligned;
mod config_file;
mod log;
mod plan;
mod session_api;
mod settings;
mod status;
mod trim;

use plan::Plan;

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let fail = |msg: String| {
        eprintln!("ws-proxy: {msg}");
        ExitCode::from(2)
    };
    let (resolved, check) = match settings::parse(argv.clone()) {
        Ok(settings::Command::Print(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Ok(settings::Command::Run(r)) => (r, false),
        Ok(settings::Command::Check(r)) => (r, true),
        Err(msg) => return fail(msg),
    };
    let plan = match Plan::new(resolved) {
        Ok(p) => p,
        Err(msg) => return fail(msg),
    };
    if check {
        return match toml::to_string(&plan.settings) {
            Ok(text) => {
                println!(
                    "# ws-proxy {}: the resolved configuration (--config accepts it as it is)\n",
                    env!("CARGO_PKG_VERSION")
                );
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(format!("cannot print the configuration: {e}")),
        };
    }

    let (_log_guard, dropped_lines) = log::init(plan.settings.log_format.unwrap_or_default());
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
        tokio::spawn(log::report_drops(dropped_lines));
        tokio::spawn(serve(plan, argv))
            .await
            .unwrap_or_else(|e| Err(format!("server task failed: {e}")))
    });
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            tracing::error!("{msg}");
            eprintln!("ws-proxy: {msg}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(plan: Plan, argv: Vec<String>) -> Result<(), String> {
    if plan.settings.insecure_skip_verify == Some(true) {
        // UpstreamTls logs its own warning too; this one names the flag.
        tracing::warn!("--insecure-skip-verify: wss:// upstream certificates are NOT verified");
    }
    let layer = plan.layer();
    let sessions = layer.shutdown_handle().drain_window(plan.drain_window());
    // The registry is the first layer's for good (reloads keep it): so is this handle.
    let control = layer.session_control();
    trim::spawn(sessions.clone());
    let (layer, reload) = layer.reloadable();
    // Set from SIGTERM until exit: /healthz answers 503 so load balancers move away.
    let draining = Arc::new(AtomicBool::new(false));
    let status = status::Status::new(&plan, reload.clone(), sessions.clone(), draining.clone());
    if let Some(addr) = plan.settings.metrics_listen {
        serve_metrics(addr, status.clone()).await?;
    }
    if let (Some(addr), Some(token)) = (plan.settings.admin_listen, plan.admin_token.clone()) {
        admin::serve(addr, token, status.clone(), control).await?;
    }
    // The proxy is the app's outermost layer: upgrades may skip hyper and the router.
    let direct = axum_ws_proxy::serve::DirectUpgrades::from(&layer);
    let app = app(layer, draining.clone(), log::AccessLog::new(reload.clone()));
    let (listener, local) = bind(&plan).await?;
    // Before the first log line says we are up: from then on SIGHUP must never end the process.
    let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| format!("cannot listen for SIGHUP: {e}"))?;
    let scheme = if plan.server_tls.is_some() {
        "https"
    } else {
        "http"
    };
    tracing::info!(listen = %local, scheme, upstream = %plan.default_pool, "ws-proxy listening");

    let backlog = plan.settings.listen_backlog.map_or(1024, |n| n.get());
    let (delay, grace, window) = (
        plan.shutdown_delay(),
        plan.shutdown_grace(),
        plan.drain_window(),
    );
    let header_timeout = plan.header_timeout();
    let proxy_protocol = plan.settings.proxy_protocol == Some(true);
    let server_tls = plan.server_tls.clone();
    if let Some(tls) = &server_tls {
        // Kubernetes and cert-manager replace Secret files in place: follow them.
        tokio::spawn(tls.clone().watch(std::time::Duration::from_secs(5)));
    }
    tokio::spawn(reload_on_hangup(plan, argv, reload, hangups, status));

    // SIGTERM: (1) keep serving for the delay while /healthz fails; (2) stop accepting, and
    // start the paced drain (1012 to each session, spread over the drain window; a drain the
    // admin API started goes on, finishing within this window at the latest); (3) everything
    // shares one grace period.
    let (stopping, stop) = tokio::sync::watch::channel(false);
    let live = sessions.clone();
    let signal = async move {
        shutdown_signal().await;
        draining.store(true, Ordering::Relaxed);
        if !delay.is_zero() {
            tracing::info!(?delay, "shutdown: still serving, /healthz answers 503");
            tokio::time::sleep(delay).await;
        }
        tracing::info!(
            sessions = live.live_sessions(),
            window = ?window,
            "shutting down: closing sessions with 1012 over the drain window"
        );
        let _ = stopping.send(true);
    };
    tokio::spawn(signal);
    let mut server = axum_ws_proxy::serve(listener, app).direct_upgrades(direct);
    if let Some(tls) = server_tls {
        server = server.tls(tls);
    }
    let served = server
        .header_timeout(header_timeout)
        .proxy_protocol(proxy_protocol)
        .listen_backlog(backlog)
        .grace(grace)
        .drain_sessions(sessions, grace)
        .with_graceful_shutdown(async move {
            let mut stop = stop;
            let _ = stop.wait_for(|s| *s).await;
        })
        .await;
    served.map_err(|e| format!("server failed: {e}"))?;
    tracing::info!("shutdown complete");
    Ok(())
}

/// The binary's routes: `/healthz` (503 once draining), 404 for the rest of plain HTTP (each
/// request in the access log), and the proxy in front of both.
/// The proxy in front of the router: an upgrade is taken before any routing (the router, its
/// fallback and the access log see plain HTTP only).
fn app(
    layer: ReloadableLayer,
    draining: Arc<AtomicBool>,
    access: log::AccessLog,
) -> <ReloadableLayer as Layer<Router>>::Service {
    let router = Router::new()
        .route(
            "/healthz",
            get(move || async move {
                if draining.load(Ordering::Relaxed) {
                    (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
                } else {
                    (StatusCode::OK, "ok")
                }
            }),
        )
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .layer(axum::middleware::from_fn(move |req, next| {
            access.clone().log(req, next)
        }));
    layer.layer(router)
}

/// The listener (`--listen`, default 127.0.0.1:8080) and the address it got.
async fn bind(plan: &Plan) -> Result<(tokio::net::TcpListener, std::net::SocketAddr), String> {
    let listen = plan
        .settings
        .listen
        .unwrap_or_else(|| std::net::SocketAddr::from(([127, 0, 0, 1], 8080)));
    listen_on(listen, "", "listening").await
}

/// Binds `addr` (`purpose`, e.g. " for metrics", names it in the error) and returns the
/// listener with the address it got (`name` names that one).
pub(crate) async fn listen_on(
    addr: std::net::SocketAddr,
    purpose: &str,
    name: &str,
) -> Result<(tokio::net::TcpListener, std::net::SocketAddr), String> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}{purpose}: {e}"))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("cannot read the {name} address: {e}"))?;
    Ok((listener, local))
}

/// SIGHUP: read the command line's file again; new sessions follow it, live ones continue.
async fn reload_on_hangup(
    mut running: Plan,
    argv: Vec<String>,
    reload: ReloadHandle,
    mut hangups: tokio::signal::unix::Signal,
    status: status::Status,
) {
    while hangups.recv().await.is_some() {
        // File reads on a blocking thread: the runtime's workers never wait on a disk.
        let args = argv.clone();
        let built =
            tokio::task::spawn_blocking(move || settings::reparse(args).and_then(Plan::new))
                .await
                .unwrap_or_else(|e| Err(format!("reload task failed: {e}")));
        match built {
            Ok(mut fresh) => {
                let ignored = running.restart_only_changes(&fresh);
                if !ignored.is_empty() {
                    tracing::warn!(
                        settings = ?ignored,
                        "reload: these settings change only with a restart; keeping the running values"
                    );
                }
                fresh.adopt(&running);
                // The running server holds the first ServerTls: it re-reads its files.
                if let Some(tls) = running.server_tls.clone() {
                    let _ = tokio::task::spawn_blocking(move || tls.reload()).await;
                }
                fresh.server_tls = running.server_tls.clone();
                let generation = reload.reload(fresh.layer());
                status.follow(&fresh);
                metrics::counter!("ws_proxy_config_reloads_total", "result" => "ok").increment(1);
                tracing::info!(generation, upstream = %fresh.default_pool, "configuration reloaded");
                running = fresh;
            }
            Err(msg) => {
                metrics::counter!("ws_proxy_config_reloads_total", "result" => "error")
                    .increment(1);
                tracing::error!(
                    generation = reload.generation(),
                    "reload refused, the running configuration stays: {msg}"
                );
            }
        }
    }
}

/// Installs the Prometheus recorder and serves `/metrics`, `/status` and `/` on `addr`.
async fn serve_metrics(addr: std::net::SocketAddr, status: status::Status) -> Result<(), String> {
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
    metrics::gauge!("ws_proxy_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    let (listener, local) = listen_on(addr, " for metrics", "metrics").await?;
    let app = status::router(status, handle.clone());
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
    tracing::info!(metrics = %local, "metrics at /metrics, status at /status and /");
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
