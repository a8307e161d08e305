//! PCR banks: the hash algorithms a TPM keeps PCRs in.

use std::fmt;

use aws_lc_rs::digest;

/// A PCR bank a quote may cover. Ordered as a quote lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Bank {
    /// SHA-1 (old firmware measures only into it).
    Sha1,
    /// SHA-256.
    Sha256,
    /// SHA-384.
    Sha384,
}

impl Bank {
    /// Every bank, in order.
    pub const ALL: [Bank; 3] = [Bank::Sha1, Bank::Sha256, Bank::Sha384];

    /// The bank a name stands for (`sha256`), as the API and the CLI spell it.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|b| b.name() == name)
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sha1 => "sha1",
            Self::Sha256 => "sha256",
            Self::Sha384 => "sha384",
        }
    }

    /// Its TPM_ALG_ID.
    pub fn algorithm_id(self) -> u16 {
        match self {
            Self::Sha1 => 0x0004,
            Self::Sha256 => 0x000b,
            Self::Sha384 => 0x000c,
        }
    }

    /// The bank of a TPM_ALG_ID.
    pub fn from_algorithm_id(id: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|b| b.algorithm_id() == id)
    }

    /// Its digest size in bytes.
    pub fn size(self) -> usize {
        self.digest().output_len()
    }

    fn digest(self) -> &'static digest::Algorithm {
        match self {
            Self::Sha1 => &digest::SHA1_FOR_LEGACY_USE_ONLY,
            Self::Sha256 => &digest::SHA256,
            Self::Sha384 => &digest::SHA384,
        }
    }

    /// Its hash of `data`.
    pub fn hash(self, data: &[u8]) -> Vec<u8> {
        digest::digest(self.digest(), data).as_ref().to_vec()
    }

    /// `pcr` extended with `measurement`: H(pcr ‖ measurement).
    pub fn extend(self, pcr: &mut Vec<u8>, measurement: &[u8]) {
        let mut ctx = digest::Context::new(self.digest());
        ctx.update(pcr);
        ctx.update(measurement);
        *pcr = ctx.finish().as_ref().to_vec();
    }
}

impl fmt::Display for Bank {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
