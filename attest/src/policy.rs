//! What a verifier expects of a device, as TOML:
//!
//! ```toml
//! # The attestation key the quote must be signed by: the one proved to be
//! # in the device's TPM (tpm2_makecredential, POST /v1/tpm/ak/activate).
//! ak = """
//! -----BEGIN PUBLIC KEY-----
//! ...
//! -----END PUBLIC KEY-----
//! """
//!
//! # PCR values, per bank (hex).
//! [pcrs.sha256]
//! 0 = "a3f1..."
//! 7 = "65ca..."
//!
//! # Events the firmware log must hold (by digest), e.g. the boot loader.
//! [[events]]
//! pcr = 4
//! bank = "sha256"
//! digest = "9f0e..."
//! name = "shim 15.8"          # shown when it is missing
//!
//! # Files IMA must have measured with exactly this digest.
//! [[files]]
//! path = "/usr/bin/edge-agent"
//! digest = "sha256:77b2..."
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::Bank;

/// A policy file, parsed.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// The attestation key (PEM) the quote must be signed by.
    #[serde(default)]
    pub ak: Option<String>,
    /// Expected PCR values: bank name → PCR index → hex value.
    #[serde(default)]
    pub pcrs: BTreeMap<String, BTreeMap<String, String>>,
    /// Events the firmware log must contain.
    #[serde(default)]
    pub events: Vec<RequiredEvent>,
    /// Files IMA must have measured, with their digests.
    #[serde(default)]
    pub files: Vec<RequiredFile>,
}

/// An event the firmware log must contain.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequiredEvent {
    /// The PCR it extends.
    pub pcr: u32,
    /// The bank its digest is in.
    pub bank: String,
    /// Its digest, hex.
    pub digest: String,
    /// What it is, for messages.
    #[serde(default)]
    pub name: Option<String>,
}

/// A file IMA must have measured.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequiredFile {
    /// Its path as IMA records it.
    pub path: String,
    /// `alg:hex` as IMA's ima-ng template records it (`sha256:...`).
    pub digest: String,
}

/// A checked policy: banks known, values hex of the bank's size.
#[derive(Debug, Clone, Default)]
pub struct Checked {
    /// The attestation key (PEM) the quote must be signed by.
    pub ak: Option<String>,
    /// Expected PCR values.
    pub pcrs: BTreeMap<(Bank, u32), Vec<u8>>,
    /// Required events: PCR, bank, digest, name.
    pub events: Vec<(u32, Bank, Vec<u8>, String)>,
    /// Required files: path, `alg:hex`.
    pub files: Vec<(String, String)>,
}

impl Policy {
    /// Parses TOML; errors name the key.
    pub fn parse(text: &str) -> Result<Checked, String> {
        let policy: Policy = toml::from_str(text).map_err(|e| e.to_string())?;
        policy.check()
    }

    fn check(self) -> Result<Checked, String> {
        let bank = |name: &str| {
            Bank::parse(name)
                .ok_or_else(|| format!("unknown PCR bank '{name}' (sha1, sha256, sha384)"))
        };
        let value = |bank: Bank, text: &str, what: &str| -> Result<Vec<u8>, String> {
            let bytes =
                hex::decode(text.trim()).map_err(|_| format!("{what}: '{text}' is not hex"))?;
            if bytes.len() != bank.size() {
                return Err(format!(
                    "{what}: a {bank} value is {} bytes, not {}",
                    bank.size(),
                    bytes.len()
                ));
            }
            Ok(bytes)
        };
        let mut out = Checked::default();
        if let Some(ak) = &self.ak {
            let pem = pem::parse(ak).map_err(|e| format!("ak: not PEM: {e}"))?;
            if pem.tag() != "PUBLIC KEY" {
                return Err(format!("ak: a {} PEM, not a PUBLIC KEY", pem.tag()));
            }
            out.ak = Some(ak.clone());
        }
        for (name, pcrs) in &self.pcrs {
            let b = bank(name)?;
            for (key, text) in pcrs {
                let what = format!("pcrs.{name}.{key}");
                let pcr: u32 = key
                    .parse()
                    .map_err(|_| format!("{what}: '{key}' is not a PCR number"))?;
                if pcr >= 24 {
                    return Err(format!("{what}: PCR {pcr} does not exist"));
                }
                out.pcrs.insert((b, pcr), value(b, text, &what)?);
            }
        }
        for (i, event) in self.events.iter().enumerate() {
            let b = bank(&event.bank)?;
            let what = format!("events[{i}]");
            let digest = value(b, &event.digest, &what)?;
            let name = event
                .name
                .clone()
                .unwrap_or_else(|| format!("the event with {b} digest {}", event.digest));
            out.events.push((event.pcr, b, digest, name));
        }
        for (i, file) in self.files.iter().enumerate() {
            let Some((alg, hex_value)) = file.digest.split_once(':') else {
                return Err(format!(
                    "files[{i}].digest: '{}' is not alg:hex",
                    file.digest
                ));
            };
            hex::decode(hex_value)
                .map_err(|_| format!("files[{i}].digest: '{hex_value}' is not hex"))?;
            out.files.push((
                file.path.clone(),
                format!("{alg}:{}", hex_value.to_ascii_lowercase()),
            ));
        }
        Ok(out)
    }
}
