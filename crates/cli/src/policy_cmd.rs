//! `imdsguard policy generate`: reads manifests as `audit` does, asks the core for the
//! policy objects of one engine, writes them as YAML (standard output, or one file per
//! object under `-o DIR`) and the warnings on standard error.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use imdsguard_core::audit::{AuditOptions, DEFAULT_LIST_LIMIT, Report, audit_in};
use imdsguard_core::cilium::LinkLocalAs;
use imdsguard_core::cluster::Cluster;
use imdsguard_core::engine::{Engine, EngineSettings};
use imdsguard_core::generate::{GenerateOptions, OutputEngine, generate, is_generated};
use imdsguard_core::target::{Cloud, Target};
use serde_json::Value;

use crate::cloud_arg::{CloudArg, read_targets_file, with_cloud};
use crate::expected_arg::ExpectedArgs;
use crate::inputs;

/// Arguments of `imdsguard policy generate`.
#[derive(Args, Debug)]
#[command(
    after_help = "Exit status: 0 when the objects were written (with --verify: and no workload \
the rules do not expect, hostNetwork ones aside, still reaches a target), 1 when --verify \
finds such a workload, 2 on usage or input errors (nothing is written when an input could \
not be read: a policy set made from part of the cluster would leave namespaces out)."
)]
pub struct GenerateArgs {
    /// Manifest files or folders (recursive: .yaml, .yml, .json); `-` reads standard input.
    #[arg(value_name = "PATH")]
    paths: Vec<PathBuf>,

    /// Manifest file or folder, as with kubectl (repeatable).
    #[arg(short = 'f', long = "filename", value_name = "PATH")]
    files: Vec<PathBuf>,

    /// Which kind of policy to write.
    #[arg(long, value_enum)]
    engine: EngineArg,

    /// `--rules FILE` and `--preset NAME`: the pods they select are expected to reach
    /// the targets and get an exception.
    #[command(flatten)]
    expected: ExpectedArgs,

    /// A target IP:PORT[/PROTO] (repeatable); PROTO defaults to TCP, IPv6 as [addr]:port.
    #[arg(long = "target", value_name = "IP:PORT[/PROTO]")]
    targets: Vec<Target>,

    /// A file with one target a line (`#` comments allowed).
    #[arg(long, value_name = "FILE")]
    targets_file: Option<PathBuf>,

    /// Built-in target set, added after --target/--targets-file; the default (azure)
    /// applies when no target is given. aws and gcp deny IPv4 and IPv6 endpoints
    /// (IPv4 and IPv6 ipBlocks or CIDRs); the rules' pods are excepted for the
    /// instance metadata service only (169.254.169.254:80 and its IPv6 address).
    #[arg(long, value_enum)]
    cloud: Option<CloudArg>,

    /// Write one file per object into this folder (created if missing), named
    /// `NNN-kind-[namespace-]name.yaml` in apply order, instead of standard output.
    #[arg(short = 'o', long = "output-dir", value_name = "DIR")]
    output_dir: Option<PathBuf>,

    /// With -o DIR: write into a folder that is not empty, after removing the files an
    /// earlier run wrote there (YAML files labelled app.kubernetes.io/managed-by:
    /// imdsguard); other files are left alone.
    #[arg(long, requires = "output_dir")]
    force: bool,

    /// After writing, audit the cluster plus the generated objects in this process (the
    /// input is parsed once) under the engine that enforces them, and print per target how
    /// many workloads reach it before and after, and which unexpected ones still do, to
    /// standard error (exit 1 when one does; docs/policy-generate.md).
    #[arg(long)]
    verify: bool,

    /// With --verify and --engine networkpolicy: the engine that enforces the
    /// NetworkPolicies (default kube-network-policies). The other output engines are
    /// verified under their own (cnp: kube-network-policies, anp: ovn-kubernetes, calico:
    /// calico, cilium: cilium with link-local addresses in `world`).
    #[arg(long, value_enum, requires = "verify", value_name = "ENGINE")]
    verify_engine: Option<VerifyEngineArg>,

    /// Print how long each phase took (read, parse, build, generate, write) to standard
    /// error.
    #[arg(long)]
    timings: bool,
}

/// `--verify-engine` values: the engines that enforce NetworkPolicy.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum VerifyEngineArg {
    /// Azure NPM.
    AzureNpm,
    /// Calico.
    Calico,
    /// Cilium (link-local addresses in `world`).
    Cilium,
    /// kube-network-policies.
    KubeNetworkPolicies,
    /// OVN-Kubernetes.
    OvnKubernetes,
    /// The network-policy-api reference semantics.
    Generic,
}

/// The audit engine that enforces the generated objects (`--verify`).
fn verify_settings(args: &GenerateArgs) -> anyhow::Result<EngineSettings> {
    let engine = match (args.engine, args.verify_engine) {
        (EngineArg::Networkpolicy, e) => match e.unwrap_or(VerifyEngineArg::KubeNetworkPolicies) {
            VerifyEngineArg::AzureNpm => Engine::AzureNpm,
            VerifyEngineArg::Calico => Engine::Calico,
            VerifyEngineArg::Cilium => Engine::Cilium,
            VerifyEngineArg::KubeNetworkPolicies => Engine::KubeNetworkPolicies,
            VerifyEngineArg::OvnKubernetes => Engine::OvnKubernetes,
            VerifyEngineArg::Generic => Engine::Generic,
        },
        (other, Some(_)) => bail!(
            "--verify-engine chooses the engine for --engine networkpolicy; --engine {} is verified under its own engine (leave --verify-engine out)",
            other
                .to_possible_value()
                .map(|v| v.get_name().to_owned())
                .unwrap_or_default()
        ),
        (EngineArg::Cnp, None) => Engine::KubeNetworkPolicies,
        (EngineArg::Anp, None) => Engine::OvnKubernetes,
        (EngineArg::Calico, None) => Engine::Calico,
        (EngineArg::Cilium, None) => Engine::Cilium,
    };
    Ok(EngineSettings {
        // AKS, GKE and EKS give IMDS the `world` entity (docs/engines.md).
        cilium_link_local: LinkLocalAs::World,
        ..EngineSettings::new(engine)
    })
}

/// The output engines as the command line names them.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum EngineArg {
    /// networking.k8s.io/v1 NetworkPolicy per namespace (Azure NPM, Calico, Cilium,
    /// kube-network-policies, ...).
    Networkpolicy,
    /// ClusterNetworkPolicy v1alpha2, Admin tier (kube-network-policies, Calico 3.32+,
    /// Cilium 1.20+, Antrea 2.7).
    Cnp,
    /// AdminNetworkPolicy v1alpha1 (OVN-Kubernetes).
    Anp,
    /// Calico Tier and GlobalNetworkPolicies (projectcalico.org/v3).
    Calico,
    /// CiliumClusterwideNetworkPolicy (cilium.io/v2).
    Cilium,
}

impl From<EngineArg> for OutputEngine {
    fn from(e: EngineArg) -> OutputEngine {
        match e {
            EngineArg::Networkpolicy => OutputEngine::NetworkPolicy,
            EngineArg::Cnp => OutputEngine::Cnp,
            EngineArg::Anp => OutputEngine::Anp,
            EngineArg::Calico => OutputEngine::Calico,
            EngineArg::Cilium => OutputEngine::Cilium,
        }
    }
}

/// The targets as `audit` resolves them: `--target`s, then the `--targets-file`, then
/// the `--cloud` set (azure when nothing else is given), duplicates dropped.
fn targets(args: &GenerateArgs) -> anyhow::Result<Vec<Target>> {
    let mut targets = args.targets.clone();
    if let Some(file) = &args.targets_file {
        let more = read_targets_file(file)?;
        if more.is_empty() {
            bail!(
                "--targets-file {} names no target (only blank lines or comments): write one IP:PORT[/PROTO] a line, or leave the option out for the default (--cloud azure)",
                file.display()
            );
        }
        targets.extend(more);
    }
    Ok(with_cloud(targets, args.cloud))
}

/// Runs `policy generate`.
pub fn run(args: GenerateArgs) -> anyhow::Result<ExitCode> {
    let mut paths = args.paths.clone();
    paths.extend(args.files.iter().cloned());
    if paths.is_empty() {
        bail!(
            "no input: name manifest files or folders (imdsguard policy generate examples/aks-imds --engine cnp), or `-f -` for standard input"
        );
    }
    let targets = targets(&args)?;
    let verify = args.verify.then(|| verify_settings(&args)).transpose()?;
    let (expected, rules_source) = match args.expected.load()? {
        Some(e) => (Some(e.rules), Some(e.source)),
        None => (None, None),
    };
    crate::cloud_arg::check_rules_cloud(
        expected.as_ref(),
        rules_source.as_deref().unwrap_or(""),
        args.cloud,
        !args.targets.is_empty() || args.targets_file.is_some(),
    )?;
    let t0 = Instant::now();
    let (loaded, read_time) = inputs::load(&paths);
    let t_load = t0.elapsed();
    if !loaded.errors.is_empty() {
        for e in &loaded.errors {
            eprintln!("imdsguard: input error: {e}");
        }
        eprintln!(
            "imdsguard: {} input error(s): nothing written (a policy set made from part of the cluster would leave namespaces out); fix the input and run again",
            loaded.errors.len()
        );
        return Ok(ExitCode::from(2));
    }
    let t1 = Instant::now();
    // imdsguard's own objects (an earlier run's output in a cluster dump) are left out:
    // the deny would isolate every pod, and a re-run would write no deny at all.
    let mut objects = loaded.objects;
    let before = objects.len();
    objects.retain(|o| !is_generated(o));
    if objects.len() < before {
        eprintln!(
            "imdsguard policy generate: left out {} object(s) an earlier run of imdsguard wrote (imdsguard-*-metadata*, Calico tier imdsguard): the new objects replace them",
            before - objects.len()
        );
    }
    // --verify builds a second cluster (the input plus the generated objects) from a copy.
    let input_copy = verify.is_some().then(|| objects.clone());
    let cluster = Cluster::build(objects);
    let t_build = t1.elapsed();
    let t2 = Instant::now();
    let audit_options = verify.map(|settings| AuditOptions {
        targets: targets.clone(),
        engine: Some(settings),
        list_limit: Some(DEFAULT_LIST_LIMIT),
        expected: expected.clone(),
        signals: Default::default(),
    });
    let generated = generate(
        &cluster,
        &GenerateOptions {
            engine: args.engine.into(),
            targets,
            expected,
            rules_source,
        },
    );
    let t_generate = t2.elapsed();
    let t3 = Instant::now();
    match &args.output_dir {
        None => {
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            let written = write_stream(&mut out, &generated.objects).and_then(|()| {
                out.flush()
                    .context("cannot write the objects to standard output")
            });
            match written {
                Err(e)
                    if e.downcast_ref::<std::io::Error>()
                        .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) => {}
                other => other?,
            }
        }
        Some(dir) => write_dir(dir, &generated.objects, args.force)?,
    }
    let t_write = t3.elapsed();
    for w in &generated.warnings {
        eprintln!("imdsguard policy generate: warning: {w}");
    }
    let t4 = Instant::now();
    let mut code = ExitCode::SUCCESS;
    if let (Some(options), Some(mut input)) = (audit_options, input_copy) {
        let cloud = args.cloud.map(Cloud::from);
        let (before, after) = rayon::join(
            || audit_in(&cluster, &options, cloud),
            || -> anyhow::Result<Report> {
                input.extend(parse_generated(&generated.objects)?);
                let after_cluster = Cluster::build(input);
                let report = audit_in(&after_cluster, &options, cloud);
                std::mem::forget(after_cluster);
                Ok(report)
            },
        );
        let after = after?;
        if !print_verify(&before, &after) {
            code = ExitCode::from(1);
        }
        std::mem::forget((before, after));
    }
    let t_verify = t4.elapsed();
    if args.timings {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        eprintln!(
            "timings: read {:.0} ms, parse {:.0} ms, build {:.0} ms, generate {:.0} ms, write {:.0} ms ({} objects), verify {:.0} ms, total {:.0} ms",
            ms(read_time),
            ms(t_load.saturating_sub(read_time)),
            ms(t_build),
            ms(t_generate),
            ms(t_write),
            generated.objects.len(),
            ms(t_verify),
            ms(t0.elapsed()),
        );
    }
    // The process ends here: freeing the cluster piece by piece only costs time (as in
    // `audit`).
    std::mem::forget((cluster, generated));
    Ok(code)
}

/// The generated objects as `audit` would read them from the written YAML: rendered, then
/// parsed by the core's manifest parser.
fn parse_generated(objects: &[Value]) -> anyhow::Result<Vec<imdsguard_core::model::Object>> {
    let mut text = Vec::new();
    write_stream(&mut text, objects)?;
    let text = String::from_utf8(text).context("generated YAML is not UTF-8")?;
    let loaded = imdsguard_core::manifest::parse("<policy generate>", &text);
    if let Some(e) = loaded.errors.first() {
        bail!(
            "--verify: the generated objects do not read back ({} error(s), first: {e}); this is a bug of imdsguard, please report it",
            loaded.errors.len()
        );
    }
    Ok(loaded.objects)
}

/// Prints the `--verify` summary to standard error; false when a workload the rules do
/// not expect, not on the host network, still reaches a target.
fn print_verify(before: &Report, after: &Report) -> bool {
    const SHOWN: usize = 10;
    let reaching = |r: &Report, i: usize| {
        r.workloads
            .iter()
            .filter(|w| w.verdicts.get(i).is_some_and(|v| v.reachable))
            .count()
    };
    eprintln!(
        "imdsguard policy generate --verify: audit of the input plus the generated objects under --engine {}",
        after.engine
    );
    let mut ok = true;
    for (i, target) in after.targets.iter().enumerate() {
        let mut expected = 0;
        let mut host_network = 0;
        let mut unexpected = Vec::new();
        for w in &after.workloads {
            let Some(v) = w.verdicts.get(i).filter(|v| v.reachable) else {
                continue;
            };
            if w.host_network {
                host_network += 1;
            } else if v.expected {
                expected += 1;
            } else {
                unexpected.push((w, v));
            }
        }
        let named = match after.cloud.and_then(|c| c.service(target)) {
            Some(s) => format!("{target} ({})", s.label()),
            None => target.to_string(),
        };
        eprintln!(
            "  {named}: {} workload(s) reach it before, {} after ({expected} expected, {host_network} hostNetwork, {} unexpected)",
            reaching(before, i),
            reaching(after, i),
            unexpected.len()
        );
        for (w, v) in unexpected.iter().take(SHOWN) {
            let decided = match (&v.object, &v.rule) {
                (Some(o), Some(rule)) => format!("{o} {rule} (tier {})", v.tier),
                (Some(o), None) => format!("{o} (tier {})", v.tier),
                (None, _) => format!("tier {}", v.tier),
            };
            eprintln!(
                "    still reaches it: {}/{}[{}], decided by {decided}",
                w.namespace, w.name, w.kind
            );
        }
        if unexpected.len() > SHOWN {
            eprintln!("    ... and {} more", unexpected.len() - SHOWN);
        }
        ok &= unexpected.is_empty();
    }
    let host_network = after
        .workloads
        .iter()
        .filter(|w| w.host_network && w.verdicts.iter().any(|v| v.reachable))
        .count();
    if host_network > 0 {
        eprintln!(
            "imdsguard policy generate --verify: {host_network} hostNetwork workload(s) still reach a target: no policy can cover them; `imdsguard agent run` in block or proxy mode does, by their pods' cgroups (docs/node.md)"
        );
    }
    if ok {
        eprintln!(
            "imdsguard policy generate --verify: passed: only expected or hostNetwork workloads reach the targets"
        );
    } else {
        eprintln!(
            "imdsguard policy generate --verify: FAILED: workloads the rules do not expect still reach a target (see the reopens-target warnings: an existing policy re-opens it); exit 1"
        );
    }
    ok
}

/// One object as a YAML document (without the `---` marker).
fn yaml(object: &Value) -> anyhow::Result<String> {
    serde_norway::to_string(object).context("cannot write an object as YAML")
}

fn write_stream(out: &mut impl Write, objects: &[Value]) -> anyhow::Result<()> {
    for o in objects {
        out.write_all(b"---\n")?;
        out.write_all(yaml(o)?.as_bytes())?;
    }
    Ok(())
}

/// `NNN-kind-[namespace-]name.yaml`, numbered in apply order.
fn file_name(index: usize, width: usize, object: &Value) -> String {
    let part = |v: &Value| v.as_str().unwrap_or("").to_ascii_lowercase();
    let kind = part(&object["kind"]);
    let name = part(&object["metadata"]["name"]);
    match object["metadata"]["namespace"].as_str() {
        Some(ns) => format!("{index:0width$}-{kind}-{ns}-{name}.yaml"),
        None => format!("{index:0width$}-{kind}-{name}.yaml"),
    }
}

/// Whether a file of an output folder is one imdsguard wrote: YAML whose labels hold
/// `app.kubernetes.io/managed-by: imdsguard`.
fn written_by_imdsguard(path: &Path) -> bool {
    use imdsguard_core::generate::{MANAGED_BY, MANAGED_BY_LABEL};
    let yaml = path.extension().is_some_and(|e| e == "yaml" || e == "yml");
    yaml && std::fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_norway::from_str::<Value>(&t).ok())
        .is_some_and(|v| v["metadata"]["labels"][MANAGED_BY_LABEL] == MANAGED_BY)
}

/// An existing output folder: refused when not empty (stale files of an earlier run would
/// be applied with the new ones), unless `--force`, which removes the files imdsguard
/// wrote and keeps the others.
fn prepare_dir(dir: &Path, force: bool) -> anyhow::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(e)
                .with_context(|| format!("cannot read the output folder {}", dir.display()));
        }
    };
    let mut files = Vec::new();
    for e in entries {
        files.push(
            e.with_context(|| format!("cannot read the output folder {}", dir.display()))?
                .path(),
        );
    }
    if files.is_empty() {
        return Ok(());
    }
    if !force {
        bail!(
            "the output folder {} is not empty ({} entries): files of an earlier run would be applied with the new ones; name an empty folder, or add --force to remove the files imdsguard wrote there (labelled app.kubernetes.io/managed-by=imdsguard) first",
            dir.display(),
            files.len()
        );
    }
    for f in files.iter().filter(|f| written_by_imdsguard(f)) {
        std::fs::remove_file(f).with_context(|| format!("cannot remove {}", f.display()))?;
    }
    Ok(())
}

fn write_dir(dir: &Path, objects: &[Value], force: bool) -> anyhow::Result<()> {
    use rayon::prelude::*;
    prepare_dir(dir, force)?;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the output folder {}", dir.display()))?;
    let width = objects.len().to_string().len().max(3);
    // One file per object, rendered and written on all cores (a NetworkPolicy set is
    // one or more objects per namespace: thousands of files on a large cluster).
    objects
        .par_iter()
        .enumerate()
        .try_for_each(|(i, o)| -> anyhow::Result<()> {
            let path = dir.join(file_name(i, width, o));
            std::fs::write(&path, yaml(o)?)
                .with_context(|| format!("cannot write {}", path.display()))
        })?;
    eprintln!(
        "imdsguard policy generate: {} object(s) written to {}",
        objects.len(),
        dir.display()
    );
    Ok(())
}
