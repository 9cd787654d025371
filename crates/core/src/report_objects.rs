//! The audit as Kubernetes report objects: `wgpolicyk8s.io/v1alpha2` PolicyReport and
//! ClusterPolicyReport, or their successor `openreports.io/v1alpha1` Report and
//! ClusterReport (read by Kyverno and policy-reporter).
//!
//! [`build`] turns an audit [`Report`] into plain objects that serialize to what the CRDs
//! accept (the schemas of Kyverno's `config/crds/policyreport` and of
//! `openreports/reports-api`'s `config/crd`): one namespaced report per namespace with
//! workloads or findings, and one cluster-scoped report for the rest. Each verdict
//! (workload × target) is a result of the policy [`METADATA_ACCESS`]; each other finding
//! a result of the policy named by its id. Nothing here does IO: the caller passes the
//! time ([`Timestamp`]) and prints or applies the objects.
//!
//! Results:
//!
//! | verdict or finding | result | severity |
//! |---|---|---|
//! | workload reaches a target, not expected | `fail` | `high` |
//! | workload blocked, not expected | `pass` | `high` |
//! | expected access (`--rules`/`--preset`) reached | `pass` | `info` |
//! | expected access blocked | `warn` | `medium` |
//! | other finding | `fail` (high), `warn` (medium, low), `pass` (info) | its severity |
//!
//! Objects are sorted (namespaced reports by namespace, then the cluster report) and so
//! are their results, so the same audit at the same time gives the same bytes. A report
//! with more than [`ReportOptions::max_results`] results is split into parts
//! (`imdsguard-NS`, `imdsguard-NS-2`, ...) so that no object nears the API server's
//! request size limit.
//!
//! An audit of one namespace of a live cluster (`audit -n NS`,
//! [`ReportOptions::only_namespace`]) writes that namespace's report(s) alone: no other
//! namespace's and no cluster report, whose whole truth a one-namespace read does not
//! have (it would replace what a full run wrote).

use std::cmp::Reverse;
use std::collections::BTreeMap;

use serde::Serialize;

use crate::audit::{Finding, FindingKind, ObjectRef, Report, Severity, Verdict, WorkloadReport};
use crate::engine::PolicyRef;
use crate::generate::{MANAGED_BY, MANAGED_BY_LABEL};
use crate::model::Source;

/// The value of every result's `source` (and of an OpenReports report's `source`).
pub const SOURCE: &str = "imdsguard";

/// The policy of the verdict results: can this workload reach this target?
pub const METADATA_ACCESS: &str = "metadata-access";

/// The name of the cluster-scoped report; namespaced reports are `imdsguard-NAMESPACE`.
pub const REPORT_NAME: &str = "imdsguard";

/// Results per object by default: a result is 0.5 to 2 KiB of JSON, so an object stays
/// well below the API server's 3 MiB request limit (and etcd's 1.5 MiB value limit).
pub const DEFAULT_MAX_RESULTS: usize = 500;

/// Which report API to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReportFormat {
    /// `wgpolicyk8s.io/v1alpha2` PolicyReport / ClusterPolicyReport (Kubernetes Policy
    /// WG; Kyverno and policy-reporter read it).
    PolicyReport,
    /// `openreports.io/v1alpha1` Report / ClusterReport (the successor API).
    OpenReports,
}

/// One kind of report object: group, version, kind, plural, and whether it is namespaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReportKind {
    /// API group.
    pub group: &'static str,
    /// API version within the group.
    pub version: &'static str,
    /// Kind.
    pub kind: &'static str,
    /// Resource name (plural).
    pub plural: &'static str,
    /// Namespaced (true) or cluster-scoped.
    pub namespaced: bool,
}

impl ReportKind {
    /// `group/version`.
    pub fn api_version(&self) -> String {
        format!("{}/{}", self.group, self.version)
    }
}

impl ReportFormat {
    /// The namespaced kind.
    pub fn namespaced(self) -> ReportKind {
        match self {
            ReportFormat::PolicyReport => ReportKind {
                group: "wgpolicyk8s.io",
                version: "v1alpha2",
                kind: "PolicyReport",
                plural: "policyreports",
                namespaced: true,
            },
            ReportFormat::OpenReports => ReportKind {
                group: "openreports.io",
                version: "v1alpha1",
                kind: "Report",
                plural: "reports",
                namespaced: true,
            },
        }
    }

    /// The cluster-scoped kind.
    pub fn cluster(self) -> ReportKind {
        match self {
            ReportFormat::PolicyReport => ReportKind {
                group: "wgpolicyk8s.io",
                version: "v1alpha2",
                kind: "ClusterPolicyReport",
                plural: "clusterpolicyreports",
                namespaced: false,
            },
            ReportFormat::OpenReports => ReportKind {
                group: "openreports.io",
                version: "v1alpha1",
                kind: "ClusterReport",
                plural: "clusterreports",
                namespaced: false,
            },
        }
    }

    /// Both kinds, namespaced first.
    pub fn kinds(self) -> [ReportKind; 2] {
        [self.namespaced(), self.cluster()]
    }

    /// How to install the CRDs of this format, for error messages.
    pub fn install_hint(self) -> &'static str {
        match self {
            ReportFormat::PolicyReport => {
                "Kyverno's Helm chart (or its config/crds/policyreport/wgpolicyk8s.io_*.yaml) installs the wgpolicyk8s.io CRDs; see docs/reports.md"
            }
            ReportFormat::OpenReports => {
                "the openreports Helm chart or the install.yaml of an openreports/reports-api release (its config/crd/openreports.io_*.yaml) installs the openreports.io CRDs; see docs/reports.md"
            }
        }
    }
}

/// A point in time as the reports write it: seconds since the Unix epoch and nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Timestamp {
    /// Seconds since 1970-01-01T00:00:00Z.
    pub seconds: i64,
    /// Nanoseconds, 0..=999,999,999.
    pub nanos: i32,
}

/// What [`build`] needs besides the report.
#[derive(Debug, Clone)]
pub struct ReportOptions {
    /// Which API.
    pub format: ReportFormat,
    /// The time of every result.
    pub timestamp: Timestamp,
    /// Results per object at most (0 counts as 1).
    pub max_results: usize,
    /// A one-namespace audit (`audit -n NS` of a live cluster): only this namespace's
    /// report(s), no other namespace's and no cluster-scoped report. `None`: every
    /// namespace with workloads or findings, and the cluster report.
    pub only_namespace: Option<String>,
}

impl ReportOptions {
    /// Options with [`DEFAULT_MAX_RESULTS`].
    pub fn new(format: ReportFormat, timestamp: Timestamp) -> Self {
        ReportOptions {
            format,
            timestamp,
            max_results: DEFAULT_MAX_RESULTS,
            only_namespace: None,
        }
    }

    /// These options for a one-namespace audit ([`ReportOptions::only_namespace`]).
    pub fn for_namespace(mut self, namespace: impl Into<String>) -> Self {
        self.only_namespace = Some(namespace.into());
        self
    }

    /// Whether the run writes the cluster-scoped report (and so may replace and prune
    /// cluster-scoped reports): not for a one-namespace audit.
    pub fn writes_cluster_report(&self) -> bool {
        self.only_namespace.is_none()
    }
}

/// `corev1.ObjectReference`, the fields the reports use.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectReference {
    /// `group/version` (`v1` for the core group); left out when the kind's version is
    /// not known (ClusterNetworkPolicy exists at two).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// Kind.
    pub kind: String,
    /// Namespace; left out for cluster-scoped objects.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
}

/// The object metadata a report carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Metadata {
    /// Name.
    pub name: String,
    /// Namespace; none for the cluster-scoped report.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// `app.kubernetes.io/managed-by: imdsguard`.
    pub labels: BTreeMap<String, String>,
}

/// Counts of results by outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Summary {
    /// Checks met.
    pub pass: usize,
    /// Checks not met (a workload reaches a target, a high finding).
    pub fail: usize,
    /// Checks not met that weaken the protection or break workloads.
    pub warn: usize,
    /// Checks that could not be evaluated (none today).
    pub error: usize,
    /// Checks skipped (none today).
    pub skip: usize,
}

impl Summary {
    fn count(&mut self, r: Outcome) {
        match r {
            Outcome::Pass => self.pass += 1,
            Outcome::Fail => self.fail += 1,
            Outcome::Warn => self.warn += 1,
            Outcome::Error => self.error += 1,
            Outcome::Skip => self.skip += 1,
        }
    }

    /// All results counted.
    pub fn total(&self) -> usize {
        self.pass + self.fail + self.warn + self.error + self.skip
    }
}

/// A result's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Met.
    Pass,
    /// Not met.
    Fail,
    /// Not met, less serious.
    Warn,
    /// Not evaluated.
    Error,
    /// Skipped.
    Skip,
}

impl Outcome {
    /// The outcome of a finding of this severity: high fails, medium and low warn, info
    /// passes (it is for the record).
    pub fn of(severity: Severity) -> Outcome {
        match severity {
            Severity::High => Outcome::Fail,
            Severity::Medium | Severity::Low => Outcome::Warn,
            Severity::Info => Outcome::Pass,
        }
    }
}

/// One result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportResult {
    /// [`SOURCE`].
    pub source: &'static str,
    /// [`METADATA_ACCESS`] for verdicts, else the finding's id.
    pub policy: String,
    /// For verdicts, the target (`169.254.169.254:80/TCP`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// `Metadata access` or `Network policy`.
    pub category: &'static str,
    /// The audit's severity.
    pub severity: Severity,
    /// The outcome.
    pub result: Outcome,
    /// What was found, with the reason.
    pub message: String,
    /// The objects concerned: the workload, or the finding's objects.
    pub resources: Vec<ObjectReference>,
    /// Details as strings: target, tier, deciding object and rule, file and line, ...
    pub properties: BTreeMap<String, String>,
    /// When.
    pub timestamp: Timestamp,
}

/// One report object (PolicyReport, ClusterPolicyReport, Report or ClusterReport).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportObject {
    /// `wgpolicyk8s.io/v1alpha2` or `openreports.io/v1alpha1`.
    pub api_version: String,
    /// The kind.
    pub kind: &'static str,
    /// Name, namespace, labels.
    pub metadata: Metadata,
    /// OpenReports only: [`SOURCE`] (v1alpha2 has no such field at the top).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<&'static str>,
    /// The namespace, for a namespaced report.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<ObjectReference>,
    /// Counts of `results` by outcome.
    pub summary: Summary,
    /// The results.
    pub results: Vec<ReportResult>,
}

impl ReportObject {
    /// Its kind's description.
    pub fn report_kind(&self, format: ReportFormat) -> ReportKind {
        if self.metadata.namespace.is_some() {
            format.namespaced()
        } else {
            format.cluster()
        }
    }
}

/// The objects of one audit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportSet {
    /// The format.
    pub format: ReportFormat,
    /// Namespaced reports by namespace, then the cluster-scoped report(s).
    pub objects: Vec<ReportObject>,
}

impl ReportSet {
    /// Whether `(namespace, name)` of the given kind is one of this set's objects: what an
    /// `--apply` keeps when it deletes the reports an earlier run wrote.
    pub fn contains(&self, namespaced: bool, namespace: Option<&str>, name: &str) -> bool {
        self.objects.iter().any(|o| {
            o.metadata.namespace.is_some() == namespaced
                && o.metadata.namespace.as_deref() == namespace
                && o.metadata.name == name
        })
    }
}

/// The `apiVersion` of a kind the audit names, when it has one version.
fn api_version_of(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "Pod" | "Namespace" | "Node" | "ReplicationController" => "v1",
        "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet" => "apps/v1",
        "Job" | "CronJob" => "batch/v1",
        "NetworkPolicy" => "networking.k8s.io/v1",
        "AdminNetworkPolicy" | "BaselineAdminNetworkPolicy" => "policy.networking.k8s.io/v1alpha1",
        "CiliumNetworkPolicy" | "CiliumClusterwideNetworkPolicy" => "cilium.io/v2",
        "CiliumCIDRGroup" => "cilium.io/v2alpha1",
        "GlobalNetworkPolicy" | "GlobalNetworkSet" | "NetworkSet" | "Tier" => {
            "projectcalico.org/v3"
        }
        _ => return None,
    })
}

/// A reference from a kind (`Kind` or `Kind.group`, as the audit writes Calico's
/// namespaced NetworkPolicy), a namespace (empty: cluster-scoped) and a name.
fn reference(kind: &str, namespace: &str, name: &str) -> ObjectReference {
    let (kind, api_version) = match kind.split_once('.') {
        Some((k, "projectcalico.org")) => (k, Some("projectcalico.org/v3".to_string())),
        Some((k, group)) => (
            k,
            api_version_of(k)
                .filter(|v| v.starts_with(group))
                .map(String::from),
        ),
        None => (kind, api_version_of(kind).map(String::from)),
    };
    ObjectReference {
        api_version,
        kind: kind.to_string(),
        namespace: (!namespace.is_empty()).then(|| namespace.to_string()),
        name: name.to_string(),
    }
}

fn object_reference(o: &ObjectRef) -> ObjectReference {
    reference(&o.kind, &o.namespace, &o.name)
}

/// `Kind/name` or `Kind/namespace/name`.
fn policy_id(p: &PolicyRef) -> String {
    if p.namespace.is_empty() {
        format!("{}/{}", p.kind, p.name)
    } else {
        format!("{}/{}/{}", p.kind, p.namespace, p.name)
    }
}

/// Which category a finding kind belongs to.
fn category(kind: FindingKind) -> &'static str {
    match kind {
        FindingKind::WorkloadReachesTarget
        | FindingKind::ExpectedAccess
        | FindingKind::ExpectedBlocked
        | FindingKind::HostNetwork
        | FindingKind::NoPolicyEngine
        | FindingKind::AllowReopensTarget
        | FindingKind::NamespaceUnrestricted => "Metadata access",
        FindingKind::EgressRulesIgnored
        | FindingKind::NoDnsEgress
        | FindingKind::NodeLocalDnsCut
        | FindingKind::PolicySelectsNothing
        | FindingKind::NotEnforced
        | FindingKind::PriorityTie
        | FindingKind::UnknownPeer
        | FindingKind::BanpNotDefault
        | FindingKind::EngineAmbiguous
        | FindingKind::EngineUnknown
        | FindingKind::UnresolvedReference
        | FindingKind::MappedCidr
        | FindingKind::NamedPortWithNetworks => "Network policy",
    }
}

/// `file` and `line` of an object read from a manifest; nothing for one read from a
/// cluster (line 0: the live read names the cluster and object instead of a file).
fn put_source(properties: &mut BTreeMap<String, String>, s: &Source) {
    if s.line > 0 {
        properties.insert("file".into(), s.file.to_string());
        properties.insert("line".into(), s.line.to_string());
    }
}

/// The result of one verdict.
fn verdict_result(w: &WorkloadReport, v: &Verdict, timestamp: Timestamp) -> ReportResult {
    let target = v.target.to_string();
    // The named cloud's service (`--cloud`), else the one the address alone names.
    let service = v.service.or_else(|| v.target.service()).map(|s| s.label());
    let named = match service {
        Some(s) => format!("{target} ({s})"),
        None => target.clone(),
    };
    let id = w.id();
    let (kind, result, message) = match (v.reachable, v.expected) {
        (true, false) => (
            Some(FindingKind::WorkloadReachesTarget),
            Outcome::Fail,
            format!("{id} reaches {named}: {}", v.reason),
        ),
        (false, false) => (
            None,
            Outcome::Pass,
            format!("{id} cannot reach {named}: {}", v.reason),
        ),
        (true, true) => (
            Some(FindingKind::ExpectedAccess),
            Outcome::Pass,
            format!(
                "{id} reaches {named}, as the access rules expect ({}): {}",
                w.expected_by.join(", "),
                v.reason
            ),
        ),
        (false, true) => (
            Some(FindingKind::ExpectedBlocked),
            Outcome::Warn,
            format!(
                "{id} cannot reach {named}, which the access rules expect it to ({}): {}",
                w.expected_by.join(", "),
                v.reason
            ),
        ),
    };
    let severity = kind
        .unwrap_or(FindingKind::WorkloadReachesTarget)
        .severity();
    let mut properties = BTreeMap::new();
    let mut put = |k: &str, v: String| {
        properties.insert(k.to_string(), v);
    };
    put("target", target.clone());
    if let Some(s) = service {
        put("service", s.to_string());
    }
    put("reachable", v.reachable.to_string());
    put("policyAllowed", v.policy_allowed.to_string());
    put("tier", v.tier.to_string());
    if let Some(o) = &v.object {
        put("object", policy_id(o));
    }
    if let Some(r) = &v.rule {
        put("objectRule", r.clone());
    }
    if v.policy_count > 0 {
        put("policyCount", v.policy_count.to_string());
    }
    if w.host_network {
        put("hostNetwork", "true".into());
    }
    if !w.expected_by.is_empty() {
        put("expectedBy", w.expected_by.join(", "));
    }
    if let Some(k) = kind {
        put("finding", k.id().into());
    }
    put_source(&mut properties, &w.source);
    ReportResult {
        source: SOURCE,
        policy: METADATA_ACCESS.into(),
        rule: Some(target),
        category: category(FindingKind::WorkloadReachesTarget),
        severity,
        result,
        message,
        resources: vec![reference(&w.kind, &w.namespace, &w.name)],
        properties,
        timestamp,
    }
}

/// The result of one finding (not one the verdicts already say).
fn finding_result(f: &Finding, timestamp: Timestamp) -> ReportResult {
    let mut properties = BTreeMap::new();
    properties.insert("finding".to_string(), f.id.to_string());
    if !f.targets.is_empty() {
        let targets: Vec<String> = f.targets.iter().map(|t| t.to_string()).collect();
        properties.insert("targets".into(), targets.join(", "));
    }
    if let Some(d) = &f.decided_by {
        properties.insert("tier".into(), d.tier.to_string());
        if let Some(o) = &d.object {
            properties.insert("object".into(), policy_id(o));
        }
        if let Some(r) = &d.rule {
            properties.insert("objectRule".into(), r.clone());
        }
    }
    if let Some(s) = f.objects.iter().find_map(|o| o.source.as_ref()) {
        put_source(&mut properties, s);
    }
    ReportResult {
        source: SOURCE,
        policy: f.id.to_string(),
        rule: None,
        category: category(f.kind),
        severity: f.severity,
        result: Outcome::of(f.severity),
        message: f.message.clone(),
        resources: f.objects.iter().map(object_reference).collect(),
        properties,
        timestamp,
    }
}

/// The namespace whose report holds a finding: its first object's (a Namespace's own
/// name); none (the cluster report) for cluster-scoped objects and findings about none.
fn finding_namespace(f: &Finding) -> Option<&str> {
    let o = f.objects.first()?;
    if o.kind == "Namespace" {
        Some(&o.name)
    } else if o.namespace.is_empty() {
        None
    } else {
        Some(&o.namespace)
    }
}

/// Whether a finding repeats what a verdict result says.
fn is_verdict_finding(kind: FindingKind) -> bool {
    matches!(
        kind,
        FindingKind::WorkloadReachesTarget
            | FindingKind::ExpectedAccess
            | FindingKind::ExpectedBlocked
    )
}

/// The sort key of finding results: most severe first, then id, objects and message.
fn finding_key(r: &ReportResult) -> (Reverse<Severity>, &str, &[ObjectReference], &str) {
    (Reverse(r.severity), &r.policy, &r.resources, &r.message)
}

/// Builds the report objects of an audit (see the module docs).
pub fn build(report: &Report, opts: &ReportOptions) -> ReportSet {
    let ts = opts.timestamp;
    // Verdicts, grouped by namespace in the report's order (workloads are sorted).
    let mut verdicts: BTreeMap<&str, Vec<ReportResult>> = BTreeMap::new();
    for w in &report.workloads {
        let list = verdicts.entry(&w.namespace).or_default();
        list.extend(w.verdicts.iter().map(|v| verdict_result(w, v, ts)));
    }
    let mut findings: BTreeMap<Option<&str>, Vec<ReportResult>> = BTreeMap::new();
    for f in report
        .findings
        .iter()
        .filter(|f| !is_verdict_finding(f.kind))
    {
        findings
            .entry(finding_namespace(f))
            .or_default()
            .push(finding_result(f, ts));
    }
    for list in findings.values_mut() {
        list.sort_by(|a, b| finding_key(a).cmp(&finding_key(b)));
    }

    let mut namespaces: Vec<&str> = verdicts.keys().copied().collect();
    namespaces.extend(findings.keys().flatten().copied());
    namespaces.sort_unstable();
    namespaces.dedup();

    if let Some(only) = &opts.only_namespace {
        namespaces.retain(|ns| ns == only);
    }

    let mut objects = Vec::new();
    for ns in namespaces {
        let mut results = verdicts.remove(ns).unwrap_or_default();
        results.extend(findings.remove(&Some(ns)).unwrap_or_default());
        push_parts(&mut objects, opts, Some(ns), results);
    }
    if opts.writes_cluster_report() {
        let cluster = findings.remove(&None).unwrap_or_default();
        push_parts(&mut objects, opts, None, cluster);
    }
    ReportSet {
        format: opts.format,
        objects,
    }
}

/// Adds the report(s) of one namespace (or of the cluster, `None`): one object per
/// `max_results` results; the cluster report is written even when empty, so a re-run
/// clears results that no longer hold.
fn push_parts(
    out: &mut Vec<ReportObject>,
    opts: &ReportOptions,
    namespace: Option<&str>,
    results: Vec<ReportResult>,
) {
    let per = opts.max_results.max(1);
    let base = match namespace {
        Some(ns) => format!("{REPORT_NAME}-{ns}"),
        None => REPORT_NAME.to_string(),
    };
    let kind = match namespace {
        Some(_) => opts.format.namespaced(),
        None => opts.format.cluster(),
    };
    let mut chunks: Vec<Vec<ReportResult>> = Vec::new();
    let mut results = results.into_iter().peekable();
    while results.peek().is_some() {
        chunks.push(results.by_ref().take(per).collect());
    }
    if chunks.is_empty() {
        chunks.push(Vec::new());
    }
    for (i, results) in chunks.into_iter().enumerate() {
        let mut summary = Summary::default();
        for r in &results {
            summary.count(r.result);
        }
        out.push(ReportObject {
            api_version: kind.api_version(),
            kind: kind.kind,
            metadata: Metadata {
                name: if i == 0 {
                    base.clone()
                } else {
                    format!("{base}-{}", i + 1)
                },
                namespace: namespace.map(String::from),
                labels: BTreeMap::from([(MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string())]),
            },
            source: (opts.format == ReportFormat::OpenReports).then_some(SOURCE),
            scope: namespace.map(|ns| reference("Namespace", "", ns)),
            summary,
            results,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditOptions, audit};
    use crate::cluster::Cluster;
    use crate::manifest::parse;
    use crate::target::{Cloud, Target};

    const TS: Timestamp = Timestamp {
        seconds: 1_767_225_600,
        nanos: 5,
    };

    fn audited(yaml: &str, targets: Vec<Target>) -> Report {
        let loaded = parse("test.yaml", yaml);
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        let cluster = Cluster::build(loaded.objects);
        audit(
            &cluster,
            &AuditOptions {
                targets,
                engine: None,
                list_limit: Some(5),
                expected: None,
                signals: Default::default(),
            },
        )
    }

    const CLUSTER: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: api, namespace: payments}
spec:
  template:
    metadata: {labels: {app: api}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: worker, namespace: payments}
spec:
  template:
    metadata: {labels: {app: worker}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-imds, namespace: payments}
spec:
  podSelector: {matchLabels: {app: worker}}
  policyTypes: [Egress]
  egress:
  - to:
    - ipBlock: {cidr: 0.0.0.0/0, except: [169.254.169.254/32, 168.63.129.16/32]}
---
apiVersion: v1
kind: Pod
metadata: {name: tool, namespace: default}
spec:
  hostNetwork: true
---
apiVersion: policy.networking.k8s.io/v1alpha1
kind: AdminNetworkPolicy
metadata: {name: nothing}
spec:
  priority: 10
  subject: {namespaces: {matchLabels: {none: here}}}
  egress:
  - name: deny
    action: Deny
    to: [{networks: [169.254.169.254/32]}]
"#;

    fn objects(format: ReportFormat) -> ReportSet {
        build(
            &audited(CLUSTER, Cloud::Azure.targets()),
            &ReportOptions::new(format, TS),
        )
    }

    #[test]
    fn one_report_per_namespace_and_one_for_the_cluster() {
        let set = objects(ReportFormat::PolicyReport);
        let names: Vec<(Option<&str>, &str, &str)> = set
            .objects
            .iter()
            .map(|o| {
                (
                    o.metadata.namespace.as_deref(),
                    o.kind,
                    o.metadata.name.as_str(),
                )
            })
            .collect();
        assert_eq!(
            names,
            [
                (Some("default"), "PolicyReport", "imdsguard-default"),
                (Some("payments"), "PolicyReport", "imdsguard-payments"),
                (None, "ClusterPolicyReport", "imdsguard"),
            ]
        );
        for o in &set.objects {
            assert_eq!(o.api_version, "wgpolicyk8s.io/v1alpha2");
            assert_eq!(o.metadata.labels[MANAGED_BY_LABEL], "imdsguard");
            assert_eq!(o.source, None, "v1alpha2 has no top-level source");
            assert_eq!(o.summary.total(), o.results.len());
        }
        assert!(set.contains(true, Some("payments"), "imdsguard-payments"));
        assert!(!set.contains(false, Some("payments"), "imdsguard-payments"));
        assert!(set.contains(false, None, "imdsguard"));
    }

    #[test]
    fn reachable_fails_blocked_passes() {
        let set = objects(ReportFormat::PolicyReport);
        let payments = &set.objects[1];
        assert_eq!(
            payments.scope,
            Some(ObjectReference {
                api_version: Some("v1".into()),
                kind: "Namespace".into(),
                namespace: None,
                name: "payments".into(),
            })
        );
        let verdicts: Vec<(&str, &str, Outcome, Severity)> = payments
            .results
            .iter()
            .filter(|r| r.policy == METADATA_ACCESS)
            .map(|r| {
                (
                    r.resources[0].name.as_str(),
                    r.rule.as_deref().unwrap(),
                    r.result,
                    r.severity,
                )
            })
            .collect();
        assert_eq!(
            verdicts,
            [
                (
                    "api",
                    "169.254.169.254:80/TCP",
                    Outcome::Fail,
                    Severity::High
                ),
                ("api", "168.63.129.16:80/TCP", Outcome::Fail, Severity::High),
                (
                    "api",
                    "168.63.129.16:32526/TCP",
                    Outcome::Fail,
                    Severity::High
                ),
                (
                    "worker",
                    "169.254.169.254:80/TCP",
                    Outcome::Pass,
                    Severity::High
                ),
                (
                    "worker",
                    "168.63.129.16:80/TCP",
                    Outcome::Pass,
                    Severity::High
                ),
                (
                    "worker",
                    "168.63.129.16:32526/TCP",
                    Outcome::Pass,
                    Severity::High
                ),
            ]
        );
        let api = &payments.results[0];
        assert_eq!(
            api.resources,
            [ObjectReference {
                api_version: Some("apps/v1".into()),
                kind: "Deployment".into(),
                namespace: Some("payments".into()),
                name: "api".into(),
            }]
        );
        assert_eq!(api.properties["target"], "169.254.169.254:80/TCP");
        assert_eq!(api.properties["service"], "Azure IMDS");
        assert_eq!(api.properties["finding"], "workload-reaches-target");
        assert_eq!(api.properties["reachable"], "true");
        assert_eq!(api.properties["file"], "test.yaml");
        assert!(
            api.message.starts_with(
                "payments/api[Deployment] reaches 169.254.169.254:80/TCP (Azure IMDS): "
            ),
            "{}",
            api.message
        );
        let worker = &payments.results[3];
        assert_eq!(worker.properties["tier"], "networkpolicy");
        assert_eq!(
            worker.properties["object"],
            "NetworkPolicy/payments/deny-imds"
        );
        assert!(!worker.properties.contains_key("finding"));
        assert!(
            worker.message.contains("cannot reach"),
            "{}",
            worker.message
        );
        assert_eq!(api.timestamp, TS);
    }

    #[test]
    fn findings_go_where_their_first_object_lives() {
        let set = objects(ReportFormat::PolicyReport);
        let policies = |o: &ReportObject| -> Vec<(String, Outcome)> {
            o.results
                .iter()
                .filter(|r| r.policy != METADATA_ACCESS)
                .map(|r| (r.policy.clone(), r.result))
                .collect()
        };
        // The hostNetwork pod: high, so fail; the namespace open to new pods: warn.
        assert_eq!(
            policies(&set.objects[0]),
            [
                ("host-network".to_string(), Outcome::Fail),
                ("namespace-unrestricted".to_string(), Outcome::Warn),
            ]
        );
        let unrestricted = set.objects[0]
            .results
            .iter()
            .find(|r| r.policy == "namespace-unrestricted")
            .unwrap();
        assert_eq!(unrestricted.resources[0].kind, "Namespace");
        assert_eq!(unrestricted.resources[0].namespace, None);
        assert!(unrestricted.properties["targets"].contains("169.254.169.254:80/TCP"));
        // The AdminNetworkPolicy that selects nothing is cluster-scoped.
        let cluster = &set.objects[2];
        assert_eq!(cluster.scope, None);
        assert_eq!(
            policies(cluster),
            [("policy-selects-nothing".to_string(), Outcome::Warn)]
        );
        let anp = &cluster.results[0].resources[0];
        assert_eq!(
            anp.api_version.as_deref(),
            Some("policy.networking.k8s.io/v1alpha1")
        );
        assert_eq!(anp.namespace, None);
        assert_eq!(cluster.results[0].category, "Network policy");
        assert_eq!(cluster.summary.warn, 1);
        // Verdict findings are not repeated.
        for o in &set.objects {
            assert!(
                o.results
                    .iter()
                    .all(|r| r.policy != "workload-reaches-target")
            );
        }
    }

    #[test]
    fn summary_counts_outcomes() {
        let set = objects(ReportFormat::PolicyReport);
        let payments = &set.objects[1];
        let count = |o: Outcome| payments.results.iter().filter(|r| r.result == o).count();
        // api reaches the three targets, worker reaches none, and a new pod would.
        assert_eq!(
            (
                count(Outcome::Fail),
                count(Outcome::Pass),
                count(Outcome::Warn)
            ),
            (3, 3, 1)
        );
        assert_eq!(
            payments.summary,
            Summary {
                pass: 3,
                fail: 3,
                warn: 1,
                error: 0,
                skip: 0
            }
        );
    }

    #[test]
    fn openreports_have_a_top_level_source() {
        let set = objects(ReportFormat::OpenReports);
        let kinds: Vec<(&str, &str)> = set
            .objects
            .iter()
            .map(|o| (o.api_version.as_str(), o.kind))
            .collect();
        assert_eq!(
            kinds,
            [
                ("openreports.io/v1alpha1", "Report"),
                ("openreports.io/v1alpha1", "Report"),
                ("openreports.io/v1alpha1", "ClusterReport"),
            ]
        );
        assert!(set.objects.iter().all(|o| o.source == Some("imdsguard")));
        // Same results as the PolicyReport.
        let pr = objects(ReportFormat::PolicyReport);
        for (a, b) in set.objects.iter().zip(&pr.objects) {
            assert_eq!(a.results, b.results);
            assert_eq!(a.metadata, b.metadata);
        }
    }

    #[test]
    fn serialized_field_names_follow_the_crds() {
        let set = objects(ReportFormat::OpenReports);
        let v = serde_json::to_value(&set.objects[1]).unwrap();
        assert_eq!(v["apiVersion"], "openreports.io/v1alpha1");
        assert_eq!(v["kind"], "Report");
        assert_eq!(v["metadata"]["namespace"], "payments");
        assert_eq!(
            v["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "imdsguard"
        );
        assert_eq!(v["source"], "imdsguard");
        assert_eq!(v["scope"]["kind"], "Namespace");
        let r = &v["results"][0];
        assert_eq!(r["source"], "imdsguard");
        assert_eq!(r["policy"], "metadata-access");
        assert_eq!(r["result"], "fail");
        assert_eq!(r["severity"], "high");
        assert_eq!(r["resources"][0]["apiVersion"], "apps/v1");
        assert_eq!(r["timestamp"]["seconds"], 1_767_225_600_i64);
        assert_eq!(r["timestamp"]["nanos"], 5);
        assert!(
            r["properties"]
                .as_object()
                .unwrap()
                .values()
                .all(|p| p.is_string())
        );
        for k in ["pass", "fail", "warn", "error", "skip"] {
            assert!(v["summary"][k].is_u64(), "{k}");
        }
        let pr = objects(ReportFormat::PolicyReport);
        let v = serde_json::to_value(&pr.objects[1]).unwrap();
        assert!(v.get("source").is_none());
    }

    #[test]
    fn expected_access_passes_and_expected_blocked_warns() {
        let yaml = r#"
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: ama-logs, namespace: kube-system}
spec:
  template:
    metadata: {labels: {component: ama-logs-agent}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: csi, namespace: kube-system}
spec:
  template:
    metadata: {labels: {app: csi}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: kube-system}
spec:
  podSelector: {matchLabels: {app: csi}}
  policyTypes: [Egress]
"#;
        let rules = crate::access::AccessRules::parse(
            r#"
rules:
- name: monitoring
  subjects: [{namespace: kube-system, podSelector: {matchLabels: {component: ama-logs-agent}}}]
  paths: [/metadata/instance]
- name: csi
  subjects: [{namespace: kube-system, podSelector: {matchLabels: {app: csi}}}]
  paths: [/metadata/instance]
"#,
        )
        .expect("rules parse");
        let loaded = parse("t.yaml", yaml);
        let cluster = Cluster::build(loaded.objects);
        let report = audit(
            &cluster,
            &AuditOptions {
                targets: vec![crate::target::IMDS],
                engine: None,
                list_limit: Some(5),
                expected: Some(rules),
                signals: Default::default(),
            },
        );
        let set = build(&report, &ReportOptions::new(ReportFormat::PolicyReport, TS));
        let got: Vec<(&str, Outcome, Severity, &str)> = set.objects[0]
            .results
            .iter()
            .filter(|r| r.policy == METADATA_ACCESS)
            .map(|r| {
                (
                    r.resources[0].name.as_str(),
                    r.result,
                    r.severity,
                    r.properties["finding"].as_str(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("ama-logs", Outcome::Pass, Severity::Info, "expected-access"),
                ("csi", Outcome::Warn, Severity::Medium, "expected-blocked"),
            ]
        );
        assert_eq!(
            set.objects[0].results[0].properties["expectedBy"],
            "monitoring"
        );
    }

    #[test]
    fn large_reports_are_split_into_parts() {
        let report = audited(CLUSTER, Cloud::Azure.targets());
        let mut opts = ReportOptions::new(ReportFormat::PolicyReport, TS);
        opts.max_results = 4;
        let set = build(&report, &opts);
        let payments: Vec<&ReportObject> = set
            .objects
            .iter()
            .filter(|o| o.metadata.namespace.as_deref() == Some("payments"))
            .collect();
        let all = build(&report, &ReportOptions::new(ReportFormat::PolicyReport, TS));
        let whole = &all.objects[1];
        assert!(whole.results.len() > 4);
        let names: Vec<&str> = payments.iter().map(|o| o.metadata.name.as_str()).collect();
        let expected: Vec<String> = (0..whole.results.len().div_ceil(4))
            .map(|i| match i {
                0 => "imdsguard-payments".to_string(),
                i => format!("imdsguard-payments-{}", i + 1),
            })
            .collect();
        assert_eq!(names, expected);
        let joined: Vec<ReportResult> = payments.iter().flat_map(|o| o.results.clone()).collect();
        assert_eq!(joined, whole.results);
        for o in payments {
            assert!(o.results.len() <= 4);
            assert_eq!(o.summary.total(), o.results.len());
        }
    }

    #[test]
    fn a_one_namespace_audit_writes_that_namespaces_report_alone() {
        let report = audited(CLUSTER, Cloud::Azure.targets());
        let all = build(&report, &ReportOptions::new(ReportFormat::PolicyReport, TS));
        // The full run has other namespaces and the cluster report.
        assert!(all.objects.iter().any(|o| o.kind == "ClusterPolicyReport"));
        assert!(
            all.objects
                .iter()
                .any(|o| o.metadata.namespace.as_deref() == Some("default"))
        );
        let opts = ReportOptions::new(ReportFormat::PolicyReport, TS).for_namespace("payments");
        assert!(!opts.writes_cluster_report());
        let one = build(&report, &opts);
        let names: Vec<(&str, Option<&str>)> = one
            .objects
            .iter()
            .map(|o| (o.kind, o.metadata.namespace.as_deref()))
            .collect();
        assert_eq!(names, [("PolicyReport", Some("payments"))]);
        // The same report the full run writes for that namespace.
        let full_payments = all
            .objects
            .iter()
            .find(|o| o.metadata.namespace.as_deref() == Some("payments"))
            .unwrap();
        assert_eq!(&one.objects[0], full_payments);
        // A namespace without workloads or findings: nothing at all (a prune of that
        // namespace then removes an earlier report, as a full run would).
        let none = build(
            &report,
            &ReportOptions::new(ReportFormat::OpenReports, TS).for_namespace("elsewhere"),
        );
        assert!(none.objects.is_empty(), "{:?}", none.objects);
    }

    #[test]
    fn the_cluster_report_exists_when_empty() {
        let yaml = "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: a}\n";
        let set = build(
            &audited(yaml, vec![crate::target::IMDS]),
            &ReportOptions::new(ReportFormat::OpenReports, TS),
        );
        let last = set.objects.last().unwrap();
        assert_eq!(last.kind, "ClusterReport");
        assert!(last.results.is_empty());
        assert_eq!(last.summary, Summary::default());
        let v = serde_json::to_value(last).unwrap();
        assert_eq!(v["results"], serde_json::json!([]));
    }

    #[test]
    fn objects_read_from_a_cluster_have_no_file() {
        let mut report = audited(CLUSTER, Cloud::Azure.targets());
        for w in &mut report.workloads {
            w.source.line = 0;
        }
        let set = build(&report, &ReportOptions::new(ReportFormat::PolicyReport, TS));
        let api = &set.objects[1].results[0];
        assert_eq!(api.resources[0].name, "api");
        assert!(!api.properties.contains_key("file"), "{:?}", api.properties);
        assert!(!api.properties.contains_key("line"));
        assert_eq!(api.properties["target"], "169.254.169.254:80/TCP");
    }

    #[test]
    fn same_input_same_objects() {
        let a = objects(ReportFormat::PolicyReport);
        let b = objects(ReportFormat::PolicyReport);
        assert_eq!(
            serde_json::to_string(&a.objects).unwrap(),
            serde_json::to_string(&b.objects).unwrap()
        );
    }

    #[test]
    fn references_carry_api_versions() {
        assert_eq!(
            reference("NetworkPolicy.projectcalico.org", "ns", "p"),
            ObjectReference {
                api_version: Some("projectcalico.org/v3".into()),
                kind: "NetworkPolicy".into(),
                namespace: Some("ns".into()),
                name: "p".into(),
            }
        );
        assert_eq!(reference("ClusterNetworkPolicy", "", "c").api_version, None);
        assert_eq!(
            reference("CronJob", "b", "n").api_version.as_deref(),
            Some("batch/v1")
        );
        assert_eq!(reference("Widget", "", "w").api_version, None);
    }
}
