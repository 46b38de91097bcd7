//! Command-line flags. Every problem is one line naming the flag, and exit code 2.

use std::net::SocketAddr;
use std::time::Duration;

use axum_ws_proxy::{Balance, Member, UpstreamPool};

pub(crate) const USAGE: &str = "\
Usage: ws-proxy --upstream URL [--upstream URL ...] [options]

Proxies WebSocket upgrades to the upstreams; GET /healthz answers 200 ok.

Options:
  --upstream URL              a member, ws://host:port[/prefix][?weight=N] (required, repeatable)
  --balance STRATEGY          least-conn, round-robin, hash:ip, hash:header:NAME,
                              hash:cookie:NAME or hash:query:NAME [default: least-conn]
  --max-tries N               endpoints one upgrade may try [default: all of them]
  --max-fails N               failures that take an endpoint out of rotation (0: never) [default: 1]
  --fail-timeout DURATION     failure window and time out of rotation [default: 10s]
  --resolve-every DURATION    how often host names are resolved again [default: 30s]
  --listen ADDR               address to listen on [default: 127.0.0.1:8080]
  --connect-timeout DURATION  TCP connect + upstream handshake, failover included, e.g. 500ms,
                              2s, 1m [default: 10s]
  --max-message-size BYTES    largest message either way, e.g. 1048576, 64KiB, 16MiB [default: 16MiB]
  -h, --help                  print this help
  -V, --version               print the version

Logs go to stderr, filtered by RUST_LOG (default: info).";

#[derive(Debug)]
pub(crate) struct Args {
    pub(crate) listen: SocketAddr,
    pub(crate) pool: UpstreamPool,
    pub(crate) connect_timeout: Option<Duration>,
    pub(crate) max_message_size: Option<usize>,
}

/// What the command line asks for.
#[derive(Debug)]
pub(crate) enum Command {
    Run(Args),
    Help,
    Version,
}

pub(crate) fn parse(args: impl IntoIterator<Item = String>) -> Result<Command, String> {
    let mut listen = None;
    let mut members: Vec<Member> = Vec::new();
    let mut balance = None;
    let mut max_tries = None;
    let mut max_fails = None;
    let mut fail_timeout = None;
    let mut resolve_every = None;
    let mut connect_timeout = None;
    let mut max_message_size = None;
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
        match flag.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            "--listen" => {
                let v = value()?;
                let addr = v
                    .parse()
                    .map_err(|_| format!("--listen: invalid address {v:?} (expected IP:PORT)"))?;
                listen = Some(addr);
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
                balance = Some(
                    v.parse::<Balance>()
                        .map_err(|e| format!("--balance: {e}"))?,
                );
            }
            "--max-tries" => max_tries = Some(parse_count(&flag, &value()?, 1)?),
            "--max-fails" => max_fails = Some(parse_count(&flag, &value()?, 0)?),
            "--fail-timeout" => {
                let v = value()?;
                fail_timeout =
                    Some(parse_duration(&v).map_err(|e| format!("--fail-timeout: {e}"))?);
            }
            "--resolve-every" => {
                let v = value()?;
                resolve_every =
                    Some(parse_duration(&v).map_err(|e| format!("--resolve-every: {e}"))?);
            }
            "--connect-timeout" => {
                let v = value()?;
                connect_timeout =
                    Some(parse_duration(&v).map_err(|e| format!("--connect-timeout: {e}"))?);
            }
            "--max-message-size" => {
                let v = value()?;
                max_message_size =
                    Some(parse_size(&v).map_err(|e| format!("--max-message-size: {e}"))?);
            }
            other => return Err(format!("unknown flag {other:?} (see --help)")),
        }
    }
    if members.is_empty() {
        return Err("--upstream URL is required (see --help)".into());
    }
    let mut pool = UpstreamPool::new(members).map_err(|e| format!("--upstream: {e}"))?;
    if let Some(b) = balance {
        pool = pool.balance(b);
    }
    if let Some(n) = max_tries {
        pool = pool.max_tries(n as usize);
    }
    if let Some(n) = max_fails {
        pool = pool.max_fails(n);
    }
    if let Some(d) = fail_timeout {
        pool = pool.fail_timeout(d);
    }
    if let Some(d) = resolve_every {
        pool = pool.resolve_every(d);
    }
    Ok(Command::Run(Args {
        listen: listen.unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8080))),
        pool,
        connect_timeout,
        max_message_size,
    }))
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
    }

    #[test]
    fn flags() {
        let a = run(&[
            "--upstream",
            "ws://h:1",
            "--listen=0.0.0.0:9",
            "--connect-timeout",
            "2s",
        ])
        .unwrap();
        assert_eq!(a.listen.port(), 9);
        assert_eq!(a.connect_timeout, Some(Duration::from_secs(2)));
        assert!(run(&[]).unwrap_err().contains("--upstream URL is required"));
        assert!(run(&["--upstream"]).unwrap_err().contains("needs a value"));
        assert!(run(&["--upstream", "ws//x"])
            .unwrap_err()
            .starts_with("--upstream: invalid upstream URL"));
        assert!(run(&["--bogus"])
            .unwrap_err()
            .contains("unknown flag \"--bogus\""));
    }
}
