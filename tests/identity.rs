//! Sessions that know whom they belong to: the identity phase, the JWT check with real
//! tokens, expiry at `exp`, extension, revocation and the session API.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum_ws_proxy::hooks::{CloseCode, Refusal};
use axum_ws_proxy::jwt::{JwtAuth, JwtKeys, TokenSource};
use axum_ws_proxy::{
    AuthFailure, Identity, Mode, Revoked, SessionControl, SessionFilter, WsProxyLayer,
};
use common::*;
use futures_util::SinkExt;
use http::StatusCode;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &[u8] = b"a test secret of thirty-two bytes!!";
const RSA_PRIVATE: &[u8] = include_bytes!("data/jwt_rsa_private.pem");
const RSA_PUBLIC: &[u8] = include_bytes!("data/jwt_rsa_public.pem");
const EC_PRIVATE: &[u8] = include_bytes!("data/jwt_ec_private.pem");
const EC_PUBLIC: &[u8] = include_bytes!("data/jwt_ec_public.pem");

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Claims valid for `ttl` seconds from now, for `sub`, with `extra` merged in.
fn claims(sub: &str, ttl: i64, extra: serde_json::Value) -> serde_json::Value {
    let mut c =
        json!({ "sub": sub, "exp": now() as i64 + ttl, "iss": "https://id.test", "aud": "chat" });
    if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            c.insert(k.clone(), v.clone());
        }
    }
    c
}

fn hs256(claims: &serde_json::Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

fn hmac_auth() -> JwtAuth {
    JwtAuth::builder(JwtKeys::hmac_secret(SECRET).unwrap())
        .issuer("https://id.test")
        .audience("chat")
        .token_sources([
            TokenSource::Bearer,
            TokenSource::Cookie("session".into()),
            TokenSource::Query("access_token".into()),
        ])
        .tenant_claim("org")
        .tags_claim("scope")
        .forward_claim("sub", "x-user".parse().unwrap())
        .forward_claim("org", "x-tenant".parse().unwrap())
        .build()
        .unwrap()
}

/// The status, `WWW-Authenticate` and body of an upgrade refused through `addr`.
async fn refused(addr: SocketAddr, path: &str, extra: &[&str]) -> (u16, String, String) {
    let (status, head, _, body) = raw_exchange(addr, &upgrade_request(addr, path, extra)).await;
    let challenge = head_header(&head, "www-authenticate").unwrap_or_default();
    (
        status,
        challenge,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

async fn jwt_proxy(mode: Mode) -> (SocketAddr, SessionControl) {
    let layer = WsProxyLayer::new(upstream(echo_upstream().await))
        .mode(mode)
        .identify(hmac_auth());
    let control = layer.session_control();
    (proxy(layer).await, control)
}

#[tokio::test]
async fn a_valid_token_opens_the_session_with_its_claims_forwarded_and_the_clients_copies_stripped()
{
    let (up, mut seen) = recording_upstream(&[]).await;
    let layer = WsProxyLayer::new(upstream(up)).identify(hmac_auth());
    let control = layer.session_control();
    let addr = proxy(layer).await;
    let token = hs256(&claims(
        "alice",
        60,
        json!({ "org": "acme", "scope": "read write" }),
    ));
    let bearer = format!("Bearer {token}");
    let mut ws = connect_with(
        addr,
        "/chat",
        &[
            ("authorization", &bearer),
            ("x-user", "mallory"),
            ("x-tenant", "evil"),
        ],
    )
    .await;
    let (_, headers) = within("the upgrade upstream", seen.recv()).await.unwrap();
    assert_eq!(
        headers.get_all("x-user").iter().collect::<Vec<_>>(),
        ["alice"]
    );
    assert_eq!(
        headers.get_all("x-tenant").iter().collect::<Vec<_>>(),
        ["acme"]
    );
    assert!(
        headers.get("authorization").is_none(),
        "the token stays at the proxy"
    );
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::text("hi"));

    let page = control.list(&SessionFilter::default().subject("alice"), None, 10);
    assert_eq!(page.sessions.len(), 1);
    let identity = page.sessions[0].identity.as_ref().unwrap();
    assert_eq!(identity.tenant_name(), Some("acme"));
    assert_eq!(identity.tags().collect::<Vec<_>>(), ["read", "write"]);
    assert!(page.sessions[0].expires_at.is_some());
}

#[tokio::test]
async fn a_missing_token_is_401_with_a_bare_challenge_before_any_dial() {
    let layer = WsProxyLayer::new(upstream(closed_port().await)).identify(hmac_auth());
    let addr = proxy(layer).await;
    let (status, challenge, body) = refused(addr, "/chat", &[]).await;
    assert_eq!(status, 401);
    assert_eq!(challenge, "Bearer realm=\"websocket\"");
    assert_eq!(body, "a bearer token is required\n");
}

/// Each bad token: 401, `error="invalid_token"`, and the cause in the body.
#[tokio::test]
async fn bad_tokens_are_refused_each_with_its_cause() {
    let layer = WsProxyLayer::new(upstream(closed_port().await)).identify(hmac_auth());
    let addr = proxy(layer).await;
    let wrong_key = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims("bob", 60, json!({})),
        &EncodingKey::from_secret(b"another secret of thirty-two bytes!"),
    )
    .unwrap();
    // `alg: none`, unsigned.
    use base64::Engine;
    let b64 = |v: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let none = format!(
        "{}.{}.",
        b64(json!({ "alg": "none", "typ": "JWT" })),
        b64(claims("bob", 60, json!({})))
    );
    let cases = [
        (hs256(&claims("bob", -10, json!({}))), "token expired"),
        (
            hs256(&claims("bob", 60, json!({ "nbf": now() + 3600 }))),
            "the token is not valid yet",
        ),
        (
            wrong_key,
            "the token is malformed or its signature does not verify",
        ),
        (
            hs256(&claims("bob", 60, json!({ "aud": "billing" }))),
            "the token's audience is not accepted",
        ),
        (
            hs256(&claims("bob", 60, json!({ "iss": "https://evil.test" }))),
            "the token's issuer is not accepted",
        ),
        (none, "the token's algorithm is not accepted"),
        (
            "not.a.token".to_owned(),
            "the token is malformed or its signature does not verify",
        ),
        (
            hs256(&json!({ "sub": "bob", "iss": "https://id.test", "aud": "chat" })),
            "the token lacks a required claim",
        ),
        // Checked claims left out are refused, not skipped.
        (
            hs256(&json!({ "sub": "bob", "exp": now() + 60, "iss": "https://id.test" })),
            "the token's audience is not accepted",
        ),
        (
            hs256(&json!({ "sub": "bob", "exp": now() + 60, "aud": "chat" })),
            "the token's issuer is not accepted",
        ),
        // Beyond what a clock holds.
        (
            hs256(&claims("bob", 0, json!({ "exp": u64::MAX }))),
            "the token lacks a required claim",
        ),
    ];
    for (token, why) in cases {
        let bearer = format!("authorization: Bearer {token}");
        let (status, challenge, body) = refused(addr, "/chat", &[&bearer]).await;
        assert_eq!(status, 401, "{why}");
        assert_eq!(
            challenge,
            format!(
                "Bearer realm=\"websocket\", error=\"invalid_token\", error_description=\"{why}\""
            )
        );
        assert_eq!(body, format!("{why}\n"));
    }
}

#[tokio::test]
async fn an_hmac_token_signed_with_the_rsa_public_key_is_refused() {
    let auth = JwtAuth::builder(JwtKeys::from_pem(RSA_PUBLIC).unwrap())
        .audience("chat")
        .build()
        .unwrap();
    let layer = WsProxyLayer::new(upstream(echo_upstream().await)).identify(auth);
    let addr = proxy(layer).await;
    let forged = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims("root", 60, json!({})),
        &EncodingKey::from_secret(RSA_PUBLIC),
    )
    .unwrap();
    let bearer = format!("authorization: Bearer {forged}");
    let (status, _, body) = refused(addr, "/", &[&bearer]).await;
    assert_eq!(
        (status, body.as_str()),
        (401, "the token's algorithm is not accepted\n")
    );

    // The same claims signed with the private key pass.
    let signed = jsonwebtoken::encode(
        &Header::new(Algorithm::RS256),
        &claims("root", 60, json!({})),
        &EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap(),
    )
    .unwrap();
    let bearer = format!("Bearer {signed}");
    let mut ws = connect_with(addr, "/", &[("authorization", &bearer)]).await;
    ws.send(Message::text("rs256")).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::text("rs256"));
}

#[tokio::test]
async fn es256_tokens_verify_against_an_ec_public_key() {
    let auth = JwtAuth::builder(JwtKeys::from_pem(EC_PUBLIC).unwrap())
        .algorithms(["ES256"])
        .audience("chat")
        .build()
        .unwrap();
    let addr = proxy(WsProxyLayer::new(upstream(echo_upstream().await)).identify(auth)).await;
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::ES256),
        &claims("carol", 60, json!({})),
        &EncodingKey::from_ec_pem(EC_PRIVATE).unwrap(),
    )
    .unwrap();
    let bearer = format!("Bearer {token}");
    let mut ws = connect_with(addr, "/", &[("authorization", &bearer)]).await;
    ws.send(Message::text("es256")).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::text("es256"));
}

#[tokio::test]
async fn a_query_token_never_reaches_the_upstream_and_a_cookie_token_works() {
    let (up, mut seen) = recording_upstream(&[]).await;
    let layer = WsProxyLayer::new(upstream(up)).identify(hmac_auth());
    assert_eq!(
        layer.log_path("/chat?room=1&access_token=abc"),
        "/chat?room=1&access_token=REDACTED"
    );
    let addr = proxy(layer).await;
    let token = hs256(&claims("dave", 60, json!({})));
    let _ws = connect(addr, &format!("/chat?room=1&access_token={token}&x=2")).await;
    let (uri, _) = within("the upgrade upstream", seen.recv()).await.unwrap();
    assert_eq!(uri.to_string(), "/chat?room=1&x=2");

    let cookie = format!("theme=dark; session={token}");
    let _ws = connect_with(addr, "/c", &[("cookie", &cookie)]).await;
    let (uri, headers) = within("the upgrade upstream", seen.recv()).await.unwrap();
    assert_eq!(uri.path(), "/c");
    assert_eq!(headers.get("x-user").unwrap(), "dave");
}

/// The close arrives at `exp` (not before, and within 100 ms after), with 1008 "token
/// expired" to the client and 1001 to the upstream.
async fn closes_at_exp(mode: Mode) {
    let (up, mut reported) = reporting_upstream().await;
    let layer = WsProxyLayer::new(upstream(up))
        .mode(mode)
        .identify(hmac_auth());
    let addr = proxy(layer).await;
    let exp = now() + 2;
    let token = hs256(&claims("erin", 0, json!({ "exp": exp })));
    let bearer = format!("Bearer {token}");
    let mut ws = connect_with(addr, "/", &[("authorization", &bearer)]).await;
    let (code, reason) = next_close(&mut ws).await;
    let at = SystemTime::now();
    let exp = UNIX_EPOCH + Duration::from_secs(exp);
    assert_eq!((code, reason.as_str()), (1008, "token expired"));
    assert!(at >= exp, "closed {:?} before exp", exp.duration_since(at));
    let late = at.duration_since(exp).unwrap();
    assert!(
        late < Duration::from_millis(100),
        "closed {late:?} after exp"
    );
    loop {
        match within("the upstream's close", reported.next()).await {
            Some(Message::Close(Some(f))) => {
                assert_eq!(
                    (u16::from(f.code), f.reason.as_str()),
                    (1001, "token expired")
                );
                break;
            }
            Some(Message::Ping(_) | Message::Pong(_)) => continue,
            other => panic!("expected the upstream's close, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_frame_session_closes_at_its_tokens_exp_with_1008() {
    closes_at_exp(Mode::Frames).await;
}

#[tokio::test]
async fn a_tunnel_session_closes_at_its_tokens_exp_with_1008() {
    closes_at_exp(Mode::Tunnel).await;
}

/// The application extends a live session; it outlives its token's `exp`, then ends at the
/// new time.
async fn extended(mode: Mode) {
    let (addr, control) = jwt_proxy(mode).await;
    let token = hs256(&claims("frank", 1, json!({})));
    let bearer = format!("Bearer {token}");
    let mut ws = connect_with(addr, "/", &[("authorization", &bearer)]).await;
    let id = control
        .list(&SessionFilter::default().subject("frank"), None, 10)
        .sessions[0]
        .id;
    let until = SystemTime::now() + Duration::from_secs(3);
    assert!(control.extend(id, until));
    assert!(!control.extend(id + 1000, until), "no such session");
    // A session already closing stays closing.
    let token = hs256(&claims("frank-closing", 60, json!({})));
    let bearer2 = format!("Bearer {token}");
    let mut closing = connect_with(addr, "/", &[("authorization", &bearer2)]).await;
    let other = control
        .list(&SessionFilter::default().subject("frank-closing"), None, 1)
        .sessions[0]
        .id;
    let ended = SessionFilter::default().id(other);
    assert_eq!(control.close(&ended, CloseCode::NORMAL, "done"), Ok(1));
    assert!(!control.extend(other, until), "closing already");
    assert_eq!(next_close(&mut closing).await, (1000, "done".to_owned()));
    tokio::time::sleep(Duration::from_millis(1500)).await; // past the token's own exp
    ws.send(Message::text("still here")).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::text("still here"));
    let (code, reason) = next_close(&mut ws).await;
    assert_eq!((code, reason.as_str()), (1008, "token expired"));
    let late = SystemTime::now()
        .duration_since(until)
        .expect("not before the new time");
    assert!(
        late < Duration::from_millis(100),
        "closed {late:?} after the new time"
    );
}

#[tokio::test]
async fn a_frame_session_extended_through_the_session_api_outlives_its_token() {
    extended(Mode::Frames).await;
}

#[tokio::test]
async fn a_tunnel_session_extended_through_the_session_api_outlives_its_token() {
    extended(Mode::Tunnel).await;
}

#[tokio::test]
async fn revoking_a_subject_closes_its_sessions_and_refuses_its_reconnects() {
    let (addr, control) = jwt_proxy(Mode::Frames).await;
    let token = hs256(&claims("gina", 60, json!({ "jti": "t-1" })));
    let bearer = format!("Bearer {token}");
    let mut first = connect_with(addr, "/", &[("authorization", &bearer)]).await;
    let mut second = connect_with(addr, "/", &[("authorization", &bearer)]).await;
    let other = hs256(&claims("hank", 60, json!({})));
    let other = format!("Bearer {other}");
    let mut bystander = connect_with(addr, "/", &[("authorization", &other)]).await;

    let until = SystemTime::now() + Duration::from_secs(60);
    assert_eq!(
        control.revoke(Revoked::Subject("gina".into()), until),
        Ok(2)
    );
    for ws in [&mut first, &mut second] {
        assert_eq!(next_close(ws).await, (1008, "revoked".to_owned()));
    }
    let line = format!("authorization: {bearer}");
    let (status, _, body) = refused(addr, "/", &[&line]).await;
    assert_eq!(
        (status, body.as_str()),
        (401, "the token has been revoked\n")
    );
    bystander.send(Message::text("unaffected")).await.unwrap();
    assert_eq!(
        next_message(&mut bystander).await,
        Message::text("unaffected")
    );

    // A token id too; lifting lets the subject back in.
    assert!(control.lift(&Revoked::Subject("gina".into())));
    assert_eq!(control.revoke(Revoked::TokenId("t-1".into()), until), Ok(0));
    let (status, _, _) = refused(addr, "/", &[&line]).await;
    assert_eq!(status, 401);
    let fresh = hs256(&claims("gina", 60, json!({ "jti": "t-2" })));
    let fresh = format!("Bearer {fresh}");
    let _back = connect_with(addr, "/", &[("authorization", &fresh)]).await;
    assert_eq!(control.revocations(None, 10).total, 1);
}

#[tokio::test]
async fn the_revocation_list_refuses_entries_beyond_its_cap_and_drops_lapsed_ones() {
    let layer = WsProxyLayer::new(upstream(closed_port().await)).max_revocations(2);
    let control = layer.session_control();
    let later = SystemTime::now() + Duration::from_secs(60);
    assert_eq!(control.revoke(Revoked::Subject("a".into()), later), Ok(0));
    assert_eq!(
        control.revoke(
            Revoked::Subject("b".into()),
            SystemTime::now() + Duration::from_millis(50)
        ),
        Ok(0)
    );
    let full = control
        .revoke(Revoked::Subject("c".into()), later)
        .unwrap_err();
    assert_eq!(full.cap, 2);
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert_eq!(control.revoke(Revoked::Subject("c".into()), later), Ok(0));
    let page = control.revocations(None, 10);
    assert_eq!(page.total, 2);
    let names: Vec<_> = page.revocations.iter().map(|(r, _)| r.clone()).collect();
    assert_eq!(
        names,
        [Revoked::Subject("a".into()), Revoked::Subject("c".into())]
    );
}

#[tokio::test]
async fn sessions_are_listed_by_tenant_and_tag_in_bounded_pages_and_closed_with_a_chosen_code() {
    let (addr, control) = jwt_proxy(Mode::Frames).await;
    let mut clients = Vec::new();
    for i in 0..5 {
        let org = if i < 3 { "acme" } else { "globex" };
        let token = hs256(&claims(
            &format!("u{i}"),
            60,
            json!({ "org": org, "scope": ["chat"] }),
        ));
        let bearer = format!("Bearer {token}");
        clients.push(connect_with(addr, "/", &[("authorization", &bearer)]).await);
    }
    let acme = SessionFilter::default().tenant("acme");
    let first = control.list(&acme, None, 2);
    assert_eq!(first.sessions.len(), 2);
    let second = control.list(&acme, first.next, 2);
    assert_eq!(second.sessions.len(), 1);
    assert_eq!(second.next, None);
    assert!(first.sessions[1].id < second.sessions[0].id);
    assert_eq!(
        control
            .list(&SessionFilter::default().tag("chat"), None, 100)
            .sessions
            .len(),
        5
    );
    assert_eq!(
        control
            .list(&SessionFilter::default(), None, 0)
            .sessions
            .len(),
        1,
        "at least one"
    );
    assert_eq!(
        control
            .list(&SessionFilter::default(), None, usize::MAX)
            .sessions
            .len(),
        5
    );

    let reason = "x".repeat(124);
    assert!(control
        .close(&acme, CloseCode::POLICY_VIOLATION, &reason)
        .is_err());
    let code = CloseCode::new(4001).unwrap();
    assert_eq!(control.close(&acme, code, "plan ended"), Ok(3));
    for ws in &mut clients[..3] {
        assert_eq!(next_close(ws).await, (4001, "plan ended".to_owned()));
    }
    let one = control
        .list(&SessionFilter::default().tenant("globex"), None, 1)
        .sessions[0]
        .id;
    assert_eq!(
        control.close(&SessionFilter::default().id(one), CloseCode::NORMAL, "bye"),
        Ok(1)
    );
    assert_eq!(next_close(&mut clients[3]).await, (1000, "bye".to_owned()));
}

/// The identity hook reads what the application's auth layer put in the request, and runs
/// before the session limit: a refused client never holds a slot.
#[tokio::test]
async fn an_identity_hook_reads_the_apps_extensions_and_refuses_before_the_limit() {
    #[derive(Clone)]
    struct User(&'static str);
    let layer = WsProxyLayer::new(upstream(echo_upstream().await))
        .max_sessions(1)
        .identify(|parts: &mut http::request::Parts| {
            let user = parts.extensions.get::<User>().cloned();
            async move {
                match user {
                    Some(User("nobody")) => Err(Refusal::new(StatusCode::FORBIDDEN, "not you")),
                    Some(User(name)) => Ok(Some(Identity::new(name).tag("app"))),
                    None => Err(Refusal::unauthorized(AuthFailure::Missing)),
                }
            }
        });
    let control = layer.session_control();
    let app = Router::new().layer(layer).layer(axum::middleware::from_fn(
        |mut req: axum::extract::Request, next: axum::middleware::Next| async move {
            let user = match req.headers().get("x-login").map(|v| v.as_bytes()) {
                Some(b"ivy") => Some(User("ivy")),
                Some(b"nobody") => Some(User("nobody")),
                _ => None,
            };
            if let Some(user) = user {
                req.extensions_mut().insert(user);
            }
            next.run(req).await
        },
    ));
    let addr = serve(app).await;
    let (status, _, _) = refused(addr, "/", &["x-login: nobody"]).await;
    assert_eq!(status, 403);
    let (status, challenge, _) = refused(addr, "/", &[]).await;
    assert_eq!(
        (status, challenge.as_str()),
        (401, "Bearer realm=\"websocket\"")
    );
    let _ws = connect_with(addr, "/", &[("x-login", "ivy")]).await;
    let page = control.list(
        &SessionFilter::default().subject("ivy").tag("app"),
        None,
        10,
    );
    assert_eq!(page.sessions.len(), 1);
    assert_eq!(page.sessions[0].expires_at, None);
}

#[tokio::test]
async fn a_client_sent_identity_header_is_removed_even_when_its_claim_is_absent() {
    let (up, mut seen) = recording_upstream(&[]).await;
    let addr = proxy(WsProxyLayer::new(upstream(up)).identify(hmac_auth())).await;
    let bearer = format!("Bearer {}", hs256(&claims("jill", 60, json!({}))));
    let _ws = connect_with(
        addr,
        "/",
        &[("authorization", &bearer), ("x-tenant", "forged")],
    )
    .await;
    let (_, headers) = within("the upgrade upstream", seen.recv()).await.unwrap();
    assert_eq!(headers.get("x-user").unwrap(), "jill");
    assert!(headers.get("x-tenant").is_none(), "{headers:?}");
}

/// A session expiring before every other one queued wakes the expiry task early.
#[tokio::test]
async fn an_earlier_expiry_queued_after_a_later_one_closes_on_time() {
    let (addr, _control) = jwt_proxy(Mode::Frames).await;
    let late = format!("Bearer {}", hs256(&claims("kim", 30, json!({}))));
    let mut later = connect_with(addr, "/", &[("authorization", &late)]).await;
    let exp = now() + 2;
    let soon = format!("Bearer {}", hs256(&claims("lou", 0, json!({ "exp": exp }))));
    let mut sooner = connect_with(addr, "/", &[("authorization", &soon)]).await;
    assert_eq!(
        next_close(&mut sooner).await,
        (1008, "token expired".to_owned())
    );
    let late_by = SystemTime::now()
        .duration_since(UNIX_EPOCH + Duration::from_secs(exp))
        .expect("not before exp");
    assert!(
        late_by < Duration::from_millis(100),
        "closed {late_by:?} after exp"
    );
    later.send(Message::text("still open")).await.unwrap();
    assert_eq!(next_message(&mut later).await, Message::text("still open"));
}

/// Whichever source the token came from, no bearer `Authorization` header goes upstream.
#[tokio::test]
async fn a_bearer_header_never_reaches_the_upstream_whatever_source_the_token_came_from() {
    let (up, mut seen) = recording_upstream(&[]).await;
    let auth = JwtAuth::builder(JwtKeys::hmac_secret(SECRET).unwrap())
        .audience("chat")
        .token_sources([TokenSource::Cookie("s".into()), TokenSource::Bearer])
        .build()
        .unwrap();
    let addr = proxy(WsProxyLayer::new(upstream(up)).identify(auth)).await;
    let cookie = format!("s={}", hs256(&claims("nat", 60, json!({}))));
    let _ws = connect_with(
        addr,
        "/",
        &[
            ("cookie", &cookie),
            ("authorization", "Bearer unverified"),
            ("authorization", "Basic dXNlcjpwdw=="),
        ],
    )
    .await;
    let (_, headers) = within("the upgrade upstream", seen.recv()).await.unwrap();
    let auth: Vec<_> = headers.get_all("authorization").iter().collect();
    assert_eq!(auth, ["Basic dXNlcjpwdw=="], "other schemes stay");
}

/// An identity hook that never answers: 504 at the connect timeout, nothing dialled.
#[tokio::test]
async fn an_identity_hook_that_hangs_is_504_at_the_connect_timeout() {
    let layer = WsProxyLayer::new(upstream(closed_port().await))
        .connect_timeout(Duration::from_millis(200))
        .identify(|_: &mut http::request::Parts| std::future::pending());
    let addr = proxy(layer).await;
    let (status, _, body) = refused(addr, "/", &[]).await;
    assert_eq!(
        (status, body.as_str()),
        (504, "the identity check did not answer within 200ms\n")
    );
}

/// An HTTP/2 client (RFC 8441) goes through the same identity phase and expiry.
#[tokio::test]
async fn an_http2_session_is_identified_and_closed_at_its_tokens_exp() {
    let (addr, control) = jwt_proxy(Mode::Frames).await;
    let (res, ws) = h2_connect(addr, "/", &[]).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        res.headers()["www-authenticate"],
        "Bearer realm=\"websocket\""
    );
    assert!(ws.is_none());
    let exp = now() + 2;
    let bearer = format!(
        "Bearer {}",
        hs256(&claims("h2user", 0, json!({ "exp": exp })))
    );
    let (res, ws) = h2_connect(addr, "/", &[("authorization", &bearer)]).await;
    assert_eq!(res.status(), StatusCode::OK);
    let mut ws = ws.unwrap();
    let page = control.list(&SessionFilter::default().subject("h2user"), None, 1);
    assert_eq!(page.sessions.len(), 1);
    assert_eq!(
        next_close(&mut ws).await,
        (1008, "token expired".to_owned())
    );
}
