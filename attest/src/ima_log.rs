//! IMA's binary measurement list (`binary_runtime_measurements`): per
//! entry, the PCR (10), the SHA-1 template digest, the template's name and,
//! for every template but the original `ima`, its data with a length
//! (`ima-ng`: the file's hash with its algorithm, and its path). Fields
//! are little-endian (the kernel's canonical format on little-endian
//! machines, and `ima_canonical_fmt` elsewhere).
//!
//! What the kernel extends: into the SHA-1 bank, the template digest; into
//! any other bank, that bank's hash of the template data; for a violation
//! (an entry whose template digest is all zeros: a file changed while
//! measured), all ones in every bank.
//!
//! Fuzzed with the firmware log parser; lengths checked before use.

use crate::Bank;

/// A template data length no real entry reaches (a path is at most 4 KiB).
const MAX_TEMPLATE_DATA: usize = 1 << 16;
/// The longest template name (`ima-modsig` and friends are short).
const MAX_TEMPLATE_NAME: usize = 255;

/// One IMA measurement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The PCR it was extended into (10 unless the policy says otherwise).
    pub pcr: u32,
    /// The SHA-1 template digest.
    pub template_digest: [u8; 20],
    /// The template (`ima-ng`, `ima-sig`, ...).
    pub template: String,
    /// The template data, fields with their lengths as the kernel hashed them.
    pub data: Vec<u8>,
}

impl Entry {
    /// Whether it records a violation (all-zero template digest).
    pub fn is_violation(&self) -> bool {
        self.template_digest == [0; 20]
    }

    /// What the kernel extended into `bank` for this entry.
    pub fn measurement(&self, bank: Bank) -> Vec<u8> {
        if self.is_violation() {
            return vec![0xff; bank.size()];
        }
        match bank {
            Bank::Sha1 => self.template_digest.to_vec(),
            other => other.hash(&self.data),
        }
    }

    /// For `ima-ng` and `ima-sig`: the measured file's path.
    pub fn path(&self) -> Option<String> {
        let (_, rest) = field(&self.data)?;
        let (path, _) = field(rest)?;
        Some(String::from_utf8_lossy(path.strip_suffix(b"\0").unwrap_or(path)).into_owned())
    }

    /// For `ima-ng` and `ima-sig`: the file's digest, as `alg:hex`.
    pub fn file_digest(&self) -> Option<String> {
        let (digest, _) = field(&self.data)?;
        let colon = digest.iter().position(|b| *b == b':')?;
        let alg = std::str::from_utf8(&digest[..colon]).ok()?;
        let value = digest.get(colon + 2..)?; // "sha256:\0" then the bytes
        Some(format!("{alg}:{}", hex::encode(value)))
    }
}

/// One length-prefixed field of template data, and what follows it.
fn field(data: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = data.split_first_chunk::<4>()?;
    let len = u32::from_le_bytes(*len) as usize;
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// Parses the list. A cut in the middle of an entry is an error.
pub fn parse(bytes: &[u8]) -> Result<Vec<Entry>, String> {
    let mut entries = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let n = entries.len() + 1;
        let mut take = |size: usize, what: &str| -> Result<&[u8], String> {
            if rest.len() < size {
                return Err(format!("the IMA log ends inside entry {n}'s {what}"));
            }
            let (field, tail) = rest.split_at(size);
            rest = tail;
            Ok(field)
        };
        let u32_of = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let pcr = u32_of(take(4, "PCR")?);
        let mut template_digest = [0; 20];
        template_digest.copy_from_slice(take(20, "template digest")?);
        let name_len = u32_of(take(4, "template name length")?) as usize;
        if name_len == 0 || name_len > MAX_TEMPLATE_NAME {
            return Err(format!("entry {n} has a template name of {name_len} bytes"));
        }
        let template = String::from_utf8_lossy(take(name_len, "template name")?).into_owned();
        if template == "ima" {
            return Err(format!(
                "entry {n} uses the original 'ima' template, which records no file digest algorithm; configure ima-ng (ima_template=ima-ng)"
            ));
        }
        let data_len = u32_of(take(4, "template data length")?) as usize;
        if data_len > MAX_TEMPLATE_DATA {
            return Err(format!("entry {n} has {data_len} bytes of template data"));
        }
        let data = take(data_len, "template data")?.to_vec();
        if pcr >= 24 {
            return Err(format!("entry {n} extends PCR {pcr}, which does not exist"));
        }
        entries.push(Entry {
            pcr,
            template_digest,
            template,
            data,
        });
    }
    Ok(entries)
}

/// An `ima-ng` entry for `path` with file digest `sha256(contents)`, as the
/// kernel writes one (for tests and expected values).
pub fn build_entry(path: &str, contents: &[u8]) -> Vec<u8> {
    let mut digest_field = b"sha256:\0".to_vec();
    digest_field.extend(Bank::Sha256.hash(contents));
    let mut path_field = path.as_bytes().to_vec();
    path_field.push(0);
    let mut data = Vec::new();
    for f in [&digest_field, &path_field] {
        data.extend_from_slice(&(f.len() as u32).to_le_bytes());
        data.extend_from_slice(f);
    }
    let mut out = Vec::new();
    out.extend_from_slice(&10u32.to_le_bytes());
    out.extend_from_slice(&Bank::Sha1.hash(&data));
    out.extend_from_slice(&6u32.to_le_bytes());
    out.extend_from_slice(b"ima-ng");
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(&data);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_parse_and_name_their_file() {
        let mut log = build_entry("/usr/bin/edge-agent", b"agent v1");
        let first = log.len();
        log.extend(build_entry("/etc/edgeid/config.toml", b"x"));
        let entries = parse(&log).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].path().as_deref(), Some("/usr/bin/edge-agent"));
        assert_eq!(
            entries[0].file_digest().unwrap(),
            format!("sha256:{}", hex::encode(Bank::Sha256.hash(b"agent v1")))
        );
        assert_eq!(
            entries[0].measurement(Bank::Sha1),
            Bank::Sha1.hash(&entries[0].data)
        );
        for len in 1..log.len() {
            if len != first {
                assert!(parse(&log[..len]).is_err(), "cut at {len}");
            }
        }
    }
}
