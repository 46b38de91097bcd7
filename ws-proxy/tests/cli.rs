//! The `ws-proxy` binary: flags, health check, 404, and proxying.

#[path = "../../tests/common/mod.rs"]
mod common;

use common::*;
use futures_util::SinkExt;
use http::StatusCode;

use tokio::process::Child;
use tokio_tungstenite::tungstenite::Message;

const BIN: &str = env!("CARGO_BIN_EXE_ws-proxy");

/// A secret too short to be one (its text is never printed).
const SHORT_SECRET: &str = "tests/data/short-secret";
const RSA_PUBLIC: &str = "../tests/data/jwt_rsa_public.pem";

#[test]
fn bad_flags_and_urls_are_one_line_and_exit_code_2() {
    let cases: &[(&[&str], &str)] = &[
        (&[], "ws-proxy: --upstream URL is required (see --help)"),
        (&["--upstream", "ws//x"], "ws-proxy: --upstream: invalid upstream URL \"ws//x\": missing \"://\" after the scheme (expected ws://host:port[/prefix])"),
        (&["--upstream", "ws://h:99999"], "ws-proxy: --upstream: invalid upstream URL \"ws://h:99999\": invalid port \"99999\" (expected 1-65535)"),
        (&["--upstream", "ftp://h"], "ws-proxy: --upstream: invalid upstream URL \"ftp://h\": unsupported scheme \"ftp\" (use ws://, wss://, http:// or https://)"),
        (&["--upstream", "ws://h", "--connect-timeout", "5x"], "ws-proxy: --connect-timeout: invalid duration \"5x\" (expected e.g. 500ms, 1.5s, 2m, 1h30m)"),
        (&["--upstream", "ws://h", "--max-message-size", "lots"], "ws-proxy: --max-message-size: invalid size \"lots\" (expected e.g. 65536, 64KiB, 16MiB)"),
        (&["--upstream", "ws://h", "--listen", "nowhere"], "ws-proxy: --listen: invalid value \"nowhere\" (expected IP:PORT)"),
        (&["--upstream", "ws://h", "--listen"], "ws-proxy: --listen needs a value"),
        (&["--verbose"], "ws-proxy: unknown flag \"--verbose\" (did you mean \"--version\"? see --help)"),
        (&["--upstream", "ws://h", "--mode", "splice"], "ws-proxy: --mode: invalid value \"splice\" (expected frames or tunnel)"),
        (&["--upstream", "ws://h:1", "--upstream", "ws://h:1"], "ws-proxy: --upstream: invalid upstream URL \"ws://h:1\": listed more than once in the pool"),
        (&["--upstream", "ws://h:1?weight=0"], "ws-proxy: --upstream: invalid upstream URL \"ws://h:1?weight=0\": invalid weight \"0\" (expected 1-1000)"),
        (&["--upstream", "ws://h", "--balance", "random"], "ws-proxy: --balance: invalid balancing strategy \"random\" (expected least-conn, round-robin, hash:ip, hash:header:NAME, hash:cookie:NAME or hash:query:NAME)"),
        (&["--upstream", "ws://h", "--max-tries", "none"], "ws-proxy: --max-tries: invalid value \"none\" (expected a whole number >= 1)"),
        (&["--upstream", "ws://h", "--max-message-size", "0"], "ws-proxy: --max-message-size: size \"0\" must be more than zero"),
        (&["--upstream", "ws://h", "--header-timeout", "0"], "ws-proxy: --header-timeout: duration \"0\" must be more than zero"),
        (&["--upstrem", "ws://h"], "ws-proxy: unknown flag \"--upstrem\" (did you mean \"--upstream\"? see --help)"),
        (&["--upstream", "ws://h", "--require-origin", "false"], "ws-proxy: unexpected argument \"false\" (a switch takes its value with =, e.g. --require-origin=false)"),
        (&["--upstream", "ws://h", "--insecure-skip-verify=maybe"], "ws-proxy: --insecure-skip-verify: invalid value \"maybe\" (expected true or false)"),
        (&["--upstream", "ws://h", "--resolve-every", "often"], "ws-proxy: --resolve-every: invalid duration \"often\" (expected e.g. 500ms, 1.5s, 2m, 1h30m)"),
        (&["--upstream", "ws://h", "--max-lifetime-jitter", "101"], "ws-proxy: --max-lifetime-jitter: \"101\" is not a whole number from 0 to 100"),
        (&["--upstream", "ws://h", "--retry-after", "soon"], "ws-proxy: --retry-after: invalid duration \"soon\" (expected e.g. 500ms, 1.5s, 2m, 1h30m)"),
        (&["--upstream", "ws://h", "--admin-listen", "127.0.0.1:0"], "ws-proxy: --admin-listen needs --admin-token-file"),
        (&["--upstream", "ws://h", "--admin-listen", "127.0.0.1:0", "--admin-token-file", "/nonexistent/token"], "ws-proxy: --admin-token-file: cannot read \"/nonexistent/token\": No such file or directory (os error 2)"),
        (&["--upstream", "ws://h", "--drain-window", "20s", "--shutdown-grace", "10s"], "ws-proxy: --drain-window (20s) must fit within --shutdown-grace (10s)"),
        (&["--upstream", "ws://h", "--jwt-audience", "chat"], "ws-proxy: the --jwt-* settings need a key: --jwt-hmac-secret-file, --jwt-public-key-file or --jwt-jwks-file"),
        (&["--upstream", "ws://h", "--jwt-hmac-secret-file", "/nonexistent/secret"], "ws-proxy: --jwt-hmac-secret-file: cannot read \"/nonexistent/secret\": No such file or directory (os error 2)"),
        (&["--upstream", "ws://h", "--jwt-hmac-secret-file", SHORT_SECRET], "ws-proxy: --jwt-hmac-secret-file: \"tests/data/short-secret\": the HMAC secret is 12 bytes; at least 32 are needed"),
        (&["--upstream", "ws://h", "--jwt-public-key-file", SHORT_SECRET], "ws-proxy: --jwt-public-key-file: \"tests/data/short-secret\": no public key in the PEM text: no PEM block"),
        (&["--upstream", "ws://h", "--jwt-hmac-secret-file", SHORT_SECRET, "--jwt-jwks-file", SHORT_SECRET], "ws-proxy: give one of --jwt-hmac-secret-file, --jwt-public-key-file and --jwt-jwks-file: HMAC secrets and public keys never mix"),
        (&["--upstream", "ws://h", "--jwt-public-key-file", RSA_PUBLIC, "--jwt-algorithm", "HS256"], "ws-proxy: --jwt-*: algorithm HS256 cannot be verified with the keys given (HMAC algorithms need a secret, the others public keys)"),
        (&["--upstream", "ws://h", "--jwt-public-key-file", RSA_PUBLIC, "--jwt-algorithm", "none"], "ws-proxy: --jwt-*: unknown JWT algorithm \"none\" (HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA)"),
        (&["--upstream", "ws://h", "--jwt-public-key-file", RSA_PUBLIC, "--jwt-forward-claim", "sub"], "ws-proxy: --jwt-forward-claim: \"sub\" is not CLAIM=HEADER"),
    ];
    for (args, expected) in cases {
        let out = std::process::Command::new(BIN)
            .args(*args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            format!("{expected}\n"),
            "{args:?}"
        );
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn help_exits_0() {
    let out = std::process::Command::new(BIN)
        .arg("--help")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("--connect-timeout <DURATION>"));
}

/// Starts the binary on an ephemeral port and returns it with the address it logged.
async fn start(args: &[&str]) -> (Child, std::net::SocketAddr) {
    let (child, addr, _) = start_ws_proxy(args).await;
    (child, addr)
}

#[tokio::test]
async fn healthz_404_and_a_proxied_session() {
    let up = echo_upstream().await;
    let (_child, addr) = start(&[
        "--upstream",
        &format!("ws://{up}"),
        "--connect-timeout",
        "2s",
    ])
    .await;

    let (status, _, body) = http_request(addr, "/healthz", &[]).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok"[..]));
    let (status, _, _) = http_request(addr, "/elsewhere", &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let mut ws = connect(addr, "/any/path").await;
    ws.send(Message::text("through the binary")).await.unwrap();
    assert_eq!(
        next_message(&mut ws).await,
        Message::text("through the binary")
    );
    assert_eq!(
        close_and_wait(&mut ws, 1000, "").await,
        Some((1000, String::new()))
    );
}

#[tokio::test]
async fn max_message_size_flag_is_enforced() {
    let up = echo_upstream().await;
    let (_child, addr) = start(&[
        "--upstream",
        &format!("ws://{up}"),
        "--max-message-size",
        "1KiB",
    ])
    .await;
    let mut ws = connect(addr, "/").await;
    ws.send(Message::binary(vec![0u8; 1025])).await.unwrap();
    match next_message(&mut ws).await {
        Message::Close(Some(f)) => assert_eq!(u16::from(f.code), 1009),
        other => panic!("expected close 1009, got {other:?}"),
    }
}

/// `--retry-after` and `--retry-after-spread` set the 503's `Retry-After`; with no spread it
/// is always the least; `--max-lifetime-jitter 0` ends a session at `--max-lifetime` exactly.
#[tokio::test]
async fn retry_after_and_lifetime_jitter_flags_apply() {
    let up = echo_upstream().await;
    let (_child, addr) = start(&[
        "--upstream",
        &format!("ws://{up}"),
        "--max-sessions",
        "1",
        "--retry-after",
        "7s",
        "--retry-after-spread",
        "0",
        "--max-lifetime",
        "600ms",
        "--max-lifetime-jitter",
        "0",
    ])
    .await;
    let mut ws = connect(addr, "/").await;
    let opened = std::time::Instant::now();
    for _ in 0..5 {
        let (status, headers, _) = http_request(addr, "/", &UPGRADE_HEADERS).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(headers["retry-after"], "7");
    }
    match next_message(&mut ws).await {
        Message::Close(Some(f)) => assert_eq!(u16::from(f.code), 1001),
        other => panic!("expected close 1001, got {other:?}"),
    }
    // No jitter: not before the full lifetime (less the client's later start).
    assert!(opened.elapsed() >= std::time::Duration::from_millis(550));
}

/// `--max-upgrade-rate` and `--upgrade-burst` pace new upgrades.
#[tokio::test]
async fn upgrade_rate_flags_pace_new_sessions() {
    let up = echo_upstream().await;
    let (_child, addr) = start(&[
        "--upstream",
        &format!("ws://{up}"),
        "--max-upgrade-rate",
        "1",
        "--upgrade-burst",
        "2",
    ])
    .await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(http_request(addr, "/", &UPGRADE_HEADERS).await.0.as_u16());
    }
    assert_eq!(statuses, [101, 101, 503, 503]);
}

#[tokio::test]
async fn an_unreachable_upstream_is_502_from_the_binary() {
    let dead = closed_port().await;
    let (_child, addr) = start(&["--upstream", &format!("ws://{dead}")]).await;
    let (status, _, _) = http_request(addr, "/", &UPGRADE_HEADERS).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn several_upstreams_round_robin_with_failover() {
    let dead = closed_port().await;
    let (a, b) = (echo_upstream().await, echo_upstream().await);
    let (_child, addr) = start(&[
        "--upstream",
        &format!("ws://{dead}"),
        "--upstream",
        &format!("ws://{a}"),
        "--upstream",
        &format!("ws://{b}?weight=2"),
        "--balance",
        "round-robin",
        "--max-fails",
        "0",
    ])
    .await;
    // Every session succeeds although one member is down.
    for i in 0..8 {
        let mut ws = connect(addr, "/").await;
        ws.send(Message::text(format!("m{i}"))).await.unwrap();
        assert_eq!(next_message(&mut ws).await, Message::text(format!("m{i}")));
    }
}

#[tokio::test]
async fn sigterm_closes_sessions_with_1012_and_exits_0() {
    let (up, mut seen) = reporting_upstream().await;
    let (mut child, addr) = start(&[
        "--upstream",
        &format!("ws://{up}"),
        "--shutdown-grace",
        "5s",
    ])
    .await;
    let mut ws = connect(addr, "/").await;
    ws.send(Message::text("before")).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::text("before"));
    assert_eq!(seen.next().await, Some(Message::text("before")));

    signal(&child, "TERM");
    match next_message(&mut ws).await {
        Message::Close(Some(f)) => {
            assert_eq!(
                (u16::from(f.code), f.reason.as_str()),
                (1012, "proxy draining, reconnect")
            )
        }
        other => panic!("expected close 1012, got {other:?}"),
    }
    while let Some(Ok(_)) = within(
        "the close handshake",
        futures_util::StreamExt::next(&mut ws),
    )
    .await
    {}
    match seen.next().await {
        Some(Message::Close(Some(f))) => assert_eq!(u16::from(f.code), 1001),
        other => panic!("expected close 1001 upstream, got {other:?}"),
    }
    let status = within("ws-proxy to exit", child.wait()).await.unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn half_sent_handshakes_do_not_delay_others_and_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = echo_upstream().await;
    let (_child, addr) = start(&[
        "--upstream",
        &format!("ws://{up}"),
        "--header-timeout",
        "500ms",
    ])
    .await;
    // 300 clients that send half a request head and stall (slowloris).
    let mut stalled = Vec::new();
    for _ in 0..300 {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websock")
            .await
            .unwrap();
        stalled.push(tcp);
    }
    // A real client is served at once.
    let started = std::time::Instant::now();
    let mut ws = connect(addr, "/").await;
    ws.send(Message::text("not delayed")).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::text("not delayed"));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    // The stalled ones are closed once the header timeout passes.
    for tcp in stalled.iter_mut().take(20) {
        let mut buf = [0u8; 512];
        let n = within("the server to cut a stalled client", tcp.read(&mut buf)).await;
        // EOF, a reset, or a 408 answer followed by EOF: either way the connection ends.
        if let Ok(n) = n {
            if n > 0 {
                assert!(
                    String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408"),
                    "{:?}",
                    &buf[..n]
                );
            }
        }
    }
}

#[tokio::test]
async fn metrics_are_served_in_prometheus_format() {
    let up = echo_upstream().await;
    let (_child, addr, metrics) = start_ws_proxy(&[
        "--upstream",
        &format!("ws://{up}"),
        "--metrics-listen",
        "127.0.0.1:0",
    ])
    .await;
    let metrics = metrics.expect("the metrics address is logged");

    let mut ws = connect(addr, "/").await;
    for m in ["abc", "defgh"] {
        ws.send(Message::text(m)).await.unwrap();
        assert_eq!(next_message(&mut ws).await, Message::text(m));
    }
    assert_eq!(
        close_and_wait(&mut ws, 4001, "bye").await,
        Some((4001, "bye".into()))
    );
    let bad_version = [
        ("upgrade", "websocket"),
        ("connection", "upgrade"),
        ("sec-websocket-version", "8"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    let (status, ..) = http_request(addr, "/", &bad_version).await;
    assert_eq!(status, StatusCode::UPGRADE_REQUIRED);

    // The session's end is recorded just after the client sees it: scrape until it shows.
    let text = within("the session to be counted", async {
        loop {
            let (status, _, body) = http_request(metrics, "/metrics", &[]).await;
            assert_eq!(status, StatusCode::OK);
            let text = String::from_utf8_lossy(&body).into_owned();
            if text.contains("ws_proxy_sessions_total{outcome=\"client\"} 1") {
                return text;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    for line in [
        "# HELP ws_proxy_sessions_total".to_owned(),
        "ws_proxy_handshake_failures_total{cause=\"unsupported_version\"} 1".to_owned(),
        "ws_proxy_messages_total{direction=\"to_upstream\"} 2".to_owned(),
        "ws_proxy_messages_total{direction=\"to_client\"} 2".to_owned(),
        "ws_proxy_bytes_total{direction=\"to_upstream\"} 8".to_owned(),
        "ws_proxy_bytes_total{direction=\"to_client\"} 8".to_owned(),
        format!("ws_proxy_sessions_live{{upstream=\"{up}\"}} 0"),
        "ws_proxy_upstream_handshake_seconds_count 1".to_owned(),
        "ws_proxy_close_codes_total{leg=\"client\",code=\"4000-4999\"} 1".to_owned(),
        "ws_proxy_close_codes_total{leg=\"upstream\",code=\"4000-4999\"} 1".to_owned(),
    ] {
        assert!(text.contains(&line), "missing {line:?} in:\n{text}");
    }
}

#[tokio::test]
async fn tunnel_mode_through_the_binary() {
    let up = echo_upstream().await;
    let (_child, addr) = start(&["--upstream", &format!("ws://{up}"), "--mode", "tunnel"]).await;
    let mut ws = connect(addr, "/").await;
    ws.send(Message::text("spliced")).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::text("spliced"));
    assert_eq!(
        close_and_wait(&mut ws, 4003, "t").await,
        Some((4003, "t".into()))
    );
}

#[tokio::test]
async fn an_oversized_request_head_is_refused_by_the_binary() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = echo_upstream().await;
    let (_child, addr) = start(&["--upstream", &format!("ws://{up}")]).await;
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
    // Two long headers: the size bound refuses them, not hyper's limit on their count.
    for i in 0..2 {
        req.push_str(&format!("x-filler-{i}: {}\r\n", "y".repeat(50 << 10)));
    }
    req.push_str("\r\n");
    // The server may stop reading before the whole head is written.
    let _ = tcp.write_all(req.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = within("the refusal", tcp.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "expected 431, got {answer:?}"
    );
}

/// The operator guide's flag table lists every flag the binary has, and no flag it lacks.
#[test]
fn the_operator_guide_lists_every_flag() {
    let help = std::process::Command::new(BIN)
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    let flags = |text: &str, prefix: &str| -> std::collections::BTreeSet<String> {
        text.lines()
            .filter_map(|l| l.trim_start().strip_prefix(prefix))
            .filter_map(|l| {
                let flag: String = l
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '-')
                    .collect();
                (!flag.is_empty()).then(|| format!("--{flag}"))
            })
            .filter(|f| f != "--help" && f != "--version")
            .collect()
    };
    let in_help = flags(&help, "--");
    let guide =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/ws-proxy.md"))
            .unwrap();
    let in_guide = flags(&guide, "| `--");
    assert!(in_help.len() > 25, "{in_help:?}");
    assert_eq!(
        in_help, in_guide,
        "--help and docs/ws-proxy.md's flag table differ"
    );
}
