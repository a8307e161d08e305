//! Files that survive a crash: written whole or not at all, with the mode they need.

use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

/// Writes `bytes` to `path` atomically with `mode`: a temp file in the same
/// directory, fsync, rename over the target, fsync the directory. A reader sees
/// the old content or the new one, never a mix; a crash leaves at most a stray
/// temp file that the next write replaces.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = parent_dir(path)?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    // A stale temp file from a crash is ours to replace.
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask may have narrowed the mode; set it exactly.
        f.set_permissions(Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Whether a write failed because the file system is full (or the quota is
/// used up): the operator's to fix, not a bug, and worth saying so.
pub fn is_out_of_space(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

/// Creates `path` (and missing parents) as a directory with `mode`, or checks that
/// an existing one is a directory and sets its mode.
pub fn ensure_dir(path: &Path, mode: u32) -> io::Result<()> {
    match fs::metadata(path) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a directory", path.display()),
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            DirBuilder::new().recursive(true).mode(mode).create(path)?;
        }
        Err(e) => return Err(e),
    }
    fs::set_permissions(path, Permissions::from_mode(mode))
}

/// Fails if `path` can be read or written by group or others: secrets must be 0600/0400.
pub fn check_private(path: &Path) -> io::Result<()> {
    let mode = fs::metadata(path)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} has mode {mode:04o}; a secret must not be accessible to group or others (chmod 600 {})",
                path.display(),
                path.display()
            ),
        ));
    }
    Ok(())
}

/// A secret kept in a file: exactly `len` bytes, readable by its owner only.
/// Loads it, refusing a file that others can read or of the wrong length; or,
/// if there is none, makes one with `generate` and writes it (0600, atomically,
/// in a 0700 directory). The returned bytes are wiped when dropped.
pub fn load_or_create_secret(
    path: &Path,
    len: usize,
    generate: impl FnOnce(&mut [u8]) -> io::Result<()>,
) -> io::Result<Zeroizing<Vec<u8>>> {
    match fs::read(path) {
        Ok(bytes) => {
            let bytes = Zeroizing::new(bytes);
            check_private(path)?;
            if bytes.len() != len {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{} has {} bytes, expected {len}",
                        path.display(),
                        bytes.len()
                    ),
                ));
            }
            Ok(bytes)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let dir = parent_dir(path)?;
            if !dir.exists() {
                ensure_dir(&dir, 0o700)?;
            }
            let mut fresh = Zeroizing::new(vec![0u8; len]);
            generate(&mut fresh)?;
            write_atomic(path, &fresh, 0o600)?;
            Ok(fresh)
        }
        Err(e) => Err(e),
    }
}

fn parent_dir(path: &Path) -> io::Result<PathBuf> {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => Ok(p.to_path_buf()),
        _ => Ok(PathBuf::from(".")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_sets_mode_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secret");
        write_atomic(&p, b"one", 0o600).unwrap();
        write_atomic(&p, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left behind"
        );
    }

    #[test]
    fn private_check_refuses_world_readable() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        write_atomic(&p, b"x", 0o644).unwrap();
        let err = check_private(&p).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
        write_atomic(&p, b"x", 0o600).unwrap();
        check_private(&p).unwrap();
    }

    #[test]
    fn secrets_are_created_once_then_loaded_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secrets/master.key");
        let made = load_or_create_secret(&p, 4, |b| {
            b.copy_from_slice(b"abcd");
            Ok(())
        })
        .unwrap();
        assert_eq!(made.as_slice(), b"abcd");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::metadata(p.parent().unwrap())
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o700
        );
        let again = load_or_create_secret(&p, 4, |_| panic!("must not regenerate")).unwrap();
        assert_eq!(again.as_slice(), b"abcd");
        let err = load_or_create_secret(&p, 8, |_| Ok(())).unwrap_err();
        assert!(err.to_string().contains("expected 8"), "{err}");
        fs::set_permissions(&p, Permissions::from_mode(0o644)).unwrap();
        assert!(load_or_create_secret(&p, 4, |_| Ok(())).is_err());
    }

    #[test]
    fn ensure_dir_creates_with_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a/b");
        ensure_dir(&p, 0o700).unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }
}
