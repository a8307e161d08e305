//! `edgeid-certd --config <file>`

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// edgeid certificate service: issues, enrolls, stores and renews certificates.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The config file.
    #[arg(long, short, default_value = "/etc/edgeid/certd.d/config.toml")]
    config: PathBuf,
}

fn main() -> ExitCode {
    edgeid_common::logging::init();
    let args = Args::parse();
    let config = match edgeid_certd::CertdConfig::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("edgeid-certd: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = config.validate() {
        eprintln!("edgeid-certd: config file {}: {e}", args.config.display());
        return ExitCode::from(2);
    }
    let runtime = match edgeid_common::runtime::build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("edgeid-certd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(edgeid_certd::run(
        config,
        edgeid_common::server::shutdown_signal(),
    )) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "certd stopped");
            eprintln!("edgeid-certd: {e}");
            ExitCode::FAILURE
        }
    }
}
