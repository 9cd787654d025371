//! `imdsguard`: find, prove, block and watch pod access to cloud metadata endpoints.
//!
//! This binary only parses arguments, reads inputs and prints reports; the semantics
//! live in `imdsguard-core`.

mod agent_cmd;
mod audit_cmd;
mod cloud_arg;
mod controller_cmd;
mod emulate_cmd;
mod expected_arg;
mod inputs;
mod kube_arg;
mod lab_cmd;
mod log_writer;
mod output;
mod policy_cmd;
mod probe_cmd;
mod proxy_cmd;
mod report_cmd;
mod service;
mod verify_cmd;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

/// The audit allocates and frees millions of small strings and maps on every core;
/// mimalloc does that markedly faster than glibc's allocator (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Find, prove, block and watch pod access to cloud metadata endpoints
/// (Azure IMDS 169.254.169.254, WireServer 168.63.129.16).
#[derive(Parser, Debug)]
#[command(name = "imdsguard", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Which workloads can reach each metadata endpoint, and exactly why.
    Audit(audit_cmd::AuditArgs),
    /// Walk the attacker's path from here (run it in a pod): instance data, identities,
    /// tokens, WireServer; never prints a token.
    Probe(probe_cmd::ProbeArgs),
    /// A faithful cloud metadata emulator for tests and demos: Azure IMDS and WireServer
    /// (default), AWS EC2 IMDS (--cloud aws), GCE metadata (--cloud gcp); loopback by default.
    Emulate(emulate_cmd::EmulateArgs),
    /// The filtering metadata proxy: per pod, per path, per token audience and identity;
    /// default deny.
    Proxy(proxy_cmd::ProxyArgs),
    /// Node enforcement (nftables table `inet imdsguard`).
    Agent {
        #[command(subcommand)]
        command: AgentCommand,
    },
    /// A node with pods in network namespaces on this machine: who reaches IMDS before and
    /// after protection (block, observe, proxy). Needs root or user namespaces.
    Lab(lab_cmd::LabArgs),
    /// Write the policies that deny the metadata endpoints to every pod except the
    /// expected ones, for one policy engine.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Run the probe as a short-lived Job in every namespace and compare what it saw with
    /// what the audit predicts (the seed's validation step); deletes what it created.
    Verify(Box<verify_cmd::VerifyArgs>),
    /// What enforcing the access rules would break, from the proxy's decision logs and the
    /// agent's drop records (files or standard input; `--log-format json` records, e.g. of
    /// a `--dry-run`): per workload, each denied path, audience and identity, counts, first
    /// and last seen, the closest rule; packets the agent dropped or would drop.
    Report(report_cmd::ReportArgs),
    /// Print the MetadataAccessPolicy CustomResourceDefinition (imdsguard.io/v1alpha1) as
    /// YAML, for `kubectl apply -f -` (the same as deploy/crds/).
    Crd,
    /// Keep the policies of the MetadataAccessPolicy objects in every namespace (leader
    /// election on a Lease; /metrics, /healthz, /readyz).
    Controller(Box<controller_cmd::ControllerArgs>),
}

#[derive(Subcommand, Debug)]
enum PolicyCommand {
    /// Policy objects (YAML) denying the targets to every pod except those the rules
    /// expect: networkpolicy, cnp, anp, calico or cilium; warnings on standard error.
    Generate(Box<policy_cmd::GenerateArgs>),
}

#[derive(Subcommand, Debug)]
enum AgentCommand {
    /// Enforce on this node: install the nftables table (block, proxy or observe), keep it
    /// in place and in sync with the pods file, serve /metrics, /healthz, /readyz.
    Run(Box<agent_cmd::RunArgs>),
    /// Remove imdsguard's nftables table from this node (pods reach the endpoints again).
    Uninstall(agent_cmd::UninstallArgs),
}

/// The usage name when run as the kubectl plugin (`kubectl-imdsguard` on the PATH, as
/// krew installs it; kubectl runs it with its arguments unchanged): `kubectl imdsguard`.
const PLUGIN_BIN_NAME: &str = "kubectl imdsguard";

/// The command line, its help and errors naming `kubectl imdsguard` when this program's
/// file name (argv[0], not the symlink's target) is `kubectl-imdsguard`.
fn parse_cli() -> Cli {
    let argv0 = std::env::args_os().next();
    let plugin = argv0
        .as_deref()
        .and_then(|a| std::path::Path::new(a).file_stem())
        .is_some_and(|f| f == "kubectl-imdsguard");
    let mut cmd = Cli::command();
    if plugin {
        cmd = cmd.bin_name(PLUGIN_BIN_NAME);
    }
    Cli::from_arg_matches(&cmd.get_matches()).unwrap_or_else(|e| e.exit())
}

fn main() -> ExitCode {
    let cli = parse_cli();
    let result = match cli.command {
        Command::Audit(args) => audit_cmd::run(args),
        Command::Emulate(args) => emulate_cmd::run(args).map(|()| ExitCode::SUCCESS),
        Command::Proxy(args) => proxy_cmd::run(args).map(|()| ExitCode::SUCCESS),
        Command::Agent {
            command: AgentCommand::Run(args),
        } => agent_cmd::run(*args).map(|()| ExitCode::SUCCESS),
        Command::Agent {
            command: AgentCommand::Uninstall(args),
        } => agent_cmd::uninstall(args),
        Command::Lab(args) => match lab_cmd::run(args) {
            Ok(exit) => Ok(exit.into()),
            Err(e) => {
                eprintln!("imdsguard lab: {e}");
                return ExitCode::from(e.exit_code());
            }
        },
        Command::Probe(args) => probe_cmd::run(args).map(Into::into),
        Command::Policy {
            command: PolicyCommand::Generate(args),
        } => policy_cmd::run(*args),
        Command::Verify(args) => verify_cmd::run(*args),
        Command::Report(args) => report_cmd::run(args),
        Command::Controller(args) => controller_cmd::run(*args).map(|()| ExitCode::SUCCESS),
        Command::Crd => {
            print!("{}", imdsguard_kube::crd::crd_yaml());
            Ok(ExitCode::SUCCESS)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("imdsguard: error: {}", error_chain(&e));
            ExitCode::from(2)
        }
    }
}

/// The error and its causes, each cause only when its text does not already appear
/// (library errors often quote their source in their own message).
fn error_chain(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !text.contains(&c) {
            text.push_str(": ");
            text.push_str(&c);
        }
    }
    text
}
