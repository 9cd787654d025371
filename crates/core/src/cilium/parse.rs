//! Reading CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy and CiliumCIDRGroup objects
//! from their JSON value.
//!
//! Two kinds of problems: what the API server's CRD schema refuses (an unknown entity, a
//! malformed CIDR, a bad operator) is an error and the object is not loaded; what the
//! Cilium agent refuses when it imports an accepted object (two L3 fields in one rule,
//! `icmps` with `toPorts`, an exception outside its CIDR, `nodeSelector` in a namespaced
//! policy) keeps the object with [`CiliumPolicy::rejected`] set, because in the cluster it
//! exists and has no effect.

use ipnet::IpNet;
use serde_json::{Map, Value};

use super::model::{
    CidrGroup, CidrRule, CiliumPolicy, Entity, L4Proto, L7Kind, Peer, PolicyKind, PolicyRef,
    PortProtocol, PortRule, PortSel, Rule, SelKey, SelReq, Selector, Spec, Subject,
};
use crate::model::{Operator, Source};
use crate::quote::{clip, quoted};

/// The Cilium kinds read from manifests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CiliumKind {
    /// `CiliumNetworkPolicy`.
    NetworkPolicy,
    /// `CiliumClusterwideNetworkPolicy`.
    ClusterwideNetworkPolicy,
    /// `CiliumCIDRGroup` (`cilium.io/v2alpha1` or `v2`).
    CidrGroup,
}

/// The Cilium kind of an object, from its `apiVersion` (group `cilium.io`) and `kind`.
pub fn classify(api_version: &str, kind: &str) -> Option<CiliumKind> {
    let group = api_version.rsplit_once('/').map(|(g, _)| g)?;
    if group != "cilium.io" {
        return None;
    }
    match kind {
        "CiliumNetworkPolicy" => Some(CiliumKind::NetworkPolicy),
        "CiliumClusterwideNetworkPolicy" => Some(CiliumKind::ClusterwideNetworkPolicy),
        "CiliumCIDRGroup" => Some(CiliumKind::CidrGroup),
        _ => None,
    }
}

/// A Cilium object that cannot be read: which object, where in it, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{object}: {at}: {reason}")]
pub struct CiliumError {
    /// `Kind namespace/name` (or just the kind when the name is missing).
    pub object: String,
    /// The field, e.g. `spec.egress[0].toPorts[0].ports[0].port`.
    pub at: String,
    /// What is wrong and what to write instead.
    pub reason: String,
}

/// A field error before the object is known to the caller.
struct FieldError {
    at: String,
    reason: String,
}

type Res<T> = Result<T, FieldError>;

fn err<T>(at: &str, reason: impl Into<String>) -> Res<T> {
    Err(FieldError {
        at: at.to_string(),
        reason: reason.into(),
    })
}

const POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";

/// Reads a CiliumNetworkPolicy or CiliumClusterwideNetworkPolicy (the whole object:
/// `apiVersion`, `kind`, `metadata`, `spec` and/or `specs`). A namespaced policy without
/// `metadata.namespace` belongs to `default`.
pub fn parse(value: &Value, source: Source) -> Result<CiliumPolicy, CiliumError> {
    let kind_name = value.get("kind").and_then(Value::as_str).unwrap_or("");
    let kind = match kind_name {
        "CiliumNetworkPolicy" => PolicyKind::Namespaced,
        "CiliumClusterwideNetworkPolicy" => PolicyKind::Clusterwide,
        other => {
            return Err(CiliumError {
                object: clip(other).to_string(),
                at: "kind".into(),
                reason: format!(
                    "{} is not CiliumNetworkPolicy or CiliumClusterwideNetworkPolicy",
                    quoted(other)
                ),
            });
        }
    };
    let meta = value.get("metadata");
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let namespace = match kind {
        PolicyKind::Namespaced => Some(
            meta.and_then(|m| m.get("namespace"))
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
                .unwrap_or("default")
                .to_string(),
        ),
        _ => None,
    };
    let id = PolicyRef {
        kind,
        namespace,
        name,
    };
    let fail = |e: FieldError| CiliumError {
        object: clip(&id.to_string()).to_string(),
        at: e.at,
        reason: e.reason,
    };
    if id.name.is_empty() {
        return Err(fail(FieldError {
            at: "metadata.name".into(),
            reason: "is missing".into(),
        }));
    }
    let spec = value.get("spec").filter(|v| !v.is_null());
    let specs = value.get("specs").filter(|v| !v.is_null());
    let mut raw: Vec<(String, &Value)> = Vec::new();
    if let Some(s) = spec {
        let at = if specs.is_some() { "spec." } else { "" };
        raw.push((at.to_string(), s));
    }
    if let Some(list) = specs {
        let items = list.as_array().ok_or_else(|| {
            fail(FieldError {
                at: "specs".into(),
                reason: "must be a list of rules".into(),
            })
        })?;
        for (i, s) in items.iter().enumerate() {
            raw.push((format!("specs[{i}]."), s));
        }
    }
    if raw.is_empty() {
        return Err(fail(FieldError {
            at: "spec".into(),
            reason: "the policy has neither `spec` nor `specs`: write at least one rule".into(),
        }));
    }
    let mut specs_out = Vec::new();
    let mut rejected = None;
    for (at, v) in raw {
        let (s, why) = parse_spec(v, &at, &id).map_err(fail)?;
        if rejected.is_none() {
            rejected = why;
        }
        specs_out.push(s);
    }
    Ok(CiliumPolicy {
        id,
        specs: specs_out,
        rejected,
        source,
    })
}

/// Reads a `CiliumCIDRGroup` (`spec.externalCIDRs`).
pub fn parse_cidr_group(value: &Value, source: Source) -> Result<CidrGroup, CiliumError> {
    let name = value
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let fail = |at: &str, reason: String| CiliumError {
        object: format!("CiliumCIDRGroup {}", clip(&name)),
        at: at.to_string(),
        reason,
    };
    if name.is_empty() {
        return Err(fail("metadata.name", "is missing".into()));
    }
    let mut cidrs = Vec::new();
    let list = value
        .get("spec")
        .and_then(|s| s.get("externalCIDRs"))
        .cloned()
        .unwrap_or(Value::Null);
    if !list.is_null() {
        let items = list
            .as_array()
            .ok_or_else(|| fail("spec.externalCIDRs", "must be a list of CIDRs".into()))?;
        for (i, c) in items.iter().enumerate() {
            let at = format!("spec.externalCIDRs[{i}]");
            let text = c
                .as_str()
                .ok_or_else(|| fail(&at, "must be a CIDR string".into()))?;
            cidrs.push(parse_prefix(text, &at).map_err(|e| fail(&e.at, e.reason))?);
        }
    }
    let mut labels = crate::model::Labels::new();
    if let Some(m) = value
        .get("metadata")
        .and_then(|m| m.get("labels"))
        .and_then(Value::as_object)
    {
        for (k, v) in m {
            if let Some(v) = v.as_str() {
                labels.insert(k.clone(), v.to_string());
            }
        }
    }
    Ok(CidrGroup {
        name,
        labels,
        cidrs,
        source,
    })
}

// ---------------------------------------------------------------------------------------
// One rule set

/// A spec and, when the agent would refuse it, why.
fn parse_spec(v: &Value, at: &str, id: &PolicyRef) -> Res<(Spec, Option<String>)> {
    let here = if at.is_empty() {
        "spec"
    } else {
        at.trim_end_matches('.')
    };
    let obj = as_object(v, here)?;
    let mut rejected: Option<String> = None;
    let mut reject = |why: String| {
        if rejected.is_none() {
            rejected = Some(why);
        }
    };
    let mut warnings = Vec::new();
    let ep = obj.get("endpointSelector").filter(|v| !v.is_null());
    let node = obj.get("nodeSelector").filter(|v| !v.is_null());
    let namespace = id.namespace.as_deref();
    let subject = match (ep, node) {
        (Some(e), None) => {
            let sel = parse_selector(e, &format!("{at}endpointSelector"))?;
            let (sel, warning) = scope_subject(sel, namespace);
            warnings.extend(warning);
            Subject::Endpoints(sel)
        }
        (None, Some(n)) => {
            if id.kind == PolicyKind::Namespaced {
                reject(format!(
                    "{at}nodeSelector: host policies (nodeSelector) are only accepted in a CiliumClusterwideNetworkPolicy"
                ));
            }
            Subject::Nodes(parse_selector(n, &format!("{at}nodeSelector"))?)
        }
        (Some(_), Some(_)) => {
            reject(format!(
                "{at}: a rule cannot have both endpointSelector and nodeSelector"
            ));
            Subject::Endpoints(parse_selector(
                ep.unwrap_or(&Value::Null),
                &format!("{at}endpointSelector"),
            )?)
        }
        (None, None) => {
            reject(format!(
                "{at}: a rule needs an endpointSelector or a nodeSelector"
            ));
            // Selects nothing: a reserved key no pod carries.
            Subject::Nodes(Selector::default())
        }
    };
    let subject_init = matches!(&subject, Subject::Endpoints(s)
        if s.has_key(&SelKey::Reserved("init".into())));
    let mut egress = Vec::new();
    for (i, r) in list(obj, "egress", at)?.iter().enumerate() {
        let rat = format!("{at}egress[{i}]");
        let (rule, why) = parse_rule(r, &rat, namespace, subject_init, false)?;
        if let Some(w) = why {
            reject(w);
        }
        egress.push(rule);
    }
    let mut egress_deny = Vec::new();
    for (i, r) in list(obj, "egressDeny", at)?.iter().enumerate() {
        let rat = format!("{at}egressDeny[{i}]");
        let (rule, why) = parse_rule(r, &rat, namespace, subject_init, true)?;
        if let Some(w) = why {
            reject(w);
        }
        egress_deny.push(rule);
    }
    if matches!(subject, Subject::Nodes(_))
        && egress
            .iter()
            .any(|r| r.to_ports.iter().any(|p| p.l7.is_some()))
    {
        reject(format!("{at}egress: host policies do not support L7 rules"));
    }
    let ingress = list(obj, "ingress", at)?.len();
    let ingress_deny = list(obj, "ingressDeny", at)?.len();
    let (mut dd_egress, mut dd_ingress) = (None, None);
    if let Some(dd) = obj.get("enableDefaultDeny").filter(|v| !v.is_null()) {
        let dat = format!("{at}enableDefaultDeny");
        let dd = as_object(dd, &dat)?;
        dd_egress = opt_bool(dd, "egress", &dat)?;
        dd_ingress = opt_bool(dd, "ingress", &dat)?;
    }
    Ok((
        Spec {
            at: at.to_string(),
            subject,
            egress,
            egress_deny,
            ingress,
            ingress_deny,
            default_deny_egress: dd_egress,
            default_deny_ingress: dd_ingress,
            warnings,
        },
        rejected,
    ))
}

/// Restricts a CiliumNetworkPolicy's endpointSelector to the policy's namespace, as
/// Cilium's `ParseToCiliumRule` does: the `k8s:io.kubernetes.pod.namespace` match is set
/// to the policy's namespace (replacing another value, with a warning); selectors of
/// initializing endpoints (`reserved:init`) are left alone.
fn scope_subject(mut sel: Selector, namespace: Option<&str>) -> (Selector, Option<String>) {
    let Some(ns) = namespace else {
        return (sel, None);
    };
    if sel.has_key(&SelKey::Reserved("init".into())) {
        return (sel, None);
    }
    let key = SelKey::K8s(POD_NAMESPACE.into());
    let mut warning = None;
    // A matchLabels entry is an `In` with one value; it is the one Cilium overwrites.
    sel.requirements.retain(|r| {
        let replaced = r.key == key && r.operator == Operator::In && r.values.len() == 1;
        if replaced && r.values[0] != ns {
            warning = Some(format!(
                "endpointSelector names namespace {}; a CiliumNetworkPolicy always applies in its own namespace {}",
                quoted(&r.values[0]),
                quoted(ns)
            ));
        }
        !replaced
    });
    if warning.is_none()
        && sel
            .requirements
            .iter()
            .any(|r| r.key.key() == POD_NAMESPACE)
    {
        warning = Some(format!(
            "endpointSelector constrains the namespace; a CiliumNetworkPolicy only selects pods of its own namespace {}",
            quoted(ns)
        ));
    }
    sel.requirements.push(SelReq {
        key,
        operator: Operator::In,
        values: vec![ns.to_string()],
    });
    (sel, warning)
}

/// Scopes a `toEndpoints` selector as Cilium's `getEndpointSelector` does: without a
/// namespace requirement it selects pods of the policy's namespace (CNP) or pods of any
/// namespace (CCNP: the namespace label must exist); selectors of reserved identities and
/// rules of initializing endpoints are left alone.
fn scope_peer(mut sel: Selector, namespace: Option<&str>, subject_init: bool) -> Selector {
    if sel.has_reserved_key() || subject_init {
        return sel;
    }
    if sel.has_key(&SelKey::K8s(POD_NAMESPACE.into()))
        || sel.has_key(&SelKey::Any(POD_NAMESPACE.into()))
    {
        return sel;
    }
    let key = SelKey::K8s(POD_NAMESPACE.into());
    sel.requirements.push(match namespace {
        Some(ns) => SelReq {
            key,
            operator: Operator::In,
            values: vec![ns.to_string()],
        },
        None => SelReq {
            key,
            operator: Operator::Exists,
            values: vec![],
        },
    });
    sel
}

/// One `egress` / `egressDeny` rule, and why the agent refuses it, if it does.
fn parse_rule(
    v: &Value,
    at: &str,
    namespace: Option<&str>,
    subject_init: bool,
    deny: bool,
) -> Res<(Rule, Option<String>)> {
    let obj = as_object(v, at)?;
    let mut peers: Vec<(&'static str, Peer)> = Vec::new();
    let eps = list(obj, "toEndpoints", &format!("{at}."))?;
    if !eps.is_empty() {
        let mut sels = Vec::new();
        for (i, e) in eps.iter().enumerate() {
            let sel = parse_selector(e, &format!("{at}.toEndpoints[{i}]"))?;
            sels.push(scope_peer(sel, namespace, subject_init));
        }
        peers.push(("toEndpoints", Peer::Endpoints(sels)));
    }
    let cidrs = list(obj, "toCIDR", &format!("{at}."))?;
    if !cidrs.is_empty() {
        let mut out = Vec::new();
        for (i, c) in cidrs.iter().enumerate() {
            let cat = format!("{at}.toCIDR[{i}]");
            let text = scalar(c, &cat)?;
            let net = if text.contains('/') {
                parse_prefix(&text, &cat)?
            } else {
                match text.trim().parse::<std::net::IpAddr>() {
                    Ok(ip) => IpNet::from(ip),
                    Err(_) => {
                        return err(&cat, format!("{} is not an address or CIDR", quoted(&text)));
                    }
                }
            };
            out.push(CidrRule::Cidr {
                cidr: net,
                except: vec![],
            });
        }
        peers.push(("toCIDR", Peer::Cidr(out)));
    }
    let sets = list(obj, "toCIDRSet", &format!("{at}."))?;
    let mut rejected: Option<String> = None;
    if !sets.is_empty() {
        let mut out = Vec::new();
        for (i, s) in sets.iter().enumerate() {
            let sat = format!("{at}.toCIDRSet[{i}]");
            let so = as_object(s, &sat)?;
            if let Some(c) = so.get("cidr").filter(|v| !v.is_null()) {
                let cidr =
                    parse_prefix(&scalar(c, &format!("{sat}.cidr"))?, &format!("{sat}.cidr"))?;
                let mut except = Vec::new();
                for (j, e) in list(so, "except", &format!("{sat}."))?.iter().enumerate() {
                    let eat = format!("{sat}.except[{j}]");
                    let ex = parse_prefix(&scalar(e, &eat)?, &eat)?;
                    if !cidr.contains(&ex.network()) {
                        rejected.get_or_insert(format!(
                            "{eat}: {ex} is not inside {cidr} (the agent refuses exceptions outside their CIDR)"
                        ));
                    }
                    except.push(ex);
                }
                out.push(CidrRule::Cidr { cidr, except });
            } else if let Some(r) = so.get("cidrGroupRef").filter(|v| !v.is_null()) {
                out.push(CidrRule::GroupRef(scalar(
                    r,
                    &format!("{sat}.cidrGroupRef"),
                )?));
            } else if let Some(sel) = so.get("cidrGroupSelector").filter(|v| !v.is_null()) {
                let gat = format!("{sat}.cidrGroupSelector");
                let sel = crate::tiered::selector_from_value(sel, &gat).map_err(|reason| {
                    // The message names the field itself.
                    FieldError {
                        at: gat.clone(),
                        reason: reason
                            .strip_prefix(gat.as_str())
                            .unwrap_or(&reason)
                            .trim_start_matches(['.', ':', ' '])
                            .to_string(),
                    }
                })?;
                out.push(CidrRule::GroupSelector(sel));
            } else {
                return err(&sat, "needs `cidr`, `cidrGroupRef` or `cidrGroupSelector`");
            }
        }
        peers.push(("toCIDRSet", Peer::Cidr(out)));
    }
    let ents = list(obj, "toEntities", &format!("{at}."))?;
    if !ents.is_empty() {
        let mut out = Vec::new();
        for (i, e) in ents.iter().enumerate() {
            let eat = format!("{at}.toEntities[{i}]");
            let name = scalar(e, &eat)?;
            match Entity::from_name(&name) {
                Some(ent) => out.push(ent),
                None => {
                    let known: Vec<&str> = Entity::ALL.iter().map(|(n, _)| *n).collect();
                    return err(
                        &eat,
                        format!(
                            "{} is not an entity: use one of {}",
                            quoted(&name),
                            known.join(", ")
                        ),
                    );
                }
            }
        }
        peers.push(("toEntities", Peer::Entities(out)));
    }
    let services = list(obj, "toServices", &format!("{at}."))?;
    if !services.is_empty() {
        peers.push(("toServices", Peer::Services(services.len())));
    }
    let fqdns = list(obj, "toFQDNs", &format!("{at}."))?;
    if !fqdns.is_empty() {
        let mut names = Vec::new();
        for (i, f) in fqdns.iter().enumerate() {
            let fat = format!("{at}.toFQDNs[{i}]");
            let fo = as_object(f, &fat)?;
            for field in ["matchName", "matchPattern"] {
                if let Some(n) = fo.get(field).filter(|v| !v.is_null()) {
                    names.push(scalar(n, &format!("{fat}.{field}"))?);
                }
            }
        }
        peers.push(("toFQDNs", Peer::Fqdns(names)));
    }
    let groups = list(obj, "toGroups", &format!("{at}."))?;
    if !groups.is_empty() {
        peers.push(("toGroups", Peer::Groups(groups.len())));
    }
    let nodes = list(obj, "toNodes", &format!("{at}."))?;
    if !nodes.is_empty() {
        let mut sels = Vec::new();
        for (i, n) in nodes.iter().enumerate() {
            sels.push(parse_selector(n, &format!("{at}.toNodes[{i}]"))?);
        }
        peers.push(("toNodes", Peer::Nodes(sels)));
    }
    if peers.len() > 1 {
        rejected.get_or_insert(format!(
            "{at}: combining {} and {} in one rule is not supported (the agent refuses the policy): split them into two rules",
            peers[0].0, peers[1].0
        ));
    }
    let mut to_requires = Vec::new();
    for (i, r) in list(obj, "toRequires", &format!("{at}."))?
        .iter()
        .enumerate()
    {
        let sel = parse_selector(r, &format!("{at}.toRequires[{i}]"))?;
        to_requires.push(scope_peer(sel, namespace, subject_init));
    }
    let mut to_ports = Vec::new();
    for (i, p) in list(obj, "toPorts", &format!("{at}."))?.iter().enumerate() {
        to_ports.push(parse_port_rule(p, &format!("{at}.toPorts[{i}]"), deny)?);
    }
    let icmps = !list(obj, "icmps", &format!("{at}."))?.is_empty();
    if icmps && !to_ports.is_empty() {
        rejected.get_or_insert(format!(
            "{at}: `icmps` may only be present without `toPorts` (the agent refuses the policy): use a separate rule"
        ));
    }
    let authentication = match obj.get("authentication").filter(|v| !v.is_null()) {
        Some(a) => {
            let aat = format!("{at}.authentication");
            let mode = as_object(a, &aat)?
                .get("mode")
                .map(|m| scalar(m, &format!("{aat}.mode")))
                .transpose()?;
            mode.filter(|m| m != "disabled")
        }
        None => None,
    };
    Ok((
        Rule {
            peer: peers.into_iter().next().map(|(_, p)| p),
            to_requires,
            to_ports,
            icmps,
            authentication,
        },
        rejected,
    ))
}

fn parse_port_rule(v: &Value, at: &str, deny: bool) -> Res<PortRule> {
    let obj = as_object(v, at)?;
    let mut ports = Vec::new();
    for (i, p) in list(obj, "ports", &format!("{at}."))?.iter().enumerate() {
        let pat = format!("{at}.ports[{i}]");
        let po = as_object(p, &pat)?;
        let port_text = match po.get("port").filter(|v| !v.is_null()) {
            Some(p) => scalar(p, &format!("{pat}.port"))?,
            None => {
                return err(
                    &format!("{pat}.port"),
                    "is missing: write a number or a port name",
                );
            }
        };
        let port = parse_port(&port_text, &format!("{pat}.port"))?;
        let end_port = match po.get("endPort").filter(|v| !v.is_null()) {
            Some(e) => {
                let eat = format!("{pat}.endPort");
                let n = e
                    .as_u64()
                    .or_else(|| e.as_str().and_then(|s| s.parse().ok()))
                    .ok_or_else(|| FieldError {
                        at: eat.clone(),
                        reason: "must be a port number".into(),
                    })?;
                if n > 65535 {
                    return err(&eat, format!("{n} is not a port (1 to 65535)"));
                }
                Some(n as u16)
            }
            None => None,
        };
        let protocol = match po.get("protocol").filter(|v| !v.is_null()) {
            Some(p) => parse_proto(
                &scalar(p, &format!("{pat}.protocol"))?,
                &format!("{pat}.protocol"),
            )?,
            None => L4Proto::Any,
        };
        ports.push(PortProtocol {
            port,
            end_port,
            protocol,
        });
    }
    let mut l7 = None;
    if !deny {
        if let Some(r) = obj.get("rules").filter(|v| !v.is_null()) {
            let ro = as_object(r, &format!("{at}.rules"))?;
            let present = |k: &str| ro.get(k).is_some_and(|v| !v.is_null());
            l7 = if present("http") {
                Some(L7Kind::Http)
            } else if present("kafka") {
                Some(L7Kind::Kafka)
            } else if present("dns") {
                Some(L7Kind::Dns)
            } else if present("l7proto") || present("l7") {
                Some(L7Kind::Generic)
            } else {
                None
            };
        }
        if l7.is_none() && !list(obj, "serverNames", &format!("{at}."))?.is_empty() {
            l7 = Some(L7Kind::Sni);
        }
    }
    Ok(PortRule { ports, l7 })
}

/// A port as Cilium reads it: an IANA service name (letters, digits and single dashes,
/// at least one letter, at most 15 characters) is a named port, anything else a number.
fn parse_port(text: &str, at: &str) -> Res<PortSel> {
    let t = text.trim();
    if t.is_empty() {
        return err(at, "is empty: write a number or a port name");
    }
    let svc_name = t.len() <= 15
        && t.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && t.chars().any(|c| c.is_ascii_alphabetic())
        && !t.starts_with('-')
        && !t.ends_with('-')
        && !t.contains("--");
    if svc_name {
        return Ok(PortSel::Named(t.to_ascii_lowercase()));
    }
    match t.parse::<u16>() {
        Ok(n) => Ok(PortSel::Number(n)),
        Err(_) => err(
            at,
            format!(
                "{} is not a port number (0 to 65535; 0 means all) or a port name",
                quoted(t)
            ),
        ),
    }
}

fn parse_proto(text: &str, at: &str) -> Res<L4Proto> {
    match text.to_ascii_uppercase().as_str() {
        "TCP" => Ok(L4Proto::Tcp),
        "UDP" => Ok(L4Proto::Udp),
        "SCTP" => Ok(L4Proto::Sctp),
        "" | "ANY" => Ok(L4Proto::Any),
        "ICMP" | "ICMPV6" => Ok(L4Proto::Icmp),
        other => err(
            at,
            format!(
                "{} is not a protocol: use TCP, UDP, SCTP or ANY",
                quoted(other)
            ),
        ),
    }
}

fn parse_prefix(text: &str, at: &str) -> Res<IpNet> {
    match text.trim().parse::<IpNet>() {
        Ok(n) => Ok(n.trunc()),
        Err(_) => err(
            at,
            format!(
                "{} is not a CIDR (write e.g. 169.254.169.254/32)",
                quoted(text)
            ),
        ),
    }
}

/// A label selector with Cilium's key sources.
fn parse_selector(v: &Value, at: &str) -> Res<Selector> {
    if v.is_null() {
        return Ok(Selector::default());
    }
    let obj = as_object(v, at)?;
    let mut requirements = Vec::new();
    if let Some(ml) = obj.get("matchLabels").filter(|v| !v.is_null()) {
        let mat = format!("{at}.matchLabels");
        let mut pairs: Vec<(&String, &Value)> = as_object(ml, &mat)?.iter().collect();
        pairs.sort_by(|a, b| a.0.cmp(b.0));
        for (k, val) in pairs {
            requirements.push(SelReq {
                key: SelKey::parse(k),
                operator: Operator::In,
                values: vec![scalar(val, &format!("{mat}.{}", clip(k)))?],
            });
        }
    }
    for (i, e) in list(obj, "matchExpressions", &format!("{at}."))?
        .iter()
        .enumerate()
    {
        let eat = format!("{at}.matchExpressions[{i}]");
        let eo = as_object(e, &eat)?;
        let key = match eo.get("key") {
            Some(k) => scalar(k, &format!("{eat}.key"))?,
            None => return err(&format!("{eat}.key"), "is missing"),
        };
        let op_text = match eo.get("operator") {
            Some(o) => scalar(o, &format!("{eat}.operator"))?,
            None => return err(&format!("{eat}.operator"), "is missing"),
        };
        let operator = match op_text.as_str() {
            "In" => Operator::In,
            "NotIn" => Operator::NotIn,
            "Exists" => Operator::Exists,
            "DoesNotExist" => Operator::DoesNotExist,
            other => {
                return err(
                    &format!("{eat}.operator"),
                    format!("{} is not In, NotIn, Exists or DoesNotExist", quoted(other)),
                );
            }
        };
        let mut values = Vec::new();
        for (j, val) in list(eo, "values", &format!("{eat}."))?.iter().enumerate() {
            values.push(scalar(val, &format!("{eat}.values[{j}]"))?);
        }
        let needs_values = matches!(operator, Operator::In | Operator::NotIn);
        if needs_values == values.is_empty() {
            return err(
                &eat,
                if needs_values {
                    format!("`{op_text}` needs at least one value")
                } else {
                    format!("`{op_text}` takes no values")
                },
            );
        }
        requirements.push(SelReq {
            key: SelKey::parse(&key),
            operator,
            values,
        });
    }
    Ok(Selector { requirements })
}

// ---------------------------------------------------------------------------------------
// JSON helpers

fn as_object<'a>(v: &'a Value, at: &str) -> Res<&'a Map<String, Value>> {
    v.as_object().ok_or_else(|| FieldError {
        at: at.to_string(),
        reason: "must be an object".into(),
    })
}

/// The list under `key` (`null` or absent: empty). `prefix` ends with `.` or is empty.
fn list<'a>(obj: &'a Map<String, Value>, key: &str, prefix: &str) -> Res<&'a [Value]> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(_) => err(&format!("{prefix}{key}"), "must be a list"),
    }
}

/// A string, or a number or boolean written without quotes.
fn scalar(v: &Value, at: &str) -> Res<String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        _ => err(at, "must be a string"),
    }
}

fn opt_bool(obj: &Map<String, Value>, key: &str, at: &str) -> Res<Option<bool>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => err(&format!("{at}.{key}"), "must be true or false"),
    }
}
