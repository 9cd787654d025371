//! imdsguard-agent: the node agent, `imdsguard agent run`.
//!
//! It composes the node enforcement ([`imdsguard_node::Enforcer`]) and, in proxy mode,
//! the filtering proxy ([`imdsguard_proxy::Proxy`]):
//!
//! - on start it installs (or atomically replaces) `inet imdsguard` and flushes
//!   conntrack toward the protected endpoints; it never removes the table, on exit or
//!   crash (fail closed: `imdsguard agent uninstall` is the only way out);
//! - the pods file ([`pods`]) gives the known (interface, address) pairs (proxy mode
//!   redirects only those; an address borrowed from another interface is dropped) and,
//!   with `--allow NAMESPACE/NAME`, allowlisted pairs; the proxy gets its pod index;
//! - or, with `--kubernetes` ([`kube`]), a watch of the pods scheduled on `--node-name`
//!   gives the same (interfaces from `ip route get`), applied on every change, and drop
//!   events also become Kubernetes `Warning` Events on the pods; without `--rules`, the
//!   `MetadataAccessPolicy` objects ([`imdsguard_kube::policies`]) are the rules, applied
//!   on each watch event: the proxy's rules in proxy mode, else the node's pods their
//!   subjects select are allowlisted beside `--allow` (nothing before the first list or
//!   without the CRD); and once the table and the first lists are applied the start-up
//!   taint [`STARTUP_TAINT_KEY`]`:NoSchedule` leaves the node ([`imdsguard_kube::taint`]);
//! - every check interval (and on each reload request, SIGHUP for `imdsguard agent run`) it compares the listed table with the one
//!   it builds by content (rules in order, set elements, mode), re-applying the whole
//!   table in one transaction on any difference (logged, counted in
//!   `imdsguard_agent_repairs_total{difference}`), and feeds the table's drop counters
//!   into the metrics (`imdsguard_blocked_packets_total`);
//! - on the same interval, in a task of its own (the proxy's one reloader,
//!   [`imdsguard_proxy::FileFollower`]: a FIFO or a hung file system never holds up
//!   the table check or shutdown), it reloads the pods (set elements only, never a
//!   rebuild) and rules files when they changed (always on a reload request); a file
//!   that is not a regular file, is empty, or does not parse is logged and counted, and
//!   the previous contents stay;
//! - in block and proxy modes every tick also reads which (interface, address) pairs
//!   were dropped ([`drops`]: the table's `dropped_v4`/`dropped_v6` sets, no NFLOG
//!   parsing), maps them to pods of the pods file, and hands one event per pod with new
//!   drops to the [`EventSink`]s (a structured log record by default) and to
//!   `imdsguard_agent_drops_total{namespace,pod}`;
//! - observe mode names its connections by pod and endpoint the same way
//!   ([`observed`]: the table's `observed_v4`/`observed_v6` sets),
//!   `imdsguard_agent_observed_connections_total{namespace,pod,endpoint}`;
//! - hostNetwork pods ([`host`]): a second table, `inet imdsguard_host`, guards the
//!   node's output path by the sockets' cgroup (cgroup v2 at `--cgroup-root`), kept in
//!   step with the hostNetwork pods' cgroups at every check; expected (direct) are the
//!   pods `--allow NAMESPACE/NAME` names and, in block and observe modes, those the
//!   access rules select (as other pods are allowlisted; in proxy mode the rules'
//!   pods go through the proxy); drops of the others are attributed to them like other pods';
//!   in proxy mode the proxy gets the cgroup id → pod map; without cgroup v2 `/readyz`
//!   says they are not covered and the rest works;
//! - the admin listener (`imdsguard-serve`'s admin endpoints) serves `/metrics`,
//!   `/healthz` and `/readyz` in every mode; `/readyz` fails while the table is
//!   missing, not enforcing or in another mode;
//! - [`Agent::shutdown`]: stop serving, leave the rules.
//!
//! A library: [`Agent::start`] takes an [`AgentConfig`] (plain data) and gives a handle.
//! The flags, the log set-up, the runtime and the signals are the `imdsguard` binary's
//! (`imdsguard agent run`).
//!
//! See `docs/agent.md`.

pub mod drops;
pub mod host;
pub mod kube;
pub mod observed;
pub mod pods;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use imdsguard_core::access::AccessRules;
use imdsguard_core::nft::{self, Mode};
use imdsguard_core::target::Cloud;
use imdsguard_node::{AllowSpec, Enforcer, Exec, NftSettings, NodeError};
use imdsguard_proxy::{
    ApplyError, FileFollower, Metrics, Proxy, ProxyConfig, ProxyControl, ProxyError, ReloadTarget,
    Upstream,
};
use imdsguard_serve::admin::{AdminSource, Readiness};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

pub use drops::{DropEvent, EventSink, LogSink};
pub use imdsguard_core::pods::{NodePod, PodIndex};
pub use imdsguard_kube::policies::PolicyState;
pub use imdsguard_kube::taint::STARTUP_TAINT_KEY;

/// The admin listen address when none is given.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9170";

/// Everything the agent needs to start (`imdsguard agent run`'s flags, as data).
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The node enforcement (mode, interfaces, clouds, proxy address, allowlist).
    pub nft: NftSettings,
    /// The pods this node hosts: the proxy's pod index format, each entry with the
    /// `interface` its traffic enters the node on (see docs/agent.md); reloaded on
    /// change and on request.
    pub pods: Option<PathBuf>,
    /// Take the node's pods from the Kubernetes API instead of `pods`: a watch of the
    /// pods with `spec.nodeName` = `node_name` (the in-cluster service account, else
    /// the kubeconfig), interfaces from `ip route get`; drops also become Events.
    pub kubernetes: bool,
    /// With `kubernetes`: the name of this node.
    pub node_name: Option<String>,
    /// With `kubernetes`: the kubeconfig to use (`None`: the in-cluster service account,
    /// else `KUBECONFIG`, else `~/.kube/config`).
    pub kubeconfig: Option<PathBuf>,
    /// With `kubernetes`: remove the start-up taint [`STARTUP_TAINT_KEY`]`:NoSchedule`
    /// from `node_name` once the table is in place, the node's pods listed and applied,
    /// and the `MetadataAccessPolicy` objects answered (when watched).
    pub remove_taint: bool,
    /// The access rules (docs/proxy.md); reloaded on change and on request. The proxy's
    /// in proxy mode; in block and observe modes the pods their subjects select are
    /// expected: allowlisted, and when hostNetwork accepted by the host table (in proxy
    /// mode only `--allow` sends a pod direct). With `kubernetes` and no file, the rules are the
    /// `MetadataAccessPolicy` objects; with a file, no object is watched. Proxy mode needs
    /// one or the other.
    pub rules: Option<PathBuf>,
    /// Proxy mode: where the proxy listens (`None`: the proxy address of `nft`).
    pub proxy_listen: Option<SocketAddr>,
    /// Proxy mode: the metadata service allowed requests are forwarded to.
    pub upstream: Upstream,
    /// The cgroup v2 mount ([`host::DEFAULT_CGROUP_ROOT`]): hostNetwork pods are guarded
    /// by their cgroups below it (block and proxy modes; counted in observe mode). Not
    /// mounted there: logged at start, `/readyz` says so, the rest works.
    pub cgroup_root: PathBuf,
    /// The agent's own pod UID (the downward API's `metadata.uid`), when it runs in a
    /// pod: its sockets (the proxy's upstream connections) are never dropped or
    /// redirected by the host table.
    pub pod_uid: Option<String>,
    /// Block and proxy modes: enforce nothing, show what enforcing would break. The
    /// tables drop nothing ([`nft::RulesetConfig::dry_run`]): what the mode would drop is
    /// let through, counted (`would_drop`) and attributed to its pod as a would-drop
    /// (log, `imdsguard_agent_would_drops_total`; no Kubernetes Event). In proxy mode the
    /// proxy also decides, logs and counts every request as usual, but forwards the ones
    /// the rules deny (decision `would-deny`, outcome `would_deny`), never sending the
    /// 403 ([`ProxyConfig::dry_run`]). Observe mode refuses it (it drops nothing anyway).
    pub dry_run: bool,
    /// The admin listener (`/metrics`, `/healthz`, `/readyz`); `None`: none.
    pub admin_listen: Option<SocketAddr>,
    /// Accept a rules file with no rules (every request denied) and be ready with it.
    pub allow_empty_rules: bool,
    /// Accept a pods file with no pods.
    pub allow_empty_pods: bool,
    /// How often to check the table (restoring it), read the counters and look for
    /// changed files (a rename over a file is a change); 0 means 5 s.
    pub check_interval: Duration,
}

impl AgentConfig {
    /// A configuration with every default (admin on [`DEFAULT_ADMIN_LISTEN`], IMDS
    /// upstream, 5 s checks, no files) and `nft` as given.
    pub fn new(nft: NftSettings) -> AgentConfig {
        AgentConfig {
            nft,
            pods: None,
            kubernetes: false,
            node_name: None,
            kubeconfig: None,
            remove_taint: true,
            rules: None,
            proxy_listen: None,
            upstream: Upstream::default(),
            dry_run: false,
            cgroup_root: PathBuf::from(host::DEFAULT_CGROUP_ROOT),
            pod_uid: None,
            admin_listen: Some(DEFAULT_ADMIN_LISTEN.parse().expect("a valid default")),
            allow_empty_rules: false,
            allow_empty_pods: false,
            check_interval: DEFAULT_CHECK_INTERVAL,
        }
    }
}

impl AgentConfig {
    /// Options that do not go together (checked again by [`Agent::start`]): `dry_run`
    /// in observe mode.
    pub fn check(&self) -> Result<(), AgentError> {
        if self.dry_run && self.nft.mode == Mode::Observe {
            return Err(AgentError::Usage(
                "--dry-run is for block and proxy modes (it lets through what they would drop or deny, and names the pods); observe mode already lets everything through and counts it per pod and endpoint".into(),
            ));
        }
        if self.nft.mode == Mode::Proxy {
            self.proxy_cloud()?;
        }
        if self.kubernetes && self.rules.is_none() {
            self.one_cloud("the MetadataAccessPolicy objects followed")?;
        }
        Ok(())
    }

    /// Proxy mode: the cloud whose metadata service the proxy speaks, the one
    /// `--cloud` names (Azure when none); several clouds are refused, as the proxy
    /// validates and decides requests by one cloud's rules.
    pub fn proxy_cloud(&self) -> Result<Cloud, AgentError> {
        self.one_cloud("proxy mode's proxy")
    }

    /// The one cloud `--cloud` names (Azure when none), for `what` that follows one
    /// cloud's rules: proxy mode's proxy, and with `--kubernetes` and no `--rules` the
    /// `MetadataAccessPolicy` objects (those written for another cloud are refused,
    /// `OtherCloud`). Several clouds are refused there.
    pub fn one_cloud(&self, what: &str) -> Result<Cloud, AgentError> {
        let mut clouds = self.nft.clouds.clone();
        clouds.sort_by_key(|c| c.name());
        clouds.dedup();
        match clouds.as_slice() {
            [] => Ok(Cloud::Azure),
            [one] => Ok(*one),
            many => Err(AgentError::Usage(format!(
                "{what} follow one cloud's rules, and --cloud names {}: give one --cloud (block and observe modes with a --rules file take several)",
                many.iter().map(|c| c.name()).collect::<Vec<_>>().join(", ")
            ))),
        }
    }
}

/// The check interval when none (or 0) is given.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The node enforcement failed (no `nft`, not permitted, a bad option).
    #[error(transparent)]
    Node(#[from] NodeError),
    /// The proxy could not start, or a pods or rules file could not be read, was
    /// refused (not a regular file, empty, changed while read) or is invalid.
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    /// Options that do not go together.
    #[error("{0}")]
    Usage(String),
    /// No Kubernetes client (`--kubernetes`).
    #[error(transparent)]
    Kube(#[from] imdsguard_kube::KubeError),
    /// The kubeconfig given (`--kubeconfig`) could not be read or used.
    #[error(transparent)]
    Kubeconfig(#[from] imdsguard_kube::live::LiveError),
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

/// The agent's own metrics, registered in the proxy's registry.
#[derive(Clone, Default)]
struct AgentMetrics {
    enforcing: Gauge,
    restores: Counter,
    repairs: Family<Vec<(String, String)>, Counter>,
    known: Gauge,
    allowed: Gauge,
    nft_packets: Family<Vec<(String, String)>, Gauge>,
    drops: Family<Vec<(String, String)>, Counter>,
    would_drops: Family<Vec<(String, String)>, Counter>,
    observed: Family<Vec<(String, String)>, Counter>,
    host_guard: Family<Vec<(String, String)>, Gauge>,
    policies_synced: Gauge,
    policy_objects: Family<Vec<(String, String)>, Gauge>,
    policy_rules: Gauge,
    policy_refusals: Counter,
    taint_handoff: Gauge,
}

impl AgentMetrics {
    fn register(metrics: &Metrics) -> AgentMetrics {
        let m = AgentMetrics::default();
        let mut r = metrics.registry();
        r.register(
            "agent_enforcing",
            "1 when inet imdsguard is in place and as the agent built it",
            m.enforcing.clone(),
        );
        r.register(
            "agent_restores",
            "Times the agent found the table missing or changed and put it back",
            m.restores.clone(),
        );
        r.register(
            "agent_repairs",
            "Differences the agent found between the listed table and the one it builds, by kind (missing, chain, rule, object, elements, mode); each repair re-applies the whole table in one transaction",
            m.repairs.clone(),
        );
        r.register(
            "agent_known_pairs",
            "Known (interface, address) pairs: the pods the node hosts",
            m.known.clone(),
        );
        r.register(
            "agent_allowed_pairs",
            "Allowlisted (interface, address) pairs",
            m.allowed.clone(),
        );
        r.register(
            "agent_nft_packets",
            "The inet imdsguard table's named counters (packets)",
            m.nft_packets.clone(),
        );
        r.register(
            "agent_policies_synced",
            "1 when the MetadataAccessPolicy objects are listed and in force (--kubernetes without --rules); 0 before the first list or when the CRD is not installed (nothing is allowlisted by them then)",
            m.policies_synced.clone(),
        );
        r.register(
            "agent_policy_objects",
            "MetadataAccessPolicy objects listed, by state (accepted, refused: the core refused the rules, which add nothing)",
            m.policy_objects.clone(),
        );
        r.register(
            "agent_policy_rules",
            "Access rules in force from MetadataAccessPolicy objects",
            m.policy_rules.clone(),
        );
        r.register(
            "agent_policy_refusals",
            "MetadataAccessPolicy objects (each name and generation once) whose rules the core refused",
            m.policy_refusals.clone(),
        );
        r.register(
            "agent_startup_taint_handoff",
            "1 once the start-up taint imdsguard.io/agent-not-ready:NoSchedule is off this node (removed by the agent, or absent)",
            m.taint_handoff.clone(),
        );
        r.register(
            "agent_drops",
            "Packets to a protected endpoint dropped, by pod of the pod index (pod=\"unknown\" for other sources; a pod's labels leave 15 minutes after its last drop, and past 1000 pods further ones count as pod=\"other\")",
            m.drops.clone(),
        );
        r.register(
            "agent_would_drops",
            "Dry run: packets to a protected endpoint the mode would have dropped and let through instead, by pod of the pod index (labels as agent_drops_total's)",
            m.would_drops.clone(),
        );
        r.register(
            "agent_observed_connections",
            "Observe mode: connections to a protected endpoint let through past the allow rule (what block mode would drop), by pod of the pod index and endpoint (pod=\"unknown\" for other sources; a pod's labels leave with the pod)",
            m.observed.clone(),
        );
        r.register(
            "agent_host_guard",
            "1 for the state of the hostNetwork pods' coverage by cgroup (starting, guarded: inet imdsguard_host in place; not-covered: no cgroup v2 at --cgroup-root; failed: the last apply failed and the previous table stays), 0 for the others",
            m.host_guard.clone(),
        );
        m
    }
}

/// State shared by the periodic task, SIGHUP, and `/readyz`.
struct Shared {
    enforcer: Mutex<Enforcer>,
    mode: Mode,
    /// A dry run: the tables drop nothing; what they would drop is a would-drop.
    dry_run: bool,
    allow: Vec<AllowSpec>,
    control: Mutex<Option<ProxyControl>>,
    metrics: Metrics,
    own: AgentMetrics,
    files: Mutex<Files>,
    /// The pods as last loaded, to name the dropped sources.
    pods: Mutex<PodIndex>,
    drops: Mutex<drops::DropTracker>,
    /// The per-pod label sets of the drops metric, kept bounded.
    drop_series: Mutex<drops::PodSeries>,
    /// hostNetwork pods by cgroup: the host table's state.
    host: Mutex<host::Host>,
    /// Observe mode: the observed connections' counts as last read.
    observed: Mutex<observed::ObservedTracker>,
    /// Observe mode: the label sets of the observed-connections metric.
    observed_series: Mutex<observed::ObservedSeries>,
    sinks: Vec<Arc<dyn EventSink>>,
    /// `--kubernetes`: the watch's snapshots.
    kube_pods: Option<watch::Receiver<Option<Arc<imdsguard_kube::Snapshot>>>>,
    /// `--kubernetes`: the last snapshot was not applied; the next round tries again.
    kube_retry: AtomicBool,
    /// `--kubernetes` without `--rules`: the `MetadataAccessPolicy` watch's states.
    policies: Option<watch::Receiver<PolicyState>>,
    /// The access rules in force: the rules file's, else the objects' (`None`: none,
    /// before the first list or without the CRD). Block and observe modes allowlist the
    /// pods their subjects select; the host table accepts the hostNetwork pods they
    /// select.
    policy_rules: Mutex<Option<AccessRules>>,
    /// The refused objects already reported (name, generation).
    refused_seen: Mutex<std::collections::BTreeSet<(String, Option<i64>)>>,
    /// The last policy state applied was not; the next round tries again.
    policy_retry: AtomicBool,
    /// Held while the allow set is computed and synced, so that a pods change and a
    /// policies change never apply a stale copy of each other.
    applying: Mutex<()>,
    /// `--kubernetes`: a snapshot of the node's pods was applied.
    kube_pods_applied: AtomicBool,
    /// A policy state with an answer (synced, or no CRD) was applied.
    policies_applied: AtomicBool,
    /// Bumped after each of those, for the taint hand-off.
    progress: watch::Sender<u64>,
    /// The start-up taint hand-off, for `/readyz`.
    taint: Mutex<TaintHandOff>,
}

/// Where the start-up taint hand-off stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaintHandOff {
    /// Not asked for (no `--kubernetes`, or `--remove-taint=false`).
    Off,
    /// Waiting for the node's pods (and policies) to be applied.
    Waiting,
    /// The taint was removed.
    Removed,
    /// The node had no such taint.
    Absent,
    /// The last try failed (retried with backoff).
    Failed(String),
}

impl std::fmt::Display for TaintHandOff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TaintHandOff::Off => write!(f, "not removed by the agent (off)"),
            TaintHandOff::Waiting => write!(f, "waiting for the node's pods and policies"),
            TaintHandOff::Removed => write!(f, "removed"),
            TaintHandOff::Absent => write!(f, "absent"),
            TaintHandOff::Failed(e) => write!(f, "not removed yet: {e}"),
        }
    }
}

#[derive(Default)]
struct Files {
    counters: BTreeMap<String, u64>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The proxy's lookup of hostNetwork callers by their socket's cgroup under `root`:
/// the endpoints the host table redirects to it (TCP, of a family with a proxy
/// address), as the client wrote them. Given in proxy mode whether or not cgroup v2 is
/// mounted at `root` yet (it may be later, and the host table then redirects here).
fn host_caller_config(
    root: &std::path::Path,
    config: &nft::RulesetConfig,
) -> imdsguard_proxy::HostCallerConfig {
    let mut hc = imdsguard_proxy::HostCallerConfig::new(root);
    hc.destinations = config
        .proxied
        .iter()
        .filter(|t| t.protocol == imdsguard_core::target::Protocol::Tcp)
        .filter(|t| {
            if t.ip.is_ipv4() {
                config.proxy_v4.is_some()
            } else {
                config.proxy_v6.is_some()
            }
        })
        .map(|t| SocketAddr::new(t.ip, t.port))
        .collect();
    hc
}

/// The label of `imdsguard_blocked_packets_total` for a drop counter of the table (which
/// counts per reason, not per endpoint).
fn drop_destination(counter: &str) -> &'static str {
    if counter == nft::counter::SPOOFED {
        "protected-unknown-source"
    } else {
        "protected"
    }
}

impl Shared {
    /// Whether the table is in place, enforcing, and in the expected mode.
    fn nft_ready(&self) -> Result<(), String> {
        let status = lock(&self.enforcer).status().map_err(|e| e.to_string())?;
        let ok = status.enforcing && status.mode == Some(self.mode);
        self.own.enforcing.set(i64::from(ok));
        if ok {
            Ok(())
        } else if status.problems.is_empty() {
            Err(format!(
                "inet imdsguard is in mode {}, expected {}",
                status.mode.map_or("unknown".into(), |m| m.to_string()),
                self.mode
            ))
        } else {
            Err(format!("nft: {}", status.problems.join("; ")))
        }
    }

    /// Compares the listed table with the one the agent builds (rules by content, set
    /// elements, mode: [`imdsguard_node::Enforcer::status`]) and, on any difference,
    /// puts the whole table back in one transaction (counters carried over). The
    /// enforcer stays locked from the listing to the repair, so no pods change slips in
    /// between.
    fn ensure_table(&self) {
        let mut enforcer = lock(&self.enforcer);
        let status = match enforcer.status() {
            Ok(s) => s,
            Err(e) => {
                self.own.enforcing.set(0);
                tracing::error!(error = %e, "cannot list inet imdsguard");
                return;
            }
        };
        if status.enforcing && status.mode == Some(self.mode) {
            self.own.enforcing.set(1);
            return;
        }
        self.own.enforcing.set(0);
        let mut kinds: Vec<&'static str> =
            status.differences.iter().map(|d| d.kind.as_str()).collect();
        kinds.sort_unstable();
        kinds.dedup();
        if kinds.is_empty() {
            kinds.push(nft::DifferenceKind::Mode.as_str());
        }
        for kind in &kinds {
            self.own
                .repairs
                .get_or_create(&vec![("difference".to_owned(), (*kind).to_owned())])
                .inc();
        }
        const SHOWN: usize = 10;
        let mut shown: Vec<String> = status.problems.iter().take(SHOWN).cloned().collect();
        if status.problems.len() > SHOWN {
            shown.push(format!("and {} more", status.problems.len() - SHOWN));
        }
        tracing::warn!(
            differences = %shown.join("; "),
            kinds = %kinds.join(","),
            "inet imdsguard is not as the agent built it: putting it back"
        );
        match enforcer.install() {
            Ok(report) => {
                self.own.restores.inc();
                self.own.enforcing.set(1);
                tracing::info!(mode = %report.mode, allowed = report.allowed, known = report.known, "inet imdsguard restored");
            }
            Err(e) => tracing::error!(error = %e, "could not restore inet imdsguard"),
        }
    }

    /// `--kubernetes`: applies the watch's latest snapshot.
    fn apply_kube_pods(&self) {
        let Some(rx) = &self.kube_pods else { return };
        let Some(snapshot) = rx.borrow().clone() else {
            return;
        };
        let result = self.apply_pods(kube::node_pods(&snapshot));
        self.metrics.record_reload("pods", result.is_ok());
        self.kube_retry.store(result.is_err(), Ordering::Relaxed);
        match result {
            Ok(()) => {
                if !self.kube_pods_applied.swap(true, Ordering::Relaxed) {
                    self.progress.send_modify(|n| *n += 1);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "the watched pods not applied; trying again at the next round");
            }
        }
    }

    /// The `MetadataAccessPolicy` watch's latest state: its rules to the proxy (proxy
    /// mode) or the pods they select to the allow set (block and observe modes).
    fn apply_policies(&self) {
        let Some(rx) = &self.policies else { return };
        let state = rx.borrow().clone();
        self.record_policies(&state);
        let result = {
            let _applying = lock(&self.applying);
            *lock(&self.policy_rules) = state.rules().cloned();
            if self.mode == Mode::Proxy {
                // Synced: the objects' rules; no CRD: none (every request denied).
                // Before the first list the proxy keeps what it has (none at start).
                let rules = match &state {
                    PolicyState::Synced(p) => Some(p.rules.clone()),
                    PolicyState::NotInstalled { .. } => Some(AccessRules::default()),
                    PolicyState::Pending { .. } => None,
                };
                if let (Some(rules), Some(control)) = (rules, &*lock(&self.control)) {
                    control.set_rules(rules);
                }
                // The proxy's map (its pods) is kept current with the host table.
                self.ensure_host();
                Ok(())
            } else {
                let pods = lock(&self.pods).clone();
                self.apply_pods_locked(pods)
            }
        };
        self.metrics.record_reload("policies", result.is_ok());
        self.policy_retry.store(result.is_err(), Ordering::Relaxed);
        match result {
            Ok(()) => {
                if state.answered() && !self.policies_applied.swap(true, Ordering::Relaxed) {
                    self.progress.send_modify(|n| *n += 1);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "the MetadataAccessPolicy objects not applied; trying again at the next round");
            }
        }
    }

    /// The policies' metrics, and a log record per state change and per newly refused
    /// object.
    fn record_policies(&self, state: &PolicyState) {
        self.own
            .policies_synced
            .set(i64::from(matches!(state, PolicyState::Synced(_))));
        let label = |s: &str| vec![("state".to_owned(), s.to_owned())];
        let (accepted, refused, rules) = match state {
            PolicyState::Synced(p) => (
                p.objects.len() - p.refused.len(),
                p.refused.len(),
                p.rules.len(),
            ),
            _ => (0, 0, 0),
        };
        self.own
            .policy_objects
            .get_or_create(&label("accepted"))
            .set(accepted as i64);
        self.own
            .policy_objects
            .get_or_create(&label("refused"))
            .set(refused as i64);
        self.own.policy_rules.set(rules as i64);
        match state {
            PolicyState::Synced(p) => {
                tracing::info!(summary = %p.summary(), "MetadataAccessPolicy objects in force");
                let mut seen = lock(&self.refused_seen);
                let now: std::collections::BTreeSet<(String, Option<i64>)> = p
                    .refused
                    .iter()
                    .map(|r| (r.name.clone(), r.generation))
                    .collect();
                for r in &p.refused {
                    if !seen.contains(&(r.name.clone(), r.generation)) {
                        self.own.policy_refusals.inc();
                        tracing::error!(
                            object = %r.name,
                            generation = ?r.generation,
                            error = %r.error,
                            "MetadataAccessPolicy refused: its rules add nothing (the other objects still apply)"
                        );
                    }
                }
                *seen = now;
            }
            other => {
                if let Err(why) = other.readiness() {
                    tracing::warn!(state = %why, "MetadataAccessPolicy objects not in force");
                }
            }
        }
    }

    /// What `/readyz` adds: the policies (when watched) must be in force.
    fn policies_ready(&self) -> Result<(), String> {
        match &self.policies {
            Some(rx) => rx.borrow().readiness().map(|_| ()),
            None => Ok(()),
        }
    }

    /// What `/readyz` says besides the proxy: the policies and the taint hand-off.
    fn summary(&self) -> String {
        let mut parts = Vec::new();
        if let Some(rx) = &self.policies {
            match rx.borrow().readiness() {
                Ok(s) => parts.push(s),
                Err(_) => parts.push("MetadataAccessPolicy objects not in force".to_owned()),
            }
        }
        let taint = lock(&self.taint).clone();
        if taint != TaintHandOff::Off {
            parts.push(format!("node taint {STARTUP_TAINT_KEY}: {taint}"));
        }
        parts.push(lock(&self.host).coverage.to_string());
        if self.dry_run {
            parts.push(format!(
                "dry run: {} mode's tables drop nothing (would-drops counted per pod)",
                self.mode
            ));
        }
        parts.join(", ")
    }

    /// Keeps the host table (hostNetwork pods by cgroup) as the pods and rules want it,
    /// and gives the proxy its cgroup id → pod map when it changed.
    fn ensure_host(&self) {
        let (exec, config) = {
            let e = lock(&self.enforcer);
            (e.exec().clone(), e.config().clone())
        };
        let pods = lock(&self.pods).clone();
        let rules = lock(&self.policy_rules).clone();
        let expecting = host::Expecting {
            mode: self.mode,
            rules: rules.as_ref(),
            allow: &self.allow,
        };
        let mut host = lock(&self.host);
        for kind in host.ensure(&exec, &config, &pods, expecting) {
            self.own
                .repairs
                .get_or_create(&vec![("difference".to_owned(), format!("host-{kind}"))])
                .inc();
        }
        let state = host.coverage.state();
        for s in host::Coverage::STATES {
            self.own
                .host_guard
                .get_or_create(&vec![("state".to_owned(), (*s).to_owned())])
                .set(i64::from(*s == state));
        }
        if let Some(map) = host.callers_changed()
            && let Some(control) = &*lock(&self.control)
        {
            tracing::info!(
                pods = map.len(),
                "the proxy's hostNetwork pods by cgroup updated"
            );
            control.set_host_callers(map);
        }
    }

    /// The host table's counters: new packets of pods that are not expected become drops
    /// (block and proxy modes: the sinks and `imdsguard_agent_drops_total`, like other
    /// pods') or observations (observe mode).
    fn report_host(&self) {
        let exec = lock(&self.enforcer).exec().clone();
        let counters = match imdsguard_node::host::read_host(&exec) {
            Ok(Some(c)) => c,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the host table's counters");
                return;
            }
        };
        {
            let mut host = lock(&self.host);
            if !host.counts.primed() {
                // At start: what the table counted before (it was carried over from a
                // previous run) is not new.
                host.counts.prime(&counters);
                return;
            }
        }
        let pods = lock(&self.pods).clone();
        // (new packets, and who: (namespace, name, cgroup) of a pod of the index, or
        // `None` for the unknown-pod-cgroup counter and a pod no longer in the index),
        // for counters of pods that are not expected.
        type Named = Option<(String, String, String)>;
        let new: Vec<(u64, Named)> = {
            let mut host = lock(&self.host);
            let deltas = host.counts.update(&counters);
            deltas
                .into_iter()
                .filter(|(uid, _)| uid.as_deref().is_none_or(|u| !host.expected(u)))
                .map(|(uid, packets)| {
                    let who = uid.as_deref().and_then(|uid| {
                        let p = pods.host_pod_by_uid(uid)?;
                        let cgroup = host.cgroup_of(uid)?.path.clone();
                        Some((p.info.namespace.clone(), p.info.name.clone(), cgroup))
                    });
                    (packets, who)
                })
                .collect()
        };
        let roots = lock(&self.host).roots();
        let now = std::time::Instant::now();
        for (packets, who) in new {
            let (namespace, pod, cgroup) = match who {
                Some((n, p, c)) => (Some(n), Some(p), c),
                // The unknown-pod-cgroup counter, or a pod no longer in the index.
                None => (None, None, roots.clone()),
            };
            if self.mode == Mode::Observe {
                let matched_by = if namespace.is_some() {
                    "cgroup"
                } else {
                    "unknown-pod-cgroup"
                };
                let o = observed::Observation {
                    namespace,
                    pod,
                    endpoint: None,
                    sources: Vec::new(),
                    cgroup: Some(cgroup),
                    matched_by,
                    connections: packets,
                };
                let (labels, first, total) = lock(&self.observed_series).count(&o);
                self.own
                    .observed
                    .get_or_create(&vec![
                        ("namespace".to_owned(), labels.0),
                        ("pod".to_owned(), labels.1),
                        ("endpoint".to_owned(), labels.2),
                    ])
                    .inc_by(packets);
                observed::log(&o, first, total);
            } else {
                let e = DropEvent {
                    namespace,
                    pod,
                    sources: Vec::new(),
                    host: Some(drops::HostDrops { cgroup, packets }),
                    would_drop: self.dry_run,
                };
                let (n, p) = lock(&self.drop_series).labels(&e, now);
                self.drops_family()
                    .get_or_create(&vec![("namespace".to_owned(), n), ("pod".to_owned(), p)])
                    .inc_by(packets);
                for sink in &self.sinks {
                    sink.drops(&e);
                }
            }
        }
    }

    /// Whether the start-up taint may go: the table is in place (the agent installed
    /// it before anything else ran), the node's pods applied, the policies answered
    /// and applied (when watched).
    fn hand_off_ready(&self) -> bool {
        self.kube_pods_applied.load(Ordering::Relaxed)
            && (self.policies.is_none() || self.policies_applied.load(Ordering::Relaxed))
    }

    /// The node's pods: set elements and the proxy's pod index.
    fn apply_pods(&self, pods: PodIndex) -> Result<(), AgentError> {
        let _applying = lock(&self.applying);
        self.apply_pods_locked(pods)
    }

    /// [`Shared::apply_pods`], `applying` held: the allow set is the `--allow` pairs and
    /// (block and observe modes) the pairs of the pods the policies' subjects select.
    fn apply_pods_locked(&self, pods: PodIndex) -> Result<(), AgentError> {
        let mut allowed = pods::allowed_pairs(&pods, &self.allow);
        if self.mode != Mode::Proxy
            && let Some(rules) = &*lock(&self.policy_rules)
        {
            allowed.extend(pods::policy_pairs(&pods, rules));
            allowed.sort();
            allowed.dedup();
        }
        let known = pods.known_pairs();
        pods::log_issues(&pods);
        let (n_allowed, n_known) = (allowed.len(), known.len());
        let changes = lock(&self.enforcer).sync_pairs(allowed, known)?;
        self.own.allowed.set(n_allowed as i64);
        self.own.known.set(n_known as i64);
        if !changes.is_empty() {
            tracing::info!(
                added_known = changes.add_known.len(),
                removed_known = changes.remove_known.len(),
                added_allowed = changes.add_allowed.len(),
                removed_allowed = changes.remove_allowed.len(),
                "pods or policies changed: set elements changed"
            );
        }
        *lock(&self.pods) = pods.clone();
        if let Some(control) = &*lock(&self.control) {
            control.set_pods(pods);
        }
        // hostNetwork pods may have come or gone, or been selected.
        self.ensure_host();
        Ok(())
    }

    /// Reads the counters; drops since the last read go to `imdsguard_blocked_packets_total`.
    fn read_counters(&self) {
        let counters = match lock(&self.enforcer).counters() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the nft counters");
                return;
            }
        };
        let mut files = lock(&self.files);
        for c in counters {
            self.own
                .nft_packets
                .get_or_create(&vec![("counter".to_owned(), c.name.clone())])
                .set(i64::try_from(c.packets).unwrap_or(i64::MAX));
            let last = files.counters.insert(c.name.clone(), c.packets);
            if nft::counter::DROPS.contains(&c.name.as_str()) {
                // A table put back from scratch starts again from zero.
                let delta = match last {
                    Some(l) if c.packets >= l => c.packets - l,
                    _ => c.packets,
                };
                if delta > 0 {
                    self.metrics
                        .record_blocked_packets(drop_destination(&c.name), delta);
                }
            }
        }
    }

    /// The per-pod drops metric: `imdsguard_agent_drops_total`, or in a dry run
    /// `imdsguard_agent_would_drops_total` (nothing was dropped).
    fn drops_family(&self) -> &Family<Vec<(String, String)>, Counter> {
        if self.dry_run {
            &self.own.would_drops
        } else {
            &self.own.drops
        }
    }

    /// Reads the dropped sources; new drops (a dry run: would-drops) become one event per
    /// pod (sinks, metric).
    fn report_drops(&self) {
        if self.mode == Mode::Observe {
            return;
        }
        let sources = match lock(&self.enforcer).dropped_sources() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the dropped sources");
                return;
            }
        };
        let now = std::time::Instant::now();
        let label_set = |(namespace, pod): (String, String)| {
            vec![("namespace".to_owned(), namespace), ("pod".to_owned(), pod)]
        };
        let mut series = lock(&self.drop_series);
        for gone in series.expire(now) {
            self.drops_family().remove(&label_set(gone));
        }
        let new = lock(&self.drops).update(&sources);
        if new.is_empty() {
            return;
        }
        let events = drops::events(&lock(&self.pods), &new, self.dry_run);
        for e in &events {
            let labels = label_set(series.labels(e, now));
            self.drops_family()
                .get_or_create(&labels)
                .inc_by(e.packets());
            for sink in &self.sinks {
                sink.drops(e);
            }
        }
    }

    /// Observe mode: reads the observed connections; new ones are counted per pod and
    /// endpoint (metric) and logged, one record per pod and endpoint with new connections.
    fn report_observed(&self) {
        if self.mode != Mode::Observe {
            return;
        }
        let seen = match lock(&self.enforcer).observed_connections() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the observed connections");
                return;
            }
        };
        let label_set = |(namespace, pod, endpoint): (String, String, String)| {
            vec![
                ("namespace".to_owned(), namespace),
                ("pod".to_owned(), pod),
                ("endpoint".to_owned(), endpoint),
            ]
        };
        let pods = lock(&self.pods).clone();
        let mut series = lock(&self.observed_series);
        for gone in series.retain_pods(&pods) {
            self.own.observed.remove(&label_set(gone));
        }
        let new = lock(&self.observed).update(&seen);
        for o in observed::observations(&pods, &new) {
            let (labels, first, total) = series.count(&o);
            self.own
                .observed
                .get_or_create(&label_set(labels))
                .inc_by(o.connections);
            observed::log(&o, first, total);
        }
    }

    /// One periodic round (never file IO: the files have a task of their own).
    fn tick(&self, forced: bool) {
        self.ensure_table();
        if forced || self.kube_retry.load(Ordering::Relaxed) {
            self.apply_kube_pods();
        }
        if forced || self.policy_retry.load(Ordering::Relaxed) {
            self.apply_policies();
        }
        self.ensure_host();
        self.read_counters();
        self.report_drops();
        self.report_observed();
        self.report_host();
    }
}

/// A running agent. Dropping it stops the tasks; the table stays either way.
pub struct Agent {
    shared: Arc<Shared>,
    proxy: Option<Proxy>,
    admin: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// The pods and rules files' reloader (runs until aborted).
    follower: Option<JoinHandle<()>>,
    /// Reload requests ([`Agent::reloader`]).
    reload: mpsc::UnboundedSender<()>,
    /// `--kubernetes`: the watch (dropping it stops it).
    pod_watch: Option<imdsguard_kube::PodWatch>,
    /// `--kubernetes` without `--rules`: the `MetadataAccessPolicy` watch.
    policy_watch: Option<imdsguard_kube::policies::PolicyWatch>,
}

impl Agent {
    /// Installs the table (atomic replace, conntrack flushed), starts the proxy in
    /// proxy mode, the admin listener, the periodic task and the files' reloader. Needs
    /// a tokio runtime; runs `nft` in this process's network namespace. Drop events are
    /// logged ([`LogSink`]).
    pub async fn start(config: AgentConfig) -> Result<Agent, AgentError> {
        Agent::start_with_sinks(config, vec![Arc::new(LogSink)]).await
    }

    /// [`Agent::start`], drop events going to `sinks` (none: only the metric). With
    /// `kubernetes` the client comes from the environment (in-cluster service
    /// account, else kubeconfig) and the Events sink is added.
    pub async fn start_with_sinks(
        args: AgentConfig,
        sinks: Vec<Arc<dyn EventSink>>,
    ) -> Result<Agent, AgentError> {
        args.check()?;
        if args.kubernetes && args.pods.is_some() {
            return Err(AgentError::Usage(
                "--kubernetes and --pods do not go together".into(),
            ));
        }
        let client = match (args.kubernetes, &args.kubeconfig) {
            (true, Some(path)) => Some(
                imdsguard_kube::live::connect(Some(path), None)
                    .await?
                    .client,
            ),
            (true, None) => Some(imdsguard_kube::default_client().await?),
            (false, Some(_)) => {
                return Err(AgentError::Usage("--kubeconfig needs --kubernetes".into()));
            }
            (false, None) => None,
        };
        Agent::start_inner(args, sinks, client).await
    }

    /// [`Agent::start_with_sinks`] with `kubernetes` and this client (tests, embedding).
    pub async fn start_with_client(
        mut args: AgentConfig,
        sinks: Vec<Arc<dyn EventSink>>,
        client: imdsguard_kube::Client,
    ) -> Result<Agent, AgentError> {
        args.kubernetes = true;
        args.check()?;
        Agent::start_inner(args, sinks, Some(client)).await
    }

    async fn start_inner(
        args: AgentConfig,
        mut sinks: Vec<Arc<dyn EventSink>>,
        client: Option<imdsguard_kube::Client>,
    ) -> Result<Agent, AgentError> {
        let mut config = args.nft.config()?;
        config.dry_run = args.dry_run;
        config.validate().map_err(NodeError::from)?;
        let mode = config.mode;
        if config.dry_run {
            tracing::warn!(
                %mode,
                "dry run: the tables drop nothing; what {mode} mode would drop is let through and logged as a would-drop per pod{}",
                if mode == Mode::Proxy {
                    ", and the proxy forwards what it would deny (would-deny)"
                } else {
                    ""
                }
            );
        }
        // With --kubernetes the rules are the MetadataAccessPolicy objects, unless a
        // rules file is given (then no object is watched).
        let watch_policies = client.is_some() && args.rules.is_none();
        if client.is_some() && args.rules.is_some() {
            tracing::info!(
                "--rules FILE given with --kubernetes: the rules come from the file; MetadataAccessPolicy objects are not watched"
            );
        }
        let rules = match (&args.rules, mode) {
            (Some(path), _) => Some(imdsguard_proxy::read_rules(path, args.allow_empty_rules)?),
            (None, Mode::Proxy) if watch_policies => None,
            (None, Mode::Proxy) => {
                return Err(AgentError::Usage(
                    "proxy mode needs --rules FILE (the proxy's access rules), or --kubernetes (MetadataAccessPolicy objects)".into(),
                ));
            }
            (None, _) => None,
        };
        let mut pod_watch = None;
        let mut policy_watch = None;
        let mut pods_stamp = None;
        let mut kube_client = None;
        let node_pods = match (&args.pods, client) {
            (Some(_), Some(_)) => {
                return Err(AgentError::Usage(
                    "--kubernetes and --pods do not go together".into(),
                ));
            }
            (Some(path), None) => {
                let (pods, stamp) = imdsguard_proxy::read_pods(path, args.allow_empty_pods)?;
                pods_stamp = Some(stamp);
                pods
            }
            (None, Some(client)) => {
                let node = args
                    .node_name
                    .clone()
                    .filter(|n| !n.is_empty())
                    .ok_or_else(|| {
                        AgentError::Usage("--kubernetes needs --node-name (or NODE_NAME)".into())
                    })?;
                let mut w = imdsguard_kube::PodWatch::start(
                    client.clone(),
                    &node,
                    imdsguard_kube::InterfaceResolver::ip_route(),
                );
                let cloud = args.one_cloud("the MetadataAccessPolicy objects followed")?;
                let mut pw = watch_policies.then(|| {
                    imdsguard_kube::policies::PolicyWatch::start_for(client.clone(), cloud)
                });
                // Both first lists at once, each waited for up to the same time.
                let (first, _) = tokio::join!(
                    tokio::time::timeout(KUBE_INITIAL_LIST_TIMEOUT, w.initial()),
                    async {
                        if let Some(pw) = pw.as_mut() {
                            let _ = tokio::time::timeout(KUBE_INITIAL_LIST_TIMEOUT, pw.answered())
                                .await;
                        }
                    }
                );
                if let Some(pw) = &pw
                    && !pw.current().answered()
                {
                    tracing::warn!(
                        "the MetadataAccessPolicy objects are not listed yet: nothing is allowlisted by them until they are"
                    );
                }
                policy_watch = pw;
                let pods = match first {
                    Ok(Some(snapshot)) => kube::node_pods(&snapshot),
                    _ => {
                        tracing::warn!(
                            node = %node,
                            "the node's pods are not listed yet: starting with none (applied when the list comes)"
                        );
                        PodIndex::default()
                    }
                };
                let reporter = imdsguard_kube::EventReporter::start(
                    client.clone(),
                    &node,
                    &kube::endpoint_names(&config),
                    imdsguard_kube::events::DEFAULT_PERIOD,
                );
                sinks.push(Arc::new(kube::KubeEventSink::new(reporter, w.subscribe())));
                pod_watch = Some(w);
                kube_client = Some((client, node));
                pods
            }
            (None, None) => {
                if args
                    .nft
                    .allow
                    .iter()
                    .any(|a| matches!(a, AllowSpec::Pod { .. }))
                {
                    return Err(AgentError::Usage(
                        "--allow NAMESPACE/NAME needs --pods FILE or --kubernetes (pods with their interfaces)"
                            .into(),
                    ));
                }
                if mode == Mode::Proxy {
                    tracing::warn!(
                        "no --pods file: no pod is known, proxy mode drops every pod's traffic to the endpoints"
                    );
                }
                PodIndex::default()
            }
        };
        pods::log_issues(&node_pods);
        let initial_policies = policy_watch
            .as_ref()
            .map(imdsguard_kube::policies::PolicyWatch::current);
        // The rules in force: the file's, else the objects' (once listed).
        let initial_rules = match &rules {
            Some((r, _)) => Some(r.clone()),
            None => initial_policies.as_ref().and_then(|s| s.rules().cloned()),
        };
        let mut allowed = pods::allowed_pairs(&node_pods, &args.nft.allow);
        if mode != Mode::Proxy
            && let Some(rules) = &initial_rules
        {
            allowed.extend(pods::policy_pairs(&node_pods, rules));
            allowed.sort();
            allowed.dedup();
        }
        let known = node_pods.known_pairs();
        let metrics = Metrics::new();
        let own = AgentMetrics::register(&metrics);
        own.allowed.set(allowed.len() as i64);
        own.known.set(known.len() as i64);

        let mut enforcer = Enforcer::new(config.clone(), Exec::here())?
            .with_allowed(allowed)
            .with_known(known);
        let report = enforcer.install()?;
        for w in &report.conntrack.warnings {
            tracing::warn!(warning = %w, "conntrack");
        }
        own.enforcing.set(1);
        let host_state = host::Host::new(&args.cgroup_root, args.pod_uid.clone());
        if let Err(why) = &host_state.available {
            tracing::warn!(root = %args.cgroup_root.display(), reason = %why, "hostNetwork pods are not covered (no cgroup v2): the rest of the enforcement works");
        }

        let kube_pods_applied = pod_watch.as_ref().is_some_and(|w| w.current().is_some());
        let policies_applied = initial_policies.as_ref().is_some_and(PolicyState::answered);
        let taint = if kube_client.is_some() && args.remove_taint {
            TaintHandOff::Waiting
        } else {
            TaintHandOff::Off
        };
        let shared = Arc::new(Shared {
            enforcer: Mutex::new(enforcer),
            mode,
            dry_run: config.dry_run,
            allow: args.nft.allow.clone(),
            control: Mutex::new(None),
            metrics: metrics.clone(),
            own,
            files: Mutex::new(Files {
                counters: BTreeMap::new(),
            }),
            pods: Mutex::new(node_pods.clone()),
            drops: Mutex::new(drops::DropTracker::default()),
            drop_series: Mutex::new(drops::PodSeries::default()),
            observed: Mutex::new(observed::ObservedTracker::default()),
            host: Mutex::new(host_state),
            observed_series: Mutex::new(observed::ObservedSeries::default()),
            sinks,
            kube_pods: pod_watch.as_ref().map(imdsguard_kube::PodWatch::subscribe),
            kube_retry: AtomicBool::new(false),
            policies: policy_watch
                .as_ref()
                .map(imdsguard_kube::policies::PolicyWatch::subscribe),
            policy_rules: Mutex::new(initial_rules.clone()),
            refused_seen: Mutex::new(Default::default()),
            policy_retry: AtomicBool::new(false),
            applying: Mutex::new(()),
            kube_pods_applied: AtomicBool::new(kube_pods_applied),
            policies_applied: AtomicBool::new(policies_applied),
            progress: watch::channel(0).0,
            taint: Mutex::new(taint),
        });
        if let Some(state) = &initial_policies {
            shared.record_policies(state);
        }
        // The table's check and, when the objects are watched, the policies'.
        let nft_ready: imdsguard_proxy::ReadyCheck = {
            let shared = shared.clone();
            Arc::new(move || {
                let nft = shared.nft_ready();
                match (nft, shared.policies_ready()) {
                    (Ok(()), Ok(())) => Ok(()),
                    (Err(a), Ok(())) | (Ok(()), Err(a)) => Err(a),
                    (Err(a), Err(b)) => Err(format!("{a}; {b}")),
                }
            })
        };

        // The files followed: the pods file, and the rules file in proxy mode.
        let mut follower = FileFollower::new();
        if let Some(path) = &args.pods {
            follower = follower.pods(path, pods_stamp, args.allow_empty_pods);
        }
        if let (Some(path), Some((_, stamp))) = (&args.rules, &rules) {
            follower = follower.rules(path, Some(*stamp), args.allow_empty_rules);
        }

        let proxy_rules = match (rules, &initial_policies) {
            (Some((rules, _)), _) if mode == Mode::Proxy => Some(Some(rules)),
            (Some(_), _) => None,
            (None, Some(state)) if mode == Mode::Proxy => Some(match state {
                PolicyState::Synced(p) => Some(p.rules.clone()),
                PolicyState::NotInstalled { .. } => Some(AccessRules::default()),
                PolicyState::Pending { .. } => None,
            }),
            (None, _) => None,
        };
        let proxy = match proxy_rules {
            Some(rules) => {
                let listen = match (args.proxy_listen, config.proxy_v4, config.proxy_v6) {
                    (Some(l), _, _) => l,
                    (None, Some(a), _) => SocketAddr::V4(a),
                    (None, None, Some(a)) => SocketAddr::V6(a),
                    (None, None, None) => {
                        return Err(AgentError::Usage(
                            "proxy mode needs --proxy-address (or --proxy-listen)".into(),
                        ));
                    }
                };
                let mut pc =
                    ProxyConfig::for_cloud(args.proxy_cloud()?, listen, args.upstream.clone());
                pc.rules = rules;
                pc.allow_empty_rules = args.allow_empty_rules;
                pc.pods = node_pods.clone();
                pc.metrics = Some(metrics.clone());
                pc.ready_check = Some(nft_ready.clone());
                pc.dry_run = args.dry_run;
                // hostNetwork callers by their socket's cgroup, whether or not cgroup
                // v2 is there now: it may be mounted later, and the host table then
                // redirects pod-tree sockets here. Without it no socket is in a pod
                // cgroup: no caller is named a pod (fails closed), and only callers
                // from this host's addresses cost a lookup.
                pc.host_callers = Some(host_caller_config(&args.cgroup_root, &config));
                let proxy = Proxy::start(pc).await?;
                let control = proxy.control();
                let weak = Arc::downgrade(&shared);
                control.set_host_caller_source(Some(host::callers_source(
                    args.cgroup_root.clone(),
                    args.pod_uid.clone(),
                    move || {
                        let shared = weak.upgrade()?;
                        let pods = lock(&shared.pods).clone();
                        Some(pods)
                    },
                )));
                *lock(&shared.control) = Some(control);
                Some(proxy)
            }
            None => None,
        };
        // The host table, before anything else runs (the proxy has its map then).
        {
            let shared = shared.clone();
            let _ = tokio::task::spawn_blocking(move || {
                shared.ensure_host();
                // The counters' starting point.
                shared.report_host();
            })
            .await;
        }
        let readiness: Arc<dyn Fn() -> Readiness + Send + Sync> = match &proxy {
            // Proxy mode: the rules too, and how many are loaded.
            Some(p) => {
                let control = p.control();
                let shared = shared.clone();
                Arc::new(move || Readiness {
                    ready: control.readiness(),
                    summary: [control.summary(), shared.summary()]
                        .into_iter()
                        .filter(|s| !s.is_empty())
                        .collect::<Vec<_>>()
                        .join(", "),
                })
            }
            None => {
                let nft_ready = nft_ready.clone();
                let shared = shared.clone();
                Arc::new(move || Readiness {
                    ready: nft_ready(),
                    summary: shared.summary(),
                })
            }
        };

        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        let admin = match args.admin_listen {
            None => None,
            Some(addr) => {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| AgentError::Io {
                        what: format!("cannot listen on {addr}"),
                        source,
                    })?;
                let local = listener.local_addr().ok();
                let metrics = metrics.clone();
                let source = AdminSource::new(move || metrics.encode(), move || readiness());
                tasks.push(tokio::spawn(imdsguard_serve::admin::serve(
                    listener,
                    source,
                    stop_rx.clone(),
                )));
                local
            }
        };
        if let Some(rx) = shared.kube_pods.clone() {
            // A change between the first list and now is applied once more: harmless
            // (the set elements that differ are none).
            tasks.push(tokio::spawn(follow(
                shared.clone(),
                rx,
                stop_rx.clone(),
                Shared::apply_kube_pods,
            )));
        }
        if let Some(mut rx) = shared.policies.clone() {
            // The state at start was applied by the start itself.
            rx.mark_unchanged();
            tasks.push(tokio::spawn(follow(
                shared.clone(),
                rx,
                stop_rx.clone(),
                Shared::apply_policies,
            )));
        }
        if let Some((client, node)) = kube_client.filter(|_| args.remove_taint) {
            tasks.push(tokio::spawn(hand_off_taint(
                shared.clone(),
                client,
                node,
                stop_rx.clone(),
            )));
        }
        let interval = if args.check_interval.is_zero() {
            DEFAULT_CHECK_INTERVAL
        } else {
            args.check_interval
        };
        // A reload request goes to both the table check and the files' reloader, each
        // on a task of its own, so that neither waits for the other.
        let (reload, mut requests) = mpsc::unbounded_channel::<()>();
        let (tick_now, tick_asked) = mpsc::unbounded_channel();
        let (files_now, files_asked) = mpsc::unbounded_channel();
        tasks.push(tokio::spawn({
            let mut stop = stop_rx.clone();
            async move {
                loop {
                    tokio::select! {
                        r = requests.recv() => {
                            if r.is_none() {
                                return;
                            }
                        }
                        _ = imdsguard_serve::stopped(&mut stop) => return,
                    }
                    tracing::info!("reload requested: checking the table, reading the files");
                    let _ = tick_now.send(());
                    let _ = files_now.send(());
                }
            }
        }));
        tasks.push(tokio::spawn(periodic(
            shared.clone(),
            interval,
            tick_asked,
            stop_rx,
        )));
        let follower = follower.spawn(
            AgentFiles {
                shared: shared.clone(),
            },
            interval,
            files_asked,
        );
        tracing::info!(%mode, dry_run = args.dry_run, allowed = report.allowed, known = report.known, admin = ?admin, "agent running");
        Ok(Agent {
            shared,
            proxy,
            admin,
            stop,
            tasks,
            follower: Some(follower),
            reload,
            pod_watch,
            policy_watch,
        })
    }

    /// Where to send reload requests (what SIGHUP does for `imdsguard agent run`): each
    /// message runs a table check and reads the pods and rules files even if unchanged.
    pub fn reloader(&self) -> mpsc::UnboundedSender<()> {
        self.reload.clone()
    }

    /// The admin listener's address (with the real port when `:0` was asked for).
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// The proxy's listen address (proxy mode).
    pub fn proxy_addr(&self) -> Option<SocketAddr> {
        self.proxy.as_ref().map(Proxy::local_addr)
    }

    /// The mode enforced.
    pub fn mode(&self) -> Mode {
        self.shared.mode
    }

    /// The metrics (the proxy's registry, with the agent's own metrics).
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// Whether the table is in place and as built (what `/readyz` checks, besides the
    /// proxy's rules in proxy mode).
    pub fn nft_ready(&self) -> Result<(), String> {
        self.shared.nft_ready()
    }

    /// `--kubernetes`: the node's pods as last watched (`None` before the first list,
    /// or without `--kubernetes`).
    pub fn kube_pods(&self) -> Option<Arc<imdsguard_kube::Snapshot>> {
        self.pod_watch
            .as_ref()
            .and_then(imdsguard_kube::PodWatch::current)
    }

    /// `--kubernetes` without `--rules`: the `MetadataAccessPolicy` objects' state
    /// (`None` when they are not watched).
    pub fn policies(&self) -> Option<PolicyState> {
        self.policy_watch
            .as_ref()
            .map(imdsguard_kube::policies::PolicyWatch::current)
    }

    /// Where the start-up taint hand-off stands.
    pub fn taint(&self) -> TaintHandOff {
        lock(&self.shared.taint).clone()
    }

    /// Stops serving (admin, proxy, periodic task, reloader). The table stays.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(f) = self.follower.take() {
            f.abort();
        }
        self.pod_watch.take();
        self.policy_watch.take();
        if let Some(p) = self.proxy.take() {
            p.shutdown().await;
        }
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
        tracing::info!("agent stopped; inet imdsguard left in place");
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(f) = self.follower.take() {
            f.abort();
        }
    }
}

/// Where the files' reloader puts what it read: pods become set elements and the
/// proxy's pod index, rules the proxy's.
struct AgentFiles {
    shared: Arc<Shared>,
}

impl ReloadTarget for AgentFiles {
    async fn set_rules(&self, rules: AccessRules) -> Result<(), ApplyError> {
        if let Some(control) = &*lock(&self.shared.control) {
            control.set_rules(rules.clone());
        }
        // Block and observe modes: the pods the rules select are expected, allowlisted
        // and, when hostNetwork, accepted by the host table. Proxy mode: the proxy's map
        // is kept current. Off the runtime: `nft`.
        let shared = self.shared.clone();
        let applied = tokio::task::spawn_blocking(move || {
            let _applying = lock(&shared.applying);
            *lock(&shared.policy_rules) = Some(rules);
            if shared.mode == Mode::Proxy {
                shared.ensure_host();
                Ok(())
            } else {
                let pods = lock(&shared.pods).clone();
                shared.apply_pods_locked(pods)
            }
        })
        .await;
        match applied {
            Ok(applied) => applied.map_err(Into::into),
            Err(e) => Err(format!("applying the rules failed: {e}").into()),
        }
    }

    async fn set_pods(&self, pods: PodIndex) -> Result<(), ApplyError> {
        // Set elements change by `nft`: off the runtime.
        let shared = self.shared.clone();
        match tokio::task::spawn_blocking(move || shared.apply_pods(pods)).await {
            Ok(applied) => applied.map_err(Into::into),
            Err(e) => Err(format!("applying the pods failed: {e}").into()),
        }
    }

    fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }
}

/// How long the agent waits at start for the first list of the node's pods.
const KUBE_INITIAL_LIST_TIMEOUT: Duration = Duration::from_secs(30);

/// `--kubernetes`: runs `apply` (on a blocking thread) after each change of a watch's
/// value as it comes (event-driven: within the watch's latency, not the check
/// interval), until `stop` or the watch ends. Used for the pods' snapshots and the
/// policies' state.
async fn follow<T>(
    shared: Arc<Shared>,
    mut rx: watch::Receiver<T>,
    mut stop: watch::Receiver<bool>,
    apply: fn(&Shared),
) {
    loop {
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = stop.changed() => return,
        }
        let s = shared.clone();
        let _ = tokio::task::spawn_blocking(move || apply(&s)).await;
    }
}

/// The first and the longest pause between two tries of the taint's removal.
const TAINT_RETRY: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(30));

/// `--kubernetes`: once the table is in place and the node's pods (and the policies,
/// when watched) are applied, removes the start-up taint from this node, retrying
/// with backoff until it is gone (or absent); then ends.
async fn hand_off_taint(
    shared: Arc<Shared>,
    client: imdsguard_kube::Client,
    node: String,
    mut stop: watch::Receiver<bool>,
) {
    let mut progress = shared.progress.subscribe();
    while !shared.hand_off_ready() {
        tokio::select! {
            changed = progress.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = imdsguard_serve::stopped(&mut stop) => return,
        }
    }
    let mut pause = TAINT_RETRY.0;
    loop {
        match imdsguard_kube::taint::remove_taint(&client, &node).await {
            Ok(outcome) => {
                let state = match outcome {
                    imdsguard_kube::taint::TaintOutcome::Removed { removed, attempts } => {
                        tracing::info!(
                            node = %node,
                            taint = STARTUP_TAINT_KEY,
                            removed,
                            attempts,
                            "the table is in place: start-up taint removed from the node (pods may be scheduled here)"
                        );
                        TaintHandOff::Removed
                    }
                    imdsguard_kube::taint::TaintOutcome::Absent => {
                        tracing::info!(node = %node, taint = STARTUP_TAINT_KEY, "the node has no start-up taint: nothing to remove");
                        TaintHandOff::Absent
                    }
                };
                *lock(&shared.taint) = state;
                shared.own.taint_handoff.set(1);
                return;
            }
            Err(e) => {
                tracing::warn!(node = %node, error = %e, retry_in = ?pause, "could not remove the start-up taint");
                *lock(&shared.taint) = TaintHandOff::Failed(e.to_string());
            }
        }
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            _ = imdsguard_serve::stopped(&mut stop) => return,
        }
        pause = (pause * 2).min(TAINT_RETRY.1);
    }
}

/// Every `interval`, and on each reload request: one round of the table check,
/// counters and drops (the files are the [`FileFollower`]'s, so a file never holds up
/// the table check).
async fn periodic(
    shared: Arc<Shared>,
    interval: Duration,
    mut asked: mpsc::UnboundedReceiver<()>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let forced = tokio::select! {
            r = asked.recv() => r.is_some(),
            _ = tokio::time::sleep(interval) => false,
            _ = imdsguard_serve::stopped(&mut stop) => return,
        };
        let s = shared.clone();
        let _ = tokio::task::spawn_blocking(move || s.tick(forced)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults() {
        let c = AgentConfig::new(NftSettings::default());
        assert_eq!(
            c.admin_listen.map(|a| a.to_string()).as_deref(),
            Some(DEFAULT_ADMIN_LISTEN)
        );
        assert_eq!(c.check_interval, Duration::from_secs(5));
        assert_eq!(c.upstream.to_string(), imdsguard_proxy::DEFAULT_UPSTREAM);
        assert!(c.pods.is_none() && c.rules.is_none() && !c.kubernetes);
        let names = kube::endpoint_names(&c.nft.config().unwrap());
        assert!(names.contains("Azure IMDS"), "{names}");
        assert!(names.contains("Azure WireServer"), "{names}");
    }

    #[test]
    fn dry_run_is_for_block_and_proxy_modes() {
        let mut c = AgentConfig::new(NftSettings::default());
        assert!(!c.dry_run);
        c.check().unwrap();
        c.dry_run = true;
        c.nft.mode = Mode::Observe;
        let e = c.check().unwrap_err().to_string();
        assert!(e.contains("--dry-run is for block and proxy modes"), "{e}");
        assert!(
            e.contains("observe mode already lets everything through"),
            "{e}"
        );
        for mode in [Mode::Block, Mode::Proxy] {
            c.nft.mode = mode;
            c.check().unwrap();
        }
    }

    #[test]
    fn proxy_mode_serves_the_one_cloud_named() {
        let config = |mode: Mode, clouds: &[Cloud]| {
            AgentConfig::new(NftSettings {
                mode,
                clouds: clouds.to_vec(),
                proxy_address: Some("10.224.0.4:8169".parse().unwrap()),
                ..NftSettings::default()
            })
        };
        assert_eq!(
            config(Mode::Proxy, &[]).proxy_cloud().unwrap(),
            Cloud::Azure
        );
        for c in Cloud::ALL {
            let one = config(Mode::Proxy, &[c]);
            assert!(one.check().is_ok());
            assert_eq!(one.proxy_cloud().unwrap(), c);
        }
        let two = config(Mode::Proxy, &[Cloud::Aws, Cloud::Gcp]);
        let e = two.check().unwrap_err().to_string();
        assert!(e.contains("aws, gcp") && e.contains("one --cloud"), "{e}");
        // The same cloud twice is one.
        let again = config(Mode::Proxy, &[Cloud::Aws, Cloud::Gcp, Cloud::Aws]);
        assert!(again.check().is_err());
        assert!(
            config(Mode::Proxy, &[Cloud::Gcp, Cloud::Gcp])
                .check()
                .is_ok()
        );
        // Block mode protects several clouds' endpoints at once, with a rules file...
        let mut block = config(Mode::Block, &[Cloud::Aws, Cloud::Gcp]);
        assert!(block.check().is_ok());
        // ...but the MetadataAccessPolicy objects are one cloud's.
        block.kubernetes = true;
        block.node_name = Some("n".into());
        let e = block.check().unwrap_err().to_string();
        assert!(e.contains("MetadataAccessPolicy"), "{e}");
        block.rules = Some("rules.yaml".into());
        assert!(block.check().is_ok());
        let mut aws = config(Mode::Block, &[Cloud::Aws]);
        aws.kubernetes = true;
        assert_eq!(
            aws.one_cloud("the MetadataAccessPolicy objects followed")
                .unwrap(),
            Cloud::Aws
        );
    }

    #[test]
    fn the_upstream_gets_a_port() {
        let connect = |u: &str| Upstream::parse(u).unwrap().connect_addr();
        assert_eq!(connect("http://169.254.169.254"), "169.254.169.254:80");
        assert_eq!(connect("http://127.0.0.1:8169/"), "127.0.0.1:8169");
        assert_eq!(connect("http://[fd00:ec2::254]"), "[fd00:ec2::254]:80");
        assert!(Upstream::parse("https://x").is_err());
    }

    #[test]
    fn the_proxy_looks_up_host_callers_at_the_redirected_endpoints() {
        let mut c = nft::RulesetConfig::new(
            Mode::Proxy,
            &[
                imdsguard_core::target::Cloud::Azure,
                imdsguard_core::target::Cloud::Aws,
            ],
        );
        c.proxy_v4 = Some("10.224.0.4:8169".parse().unwrap());
        // No cgroup v2 there (yet): the lookup is configured all the same.
        let root = std::path::Path::new("/nonexistent/cgroup");
        let hc = host_caller_config(root, &c);
        assert_eq!(hc.cgroup_root, root);
        let v4: SocketAddr = "169.254.169.254:80".parse().unwrap();
        let v6: SocketAddr = "[fd00:ec2::254]:80".parse().unwrap();
        assert_eq!(
            hc.destinations,
            [v4],
            "no IPv6 proxy: IPv6 is not redirected"
        );
        c.proxy_v6 = Some("[fd00::4]:8169".parse().unwrap());
        let hc = host_caller_config(root, &c);
        assert!(hc.destinations.contains(&v4) && hc.destinations.contains(&v6));
        assert!(
            hc.destinations.iter().all(|d| d.port() == 80),
            "{:?}",
            hc.destinations
        );
    }

    #[test]
    fn drop_labels() {
        assert_eq!(
            drop_destination(nft::counter::SPOOFED),
            "protected-unknown-source"
        );
        assert_eq!(drop_destination(nft::counter::BLOCKED), "protected");
    }
}
