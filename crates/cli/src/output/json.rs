//! The JSON report: the core report plus what could not be read and what was skipped.

use std::collections::BTreeMap;
use std::io::Write;

use imdsguard_core::audit::Report;
use imdsguard_core::manifest::LoadError;
use serde::Serialize;

#[derive(Serialize)]
struct JsonError<'a> {
    file: &'a str,
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
