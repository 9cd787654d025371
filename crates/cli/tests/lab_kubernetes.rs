//! `imdsguard lab --kubernetes` end to end, inside a network namespace of its own
//! (`imdsguard_testkit::Netns`): the lab starts the test control plane in its node
//! namespace, plays the kubelet, applies a `MetadataAccessPolicy`, runs the controller and
//! the agent, and probes every pod before and after. The generated NetworkPolicies it read
//! back are then checked by `imdsguard audit` and by an independent analyzer, np-guard's
//! netpol-analyzer (`scripts/netpol-analyzer.sh build`): both must say that only
//! `platform/allowed` may reach IMDS (169.254.169.254:80/TCP) and that no pod may reach
//! WireServer.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;

use imdsguard_testkit::control_plane::repo_root;
use imdsguard_testkit::{Netns, Scratch, require, require_path};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_imdsguard");

/// The tools the lab runs (and the control plane's script: bash, openssl, curl, python3).
const TOOLS: [&str; 9] = [
    "nft", "ip", "nsenter", "unshare", "setpriv", "bash", "openssl", "curl", "python3",
];

/// The Azure targets, as the audit writes them, and as (address, protocol, port).
const TARGETS: [(&str, Ipv4Addr, &str, u16); 3] = [
    (
        "169.254.169.254:80/TCP",
        Ipv4Addr::new(169, 254, 169, 254),
        "TCP",
        80,
    ),
    (
        "168.63.129.16:80/TCP",
        Ipv4Addr::new(168, 63, 129, 16),
        "TCP",
        80,
    ),
    (
        "168.63.129.16:32526/TCP",
        Ipv4Addr::new(168, 63, 129, 16),
        "TCP",
        32526,
    ),
];

fn row<'a>(phase: &'a Value, pod: &str) -> &'a Value {
    phase["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["pod"] == pod)
        .unwrap_or_else(|| panic!("no row for {pod} in {}", phase["phase"]))
}

/// One line of netpol-analyzer's connectivity list: `SRC => DST : CONNS`.
#[derive(Debug)]
struct Conn {
    src: String,
    dst: String,
    conns: String,
}

fn parse_connlist(text: &str) -> Vec<Conn> {
    text.lines()
        .filter_map(|l| {
            let (src, rest) = l.split_once(" => ")?;
            let (dst, conns) = rest.split_once(" : ")?;
            Some(Conn {
                src: src.trim().to_owned(),
                dst: dst.trim().to_owned(),
                conns: conns.trim().to_owned(),
            })
        })
        .collect()
}

/// Whether an external destination `a.b.c.d-e.f.g.h` (or one address) holds `ip`.
fn range_holds(dst: &str, ip: Ipv4Addr) -> bool {
    let (lo, hi) = dst.split_once('-').unwrap_or((dst, dst));
    match (lo.parse::<Ipv4Addr>(), hi.parse::<Ipv4Addr>()) {
        (Ok(lo), Ok(hi)) => lo <= ip && ip <= hi,
        _ => false,
    }
}

/// Whether CONNS (`All Connections`, or `TCP 1-79,81-65535,UDP 53` ...) holds `proto`
/// `port`.
fn conns_hold(conns: &str, proto: &str, port: u16) -> bool {
    if conns == "All Connections" {
        return true;
    }
    let mut current = "";
    for item in conns.split(',') {
        let item = item.trim();
        let ports = match item.split_once(' ') {
            Some((p, ports)) if ["TCP", "UDP", "SCTP"].contains(&p) => {
                current = p;
                ports
            }
            _ => item,
        };
        if current != proto {
            continue;
        }
        let (lo, hi) = ports.split_once('-').unwrap_or((ports, ports));
        if let (Ok(lo), Ok(hi)) = (lo.parse::<u16>(), hi.parse::<u16>())
            && lo <= port
            && port <= hi
        {
            return true;
        }
    }
    false
}

/// The workloads netpol-analyzer says may reach (ip, proto, port).
fn analyzer_reaching(list: &[Conn], ip: Ipv4Addr, proto: &str, port: u16) -> BTreeSet<String> {
    list.iter()
        .filter(|c| range_holds(&c.dst, ip) && conns_hold(&c.conns, proto, port))
        .map(|c| c.src.clone())
        .collect()
}

/// The workloads `imdsguard audit --format json` says may reach `target`.
fn audit_reaching(report: &Value, target: &str) -> BTreeSet<String> {
    report["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| {
            w["verdicts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|v| v["target"] == target && v["reachable"] == true)
        })
        .map(|w| {
            format!(
                "{}/{}[{}]",
                w["namespace"].as_str().unwrap(),
                w["name"].as_str().unwrap(),
                w["kind"].as_str().unwrap()
            )
        })
        .collect()
}

fn check_matrix(report: &Value) {
    assert_eq!(report["as_expected"], true, "{report:#}");
    let phases = report["phases"].as_array().unwrap();
    let names: Vec<&str> = phases
        .iter()
        .map(|p| p["phase"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["before", "controller"]);
    let (before, after) = (&phases[0], &phases[1]);
    for pod in ["allowed", "web", "spoofer", "batch", "node"] {
        let r = row(before, pod);
        assert_eq!(r["sensitive"], true, "{pod} before: {r}");
        assert_eq!(r["token"], "token-obtained", "{pod} before: {r}");
        for phase in phases {
            let r = row(phase, pod);
            let at = &phase["phase"];
            assert_eq!(r["azure_dns"], true, "{pod} Azure DNS in {at}");
            assert_eq!(r["node_local_dns"], true, "{pod} node-local DNS in {at}");
            assert_eq!(r["pod_to_pod"], true, "{pod} pod-to-pod in {at}");
        }
    }
    for pod in ["allowed", "node"] {
        let r = row(after, pod);
        assert_eq!(r["token"], "token-obtained", "{pod} after: {r}");
    }
    for pod in ["web", "spoofer", "batch"] {
        let r = row(after, pod);
        assert_eq!(r["sensitive"], false, "{pod} after: {r}");
        for step in ["imds", "token", "wireserver", "hostgaplugin"] {
            assert_eq!(r[step], "blocked-timeout", "{pod} after {step}: {r}");
        }
    }
    assert!(
        after["enforcement"]
            .as_str()
            .unwrap()
            .contains("MetadataAccessPolicy"),
        "{after}"
    );
    let blocked = after["counters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "blocked")
        .expect("a blocked counter");
    assert!(blocked["packets"].as_u64().unwrap() > 0, "{blocked}");
    let kube = &report["kubernetes"];
    assert_eq!(kube["node"], "lab-node");
    let pods: Vec<&str> = kube["pods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(pods, ["platform/allowed", "shop/web", "jobs/batch"]);
    let policies: Vec<&str> = kube["network_policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    for ns in ["platform", "shop", "jobs"] {
        assert!(
            policies.iter().any(|p| p.starts_with(&format!("{ns}/"))),
            "no NetworkPolicy in {ns}: {policies:?}"
        );
    }
}

#[test]
#[ignore = "needs netns"]
fn the_lab_on_kubernetes_protects_every_pod_but_the_expected_one() {
    let test = "the_lab_on_kubernetes_protects_every_pod_but_the_expected_one";
    require(test, &TOOLS);
    let root = repo_root();
    let script = root.join("scripts/control-plane.sh");
    require_path(test, &script, "the test control plane's script");
    // The analyzer must be there: the test fails, never skips, without it.
    let analyzer = Command::new("bash")
        .arg(root.join("scripts/netpol-analyzer.sh"))
        .arg("path")
        .output()
        .unwrap();
    assert!(
        analyzer.status.success(),
        "{test} cannot run: {} (scripts/test.sh builds it)",
        String::from_utf8_lossy(&analyzer.stderr).trim()
    );
    let analyzer = String::from_utf8_lossy(&analyzer.stdout).trim().to_owned();

    let scratch = Scratch::new(Path::new(env!("CARGO_TARGET_TMPDIR")), "lab-kubernetes");
    let dump = scratch.join("read-back");
    let ns = Netns::require(test);
    let out = ns.run(
        r#"exec "$BIN" lab --kubernetes --format json --control-plane-script "$SCRIPT" --dump-policies "$DUMP""#,
        &[
            ("BIN", BIN),
            ("SCRIPT", script.to_str().unwrap()),
            ("DUMP", dump.to_str().unwrap()),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let report: Value = serde_json::from_str(&stdout).expect("JSON");
    check_matrix(&report);

    // The lab's own audit of the read-back objects (the core, in the lab).
    let lab_audit = report["kubernetes"]["audit"].as_array().unwrap();
    let lab_reaching = |target: &str| -> BTreeSet<String> {
        lab_audit
            .iter()
            .find(|t| t["target"] == target)
            .unwrap_or_else(|| panic!("no audit of {target}"))["reachable"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w.as_str().unwrap().to_owned())
            .collect()
    };

    // `imdsguard audit` on the dumped objects, with the NetworkPolicy API's semantics.
    for file in ["namespaces.yaml", "pods.yaml", "networkpolicies.yaml"] {
        assert!(dump.join(file).is_file(), "{file} not written");
    }
    let audit = Command::new(BIN)
        .args(["audit", "--engine", "generic", "--format", "json"])
        .arg(&dump)
        .output()
        .unwrap();
    let audit_json: Value = serde_json::from_slice(&audit.stdout).unwrap_or_else(|e| {
        panic!(
            "audit's JSON: {e}\n{}",
            String::from_utf8_lossy(&audit.stderr)
        )
    });

    // np-guard's netpol-analyzer on the same objects, IPv4 part (see `ipv4_only`).
    let input = scratch.join("analyzer-input");
    std::fs::create_dir_all(&input).unwrap();
    for file in ["namespaces.yaml", "pods.yaml"] {
        std::fs::copy(dump.join(file), input.join(file)).unwrap();
    }
    let text = std::fs::read_to_string(dump.join("networkpolicies.yaml")).unwrap();
    let mut policies: Value = serde_norway::from_str(&text).unwrap();
    ipv4_only(&mut policies);
    std::fs::write(
        input.join("networkpolicies.yaml"),
        serde_norway::to_string(&policies).unwrap(),
    )
    .unwrap();
    let listed = Command::new(&analyzer)
        .args(["list", "--dirpath"])
        .arg(&input)
        .args(["-o", "txt"])
        .output()
        .unwrap();
    assert!(
        listed.status.success(),
        "netpol-analyzer failed: {}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let list = parse_connlist(&String::from_utf8_lossy(&listed.stdout));
    assert!(!list.is_empty(), "netpol-analyzer listed no connection");

    let allowed: BTreeSet<String> = ["platform/allowed[Pod]".to_owned()].into();
    for (target, ip, proto, port) in TARGETS {
        let by_analyzer = analyzer_reaching(&list, ip, proto, port);
        let by_audit = audit_reaching(&audit_json, target);
        let by_lab = lab_reaching(target);
        let want = if target.starts_with("169.254.169.254:") {
            allowed.clone()
        } else {
            BTreeSet::new()
        };
        assert_eq!(by_analyzer, want, "netpol-analyzer, {target}: {list:#?}");
        assert_eq!(by_audit, want, "imdsguard audit, {target}");
        assert_eq!(by_lab, want, "the lab's audit, {target}");
    }
    // The policies leave the rest open: DNS (Azure DNS's UDP 53) and pod-to-pod traffic,
    // as the analyzer sees them too.
    let dns = analyzer_reaching(&list, Ipv4Addr::new(168, 63, 129, 16), "UDP", 53);
    for src in ["platform/allowed[Pod]", "shop/web[Pod]", "jobs/batch[Pod]"] {
        assert!(
            dns.contains(src),
            "{src} may not reach Azure DNS: {list:#?}"
        );
    }
    for src in ["platform/allowed[Pod]", "jobs/batch[Pod]"] {
        assert!(
            list.iter().any(|c| c.src == src
                && c.dst == "shop/web[Pod]"
                && conns_hold(&c.conns, "TCP", 8080)),
            "{src} may not reach shop/web on 8080: {list:#?}"
        );
    }
}

/// The IPv4 part of a NetworkPolicy list, for netpol-analyzer, which analyzes IPv4 only
/// but reads an IPv6 `ipBlock` as IPv4 (np-guard/models v0.5.6 `cidrToInterval` takes the
/// first 4 bytes of the address and of the mask: `::/0` becomes 0.0.0.0-255.255.255.255,
/// every IPv4 address). An IPv6 peer matches no IPv4 address, so leaving it out changes no
/// IPv4 verdict; a rule whose peers were all IPv6 matches no IPv4 destination and goes
/// whole (an empty `to` would mean every destination); the policy still isolates.
fn ipv4_only(list: &mut Value) -> usize {
    let mut dropped = 0;
    for policy in list["items"].as_array_mut().unwrap() {
        for dir in ["egress", "ingress"] {
            let peers = if dir == "egress" { "to" } else { "from" };
            let Some(rules) = policy
                .get_mut("spec")
                .and_then(|s| s.get_mut(dir))
                .and_then(Value::as_array_mut)
            else {
                continue;
            };
            rules.retain_mut(|rule| {
                let Some(list) = rule.get_mut(peers).and_then(Value::as_array_mut) else {
                    return true; // no peers: every address, IPv4 included
                };
                let before = list.len();
                list.retain(|p| {
                    p["ipBlock"]["cidr"]
                        .as_str()
                        .is_none_or(|c| !c.contains(':'))
                });
                dropped += before - list.len();
                !(before > 0 && list.is_empty())
            });
        }
    }
    dropped
}

#[test]
fn the_ipv4_projection_drops_ipv6_peers_and_rules_made_only_of_them() {
    let mut list: Value = serde_json::json!({"items": [{"spec": {
        "podSelector": {},
        "policyTypes": ["Egress"],
        "egress": [
            {"to": [{"ipBlock": {"cidr": "::/0"}}]},
            {"to": [{"ipBlock": {"cidr": "fd00::/8"}}, {"ipBlock": {"cidr": "10.0.0.0/8"}}]},
            {"ports": [{"protocol": "UDP", "port": 53}]},
            {"to": [{"namespaceSelector": {}}]}
        ]
    }}]});
    assert_eq!(ipv4_only(&mut list), 2);
    assert_eq!(
        list["items"][0]["spec"]["egress"],
        serde_json::json!([
            {"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]},
            {"ports": [{"protocol": "UDP", "port": 53}]},
            {"to": [{"namespaceSelector": {}}]}
        ])
    );
    // A policy left without rules still isolates: its egress stays an empty list.
    let mut only6: Value = serde_json::json!({"items": [{"spec": {
        "podSelector": {}, "policyTypes": ["Egress"],
        "egress": [{"to": [{"ipBlock": {"cidr": "::/0"}}]}]
    }}]});
    ipv4_only(&mut only6);
    assert_eq!(only6["items"][0]["spec"]["egress"], serde_json::json!([]));
}

#[test]
fn the_connectivity_list_reads_as_netpol_analyzer_writes_it() {
    // Lines in netpol-analyzer's `list` format (as its golden outputs are written).
    let list = parse_connlist(
        "ns1/pod1[Deployment] => 0.0.0.0-168.63.129.15 : All Connections\n\
         ns1/pod1[Deployment] => 169.254.169.254-169.254.169.254 : SCTP 1-65535,TCP 1-79,81-65535,UDP 1-65535\n\
         ns2/pod1[Deployment] => 169.254.169.254-169.254.169.254 : All Connections\n\
         ns3/pod1[Pod] => 168.63.129.16 : UDP 53\n",
    );
    assert_eq!(list.len(), 4);
    let imds = Ipv4Addr::new(169, 254, 169, 254);
    assert_eq!(
        analyzer_reaching(&list, imds, "TCP", 80),
        ["ns2/pod1[Deployment]".to_owned()].into()
    );
    assert_eq!(analyzer_reaching(&list, imds, "TCP", 81).len(), 2);
    assert_eq!(analyzer_reaching(&list, imds, "UDP", 80).len(), 2);
    let wire = Ipv4Addr::new(168, 63, 129, 16);
    assert_eq!(
        analyzer_reaching(&list, wire, "UDP", 53),
        ["ns3/pod1[Pod]".to_owned()].into()
    );
    assert!(analyzer_reaching(&list, wire, "TCP", 53).is_empty());
    assert!(!conns_hold("TCP 1-79,81-65535", "TCP", 80));
    assert!(conns_hold(
        "SCTP 1-9002,9004-65535,TCP 1-79,81-65535,UDP 53",
        "UDP",
        53
    ));
    assert!(!conns_hold(
        "SCTP 1-9002,9004-65535,TCP 1-79,81-65535,UDP 53",
        "SCTP",
        9003
    ));
}

#[test]
fn the_lab_needs_its_control_plane_script_with_kubernetes() {
    let out = Command::new(BIN)
        .args([
            "lab",
            "--kubernetes",
            "--control-plane-script",
            "/nonexistent/control-plane.sh",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/nonexistent/control-plane.sh"), "{stderr}");
    assert!(
        stderr.contains("scripts/control-plane.sh build"),
        "{stderr}"
    );
}

/// Set in the signal test's lab's environment, which every process it starts inherits
/// (the agent, the controller, etcd, kube-apiserver, the control plane's watchdog): how
/// they are found.
const MARK: &str = "IMDSGUARD_LAB_KUBERNETES_TEST_MARK";
const INNER: &str = "IMDSGUARD_LAB_KUBERNETES_TEST_INNER";

/// The processes whose environment holds `MARK=mark`: (pid, command line).
fn marked(mark: &str) -> Vec<(String, String)> {
    let needle = format!("{MARK}={mark}\0").into_bytes();
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let is_marked = std::fs::read(format!("/proc/{pid}/environ"))
            .is_ok_and(|env| env.windows(needle.len()).any(|w| w == needle.as_slice()));
        if is_marked {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            out.push((pid, cmdline));
        }
    }
    out
}

#[test]
#[ignore = "needs netns"]
fn sigterm_during_the_controller_phase_stops_everything_the_lab_started() {
    let test = "sigterm_during_the_controller_phase_stops_everything_the_lab_started";
    imdsguard_testkit::isolated_test(test, INNER, &TOOLS, || {
        use std::time::{Duration, Instant};
        let script = repo_root().join("scripts/control-plane.sh");
        let mark = format!("{}", std::process::id());
        let mut lab = Command::new(BIN)
            .args(["lab", "--kubernetes", "--control-plane-script"])
            .arg(&script)
            .env(MARK, &mark)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Until the agent runs (the controller phase), with the control plane up.
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut folder = None;
        loop {
            assert!(lab.try_wait().unwrap().is_none(), "the lab ended first");
            assert!(Instant::now() < deadline, "the lab never started its agent");
            let procs = marked(&mark);
            folder = folder.or_else(|| {
                procs.iter().find_map(|(_, c)| {
                    c.split_whitespace()
                        .skip_while(|a| *a != "--data-dir")
                        .nth(1)
                        .and_then(|d| d.strip_suffix("/etcd-data"))
                        .map(std::path::PathBuf::from)
                })
            });
            let agent = procs
                .iter()
                .any(|(_, c)| c.contains(" agent run --kubernetes"));
            let controller = procs
                .iter()
                .any(|(_, c)| c.contains(" controller --engine"));
            if agent && controller && folder.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let folder = folder.unwrap();
        assert!(folder.is_dir(), "{}", folder.display());
        let pid = rustix::process::Pid::from_child(&lab);
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        let stopped = Instant::now() + Duration::from_secs(15);
        let status = loop {
            if let Some(s) = lab.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < stopped, "the lab did not stop within 15 s");
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(status.code(), Some(143));
        // The agent and the controller die with the lab (parent-death signal); the
        // control plane's watchdog (it polls each second) stops etcd and kube-apiserver
        // and removes the folder.
        let gone = Instant::now() + Duration::from_secs(20);
        loop {
            let left = marked(&mark);
            if left.is_empty() && !folder.exists() {
                break;
            }
            assert!(
                Instant::now() < gone,
                "left behind 20 s after SIGTERM: {left:#?}, folder {} exists: {}",
                folder.display(),
                folder.exists()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    });
}
