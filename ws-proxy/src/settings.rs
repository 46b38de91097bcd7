//! Every setting of `ws-proxy`, defined once in [`Settings`]: clap reads it from flags and
//! `WS_PROXY_*` variables, serde from the TOML file and back (`--check-config`).
//!
//! Layers, later ones winning key by key: the defaults, the file, the variables, the flags. A
//! list given on the command line (or in a variable) replaces the file's list.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use axum_ws_proxy::{
    upstream::{Balance, Member},
    Deflate, EscapedSlashes, IpNet,
};
use clap::{CommandFactory, FromArgMatches, Parser, ValueEnum};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use toml::Spanned;

/// The command line: where the settings come from and what to do with them.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "ws-proxy",
    version,
    about = "WebSocket reverse proxy: HTTP/1.1 upgrades and HTTP/2 extended CONNECT (h2c) to \
             upstream pools. GET /healthz answers 200 ok. SIGTERM or SIGINT drains sessions \
             with close 1001; SIGHUP reloads --config.",
    after_help = "Every flag is also a WS_PROXY_* variable (--max-sessions: \
                  WS_PROXY_MAX_SESSIONS; lists comma-separated) and a key of the --config file \
                  (max_sessions). Flags win over variables, variables over the file.\n\
                  Durations: 500ms, 1.5s, 2m, 1h30m; 0 turns off what allows it. Sizes: 65536, \
                  64KiB, 16MiB. Switches: --require-origin or --require-origin=false.\n\
                  Logs go to stderr, filtered by RUST_LOG (default: info).",
    max_term_width = 100
)]
pub(crate) struct Cli {
    /// Read settings, named pools and routes from this TOML file (reloaded on SIGHUP)
    #[arg(long, value_name = "FILE", help_heading = "Configuration")]
    pub(crate) config: Option<PathBuf>,

    /// Validate the configuration, print it resolved as TOML (which --config accepts), and exit
    #[arg(long, help_heading = "Configuration")]
    pub(crate) check_config: bool,

    #[command(flatten)]
    pub(crate) settings: Settings,
}

/// The settings: flags, variables and file keys. `None` (or an empty list) is "not given".
#[derive(clap::Args, Deserialize, Serialize, Debug, Clone, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct Settings {
    /// A member, ws://host:port[/prefix][?weight=N]; repeat for a pool (required unless the
    /// file has routes)
    #[arg(long, value_name = "URL", help_heading = "Upstreams")]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) upstream: Vec<Text<Member>>,
    /// least-conn, round-robin, hash:ip, hash:header:NAME, hash:cookie:NAME or hash:query:NAME
    /// [default: least-conn]
    #[arg(long, value_name = "STRATEGY", help_heading = "Upstreams")]
    pub(crate) balance: Option<Text<Balance>>,
    /// Endpoints one upgrade may try [default: all of them]
    #[arg(long, value_name = "N", help_heading = "Upstreams")]
    pub(crate) max_tries: Option<NonZeroU32>,
    /// Failures that take an endpoint out of rotation; 0: never [default: 1]
    #[arg(long, value_name = "N", help_heading = "Upstreams")]
    pub(crate) max_fails: Option<u32>,
    /// Failure window and time out of rotation [default: 10s]
    #[arg(long, value_name = "DURATION", help_heading = "Upstreams")]
    pub(crate) fail_timeout: Option<Positive>,
    /// How often host names are resolved again [default: 30s]
    #[arg(long, value_name = "DURATION", help_heading = "Upstreams")]
    pub(crate) resolve_every: Option<Positive>,
    /// An endpoint that joins or comes back reaches its full share of new sessions over this
    /// (least-conn and round-robin); 0: at once [default: 0]
    #[arg(long, value_name = "DURATION", help_heading = "Upstreams")]
    pub(crate) slow_start: Option<Dur>,
    /// After members are added (and the rest remain), move live sessions to them at this
    /// many a second (1012, the client reconnects); 0: off [default: 0]
    #[arg(long, value_name = "N", help_heading = "Upstreams")]
    pub(crate) rebalance_rate: Option<u32>,
    /// The largest share of one member's sessions a rebalancing moves (hash pools move every
    /// moved key) [default: 50]
    #[arg(long, value_name = "PERCENT", help_heading = "Upstreams")]
    pub(crate) rebalance_max_fraction: Option<Ranged<0, 100>>,
    /// How long the membership must stay unchanged before sessions move (longer than one step
    /// of the upstream's rolling update) [default: 1m]
    #[arg(long, value_name = "DURATION", help_heading = "Upstreams")]
    pub(crate) rebalance_delay: Option<Dur>,
    /// TCP connect plus upstream handshake, failover included [default: 10s]
    #[arg(long, value_name = "DURATION", help_heading = "Upstreams")]
    pub(crate) connect_timeout: Option<Positive>,
    /// Trust only the CA certificates in this PEM file for wss:// upstreams [default: the
    /// public webpki roots]
    #[arg(long, value_name = "FILE", help_heading = "Upstreams")]
    pub(crate) upstream_ca: Option<PathBuf>,
    /// Do not verify wss:// upstream certificates (logged loudly) [default: false]
    #[arg(long, value_name = "BOOL", help_heading = "Upstreams", num_args = 0..=1,
          require_equals = true, default_missing_value = "true")]
    pub(crate) insecure_skip_verify: Option<bool>,

    /// frames (message by message) or tunnel (bytes spliced after a validated 101;
    /// extensions pass end to end) [default: frames]
    #[arg(long, value_name = "MODE", help_heading = "Sessions")]
    pub(crate) mode: Option<ModeSetting>,
    /// permessage-deflate in frame mode: auto (compress the client leg when the upstream
    /// does), always (also compress toward clients of upstreams that cannot), or off
    /// [default: auto]
    #[arg(long, value_name = "MODE", help_heading = "Sessions")]
    pub(crate) deflate: Option<Text<Deflate>>,
    /// Window the proxy compresses with where it chooses (always, or for a message hook),
    /// 9 (512 B) to 15 (32 KiB); announced to the client [default: 10]
    #[arg(long, value_name = "BITS", help_heading = "Sessions")]
    pub(crate) deflate_window_bits: Option<Ranged<9, 15>>,
    /// zlib memLevel of the proxy's compressors, 1 (about 1 KiB) to 9 (about 256 KiB)
    /// [default: 1]
    #[arg(long, value_name = "LEVEL", help_heading = "Sessions")]
    pub(crate) deflate_mem_level: Option<Ranged<1, 9>>,
    /// zlib compression level of the proxy's compressors, 1 (fastest) to 9 [default: 6]
    #[arg(long, value_name = "LEVEL", help_heading = "Sessions")]
    pub(crate) deflate_level: Option<Ranged<1, 9>>,
    /// Keep the proxy's compression context between messages; false shares compressors
    /// between sessions (less memory, small messages compress less) [default: true]
    #[arg(long, value_name = "BOOL", help_heading = "Sessions", num_args = 0..=1,
          require_equals = true, default_missing_value = "true")]
    pub(crate) deflate_context_takeover: Option<bool>,
    /// Ping a leg quiet this long; 0 turns keepalive off [default: 30s]
    #[arg(long, value_name = "DURATION", help_heading = "Sessions")]
    pub(crate) ping_interval: Option<Dur>,
    /// Time a pinged leg has to answer [default: 30s]
    #[arg(long, value_name = "DURATION", help_heading = "Sessions")]
    pub(crate) ping_timeout: Option<Positive>,
    /// Close after this long without data either way; 0: off [default: 0]
    #[arg(long, value_name = "DURATION", help_heading = "Sessions")]
    pub(crate) idle_timeout: Option<Dur>,
    /// Close sessions this old; 0: off [default: 0]
    #[arg(long, value_name = "DURATION", help_heading = "Sessions")]
    pub(crate) max_lifetime: Option<Dur>,
    /// End each session up to this share of --max-lifetime earlier, at random, so that sessions
    /// opened together do not end together; 0 to 100 [default: 10]
    #[arg(long, value_name = "PERCENT", help_heading = "Sessions")]
    pub(crate) max_lifetime_jitter: Option<Ranged<0, 100>>,
    /// Largest message either way [default: 16MiB]
    #[arg(long, value_name = "BYTES", help_heading = "Sessions")]
    pub(crate) max_message_size: Option<Size>,

    /// Sessions at once; beyond, 503; 0: no limit [default: 0]
    #[arg(long, value_name = "N", help_heading = "Limits and access")]
    pub(crate) max_sessions: Option<usize>,
    /// New upgrades a second at most; beyond, 503; 0: no pacing [default: 0]
    #[arg(long, value_name = "N", help_heading = "Limits and access")]
    pub(crate) max_upgrade_rate: Option<u32>,
    /// New upgrades at once at most, with --max-upgrade-rate; 0: as many as the rate
    /// [default: 0]
    #[arg(long, value_name = "N", help_heading = "Limits and access")]
    pub(crate) upgrade_burst: Option<u32>,
    /// Retry-After of every 503: at least this [default: 1s]
    #[arg(long, value_name = "DURATION", help_heading = "Limits and access")]
    pub(crate) retry_after: Option<Dur>,
    /// Retry-After of every 503: plus up to this, at random, so that clients refused together
    /// come back spread [default: 4s]
    #[arg(long, value_name = "DURATION", help_heading = "Limits and access")]
    pub(crate) retry_after_spread: Option<Dur>,
    /// Sessions at once per upstream endpoint; 0: no limit [default: 0]
    #[arg(long, value_name = "N", help_heading = "Limits and access")]
    pub(crate) max_member_sessions: Option<usize>,
    /// Allowed Origin, exact or https://*.example.com (repeatable) [default: any]
    #[arg(long, value_name = "ORIGIN", help_heading = "Limits and access")]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) allow_origin: Vec<String>,
    /// Refuse upgrades without an Origin header (needs --allow-origin) [default: false]
    #[arg(long, value_name = "BOOL", help_heading = "Limits and access", num_args = 0..=1,
          require_equals = true, default_missing_value = "true")]
    pub(crate) require_origin: Option<bool>,

    /// Encoded slashes (%2F, %5C) in paths: keep (forward as they came), reject (400), or
    /// decode (as / before dot-segments, routes and forwarding); a dot-segment hidden behind
    /// one is always 400 [default: keep]
    #[arg(long, value_name = "ACTION", help_heading = "Limits and access")]
    pub(crate) escaped_slashes: Option<Text<EscapedSlashes>>,

    /// A network whose X-Forwarded-* headers are believed, e.g. 10.0.0.0/8 (repeatable);
    /// from others they are replaced [default: none]
    #[arg(long, value_name = "CIDR", help_heading = "Limits and access")]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) trusted_proxy: Vec<Text<IpNet>>,

    /// Verify a JWT on every upgrade with the HMAC secret in this file (32 bytes or more;
    /// surrounding whitespace ignored) [default: off]
    #[arg(long, value_name = "FILE", help_heading = "Identity")]
    pub(crate) jwt_hmac_secret_file: Option<PathBuf>,
    /// Verify a JWT on every upgrade with the public keys (RSA, EC, Ed25519) in this PEM file
    /// [default: off]
    #[arg(long, value_name = "FILE", help_heading = "Identity")]
    pub(crate) jwt_public_key_file: Option<PathBuf>,
    /// Verify a JWT on every upgrade with the keys of this JWKS file (reloaded on SIGHUP)
    /// [default: off]
    #[arg(long, value_name = "FILE", help_heading = "Identity")]
    pub(crate) jwt_jwks_file: Option<PathBuf>,
    /// Algorithms accepted (repeatable), e.g. RS256; never none [default: HS256 for a secret,
    /// RS256/ES256/ES384/EdDSA by public key type, or each JWK's alg]
    #[arg(long, value_name = "ALG", help_heading = "Identity")]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) jwt_algorithm: Vec<String>,
    /// The iss tokens must carry [default: not checked]
    #[arg(long, value_name = "ISSUER", help_heading = "Identity")]
    pub(crate) jwt_issuer: Option<String>,
    /// The aud tokens must carry; without it, tokens naming an audience are refused
    /// [default: none]
    #[arg(long, value_name = "AUDIENCE", help_heading = "Identity")]
    pub(crate) jwt_audience: Option<String>,
    /// Clock skew allowed on nbf (exp is strict: sessions close at it) [default: 5s]
    #[arg(long, value_name = "DURATION", help_heading = "Identity")]
    pub(crate) jwt_leeway: Option<Dur>,
    /// Also take the token from this cookie (after Authorization: Bearer) [default: off]
    #[arg(long, value_name = "NAME", help_heading = "Identity")]
    pub(crate) jwt_cookie: Option<String>,
    /// Also take the token from this query parameter (after the cookie); it is removed from
    /// the upstream request and logged as REDACTED [default: off]
    #[arg(long, value_name = "NAME", help_heading = "Identity")]
    pub(crate) jwt_query_param: Option<String>,
    /// The claim naming the session's subject [default: sub]
    #[arg(long, value_name = "CLAIM", help_heading = "Identity")]
    pub(crate) jwt_subject_claim: Option<String>,
    /// The claim naming the session's tenant [default: none]
    #[arg(long, value_name = "CLAIM", help_heading = "Identity")]
    pub(crate) jwt_tenant_claim: Option<String>,
    /// The claim holding the session's tags (an array, or space-separated like scope)
    /// [default: none]
    #[arg(long, value_name = "CLAIM", help_heading = "Identity")]
    pub(crate) jwt_tags_claim: Option<String>,
    /// Send a verified claim upstream as a header, CLAIM=HEADER (repeatable); client-sent
    /// copies of HEADER are removed [default: none]
    #[arg(long, value_name = "CLAIM=HEADER", help_heading = "Identity")]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) jwt_forward_claim: Vec<String>,
    /// Revocations in force at once (admin API); beyond, a revocation is refused
    /// [default: 100000]
    #[arg(long, value_name = "N", help_heading = "Identity")]
    pub(crate) max_revocations: Option<usize>,

    /// Serve HTTPS/wss:// with this PEM certificate chain (with --tls-key) [default: off]
    #[arg(long, value_name = "FILE", help_heading = "TLS")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// The certificate's PEM private key (with --tls-cert) [default: off]
    #[arg(long, value_name = "FILE", help_heading = "TLS")]
    pub(crate) tls_key: Option<PathBuf>,
    /// Require client certificates issued by a CA in this PEM file (mTLS) [default: off]
    #[arg(long, value_name = "FILE", help_heading = "TLS")]
    pub(crate) tls_client_ca: Option<PathBuf>,
    /// More certificates, chosen by SNI (file only): `[[tls.certificates]]` with `cert`, `key`.
    #[arg(skip)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) tls: Option<TlsFiles>,

    /// Address to listen on [default: 127.0.0.1:8080]
    #[arg(long, value_name = "ADDR", help_heading = "Server")]
    pub(crate) listen: Option<SocketAddr>,
    /// Connections the kernel queues before the proxy accepts them (capped by
    /// net.core.somaxconn) [default: 1024]
    #[arg(long, value_name = "N", help_heading = "Server")]
    pub(crate) listen_backlog: Option<NonZeroU32>,
    /// Every connection starts with a PROXY protocol v1/v2 header (from an L4 load balancer);
    /// its address is the client's [default: false]
    #[arg(long, value_name = "BOOL", help_heading = "Server", num_args = 0..=1,
          require_equals = true, default_missing_value = "true")]
    pub(crate) proxy_protocol: Option<bool>,
    /// Time a client has to send its request head (and PROXY header) [default: 10s]
    #[arg(long, value_name = "DURATION", help_heading = "Server")]
    pub(crate) header_timeout: Option<Positive>,
    /// After SIGTERM, keep serving this long while /healthz answers 503, so load balancers
    /// move away first [default: 0]
    #[arg(long, value_name = "DURATION", help_heading = "Server")]
    pub(crate) shutdown_delay: Option<Dur>,
    /// Then time sessions and requests get to finish, together [default: 10s]
    #[arg(long, value_name = "DURATION", help_heading = "Server")]
    pub(crate) shutdown_grace: Option<Positive>,
    /// Within the grace, spread the closing of live sessions (1012, idle ones first) over
    /// this; 0 closes all at once [default: half of --shutdown-grace]
    #[arg(long, value_name = "DURATION", help_heading = "Server")]
    pub(crate) drain_window: Option<Dur>,
    /// Serve the admin API (drain, sessions, revocations) at ADDR, with --admin-token-file
    /// [default: off]
    #[arg(long, value_name = "ADDR", help_heading = "Server")]
    pub(crate) admin_listen: Option<SocketAddr>,
    /// The admin API's bearer token (16 characters or more), read from this file
    /// [default: off]
    #[arg(long, value_name = "FILE", help_heading = "Server")]
    pub(crate) admin_token_file: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics [default: off]
    #[arg(long, value_name = "ADDR", help_heading = "Server")]
    pub(crate) metrics_listen: Option<SocketAddr>,
    /// Query parameters logged as REDACTED (repeatable; an empty value logs queries
    /// verbatim) [default: token,access_token,auth,key,password]
    #[arg(long, value_name = "NAME", help_heading = "Server")]
    pub(crate) redact_query: Option<Vec<String>>,
    /// Send each session's id upstream in this request header, e.g. x-request-id
    /// [default: off]
    #[arg(long, value_name = "HEADER", help_heading = "Server")]
    pub(crate) session_id_header: Option<Text<http::HeaderName>>,
    /// text, or json (one object per line) [default: text]
    #[arg(long, value_name = "FORMAT", help_heading = "Server")]
    pub(crate) log_format: Option<LogFormat>,

    /// Named pools (file only): `[pools.NAME]` with the upstream keys above.
    #[arg(skip)]
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) pools: BTreeMap<String, PoolSettings>,
    /// Path-prefix routes to named pools (file only): `[[routes]] prefix = "/chat"`, `pool`.
    #[arg(skip)]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) routes: Vec<RouteSetting>,
}

/// A named pool in the file: the pool keys of [`Settings`].
#[derive(Deserialize, Serialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct PoolSettings {
    pub(crate) upstream: Vec<Text<Member>>,
    pub(crate) balance: Option<Text<Balance>>,
    pub(crate) max_tries: Option<NonZeroU32>,
    pub(crate) max_fails: Option<u32>,
    pub(crate) fail_timeout: Option<Positive>,
    pub(crate) resolve_every: Option<Positive>,
    pub(crate) slow_start: Option<Dur>,
    pub(crate) rebalance_rate: Option<u32>,
    pub(crate) rebalance_max_fraction: Option<Ranged<0, 100>>,
    pub(crate) rebalance_delay: Option<Dur>,
    pub(crate) max_member_sessions: Option<usize>,
}

/// `[tls]`: certificates chosen by SNI, after `tls_cert`/`tls_key` (the default).
#[derive(Deserialize, Serialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct TlsFiles {
    pub(crate) certificates: Vec<CertificateFiles>,
}

/// One certificate chain and its key.
#[derive(Deserialize, Serialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct CertificateFiles {
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
}

/// `[[routes]]`: paths under `prefix` (whole segments) go to pool `pool`.
#[derive(Deserialize, Serialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct RouteSetting {
    pub(crate) prefix: Spanned<String>,
    pub(crate) pool: Spanned<String>,
}

/// How sessions cross the proxy.
#[derive(ValueEnum, Deserialize, Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ModeSetting {
    Frames,
    Tunnel,
}

/// How log lines are written.
#[derive(ValueEnum, Deserialize, Serialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogFormat {
    #[default]
    Text,
    Json,
}

impl Settings {
    /// Every default, as a layer under the file's.
    pub(crate) fn defaults() -> Self {
        let secs = |s| Some(Positive(Dur(Duration::from_secs(s))));
        Self {
            balance: Some(Text(Balance::LeastConn)),
            max_fails: Some(1),
            fail_timeout: secs(10),
            slow_start: Some(Dur(Duration::ZERO)),
            rebalance_rate: Some(0),
            rebalance_max_fraction: Some(Ranged(50)),
            rebalance_delay: Some(Dur(Duration::from_secs(60))),
            resolve_every: secs(30),
            connect_timeout: secs(10),
            insecure_skip_verify: Some(false),
            mode: Some(ModeSetting::Frames),
            deflate: Some(Text(Deflate::Auto)),
            deflate_window_bits: Some(Ranged(10)),
            deflate_mem_level: Some(Ranged(1)),
            deflate_level: Some(Ranged(6)),
            deflate_context_takeover: Some(true),
            ping_interval: Some(Dur(Duration::from_secs(30))),
            ping_timeout: secs(30),
            idle_timeout: Some(Dur(Duration::ZERO)),
            max_lifetime: Some(Dur(Duration::ZERO)),
            max_lifetime_jitter: Some(Ranged(10)),
            max_message_size: Some(Size(16 << 20)),
            max_sessions: Some(0),
            max_upgrade_rate: Some(0),
            upgrade_burst: Some(0),
            retry_after: Some(Dur(Duration::from_secs(1))),
            retry_after_spread: Some(Dur(Duration::from_secs(4))),
            max_member_sessions: Some(0),
            require_origin: Some(false),
            escaped_slashes: Some(Text(EscapedSlashes::Keep)),
            jwt_leeway: Some(Dur(Duration::from_secs(5))),
            jwt_subject_claim: Some("sub".into()),
            max_revocations: Some(100_000),
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 8080))),
            proxy_protocol: Some(false),
            listen_backlog: NonZeroU32::new(1024),
            header_timeout: secs(10),
            shutdown_delay: Some(Dur(Duration::ZERO)),
            shutdown_grace: secs(10),
            log_format: Some(LogFormat::Text),
            redact_query: Some(
                ["token", "access_token", "auth", "key", "password"]
                    .map(String::from)
                    .to_vec(),
            ),
            ..Self::default()
        }
    }

    /// `self` over `under`, key by key (a list given replaces the list under it). Pools,
    /// routes and SNI certificates come from the file alone.
    fn over(mut self, mut under: Self) -> Result<Self, String> {
        let file_only = |s: &mut Settings| {
            (
                std::mem::take(&mut s.pools),
                std::mem::take(&mut s.routes),
                s.tls.take(),
            )
        };
        let (pools, routes, tls) =
            if self.pools.is_empty() && self.routes.is_empty() && self.tls.is_none() {
                file_only(&mut under)
            } else {
                file_only(&mut self)
            };
        let table = |s: &Settings| toml::Table::try_from(s).map_err(|e| e.to_string());
        let mut merged = table(&under)?;
        merged.extend(table(&self)?);
        let mut settings: Settings = merged.try_into().map_err(|e| e.to_string())?;
        settings.pools = pools;
        settings.routes = routes;
        settings.tls = tls;
        Ok(settings)
    }
}

/// What to do, with the resolved settings.
#[derive(Debug)]
pub(crate) enum Command {
    Run(Settings),
    /// `--check-config`: print the resolved configuration.
    Check(Settings),
    /// `--help` or `--version`: clap's text, for stdout.
    Print(String),
}

/// The command line as clap knows it, every flag with its `WS_PROXY_*` variable.
fn command() -> clap::Command {
    Cli::command().mut_args(|arg| {
        let id = arg.get_id().as_str().to_owned();
        if matches!(id.as_str(), "config" | "check_config" | "help" | "version") {
            return arg;
        }
        let arg = arg.env(format!("WS_PROXY_{}", id.to_ascii_uppercase()));
        // Lists in variables are comma-separated (flags repeat instead).
        if matches!(
            id.as_str(),
            "upstream"
                | "allow_origin"
                | "trusted_proxy"
                | "redact_query"
                | "jwt_algorithm"
                | "jwt_forward_claim"
        ) {
            arg.value_delimiter(',')
        } else {
            arg
        }
    })
}

/// Parses the command line (and the variables and the file it names).
pub(crate) fn parse(args: impl IntoIterator<Item = String>) -> Result<Command, String> {
    let argv = std::iter::once("ws-proxy".to_owned()).chain(args);
    let cli = match command().try_get_matches_from(argv) {
        Ok(m) => Cli::from_arg_matches(&m).map_err(|e| clap_error(&e))?,
        Err(e)
            if matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
            ) =>
        {
            return Ok(Command::Print(e.render().to_string()));
        }
        Err(e) => return Err(clap_error(&e)),
    };
    let check = cli.check_config;
    let resolved = resolve(cli)?;
    Ok(if check {
        Command::Check(resolved)
    } else {
        Command::Run(resolved)
    })
}

/// The settings of the file at `path`, with its pools and routes checked.
fn from_file(path: &std::path::Path) -> Result<Settings, String> {
    let source = crate::config_file::Source::read(path)?;
    let settings: Settings = source.parse()?;
    for (name, pool) in &settings.pools {
        if pool.upstream.is_empty() {
            return Err(source.error(&format!("pools.{name}: a pool needs at least one upstream")));
        }
    }
    for route in &settings.routes {
        let prefix = route.prefix.get_ref();
        if !prefix.starts_with('/') {
            return Err(source.error_at(
                route.prefix.span().start,
                &format!("routes.prefix: {prefix:?} must start with /"),
            ));
        }
        let pool = route.pool.get_ref();
        if !settings.pools.contains_key(pool) {
            return Err(source.error_at(
                route.pool.span().start,
                &format!("routes.pool: no pool named {pool:?} (define [pools.{pool}])"),
            ));
        }
    }
    Ok(settings)
}

/// The command line's settings over the file's over the defaults, validated.
pub(crate) fn resolve(cli: Cli) -> Result<Settings, String> {
    let file = match &cli.config {
        Some(path) => from_file(path)?,
        None => Settings::default(),
    };
    cli.settings
        .over(file)?
        .over(Settings::defaults())
        .map_err(|e| format!("cannot combine the settings: {e}"))
}

/// The command line again, for a reload: same flags and variables, the file read anew.
pub(crate) fn reparse(args: impl IntoIterator<Item = String>) -> Result<Settings, String> {
    let argv = std::iter::once("ws-proxy".to_owned()).chain(args);
    let m = command()
        .try_get_matches_from(argv)
        .map_err(|e| clap_error(&e))?;
    resolve(Cli::from_arg_matches(&m).map_err(|e| clap_error(&e))?)
}

/// One line, naming the flag: `--listen: invalid address "x"`.
fn clap_error(e: &clap::Error) -> String {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    let context = |kind| match e.get(kind) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        Some(ContextValue::Strings(v)) => v.first().cloned(),
        _ => None,
    };
    // "--listen <ADDR>" -> ("--listen", "ADDR")
    let arg = context(ContextKind::InvalidArg).unwrap_or_default();
    let flag = arg
        .split(['[', ' ', '='])
        .next()
        .unwrap_or_default()
        .to_owned();
    let value_name = arg
        .rsplit('<')
        .next()
        .map(|v| v.trim_end_matches([']', '>']))
        .unwrap_or_default();
    let value = context(ContextKind::InvalidValue).unwrap_or_default();
    match e.kind() {
        ErrorKind::UnknownArgument if !flag.starts_with('-') => format!(
            "unexpected argument {flag:?} (a switch takes its value with =, e.g. \
             --require-origin=false)"
        ),
        ErrorKind::UnknownArgument => match context(ContextKind::SuggestedArg) {
            Some(s) => format!("unknown flag {flag:?} (did you mean {s:?}? see --help)"),
            None => format!("unknown flag {flag:?} (see --help)"),
        },
        ErrorKind::InvalidValue if value.is_empty() => format!("{flag} needs a value"),
        ErrorKind::ValueValidation | ErrorKind::InvalidValue => {
            let expected = match (value_name, e.get(ContextKind::ValidValue)) {
                (_, Some(ContextValue::Strings(v))) => v.join(" or "),
                ("N", _) if matches!(flag.as_str(), "--max-tries" | "--listen-backlog") => {
                    "a whole number >= 1".to_owned()
                }
                ("N", _) => "a whole number >= 0".to_owned(),
                ("ADDR", _) => "IP:PORT".to_owned(),
                ("CIDR", _) => "a network such as 10.0.0.0/8 or fd00::/8".to_owned(),
                _ => String::new(),
            };
            match std::error::Error::source(e) {
                // Our own parsers quote the value and say what they expect.
                Some(cause) if cause.to_string().contains(&format!("{value:?}")) => {
                    format!("{flag}: {cause}")
                }
                _ => format!("{flag}: invalid value {value:?} (expected {expected})"),
            }
        }
        _ => {
            // clap's own first line, without its "error: " prefix.
            let text = e.render().to_string();
            let line = text.lines().next().unwrap_or_default();
            line.strip_prefix("error: ").unwrap_or(line).to_owned()
        }
    }
}

/// A value read through its `FromStr` and written through its `Display`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Text<T>(pub(crate) T);

impl<T: FromStr> FromStr for Text<T> {
    type Err = T::Err;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(Text)
    }
}

impl<T: fmt::Display> Serialize for Text<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de, T: FromStr> Deserialize<'de> for Text<T>
where
    T::Err: fmt::Display,
{
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A whole number from `LO` to `HI`: a flag's text or the file's number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ranged<const LO: u8, const HI: u8>(pub(crate) u8);

impl<const LO: u8, const HI: u8> Ranged<LO, HI> {
    fn new(n: u64) -> Result<Self, String> {
        match u8::try_from(n) {
            Ok(n) if (LO..=HI).contains(&n) => Ok(Ranged(n)),
            _ => Err(format!("\"{n}\" is not a whole number from {LO} to {HI}")),
        }
    }
}

impl<const LO: u8, const HI: u8> FromStr for Ranged<LO, HI> {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        s.parse::<u64>()
            .map_err(|_| format!("{s:?} is not a whole number from {LO} to {HI}"))
            .and_then(Self::new)
    }
}

impl<const LO: u8, const HI: u8> Serialize for Ranged<LO, HI> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(self.0)
    }
}

impl<'de, const LO: u8, const HI: u8> Deserialize<'de> for Ranged<LO, HI> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::new(u64::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// A duration: `500ms`, `1.5s`, `2m`, `1h30m`, `0`; in the file also a number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Dur(pub(crate) Duration);

impl FromStr for Dur {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(secs) = s.parse::<u64>() {
            return Ok(Dur(Duration::from_secs(secs)));
        }
        humantime::parse_duration(s)
            .map(Dur)
            .map_err(|_| format!("invalid duration {s:?} (expected e.g. 500ms, 1.5s, 2m, 1h30m)"))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_zero() {
            return f.write_str("0");
        }
        // humantime writes "1m 30s"; without spaces it reads back the same.
        let text = humantime::format_duration(self.0).to_string();
        f.write_str(&text.replace(' ', ""))
    }
}

/// A duration that must be more than zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Positive(pub(crate) Dur);

impl Positive {
    pub(crate) fn get(self) -> Duration {
        self.0 .0
    }
}

impl FromStr for Positive {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.parse::<Dur>()? {
            Dur(d) if d.is_zero() => Err(format!("duration {s:?} must be more than zero")),
            d => Ok(Positive(d)),
        }
    }
}

impl fmt::Display for Positive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A byte count: `65536`, `64KiB`, `16MiB` (`KB`, `MB`: powers of 1000).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Size(pub(crate) usize);

impl FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bytes = s
            .parse::<bytesize::ByteSize>()
            .map_err(|_| format!("invalid size {s:?} (expected e.g. 65536, 64KiB, 16MiB)"))?;
        match usize::try_from(bytes.as_u64()) {
            Ok(0) => Err(format!("size {s:?} must be more than zero")),
            Ok(n) => Ok(Size(n)),
            Err(_) => Err(format!("size {s:?} is too large")),
        }
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The largest binary unit that divides it exactly, so the text reads back the same.
        for (shift, unit) in [(30, "GiB"), (20, "MiB"), (10, "KiB")] {
            if self.0 >= 1 << shift && self.0 % (1 << shift) == 0 {
                return write!(f, "{}{unit}", self.0 >> shift);
            }
        }
        write!(f, "{}", self.0)
    }
}

/// Durations and sizes: strings in the file, or plain numbers (seconds, bytes).
macro_rules! text_or_number {
    ($($ty:ty),*) => {$(
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                #[derive(Deserialize)]
                #[serde(untagged)]
                enum Raw {
                    Number(u64),
                    Text(String),
                }
                let text = match Raw::deserialize(d) {
                    Ok(Raw::Number(n)) => n.to_string(),
                    Ok(Raw::Text(s)) => s,
                    Err(_) => {
                        return Err(serde::de::Error::custom("expected a string or a number"))
                    }
                };
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}

text_or_number!(Dur, Positive, Size);

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Settings, String> {
        match parse(args.iter().map(|s| s.to_string()))? {
            Command::Run(s) => Ok(s),
            other => Err(format!("{other:?}")),
        }
    }

    #[test]
    fn durations_and_sizes_read_back_what_they_write() {
        for text in ["500ms", "1.5s", "2m", "1h30m", "0", "10s", "1m30s"] {
            let d: Dur = text.parse().unwrap();
            assert_eq!(d.to_string().parse::<Dur>().unwrap(), d, "{text}");
        }
        assert_eq!(
            "1.5s".parse::<Dur>().unwrap().0,
            Duration::from_millis(1500)
        );
        assert_eq!("90".parse::<Dur>().unwrap().0, Duration::from_secs(90));
        assert_eq!(Dur(Duration::from_secs(90)).to_string(), "1m30s");
        assert!("0".parse::<Positive>().is_err());
        assert!("2 s".parse::<Dur>().is_ok() || "2 s".parse::<Dur>().is_err());
        assert!("often".parse::<Dur>().is_err());
        assert_eq!("64KiB".parse::<Size>().unwrap().0, 65536);
        assert_eq!("16MiB".parse::<Size>().unwrap().0, 16 << 20);
        assert_eq!(Size(16 << 20).to_string(), "16MiB");
        assert_eq!(Size(1000).to_string(), "1000");
        assert!("12XB".parse::<Size>().is_err());
        assert!("0".parse::<Size>().is_err());
    }

    #[test]
    fn switches_take_their_value() {
        let base = [
            "--upstream",
            "ws://h:1",
            "--allow-origin",
            "https://a.example",
        ];
        let with = |extra: &str| {
            let mut args = base.to_vec();
            args.push(extra);
            run(&args).unwrap()
        };
        assert_eq!(with("--require-origin").require_origin, Some(true));
        assert_eq!(with("--require-origin=true").require_origin, Some(true));
        assert_eq!(with("--require-origin=false").require_origin, Some(false));
        assert_eq!(
            with("--insecure-skip-verify=false").insecure_skip_verify,
            Some(false)
        );
        assert_eq!(with("--listen=0.0.0.0:9").listen.map(|a| a.port()), Some(9));
    }

    #[test]
    fn defaults_fill_what_is_not_given() {
        let s = run(&["--upstream", "ws://h:1"]).unwrap();
        assert_eq!(
            s.header_timeout.map(Positive::get),
            Some(Duration::from_secs(10))
        );
        assert_eq!(s.mode, Some(ModeSetting::Frames));
        assert_eq!(s.upstream.len(), 1);
    }

    /// The help text states each default; it must be the one `defaults()` applies.
    #[test]
    fn help_states_the_defaults_that_apply() {
        let defaults = toml::Table::try_from(Settings::defaults()).unwrap();
        let cmd = command();
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            let Some(value) = defaults.get(id) else {
                continue;
            };
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            let shown = match value {
                toml::Value::String(s) => s.clone(),
                toml::Value::Array(items) => items
                    .iter()
                    .filter_map(|i| i.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
                other => other.to_string(),
            };
            assert!(
                help.contains(&format!("[default: {shown}]")),
                "--{id}: help {help:?} does not state the default {shown:?}"
            );
        }
    }
}
