//! `edgeid-keyd --config <file>`

use std::process::ExitCode;

fn main() -> ExitCode {
    edgeid_common::daemon::main(
        "keyd",
        "edgeid key service: holds the device's keys and signs with them.",
        edgeid_keyd::KeydConfig::load,
        |_| Ok(()),
        |config| edgeid_keyd::run(config, edgeid_common::server::shutdown_signal()),
    )
}
