//! The probe Job `verify` creates in each namespace, as plain data: labels, the expiry
//! annotation, the hardened pod spec, and the probe's command line. Pure: nothing here
//! talks to the API server.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use imdsguard_core::imds::{HOST_GA_PLUGIN_URL, IMDS_URL, WIRESERVER_URL};
use imdsguard_core::target::{Cloud, Target};
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, PodReadinessGate, PodSecurityContext, PodSpec, PodTemplateSpec,
    ResourceRequirements, SeccompProfile, SecurityContext,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::ObjectMeta;

use super::message::ProbeEndpoint;

/// The label every object `verify` creates carries (with [`MANAGED_BY`]), on the Job
/// and, unless the `--as` workload's pods already carry this key, on its pod.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// The value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = "imdsguard-verify";
/// The run id label, on the Job and on its pod (always): how a run finds its pods.
pub const RUN_LABEL: &str = "imdsguard.io/verify-run";
/// RFC 3339 time after which an object of a run is a leftover (`verify --clean`), on the
/// Job and its pod.
pub const EXPIRES_ANNOTATION: &str = "imdsguard.io/expires-at";
/// The annotation naming the workload whose labels and service account the pod copies.
pub const AS_ANNOTATION: &str = "imdsguard.io/verify-as";
/// The probe container's name.
pub const CONTAINER: &str = "probe";
/// Where the probe writes its result, read back as the termination message.
pub const TERMINATION_LOG: &str = "/dev/termination-log";
/// The pod condition type of the probe pod's readiness gate. Nothing ever sets this
/// condition, so the probe pod is never Ready.
///
/// Kubernetes' pod readiness gates (`spec.readinessGates`, stable since 1.14; the
/// `PodSpec.readinessGates` API field: "a pod is ready when all its containers are ready
/// AND all conditions specified in the readiness gates have status equal to \"True\"";
/// pod lifecycle docs, "Pod readiness gate": a condition missing from
/// `status.conditions` counts as `False`). With `--as` the pod carries the workload's
/// labels, so the workload's Services select it; never Ready, the EndpointSlice
/// controller lists it with `ready: false`, `serving: false` (it marks an endpoint
/// serving only when the pod's Ready condition is True), and kube-proxy and other
/// dataplanes send it no Service traffic. The exception is a Service with
/// `publishNotReadyAddresses: true`, which overrides readiness by design (docs/verify.md).
pub const NEVER_READY_GATE: &str = "imdsguard.io/probe-never-ready";
/// How long after a run's deadline its objects count as leftovers.
pub const EXPIRY_GRACE: Duration = Duration::from_secs(120);
/// How long a finished Job stays before the TTL controller removes it, should `verify`
/// itself have been killed before deleting it.
pub const TTL_AFTER_FINISHED_SECONDS: i32 = 600;

/// Labels that belong to one pod or are set by a controller, never copied from a
/// workload (the Job's own would clash with the selector the API server generates).
pub const NOT_COPIED_LABELS: &[&str] = &[
    "controller-uid",
    "batch.kubernetes.io/controller-uid",
    "job-name",
    "batch.kubernetes.io/job-name",
    "batch.kubernetes.io/job-completion-index",
    "pod-template-hash",
    "pod-template-generation",
    "controller-revision-hash",
    "statefulset.kubernetes.io/pod-name",
    "apps.kubernetes.io/pod-index",
];

/// The labels, service account and token mount the probe's pod takes from a workload
/// (`--as`), so that policies and allowlists see it as one of that workload's pods.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PodIdentity {
    /// `namespace/name[Kind]` of the workload.
    pub workload: String,
    /// Its pod template's labels, less [`NOT_COPIED_LABELS`].
    pub labels: BTreeMap<String, String>,
    /// Its `serviceAccountName` (else `serviceAccount`), when set.
    pub service_account: Option<String>,
    /// Its `automountServiceAccountToken`, when set.
    pub automount_token: Option<bool>,
}

impl PodIdentity {
    /// The identity of a workload whose pod template has these labels and spec.
    pub fn from_template(workload: String, template: &PodTemplateSpec) -> PodIdentity {
        let labels = template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .unwrap_or_default()
            .into_iter()
            .filter(|(k, _)| !NOT_COPIED_LABELS.contains(&k.as_str()))
            .collect();
        let spec = template.spec.as_ref();
        let service_account = spec.and_then(|s| {
            s.service_account_name
                .clone()
                .filter(|n| !n.is_empty())
                .or_else(|| s.service_account.clone().filter(|n| !n.is_empty()))
        });
        PodIdentity {
            workload,
            labels,
            service_account,
            automount_token: spec.and_then(|s| s.automount_service_account_token),
        }
    }
}

/// The Job's name in every namespace of run `run_id`.
pub fn job_name(run_id: &str) -> String {
    format!("imdsguard-verify-{run_id}")
}

/// `time` as RFC 3339 in UTC, whole seconds (`2025-01-31T12:00:00Z`).
pub fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}

/// Whether an object with this [`EXPIRES_ANNOTATION`] value has expired at `now`: when
/// the time has passed, or when the value is missing or not RFC 3339 (such an object
/// cannot be a live run's).
pub fn expired(annotation: Option<&str>, now: SystemTime) -> bool {
    match annotation.map(|a| humantime::parse_rfc3339_weak(a.trim())) {
        Some(Ok(at)) => at <= now,
        _ => true,
    }
}

/// The probe's command-line arguments for these targets: JSON to the termination log,
/// the IMDS endpoint always, WireServer and HostGAPlugin when a target names them;
/// `--cloud aws|gcp` for those clouds, whose probe walks the metadata service on
/// 169.254.169.254 and checks TCP reachability of what else a target names: `--ipv6`
/// for the cloud's IPv6 metadata address (or the Pod Identity agent's IPv6 address),
/// `--pod-identity` (aws) for the EKS Pod Identity agent on either family. The probe's
/// `--pod-identity --ipv6` checks the agent on both families, so one family's target
/// makes the probe check the other too; `verify` compares only the targets asked.
pub fn probe_args(cloud: Cloud, targets: &[Target]) -> Vec<String> {
    let endpoints: Vec<ProbeEndpoint> = targets
        .iter()
        .filter_map(|t| ProbeEndpoint::for_cloud_target(cloud, t))
        .collect();
    let has = |e: ProbeEndpoint| endpoints.contains(&e);
    let mut args = vec!["probe".to_owned()];
    if cloud != Cloud::Azure {
        args.extend(["--cloud".to_owned(), cloud.name().to_owned()]);
    }
    args.extend(
        [
            "--format",
            "json",
            "--termination-log",
            TERMINATION_LOG,
            "--endpoint",
            IMDS_URL,
        ]
        .map(String::from),
    );
    // Azure's endpoints: only Azure's targets map to them.
    if has(ProbeEndpoint::Wireserver) {
        args.extend(["--wireserver".into(), WIRESERVER_URL.into()]);
    }
    if has(ProbeEndpoint::Hostgaplugin) {
        args.extend(["--hostgaplugin".into(), HOST_GA_PLUGIN_URL.into()]);
    }
    // AWS's and GCP's extra checks (the Pod Identity agent: AWS's targets only).
    if has(ProbeEndpoint::ImdsIpv6) || has(ProbeEndpoint::PodIdentityIpv6) {
        args.push("--ipv6".into());
    }
    if has(ProbeEndpoint::PodIdentity) || has(ProbeEndpoint::PodIdentityIpv6) {
        args.push("--pod-identity".into());
    }
    args
}

/// What one Job is made of.
#[derive(Debug, Clone)]
pub struct JobParams<'a> {
    /// The run's id.
    pub run_id: &'a str,
    /// The namespace.
    pub namespace: &'a str,
    /// The container image (an imdsguard image: its entrypoint is ignored, the command is
    /// `imdsguard`).
    pub image: &'a str,
    /// The cloud the probe walks (`imdsguard probe --cloud`).
    pub cloud: Cloud,
    /// The targets the probe observes.
    pub targets: &'a [Target],
    /// The deadline: the Job's `activeDeadlineSeconds` (rounded up).
    pub deadline: Duration,
    /// When the objects become leftovers.
    pub expires_at: SystemTime,
    /// The `--as` workload's identity, if any.
    pub identity: Option<&'a PodIdentity>,
}

/// The Job: one pod, no retry (`backoffLimit: 0`), killed at the deadline
/// (`activeDeadlineSeconds`), removed by the TTL controller 10 minutes after it
/// finishes should `verify` not delete it; the pod runs as a non-root user with a
/// read-only root filesystem, no capabilities, no privilege escalation, the runtime's
/// seccomp profile, no service links, and no service account token unless `--as` copies
/// a workload's; the probe's result goes to `/dev/termination-log`
/// (`terminationMessagePolicy: File`). The pod has a readiness gate nothing sets
/// ([`NEVER_READY_GATE`]): it is never Ready, so a Service selecting the labels it
/// copied from a workload (`--as`) sends it no traffic.
pub fn build(p: &JobParams<'_>) -> Job {
    let name = job_name(p.run_id);
    let expires = rfc3339(p.expires_at);
    let job_labels = BTreeMap::from([
        (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
        (RUN_LABEL.to_owned(), p.run_id.to_owned()),
        (
            "app.kubernetes.io/name".to_owned(),
            "imdsguard-verify".to_owned(),
        ),
        (
            "app.kubernetes.io/part-of".to_owned(),
            "imdsguard".to_owned(),
        ),
    ]);
    let mut annotations = BTreeMap::from([(EXPIRES_ANNOTATION.to_owned(), expires)]);
    let mut pod_labels = match p.identity {
        Some(identity) => {
            annotations.insert(AS_ANNOTATION.to_owned(), identity.workload.clone());
            let mut labels = identity.labels.clone();
            labels
                .entry(MANAGED_BY_LABEL.to_owned())
                .or_insert_with(|| MANAGED_BY.to_owned());
            labels
        }
        None => job_labels.clone(),
    };
    pod_labels.insert(RUN_LABEL.to_owned(), p.run_id.to_owned());
    let deadline_seconds =
        i64::try_from(p.deadline.as_secs() + u64::from(p.deadline.subsec_nanos() > 0))
            .unwrap_or(i64::MAX)
            .max(1);
    let quantity = |s: &str| Quantity(s.to_owned());
    let container = Container {
        name: CONTAINER.to_owned(),
        image: Some(p.image.to_owned()),
        image_pull_policy: Some("IfNotPresent".to_owned()),
        command: Some(vec!["imdsguard".to_owned()]),
        args: Some(probe_args(p.cloud, p.targets)),
        termination_message_path: Some(TERMINATION_LOG.to_owned()),
        termination_message_policy: Some("File".to_owned()),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_owned(), quantity("10m")),
                ("memory".to_owned(), quantity("16Mi")),
            ])),
            limits: Some(BTreeMap::from([
                ("cpu".to_owned(), quantity("200m")),
                ("memory".to_owned(), quantity("64Mi")),
            ])),
            ..ResourceRequirements::default()
        }),
        ..Container::default()
    };
    let (service_account, automount) = match p.identity {
        Some(identity) => (identity.service_account.clone(), identity.automount_token),
        None => (None, Some(false)),
    };
    Job {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(p.namespace.to_owned()),
            labels: Some(job_labels),
            annotations: Some(annotations.clone()),
            ..ObjectMeta::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(0),
            active_deadline_seconds: Some(deadline_seconds),
            ttl_seconds_after_finished: Some(TTL_AFTER_FINISHED_SECONDS),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    restart_policy: Some("Never".to_owned()),
                    // Never Ready, never a serving endpoint of a Service (see
                    // NEVER_READY_GATE): on every probe pod, with --as or without.
                    readiness_gates: Some(vec![PodReadinessGate {
                        condition_type: NEVER_READY_GATE.to_owned(),
                    }]),
                    service_account_name: service_account,
                    automount_service_account_token: automount,
                    enable_service_links: Some(false),
                    host_network: Some(false),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(65532),
                        run_as_group: Some(65532),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".to_owned(),
                            ..SeccompProfile::default()
                        }),
                        ..PodSecurityContext::default()
                    }),
                    containers: vec![container],
                    ..PodSpec::default()
                }),
            },
            ..JobSpec::default()
        }),
        ..Job::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imdsguard_core::target::IMDS;

    fn params<'a>(identity: Option<&'a PodIdentity>, targets: &'a [Target]) -> JobParams<'a> {
        JobParams {
            run_id: "abc123",
            namespace: "payments",
            image: "example.invalid/imdsguard:1",
            cloud: Cloud::Azure,
            targets,
            deadline: Duration::from_millis(2500),
            expires_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            identity,
        }
    }

    fn readiness_gates(pod: &PodSpec) -> Vec<&str> {
        pod.readiness_gates
            .iter()
            .flatten()
            .map(|g| g.condition_type.as_str())
            .collect()
    }

    #[test]
    fn the_job_is_hardened_and_labelled() {
        let targets = Cloud::Azure.targets();
        let job = build(&params(None, &targets));
        let meta = &job.metadata;
        assert_eq!(meta.name.as_deref(), Some("imdsguard-verify-abc123"));
        let labels = meta.labels.as_ref().unwrap();
        assert_eq!(labels[MANAGED_BY_LABEL], MANAGED_BY);
        assert_eq!(labels[RUN_LABEL], "abc123");
        assert_eq!(
            meta.annotations.as_ref().unwrap()[EXPIRES_ANNOTATION],
            "2023-11-14T22:13:20Z"
        );
        let spec = job.spec.as_ref().unwrap();
        assert_eq!(spec.backoff_limit, Some(0));
        assert_eq!(spec.active_deadline_seconds, Some(3));
        assert!(spec.ttl_seconds_after_finished.is_some());
        let pod = spec.template.spec.as_ref().unwrap();
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        assert_eq!(readiness_gates(pod), [NEVER_READY_GATE]);
        assert_eq!(pod.automount_service_account_token, Some(false));
        assert_eq!(pod.service_account_name, None);
        assert_eq!(
            pod.security_context.as_ref().unwrap().run_as_non_root,
            Some(true)
        );
        let c = &pod.containers[0];
        assert_eq!(c.termination_message_policy.as_deref(), Some("File"));
        assert_eq!(c.termination_message_path.as_deref(), Some(TERMINATION_LOG));
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop.as_deref(),
            Some(&["ALL".to_owned()][..])
        );
        let args = c.args.as_ref().unwrap();
        assert_eq!(
            args.join(" "),
            "probe --format json --termination-log /dev/termination-log --endpoint http://169.254.169.254 \
             --wireserver http://168.63.129.16 --hostgaplugin http://168.63.129.16:32526"
        );
        let tpl_labels = spec
            .template
            .metadata
            .as_ref()
            .unwrap()
            .labels
            .as_ref()
            .unwrap();
        assert_eq!(tpl_labels[RUN_LABEL], "abc123");
        assert_eq!(tpl_labels[MANAGED_BY_LABEL], MANAGED_BY);
    }

    #[test]
    fn imds_alone_leaves_wireserver_unchecked() {
        let job = build(&params(None, &[IMDS]));
        let args = job.spec.unwrap().template.spec.unwrap().containers[0]
            .args
            .clone()
            .unwrap();
        assert!(
            !args
                .iter()
                .any(|a| a.contains("wireserver") || a.contains("hostgaplugin"))
        );
    }

    #[test]
    fn as_copies_labels_and_service_account_but_not_controller_labels() {
        let template = PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(BTreeMap::from([
                    ("app".to_owned(), "web".to_owned()),
                    (MANAGED_BY_LABEL.to_owned(), "Helm".to_owned()),
                    ("pod-template-hash".to_owned(), "5d4f".to_owned()),
                    (
                        "batch.kubernetes.io/controller-uid".to_owned(),
                        "u".to_owned(),
                    ),
                ])),
                ..ObjectMeta::default()
            }),
            spec: Some(PodSpec {
                service_account_name: Some("web-sa".to_owned()),
                ..PodSpec::default()
            }),
        };
        let identity = PodIdentity::from_template("shop/web[Deployment]".into(), &template);
        let targets = Cloud::Azure.targets();
        let job = build(&params(Some(&identity), &targets));
        let spec = job.spec.unwrap();
        let labels = spec.template.metadata.unwrap().labels.unwrap();
        assert_eq!(labels["app"], "web");
        // The workload's own managed-by stays: the pod must look like the workload's.
        assert_eq!(labels[MANAGED_BY_LABEL], "Helm");
        assert_eq!(labels[RUN_LABEL], "abc123");
        assert!(!labels.contains_key("pod-template-hash"));
        assert!(!labels.contains_key("batch.kubernetes.io/controller-uid"));
        let pod = spec.template.spec.unwrap();
        // The pod looks like the workload's to its Services: the gate keeps it unready.
        assert_eq!(readiness_gates(&pod), [NEVER_READY_GATE]);
        assert_eq!(pod.service_account_name.as_deref(), Some("web-sa"));
        assert_eq!(pod.automount_service_account_token, None);
        assert_eq!(job.metadata.labels.unwrap()[MANAGED_BY_LABEL], MANAGED_BY);
    }

    #[test]
    fn aws_and_gcp_probes_walk_their_cloud_on_the_metadata_address() {
        for cloud in [Cloud::Aws, Cloud::Gcp] {
            let targets = [IMDS];
            let mut p = params(None, &targets);
            p.cloud = cloud;
            let job = build(&p);
            let pod = job.spec.unwrap().template.spec.unwrap();
            let args = pod.containers[0].args.as_ref().unwrap().join(" ");
            assert_eq!(
                args,
                format!(
                    "probe --cloud {} --format json --termination-log /dev/termination-log --endpoint http://169.254.169.254",
                    cloud.name()
                )
            );
        }
        // Azure's command line is as before: no --cloud.
        let targets = Cloud::Azure.targets();
        assert!(!probe_args(Cloud::Azure, &targets).contains(&"--cloud".to_owned()));
    }

    #[test]
    fn aws_and_gcp_probes_check_the_ipv6_address_and_the_pod_identity_agent_when_asked() {
        use imdsguard_core::target::{
            AWS_ECS_TASK_METADATA, AWS_IMDS_IPV6, AWS_POD_IDENTITY, AWS_POD_IDENTITY_IPV6,
            GCP_METADATA_IPV6,
        };
        let base = |cloud: Cloud| {
            format!(
                "probe --cloud {} --format json --termination-log /dev/termination-log --endpoint http://169.254.169.254",
                cloud.name()
            )
        };
        let args = |cloud: Cloud, targets: &[Target]| probe_args(cloud, targets).join(" ");
        let aws = base(Cloud::Aws);
        let gcp = base(Cloud::Gcp);
        for (cloud, targets, want) in [
            (Cloud::Aws, vec![IMDS], aws.clone()),
            (
                Cloud::Aws,
                Cloud::Aws.targets(),
                format!("{aws} --ipv6 --pod-identity"),
            ),
            (
                Cloud::Aws,
                vec![IMDS, AWS_IMDS_IPV6],
                format!("{aws} --ipv6"),
            ),
            (
                Cloud::Aws,
                vec![IMDS, AWS_POD_IDENTITY],
                format!("{aws} --pod-identity"),
            ),
            // The agent's IPv6 address needs both flags (the probe's --pod-identity
            // checks it only with --ipv6).
            (
                Cloud::Aws,
                vec![AWS_POD_IDENTITY_IPV6],
                format!("{aws} --ipv6 --pod-identity"),
            ),
            // ECS task metadata is not probed; the other cloud's IPv6 address is none
            // of this one's.
            (Cloud::Aws, vec![IMDS, AWS_ECS_TASK_METADATA], aws.clone()),
            (Cloud::Aws, vec![IMDS, GCP_METADATA_IPV6], aws.clone()),
            (Cloud::Gcp, vec![IMDS], gcp.clone()),
            (Cloud::Gcp, Cloud::Gcp.targets(), format!("{gcp} --ipv6")),
            // No --pod-identity under gcp: the probe refuses it there.
            (
                Cloud::Gcp,
                vec![IMDS, AWS_POD_IDENTITY, AWS_POD_IDENTITY_IPV6, AWS_IMDS_IPV6],
                gcp.clone(),
            ),
        ] {
            assert_eq!(args(cloud, &targets), want, "{cloud} {targets:?}");
        }
        // Azure's command line ignores the other clouds' targets.
        let mut targets = Cloud::Azure.targets();
        targets.extend([AWS_IMDS_IPV6, AWS_POD_IDENTITY]);
        let azure = args(Cloud::Azure, &targets);
        assert!(
            !azure.contains("--ipv6") && !azure.contains("--pod-identity"),
            "{azure}"
        );
        assert_eq!(azure, args(Cloud::Azure, &Cloud::Azure.targets()));
    }

    #[test]
    fn expiry() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert!(expired(Some("2023-11-14T22:13:19Z"), now));
        assert!(!expired(Some("2023-11-14T22:13:21Z"), now));
        assert!(expired(None, now));
        assert!(expired(Some("tomorrow"), now));
        assert!(!expired(Some(&rfc3339(now + Duration::from_secs(5))), now));
    }
}
