//! The cluster objects the audit reasons about, cleaned of everything it does not need:
//! namespaces, pods, pod controllers, nodes, `networking.k8s.io/v1` NetworkPolicies and
//! the cluster-scoped policies of [`crate::tiered`], each with the place in the input it
//! came from.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use serde::Serialize;

use crate::target::Protocol;

/// Labels of an object.
pub type Labels = BTreeMap<String, String>;

/// The label every namespace carries with its own name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Where an object was read: file (or `<stdin>`) and 1-based line of its document or item;
/// for an object read from the Kubernetes API, `cluster CONTEXT/Kind/namespace/name` and
/// line 0 (no line: the API's text is not the user's file).
///
/// Written as `file:line`, or `file` alone when there is no line (see [`Place`]); in JSON
/// as `file` and `line`, `line` left out when there is none.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Source {
    /// The file as the user named it.
    pub file: Arc<str>,
    /// 1-based line where the object starts; 0 when there is no line.
    #[serde(skip_serializing_if = "no_line")]
    pub line: usize,
}

impl Source {
    /// How this source is written: [`Place`] of its file and line.
    pub fn place(&self) -> Place<'_> {
        Place::new(&self.file, self.line)
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.place().fmt(f)
    }
}

/// Whether a 1-based line number says "no line" (0): for `serde`'s
/// `skip_serializing_if` on a line field, so that JSON leaves the line out rather than
/// writing a line 0 that no editor can open.
pub fn no_line(line: &usize) -> bool {
    *line == 0
}

/// A place in the input as people read it: `file:line`, or `file` alone when the line is 0
/// (an object read from the Kubernetes API has none). Every message that names a file and
/// line (a [`Source`], a manifest error) writes it this way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place<'a> {
    /// The file (or `<stdin>`, or `cluster CONTEXT/Kind/namespace/name`).
    pub file: &'a str,
    /// 1-based line; 0 for none.
    pub line: usize,
}

impl<'a> Place<'a> {
    /// A file and line.
    pub fn new(file: &'a str, line: usize) -> Place<'a> {
        Place { file, line }
    }
}

impl fmt::Display for Place<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.file)?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
        }
        Ok(())
    }
}

/// A label selector requirement operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operator {
    /// The label's value is one of the values.
    In,
    /// The label is missing or its value is none of the values.
    NotIn,
    /// The label is present.
    Exists,
    /// The label is missing.
    DoesNotExist,
}

/// One `matchExpressions` entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Requirement {
    /// Label key.
    pub key: String,
    /// Operator.
    pub operator: Operator,
    /// Values for `In` / `NotIn`.
    pub values: Vec<String>,
}

impl Requirement {
    /// Whether the labels satisfy this requirement.
    pub fn matches(&self, labels: &Labels) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            Operator::In => value.is_some_and(|v| self.values.iter().any(|x| x == v)),
            Operator::NotIn => value.is_none_or(|v| self.values.iter().all(|x| x != v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

/// A Kubernetes label selector. The empty selector selects everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct LabelSelector {
    /// `matchLabels`: every pair must be present.
    pub match_labels: Labels,
    /// `matchExpressions`: every requirement must hold.
    pub match_expressions: Vec<Requirement>,
}

impl LabelSelector {
    /// Whether the selector selects objects with these labels.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| r.matches(labels))
    }

    /// Whether it is `{}`, selecting everything.
    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    /// A selector from the API's fields: `matchLabels`, and each `matchExpressions` entry
    /// as (key, operator, values). Checked as the API server checks it: the operator is
    /// `In`, `NotIn`, `Exists` or `DoesNotExist`; `In` and `NotIn` need at least one
    /// value, the others take none. Errors name the entry under `at`
    /// (`spec.podSelector.matchExpressions[0].operator …`). The one conversion of
    /// selectors: manifests ([`crate::manifest`]) and access rules ([`crate::access`])
    /// both go through it.
    pub fn from_api(
        match_labels: Labels,
        match_expressions: impl IntoIterator<Item = (String, String, Vec<String>)>,
        at: &str,
    ) -> Result<LabelSelector, String> {
        let mut requirements = Vec::new();
        for (i, (key, operator, values)) in match_expressions.into_iter().enumerate() {
            let op = match operator.as_str() {
                "In" => Operator::In,
                "NotIn" => Operator::NotIn,
                "Exists" => Operator::Exists,
                "DoesNotExist" => Operator::DoesNotExist,
                other => {
                    return Err(format!(
                        "{at}.matchExpressions[{i}].operator {} is not In, NotIn, Exists or DoesNotExist",
                        crate::quote::quoted(other)
                    ));
                }
            };
            let needs_values = matches!(op, Operator::In | Operator::NotIn);
            if needs_values == values.is_empty() {
                return Err(format!(
                    "{at}.matchExpressions[{i}]: `{operator}` {}",
                    if needs_values {
                        "needs at least one value"
                    } else {
                        "takes no values"
                    }
                ));
            }
            requirements.push(Requirement {
                key,
                operator: op,
                values,
            });
        }
        Ok(LabelSelector {
            match_labels,
            match_expressions: requirements,
        })
    }
}

/// The controller that owns an object, as its ownerReference names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OwnerRef {
    /// Owner kind (may be empty in hand-written manifests).
    pub kind: String,
    /// Owner name.
    pub name: String,
}

/// A Namespace object.
#[derive(Debug, Clone)]
pub struct Namespace {
    /// Name.
    pub name: String,
    /// Labels as written (the name label is added when the cluster is built).
    pub labels: Labels,
    /// Where it was read.
    pub source: Source,
}

/// The kinds of pod controllers the audit understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ControllerKind {
    /// apps/v1 Deployment.
    Deployment,
    /// apps/v1 ReplicaSet.
    ReplicaSet,
    /// apps/v1 StatefulSet.
    StatefulSet,
    /// apps/v1 DaemonSet.
    DaemonSet,
    /// batch/v1 Job.
    Job,
    /// batch/v1 CronJob.
    CronJob,
    /// v1 ReplicationController.
    ReplicationController,
}

impl ControllerKind {
    /// The Kubernetes kind name.
    pub fn as_str(self) -> &'static str {
        match self {
            ControllerKind::Deployment => "Deployment",
            ControllerKind::ReplicaSet => "ReplicaSet",
            ControllerKind::StatefulSet => "StatefulSet",
            ControllerKind::DaemonSet => "DaemonSet",
            ControllerKind::Job => "Job",
            ControllerKind::CronJob => "CronJob",
            ControllerKind::ReplicationController => "ReplicationController",
        }
    }

    /// The kind for a Kubernetes kind name, if it is a controller kind.
    pub fn from_kind(kind: &str) -> Option<Self> {
        Some(match kind {
            "Deployment" => ControllerKind::Deployment,
            "ReplicaSet" => ControllerKind::ReplicaSet,
            "StatefulSet" => ControllerKind::StatefulSet,
            "DaemonSet" => ControllerKind::DaemonSet,
            "Job" => ControllerKind::Job,
            "CronJob" => ControllerKind::CronJob,
            "ReplicationController" => ControllerKind::ReplicationController,
            _ => return None,
        })
    }
}

/// What the audit needs of a Pod, or of a controller's pod template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodTemplate {
    /// Pod labels.
    pub labels: Labels,
    /// `spec.hostNetwork`.
    pub host_network: bool,
    /// The service account its pods run as: `spec.serviceAccountName`, else the
    /// deprecated `spec.serviceAccount`, else `default` (as the API server defaults it).
    pub service_account: String,
}

impl PodTemplate {
    /// The service account of a pod spec: `serviceAccountName`, else the deprecated
    /// `serviceAccount` alias, else `default` (empty strings count as unset, as in the
    /// API server's defaulting: <https://kubernetes.io/docs/reference/kubernetes-api/workload-resources/pod-v1/#security>).
    pub fn service_account_of(name: Option<&str>, deprecated: Option<&str>) -> String {
        name.filter(|s| !s.is_empty())
            .or(deprecated.filter(|s| !s.is_empty()))
            .unwrap_or(DEFAULT_SERVICE_ACCOUNT)
            .to_owned()
    }
}

/// The service account a pod runs as when its spec names none.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";

/// A Pod object.
#[derive(Debug, Clone)]
pub struct Pod {
    /// Namespace (defaulted to `default`).
    pub namespace: String,
    /// Name (or `generateName` when the name is missing).
    pub name: String,
    /// The controlling owner, if any.
    pub owner: Option<OwnerRef>,
    /// Labels, hostNetwork and service account.
    pub template: PodTemplate,
    /// Where it was read.
    pub source: Source,
}

/// A pod controller (Deployment, ReplicaSet, ...).
#[derive(Debug, Clone)]
pub struct Controller {
    /// Which controller.
    pub kind: ControllerKind,
    /// Namespace (defaulted to `default`).
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The controlling owner, if any (a ReplicaSet's Deployment, a Job's CronJob).
    pub owner: Option<OwnerRef>,
    /// The pod template.
    pub template: PodTemplate,
    /// Where it was read.
    pub source: Source,
}

/// A NetworkPolicy port entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortRule {
    /// Protocol (defaulted to TCP).
    pub protocol: Protocol,
    /// The port; `None` means every port of the protocol.
    pub port: Option<PortSpec>,
    /// Inclusive end of a port range starting at a numeric `port`.
    pub end_port: Option<u16>,
}

/// A port as a number or a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortSpec {
    /// A port number.
    Number(u16),
    /// A named container port; it resolves on the destination pod, so it never matches
    /// an address outside the cluster.
    Named(String),
}

impl PortRule {
    /// Whether this entry admits the protocol and port of an external destination.
    pub fn matches(&self, protocol: Protocol, port: u16) -> bool {
        self.matches_with(protocol, port, false)
    }

    /// [`PortRule::matches`]; with `ignore_end_port`, a range admits its start port only
    /// (what Azure NPM enforces).
    pub fn matches_with(&self, protocol: Protocol, port: u16, ignore_end_port: bool) -> bool {
        if self.protocol != protocol {
            return false;
        }
        match &self.port {
            None => true,
            Some(PortSpec::Named(_)) => false,
            Some(PortSpec::Number(n)) => match self.end_port {
                Some(end) if !ignore_end_port => (*n..=end).contains(&port),
                _ => *n == port,
            },
        }
    }
}

/// A NetworkPolicy peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// `ipBlock`: a CIDR less its exceptions.
    IpBlock {
        /// The block.
        cidr: IpNet,
        /// Ranges cut out of it.
        except: Vec<IpNet>,
    },
    /// `podSelector` and/or `namespaceSelector`: pods only, never an external address.
    Selector {
        /// `namespaceSelector`, when given.
        namespace_selector: Option<LabelSelector>,
        /// `podSelector`, when given.
        pod_selector: Option<LabelSelector>,
    },
}

/// One egress rule. Empty `to` means every destination, empty `ports` every port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressRule {
    /// Destinations.
    pub to: Vec<Peer>,
    /// Ports.
    pub ports: Vec<PortRule>,
}

/// A networking.k8s.io/v1 NetworkPolicy after API defaulting.
#[derive(Debug, Clone)]
pub struct NetworkPolicy {
    /// Namespace (defaulted to `default`).
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Which pods of its namespace it selects.
    pub pod_selector: LabelSelector,
    /// Whether `Ingress` is among the (defaulted) policy types.
    pub ingress_type: bool,
    /// Whether `Egress` is among the (defaulted) policy types: only then it isolates egress.
    pub egress_type: bool,
    /// Whether `policyTypes` was written (false: the types were defaulted).
    pub policy_types_written: bool,
    /// Egress rules as written (ignored when `egress_type` is false).
    pub egress: Vec<EgressRule>,
    /// Where it was read.
    pub source: Source,
}

impl NetworkPolicy {
    /// `namespace/name`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// A Node: its labels (for `nodes` peers) and addresses (`status.addresses`).
#[derive(Debug, Clone)]
pub struct Node {
    /// Name.
    pub name: String,
    /// Labels.
    pub labels: Labels,
    /// The IP addresses of `status.addresses` (InternalIP, ExternalIP; host names are
    /// left out).
    pub addresses: Vec<IpAddr>,
    /// Where it was read.
    pub source: Source,
}

/// One object the audit understands. New kinds get one variant each (and one arm in
/// `manifest::classify`/`convert` and in `Cluster::build`).
#[derive(Debug, Clone)]
pub enum Object {
    /// A Namespace.
    Namespace(Namespace),
    /// A Pod.
    Pod(Pod),
    /// A pod controller.
    Controller(Controller),
    /// A NetworkPolicy.
    NetworkPolicy(NetworkPolicy),
    /// An AdminNetworkPolicy, BaselineAdminNetworkPolicy or ClusterNetworkPolicy.
    Tiered(crate::tiered::TieredPolicy),
    /// A Node.
    Node(Node),
    /// A CiliumNetworkPolicy or CiliumClusterwideNetworkPolicy.
    Cilium(crate::cilium::CiliumPolicy),
    /// A CiliumCIDRGroup (what `cidrGroupRef` points at).
    CiliumCidrGroup(crate::cilium::CidrGroup),
    /// A `projectcalico.org/v3` GlobalNetworkPolicy, NetworkPolicy, Tier,
    /// GlobalNetworkSet or NetworkSet.
    Calico(crate::calico::CalicoObject),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_without_a_line_is_written_without_one() {
        let file = |f: &str, line| Source {
            file: Arc::from(f),
            line,
        };
        assert_eq!(file("a/b.yaml", 12).to_string(), "a/b.yaml:12");
        assert_eq!(file("<stdin>", 1).to_string(), "<stdin>:1");
        let live = file("cluster prod/Deployment/payments/api", 0);
        assert_eq!(live.to_string(), "cluster prod/Deployment/payments/api");
        // Padding and the like apply to the whole place, as to a string.
        assert_eq!(
            format!("{:>10}", file("x", 3).place().to_string()),
            "       x:3"
        );

        assert_eq!(
            serde_json::to_value(file("a.yaml", 3)).unwrap(),
            serde_json::json!({"file": "a.yaml", "line": 3})
        );
        assert_eq!(
            serde_json::to_value(&live).unwrap(),
            serde_json::json!({"file": "cluster prod/Deployment/payments/api"})
        );
    }

    /// An object read from the API that cannot be read is reported at its source, with
    /// no `:0`.
    #[test]
    fn an_error_on_an_object_from_the_api_names_it_without_a_line() {
        let bad = crate::manifest::parse_api_response(
            "cluster c",
            r#"{"kind":"NetworkPolicyList","apiVersion":"networking.k8s.io/v1","items":[{"metadata":{"name":"np","namespace":"a"},"spec":{"podSelector":{},"egress":[{"to":[{"ipBlock":{"cidr":"nonsense"}}]}]}}]}"#,
        );
        assert_eq!(bad.errors.len(), 1, "{:?}", bad.errors);
        assert_eq!(bad.errors[0].line, 0);
        let shown = bad.errors[0].to_string();
        assert!(
            shown.starts_with("cluster c/NetworkPolicy/a/np: "),
            "{shown}"
        );
        assert!(!shown.contains(":0"), "{shown}");
        // A file's error keeps its line.
        let file = crate::manifest::parse(
            "f.yaml",
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np}\nspec:\n  podSelector: {}\n  egress: [{to: [{ipBlock: {cidr: nonsense}}]}]\n",
        );
        assert_eq!(file.errors.len(), 1, "{:?}", file.errors);
        assert!(
            file.errors[0].to_string().starts_with("f.yaml:1: "),
            "{}",
            file.errors[0]
        );
    }

    #[test]
    fn a_place_leaves_out_line_0() {
        assert_eq!(Place::new("f.yaml", 4).to_string(), "f.yaml:4");
        assert_eq!(Place::new("f.yaml", 0).to_string(), "f.yaml");
        assert!(no_line(&0));
        assert!(!no_line(&1));
    }

    #[test]
    fn selectors_from_the_api_are_checked_like_the_api_server() {
        let expr = |k: &str, op: &str, v: &[&str]| {
            (
                k.to_owned(),
                op.to_owned(),
                v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>(),
            )
        };
        let s = LabelSelector::from_api(
            labels(&[("app", "web")]),
            [
                expr("tier", "NotIn", &["batch"]),
                expr("team", "Exists", &[]),
            ],
            "spec.podSelector",
        )
        .unwrap();
        assert_eq!(
            s.match_expressions,
            [
                req("tier", Operator::NotIn, &["batch"]),
                req("team", Operator::Exists, &[])
            ]
        );
        assert!(s.matches(&labels(&[("app", "web"), ("team", "a")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("team", "a"), ("tier", "batch")])));
        let err = |e: Vec<(String, String, Vec<String>)>| {
            LabelSelector::from_api(Labels::new(), e, "at").unwrap_err()
        };
        assert_eq!(
            err(vec![expr("a", "in", &["x"])]),
            "at.matchExpressions[0].operator `in` is not In, NotIn, Exists or DoesNotExist"
        );
        assert_eq!(
            err(vec![expr("a", "Exists", &[]), expr("b", "In", &[])]),
            "at.matchExpressions[1]: `In` needs at least one value"
        );
        assert_eq!(
            err(vec![expr("a", "DoesNotExist", &["x"])]),
            "at.matchExpressions[0]: `DoesNotExist` takes no values"
        );
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn req(key: &str, operator: Operator, values: &[&str]) -> Requirement {
        Requirement {
            key: key.into(),
            operator,
            values: values.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn selector_semantics() {
        let pod = labels(&[("app", "web"), ("tier", "front")]);
        assert!(LabelSelector::default().matches(&pod));
        let mut s = LabelSelector {
            match_labels: labels(&[("app", "web")]),
            ..LabelSelector::default()
        };
        assert!(s.matches(&pod));
        s.match_labels = labels(&[("app", "web"), ("tier", "back")]);
        assert!(!s.matches(&pod));

        assert!(req("app", Operator::In, &["web", "db"]).matches(&pod));
        assert!(!req("app", Operator::In, &["db"]).matches(&pod));
        assert!(!req("missing", Operator::In, &["x"]).matches(&pod));
        assert!(req("missing", Operator::NotIn, &["x"]).matches(&pod));
        assert!(!req("app", Operator::NotIn, &["web"]).matches(&pod));
        assert!(req("tier", Operator::Exists, &[]).matches(&pod));
        assert!(!req("tier", Operator::DoesNotExist, &[]).matches(&pod));
        assert!(req("missing", Operator::DoesNotExist, &[]).matches(&pod));
    }

    #[test]
    fn port_rules() {
        let any_udp = PortRule {
            protocol: Protocol::Udp,
            port: None,
            end_port: None,
        };
        assert!(any_udp.matches(Protocol::Udp, 53));
        assert!(!any_udp.matches(Protocol::Tcp, 53));
        let range = PortRule {
            protocol: Protocol::Tcp,
            port: Some(PortSpec::Number(32000)),
            end_port: Some(32768),
        };
        assert!(range.matches(Protocol::Tcp, 32000));
        assert!(range.matches(Protocol::Tcp, 32768));
        assert!(!range.matches(Protocol::Tcp, 32769));
        let named = PortRule {
            protocol: Protocol::Tcp,
            port: Some(PortSpec::Named("http".into())),
            end_port: None,
        };
        assert!(!named.matches(Protocol::Tcp, 80));
    }
}
