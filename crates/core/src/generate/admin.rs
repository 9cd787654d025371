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
//! number, all below the lowest priority of the existing Admin-tier policies of the
//! same kind. When there is no room below it (an existing policy at 0, or fewer free
//! numbers than objects), the numbers existing policies hold are skipped (no tie) and
//! an `engine-limit` warning names the policies that come before the generated deny. The Deny rules name only the target addresses (`networks: [ip/32]`) and
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
use crate::tiered::{TierLevel, TieredKind};

/// The highest AdminNetworkPolicy priority OVN-Kubernetes accepts.
const OVN_MAX_PRIORITY: usize = 99;

pub(super) fn generate(ctx: &Context<'_>, engine: OutputEngine, out: &mut Generated) {
    let cnp = engine == OutputEngine::Cnp;
    let (allow, expressible_as) = if cnp {
        ("Accept", "ClusterNetworkPolicy")
    } else {
        ("Allow", "AdminNetworkPolicy")
    };
    let subjects: Vec<_> = if ctx.excepted.is_empty() {
        Vec::new()
    } else {
        ctx.subjects.iter().collect()
    };
    for s in subjects.iter().filter(|s| s.service_accounts().is_some()) {
        skip_service_accounts(s, expressible_as, out);
    }
    let allowed: Vec<_> = subjects
        .into_iter()
        .filter(|s| s.service_accounts().is_none())
        .collect();
    let existing = existing_admin(ctx, engine);
    let priorities = place(&existing, allowed.len() + 1);
    for (s, &priority) in allowed.iter().zip(&priorities) {
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
    }
    let priority = *priorities
        .last()
        .expect("place gives one number per object");
    out.objects.push(object(
        ctx,
        cnp,
        DENY_NAME,
        priority,
        json!({"namespaces": {}}),
        rules(&ctx.addrs, cnp, "Deny", "deny"),
        &ctx.all_addrs(),
    ));
    let blocking: Vec<String> = existing
        .iter()
        .filter(|(p, _)| *p <= priority)
        .map(|(p, id)| format!("{id} (priority {p})"))
        .collect();
    if !blocking.is_empty() {
        out.warn(
            WarningKind::EngineLimit,
            format!(
                "no room for the {} generated {expressible_as}(ies) below the existing Admin-tier {}: {} come(s) first and decide(s) before the generated deny (priority {priority}); raise their priority numbers or make sure they neither accept nor pass the targets",
                priorities.len(),
                if cnp { "ClusterNetworkPolicies" } else { "AdminNetworkPolicies" },
                blocking.join(", ")
            ),
        );
    }
    if !cnp && priority as usize > OVN_MAX_PRIORITY {
        out.warn(
            WarningKind::EngineLimit,
            format!(
                "{} AdminNetworkPolicies need priorities up to {priority}: OVN-Kubernetes accepts 0 to {OVN_MAX_PRIORITY} only; merge subjects in the rules file",
                priorities.len()
            ),
        );
    }
}

/// The existing Admin-tier policies of the kind `engine` writes (ClusterNetworkPolicy
/// `tier: Admin`, or AdminNetworkPolicy), as (priority, `Kind/name`), lowest first.
fn existing_admin(ctx: &Context<'_>, engine: OutputEngine) -> Vec<(u32, String)> {
    let kind = if engine == OutputEngine::Cnp {
        TieredKind::ClusterNetworkPolicy
    } else {
        TieredKind::AdminNetworkPolicy
    };
    let mut v: Vec<(u32, String)> = ctx
        .cluster
        .tiered
        .iter()
        .filter(|p| p.kind == kind && p.tier == TierLevel::Admin)
        .filter_map(|p| p.priority.map(|n| (n, p.id())))
        .collect();
    v.sort();
    v
}

/// `n` priorities for the generated objects (allows, then the deny): from 0 upwards,
/// all below the lowest existing priority when there is room; otherwise skipping the
/// numbers existing policies hold (equal priorities are undefined by the spec), so the
/// generated objects come as early as they can.
fn place(existing: &[(u32, String)], n: usize) -> Vec<u32> {
    let taken: std::collections::BTreeSet<u32> = existing.iter().map(|(p, _)| *p).collect();
    (0u32..).filter(|p| !taken.contains(p)).take(n).collect()
}

fn object(
    ctx: &Context<'_>,
    cnp: bool,
    name: &str,
    priority: u32,
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
