//! SPIFFE IDs, by the SPIFFE ID specification: `spiffe://<trust domain>/<path>`,
//! the trust domain of lowercase letters, digits, `.`, `-` and `_`, each path
//! segment non-empty, not `.` or `..`, of letters, digits, `.`, `-` and `_`.

/// Longest SPIFFE ID accepted (the specification's recommended bound).
const MAX_ID: usize = 2048;
/// Longest trust domain name.
const MAX_TRUST_DOMAIN: usize = 255;

/// Checks a trust domain name.
pub fn check_trust_domain(td: &str) -> Result<(), String> {
    if td.is_empty() {
        return Err("the trust domain is empty".into());
    }
    if td.len() > MAX_TRUST_DOMAIN {
        return Err(format!(
            "the trust domain is longer than {MAX_TRUST_DOMAIN} bytes"
        ));
    }
    match td
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '-' | '_'))
    {
        Some(c) => Err(format!(
            "the trust domain has '{}'; only lowercase letters, digits, '.', '-' and '_' are allowed",
            c.escape_default()
        )),
        None => Ok(()),
    }
}

/// Checks one path segment.
pub fn check_segment(segment: &str) -> Result<(), String> {
    if segment.is_empty() {
        return Err("a path segment is empty".into());
    }
    if segment == "." || segment == ".." {
        return Err(format!("'{segment}' is not allowed as a path segment"));
    }
    match segment
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
    {
        Some(c) => Err(format!(
            "a path segment has '{}'; only letters, digits, '.', '-' and '_' are allowed",
            c.escape_default()
        )),
        None => Ok(()),
    }
}

/// The SPIFFE ID of module `module` on device `device`:
/// `spiffe://<trust domain>/<device>/<module>`.
pub fn of_module(trust_domain: &str, device: &str, module: &str) -> Result<String, String> {
    check_segment(device).map_err(|e| format!("device id '{}': {e}", device.escape_default()))?;
    check_segment(module).map_err(|e| format!("module id '{}': {e}", module.escape_default()))?;
    Ok(format!("spiffe://{trust_domain}/{device}/{module}"))
}

/// Parses a SPIFFE ID into its trust domain and path (with its leading `/`,
/// or empty for the trust domain's own ID).
pub fn parse(id: &str) -> Result<(&str, &str), String> {
    if id.len() > MAX_ID {
        return Err(format!("the SPIFFE ID is longer than {MAX_ID} bytes"));
    }
    let rest = id
        .strip_prefix("spiffe://")
        .ok_or("a SPIFFE ID starts with 'spiffe://'")?;
    let (td, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    check_trust_domain(td)?;
    if !path.is_empty() {
        for segment in path[1..].split('/') {
            check_segment(segment)?;
        }
    }
    Ok((td, path))
}

/// The SPIFFE ID of a trust domain itself (how bundles are keyed).
pub fn of_trust_domain(trust_domain: &str) -> String {
    format!("spiffe://{trust_domain}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_the_specification() {
        assert_eq!(
            of_module("example.org", "dev-1", "temp_sensor").unwrap(),
            "spiffe://example.org/dev-1/temp_sensor"
        );
        assert!(of_module("example.org", "dev 1", "m").is_err());
        assert!(of_module("example.org", "..", "m").is_err());
        assert!(of_module("example.org", "d", "a/b").is_err());
        assert!(of_module("example.org", "d", "%41").is_err());
        assert!(check_trust_domain("Example.org").is_err());
        assert!(check_trust_domain("exa mple").is_err());
        assert!(check_trust_domain("").is_err());
        assert_eq!(parse("spiffe://td/a/b").unwrap(), ("td", "/a/b"));
        assert_eq!(parse("spiffe://td").unwrap(), ("td", ""));
        for bad in [
            "spiffe://td/",
            "spiffe://td//a",
            "spiffe://td/a/../b",
            "spiffe://TD/a",
            "http://td/a",
            "spiffe://td/a?x",
            "spiffe://td/a#x",
            "spiffe://user@td/a",
            "spiffe://td:443/a",
            "spiffe:///a",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert!(parse(&format!("spiffe://td/{}", "a".repeat(3000))).is_err());
    }
}
