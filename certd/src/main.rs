//! `edgeid-certd --config <file>`

use std::process::ExitCode;

fn main() -> ExitCode {
    edgeid_common::daemon::main(
        "certd",
        "edgeid certificate service: issues, enrolls, stores and renews certificates.",
        edgeid_certd::CertdConfig::load,
        edgeid_certd::CertdConfig::validate,
        |config| edgeid_certd::run(config, edgeid_common::server::shutdown_signal()),
    )
}
