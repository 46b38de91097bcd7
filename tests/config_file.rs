//! `ws-proxy --config FILE`: routes, named pools, flags overriding the file, `--check-config`,
//! and errors that name the file, line and key.

mod common;

use std::path::PathBuf;

use common::*;
use futures_util::SinkExt;
use http::StatusCode;
use tokio_tungstenite::tungstenite::Message;

const BIN: &str = env!("CARGO_BIN_EXE_ws-proxy");

fn write(name: &str, text: &str) -> PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

async fn reached(proxy: std::net::SocketAddr, path: &str) -> String {
    let mut ws = connect(proxy, path).await;
    match next_message(&mut ws).await {
        Message::Text(t) => t.to_string(),
        other => panic!("expected a name, got {other:?}"),
    }
}

#[tokio::test]
async fn routes_send_path_prefixes_to_named_pools() {
    let (chat, feed, default) = (
        named("chat").await,
        named("feed").await,
        named("default").await,
    );
    let file = write(
        "routes.toml",
        &format!(
            "upstream = [\"ws://{default}\"]\n\n[pools.chat]\nupstream = [\"ws://{chat}\"]\nbalance = \"hash:query:room\"\n\n\
             [pools.feed]\nupstream = [\"ws://{feed}\"]\n\n[[routes]]\nprefix = \"/chat\"\npool = \"chat\"\n\n\
             [[routes]]\nprefix = \"/chat/admin\"\npool = \"feed\"\n"
        ),
    );
    let (_child, proxy, _) = start_ws_proxy(&["--config", file.to_str().unwrap()]).await;
    assert_eq!(reached(proxy, "/chat").await, "chat");
    assert_eq!(reached(proxy, "/chat/room?room=7").await, "chat");
    assert_eq!(
        reached(proxy, "/chat/admin/x").await,
        "feed",
        "the longest prefix wins"
    );
    assert_eq!(
        reached(proxy, "/chatter").await,
        "default",
        "a prefix matches whole segments"
    );
    assert_eq!(reached(proxy, "/other").await, "default");
}

#[tokio::test]
async fn without_a_default_pool_unrouted_paths_are_404() {
    let chat = named("chat").await;
    let file = write(
        "no-default.toml",
        &format!("[pools.chat]\nupstream = [\"ws://{chat}\"]\n\n[[routes]]\nprefix = \"/chat\"\npool = \"chat\"\n"),
    );
    let (_child, proxy, _) = start_ws_proxy(&["--config", file.to_str().unwrap()]).await;
    assert_eq!(reached(proxy, "/chat/1").await, "chat");
    let (status, _, body) = http_request(proxy, "/elsewhere", &UPGRADE_HEADERS).await;
    assert_eq!(
        (status, &body[..]),
        (StatusCode::NOT_FOUND, &b"no route for /elsewhere\n"[..])
    );
}

#[tokio::test]
async fn flags_override_the_file() {
    let up = echo_upstream().await;
    let file = write(
        "override.toml",
        "upstream = [\"ws://127.0.0.1:1\"]\nmax_message_size = \"1KiB\"\n",
    );
    // The command line's --upstream replaces the file's list; its size limit wins too.
    let (_child, proxy, _) = start_ws_proxy(&[
        "--config",
        file.to_str().unwrap(),
        "--upstream",
        &format!("ws://{up}"),
        "--max-message-size",
        "4KiB",
    ])
    .await;
    let mut ws = connect(proxy, "/").await;
    let big = "x".repeat(2000);
    ws.send(Message::text(big.clone())).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::text(big));
}

fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let out = std::process::Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_validates_the_annotated_example() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/ws-proxy.toml");
    let (code, out, err) = run(&["--config", example, "--check-config"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.starts_with("configuration OK\nlisten = 0.0.0.0:8080\n"),
        "{out}"
    );
    assert!(out.contains("route /chat -> pool chat"), "{out}");
    assert!(out.contains("route /feed -> pool feed"), "{out}");
}

#[test]
fn errors_name_the_file_line_and_key() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "unknown.toml",
            "upstream = [\"ws://h:1\"]\n\nbalanse = \"least-conn\"\n",
            ":3: unknown field `balanse`",
        ),
        (
            "value.toml",
            "upstream = [\"ws://h:1\"]\nbalance = \"random\"\n",
            ":2: balance: invalid balancing strategy \"random\"",
        ),
        (
            "member.toml",
            "upstream = [\"ws//h\"]\n",
            ":1: upstream: invalid upstream URL \"ws//h\"",
        ),
        (
            "type.toml",
            "upstream = [\"ws://h:1\"]\nping_interval = [1]\n",
            ":2: ping_interval: unexpected array value",
        ),
        (
            "pool.toml",
            "[pools.a]\nupstream = [\"ws://h:1\"]\nping_interval = \"1s\"\n",
            ":3: pools.a.ping_interval: not a pool setting",
        ),
        (
            "route.toml",
            "upstream = [\"ws://h:1\"]\n[[routes]]\nprefix = \"/x\"\npool = \"nope\"\n",
            ":4: routes.pool: no pool named \"nope\"",
        ),
    ];
    for (name, text, expected) in cases {
        let file = write(name, text);
        let (code, out, err) = run(&["--config", file.to_str().unwrap(), "--check-config"]);
        assert_eq!(code, Some(2), "{name}: {err}");
        assert!(out.is_empty());
        assert_eq!(err.lines().count(), 1, "{name}: one line: {err}");
        assert!(
            err.starts_with(&format!("ws-proxy: {}", file.display())),
            "{name}: {err}"
        );
        assert!(
            err.contains(expected),
            "{name}: expected {expected:?} in {err}"
        );
    }
    let (code, _, err) = run(&["--config", "/nonexistent.toml"]);
    assert_eq!(code, Some(2));
    assert!(
        err.starts_with("ws-proxy: --config: cannot read \"/nonexistent.toml\""),
        "{err}"
    );
}
