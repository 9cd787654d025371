//! Cilium output (`cilium.io/v2` CiliumClusterwideNetworkPolicy).
//!
//! Semantics used (<https://docs.cilium.io/en/stable/security/policy/language/#deny-policies>):
//! a deny rule takes precedence over every allow rule, of any policy, so an expected pod
//! cannot be let through by an allow: the exception comes from the deny policies'
//! `endpointSelector`, which selects every pod except the expected ones. A label
//! selector is a conjunction, and "not (A or B or ...)" of the expected subjects is in
//! general a disjunction, so the deny is written as several policies whose selections
//! add up to exactly that complement (denies of several policies add up too). The
//! targets no pod is excepted from (WireServer) get one deny policy for every pod
//! (`endpointSelector: {}`).
//!
//! `enableDefaultDeny: {egress: false, ingress: false}`
//! (<https://docs.cilium.io/en/stable/security/policy/language/#selective-default-deny>)
//! keeps a pod that no other policy isolates un-isolated: the policies only deny the
//! targets (`toCIDR` `ip/32` with `toPorts`), everything else stays as it was.
//!
//! Namespaces and service accounts are the labels Cilium gives every pod's identity:
//! `k8s:io.kubernetes.pod.namespace` and `k8s:io.cilium.k8s.policy.serviceaccount`
//! (<https://docs.cilium.io/en/stable/security/policy/kubernetes/#namespaces>).

use serde_json::{Value, json};

use super::complement::{complement, req};
use super::{Context, DENY_NAME, Generated, TargetAddr, WarningKind};
use crate::model::{Operator, Requirement};

/// The identity label holding a pod's namespace.
pub const NAMESPACE_LABEL: &str = "k8s:io.kubernetes.pod.namespace";
/// The identity label holding a pod's service account.
pub const SERVICE_ACCOUNT_LABEL: &str = "k8s:io.cilium.k8s.policy.serviceaccount";

/// More deny policies than this and the rules file is worth simplifying.
const MANY_POLICIES: usize = 32;

pub(super) fn generate(ctx: &Context<'_>, out: &mut Generated) {
    // The excepted targets (Azure IMDS) are denied to every pod but the expected ones;
    // the others (WireServer, ...) to every pod.
    let expected = if ctx.excepted.is_empty() {
        &[][..]
    } else {
        &ctx.subjects[..]
    };
    let subjects: Vec<Vec<Requirement>> = expected.iter().map(atoms).collect();
    if ctx
        .addrs
        .iter()
        .any(|a| matches!(a.ip, std::net::IpAddr::V4(v4) if v4.is_link_local()))
    {
        out.warn(
            WarningKind::EngineLimit,
            "Cilium gives a link-local target the `host` identity when a node agent binds the address, and toCIDR denies do not apply then (docs/engines.md): on such nodes block it on the node too (imdsguard agent run)".into(),
        );
    }
    out.warn(
        WarningKind::EngineLimit,
        "these objects need Cilium 1.16 or later (enableDefaultDeny, cilium/cilium#30572): on an older Cilium the field is dropped and every policy selecting all pods puts every pod into default deny (https://docs.cilium.io/en/latest/security/policy/deny/); check before applying: `kubectl explain ciliumclusterwidenetworkpolicy.spec.enableDefaultDeny` must describe the field".into(),
    );
    if subjects.is_empty() {
        out.objects
            .push(deny(ctx, DENY_NAME, json!({}), &ctx.addrs));
        return;
    }
    let clauses = if subjects.iter().any(Vec::is_empty) {
        out.warn(
            WarningKind::EverythingExpected,
            "an expected subject selects every pod: the excepted targets are denied to no pod"
                .into(),
        );
        Vec::new()
    } else {
        complement(&subjects)
    };
    if clauses.len() > MANY_POLICIES {
        out.warn(
            WarningKind::EngineLimit,
            format!(
                "the expected subjects need {} CiliumClusterwideNetworkPolicies to select every other pod; subjects that share label keys (or one label that marks every expected pod) need fewer",
                clauses.len()
            ),
        );
    }
    // Expected pods that an existing policy isolates get the excepted targets allowed
    // back: allows add up (Cilium's and NetworkPolicy's), and with enableDefaultDeny
    // false the allow isolates no pod that was not isolated.
    let egress: Vec<Value> = ctx
        .excepted
        .iter()
        .map(|a| json!({"toCIDR": [a.cidr()], "toPorts": [{"ports": cilium_ports(a)}]}))
        .collect();
    for (s, atoms) in expected.iter().zip(&subjects) {
        let exprs: Vec<Value> = atoms.iter().map(expression).collect();
        out.objects.push(json!({
            "apiVersion": "cilium.io/v2",
            "kind": "CiliumClusterwideNetworkPolicy",
            "metadata": ctx.metadata(&s.object_name(), None, &ctx.excepted_addrs()),
            "spec": {
                "endpointSelector": {"matchExpressions": exprs},
                "enableDefaultDeny": {"egress": false, "ingress": false},
                "egress": egress,
            },
        }));
    }
    let never = ctx.never_excepted();
    if !never.is_empty() {
        out.objects.push(deny(ctx, DENY_NAME, json!({}), &never));
    }
    let numbered = clauses.len() > 1 || !never.is_empty();
    for (i, clause) in clauses.iter().enumerate() {
        let name = if numbered {
            format!("{DENY_NAME}-{i}")
        } else {
            DENY_NAME.to_string()
        };
        out.objects
            .push(deny(ctx, &name, clause.to_selector(), &ctx.excepted));
    }
}

/// A deny policy: the pods `selector` selects may not reach `addrs`.
fn deny(ctx: &Context<'_>, name: &str, selector: Value, addrs: &[TargetAddr]) -> Value {
    let egress_deny: Vec<Value> = addrs
        .iter()
        .map(|a| json!({"toCIDR": [a.cidr()], "toPorts": [{"ports": cilium_ports(a)}]}))
        .collect();
    let targets: Vec<&TargetAddr> = addrs.iter().collect();
    json!({
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumClusterwideNetworkPolicy",
        "metadata": ctx.metadata(name, None, &targets),
        "spec": {
            "endpointSelector": selector,
            "enableDefaultDeny": {"egress": false, "ingress": false},
            "egressDeny": egress_deny,
        },
    })
}

/// The target ports of an address as Cilium writes them.
fn cilium_ports(a: &TargetAddr) -> Vec<Value> {
    a.ports
        .iter()
        .map(|(p, n)| json!({"port": n.to_string(), "protocol": p.as_str()}))
        .collect()
}

fn expression(r: &Requirement) -> Value {
    let mut e = json!({"key": r.key, "operator": super::operator_name(r.operator)});
    if !r.values.is_empty() {
        e["values"] = json!(r.values);
    }
    e
}

/// The subject as a conjunction of requirements on identity labels (namespace first).
fn atoms(s: &super::ExpectedSubject<'_>) -> Vec<Requirement> {
    let mut out = Vec::new();
    if let Some(ns) = s.namespaces() {
        out.push(req(NAMESPACE_LABEL, Operator::In, ns));
    }
    if let Some(sas) = s.service_accounts() {
        out.push(req(SERVICE_ACCOUNT_LABEL, Operator::In, sas));
    }
    if let Some(sel) = &s.subject.pod_selector {
        for (k, v) in &sel.match_labels {
            out.push(req(k, Operator::In, std::slice::from_ref(v)));
        }
        out.extend(sel.match_expressions.iter().cloned());
    }
    out
}
