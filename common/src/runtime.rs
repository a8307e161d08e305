//! The async runtime every daemon runs on.

/// A multi-threaded runtime sized for small devices: one worker per core (at
/// most 4), and a bounded pool for blocking work (key generation, hardware calls).
pub fn build() -> std::io::Result<tokio::runtime::Runtime> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores.clamp(1, 4))
        .max_blocking_threads(16)
        .enable_all()
        .build()
}
