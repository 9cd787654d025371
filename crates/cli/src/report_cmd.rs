//! `imdsguard report`: what enforcing the access rules would break, from decision logs
//! (the proxy's `--log-format json` records) and the node agent's logs (its drop and
//! dry-run would-drop records, `agent run --log-format json`), files or standard input.
//! The reading and adding up are `imdsguard_core::decisions`; this reads the inputs and
//! prints.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, ValueEnum};
use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{Cell, ContentArrangement, Table};
use imdsguard_core::decisions::{CallerKind, DecisionLog, Drops, Report, Request, Workload};

/// `imdsguard report`.
#[derive(Debug, Clone, Args)]
pub(crate) struct ReportArgs {
    /// Logs: JSON lines as `imdsguard proxy --log-format json` or `imdsguard agent run
    /// --log-format json` writes them (decision records, the agent's drop and would-drop
    /// records), other lines skipped; `-` or none: standard input.
    #[arg(value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ReportFormat::Table)]
    pub format: ReportFormat,
}

/// Output formats of `imdsguard report`.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReportFormat {
    /// A summary, one table row per workload and request, and one per workload or
    /// source the agent dropped.
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
    let d = &r.drop_totals;
    if d.records > 0 {
        writeln!(
            out,
            "{} agent drop record(s): {} packet(s) dropped, {} packet(s) would be dropped (dry run)",
            d.records, d.dropped_packets, d.would_drop_packets
        )?;
    }
    writeln!(
        out,
        "{} line(s) read: {} decision record(s), {} agent drop record(s), {} other line(s) skipped, {} malformed",
        l.read, l.decisions, l.drops, l.skipped, l.malformed
    )?;
    if l.decisions == 0 && l.text_decisions > 0 {
        writeln!(
            out,
            "{} line(s) are text-format decision records, which report does not read: run the proxy with --log-format json",
            l.text_decisions
        )?;
    }
    if l.drops == 0 && l.text_drops > 0 {
        writeln!(
            out,
            "{} line(s) are text-format agent drop records, which report does not read: run the agent with --log-format json",
            l.text_drops
        )?;
    }
    if r.nothing_would_break {
        writeln!(
            out,
            "Nothing would break: no request was denied or would be denied, and no packet was dropped or would be dropped."
        )?;
        return Ok(());
    }
    if !r.workloads.is_empty() {
        write_requests(out, r)?;
    }
    if !r.drops.is_empty() {
        write_drops(out, r)?;
    }
    Ok(())
}

fn write_requests(out: &mut impl Write, r: &Report) -> std::io::Result<()> {
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

fn write_drops(out: &mut impl Write, r: &Report) -> std::io::Result<()> {
    let d = &r.drop_totals;
    writeln!(
        out,
        "What the agent's table dropped or would drop: {} packet(s) from {} workload(s) or unknown source(s)",
        d.dropped_packets.saturating_add(d.would_drop_packets),
        r.drops.len()
    )?;
    let mut table = Table::new();
    table
        .load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header([
            "Workload",
            "Pods",
            "Source",
            "Packets",
            "First seen",
            "Last seen",
            "Matched by",
        ]);
    for w in &r.drops {
        table.add_row([
            Cell::new(drop_caller(w)),
            Cell::new(pod_list(&w.pods)),
            Cell::new(drop_source(w)),
            Cell::new(packets(w)),
            Cell::new(w.first_seen.as_deref().unwrap_or("-")),
            Cell::new(w.last_seen.as_deref().unwrap_or("-")),
            Cell::new(w.matched_by.join("\n")),
        ]);
    }
    writeln!(out, "{table}")
}

fn drop_caller(w: &Drops) -> String {
    let mut s = match (w.caller, w.cgroups.is_empty()) {
        (CallerKind::Pod, _) => format!("{}/{}", w.namespace, w.workload),
        (CallerKind::Unknown, true) => format!("unknown source {}", w.workload),
        (CallerKind::Unknown, false) => "unknown pod cgroup".to_string(),
    };
    if w.host_network {
        s.push_str("\n(hostNetwork)");
    }
    s
}

fn drop_source(w: &Drops) -> String {
    let mut lines = Vec::new();
    if !w.interfaces.is_empty() {
        lines.push(format!("interface {}", w.interfaces.join(", ")));
    }
    if !w.addresses.is_empty() {
        lines.push(format!("address {}", w.addresses.join(", ")));
    }
    lines.extend(w.cgroups.iter().map(|c| format!("cgroup {c}")));
    lines.join("\n")
}

fn packets(w: &Drops) -> String {
    match (w.dropped, w.would_drop) {
        (d, 0) => format!("{d} dropped"),
        (0, n) => format!("{n} would-drop"),
        (d, n) => format!("{d} dropped\n{n} would-drop"),
    }
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
    pod_list(&w.pods)
}

fn pod_list(names: &[String]) -> String {
    let mut s = names
        .iter()
        .take(PODS_SHOWN)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join("\n");
    if names.len() > PODS_SHOWN {
        s.push_str(&format!("\n(+{} more)", names.len() - PODS_SHOWN));
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use imdsguard_agent::LogSink;
    use imdsguard_agent::drops::{Attribution, DropEvent, EventSink, HostDrops, SourceDrops};

    use super::*;

    /// A log destination the tests read back.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Buffer {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    fn source(interface: &str, address: &str, packets: u64, by: Attribution) -> SourceDrops {
        SourceDrops {
            interface: interface.into(),
            address: address.parse().unwrap(),
            packets,
            attribution: by,
        }
    }

    /// The agent's drop events: a pod's (dual-stack, a drop), a dry run's would-drops of
    /// a pod and of a source no pod has, a hostNetwork pod's by cgroup (a drop and a
    /// would-drop) and sockets in a pod cgroup no pod has.
    fn events() -> Vec<DropEvent> {
        let pod = |ns: &str, name: &str| (Some(ns.to_string()), Some(name.to_string()));
        let event = |(namespace, pod): (Option<String>, Option<String>),
                     sources: Vec<SourceDrops>,
                     host: Option<(&str, u64)>,
                     would_drop: bool| DropEvent {
            namespace,
            pod,
            sources,
            host: host.map(|(cgroup, packets)| HostDrops {
                cgroup: cgroup.into(),
                packets,
            }),
            would_drop,
        };
        let monitoring =
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod3b1f0c52_9a0e.slice";
        vec![
            event(
                pod("shop", "web-7d9f8c6b5d-x2x4q"),
                vec![
                    source("azvweb", "10.244.0.11", 2, Attribution::Pair),
                    source("azvweb", "fd00::11", 1, Attribution::Pair),
                ],
                None,
                false,
            ),
            event(
                pod("jobs", "batch"),
                vec![source("cbr0", "10.244.1.10", 4, Attribution::Pair)],
                None,
                true,
            ),
            event(
                (None, None),
                vec![source("azvspoof", "10.244.0.10", 5, Attribution::Unknown)],
                None,
                true,
            ),
            event(
                pod("monitoring", "debug-k7zq2"),
                Vec::new(),
                Some((monitoring, 3)),
                false,
            ),
            event(
                pod("monitoring", "debug-k7zq2"),
                Vec::new(),
                Some((monitoring, 6)),
                true,
            ),
            event((None, None), Vec::new(), Some(("kubepods.slice", 1)), false),
        ]
    }

    /// The agent's log of [`events`] through tracing-subscriber's formatter, as
    /// `agent run --log-format json|text` sets it up (`service::init_logging`).
    fn agent_log(json: bool, flatten: bool) -> String {
        let buf = Buffer::default();
        let writer = buf.clone();
        let builder = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone());
        let dispatch = if json {
            tracing::Dispatch::new(builder.json().flatten_event(flatten).finish())
        } else {
            tracing::Dispatch::new(builder.finish())
        };
        tracing::dispatcher::with_default(&dispatch, || {
            tracing::info!(target: "imdsguard", "enforcing block mode");
            for e in events() {
                LogSink.drops(&e);
            }
        });
        buf.text()
    }

    fn read(text: &str) -> Report {
        let mut log = DecisionLog::new();
        log.read("agent.log", text.as_bytes());
        log.report()
    }

    #[test]
    fn the_agents_own_drop_records_are_read_per_workload() {
        for flatten in [false, true] {
            let log = agent_log(true, flatten);
            let r = read(&log);
            assert_eq!(r.lines.read, 7, "{log}");
            assert_eq!((r.lines.drops, r.lines.skipped), (6, 1), "{log}\n{r:?}");
            assert_eq!(r.lines.malformed, 0, "{r:?}");
            assert!(!r.nothing_would_break);
            let d = r.drop_totals;
            assert_eq!(
                (d.records, d.dropped_records, d.would_drop_records),
                (6, 3, 3)
            );
            assert_eq!(
                (d.dropped_packets, d.would_drop_packets),
                (2 + 1 + 3 + 1, 4 + 5 + 6)
            );
            let who: Vec<(CallerKind, &str, &str)> = r
                .drops
                .iter()
                .map(|w| (w.caller, &*w.namespace, &*w.workload))
                .collect();
            assert_eq!(
                who,
                [
                    (CallerKind::Pod, "jobs", "batch"),
                    (CallerKind::Pod, "monitoring", "debug"),
                    (CallerKind::Pod, "shop", "web"),
                    (CallerKind::Unknown, "-", "10.244.0.10"),
                    (CallerKind::Unknown, "-", "kubepods.slice"),
                ],
                "{log}"
            );
            let batch = &r.drops[0];
            assert_eq!((batch.would_drop, batch.dropped), (4, 0));
            assert_eq!(batch.interfaces, ["cbr0"]);
            assert!(!batch.host_network);
            let debug = &r.drops[1];
            assert!(debug.host_network);
            assert_eq!(debug.pods, ["debug-k7zq2"]);
            assert_eq!((debug.dropped, debug.would_drop, debug.records), (3, 6, 2));
            assert_eq!(debug.matched_by, ["cgroup"]);
            assert!(
                debug.cgroups[0].ends_with("pod3b1f0c52_9a0e.slice"),
                "{debug:?}"
            );
            let web = &r.drops[2];
            assert_eq!(web.addresses, ["10.244.0.11", "fd00::11"]);
            assert_eq!(web.matched_by, ["pair"]);
            // The formatter's time, RFC 3339.
            assert!(
                web.first_seen.as_deref().is_some_and(|t| t.ends_with('Z')),
                "{web:?}"
            );
            let spoof = &r.drops[3];
            assert_eq!(
                (spoof.interfaces.as_slice(), spoof.would_drop),
                (&["azvspoof".to_string()][..], 5)
            );
            assert_eq!(spoof.matched_by, ["unknown"]);
            let cgroup = &r.drops[4];
            assert_eq!(cgroup.matched_by, ["unknown-pod-cgroup"]);
            assert!(cgroup.host_network && cgroup.pods.is_empty());

            let mut table = Vec::new();
            write_table(&mut table, &r).unwrap();
            let table = String::from_utf8(table).unwrap();
            for want in [
                "6 agent drop record(s): 7 packet(s) dropped, 15 packet(s) would be dropped (dry run)",
                "What the agent's table dropped or would drop: 22 packet(s) from 5 workload(s) or unknown source(s)",
                "jobs/batch",
                "4 would-drop",
                "monitoring/debug",
                "(hostNetwork)",
                "3 dropped",
                "6 would-drop",
                "shop/web",
                "address 10.244.0.11, fd00::11",
                "unknown source 10.244.0.10",
                "interface azvspoof",
                "unknown pod cgroup",
                "cgroup kubepods.slice",
                "unknown-pod-cgroup",
            ] {
                assert!(table.contains(want), "{want} in:\n{table}");
            }
            assert!(!table.contains("Nothing would break"), "{table}");
            assert!(!table.contains("What enforcing would break"), "{table}");
        }
    }

    #[test]
    fn the_agents_text_log_is_named_and_not_read() {
        let log = agent_log(false, false);
        let r = read(&log);
        assert_eq!((r.lines.drops, r.lines.text_drops), (0, 6), "{log}");
        assert!(r.nothing_would_break);
        let mut table = Vec::new();
        write_table(&mut table, &r).unwrap();
        let table = String::from_utf8(table).unwrap();
        assert!(
            table.contains("6 line(s) are text-format agent drop records")
                && table.contains("run the agent with --log-format json"),
            "{table}"
        );
    }

    #[test]
    fn the_json_keeps_the_proxy_reports_keys_and_adds_the_drops() {
        let r = read(&agent_log(true, false));
        let v = serde_json::to_value(&r).unwrap();
        let keys = |v: &serde_json::Value| -> Vec<String> {
            let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
            k.sort();
            k
        };
        assert_eq!(
            keys(&v),
            [
                "drop_totals",
                "drops",
                "lines",
                "malformed",
                "nothing_would_break",
                "totals",
                "workloads"
            ]
        );
        assert_eq!(
            keys(&v["lines"]),
            [
                "decisions",
                "drops",
                "malformed",
                "read",
                "skipped",
                "text_decisions",
                "text_drops"
            ]
        );
        assert_eq!(
            keys(&v["drops"][0]),
            [
                "addresses",
                "caller",
                "cgroups",
                "dropped",
                "first_seen",
                "host_network",
                "interfaces",
                "last_seen",
                "matched_by",
                "namespace",
                "packets",
                "pods",
                "records",
                "workload",
                "would_drop"
            ]
        );
        assert_eq!(v["drops"][0]["caller"], "pod");
        assert_eq!(v["drops"][3]["caller"], "unknown");
        assert_eq!(v["workloads"], serde_json::json!([]));
    }
}
