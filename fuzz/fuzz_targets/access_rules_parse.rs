//! `imdsguard_core::access::AccessRules::parse` (the proxy's rules file) on arbitrary
//! text, and the rules it accepts evaluated against a fixed set of requests. Properties:
//! it never panics; every error says what was wrong; accepted rules have unique,
//! unreserved names, a token section exactly when they grant the token endpoint, and at
//! least one method and path; an allow names a rule that selects the pod, covers the
//! method and path, and (for a token) allows the resource and the identity; a denial
//! names its rule and says why.
#![no_main]

use std::collections::BTreeMap;
use std::sync::OnceLock;

use imdsguard_core::access::{AccessRules, Decision, PodInfo};
use imdsguard_core::canon::Canonicalizer;
use imdsguard_core::imds::{ImdsRequest, validate};
use libfuzzer_sys::fuzz_target;

/// Requests the proxy would pass to the rules (canonical and valid).
fn requests() -> &'static [ImdsRequest] {
    static REQUESTS: OnceLock<Vec<ImdsRequest>> = OnceLock::new();
    REQUESTS.get_or_init(|| {
        const TOKEN: &str = "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=";
        let targets = [
            ("GET", "/metadata/versions".to_string()),
            ("GET", "/metadata/instance?api-version=2021-02-01".to_string()),
            (
                "GET",
                "/metadata/instance/compute/location?api-version=2021-02-01&format=text".into(),
            ),
            (
                "GET",
                "/metadata/instance/compute/osProfile/customData?api-version=2021-02-01&format=text"
                    .into(),
            ),
            (
                "GET",
                "/metadata/instance/network/interface/0/ipv4?api-version=2021-02-01".into(),
            ),
            ("GET", "/metadata/attested/document?api-version=2020-09-01".into()),
            ("GET", "/metadata/identity/info?api-version=2018-02-01".into()),
            ("GET", format!("{TOKEN}https://management.azure.com/")),
            ("GET", format!("{TOKEN}https://vault.azure.net")),
            (
                "GET",
                format!(
                    "{TOKEN}https://management.azure.com/&client_id=2D7B9C41-6E83-4F1A-B5C2-8A9E0F3D1C67"
                ),
            ),
            (
                "GET",
                format!(
                    "{TOKEN}https://vault.azure.net&msi_res_id=/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/kv"
                ),
            ),
            ("GET", "/metadata/scheduledevents?api-version=2020-07-01".into()),
            ("POST", "/metadata/scheduledevents?api-version=2020-07-01".into()),
        ];
        let canon = Canonicalizer::default();
        targets
            .iter()
            .map(|(method, target)| {
                let c = canon
                    .canonicalize(target)
                    .unwrap_or_else(|e| panic!("fuzz harness: {target} rejected: {e}"));
                validate(method, &c.path, c.query.as_deref(), [("Metadata", "true")])
                    .unwrap_or_else(|e| panic!("fuzz harness: {method} {target} invalid: {e}"))
            })
            .collect()
    })
}

/// A pod each subject selects when its selector asks for labels only (plus one that
/// only `*` subjects select).
fn pods(rules: &AccessRules) -> Vec<PodInfo> {
    let pick = |list: &[String], otherwise: &str| {
        list.iter()
            .find(|s| s.as_str() != "*")
            .cloned()
            .unwrap_or_else(|| otherwise.to_string())
    };
    let mut pods = vec![PodInfo {
        namespace: "fuzz".into(),
        name: "nobody".into(),
        labels: BTreeMap::new(),
        service_account: "default".into(),
    }];
    for rule in rules.rules() {
        for s in &rule.subjects {
            pods.push(PodInfo {
                namespace: pick(&s.namespaces, "fuzz"),
                name: format!("{}-pod", rule.name),
                labels: s
                    .pod_selector
                    .as_ref()
                    .map(|sel| sel.match_labels.clone())
                    .unwrap_or_default(),
                service_account: pick(&s.service_accounts, "default"),
            });
        }
    }
    pods.truncate(16);
    pods
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let rules = match AccessRules::parse(text) {
        Ok(rules) => rules,
        Err(e) => {
            assert!(!e.to_string().is_empty(), "{e:?}");
            return;
        }
    };
    imdsguard_fuzz::check_accepted_rules(&rules);
    for pod in pods(&rules) {
        for req in requests() {
            match rules.evaluate(&pod, req) {
                Decision::Allow(allow) => {
                    let rule = rules
                        .rules()
                        .iter()
                        .find(|r| r.name == allow.rule)
                        .expect("an allow names one of the rules");
                    assert!(rule.selects(&pod), "{} allows an unselected pod", rule.name);
                    assert!(
                        rule.covers(req.method, req.endpoint, &req.instance_path),
                        "{} allows what it does not cover",
                        rule.name
                    );
                    if let Some(t) = &req.token {
                        let grant = rule.token.as_ref().expect("a token allow has a grant");
                        assert!(grant.allows_resource(&t.resource), "{}", rule.name);
                        assert!(grant.allows_identity(t.selector.as_ref()), "{}", rule.name);
                    }
                }
                Decision::Deny(deny) => {
                    assert!(!deny.rule.is_empty() && !deny.reason.is_empty(), "{deny:?}");
                }
            }
        }
    }
});
