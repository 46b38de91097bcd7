//! What [`serve`](super::serve) accepts: an app (a `Router`, or any service from a request to a
//! response), or what `axum::serve` takes for one, a make-service such as
//! `app.into_make_service()` or `app.into_make_service_with_connect_info::<SocketAddr>()`.

use std::convert::Infallible;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::PoisonError;

use axum::body::Body;
use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use tower::util::BoxCloneService;
use tower::{Service, ServiceExt};

use axum::BoxError;

/// One app, boxed once: a box per request is noise next to a connection's cost.
pub(super) type BoxApp = BoxCloneService<Request<Incoming>, Response<Body>, Infallible>;

/// What a server holds: the app itself, or a make-service asked for one per connection
/// (with the client address: the PROXY protocol's client where that is on).
#[derive(Clone)]
pub(super) enum App {
    Ready(BoxApp),
    PerConnection(BoxCloneService<SocketAddr, BoxApp, Infallible>),
}

/// The app as every connection of a server shares it, cloned only for a connection hyper
/// serves. A mutex: an app need not be `Sync`; it is locked once per such connection.
pub(super) type Shared = std::sync::Arc<std::sync::Mutex<App>>;

impl App {
    /// The app for one connection (a clone, or the make-service's answer for `remote`).
    pub(super) fn for_connection(
        shared: &Shared,
        remote: SocketAddr,
    ) -> impl std::future::Future<Output = BoxApp> + Send + 'static {
        let app = shared
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        async move {
            match app {
                App::Ready(app) => app,
                App::PerConnection(make) => match make.oneshot(remote).await {
                    Ok(app) => app,
                    Err(never) => match never {},
                },
            }
        }
    }
}

/// What [`serve`](super::serve) serves: implemented for
///
/// - an app: any `Clone + Send + 'static` service from `Request<hyper::body::Incoming>` to
///   `Response<B>` with `Error = Infallible` (a `Router`, a `MethodRouter`, a tower stack
///   around one);
/// - what `axum::serve` takes for one: a make-service called with each connection's client
///   address (for each connection the app serves: with
///   [`Serve::direct_upgrades`](super::Serve::direct_upgrades), an upgrade answered by the
///   server's own entry needs no app), `Service<SocketAddr, Response = app>`, such as
///   `app.into_make_service()` and
///   `app.into_make_service_with_connect_info::<SocketAddr>()` (so
///   `axum::serve(listener, make)` becomes `axum_ws_proxy::serve(listener, make)`).
///
/// `M` only tells the two apart; it is inferred. Every request carries
/// `ConnectInfo<SocketAddr>` either way.
///
/// ```
/// use std::net::SocketAddr;
/// use axum::{extract::ConnectInfo, routing::get, Router};
///
/// # async fn run() -> std::io::Result<()> {
/// let app = Router::new().route(
///     "/",
///     get(|ConnectInfo(client): ConnectInfo<SocketAddr>| async move { client.to_string() }),
/// );
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// axum_ws_proxy::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
///     .await
/// # }
/// ```
///
/// Anything else is refused where `serve` is called, naming this trait:
///
/// ```compile_fail,E0277
/// # async fn run() -> std::io::Result<()> {
/// let not_an_app = tower::service_fn(|_: http::Request<()>| async {
///     Ok::<_, std::convert::Infallible>("text")
/// });
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// axum_ws_proxy::serve(listener, not_an_app).await
/// # }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not something `axum_ws_proxy::serve` can serve",
    label = "not an app (`Service<Request<Incoming>, Response = Response<_>, Error = Infallible> + Clone + Send`) nor a make-service of one (`Service<SocketAddr>`)"
)]
pub trait IntoApp<M>: Sized {
    #[doc(hidden)]
    #[allow(private_interfaces)]
    fn into_app(self) -> App;
}

#[doc(hidden)]
/// Inferred marker for [`IntoApp`]: the app itself, answering with bodies of type `B`.
#[derive(Debug)]
pub struct AppMarker<B>(PhantomData<fn() -> B>);

#[doc(hidden)]
/// Inferred marker for [`IntoApp`]: a make-service of `S`.
#[derive(Debug)]
pub struct MakeAppMarker<S, B>(PhantomData<fn() -> (S, B)>);

fn boxed<S, B>(app: S) -> BoxApp
where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    BoxCloneService::new(app.map_response(|res| res.map(Body::new)))
}

impl<S, B> IntoApp<AppMarker<B>> for S
where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    #[allow(private_interfaces)]
    fn into_app(self) -> App {
        App::Ready(boxed(self))
    }
}

impl<M, S, B> IntoApp<MakeAppMarker<S, B>> for M
where
    M: Service<SocketAddr, Response = S, Error = Infallible> + Clone + Send + 'static,
    M::Future: Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    #[allow(private_interfaces)]
    fn into_app(self) -> App {
        App::PerConnection(BoxCloneService::new(self.map_response(boxed)))
    }
}
