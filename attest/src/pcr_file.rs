//! The PCR file tpm2-tools writes (`tpm2_quote -o`, `tpm2_pcrread -o`) and
//! `tpm2_checkquote -f` reads: tpm2-tools' in-memory structures in the
//! host's byte order (little-endian on every machine edgeid runs on) — a
//! `TPML_PCR_SELECTION`, a count of `TPML_DIGEST`s, then the lists, eight
//! digests each, in the selection's order (banks as a quote lists them,
//! PCRs ascending).

use crate::{Bank, PcrList, PcrValues};

/// PCR banks a `TPML_PCR_SELECTION` holds (TPM2_NUM_PCR_BANKS).
const MAX_BANKS: usize = 16;
/// One `TPMS_PCR_SELECTION`: hash, sizeofSelect, pcrSelect[4], padding.
const SELECTION_SIZE: usize = 8;
/// Digests one `TPML_DIGEST` holds (what one TPM2_PCR_Read returns).
const DIGESTS_PER_LIST: usize = 8;
/// `sizeof(TPMU_HA)`: a TPM2B_DIGEST's buffer, whatever its size.
const DIGEST_BUFFER: usize = 64;
/// One `TPML_DIGEST`: count, then eight TPM2B_DIGESTs.
const LIST_SIZE: usize = 4 + DIGESTS_PER_LIST * (2 + DIGEST_BUFFER);
/// PCRs a PC Client TPM has.
const PCRS: u32 = 24;

/// The file for `pcrs`.
pub fn write(pcrs: &PcrValues) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    out.extend_from_slice(&(pcrs.len() as u32).to_le_bytes());
    let mut digests = Vec::new();
    for (bank, values) in pcrs {
        let mut select = [0u8; 4];
        for (&index, value) in values {
            if index >= PCRS {
                return Err(format!("PCR {index} does not exist"));
            }
            select[(index / 8) as usize] |= 1 << (index % 8);
            if value.len() != bank.size() {
                return Err(format!("PCR {index} of {bank} is not a {bank} digest"));
            }
            digests.push(value.as_slice());
        }
        out.extend_from_slice(&bank.algorithm_id().to_le_bytes());
        out.push(3);
        out.extend_from_slice(&select);
        out.push(0);
    }
    out.resize(4 + MAX_BANKS * SELECTION_SIZE, 0);
    let lists = digests.chunks(DIGESTS_PER_LIST);
    out.extend_from_slice(&(lists.len() as u32).to_le_bytes());
    for list in lists {
        out.extend_from_slice(&(list.len() as u32).to_le_bytes());
        for slot in 0..DIGESTS_PER_LIST {
            let value = list.get(slot).copied().unwrap_or_default();
            out.extend_from_slice(&(value.len() as u16).to_le_bytes());
            out.extend_from_slice(value);
            out.resize(out.len() + DIGEST_BUFFER - value.len(), 0);
        }
    }
    Ok(out)
}

fn u32_at(bytes: &[u8], at: usize) -> Result<u32, String> {
    bytes
        .get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes)
        .ok_or_else(|| format!("the PCR file ends at byte {at}"))
}

fn u16_at(bytes: &[u8], at: usize) -> Result<u16, String> {
    bytes
        .get(at..at + 2)
        .and_then(|b| b.try_into().ok())
        .map(u16::from_le_bytes)
        .ok_or_else(|| format!("the PCR file ends at byte {at}"))
}

/// The PCR values in a file [`write`] (or tpm2-tools) wrote, banks in the
/// file's order.
pub fn read(bytes: &[u8]) -> Result<PcrList, String> {
    let banks = u32_at(bytes, 0)? as usize;
    if banks > MAX_BANKS {
        return Err(format!(
            "the PCR file names {banks} banks (at most {MAX_BANKS})"
        ));
    }
    let mut selection = Vec::new();
    for i in 0..banks {
        let at = 4 + i * SELECTION_SIZE;
        let alg = u16_at(bytes, at)?;
        let bank = Bank::from_algorithm_id(alg)
            .ok_or_else(|| format!("the PCR file has a bank of unknown algorithm {alg:#06x}"))?;
        let size = usize::from(*bytes.get(at + 2).ok_or("the PCR file is truncated")?);
        if size > 4 {
            return Err(format!(
                "the PCR file's {bank} selection is {size} bytes (at most 4)"
            ));
        }
        let mut pcrs = Vec::new();
        for byte in 0..size {
            let bits = *bytes
                .get(at + 3 + byte)
                .ok_or("the PCR file is truncated in a selection")?;
            for bit in 0..8 {
                if bits & (1 << bit) != 0 {
                    pcrs.push((byte * 8 + bit) as u32);
                }
            }
        }
        selection.push((bank, pcrs));
    }
    let mut at = 4 + MAX_BANKS * SELECTION_SIZE;
    let lists = u32_at(bytes, at)? as usize;
    at += 4;
    let wanted: usize = selection.iter().map(|(_, p)| p.len()).sum();
    if lists != wanted.div_ceil(DIGESTS_PER_LIST) {
        return Err(format!(
            "the PCR file has {lists} digest lists for {wanted} PCRs"
        ));
    }
    let mut digests = Vec::new();
    for _ in 0..lists {
        let count = u32_at(bytes, at)? as usize;
        if count > DIGESTS_PER_LIST {
            return Err(format!(
                "a digest list of the PCR file holds {count} digests"
            ));
        }
        for slot in 0..count {
            let d = at + 4 + slot * (2 + DIGEST_BUFFER);
            let size = usize::from(u16_at(bytes, d)?);
            let value = bytes
                .get(d + 2..d + 2 + size.min(DIGEST_BUFFER))
                .ok_or("the PCR file is truncated in a digest")?;
            digests.push(value.to_vec());
        }
        at += LIST_SIZE;
    }
    if at != bytes.len() {
        return Err(format!(
            "the PCR file is {} bytes; its lists end at {at}",
            bytes.len()
        ));
    }
    if digests.len() != wanted {
        return Err(format!(
            "the PCR file holds {} digests for {wanted} PCRs",
            digests.len()
        ));
    }
    let mut digests = digests.into_iter();
    let mut out = Vec::new();
    for (bank, pcrs) in selection {
        let mut values = Vec::new();
        for pcr in pcrs {
            let value = digests.next().ok_or("the PCR file lacks a digest")?;
            if value.len() != bank.size() {
                return Err(format!(
                    "PCR {pcr} of {bank} in the PCR file is not a {bank} digest"
                ));
            }
            values.push((pcr, value));
        }
        out.push((bank, values));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout `tpm2_quote -o` wrote for `-l sha256:0,1,2` on swtpm
    /// (tpm2-tools 5.4): 668 bytes, PCR 0's value at offset 0x8e.
    #[test]
    fn matches_what_tpm2_quote_writes_and_reads_back() {
        let mut bank = std::collections::BTreeMap::new();
        bank.insert(0, vec![0x90; 32]);
        bank.insert(1, vec![0; 32]);
        bank.insert(2, vec![0; 32]);
        let pcrs = PcrValues::from([(Bank::Sha256, bank.clone())]);
        let file = write(&pcrs).unwrap();
        assert_eq!(file.len(), 668);
        assert_eq!(&file[..11], &[1, 0, 0, 0, 0x0b, 0, 3, 7, 0, 0, 0]);
        assert_eq!(&file[0x84..0x8e], &[1, 0, 0, 0, 3, 0, 0, 0, 0x20, 0]);
        assert_eq!(file[0x8e], 0x90);
        let read = read(&file).unwrap();
        assert_eq!(read, vec![(Bank::Sha256, bank.into_iter().collect())]);
    }

    #[test]
    fn junk_is_refused_without_a_panic() {
        // What the fuzzer found first (attest_inputs): a selection cut short.
        let found: &[u8] = &[
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0xb, 0, 3, 1, 0x98,
            0xe, 0xe, 0xe, 0xe, 0xe, 0, 0, 0xff, 0xff, 0, 0,
        ];
        let cut = &found[18..27]; // the target reads the third quarter as a PCR file
        for junk in [
            &b""[..],
            &[0xff; 4],
            &[1, 0, 0, 0, 0x0b, 0, 9],
            &[0u8; 200],
            cut,
            found,
        ] {
            assert!(read(junk).is_err(), "{junk:?}");
        }
    }
}
