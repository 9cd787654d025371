//! `imdsguard agent run` on a simulated node, inside a network namespace of its own.
//!
//! Each test re-runs itself (this test binary, `--exact NAME`) inside a fresh isolated
//! namespace from `imdsguard_testkit::Netns` (only `lo`), builds the sandbox node there
//! (`imdsguard_node::sandbox`: a cloud namespace holding 169.254.169.254 and
//! 168.63.129.16 with the emulator on them, pods on routed veths and a bridge), and runs
//! `imdsguard agent run` in that namespace. Nothing leaves these namespaces; they go away
//! with the inner process, taking their interfaces and nft tables with them. The pods
//! and rules files live in a temporary directory removed at the end.

#[path = "support/sandbox_cloud.rs"]
mod sandbox_cloud;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use imdsguard_core::cgroup::{CGROUP2_MOUNT, CgroupDriver, QosClass, pod_cgroup_paths};
use imdsguard_core::imds::IMDS_ADDRESS;
use imdsguard_core::nft::{Mode, SourcePair, TableState};
use imdsguard_emulator::Config as VmConfig;
use imdsguard_node::cgroups::{CgroupTree, ENTER_FAILED, command_in_cgroup, isolated_cgroup_test};
use imdsguard_node::netns::Isolated;
use imdsguard_node::sandbox::{self, Reach, Sandbox, lab_pods};
use imdsguard_node::{Exec, read_table};
use imdsguard_testkit::ControlPlane;
use sandbox_cloud::Cloud;

const IMDSGUARD: &str = env!("CARGO_BIN_EXE_imdsguard");
const INNER: &str = "IMDSGUARD_AGENT_TEST_INNER";
const WAIT: Duration = Duration::from_millis(300);

/// Runs `body` inside a fresh isolated namespace: this binary again, `--exact test`.
fn isolated(test: &str, body: impl FnOnce()) {
    imdsguard_testkit::isolated_test(test, INNER, &["nft", "ip", "nsenter", "unshare"], body);
}

struct World {
    sandbox: Sandbox,
    _cloud: Cloud,
    dir: PathBuf,
}

impl World {
    fn new(test: &str) -> World {
        let isolated = Isolated::check(None).expect("an isolated namespace");
        let sandbox = Sandbox::build(&isolated, &lab_pods()).expect("the sandbox node");
        let cloud = Cloud::start(sandbox.cloud());
        let dir =
            std::env::temp_dir().join(format!("imdsguard-agent-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        World {
            sandbox,
            _cloud: cloud,
            dir,
        }
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.join(name);
        // Write then rename: the agent never reads half a file.
        let tmp = self.dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        path
    }

    /// The agent's JSON log ([`World::agent`]).
    fn log(&self) -> PathBuf {
        self.dir.join("agent.log")
    }

    /// `imdsguard agent run ARGS --pods pods.yaml [--rules rules.yaml]`, the files (in
    /// the test's directory) holding `pods` and `rules`, its JSON log in [`World::log`].
    fn agent(&self, args: &[&str], pods: &str, rules: Option<&str>) -> AgentProc {
        let pods = self.file("pods.yaml", pods);
        let rules = rules.map(|r| self.file("rules.yaml", r));
        let mut all = args.to_vec();
        all.extend(["--pods", pods.to_str().unwrap()]);
        if let Some(rules) = &rules {
            all.extend(["--rules", rules.to_str().unwrap()]);
        }
        AgentProc::start_logging(&all, &self.log())
    }

    fn reach(&self, pod: &str) -> Reach {
        self.sandbox
            .pod(pod)
            .unwrap()
            .tcp(SocketAddr::new(IMDS_ADDRESS.into(), 80), WAIT)
            .unwrap()
    }

    /// An IMDS request from `pod` (to the real address: the proxy or the emulator).
    fn imds(&self, pod: &str, path: &str) -> Option<(u16, String)> {
        let path = path.to_owned();
        self.sandbox
            .pod(pod)
            .unwrap()
            .netns()
            .run(move || http_get(SocketAddr::new(IMDS_ADDRESS.into(), 80), &path, true))
            .unwrap()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        // A failing test shows the agent's log (the tests keep it in a file).
        if std::thread::panicking()
            && let Ok(log) = std::fs::read_to_string(self.log())
        {
            eprintln!("the agent's log:\n{log}");
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A plain HTTP/1.1 GET; `None` when no connection was made in time.
fn http_get(addr: SocketAddr, path: &str, metadata: bool) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let header = if metadata { "Metadata: true\r\n" } else { "" };
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {}\r\n{header}Connection: close\r\n\r\n",
        addr.ip()
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((status, body))
}

/// `imdsguard agent run`, running in this namespace.
struct AgentProc {
    child: Child,
    admin: SocketAddr,
}

impl AgentProc {
    fn start(args: &[&str]) -> AgentProc {
        AgentProc::start_with_env(args, &[])
    }

    fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> AgentProc {
        AgentProc::spawn(args, env, Stdio::inherit())
    }

    /// With its log (`--log-format json`) written to `log`.
    fn start_logging(args: &[&str], log: &std::path::Path) -> AgentProc {
        let file = std::fs::File::create(log).unwrap();
        let mut all = args.to_vec();
        all.extend(["--log-format", "json"]);
        AgentProc::spawn(&all, &[], Stdio::from(file))
    }

    fn spawn(args: &[&str], env: &[(&str, &str)], stderr: Stdio) -> AgentProc {
        let mut child = Command::new(IMDSGUARD)
            .args(["agent", "run"])
            .args(args)
            .envs(env.iter().copied())
            .args(["--admin-listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut admin = None;
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(a) = line.strip_prefix("admin http://") {
                admin = Some(a.parse().unwrap());
            }
            if line.starts_with("enforcing ") {
                break;
            }
        }
        AgentProc {
            child,
            admin: admin.expect("the agent printed its admin address"),
        }
    }

    fn get(&self, path: &str) -> (u16, String) {
        http_get(self.admin, path, false).expect("the admin listener answers")
    }

    fn ready(&self) -> bool {
        self.get("/readyz").0 == 200
    }

    fn metric(&self, name_and_labels: &str) -> Option<f64> {
        self.get("/metrics").1.lines().find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == name_and_labels).then(|| value.parse().ok())?
        })
    }

    fn signal(&self, sig: rustix::process::Signal) {
        rustix::process::kill_process(rustix::process::Pid::from_child(&self.child), sig).unwrap();
    }

    /// Waits for the agent to exit; its status.
    fn wait(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the agent did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn table() -> TableState {
    read_table(&Exec::here())
        .unwrap()
        .expect("inet imdsguard is installed")
}

fn pair(iface: &str, addr: [u8; 4]) -> SourcePair {
    SourcePair::new(iface, IpAddr::V4(Ipv4Addr::from(addr))).unwrap()
}

/// The agent is ready and says its tables drop nothing; the table is `mode`'s, marked
/// as a dry run.
fn assert_dry_run(agent: &AgentProc, mode: Mode) {
    let (status, ready) = agent.get("/readyz");
    assert_eq!(status, 200, "{ready}");
    assert!(
        ready.contains(&format!("dry run: {mode} mode's tables drop nothing")),
        "{ready}"
    );
    let t = table();
    assert_eq!((t.mode, t.dry_run), (Some(mode), true));
    assert!(t.is_enforcing());
}

/// Polls `check` every 50 ms for up to `within`.
fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    check()
}

/// Where the tests' proxy mode listens: the node's address, port 8169.
fn proxy_address() -> String {
    SocketAddr::new(IpAddr::V4(sandbox::NODE_ADDR), 8169).to_string()
}

/// The pods the sandbox node hosts (the spoofer's address is not its own: not listed),
/// as the API server's pods (namespace, name, podIP).
const SANDBOX_API_PODS: [(&str, &str, &str); 3] = [
    ("platform", "allowed", "10.244.0.10"),
    ("shop", "web", "10.244.0.11"),
    ("jobs", "batch", "10.244.1.10"),
];

/// The pods the sandbox node hosts (the spoofer's address is not its own: not listed).
const PODS: &str = "
- {ip: 10.244.0.10, namespace: platform, name: allowed, interface: azvallowed}
- {ip: 10.244.0.11, namespace: shop, name: web, interface: azvweb}
- {ip: 10.244.1.10, namespace: jobs, name: batch, interface: cbr0}
";

const RULES: &str = "rules:
  - name: shop-location
    subjects: [{namespace: shop}]
    paths: [/metadata/instance/compute/location]
  - name: platform-all
    subjects: [{namespace: platform}]
    paths: [/metadata/instance]
";

#[test]
#[ignore = "needs netns"]
fn the_agent_installs_restores_and_follows_the_pods_file() {
    let test = "the_agent_installs_restores_and_follows_the_pods_file";
    isolated(test, || {
        let w = World::new(test);
        let mut agent = w.agent(
            &[
                "--mode",
                "block",
                "--allow",
                "platform/allowed",
                "--check-interval",
                "2s",
            ],
            PODS,
            None,
        );
        let t = table();
        assert_eq!(t.mode, Some(Mode::Block));
        assert_eq!(t.allowed, [pair("azvallowed", [10, 244, 0, 10])]);
        assert_eq!(t.known.len(), 3, "{:?}", t.known);
        assert!(agent.ready(), "{:?}", agent.get("/readyz"));
        assert_eq!(agent.get("/healthz").0, 200);
        assert_eq!(agent.metric("imdsguard_agent_enforcing"), Some(1.0));

        assert_eq!(w.reach("web"), Reach::Timeout);
        assert!(w.reach("allowed").connected());
        // Drops reach the metrics on the next round.
        assert!(
            eventually(Duration::from_secs(5), || {
                agent
                    .metric(r#"imdsguard_blocked_packets_total{destination="protected"}"#)
                    .is_some_and(|v| v > 0.0)
            }),
            "{}",
            agent.get("/metrics").1
        );
        // … named by pod (the dropped-source sets), the allowlisted pod never.
        assert!(
            eventually(Duration::from_secs(5), || {
                agent
                    .metric(r#"imdsguard_agent_drops_total{namespace="shop",pod="web"}"#)
                    .is_some_and(|v| v > 0.0)
            }),
            "{}",
            agent.get("/metrics").1
        );
        assert_eq!(
            agent.metric(r#"imdsguard_agent_drops_total{namespace="platform",pod="allowed"}"#),
            None
        );

        // Deleted by hand: /readyz fails until the agent puts the table back.
        Exec::here()
            .run("nft", ["delete", "table", "inet", "imdsguard"], None)
            .unwrap();
        let (status, body) = agent.get("/readyz");
        let raced = agent
            .metric("imdsguard_agent_restores_total")
            .is_some_and(|v| v > 0.0);
        assert!(
            status == 503 || raced,
            "readyz without the table: {status} {body}"
        );
        if status == 503 {
            assert!(body.contains("not installed"), "{body}");
        }
        assert!(eventually(Duration::from_secs(10), || agent.ready()));
        let restored = table();
        assert_eq!(restored.mode, Some(Mode::Block));
        assert_eq!(restored.allowed, t.allowed);
        assert_eq!(restored.known, t.known);
        assert!(agent.metric("imdsguard_agent_restores_total").unwrap() >= 1.0);
        assert_eq!(w.reach("web"), Reach::Timeout);

        // A pod leaves, another comes: set elements change, the table and rules stay.
        w.file(
            "pods.yaml",
            "
- {ip: 10.244.0.10, namespace: platform, name: allowed, interface: azvallowed}
- {ip: 10.244.0.12, namespace: shop, name: extra, interface: azvextra}
- {ip: 10.244.1.10, namespace: jobs, name: batch, interface: cbr0}
",
        );
        assert!(eventually(Duration::from_secs(10), || {
            table().known.contains(&pair("azvextra", [10, 244, 0, 12]))
        }));
        let changed = table();
        assert_eq!(changed.handle, restored.handle, "same table");
        assert_eq!(
            changed.chains, restored.chains,
            "same chains and rule handles"
        );
        assert!(!changed.known.contains(&pair("azvweb", [10, 244, 0, 11])));
        assert_eq!(changed.known.len(), 3);

        // SIGTERM: the agent stops serving and leaves the rules.
        agent.signal(rustix::process::Signal::TERM);
        assert!(agent.wait(Duration::from_secs(10)).success());
        let status = imdsguard_node::status(&Exec::here()).unwrap();
        assert!(status.installed && status.enforcing, "{status:?}");
        assert_eq!(w.reach("web"), Reach::Timeout);
    });
}

#[test]
#[ignore = "needs netns"]
fn sighup_reloads_and_killing_the_agent_leaves_the_table() {
    let test = "sighup_reloads_and_killing_the_agent_leaves_the_table";
    isolated(test, || {
        let w = World::new(test);
        // `web` is allowlisted by name but not in the file yet.
        let mut agent = w.agent(
            &[
                "--mode",
                "block",
                "--allow",
                "shop/web",
                "--check-interval",
                "30m",
            ],
            "- {ip: 10.244.0.10, namespace: platform, name: allowed, interface: azvallowed}\n",
            None,
        );
        assert!(table().allowed.is_empty());
        assert_eq!(w.reach("web"), Reach::Timeout);
        let before = table();
        w.file("pods.yaml", PODS);
        agent.signal(rustix::process::Signal::HUP);
        assert!(eventually(Duration::from_secs(10), || {
            table().allowed == [pair("azvweb", [10, 244, 0, 11])]
        }));
        assert_eq!(table().chains, before.chains, "no rebuild");
        assert!(w.reach("web").connected(), "web is allowlisted now");

        // SIGKILL: no chance to clean up, and nothing to clean up: the rules stay.
        agent.child.kill().unwrap();
        let _ = agent.wait(Duration::from_secs(5));
        let status = imdsguard_node::status(&Exec::here()).unwrap();
        assert!(status.installed && status.enforcing, "{status:?}");
        assert_eq!(status.mode, Some(Mode::Block));
        assert_eq!(w.reach("batch"), Reach::Timeout);
        assert_eq!(w.reach("allowed"), Reach::Timeout, "not allowlisted");
        assert!(w.reach("web").connected());
    });
}

#[test]
#[ignore = "needs netns"]
fn proxy_mode_end_to_end_with_the_emulator() {
    let test = "proxy_mode_end_to_end_with_the_emulator";
    isolated(test, || {
        let w = World::new(test);
        let proxy = proxy_address();
        let mut agent = w.agent(
            &[
                "--mode",
                "proxy",
                "--proxy-address",
                &proxy,
                "--allow",
                "platform/allowed",
                "--check-interval",
                "500ms",
            ],
            PODS,
            Some(RULES),
        );
        assert!(agent.ready(), "{:?}", agent.get("/readyz"));
        assert_eq!(table().mode, Some(Mode::Proxy));

        let location = "/metadata/instance/compute/location?api-version=2021-02-01&format=text";
        let instance = "/metadata/instance?api-version=2021-02-01";
        // web (shop): the location, through the proxy, from the emulator.
        let (status, body) = w.imds("web", location).expect("web reaches the proxy");
        assert_eq!(status, 200, "{body}");
        assert!(!body.trim().is_empty());
        // Anything else: the proxy's denial.
        let (status, body) = w.imds("web", instance).unwrap();
        assert_eq!(status, 403, "{body}");
        assert!(body.contains("imdsguard"), "{body}");
        let (status, _) = w.imds("batch", location).unwrap();
        assert_eq!(status, 403, "jobs has no rule");
        // The allowlisted pod goes straight to the emulator.
        let (status, body) = w.imds("allowed", instance).unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("compute"), "{body}");
        // The spoofer borrows `allowed`'s address, which the proxy would serve: its
        // (interface, address) pair is unknown, so nft drops it before the proxy.
        assert_eq!(w.imds("spoofer", instance), None);
        assert_eq!(w.reach("spoofer"), Reach::Timeout);
        assert!(
            eventually(Duration::from_secs(5), || {
                agent
                    .metric(
                        r#"imdsguard_blocked_packets_total{destination="protected-unknown-source"}"#,
                    )
                    .is_some_and(|v| v > 0.0)
            }),
            "{}",
            agent.get("/metrics").1
        );
        let metrics = agent.get("/metrics").1;
        assert!(
            metrics.contains(r#"imdsguard_proxy_decisions_total{namespace="shop""#),
            "{metrics}"
        );

        agent.signal(rustix::process::Signal::TERM);
        assert!(agent.wait(Duration::from_secs(10)).success());
        let status = imdsguard_node::status(&Exec::here()).unwrap();
        assert!(
            status.enforcing && status.mode == Some(Mode::Proxy),
            "{status:?}"
        );
        // The proxy is gone, the rules are not: the spoofer and web stay out.
        assert_eq!(w.reach("spoofer"), Reach::Timeout);
        assert!(!matches!(w.imds("web", location), Some((200, _))));
    });
}

/// The JSON log records of `log` whose message is `message`, their `fields`.
fn log_records(log: &std::path::Path, message: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|r| r["fields"]["message"] == message)
        .map(|r| r["fields"].clone())
        .collect()
}

#[test]
#[ignore = "needs netns"]
fn observe_mode_counts_connections_per_pod_and_endpoint() {
    let test = "observe_mode_counts_connections_per_pod_and_endpoint";
    isolated(test, || {
        let w = World::new(test);
        let log = w.log();
        let agent = w.agent(
            &[
                "--mode",
                "observe",
                "--allow",
                "platform/allowed",
                "--check-interval",
                "500ms",
            ],
            PODS,
            None,
        );
        assert!(agent.ready(), "{:?}", agent.get("/readyz"));
        assert_eq!(table().mode, Some(Mode::Observe));
        let wireserver = SocketAddr::new(IpAddr::V4(imdsguard_core::imds::WIRESERVER_ADDRESS), 80);
        // Observe lets everything through: web twice to IMDS and once to WireServer
        // (nothing listens there: refused, but the connection was let through and
        // counted), batch once to IMDS, the allowlisted pod once (not observed: block
        // mode would not drop it).
        assert!(w.reach("web").connected());
        assert!(w.reach("web").connected());
        let refused = w.sandbox.pod("web").unwrap().tcp(wireserver, WAIT).unwrap();
        assert!(matches!(refused, Reach::Refused(_)), "{refused:?}");
        assert!(w.reach("batch").connected());
        assert!(w.reach("allowed").connected());

        let metric = |ns: &str, pod: &str, endpoint: &str| {
            agent.metric(&format!(
                r#"imdsguard_agent_observed_connections_total{{namespace="{ns}",pod="{pod}",endpoint="{endpoint}"}}"#
            ))
        };
        let expected = [
            ("shop", "web", "Azure IMDS", 2.0),
            ("shop", "web", "Azure WireServer", 1.0),
            ("jobs", "batch", "Azure IMDS", 1.0),
        ];
        assert!(
            eventually(Duration::from_secs(10), || {
                expected
                    .iter()
                    .all(|(ns, pod, e, n)| metric(ns, pod, e) == Some(*n))
            }),
            "{}",
            agent.get("/metrics").1
        );
        let metrics = agent.get("/metrics").1;
        assert!(!metrics.contains(r#"pod="allowed""#), "{metrics}");
        assert!(
            !metrics.contains(r#"imdsguard_agent_drops_total{"#),
            "{metrics}"
        );
        // The kernel's record: one element per source and endpoint.
        let seen = imdsguard_node::observed_connections(&Exec::here()).unwrap();
        let elements: Vec<(String, String, u64)> = seen
            .iter()
            .map(|o| (o.iface.clone(), o.endpoint.to_string(), o.connections))
            .collect();
        assert_eq!(
            elements,
            [
                ("azvweb".to_owned(), "168.63.129.16:80/TCP".to_owned(), 1),
                ("azvweb".to_owned(), "169.254.169.254:80/TCP".to_owned(), 2),
                ("cbr0".to_owned(), "169.254.169.254:80/TCP".to_owned(), 1),
            ]
        );
        // One log record per pod and endpoint, the first time (the log is written by a
        // buffer of its own: wait for them).
        assert!(eventually(Duration::from_secs(5), || {
            let records = log_records(&log, "metadata access observed");
            let web: u64 = records
                .iter()
                .filter(|r| r["pod"] == "web" && r["endpoint"] == "Azure IMDS")
                .filter_map(|r| r["connections"].as_u64())
                .sum();
            web == 2 && records.iter().any(|r| r["pod"] == "batch")
        }));
        let records = log_records(&log, "metadata access observed");
        let web_imds: Vec<&serde_json::Value> = records
            .iter()
            .filter(|r| r["pod"] == "web" && r["endpoint"] == "Azure IMDS")
            .collect();
        assert!(!web_imds.is_empty(), "{records:?}");
        assert_eq!(web_imds[0]["first"], true);
        assert_eq!(web_imds[0]["namespace"], "shop");
        assert_eq!(web_imds[0]["address"], "10.244.0.11");
        assert_eq!(
            web_imds
                .iter()
                .map(|r| r["connections"].as_u64().unwrap())
                .sum::<u64>(),
            2
        );
        assert!(records.iter().any(|r| r["pod"] == "batch"));
        assert!(records.iter().all(|r| r["pod"] != "allowed"));

        // Another connection: counted on the next check, logged again (not the first).
        assert!(w.reach("batch").connected());
        assert!(
            eventually(Duration::from_secs(10), || metric(
                "jobs",
                "batch",
                "Azure IMDS"
            ) == Some(2.0)),
            "{}",
            agent.get("/metrics").1
        );
        assert!(eventually(Duration::from_secs(5), || {
            log_records(&log, "metadata access observed")
                .iter()
                .any(|r| r["pod"] == "batch" && r["first"] == false && r["total"] == 2)
        }));
        // batch leaves the node: its label set goes with it.
        w.file(
            "pods.yaml",
            "
- {ip: 10.244.0.10, namespace: platform, name: allowed, interface: azvallowed}
- {ip: 10.244.0.11, namespace: shop, name: web, interface: azvweb}
",
        );
        assert!(
            eventually(Duration::from_secs(10), || metric(
                "jobs",
                "batch",
                "Azure IMDS"
            )
            .is_none()),
            "{}",
            agent.get("/metrics").1
        );
        assert_eq!(metric("shop", "web", "Azure IMDS"), Some(2.0));
    });
}

#[test]
#[ignore = "needs netns"]
fn proxy_mode_dry_run_forwards_what_it_would_deny() {
    let test = "proxy_mode_dry_run_forwards_what_it_would_deny";
    isolated(test, || {
        let w = World::new(test);
        let log = w.log();
        let proxy = proxy_address();
        let agent = w.agent(
            &[
                "--mode",
                "proxy",
                "--dry-run",
                "--proxy-address",
                &proxy,
                "--check-interval",
                "500ms",
            ],
            PODS,
            Some(RULES),
        );
        // Proxy mode's table, marked as a dry run: it drops nothing.
        assert_dry_run(&agent, Mode::Proxy);

        let location = "/metadata/instance/compute/location?api-version=2021-02-01&format=text";
        let instance = "/metadata/instance?api-version=2021-02-01";
        // Allowed: as always.
        let (status, body) = w.imds("web", location).expect("web reaches the proxy");
        assert_eq!(status, 200, "{body}");
        // Denied by the rules: forwarded all the same, the emulator's answer.
        let (status, body) = w.imds("web", instance).unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("compute"), "{body}");
        let (status, body) = w.imds("batch", location).unwrap();
        assert_eq!(status, 200, "jobs has no rule, forwarded: {body}");
        // What proxy mode's table would drop is let through: web to WireServer (not
        // proxied; nothing listens there, so refused, not timed out) and the spoofer
        // (an unknown pair) to IMDS directly; every pod keeps what it had before.
        let wireserver = SocketAddr::new(IpAddr::V4(imdsguard_core::imds::WIRESERVER_ADDRESS), 80);
        let web_wire = w.sandbox.pod("web").unwrap().tcp(wireserver, WAIT).unwrap();
        assert!(matches!(web_wire, Reach::Refused(_)), "{web_wire:?}");
        assert!(w.reach("spoofer").connected());

        let metric = |ns: &str, endpoint: &str, outcome: &str| {
            agent.metric(&format!(
                r#"imdsguard_proxy_decisions_total{{namespace="{ns}",endpoint="{endpoint}",outcome="{outcome}"}}"#
            ))
        };
        assert_eq!(metric("shop", "instance", "would_deny"), Some(1.0));
        assert_eq!(metric("jobs", "instance", "would_deny"), Some(1.0));
        assert_eq!(
            metric("shop", "instance", "allow"),
            Some(1.0),
            "the location"
        );
        let metrics = agent.get("/metrics").1;
        assert!(!metrics.contains(r#"outcome="deny""#), "{metrics}");
        // Each would-deny is logged with the pod, its rule and reason.
        assert!(
            eventually(Duration::from_secs(5), || {
                log_records(&log, "decision")
                    .iter()
                    .filter(|r| r["decision"] == "would-deny")
                    .count()
                    == 2
            }),
            "{:?}",
            log_records(&log, "decision")
        );
        let records = log_records(&log, "decision");
        let web = records
            .iter()
            .find(|r| r["decision"] == "would-deny" && r["pod"] == "shop/web")
            .unwrap_or_else(|| panic!("{records:?}"));
        assert_eq!(web["status"], 200, "{web}");
        assert!(web["rule"].as_str().is_some_and(|r| !r.is_empty()), "{web}");
        assert!(web["reason"].as_str().is_some(), "{web}");

        // The table's would-drops: counted apart (nothing blocked or spoofed), and
        // attributed like drops, web's to web and the spoofer's to no pod, as would-drops.
        let would = |ns: &str, pod: &str| {
            agent.metric(&format!(
                r#"imdsguard_agent_would_drops_total{{namespace="{ns}",pod="{pod}"}}"#
            ))
        };
        assert!(
            eventually(Duration::from_secs(10), || {
                would("shop", "web").is_some_and(|v| v > 0.0)
                    && would("", "unknown").is_some_and(|v| v > 0.0)
            }),
            "{}",
            agent.get("/metrics").1
        );
        let nft = |counter: &str| {
            agent.metric(&format!(
                r#"imdsguard_agent_nft_packets{{counter="{counter}"}}"#
            ))
        };
        assert!(nft("would_drop").is_some_and(|v| v > 0.0));
        assert_eq!(nft("blocked"), Some(0.0));
        assert_eq!(nft("spoofed"), Some(0.0));
        let metrics = agent.get("/metrics").1;
        assert!(
            !metrics.contains("imdsguard_agent_drops_total{"),
            "{metrics}"
        );
        for destination in ["protected", "protected-unknown-source"] {
            assert!(
                agent
                    .metric(&format!(
                        r#"imdsguard_blocked_packets_total{{destination="{destination}"}}"#
                    ))
                    .is_none_or(|v| v == 0.0),
                "{metrics}"
            );
        }
        assert!(eventually(Duration::from_secs(5), || {
            let r = log_records(
                &log,
                "metadata access would be dropped (dry run: let through)",
            );
            r.iter().any(|r| r["pod"] == "web") && r.iter().any(|r| r["pod"] == "unknown")
        }));
        let would_log = log_records(
            &log,
            "metadata access would be dropped (dry run: let through)",
        );
        let web = would_log.iter().find(|r| r["pod"] == "web").unwrap();
        assert_eq!(web["namespace"], "shop");
        assert_eq!(web["would_drop"], true);
        assert_eq!(web["interface"], "azvweb");
        assert_eq!(web["address"], "10.244.0.11");
        assert_eq!(web["matched_by"], "pair");
        assert!(
            log_records(&log, "metadata access dropped").is_empty(),
            "nothing was dropped"
        );
    });
}

// hostNetwork pods by cgroup. The cgroup v2 hierarchy is the machine's one (a mount in a
// private mount namespace shows it whole): each test's cgroups are made and removed
// through `imdsguard_node::cgroups::CgroupTree` (names unique to the run; its own
// directories removed when it ends, also on failure; the shared parents, `kubepods.slice`,
// its QoS slices and `system.slice`, by the last tree, under the shared cgroups lock).

/// Runs `body` in a fresh network namespace AND a private mount namespace with cgroup v2
/// mounted at /sys/fs/cgroup (as root: the hierarchy is the machine's, which only root
/// may change): this binary again, `--exact test`.
fn isolated_cgroup(test: &str, body: impl FnOnce()) {
    isolated_cgroup_test(test, INNER, &["nft", "nsenter", "bash", "timeout"], body);
}

/// A pod UID of this test run: `a9e17e57-000N-4000-8000-<pid>`.
fn test_uid(n: u16) -> String {
    format!("a9e17e57-{n:04x}-4000-8000-{:012x}", std::process::id())
}

/// The sandbox node with cgroups: the "kubelet" (a service of system.slice) and the
/// hostNetwork pods' directories [`HostNode::pod`] makes; all removed on drop.
struct HostNode {
    w: World,
    cgroups: CgroupTree,
    kubelet: PathBuf,
}

impl HostNode {
    fn new(test: &str) -> HostNode {
        let w = World::new(test);
        let mut cgroups = CgroupTree::open(CGROUP2_MOUNT).expect("the cgroups lock");
        let kubelet = cgroups
            .make(&format!(
                "system.slice/imdsguard-test-{}-kubelet.service",
                std::process::id()
            ))
            .unwrap();
        HostNode {
            w,
            cgroups,
            kubelet,
        }
    }

    /// The pod `uid`'s directory as the kubelet's systemd driver names it for class
    /// `qos`, and a container below it; the container's (where its processes go).
    fn pod(&mut self, uid: &str, qos: QosClass) -> PathBuf {
        let pod = pod_cgroup_paths(uid)
            .into_iter()
            .find(|c| c.driver == CgroupDriver::Systemd && c.qos == qos)
            .unwrap_or_else(|| panic!("{uid} is no pod UID"));
        self.cgroups
            .make(&format!(
                "{}/cri-containerd-{:x}.scope",
                pod.path,
                std::process::id()
            ))
            .unwrap()
    }
}

/// The file-driven hostNetwork tests' node: [`host_pods_file`]'s three pods,
/// `monitoring/agent` (Burstable) and `debug/shell` (Guaranteed) with their cgroups, and
/// `monitoring/late`, whose cgroup [`HostPods::late`] makes.
struct HostPods {
    node: HostNode,
    mon_uid: String,
    dbg_uid: String,
    late_uid: String,
    monitoring: PathBuf,
    debug: PathBuf,
}

impl HostPods {
    fn new(test: &str) -> HostPods {
        let mut node = HostNode::new(test);
        let (mon_uid, dbg_uid, late_uid) = (test_uid(1), test_uid(2), test_uid(3));
        let monitoring = node.pod(&mon_uid, QosClass::Burstable);
        let debug = node.pod(&dbg_uid, QosClass::Guaranteed);
        HostPods {
            node,
            mon_uid,
            dbg_uid,
            late_uid,
            monitoring,
            debug,
        }
    }

    /// The agent with `args`, the pods file ([`host_pods_file`]) and [`HOST_RULES`].
    fn agent(&self, args: &[&str]) -> AgentProc {
        let pods = host_pods_file(&self.mon_uid, &self.dbg_uid, &self.late_uid);
        self.node.w.agent(args, &pods, Some(HOST_RULES))
    }

    /// `monitoring/late`'s cgroup (Burstable), made now.
    fn late(&mut self) -> PathBuf {
        self.node.pod(&self.late_uid, QosClass::Burstable)
    }
}

/// A GET from a process of the node's namespace placed in the cgroup `cgroup` before it
/// opens its socket (bash's /dev/tcp); `None` when no connection was made within 3 s.
fn get_from_cgroup(cgroup: &std::path::Path, path: &str) -> Option<(u16, String)> {
    let script = r#"exec 3<>/dev/tcp/169.254.169.254/80 || exit 98
printf 'GET %s HTTP/1.1\r\nHost: 169.254.169.254\r\nMetadata: true\r\nConnection: close\r\n\r\n' "$P" >&3
cat <&3"#;
    let out = command_in_cgroup(cgroup, "timeout")
        .args(["3", "bash", "-c", script])
        .env("P", path)
        .output()
        .expect("timeout and bash run");
    assert_ne!(
        out.status.code(),
        Some(ENTER_FAILED),
        "could not join {}: {}",
        cgroup.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((status, body))
}

/// A TCP connection to WireServer (168.63.129.16:80; nothing listens there in the
/// sandbox) from a process placed in `cgroup`: refused, or no answer within 2 s.
fn wireserver_from_cgroup(cgroup: &std::path::Path) -> Reach {
    let out = command_in_cgroup(cgroup, "timeout")
        .args(["2", "bash", "-c", "exec 3<>/dev/tcp/168.63.129.16/80"])
        .output()
        .expect("timeout and bash run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    match out.status.code() {
        Some(0) => Reach::Connected,
        Some(124) => Reach::Timeout,
        _ if stderr.contains("refused") => Reach::Refused(stderr.trim().to_owned()),
        other => panic!("a connection from {}: {other:?} {stderr}", cgroup.display()),
    }
}

const INSTANCE: &str = "/metadata/instance?api-version=2021-02-01";
/// A token for ARM as the emulated AKS node's first user-assigned identity (the kubelet's;
/// the VM has no system-assigned one, so a request without a client_id is IMDS's 400).
fn token_path() -> String {
    let config = VmConfig::default_aks();
    let id = &config.identities.user_assigned[0].client_id;
    format!(
        "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F&client_id={id}"
    )
}

/// The sandbox's pods plus three hostNetwork pods: `monitoring/agent` (selected by the
/// rules), `debug/shell` (not), and `monitoring/late` (selected; its cgroup is made after
/// the agent started).
fn host_pods_file(monitoring: &str, debug: &str, late: &str) -> String {
    format!(
        "{PODS}- {{namespace: monitoring, name: agent, hostNetwork: true, uid: {monitoring}, labels: {{app: monitoring}}}}
- {{namespace: debug, name: shell, hostNetwork: true, uid: {debug}}}
- {{namespace: monitoring, name: late, hostNetwork: true, uid: {late}, labels: {{app: monitoring}}}}
"
    )
}

const HOST_RULES: &str = "rules:
  - name: shop-location
    subjects: [{namespace: shop}]
    paths: [/metadata/instance/compute/location]
  - name: monitoring-token
    subjects: [{namespace: monitoring, podSelector: {matchLabels: {app: monitoring}}}]
    paths: [/metadata/instance]
    token:
      resources: ['*']
      identities: [{any: true}]
";

#[test]
#[ignore = "needs netns"]
fn block_mode_guards_host_network_pods_by_cgroup() {
    let test = "block_mode_guards_host_network_pods_by_cgroup";
    isolated_cgroup(test, || {
        let mut h = HostPods::new(test);
        let (monitoring, debug) = (h.monitoring.clone(), h.debug.clone());
        let kubelet = h.node.kubelet.clone();
        let log = h.node.w.log();
        // Before the agent: everybody reaches IMDS from the node.
        for (who, dir) in [
            ("monitoring", &monitoring),
            ("debug", &debug),
            ("kubelet", &kubelet),
        ] {
            let got = get_from_cgroup(dir, INSTANCE);
            assert_eq!(
                got.as_ref().map(|g| g.0),
                Some(200),
                "{who} before the agent"
            );
        }
        let agent = h.agent(&["--mode", "block", "--check-interval", "30m"]);
        let (status, body) = agent.get("/readyz");
        assert_eq!(status, 200, "{body}");
        assert!(
            body.contains("hostNetwork pods guarded by cgroup: 2 named (1 expected)"),
            "{body}"
        );
        assert_eq!(
            agent.metric(r#"imdsguard_agent_host_guard{state="guarded"}"#),
            Some(1.0)
        );

        // The expected pod and the kubelet reach the emulator; the other pod does not.
        let (status, body) = get_from_cgroup(&monitoring, INSTANCE).expect("monitoring connects");
        assert_eq!(status, 200);
        assert!(body.contains("compute"), "{} bytes", body.len());
        assert_eq!(get_from_cgroup(&kubelet, INSTANCE).map(|g| g.0), Some(200));
        assert_eq!(get_from_cgroup(&debug, INSTANCE), None, "debug is dropped");
        // Ordinary pods are the main table's: the rules file selects shop (allowlisted in
        // block mode), not jobs.
        assert!(h.node.w.reach("web").connected());
        assert_eq!(h.node.w.reach("batch"), Reach::Timeout);

        // The drop is debug/shell's, in the metric and the log (a check: SIGHUP).
        agent.signal(rustix::process::Signal::HUP);
        assert!(
            eventually(Duration::from_secs(10), || {
                agent
                    .metric(r#"imdsguard_agent_drops_total{namespace="debug",pod="shell"}"#)
                    .is_some_and(|v| v > 0.0)
            }),
            "{}",
            agent.get("/metrics").1
        );
        let metrics = agent.get("/metrics").1;
        assert!(!metrics.contains(r#"namespace="monitoring""#), "{metrics}");
        // The log is written by a buffer of its own: wait for the record.
        assert!(eventually(Duration::from_secs(5), || {
            log_records(&log, "metadata access dropped")
                .iter()
                .any(|r| r["pod"] == "shell")
        }));
        let dropped = log_records(&log, "metadata access dropped");
        let shell = dropped
            .iter()
            .find(|r| r["pod"] == "shell")
            .unwrap_or_else(|| panic!("{dropped:?}"));
        assert_eq!(shell["namespace"], "debug");
        assert_eq!(shell["host_network"], true);
        assert_eq!(shell["matched_by"], "cgroup");
        assert!(
            shell["cgroup"]
                .as_str()
                .is_some_and(|c| c.contains(&h.dbg_uid.replace('-', "_"))),
            "{shell}"
        );
        assert!(dropped.iter().all(|r| r["pod"] != "agent"), "{dropped:?}");

        // A hostNetwork pod started later: until a check names it, its sockets are in a
        // pod cgroup no rule names (dropped, unknown); after the next check it is
        // covered as itself (expected: through).
        let late = h.late();
        assert_eq!(get_from_cgroup(&late, INSTANCE), None, "not named yet");
        agent.signal(rustix::process::Signal::HUP);
        assert!(
            eventually(Duration::from_secs(10), || {
                agent
                    .get("/readyz")
                    .1
                    .contains("hostNetwork pods guarded by cgroup: 3 named (2 expected)")
            }),
            "{:?}",
            agent.get("/readyz")
        );
        assert_eq!(get_from_cgroup(&late, INSTANCE).map(|g| g.0), Some(200));
        assert!(
            eventually(Duration::from_secs(10), || {
                agent
                    .metric(r#"imdsguard_agent_drops_total{namespace="",pod="unknown"}"#)
                    .is_some_and(|v| v > 0.0)
            }),
            "the late pod's first try counted as unknown: {}",
            agent.get("/metrics").1
        );
        // Still: debug dropped, the kubelet through.
        assert_eq!(get_from_cgroup(&debug, INSTANCE), None);
        assert_eq!(get_from_cgroup(&kubelet, INSTANCE).map(|g| g.0), Some(200));
        drop(agent);
        // Uninstall removes both tables.
        let dry = Command::new(IMDSGUARD)
            .args(["agent", "uninstall", "--dry-run"])
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&dry.stdout);
        assert!(
            said.contains("is installed") && said.contains("delete table inet imdsguard_host"),
            "{said}"
        );
        assert!(
            imdsguard_node::host::read_host_listing(&Exec::here())
                .unwrap()
                .is_some()
        );
        let out = Command::new(IMDSGUARD)
            .args(["agent", "uninstall"])
            .output()
            .unwrap();
        assert!(out.status.success());
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            said.starts_with("removed table inet imdsguard (and inet imdsguard_host)"),
            "{said}"
        );
        assert!(read_table(&Exec::here()).unwrap().is_none());
        assert!(
            imdsguard_node::host::read_host_listing(&Exec::here())
                .unwrap()
                .is_none()
        );
        assert_eq!(get_from_cgroup(&debug, INSTANCE).map(|g| g.0), Some(200));
    });
}

#[test]
#[ignore = "needs netns"]
fn observe_mode_counts_host_network_pods_connections_by_cgroup() {
    let test = "observe_mode_counts_host_network_pods_connections_by_cgroup";
    isolated_cgroup(test, || {
        let h = HostPods::new(test);
        let (monitoring, debug, kubelet) = (&h.monitoring, &h.debug, &h.node.kubelet);
        let log = h.node.w.log();
        let agent = h.agent(&["--mode", "observe", "--check-interval", "500ms"]);
        assert!(agent.ready(), "{:?}", agent.get("/readyz"));
        // Nothing is dropped: all three get the instance document.
        for (who, dir) in [
            ("monitoring", monitoring),
            ("debug", debug),
            ("debug", debug),
            ("kubelet", kubelet),
        ] {
            let got = get_from_cgroup(dir, INSTANCE);
            assert_eq!(got.as_ref().map(|g| g.0), Some(200), "{who}");
        }
        // debug/shell's two connections are what block mode would drop: counted as its
        // own (per pod: endpoint "any"); the expected pod and the kubelet are not.
        let shell = r#"imdsguard_agent_observed_connections_total{namespace="debug",pod="shell",endpoint="any"}"#;
        assert!(
            eventually(Duration::from_secs(10), || agent.metric(shell) == Some(2.0)),
            "{}",
            agent.get("/metrics").1
        );
        let metrics = agent.get("/metrics").1;
        let observed: Vec<&str> = metrics
            .lines()
            .filter(|l| l.starts_with("imdsguard_agent_observed_connections_total{"))
            .collect();
        assert_eq!(observed, [format!("{shell} 2")], "{metrics}");
        assert!(eventually(Duration::from_secs(5), || {
            log_records(&log, "metadata access observed")
                .iter()
                .any(|r| {
                    r["pod"] == "shell" && r["host_network"] == true && r["matched_by"] == "cgroup"
                })
        }));
        // The series stays across later checks (the pod is still on the node).
        std::thread::sleep(Duration::from_millis(1500));
        assert_eq!(
            agent.metric(shell),
            Some(2.0),
            "{}",
            agent.get("/metrics").1
        );
    });
}

#[test]
#[ignore = "needs netns"]
fn proxy_mode_names_host_network_callers_by_cgroup() {
    let test = "proxy_mode_names_host_network_callers_by_cgroup";
    isolated_cgroup(test, || {
        let h = HostPods::new(test);
        let (monitoring, debug, kubelet) = (&h.monitoring, &h.debug, &h.node.kubelet);
        let log = h.node.w.log();
        let proxy = proxy_address();
        let agent = h.agent(&[
            "--mode",
            "proxy",
            "--proxy-address",
            &proxy,
            "--check-interval",
            "1s",
        ]);
        assert!(agent.ready(), "{:?}", agent.get("/readyz"));
        // The expected pod gets its token through the proxy (never printed).
        let (status, body) =
            get_from_cgroup(monitoring, &token_path()).expect("monitoring connects");
        assert_eq!(status, 200, "{} bytes", body.len());
        assert!(body.contains("access_token"), "{} bytes", body.len());
        // The other gets the proxy's 403 naming the rule.
        let (status, body) =
            get_from_cgroup(debug, &token_path()).expect("debug reaches the proxy");
        assert_eq!(status, 403, "{body}");
        let deny: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(
            deny["imdsguard"]["rule"]
                .as_str()
                .is_some_and(|r| !r.is_empty()),
            "{body}"
        );
        // The kubelet is untouched: straight to the emulator.
        assert_eq!(get_from_cgroup(kubelet, INSTANCE).map(|g| g.0), Some(200));
        // The decisions name the pods, found by their sockets' cgroup (the log is
        // written by a buffer of its own: wait for both records).
        assert!(eventually(Duration::from_secs(5), || {
            let records = log_records(&log, "decision");
            ["monitoring/agent", "debug/shell"]
                .iter()
                .all(|p| records.iter().any(|r| r["pod"] == *p))
        }));
        let records = log_records(&log, "decision");
        let of = |pod: &str| {
            records
                .iter()
                .find(|r| r["pod"] == pod)
                .unwrap_or_else(|| panic!("no decision for {pod}: {records:?}"))
                .clone()
        };
        let mon = of("monitoring/agent");
        assert_eq!(
            (mon["decision"].as_str(), mon["host_network"].as_bool()),
            (Some("allow"), Some(true))
        );
        let dbg = of("debug/shell");
        assert_eq!(dbg["decision"], "deny");
        assert_eq!(dbg["rule"], deny["imdsguard"]["rule"]);
        assert_eq!(
            agent.metric(r#"imdsguard_proxy_decisions_total{namespace="debug",endpoint="identity-token",outcome="deny"}"#),
            Some(1.0),
            "{}",
            agent.get("/metrics").1
        );
        // In proxy mode the rules are the proxy's, as for other pods: the pod they
        // select is not expected by the host table (only --allow would make it so), so
        // what the proxy does not serve (WireServer) is dropped for it as for the other.
        let (_, body) = agent.get("/readyz");
        assert!(
            body.contains("hostNetwork pods guarded by cgroup: 2 named (0 expected)"),
            "{body}"
        );
        assert_eq!(wireserver_from_cgroup(monitoring), Reach::Timeout);
        assert_eq!(wireserver_from_cgroup(debug), Reach::Timeout);
        drop(agent);

        // `--allow monitoring/agent`: that pod goes direct, like an allowlisted pair:
        // WireServer (nothing listens: refused) and IMDS, which the proxy never sees.
        let agent = h.agent(&[
            "--mode",
            "proxy",
            "--proxy-address",
            &proxy,
            "--check-interval",
            "1s",
            "--allow",
            "monitoring/agent",
        ]);
        assert!(agent.ready(), "{:?}", agent.get("/readyz"));
        let (_, body) = agent.get("/readyz");
        assert!(
            body.contains("hostNetwork pods guarded by cgroup: 2 named (1 expected)"),
            "{body}"
        );
        let direct = wireserver_from_cgroup(monitoring);
        assert!(matches!(direct, Reach::Refused(_)), "{direct:?}");
        assert_eq!(wireserver_from_cgroup(debug), Reach::Timeout);
        let (status, body) =
            get_from_cgroup(monitoring, &token_path()).expect("monitoring connects");
        assert_eq!(status, 200, "{} bytes", body.len());
        // debug/shell still gets the proxy's 403; once its decision is logged, none
        // names monitoring/agent (it went straight to the emulator).
        let (status, _) = get_from_cgroup(debug, &token_path()).expect("debug reaches the proxy");
        assert_eq!(status, 403);
        assert!(eventually(Duration::from_secs(5), || {
            log_records(&log, "decision")
                .iter()
                .any(|r| r["pod"] == "debug/shell")
        }));
        let records = log_records(&log, "decision");
        assert!(
            records.iter().all(|r| r["pod"] != "monitoring/agent"),
            "{records:?}"
        );
    });
}

/// A pod of `node` for the test API server (one container, as the API requires; no
/// kubelet will run it).
fn api_pod(namespace: &str, name: &str, node: &str, host_network: bool) -> String {
    format!(
        "apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  nodeName: {node}
  hostNetwork: {host_network}
  containers: [{{name: c, image: registry.invalid/none:1}}]
---
"
    )
}

/// Writes `pods` (namespace, name, podIP) of `node` to the API server, their namespaces
/// first, then their status as the kubelet would: Running on that address.
fn create_api_pods(cp: &ControlPlane, node: &str, host_network: bool, pods: &[(&str, &str, &str)]) {
    let mut manifests = String::new();
    let mut namespaces: Vec<&str> = pods.iter().map(|p| p.0).collect();
    namespaces.sort();
    namespaces.dedup();
    for ns in namespaces {
        cp.kubectl_ok(&["create", "namespace", ns], None);
    }
    for (ns, name, _) in pods {
        manifests += &api_pod(ns, name, node, host_network);
    }
    cp.apply(&manifests);
    for (ns, name, ip) in pods {
        set_pod_status(cp, ns, name, ip);
    }
}

/// The pod's `metadata.uid`, as the API server gave it.
fn api_pod_uid(cp: &ControlPlane, namespace: &str, name: &str) -> String {
    cp.kubectl_ok(
        &[
            "get",
            "pod",
            name,
            "-n",
            namespace,
            "-o",
            "jsonpath={.metadata.uid}",
        ],
        None,
    )
}

/// Writes the pod's status (Running, podIP) through the status subresource, as the
/// kubelet would.
fn set_pod_status(cp: &ControlPlane, namespace: &str, name: &str, ip: &str) {
    let status =
        format!(r#"{{"status":{{"phase":"Running","podIP":"{ip}","podIPs":[{{"ip":"{ip}"}}]}}}}"#);
    cp.kubectl_ok(
        &[
            "patch",
            "pod",
            name,
            "-n",
            namespace,
            "--subresource=status",
            "--type=merge",
            "-p",
            &status,
        ],
        None,
    );
}

/// The events.k8s.io/v1 Events of `namespace`, as JSON.
fn api_events(cp: &ControlPlane, namespace: &str) -> Vec<serde_json::Value> {
    events_of(cp, &["-n", namespace])
}

/// The events.k8s.io/v1 Events of every namespace whose `regarding` is the object `uid`.
fn api_events_regarding(cp: &ControlPlane, uid: &str) -> Vec<serde_json::Value> {
    events_of(cp, &["-A"])
        .into_iter()
        .filter(|e| e["regarding"]["uid"] == uid)
        .collect()
}

/// The Events of every namespace the agent posted (the API server posts some of its own).
fn agent_events(cp: &ControlPlane) -> Vec<serde_json::Value> {
    events_of(cp, &["-A"])
        .into_iter()
        .filter(|e| e["reportingController"] == "imdsguard-agent")
        .collect()
}

fn events_of(cp: &ControlPlane, which: &[&str]) -> Vec<serde_json::Value> {
    let mut args = vec!["get", "events.events.k8s.io", "-o", "json"];
    args.extend(which);
    let out = cp.kubectl_ok(&args, None);
    let list: serde_json::Value = serde_json::from_str(&out).expect("an Event list");
    list["items"].as_array().cloned().unwrap_or_default()
}

/// The Kubernetes hostNetwork tests' node: a dedicated API server (in the test's
/// namespace) with the CRD and Node `node-a`; two hostNetwork pods on it, written by the
/// test and Running on the node's address, `monitoring/agent` (labelled
/// `app: monitoring`) and `debug/shell`; their Burstable pod cgroups made with the UIDs
/// the API server gave them (read back); and the MetadataAccessPolicy `monitoring`,
/// whose rule selects `app: monitoring` pods (so `debug/shell` is not expected).
struct KubeHostPods {
    node: HostNode,
    cp: ControlPlane,
    mon_uid: String,
    dbg_uid: String,
    monitoring: PathBuf,
    debug: PathBuf,
}

impl KubeHostPods {
    fn new(test: &str) -> KubeHostPods {
        let mut node = HostNode::new(test);
        let cp = ControlPlane::dedicated(test);
        cp.install_imdsguard_crd();
        let n =
            serde_json::json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a"}});
        cp.kubectl_ok(&["create", "-f", "-"], Some(&n.to_string()));
        let node_addr = sandbox::NODE_ADDR.to_string();
        create_api_pods(
            &cp,
            "node-a",
            true,
            &[
                ("monitoring", "agent", &node_addr),
                ("debug", "shell", &node_addr),
            ],
        );
        cp.kubectl_ok(
            &[
                "label",
                "pod",
                "agent",
                "-n",
                "monitoring",
                "app=monitoring",
            ],
            None,
        );
        cp.apply(
            "apiVersion: imdsguard.io/v1alpha1
kind: MetadataAccessPolicy
metadata: {name: monitoring}
spec:
  rules:
  - name: token
    subjects: [{namespace: monitoring, podSelector: {matchLabels: {app: monitoring}}}]
    paths: [/metadata/instance]
",
        );
        let mon_uid = api_pod_uid(&cp, "monitoring", "agent");
        let dbg_uid = api_pod_uid(&cp, "debug", "shell");
        assert!(
            !mon_uid.is_empty() && !dbg_uid.is_empty() && mon_uid != dbg_uid,
            "{mon_uid:?} {dbg_uid:?}"
        );
        let monitoring = node.pod(&mon_uid, QosClass::Burstable);
        let debug = node.pod(&dbg_uid, QosClass::Burstable);
        KubeHostPods {
            node,
            cp,
            mon_uid,
            dbg_uid,
            monitoring,
            debug,
        }
    }

    /// `imdsguard agent run --kubernetes` for node-a with `args`, its JSON log in
    /// [`World::log`]; returned once the host table names both pods.
    fn agent(&self, args: &[&str]) -> AgentProc {
        let kubeconfig = self.cp.kubeconfig();
        let mut all = vec![
            "--kubernetes",
            "--node-name",
            "node-a",
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--check-interval",
            "1s",
        ];
        all.extend(args);
        let agent = AgentProc::start_logging(&all, &self.node.w.log());
        assert!(
            eventually(Duration::from_secs(10), || {
                agent
                    .get("/readyz")
                    .1
                    .contains("hostNetwork pods guarded by cgroup: 2 named (1 expected)")
            }),
            "{:?}",
            agent.get("/readyz")
        );
        agent
    }
}

#[test]
#[ignore = "needs netns"]
fn kubernetes_block_mode_posts_events_on_host_network_pods() {
    let test = "kubernetes_block_mode_posts_events_on_host_network_pods";
    isolated_cgroup(test, || {
        let k = KubeHostPods::new(test);
        let agent = k.agent(&["--mode", "block"]);
        assert!(agent.ready(), "{:?}", agent.get("/readyz"));

        // The pod the policy selects gets through, and the kubelet (a node process) is
        // untouched; the other pod is dropped.
        let (status, body) = get_from_cgroup(&k.monitoring, INSTANCE).expect("monitoring connects");
        assert_eq!(status, 200, "{} bytes", body.len());
        assert_eq!(
            get_from_cgroup(&k.node.kubelet, INSTANCE).map(|g| g.0),
            Some(200)
        );
        assert_eq!(
            get_from_cgroup(&k.debug, INSTANCE),
            None,
            "debug is dropped"
        );

        // The drop becomes a Warning Event on THAT Pod object (its UID), within seconds.
        let started = Instant::now();
        assert!(
            eventually(Duration::from_secs(5), || !api_events_regarding(
                &k.cp, &k.dbg_uid
            )
            .is_empty()),
            "no Event on debug/shell within 5 s; the agent's: {:?}",
            agent_events(&k.cp)
        );
        eprintln!("the Event came after {:?}", started.elapsed());
        let events = api_events(&k.cp, "debug");
        assert_eq!(events.len(), 1, "{events:?}");
        let e = &events[0];
        assert_eq!(e["type"], "Warning");
        assert_eq!(e["reason"], "MetadataAccessBlocked");
        assert_eq!(e["reportingController"], "imdsguard-agent");
        assert_eq!(e["reportingInstance"], "node-a");
        assert_eq!(e["regarding"]["kind"], "Pod");
        assert_eq!(e["regarding"]["namespace"], "debug");
        assert_eq!(e["regarding"]["name"], "shell");
        assert_eq!(e["regarding"]["uid"], k.dbg_uid.as_str());
        assert!(
            agent
                .metric(r#"imdsguard_agent_drops_total{namespace="debug",pod="shell"}"#)
                .is_some_and(|v| v > 0.0)
        );
        let dropped = log_records(&k.node.w.log(), "metadata access dropped");
        assert!(
            dropped.iter().any(|r| r["pod"] == "shell"
                && r["namespace"] == "debug"
                && r["host_network"] == true
                && r["matched_by"] == "cgroup"),
            "{dropped:?}"
        );

        // The selected pod: through again, and after two more checks still no Event or
        // drop names it (nor anything of the node's own).
        assert_eq!(
            get_from_cgroup(&k.monitoring, INSTANCE).map(|g| g.0),
            Some(200)
        );
        std::thread::sleep(Duration::from_millis(2500));
        assert_eq!(
            api_events_regarding(&k.cp, &k.mon_uid),
            Vec::<serde_json::Value>::new()
        );
        assert_eq!(
            api_events(&k.cp, "monitoring"),
            Vec::<serde_json::Value>::new()
        );
        let all = agent_events(&k.cp);
        assert_eq!(all.len(), 1, "only debug/shell's Event: {all:?}");
        let metrics = agent.get("/metrics").1;
        assert!(!metrics.contains(r#"namespace="monitoring""#), "{metrics}");
        assert_eq!(
            agent.metric(r#"imdsguard_agent_drops_total{namespace="",pod="unknown"}"#),
            None,
            "{metrics}"
        );
        assert_eq!(
            get_from_cgroup(&k.node.kubelet, INSTANCE).map(|g| g.0),
            Some(200)
        );
    });
}

#[test]
#[ignore = "needs netns"]
fn kubernetes_block_mode_dry_run_attributes_host_network_would_drops() {
    let test = "kubernetes_block_mode_dry_run_attributes_host_network_would_drops";
    isolated_cgroup(test, || {
        let k = KubeHostPods::new(test);
        let log = k.node.w.log();
        let agent = k.agent(&["--mode", "block", "--dry-run"]);
        assert_dry_run(&agent, Mode::Block);

        // The pod block mode would drop reaches IMDS: nothing is dropped.
        let (status, body) = get_from_cgroup(&k.debug, INSTANCE).expect("debug connects");
        assert_eq!(status, 200, "{} bytes", body.len());
        assert!(body.contains("compute"), "{} bytes", body.len());
        assert_eq!(
            get_from_cgroup(&k.monitoring, INSTANCE).map(|g| g.0),
            Some(200)
        );
        assert_eq!(
            get_from_cgroup(&k.node.kubelet, INSTANCE).map(|g| g.0),
            Some(200)
        );

        // ... but it is attributed to debug/shell as a would-drop: the metric and the
        // log record, from the host table's own counter.
        let would = r#"imdsguard_agent_would_drops_total{namespace="debug",pod="shell"}"#;
        assert!(
            eventually(Duration::from_secs(5), || agent
                .metric(would)
                .is_some_and(|v| v > 0.0)),
            "{}",
            agent.get("/metrics").1
        );
        assert!(eventually(Duration::from_secs(5), || {
            log_records(
                &log,
                "metadata access would be dropped (dry run: let through)",
            )
            .iter()
            .any(|r| r["pod"] == "shell")
        }));
        let records = log_records(
            &log,
            "metadata access would be dropped (dry run: let through)",
        );
        let shell = records.iter().find(|r| r["pod"] == "shell").unwrap();
        assert_eq!(shell["namespace"], "debug");
        assert_eq!(shell["host_network"], true);
        assert_eq!(shell["matched_by"], "cgroup");
        assert_eq!(shell["would_drop"], true);
        assert!(
            shell["cgroup"]
                .as_str()
                .is_some_and(|c| c.contains(&k.dbg_uid.replace('-', "_"))),
            "{shell}"
        );
        assert!(records.iter().all(|r| r["pod"] != "agent"), "{records:?}");
        let host = imdsguard_node::host::read_host(&Exec::here())
            .unwrap()
            .expect("the host table");
        assert!(host.get("would_drop").packets > 0, "{host:?}");
        assert!(
            host.pod(&k.dbg_uid).is_some_and(|p| p.packets > 0),
            "{host:?}"
        );

        // Nothing was blocked: no drop counted, logged, or posted as an Event (waited
        // past the time an enforcing agent takes to post one).
        let nft = |counter: &str| {
            agent.metric(&format!(
                r#"imdsguard_agent_nft_packets{{counter="{counter}"}}"#
            ))
        };
        assert_eq!(nft("blocked"), Some(0.0));
        assert_eq!(nft("spoofed"), Some(0.0));
        std::thread::sleep(Duration::from_secs(3));
        let metrics = agent.get("/metrics").1;
        assert!(
            !metrics.contains("imdsguard_agent_drops_total{"),
            "{metrics}"
        );
        assert!(
            log_records(&log, "metadata access dropped").is_empty(),
            "nothing was dropped"
        );
        assert_eq!(agent_events(&k.cp), Vec::<serde_json::Value>::new());
    });
}

#[test]
#[ignore = "needs netns"]
fn kubernetes_mode_takes_the_pods_from_the_api_and_posts_events() {
    let test = "kubernetes_mode_takes_the_pods_from_the_api_and_posts_events";
    isolated(test, || {
        let w = World::new(test);
        // A real kube-apiserver (with etcd) of this test's own, on the loopback of the
        // test's network namespace (the node's): the shared one of the test run lives in
        // the machine's namespace, which this one cannot reach.
        let cp = ControlPlane::dedicated(test);
        // The agent also watches MetadataAccessPolicy objects (none here): without the
        // CRD /readyz would say it is not installed.
        cp.install_imdsguard_crd();
        // node-a has the start-up taint, which this agent is told to leave.
        let node = serde_json::json!({
            "apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a"},
            "spec": {"taints": [
                {"key": "imdsguard.io/agent-not-ready", "value": "true", "effect": "NoSchedule"}
            ]}
        });
        cp.kubectl_ok(&["create", "-f", "-"], Some(&node.to_string()));
        create_api_pods(&cp, "node-a", false, &SANDBOX_API_PODS);
        // A pod of another node on an address of this one: never this node's.
        create_api_pods(&cp, "node-b", false, &[("elsewhere", "far", "10.244.0.12")]);
        let web_uid = api_pod_uid(&cp, "shop", "web");
        // No interface given: the agent finds each pod's by `ip route get` (the veths,
        // the bridge).
        let mut agent = AgentProc::start_with_env(
            &[
                "--mode",
                "block",
                "--kubernetes",
                "--node-name",
                "node-a",
                "--allow",
                "platform/allowed",
                "--check-interval",
                "1s",
                "--remove-taint=false",
            ],
            &[("KUBECONFIG", cp.kubeconfig().to_str().unwrap())],
        );
        let t = table();
        assert_eq!(t.allowed, [pair("azvallowed", [10, 244, 0, 10])]);
        let mut known = t.known.clone();
        known.sort();
        assert_eq!(
            known,
            [
                pair("azvallowed", [10, 244, 0, 10]),
                pair("azvweb", [10, 244, 0, 11]),
                pair("cbr0", [10, 244, 1, 10]),
            ]
        );
        assert!(agent.ready(), "{:?}", agent.get("/readyz"));

        // web's drops become one Warning Event on web, in the API.
        assert_eq!(w.reach("web"), Reach::Timeout);
        assert!(w.reach("allowed").connected());
        assert!(
            eventually(Duration::from_secs(10), || !api_events(&cp, "shop")
                .is_empty()),
            "no Event in the API"
        );
        let events = api_events(&cp, "shop");
        assert_eq!(events.len(), 1, "{events:?}");
        let e = &events[0];
        assert_eq!(e["type"], "Warning");
        assert_eq!(e["reason"], "MetadataAccessBlocked");
        assert_eq!(e["reportingController"], "imdsguard-agent");
        assert_eq!(e["reportingInstance"], "node-a");
        assert_eq!(e["regarding"]["kind"], "Pod");
        assert_eq!(e["regarding"]["name"], "web");
        assert_eq!(e["regarding"]["namespace"], "shop");
        assert_eq!(e["regarding"]["uid"], web_uid.as_str());
        assert!(e["note"].as_str().unwrap().contains("Azure IMDS"), "{e}");
        let shown = cp.kubectl_ok(&["events", "-n", "shop", "--for", "pod/web"], None);
        assert!(shown.contains("MetadataAccessBlocked"), "{shown}");
        // web tries again within the minute: dropped and logged, but no second write
        // to the API (the per-pod cap).
        assert_eq!(w.reach("web"), Reach::Timeout);
        std::thread::sleep(Duration::from_secs(3));
        let events = api_events(&cp, "shop");
        assert_eq!(events.len(), 1, "{events:?}");
        assert!(events[0]["series"].is_null(), "{events:?}");

        // The watch: web goes (grace period 0: no kubelet finishes a graceful delete),
        // the set elements follow.
        cp.kubectl_ok(
            &[
                "delete",
                "pod",
                "web",
                "-n",
                "shop",
                "--grace-period=0",
                "--force",
            ],
            None,
        );
        assert!(eventually(Duration::from_secs(10), || {
            !table().known.contains(&pair("azvweb", [10, 244, 0, 11]))
        }));
        assert_eq!(table().known.len(), 2);

        // --remove-taint=false: the taint stays, and /readyz does not speak of it.
        assert!(node_taints(&cp, "node-a").contains(&STARTUP_TAINT.to_owned()));
        let (status, body) = agent.get("/readyz");
        assert_eq!(status, 200, "{body}");
        assert!(!body.contains("taint"), "{body}");
        assert_eq!(
            agent.metric("imdsguard_agent_startup_taint_handoff"),
            Some(0.0)
        );

        agent.signal(rustix::process::Signal::TERM);
        assert!(agent.wait(Duration::from_secs(10)).success());
    });
}

/// The handle of `chain`'s rule whose comment is `comment`, as listed now.
fn rule_handle(chain: &str, comment: &str) -> u64 {
    let t = table();
    let c = t.chain(chain).expect("the chain");
    let i = c
        .rules
        .iter()
        .position(|r| r.comment.as_deref() == Some(comment))
        .expect("the rule");
    c.rule_handles[i]
}

fn nft(args: &[&str]) {
    Exec::here()
        .run("nft", args.iter().copied(), None)
        .unwrap_or_else(|e| panic!("nft {}: {e}", args.join(" ")));
}

#[test]
#[ignore = "needs netns"]
fn the_agent_repairs_tampered_rules_and_set_elements() {
    let test = "the_agent_repairs_tampered_rules_and_set_elements";
    isolated(test, || {
        let w = World::new(test);
        let agent = w.agent(
            &[
                "--mode",
                "block",
                "--allow",
                "platform/allowed",
                "--check-interval",
                "1s",
            ],
            PODS,
            None,
        );
        assert!(agent.ready(), "{:?}", agent.get("/readyz"));
        let built = table();
        assert_eq!(w.reach("web"), Reach::Timeout);
        let repairs = |kind: &str| {
            agent
                .metric(&format!(
                    r#"imdsguard_agent_repairs_total{{difference="{kind}"}}"#
                ))
                .unwrap_or(0.0)
        };
        // Not ready while tampered (unless the agent was quicker), repaired within a
        // few check intervals, and counted.
        let repaired = |kind: &str, before: f64, what: &str| {
            let (status, body) = agent.get("/readyz");
            assert!(
                status == 503 || repairs(kind) > before,
                "{what}: readyz {status} {body}"
            );
            assert!(
                eventually(Duration::from_secs(10), || repairs(kind) > before
                    && agent.ready()),
                "{what}: not repaired\n{}",
                agent.get("/metrics").1
            );
            assert_eq!(
                agent.metric("imdsguard_agent_enforcing"),
                Some(1.0),
                "{what}"
            );
            let now = table();
            assert_eq!(now.differences(&built), [], "{what}: the table as built");
        };

        // The verdict flipped from drop to accept, its comment (the mode marker) kept:
        // same chains, same number of rules, same mode.
        let handle = rule_handle("guard_v4", "imdsguard mode=block");
        nft(&[
            "replace",
            "rule",
            "inet",
            "imdsguard",
            "guard_v4",
            "handle",
            &handle.to_string(),
            "counter",
            "name",
            "blocked",
            "accept",
            "comment",
            "\"imdsguard mode=block\"",
        ]);
        repaired("rule", 0.0, "verdict flipped");
        assert_eq!(w.reach("web"), Reach::Timeout, "dropped again");

        // An element added to the allow set by hand.
        let before = repairs("elements");
        nft(&[
            "add",
            "element",
            "inet",
            "imdsguard",
            "allow_v4",
            "{ \"azvweb\" . 10.244.0.11 }",
        ]);
        repaired("elements", before, "allow element added");
        assert_eq!(table().allowed, [pair("azvallowed", [10, 244, 0, 10])]);
        assert_eq!(w.reach("web"), Reach::Timeout, "not allowlisted");

        // The allowlisted pod's element deleted by hand: put back.
        let before = repairs("elements");
        nft(&[
            "delete",
            "element",
            "inet",
            "imdsguard",
            "allow_v4",
            "{ \"azvallowed\" . 10.244.0.10 }",
        ]);
        repaired("elements", before, "allow element deleted");
        assert!(w.reach("allowed").connected(), "allowlisted again");

        // A known pod's element deleted: put back too.
        let before = repairs("elements");
        nft(&[
            "delete",
            "element",
            "inet",
            "imdsguard",
            "known_v4",
            "{ \"azvweb\" . 10.244.0.11 }",
        ]);
        repaired("elements", before, "known element deleted");
        assert!(table().known.contains(&pair("azvweb", [10, 244, 0, 11])));
        assert!(agent.metric("imdsguard_agent_restores_total").unwrap() >= 4.0);
    });
}

/// Puts a FIFO where `path` was, the way a writer replaces a file (made beside it, then
/// renamed over it).
fn replace_with_fifo(path: &std::path::Path) {
    let tmp = path.with_extension("fifo-tmp");
    let status = Command::new("mkfifo")
        .arg(&tmp)
        .status()
        .expect("mkfifo runs");
    assert!(status.success());
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
#[ignore = "needs netns"]
fn a_fifo_or_an_empty_file_never_stalls_the_table_check_or_loosens_anything() {
    let test = "a_fifo_or_an_empty_file_never_stalls_the_table_check_or_loosens_anything";
    isolated(test, || {
        let w = World::new(test);
        let proxy = proxy_address();
        let mut agent = w.agent(
            &[
                "--mode",
                "proxy",
                "--proxy-address",
                &proxy,
                "--check-interval",
                "500ms",
            ],
            PODS,
            Some(RULES),
        );
        let (pods, rules) = (w.dir.join("pods.yaml"), w.dir.join("rules.yaml"));
        let (status, body) = agent.get("/readyz");
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("2 access rules"), "{body}");
        let location = "/metadata/instance/compute/location?api-version=2021-02-01&format=text";
        assert_eq!(w.imds("web", location).map(|r| r.0), Some(200));
        let errors = |file: &str| {
            agent
                .metric(&format!(
                    r#"imdsguard_proxy_reloads_total{{file="{file}",result="error"}}"#
                ))
                .unwrap_or(0.0)
        };

        // The pods file becomes a FIFO nobody writes to; SIGHUP forces a read of it.
        replace_with_fifo(&pods);
        agent.signal(rustix::process::Signal::HUP);
        assert!(
            eventually(Duration::from_secs(5), || errors("pods") >= 1.0),
            "the FIFO is refused and counted: {}",
            agent.get("/metrics").1
        );
        std::thread::sleep(Duration::from_millis(1200));
        assert_eq!(agent.get("/healthz").0, 200);
        // The table check goes on: a table deleted by hand comes back within a couple
        // of check intervals while the pods path is still a FIFO.
        Exec::here()
            .run("nft", ["delete", "table", "inet", "imdsguard"], None)
            .unwrap();
        assert!(
            eventually(Duration::from_secs(3), || {
                imdsguard_node::status(&Exec::here())
                    .is_ok_and(|s| s.installed && s.enforcing && s.mode == Some(Mode::Proxy))
            }),
            "the table was not put back while the pods file is a FIFO"
        );
        assert!(eventually(Duration::from_secs(3), || agent.ready()));
        // The pods in force stay: web is still known, the spoofer still dropped.
        assert!(table().known.contains(&pair("azvweb", [10, 244, 0, 11])));
        assert_eq!(w.imds("web", location).map(|r| r.0), Some(200));
        assert_eq!(w.reach("spoofer"), Reach::Timeout);

        // The rules file emptied (comments only): refused, the rules stay.
        let before = errors("rules");
        w.file("rules.yaml", "# rules: moved elsewhere\n");
        assert!(
            eventually(Duration::from_secs(5), || errors("rules") > before),
            "{}",
            agent.get("/metrics").1
        );
        assert_eq!(w.imds("web", location).map(|r| r.0), Some(200));
        let (status, body) = agent.get("/readyz");
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("2 access rules"), "{body}");

        // A regular file renamed over the FIFO is picked up: web leaves.
        w.file(
            "pods.yaml",
            "- {ip: 10.244.0.10, namespace: platform, name: allowed, interface: azvallowed}\n",
        );
        assert!(
            eventually(Duration::from_secs(5), || {
                !table().known.contains(&pair("azvweb", [10, 244, 0, 11]))
            }),
            "{:?}",
            table().known
        );
        // An emptied pods file is refused: `allowed` stays known.
        w.file("pods.yaml", "");
        std::thread::sleep(Duration::from_millis(1500));
        assert!(
            table()
                .known
                .contains(&pair("azvallowed", [10, 244, 0, 10]))
        );

        // SIGTERM is not held up by anything the files did.
        replace_with_fifo(&pods);
        replace_with_fifo(&rules);
        agent.signal(rustix::process::Signal::HUP);
        std::thread::sleep(Duration::from_millis(700));
        agent.signal(rustix::process::Signal::TERM);
        assert!(agent.wait(Duration::from_secs(10)).success());
    });
}

/// The node's taints as `key=value:effect`.
fn node_taints(cp: &ControlPlane, node: &str) -> Vec<String> {
    let out = cp.kubectl_ok(&["get", "node", node, "-o", "json"], None);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["spec"]["taints"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|t| {
            format!(
                "{}={}:{}",
                t["key"].as_str().unwrap_or_default(),
                t["value"].as_str().unwrap_or_default(),
                t["effect"].as_str().unwrap_or_default()
            )
        })
        .collect()
}

const STARTUP_TAINT: &str = "imdsguard.io/agent-not-ready=true:NoSchedule";

/// A MetadataAccessPolicy whose one rule selects the pods labelled `imds: "yes"` in
/// every namespace.
const LABELLED: &str = "apiVersion: imdsguard.io/v1alpha1
kind: MetadataAccessPolicy
metadata: {name: labelled}
spec:
  rules:
  - name: labelled
    subjects: [{namespace: '*', podSelector: {matchLabels: {imds: 'yes'}}}]
    paths: [/metadata/instance/compute/location]
";

#[test]
#[ignore = "needs netns"]
fn kubernetes_mode_follows_metadata_access_policies_and_hands_off_the_taint() {
    let test = "kubernetes_mode_follows_metadata_access_policies_and_hands_off_the_taint";
    isolated(test, || {
        let w = World::new(test);
        let cp = ControlPlane::dedicated(test);
        cp.install_imdsguard_crd();
        // node-a registered with the start-up taint (and a taint of the pool's own);
        // node-b too: only node-a's agent runs here.
        for node in ["node-a", "node-b"] {
            let n = serde_json::json!({
                "apiVersion": "v1", "kind": "Node", "metadata": {"name": node},
                "spec": {"taints": [
                    {"key": "imdsguard.io/agent-not-ready", "value": "true", "effect": "NoSchedule"},
                    {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}
                ]}
            });
            cp.kubectl_ok(&["create", "-f", "-"], Some(&n.to_string()));
        }
        create_api_pods(&cp, "node-a", false, &SANDBOX_API_PODS);
        // A policy already there at start, selecting `allowed` by namespace.
        cp.apply(
            "apiVersion: imdsguard.io/v1alpha1
kind: MetadataAccessPolicy
metadata: {name: platform}
spec:
  rules:
  - name: all
    subjects: [{namespace: platform}]
    paths: [/metadata/instance]
",
        );
        // A long check interval: every change below is applied by the watches' events,
        // not by the periodic round.
        let agent = AgentProc::start(&[
            "--mode",
            "block",
            "--kubernetes",
            "--node-name",
            "node-a",
            "--kubeconfig",
            cp.kubeconfig().to_str().unwrap(),
            "--check-interval",
            "10m",
        ]);
        // The table went in with the policy's pod allowlisted, then the taint went.
        assert_eq!(table().allowed, [pair("azvallowed", [10, 244, 0, 10])]);
        assert!(
            eventually(Duration::from_secs(10), || !node_taints(&cp, "node-a")
                .contains(&STARTUP_TAINT.to_owned())),
            "the start-up taint is still on node-a: {:?}",
            node_taints(&cp, "node-a")
        );
        let taints = node_taints(&cp, "node-a");
        assert!(
            taints.contains(&"dedicated=gpu:NoSchedule".to_owned()),
            "{taints:?}"
        );
        let other = node_taints(&cp, "node-b");
        assert!(
            other.contains(&STARTUP_TAINT.to_owned()),
            "node-b is not this agent's: {other:?}"
        );
        assert!(eventually(Duration::from_secs(5), || {
            agent.metric("imdsguard_agent_startup_taint_handoff") == Some(1.0)
        }));
        let (status, body) = agent.get("/readyz");
        assert_eq!(status, 200, "{body}");
        assert!(
            body.contains("1 MetadataAccessPolicy objects (0 refused), 1 rules"),
            "{body}"
        );
        assert!(
            body.contains("node taint imdsguard.io/agent-not-ready: removed"),
            "{body}"
        );
        assert_eq!(agent.metric("imdsguard_agent_policies_synced"), Some(1.0));
        assert!(w.reach("allowed").connected());
        assert_eq!(w.reach("web"), Reach::Timeout);

        // A policy selecting labelled pods: none yet, so nothing more is allowlisted.
        cp.apply(LABELLED);
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(table().allowed, [pair("azvallowed", [10, 244, 0, 10])]);
        // web gains the label: allowlisted within 1 s.
        cp.kubectl_ok(&["label", "pod", "web", "-n", "shop", "imds=yes"], None);
        let web = pair("azvweb", [10, 244, 0, 11]);
        assert!(
            eventually(Duration::from_secs(1), || table().allowed.contains(&web)),
            "web labelled: not allowlisted within 1 s: {:?}",
            table().allowed
        );
        assert!(w.reach("web").connected(), "web reaches IMDS");
        assert_eq!(w.reach("batch"), Reach::Timeout);

        // The policy deleted: web is blocked again within 1 s; `allowed` stays.
        cp.kubectl_ok(&["delete", "metadataaccesspolicy", "labelled"], None);
        assert!(
            eventually(Duration::from_secs(1), || !table().allowed.contains(&web)),
            "policy deleted: web still allowlisted after 1 s"
        );
        assert_eq!(w.reach("web"), Reach::Timeout);
        assert!(w.reach("allowed").connected());

        // Created again (web still labelled): allowlisted within 1 s.
        cp.apply(LABELLED);
        assert!(
            eventually(Duration::from_secs(1), || table().allowed.contains(&web)),
            "policy created: web not allowlisted within 1 s"
        );
        cp.kubectl_ok(&["delete", "metadataaccesspolicy", "labelled"], None);
        assert!(eventually(Duration::from_secs(1), || !table()
            .allowed
            .contains(&web)));

        // An object the core refuses (a path that is not IMDS's) selecting every pod:
        // logged, counted, and it allowlists nothing.
        cp.apply(
            "apiVersion: imdsguard.io/v1alpha1
kind: MetadataAccessPolicy
metadata: {name: careless}
spec:
  rules:
  - name: everyone
    subjects: [{namespace: '*'}]
    paths: [/not/imds]
",
        );
        // Both metrics are written by one call, the gauge first: wait for the two.
        assert!(
            eventually(Duration::from_secs(2), || {
                agent.metric(r#"imdsguard_agent_policy_objects{state="refused"}"#) == Some(1.0)
                    && agent.metric("imdsguard_agent_policy_refusals_total") == Some(1.0)
            }),
            "{}",
            agent.get("/metrics").1
        );
        assert_eq!(table().allowed, [pair("azvallowed", [10, 244, 0, 10])]);
        assert_eq!(w.reach("web"), Reach::Timeout);
        assert_eq!(w.reach("batch"), Reach::Timeout);
    });
}

#[test]
#[ignore = "needs netns"]
fn kubernetes_proxy_mode_takes_its_rules_from_metadata_access_policies() {
    let test = "kubernetes_proxy_mode_takes_its_rules_from_metadata_access_policies";
    isolated(test, || {
        let w = World::new(test);
        let cp = ControlPlane::dedicated(test);
        cp.install_imdsguard_crd();
        create_api_pods(&cp, "node-a", false, &SANDBOX_API_PODS[..2]);
        let proxy = proxy_address();
        let agent = AgentProc::start(&[
            "--mode",
            "proxy",
            "--proxy-address",
            &proxy,
            "--kubernetes",
            "--node-name",
            "node-a",
            "--kubeconfig",
            cp.kubeconfig().to_str().unwrap(),
            "--allow-empty-rules",
            "--check-interval",
            "10m",
        ]);
        // No object yet: the proxy denies everything (ready: empty rules were allowed).
        let (status, body) = agent.get("/readyz");
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("0 access rules"), "{body}");
        let location = "/metadata/instance/compute/location?api-version=2021-02-01&format=text";
        assert_eq!(w.imds("web", location).map(|r| r.0), Some(403));

        // An object: its rule is the proxy's within 1 s.
        cp.apply(
            "apiVersion: imdsguard.io/v1alpha1
kind: MetadataAccessPolicy
metadata: {name: shop}
spec:
  rules:
  - name: location
    subjects: [{namespace: shop}]
    paths: [/metadata/instance/compute/location]
",
        );
        assert!(
            eventually(Duration::from_secs(1), || agent
                .get("/readyz")
                .1
                .contains("1 access rules")),
            "{:?}",
            agent.get("/readyz")
        );
        let (status, body) = w.imds("web", location).expect("web reaches the proxy");
        assert_eq!(status, 200, "{body}");
        // Not for the instance document, nor for another namespace's pod; and no pod is
        // allowlisted past the proxy in proxy mode.
        let instance = "/metadata/instance?api-version=2021-02-01";
        assert_eq!(w.imds("web", instance).map(|r| r.0), Some(403));
        assert_eq!(w.imds("allowed", location).map(|r| r.0), Some(403));
        assert!(table().allowed.is_empty());

        // Deleted: denied again within 1 s.
        cp.kubectl_ok(&["delete", "metadataaccesspolicy", "shop"], None);
        assert!(eventually(Duration::from_secs(1), || agent
            .get("/readyz")
            .1
            .contains("0 access rules")));
        assert_eq!(w.imds("web", location).map(|r| r.0), Some(403));
    });
}
