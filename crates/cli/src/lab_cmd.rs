//! `imdsguard lab`: its flags, and the two stages of its process. The outer run checks
//! the tools and re-executes this program (`imdsguard lab ...`, found with
//! `current_exe`) under `unshare --net`, passing SIGINT and SIGTERM on; the inner run
//! (in that namespace) exits on them and runs the lab ([`imdsguard_lab::run`]), then
//! prints the report.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};

use rustix::process::{Pid, Signal};

use std::time::Duration;

use clap::{Args, ValueEnum};
use std::path::{Path, PathBuf};

use imdsguard_lab::{HostNet, KubernetesConfig, LabConfig, LabError, Phase, ProbeCommand};
use imdsguard_node::netns::{Isolated, current_netns};
use imdsguard_node::{package_of, which};

use crate::cloud_arg::CloudArg;
use crate::service::parse_positive_duration;

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub(crate) enum Format {
    /// Tables.
    #[default]
    Text,
    /// One JSON document.
    Json,
}

/// A phase of the lab.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum PhaseArg {
    /// No protection: the attacker's path as it is on an unprotected node.
    Before,
    /// `block` mode: pod traffic to the endpoints dropped unless allowlisted.
    Block,
    /// `observe` mode: let through, counted and logged.
    Observe,
    /// `proxy` mode: IMDS traffic redirected to the filtering proxy, the rest dropped.
    Proxy,
    /// `proxy` mode's dry run: the tables drop nothing (what they would drop is counted
    /// would_drop) and the proxy records denials as would-deny and forwards them; every
    /// row keeps its `before` cell, and `imdsguard report` over its decisions must name
    /// exactly the pods the proxy phase denies.
    DryRun,
    /// With --kubernetes: a MetadataAccessPolicy, `imdsguard controller` and `imdsguard
    /// agent run --kubernetes` (block mode).
    Controller,
}

impl From<PhaseArg> for Phase {
    fn from(p: PhaseArg) -> Phase {
        match p {
            PhaseArg::Before => Phase::Before,
            PhaseArg::Block => Phase::Block,
            PhaseArg::Observe => Phase::Observe,
            PhaseArg::Proxy => Phase::Proxy,
            PhaseArg::DryRun => Phase::DryRun,
            PhaseArg::Controller => Phase::Controller,
        }
    }
}

/// Build a node from network namespaces (emulated IMDS and WireServer on their real
/// addresses, pods on veths and a bridge; as root also the kubelet and two hostNetwork
/// pods as processes in their cgroups, with cgroup v2 mounted in the lab's own mount
/// namespace) and show, pod by pod, what the attacker's path reaches before protection
/// and under each imdsguard mode. Needs root or unprivileged user namespaces, and nft,
/// ip, unshare and nsenter; touches nothing outside its own namespaces but the cgroups
/// it makes (unique names, removed when it ends).
///
/// Exit status: 0 when every phase came out as expected (only the allowlisted pod, the
/// node and the expected hostNetwork pod get tokens under block and proxy mode, the dry
/// run keeps every row's access (the spoofer's too: it drops nothing) and its report
/// names the pods proxy mode denies, DNS
/// always answers), 1 when one did not, 2 when the lab could not run, 130 or 143 when
/// stopped by SIGINT or SIGTERM (it cleans up first).
#[derive(Debug, Clone, Args)]
pub(crate) struct LabArgs {
    /// Phases to run, in order (repeatable) [default: before block observe proxy
    /// dry-run; with --kubernetes: before controller]
    #[arg(long = "phase", value_enum)]
    pub phases: Vec<PhaseArg>,

    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,

    /// The cloud the node stands in: azure (IMDS, WireServer, Azure DNS; IPv4 pods),
    /// aws (IMDS on 169.254.169.254 and [fd00:ec2::254], the EKS Pod Identity agent on
    /// 169.254.170.23 and [fd00:ec2::23], ECS task metadata 169.254.170.2, Amazon DNS;
    /// dual-stack pods) or gcp (the metadata server on 169.254.169.254 and
    /// [fd20:ce::254], its DNS on 169.254.169.254:53; dual-stack pods): that cloud's
    /// emulator on its real addresses, its probe, table and proxy
    #[arg(long, value_enum, default_value_t = CloudArg::Azure)]
    pub cloud: CloudArg,

    /// The probe's TCP connect timeout (a dropped connection costs this much)
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_positive_duration)]
    pub connect_timeout: Duration,

    /// Also measure N times how long an allow-set change takes to be effective (time
    /// from the change to the pod's first successful connection)
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub bench_allow: u32,

    /// The story on Kubernetes: start the test control plane (etcd, kube-apiserver) in
    /// the lab's node namespace, register the node and its pods as the kubelet would,
    /// then protect them with a MetadataAccessPolicy kept by `imdsguard controller` and
    /// enforced by `imdsguard agent run --kubernetes` (phases before, controller), all of
    /// them for the --cloud. Needs the control plane's binaries:
    /// `scripts/control-plane.sh build` (Go)
    #[arg(long)]
    pub kubernetes: bool,

    /// With --kubernetes: the test control plane's script
    #[arg(
        long,
        value_name = "PATH",
        env = "IMDSGUARD_CONTROL_PLANE_SCRIPT",
        default_value = "scripts/control-plane.sh",
        requires = "kubernetes"
    )]
    pub control_plane_script: PathBuf,

    /// With --kubernetes: also write the objects read back from the API server
    /// (namespaces.yaml, pods.yaml, networkpolicies.yaml) into DIR, for other analyzers
    #[arg(long, value_name = "DIR", requires = "kubernetes")]
    pub dump_policies: Option<PathBuf>,

    /// Internal: move into CGROUP (one of the lab's), probe as ROW from this process
    /// and print the row as JSON; MS is the connect timeout in milliseconds. The lab
    /// runs this as its child, inside its node namespace; nothing else may.
    #[arg(long, hide = true, num_args = 3, value_names = ["ROW", "MS", "CGROUP"])]
    pub internal_probe_row: Option<Vec<String>>,
}

impl LabArgs {
    /// The lab's configuration these flags stand for.
    pub(crate) fn config(&self) -> Result<LabConfig, LabError> {
        let cloud: imdsguard_core::target::Cloud = self.cloud.into();
        let kubernetes = if self.kubernetes {
            let absolute = |p: &Path| -> Result<PathBuf, LabError> {
                std::path::absolute(p).map_err(|e| LabError::Io {
                    what: format!("resolving {}", p.display()),
                    source: e,
                })
            };
            Some(KubernetesConfig {
                control_plane_script: absolute(&self.control_plane_script)?,
                imdsguard: std::env::current_exe().map_err(|e| LabError::Io {
                    what: "finding this program".into(),
                    source: e,
                })?,
                dump_policies: self.dump_policies.as_deref().map(absolute).transpose()?,
            })
        } else {
            None
        };
        let probe_command = ProbeCommand {
            program: std::env::current_exe().map_err(|e| LabError::Io {
                what: "finding this program".into(),
                source: e,
            })?,
            args: vec![
                "lab".into(),
                "--cloud".into(),
                cloud.name().into(),
                "--internal-probe-row".into(),
            ],
            env: vec![(STAGE_ENV.into(), PROBE_ROW_STAGE.into())],
        };
        Ok(LabConfig {
            phases: self.phases.iter().map(|p| (*p).into()).collect(),
            connect_timeout: self.connect_timeout,
            bench_allow: self.bench_allow,
            kubernetes,
            hostnet: HostNet::default(),
            probe_command: Some(probe_command),
            cloud,
        })
    }
}

/// How the lab ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LabExit {
    /// 0: every phase came out as expected.
    Expected,
    /// 1: something did not (listed in the output).
    Unexpected,
    /// Another status, passed on from the inner run.
    Other(u8),
}

impl From<LabExit> for std::process::ExitCode {
    fn from(e: LabExit) -> Self {
        std::process::ExitCode::from(match e {
            LabExit::Expected => 0,
            LabExit::Unexpected => 1,
            LabExit::Other(c) => c,
        })
    }
}

/// Runs `imdsguard lab`: re-executes itself in a network namespace of its own, builds
/// the node there, probes every pod in each phase and prints the matrix to standard
/// output.
pub(crate) fn run(args: LabArgs) -> Result<LabExit, LabError> {
    if let Some(probe) = &args.internal_probe_row {
        return probe_row(probe, args.cloud.into());
    }
    if is_inner() {
        return inner(args);
    }
    if args.kubernetes && !args.control_plane_script.is_file() {
        return Err(LabError::Missing(format!(
            "the test control plane's script {} with --kubernetes: run the lab from the repository's root, \
             or pass --control-plane-script PATH (or IMDSGUARD_CONTROL_PLANE_SCRIPT); \
             its binaries are built once with `scripts/control-plane.sh build` (Go)",
            args.control_plane_script.display()
        )));
    }
    outer()
}

/// Set (to `inner`) in the environment of the re-executed lab.
const STAGE_ENV: &str = "IMDSGUARD_LAB_STAGE";
/// The outer run's network namespace, which the inner run must not be in.
const PARENT_ENV: &str = "IMDSGUARD_LAB_PARENT_NETNS";
/// The outer run's process id: the inner run ends when that process is gone.
const PARENT_PID_ENV: &str = "IMDSGUARD_LAB_PARENT_PID";
/// The outer run's mount namespace, which the inner run must not be in to mount cgroup
/// v2.
const PARENT_MNT_ENV: &str = "IMDSGUARD_LAB_PARENT_MNTNS";
/// [`STAGE_ENV`] of a probe the lab runs as a child process in a cgroup.
const PROBE_ROW_STAGE: &str = "probe-row";

/// The hidden probe-row mode: a child of the inner run, already in its cgroup, probes
/// and prints its row.
fn probe_row(args: &[String], cloud: imdsguard_core::target::Cloud) -> Result<LabExit, LabError> {
    if std::env::var(STAGE_ENV).as_deref() != Ok(PROBE_ROW_STAGE) {
        return Err(LabError::Lab(
            "--internal-probe-row is the lab's own: it runs only as the lab's child".into(),
        ));
    }
    let [row, ms, cgroup] = args else {
        return Err(LabError::Lab(
            "--internal-probe-row takes ROW, MS and CGROUP".into(),
        ));
    };
    let ms: u64 = ms
        .parse()
        .map_err(|_| LabError::Lab(format!("--internal-probe-row: `{ms}` is no number")))?;
    let parent = std::env::var(PARENT_ENV).ok();
    let json = imdsguard_lab::probe_row_child(
        cloud,
        row,
        Duration::from_millis(ms),
        cgroup,
        parent.as_deref(),
    )?;
    println!("{json}");
    Ok(LabExit::Expected)
}

fn is_inner() -> bool {
    std::env::var(STAGE_ENV).as_deref() == Ok("inner")
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// The `unshare` arguments that give this process a network namespace of its own (and,
/// as root, a mount namespace of its own with private propagation, where the inner run
/// mounts cgroup v2 without touching the machine's mounts).
fn unshare_args() -> Vec<&'static str> {
    if is_root() {
        vec!["--net", "--mount", "--propagation", "private"]
    } else {
        vec!["--net", "--map-root-user"]
    }
}

/// Checks the tools, then runs this program again under `unshare --net` and passes its
/// exit status on. SIGINT and SIGTERM sent to this process (the one the user started)
/// are passed on to the inner run, which stops and cleans up; this one waits for it and
/// exits with its status (130 for SIGINT, 143 for SIGTERM).
fn outer() -> Result<LabExit, LabError> {
    let missing: Vec<String> = ["unshare", "nsenter", "ip", "nft"]
        .into_iter()
        .filter(|t| !which(t))
        .map(|t| format!("`{t}` (package {})", package_of(t)))
        .collect();
    if !missing.is_empty() {
        return Err(LabError::Missing(format!(
            "{}: install {} (e.g. apt-get install nftables iproute2 util-linux)",
            missing.join(", "),
            if missing.len() == 1 { "it" } else { "them" }
        )));
    }
    let args = unshare_args();
    let probe = Command::new("unshare")
        .args(&args)
        .arg("true")
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| LabError::Io {
            what: "running unshare".into(),
            source: e,
        })?;
    if !probe.status.success() {
        let why = String::from_utf8_lossy(&probe.stderr).trim().to_owned();
        return Err(LabError::NoNamespace(if is_root() {
            format!("`unshare --net` failed: {why}")
        } else {
            format!(
                "not root, and `unshare --net --map-root-user` failed ({why}): run the lab as root, \
                 or allow unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1, \
                 user.max_user_namespaces > 0; on Ubuntu also kernel.apparmor_restrict_unprivileged_userns=0)"
            )
        }));
    }
    let exe = std::env::current_exe().map_err(|e| LabError::Io {
        what: "finding this program".into(),
        source: e,
    })?;
    let parent = current_netns()?;
    // From here on SIGINT and SIGTERM do not end this process before the inner run: they
    // are passed on to it (the user's Ctrl-C reaches it too; twice is harmless). One
    // that comes before the inner run exists is passed on as soon as it does.
    let inner_pid = Arc::new(AtomicI32::new(0));
    let pending = Arc::new(AtomicI32::new(0));
    {
        let (inner_pid, pending) = (inner_pid.clone(), pending.clone());
        on_interrupts(move |sig| {
            pending.store(sig.as_raw(), Ordering::SeqCst);
            forward(inner_pid.load(Ordering::SeqCst), sig);
        });
    }
    let mut child = Command::new("unshare")
        .args(&args)
        .arg("--")
        .arg(&exe)
        .args(std::env::args_os().skip(1))
        .env(STAGE_ENV, "inner")
        .env(PARENT_ENV, parent)
        .env(PARENT_PID_ENV, std::process::id().to_string())
        .env(
            PARENT_MNT_ENV,
            imdsguard_lab::current_mount_namespace().unwrap_or_default(),
        )
        .spawn()
        .map_err(|e| LabError::Io {
            what: "starting the lab under unshare".into(),
            source: e,
        })?;
    // `unshare` without `--fork` becomes the inner run: this is its process id.
    let pid = i32::try_from(child.id()).unwrap_or(0);
    inner_pid.store(pid, Ordering::SeqCst);
    if let Some(sig) = Signal::from_named_raw(pending.load(Ordering::SeqCst)) {
        forward(pid, sig);
    }
    let status = child.wait().map_err(|e| LabError::Io {
        what: "waiting for the lab".into(),
        source: e,
    })?;
    use std::os::unix::process::ExitStatusExt;
    Ok(match (status.code(), status.signal()) {
        (Some(0), _) => LabExit::Expected,
        (Some(1), _) => LabExit::Unexpected,
        (Some(c), _) => LabExit::Other(u8::try_from(c).unwrap_or(2)),
        // Killed by a signal before its handler ran: the shell's convention.
        (None, Some(sig)) => LabExit::Other(u8::try_from(128 + sig).unwrap_or(2)),
        (None, None) => LabExit::Other(2),
    })
}

/// Sends `sig` to the inner run, when there is one yet.
fn forward(pid: i32, sig: Signal) {
    if let Some(pid) = Pid::from_raw(pid) {
        let _ = rustix::process::kill_process(pid, sig);
    }
}

/// The exit status for a run ended by `sig`: 128 + its number (130 for SIGINT, 143 for
/// SIGTERM), as a shell reports it.
fn interrupted_status(sig: Signal) -> i32 {
    128 + sig.as_raw()
}

/// On SIGINT/SIGTERM: say so and exit 130 (SIGINT) or 143 (SIGTERM). Exiting is the
/// cleanup: every namespace the lab made is held by a child whose standard input is a
/// pipe from this process, so they all end, taking their interfaces with them; this
/// process's own namespace (the node, with its nft tables) ends with it. The same
/// happens when the outer run dies without passing a signal on (SIGKILL): the kernel
/// sends this process SIGTERM then.
fn exit_on_interrupt() {
    on_interrupts(|sig| {
        // The cgroups are in the machine's one hierarchy: they do not go with the
        // namespaces. Their processes are killed and the directories removed first.
        for left in imdsguard_lab::remove_cgroups() {
            eprintln!("imdsguard lab: could not remove the cgroup {left}");
        }
        eprintln!(
            "imdsguard lab: stopped by {}; its namespaces, interfaces and nft tables go away with it",
            if sig == Signal::INT {
                "SIGINT"
            } else {
                "SIGTERM"
            }
        );
        std::process::exit(interrupted_status(sig));
    });
    let _ = rustix::process::set_parent_process_death_signal(Some(Signal::TERM));
    // The outer run may have gone before the line above: then nobody is waiting.
    let parent = std::env::var(PARENT_PID_ENV)
        .ok()
        .and_then(|p| p.parse::<i32>().ok());
    let now = rustix::process::getppid().map(Pid::as_raw_nonzero);
    if parent.is_some_and(|p| now.is_none_or(|n| n.get() != p)) {
        eprintln!("imdsguard lab: the process that started the lab is gone; stopping");
        let _ = imdsguard_lab::remove_cgroups();
        std::process::exit(interrupted_status(Signal::TERM));
    }
}

/// Runs `on_signal` on a background thread for every SIGINT or SIGTERM, instead of the
/// default action; returns once the handlers are installed.
fn on_interrupts(on_signal: impl Fn(Signal) + Send + 'static) {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
    else {
        return;
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        rt.block_on(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut int), Ok(mut term)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                let _ = tx.send(());
                return;
            };
            let _ = tx.send(());
            loop {
                let sig = tokio::select! {
                    _ = int.recv() => Signal::INT,
                    _ = term.recv() => Signal::TERM,
                };
                on_signal(sig);
            }
        });
    });
    let _ = rx.recv();
}

/// The inner run: checks isolation, builds the lab, runs the phases, prints.
fn inner(args: LabArgs) -> Result<LabExit, LabError> {
    exit_on_interrupt();
    // First of all: cgroup v2 in this run's own mount namespace (root only; otherwise
    // the hostNetwork rows are skipped, and the report says why).
    let hostnet = if args.kubernetes {
        HostNet::Skipped("not with --kubernetes".into())
    } else {
        let parent_mnt = std::env::var(PARENT_MNT_ENV).ok();
        imdsguard_lab::mount_cgroup2(parent_mnt.as_deref())
    };
    let parent = std::env::var(PARENT_ENV).ok();
    let isolated = Isolated::check(parent.as_deref())?;
    let config = LabConfig {
        hostnet,
        ..args.config()?
    };
    let report = imdsguard_lab::run(&isolated, &config);
    // The cgroups are removed by then (and again here, should the run have failed
    // before it could); a second call is harmless.
    let _ = imdsguard_lab::remove_cgroups();
    let report = report?;
    let text = match args.format {
        Format::Text => report.to_text(),
        Format::Json => report.to_json(),
    };
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            return Err(LabError::Io {
                what: "writing the report".into(),
                source: e,
            });
        }
        _ => {}
    }
    Ok(if report.as_expected {
        LabExit::Expected
    } else {
        LabExit::Unexpected
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use imdsguard_core::target::Cloud;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: LabArgs,
    }

    fn parse(args: &[&str]) -> LabArgs {
        Cli::try_parse_from(std::iter::once("x").chain(args.iter().copied()))
            .unwrap()
            .args
    }

    #[test]
    fn the_cloud_reaches_the_lab_and_its_probe_children() {
        let c = parse(&[]).config().unwrap();
        assert_eq!(c.cloud, Cloud::Azure);
        let c = parse(&["--cloud", "aws"]).config().unwrap();
        assert_eq!(c.cloud, Cloud::Aws);
        // The probe rows run in cgroups are the same program, told the cloud.
        let probe = c.probe_command.unwrap();
        assert_eq!(
            probe.args,
            ["lab", "--cloud", "aws", "--internal-probe-row"]
        );
        // --kubernetes runs under every cloud.
        let c = parse(&["--cloud", "gcp", "--kubernetes"]).config().unwrap();
        assert_eq!(c.cloud, Cloud::Gcp);
        assert!(c.kubernetes.is_some());
    }
}
