//! The readable report: one table per namespace (a column per target and the reason),
//! then the findings, then what was skipped or could not be read.

use std::collections::BTreeMap;
use std::io::Write;

use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{Attribute, Cell, Color, ContentArrangement, Table};
use imdsguard_core::audit::{Report, Severity, Verdict, WorkloadReport};
use imdsguard_core::engine::Tier;
use imdsguard_core::engine_detect::ImdsRestriction;
use imdsguard_core::manifest::LoadError;
use imdsguard_core::netpol::join_names;
use imdsguard_core::target::{MetadataService, Target};

/// More targets than this and the table shows counts instead of a column per target.
const MAX_TARGET_COLUMNS: usize = 6;

fn header(report: &Report, t: &Target) -> String {
    // The named cloud's service (`--cloud aws`: "AWS IMDS"), else Azure's short names.
    match report.service(t) {
        Some(MetadataService::AzureImds) => "IMDS\n:80".into(),
        Some(MetadataService::AzureWireServer) => "WireServer\n:80".into(),
        Some(MetadataService::AzureHostGaPlugin) => "WireServer\n:32526".into(),
        Some(e) => format!("{}\n{t}", e.label()),
        None => t.to_string(),
    }
}

/// A short reason for the table, from the verdict's fields (the JSON has the full one):
/// the deciding tier, object and rule.
fn short_reason(v: &Verdict, host_network: bool) -> String {
    let rules = join_names(&v.rules, v.rule_count);
    let policies = join_names(&v.policies, v.policy_count);
    let deciding = match (&v.object, &v.rule) {
        (Some(o), Some(r)) => format!("{o}#{r}"),
        (Some(o), None) => o.to_string(),
        _ => String::new(),
    };
    if v.tier == Tier::AksImdsRestriction {
        return "blocked by the AKS IMDS restriction (podLinkLocalAccess=None)".into();
    }
    // hostNetwork and `--engine none`: no policy decided; say what the policies alone
    // would (the verdict's `policies` / `rules`).
    if matches!(v.tier, Tier::HostNetwork | Tier::None) {
        let by = if v.rule_count > 0 { &rules } else { &policies };
        let would = match (v.policy_allowed, by.is_empty()) {
            (true, true) => "would be allowed".to_string(),
            (true, false) => format!("would be allowed by {by}"),
            (false, true) => "would be denied".to_string(),
            (false, false) => format!("would be denied by {by}"),
        };
        return if v.tier == Tier::HostNetwork || host_network {
            format!("hostNetwork: policy does not apply ({would})")
        } else {
            format!("no policy engine ({would})")
        };
    }
    let said = match (v.tier.clone(), v.policy_allowed) {
        (Tier::NetworkPolicy, true) => format!("allowed by {rules}"),
        (Tier::NetworkPolicy, false) => format!("denied: isolated by {policies}"),
        (Tier::Default, true) if v.policy_count == 0 => "no egress policy selects it".into(),
        (Tier::Default, true) => format!("only Ingress-type policies select it ({policies})"),
        (tier, allowed) => format!(
            "{} by {deciding} ({tier} tier)",
            if allowed { "allowed" } else { "denied" }
        ),
    };
    match (v.policy_allowed, v.reachable) {
        (false, true) if host_network => {
            format!("hostNetwork: policy does not apply (would be {said})")
        }
        (false, true) => format!("no policy engine (would be {said})"),
        _ => said,
    }
}

fn new_table(color: bool) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_width(terminal_width());
    if color {
        t.enforce_styling();
    } else {
        t.force_no_tty();
    }
    t
}

fn terminal_width() -> u16 {
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(140)
}

fn verdict_cell(v: &Verdict, host_network: bool, color: bool) -> Cell {
    let (text, c) = match (v.reachable, v.policy_allowed, v.expected) {
        // What the access rules expect: not an exposure, so not red.
        (true, true, true) => ("reachable\n(expected)", Color::Cyan),
        (true, false, true) if host_network => ("reachable\n(expected,\nhostNetwork)", Color::Cyan),
        (true, false, true) => ("reachable\n(expected,\nno engine)", Color::Cyan),
        (false, _, true) => ("BLOCKED\n(expected!)", Color::Yellow),
        (true, true, false) => ("REACHABLE", Color::Red),
        (true, false, false) if host_network => ("REACHABLE\n(hostNetwork)", Color::Red),
        (true, false, false) => ("REACHABLE\n(no engine)", Color::Red),
        (false, _, false) => ("blocked", Color::Green),
    };
    let cell = Cell::new(text);
    if color {
        let cell = cell.fg(c);
        if v.reachable != v.expected {
            cell.add_attribute(Attribute::Bold)
        } else {
            cell
        }
    } else {
        cell
    }
}

/// The reasons of a workload's verdicts, once each, labelled by target when they differ.
fn reasons(w: &WorkloadReport) -> String {
    let mut distinct: Vec<(String, Vec<String>)> = Vec::new();
    for v in &w.verdicts {
        let r = short_reason(v, w.host_network);
        match distinct.iter_mut().find(|(x, _)| *x == r) {
            Some((_, ts)) => ts.push(v.target.to_string()),
            None => distinct.push((r, vec![v.target.to_string()])),
        }
    }
    if distinct.len() == 1 {
        return distinct.swap_remove(0).0;
    }
    distinct
        .iter()
        .map(|(r, ts)| format!("{}: {r}", ts.join(", ")))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `, 2 of them expected` when the access rules expect some of the reaching workloads.
fn expected_note(expected: usize) -> String {
    if expected > 0 {
        format!(", {expected} of them expected")
    } else {
        String::new()
    }
}

/// How the engine was decided, the AKS IMDS restriction when known, and the decision's
/// warnings.
fn write_engine(out: &mut impl Write, report: &Report) -> std::io::Result<()> {
    let d = &report.engine_decision;
    writeln!(out, "engine: {} ({})", report.engine, d.how)?;
    match &d.imds_restriction {
        ImdsRestriction::Unknown => {}
        ImdsRestriction::Off => writeln!(
            out,
            "AKS IMDS restriction: off (networkProfile.podLinkLocalAccess is not None)"
        )?,
        r @ ImdsRestriction::On { .. } => writeln!(
            out,
            "AKS IMDS restriction: {r}: pods off the host network cannot reach {}",
            imdsguard_core::target::IMDS
        )?,
        r @ ImdsRestriction::Partial { .. } => writeln!(
            out,
            "AKS IMDS restriction: {r}: not counted in the verdicts"
        )?,
    }
    for w in &d.warnings {
        writeln!(out, "note: {w}")?;
    }
    Ok(())
}

/// Writes the report for people.
pub fn write(
    out: &mut impl Write,
    report: &Report,
    errors: &[LoadError],
    skipped: &BTreeMap<String, usize>,
    color: bool,
) -> std::io::Result<()> {
    let s = &report.summary;
    let cluster_policies = if s.cluster_policies > 0 {
        format!(", {} cluster-scoped policies", s.cluster_policies)
    } else {
        String::new()
    };
    writeln!(
        out,
        "imdsguard audit: {} workloads in {} namespaces ({} Pod object(s) read), {} NetworkPolicies{cluster_policies}",
        s.workloads, s.namespaces, s.pods, s.network_policies
    )?;
    for c in &s.reachable {
        let name = report
            .service(&c.target)
            .map(|e| format!(" ({})", e.label()))
            .unwrap_or_default();
        let line = format!(
            "{} of {} workloads reach {}{name}{}",
            c.workloads,
            s.workloads,
            c.target,
            expected_note(c.expected)
        );
        if color && c.workloads > c.expected {
            writeln!(out, "\x1b[1;31m{line}\x1b[0m")?;
        } else {
            writeln!(out, "{line}")?;
        }
    }
    write_engine(out, report)?;
    let per_target = report.targets.len() <= MAX_TARGET_COLUMNS;

    let mut by_ns: BTreeMap<&str, Vec<&WorkloadReport>> = BTreeMap::new();
    for w in &report.workloads {
        by_ns.entry(&w.namespace).or_default().push(w);
    }
    for (ns, ws) in by_ns {
        writeln!(out)?;
        let title = format!("namespace {ns}");
        if color {
            writeln!(out, "\x1b[1m{title}\x1b[0m")?;
        } else {
            writeln!(out, "{title}")?;
        }
        let mut t = new_table(color);
        let mut head = vec![Cell::new("Workload")];
        if per_target {
            head.extend(report.targets.iter().map(|t| Cell::new(header(report, t))));
            head.push(Cell::new("Why"));
        } else {
            head.push(Cell::new(format!("Reaches (of {})", report.targets.len())));
            head.push(Cell::new("hostNetwork"));
        }
        t.set_header(head);
        for w in ws {
            let mut name = format!("{}[{}]", w.name, w.kind);
            if w.host_network {
                name.push_str("\nhostNetwork");
            }
            if w.expected {
                name.push_str(&format!("\nexpected ({})", w.expected_by.join(", ")));
            }
            let mut row = vec![Cell::new(name)];
            if per_target {
                row.extend(
                    w.verdicts
                        .iter()
                        .map(|v| verdict_cell(v, w.host_network, color)),
                );
                row.push(Cell::new(reasons(w)));
            } else {
                let n = w.verdicts.iter().filter(|v| v.reachable).count();
                row.push(Cell::new(n));
                row.push(Cell::new(if w.host_network { "yes" } else { "no" }));
            }
            t.add_row(row);
        }
        writeln!(out, "{t}")?;
    }

    writeln!(out)?;
    if report.findings.is_empty() {
        writeln!(out, "No findings.")?;
    } else {
        writeln!(out, "Findings ({})", report.findings.len())?;
        let mut t = new_table(color);
        t.set_header(vec!["Severity", "Finding", "Where", "What"]);
        for f in &report.findings {
            let sev = Cell::new(f.severity.to_string());
            let sev = if color {
                sev.fg(match f.severity {
                    Severity::High => Color::Red,
                    Severity::Medium => Color::Yellow,
                    Severity::Low => Color::Blue,
                    Severity::Info => Color::Cyan,
                })
            } else {
                sev
            };
            let place = f
                .objects
                .first()
                .and_then(|o| o.source.as_ref())
                .map(|s| s.to_string())
                .unwrap_or_default();
            t.add_row(vec![
                sev,
                Cell::new(f.id),
                Cell::new(place),
                Cell::new(&f.message),
            ]);
        }
        writeln!(out, "{t}")?;
    }

    writeln!(out)?;
    for c in &s.reachable {
        // Named by the cloud's service only when a cloud was named (`--cloud`).
        let name = c
            .service
            .map(|e| format!(" ({})", e.label()))
            .unwrap_or_default();
        writeln!(
            out,
            "{} of {} workloads reach {}{name}{}",
            c.workloads,
            s.workloads,
            c.target,
            expected_note(c.expected)
        )?;
    }
    if !skipped.is_empty() {
        let list: Vec<String> = skipped.iter().map(|(k, n)| format!("{k} {n}")).collect();
        writeln!(
            out,
            "Skipped (kinds the audit does not read): {}",
            list.join(", ")
        )?;
    }
    if !errors.is_empty() {
        writeln!(
            out,
            "{} input error(s), listed on standard error; those objects were left out",
            errors.len()
        )?;
    }
    Ok(())
}
