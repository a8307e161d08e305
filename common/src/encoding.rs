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
        encoded(&self.0, false, |text| s.serialize_str(text))
    }
}

impl<'de> Deserialize<'de> for Base64Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(Base64Visitor).map(Self)
    }
}

/// Base64 text up to this long is made on the stack, not in a `String`
/// (a signature, a digest, a nonce: what most answers carry).
const STACK_TEXT: usize = 1024;

/// Calls `with` on the base64 text of `bytes`, made in a stack buffer when
/// it is short, else in a `String`; the text of a `secret` is wiped after.
fn encoded<T>(bytes: &[u8], secret: bool, with: impl FnOnce(&str) -> T) -> T {
    use zeroize::Zeroize;
    let mut buf = [0u8; STACK_TEXT];
    let Ok(n) = STANDARD.encode_slice(bytes, &mut buf[..]) else {
        let mut text = STANDARD.encode(bytes);
        let answer = with(&text);
        if secret {
            text.zeroize();
        }
        return answer;
    };
    // base64's alphabet is ASCII: this is never the empty fallback.
    let answer = with(std::str::from_utf8(&buf[..n]).unwrap_or_default());
    if secret {
        buf[..n].zeroize();
    }
    answer
}

/// Decodes a base64 string where it lies (serde_json lends its text),
/// without a copy of it first.
struct Base64Visitor;

impl serde::de::Visitor<'_> for Base64Visitor {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a base64 string")
    }

    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Vec<u8>, E> {
        STANDARD
            .decode(text.as_bytes())
            .map_err(|e| E::custom(format!("not valid base64 ({e})")))
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
        encoded(self.0.as_slice(), true, |text| s.serialize_str(text))
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
    d.deserialize_str(Base64Visitor).map(Zeroizing::new)
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
        let err = serde_json::from_str::<Base64Bytes>("42")
            .unwrap_err()
            .to_string();
        assert!(err.contains("a base64 string"), "{err}");
        // Short text is made on the stack, long text in a String: both the same.
        for len in [0, 1, 767, 768, 769, 5000] {
            let v = Base64Bytes((0..len).map(|i| i as u8).collect());
            let json = serde_json::to_string(&v).unwrap();
            assert_eq!(json, format!("\"{}\"", STANDARD.encode(&v.0)), "{len}");
            assert_eq!(serde_json::from_str::<Base64Bytes>(&json).unwrap(), v);
            let secret: SecretBytes = serde_json::from_str(&json).unwrap();
            assert_eq!(serde_json::to_string(&secret).unwrap(), json);
        }
        // Escaped text (serde_json decodes it into its scratch first) too.
        let v: Base64Bytes = serde_json::from_str("\"aG\\u006b=\"").unwrap();
        assert_eq!(v.0, b"hi");
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
