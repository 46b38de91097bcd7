//! Steps 1 to 4 of a connection, from the client's upgrade request to the upstream's answer:
//! [`detect`] the upgrade and [`request`] made strict, the [`origin`] check, [`forwarded`]
//! client addresses, the [`route`] hook, [`headers`] rewritten, [`dial`] the upstream and
//! exchange the upgrade with it ([`client`]), [`answer`] the client. [`upgrade`] runs them in order; every failure is a `ProxyError`
//! answered in one place.

pub(crate) mod answer;
pub(crate) mod client;
pub(crate) mod detect;
pub(crate) mod dial;
pub(crate) mod extensions;
pub(crate) mod forwarded;
pub(crate) mod headers;
pub(crate) mod identify;
#[cfg(feature = "jwt")]
pub(crate) mod jwt;
pub(crate) mod origin;
pub(crate) mod pacing;
pub(crate) mod redact;
pub(crate) mod request;
pub(crate) mod route;
pub(crate) mod settings;
pub(crate) mod upgrade;

pub(crate) use settings::Settings;
