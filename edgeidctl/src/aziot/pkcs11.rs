//! The reference's PKCS#11 settings: `[aziot_keys] pkcs11_lib_path`,
//! `pkcs11_base_slot` and `pkcs11:` key locations in `preloaded_keys`, as
//! RFC 7512 URIs. Read as the reference's `pkcs11::Uri` reads them: the
//! path attributes `token`, `slot-id` (which wins over `token`) and
//! `object`, the query attribute `pin-value`; every other attribute is
//! skipped, as there. `pin-source` (a file) is read too, where the
//! reference would log in with no PIN. No message ever holds a PIN.

use std::path::PathBuf;

use zeroize::Zeroizing;

/// How keyd logs in to the token.
pub enum Pin {
    /// `pin-value`: written by `config apply` to a file keyd reads.
    Value(Zeroizing<String>),
    /// `pin-source=file:...`: a file already there.
    File(PathBuf),
}

/// A PKCS#11 URI, as far as edgeid reads it.
pub struct Uri {
    /// `token`: the token's label.
    pub token: Option<String>,
    /// `slot-id`.
    pub slot: Option<u64>,
    /// `object`: a key's label.
    pub object: Option<String>,
    /// `pin-value` or `pin-source`.
    pub pin: Option<Pin>,
}

impl Uri {
    /// Whether `other` names the same token (by slot when either has one).
    pub fn same_token(&self, other: &Uri) -> bool {
        match (self.slot, other.slot) {
            (Some(a), Some(b)) => a == b,
            (None, None) => self.token == other.token,
            _ => false,
        }
    }
}

/// Reads `text`; the error says what is wrong without repeating the URI.
pub fn parse(text: &str) -> Result<Uri, String> {
    let rest = text.strip_prefix("pkcs11:").ok_or("is not a pkcs11: URI")?;
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let mut uri = Uri {
        token: None,
        slot: None,
        object: None,
        pin: None,
    };
    for part in path.split(';').filter(|p| !p.is_empty()) {
        let (key, value) = attribute(part)?;
        match key.as_str() {
            "token" => uri.token = Some(value.to_string()),
            "object" => uri.object = Some(value.to_string()),
            "slot-id" => {
                uri.slot = Some(value.parse().map_err(|_| {
                    format!("has slot-id '{}', which is not a number", value.as_str())
                })?)
            }
            _ => {}
        }
    }
    for part in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = attribute(part)?;
        match key.as_str() {
            "pin-value" => uri.pin = Some(Pin::Value(value)),
            "pin-source" if uri.pin.is_none() => {
                let file = value
                    .strip_prefix("file://")
                    .or_else(|| value.strip_prefix("file:"))
                    .unwrap_or(value.as_str());
                if !file.starts_with('/') {
                    return Err(
                        "has a pin-source that is not a file: give file:/absolute/path".into(),
                    );
                }
                uri.pin = Some(Pin::File(PathBuf::from(file)));
            }
            _ => {}
        }
    }
    if uri.token.is_none() && uri.slot.is_none() {
        return Err("names neither a token nor a slot-id".into());
    }
    Ok(uri)
}

/// One `key=value`, both percent-decoded (the value kept zeroized: it may be a PIN).
fn attribute(part: &str) -> Result<(String, Zeroizing<String>), String> {
    let (key, value) = part.split_once('=').unwrap_or((part, ""));
    let key = percent_encoding::percent_decode_str(key)
        .decode_utf8()
        .map_err(|_| "has an attribute name that is not UTF-8".to_owned())?
        .into_owned();
    let value = percent_encoding::percent_decode_str(value)
        .decode_utf8()
        .map_err(|_| format!("has a '{key}' that is not UTF-8"))?;
    Ok((key, Zeroizing::new(value.into_owned())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_the_reference_reads() {
        let u = parse("pkcs11:token=Key%20pairs;manufacturer=x?pin-value=12%334").unwrap();
        assert_eq!(u.token.as_deref(), Some("Key pairs"));
        assert!(u.slot.is_none() && u.object.is_none());
        assert!(matches!(u.pin, Some(Pin::Value(p)) if p.as_str() == "1234"));
        let u = parse("pkcs11:slot-id=3;token=t;object=device-id").unwrap();
        assert_eq!(u.slot, Some(3));
        assert_eq!(u.object.as_deref(), Some("device-id"));
        assert!(u.pin.is_none());
        let u = parse("pkcs11:token=t?pin-source=file:/etc/pin").unwrap();
        assert!(matches!(u.pin, Some(Pin::File(f)) if f == std::path::Path::new("/etc/pin")));
    }

    #[test]
    fn errors_never_repeat_the_pin() {
        for bad in [
            "pkcs11:object=x?pin-value=s3cret",
            "pkcs11:slot-id=zero?pin-value=s3cret",
            "file:///x?pin-value=s3cret",
            "pkcs11:token=t?pin-source=relative&pin-value=s3cret",
        ] {
            let why = parse(bad).err().unwrap();
            assert!(!why.contains("s3cret"), "{why}");
        }
    }
}
