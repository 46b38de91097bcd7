//! Replacing a layer's configuration while it serves: new sessions follow the new settings,
//! live sessions keep the ones they started with.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use tower::Layer;

use crate::layer::WsProxyLayer;
use crate::service::{Live, WsProxy};

/// A [`WsProxyLayer`] whose configuration a [`ReloadHandle`] can replace while it serves;
/// made by [`WsProxyLayer::reloadable`].
///
/// ```
/// use axum::{routing::get, Router};
/// use axum_ws_proxy::WsProxyLayer;
///
/// let (layer, reload) = WsProxyLayer::new("ws://127.0.0.1:3000".parse()?).reloadable();
/// let app: Router = Router::new().route("/healthz", get(|| async { "ok" })).layer(layer);
///
/// // Later (on SIGHUP, say): new upgrades go to the new upstream, with the new limits;
/// // sessions already open stay where they are, untouched.
/// let generation = reload.reload(
///     WsProxyLayer::new("ws://127.0.0.1:4000".parse()?).max_message_size(64 << 10),
/// );
/// assert_eq!(generation, 2);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct ReloadableLayer {
    live: Arc<Live>,
}

/// Replaces the configuration of a [`ReloadableLayer`] (and of every service made from it).
///
/// What a reload changes: everything a [`WsProxyLayer`] is built with (pool, routes, hooks,
/// the identity hook and its keys, limits, timeouts, origins, mode, TLS to upstreams), for
/// upgrades that arrive after it. Revocations and the expiry of live sessions are the
/// registry's and stay as they are. A
/// session keeps the settings it started with until it ends. The session registry is the
/// first layer's, kept across reloads: [`WsProxyLayer::max_sessions`] counts old and new
/// sessions together, and the first layer's [`ShutdownHandle`](crate::ShutdownHandle) drains
/// them all.
///
/// ```
/// use axum::Router;
/// use axum_ws_proxy::WsProxyLayer;
///
/// let (layer, reload) = WsProxyLayer::new("ws://10.0.0.1:3000".parse()?).reloadable();
/// let app: Router = Router::new().layer(layer);
/// // Later (SIGHUP, a watched file...): new upgrades go to the new upstream; live sessions stay.
/// let generation = reload.reload(WsProxyLayer::new("ws://10.0.0.2:3000".parse()?));
/// assert_eq!(generation, 2);
/// # let _ = app;
/// # Ok::<(), axum_ws_proxy::upstream::ParseUpstreamError>(())
/// ```
#[derive(Clone, Debug)]
pub struct ReloadHandle {
    live: Arc<Live>,
}

impl WsProxyLayer {
    /// This layer, and a handle that can replace its configuration while it serves.
    pub fn reloadable(self) -> (ReloadableLayer, ReloadHandle) {
        let live = Arc::new(Live {
            current: RwLock::new(self.config),
            generation: AtomicU64::new(1),
        });
        (
            ReloadableLayer { live: live.clone() },
            ReloadHandle { live },
        )
    }
}

impl ReloadHandle {
    /// New upgrades use `layer`'s configuration from now on; returns the new generation (the
    /// first configuration is generation 1). The swap is atomic: each upgrade sees either the
    /// old configuration or the new one, never a mix.
    pub fn reload(&self, layer: WsProxyLayer) -> u64 {
        let mut slot = self.live.current.write().unwrap_or_else(|e| e.into_inner());
        let mut config = Arc::unwrap_or_clone(layer.config);
        // The registry (its sessions and revocations) is kept; its cap is the new layer's.
        slot.sessions.revoked.set_cap(config.sessions.revoked.cap());
        config.sessions = slot.sessions.clone();
        *slot = Arc::new(config);
        self.live.generation.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// How many configurations there have been: 1 before the first reload.
    pub fn generation(&self) -> u64 {
        self.live.generation.load(Ordering::Acquire)
    }

    /// The configuration new upgrades use now, as a layer (a copy: changing it changes
    /// nothing until it is passed to [`reload`](Self::reload)).
    pub fn current(&self) -> WsProxyLayer {
        WsProxyLayer {
            config: self.live.get(),
        }
    }
}

/// For [`Serve::direct_upgrades`](crate::serve::Serve::direct_upgrades): each upgrade gets
/// the configuration of the moment, as through the layer.
#[cfg(feature = "serve")]
impl From<&ReloadableLayer> for crate::serve::DirectUpgrades {
    fn from(layer: &ReloadableLayer) -> Self {
        crate::service::Source::Live(layer.live.clone()).into()
    }
}

impl<S> Layer<S> for ReloadableLayer {
    type Service = WsProxy<S>;

    fn layer(&self, inner: S) -> Self::Service {
        WsProxy::reloadable(inner, self.live.clone())
    }
}
