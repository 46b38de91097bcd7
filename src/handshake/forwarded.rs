//! Who the client is, when other proxies stand in front: the trusted-proxy rule for
//! `X-Forwarded-*`.
//!
//! From a peer inside [`WsProxyLayer::trusted_proxies`](crate::WsProxyLayer::trusted_proxies)
//! the incoming `X-Forwarded-For` chain is kept (the peer appended), and its
//! `X-Forwarded-Proto` and `X-Forwarded-Host` pass; the client is the rightmost address of
//! the chain that is not itself trusted (nginx's `real_ip_recursive on`). From any other peer,
//! client-sent `X-Forwarded-For`, `X-Forwarded-Proto`, `X-Forwarded-Host`, `X-Real-IP` and
//! `Forwarded` are dropped and replaced by what the proxy saw. By default no peer is trusted
//! (Caddy's default): nobody can forge an address an upstream believes.

use std::net::IpAddr;

use http::HeaderMap;

use crate::handshake::headers::{list_items, X_FORWARDED_FOR};

/// Networks whose `X-Forwarded-*` headers are believed.
#[derive(Clone, Debug, Default)]
pub(crate) struct TrustedProxies(Vec<ipnet::IpNet>);

impl TrustedProxies {
    pub(crate) fn new(nets: impl IntoIterator<Item = ipnet::IpNet>) -> Self {
        Self(nets.into_iter().collect())
    }

    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 peer may arrive as ::ffff:a.b.c.d on a dual-stack socket.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client's address: the peer, or behind trusted proxies the rightmost address of
    /// the `X-Forwarded-For` chain that is not trusted (the leftmost, if all are).
    pub(crate) fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.contains(peer) {
            return peer;
        }
        let chain: Vec<IpAddr> = headers
            .get_all(X_FORWARDED_FOR)
            .iter()
            .flat_map(list_items)
            .map_while(|item| std::str::from_utf8(item).ok()?.parse::<IpAddr>().ok())
            .collect();
        let mut client = peer;
        for ip in chain.into_iter().rev() {
            client = ip;
            if !self.contains(ip) {
                break;
            }
        }
        client
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted(nets: &[&str]) -> TrustedProxies {
        TrustedProxies::new(nets.iter().map(|n| n.parse().unwrap()))
    }

    fn xff(chain: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR, chain.parse().unwrap());
        h
    }

    #[test]
    fn an_untrusted_peer_is_the_client() {
        let t = trusted(&["10.0.0.0/8"]);
        let peer = "203.0.113.9".parse().unwrap();
        assert_eq!(t.client_ip(peer, &xff("1.2.3.4")), peer);
    }

    #[test]
    fn behind_trusted_proxies_the_rightmost_untrusted_address_is_the_client() {
        let t = trusted(&["10.0.0.0/8", "192.168.1.1/32"]);
        let peer = "10.1.1.1".parse().unwrap();
        let h = xff("6.6.6.6, 198.51.100.7, 192.168.1.1");
        assert_eq!(
            t.client_ip(peer, &h),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        assert!(t.contains("::ffff:10.2.3.4".parse().unwrap()));
        assert_eq!(t.client_ip(peer, &HeaderMap::new()), peer);
    }
}
