//! Logging to stderr (journald picks it up), filtered by `EDGEID_LOG`.

/// Installs the stderr subscriber; `EDGEID_LOG` overrides the default `info`.
pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("EDGEID_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // journald and log files get plain text; colours only on a terminal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}
