//! Where sessions go: upstream URLs, pool members, balancing, health and resolution.

mod balance;
mod member;
mod pool;
mod resolve;
#[cfg(feature = "tls")]
pub(crate) mod tls;
mod url;

pub use balance::{Balance, HashKey, ParseBalanceError};
pub use member::{Member, MAX_WEIGHT};
pub use pool::{EndpointStatus, UpstreamPool};
pub(crate) use pool::{Lease, NoPick};
pub use resolve::{Resolve, Resolving};
pub use url::{ParseUpstreamError, ParseUpstreamErrorKind, Upstream};
