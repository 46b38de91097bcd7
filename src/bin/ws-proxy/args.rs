//! Command-line flags. Every problem is one line naming the flag, and exit code 2.

use std::net::SocketAddr;
use std::time::Duration;

use axum::http::StatusCode;
use axum_ws_proxy::{Balance, Member, Mode, Refusal, UpstreamPool, UpstreamTls, WsProxyLayer};

pub(crate) const USAGE: &str = "\
Usage: ws-proxy --upstream URL [--upstream URL ...] [options]

Proxies WebSocket upgrades (HTTP/1.1, and HTTP/2 extended CONNECT over h2c) to the upstreams;
GET /healthz answers 200 ok. SIGTERM or SIGINT drains sessions with close 1001, then exits 0.

Upstreams:
  --upstream URL              a member, ws://host:port[/prefix][?weight=N] (required, repeatable)
  --balance STRATEGY          least-conn, round-robin, hash:ip, hash:header:NAME,
                              hash:cookie:NAME or hash:query:NAME [default: least-conn]
  --max-tries N               endpoints one upgrade may try [default: all of them]
  --max-fails N               failures that take an endpoint out of rotation (0: never) [default: 1]
  --fail-timeout DURATION     failure window and time out of rotation [default: 10s]
  --resolve-every DURATION    how often host names are resolved again [default: 30s]
  --connect-timeout DURATION  TCP connect + upstream handshake, failover included [default: 10s]
  --upstream-ca FILE          trust only the CA certificates in this PEM file for wss:// upstreams
                              [default: the public webpki roots]
  --insecure-skip-verify      do not verify wss:// upstream certificates (logged loudly)

Sessions:
  --mode MODE                 frames (message by message) or tunnel (bytes spliced after a
                              validated 101; extensions pass end to end) [default: frames]
  --ping-interval DURATION    ping a leg quiet this long; 0 turns keepalive off [default: 30s]
  --ping-timeout DURATION     time a pinged leg has to answer [default: 30s]
  --idle-timeout DURATION     close after this long without data either way [default: 0, off]
  --max-lifetime DURATION     close sessions this old [default: 0, off]
  --max-message-size BYTES    largest message either way, e.g. 65536, 64KiB, 16MiB [default: 16MiB]

Limits and access:
  --max-sessions N            sessions at once; beyond, 503 [default: 0, no limit]
  --max-member-sessions N     sessions at once per upstream endpoint [default: 0, no limit]
  --allow-origin ORIGIN       allowed Origin, exact or https://*.example.com (repeatable)
  --require-origin            refuse upgrades without an Origin header (with --allow-origin)

Configuration:
  --config FILE               read settings (and routes and named pools) from a TOML file;
                              flags given on the command line override it
  --check-config              validate the configuration, print it resolved, and exit

Server:
  --listen ADDR               address to listen on [default: 127.0.0.1:8080]
  --header-timeout DURATION   time a client has to send its request headers [default: 10s]
  --shutdown-grace DURATION   time sessions get to close on shutdown [default: 10s]
  --metrics-listen ADDR       serve Prometheus metrics at http://ADDR/metrics [default: off]
  -h, --help                  print this help
  -V, --version               print the version

Durations: 500ms, 2s, 1m, 1h. Logs go to stderr, filtered by RUST_LOG (default: info).";

#[derive(Debug)]
pub(crate) struct Args {
    pub(crate) listen: SocketAddr,
    pub(crate) layer: WsProxyLayer,
    pub(crate) header_timeout: Duration,
    pub(crate) shutdown_grace: Duration,
    /// Applied once logging is up, so its warning is seen.
    pub(crate) insecure_skip_verify: bool,
    pub(crate) metrics_listen: Option<SocketAddr>,
    /// `prefix -> pool` routes from a config file, longest prefix first (for --check-config).
    pub(crate) routes: Vec<(String, String)>,
}

/// What the command line asks for.
#[derive(Debug)]
pub(crate) enum Command {
    Run(Args),
    /// `--check-config`: validate and print the resolved configuration.
    Check(Args),
    Help,
    Version,
}

type PoolSetting = Box<dyn FnOnce(UpstreamPool) -> UpstreamPool>;
type LayerSetting = Box<dyn FnOnce(WsProxyLayer) -> WsProxyLayer>;

/// Flags that take no value.
pub(crate) const SWITCHES: [&str; 3] = [
    "--require-origin",
    "--insecure-skip-verify",
    "--check-config",
];
/// Flags that take a value.
pub(crate) const VALUE_FLAGS: [&str; 22] = [
    "--upstream",
    "--balance",
    "--max-tries",
    "--max-fails",
    "--fail-timeout",
    "--resolve-every",
    "--connect-timeout",
    "--upstream-ca",
    "--mode",
    "--ping-interval",
    "--ping-timeout",
    "--idle-timeout",
    "--max-lifetime",
    "--max-message-size",
    "--max-sessions",
    "--max-member-sessions",
    "--allow-origin",
    "--listen",
    "--header-timeout",
    "--shutdown-grace",
    "--metrics-listen",
    "--config",
];
/// Flags that may be given several times; on the command line they replace the file's list.
pub(crate) const REPEATABLE: [&str; 2] = ["--upstream", "--allow-origin"];

/// Settings collected from a config file and the command line, in that order.
pub(crate) struct Settings {
    listen: SocketAddr,
    header_timeout: Duration,
    shutdown_grace: Duration,
    metrics_listen: Option<SocketAddr>,
    members: Vec<Member>,
    pool_settings: Vec<PoolSetting>,
    layer_settings: Vec<LayerSetting>,
    origins: Vec<String>,
    require_origin: bool,
    upstream_ca: Option<String>,
    insecure_skip_verify: bool,
    /// Named pools and routes: config file only.
    pub(crate) pools: Vec<(String, UpstreamPool)>,
    pub(crate) routes: Vec<(String, String)>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            header_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(10),
            metrics_listen: None,
            members: Vec::new(),
            pool_settings: Vec::new(),
            layer_settings: Vec::new(),
            origins: Vec::new(),
            require_origin: false,
            upstream_ca: None,
            insecure_skip_verify: false,
            pools: Vec::new(),
            routes: Vec::new(),
        }
    }
}

/// A pool-level setting (also valid inside a config file's `[pools.NAME]`); `None` if `flag`
/// is not one.
pub(crate) fn pool_setting(flag: &str, v: &str) -> Option<Result<PoolSetting, String>> {
    let setting: Result<PoolSetting, String> = match flag {
        "--balance" => v
            .parse::<Balance>()
            .map(|b| Box::new(move |p: UpstreamPool| p.balance(b)) as PoolSetting)
            .map_err(|e| format!("{flag}: {e}")),
        "--max-tries" => parse_count(flag, v, 1)
            .map(|n| Box::new(move |p: UpstreamPool| p.max_tries(n as usize)) as PoolSetting),
        "--max-fails" => parse_count(flag, v, 0)
            .map(|n| Box::new(move |p: UpstreamPool| p.max_fails(n)) as PoolSetting),
        "--max-member-sessions" => parse_count(flag, v, 0)
            .map(|n| Box::new(move |p: UpstreamPool| p.max_sessions(n as usize)) as PoolSetting),
        "--fail-timeout" => duration(flag, v, false)
            .map(|d| Box::new(move |p: UpstreamPool| p.fail_timeout(d)) as PoolSetting),
        "--resolve-every" => duration(flag, v, false)
            .map(|d| Box::new(move |p: UpstreamPool| p.resolve_every(d)) as PoolSetting),
        _ => return None,
    };
    Some(setting)
}

/// A pool member, refusing one listed twice in `members`.
pub(crate) fn member(v: &str, members: &[Member]) -> Result<Member, String> {
    let member = v
        .parse::<Member>()
        .map_err(|e| format!("--upstream: {e}"))?;
    if members.iter().any(|m| m.upstream() == member.upstream()) {
        return Err(format!("--upstream: {v:?} is listed twice"));
    }
    Ok(member)
}

impl Settings {
    /// Applies one setting; `value` is `None` for switches.
    pub(crate) fn apply(&mut self, flag: &str, value: Option<String>) -> Result<(), String> {
        if !SWITCHES.contains(&flag) && !VALUE_FLAGS.contains(&flag) {
            return Err(format!("unknown flag {flag:?} (see --help)"));
        }
        if SWITCHES.contains(&flag) {
            match flag {
                "--require-origin" => self.require_origin = true,
                "--insecure-skip-verify" => self.insecure_skip_verify = true,
                _ => {}
            }
            return Ok(());
        }
        let v = value.ok_or_else(|| format!("{flag} needs a value"))?;
        if let Some(setting) = pool_setting(flag, &v) {
            self.pool_settings.push(setting?);
            return Ok(());
        }
        let f = flag;
        match f {
            "--listen" => {
                self.listen = v
                    .parse()
                    .map_err(|_| format!("--listen: invalid address {v:?} (expected IP:PORT)"))?;
            }
            "--upstream" => {
                let m = member(&v, &self.members)?;
                self.members.push(m);
            }
            "--connect-timeout" => {
                let d = duration(f, &v, false)?;
                self.layer_settings
                    .push(Box::new(move |l| l.connect_timeout(d)));
            }
            "--mode" => {
                let mode = match v.as_str() {
                    "frames" => Mode::Frames,
                    "tunnel" => Mode::Tunnel,
                    _ => {
                        return Err(format!(
                            "--mode: invalid mode {v:?} (expected frames or tunnel)"
                        ))
                    }
                };
                self.layer_settings.push(Box::new(move |l| l.mode(mode)));
            }
            "--ping-interval" => {
                let d = duration(f, &v, true)?;
                self.layer_settings
                    .push(Box::new(move |l| l.ping_interval(d)));
            }
            "--ping-timeout" => {
                let d = duration(f, &v, false)?;
                self.layer_settings
                    .push(Box::new(move |l| l.ping_timeout(d)));
            }
            "--idle-timeout" => {
                let d = duration(f, &v, true)?;
                self.layer_settings
                    .push(Box::new(move |l| l.idle_timeout(d)));
            }
            "--max-lifetime" => {
                let d = duration(f, &v, true)?;
                self.layer_settings
                    .push(Box::new(move |l| l.max_lifetime(d)));
            }
            "--max-message-size" => {
                let n = parse_size(&v).map_err(|e| format!("--max-message-size: {e}"))?;
                self.layer_settings
                    .push(Box::new(move |l| l.max_message_size(n).max_frame_size(n)));
            }
            "--max-sessions" => {
                let n = parse_count(f, &v, 0)? as usize;
                self.layer_settings
                    .push(Box::new(move |l| l.max_sessions(n)));
            }
            "--allow-origin" => {
                if v.trim().is_empty() {
                    return Err("--allow-origin: empty origin".into());
                }
                self.origins.push(v);
            }
            "--upstream-ca" => self.upstream_ca = Some(v),
            "--metrics-listen" => {
                self.metrics_listen = Some(v.parse().map_err(|_| {
                    format!("--metrics-listen: invalid address {v:?} (expected IP:PORT)")
                })?);
            }
            "--header-timeout" => self.header_timeout = duration(f, &v, false)?,
            "--shutdown-grace" => self.shutdown_grace = duration(f, &v, false)?,
            other => return Err(format!("unknown flag {other:?} (see --help)")),
        }
        Ok(())
    }

    pub(crate) fn finish(self) -> Result<Args, String> {
        if self.members.is_empty() && self.routes.is_empty() {
            return Err("--upstream URL is required (see --help)".into());
        }
        if self.require_origin && self.origins.is_empty() {
            return Err("--require-origin needs at least one --allow-origin".into());
        }
        if self.insecure_skip_verify && self.upstream_ca.is_some() {
            return Err("--insecure-skip-verify and --upstream-ca exclude each other".into());
        }
        let mut layer_settings = self.layer_settings;
        if let Some(path) = self.upstream_ca {
            let pem = std::fs::read(&path)
                .map_err(|e| format!("--upstream-ca: cannot read {path:?}: {e}"))?;
            let tls = UpstreamTls::with_root_certificates_pem(&pem)
                .map_err(|e| format!("--upstream-ca: {path:?}: {e}"))?;
            layer_settings.push(Box::new(move |l| l.upstream_tls(tls)));
        }
        let mut pool = UpstreamPool::new(self.members).map_err(|e| format!("--upstream: {e}"))?;
        for apply in self.pool_settings {
            pool = apply(pool);
        }
        let mut layer = WsProxyLayer::new(pool.clone());
        for apply in layer_settings {
            layer = apply(layer);
        }
        if !self.origins.is_empty() {
            layer = layer
                .allowed_origins(self.origins)
                .allow_missing_origin(!self.require_origin);
        }
        let mut routes = self.routes;
        if !routes.is_empty() {
            // Longest prefix first; unmatched paths use the default pool, if it has members.
            routes.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
            let table: Vec<(String, UpstreamPool)> = routes
                .iter()
                .filter_map(|(prefix, name)| {
                    let pool = self.pools.iter().find(|(n, _)| n == name)?.1.clone();
                    Some((prefix.clone(), pool))
                })
                .collect();
            let has_default = !pool.members().is_empty();
            layer = layer.route(move |req| {
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
            });
        }
        Ok(Args {
            listen: self.listen,
            layer,
            header_timeout: self.header_timeout,
            shutdown_grace: self.shutdown_grace,
            insecure_skip_verify: self.insecure_skip_verify,
            metrics_listen: self.metrics_listen,
            routes,
        })
    }
}

pub(crate) fn parse(args: impl IntoIterator<Item = String>) -> Result<Command, String> {
    // `--flag value` and `--flag=value`, split into (flag, inline value) pairs first.
    let mut flags: Vec<(String, Option<String>)> = Vec::new();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg, None),
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            f if VALUE_FLAGS.contains(&f) => {
                let value = inline.or_else(|| args.next());
                flags.push((flag, value));
            }
            // Switches, and unknown flags (refused below, without eating the next argument).
            _ => flags.push((flag, inline)),
        }
    }
    let check = flags.iter().any(|(f, _)| f == "--check-config");
    let mut settings = Settings::default();
    if let Some((_, file)) = flags.iter().find(|(f, _)| f == "--config") {
        let file = file.clone().ok_or("--config needs a value")?;
        let on_command_line: Vec<&str> = flags.iter().map(|(f, _)| f.as_str()).collect();
        crate::config_file::load(&file, &mut settings, |flag| {
            // Repeatable flags on the command line replace the file's list.
            REPEATABLE.contains(&flag) && on_command_line.contains(&flag)
        })?;
    }
    for (flag, value) in flags {
        if flag != "--config" {
            settings.apply(&flag, value)?;
        }
    }
    let args = settings.finish()?;
    Ok(if check {
        Command::Check(args)
    } else {
        Command::Run(args)
    })
}

pub(crate) fn duration(flag: &str, v: &str, zero_ok: bool) -> Result<Duration, String> {
    if zero_ok && v == "0" {
        return Ok(Duration::ZERO);
    }
    parse_duration(v).map_err(|e| format!("{flag}: {e}"))
}

/// A whole number of at least `min`.
pub(crate) fn parse_count(flag: &str, v: &str, min: u32) -> Result<u32, String> {
    match v.parse::<u32>() {
        Ok(n) if n >= min => Ok(n),
        _ => Err(format!(
            "{flag}: invalid number {v:?} (expected a whole number >= {min})"
        )),
    }
}

/// Splits `"64KiB"` into `("64", "KiB")`.
fn number_and_unit(s: &str) -> (&str, &str) {
    s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()))
}

/// `500ms`, `2s`, `1m`, `1h`; a bare number is seconds.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = number_and_unit(s);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?} (expected e.g. 500ms, 2s, 1m)"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => return Err(format!("invalid duration {s:?} (units: ms, s, m, h)")),
    };
    if d.is_zero() {
        return Err(format!("duration {s:?} must be more than zero"));
    }
    Ok(d)
}

/// A byte count: `65536`, `64KiB`, `16MiB` (also `k`/`KB`/`M`/`MB`, all powers of 1024).
pub(crate) fn parse_size(s: &str) -> Result<usize, String> {
    let (num, unit) = number_and_unit(s);
    let n: usize = num
        .parse()
        .map_err(|_| format!("invalid size {s:?} (expected e.g. 65536, 64KiB, 16MiB)"))?;
    let mult: usize = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("invalid size {s:?} (units: KiB, MiB, GiB)")),
    };
    match n.checked_mul(mult) {
        Some(0) => Err(format!("size {s:?} must be more than zero")),
        Some(v) => Ok(v),
        None => Err(format!("size {s:?} is too large")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Args, String> {
        match parse(args.iter().map(|s| s.to_string()))? {
            Command::Run(a) => Ok(a),
            other => Err(format!("{other:?}")),
        }
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("2 s").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("ms").is_err());
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("16MiB"), Ok(16 << 20));
        assert!(parse_size("12XB").is_err());
        assert!(parse_size("99999999999999999999").is_err());
        assert_eq!(duration("--ping-interval", "0", true), Ok(Duration::ZERO));
        assert!(duration("--ping-timeout", "0", false).is_err());
    }

    #[test]
    fn flags() {
        let a = run(&[
            "--upstream",
            "ws://h:1",
            "--listen=0.0.0.0:9",
            "--header-timeout",
            "2s",
        ])
        .unwrap();
        assert_eq!(a.listen.port(), 9);
        assert_eq!(a.header_timeout, Duration::from_secs(2));
        assert!(run(&[]).unwrap_err().contains("--upstream URL is required"));
        assert!(run(&["--upstream"]).unwrap_err().contains("needs a value"));
        assert!(run(&["--upstream", "ws//x"])
            .unwrap_err()
            .starts_with("--upstream: invalid upstream URL"));
        assert!(run(&["--bogus"])
            .unwrap_err()
            .contains("unknown flag \"--bogus\""));
        let a = run(&[
            "--upstream",
            "ws://a:1",
            "--upstream",
            "ws://b:1?weight=3",
            "--balance",
            "hash:cookie:sid",
        ])
        .unwrap();
        assert_eq!(a.layer.pool().to_string(), "ws://a:1, ws://b:1?weight=3");
        assert_eq!(
            run(&["--upstream", "ws://a:1", "--upstream", "ws://a:1?weight=2"]).unwrap_err(),
            "--upstream: \"ws://a:1?weight=2\" is listed twice"
        );
        assert!(run(&["--upstream", "ws://a:1", "--max-tries", "0"])
            .unwrap_err()
            .starts_with("--max-tries: invalid number"));
        assert_eq!(
            run(&["--upstream", "ws://a:1", "--require-origin"]).unwrap_err(),
            "--require-origin needs at least one --allow-origin"
        );
    }
}
