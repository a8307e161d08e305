//! What `config apply` writes, and how: one run at a time, daemons'
//! configs and the secrets they read as private files of their users.

use std::path::Path;

/// Holds a lock on `config` (`/etc/edgeid/config.toml`, which every run
/// reads) until dropped: units restarted together (aziot-keyd and
/// aziot-certd) each run `config apply` before their daemon, and both may
/// write keyd's config, so one waits for the other. Nothing is written.
/// A missing file holds nothing: reading it says so.
pub fn one_at_a_time(config: &Path) -> Result<Option<std::fs::File>, String> {
    match edgeid_common::fs::lock_exclusive(config) {
        Ok(lock) => Ok(Some(lock)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot lock {}: {e}", config.display())),
    }
}

/// A secret a daemon reads from a file `config apply` writes (`rel` under
/// the root): an inline key of `/etc/aziot/config.toml`, where aziotctl
/// would put it (`/var/secrets/aziot/keyd/device-id`), a PKCS#11 PIN or an
/// EST password beside the daemon's config. Raw bytes, 0600 in a 0700
/// directory, the daemon's user's, written atomically and only when it
/// changed. Whether it was written.
pub fn write_secret(
    root: &Path,
    rel: &str,
    secret: &[u8],
    daemon: &str,
    what: &str,
    (uid, gid): (u32, u32),
) -> Result<bool, String> {
    let file = root.join(rel);
    if std::fs::read(&file).ok().as_deref() == Some(secret) {
        return Ok(false);
    }
    // /var/secrets/aziot open to be passed through (keyd's user must reach
    // its own directory below it), as aziotctl leaves it.
    if rel.starts_with("var/secrets/") {
        if let Some(parent) = file.parent().and_then(Path::parent) {
            edgeid_common::fs::ensure_dir(parent, 0o755)
                .map_err(|e| format!("cannot make {}: {e}", parent.display()))?;
        }
    }
    write_private(&file, secret, (uid, gid))?;
    outln!("{daemon:<10} written    {} ({what})", file.display());
    Ok(true)
}

/// `bytes` into `file`, atomically, 0600 in a 0700 directory, both given to
/// `uid`:`gid` when run as root: a daemon's config, keyd's device key.
pub fn write_private(file: &Path, bytes: &[u8], (uid, gid): (u32, u32)) -> Result<(), String> {
    let dir = file
        .parent()
        .ok_or_else(|| format!("{} has no directory", file.display()))?;
    edgeid_common::fs::ensure_dir(dir, 0o700)
        .map_err(|e| format!("cannot make {}: {e}", dir.display()))?;
    edgeid_common::fs::write_atomic(file, bytes, 0o600)
        .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
    if edgeid_common::current_uid() == 0 {
        for path in [dir, file] {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .map_err(|e| format!("cannot give {} to uid {uid}: {e}", path.display()))?;
        }
    }
    Ok(())
}
