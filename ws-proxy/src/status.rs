//! The metrics listener: `GET /metrics` (Prometheus, process metrics included), `GET /status`
//! (JSON) and `GET /` (the same as a page that refreshes itself).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use axum::http::header::CONTENT_TYPE;
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use axum::{Json, Router};
use axum_ws_proxy::{upstream::UpstreamPool, ReloadHandle, ShutdownHandle};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;

use crate::plan::Plan;

/// What the status endpoints read; the pools follow reloads.
#[derive(Clone)]
pub(crate) struct Status {
    started: Instant,
    reload: ReloadHandle,
    sessions: ShutdownHandle,
    draining: Arc<AtomicBool>,
    pools: Arc<RwLock<Pools>>,
}

#[derive(Clone, Default)]
struct Pools {
    default: Option<UpstreamPool>,
    named: BTreeMap<String, UpstreamPool>,
}

impl Status {
    pub(crate) fn new(
        plan: &Plan,
        reload: ReloadHandle,
        sessions: ShutdownHandle,
        draining: Arc<AtomicBool>,
    ) -> Self {
        let status = Self {
            started: Instant::now(),
            reload,
            sessions,
            draining,
            pools: Arc::default(),
        };
        status.follow(plan);
        status
    }

    /// The pools of the configuration now running (after a reload).
    pub(crate) fn follow(&self, plan: &Plan) {
        let pools = Pools {
            default: (!plan.settings.upstream.is_empty()).then(|| plan.default_pool.clone()),
            named: plan.pools.clone(),
        };
        *self.pools.write().unwrap_or_else(|e| e.into_inner()) = pools;
    }

    fn report(&self) -> Report {
        let pools = self.pools.read().unwrap_or_else(|e| e.into_inner()).clone();
        let members = |pool: &UpstreamPool| {
            pool.status()
                .into_iter()
                .map(|e| Member {
                    member: e.member.to_string(),
                    address: e.addr.to_string(),
                    live_sessions: e.live_sessions,
                    sessions: e.sessions,
                    failures: e.failures,
                    refusals: e.refusals,
                    in_rotation: !e.down,
                })
                .collect()
        };
        Report {
            version: env!("CARGO_PKG_VERSION"),
            uptime_seconds: self.started.elapsed().as_secs(),
            generation: self.reload.generation(),
            live_sessions: self.sessions.live_sessions(),
            shutting_down: self.draining.load(Ordering::Relaxed),
            drain: self.drain(),
            rebalance: pools
                .default
                .iter()
                .map(|p| ("(default)".to_owned(), p))
                .chain(pools.named.iter().map(|(n, p)| (n.clone(), p)))
                .map(|(name, pool)| {
                    let r = pool.rebalance_status();
                    let moved = Rebalanced {
                        settled_changes: r.settled_changes,
                        rebalances: r.rebalances,
                        sessions_moved: r.sessions_moved,
                    };
                    (name, moved)
                })
                .collect(),
            default_pool: pools.default.as_ref().map(members),
            pools: pools
                .named
                .iter()
                .map(|(name, pool)| (name.clone(), members(pool)))
                .collect(),
        }
    }
}

impl Status {
    /// The drain's progress, once one has begun (SIGTERM, or `POST /drain` on the admin
    /// listener).
    pub(crate) fn drain(&self) -> Option<Drain> {
        self.sessions.drain_progress().map(|p| Drain {
            elapsed_ms: p.elapsed.as_millis() as u64,
            window_ms: p.window.as_millis() as u64,
            sessions_at_start: p.sessions_at_start,
            asked_to_close: p.asked_to_close,
            live_sessions: p.live_sessions,
            done: p.done,
        })
    }

    /// Starts a drain without exiting (the admin listener's `POST /drain`): readiness fails
    /// from now on, as after SIGTERM. `false` if one was running.
    pub(crate) fn start_drain(&self) -> bool {
        self.draining.store(true, Ordering::Relaxed);
        self.sessions.drain()
    }
}

/// A drain's progress, as `/status` and the admin listener report it.
#[derive(Serialize)]
pub(crate) struct Drain {
    elapsed_ms: u64,
    window_ms: u64,
    sessions_at_start: usize,
    /// Sessions sent 1012 so far.
    asked_to_close: usize,
    live_sessions: usize,
    /// Every session found at the start has been asked.
    done: bool,
}

#[derive(Serialize)]
struct Report {
    version: &'static str,
    uptime_seconds: u64,
    /// 1 at start, one more per successful reload.
    generation: u64,
    live_sessions: usize,
    shutting_down: bool,
    /// The drain, once one has begun.
    drain: Option<Drain>,
    /// What rebalancing has done, per pool (`(default)` for `upstream`).
    rebalance: BTreeMap<String, Rebalanced>,
    /// Endpoints of the default pool (`upstream`), if it has members.
    default_pool: Option<Vec<Member>>,
    /// Endpoints of each named pool.
    pools: BTreeMap<String, Vec<Member>>,
}

/// A pool's rebalancing so far.
#[derive(Serialize)]
struct Rebalanced {
    settled_changes: u64,
    rebalances: u64,
    sessions_moved: u64,
}

/// One endpoint (an address of a member).
#[derive(Serialize)]
struct Member {
    member: String,
    address: String,
    live_sessions: usize,
    sessions: u64,
    failures: u64,
    refusals: u64,
    in_rotation: bool,
}

/// The metrics listener's routes.
pub(crate) fn router(status: Status, prometheus: PrometheusHandle) -> Router {
    let process = metrics_process::Collector::default();
    process.describe();
    let json = status.clone();
    Router::new()
        .route(
            "/metrics",
            get(move || async move {
                process.collect();
                (
                    [(CONTENT_TYPE, "text/plain; version=0.0.4")],
                    prometheus.render(),
                )
            }),
        )
        .route(
            "/status",
            get(move || async move { Json(json.report()).into_response() }),
        )
        .route(
            "/",
            get(move || async move { Html(page(&status.report())) }),
        )
}

/// The status as a page for a person: refreshes every 2 s, no script.
fn page(r: &Report) -> String {
    let mut rows = String::new();
    let mut pools: Vec<(&str, &Vec<Member>)> =
        r.pools.iter().map(|(n, m)| (n.as_str(), m)).collect();
    if let Some(default) = &r.default_pool {
        pools.insert(0, ("(default)", default));
    }
    for (pool, members) in pools {
        for m in members {
            rows.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td class=n>{}</td><td class=n>{}</td>\
                 <td class=n>{}</td><td class={}>{}</td></tr>\n",
                escape(pool),
                escape(&m.member),
                escape(&m.address),
                m.live_sessions,
                m.sessions,
                m.failures,
                if m.in_rotation { "up" } else { "down" },
                if m.in_rotation {
                    "in rotation"
                } else {
                    "out of rotation"
                },
            ));
        }
    }
    let state = match (&r.drain, r.shutting_down) {
        (Some(d), _) => format!(
            "<span class=down>draining</span>: <b id=asked>{}</b> of {} sessions asked to close \
             over {:.1} s ({:.1} s in)",
            d.asked_to_close,
            d.sessions_at_start,
            d.window_ms as f64 / 1000.0,
            d.elapsed_ms as f64 / 1000.0
        ),
        (None, true) => "<span class=down>shutting down</span>".to_owned(),
        (None, false) => "<span class=up>serving</span>".to_owned(),
    };
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="2">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ws-proxy status</title>
<style>
body {{ font: 15px/1.4 system-ui, sans-serif; margin: 2rem; color: #1d232a; }}
h1 {{ font-size: 1.4rem; margin: 0 0 .3rem; }}
.facts {{ color: #4a5561; margin-bottom: 1.2rem; }}
.facts b {{ color: #1d232a; }}
table {{ border-collapse: collapse; min-width: 40rem; }}
th, td {{ text-align: left; padding: .35rem .8rem; border-bottom: 1px solid #d8dde3; white-space: nowrap; }}
th {{ background: #f1f4f7; font-weight: 600; }}
td.n {{ text-align: right; font-variant-numeric: tabular-nums; }}
.up {{ color: #1a7f37; }} .down {{ color: #c62828; font-weight: 600; }}
</style></head>
<body>
<h1>ws-proxy {version}</h1>
<div class="facts">{state} &middot; up <b>{uptime}</b> s &middot; configuration generation
<b>{generation}</b> &middot; live sessions <b id="live">{live}</b></div>
<table>
<thead><tr><th>pool</th><th>member</th><th>address</th><th>live</th><th>sessions</th>
<th>failed dials</th><th>state</th></tr></thead>
<tbody>
{rows}</tbody></table>
<p class="facts">JSON: <a href="status">/status</a> &middot; Prometheus: <a href="metrics">/metrics</a></p>
</body></html>
"#,
        version = r.version,
        uptime = r.uptime_seconds,
        generation = r.generation,
        live = r.live_sessions,
    )
}

/// Member URLs and pool names are the operator's, but a page escapes what it shows.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
