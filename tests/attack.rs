//! Holding under attack: what a hostile peer sends must not grow the proxy without bound.
//! The real binary, raw sockets, the proxy's own RSS from /proc.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// The proxy's resident memory, in KiB.
fn rss_kib(child: &tokio::process::Child) -> u64 {
    let pid = child.id().expect("running");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A ping frame with a full 125-byte payload; masked when a client sends it.
fn ping(masked: bool) -> Vec<u8> {
    if masked {
        client_frame(0x89, &[7; 125])
    } else {
        let mut f = vec![0x89, 125];
        f.extend_from_slice(&[7; 125]);
        f
    }
}

/// Writes pings until `total` bytes went out or the peer stops taking them (a write that
/// does not finish within a second: the proxy stopped reading). Returns the bytes sent.
async fn flood(tcp: &mut TcpStream, masked: bool, total: usize) -> usize {
    let chunk: Vec<u8> = std::iter::repeat_n(ping(masked), 500).flatten().collect();
    let mut sent = 0;
    while sent < total {
        match tokio::time::timeout(Duration::from_secs(1), tcp.write_all(&chunk)).await {
            Ok(Ok(())) => sent += chunk.len(),
            Ok(Err(_)) | Err(_) => break,
        }
    }
    sent
}

/// How much the proxy grew while a client flooded it with pings and never read.
async fn client_flood_growth(mode: &str) -> (u64, usize) {
    let up = echo_upstream().await;
    let (child, proxy, _) =
        start_ws_proxy(&["--upstream", &format!("ws://{up}"), "--mode", mode]).await;
    let (status, _, mut tcp, _) = raw_exchange(proxy, &upgrade_request(proxy, "/", &[])).await;
    assert_eq!(status, 101);
    let before = rss_kib(&child);
    let sent = flood(&mut tcp, true, 48 << 20).await;
    let after = rss_kib(&child);
    println!("client flood, {mode}: {sent} bytes of pings taken, RSS {before} -> {after} KiB");
    (after.saturating_sub(before), sent)
}

/// An upstream that answers the upgrade, then floods pings and never reads.
async fn flooding_upstream() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<usize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let Some(head) = read_head(&mut tcp).await else {
                continue;
            };
            let res = format!(
                "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\nsec-websocket-accept: {}\r\n\r\n",
                accept_for(&head)
            );
            if tcp.write_all(res.as_bytes()).await.is_err() {
                continue;
            }
            let sent = flood(&mut tcp, false, 48 << 20).await;
            let _ = tx.send(sent);
            // Keep the socket open, unread.
            std::mem::forget(tcp);
        }
    });
    (addr, rx)
}

async fn upstream_flood_growth(mode: &str) -> (u64, usize) {
    let (up, mut done) = flooding_upstream().await;
    let (child, proxy, _) =
        start_ws_proxy(&["--upstream", &format!("ws://{up}"), "--mode", mode]).await;
    let before = rss_kib(&child);
    // The client reads nothing either: the flood has only the proxy to fill.
    let (status, _, _tcp, _) = raw_exchange(proxy, &upgrade_request(proxy, "/", &[])).await;
    assert_eq!(status, 101);
    let sent = tokio::time::timeout(Duration::from_secs(60), done.recv())
        .await
        .expect("the flood to end")
        .unwrap();
    let after = rss_kib(&child);
    println!("upstream flood, {mode}: {sent} bytes of pings taken, RSS {before} -> {after} KiB");
    (after.saturating_sub(before), sent)
}

/// Before: the proxy answered every ping, and the pongs a never-reading peer did not take
/// piled up in memory (919 MB in 6 s from one connection). Now a leg that cannot take its
/// pong is not read until it can, so the flood stops in the kernel's buffers.
#[tokio::test]
async fn a_client_ping_flood_does_not_grow_the_proxy_frames() {
    let (grew, sent) = client_flood_growth("frames").await;
    assert!(
        grew < 8 << 10,
        "grew {grew} KiB after {sent} bytes of pings"
    );
    assert!(
        sent < 40 << 20,
        "the proxy kept reading: {sent} bytes taken"
    );
}

#[tokio::test]
async fn a_client_ping_flood_does_not_grow_the_proxy_tunnel() {
    let (grew, sent) = client_flood_growth("tunnel").await;
    assert!(
        grew < 8 << 10,
        "grew {grew} KiB after {sent} bytes of pings"
    );
}

#[tokio::test]
async fn an_upstream_ping_flood_does_not_grow_the_proxy_frames() {
    let (grew, sent) = upstream_flood_growth("frames").await;
    assert!(
        grew < 8 << 10,
        "grew {grew} KiB after {sent} bytes of pings"
    );
    assert!(
        sent < 40 << 20,
        "the proxy kept reading: {sent} bytes taken"
    );
}

#[tokio::test]
async fn an_upstream_ping_flood_does_not_grow_the_proxy_tunnel() {
    let (grew, sent) = upstream_flood_growth("tunnel").await;
    assert!(
        grew < 8 << 10,
        "grew {grew} KiB after {sent} bytes of pings"
    );
}
