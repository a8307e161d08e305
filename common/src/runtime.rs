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

/// Raises this process's soft limit on open files to its hard limit, and
/// returns the limit now in force. Each connection is a descriptor, and the
/// usual soft limit (1024, systemd's default too) is below what a busy
/// workload socket holds with its upstream connections; the hard limit is
/// what the administrator allows (`LimitNOFILE=`), so that one is used.
pub fn raise_fd_limit() -> std::io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        limit = raised;
    }
    Ok(limit.rlim_cur)
}
