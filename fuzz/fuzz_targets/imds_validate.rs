//! `imdsguard_core::imds::validate` on arbitrary requests (see `imdsguard_fuzz::Request`
//! for the input format). Properties: it never panics; what it accepts satisfies every
//! rule it documents (one `Metadata: true`, no `X-Forwarded-For`, a known path and an
//! allowed method, no repeated parameter, a supported api-version where one is needed,
//! a valid resource and at most one identity selector for tokens); every rejection has
//! an error status and a JSON body.
#![no_main]

use imdsguard_core::imds::{
    IDENTITY_SELECTOR_PARAMS, ImdsApi, Method, Query, is_valid_resource, validate,
};
use imdsguard_fuzz::Request;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(req) = Request::decode(data) else {
        return;
    };
    // As a server hands them over: the path and the raw query of the target.
    let (path, query) = match req.target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (req.target, None),
    };
    match validate(req.method, path, query, req.headers.iter().copied()) {
        Ok(ok) => {
            let metadata: Vec<&[u8]> = req
                .headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case("metadata"))
                .map(|(_, v)| *v)
                .collect();
            assert_eq!(
                metadata,
                [b"true".as_slice()],
                "accepted without one Metadata: true"
            );
            assert!(
                !req.headers
                    .iter()
                    .any(|(n, _)| n.eq_ignore_ascii_case("x-forwarded-for")),
                "accepted with X-Forwarded-For"
            );
            assert_ne!(ok.endpoint, ImdsApi::Unknown, "accepted an unknown path");
            assert_eq!(Method::parse(req.method), Some(ok.method));
            assert!(
                ok.endpoint.allows(ok.method),
                "{} on {}",
                req.method,
                ok.endpoint
            );
            assert_eq!(ok.query, Query::parse(query));
            assert_eq!(ok.query.repeated(), None, "accepted a repeated parameter");
            if ok.endpoint.requires_api_version() {
                let v = ok
                    .api_version
                    .as_deref()
                    .expect("accepted without api-version");
                assert!(
                    ok.endpoint.accepts_api_version(v),
                    "accepted api-version {v}"
                );
            }
            if ok.endpoint != ImdsApi::Instance {
                assert!(ok.instance_path.is_empty());
            }
            assert_eq!(ok.token.is_some(), ok.endpoint == ImdsApi::IdentityToken);
            if let Some(t) = &ok.token {
                assert!(
                    is_valid_resource(&t.resource),
                    "accepted resource {:?}",
                    t.resource
                );
                let selectors = IDENTITY_SELECTOR_PARAMS
                    .iter()
                    .filter(|p| ok.query.get_non_empty(p).is_some())
                    .count();
                assert!(selectors <= 1, "accepted {selectors} identity selectors");
                assert_eq!(t.selector.is_some(), selectors == 1);
            }
        }
        Err(e) => {
            assert!((400..600).contains(&e.status()), "status {}", e.status());
            assert!(e.body().is_object(), "error body {}", e.body());
            let _ = e.body_string();
        }
    }
});
