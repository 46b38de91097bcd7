//! Steps 5 and 6: a session after the 101, in either mode. [`spawn`] starts it; the legs'
//! shared vocabulary is [`leg`]; who closed and which code each leg gets is decided by
//! [`close_policy`] for both modes; [`keepalive`] pings and times out; [`hooks`] are what
//! users plug in ([`close_code`] what a hook may send). Frame mode lives in [`frames`],
//! tunnel mode in [`tunnel`].

pub(crate) mod close_code;
pub(crate) mod close_policy;
pub(crate) mod deflate;
pub(crate) mod frame;
pub(crate) mod frames;
pub(crate) mod hooks;
pub(crate) mod keepalive;
pub(crate) mod leg;
pub(crate) mod mode;
pub(crate) mod settings;
pub(crate) mod spawn;
pub(crate) mod tunnel;

pub(crate) use mode::Mode;
pub(crate) use settings::Settings;
pub(crate) use spawn::{spawn, Handoff, Negotiated, RequestInfo};
