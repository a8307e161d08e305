//! `edgeid-keyd --config <file>`

fn main() -> std::process::ExitCode {
    edgeid_keyd::main()
}
