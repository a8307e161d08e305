//! The device connection string (`HostName=...;DeviceId=...;SharedAccessKey=...`)
//! that manual provisioning may be given, and the base64 symmetric keys it
//! and key files carry. Plain data: config checks it, provisioning uses it.

use base64::Engine;
use zeroize::Zeroizing;

/// A device connection string: `HostName=...;DeviceId=...;SharedAccessKey=...`.
pub struct ConnectionString {
    /// `HostName`.
    pub hub: String,
    /// `DeviceId`.
    pub device_id: String,
    /// `SharedAccessKey`, decoded.
    pub key: Zeroizing<Vec<u8>>,
}

impl ConnectionString {
    /// Parses one; errors name the part that is wrong and never show the key.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut hub = None;
        let mut device_id = None;
        let mut key = None;
        for part in text.trim().split(';').filter(|p| !p.trim().is_empty()) {
            let Some((name, value)) = part.split_once('=') else {
                return Err(format!(
                    "'{}' is not Name=Value",
                    crate::names::shown(part.split('=').next().unwrap_or_default())
                ));
            };
            let name = name.trim();
            match name {
                "HostName" => hub = Some(value.trim().to_owned()),
                "DeviceId" => device_id = Some(value.trim().to_owned()),
                // The key may itself end in '=' (base64 padding); split_once kept it.
                "SharedAccessKey" => key = Some(value.trim()),
                "GatewayHostName" => {}
                "ModuleId" => {
                    return Err("ModuleId: a module's connection string cannot provision a device".into())
                }
                "SharedAccessKeyName" => {
                    return Err("SharedAccessKeyName: that is a service policy's connection string, not a device's".into())
                }
                "x509" => {
                    return Err("x509: give hub, device_id and auth = { method = \"x509\", ... } instead".into())
                }
                other => return Err(format!("unknown part '{}'", crate::names::shown(other))),
            }
        }
        let hub = hub.ok_or("HostName is missing")?;
        let device_id = device_id.ok_or("DeviceId is missing")?;
        let key = key.ok_or("SharedAccessKey is missing")?;
        crate::names::check_hub(&hub).map_err(|e| format!("HostName: {e}"))?;
        crate::names::check_device_id(&device_id).map_err(|e| format!("DeviceId: {e}"))?;
        let key = decode_key(key).map_err(|e| format!("SharedAccessKey: {e}"))?;
        Ok(Self {
            hub,
            device_id,
            key,
        })
    }
}

/// Standard base64, its `=` padding optional: the reference's super-config
/// takes keys without it (aziotctl's `*-no-pad` test configs).
const PADDING_OPTIONAL: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// A base64 symmetric key (16-64 bytes), decoded into memory that is wiped on drop.
pub fn decode_key(text: &str) -> Result<Zeroizing<Vec<u8>>, String> {
    let key = Zeroizing::new(
        PADDING_OPTIONAL
            .decode(text.trim())
            .map_err(|_| "is not base64".to_owned())?,
    );
    if !(16..=64).contains(&key.len()) {
        return Err(format!("is {} bytes; a key is 16 to 64", key.len()));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_decodes_with_its_padding_or_without() {
        let padded = decode_key("MDEyMzQ1Njc4OWFiY2RlZg==").unwrap();
        assert_eq!(padded.as_slice(), b"0123456789abcdef");
        let bare = decode_key("MDEyMzQ1Njc4OWFiY2RlZg").unwrap();
        assert_eq!(bare.as_slice(), padded.as_slice());
    }

    #[test]
    fn connection_strings() {
        let cs = ConnectionString::parse(
            "HostName=hub.example.net;DeviceId=dev-1;SharedAccessKey=AAAAAAAAAAAAAAAAAAAAAA==",
        )
        .unwrap();
        assert_eq!(cs.hub, "hub.example.net");
        assert_eq!(cs.device_id, "dev-1");
        assert_eq!(cs.key.len(), 16);
        for (text, wanted) in [
            ("HostName=h;DeviceId=d", "SharedAccessKey is missing"),
            ("garbage", "not Name=Value"),
            ("HostName=h;DeviceId=d;SharedAccessKey=!!", "not base64"),
            ("HostName=h;DeviceId=d;SharedAccessKey=AAAA", "is 3 bytes"),
            (
                "HostName=h;DeviceId=d;ModuleId=m;SharedAccessKey=AAAA",
                "ModuleId",
            ),
            (
                "HostName=h/x;DeviceId=d;SharedAccessKey=AAAAAAAAAAAAAAAAAAAAAA==",
                "HostName",
            ),
            (
                "HostName=h;DeviceId=d d;SharedAccessKey=AAAAAAAAAAAAAAAAAAAAAA==",
                "DeviceId",
            ),
        ] {
            let err = ConnectionString::parse(text).err().unwrap();
            assert!(err.contains(wanted), "{text}: {err}");
            assert!(!err.contains("AAAA"), "the key is never shown: {err}");
        }
    }
}
