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

fn location(file: &str, line: usize) -> sarif::Location {
    let artifact = sarif::ArtifactLocation::builder()
        .uri(file.to_string())
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
