//! Where a daemon's socket comes from: systemd socket activation (`LISTEN_FDS`),
//! or a path it binds itself.

use std::io;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::{UnixListener, UnixStream};

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
const SD_LISTEN_FDS_START: RawFd = 3;
/// Whether systemd passed this process a socket named `name`.
pub fn systemd_passed(name: &str) -> bool {
    passed_fds().is_some_and(|(count, names)| names.iter().take(count).any(|n| n == name))
}

/// The descriptors systemd passed this process: how many, and their
/// `FileDescriptorName`s (possibly none).
fn passed_fds() -> Option<(usize, Vec<String>)> {
    let for_us = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        .is_some_and(|p| p == std::process::id());
    let count = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(0);
    if !for_us || count < 1 {
        return None;
    }
    let names = std::env::var("LISTEN_FDNAMES")
        .map(|n| n.split(':').map(str::to_owned).collect())
        .unwrap_or_default();
    Some((count, names))
}

/// `sun_path` holds 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

/// A listening Unix socket. When this process created the socket file, dropping
/// the listener removes it (if it is still the same file).
#[derive(Debug)]
pub struct Listener {
    inner: UnixListener,
    owned: Option<OwnedPath>,
    description: String,
}

#[derive(Debug)]
struct OwnedPath {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl Listener {
    /// Takes over the socket systemd passed, if any; else binds `path` with `mode`.
    pub fn open(path: &Path, mode: u32) -> io::Result<Self> {
        match Self::from_systemd()? {
            Some(l) => Ok(l),
            None => Self::bind(path, mode),
        }
    }

    /// Takes over the socket systemd passed under `FileDescriptorName=name`,
    /// if any; else binds `path` with `mode`. For a daemon's second socket
    /// (its first is [`Self::open`]'s).
    pub fn open_named(path: &Path, mode: u32, name: &str) -> io::Result<Self> {
        let fd = passed_fds().and_then(|(count, names)| {
            let i = names.iter().position(|n| n == name)?;
            (i < count).then_some(SD_LISTEN_FDS_START + i as RawFd)
        });
        match fd {
            Some(fd) => Self::from_fd(fd).map(|mut l| {
                l.description = format!("{} [{name}]", l.description);
                l
            }),
            None => Self::bind(path, mode),
        }
    }

    /// The socket passed by systemd socket activation, if this process was
    /// given one: the first (others are taken by name, [`Self::open_named`]).
    pub fn from_systemd() -> io::Result<Option<Self>> {
        match passed_fds() {
            Some(_) => Self::from_fd(SD_LISTEN_FDS_START).map(Some),
            None => Ok(None),
        }
    }

    fn from_fd(fd: RawFd) -> io::Result<Self> {
        // Each passed descriptor is owned once: a second listener on it
        // (two units without names, say) would close it under the first.
        static TAKEN: std::sync::Mutex<Vec<RawFd>> = std::sync::Mutex::new(Vec::new());
        {
            let mut taken = crate::sync::lock(&TAKEN);
            if taken.contains(&fd) {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("descriptor {fd} from systemd is already in use by another socket; give each .socket unit a FileDescriptorName"),
                ));
            }
            taken.push(fd);
        }
        // SAFETY: fstat only reads into the buffer we provide.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstat(fd, &mut st) } != 0 || st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "LISTEN_FDS is set but descriptor {fd} is not a socket; check the .socket unit"
                ),
            ));
        }
        // Children (none today) must not inherit the listening socket.
        // SAFETY: fcntl on a descriptor we were handed; no memory is involved.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        // SAFETY: systemd hands this descriptor to us alone; we own it from here on.
        let std_listener = unsafe { std::os::unix::net::UnixListener::from_raw_fd(fd) };
        let addr = std_listener.local_addr().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("descriptor {fd} from systemd is not a Unix socket: {e}"),
            )
        })?;
        std_listener.set_nonblocking(true)?;
        let description = match addr.as_pathname() {
            Some(p) => format!("{} (from systemd)", p.display()),
            None => "socket from systemd".to_owned(),
        };
        Ok(Self {
            inner: UnixListener::from_std(std_listener)?,
            owned: None,
            description,
        })
    }

    /// Binds `path`, replacing a stale socket file left by a crash. The socket gets
    /// `mode` before it appears at `path`: it is bound under a temporary name,
    /// chmod-ed, then renamed into place.
    pub fn bind(path: &Path, mode: u32) -> io::Result<Self> {
        if path.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "socket path {} is longer than {MAX_SOCKET_PATH} bytes; choose a shorter one",
                    path.display()
                ),
            ));
        }
        remove_stale(path)?;
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if !dir.exists() {
            crate::fs::ensure_dir(dir, 0o755)?;
        }
        let name = path.file_name().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("socket path {} has no file name", path.display()),
            )
        })?;
        // A short temporary name so that it fits wherever the final path fits.
        let tmp = dir.join(format!(".{}.{}", std::process::id() % 100_000, name.len()));
        let _ = std::fs::remove_file(&tmp);
        let listener = UnixListener::bind(&tmp).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot bind {}: {e}", path.display()))
        })?;
        let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = placed {
            let _ = std::fs::remove_file(&tmp);
            return Err(io::Error::new(
                e.kind(),
                format!("cannot create socket {}: {e}", path.display()),
            ));
        }
        let meta = std::fs::symlink_metadata(path)?;
        Ok(Self {
            inner: listener,
            owned: Some(OwnedPath {
                path: path.to_owned(),
                dev: meta.dev(),
                ino: meta.ino(),
            }),
            description: path.display().to_string(),
        })
    }

    /// Waits for the next connection.
    pub async fn accept(&self) -> io::Result<UnixStream> {
        self.inner.accept().await.map(|(s, _)| s)
    }

    /// Where this listener is, for logs.
    pub fn description(&self) -> &str {
        &self.description
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some(owned) = &self.owned {
            // Only remove the file if it is still the one we created.
            if let Ok(meta) = std::fs::symlink_metadata(&owned.path) {
                if meta.dev() == owned.dev && meta.ino() == owned.ino {
                    let _ = std::fs::remove_file(&owned.path);
                }
            }
        }
    }
}

/// Removes a socket file nobody listens on; refuses to touch a live socket or a
/// file that is not a socket.
fn remove_stale(path: &Path) -> io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{} exists and is not a socket; refusing to replace it",
                path.display()
            ),
        ));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "another process is already serving {}; stop it first",
                path.display()
            ),
        )),
        Err(_) => {
            tracing::info!(path = %path.display(), "removing stale socket");
            match std::fs::remove_file(path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bind_sets_mode_replaces_stale_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.sock");
        // A stale socket: bound, then its listener gone without removing the file.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let l = Listener::bind(&path, 0o600).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // A live socket is not stolen.
        let err = Listener::bind(&path, 0o600).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
        drop(l);
        assert!(!path.exists(), "socket file removed on drop");
    }

    #[tokio::test]
    async fn refuses_to_replace_a_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("not-a-socket");
        std::fs::write(&path, b"data").unwrap();
        let err = Listener::bind(&path, 0o600).unwrap_err();
        assert!(err.to_string().contains("not a socket"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"data");
    }
}
