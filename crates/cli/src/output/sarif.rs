//! SARIF 2.1.0: one rule per finding kind, one result per finding, located at the
//! manifest file and line of the first object involved (so code scanning can show it).

use std::io::Write;

use imdsguard_core::audit::{FindingKind, ObjectRef, Report, Severity};
use imdsguard_core::manifest::LoadError;
use serde_sarif::sarif;

const INPUT_ERROR_RULE: &str = "input-error";

fn level(s: Severity) -> sarif::ResultLevel {
    match s {
        Severity::High => sarif::ResultLevel::Error,
        Severity::Medium => sarif::ResultLevel::Warning,
        Severity::Low | Severity::Info => sarif::ResultLevel::Note,
    }
}

/// `name` as a URI reference (SARIF's `artifactLocation.uri`): path characters kept,
/// everything else percent-encoded (a live object's `cluster CTX/Kind/ns/name` has a
/// space, a file path may have any byte).
fn uri_reference(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/!$&'()*+,;=:@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn location(file: &str, line: usize) -> sarif::Location {
    let artifact = sarif::ArtifactLocation::builder()
        .uri(uri_reference(file))
        .build();
    let physical = if line > 0 {
        sarif::PhysicalLocation::builder()
            .artifact_location(artifact)
            .region(sarif::Region::builder().start_line(line as i64).build())
            .build()
    } else {
        sarif::PhysicalLocation::builder()
            .artifact_location(artifact)
            .build()
    };
    sarif::Location::builder()
        .physical_location(physical)
        .build()
}

fn object_location(o: &ObjectRef) -> Option<sarif::Location> {
    o.source.as_ref().map(|s| {
        let mut loc = location(&s.file, s.line);
        let name = if o.namespace.is_empty() {
            format!("{} {}", o.kind, o.name)
        } else {
            format!("{} {}/{}", o.kind, o.namespace, o.name)
        };
        loc.message = Some(sarif::Message::builder().text(name).build());
        loc
    })
}

/// Builds the SARIF log.
pub fn build(report: &Report, errors: &[LoadError]) -> sarif::Sarif {
    let mut rules: Vec<sarif::ReportingDescriptor> = FindingKind::ALL
        .iter()
        .map(|k| {
            sarif::ReportingDescriptor::builder()
                .id(k.id())
                .short_description(
                    sarif::MultiformatMessageString::builder()
                        .text(k.id().replace('-', " "))
                        .build(),
                )
                .full_description(
                    sarif::MultiformatMessageString::builder()
                        .text(k.help())
                        .build(),
                )
                .default_configuration(
                    sarif::ReportingConfiguration::builder()
                        .level(serde_json::json!(level(k.severity()).to_string()))
                        .build(),
                )
                .build()
        })
        .collect();
    rules.push(
        sarif::ReportingDescriptor::builder()
            .id(INPUT_ERROR_RULE)
            .full_description(
                sarif::MultiformatMessageString::builder()
                    .text("A manifest document could not be read; it was left out of the audit.")
                    .build(),
            )
            .build(),
    );
    let rule_index = |id: &str| rules.iter().position(|r| r.id == id).unwrap_or(0) as i64;

    let mut results = Vec::new();
    for f in &report.findings {
        let mut locations: Vec<sarif::Location> =
            f.objects.iter().filter_map(object_location).collect();
        let related = if locations.len() > 1 {
            locations.split_off(1)
        } else {
            Vec::new()
        };
        let mut b = sarif::Result::builder()
            .rule_id(f.id)
            .rule_index(rule_index(f.id))
            .level(level(f.severity))
            .message(sarif::Message::builder().text(f.message.clone()).build())
            .build();
        if !locations.is_empty() {
            b.locations = Some(locations);
        }
        if !related.is_empty() {
            b.related_locations = Some(related);
        }
        // The deciding tier, object and rule of a reachable verdict.
        if let Some(d) = &f.decided_by
            && let Ok(serde_json::Value::Object(m)) = serde_json::to_value(d)
        {
            b.properties = Some(
                sarif::PropertyBag::builder()
                    .additional_properties(
                        m.into_iter().collect::<std::collections::BTreeMap<_, _>>(),
                    )
                    .build(),
            );
        }
        results.push(b);
    }
    for e in errors {
        results.push(
            sarif::Result::builder()
                .rule_id(INPUT_ERROR_RULE)
                .rule_index(rule_index(INPUT_ERROR_RULE))
                .level(sarif::ResultLevel::Error)
                .message(sarif::Message::builder().text(e.to_string()).build())
                .locations(vec![location(&e.file, e.line)])
                .build(),
        );
    }

    let driver = sarif::ToolComponent::builder()
        .name("imdsguard")
        .version(env!("CARGO_PKG_VERSION"))
        .information_uri("https://github.com/imdsguard/imdsguard")
        .rules(rules)
        .build();
    let run = sarif::Run::builder()
        .tool(sarif::Tool::builder().driver(driver).build())
        .results(results)
        .build();
    sarif::Sarif::builder()
        .version(sarif::Version::V2_1_0.to_string())
        .schema(sarif::SCHEMA_URL)
        .runs(vec![run])
        .build()
}

/// Writes the SARIF log.
pub fn write(out: &mut impl Write, report: &Report, errors: &[LoadError]) -> std::io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, &build(report, errors))?;
    writeln!(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use imdsguard_core::audit::{AuditOptions, DEFAULT_LIST_LIMIT, audit};
    use imdsguard_core::cluster::Cluster;
    use imdsguard_core::engine_detect::ClusterSignals;
    use imdsguard_core::manifest::{Loaded, parse, parse_api_response};
    use imdsguard_core::target::Cloud;

    /// A bare pod that reaches IMDS (a finding on it) and a NetworkPolicy that cannot be
    /// read (an input error on it).
    const POD: &str = r#"{"kind":"Pod","apiVersion":"v1","metadata":{"name":"web","namespace":"shop"},"spec":{"containers":[{"name":"c","image":"i"}]}}"#;
    const BAD_POLICY: &str = r#"{"kind":"NetworkPolicy","apiVersion":"networking.k8s.io/v1","metadata":{"name":"np","namespace":"shop"},"spec":{"podSelector":{},"egress":[{"to":[{"ipBlock":{"cidr":"nonsense"}}]}]}}"#;

    fn sarif_of(read: impl Fn(&str) -> Loaded) -> serde_json::Value {
        let mut loaded = read(POD);
        let bad = read(BAD_POLICY);
        assert_eq!(bad.errors.len(), 1, "{:?}", bad.errors);
        loaded.errors.extend(bad.errors);
        let report = audit(
            &Cluster::build(loaded.objects),
            &AuditOptions {
                targets: Cloud::Azure.targets(),
                engine: None,
                list_limit: Some(DEFAULT_LIST_LIMIT),
                expected: None,
                signals: ClusterSignals::default(),
            },
        );
        serde_json::to_value(build(&report, &loaded.errors)).unwrap()
    }

    /// The physical locations of the results of `rule`.
    fn locations<'a>(sarif: &'a serde_json::Value, rule: &str) -> Vec<&'a serde_json::Value> {
        sarif["runs"][0]["results"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["ruleId"] == rule)
            .flat_map(|r| r["locations"].as_array().unwrap())
            .map(|l| &l["physicalLocation"])
            .collect()
    }

    /// SARIF's region.startLine is at least 1: an object read from the Kubernetes API
    /// (line 0, no line) is located by its source alone, with no region; a manifest's
    /// object keeps its line.
    #[test]
    fn objects_without_a_line_have_no_region() {
        let live = sarif_of(|text| parse_api_response("cluster prod", text));
        let reach = locations(&live, "workload-reaches-target");
        assert!(!reach.is_empty(), "{live:#}");
        for loc in &reach {
            assert_eq!(
                loc["artifactLocation"]["uri"], "cluster%20prod/Pod/shop/web",
                "{loc}"
            );
            assert!(loc.get("region").is_none(), "{loc}");
        }
        let errors = locations(&live, INPUT_ERROR_RULE);
        assert_eq!(errors.len(), 1);
        assert_eq!(
            errors[0]["artifactLocation"]["uri"],
            "cluster%20prod/NetworkPolicy/shop/np"
        );
        assert!(errors[0].get("region").is_none(), "{}", errors[0]);
        let message = live["runs"][0]["results"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["ruleId"] == INPUT_ERROR_RULE)
            .unwrap()["message"]["text"]
            .as_str()
            .unwrap();
        assert!(
            message.starts_with("cluster prod/NetworkPolicy/shop/np: "),
            "{message}"
        );

        let files = sarif_of(|text| parse("m.json", text));
        for loc in locations(&files, "workload-reaches-target")
            .into_iter()
            .chain(locations(&files, INPUT_ERROR_RULE))
        {
            assert_eq!(loc["artifactLocation"]["uri"], "m.json", "{loc}");
            assert_eq!(loc["region"]["startLine"], 1, "{loc}");
        }
    }
}
