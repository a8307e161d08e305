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

/// A growing buffer for bodies that may carry secrets (an imported key, a
/// SAS token, a private key's PEM): every allocation it outgrows is wiped
/// as it is left, and the last one when the [`Bytes`](bytes::Bytes) it
/// becomes is dropped.
#[derive(Default)]
pub struct WipingBuf(Zeroizing<Vec<u8>>);

impl WipingBuf {
    /// Room for `capacity` bytes before the first move.
    pub fn with_capacity(capacity: usize) -> Self {
        Self(Zeroizing::new(Vec::with_capacity(capacity)))
    }

    /// Appends `data`, moving to a larger allocation (and wiping the old
    /// one) where it does not fit.
    pub fn extend(&mut self, data: &[u8]) {
        if self.0.capacity() - self.0.len() < data.len() {
            let wanted = (self.0.len() + data.len()).max(self.0.capacity().saturating_mul(2));
            let mut bigger = Zeroizing::new(Vec::with_capacity(wanted));
            bigger.extend_from_slice(&self.0);
            // The old allocation is zeroized as it drops here.
            self.0 = bigger;
        }
        self.0.extend_from_slice(data);
    }

    /// Bytes held so far.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The bytes, wiped when the last reference to them drops.
    pub fn freeze(self) -> bytes::Bytes {
        bytes::Bytes::from_owner(self.0)
    }
}

impl std::io::Write for WipingBuf {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.extend(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `value` as JSON in a [`WipingBuf`]'s bytes.
pub fn to_json_wiped<T: Serialize + ?Sized>(value: &T) -> Result<bytes::Bytes, serde_json::Error> {
    let mut buf = WipingBuf::with_capacity(256);
    serde_json::to_writer(&mut buf, value)?;
    Ok(buf.freeze())
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
    fn a_wiping_buffer_keeps_every_byte_across_moves() {
        let mut buf = WipingBuf::with_capacity(1);
        for i in 0..1000u32 {
            buf.extend(&i.to_le_bytes());
        }
        let bytes = buf.freeze();
        assert_eq!(bytes.len(), 4000);
        assert_eq!(&bytes[396..400], &99u32.to_le_bytes());
        let json = to_json_wiped(&serde_json::json!({"k": "v"})).unwrap();
        assert_eq!(&json[..], br#"{"k":"v"}"#);
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
