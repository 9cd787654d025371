//! `imdsguard_core::manifest::parse_api_response` (a page or object from a Kubernetes API
//! server, read by the live audit: untrusted, whatever the server or a proxy in between
//! sends) on arbitrary text. Properties: it never panics; every error names the origin
//! the caller gave; reading the same text twice gives the same objects, errors and
//! skipped kinds (the live audit's verdicts must not depend on the run).
#![no_main]

use imdsguard_core::manifest::parse_api_response;
use libfuzzer_sys::fuzz_target;

const ORIGIN: &str = "cluster fuzz";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let first = parse_api_response(ORIGIN, text);
    for e in &first.errors {
        assert!(
            e.file.starts_with(ORIGIN),
            "error not named after its origin: {e}"
        );
        assert!(!e.message.is_empty(), "an error says what was wrong");
    }
    let again = parse_api_response(ORIGIN, text);
    assert_eq!(first.objects.len(), again.objects.len());
    assert_eq!(first.skipped, again.skipped);
    let errors = |l: &imdsguard_core::manifest::Loaded| -> Vec<String> {
        l.errors.iter().map(|e| e.to_string()).collect()
    };
    assert_eq!(errors(&first), errors(&again));
});
