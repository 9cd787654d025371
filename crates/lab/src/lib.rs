//! imdsguard-lab: the seed tutorial on one Linux machine, as `imdsguard lab`.
//!
//! It builds a node out of network namespaces ([`imdsguard_node::sandbox`]): a cloud
//! namespace answering as Azure IMDS and WireServer on their real addresses (the
//! emulator) and as Azure DNS (a UDP echo on 168.63.129.16:53), a node namespace routing
//! for pods on routed veths (Azure CNI) and on a bridge (kubenet), one of them
//! allowlisted and one borrowing its address. It then runs the attacker-path probe from
//! every pod and from the node, before protection and under each enforcement mode
//! (block, observe, proxy with the filtering proxy), and prints the before/after matrix.
//!
//! **Safety.** The lab first re-executes itself under `unshare --net` (plus
//! `--map-root-user` when not root): everything it creates lives in that namespace or in
//! namespaces it creates from there, none linked to the machine's own. The inner run
//! checks that it is isolated (another namespace than its parent's, nothing but `lo`)
//! before it adds any interface. The probe's default endpoints (169.254.169.254,
//! 168.63.129.16) are only ever contacted from inside those namespaces, where they are
//! the lab's emulator. When the lab ends (normally, on error, on SIGINT or SIGTERM sent
//! to the process the user started, or killed), its namespaces end with it: each is
//! held by a child process that exits when the lab's pipe to it closes.

mod bench;
mod report;
mod stage;
mod world;

use std::time::Duration;

use clap::{Args, ValueEnum};

pub use report::{LabPod, LabReport, Phase, PhaseResult, Row};

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Format {
    /// Tables.
    #[default]
    Text,
    /// One JSON document.
    Json,
}

/// Build a node from network namespaces (emulated IMDS and WireServer on their real
/// addresses, pods on veths and a bridge) and show, pod by pod, what the attacker's path
/// reaches before protection and under each imdsguard mode. Needs root or unprivileged
/// user namespaces, and nft, ip, unshare and nsenter; touches nothing outside its own
/// network namespaces.
///
/// Exit status: 0 when every phase came out as expected (only the allowlisted pod and
/// the node reach the endpoints under block and proxy mode, DNS always answers), 1 when
/// one did not, 2 when the lab could not run, 130 or 143 when stopped by SIGINT or
/// SIGTERM (it cleans up first).
#[derive(Debug, Clone, Args)]
pub struct LabArgs {
    /// Phases to run, in order (repeatable) [default: before block observe proxy]
    #[arg(long = "phase", value_enum)]
    pub phases: Vec<Phase>,

    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,

    /// The probe's TCP connect timeout (a dropped connection costs this much)
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = imdsguard_probe::parse_duration)]
    pub connect_timeout: Duration,

    /// Also measure N times how long an allow-set change takes to be effective (time
    /// from the change to the pod's first successful connection)
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub bench_allow: u32,
}

impl Default for LabArgs {
    fn default() -> Self {
        LabArgs {
            phases: Vec::new(),
            format: Format::Text,
            connect_timeout: Duration::from_secs(1),
            bench_allow: 0,
        }
    }
}

/// How the lab ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabExit {
    /// 0: every phase came out as expected.
    Expected,
    /// 1: something did not (listed in the output).
    Unexpected,
    /// Another status, passed on from the inner run.
    Other(u8),
}

impl LabExit {
    /// The numeric status.
    pub fn code(self) -> u8 {
        match self {
            LabExit::Expected => 0,
            LabExit::Unexpected => 1,
            LabExit::Other(c) => c,
        }
    }
}

impl From<LabExit> for std::process::ExitCode {
    fn from(e: LabExit) -> Self {
        std::process::ExitCode::from(e.code())
    }
}

/// Why the lab could not run (exit status 2).
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// Tools are missing.
    #[error("the lab needs {0}")]
    Missing(String),
    /// No network namespace can be made here.
    #[error("cannot create a network namespace: {0}")]
    NoNamespace(String),
    /// The node tooling failed.
    #[error(transparent)]
    Node(#[from] imdsguard_node::NodeError),
    /// A lab component failed.
    #[error("{0}")]
    Lab(String),
    /// An IO error.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
}

impl LabError {
    /// The exit status this error means (2).
    pub fn exit_code(&self) -> u8 {
        2
    }
}

/// Runs the lab: re-executes itself in a network namespace of its own, builds the node
/// there, probes every pod in each phase and prints the matrix to standard output.
pub fn run(args: LabArgs) -> Result<LabExit, LabError> {
    if stage::is_inner() {
        stage::inner(args)
    } else {
        stage::outer()
    }
}
