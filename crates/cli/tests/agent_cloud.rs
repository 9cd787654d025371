//! `imdsguard agent run --cloud aws|gcp` on the dual-stack sandbox node, inside a network
//! namespace of its own (like `agent_netns`): the cloud namespace holds every address of
//! the cloud's endpoints in both families (`sandbox::cloud_addresses`), each answering
//! with a TCP banner; the pods have an IPv6 address beside their IPv4 one. The agent
//! keeps the table for that cloud: pods lose IMDS over IPv4 and IPv6, and (AWS) the EKS
//! Pod Identity agent in both families and ECS task metadata, unless allowlisted;
//! hostNetwork pods likewise by cgroup (the host table). Nothing leaves the namespaces.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use imdsguard_core::cgroup::{CGROUP2_MOUNT, CgroupDriver, QosClass, pod_cgroup_paths};
use imdsguard_core::nft::Mode;
use imdsguard_core::target::{Cloud, MetadataService};
use imdsguard_node::cgroups::{CgroupTree, ENTER_FAILED, command_in_cgroup, isolated_cgroup_test};
use imdsguard_node::netns::Isolated;
use imdsguard_node::sandbox::{self, PodSpec, Reach, Sandbox, Services, dual_stack_lab_pods};
use imdsguard_node::{Exec, read_table};

const IMDSGUARD: &str = env!("CARGO_BIN_EXE_imdsguard");
const INNER: &str = "IMDSGUARD_AGENT_CLOUD_TEST_INNER";
const WAIT: Duration = Duration::from_millis(300);
const BANNER: &str = "cloud";

fn isolated(test: &str, body: impl FnOnce()) {
    imdsguard_testkit::isolated_test(test, INNER, &["nft", "ip", "nsenter", "unshare"], body);
}

/// The dual-stack sandbox for `cloud`, a banner on each of its endpoints and its DNS
/// echo, and a directory for the agent's files.
struct World {
    cloud: Cloud,
    sandbox: Sandbox,
    _services: Services,
    dir: PathBuf,
}

impl World {
    /// Banners on every endpoint.
    fn new(test: &str, cloud: Cloud) -> World {
        World::build(test, cloud, true)
    }

    /// Banners on the endpoints but the metadata service's, where the test starts the
    /// emulator.
    fn new_with_emulator(test: &str, cloud: Cloud) -> World {
        World::build(test, cloud, false)
    }

    fn build(test: &str, cloud: Cloud, banner_on_imds: bool) -> World {
        let isolated = Isolated::check(None).expect("an isolated namespace");
        let sandbox = Sandbox::build_for(
            &isolated,
            &dual_stack_lab_pods(),
            &sandbox::cloud_addresses(cloud),
        )
        .expect("the sandbox node");
        let mut services = Services::new();
        for t in endpoints(cloud) {
            if !banner_on_imds && is_imds(cloud, t) {
                continue;
            }
            services
                .tcp_banner(Some(sandbox.cloud()), t, BANNER)
                .unwrap();
        }
        services
            .udp_echo(Some(sandbox.cloud()), sandbox::cloud_dns(cloud))
            .unwrap();
        let dir = std::env::temp_dir().join(format!(
            "imdsguard-agent-cloud-{test}-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        World {
            cloud,
            sandbox,
            _services: services,
            dir,
        }
    }

    fn reach(&self, pod: &str, addr: SocketAddr) -> Reach {
        self.sandbox.pod(pod).unwrap().tcp(addr, WAIT).unwrap()
    }

    /// `imdsguard agent run --cloud CLOUD ARGS --pods FILE`, the pods file holding the
    /// sandbox's pods with both addresses and `extra_pods`.
    fn agent(&self, args: &[&str], extra_pods: &str) -> AgentProc {
        let pods = self.dir.join("pods.yaml");
        std::fs::write(&pods, format!("{}{extra_pods}", pods_file())).unwrap();
        let mut all = vec!["--cloud", self.cloud.name()];
        all.extend_from_slice(args);
        all.extend(["--pods", pods.to_str().unwrap()]);
        AgentProc::start(&all)
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether `addr` is `cloud`'s metadata service proper (IMDS, GCP's metadata server).
fn is_imds(cloud: Cloud, addr: SocketAddr) -> bool {
    let t = imdsguard_core::target::Target::new(
        addr.ip(),
        addr.port(),
        imdsguard_core::target::Protocol::Tcp,
    );
    cloud.service(&t) == Some(cloud.metadata_service())
}

/// Every endpoint of `cloud` as an address to connect to.
fn endpoints(cloud: Cloud) -> Vec<SocketAddr> {
    cloud
        .targets()
        .iter()
        .map(|t| SocketAddr::new(t.ip, t.port))
        .collect()
}

/// The sandbox's pods as the agent's pods file lists them (the spoofer's borrowed
/// addresses are not its own: not listed), both addresses each.
fn pods_file() -> String {
    let ns = |p: &PodSpec| match p.name.as_str() {
        "allowed" => "platform",
        "web" => "shop",
        _ => "jobs",
    };
    dual_stack_lab_pods()
        .iter()
        .filter(|p| p.name != "spoofer")
        .map(|p| {
            let ips: Vec<String> = p.addrs().iter().map(|a| format!("'{a}'")).collect();
            format!(
                "- {{ips: [{}], namespace: {}, name: {}, interface: {}}}\n",
                ips.join(", "),
                ns(p),
                p.name,
                p.ingress_iface()
            )
        })
        .collect()
}

/// `imdsguard agent run`, in this namespace; killed on drop.
struct AgentProc {
    child: Child,
}

impl AgentProc {
    fn start(args: &[&str]) -> AgentProc {
        let mut child = Command::new(IMDSGUARD)
            .args(["agent", "run"])
            .args(args)
            .args(["--admin-listen", "127.0.0.1:0", "--check-interval", "30m"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut enforcing = false;
        for line in lines {
            if line.unwrap().starts_with("enforcing ") {
                enforcing = true;
                break;
            }
        }
        assert!(enforcing, "the agent did not start: {:?}", child.wait());
        AgentProc { child }
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Block mode for `cloud`: before the agent every pod reaches every endpoint in both
/// families; with it only the allowlisted pod does (both of its pairs allowlisted by
/// name), the others, the spoofer borrowing both of its addresses too, are dropped;
/// the cloud's DNS keeps answering.
fn block_mode(test: &str, cloud: Cloud) {
    let w = World::new(test, cloud);
    let all = endpoints(cloud);
    assert!(all.iter().any(SocketAddr::is_ipv6) && all.iter().any(SocketAddr::is_ipv4));
    for p in w.sandbox.pods() {
        for t in &all {
            assert_eq!(
                w.reach(p.name(), *t),
                Reach::Answered(BANNER.into()),
                "{} → {t} before the agent",
                p.name()
            );
        }
    }
    let _agent = w.agent(&["--mode", "block", "--allow", "platform/allowed"], "");
    let table = read_table(&Exec::here()).unwrap().expect("inet imdsguard");
    assert_eq!(table.mode, Some(Mode::Block));
    // Both of the allowlisted pod's pairs; every pod the node hosts known in both
    // families.
    assert_eq!(table.allowed.len(), 2, "{:?}", table.allowed);
    assert!(table.allowed.iter().any(|p| p.addr.is_ipv6()));
    assert_eq!(table.known.len(), 6, "{:?}", table.known);
    for pod in ["web", "spoofer", "batch"] {
        for t in &all {
            assert_eq!(w.reach(pod, *t), Reach::Timeout, "{pod} → {t} dropped");
        }
    }
    for t in &all {
        assert_eq!(
            w.reach("allowed", *t),
            Reach::Answered(BANNER.into()),
            "allowed → {t}"
        );
    }
    let dns = sandbox::cloud_dns(cloud);
    for p in w.sandbox.pods() {
        assert!(p.udp_echo(dns, WAIT).unwrap(), "{} → DNS {dns}", p.name());
    }
}

#[test]
#[ignore = "needs netns"]
fn aws_block_mode_drops_imds_and_pod_identity_in_both_families() {
    let test = "aws_block_mode_drops_imds_and_pod_identity_in_both_families";
    isolated(test, || {
        // What is checked: IMDS v4/v6, the Pod Identity agent v4/v6 and ECS.
        let services: Vec<MetadataService> = Cloud::Aws
            .targets()
            .iter()
            .filter_map(|t| Cloud::Aws.service(t))
            .collect();
        for s in [
            MetadataService::AwsImds,
            MetadataService::AwsPodIdentity,
            MetadataService::AwsEcsTaskMetadata,
        ] {
            assert!(services.contains(&s), "{s:?} in {services:?}");
        }
        block_mode(test, Cloud::Aws);
    });
}

#[test]
#[ignore = "needs netns"]
fn gcp_block_mode_drops_the_metadata_server_in_both_families() {
    let test = "gcp_block_mode_drops_the_metadata_server_in_both_families";
    isolated(test, || block_mode(test, Cloud::Gcp));
}

/// A TCP connection to `addr` from a process of the node's namespace placed in
/// `cgroup` first (bash's /dev/tcp, IPv6 literals included): connected, or timed out
/// after 2 s.
fn connect_from_cgroup(cgroup: &Path, addr: SocketAddr) -> Reach {
    let out = command_in_cgroup(cgroup, "timeout")
        .args(["2", "bash", "-c", "exec 3<>/dev/tcp/$H/$P && head -c 5 <&3"])
        .env("H", addr.ip().to_string())
        .env("P", addr.port().to_string())
        .output()
        .expect("timeout and bash run");
    assert_ne!(
        out.status.code(),
        Some(ENTER_FAILED),
        "could not join {}",
        cgroup.display()
    );
    match out.status.code() {
        Some(0) => Reach::Answered(String::from_utf8_lossy(&out.stdout).into_owned()),
        Some(124) => Reach::Timeout,
        other => Reach::Refused(format!(
            "{other:?} {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

/// A pod UID of this test run.
fn test_uid(n: u16) -> String {
    format!("c10d0a75-{n:04x}-4000-8000-{:012x}", std::process::id())
}

#[test]
#[ignore = "needs netns"]
fn aws_block_mode_guards_host_network_pods_in_both_families() {
    let test = "aws_block_mode_guards_host_network_pods_in_both_families";
    isolated_cgroup_test(test, INNER, &["nft", "nsenter", "bash", "timeout"], || {
        let w = World::new(test, Cloud::Aws);
        let mut cgroups = CgroupTree::open(CGROUP2_MOUNT).expect("the cgroups lock");
        let pod_dir = |cgroups: &mut CgroupTree, uid: &str| {
            let pod = pod_cgroup_paths(uid)
                .into_iter()
                .find(|c| c.driver == CgroupDriver::Systemd && c.qos == QosClass::Burstable)
                .unwrap();
            cgroups
                .make(&format!(
                    "{}/cri-containerd-{:x}.scope",
                    pod.path,
                    std::process::id()
                ))
                .unwrap()
        };
        let (mon_uid, dbg_uid) = (test_uid(1), test_uid(2));
        let monitoring = pod_dir(&mut cgroups, &mon_uid);
        let debug = pod_dir(&mut cgroups, &dbg_uid);
        let kubelet = cgroups
            .make(&format!(
                "system.slice/imdsguard-test-{}-kubelet.service",
                std::process::id()
            ))
            .unwrap();
        let all = endpoints(Cloud::Aws);
        let answered = Reach::Answered(BANNER.into());
        for t in &all {
            assert_eq!(
                connect_from_cgroup(&debug, *t),
                answered,
                "debug → {t} before"
            );
        }
        let host_pods = format!(
            "- {{namespace: monitoring, name: agent, hostNetwork: true, uid: {mon_uid}}}
- {{namespace: debug, name: shell, hostNetwork: true, uid: {dbg_uid}}}
"
        );
        let _agent = w.agent(
            &["--mode", "block", "--allow", "monitoring/agent"],
            &host_pods,
        );
        for t in &all {
            assert_eq!(
                connect_from_cgroup(&debug, *t),
                Reach::Timeout,
                "debug → {t}"
            );
            assert_eq!(
                connect_from_cgroup(&monitoring, *t),
                answered,
                "monitoring → {t}"
            );
            assert_eq!(connect_from_cgroup(&kubelet, *t), answered, "kubelet → {t}");
        }
        // The host table holds the cloud's endpoints in both families.
        let listing = Exec::here()
            .run("nft", ["list", "table", "inet", "imdsguard_host"], None)
            .unwrap();
        for needle in [
            "fd00:ec2::254",
            "fd00:ec2::23",
            "169.254.170.23",
            "169.254.170.2",
        ] {
            assert!(listing.contains(needle), "{needle} in\n{listing}");
        }
    });
}

/// The cloud's emulator on its metadata service's real addresses (both families) in
/// the sandbox's cloud namespace; stopped on drop.
struct Emulator {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), imdsguard_node::NodeError>>>,
}

impl Emulator {
    fn start(sandbox: &Sandbox, cloud: Cloud) -> Emulator {
        use imdsguard_emulator::aws::{AwsConfig, AwsEmulator, AwsOptions};
        use imdsguard_emulator::gcp::{GcpConfig, GcpEmulator, GcpOptions};
        let listen: Vec<SocketAddr> = endpoints(cloud)
            .into_iter()
            .filter(|a| is_imds(cloud, *a))
            .collect();
        assert_eq!(listen.len(), 2, "{listen:?}");
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = sandbox.cloud().spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            rt.block_on(async move {
                let grace = Duration::from_millis(100);
                if cloud == Cloud::Aws {
                    let options = AwsOptions {
                        listen,
                        allow_metadata_address: true,
                        seed: Some(4),
                        shutdown_grace: grace,
                    };
                    let e = AwsEmulator::start(AwsConfig::default_eks(), options)
                        .await
                        .expect("the AWS emulator starts");
                    ready_tx.send(()).unwrap();
                    let _ = stop_rx.await;
                    e.shutdown().await;
                } else {
                    let options = GcpOptions {
                        listen,
                        allow_metadata_address: true,
                        seed: Some(4),
                        shutdown_grace: grace,
                        ..GcpOptions::default()
                    };
                    let e = GcpEmulator::start(GcpConfig::default_gke(), options)
                        .await
                        .expect("the GCP emulator starts");
                    ready_tx.send(()).unwrap();
                    let _ = stop_rx.await;
                    e.shutdown().await;
                }
            });
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the emulator is ready");
        Emulator {
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A plain HTTP/1.1 GET of `path` at `addr` from `pod` with `headers`; `None` when no
/// connection was made in time.
fn get(
    sandbox: &Sandbox,
    pod: &str,
    addr: SocketAddr,
    path: &str,
    headers: &str,
) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let (path, headers) = (path.to_owned(), headers.to_owned());
    sandbox
        .pod(pod)
        .unwrap()
        .netns()
        .run(move || {
            let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            let host = match addr {
                SocketAddr::V4(a) => a.ip().to_string(),
                SocketAddr::V6(a) => format!("[{}]", a.ip()),
            };
            write!(
                s,
                "GET {path} HTTP/1.1\r\nHost: {host}\r\n{headers}Connection: close\r\n\r\n"
            )
            .ok()?;
            let mut text = String::new();
            s.read_to_string(&mut text).ok()?;
            let status = text.split_whitespace().nth(1)?.parse().ok()?;
            let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
            Some((status, body))
        })
        .unwrap()
}

/// Proxy mode for `cloud`: the agent's proxy listens on both families (`[::]:8169`),
/// IPv4 and IPv6 metadata traffic of the known pods is redirected to it and decided by
/// the cloud's rules (`harmless` allowed to `shop`, `secret` to nobody); the
/// allowlisted pod goes direct and gets the secret; the endpoints the proxy does not
/// serve stay dropped.
fn proxy_mode(test: &str, cloud: Cloud, rules: &str, harmless: &str, secret: &str, headers: &str) {
    let w = World::new_with_emulator(test, cloud);
    let _emulator = Emulator::start(&w.sandbox, cloud);
    let rules_file = w.dir.join("rules.yaml");
    std::fs::write(&rules_file, rules).unwrap();
    let v4 = SocketAddr::new(sandbox::NODE_ADDR.into(), 8169).to_string();
    let v6 = SocketAddr::new(sandbox::NODE_ADDR6.into(), 8169).to_string();
    let _agent = w.agent(
        &[
            "--mode",
            "proxy",
            "--proxy-address",
            &v4,
            "--proxy-address6",
            &v6,
            "--proxy-listen",
            "[::]:8169",
            "--allow",
            "platform/allowed",
            "--rules",
            rules_file.to_str().unwrap(),
        ],
        "",
    );
    let imds: Vec<SocketAddr> = endpoints(cloud)
        .into_iter()
        .filter(|a| is_imds(cloud, *a))
        .collect();
    for addr in &imds {
        let (status, body) = get(&w.sandbox, "web", *addr, harmless, headers)
            .unwrap_or_else(|| panic!("web → {addr}{harmless}: no answer"));
        assert_eq!(status, 200, "web → {addr}{harmless}: {body}");
        let (status, body) = get(&w.sandbox, "web", *addr, secret, headers)
            .unwrap_or_else(|| panic!("web → {addr}{secret}: no answer"));
        assert_eq!(status, 403, "web → {addr}{secret}: {body}");
        assert!(body.contains("imdsguard"), "{body}");
        let (status, _) = get(&w.sandbox, "batch", *addr, harmless, headers)
            .unwrap_or_else(|| panic!("batch → {addr}: no answer"));
        assert_eq!(status, 403, "batch → {addr}{harmless}");
        // The allowlisted pod goes straight to the metadata service.
        let (status, body) = get(&w.sandbox, "allowed", *addr, secret, headers)
            .unwrap_or_else(|| panic!("allowed → {addr}: no answer"));
        assert_eq!(status, 200, "allowed → {addr}{secret}: {body}");
        // The spoofer's pairs are unknown: dropped, never taken for `allowed`.
        assert_eq!(get(&w.sandbox, "spoofer", *addr, harmless, headers), None);
    }
    // What the proxy does not serve (AWS: the Pod Identity agent, ECS) stays dropped.
    for addr in endpoints(cloud).iter().filter(|a| !imds.contains(a)) {
        assert_eq!(w.reach("web", *addr), Reach::Timeout, "web → {addr}");
    }
}

#[test]
#[ignore = "needs netns"]
fn aws_proxy_mode_decides_both_families_by_the_aws_rules() {
    let test = "aws_proxy_mode_decides_both_families_by_the_aws_rules";
    isolated(test, || {
        proxy_mode(
            test,
            Cloud::Aws,
            "cloud: aws
rules:
  - name: shop-region
    subjects: [{namespace: shop}]
    paths: [/latest/meta-data/placement/region]
",
            "/latest/meta-data/placement/region",
            "/latest/meta-data/iam/security-credentials/imdsguard-demo-node-role",
            "",
        );
    });
}

#[test]
#[ignore = "needs netns"]
fn gcp_proxy_mode_decides_both_families_by_the_gcp_rules() {
    let test = "gcp_proxy_mode_decides_both_families_by_the_gcp_rules";
    isolated(test, || {
        proxy_mode(
            test,
            Cloud::Gcp,
            "cloud: gcp
rules:
  - name: shop-zone
    subjects: [{namespace: shop}]
    paths: [/computeMetadata/v1/instance/zone]
",
            "/computeMetadata/v1/instance/zone",
            "/computeMetadata/v1/instance/service-accounts/default/token",
            "Metadata-Flavor: Google\r\n",
        );
    });
}

/// The sandbox's pods (the spoofer's borrowed addresses are not its own) as the API
/// server's pods on `node`, with both addresses in `status.podIPs` (the test plays the
/// kubelet).
fn create_dual_stack_api_pods(cp: &imdsguard_testkit::ControlPlane, node: &str) {
    let pods: Vec<PodSpec> = dual_stack_lab_pods()
        .into_iter()
        .filter(|p| p.name != "spoofer")
        .collect();
    let ns = |p: &PodSpec| match p.name.as_str() {
        "allowed" => "platform",
        "web" => "shop",
        _ => "jobs",
    };
    for p in &pods {
        cp.kubectl_ok(&["create", "namespace", ns(p)], None);
        cp.apply(&format!(
            "apiVersion: v1
kind: Pod
metadata: {{name: {}, namespace: {}}}
spec:
  nodeName: {node}
  containers: [{{name: c, image: registry.invalid/none:1}}]
",
            p.name,
            ns(p)
        ));
        let ips: Vec<serde_json::Value> = p
            .addrs()
            .iter()
            .map(|a| serde_json::json!({"ip": a.to_string()}))
            .collect();
        let status = serde_json::json!({"status": {
            "phase": "Running", "podIP": p.addr.to_string(), "podIPs": ips}});
        cp.kubectl_ok(
            &[
                "patch",
                "pod",
                &p.name,
                "-n",
                ns(p),
                "--subresource=status",
                "--type=merge",
                "-p",
                &status.to_string(),
            ],
            None,
        );
    }
}

#[test]
#[ignore = "needs netns"]
fn aws_kubernetes_mode_follows_the_aws_policies_in_both_families() {
    let test = "aws_kubernetes_mode_follows_the_aws_policies_in_both_families";
    isolated(test, || {
        let w = World::new(test, Cloud::Aws);
        // The agent follows every MetadataAccessPolicy object: a control plane of its own.
        let cp = imdsguard_testkit::ControlPlane::dedicated(test);
        cp.install_imdsguard_crd();
        cp.kubectl_ok(
            &["create", "-f", "-"],
            Some(r#"{"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a"}}"#),
        );
        create_dual_stack_api_pods(&cp, "node-a");
        // An EKS object selecting platform, and an Azure one (no spec.cloud) selecting
        // shop: the latter is another cloud's, refused, and allowlists nobody.
        cp.apply(
            "apiVersion: imdsguard.io/v1alpha1
kind: MetadataAccessPolicy
metadata: {name: platform-eks}
spec:
  cloud: aws
  rules:
  - name: credentials
    subjects: [{namespace: platform}]
    paths: [/latest/meta-data/iam/security-credentials/*]
---
apiVersion: imdsguard.io/v1alpha1
kind: MetadataAccessPolicy
metadata: {name: shop-azure}
spec:
  rules:
  - name: location
    subjects: [{namespace: shop}]
    paths: [/metadata/instance/compute/location]
",
        );
        let _agent = AgentProc::start(&[
            "--cloud",
            "aws",
            "--mode",
            "block",
            "--kubernetes",
            "--node-name",
            "node-a",
            "--kubeconfig",
            cp.kubeconfig().to_str().unwrap(),
            "--remove-taint=false",
        ]);
        let table = read_table(&Exec::here()).unwrap().expect("inet imdsguard");
        // `allowed` by both of its addresses, on the interface `ip route get` names.
        let mut allowed: Vec<String> = table.allowed.iter().map(|p| p.to_string()).collect();
        allowed.sort();
        let mut expected: Vec<String> = dual_stack_lab_pods()
            .into_iter()
            .find(|p| p.name == "allowed")
            .unwrap()
            .addrs()
            .into_iter()
            .map(|a| {
                imdsguard_core::nft::SourcePair::new("azvallowed", a)
                    .unwrap()
                    .to_string()
            })
            .collect();
        expected.sort();
        assert_eq!(allowed, expected);
        let answered = Reach::Answered(BANNER.into());
        for t in endpoints(Cloud::Aws) {
            assert_eq!(w.reach("allowed", t), answered, "allowed → {t}");
            for pod in ["web", "batch", "spoofer"] {
                assert_eq!(w.reach(pod, t), Reach::Timeout, "{pod} → {t}");
            }
        }
    });
}
