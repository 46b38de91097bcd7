//! What is open on one connection: requests being answered and, on HTTP/2, WebSocket streams,
//! which outlive their request. An HTTP/2 connection with nothing open for the keep-alive time
//! is closed, as an idle HTTP/1.1 keep-alive connection is.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
#[cfg(feature = "http2")]
use std::time::Duration;

use tokio::sync::Notify;

use crate::transport::HeldBySession;

/// One connection's open streams.
#[derive(Debug, Default)]
pub(super) struct Streams {
    open: AtomicUsize,
    /// Signalled when the last open stream ends.
    quiet: Notify,
    /// A stream whose end the server cannot see (an app's own WebSocket over HTTP/2): the
    /// connection is never treated as idle.
    unseen: AtomicBool,
    /// The proxy's WebSocket sessions on this connection (HTTP/2), and woken when the last
    /// ends.
    sessions: AtomicUsize,
    sessions_ended: Notify,
    /// Set once the connection's first request has arrived.
    first_request: AtomicBool,
}

/// One of the proxy's sessions on an HTTP/2 connection, held by the session.
#[derive(Debug)]
struct SessionStream {
    _open: Open,
    streams: Arc<Streams>,
}

impl Drop for SessionStream {
    fn drop(&mut self) {
        if self.streams.sessions.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.streams.sessions_ended.notify_waiters();
        }
    }
}

/// Counts as an open stream until dropped.
#[derive(Debug)]
pub(super) struct Open(Arc<Streams>);

impl Drop for Open {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.quiet.notify_one();
        }
    }
}

impl Streams {
    pub(super) fn first_request(&self) {
        self.first_request.store(true, Ordering::Relaxed);
    }

    #[cfg_attr(not(feature = "http2"), allow(dead_code))]
    pub(super) fn had_a_request(&self) -> bool {
        self.first_request.load(Ordering::Relaxed)
    }

    pub(super) fn open(self: &Arc<Self>) -> Open {
        self.open.fetch_add(1, Ordering::AcqRel);
        Open(self.clone())
    }

    /// Nothing is being answered now.
    pub(super) fn none_open(&self) -> bool {
        self.open.load(Ordering::Acquire) == 0
    }

    /// For an HTTP/2 extended CONNECT: a slot the proxy's session takes an [`Open`] from and
    /// keeps until it ends, so the WebSocket stream counts as open.
    pub(super) fn slot_for_session(self: &Arc<Self>) -> HeldBySession {
        self.sessions.fetch_add(1, Ordering::AcqRel);
        HeldBySession::new(Box::new(SessionStream {
            _open: self.open(),
            streams: self.clone(),
        }))
    }

    /// Completes once none of the proxy's sessions is open on this connection. Until then the
    /// connection outlives the server's grace: the sessions are the layer's to end (its
    /// paced drain), and cutting the connection would end them all at once with 1006.
    pub(super) async fn sessions_ended(&self) {
        loop {
            let ended = self.sessions_ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if self.sessions.load(Ordering::Acquire) == 0 {
                return;
            }
            ended.await;
        }
    }

    /// A CONNECT was answered 2xx but nothing kept its slot: some other handler has the
    /// stream, and its end cannot be seen here.
    pub(super) fn stream_not_seen(&self, slot: &HeldBySession) {
        if slot.take().is_some() {
            self.unseen.store(true, Ordering::Release);
        }
    }

    /// Completes once nothing has been open for `keepalive`; never if a stream is unseen.
    #[cfg(feature = "http2")]
    pub(super) async fn idle_for(&self, keepalive: Duration) {
        loop {
            if !self.none_open() || self.unseen.load(Ordering::Acquire) {
                self.quiet.notified().await;
                continue;
            }
            tokio::select! {
                () = tokio::time::sleep(keepalive) => {
                    if self.none_open() && !self.unseen.load(Ordering::Acquire) {
                        return;
                    }
                }
                // A stream came and went meanwhile: the quiet time starts again.
                () = self.quiet.notified() => {}
            }
        }
    }
}

/// A response's body that keeps its request counted as open until it has been sent (or
/// dropped), with the body's own size: hyper writes `content-length` where it is known.
pub(super) struct OpenBody {
    body: axum::body::Body,
    _open: Open,
}

impl OpenBody {
    pub(super) fn new(body: axum::body::Body, open: Open) -> Self {
        Self { body, _open: open }
    }
}

impl http_body::Body for OpenBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
