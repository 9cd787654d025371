//! `imdsguard lab --kubernetes`: the test control plane inside the lab's node namespace,
//! the lab playing the kubelet (a Node object for the node, Pod objects for its pods with
//! their status), then a `MetadataAccessPolicy` that expects `platform/allowed`, kept by
//! `imdsguard controller` (the generated NetworkPolicies) and enforced by `imdsguard
//! agent run --kubernetes` (the node's nft table); the generated policies are read back
//! from the API server and audited with the core.
//!
//! Everything runs inside the lab's node namespace (the inner run's own): the API server
//! listens on that namespace's loopback, which the agent reaches as a node reaches its
//! API server. The control plane is stopped when the lab ends: on drop, and otherwise by
//! the script's watchdog (`IMDSGUARD_CP_OWNER_PID`, this process); the agent and the
//! controller are children with a parent-death signal (`setpriv --pdeathsig TERM`), and
//! the folder (the control plane's state, the agent's and controller's logs) goes with
//! the control plane.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use imdsguard_core::access::AccessRules;
use imdsguard_core::audit::{AuditOptions, audit};
use imdsguard_core::cluster::Cluster;
use imdsguard_core::engine::{Engine, EngineSettings};
use imdsguard_core::nft::SourcePair;
use imdsguard_core::target::Cloud;
use imdsguard_node::sandbox::{NODE_ADDR, Sandbox};
use imdsguard_node::{Exec, read_table};
use serde::Serialize;

use crate::LabError;

/// The lab node's name in the API.
pub const NODE_NAME: &str = "lab-node";

/// The `MetadataAccessPolicy` the lab applies.
pub const POLICY_NAME: &str = "lab";

/// The CRD, as committed (`imdsguard crd` prints the same).
const CRD_YAML: &str =
    include_str!("../../../deploy/crds/metadataaccesspolicies.imdsguard.io.yaml");

/// The rules of the lab's `MetadataAccessPolicy` under Azure: the `platform`
/// namespace's `allowed` pod may read the instance document and get tokens; nobody else
/// is expected.
pub(crate) const RULES: &str = "rules:
  - name: platform-allowed
    description: the platform pod may read the instance document and get any token
    subjects:
      - namespace: platform
        podSelector:
          matchLabels: {app: allowed}
    paths: [/metadata/instance]
    token:
      resources: ['*']
      identities: [{any: true}]
";

/// The same under AWS (`spec.cloud: aws`): `allowed` may get the IMDSv2 session token
/// (`PUT`, a grant of its own) and its role's credentials. No `token:` (Azure's: the
/// CRD's CEL rules refuse it under aws).
pub(crate) const AWS_RULES: &str = "cloud: aws
rules:
  - name: platform-allowed
    description: the platform pod may read its role's credentials
    subjects:
      - namespace: platform
        podSelector:
          matchLabels: {app: allowed}
    paths:
      - /latest/meta-data/iam/security-credentials
      - /latest/meta-data/iam/security-credentials/*
  - name: platform-allowed-token
    description: the platform pod may get an IMDSv2 session token
    subjects:
      - namespace: platform
        podSelector:
          matchLabels: {app: allowed}
    methods: [PUT]
    paths: [/latest/api/token]
";

/// The same under GCP (`spec.cloud: gcp`): `allowed` may get the default service
/// account's access token.
pub(crate) const GCP_RULES: &str = "cloud: gcp
rules:
  - name: platform-allowed
    description: the platform pod may get the default service account's access token
    subjects:
      - namespace: platform
        podSelector:
          matchLabels: {app: allowed}
    paths: [/computeMetadata/v1/instance/service-accounts/default/token]
";

/// The rules of the lab's `MetadataAccessPolicy` for `cloud` (its `spec`).
pub(crate) fn rules(cloud: Cloud) -> &'static str {
    match cloud {
        Cloud::Azure => RULES,
        Cloud::Aws => AWS_RULES,
        Cloud::Gcp => GCP_RULES,
    }
}

/// The API namespace of each lab pod that has a Pod object (the spoofer has none: it
/// borrows `allowed`'s address and is no pod the node hosts at it).
pub(crate) fn api_namespace(pod: &str) -> Option<&'static str> {
    match pod {
        "allowed" => Some("platform"),
        "web" => Some("shop"),
        "batch" => Some("jobs"),
        _ => None,
    }
}

/// Where `imdsguard lab --kubernetes` finds what it runs.
#[derive(Debug, Clone)]
pub struct KubernetesConfig {
    /// `scripts/control-plane.sh` (builds and starts etcd + kube-apiserver).
    pub control_plane_script: PathBuf,
    /// The `imdsguard` program the agent and the controller are run from.
    pub imdsguard: PathBuf,
    /// Also write the read-back objects (namespaces, pods, NetworkPolicies) there, one
    /// YAML file per kind, for other analyzers.
    pub dump_policies: Option<PathBuf>,
}

/// What the Kubernetes run found besides the rows.
#[derive(Debug, Clone, Serialize)]
pub struct KubernetesResult {
    /// The API server (on the node namespace's loopback).
    pub api_server: String,
    /// The Node object the lab registered.
    pub node: String,
    /// The Pod objects the lab registered, `namespace/name`.
    pub pods: Vec<String>,
    /// The `MetadataAccessPolicy` applied, and its rules.
    pub policy: String,
    /// The NetworkPolicies read back from the API server, `namespace/name`.
    pub network_policies: Vec<String>,
    /// What the core audit of the read-back objects says, per target.
    pub audit: Vec<AuditTarget>,
    /// Where the read-back objects were written (`--dump-policies`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dump: Option<String>,
    /// The MetadataAccessPolicy's status as the controller wrote it (conditions), when any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_status: Option<serde_json::Value>,
}

impl KubernetesResult {
    /// The API server, the objects and the audit of the read-back policies, in words.
    pub fn to_text(&self) -> String {
        let mut out = format!(
            "Kubernetes: API server {} (the lab's node namespace); Node {}; Pods {}; {}\n",
            self.api_server,
            self.node,
            self.pods.join(", "),
            self.policy
        );
        out += &format!(
            "NetworkPolicies read back ({}): {}\n",
            self.network_policies.len(),
            self.network_policies.join(", ")
        );
        out += "audit of the read-back objects (NetworkPolicy semantics; no engine enforces them here, the agent's nft table does):\n";
        for t in &self.audit {
            out += &format!(
                "  {}: reachable by {}\n",
                t.target,
                if t.reachable.is_empty() {
                    "no pod".to_owned()
                } else {
                    t.reachable.join(", ")
                }
            );
        }
        if let Some(d) = &self.dump {
            out += &format!("read-back objects written to {d}\n");
        }
        out
    }
}

/// The audit's answer for one target.
#[derive(Debug, Clone, Serialize)]
pub struct AuditTarget {
    /// `IP:PORT/PROTO`.
    pub target: String,
    /// The workloads (`namespace/name[Kind]`) the read-back policies let reach it.
    pub reachable: Vec<String>,
    /// The workloads the rules expect to reach it (IMDS only: the rules speak of IMDS).
    pub expected: Vec<String>,
}

/// A child process, ended (SIGTERM, then SIGKILL) when dropped.
struct Proc {
    what: &'static str,
    child: Child,
    log: PathBuf,
}

impl Proc {
    /// Starts `program args` with `envs`, its standard error into `log`, under `setpriv
    /// --pdeathsig TERM`, so that it ends with the lab however the lab ends (the lab
    /// exits on SIGINT and SIGTERM without unwinding).
    fn spawn(
        what: &'static str,
        program: &Path,
        args: &[String],
        envs: &[(&str, &Path)],
        log: PathBuf,
    ) -> Result<Proc, LabError> {
        let err = std::fs::File::create(&log).map_err(|e| LabError::Io {
            what: format!("creating {}", log.display()),
            source: e,
        })?;
        let mut cmd = Command::new("setpriv");
        cmd.args(["--pdeathsig", "TERM", "--"])
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let child = cmd.spawn().map_err(|e| LabError::Io {
            what: format!("starting {what} ({})", program.display()),
            source: e,
        })?;
        Ok(Proc { what, child, log })
    }

    /// The last lines of its log, for an error message.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// An error naming it, its exit status when it ended, and its log's end.
    fn failed(&mut self, why: &str) -> LabError {
        let status = match self.child.try_wait() {
            Ok(Some(s)) => format!(" ({} exited: {s})", self.what),
            _ => String::new(),
        };
        LabError::Lab(format!(
            "{}: {why}{status}; its log ends:\n{}",
            self.what,
            self.log_tail()
        ))
    }

    /// Reads its standard output until a line starting with `marker` (within `within`),
    /// then keeps draining it on a thread.
    fn wait_for_line(&mut self, marker: &'static str, within: Duration) -> Result<(), LabError> {
        let Some(out) = self.child.stdout.take() else {
            return Ok(());
        };
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut seen = false;
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if !seen && line.starts_with(marker) {
                    seen = true;
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(within)
            .map_err(|_| self.failed(&format!("did not print `{marker}…` within {within:?}")))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let pid = rustix::process::Pid::from_child(&self.child);
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// The lab's control plane, its objects and the imdsguard processes; everything stops
/// on drop.
pub(crate) struct KubeLab {
    config: KubernetesConfig,
    /// The cloud the node stands in: the policy's `spec.cloud`, the controller's and the
    /// agent's `--cloud`, the targets of the read-back audit.
    cloud: Cloud,
    /// The lab's own folder: the control plane's state folder, also holding the agent's
    /// and the controller's logs. `control-plane.sh down` removes it whole (`up` made it
    /// with an owner pid), also when its watchdog runs `down` after the lab is gone.
    dir: PathBuf,
    kubeconfig: PathBuf,
    kubectl: PathBuf,
    api_server: String,
    pods: Vec<String>,
    // Dropped before the control plane goes down (fields drop in order).
    agent: Option<Proc>,
    controller: Option<Proc>,
}

/// Polls `check` every 100 ms for up to `within`.
fn eventually<T>(within: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn run_script(script: &Path, args: &[&str], owner: bool) -> Result<String, LabError> {
    let mut cmd = Command::new("bash");
    cmd.arg(script).args(args).stdin(Stdio::null());
    if owner {
        // The script's watchdog stops the control plane when this process is gone,
        // however it ends.
        cmd.env("IMDSGUARD_CP_OWNER_PID", std::process::id().to_string());
    }
    let out = cmd.output().map_err(|e| LabError::Io {
        what: format!("running {}", script.display()),
        source: e,
    })?;
    if !out.status.success() {
        return Err(LabError::Lab(format!(
            "`{} {}` failed ({}):\n{}",
            script.display(),
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl KubeLab {
    /// Starts the control plane in this (the node's) namespace and registers the node
    /// and its pods, with their status, as the kubelet would.
    pub(crate) fn start(
        config: &KubernetesConfig,
        sandbox: &Sandbox,
        cloud: Cloud,
    ) -> Result<KubeLab, LabError> {
        let script = &config.control_plane_script;
        let missing: Vec<&str> = ["setpriv", "bash"]
            .into_iter()
            .filter(|t| !imdsguard_node::which(t))
            .collect();
        if !missing.is_empty() {
            return Err(LabError::Missing(format!(
                "{} with --kubernetes (apt-get install util-linux bash)",
                missing.join(", ")
            )));
        }
        if !script.is_file() {
            return Err(LabError::Missing(format!(
                "the test control plane's script {} (run the lab from the repository's root, or pass --control-plane-script PATH / IMDSGUARD_CONTROL_PLANE_SCRIPT)",
                script.display()
            )));
        }
        let dir = std::env::temp_dir().join(format!("imdsguard-lab-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| LabError::Io {
            what: format!("creating {}", dir.display()),
            source: e,
        })?;
        // `build` finds the cached binaries (or builds them: minutes, needs Go).
        let bins = run_script(script, &["build"], false).map_err(|e| {
            LabError::Missing(format!(
                "the test control plane's binaries (build them once with `{} build`; it needs Go): {e}",
                script.display()
            ))
        })?;
        let kubectl = PathBuf::from(bins.trim()).join("kubectl");
        let mut lab = KubeLab {
            config: config.clone(),
            cloud,
            dir,
            kubeconfig: PathBuf::new(),
            kubectl,
            api_server: String::new(),
            pods: Vec::new(),
            agent: None,
            controller: None,
        };
        let up = run_script(script, &["up", &lab.dir.display().to_string()], true)?;
        lab.kubeconfig = up
            .lines()
            .find_map(|l| l.strip_prefix("export KUBECONFIG="))
            .map(|p| PathBuf::from(p.trim()))
            .ok_or_else(|| {
                LabError::Lab(format!(
                    "control-plane.sh up printed no KUBECONFIG line: {up}"
                ))
            })?;
        let kc = std::fs::read_to_string(&lab.kubeconfig).unwrap_or_default();
        lab.api_server = kc
            .lines()
            .find_map(|l| l.trim().strip_prefix("server:"))
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        lab.register(sandbox)?;
        Ok(lab)
    }

    /// Runs kubectl against the lab's API server; its standard output.
    pub(crate) fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Result<String, LabError> {
        let mut child = Command::new(&self.kubectl)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| LabError::Io {
                what: format!("running {}", self.kubectl.display()),
                source: e,
            })?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            let _ = pipe.write_all(input.as_bytes());
        }
        let out = child.wait_with_output().map_err(|e| LabError::Io {
            what: "waiting for kubectl".into(),
            source: e,
        })?;
        if !out.status.success() {
            return Err(LabError::Lab(format!(
                "kubectl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim_end()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn apply(&self, yaml: &str) -> Result<(), LabError> {
        self.kubectl(
            &[
                "apply",
                "--server-side",
                "--field-manager=imdsguard-lab",
                "-f",
                "-",
            ],
            Some(yaml),
        )
        .map(drop)
    }

    /// The kubelet's part: the Node (Ready, its InternalIP), then each pod the node hosts
    /// (not the spoofer) as a Pod bound to it, labelled `app: <name>`, with its status
    /// (Running, `podIP`/`podIPs`: both addresses of a dual-stack pod). The agent finds each pod's interface by `ip route
    /// get`, as on a node whose CNI writes no annotation.
    fn register(&mut self, sandbox: &Sandbox) -> Result<(), LabError> {
        self.apply(&format!(
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: {NODE_NAME}\n  labels: {{kubernetes.io/hostname: {NODE_NAME}, kubernetes.io/os: linux}}\n"
        ))?;
        let now = "2026-01-01T00:00:00Z";
        self.kubectl(
            &[
                "patch", "node", NODE_NAME, "--subresource=status", "--type=merge", "-p",
                &format!(
                    r#"{{"status":{{"addresses":[{{"type":"InternalIP","address":"{NODE_ADDR}"}},{{"type":"Hostname","address":"{NODE_NAME}"}}],"conditions":[{{"type":"Ready","status":"True","reason":"KubeletReady","message":"the lab plays the kubelet","lastHeartbeatTime":"{now}","lastTransitionTime":"{now}"}}]}}}}"#
                ),
            ],
            None,
        )?;
        let mut manifests = String::new();
        let mut namespaces = BTreeSet::new();
        let mut pods = Vec::new();
        for pod in sandbox.pods() {
            let Some(ns) = api_namespace(pod.name()) else {
                continue;
            };
            namespaces.insert(ns);
            pods.push((ns, pod.name().to_owned(), pod.spec().addrs()));
        }
        for ns in &namespaces {
            manifests +=
                &format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n---\n");
        }
        for (ns, name, _) in &pods {
            manifests += &format!(
                "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels: {{app: {name}}}\nspec:\n  nodeName: {NODE_NAME}\n  containers: [{{name: main, image: registry.invalid/lab/{name}:1}}]\n---\n"
            );
        }
        self.apply(&manifests)?;
        for (ns, name, addrs) in &pods {
            // `podIP` is the first of `podIPs` (IPv4 first, as the API server requires
            // of a dual-stack pod: one address per family).
            let addr = addrs[0];
            let ips: Vec<String> = addrs.iter().map(|a| format!(r#"{{"ip":"{a}"}}"#)).collect();
            let ips = ips.join(",");
            self.kubectl(
                &[
                    "patch", "pod", name, "-n", ns, "--subresource=status", "--type=merge", "-p",
                    &format!(
                        r#"{{"status":{{"phase":"Running","hostIP":"{NODE_ADDR}","podIP":"{addr}","podIPs":[{ips}],"conditions":[{{"type":"Ready","status":"True"}}]}}}}"#
                    ),
                ],
                None,
            )?;
            self.pods.push(format!("{ns}/{name}"));
        }
        Ok(())
    }

    /// Applies the CRD and the lab's `MetadataAccessPolicy`, starts the controller and the
    /// agent (block mode, `--kubernetes`), and waits until the generated policies are in
    /// every lab namespace and the agent's allow set holds exactly `allowed`'s pairs (one
    /// per family: AWS and GCP pods are dual-stack).
    /// Returns the phase's description.
    pub(crate) fn protect(&mut self, allowed: &[SourcePair]) -> Result<String, LabError> {
        self.apply(CRD_YAML)?;
        // Polled rather than `kubectl wait --for=condition=Established`: a CRD created a
        // moment ago may have no status conditions yet, which kubectl wait reports as an
        // error instead of waiting.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let established = self.kubectl(
                &[
                    "get",
                    "crd",
                    "metadataaccesspolicies.imdsguard.io",
                    "-o",
                    "jsonpath={.status.conditions[?(@.type==\"Established\")].status}",
                ],
                None,
            );
            match established {
                Ok(status) if status.trim() == "True" => break,
                Err(e) if Instant::now() >= deadline => return Err(e),
                _ if Instant::now() >= deadline => {
                    return Err(LabError::Lab(
                        "the MetadataAccessPolicy CRD is not Established after 30 s".into(),
                    ));
                }
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        self.apply(&policy_yaml(self.cloud))?;
        let kubeconfig = self.kubeconfig.clone();
        let envs = [("KUBECONFIG", kubeconfig.as_path())];
        let mut controller = Proc::spawn(
            "imdsguard controller",
            &self.config.imdsguard,
            &controller_args(self.cloud),
            &envs,
            self.dir.join("controller.log"),
        )?;
        // Its standard output is not read: keep it from filling a pipe.
        if let Some(out) = controller.child.stdout.take() {
            std::thread::spawn(move || {
                std::io::copy(&mut BufReader::new(out), &mut std::io::sink())
            });
        }
        self.controller = Some(controller);
        let mut agent = Proc::spawn(
            "imdsguard agent",
            &self.config.imdsguard,
            &agent_args(self.cloud),
            &envs,
            self.dir.join("agent.log"),
        )?;
        agent.wait_for_line("enforcing ", Duration::from_secs(30))?;
        self.agent = Some(agent);

        // The agent picks the object up: exactly `allowed`'s pairs allowlisted (both
        // families for a dual-stack pod, from its `status.podIPs`).
        let want: BTreeSet<SourcePair> = allowed.iter().cloned().collect();
        let exec = Exec::here();
        let mut last = None;
        let ok = eventually(Duration::from_secs(30), || {
            let table = read_table(&exec).ok().flatten()?;
            let got: BTreeSet<SourcePair> = table.allowed.iter().cloned().collect();
            let done = got == want;
            last = Some(got);
            done.then_some(())
        });
        if ok.is_none() {
            let why =
                format!("its allow set did not become {want:?} within 30 s (last seen: {last:?})");
            return Err(self.agent.as_mut().expect("started").failed(&why));
        }
        // The controller keeps the policies: one of its own in every lab namespace.
        let namespaces: BTreeSet<String> = self
            .pods
            .iter()
            .filter_map(|p| p.split('/').next())
            .map(str::to_owned)
            .collect();
        let mut seen = BTreeSet::new();
        let ok = eventually(Duration::from_secs(30), || {
            let out = self
                .kubectl(
                    &[
                        "get",
                        "networkpolicies",
                        "-A",
                        "-l",
                        "app.kubernetes.io/managed-by=imdsguard",
                        "-o",
                        "jsonpath={range .items[*]}{.metadata.namespace}{\"\\n\"}{end}",
                    ],
                    None,
                )
                .ok()?;
            seen = out.lines().map(str::to_owned).collect();
            namespaces.is_subset(&seen).then_some(())
        });
        if ok.is_none() {
            let why = format!(
                "no generated NetworkPolicy in every lab namespace within 30 s (namespaces with one: {seen:?}, wanted {namespaces:?})"
            );
            return Err(self.controller.as_mut().expect("started").failed(&why));
        }
        let cloud = self.cloud.name();
        Ok(format!(
            "MetadataAccessPolicy/{POLICY_NAME} (spec.cloud {cloud}, platform/allowed expected) on the API server {}: imdsguard controller --cloud {cloud} keeps the generated NetworkPolicies, imdsguard agent run --kubernetes --cloud {cloud} --mode block allowlists the pods it selects on {NODE_NAME}{}",
            self.api_server,
            match self.cloud {
                Cloud::Azure => "",
                _ => " by both addresses (IPv4 and IPv6)",
            }
        ))
    }

    /// Reads the namespaces, pods and NetworkPolicies back from the API server, writes
    /// them to `--dump-policies` when given, and audits them with the core: what may
    /// reach each of the cloud's targets (both families for AWS and GCP), and what the
    /// rules expect.
    pub(crate) fn read_back(&self) -> Result<KubernetesResult, LabError> {
        let mut texts = Vec::new();
        for (file, kind) in [
            ("namespaces.yaml", "namespaces"),
            ("pods.yaml", "pods"),
            ("networkpolicies.yaml", "networkpolicies"),
        ] {
            let mut args = vec!["get", kind, "-o", "yaml"];
            if kind != "namespaces" {
                args.push("-A");
            }
            texts.push((file, self.kubectl(&args, None)?));
        }
        let dump = match &self.config.dump_policies {
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| LabError::Io {
                    what: format!("creating {}", dir.display()),
                    source: e,
                })?;
                for (file, text) in &texts {
                    let path = dir.join(file);
                    std::fs::write(&path, text).map_err(|e| LabError::Io {
                        what: format!("writing {}", path.display()),
                        source: e,
                    })?;
                }
                Some(dir.display().to_string())
            }
            None => None,
        };
        let mut objects = Vec::new();
        for (file, text) in &texts {
            let loaded = imdsguard_core::manifest::parse(file, text);
            if let Some(e) = loaded.errors.first() {
                return Err(LabError::Lab(format!("reading back {file}: {e}")));
            }
            objects.extend(loaded.objects);
        }
        let policies: serde_json::Value = serde_json::from_str(
            &self.kubectl(&["get", "networkpolicies", "-A", "-o", "json"], None)?,
        )
        .map_err(|e| LabError::Lab(format!("the NetworkPolicy list: {e}")))?;
        let network_policies = policies["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                format!(
                    "{}/{}",
                    p["metadata"]["namespace"].as_str().unwrap_or_default(),
                    p["metadata"]["name"].as_str().unwrap_or_default()
                )
            })
            .collect();
        let cluster = Cluster::build(objects);
        let rules =
            AccessRules::parse(rules(self.cloud)).map_err(|e| LabError::Lab(e.to_string()))?;
        let targets = self.cloud.targets();
        let options = AuditOptions {
            targets: targets.clone(),
            // The NetworkPolicy API's own semantics: no engine runs here (docs/lab.md).
            engine: Some(EngineSettings::new(Engine::Generic)),
            list_limit: None,
            expected: Some(rules),
            signals: Default::default(),
        };
        let report = audit(&cluster, &options);
        let audit = targets
            .iter()
            .enumerate()
            .map(|(i, t)| AuditTarget {
                target: t.to_string(),
                reachable: report
                    .workloads
                    .iter()
                    .filter(|w| w.verdicts.get(i).is_some_and(|v| v.reachable))
                    .map(|w| w.id())
                    .collect(),
                expected: report
                    .workloads
                    .iter()
                    .filter(|w| w.verdicts.get(i).is_some_and(|v| v.expected))
                    .map(|w| w.id())
                    .collect(),
            })
            .collect();
        let policy_status = self
            .kubectl(
                &[
                    "get",
                    "metadataaccesspolicies.imdsguard.io",
                    POLICY_NAME,
                    "-o",
                    "json",
                ],
                None,
            )
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v.get("status").cloned());
        Ok(KubernetesResult {
            api_server: self.api_server.clone(),
            node: NODE_NAME.to_owned(),
            pods: self.pods.clone(),
            policy: format!("MetadataAccessPolicy/{POLICY_NAME}"),
            network_policies,
            audit,
            dump,
            policy_status,
        })
    }

    /// What the read-back audit shows that it should not: a workload other than the
    /// expected one reaching a target, or the expected one not reaching the instance
    /// metadata service (IMDS, over IPv4 and, for AWS and GCP, IPv6). The other targets
    /// (WireServer; AWS's Pod Identity agent and ECS task metadata) are reachable by no
    /// pod: the generated policies except the expected pods for the instance metadata
    /// service only (`core::generate::is_expected_target`).
    pub(crate) fn unexpected(result: &KubernetesResult) -> Vec<String> {
        let mut out = Vec::new();
        for t in &result.audit {
            let imds = t
                .target
                .parse::<imdsguard_core::target::Target>()
                .is_ok_and(|t| t.is_instance_metadata());
            let allowed: &[&str] = if imds {
                &["platform/allowed[Pod]"]
            } else {
                &[]
            };
            for w in &t.reachable {
                if !allowed.contains(&w.as_str()) {
                    out.push(format!(
                        "audit of the read-back policies: {w} may reach {}",
                        t.target
                    ));
                }
            }
            for w in allowed {
                if !t.reachable.iter().any(|r| r == w) {
                    out.push(format!(
                        "audit of the read-back policies: {w} may not reach {} (expected)",
                        t.target
                    ));
                }
            }
        }
        out
    }
}

impl Drop for KubeLab {
    fn drop(&mut self) {
        // The agent and the controller first (they talk to the API server), then the
        // control plane, then the lab's folder.
        self.agent.take();
        self.controller.take();
        let _ = run_script(
            &self.config.control_plane_script,
            &["down", &self.dir.display().to_string()],
            false,
        );
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The lab's `MetadataAccessPolicy` for `cloud` ([`rules`] as its spec).
pub(crate) fn policy_yaml(cloud: Cloud) -> String {
    let spec: String = rules(cloud).lines().map(|l| format!("  {l}\n")).collect();
    format!(
        "apiVersion: imdsguard.io/v1alpha1\nkind: MetadataAccessPolicy\nmetadata:\n  name: {POLICY_NAME}\nspec:\n{spec}"
    )
}

/// `imdsguard controller`: NetworkPolicies (the one kind both analyzers read), for the
/// lab's cloud.
fn controller_args(cloud: Cloud) -> Vec<String> {
    [
        "controller",
        "--engine",
        "networkpolicy",
        "--metrics-listen",
        "127.0.0.1:0",
        "--cloud",
        cloud.name(),
    ]
    .map(String::from)
    .to_vec()
}

/// `imdsguard agent run --kubernetes` on the lab node, block mode, its admin listener on
/// the node's loopback, for the lab's cloud.
fn agent_args(cloud: Cloud) -> Vec<String> {
    [
        "agent",
        "run",
        "--kubernetes",
        "--node-name",
        NODE_NAME,
        "--mode",
        "block",
        "--admin-listen",
        "127.0.0.1:0",
        "--check-interval",
        "1s",
        "--cloud",
        cloud.name(),
    ]
    .map(String::from)
    .to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_object_carries_the_rules_and_selects_allowed() {
        let yaml = policy_yaml(Cloud::Azure);
        let value: serde_json::Value = serde_norway::from_str(&yaml).unwrap();
        assert_eq!(value["kind"], "MetadataAccessPolicy");
        assert_eq!(value["metadata"]["name"], POLICY_NAME);
        let rules = AccessRules::from_value(value["spec"].clone()).unwrap();
        assert_eq!(rules.len(), 1);
        let allowed = imdsguard_core::access::PodInfo {
            labels: [("app".to_owned(), "allowed".to_owned())].into(),
            ..imdsguard_core::access::PodInfo::new("platform", "allowed")
        };
        let web = imdsguard_core::access::PodInfo {
            labels: [("app".to_owned(), "web".to_owned())].into(),
            ..imdsguard_core::access::PodInfo::new("shop", "web")
        };
        assert!(rules.rules()[0].selects(&allowed));
        assert!(!rules.rules()[0].selects(&web));
    }

    #[test]
    fn the_read_back_audit_must_name_allowed_alone_for_imds_and_nobody_else() {
        let target = |t: imdsguard_core::target::Target, reachable: &[&str]| AuditTarget {
            target: t.to_string(),
            reachable: reachable.iter().map(|s| s.to_string()).collect(),
            expected: vec!["platform/allowed[Pod]".into()],
        };
        let result = |audit| KubernetesResult {
            api_server: String::new(),
            node: NODE_NAME.into(),
            pods: Vec::new(),
            policy: String::new(),
            network_policies: Vec::new(),
            audit,
            dump: None,
            policy_status: None,
        };
        let wire = imdsguard_core::target::Cloud::Azure.targets()[1];
        let good = result(vec![
            target(imdsguard_core::target::IMDS, &["platform/allowed[Pod]"]),
            target(wire, &[]),
        ]);
        assert!(KubeLab::unexpected(&good).is_empty());
        let bad = result(vec![
            target(imdsguard_core::target::IMDS, &["shop/web[Pod]"]),
            target(wire, &["platform/allowed[Pod]"]),
        ]);
        let found = KubeLab::unexpected(&bad);
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(
            found[0].contains("shop/web[Pod] may reach 169.254.169.254:80"),
            "{found:?}"
        );
        assert!(
            found[1].contains("platform/allowed[Pod] may not reach"),
            "{found:?}"
        );
        assert!(
            found[2].contains("platform/allowed[Pod] may reach 168.63.129.16"),
            "{found:?}"
        );
    }

    #[test]
    fn each_clouds_policy_is_of_its_cloud_and_gives_secrets_to_allowed_alone() {
        use imdsguard_core::access::{Decision, PodInfo};
        use imdsguard_core::canon::{Canonicalizer, Limits, default_hosts};
        use imdsguard_core::cloud_access::{CloudRequest, evaluate};
        let pod = |ns: &str, name: &str| {
            let mut p = PodInfo::new(ns, name);
            p.labels.insert("app".into(), name.into());
            p
        };
        let (allowed, web, batch) = (
            pod("platform", "allowed"),
            pod("shop", "web"),
            pod("jobs", "batch"),
        );
        for (cloud, method, secret) in [
            (
                Cloud::Aws,
                "GET",
                "/latest/meta-data/iam/security-credentials/imdsguard-demo-node-role",
            ),
            // The listing SDKs read to learn the role's name.
            (
                Cloud::Aws,
                "GET",
                "/latest/meta-data/iam/security-credentials/",
            ),
            (Cloud::Aws, "PUT", "/latest/api/token"),
            (
                Cloud::Gcp,
                "GET",
                "/computeMetadata/v1/instance/service-accounts/default/token",
            ),
        ] {
            let value: serde_json::Value = serde_norway::from_str(&policy_yaml(cloud)).unwrap();
            assert_eq!(value["spec"]["cloud"], cloud.name());
            // The spec as the CRD's reader takes it (`AccessRules::from_value`).
            let rules = AccessRules::from_value(value["spec"].clone()).unwrap();
            assert_eq!(rules.cloud(), cloud);
            let t = Canonicalizer::for_cloud(cloud, Limits::default(), default_hosts(cloud))
                .canonicalize(secret)
                .unwrap();
            let req = CloudRequest::new(cloud, method, &t).unwrap();
            let grants = |p: &PodInfo| matches!(evaluate(&rules, p, &req), Decision::Allow(_));
            assert!(grants(&allowed), "{cloud}: {method} {secret}");
            assert!(
                !grants(&web) && !grants(&batch),
                "{cloud}: {method} {secret}"
            );
        }
    }

    #[test]
    fn the_read_back_audit_expects_allowed_on_imds_in_both_families_alone() {
        use imdsguard_core::target::{AWS_IMDS_IPV6, AWS_POD_IDENTITY, GCP_METADATA_IPV6, IMDS};
        let audit = |reach: &[(imdsguard_core::target::Target, &[&str])]| KubernetesResult {
            api_server: String::new(),
            node: NODE_NAME.into(),
            pods: Vec::new(),
            policy: String::new(),
            network_policies: Vec::new(),
            audit: reach
                .iter()
                .map(|(t, r)| AuditTarget {
                    target: t.to_string(),
                    reachable: r.iter().map(|s| s.to_string()).collect(),
                    expected: Vec::new(),
                })
                .collect(),
            dump: None,
            policy_status: None,
        };
        let allowed: &[&str] = &["platform/allowed[Pod]"];
        let good = audit(&[
            (IMDS, allowed),
            (AWS_IMDS_IPV6, allowed),
            (AWS_POD_IDENTITY, &[]),
        ]);
        assert!(KubeLab::unexpected(&good).is_empty());
        // IPv6 left open to another pod, or closed to allowed; Pod Identity open to it.
        let bad = audit(&[
            (
                GCP_METADATA_IPV6,
                &["platform/allowed[Pod]", "shop/web[Pod]"],
            ),
            (AWS_IMDS_IPV6, &[]),
            (AWS_POD_IDENTITY, allowed),
        ]);
        let found = KubeLab::unexpected(&bad);
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(
            found[0].contains("shop/web[Pod] may reach [fd20:ce::254]:80"),
            "{found:?}"
        );
        assert!(
            found[1].contains("may not reach [fd00:ec2::254]:80"),
            "{found:?}"
        );
        assert!(
            found[2].contains("may reach 169.254.170.23:80"),
            "{found:?}"
        );
    }

    #[test]
    fn the_controller_and_the_agent_run_for_the_labs_cloud() {
        for cloud in Cloud::ALL {
            for args in [controller_args(cloud), agent_args(cloud)] {
                let at = args.iter().position(|a| a == "--cloud").unwrap();
                assert_eq!(args[at + 1], cloud.name());
            }
        }
    }

    #[test]
    fn the_crd_is_the_committed_one() {
        assert!(CRD_YAML.contains("name: metadataaccesspolicies.imdsguard.io"));
    }

    #[test]
    fn only_pods_the_node_hosts_get_an_api_namespace() {
        assert_eq!(api_namespace("allowed"), Some("platform"));
        assert_eq!(api_namespace("web"), Some("shop"));
        assert_eq!(api_namespace("batch"), Some("jobs"));
        assert_eq!(api_namespace("spoofer"), None);
    }
}
