//! Binary data on the wire: standard base64 strings (ARCHITECTURE.md section 2).

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroizing;

/// Bytes that travel as a base64 string.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Base64Bytes(pub Vec<u8>);

impl fmt::Debug for Base64Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Base64Bytes({} bytes)", self.0.len())
    }
}

impl Serialize for Base64Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Base64Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        decode::<D>(d).map(|v| Self(v.to_vec()))
    }
}

/// Secret bytes that travel as base64 and are wiped from memory when dropped.
/// Its `Debug` never shows the content.
#[derive(Clone, Default)]
pub struct SecretBytes(pub Zeroizing<Vec<u8>>);

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes(<{} bytes redacted>)", self.0.len())
    }
}

impl Serialize for SecretBytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let text = Zeroizing::new(STANDARD.encode(self.0.as_slice()));
        s.serialize_str(&text)
    }
}

impl<'de> Deserialize<'de> for SecretBytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        decode::<D>(d).map(Self)
    }
}

/// Secret text that travels as a JSON string (a PEM private key), wiped
/// from memory when dropped; its `Debug` never shows the content.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretString(pub Zeroizing<String>);

impl From<String> for SecretString {
    fn from(s: String) -> Self {
        Self(Zeroizing::new(s))
    }
}

impl std::ops::Deref for SecretString {
    type Target = str;
    fn deref(&self) -> &str {
        self.0.as_str()
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretString(<{} bytes redacted>)", self.0.len())
    }
}

impl Serialize for SecretString {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for SecretString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Self::from)
    }
}

fn decode<'de, D: Deserializer<'de>>(d: D) -> Result<Zeroizing<Vec<u8>>, D::Error> {
    let text = Zeroizing::new(String::deserialize(d)?);
    STANDARD
        .decode(text.as_bytes())
        .map(Zeroizing::new)
        .map_err(|e| serde::de::Error::custom(format!("not valid base64 ({e})")))
}

/// Encodes bytes as standard base64.
pub fn to_base64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_bad_input() {
        let v: Base64Bytes = serde_json::from_str("\"aGk=\"").unwrap();
        assert_eq!(v.0, b"hi");
        assert_eq!(serde_json::to_string(&v).unwrap(), "\"aGk=\"");
        let err = serde_json::from_str::<Base64Bytes>("\"***\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("base64"), "{err}");
    }

    #[test]
    fn secret_debug_redacts() {
        let s: SecretBytes = serde_json::from_str("\"c2VjcmV0\"").unwrap();
        assert!(!format!("{s:?}").contains("secret"));
        let t: SecretString = serde_json::from_str("\"-----BEGIN PRIVATE KEY-----\"").unwrap();
        assert!(!format!("{t:?}").contains("PRIVATE"), "{t:?}");
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            "\"-----BEGIN PRIVATE KEY-----\""
        );
        assert!(t.starts_with("-----BEGIN"));
    }
}
