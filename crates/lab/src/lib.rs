//! imdsguard-lab: the seed tutorial on one Linux machine, as `imdsguard lab`.
//!
//! It builds a node out of network namespaces ([`imdsguard_node::sandbox`]): a cloud
//! namespace answering as Azure IMDS and WireServer on their real addresses (the
//! emulator) and as Azure DNS (a UDP echo on 168.63.129.16:53), a node namespace routing
//! for pods on routed veths (Azure CNI) and on a bridge (kubenet), one of them
//! allowlisted and one borrowing its address; as root, the node's own processes too: the
//! kubelet and two hostNetwork pods, probes run as child processes in the cgroups the
//! kubelet would give them (cgroup v2 mounted in the lab's own mount namespace; see
//! `hostnet`). It then runs the attacker-path probe from every pod and from the node,
//! before protection and under each enforcement mode (block, observe, proxy with the
//! filtering proxy, and proxy mode's dry run: tables that drop nothing and a proxy that
//! forwards what it would deny, whose decisions `imdsguard report`'s aggregation reads
//! back), and prints the before/after matrix.
//!
//! With [`LabConfig::cloud`] AWS or GCP (`imdsguard lab --cloud aws|gcp`, the `cloud`
//! module) the node is an EKS or GKE one: the cloud namespace holds that cloud's
//! addresses in both families with its emulator on the metadata service's, the pods are
//! dual-stack, the probe walks the cloud's attacker path over IPv4 and IPv6, and the
//! table, the proxy and its rules are that cloud's; rows gain one cell per further
//! endpoint ([`Row::endpoints`]).
//!
//! **Safety.** [`run`] takes an [`Isolated`]: proof that this process runs in a network
//! namespace of its own (another than its parent's, nothing but `lo`), which
//! `imdsguard lab` gets by re-executing itself under `unshare --net` (plus
//! `--map-root-user` when not root). Everything the lab creates lives in that namespace
//! or in namespaces it creates from there, none linked to the machine's own. The probe's default endpoints (169.254.169.254,
//! 168.63.129.16) are only ever contacted from inside those namespaces, where they are
//! the lab's emulator. When the lab ends (normally, on error, on SIGINT or SIGTERM sent
//! to the process the user started, or killed), its namespaces end with it: each is
//! held by a child process that exits when the lab's pipe to it closes. Its cgroups are
//! in the machine's one hierarchy: it removes them itself ([`remove_cgroups`]), and a
//! run sweeps those of runs killed before they could.

mod bench;
mod cloud;
mod hostnet;
mod kubernetes;
mod report;
mod world;

use std::time::Duration;

use imdsguard_core::target::Cloud;

pub use hostnet::{
    CGROUP_ROOT, HostNet, ProbeCommand, current_mount_namespace, mount_cgroup2, remove_cgroups,
};
pub use imdsguard_node::netns::Isolated;
pub use kubernetes::{AuditTarget, KubernetesConfig, KubernetesResult};
pub use report::{EndpointCell, LabPod, LabReport, Phase, PhaseResult, Row};

/// What a lab run does.
#[derive(Debug, Clone)]
pub struct LabConfig {
    /// Phases to run, in order; empty is [`Phase::ALL`] ([`Phase::KUBERNETES`] with
    /// [`LabConfig::kubernetes`]).
    pub phases: Vec<Phase>,
    /// The probe's TCP connect timeout (a dropped connection costs this much).
    pub connect_timeout: Duration,
    /// Also measure this many times how long an allow-set change takes to be effective
    /// (time from the change to the pod's first successful connection).
    pub bench_allow: u32,
    /// `--kubernetes`: run the test control plane in the node's namespace, register the
    /// node and its pods, and protect them with a `MetadataAccessPolicy`, the controller
    /// and the agent (phases `before` and `controller`).
    pub kubernetes: Option<KubernetesConfig>,
    /// Whether the node's own processes can be placed in cgroups (cgroup v2 mounted in
    /// the lab's mount namespace): then the `node` row (the kubelet, in `system.slice`)
    /// and the hostNetwork pods' rows are probed from child processes in their cgroups;
    /// otherwise the hostNetwork rows are skipped, with a note saying why.
    pub hostnet: HostNet,
    /// How to run one probe as a child process (the `imdsguard` binary's hidden
    /// probe-row mode, which calls [`probe_row_child`]).
    pub probe_command: Option<ProbeCommand>,
    /// The cloud the node stands in (`--cloud`): its endpoints in the cloud namespace
    /// (both families for AWS and GCP, whose pods are dual-stack), its emulator, probe,
    /// table and proxy rules. Azure by default.
    pub cloud: Cloud,
}

impl Default for LabConfig {
    /// Every phase, 1 s to connect, no benchmark.
    fn default() -> Self {
        LabConfig {
            phases: Vec::new(),
            connect_timeout: Duration::from_secs(1),
            bench_allow: 0,
            kubernetes: None,
            hostnet: HostNet::default(),
            probe_command: None,
            cloud: Cloud::Azure,
        }
    }
}

/// Why the lab could not run (exit status 2).
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// Tools are missing.
    #[error("the lab needs {0}")]
    Missing(String),
    /// No network namespace can be made here.
    #[error("cannot create a network namespace: {0}")]
    NoNamespace(String),
    /// The node tooling failed.
    #[error(transparent)]
    Node(#[from] imdsguard_node::NodeError),
    /// A lab component failed.
    #[error("{0}")]
    Lab(String),
    /// An IO error.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
}

impl LabError {
    /// The exit status this error means (2).
    pub fn exit_code(&self) -> u8 {
        2
    }
}

/// Builds the node in `isolated` (this process's own network namespace, checked to be
/// another than its parent's and to hold nothing but `lo`), probes every pod in each
/// phase and gives the matrix. Re-running the program in such a namespace, and stopping
/// on signals, is the caller's (`imdsguard lab`).
pub fn run(isolated: &Isolated, config: &LabConfig) -> Result<LabReport, LabError> {
    world::run(isolated, config)
}

/// The child process's part of a probe run in a cgroup ([`ProbeCommand`]): moves this
/// process into `cgroup` (one of the lab's that started it) first, checks that it is
/// in a network namespace of the lab's (not `parent`'s, the run that
/// started the lab, nor PID 1's), probes the lab's endpoints from here and gives the
/// row as JSON.
pub fn probe_row_child(
    cloud: Cloud,
    row: &str,
    connect_timeout: Duration,
    cgroup: &str,
    parent: Option<&str>,
) -> Result<String, LabError> {
    // Before anything opens a socket: this process goes into its cgroup.
    hostnet::enter_cgroup(cgroup)?;
    let here = imdsguard_node::netns::current_netns()?;
    let init = std::fs::read_link("/proc/1/ns/net")
        .ok()
        .map(|p| p.display().to_string());
    if parent.is_none_or(|p| p == here) || init.as_deref() == Some(here.as_str()) {
        return Err(LabError::Lab(format!(
            "a probe row runs only inside the lab's node namespace, not in {here}"
        )));
    }
    Ok(world::probe_row_json(cloud, row, connect_timeout))
}
