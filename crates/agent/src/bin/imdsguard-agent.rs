//! `imdsguard-agent`: the agent alone (the same as `imdsguard agent run`), for tests.

use std::process::ExitCode;

use clap::Parser;
use imdsguard_agent::{RunArgs, run};

#[derive(Parser)]
#[command(name = "imdsguard-agent", version)]
struct Cli {
    #[command(flatten)]
    args: RunArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("imdsguard agent: {e}");
            ExitCode::from(2)
        }
    }
}
