//! Command-line flags. Every problem is one line naming the flag, and exit code 2.

use std::net::SocketAddr;
use std::time::Duration;

use axum_ws_proxy::{Balance, Member, Mode, UpstreamPool, UpstreamTls, WsProxyLayer};

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
}

/// What the command line asks for.
#[derive(Debug)]
pub(crate) enum Command {
    Run(Args),
    Help,
    Version,
}

pub(crate) fn parse(args: impl IntoIterator<Item = String>) -> Result<Command, String> {
    let mut listen = SocketAddr::from(([127, 0, 0, 1], 8080));
    let mut header_timeout = Duration::from_secs(10);
    let mut shutdown_grace = Duration::from_secs(10);
    let mut members: Vec<Member> = Vec::new();
    // Pool and layer settings are applied once the members are known.
    let mut pool_settings: Vec<Box<dyn FnOnce(UpstreamPool) -> UpstreamPool>> = Vec::new();
    let mut layer_settings: Vec<Box<dyn FnOnce(WsProxyLayer) -> WsProxyLayer>> = Vec::new();
    let mut origins: Vec<String> = Vec::new();
    let mut require_origin = false;
    let mut upstream_ca: Option<String> = None;
    let mut insecure_skip_verify = false;
    let mut metrics_listen = None;

    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        // Both `--flag value` and `--flag=value`.
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg, None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        let f = flag.as_str();
        match f {
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            "--listen" => {
                let v = value()?;
                listen = v
                    .parse()
                    .map_err(|_| format!("--listen: invalid address {v:?} (expected IP:PORT)"))?;
            }
            "--upstream" => {
                let v = value()?;
                let member = v
                    .parse::<Member>()
                    .map_err(|e| format!("--upstream: {e}"))?;
                if members.iter().any(|m| m.upstream() == member.upstream()) {
                    return Err(format!("--upstream: {v:?} is listed twice"));
                }
                members.push(member);
            }
            "--balance" => {
                let v = value()?;
                let b = v
                    .parse::<Balance>()
                    .map_err(|e| format!("--balance: {e}"))?;
                pool_settings.push(Box::new(move |p| p.balance(b)));
            }
            "--max-tries" => {
                let n = parse_count(f, &value()?, 1)? as usize;
                pool_settings.push(Box::new(move |p| p.max_tries(n)));
            }
            "--max-fails" => {
                let n = parse_count(f, &value()?, 0)?;
                pool_settings.push(Box::new(move |p| p.max_fails(n)));
            }
            "--max-member-sessions" => {
                let n = parse_count(f, &value()?, 0)? as usize;
                pool_settings.push(Box::new(move |p| p.max_sessions(n)));
            }
            "--fail-timeout" => {
                let d = duration(f, &value()?, false)?;
                pool_settings.push(Box::new(move |p| p.fail_timeout(d)));
            }
            "--resolve-every" => {
                let d = duration(f, &value()?, false)?;
                pool_settings.push(Box::new(move |p| p.resolve_every(d)));
            }
            "--connect-timeout" => {
                let d = duration(f, &value()?, false)?;
                layer_settings.push(Box::new(move |l| l.connect_timeout(d)));
            }
            "--mode" => {
                let v = value()?;
                let mode = match v.as_str() {
                    "frames" => Mode::Frames,
                    "tunnel" => Mode::Tunnel,
                    _ => {
                        return Err(format!(
                            "--mode: invalid mode {v:?} (expected frames or tunnel)"
                        ))
                    }
                };
                layer_settings.push(Box::new(move |l| l.mode(mode)));
            }
            "--ping-interval" => {
                let d = duration(f, &value()?, true)?;
                layer_settings.push(Box::new(move |l| l.ping_interval(d)));
            }
            "--ping-timeout" => {
                let d = duration(f, &value()?, false)?;
                layer_settings.push(Box::new(move |l| l.ping_timeout(d)));
            }
            "--idle-timeout" => {
                let d = duration(f, &value()?, true)?;
                layer_settings.push(Box::new(move |l| l.idle_timeout(d)));
            }
            "--max-lifetime" => {
                let d = duration(f, &value()?, true)?;
                layer_settings.push(Box::new(move |l| l.max_lifetime(d)));
            }
            "--max-message-size" => {
                let v = value()?;
                let n = parse_size(&v).map_err(|e| format!("--max-message-size: {e}"))?;
                layer_settings.push(Box::new(move |l| l.max_message_size(n).max_frame_size(n)));
            }
            "--max-sessions" => {
                let n = parse_count(f, &value()?, 0)? as usize;
                layer_settings.push(Box::new(move |l| l.max_sessions(n)));
            }
            "--allow-origin" => {
                let v = value()?;
                if v.trim().is_empty() {
                    return Err("--allow-origin: empty origin".into());
                }
                origins.push(v);
            }
            "--require-origin" => require_origin = true,
            "--upstream-ca" => upstream_ca = Some(value()?),
            "--insecure-skip-verify" => insecure_skip_verify = true,
            "--metrics-listen" => {
                let v = value()?;
                metrics_listen = Some(v.parse().map_err(|_| {
                    format!("--metrics-listen: invalid address {v:?} (expected IP:PORT)")
                })?);
            }
            "--header-timeout" => header_timeout = duration(f, &value()?, false)?,
            "--shutdown-grace" => shutdown_grace = duration(f, &value()?, false)?,
            other => return Err(format!("unknown flag {other:?} (see --help)")),
        }
    }
    if members.is_empty() {
        return Err("--upstream URL is required (see --help)".into());
    }
    if require_origin && origins.is_empty() {
        return Err("--require-origin needs at least one --allow-origin".into());
    }
    if insecure_skip_verify && upstream_ca.is_some() {
        return Err("--insecure-skip-verify and --upstream-ca exclude each other".into());
    }
    if let Some(path) = upstream_ca {
        let pem = std::fs::read(&path)
            .map_err(|e| format!("--upstream-ca: cannot read {path:?}: {e}"))?;
        let tls = UpstreamTls::with_root_certificates_pem(&pem)
            .map_err(|e| format!("--upstream-ca: {path:?}: {e}"))?;
        layer_settings.push(Box::new(move |l| l.upstream_tls(tls)));
    }
    let mut pool = UpstreamPool::new(members).map_err(|e| format!("--upstream: {e}"))?;
    for apply in pool_settings {
        pool = apply(pool);
    }
    let mut layer = WsProxyLayer::new(pool);
    for apply in layer_settings {
        layer = apply(layer);
    }
    if !origins.is_empty() {
        layer = layer
            .allowed_origins(origins)
            .allow_missing_origin(!require_origin);
    }
    Ok(Command::Run(Args {
        listen,
        layer,
        header_timeout,
        shutdown_grace,
        insecure_skip_verify,
        metrics_listen,
    }))
}

fn duration(flag: &str, v: &str, zero_ok: bool) -> Result<Duration, String> {
    if zero_ok && v == "0" {
        return Ok(Duration::ZERO);
    }
    parse_duration(v).map_err(|e| format!("{flag}: {e}"))
}

/// A whole number of at least `min`.
fn parse_count(flag: &str, v: &str, min: u32) -> Result<u32, String> {
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
