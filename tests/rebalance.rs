//! Rebalancing after scale-out: sessions move to added members at the configured rate (1012,
//! the client reconnects); hash pools move exactly the keys that moved; replacing members
//! moves nothing.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum_ws_proxy::upstream::{Member, Rebalance, UpstreamPool};
use axum_ws_proxy::WsProxyLayer;
use common::*;
use futures_util::StreamExt;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

/// A close a client got: when, the code and reason, and where it landed on reconnecting.
#[derive(Debug, Clone)]
struct Moved {
    at: Instant,
    code: u16,
    reason: String,
}

/// Where each client is now (the name its upstream said last) and the closes it got.
#[derive(Default)]
struct Clients {
    landed: Vec<&'static str>,
    moved: Vec<Vec<Moved>>,
}

/// Connects to `path`; on a 1012 it reconnects, as a client library should. Records where it
/// landed (the named upstream's first message) and every close.
async fn reconnecting(
    addr: std::net::SocketAddr,
    path: String,
    i: usize,
    clients: Arc<Mutex<Clients>>,
) {
    loop {
        let mut ws = connect(addr, &path).await;
        let name = match next_message(&mut ws).await {
            Message::Text(t) if t.as_str() == "A" => "A",
            Message::Text(t) if t.as_str() == "B" => "B",
            other => panic!("expected a name, got {other:?}"),
        };
        clients.lock().unwrap().landed[i] = name;
        match ws.next().await {
            Some(Ok(Message::Close(Some(f)))) => {
                let code = u16::from(f.code);
                clients.lock().unwrap().moved[i].push(Moved {
                    at: Instant::now(),
                    code,
                    reason: f.reason.to_string(),
                });
                while let Some(Ok(_)) = ws.next().await {}
                if code != 1012 {
                    return;
                }
            }
            _ => return,
        }
    }
}

/// Waits until `done` holds, looking every 10 ms.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    within(what, async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

fn live_on(pool: &UpstreamPool, addr: std::net::SocketAddr) -> usize {
    pool.status()
        .iter()
        .find(|e| e.addr == addr)
        .map_or(0, |e| e.live_sessions)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_added_member_takes_its_share_of_400_sessions_at_the_configured_rate() {
    const SESSIONS: usize = 400;
    raise_fd_limit();
    let (a, b) = (named("A").await, named("B").await);
    let pool = UpstreamPool::from_urls([format!("ws://{a}")])
        .unwrap()
        .rebalance(Rebalance::per_second(200).delay(Duration::from_millis(200)));
    let proxy = proxy(WsProxyLayer::new(pool.clone())).await;
    let clients = Arc::new(Mutex::new(Clients {
        landed: vec![""; SESSIONS],
        moved: vec![Vec::new(); SESSIONS],
    }));
    for i in 0..SESSIONS {
        tokio::spawn(reconnecting(proxy, "/".into(), i, clients.clone()));
    }
    until("400 sessions on A", || {
        clients.lock().unwrap().landed.iter().all(|n| *n == "A")
    })
    .await;

    pool.insert(format!("ws://{b}").parse::<Member>().unwrap());
    until("200 sessions moved and back", || {
        let landed = &clients.lock().unwrap().landed;
        pool.rebalance_status().sessions_moved == 200
            && landed.iter().filter(|n| **n == "B").count() == 200
    })
    .await;
    let status = pool.rebalance_status();
    assert_eq!((status.settled_changes, status.rebalances), (1, 1));
    // Even, within 10 %.
    until("every session live again", || {
        live_on(&pool, a) + live_on(&pool, b) == SESSIONS
    })
    .await;
    let (on_a, on_b) = (live_on(&pool, a), live_on(&pool, b));
    assert!(on_a.abs_diff(on_b) <= SESSIONS / 10, "A {on_a}, B {on_b}");

    let moved: Vec<Moved> = clients.lock().unwrap().moved.concat();
    assert_eq!(moved.len(), 200);
    for m in &moved {
        assert_eq!(
            (m.code, m.reason.as_str()),
            (1012, "rebalancing, reconnect")
        );
    }
    // At the configured rate: 200 at 200 a second take about a second, not an instant.
    let first = moved.iter().map(|m| m.at).min().unwrap();
    let last = moved.iter().map(|m| m.at).max().unwrap();
    assert!(
        last - first >= Duration::from_millis(900),
        "{:?}",
        last - first
    );
    assert!(
        last - first <= Duration::from_millis(2500),
        "{:?}",
        last - first
    );
}

#[tokio::test]
async fn with_consistent_hashing_exactly_the_sessions_whose_key_moved_close() {
    const ROOMS: usize = 120;
    let (a, b) = (named("A").await, named("B").await);
    // The fraction cap does not hold back keys that moved: a room must not stay split.
    let pool = UpstreamPool::from_urls([format!("ws://{a}")])
        .unwrap()
        .balance("hash:query:room".parse().unwrap())
        .rebalance(
            Rebalance::per_second(1000)
                .max_fraction(0.1)
                .delay(Duration::from_millis(100)),
        );
    let proxy = proxy(WsProxyLayer::new(pool.clone())).await;
    let clients = Arc::new(Mutex::new(Clients {
        landed: vec![""; ROOMS],
        moved: vec![Vec::new(); ROOMS],
    }));
    for room in 0..ROOMS {
        tokio::spawn(reconnecting(
            proxy,
            format!("/?room={room}"),
            room,
            clients.clone(),
        ));
    }
    until("every room on A", || {
        clients.lock().unwrap().landed.iter().all(|n| *n == "A")
    })
    .await;

    pool.insert(format!("ws://{b}").parse::<Member>().unwrap());
    until("the rebalancing", || {
        pool.rebalance_status().rebalances == 1
    })
    .await;
    // Where each room belongs now, as a new session of it is sent.
    let mut owner = Vec::new();
    for room in 0..ROOMS {
        let mut ws = connect(proxy, &format!("/?room={room}")).await;
        owner.push(match next_message(&mut ws).await {
            Message::Text(t) => t.to_string(),
            other => panic!("expected a name, got {other:?}"),
        });
    }
    let to_b = owner.iter().filter(|o| *o == "B").count();
    assert!(
        to_b > ROOMS / 4 && to_b < ROOMS * 3 / 4,
        "{to_b} of {ROOMS} rooms to B"
    );
    until("the moved rooms on B", || {
        clients
            .lock()
            .unwrap()
            .landed
            .iter()
            .filter(|n| **n == "B")
            .count()
            == to_b
    })
    .await;
    let clients = clients.lock().unwrap();
    for (room, owner) in owner.iter().enumerate() {
        let moved = &clients.moved[room];
        if owner == "B" {
            assert_eq!(moved.len(), 1, "room {room}");
            assert_eq!(moved[0].code, 1012);
            assert_eq!(clients.landed[room], "B");
        } else {
            assert!(moved.is_empty(), "room {room} stayed on A but was closed");
            assert_eq!(clients.landed[room], "A");
        }
    }
    assert_eq!(pool.rebalance_status().sessions_moved, to_b as u64);
}

#[tokio::test]
async fn replacing_a_member_moves_nothing() {
    let (a, b, c) = (named("A").await, named("B").await, named("B").await);
    let pool = UpstreamPool::from_urls([format!("ws://{a}"), format!("ws://{b}")])
        .unwrap()
        .rebalance(Rebalance::per_second(1000).delay(Duration::from_millis(100)));
    let proxy = proxy(WsProxyLayer::new(pool.clone())).await;
    let clients = Arc::new(Mutex::new(Clients {
        landed: vec![""; 20],
        moved: vec![Vec::new(); 20],
    }));
    for i in 0..20 {
        tokio::spawn(reconnecting(proxy, "/".into(), i, clients.clone()));
    }
    until("20 sessions", || {
        clients.lock().unwrap().landed.iter().all(|n| !n.is_empty())
    })
    .await;
    // An upstream's rolling update: the same number of members, one address replaced.
    assert!(pool.remove(&format!("ws://{b}").parse().unwrap()));
    assert!(pool.insert(format!("ws://{c}").parse::<Member>().unwrap()));
    until("the change to settle", || {
        pool.rebalance_status().settled_changes == 1
    })
    .await;
    // And a member removed: nothing moves either.
    pool.remove(&format!("ws://{c}").parse().unwrap());
    until("the second change to settle", || {
        pool.rebalance_status().settled_changes == 2
    })
    .await;
    let status = pool.rebalance_status();
    assert_eq!((status.rebalances, status.sessions_moved), (0, 0));
    assert!(clients.lock().unwrap().moved.iter().all(Vec::is_empty));
}
