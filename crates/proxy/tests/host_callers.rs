//! Callers on the proxy's own host, identified by their socket's cgroup, on a real
//! kernel: the test runs again inside a network namespace and a private mount namespace
//! of its own (`unshare --net --mount --propagation private`, as root) with cgroup v2
//! mounted at /sys/fs/cgroup, the emulator and the proxy on 127.0.0.1. Clients are
//! `curl` processes that first move their shell into a cgroup: a Burstable pod's
//! container, a Guaranteed pod's directory, a pod directory no known pod owns, and a
//! system service. They reach the proxy directly, and through the nat OUTPUT DNAT the
//! agent's host table installs (169.254.169.254:80 routed over `lo` inside the
//! namespace only, then redirected to the proxy).
//!
//! The cgroup hierarchy is the machine's (not namespaced): every directory has a name
//! unique to this run, and is removed at the end, also on failure
//! (`imdsguard_node::cgroups::CgroupTree`, which leaves shared parents to the last run).

mod support;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use imdsguard_core::access::{AccessRules, PodIndex, PodInfo, RULE_UNKNOWN_SOURCE};
use imdsguard_emulator::Faults;
use imdsguard_node::cgroups::{
    CgroupTree, command_in_cgroup, curl_in_cgroup, isolated_cgroup_test,
};
use imdsguard_proxy::{
    HostCallerConfig, HostCallerMap, PodRate, Proxy, ProxyConfig, RULE_UNKNOWN_POD_CGROUP, Upstream,
};
use serde_json::Value;
use support::Records;

const INNER: &str = "IMDSGUARD_PROXY_HOST_CALLERS_INNER";
const CGROUP2: &str = "/sys/fs/cgroup";

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().expect("runs");
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn make(cgroups: &mut CgroupTree, rel: &str) -> PathBuf {
    cgroups.make(rel).unwrap()
}

fn cgroup_id(dir: &Path) -> u64 {
    std::fs::metadata(dir).unwrap().ino()
}

/// A pod UID unique to this run (`tag` one hex digit).
fn uid(tag: char) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{:08x}-{tag}{tag}{tag}{tag}-4{tag}{tag}{tag}-8{tag}{tag}{tag}-{:012x}",
        std::process::id(),
        nanos
    )
}

const RULES: &str = r#"
rules:
  - name: exporter-instance
    subjects: [{namespace: monitoring, podSelector: {matchLabels: {app: exporter}}}]
    paths: [/metadata/instance, /metadata/versions]
"#;

#[test]
#[ignore = "needs netns"]
fn host_network_pods_are_identified_by_their_sockets_cgroup() {
    let test = "host_network_pods_are_identified_by_their_sockets_cgroup";
    isolated_cgroup_test(test, INNER, &["nft", "curl"], || {
        let mut cgroups = CgroupTree::open(CGROUP2).unwrap();
        let monitoring_uid = uid('a');
        let debug_uid = uid('b');
        let stray_uid = uid('c');
        let monitoring_pod = format!(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice",
            monitoring_uid.replace('-', "_")
        );
        let monitoring_pod_dir = make(&mut cgroups, &monitoring_pod);
        let monitoring_ctr = make(
            &mut cgroups,
            &format!(
                "{monitoring_pod}/cri-containerd-{}.scope",
                std::process::id()
            ),
        );
        let debug_pod = make(
            &mut cgroups,
            &format!(
                "kubepods.slice/kubepods-pod{}.slice",
                debug_uid.replace('-', "_")
            ),
        );
        let stray_pod = make(
            &mut cgroups,
            &format!(
                "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice",
                stray_uid.replace('-', "_")
            ),
        );
        let service = make(
            &mut cgroups,
            &format!(
                "system.slice/imdsguard-proxy-test-{}.service",
                std::process::id()
            ),
        );

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let records = Records::default();
        let (proxy, emulator) = runtime.block_on(async {
            let emulator = support::emulator(Faults::default()).await;
            let mut c = ProxyConfig::new(
                "127.0.0.1:0".parse().unwrap(),
                Upstream::parse(&format!("http://{}", emulator.local_addr())).unwrap(),
            );
            c.admin_listen = Some("127.0.0.1:0".parse().unwrap());
            c.rules = Some(AccessRules::parse(RULES).unwrap());
            c.pods = PodIndex::new();
            c.pod_rate = PodRate::unlimited();
            c.decisions = Some(Arc::new(records.clone()));
            c.host_callers = Some(HostCallerConfig::new(CGROUP2));
            (Proxy::start(c).await.unwrap(), emulator)
        });
        let mut exporter = PodInfo::new("monitoring", "exporter-x1");
        exporter.labels.insert("app".into(), "exporter".into());
        let debugger = PodInfo::new("monitoring", "debug-y2");
        let mut map = HostCallerMap::new();
        map.insert(cgroup_id(&monitoring_pod_dir), Arc::new(exporter));
        map.insert(cgroup_id(&debug_pod), Arc::new(debugger));
        proxy.control().set_host_callers(map);
        let port = proxy.local_addr().port();
        let direct = |path: &str| format!("http://127.0.0.1:{port}{path}");
        let instance = "/metadata/instance/compute/location?api-version=2021-02-01&format=text";

        // The exporter's container (below its pod's cgroup): identified, allowed.
        let (status, body) = curl_in_cgroup(&monitoring_ctr, &direct(instance));
        assert_eq!((status, body.as_str()), (200, "westeurope"));
        let rec = records.last();
        assert_eq!(rec["pod"], "monitoring/exporter-x1");
        assert_eq!(rec["decision"], "allow");
        assert_eq!(rec["rule"], "exporter-instance");
        assert_eq!(rec["host_network"], true);
        assert_eq!(rec["cgroup_id"], cgroup_id(&monitoring_ctr));
        assert_eq!(rec["peer"], "127.0.0.1");

        // The other hostNetwork pod (a process in its pod directory): identified, and
        // denied by the rules for its labels.
        let (status, body) = curl_in_cgroup(&debug_pod, &direct(instance));
        assert_eq!(status, 403, "{body}");
        let deny: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(deny["imdsguard"]["rule"], "default-deny");
        assert!(body.contains("monitoring/debug-y2"), "{body}");
        let rec = records.last();
        assert_eq!(rec["pod"], "monitoring/debug-y2");
        assert_eq!(rec["host_network"], true);

        // A pod cgroup no known pod owns: denied as such, never as the node.
        let (status, body) = curl_in_cgroup(&stray_pod, &direct(instance));
        assert_eq!(status, 403, "{body}");
        let deny: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(deny["imdsguard"]["rule"], RULE_UNKNOWN_POD_CGROUP);
        let rec = records.last();
        assert_eq!(rec["pod"], "-");
        assert_eq!(rec["rule"], RULE_UNKNOWN_POD_CGROUP);
        assert_eq!(rec["host_network"], true);
        assert_eq!(rec["cgroup_id"], cgroup_id(&stray_pod));

        // A node process (outside the pod tree): today's unknown source.
        let (status, body) = curl_in_cgroup(&service, &direct(instance));
        assert_eq!(status, 403, "{body}");
        let deny: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(deny["imdsguard"]["rule"], RULE_UNKNOWN_SOURCE);
        let rec = records.last();
        assert!(rec.get("host_network").is_none(), "{rec}");
        assert_eq!(rec["cgroup_id"], cgroup_id(&service));

        // Redirected as the agent's host table does it: the client wrote
        // 169.254.169.254:80 (routed over lo in this namespace only), nat OUTPUT sent it
        // to the proxy; the lookup finds the socket by its original destination.
        run(
            "ip",
            &[
                "route",
                "add",
                "169.254.169.254/32",
                "dev",
                "lo",
                "src",
                "127.0.0.1",
            ],
        );
        let nft = format!(
            "table ip imdsguard_proxy_test {{\n  chain out {{\n    type nat hook output priority -100;\n    ip daddr 169.254.169.254 tcp dport 80 dnat to 127.0.0.1:{port}\n  }}\n}}\n"
        );
        let mut child = Command::new("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), nft.as_bytes()).unwrap();
        drop(child.stdin.take());
        assert!(child.wait().unwrap().success(), "nft");
        let imds = |path: &str| format!("http://169.254.169.254{path}");
        let (status, body) = curl_in_cgroup(&monitoring_ctr, &imds(instance));
        assert_eq!((status, body.as_str()), (200, "westeurope"));
        assert_eq!(records.last()["pod"], "monitoring/exporter-x1");
        let (status, body) = curl_in_cgroup(&stray_pod, &imds(instance));
        assert_eq!(status, 403, "{body}");
        assert_eq!(records.last()["rule"], RULE_UNKNOWN_POD_CGROUP);

        // A pod that started after the map was given: its socket is in the pod tree
        // under no known pod until the program's source names it (asked on the miss).
        let late_uid = uid('d');
        let late_pod = make(
            &mut cgroups,
            &format!(
                "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice",
                late_uid.replace('-', "_")
            ),
        );
        let late_ctr = make(
            &mut cgroups,
            &format!(
                "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/ctr",
                late_uid.replace('-', "_")
            ),
        );
        let control = proxy.control();
        let known = control.host_callers();
        let late_id = cgroup_id(&late_pod);
        control.set_host_caller_source(Some(Arc::new(move || {
            let mut m = (*known).clone();
            let mut pod = PodInfo::new("monitoring", "exporter-late");
            pod.labels.insert("app".into(), "exporter".into());
            m.insert(late_id, Arc::new(pod));
            m
        })));
        let (status, _) = curl_in_cgroup(&late_ctr, &direct(instance));
        assert_eq!(status, 200);
        assert_eq!(records.last()["pod"], "monitoring/exporter-late");

        let metrics = runtime.block_on(support::admin_get(proxy.admin_addr().unwrap(), "/metrics"));
        metrics.assert_has(&[
            r#"imdsguard_proxy_host_caller_lookups_total{result="pod"} 4"#,
            r#"imdsguard_proxy_host_caller_lookups_total{result="unknown-pod-cgroup"} 2"#,
            r#"imdsguard_proxy_host_caller_lookups_total{result="node"} 1"#,
            r#"imdsguard_proxy_decisions_total{namespace="monitoring",endpoint="instance",outcome="allow"} 3"#,
        ]);
        runtime.block_on(async {
            proxy.shutdown().await;
            emulator.shutdown().await;
        });
        // Every curl has exited (output() waited), so the directories can go.
        assert_eq!(cgroups.close(), Vec::<String>::new());
    });
}

/// One request with curl in `cgroup`: `Some(status)`, or `None` when the proxy closed
/// the connection without an answer.
fn try_curl_in_cgroup(cgroup: &Path, url: &str) -> Option<u16> {
    let out = command_in_cgroup(cgroup, "curl")
        .args([
            "-s",
            "--max-time",
            "5",
            "-o",
            "/dev/null",
            "-H",
            "Metadata:true",
            "-w",
            "%{http_code}",
            url,
        ])
        .output()
        .expect("sh runs");
    let code = String::from_utf8_lossy(&out.stdout).trim().to_string();
    match out.status.code() {
        Some(0) => Some(code.parse().expect("a status")),
        // 52: empty reply, 56: connection reset: closed on accept.
        Some(52 | 56) => None,
        other => panic!(
            "curl from {}: exit {other:?}, {code}: {}",
            cgroup.display(),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// A process in `cgroup` holding `n` connections to `port` open (bash's /dev/tcp),
/// until its stdin closes.
struct Holder(std::process::Child);

impl Holder {
    fn start(cgroup: &Path, port: u16, n: usize) -> Holder {
        use std::io::BufRead;
        let fds: Vec<String> = (3..3 + n).map(|fd| fd.to_string()).collect();
        let script = format!(
            "for fd in {}; do eval \"exec $fd<>/dev/tcp/127.0.0.1/{port}\" || exit 1; done; echo held; read -r _",
            fds.join(" ")
        );
        let mut child = command_in_cgroup(cgroup, "bash")
            .args(["-c", &script])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("bash runs");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let holder = Holder(child);
        assert_eq!(
            line.trim(),
            "held",
            "the holder could not open its connections"
        );
        holder
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        if !matches!(self.0.try_wait(), Ok(Some(_))) {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

#[test]
#[ignore = "needs netns"]
fn one_host_network_pod_at_its_connection_limit_leaves_the_others_theirs() {
    let test = "one_host_network_pod_at_its_connection_limit_leaves_the_others_theirs";
    isolated_cgroup_test(test, INNER, &["bash", "curl"], || {
        let mut cgroups = CgroupTree::open(CGROUP2).unwrap();
        let pod_dir = |uid: &str| {
            format!(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice",
                uid.replace('-', "_")
            )
        };
        let hog_pod = pod_dir(&uid('e'));
        let hog_pod_dir = make(&mut cgroups, &hog_pod);
        let hog_ctr = make(&mut cgroups, &format!("{hog_pod}/cri-containerd-e.scope"));
        let exporter_pod = pod_dir(&uid('f'));
        let exporter_pod_dir = make(&mut cgroups, &exporter_pod);
        let exporter_ctr = make(
            &mut cgroups,
            &format!("{exporter_pod}/cri-containerd-f.scope"),
        );
        let kubelet = make(
            &mut cgroups,
            &format!(
                "system.slice/imdsguard-proxy-fair-{}.service",
                std::process::id()
            ),
        );

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (proxy, emulator) = runtime.block_on(async {
            let emulator = support::emulator(Faults::default()).await;
            let mut c = ProxyConfig::new(
                "127.0.0.1:0".parse().unwrap(),
                Upstream::parse(&format!("http://{}", emulator.local_addr())).unwrap(),
            );
            c.admin_listen = Some("127.0.0.1:0".parse().unwrap());
            c.rules = Some(AccessRules::parse(RULES).unwrap());
            c.pods = PodIndex::new();
            c.pod_rate = PodRate::unlimited();
            c.limits.max_connections_per_source = 4;
            c.host_callers = Some(HostCallerConfig::new(CGROUP2));
            (Proxy::start(c).await.unwrap(), emulator)
        });
        let mut map = HostCallerMap::new();
        for (dir, name) in [(&hog_pod_dir, "hog-e1"), (&exporter_pod_dir, "exporter-f1")] {
            let mut pod = PodInfo::new("monitoring", name);
            pod.labels.insert("app".into(), "exporter".into());
            map.insert(cgroup_id(dir), Arc::new(pod));
        }
        proxy.control().set_host_callers(map);
        let port = proxy.local_addr().port();
        let admin = proxy.admin_addr().unwrap();
        let url = format!(
            "http://127.0.0.1:{port}/metadata/instance/compute/location?api-version=2021-02-01&format=text"
        );

        // Every caller here comes from 127.0.0.1. The hog holds its maximum open.
        let holder = Holder::start(&hog_ctr, port, 4);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let m = runtime.block_on(support::admin_get(admin, "/metrics"));
            if m.text().contains("imdsguard_proxy_open_connections 4") {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the holder's 4 connections are not open at the proxy: {}",
                m.text()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // Its fifth is closed on accept; the other pod and the node's processes, at
        // the same address, are served.
        assert_eq!(try_curl_in_cgroup(&hog_ctr, &url), None, "the hog's fifth");
        assert_eq!(try_curl_in_cgroup(&exporter_ctr, &url), Some(200));
        assert_eq!(
            try_curl_in_cgroup(&kubelet, &url),
            Some(403),
            "unknown source"
        );
        let m = runtime.block_on(support::admin_get(admin, "/metrics"));
        m.assert_has(&[r#"imdsguard_proxy_connections_refused_total{reason="per-source"} 1"#]);

        // Its connections closed, the hog has its slots back.
        drop(holder);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while try_curl_in_cgroup(&hog_ctr, &url).is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "the hog's slots did not come back"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        runtime.block_on(async {
            proxy.shutdown().await;
            emulator.shutdown().await;
        });
        assert_eq!(cgroups.close(), Vec::<String>::new());
    });
}
