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
//! The book is bounded twice. Each pod keeps at most [`MAX_PER_POD`] live tokens (a
//! new one pushes out that pod's own token expiring soonest), so that a pod asking for
//! tokens in a loop cannot push other pods' tokens out: with up to 256 pods (the
//! kubelet's default is 110 per node) the whole book never fills. If it does fill ([`MAX_TOKENS`]), the
//! expired go first, then the ones expiring soonest (their pods get a 401 and ask
//! again). Issuing and checking cost O(log n); nothing scans the book.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use imdsguard_core::access::PodInfo;
use sha2::{Digest, Sha256};

/// Most tokens remembered at once.
pub(crate) const MAX_TOKENS: usize = 65_536;

/// Most live tokens remembered for one pod.
pub(crate) const MAX_PER_POD: usize = 256;

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

type Digest32 = [u8; 32];

struct Entry {
    /// `namespace/name` of the pod it was issued to.
    pod: String,
    expires: Instant,
}

/// The book's contents: each token once by digest, and the same tokens ordered by
/// expiry, for the whole book and per pod.
#[derive(Default)]
struct Book {
    entries: HashMap<Digest32, Entry>,
    by_expiry: BTreeSet<(Instant, Digest32)>,
    per_pod: HashMap<String, BTreeSet<(Instant, Digest32)>>,
}

impl Book {
    fn remove(&mut self, key: &Digest32) -> Option<Entry> {
        let entry = self.entries.remove(key)?;
        self.by_expiry.remove(&(entry.expires, *key));
        if let Some(own) = self.per_pod.get_mut(&entry.pod) {
            own.remove(&(entry.expires, *key));
            if own.is_empty() {
                self.per_pod.remove(&entry.pod);
            }
        }
        Some(entry)
    }

    /// The digest of `pod`'s token expiring soonest.
    fn soonest_of(&self, pod: &str) -> Option<Digest32> {
        self.per_pod.get(pod)?.first().map(|(_, k)| *k)
    }

    fn soonest(&self) -> Option<(Instant, Digest32)> {
        self.by_expiry.first().copied()
    }
}

/// The tokens handed out, by SHA-256.
#[derive(Default)]
pub(crate) struct TokenBook {
    book: Mutex<Book>,
}

fn digest(token: &[u8]) -> Digest32 {
    Sha256::digest(token).into()
}

impl TokenBook {
    fn lock(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records `token`, issued to `pod` now, living `ttl`.
    pub(crate) fn issue(&self, token: &[u8], pod: &PodInfo, ttl: Duration, now: Instant) {
        let mut book = self.lock();
        let key = digest(token);
        let id = pod.id();
        book.remove(&key);
        // The pod's own expired tokens, then its soonest, make room under its quota.
        while book
            .per_pod
            .get(&id)
            .is_some_and(|own| own.len() >= MAX_PER_POD)
        {
            let Some(k) = book.soonest_of(&id) else { break };
            book.remove(&k);
        }
        // A full book: the expired first, then whichever expires soonest.
        while book.entries.len() >= MAX_TOKENS {
            let Some((_, k)) = book.soonest() else { break };
            book.remove(&k);
        }
        // Expired tokens are dropped as they come up, so the book does not keep them.
        while let Some((expires, k)) = book.soonest() {
            if expires > now {
                break;
            }
            book.remove(&k);
        }
        let expires = now + ttl;
        book.by_expiry.insert((expires, key));
        book.per_pod
            .entry(id.clone())
            .or_default()
            .insert((expires, key));
        book.entries.insert(key, Entry { pod: id, expires });
    }

    /// Whether `token` was issued to `pod` through this proxy and is still alive.
    pub(crate) fn check(&self, token: &str, pod: &PodInfo, now: Instant) -> Result<(), Refusal> {
        let mut book = self.lock();
        let key = digest(token.as_bytes());
        let Some(entry) = book.entries.get(&key) else {
            return Err(Refusal::Unknown);
        };
        if entry.expires <= now {
            book.remove(&key);
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
        self.lock().entries.len()
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
    fn a_pod_keeps_at_most_its_quota_and_cannot_push_out_other_pods_tokens() {
        let book = TokenBook::default();
        let victim = PodInfo::new("payments", "api-1");
        let greedy = PodInfo::new("attacker", "loop");
        let now = Instant::now();
        book.issue(b"victim", &victim, Duration::from_secs(60), now);
        for i in 0..(MAX_PER_POD * 4) {
            book.issue(
                format!("g{i}").as_bytes(),
                &greedy,
                Duration::from_secs(600 + i as u64),
                now,
            );
        }
        assert_eq!(book.len(), MAX_PER_POD + 1);
        // The greedy pod lost its own soonest tokens; the victim's, expiring sooner
        // than all of them, is still good.
        assert_eq!(book.check("victim", &victim, now), Ok(()));
        assert_eq!(book.check("g0", &greedy, now), Err(Refusal::Unknown));
        let newest = format!("g{}", MAX_PER_POD * 4 - 1);
        assert_eq!(book.check(&newest, &greedy, now), Ok(()));
    }

    #[test]
    fn the_book_is_bounded_and_drops_the_soonest_when_full() {
        let book = TokenBook::default();
        let now = Instant::now();
        let pods: Vec<PodInfo> = (0..MAX_TOKENS / MAX_PER_POD)
            .map(|p| PodInfo::new("ns", &format!("pod-{p}")))
            .collect();
        for i in 0..MAX_TOKENS {
            book.issue(
                format!("t{i}").as_bytes(),
                &pods[i % pods.len()],
                Duration::from_secs(10 + i as u64),
                now,
            );
        }
        assert_eq!(book.len(), MAX_TOKENS);
        let newcomer = PodInfo::new("ns", "newcomer");
        book.issue(b"newest", &newcomer, Duration::from_secs(5), now);
        assert_eq!(book.len(), MAX_TOKENS);
        // The one expiring soonest went.
        assert_eq!(book.check("t0", &pods[0], now), Err(Refusal::Unknown));
        assert_eq!(book.check("newest", &newcomer, now), Ok(()));
        assert_eq!(book.check("t1", &pods[1], now), Ok(()));
    }

    #[test]
    fn expired_tokens_are_dropped_when_new_ones_come() {
        let book = TokenBook::default();
        let a = PodInfo::new("a", "a");
        let b = PodInfo::new("b", "b");
        let now = Instant::now();
        book.issue(b"short", &a, Duration::from_secs(1), now);
        book.issue(b"long", &a, Duration::from_secs(100), now);
        book.issue(
            b"other",
            &b,
            Duration::from_secs(100),
            now + Duration::from_secs(2),
        );
        assert_eq!(book.len(), 2);
        assert_eq!(book.check("long", &a, now), Ok(()));
        // Issuing the same token again rebinds it (one entry, the latest pod).
        book.issue(b"long", &b, Duration::from_secs(100), now);
        assert_eq!(book.len(), 2);
        assert_eq!(
            book.check("long", &a, now),
            Err(Refusal::OtherPod("b/b".into()))
        );
    }
}
