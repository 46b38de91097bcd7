//! The built-in JWT check (feature `jwt`): a [`JwtAuth`] given to
//! [`WsProxyLayer::identify`](crate::WsProxyLayer::identify) verifies a token on every upgrade
//! and gives the session its [`Identity`](crate::Identity).
//!
//! ```
//! use axum_ws_proxy::jwt::{JwtAuth, JwtKeys, TokenSource};
//! use axum_ws_proxy::WsProxyLayer;
//!
//! let jwks = br#"{"keys":[{"kty":"EC","crv":"P-256","kid":"k1","alg":"ES256","x":"WKn-ZIGevcwGIyyrzFoZNBdaq9_TsqzGl96oc0CWuis","y":"y77t-RvAHRKTsSGdIYUfweuOvwrvDD-Q3Hv5J0fSKbE"}]}"#;
//! let auth = JwtAuth::builder(JwtKeys::from_jwks(jwks)?)
//!     .audience("chat")
//!     .token_sources([TokenSource::Bearer, TokenSource::Query("access_token".into())])
//!     .build()?;
//! let layer = WsProxyLayer::new("ws://127.0.0.1:3000".parse()?).identify(auth);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub use crate::handshake::jwt::{JwtAuth, JwtAuthBuilder, JwtConfigError, JwtKeys, TokenSource};
