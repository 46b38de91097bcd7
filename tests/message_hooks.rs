//! Message hooks: see each message with its session, and forward, replace, drop or close.

mod common;

use std::time::Duration;

use axum::Router;
use axum_ws_proxy::{
    hooks::{Direction, Message as HookMessage, Verdict},
    WsProxyLayer,
};
use common::*;
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn a_client_hook_replaces_drops_and_forwards() {
    let (up, mut seen) = reporting_upstream().await;
    let layer = WsProxyLayer::new(upstream(up)).on_client_message(|ctx, msg| {
        assert_eq!(ctx.direction, Direction::ToUpstream);
        match msg.as_text() {
            Some(t) if t.contains("secret") => Verdict::Drop,
            Some(t) => Verdict::Replace(HookMessage::text(t.to_uppercase())),
            None => Verdict::Forward,
        }
    });
    let proxy = proxy(layer).await;
    let mut ws = connect(proxy, "/").await;
    for m in [
        Message::text("hello"),
        Message::text("my secret"),
        Message::binary(vec![1, 2]),
        Message::text("bye"),
    ] {
        ws.send(m).await.unwrap();
    }
    for expected in [
        Message::text("HELLO"),
        Message::binary(vec![1, 2]),
        Message::text("BYE"),
    ] {
        assert_eq!(seen.next().await, Some(expected.clone()));
        assert_eq!(next_message(&mut ws).await, expected);
    }
}

#[tokio::test]
async fn an_upstream_hook_sees_messages_to_the_client() {
    let layer =
        WsProxyLayer::new(upstream(echo_upstream().await)).on_upstream_message(|ctx, msg| {
            assert_eq!(ctx.direction, Direction::ToClient);
            Verdict::Replace(HookMessage::text(format!(
                "[{}] {}",
                ctx.session.id,
                msg.as_text().unwrap_or("")
            )))
        });
    let proxy = proxy(layer).await;
    let mut ws = connect(proxy, "/").await;
    ws.send(Message::text("ping")).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::text("[1] ping"));
}

#[tokio::test]
async fn a_close_verdict_ends_the_session_with_its_code_and_state_is_per_session() {
    let (up, mut seen) = reporting_upstream().await;
    let layer = WsProxyLayer::new(upstream(up)).on_client_message(|ctx, _| {
        let n = match ctx.state.get_mut::<u32>() {
            Some(n) => {
                *n += 1;
                *n
            }
            None => {
                ctx.state.insert(1u32);
                1
            }
        };
        if n > 3 {
            Verdict::close(
                axum_ws_proxy::hooks::CloseCode::POLICY_VIOLATION,
                "rate limit: 3 messages",
            )
        } else {
            Verdict::Forward
        }
    });
    let proxy = proxy(layer).await;
    let mut first = connect(proxy, "/").await;
    let mut second = connect(proxy, "/").await;
    for i in 0..3 {
        first.send(Message::text(format!("a{i}"))).await.unwrap();
        assert_eq!(
            next_message(&mut first).await,
            Message::text(format!("a{i}"))
        );
    }
    // The second session has its own count.
    second.send(Message::text("b0")).await.unwrap();
    assert_eq!(next_message(&mut second).await, Message::text("b0"));
    first.send(Message::text("a3")).await.unwrap();
    match next_message(&mut first).await {
        Message::Close(Some(f)) => {
            assert_eq!(
                (u16::from(f.code), f.reason.as_str()),
                (1008, "rate limit: 3 messages")
            )
        }
        other => panic!("expected close 1008, got {other:?}"),
    }
    // The upstream saw the three allowed messages, then the same close.
    let mut upstream_close = None;
    while let Some(m) = seen.next().await {
        if let Message::Close(f) = m {
            upstream_close = f.map(|f| u16::from(f.code));
            break;
        }
    }
    assert_eq!(upstream_close, Some(1008));
}

#[tokio::test]
async fn an_async_hook_is_awaited_in_order() {
    let layer = WsProxyLayer::new(upstream(echo_upstream().await)).on_client_message_async(
        |session, msg| async move {
            // Earlier messages wait longer: order must still hold.
            let n: u64 = msg.as_text().and_then(|t| t.parse().ok()).unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(30u64.saturating_sub(n * 5))).await;
            Verdict::Replace(HookMessage::text(format!("{}:{n}", session.id)))
        },
    );
    let proxy = proxy(layer).await;
    let mut ws = connect(proxy, "/").await;
    for n in 0..5 {
        ws.send(Message::text(n.to_string())).await.unwrap();
    }
    for n in 0..5 {
        assert_eq!(next_message(&mut ws).await, Message::text(format!("1:{n}")));
    }
}

#[derive(Clone, Debug, PartialEq)]
struct UserId(u64);

#[tokio::test]
async fn hooks_see_the_request_headers_and_extensions_of_outer_layers() {
    let layer = WsProxyLayer::new(upstream(echo_upstream().await)).on_client_message(|ctx, msg| {
        let user = ctx
            .session
            .request_extensions
            .get::<UserId>()
            .map_or(0, |u| u.0);
        let tenant = ctx
            .session
            .request_headers
            .get("x-tenant")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-");
        Verdict::Replace(HookMessage::text(format!(
            "{tenant}/{user}: {}",
            msg.as_text().unwrap_or("")
        )))
    });
    // An auth-like middleware outside the proxy layer puts the identity in the extensions.
    let app = Router::new()
        .fallback(|| async { "inner" })
        .layer(layer)
        .layer(axum::middleware::from_fn(
            |mut req: axum::extract::Request, next: axum::middleware::Next| async move {
                req.extensions_mut().insert(UserId(42));
                next.run(req).await
            },
        ));
    let proxy = serve(app).await;
    let mut ws = connect_with(proxy, "/", &[("x-tenant", "acme")]).await;
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::text("acme/42: hi"));
}

#[tokio::test]
async fn message_hooks_do_not_apply_to_tunnels() {
    let layer = WsProxyLayer::new(upstream(echo_upstream().await))
        .tunnel()
        .on_client_message(|_, _| Verdict::Drop);
    let proxy = proxy(layer).await;
    let mut ws = connect(proxy, "/").await;
    ws.send(Message::text("untouched")).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::text("untouched"));
}
