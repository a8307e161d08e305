//! Key ids: the names callers give keys (`device-id`, `module/temp-sensor`).

use std::fmt;

use crate::error::Error;

/// Longest key id accepted.
pub const MAX_LEN: usize = edgeid_common::id::MAX_LEN;

/// A validated key id (see [`edgeid_common::id::check`]), so an id can name a
/// file, a PKCS#11 label or a TPM blob without escaping anywhere.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(String);

impl KeyId {
    /// Validates an id.
    pub fn new(id: &str) -> Result<Self, Error> {
        match edgeid_common::id::check(id) {
            Ok(()) => Ok(Self(id.to_owned())),
            Err(reason) => Err(Error::InvalidKeyId {
                id: edgeid_common::id::shown(id),
                reason,
            }),
        }
    }

    /// An id of keyd's own that no caller can name: `name` is outside what
    /// [`KeyId::new`] accepts.
    pub(crate) fn reserved(name: &'static str) -> Self {
        debug_assert!(edgeid_common::id::check(name).is_err());
        Self(name.to_owned())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_normal_ids() {
        for id in ["device-id", "module/temp-sensor", "a.b_c", "x/y/z"] {
            KeyId::new(id).unwrap();
        }
    }

    #[test]
    fn refuses_escapes_and_junk() {
        for id in [
            "",
            "../x",
            "a/../b",
            "/abs",
            "a//b",
            "a/",
            "sp ace",
            "ü",
            "a\0b",
            &"x".repeat(129),
        ] {
            assert!(KeyId::new(id).is_err(), "{id:?} accepted");
        }
    }
}
