//! Where sessions go: upstream URLs, pool members, balancing, failover, health and
//! resolution.
//!
//! ```
//! use std::time::Duration;
//! use axum_ws_proxy::upstream::{Balance, Member, UpstreamPool};
//! use axum_ws_proxy::WsProxyLayer;
//!
//! let pool = UpstreamPool::from_urls(["ws://10.0.0.11:3000", "ws://10.0.0.12:3000?weight=2"])?
//!     .balance(Balance::RoundRobin)
//!     .max_fails(3)
//!     .fail_timeout(Duration::from_secs(30));
//! let layer = WsProxyLayer::new(pool.clone());
//! // Members change at run time; live sessions on a removed one carry on.
//! pool.insert("ws://10.0.0.13:3000".parse::<Member>()?);
//! pool.remove(&"ws://10.0.0.11:3000".parse()?);
//! # let _ = layer;
//! # Ok::<(), axum_ws_proxy::upstream::ParseUpstreamError>(())
//! ```
//!
//! `"ws://host:port".parse()?` is a pool of one. Balancing, failover and health as nginx
//! names them are in the repository's `docs/upstreams.md`.

pub(crate) mod balance;
mod member;
mod pool;
mod rebalance;
mod resolve;
#[cfg(feature = "tls")]
pub(crate) mod tls;
mod url;

pub use balance::{Balance, HashKey, ParseBalanceError};
pub use member::{Member, MAX_WEIGHT};
pub(crate) use pool::{Endpoint, Lease, NoPick, RebalanceView, WeakPool};
pub use pool::{EndpointStatus, UpstreamPool};
pub use rebalance::{Rebalance, RebalanceStatus};
pub use resolve::{Resolve, Resolving};
pub use url::{ParseUpstreamError, ParseUpstreamErrorKind, Upstream};
