//! `imdsguard_core::aws::validate` on arbitrary requests (see `imdsguard_fuzz::Request`
//! for the input format). Properties: it never panics; what it accepts keeps EC2 IMDS's
//! rules (`PUT` exactly on the token endpoint, with one lifetime header valued
//! 1..=21600 and no `X-Forwarded-For`; `GET` everywhere else); the canonical path the
//! proxy forwards reads back as the same request (so a filter and IMDS see one request);
//! the secret-bearing kinds are named by `secret_kind`; every rejection is an error
//! status with EC2's error page.
#![no_main]

use imdsguard_core::aws::{
    AwsKind, AwsMethod, SecretKind, TOKEN_TTL_HEADER, TOKEN_TTL_MAX, TOKEN_TTL_MIN, secret_kind,
    validate,
};
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
            assert_eq!(AwsMethod::parse(req.method), Some(ok.method));
            let is_token = matches!(ok.kind, AwsKind::Token { .. });
            assert_eq!(is_token, ok.method == AwsMethod::Put, "{:?}", ok.kind);
            if let AwsKind::Token { ttl } = ok.kind {
                assert!((TOKEN_TTL_MIN..=TOKEN_TTL_MAX).contains(&ttl), "ttl {ttl}");
                assert!(
                    !req.headers
                        .iter()
                        .any(|(n, _)| n.eq_ignore_ascii_case("x-forwarded-for")),
                    "token PUT accepted with X-Forwarded-For"
                );
                let ttl_headers = req
                    .headers
                    .iter()
                    .filter(|(n, _)| n.eq_ignore_ascii_case(TOKEN_TTL_HEADER))
                    .count();
                assert_eq!(
                    ttl_headers, 1,
                    "token PUT with {ttl_headers} lifetime headers"
                );
                assert!(ok.token.is_none(), "a token PUT carries no session token");
            }
            // What the proxy forwards is read as the same request.
            let canonical = ok.canonical_path();
            let again = validate(req.method, &canonical, None, headers())
                .unwrap_or_else(|e| panic!("canonical path {canonical:?} refused: {e}"));
            assert_eq!(again.kind, ok.kind, "{canonical:?}");
            assert_eq!(again.segments, ok.segments, "{canonical:?}");
            assert_eq!(again.trailing_slash, ok.trailing_slash, "{canonical:?}");
            let expected = match ok.kind {
                AwsKind::Credentials { .. } => Some(SecretKind::RoleCredentials),
                AwsKind::IdentityCredentials => Some(SecretKind::IdentityCredentials),
                AwsKind::UserData => Some(SecretKind::UserData),
                AwsKind::Token { .. } => Some(SecretKind::SessionToken),
                _ => None,
            };
            assert_eq!(secret_kind(&ok), expected);
            if let Some(tail) = ok.meta_data_path() {
                // Every spelling of a role's credentials is classified as them.
                if tail.len() == 3 && tail[0] == "iam" && tail[1] == "security-credentials" {
                    assert!(
                        matches!(ok.kind, AwsKind::Credentials { .. }),
                        "{:?} read as {:?}",
                        ok.segments,
                        ok.kind
                    );
                }
            }
        }
        Err(e) => {
            assert!((400..=599).contains(&e.status), "status {}", e.status);
            let body = e.body();
            assert!(
                body.contains(&e.status.to_string()),
                "error page without its status"
            );
        }
    }
});
