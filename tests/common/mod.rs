//! Real servers on 127.0.0.1:0 and real clients, shared by the integration tests.
#![allow(dead_code)]

pub mod browser;
pub mod python;

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::ws::{Message as AxMessage, WebSocket, WebSocketUpgrade};
use axum::routing::get;
use axum::Router;
use axum_ws_proxy::{upstream::UpstreamPool, WsProxyLayer};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Longest any single awaited event may take before a test fails instead of hanging.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// Awaits `fut`, failing the test (not hanging it) if it takes longer than [`PATIENCE`].
pub async fn within<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(PATIENCE, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Serves `app` on 127.0.0.1:0 with connect info, as a real deployment would.
pub async fn serve(app: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    addr
}

pub fn upstream(addr: SocketAddr) -> UpstreamPool {
    format!("ws://{addr}").parse().unwrap()
}

/// A proxy app: an ordinary route, an ordinary fallback, and the layer around both.
pub async fn proxy(layer: WsProxyLayer) -> SocketAddr {
    let app = Router::new()
        .route("/http", get(|| async { "inner route" }))
        .fallback(|| async { (StatusCode::NOT_FOUND, "inner fallback") })
        .layer(layer);
    serve(app).await
}

/// The layer in front of the same app as [`proxy`], served by the library's server with its
/// own upgrade entry on (`Serve::direct_upgrades`), as `ws-proxy` serves it.
pub async fn proxy_direct(layer: WsProxyLayer) -> SocketAddr {
    let app = Router::new()
        .route("/http", get(|| async { "inner route" }))
        .fallback(|| async { (StatusCode::NOT_FOUND, "inner fallback") })
        .layer(layer.clone());
    serve_direct_app(app, layer).await
}

/// `app` (with `layer` in it) served by the library's server, upgrades taken by its own entry
/// for `layer`.
pub async fn serve_direct_app(app: Router, layer: WsProxyLayer) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum_ws_proxy::serve(listener, app)
            .direct_upgrades(&layer)
            .await
            .unwrap();
    });
    addr
}

/// The proxy behind each entry a request can take: hyper's connection (through
/// `axum::serve`) and the library server's own upgrade entry.
pub async fn proxy_both(layer: WsProxyLayer) -> [SocketAddr; 2] {
    [proxy(layer.clone()).await, proxy_direct(layer).await]
}

/// Echoes text and binary messages; answers closes (tungstenite does that itself).
pub async fn echo(mut socket: WebSocket) {
    while let Some(Ok(msg)) = socket.recv().await {
        if matches!(msg, AxMessage::Text(_) | AxMessage::Binary(_))
            && socket.send(msg).await.is_err()
        {
            break;
        }
    }
}

/// An axum echo server (an independent WebSocket stack from the proxy's legs).
pub async fn echo_upstream() -> SocketAddr {
    let app = Router::new().fallback(|ws: WebSocketUpgrade| async { ws.on_upgrade(echo) });
    serve(app).await
}

/// Echo upstream plus the proxy in front of it.
pub async fn echo_proxy() -> SocketAddr {
    proxy(WsProxyLayer::new(upstream(echo_upstream().await))).await
}

pub async fn connect(addr: SocketAddr, path: &str) -> Client {
    let (ws, res) = within(
        "client handshake",
        tokio_tungstenite::connect_async(format!("ws://{addr}{path}")),
    )
    .await
    .expect("handshake through the proxy");
    assert_eq!(res.status(), StatusCode::SWITCHING_PROTOCOLS);
    ws
}

pub async fn connect_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Client {
    let mut req = format!("ws://{addr}{path}").into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    within("client handshake", tokio_tungstenite::connect_async(req))
        .await
        .expect("handshake through the proxy")
        .0
}

/// Next data or close message (pings and pongs are skipped and counted).
pub async fn next_message<S>(ws: &mut WebSocketStream<S>) -> Message
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match within("a message", ws.next()).await {
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(m)) => return m,
            other => panic!("expected a message, got {other:?}"),
        }
    }
}

/// A plain HTTP/1.1 request through hyper; returns status, headers and the whole body.
pub async fn http_request(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, Bytes) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::get(path).header("host", addr.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = within(
        "an HTTP answer",
        sender.send_request(req.body(Empty::<Bytes>::new()).unwrap()),
    )
    .await
    .unwrap();
    let (parts, body) = res.into_parts();
    let body = within("the body", body.collect()).await.unwrap().to_bytes();
    (parts.status, parts.headers, body)
}

/// The standard headers of a client upgrade request, for raw and hyper requests.
pub const UPGRADE_HEADERS: [(&str, &str); 4] = [
    ("upgrade", "websocket"),
    ("connection", "Upgrade"),
    ("sec-websocket-version", "13"),
    ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
];

/// Writes `request` on a fresh TCP connection and reads the response head.
/// Returns the status code, the head as text (lower-cased header names kept verbatim), and
/// the connection with any bytes read past the head.
pub async fn raw_exchange(addr: SocketAddr, request: &str) -> (u16, String, TcpStream, Vec<u8>) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let head_end = loop {
        let mut chunk = [0u8; 4096];
        let n = within("a response head", tcp.read(&mut chunk))
            .await
            .unwrap();
        assert!(
            n > 0,
            "connection closed before the response head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status = head[9..12].parse().unwrap();
    (status, head, tcp, buf[head_end..].to_vec())
}

/// Reads one unmasked server frame: (opcode, payload).
pub async fn read_frame(tcp: &mut TcpStream, pending: &mut Vec<u8>) -> (u8, Vec<u8>) {
    async fn fill(tcp: &mut TcpStream, pending: &mut Vec<u8>, n: usize) {
        while pending.len() < n {
            let mut chunk = [0u8; 4096];
            let got = within("frame bytes", tcp.read(&mut chunk)).await.unwrap();
            assert!(got > 0, "connection closed mid-frame");
            pending.extend_from_slice(&chunk[..got]);
        }
    }
    fill(tcp, pending, 2).await;
    let opcode = pending[0] & 0x0f;
    let (len, header) = match pending[1] & 0x7f {
        126 => {
            fill(tcp, pending, 4).await;
            (u16::from_be_bytes([pending[2], pending[3]]) as usize, 4)
        }
        127 => panic!("test frames are small"),
        n => (n as usize, 2),
    };
    fill(tcp, pending, header + len).await;
    let payload = pending[header..header + len].to_vec();
    pending.drain(..header + len);
    (opcode, payload)
}

/// A masked client frame.
pub fn client_frame(fin_opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x12, 0x34, 0x56, 0x78];
    let mut f = vec![fin_opcode];
    assert!(payload.len() < 126);
    f.push(0x80 | payload.len() as u8);
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// A raw upgrade request for `path` with extra header lines.
pub fn upgrade_request(addr: SocketAddr, path: &str, extra: &[&str]) -> String {
    let host = format!("host: {addr}");
    let lines: Vec<&str> = std::iter::once(host.as_str())
        .chain(extra.iter().copied())
        .collect();
    raw_upgrade(path, &lines)
}

/// A raw upgrade request with exactly these head lines after the upgrade headers (no Host
/// unless one is given).
pub fn raw_upgrade(target: &str, extra: &[&str]) -> String {
    let mut req = format!("GET {target} HTTP/1.1\r\n");
    for (k, v) in UPGRADE_HEADERS {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    for line in extra {
        req.push_str(line);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    req
}

/// A port with nothing listening (bound, then released).
pub async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// Sends a close and awaits the end of the stream, returning the peer's close frame.
pub async fn close_and_wait<S>(
    ws: &mut WebSocketStream<S>,
    code: u16,
    reason: &str,
) -> Option<(u16, String)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    ws.send(Message::Close(Some(CloseFrame {
        code: code.into(),
        reason: reason.into(),
    })))
    .await
    .unwrap();
    let mut reply = None;
    while let Some(Ok(msg)) = within("the close answer", ws.next()).await {
        if let Message::Close(f) = msg {
            reply = f.map(|f| (u16::from(f.code), f.reason.to_string()));
        }
    }
    reply
}

pub type Server = WebSocketStream<TcpStream>;

/// A tokio-tungstenite upstream on `listener`, running `handler` for every session.
pub fn tt_upstream_on<F, Fut>(listener: TcpListener, handler: F) -> SocketAddr
where
    F: Fn(Server) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let handler = handler.clone();
            tokio::spawn(async move {
                if let Ok(ws) = tokio_tungstenite::accept_async(tcp).await {
                    handler(ws).await;
                }
            });
        }
    });
    addr
}

/// A tokio-tungstenite upstream on 127.0.0.1:0.
pub async fn tt_upstream<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(Server) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    tt_upstream_on(TcpListener::bind("127.0.0.1:0").await.unwrap(), handler)
}

/// What a reporting upstream read: each message (`Some`), then `None` when its stream ended.
pub struct Reported(tokio::sync::mpsc::UnboundedReceiver<Option<Message>>);

impl Reported {
    pub async fn next(&mut self) -> Option<Message> {
        within("the upstream to read something", self.0.recv())
            .await
            .expect("upstream task ended")
    }

    /// Nothing further was read (so far).
    pub fn nothing_more(&mut self) -> bool {
        self.0.try_recv().is_err()
    }
}

/// A tokio-tungstenite upstream reporting every message it reads (pings and closes included)
/// and the end of its stream; it echoes data messages.
pub async fn reporting_upstream() -> (SocketAddr, Reported) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let addr = tt_upstream(move |mut ws: Server| {
        let tx = tx.clone();
        async move {
            while let Some(Ok(m)) = ws.next().await {
                let _ = tx.send(Some(m.clone()));
                if m.is_text() || m.is_binary() {
                    let _ = ws.send(m).await;
                }
            }
            let _ = tx.send(None);
        }
    })
    .await;
    (addr, Reported(rx))
}

/// The `ws-proxy` binary: the tests that drive it live in its package (`ws-proxy/tests/`),
/// where Cargo builds it and names it; the library's tests never call this.
pub fn ws_proxy_binary() -> &'static str {
    match option_env!("CARGO_BIN_EXE_ws-proxy") {
        Some(path) => path,
        None => panic!("only the ws-proxy package's tests run the binary"),
    }
}

/// The binary, with every stderr line sent to the returned channel; returns once it listens.
pub async fn start_logged(
    args: &[&str],
    env: &[(&str, &str)],
) -> (
    tokio::process::Child,
    SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let mut child = tokio::process::Command::new(ws_proxy_binary())
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let addr = within("the listening line", async {
        loop {
            let line = rx.recv().await.expect("ws-proxy exited early");
            let rest = line
                .split("listen=")
                .nth(1)
                .or_else(|| line.split("\"listen\":\"").nth(1));
            if let Some(rest) = rest {
                let addr: String = rest
                    .chars()
                    .take_while(|c| !c.is_whitespace() && *c != '"')
                    .collect();
                return addr.parse().unwrap();
            }
        }
    })
    .await;
    (child, addr, rx)
}

/// Waits for a log line containing `needle`, returning it.
pub async fn line_with(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    needle: &str,
) -> String {
    within(needle, async {
        loop {
            let line = rx.recv().await.expect("ws-proxy exited");
            if line.contains(needle) {
                return line;
            }
        }
    })
    .await
}

/// An HTTP/1.1 request to an admin listener, with a bearer token and a JSON body if given;
/// returns the status, headers and body.
pub async fn admin_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    json: Option<&str>,
) -> (StatusCode, http::HeaderMap, Vec<u8>) {
    use http_body_util::{BodyExt, Full};
    let io = hyper_util::rt::TokioIo::new(tokio::net::TcpStream::connect(addr).await.unwrap());
    let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    if let Some(token) = token {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    if json.is_some() {
        req = req.header("content-type", "application/json");
    }
    let body = Full::new(Bytes::from(json.unwrap_or_default().to_owned()));
    let res = within(
        "the admin answer",
        send.send_request(req.body(body).unwrap()),
    )
    .await
    .unwrap();
    let (parts, body) = res.into_parts();
    let body = body.collect().await.unwrap().to_bytes().to_vec();
    (parts.status, parts.headers, body)
}

/// Starts the `ws-proxy` binary on 127.0.0.1:0 with `args`; returns it (killed on drop), the
/// address it logged, and its metrics address if it logged one. Its logs keep being drained.
pub async fn start_ws_proxy(
    args: &[&str],
) -> (tokio::process::Child, SocketAddr, Option<SocketAddr>) {
    let mut cmd = tokio::process::Command::new(ws_proxy_binary());
    cmd.args(["--listen", "127.0.0.1:0"])
        .args(args)
        .env("RUST_LOG", "info");
    let (child, addr, metrics, mut lines) = spawn_proxy(cmd).await;
    // Keep draining logs so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, addr, metrics)
}

/// A `/proc/<pid>/status` figure of `child` in KiB: `VmRSS:` (resident now), `VmHWM:` (peak).
pub fn proc_status_kib(child: &tokio::process::Child, field: &str) -> u64 {
    let pid = child.id().expect("running");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A proxy's log lines, still to be read.
pub type Logs = tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStderr>>;

/// Spawns `cmd` (the binary, or a shell that limits and then runs it) with its logs piped and
/// killed on drop, and waits for the line naming its address (and its metrics address, which
/// is logged first). The caller drains the rest of the logs.
pub async fn spawn_proxy(
    cmd: tokio::process::Command,
) -> (tokio::process::Child, SocketAddr, Option<SocketAddr>, Logs) {
    let (child, addrs, lines) = spawn_logging(cmd).await;
    (child, addrs["listen"], addrs.get("metrics").copied(), lines)
}

/// As [`spawn_proxy`], with every `NAME=ADDR` address logged up to the listening line
/// (`listen`, `metrics`, `admin`), by name.
pub async fn spawn_logging(
    mut cmd: tokio::process::Command,
) -> (
    tokio::process::Child,
    std::collections::HashMap<String, SocketAddr>,
    Logs,
) {
    use tokio::io::AsyncBufReadExt;
    let mut child = cmd
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut addrs = std::collections::HashMap::new();
    within("the listening line", async {
        while !addrs.contains_key("listen") {
            let line = lines
                .next_line()
                .await
                .unwrap()
                .expect("ws-proxy exited early");
            for word in line.split_whitespace() {
                if let Some((name, value)) = word.split_once('=') {
                    if let Ok(addr) = value.parse::<SocketAddr>() {
                        addrs.entry(name.to_owned()).or_insert(addr);
                    }
                }
            }
        }
    })
    .await;
    (child, addrs, lines)
}

/// Sends `signal` (`TERM`, `HUP`) to `child`.
pub fn signal(child: &tokio::process::Child, signal: &str) {
    let pid = child.id().expect("running").to_string();
    let sent = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid])
        .status()
        .unwrap();
    assert!(sent.success(), "kill -{signal} {pid}");
}

/// The next message is a close frame: its code and reason.
pub async fn next_close<S>(ws: &mut WebSocketStream<S>) -> (u16, String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match next_message(ws).await {
        Message::Close(Some(f)) => (u16::from(f.code), f.reason.to_string()),
        other => panic!("expected a close frame, got {other:?}"),
    }
}

/// Reads the upgrade request on `tcp` and answers `101` with the right accept key, as an
/// upstream that says nothing after it would; `false` if the peer left first.
pub async fn answer_upgrade(tcp: &mut TcpStream) -> bool {
    use tokio::io::AsyncWriteExt;
    let Some(head) = read_head(tcp).await else {
        return false;
    };
    let res = format!(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\nsec-websocket-accept: {}\r\n\r\n",
        accept_for(&head)
    );
    tcp.write_all(res.as_bytes()).await.is_ok()
}

/// Reads an HTTP request head byte by byte (so nothing after it is consumed); `None` on EOF.
pub async fn read_head(tcp: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        if tcp.read(&mut b).await.unwrap_or(0) == 0 {
            return None;
        }
        head.push(b[0]);
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// A header's value in a request head (case-insensitive name).
pub fn head_header(head: &str, name: &str) -> Option<String> {
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_owned())
}

/// The `Sec-WebSocket-Accept` answering the key in a request head.
pub fn accept_for(head: &str) -> String {
    let key = head_header(head, "sec-websocket-key").unwrap_or_default();
    tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes())
}

/// An upstream that says its name first, then echoes text and binary messages.
pub async fn named(name: &'static str) -> SocketAddr {
    named_on(TcpListener::bind("127.0.0.1:0").await.unwrap(), name)
}

/// As [`named`], on a given listener (e.g. to come back on a port after a restart).
pub fn named_on(listener: TcpListener, name: &'static str) -> SocketAddr {
    tt_upstream_on(listener, move |mut ws: Server| async move {
        if ws.send(Message::text(name)).await.is_err() {
            return;
        }
        while let Some(Ok(m)) = ws.next().await {
            if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                break;
            }
        }
    })
}

/// An upstream that accepts the upgrade and then never reads again (a hung process).
pub async fn hung_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut tcp, _)) = listener.accept().await {
            if answer_upgrade(&mut tcp).await {
                held.push(tcp);
            }
        }
    });
    addr
}

pub type Seen = tokio::sync::mpsc::UnboundedReceiver<(http::Uri, HeaderMap)>;

/// An axum upstream that reports each upgrade request, answers with `protocols` available,
/// adds `Set-Cookie` and a few headers that must not reach the client, then echoes.
pub async fn recording_upstream(protocols: &'static [&'static str]) -> (SocketAddr, Seen) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let app = Router::new().fallback(
        move |uri: http::Uri, headers: HeaderMap, ws: WebSocketUpgrade| {
            let tx = tx.clone();
            async move {
                tx.send((uri, headers)).unwrap();
                let mut res = ws.protocols(protocols.iter().copied()).on_upgrade(echo);
                let h = res.headers_mut();
                h.insert("set-cookie", "sid=abc; HttpOnly".parse().unwrap());
                h.insert("x-upstream", "1".parse().unwrap());
                h.insert("keep-alive", "timeout=5".parse().unwrap());
                h.insert("sec-websocket-x-debug", "1".parse().unwrap());
                res
            }
        },
    );
    (serve(app).await, rx)
}

/// Writes `text` to a file `name` in this test binary's own folder under the target dir.
pub fn write_config(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Raises this process's open-file limit to its hard limit: tests that hold thousands of
/// sockets in two processes need more than a default soft limit of 1024.
pub fn raise_fd_limit() {
    #[allow(unsafe_code)]
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

pub type H2Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// Opens a WebSocket over an HTTP/2 (prior knowledge, cleartext) connection.
pub async fn h2_connect(
    addr: SocketAddr,
    path: &str,
    extra: &[(&str, &str)],
) -> (http::Response<hyper::body::Incoming>, Option<H2Socket>) {
    let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
    let (mut send, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .handshake(io)
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(http::Method::CONNECT)
        .uri(format!("http://{addr}{path}"))
        .extension(hyper::ext::Protocol::from_static("websocket"))
        .header("sec-websocket-version", "13");
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    let mut res = within(
        "the HTTP/2 answer",
        send.send_request(req.body(Empty::<Bytes>::new()).unwrap()),
    )
    .await
    .unwrap();
    if res.status() != StatusCode::OK {
        return (res, None);
    }
    let upgraded = within("the h2 stream", hyper::upgrade::on(&mut res))
        .await
        .unwrap();
    let ws = WebSocketStream::from_raw_socket(
        TokioIo::new(upgraded),
        tokio_tungstenite::tungstenite::protocol::Role::Client,
        None,
    )
    .await;
    (res, Some(ws))
}
