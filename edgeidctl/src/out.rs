//! Output that outlives its reader. `edgeidctl status | head -1` closes the
//! pipe after one line; Rust ignores SIGPIPE, so `outln!` would then
//! panic. Here a departed reader (EPIPE) only silences what is left to
//! print: the command finishes its work (`config apply` still writes every
//! file, `dev` keeps serving) and exits as it would have. Any other write
//! error is said once on stderr and makes the exit status a failure.

use std::fmt::Arguments;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once stdout's reader is gone or stdout failed: nothing more is written.
static SILENCED: AtomicBool = AtomicBool::new(false);
/// Set when stdout failed for another reason than a departed reader.
static FAILED: AtomicBool = AtomicBool::new(false);

/// Writes to stdout, unless it is gone.
pub fn stdout(args: Arguments<'_>) {
    if SILENCED.load(Ordering::Relaxed) {
        return;
    }
    let mut out = io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush()) {
        SILENCED.store(true, Ordering::Relaxed);
        if e.kind() != io::ErrorKind::BrokenPipe {
            FAILED.store(true, Ordering::Relaxed);
            stderr(format_args!("edgeidctl: cannot write the output: {e}\n"));
        }
    }
}

/// Writes to stderr; if that is gone too, there is no one left to tell.
pub fn stderr(args: Arguments<'_>) {
    let _ = io::stderr().lock().write_fmt(args);
}

/// Whether stdout failed for another reason than a departed reader.
pub fn failed() -> bool {
    FAILED.load(Ordering::Relaxed)
}

/// `outln!` that survives a closed pipe.
macro_rules! outln {
    () => {
        $crate::out::stdout(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::out::stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` that survives a closed pipe.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::out::stdout(format_args!($($arg)*))
    };
}

/// `errln!` that survives a closed pipe.
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::out::stderr(format_args!("{}\n", format_args!($($arg)*)))
    };
}
