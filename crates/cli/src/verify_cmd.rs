//! `imdsguard verify`: a probe Job in each namespace, its result next to the audit's
//! prediction; the run itself is `imdsguard_kube::verify`. This file holds the flags,
//! the runtime, the signals (Ctrl-C cancels the run, which deletes what it created) and
//! the output.
//!
//! Exit status: 0 every namespace observed and every target agrees and is blocked; 1 a
//! disagreement, or a target the probe reached; a target not applicable (an IPv6 target
//! of a probe pod without IPv6) counts towards neither; 2 incomplete (a namespace without a
//! result, an inconclusive target, an API error, objects left behind) or a usage error;
//! 130/143 interrupted by SIGINT/SIGTERM (after the clean-up).

use std::io::{self, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{Cell, ContentArrangement, Table};
use imdsguard_core::engine::{Engine, EngineSettings};
use imdsguard_core::engine_detect::{AksCluster, ClusterSignals};
use imdsguard_core::target::Target;
use imdsguard_kube::verify::{
    self, Agreement, CleanConfig, CleanReport, Namespaces, Outcome, Seen, Verify, VerifyConfig,
    VerifyReport, WorkloadRef,
};

use imdsguard_kube::live;

use crate::cloud_arg::CloudArg;
use crate::kube_arg::{KubeArgs, skipped_lines};
use crate::service::{Stop, StopSignals, parse_positive_duration};

/// How the result is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub(crate) enum Format {
    /// One row per namespace and target: what the probe saw, what the audit predicted,
    /// whether they agree; then the disagreements and what has no result.
    #[default]
    Table,
    /// The whole report as JSON (docs/verify.md).
    Json,
}

/// Run the probe as a short-lived Job in every selected namespace and compare what it
/// saw with what the audit predicts for that pod (docs/verify.md).
///
/// Exit status: 0 all agree and nothing is reachable; 1 a disagreement or a reachable
/// target; 2 incomplete (timeout, a pod that did not start, API errors, objects left
/// behind) or usage error; 130/143 interrupted (after deleting what it created).
#[derive(Debug, Clone, Args)]
pub(crate) struct VerifyArgs {
    /// The probe's image (an imdsguard image) [default: ghcr.io/imdsguard/imdsguard:<this version>]
    #[arg(long, value_name = "IMAGE")]
    pub image: Option<String>,

    /// Probe as this workload's pods: copy its pod labels and service account, so that
    /// policies and allowlists apply as they do to it (NAMESPACE/KIND/NAME, e.g.
    /// payments/deployment/api); probes in its namespace only
    #[arg(long = "as", value_name = "NAMESPACE/KIND/NAME")]
    pub as_workload: Option<String>,

    /// How long to wait for the probe pods (also their Jobs' activeDeadlineSeconds)
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_positive_duration)]
    pub deadline: Duration,

    /// Delete what earlier runs left behind (a killed verify) instead of probing: Jobs
    /// and pods labelled app.kubernetes.io/managed-by=imdsguard-verify whose
    /// imdsguard.io/expires-at has passed
    #[arg(long)]
    pub clean: bool,

    /// With --clean: also objects that have not expired (a run may still be going on)
    #[arg(long, requires = "clean")]
    pub include_unexpired: bool,

    /// Whose metadata endpoints the probe walks (imdsguard probe --cloud): azure IMDS,
    /// WireServer and HostGAPlugin; aws (IMDSv1/v2, role credentials) and gcp (the
    /// metadata server, tokens, kube-env) on 169.254.169.254:80, plus TCP reachability
    /// of the cloud's IPv6 address ([fd00:ec2::254], [fd20:ce::254]) and, aws, of the
    /// EKS Pod Identity agent (169.254.170.23, [fd00:ec2::23]); ECS task metadata is for
    /// `imdsguard audit --cloud aws`
    #[arg(long, value_enum, default_value = "azure")]
    pub cloud: CloudArg,

    /// A target to verify, IP:PORT[/PROTO] (repeatable; replaces the defaults, which are
    /// per cloud: Azure IMDS 169.254.169.254:80, WireServer 168.63.129.16:80 and :32526;
    /// AWS 169.254.169.254:80 and [fd00:ec2::254]:80; GCP 169.254.169.254:80 and
    /// [fd20:ce::254]:80. AWS's Pod Identity agent, 169.254.170.23:80 and
    /// [fd00:ec2::23]:80, only when named. An IPv6 target of a probe pod without an IPv6
    /// address is "not applicable")
    #[arg(long = "target", value_name = "IP:PORT[/PROTO]")]
    pub targets: Vec<Target>,

    /// The policy engine the prediction assumes (azure-npm, calico, cilium,
    /// kube-network-policies, ovn-kubernetes, generic, none) [default: detected as audit
    /// does]
    #[arg(long, value_name = "ENGINE", value_parser = parse_engine)]
    pub engine: Option<Engine>,

    /// The AKS cluster (`az aks show -o json`): engine and AKS IMDS restriction, as for
    /// audit
    #[arg(long, value_name = "FILE")]
    pub aks_cluster: Option<PathBuf>,

    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,

    #[command(flatten)]
    pub kube: KubeArgs,
}

fn parse_engine(text: &str) -> Result<Engine, String> {
    Engine::from_name(text).ok_or_else(|| {
        format!(
            "`{text}` is not an engine: use azure-npm, calico, cilium, kube-network-policies, ovn-kubernetes, generic or none"
        )
    })
}

/// Runs `imdsguard verify` (or `--clean`).
pub(crate) fn run(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    if args.clean {
        return clean(&args);
    }
    let as_workload = args
        .as_workload
        .as_deref()
        .map(str::parse::<WorkloadRef>)
        .transpose()?;
    let namespaces = match (&as_workload, &args.kube.namespace) {
        (Some(w), _) if args.kube.all_namespaces => {
            bail!("--as {w} probes in the workload's namespace only: leave out -A")
        }
        (Some(w), Some(ns)) if *ns != w.namespace => bail!(
            "--as {w} probes in the workload's namespace ({}), not in -n {ns}",
            w.namespace
        ),
        (Some(w), _) => Namespaces::Only(vec![w.namespace.clone()]),
        (None, Some(ns)) => Namespaces::Only(vec![ns.clone()]),
        (None, None) => Namespaces::All,
    };
    let mut config = VerifyConfig::new(namespaces.clone()).for_cloud(args.cloud.into());
    if let Some(image) = &args.image {
        config.image = image.clone();
    }
    if !args.targets.is_empty() {
        config.targets = args.targets.clone();
    }
    config.as_workload = as_workload;
    config.deadline = args.deadline;
    config.engine = args.engine.map(EngineSettings::new);
    config.check()?;

    let mut kube = args.kube.clone();
    if let Namespaces::Only(list) = &namespaces {
        kube.namespace = list.first().cloned();
        kube.all_namespaces = false;
    }
    let runtime = crate::service::server_runtime()?;
    let (report, stop) = runtime.block_on(async {
        // The cluster as the audit reads it: the prediction is made on it. Nothing is
        // created before the first Job, so until then Ctrl-C just ends the process.
        let conn = kube.connect().await?;
        let mut read = live::read(
            &conn,
            &kube.namespaces(),
            live::DEFAULT_PAGE_SIZE,
            &live::NoProgress,
        )
        .await?;
        for line in skipped_lines(&read.skipped) {
            eprintln!("imdsguard verify: not read: {line}");
        }
        for note in &read.signals.notes {
            eprintln!("imdsguard verify: note: {note}");
        }
        for e in &read.loaded.errors {
            eprintln!("imdsguard verify: warning: not understood, left out of the prediction: {e}");
        }
        config.signals = cluster_signals(&args, &mut read.signals)?;
        let snapshot = std::mem::take(&mut read.loaded);
        let mut signals = StopSignals::install()?;
        let verify = Verify::start(conn.client, config, snapshot)?;
        eprintln!(
            "imdsguard verify: run {} in {}: probe Jobs labelled {}={} (Ctrl-C stops and deletes them)",
            verify.run_id(),
            conn.context,
            verify::job::RUN_LABEL,
            verify.run_id()
        );
        let canceller = verify.canceller();
        let (stopped_tx, mut stopped_rx) = tokio::sync::watch::channel(None::<Stop>);
        let watcher = tokio::spawn(async move {
            let first = signals.recv().await;
            eprintln!(
                "imdsguard verify: stopping: deleting the probe Jobs and pods (again to leave them; `imdsguard verify --clean` removes them later)"
            );
            let _ = stopped_tx.send(Some(first));
            canceller.cancel();
            let second = signals.recv().await;
            eprintln!("imdsguard verify: stopped without cleaning up");
            std::process::exit(exit_for(second).into());
        });
        let report = verify.wait().await;
        watcher.abort();
        let stop = *stopped_rx.borrow_and_update();
        anyhow::Ok((report?, stop))
    })?;

    print(&args, &report)?;
    Ok(ExitCode::from(match stop {
        Some(s) if report.interrupted => exit_for(s),
        _ => report.status.code(),
    }))
}

/// 130 for SIGINT, 143 for SIGTERM (the shell's 128 + signal number).
fn exit_for(stop: Stop) -> u8 {
    match stop {
        Stop::Interrupt => 130,
        Stop::Terminate => 143,
    }
}

/// The live cluster's DaemonSets and CRDs, plus the `--aks-cluster` file.
fn cluster_signals(
    args: &VerifyArgs,
    read: &mut imdsguard_kube::live::EngineSignals,
) -> anyhow::Result<ClusterSignals> {
    let aks = match &args.aks_cluster {
        None => None,
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| {
                format!("cannot read the --aks-cluster file {}", path.display())
            })?;
            Some(
                AksCluster::from_json(&text)
                    .with_context(|| format!("--aks-cluster {}", path.display()))?,
            )
        }
    };
    Ok(ClusterSignals {
        daemonsets: std::mem::take(&mut read.daemonsets),
        crds: std::mem::take(&mut read.crds),
        aks,
    })
}

/// `verify --clean`.
fn clean(args: &VerifyArgs) -> anyhow::Result<ExitCode> {
    if args.as_workload.is_some() {
        bail!("--clean deletes leftovers: it takes no --as");
    }
    let namespaces = match &args.kube.namespace {
        Some(ns) => Namespaces::Only(vec![ns.clone()]),
        None => Namespaces::All,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let report = runtime.block_on(async {
        let conn = args.kube.connect().await?;
        let config = CleanConfig {
            namespaces,
            include_unexpired: args.include_unexpired,
        };
        anyhow::Ok(verify::clean(&conn.client, &config).await?)
    })?;
    let mut out = io::stdout().lock();
    let written = match args.format {
        Format::Json => serde_json::to_writer_pretty(&mut out, &report)
            .map_err(io::Error::other)
            .and_then(|()| writeln!(out)),
        Format::Table => write_clean(&mut out, &report),
    };
    finish_write(written)?;
    Ok(ExitCode::from(if report.errors.is_empty() { 0 } else { 2 }))
}

fn write_clean(out: &mut impl io::Write, r: &CleanReport) -> io::Result<()> {
    writeln!(
        out,
        "imdsguard verify --clean: {} Job(s) and {} pod(s) deleted, {} kept (not expired)",
        r.jobs_deleted.len(),
        r.pods_deleted.len(),
        r.kept.len()
    )?;
    for j in &r.jobs_deleted {
        writeln!(out, "  deleted Job {j}")?;
    }
    for p in &r.pods_deleted {
        writeln!(out, "  deleted Pod {p}")?;
    }
    for k in &r.kept {
        writeln!(
            out,
            "  kept {k} (not expired: --include-unexpired deletes it too)"
        )?;
    }
    for e in &r.errors {
        writeln!(out, "  error: {e}")?;
    }
    Ok(())
}

fn finish_write(written: io::Result<()>) -> anyhow::Result<()> {
    match written {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(anyhow::anyhow!("cannot write the report: {e}")),
    }
}

fn print(args: &VerifyArgs, report: &VerifyReport) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    let written = match args.format {
        Format::Json => serde_json::to_writer_pretty(&mut out, report)
            .map_err(io::Error::other)
            .and_then(|()| writeln!(out)),
        Format::Table => write_table(&mut out, report),
    };
    finish_write(written.and_then(|()| out.flush()))
}

/// `reachable (exposed, token-obtained)` / `blocked (blocked-timeout)` / the outcome.
fn saw(ns: &verify::NamespaceResult, t: &verify::TargetResult) -> String {
    if ns.outcome != Outcome::Observed {
        return ns.outcome.as_str().to_owned();
    }
    let word = match t.seen {
        Seen::Reachable if t.sensitive => "REACHABLE, data",
        Seen::Reachable => "REACHABLE",
        Seen::Blocked => "blocked",
        Seen::Unknown => "unknown",
    };
    if t.classes.is_empty() {
        word.to_owned()
    } else {
        format!("{word} ({})", t.classes.join(", "))
    }
}

fn predicted(t: &verify::TargetResult) -> String {
    match &t.predicted {
        Some(p) if p.reachable => "reachable".to_owned(),
        Some(_) => "blocked".to_owned(),
        None => "-".to_owned(),
    }
}

fn agree(t: &verify::TargetResult) -> String {
    match (t.agreement, t.severity) {
        (Agreement::Disagree, Some(s)) => format!("NO ({s})"),
        (Agreement::Disagree, None) => "NO".to_owned(),
        (Agreement::Agree, _) => "yes".to_owned(),
        (Agreement::Unknown, _) => "unknown".to_owned(),
        (Agreement::NotApplicable, _) => "not applicable".to_owned(),
    }
}

fn write_table(out: &mut impl io::Write, r: &VerifyReport) -> io::Result<()> {
    let s = &r.summary;
    writeln!(
        out,
        "imdsguard verify: run {}, image {}, {} namespace(s), deadline {}, engine {} ({})",
        r.run_id,
        r.image,
        s.namespaces,
        humantime::format_duration(Duration::from_secs_f64(r.deadline_seconds)),
        r.engine,
        r.engine_decision.how
    )?;
    if let Some(w) = &r.as_workload {
        writeln!(out, "probing as {w} (its pod labels and service account)")?;
    }
    write!(
        out,
        "{} observed, {} agree; {} high and {} medium disagreement(s); {} target(s) reached",
        s.observed, s.agree, s.high, s.medium, s.reached
    )?;
    if s.not_applicable > 0 {
        write!(
            out,
            "; {} not applicable (IPv6 target(s) of a probe pod without IPv6)",
            s.not_applicable
        )?;
    }
    writeln!(out)?;
    if !r.namespaces.is_empty() {
        let mut t = Table::new();
        t.load_preset(UTF8_FULL_CONDENSED)
            .set_content_arrangement(ContentArrangement::Dynamic)
            .set_header([
                "Namespace",
                "Target",
                "Probe saw",
                "Audit predicted",
                "Agree?",
            ]);
        for ns in &r.namespaces {
            for (i, target) in ns.targets.iter().enumerate() {
                t.add_row([
                    Cell::new(if i == 0 { ns.namespace.as_str() } else { "" }),
                    Cell::new(target.target.to_string()),
                    Cell::new(saw(ns, target)),
                    Cell::new(predicted(target)),
                    Cell::new(agree(target)),
                ]);
            }
        }
        writeln!(out, "{t}")?;
    }
    let disagreements: Vec<String> = r
        .namespaces
        .iter()
        .flat_map(|ns| {
            ns.targets.iter().filter_map(move |t| {
                Some(format!(
                    "{} {}: {}",
                    t.severity?,
                    ns.namespace,
                    t.message.as_deref().unwrap_or("")
                ))
            })
        })
        .collect();
    if !disagreements.is_empty() {
        writeln!(out, "\ndisagreements:")?;
        for d in disagreements {
            writeln!(out, "  {d}")?;
        }
    }
    if s.not_applicable > 0 {
        writeln!(
            out,
            "\nnot applicable: {} IPv6 target(s) of probe pods with no IPv6 address (a \
             single-stack cluster): no pod there reaches IPv6, whatever the policies say, so \
             the audit's verdicts for them are not verified (they count towards no exit status)",
            s.not_applicable
        )?;
    }
    let unresolved: Vec<&verify::NamespaceResult> = r
        .namespaces
        .iter()
        .filter(|ns| ns.outcome != Outcome::Observed)
        .collect();
    if !unresolved.is_empty() {
        writeln!(out, "\nno result:")?;
        for ns in unresolved {
            writeln!(
                out,
                "  {} {}: {}",
                ns.outcome.as_str(),
                ns.namespace,
                ns.detail.as_deref().unwrap_or("")
            )?;
        }
    }
    for e in &r.errors {
        writeln!(out, "error: {e}")?;
    }
    if !r.skipped.is_empty() {
        writeln!(out, "skipped (being deleted): {}", r.skipped.join(", "))?;
    }
    let c = &r.cleanup;
    writeln!(
        out,
        "\ncleaned up: {} Job(s), {} pod(s) deleted{}",
        c.jobs_deleted.len(),
        c.pods_deleted.len(),
        if c.pods_left_to_garbage_collector.is_empty() {
            String::new()
        } else {
            format!(
                ", {} pod(s) left to the garbage collector",
                c.pods_left_to_garbage_collector.len()
            )
        }
    )?;
    for e in &c.errors {
        writeln!(
            out,
            "clean-up error: {e} (`imdsguard verify --clean` removes leftovers once expired)"
        )?;
    }
    if r.interrupted {
        return writeln!(
            out,
            "interrupted: the result is incomplete (exit status 130 on SIGINT, 143 on SIGTERM)"
        );
    }
    writeln!(
        out,
        "exit status {} ({})",
        r.status.code(),
        status_words(r.status)
    )
}

fn status_words(s: verify::Status) -> &'static str {
    match s {
        verify::Status::Agree => "every namespace agrees, nothing reachable",
        verify::Status::Finding => "a disagreement or a reachable target",
        verify::Status::Incomplete => "incomplete: see above",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: VerifyArgs,
    }

    fn parse(argv: &[&str]) -> Result<VerifyArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("verify").chain(argv.iter().copied())).map(|c| c.args)
    }

    #[test]
    fn flags() {
        let a = parse(&[]).unwrap();
        assert_eq!(a.deadline, Duration::from_secs(60));
        assert_eq!(a.format, Format::Table);
        assert!(!a.clean && a.image.is_none() && a.targets.is_empty());
        let a = parse(&[
            "--image",
            "r/i:1",
            "--as",
            "shop/deploy/web",
            "--deadline",
            "5s",
            "--format",
            "json",
            "--engine",
            "calico",
            "-n",
            "shop",
        ])
        .unwrap();
        assert_eq!(a.image.as_deref(), Some("r/i:1"));
        assert_eq!(a.engine, Some(Engine::Calico));
        assert_eq!(a.deadline, Duration::from_secs(5));
        assert!(parse(&["--include-unexpired"]).is_err(), "needs --clean");
        assert!(parse(&["--engine", "bogus"]).is_err());
        assert!(parse(&["--deadline", "0s"]).is_err());
        assert!(parse(&["-n", "a", "-A"]).is_err());
        assert_eq!(a.cloud, CloudArg::Azure);
        assert_eq!(parse(&["--cloud", "gcp"]).unwrap().cloud, CloudArg::Gcp);
        assert!(parse(&["--cloud", "oci"]).is_err());
    }

    /// A report of one observed namespace with these targets and totals.
    fn report(targets: Vec<verify::TargetResult>, summary: verify::Summary) -> VerifyReport {
        let decision = verify::compare::predict(
            &imdsguard_core::manifest::Loaded::default(),
            &[],
            &[],
            Some(EngineSettings::new(Engine::Generic)),
            &ClusterSignals::default(),
        );
        VerifyReport {
            run_id: "abc".into(),
            image: "i".into(),
            cloud: imdsguard_core::target::Cloud::Aws,
            targets: targets.iter().map(|t| t.target).collect(),
            engine: decision.engine,
            engine_detected: false,
            engine_decision: decision.engine_decision,
            as_workload: None,
            deadline_seconds: 60.0,
            namespaces: vec![verify::NamespaceResult {
                namespace: "payments".into(),
                outcome: Outcome::Observed,
                job: None,
                pod: None,
                detail: None,
                exit_code: Some(0),
                pod_ips: vec!["10.0.0.5".parse().unwrap()],
                sensitive: false,
                reachable: Vec::new(),
                targets,
            }],
            skipped: Vec::new(),
            errors: Vec::new(),
            interrupted: false,
            cleanup: verify::Cleanup::default(),
            summary,
            status: verify::Status::Agree,
        }
    }

    fn table(r: &VerifyReport) -> String {
        let mut out = Vec::new();
        write_table(&mut out, r).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_target_not_applicable_is_shown_and_counted_apart() {
        use imdsguard_core::target::{AWS_IMDS_IPV6, IMDS};
        use verify::{EndpointResult, PodIpv6, Predicted, ProbeEndpoint, compare::compare};
        let denied = Predicted {
            reachable: false,
            policy_allowed: false,
            reason: "denied".into(),
        };
        let allowed = Predicted {
            reachable: true,
            policy_allowed: true,
            reason: "allowed".into(),
        };
        let v4 = EndpointResult::from_steps(
            ProbeEndpoint::Imds,
            "169.254.169.254:80",
            [("blocked-timeout", None, false)],
        );
        let v6 = EndpointResult::from_steps(
            ProbeEndpoint::ImdsIpv6,
            "[fd00:ec2::254]:80",
            [("blocked-refused", None, false)],
        );
        let targets = vec![
            compare(IMDS, Some(&denied), Some(&v4), PodIpv6::No),
            compare(AWS_IMDS_IPV6, Some(&allowed), Some(&v6), PodIpv6::No),
        ];
        let summary = verify::Summary {
            namespaces: 1,
            observed: 1,
            agree: 1,
            not_applicable: 1,
            ..verify::Summary::default()
        };
        let text = table(&report(targets.clone(), summary.clone()));
        assert!(
            text.contains(
                "1 observed, 1 agree; 0 high and 0 medium disagreement(s); 0 target(s) \
                 reached; 1 not applicable (IPv6 target(s) of a probe pod without IPv6)\n"
            ),
            "{text}"
        );
        let row = text
            .lines()
            .find(|l| l.contains("[fd00:ec2::254]:80/TCP"))
            .unwrap();
        assert!(
            row.contains("blocked (blocked-refused)") && row.contains("not applicable"),
            "{row}"
        );
        assert!(
            text.contains("\nnot applicable: 1 IPv6 target(s)"),
            "{text}"
        );
        assert!(!text.contains("disagreements:"), "{text}");

        // Nothing not applicable (Azure, or a pod with IPv6): the summary line as ever.
        let text = table(&report(
            targets[..1].to_vec(),
            verify::Summary {
                not_applicable: 0,
                ..summary
            },
        ));
        assert!(
            text.contains(
                "1 observed, 1 agree; 0 high and 0 medium disagreement(s); 0 target(s) reached\n"
            ),
            "{text}"
        );
        assert!(!text.contains("not applicable"), "{text}");
    }
}
