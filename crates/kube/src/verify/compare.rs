//! What the audit predicts for the probe's pod, and the probe's result next to it. Pure.
//!
//! The prediction is the core audit's verdict for the Job's own pod template (its labels
//! as the API server stored them, its service account), added to the cluster as read as a
//! Job of its namespace: the same engine, policies and namespaces decide it as they decide
//! every workload in `imdsguard audit`. Other workloads play no part in an egress verdict
//! to an address outside the cluster, so the pods and controllers of the snapshot are
//! left out of that audit.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use imdsguard_core::audit::{AuditOptions, Severity, audit};
use imdsguard_core::cluster::Cluster;
use imdsguard_core::engine::{Engine, EngineSettings};
use imdsguard_core::engine_detect::{ClusterSignals, EngineDecision};
use imdsguard_core::manifest::Loaded;
use imdsguard_core::model::{Controller, ControllerKind, Object, PodTemplate, Source};
use imdsguard_core::target::{Cloud, MetadataService, Target, canonical_ip};
use serde::Serialize;

use super::message::{EndpointResult, ProbeEndpoint, Seen};

/// The probe pod of one namespace, as the audit is asked about it.
#[derive(Debug, Clone)]
pub struct PodToPredict {
    /// Its namespace.
    pub namespace: String,
    /// The Job's name.
    pub job: String,
    /// Its labels, hostNetwork (false) and service account.
    pub template: PodTemplate,
}

/// The audit's verdict for one target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Predicted {
    /// Whether the pod reaches the target (the audit's `reachable`).
    pub reachable: bool,
    /// What the enforced policies say (the audit's `policy_allowed`).
    pub policy_allowed: bool,
    /// Why, as the audit words it.
    pub reason: String,
}

/// The audit's verdicts for every probe pod.
#[derive(Debug, Clone)]
pub struct Prediction {
    /// The engine whose semantics decided.
    pub engine: Engine,
    /// Whether it was detected (no engine given).
    pub engine_detected: bool,
    /// How it was decided, and the AKS IMDS restriction.
    pub engine_decision: EngineDecision,
    /// Per namespace, one verdict per target in target order.
    pub verdicts: BTreeMap<String, Vec<Predicted>>,
}

/// Runs the audit over `snapshot` (its namespaces and policies) plus one Job per
/// probe pod, with `engine` and the cluster's `signals` deciding the engine (and the
/// AKS IMDS restriction) as in `imdsguard audit`, and returns those Jobs' verdicts.
pub fn predict(
    snapshot: &Loaded,
    pods: &[PodToPredict],
    targets: &[Target],
    engine: Option<EngineSettings>,
    signals: &ClusterSignals,
) -> Prediction {
    let source = Source {
        file: Arc::from("imdsguard verify"),
        line: 0,
    };
    let mut objects: Vec<Object> = snapshot
        .objects
        .iter()
        .filter(|o| !matches!(o, Object::Pod(_) | Object::Controller(_)))
        .cloned()
        .collect();
    objects.extend(pods.iter().map(|p| {
        Object::Controller(Controller {
            kind: ControllerKind::Job,
            namespace: p.namespace.clone(),
            name: p.job.clone(),
            owner: None,
            template: p.template.clone(),
            source: source.clone(),
        })
    }));
    let cluster = Cluster::build(objects);
    let report = audit(
        &cluster,
        &AuditOptions {
            targets: targets.to_vec(),
            engine,
            list_limit: Some(imdsguard_core::audit::DEFAULT_LIST_LIMIT),
            expected: None,
            signals: signals.clone(),
        },
    );
    let mut verdicts = BTreeMap::new();
    for p in pods {
        if let Some(w) = report
            .workloads
            .iter()
            .find(|w| w.kind == "Job" && w.namespace == p.namespace && w.name == p.job)
        {
            verdicts.insert(
                p.namespace.clone(),
                w.verdicts
                    .iter()
                    .map(|v| Predicted {
                        reachable: v.reachable,
                        policy_allowed: v.policy_allowed,
                        reason: v.reason.clone(),
                    })
                    .collect(),
            );
        }
    }
    Prediction {
        engine: report.engine,
        engine_detected: report.engine_detected,
        engine_decision: report.engine_decision,
        verdicts,
    }
}

/// Whether the probe and the audit agree on a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Agreement {
    /// Both say reachable, or both blocked.
    Agree,
    /// They differ (see the severity).
    Disagree,
    /// The probe's answer is unknown (no result, not checked, or inconclusive).
    Unknown,
    /// The target cannot be verified from the probe pod: an IPv6 target, and the pod has
    /// no IPv6 address (a single-stack cluster). Neither agree nor disagree; it counts
    /// towards no exit status.
    NotApplicable,
}

impl Agreement {
    /// The name used in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Agreement::Agree => "agree",
            Agreement::Disagree => "disagree",
            Agreement::Unknown => "unknown",
            Agreement::NotApplicable => "not-applicable",
        }
    }
}

/// One target of one namespace: what the probe saw next to what the audit predicted.
#[derive(Debug, Clone, Serialize)]
pub struct TargetResult {
    /// The target.
    pub target: Target,
    /// What the probe saw at the network level.
    pub seen: Seen,
    /// The classes of the probe's steps on it.
    pub classes: Vec<String>,
    /// Whether something sensitive came back from it.
    pub sensitive: bool,
    /// The audit's verdict for the probe's pod (`None` when the audit gave none).
    pub predicted: Option<Predicted>,
    /// Whether they agree.
    pub agreement: Agreement,
    /// For a disagreement: high when the policies deny and the probe got through,
    /// medium when they allow and the probe was blocked.
    pub severity: Option<Severity>,
    /// For a disagreement: what differs and where to look; for a target not applicable:
    /// why.
    pub message: Option<String>,
}

impl TargetResult {
    /// Whether the probe reached the target.
    pub fn reached(&self) -> bool {
        self.seen == Seen::Reachable
    }
}

/// Whether the probe pod has an IPv6 address, from the addresses its status gives
/// (`status.podIPs`, or `status.podIP`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PodIpv6 {
    /// Its status names no address (no status, or none assigned yet): every target is
    /// compared.
    Unknown,
    /// One of its addresses is IPv6: every target is compared.
    Yes,
    /// Every address is IPv4: its IPv6 targets are [`Agreement::NotApplicable`].
    No,
}

impl PodIpv6 {
    /// From the pod's addresses (an IPv4-mapped IPv6 address is IPv4); none: unknown.
    pub fn of_addresses(ips: &[IpAddr]) -> PodIpv6 {
        if ips.is_empty() {
            PodIpv6::Unknown
        } else if ips.iter().any(|ip| canonical_ip(*ip).is_ipv6()) {
            PodIpv6::Yes
        } else {
            PodIpv6::No
        }
    }
}

/// The probe's observation of `target` (`None`: no result) next to the prediction, from
/// a probe pod with (or without) IPv6: an IPv6 target of a pod without an IPv6 address is
/// [`Agreement::NotApplicable`], whatever the prediction (the probe's connect there fails
/// at once, which says nothing of the policies), unless the probe got through: a
/// connection made is evidence, compared as ever.
pub fn compare(
    target: Target,
    predicted: Option<&Predicted>,
    observed: Option<&EndpointResult>,
    pod_ipv6: PodIpv6,
) -> TargetResult {
    let seen = observed.map_or(Seen::Unknown, |o| o.seen);
    let classes = observed.map(|o| o.classes.clone()).unwrap_or_default();
    let (agreement, severity, message) = match (predicted, seen) {
        // A connection made is evidence whatever the pod's status says (a status without
        // its IPv6 address, NAT64): compared as ever.
        _ if pod_ipv6 == PodIpv6::No
            && canonical_ip(target.ip).is_ipv6()
            && seen != Seen::Reachable =>
        {
            (
                Agreement::NotApplicable,
                None,
                Some(format!(
                    "the probe pod has no IPv6 address (a single-stack cluster): {target} cannot \
                 be reached from it whatever the policies say, so the audit's verdict for it \
                 is not verified"
                )),
            )
        }
        (_, Seen::Unknown) | (None, _) => (Agreement::Unknown, None, None),
        (Some(p), Seen::Reachable) if !p.reachable => (
            Agreement::Disagree,
            Some(Severity::High),
            Some(format!(
                "the audit says {target} is blocked ({}), but the probe got through ({}): \
                 the cluster does not enforce what the policies say (no policy engine, a \
                 different engine than assumed, or a policy it rejected)",
                p.reason,
                classes.join(", ")
            )),
        ),
        (Some(p), Seen::Blocked) if p.reachable => (
            Agreement::Disagree,
            Some(Severity::Medium),
            Some(format!(
                "the audit says {target} is reachable ({}), but the probe was blocked ({}): \
                 something besides the policies blocks it (the imdsguard agent, the AKS IMDS \
                 restriction, a node firewall) or the engine is not the one assumed{}",
                p.reason,
                classes.join(", "),
                not_there(&target)
            )),
        ),
        (Some(_), _) => (Agreement::Agree, None, None),
    };
    TargetResult {
        target,
        seen,
        classes,
        sensitive: observed.is_some_and(|o| o.sensitive),
        predicted: predicted.cloned(),
        agreement,
        severity,
        message,
    }
}

/// Why a target the policies allow may not answer without anything blocking it, for
/// the targets where that is common: a pod or node without IPv6 (a single-stack cluster)
/// for the IPv6 addresses, a node without the EKS Pod Identity agent for its addresses.
/// Empty for the others (Azure's, AWS's and GCP's IPv4 metadata address).
fn not_there(target: &Target) -> &'static str {
    match target.service() {
        Some(MetadataService::AwsPodIdentity) if target.ip.is_ipv6() => {
            "; or the node runs no EKS Pod Identity agent (the add-on is not installed), or \
             the pod has no IPv6 route (a single-stack cluster)"
        }
        Some(MetadataService::AwsPodIdentity) => {
            "; or the node runs no EKS Pod Identity agent (the add-on is not installed)"
        }
        Some(_) if target.ip.is_ipv6() => {
            "; or the pod has no IPv6 route (a single-stack cluster or node)"
        }
        _ => "",
    }
}

/// [`compare`] for every target, the probe's endpoint for each found by
/// [`ProbeEndpoint::for_cloud_target`] (`cloud` is the one the probe walked). A target
/// whose endpoint the result does not list (an older probe, or a check it was not
/// asked for) is [`Seen::Unknown`].
pub fn compare_all(
    cloud: Cloud,
    targets: &[Target],
    predicted: Option<&[Predicted]>,
    observed: Option<&super::message::ProbeResult>,
    pod_ipv6: PodIpv6,
) -> Vec<TargetResult> {
    targets
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let endpoint = ProbeEndpoint::for_cloud_target(cloud, t);
            let seen = observed.and_then(|r| endpoint.and_then(|e| r.endpoint(e)));
            compare(*t, predicted.and_then(|p| p.get(i)), seen, pod_ipv6)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::message::ProbeResult;
    use super::*;
    use imdsguard_core::target::IMDS;

    fn predicted(reachable: bool) -> Predicted {
        Predicted {
            reachable,
            policy_allowed: reachable,
            reason: if reachable { "no policy" } else { "denied" }.into(),
        }
    }

    fn seen(class: &str) -> EndpointResult {
        EndpointResult::from_steps(
            ProbeEndpoint::Imds,
            "169.254.169.254:80",
            [(class, None, false)],
        )
    }

    #[test]
    fn every_verdict_path() {
        let agree = compare(
            IMDS,
            Some(&predicted(true)),
            Some(&seen("reachable")),
            PodIpv6::Unknown,
        );
        assert_eq!((agree.agreement, agree.severity), (Agreement::Agree, None));
        let agree = compare(
            IMDS,
            Some(&predicted(false)),
            Some(&seen("blocked-timeout")),
            PodIpv6::Unknown,
        );
        assert_eq!(agree.agreement, Agreement::Agree);
        let high = compare(
            IMDS,
            Some(&predicted(false)),
            Some(&seen("reachable")),
            PodIpv6::Unknown,
        );
        assert_eq!(
            (high.agreement, high.severity),
            (Agreement::Disagree, Some(Severity::High))
        );
        assert!(high.message.unwrap().contains("probe got through"));
        let medium = compare(
            IMDS,
            Some(&predicted(true)),
            Some(&seen("blocked-refused")),
            PodIpv6::Unknown,
        );
        assert_eq!(medium.severity, Some(Severity::Medium));
        assert!(
            medium
                .message
                .as_deref()
                .unwrap()
                .ends_with("or the engine is not the one assumed")
        );
        let v6 = compare(
            imdsguard_core::target::GCP_METADATA_IPV6,
            Some(&predicted(true)),
            Some(&seen("blocked-refused")),
            PodIpv6::Unknown,
        );
        let why = v6.message.unwrap();
        assert!(
            why.contains("no IPv6 route") && !why.contains("Pod Identity"),
            "{why}"
        );
        let agent = compare(
            imdsguard_core::target::AWS_POD_IDENTITY,
            Some(&predicted(true)),
            Some(&seen("blocked-timeout")),
            PodIpv6::Unknown,
        );
        let why = agent.message.unwrap();
        assert!(
            why.contains("no EKS Pod Identity agent") && !why.contains("IPv6"),
            "{why}"
        );
        let unknown = compare(
            IMDS,
            Some(&predicted(true)),
            Some(&seen("not-checked")),
            PodIpv6::Unknown,
        );
        assert_eq!(unknown.agreement, Agreement::Unknown);
        let none = compare(IMDS, Some(&predicted(true)), None, PodIpv6::Unknown);
        assert_eq!(
            (none.agreement, none.seen),
            (Agreement::Unknown, Seen::Unknown)
        );
    }

    /// The audit's verdicts for a probe pod in namespace `payments` of a cluster made of
    /// `yaml`, for `cloud`'s targets the probe observes.
    fn predict_cloud(cloud: Cloud, yaml: &str) -> (Vec<Target>, Vec<Predicted>) {
        let targets: Vec<Target> = cloud
            .targets()
            .into_iter()
            .filter(|t| ProbeEndpoint::for_cloud_target(cloud, t).is_some())
            .collect();
        let snapshot = imdsguard_core::manifest::parse("cluster.yaml", yaml);
        assert!(snapshot.errors.is_empty(), "{:?}", snapshot.errors);
        let pod = PodToPredict {
            namespace: "payments".into(),
            job: "imdsguard-verify-abc".into(),
            template: PodTemplate {
                labels: BTreeMap::from([("app".into(), "probe".into())]),
                host_network: false,
                service_account: "default".into(),
            },
        };
        let prediction = predict(
            &snapshot,
            &[pod],
            &targets,
            Some(EngineSettings::new(Engine::Generic)),
            &ClusterSignals::default(),
        );
        let verdicts = prediction.verdicts["payments"].clone();
        assert_eq!(verdicts.len(), targets.len());
        (targets, verdicts)
    }

    /// What `imdsguard probe --cloud CLOUD --ipv6 [--pod-identity] --termination-log`
    /// writes when each endpoint's TCP step ended `class`.
    fn probe_saw(cloud: Cloud, classes: &[(ProbeEndpoint, &str)]) -> ProbeResult {
        ProbeResult::new(
            classes
                .iter()
                .map(|(e, class)| {
                    EndpointResult::from_steps(
                        *e,
                        e.target_in(cloud).unwrap().to_string(),
                        [(*class, None, false)],
                    )
                })
                .collect(),
            Vec::new(),
        )
    }

    const NS: &str = "apiVersion: v1
kind: Namespace
metadata: {name: payments}
";

    /// The IPv4-only deny: every address but 169.254.169.254 on IPv4, and all of IPv6.
    const DENY_IMDS_V4_ONLY: &str = "---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-imds-v4, namespace: payments}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to:
    - ipBlock: {cidr: 0.0.0.0/0, except: [169.254.169.254/32]}
    - ipBlock: {cidr: '::/0'}
";

    const DENY_ALL_EGRESS: &str = "---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-egress, namespace: payments}
spec:
  podSelector: {}
  policyTypes: [Egress]
";

    fn by_target(results: &[TargetResult], target: Target) -> &TargetResult {
        results.iter().find(|r| r.target == target).unwrap()
    }

    #[test]
    fn an_ipv4_only_deny_leaves_ipv6_open_and_the_probe_agrees() {
        use imdsguard_core::target::{
            AWS_IMDS_IPV6, AWS_POD_IDENTITY, AWS_POD_IDENTITY_IPV6, GCP_METADATA_IPV6,
        };
        let yaml = format!("{NS}{DENY_IMDS_V4_ONLY}");
        let (targets, verdicts) = predict_cloud(Cloud::Aws, &yaml);
        assert_eq!(
            targets,
            [IMDS, AWS_IMDS_IPV6, AWS_POD_IDENTITY, AWS_POD_IDENTITY_IPV6]
        );
        assert_eq!(
            verdicts.iter().map(|v| v.reachable).collect::<Vec<_>>(),
            [false, true, true, true],
            "{verdicts:#?}"
        );
        let observed = probe_saw(
            Cloud::Aws,
            &[
                (ProbeEndpoint::Imds, "blocked-timeout"),
                (ProbeEndpoint::ImdsIpv6, "reachable"),
                (ProbeEndpoint::PodIdentity, "reachable"),
                // Something besides the policies drops the agent's IPv6 address.
                (ProbeEndpoint::PodIdentityIpv6, "blocked-refused"),
            ],
        );
        let results = compare_all(
            Cloud::Aws,
            &targets,
            Some(&verdicts),
            Some(&observed),
            PodIpv6::Yes,
        );
        let v4 = by_target(&results, IMDS);
        assert_eq!((v4.seen, v4.agreement), (Seen::Blocked, Agreement::Agree));
        let v6 = by_target(&results, AWS_IMDS_IPV6);
        assert_eq!((v6.seen, v6.agreement), (Seen::Reachable, Agreement::Agree));
        assert!(v6.reached());
        let agent = by_target(&results, AWS_POD_IDENTITY);
        assert_eq!(agent.agreement, Agreement::Agree);
        let agent6 = by_target(&results, AWS_POD_IDENTITY_IPV6);
        assert_eq!(
            (agent6.agreement, agent6.severity),
            (Agreement::Disagree, Some(Severity::Medium))
        );
        // The common innocent causes are named: no agent on the node, no IPv6 route.
        let why = agent6.message.as_deref().unwrap();
        assert!(
            why.contains("[fd00:ec2::23]:80/TCP")
                && why.contains("no EKS Pod Identity agent")
                && why.contains("no IPv6 route"),
            "{why}"
        );

        // GCP: the same policy, its own IPv6 address.
        let (targets, verdicts) = predict_cloud(Cloud::Gcp, &yaml);
        assert_eq!(targets, [IMDS, GCP_METADATA_IPV6]);
        let observed = probe_saw(
            Cloud::Gcp,
            &[
                (ProbeEndpoint::Imds, "blocked-timeout"),
                (ProbeEndpoint::ImdsIpv6, "reachable"),
            ],
        );
        let results = compare_all(
            Cloud::Gcp,
            &targets,
            Some(&verdicts),
            Some(&observed),
            PodIpv6::Yes,
        );
        assert_eq!(
            results
                .iter()
                .map(|r| (r.seen, r.agreement))
                .collect::<Vec<_>>(),
            [
                (Seen::Blocked, Agreement::Agree),
                (Seen::Reachable, Agreement::Agree)
            ]
        );
    }

    #[test]
    fn the_probe_reaching_ipv6_where_the_audit_says_blocked_disagrees() {
        use imdsguard_core::target::{AWS_IMDS_IPV6, AWS_POD_IDENTITY, AWS_POD_IDENTITY_IPV6};
        let (targets, verdicts) = predict_cloud(Cloud::Aws, &format!("{NS}{DENY_ALL_EGRESS}"));
        assert!(verdicts.iter().all(|v| !v.reachable), "{verdicts:#?}");
        // The engine enforces IPv4 only: the IPv6 addresses answer.
        let observed = probe_saw(
            Cloud::Aws,
            &[
                (ProbeEndpoint::Imds, "blocked-timeout"),
                (ProbeEndpoint::ImdsIpv6, "reachable"),
                (ProbeEndpoint::PodIdentity, "blocked-timeout"),
                (ProbeEndpoint::PodIdentityIpv6, "reachable"),
            ],
        );
        let results = compare_all(
            Cloud::Aws,
            &targets,
            Some(&verdicts),
            Some(&observed),
            PodIpv6::Yes,
        );
        assert_eq!(by_target(&results, IMDS).agreement, Agreement::Agree);
        assert_eq!(
            by_target(&results, AWS_POD_IDENTITY).agreement,
            Agreement::Agree
        );
        for t in [AWS_IMDS_IPV6, AWS_POD_IDENTITY_IPV6] {
            let r = by_target(&results, t);
            assert_eq!(
                (r.agreement, r.severity),
                (Agreement::Disagree, Some(Severity::High)),
                "{r:#?}"
            );
            assert!(
                r.message.as_deref().unwrap().contains(&t.to_string()),
                "{r:#?}"
            );
        }

        // A probe that was not asked for the IPv6 checks (or an older image): the IPv6
        // targets are unknown, never taken for blocked.
        let imds_only = probe_saw(Cloud::Aws, &[(ProbeEndpoint::Imds, "blocked-timeout")]);
        let results = compare_all(
            Cloud::Aws,
            &targets,
            Some(&verdicts),
            Some(&imds_only),
            PodIpv6::Yes,
        );
        assert_eq!(
            results.iter().map(|r| r.agreement).collect::<Vec<_>>(),
            [
                Agreement::Agree,
                Agreement::Unknown,
                Agreement::Unknown,
                Agreement::Unknown
            ]
        );
        // No result at all: every target unknown.
        let results = compare_all(Cloud::Aws, &targets, Some(&verdicts), None, PodIpv6::Yes);
        assert!(results.iter().all(|r| r.agreement == Agreement::Unknown));
    }

    /// Under Azure the Azure endpoints are found as before, and an AWS endpoint in a
    /// result is never taken for an Azure target.
    #[test]
    fn azure_targets_keep_their_endpoints() {
        let targets = Cloud::Azure.targets();
        let observed = ProbeResult::new(
            ProbeEndpoint::of_cloud(Cloud::Azure)
                .iter()
                .map(|&e| EndpointResult::from_steps(e, "x", [("reachable", None, false)]))
                .collect(),
            Vec::new(),
        );
        let predicted = vec![predicted(true); 3];
        // Azure's targets are IPv4: a probe pod without IPv6 changes nothing.
        let results = compare_all(
            Cloud::Azure,
            &targets,
            Some(&predicted),
            Some(&observed),
            PodIpv6::No,
        );
        assert!(results.iter().all(|r| r.agreement == Agreement::Agree));
        let v6 = compare_all(
            Cloud::Azure,
            &[imdsguard_core::target::AWS_IMDS_IPV6],
            Some(&predicted),
            Some(&probe_saw(
                Cloud::Aws,
                &[(ProbeEndpoint::ImdsIpv6, "reachable")],
            )),
            PodIpv6::Unknown,
        );
        assert_eq!(v6[0].seen, Seen::Unknown);
    }

    #[test]
    fn a_pod_has_ipv6_when_one_of_its_addresses_is_ipv6() {
        let ips =
            |list: &[&str]| -> Vec<IpAddr> { list.iter().map(|s| s.parse().unwrap()).collect() };
        assert_eq!(PodIpv6::of_addresses(&[]), PodIpv6::Unknown);
        assert_eq!(PodIpv6::of_addresses(&ips(&["10.0.0.5"])), PodIpv6::No);
        // An IPv4-mapped IPv6 address is the IPv4 address.
        assert_eq!(
            PodIpv6::of_addresses(&ips(&["::ffff:10.0.0.5"])),
            PodIpv6::No
        );
        assert_eq!(
            PodIpv6::of_addresses(&ips(&["10.0.0.5", "fd00:10:244::5"])),
            PodIpv6::Yes
        );
        assert_eq!(
            PodIpv6::of_addresses(&ips(&["fd00:10:244::5"])),
            PodIpv6::Yes
        );
    }

    /// Every prediction and observation: an IPv6 target of a pod without IPv6 is not
    /// applicable; with IPv6 (or unknown) it is compared; an IPv4 target never changes.
    #[test]
    fn ipv6_targets_of_a_pod_without_ipv6_are_not_applicable() {
        use imdsguard_core::target::{
            AWS_IMDS_IPV6, AWS_POD_IDENTITY, AWS_POD_IDENTITY_IPV6, GCP_METADATA_IPV6, WIRESERVER,
        };
        let predictions = [Some(predicted(true)), Some(predicted(false)), None];
        let classes = [
            Some("reachable"),
            Some("blocked-refused"),
            Some("blocked-timeout"),
            Some("not-checked"),
            None,
        ];
        let mut compared = BTreeMap::new();
        for p in &predictions {
            for class in classes {
                let observed = class.map(seen);
                let observed = observed.as_ref();
                for t in [AWS_IMDS_IPV6, GCP_METADATA_IPV6, AWS_POD_IDENTITY_IPV6] {
                    let r = compare(t, p.as_ref(), observed, PodIpv6::No);
                    let with = compare(t, p.as_ref(), observed, PodIpv6::Yes);
                    if observed.is_some_and(|o| o.seen == Seen::Reachable) {
                        // The probe got through: evidence, compared as ever.
                        assert_eq!(
                            (r.agreement, r.severity, &r.message),
                            (with.agreement, with.severity, &with.message)
                        );
                        continue;
                    }
                    assert_eq!(
                        (r.agreement, r.severity),
                        (Agreement::NotApplicable, None),
                        "{r:#?}"
                    );
                    let why = r.message.unwrap();
                    assert!(
                        why.contains("no IPv6 address") && why.contains(&t.to_string()),
                        "{why}"
                    );
                    // The observation and the prediction stay in the report.
                    assert_eq!(r.seen, observed.map_or(Seen::Unknown, |o| o.seen));
                    assert_eq!(r.predicted, p.clone());
                    // With IPv6, or not known: compared as ever.
                    let unknown = compare(t, p.as_ref(), observed, PodIpv6::Unknown);
                    assert_ne!(with.agreement, Agreement::NotApplicable);
                    assert_eq!(
                        (with.agreement, with.severity, &with.message),
                        (unknown.agreement, unknown.severity, &unknown.message)
                    );
                    *compared.entry(format!("{:?}", with.agreement)).or_insert(0) += 1;
                }
                for t in [IMDS, AWS_POD_IDENTITY, WIRESERVER] {
                    let without = compare(t, p.as_ref(), observed, PodIpv6::No);
                    let with = compare(t, p.as_ref(), observed, PodIpv6::Yes);
                    assert_ne!(without.agreement, Agreement::NotApplicable);
                    assert_eq!(
                        (without.agreement, without.severity, without.message),
                        (with.agreement, with.severity, with.message),
                        "{t}"
                    );
                }
            }
        }
        // The grid went through every other verdict.
        assert_eq!(
            compared.keys().map(String::as_str).collect::<Vec<_>>(),
            ["Agree", "Disagree", "Unknown"]
        );
    }

    /// A single-stack EKS/GKE cluster under the usual IPv4-only deny: the probe's IPv6
    /// connects fail at once. With the pod's IPv4 address alone, those targets are not
    /// applicable (no medium disagreement, no unknown), IPv4 still agrees.
    #[test]
    fn a_single_stack_pod_under_an_ipv4_only_deny_has_no_disagreement() {
        use imdsguard_core::target::{AWS_IMDS_IPV6, AWS_POD_IDENTITY, AWS_POD_IDENTITY_IPV6};
        let (targets, verdicts) = predict_cloud(Cloud::Aws, &format!("{NS}{DENY_IMDS_V4_ONLY}"));
        let observed = probe_saw(
            Cloud::Aws,
            &[
                (ProbeEndpoint::Imds, "blocked-timeout"),
                (ProbeEndpoint::ImdsIpv6, "blocked-refused"),
                (ProbeEndpoint::PodIdentity, "reachable"),
                (ProbeEndpoint::PodIdentityIpv6, "blocked-refused"),
            ],
        );
        let v4_only = PodIpv6::of_addresses(&["10.0.3.7".parse().unwrap()]);
        let results = compare_all(
            Cloud::Aws,
            &targets,
            Some(&verdicts),
            Some(&observed),
            v4_only,
        );
        assert_eq!(
            results
                .iter()
                .map(|r| (r.target, r.agreement, r.severity))
                .collect::<Vec<_>>(),
            [
                (IMDS, Agreement::Agree, None),
                (AWS_IMDS_IPV6, Agreement::NotApplicable, None),
                (AWS_POD_IDENTITY, Agreement::Agree, None),
                (AWS_POD_IDENTITY_IPV6, Agreement::NotApplicable, None),
            ]
        );
        // The same pod with an IPv6 address: the policies allow IPv6 and the probe was
        // refused there, a medium disagreement as before.
        let results = compare_all(
            Cloud::Aws,
            &targets,
            Some(&verdicts),
            Some(&observed),
            PodIpv6::Yes,
        );
        for t in [AWS_IMDS_IPV6, AWS_POD_IDENTITY_IPV6] {
            assert_eq!(
                by_target(&results, t).severity,
                Some(Severity::Medium),
                "{t}"
            );
        }
    }
}
