//! The `MetadataAccessPolicy` objects of the cluster, from a watch: a kube-runtime
//! [`watcher`](kube::runtime::watcher()) (cluster-scoped list and watch) feeding a
//! [`reflector`](kube::runtime::reflector()) store, whose objects are added up by
//! [`combined_rules`] into the core's [`AccessRules`] and published as a
//! [`PolicyState`] on every change (the node agent's rules: its allow set in block mode,
//! the proxy's rules in proxy mode).
//!
//! What the objects mean is the core's ([`MetadataAccessPolicy::access_rules`], the same
//! reader as a rules file); an object the core refuses, or one written for another
//! cloud than the watch's ([`PolicyWatch::start_for`]: the agent's `--cloud`; Azure for
//! [`PolicyWatch::start`]), adds nothing (never widens access) and is listed in
//! [`Policies::refused`] with why. Before the
//! first full list the state is [`PolicyState::Pending`]: nothing is granted by
//! policies (fail closed). When the API answers 404 to the list (the CRD
//! `metadataaccesspolicies.imdsguard.io` is not installed) the state is
//! [`PolicyState::NotInstalled`] (nothing granted either) and the list is retried with
//! backoff, so installing the CRD later is picked up without a restart.

use std::sync::Arc;

use futures::StreamExt;
use imdsguard_core::access::AccessRules;
use imdsguard_core::target::Cloud;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, Store, store::Writer};
use kube::runtime::watcher::{self, Event};
use kube::{Api, ResourceExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::Client;
use crate::crd::{MetadataAccessPolicy, combined_rules};

/// The CRD's name, as the API server knows it.
pub const CRD_NAME: &str = "metadataaccesspolicies.imdsguard.io";

/// One object refused: it adds no rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The object's name.
    pub name: String,
    /// Its `metadata.generation` (which edit was refused).
    pub generation: Option<i64>,
    /// Why: the core's error, naming the rule (`OBJECT/RULE`), or the clouds that
    /// differ.
    pub error: String,
    /// `InvalidRules` or `OtherCloud` ([`crate::crd::Refusal::reason`]).
    pub reason: &'static str,
}

/// The objects as last listed and watched, added up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policies {
    /// Every accepted object's rules, each named `OBJECT/RULE`, in object-name order.
    pub rules: AccessRules,
    /// The names of every object listed (accepted and refused), sorted.
    pub objects: Vec<String>,
    /// The objects whose rules the core refused, sorted by name.
    pub refused: Vec<Refused>,
}

impl Policies {
    /// The objects (as the store holds them) written for `cloud`, added up by
    /// [`combined_rules`]; the others refused.
    pub fn of<'a>(
        cloud: Cloud,
        objects: impl IntoIterator<Item = &'a MetadataAccessPolicy>,
    ) -> Policies {
        let objects: Vec<&MetadataAccessPolicy> = objects.into_iter().collect();
        let (rules, refused) = combined_rules(cloud, objects.iter().copied());
        let mut names: Vec<String> = objects.iter().map(|o| o.name_any()).collect();
        names.sort();
        let mut refused: Vec<Refused> = refused
            .into_iter()
            .map(|(name, e)| Refused {
                generation: objects
                    .iter()
                    .find(|o| o.name_any() == name)
                    .and_then(|o| o.metadata.generation),
                name,
                error: e.to_string(),
                reason: e.reason(),
            })
            .collect();
        refused.sort_by(|a, b| a.name.cmp(&b.name));
        Policies {
            rules,
            objects: names,
            refused,
        }
    }

    /// `N objects (M refused), R rules`.
    pub fn summary(&self) -> String {
        format!(
            "{} MetadataAccessPolicy objects ({} refused), {} rules",
            self.objects.len(),
            self.refused.len(),
            self.rules.len()
        )
    }
}

/// Where the watch stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyState {
    /// Before the first full list: nothing is granted by policies. `last_error`: why
    /// the last list failed, if it did (retried with backoff).
    Pending {
        /// The last error of the API, if any.
        last_error: Option<String>,
    },
    /// The API answered 404 to the list: the CRD is not installed. Nothing is granted
    /// by policies; the list is retried with backoff.
    NotInstalled {
        /// The API's answer.
        message: String,
    },
    /// Listed: the objects, added up.
    Synced(Arc<Policies>),
}

impl PolicyState {
    /// The rules in force from the objects: none unless synced.
    pub fn rules(&self) -> Option<&AccessRules> {
        match self {
            PolicyState::Synced(p) => Some(&p.rules),
            _ => None,
        }
    }

    /// Whether the API has answered (synced, or the CRD reported missing).
    pub fn answered(&self) -> bool {
        !matches!(self, PolicyState::Pending { .. })
    }

    /// For `/readyz` and the log: why the policies are not in force, or `Ok` with a
    /// summary.
    pub fn readiness(&self) -> Result<String, String> {
        match self {
            PolicyState::Synced(p) => Ok(p.summary()),
            PolicyState::Pending { last_error: None } => {
                Err("MetadataAccessPolicy objects not synced yet (nothing is allowlisted by them until the first list)".into())
            }
            PolicyState::Pending {
                last_error: Some(e),
            } => Err(format!(
                "MetadataAccessPolicy objects not synced yet (nothing is allowlisted by them until the first list; the last list failed: {e})"
            )),
            PolicyState::NotInstalled { message } => Err(format!(
                "the MetadataAccessPolicy CRD ({CRD_NAME}) is not installed (the API answered 404: {message}): nothing is allowlisted by policies; install deploy/crds/{} (`imdsguard crd | kubectl apply -f -`), or give --rules FILE",
                crate::crd::CRD_FILE
            )),
        }
    }
}

/// A running watch of the `MetadataAccessPolicy` objects. Dropping it stops the watch.
#[derive(Debug)]
pub struct PolicyWatch {
    rx: watch::Receiver<PolicyState>,
    store: Store<MetadataAccessPolicy>,
    task: JoinHandle<()>,
}

impl Drop for PolicyWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl PolicyWatch {
    /// Starts watching every `MetadataAccessPolicy` (cluster-scoped list and watch;
    /// needs a tokio runtime). Each change (an object created, edited, deleted) is
    /// published at once; API errors are logged and retried with kube-runtime's default
    /// backoff (0.8 s doubling to 30 s), the last state staying meanwhile (but a 404
    /// on the list, the CRD gone, is [`PolicyState::NotInstalled`]).
    /// Objects of another cloud than Azure are refused: [`PolicyWatch::start_for`]
    /// takes the cloud.
    pub fn start(client: Client) -> PolicyWatch {
        PolicyWatch::start_for(client, Cloud::Azure)
    }

    /// [`PolicyWatch::start`] for `cloud` (the agent's `--cloud`): objects whose
    /// `spec.cloud` names another cloud are refused (listed in [`Policies::refused`],
    /// reason `OtherCloud`), and the rules published are `cloud`'s.
    pub fn start_for(client: Client, cloud: Cloud) -> PolicyWatch {
        let (tx, rx) = watch::channel(PolicyState::Pending { last_error: None });
        let api: Api<MetadataAccessPolicy> = Api::all(client);
        let (store, writer) = reflector::store();
        let task = tokio::spawn(run(cloud, api, writer, store.clone(), tx));
        PolicyWatch { rx, store, task }
    }

    /// A receiver of the states: [`PolicyState::Pending`] until the first answer, then
    /// every change.
    pub fn subscribe(&self) -> watch::Receiver<PolicyState> {
        self.rx.clone()
    }

    /// The latest state.
    pub fn current(&self) -> PolicyState {
        self.rx.borrow().clone()
    }

    /// Waits until the API has answered (synced, or the CRD reported missing); `None`
    /// if the watch ended first.
    pub async fn answered(&mut self) -> Option<PolicyState> {
        self.rx
            .wait_for(PolicyState::answered)
            .await
            .ok()
            .map(|s| s.clone())
    }

    /// The reflector's store (objects trimmed of managed fields and status).
    pub fn store(&self) -> &Store<MetadataAccessPolicy> {
        &self.store
    }
}

/// What the store keeps of an object: its spec and the metadata the agent names it by
/// (no managed fields, annotations or status).
fn trim(o: &mut MetadataAccessPolicy) {
    o.managed_fields_mut().clear();
    o.annotations_mut().clear();
    o.status = None;
}

/// Whether a watcher error is the API's 404 for the list (the kind is unknown: no CRD).
fn not_found(e: &watcher::Error) -> Option<String> {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
            if s.code == 404 || s.is_not_found() =>
        {
            Some(if s.message.is_empty() {
                "404 Not Found".to_owned()
            } else {
                s.message.clone()
            })
        }
        _ => None,
    }
}

async fn run(
    cloud: Cloud,
    api: Api<MetadataAccessPolicy>,
    writer: Writer<MetadataAccessPolicy>,
    store: Store<MetadataAccessPolicy>,
    tx: watch::Sender<PolicyState>,
) {
    let mut stream = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .modify(trim)
        .reflect(writer)
        .boxed();
    let mut listed = false;
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::InitDone) => {
                listed = true;
                publish(cloud, &tx, &store);
            }
            Ok(Event::Apply(_) | Event::Delete(_)) if listed => publish(cloud, &tx, &store),
            // A (re)list in progress: the store keeps the previous list meanwhile.
            Ok(_) => {}
            Err(e) => {
                if let Some(message) = not_found(&e) {
                    listed = false;
                    let state = PolicyState::NotInstalled { message };
                    let changed = tx.send_if_modified(|old| {
                        if *old == state {
                            false
                        } else {
                            *old = state.clone();
                            true
                        }
                    });
                    if changed {
                        tracing::error!(
                            crd = CRD_NAME,
                            "the MetadataAccessPolicy CRD is not installed (404 on the list): nothing is allowlisted by policies; retrying"
                        );
                    }
                } else {
                    tracing::warn!(error = %e, "MetadataAccessPolicy watch: retrying");
                    tx.send_if_modified(|old| match old {
                        PolicyState::Pending { last_error } => {
                            *last_error = Some(e.to_string());
                            true
                        }
                        _ => false,
                    });
                }
            }
        }
        if tx.is_closed() {
            return;
        }
    }
}

/// Adds up the store's objects and publishes them if they changed.
fn publish(cloud: Cloud, tx: &watch::Sender<PolicyState>, store: &Store<MetadataAccessPolicy>) {
    let state = store.state();
    let policies = Policies::of(cloud, state.iter().map(|o| o.as_ref()));
    tx.send_if_modified(|old| match old {
        PolicyState::Synced(p) if **p == policies => false,
        _ => {
            tracing::debug!(summary = %policies.summary(), "MetadataAccessPolicy objects changed");
            *old = PolicyState::Synced(Arc::new(policies));
            true
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::MetadataAccessPolicySpec;

    fn policy(name: &str, generation: i64, rules: serde_json::Value) -> MetadataAccessPolicy {
        let spec: MetadataAccessPolicySpec =
            serde_json::from_value(serde_json::json!({ "rules": rules })).unwrap();
        let mut p = MetadataAccessPolicy::new(name, spec);
        p.metadata.generation = Some(generation);
        p
    }

    #[test]
    fn objects_add_up_and_a_refused_one_is_listed_with_its_generation() {
        let good = policy(
            "good",
            1,
            serde_json::json!([{"name": "r", "subjects": [{"namespace": "a"}], "paths": ["/metadata/instance/compute"]}]),
        );
        let bad = policy(
            "bad",
            3,
            serde_json::json!([{"name": "r", "subjects": [{"namespace": "a"}], "paths": ["/nope"]}]),
        );
        let p = Policies::of(Cloud::Azure, [&good, &bad]);
        assert_eq!(p.objects, ["bad", "good"]);
        assert_eq!(p.rules.len(), 1);
        assert_eq!(&*p.rules.rules()[0].name, "good/r");
        assert_eq!(p.refused.len(), 1);
        assert_eq!(p.refused[0].name, "bad");
        assert_eq!(p.refused[0].generation, Some(3));
        assert!(p.refused[0].error.contains("bad/r"), "{:?}", p.refused);
        assert_eq!(p.refused[0].reason, "InvalidRules");
        assert_eq!(
            p.summary(),
            "2 MetadataAccessPolicy objects (1 refused), 1 rules"
        );
    }

    #[test]
    fn objects_of_another_cloud_than_the_watchs_are_refused_as_other_cloud() {
        let azure = policy(
            "azure",
            1,
            serde_json::json!([{"name": "r", "subjects": [{"namespace": "a"}], "paths": ["/metadata/instance/compute"]}]),
        );
        let spec: MetadataAccessPolicySpec = serde_json::from_value(serde_json::json!({
            "cloud": "gcp",
            "rules": [{"name": "zone", "subjects": [{"namespace": "a"}], "paths": ["/computeMetadata/v1/instance/zone"]}]
        }))
        .unwrap();
        let mut gke = MetadataAccessPolicy::new("gke", spec);
        gke.metadata.generation = Some(2);
        let p = Policies::of(Cloud::Gcp, [&azure, &gke]);
        assert_eq!(p.rules.cloud(), Cloud::Gcp);
        assert_eq!(p.rules.len(), 1);
        assert_eq!(&*p.rules.rules()[0].name, "gke/zone");
        assert_eq!(p.refused.len(), 1);
        assert_eq!(
            (
                p.refused[0].name.as_str(),
                p.refused[0].reason,
                p.refused[0].generation
            ),
            ("azure", "OtherCloud", Some(1))
        );
        assert!(
            p.refused[0].error.contains("--cloud gcp"),
            "{}",
            p.refused[0].error
        );
        // The Azure watch (PolicyWatch::start) refuses the GKE object the same way.
        let p = Policies::of(Cloud::Azure, [&azure, &gke]);
        assert_eq!(p.refused[0].name, "gke");
        assert_eq!(p.refused[0].reason, "OtherCloud");
    }

    #[test]
    fn only_a_synced_state_grants_rules_and_each_state_says_why() {
        let pending = PolicyState::Pending { last_error: None };
        assert!(pending.rules().is_none() && !pending.answered());
        assert!(pending.readiness().unwrap_err().contains("not synced yet"));
        let failing = PolicyState::Pending {
            last_error: Some("403 forbidden".into()),
        };
        assert!(failing.readiness().unwrap_err().contains("403 forbidden"));
        let missing = PolicyState::NotInstalled {
            message: "the server could not find the requested resource".into(),
        };
        assert!(missing.rules().is_none() && missing.answered());
        let why = missing.readiness().unwrap_err();
        assert!(
            why.contains(CRD_NAME) && why.contains("not installed"),
            "{why}"
        );
        let synced = PolicyState::Synced(Arc::new(Policies::default()));
        assert!(synced.rules().is_some_and(AccessRules::is_empty));
        assert!(
            synced
                .readiness()
                .unwrap()
                .contains("0 MetadataAccessPolicy")
        );
    }

    #[test]
    fn a_404_on_the_list_is_a_missing_crd_and_other_errors_are_not() {
        let status = |code: u16| kube::core::Status {
            code,
            message: "the server could not find the requested resource".into(),
            ..Default::default()
        };
        let e = watcher::Error::InitialListFailed(kube::Error::Api(status(404).boxed()));
        assert_eq!(
            not_found(&e).as_deref(),
            Some("the server could not find the requested resource")
        );
        let e = watcher::Error::InitialListFailed(kube::Error::Api(status(403).boxed()));
        assert_eq!(not_found(&e), None);
        let e = watcher::Error::WatchError(status(404).boxed());
        assert_eq!(not_found(&e), None, "a watch event error is not the list's");
    }
}
