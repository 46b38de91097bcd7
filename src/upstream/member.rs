//! A pool member: an upstream URL with a weight, `ws://host:port[/prefix][?weight=N]`.

use std::fmt;
use std::str::FromStr;

use super::url::{ParseUpstreamError, ParseUpstreamErrorKind, Upstream};

/// Largest weight a member may have.
pub const MAX_WEIGHT: u32 = 1000;

/// An upstream in a pool, with its weight (1 by default).
///
/// Parsed from the upstream URL with an optional `?weight=N` (1 to 1000), like nginx's
/// `server host:port weight=N;`. A member whose host is a name stands for every address the
/// name resolves to, each with this weight.
///
/// ```
/// use axum_ws_proxy::upstream::Member;
///
/// let m: Member = "ws://10.0.0.7:3000?weight=3".parse()?;
/// assert_eq!(m.weight(), 3);
/// assert_eq!(m.upstream().port(), 3000);
/// assert_eq!(m.to_string(), "ws://10.0.0.7:3000?weight=3");
/// # Ok::<(), axum_ws_proxy::upstream::ParseUpstreamError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Member {
    upstream: Upstream,
    weight: u32,
}

impl Member {
    /// A member of weight 1.
    pub fn new(upstream: Upstream) -> Self {
        Self {
            upstream,
            weight: 1,
        }
    }

    /// Sets the weight, clamped to 1..=1000.
    #[must_use]
    pub fn weight_of(mut self, weight: u32) -> Self {
        self.weight = weight.clamp(1, MAX_WEIGHT);
        self
    }

    /// The member's URL.
    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    /// The member's weight.
    pub fn weight(&self) -> u32 {
        self.weight
    }
}

impl From<Upstream> for Member {
    fn from(upstream: Upstream) -> Self {
        Self::new(upstream)
    }
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.weight {
            1 => write!(f, "{}", self.upstream),
            w => write!(f, "{}?weight={w}", self.upstream),
        }
    }
}

impl FromStr for Member {
    type Err = ParseUpstreamError;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        let fail = |kind| ParseUpstreamError::new(url, kind);
        let (base, query) = match url.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (url, None),
        };
        let upstream: Upstream = base
            .parse()
            .map_err(|e: ParseUpstreamError| fail(e.kind().clone()))?;
        let mut member = Member::new(upstream);
        for pair in query.into_iter().flat_map(|q| q.split('&')) {
            match pair.split_once('=') {
                Some(("weight", w)) => match w.parse::<u32>() {
                    Ok(n) if (1..=MAX_WEIGHT).contains(&n) => member.weight = n,
                    _ => return Err(fail(ParseUpstreamErrorKind::InvalidWeight(w.to_owned()))),
                },
                _ => return Err(fail(ParseUpstreamErrorKind::UnknownOption(pair.to_owned()))),
            }
        }
        Ok(member)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights() {
        let m: Member = "ws://h:1/p?weight=7".parse().unwrap();
        assert_eq!((m.weight(), m.upstream().path_prefix()), (7, "/p"));
        let err = |s: &str| s.parse::<Member>().unwrap_err().to_string();
        assert_eq!(
            err("ws://h:1?weight=0"),
            r#"invalid upstream URL "ws://h:1?weight=0": invalid weight "0" (expected 1-1000)"#
        );
        assert_eq!(
            err("ws://h:1?max=3"),
            r#"invalid upstream URL "ws://h:1?max=3": unknown option "max=3" (only ?weight=N is supported)"#
        );
        assert_eq!(
            err("ws//h"),
            r#"invalid upstream URL "ws//h": missing "://" after the scheme (expected ws://host:port[/prefix])"#
        );
    }
}
