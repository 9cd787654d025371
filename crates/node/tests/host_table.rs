//! The host table (`inet imdsguard_host`) on a real kernel: hostNetwork pods told apart
//! from node processes by their sockets' cgroup.
//!
//! The test re-runs itself (this test binary, `--exact NAME`) under `unshare --net
//! --mount --propagation private` as root: a network namespace of its own (only `lo`,
//! checked before anything is sent) and a private mount namespace where cgroup v2 is
//! mounted at `/sys/fs/cgroup`, where nft resolves `socket cgroupv2` paths. The metadata
//! addresses live on that namespace's `lo`, each with a TCP listener that answers its
//! name. The cgroup hierarchy is the machine's (it is not namespaced): the pod UIDs and
//! the node service's name are unique to the run, and every directory the test made is
//! removed when it ends, also on a panic (`imdsguard_node::cgroups::CgroupTree`: stray
//! processes killed first; shared parents only by the last run, under its lock). Client
//! processes are `sh` moving itself into a cgroup and then `exec`ing bash's `/dev/tcp`
//! (`command_in_cgroup`), so the socket is created in that cgroup.

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use imdsguard_core::cgroup::{PodCgroup, pod_cgroup_paths};
use imdsguard_core::nft::host::{
    COMMENT_MAX, HostCounters, HostGuard, HostPod, clip_pod, host_counter,
};
use imdsguard_core::nft::{Mode, RulesetConfig};
use imdsguard_core::target::Cloud;
use imdsguard_node::Exec;
use imdsguard_node::cgroups::{CgroupTree, ENTER_FAILED, command_in_cgroup, isolated_cgroup_test};
use imdsguard_node::host::{
    host_status, install_host, read_host, scan_pod_cgroups, uninstall_host,
};

const INNER: &str = "IMDSGUARD_HOST_TABLE_INNER";
const CGROUP: &str = "/sys/fs/cgroup";
const IMDS: &str = "169.254.169.254:80";
const IMDS6: &str = "[fd00:ec2::254]:80";
const WIRESERVER: &str = "168.63.129.16:32526";
const DNS: &str = "168.63.129.16:53";
const PROXY: &str = "10.99.0.1:8169";

fn sh(script: &str) {
    let out = Command::new("sh").args(["-c", script]).output().unwrap();
    assert!(
        out.status.success(),
        "`{script}`: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A listener on `addr` answering `name` to every connection, on a thread of its own
/// (it ends with the process: the namespace goes with it).
fn listen(addr: &str, name: &'static str) {
    let l = TcpListener::bind(addr.parse::<SocketAddr>().unwrap())
        .unwrap_or_else(|e| panic!("listen on {addr}: {e}"));
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let _ = c.write_all(name.as_bytes());
        }
    });
}

/// Removes the host table on drop (the namespace would take it anyway).
struct Table;

impl Drop for Table {
    fn drop(&mut self) {
        let _ = uninstall_host(&Exec::here());
    }
}

/// What a process in cgroup `cg` gets from `addr`: the listener's name, or `None` (no
/// answer within the timeout: dropped).
fn reach(cg: &str, addr: &str) -> Option<String> {
    let (host, port) = addr.rsplit_once(':').unwrap();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let out = command_in_cgroup(&Path::new(CGROUP).join(cg), "timeout")
        .args(["1", "bash", "-c"])
        .arg(format!("exec 3<>/dev/tcp/{host}/{port} && head -c 32 <&3"))
        .output()
        .unwrap();
    assert_ne!(
        out.status.code(),
        Some(ENTER_FAILED),
        "cannot move into {cg}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.success() && !answer.is_empty()).then_some(answer)
}

fn counters() -> HostCounters {
    read_host(&Exec::here())
        .unwrap()
        .expect("the host table is there")
}

/// Packets counted for `uid` (0 without a counter).
fn pod_packets(c: &HostCounters, uid: &str) -> u64 {
    c.pod(uid).map_or(0, |p| p.packets)
}

fn unique() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{:08x}{:08x}", std::process::id(), nanos)
}

#[test]
#[ignore = "needs netns"]
fn host_network_pods_are_guarded_by_cgroup() {
    let test = "host_network_pods_are_guarded_by_cgroup";
    isolated_cgroup_test(test, INNER, &["nft", "bash", "timeout"], || {
        sh(
            "ip addr add 169.254.169.254/32 dev lo && ip addr add 168.63.129.16/32 dev lo \
            && ip addr add 10.99.0.1/32 dev lo && ip -6 addr add fd00:ec2::254/128 dev lo nodad",
        );
        listen(IMDS, "imds");
        listen(IMDS6, "imds6");
        listen(WIRESERVER, "wireserver");
        listen(DNS, "dns");
        listen(PROXY, "proxy");

        // Three pods (unique UIDs) in three layouts, and a node service.
        let u = unique();
        let expected_uid = format!("{u}-0000-4000-8000-00000000000a");
        let other_uid = format!("{u}-0000-4000-8000-00000000000b");
        let unlisted_uid = format!("{u}-0000-4000-8000-00000000000c");
        let expected_cg: PodCgroup = pod_cgroup_paths(&expected_uid)[1].clone(); // systemd, Burstable
        let other_cg: PodCgroup = pod_cgroup_paths(&other_uid)[3].clone(); // cgroupfs, Guaranteed
        let unlisted_cg: PodCgroup = pod_cgroup_paths(&unlisted_uid)[0].clone(); // systemd, Guaranteed
        let mut cgroups = CgroupTree::open(CGROUP).unwrap();
        let mut make = |rel: String| {
            cgroups.make(&rel).unwrap();
            rel
        };
        let expected = make(format!("{}/cri-containerd-{u}.scope", expected_cg.path));
        let other = make(format!("{}/{u}", other_cg.path));
        let unlisted = make(format!("{}/crio-{u}.scope", unlisted_cg.path));
        let node = make(format!("system.slice/imdsguard-test-{u}.service"));

        // Before: everyone reaches everything.
        for cg in [&expected, &other, &unlisted, &node] {
            assert_eq!(reach(cg, IMDS).as_deref(), Some("imds"), "{cg} before");
        }

        // The scan finds the three pods with their cgroup ids.
        let scan = scan_pod_cgroups(Path::new(CGROUP)).unwrap();
        for cg in [&expected_cg, &other_cg, &unlisted_cg] {
            let found: Vec<_> = scan.of_uid(&cg.uid).collect();
            assert_eq!(found.len(), 1, "{} in the scan", cg.path);
            assert_eq!(found[0].cgroup, *cg);
            let ino = std::os::unix::fs::MetadataExt::ino(
                &std::fs::metadata(Path::new(CGROUP).join(&cg.path)).unwrap(),
            );
            assert_eq!(found[0].id, ino);
        }
        assert!(scan.roots.iter().any(|r| r == "kubepods.slice"));
        assert!(scan.roots.iter().any(|r| r == "kubepods"));

        // The expected pod has the longest name the table takes (253 characters each
        // side): its comments are clipped to the 128 bytes nft takes (one byte more and
        // nft refuses the whole transaction), exactly 128 here.
        let long_pod = format!(
            "{}/{}-x7k2p",
            "monitoring".repeat(26).split_at(253).0,
            "node-exporter".repeat(19).split_at(247).0
        );
        assert_eq!(long_pod.len(), 253 + 1 + 253);
        let guard = HostGuard {
            roots: scan.roots.clone(),
            pods: vec![
                HostPod {
                    pod: long_pod.clone(),
                    cgroup: expected_cg.clone(),
                    expected: true,
                },
                HostPod {
                    pod: "debug/node-debugger".into(),
                    cgroup: other_cg.clone(),
                    expected: false,
                },
            ],
            own: None,
        };
        let exec = Exec::here();
        let _table = Table;
        let config = |mode: Mode| {
            let mut c = RulesetConfig::new(mode, &[Cloud::Azure, Cloud::Aws]);
            c.proxy_v4 = Some(PROXY.parse().unwrap());
            c
        };

        // Block mode.
        let block = config(Mode::Block);
        install_host(&exec, &block, &guard).unwrap();
        assert_eq!(host_status(&exec, &block, &guard).unwrap(), Some(vec![]));
        let c0 = counters();
        assert_eq!(reach(&node, IMDS).as_deref(), Some("imds"), "node process");
        assert_eq!(
            reach(&node, IMDS6).as_deref(),
            Some("imds6"),
            "node process, IPv6"
        );
        let c1 = counters();
        assert_eq!(c1, c0, "a node process is counted nowhere");
        assert_eq!(
            reach(&expected, IMDS).as_deref(),
            Some("imds"),
            "expected pod"
        );
        assert_eq!(
            reach(&expected, IMDS6).as_deref(),
            Some("imds6"),
            "expected pod, IPv6"
        );
        let c2 = counters();
        assert!(pod_packets(&c2, &expected_uid) > 0, "{c2:?}");
        let listed = c2.pod(&expected_uid).and_then(|p| p.pod.clone()).unwrap();
        assert_eq!(listed, clip_pod(&long_pod, COMMENT_MAX));
        assert_eq!(listed.len(), COMMENT_MAX);
        assert!(listed.ends_with("-x7k2p"), "{listed}");
        assert_eq!(pod_packets(&c2, &other_uid), 0, "{c2:?}");
        assert_eq!(c2.get(host_counter::UNKNOWN_POD).packets, 0, "{c2:?}");
        assert_eq!(reach(&other, IMDS), None, "unexpected pod dropped");
        assert_eq!(reach(&other, IMDS6), None, "unexpected pod dropped, IPv6");
        assert_eq!(
            reach(&other, WIRESERVER),
            None,
            "unexpected pod dropped, WireServer"
        );
        let c3 = counters();
        assert_eq!(
            pod_packets(&c3, &expected_uid),
            pod_packets(&c2, &expected_uid)
        );
        assert!(pod_packets(&c3, &other_uid) >= 3, "{c3:?}");
        assert_eq!(c3.get(host_counter::UNKNOWN_POD).packets, 0, "{c3:?}");
        assert_eq!(
            c3.pod(&other_uid).and_then(|p| p.pod.as_deref()),
            Some("debug/node-debugger")
        );
        assert_eq!(
            reach(&unlisted, IMDS),
            None,
            "a pod cgroup no rule names is dropped"
        );
        let c4 = counters();
        assert!(c4.get(host_counter::UNKNOWN_POD).packets > 0, "{c4:?}");
        assert_eq!(pod_packets(&c4, &other_uid), pod_packets(&c3, &other_uid));
        assert!(c4.pod(&unlisted_uid).is_none());
        // The endpoints' other ports are never matched: Azure DNS on 168.63.129.16:53.
        assert_eq!(reach(&other, DNS).as_deref(), Some("dns"), "DNS stays open");
        assert_eq!(
            reach(&unlisted, DNS).as_deref(),
            Some("dns"),
            "DNS stays open"
        );

        // Observe mode: all connect, each new connection counted once on its pod; the
        // counters are carried over the rebuild.
        let observe = config(Mode::Observe);
        install_host(&exec, &observe, &guard).unwrap();
        assert_eq!(host_status(&exec, &observe, &guard).unwrap(), Some(vec![]));
        let o0 = counters();
        assert_eq!(
            pod_packets(&o0, &other_uid),
            pod_packets(&c4, &other_uid),
            "carried"
        );
        assert_eq!(
            o0.get(host_counter::UNKNOWN_POD),
            c4.get(host_counter::UNKNOWN_POD),
            "carried"
        );
        for (cg, uid) in [
            (&expected, Some(&expected_uid)),
            (&other, Some(&other_uid)),
            (&unlisted, None),
            (&node, None),
        ] {
            let before = counters();
            assert_eq!(
                reach(cg, IMDS).as_deref(),
                Some("imds"),
                "{cg} in observe mode"
            );
            let after = counters();
            for u in [&expected_uid, &other_uid] {
                let delta = pod_packets(&after, u) - pod_packets(&before, u);
                assert_eq!(
                    delta,
                    u64::from(Some(u) == uid),
                    "{cg}: pod {u} counted {delta}"
                );
            }
            let unknown = after.get(host_counter::UNKNOWN_POD).packets
                - before.get(host_counter::UNKNOWN_POD).packets;
            assert_eq!(
                unknown,
                u64::from(cg == &unlisted),
                "{cg}: unknown counted {unknown}"
            );
        }

        // Proxy mode: the pod tree's IMDS connections go to the proxy, the node's and
        // the expected pod's (the agent's --allow) to IMDS; what the proxy does not
        // serve (WireServer) stays guarded.
        let proxy = config(Mode::Proxy);
        install_host(&exec, &proxy, &guard).unwrap();
        assert_eq!(host_status(&exec, &proxy, &guard).unwrap(), Some(vec![]));
        assert_eq!(reach(&node, IMDS).as_deref(), Some("imds"), "node process");
        assert_eq!(
            reach(&expected, IMDS).as_deref(),
            Some("imds"),
            "expected pod direct"
        );
        for cg in [&other, &unlisted] {
            assert_eq!(reach(cg, IMDS).as_deref(), Some("proxy"), "{cg} redirected");
        }
        assert!(counters().get(host_counter::PROXIED).packets >= 2);
        // Not expected: redirected like the others.
        let none_expected = HostGuard {
            pods: guard
                .pods
                .iter()
                .map(|p| HostPod {
                    expected: false,
                    ..p.clone()
                })
                .collect(),
            ..guard.clone()
        };
        install_host(&exec, &proxy, &none_expected).unwrap();
        assert_eq!(reach(&expected, IMDS).as_deref(), Some("proxy"));
        assert_eq!(reach(&expected, WIRESERVER), None);
        install_host(&exec, &proxy, &guard).unwrap();
        assert_eq!(reach(&expected, WIRESERVER).as_deref(), Some("wireserver"));
        assert_eq!(reach(&other, WIRESERVER), None);
        assert_eq!(reach(&unlisted, WIRESERVER), None);
        assert_eq!(reach(&node, WIRESERVER).as_deref(), Some("wireserver"));
        // No IPv6 proxy: IPv6 is guarded, not redirected.
        assert_eq!(reach(&expected, IMDS6).as_deref(), Some("imds6"));
        assert_eq!(reach(&other, IMDS6), None);
        // The agent's own pod goes direct (its proxy's upstream connections).
        let own = HostGuard {
            own: Some(unlisted_cg.clone()),
            ..guard.clone()
        };
        install_host(&exec, &proxy, &own).unwrap();
        assert_eq!(
            reach(&unlisted, IMDS).as_deref(),
            Some("imds"),
            "own pod direct"
        );
        assert_eq!(reach(&unlisted, WIRESERVER).as_deref(), Some("wireserver"));
        assert_eq!(reach(&other, IMDS).as_deref(), Some("proxy"));

        // A path that does not exist fails the whole transaction; the table stays as it was.
        let mut gone = own.clone();
        gone.pods.push(HostPod {
            pod: "debug/gone".into(),
            cgroup: pod_cgroup_paths(&format!("{u}-0000-4000-8000-00000000000d"))[3].clone(),
            expected: true,
        });
        let e = install_host(&exec, &proxy, &gone).unwrap_err();
        assert!(e.is_missing_cgroup(), "{e}");
        assert_eq!(host_status(&exec, &proxy, &own).unwrap(), Some(vec![]));

        // Uninstall: the unexpected pod reaches IMDS again.
        assert!(uninstall_host(&exec).unwrap());
        assert!(!uninstall_host(&exec).unwrap());
        assert_eq!(read_host(&exec).unwrap(), None);
        assert_eq!(reach(&other, IMDS).as_deref(), Some("imds"));
        assert_eq!(cgroups.close(), Vec::<String>::new());
        for cg in [&expected_cg, &other_cg, &unlisted_cg] {
            assert!(
                !Path::new(CGROUP).join(&cg.path).exists(),
                "{} removed",
                cg.path
            );
        }
    });
}
