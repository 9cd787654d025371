//! `imdsguard audit`: arguments, running the core audit, choosing the output.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use imdsguard_core::audit::{
    AuditOptions, DEFAULT_LIST_LIMIT, FindingKind, Report, Severity, audit_in,
};
use imdsguard_core::cilium::LinkLocalAs;
use imdsguard_core::cluster::Cluster;
use imdsguard_core::engine::{Engine, EngineSettings};
use imdsguard_core::engine_detect::{AksCluster, ClusterSignals};
use imdsguard_core::report_objects::ReportFormat;
use imdsguard_core::target::{Cloud, Target};

use crate::cloud_arg::{CloudArg, read_targets_file, with_cloud};
use crate::expected_arg::ExpectedArgs;
use crate::inputs;
use crate::kube_arg::{self, KubeArgs};
use crate::output;

/// Arguments of `imdsguard audit`.
#[derive(Args, Debug)]
#[command(
    after_help = "Exit status: 0 when no finding reaches --fail-on, 1 when one does, \
2 on usage or input errors (the report is still printed for what could be read)."
)]
pub struct AuditArgs {
    /// Manifest files or folders (recursive: .yaml, .yml, .json); `-` reads standard input.
    #[arg(value_name = "PATH")]
    paths: Vec<PathBuf>,

    /// Manifest file or folder, as with kubectl (repeatable).
    #[arg(short = 'f', long = "filename", value_name = "PATH")]
    files: Vec<PathBuf>,

    /// A target IP:PORT[/PROTO] (repeatable); PROTO defaults to TCP, IPv6 as [addr]:port.
    #[arg(long = "target", value_name = "IP:PORT[/PROTO]")]
    targets: Vec<Target>,

    /// A file with one target a line (`#` comments allowed).
    #[arg(long, value_name = "FILE")]
    targets_file: Option<PathBuf>,

    /// Built-in target set, added after --target/--targets-file; the default (azure)
    /// applies when no target is given. Given once: it also names the targets in every
    /// output by that cloud's services (169.254.169.254:80 is "AWS IMDS" under aws).
    #[arg(long, value_enum)]
    cloud: Option<CloudArg>,

    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,

    /// Which findings make the exit status 1.
    #[arg(long, value_enum, default_value_t = FailOn::Reachable)]
    fail_on: FailOn,

    /// The policy engine that enforces the cluster's policies: which kinds count, and
    /// with which engine's quirks. Without it, Calico or Cilium kinds in the input select
    /// their engine, and otherwise every kind is evaluated with the network-policy-api
    /// reference semantics (generic).
    #[arg(long, value_enum, value_name = "ENGINE")]
    engine: Option<EngineArg>,

    /// Same as --engine none: the cluster enforces no policy (e.g. AKS with
    /// --network-plugin azure and no --network-policy): every workload reaches every target.
    #[arg(long, conflicts_with = "engine")]
    no_policy_engine: bool,

    /// With --engine cilium: Cilium runs with --enable-k8s-cluster-network-policy, so it
    /// enforces ClusterNetworkPolicy (without it, ClusterNetworkPolicies are reported as
    /// not enforced).
    #[arg(long)]
    cilium_cnp: bool,

    /// With --engine cilium: which entity Cilium gives 169.254.169.254 and other
    /// link-local addresses. `world` (outside the cluster: CIDR rules cover it; AKS, GKE and
    /// EKS IMDS), `host` (a node agent owns the address: CIDR rules do not cover it,
    /// `toEntities: [host]` does), or `either` (the default, cautious: reachable when
    /// reachable either way). See docs/engines.md.
    #[arg(long, value_enum, value_name = "ENTITY")]
    cilium_link_local: Option<LinkLocalArg>,

    /// The AKS cluster, as `az aks show --name NAME --resource-group GROUP -o json` prints
    /// it: its networkProfile.networkPolicy / networkDataplane decide the engine (below
    /// --engine), and networkProfile.podLinkLocalAccess=None (the AKS IMDS restriction)
    /// blocks IMDS for pods off the host network. See docs/engines.md.
    #[arg(long, value_name = "FILE")]
    aks_cluster: Option<PathBuf>,

    #[command(flatten)]
    expected: ExpectedArgs,

    /// Without PATH or -f: the cluster to read (docs/live-audit.md).
    #[command(flatten)]
    kube: KubeArgs,

    /// With --format policyreport|openreports: write the report objects to the cluster of
    /// --kubeconfig/--context with server-side apply (field manager imdsguard), and delete
    /// the ones an earlier run wrote in the audited namespaces that this run does not.
    #[arg(long)]
    apply: bool,

    /// Name every deciding policy and rule in verdicts, reasons and findings (by default
    /// the first 5 of each, with their counts: with hundreds of policies selecting the
    /// same pods, full lists grow with workloads × policies).
    #[arg(long)]
    full: bool,

    /// Print how long each phase took (read, parse, build, evaluate, render) to standard
    /// error.
    #[arg(long)]
    timings: bool,

    /// Colour in the table: auto (only on a terminal, unless NO_COLOR is set), always, never.
    #[arg(long, value_enum, default_value_t = ColorArg::Auto)]
    color: ColorArg,
}

/// Output formats.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// A readable table grouped by namespace, then the findings.
    Table,
    /// The full report as JSON.
    Json,
    /// SARIF 2.1.0 for code scanning.
    Sarif,
    /// wgpolicyk8s.io/v1alpha2 PolicyReport objects (one per namespace) and a
    /// ClusterPolicyReport, as YAML for `kubectl apply -f -` (docs/reports.md).
    Policyreport,
    /// openreports.io/v1alpha1 Report objects (one per namespace) and a ClusterReport, as
    /// YAML for `kubectl apply -f -` (docs/reports.md).
    Openreports,
}

/// `--engine` values.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum EngineArg {
    /// Azure NPM: NetworkPolicy only, endPort ignored.
    AzureNpm,
    /// Calico 3.32+: NetworkPolicy, ClusterNetworkPolicy and Calico's kinds.
    Calico,
    /// Cilium 1.20+: NetworkPolicy, Cilium's kinds, ClusterNetworkPolicy with --cilium-cnp.
    Cilium,
    /// kube-network-policies: NetworkPolicy and ClusterNetworkPolicy.
    KubeNetworkPolicies,
    /// OVN-Kubernetes: NetworkPolicy, AdminNetworkPolicy and BaselineAdminNetworkPolicy.
    OvnKubernetes,
    /// The network-policy-api reference semantics: every kind enforced.
    Generic,
    /// No engine: nothing is enforced.
    None,
}

impl From<EngineArg> for Engine {
    fn from(e: EngineArg) -> Engine {
        match e {
            EngineArg::AzureNpm => Engine::AzureNpm,
            EngineArg::Calico => Engine::Calico,
            EngineArg::Cilium => Engine::Cilium,
            EngineArg::KubeNetworkPolicies => Engine::KubeNetworkPolicies,
            EngineArg::OvnKubernetes => Engine::OvnKubernetes,
            EngineArg::Generic => Engine::Generic,
            EngineArg::None => Engine::None,
        }
    }
}

/// `--cilium-link-local` values.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LinkLocalArg {
    /// Outside the cluster.
    World,
    /// Owned by the node.
    Host,
    /// Either: reachable when reachable either way.
    Either,
}

impl From<LinkLocalArg> for LinkLocalAs {
    fn from(a: LinkLocalArg) -> LinkLocalAs {
        match a {
            LinkLocalArg::World => LinkLocalAs::World,
            LinkLocalArg::Host => LinkLocalAs::Host,
            LinkLocalArg::Either => LinkLocalAs::Either,
        }
    }
}

/// The engine settings from the flags; `None`: detect from the input.
fn engine_settings(args: &AuditArgs) -> anyhow::Result<Option<EngineSettings>> {
    let engine = match (args.engine, args.no_policy_engine) {
        (_, true) => Some(Engine::None),
        (Some(e), false) => Some(Engine::from(e)),
        (None, false) => None,
    };
    if args.cilium_cnp && engine.is_some_and(|e| e != Engine::Cilium) {
        bail!("--cilium-cnp describes Cilium: use it with --engine cilium (or without --engine)");
    }
    if args.cilium_link_local.is_some() && engine.is_some_and(|e| e != Engine::Cilium) {
        bail!(
            "--cilium-link-local describes Cilium: use it with --engine cilium (or without --engine)"
        );
    }
    let cilium_link_local = args
        .cilium_link_local
        .map(LinkLocalAs::from)
        .unwrap_or_default();
    Ok(match engine {
        Some(e) => Some(EngineSettings {
            cilium_cluster_network_policy: args.cilium_cnp,
            cilium_link_local,
            ..EngineSettings::new(e)
        }),
        None if args.cilium_cnp || args.cilium_link_local.is_some() => Some(EngineSettings {
            cilium_cluster_network_policy: args.cilium_cnp,
            cilium_link_local,
            ..EngineSettings::new(Engine::Cilium)
        }),
        None => None,
    })
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum FailOn {
    /// A workload reaches a target (access the --rules/--preset expect does not count).
    Reachable,
    /// Any finding of high severity.
    High,
    /// Any finding of medium severity or more.
    Medium,
    /// Any finding of low severity or more (info findings, such as expected access,
    /// never fail the audit).
    Low,
    /// Never: exit 0 unless usage or input errors.
    Never,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum ColorArg {
    Auto,
    Always,
    Never,
}

fn fails(report: &Report, fail_on: FailOn) -> bool {
    let at_least = |s: Severity| report.findings.iter().any(|f| f.severity >= s);
    match fail_on {
        FailOn::Reachable => report
            .findings
            .iter()
            .any(|f| f.kind == FindingKind::WorkloadReachesTarget),
        FailOn::High => at_least(Severity::High),
        FailOn::Medium => at_least(Severity::Medium),
        FailOn::Low => at_least(Severity::Low),
        FailOn::Never => false,
    }
}

fn targets(args: &AuditArgs) -> anyhow::Result<Vec<Target>> {
    let mut targets = args.targets.clone();
    if let Some(file) = &args.targets_file {
        targets.extend(read_targets_file(file)?);
    }
    Ok(with_cloud(targets, args.cloud))
}

/// The cluster's signals for the engine decision: `collected` (the DaemonSets and CRDs
/// of a live cluster; empty for files) plus the `--aks-cluster` file, read here (an
/// unreadable or malformed file is an error naming it).
pub fn cluster_signals(
    args: &AuditArgs,
    collected: ClusterSignals,
) -> anyhow::Result<ClusterSignals> {
    let Some(path) = &args.aks_cluster else {
        return Ok(collected);
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the --aks-cluster file {}", path.display()))?;
    let aks = AksCluster::from_json(&text)
        .with_context(|| format!("--aks-cluster {}", path.display()))?;
    Ok(ClusterSignals {
        aks: Some(aks),
        ..collected
    })
}

/// Runs the audit and prints the report.
pub fn run(args: AuditArgs) -> anyhow::Result<ExitCode> {
    let mut paths = args.paths.clone();
    paths.extend(args.files.iter().cloned());
    // No PATH: the live cluster of the kubeconfig context.
    let live = paths.is_empty();
    // With --apply, --kubeconfig and --context also say where the reports of files go.
    let writes_to = args.apply && args.kube.namespace.is_none() && !args.kube.all_namespaces;
    if args.apply && !matches!(args.format, Format::Policyreport | Format::Openreports) {
        bail!(
            "--apply writes report objects to the cluster: use it with --format policyreport or --format openreports"
        );
    }
    if !live && args.kube.given() && !writes_to {
        bail!(
            "--kubeconfig, --context, -n and -A choose a live cluster to read: give them without PATH or -f"
        );
    }
    let targets = targets(&args)?;
    let engine = engine_settings(&args)?;
    let mut signals = cluster_signals(&args, ClusterSignals::default())?;
    let expected = args.expected.load()?;
    crate::cloud_arg::check_rules_cloud(
        expected.as_ref().map(|e| &e.rules),
        expected.as_ref().map_or("", |e| e.source.as_str()),
        args.cloud,
        !args.targets.is_empty() || args.targets_file.is_some(),
    )?;
    let expected = expected.map(|e| e.rules);
    let t0 = Instant::now();
    let (loaded, read_time, live) = if live {
        let mut read = args.kube.read_cluster().map_err(|e| {
            if args.kube.given() {
                e
            } else {
                // Nothing named at all: say both ways out, files or a cluster.
                e.context(
                    "no input: without PATH or -f, audit reads the live cluster of the current \
                     kubeconfig context (to audit manifests give PATH, or -f - for standard input)",
                )
            }
        })?;
        signals.daemonsets = std::mem::take(&mut read.signals.daemonsets);
        signals.crds = std::mem::take(&mut read.signals.crds);
        (std::mem::take(&mut read.loaded), t0.elapsed(), Some(read))
    } else {
        let (loaded, read_time) = inputs::load(&paths);
        (loaded, read_time, None)
    };
    let t_load = t0.elapsed();
    let t1 = Instant::now();
    let cluster = Cluster::build(loaded.objects);
    let t_build = t1.elapsed();
    let t2 = Instant::now();
    let report = audit_in(
        &cluster,
        &AuditOptions {
            targets,
            engine,
            list_limit: (!args.full).then_some(DEFAULT_LIST_LIMIT),
            expected,
            signals,
        },
        args.cloud.map(Cloud::from),
    );

    let t_eval = t2.elapsed();
    let t3 = Instant::now();
    let stdout = std::io::stdout();
    let color = match args.color {
        ColorArg::Always => true,
        ColorArg::Never => false,
        ColorArg::Auto => {
            stdout.is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        }
    };
    let mut out = std::io::BufWriter::new(stdout.lock());
    let written = match args.format {
        Format::Table => kube_arg::table_header(&mut out, live.as_ref()).and_then(|()| {
            output::table::write(&mut out, &report, &loaded.errors, &loaded.skipped, color)
        }),
        Format::Json => kube_arg::with_source(&mut out, live.as_ref(), |out| {
            output::json::write(out, &report, &loaded.errors, &loaded.skipped)
        }),
        Format::Sarif => output::sarif::write(&mut out, &report, &loaded.errors),
        Format::Policyreport | Format::Openreports => {
            let format = match args.format {
                Format::Openreports => ReportFormat::OpenReports,
                _ => ReportFormat::PolicyReport,
            };
            // A live read of one namespace (-n NS) writes and prunes that namespace's
            // reports alone, never the cluster report a full run wrote (docs/reports.md).
            let only_namespace = live.as_ref().and(args.kube.namespace.as_deref());
            let set = output::policyreport::objects(&report, format, only_namespace)?;
            if args.apply {
                let covered = match only_namespace {
                    Some(ns) => vec![ns.to_owned()],
                    None => cluster.namespaces.keys().cloned().collect(),
                };
                let cluster_scoped = only_namespace.is_none();
                output::policyreport::apply_to_cluster(
                    &mut out,
                    &set,
                    covered,
                    cluster_scoped,
                    &args.kube,
                )?;
                Ok(())
            } else {
                output::policyreport::write(&mut out, &set)
            }
        }
    }
    .and_then(|()| out.flush());
    drop(out);
    if args.timings {
        let total = t0.elapsed();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        eprintln!(
            "timings: read {:.0} ms, parse {:.0} ms, build {:.0} ms, evaluate {:.0} ms ({:.1} % of {:.0} ms), render {:.0} ms",
            ms(read_time),
            ms(t_load.saturating_sub(read_time)),
            ms(t_build),
            ms(t_eval),
            100.0 * t_eval.as_secs_f64() / total.as_secs_f64(),
            ms(total),
            ms(t3.elapsed()),
        );
    }
    // A reader that stops early (`| head`) is not an error of ours.
    match written {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        other => other.context("cannot write the report")?,
    }

    // The process ends right after this: freeing the cluster and report piece by piece
    // would only cost time.
    let failed = fails(&report, args.fail_on);
    std::mem::forget((report, cluster));

    if !loaded.errors.is_empty() {
        for e in &loaded.errors {
            eprintln!("imdsguard: input error: {e}");
        }
        eprintln!(
            "imdsguard: {} input error(s); the report covers the objects that could be read",
            loaded.errors.len()
        );
        return Ok(ExitCode::from(2));
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
