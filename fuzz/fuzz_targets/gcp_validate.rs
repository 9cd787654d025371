//! `imdsguard_core::gcp::validate` on arbitrary requests (see `imdsguard_fuzz::Request`
//! for the input format). Properties: it never panics; what it accepts below `/` carries
//! exactly one `Metadata-Flavor: Google` and no `X-Forwarded-For` and is a `GET`; the
//! target the proxy sends upstream reads back as the same request (so a filter and the
//! server see one request); tokens, identity tokens and kube-env are always named by
//! `secret_kind`; every rejection is an error status with a body.
#![no_main]

use imdsguard_core::gcp::{GcpKind, GcpSecret, METADATA_FLAVOR, secret_kind, validate};
use imdsguard_fuzz::Request;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(req) = Request::decode(data) else {
        return;
    };
    let Some((path, query)) = req.origin_path_query() else {
        return;
    };
    let headers = || req.headers.iter().copied();
    match validate(req.method, path, query, headers()) {
        Ok(ok) => {
            assert!(
                !req.headers
                    .iter()
                    .any(|(n, _)| n.eq_ignore_ascii_case("x-forwarded-for")),
                "accepted with X-Forwarded-For"
            );
            if ok.kind != GcpKind::Discovery {
                let flavors: Vec<&[u8]> = req
                    .headers
                    .iter()
                    .filter(|(n, _)| n.eq_ignore_ascii_case(METADATA_FLAVOR))
                    .map(|(_, v)| *v)
                    .collect();
                assert_eq!(flavors, [b"Google".as_slice()], "{:?}", ok.kind);
                assert_eq!(req.method, "GET");
            }
            // What the proxy forwards is read as the same request.
            let target = ok.upstream_target();
            let (p, q) = match target.split_once('?') {
                Some((p, q)) => (p, Some(q)),
                None => (target.as_str(), None),
            };
            let again = validate(req.method, p, q, headers())
                .unwrap_or_else(|e| panic!("upstream target {target:?} refused: {e}"));
            assert_eq!(again.kind, ok.kind, "{target:?}");
            assert_eq!(again.segments, ok.segments, "{target:?}");
            assert_eq!(again.recursive, ok.recursive, "{target:?}");
            assert!(again.ignored_params.is_empty(), "{target:?}");
            assert_eq!(secret_kind(&again), secret_kind(&ok), "{target:?}");
            match ok.kind {
                GcpKind::Token { .. } => assert_eq!(secret_kind(&ok), Some(GcpSecret::AccessToken)),
                GcpKind::Identity { .. } => {
                    assert_eq!(secret_kind(&ok), Some(GcpSecret::IdentityToken))
                }
                GcpKind::Attribute { ref name, .. } if ok.kind.is_secret_attribute() => {
                    let want = if name == "kube-env" {
                        GcpSecret::KubeEnv
                    } else {
                        GcpSecret::SecretAttribute
                    };
                    assert_eq!(secret_kind(&ok), Some(want), "{target:?}")
                }
                _ => {}
            }
        }
        Err(e) => {
            assert!((400..=599).contains(&e.status()), "status {}", e.status());
            assert!(!e.body().is_empty(), "an error without a body");
        }
    }
});
