//! Allocations per handshake, counted: a counting global allocator records what the proxy's
//! own threads allocate (its runtime's workers and the thread its accept loop runs on) while
//! real clients open and close sessions through
//! `axum_ws_proxy::serve` to a real upstream (those run on another runtime, not counted), with
//! the server's own upgrade entry (`Serve::direct_upgrades`, as `ws-proxy` runs) and through
//! hyper's connection and the app. The ceilings keep the counts from creeping back; issue 29's
//! target is 25 in both modes.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use axum_ws_proxy::WsProxyLayer;
use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

/// Counts allocations (and reallocations, which may move) made on threads that opted in.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static COUNTED: Cell<bool> = const { Cell::new(false) };
}

fn count() {
    if COUNTED.with(Cell::get) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

#[allow(unsafe_code)]
// SAFETY: every call is forwarded unchanged to the system allocator; counting touches only
// an atomic and a const-initialised thread-local, neither of which allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Starts the proxy on a runtime of its own whose threads are counted, with the server's own
/// upgrade entry if `direct`; returns its address.
fn counted_proxy(layer: WsProxyLayer, direct: bool) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .on_thread_start(|| COUNTED.with(|c| c.set(true)))
            .build()
            .unwrap();
        // The accept loop runs here (`ws-proxy` runs it on a worker): counted too.
        COUNTED.with(|c| c.set(true));
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            let app = axum::Router::new().layer(layer.clone());
            let server = axum_ws_proxy::serve(listener, app);
            match direct {
                true => server.direct_upgrades(&layer).await.unwrap(),
                false => server.await.unwrap(),
            }
        });
    });
    rx.recv().unwrap()
}

/// One session: connect, one message each way, close, wait for the end.
async fn one_session(proxy: SocketAddr) {
    let mut ws = connect(proxy, "/").await;
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::text("hi"));
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
}

/// Allocations on the proxy's threads per session, over `n` sessions after a warm-up.
async fn per_session(layer: WsProxyLayer, direct: bool, n: u64) -> f64 {
    let proxy = counted_proxy(layer, direct);
    for _ in 0..20 {
        one_session(proxy).await;
    }
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..n {
        one_session(proxy).await;
    }
    (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / n as f64
}

#[tokio::test(flavor = "current_thread")]
async fn allocations_per_session_stay_under_their_ceilings() {
    let up = echo_upstream().await;
    for (direct, [frames_ceiling, tunnel_ceiling]) in [(true, DIRECT), (false, THROUGH_HYPER)] {
        let frames = per_session(WsProxyLayer::new(upstream(up)), direct, 200).await;
        let tunnel = per_session(WsProxyLayer::new(upstream(up)).tunnel(), direct, 200).await;
        println!(
            "allocations per session (handshake, one echo, close), direct entry {direct}: \
             frames {frames:.1}, tunnel {tunnel:.1}"
        );
        assert!(
            frames <= frames_ceiling,
            "direct {direct}, frames: {frames:.1} allocations per session"
        );
        assert!(
            tunnel <= tunnel_ceiling,
            "direct {direct}, tunnel: {tunnel:.1} allocations per session"
        );
    }
}

/// Today's counts, frames and tunnel, with half an allocation for a warm-up session's last
/// steps landing in the count: one more allocation per session fails the test. Lower them as
/// the allocation diet goes on. (The release binary, counted by callgrind over the
/// benchmark's handshake row, makes 22.5 in both modes.)
const DIRECT: [f64; 2] = [23.5, 23.5];
const THROUGH_HYPER: [f64; 2] = [46.5, 46.5];
