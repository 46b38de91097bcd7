//! How a pool picks a member for a new session.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use http::header::{HeaderMap, HeaderName, COOKIE};
use http::Uri;

/// The balancing strategy of an [`UpstreamPool`](crate::upstream::UpstreamPool).
///
/// Parsed from the `--balance` forms: `least-conn`, `round-robin`, `hash:ip`,
/// `hash:header:NAME`, `hash:cookie:NAME`, `hash:query:NAME`.
///
/// ```
/// use axum_ws_proxy::upstream::{Balance, HashKey};
///
/// let b: Balance = "hash:header:x-user-id".parse()?;
/// assert_eq!(b, Balance::Hash(HashKey::Header("x-user-id".parse().unwrap())));
/// assert_eq!(Balance::default(), Balance::LeastConn);
/// # Ok::<(), axum_ws_proxy::upstream::ParseBalanceError>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Balance {
    /// The member with the fewest live sessions relative to its weight; ties go round-robin.
    /// The default: sessions last hours, so what matters is how many each member holds now,
    /// not how many it was given (HAProxy's advice for long sessions).
    #[default]
    LeastConn,
    /// Smooth weighted round-robin (nginx's algorithm): over a cycle of total-weight sessions,
    /// each member gets exactly its weight, interleaved.
    RoundRobin,
    /// Consistent hashing on a key from the request (weighted rendezvous hashing): every proxy
    /// replica with the same member list sends a key to the same member, and adding or removing
    /// one of N members moves only about 1/N of the keys. A request without the key falls back
    /// to least-conn.
    Hash(HashKey),
}

/// Where [`Balance::Hash`] takes its key from.
///
/// ```
/// use axum_ws_proxy::http::HeaderName;
/// use axum_ws_proxy::upstream::{Balance, HashKey};
///
/// let by_user: Balance = "hash:header:x-user-id".parse()?;
/// assert_eq!(by_user, Balance::Hash(HashKey::Header(HeaderName::from_static("x-user-id"))));
/// assert_eq!(Balance::Hash(HashKey::Cookie("sid".into())).to_string(), "hash:cookie:sid");
/// # Ok::<(), axum_ws_proxy::upstream::ParseBalanceError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HashKey {
    /// The client's IP address (from axum's `ConnectInfo<SocketAddr>`).
    ClientIp,
    /// The first value of a request header, e.g. `x-user-id`.
    Header(HeaderName),
    /// A cookie's value, e.g. `sid` (Socket.IO-style sticky sessions).
    Cookie(String),
    /// A query parameter's raw (still percent-encoded) value, e.g. `room`.
    Query(String),
}

impl HashKey {
    /// The key's bytes in this request, if it has one.
    pub(crate) fn extract(
        &self,
        headers: &HeaderMap,
        uri: &Uri,
        client: Option<SocketAddr>,
    ) -> Option<Vec<u8>> {
        match self {
            HashKey::ClientIp => client.map(|a| a.ip().to_string().into_bytes()),
            HashKey::Header(name) => headers.get(name).map(|v| v.as_bytes().to_vec()),
            HashKey::Cookie(name) => cookie_value(headers, name).map(|v| v.as_bytes().to_vec()),
            HashKey::Query(name) => uri
                .query()?
                .split('&')
                .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_bytes().to_vec()),
        }
    }
}

/// The raw value of cookie `name`, from any `Cookie` header (the first, if several).
pub(crate) fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

impl fmt::Display for Balance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Balance::LeastConn => f.write_str("least-conn"),
            Balance::RoundRobin => f.write_str("round-robin"),
            Balance::Hash(HashKey::ClientIp) => f.write_str("hash:ip"),
            Balance::Hash(HashKey::Header(h)) => write!(f, "hash:header:{h}"),
            Balance::Hash(HashKey::Cookie(c)) => write!(f, "hash:cookie:{c}"),
            Balance::Hash(HashKey::Query(q)) => write!(f, "hash:query:{q}"),
        }
    }
}

impl FromStr for Balance {
    type Err = ParseBalanceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseBalanceError(s.to_owned());
        let nonempty = |v: &str| {
            if v.is_empty() {
                Err(err())
            } else {
                Ok(v.to_owned())
            }
        };
        Ok(match s.split_once(':') {
            None if s == "least-conn" => Balance::LeastConn,
            None if s == "round-robin" => Balance::RoundRobin,
            Some(("hash", "ip")) => Balance::Hash(HashKey::ClientIp),
            Some(("hash", key)) => match key.split_once(':') {
                Some(("header", h)) => {
                    Balance::Hash(HashKey::Header(h.parse().map_err(|_| err())?))
                }
                Some(("cookie", c)) => Balance::Hash(HashKey::Cookie(nonempty(c)?)),
                Some(("query", q)) => Balance::Hash(HashKey::Query(nonempty(q)?)),
                _ => return Err(err()),
            },
            _ => return Err(err()),
        })
    }
}

/// A balancing strategy that could not be parsed.
///
/// ```
/// use axum_ws_proxy::upstream::Balance;
///
/// let err = "fastest".parse::<Balance>().unwrap_err();
/// assert_eq!(err.input(), "fastest");
/// assert!(err.to_string().starts_with("invalid balancing strategy \"fastest\" (expected least-conn"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseBalanceError(String);

impl ParseBalanceError {
    /// The text that did not parse.
    pub fn input(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ParseBalanceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid balancing strategy {:?} (expected least-conn, round-robin, hash:ip, \
             hash:header:NAME, hash:cookie:NAME or hash:query:NAME)",
            self.0
        )
    }
}

impl std::error::Error for ParseBalanceError {}

/// FNV-1a, 64 bits: fixed across processes and Rust versions, so replicas agree.
pub(crate) fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

pub(crate) const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// splitmix64's finaliser: spreads FNV's weak low bits over the whole word.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Weighted rendezvous score of an endpoint (identified by `seed`, the FNV state of its id)
/// for `key`: the highest score wins. `-w / ln(u)` with `u` uniform in (0, 1) makes each
/// endpoint win in proportion to its weight, and removing one only moves the keys it won.
pub(crate) fn rendezvous_score(seed: u64, key: &[u8], weight: u32) -> f64 {
    let h = mix(fnv1a(fnv1a(seed, &[0xff]), key));
    let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -f64::from(weight) / u.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        for s in [
            "least-conn",
            "round-robin",
            "hash:ip",
            "hash:header:x-user-id",
            "hash:cookie:sid",
            "hash:query:room",
        ] {
            assert_eq!(s.parse::<Balance>().unwrap().to_string(), s);
        }
        for bad in [
            "",
            "random",
            "hash",
            "hash:",
            "hash:cookie:",
            "hash:header:bad header",
            "hash:body:x",
        ] {
            assert!(bad.parse::<Balance>().is_err(), "{bad}");
        }
    }

    #[test]
    fn extracts_keys() {
        let mut h = HeaderMap::new();
        h.insert("x-user-id", "u42".parse().unwrap());
        h.append(COOKIE, "a=1; sid=s-9".parse().unwrap());
        let uri: Uri = "/chat?x=1&room=r%207&y".parse().unwrap();
        let ip = Some(SocketAddr::from(([10, 0, 0, 9], 5555)));
        let get = |k: HashKey| {
            k.extract(&h, &uri, ip)
                .map(|v| String::from_utf8(v).unwrap())
        };
        assert_eq!(get(HashKey::ClientIp).as_deref(), Some("10.0.0.9"));
        assert_eq!(
            get(HashKey::Header("x-user-id".parse().unwrap())).as_deref(),
            Some("u42")
        );
        assert_eq!(get(HashKey::Cookie("sid".into())).as_deref(), Some("s-9"));
        assert_eq!(get(HashKey::Query("room".into())).as_deref(), Some("r%207"));
        assert_eq!(get(HashKey::Query("y".into())).as_deref(), Some(""));
        assert_eq!(get(HashKey::Query("nope".into())), None);
        assert_eq!(get(HashKey::Cookie("nope".into())), None);
    }

    #[test]
    fn rendezvous_follows_weights() {
        let seeds: Vec<u64> = (0..3).map(|i: u8| fnv1a(FNV_OFFSET, &[i])).collect();
        let weights = [1, 2, 5];
        let mut wins = [0u32; 3];
        for k in 0..16_000u32 {
            let key = k.to_le_bytes();
            let best = (0..3)
                .max_by(|&a, &b| {
                    rendezvous_score(seeds[a], &key, weights[a])
                        .total_cmp(&rendezvous_score(seeds[b], &key, weights[b]))
                })
                .unwrap();
            wins[best] += 1;
        }
        // Expected 2000, 4000, 10000.
        assert!((1700..2300).contains(&wins[0]), "{wins:?}");
        assert!((3600..4400).contains(&wins[1]), "{wins:?}");
        assert!((9500..10500).contains(&wins[2]), "{wins:?}");
    }
}
