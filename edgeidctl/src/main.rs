//! `edgeidctl`: the operator's command line, and the package's one binary:
//! invoked by another name (a link: `edgeid-keyd`, `aziot-keyd`, ...) it is
//! that daemon, as the reference's `aziotd` is. Each daemon still runs as its
//! own process and user; only the file is shared.

#[macro_use]
mod out;

mod apply_files;
mod attest;
mod aziot;
mod check;
mod config_apply;
mod daemons;
mod dev;
mod factory;
mod ops;
mod spiffe;
mod spiffe_helper;

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
        /// Modules to declare besides `dev-module` (they get identities in
        /// identityd; only dev-module is mapped to a caller).
        #[arg(long = "module", value_name = "NAME")]
        modules: Vec<String>,
        /// The SPIFFE trust domain of the SVIDs served on `spiffe.sock`.
        #[arg(long, value_name = "NAME", default_value = "edgeid.local")]
        trust_domain: String,
        #[command(flatten)]
        backend: dev::BackendArgs,
    },
    /// Provision the device again (DPS: register anew) and wait for the outcome.
    Reprovision {
        #[command(flatten)]
        run: RunDir,
        /// Return once started, without waiting.
        #[arg(long)]
        no_wait: bool,
    },
    /// Diagnose the device: config, files, daemons, key stores, clock,
    /// certificates, cloud endpoints; a fix hint for each problem.
    Check {
        /// The file a person edits.
        #[arg(long, short, default_value = "/etc/edgeid/config.toml")]
        config: PathBuf,
        /// Where /etc and /var are (image builds).
        #[arg(long, default_value = "/")]
        root: PathBuf,
        #[command(flatten)]
        run: RunDir,
        /// `text` or `json`.
        #[arg(long, default_value = "text", value_parser = ["text", "json"])]
        output: String,
    },
    /// What is provisioned, each daemon's health, modules and certificates.
    Status {
        #[command(flatten)]
        run: RunDir,
    },
    /// Module identities.
    Identity {
        #[command(flatten)]
        run: RunDir,
        #[command(subcommand)]
        action: ops::IdentityAction,
    },
    /// The one config file: check it and write each daemon's own.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Factory line provisioning: identity key, CSR, certificate, check.
    Factory {
        #[command(flatten)]
        run: RunDir,
        #[command(flatten)]
        args: factory::FactoryArgs,
        #[command(subcommand)]
        action: factory::FactoryAction,
    },
    /// Keys.
    Key {
        #[command(flatten)]
        run: RunDir,
        #[command(subcommand)]
        action: ops::KeyAction,
    },
    /// Certificates.
    Cert {
        #[command(flatten)]
        run: RunDir,
        #[command(subcommand)]
        action: ops::CertAction,
    },
    /// The SPIFFE Workload API as a module sees it (what `spire-agent api`
    /// and `spire-agent healthcheck` do).
    Spiffe {
        #[command(flatten)]
        args: spiffe::SpiffeArgs,
        #[command(subcommand)]
        action: spiffe::SpiffeAction,
    },
    /// TPM attestation: quote PCRs on the device; verify a quote anywhere.
    Attest {
        #[command(flatten)]
        run: RunDir,
        #[command(subcommand)]
        action: attest::AttestAction,
    },
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Check the config file and write /etc/edgeid/<daemon>.d/config.toml for
    /// each daemon (0600, the daemon's user); restart those that changed.
    Apply {
        /// The file a person edits.
        #[arg(long, short, default_value = "/etc/edgeid/config.toml")]
        config: PathBuf,
        /// Write under this directory instead of / (image builds); daemon
        /// users are looked up in its etc/passwd.
        #[arg(long, default_value = "/")]
        root: PathBuf,
        /// Check everything, write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Do not restart the daemons whose config changed.
        #[arg(long)]
        no_restart: bool,
        /// Write this daemon's config (keyd, certd, identityd, workloadd)
        /// and those of the daemons it calls, restarting those that changed;
        /// its unit runs this before it starts, so that a restart reads
        /// /etc/aziot anew.
        #[arg(long, value_name = "DAEMON")]
        only: Option<String>,
    },
}

/// Where the daemons' sockets are.
#[derive(clap::Args)]
struct RunDir {
    /// The directory of the daemons' sockets (dev mode: its --dir).
    #[arg(long, env = "EDGEID_RUN_DIR", default_value = "/run/edgeid")]
    run_dir: PathBuf,
}

/// The program a link name stands for: a daemon's `main`, or none (the CLI).
fn daemon_named(name: &str) -> Option<fn() -> ExitCode> {
    Some(match name {
        "edgeid-keyd" | "aziot-keyd" => edgeid_keyd::main,
        "edgeid-certd" | "aziot-certd" => edgeid_certd::main,
        "edgeid-identityd" | "aziot-identityd" => edgeid_identityd::main,
        "edgeid-workloadd" => edgeid_workloadapi::main,
        _ => return None,
    })
}

fn main() -> ExitCode {
    let invoked_as = std::env::args_os()
        .next()
        .map(PathBuf::from)
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
    if let Some(daemon) = invoked_as.as_deref().and_then(daemon_named) {
        return daemon();
    }
    edgeid_common::logging::init();
    let cli = Cli::parse();
    let runtime = match edgeid_common::runtime::build() {
        Ok(rt) => rt,
        Err(e) => {
            errln!("edgeidctl: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Dev {
            dir,
            modules,
            trust_domain,
            backend,
        } => {
            // Every daemon's connections live in this one process.
            if let Err(e) = edgeid_common::runtime::raise_fd_limit() {
                errln!("edgeidctl: cannot raise the open-file limit: {e}");
            }
            runtime.block_on(dev::run(&dir, &modules, &trust_domain, &backend))
        }
        Command::Reprovision { run, no_wait } => {
            runtime.block_on(ops::reprovision(&ops::Sockets::new(&run.run_dir), !no_wait))
        }
        Command::Check {
            config,
            root,
            run,
            output,
        } => runtime.block_on(check::check(&check::Check {
            config,
            root,
            run_dir: run.run_dir,
            json: output == "json",
        })),
        Command::Status { run } => runtime.block_on(ops::status(&ops::Sockets::new(&run.run_dir))),
        Command::Identity { run, action } => {
            runtime.block_on(ops::identity(&ops::Sockets::new(&run.run_dir), &action))
        }
        Command::Config {
            action:
                ConfigAction::Apply {
                    config,
                    root,
                    dry_run,
                    no_restart,
                    only,
                },
        } => config_apply::apply(&config_apply::Apply {
            config,
            root,
            dry_run,
            no_restart,
            only,
        }),
        Command::Factory { run, args, action } => {
            runtime.block_on(factory::run(&run.run_dir, &args, &action))
        }
        Command::Key { run, action } => {
            runtime.block_on(ops::key(&ops::Sockets::new(&run.run_dir), &action))
        }
        Command::Cert { run, action } => {
            runtime.block_on(ops::cert(&ops::Sockets::new(&run.run_dir), &action))
        }
        Command::Spiffe { args, action } => runtime.block_on(spiffe::run(&args, &action)),
        Command::Attest { run, action } => {
            runtime.block_on(attest::run(&run.run_dir.join("keyd.sock"), &action))
        }
    };
    match result {
        Ok(()) if out::failed() => ExitCode::FAILURE,
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            errln!("edgeidctl: {message}");
            ExitCode::FAILURE
        }
    }
}
