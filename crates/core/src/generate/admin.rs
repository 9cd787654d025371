//! Cluster-scoped admin policies of the network-policy-api project:
//! ClusterNetworkPolicy (`policy.networking.k8s.io/v1alpha2`, `tier: Admin`) and
//! AdminNetworkPolicy (`policy.networking.k8s.io/v1alpha1`).
//!
//! Semantics used (<https://network-policy-api.sigs.k8s.io/reference/spec/>): the Admin
//! tier is evaluated before any NetworkPolicy; within it, policies by ascending
//! `priority` (lower number first; equal priorities are undefined, so every generated
//! object gets a priority of its own) and rules in order; the first rule that matches
//! decides, and `Accept`/`Allow` and `Deny` are final (no NetworkPolicy is consulted).
//! A policy has one `subject`, so the expected pods cannot be an exception *inside*
//! the deny policy: each expected subject gets an Accept policy of its own at the
//! lowest priority numbers (0, 1, ...), then one Deny policy for every pod at the next
//! number. The Deny rules name only the target addresses (`networks: [ip/32]`) and
//! target ports, so DNS and every other destination fall through to NetworkPolicy as
//! before.
//!
//! OVN-Kubernetes supports AdminNetworkPolicy priorities 0 to 99 only, one policy per
//! priority (<https://docs.redhat.com/en/documentation/openshift_container_platform/4.17/html/network_security/admin-network-policy>).

use serde_json::{Value, json};

use super::networkpolicy::skip_service_accounts;
use super::{
    Context, DENY_NAME, Generated, OutputEngine, TargetAddr, WarningKind, namespace_selector,
    selector_json,
};
use crate::target::Protocol;

/// The highest AdminNetworkPolicy priority OVN-Kubernetes accepts.
const OVN_MAX_PRIORITY: usize = 99;

pub(super) fn generate(ctx: &Context<'_>, engine: OutputEngine, out: &mut Generated) {
    let cnp = engine == OutputEngine::Cnp;
    let (allow, expressible_as) = if cnp {
        ("Accept", "ClusterNetworkPolicy")
    } else {
        ("Allow", "AdminNetworkPolicy")
    };
    let mut priority = 0usize;
    let subjects = if ctx.excepted.is_empty() {
        &[][..]
    } else {
        &ctx.subjects[..]
    };
    for s in subjects {
        if s.service_accounts().is_some() {
            skip_service_accounts(s, expressible_as, out);
            continue;
        }
        let subject = match (&s.subject.pod_selector, s.namespaces()) {
            (None, names) => json!({"namespaces": namespace_selector(names)}),
            (Some(pods), names) => json!({"pods": {
                "namespaceSelector": namespace_selector(names),
                "podSelector": selector_json(pods),
            }}),
        };
        out.objects.push(object(
            ctx,
            cnp,
            &s.object_name(),
            priority,
            subject,
            rules(&ctx.excepted, cnp, allow, "allow"),
            &ctx.excepted_addrs(),
        ));
        priority += 1;
    }
    out.objects.push(object(
        ctx,
        cnp,
        DENY_NAME,
        priority,
        json!({"namespaces": {}}),
        rules(&ctx.addrs, cnp, "Deny", "deny"),
        &ctx.all_addrs(),
    ));
    if !cnp && priority > OVN_MAX_PRIORITY {
        out.warn(
            WarningKind::EngineLimit,
            format!(
                "{} AdminNetworkPolicies need priorities 0 to {priority}: OVN-Kubernetes accepts 0 to {OVN_MAX_PRIORITY} only; merge subjects in the rules file",
                priority + 1
            ),
        );
    }
}

fn object(
    ctx: &Context<'_>,
    cnp: bool,
    name: &str,
    priority: usize,
    subject: Value,
    egress: Vec<Value>,
    targets: &[&TargetAddr],
) -> Value {
    let mut spec = json!({
        "priority": priority,
        "subject": subject,
        "egress": egress,
    });
    if cnp {
        spec["tier"] = json!("Admin");
    }
    json!({
        "apiVersion": if cnp { "policy.networking.k8s.io/v1alpha2" } else { "policy.networking.k8s.io/v1alpha1" },
        "kind": if cnp { "ClusterNetworkPolicy" } else { "AdminNetworkPolicy" },
        "metadata": ctx.metadata(name, None, targets),
        "spec": spec,
    })
}

/// One rule per target address, naming its target ports.
fn rules(addrs: &[TargetAddr], cnp: bool, action: &str, verb: &str) -> Vec<Value> {
    addrs
        .iter()
        .map(|a| {
            let mut rule = json!({
                "name": format!("{verb}-{}", a.ip),
                "action": action,
                "to": [{"networks": [a.cidr()]}],
            });
            if cnp {
                rule["protocols"] = json!(cnp_protocols(a));
            } else {
                rule["ports"] = json!(anp_ports(a));
            }
            rule
        })
        .collect()
}

fn cnp_protocols(a: &TargetAddr) -> Vec<Value> {
    a.ports
        .iter()
        .map(|(p, n)| {
            let key = match p {
                Protocol::Tcp => "tcp",
                Protocol::Udp => "udp",
                Protocol::Sctp => "sctp",
            };
            json!({ key: {"destinationPort": {"number": n}} })
        })
        .collect()
}

fn anp_ports(a: &TargetAddr) -> Vec<Value> {
    a.ports
        .iter()
        .map(|(p, n)| json!({"portNumber": {"protocol": p.as_str(), "port": n}}))
        .collect()
}
