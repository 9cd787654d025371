//! `imdsguard_core::access::AccessRules::from_value` on arbitrary JSON: the reader of a
//! `MetadataAccessPolicy` object's `spec` as the API server hands it to the controller
//! and the agents (`imdsguard_kube::crd`), the same checks as a rules file. Properties:
//! it never panics; every error says what was wrong; accepted rules have unique,
//! unreserved names, at least one method and one path, and a token section exactly when
//! they grant the token endpoint (a refused object must never widen access by being
//! half-read).
#![no_main]

use imdsguard_core::access::{AccessRules, RESERVED_RULE_NAMES};
use imdsguard_core::imds::ImdsApi;
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
    for (i, rule) in rules.rules().iter().enumerate() {
        assert!(!rule.name.is_empty());
        assert!(
            !RESERVED_RULE_NAMES.contains(&&*rule.name),
            "reserved name {}",
            rule.name
        );
        assert!(
            rules.rules()[..i].iter().all(|o| o.name != rule.name),
            "name {} used twice",
            rule.name
        );
        assert!(
            !rule.methods.is_empty() && !rule.paths.is_empty(),
            "{rule:?}"
        );
        assert!(!rule.subjects.is_empty(), "{rule:?}");
        let token_path = rule
            .paths
            .iter()
            .any(|g| g.covers(ImdsApi::IdentityToken, &[]));
        assert_eq!(rule.token.is_some(), token_path, "{rule:?}");
    }
});
