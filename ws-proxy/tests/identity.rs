//! `ws-proxy` with JWT: tokens from the header, a cookie or the query (stripped upstream and
//! from logs), the session API on the admin listener, and keys reloaded on SIGHUP.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use common::*;
use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const SECRET_A: &str = "first secret, thirty-two bytes or more";
const SECRET_B: &str = "second secret, thirty-two bytes or more";
const ADMIN: &str = "admin-token-for-the-session-api";

fn token(secret: &str, sub: &str, extra: Value) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut claims = json!({ "sub": sub, "exp": now + 600, "aud": "chat" });
    if let (Some(c), Some(extra)) = (claims.as_object_mut(), extra.as_object()) {
        c.extend(extra.clone());
    }
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

async fn status_of(addr: SocketAddr, path: &str, extra: &[&str]) -> u16 {
    raw_exchange(addr, &upgrade_request(addr, path, extra))
        .await
        .0
}

#[tokio::test]
async fn a_query_token_reaches_neither_the_upstream_nor_any_log_line() {
    let (up, mut seen) = recording_upstream(&[]).await;
    let secret = write_config("jwt-query-secret", &format!("{SECRET_A}\n"));
    let (_child, proxy, mut logs) = start_logged(
        &[
            "--upstream",
            &format!("ws://{up}"),
            "--log-format",
            "json",
            "--jwt-hmac-secret-file",
            secret.to_str().unwrap(),
            "--jwt-audience",
            "chat",
            "--jwt-query-param",
            "jwt",
            "--jwt-tenant-claim",
            "org",
            "--jwt-forward-claim",
            "sub=x-user",
            "--jwt-forward-claim",
            "org=x-tenant",
        ],
        &[],
    )
    .await;
    let good = token(SECRET_A, "alice", json!({ "org": "acme" }));
    let mut ws = connect_with(
        proxy,
        &format!("/live?room=7&jwt={good}"),
        &[("x-tenant", "forged")],
    )
    .await;
    let (uri, headers) = within("the upstream request", seen.recv()).await.unwrap();
    assert_eq!(uri.to_string(), "/live?room=7");
    assert_eq!(headers["x-user"], "alice");
    assert_eq!(
        headers.get_all("x-tenant").iter().collect::<Vec<_>>(),
        ["acme"]
    );
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::text("hi"));
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}

    let bad = token(SECRET_B, "mallory", json!({}));
    assert_eq!(
        status_of(proxy, &format!("/live?jwt={bad}"), &[]).await,
        401
    );

    // The session's line and the refusal's: neither token anywhere.
    let mut session = None;
    let mut refusal = None;
    within("the session and refusal lines", async {
        while session.is_none() || refusal.is_none() {
            let line = logs.recv().await.expect("ws-proxy exited");
            assert!(
                !line.contains(&good) && !line.contains(&bad),
                "a token was logged: {line}"
            );
            if line.contains("session closed") {
                session = Some(line);
            } else if line.contains("upgrade refused") {
                refusal = Some(line);
            }
        }
    })
    .await;
    let session: Value = serde_json::from_str(&session.unwrap()).unwrap();
    assert_eq!(session["span"]["path"], "/live?room=7");
    assert_eq!(session["span"]["subject"], "alice");
    assert_eq!(session["span"]["tenant"], "acme");
    let refusal: Value = serde_json::from_str(&refusal.unwrap()).unwrap();
    assert_eq!(refusal["path"], "/live?jwt=REDACTED");
    assert_eq!(refusal["status"], 401);
    assert_eq!(refusal["cause"], "token_invalid");
}

#[tokio::test]
async fn the_session_api_lists_closes_and_revokes_behind_its_token() {
    let up = echo_upstream().await;
    let secret = write_config("jwt-api-secret", SECRET_A);
    let admin_token = write_config("jwt-api-admin", ADMIN);
    let mut cmd = tokio::process::Command::new(ws_proxy_binary());
    cmd.args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(["--upstream", &format!("ws://{up}")])
        .args(["--admin-token-file", admin_token.to_str().unwrap()])
        .args(["--jwt-hmac-secret-file", secret.to_str().unwrap()])
        .args(["--jwt-audience", "chat", "--jwt-tenant-claim", "org"])
        .env("RUST_LOG", "info");
    let (_child, addrs, mut lines) = spawn_logging(cmd).await;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let (proxy, admin) = (addrs["listen"], addrs["admin"]);

    let mut clients = Vec::new();
    for (sub, org) in [
        ("ann", "acme"),
        ("ann", "acme"),
        ("ben", "acme"),
        ("cid", "globex"),
    ] {
        let bearer = format!("Bearer {}", token(SECRET_A, sub, json!({ "org": org })));
        clients.push(connect_with(proxy, "/", &[("authorization", &bearer)]).await);
    }

    // Nothing without the admin token, and nothing happened.
    for (method, path, body) in [
        ("GET", "/sessions", None),
        ("POST", "/sessions/close", Some(r#"{"all":true}"#)),
        ("POST", "/revocations", Some(r#"{"subject":"ann"}"#)),
        ("GET", "/revocations", None),
    ] {
        let (status, headers, _) = admin_request(admin, method, path, None, body).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}");
        assert_eq!(
            headers["www-authenticate"],
            "Bearer realm=\"ws-proxy admin\""
        );
    }

    let get = |path: &'static str| async move {
        let (status, _, body) = admin_request(admin, "GET", path, Some(ADMIN), None).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        serde_json::from_slice::<Value>(&body).unwrap()
    };
    let page = get("/sessions?tenant=acme&limit=2").await;
    assert_eq!(page["sessions"].as_array().unwrap().len(), 2);
    assert_eq!(page["sessions"][0]["subject"], "ann");
    assert!(page["sessions"][0]["expires_at"].as_f64().unwrap() > 0.0);
    let next = page["next"].as_u64().expect("a next page");
    let (_, _, body) = admin_request(
        admin,
        "GET",
        &format!("/sessions?tenant=acme&after={next}"),
        Some(ADMIN),
        None,
    )
    .await;
    let rest: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(rest["sessions"].as_array().unwrap().len(), 1);
    assert_eq!(rest["next"], Value::Null);
    assert_eq!(
        get("/sessions?limit=100000").await["limit"],
        1000,
        "pages are bounded"
    );
    let (status, _, _) = admin_request(admin, "GET", "/sessions?limit=x", Some(ADMIN), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Revoke ann: both her sessions close with 1008, and her token no longer opens one.
    let (status, _, body) = admin_request(
        admin,
        "POST",
        "/revocations",
        Some(ADMIN),
        Some(r#"{"subject":"ann","for":"1h"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(serde_json::from_slice::<Value>(&body).unwrap()["closed"], 2);
    for ws in &mut clients[..2] {
        assert_eq!(next_close(ws).await, (1008, "revoked".to_owned()));
    }
    let bearer = format!(
        "authorization: Bearer {}",
        token(SECRET_A, "ann", json!({}))
    );
    assert_eq!(status_of(proxy, "/", &[&bearer]).await, 401);
    assert_eq!(get("/revocations").await["total"], 1);
    for body in [
        r#"{"subject":"x","until":18446744073709551615}"#,
        r#"{"subject":"x","for":"500000000000y"}"#,
        r#"{"subject":"x","until":1}"#,
        r#"{"subject":"","for":"1h"}"#,
        r#"{"subject":"x","token_id":"y"}"#,
    ] {
        let (status, _, _) =
            admin_request(admin, "POST", "/revocations", Some(ADMIN), Some(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    }
    let long = format!(r#"{{"subject":"{}"}}"#, "x".repeat(257));
    let (status, _, _) =
        admin_request(admin, "POST", "/revocations", Some(ADMIN), Some(&long)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "ids are bounded");
    // Pages of revocations follow `next`.
    for who in ["zed", "zoe"] {
        let body = format!(r#"{{"subject":"{who}"}}"#);
        admin_request(admin, "POST", "/revocations", Some(ADMIN), Some(&body)).await;
    }
    let first = get("/revocations?limit=2").await;
    assert_eq!(first["total"], 3);
    assert_eq!(first["next"], "subject:zed");
    let (_, _, body) = admin_request(
        admin,
        "GET",
        "/revocations?limit=2&after=subject:zed",
        Some(ADMIN),
        None,
    )
    .await;
    let rest: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(rest["revocations"][0]["revoked"]["subject"], "zoe");
    assert_eq!(rest["next"], Value::Null);

    // Close a tenant with the operator's code; an empty selector is refused.
    let (status, _, _) =
        admin_request(admin, "POST", "/sessions/close", Some(ADMIN), Some("{}")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, body) = admin_request(
        admin,
        "POST",
        "/sessions/close",
        Some(ADMIN),
        Some(r#"{"tenant":"globex","code":4000,"reason":"maintenance"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(serde_json::from_slice::<Value>(&body).unwrap()["closed"], 1);
    assert_eq!(
        next_close(&mut clients[3]).await,
        (4000, "maintenance".to_owned())
    );
    let (status, _, _) = admin_request(
        admin,
        "POST",
        "/sessions/close",
        Some(ADMIN),
        Some(r#"{"all":true,"code":1006}"#),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "1006 is never sent");
    clients[2].send(Message::text("ben stays")).await.unwrap();
    assert_eq!(
        next_message(&mut clients[2]).await,
        Message::text("ben stays")
    );
}

/// SIGHUP reads the key file again: new sessions need the new key; open sessions stay, and
/// so do revocations.
#[tokio::test]
async fn a_reload_of_the_key_file_applies_to_new_sessions_and_keeps_revocations() {
    let up = echo_upstream().await;
    let secret = write_config("jwt-reload-secret", SECRET_A);
    let admin_token = write_config("jwt-reload-admin", ADMIN);
    let config = write_config(
        "jwt-reload.toml",
        &format!("upstream = [\"ws://{up}\"]\njwt_audience = \"chat\"\n"),
    );
    // A port free now, for a process that must be told its admin address.
    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (child, proxy, mut logs) = start_logged(
        &[
            "--config",
            config.to_str().unwrap(),
            "--jwt-hmac-secret-file",
            secret.to_str().unwrap(),
            "--admin-listen",
            &admin.to_string(),
            "--admin-token-file",
            admin_token.to_str().unwrap(),
        ],
        &[],
    )
    .await;
    let old = format!("Bearer {}", token(SECRET_A, "olga", json!({})));
    let mut open = connect_with(proxy, "/", &[("authorization", &old)]).await;
    let (status, _, _) = admin_request(
        admin,
        "POST",
        "/revocations",
        Some(ADMIN),
        Some(r#"{"subject":"pete"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);

    std::fs::write(&secret, SECRET_B).unwrap();
    signal(&child, "HUP");
    line_with(&mut logs, "configuration reloaded").await;

    let old_line = format!("authorization: {old}");
    assert_eq!(status_of(proxy, "/", &[&old_line]).await, 401);
    let new = format!("Bearer {}", token(SECRET_B, "olga", json!({})));
    let _fresh = connect_with(proxy, "/", &[("authorization", &new)]).await;
    let pete = format!(
        "authorization: Bearer {}",
        token(SECRET_B, "pete", json!({}))
    );
    assert_eq!(
        status_of(proxy, "/", &[&pete]).await,
        401,
        "revoked before the reload"
    );
    open.send(Message::text("still open")).await.unwrap();
    assert_eq!(next_message(&mut open).await, Message::text("still open"));
}

/// `--check-config` names the key file, never what is in it.
#[test]
fn check_config_never_prints_a_secret() {
    let secret = write_config("jwt-check-secret", SECRET_A);
    let out = std::process::Command::new(ws_proxy_binary())
        .args(["--upstream", "ws://127.0.0.1:1", "--check-config"])
        .args(["--jwt-hmac-secret-file", secret.to_str().unwrap()])
        .args(["--jwt-forward-claim", "sub=x-user"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("jwt_hmac_secret_file = "), "{printed}");
    assert!(
        printed.contains("jwt_forward_claim = [\"sub=x-user\"]"),
        "{printed}"
    );
    assert!(!printed.contains("first secret"), "{printed}");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("first secret"));
}
