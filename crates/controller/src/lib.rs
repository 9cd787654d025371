//! imdsguard-controller: `imdsguard controller`, which keeps the policies generated for
//! the `MetadataAccessPolicy` objects (`imdsguard_kube::crd`) in every namespace, with
//! leader election on a `coordination.k8s.io` Lease. See `docs/controller.md`.
//!
//! [`start`] takes a [`ControllerConfig`] and gives a [`ControllerHandle`]:
//!
//! - the caches ([`cache`]): watchers and reflector stores of the policy objects,
//!   namespaces, pods and policy kinds, trimmed to the fields read;
//! - the Lease (kube-lease-manager): only the holder writes; a replica that loses it (or
//!   cannot renew it) stops writing at once; a clean shutdown releases it;
//! - the reconcile loop ([`reconcile`]): woken by any cache change (bursts coalesced
//!   by a debounce), by the resync period and by becoming leader; what it writes is
//!   decided by the core (`core::generate`, `core::audit`), compared with the cache
//!   ([`own`]) so that nothing is written when nothing changed;
//! - the admin listener (`/metrics`, `/healthz`, `/readyz`) on `imdsguard-serve`.

pub mod cache;
pub mod metrics;
pub mod own;
pub mod reconcile;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use imdsguard_core::engine::Engine;
use imdsguard_core::engine_detect::{ClusterSignals, decide};
use imdsguard_core::generate::OutputEngine;
use imdsguard_core::target::{Cloud, Target};
use imdsguard_kube::live::{Connection, engine_signals};
use imdsguard_serve::admin::{AdminSource, Readiness};
use kube::Client;
use kube::runtime::events::{Recorder, Reporter};
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

pub use metrics::Metrics;
pub use reconcile::{Conflict, Outcome};

/// The Lease's name when none is given.
pub const DEFAULT_LEASE_NAME: &str = "imdsguard-controller";
/// The admin listener when none is given (the agent's is 9170).
pub const DEFAULT_METRICS_LISTEN: &str = "0.0.0.0:9171";
/// The namespaces left alone when none is given.
pub const DEFAULT_EXCLUDED: &[&str] = &["kube-system"];
/// The resync period when none is given.
pub const DEFAULT_RESYNC: Duration = Duration::from_secs(300);
/// How long the cache must be quiet before a reconcile (bursts coalesce).
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(200);
/// The longest a burst delays a reconcile.
pub const MAX_DEBOUNCE: Duration = Duration::from_secs(2);
/// Writes in flight at once.
pub const DEFAULT_CONCURRENCY: usize = 16;

/// What the controller does.
#[derive(Clone)]
pub struct ControllerConfig {
    /// The API server.
    pub client: Client,
    /// The output engine; `None`: decided from the cluster as `audit` does.
    pub engine: Option<OutputEngine>,
    /// Namespaces where nothing is written (nor deleted).
    pub exclude_namespaces: Vec<String>,
    /// The Lease.
    pub lease_name: String,
    /// Its namespace.
    pub lease_namespace: String,
    /// This replica's holder identity.
    pub identity: String,
    /// How long a Lease lasts without renewal.
    pub lease_duration: Duration,
    /// How long before expiry the holder renews.
    pub lease_grace: Duration,
    /// The admin listener (`/metrics`, `/healthz`, `/readyz`); `None`: none.
    pub metrics_listen: Option<SocketAddr>,
    /// Full reconcile at least this often.
    pub resync: Duration,
    /// Quiet time before a reconcile.
    pub debounce: Duration,
    /// Writes in flight at once.
    pub concurrency: usize,
    /// The cloud whose metadata endpoints are protected (`--cloud`): objects whose
    /// `spec.cloud` names another are refused (status `Ready` false, reason
    /// `OtherCloud`). Default Azure.
    pub cloud: Cloud,
    /// The targets denied: the cloud's ([`Cloud::targets`], both families), as
    /// [`ControllerConfig::for_cloud`] sets them.
    pub targets: Vec<Target>,
}

impl std::fmt::Debug for ControllerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControllerConfig")
            .field("engine", &self.engine)
            .field("exclude_namespaces", &self.exclude_namespaces)
            .field("lease_name", &self.lease_name)
            .field("lease_namespace", &self.lease_namespace)
            .field("identity", &self.identity)
            .field("metrics_listen", &self.metrics_listen)
            .field("resync", &self.resync)
            .field("cloud", &self.cloud)
            .finish_non_exhaustive()
    }
}

impl ControllerConfig {
    /// Every default: engine detected, `kube-system` excluded, Lease
    /// `imdsguard-controller` in `default`, a random identity, no admin listener,
    /// Azure's targets.
    pub fn new(client: Client, identity: impl Into<String>) -> ControllerConfig {
        ControllerConfig {
            client,
            engine: None,
            exclude_namespaces: DEFAULT_EXCLUDED.iter().map(|s| s.to_string()).collect(),
            lease_name: DEFAULT_LEASE_NAME.into(),
            lease_namespace: "default".into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            lease_grace: Duration::from_secs(5),
            metrics_listen: None,
            resync: DEFAULT_RESYNC,
            debounce: DEFAULT_DEBOUNCE,
            concurrency: DEFAULT_CONCURRENCY,
            cloud: Cloud::Azure,
            targets: Cloud::Azure.targets(),
        }
    }

    /// The same for `cloud`: its objects only, its targets (IPv6 ones included).
    pub fn for_cloud(mut self, cloud: Cloud) -> ControllerConfig {
        self.cloud = cloud;
        self.targets = cloud.targets();
        self
    }
}

/// Why the controller could not start.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// The engine could not be decided.
    #[error("cannot detect the policy engine (give --engine): {0}")]
    Detect(#[source] imdsguard_kube::live::LiveError),
    /// The Lease could not be created or read.
    #[error(
        "cannot use the Lease {namespace}/{name} (it needs get, create, update and patch on leases in {namespace}): {source}"
    )]
    Lease {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// Why.
        #[source]
        source: kube_lease_manager::LeaseManagerError,
    },
    /// The admin listener could not be bound.
    #[error("cannot listen on {addr} for /metrics: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The output engine for the enforcing engine the core decided: Calico's and Cilium's
/// own kinds where they run, NetworkPolicy everywhere else (Azure NPM,
/// kube-network-policies, OVN-Kubernetes, none detected).
pub fn output_engine_for(engine: Engine) -> OutputEngine {
    match engine {
        Engine::Calico => OutputEngine::Calico,
        Engine::Cilium => OutputEngine::Cilium,
        _ => OutputEngine::NetworkPolicy,
    }
}

/// Decides the engine from the cluster's DaemonSets and served resources
/// (`imdsguard_kube::live::engine_signals`, `core::engine_detect::decide`).
pub async fn detect_engine(client: &Client) -> Result<(OutputEngine, String), ControllerError> {
    let conn = Connection::from_client(client.clone(), "in-cluster", "");
    let s = engine_signals(&conn, 500)
        .await
        .map_err(ControllerError::Detect)?;
    let signals = ClusterSignals {
        daemonsets: s.daemonsets,
        crds: s.crds,
        aks: None,
    };
    let d = decide(None, &signals, &[]);
    Ok((output_engine_for(d.engine), d.how))
}

/// A running controller. Dropping it stops it (the Lease is released in the
/// background); [`ControllerHandle::shutdown`] waits for that.
pub struct ControllerHandle {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    lease: Option<JoinHandle<()>>,
    leader: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
    admin: Option<SocketAddr>,
    engine: OutputEngine,
    last: Arc<Mutex<Option<Outcome>>>,
    synced: Arc<AtomicBool>,
}

impl std::fmt::Debug for ControllerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControllerHandle")
            .field("engine", &self.engine)
            .field("admin", &self.admin)
            .field("leader", &*self.leader.borrow())
            .finish_non_exhaustive()
    }
}

impl ControllerHandle {
    /// Whether this replica holds the Lease.
    pub fn is_leader(&self) -> bool {
        *self.leader.borrow()
    }

    /// Leadership changes.
    pub fn leader(&self) -> watch::Receiver<bool> {
        self.leader.clone()
    }

    /// The metrics.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// The admin listener's address (the real port when `:0` was asked for).
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// The output engine.
    pub fn engine(&self) -> OutputEngine {
        self.engine
    }

    /// What the last reconcile did.
    pub fn last_outcome(&self) -> Option<Outcome> {
        self.last.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether the caches hold their initial lists.
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// Stops writing, releases the Lease and waits for every task.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(l) = self.lease.take() {
            let _ = l.await;
        }
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
    }
}

impl Drop for ControllerHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Starts the controller (see the module docs).
pub async fn start(config: ControllerConfig) -> Result<ControllerHandle, ControllerError> {
    let metrics = Arc::new(Metrics::new());
    let engine = match config.engine {
        Some(e) => e,
        None => {
            let (e, how) = detect_engine(&config.client).await?;
            tracing::info!(engine = %e, how = %how, "policy engine detected");
            e
        }
    };
    let (stop, stop_rx) = watch::channel(false);
    let synced = Arc::new(AtomicBool::new(false));
    let (leader_tx, leader_rx) = watch::channel(false);
    let mut tasks = Vec::new();

    let admin = match config.metrics_listen {
        None => None,
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| ControllerError::Listen { addr, source })?;
            let local = listener.local_addr().ok();
            let m = metrics.clone();
            let s = synced.clone();
            let l = leader_rx.clone();
            let source = AdminSource::new(
                move || m.encode(),
                move || Readiness {
                    ready: if s.load(Ordering::Acquire) {
                        Ok(())
                    } else {
                        Err("the caches are not synced yet".into())
                    },
                    summary: if *l.borrow() {
                        "leader".into()
                    } else {
                        "standby".into()
                    },
                },
            );
            tasks.push(tokio::spawn(imdsguard_serve::admin::serve(
                listener,
                source,
                stop_rx.clone(),
            )));
            local
        }
    };

    // The Lease: built (and created when missing) before anything else runs.
    let lease_err = |source| ControllerError::Lease {
        namespace: config.lease_namespace.clone(),
        name: config.lease_name.clone(),
        source,
    };
    let manager = LeaseManagerBuilder::new(config.client.clone(), &config.lease_name)
        .with_namespace(&config.lease_namespace)
        .with_identity(&config.identity)
        .with_duration(config.lease_duration.as_secs().max(2))
        .with_grace(config.lease_grace.as_secs().max(1))
        .with_field_manager("imdsguard-controller")
        .build()
        .await
        .map_err(lease_err)?;
    let lease = tokio::spawn(lease_loop(
        manager,
        leader_tx,
        stop_rx.clone(),
        metrics.clone(),
    ));

    let changed = Arc::new(Notify::new());
    let (caches, watch_tasks) = cache::start(
        &config.client,
        &reconcile::watched_kinds(engine),
        changed.clone(),
        stop_rx.clone(),
    );
    tasks.extend(watch_tasks);
    let recorder = Recorder::new(
        config.client.clone(),
        Reporter {
            controller: "imdsguard-controller".into(),
            instance: Some(config.identity.clone()),
        },
    );
    let reconciler = reconcile::Reconciler {
        client: config.client.clone(),
        caches,
        engine,
        audit_engine: reconcile::audit_engine(engine),
        cloud: config.cloud,
        targets: config.targets.clone(),
        exclude: config
            .exclude_namespaces
            .iter()
            .filter(|s| !s.is_empty())
            .cloned()
            .collect::<BTreeSet<_>>(),
        concurrency: config.concurrency,
        metrics: metrics.clone(),
        recorder,
        published: Mutex::new(BTreeSet::new()),
    };
    let last = Arc::new(Mutex::new(None));
    tasks.push(tokio::spawn(reconcile_loop(
        reconciler,
        changed,
        leader_rx.clone(),
        stop_rx.clone(),
        config.resync,
        config.debounce,
        last.clone(),
        synced.clone(),
    )));
    tracing::info!(engine = %engine, identity = %config.identity, lease = %format!("{}/{}", config.lease_namespace, config.lease_name), "controller started");
    Ok(ControllerHandle {
        stop,
        tasks,
        lease: Some(lease),
        leader: leader_rx,
        metrics,
        admin,
        engine,
        last,
        synced,
    })
}

/// Holds the Lease while it can: `leader` turns false as soon as a renewal fails or
/// another holder shows up, and on stop the Lease is released.
async fn lease_loop(
    manager: kube_lease_manager::LeaseManager,
    leader: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
) {
    let set = |v: bool| {
        leader.send_replace(v);
        metrics.set_leader(v);
    };
    let mut backoff = false;
    loop {
        tokio::select! {
            biased;
            _ = imdsguard_serve::stopped(&mut stop) => {
                set(false);
                if let Err(e) = manager.release().await {
                    tracing::warn!(error = %e, "cannot release the Lease; it expires on its own");
                }
                return;
            }
            r = manager.changed() => match r {
                Ok(is_leader) => {
                    tracing::info!(leader = is_leader, "leadership changed");
                    set(is_leader);
                }
                Err(e) => {
                    // Cannot tell whether the Lease is still ours: stop writing at once.
                    let was = *leader.borrow();
                    if was {
                        tracing::warn!(error = %e, "lost track of the Lease: writing stops");
                    }
                    set(false);
                    let _ = manager.release().await;
                    backoff = true;
                }
            },
        }
        if std::mem::take(&mut backoff) {
            tokio::select! {
                _ = imdsguard_serve::stopped(&mut stop) => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn reconcile_loop(
    reconciler: reconcile::Reconciler,
    changed: Arc<Notify>,
    mut leader: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
    resync: Duration,
    debounce: Duration,
    last: Arc<Mutex<Option<Outcome>>>,
    synced: Arc<AtomicBool>,
) {
    tokio::select! {
        _ = imdsguard_serve::stopped(&mut stop) => return,
        _ = reconciler.caches.ready() => {}
    }
    synced.store(true, Ordering::Release);
    tracing::info!("caches synced");
    let resync = resync.max(Duration::from_secs(1));
    let mut next_resync = tokio::time::Instant::now() + resync;
    loop {
        // Wait for a reason to reconcile.
        tokio::select! {
            _ = imdsguard_serve::stopped(&mut stop) => return,
            _ = changed.notified() => {}
            r = leader.changed() => if r.is_err() { return },
            _ = tokio::time::sleep_until(next_resync) => {}
        }
        if !*leader.borrow_and_update() {
            continue;
        }
        // Coalesce a burst: wait for `debounce` of quiet, at most MAX_DEBOUNCE.
        let deadline = tokio::time::Instant::now() + MAX_DEBOUNCE;
        loop {
            tokio::select! {
                _ = imdsguard_serve::stopped(&mut stop) => return,
                _ = changed.notified() => {
                    if tokio::time::Instant::now() >= deadline { break }
                }
                _ = tokio::time::sleep(debounce) => break,
            }
        }
        if !*leader.borrow() {
            continue;
        }
        let outcome = reconciler.run(&leader).await;
        tracing::info!(
            desired = outcome.desired,
            applied = outcome.applied,
            deleted = outcome.deleted,
            errors = outcome.errors.len(),
            conflicts = outcome.conflicts.len(),
            "reconciled"
        );
        for e in outcome.errors.iter().take(5) {
            tracing::warn!(error = %e, "reconcile");
        }
        let failed = !outcome.errors.is_empty();
        *last.lock().unwrap_or_else(|e| e.into_inner()) = Some(outcome);
        next_resync = tokio::time::Instant::now() + resync;
        if failed {
            // Retry soon: a write failed (or the lease was lost midway).
            next_resync = tokio::time::Instant::now() + Duration::from_secs(2).min(resync);
        }
    }
}
