//! The controller's Prometheus metrics (`/metrics` on the admin listener).

use std::sync::Mutex;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

/// Every metric, registered under `imdsguard_controller_`.
pub struct Metrics {
    registry: Mutex<Registry>,
    writes: Family<Labels, Counter>,
    reconciles: Family<Labels, Counter>,
    duration: Histogram,
    managed: Gauge,
    leader: Gauge,
    conflicts: Family<Labels, Gauge>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("imdsguard_controller");
        let writes = Family::<Labels, Counter>::default();
        registry.register(
            "writes",
            "Write requests sent to the API server, by verb (apply, delete, status, event) and kind",
            writes.clone(),
        );
        let reconciles = Family::<Labels, Counter>::default();
        registry.register(
            "reconciles",
            "Reconciles run by the leader, by result (ok, error)",
            reconciles.clone(),
        );
        let duration = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        registry.register(
            "reconcile_duration_seconds",
            "How long one reconcile took",
            duration.clone(),
        );
        let managed = Gauge::default();
        registry.register(
            "managed_objects",
            "Objects the controller generated and keeps (after the last reconcile)",
            managed.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the Lease (and writes), else 0",
            leader.clone(),
        );
        let conflicts = Family::<Labels, Gauge>::default();
        registry.register(
            "conflicts",
            "Conflicts found by the last reconcile, by kind (reopens-target, expected-blocked, name-taken)",
            conflicts.clone(),
        );
        Metrics {
            registry: Mutex::new(registry),
            writes,
            reconciles,
            duration,
            managed,
            leader,
            conflicts,
        }
    }

    /// OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        encode(&mut out, &registry).expect("writing to a String cannot fail");
        out
    }

    /// Counts one write request.
    pub fn write(&self, verb: &str, kind: &str) {
        self.writes
            .get_or_create(&vec![
                ("verb".into(), verb.into()),
                ("kind".into(), kind.into()),
            ])
            .inc();
    }

    /// Write requests so far, all verbs and kinds.
    pub fn writes_total(&self) -> u64 {
        let mut total = 0;
        // Family has no iteration API: read the counts back from the text.
        for line in self.encode().lines() {
            if let Some(rest) = line.strip_prefix("imdsguard_controller_writes_total{")
                && let Some((_, n)) = rest.rsplit_once(' ')
            {
                total += n.parse::<u64>().unwrap_or(0);
            }
        }
        total
    }

    pub(crate) fn reconciled(&self, ok: bool, seconds: f64) {
        let result = if ok { "ok" } else { "error" };
        self.reconciles
            .get_or_create(&vec![("result".into(), result.into())])
            .inc();
        self.duration.observe(seconds);
    }

    pub(crate) fn set_managed(&self, n: usize) {
        self.managed.set(n as i64);
    }

    pub(crate) fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    pub(crate) fn set_conflicts(&self, kind: &str, n: usize) {
        self.conflicts
            .get_or_create(&vec![("kind".into(), kind.into())])
            .set(n as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_add_up_across_verbs_and_kinds() {
        let m = Metrics::new();
        assert_eq!(m.writes_total(), 0);
        m.write("apply", "NetworkPolicy");
        m.write("apply", "NetworkPolicy");
        m.write("delete", "NetworkPolicy");
        assert_eq!(m.writes_total(), 3);
        let text = m.encode();
        assert!(
            text.contains(
                "imdsguard_controller_writes_total{verb=\"apply\",kind=\"NetworkPolicy\"} 2"
            ),
            "{text}"
        );
    }
}
