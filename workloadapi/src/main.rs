//! `edgeid-workloadd --config <file>`

use std::process::ExitCode;

fn main() -> ExitCode {
    edgeid_common::daemon::main(
        "workloadd",
        "edgeid workload API: what modules call for signatures, encryption, certificates and trust bundles.",
        edgeid_workloadapi::WorkloadConfig::load,
        edgeid_workloadapi::WorkloadConfig::validate,
        |config| edgeid_workloadapi::run(config, edgeid_common::server::shutdown_signal()),
    )
}
