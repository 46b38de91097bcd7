//! Chaos: 1000 concurrent sessions through the `ws-proxy` binary while one of three upstream
//! members is killed and restarted twice.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio::sync::Mutex;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

const SESSIONS: usize = 1000;

/// An upstream that can be killed (every socket dropped, no close frames) and restarted on
/// the same port. It says its name first, then echoes.
struct Killable {
    name: &'static str,
    addr: SocketAddr,
    tasks: Mutex<JoinSet<()>>,
}

impl Killable {
    async fn start(name: &'static str, addr: SocketAddr) -> Arc<Self> {
        let me = Arc::new(Self {
            name,
            addr,
            tasks: Mutex::new(JoinSet::new()),
        });
        me.clone().run(TcpListener::bind(addr).await.unwrap()).await;
        me
    }

    async fn run(self: Arc<Self>, listener: TcpListener) {
        let me = self.clone();
        self.tasks.lock().await.spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((tcp, _)) = listener.accept().await {
                let name = me.name;
                conns.spawn(async move {
                    let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                        return;
                    };
                    if ws.send(Message::text(name)).await.is_err() {
                        return;
                    }
                    while let Some(Ok(m)) = ws.next().await {
                        if m.is_text() && ws.send(m).await.is_err() {
                            break;
                        }
                    }
                });
                while conns.try_join_next().is_some() {}
            }
        });
    }

    /// Drops the listener and every connection at once, as a crashed process would.
    async fn kill(&self) {
        self.tasks.lock().await.abort_all();
        while self.tasks.lock().await.join_next().await.is_some() {}
    }

    async fn restart(self: &Arc<Self>) {
        let listener = within("rebinding the port", async {
            loop {
                match TcpListener::bind(self.addr).await {
                    Ok(l) => return l,
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        })
        .await;
        self.clone().run(listener).await;
    }
}

async fn start_proxy(
    upstreams: &[SocketAddr],
) -> (Child, SocketAddr, SocketAddr, Arc<Mutex<Vec<String>>>) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ws-proxy"));
    cmd.args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .args([
            "--max-fails",
            "1",
            "--fail-timeout",
            "1s",
            "--ping-interval",
            "1s",
            "--ping-timeout",
            "2s",
        ])
        .env("RUST_LOG", "warn,ws_proxy=info")
        // Fewer malloc arenas, so freed memory is returned instead of cached per thread.
        .env("MALLOC_ARENA_MAX", "2");
    for up in upstreams {
        cmd.args(["--upstream", &format!("ws://{up}")]);
    }
    let (child, listen, metrics, mut lines) = spawn_proxy(cmd).await;
    let log = Arc::new(Mutex::new(Vec::new()));
    let sink = log.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            sink.lock().await.push(line);
        }
    });
    (child, listen, metrics.expect("a metrics address"), log)
}

/// The proxy's live sessions, from its metrics.
async fn live_sessions(metrics: SocketAddr) -> f64 {
    let (_, _, body) = http_request(metrics, "/metrics", &[]).await;
    String::from_utf8_lossy(&body)
        .lines()
        .filter(|l| l.starts_with("ws_proxy_sessions_live{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[derive(Debug, PartialEq, Eq, Hash, Clone, Copy)]
enum Fate {
    /// Worked until the test closed it normally.
    Completed,
    /// Closed by the proxy with 1011 when its upstream died.
    Closed1011,
}

/// One session: echo numbered messages in order until told to stop or closed with 1011.
async fn session(
    proxy: SocketAddr,
    id: usize,
    stop: Arc<AtomicBool>,
    on: Arc<Mutex<HashMap<usize, String>>>,
    cut: Arc<AtomicUsize>,
) -> Fate {
    let mut ws = connect(proxy, &format!("/s/{id}")).await;
    let Message::Text(member) = next_message(&mut ws).await else {
        panic!("session {id}: no greeting")
    };
    on.lock().await.insert(id, member.to_string());
    let mut n = 0u64;
    loop {
        if stop.load(Ordering::Relaxed) {
            let reply = close_and_wait(&mut ws, 1000, "done").await;
            assert_eq!(
                reply,
                Some((1000, "done".into())),
                "session {id}: clean close"
            );
            return Fate::Completed;
        }
        let sent = format!("{id}:{n}");
        if ws.send(Message::text(sent.clone())).await.is_err() {
            // The proxy closed the session meanwhile; its close frame is next to read.
        }
        match within(&format!("session {id}'s echo"), ws.next()).await {
            Some(Ok(Message::Text(t))) => {
                assert_eq!(t.as_str(), sent, "session {id}: lost or reordered")
            }
            Some(Ok(Message::Close(Some(f)))) => {
                assert_eq!(u16::from(f.code), 1011, "session {id}: {f:?}");
                cut.fetch_add(1, Ordering::Relaxed);
                return Fate::Closed1011;
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("session {id}: unexpected {other:?}"),
        }
        n += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_sessions_survive_an_upstream_dying_twice() {
    raise_fd_limit();
    let mut members = Vec::new();
    for name in ["a", "b", "c"] {
        let addr = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        members.push(Killable::start(name, addr).await);
    }
    let addrs: Vec<SocketAddr> = members.iter().map(|m| m.addr).collect();
    let (mut child, proxy, metrics, log) = start_proxy(&addrs).await;
    let pid = child.id().unwrap();
    let baseline = proc_status_kib(&child, "VmRSS:");

    let stop = Arc::new(AtomicBool::new(false));
    let on = Arc::new(Mutex::new(HashMap::new()));
    let cut = Arc::new(AtomicUsize::new(0));
    let mut sessions = JoinSet::new();
    for id in 0..SESSIONS {
        sessions.spawn(session(proxy, id, stop.clone(), on.clone(), cut.clone()));
    }
    within("1000 sessions to open", async {
        while on.lock().await.len() < SESSIONS {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let peak = proc_status_kib(&child, "VmRSS:");
    let victim = &members[0];
    let mut opened = SESSIONS;
    let mut long_lived = SESSIONS;
    for round in 0..2 {
        // Every session ever routed to the victim: earlier rounds' are already cut.
        let on_victim = on
            .lock()
            .await
            .values()
            .filter(|m| *m == victim.name)
            .count();
        let doomed = on_victim - cut.load(Ordering::Relaxed);
        assert!(doomed > 0, "round {round}: no session on the victim");
        victim.kill().await;
        // New sessions keep succeeding on the survivors while it is down.
        let during = Arc::new(Mutex::new(HashMap::new()));
        let mut tasks = JoinSet::new();
        for id in opened..opened + 50 {
            let during = during.clone();
            tasks.spawn(async move {
                let mut ws = connect(proxy, &format!("/new/{id}")).await;
                let Message::Text(m) = next_message(&mut ws).await else {
                    panic!()
                };
                during.lock().await.insert(id, m.to_string());
                close_and_wait(&mut ws, 1000, "").await;
            });
        }
        while let Some(t) = tasks.join_next().await {
            t.unwrap();
        }
        assert!(
            during.lock().await.values().all(|m| m != victim.name),
            "routed to the dead member"
        );
        opened += 50;
        // Each session on the victim learns of it (1011) at its next echo; wait for all of
        // them, so that none is still sleeping when the test ends the others.
        within("the victim's sessions to be closed with 1011", async {
            while cut.load(Ordering::Relaxed) < on_victim {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        victim.restart().await;
        // The victim is out of rotation until `--fail-timeout` has passed since its last
        // failed dial; probe until the proxy routes to it again.
        within("the victim to be back in rotation", async {
            loop {
                let mut ws = connect(proxy, "/probe").await;
                let Message::Text(m) = next_message(&mut ws).await else {
                    panic!("probe: no greeting")
                };
                close_and_wait(&mut ws, 1000, "").await;
                if m.as_str() == victim.name {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        // Sessions opened now reach the victim again (least-conn prefers it: it has none).
        for id in opened..opened + 30 {
            sessions.spawn(session(proxy, id, stop.clone(), on.clone(), cut.clone()));
        }
        opened += 30;
        long_lived += 30;
        within("the new sessions to open", async {
            while on.lock().await.len() < long_lived {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
    }

    stop.store(true, Ordering::Relaxed);
    let mut fates = HashMap::new();
    while let Some(fate) = within("every session to finish", sessions.join_next()).await {
        *fates.entry(fate.unwrap()).or_insert(0) += 1;
    }
    let completed = fates.get(&Fate::Completed).copied().unwrap_or(0);
    let closed = fates.get(&Fate::Closed1011).copied().unwrap_or(0);
    println!("sessions: {completed} completed, {closed} closed with 1011 (member killed twice)");
    assert_eq!(completed + closed, long_lived);
    assert!(
        closed >= 100,
        "the killed member held sessions each time: {closed}"
    );

    within("the proxy's sessions to end", async {
        while live_sessions(metrics).await > 0.0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let ended = proc_status_kib(&child, "VmRSS:");
    // ws-proxy hands free memory back once sessions have fallen to half their peak (within
    // a second): wait for that, failing if it never happens.
    let near_baseline = baseline + (peak - baseline) / 4 + 4096;
    let after = within("the proxy's memory to come back", async {
        loop {
            let now = proc_status_kib(&child, "VmRSS:");
            if now < near_baseline {
                return now;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    println!(
        "proxy RSS: baseline {baseline} KiB, with {SESSIONS} sessions {peak} KiB, \
         at the end {ended} KiB, returned to {after} KiB"
    );

    let log = log.lock().await;
    assert!(
        !log.iter().any(|l| l.contains("panicked")),
        "the proxy panicked:\n{}",
        log.join("\n")
    );
    assert!(child.try_wait().unwrap().is_none(), "the proxy exited");
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    assert_eq!(
        within("ws-proxy to exit", child.wait())
            .await
            .unwrap()
            .code(),
        Some(0)
    );
}
