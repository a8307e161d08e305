//! `edgeid-workloadd --config <file>`

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// edgeid workload API: what modules call for signatures, encryption, certificates and trust bundles.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The config file.
    #[arg(long, short, default_value = "/etc/edgeid/workloadd.d/config.toml")]
    config: PathBuf,
}

fn main() -> ExitCode {
    edgeid_common::logging::init();
    let args = Args::parse();
    let config = match edgeid_workloadapi::WorkloadConfig::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("edgeid-workloadd: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = config.validate() {
        eprintln!(
            "edgeid-workloadd: config file {}: {e}",
            args.config.display()
        );
        return ExitCode::from(2);
    }
    let runtime = match edgeid_common::runtime::build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("edgeid-workloadd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(edgeid_workloadapi::run(
        config,
        edgeid_common::server::shutdown_signal(),
    )) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "workloadd stopped");
            eprintln!("edgeid-workloadd: {e}");
            ExitCode::FAILURE
        }
    }
}
