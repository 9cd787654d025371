//! `--as NAMESPACE/KIND/NAME`: the workload whose pod labels and service account the
//! probe's pod copies, read from the API server.

use std::fmt;
use std::str::FromStr;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec, ReplicationController};
use kube::Api;

use super::VerifyError;
use super::job::PodIdentity;
use crate::Client;

/// The kinds `--as` reads, with the names kubectl accepts for them.
const KINDS: &[(&str, &[&str])] = &[
    ("Deployment", &["deployment", "deployments", "deploy"]),
    ("StatefulSet", &["statefulset", "statefulsets", "sts"]),
    ("DaemonSet", &["daemonset", "daemonsets", "ds"]),
    ("ReplicaSet", &["replicaset", "replicasets", "rs"]),
    ("Job", &["job", "jobs"]),
    ("CronJob", &["cronjob", "cronjobs", "cj"]),
    (
        "ReplicationController",
        &["replicationcontroller", "replicationcontrollers", "rc"],
    ),
    ("Pod", &["pod", "pods", "po"]),
];

/// A workload named `NAMESPACE/KIND/NAME` (KIND as kubectl spells it: `deploy`,
/// `Deployment`, `deployments.apps`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadRef {
    /// Its namespace.
    pub namespace: String,
    /// Its kind, canonical (`Deployment`, `StatefulSet`, ..., `Pod`).
    pub kind: String,
    /// Its name.
    pub name: String,
}

impl WorkloadRef {
    /// A reference from its parts; `kind` as kubectl spells it.
    pub fn new(namespace: &str, kind: &str, name: &str) -> Result<WorkloadRef, VerifyError> {
        let bare = kind.split('.').next().unwrap_or(kind).to_ascii_lowercase();
        let kind = KINDS
            .iter()
            .find(|(canonical, names)| {
                canonical.eq_ignore_ascii_case(&bare) || names.contains(&bare.as_str())
            })
            .map(|(canonical, _)| (*canonical).to_owned())
            .ok_or_else(|| {
                VerifyError::Config(format!(
                    "--as: `{kind}` is not a workload kind verify can copy: use one of {}",
                    KINDS.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", ")
                ))
            })?;
        if namespace.is_empty() || name.is_empty() {
            return Err(VerifyError::Config(
                "--as: write NAMESPACE/KIND/NAME, e.g. payments/deployment/api".into(),
            ));
        }
        Ok(WorkloadRef {
            namespace: namespace.to_owned(),
            kind,
            name: name.to_owned(),
        })
    }
}

impl FromStr for WorkloadRef {
    type Err = VerifyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split('/').collect::<Vec<_>>().as_slice() {
            [ns, kind, name] => WorkloadRef::new(ns, kind, name),
            _ => Err(VerifyError::Config(format!(
                "--as `{}`: write NAMESPACE/KIND/NAME, e.g. payments/deployment/api",
                imdsguard_core::quote::clip(s)
            ))),
        }
    }
}

impl fmt::Display for WorkloadRef {
    /// `namespace/name[Kind]`, as the audit names workloads.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}[{}]", self.namespace, self.name, self.kind)
    }
}

/// Reads the workload and returns what its pods look like to policies and allowlists.
pub async fn read_identity(client: &Client, w: &WorkloadRef) -> Result<PodIdentity, VerifyError> {
    let ns = w.namespace.as_str();
    let action = format!("read the --as workload {w}");
    let err = |e: kube::Error| super::api_error(&action, e);
    let template: PodTemplateSpec = match w.kind.as_str() {
        "Deployment" => {
            let o = Api::<Deployment>::namespaced(client.clone(), ns)
                .get(&w.name)
                .await
                .map_err(err)?;
            o.spec.map(|s| s.template)
        }
        "StatefulSet" => {
            let o = Api::<StatefulSet>::namespaced(client.clone(), ns)
                .get(&w.name)
                .await
                .map_err(err)?;
            o.spec.map(|s| s.template)
        }
        "DaemonSet" => {
            let o = Api::<DaemonSet>::namespaced(client.clone(), ns)
                .get(&w.name)
                .await
                .map_err(err)?;
            o.spec.map(|s| s.template)
        }
        "ReplicaSet" => {
            let o = Api::<ReplicaSet>::namespaced(client.clone(), ns)
                .get(&w.name)
                .await
                .map_err(err)?;
            o.spec.and_then(|s| s.template)
        }
        "Job" => {
            let o = Api::<Job>::namespaced(client.clone(), ns)
                .get(&w.name)
                .await
                .map_err(err)?;
            o.spec.map(|s| s.template)
        }
        "CronJob" => {
            let o = Api::<CronJob>::namespaced(client.clone(), ns)
                .get(&w.name)
                .await
                .map_err(err)?;
            o.spec.job_template.spec.map(|j| j.template)
        }
        "ReplicationController" => {
            let o = Api::<ReplicationController>::namespaced(client.clone(), ns)
                .get(&w.name)
                .await
                .map_err(err)?;
            o.spec.and_then(|s| s.template)
        }
        "Pod" => {
            let o = Api::<Pod>::namespaced(client.clone(), ns)
                .get(&w.name)
                .await
                .map_err(err)?;
            Some(PodTemplateSpec {
                metadata: Some(o.metadata),
                spec: o.spec,
            })
        }
        other => unreachable!("WorkloadRef::new admits no kind {other}"),
    }
    .ok_or_else(|| VerifyError::Config(format!("--as {w}: it has no pod template")))?;
    Ok(PodIdentity::from_template(w.to_string(), &template))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        let w: WorkloadRef = "payments/deploy/api".parse().unwrap();
        assert_eq!(w.kind, "Deployment");
        assert_eq!(w.to_string(), "payments/api[Deployment]");
        assert_eq!(
            "kube-system/daemonsets.apps/ama-logs"
                .parse::<WorkloadRef>()
                .unwrap()
                .kind,
            "DaemonSet"
        );
        assert_eq!("ns/Pod/p".parse::<WorkloadRef>().unwrap().kind, "Pod");
        for bad in [
            "api",
            "payments/api",
            "payments/service/api",
            "/deploy/api",
            "a/b/c/d",
        ] {
            assert!(bad.parse::<WorkloadRef>().is_err(), "{bad}");
        }
    }
}
