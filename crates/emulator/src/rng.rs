//! A small seedable random source (SplitMix64): fault injection and fake token bytes.
//! Not cryptographic, and it need not be: nothing the emulator mints is a secret.

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// A shared, seedable pseudo-random source.
#[derive(Debug)]
pub struct Rng {
    state: Mutex<u64>,
}

impl Rng {
    /// A source seeded with `seed`, or with the clock and the process id when `None`.
    pub fn new(seed: Option<u64>) -> Rng {
        let seed = seed.unwrap_or_else(|| {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            (nanos as u64) ^ ((std::process::id() as u64) << 32)
        });
        Rng {
            state: Mutex::new(seed),
        }
    }

    /// The next 64 random bits.
    pub fn next_u64(&self) -> u64 {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        *s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = *s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `[0, 1)`.
    pub fn next_f64(&self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `p` (`p <= 0` never, `p >= 1` always).
    pub fn chance(&self, p: f64) -> bool {
        p >= 1.0 || (p > 0.0 && self.next_f64() < p)
    }

    /// `n` random bytes.
    pub fn bytes(&self, n: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(n + 8);
        while out.len() < n {
            out.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        out.truncate(n);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_sources_repeat() {
        let a = Rng::new(Some(7));
        let b = Rng::new(Some(7));
        assert_eq!(a.bytes(40), b.bytes(40));
        assert!(!Rng::new(Some(7)).chance(0.0));
        assert!(Rng::new(Some(7)).chance(1.0));
        let f = Rng::new(Some(1)).next_f64();
        assert!((0.0..1.0).contains(&f));
    }
}
