//! The PROXY protocol header (v1 text, v2 binary) at the start of a connection, read without
//! consuming a byte past it: what follows belongs to HTTP, on the socket itself (so tunnels
//! can still splice).

use std::io;
use std::net::SocketAddr;

use ppp::v1::Addresses as V1;
use ppp::v2::{Addresses as V2, Command};
use ppp::{HeaderResult, PartialResult};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Longest header accepted: v1 is at most 107 bytes; v2 carries TLVs (AWS NLB adds a few).
pub(crate) const MAX_HEADER: usize = 4096;

/// Reads the header; the client's address, or `None` for `LOCAL`/`UNKNOWN` (health checks).
///
/// Bytes are peeked, and consumed only while they are known to be header bytes: an
/// incomplete header means everything so far is header; a complete one says its length.
pub(crate) async fn read(tcp: &mut TcpStream) -> io::Result<Option<SocketAddr>> {
    let mut header = Vec::new();
    let mut peeked = [0u8; MAX_HEADER];
    loop {
        let room = MAX_HEADER - header.len();
        if room == 0 {
            return Err(invalid(format!("longer than {MAX_HEADER} bytes")));
        }
        let n = tcp.peek(&mut peeked[..room]).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before a PROXY protocol header",
            ));
        }
        let mut probe = header.clone();
        probe.extend_from_slice(&peeked[..n]);
        match parse(&probe) {
            Parsed::Incomplete => {
                // All of it is header: take it, so the next peek waits for new bytes.
                tcp.read_exact(&mut peeked[..n]).await?;
                header.extend_from_slice(&peeked[..n]);
            }
            Parsed::Complete { len, client } => {
                let rest = len - header.len();
                tcp.read_exact(&mut peeked[..rest]).await?;
                return Ok(client);
            }
            Parsed::Invalid(why) => return Err(invalid(why)),
        }
    }
}

fn invalid(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

#[derive(Debug, PartialEq)]
pub(crate) enum Parsed {
    Incomplete,
    Complete {
        /// Bytes of the header, from the start of `input`.
        len: usize,
        client: Option<SocketAddr>,
    },
    Invalid(String),
}

/// What the start of a connection says, as far as it goes.
pub(crate) fn parse(input: &[u8]) -> Parsed {
    let result = HeaderResult::parse(input);
    if result.is_incomplete() {
        return Parsed::Incomplete;
    }
    match result {
        HeaderResult::V1(Ok(h)) => Parsed::Complete {
            len: h.header.len(),
            client: match h.addresses {
                V1::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                V1::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                V1::Unknown => None,
            },
        },
        HeaderResult::V2(Ok(h)) => Parsed::Complete {
            len: h.len(),
            client: match (h.command, h.addresses) {
                (Command::Local, _) => None,
                (Command::Proxy, V2::IPv4(a)) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                (Command::Proxy, V2::IPv6(a)) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                // Unix sockets and unspecified families carry no client address to use.
                (Command::Proxy, _) => None,
            },
        },
        HeaderResult::V1(Err(e)) => Parsed::Invalid(format!("invalid: {e}")),
        HeaderResult::V2(Err(e)) => Parsed::Invalid(format!("invalid: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_stops_at_its_line_end() {
        let input = b"PROXY TCP4 198.51.100.7 10.0.0.1 50000 8080\r\nGET / HTTP/1.1\r\n";
        assert_eq!(
            parse(input),
            Parsed::Complete {
                len: 45,
                client: Some("198.51.100.7:50000".parse().unwrap())
            }
        );
        assert_eq!(parse(&input[..20]), Parsed::Incomplete);
        assert!(matches!(
            parse(b"PROXY UNKNOWN\r\n"),
            Parsed::Complete { client: None, .. }
        ));
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\n\r\n"),
            Parsed::Invalid(_)
        ));
    }

    #[test]
    fn v2_says_its_length() {
        let client: SocketAddr = "[2001:db8::7]:443".parse().unwrap();
        let server: SocketAddr = "[2001:db8::1]:8080".parse().unwrap();
        let header = ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Stream,
            (client, server),
        )
        .build()
        .unwrap();
        let mut input = header.clone();
        input.extend_from_slice(b"GET / HTTP/1.1\r\n");
        assert_eq!(
            parse(&input),
            Parsed::Complete {
                len: header.len(),
                client: Some(client)
            }
        );
        assert_eq!(parse(&header[..10]), Parsed::Incomplete);
    }
}
