//! `MetadataAccessPolicy` (`imdsguard.io/v1alpha1`, cluster-scoped): who may reach the
//! metadata endpoints, as one declarative object the controller and the node agents
//! follow.
//!
//! The spec is the access-rules file of the proxy (`docs/proxy.md`) as Rust types:
//! `cloud` (the file's top-level `cloud:`: `azure` when absent, `aws`, `gcp`) and
//! `rules`, each with `name`, `subjects`, `methods`, `paths`, `token` (Azure),
//! `audiences` (GCP identity tokens) and `redact`.
//! What a rule means is the core's: [`MetadataAccessPolicy::access_rules`] hands the spec
//! to [`AccessRules::from_value`], the same reader as a `--rules` file, so the file form
//! and the object can never drift apart. The schema checks what it can before anything
//! is stored (required fields, enums, patterns, CEL rules spanning fields); the core
//! checks the rest (path grants, audiences) and the controller reports a failure in the
//! status (`Ready` false, reason `InvalidRules`).
//!
//! The committed CRD (`deploy/crds/metadataaccesspolicies.imdsguard.io.yaml`) is
//! [`crd_yaml`]'s output; a test fails when they differ (`scripts/crd.sh` rewrites it).

use std::collections::BTreeMap;

use imdsguard_core::access::{AccessError, AccessRules};
use imdsguard_core::target::Cloud;
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use serde::{Deserialize, Serialize};

/// The API group of imdsguard's own kinds.
pub const GROUP: &str = "imdsguard.io";
/// The version of [`MetadataAccessPolicy`].
pub const VERSION: &str = "v1alpha1";
/// The file the CRD is committed as, under `deploy/crds/`.
pub const CRD_FILE: &str = "metadataaccesspolicies.imdsguard.io.yaml";

/// Who may reach the cloud's metadata endpoints (IMDS, WireServer) from pods, and for
/// what: every pod a rule's subjects select is expected to reach them (the controller's
/// generated policies let it through, the agent allowlists it); in proxy mode each
/// request is further checked against the rule's paths, methods, token audiences and
/// identities. Rules of all `MetadataAccessPolicy` objects add up.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
// `printcolumn(..)` repeats `type_` and `description` per column: not duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[kube(
    group = "imdsguard.io",
    version = "v1alpha1",
    kind = "MetadataAccessPolicy",
    plural = "metadataaccesspolicies",
    shortname = "map",
    category = "imdsguard",
    status = "MetadataAccessPolicyStatus",
    derive = "PartialEq",
    derive = "Default",
    doc = "Who may reach the cloud metadata endpoints from pods (imdsguard access rules).",
    printcolumn(
        name = "Engine",
        type_ = "string",
        json_path = ".status.engine",
        description = "the policy engine the generated objects are for"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "whether the generated policies are in place"
    ),
    printcolumn(
        name = "Conflicting",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Conflicting\")].status",
        description = "whether another policy re-opens a target or blocks an expected workload"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp",
        description = "age"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("!has(self.cloud) || self.cloud == 'azure' || !has(self.rules) || self.rules.all(r, !has(r.token) && (!has(r.methods) || !r.methods.exists(m, m == 'POST')))").message("`token` and method POST are Azure's (managed-identity tokens): under cloud aws or gcp grant the token paths in `paths` (GCP identity tokens: `audiences`; the AWS IMDSv2 token: `methods: [PUT]` with `paths: [/latest/api/token]`)").reason(kube::core::Reason::FieldValueForbidden))]
#[x_kube(validation = kube::core::Rule::new("(has(self.cloud) && self.cloud == 'aws') || !has(self.rules) || self.rules.all(r, !has(r.methods) || !r.methods.exists(m, m == 'PUT'))").message("method PUT is AWS's IMDSv2 token step (`cloud: aws`) only").reason(kube::core::Reason::FieldValueForbidden))]
#[x_kube(validation = kube::core::Rule::new("(has(self.cloud) && self.cloud == 'gcp') || !has(self.rules) || self.rules.all(r, !has(r.audiences))").message("`audiences` is for GCP identity tokens (`cloud: gcp`); Azure token audiences go in `token.resources`").reason(kube::core::Reason::FieldValueForbidden))]
pub struct MetadataAccessPolicySpec {
    /// The cloud whose metadata service the rules are for: `azure` (when absent), `aws`
    /// or `gcp`, as a rules file's top-level `cloud:`. An object of another cloud than
    /// the one imdsguard runs for (`--cloud`) is refused (it adds no access).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud: Option<CloudName>,
    /// The rules; each names the pods it is for and what they may ask. Names are unique
    /// within the object.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    #[schemars(length(max = 64))]
    pub rules: Vec<RuleSpec>,
}

/// One rule: which pods (`subjects`, any of them) may make which requests.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("(has(self.paths) && size(self.paths) > 0) || has(self.token)").message("a rule allows nothing without `paths` or `token`").reason(kube::core::Reason::FieldValueRequired))]
pub struct RuleSpec {
    /// The rule's name (letters, digits, `-`, `_`, `.`, `:`; at most 63): named in the
    /// proxy's decisions and the audit's verdicts as `POLICY/NAME`.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[A-Za-z0-9._:-]+$"))]
    pub name: String,
    /// What the rule is for, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,
    /// The pods the rule is for: a pod is selected when any subject matches it.
    #[schemars(length(min = 1, max = 16))]
    pub subjects: Vec<SubjectSpec>,
    /// HTTP methods allowed; `GET` when absent. Azure: `GET`, `POST`. AWS: `GET`, or
    /// `PUT` alone with `paths: [/latest/api/token]` (the IMDSv2 token step, a rule of
    /// its own). GCP: `GET`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2))]
    pub methods: Option<Vec<HttpMethod>>,
    /// Paths allowed. Azure: canonical endpoints (`/metadata/identity/oauth2/token`) or
    /// instance document sub-trees (`/metadata/instance/compute/*`). AWS and GCP: the
    /// cloud's paths, case-sensitive and compared exactly, each granting itself and
    /// what is below it (`*` any one segment); a secret (role credentials, tokens,
    /// kube-env, user data) only by a path naming it (`docs/proxy.md`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 32),
        inner(length(min = 1, max = 256), regex(pattern = r"^/[^?]*$"))
    )]
    pub paths: Vec<String>,
    /// Azure tokens: the audiences and identities allowed (implies the token endpoint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<TokenSpec>,
    /// GCP identity tokens (`cloud: gcp`): the `audience` values a
    /// `.../service-accounts/SA/identity` path allows (`*`: any); required with such a
    /// path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 16), inner(length(min = 1, max = 512)))]
    pub audiences: Option<Vec<String>>,
    /// Fields hidden in JSON answers (Azure's instance document: `customData`,
    /// `compute/tagsList`, ...; AWS's identity document: `accountId`; GCP's recursive
    /// reads); the proxy's default set for the cloud when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 128)))]
    pub redact: Option<Vec<String>>,
}

/// An HTTP method a rule allows.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpMethod {
    /// `GET`.
    #[serde(rename = "GET")]
    Get,
    /// `POST` (Azure).
    #[serde(rename = "POST")]
    Post,
    /// `PUT` (AWS's IMDSv2 token step).
    #[serde(rename = "PUT")]
    Put,
}

/// The cloud a [`MetadataAccessPolicy`] is written for (`spec.cloud`).
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CloudName {
    /// Azure IMDS and WireServer (the default).
    Azure,
    /// AWS: EC2 IMDS, the EKS Pod Identity agent.
    Aws,
    /// GCP: the GCE metadata server.
    Gcp,
}

impl From<CloudName> for Cloud {
    fn from(c: CloudName) -> Cloud {
        match c {
            CloudName::Azure => Cloud::Azure,
            CloudName::Aws => Cloud::Aws,
            CloudName::Gcp => Cloud::Gcp,
        }
    }
}

impl From<Cloud> for CloudName {
    fn from(c: Cloud) -> CloudName {
        match c {
            Cloud::Azure => CloudName::Azure,
            Cloud::Aws => CloudName::Aws,
            Cloud::Gcp => CloudName::Gcp,
        }
    }
}

/// Which pods: every given part must match (namespaces, service accounts, labels); `"*"`
/// as a namespace is every namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("has(self.__namespace__) || has(self.namespaces) || has(self.serviceAccount) || has(self.serviceAccounts) || has(self.podSelector)").message("an empty subject would select nothing: give a namespace, a serviceAccount or a podSelector (namespace \"*\" for all pods)").reason(kube::core::Reason::FieldValueRequired))]
pub struct SubjectSpec {
    /// One namespace (or `"*"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
    /// Namespaces (any of them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 63)))]
    pub namespaces: Vec<String>,
    /// One service account name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub service_account: Option<String>,
    /// Service account names (any of them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 253)))]
    pub service_accounts: Vec<String>,
    /// Pod labels, as a Kubernetes label selector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<SelectorSpec>,
}

/// A Kubernetes label selector.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SelectorSpec {
    /// Labels that must be equal.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    pub match_labels: BTreeMap<String, String>,
    /// Requirements that must all hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub match_expressions: Vec<RequirementSpec>,
}

/// One label requirement.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = kube::core::Rule::new("(self.operator in ['In', 'NotIn']) == (has(self.values) && size(self.values) > 0)").message("In and NotIn need values; Exists and DoesNotExist take none"))]
pub struct RequirementSpec {
    /// The label key.
    #[schemars(length(min = 1, max = 317))]
    pub key: String,
    /// `In`, `NotIn`, `Exists` or `DoesNotExist`.
    pub operator: Operator,
    /// The values (`In`, `NotIn`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 63)))]
    pub values: Vec<String>,
}

/// A label selector operator.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operator {
    /// The label's value is one of the values.
    In,
    /// The label is absent or its value is none of the values.
    NotIn,
    /// The label is present.
    Exists,
    /// The label is absent.
    DoesNotExist,
}

/// Tokens a rule allows from the identity endpoint.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TokenSpec {
    /// Audiences (`resource=`) allowed, or `"*"`.
    #[schemars(length(min = 1, max = 16), inner(length(min = 1, max = 512)))]
    pub resources: Vec<String>,
    /// Identities allowed (one selector each).
    #[schemars(length(min = 1, max = 16))]
    pub identities: Vec<IdentitySpec>,
}

/// One identity: exactly one of `clientId`, `objectId`, `resourceId`, `default: true`
/// (the VM's identity, no selector in the request) or `any: true`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("[has(self.clientId), has(self.objectId), has(self.resourceId), has(self.default) && self.default, has(self.any) && self.any].filter(x, x).size() == 1").message("give exactly one of clientId, objectId, resourceId, default: true, any: true"))]
pub struct IdentitySpec {
    /// A user-assigned identity's client id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub client_id: Option<String>,
    /// An identity's object (principal) id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub object_id: Option<String>,
    /// A user-assigned identity's ARM resource id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub resource_id: Option<String>,
    /// The VM's default identity (no selector in the request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<bool>,
    /// Any identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub any: Option<bool>,
}

/// What the controller saw and did for one `MetadataAccessPolicy`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetadataAccessPolicyStatus {
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` (the generated policies are in place) and `Conflicting` (another policy
    /// re-opens a target, or an expected workload is blocked).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// How many pods each rule selects.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RuleStatus>,
    /// The policy engine the generated objects are for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<String>,
    /// The objects generated for this policy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub generated: Vec<GeneratedRef>,
}

/// A status condition (the `metav1.Condition` shape).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Ready` or `Conflicting`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// A CamelCase reason.
    pub reason: String,
    /// What it means, in words.
    #[serde(default)]
    pub message: String,
    /// When `status` last changed (RFC 3339).
    pub last_transition_time: String,
    /// The generation the condition was set for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// How many pods one rule selects.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RuleStatus {
    /// The rule's name.
    pub name: String,
    /// Running pods its subjects select.
    pub selected_pods: i64,
}

/// One generated object.
#[derive(
    Serialize,
    Deserialize,
    Clone,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Default,
    schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct GeneratedRef {
    /// Its `apiVersion`.
    pub api_version: String,
    /// Its kind.
    pub kind: String,
    /// Its namespace (none for cluster-scoped kinds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Its name.
    pub name: String,
}

impl MetadataAccessPolicySpec {
    /// The cloud the rules are for: `spec.cloud`, Azure when absent.
    pub fn cloud(&self) -> Cloud {
        self.cloud.map_or(Cloud::Azure, Cloud::from)
    }
}

impl MetadataAccessPolicy {
    /// The object's rules as the core's access rules, each named `OBJECT/RULE` so that
    /// the rules of several objects add up without clashing. `spec.cloud` is read as a
    /// rules file's `cloud:`. Errors are the core's (the same as for a rules file),
    /// naming the rule.
    pub fn access_rules(&self) -> Result<AccessRules, AccessError> {
        let prefix = kube::ResourceExt::name_any(self);
        let mut spec = serde_json::to_value(&self.spec).expect("the spec serializes");
        if let Some(rules) = spec.get_mut("rules").and_then(|r| r.as_array_mut()) {
            for r in rules {
                if let Some(name) = r.get("name").and_then(|n| n.as_str()) {
                    let full = format!("{prefix}/{name}");
                    r["name"] = serde_json::Value::String(full);
                }
            }
        }
        AccessRules::from_value(spec)
    }
}

/// Why an object adds no rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The core refused its rules (the same error as for a rules file).
    #[error("{0}")]
    Invalid(AccessError),
    /// It is written for another cloud than the one imdsguard runs for.
    #[error(
        "spec.cloud is {object}, but imdsguard here protects {cluster}'s metadata endpoints (--cloud {cluster}): the object adds no access; write it for {cluster} (spec.cloud: {cluster}{}), or run imdsguard with --cloud {object}",
        azure_hint(.cluster)
    )]
    OtherCloud {
        /// The object's `spec.cloud`.
        object: Cloud,
        /// The cloud imdsguard runs for.
        cluster: Cloud,
    },
}

fn azure_hint(cluster: &Cloud) -> &'static str {
    if *cluster == Cloud::Azure {
        ", or leave spec.cloud out"
    } else {
        ""
    }
}

impl Refusal {
    /// The status condition's reason: `InvalidRules` or `OtherCloud`.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Invalid(_) => "InvalidRules",
            Refusal::OtherCloud { .. } => "OtherCloud",
        }
    }
}

/// The rules of every object written for `cloud` (the cloud imdsguard runs for:
/// `--cloud`), added up (each rule named `OBJECT/RULE`), with the objects refused, each
/// with why: rules the core refused, or `spec.cloud` naming another cloud (objects of
/// two clouds never add up). A refused object adds no rule (it never widens access),
/// and the others still apply. The result's cloud is `cloud` (for AWS and GCP declared
/// even when no object is accepted, as a rules file's `cloud:`).
pub fn combined_rules<'a>(
    cloud: Cloud,
    objects: impl IntoIterator<Item = &'a MetadataAccessPolicy>,
) -> (AccessRules, Vec<(String, Refusal)>) {
    let mut all = match cloud {
        Cloud::Azure => AccessRules::default(),
        other => AccessRules::from_value(serde_json::json!({ "cloud": other.name(), "rules": [] }))
            .expect("an empty rules set of a known cloud reads"),
    };
    let mut refused = Vec::new();
    let mut sorted: Vec<&MetadataAccessPolicy> = objects.into_iter().collect();
    sorted.sort_by_key(|o| kube::ResourceExt::name_any(*o));
    for o in sorted {
        let name = kube::ResourceExt::name_any(o);
        let object = o.spec.cloud();
        if object != cloud {
            refused.push((
                name,
                Refusal::OtherCloud {
                    object,
                    cluster: cloud,
                },
            ));
            continue;
        }
        let mut next = all.clone();
        match o.access_rules().and_then(|r| next.extend(r)) {
            Ok(()) => all = next,
            Err(e) => refused.push((name, Refusal::Invalid(e))),
        }
    }
    (all, refused)
}

/// The CRD as YAML, exactly as committed under `deploy/crds/`.
pub fn crd_yaml() -> String {
    let crd = MetadataAccessPolicy::crd();
    let value = serde_json::to_value(&crd).expect("the CRD serializes");
    let mut out = String::from(
        "# Generated by imdsguard (`imdsguard crd`, scripts/crd.sh) from crates/kube/src/crd.rs: do not edit.\n",
    );
    out.push_str(&serde_norway::to_string(&value).expect("the CRD is YAML"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(name: &str, rules: serde_json::Value) -> MetadataAccessPolicy {
        let spec: MetadataAccessPolicySpec =
            serde_json::from_value(serde_json::json!({ "rules": rules })).unwrap();
        MetadataAccessPolicy::new(name, spec)
    }

    #[test]
    fn the_spec_reads_as_the_cores_access_rules_named_by_object() {
        let p = policy(
            "platform",
            serde_json::json!([{
                "name": "monitoring",
                "subjects": [{"namespace": "kube-system", "podSelector": {"matchLabels": {"app": "ama-logs"}}}],
                "token": {"resources": ["https://monitor.azure.com/"], "identities": [{"any": true}]}
            }]),
        );
        let rules = p.access_rules().unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(&*rules.rules()[0].name, "platform/monitoring");
    }

    #[test]
    fn a_rule_the_core_refuses_is_an_error_naming_it() {
        let p = policy(
            "p",
            serde_json::json!([{"name": "r", "subjects": [{"namespace": "a"}], "paths": ["/not/imds"]}]),
        );
        let e = p.access_rules().unwrap_err().to_string();
        assert!(e.contains("p/r") && e.contains("/not/imds"), "{e}");
    }

    #[test]
    fn a_refused_object_adds_nothing_and_the_others_still_apply() {
        let good = policy(
            "good",
            serde_json::json!([{"name": "r", "subjects": [{"namespace": "a"}], "paths": ["/metadata/instance/compute"]}]),
        );
        let bad = policy(
            "bad",
            serde_json::json!([{"name": "r", "subjects": [{"namespace": "a"}], "paths": ["/nope"]}]),
        );
        let (rules, refused) = combined_rules(Cloud::Azure, [&bad, &good]);
        assert_eq!(rules.len(), 1);
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].0, "bad");
    }

    fn cloud_policy(name: &str, spec: serde_json::Value) -> MetadataAccessPolicy {
        let spec: MetadataAccessPolicySpec = serde_json::from_value(spec).unwrap();
        MetadataAccessPolicy::new(name, spec)
    }

    fn eks() -> MetadataAccessPolicy {
        cloud_policy(
            "eks",
            serde_json::json!({"cloud": "aws", "rules": [
                {"name": "token", "subjects": [{"namespace": "*"}], "methods": ["PUT"], "paths": ["/latest/api/token"]},
                {"name": "node-role", "subjects": [{"namespace": "kube-system", "serviceAccount": "aws-node"}],
                 "paths": ["/latest/meta-data/iam/security-credentials/*"]}
            ]}),
        )
    }

    #[test]
    fn an_aws_object_reads_as_aws_rules_with_the_token_put_a_grant_of_its_own() {
        let p = eks();
        assert_eq!(p.spec.cloud(), Cloud::Aws);
        let rules = p.access_rules().unwrap();
        assert_eq!(rules.declared_cloud(), Some(Cloud::Aws));
        let names: Vec<&str> = rules.rules().iter().map(|r| &*r.name).collect();
        assert_eq!(names, ["eks/token", "eks/node-role"]);
        let token = rules.rules()[0].cloud.as_ref().unwrap();
        assert_eq!(
            token.methods,
            [imdsguard_core::cloud_access::CloudMethod::Put]
        );
        // The object serializes back to what the core reads as a rules file.
        let text = serde_json::to_string(&p.spec).unwrap();
        assert!(text.starts_with(r#"{"cloud":"aws","rules":"#), "{text}");
    }

    #[test]
    fn azure_only_fields_under_aws_or_gcp_are_refused_by_the_core_naming_the_rule() {
        let token = cloud_policy(
            "p",
            serde_json::json!({"cloud": "aws", "rules": [{"name": "r", "subjects": [{"namespace": "a"}],
                "token": {"resources": ["*"], "identities": [{"any": true}]}}]}),
        );
        let e = token.access_rules().unwrap_err().to_string();
        assert!(e.contains("p/r") && e.contains("`token` is Azure's"), "{e}");
        let post = cloud_policy(
            "p",
            serde_json::json!({"cloud": "gcp", "rules": [{"name": "r", "subjects": [{"namespace": "a"}],
                "methods": ["POST"], "paths": ["/computeMetadata/v1/instance/zone"]}]}),
        );
        let e = post.access_rules().unwrap_err().to_string();
        assert!(e.contains("p/r") && e.contains("POST"), "{e}");
        let azure_path = cloud_policy(
            "p",
            serde_json::json!({"cloud": "aws", "rules": [{"name": "r", "subjects": [{"namespace": "a"}],
                "paths": ["/metadata/instance/compute"]}]}),
        );
        let e = azure_path.access_rules().unwrap_err().to_string();
        assert!(e.contains("/metadata/instance/compute"), "{e}");
        let put_azure = cloud_policy(
            "p",
            serde_json::json!({"rules": [{"name": "r", "subjects": [{"namespace": "a"}],
                "methods": ["PUT"], "paths": ["/metadata/instance"]}]}),
        );
        let e = put_azure.access_rules().unwrap_err().to_string();
        assert!(e.contains("PUT"), "{e}");
        let audiences_aws = cloud_policy(
            "p",
            serde_json::json!({"cloud": "aws", "rules": [{"name": "r", "subjects": [{"namespace": "a"}],
                "paths": ["/latest/meta-data/placement"], "audiences": ["x"]}]}),
        );
        let e = audiences_aws.access_rules().unwrap_err().to_string();
        assert!(e.contains("audiences"), "{e}");
    }

    #[test]
    fn gcp_identity_needs_audiences_and_paths_are_case_sensitive() {
        let ok = cloud_policy(
            "gke",
            serde_json::json!({"cloud": "gcp", "rules": [{"name": "id", "subjects": [{"namespace": "payments"}],
                "paths": ["/computeMetadata/v1/instance/service-accounts/default/identity"],
                "audiences": ["https://payments.example.com"]}]}),
        );
        let rules = ok.access_rules().unwrap();
        let grant = rules.rules()[0].cloud.as_ref().unwrap();
        assert!(grant.allows_audience(Some("https://payments.example.com")));
        assert!(!grant.allows_audience(Some("https://other.example.com")));
        let missing = cloud_policy(
            "gke",
            serde_json::json!({"cloud": "gcp", "rules": [{"name": "id", "subjects": [{"namespace": "payments"}],
                "paths": ["/computeMetadata/v1/instance/service-accounts/default/identity"]}]}),
        );
        let e = missing.access_rules().unwrap_err().to_string();
        assert!(e.contains("gke/id") && e.contains("audiences"), "{e}");
        let upper = cloud_policy(
            "eks",
            serde_json::json!({"cloud": "aws", "rules": [{"name": "r", "subjects": [{"namespace": "a"}],
                "paths": ["/latest/Meta-Data/placement"]}]}),
        );
        assert!(
            upper.access_rules().is_err(),
            "a path in another case is refused"
        );
    }

    #[test]
    fn objects_of_another_cloud_are_refused_and_never_add_up() {
        let azure = policy(
            "azure",
            serde_json::json!([{"name": "r", "subjects": [{"namespace": "a"}], "paths": ["/metadata/instance/compute"]}]),
        );
        let aws = eks();
        let (rules, refused) = combined_rules(Cloud::Aws, [&azure, &aws]);
        assert_eq!(rules.len(), 2);
        assert_eq!(rules.cloud(), Cloud::Aws);
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].0, "azure");
        assert_eq!(refused[0].1.reason(), "OtherCloud");
        let why = refused[0].1.to_string();
        assert!(
            why.contains("spec.cloud is azure") && why.contains("--cloud aws"),
            "{why}"
        );
        let (rules, refused) = combined_rules(Cloud::Azure, [&azure, &aws]);
        assert_eq!(rules.len(), 1);
        assert_eq!(rules.cloud(), Cloud::Azure);
        assert_eq!(refused[0].0, "eks");
        let why = refused[0].1.to_string();
        assert!(why.contains("leave spec.cloud out"), "{why}");
        // Nothing accepted: the rules are still the cluster's cloud's.
        let (rules, refused) = combined_rules(Cloud::Gcp, [&azure, &aws]);
        assert!(rules.is_empty() && refused.len() == 2);
        assert_eq!(rules.declared_cloud(), Some(Cloud::Gcp));
        // An explicit `cloud: azure` is Azure's.
        let explicit = cloud_policy(
            "explicit",
            serde_json::json!({"cloud": "azure", "rules": [{"name": "r", "subjects": [{"namespace": "a"}], "paths": ["/metadata/instance/compute"]}]}),
        );
        let (rules, refused) = combined_rules(Cloud::Azure, [&azure, &explicit]);
        assert_eq!((rules.len(), refused.len()), (2, 0));
    }

    #[test]
    fn the_committed_crd_is_what_the_types_generate() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../deploy/crds/",
            "metadataaccesspolicies.imdsguard.io.yaml"
        );
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == crd_yaml(),
            "{path} differs from what crates/kube/src/crd.rs generates: run scripts/crd.sh and commit the file"
        );
    }
}
