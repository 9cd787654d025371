//! IMDS's rate limits (per class, token buckets) and concurrency limit, and the
//! injected faults.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use imdsguard_core::imds::RateClass;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Throttling, as IMDS applies it per VM.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Throttle {
    /// Whether throttling is on.
    pub enabled: bool,
    /// Requests per second for instance data and other non-identity paths (IMDS: 5).
    pub general_per_sec: f64,
    /// Requests per second for managed-identity paths (IMDS: 20).
    pub identity_per_sec: f64,
    /// Concurrent managed-identity requests (IMDS: 5).
    pub identity_concurrent: usize,
}

impl Throttle {
    /// IMDS's limits: 5/s general, 20/s and 5 concurrent for identity.
    pub const IMDS: Throttle = Throttle {
        enabled: true,
        general_per_sec: 5.0,
        identity_per_sec: 20.0,
        identity_concurrent: 5,
    };

    /// No throttling.
    pub fn disabled() -> Throttle {
        Throttle {
            enabled: false,
            ..Throttle::IMDS
        }
    }
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle::IMDS
    }
}

/// Faults injected into IMDS answers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Faults {
    /// Delay before each answer.
    pub delay: Duration,
    /// Share of requests answered with `fail_status` (0.0 to 1.0).
    pub fail_rate: f64,
    /// The status of injected failures (IMDS documents 410 and 500).
    pub fail_status: u16,
    /// Share of requests whose connection is closed without an answer (0.0 to 1.0).
    pub drop_rate: f64,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            delay: Duration::ZERO,
            fail_rate: 0.0,
            fail_status: 500,
            drop_rate: 0.0,
        }
    }
}

#[derive(Debug)]
struct Bucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: f64) -> Bucket {
        Bucket {
            rate,
            tokens: rate.max(1.0),
            last: Instant::now(),
        }
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        let capacity = self.rate.max(1.0);
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(capacity);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The limiter state of one emulator.
#[derive(Debug)]
pub(crate) struct Limiter {
    throttle: Throttle,
    general: Mutex<Bucket>,
    identity: Mutex<Bucket>,
    concurrent: Arc<Semaphore>,
}

/// Held while an identity request is answered.
pub(crate) struct Admission {
    _permit: Option<OwnedSemaphorePermit>,
}

impl Limiter {
    pub(crate) fn new(throttle: Throttle) -> Limiter {
        Limiter {
            throttle,
            general: Mutex::new(Bucket::new(throttle.general_per_sec)),
            identity: Mutex::new(Bucket::new(throttle.identity_per_sec)),
            concurrent: Arc::new(Semaphore::new(throttle.identity_concurrent)),
        }
    }

    /// Admits a request of `class`, or `None` when IMDS would answer 429.
    pub(crate) fn admit(&self, class: RateClass) -> Option<Admission> {
        if !self.throttle.enabled {
            return Some(Admission { _permit: None });
        }
        match class {
            RateClass::General => {
                let ok = self
                    .general
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take();
                ok.then_some(Admission { _permit: None })
            }
            RateClass::Identity => {
                let permit = self.concurrent.clone().try_acquire_owned().ok()?;
                let ok = self
                    .identity
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take();
                ok.then_some(Admission {
                    _permit: Some(permit),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_allow_a_burst_of_rate_then_refuse() {
        let l = Limiter::new(Throttle::IMDS);
        let admitted = (0..8)
            .filter(|_| l.admit(RateClass::General).is_some())
            .count();
        assert_eq!(admitted, 5);
        let off = Limiter::new(Throttle::disabled());
        assert!((0..100).all(|_| off.admit(RateClass::General).is_some()));
    }

    #[test]
    fn identity_concurrency_is_limited() {
        let l = Limiter::new(Throttle {
            identity_concurrent: 2,
            ..Throttle::IMDS
        });
        let a = l.admit(RateClass::Identity);
        let b = l.admit(RateClass::Identity);
        assert!(a.is_some() && b.is_some());
        assert!(l.admit(RateClass::Identity).is_none());
        drop(a);
        assert!(l.admit(RateClass::Identity).is_some());
    }
}
