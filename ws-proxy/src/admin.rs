//! The admin listener (`--admin-listen`): what an operator may ask of a running replica,
//! behind a bearer token read from `--admin-token-file`. Never on the public listener, nor on
//! the metrics listener (which a cluster's Prometheus reaches).
//!
//! - `POST /drain`: start a paced drain without exiting (202, with its progress); readiness
//!   (`/healthz`) fails from then on. A drain already running goes on unchanged.
//! - `GET /drain`: its progress (`null` before one).
//! - `/sessions`, `/sessions/close`, `/revocations`: the session API (`session_api.rs`).
//!
//! Without the right `Authorization: Bearer` header: **401** with `WWW-Authenticate: Bearer`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use axum_ws_proxy::SessionControl;
use serde_json::json;

use crate::session_api;
use crate::status::Status;

/// Shorter tokens are refused at start: they can be guessed.
const MIN_TOKEN_LEN: usize = 16;

/// The admin API's bearer token.
#[derive(Clone)]
pub(crate) struct Token(Arc<[u8]>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(REDACTED)")
    }
}

impl Token {
    /// The file's contents, surrounding whitespace (a final newline) removed.
    pub(crate) fn read(path: &Path) -> Result<Self, String> {
        let shown = path.display();
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("--admin-token-file: cannot read {shown:?}: {e}"))?;
        let token = text.trim();
        if token.len() < MIN_TOKEN_LEN {
            return Err(format!(
                "--admin-token-file: {shown:?}: the token must be {MIN_TOKEN_LEN} characters or more"
            ));
        }
        if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "--admin-token-file: {shown:?}: the token must be one word"
            ));
        }
        Ok(Self(token.as_bytes().into()))
    }

    /// Whether `headers` carry `Authorization: Bearer <token>`; compared in constant time.
    fn admits(&self, headers: &HeaderMap) -> bool {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return false;
        };
        let value = value.as_bytes();
        let Some((scheme, given)) = value.split_at_checked(7) else {
            return false;
        };
        if !scheme.eq_ignore_ascii_case(b"bearer ") || given.len() != self.0.len() {
            return false;
        }
        given
            .iter()
            .zip(self.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

#[derive(Clone)]
struct Admin {
    token: Token,
    status: Status,
    control: SessionControl,
}

/// Bodies of the session API are a few selectors.
const MAX_BODY: usize = 16 << 10;

/// Binds `addr` and serves the admin API on it in a task of its own.
pub(crate) async fn serve(
    addr: SocketAddr,
    token: Token,
    status: Status,
    control: SessionControl,
) -> Result<(), String> {
    let (listener, local) = crate::listen_on(addr, " for the admin API", "admin").await?;
    let app = Router::new()
        .route("/drain", get(progress).post(drain))
        .route("/sessions", get(sessions))
        .route("/sessions/close", post(close))
        .route("/revocations", get(revocations).post(revoke).delete(lift))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(Admin {
            token,
            status,
            control,
        });
    if !local.ip().is_loopback() {
        tracing::warn!(admin = %local, "the admin API listens beyond loopback: keep its port off public networks");
    }
    // The proxy's own server: a deadline and a size bound for each request head, so that
    // nobody holds connections open by sending half of one.
    let server = axum_ws_proxy::serve(listener, app)
        .header_timeout(Duration::from_secs(5))
        .max_head_size(8 << 10);
    tokio::spawn(async move {
        if let Err(e) = server.await {
            tracing::error!("admin server failed: {e}");
        }
    });
    tracing::info!(admin = %local, "admin API at /drain, /sessions, /revocations");
    Ok(())
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer realm=\"ws-proxy admin\"")],
        "missing or wrong bearer token\n",
    )
        .into_response()
}

async fn drain(State(admin): State<Admin>, headers: HeaderMap) -> Response {
    if !admin.token.admits(&headers) {
        return unauthorized();
    }
    let started = admin.status.start_drain();
    if started {
        tracing::warn!("admin: drain requested; new sessions are refused from now on");
    }
    let body = json!({ "started": started, "drain": admin.status.drain() });
    (StatusCode::ACCEPTED, Json(body)).into_response()
}

async fn progress(State(admin): State<Admin>, headers: HeaderMap) -> Response {
    if !admin.token.admits(&headers) {
        return unauthorized();
    }
    Json(json!({ "drain": admin.status.drain() })).into_response()
}

async fn sessions(State(admin): State<Admin>, headers: HeaderMap, uri: Uri) -> Response {
    if !admin.token.admits(&headers) {
        return unauthorized();
    }
    session_api::list(&admin.control, uri.query())
}

async fn revocations(State(admin): State<Admin>, headers: HeaderMap, uri: Uri) -> Response {
    if !admin.token.admits(&headers) {
        return unauthorized();
    }
    session_api::revocations(&admin.control, uri.query())
}

async fn close(State(admin): State<Admin>, headers: HeaderMap, body: Bytes) -> Response {
    with_json(&admin, &headers, &body, session_api::close)
}

async fn revoke(State(admin): State<Admin>, headers: HeaderMap, body: Bytes) -> Response {
    with_json(&admin, &headers, &body, session_api::revoke)
}

async fn lift(State(admin): State<Admin>, headers: HeaderMap, body: Bytes) -> Response {
    with_json(&admin, &headers, &body, session_api::lift)
}

/// The token first, whatever the body; then the body as the JSON `call` takes.
fn with_json<T: serde::de::DeserializeOwned>(
    admin: &Admin,
    headers: &HeaderMap,
    body: &[u8],
    call: fn(&SessionControl, T) -> Response,
) -> Response {
    if !admin.token.admits(headers) {
        return unauthorized();
    }
    match serde_json::from_slice::<T>(body) {
        Ok(body) => call(&admin.control, body),
        Err(e) => bad_json(e),
    }
}

fn bad_json(e: serde_json::Error) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({ "error": format!("the body is not the JSON expected: {e}") })),
    )
        .into_response()
}
