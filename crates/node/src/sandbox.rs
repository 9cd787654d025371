//! A simulated AKS node in network namespaces, for the lab and the tests.
//!
//! ```text
//!  pod "allowed"  eth0 10.244.0.10/32 ─── azvallowed ┐
//!  pod "web"      eth0 10.244.0.11/32 ─── azvweb     ├ node (this process's namespace)   cloud namespace
//!  pod "spoofer"  eth0 10.244.0.10/32 ─── azvspoofer ┘   eth0 10.224.0.4 ─────────────── host0 10.224.0.1
//!  pod "batch"    eth0 10.244.1.10/24 ─── vethbatch ── cbr0 10.244.1.1/24                lo 169.254.169.254
//!                                                      lo 169.254.20.10 (node-local DNS)     168.63.129.16
//! ```
//!
//! - The **node** is the namespace this process runs in, which must be isolated
//!   ([`Isolated`]): it routes between pods and the cloud namespace (`ip_forward=1`) and
//!   holds node-local DNS's address.
//! - The **cloud** namespace stands for the Azure host: it holds 169.254.169.254 and
//!   168.63.129.16, where the caller starts the emulator and DNS echo. Pod traffic to
//!   them is routed by the node, as on a real node, so it crosses the node's *forward*
//!   hook.
//! - **Routed** pods are wired like Azure CNI's transparent mode (and Calico, Cilium):
//!   a veth whose node side (`azv…`) has no address, a /32 route to the pod on it, proxy
//!   ARP answering for the pods' gateway 169.254.1.1.
//! - **Bridged** pods are wired like kubenet: veth ports of `cbr0`; routed traffic from
//!   them enters the node's IP stack through `cbr0`, so the interface nft sees is `cbr0`.
//! - A pod may borrow another pod's address (`spoofer`). The node's route to that address
//!   leads to the owner; with `replies_by_interface` the sandbox adds policy routing (a
//!   `inet sandbox` table marking the spoofer's connections, `ip rule fwmark`) so that the
//!   answers reach the spoofer too, as on a bridge where it answered ARP for the stolen
//!   address. Without protection the spoofer then really gets IMDS's answers; nft's
//!   (interface, address) allow set is what stops it.
//! - `rp_filter` is off on the node, so that nothing but imdsguard's rules stops a spoofed
//!   source.
//!
//! - **IPv6** (AWS and GCP labs, [`Sandbox::build_for`] with an IPv6 cloud address or
//!   pods with [`PodSpec::addr6`]): the node and the cloud namespace also talk over
//!   `fd00:10:224::/64` (node `::4`, cloud `::1`, the node's IPv6 default route), the
//!   cloud namespace holds the cloud's IPv6 metadata addresses (`fd00:ec2::254`,
//!   `fd00:ec2::23`, `fd20:ce::254`) and routes the pods' `fd00:10:244::/48` back to
//!   the node. A routed pod gets its `/128` and a default route via `fe80::1`, which the
//!   node side of its veth holds (Calico's way: no proxy NDP needed); a bridged pod its
//!   `/64` of the bridge's `fd00:10:244:1::/64`, the bridge `::1`. Duplicate address
//!   detection is skipped (`nodad`), so the addresses work at once. The spoofer borrows
//!   both of its victim's addresses, and its answers come back by interface in both
//!   families.
//!
//! Nothing is linked to any other namespace; dropping the [`Sandbox`] removes the pod
//! and cloud namespaces (and with them every veth), and the node's own namespace
//! disappears when the process that owns it exits.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use imdsguard_core::target::Cloud;
use serde::Serialize;

use crate::NodeError;
use crate::exec::Exec;
use crate::netns::{Isolated, NetNamespace};

/// The node's address on its link to the cloud namespace.
pub const NODE_ADDR: Ipv4Addr = Ipv4Addr::new(10, 224, 0, 4);
/// The cloud namespace's address (the node's default gateway).
pub const CLOUD_GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 224, 0, 1);
/// Node-local DNS's address, held by the node.
pub const NODE_LOCAL_DNS: Ipv4Addr = Ipv4Addr::new(169, 254, 20, 10);
/// The gateway routed pods use (answered by proxy ARP, as Azure CNI and Calico do).
pub const POD_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The bridge of bridged pods.
pub const BRIDGE: &str = "cbr0";
/// The bridge's address (bridged pods' gateway), in a /24.
pub const BRIDGE_ADDR: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 1);
/// The cloud namespace holds these (IMDS, WireServer).
pub const CLOUD_ADDRESSES: [Ipv4Addr; 2] = [
    imdsguard_core::imds::IMDS_ADDRESS,
    imdsguard_core::imds::WIRESERVER_ADDRESS,
];

/// The node's IPv6 address on its link to the cloud namespace (IPv6 sandboxes).
pub const NODE_ADDR6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x224, 0, 0, 0, 0, 4);
/// The cloud namespace's IPv6 address (the node's IPv6 default gateway).
pub const CLOUD_GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x224, 0, 0, 0, 0, 1);
/// The gateway routed pods use over IPv6: a link-local address the node side of each
/// routed veth holds.
pub const POD_GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
/// The bridge's IPv6 address (bridged pods' IPv6 gateway), in a /64.
pub const BRIDGE_ADDR6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 1, 0, 0, 0, 1);
/// The pods' IPv6 prefix (a /48), routed by the cloud namespace to the node.
pub const POD_PREFIX6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 0, 0, 0, 0, 0);
/// Amazon's DNS resolver on its link-local address (the VPC's `.2` answers too):
/// `169.254.169.253:53`, what the AWS sandbox's cloud namespace answers DNS on.
pub const AWS_DNS: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 253);

/// The addresses the cloud namespace holds for `cloud`: every address of its metadata
/// endpoints ([`Cloud::targets`], both families) and its DNS resolver's ([`cloud_dns`]).
pub fn cloud_addresses(cloud: Cloud) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = cloud.targets().iter().map(|t| t.ip).collect();
    out.push(cloud_dns(cloud).ip());
    let mut seen = Vec::new();
    out.retain(|a| {
        let new = !seen.contains(a);
        seen.push(*a);
        new
    });
    out
}

/// Where `cloud`'s DNS resolver answers, as the node's pods reach it: Azure DNS
/// 168.63.129.16:53, Amazon DNS 169.254.169.253:53, GCP's metadata server
/// 169.254.169.254:53 (the metadata address itself: port 53 must stay open while port
/// 80 is guarded).
pub fn cloud_dns(cloud: Cloud) -> SocketAddr {
    let ip = match cloud {
        Cloud::Azure => imdsguard_core::imds::WIRESERVER_ADDRESS,
        Cloud::Aws => AWS_DNS,
        _ => imdsguard_core::imds::IMDS_ADDRESS,
    };
    SocketAddr::new(IpAddr::V4(ip), 53)
}

/// How a pod is attached to the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Attach {
    /// Its own routed veth (`azv<name>`), Azure CNI transparent mode.
    Routed,
    /// A veth port (`veth<name>`) of the `cbr0` bridge, kubenet.
    Bridged,
}

/// One pod to create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PodSpec {
    /// Short name (at most 11 characters: it names the node-side interface).
    pub name: String,
    /// How it is attached.
    pub attach: Attach,
    /// Its address.
    pub addr: Ipv4Addr,
    /// Its IPv6 address, for a dual-stack pod.
    pub addr6: Option<Ipv6Addr>,
    /// Route answers to its connections back through its own interface, even when its
    /// address belongs to another pod (see the module documentation).
    pub replies_by_interface: bool,
}

impl PodSpec {
    /// A routed pod.
    pub fn routed(name: &str, addr: Ipv4Addr) -> PodSpec {
        PodSpec {
            name: name.into(),
            attach: Attach::Routed,
            addr,
            addr6: None,
            replies_by_interface: false,
        }
    }

    /// A bridged pod.
    pub fn bridged(name: &str, addr: Ipv4Addr) -> PodSpec {
        PodSpec {
            attach: Attach::Bridged,
            ..PodSpec::routed(name, addr)
        }
    }

    /// The same pod, dual-stack with `addr6`.
    pub fn with_ipv6(self, addr6: Ipv6Addr) -> PodSpec {
        PodSpec {
            addr6: Some(addr6),
            ..self
        }
    }

    /// Its addresses: the IPv4 one, then the IPv6 one when it has one.
    pub fn addrs(&self) -> Vec<IpAddr> {
        std::iter::once(IpAddr::V4(self.addr))
            .chain(self.addr6.map(IpAddr::V6))
            .collect()
    }

    /// The node-side interface: `azv<name>` or `veth<name>`.
    pub fn host_iface(&self) -> String {
        match self.attach {
            Attach::Routed => format!("azv{}", self.name),
            Attach::Bridged => format!("veth{}", self.name),
        }
    }

    /// The interface nft sees this pod's routed traffic enter on: its veth, or the bridge.
    pub fn ingress_iface(&self) -> String {
        match self.attach {
            Attach::Routed => self.host_iface(),
            Attach::Bridged => BRIDGE.to_owned(),
        }
    }
}

/// The lab's pods: `allowed` (to be allowlisted), `web` (ordinary), `spoofer` (borrows
/// `allowed`'s address on its own interface, answers routed back to it) and `batch`
/// (bridged, kubenet style).
pub fn lab_pods() -> Vec<PodSpec> {
    vec![
        PodSpec::routed("allowed", Ipv4Addr::new(10, 244, 0, 10)),
        PodSpec::routed("web", Ipv4Addr::new(10, 244, 0, 11)),
        PodSpec {
            replies_by_interface: true,
            ..PodSpec::routed("spoofer", Ipv4Addr::new(10, 244, 0, 10))
        },
        PodSpec::bridged("batch", Ipv4Addr::new(10, 244, 1, 10)),
    ]
}

/// [`lab_pods`], dual-stack: each pod also has an IPv6 address, `fd00:10:244::N` for
/// `10.244.0.N` and `fd00:10:244:1::N` for `10.244.1.N` (the spoofer borrows
/// `allowed`'s in both families). The AWS and GCP labs use them.
pub fn dual_stack_lab_pods() -> Vec<PodSpec> {
    lab_pods()
        .into_iter()
        .map(|p| {
            // The IPv4 address's last two numbers, written alike: 10.244.1.10 is
            // fd00:10:244:1::10.
            let [_, _, subnet, host] = p.addr.octets();
            let hex = |n: u8| u16::from_str_radix(&n.to_string(), 16).unwrap_or(0);
            let v6 = Ipv6Addr::new(0xfd00, 0x10, 0x244, hex(subnet), 0, 0, 0, hex(host));
            p.with_ipv6(v6)
        })
        .collect()
}

/// A pod of the sandbox.
#[derive(Debug)]
pub struct Pod {
    spec: PodSpec,
    ns: NetNamespace,
}

impl Pod {
    /// What it was created from.
    pub fn spec(&self) -> &PodSpec {
        &self.spec
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Its namespace (run code inside with [`NetNamespace::run`]).
    pub fn netns(&self) -> &NetNamespace {
        &self.ns
    }

    /// Opens a TCP connection to `addr` from the pod. See [`tcp_check`].
    pub fn tcp(&self, addr: SocketAddr, timeout: Duration) -> Result<Reach, NodeError> {
        self.ns.run(move || tcp_check(addr, timeout))
    }

    /// Sends one UDP datagram to `addr` from the pod and waits for the echo.
    pub fn udp_echo(&self, addr: SocketAddr, timeout: Duration) -> Result<bool, NodeError> {
        self.ns.run(move || udp_echo_check(addr, timeout))
    }
}

/// The simulated node. Dropping it removes the pod and cloud namespaces.
#[derive(Debug)]
pub struct Sandbox {
    // Pods first: they are dropped before the cloud.
    pods: Vec<Pod>,
    cloud: NetNamespace,
}

impl Sandbox {
    /// Builds the node in this (checked) namespace: the cloud namespace with Azure's
    /// addresses ([`CLOUD_ADDRESSES`]), routing, node-local DNS's address, then each pod.
    pub fn build(isolated: &Isolated, pods: &[PodSpec]) -> Result<Sandbox, NodeError> {
        let azure: Vec<IpAddr> = CLOUD_ADDRESSES.iter().map(|a| IpAddr::V4(*a)).collect();
        Sandbox::build_for(isolated, pods, &azure)
    }

    /// Builds the node with a cloud namespace holding `cloud_addresses` (e.g.
    /// [`cloud_addresses`]`(Cloud::Aws)`). IPv6 is set up (see the module
    /// documentation) when one of them or a pod's address is IPv6.
    pub fn build_for(
        _isolated: &Isolated,
        pods: &[PodSpec],
        cloud_addresses: &[IpAddr],
    ) -> Result<Sandbox, NodeError> {
        let ipv6 =
            cloud_addresses.iter().any(IpAddr::is_ipv6) || pods.iter().any(|p| p.addr6.is_some());
        for p in pods {
            if p.name.is_empty()
                || p.name.len() > 11
                || !p.name.bytes().all(|b| b.is_ascii_alphanumeric())
            {
                return Err(NodeError::Netns(format!(
                    "pod name `{}`: 1 to 11 letters or digits",
                    p.name
                )));
            }
        }
        let node = Exec::here();
        let ip = |args: &str| node.run("ip", args.split_whitespace(), None).map(drop);
        ip("link set lo up")?;
        for (key, value) in [
            ("net/ipv4/ip_forward", "1"),
            ("net/ipv4/conf/all/rp_filter", "0"),
            ("net/ipv4/conf/default/rp_filter", "0"),
        ] {
            sysctl(key, value)?;
        }
        if ipv6 {
            for (key, value) in [
                ("net/ipv6/conf/all/forwarding", "1"),
                ("net/ipv6/conf/default/forwarding", "1"),
                ("net/ipv6/conf/all/accept_dad", "0"),
                ("net/ipv6/conf/default/accept_dad", "0"),
            ] {
                sysctl(key, value)?;
            }
        }

        let cloud = NetNamespace::create("cloud")?;
        if ipv6 {
            no_dad(&cloud)?;
        }
        ip(&format!(
            "link add eth0 type veth peer name host0 netns {}",
            cloud.pid()
        ))?;
        ip(&format!("addr add {NODE_ADDR}/16 dev eth0"))?;
        ip("link set eth0 up")?;
        ip(&format!("route add default via {CLOUD_GATEWAY}"))?;
        ip(&format!("addr add {NODE_LOCAL_DNS}/32 dev lo"))?;
        let c = cloud.exec();
        let cip = |args: String| c.run("ip", args.split_whitespace(), None).map(drop);
        cip(format!("addr add {CLOUD_GATEWAY}/16 dev host0"))?;
        cip("link set host0 up".into())?;
        for a in cloud_addresses {
            match a {
                IpAddr::V4(a) => cip(format!("addr add {a}/32 dev lo"))?,
                IpAddr::V6(a) => cip(format!("-6 addr add {a}/128 dev lo nodad"))?,
            }
        }
        cip(format!("route add 10.244.0.0/16 via {NODE_ADDR}"))?;
        if ipv6 {
            ip(&format!("-6 addr add {NODE_ADDR6}/64 dev eth0 nodad"))?;
            ip(&format!("-6 route add default via {CLOUD_GATEWAY6}"))?;
            cip(format!("-6 addr add {CLOUD_GATEWAY6}/64 dev host0 nodad"))?;
            cip(format!("-6 route add {POD_PREFIX6}/48 via {NODE_ADDR6}"))?;
        }

        if pods.iter().any(|p| p.attach == Attach::Bridged) {
            ip(&format!("link add {BRIDGE} type bridge"))?;
            ip(&format!("addr add {BRIDGE_ADDR}/24 dev {BRIDGE}"))?;
            if ipv6 {
                ip(&format!("-6 addr add {BRIDGE_ADDR6}/64 dev {BRIDGE} nodad"))?;
            }
            ip(&format!("link set {BRIDGE} up"))?;
        }
        let mut routed_addrs6: Vec<Ipv6Addr> = Vec::new();

        let mut built = Vec::new();
        let mut routed_addrs: Vec<Ipv4Addr> = Vec::new();
        let mut marks = Vec::new();
        for (i, spec) in pods.iter().enumerate() {
            let ns = NetNamespace::create(&spec.name)?;
            if ipv6 {
                no_dad(&ns)?;
            }
            let hi = spec.host_iface();
            ip(&format!(
                "link add {hi} type veth peer name eth0 netns {}",
                ns.pid()
            ))?;
            let e = ns.exec();
            let pip = |args: String| e.run("ip", args.split_whitespace(), None).map(drop);
            match spec.attach {
                Attach::Routed => {
                    ip(&format!("link set {hi} up"))?;
                    sysctl(&format!("net/ipv4/conf/{hi}/proxy_arp"), "1")?;
                    // Answer at once (the default delays proxy ARP by up to 0.8 s), as Calico does.
                    sysctl(&format!("net/ipv4/neigh/{hi}/proxy_delay"), "0")?;
                    sysctl(&format!("net/ipv4/conf/{hi}/rp_filter"), "0")?;
                    if !routed_addrs.contains(&spec.addr) {
                        ip(&format!("route add {}/32 dev {hi}", spec.addr))?;
                        routed_addrs.push(spec.addr);
                    }
                    pip(format!("addr add {}/32 dev eth0", spec.addr))?;
                    pip("link set eth0 up".into())?;
                    pip(format!("route add {POD_GATEWAY} dev eth0 scope link"))?;
                    pip(format!("route add default via {POD_GATEWAY} dev eth0"))?;
                    if let Some(a6) = spec.addr6 {
                        ip(&format!("-6 addr add {POD_GATEWAY6}/64 dev {hi} nodad"))?;
                        if !routed_addrs6.contains(&a6) {
                            ip(&format!("-6 route add {a6}/128 dev {hi}"))?;
                            routed_addrs6.push(a6);
                        }
                        pip(format!("-6 addr add {a6}/128 dev eth0 nodad"))?;
                        pip(format!("-6 route add default via {POD_GATEWAY6} dev eth0"))?;
                    }
                }
                Attach::Bridged => {
                    ip(&format!("link set {hi} master {BRIDGE} up"))?;
                    pip(format!("addr add {}/24 dev eth0", spec.addr))?;
                    pip("link set eth0 up".into())?;
                    pip(format!("route add default via {BRIDGE_ADDR}"))?;
                    if let Some(a6) = spec.addr6 {
                        pip(format!("-6 addr add {a6}/64 dev eth0 nodad"))?;
                        pip(format!("-6 route add default via {BRIDGE_ADDR6}"))?;
                    }
                }
            }
            if spec.replies_by_interface {
                let mark = 0x1000 + i as u32;
                ip(&format!(
                    "rule add fwmark {mark:#x} lookup {mark} priority {mark}"
                ))?;
                ip(&format!("route add {}/32 dev {hi} table {mark}", spec.addr))?;
                if let Some(a6) = spec.addr6 {
                    ip(&format!(
                        "-6 rule add fwmark {mark:#x} lookup {mark} priority {mark}"
                    ))?;
                    ip(&format!("-6 route add {a6}/128 dev {hi} table {mark}"))?;
                }
                marks.push((hi.clone(), mark));
            }
            built.push(Pod {
                spec: spec.clone(),
                ns,
            });
        }
        if !marks.is_empty() {
            // Mark the pod's connections as they enter; answers routed by the node
            // (prerouting) and sent by the node itself (output, a `route` chain so the
            // mark re-routes) follow the mark back to its interface.
            let mut pre = String::new();
            let mut out = String::new();
            for (iface, mark) in &marks {
                pre.push_str(&format!("  iifname \"{iface}\" ct mark set {mark:#x}\n"));
                pre.push_str(&format!("  ct mark {mark:#x} meta mark set ct mark\n"));
                out.push_str(&format!("  ct mark {mark:#x} meta mark set ct mark\n"));
            }
            let script = format!(
                "table inet sandbox {{\n chain prerouting {{\n  type filter hook prerouting priority mangle; policy accept;\n{pre} }}\n chain output {{\n  type route hook output priority mangle; policy accept;\n{out} }}\n}}\n"
            );
            node.run("nft", ["-f", "-"], Some(script.as_bytes()))?;
        }
        Ok(Sandbox { pods: built, cloud })
    }

    /// The cloud namespace (start the emulator there).
    pub fn cloud(&self) -> &NetNamespace {
        &self.cloud
    }

    /// The pods, in creation order.
    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    /// The pod called `name`.
    pub fn pod(&self, name: &str) -> Option<&Pod> {
        self.pods.iter().find(|p| p.spec.name == name)
    }
}

/// No duplicate address detection in `ns` (for the interfaces it gets from now on): a
/// tentative link-local address would leave a namespace whose traffic comes from an
/// address on `lo` (the cloud's metadata addresses) soliciting neighbours from `::`.
fn no_dad(ns: &NetNamespace) -> Result<(), NodeError> {
    ns.run(|| {
        sysctl("net/ipv6/conf/all/accept_dad", "0")?;
        sysctl("net/ipv6/conf/default/accept_dad", "0")
    })?
}

fn sysctl(key: &str, value: &str) -> Result<(), NodeError> {
    let path = format!("/proc/sys/{key}");
    std::fs::write(&path, value).map_err(|e| NodeError::Io {
        what: format!("writing {path}"),
        source: e,
    })
}

/// What a TCP attempt found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "result", content = "detail")]
pub enum Reach {
    /// Connected, and the server sent this first line.
    Answered(String),
    /// Connected, nothing read.
    Connected,
    /// Refused or unreachable.
    Refused(String),
    /// No connection in time (dropped).
    Timeout,
}

impl Reach {
    /// A connection was established.
    pub fn connected(&self) -> bool {
        matches!(self, Reach::Answered(_) | Reach::Connected)
    }
}

/// Connects to `addr` (within `timeout`) and reads what the server says first (within
/// `timeout`). Run it inside a pod ([`Pod::tcp`]).
pub fn tcp_check(addr: SocketAddr, timeout: Duration) -> Reach {
    match TcpStream::connect_timeout(&addr, timeout) {
        Ok(mut s) => {
            let _ = s.set_read_timeout(Some(timeout));
            let mut buf = [0u8; 128];
            match s.read(&mut buf) {
                Ok(n) if n > 0 => Reach::Answered(
                    String::from_utf8_lossy(&buf[..n])
                        .lines()
                        .next()
                        .unwrap_or("")
                        .to_owned(),
                ),
                _ => Reach::Connected,
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Reach::Timeout,
        Err(e) => Reach::Refused(e.to_string()),
    }
}

/// Sends a datagram to `addr` and waits `timeout` for the same bytes back.
pub fn udp_echo_check(addr: SocketAddr, timeout: Duration) -> bool {
    let bind: SocketAddr = match addr.ip() {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let Ok(sock) = UdpSocket::bind(bind) else {
        return false;
    };
    let _ = sock.set_read_timeout(Some(timeout));
    let msg = b"imdsguard-dns-echo";
    if sock.send_to(msg, addr).is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    matches!(sock.recv_from(&mut buf), Ok((n, from)) if from == addr && &buf[..n] == msg)
}

/// Small servers (TCP banner, UDP echo) on threads inside a namespace, stopped when
/// dropped.
#[derive(Debug, Default)]
pub struct Services {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Result<(), NodeError>>>,
}

impl Services {
    /// No servers yet.
    pub fn new() -> Services {
        Services::default()
    }

    /// A TCP server on `addr` inside `ns` (this namespace when `None`) that writes
    /// `banner` and a newline to every connection, then closes it. Returns once bound.
    pub fn tcp_banner(
        &mut self,
        ns: Option<&NetNamespace>,
        addr: SocketAddr,
        banner: &str,
    ) -> Result<(), NodeError> {
        let stop = self.stop.clone();
        let banner = format!("{banner}\n");
        let (tx, rx) = std::sync::mpsc::channel();
        let serve = move || -> Result<(), NodeError> {
            let listener = TcpListener::bind(addr)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .map_err(|e| NodeError::Io {
                    what: format!("listening on {addr}"),
                    source: e,
                });
            let listener = match listener {
                Ok(l) => {
                    let _ = tx.send(Ok(()));
                    l
                }
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                    return Err(e);
                }
            };
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.write_all(banner.as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
            Ok(())
        };
        self.start(ns, serve, rx)
    }

    /// A UDP echo on `addr` inside `ns` (this namespace when `None`). Returns once bound.
    pub fn udp_echo(
        &mut self,
        ns: Option<&NetNamespace>,
        addr: SocketAddr,
    ) -> Result<(), NodeError> {
        let stop = self.stop.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let serve = move || -> Result<(), NodeError> {
            let sock = UdpSocket::bind(addr)
                .and_then(|s| {
                    s.set_read_timeout(Some(Duration::from_millis(50)))
                        .map(|()| s)
                })
                .map_err(|e| NodeError::Io {
                    what: format!("listening on {addr}/udp"),
                    source: e,
                });
            let sock = match sock {
                Ok(s) => {
                    let _ = tx.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                    return Err(e);
                }
            };
            let mut buf = [0u8; 1500];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(&buf[..n], from);
                }
            }
            Ok(())
        };
        self.start(ns, serve, rx)
    }

    fn start(
        &mut self,
        ns: Option<&NetNamespace>,
        serve: impl FnOnce() -> Result<(), NodeError> + Send + 'static,
        ready: std::sync::mpsc::Receiver<Result<(), String>>,
    ) -> Result<(), NodeError> {
        let handle = match ns {
            Some(ns) => {
                let h = ns.spawn(serve);
                std::thread::spawn(move || {
                    h.join()
                        .map_err(|_| NodeError::Netns("server panicked".into()))??
                })
            }
            None => std::thread::spawn(serve),
        };
        self.threads.push(handle);
        match ready.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(NodeError::Netns(e)),
            Err(_) => Err(NodeError::Netns("a server did not start".into())),
        }
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
