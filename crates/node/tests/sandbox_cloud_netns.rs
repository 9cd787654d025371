//! The dual-stack sandbox of the AWS and GCP labs, enforced: a cloud namespace holding
//! the cloud's metadata addresses in both families (`sandbox::cloud_addresses`), pods
//! with an IPv6 address beside their IPv4 one (`sandbox::dual_stack_lab_pods`), and the
//! `inet imdsguard` table for that cloud in block mode.
//!
//! Each test re-runs itself inside a fresh isolated namespace (`imdsguard_testkit`), like
//! `enforce_netns`; nothing leaves it.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use imdsguard_core::nft::{Mode, RulesetConfig, SourcePair};
use imdsguard_core::target::Cloud;
use imdsguard_node::netns::Isolated;
use imdsguard_node::sandbox::{self, Reach, Sandbox, Services, dual_stack_lab_pods};
use imdsguard_node::{Enforcer, Exec};

const INNER: &str = "IMDSGUARD_NODE_CLOUD_TEST_INNER";
const WAIT: Duration = Duration::from_millis(300);

fn isolated(test: &str, body: impl FnOnce()) {
    imdsguard_testkit::isolated_test(test, INNER, &["nft", "ip", "nsenter", "unshare"], body);
}

/// Every protected endpoint of `cloud` answers `cloud` (a TCP banner in the cloud
/// namespace), its DNS echoes; then block mode for `cloud` with the allowlisted pod's
/// two pairs: every other pod (the spoofer, borrowing both of its addresses, too) is
/// dropped on every endpoint in both families, the allowlisted pod is not, DNS stays.
fn block_mode_for(cloud: Cloud) {
    let isolated = Isolated::check(None).expect("an isolated namespace");
    let pods = dual_stack_lab_pods();
    let sandbox = Sandbox::build_for(&isolated, &pods, &sandbox::cloud_addresses(cloud))
        .expect("the sandbox node");
    let mut services = Services::new();
    let targets: Vec<SocketAddr> = cloud
        .targets()
        .iter()
        .map(|t| SocketAddr::new(t.ip, t.port))
        .collect();
    assert!(
        targets.iter().any(SocketAddr::is_ipv6) && targets.iter().any(SocketAddr::is_ipv4),
        "{cloud:?} has endpoints in both families: {targets:?}"
    );
    for t in &targets {
        services
            .tcp_banner(Some(sandbox.cloud()), *t, "cloud")
            .unwrap();
    }
    let dns = sandbox::cloud_dns(cloud);
    services.udp_echo(Some(sandbox.cloud()), dns).unwrap();
    let reach = |pod: &str, addr: SocketAddr| sandbox.pod(pod).unwrap().tcp(addr, WAIT).unwrap();
    let answered = Reach::Answered("cloud".into());
    for p in &pods {
        for t in &targets {
            assert_eq!(reach(&p.name, *t), answered, "{} → {t} before", p.name);
        }
    }

    let allowed = pods.iter().find(|p| p.name == "allowed").unwrap();
    let pairs: Vec<SourcePair> = allowed
        .addrs()
        .into_iter()
        .map(|a| SourcePair::new(&allowed.ingress_iface(), a).unwrap())
        .collect();
    assert_eq!(pairs.len(), 2);
    let config = RulesetConfig::new(Mode::Block, &[cloud]);
    assert_eq!(config.protected, {
        let mut t = cloud.targets();
        t.sort();
        t.dedup();
        t
    });
    let mut enforcer = Enforcer::new(config, Exec::here())
        .unwrap()
        .with_allowed(pairs);
    enforcer.install().unwrap();
    for p in pods.iter().filter(|p| p.name != "allowed") {
        for t in &targets {
            assert_eq!(
                reach(&p.name, *t),
                Reach::Timeout,
                "{} → {t} blocked",
                p.name
            );
        }
    }
    for t in &targets {
        assert_eq!(reach("allowed", *t), answered, "allowed → {t}");
    }
    for p in sandbox.pods() {
        assert!(p.udp_echo(dns, WAIT).unwrap(), "{} → DNS {dns}", p.name());
    }
    // Every pod's drops were recorded under its own (interface, address) pairs, IPv6
    // ones included.
    assert!(enforcer.status().unwrap().enforcing);
    let dropped = enforcer.dropped_sources().unwrap();
    let web6 = pods
        .iter()
        .find(|p| p.name == "web")
        .unwrap()
        .addr6
        .unwrap();
    assert!(
        dropped
            .iter()
            .any(|d| d.iface == "azvweb" && d.addr == IpAddr::V6(web6) && d.packets > 0),
        "web's IPv6 drops: {dropped:?}"
    );
    enforcer.uninstall().unwrap();
    for t in &targets {
        assert_eq!(reach("web", *t), answered, "web → {t} after uninstall");
    }
}

#[test]
#[ignore = "needs netns"]
fn aws_block_mode_drops_both_families() {
    isolated("aws_block_mode_drops_both_families", || {
        block_mode_for(Cloud::Aws)
    });
}

#[test]
#[ignore = "needs netns"]
fn gcp_block_mode_drops_both_families() {
    isolated("gcp_block_mode_drops_both_families", || {
        block_mode_for(Cloud::Gcp)
    });
}
