//! From resolved [`Settings`] to what runs: pools, routes and the layer. Building a plan has
//! no side effects, so a reload can build one, and only then swap it in.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use axum::http::StatusCode;
use axum_ws_proxy::{
    hooks::Refusal,
    tls::{ServerTls, UpstreamTls},
    upstream::{Rebalance, UpstreamPool},
    Compression, Mode, WsProxyLayer,
};

use axum_ws_proxy::jwt::{JwtAuth, JwtKeys, TokenSource};

use crate::settings::{ModeSetting, PoolSettings, Positive, Settings};

/// A validated configuration, ready to serve.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) settings: Settings,
    /// Paths no route matches go here (may be empty when routes exist: 404).
    pub(crate) default_pool: UpstreamPool,
    pub(crate) pools: BTreeMap<String, UpstreamPool>,
    tls: Option<UpstreamTls>,
    /// HTTPS at the edge, when certificates are configured.
    pub(crate) server_tls: Option<ServerTls>,
    /// The admin listener's bearer token, read from `admin_token_file`.
    pub(crate) admin_token: Option<crate::admin::Token>,
    /// The JWT check, with the keys read from their file (again on every reload).
    jwt: Option<JwtAuth>,
}

impl Plan {
    /// Checks `settings` (reading the files they name) and builds fresh pools.
    pub(crate) fn new(settings: Settings) -> Result<Self, String> {
        let s = &settings;
        if s.upstream.is_empty() && s.routes.is_empty() {
            return Err("--upstream URL is required (see --help)".into());
        }
        if s.require_origin == Some(true) && s.allow_origin.is_empty() {
            return Err("--require-origin needs at least one --allow-origin".into());
        }
        if let Some(empty) = s.allow_origin.iter().find(|o| o.trim().is_empty()) {
            return Err(format!("--allow-origin: empty origin {empty:?}"));
        }
        let insecure = s.insecure_skip_verify == Some(true);
        if insecure && s.upstream_ca.is_some() {
            return Err("--insecure-skip-verify and --upstream-ca exclude each other".into());
        }
        let tls = match &s.upstream_ca {
            Some(path) => {
                let shown = path.display().to_string();
                let pem = std::fs::read(path)
                    .map_err(|e| format!("--upstream-ca: cannot read {shown:?}: {e}"))?;
                Some(
                    UpstreamTls::with_root_certificates_pem(&pem)
                        .map_err(|e| format!("--upstream-ca: {shown:?}: {e}"))?,
                )
            }
            None if insecure => Some(UpstreamTls::insecure_skip_verify()),
            None => None,
        };
        let server_tls = server_tls(s)?;
        let jwt = jwt(s)?;
        let admin_token = match (&s.admin_listen, &s.admin_token_file) {
            (Some(_), Some(path)) => Some(crate::admin::Token::read(path)?),
            (Some(_), None) => {
                return Err("--admin-listen needs --admin-token-file".into());
            }
            (None, _) => None,
        };
        if let Some(window) = s.drain_window {
            let grace = s
                .shutdown_grace
                .map_or(Duration::from_secs(10), Positive::get);
            if window.0 > grace {
                return Err(format!(
                    "--drain-window ({:?}) must fit within --shutdown-grace ({grace:?})",
                    window.0
                ));
            }
        }
        let default_pool = pool(&PoolSettings {
            upstream: s.upstream.clone(),
            balance: s.balance.clone(),
            max_tries: s.max_tries,
            max_fails: s.max_fails,
            fail_timeout: s.fail_timeout,
            resolve_every: s.resolve_every,
            slow_start: s.slow_start,
            rebalance_rate: s.rebalance_rate,
            rebalance_max_fraction: s.rebalance_max_fraction,
            rebalance_delay: s.rebalance_delay,
            max_member_sessions: s.max_member_sessions,
        })
        .map_err(|e| format!("--upstream: {e}"))?;
        let mut pools = BTreeMap::new();
        for (name, p) in &s.pools {
            pools.insert(
                name.clone(),
                pool(p).map_err(|e| format!("pools.{name}: {e}"))?,
            );
        }
        Ok(Self {
            settings,
            default_pool,
            pools,
            tls,
            server_tls,
            admin_token,
            jwt,
        })
    }

    /// For a reload: the running pools take this plan's members and settings (keeping the
    /// live sessions and health of members in both), and this plan uses them.
    pub(crate) fn adopt(&mut self, running: &Plan) {
        running.default_pool.update_from(&self.default_pool);
        self.default_pool = running.default_pool.clone();
        for (name, pool) in &mut self.pools {
            if let Some(old) = running.pools.get(name) {
                old.update_from(pool);
                *pool = old.clone();
            }
        }
    }

    /// Settings that only a restart changes, where `other` differs from this plan.
    pub(crate) fn restart_only_changes(&self, other: &Plan) -> Vec<&'static str> {
        let (a, b) = (&self.settings, &other.settings);
        let mut changed = Vec::new();
        if a.listen != b.listen {
            changed.push("listen");
        }
        if a.metrics_listen != b.metrics_listen {
            changed.push("metrics_listen");
        }
        if (&a.admin_listen, &a.admin_token_file) != (&b.admin_listen, &b.admin_token_file) {
            changed.push("admin_listen, admin_token_file");
        }
        if a.listen_backlog != b.listen_backlog {
            changed.push("listen_backlog");
        }
        if a.proxy_protocol != b.proxy_protocol {
            changed.push("proxy_protocol");
        }
        if a.header_timeout != b.header_timeout {
            changed.push("header_timeout");
        }
        if a.log_format != b.log_format {
            changed.push("log_format");
        }
        // The files are re-read on every reload; which files, and whether TLS is on, only
        // change with a restart.
        if (&a.tls_cert, &a.tls_key, &a.tls_client_ca, &a.tls)
            != (&b.tls_cert, &b.tls_key, &b.tls_client_ca, &b.tls)
        {
            changed.push("tls files");
        }
        changed
    }

    /// The layer this plan describes. Long (about 80 lines) for a reason: one setting, one
    /// setter, in the order of the settings' definition; a reader checks it against that list.
    pub(crate) fn layer(&self) -> WsProxyLayer {
        let s = &self.settings;
        let mut layer = WsProxyLayer::new(self.default_pool.clone());
        if let Some(d) = s.connect_timeout {
            layer = layer.connect_timeout(d.get());
        }
        if let Some(m) = s.mode {
            layer = layer.mode(match m {
                ModeSetting::Frames => Mode::Frames,
                ModeSetting::Tunnel => Mode::Tunnel,
            });
        }
        if let Some(d) = &s.deflate {
            layer = layer.deflate(d.0);
        }
        let mut compression = Compression::default();
        if let Some(b) = s.deflate_window_bits {
            compression = compression.window_bits(b.0);
        }
        if let Some(l) = s.deflate_mem_level {
            compression = compression.mem_level(l.0);
        }
        if let Some(l) = s.deflate_level {
            compression = compression.level(l.0);
        }
        if let Some(keep) = s.deflate_context_takeover {
            compression = compression.context_takeover(keep);
        }
        layer = layer.compression(compression);
        if let Some(d) = s.ping_interval {
            layer = layer.ping_interval(d.0);
        }
        if let Some(d) = s.ping_timeout {
            layer = layer.ping_timeout(d.get());
        }
        if let Some(d) = s.idle_timeout {
            layer = layer.idle_timeout(d.0);
        }
        if let Some(d) = s.max_lifetime {
            layer = layer.max_lifetime(d.0);
        }
        if let Some(percent) = s.max_lifetime_jitter {
            layer = layer.max_lifetime_jitter(f64::from(percent.0) / 100.0);
        }
        if let Some(n) = s.max_message_size {
            layer = layer.max_message_size(n.0).max_frame_size(n.0);
        }
        if let Some(n) = s.max_sessions {
            layer = layer.max_sessions(n);
        }
        if let Some(rate) = s.max_upgrade_rate.filter(|r| *r > 0) {
            let burst = s.upgrade_burst.filter(|b| *b > 0).unwrap_or(rate);
            layer = layer.max_upgrade_rate(rate, burst);
        }
        if let (Some(least), Some(spread)) = (s.retry_after, s.retry_after_spread) {
            layer = layer.retry_after(least.0, spread.0);
        }
        if let Some(tls) = &self.tls {
            layer = layer.upstream_tls(tls.clone());
        }
        if !s.allow_origin.is_empty() {
            layer = layer
                .allowed_origins(s.allow_origin.clone())
                .allow_missing_origin(s.require_origin != Some(true));
        }
        if let Some(names) = &s.redact_query {
            layer = layer.redact_query(names.iter().filter(|n| !n.is_empty()).cloned());
        }
        if let Some(name) = &s.session_id_header {
            layer = layer.session_id_header(name.0.clone());
        }
        if let Some(action) = &s.escaped_slashes {
            layer = layer.escaped_slashes(action.0);
        }
        if !s.trusted_proxy.is_empty() {
            layer = layer.trusted_proxies(s.trusted_proxy.iter().map(|n| n.0));
        }
        if let Some(jwt) = &self.jwt {
            layer = layer.identify(jwt.clone());
        }
        if let Some(n) = s.max_revocations {
            layer = layer.max_revocations(n);
        }
        if s.routes.is_empty() {
            return layer;
        }
        // Longest prefix first; unmatched paths use the default pool, if it has members.
        let mut table: Vec<(String, UpstreamPool)> = s
            .routes
            .iter()
            .filter_map(|r| {
                let pool = self.pools.get(r.pool.get_ref())?.clone();
                Some((r.prefix.get_ref().clone(), pool))
            })
            .collect();
        table.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
        let has_default = !s.upstream.is_empty();
        layer.route(move |req| {
            let path = req.uri().path();
            let hit = table.iter().find(|(prefix, _)| {
                path == prefix.as_str()
                    || path
                        .strip_prefix(prefix.as_str())
                        .is_some_and(|rest| prefix.ends_with('/') || rest.starts_with('/'))
            });
            match hit {
                Some((_, pool)) => {
                    req.set_pool(pool.clone());
                    Ok(())
                }
                None if has_default => Ok(()),
                None => Err(Refusal::new(
                    StatusCode::NOT_FOUND,
                    format!("no route for {path}"),
                )),
            }
        })
    }

    pub(crate) fn header_timeout(&self) -> Duration {
        self.settings
            .header_timeout
            .map_or(Duration::from_secs(10), Positive::get)
    }

    pub(crate) fn shutdown_grace(&self) -> Duration {
        self.settings
            .shutdown_grace
            .map_or(Duration::from_secs(10), Positive::get)
    }

    /// How long a drain spreads the closing of sessions over: `drain_window`, or half the
    /// grace.
    pub(crate) fn drain_window(&self) -> Duration {
        self.settings
            .drain_window
            .map_or(self.shutdown_grace() / 2, |d| d.0)
            .min(self.shutdown_grace())
    }

    pub(crate) fn shutdown_delay(&self) -> Duration {
        self.settings.shutdown_delay.map_or(Duration::ZERO, |d| d.0)
    }
}

/// A pool from its settings; an error names the member.
fn pool(p: &PoolSettings) -> Result<UpstreamPool, String> {
    let mut pool =
        UpstreamPool::new(p.upstream.iter().map(|m| m.0.clone())).map_err(|e| e.to_string())?;
    if let Some(b) = &p.balance {
        pool = pool.balance(b.0.clone());
    }
    if let Some(n) = p.max_tries {
        pool = pool.max_tries(n.get() as usize);
    }
    if let Some(n) = p.max_fails {
        pool = pool.max_fails(n);
    }
    if let Some(d) = p.fail_timeout {
        pool = pool.fail_timeout(d.get());
    }
    if let Some(d) = p.resolve_every {
        pool = pool.resolve_every(d.get());
    }
    if let Some(n) = p.max_member_sessions {
        pool = pool.max_sessions(n);
    }
    if let Some(d) = p.slow_start {
        pool = pool.slow_start(d.0);
    }
    if let Some(rate) = p.rebalance_rate.filter(|r| *r > 0) {
        let mut rebalance = Rebalance::per_second(rate);
        if let Some(percent) = p.rebalance_max_fraction {
            rebalance = rebalance.max_fraction(f64::from(percent.0) / 100.0);
        }
        if let Some(d) = p.rebalance_delay {
            rebalance = rebalance.delay(d.0);
        }
        pool = pool.rebalance(rebalance);
    }
    Ok(pool)
}

/// The edge's certificates: `tls_cert`/`tls_key` first (the default), then `[tls]`'s, chosen
/// by SNI; every file read and checked now, so a problem is one line before anything listens.
fn server_tls(s: &Settings) -> Result<Option<ServerTls>, String> {
    let mut pairs: Vec<(&Path, &Path)> = Vec::new();
    match (&s.tls_cert, &s.tls_key) {
        (Some(cert), Some(key)) => pairs.push((cert, key)),
        (Some(_), None) => return Err("--tls-cert needs --tls-key".into()),
        (None, Some(_)) => return Err("--tls-key needs --tls-cert".into()),
        (None, None) => {}
    }
    if let Some(tls) = &s.tls {
        pairs.extend(
            tls.certificates
                .iter()
                .map(|c| (c.cert.as_path(), c.key.as_path())),
        );
    }
    let Some((&(cert, key), more)) = pairs.split_first() else {
        if s.tls_client_ca.is_some() {
            return Err("--tls-client-ca needs --tls-cert and --tls-key".into());
        }
        return Ok(None);
    };
    let flag = |e: axum_ws_proxy::tls::TlsConfigError| format!("--tls-cert/--tls-key: {e}");
    let mut tls = ServerTls::from_pem_files(cert, key).map_err(flag)?;
    for (cert, key) in more {
        tls = tls
            .certificate_files(cert, key)
            .map_err(|e| format!("tls.certificates: {e}"))?;
    }
    if let Some(ca) = &s.tls_client_ca {
        tls = tls
            .client_ca_file(ca)
            .map_err(|e| format!("--tls-client-ca: {e}"))?;
    }
    Ok(Some(tls))
}

/// The JWT check the settings describe, its key file read now; `None` without a key file.
/// Secrets never appear in an error: only the file's name and what is wrong with it.
fn jwt(s: &Settings) -> Result<Option<JwtAuth>, String> {
    let read = |flag: &str, path: &Path| {
        std::fs::read(path).map_err(|e| format!("--{flag}: cannot read {:?}: {e}", path.display()))
    };
    let named = |flag: &str, path: &Path, e: axum_ws_proxy::jwt::JwtConfigError| {
        format!("--{flag}: {:?}: {e}", path.display())
    };
    let keys = match (
        &s.jwt_hmac_secret_file,
        &s.jwt_public_key_file,
        &s.jwt_jwks_file,
    ) {
        (None, None, None) => {
            let jwt_only = !s.jwt_algorithm.is_empty()
                || s.jwt_issuer.is_some()
                || s.jwt_audience.is_some()
                || s.jwt_cookie.is_some()
                || s.jwt_query_param.is_some()
                || s.jwt_tenant_claim.is_some()
                || s.jwt_tags_claim.is_some()
                || !s.jwt_forward_claim.is_empty();
            if jwt_only {
                return Err("the --jwt-* settings need a key: --jwt-hmac-secret-file, --jwt-public-key-file or --jwt-jwks-file".into());
            }
            return Ok(None);
        }
        (Some(path), None, None) => {
            let flag = "jwt-hmac-secret-file";
            let secret = read(flag, path)?;
            JwtKeys::hmac_secret(secret.trim_ascii()).map_err(|e| named(flag, path, e))?
        }
        (None, Some(path), None) => {
            let flag = "jwt-public-key-file";
            JwtKeys::from_pem(&read(flag, path)?).map_err(|e| named(flag, path, e))?
        }
        (None, None, Some(path)) => {
            let flag = "jwt-jwks-file";
            JwtKeys::from_jwks(&read(flag, path)?).map_err(|e| named(flag, path, e))?
        }
        _ => {
            return Err("give one of --jwt-hmac-secret-file, --jwt-public-key-file and --jwt-jwks-file: HMAC secrets and public keys never mix".into());
        }
    };
    let mut auth = JwtAuth::builder(keys);
    if !s.jwt_algorithm.is_empty() {
        auth = auth.algorithms(s.jwt_algorithm.clone());
    }
    if let Some(iss) = &s.jwt_issuer {
        auth = auth.issuer(iss.clone());
    }
    if let Some(aud) = &s.jwt_audience {
        auth = auth.audience(aud.clone());
    }
    if let Some(leeway) = s.jwt_leeway {
        auth = auth.leeway(leeway.0);
    }
    let mut sources = vec![TokenSource::Bearer];
    if let Some(name) = &s.jwt_cookie {
        sources.push(TokenSource::Cookie(name.clone()));
    }
    if let Some(name) = &s.jwt_query_param {
        sources.push(TokenSource::Query(name.clone()));
    }
    auth = auth.token_sources(sources);
    if let Some(claim) = &s.jwt_subject_claim {
        auth = auth.subject_claim(claim.clone());
    }
    if let Some(claim) = &s.jwt_tenant_claim {
        auth = auth.tenant_claim(claim.clone());
    }
    if let Some(claim) = &s.jwt_tags_claim {
        auth = auth.tags_claim(claim.clone());
    }
    for pair in &s.jwt_forward_claim {
        let (claim, header) = pair
            .split_once('=')
            .filter(|(c, h)| !c.trim().is_empty() && !h.trim().is_empty())
            .ok_or_else(|| format!("--jwt-forward-claim: {pair:?} is not CLAIM=HEADER"))?;
        let header = http::HeaderName::try_from(header.trim())
            .map_err(|_| format!("--jwt-forward-claim: {header:?} is not a header name"))?;
        auth = auth.forward_claim(claim.trim(), header);
    }
    auth.build().map(Some).map_err(|e| format!("--jwt-*: {e}"))
}
