//! `edgeid-identityd --config <file>`

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// edgeid identity service: provisions the device and manages module identities.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The config file.
    #[arg(long, short, default_value = "/etc/edgeid/identityd.d/config.toml")]
    config: PathBuf,
}

fn main() -> ExitCode {
    edgeid_common::logging::init();
    let args = Args::parse();
    let config = match edgeid_identityd::IdentitydConfig::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("edgeid-identityd: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = config.validate() {
        eprintln!(
            "edgeid-identityd: config file {}: {e}",
            args.config.display()
        );
        return ExitCode::from(2);
    }
    let runtime = match edgeid_common::runtime::build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("edgeid-identityd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(edgeid_identityd::run(
        config,
        edgeid_common::server::shutdown_signal(),
    )) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "identityd stopped");
            eprintln!("edgeid-identityd: {e}");
            ExitCode::FAILURE
        }
    }
}
