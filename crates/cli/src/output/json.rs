//! The JSON report: the core report plus what could not be read and what was skipped.

use std::collections::BTreeMap;
use std::io::Write;

use imdsguard_core::audit::Report;
use imdsguard_core::manifest::LoadError;
use serde::Serialize;

#[derive(Serialize)]
struct JsonError<'a> {
    file: &'a str,
    #[serde(skip_serializing_if = "imdsguard_core::model::no_line")]
    line: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    object: Option<&'a str>,
    message: String,
}

#[derive(Serialize)]
struct JsonReport<'a> {
    #[serde(flatten)]
    report: &'a Report,
    errors: Vec<JsonError<'a>>,
    skipped: &'a BTreeMap<String, usize>,
}

/// Writes the report as one JSON document.
pub fn write(
    out: &mut impl Write,
    report: &Report,
    errors: &[LoadError],
    skipped: &BTreeMap<String, usize>,
) -> std::io::Result<()> {
    let doc = JsonReport {
        report,
        errors: errors
            .iter()
            .map(|e| JsonError {
                file: &e.file,
                line: e.line,
                object: e.object.as_deref(),
                message: e.to_string(),
            })
            .collect(),
        skipped,
    };
    serde_json::to_writer_pretty(&mut *out, &doc)?;
    writeln!(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use imdsguard_core::manifest::parse_api_response;

    /// An error on an object read from the Kubernetes API has no line: the JSON names
    /// its source and leaves `line` out (a file's error keeps its line).
    #[test]
    fn errors_without_a_line_leave_it_out() {
        let bad = r#"{"kind":"NetworkPolicy","apiVersion":"networking.k8s.io/v1","metadata":{"name":"np","namespace":"a"},"spec":{"podSelector":{},"egress":[{"to":[{"ipBlock":{"cidr":"nonsense"}}]}]}}"#;
        let mut errors = parse_api_response("cluster c", bad).errors;
        errors.extend(imdsguard_core::manifest::parse("f.json", bad).errors);
        let report = imdsguard_core::audit::audit(
            &imdsguard_core::cluster::Cluster::build(vec![]),
            &imdsguard_core::audit::AuditOptions {
                targets: vec![],
                engine: None,
                list_limit: None,
                expected: None,
                signals: Default::default(),
            },
        );
        let mut out = Vec::new();
        write(&mut out, &report, &errors, &BTreeMap::new()).unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let e = &doc["errors"];
        assert_eq!(e[0]["file"], "cluster c/NetworkPolicy/a/np");
        assert!(e[0].get("line").is_none(), "{e}");
        assert!(
            e[0]["message"]
                .as_str()
                .unwrap()
                .starts_with("cluster c/NetworkPolicy/a/np: "),
            "{e}"
        );
        assert_eq!(e[1]["file"], "f.json");
        assert_eq!(e[1]["line"], 1);
    }
}
