//! The firmware's TCG event log (`binary_bios_measurements`), as the TCG PC
//! Client Platform Firmware Profile defines it: a first event in the SHA-1
//! format (`TCG_PCClientPCREvent`) whose data, in a crypto-agile log, is the
//! `Spec ID Event03` naming each bank's digest size; then `TCG_PCR_EVENT2`
//! records with one digest per bank. A log without that first event is the
//! old SHA-1-only format. Every field is little-endian.
//!
//! No well-kept crate parses this (eventlog-rs reads TDX's CCEL and
//! tcg-log-core-rs is an early WBCL reader), so this parser is fuzzed
//! (`fuzz/fuzz_targets/attest_inputs.rs`); every length is checked
//! against what is left before it is used.

use std::collections::BTreeMap;

use crate::Bank;

/// EV_NO_ACTION: informational, not extended into any PCR.
pub const EV_NO_ACTION: u32 = 0x0000_0003;
const SPEC_ID_SIGNATURE: &[u8; 16] = b"Spec ID Event03\0";
const STARTUP_LOCALITY_SIGNATURE: &[u8; 16] = b"StartupLocality\0";
/// More events than any real log has (a few hundred): refuse the rest.
const MAX_EVENTS: usize = 100_000;
/// PCRs a PC Client TPM has.
const PCRS: u32 = 24;

/// One measurement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The PCR it was extended into.
    pub pcr: u32,
    /// The event type (EV_POST_CODE, EV_EFI_VARIABLE_DRIVER_CONFIG, ...).
    pub event_type: u32,
    /// The digest extended, per bank.
    pub digests: Vec<(Bank, Vec<u8>)>,
    /// The event's data (what was measured, or a description of it).
    pub data: Vec<u8>,
}

/// A parsed log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirmwareLog {
    /// The banks the log carries digests for.
    pub banks: Vec<Bank>,
    /// Every event after the header, in order.
    pub events: Vec<Event>,
    /// The locality the TPM was started from (PCR 0's first value's last byte).
    pub startup_locality: u8,
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|end| *end <= self.bytes.len())
            .ok_or_else(|| format!("the event log ends inside {what} (at byte {})", self.at))?;
        let field = &self.bytes[self.at..end];
        self.at = end;
        Ok(field)
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u16(&mut self, what: &str) -> Result<u16, String> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn done(&self) -> bool {
        self.at == self.bytes.len()
    }
}

/// Parses a log. Banks the log names but this verifier does not know
/// (SM3, SHA-512) are read past, by the sizes the header gives them.
pub fn parse(bytes: &[u8]) -> Result<FirmwareLog, String> {
    let mut r = Reader { bytes, at: 0 };
    let pcr = r.u32("the first event's PCR")?;
    let event_type = r.u32("the first event's type")?;
    let sha1 = r.take(20, "the first event's digest")?.to_vec();
    let size = r.u32("the first event's size")? as usize;
    let data = r.take(size, "the first event's data")?;
    let mut log = FirmwareLog {
        banks: vec![Bank::Sha1],
        events: Vec::new(),
        startup_locality: 0,
    };
    let agile = event_type == EV_NO_ACTION && data.starts_with(SPEC_ID_SIGNATURE);
    if !agile {
        // The SHA-1-only format: every event is a TCG_PCClientPCREvent.
        let first = Event {
            pcr,
            event_type,
            digests: vec![(Bank::Sha1, sha1)],
            data: data.to_vec(),
        };
        push(&mut log, first)?;
        while !r.done() {
            let event = legacy_event(&mut r)?;
            push(&mut log, event)?;
        }
        return Ok(log);
    }
    let sizes = spec_id_sizes(data)?;
    log.banks = sizes
        .iter()
        .filter_map(|(id, _)| Bank::from_algorithm_id(*id))
        .collect();
    while !r.done() {
        let event = agile_event(&mut r, &sizes)?;
        if event.event_type == EV_NO_ACTION && event.pcr == 0 {
            if let Some(rest) = event.data.strip_prefix(STARTUP_LOCALITY_SIGNATURE) {
                log.startup_locality = *rest
                    .first()
                    .ok_or("the StartupLocality event has no locality")?;
            }
        }
        push(&mut log, event)?;
    }
    Ok(log)
}

fn push(log: &mut FirmwareLog, event: Event) -> Result<(), String> {
    if log.events.len() >= MAX_EVENTS {
        return Err(format!("the event log has more than {MAX_EVENTS} events"));
    }
    if event.pcr >= PCRS && event.event_type != EV_NO_ACTION {
        return Err(format!(
            "event {} extends PCR {}, which does not exist",
            log.events.len() + 1,
            event.pcr
        ));
    }
    log.events.push(event);
    Ok(())
}

fn legacy_event(r: &mut Reader<'_>) -> Result<Event, String> {
    let pcr = r.u32("an event's PCR")?;
    let event_type = r.u32("an event's type")?;
    let digest = r.take(20, "an event's digest")?.to_vec();
    let size = r.u32("an event's size")? as usize;
    let data = r.take(size, "an event's data")?.to_vec();
    Ok(Event {
        pcr,
        event_type,
        digests: vec![(Bank::Sha1, digest)],
        data,
    })
}

/// The Spec ID event's algorithm list: (TPM_ALG_ID, digest size).
fn spec_id_sizes(data: &[u8]) -> Result<Vec<(u16, usize)>, String> {
    let mut r = Reader { bytes: data, at: 0 };
    // signature, platformClass, specVersionMinor/Major, specErrata, uintnSize.
    r.take(16 + 4 + 4, "the Spec ID event")?;
    let count = r.u32("the Spec ID event's algorithm count")?;
    if count == 0 || count > 16 {
        return Err(format!("the Spec ID event names {count} algorithms"));
    }
    let mut sizes = Vec::new();
    for _ in 0..count {
        let id = r.u16("an algorithm of the Spec ID event")?;
        let size = usize::from(r.u16("an algorithm's digest size")?);
        if let Some(bank) = Bank::from_algorithm_id(id) {
            if bank.size() != size {
                return Err(format!(
                    "the Spec ID event gives {bank} digests {size} bytes"
                ));
            }
        }
        if size == 0 || size > 64 {
            return Err(format!(
                "the Spec ID event gives algorithm {id:#06x} {size}-byte digests"
            ));
        }
        sizes.push((id, size));
    }
    Ok(sizes)
}

fn agile_event(r: &mut Reader<'_>, sizes: &[(u16, usize)]) -> Result<Event, String> {
    let pcr = r.u32("an event's PCR")?;
    let event_type = r.u32("an event's type")?;
    let count = r.u32("an event's digest count")?;
    if count as usize > sizes.len() {
        return Err(format!(
            "an event has {count} digests; the log's header names {} algorithms",
            sizes.len()
        ));
    }
    let mut digests = Vec::new();
    for _ in 0..count {
        let id = r.u16("an event digest's algorithm")?;
        let size = sizes
            .iter()
            .find(|(a, _)| *a == id)
            .map(|(_, s)| *s)
            .ok_or_else(|| format!("an event has a digest of algorithm {id:#06x}, which the log's header does not name"))?;
        let digest = r.take(size, "an event's digest")?.to_vec();
        if let Some(bank) = Bank::from_algorithm_id(id) {
            digests.push((bank, digest));
        }
    }
    let size = r.u32("an event's size")? as usize;
    let data = r.take(size, "an event's data")?.to_vec();
    Ok(Event {
        pcr,
        event_type,
        digests,
        data,
    })
}

/// The PCR values the log's events make, per bank and PCR, for the PCRs it
/// extends. PCR 0 starts with its startup locality in its last byte.
pub fn replay(log: &FirmwareLog) -> Result<BTreeMap<(Bank, u32), Vec<u8>>, String> {
    let mut pcrs: BTreeMap<(Bank, u32), Vec<u8>> = BTreeMap::new();
    for (n, event) in log.events.iter().enumerate() {
        if event.event_type == EV_NO_ACTION {
            continue;
        }
        for bank in &log.banks {
            let digest = event
                .digests
                .iter()
                .find(|(b, _)| b == bank)
                .map(|(_, d)| d)
                .ok_or_else(|| format!("event {} has no {bank} digest", n + 1))?;
            let pcr = pcrs.entry((*bank, event.pcr)).or_insert_with(|| {
                let mut start = vec![0; bank.size()];
                if event.pcr == 0 {
                    if let Some(last) = start.last_mut() {
                        *last = log.startup_locality;
                    }
                }
                start
            });
            bank.extend(pcr, digest);
        }
    }
    Ok(pcrs)
}

/// A crypto-agile log of `events` (PCR, type, data; each digest is the
/// bank's hash of the data), as firmware writes one, for tests and for
/// building expected values.
pub fn build(banks: &[Bank], events: &[(u32, u32, &[u8])]) -> Vec<u8> {
    let mut spec = Vec::new();
    spec.extend_from_slice(SPEC_ID_SIGNATURE);
    spec.extend_from_slice(&0u32.to_le_bytes()); // platformClass: client
    spec.extend_from_slice(&[0, 2, 0, 2]); // version 2.0, errata 0, uintnSize 2 (UINT64)
    spec.extend_from_slice(&(banks.len() as u32).to_le_bytes());
    for bank in banks {
        spec.extend_from_slice(&bank.algorithm_id().to_le_bytes());
        spec.extend_from_slice(&(bank.size() as u16).to_le_bytes());
    }
    spec.push(0); // no vendor info
    let mut out = Vec::new();
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&EV_NO_ACTION.to_le_bytes());
    out.extend_from_slice(&[0; 20]);
    out.extend_from_slice(&(spec.len() as u32).to_le_bytes());
    out.extend_from_slice(&spec);
    for (pcr, event_type, data) in events {
        out.extend_from_slice(&pcr.to_le_bytes());
        out.extend_from_slice(&event_type.to_le_bytes());
        out.extend_from_slice(&(banks.len() as u32).to_le_bytes());
        for bank in banks {
            out.extend_from_slice(&bank.algorithm_id().to_le_bytes());
            out.extend_from_slice(&bank.hash(data));
        }
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(data);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_built_log_parses_and_replays() {
        let events: &[(u32, u32, &[u8])] =
            &[(0, 8, b"crtm"), (0, 1, b"bios"), (7, 0x8000_0001, b"sb")];
        let bytes = build(&[Bank::Sha1, Bank::Sha256], events);
        let log = parse(&bytes).unwrap();
        assert_eq!(log.events.len(), 3);
        assert_eq!(log.banks, vec![Bank::Sha1, Bank::Sha256]);
        let pcrs = replay(&log).unwrap();
        let mut pcr0 = vec![0; 32];
        Bank::Sha256.extend(&mut pcr0, &Bank::Sha256.hash(b"crtm"));
        Bank::Sha256.extend(&mut pcr0, &Bank::Sha256.hash(b"bios"));
        assert_eq!(pcrs[&(Bank::Sha256, 0)], pcr0);
        assert!(pcrs.contains_key(&(Bank::Sha1, 7)));
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let bytes = build(&[Bank::Sha256], &[(0, 8, b"crtm"), (4, 13, b"boot")]);
        for len in 0..bytes.len() {
            // A cut at an event boundary is a shorter, valid log.
            let _ = parse(&bytes[..len]);
        }
        assert!(parse(&bytes[..bytes.len() - 1]).is_err());
    }
}
