//! hostNetwork pods by cgroup: the host table (`inet imdsguard_host`, built by the core,
//! [`imdsguard_core::nft::host`], applied by [`imdsguard_node::host`]) kept in step with
//! the node's hostNetwork pods.
//!
//! On start and at every check (and when the pods or the rules change) the agent scans
//! the pod cgroups under the cgroup v2 mount ([`imdsguard_node::host::scan_pod_cgroups`]),
//! joins them with the pod index's hostNetwork pods by UID ([`guard`]: a pod is
//! *expected*, [`Expecting`], when `--allow NAMESPACE/NAME` names it or, in block and
//! observe modes, the access rules, the rules file or the `MetadataAccessPolicy`
//! objects, select it; in proxy mode the rules are the proxy's, as for other pods) and
//! applies the host table when the guard changed, a pod
//! directory's cgroup id changed, or the listing differs from what it builds. A load that
//! fails because a pod directory vanished between the scan and the load is retried once
//! after a rescan; any other failure keeps the table in place (never looser: a pod not
//! named yet is caught by the table's unknown-pod-cgroup rule in block and proxy modes).
//!
//! The table's per-pod counters are read every check ([`HostCounts`]): what a pod that is
//! not expected sent becomes drops (block and proxy modes) or observations (observe
//! mode), named by the pod, like other pods'. In proxy mode the proxy gets the cgroup id
//! → pod map ([`imdsguard_proxy::ProxyControl::set_host_callers`]) on every change.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use imdsguard_core::access::{AccessRules, PodShapeRef};
use imdsguard_core::cgroup::PodCgroup;
use imdsguard_core::nft::host::{HostCounters, HostGuard, HostPod, host_counter, valid_pod_name};
use imdsguard_core::nft::{Mode, RulesetConfig};
use imdsguard_core::pods::PodIndex;
use imdsguard_core::pods::PodInfo;
use imdsguard_node::host::{CgroupScan, scan_pod_cgroups};
use imdsguard_node::{AllowSpec, Exec, NodeError};
use imdsguard_proxy::HostCallerMap;

/// The cgroup v2 mount when none is given.
pub const DEFAULT_CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// What the host table is built from, and the proxy's map, from one scan.
#[derive(Debug, Clone, Default)]
pub struct Built {
    /// The guard.
    pub guard: HostGuard,
    /// Each named pod directory's cgroup id (a directory made again under the same name
    /// has another id: the table must be loaded again to match it).
    pub ids: Vec<(String, u64)>,
    /// cgroup id of each hostNetwork pod's directory → the pod (the proxy's map).
    pub callers: HostCallerMap,
    /// hostNetwork pods left out, and why (no UID, a name the table cannot write).
    pub skipped: Vec<String>,
}

/// The agent's own pod: the scanned directory of `own_uid` (`--pod-uid`) when given, else
/// what [`imdsguard_node::host::own_pod_cgroup`] finds (`/proc/self/cgroup`, or this
/// process's PID in the scanned pods' `cgroup.procs`).
pub fn own_pod(root: &Path, scan: &CgroupScan, own_uid: Option<&str>) -> Option<PodCgroup> {
    match own_uid {
        Some(uid) => {
            let uid = imdsguard_core::cgroup::canonical_uid(uid)?;
            scan.of_uid(&uid).next().map(|s| s.cgroup.clone())
        }
        None => imdsguard_node::host::own_pod_cgroup(root, scan)
            .filter(|own| scan.pods.iter().any(|s| s.cgroup == *own)),
    }
}

/// Which hostNetwork pods are expected: their sockets reach the endpoints the host
/// table guards directly (accepted; in proxy mode not redirected to the proxy either).
/// The same as for other pods: `--allow NAMESPACE/NAME` in every mode; the pods the
/// access rules select in block and observe modes (they are allowlisted there), never
/// in proxy mode (the rules are the proxy's: those pods reach IMDS through it, and
/// what it does not serve, WireServer, is dropped for them).
#[derive(Debug, Clone, Copy)]
pub struct Expecting<'a> {
    /// The agent's mode.
    pub mode: Mode,
    /// The access rules (the rules file or the `MetadataAccessPolicy` objects), if any.
    pub rules: Option<&'a AccessRules>,
    /// The agent's `--allow` entries (`IFACE=ADDR` ones name no pod).
    pub allow: &'a [AllowSpec],
}

impl Expecting<'_> {
    /// Nobody is expected (the proxy's map, which does not depend on it).
    pub const NOBODY: Expecting<'static> = Expecting {
        mode: Mode::Proxy,
        rules: None,
        allow: &[],
    };

    /// Whether `pod` is expected.
    pub fn expects(&self, pod: &PodInfo) -> bool {
        self.allow
            .iter()
            .any(|a| a.names_pod(&pod.namespace, &pod.name))
            || (self.mode != Mode::Proxy
                && self
                    .rules
                    .is_some_and(|r| !r.expecting(&PodShapeRef::of(pod)).is_empty()))
    }
}

/// Joins a scan with the hostNetwork pods of `pods` by UID: one [`HostPod`] per pod
/// directory found, expected as `expecting` says; `own` (the agent's own pod,
/// when it runs in one: [`own_pod`]) is never dropped or redirected.
pub fn guard(
    scan: &CgroupScan,
    pods: &PodIndex,
    expecting: Expecting<'_>,
    own: Option<PodCgroup>,
) -> Built {
    let mut built = Built {
        guard: HostGuard {
            roots: scan.roots.clone(),
            pods: Vec::new(),
            own,
        },
        ..Built::default()
    };
    for p in pods.host_network_pods() {
        let id = format!("{}/{}", p.info.namespace, p.info.name);
        let Some(uid) = p.uid.as_deref() else {
            built
                .skipped
                .push(format!("{id}: no UID (its cgroup cannot be found)"));
            continue;
        };
        if !valid_pod_name(&id) {
            built
                .skipped
                .push(format!("{id}: a name the host table cannot write"));
            continue;
        }
        if built.guard.own.as_ref().is_some_and(|o| o.uid == uid) {
            continue;
        }
        let expected = expecting.expects(&p.info);
        for s in scan.of_uid(uid) {
            built.guard.pods.push(HostPod {
                pod: id.clone(),
                cgroup: s.cgroup.clone(),
                expected,
            });
            built.ids.push((s.cgroup.path.clone(), s.id));
            built.callers.insert(s.id, p.info.clone());
        }
    }
    built
}

/// Where the hostNetwork coverage stands, for `/readyz`, the log and
/// `imdsguard_agent_host_guard{state}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Coverage {
    /// Not looked at yet.
    Starting,
    /// The host table is in place: `pods` pod directories named, `expected` of them
    /// expected.
    Guarded {
        /// Pod directories named.
        pods: usize,
        /// Expected ones.
        expected: usize,
    },
    /// No cgroup v2 at the root: hostNetwork pods are not covered (the rest works).
    NotCovered(String),
    /// The last apply failed; the table in place (if any) stays.
    Failed(String),
}

impl Coverage {
    /// The metric's `state` label.
    pub fn state(&self) -> &'static str {
        match self {
            Coverage::Starting => "starting",
            Coverage::Guarded { .. } => "guarded",
            Coverage::NotCovered(_) => "not-covered",
            Coverage::Failed(_) => "failed",
        }
    }

    /// Every state, for the gauge.
    pub const STATES: &'static [&'static str] = &["starting", "guarded", "not-covered", "failed"];
}

impl std::fmt::Display for Coverage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Coverage::Starting => write!(f, "hostNetwork pods: not looked at yet"),
            Coverage::Guarded { pods, expected } => write!(
                f,
                "hostNetwork pods guarded by cgroup: {pods} named ({expected} expected)"
            ),
            Coverage::NotCovered(why) => write!(f, "hostNetwork pods are not covered: {why}"),
            Coverage::Failed(why) => write!(
                f,
                "hostNetwork pods: the host table could not be applied (the previous one stays): {why}"
            ),
        }
    }
}

/// The host table's counters as last read, to tell what is new: by pod UID, and the
/// unknown-pod-cgroup counter.
#[derive(Debug, Clone, Default)]
pub struct HostCounts {
    last: BTreeMap<String, u64>,
    primed: bool,
}

/// The key of the unknown-pod-cgroup counter in [`HostCounts`].
const UNKNOWN_KEY: &str = "";

impl HostCounts {
    /// Whether a first reading was taken ([`HostCounts::prime`]).
    pub fn primed(&self) -> bool {
        self.primed
    }

    /// Takes `now` as the starting point without reporting it: the counters of a table
    /// the agent found in place (carried over across its restart) were reported by the
    /// agent before.
    pub fn prime(&mut self, now: &HostCounters) {
        self.update(now);
        self.primed = true;
    }

    /// The packets each counter counted since the previous call (UID, or `None` for the
    /// unknown-pod-cgroup counter), for those with new ones. A counter below its last
    /// value (the table rebuilt without it) counts in full; counters no longer listed are
    /// forgotten.
    pub fn update(&mut self, now: &HostCounters) -> Vec<(Option<String>, u64)> {
        let mut next = BTreeMap::new();
        let mut out = Vec::new();
        let unknown = now.get(host_counter::UNKNOWN_POD).packets;
        let all = now
            .pods
            .iter()
            .map(|p| (p.uid.clone(), p.packets))
            .chain(std::iter::once((UNKNOWN_KEY.to_owned(), unknown)));
        for (key, packets) in all {
            let delta = match self.last.get(&key) {
                Some(&l) if packets >= l => packets - l,
                _ => packets,
            };
            next.insert(key.clone(), packets);
            if delta > 0 {
                out.push(((!key.is_empty()).then_some(key), delta));
            }
        }
        self.last = next;
        out
    }
}

/// The IO of [`Host::ensure`]: the scan and `nft` ([`NftIo`]), or a stand-in in tests.
pub trait HostIo {
    /// The pod cgroups under `root` ([`scan_pod_cgroups`]).
    fn scan(&self, root: &Path) -> std::io::Result<CgroupScan>;
    /// What differs from the table `guard` gives ([`imdsguard_node::host::host_status`]).
    fn status(&self, guard: &HostGuard) -> Result<Option<Vec<String>>, NodeError>;
    /// Applies the table `guard` gives ([`imdsguard_node::host::install_host`]).
    fn install(&self, guard: &HostGuard) -> Result<(), NodeError>;
}

/// The real [`HostIo`]: the cgroup tree and `nft` through `exec`.
pub struct NftIo<'a> {
    /// Where `nft` runs.
    pub exec: &'a Exec,
    /// The agent's table configuration.
    pub config: &'a RulesetConfig,
}

impl HostIo for NftIo<'_> {
    fn scan(&self, root: &Path) -> std::io::Result<CgroupScan> {
        scan_pod_cgroups(root)
    }

    fn status(&self, guard: &HostGuard) -> Result<Option<Vec<String>>, NodeError> {
        imdsguard_node::host::host_status(self.exec, self.config, guard)
    }

    fn install(&self, guard: &HostGuard) -> Result<(), NodeError> {
        imdsguard_node::host::install_host(self.exec, self.config, guard)
    }
}

/// The hostNetwork coverage's state: the mount, what was applied, the counters.
#[derive(Debug)]
pub struct Host {
    /// The cgroup v2 mount.
    pub root: PathBuf,
    /// Whether cgroup v2 is mounted there (checked at start, and again while it is not).
    pub available: Result<(), String>,
    /// The agent's own pod UID (never dropped or redirected), when it runs in a pod.
    pub own_uid: Option<String>,
    /// What the table in place was built from (`None`: none applied by this agent yet).
    pub applied: Option<Built>,
    /// Where things stand.
    pub coverage: Coverage,
    /// The counters as last read.
    pub counts: HostCounts,
    /// The proxy's map as last given (to give it only on change).
    pub callers_given: Option<BTreeMap<u64, String>>,
}

impl Host {
    /// The coverage at `root`, checked now.
    pub fn new(root: &Path, own_uid: Option<String>) -> Host {
        let available = imdsguard_node::host::cgroup2_mounted(root);
        Host {
            root: root.to_path_buf(),
            coverage: match &available {
                Ok(()) => Coverage::Starting,
                Err(why) => Coverage::NotCovered(why.clone()),
            },
            available,
            own_uid,
            applied: None,
            counts: HostCounts::default(),
            callers_given: None,
        }
    }

    /// Scans and builds.
    fn scan(
        &self,
        io: &impl HostIo,
        pods: &PodIndex,
        expecting: Expecting<'_>,
    ) -> Result<Built, String> {
        let scan = io.scan(&self.root).map_err(|e| {
            format!(
                "scanning the pod cgroups under {}: {e}",
                self.root.display()
            )
        })?;
        let own = own_pod(&self.root, &scan, self.own_uid.as_deref());
        Ok(guard(&scan, pods, expecting, own))
    }

    /// Keeps the host table as `pods` and `expecting` want it (see the module): applies it
    /// when what it is built from changed or the listing differs, retrying once after a
    /// rescan when a pod directory vanished. Returns the kinds of repair made (for the
    /// metric), empty when nothing was applied.
    pub fn ensure(
        &mut self,
        exec: &Exec,
        config: &RulesetConfig,
        pods: &PodIndex,
        expecting: Expecting<'_>,
    ) -> Vec<&'static str> {
        self.ensure_with(&NftIo { exec, config }, pods, expecting)
    }

    /// [`Host::ensure`] through `io`.
    pub fn ensure_with(
        &mut self,
        io: &impl HostIo,
        pods: &PodIndex,
        expecting: Expecting<'_>,
    ) -> Vec<&'static str> {
        if self.available.is_err() {
            self.available = imdsguard_node::host::cgroup2_mounted(&self.root);
            match &self.available {
                Ok(()) => {
                    tracing::info!(root = %self.root.display(), "cgroup v2 is mounted now: guarding hostNetwork pods")
                }
                Err(why) => {
                    self.coverage = Coverage::NotCovered(why.clone());
                    return Vec::new();
                }
            }
        }
        for attempt in 0..2 {
            let built = match self.scan(io, pods, expecting) {
                Ok(b) => b,
                Err(why) => {
                    tracing::error!(error = %why, "hostNetwork pods: keeping the host table in place");
                    self.coverage = Coverage::Failed(why);
                    return Vec::new();
                }
            };
            let same = self
                .applied
                .as_ref()
                .is_some_and(|a| a.guard == built.guard && a.ids == built.ids);
            let why: Option<(&'static str, String)> = if !same {
                let what = if self.applied.is_none() {
                    "first"
                } else {
                    "pods"
                };
                Some((
                    what,
                    "the hostNetwork pods, their cgroups or the rules changed".into(),
                ))
            } else {
                match io.status(&built.guard) {
                    Ok(Some(d)) if d.is_empty() => None,
                    Ok(Some(d)) => Some(("rule", d.join("; "))),
                    Ok(None) => Some((
                        "missing",
                        "table inet imdsguard_host is not installed".into(),
                    )),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot list inet imdsguard_host");
                        return Vec::new();
                    }
                }
            };
            let Some((kind, reason)) = why else {
                self.set_guarded(&built);
                return Vec::new();
            };
            for s in &built.skipped {
                tracing::warn!(pod = %s, "hostNetwork pod left out of the host table");
            }
            match io.install(&built.guard) {
                Ok(()) => {
                    if kind != "first" && kind != "pods" {
                        tracing::warn!(differences = %reason, "inet imdsguard_host is not as the agent built it: putting it back");
                    }
                    tracing::info!(
                        pods = built.guard.pods.len(),
                        expected = built.guard.pods.iter().filter(|p| p.expected).count(),
                        roots = %built.guard.roots.join(","),
                        "inet imdsguard_host applied (hostNetwork pods by cgroup)"
                    );
                    self.set_guarded(&built);
                    self.applied = Some(built);
                    return match kind {
                        "rule" | "missing" => vec![kind],
                        _ => Vec::new(),
                    };
                }
                Err(e) if e.is_missing_cgroup() && attempt == 0 => {
                    tracing::info!(error = %e, "a pod cgroup went away while the host table was loaded: scanning again");
                }
                Err(e) => {
                    let why = host_error(&e);
                    tracing::error!(error = %why, "inet imdsguard_host not applied: the table in place stays");
                    self.coverage = Coverage::Failed(why);
                    return Vec::new();
                }
            }
        }
        Vec::new()
    }

    fn set_guarded(&mut self, built: &Built) {
        self.coverage = if built.guard.roots.is_empty() {
            // A container's own cgroup namespace, or a node without a kubelet.
            Coverage::NotCovered(format!(
                "no pod root (kubepods.slice, kubepods) under {}: not the node's cgroup hierarchy (mount the host's /sys/fs/cgroup there), or no kubelet has made one yet",
                self.root.display()
            ))
        } else {
            Coverage::Guarded {
                pods: built.guard.pods.len(),
                expected: built.guard.pods.iter().filter(|p| p.expected).count(),
            }
        };
    }

    /// The proxy's map, when it differs from the one last given.
    pub fn callers_changed(&mut self) -> Option<HostCallerMap> {
        let built = self.applied.as_ref()?;
        let key: BTreeMap<u64, String> = built
            .callers
            .iter()
            .map(|(id, p)| (*id, format!("{}/{}", p.namespace, p.name)))
            .collect();
        if self.callers_given.as_ref() == Some(&key) {
            return None;
        }
        self.callers_given = Some(key);
        Some(built.callers.clone())
    }

    /// Whether the pod `uid` is expected in the table in place.
    pub fn expected(&self, uid: &str) -> bool {
        self.applied.as_ref().is_some_and(|a| {
            a.guard
                .pods
                .iter()
                .any(|p| p.cgroup.uid == uid && p.expected)
        })
    }

    /// The cgroup directory of the pod `uid` in the table in place.
    pub fn cgroup_of(&self, uid: &str) -> Option<&PodCgroup> {
        self.applied
            .as_ref()?
            .guard
            .pods
            .iter()
            .find(|p| p.cgroup.uid == uid)
            .map(|p| &p.cgroup)
    }

    /// The pod roots of the table in place, for unknown-pod-cgroup drops.
    pub fn roots(&self) -> String {
        self.applied
            .as_ref()
            .map(|a| a.guard.roots.join(","))
            .unwrap_or_default()
    }
}

/// The proxy's map as a source it may call on a miss: a scan now, joined with the pods
/// `current` gives.
pub fn callers_source(
    root: PathBuf,
    own_uid: Option<String>,
    current: impl Fn() -> Option<PodIndex> + Send + Sync + 'static,
) -> imdsguard_proxy::HostCallerSource {
    Arc::new(move || {
        let Some(pods) = current() else {
            return HostCallerMap::new();
        };
        match scan_pod_cgroups(&root) {
            Ok(scan) => {
                let own = own_pod(&root, &scan, own_uid.as_deref());
                guard(&scan, &pods, Expecting::NOBODY, own).callers
            }
            Err(e) => {
                tracing::warn!(error = %e, "scanning the pod cgroups for the proxy");
                HostCallerMap::new()
            }
        }
    })
}

fn host_error(e: &NodeError) -> String {
    e.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use imdsguard_core::cgroup::pod_cgroup_paths;
    use imdsguard_core::nft::CounterValue;
    use imdsguard_core::nft::host::HostPodCount;
    use imdsguard_node::host::ScannedPod;

    const MON: &str = "0a1b2c3d-0000-4000-8000-0000000000a1";
    const DBG: &str = "0a1b2c3d-0000-4000-8000-0000000000b2";
    const OWN: &str = "0a1b2c3d-0000-4000-8000-0000000000c3";

    fn pods() -> PodIndex {
        PodIndex::parse(&format!(
            "
- {{namespace: monitoring, name: agent, hostNetwork: true, uid: {MON}, labels: {{app: monitoring}}}}
- {{namespace: debug, name: shell, hostNetwork: true, uid: {}}}
- {{namespace: kube-system, name: imdsguard, hostNetwork: true, uid: {OWN}}}
- {{ip: 10.244.0.11, namespace: shop, name: web, interface: azvweb}}
",
            DBG.to_uppercase()
        ))
        .unwrap()
    }

    fn scanned(uid: &str, class: usize, id: u64) -> ScannedPod {
        ScannedPod {
            cgroup: pod_cgroup_paths(uid)[class].clone(),
            id,
        }
    }

    fn scan() -> CgroupScan {
        CgroupScan {
            roots: vec!["kubepods.slice".into()],
            pods: vec![
                scanned(MON, 1, 11),
                scanned(DBG, 0, 22),
                scanned(OWN, 2, 33),
            ],
        }
    }

    fn block(rules: &AccessRules) -> Expecting<'_> {
        Expecting {
            mode: Mode::Block,
            rules: Some(rules),
            allow: &[],
        }
    }

    #[test]
    fn expected_as_other_pods_are_allowlisted() {
        let rules = AccessRules::parse(
            "rules:
  - name: monitoring
    subjects: [{namespace: monitoring}]
    paths: [/metadata/instance]
",
        )
        .unwrap();
        let allow = [
            imdsguard_node::parse_allow_spec("debug/shell").unwrap(),
            imdsguard_node::parse_allow_spec("azvx=10.244.0.9").unwrap(),
        ];
        let expected = |mode: Mode, allow: &[AllowSpec]| -> Vec<String> {
            let e = Expecting {
                mode,
                rules: Some(&rules),
                allow,
            };
            let b = guard(&scan(), &pods(), e, None);
            b.guard
                .pods
                .iter()
                .filter(|p| p.expected)
                .map(|p| p.pod.clone())
                .collect()
        };
        // Block and observe modes: the rules' pods and the --allow'ed ones.
        for mode in [Mode::Block, Mode::Observe] {
            assert_eq!(expected(mode, &[]), ["monitoring/agent"], "{mode}");
            assert_eq!(
                expected(mode, &allow),
                ["debug/shell", "monitoring/agent"],
                "{mode}"
            );
        }
        // Proxy mode: the rules are the proxy's (the monitoring pod reaches IMDS through
        // it, WireServer is dropped for it); only --allow sends a pod direct.
        assert!(expected(Mode::Proxy, &[]).is_empty());
        assert_eq!(expected(Mode::Proxy, &allow), ["debug/shell"]);
        let everyone = [imdsguard_node::parse_allow_spec("kube-system/*").unwrap()];
        assert_eq!(expected(Mode::Proxy, &everyone), ["kube-system/imdsguard"]);
        // The proxy's map does not depend on it.
        let nobody = guard(&scan(), &pods(), Expecting::NOBODY, None);
        assert_eq!(
            nobody.callers.len(),
            guard(&scan(), &pods(), block(&rules), None).callers.len()
        );
        assert!(nobody.guard.pods.iter().all(|p| !p.expected));
    }

    #[test]
    fn a_scan_joined_with_the_host_network_pods_by_uid() {
        let rules = AccessRules::parse(
            "rules:
  - name: monitoring
    subjects: [{namespace: monitoring, podSelector: {matchLabels: {app: monitoring}}}]
    paths: [/metadata/instance]
",
        )
        .unwrap();
        let own = own_pod(
            Path::new("/nonexistent"),
            &scan(),
            Some(&OWN.to_uppercase()),
        );
        assert_eq!(own.as_ref().map(|o| o.uid.as_str()), Some(OWN));
        let b = guard(&scan(), &pods(), block(&rules), own);
        let named: Vec<(&str, bool, &str)> = b
            .guard
            .pods
            .iter()
            .map(|p| (p.pod.as_str(), p.expected, p.cgroup.uid.as_str()))
            .collect();
        assert_eq!(
            named,
            [("debug/shell", false, DBG), ("monitoring/agent", true, MON)],
            "the own pod is not named; a UID in capitals is found"
        );
        assert_eq!(b.guard.own.as_ref().map(|o| o.uid.as_str()), Some(OWN));
        assert_eq!(b.guard.roots, ["kubepods.slice"]);
        assert_eq!(
            b.ids,
            [
                (b.guard.pods[0].cgroup.path.clone(), 22),
                (b.guard.pods[1].cgroup.path.clone(), 11)
            ]
        );
        assert_eq!(b.callers.len(), 2);
        assert_eq!(b.callers[&11].name, "agent");
        assert!(b.skipped.is_empty(), "{:?}", b.skipped);
        // A hostNetwork pod without a UID (from the API, never a pods file) is left out.
        let mut nouid = imdsguard_core::pods::NodePod::new(
            imdsguard_core::pods::PodInfo::new("debug", "nouid"),
            std::iter::empty(),
        );
        nouid.host_network = true;
        let with_nouid = PodIndex::from_pods(vec![nouid]);
        let b = guard(&scan(), &with_nouid, block(&rules), None);
        // The test process is in no pod: no own pod found.
        assert_eq!(own_pod(Path::new("/nonexistent"), &scan(), None), None);
        assert!(b.guard.pods.is_empty());
        assert_eq!(b.skipped.len(), 1, "{:?}", b.skipped);
        assert!(
            b.skipped[0].starts_with("debug/nouid: no UID"),
            "{:?}",
            b.skipped
        );
        // No rules: nobody is expected; no own pod: the agent's pod is an ordinary one.
        let none = guard(&scan(), &pods(), Expecting::NOBODY, None);
        assert!(none.guard.pods.iter().all(|p| !p.expected));
        assert_eq!(none.guard.pods.len(), 3);
        // A pod whose directory is not there (not started yet) is not named.
        let empty = guard(&CgroupScan::default(), &pods(), block(&rules), None);
        assert!(empty.guard.pods.is_empty() && empty.guard.roots.is_empty());
    }

    fn counters(unknown: u64, pods: &[(&str, u64)]) -> HostCounters {
        HostCounters {
            counters: vec![CounterValue {
                name: host_counter::UNKNOWN_POD.into(),
                packets: unknown,
                bytes: 0,
            }],
            pods: pods
                .iter()
                .map(|(uid, n)| HostPodCount {
                    uid: (*uid).into(),
                    pod: None,
                    packets: *n,
                    bytes: 0,
                })
                .collect(),
        }
    }

    #[test]
    fn only_new_packets_per_pod_counter() {
        let mut c = HostCounts::default();
        assert_eq!(
            c.update(&counters(0, &[(MON, 2), (DBG, 0)])),
            [(Some(MON.to_owned()), 2)]
        );
        assert!(c.update(&counters(0, &[(MON, 2), (DBG, 0)])).is_empty());
        assert_eq!(
            c.update(&counters(3, &[(MON, 2), (DBG, 5)])),
            [(Some(DBG.to_owned()), 5), (None, 3)]
        );
        // Rebuilt from zero: all new; gone: forgotten.
        assert_eq!(
            c.update(&counters(3, &[(DBG, 1)])),
            [(Some(DBG.to_owned()), 1)]
        );
        assert_eq!(
            c.update(&counters(3, &[(MON, 1)])),
            [(Some(MON.to_owned()), 1)]
        );
        assert!(!c.primed());
        // A table found in place at start: its counts are the starting point.
        let mut c = HostCounts::default();
        c.prime(&counters(7, &[(DBG, 40)]));
        assert!(c.primed());
        assert_eq!(
            c.update(&counters(7, &[(DBG, 41)])),
            [(Some(DBG.to_owned()), 1)]
        );
    }

    /// A node whose pod directories are `dirs` scan after scan (one list per scan; the
    /// last one stays) and whose `nft` fails with `failures` in turn (`None`: applied).
    struct FakeIo {
        scans: std::cell::RefCell<Vec<CgroupScan>>,
        failures: std::cell::RefCell<Vec<Option<&'static str>>>,
        installed: std::cell::RefCell<Vec<HostGuard>>,
    }

    impl FakeIo {
        fn new(scans: Vec<CgroupScan>, failures: Vec<Option<&'static str>>) -> FakeIo {
            FakeIo {
                scans: std::cell::RefCell::new(scans),
                failures: std::cell::RefCell::new(failures),
                installed: std::cell::RefCell::default(),
            }
        }
    }

    impl HostIo for FakeIo {
        fn scan(&self, _root: &Path) -> std::io::Result<CgroupScan> {
            let mut scans = self.scans.borrow_mut();
            Ok(if scans.len() > 1 {
                scans.remove(0)
            } else {
                scans[0].clone()
            })
        }

        fn status(&self, guard: &HostGuard) -> Result<Option<Vec<String>>, NodeError> {
            let installed = self.installed.borrow();
            Ok(installed.last().map(|g| {
                if g == guard {
                    Vec::new()
                } else {
                    vec!["differs".into()]
                }
            }))
        }

        fn install(&self, guard: &HostGuard) -> Result<(), NodeError> {
            let mut failures = self.failures.borrow_mut();
            match (!failures.is_empty()).then(|| failures.remove(0)).flatten() {
                Some(stderr) => Err(NodeError::Nft {
                    command: "nft -f -".into(),
                    status: Some(1),
                    stderr: stderr.into(),
                }),
                None => {
                    self.installed.borrow_mut().push(guard.clone());
                    Ok(())
                }
            }
        }
    }

    fn host() -> Host {
        Host {
            root: PathBuf::from("/nonexistent"),
            available: Ok(()),
            own_uid: None,
            applied: None,
            coverage: Coverage::Starting,
            counts: HostCounts::default(),
            callers_given: None,
        }
    }

    const VANISHED: &str = "Error: Could not process rule: No such file or directory";

    #[test]
    fn a_pod_directory_vanishing_during_the_load_is_rescanned_once() {
        let both = scan();
        let mut without_dbg = scan();
        without_dbg.pods.retain(|p| p.cgroup.uid != DBG);
        // debug/shell's directory is gone when nft loads the table: scanned again,
        // applied without it.
        let io = FakeIo::new(
            vec![both.clone(), without_dbg.clone()],
            vec![Some(VANISHED)],
        );
        let mut h = host();
        assert!(h.ensure_with(&io, &pods(), Expecting::NOBODY).is_empty());
        let installed = io.installed.borrow().clone();
        assert_eq!(installed.len(), 1);
        assert!(installed[0].pods.iter().all(|p| p.cgroup.uid != DBG));
        assert_eq!(
            h.coverage,
            Coverage::Guarded {
                pods: 2,
                expected: 0
            }
        );
        // Nothing changed: nothing applied.
        h.ensure_with(&io, &pods(), Expecting::NOBODY);
        assert_eq!(io.installed.borrow().len(), 1);

        // Vanishing twice in a row, or any other failure: the table in place stays and
        // the coverage says why.
        let io2 = FakeIo::new(vec![both.clone()], vec![Some(VANISHED), Some(VANISHED)]);
        *io2.installed.borrow_mut() = installed.clone();
        h.ensure_with(&io2, &pods(), Expecting::NOBODY);
        assert!(matches!(&h.coverage, Coverage::Failed(why) if why.contains("No such file")));
        assert_eq!(
            *io2.installed.borrow(),
            installed,
            "the previous table stays"
        );
        assert_eq!(h.applied.as_ref().unwrap().guard, installed[0]);
        let io3 = FakeIo::new(vec![both.clone()], vec![Some("Error: syntax error")]);
        h.ensure_with(&io3, &pods(), Expecting::NOBODY);
        assert!(matches!(&h.coverage, Coverage::Failed(why) if why.contains("syntax error")));
        assert!(
            io3.installed.borrow().is_empty(),
            "no retry for another failure"
        );
        // Then it works: applied, with debug/shell.
        let io4 = FakeIo::new(vec![both], vec![]);
        h.ensure_with(&io4, &pods(), Expecting::NOBODY);
        assert_eq!(io4.installed.borrow()[0].pods.len(), 3);
        assert_eq!(
            h.coverage,
            Coverage::Guarded {
                pods: 3,
                expected: 0
            }
        );
    }

    #[test]
    fn a_table_changed_by_hand_is_put_back() {
        let io = FakeIo::new(vec![scan()], vec![]);
        let mut h = host();
        assert!(
            h.ensure_with(&io, &pods(), Expecting::NOBODY).is_empty(),
            "the first apply"
        );
        // Someone edits the table: the listing differs from what the agent builds.
        io.installed.borrow_mut()[0].pods.pop();
        assert_eq!(h.ensure_with(&io, &pods(), Expecting::NOBODY), ["rule"]);
        assert_eq!(io.installed.borrow().len(), 2);
        // Someone deletes it.
        io.installed.borrow_mut().clear();
        assert_eq!(h.ensure_with(&io, &pods(), Expecting::NOBODY), ["missing"]);
    }

    #[test]
    fn coverage_words() {
        assert_eq!(
            Coverage::Guarded {
                pods: 2,
                expected: 1
            }
            .to_string(),
            "hostNetwork pods guarded by cgroup: 2 named (1 expected)"
        );
        let c = Coverage::NotCovered("nothing is mounted at /x".into());
        assert_eq!(c.state(), "not-covered");
        assert!(c.to_string().contains("not covered: nothing is mounted"));
        assert!(Coverage::STATES.contains(&Coverage::Starting.state()));
    }
}
