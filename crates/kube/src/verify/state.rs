//! Where a probe pod is, from its status: still on its way, failed to start, or
//! terminated with the probe's result in its termination message (its addresses:
//! [`crate::pod::pod_addresses`]). Pure.

use k8s_openapi::api::core::v1::Pod;

use super::job::CONTAINER;

/// Waiting reasons that mean the container will not start without someone fixing
/// something (the image, its pull secret, the pod's configuration).
pub const FAILED_START_REASONS: &[&str] = &[
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

/// What a probe pod's status says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodState {
    /// Not there yet: pending or running (with what it is waiting for).
    Waiting(String),
    /// It will not start (reason: message).
    FailedToStart(String),
    /// The probe container terminated.
    Terminated {
        /// Its exit code.
        exit_code: i32,
        /// The kubelet's reason (`Completed`, `Error`, `OOMKilled`, ...).
        reason: Option<String>,
        /// The termination message (the probe's result), when there is one.
        message: Option<String>,
    },
}

/// Whether `pod` belongs to the Job with uid `job_uid` (an ownerReference to it).
pub fn owned_by(pod: &Pod, job_uid: &str) -> bool {
    pod.metadata
        .owner_references
        .as_ref()
        .is_some_and(|refs| refs.iter().any(|r| r.kind == "Job" && r.uid == job_uid))
}

/// The pod's state, from its phase and the probe container's status.
pub fn pod_state(pod: &Pod) -> PodState {
    let status = pod.status.as_ref();
    let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
    let container = status
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.name == CONTAINER));
    let state = container.and_then(|c| c.state.as_ref());
    if let Some(t) = state.and_then(|s| s.terminated.as_ref()) {
        return PodState::Terminated {
            exit_code: t.exit_code,
            reason: t.reason.clone(),
            message: t.message.clone().filter(|m| !m.trim().is_empty()),
        };
    }
    if let Some(w) = state.and_then(|s| s.waiting.as_ref()) {
        let reason = w.reason.clone().unwrap_or_default();
        let text = match &w.message {
            Some(m) if !m.is_empty() => format!("{reason}: {m}"),
            _ => reason.clone(),
        };
        if FAILED_START_REASONS.contains(&reason.as_str()) {
            return PodState::FailedToStart(text);
        }
        if phase != "Failed" {
            return PodState::Waiting(format!("{phase} ({text})"));
        }
    }
    match phase {
        "Failed" | "Succeeded" => {
            let why = [
                status.and_then(|s| s.reason.clone()),
                status.and_then(|s| s.message.clone()),
            ]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(": ");
            PodState::FailedToStart(if why.is_empty() {
                format!("the pod is {phase} without a status of its probe container")
            } else {
                format!("the pod is {phase}: {why}")
            })
        }
        _ => {
            let condition = status
                .and_then(|s| s.conditions.as_ref())
                .and_then(|cs| {
                    cs.iter()
                        .find(|c| c.type_ == "PodScheduled" && c.status == "False")
                })
                .map(|c| {
                    format!(
                        " (not scheduled: {}{})",
                        c.reason.clone().unwrap_or_default(),
                        c.message
                            .as_ref()
                            .map(|m| format!(": {m}"))
                            .unwrap_or_default()
                    )
                })
                .unwrap_or_default();
            PodState::Waiting(format!("{phase}{condition}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus, PodStatus,
    };

    fn pod(phase: &str, state: Option<ContainerState>) -> Pod {
        Pod {
            status: Some(PodStatus {
                phase: Some(phase.into()),
                container_statuses: state.map(|s| {
                    vec![ContainerStatus {
                        name: CONTAINER.into(),
                        state: Some(s),
                        ..ContainerStatus::default()
                    }]
                }),
                ..PodStatus::default()
            }),
            ..Pod::default()
        }
    }

    #[test]
    fn states() {
        assert_eq!(
            pod_state(&pod("Pending", None)),
            PodState::Waiting("Pending".into())
        );
        let waiting = |reason: &str| ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.into()),
                message: Some("m".into()),
            }),
            ..ContainerState::default()
        };
        assert_eq!(
            pod_state(&pod("Pending", Some(waiting("ImagePullBackOff")))),
            PodState::FailedToStart("ImagePullBackOff: m".into())
        );
        assert!(matches!(
            pod_state(&pod("Pending", Some(waiting("ContainerCreating")))),
            PodState::Waiting(_)
        ));
        let terminated = ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: 1,
                reason: Some("Error".into()),
                message: Some("{}".into()),
                ..ContainerStateTerminated::default()
            }),
            ..ContainerState::default()
        };
        assert_eq!(
            pod_state(&pod("Failed", Some(terminated))),
            PodState::Terminated {
                exit_code: 1,
                reason: Some("Error".into()),
                message: Some("{}".into())
            }
        );
        let mut evicted = pod("Failed", None);
        evicted.status.as_mut().unwrap().reason = Some("Evicted".into());
        assert_eq!(
            pod_state(&evicted),
            PodState::FailedToStart("the pod is Failed: Evicted".into())
        );
    }
}
