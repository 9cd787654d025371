//! `imdsguard report`: what enforcing the access rules would break, from decision logs
//! (the proxy's `--log-format json` records, files or standard input). The reading and
//! adding up are `imdsguard_core::decisions`; this reads the inputs and prints.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, ValueEnum};
use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{Cell, ContentArrangement, Table};
use imdsguard_core::decisions::{CallerKind, DecisionLog, Report, Request, Workload};

/// `imdsguard report`.
#[derive(Debug, Clone, Args)]
pub(crate) struct ReportArgs {
    /// Decision logs: JSON lines as `imdsguard proxy --log-format json` (or `agent run`)
    /// writes them, other lines skipped; `-` or none: standard input.
    #[arg(value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ReportFormat::Table)]
    pub format: ReportFormat,
}

/// Output formats of `imdsguard report`.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReportFormat {
    /// A summary and one table row per workload and request.
    Table,
    /// The report as one JSON object (docs/proxy.md).
    Json,
}

/// Name of standard input in messages.
const STDIN: &str = "<stdin>";

/// Pods named per workload in the table (the JSON has all).
const PODS_SHOWN: usize = 5;

/// Runs `imdsguard report`: reads every input (an unreadable one is an error naming
/// it), prints the report; exit 0. Malformed lines are listed on standard error.
pub(crate) fn run(args: ReportArgs) -> anyhow::Result<ExitCode> {
    let mut log = DecisionLog::new();
    let stdin_only = [PathBuf::from("-")];
    let files = if args.files.is_empty() {
        &stdin_only[..]
    } else {
        &args.files[..]
    };
    for path in files {
        if path.as_os_str() == "-" {
            read_into(&mut log, STDIN, std::io::stdin().lock())
                .context("cannot read standard input")?;
        } else {
            let name = path.display().to_string();
            let file = std::fs::File::open(path)
                .with_context(|| format!("cannot open decision log {name}; check the path"))?;
            read_into(&mut log, &name, file)
                .with_context(|| format!("cannot read decision log {name}"))?;
        }
    }
    let report = log.report();
    {
        let mut err = std::io::stderr().lock();
        for m in &report.malformed {
            let _ = writeln!(
                err,
                "imdsguard report: {}:{}: skipped a malformed line: {}",
                m.source, m.line, m.error
            );
        }
        let more = report.lines.malformed - report.malformed.len() as u64;
        if more > 0 {
            let _ = writeln!(err, "imdsguard report: and {more} more malformed line(s)");
        }
    }
    let mut out = std::io::stdout().lock();
    match args.format {
        ReportFormat::Json => {
            serde_json::to_writer_pretty(&mut out, &report)?;
            writeln!(out)?;
        }
        ReportFormat::Table => write_table(&mut out, &report)?,
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// Feeds one input to the log in blocks.
fn read_into(log: &mut DecisionLog, name: &str, mut input: impl Read) -> std::io::Result<()> {
    let mut buf = vec![0u8; 256 * 1024];
    log.begin(name);
    loop {
        match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => log.feed(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    log.end();
    Ok(())
}

fn write_table(out: &mut impl Write, r: &Report) -> std::io::Result<()> {
    let t = &r.totals;
    let others = t.invalid + t.throttled + t.upstream_error + t.other;
    writeln!(
        out,
        "{} decision record(s): {} allowed, {} would be denied (dry run), {} denied, {} other (invalid, throttled, upstream errors)",
        t.records, t.allow, t.would_deny, t.deny, others
    )?;
    let l = &r.lines;
    writeln!(
        out,
        "{} line(s) read: {} decision record(s), {} other line(s) skipped, {} malformed",
        l.read, l.decisions, l.skipped, l.malformed
    )?;
    if l.decisions == 0 && l.text_decisions > 0 {
        writeln!(
            out,
            "{} line(s) are text-format decision records, which report does not read: run the proxy with --log-format json",
            l.text_decisions
        )?;
    }
    if r.nothing_would_break {
        writeln!(
            out,
            "Nothing would break: no request was denied or would be denied."
        )?;
        return Ok(());
    }
    let callers = r.workloads.len();
    let refused: u64 = r.workloads.iter().map(|w| w.count).sum();
    writeln!(
        out,
        "What enforcing would break: {refused} request(s) from {callers} workload(s) or unknown caller(s)"
    )?;
    let mut table = Table::new();
    table
        .load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header([
            "Workload",
            "Pods",
            "Request",
            "Count",
            "First seen",
            "Last seen",
            "Closest rule",
        ]);
    for w in &r.workloads {
        for (i, q) in w.requests.iter().enumerate() {
            let (who, pods) = if i == 0 {
                (caller(w), pods(w))
            } else {
                (String::new(), String::new())
            };
            table.add_row([
                Cell::new(who),
                Cell::new(pods),
                Cell::new(request(q)),
                Cell::new(count(q)),
                Cell::new(q.first_seen.as_deref().unwrap_or("-")),
                Cell::new(q.last_seen.as_deref().unwrap_or("-")),
                Cell::new(rule(q)),
            ]);
        }
    }
    writeln!(out, "{table}")
}

fn caller(w: &Workload) -> String {
    let mut s = match w.caller {
        CallerKind::Pod => format!("{}/{}", w.namespace, w.workload),
        CallerKind::Unknown => format!("unknown caller {}", w.workload),
    };
    if let Some(id) = w.cgroup_id {
        s.push_str(&format!("\ncgroup {id}"));
    }
    if w.host_network {
        s.push_str("\n(hostNetwork)");
    }
    s
}

fn pods(w: &Workload) -> String {
    let mut s = w
        .pods
        .iter()
        .take(PODS_SHOWN)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join("\n");
    if w.pods.len() > PODS_SHOWN {
        s.push_str(&format!("\n(+{} more)", w.pods.len() - PODS_SHOWN));
    }
    s
}

fn request(q: &Request) -> String {
    let mut s = format!("{} {}", q.endpoint, q.path);
    if let Some(r) = &q.resource {
        s.push_str(&format!("\nresource {r}"));
    }
    if let Some(i) = &q.identity {
        s.push_str(&format!("\nidentity {i}"));
    }
    s
}

fn count(q: &Request) -> String {
    match (q.deny, q.would_deny) {
        (d, 0) => format!("{d} denied"),
        (0, w) => format!("{w} would-deny"),
        (d, w) => format!("{d} denied\n{w} would-deny"),
    }
}

fn rule(q: &Request) -> String {
    let mut s = q.rule.clone();
    if let Some(r) = &q.reason {
        s.push_str(&format!("\n{r}"));
    }
    if !q.other_rules.is_empty() {
        s.push_str(&format!("\n(earlier: {})", q.other_rules.join(", ")));
    }
    s
}
