//! The one `main` of every daemon binary: `--config <file>` (default
//! `/etc/edgeid/<name>.d/config.toml`), load and check it (exit 2 with a
//! message naming the file on a bad one), run until SIGTERM / SIGINT, exit 0
//! after draining, 1 on a failure.

use std::fmt::Display;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::config::ConfigError;

/// Runs daemon `name` (`keyd`, `certd`, ...): `load` and `validate` its
/// config, then `run` it on the shared runtime.
pub fn main<C, Fut, E>(
    name: &'static str,
    about: &'static str,
    load: fn(&Path) -> Result<C, ConfigError>,
    validate: fn(&C) -> Result<(), String>,
    run: impl FnOnce(C) -> Fut,
) -> ExitCode
where
    Fut: Future<Output = Result<(), E>>,
    E: Display,
{
    crate::logging::init();
    let binary = format!("edgeid-{name}");
    let matches = clap::Command::new(binary.clone())
        .about(about)
        .version(crate::VERSION)
        .arg(
            clap::Arg::new("config")
                .long("config")
                .short('c')
                .value_name("FILE")
                .value_parser(clap::value_parser!(PathBuf))
                .default_value(format!("/etc/edgeid/{name}.d/config.toml"))
                .help("The config file"),
        )
        .get_matches();
    let Some(path) = matches.get_one::<PathBuf>("config").cloned() else {
        eprintln!("{binary}: --config is required");
        return ExitCode::from(2);
    };
    let config = match load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{binary}: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = validate(&config) {
        eprintln!("{binary}: config file {}: {e}", path.display());
        return ExitCode::from(2);
    }
    if let Err(e) = crate::runtime::raise_fd_limit() {
        tracing::warn!(error = %e, "cannot raise the open-file limit; connections are capped by the current one");
    }
    let runtime = match crate::runtime::build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{binary}: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "{name} stopped");
            eprintln!("{binary}: {e}");
            ExitCode::FAILURE
        }
    }
}
