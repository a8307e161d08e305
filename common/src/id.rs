//! Resource ids (key ids, certificate ids): names callers choose, which also
//! name files, PKCS#11 labels and TPM blobs, so they must never escape a directory.

/// Longest id accepted.
pub const MAX_LEN: usize = 128;

/// What an id may hold besides ASCII letters and digits: `/` between
/// segments, and the special characters IoT Hub allows in device and module
/// ids (`$edgeHub`), which aziot clients put in key and certificate ids
/// (`aziot-edged/module/$edgeHub:<genid>:server`). Stores never use an id
/// as a file name as it is (they encode it), so none of these reaches a path.
pub const SPECIALS: &str = "-:.+%_#*?!(),=@$'/";

/// Checks an id: 1-128 characters of ASCII letters, digits and
/// [`SPECIALS`], in `/`-separated segments none of which is empty, `.` or
/// `..`. The error says what is wrong.
pub fn check(id: &str) -> Result<(), &'static str> {
    if id.is_empty() {
        return Err("it is empty");
    }
    if id.len() > MAX_LEN {
        return Err("it is longer than 128 characters");
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || SPECIALS.as_bytes().contains(&b))
    {
        return Err("only letters, digits and -:.+%_#*?!(),=@$'/ are allowed");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iot_hub_names_pass_and_paths_do_not() {
        for ok in [
            "device-ca",
            "aziot-edged/module/$edgeHub:638356473476598735:server",
            "m(1),=@+%#*?!'x",
        ] {
            assert_eq!(check(ok), Ok(()), "{ok}");
        }
        for bad in [
            "", "../x", "a//b", "a/./b", "a/", "a b", "a\\b", "\u{e9}", "a\0b",
        ] {
            assert!(check(bad).is_err(), "{bad:?}");
        }
        assert!(check(&"a".repeat(129)).is_err());
    }
}
