//! Shared access signature tokens, as IoT Hub and DPS check them:
//! `SharedAccessSignature sr=<enc(resource)>&sig=<enc(base64(HMAC-SHA256(key,
//! enc(resource) + "\n" + expiry)))>&se=<expiry>[&skn=<key name>]`, where
//! `enc` percent-encodes everything but the RFC 3986 unreserved characters.
//! Ids go into the resource as they are (the whole resource is encoded once).
//! The HMAC is computed by keyd; identityd never holds the key.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use edgeid_keyd::api::{KeyHandle, SignAlgorithm};
use edgeid_keyd::KeydClient;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::api::Token;
use crate::error::Error;

/// Everything but `A-Z a-z 0-9 - _ . ~`.
pub const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Percent-encodes one URL component.
pub fn encode(s: &str) -> String {
    utf8_percent_encode(s, COMPONENT).to_string()
}

/// Default token lifetime.
pub const DEFAULT_EXPIRY_SECS: u64 = 3600;
/// Longest token lifetime handed out.
pub const MAX_EXPIRY_SECS: u64 = 30 * 24 * 3600;

/// The resource of a device: `<hub>/devices/<device>`.
pub fn device_resource(hub: &str, device_id: &str) -> String {
    format!("{hub}/devices/{device_id}")
}

/// The resource of a module: `<hub>/devices/<device>/modules/<module>`.
pub fn module_resource(hub: &str, device_id: &str, module_id: &str) -> String {
    format!("{}/modules/{module_id}", device_resource(hub, device_id))
}

/// The resource of a DPS registration: `<scope>/registrations/<registration>`.
pub fn registration_resource(id_scope: &str, registration_id: &str) -> String {
    format!(
        "{}/registrations/{}",
        encode(id_scope),
        encode(registration_id)
    )
}

/// The string the HMAC is taken over.
pub fn string_to_sign(resource: &str, expiry: u64) -> String {
    format!("{}\n{expiry}", encode(resource))
}

/// The token, given the HMAC of [`string_to_sign`].
pub fn assemble(resource: &str, expiry: u64, signature: &[u8], key_name: Option<&str>) -> String {
    let mut token = format!(
        "SharedAccessSignature sr={}&sig={}&se={expiry}",
        encode(resource),
        encode(&STANDARD.encode(signature))
    );
    if let Some(name) = key_name {
        token.push_str("&skn=");
        token.push_str(&encode(name));
    }
    token
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The expiry for a requested lifetime (default one hour; 1 s to 30 days).
pub fn expiry_for(lifetime_secs: Option<u64>) -> Result<u64, Error> {
    let secs = lifetime_secs.unwrap_or(DEFAULT_EXPIRY_SECS);
    if secs == 0 || secs > MAX_EXPIRY_SECS {
        return Err(Error::BadRequest(format!(
            "expiry_secs must be between 1 and {MAX_EXPIRY_SECS}"
        )));
    }
    Ok(now() + secs)
}

/// A token for `resource` signed by the keyd HMAC key `handle`.
pub async fn sign(
    keyd: &KeydClient,
    handle: &KeyHandle,
    resource: &str,
    expiry: u64,
    key_name: Option<&str>,
) -> Result<Token, Error> {
    let mac = keyd
        .sign(
            handle,
            SignAlgorithm::HmacSha256,
            string_to_sign(resource, expiry).as_bytes(),
            false,
        )
        .await
        .map_err(|e| Error::from_daemon("keyd", "signing a SAS token", e))?;
    Ok(Token {
        token: assemble(resource, expiry, &mac, key_name).into(),
        expires: expiry,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_the_public_spec() {
        let resource = device_resource("hub.example.net", "dev(1)");
        assert_eq!(resource, "hub.example.net/devices/dev(1)");
        assert_eq!(
            string_to_sign(&resource, 1700000000),
            "hub.example.net%2Fdevices%2Fdev%281%29\n1700000000"
        );
        let token = assemble(&resource, 1700000000, &[0xfb, 0xff], Some("registration"));
        assert_eq!(
            token,
            "SharedAccessSignature sr=hub.example.net%2Fdevices%2Fdev%281%29&sig=%2B%2F8%3D&se=1700000000&skn=registration"
        );
        assert_eq!(
            registration_resource("0ne00ABC", "reg-1"),
            "0ne00ABC/registrations/reg-1"
        );
    }

    #[test]
    fn expiry_bounds() {
        assert!(expiry_for(Some(0)).is_err());
        assert!(expiry_for(Some(MAX_EXPIRY_SECS + 1)).is_err());
        assert!(expiry_for(None).unwrap() > now());
    }
}
