//! Log output that never stalls traffic: lines go into a bounded queue that a thread of its
//! own writes to stderr. When stderr cannot keep up (a stuck collector, a pipe nobody reads),
//! new lines are dropped and counted instead of blocking the runtime's workers.

use std::io::IsTerminal;
use std::time::Duration;

use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
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
    // `RUST_LOG` (default `info`). Directives by target and level only (the usual kind) go
    // to a `Targets` filter; `EnvFilter`, needed for span and field directives, takes a lock
    // and a map lookup each time any span is entered or left, and each session's span is
    // entered on every poll of its task (about 1 k instructions per session, callgrind).
    let directives = std::env::var("RUST_LOG").unwrap_or_default();
    let directives = match directives.trim() {
        "" => "info",
        set => set,
    };
    let (targets, dynamic) = filters(directives);
    let filtered = tracing_subscriber::registry().with(targets).with(dynamic);
    let layer = tracing_subscriber::fmt::layer().with_writer(writer);
    match format {
        LogFormat::Json => filtered
            .with(
                layer
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false),
            )
            .init(),
        LogFormat::Text => filtered
            .with(layer.with_ansi(std::io::stderr().is_terminal()))
            .init(),
    }
    (guard, dropped)
}

/// The filter for `directives`: `Targets` when they name targets and levels only, else
/// `EnvFilter` (and `info` when neither can parse them).
fn filters(directives: &str) -> (Option<Targets>, Option<EnvFilter>) {
    let by_target = directives
        .split(',')
        .all(plain_directive)
        .then(|| directives.parse::<Targets>().ok())
        .flatten();
    match by_target {
        Some(targets) => (Some(targets), None),
        None => (
            None,
            Some(EnvFilter::try_new(directives).unwrap_or_else(|_| EnvFilter::new("info"))),
        ),
    }
}

/// `target`, `level` or `target=level`, nothing else: `Targets` would take an empty piece, a
/// space or a span directive (`[span]`) as part of a target's name (an empty one matches every
/// target), where `EnvFilter` skips, trims or refuses them.
fn plain_directive(piece: &str) -> bool {
    let (target, level) = piece.split_once('=').unwrap_or((piece, "info"));
    let is_target = |t: &str| {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':' || b == b'-')
    };
    let is_level = |l: &str| {
        ["off", "error", "warn", "info", "debug", "trace"]
            .iter()
            .any(|name| l.eq_ignore_ascii_case(name))
    };
    is_target(target) && is_level(level)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_and_level_directives_take_the_cheap_filter_and_span_ones_env_filter() {
        for plain in [
            "info",
            "warn,axum_ws_proxy=debug",
            "axum_ws_proxy::session=trace",
        ] {
            let (targets, dynamic) = filters(plain);
            assert!(targets.is_some() && dynamic.is_none(), "{plain}");
        }
        // Span directives, and what `Targets` would read as target names (an empty one
        // matches every target): `EnvFilter` skips, trims or refuses those, as before.
        for other in [
            "[ws_session]=debug",
            "info,[ws_session{id=3}]=trace",
            "warn,",
            "info,,hyper=warn",
            "info, axum_ws_proxy=debug",
            "debug hyper=warn",
            "axum_ws_proxy=debug;hyper=warn",
            "axum_ws_proxy=verbose",
        ] {
            let (targets, dynamic) = filters(other);
            assert!(targets.is_none() && dynamic.is_some(), "{other}");
        }
        let (targets, _) = filters("axum_ws_proxy=debug,warn");
        let targets = targets.unwrap();
        assert!(targets.would_enable("axum_ws_proxy::session", &tracing::Level::DEBUG));
        assert!(!targets.would_enable("hyper", &tracing::Level::INFO));
    }
}
