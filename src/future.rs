use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use axum::body::Body;
use axum::BoxError;
use bytes::Bytes;
use http::Response;
use pin_project_lite::pin_project;

pin_project! {
    /// Response future of [`WsProxy`](crate::WsProxy): the inner service's response, or the
    /// proxy's answer to an upgrade (a `101`, a relayed refusal, or an error status).
    ///
    /// ```
    /// use axum::body::Body;
    /// use axum_ws_proxy::WsProxyLayer;
    /// use http::{Request, Response};
    /// use tower::{Layer, ServiceExt};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let inner = tower::service_fn(|_: Request<Body>| async {
    ///     Ok::<_, std::convert::Infallible>(Response::new(Body::from("plain HTTP")))
    /// });
    /// let proxy = WsProxyLayer::new("ws://127.0.0.1:3000".parse()?).layer(inner);
    /// // Not an upgrade: the future is the inner service's.
    /// let res = proxy.oneshot(Request::new(Body::empty())).await?;
    /// assert_eq!(res.status(), 200);
    /// # Ok(()) }
    /// ```
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Inner { #[pin] future: F },
        Proxy { future: Pin<Box<dyn Future<Output = Response<Body>> + Send>> },
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn inner(future: F) -> Self {
        Self {
            kind: Kind::Inner { future },
        }
    }

    pub(crate) fn proxy(future: Pin<Box<dyn Future<Output = Response<Body>> + Send>>) -> Self {
        Self {
            kind: Kind::Proxy { future },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Output = Result<Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Inner { future } => {
                let res = ready!(future.poll(cx))?;
                Poll::Ready(Ok(res.map(Body::new)))
            }
            KindProj::Proxy { future } => future.as_mut().poll(cx).map(Ok),
        }
    }
}
