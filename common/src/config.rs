//! Config files: TOML, unknown keys refused, every error naming the file, the key
//! and what is wrong with it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;

/// A config file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML, or a key has a bad value.
    #[error("config file {path}: {location}{key}{message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// `line L, column C: ` where known.
        location: String,
        /// `key 'a.b': ` where known.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// Reads and parses a TOML config file.
pub fn load<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(path, &text)
}

/// Parses TOML text; `path` only names the source in errors.
pub fn parse<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T, ConfigError> {
    let de = toml::Deserializer::new(text);
    serde_path_to_error::deserialize(de).map_err(|err| {
        let key = err.path().to_string();
        let inner = err.into_inner();
        let location = inner
            .span()
            .map(|span| {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                format!("line {line}, column {column}: ")
            })
            .unwrap_or_default();
        ConfigError::Invalid {
            path: path.to_owned(),
            location,
            key: if key == "." || key.is_empty() {
                String::new()
            } else {
                format!("key '{key}': ")
            },
            message: inner.message().trim().to_owned(),
        }
    })
}

/// Settings every daemon's `[server]` table shares.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Socket path to bind when not started by systemd socket activation.
    pub socket: PathBuf,
    /// Mode of the socket file when this daemon creates it.
    pub socket_mode: u32,
    /// Largest request body accepted; larger ones get 413. Each daemon
    /// has its own default, sized to its largest legitimate request (keyd
    /// 256 KiB, the others 1 MiB).
    pub max_body_bytes: Option<usize>,
    /// Request bodies held in memory at once, all connections together;
    /// past it a request is refused with 503 instead of buffered.
    pub max_buffered_bytes: usize,
    /// Time a client has to send a request's headers.
    pub header_read_timeout_secs: u64,
    /// Time a request's body has to arrive, and a handler has to answer.
    pub request_timeout_secs: u64,
    /// A connection with no traffic and no request in flight for this long is closed.
    pub idle_timeout_secs: u64,
    /// Connections served at once. At the cap a new connection takes the
    /// place of the least useful one (idle, or never finished a request);
    /// when every one is at work, new ones wait in the listen queue.
    pub max_connections: usize,
    /// Connections one uid may hold at once, so that no caller takes more
    /// than its share (default: a quarter of `max_connections`).
    pub max_connections_per_caller: Option<usize>,
    /// HTTP/2 (SPIFFE) streams one uid may have open at once.
    pub max_streams_per_caller: usize,
    /// On SIGTERM, how long in-flight requests get to finish.
    pub shutdown_grace_secs: u64,
}

impl ServerConfig {
    /// Defaults, bound at `socket` with mode 0600 (dev mode, tests).
    pub fn private_at(socket: &Path) -> Self {
        Self {
            socket: socket.to_owned(),
            socket_mode: 0o600,
            ..Self::default()
        }
    }

    /// The socket path to bind when not socket-activated: the configured one,
    /// or the daemon's `default`.
    pub fn socket_or(&self, default: &str) -> PathBuf {
        if self.socket.as_os_str().is_empty() {
            PathBuf::from(default)
        } else {
            self.socket.clone()
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            socket: PathBuf::new(),
            socket_mode: 0o660,
            max_body_bytes: None,
            max_buffered_bytes: 32 * 1024 * 1024,
            header_read_timeout_secs: 10,
            request_timeout_secs: 60,
            idle_timeout_secs: 60,
            max_connections: 1024,
            max_connections_per_caller: None,
            max_streams_per_caller: 256,
            shutdown_grace_secs: 30,
        }
    }
}

/// The limits of a default `[server]` section.
impl Default for crate::server::Limits {
    fn default() -> Self {
        ServerConfig::default().limits()
    }
}

/// The body cap of a daemon that names none of its own.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;

impl ServerConfig {
    /// The limits the server enforces.
    pub fn limits(&self) -> crate::server::Limits {
        self.limits_with_body(DEFAULT_MAX_BODY_BYTES)
    }

    /// The limits, with `default_body` as the body cap unless one is configured.
    pub fn limits_with_body(&self, default_body: usize) -> crate::server::Limits {
        let max_body_bytes = self.max_body_bytes.unwrap_or(default_body);
        crate::server::Limits {
            max_body_bytes,
            max_buffered_bytes: self.max_buffered_bytes.max(max_body_bytes),
            header_read_timeout: Duration::from_secs(self.header_read_timeout_secs.max(1)),
            request_timeout: Duration::from_secs(self.request_timeout_secs.max(1)),
            idle_timeout: Duration::from_secs(self.idle_timeout_secs.max(1)),
            max_connections: self.max_connections.max(1),
            max_connections_per_caller: self
                .max_connections_per_caller
                .unwrap_or(self.max_connections / 4)
                .clamp(1, self.max_connections.max(1)),
            max_streams_per_caller: self.max_streams_per_caller.max(1),
            shutdown_grace: Duration::from_secs(self.shutdown_grace_secs),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Sample {
        state_dir: PathBuf,
        #[serde(default)]
        server: ServerConfig,
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let text = "state_dir = \"/x\"\n[server]\nmax_body_bytes = \"big\"\n";
        let err = parse::<Sample>(Path::new("/etc/x.toml"), text)
            .unwrap_err()
            .to_string();
        assert!(err.contains("/etc/x.toml"), "{err}");
        assert!(err.contains("server.max_body_bytes"), "{err}");
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = parse::<Sample>(Path::new("c.toml"), "state_dir = \"/x\"\nstate_dri = 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `state_dri`"), "{err}");
    }

    #[test]
    fn octal_modes_and_defaults() {
        let s: Sample = parse(
            Path::new("c"),
            "state_dir = \"/x\"\n[server]\nsocket_mode = 0o600\n",
        )
        .unwrap();
        assert_eq!(s.server.socket_mode, 0o600);
        assert_eq!(s.server.limits().max_body_bytes, 1024 * 1024);
    }
}
