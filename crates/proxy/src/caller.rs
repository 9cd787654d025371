//! Callers on the proxy's own host: which hostNetwork pod (or node process) owns the
//! client socket of a connection whose source address is the node's.
//!
//! A hostNetwork pod shares the node's network namespace, so its requests come from the
//! node's address and the pod index cannot name it. The kernel can: the client socket
//! lives in the proxy's namespace, and `NETLINK_SOCK_DIAG`'s exact lookup
//! (`inet_diag_req_v2` with the socket's four-tuple) answers with the socket's cgroup
//! v2 id (`INET_DIAG_CGROUP_ID`, Linux 5.9 and later), the cgroup of the process that
//! created it. That cgroup is a container's, below its pod's directory
//! (`kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<UID>.slice/cri-containerd-<ID>.scope`);
//! a walk of the pod roots under the cgroup v2 mount maps it to its pod-level ancestor,
//! whose id the program maps to the pod ([`HostCallerMap`], from its own scan).
//!
//! The lookup needs the socket's destination as the client wrote it: for a connection
//! the agent's host table redirected to the proxy, the metadata endpoint
//! ([`HostCallerConfig::destinations`]); for a direct one, the proxy's own address. Each
//! candidate is one netlink round trip on a socket of its own (about 9 µs here), whose
//! answer the kernel queues before the send returns (so the receive never waits) and
//! reads into a bounded buffer.
//!
//! The request and answer are written here with `rustix` (safe calls, no `unsafe`):
//! the crates for sock_diag (netlink-packet-sock-diag) do not name `INET_DIAG_CGROUP_ID`
//! and would add three crates for one fixed 72-byte request and one answer.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use imdsguard_core::access::PodInfo;
use imdsguard_core::cgroup::POD_ROOTS;
use imdsguard_core::imds::IMDS_ADDRESS;
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType, netlink};

use crate::Snapshot;

/// Pods by the cgroup v2 id of their pod-level cgroup directory (the inode number of
/// `kubepods.slice/…-pod<UID>.slice`, as a scan of the pod roots reads it).
pub type HostCallerMap = HashMap<u64, Arc<PodInfo>>;

/// Gives a fresh [`HostCallerMap`] (a new scan of the cgroup tree against the current
/// hostNetwork pods). The proxy calls it, off the runtime's workers and at most once a
/// second, when a socket is in a pod cgroup the map does not know (a pod that started
/// after the last scan).
pub type HostCallerSource = Arc<dyn Fn() -> HostCallerMap + Send + Sync>;

/// How the proxy identifies callers on its own host; `None` in
/// [`ProxyConfig::host_callers`](crate::ProxyConfig::host_callers): not at all (a
/// caller the pod index does not know is an unknown source).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostCallerConfig {
    /// The cgroup v2 mount (`/sys/fs/cgroup`): the pod roots are looked for below it.
    pub cgroup_root: PathBuf,
    /// The destinations host callers connect to, as the client wrote them (the
    /// endpoints the agent's host table redirects to the proxy); the proxy's own listen
    /// address is tried after them (a caller connecting to it directly).
    pub destinations: Vec<SocketAddr>,
}

impl HostCallerConfig {
    /// Callers identified through `cgroup_root`, redirected from `169.254.169.254:80`.
    pub fn new(cgroup_root: impl Into<PathBuf>) -> HostCallerConfig {
        HostCallerConfig {
            cgroup_root: cgroup_root.into(),
            destinations: vec![SocketAddr::new(IpAddr::V4(IMDS_ADDRESS), 80)],
        }
    }
}

/// Who is behind a connection from an address the pod index does not know.
#[derive(Debug, Clone)]
pub(crate) enum HostCaller {
    /// A known hostNetwork pod (its socket's cgroup is the pod's or below it).
    Pod { pod: Arc<PodInfo>, cgroup: u64 },
    /// A socket in the pod cgroup tree under no known pod: denied, never the node.
    UnknownPodCgroup { cgroup: u64 },
    /// A socket of this host outside the pod tree (the kubelet, system services).
    Node { cgroup: u64 },
    /// No socket of this host has that four-tuple: the caller is elsewhere.
    NoSocket,
    /// The lookup failed (logged, counted); the caller is treated as unknown.
    Error(String),
}

impl HostCaller {
    /// The metrics label (`imdsguard_proxy_host_caller_lookups_total{result}`).
    pub(crate) fn result(&self) -> &'static str {
        match self {
            HostCaller::Pod { .. } => "pod",
            HostCaller::UnknownPodCgroup { .. } => "unknown-pod-cgroup",
            HostCaller::Node { .. } => "node",
            HostCaller::NoSocket => "no-socket",
            HostCaller::Error(_) => "error",
        }
    }
}

/// The cgroup directories below the pod roots, each with its parent (0 for a pod root).
#[derive(Debug, Default)]
struct Tree {
    parent: HashMap<u64, u64>,
    /// When the walk began, if it read the whole pod tree: a cgroup made before then
    /// that is not in it is outside the pod tree. `None` for a truncated walk (its
    /// directories are still used, its absences are not).
    walked_at: Option<Instant>,
}

/// Most directories a walk reads, and how deep it goes below a pod root (a container's
/// cgroup is 3 deep: QoS class, pod, container).
const WALK_MAX_DIRS: usize = 100_000;
const WALK_MAX_DEPTH: usize = 8;
/// Least time between two walks (or two refreshes of the map).
const RESCAN_INTERVAL: Duration = Duration::from_secs(1);
/// Cgroups known to be outside the pod tree, kept up to this many.
const OUTSIDE_CACHE: usize = 4096;

/// Identifies host callers: the lookup, the walk and its caches. One per proxy.
pub(crate) struct HostCallers {
    config: HostCallerConfig,
    listen: SocketAddr,
    pub(crate) map: Snapshot<HostCallerMap>,
    pub(crate) source: Snapshot<Option<HostCallerSource>>,
    tree: Mutex<Arc<Tree>>,
    /// When the last walk began, whatever came of it (walks are at most a second apart).
    walk_began: Mutex<Option<Instant>>,
    outside: Mutex<HashSet<u64>>,
    /// Held by the one walk (or refresh) in progress; others wait for it.
    walking: tokio::sync::Mutex<()>,
    refreshed_at: Mutex<Option<Instant>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl HostCallers {
    pub(crate) fn new(
        config: HostCallerConfig,
        listen: SocketAddr,
        map: Snapshot<HostCallerMap>,
        source: Snapshot<Option<HostCallerSource>>,
    ) -> HostCallers {
        HostCallers {
            config,
            listen,
            map,
            source,
            tree: Mutex::new(Arc::new(Tree::default())),
            walk_began: Mutex::new(None),
            outside: Mutex::new(HashSet::new()),
            walking: tokio::sync::Mutex::new(()),
            refreshed_at: Mutex::new(None),
        }
    }

    /// The cgroup v2 mount.
    pub(crate) fn root(&self) -> &Path {
        &self.config.cgroup_root
    }

    /// Whether the cgroup root looks like a cgroup v2 mount (it has `cgroup.controllers`).
    pub(crate) fn cgroup2_mounted(&self) -> bool {
        self.config.cgroup_root.join("cgroup.controllers").is_file()
    }

    /// The destinations to try for a client at `peer`: the configured ones, then the
    /// proxy's own address (for a wildcard listen address: the peer's own address and
    /// loopback, where a local client connecting to it lands), of the peer's family.
    fn candidates(&self, peer: SocketAddr) -> Vec<SocketAddr> {
        let v4 = peer.is_ipv4();
        let mut out: Vec<SocketAddr> = self
            .config
            .destinations
            .iter()
            .copied()
            .filter(|d| d.is_ipv4() == v4)
            .collect();
        let port = self.listen.port();
        let listen_ip = self.listen.ip().to_canonical();
        if listen_ip.is_unspecified() {
            out.push(SocketAddr::new(peer.ip(), port));
            out.push(SocketAddr::new(
                if v4 {
                    IpAddr::V4(Ipv4Addr::LOCALHOST)
                } else {
                    IpAddr::V6(Ipv6Addr::LOCALHOST)
                },
                port,
            ));
        } else if listen_ip.is_ipv4() == v4 {
            out.push(SocketAddr::new(listen_ip, port));
        }
        let mut seen = HashSet::new();
        out.retain(|a| seen.insert(*a));
        out
    }

    /// The cgroup v2 id of this host's client socket of a connection from `peer` (the
    /// socket's own cgroup, a container's, not mapped to its pod), `None` when no
    /// socket of this host is that client. Synchronous, no walk: one sock_diag round
    /// trip per candidate destination (the per-source connection limit asks it at
    /// accept).
    pub(crate) fn client_cgroup(&self, peer: SocketAddr) -> Result<Option<u64>, LookupError> {
        let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
        // Inline: each lookup is a few microseconds (the kernel answers within the
        // send, and the receive never waits), cheaper than a hop to a blocking thread.
        let mut found = Ok(None);
        for dst in self.candidates(peer) {
            found = socket_cgroup(peer, dst);
            if !matches!(found, Ok(None)) {
                break;
            }
        }
        found
    }

    /// Who owns the client socket of a connection from `peer` (a request that began at
    /// `since`). Walks the pod tree on a blocking thread (at most once a second) when
    /// the socket's cgroup is not known yet.
    pub(crate) async fn identify(&self, peer: SocketAddr, since: Instant) -> HostCaller {
        let cgroup = match self.client_cgroup(peer) {
            Ok(Some(id)) => id,
            Ok(None) => return HostCaller::NoSocket,
            Err(e) => return HostCaller::Error(e.to_string()),
        };
        self.classify(cgroup, since).await
    }

    /// The caller behind a socket in cgroup `cgroup`.
    pub(crate) async fn classify(&self, cgroup: u64, since: Instant) -> HostCaller {
        if let Some(pod) = self.map.load().get(&cgroup) {
            return HostCaller::Pod {
                pod: pod.clone(),
                cgroup,
            };
        }
        if lock(&self.outside).contains(&cgroup) {
            return HostCaller::Node { cgroup };
        }
        let mut tree = lock(&self.tree).clone();
        if !tree.parent.contains_key(&cgroup) && tree.walked_at.is_none_or(|t| t < since) {
            // A cgroup made after the last walk, or one outside the pod tree: a walk
            // begun after the request tells.
            tree = self.walk_after(since).await;
        }
        if !tree.parent.contains_key(&cgroup) {
            if tree.walked_at.is_some_and(|t| t >= since) {
                let mut outside = lock(&self.outside);
                if outside.len() >= OUTSIDE_CACHE {
                    outside.clear();
                }
                outside.insert(cgroup);
            }
            return HostCaller::Node { cgroup };
        }
        if let Some(pod) = self.pod_of(&tree, cgroup) {
            return HostCaller::Pod { pod, cgroup };
        }
        // In the pod tree under no pod the map knows: perhaps a pod newer than the
        // program's last scan.
        if self.refresh(since).await
            && let Some(pod) = self.pod_of(&tree, cgroup)
        {
            return HostCaller::Pod { pod, cgroup };
        }
        HostCaller::UnknownPodCgroup { cgroup }
    }

    /// The pod whose cgroup is `cgroup` or one of its ancestors.
    fn pod_of(&self, tree: &Tree, cgroup: u64) -> Option<Arc<PodInfo>> {
        let map = self.map.load();
        let mut id = cgroup;
        for _ in 0..=WALK_MAX_DEPTH {
            if let Some(pod) = map.get(&id) {
                return Some(pod.clone());
            }
            match tree.parent.get(&id) {
                Some(&p) if p != 0 => id = p,
                _ => return None,
            }
        }
        None
    }

    /// The tree as walked after `since` (waiting for the walk in progress, and for a
    /// second to pass since the last one).
    async fn walk_after(&self, since: Instant) -> Arc<Tree> {
        let _walking = self.walking.lock().await;
        let current = lock(&self.tree).clone();
        let began = *lock(&self.walk_began);
        if began.is_some_and(|t| t >= since) {
            // Another request's walk began after this one: as good as ours.
            return current;
        }
        if let Some(last) = began {
            let next = last + RESCAN_INTERVAL;
            if next > Instant::now() {
                tokio::time::sleep_until(next.into()).await;
            }
        }
        let root = self.config.cgroup_root.clone();
        let started = Instant::now();
        *lock(&self.walk_began) = Some(started);
        let walked = tokio::task::spawn_blocking(move || walk(&root)).await;
        let tree = match walked {
            Ok(Ok((parent, complete))) => {
                if !complete {
                    tracing::warn!(cgroup_root = %self.config.cgroup_root.display(), max = WALK_MAX_DIRS, "the pod cgroups hold more directories than a walk reads: sockets in the rest are unknown");
                }
                Arc::new(Tree {
                    parent,
                    walked_at: complete.then_some(started),
                })
            }
            // The tree as it was: an error proves nothing about a cgroup's place.
            Ok(Err(e)) => {
                tracing::warn!(cgroup_root = %self.config.cgroup_root.display(), error = %e, "walking the pod cgroups failed");
                return current;
            }
            Err(e) => {
                tracing::warn!(error = %e, "walking the pod cgroups failed");
                return current;
            }
        };
        *lock(&self.tree) = tree.clone();
        tree
    }

    /// Asks the program's source for a fresh map, unless one was asked for after
    /// `since` or less than a second ago (then waits for that second). Whether a
    /// source was asked (now or by another request after `since`).
    async fn refresh(&self, since: Instant) -> bool {
        let Some(source) = (*self.source.load()).clone() else {
            return false;
        };
        let _walking = self.walking.lock().await;
        let last = *lock(&self.refreshed_at);
        if last.is_some_and(|t| t >= since) {
            return true;
        }
        if let Some(last) = last {
            let next = last + RESCAN_INTERVAL;
            if next > Instant::now() {
                tokio::time::sleep_until(next.into()).await;
            }
        }
        let started = Instant::now();
        match tokio::task::spawn_blocking(move || source()).await {
            Ok(map) => {
                self.map.store(map);
                *lock(&self.refreshed_at) = Some(started);
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "refreshing the hostNetwork pods' cgroups failed");
                *lock(&self.refreshed_at) = Some(started);
                false
            }
        }
    }
}

/// The cgroup directories below the pod roots of `root`, each with its parent's id (0
/// for a pod root), and whether that is all of them (the walk is bounded in depth and
/// count). Symlinks are not followed.
fn walk(root: &Path) -> std::io::Result<(HashMap<u64, u64>, bool)> {
    let mut parent = HashMap::new();
    let mut stack: Vec<(PathBuf, u64, usize)> = Vec::new();
    for name in POD_ROOTS {
        let dir = root.join(name);
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => {
                parent.insert(m.ino(), 0);
                stack.push((dir, m.ino(), 0));
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    let mut complete = true;
    while let Some((dir, id, depth)) = stack.pop() {
        if depth >= WALK_MAX_DEPTH {
            // Deeper than the kubelet nests: not read, and the walk is incomplete if
            // there is anything below.
            let deeper = std::fs::read_dir(&dir).is_ok_and(|mut entries| {
                entries.any(|e| e.is_ok_and(|e| e.file_type().is_ok_and(|t| t.is_dir())))
            });
            complete &= !deeper;
            continue;
        }
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            // Removed while we walked: a pod that just ended.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let Ok(entry) = entry else { continue };
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if !kind.is_dir() {
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            if parent.len() >= WALK_MAX_DIRS {
                return Ok((parent, false));
            }
            parent.insert(meta.ino(), id);
            stack.push((entry.path(), meta.ino(), depth + 1));
        }
    }
    Ok((parent, complete))
}

/// Why a socket lookup failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LookupError {
    #[error("sock_diag netlink socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("sock_diag lookup refused: {0}")]
    Refused(std::io::Error),
    #[error("sock_diag answer unreadable: {0}")]
    Answer(&'static str),
    #[error(
        "the kernel's socket answer has no cgroup id (INET_DIAG_CGROUP_ID needs Linux 5.9 or later)"
    )]
    NoCgroupId,
}

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const IPPROTO_TCP: u8 = 6;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const INET_DIAG_CGROUP_ID: u16 = 21;
const TCP_LISTEN: u8 = 10;
const NLMSG_HDRLEN: usize = 16;
const REQUEST_LEN: usize = NLMSG_HDRLEN + 56;
/// `inet_diag_msg`: family, state, timer, retrans, the socket id (48 bytes), expires,
/// rqueue, wqueue, uid, inode.
const DIAG_MSG_LEN: usize = 72;
/// The answer buffer: an answer without extensions is a few hundred bytes.
const ANSWER_MAX: usize = 8192;

static SEQ: AtomicU32 = AtomicU32::new(1);

/// `inet_diag_sockid`: ports big-endian, addresses in network order (IPv4 in the first
/// word), no interface, no cookie (`INET_DIAG_NOCOOKIE`).
fn put_socket_id(out: &mut Vec<u8>, local: SocketAddr, remote: SocketAddr) {
    out.extend_from_slice(&local.port().to_be_bytes());
    out.extend_from_slice(&remote.port().to_be_bytes());
    for a in [local.ip(), remote.ip()] {
        let mut word = [0u8; 16];
        match a {
            IpAddr::V4(v4) => word[..4].copy_from_slice(&v4.octets()),
            IpAddr::V6(v6) => word.copy_from_slice(&v6.octets()),
        }
        out.extend_from_slice(&word);
    }
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(&[0xff; 8]);
}

/// The exact-lookup request for the TCP socket `local` → `remote`.
fn request(seq: u32, local: SocketAddr, remote: SocketAddr) -> Vec<u8> {
    let mut out = Vec::with_capacity(REQUEST_LEN);
    out.extend_from_slice(&(REQUEST_LEN as u32).to_ne_bytes());
    out.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    out.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.push(if local.is_ipv4() { AF_INET } else { AF_INET6 });
    out.push(IPPROTO_TCP);
    out.push(0); // no extensions: the cgroup id comes with every answer
    out.push(0);
    out.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
    put_socket_id(&mut out, local, remote);
    debug_assert_eq!(out.len(), REQUEST_LEN);
    out
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// The (local, remote) addresses of an `inet_diag_msg`, IPv4-mapped ones as IPv4.
fn answer_tuple(body: &[u8]) -> Option<(SocketAddr, SocketAddr)> {
    let port = |at: usize| Some(u16::from_be_bytes(body.get(at..at + 2)?.try_into().ok()?));
    let addr = |at: usize| -> Option<IpAddr> {
        let bytes = body.get(at..at + 16)?;
        Some(match body[0] {
            AF_INET => IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])),
            AF_INET6 => {
                IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?)).to_canonical()
            }
            _ => return None,
        })
    };
    Some((
        SocketAddr::new(addr(8)?, port(4)?),
        SocketAddr::new(addr(24)?, port(6)?),
    ))
}

/// Reads the kernel's answer to [`request`]: `Ok(None)` when no such socket exists
/// (or only a listener or a closing socket matched), else the socket's cgroup id.
fn parse_answer(
    answer: &[u8],
    seq: u32,
    local: SocketAddr,
    remote: SocketAddr,
) -> Result<Option<u64>, LookupError> {
    let bad = LookupError::Answer;
    let len = u32_at(answer, 0).ok_or(bad("short header"))? as usize;
    let kind = u16_at(answer, 4).ok_or(bad("short header"))?;
    if len < NLMSG_HDRLEN || len > answer.len() {
        return Err(bad("bad message length"));
    }
    if u32_at(answer, 8) != Some(seq) {
        return Err(bad("an answer to another request"));
    }
    let body = &answer[NLMSG_HDRLEN..len];
    if kind == NLMSG_ERROR {
        let errno = i32::from_ne_bytes(
            body.get(..4)
                .ok_or(bad("short error"))?
                .try_into()
                .map_err(|_| bad("short error"))?,
        );
        return match -errno {
            0 => Err(bad("an acknowledgement instead of an answer")),
            // ENOENT: no such socket.
            2 => Ok(None),
            e => Err(LookupError::Refused(std::io::Error::from_raw_os_error(e))),
        };
    }
    if kind != SOCK_DIAG_BY_FAMILY || body.len() < DIAG_MSG_LEN {
        return Err(bad("not a socket answer"));
    }
    // The four-tuple must be the one asked for (a socket of the other family with
    // IPv4-mapped addresses is the same socket); a listener is no client.
    if answer_tuple(body) != Some((canonical(local), canonical(remote))) || body[1] == TCP_LISTEN {
        return Ok(None);
    }
    let mut at = DIAG_MSG_LEN;
    while at + 4 <= body.len() {
        let alen = u16_at(body, at).ok_or(bad("short attribute"))? as usize;
        let akind = u16_at(body, at + 2).ok_or(bad("short attribute"))? & 0x3fff;
        if alen < 4 || at + alen > body.len() {
            return Err(bad("bad attribute length"));
        }
        if akind == INET_DIAG_CGROUP_ID {
            let v = body
                .get(at + 4..at + 12)
                .filter(|_| alen == 12)
                .ok_or(bad("cgroup id not 8 bytes"))?;
            return Ok(Some(u64::from_ne_bytes(
                v.try_into().map_err(|_| bad("cgroup id not 8 bytes"))?,
            )));
        }
        at += (alen + 3) & !3;
    }
    // A socket in TIME_WAIT or a request socket: no process behind it any more.
    if matches!(body[1], 6 | 12) {
        return Ok(None);
    }
    Err(LookupError::NoCgroupId)
}

/// The cgroup v2 id of this host's TCP socket bound to `local` and connected to
/// `remote` (both of one family), `None` when there is none.
pub(crate) fn socket_cgroup(
    local: SocketAddr,
    remote: SocketAddr,
) -> Result<Option<u64>, LookupError> {
    if local.is_ipv4() != remote.is_ipv4() {
        return Ok(None);
    }
    let fd = rustix::net::socket_with(
        AddressFamily::NETLINK,
        SocketType::RAW,
        SocketFlags::CLOEXEC,
        Some(netlink::SOCK_DIAG),
    )
    .map_err(std::io::Error::from)?;
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let req = request(seq, local, remote);
    rustix::net::sendto(
        &fd,
        &req,
        SendFlags::empty(),
        &netlink::SocketAddrNetlink::new(0, 0),
    )
    .map_err(std::io::Error::from)?;
    // The kernel handles the request inside `sendto` and queues its answer before it
    // returns: the receive never waits (an empty queue is an error, not a wait).
    let mut buf = vec![0u8; ANSWER_MAX];
    let (n, _) =
        rustix::net::recv(&fd, &mut buf[..], RecvFlags::DONTWAIT).map_err(std::io::Error::from)?;
    parse_answer(&buf[..n.min(ANSWER_MAX)], seq, local, remote)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn the_default_destination_is_imds() {
        assert_eq!(
            HostCallerConfig::new("/sys/fs/cgroup").destinations,
            vec!["169.254.169.254:80".parse().unwrap()]
        );
    }

    /// The cgroup id of this process's cgroup, as the kernel names it in socket
    /// answers, when cgroup v2 is mounted at /sys/fs/cgroup.
    fn own_cgroup_id() -> Option<u64> {
        let cg = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let path = cg.lines().find_map(|l| l.strip_prefix("0::"))?;
        if !Path::new("/sys/fs/cgroup/cgroup.controllers").is_file() {
            return None;
        }
        Some(
            std::fs::metadata(format!("/sys/fs/cgroup{path}"))
                .ok()?
                .ino(),
        )
    }

    #[test]
    fn a_loopback_client_socket_is_found_with_its_cgroup() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let server = listener.local_addr().unwrap();
        let client = TcpStream::connect(server).unwrap();
        let (_accepted, peer) = listener.accept().unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        let started = Instant::now();
        let id = socket_cgroup(peer, server).expect("sock_diag answers");
        let took = started.elapsed();
        let id = id.expect("the client socket is found");
        assert!(id > 0);
        if let Some(own) = own_cgroup_id() {
            assert_eq!(id, own);
        }
        // The accepted socket is the other way round; a wrong destination finds nothing.
        assert_eq!(socket_cgroup(server, peer).unwrap(), Some(id));
        let elsewhere: SocketAddr = "127.0.0.1:9".parse().unwrap();
        assert_eq!(socket_cgroup(peer, elsewhere).unwrap(), None);
        // A listener's own address is not a client socket.
        assert_eq!(
            socket_cgroup(server, "0.0.0.0:0".parse().unwrap()).unwrap(),
            None
        );
        assert!(took < Duration::from_millis(50), "{took:?}");
    }

    #[test]
    fn ipv6_loopback_sockets_are_found() {
        let Ok(listener) = TcpListener::bind("[::1]:0") else {
            // No IPv6 here (a container without it): nothing to look up.
            return;
        };
        let server = listener.local_addr().unwrap();
        let client = TcpStream::connect(server).unwrap();
        let peer = client.local_addr().unwrap();
        assert!(socket_cgroup(peer, server).unwrap().is_some());
    }

    fn answer(seq: u32, kind: u16, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&((NLMSG_HDRLEN + body.len()) as u32).to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(&0u16.to_ne_bytes());
        out.extend_from_slice(&seq.to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes());
        out.extend_from_slice(body);
        out
    }

    fn diag_msg(
        state: u8,
        local: SocketAddr,
        remote: SocketAddr,
        attrs: &[(u16, &[u8])],
    ) -> Vec<u8> {
        let mut body = vec![AF_INET, state, 0, 0];
        put_socket_id(&mut body, local, remote);
        body.extend_from_slice(&[0; 20]);
        for (kind, value) in attrs {
            body.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
            body.extend_from_slice(&kind.to_ne_bytes());
            body.extend_from_slice(value);
            while body.len() % 4 != 0 {
                body.push(0);
            }
        }
        body
    }

    #[test]
    fn answers_are_read_strictly() {
        let l: SocketAddr = "10.0.0.4:40000".parse().unwrap();
        let r: SocketAddr = "169.254.169.254:80".parse().unwrap();
        let id = 4242u64.to_ne_bytes();
        let shutdown = [0u8];
        let ok = diag_msg(
            1,
            l,
            r,
            &[(8, &shutdown), (22, &[0; 8]), (INET_DIAG_CGROUP_ID, &id)],
        );
        assert_eq!(
            parse_answer(&answer(7, 20, &ok), 7, l, r).unwrap(),
            Some(4242)
        );
        assert!(matches!(
            parse_answer(&answer(8, 20, &ok), 7, l, r),
            Err(LookupError::Answer(_))
        ));
        // Another four-tuple, a listener: not the client's socket.
        let other: SocketAddr = "10.0.0.4:40001".parse().unwrap();
        assert_eq!(
            parse_answer(&answer(7, 20, &ok), 7, other, r).unwrap(),
            None
        );
        let listen = diag_msg(TCP_LISTEN, l, r, &[(INET_DIAG_CGROUP_ID, &id)]);
        assert_eq!(
            parse_answer(&answer(7, 20, &listen), 7, l, r).unwrap(),
            None
        );
        // ENOENT is "no socket"; another error is an error.
        let enoent = (-2i32).to_ne_bytes();
        assert_eq!(
            parse_answer(&answer(7, NLMSG_ERROR, &enoent), 7, l, r).unwrap(),
            None
        );
        let eperm = (-1i32).to_ne_bytes();
        assert!(matches!(
            parse_answer(&answer(7, NLMSG_ERROR, &eperm), 7, l, r),
            Err(LookupError::Refused(_))
        ));
        // An old kernel: no cgroup id on a full socket.
        let old = diag_msg(1, l, r, &[(8, &shutdown)]);
        assert!(matches!(
            parse_answer(&answer(7, 20, &old), 7, l, r),
            Err(LookupError::NoCgroupId)
        ));
        // TIME_WAIT: nobody behind it.
        let tw = diag_msg(6, l, r, &[]);
        assert_eq!(parse_answer(&answer(7, 20, &tw), 7, l, r).unwrap(), None);
        // Truncated and lying lengths.
        let whole = answer(7, 20, &ok);
        for cut in [0, 3, 15, 40, whole.len() - 1] {
            assert!(
                parse_answer(&whole[..cut], 7, l, r).is_err(),
                "cut at {cut}"
            );
        }
        let mut bad_attr = ok.clone();
        bad_attr[DIAG_MSG_LEN] = 200;
        assert!(parse_answer(&answer(7, 20, &bad_attr), 7, l, r).is_err());
    }

    #[test]
    fn candidates_are_the_destinations_then_the_proxy() {
        let mut config = HostCallerConfig::new("/nonexistent");
        config.destinations.push("[fd00::1]:80".parse().unwrap());
        let hc = |listen: &str| {
            HostCallers::new(
                config.clone(),
                listen.parse().unwrap(),
                Snapshot::new(HostCallerMap::new()),
                Snapshot::new(None),
            )
        };
        let peer: SocketAddr = "10.0.0.4:40000".parse().unwrap();
        let got = hc("10.0.0.4:8170").candidates(peer);
        assert_eq!(
            got,
            vec![
                "169.254.169.254:80".parse::<SocketAddr>().unwrap(),
                "10.0.0.4:8170".parse().unwrap()
            ]
        );
        let got = hc("0.0.0.0:8170").candidates(peer);
        assert_eq!(got.len(), 3);
        assert!(got.contains(&"127.0.0.1:8170".parse().unwrap()));
        let v6: SocketAddr = "[fd00::4]:40000".parse().unwrap();
        assert_eq!(
            hc("127.0.0.1:8170").candidates(v6),
            vec!["[fd00::1]:80".parse::<SocketAddr>().unwrap()]
        );
    }

    #[test]
    fn a_walk_maps_containers_to_their_pod_and_leaves_the_rest_out() {
        let dir = std::env::temp_dir().join(format!("imdsguard-walk-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let pod =
            dir.join("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podab.slice");
        let ctr = pod.join("cri-containerd-1.scope");
        std::fs::create_dir_all(&ctr).unwrap();
        std::fs::create_dir_all(dir.join("system.slice/kubelet.service")).unwrap();
        std::fs::create_dir_all(dir.join("kubepods/besteffort/podcd")).unwrap();
        std::fs::write(pod.join("cgroup.procs"), "").unwrap();
        let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
        let (tree, complete) = walk(&dir).unwrap();
        assert!(complete);
        assert_eq!(tree[&ino(&ctr)], ino(&pod));
        assert_eq!(tree[&ino(&dir.join("kubepods.slice"))], 0);
        assert!(tree.contains_key(&ino(&dir.join("kubepods/besteffort/podcd"))));
        assert!(!tree.contains_key(&ino(&dir.join("system.slice/kubelet.service"))));
        assert!(!tree.contains_key(&ino(&pod.join("cgroup.procs"))));
        assert_eq!(tree.len(), 7);
        // Deeper than a walk reads: what it read is kept, but it is not the whole tree.
        std::fs::create_dir_all(ctr.join("a/b/c/d/e/f")).unwrap();
        let (deep, complete) = walk(&dir).unwrap();
        assert!(!complete);
        assert_eq!(deep[&ino(&ctr)], ino(&pod));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn sockets_are_classified_by_their_cgroup() {
        let dir = std::env::temp_dir().join(format!("imdsguard-classify-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let known = dir.join("kubepods.slice/kubepods-podaa.slice");
        let unknown = dir.join("kubepods.slice/kubepods-podbb.slice");
        let node = dir.join("system.slice/kubelet.service");
        for d in [&known.join("ctr"), &unknown, &node] {
            std::fs::create_dir_all(d).unwrap();
        }
        let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
        let pod = Arc::new(PodInfo::new("monitoring", "exporter-1"));
        let mut map = HostCallerMap::new();
        map.insert(ino(&known), pod.clone());
        let hc = HostCallers::new(
            HostCallerConfig::new(&dir),
            "127.0.0.1:8170".parse().unwrap(),
            Snapshot::new(map),
            Snapshot::new(None),
        );
        let now = Instant::now();
        assert!(
            matches!(hc.classify(ino(&known), now).await, HostCaller::Pod { pod: p, .. } if p.name == "exporter-1")
        );
        assert!(matches!(
            hc.classify(ino(&known.join("ctr")), now).await,
            HostCaller::Pod { .. }
        ));
        assert!(matches!(
            hc.classify(ino(&unknown), now).await,
            HostCaller::UnknownPodCgroup { .. }
        ));
        assert!(matches!(
            hc.classify(ino(&node), now).await,
            HostCaller::Node { .. }
        ));
        // Known outside now: no walk for it again.
        assert!(lock(&hc.outside).contains(&ino(&node)));

        // A pod started after the walk: found by a walk begun after its request (a
        // second later at most), and named once the program's source knows it.
        let later = dir.join("kubepods.slice/kubepods-podcc.slice/ctr");
        std::fs::create_dir_all(&later).unwrap();
        let later_pod = dir.join("kubepods.slice/kubepods-podcc.slice");
        let id = ino(&later_pod);
        let source_pod = Arc::new(PodInfo::new("monitoring", "late-1"));
        let base = hc.map.load();
        hc.source.store(Some(Arc::new(move || {
            let mut m = (*base).clone();
            m.insert(id, source_pod.clone());
            m
        })));
        let asked = Instant::now();
        let got = hc.classify(ino(&later), asked).await;
        assert!(
            matches!(&got, HostCaller::Pod { pod: p, .. } if p.name == "late-1"),
            "{got:?}"
        );
        assert!(asked.elapsed() < Duration::from_secs(3));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
