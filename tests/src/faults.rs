//! What the fault tests (kills, full disks, hostile input) share: the
//! files a daemon left on disk, and reproducible randomness.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Every regular file under `dir`, recursively (none if `dir` is missing).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries {
            let entry = entry.expect("read a directory entry");
            let kind = entry.file_type().expect("file type");
            if kind.is_dir() {
                todo.push(entry.path());
            } else if kind.is_file() {
                out.push(entry.path());
            }
        }
    }
    out
}

/// Every regular file under `dir` and its bytes: compare two to see that
/// nothing on disk changed.
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    files_under(dir)
        .into_iter()
        .map(|path| {
            let bytes = std::fs::read(&path).expect("read a state file");
            (path, bytes)
        })
        .collect()
}

/// The rounds of a kill test: `EDGEID_CRASH_ROUNDS`, else `default`.
pub fn rounds(default: u64) -> u64 {
    std::env::var("EDGEID_CRASH_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

/// A small xorshift: random kill moments and victims, reproducible from the
/// seed it prints.
pub struct Rng(u64);

impl Rng {
    /// Seeded from the clock; the seed is printed.
    pub fn from_clock() -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1;
        eprintln!("seed {seed}");
        Self(seed)
    }

    /// A number below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}
