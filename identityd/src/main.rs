//! `edgeid-identityd --config <file>`

use std::process::ExitCode;

fn main() -> ExitCode {
    edgeid_common::daemon::main(
        "identityd",
        "edgeid identity service: provisions the device and manages module identities.",
        edgeid_identityd::IdentitydConfig::load,
        edgeid_identityd::IdentitydConfig::validate,
        |config| edgeid_identityd::run(config, edgeid_common::server::shutdown_signal()),
    )
}
