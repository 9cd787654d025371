//! Calico output (`projectcalico.org/v3`): a Tier of imdsguard's own and
//! GlobalNetworkPolicies in it.
//!
//! Semantics used (<https://docs.tigera.io/calico/latest/reference/resources/tier>,
//! <https://docs.tigera.io/calico/latest/network-policy/policy-tiers/tiered-policy>):
//! tiers are evaluated by ascending `order`; within a tier, policies by `order` and rules
//! in order; Allow and Deny end the evaluation, Pass goes to the next tier; a tier that
//! selects an endpoint but decides nothing drops the packet (unless its
//! `defaultAction` is Pass). Kubernetes NetworkPolicies live in the `default` tier
//! (order 1,000,000), ClusterNetworkPolicies in `kube-admin` (order 1,000) and
//! `kube-baseline` (order 10,000,000).
//!
//! The `imdsguard` tier has order 100, or half the lowest order of the input's tiers
//! when one comes at or before 100 (an `engine-limit` warning when a tier of the input
//! has order 0 or less: no room before it): before `default`, so no namespace policy (Calico
//! NetworkPolicy or Kubernetes NetworkPolicy) can re-open a target, and before
//! `kube-admin` too, so that the only way to let a pod reach the metadata endpoints is
//! the rules file this tier was generated from (an admin's exception belongs there,
//! where the audit, the proxy and the node agent read it as well). In it:
//!
//! 1. per expected subject, `imdsguard.allow-metadata-<rule>` (order 10, 11, ...):
//!    Allow the target addresses and ports, nothing else (other traffic falls through);
//! 2. `imdsguard.deny-metadata` (order 1000) for every workload endpoint
//!    (`namespaceSelector: all()`, so host endpoints and the node itself are never
//!    selected): Deny the targets, then Pass everything else to the next tier.
//!
//! The tier's `defaultAction: Pass` says the same as the last rule, for traffic
//! directions the policies do not cover.

use serde_json::{Value, json};

use super::{Context, ExpectedSubject, Generated, TargetAddr, WarningKind};
use crate::model::{LabelSelector, NAMESPACE_NAME_LABEL, Operator};

/// The tier's name.
pub const TIER: &str = "imdsguard";
/// The tier's order when no tier of the input comes at or before it: before
/// `kube-admin` (1,000) and `default` (1,000,000).
pub const TIER_ORDER: u32 = 100;
/// Order of the deny policy inside the tier (allows come first).
const DENY_ORDER: u32 = 1000;

pub(super) fn generate(ctx: &Context<'_>, out: &mut Generated) {
    let order = tier_order(ctx, out);
    let mut tier_meta = ctx.metadata(TIER, None, &ctx.all_addrs());
    tier_meta["annotations"]
        .as_object_mut()
        .expect("metadata has annotations")
        .remove(super::TARGETS_ANNOTATION);
    out.objects.push(json!({
        "apiVersion": "projectcalico.org/v3",
        "kind": "Tier",
        "metadata": tier_meta,
        "spec": {"order": order, "defaultAction": "Pass"},
    }));
    let subjects = if ctx.excepted.is_empty() {
        &[][..]
    } else {
        &ctx.subjects[..]
    };
    for (i, s) in subjects.iter().enumerate() {
        let mut spec = json!({
            "tier": TIER,
            "order": 10 + i,
            "namespaceSelector": namespace_selector(s),
            "selector": s.subject.pod_selector.as_ref().map(selector).unwrap_or_else(|| "all()".into()),
            "types": ["Egress"],
            "egress": rules(&ctx.excepted, "Allow"),
        });
        if let Some(sas) = s.service_accounts() {
            spec["serviceAccountSelector"] =
                json!(format!("projectcalico.org/name in {}", set(sas)));
        }
        let name = format!(
            "{TIER}.{}",
            s.object_name().trim_start_matches("imdsguard-")
        );
        out.objects.push(json!({
            "apiVersion": "projectcalico.org/v3",
            "kind": "GlobalNetworkPolicy",
            "metadata": ctx.metadata(&name, None, &ctx.excepted_addrs()),
            "spec": spec,
        }));
    }
    let mut egress = rules(&ctx.addrs, "Deny");
    egress.push(json!({"action": "Pass"}));
    out.objects.push(json!({
        "apiVersion": "projectcalico.org/v3",
        "kind": "GlobalNetworkPolicy",
        "metadata": ctx.metadata(&format!("{TIER}.deny-metadata"), None, &ctx.all_addrs()),
        "spec": {
            "tier": TIER,
            "order": DENY_ORDER,
            "namespaceSelector": "all()",
            "selector": "all()",
            "types": ["Egress"],
            "egress": egress,
        },
    }));
}

/// The `imdsguard` tier's order: [`TIER_ORDER`] when every tier of the input comes
/// after it, else half the lowest order of the input (Calico tier orders are floats,
/// lowest first); when a tier of the input has order 0 or less there is no room before
/// it: order 0 and a warning naming the tiers that come first or tie (Felix breaks ties
/// by name).
fn tier_order(ctx: &Context<'_>, out: &mut Generated) -> Value {
    let orders: Vec<(f64, &str)> = ctx
        .cluster
        .calico
        .tiers
        .iter()
        .filter(|t| t.name != TIER)
        .filter_map(|t| t.order.map(|o| (o, t.name.as_str())))
        .collect();
    let lowest = orders.iter().map(|(o, _)| *o).fold(f64::INFINITY, f64::min);
    let default = f64::from(TIER_ORDER);
    let order = if default < lowest {
        default
    } else if lowest >= 2.0 {
        (lowest / 2.0).floor()
    } else if lowest > 0.0 {
        lowest / 2.0
    } else {
        let blocking: Vec<String> = orders
            .iter()
            .filter(|(o, _)| *o <= 0.0)
            .map(|(o, n)| format!("Tier/{n} (order {o})"))
            .collect();
        out.warn(
            WarningKind::EngineLimit,
            format!(
                "no room for the `{TIER}` tier before the existing {}: Calico evaluates them first (or ties them, by name), and their policies can re-open a target; give them an order above 0",
                blocking.join(", ")
            ),
        );
        0.0
    };
    if order.fract() == 0.0 && order.abs() < 1e15 {
        json!(order as i64)
    } else {
        json!(order)
    }
}

/// One rule per target address and protocol.
fn rules(addrs: &[TargetAddr], action: &str) -> Vec<Value> {
    addrs
        .iter()
        .flat_map(|a: &TargetAddr| {
            a.protocols().into_iter().map(move |p| {
                json!({
                    "action": action,
                    "protocol": p.as_str(),
                    "destination": {"nets": [a.cidr()], "ports": a.ports_of(p)},
                })
            })
        })
        .collect()
}

fn namespace_selector(s: &ExpectedSubject<'_>) -> String {
    match s.namespaces() {
        None => "all()".into(),
        Some(names) => format!("{NAMESPACE_NAME_LABEL} in {}", set(names)),
    }
}

/// `{'a', 'b'}`.
fn set(values: &[String]) -> String {
    let quoted: Vec<String> = values.iter().map(|v| quote(v)).collect();
    format!("{{{}}}", quoted.join(", "))
}

/// A label value in Calico's selector syntax (label values hold no quotes; a value
/// with a single quote is written in double quotes).
fn quote(v: &str) -> String {
    if v.contains('\'') {
        format!("\"{v}\"")
    } else {
        format!("'{v}'")
    }
}

/// A Kubernetes label selector in Calico's selector language
/// (<https://docs.tigera.io/calico/latest/reference/resources/networkpolicy#selectors>).
pub(crate) fn selector(s: &LabelSelector) -> String {
    let mut terms: Vec<String> = s
        .match_labels
        .iter()
        .map(|(k, v)| format!("{k} == {}", quote(v)))
        .collect();
    for r in &s.match_expressions {
        terms.push(match r.operator {
            Operator::In => format!("{} in {}", r.key, set(&r.values)),
            Operator::NotIn => format!("{} not in {}", r.key, set(&r.values)),
            Operator::Exists => format!("has({})", r.key),
            Operator::DoesNotExist => format!("!has({})", r.key),
        });
    }
    if terms.is_empty() {
        "all()".into()
    } else {
        terms.join(" && ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Requirement;

    #[test]
    fn selectors_in_calico_syntax() {
        let s = LabelSelector {
            match_labels: [("app".to_string(), "web".to_string())].into(),
            match_expressions: vec![
                Requirement {
                    key: "tier".into(),
                    operator: Operator::NotIn,
                    values: vec!["a".into(), "b".into()],
                },
                Requirement {
                    key: "x".into(),
                    operator: Operator::DoesNotExist,
                    values: vec![],
                },
            ],
        };
        assert_eq!(
            selector(&s),
            "app == 'web' && tier not in {'a', 'b'} && !has(x)"
        );
        assert_eq!(selector(&LabelSelector::default()), "all()");
    }
}
