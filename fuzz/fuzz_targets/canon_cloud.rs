//! `imdsguard_core::canon` for AWS and GCP (`Canonicalizer::for_cloud`, what `imdsguard
//! proxy --cloud aws|gcp` reads a request target with) on arbitrary requests: the first
//! line's first byte picks the cloud (even: aws, odd: gcp) and is dropped; the rest is an
//! `imdsguard_fuzz::Request`. Properties:
//!
//! - it never panics, and a rejection says why in a short sentence;
//! - canonicalisation is idempotent;
//! - it never turns a request the cloud's metadata service rejects into one it accepts
//!   (`core::aws::validate` / `core::gcp::validate`, the rules the emulators answer
//!   with), and a request both accept is the same request: kind, segments, recursion,
//!   and above all the same secret (`secret_kind`), so no spelling launders a secret
//!   path into a plain one.
#![no_main]

use imdsguard_core::canon::{Canonicalizer, Limits, default_hosts};
use imdsguard_core::target::Cloud;
use imdsguard_core::{aws, gcp};
use imdsguard_fuzz::Request;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let cloud = if pick % 2 == 0 {
        Cloud::Aws
    } else {
        Cloud::Gcp
    };
    let Some(req) = Request::decode(rest) else {
        return;
    };
    let canon = Canonicalizer::for_cloud(cloud, Limits::default(), default_hosts(cloud));
    let _ = canon.check_headers(req.headers.iter().copied());
    let c = match canon.canonicalize(req.target) {
        Ok(c) => c,
        Err(rejection) => {
            assert!(!rejection.detail.is_empty(), "{rejection:?}");
            assert!(rejection.detail.len() < 160, "{rejection:?}");
            return;
        }
    };
    let target = c.target();
    let again = canon
        .canonicalize(&target)
        .unwrap_or_else(|e| panic!("canonical target {target:?} rejected: {e}"));
    assert_eq!(again, c, "canonicalising {target:?} changed it");

    let Some((raw_path, raw_query)) = req.origin_path_query() else {
        return;
    };
    let headers = || req.headers.iter().copied();
    match cloud {
        Cloud::Aws => {
            let raw = aws::validate(req.method, raw_path, raw_query, headers());
            let canonical = aws::validate(req.method, &c.path, c.query.as_deref(), headers());
            match (raw, canonical) {
                (Err(e), Ok(_)) => panic!(
                    "IMDS rejects {:?} ({e}), but accepts its canonical form {target:?}",
                    req.target
                ),
                (Ok(a), Ok(b)) => {
                    assert_eq!(a.kind, b.kind, "{target:?}");
                    assert_eq!(a.segments, b.segments, "{target:?}");
                    assert_eq!(aws::secret_kind(&a), aws::secret_kind(&b), "{target:?}");
                }
                _ => {}
            }
        }
        _ => {
            let raw = gcp::validate(req.method, raw_path, raw_query, headers());
            let canonical = gcp::validate(req.method, &c.path, c.query.as_deref(), headers());
            match (raw, canonical) {
                (Err(e), Ok(_)) => panic!(
                    "the metadata server rejects {:?} ({e}), but accepts its canonical form {target:?}",
                    req.target
                ),
                (Ok(a), Ok(b)) => {
                    assert_eq!(a.kind, b.kind, "{target:?}");
                    assert_eq!(a.segments, b.segments, "{target:?}");
                    assert_eq!(a.recursive, b.recursive, "{target:?}");
                    assert_eq!(gcp::secret_kind(&a), gcp::secret_kind(&b), "{target:?}");
                }
                _ => {}
            }
        }
    }
});
