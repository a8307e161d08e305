//! `[[principal]]`: who calls identityd, and as what.

use serde::Deserialize;

/// A caller's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// May read the device identity and manage module identities.
    Orchestrator,
    /// May read its own module identity and get its tokens.
    Module,
    /// May read the device identity, nothing else (the reference's idtype device).
    Device,
}

/// `[[principal]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrincipalConfig {
    /// A name for logs and errors.
    pub name: String,
    /// The caller's uid.
    pub uid: u32,
    /// What it may do.
    pub role: Role,
    /// For `module`: its module id (default: `name`).
    #[serde(default)]
    pub module_id: Option<String>,
    /// For `module`: made once provisioned, if missing (the reference's idtype module).
    #[serde(default)]
    pub keep_module: bool,
    /// For `module`: it has a local identity (the reference's idtype
    /// local), issued anew at each `GET /identities/modules/{its
    /// module}?type=local`, a TLS certificate of this kind.
    #[serde(default)]
    pub local_id: Option<LocalIdKind>,
}

/// What a principal's local identity certificate is for (the reference's
/// `localid.attributes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LocalIdKind {
    /// A TLS client.
    Client,
    /// A TLS server, and client too (as the reference's `server`).
    Server,
}

impl PrincipalConfig {
    /// The module a `module` principal is.
    pub fn module(&self) -> &str {
        self.module_id.as_deref().unwrap_or(&self.name)
    }
}
