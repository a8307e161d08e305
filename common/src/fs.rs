//! Files that survive a crash: written whole or not at all, with the mode they need.

use std::ffi::{CString, OsStr};
use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

/// Why [`read_capped`] read nothing.
#[derive(Debug)]
pub enum ReadCapped {
    /// The file could not be opened or read.
    Io(io::Error),
    /// It holds more than the cap (in bytes).
    TooLarge(u64),
}

impl std::fmt::Display for ReadCapped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io(e) => write!(f, "cannot read it: {e}"),
            Self::TooLarge(max) => write!(f, "larger than {max} bytes"),
        }
    }
}

/// Reads `path` into `into` (a caller's buffer: a `Zeroizing` one for a
/// secret), refusing a file of more than `max` bytes without reading past
/// `max + 1` of it: what an administrator names in a config is read, not
/// whatever size it has grown to.
pub fn read_capped(path: &Path, max: u64, into: &mut Vec<u8>) -> Result<(), ReadCapped> {
    File::open(path)
        .and_then(|f| f.take(max.saturating_add(1)).read_to_end(into))
        .map_err(ReadCapped::Io)?;
    if into.len() as u64 > max {
        into.clear();
        return Err(ReadCapped::TooLarge(max));
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically with `mode`: a temp file in the same
/// directory, fsync, rename over the target, fsync the directory. A reader sees
/// the old content or the new one, never a mix; a crash leaves at most a stray
/// temp file that the next write replaces.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    write_atomic_all(&[(path, bytes, mode)])
}

/// Writes every file as [`write_atomic`] does, but renames none until all
/// are written and synced; then renames them in the order given and syncs
/// their directories. A reader sees, per name, the old file or the new one,
/// and the window between the first rename and the last holds no writing.
/// On an error before the renames no file changes.
pub fn write_atomic_all(files: &[(&Path, &[u8], u32)]) -> io::Result<()> {
    let mut staged: Vec<(PathBuf, &Path, PathBuf)> = Vec::with_capacity(files.len());
    let result = (|| {
        for (path, bytes, mode) in files {
            let dir = parent_dir(path)?;
            let name = path.file_name().ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "path has no file name")
            })?;
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
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(*mode)
                .open(&tmp)?;
            staged.push((tmp.clone(), path, dir));
            // The umask may have narrowed the mode; set it exactly.
            f.set_permissions(Permissions::from_mode(*mode))?;
            f.write_all(bytes)?;
            f.sync_all()?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        for (tmp, _, _) in &staged {
            let _ = fs::remove_file(tmp);
        }
        return Err(e);
    }
    let mut dirs: Vec<&PathBuf> = Vec::new();
    for (at, (tmp, path, dir)) in staged.iter().enumerate() {
        if let Err(e) = fs::rename(tmp, path) {
            for (tmp, _, _) in &staged[at..] {
                let _ = fs::remove_file(tmp);
            }
            return Err(e);
        }
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    for dir in dirs {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
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

/// Creates `path` (and missing parents) as a 0700 directory, or checks that
/// an existing one is a directory owned by this process's uid and sets it
/// 0700. A state directory someone else prepared is refused: its owner
/// could have planted a key in it, or swap a socket or a file later.
pub fn ensure_private_dir(path: &Path) -> io::Result<()> {
    match fs::metadata(path) {
        Ok(meta) if !meta.is_dir() => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a directory", path.display()),
            ))
        }
        Ok(meta) if meta.uid() != crate::current_uid() => {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{} is owned by uid {}, not by this process (uid {}): refusing a directory someone else controls (use another, or chown it)",
                    path.display(),
                    meta.uid(),
                    crate::current_uid()
                ),
            ))
        }
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            DirBuilder::new().recursive(true).mode(0o700).create(path)?;
        }
        Err(e) => return Err(e),
    }
    fs::set_permissions(path, Permissions::from_mode(0o700))
}

/// Opens the directory a secret lives in, if it is one nobody else can
/// plant or swap a file in: owned by this process's uid or root, writable
/// by neither group nor others.
fn open_trusted_dir(dir: &Path) -> io::Result<File> {
    let handle = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(dir)?;
    let meta = handle.metadata()?;
    let me = crate::current_uid();
    if meta.uid() != me && meta.uid() != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is owned by uid {}, not by this process (uid {me}) or root: refusing to keep a secret where someone else can plant or swap it",
                dir.display(),
                meta.uid()
            ),
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} has mode {:04o}: group or others may write in it, so a secret there could be planted or swapped (chmod 700 {})",
                dir.display(),
                meta.mode() & 0o7777,
                dir.display()
            ),
        ));
    }
    Ok(handle)
}

/// Holds an exclusive lock on the existing file `path` (opened for
/// reading: nothing is written) until the returned file is dropped: one
/// holder at a time among processes that lock the same file, the others
/// waiting their turn.
pub fn lock_exclusive(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)?;
    // SAFETY: flock(2) on a descriptor the File owns; the lock goes with it.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

/// Opens `name` in `dir` for reading, never following a symbolic link.
fn open_no_follow(dir: &File, name: &OsStr) -> io::Result<File> {
    let name = CString::new(name.as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a file name with a NUL byte"))?;
    // SAFETY: openat(2) on a directory fd we hold open, with a NUL-terminated
    // name; a descriptor it returns is ours alone and owned by the File.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by openat and is owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Fails if `path` can be read or written by group or others: secrets must be 0600/0400.
pub fn check_private(path: &Path) -> io::Result<()> {
    private_mode(path, fs::metadata(path)?.permissions().mode())
}

/// Fails if `mode` (of the secret at `path`) lets group or others in.
fn private_mode(path: &Path, mode: u32) -> io::Result<()> {
    let mode = mode & 0o777;
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
/// Loads it, or, if there is none, makes one with `generate` and writes it
/// (0600, atomically, in a 0700 directory). The returned bytes are wiped
/// when dropped. Refused: a directory that someone other than this uid or
/// root owns, or that group or others may write; a secret that is a
/// symbolic link, not a plain file, not this uid's, readable by group or
/// others, or of the wrong length.
pub fn load_or_create_secret(
    path: &Path,
    len: usize,
    generate: impl FnOnce(&mut [u8]) -> io::Result<()>,
) -> io::Result<Zeroizing<Vec<u8>>> {
    let dir = parent_dir(path)?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let found = match open_trusted_dir(&dir) {
        Ok(trusted) => match open_no_follow(&trusted, name) {
            Ok(f) => Some(f),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "{} is a symbolic link: a secret must be a plain file of this daemon's",
                        path.display()
                    ),
                ))
            }
            Err(e) => return Err(e),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            ensure_private_dir(&dir)?;
            None
        }
        Err(e) => return Err(e),
    };
    let Some(mut file) = found else {
        let mut fresh = Zeroizing::new(vec![0u8; len]);
        generate(&mut fresh)?;
        write_atomic(path, &fresh, 0o600)?;
        return Ok(fresh);
    };
    let meta = file.metadata()?;
    let me = crate::current_uid();
    if !meta.is_file() || meta.uid() != me {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is not a plain file owned by this process (uid {me}; it is uid {}'s): refusing a secret someone else made",
                path.display(),
                meta.uid()
            ),
        ));
    }
    private_mode(path, meta.mode())?;
    // Room for one byte more than a secret has, so that reading never
    // grows (and copies) the buffer, and a longer file is seen as such.
    let mut bytes = Zeroizing::new(Vec::with_capacity(len + 1));
    (&mut file).take(len as u64 + 1).read_to_end(&mut bytes)?;
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
    fn a_capped_read_takes_up_to_the_cap_and_refuses_one_byte_more() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, [7u8; 10]).unwrap();
        let mut into = Vec::new();
        read_capped(&file, 10, &mut into).unwrap();
        assert_eq!(into, [7u8; 10]);
        let mut into = Vec::new();
        let e = read_capped(&file, 9, &mut into).unwrap_err();
        assert_eq!(e.to_string(), "larger than 9 bytes");
        assert!(into.is_empty(), "nothing of a refused file is kept");
        let e = read_capped(&dir.path().join("none"), 9, &mut into).unwrap_err();
        assert!(e.to_string().starts_with("cannot read it: "), "{e}");
    }

    #[test]
    fn files_written_together_change_all_or_none() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        write_atomic_all(&[(&a, b"a1", 0o644), (&b, b"b1", 0o600)]).unwrap();
        assert_eq!(
            (fs::read(&a).unwrap(), fs::read(&b).unwrap()),
            (b"a1".to_vec(), b"b1".to_vec())
        );
        assert_eq!(
            fs::metadata(&b).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // The second cannot be written: the first is not replaced either,
        // and no temp file is left.
        let missing = dir.path().join("missing/c");
        assert!(write_atomic_all(&[(&a, b"a2", 0o644), (&missing, b"c", 0o644)]).is_err());
        assert_eq!(fs::read(&a).unwrap(), b"a1");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

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

    /// Issue 17, finding 8: a directory or a secret someone else prepared.
    #[test]
    fn secrets_and_state_dirs_someone_else_controls_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let secrets = dir.path().join("secrets");
        let p = secrets.join("master.key");
        let make = |b: &mut [u8]| {
            b.copy_from_slice(b"abcd");
            Ok(())
        };
        load_or_create_secret(&p, 4, make).unwrap();
        // A symbolic link where the secret should be (to a file with the
        // right mode and length): refused, not followed.
        let elsewhere = dir.path().join("planted");
        write_atomic(&elsewhere, b"evil", 0o600).unwrap();
        fs::remove_file(&p).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &p).unwrap();
        let err = load_or_create_secret(&p, 4, make).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        fs::remove_file(&p).unwrap();
        // A directory group or others may write in.
        fs::set_permissions(&secrets, Permissions::from_mode(0o777)).unwrap();
        let err = load_or_create_secret(&p, 4, make).unwrap_err();
        assert!(err.to_string().contains("chmod 700"), "{err}");
        fs::set_permissions(&secrets, Permissions::from_mode(0o700)).unwrap();
        if crate::current_uid() == 0 {
            // Another uid's secret, and another uid's directory.
            write_atomic(&p, b"evil", 0o600).unwrap();
            std::os::unix::fs::chown(&p, Some(4242), Some(4242)).unwrap();
            let err = load_or_create_secret(&p, 4, make).unwrap_err();
            assert!(err.to_string().contains("uid 4242"), "{err}");
            fs::remove_file(&p).unwrap();
            std::os::unix::fs::chown(&secrets, Some(4242), Some(4242)).unwrap();
            let err = load_or_create_secret(&p, 4, make).unwrap_err();
            assert!(err.to_string().contains("owned by uid 4242"), "{err}");
            let err = ensure_private_dir(&secrets).unwrap_err();
            assert!(err.to_string().contains("owned by uid 4242"), "{err}");
        }
        let fresh = dir.path().join("a/b");
        ensure_private_dir(&fresh).unwrap();
        assert_eq!(
            fs::metadata(&fresh).unwrap().permissions().mode() & 0o777,
            0o700
        );
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
