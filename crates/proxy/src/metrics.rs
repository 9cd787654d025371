//! Prometheus metrics (prometheus-client, OpenMetrics text on the admin listener).
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `imdsguard_proxy_decisions_total` | `namespace`, `endpoint`, `outcome` | one per request: `allow`, `deny`, `would_deny` (denied by the rules but forwarded: a dry run), `invalid` (IMDS's own 4xx, answered by the proxy), `throttled` (the pod's rate), `upstream-error` |
//! | `imdsguard_proxy_request_duration_seconds` | `outcome` | request latency inside the proxy, upstream included |
//! | `imdsguard_proxy_upstream_duration_seconds` | `endpoint` | upstream exchange latency |
//! | `imdsguard_proxy_upstream_errors_total` | `kind` | `connect`, `timeout`, `io`, `too-large`, `bad-document`, `bad-error` (an error answer not in IMDS's shapes) |
//! | `imdsguard_proxy_redactions_total` | `namespace` | instance answers with fields removed |
//! | `imdsguard_proxy_rules` | | rules loaded |
//! | `imdsguard_proxy_pods` | | addresses in the pod index |
//! | `imdsguard_proxy_reloads_total` | `file`, `result` | rules / pods reloads, `ok` or `error` |
//! | `imdsguard_proxy_open_connections` | | client connections open |
//! | `imdsguard_proxy_connections_refused_total` | `reason`: `per-source` | connections closed on accept |
//! | `imdsguard_proxy_throttled_total` | `class`: `general`, `identity` | requests answered 429 for the caller's rate |
//! | `imdsguard_proxy_host_caller_lookups_total` | `result`: `pod`, `unknown-pod-cgroup`, `node`, `no-socket`, `error` | callers the pod index does not know, looked up by their socket's cgroup |
//! | `imdsguard_log_dropped_lines_total` | | log lines (decision records included) the log writer had to drop, its queue full (`imdsguard proxy`) |
//! | `imdsguard_blocked_packets_total` | `destination` | packets the node's nft rules dropped (counted by the agent) |

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    namespace: String,
    endpoint: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NamespaceLabels {
    namespace: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    file: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabels {
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DestinationLabels {
    destination: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// 50 µs to ~6.5 s, doubling.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 18))
}

/// A counter kept elsewhere, read when the metrics are encoded.
#[derive(Debug)]
struct ReadCounter {
    name: &'static str,
    help: &'static str,
    read: fn() -> u64,
}

impl Collector for ReadCounter {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counter = ConstCounter::new((self.read)());
        let metric =
            encoder.encode_descriptor(self.name, self.help, None, counter.metric_type())?;
        counter.encode(metric)
    }
}

struct Inner {
    registry: Mutex<Registry>,
    decisions: Family<DecisionLabels, Counter>,
    latency: Histograms<OutcomeLabels>,
    upstream_latency: Histograms<EndpointLabels>,
    upstream_errors: Family<KindLabels, Counter>,
    redactions: Family<NamespaceLabels, Counter>,
    rules: Gauge,
    pods: Gauge,
    reloads: Family<ReloadLabels, Counter>,
    connections: Gauge,
    refused: Family<ReasonLabels, Counter>,
    throttled: Family<ClassLabels, Counter>,
    host_callers: Family<ResultLabels, Counter>,
    blocked_packets: Family<DestinationLabels, Counter>,
}

/// The proxy's metrics. Cheap to clone; every clone records into the same registry.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// A fresh registry (prefix `imdsguard`) holding every metric of the table above.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("imdsguard");
        let decisions = Family::<DecisionLabels, Counter>::default();
        let latency: Histograms<OutcomeLabels> = Family::new_with_constructor(latency_histogram);
        let upstream_latency: Histograms<EndpointLabels> =
            Family::new_with_constructor(latency_histogram);
        let upstream_errors = Family::<KindLabels, Counter>::default();
        let redactions = Family::<NamespaceLabels, Counter>::default();
        let rules = Gauge::default();
        let pods = Gauge::default();
        let reloads = Family::<ReloadLabels, Counter>::default();
        let connections = Gauge::default();
        let refused = Family::<ReasonLabels, Counter>::default();
        let throttled = Family::<ClassLabels, Counter>::default();
        let blocked_packets = Family::<DestinationLabels, Counter>::default();
        let host_callers = Family::<ResultLabels, Counter>::default();
        registry.register(
            "proxy_decisions",
            "Requests decided by the proxy, by caller namespace, IMDS endpoint and outcome (allow, deny, would_deny, invalid, throttled, upstream-error)",
            decisions.clone(),
        );
        registry.register(
            "proxy_request_duration_seconds",
            "Time from request to answer inside the proxy, upstream included",
            latency.clone(),
        );
        registry.register(
            "proxy_upstream_duration_seconds",
            "Time of the exchange with the upstream metadata service",
            upstream_latency.clone(),
        );
        registry.register(
            "proxy_upstream_errors",
            "Requests the upstream did not answer usably (connect, timeout, io, too-large, bad-document, bad-error)",
            upstream_errors.clone(),
        );
        registry.register(
            "proxy_redactions",
            "Instance-document answers with fields removed, by caller namespace",
            redactions.clone(),
        );
        registry.register("proxy_rules", "Access rules loaded", rules.clone());
        registry.register(
            "proxy_pods",
            "Source addresses in the pod index",
            pods.clone(),
        );
        registry.register(
            "proxy_reloads",
            "Reloads of the rules and pods files, by result",
            reloads.clone(),
        );
        registry.register(
            "proxy_open_connections",
            "Client connections open",
            connections.clone(),
        );
        registry.register(
            "proxy_connections_refused",
            "Client connections closed as soon as accepted, by reason (per-source: the source address held its maximum)",
            refused.clone(),
        );
        registry.register(
            "proxy_throttled",
            "Requests answered 429 because the calling pod (or unknown source) exceeded its rate, by IMDS rate class",
            throttled.clone(),
        );
        registry.register(
            "proxy_host_caller_lookups",
            "Callers from addresses the pod index does not know, looked up by their socket's cgroup, by result (pod: a known hostNetwork pod, unknown-pod-cgroup: a pod cgroup no known pod owns, node: a process outside the pod cgroups, no-socket: not a socket of this host, error)",
            host_callers.clone(),
        );
        registry.register(
            "blocked_packets",
            "Packets to metadata endpoints dropped by imdsguard's nft rules (the table's drop counters, read by the agent), by destination",
            blocked_packets.clone(),
        );
        Metrics {
            inner: Arc::new(Inner {
                registry: Mutex::new(registry),
                decisions,
                latency,
                upstream_latency,
                upstream_errors,
                redactions,
                rules,
                pods,
                reloads,
                connections,
                refused,
                throttled,
                host_callers,
                blocked_packets,
            }),
        }
    }

    /// The registry, to add metrics of one's own (the agent's); encoding takes the
    /// same lock.
    pub fn registry(&self) -> MutexGuard<'_, Registry> {
        self.inner
            .registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Counts `n` packets to `destination` dropped by the node's nft rules, read from
    /// the table's drop counters (`blocked`, `spoofed`) by the agent.
    pub fn record_blocked_packets(&self, destination: &str, n: u64) {
        self.inner
            .blocked_packets
            .get_or_create(&DestinationLabels {
                destination: destination.to_string(),
            })
            .inc_by(n);
    }

    /// Exports `imdsguard_log_dropped_lines_total`: log lines (decision records
    /// included) dropped because the log writer's queue was full, as `dropped` reads
    /// it at each scrape (the binary's log writer counts them; call once).
    pub fn count_log_drops(&self, dropped: fn() -> u64) {
        self.registry()
            .register_collector(Box::new(ReadCounter {
                name: "log_dropped_lines",
                help: "Log lines (decision records included) dropped because the log writer's queue was full",
                read: dropped,
            }));
    }

    /// Counts a reload of `file` (`rules` or `pods`).
    pub fn record_reload(&self, file: &'static str, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.inner
            .reloads
            .get_or_create(&ReloadLabels { file, result })
            .inc();
    }

    /// The OpenMetrics text of every registered metric.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8192);
        let registry = self.registry();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }

    pub(crate) fn decision(
        &self,
        namespace: &str,
        endpoint: &'static str,
        outcome: &'static str,
        latency: Duration,
    ) {
        self.inner
            .decisions
            .get_or_create(&DecisionLabels {
                namespace: namespace.to_string(),
                endpoint,
                outcome,
            })
            .inc();
        self.inner
            .latency
            .get_or_create(&OutcomeLabels { outcome })
            .observe(latency.as_secs_f64());
    }

    pub(crate) fn upstream(&self, endpoint: &'static str, latency: Duration) {
        self.inner
            .upstream_latency
            .get_or_create(&EndpointLabels { endpoint })
            .observe(latency.as_secs_f64());
    }

    pub(crate) fn upstream_error(&self, kind: &'static str) {
        self.inner
            .upstream_errors
            .get_or_create(&KindLabels { kind })
            .inc();
    }

    pub(crate) fn redaction(&self, namespace: &str) {
        self.inner
            .redactions
            .get_or_create(&NamespaceLabels {
                namespace: namespace.to_string(),
            })
            .inc();
    }

    pub(crate) fn set_rules(&self, n: usize) {
        self.inner.rules.set(n as i64);
    }

    pub(crate) fn set_pods(&self, n: usize) {
        self.inner.pods.set(n as i64);
    }

    pub(crate) fn connection_opened(&self) {
        self.inner.connections.inc();
    }

    pub(crate) fn connection_closed(&self) {
        self.inner.connections.dec();
    }

    pub(crate) fn connection_refused(&self, reason: &'static str) {
        self.inner
            .refused
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub(crate) fn host_caller_lookup(&self, result: &'static str) {
        self.inner
            .host_callers
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    pub(crate) fn throttled(&self, class: &'static str) {
        self.inner
            .throttled
            .get_or_create(&ClassLabels { class })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_every_family() {
        let m = Metrics::new();
        m.decision(
            "payments",
            "identity-token",
            "deny",
            Duration::from_micros(80),
        );
        m.upstream("instance", Duration::from_millis(2));
        m.upstream_error("connect");
        m.record_blocked_packets("imds", 3);
        m.record_reload("rules", true);
        m.set_rules(4);
        m.connection_refused("per-source");
        m.throttled("identity");
        m.host_caller_lookup("unknown-pod-cgroup");
        m.decision("-", "versions", "would_deny", Duration::from_micros(80));
        let text = m.encode();
        for want in [
            r#"imdsguard_proxy_decisions_total{namespace="payments",endpoint="identity-token",outcome="deny"} 1"#,
            r#"imdsguard_proxy_request_duration_seconds_bucket{le="0.0001",outcome="deny"} 1"#,
            r#"imdsguard_proxy_upstream_errors_total{kind="connect"} 1"#,
            r#"imdsguard_blocked_packets_total{destination="imds"} 3"#,
            r#"imdsguard_proxy_reloads_total{file="rules",result="ok"} 1"#,
            "imdsguard_proxy_rules 4",
            r#"imdsguard_proxy_connections_refused_total{reason="per-source"} 1"#,
            r#"imdsguard_proxy_throttled_total{class="identity"} 1"#,
            r#"imdsguard_proxy_host_caller_lookups_total{result="unknown-pod-cgroup"} 1"#,
            r#"imdsguard_proxy_decisions_total{namespace="-",endpoint="versions",outcome="would_deny"} 1"#,
            "# EOF",
        ] {
            assert!(text.contains(want), "{want} missing in\n{text}");
        }
    }
}
