//! `--bench-allow N`: how long an allow-set change takes to be effective.
//!
//! In block mode, with the `web` pod not allowlisted, each round starts a thread in the
//! pod that opens a connection to 169.254.169.254:80 every few milliseconds (each
//! attempt waits 2 ms for the answer to its SYN: dropped SYNs time out, a passing one is
//! answered in well under a millisecond), then adds (azvweb, 10.244.0.11) to the allow
//! set and measures the time from just before the change until the pod's first
//! established connection. The pair is then removed and the round waits until the pod
//! is blocked again.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use imdsguard_node::Enforcer;
use imdsguard_node::sandbox::{Pod, tcp_check};
use serde::Serialize;

use crate::LabError;

/// Latencies of allow-set changes, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    /// Rounds measured.
    pub rounds: usize,
    /// `add_allowed` call (one `nft -j -f -` transaction): median.
    pub apply_median_ms: f64,
    /// `add_allowed` call: 95th percentile.
    pub apply_p95_ms: f64,
    /// From the change to the pod's first connection: median.
    pub effective_median_ms: f64,
    /// From the change to the pod's first connection: 95th percentile.
    pub effective_p95_ms: f64,
    /// From the change to the pod's first connection: worst.
    pub effective_max_ms: f64,
    /// `install` (whole-table replace, then the conntrack flush): median, for comparison.
    pub replace_median_ms: f64,
}

impl BenchResult {
    /// One paragraph.
    pub fn to_text(&self) -> String {
        format!(
            "allow-set change → rule active ({} rounds, block mode, pod web):\n  \
             effective (change → first connection): median {:.1} ms, p95 {:.1} ms, max {:.1} ms\n  \
             nft transaction (add_allowed call):    median {:.1} ms, p95 {:.1} ms\n  \
             install (whole table + conntrack):    median {:.1} ms",
            self.rounds,
            self.effective_median_ms,
            self.effective_p95_ms,
            self.effective_max_ms,
            self.apply_median_ms,
            self.apply_p95_ms,
            self.replace_median_ms,
        )
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Runs `rounds` rounds against `pod` (whose node-side interface is `iface`).
pub(crate) fn allow_latency(
    enforcer: &mut Enforcer,
    pod: &Pod,
    target: SocketAddr,
    rounds: u32,
) -> Result<BenchResult, LabError> {
    let iface = pod.spec().ingress_iface();
    let addr = std::net::IpAddr::V4(pod.spec().addr);
    let mut apply = Vec::new();
    let mut effective = Vec::new();
    let mut replace = Vec::new();
    let attempt = Duration::from_millis(2);
    for _ in 0..rounds {
        // Blocked to start with.
        let blocked = pod
            .netns()
            .run(move || !tcp_check(target, Duration::from_millis(100)).connected())?;
        if !blocked {
            return Err(LabError::Lab(format!(
                "bench: {} reaches {target} before the change",
                pod.name()
            )));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let watcher = pod.netns().spawn(move || {
            // A busy machine can be slow to connect even once allowed: short attempts
            // for a second (the measurement), longer ones after, for a while.
            let start = Instant::now();
            let deadline = start + Duration::from_secs(20);
            while !stop2.load(Ordering::Relaxed) && Instant::now() < deadline {
                let attempt = if start.elapsed() < Duration::from_secs(1) {
                    attempt
                } else {
                    Duration::from_millis(100)
                };
                if std::net::TcpStream::connect_timeout(&target, attempt).is_ok() {
                    return Some(Instant::now());
                }
            }
            None
        });
        std::thread::sleep(Duration::from_millis(20));
        let t0 = Instant::now();
        enforcer.add_allowed(&iface, addr)?;
        apply.push(ms(t0.elapsed()));
        let first = watcher
            .join()
            .map_err(|_| LabError::Lab("bench thread panicked".into()))??;
        stop.store(true, Ordering::Relaxed);
        match first {
            Some(t) => effective.push(ms(t.saturating_duration_since(t0))),
            None => {
                return Err(LabError::Lab(format!(
                    "bench: {} never connected after the change",
                    pod.name()
                )));
            }
        }
        enforcer.remove_allowed(&iface, addr)?;
        let t = Instant::now();
        enforcer.install()?;
        replace.push(ms(t.elapsed()));
    }
    for v in [&mut apply, &mut effective, &mut replace] {
        v.sort_by(f64::total_cmp);
    }
    Ok(BenchResult {
        rounds: effective.len(),
        apply_median_ms: percentile(&apply, 0.5),
        apply_p95_ms: percentile(&apply, 0.95),
        effective_median_ms: percentile(&effective, 0.5),
        effective_p95_ms: percentile(&effective, 0.95),
        effective_max_ms: effective.last().copied().unwrap_or(0.0),
        replace_median_ms: percentile(&replace, 0.5),
    })
}
