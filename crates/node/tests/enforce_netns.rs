//! Enforcement on a simulated node, inside a network namespace of its own.
//!
//! Each test re-runs itself (this test binary, `--exact NAME`) inside a fresh isolated
//! namespace from `imdsguard_testkit::Netns` (`unshare --net [--map-root-user]`, only
//! `lo`), where it builds the sandbox node: a cloud namespace holding 169.254.169.254 and
//! 168.63.129.16 with small TCP servers answering `cloud`, pods on routed veths and on a
//! bridge (see `imdsguard_node::sandbox`). Nothing leaves these namespaces; they all go
//! away with the inner process (the pod namespaces' holders end with it, even on a
//! panic), taking their interfaces and nft tables with them.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use imdsguard_core::imds::{IMDS_ADDRESS, WIRESERVER_ADDRESS};
use imdsguard_core::nft::{self, Mode, RulesetConfig};
use imdsguard_core::target::Cloud;
use imdsguard_node::netns::Isolated;
use imdsguard_node::sandbox::{self, Reach, Sandbox, Services, lab_pods};
use imdsguard_node::{Enforcer, Exec, read_table, which};

const INNER: &str = "IMDSGUARD_NODE_TEST_INNER";
const WAIT: Duration = Duration::from_millis(300);
const PROXY: SocketAddr = SocketAddr::new(IpAddr::V4(sandbox::NODE_ADDR), 8169);

/// Runs `body` inside a fresh isolated namespace: this binary again, `--exact test`.
fn isolated(test: &str, body: impl FnOnce()) {
    imdsguard_testkit::isolated_test(test, INNER, &["nft", "ip", "nsenter", "unshare"], body);
}

fn protected() -> [SocketAddr; 3] {
    [
        SocketAddr::new(IMDS_ADDRESS.into(), 80),
        SocketAddr::new(WIRESERVER_ADDRESS.into(), 80),
        SocketAddr::new(WIRESERVER_ADDRESS.into(), 32526),
    ]
}

fn cloud_answer() -> Reach {
    Reach::Answered("cloud".into())
}

struct World {
    sandbox: Sandbox,
    _services: Services,
}

impl World {
    fn new() -> World {
        let isolated = Isolated::check(None).expect("an isolated namespace");
        let sandbox = Sandbox::build(&isolated, &lab_pods()).expect("the sandbox node");
        let mut services = Services::new();
        let cloud = Some(sandbox.cloud());
        for addr in protected() {
            services.tcp_banner(cloud, addr, "cloud").unwrap();
        }
        let dns = SocketAddr::new(WIRESERVER_ADDRESS.into(), 53);
        services.tcp_banner(cloud, dns, "dns").unwrap();
        services.udp_echo(cloud, dns).unwrap();
        services
            .udp_echo(None, SocketAddr::new(sandbox::NODE_LOCAL_DNS.into(), 53))
            .unwrap();
        services.tcp_banner(None, PROXY, "proxy").unwrap();
        World {
            sandbox,
            _services: services,
        }
    }

    fn reach(&self, pod: &str, addr: SocketAddr) -> Reach {
        self.sandbox.pod(pod).unwrap().tcp(addr, WAIT).unwrap()
    }

    fn enforcer(&self, mode: Mode) -> Enforcer {
        let mut config = RulesetConfig::new(mode, &[Cloud::Azure]);
        if let SocketAddr::V4(a) = PROXY {
            config.proxy_v4 = Some(a);
        }
        Enforcer::new(config, Exec::here()).unwrap()
    }
}

fn allowed_addr() -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 244, 0, 10))
}

/// The pods the node hosts, as (interface, address): every lab pod but the spoofer
/// (bridged pods enter on the bridge).
fn known_pairs() -> Vec<nft::SourcePair> {
    lab_pods()
        .iter()
        .filter(|p| p.name != "spoofer")
        .map(|p| nft::SourcePair::new(&p.ingress_iface(), IpAddr::V4(p.addr)).unwrap())
        .collect()
}

#[test]
#[ignore = "needs netns"]
fn block_mode_blocks_pods_but_the_allowlisted_one_and_keeps_dns() {
    isolated(
        "block_mode_blocks_pods_but_the_allowlisted_one_and_keeps_dns",
        || {
            let w = World::new();
            // Without protection every pod reaches every endpoint, the spoofer included
            // (its answers are routed back to it): the attack the allow set must stop.
            for pod in ["allowed", "web", "spoofer", "batch"] {
                for addr in protected() {
                    assert_eq!(w.reach(pod, addr), cloud_answer(), "{pod} → {addr} before");
                }
            }

            let mut enforcer =
                w.enforcer(Mode::Block)
                    .with_allowed([imdsguard_core::nft::SourcePair::new(
                        "azvallowed",
                        allowed_addr(),
                    )
                    .unwrap()]);
            let report = enforcer.install().unwrap();
            assert_eq!(report.mode, Mode::Block);
            if which("conntrack") {
                assert!(
                    report.conntrack.deleted > 0,
                    "the flows opened above are flushed: {report:?}"
                );
            }

            for pod in ["web", "spoofer", "batch"] {
                for addr in protected() {
                    assert_eq!(w.reach(pod, addr), Reach::Timeout, "{pod} → {addr} blocked");
                }
            }
            for addr in protected() {
                assert_eq!(w.reach("allowed", addr), cloud_answer(), "allowed → {addr}");
            }
            // DNS is untouched: Azure DNS (UDP echo and TCP) and node-local DNS.
            let dns = SocketAddr::new(WIRESERVER_ADDRESS.into(), 53);
            let local_dns = SocketAddr::new(sandbox::NODE_LOCAL_DNS.into(), 53);
            for pod in w.sandbox.pods() {
                assert!(
                    pod.udp_echo(dns, WAIT).unwrap(),
                    "{} → Azure DNS/udp",
                    pod.name()
                );
                assert!(
                    pod.udp_echo(local_dns, WAIT).unwrap(),
                    "{} → node-local DNS",
                    pod.name()
                );
                assert_eq!(pod.tcp(dns, WAIT).unwrap(), Reach::Answered("dns".into()));
            }

            let status = enforcer.status().unwrap();
            assert!(status.enforcing, "{status:?}");
            assert_eq!(status.mode, Some(Mode::Block));
            let counters = enforcer.counters().unwrap();
            let get = |n: &str| counters.iter().find(|c| c.name == n).unwrap().packets;
            assert!(get(nft::counter::BLOCKED) >= 9, "{counters:?}");
            assert!(get(nft::counter::ALLOWED) >= 3, "{counters:?}");
        },
    );
}

#[test]
#[ignore = "needs netns"]
fn dropped_sources_name_the_blocked_pairs_with_their_packets() {
    isolated(
        "dropped_sources_name_the_blocked_pairs_with_their_packets",
        || {
            let w = World::new();
            let allowed = nft::SourcePair::new("azvallowed", allowed_addr()).unwrap();
            let mut enforcer = w.enforcer(Mode::Block).with_allowed([allowed]);
            enforcer.install().unwrap();
            assert!(enforcer.dropped_sources().unwrap().is_empty());

            // `web` tries twice, the spoofer (allowed's address, its own interface) once;
            // `allowed` goes through and is not recorded.
            for _ in 0..2 {
                assert_eq!(w.reach("web", protected()[0]), Reach::Timeout);
            }
            assert_eq!(w.reach("spoofer", protected()[1]), Reach::Timeout);
            assert_eq!(w.reach("allowed", protected()[0]), cloud_answer());

            let dropped = enforcer.dropped_sources().unwrap();
            let find = |iface: &str| dropped.iter().find(|d| d.iface == iface);
            let web = find("azvweb").unwrap_or_else(|| panic!("web recorded: {dropped:?}"));
            assert_eq!(web.addr, IpAddr::V4(Ipv4Addr::new(10, 244, 0, 11)));
            // A timed-out connect retransmits its SYN: at least one packet per try.
            assert!(web.packets >= 2, "{dropped:?}");
            assert!(web.bytes > 0, "{dropped:?}");
            let spoofer = find("azvspoofer").unwrap_or_else(|| panic!("{dropped:?}"));
            assert_eq!(spoofer.addr, allowed_addr());
            assert!(spoofer.packets >= 1);
            assert!(find("azvallowed").is_none(), "{dropped:?}");
            assert_eq!(dropped.len(), 2, "{dropped:?}");
            let blocked = enforcer
                .counters()
                .unwrap()
                .into_iter()
                .find(|c| c.name == nft::counter::BLOCKED)
                .unwrap();
            assert_eq!(blocked.packets, web.packets + spoofer.packets);

            // A rebuild starts the sets afresh; the drops go on being recorded.
            enforcer.install().unwrap();
            assert!(enforcer.dropped_sources().unwrap().is_empty());
            assert_eq!(w.reach("web", protected()[2]), Reach::Timeout);
            assert_eq!(enforcer.dropped_sources().unwrap().len(), 1);
        },
    );
}

/// Connects from `pod` over and over (four threads) until stopped; counts the attempts
/// that reached the cloud.
struct Hammer {
    stop: Arc<AtomicBool>,
    attempts: Arc<AtomicUsize>,
    leaks: Arc<AtomicUsize>,
    threads: Vec<std::thread::JoinHandle<Result<(), imdsguard_node::NodeError>>>,
}

impl Hammer {
    fn start(w: &World, pod: &str) -> Hammer {
        let stop = Arc::new(AtomicBool::new(false));
        let attempts = Arc::new(AtomicUsize::new(0));
        let leaks = Arc::new(AtomicUsize::new(0));
        let mut threads = Vec::new();
        for i in 0..4 {
            let (stop, attempts, leaks) = (stop.clone(), attempts.clone(), leaks.clone());
            let addr = protected()[i % 3];
            threads.push(w.sandbox.pod(pod).unwrap().netns().spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let r = sandbox::tcp_check(addr, Duration::from_millis(15));
                    attempts.fetch_add(1, Ordering::Relaxed);
                    if r == Reach::Answered("cloud".into()) {
                        leaks.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        Hammer {
            stop,
            attempts,
            leaks,
            threads,
        }
    }

    /// (attempts, leaks)
    fn stop(self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap().unwrap();
        }
        (
            self.attempts.load(Ordering::Relaxed),
            self.leaks.load(Ordering::Relaxed),
        )
    }
}

#[test]
#[ignore = "needs netns"]
fn replacing_the_table_leaves_no_window() {
    isolated("replacing_the_table_leaves_no_window", || {
        let w = World::new();
        let mut enforcer = w.enforcer(Mode::Block);
        enforcer.install().unwrap();
        let hammer = Hammer::start(&w, "web");
        for i in 0..40 {
            // Restarts in block mode, and switches between block and proxy mode.
            let mode = if i % 4 == 3 { Mode::Proxy } else { Mode::Block };
            let mut config = enforcer.config().clone();
            config.mode = mode;
            config.log.rate_per_second = 10 + i;
            enforcer.replace(config).unwrap();
        }
        let mut config = enforcer.config().clone();
        config.mode = Mode::Block;
        enforcer.replace(config).unwrap();
        let (attempts, leaks) = hammer.stop();
        eprintln!("{attempts} attempts during 41 replacements, {leaks} reached the cloud");
        assert!(attempts > 100, "the pod kept trying ({attempts})");
        assert_eq!(leaks, 0, "a replacement opened a window");

        // Control: the same pod does see a window when the table is removed and put back
        // in two transactions, so the check above would have caught one.
        let hammer = Hammer::start(&w, "web");
        imdsguard_node::uninstall_table(&Exec::here()).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        enforcer.install().unwrap();
        let (_, leaks) = hammer.stop();
        assert!(leaks > 0, "the control saw the window");
    });
}

#[test]
#[ignore = "needs netns"]
fn uninstall_removes_only_our_table() {
    isolated("uninstall_removes_only_our_table", || {
        let w = World::new();
        let node = Exec::here();
        let other = "table inet other {\n set s { type ipv4_addr; elements = { 10.9.9.9 } }\n chain c { type filter hook forward priority 0; policy accept; ip daddr 10.9.9.9 counter; }\n}\n";
        node.run("nft", ["-f", "-"], Some(other.as_bytes()))
            .unwrap();
        let other_rules = || {
            let text = node
                .run("nft", ["-j", "list", "table", "inet", "other"], None)
                .unwrap();
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            v["nftables"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|o| o.get("rule").is_some() || o.get("set").is_some())
                .count()
        };
        assert_eq!(other_rules(), 2);
        let mut enforcer = w.enforcer(Mode::Block);
        enforcer.install().unwrap();
        assert_eq!(other_rules(), 2, "install keeps inet other");
        let mut config = enforcer.config().clone();
        config.mode = Mode::Observe;
        enforcer.replace(config).unwrap();
        assert_eq!(other_rules(), 2, "replace keeps inet other");
        assert_eq!(
            w.reach("web", protected()[0]),
            cloud_answer(),
            "observe lets through"
        );
        assert!(enforcer.uninstall().unwrap());
        assert!(read_table(&node).unwrap().is_none());
        assert_eq!(other_rules(), 2, "uninstall keeps inet other");
        assert!(
            !enforcer.uninstall().unwrap(),
            "a second uninstall finds nothing"
        );
        let status = enforcer.status().unwrap();
        assert!(!status.installed && !status.enforcing);
        // The sandbox's own table is another foreign table: still there.
        node.run("nft", ["list", "table", "inet", "sandbox"], None)
            .unwrap();
    });
}

#[test]
#[ignore = "needs netns"]
fn allow_set_changes_do_not_rebuild_the_table() {
    isolated("allow_set_changes_do_not_rebuild_the_table", || {
        let w = World::new();
        let node = Exec::here();
        let mut enforcer = w.enforcer(Mode::Block);
        enforcer.install().unwrap();
        assert_eq!(w.reach("web", protected()[0]), Reach::Timeout);
        let before = read_table(&node).unwrap().unwrap();
        let blocked = before.counter(nft::counter::BLOCKED).unwrap().packets;
        assert!(blocked > 0);

        let web = IpAddr::V4(Ipv4Addr::new(10, 244, 0, 11));
        enforcer.add_allowed("azvweb", web).unwrap();
        assert_eq!(w.reach("web", protected()[0]), cloud_answer());
        // The address alone is not enough: from another interface it stays blocked.
        enforcer
            .add_allowed("azvelsewhere", allowed_addr())
            .unwrap();
        assert_eq!(w.reach("allowed", protected()[0]), Reach::Timeout);
        assert_eq!(w.reach("spoofer", protected()[0]), Reach::Timeout);

        let after = read_table(&node).unwrap().unwrap();
        assert_eq!(after.handle, before.handle, "same table");
        assert_eq!(after.chains, before.chains, "same chains and rule handles");
        assert!(after.counter(nft::counter::BLOCKED).unwrap().packets >= blocked);
        assert_eq!(after.allowed.len(), 2);

        enforcer.remove_allowed("azvweb", web).unwrap();
        enforcer.remove_allowed("azvweb", web).unwrap(); // absent: fine
        assert_eq!(w.reach("web", protected()[0]), Reach::Timeout);
        let known: Vec<_> = enforcer.known().cloned().collect();
        enforcer
            .sync_pairs(
                [imdsguard_core::nft::SourcePair::new("azvallowed", allowed_addr()).unwrap()],
                known,
            )
            .unwrap();
        assert_eq!(w.reach("allowed", protected()[0]), cloud_answer());
        let last = read_table(&node).unwrap().unwrap();
        assert_eq!(last.chains, before.chains);
        assert_eq!(last.allowed.len(), 1);
        assert!(enforcer.status().unwrap().enforcing);

        // A restart (replace) keeps the allowlist and the counters.
        let config = enforcer.config().clone();
        enforcer.replace(config).unwrap();
        let replaced = read_table(&node).unwrap().unwrap();
        assert_eq!(replaced.allowed, last.allowed);
        assert!(
            replaced.counter(nft::counter::BLOCKED).unwrap().packets
                >= last.counter(nft::counter::BLOCKED).unwrap().packets
        );
    });
}

#[test]
#[ignore = "needs netns"]
fn proxy_mode_redirects_to_the_proxy_and_observe_mode_counts() {
    isolated(
        "proxy_mode_redirects_to_the_proxy_and_observe_mode_counts",
        || {
            let w = World::new();
            let node = Exec::here();
            let mut enforcer = w.enforcer(Mode::Proxy).with_known(known_pairs());
            enforcer
                .add_allowed("azvallowed", allowed_addr())
                .unwrap_err(); // no table yet
            enforcer.install().unwrap();
            enforcer.add_allowed("azvallowed", allowed_addr()).unwrap();
            for pod in ["web", "batch"] {
                // IMDS goes to the proxy; WireServer (which the proxy does not serve) is dropped.
                let [imds, wire, hostga] = protected();
                assert_eq!(
                    w.reach(pod, imds),
                    Reach::Answered("proxy".into()),
                    "{pod} → IMDS"
                );
                assert_eq!(w.reach(pod, wire), Reach::Timeout, "{pod} → WireServer");
                assert_eq!(w.reach(pod, hostga), Reach::Timeout, "{pod} → HostGAPlugin");
            }
            // Allowlisted: straight to the endpoint.
            assert_eq!(w.reach("allowed", protected()[0]), cloud_answer());
            // The spoofer borrows the allowed pod's address on its own interface: its
            // pair is not known, so it is neither redirected (the proxy would take it
            // for the allowed pod) nor let through. Dropped and counted.
            for addr in protected() {
                assert_eq!(w.reach("spoofer", addr), Reach::Timeout, "spoofer → {addr}");
            }
            let before = read_table(&node).unwrap().unwrap();
            assert!(
                before.counter(nft::counter::SPOOFED).unwrap().packets >= 3,
                "{:?}",
                before.counters
            );
            // Control: with the spoofer's pair known, the same connection reaches the
            // proxy, which identifies callers by address only: the binding to the
            // interface is what keeps it out.
            let allowed: Vec<_> = enforcer.allowed().cloned().collect();
            let mut with_spoofer = known_pairs();
            with_spoofer.push(nft::SourcePair::new("azvspoofer", allowed_addr()).unwrap());
            enforcer.sync_pairs(allowed.clone(), with_spoofer).unwrap();
            assert_eq!(
                w.reach("spoofer", protected()[0]),
                Reach::Answered("proxy".into())
            );
            enforcer.sync_pairs(allowed, known_pairs()).unwrap();
            assert_eq!(w.reach("spoofer", protected()[0]), Reach::Timeout);
            // A pod that leaves the node (set elements only) is no longer redirected.
            let without_web: Vec<_> = known_pairs()
                .into_iter()
                .filter(|p| p.iface != "azvweb")
                .collect();
            let changes = enforcer
                .sync_pairs(enforcer.allowed().cloned().collect::<Vec<_>>(), without_web)
                .unwrap();
            assert_eq!(changes.remove_known.len(), 1);
            assert_eq!(w.reach("web", protected()[0]), Reach::Timeout);
            enforcer
                .sync_pairs(
                    enforcer.allowed().cloned().collect::<Vec<_>>(),
                    known_pairs(),
                )
                .unwrap();
            assert_eq!(
                w.reach("web", protected()[0]),
                Reach::Answered("proxy".into())
            );
            let after = read_table(&node).unwrap().unwrap();
            assert_eq!(after.handle, before.handle, "same table");
            assert_eq!(after.chains, before.chains, "same chains and rule handles");
            assert_eq!(after.known, {
                let mut k = known_pairs();
                k.sort();
                k
            });
            let status = enforcer.status().unwrap();
            assert!(status.enforcing, "{status:?}");
            assert_eq!(status.mode, Some(Mode::Proxy));
            let proxied = |e: &Enforcer| {
                e.counters()
                    .unwrap()
                    .into_iter()
                    .find(|c| c.name == nft::counter::PROXIED)
                    .unwrap()
                    .packets
            };
            assert!(proxied(&enforcer) >= 2);

            let mut config = enforcer.config().clone();
            config.mode = Mode::Observe;
            enforcer.replace(config).unwrap();
            assert_eq!(w.reach("web", protected()[0]), cloud_answer());
            let observed = enforcer
                .counters()
                .unwrap()
                .into_iter()
                .find(|c| c.name == nft::counter::OBSERVED)
                .unwrap();
            assert!(observed.packets > 0);
            assert_eq!(enforcer.status().unwrap().mode, Some(Mode::Observe));
        },
    );
}

#[test]
fn the_core_batch_fits_the_nftables_crate_schema() {
    // Not a namespace test: the JSON the core builds deserializes into the `nftables`
    // crate's schema types (a second opinion on field names and shapes).
    let mut config = RulesetConfig::new(Mode::Proxy, &[Cloud::Azure, Cloud::Aws]);
    config.proxy_v4 = Some("10.224.0.4:8169".parse().unwrap());
    config.proxy_v6 = Some("[fd00::4]:8169".parse().unwrap());
    let allowed = [imdsguard_core::nft::SourcePair::new("azva", allowed_addr()).unwrap()];
    for mode in [Mode::Block, Mode::Observe, Mode::Proxy] {
        config.mode = mode;
        let batch = nft::ruleset_with_known(&config, &allowed, &allowed, &[]).unwrap();
        assert_round_trip(&batch, &mode.to_string());
    }
    for batch in [
        nft::delete_table(),
        nft::add_allowed(&allowed),
        nft::remove_allowed(&allowed),
        nft::PairChanges {
            add_known: allowed.to_vec(),
            remove_known: allowed.to_vec(),
            ..Default::default()
        }
        .batch(),
    ] {
        assert_round_trip(&batch, "a set batch");
    }
}

/// `batch` reads as the `nftables` crate's schema and writes back unchanged: every field
/// the core emits is one the schema knows, with the shape it expects. Two known gaps of
/// nftables 0.6 are allowed, each exactly: it has no `stmt` on sets (the per-element
/// counter of the dropped sets, which `nft` accepts), and it writes a named counter's
/// unset `bytes` as `null`.
fn assert_round_trip(batch: &serde_json::Value, what: &str) {
    let parsed: nftables::schema::Nftables = serde_json::from_value(batch.clone())
        .unwrap_or_else(|e| panic!("{what}: not the nftables schema: {e}\n{batch}"));
    let mut again = serde_json::to_value(&parsed).expect("the schema types serialize");
    let mut sent = batch.clone();
    for (cmd, back) in commands(&mut sent).iter_mut().zip(commands(&mut again)) {
        if let Some(set) = cmd.pointer_mut("/add/set").and_then(|s| s.as_object_mut())
            && set.get("stmt") == Some(&serde_json::json!([{"counter": null}]))
        {
            set.remove("stmt");
        }
        if let Some(counter) = back
            .pointer_mut("/add/counter")
            .and_then(|c| c.as_object_mut())
            && counter.get("bytes") == Some(&serde_json::Value::Null)
        {
            counter.remove("bytes");
        }
    }
    assert_eq!(again, sent, "{what}: the schema reads it differently");
}

fn commands(batch: &mut serde_json::Value) -> &mut Vec<serde_json::Value> {
    batch["nftables"]
        .as_array_mut()
        .expect("a batch is {\"nftables\": [...]}")
}
