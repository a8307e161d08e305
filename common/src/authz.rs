//! Who is calling, and what they may touch.
//!
//! The caller is read from the socket (`SO_PEERCRED`), never from the request.
//! Grants are glob patterns over resource ids (`module/*`, `device-?d`).

use std::fmt;

use serde::{Deserialize, Deserializer};

/// The process on the other end of a connection, as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// Effective uid at connect time.
    pub uid: u32,
    /// Effective gid at connect time.
    pub gid: u32,
    /// Pid at connect time (absent if the kernel did not report one).
    pub pid: Option<i32>,
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.pid {
            Some(pid) => write!(f, "uid {} (pid {pid})", self.uid),
            None => write!(f, "uid {}", self.uid),
        }
    }
}

/// The uids that may do anything: root and the daemon's own uid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admins(Vec<u32>);

impl Admins {
    /// uid 0 and this process's effective uid (ARCHITECTURE.md section 3).
    pub fn root_and_self() -> Self {
        let own = crate::current_uid();
        Self(if own == 0 { vec![0] } else { vec![0, own] })
    }

    /// An explicit list; tests use an empty one to see refusals without changing uid.
    pub fn only(uids: Vec<u32>) -> Self {
        Self(uids)
    }

    /// Whether the caller is an administrator.
    pub fn contains(&self, caller: &Caller) -> bool {
        self.0.contains(&caller.uid)
    }
}

/// A list of glob patterns that grant access to resource ids.
#[derive(Debug, Clone, Default)]
pub struct Grants(Vec<glob::Pattern>);

impl Grants {
    /// Parses each pattern; the error names the bad one.
    pub fn parse<S: AsRef<str>>(patterns: &[S]) -> Result<Self, String> {
        patterns
            .iter()
            .map(|p| {
                glob::Pattern::new(p.as_ref())
                    .map_err(|e| format!("grant pattern '{}' is not a valid glob: {e}", p.as_ref()))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    /// Whether some pattern matches the id. `*` and `?` stop at `/`
    /// (`module/*` is `module/a`, never `module/a/b`); `**` as a whole
    /// segment spans a subtree (`module/**`).
    pub fn allows(&self, id: &str) -> bool {
        const WITHIN_A_SEGMENT: glob::MatchOptions = glob::MatchOptions {
            case_sensitive: true,
            require_literal_separator: true,
            require_literal_leading_dot: false,
        };
        self.0.iter().any(|p| p.matches_with(id, WITHIN_A_SEGMENT))
    }

    /// The patterns, as written.
    pub fn patterns(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(glob::Pattern::as_str)
    }
}

impl<'de> Deserialize<'de> for Grants {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let patterns = Vec::<String>::deserialize(d)?;
        Grants::parse(&patterns).map_err(serde::de::Error::custom)
    }
}

/// A daemon's access rules: administrators may do anything; a principal may
/// touch the resource ids its grants match; everyone else is refused.
#[derive(Debug, Clone)]
pub struct Access {
    admins: Admins,
    principals: Vec<(String, u32, Grants)>,
    /// What the resources are called in refusals ("key", "certificate").
    noun: &'static str,
    /// The daemon, in "uid N is not a principal of <daemon>".
    daemon: &'static str,
}

impl Access {
    /// Rules from the config's principals (name, uid, grants).
    pub fn new(
        daemon: &'static str,
        noun: &'static str,
        admins: Admins,
        principals: impl IntoIterator<Item = (String, u32, Grants)>,
    ) -> Self {
        Self {
            admins,
            principals: principals.into_iter().collect(),
            noun,
            daemon,
        }
    }

    /// Whether the caller is an administrator.
    pub fn is_admin(&self, caller: &Caller) -> bool {
        self.admins.contains(caller)
    }

    /// Whether the caller is somebody here (an administrator or a
    /// principal), asked before a request's body is read; else why not.
    pub fn admits(&self, caller: &Caller) -> Result<(), String> {
        if self.admins.contains(caller)
            || self.principals.iter().any(|(_, uid, _)| *uid == caller.uid)
        {
            return Ok(());
        }
        tracing::warn!(
            uid = caller.uid,
            pid = caller.pid,
            "refused before reading the request: no principal"
        );
        Err(format!(
            "uid {} is not a principal of {}",
            caller.uid, self.daemon
        ))
    }

    /// Whether the caller may touch `id` (no log: for filtering listings).
    pub fn allows(&self, caller: &Caller, id: &str) -> bool {
        self.admins.contains(caller)
            || self
                .principals
                .iter()
                .any(|(_, uid, grants)| *uid == caller.uid && grants.allows(id))
    }

    /// Allows the caller to touch `id`, or says why not (and logs the refusal
    /// with uid and pid).
    pub fn check(&self, caller: &Caller, id: &str) -> Result<(), String> {
        if self.admins.contains(caller) {
            return Ok(());
        }
        let mine = || {
            self.principals
                .iter()
                .filter(|(_, uid, _)| *uid == caller.uid)
        };
        if mine().any(|(_, _, grants)| grants.allows(id)) {
            return Ok(());
        }
        tracing::warn!(
            uid = caller.uid,
            pid = caller.pid,
            resource = id,
            "refused: {} not granted",
            self.noun
        );
        Err(match mine().next() {
            Some((name, _, _)) => format!(
                "principal '{name}' (uid {}) is not granted {} '{id}'",
                caller.uid, self.noun
            ),
            None => format!("uid {} is not a principal of {}", caller.uid, self.daemon),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_ids() {
        let g = Grants::parse(&["module/*", "device-id"]).unwrap();
        assert!(g.allows("module/a"));
        assert!(g.allows("device-id"));
        assert!(!g.allows("device-ca"));
        assert!(!g.allows("modulex"));
    }

    #[test]
    fn a_star_stops_at_a_slash_and_a_double_star_spans_a_subtree() {
        let g = Grants::parse(&["module/*"]).unwrap();
        assert!(g.allows("module/a"));
        assert!(!g.allows("module/x/y/z"));
        let g = Grants::parse(&["module/**"]).unwrap();
        assert!(g.allows("module/x/y/z"));
        assert!(g.allows("module/a"));
        assert!(!g.allows("modules/a"));
        let g = Grants::parse(&["*"]).unwrap();
        assert!(g.allows("device-id"));
        assert!(!g.allows("module/a"), "a bare * is one segment");
        assert!(Grants::parse(&["**"]).unwrap().allows("module/a/b"));
    }

    #[test]
    fn bad_glob_is_named() {
        let err = Grants::parse(&["[oops"]).unwrap_err();
        assert!(err.contains("[oops"), "{err}");
    }
}
