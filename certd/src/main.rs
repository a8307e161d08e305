//! `edgeid-certd --config <file>`

fn main() -> std::process::ExitCode {
    edgeid_certd::main()
}
