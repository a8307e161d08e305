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
    /// Provision the device again (DPS: register anew) and wait for the outcome.
    Reprovision {
        /// identityd's socket.
        #[arg(
            long,
            env = "EDGEID_IDENTITYD_SOCKET",
            default_value = "/run/edgeid/identityd.sock"
        )]
        socket: PathBuf,
        /// Return once started, without waiting.
        #[arg(long)]
        no_wait: bool,
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
        Command::Reprovision { socket, no_wait } => {
            runtime.block_on(reprovision(&socket, !no_wait))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("edgeidctl: {message}");
            ExitCode::FAILURE
        }
    }
}

/// `edgeidctl reprovision`: asks identityd to provision again and, unless
/// told not to, waits for the outcome and prints it.
async fn reprovision(socket: &std::path::Path, wait: bool) -> Result<(), String> {
    use edgeid_identityd::api::ProvisioningState;
    let client = edgeid_identityd::IdentitydClient::new(socket);
    let mut status = client
        .reprovision()
        .await
        .map_err(|e| format!("identityd at {}: {e}", socket.display()))?;
    println!("reprovisioning ({} provisioning)", status.source);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    while wait && status.state == ProvisioningState::Provisioning {
        if std::time::Instant::now() > deadline {
            return Err("still provisioning after 300 s; see identityd's log".into());
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        status = client
            .provisioning()
            .await
            .map_err(|e| format!("identityd at {}: {e}", socket.display()))?;
    }
    match status.state {
        ProvisioningState::Provisioned => {
            let device = client
                .device()
                .await
                .map_err(|e| format!("identityd at {}: {e}", socket.display()))?;
            println!(
                "provisioned: device '{}' on '{}'",
                device.device_id, device.hub
            );
            Ok(())
        }
        ProvisioningState::Failed => Err(format!(
            "reprovisioning failed: {}",
            status
                .last_error
                .unwrap_or_else(|| "no reason recorded".into())
        )),
        ProvisioningState::Provisioning => Ok(()),
    }
}
