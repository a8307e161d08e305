//! `edgeidctl`: the operator's command line.

mod dev;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// edgeid's command line.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole suite on software keys with sockets and state in one directory,
    /// until Ctrl-C.
    Dev {
        /// Directory for sockets and state (created 0700 if missing).
        #[arg(long)]
        dir: PathBuf,
        /// Modules to declare besides `dev-module` (used once the workload API lands).
        #[arg(long = "module", value_name = "NAME")]
        modules: Vec<String>,
        #[command(flatten)]
        backend: dev::BackendArgs,
    },
}

fn main() -> ExitCode {
    edgeid_common::logging::init();
    let cli = Cli::parse();
    let runtime = match edgeid_common::runtime::build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("edgeidctl: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Dev {
            dir,
            modules,
            backend,
        } => runtime.block_on(dev::run(&dir, &modules, &backend)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("edgeidctl: {message}");
            ExitCode::FAILURE
        }
    }
}
