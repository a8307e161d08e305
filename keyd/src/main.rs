//! `edgeid-keyd --config <file>`

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// edgeid key service: holds the device's keys and signs with them.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The config file.
    #[arg(long, short, default_value = "/etc/edgeid/keyd.d/config.toml")]
    config: PathBuf,
}

fn main() -> ExitCode {
    edgeid_common::logging::init();
    let args = Args::parse();
    let config = match edgeid_keyd::KeydConfig::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("edgeid-keyd: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match edgeid_common::runtime::build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("edgeid-keyd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(edgeid_keyd::run(
        config,
        edgeid_common::server::shutdown_signal(),
    )) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "keyd stopped");
            eprintln!("edgeid-keyd: {e}");
            ExitCode::FAILURE
        }
    }
}
