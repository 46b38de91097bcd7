//! Log output that never stalls traffic: lines go into a bounded queue that a thread of its
//! own writes to stderr. When stderr cannot keep up (a stuck collector, a pipe nobody reads),
//! new lines are dropped and counted instead of blocking the runtime's workers.

use std::io::IsTerminal;
use std::time::Duration;

use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

use crate::settings::LogFormat;

/// Lines held while stderr is slow; beyond, lines are dropped (and counted).
const QUEUE_LINES: usize = 16 * 1024;

/// Installs the global subscriber. Keep the guard until exit: dropping it flushes the queue
/// (waiting at most about a second for a stuck stderr).
pub(crate) fn init(format: LogFormat) -> (WorkerGuard, ErrorCounter) {
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(QUEUE_LINES)
        .thread_name("ws-proxy-log")
        .finish(std::io::stderr());
    let dropped = writer.error_counter();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_writer(writer)
        .with_env_filter(filter);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init(),
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
    (guard, dropped)
}

/// Every second: dropped lines into `ws_proxy_log_lines_dropped_total`, and a line saying
/// how many (it gets through once stderr drains).
pub(crate) async fn report_drops(dropped: ErrorCounter) {
    let mut reported = 0;
    let mut every = tokio::time::interval(Duration::from_secs(1));
    loop {
        every.tick().await;
        let now = dropped.dropped_lines();
        if now > reported {
            metrics::counter!("ws_proxy_log_lines_dropped_total")
                .increment((now - reported) as u64);
            tracing::warn!(
                dropped_total = now,
                "log output fell behind: {} lines dropped since the last report",
                now - reported
            );
            reported = now;
        }
    }
}

/// One line per plain HTTP request (upgrades get theirs from the layer when the session
/// closes): client, method, path (secrets redacted as the layer redacts them), status,
/// duration.
#[derive(Clone)]
pub(crate) struct AccessLog {
    /// The running configuration: its redaction list follows reloads.
    proxy: axum_ws_proxy::ReloadHandle,
}

impl AccessLog {
    pub(crate) fn new(proxy: axum_ws_proxy::ReloadHandle) -> Self {
        Self { proxy }
    }

    pub(crate) async fn log(
        self,
        req: axum::extract::Request,
        next: axum::middleware::Next,
    ) -> axum::response::Response {
        let started = std::time::Instant::now();
        let client = req
            .extensions()
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0);
        let method = req.method().clone();
        let raw = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let path = self.proxy.current().log_path(raw).into_owned();
        let res = next.run(req).await;
        tracing::info!(
            target: "ws_proxy::access",
            client = client.map(tracing::field::display),
            method = %method,
            path,
            status = res.status().as_u16(),
            duration_ms = started.elapsed().as_millis() as u64,
            "http request"
        );
        res
    }
}
