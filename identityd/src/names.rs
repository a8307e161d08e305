//! The names identities carry: hub host names, device, registration and
//! module ids (the IoT Hub rules), and the keyd / certd ids they map to.

/// Longest device or module id the hub accepts.
const MAX_ID: usize = 128;

/// Characters IoT Hub allows in device and module ids besides letters and digits.
const ID_PUNCTUATION: &[u8] = b"-.%_*?!(),:=@$'";

/// A device id, registration id or ID scope: 1-128 of letters, digits and `-.%_*?!(),:=@$'`.
pub fn check_device_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("it is empty".into());
    }
    if id.len() > MAX_ID {
        return Err(format!("it is longer than {MAX_ID} characters"));
    }
    match id
        .bytes()
        .find(|b| !(b.is_ascii_alphanumeric() || ID_PUNCTUATION.contains(b)))
    {
        Some(bad) => Err(format!(
            "'{}' is not allowed (letters, digits and -.%_*?!(),:=@$' are)",
            char::from(bad).escape_default()
        )),
        None => Ok(()),
    }
}

/// A module id: the same rules as a device id.
pub fn check_module_id(id: &str) -> Result<(), String> {
    check_device_id(id)
}

/// A hub host name, with a port where the hub is not on 443 (test services).
pub fn check_hub(hub: &str) -> Result<(), String> {
    let (host, port) = match hub.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (hub, None),
    };
    if host.is_empty() || host.len() > 253 {
        return Err(format!("'{}' is not a host name", shown(hub)));
    }
    if !host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        return Err(format!("'{}' is not a host name", shown(hub)));
    }
    if let Some(port) = port {
        if port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(format!("'{}' has a bad port", shown(hub)));
        }
    }
    Ok(())
}

/// A name as shown in an error: bounded, control characters escaped.
pub fn shown(name: &str) -> String {
    name.chars()
        .take(MAX_ID + 8)
        .flat_map(char::escape_default)
        .collect()
}

/// The keyd key id and certd certificate id of an X.509 module identity.
/// Ids made of `A-Z a-z 0-9 . _ -` map to `module/<id>`; any other
/// (`$edgeHub`) to `module-hex/<hex of the id>`, so that two module ids never
/// share a key.
pub fn module_resource_id(module_id: &str) -> String {
    let plain = module_id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && module_id != "."
        && module_id != "..";
    if plain {
        format!("module/{module_id}")
    } else {
        let hex: String = module_id.bytes().map(|b| format!("{b:02x}")).collect();
        format!("module-hex/{hex}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(check_device_id("dev-1.a_b:c").is_ok());
        assert!(check_module_id("$edgeHub").is_ok());
        let err = check_module_id("a/b").unwrap_err();
        assert!(err.contains("'/'"), "{err}");
        assert!(check_module_id("").is_err());
        assert!(check_module_id(&"a".repeat(129)).is_err());
        assert!(check_module_id("a\nb").unwrap_err().contains("\\n"));
    }

    #[test]
    fn hubs() {
        assert!(check_hub("myhub.azure-devices.net").is_ok());
        assert!(check_hub("localhost:8443").is_ok());
        assert!(check_hub("localhost:0").is_err());
        assert!(check_hub("a/b").is_err());
        assert!(check_hub("").is_err());
    }

    #[test]
    fn resource_ids_never_collide() {
        assert_eq!(module_resource_id("sensor"), "module/sensor");
        assert_eq!(
            module_resource_id("$edgeHub"),
            "module-hex/2465646765487562"
        );
        for id in ["sensor", "$edgeHub", "a:b"] {
            edgeid_common::id::check(&module_resource_id(id)).unwrap();
        }
    }
}
