//! One caller's abuse costs only that caller: connections per source, and a request
//! rate per pod (a token bucket per pod and IMDS rate class; per source for callers the
//! pod index does not know).
//!
//! A source is an address, or, for a caller on the proxy's own host (a hostNetwork pod,
//! a node process: they all share the node's addresses), the address and its socket's
//! cgroup v2 id ([`SourceKey`]): one hostNetwork pod holding its maximum of connections
//! leaves the other pods and the kubelet theirs.
//!
//! Both tables hold only callers that are active: a source's entry goes with its last
//! connection, a bucket goes once it has refilled (an idle caller costs nothing).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use imdsguard_core::access::PodInfo;
use imdsguard_core::imds::RateClass;

/// Requests per second a pod may send to the proxy, per IMDS rate class, and the burst
/// above that rate. A rate of 0 is no limit for that class.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PodRate {
    /// Instance document, versions, scheduled events, load balancer, attested
    /// document (IMDS allows the whole VM 5 requests/s for these).
    pub general: f64,
    /// Managed-identity endpoints (IMDS allows the whole VM 20 requests/s).
    pub identity: f64,
    /// Requests a pod may send at once after being idle (the bucket's size).
    pub burst: u32,
}

impl Default for PodRate {
    /// 2 requests/s general, 5 requests/s identity, bursts of 10: below IMDS's limits
    /// for the whole VM (5 and 20), so that one pod at its limit leaves the others
    /// most of IMDS's budget; far above what an SDK that caches its tokens sends.
    fn default() -> Self {
        PodRate {
            general: 2.0,
            identity: 5.0,
            burst: 10,
        }
    }
}

impl PodRate {
    /// No limit at all.
    pub fn unlimited() -> PodRate {
        PodRate {
            general: 0.0,
            identity: 0.0,
            burst: 1,
        }
    }

    /// Why the rate is unusable, if it is.
    pub(crate) fn check(&self) -> Result<(), String> {
        for (name, r) in [("general", self.general), ("identity", self.identity)] {
            if !r.is_finite() || r < 0.0 {
                return Err(format!(
                    "the {name} pod rate must be a non-negative number of requests per second, not {r}"
                ));
            }
        }
        if self.burst == 0 {
            return Err("the pod burst must be at least 1".into());
        }
        Ok(())
    }

    fn of(&self, class: RateClass) -> f64 {
        match class {
            RateClass::General => self.general,
            RateClass::Identity => self.identity,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whose connections (and, for callers the pod index does not know, requests) count
/// together: a source address, or the sockets of one cgroup at that address (a caller
/// on the proxy's own host, found by its socket).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct SourceKey {
    ip: IpAddr,
    cgroup: Option<u64>,
}

impl SourceKey {
    /// The sockets of cgroup `cgroup` (when known) at `ip`, else all of `ip`.
    pub(crate) fn new(ip: IpAddr, cgroup: Option<u64>) -> SourceKey {
        SourceKey {
            ip: ip.to_canonical(),
            cgroup,
        }
    }

    /// The key of a connection from `ip`: by address for a known pod's address (no
    /// lookup) or when `lookup` finds no socket of this host or fails; else by address
    /// and the client socket's cgroup id, as `lookup` gives it.
    pub(crate) fn of_connection<E>(
        ip: IpAddr,
        known_pod: bool,
        lookup: impl FnOnce() -> Result<Option<u64>, E>,
    ) -> (SourceKey, Option<E>) {
        if known_pod {
            return (SourceKey::new(ip, None), None);
        }
        match lookup() {
            Ok(cgroup) => (SourceKey::new(ip, cgroup), None),
            Err(e) => (SourceKey::new(ip, None), Some(e)),
        }
    }

    /// The socket's cgroup id, when the key has one.
    pub(crate) fn cgroup(&self) -> Option<u64> {
        self.cgroup
    }
}

/// Counts open connections per source.
pub(crate) struct SourceLimiter {
    max: usize,
    open: Mutex<HashMap<SourceKey, usize>>,
}

/// One counted connection; dropping it gives the slot back.
pub(crate) struct SourceSlot {
    limiter: Arc<SourceLimiter>,
    key: SourceKey,
}

impl SourceLimiter {
    pub(crate) fn new(max: usize) -> Arc<SourceLimiter> {
        Arc::new(SourceLimiter {
            max,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for a new connection from `key`, or `None` when `key` holds its maximum.
    pub(crate) fn try_acquire(self: &Arc<Self>, key: SourceKey) -> Option<SourceSlot> {
        let mut open = lock(&self.open);
        let n = open.entry(key).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(SourceSlot {
            limiter: self.clone(),
            key,
        })
    }

    /// Sources with at least one connection open.
    #[cfg(test)]
    pub(crate) fn sources(&self) -> usize {
        lock(&self.open).len()
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut open = lock(&self.limiter.open);
        if let Some(n) = open.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// Who a bucket belongs to: a pod (all its addresses share it), or an unknown source.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Caller {
    Pod { namespace: String, name: String },
    Source(SourceKey),
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets per caller and rate class.
pub(crate) struct RateLimiter {
    rate: PodRate,
    buckets: Mutex<HashMap<(Caller, RateClass), Bucket>>,
    /// Past this many buckets, full (idle) ones are swept out.
    sweep_above: usize,
}

impl RateLimiter {
    pub(crate) fn new(rate: PodRate) -> RateLimiter {
        RateLimiter {
            rate,
            buckets: Mutex::new(HashMap::new()),
            sweep_above: 4096,
        }
    }

    /// Takes one request from the caller's bucket for `class` (the pod's, else the
    /// source's: its address, or its address and socket cgroup): `Ok`, or `Err` with
    /// the time until the next request would be accepted.
    pub(crate) fn check(
        &self,
        pod: Option<&PodInfo>,
        source: SourceKey,
        class: RateClass,
        now: Instant,
    ) -> Result<(), Duration> {
        let rate = self.rate.of(class);
        if rate <= 0.0 {
            return Ok(());
        }
        let burst = f64::from(self.rate.burst);
        let caller = match pod {
            Some(p) => Caller::Pod {
                namespace: p.namespace.clone(),
                name: p.name.clone(),
            },
            None => Caller::Source(source),
        };
        let mut buckets = lock(&self.buckets);
        if buckets.len() >= self.sweep_above {
            buckets.retain(|(_, c), b| {
                let r = self.rate.of(*c);
                b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * r < burst
            });
        }
        let b = buckets.entry((caller, class)).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / rate))
        }
    }

    /// Buckets held (callers active within their refill time).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        lock(&self.buckets).len()
    }
}

/// `Retry-After` in whole seconds, at least 1.
pub(crate) fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0).max(u64::from(wait.is_zero()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ns: &str, name: &str) -> PodInfo {
        PodInfo::new(ns, name)
    }

    fn addr(ip: &str) -> SourceKey {
        SourceKey::new(ip.parse().unwrap(), None)
    }

    #[test]
    fn sources_hold_at_most_their_maximum_and_get_slots_back() {
        let l = SourceLimiter::new(2);
        let a = addr("10.0.0.1");
        let b = addr("10.0.0.2");
        let s1 = l.try_acquire(a).unwrap();
        let _s2 = l.try_acquire(a).unwrap();
        assert!(l.try_acquire(a).is_none(), "a third from a");
        assert!(
            l.try_acquire(addr("::ffff:10.0.0.1")).is_none(),
            "the mapped form is the same source"
        );
        let _b1 = l.try_acquire(b).expect("another source is not affected");
        drop(s1);
        let _s3 = l.try_acquire(a).expect("a slot came back");
        drop((_s2, _s3, _b1));
        assert_eq!(l.sources(), 0, "no entry for sources without connections");
    }

    #[test]
    fn callers_on_this_host_count_by_their_sockets_cgroup() {
        let node: IpAddr = "10.0.0.4".parse().unwrap();
        let found = |id: u64| move || Ok::<_, &str>(Some(id));
        // A known pod's address: no lookup at all, the address is the key.
        let (key, err) = SourceKey::of_connection(node, true, || -> Result<_, &str> {
            panic!("no lookup for a known pod's address")
        });
        assert_eq!((key, err), (addr("10.0.0.4"), None));
        // Another address: the client socket's cgroup joins the key.
        let (pod_a, _) = SourceKey::of_connection(node, false, found(101));
        let (pod_b, _) = SourceKey::of_connection(node, false, found(202));
        assert_eq!(pod_a, SourceKey::new(node, Some(101)));
        assert_eq!(pod_a.cgroup(), Some(101));
        assert_ne!(pod_a, pod_b);
        assert_eq!(
            SourceKey::of_connection("::ffff:10.0.0.4".parse().unwrap(), false, found(101)).0,
            pod_a,
            "the mapped form is the same address"
        );
        // No socket of this host (a caller elsewhere), or a failed lookup: the address.
        let (none, err) = SourceKey::of_connection(node, false, || Ok::<_, &str>(None));
        assert_eq!((none, err), (addr("10.0.0.4"), None));
        let (failed, err) = SourceKey::of_connection(node, false, || Err("refused"));
        assert_eq!((failed, err), (addr("10.0.0.4"), Some("refused")));

        // One cgroup at its maximum leaves the others at the same address theirs.
        let l = SourceLimiter::new(2);
        let held = [l.try_acquire(pod_a).unwrap(), l.try_acquire(pod_a).unwrap()];
        assert!(l.try_acquire(pod_a).is_none(), "a third from pod a");
        let _b = l.try_acquire(pod_b).expect("pod b has its own slots");
        let _node = l
            .try_acquire(none)
            .expect("the address key has its own slots");
        drop(held);
        assert_eq!(l.sources(), 2);
    }

    #[test]
    fn buckets_are_per_pod_and_class_and_refill() {
        let r = RateLimiter::new(PodRate {
            general: 2.0,
            identity: 4.0,
            burst: 3,
        });
        let t0 = Instant::now();
        let ip = addr("10.0.0.1");
        let p = pod("a", "p");
        for _ in 0..3 {
            assert!(r.check(Some(&p), ip, RateClass::General, t0).is_ok());
        }
        let wait = r
            .check(Some(&p), ip, RateClass::General, t0)
            .expect_err("burst used up");
        assert_eq!(wait, Duration::from_millis(500));
        assert_eq!(retry_after_secs(wait), 1);
        // Another class, another pod, another address of the same pod.
        assert!(r.check(Some(&p), ip, RateClass::Identity, t0).is_ok());
        assert!(
            r.check(Some(&pod("a", "q")), ip, RateClass::General, t0)
                .is_ok()
        );
        let other_ip = addr("fd00::1");
        assert!(
            r.check(Some(&p), other_ip, RateClass::General, t0).is_err(),
            "a pod's addresses share its bucket"
        );
        // Unknown callers are counted by address.
        for _ in 0..3 {
            assert!(r.check(None, ip, RateClass::General, t0).is_ok());
        }
        assert!(r.check(None, ip, RateClass::General, t0).is_err());
        assert!(r.check(None, other_ip, RateClass::General, t0).is_ok());
        // Callers on this host: by address and socket cgroup.
        let node: IpAddr = "10.0.0.4".parse().unwrap();
        for _ in 0..3 {
            let key = SourceKey::new(node, Some(7));
            assert!(r.check(None, key, RateClass::General, t0).is_ok());
        }
        let cgroup_7 = SourceKey::new(node, Some(7));
        assert!(r.check(None, cgroup_7, RateClass::General, t0).is_err());
        let cgroup_8 = SourceKey::new(node, Some(8));
        assert!(
            r.check(None, cgroup_8, RateClass::General, t0).is_ok(),
            "another cgroup at the same address has its own bucket"
        );
        assert!(
            r.check(None, SourceKey::new(node, None), RateClass::General, t0)
                .is_ok()
        );
        // Half a second later one more request.
        let t1 = t0 + Duration::from_millis(500);
        assert!(r.check(Some(&p), ip, RateClass::General, t1).is_ok());
        assert!(r.check(Some(&p), ip, RateClass::General, t1).is_err());
    }

    #[test]
    fn idle_buckets_are_swept() {
        let mut r = RateLimiter::new(PodRate {
            general: 10.0,
            identity: 0.0,
            burst: 1,
        });
        r.sweep_above = 8;
        let t0 = Instant::now();
        for i in 0..8u8 {
            let ip = SourceKey::new(IpAddr::from([10, 0, 0, i]), None);
            assert!(r.check(None, ip, RateClass::General, t0).is_ok());
        }
        assert_eq!(r.len(), 8);
        assert!(
            r.check(None, addr("10.0.1.1"), RateClass::Identity, t0)
                .is_ok(),
            "rate 0: no limit and no bucket"
        );
        let later = t0 + Duration::from_secs(1);
        assert!(
            r.check(None, addr("10.0.1.1"), RateClass::General, later)
                .is_ok()
        );
        assert_eq!(r.len(), 1, "the refilled buckets went");
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(2)), 2);
        assert_eq!(retry_after_secs(Duration::from_millis(2001)), 3);
    }

    #[test]
    fn rates_are_checked() {
        assert!(PodRate::default().check().is_ok());
        assert!(PodRate::unlimited().check().is_ok());
        for bad in [
            PodRate {
                general: f64::NAN,
                ..PodRate::default()
            },
            PodRate {
                identity: -1.0,
                ..PodRate::default()
            },
            PodRate {
                burst: 0,
                ..PodRate::default()
            },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
    }
}
