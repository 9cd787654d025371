//! `imdsguard_core::canon` (the proxy's request canonicalisation) on arbitrary requests
//! (see `imdsguard_fuzz::Request` for the input format). Properties:
//!
//! - it never panics, and a rejection says why in a short sentence;
//! - canonicalisation is idempotent: the canonical target canonicalises to itself;
//! - the proxy and IMDS read the canonical target alike: IMDS's own lenient reading
//!   (`imds::route`, `imds::Query::parse`) finds the endpoint and instance path the proxy
//!   decided on, and no repeated parameter;
//! - a request IMDS rejects is never accepted after canonicalising (the canonical form
//!   is rejected too), and a request both accept is the same request to IMDS (endpoint,
//!   method, instance path, api-version, format, token resource and identity).
#![no_main]

use imdsguard_core::canon::Canonicalizer;
use imdsguard_core::imds::{Query, route, validate};
use imdsguard_fuzz::Request;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(req) = Request::decode(data) else {
        return;
    };
    let canon = Canonicalizer::default();
    let _ = canon.check_headers(req.headers.iter().copied());
    let c = match canon.canonicalize(req.target) {
        Ok(c) => c,
        Err(rejection) => {
            assert!(!rejection.detail.is_empty(), "{rejection:?}");
            // The denial quotes at most a few dozen bytes of the request.
            assert!(rejection.detail.len() < 160, "{rejection:?}");
            return;
        }
    };

    // Idempotent.
    let target = c.target();
    let again = canon
        .canonicalize(&target)
        .unwrap_or_else(|e| panic!("canonical target {target:?} rejected: {e}"));
    assert_eq!(again, c, "canonicalising {target:?} changed it");

    // IMDS reads the forwarded target as the proxy decided it.
    let r = route(&c.path);
    assert_eq!(r.endpoint, c.endpoint, "{target:?}");
    assert_eq!(r.instance_path, c.instance_path, "{target:?}");
    let q = Query::parse(c.query.as_deref());
    assert_eq!(q.repeated(), None, "{target:?}");

    // Never turns a request IMDS rejects into one it accepts.
    let Some((raw_path, raw_query)) = req.origin_path_query() else {
        return;
    };
    let headers = || req.headers.iter().copied();
    let raw = validate(req.method, raw_path, raw_query, headers());
    let canonical = validate(req.method, &c.path, c.query.as_deref(), headers());
    match (raw, canonical) {
        (Err(e), Ok(_)) => panic!(
            "IMDS rejects {:?} ({e}), but accepts its canonical form {target:?}",
            req.target
        ),
        (Ok(a), Ok(b)) => {
            assert_eq!(a.endpoint, b.endpoint, "{target:?}");
            assert_eq!(a.method, b.method, "{target:?}");
            assert_eq!(a.instance_path, b.instance_path, "{target:?}");
            assert_eq!(a.api_version, b.api_version, "{target:?}");
            assert_eq!(a.format, b.format, "{target:?}");
            assert_eq!(a.token, b.token, "{target:?}");
        }
        _ => {}
    }
});
