//! The registry of a layer's live sessions: admission and the shutdown phase
//! ([`sessions`]), one entry per session ([`entry`]: its id, endpoint, hash key, last
//! activity, and a way to ask it to close), the paced drain that shutdown and an operator's
//! request run ([`drain`]), the public [`handle`] on them, rebalancing after scale-out
//! ([`rebalance`]), sessions closed when their identity expires ([`expiry`]), and the
//! revocation list ([`revoked`]).

pub(crate) mod drain;
pub(crate) mod entry;
pub(crate) mod expiry;
pub(crate) mod handle;
pub(crate) mod rebalance;
pub(crate) mod revoked;
pub(crate) mod sessions;

pub use drain::DrainProgress;
pub(crate) use entry::{CloseRequest, Entry};
pub use handle::ShutdownHandle;
pub(crate) use sessions::{NotAdmitted, Permit, Sessions};
