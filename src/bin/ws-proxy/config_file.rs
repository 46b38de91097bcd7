//! `ws-proxy --config FILE`: every flag as a TOML key (`connect_timeout = "2s"` for
//! `--connect-timeout 2s`; lists for repeatable flags; `true` for switches), plus named pools and
//! path-prefix routes. Unknown keys and invalid values are errors naming the file, line and key.

use std::collections::BTreeMap;

use axum_ws_proxy::UpstreamPool;
use serde::Deserialize;
use toml::{Spanned, Value};

use crate::args::{self, Settings, REPEATABLE};

macro_rules! top_level_keys {
    ($($key:ident),* $(,)?) => {
        /// The file, as written: every key optional, anything else refused.
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct File {
            $( $key: Option<Spanned<Value>>, )*
            pools: Option<BTreeMap<String, BTreeMap<String, Spanned<Value>>>>,
            routes: Option<Vec<Spanned<Route>>>,
        }

        impl File {
            /// The top-level settings, in the order of the flags' help.
            fn settings(&self) -> Vec<(&'static str, &Spanned<Value>)> {
                let mut out = Vec::new();
                $( if let Some(v) = &self.$key { out.push((stringify!($key), v)); } )*
                out
            }
        }
    };
}

top_level_keys!(
    upstream,
    balance,
    max_tries,
    max_fails,
    fail_timeout,
    resolve_every,
    connect_timeout,
    upstream_ca,
    insecure_skip_verify,
    mode,
    ping_interval,
    ping_timeout,
    idle_timeout,
    max_lifetime,
    max_message_size,
    max_sessions,
    max_member_sessions,
    allow_origin,
    require_origin,
    listen,
    header_timeout,
    shutdown_grace,
    metrics_listen,
);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Route {
    prefix: Spanned<String>,
    pool: Spanned<String>,
}

/// Reads `path` into `settings`. `overridden(flag)` says a repeatable flag is given on the
/// command line, whose list then replaces the file's.
pub(crate) fn load(
    path: &str,
    settings: &mut Settings,
    overridden: impl Fn(&str) -> bool,
) -> Result<(), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("--config: cannot read {path:?}: {e}"))?;
    let line = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
    let file: File = toml::from_str(&text).map_err(|e| {
        let at = e.span().map_or(1, |s| line(s.start));
        format!("{path}:{at}: {}", e.message().trim())
    })?;
    let fail = |key: &str, at: usize, msg: String| {
        // "--flag: problem" -> "problem": the key is named already.
        let msg = msg
            .split_once(": ")
            .filter(|(f, _)| f.starts_with("--"))
            .map_or(msg.clone(), |(_, m)| m.to_owned());
        format!("{path}:{}: {key}: {msg}", line(at))
    };

    for (key, value) in file.settings() {
        let flag = format!("--{}", key.replace('_', "-"));
        if overridden(&flag) {
            continue;
        }
        for item in values(&flag, value.get_ref()).map_err(|m| fail(key, value.span().start, m))? {
            settings
                .apply(&flag, item)
                .map_err(|m| fail(key, value.span().start, m))?;
        }
    }

    for (name, keys) in file.pools.unwrap_or_default() {
        let mut members = Vec::new();
        let mut tuning = Vec::new();
        for (key, value) in &keys {
            let flag = format!("--{}", key.replace('_', "-"));
            let where_ = format!("pools.{name}.{key}");
            let at = value.span().start;
            for item in values(&flag, value.get_ref()).map_err(|m| fail(&where_, at, m))? {
                let item = item.unwrap_or_default();
                if flag == "--upstream" {
                    members.push(args::member(&item, &members).map_err(|m| fail(&where_, at, m))?);
                } else if let Some(setting) = args::pool_setting(&flag, &item) {
                    tuning.push(setting.map_err(|m| fail(&where_, at, m))?);
                } else {
                    return Err(fail(&where_, at, "not a pool setting (upstream, balance, max_tries, max_fails, fail_timeout, resolve_every, max_member_sessions)".into()));
                }
            }
        }
        if members.is_empty() {
            return Err(format!(
                "{path}: pools.{name}: a pool needs at least one upstream"
            ));
        }
        let mut pool =
            UpstreamPool::new(members).map_err(|e| format!("{path}: pools.{name}: {e}"))?;
        for apply in tuning {
            pool = apply(pool);
        }
        settings.pools.push((name, pool));
    }

    for route in file.routes.unwrap_or_default() {
        let route = route.into_inner();
        let prefix = route.prefix.get_ref();
        if !prefix.starts_with('/') {
            return Err(fail(
                "routes.prefix",
                route.prefix.span().start,
                format!("{prefix:?} must start with /"),
            ));
        }
        let pool = route.pool.get_ref();
        if !settings.pools.iter().any(|(n, _)| n == pool) {
            return Err(fail(
                "routes.pool",
                route.pool.span().start,
                format!("no pool named {pool:?} (define [pools.{pool}])"),
            ));
        }
        settings.routes.push((prefix.clone(), pool.clone()));
    }
    Ok(())
}

/// A TOML value as flag values: a string or number is one value, a list one per item (only
/// for repeatable flags), `true` a switch given (`None`), `false` nothing.
fn values(flag: &str, value: &Value) -> Result<Vec<Option<String>>, String> {
    match value {
        Value::String(s) => Ok(vec![Some(s.clone())]),
        Value::Integer(n) => Ok(vec![Some(n.to_string())]),
        Value::Boolean(true) => Ok(vec![None]),
        Value::Boolean(false) => Ok(Vec::new()),
        Value::Array(items) if REPEATABLE.contains(&flag) || flag == "--upstream" => items
            .iter()
            .map(|i| match i {
                Value::String(s) => Ok(Some(s.clone())),
                other => Err(format!(
                    "expected a list of strings, found {}",
                    other.type_str()
                )),
            })
            .collect(),
        other => Err(format!("unexpected {} value", other.type_str())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The flags and the file's keys are listed separately: every flag must be a key, and
    /// every key a flag, so neither can drift.
    #[test]
    fn every_flag_is_a_file_key_and_back() {
        let flags: Vec<&str> = args::VALUE_FLAGS
            .iter()
            .chain(args::SWITCHES.iter())
            .copied()
            .filter(|f| !matches!(*f, "--config" | "--check-config"))
            .collect();
        let mut text = String::new();
        for flag in &flags {
            text.push_str(&format!(
                "{} = 1\n",
                flag.trim_start_matches("--").replace('-', "_")
            ));
        }
        let file: File = toml::from_str(&text).expect("every flag is a file key");
        let keys: Vec<String> = file
            .settings()
            .iter()
            .map(|(k, _)| format!("--{}", k.replace('_', "-")))
            .collect();
        assert_eq!(
            keys.len(),
            flags.len(),
            "a file key without a flag: {keys:?}"
        );
    }
}
