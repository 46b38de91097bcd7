//! The session API of the admin listener: list live sessions by whom they belong to, close
//! them, and revoke subjects and token ids. The routes and their bearer token are
//! `admin.rs`'s; this file turns requests into `SessionControl` calls and answers in JSON.
//!
//! - `GET /sessions?subject=&tenant=&tag=&id=&after=&limit=`: a page (at most 1000, default
//!   100) in id order, and `next`, the `after` of the next page.
//! - `POST /sessions/close` `{"subject": .., "tenant": .., "tag": .., "id": .., "code": 1008,
//!   "reason": "revoked"}`: at least one selector, or `"all": true`.
//! - `GET /revocations?limit=&after=`; `POST /revocations` `{"subject": ..}` or
//!   `{"token_id": ..}` (at most 256 bytes), with `"for": "1h"` or `"until": <unix seconds>`
//!   (default: 24 h; at most 10 years); `DELETE /revocations` with the same selector lifts one.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use axum_ws_proxy::hooks::CloseCode;
use axum_ws_proxy::{Revoked, SessionControl, SessionFilter, SessionView, MAX_PAGE};
use serde::Deserialize;
use serde_json::{json, Value};

/// A page unless `limit` says otherwise.
const DEFAULT_PAGE: usize = 100;
/// How long a revocation lasts unless the request says: longer than the tokens it outlives.
const DEFAULT_REVOCATION: Duration = Duration::from_secs(24 * 3600);
/// The longest a revocation may last (and what keeps its time within a clock's range).
const MAX_REVOCATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// The longest subject or token id revoked: the list's memory is its cap times this.
const MAX_ID: usize = 256;

fn bad_request(why: impl Into<String>) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({ "error": why.into() })),
    )
        .into_response()
}

/// `name=value` pairs of a query, percent-decoded.
fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: Option<&u8>| b.and_then(|b| (*b as char).to_digit(16));
        match bytes[i] {
            b'%' if hex(bytes.get(i + 1)).is_some() && hex(bytes.get(i + 2)).is_some() => {
                let (h, l) = (
                    hex(bytes.get(i + 1)).unwrap_or(0),
                    hex(bytes.get(i + 2)).unwrap_or(0),
                );
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn unix(at: SystemTime) -> f64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| (d.as_millis() as f64) / 1000.0)
}

fn view(s: &SessionView) -> Value {
    let identity = s.identity.as_deref();
    json!({
        "id": s.id,
        "subject": identity.map(|i| i.subject()),
        "tenant": identity.and_then(|i| i.tenant_name()),
        "tags": identity.map(|i| i.tags().collect::<Vec<_>>()).unwrap_or_default(),
        "token_id": identity.and_then(|i| i.jti()),
        "expires_at": s.expires_at.map(unix),
        "upstream": s.upstream.to_string(),
        "age_seconds": s.age.as_secs_f64(),
        "idle_seconds": s.idle.as_secs_f64(),
        "closing": s.closing,
    })
}

/// `GET /sessions`.
pub(crate) fn list(control: &SessionControl, query: Option<&str>) -> Response {
    let mut filter = SessionFilter::default();
    let mut after = None;
    let mut limit = DEFAULT_PAGE;
    for (key, value) in query_pairs(query) {
        let number = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("{key}: {v:?} is not a number"))
        };
        match key.as_str() {
            "subject" => filter = filter.subject(value),
            "tenant" => filter = filter.tenant(value),
            "tag" => filter = filter.tag(value),
            "id" => match number(&value) {
                Ok(id) => filter = filter.id(id),
                Err(why) => return bad_request(why),
            },
            "after" => match number(&value) {
                Ok(id) => after = Some(id),
                Err(why) => return bad_request(why),
            },
            "limit" => match number(&value) {
                Ok(n) if n >= 1 => limit = usize::try_from(n).unwrap_or(MAX_PAGE).min(MAX_PAGE),
                Ok(_) => return bad_request("limit: at least 1"),
                Err(why) => return bad_request(why),
            },
            other => return bad_request(format!("unknown parameter {other:?}")),
        }
    }
    let page = control.list(&filter, after, limit);
    let sessions: Vec<Value> = page.sessions.iter().map(view).collect();
    Json(json!({ "sessions": sessions, "next": page.next, "limit": limit })).into_response()
}

/// What `POST /sessions/close` selects and sends.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CloseBody {
    id: Option<u64>,
    subject: Option<String>,
    tenant: Option<String>,
    tag: Option<String>,
    #[serde(default)]
    all: bool,
    code: Option<u16>,
    reason: Option<String>,
}

/// `POST /sessions/close`.
pub(crate) fn close(control: &SessionControl, body: CloseBody) -> Response {
    let mut filter = SessionFilter::default();
    if let Some(id) = body.id {
        filter = filter.id(id);
    }
    if let Some(s) = body.subject {
        filter = filter.subject(s);
    }
    if let Some(t) = body.tenant {
        filter = filter.tenant(t);
    }
    if let Some(t) = body.tag {
        filter = filter.tag(t);
    }
    if filter.is_empty() && !body.all {
        return bad_request("name the sessions (id, subject, tenant, tag), or send \"all\": true");
    }
    let code = match CloseCode::new(body.code.unwrap_or(1008)) {
        Ok(code) => code,
        Err(e) => return bad_request(format!("code: {e}")),
    };
    let reason = body.reason.as_deref().unwrap_or("revoked");
    match control.close(&filter, code, reason) {
        Ok(closed) => {
            tracing::warn!(closed, code = code.get(), reason, "admin: sessions closed");
            Json(json!({ "closed": closed })).into_response()
        }
        Err(e) => bad_request(format!("reason: {e}")),
    }
}

/// What a revocation names, and for how long.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RevokeBody {
    subject: Option<String>,
    token_id: Option<String>,
    #[serde(rename = "for")]
    lasting: Option<String>,
    until: Option<u64>,
}

impl RevokeBody {
    fn what(&self) -> Result<Revoked, &'static str> {
        let id = |v: &String| match v.len() {
            0 => Err("an empty subject or token_id names nothing"),
            1..=MAX_ID => Ok(Arc::<str>::from(v.as_str())),
            _ => Err("a subject or token_id is at most 256 bytes"),
        };
        match (&self.subject, &self.token_id) {
            (Some(s), None) => Ok(Revoked::Subject(id(s)?)),
            (None, Some(t)) => Ok(Revoked::TokenId(id(t)?)),
            _ => Err("name one subject or one token_id"),
        }
    }
}

/// `POST /revocations`.
pub(crate) fn revoke(control: &SessionControl, body: RevokeBody) -> Response {
    let what = match body.what() {
        Ok(w) => w,
        Err(why) => return bad_request(why),
    };
    let until = match (&body.lasting, body.until) {
        (Some(_), Some(_)) => return bad_request("give \"for\" or \"until\", not both"),
        (Some(d), None) => match humantime::parse_duration(d) {
            Ok(d) if !d.is_zero() && d <= MAX_REVOCATION => SystemTime::now() + d,
            _ => {
                return bad_request(format!(
                    "for: {d:?} is not a duration like 1h or 30m, of at most 10 years"
                ))
            }
        },
        (None, Some(secs)) => {
            let now = SystemTime::now();
            match UNIX_EPOCH.checked_add(Duration::from_secs(secs)) {
                Some(at) if at > now && at <= now + MAX_REVOCATION => at,
                Some(at) if at <= now => return bad_request("until: that time has passed"),
                _ => return bad_request("until: at most 10 years from now"),
            }
        }
        (None, None) => SystemTime::now() + DEFAULT_REVOCATION,
    };
    match control.revoke(what.clone(), until) {
        Ok(closed) => {
            tracing::warn!(revoked = ?what, closed, "admin: revoked");
            (
                StatusCode::CREATED,
                Json(json!({ "revoked": shown(&what), "until": unix(until), "closed": closed })),
            )
                .into_response()
        }
        Err(full) => (
            StatusCode::INSUFFICIENT_STORAGE,
            Json(json!({ "error": full.to_string() })),
        )
            .into_response(),
    }
}

/// `DELETE /revocations`.
pub(crate) fn lift(control: &SessionControl, body: RevokeBody) -> Response {
    match body.what() {
        Ok(what) => Json(json!({ "lifted": control.lift(&what) })).into_response(),
        Err(why) => bad_request(why),
    }
}

/// `GET /revocations?limit=&after=`: `after` is the `next` of the page before
/// (`subject:NAME` or `token_id:ID`).
pub(crate) fn revocations(control: &SessionControl, query: Option<&str>) -> Response {
    let mut limit = DEFAULT_PAGE;
    let mut after = None;
    for (key, value) in query_pairs(query) {
        match key.as_str() {
            "limit" => match value.parse::<usize>() {
                Ok(n) if n >= 1 => limit = n.min(MAX_PAGE),
                _ => return bad_request(format!("limit: {value:?} is not a number from 1")),
            },
            "after" => match value.split_once(':') {
                Some(("subject", s)) => after = Some(Revoked::Subject(s.into())),
                Some(("token_id", t)) => after = Some(Revoked::TokenId(t.into())),
                _ => return bad_request("after: subject:NAME or token_id:ID"),
            },
            other => return bad_request(format!("unknown parameter {other:?}")),
        }
    }
    let page = control.revocations(after.as_ref(), limit);
    let list: Vec<Value> = page
        .revocations
        .iter()
        .map(|(what, until)| json!({ "revoked": shown(what), "until": unix(*until) }))
        .collect();
    let next = (page.revocations.len() == limit)
        .then(|| page.revocations.last())
        .flatten()
        .map(|(what, _)| match what {
            Revoked::Subject(s) => format!("subject:{s}"),
            Revoked::TokenId(t) => format!("token_id:{t}"),
        });
    Json(json!({ "revocations": list, "total": page.total, "next": next })).into_response()
}

fn shown(what: &Revoked) -> Value {
    match what {
        Revoked::Subject(s) => json!({ "subject": &**s }),
        Revoked::TokenId(t) => json!({ "token_id": &**t }),
    }
}
