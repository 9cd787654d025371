//! `imdsguard verify`: the seed's validation step, in every namespace.
//!
//! For each selected namespace, [`Verify::start`] creates a short-lived probe Job
//! ([`job::build`]: one pod, no retry, a deadline, hardened), waits until its pod
//! terminates or the deadline passes, reads the probe's result from the pod's
//! termination message (`status.containerStatuses[].state.terminated.message`, so no
//! `pods/log` permission is needed; [`message::ProbeResult`]), and compares what the
//! probe saw with what the core audit predicts for that very pod
//! ([`compare::predict`]): a disagreement is high when the policies deny and the probe
//! got through, medium the other way round. An IPv6 target of a probe pod whose status
//! names no IPv6 address (a single-stack cluster) is not applicable
//! ([`Agreement::NotApplicable`]): neither agree nor disagree.
//!
//! Clean-up: every object a run creates carries [`job::MANAGED_BY_LABEL`]`=`
//! [`job::MANAGED_BY`], the run label [`job::RUN_LABEL`] and the expiry annotation
//! [`job::EXPIRES_ANNOTATION`]. The run deletes its Jobs (propagation `Background`) and
//! their pods when it ends, whichever way it ends: all pods terminated, deadline,
//! an API error, [`Canceller::cancel`] (the binary calls it on Ctrl-C), a dropped
//! [`Verify`] handle, even a panic of the run (the clean-up runs, then the panic goes
//! on). Only a killed process leaves objects behind: [`clean`] removes those once
//! expired (`verify --clean`), and the Jobs' `ttlSecondsAfterFinished` and
//! `activeDeadlineSeconds` bound them meanwhile.
//!
//! See `docs/verify.md` for the RBAC it needs, the output and the exit status.

mod clean;
pub mod compare;
pub mod job;
pub mod message;
pub mod state;
mod workload;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::{FutureExt, StreamExt, stream};
use imdsguard_core::audit::Severity;
use imdsguard_core::engine::{Engine, EngineSettings};
use imdsguard_core::engine_detect::{ClusterSignals, EngineDecision};
use imdsguard_core::manifest::Loaded;
use imdsguard_core::model::PodTemplate;
use imdsguard_core::target::{Cloud, MetadataService, Target};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, ResourceExt};
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::Client;

pub use clean::{CleanConfig, CleanReport, clean};
pub use compare::{Agreement, PodIpv6, Predicted, TargetResult};
pub use job::PodIdentity;
pub use message::{EndpointResult, ProbeEndpoint, ProbeResult, Seen};
pub use workload::{WorkloadRef, read_identity};

/// The default deadline: how long a run waits for the probe pods.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(60);
/// The default time between two looks at the probe pods.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(500);
/// How many API requests a run has in flight at most (creating Jobs, deleting).
const CONCURRENCY: usize = 16;
/// How long one clean-up request may take.
const CLEANUP_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// The image `verify` runs by default: this project's, at this version.
pub fn default_image() -> String {
    format!("ghcr.io/imdsguard/imdsguard:{}", env!("CARGO_PKG_VERSION"))
}

/// Which namespaces a run probes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Namespaces {
    /// Every namespace the API lists, less those being deleted.
    All,
    /// These (which must exist).
    Only(Vec<String>),
}

/// What a run does.
#[derive(Debug, Clone)]
pub struct VerifyConfig {
    /// Where to probe.
    pub namespaces: Namespaces,
    /// The probe's image (an imdsguard image; the command is `imdsguard probe`).
    pub image: String,
    /// The cloud the probe walks (`imdsguard probe --cloud`); default Azure.
    pub cloud: Cloud,
    /// The targets to verify: each must be one the probe observes
    /// ([`ProbeEndpoint::for_cloud_target`]: Azure IMDS, WireServer :80 and :32526;
    /// under AWS and GCP the metadata service on IPv4 and IPv6, under AWS also the EKS
    /// Pod Identity agent on both).
    pub targets: Vec<Target>,
    /// Probe as this workload's pods (its labels and service account); the namespaces
    /// must then be exactly the workload's.
    pub as_workload: Option<WorkloadRef>,
    /// How long to wait for the probe pods (also their Jobs' `activeDeadlineSeconds`).
    pub deadline: Duration,
    /// The engine the prediction assumes; `None`: decided from `signals` and the
    /// snapshot's kinds, as `audit` does.
    pub engine: Option<EngineSettings>,
    /// What is known of the cluster besides its objects (DaemonSets, CRDs, the AKS
    /// cluster file): engine detection and the AKS IMDS restriction.
    pub signals: ClusterSignals,
    /// Time between two looks at the probe pods.
    pub poll_interval: Duration,
}

impl VerifyConfig {
    /// A run over `namespaces` with the defaults: this project's image, the Azure
    /// targets, a 60 s deadline, the engine detected.
    pub fn new(namespaces: Namespaces) -> VerifyConfig {
        VerifyConfig {
            namespaces,
            image: default_image(),
            cloud: Cloud::Azure,
            targets: Cloud::Azure.targets(),
            as_workload: None,
            deadline: DEFAULT_DEADLINE,
            engine: None,
            signals: ClusterSignals::default(),
            poll_interval: DEFAULT_POLL_INTERVAL,
        }
    }

    /// The same for `cloud`: the probe walks that cloud, and the targets are
    /// [`default_targets`] (`targets` may then name any of [`verifiable_targets`]).
    pub fn for_cloud(mut self, cloud: Cloud) -> VerifyConfig {
        self.cloud = cloud;
        self.targets = default_targets(cloud);
        self
    }

    /// Checks the settings (what is wrong, and what to do).
    pub fn check(&self) -> Result<(), VerifyError> {
        if self.image.trim().is_empty() {
            return Err(VerifyError::Config("--image: the image is empty".into()));
        }
        if self.targets.is_empty() {
            return Err(VerifyError::Config("no target to verify".into()));
        }
        if let Some(t) = self
            .targets
            .iter()
            .find(|t| ProbeEndpoint::for_cloud_target(self.cloud, t).is_none())
        {
            let walked: Vec<String> = verifiable_targets(self.cloud)
                .iter()
                .map(ToString::to_string)
                .collect();
            return Err(VerifyError::Config(format!(
                "the probe cannot observe {t}: verify --cloud {} checks the endpoints the \
                 probe walks ({}); audit the others with `imdsguard audit --cloud {}`",
                self.cloud,
                walked.join(", "),
                self.cloud
            )));
        }
        if self.deadline.is_zero() {
            return Err(VerifyError::Config("--deadline must be positive".into()));
        }
        if let Namespaces::Only(list) = &self.namespaces
            && list.is_empty()
        {
            return Err(VerifyError::Config("no namespace selected".into()));
        }
        if let Some(w) = &self.as_workload
            && self.namespaces != Namespaces::Only(vec![w.namespace.clone()])
        {
            return Err(VerifyError::Config(format!(
                "--as {w} probes in the workload's namespace only ({}): leave out -A, or \
                 give -n {}",
                w.namespace, w.namespace
            )));
        }
        Ok(())
    }
}

/// The targets of `cloud` whose reachability `imdsguard probe --cloud CLOUD` reports
/// ([`ProbeEndpoint::for_cloud_target`]): Azure's three; AWS's and GCP's metadata service
/// on 169.254.169.254:80 and on the cloud's IPv6 address, and AWS's EKS Pod Identity
/// agent on both families (ECS task metadata is audited, not probed, by `verify`).
pub fn verifiable_targets(cloud: Cloud) -> Vec<Target> {
    cloud
        .targets()
        .into_iter()
        .filter(|t| ProbeEndpoint::for_cloud_target(cloud, t).is_some())
        .collect()
}

/// The targets `verify --cloud CLOUD` checks when none is named: the
/// [`verifiable_targets`] but the EKS Pod Identity agent. The agent is an add-on that
/// hands a pod its own role's credentials, for the pod's own service-account token, never
/// the node's: reaching it is no metadata exposure, and on the many clusters without the
/// add-on (or whose policies leave it open on purpose) it would only add disagreements.
/// `--target 169.254.170.23:80` checks it.
pub fn default_targets(cloud: Cloud) -> Vec<Target> {
    verifiable_targets(cloud)
        .into_iter()
        .filter(|t| cloud.service(t) != Some(MetadataService::AwsPodIdentity))
        .collect()
}

/// Why a run could not start, or a clean-up could not list what to delete.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The settings are wrong.
    #[error("{0}")]
    Config(String),
    /// An API request failed.
    #[error("cannot {action}: {detail}")]
    Api {
        /// What was being done (`list namespaces`, `create Job ns/name`).
        action: String,
        /// What the API server said, and what to do.
        detail: String,
        /// The client's error.
        #[source]
        source: Box<kube::Error>,
    },
}

/// An API error, said for a person: forbidden names the verb the user lacks (the API
/// server's message does) and points at the RBAC section.
pub(crate) fn describe(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) if s.code == 403 => format!(
            "forbidden: {} (grant it: see the RBAC section of docs/verify.md)",
            s.message
        ),
        kube::Error::Api(s) if s.code == 401 => format!(
            "unauthorized: the API server refused the kubeconfig's credentials ({})",
            s.message
        ),
        kube::Error::Api(s) if s.message.is_empty() => format!("HTTP {} {}", s.code, s.reason),
        kube::Error::Api(s) => s.message.clone(),
        other => other.to_string(),
    }
}

pub(crate) fn api_error(action: &str, e: kube::Error) -> VerifyError {
    VerifyError::Api {
        action: action.to_owned(),
        detail: describe(&e),
        source: Box::new(e),
    }
}

fn is_forbidden(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 401 || s.code == 403)
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// How one namespace's probe ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// The probe ran and its result was read.
    Observed,
    /// The deadline passed before the pod terminated.
    Timeout,
    /// The pod will not start (image pull, configuration, eviction, ...).
    FailedToStart,
    /// An API error, or a pod that ended without a readable result.
    Error,
    /// The run was cancelled (Ctrl-C) before the result came.
    Cancelled,
}

impl Outcome {
    /// The name used in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Observed => "observed",
            Outcome::Timeout => "timeout",
            Outcome::FailedToStart => "failed-to-start",
            Outcome::Error => "error",
            Outcome::Cancelled => "cancelled",
        }
    }
}

/// One namespace: the probe's result next to the audit's prediction, per target.
#[derive(Debug, Clone, Serialize)]
pub struct NamespaceResult {
    /// The namespace.
    pub namespace: String,
    /// How the probe ended.
    pub outcome: Outcome,
    /// The Job, when it was created.
    pub job: Option<String>,
    /// The Job's pod, when one was seen.
    pub pod: Option<String>,
    /// Why there is no result (timeout, failed to start, error), in words.
    pub detail: Option<String>,
    /// The probe container's exit code, when it terminated.
    pub exit_code: Option<i32>,
    /// The probe pod's addresses (`status.podIPs`), when its status names them: without
    /// an IPv6 address among them, the IPv6 targets are not applicable.
    pub pod_ips: Vec<IpAddr>,
    /// Whether the probe reached something sensitive (instance data, a token, WireServer
    /// data).
    pub sensitive: bool,
    /// What the probe reached, in its words.
    pub reachable: Vec<String>,
    /// Per target, in target order.
    pub targets: Vec<TargetResult>,
}

impl NamespaceResult {
    /// Whether every target agrees (a target not applicable aside).
    pub fn agrees(&self) -> bool {
        self.outcome == Outcome::Observed
            && self
                .targets
                .iter()
                .all(|t| matches!(t.agreement, Agreement::Agree | Agreement::NotApplicable))
    }
}

/// What the run deleted when it ended.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Cleanup {
    /// Jobs deleted (`namespace/name`).
    pub jobs_deleted: Vec<String>,
    /// Pods deleted (`namespace/name`).
    pub pods_deleted: Vec<String>,
    /// Pods the run may not delete (forbidden): the garbage collector deletes them with
    /// their Job.
    pub pods_left_to_garbage_collector: Vec<String>,
    /// Deletions that failed: those objects are left (`verify --clean` removes them
    /// once expired).
    pub errors: Vec<String>,
}

/// The exit status of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// 0: every namespace observed, every target agrees and is blocked (or is not
    /// applicable).
    Agree,
    /// 1: a disagreement, or a target the probe reached (a target not applicable never
    /// counts).
    Finding,
    /// 2: incomplete: a namespace without a result (timeout, failed to start, error,
    /// cancelled), a target the probe could not conclude on, a run error, or objects the
    /// clean-up could not delete.
    Incomplete,
}

impl Status {
    /// 0, 1 or 2.
    pub fn code(self) -> u8 {
        match self {
            Status::Agree => 0,
            Status::Finding => 1,
            Status::Incomplete => 2,
        }
    }
}

/// Totals of a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Namespaces selected.
    pub namespaces: usize,
    /// Namespaces whose probe result was read.
    pub observed: usize,
    /// Namespaces where every target agrees (targets not applicable aside).
    pub agree: usize,
    /// Disagreements where the policies deny and the probe got through.
    pub high: usize,
    /// Disagreements where the policies allow and the probe was blocked.
    pub medium: usize,
    /// Targets the probe reached (namespace × target).
    pub reached: usize,
    /// Targets whose answer is unknown (no result or inconclusive).
    pub unknown: usize,
    /// Targets not applicable (namespace × target): IPv6 targets of a probe pod without
    /// an IPv6 address. They count towards no exit status.
    pub not_applicable: usize,
    /// Namespaces per outcome.
    pub outcomes: BTreeMap<&'static str, usize>,
}

/// The result of a run.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// The run's id (the value of [`job::RUN_LABEL`]).
    pub run_id: String,
    /// The probe's image.
    pub image: String,
    /// The cloud the probe walked.
    pub cloud: Cloud,
    /// The targets verified.
    pub targets: Vec<Target>,
    /// The engine the prediction assumed.
    pub engine: Engine,
    /// Whether it was detected (not named).
    pub engine_detected: bool,
    /// How the engine was decided, and the AKS IMDS restriction.
    pub engine_decision: EngineDecision,
    /// The workload the probe posed as (`--as`).
    pub as_workload: Option<String>,
    /// The deadline, in seconds.
    pub deadline_seconds: f64,
    /// Per namespace, by name.
    pub namespaces: Vec<NamespaceResult>,
    /// Namespaces left out (being deleted).
    pub skipped: Vec<String>,
    /// Errors of the run as a whole (a forbidden list of pods, ...).
    pub errors: Vec<String>,
    /// Whether the run was cancelled.
    pub interrupted: bool,
    /// What the run deleted.
    pub cleanup: Cleanup,
    /// Totals.
    pub summary: Summary,
    /// The exit status.
    pub status: Status,
}

impl VerifyReport {
    fn finish(&mut self) {
        let mut s = Summary {
            namespaces: self.namespaces.len(),
            ..Summary::default()
        };
        for ns in &self.namespaces {
            *s.outcomes.entry(ns.outcome.as_str()).or_default() += 1;
            if ns.outcome == Outcome::Observed {
                s.observed += 1;
            }
            if ns.agrees() {
                s.agree += 1;
            }
            for t in &ns.targets {
                match t.severity {
                    Some(Severity::High) => s.high += 1,
                    Some(Severity::Medium) => s.medium += 1,
                    _ => {}
                }
                // A target not applicable was not reached (compare::compare), so it
                // counts towards no exit status.
                s.not_applicable += usize::from(t.agreement == Agreement::NotApplicable);
                s.reached += usize::from(t.reached());
                s.unknown += usize::from(t.agreement == Agreement::Unknown);
            }
        }
        let incomplete = s.unknown > 0
            || s.observed < s.namespaces
            || !self.errors.is_empty()
            || !self.cleanup.errors.is_empty()
            || self.interrupted;
        self.status = if incomplete {
            Status::Incomplete
        } else if s.high + s.medium + s.reached > 0 {
            Status::Finding
        } else {
            Status::Agree
        };
        self.summary = s;
    }
}

/// Cancels a running [`Verify`]: it stops waiting, deletes what it created and returns
/// its report with `interrupted` set. Cheap to clone; safe to call from anywhere, any
/// number of times.
#[derive(Debug, Clone)]
pub struct Canceller(Arc<watch::Sender<bool>>);

impl Canceller {
    /// Asks the run to stop (it cleans up before it returns).
    pub fn cancel(&self) {
        let _ = self.0.send(true);
    }
}

/// A running verification. [`Verify::wait`] returns its report once it has cleaned up;
/// dropping the handle without waiting cancels the run (which still cleans up, as long
/// as the runtime runs).
#[derive(Debug)]
pub struct Verify {
    run_id: String,
    cancel: Arc<watch::Sender<bool>>,
    task: Option<JoinHandle<Result<VerifyReport, VerifyError>>>,
}

impl Drop for Verify {
    fn drop(&mut self) {
        if self.task.is_some() {
            let _ = self.cancel.send(true);
        }
    }
}

impl Verify {
    /// Checks `config` and starts the run on the current tokio runtime. `snapshot` is the
    /// cluster as read for the audit (namespaces and policies; pods and controllers are
    /// not needed): the prediction is made on it.
    pub fn start(
        client: Client,
        config: VerifyConfig,
        snapshot: Loaded,
    ) -> Result<Verify, VerifyError> {
        config.check()?;
        let run_id = new_run_id();
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(run(client, config, snapshot, run_id.clone(), rx));
        Ok(Verify {
            run_id,
            cancel: Arc::new(tx),
            task: Some(task),
        })
    }

    /// The run's id (the value of the run label on its objects).
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// A handle that cancels the run (e.g. from a signal handler).
    pub fn canceller(&self) -> Canceller {
        Canceller(self.cancel.clone())
    }

    /// Waits for the report (after the clean-up). An error means nothing was created:
    /// the namespaces or the `--as` workload could not be read.
    pub async fn wait(mut self) -> Result<VerifyReport, VerifyError> {
        // The handle keeps the task until it ends: should this future be dropped while
        // waiting, the handle's drop cancels the run (which still cleans up).
        let joined = self
            .task
            .as_mut()
            .expect("a Verify is waited for once")
            .await;
        self.task = None;
        match joined {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(VerifyError::Config(format!(
                "the verify run was aborted: {e}"
            ))),
        }
    }
}

/// A run id: 10 characters of `[a-z0-9]`, from the process's random hash keys, the
/// time and the process id.
fn new_run_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    h.write_u128(nanos);
    h.write_u32(std::process::id());
    let mut v = h.finish();
    let digits = b"0123456789abcdefghijklmnopqrstuvwxyz";
    (0..10)
        .map(|_| {
            let c = digits[(v % 36) as usize] as char;
            v /= 36;
            c
        })
        .collect()
}

/// What a run created or saw: what its clean-up deletes.
#[derive(Debug, Default)]
struct Tracker {
    /// Namespaces where a Job create was sent (whether or not it succeeded).
    attempted: BTreeSet<String>,
    /// Pods of the run seen, `(namespace, name)`.
    pods: BTreeSet<(String, String)>,
}

fn lock(t: &Mutex<Tracker>) -> std::sync::MutexGuard<'_, Tracker> {
    t.lock().unwrap_or_else(|p| p.into_inner())
}

/// The run: nothing is created before the namespaces and the `--as` workload are read;
/// from the first create on, the clean-up runs whatever happens.
async fn run(
    client: Client,
    config: VerifyConfig,
    snapshot: Loaded,
    run_id: String,
    cancel: watch::Receiver<bool>,
) -> Result<VerifyReport, VerifyError> {
    let (namespaces, skipped) = resolve_namespaces(&client, &config.namespaces).await?;
    let identity = match &config.as_workload {
        Some(w) => Some(read_identity(&client, w).await?),
        None => None,
    };
    let tracker = Mutex::new(Tracker::default());
    let ctx = Run {
        client: &client,
        config: &config,
        run_id: &run_id,
        tracker: &tracker,
        all: config.namespaces == Namespaces::All,
    };
    let main =
        AssertUnwindSafe(ctx.main(namespaces, skipped, identity.as_ref(), &snapshot, cancel))
            .catch_unwind()
            .await;
    let cleanup = ctx.cleanup().await;
    match main {
        Ok(mut report) => {
            report.cleanup = cleanup;
            report.finish();
            Ok(report)
        }
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// The namespaces to probe, and those left out because they are being deleted.
async fn resolve_namespaces(
    client: &Client,
    selection: &Namespaces,
) -> Result<(Vec<String>, Vec<String>), VerifyError> {
    match selection {
        Namespaces::Only(list) => {
            let mut list = list.clone();
            list.sort();
            list.dedup();
            Ok((list, Vec::new()))
        }
        Namespaces::All => {
            let api: Api<Namespace> = Api::all(client.clone());
            let mut active = Vec::new();
            let mut skipped = Vec::new();
            let mut params = ListParams::default().limit(500);
            loop {
                let page = api
                    .list(&params)
                    .await
                    .map_err(|e| api_error("list namespaces", e))?;
                for ns in &page.items {
                    let terminating = ns.metadata.deletion_timestamp.is_some()
                        || ns
                            .status
                            .as_ref()
                            .and_then(|s| s.phase.as_deref())
                            .is_some_and(|p| p == "Terminating");
                    if terminating {
                        skipped.push(ns.name_any());
                    } else {
                        active.push(ns.name_any());
                    }
                }
                match page.metadata.continue_.filter(|c| !c.is_empty()) {
                    Some(c) => params = params.continue_token(&c),
                    None => break,
                }
            }
            active.sort();
            skipped.sort();
            Ok((active, skipped))
        }
    }
}

/// A Job this run created.
#[derive(Debug, Clone)]
struct Created {
    name: String,
    uid: String,
}

/// Where one namespace's probe stands while the run waits.
#[derive(Debug, Clone)]
enum Progress {
    /// Waiting; the last pod seen and its state, if any.
    Waiting(Option<(String, String)>),
    /// Done.
    Done(Box<NamespaceResult>),
}

/// A run's shared state.
struct Run<'a> {
    client: &'a Client,
    config: &'a VerifyConfig,
    run_id: &'a str,
    tracker: &'a Mutex<Tracker>,
    /// Whether every namespace is probed (pods are then listed cluster-wide).
    all: bool,
}

impl Run<'_> {
    async fn main(
        &self,
        namespaces: Vec<String>,
        skipped: Vec<String>,
        identity: Option<&PodIdentity>,
        snapshot: &Loaded,
        mut cancel: watch::Receiver<bool>,
    ) -> VerifyReport {
        let config = self.config;
        let expires_at = SystemTime::now() + config.deadline + job::EXPIRY_GRACE;
        let mut errors = Vec::new();
        let mut results: BTreeMap<String, NamespaceResult> = BTreeMap::new();

        // 1. The Jobs, CONCURRENCY at a time; none is sent once cancelled.
        let creations: Vec<(String, Option<Result<Job, kube::Error>>)> =
            stream::iter(namespaces.iter().cloned())
                .map(|ns| {
                    let cancel = cancel.clone();
                    async move {
                        if *cancel.borrow() {
                            return (ns, None);
                        }
                        let job = job::build(&job::JobParams {
                            run_id: self.run_id,
                            namespace: &ns,
                            image: &config.image,
                            cloud: config.cloud,
                            targets: &config.targets,
                            deadline: config.deadline,
                            expires_at,
                            identity,
                        });
                        lock(self.tracker).attempted.insert(ns.clone());
                        let api: Api<Job> = Api::namespaced(self.client.clone(), &ns);
                        let created = api.create(&PostParams::default(), &job).await;
                        (ns, Some(created))
                    }
                })
                .buffer_unordered(CONCURRENCY)
                .collect()
                .await;
        let mut created: BTreeMap<String, Created> = BTreeMap::new();
        let mut pods_to_predict = Vec::new();
        let name = job::job_name(self.run_id);
        for (ns, result) in creations {
            match result {
                None => {
                    results.insert(
                        ns.clone(),
                        self.unresolved(
                            &ns,
                            Outcome::Cancelled,
                            "cancelled before its Job was created".into(),
                        ),
                    );
                }
                Some(Err(e)) => {
                    let detail = describe(&e);
                    results.insert(
                        ns.clone(),
                        self.unresolved(
                            &ns,
                            Outcome::Error,
                            format!("cannot create Job {ns}/{name}: {detail}"),
                        ),
                    );
                }
                Some(Ok(job)) => {
                    let template = job.spec.as_ref().map(|s| &s.template);
                    let labels = template
                        .and_then(|t| t.metadata.as_ref())
                        .and_then(|m| m.labels.clone())
                        .unwrap_or_default();
                    let spec = template.and_then(|t| t.spec.as_ref());
                    pods_to_predict.push(compare::PodToPredict {
                        namespace: ns.clone(),
                        job: job.name_any(),
                        template: PodTemplate {
                            labels,
                            host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
                            service_account: PodTemplate::service_account_of(
                                spec.and_then(|s| s.service_account_name.as_deref()),
                                spec.and_then(|s| s.service_account.as_deref()),
                            ),
                        },
                    });
                    created.insert(
                        ns,
                        Created {
                            name: job.name_any(),
                            uid: job.uid().unwrap_or_default(),
                        },
                    );
                }
            }
        }

        // 2. The audit's prediction for those pods.
        let prediction = compare::predict(
            snapshot,
            &pods_to_predict,
            &config.targets,
            config.engine,
            &config.signals,
        );

        // 3. Wait for the pods.
        let deadline = Instant::now() + config.deadline;
        let mut progress: BTreeMap<String, Progress> = created
            .keys()
            .map(|ns| (ns.clone(), Progress::Waiting(None)))
            .collect();
        let mut interrupted = *cancel.borrow();
        let mut timed_out = false;
        let mut last_error: Option<String> = None;
        let mut fatal: Option<String> = None;
        while !interrupted && !created.is_empty() {
            let waiting: Vec<&String> = progress
                .iter()
                .filter(|(_, p)| matches!(p, Progress::Waiting(_)))
                .map(|(ns, _)| ns)
                .collect();
            if waiting.is_empty() {
                break;
            }
            match self.list_pods(&waiting).await {
                Ok(pods) => {
                    last_error = None;
                    for pod in pods {
                        let ns = pod.namespace().unwrap_or_default();
                        let Some(job) = created.get(&ns) else {
                            continue;
                        };
                        if !state::owned_by(&pod, &job.uid) {
                            continue;
                        }
                        if !matches!(progress.get(&ns), Some(Progress::Waiting(_))) {
                            continue;
                        }
                        let pod_name = pod.name_any();
                        lock(self.tracker)
                            .pods
                            .insert((ns.clone(), pod_name.clone()));
                        let verdicts = prediction.verdicts.get(&ns).map(Vec::as_slice);
                        let next = match state::pod_state(&pod) {
                            state::PodState::Waiting(what) => {
                                Progress::Waiting(Some((pod_name, what)))
                            }
                            state::PodState::FailedToStart(why) => {
                                let mut r = self.result(&ns, job, verdicts, Some(&pod), None);
                                r.outcome = Outcome::FailedToStart;
                                r.pod = Some(pod_name.clone());
                                r.detail = Some(format!("pod {pod_name} did not start: {why}"));
                                Progress::Done(Box::new(r))
                            }
                            state::PodState::Terminated {
                                exit_code,
                                reason,
                                message,
                            } => {
                                let parsed = message.as_deref().map_or(
                                    Err(message::MessageError::Empty),
                                    ProbeResult::from_message,
                                );
                                let mut r = match parsed {
                                    Ok(result) => {
                                        self.result(&ns, job, verdicts, Some(&pod), Some(&result))
                                    }
                                    Err(e) => {
                                        let mut r =
                                            self.result(&ns, job, verdicts, Some(&pod), None);
                                        r.outcome = Outcome::Error;
                                        r.detail = Some(format!(
                                            "pod {pod_name} ended with exit code {exit_code}{}: {e}",
                                            reason.map(|r| format!(" ({r})")).unwrap_or_default()
                                        ));
                                        r
                                    }
                                };
                                r.pod = Some(pod_name);
                                r.exit_code = Some(exit_code);
                                Progress::Done(Box::new(r))
                            }
                        };
                        progress.insert(ns, next);
                    }
                }
                Err(e) if is_forbidden(&e) => {
                    fatal = Some(format!("cannot list the probe pods: {}", describe(&e)));
                    break;
                }
                Err(e) => last_error = Some(describe(&e)),
            }
            if progress.values().all(|p| matches!(p, Progress::Done(_))) {
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                timed_out = true;
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(deadline.min(now + config.poll_interval)) => {}
                _ = cancel.wait_for(|c| *c) => interrupted = true,
            }
        }

        // 4. Whatever is still waiting: timeout, error or cancelled, with what was last seen.
        for (ns, p) in progress {
            let job = &created[&ns];
            let verdicts = prediction.verdicts.get(&ns).map(Vec::as_slice);
            let r = match p {
                Progress::Done(r) => *r,
                Progress::Waiting(seen) => {
                    let mut r = self.result(&ns, job, verdicts, None, None);
                    let (outcome, mut detail) = if let Some(f) = &fatal {
                        (Outcome::Error, f.clone())
                    } else if interrupted && !timed_out {
                        (
                            Outcome::Cancelled,
                            "cancelled before the probe's result came".to_owned(),
                        )
                    } else {
                        (
                            Outcome::Timeout,
                            format!(
                                "deadline of {} reached",
                                humantime::format_duration(config.deadline)
                            ),
                        )
                    };
                    match &seen {
                        Some((pod, what)) => {
                            detail.push_str(&format!(": pod {pod} is {what}"));
                            r.pod = Some(pod.clone());
                        }
                        None if outcome == Outcome::Timeout => {
                            detail.push_str(&format!(
                                ": no pod of Job {}/{} was seen{}",
                                ns,
                                job.name,
                                self.job_conditions(&ns, &job.name).await
                            ));
                        }
                        None => {}
                    }
                    if let Some(e) = &last_error {
                        detail.push_str(&format!(" (last error listing pods: {e})"));
                    }
                    r.outcome = outcome;
                    r.detail = Some(detail);
                    r
                }
            };
            results.insert(ns, r);
        }
        if let Some(f) = fatal {
            errors.push(f);
        }
        interrupted |= *cancel.borrow();

        let mut report = VerifyReport {
            run_id: self.run_id.to_owned(),
            image: config.image.clone(),
            cloud: config.cloud,
            targets: config.targets.clone(),
            engine: prediction.engine,
            engine_detected: prediction.engine_detected,
            engine_decision: prediction.engine_decision,
            as_workload: config.as_workload.as_ref().map(ToString::to_string),
            deadline_seconds: config.deadline.as_secs_f64(),
            namespaces: results.into_values().collect(),
            skipped,
            errors,
            interrupted,
            cleanup: Cleanup::default(),
            summary: Summary::default(),
            status: Status::Incomplete,
        };
        report.finish();
        report
    }

    /// The result of a namespace whose probe pod ran (or not: `observed` `None`); `pod`,
    /// when seen, gives its addresses (whether the IPv6 targets apply).
    fn result(
        &self,
        ns: &str,
        job: &Created,
        verdicts: Option<&[Predicted]>,
        pod: Option<&Pod>,
        observed: Option<&ProbeResult>,
    ) -> NamespaceResult {
        let pod_ips = pod.map(crate::pod::pod_addresses).unwrap_or_default();
        let pod_ipv6 = PodIpv6::of_addresses(&pod_ips);
        NamespaceResult {
            namespace: ns.to_owned(),
            outcome: Outcome::Observed,
            job: Some(job.name.clone()),
            pod: None,
            detail: None,
            exit_code: None,
            pod_ips,
            sensitive: observed.is_some_and(|o| o.sensitive),
            reachable: observed.map(|o| o.reachable.clone()).unwrap_or_default(),
            targets: compare::compare_all(
                self.config.cloud,
                &self.config.targets,
                verdicts,
                observed,
                pod_ipv6,
            ),
        }
    }

    /// The result of a namespace that has no Job.
    fn unresolved(&self, ns: &str, outcome: Outcome, detail: String) -> NamespaceResult {
        NamespaceResult {
            namespace: ns.to_owned(),
            outcome,
            job: None,
            pod: None,
            detail: Some(detail),
            exit_code: None,
            pod_ips: Vec::new(),
            sensitive: false,
            reachable: Vec::new(),
            targets: compare::compare_all(
                self.config.cloud,
                &self.config.targets,
                None,
                None,
                PodIpv6::Unknown,
            ),
        }
    }

    /// The run's pods in these namespaces (cluster-wide when every namespace is probed).
    async fn list_pods(&self, namespaces: &[&String]) -> Result<Vec<Pod>, kube::Error> {
        let params = ListParams::default().labels(&format!("{}={}", job::RUN_LABEL, self.run_id));
        if self.all {
            return Ok(Api::<Pod>::all(self.client.clone())
                .list(&params)
                .await?
                .items);
        }
        let owned: Vec<String> = namespaces.iter().map(|ns| (*ns).clone()).collect();
        let lists: Vec<Result<Vec<Pod>, kube::Error>> = stream::iter(owned)
            .map(|ns| {
                let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
                let params = params.clone();
                async move { api.list(&params).await.map(|l| l.items) }
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        let mut pods = Vec::new();
        for l in lists {
            pods.extend(l?);
        }
        Ok(pods)
    }

    /// `; Job conditions: Failed (DeadlineExceeded: ...)`, when the Job has some and may
    /// be read; empty otherwise.
    async fn job_conditions(&self, ns: &str, name: &str) -> String {
        let api: Api<Job> = Api::namespaced(self.client.clone(), ns);
        let Ok(Ok(job)) = tokio::time::timeout(CLEANUP_REQUEST_TIMEOUT, api.get(name)).await else {
            return String::new();
        };
        let conditions: Vec<String> = job
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .into_iter()
            .filter(|c| c.status == "True")
            .map(|c| {
                let mut s = c.type_;
                if let Some(r) = c.reason {
                    s.push_str(&format!(" ({r}"));
                    if let Some(m) = c.message {
                        s.push_str(&format!(": {m}"));
                    }
                    s.push(')');
                }
                s
            })
            .collect();
        if conditions.is_empty() {
            " (is a job controller and a kubelet running it? check the Job's events)".to_owned()
        } else {
            format!("; Job conditions: {}", conditions.join(", "))
        }
    }

    /// Deletes every Job a create was sent for (Background propagation), then the run's
    /// pods (listed by the run label, plus those seen); a pod the run may not delete is
    /// left to the garbage collector.
    async fn cleanup(&self) -> Cleanup {
        let (attempted, seen) = {
            let t = lock(self.tracker);
            (t.attempted.clone(), t.pods.clone())
        };
        let mut cleanup = Cleanup::default();
        if attempted.is_empty() {
            return cleanup;
        }
        let name = job::job_name(self.run_id);
        let deletions: Vec<(String, Result<(), String>)> = stream::iter(attempted.iter().cloned())
            .map(|ns| {
                let api: Api<Job> = Api::namespaced(self.client.clone(), &ns);
                let name = name.clone();
                async move {
                    let result = match tokio::time::timeout(
                        CLEANUP_REQUEST_TIMEOUT,
                        api.delete(&name, &DeleteParams::background()),
                    )
                    .await
                    {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err(e)) if is_not_found(&e) => Err(String::new()),
                        Ok(Err(e)) => Err(describe(&e)),
                        Err(_) => Err("no answer in time".to_owned()),
                    };
                    (format!("{ns}/{name}"), result)
                }
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        for (id, r) in deletions {
            match r {
                Ok(()) => cleanup.jobs_deleted.push(id),
                Err(e) if e.is_empty() => {}
                Err(e) => cleanup.errors.push(format!("cannot delete Job {id}: {e}")),
            }
        }
        // The pods: those listed now by the run label, and those seen while waiting.
        let mut pods = seen;
        let namespaces: Vec<&String> = attempted.iter().collect();
        if let Ok(Ok(listed)) =
            tokio::time::timeout(CLEANUP_REQUEST_TIMEOUT, self.list_pods(&namespaces)).await
        {
            for p in listed {
                if attempted.contains(&p.namespace().unwrap_or_default()) {
                    pods.insert((p.namespace().unwrap_or_default(), p.name_any()));
                }
            }
        }
        let deletions: Vec<(String, Result<(), kube::Error>, bool)> = stream::iter(pods)
            .map(|(ns, pod)| {
                let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
                async move {
                    let r = tokio::time::timeout(
                        CLEANUP_REQUEST_TIMEOUT,
                        api.delete(&pod, &DeleteParams::background()),
                    )
                    .await;
                    let id = format!("{ns}/{pod}");
                    match r {
                        Ok(r) => (id, r.map(|_| ()), false),
                        Err(_) => (id, Ok(()), true),
                    }
                }
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        for (id, r, timed_out) in deletions {
            match r {
                _ if timed_out => cleanup
                    .errors
                    .push(format!("cannot delete pod {id}: no answer in time")),
                Ok(()) => cleanup.pods_deleted.push(id),
                Err(e) if is_not_found(&e) => {}
                Err(e) if is_forbidden(&e) => cleanup.pods_left_to_garbage_collector.push(id),
                Err(e) => cleanup
                    .errors
                    .push(format!("cannot delete pod {id}: {}", describe(&e))),
            }
        }
        cleanup.jobs_deleted.sort();
        cleanup.pods_deleted.sort();
        cleanup.pods_left_to_garbage_collector.sort();
        cleanup
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_are_short_label_values_and_differ() {
        let a = new_run_id();
        let b = new_run_id();
        assert_eq!(a.len(), 10);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        );
        assert_ne!(a, b);
    }

    #[test]
    fn config_checks() {
        let mut c = VerifyConfig::new(Namespaces::All);
        assert!(c.check().is_ok());
        c.targets = vec!["10.0.0.1:443".parse().unwrap()];
        assert!(
            c.check()
                .unwrap_err()
                .to_string()
                .contains("cannot observe 10.0.0.1:443/TCP")
        );
        // AWS and GCP: the metadata service on 169.254.169.254:80 is what the probe
        // walks, its IPv6 address (and AWS's Pod Identity agent) what it checks over
        // TCP; WireServer is no target there, the other cloud's IPv6 address neither,
        // and ECS task metadata is audited only.
        use imdsguard_core::target::{
            AWS_IMDS_IPV6, AWS_POD_IDENTITY, AWS_POD_IDENTITY_IPV6, GCP_METADATA_IPV6, IMDS,
        };
        for (cloud, targets, others) in [
            (
                Cloud::Aws,
                vec![IMDS, AWS_IMDS_IPV6],
                ["168.63.129.16:80", "[fd20:ce::254]:80", "169.254.170.2:80"],
            ),
            (
                Cloud::Gcp,
                vec![IMDS, GCP_METADATA_IPV6],
                [
                    "168.63.129.16:80",
                    "[fd00:ec2::254]:80",
                    "169.254.170.23:80",
                ],
            ),
        ] {
            let c = VerifyConfig::new(Namespaces::All).for_cloud(cloud);
            assert_eq!(c.targets, targets, "{cloud}");
            assert!(c.check().is_ok());
            // The Pod Identity agent is verifiable when named, not checked by default.
            let pod_identity = [AWS_POD_IDENTITY, AWS_POD_IDENTITY_IPV6];
            assert_eq!(
                verifiable_targets(cloud)
                    .iter()
                    .filter(|t| pod_identity.contains(t))
                    .count(),
                if cloud == Cloud::Aws { 2 } else { 0 },
                "{cloud}"
            );
            let mut named = c.clone();
            named.targets.extend(pod_identity);
            assert_eq!(named.check().is_ok(), cloud == Cloud::Aws, "{cloud}");
            for other in others {
                let mut c = c.clone();
                c.targets = vec![other.parse().unwrap()];
                let e = c.check().unwrap_err().to_string();
                assert!(
                    e.contains("cannot observe")
                        && e.contains(&format!("verify --cloud {cloud}"))
                        && e.contains("169.254.169.254:80/TCP"),
                    "{e}"
                );
            }
        }
        assert_eq!(verifiable_targets(Cloud::Azure), Cloud::Azure.targets());
        let mut c = VerifyConfig::new(Namespaces::All);
        c.as_workload = Some("shop/deploy/web".parse().unwrap());
        assert!(c.check().unwrap_err().to_string().contains("-n shop"));
        c.namespaces = Namespaces::Only(vec!["shop".into()]);
        assert!(c.check().is_ok());
        c.deadline = Duration::ZERO;
        assert!(c.check().is_err());
        assert!(default_image().starts_with("ghcr.io/imdsguard/imdsguard:"));
    }

    /// A finished report over `namespaces`, each observed with these target results.
    fn report(namespaces: Vec<Vec<TargetResult>>) -> VerifyReport {
        let decision = compare::predict(
            &Loaded::default(),
            &[],
            &[],
            Some(EngineSettings::new(Engine::Generic)),
            &ClusterSignals::default(),
        );
        let mut r = VerifyReport {
            run_id: "r".into(),
            image: "i".into(),
            cloud: Cloud::Aws,
            targets: Vec::new(),
            engine: decision.engine,
            engine_detected: false,
            engine_decision: decision.engine_decision,
            as_workload: None,
            deadline_seconds: 1.0,
            namespaces: namespaces
                .into_iter()
                .enumerate()
                .map(|(i, targets)| NamespaceResult {
                    namespace: format!("ns{i}"),
                    outcome: Outcome::Observed,
                    job: None,
                    pod: None,
                    detail: None,
                    exit_code: Some(0),
                    pod_ips: Vec::new(),
                    sensitive: false,
                    reachable: Vec::new(),
                    targets,
                })
                .collect(),
            skipped: Vec::new(),
            errors: Vec::new(),
            interrupted: false,
            cleanup: Cleanup::default(),
            summary: Summary::default(),
            status: Status::Incomplete,
        };
        r.finish();
        r
    }

    /// Targets not applicable are counted apart and count towards no exit status: not
    /// 1, not 2 (even without an answer). A target the probe reached is compared as
    /// ever, whatever the pod's status says: a connection made is evidence.
    #[test]
    fn targets_not_applicable_count_towards_no_exit_status() {
        use imdsguard_core::target::{AWS_IMDS_IPV6, IMDS};
        let predicted = Predicted {
            reachable: true,
            policy_allowed: true,
            reason: "allowed".into(),
        };
        let denied = Predicted {
            reachable: false,
            policy_allowed: false,
            reason: "denied".into(),
        };
        let saw = |endpoint, address: &str, class: &str| {
            EndpointResult::from_steps(endpoint, address, [(class, None, false)])
        };
        let v4 = saw(ProbeEndpoint::Imds, "169.254.169.254:80", "blocked-timeout");
        let v6_refused = saw(
            ProbeEndpoint::ImdsIpv6,
            "[fd00:ec2::254]:80",
            "blocked-refused",
        );
        let v6_reached = saw(ProbeEndpoint::ImdsIpv6, "[fd00:ec2::254]:80", "reachable");
        let no_ipv6 = PodIpv6::No;
        let r = report(vec![
            vec![
                compare::compare(IMDS, Some(&denied), Some(&v4), no_ipv6),
                compare::compare(AWS_IMDS_IPV6, Some(&predicted), Some(&v6_refused), no_ipv6),
            ],
            vec![
                compare::compare(IMDS, Some(&denied), Some(&v4), no_ipv6),
                compare::compare(AWS_IMDS_IPV6, Some(&predicted), Some(&v6_reached), no_ipv6),
            ],
            vec![
                compare::compare(IMDS, Some(&denied), Some(&v4), no_ipv6),
                compare::compare(AWS_IMDS_IPV6, Some(&predicted), None, no_ipv6),
            ],
        ]);
        let s = &r.summary;
        assert_eq!(
            (
                s.observed,
                s.agree,
                s.high,
                s.medium,
                s.reached,
                s.unknown,
                s.not_applicable
            ),
            (3, 3, 0, 0, 1, 0, 2),
            "{s:#?}"
        );
        // The reached one: exit 1.
        assert_eq!(r.status, Status::Finding);
        assert_eq!(
            r.namespaces[1].targets[1].agreement,
            compare::Agreement::Agree
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["summary"]["not_applicable"], 2);
        assert_eq!(
            json["namespaces"][0]["targets"][1]["agreement"],
            "not-applicable"
        );

        // With IPv6, the same observation is a medium disagreement: exit 1.
        let r = report(vec![vec![
            compare::compare(IMDS, Some(&denied), Some(&v4), PodIpv6::Yes),
            compare::compare(
                AWS_IMDS_IPV6,
                Some(&predicted),
                Some(&v6_refused),
                PodIpv6::Yes,
            ),
        ]]);
        assert_eq!(
            (r.summary.medium, r.summary.not_applicable, r.summary.agree),
            (1, 0, 0)
        );
        assert_eq!(r.status, Status::Finding);
    }
}
