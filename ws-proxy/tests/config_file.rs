//! `ws-proxy --config FILE`: routes, named pools, flags overriding the file, `--check-config`,
//! and errors that name the file, line and key.

#[path = "../../tests/common/mod.rs"]
mod common;

use common::*;
use futures_util::SinkExt;
use http::StatusCode;
use tokio_tungstenite::tungstenite::Message;

const BIN: &str = env!("CARGO_BIN_EXE_ws-proxy");

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
    let file = write_config(
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
    let file = write_config(
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
    let file = write_config(
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
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/ws-proxy.toml");
    let (code, out, err) = run(&["--config", example, "--check-config"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("\nlisten = \"0.0.0.0:8080\"\n"), "{out}");
    assert!(
        out.contains("[pools.chat]\nupstream = [\"ws://10.0.1.10:4000\", \"ws://10.0.1.11:4000\"]\nbalance = \"hash:query:room\"\n"),
        "{out}"
    );
    assert!(
        out.contains("[[routes]]\nprefix = \"/chat\"\npool = \"chat\"\n"),
        "{out}"
    );
    assert!(
        out.contains("[[routes]]\nprefix = \"/feed\"\npool = \"feed\"\n"),
        "{out}"
    );
    // Every default is spelled out.
    assert!(out.contains("\nshutdown_grace = \"10s\"\n"), "{out}");
}

/// What `--check-config` prints, `--config` accepts, and resolves to the same configuration.
#[test]
fn check_config_output_reads_back_as_the_same_configuration() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/ws-proxy.toml");
    let (code, first, err) = run(&[
        "--config",
        example,
        "--check-config",
        "--idle-timeout",
        "1.5s",
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(first.contains("\nidle_timeout = \"1s500ms\"\n"), "{first}");
    let again = write_config("round-trip.toml", &first);
    let (code, second, err) = run(&["--config", again.to_str().unwrap(), "--check-config"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(first, second);
}

/// `false` means false, on the command line, in a variable and in the file.
#[test]
fn switches_given_false_are_false() {
    let file = write_config(
        "switch.toml",
        "upstream = [\"ws://h:1\"]\nrequire_origin = false\n",
    );
    for (args, env) in [
        (
            &["--upstream", "ws://h:1", "--insecure-skip-verify=false"][..],
            None,
        ),
        (
            &["--upstream", "ws://h:1"][..],
            Some(("WS_PROXY_INSECURE_SKIP_VERIFY", "false")),
        ),
        (&["--config", file.to_str().unwrap()][..], None),
    ] {
        let mut cmd = std::process::Command::new(BIN);
        cmd.args(args).arg("--check-config");
        if let Some((k, v)) = env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert!(
            text.contains("\ninsecure_skip_verify = false\n"),
            "{args:?}: {text}"
        );
        assert!(
            text.contains("\nrequire_origin = false\n"),
            "{args:?}: {text}"
        );
    }
    let out = std::process::Command::new(BIN)
        .args([
            "--upstream",
            "ws://h:1",
            "--insecure-skip-verify",
            "--check-config",
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("\ninsecure_skip_verify = true\n"));
}

/// Flags win over WS_PROXY_* variables, which win over the file.
#[test]
fn flags_over_variables_over_the_file() {
    let file = write_config(
        "layers.toml",
        "upstream = [\"ws://file:1\"]\nmax_sessions = 1\nmax_fails = 5\nmode = \"tunnel\"\n",
    );
    let out = std::process::Command::new(BIN)
        .args([
            "--config",
            file.to_str().unwrap(),
            "--check-config",
            "--max-sessions",
            "3",
        ])
        .env("WS_PROXY_MAX_SESSIONS", "2")
        .env("WS_PROXY_MAX_FAILS", "4")
        .env("WS_PROXY_UPSTREAM", "ws://env:1,ws://env:2")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    for line in [
        "max_sessions = 3",
        "max_fails = 4",
        "mode = \"tunnel\"",
        "upstream = [\"ws://env:1\", \"ws://env:2\"]",
    ] {
        assert!(
            text.contains(&format!("\n{line}\n")) || text.starts_with(line),
            "{line}: {text}"
        );
    }
}

#[test]
fn errors_name_the_file_line_and_key() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "unknown.toml",
            "upstream = [\"ws://h:1\"]\n\nbalanse = \"least-conn\"\n",
            ":3: unknown field `balanse` (did you mean `balance`?)",
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
            ":2: ping_interval: expected a string or a number",
        ),
        (
            "pool.toml",
            "[pools.a]\nupstream = [\"ws://h:1\"]\nping_interval = \"1s\"\n",
            ":3: pools.a.ping_interval: unknown field `ping_interval`, expected one of `upstream`",
        ),
        (
            "route.toml",
            "upstream = [\"ws://h:1\"]\n[[routes]]\nprefix = \"/x\"\npool = \"nope\"\n",
            ":4: routes.pool: no pool named \"nope\"",
        ),
    ];
    for (name, text, expected) in cases {
        let file = write_config(name, text);
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
