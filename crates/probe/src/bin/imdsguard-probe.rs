//! `imdsguard-probe`: the probe on its own, the same as `imdsguard probe`.
//!
//! Exit status: 0 nothing sensitive reachable, 1 something is, 2 usage error.

use std::process::ExitCode;

use clap::Parser;

/// Walk the attacker's path against Azure IMDS and WireServer and report each step.
#[derive(Parser, Debug)]
#[command(name = "imdsguard-probe", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    args: imdsguard_probe::ProbeArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match imdsguard_probe::run(cli.args) {
        Ok(status) => status.into(),
        Err(e) => {
            eprintln!("imdsguard-probe: error: {e}");
            e.exit_status().into()
        }
    }
}
