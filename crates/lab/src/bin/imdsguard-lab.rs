//! `imdsguard-lab`: the lab alone (the same as `imdsguard lab`), for tests.

use std::process::ExitCode;

use clap::Parser;
use imdsguard_lab::{LabArgs, run};

#[derive(Parser)]
#[command(name = "imdsguard-lab", version)]
struct Cli {
    #[command(flatten)]
    args: LabArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.args) {
        Ok(exit) => exit.into(),
        Err(e) => {
            eprintln!("imdsguard lab: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
