//! Key ids: the names callers give keys (`device-id`, `module/temp-sensor`).

use std::fmt;

use crate::error::Error;

/// Longest key id accepted.
pub const MAX_LEN: usize = 128;

/// A validated key id: 1-128 characters of `A-Z a-z 0-9 . _ - /`, in
/// `/`-separated segments none of which is empty, `.` or `..`. So an id can name
/// a file, a PKCS#11 label or a TPM blob without escaping anywhere.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(String);

impl KeyId {
    /// Validates an id.
    pub fn new(id: &str) -> Result<Self, Error> {
        let bad = |reason| {
            Err(Error::InvalidKeyId {
                id: id.chars().take(MAX_LEN + 8).collect(),
                reason,
            })
        };
        if id.is_empty() {
            return bad("it is empty");
        }
        if id.len() > MAX_LEN {
            return bad("it is longer than 128 characters");
        }
        if !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'))
        {
            return bad("only letters, digits, '.', '_', '-' and '/' are allowed");
        }
        if id
            .split('/')
            .any(|seg| seg.is_empty() || seg == "." || seg == "..")
        {
            return bad("'/'-separated parts must not be empty, '.' or '..'");
        }
        Ok(Self(id.to_owned()))
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
