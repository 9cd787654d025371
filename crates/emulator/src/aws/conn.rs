//! The hop limit: each accepted connection's socket is kept (a duplicate descriptor) by
//! peer address while the connection lives, so the answer to a token `PUT` can leave with
//! the IP TTL (IPv4) or hop limit (IPv6) set to the configured hop limit, as EC2 sends
//! it, and later answers on the same connection with the system default again.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};

use imdsguard_serve::Gate;
use tokio::net::TcpStream;

/// One connection's socket and its TTL before any change.
struct Conn {
    fd: OwnedFd,
    v6: bool,
    default_ttl: Option<u32>,
    limited: bool,
}

/// The open connections of one listener, by peer address.
#[derive(Default)]
pub(crate) struct Conns {
    open: Mutex<HashMap<SocketAddr, Conn>>,
}

/// Removes its connection from the table when the connection ends.
pub(crate) struct ConnGuard {
    conns: Arc<Conns>,
    peer: SocketAddr,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.conns.lock().remove(&self.peer);
    }
}

/// The listener's gate: admits every connection and remembers its socket.
pub(crate) struct ConnGate(pub(crate) Arc<Conns>);

impl Gate for ConnGate {
    type Guard = Option<ConnGuard>;

    fn admit(&self, _peer: SocketAddr) -> Option<Self::Guard> {
        Some(None)
    }

    fn admit_stream(&self, stream: &TcpStream, peer: SocketAddr) -> Option<Self::Guard> {
        let Ok(fd) = stream.as_fd().try_clone_to_owned() else {
            // Out of descriptors: served, without a hop limit.
            return Some(None);
        };
        let v6 = stream.local_addr().is_ok_and(|a| a.is_ipv6());
        let default_ttl = rustix::net::sockopt::ip_ttl(&fd).ok();
        let conn = Conn {
            fd,
            v6,
            default_ttl,
            limited: false,
        };
        self.0.lock().insert(peer, conn);
        Some(Some(ConnGuard {
            conns: self.0.clone(),
            peer,
        }))
    }
}

impl Conns {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Conn>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends what is written next to `peer` with `hops` as its IP TTL / IPv6 hop limit;
    /// false when the connection is unknown or the socket refused.
    pub(crate) fn limit(&self, peer: SocketAddr, hops: u8) -> bool {
        let mut open = self.lock();
        let Some(conn) = open.get_mut(&peer) else {
            return false;
        };
        let set = set_hops(&conn.fd, conn.v6, Some(hops), conn.default_ttl);
        conn.limited |= set;
        set
    }

    /// Restores the system default TTL / hop limit after a limited answer.
    pub(crate) fn unlimit(&self, peer: SocketAddr) {
        let mut open = self.lock();
        if let Some(conn) = open.get_mut(&peer).filter(|c| c.limited) {
            conn.limited = !set_hops(&conn.fd, conn.v6, None, conn.default_ttl);
        }
    }

    /// The IP TTL (IPv4 socket) or unicast hop limit (IPv6 socket) `peer`'s connection
    /// sends with now.
    #[cfg(test)]
    pub(crate) fn hops(&self, peer: SocketAddr) -> Option<u32> {
        let open = self.lock();
        let conn = open.get(&peer)?;
        if conn.v6 {
            rustix::net::sockopt::ipv6_unicast_hops(&conn.fd)
                .ok()
                .map(u32::from)
        } else {
            rustix::net::sockopt::ip_ttl(&conn.fd).ok()
        }
    }
}

/// Sets (`Some`) or resets (`None`) the hop limit. An IPv6 socket sets its unicast hop
/// limit and, for IPv4-mapped peers of a dual-stack socket, its IP TTL too.
fn set_hops(fd: &OwnedFd, v6: bool, hops: Option<u8>, default_ttl: Option<u32>) -> bool {
    use rustix::net::sockopt;
    let ttl = hops.map(u32::from).or(default_ttl);
    let v4_ok = ttl.is_some_and(|t| sockopt::set_ip_ttl(fd, t).is_ok());
    if v6 {
        sockopt::set_ipv6_unicast_hops(fd, hops).is_ok()
    } else {
        v4_ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn a_limited_connection_sends_with_the_hop_limit_until_reset() {
        for addr in ["127.0.0.1:0", "[::1]:0"] {
            let Ok(listener) = TcpListener::bind(addr).await else {
                assert_eq!(addr, "[::1]:0", "IPv4 loopback is always there");
                continue;
            };
            let client = TcpStream::connect(listener.local_addr().unwrap())
                .await
                .unwrap();
            let (stream, peer) = listener.accept().await.unwrap();
            let conns = Arc::new(Conns::default());
            let gate = ConnGate(conns.clone());
            let guard = gate.admit_stream(&stream, peer).unwrap();
            let default = conns.hops(peer).unwrap();
            assert_ne!(default, 3, "{addr}");
            assert!(conns.limit(peer, 3), "{addr}");
            assert_eq!(conns.hops(peer), Some(3), "{addr}");
            conns.unlimit(peer);
            assert_eq!(conns.hops(peer), Some(default), "{addr}");
            assert_eq!(client.local_addr().unwrap(), peer);
            assert!(
                !conns.limit(listener.local_addr().unwrap(), 3),
                "not a served peer"
            );
            drop(guard);
            assert_eq!(conns.hops(peer), None, "forgotten when the connection ends");
        }
    }
}
