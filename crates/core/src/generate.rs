//! `imdsguard policy generate`, sans IO: from a cluster, the targets and the expected
//! access (an access-rules file, `docs/proxy.md`), the policy objects that deny the
//! targets to every pod except the expected ones, for one output engine, and the
//! warnings about what those objects cannot do.
//!
//! Every engine's objects deny *only* the targets (address, protocol, port) and leave
//! every other destination as it was: DNS, node-local DNS, pods, nodes and the other
//! ports of a target address stay open. How each engine is made to do that:
//!
//! - [`OutputEngine::NetworkPolicy`] (`networking.k8s.io/v1`, [`networkpolicy`]): one
//!   `imdsguard-deny-metadata` per namespace whose egress rules allow everything but
//!   the targets, plus `imdsguard-allow-metadata-<rule>` policies for the expected pods
//!   (NetworkPolicies add up, so an allow re-opens exactly what it names);
//! - [`OutputEngine::Cnp`] / [`OutputEngine::Anp`] (ClusterNetworkPolicy v1alpha2 in
//!   the Admin tier, AdminNetworkPolicy v1alpha1, [`admin`]): one Accept/Allow policy per
//!   expected subject at the lowest priority numbers, then one Deny policy for every pod;
//! - [`OutputEngine::Calico`] (`projectcalico.org/v3`, [`calico`]): a Tier `imdsguard`
//!   ordered before every other tier, Allow policies for the expected pods, then one
//!   policy that denies the targets and passes everything else to the next tier;
//! - [`OutputEngine::Cilium`] (`cilium.io/v2`, [`cilium`]): CiliumClusterwideNetworkPolicies
//!   with `egressDeny` whose endpoint selectors select every pod except the expected
//!   ones (a Cilium deny beats every allow, so exceptions come from the selection).
//!
//! For the cluster-scoped engines, the cluster plus the generated objects are then
//! evaluated with the engine that enforces them (`engine::Prepared::decide`, the
//! audit's composition): every pod shape that is not expected yet still reaches a
//! target is a `reopens-target` warning naming the deciding object and tier.
//!
//! The exceptions cover the instance metadata service only ([`is_expected_target`]:
//! 169.254.169.254:80 and AWS's and GCP's IPv6 addresses of it): the rules file says who
//! may reach IMDS, and the audit counts only that as expected access, so WireServer, the
//! EKS Pod Identity agent, ECS task metadata (and any other target) are denied to every
//! pod, the expected ones included.
//!
//! Objects come out in a stable order (allows before the denies they make exceptions
//! to, so that applying them in order never blocks an expected pod).

mod admin;
mod calico;
mod cilium;
mod complement;
mod networkpolicy;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::access::{AccessRules, PodShapeRef, Subject};
use crate::calico::CalicoObject;
use crate::cluster::Cluster;
use crate::engine::{Destination, Engine, EngineSettings, Prepared, Source};
use crate::model::{LabelSelector, Object, Operator, PodTemplate};
use crate::target::{Protocol, Target};

/// The label every generated object carries.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Its value.
pub const MANAGED_BY: &str = "imdsguard";
/// Annotation naming the generator and its version (`imdsguard 0.1.0`).
pub const GENERATED_BY_ANNOTATION: &str = "imdsguard.io/generated-by";
/// Annotation naming the rules the expected access came from (file or preset), or
/// `none`.
pub const RULES_ANNOTATION: &str = "imdsguard.io/rules";
/// Annotation naming the targets the object denies or allows.
pub const TARGETS_ANNOTATION: &str = "imdsguard.io/targets";

/// Name of the deny objects (namespaced NetworkPolicy, cluster-scoped kinds).
pub const DENY_NAME: &str = "imdsguard-deny-metadata";
/// Prefix of the allow objects, followed by the rule's name.
pub const ALLOW_PREFIX: &str = "imdsguard-allow-metadata-";

/// Which kind of policy to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputEngine {
    /// `networking.k8s.io/v1` NetworkPolicy, one set per namespace.
    NetworkPolicy,
    /// `policy.networking.k8s.io/v1alpha2` ClusterNetworkPolicy, Admin tier.
    Cnp,
    /// `policy.networking.k8s.io/v1alpha1` AdminNetworkPolicy.
    Anp,
    /// `projectcalico.org/v3` Tier and GlobalNetworkPolicies.
    Calico,
    /// `cilium.io/v2` CiliumClusterwideNetworkPolicy.
    Cilium,
}

impl OutputEngine {
    /// Every engine, in the order the CLI lists them.
    pub const ALL: [OutputEngine; 5] = [
        OutputEngine::NetworkPolicy,
        OutputEngine::Cnp,
        OutputEngine::Anp,
        OutputEngine::Calico,
        OutputEngine::Cilium,
    ];

    /// The CLI name (`networkpolicy`, `cnp`, `anp`, `calico`, `cilium`).
    pub fn as_str(self) -> &'static str {
        match self {
            OutputEngine::NetworkPolicy => "networkpolicy",
            OutputEngine::Cnp => "cnp",
            OutputEngine::Anp => "anp",
            OutputEngine::Calico => "calico",
            OutputEngine::Cilium => "cilium",
        }
    }
}

impl OutputEngine {
    /// Whether its objects can select pods by service account: Calico
    /// (`serviceAccountSelector`,
    /// <https://docs.tigera.io/calico/latest/reference/resources/globalnetworkpolicy#spec>)
    /// and Cilium (the `io.cilium.k8s.policy.serviceaccount` label of every pod's
    /// identity, <https://docs.cilium.io/en/stable/security/policy/kubernetes/#serviceaccounts>).
    /// NetworkPolicy, ClusterNetworkPolicy and AdminNetworkPolicy select pods by labels
    /// and namespaces only.
    pub fn selects_service_accounts(self) -> bool {
        matches!(self, OutputEngine::Calico | OutputEngine::Cilium)
    }

    /// The kind of policy it writes, for messages.
    pub fn policy_kind(self) -> &'static str {
        match self {
            OutputEngine::NetworkPolicy => "NetworkPolicy",
            OutputEngine::Cnp => "ClusterNetworkPolicy",
            OutputEngine::Anp => "AdminNetworkPolicy",
            OutputEngine::Calico => "Calico policy",
            OutputEngine::Cilium => "CiliumClusterwideNetworkPolicy",
        }
    }
}

impl fmt::Display for OutputEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An output engine name that is none of the known ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown output engine `{0}`: use networkpolicy, cnp, anp, calico or cilium")]
pub struct UnknownEngine(pub String);

impl FromStr for OutputEngine {
    type Err = UnknownEngine;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        OutputEngine::ALL
            .into_iter()
            .find(|e| e.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownEngine(s.to_owned()))
    }
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// The kind of policy.
    pub engine: OutputEngine,
    /// The endpoints to deny (address, port, protocol).
    pub targets: Vec<Target>,
    /// Who is expected to reach them: the subjects of these rules (namespaces, service
    /// accounts, pod label selector). `None`: nobody.
    pub expected: Option<AccessRules>,
    /// Where the rules came from (a file name or `preset aks`), for the annotation.
    pub rules_source: Option<String>,
}

/// The kinds of warnings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum WarningKind {
    /// An existing policy would still admit a target for pods that are not expected
    /// (NetworkPolicies add up).
    ReopensTarget,
    /// A hostNetwork workload: no pod-network policy applies to it.
    HostNetwork,
    /// A namespace only referenced in the input (not declared): the generated policy
    /// fails to apply until it exists.
    ImplicitNamespace,
    /// A subject that this kind of policy cannot express (service accounts in
    /// NetworkPolicy, ClusterNetworkPolicy, AdminNetworkPolicy): skipped, so its pods
    /// stay denied.
    SubjectNotExpressible,
    /// A subject names a namespace that is not in the input: no policy written there.
    NamespaceNotFound,
    /// Every pod of a namespace is egress-isolated by existing NetworkPolicies: no deny
    /// is written there (it would re-open what they close).
    NamespaceIsolated,
    /// A subject selects every pod: nothing is denied.
    EverythingExpected,
    /// What an engine does differently (Azure NPM and `endPort`, priority limits).
    EngineLimit,
    /// Rules were given but the instance metadata service is not among the targets:
    /// nobody is excepted.
    NoExpectedTarget,
}

impl WarningKind {
    /// The stable id (`reopens-target`, ...).
    pub fn id(self) -> &'static str {
        match self {
            WarningKind::ReopensTarget => "reopens-target",
            WarningKind::HostNetwork => "host-network",
            WarningKind::ImplicitNamespace => "implicit-namespace",
            WarningKind::SubjectNotExpressible => "subject-not-expressible",
            WarningKind::NamespaceNotFound => "namespace-not-found",
            WarningKind::NamespaceIsolated => "namespace-isolated",
            WarningKind::EverythingExpected => "everything-expected",
            WarningKind::EngineLimit => "engine-limit",
            WarningKind::NoExpectedTarget => "no-expected-target",
        }
    }
}

/// One warning about the generated objects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GenerateWarning {
    /// What kind.
    pub kind: WarningKind,
    /// What, where, and what to do.
    pub message: String,
}

impl fmt::Display for GenerateWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.id(), self.message)
    }
}

/// The generated objects and the warnings.
#[derive(Debug, Clone, Default)]
pub struct Generated {
    /// Kubernetes objects (apiVersion, kind, metadata, spec), in a stable order.
    pub objects: Vec<Value>,
    /// What the objects cannot do, and what to do about it.
    pub warnings: Vec<GenerateWarning>,
}

impl Generated {
    fn warn(&mut self, kind: WarningKind, message: String) {
        self.warnings.push(GenerateWarning { kind, message });
    }
}

/// Whether expected pods get an exception for this target: the rules file says who may
/// reach the instance metadata service (`docs/expected-access.md`): 169.254.169.254:80/TCP
/// (Azure IMDS, AWS IMDS, the GCE metadata server) and its IPv6 addresses on AWS
/// (`[fd00:ec2::254]:80`) and GCP (`[fd20:ce::254]:80`) ([`Target::is_instance_metadata`]),
/// so only those are excepted, as the audit counts only them as expected access;
/// WireServer, the EKS Pod Identity agent, ECS task metadata and every other target stay
/// denied to every pod.
pub fn is_expected_target(t: &Target) -> bool {
    t.is_instance_metadata()
}

/// Generates the objects for `opts.engine`.
pub fn generate(cluster: &Cluster, opts: &GenerateOptions) -> Generated {
    let ctx = Context::new(cluster, opts);
    let mut out = Generated::default();
    if ctx.addrs.is_empty() {
        out.warn(
            WarningKind::EverythingExpected,
            "no targets: nothing to deny".into(),
        );
        return out;
    }
    if !ctx.subjects.is_empty() && ctx.excepted.is_empty() {
        out.warn(
            WarningKind::NoExpectedTarget,
            "the rules say who may reach the instance metadata service (169.254.169.254:80/TCP, or [fd00:ec2::254]:80 or [fd20:ce::254]:80), which is not among the targets: every pod is denied every target, no exception written".into(),
        );
    }
    match opts.engine {
        OutputEngine::NetworkPolicy => networkpolicy::generate(&ctx, &mut out),
        OutputEngine::Cnp | OutputEngine::Anp => admin::generate(&ctx, opts.engine, &mut out),
        OutputEngine::Calico => calico::generate(&ctx, &mut out),
        OutputEngine::Cilium => cilium::generate(&ctx, &mut out),
    }
    if opts.engine != OutputEngine::NetworkPolicy {
        // NetworkPolicy output words this itself (`networkpolicy::reopening_warnings`).
        reopens_warnings(&ctx, &mut out);
    }
    host_network_warnings(&ctx, &mut out);
    out
}

/// A target address and its target (protocol, port) pairs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TargetAddr {
    pub ip: IpAddr,
    pub ports: BTreeSet<(Protocol, u16)>,
}

impl TargetAddr {
    /// `ip/32` or `ip/128`.
    pub fn cidr(&self) -> String {
        host_cidr(self.ip)
    }

    /// The target ports of one protocol, sorted.
    pub fn ports_of(&self, p: Protocol) -> Vec<u16> {
        self.ports
            .iter()
            .filter(|(q, _)| *q == p)
            .map(|(_, n)| *n)
            .collect()
    }

    /// The protocols with target ports, sorted.
    pub fn protocols(&self) -> Vec<Protocol> {
        let mut v: Vec<Protocol> = self.ports.iter().map(|(p, _)| *p).collect();
        v.dedup();
        v
    }
}

/// `ip/32` or `ip/128`.
pub(crate) fn host_cidr(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(_) => format!("{ip}/32"),
        IpAddr::V6(_) => format!("{ip}/128"),
    }
}

/// One expected subject: the rule it belongs to and the subject.
#[derive(Debug, Clone)]
pub(crate) struct ExpectedSubject<'a> {
    /// The rule's name.
    pub rule: &'a str,
    /// Index of the subject in the rule, and how many subjects the rule has.
    pub index: usize,
    pub count: usize,
    pub subject: &'a Subject,
    /// The rule's name as a DNS-1123 label, unique among the rules ([`unique_labels`]).
    pub label: String,
}

impl ExpectedSubject<'_> {
    /// `allow-metadata-<rule>` or `allow-metadata-<rule>-<i>` when the rule has several
    /// subjects, as a DNS-1123 name.
    pub fn object_name(&self) -> String {
        let base = format!("{ALLOW_PREFIX}{}", self.label);
        if self.count > 1 {
            format!("{base}-{}", self.index)
        } else {
            base
        }
    }

    /// The namespaces it names; `None` for any namespace (`*` or none given).
    pub fn namespaces(&self) -> Option<&[String]> {
        let ns = &self.subject.namespaces;
        (!ns.is_empty() && !ns.iter().any(|n| n == "*")).then_some(ns.as_slice())
    }

    /// The service accounts it names; `None` for any.
    pub fn service_accounts(&self) -> Option<&[String]> {
        let sa = &self.subject.service_accounts;
        (!sa.is_empty() && !sa.iter().any(|n| n == "*")).then_some(sa.as_slice())
    }

    /// Whether `engine`'s objects can select the subject's pods: every subject for the
    /// engines that select by service account (Calico's `serviceAccountSelector`,
    /// Cilium's `io.cilium.k8s.policy.serviceaccount` identity label), only those naming
    /// no service account for the others.
    pub fn expressible_in(&self, engine: OutputEngine) -> bool {
        engine.selects_service_accounts() || self.service_accounts().is_none()
    }

    /// `rule <name>` or `rule <name>, subject <i>`.
    pub fn describe(&self) -> String {
        if self.count > 1 {
            format!("rule `{}`, subject {}", self.rule, self.index)
        } else {
            format!("rule `{}`", self.rule)
        }
    }
}

/// What every engine's generator reads.
pub(crate) struct Context<'a> {
    pub cluster: &'a Cluster,
    pub opts: &'a GenerateOptions,
    /// Target addresses in address order (IPv4 first).
    pub addrs: Vec<TargetAddr>,
    /// The targets expected pods get an exception for ([`is_expected_target`]), by
    /// address; empty when there are no subjects.
    pub excepted: Vec<TargetAddr>,
    /// Expected subjects in rule order.
    pub subjects: Vec<ExpectedSubject<'a>>,
}

impl<'a> Context<'a> {
    fn new(cluster: &'a Cluster, opts: &'a GenerateOptions) -> Self {
        let by_address = |keep: &dyn Fn(&Target) -> bool| -> Vec<TargetAddr> {
            let mut by_ip: BTreeMap<IpAddr, BTreeSet<(Protocol, u16)>> = BTreeMap::new();
            for t in opts.targets.iter().filter(|t| keep(t)) {
                by_ip.entry(t.ip).or_default().insert((t.protocol, t.port));
            }
            by_ip
                .into_iter()
                .map(|(ip, ports)| TargetAddr { ip, ports })
                .collect()
        };
        let addrs = by_address(&|_| true);
        let labels = unique_labels(
            opts.expected
                .iter()
                .flat_map(|r| r.rules())
                .map(|r| &*r.name),
        );
        let subjects: Vec<ExpectedSubject<'a>> = opts
            .expected
            .iter()
            .flat_map(|r| r.rules())
            .flat_map(|rule| {
                let count = rule.subjects.len();
                let label = labels[&*rule.name].clone();
                rule.subjects
                    .iter()
                    .enumerate()
                    .map(move |(index, subject)| ExpectedSubject {
                        rule: &rule.name,
                        index,
                        count,
                        subject,
                        label: label.clone(),
                    })
            })
            .collect();
        let excepted = if !subjects.is_empty() {
            by_address(&is_expected_target)
        } else {
            Vec::new()
        };
        Context {
            cluster,
            opts,
            addrs,
            excepted,
            subjects,
        }
    }

    /// Whether pods of this shape in `namespace` are expected to reach the targets, by a
    /// subject the output engine can express (a subject naming service accounts is
    /// skipped by NetworkPolicy, ClusterNetworkPolicy and AdminNetworkPolicy, so its
    /// pods stay denied there).
    pub fn expected(&self, namespace: &str, template: &PodTemplate) -> bool {
        let shape = PodShapeRef {
            namespace,
            labels: &template.labels,
            service_account: Some(&template.service_account),
        };
        self.subjects
            .iter()
            .any(|s| s.expressible_in(self.opts.engine) && s.subject.matches_shape(&shape))
    }

    /// `metadata` of a generated object.
    pub fn metadata(&self, name: &str, namespace: Option<&str>, targets: &[&TargetAddr]) -> Value {
        let mut m = Map::new();
        m.insert("name".into(), json!(name));
        if let Some(ns) = namespace {
            m.insert("namespace".into(), json!(ns));
        }
        m.insert("labels".into(), json!({ MANAGED_BY_LABEL: MANAGED_BY }));
        let targets: Vec<String> = targets
            .iter()
            .flat_map(|a| {
                a.ports
                    .iter()
                    .map(|(p, n)| Target::new(a.ip, *n, *p).to_string())
            })
            .collect();
        m.insert(
            "annotations".into(),
            json!({
                GENERATED_BY_ANNOTATION: format!("imdsguard {}", env!("CARGO_PKG_VERSION")),
                RULES_ANNOTATION: self.opts.rules_source.as_deref().unwrap_or("none"),
                TARGETS_ANNOTATION: targets.join(", "),
            }),
        );
        Value::Object(m)
    }

    /// Every target address.
    pub fn all_addrs(&self) -> Vec<&TargetAddr> {
        self.addrs.iter().collect()
    }

    /// The target addresses expected pods get an exception for.
    pub fn excepted_addrs(&self) -> Vec<&TargetAddr> {
        self.excepted.iter().collect()
    }

    /// The targets, with the excepted ones left out: what every pod is denied.
    pub fn never_excepted(&self) -> Vec<TargetAddr> {
        self.addrs
            .iter()
            .filter_map(|a| {
                let ports: BTreeSet<(Protocol, u16)> = a
                    .ports
                    .iter()
                    .filter(|p| {
                        !self
                            .excepted
                            .iter()
                            .any(|e| e.ip == a.ip && e.ports.contains(p))
                    })
                    .copied()
                    .collect();
                (!ports.is_empty()).then_some(TargetAddr { ip: a.ip, ports })
            })
            .collect()
    }

    /// Whether the target is one expected pods get an exception for.
    pub fn is_excepted(&self, t: &Target) -> bool {
        self.excepted
            .iter()
            .any(|e| e.ip == t.ip && e.ports.contains(&(t.protocol, t.port)))
    }
}

/// A label selector as the Kubernetes API writes it (`{}` for everything).
pub(crate) fn selector_json(s: &LabelSelector) -> Value {
    let mut m = Map::new();
    if !s.match_labels.is_empty() {
        m.insert("matchLabels".into(), json!(s.match_labels));
    }
    if !s.match_expressions.is_empty() {
        let exprs: Vec<Value> = s
            .match_expressions
            .iter()
            .map(|r| {
                let mut e = Map::new();
                e.insert("key".into(), json!(r.key));
                e.insert("operator".into(), json!(operator_name(r.operator)));
                if !r.values.is_empty() {
                    e.insert("values".into(), json!(r.values));
                }
                Value::Object(e)
            })
            .collect();
        m.insert("matchExpressions".into(), Value::Array(exprs));
    }
    Value::Object(m)
}

/// The API's name of an operator.
pub(crate) fn operator_name(op: Operator) -> &'static str {
    match op {
        Operator::In => "In",
        Operator::NotIn => "NotIn",
        Operator::Exists => "Exists",
        Operator::DoesNotExist => "DoesNotExist",
    }
}

/// A namespace selector for these namespace names (`{}` for any).
pub(crate) fn namespace_selector(names: Option<&[String]>) -> Value {
    match names {
        None => json!({}),
        Some(names) => json!({"matchExpressions": [{
            "key": crate::model::NAMESPACE_NAME_LABEL,
            "operator": "In",
            "values": names,
        }]}),
    }
}

/// A DNS-1123 label made of `s`: lower case, `[a-z0-9-]`, no leading or trailing `-`,
/// at most 40 characters (room for the prefixes).
pub(crate) fn dns_label(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let mut out: String = out.trim_matches('-').chars().take(40).collect();
    while out.ends_with('-') {
        out.pop();
    }
    if out.is_empty() { "rule".into() } else { out }
}

/// Whether an object of the input is one `policy generate` writes: re-running on a
/// cluster dump that holds imdsguard's own output must give the same objects, so these
/// are left out of isolation, re-opens and priorities (the CLI drops them before
/// building the cluster). They are told by the names the generator gives them
/// (`imdsguard-deny-metadata*`, `imdsguard-allow-metadata-*`, the Calico tier
/// `imdsguard` and its `imdsguard.*` policies), which every one of them carries beside
/// the [`MANAGED_BY_LABEL`] label: the parsed model keeps no labels of policies.
pub fn is_generated(object: &crate::model::Object) -> bool {
    use crate::calico::CalicoObject;
    use crate::model::Object;
    let ours = |name: &str| name.starts_with(DENY_NAME) || name.starts_with(ALLOW_PREFIX);
    match object {
        Object::NetworkPolicy(p) => ours(&p.name),
        Object::Tiered(p) => ours(&p.name),
        Object::Cilium(p) => ours(&p.id.name),
        Object::Calico(CalicoObject::Tier(t)) => t.name == calico::TIER,
        Object::Calico(CalicoObject::Policy(p)) => {
            p.tier == calico::TIER || p.name.starts_with(&format!("{}.", calico::TIER))
        }
        _ => false,
    }
}

/// Each rule name's DNS-1123 label ([`dns_label`]), made unique: when two names give the
/// same label (`team.a`, `team-a`, `Team_A`) or a name was cut at 40 characters (two
/// long names that share their first 40), the label gets `-` and a short hash of the
/// original name, so no generated object overwrites another.
pub(crate) fn unique_labels<'a>(names: impl Iterator<Item = &'a str>) -> BTreeMap<&'a str, String> {
    let names: BTreeSet<&str> = names.collect();
    let mut by_label: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for n in &names {
        by_label.entry(dns_label(n)).or_default().push(n);
    }
    let mut out = BTreeMap::new();
    for (label, group) in by_label {
        for n in group.iter().copied() {
            let cut = dns_label_untruncated(n).len() > label.len();
            let l = if group.len() > 1 || cut {
                format!("{}-{}", label.trim_end_matches('-'), short_hash(n))
            } else {
                label.clone()
            };
            out.insert(n, l);
        }
    }
    out
}

/// Six hex digits of the 32-bit FNV-1a hash of `s`: stable across runs and platforms.
fn short_hash(s: &str) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in s.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("{:06x}", h >> 8)
}

/// [`dns_label`] without the cut at 40 characters.
fn dns_label_untruncated(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches('-').to_string()
}

/// The audit engine that enforces what a cluster-scoped output engine writes, as the
/// closed loop audits it: kube-network-policies for ClusterNetworkPolicy,
/// OVN-Kubernetes for AdminNetworkPolicy, Calico, Cilium (metadata addresses in the
/// `world` entity, as plain AKS gives them).
fn audit_settings(engine: OutputEngine) -> Option<EngineSettings> {
    let e = match engine {
        OutputEngine::NetworkPolicy => return None,
        OutputEngine::Cnp => Engine::KubeNetworkPolicies,
        OutputEngine::Anp => Engine::OvnKubernetes,
        OutputEngine::Calico => Engine::Calico,
        OutputEngine::Cilium => Engine::Cilium,
    };
    let mut settings = EngineSettings::new(e);
    settings.cilium_link_local = crate::cilium::LinkLocalAs::World;
    Some(settings)
}

/// The policy objects of `c` (no pods or controllers) plus the generated `objects`,
/// as one cluster; `None` when the generated objects do not read back (a bug, which
/// the closed-loop tests catch).
fn with_generated(c: &Cluster, objects: &[Value]) -> Option<Cluster> {
    let text =
        serde_json::to_string(&json!({"apiVersion": "v1", "kind": "List", "items": objects}))
            .ok()?;
    let loaded = crate::manifest::parse("<generated>", &text);
    debug_assert!(
        loaded.errors.is_empty(),
        "generated objects do not read back: {:?}",
        loaded.errors
    );
    if !loaded.errors.is_empty() {
        return None;
    }
    let source = crate::model::Source {
        file: std::sync::Arc::from("<input>"),
        line: 0,
    };
    let mut all: Vec<Object> = Vec::new();
    all.extend(c.namespaces.values().map(|n| {
        let mut labels = n.labels.clone();
        labels.remove(crate::model::NAMESPACE_NAME_LABEL);
        Object::Namespace(crate::model::Namespace {
            name: n.name.clone(),
            labels,
            source: n.source.clone().unwrap_or_else(|| source.clone()),
        })
    }));
    all.extend(c.nodes.iter().cloned().map(Object::Node));
    all.extend(c.policies.iter().cloned().map(Object::NetworkPolicy));
    all.extend(c.tiered.iter().cloned().map(Object::Tiered));
    all.extend(c.cilium.clusterwide.iter().cloned().map(Object::Cilium));
    all.extend(
        c.cilium
            .namespaced
            .values()
            .flatten()
            .cloned()
            .map(Object::Cilium),
    );
    all.extend(
        c.cilium
            .cidr_groups
            .values()
            .cloned()
            .map(Object::CiliumCidrGroup),
    );
    all.extend(
        c.calico
            .policies
            .iter()
            .cloned()
            .map(|p| Object::Calico(CalicoObject::Policy(Box::new(p)))),
    );
    all.extend(
        c.calico
            .tiers
            .iter()
            .cloned()
            .map(|t| Object::Calico(CalicoObject::Tier(t))),
    );
    all.extend(
        c.calico
            .network_sets
            .iter()
            .cloned()
            .map(|t| Object::Calico(CalicoObject::NetworkSet(t))),
    );
    all.extend(loaded.objects);
    Some(Cluster::build(all))
}

/// For cluster-scoped output: evaluates every pod shape (and a new pod in every
/// namespace) of the cluster plus the generated objects with the engine that enforces
/// them ([`crate::engine::Prepared::decide`], the audit's composition), once per shape
/// and target, and warns for every pod that is not expected yet still reaches a
/// target, naming the object and tier that decide it (an existing policy that comes
/// first, a tier ordered before imdsguard's, ...).
fn reopens_warnings(ctx: &Context<'_>, out: &mut Generated) {
    let Some(settings) = audit_settings(ctx.opts.engine) else {
        return;
    };
    let Some(after) = with_generated(ctx.cluster, &out.objects) else {
        return;
    };
    let prepared = Prepared::new(&after, settings);
    let targets: Vec<Target> = ctx
        .addrs
        .iter()
        .flat_map(|a| a.ports.iter().map(|(p, n)| Target::new(a.ip, *n, *p)))
        .collect();
    let empty = PodTemplate {
        labels: crate::model::Labels::new(),
        host_network: false,
        service_account: crate::model::DEFAULT_SERVICE_ACCOUNT.to_owned(),
    };
    let c = ctx.cluster;
    let mut sources: Vec<(&str, &PodTemplate, String)> = Vec::new();
    for w in &c.workloads {
        for shape in &w.shapes {
            if !shape.template.host_network {
                sources.push((&w.namespace, &shape.template, w.id()));
            }
        }
    }
    for ns in c.namespaces.keys() {
        sources.push((ns, &empty, format!("{ns}/<new pod>")));
    }
    for (ns, template, id) in sources {
        let Some(ns_info) = after.namespaces.get(ns) else {
            continue;
        };
        let src = Source {
            namespace: ns,
            labels: &template.labels,
            ns_labels: &ns_info.labels,
            service_account: Some(&template.service_account),
            host_network: false,
        };
        let expected = ctx.expected(ns, template);
        let selected = prepared.select(&src);
        let mut reopened = Vec::new();
        let mut deciders: Vec<String> = Vec::new();
        for t in targets.iter().filter(|t| !(expected && ctx.is_excepted(t))) {
            let d = prepared.decide(&selected, &src, &Destination::External(*t));
            if d.allowed {
                reopened.push(t.to_string());
                let by = match (&d.object, &d.rule) {
                    (Some(o), Some(r)) => format!("{o}#{r} ({} tier)", d.tier),
                    (Some(o), None) => format!("{o} ({} tier)", d.tier),
                    (None, _) => format!("no policy ({} tier)", d.tier),
                };
                if !deciders.contains(&by) {
                    deciders.push(by);
                }
            }
        }
        if !reopened.is_empty() {
            out.warn(
                WarningKind::ReopensTarget,
                format!(
                    "{id} would still reach {} under {}: decided by {}; change or remove that policy, or add the pods to the rules file if they are expected",
                    reopened.join(", "),
                    settings.engine.name(),
                    deciders.join(", ")
                ),
            );
        }
    }
}

/// hostNetwork workloads that are not expected: no pod-network policy reaches them.
fn host_network_warnings(ctx: &Context<'_>, out: &mut Generated) {
    let denied_to_all = ctx.never_excepted();
    let host: Vec<String> = ctx
        .cluster
        .workloads
        .iter()
        .filter(|w| w.host_network())
        .filter(|w| {
            !denied_to_all.is_empty()
                || !w
                    .shapes
                    .iter()
                    .all(|s| ctx.expected(&w.namespace, &s.template))
        })
        .map(|w| w.id())
        .collect();
    if !host.is_empty() {
        out.warn(
            WarningKind::HostNetwork,
            format!(
                "{} hostNetwork workload(s) use the node's network, where no {} applies: {}; `imdsguard agent run` in block or proxy mode covers them by their pods' cgroups (expected pods keep access; docs/node.md)",
                host.len(),
                ctx.opts.engine.policy_kind(),
                host.join(", ")
            ),
        );
    }
}

#[cfg(test)]
mod closed_loop;
#[cfg(test)]
mod tests;
