//! `imdsguard_core::access::AccessRules::from_value` on arbitrary JSON: the reader of a
//! `MetadataAccessPolicy` object's `spec` as the API server hands it to the controller
//! and the agents (`imdsguard_kube::crd`), the same checks as a rules file. Properties:
//! it never panics; every error says what was wrong; accepted rules have unique,
//! unreserved names, at least one method and one path, and a token section exactly when
//! they grant the token endpoint (a refused object must never widen access by being
//! half-read).
#![no_main]

use imdsguard_core::access::AccessRules;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let rules = match AccessRules::from_value(value) {
        Ok(rules) => rules,
        Err(e) => {
            assert!(!e.to_string().is_empty(), "{e:?}");
            return;
        }
    };
    imdsguard_fuzz::check_accepted_rules(&rules);
});
