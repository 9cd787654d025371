//! Cluster plan and object generation.
//!
//! Generation happens in two steps:
//!
//! 1. a compact *plan* is built for every namespace (workload names, uids,
//!    labels, replica counts, ...), using one PRNG stream per namespace;
//! 2. the objects are written kind by kind (like `kubectl get
//!    namespaces,all,networkpolicies,configmaps -A`), each object being built
//!    as a small tree, written, and dropped immediately.
//!
//! Everything is a pure function of the [`Config`], so the output is
//! byte-identical for a given seed.

use std::collections::{BTreeMap, HashSet};
use std::io::{self, Write};

use crate::emit::{Key, Obj, Sink, V, arr, write_json_compact};
use crate::rng::Rng;

/// How much realistic noise surrounds the fields the audit reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Noise {
    /// Calibrated so that the default cluster (5,000 namespaces, 150,000
    /// pods, 20,000 policies) is about 120 MB of YAML: objects keep uids,
    /// resourceVersions, timestamps, owner references, one container with
    /// image and ports, `status.phase` and `podIP`, and a few controller
    /// fields; env lists, resources, conditions, `last-applied-configuration`
    /// annotations, old ReplicaSet revisions, sidecars, Services and
    /// ConfigMaps are rare or absent.
    #[default]
    Typical,
    /// Heavier objects closer to a live `kubectl get -o yaml` dump (about
    /// 2.2 times the size of `typical`).
    Full,
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct Config {
    /// Exact number of Namespace objects.
    pub namespaces: usize,
    /// Exact number of Pod objects.
    pub pods: usize,
    /// Exact number of NetworkPolicy objects.
    pub policies: usize,
    /// PRNG seed.
    pub seed: u64,
    /// Amount of noise around the audited fields.
    pub noise: Noise,
}

/// Counts of what was written.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    /// Objects written per kind.
    pub kinds: BTreeMap<&'static str, usize>,
    /// Pods with `spec.hostNetwork: true`.
    pub host_network_pods: usize,
    /// DaemonSets with `spec.template.spec.hostNetwork: true`.
    pub host_network_daemonsets: usize,
}

impl Stats {
    /// Total number of objects written.
    pub fn total(&self) -> usize {
        self.kinds.values().sum()
    }
}

// PRNG streams.
const S_WEIGHTS: u64 = 1;
const S_PLAN: u64 = 2;
const S_POD: u64 = 3;
const S_POLICY: u64 = 4;
const S_OTHER: u64 = 5;

/// Alphabet of Kubernetes generated-name suffixes.
const SAFE: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
const HEX: &[u8] = b"0123456789abcdef";
/// 2024-01-01T00:00:00Z.
const BASE_TIME: i64 = 1_704_067_200;
const DAY: i64 = 86_400;

const TEAMS: &[&str] = &[
    "payments", "platform", "search", "checkout", "identity", "data", "ml", "growth", "infra",
    "mobile",
];
const ENVS: &[&str] = &["prod", "staging", "dev", "qa"];
/// Deployment replica counts with `--noise typical`.
const TYPICAL_REPLICAS: &[usize] = &[4, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50, 60, 80, 100];

/// A catalog entry: (base name, image, port, port name, tier).
type App = (&'static str, &'static str, u16, &'static str, &'static str);

const WEB_APPS: &[App] = &[
    ("web", "nginx:1.25.3", 80, "http", "frontend"),
    (
        "frontend",
        "registry.example.com/shop/frontend:3.2.1",
        8080,
        "http",
        "frontend",
    ),
    (
        "api",
        "registry.example.com/shop/api:2.14.0",
        8080,
        "http",
        "backend",
    ),
    (
        "backend",
        "registry.example.com/core/backend:1.9.4",
        9000,
        "grpc",
        "backend",
    ),
    (
        "auth",
        "registry.example.com/identity/auth:4.0.2",
        8443,
        "https",
        "backend",
    ),
    (
        "payments",
        "registry.example.com/pay/payments:7.3.0",
        8080,
        "http",
        "backend",
    ),
    (
        "ingest",
        "registry.example.com/data/ingest:0.18.1",
        8080,
        "http",
        "backend",
    ),
    (
        "notifier",
        "registry.example.com/core/notifier:1.2.0",
        8080,
        "http",
        "backend",
    ),
    (
        "gateway",
        "envoyproxy/envoy:v1.29.1",
        8443,
        "https",
        "frontend",
    ),
    (
        "worker",
        "registry.example.com/core/worker:5.1.7",
        9090,
        "metrics",
        "batch",
    ),
    (
        "scheduler",
        "registry.example.com/core/scheduler:2.0.0",
        8080,
        "http",
        "batch",
    ),
    ("cache", "memcached:1.6.23", 11211, "memcache", "data"),
    (
        "recommender",
        "registry.example.com/ml/recommender:0.9.3",
        8501,
        "http",
        "backend",
    ),
    (
        "imds-client",
        "mcr.microsoft.com/azure-cli:2.56.0",
        8080,
        "http",
        "backend",
    ),
];
const DATA_APPS: &[App] = &[
    ("redis", "redis:7.2.4", 6379, "redis", "data"),
    ("postgres", "postgres:16.1", 5432, "postgres", "data"),
    ("kafka", "bitnami/kafka:3.6.1", 9092, "kafka", "data"),
    ("zookeeper", "zookeeper:3.9.1", 2181, "client", "data"),
    (
        "elasticsearch",
        "docker.elastic.co/elasticsearch/elasticsearch:8.11.3",
        9200,
        "http",
        "data",
    ),
    ("mongodb", "mongo:7.0.5", 27017, "mongodb", "data"),
];
const NODE_APPS: &[App] = &[
    (
        "node-exporter",
        "quay.io/prometheus/node-exporter:v1.7.0",
        9100,
        "metrics",
        "infra",
    ),
    (
        "fluent-bit",
        "fluent/fluent-bit:2.2.2",
        2020,
        "http",
        "infra",
    ),
    (
        "node-agent",
        "registry.example.com/infra/node-agent:1.4.0",
        8126,
        "apm",
        "infra",
    ),
    (
        "csi-node",
        "registry.k8s.io/sig-storage/csi-node-driver-registrar:v2.9.3",
        9809,
        "healthz",
        "infra",
    ),
    (
        "cni-agent",
        "registry.example.com/infra/cni-agent:1.15.0",
        9962,
        "metrics",
        "infra",
    ),
];
const JOB_APPS: &[App] = &[
    (
        "backup",
        "registry.example.com/ops/backup:1.3.0",
        0,
        "",
        "batch",
    ),
    (
        "report",
        "registry.example.com/data/report:2.2.0",
        0,
        "",
        "batch",
    ),
    (
        "db-migrate",
        "registry.example.com/core/migrate:3.1.4",
        0,
        "",
        "batch",
    ),
    ("cleanup", "busybox:1.36.1", 0, "", "batch"),
    (
        "sync",
        "registry.example.com/data/sync:0.7.2",
        0,
        "",
        "batch",
    ),
];
const BARE_APPS: &[App] = &[
    ("debug", "nicolaka/netshoot:v0.11", 0, "", "debug"),
    ("toolbox", "busybox:1.36.1", 0, "", "debug"),
    ("curl-test", "curlimages/curl:8.5.0", 0, "", "debug"),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Deployment,
    StatefulSet,
    DaemonSet,
    CronJob,
    Job,
    Bare,
}

#[derive(Debug)]
struct Container {
    /// Whether the heavy fields (pull policy, resources, env) are written.
    full: bool,
    name: String,
    image: &'static str,
    pull: &'static str,
    ports: Vec<(u16, &'static str, &'static str)>,
    resources: Option<(&'static str, &'static str, &'static str, &'static str)>,
    env: Vec<(&'static str, &'static str)>,
}

/// A ReplicaSet of a Deployment or a Job of a CronJob.
#[derive(Debug)]
struct Child {
    name: String,
    uid: String,
    hash: String,
    created: i64,
    pods: usize,
}

#[derive(Debug)]
struct Workload {
    /// `--noise full`.
    full: bool,
    kind: Kind,
    name: String,
    uid: String,
    created: i64,
    pods: usize,
    labels: Vec<(Key, String)>,
    selector: Vec<(Key, String)>,
    containers: Vec<Container>,
    host_network: bool,
    hash: String,
    children: Vec<Child>,
    service: Option<(u16, &'static str)>,
    last_applied: bool,
    service_account: Option<String>,
}

#[derive(Debug)]
struct Ns {
    idx: usize,
    name: String,
    uid: String,
    created: i64,
    team: Option<&'static str>,
    env: Option<&'static str>,
    extra: Option<(&'static str, &'static str)>,
    workloads: Vec<Workload>,
    policies: usize,
    configmaps: usize,
}

/// Splits `total` over `weights` so that the parts add up to exactly `total`.
fn split_exact(total: usize, weights: &[u64]) -> Vec<usize> {
    let sum: u128 = weights.iter().map(|&w| u128::from(w)).sum();
    let ones;
    let (weights, sum) = if sum == 0 {
        ones = vec![1u64; weights.len()];
        (&ones[..], weights.len() as u128)
    } else {
        (weights, sum)
    };
    let mut out = Vec::with_capacity(weights.len());
    let mut cum = 0u128;
    let mut prev = 0u128;
    for &w in weights {
        cum += u128::from(w);
        let upto = total as u128 * cum / sum;
        out.push((upto - prev) as usize);
        prev = upto;
    }
    out
}

/// Formats Unix seconds as RFC 3339 UTC (`2024-01-01T00:00:00Z`).
pub fn timestamp(secs: i64) -> String {
    imdsguard_core::token::format_unix_utc(secs)
}

fn unique(names: &mut HashSet<String>, base: &str) -> String {
    if names.insert(base.to_string()) {
        return base.to_string();
    }
    (2..)
        .map(|n| format!("{base}-{n}"))
        .find(|c| names.insert(c.clone()))
        .expect("unbounded")
}

fn resource_version(rng: &mut Rng) -> String {
    rng.range(10_000, 99_999_999).to_string()
}

fn labels_obj(labels: &[(Key, String)]) -> Obj {
    labels
        .iter()
        .fold(Obj::new(), |o, (k, v)| o.with(k.clone(), v.clone()))
}

fn match_labels(labels: &[(Key, String)]) -> V {
    Obj::new().with("matchLabels", labels_obj(labels)).into()
}

// ---------------------------------------------------------------------------
// Planning
// ---------------------------------------------------------------------------

fn plan(cfg: &Config) -> Vec<Ns> {
    let mut rng = Rng::derive(cfg.seed, S_WEIGHTS, 0);
    let mut pod_w = Vec::with_capacity(cfg.namespaces);
    let mut pol_w = Vec::with_capacity(cfg.namespaces);
    for _ in 0..cfg.namespaces {
        pod_w.push(match rng.weighted(&[5, 60, 30, 5]) {
            0 => 0,
            1 => rng.range(5, 15),
            2 => rng.range(15, 40),
            _ => rng.range(60, 200),
        });
        pol_w.push(match rng.weighted(&[20, 50, 25, 5]) {
            0 => 0,
            1 => rng.range(1, 5),
            2 => rng.range(5, 15),
            _ => rng.range(20, 60),
        });
    }
    let pods = split_exact(cfg.pods, &pod_w);
    let pols = split_exact(cfg.policies, &pol_w);
    (0..cfg.namespaces)
        .map(|i| plan_ns(cfg.seed, cfg.noise, i, pods[i], pols[i]))
        .collect()
}

fn plan_ns(seed: u64, noise: Noise, idx: usize, pod_budget: usize, policies: usize) -> Ns {
    let full = noise == Noise::Full;
    let mut rng = Rng::derive(seed, S_PLAN, idx as u64);
    let name = format!("ns-{:05}", idx + 1);
    let uid = rng.uuid();
    let created = BASE_TIME + rng.range(0, 120 * DAY as u64) as i64;
    let team = rng.chance(0.8).then(|| *rng.pick(TEAMS));
    let env = rng.chance(0.7).then(|| *rng.pick(ENVS));
    let extra = match rng.below(10) {
        0 => Some(("istio-injection", "enabled")),
        1 => Some(("pod-security.kubernetes.io/enforce", "baseline")),
        _ => None,
    };
    let mut names = HashSet::new();
    let mut workloads = Vec::new();
    let mut remaining = pod_budget;
    while remaining > 0 {
        let kind = match rng.weighted(&[72, 7, 5, 7, 4, 5]) {
            0 => Kind::Deployment,
            1 => Kind::StatefulSet,
            2 => Kind::DaemonSet,
            3 => Kind::CronJob,
            4 => Kind::Job,
            _ => Kind::Bare,
        };
        let pods = match kind {
            Kind::Deployment if full => *rng.pick(&[1, 2, 2, 3, 3, 4, 4, 5, 6, 8, 10, 12, 16, 20]),
            Kind::Deployment => *rng.pick(TYPICAL_REPLICAS),
            Kind::StatefulSet => rng.range_usize(1, 3),
            Kind::DaemonSet => rng.range_usize(2, 6),
            Kind::CronJob => rng.range_usize(1, 3),
            Kind::Job | Kind::Bare => 1,
        }
        .min(remaining);
        workloads.push(plan_workload(
            &mut rng, &mut names, full, kind, pods, created, team,
        ));
        remaining -= pods;
    }
    if rng.chance(0.05) {
        // A Deployment scaled to zero: owns a ReplicaSet but no Pods.
        workloads.push(plan_workload(
            &mut rng,
            &mut names,
            full,
            Kind::Deployment,
            0,
            created,
            team,
        ));
    }
    let configmaps = if full {
        *rng.pick(&[0, 0, 0, 1, 1, 2])
    } else {
        usize::from(rng.chance(0.1))
    };
    Ns {
        idx,
        name,
        uid,
        created,
        team,
        env,
        extra,
        workloads,
        policies,
        configmaps,
    }
}

fn plan_container(rng: &mut Rng, full: bool, name: String, app: &App) -> Container {
    let (_, image, port, port_name, _) = *app;
    let mut ports = Vec::new();
    if port != 0 {
        ports.push((port, port_name, "TCP"));
        if rng.chance(if full { 0.15 } else { 0.05 }) && port != 9090 {
            ports.push((9090, "metrics", "TCP"));
        }
        if rng.chance(0.02) {
            ports.push((8125, "statsd", "UDP"));
        }
    }
    if !full {
        return Container {
            full,
            name,
            image,
            pull: "IfNotPresent",
            ports,
            resources: None,
            env: Vec::new(),
        };
    }
    let resources = rng.chance(0.4).then(|| {
        *rng.pick(&[
            ("100m", "128Mi", "500m", "256Mi"),
            ("250m", "256Mi", "1", "512Mi"),
            ("500m", "1Gi", "2", "2Gi"),
            ("50m", "64Mi", "200m", "128Mi"),
        ])
    });
    let env_pool: &[(&str, &str)] = &[
        ("LOG_LEVEL", "info"),
        ("GOMAXPROCS", "2"),
        ("FEATURE_FLAGS", "true"),
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://otel-collector.observability:4317",
        ),
        ("AZURE_CLIENT_ID", "00000000-0000-0000-0000-000000000000"),
        ("JAVA_OPTS", "-Xmx512m -XX:+UseG1GC"),
    ];
    let env = if rng.chance(0.2) {
        let n = rng.range_usize(1, 2);
        (0..n).map(|_| *rng.pick(env_pool)).collect::<Vec<_>>()
    } else {
        Vec::new()
    };
    let mut env = env;
    env.dedup_by_key(|e| e.0);
    Container {
        full,
        name,
        image,
        pull: if rng.chance(0.8) {
            "IfNotPresent"
        } else {
            "Always"
        },
        ports,
        resources,
        env,
    }
}

fn plan_workload(
    rng: &mut Rng,
    names: &mut HashSet<String>,
    full: bool,
    kind: Kind,
    pods: usize,
    ns_created: i64,
    team: Option<&'static str>,
) -> Workload {
    let catalog = match kind {
        Kind::Deployment => WEB_APPS,
        Kind::StatefulSet => DATA_APPS,
        Kind::DaemonSet => NODE_APPS,
        Kind::CronJob | Kind::Job => JOB_APPS,
        Kind::Bare => BARE_APPS,
    };
    let app = *rng.pick(catalog);
    let name = if kind == Kind::Bare {
        unique(names, &format!("{}-{}", app.0, rng.string(SAFE, 5)))
    } else {
        unique(names, app.0)
    };
    let uid = rng.uuid();
    let created = ns_created + rng.range(3600, 60 * DAY as u64) as i64;

    let mut labels: Vec<(Key, String)> = Vec::with_capacity(6);
    if kind == Kind::Bare {
        labels.push(("run".into(), name.clone()));
    } else {
        labels.push(("app".into(), name.clone()));
        if rng.chance(if full { 0.7 } else { 0.5 }) {
            labels.push(("tier".into(), app.4.to_string()));
        }
        if rng.chance(if full { 0.5 } else { 0.15 }) {
            let v = *rng.pick(&["v1", "v2", "v3", "1.0", "2.1"]);
            labels.push(("version".into(), v.to_string()));
        }
        if rng.chance(if full { 0.2 } else { 0.03 }) {
            labels.push(("app.kubernetes.io/name".into(), app.0.to_string()));
            if let Some(t) = team {
                labels.push(("app.kubernetes.io/part-of".into(), t.to_string()));
            }
        }
        if rng.chance(0.05) {
            let v = *rng.pick(&["true", "false"]);
            labels.push(("canary".into(), v.to_string()));
        }
    }
    let selector = labels[..1].to_vec();

    let mut containers = vec![plan_container(rng, full, app.0.to_string(), &app)];
    let sidecar = if full { 0.05 } else { 0.01 };
    if matches!(kind, Kind::Deployment | Kind::StatefulSet) && rng.chance(sidecar) {
        containers.push(plan_container(
            rng,
            full,
            "istio-proxy".to_string(),
            &(
                "istio-proxy",
                "docker.io/istio/proxyv2:1.20.2",
                15090,
                "http-envoy-prom",
                "",
            ),
        ));
    }
    let host_network = match kind {
        // Typical noise has fewer, larger workloads: raise the odds so that
        // hostNetwork workloads stay about as common.
        Kind::DaemonSet => rng.chance(if full { 0.1 } else { 0.25 }),
        Kind::Deployment => rng.chance(if full { 0.012 } else { 0.02 }),
        Kind::Bare => rng.chance(if full { 0.03 } else { 0.05 }),
        _ => false,
    };
    let hash = rng.string(HEX, 10);
    let mut children = Vec::new();
    match kind {
        Kind::Deployment => {
            if rng.chance(if full { 0.15 } else { 0.03 }) {
                children.push(Child {
                    name: String::new(),
                    uid: rng.uuid(),
                    hash: rng.string(HEX, 10),
                    created: created + 60,
                    pods: 0,
                });
            }
            children.push(Child {
                name: format!("{name}-{hash}"),
                uid: rng.uuid(),
                hash: hash.clone(),
                created: created + rng.range(60, 30 * DAY as u64) as i64,
                pods,
            });
            for c in &mut children {
                if c.name.is_empty() {
                    c.name = format!("{name}-{}", c.hash);
                }
            }
        }
        Kind::CronJob => {
            let mut minute = (created / 60) as u64 + rng.range(1000, 200_000);
            for _ in 0..pods {
                minute += rng.range(15, 1440);
                children.push(Child {
                    name: format!("{name}-{minute}"),
                    uid: rng.uuid(),
                    hash: String::new(),
                    created: minute as i64 * 60,
                    pods: 1,
                });
            }
        }
        _ => {}
    }
    let service = match kind {
        Kind::Deployment if app.2 != 0 && rng.chance(if full { 0.35 } else { 0.05 }) => {
            Some((app.2, app.3))
        }
        Kind::StatefulSet => Some((app.2, app.3)),
        _ => None,
    };
    let service_account =
        (kind != Kind::Bare && rng.chance(if full { 0.3 } else { 0.1 })).then(|| name.clone());
    Workload {
        full,
        kind,
        name,
        uid,
        created,
        pods,
        labels,
        selector,
        containers,
        host_network,
        hash,
        children,
        service,
        last_applied: full && rng.chance(0.04),
        service_account,
    }
}

// ---------------------------------------------------------------------------
// Object builders
// ---------------------------------------------------------------------------

struct Meta<'a> {
    /// `--noise full`.
    full: bool,
    name: String,
    namespace: Option<&'a str>,
    created: i64,
    labels: Option<Obj>,
    annotations: Option<Obj>,
    owner: Option<(&'static str, &'static str, &'a str, &'a str)>,
    generation: Option<i64>,
    generate_name: Option<String>,
    uid: String,
}

impl Meta<'_> {
    fn build(self, rng: &mut Rng) -> Obj {
        let mut m = Obj::new()
            .with("creationTimestamp", timestamp(self.created))
            .with("name", self.name)
            .with("resourceVersion", resource_version(rng))
            .with("uid", self.uid);
        if let Some(ns) = self.namespace {
            m.set("namespace", ns.to_string());
        }
        if let Some(l) = self.labels.filter(|l| !l.is_empty()) {
            m.set("labels", l);
        }
        if let Some(a) = self.annotations.filter(|a| !a.is_empty()) {
            m.set("annotations", a);
        }
        if let Some(g) = self.generation {
            m.set("generation", g);
        }
        if let Some(g) = self.generate_name {
            m.set("generateName", g);
        }
        if let Some((api, kind, name, uid)) = self.owner {
            m.set(
                "ownerReferences",
                arr([Obj::new()
                    .with("apiVersion", api)
                    .with("controller", true)
                    .with("kind", kind)
                    .with("name", name.to_string())
                    .with("uid", uid.to_string())
                    .with_opt("blockOwnerDeletion", self.full.then_some(true))]),
            );
        }
        m
    }
}

fn object(api: &'static str, kind: &'static str, meta: Obj) -> Obj {
    Obj::new()
        .with("apiVersion", api)
        .with("kind", kind)
        .with("metadata", meta)
}

fn container_obj(c: &Container) -> V {
    let mut o = Obj::new()
        .with("image", c.image)
        .with("name", c.name.clone());
    if c.full {
        let resources = match c.resources {
            Some((rc, rm, lc, lm)) => Obj::new()
                .with("limits", Obj::new().with("cpu", lc).with("memory", lm))
                .with("requests", Obj::new().with("cpu", rc).with("memory", rm)),
            None => Obj::new(),
        };
        o.set("imagePullPolicy", c.pull);
        o.set("resources", resources);
    }
    if !c.ports.is_empty() {
        o.set(
            "ports",
            arr(c.ports.iter().map(|&(port, name, proto)| {
                Obj::new()
                    .with("containerPort", port)
                    .with_opt("name", c.full.then_some(name))
                    // Typical noise omits the defaulted `protocol: TCP`.
                    .with_opt("protocol", (c.full || proto != "TCP").then_some(proto))
            })),
        );
    }
    if !c.env.is_empty() {
        o.set(
            "env",
            arr(c
                .env
                .iter()
                .map(|&(k, v)| Obj::new().with("name", k).with("value", v))),
        );
    }
    o.into()
}

fn template_spec(wl: &Workload, restart: &'static str) -> Obj {
    let mut s = Obj::new().with("containers", arr(wl.containers.iter().map(container_obj)));
    if wl.full {
        s.set(
            "dnsPolicy",
            if wl.host_network {
                "ClusterFirstWithHostNet"
            } else {
                "ClusterFirst"
            },
        );
        s.set("restartPolicy", restart);
    } else if restart != "Always" {
        s.set("restartPolicy", restart);
    }
    if wl.host_network {
        if !wl.full {
            s.set("dnsPolicy", "ClusterFirstWithHostNet");
        }
        s.set("hostNetwork", true);
    }
    if let Some(sa) = &wl.service_account {
        s.set("serviceAccountName", sa.clone());
    }
    s
}

fn pod_template(full: bool, labels: &[(Key, String)], spec: Obj) -> Obj {
    let mut meta = Obj::new().with("labels", labels_obj(labels));
    if full {
        meta.set("creationTimestamp", V::Null);
    }
    Obj::new().with("metadata", meta).with("spec", spec)
}

fn restart_policy(kind: Kind) -> &'static str {
    match kind {
        Kind::CronJob | Kind::Job => "OnFailure",
        Kind::Bare => "Never",
        _ => "Always",
    }
}

fn condition(kind: &'static str, status: &'static str, at: i64) -> Obj {
    Obj::new()
        .with("lastTransitionTime", timestamp(at))
        .with("status", status)
        .with("type", kind)
}

fn with_last_applied(mut annotations: Obj, enabled: bool, obj: &Obj) -> Obj {
    if enabled {
        let v: V = obj.clone().into();
        let mut buf = Vec::new();
        write_json_compact(&mut buf, &v).expect("write to Vec");
        buf.push(b'\n');
        annotations.set(
            "kubectl.kubernetes.io/last-applied-configuration",
            String::from_utf8(buf).expect("utf8"),
        );
    }
    annotations
}

/// Mutable state of the pod pass.
struct PodCtx {
    nodes: usize,
    next_ip: u64,
}

fn node_name(i: usize) -> String {
    format!("aks-nodepool{}-31415926-vmss{:06}", i % 3 + 1, i)
}

fn node_ip(i: usize) -> String {
    format!("10.224.{}.{}", (i / 250) % 256, i % 250 + 4)
}

impl PodCtx {
    fn pod_ip(&mut self) -> String {
        let c = self.next_ip;
        self.next_ip += 1;
        format!("10.{}.{}.{}", 244 + (c >> 16) % 12, (c >> 8) & 255, c & 255)
    }
}

#[allow(clippy::too_many_arguments)]
fn pod_obj(
    rng: &mut Rng,
    ctx: &mut PodCtx,
    ns: &Ns,
    wl: &Workload,
    name: String,
    owner: Option<(&'static str, &'static str, &str, &str)>,
    generate_name: Option<String>,
    extra_labels: Vec<(Key, String)>,
    created: i64,
) -> (V, bool) {
    let mut labels = labels_obj(&wl.labels);
    for (k, v) in extra_labels {
        labels.set(k, v);
    }
    let meta = Meta {
        full: wl.full,
        name,
        namespace: Some(&ns.name),
        created,
        labels: Some(labels),
        annotations: None,
        owner,
        generation: None,
        generate_name,
        uid: rng.uuid(),
    }
    .build(rng);

    let batch = matches!(wl.kind, Kind::CronJob | Kind::Job);
    let phase = if batch {
        *rng.pick(&["Succeeded", "Succeeded", "Succeeded", "Running", "Failed"])
    } else if rng.chance(0.015) {
        "Pending"
    } else {
        "Running"
    };
    let node = rng.below(ctx.nodes as u64) as usize;
    let mut spec = template_spec(wl, restart_policy(wl.kind));
    let start = created + rng.range(1, 30) as i64;
    let mut status = Obj::new().with("phase", phase);
    if !wl.full {
        if phase != "Pending" {
            let pod_ip = if wl.host_network {
                node_ip(node)
            } else {
                ctx.pod_ip()
            };
            status.set("podIP", pod_ip);
        }
    } else if phase == "Pending" {
        status.set(
            "conditions",
            arr([condition("PodScheduled", "False", start)
                .with("message", "0/42 nodes are available: 42 Insufficient cpu.")
                .with("reason", "Unschedulable")
                .with("lastProbeTime", V::Null)]),
        );
    } else {
        spec.set("nodeName", node_name(node));
        let host_ip = node_ip(node);
        let pod_ip = if wl.host_network {
            host_ip.clone()
        } else {
            ctx.pod_ip()
        };
        let ready = if phase == "Running" { "True" } else { "False" };
        status.set(
            "conditions",
            arr([condition("Ready", ready, start + 5).with("lastProbeTime", V::Null)]),
        );
        status.set("hostIP", host_ip);
        status.set("podIP", pod_ip);
        status.set("startTime", timestamp(start));
    }
    let pod = Obj::new()
        .with("apiVersion", "v1")
        .with("kind", "Pod")
        .with("metadata", meta)
        .with("spec", spec)
        .with("status", status);
    (pod.into(), wl.host_network)
}

// ---------------------------------------------------------------------------
// Passes
// ---------------------------------------------------------------------------

struct Out<'a, W: Write> {
    sink: &'a mut Sink<W>,
    stats: Stats,
}

impl<W: Write> Out<'_, W> {
    fn emit(&mut self, kind: &'static str, v: &V) -> io::Result<()> {
        *self.stats.kinds.entry(kind).or_default() += 1;
        self.sink.item(v)
    }
}

/// Generates the whole cluster into `sink`.
pub fn generate<W: Write>(cfg: &Config, sink: &mut Sink<W>) -> io::Result<Stats> {
    if cfg.namespaces == 0 && (cfg.pods > 0 || cfg.policies > 0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "pods and policies need at least one namespace",
        ));
    }
    let nss = plan(cfg);
    let mut out = Out {
        sink,
        stats: Stats::default(),
    };
    for ns in &nss {
        namespace_pass(cfg, ns, &mut out)?;
    }
    let mut ctx = PodCtx {
        nodes: (cfg.pods / 30).max(3),
        next_ip: 2,
    };
    for ns in &nss {
        pod_pass(cfg, ns, &mut ctx, &mut out)?;
    }
    for ns in &nss {
        service_pass(cfg, ns, &mut out)?;
    }
    for kind in [
        Kind::DaemonSet,
        Kind::Deployment,
        Kind::StatefulSet,
        Kind::Job,
        Kind::CronJob,
    ] {
        for ns in &nss {
            workload_pass(cfg, ns, kind, &mut out)?;
        }
        if kind == Kind::Deployment {
            for ns in &nss {
                replicaset_pass(cfg, ns, &mut out)?;
            }
        }
        if kind == Kind::Job {
            // Jobs created by CronJobs are listed together with plain Jobs.
            for ns in &nss {
                cronjob_children_pass(cfg, ns, &mut out)?;
            }
        }
    }
    for ns in &nss {
        policy_pass(cfg, ns, &mut out)?;
    }
    for ns in &nss {
        configmap_pass(cfg, ns, &mut out)?;
    }
    Ok(out.stats)
}

fn namespace_pass<W: Write>(cfg: &Config, ns: &Ns, out: &mut Out<W>) -> io::Result<()> {
    let mut rng = Rng::derive(cfg.seed, S_OTHER, ns.idx as u64 * 8);
    let mut labels = Obj::new().with("kubernetes.io/metadata.name", ns.name.clone());
    if let Some(t) = ns.team {
        labels.set("team", t);
    }
    if let Some(e) = ns.env {
        labels.set("env", e);
    }
    if let Some((k, v)) = ns.extra {
        labels.set(k, v);
    }
    let meta = Meta {
        full: cfg.noise == Noise::Full,
        name: ns.name.clone(),
        namespace: None,
        created: ns.created,
        labels: Some(labels),
        annotations: None,
        owner: None,
        generation: None,
        generate_name: None,
        uid: ns.uid.clone(),
    }
    .build(&mut rng);
    let v: V = object("v1", "Namespace", meta)
        .with("spec", Obj::new().with("finalizers", arr(["kubernetes"])))
        .with("status", Obj::new().with("phase", "Active"))
        .into();
    out.emit("Namespace", &v)
}

fn pod_pass<W: Write>(cfg: &Config, ns: &Ns, ctx: &mut PodCtx, out: &mut Out<W>) -> io::Result<()> {
    let mut rng = Rng::derive(cfg.seed, S_POD, ns.idx as u64);
    for wl in &ns.workloads {
        let mut used = HashSet::new();
        let mut suffix = |rng: &mut Rng| loop {
            let s = rng.string(SAFE, 5);
            if used.insert(s.clone()) {
                return s;
            }
        };
        let mut emitted = Vec::new();
        match wl.kind {
            Kind::Deployment | Kind::CronJob => {
                for child in &wl.children {
                    for _ in 0..child.pods {
                        let name = format!("{}-{}", child.name, suffix(&mut rng));
                        let (api, kind, extra) = if wl.kind == Kind::Deployment {
                            (
                                "apps/v1",
                                "ReplicaSet",
                                vec![("pod-template-hash".into(), child.hash.clone())],
                            )
                        } else {
                            ("batch/v1", "Job", job_labels(&child.name, &child.uid))
                        };
                        let created = child.created + rng.range(5, 3 * DAY as u64) as i64;
                        emitted.push(pod_obj(
                            &mut rng,
                            ctx,
                            ns,
                            wl,
                            name,
                            Some((api, kind, &child.name, &child.uid)),
                            None,
                            extra,
                            created,
                        ));
                    }
                }
            }
            Kind::StatefulSet | Kind::DaemonSet | Kind::Job => {
                for i in 0..wl.pods {
                    let created = wl.created + rng.range(5, 3 * DAY as u64) as i64;
                    let (name, api, kind, extra): (String, _, _, Vec<(Key, String)>) = match wl.kind
                    {
                        Kind::StatefulSet => {
                            let name = format!("{}-{i}", wl.name);
                            let extra = vec![
                                ("apps.kubernetes.io/pod-index".into(), i.to_string()),
                                (
                                    "controller-revision-hash".into(),
                                    format!("{}-{}", wl.name, wl.hash),
                                ),
                                ("statefulset.kubernetes.io/pod-name".into(), name.clone()),
                            ];
                            (name, "apps/v1", "StatefulSet", extra)
                        }
                        Kind::DaemonSet => (
                            format!("{}-{}", wl.name, suffix(&mut rng)),
                            "apps/v1",
                            "DaemonSet",
                            vec![
                                ("controller-revision-hash".into(), wl.hash.clone()),
                                ("pod-template-generation".into(), "1".to_string()),
                            ],
                        ),
                        _ => (
                            format!("{}-{}", wl.name, suffix(&mut rng)),
                            "batch/v1",
                            "Job",
                            job_labels(&wl.name, &wl.uid),
                        ),
                    };
                    let generate_name =
                        (wl.kind == Kind::DaemonSet).then(|| format!("{}-", wl.name));
                    emitted.push(pod_obj(
                        &mut rng,
                        ctx,
                        ns,
                        wl,
                        name,
                        Some((api, kind, &wl.name, &wl.uid)),
                        generate_name,
                        extra,
                        created,
                    ));
                }
            }
            Kind::Bare => {
                for _ in 0..wl.pods {
                    emitted.push(pod_obj(
                        &mut rng,
                        ctx,
                        ns,
                        wl,
                        wl.name.clone(),
                        None,
                        None,
                        Vec::new(),
                        wl.created,
                    ));
                }
            }
        }
        for (pod, host_network) in emitted {
            if host_network {
                out.stats.host_network_pods += 1;
            }
            out.emit("Pod", &pod)?;
        }
    }
    Ok(())
}

fn job_labels(job: &str, uid: &str) -> Vec<(Key, String)> {
    vec![
        ("batch.kubernetes.io/controller-uid".into(), uid.to_string()),
        ("batch.kubernetes.io/job-name".into(), job.to_string()),
    ]
}

fn service_pass<W: Write>(cfg: &Config, ns: &Ns, out: &mut Out<W>) -> io::Result<()> {
    let mut rng = Rng::derive(cfg.seed, S_OTHER, ns.idx as u64 * 8 + 1);
    for wl in &ns.workloads {
        let Some((port, port_name)) = wl.service else {
            continue;
        };
        let headless = wl.kind == Kind::StatefulSet;
        let lb = !headless && rng.chance(0.05);
        let ip = if headless {
            "None".to_string()
        } else {
            format!("10.0.{}.{}", rng.below(256), rng.range(1, 254))
        };
        let target: V = if rng.chance(0.5) {
            port_name.into()
        } else {
            port.into()
        };
        let meta = Meta {
            full: cfg.noise == Noise::Full,
            name: wl.name.clone(),
            namespace: Some(&ns.name),
            created: wl.created,
            labels: Some(labels_obj(&wl.selector)),
            annotations: None,
            owner: None,
            generation: None,
            generate_name: None,
            uid: rng.uuid(),
        }
        .build(&mut rng);
        let svc_port = if port == 8080 || port == 8443 {
            port - 8000
        } else {
            port
        };
        let spec = Obj::new()
            .with("clusterIP", ip.clone())
            .with("clusterIPs", arr([ip]))
            .with("internalTrafficPolicy", "Cluster")
            .with("ipFamilies", arr(["IPv4"]))
            .with("ipFamilyPolicy", "SingleStack")
            .with(
                "ports",
                arr([Obj::new()
                    .with("name", port_name)
                    .with("port", svc_port)
                    .with("protocol", "TCP")
                    .with("targetPort", target)]),
            )
            .with("selector", labels_obj(&wl.selector))
            .with("sessionAffinity", "None")
            .with("type", if lb { "LoadBalancer" } else { "ClusterIP" });
        let lb_status = if lb {
            Obj::new().with(
                "ingress",
                arr([Obj::new().with(
                    "ip",
                    format!(
                        "20.{}.{}.{}",
                        rng.below(256),
                        rng.below(256),
                        rng.range(1, 254)
                    ),
                )]),
            )
        } else {
            Obj::new()
        };
        let v: V = object("v1", "Service", meta)
            .with("spec", spec)
            .with("status", Obj::new().with("loadBalancer", lb_status))
            .into();
        out.emit("Service", &v)?;
    }
    Ok(())
}

fn workload_pass<W: Write>(cfg: &Config, ns: &Ns, kind: Kind, out: &mut Out<W>) -> io::Result<()> {
    let mut rng = Rng::derive(cfg.seed, S_OTHER, ns.idx as u64 * 8 + 2 + kind as u64 % 5);
    for wl in ns.workloads.iter().filter(|w| w.kind == kind) {
        let n = wl.pods;
        let generation = if wl.children.len() > 1 { 2 } else { 1 };
        let template = pod_template(wl.full, &wl.labels, template_spec(wl, restart_policy(kind)));
        let selector = match_labels(&wl.selector);
        let (api, kind_name, spec, status) = match kind {
            Kind::Deployment => {
                let mut spec = Obj::new()
                    .with("replicas", n)
                    .with("selector", selector)
                    .with("template", template);
                if wl.full {
                    spec.set(
                        "strategy",
                        Obj::new()
                            .with(
                                "rollingUpdate",
                                Obj::new()
                                    .with("maxSurge", "25%")
                                    .with("maxUnavailable", "25%"),
                            )
                            .with("type", "RollingUpdate"),
                    );
                }
                let mut status = Obj::new();
                if wl.full {
                    status.set("observedGeneration", generation);
                }
                if n > 0 {
                    status = status
                        .with("availableReplicas", n)
                        .with("readyReplicas", n)
                        .with("replicas", n);
                    if wl.full {
                        status.set("updatedReplicas", n);
                        status.set(
                            "conditions",
                            arr([condition("Available", "True", wl.created + 120)
                                .with("lastUpdateTime", timestamp(wl.created + 120))
                                .with("message", "Deployment has minimum availability.")
                                .with("reason", "MinimumReplicasAvailable")]),
                        );
                    }
                }
                ("apps/v1", "Deployment", spec, status)
            }
            Kind::StatefulSet => {
                let rev = format!("{}-{}", wl.name, wl.hash);
                let spec = Obj::new()
                    .with("podManagementPolicy", "OrderedReady")
                    .with("replicas", n)
                    .with("revisionHistoryLimit", 10u32)
                    .with("selector", selector)
                    .with("serviceName", wl.name.clone())
                    .with("template", template)
                    .with(
                        "updateStrategy",
                        Obj::new()
                            .with("rollingUpdate", Obj::new().with("partition", 0u32))
                            .with("type", "RollingUpdate"),
                    );
                let status = Obj::new()
                    .with("availableReplicas", n)
                    .with("collisionCount", 0u32)
                    .with("currentReplicas", n)
                    .with("currentRevision", rev.clone())
                    .with("observedGeneration", generation)
                    .with("readyReplicas", n)
                    .with("replicas", n)
                    .with("updateRevision", rev)
                    .with("updatedReplicas", n);
                ("apps/v1", "StatefulSet", spec, status)
            }
            Kind::DaemonSet => {
                if wl.host_network {
                    out.stats.host_network_daemonsets += 1;
                }
                let spec = Obj::new()
                    .with("revisionHistoryLimit", 10u32)
                    .with("selector", selector)
                    .with("template", template)
                    .with(
                        "updateStrategy",
                        Obj::new()
                            .with(
                                "rollingUpdate",
                                Obj::new()
                                    .with("maxSurge", 0u32)
                                    .with("maxUnavailable", 1u32),
                            )
                            .with("type", "RollingUpdate"),
                    );
                let status = Obj::new()
                    .with("currentNumberScheduled", n)
                    .with("desiredNumberScheduled", n)
                    .with("numberAvailable", n)
                    .with("numberMisscheduled", 0u32)
                    .with("numberReady", n)
                    .with("observedGeneration", generation)
                    .with("updatedNumberScheduled", n);
                ("apps/v1", "DaemonSet", spec, status)
            }
            Kind::Job => {
                let labels = job_labels(&wl.name, &wl.uid);
                let mut tlabels = wl.labels.clone();
                tlabels.extend(labels.iter().cloned());
                let spec = job_spec(wl.full, &tlabels, &wl.uid, template_spec(wl, "OnFailure"));
                let status = job_status(&mut rng, wl.full, wl.created);
                ("batch/v1", "Job", spec, status)
            }
            Kind::CronJob => {
                let schedule = *rng.pick(&["*/15 * * * *", "0 2 * * *", "30 */6 * * *", "@hourly"]);
                let spec = Obj::new()
                    .with("concurrencyPolicy", "Forbid")
                    .with("failedJobsHistoryLimit", 1u32)
                    .with(
                        "jobTemplate",
                        Obj::new()
                            .with("metadata", Obj::new().with("creationTimestamp", V::Null))
                            .with(
                                "spec",
                                Obj::new()
                                    .with("backoffLimit", 3u32)
                                    .with("template", template),
                            ),
                    )
                    .with("schedule", schedule)
                    .with("successfulJobsHistoryLimit", 3u32)
                    .with("suspend", false);
                let last = wl.children.last().map_or(wl.created, |c| c.created);
                let status = Obj::new()
                    .with("lastScheduleTime", timestamp(last))
                    .with("lastSuccessfulTime", timestamp(last + 42));
                ("batch/v1", "CronJob", spec, status)
            }
            Kind::Bare => unreachable!("bare pods have no controller"),
        };
        let labels = (kind != Kind::Job).then(|| labels_obj(&wl.selector));
        let mut annotations = Obj::new();
        if kind == Kind::Deployment {
            annotations.set("deployment.kubernetes.io/revision", generation.to_string());
        }
        let annotations = with_last_applied(
            annotations,
            wl.last_applied,
            &Obj::new()
                .with("apiVersion", api)
                .with("kind", kind_name)
                .with(
                    "metadata",
                    Obj::new()
                        .with("name", wl.name.clone())
                        .with("namespace", ns.name.clone()),
                )
                .with("spec", Obj::new().with("replicas", n)),
        );
        let meta = Meta {
            full: cfg.noise == Noise::Full,
            name: wl.name.clone(),
            namespace: Some(&ns.name),
            created: wl.created,
            labels: labels.or_else(|| Some(labels_obj(&job_labels(&wl.name, &wl.uid)))),
            annotations: Some(annotations),
            owner: None,
            generation: Some(generation),
            generate_name: None,
            uid: wl.uid.clone(),
        }
        .build(&mut rng);
        let v: V = object(api, kind_name, meta)
            .with("spec", spec)
            .with("status", status)
            .into();
        out.emit(kind_name, &v)?;
    }
    Ok(())
}

fn job_spec(full: bool, labels: &[(Key, String)], uid: &str, spec: Obj) -> Obj {
    let mut s = Obj::new()
        .with("backoffLimit", 6u32)
        .with(
            "selector",
            Obj::new().with(
                "matchLabels",
                Obj::new().with("batch.kubernetes.io/controller-uid", uid.to_string()),
            ),
        )
        .with("template", pod_template(full, labels, spec));
    if full {
        s.set("completionMode", "NonIndexed");
        s.set("completions", 1u32);
        s.set("parallelism", 1u32);
        s.set("suspend", false);
    }
    s
}

fn job_status(rng: &mut Rng, full: bool, created: i64) -> Obj {
    let start = created + 1;
    let done = start + rng.range(5, 600) as i64;
    let mut status = Obj::new()
        .with("completionTime", timestamp(done))
        .with("startTime", timestamp(start))
        .with("succeeded", 1u32);
    if full {
        status.set("ready", 0u32);
        status.set(
            "conditions",
            arr([condition("Complete", "True", done).with("lastProbeTime", timestamp(done))]),
        );
    }
    status
}

fn replicaset_pass<W: Write>(cfg: &Config, ns: &Ns, out: &mut Out<W>) -> io::Result<()> {
    let mut rng = Rng::derive(cfg.seed, S_OTHER, ns.idx as u64 * 8 + 7);
    for wl in ns.workloads.iter().filter(|w| w.kind == Kind::Deployment) {
        let revisions = wl.children.len();
        for (rev, rs) in wl.children.iter().enumerate() {
            let n = rs.pods;
            let hash: (Key, String) = ("pod-template-hash".into(), rs.hash.clone());
            let mut sel = wl.selector.clone();
            sel.push(hash.clone());
            let mut tlabels = wl.labels.clone();
            tlabels.push(hash);
            let annotations = wl.full.then(|| {
                Obj::new().with("deployment.kubernetes.io/revision", (rev + 1).to_string())
            });
            let meta = Meta {
                full: cfg.noise == Noise::Full,
                name: rs.name.clone(),
                namespace: Some(&ns.name),
                created: rs.created,
                labels: Some(labels_obj(&sel)),
                annotations,
                owner: Some(("apps/v1", "Deployment", &wl.name, &wl.uid)),
                generation: wl.full.then_some(if rev + 1 < revisions { 2 } else { 1 }),
                generate_name: None,
                uid: rs.uid.clone(),
            }
            .build(&mut rng);
            let spec = Obj::new()
                .with("replicas", n)
                .with("selector", match_labels(&sel))
                .with(
                    "template",
                    pod_template(wl.full, &tlabels, template_spec(wl, "Always")),
                );
            let mut status = Obj::new().with("replicas", n);
            if wl.full {
                status.set("observedGeneration", 1u32);
            }
            if n > 0 {
                status = status.with("availableReplicas", n).with("readyReplicas", n);
                if wl.full {
                    status.set("fullyLabeledReplicas", n);
                }
            }
            let v: V = object("apps/v1", "ReplicaSet", meta)
                .with("spec", spec)
                .with("status", status)
                .into();
            out.emit("ReplicaSet", &v)?;
        }
    }
    Ok(())
}

fn cronjob_children_pass<W: Write>(cfg: &Config, ns: &Ns, out: &mut Out<W>) -> io::Result<()> {
    let mut rng = Rng::derive(cfg.seed, S_OTHER, ns.idx as u64 * 8 + 6);
    for wl in ns.workloads.iter().filter(|w| w.kind == Kind::CronJob) {
        for job in &wl.children {
            let labels = job_labels(&job.name, &job.uid);
            let mut tlabels = wl.labels.clone();
            tlabels.extend(labels.iter().cloned());
            let meta = Meta {
                full: cfg.noise == Noise::Full,
                name: job.name.clone(),
                namespace: Some(&ns.name),
                created: job.created,
                labels: Some(labels_obj(&labels)),
                annotations: Some(Obj::new().with("batch.kubernetes.io/job-tracking", "")),
                owner: Some(("batch/v1", "CronJob", &wl.name, &wl.uid)),
                generation: Some(1),
                generate_name: None,
                uid: job.uid.clone(),
            }
            .build(&mut rng);
            let v: V = object("batch/v1", "Job", meta)
                .with(
                    "spec",
                    job_spec(wl.full, &tlabels, &job.uid, template_spec(wl, "OnFailure")),
                )
                .with("status", job_status(&mut rng, wl.full, job.created))
                .into();
            out.emit("Job", &v)?;
        }
    }
    Ok(())
}

fn configmap_pass<W: Write>(cfg: &Config, ns: &Ns, out: &mut Out<W>) -> io::Result<()> {
    let mut rng = Rng::derive(cfg.seed, S_OTHER, ns.idx as u64 * 8 + 5);
    let mut names = HashSet::new();
    for _ in 0..ns.configmaps {
        let base = match ns.workloads.first() {
            Some(wl) if rng.chance(0.7) => format!("{}-config", wl.name),
            _ => "app-settings".to_string(),
        };
        let name = unique(&mut names, &base);
        let data = Obj::new()
            .with("LOG_LEVEL", *rng.pick(&["info", "debug", "warn"]))
            .with("PORT", "8080")
            .with("ENABLE_TRACING", *rng.pick(&["true", "false", "yes", "off"]))
            .with(
                "config.yaml",
                "server:\n  port: 8080\n  timeout: 30s\n# metadata endpoint must stay blocked\nmetadata: http://169.254.169.254/metadata\n",
            );
        let meta = Meta {
            full: cfg.noise == Noise::Full,
            name,
            namespace: Some(&ns.name),
            created: ns.created + rng.range(60, 10 * DAY as u64) as i64,
            labels: None,
            annotations: None,
            owner: None,
            generation: None,
            generate_name: None,
            uid: rng.uuid(),
        }
        .build(&mut rng);
        let v: V = object("v1", "ConfigMap", meta).with("data", data).into();
        out.emit("ConfigMap", &v)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// NetworkPolicies
// ---------------------------------------------------------------------------

fn ip_block(cidr: &'static str, except: &[&'static str]) -> Obj {
    let mut b = Obj::new().with("cidr", cidr);
    if !except.is_empty() {
        b.set("except", arr(except.iter().copied()));
    }
    Obj::new().with("ipBlock", b)
}

fn pod_peer(k: &'static str, v: String) -> Obj {
    Obj::new().with(
        "podSelector",
        Obj::new().with("matchLabels", Obj::new().with(k, v)),
    )
}

fn ns_peer(k: &'static str, v: String) -> Obj {
    Obj::new().with(
        "namespaceSelector",
        Obj::new().with("matchLabels", Obj::new().with(k, v)),
    )
}

fn port(p: impl Into<V>, proto: Option<&'static str>) -> Obj {
    Obj::new().with("port", p).with_opt("protocol", proto)
}

fn rule(dir: &'static str, peers: Vec<Obj>, ports: Vec<Obj>) -> V {
    let mut r = Obj::new();
    if !peers.is_empty() {
        r.set(if dir == "egress" { "to" } else { "from" }, arr(peers));
    }
    if !ports.is_empty() {
        r.set("ports", arr(ports));
    }
    r.into()
}

fn dns_rule() -> V {
    rule(
        "egress",
        vec![
            ns_peer("kubernetes.io/metadata.name", "kube-system".into()).with(
                "podSelector",
                Obj::new().with("matchLabels", Obj::new().with("k8s-app", "kube-dns")),
            ),
        ],
        vec![port(53u16, Some("UDP")), port(53u16, Some("TCP"))],
    )
}

fn expr(key: &'static str, op: &'static str, values: &[&str]) -> V {
    let mut e = Obj::new().with("key", key).with("operator", op);
    if !values.is_empty() {
        e.set("values", arr(values.iter().map(|s| s.to_string())));
    }
    e.into()
}

fn policy_types(types: &[&'static str]) -> V {
    arr(types.iter().copied())
}

fn policy_pass<W: Write>(cfg: &Config, ns: &Ns, out: &mut Out<W>) -> io::Result<()> {
    let mut rng = Rng::derive(cfg.seed, S_POLICY, ns.idx as u64);
    let apps: Vec<&str> = ns
        .workloads
        .iter()
        .filter(|w| w.kind != Kind::Bare)
        .map(|w| w.name.as_str())
        .collect();
    let mut names = HashSet::new();
    for _ in 0..ns.policies {
        let app = |rng: &mut Rng| -> String {
            if apps.is_empty() || rng.chance(0.05) {
                // Stale policy selecting an app that no longer exists.
                rng.pick(WEB_APPS).0.to_string()
            } else {
                rng.pick(&apps).to_string()
            }
        };
        let all = || Obj::new();
        let sel = |a: String| Obj::new().with("matchLabels", Obj::new().with("app", a));
        let (base, spec): (String, Obj) = match rng
            .weighted(&[12, 5, 14, 14, 18, 9, 5, 4, 5, 4, 7, 3])
        {
            0 => (
                "default-deny-egress".into(),
                Obj::new()
                    .with("podSelector", all())
                    .with("policyTypes", policy_types(&["Egress"])),
            ),
            1 => (
                "default-deny-all".into(),
                Obj::new()
                    .with("podSelector", all())
                    .with("policyTypes", policy_types(&["Ingress", "Egress"])),
            ),
            2 => {
                let except: &[&str] = match rng.below(10) {
                    0 | 1 => &["169.254.0.0/16"],
                    2 => &["169.254.169.254/32", "168.63.129.16/32"],
                    _ => &["169.254.169.254/32"],
                };
                let mut egress = vec![rule("egress", vec![ip_block("0.0.0.0/0", except)], vec![])];
                if rng.chance(0.1) {
                    egress.push(rule(
                        "egress",
                        vec![ip_block("::/0", &["fd00:ec2::254/128"])],
                        vec![],
                    ));
                }
                if rng.chance(0.85) {
                    egress.push(dns_rule());
                }
                (
                    rng.pick(&["deny-imds", "block-metadata-api", "deny-cloud-metadata"])
                        .to_string(),
                    Obj::new()
                        .with("egress", egress)
                        .with("podSelector", all())
                        .with("policyTypes", policy_types(&["Egress"])),
                )
            }
            3 => {
                let a = app(&mut rng);
                let except: &[&str] = if rng.chance(0.3) {
                    &["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]
                } else {
                    &[]
                };
                let mut egress = vec![rule(
                    "egress",
                    vec![ip_block("0.0.0.0/0", except)],
                    vec![port(443u16, Some("TCP")), port(80u16, Some("TCP"))],
                )];
                if rng.chance(0.5) {
                    egress.push(dns_rule());
                }
                (
                    format!("allow-web-{a}"),
                    Obj::new()
                        .with("egress", egress)
                        .with("podSelector", sel(a))
                        .with("policyTypes", policy_types(&["Egress"])),
                )
            }
            4 => {
                let a = app(&mut rng);
                let b = app(&mut rng);
                let mut from = vec![pod_peer("app", b)];
                if rng.chance(0.3) {
                    from.push(ns_peer(
                        "kubernetes.io/metadata.name",
                        "ingress-nginx".into(),
                    ));
                }
                let p = *rng.pick(&[80u16, 443, 8080, 9000, 5432]);
                let mut spec = Obj::new()
                    .with(
                        "ingress",
                        arr([rule("ingress", from, vec![port(p, Some("TCP"))])]),
                    )
                    .with("podSelector", sel(a.clone()));
                if rng.chance(0.8) {
                    // Without policyTypes the API server implies [Ingress].
                    spec.set("policyTypes", policy_types(&["Ingress"]));
                }
                (format!("allow-ingress-{a}"), spec)
            }
            5 => {
                let tiers = ["frontend", "backend", "data", "batch"];
                let t1 = *rng.pick(&tiers);
                let t2 = *rng.pick(&tiers);
                let mut pod_exprs = vec![expr("tier", "In", &[t1, t2])];
                if rng.chance(0.5) {
                    pod_exprs.push(expr("canary", "DoesNotExist", &[]));
                }
                let a = app(&mut rng);
                let to_pods = Obj::new().with(
                    "podSelector",
                    Obj::new().with(
                        "matchExpressions",
                        arr([expr("app", "NotIn", &[&a]), expr("tier", "Exists", &[])]),
                    ),
                );
                let to_ns = Obj::new().with(
                    "namespaceSelector",
                    Obj::new().with(
                        "matchExpressions",
                        arr([expr("env", "In", &["prod", "staging"])]),
                    ),
                );
                let mut egress = vec![rule(
                    "egress",
                    vec![to_pods, to_ns],
                    vec![port(8080u16, Some("TCP"))],
                )];
                if rng.chance(0.5) {
                    egress.push(rule("egress", vec![ip_block("10.0.0.0/8", &[])], vec![]));
                }
                let pod_selector = if rng.chance(0.3) {
                    // Mixed selector: matchLabels + matchExpressions.
                    Obj::new()
                        .with("matchExpressions", arr([expr("tier", "NotIn", &["batch"])]))
                        .with("matchLabels", Obj::new().with("app", a))
                } else {
                    Obj::new().with("matchExpressions", pod_exprs)
                };
                let spec = Obj::new()
                    .with("egress", egress)
                    .with("podSelector", pod_selector)
                    .with("policyTypes", policy_types(&["Egress"]));
                ("tier-egress".into(), spec)
            }
            6 => {
                let a = app(&mut rng);
                (
                    format!("allow-nodeports-{a}"),
                    Obj::new()
                        .with(
                            "egress",
                            arr([rule(
                                "egress",
                                vec![ip_block("10.0.0.0/8", &[])],
                                vec![
                                    port(30000u16, Some("TCP")).with("endPort", 32767u16),
                                    port(8000u16, Some("TCP")).with("endPort", 8100u16),
                                ],
                            )]),
                        )
                        .with("podSelector", sel(a))
                        .with("policyTypes", policy_types(&["Egress"])),
                )
            }
            7 => {
                let ports = if rng.chance(0.5) {
                    vec![port(514u16, Some("UDP")), port(3868u16, Some("SCTP"))]
                } else {
                    vec![port(123u16, Some("UDP"))]
                };
                (
                    "allow-syslog-ntp".into(),
                    Obj::new()
                        .with(
                            "egress",
                            arr([rule("egress", vec![ip_block("192.168.0.0/16", &[])], ports)]),
                        )
                        .with("podSelector", all())
                        .with("policyTypes", policy_types(&["Egress"])),
                )
            }
            8 => {
                let a = app(&mut rng);
                let b = app(&mut rng);
                let proto = if rng.chance(0.7) { Some("TCP") } else { None };
                (
                    format!("allow-named-ports-{a}"),
                    Obj::new()
                        .with(
                            "egress",
                            arr([rule(
                                "egress",
                                vec![pod_peer("app", b)],
                                vec![port("http", proto), port("metrics", proto)],
                            )]),
                        )
                        .with("podSelector", sel(a))
                        .with("policyTypes", policy_types(&["Egress"])),
                )
            }
            9 => {
                let a = app(&mut rng);
                let (cidr, ports) = if rng.chance(0.5) {
                    ("169.254.0.0/16", vec![])
                } else {
                    ("169.254.169.254/32", vec![port(80u16, Some("TCP"))])
                };
                (
                    format!("allow-metadata-{a}"),
                    Obj::new()
                        .with(
                            "egress",
                            arr([rule("egress", vec![ip_block(cidr, &[])], ports)]),
                        )
                        .with("podSelector", sel(a))
                        .with("policyTypes", policy_types(&["Egress"])),
                )
            }
            10 => {
                let a = app(&mut rng);
                let b = app(&mut rng);
                let team = rng.pick(TEAMS).to_string();
                let peer = ns_peer("team", team).with(
                    "podSelector",
                    Obj::new().with("matchLabels", Obj::new().with("app", b)),
                );
                let mut to = vec![peer];
                if rng.chance(0.4) {
                    to.push(Obj::new().with("namespaceSelector", Obj::new()));
                }
                let mut spec = Obj::new()
                    .with(
                        "egress",
                        arr([rule("egress", to.clone(), vec![port(8080u16, Some("TCP"))])]),
                    )
                    .with("ingress", arr([rule("ingress", to, vec![])]))
                    .with("podSelector", sel(a.clone()));
                if rng.chance(0.8) {
                    spec.set("policyTypes", policy_types(&["Ingress", "Egress"]));
                }
                (format!("cross-namespace-{a}"), spec)
            }
            _ => {
                let selector = if rng.chance(0.5) {
                    all()
                } else {
                    sel(app(&mut rng))
                };
                (
                    "allow-all-egress".into(),
                    Obj::new()
                        .with("egress", arr([Obj::new()]))
                        .with("podSelector", selector)
                        .with("policyTypes", policy_types(&["Egress"])),
                )
            }
        };
        let name = unique(&mut names, &base);
        let last_applied = cfg.noise == Noise::Full && rng.chance(0.05);
        let annotations = with_last_applied(
            Obj::new(),
            last_applied,
            &Obj::new()
                .with("apiVersion", "networking.k8s.io/v1")
                .with("kind", "NetworkPolicy")
                .with(
                    "metadata",
                    Obj::new()
                        .with("name", name.clone())
                        .with("namespace", ns.name.clone()),
                )
                .with("spec", spec.clone()),
        );
        let meta = Meta {
            full: cfg.noise == Noise::Full,
            name,
            namespace: Some(&ns.name),
            created: ns.created + rng.range(60, 90 * DAY as u64) as i64,
            labels: None,
            annotations: Some(annotations),
            owner: None,
            generation: Some(1),
            generate_name: None,
            uid: rng.uuid(),
        }
        .build(&mut rng);
        let v: V = object("networking.k8s.io/v1", "NetworkPolicy", meta)
            .with("spec", spec)
            .into();
        out.emit("NetworkPolicy", &v)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_exact() {
        assert_eq!(split_exact(10, &[1, 1, 1]).iter().sum::<usize>(), 10);
        assert_eq!(split_exact(7, &[0, 0]), vec![3, 4]);
        assert_eq!(split_exact(5, &[0, 3, 0]), vec![0, 5, 0]);
        assert!(split_exact(0, &[]).is_empty());
    }

    #[test]
    fn timestamps() {
        assert_eq!(timestamp(BASE_TIME), "2024-01-01T00:00:00Z");
        assert_eq!(timestamp(951_782_400 + 3661), "2000-02-29T01:01:01Z");
        assert_eq!(timestamp(BASE_TIME + 365 * DAY), "2024-12-31T00:00:00Z");
    }
}
