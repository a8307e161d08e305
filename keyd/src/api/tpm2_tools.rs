//! The files tpm2-tools reads, made from what keyd's TPM API answers, so
//! that `tpm2_checkquote` verifies a quote with nothing of edgeid's.

use std::collections::BTreeMap;

use edgeid_common::encoding::Base64Bytes;

/// PCR banks a `TPML_PCR_SELECTION` holds (TPM2_NUM_PCR_BANKS).
const MAX_BANKS: usize = 16;
/// Digests one `TPML_DIGEST` holds (what one TPM2_PCR_Read returns).
const DIGESTS_PER_LIST: usize = 8;
/// `sizeof(TPMU_HA)`: a TPM2B_DIGEST's buffer, whatever its size.
const DIGEST_BUFFER: usize = 64;

/// A bank's TPM_ALG_ID.
fn algorithm_id(bank: &str) -> Option<u16> {
    match bank {
        "sha1" => Some(0x0004),
        "sha256" => Some(0x000b),
        "sha384" => Some(0x000c),
        _ => None,
    }
}

/// The PCR file `tpm2_quote -o` and `tpm2_pcrread -o` write and
/// `tpm2_checkquote -f` reads: tpm2-tools' in-memory structures, in the
/// host's byte order — a `TPML_PCR_SELECTION`, a count of `TPML_DIGEST`s,
/// then the lists, eight digests each, in the selection's order (banks by
/// name, as the quote selects them; PCRs ascending).
pub fn pcrs_file(pcrs: &BTreeMap<String, BTreeMap<u32, Base64Bytes>>) -> Result<Vec<u8>, String> {
    if pcrs.len() > MAX_BANKS {
        return Err(format!(
            "{} PCR banks; a TPM has at most {MAX_BANKS}",
            pcrs.len()
        ));
    }
    let mut out = Vec::new();
    out.extend_from_slice(&(pcrs.len() as u32).to_ne_bytes());
    let mut digests = Vec::new();
    for (bank, values) in pcrs {
        let alg = algorithm_id(bank).ok_or_else(|| format!("unknown PCR bank '{bank}'"))?;
        let mut select = [0u8; 4];
        for (&index, value) in values {
            let (byte, bit) = (index / 8, index % 8);
            if byte >= 3 {
                return Err(format!("PCR {index} does not exist"));
            }
            select[byte as usize] |= 1 << bit;
            if value.0.len() > DIGEST_BUFFER {
                return Err(format!("PCR {index} of {bank} is longer than a digest"));
            }
            digests.push(&value.0);
        }
        // TPMS_PCR_SELECTION: hash, sizeofSelect (3: PCRs 0-23), pcrSelect[4], padding.
        out.extend_from_slice(&alg.to_ne_bytes());
        out.push(3);
        out.extend_from_slice(&select);
        out.push(0);
    }
    out.resize(4 + MAX_BANKS * 8, 0);
    let lists = digests.chunks(DIGESTS_PER_LIST);
    out.extend_from_slice(&(lists.len() as u32).to_ne_bytes());
    for list in lists {
        out.extend_from_slice(&(list.len() as u32).to_ne_bytes());
        for slot in 0..DIGESTS_PER_LIST {
            let value = list.get(slot).map_or(&[][..], |v| v.as_slice());
            out.extend_from_slice(&(value.len() as u16).to_ne_bytes());
            out.extend_from_slice(value);
            out.resize(out.len() + DIGEST_BUFFER - value.len(), 0);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout `tpm2_quote -o` wrote for `-l sha256:0,1,2` on swtpm
    /// (tpm2-tools 5.4): 668 bytes, PCR 0's value at offset 0x8e.
    #[test]
    fn matches_what_tpm2_quote_writes() {
        let mut bank = BTreeMap::new();
        bank.insert(0, Base64Bytes(vec![0x90; 32]));
        bank.insert(1, Base64Bytes(vec![0; 32]));
        bank.insert(2, Base64Bytes(vec![0; 32]));
        let pcrs = BTreeMap::from([("sha256".to_owned(), bank)]);
        let file = pcrs_file(&pcrs).unwrap();
        assert_eq!(file.len(), 668);
        assert_eq!(&file[..11], &[1, 0, 0, 0, 0x0b, 0, 3, 7, 0, 0, 0]);
        assert_eq!(&file[0x84..0x8e], &[1, 0, 0, 0, 3, 0, 0, 0, 0x20, 0]);
        assert_eq!(file[0x8e], 0x90);
    }
}
