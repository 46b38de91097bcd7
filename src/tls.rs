//! TLS on both sides (feature `tls`): [`UpstreamTls`] says how `wss://` upstreams are verified;
//! [`ServerTls`] serves HTTPS and `wss://` to clients from [`serve`](crate::serve()) (feature
//! `serve` too), with certificates reloaded in place; [`TlsInfo`] is what a client's TLS
//! session said, in the request's extensions for hooks.
//!
//! ```no_run
//! use axum_ws_proxy::tls::{ServerTls, UpstreamTls};
//! use axum_ws_proxy::WsProxyLayer;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Upstreams verified against a private CA only.
//! let ca = std::fs::read("ca.pem")?;
//! let layer = WsProxyLayer::new("wss://chat.internal:8443".parse()?)
//!     .upstream_tls(UpstreamTls::with_root_certificates_pem(&ca)?);
//! // Clients served over TLS, the files re-read when they change on disk.
//! let tls = ServerTls::from_pem_files("cert.pem", "key.pem")?;
//! # let _ = (layer, tls);
//! # Ok(()) }
//! ```

pub use crate::error::{TlsConfigError, TlsConfigErrorKind};
#[cfg(feature = "serve")]
pub use crate::serve::tls::ServerTls;
#[cfg(feature = "serve")]
pub use crate::transport::TlsInfo;
pub use crate::upstream::tls::UpstreamTls;
