//! Upstream pools with real upstream servers: balancing, consistent hashing, failover, passive
//! health, run-time membership and DNS re-resolution.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::response::IntoResponse;
use axum::Router;
use axum_ws_proxy::{
    upstream::{Balance, Member, UpstreamPool},
    WsProxyLayer,
};
use common::*;
use futures_util::SinkExt;
use http::StatusCode;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tower::discover::Change;

fn url(addr: SocketAddr) -> String {
    format!("ws://{addr}")
}

/// Opens a session and returns it with the name of the member it reached.
async fn session(proxy: SocketAddr, headers: &[(&str, &str)]) -> (Client, String) {
    let mut ws = connect_with(proxy, "/", headers).await;
    let Message::Text(name) = next_message(&mut ws).await else {
        panic!("expected the member's name")
    };
    (ws, name.to_string())
}

async fn reached(proxy: SocketAddr, headers: &[(&str, &str)]) -> String {
    let (mut ws, name) = session(proxy, headers).await;
    close_and_wait(&mut ws, 1000, "").await;
    name
}

/// Waits until `check` holds for the pool's status (session ends are counted asynchronously).
async fn until(pool: &UpstreamPool, what: &str, check: impl Fn(&UpstreamPool) -> bool) {
    within(what, async {
        while !check(pool) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
}

fn live(pool: &UpstreamPool, addr: SocketAddr) -> usize {
    pool.status()
        .iter()
        .find(|s| s.addr == addr)
        .map_or(0, |s| s.live_sessions)
}

#[tokio::test]
async fn least_conn_picks_the_least_loaded_member() {
    let (a, b) = (named("a").await, named("b").await);
    let pool = UpstreamPool::from_urls([url(a), url(b)]).unwrap();
    let proxy = proxy(WsProxyLayer::new(pool.clone())).await;

    let (mut first, first_name) = session(proxy, &[]).await;
    let (_second, second_name) = session(proxy, &[]).await;
    assert_ne!(
        first_name, second_name,
        "the idle member takes the second session"
    );

    // Free the first member: the next session must go there.
    close_and_wait(&mut first, 1000, "").await;
    let first_addr = if first_name == "a" { a } else { b };
    until(&pool, "the first session's end to be counted", |p| {
        live(p, first_addr) == 0
    })
    .await;
    let (_third, third_name) = session(proxy, &[]).await;
    assert_eq!(third_name, first_name);
    assert_eq!((live(&pool, a), live(&pool, b)), (1, 1));
}

#[tokio::test]
async fn least_conn_respects_weights() {
    let (a, b) = (named("a").await, named("b").await);
    let pool = UpstreamPool::from_urls([format!("ws://{a}?weight=2"), url(b)]).unwrap();
    let proxy = proxy(WsProxyLayer::new(pool.clone())).await;
    let mut held = Vec::new();
    for _ in 0..6 {
        held.push(session(proxy, &[]).await);
    }
    // Live sessions split 2:1.
    assert_eq!((live(&pool, a), live(&pool, b)), (4, 2));
}

#[tokio::test]
async fn weighted_round_robin_follows_weights_exactly_over_a_cycle() {
    let (a, b, c) = (named("a").await, named("b").await, named("c").await);
    let pool = UpstreamPool::from_urls([
        format!("ws://{a}?weight=3"),
        url(b),
        format!("ws://{c}?weight=2"),
    ])
    .unwrap()
    .balance(Balance::RoundRobin);
    let proxy = proxy(WsProxyLayer::new(pool)).await;
    let mut order = Vec::new();
    for _ in 0..12 {
        order.push(reached(proxy, &[]).await);
    }
    // nginx's smooth weighted round-robin for weights 3, 1, 2: interleaved, exact per cycle.
    let cycle = ["a", "c", "a", "b", "c", "a"];
    assert_eq!(order, [cycle, cycle].concat());
}

#[tokio::test]
async fn hash_sends_a_key_to_the_same_member_from_independent_proxies() {
    let names = ["a", "b", "c", "d"];
    let mut urls = Vec::new();
    for n in names {
        urls.push(url(named(n).await));
    }
    // Two replicas: separate pools and layers built from the same member list.
    let replica = || {
        UpstreamPool::from_urls(&urls)
            .unwrap()
            .balance("hash:header:x-user-id".parse().unwrap())
    };
    let (p1, p2) = (
        proxy(WsProxyLayer::new(replica())).await,
        proxy(WsProxyLayer::new(replica())).await,
    );
    let mut used = std::collections::HashSet::new();
    for k in 0..40 {
        let user = format!("user-{k}");
        let one = reached(p1, &[("x-user-id", &user)]).await;
        let again = reached(p1, &[("x-user-id", &user)]).await;
        let other = reached(p2, &[("x-user-id", &user)]).await;
        assert_eq!((&one, &again), (&other, &other), "key {user}");
        used.insert(one);
    }
    assert_eq!(used.len(), 4, "40 keys should reach all 4 members");
    // Without the key: least-conn, still served.
    assert!(names.contains(&reached(p1, &[]).await.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_a_fifth_member_moves_about_a_fifth_of_keys_all_to_it() {
    const KEYS: usize = 500;
    let mut urls = Vec::new();
    for n in ["a", "b", "c", "d"] {
        urls.push(url(named(n).await));
    }
    let pool = UpstreamPool::from_urls(&urls)
        .unwrap()
        .balance("hash:query:room".parse().unwrap());
    let proxy = proxy(WsProxyLayer::new(pool.clone())).await;
    let route_all = || async move {
        let mut tasks = Vec::new();
        for k in 0..KEYS {
            tasks.push(tokio::spawn(async move {
                let mut ws = connect(proxy, &format!("/?room=r{k}")).await;
                let Message::Text(name) = next_message(&mut ws).await else {
                    panic!()
                };
                close_and_wait(&mut ws, 1000, "").await;
                name.to_string()
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    };
    let before = route_all().await;
    pool.insert(url(named("e").await).parse::<Member>().unwrap());
    let after = route_all().await;
    let moved: Vec<usize> = (0..KEYS).filter(|&k| before[k] != after[k]).collect();
    let fraction = moved.len() as f64 / KEYS as f64;
    println!(
        "{} of {KEYS} keys moved ({fraction:.3}; ideal 0.200)",
        moved.len()
    );
    assert!(
        moved.iter().all(|&k| after[k] == "e"),
        "a key moved between old members"
    );
    assert!(
        (0.13..=0.27).contains(&fraction),
        "moved fraction {fraction}"
    );
}

#[tokio::test]
async fn one_member_down_every_new_session_still_succeeds() {
    let (dead, a) = (closed_port().await, named("a").await);
    // max_fails 0 keeps the dead member in rotation, so failover does the work every time.
    let pool = UpstreamPool::from_urls([url(dead), url(a)])
        .unwrap()
        .max_fails(0);
    let proxy = proxy(WsProxyLayer::new(pool.clone())).await;
    for _ in 0..20 {
        assert_eq!(reached(proxy, &[]).await, "a");
    }
    let failures = pool
        .status()
        .iter()
        .find(|s| s.addr == dead)
        .unwrap()
        .failures;
    assert!(
        failures >= 5,
        "the dead member should have been tried and skipped, got {failures}"
    );
}

#[tokio::test]
async fn a_failing_member_is_taken_out_of_rotation_for_fail_timeout() {
    let (dead, a) = (closed_port().await, named("a").await);
    let pool = UpstreamPool::from_urls([url(dead), url(a)])
        .unwrap()
        .max_fails(1)
        .fail_timeout(Duration::from_secs(60));
    let proxy = proxy(WsProxyLayer::new(pool.clone())).await;
    for _ in 0..10 {
        assert_eq!(reached(proxy, &[]).await, "a");
    }
    let status = pool.status();
    let dead_status = status.iter().find(|s| s.addr == dead).unwrap();
    assert_eq!(
        (dead_status.failures, dead_status.down),
        (1, true),
        "tried once, then out"
    );
}

#[tokio::test]
async fn when_every_member_is_out_they_are_tried_anyway() {
    let port = closed_port().await;
    let pool = UpstreamPool::from_urls([url(port)])
        .unwrap()
        .fail_timeout(Duration::from_secs(60));
    let proxy = proxy(WsProxyLayer::new(pool.clone())).await;
    let (status, ..) = http_request(proxy, "/", &UPGRADE_HEADERS).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(pool.status()[0].down);
    // The member comes back while still marked down: it is tried anyway.
    named_on(TcpListener::bind(port).await.unwrap(), "back");
    assert_eq!(reached(proxy, &[]).await, "back");
}

#[tokio::test]
async fn all_members_down_is_502_within_the_deadline() {
    let (d1, d2) = (closed_port().await, closed_port().await);
    let pool = UpstreamPool::from_urls([url(d1), url(d2)]).unwrap();
    let proxy =
        proxy(WsProxyLayer::new(pool.clone()).connect_timeout(Duration::from_secs(2))).await;
    let started = Instant::now();
    let (status, _, body) = http_request(proxy, "/", &UPGRADE_HEADERS).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(
        String::from_utf8_lossy(&body).contains("refused the connection"),
        "{body:?}"
    );
    assert!(
        pool.status().iter().all(|s| s.failures == 1),
        "each member tried once"
    );
}

#[tokio::test]
async fn a_members_refusal_is_relayed_not_retried() {
    let refuser =
        serve(Router::new().fallback(|| async { (StatusCode::FORBIDDEN, "no").into_response() }))
            .await;
    let a = named("a").await;
    let pool = UpstreamPool::from_urls([url(refuser), url(a)])
        .unwrap()
        .balance(Balance::RoundRobin);
    let proxy = proxy(WsProxyLayer::new(pool.clone())).await;
    let (status, _, body) = http_request(proxy, "/", &UPGRADE_HEADERS).await;
    assert_eq!((status, &body[..]), (StatusCode::FORBIDDEN, &b"no"[..]));
    let status = pool.status();
    let by = |addr| status.iter().find(|s| s.addr == addr).unwrap().clone();
    assert_eq!(
        (by(refuser).refusals, by(refuser).failures, by(refuser).down),
        (1, 0, false)
    );
    assert_eq!(by(a).sessions, 0, "a refusal is not retried elsewhere");
}

#[tokio::test]
async fn insert_and_remove_apply_to_new_sessions_and_spare_live_ones() {
    let (a, b) = (named("a").await, named("b").await);
    let pool = UpstreamPool::from_urls([url(a)]).unwrap();
    let proxy = proxy(WsProxyLayer::new(pool.clone())).await;
    let (mut old, name) = session(proxy, &[]).await;
    assert_eq!(name, "a");

    assert!(pool.insert(url(b).parse::<Member>().unwrap()));
    assert!(pool.remove(&url(a).parse().unwrap()));
    assert_eq!(pool.members().len(), 1);
    for _ in 0..3 {
        assert_eq!(reached(proxy, &[]).await, "b");
    }
    // The session on the removed member carries on.
    old.send(Message::text("still here")).await.unwrap();
    assert_eq!(next_message(&mut old).await, Message::text("still here"));
    assert_eq!(
        close_and_wait(&mut old, 4000, "done").await,
        Some((4000, "done".into()))
    );
}

#[tokio::test]
async fn watch_follows_a_discover_stream() {
    let (a, b) = (named("a").await, named("b").await);
    let pool = UpstreamPool::empty();
    let proxy = proxy(WsProxyLayer::new(pool.clone())).await;
    let (status, _, body) = http_request(proxy, "/", &UPGRADE_HEADERS).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "an empty pool: {body:?}");

    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Change<u32, Member>>();
    let changes = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|c| (Ok::<_, Infallible>(c), rx))
    });
    let watcher = pool.clone();
    let watching = tokio::spawn(async move { watcher.watch(changes).await });

    tx.send(Change::Insert(1, url(a).parse().unwrap())).unwrap();
    until(&pool, "pod-1 to join", |p| p.members().len() == 1).await;
    assert_eq!(reached(proxy, &[]).await, "a");

    tx.send(Change::Insert(2, url(b).parse().unwrap())).unwrap();
    tx.send(Change::Remove(1)).unwrap();
    until(&pool, "pod-1 to leave", |p| {
        p.members().iter().all(|m| m.upstream().port() == b.port())
    })
    .await;
    assert_eq!(reached(proxy, &[]).await, "b");

    drop(tx);
    within("the watch to end with the stream", watching)
        .await
        .unwrap()
        .unwrap();
}

/// A resolver the test controls: whatever addresses are in the shared list.
fn controlled(addrs: &Arc<Mutex<Vec<SocketAddr>>>) -> impl axum_ws_proxy::upstream::Resolve {
    let addrs = addrs.clone();
    move |_host: String, _port: u16| {
        let now = addrs.lock().unwrap().clone();
        async move { Ok(now) }
    }
}

#[tokio::test]
async fn dns_re_resolution_picks_up_a_changed_address() {
    let (a, b) = (named("a").await, named("b").await);
    let dns = Arc::new(Mutex::new(vec![a]));
    let pool = UpstreamPool::from_urls(["ws://chat.service.test:3000"])
        .unwrap()
        .resolver(controlled(&dns))
        .resolve_every(Duration::from_millis(20));
    let proxy = proxy(WsProxyLayer::new(pool.clone())).await;
    assert_eq!(reached(proxy, &[]).await, "a");

    // On demand.
    *dns.lock().unwrap() = vec![b];
    pool.resolve_now().await;
    assert_eq!(reached(proxy, &[]).await, "b");
    assert_eq!(pool.status().len(), 1, "the old address is gone");

    // Periodically: a dial after resolve_every refreshes in the background.
    *dns.lock().unwrap() = vec![a];
    within("the periodic re-resolution", async {
        while reached(proxy, &[]).await != "a" {}
    })
    .await;
}

#[tokio::test]
async fn every_resolved_address_is_an_endpoint() {
    let (a, b) = (named("a").await, named("b").await);
    let dns = Arc::new(Mutex::new(vec![a, b]));
    let pool = UpstreamPool::from_urls(["ws://headless.service.test:3000?weight=2"])
        .unwrap()
        .resolver(controlled(&dns));
    let proxy = proxy(WsProxyLayer::new(pool.clone())).await;
    let (_s1, n1) = session(proxy, &[]).await;
    let (_s2, n2) = session(proxy, &[]).await;
    let mut names = [n1, n2];
    names.sort();
    assert_eq!(names, ["a", "b"]);
    let status = pool.status();
    assert_eq!(status.len(), 2);
    assert!(status
        .iter()
        .all(|s| s.member.weight() == 2 && s.live_sessions == 1));
}

#[tokio::test]
async fn an_unresolvable_member_is_skipped_for_one_that_resolves() {
    let a = named("a").await;
    let pool =
        UpstreamPool::from_urls(["ws://no-such-host.invalid:80".to_owned(), url(a)]).unwrap();
    let proxy = proxy(WsProxyLayer::new(pool)).await;
    for _ in 0..3 {
        assert_eq!(reached(proxy, &[]).await, "a");
    }
}

#[test]
fn duplicates_and_bad_members_are_named() {
    let err = UpstreamPool::from_urls(["ws://h:1", "ws://h:2", "ws://h:1?weight=4"]).unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"invalid upstream URL "ws://h:1?weight=4": listed more than once in the pool"#
    );
    let err = UpstreamPool::from_urls(["ws://h:1", "ws://h:x"]).unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"invalid upstream URL "ws://h:x": invalid port "x" (expected 1-65535)"#
    );
}

#[tokio::test]
async fn max_tries_bounds_the_failover() {
    let (d1, d2, a) = (closed_port().await, closed_port().await, named("a").await);
    let pool = UpstreamPool::from_urls([url(d1), url(d2), url(a)])
        .unwrap()
        .balance(Balance::RoundRobin)
        .max_fails(0)
        .max_tries(2);
    let proxy = proxy(WsProxyLayer::new(pool.clone())).await;
    // Round-robin starts at d1, fails over once to d2, and stops there.
    let (status, ..) = http_request(proxy, "/", &UPGRADE_HEADERS).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let failures: Vec<u64> = pool.status().iter().map(|s| s.failures).collect();
    assert_eq!(failures, [1, 1, 0]);
}

/// `hash:ip` behind a trusted load balancer hashes the client from `X-Forwarded-For`, not
/// the balancer's own address; from an untrusted peer the header is ignored.
#[tokio::test]
async fn hash_ip_behind_trusted_proxies_uses_the_forwarded_client() {
    let (a, b) = (named("a").await, named("b").await);
    let members = || {
        UpstreamPool::from_urls([url(a), url(b)])
            .unwrap()
            .balance(Balance::Hash(axum_ws_proxy::upstream::HashKey::ClientIp))
    };
    let trusting =
        proxy(WsProxyLayer::new(members()).trusted_proxies(["127.0.0.0/8".parse().unwrap()])).await;
    let untrusting = proxy(WsProxyLayer::new(members())).await;
    let mut seen = std::collections::BTreeSet::new();
    let mut ignored = std::collections::BTreeSet::new();
    for i in 0..32 {
        let xff = format!("198.51.100.{i}");
        let (_ws, first) = session(trusting, &[("x-forwarded-for", &xff)]).await;
        let (_ws, again) = session(trusting, &[("x-forwarded-for", &xff)]).await;
        assert_eq!(first, again, "one client, one member");
        seen.insert(first);
        let (_ws, name) = session(untrusting, &[("x-forwarded-for", &xff)]).await;
        ignored.insert(name);
    }
    assert_eq!(
        seen.len(),
        2,
        "32 forwarded clients spread over both members"
    );
    assert_eq!(ignored.len(), 1, "an untrusted header is not a hash key");
}

/// A member added to a least-conn pool under a stream of new sessions takes them along the
/// slow-start ramp (its weight growing from 5 % to all of it), not every one at once; by the
/// ramp's end it has caught up.
#[tokio::test]
async fn a_member_added_with_slow_start_takes_sessions_along_the_ramp() {
    let (a, b) = (named("a").await, named("b").await);
    let ramp = Duration::from_millis(1500);
    let pool = UpstreamPool::from_urls([format!("ws://{a}")])
        .unwrap()
        .slow_start(ramp);
    let proxy = proxy(WsProxyLayer::new(pool.clone())).await;
    let mut held = Vec::new();
    for _ in 0..40 {
        let mut ws = connect(proxy, "/").await;
        assert_eq!(next_message(&mut ws).await, Message::text("a"));
        held.push(ws);
    }
    pool.insert(format!("ws://{b}").parse::<Member>().unwrap());
    let started = Instant::now();
    let (mut on_a, mut on_b) = (40usize, 0usize);
    for k in 0..60 {
        let mut ws = connect(proxy, "/").await;
        // Picked before now: its share then was at most this.
        let share = (started.elapsed().as_secs_f64() / ramp.as_secs_f64()).clamp(0.05, 1.0);
        if next_message(&mut ws).await == Message::text("b") {
            on_b += 1;
        } else {
            on_a += 1;
        }
        let bound = (share * on_a as f64).ceil() as usize + 2;
        assert!(
            on_b <= bound,
            "session {k}: {on_b} on b, ramp allows {bound} ({on_a} on a)"
        );
        held.push(ws);
        // A steady stream of new sessions, not a burst.
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(on_b >= 35, "b did not catch up: {on_b} against {on_a}");
}
