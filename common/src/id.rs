//! Resource ids (key ids, certificate ids): names callers choose, which also
//! name files, PKCS#11 labels and TPM blobs, so they must never escape a directory.

/// Longest id accepted.
pub const MAX_LEN: usize = 128;

/// Checks an id: 1-128 characters of `A-Z a-z 0-9 . _ - /`, in `/`-separated
/// segments none of which is empty, `.` or `..`. The error says what is wrong.
pub fn check(id: &str) -> Result<(), &'static str> {
    if id.is_empty() {
        return Err("it is empty");
    }
    if id.len() > MAX_LEN {
        return Err("it is longer than 128 characters");
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'))
    {
        return Err("only letters, digits, '.', '_', '-' and '/' are allowed");
    }
    if id
        .split('/')
        .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return Err("'/'-separated parts must not be empty, '.' or '..'");
    }
    Ok(())
}

/// The id as shown in an error: at most a little over [`MAX_LEN`] characters.
pub fn shown(id: &str) -> String {
    id.chars().take(MAX_LEN + 8).collect()
}
