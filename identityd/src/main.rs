//! `edgeid-identityd --config <file>`

fn main() -> std::process::ExitCode {
    edgeid_identityd::main()
}
