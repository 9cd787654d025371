//! Cutting the tracked flows toward the protected endpoints with `conntrack`, so that
//! connections opened before the table (or the redirect) cannot go on. The argument
//! lists and the answer's reading are the core's ([`imdsguard_core::conntrack`]).

use std::net::IpAddr;

use imdsguard_core::conntrack::{conntrack_flush_args, parse_conntrack_deleted};
use imdsguard_core::target::Target;
use serde::Serialize;

use crate::{Exec, NodeError};

/// What flushing conntrack did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ConntrackOutcome {
    /// Flow entries deleted.
    pub deleted: u64,
    /// What could not be done (no `conntrack`, a failure); enforcement is in place anyway.
    pub warnings: Vec<String>,
}

/// Deletes the tracked flows toward `targets` (from `source` only, when given), so that
/// connections opened before the rules cannot go on. "0 flow entries" is not an error;
/// a missing `conntrack` is a warning.
pub fn flush_conntrack(
    exec: &Exec,
    targets: &[Target],
    source: Option<IpAddr>,
) -> ConntrackOutcome {
    let mut outcome = ConntrackOutcome::default();
    for args in conntrack_flush_args(targets, source) {
        match exec.output("conntrack", &args, None) {
            Ok(out) => {
                let text = format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                match parse_conntrack_deleted(&text) {
                    Some(n) => outcome.deleted += n,
                    None if out.status.success() => {}
                    None => outcome.warnings.push(format!(
                        "conntrack {}: {}",
                        args.join(" "),
                        text.trim()
                    )),
                }
            }
            Err(NodeError::MissingTool { tool, package }) => {
                outcome.warnings.push(format!(
                    "{tool} is missing (package {package}): connections opened before enforcement were not cut"
                ));
                break;
            }
            Err(e) => outcome.warnings.push(e.to_string()),
        }
    }
    outcome
}
