//! Logging to stderr (journald picks it up), filtered by `EDGEID_LOG`.

/// What is logged unless `EDGEID_LOG` says otherwise. The hardware libraries'
/// wrappers log expected conditions (no TPM storage key on first start,
/// mechanisms a token lacks) as errors; keyd reports what matters itself.
pub const DEFAULT_FILTER: &str = "info,tss_esapi=off,cryptoki=off";

/// Installs the stderr subscriber; `EDGEID_LOG` overrides [`DEFAULT_FILTER`].
/// Also silences libtss2's own stderr logger unless `TSS2_LOG` is set. Call it
/// first thing in `main`, before any thread starts (it sets an environment variable).
pub fn init() {
    if std::env::var_os("TSS2_LOG").is_none() {
        std::env::set_var("TSS2_LOG", "all+none");
    }
    let filter = tracing_subscriber::EnvFilter::try_from_env("EDGEID_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_FILTER));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // journald and log files get plain text; colours only on a terminal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}
