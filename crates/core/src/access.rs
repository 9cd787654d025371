//! Access rules of the filtering proxy: who may ask IMDS for what, decided as a pure
//! function.
//!
//! A caller is a pod ([`PodInfo`]: namespace, name, labels, service account), found by
//! its source address in a [`PodIndex`] (see [`crate::pods`]: which pod owns an address). A request is what [`crate::imds::validate`]
//! accepted, after [`crate::canon`] gave it its one spelling. [`AccessRules::evaluate`]
//! then decides:
//!
//! 1. the rules whose `subjects` select the pod (namespace, service account, label
//!    selector; any subject of a rule may match);
//! 2. among them, those granting the method and the path (a canonical endpoint, or an
//!    instance sub-tree such as `/metadata/instance/compute`); path segments compare
//!    ignoring ASCII case, as IMDS does, so case never gets around a rule;
//! 3. for the token endpoint, those whose `token` section also allows the `resource`
//!    (the audience) and the identity selector (`client_id`, `object_id`,
//!    `msi_res_id`/`mi_res_id`, or none for the VM's default identity);
//! 4. if no rule is left, the request is denied (default deny) with the rule that came
//!    closest and what to ask for; otherwise it is allowed, and for the instance
//!    document the fields to redact are those *every* allowing rule redacts (each rule
//!    is a grant: a field one grant shows is shown). A request for a redacted field
//!    itself (`/metadata/instance/compute/customData?format=text`) is denied.
//!
//! Rules are additive and order does not matter. Nothing here does IO: the proxy reads
//! the files and hands their text to [`AccessRules::parse`] and [`PodIndex::parse`].

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::net::IpAddr;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::canon::Rejection;
use crate::imds::{IdentitySelector, ImdsApi, ImdsRequest, Method, is_valid_resource, route};
use crate::model::{LabelSelector, Labels};
use crate::target::Cloud;
use crate::token::IMDSGUARD_DENY_ERROR;

/// Rule name of a denial when no rule allows the request.
pub const RULE_DEFAULT_DENY: &str = "default-deny";
/// Rule name of a denial for a source address that is not a known pod.
pub const RULE_UNKNOWN_SOURCE: &str = "unknown-source";
/// Rule name of a denial for an ambiguous or oversized request.
pub const RULE_CANONICAL_FORM: &str = "canonical-form";
/// Rule name of a denial while no rules are loaded yet.
pub const RULE_NO_RULES: &str = "no-rules-loaded";
/// Rule name of a denial for a caller on the node in a pod's cgroup that no known
/// hostNetwork pod owns.
pub const RULE_UNKNOWN_POD_CGROUP: &str = "unknown-pod-cgroup";
/// Rule name of a denial for an AWS IMDSv2 token the proxy did not hand to this pod
/// (see [`crate::cloud_access`]).
pub const RULE_TOKEN_NOT_ISSUED: &str = "token-not-issued-to-caller";

/// Names a rule may not take (they name the built-in outcomes).
pub const RESERVED_RULE_NAMES: &[&str] = &[
    RULE_DEFAULT_DENY,
    RULE_UNKNOWN_SOURCE,
    RULE_CANONICAL_FORM,
    RULE_NO_RULES,
    RULE_UNKNOWN_POD_CGROUP,
    RULE_TOKEN_NOT_ISSUED,
];

/// Fields a rule redacts from the instance document when it says nothing: custom and
/// user data (bootstrap secrets), SSH public keys, and the tags (on AKS they name the
/// kubelet identity's client id).
pub const DEFAULT_REDACT: &[&str] = &["customData", "userData", "publicKeys", "tags", "tagsList"];

/// Why a rules or pods file could not be read. Messages name the rule or entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    /// The text is not YAML/JSON of the expected shape.
    #[error("{0}")]
    Parse(String),
    /// A rule is not valid.
    #[error("rule `{rule}`: {message}")]
    Rule {
        /// The rule's name (or `rules[i]` without one).
        rule: String,
        /// What is wrong.
        message: String,
    },
    /// A pod entry is not valid.
    #[error("pod `{pod}`: {message}")]
    Pod {
        /// The entry (`namespace/name`, or `[i]`).
        pod: String,
        /// What is wrong.
        message: String,
    },
}

// ---------------------------------------------------------------------------------
// Pods: who a caller is lives in `crate::pods`.
// ---------------------------------------------------------------------------------

pub use crate::pods::{PodIndex, PodInfo};

// ---------------------------------------------------------------------------------
// Rules
// ---------------------------------------------------------------------------------

/// Who a rule is for. Every field given must match; a list matches any of its values,
/// and `*` any namespace or service account. At least one field must be given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    /// Namespaces (`*`: any); empty: any.
    pub namespaces: Vec<String>,
    /// Service accounts (`*`: any); empty: any.
    pub service_accounts: Vec<String>,
    /// Pod label selector; `None`: any.
    pub pod_selector: Option<LabelSelector>,
}

impl Subject {
    /// Whether the subject selects the pod.
    pub fn matches(&self, pod: &PodInfo) -> bool {
        self.matches_shape(&PodShapeRef::of(pod))
    }

    /// Whether the subject selects pods of this shape. A shape whose service account is
    /// unknown is not selected by a subject that names service accounts (other than `*`).
    pub fn matches_shape(&self, shape: &PodShapeRef<'_>) -> bool {
        let any_of = |list: &[String], v: Option<&str>| {
            list.is_empty() || list.iter().any(|x| x == "*" || Some(x.as_str()) == v)
        };
        any_of(&self.namespaces, Some(shape.namespace))
            && any_of(&self.service_accounts, shape.service_account)
            && self
                .pod_selector
                .as_ref()
                .is_none_or(|s| s.matches(shape.labels))
    }
}

/// A pod as its template describes it (no name, no address): what the audit knows of a
/// workload's pods when it asks which rules expect them ([`AccessRules::expecting`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodShapeRef<'a> {
    /// Namespace.
    pub namespace: &'a str,
    /// Pod labels.
    pub labels: &'a Labels,
    /// Service account (`default` when the template names none); `None` when the input
    /// does not say.
    pub service_account: Option<&'a str>,
}

impl<'a> PodShapeRef<'a> {
    /// The shape of a known pod.
    pub fn of(pod: &'a PodInfo) -> Self {
        PodShapeRef {
            namespace: &pod.namespace,
            labels: &pod.labels,
            service_account: Some(&pod.service_account),
        }
    }
}

/// A path a rule grants: an endpoint, and for the instance document a sub-tree
/// (lower-cased segments, `*` for any one segment; empty: the whole document).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathGrant {
    /// The endpoint.
    pub endpoint: ImdsApi,
    /// For [`ImdsApi::Instance`], the sub-tree granted.
    pub instance_prefix: Vec<String>,
}

impl PathGrant {
    /// Whether the grant covers a request for `endpoint` at `instance_path`.
    pub fn covers(&self, endpoint: ImdsApi, instance_path: &[String]) -> bool {
        endpoint == self.endpoint
            && (endpoint != ImdsApi::Instance
                || (instance_path.len() >= self.instance_prefix.len()
                    && self
                        .instance_prefix
                        .iter()
                        .zip(instance_path)
                        .all(|(g, s)| g == "*" || g.eq_ignore_ascii_case(s))))
    }
}

impl fmt::Display for PathGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.endpoint.canonical_path().unwrap_or("?"))?;
        for s in &self.instance_prefix {
            write!(f, "/{s}")?;
        }
        Ok(())
    }
}

/// An identity a token grant allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityGrant {
    /// A request naming no identity (the VM's default one).
    Default,
    /// Any identity, named or not.
    Any,
    /// `client_id` equal to this (ignoring ASCII case).
    ClientId(String),
    /// `object_id` equal to this (ignoring ASCII case).
    ObjectId(String),
    /// `msi_res_id` or `mi_res_id` equal to this (ignoring ASCII case and a trailing `/`).
    ResourceId(String),
}

impl IdentityGrant {
    /// Whether the grant allows a request with this selector.
    pub fn allows(&self, selector: Option<&IdentitySelector>) -> bool {
        let trim = |s: &str| s.trim_end_matches('/').to_string();
        match (self, selector) {
            (IdentityGrant::Any, _) => true,
            (IdentityGrant::Default, None) => true,
            (IdentityGrant::ClientId(g), Some(IdentitySelector::ClientId(v)))
            | (IdentityGrant::ObjectId(g), Some(IdentitySelector::ObjectId(v))) => {
                g.eq_ignore_ascii_case(v)
            }
            (IdentityGrant::ResourceId(g), Some(IdentitySelector::ResourceId { id, .. })) => {
                trim(g).eq_ignore_ascii_case(&trim(id))
            }
            _ => false,
        }
    }
}

impl fmt::Display for IdentityGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdentityGrant::Default => f.write_str("the default identity"),
            IdentityGrant::Any => f.write_str("any identity"),
            IdentityGrant::ClientId(v) => write!(f, "client_id={v}"),
            IdentityGrant::ObjectId(v) => write!(f, "object_id={v}"),
            IdentityGrant::ResourceId(v) => write!(f, "msi_res_id/mi_res_id={v}"),
        }
    }
}

/// What a rule allows on the token endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenGrant {
    /// Allowed `resource` values (audiences), compared ignoring ASCII case and one
    /// trailing `/`; `*` allows any.
    pub resources: Vec<String>,
    /// Allowed identities.
    pub identities: Vec<IdentityGrant>,
}

fn same_resource(a: &str, b: &str) -> bool {
    a.strip_suffix('/')
        .unwrap_or(a)
        .eq_ignore_ascii_case(b.strip_suffix('/').unwrap_or(b))
}

impl TokenGrant {
    /// Whether `resource` is allowed.
    pub fn allows_resource(&self, resource: &str) -> bool {
        self.resources
            .iter()
            .any(|r| r == "*" || same_resource(r, resource))
    }

    /// Whether the identity selector is allowed.
    pub fn allows_identity(&self, selector: Option<&IdentitySelector>) -> bool {
        self.identities.iter().any(|g| g.allows(selector))
    }
}

/// Fields a rule hides in the instance document. A name (`customData`) hides that key
/// at any depth; a path (`compute/osProfile/adminUsername`, `*` for any one segment)
/// hides that element from the document's root. Both compare ignoring ASCII case;
/// `tags` and `tagsList` (the same data) always go together.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedactSet {
    names: Vec<String>,
    paths: Vec<Vec<String>>,
}

impl RedactSet {
    /// Reads field specs (`customData`, `compute/publicKeys`).
    pub fn new<S: AsRef<str>>(specs: &[S]) -> Result<RedactSet, String> {
        let mut set = RedactSet::default();
        for spec in specs {
            let spec = spec.as_ref().trim().trim_matches('/');
            let segments: Vec<String> = spec.split('/').map(str::to_ascii_lowercase).collect();
            if spec.is_empty()
                || segments.iter().any(|s| {
                    s.is_empty()
                        || (s != "*"
                            && !s
                                .bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'))
                })
            {
                return Err(format!(
                    "redact entry `{spec}` is not a field name or a path of field names"
                ));
            }
            let mut variants = vec![segments];
            let last = variants[0].last().cloned().unwrap_or_default();
            let twin = match last.as_str() {
                "tags" => Some("tagslist"),
                "tagslist" => Some("tags"),
                _ => None,
            };
            if let Some(twin) = twin {
                let mut v = variants[0].clone();
                *v.last_mut().expect("non-empty") = twin.to_string();
                variants.push(v);
            }
            for v in variants {
                if v.len() == 1 && v[0] != "*" {
                    if !set.names.contains(&v[0]) {
                        set.names.push(v[0].clone());
                    }
                } else if !set.paths.contains(&v) {
                    set.paths.push(v);
                }
            }
        }
        Ok(set)
    }

    /// Whether nothing is hidden.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty() && self.paths.is_empty()
    }

    /// Whether the element at `path` (from the document's root) is hidden, itself or
    /// through an ancestor.
    pub fn hides(&self, path: &[String]) -> bool {
        self.names
            .iter()
            .any(|n| path.iter().any(|s| s.eq_ignore_ascii_case(n)))
            || self.paths.iter().any(|p| {
                p.len() <= path.len()
                    && p.iter()
                        .zip(path)
                        .all(|(g, s)| g == "*" || g.eq_ignore_ascii_case(s))
            })
    }

    /// The specs, for messages (`customData, compute/publicKeys`).
    pub fn describe(&self) -> String {
        self.names
            .iter()
            .cloned()
            .chain(self.paths.iter().map(|p| p.join("/")))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// One access rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Unique name, quoted in logs and denials.
    pub name: Arc<str>,
    /// Who it is for (any of them).
    pub subjects: Vec<Subject>,
    /// Methods it allows (`GET` unless told; `POST` for scheduled-event approvals).
    pub methods: Vec<Method>,
    /// Paths it allows.
    pub paths: Vec<PathGrant>,
    /// What it allows on the token endpoint (present exactly when a path grant covers
    /// it).
    pub token: Option<TokenGrant>,
    /// Fields hidden from the instance document.
    pub redact: Arc<RedactSet>,
    /// For an AWS or GCP rules file (`cloud: aws|gcp`), what the rule grants there
    /// (then `methods` and `paths` are empty and `token` is `None`: Azure requests are
    /// never granted by it). See [`crate::cloud_access`].
    pub cloud: Option<Arc<crate::cloud_access::CloudGrant>>,
}

impl Rule {
    /// Whether a subject selects the pod.
    pub fn selects(&self, pod: &PodInfo) -> bool {
        self.selects_shape(&PodShapeRef::of(pod))
    }

    /// Whether a subject selects pods of this shape.
    pub fn selects_shape(&self, shape: &PodShapeRef<'_>) -> bool {
        self.subjects.iter().any(|s| s.matches_shape(shape))
    }

    /// Whether the rule grants the method and path.
    pub fn covers(&self, method: Method, endpoint: ImdsApi, instance_path: &[String]) -> bool {
        self.methods.contains(&method)
            && self.paths.iter().any(|g| g.covers(endpoint, instance_path))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawRules {
    #[serde(default)]
    cloud: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    api_version: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    kind: Option<String>,
    #[serde(default)]
    rules: Vec<RawRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawRule {
    #[serde(default)]
    name: String,
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
    #[serde(default)]
    subjects: Vec<RawSubject>,
    #[serde(default)]
    methods: Option<Vec<String>>,
    #[serde(default)]
    paths: Vec<String>,
    #[serde(default)]
    token: Option<RawToken>,
    #[serde(default)]
    redact: Option<Vec<String>>,
    #[serde(default)]
    audiences: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawSubject {
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    namespaces: Vec<String>,
    #[serde(default)]
    service_account: Option<String>,
    #[serde(default)]
    service_accounts: Vec<String>,
    #[serde(default)]
    pod_selector: Option<RawSelector>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawSelector {
    #[serde(default)]
    match_labels: BTreeMap<String, String>,
    #[serde(default)]
    match_expressions: Vec<RawRequirement>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequirement {
    key: String,
    operator: String,
    #[serde(default)]
    values: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawToken {
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    identities: Vec<RawIdentity>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawIdentity {
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    object_id: Option<String>,
    #[serde(default)]
    resource_id: Option<String>,
    #[serde(default)]
    default: Option<bool>,
    #[serde(default)]
    any: Option<bool>,
}

/// A checked set of rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessRules {
    rules: Vec<Rule>,
    /// The cloud the file said (`cloud:`); `None`: not said (Azure).
    cloud: Option<Cloud>,
}

impl AccessRules {
    /// Rules from a checked list; names must be unique and not reserved, and every rule
    /// of one cloud (the cloud of their grants; Azure without).
    pub fn new(rules: Vec<Rule>) -> Result<AccessRules, AccessError> {
        let cloud = rules.iter().find_map(|r| r.cloud.as_ref().map(|g| g.cloud));
        for (i, r) in rules.iter().enumerate() {
            check_name(&r.name, i)?;
            if rules[..i].iter().any(|o| o.name == r.name) {
                return Err(AccessError::Rule {
                    rule: r.name.to_string(),
                    message: "the name is used by another rule".into(),
                });
            }
            if r.cloud.as_ref().map(|g| g.cloud) != cloud {
                return Err(AccessError::Rule {
                    rule: r.name.to_string(),
                    message: "rules of different clouds cannot be in one set".into(),
                });
            }
        }
        Ok(AccessRules { rules, cloud })
    }

    /// The cloud the rules are for: the rules file's top-level `cloud:` (`azure` when it
    /// says none).
    pub fn cloud(&self) -> Cloud {
        self.cloud.unwrap_or(Cloud::Azure)
    }

    /// The cloud the rules file named, if it named one (an empty set names none).
    pub fn declared_cloud(&self) -> Option<Cloud> {
        self.cloud
    }

    /// Reads a rules file (YAML or JSON; see `docs/proxy.md`). Unknown fields are errors,
    /// so that a typo cannot silently widen or narrow a rule.
    pub fn parse(text: &str) -> Result<AccessRules, AccessError> {
        let raw: RawRules =
            serde_norway::from_str(text).map_err(|e| AccessError::Parse(e.to_string()))?;
        AccessRules::from_raw(raw)
    }

    /// Reads rules already parsed as JSON (the `spec` of a `MetadataAccessPolicy`
    /// object): the same fields and checks as [`AccessRules::parse`].
    pub fn from_value(value: Value) -> Result<AccessRules, AccessError> {
        let raw: RawRules =
            serde_json::from_value(value).map_err(|e| AccessError::Parse(e.to_string()))?;
        AccessRules::from_raw(raw)
    }

    fn from_raw(raw: RawRules) -> Result<AccessRules, AccessError> {
        let cloud = match raw.cloud.as_deref() {
            None => None,
            // As written (lower case), unlike `Cloud`'s `FromStr`, which ignores case.
            Some(name) => Some(
                Cloud::ALL
                    .into_iter()
                    .find(|c| c.name() == name)
                    .ok_or_else(|| {
                        AccessError::Parse(format!("`cloud: {name}` is not azure, aws or gcp"))
                    })?,
            ),
        };
        let rules = raw
            .rules
            .into_iter()
            .enumerate()
            .map(|(i, r)| convert_rule(r, i, cloud.unwrap_or(Cloud::Azure)))
            .collect::<Result<Vec<_>, _>>()?;
        let mut rules = AccessRules::new(rules)?;
        rules.cloud = rules.cloud.or(cloud);
        Ok(rules)
    }

    /// The rules, in file order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The rules that expect pods of this shape to reach IMDS: those whose subjects
    /// select it, in file order. What a rule grants (paths, audiences) does not matter
    /// here: a selected workload is one the rules let through the proxy at all, so the
    /// audit reports its reaching IMDS as expected and its being blocked as a finding.
    pub fn expecting<'r>(&'r self, shape: &PodShapeRef<'_>) -> Vec<&'r Rule> {
        self.rules
            .iter()
            .filter(|r| r.selects_shape(shape))
            .collect()
    }

    /// Adds the rules of `other` (rules add up, as in one file); a name both use is an
    /// error naming the rule.
    pub fn extend(&mut self, other: AccessRules) -> Result<(), AccessError> {
        if let (Some(mine), Some(theirs)) = (self.cloud, other.cloud)
            && mine != theirs
        {
            let rule = other
                .rules
                .first()
                .map_or_else(String::new, |r| r.name.to_string());
            return Err(AccessError::Rule {
                rule,
                message: format!(
                    "rules for cloud {} cannot add up with rules for cloud {}",
                    theirs.name(),
                    mine.name()
                ),
            });
        }
        self.cloud = self.cloud.or(other.cloud);
        for r in &other.rules {
            if self.rules.iter().any(|o| o.name == r.name) {
                return Err(AccessError::Rule {
                    rule: r.name.to_string(),
                    message: "the name is used by a rule of another file or preset".into(),
                });
            }
        }
        self.rules.extend(other.rules);
        Ok(())
    }

    /// How many rules there are.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether there is no rule (everything is denied).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Decides a request from `pod` (see the module documentation).
    pub fn evaluate(&self, pod: &PodInfo, req: &ImdsRequest) -> Decision {
        let mut first_allow: Option<&Rule> = None;
        let mut redact_sets: Vec<Arc<RedactSet>> = Vec::new();
        let mut closest: Option<(&Rule, String)> = None;
        let mut any_selects = false;
        for rule in &self.rules {
            if !rule.selects(pod) {
                continue;
            }
            any_selects = true;
            if !rule.covers(req.method, req.endpoint, &req.instance_path) {
                continue;
            }
            if let (Some(t), Some(grant)) = (&req.token, &rule.token) {
                if !grant.allows_resource(&t.resource) {
                    closest.get_or_insert_with(|| {
                        (
                            rule,
                            format!(
                                "rule {} allows tokens for {} only, not for resource {}",
                                rule.name,
                                grant.resources.join(", "),
                                t.resource
                            ),
                        )
                    });
                    continue;
                }
                if !grant.allows_identity(t.selector.as_ref()) {
                    closest.get_or_insert_with(|| {
                        let allowed: Vec<String> =
                            grant.identities.iter().map(|g| g.to_string()).collect();
                        (
                            rule,
                            format!(
                                "rule {} allows {} only, not {}",
                                rule.name,
                                allowed.join(", "),
                                describe_selector(t.selector.as_ref())
                            ),
                        )
                    });
                    continue;
                }
            }
            if first_allow.is_none() {
                first_allow = Some(rule);
            }
            if req.endpoint == ImdsApi::Instance {
                redact_sets.push(rule.redact.clone());
            }
        }
        let Some(rule) = first_allow else {
            return Decision::Deny(if let Some((rule, reason)) = closest {
                Deny::new(rule.name.to_string(), reason, help(pod, req))
            } else if !any_selects {
                Deny::new(
                    RULE_DEFAULT_DENY,
                    format!(
                        "no access rule selects pod {} (service account {})",
                        pod.id(),
                        pod.service_account
                    ),
                    help(pod, req),
                )
            } else {
                let names: Vec<&str> = self
                    .rules
                    .iter()
                    .filter(|r| r.selects(pod))
                    .map(|r| &*r.name)
                    .collect();
                Deny::new(
                    RULE_DEFAULT_DENY,
                    format!(
                        "rule(s) {} select pod {} but none allows {}",
                        names.join(", "),
                        pod.id(),
                        describe_request(req)
                    ),
                    help(pod, req),
                )
            });
        };
        let redaction = Redaction { sets: redact_sets };
        if req.endpoint == ImdsApi::Instance && redaction.hides(&req.instance_path) {
            let field = req.instance_path.join("/");
            return Decision::Deny(Deny::new(
                rule.name.to_string(),
                format!(
                    "{field} is redacted from the instance document for pod {} by rule {}",
                    pod.id(),
                    rule.name
                ),
                format!(
                    "this field is hidden on purpose; if pod {} really needs it, ask the cluster admin to remove it from the `redact` list of imdsguard rule {} (see docs/proxy.md)",
                    pod.id(),
                    rule.name
                ),
            ));
        }
        Decision::Allow(Allow {
            rule: rule.name.clone(),
            redaction,
        })
    }
}

fn check_name(name: &str, i: usize) -> Result<(), AccessError> {
    let bad = |message: String| {
        Err(AccessError::Rule {
            rule: if name.is_empty() {
                format!("rules[{i}]")
            } else {
                name.to_string()
            },
            message,
        })
    };
    if name.is_empty() {
        return bad("a rule needs a `name`".into());
    }
    if name.len() > 128
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/' | b':'))
    {
        return bad("a name is at most 128 letters, digits, `-`, `_`, `.`, `/`, `:`".into());
    }
    if RESERVED_RULE_NAMES.contains(&name) {
        return bad(format!(
            "`{name}` is reserved for imdsguard's own decisions"
        ));
    }
    Ok(())
}

fn convert_rule(raw: RawRule, i: usize, cloud: Cloud) -> Result<Rule, AccessError> {
    let label = if raw.name.is_empty() {
        format!("rules[{i}]")
    } else {
        raw.name.clone()
    };
    let err = |message: String| AccessError::Rule {
        rule: label.clone(),
        message,
    };
    check_name(&raw.name, i)?;
    if raw.subjects.is_empty() {
        return Err(err(
            "no `subjects`: say which pods the rule is for (`namespace: \"*\"` for all)".into(),
        ));
    }
    let mut subjects = Vec::new();
    for (j, s) in raw.subjects.into_iter().enumerate() {
        let mut namespaces = s.namespaces;
        namespaces.extend(s.namespace);
        let mut service_accounts = s.service_accounts;
        service_accounts.extend(s.service_account);
        let pod_selector = s
            .pod_selector
            .map(|p| convert_selector(p, &format!("subjects[{j}].podSelector")))
            .transpose()
            .map_err(&err)?;
        if namespaces.is_empty() && service_accounts.is_empty() && pod_selector.is_none() {
            return Err(err(format!(
                "subjects[{j}] is empty: give a namespace, a serviceAccount or a podSelector (`namespace: \"*\"` for all pods)"
            )));
        }
        if namespaces
            .iter()
            .chain(&service_accounts)
            .any(|v| v.is_empty())
        {
            return Err(err(format!("subjects[{j}] has an empty name")));
        }
        subjects.push(Subject {
            namespaces,
            service_accounts,
            pod_selector,
        });
    }
    if cloud != Cloud::Azure {
        if raw.token.is_some() {
            return Err(err(format!(
                "`token` is Azure's (managed-identity tokens); under cloud {} grant the token paths in `paths` (and `audiences` for GCP identity tokens)",
                cloud.name()
            )));
        }
        let grant = crate::cloud_access::CloudGrant::new(
            cloud,
            raw.methods.as_deref(),
            &raw.paths,
            raw.redact.as_deref(),
            raw.audiences.as_deref(),
        )
        .map_err(&err)?;
        return Ok(Rule {
            name: Arc::from(raw.name.as_str()),
            subjects,
            methods: Vec::new(),
            paths: Vec::new(),
            token: None,
            redact: Arc::new(RedactSet::default()),
            cloud: Some(Arc::new(grant)),
        });
    }
    if raw.audiences.is_some() {
        return Err(err(
            "`audiences` is for GCP identity tokens (`cloud: gcp`); Azure token audiences go in `token.resources`".into(),
        ));
    }
    let methods = match raw.methods {
        None => vec![Method::Get],
        Some(list) => list
            .iter()
            .map(|m| {
                Method::parse(&m.to_ascii_uppercase())
                    .ok_or_else(|| err(format!("method `{m}` is not GET or POST")))
            })
            .collect::<Result<Vec<_>, _>>()?,
    };
    if methods.is_empty() {
        return Err(err("`methods` is empty".into()));
    }
    let mut paths = raw
        .paths
        .iter()
        .map(|p| parse_path_grant(p).map_err(&err))
        .collect::<Result<Vec<_>, _>>()?;
    let token = match raw.token {
        None => None,
        Some(t) => Some(convert_token(t).map_err(&err)?),
    };
    let token_path = paths.iter().any(|g| g.endpoint == ImdsApi::IdentityToken);
    match (&token, token_path) {
        (None, true) => {
            return Err(err(
                "the token endpoint needs a `token` section (allowed resources and identities)"
                    .into(),
            ));
        }
        (Some(_), false) => paths.push(PathGrant {
            endpoint: ImdsApi::IdentityToken,
            instance_prefix: Vec::new(),
        }),
        _ => {}
    }
    if paths.is_empty() {
        return Err(err(
            "no `paths` and no `token`: the rule allows nothing".into()
        ));
    }
    let redact = match raw.redact {
        None => RedactSet::new(DEFAULT_REDACT),
        Some(list) => RedactSet::new(&list),
    }
    .map_err(&err)?;
    Ok(Rule {
        name: Arc::from(raw.name.as_str()),
        subjects,
        methods,
        paths,
        token,
        redact: Arc::new(redact),
        cloud: None,
    })
}

/// Reads a path grant: a canonical IMDS path (`/metadata/identity/oauth2/token`), or an
/// instance sub-tree whose segments may be `*`.
pub fn parse_path_grant(path: &str) -> Result<PathGrant, String> {
    let bad = |why: &str| Err(format!("path `{path}`: {why}"));
    let Some(body) = path.trim().strip_prefix('/') else {
        return bad("must start with /");
    };
    if body.contains('?') {
        return bad("a path grant has no query (token parameters go in `token`)");
    }
    let body = body.strip_suffix('/').unwrap_or(body);
    let segments: Vec<&str> = body.split('/').collect();
    if segments.iter().any(|s| {
        s.is_empty()
            || (*s != "*"
                && !s
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'))
    }) {
        return bad("segments are letters, digits, `-`, `_` (or `*` in the instance document)");
    }
    let r = route(&format!("/{body}"));
    match r.endpoint {
        ImdsApi::Instance if !segments[..2].contains(&"*") => Ok(PathGrant {
            endpoint: ImdsApi::Instance,
            instance_prefix: segments[2..]
                .iter()
                .map(|s| s.to_ascii_lowercase())
                .collect(),
        }),
        _ if segments.contains(&"*") => bad("`*` is only allowed inside /metadata/instance"),
        ImdsApi::Unknown => bad("not an IMDS endpoint (see docs/proxy.md for the list)"),
        e => Ok(PathGrant {
            endpoint: e,
            instance_prefix: Vec::new(),
        }),
    }
}

fn convert_token(raw: RawToken) -> Result<TokenGrant, String> {
    if raw.resources.is_empty() {
        return Err("`token.resources` is empty: list the audiences allowed (or `*`)".into());
    }
    for r in &raw.resources {
        if r != "*" && !is_valid_resource(r) {
            return Err(format!(
                "token resource `{r}` is not a URI or an application id"
            ));
        }
    }
    if raw.identities.is_empty() {
        return Err(
            "`token.identities` is empty: list clientId / objectId / resourceId entries, `default: true` or `any: true`"
                .into(),
        );
    }
    let mut identities = Vec::new();
    for (k, id) in raw.identities.into_iter().enumerate() {
        let mut given = Vec::new();
        if let Some(v) = id.client_id {
            given.push(IdentityGrant::ClientId(v));
        }
        if let Some(v) = id.object_id {
            given.push(IdentityGrant::ObjectId(v));
        }
        if let Some(v) = id.resource_id {
            given.push(IdentityGrant::ResourceId(v));
        }
        if id.default == Some(true) {
            given.push(IdentityGrant::Default);
        }
        if id.any == Some(true) {
            given.push(IdentityGrant::Any);
        }
        if given.len() != 1 {
            return Err(format!(
                "token.identities[{k}] must be exactly one of clientId, objectId, resourceId, default: true, any: true"
            ));
        }
        let g = given.pop().expect("one");
        if matches!(&g, IdentityGrant::ClientId(v) | IdentityGrant::ObjectId(v) | IdentityGrant::ResourceId(v) if v.trim().is_empty())
        {
            return Err(format!("token.identities[{k}] is empty"));
        }
        identities.push(g);
    }
    Ok(TokenGrant {
        resources: raw.resources,
        identities,
    })
}

fn convert_selector(s: RawSelector, at: &str) -> Result<LabelSelector, String> {
    let expressions = s
        .match_expressions
        .into_iter()
        .map(|r| (r.key, r.operator, r.values));
    LabelSelector::from_api(s.match_labels, expressions, at)
}

// ---------------------------------------------------------------------------------
// Decisions
// ---------------------------------------------------------------------------------

/// The outcome of [`AccessRules::evaluate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Forward the request.
    Allow(Allow),
    /// Answer 403 with [`Deny::body`].
    Deny(Deny),
}

/// An allowed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allow {
    /// The first rule (in file order) that allows it.
    pub rule: Arc<str>,
    /// What to hide from the instance document.
    pub redaction: Redaction,
}

/// The fields to hide from an instance answer: those every allowing rule hides.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Redaction {
    sets: Vec<Arc<RedactSet>>,
}

impl Redaction {
    /// A redaction hiding what every one of these sets hides.
    pub fn new(sets: Vec<Arc<RedactSet>>) -> Redaction {
        Redaction { sets }
    }

    /// Whether nothing is hidden (no set, or a set hiding nothing).
    pub fn is_noop(&self) -> bool {
        self.sets.is_empty() || self.sets.iter().any(|s| s.is_empty())
    }

    /// Whether the element at `path` (from the document's root) is hidden.
    pub fn hides(&self, path: &[String]) -> bool {
        !self.is_noop() && self.sets.iter().all(|s| s.hides(path))
    }

    /// Removes every hidden element from a whole instance document (object keys, and
    /// array elements a path names).
    pub fn apply(&self, doc: &mut Value) {
        if self.is_noop() {
            return;
        }
        let mut path = Vec::with_capacity(8);
        self.walk(doc, &mut path);
    }

    fn walk(&self, node: &mut Value, path: &mut Vec<String>) {
        match node {
            Value::Object(map) => map.retain(|k, child| {
                path.push(k.clone());
                let keep = !self.hides(path);
                if keep {
                    self.walk(child, path);
                }
                path.pop();
                keep
            }),
            Value::Array(items) => {
                let mut i = 0usize;
                items.retain_mut(|child| {
                    path.push(i.to_string());
                    i += 1;
                    let keep = !self.hides(path);
                    if keep {
                        self.walk(child, path);
                    }
                    path.pop();
                    keep
                });
            }
            _ => {}
        }
    }

    /// The hidden specs of the first set, for messages.
    pub fn describe(&self) -> String {
        self.sets.first().map(|s| s.describe()).unwrap_or_default()
    }
}

/// A denied request: the rule, why, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deny {
    /// The rule that denied (a rule name, or [`RULE_DEFAULT_DENY`],
    /// [`RULE_UNKNOWN_SOURCE`], [`RULE_CANONICAL_FORM`], [`RULE_NO_RULES`]).
    pub rule: String,
    /// Why.
    pub reason: String,
    /// How to get access.
    pub help: String,
}

impl Deny {
    /// A denial.
    pub fn new(
        rule: impl Into<String>,
        reason: impl Into<String>,
        help: impl Into<String>,
    ) -> Deny {
        Deny {
            rule: rule.into(),
            reason: reason.into(),
            help: help.into(),
        }
    }

    /// The denial of a source address that is no known pod.
    pub fn unknown_source(ip: IpAddr) -> Deny {
        Deny::new(
            RULE_UNKNOWN_SOURCE,
            format!("source address {} is not a known pod", ip.to_canonical()),
            "imdsguard maps callers to pods by source address and has no pod with this one; \
             if this is a new pod, retry in a few seconds; otherwise ask the cluster admin to \
             check imdsguard's pod index (--pods, or the agent's view of the cluster)",
        )
    }

    /// The denial of a caller on the node whose socket is in a pod's cgroup (`cgroup`,
    /// its cgroup v2 id) that no known hostNetwork pod owns.
    pub fn unknown_pod_cgroup(ip: IpAddr, cgroup: u64) -> Deny {
        Deny::new(
            RULE_UNKNOWN_POD_CGROUP,
            format!(
                "the caller at {} is a process in a pod's cgroup (cgroup id {cgroup}) and imdsguard knows no hostNetwork pod there",
                ip.to_canonical()
            ),
            "imdsguard identifies hostNetwork pods by their cgroup; if this pod just started, retry in a \
             few seconds; otherwise ask the cluster admin to check imdsguard's view of the node's \
             hostNetwork pods (their uid and hostNetwork: true in the pods file, or the agent's pod watch)",
        )
    }

    /// The denial of an ambiguous or oversized request.
    pub fn canonical_form(rejection: &Rejection) -> Deny {
        Deny::new(
            RULE_CANONICAL_FORM,
            format!("ambiguous request rejected: {}", rejection.detail),
            "send the request in its plain form, as the IMDS documentation writes it \
             (e.g. GET /metadata/identity/oauth2/token?api-version=2018-02-01&resource=...), \
             without encoded, repeated or dot segments, and without repeated parameters",
        )
    }

    /// The denial while no rules are loaded.
    pub fn no_rules() -> Deny {
        Deny::new(
            RULE_NO_RULES,
            "imdsguard has not loaded its access rules yet",
            "retry in a few seconds; if it lasts, ask the cluster admin to check imdsguard's rules",
        )
    }

    /// The JSON body of the 403 answer
    /// (`{"error":"imdsguard_denied","imdsguard":{"decision":"deny",...}}`).
    pub fn body(&self) -> Value {
        json!({
            "error": IMDSGUARD_DENY_ERROR,
            "imdsguard": {
                "decision": "deny",
                "rule": self.rule,
                "reason": self.reason,
                "help": self.help,
            }
        })
    }
}

fn describe_selector(selector: Option<&IdentitySelector>) -> String {
    match selector {
        None => "the default identity (no client_id, object_id or msi_res_id)".into(),
        Some(IdentitySelector::ClientId(v)) => format!("client_id={v}"),
        Some(IdentitySelector::ObjectId(v)) => format!("object_id={v}"),
        Some(IdentitySelector::ResourceId { id, .. }) => format!("msi_res_id/mi_res_id={id}"),
    }
}

/// `GET /metadata/identity/oauth2/token (resource R, client_id=C)`.
pub fn describe_request(req: &ImdsRequest) -> String {
    let mut s = String::with_capacity(96);
    s.push_str(req.method.as_str());
    s.push(' ');
    s.push_str(req.endpoint.canonical_path().unwrap_or("?"));
    for seg in &req.instance_path {
        s.push('/');
        s.push_str(seg);
    }
    if let Some(t) = &req.token {
        let _ = write!(
            s,
            " (resource {}, {})",
            t.resource,
            describe_selector(t.selector.as_ref())
        );
    }
    s
}

fn help(pod: &PodInfo, req: &ImdsRequest) -> String {
    format!(
        "ask the cluster admin to add an access rule to imdsguard's rules for namespace {}, service account {} allowing {} (see docs/proxy.md)",
        pod.namespace,
        pod.service_account,
        describe_request(req)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canon::Canonicalizer;
    use crate::imds::validate;

    const KUBELET: &str = "2d7b9c41-6e83-4f1a-b5c2-8a9e0f3d1c67";
    const KV_ID: &str = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/kv";

    const RULES: &str = r#"
apiVersion: imdsguard.io/v1alpha1
kind: AccessRules
rules:
  - name: payments-api-arm
    subjects:
      - namespace: payments
        serviceAccount: api
        podSelector:
          matchLabels: {app: api}
    token:
      resources: ["https://management.azure.com/"]
      identities:
        - clientId: 2D7B9C41-6E83-4F1A-B5C2-8A9E0F3D1C67
  - name: payments-vault
    subjects: [{namespace: payments}]
    paths: [/metadata/identity/oauth2/token]
    token:
      resources: [https://vault.azure.net]
      identities:
        - resourceId: /subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/kv/
        - default: true
  - name: everyone-basics
    subjects: [{namespace: "*"}]
    paths: [/metadata/versions, /metadata/instance/compute/location, /metadata/instance/network/interface/*/ipv4]
  - name: monitoring-instance
    subjects:
      - namespaces: [monitoring, kube-system]
        podSelector:
          matchExpressions:
            - {key: app, operator: In, values: [agent, exporter]}
    paths: [/metadata/instance]
  - name: debug-instance
    subjects: [{serviceAccount: debugger}]
    paths: [/metadata/instance]
    redact: [customData, compute/osProfile]
  - name: events
    subjects: [{namespace: ops}]
    methods: [GET, POST]
    paths: [/metadata/scheduledevents]
"#;

    fn rules() -> AccessRules {
        AccessRules::parse(RULES).expect("rules parse")
    }

    fn pod(ns: &str, name: &str, sa: &str, labels: &[(&str, &str)]) -> PodInfo {
        PodInfo {
            namespace: ns.into(),
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            service_account: sa.into(),
        }
    }

    fn api() -> PodInfo {
        pod("payments", "api-7d9", "api", &[("app", "api")])
    }

    fn req(method: &str, target: &str) -> ImdsRequest {
        let c = Canonicalizer::default()
            .canonicalize(target)
            .unwrap_or_else(|e| panic!("{target}: {e}"));
        validate(method, &c.path, c.query.as_deref(), [("Metadata", "true")])
            .unwrap_or_else(|e| panic!("{target}: {e}"))
    }

    fn decide(p: &PodInfo, target: &str) -> Decision {
        rules().evaluate(p, &req("GET", target))
    }

    fn allowed_by(d: &Decision) -> Option<&str> {
        match d {
            Decision::Allow(a) => Some(&a.rule),
            Decision::Deny(_) => None,
        }
    }

    fn denied(d: Decision) -> Deny {
        match d {
            Decision::Deny(d) => d,
            Decision::Allow(a) => panic!("allowed by {}", a.rule),
        }
    }

    fn token(resource: &str, extra: &str) -> String {
        format!("/metadata/identity/oauth2/token?api-version=2018-02-01&resource={resource}{extra}")
    }

    #[test]
    fn token_rules_allow_only_their_audience_and_identity() {
        let arm = "https://management.azure.com/";
        let d = decide(&api(), &token(arm, &format!("&client_id={KUBELET}")));
        assert_eq!(allowed_by(&d), Some("payments-api-arm"));
        // The audience compares ignoring case and one trailing slash.
        let d = decide(
            &api(),
            &token(
                "https://MANAGEMENT.azure.com",
                &format!("&client_id={KUBELET}"),
            ),
        );
        assert_eq!(allowed_by(&d), Some("payments-api-arm"));

        let d = denied(decide(
            &api(),
            &token(
                "https://storage.azure.com/",
                &format!("&client_id={KUBELET}"),
            ),
        ));
        assert_eq!(d.rule, "payments-api-arm");
        assert!(
            d.reason
                .contains("not for resource https://storage.azure.com/"),
            "{}",
            d.reason
        );
        assert!(
            d.help.contains("namespace payments, service account api"),
            "{}",
            d.help
        );

        let d = denied(decide(
            &api(),
            &token(arm, "&client_id=5e1c8a7d-2f94-4b63-9d0e-7a3b1c6f8e52"),
        ));
        assert_eq!(d.rule, "payments-api-arm");
        assert!(d.reason.contains("not client_id=5e1c8a7d"), "{}", d.reason);
        // The default identity is not the kubelet identity, even if IMDS would pick it.
        let d = denied(decide(&api(), &token(arm, "")));
        assert!(d.reason.contains("default identity"), "{}", d.reason);
        // A resource id selector does not stand for a client id.
        assert!(matches!(
            decide(&api(), &token(arm, "&mi_res_id=/x")),
            Decision::Deny(_)
        ));

        // Another rule of the namespace: vault with the kv identity (both parameter
        // names, case and trailing slash ignored) or the default identity.
        let vault = "https://vault.azure.net";
        let other = pod("payments", "worker", "worker", &[]);
        for extra in [
            format!("&msi_res_id={KV_ID}"),
            format!("&mi_res_id={}", KV_ID.to_uppercase()),
            String::new(),
        ] {
            assert_eq!(
                allowed_by(&decide(&other, &token(vault, &extra))),
                Some("payments-vault"),
                "{extra}"
            );
        }
        assert!(matches!(
            decide(&other, &token(arm, &format!("&client_id={KUBELET}"))),
            Decision::Deny(_)
        ));
        assert!(matches!(
            decide(&other, &token(vault, &format!("&client_id={KUBELET}"))),
            Decision::Deny(_)
        ));
    }

    #[test]
    fn subjects_select_by_namespace_labels_and_service_account() {
        let arm = token(
            "https://management.azure.com/",
            &format!("&client_id={KUBELET}"),
        );
        // Wrong labels or service account: payments-api-arm does not select it.
        for p in [
            pod("payments", "x", "api", &[("app", "web")]),
            pod("payments", "x", "other", &[("app", "api")]),
            pod("shop", "x", "api", &[("app", "api")]),
        ] {
            assert!(matches!(decide(&p, &arm), Decision::Deny(_)), "{p:?}");
        }
        let mon = pod("monitoring", "agent-1", "default", &[("app", "agent")]);
        assert_eq!(
            allowed_by(&decide(&mon, "/metadata/instance?api-version=2021-02-01")),
            Some("monitoring-instance")
        );
        let mon2 = pod("monitoring", "x", "default", &[("app", "grafana")]);
        assert!(matches!(
            decide(&mon2, "/metadata/instance?api-version=2021-02-01"),
            Decision::Deny(_)
        ));
        let dbg = pod("anywhere", "x", "debugger", &[]);
        assert_eq!(
            allowed_by(&decide(&dbg, "/metadata/instance?api-version=2021-02-01")),
            Some("debug-instance")
        );
    }

    #[test]
    fn expecting_selects_shapes_and_unknown_service_accounts_do_not_match() {
        let r = rules();
        let labels: Labels = [("app".to_string(), "api".to_string())].into();
        let shape = |ns, sa| PodShapeRef {
            namespace: ns,
            labels: &labels,
            service_account: sa,
        };
        let names = |s: &PodShapeRef<'_>| -> Vec<String> {
            r.expecting(s).iter().map(|r| r.name.to_string()).collect()
        };
        // payments-api-arm needs service account api; payments-vault and the catch-all
        // basics select by namespace only.
        let with_sa = names(&shape("payments", Some("api")));
        assert!(
            with_sa.contains(&"payments-api-arm".to_string()),
            "{with_sa:?}"
        );
        assert!(
            with_sa.contains(&"payments-vault".to_string()),
            "{with_sa:?}"
        );
        let unknown = names(&shape("payments", None));
        assert!(
            !unknown.contains(&"payments-api-arm".to_string()),
            "{unknown:?}"
        );
        assert!(
            unknown.contains(&"payments-vault".to_string()),
            "{unknown:?}"
        );
        // The same answer as for a running pod of that shape.
        let p = api();
        assert_eq!(
            r.expecting(&PodShapeRef::of(&p)).len(),
            r.rules().iter().filter(|x| x.selects(&p)).count()
        );
        let none = AccessRules::parse(
            "rules: [{name: a, subjects: [{namespace: x, serviceAccount: s}], paths: [/metadata/versions]}]",
        )
        .unwrap();
        assert!(none.expecting(&shape("payments", Some("api"))).is_empty());
        assert!(none.expecting(&shape("x", None)).is_empty());
        assert_eq!(none.expecting(&shape("x", Some("s"))).len(), 1);
    }

    #[test]
    fn extend_adds_rules_and_refuses_a_name_twice() {
        let mut a = AccessRules::parse(
            "rules: [{name: a, subjects: [{namespace: x}], paths: [/metadata/versions]}]",
        )
        .unwrap();
        let b = AccessRules::parse(
            "rules: [{name: b, subjects: [{namespace: y}], paths: [/metadata/versions]}]",
        )
        .unwrap();
        a.extend(b.clone()).unwrap();
        assert_eq!(a.len(), 2);
        let e = a.extend(b).unwrap_err().to_string();
        assert!(
            e.contains("rule `b`") && e.contains("another file or preset"),
            "{e}"
        );
        assert_eq!(a.len(), 2);
    }

    #[test]
    fn default_deny_names_the_pod_and_the_request() {
        let p = pod("shop", "web-1", "web", &[]);
        let d = denied(decide(&p, &token("https://management.azure.com/", "")));
        assert_eq!(d.rule, RULE_DEFAULT_DENY);
        assert!(d.reason.contains("everyone-basics select pod shop/web-1 but none allows GET /metadata/identity/oauth2/token"), "{}", d.reason);
        assert!(d.help.contains("namespace shop, service account web allowing GET /metadata/identity/oauth2/token (resource https://management.azure.com/"), "{}", d.help);
        let body = d.body();
        assert_eq!(body["error"], IMDSGUARD_DENY_ERROR);
        assert_eq!(body["imdsguard"]["decision"], "deny");
        assert_eq!(body["imdsguard"]["rule"], RULE_DEFAULT_DENY);

        let empty = AccessRules::default();
        let d = denied(empty.evaluate(&p, &req("GET", "/metadata/versions")));
        assert_eq!(
            d.reason,
            "no access rule selects pod shop/web-1 (service account web)"
        );
    }

    #[test]
    fn paths_methods_and_instance_subtrees() {
        let p = pod("shop", "web-1", "web", &[]);
        assert!(allowed_by(&decide(&p, "/metadata/versions")).is_some());
        assert!(
            allowed_by(&decide(
                &p,
                "/metadata/instance/compute/location?api-version=2021-02-01&format=text"
            ))
            .is_some()
        );
        // Case variants are the same path.
        assert!(
            allowed_by(&decide(
                &p,
                "/Metadata/Instance/COMPUTE/Location?api-version=2021-02-01&format=text"
            ))
            .is_some()
        );
        assert!(
            allowed_by(&decide(
                &p,
                "/metadata/instance/network/interface/0/ipv4/ipAddress?api-version=2021-02-01"
            ))
            .is_some()
        );
        for denied_target in [
            "/metadata/instance?api-version=2021-02-01",
            "/metadata/instance/compute?api-version=2021-02-01",
            "/metadata/instance/compute/locationX?api-version=2021-02-01&format=text",
            "/metadata/instance/network/interface/0/ipv6?api-version=2021-02-01",
            "/metadata/identity/info?api-version=2018-02-01",
            "/metadata/scheduledevents?api-version=2020-07-01",
        ] {
            assert!(
                matches!(decide(&p, denied_target), Decision::Deny(_)),
                "{denied_target}"
            );
        }
        let ops = pod("ops", "drainer", "default", &[]);
        let post = req("POST", "/metadata/scheduledevents?api-version=2020-07-01");
        assert_eq!(allowed_by(&rules().evaluate(&ops, &post)), Some("events"));
        // GET-only rules do not allow POST.
        let r = AccessRules::parse(
            "rules: [{name: e, subjects: [{namespace: ops}], paths: [/metadata/scheduledevents]}]",
        )
        .unwrap();
        assert!(matches!(r.evaluate(&ops, &post), Decision::Deny(_)));
    }

    #[test]
    fn redaction_defaults_intersection_and_subpaths() {
        let mon = pod("monitoring", "agent-1", "debugger", &[("app", "agent")]);
        // monitoring-instance (default redaction) and debug-instance (customData,
        // compute/osProfile) both allow: only what both hide is hidden.
        let Decision::Allow(a) = decide(&mon, "/metadata/instance?api-version=2021-02-01") else {
            panic!("denied")
        };
        assert_eq!(&*a.rule, "monitoring-instance");
        let mut doc = json!({
            "compute": {
                "customData": "secret", "userData": "u", "publicKeys": [{"keyData": "k"}],
                "tags": "a:1", "tagsList": [{"name": "a", "value": "1"}],
                "osProfile": {"adminUsername": "azureuser"}, "vmId": "v"
            },
            "network": {"interface": [{"macAddress": "m"}]}
        });
        a.redaction.apply(&mut doc);
        assert_eq!(
            doc,
            json!({
                "compute": {
                    "userData": "u", "publicKeys": [{"keyData": "k"}],
                    "tags": "a:1", "tagsList": [{"name": "a", "value": "1"}],
                    "osProfile": {"adminUsername": "azureuser"}, "vmId": "v"
                },
                "network": {"interface": [{"macAddress": "m"}]}
            })
        );
        // The one field both hide is denied as a sub-path, whatever its case.
        for t in [
            "/metadata/instance/compute/customData?api-version=2021-02-01&format=text",
            "/metadata/instance/COMPUTE/CUSTOMDATA?api-version=2021-02-01&format=text",
        ] {
            let d = denied(decide(&mon, t));
            assert_eq!(d.rule, "monitoring-instance");
            assert!(d.reason.contains("is redacted"), "{}", d.reason);
        }
        assert!(
            allowed_by(&decide(
                &mon,
                "/metadata/instance/compute/userData?api-version=2021-02-01&format=text"
            ))
            .is_some()
        );

        // One rule alone: its default redaction applies, tags and tagsList together,
        // names at any depth, inside sub-paths too.
        let only = pod("monitoring", "exp", "default", &[("app", "exporter")]);
        let Decision::Allow(a) = decide(&only, "/metadata/instance?api-version=2021-02-01") else {
            panic!("denied")
        };
        let mut doc = json!({"compute": {"customData": "", "tagsList": [], "publicKeys": [], "vmId": "v",
            "nested": {"userData": "x"}}});
        a.redaction.apply(&mut doc);
        assert_eq!(doc, json!({"compute": {"vmId": "v", "nested": {}}}));
        for t in [
            "/metadata/instance/compute/tagsList/0/value?api-version=2021-02-01&format=text",
            "/metadata/instance/compute/publicKeys/0/keyData?api-version=2021-02-01&format=text",
            "/metadata/instance/compute/tags?api-version=2021-02-01&format=text",
            "/metadata/instance/compute/userdata?api-version=2021-02-01&format=text",
        ] {
            assert!(matches!(decide(&only, t), Decision::Deny(_)), "{t}");
        }
    }

    #[test]
    fn redact_sets() {
        let s =
            RedactSet::new(&["customData", "network/interface/*/macAddress", "tagsList"]).unwrap();
        let p = |s: &str| s.split('/').map(String::from).collect::<Vec<_>>();
        assert!(s.hides(&p("compute/customdata")));
        assert!(s.hides(&p("compute/tags")));
        assert!(s.hides(&p("network/interface/3/macAddress")));
        assert!(!s.hides(&p("network/interface/3/ipv4")));
        assert!(!s.hides(&p("network")));
        assert!(RedactSet::new(&["a b"]).is_err());
        assert!(RedactSet::new(&[""]).is_err());
        assert!(RedactSet::new::<&str>(&[]).unwrap().is_empty());
        let mut doc = json!({"network": {"interface": [{"macAddress": "m", "ipv4": {}}]}});
        Redaction::new(vec![Arc::new(s.clone())]).apply(&mut doc);
        assert_eq!(doc, json!({"network": {"interface": [{"ipv4": {}}]}}));
        // An empty set among the allowing rules shows everything.
        let r = Redaction::new(vec![Arc::new(s), Arc::new(RedactSet::default())]);
        assert!(r.is_noop());
        assert!(!r.hides(&p("compute/customData")));
    }

    #[test]
    fn rule_file_errors_name_the_rule() {
        let cases = [
            (
                "rules: [{name: a, subjects: [{namespace: x}], paths: [/metadata/nothing]}]",
                "not an IMDS endpoint",
            ),
            (
                "rules: [{name: a, subjects: [{namespace: x}], paths: [/metadata/identity/oauth2/token]}]",
                "needs a `token` section",
            ),
            (
                "rules: [{name: a, subjects: [{}], paths: [/metadata/versions]}]",
                "subjects[0] is empty",
            ),
            (
                "rules: [{name: a, subjects: [], paths: [/metadata/versions]}]",
                "no `subjects`",
            ),
            (
                "rules: [{name: a, subjects: [{namespace: x}]}]",
                "allows nothing",
            ),
            (
                "rules: [{name: a, subjects: [{namspace: x}], paths: [/metadata/versions]}]",
                "unknown field",
            ),
            (
                "rules: [{subjects: [{namespace: x}], paths: [/metadata/versions]}]",
                "needs a `name`",
            ),
            (
                "rules: [{name: default-deny, subjects: [{namespace: x}], paths: [/metadata/versions]}]",
                "reserved",
            ),
            (
                "rules: [{name: a, subjects: [{namespace: x}], paths: [/metadata/versions]}, {name: a, subjects: [{namespace: y}], paths: [/metadata/versions]}]",
                "used by another rule",
            ),
            (
                "rules: [{name: a, subjects: [{namespace: x}], token: {resources: [nope], identities: [{any: true}]}}]",
                "not a URI",
            ),
            (
                "rules: [{name: a, subjects: [{namespace: x}], token: {resources: ['*'], identities: []}}]",
                "identities` is empty",
            ),
            (
                "rules: [{name: a, subjects: [{namespace: x}], token: {resources: ['*'], identities: [{clientId: c, default: true}]}}]",
                "exactly one",
            ),
            (
                "rules: [{name: a, subjects: [{namespace: x}], methods: [PUT], paths: [/metadata/versions]}]",
                "not GET or POST",
            ),
            (
                "rules: [{name: a, subjects: [{namespace: x}], paths: [/metadata/identity/*]}]",
                "only allowed inside",
            ),
            (
                "rules: [{name: a, subjects: [{namespace: x}], paths: ['/metadata/identity/oauth2/token?resource=x']}]",
                "no query",
            ),
            (
                "rules: [{name: a, subjects: [{namespace: x, podSelector: {matchExpressions: [{key: k, operator: In}]}}], paths: [/metadata/versions]}]",
                "needs at least one value",
            ),
            (
                "rules: [{name: a, subjects: [{namespace: x}], paths: [/metadata/instance], redact: ['a.b']}]",
                "not a field name",
            ),
            ("rules: {name: a}", "invalid type"),
        ];
        for (text, want) in cases {
            let e = AccessRules::parse(text).expect_err(text).to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
        assert!(AccessRules::parse("rules: []").unwrap().is_empty());
        assert!(AccessRules::parse("{}").unwrap().is_empty());
        assert_eq!(rules().len(), 6);
        // JSON works too.
        let r = AccessRules::parse(r#"{"rules":[{"name":"j","subjects":[{"namespace":"*"}],"paths":["/metadata/versions/"]}]}"#).unwrap();
        assert_eq!(r.rules()[0].paths[0].to_string(), "/metadata/versions");
    }

    /// Every bypass attempt of the canonicalisation table is rejected, or decided by the
    /// same rule as its clean form, for every pod.
    #[test]
    fn bypass_attempts_are_decided_like_the_clean_form() {
        let canon = Canonicalizer::default();
        let rules = AccessRules::parse(
            r#"
rules:
  - name: token-arm
    subjects: [{namespace: payments}]
    token:
      resources: [https://management.azure.com/]
      identities: [{default: true}]
"#,
        )
        .unwrap();
        let pods = [api(), pod("shop", "web", "web", &[])];
        let clean = "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F";
        let clean_req = req("GET", clean);
        let mut canonicalised = 0;
        for attempt in crate::canon::tests::attempts() {
            let Ok(c) = canon.canonicalize(&attempt) else {
                continue;
            };
            canonicalised += 1;
            let r = validate("GET", &c.path, c.query.as_deref(), [("Metadata", "true")])
                .unwrap_or_else(|e| panic!("{attempt}: {e}"));
            assert_eq!(r.endpoint, ImdsApi::IdentityToken, "{attempt}");
            for p in &pods {
                assert_eq!(
                    rules.evaluate(p, &r),
                    rules.evaluate(p, &clean_req),
                    "{attempt} from {}",
                    p.id()
                );
            }
        }
        assert!(canonicalised >= 8, "{canonicalised}");
    }
}
