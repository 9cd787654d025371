//! AWS IMDSv2 tokens bound to the pod that got them through this proxy.
//!
//! When the proxy forwards a token answer (`PUT /latest/api/token`), it records the
//! SHA-256 of the token (never the token) with the pod that asked and the token's
//! expiry. A `GET` carrying a token is then forwarded only for that pod, before the
//! expiry: a token read by another pod (from a shared volume, a log, another pod's
//! memory) is worth nothing through the proxy, and a token obtained from IMDS
//! directly (before the proxy redirected the pod) is not one it handed out either.
//! Such a request gets IMDS's own 401, so that AWS SDKs ask for a fresh token (through
//! the proxy, bound to the caller) as they do when a token expires.
//!
//! The book is bounded ([`MAX_TOKENS`]): expired tokens go first, then the ones
//! expiring soonest (their pods get a 401 and ask again).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use imdsguard_core::access::PodInfo;
use sha2::{Digest, Sha256};

/// Most tokens remembered at once.
pub(crate) const MAX_TOKENS: usize = 65_536;

/// Why a token is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The proxy never handed it out (or forgot it: restarted, or the book was full).
    Unknown,
    /// Handed out to another pod (`namespace/name`).
    OtherPod(String),
    /// Past its lifetime.
    Expired,
}

impl Refusal {
    /// A sentence for the decision record.
    pub(crate) fn reason(&self, pod: &PodInfo, fingerprint: &str) -> String {
        match self {
            Refusal::Unknown => format!(
                "the IMDSv2 token (sha256:{fingerprint}) was not issued to pod {} through this proxy",
                pod.id()
            ),
            Refusal::OtherPod(owner) => format!(
                "the IMDSv2 token (sha256:{fingerprint}) was issued to pod {owner}, not to pod {}",
                pod.id()
            ),
            Refusal::Expired => format!(
                "the IMDSv2 token (sha256:{fingerprint}) issued to pod {} has expired",
                pod.id()
            ),
        }
    }
}

struct Entry {
    /// `namespace/name` of the pod it was issued to.
    pod: String,
    expires: Instant,
}

/// The tokens handed out, by SHA-256.
#[derive(Default)]
pub(crate) struct TokenBook {
    entries: Mutex<HashMap<[u8; 32], Entry>>,
}

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

impl TokenBook {
    /// Records `token`, issued to `pod` now, living `ttl`.
    pub(crate) fn issue(&self, token: &[u8], pod: &PodInfo, ttl: Duration, now: Instant) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= MAX_TOKENS {
            entries.retain(|_, e| e.expires > now);
        }
        while entries.len() >= MAX_TOKENS {
            let Some(soonest) = entries
                .iter()
                .min_by_key(|(_, e)| e.expires)
                .map(|(k, _)| *k)
            else {
                break;
            };
            entries.remove(&soonest);
        }
        entries.insert(
            digest(token),
            Entry {
                pod: pod.id(),
                expires: now + ttl,
            },
        );
    }

    /// Whether `token` was issued to `pod` through this proxy and is still alive.
    pub(crate) fn check(&self, token: &str, pod: &PodInfo, now: Instant) -> Result<(), Refusal> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let key = digest(token.as_bytes());
        let Some(entry) = entries.get(&key) else {
            return Err(Refusal::Unknown);
        };
        if entry.expires <= now {
            entries.remove(&key);
            return Err(Refusal::Expired);
        }
        if entry.pod != pod.id() {
            return Err(Refusal::OtherPod(entry.pod.clone()));
        }
        Ok(())
    }

    /// How many tokens are remembered.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_good_for_its_pod_only_and_until_it_expires() {
        let book = TokenBook::default();
        let a = PodInfo::new("payments", "api-1");
        let b = PodInfo::new("web", "frontend-1");
        let now = Instant::now();
        book.issue(b"AQAEAtoken-a", &a, Duration::from_secs(60), now);
        assert_eq!(book.check("AQAEAtoken-a", &a, now), Ok(()));
        assert_eq!(
            book.check("AQAEAtoken-a", &b, now),
            Err(Refusal::OtherPod("payments/api-1".into()))
        );
        assert_eq!(book.check("AQAEAtoken-b", &a, now), Err(Refusal::Unknown));
        let later = now + Duration::from_secs(61);
        assert_eq!(book.check("AQAEAtoken-a", &a, later), Err(Refusal::Expired));
        assert_eq!(book.check("AQAEAtoken-a", &a, later), Err(Refusal::Unknown));
        // The reason names the fingerprint, never the token.
        let why = Refusal::OtherPod("payments/api-1".into()).reason(&b, "0123456789ab");
        assert!(
            why.contains("sha256:0123456789ab") && !why.contains("token-a"),
            "{why}"
        );
    }

    #[test]
    fn the_book_is_bounded() {
        let book = TokenBook::default();
        let a = PodInfo::new("a", "a");
        let now = Instant::now();
        for i in 0..MAX_TOKENS {
            book.issue(
                format!("t{i}").as_bytes(),
                &a,
                Duration::from_secs(10 + i as u64),
                now,
            );
        }
        book.issue(b"newest", &a, Duration::from_secs(5), now);
        assert_eq!(book.len(), MAX_TOKENS);
        // The one expiring soonest went.
        assert_eq!(book.check("t0", &a, now), Err(Refusal::Unknown));
        assert_eq!(book.check("newest", &a, now), Ok(()));
        assert_eq!(book.check("t1", &a, now), Ok(()));
    }
}
