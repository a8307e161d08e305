//! `edgeid-workloadd --config <file>`

fn main() -> std::process::ExitCode {
    edgeid_workloadapi::main()
}
