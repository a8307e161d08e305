//! Checking a quote's evidence with no TPM: the AK's signature, the nonce,
//! the PCR values against the signed digest, the event logs replayed
//! against the PCRs, and a policy. Every check is reported, passed or not,
//! so an operator sees which PCR or event differs.

use std::collections::BTreeMap;

use aws_lc_rs::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED};
use serde::Serialize;
use tss_esapi::structures::{Attest, AttestInfo, Signature};
use tss_esapi::traits::{Marshall, UnMarshall};
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::evidence::Evidence;
use crate::policy::Checked;
use crate::{firmware_log, ima_log, Bank};

/// PCRs the firmware measures into (PC Client profile).
const FIRMWARE_PCRS: std::ops::Range<u32> = 0..8;

/// One check's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What was checked (`signature`, `nonce`, `pcr sha256:7`, ...).
    pub name: String,
    /// Whether it held.
    pub ok: bool,
    /// What was found.
    pub detail: String,
}

/// Every check, and what the quote says besides.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// In the order made.
    pub checks: Vec<Check>,
    /// The TPM's reboot count when it quoted (a verifier that saw a higher
    /// one before is looking at a replay).
    pub reset_count: Option<u32>,
    /// The TPM's clock (ms) when it quoted.
    pub clock: Option<u64>,
}

impl Report {
    /// Whether every check held.
    pub fn ok(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }

    fn add(&mut self, name: impl Into<String>, ok: bool, detail: impl Into<String>) -> bool {
        self.checks.push(Check {
            name: name.into(),
            ok,
            detail: detail.into(),
        });
        ok
    }
}

/// Which attestation key the quote must be signed by.
#[derive(Debug, Clone, Copy)]
pub enum AkTrust<'a> {
    /// This one (PEM): the AK the verifier proved to be in the device's TPM
    /// (`tpm2_makecredential` over its EK and the AK's name, then
    /// `POST /v1/tpm/ak/activate`). The evidence's `ak.pem` must be it.
    Pinned(&'a str),
    /// Whatever `ak.pem` in the evidence is. That proves nothing by itself —
    /// anyone can sign a made-up quote with a key of their own and put it
    /// there — so only for evidence that came over a channel that already
    /// authenticates the device. Reported as a check of its own.
    FromEvidence,
    /// None given: the `ak` check fails, saying how to pin one.
    Unpinned,
}

/// Checks `evidence` for `nonce`, signed by the AK `ak` names, and, if
/// given, `policy`.
pub fn verify(
    evidence: &Evidence,
    nonce: &[u8],
    ak: AkTrust<'_>,
    policy: Option<&Checked>,
) -> Report {
    let mut report = Report {
        checks: Vec::new(),
        reset_count: None,
        clock: None,
    };
    let signer = match ak {
        AkTrust::Pinned(pem) => {
            match (
                spki_der(pem, "the pinned AK"),
                spki_der(&evidence.ak_pem, "ak.pem"),
            ) {
                (Ok(pinned), Ok(given)) if pinned == given => {
                    report.add("ak", true, "ak.pem is the pinned attestation key");
                }
                (Ok(_), Ok(_)) => {
                    report.add("ak", false, "ak.pem is not the pinned attestation key");
                }
                (Ok(_), Err(why)) => {
                    report.add("ak", false, why);
                }
                (Err(why), _) => {
                    report.add("ak", false, why);
                }
            }
            pem
        }
        AkTrust::FromEvidence => {
            report.add(
                "ak",
                true,
                "taken from ak.pem as given: the quote proves the device's state only if that file came from a channel that authenticates the device",
            );
            evidence.ak_pem.as_str()
        }
        AkTrust::Unpinned => {
            report.add(
                "ak",
                false,
                "no attestation key is pinned, and anyone can sign a quote with a key of their own and call it ak.pem: pass --ak with the AK you proved with tpm2_makecredential (or set `ak` in the policy), or --trust-evidence-ak if the files came over a channel that authenticates the device",
            );
            evidence.ak_pem.as_str()
        }
    };
    match check_signature(signer, &evidence.signature, &evidence.attest) {
        Ok(()) => report.add("signature", true, "the attestation key signed the quote"),
        Err(why) => report.add("signature", false, why),
    };
    let attest = match decode_quote(&evidence.attest) {
        Ok(a) => a,
        Err(why) => {
            report.add("quote", false, why);
            return report;
        }
    };
    report.reset_count = Some(attest.clock_info().reset_count());
    report.clock = Some(attest.clock_info().clock());
    let quoted_nonce = attest.extra_data().value();
    if quoted_nonce == nonce {
        report.add(
            "nonce",
            true,
            format!("the quote carries nonce {}", hex::encode(nonce)),
        );
    } else {
        report.add(
            "nonce",
            false,
            format!(
                "the quote carries nonce {}, not {}",
                hex::encode(quoted_nonce),
                hex::encode(nonce)
            ),
        );
    }
    let pcrs = check_pcr_digest(&mut report, &attest, evidence);
    if let Some(log) = &evidence.firmware_log {
        check_firmware_log(&mut report, log, &pcrs, policy);
    } else if policy.is_some_and(|p| !p.events.is_empty()) {
        report.add(
            "firmware log",
            false,
            "the policy requires events, but there is no event log",
        );
    }
    let measured = match &evidence.ima_log {
        Some(log) => check_ima_log(&mut report, log, &pcrs),
        None => None,
    };
    if let Some(policy) = policy {
        check_policy(&mut report, policy, &pcrs, measured.as_deref());
    }
    report
}

/// The DER of the public key in `text` (PEM), checked to be one.
fn spki_der(text: &str, what: &str) -> Result<Vec<u8>, String> {
    let pem = pem::parse(text).map_err(|e| format!("{what} is not PEM: {e}"))?;
    SubjectPublicKeyInfo::from_der(pem.contents())
        .map_err(|e| format!("{what} is not a public key: {e}"))?;
    Ok(pem.into_contents())
}

fn check_signature(ak_pem: &str, signature: &[u8], attest: &[u8]) -> Result<(), String> {
    let der = spki_der(ak_pem, "the attestation key")?;
    let (_, spki) = SubjectPublicKeyInfo::from_der(&der)
        .map_err(|e| format!("the attestation key is not a public key: {e}"))?;
    let signature = Signature::unmarshall(signature)
        .map_err(|e| format!("quote.sig is not a TPMT_SIGNATURE: {e}"))?;
    let Signature::EcDsa(ecdsa) = signature else {
        return Err("quote.sig is not an ECDSA signature (edgeid's AK signs ECDSA P-256)".into());
    };
    let pad = |v: &[u8]| -> Result<Vec<u8>, String> {
        if v.len() > 32 {
            return Err("quote.sig holds a value longer than P-256's".into());
        }
        Ok([vec![0; 32 - v.len()], v.to_vec()].concat())
    };
    let raw = [
        pad(ecdsa.signature_r().value())?,
        pad(ecdsa.signature_s().value())?,
    ]
    .concat();
    UnparsedPublicKey::new(
        &ECDSA_P256_SHA256_FIXED,
        spki.subject_public_key.data.as_ref(),
    )
    .verify(attest, &raw)
    .map_err(|_| "the signature does not verify with the attestation key over quote.msg".to_owned())
}

fn decode_quote(bytes: &[u8]) -> Result<Attest, String> {
    let attest = Attest::unmarshall(bytes)
        .map_err(|e| format!("quote.msg is not a TPMS_ATTEST made by a TPM: {e}"))?;
    // The C unmarshaller stops where the structure does: trailing bytes, or a
    // second encoding of the same values, would be signed but unread.
    if attest.marshall().ok().as_deref() != Some(bytes) {
        return Err("quote.msg has bytes after its TPMS_ATTEST".into());
    }
    if !matches!(attest.attested(), AttestInfo::Quote { .. }) {
        return Err("quote.msg is not a quote (TPM_ST_ATTEST_QUOTE)".into());
    }
    Ok(attest)
}

/// The quoted values, if the PCR file matches the quote's selection and digest.
fn check_pcr_digest(
    report: &mut Report,
    attest: &Attest,
    evidence: &Evidence,
) -> BTreeMap<(Bank, u32), Vec<u8>> {
    let AttestInfo::Quote { info } = attest.attested() else {
        return BTreeMap::new();
    };
    let mut selected: Vec<(Bank, Vec<u32>)> = Vec::new();
    for s in info.pcr_selection().get_selections() {
        let id: u16 = tss_esapi::constants::AlgorithmIdentifier::from(s.hashing_algorithm()).into();
        let Some(bank) = Bank::from_algorithm_id(id) else {
            report.add("pcr selection", false, format!("the quote covers a bank of algorithm {id:#06x}, which this verifier does not know"));
            return BTreeMap::new();
        };
        let mut pcrs: Vec<u32> = s
            .selected()
            .iter()
            .map(|slot| u32::from(*slot).trailing_zeros())
            .collect();
        pcrs.sort_unstable();
        selected.push((bank, pcrs));
    }
    let in_file: Vec<(Bank, Vec<u32>)> = evidence
        .pcrs
        .iter()
        .map(|(b, v)| (*b, v.iter().map(|(i, _)| *i).collect()))
        .collect();
    let show = |s: &[(Bank, Vec<u32>)]| {
        s.iter()
            .map(|(b, p)| {
                format!(
                    "{b}:{}",
                    p.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
                )
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    if selected != in_file {
        report.add(
            "pcr selection",
            false,
            format!(
                "the quote covers {}; quote.pcrs holds {}",
                show(&selected),
                show(&in_file)
            ),
        );
        return BTreeMap::new();
    }
    let all: Vec<u8> = evidence
        .pcrs
        .iter()
        .flat_map(|(_, v)| v.iter().flat_map(|(_, d)| d.clone()))
        .collect();
    if Bank::Sha256.hash(&all) != info.pcr_digest().value() {
        report.add(
            "pcr digest",
            false,
            "the PCR values in quote.pcrs are not the ones the TPM quoted",
        );
        return BTreeMap::new();
    }
    report.add(
        "pcr digest",
        true,
        format!("quote.pcrs holds the quoted values of {}", show(&selected)),
    );
    evidence
        .pcrs
        .iter()
        .flat_map(|(b, v)| v.iter().map(move |(i, d)| ((*b, *i), d.clone())))
        .collect()
}

fn check_firmware_log(
    report: &mut Report,
    bytes: &[u8],
    pcrs: &BTreeMap<(Bank, u32), Vec<u8>>,
    policy: Option<&Checked>,
) {
    let log = match firmware_log::parse(bytes) {
        Ok(log) => log,
        Err(why) => {
            report.add("firmware log", false, why);
            return;
        }
    };
    let replayed = match firmware_log::replay(&log) {
        Ok(r) => r,
        Err(why) => {
            report.add("firmware log", false, why);
            return;
        }
    };
    report.add(
        "firmware log",
        true,
        format!(
            "{} events in banks {}",
            log.events.len(),
            log.banks
                .iter()
                .map(|b| b.name())
                .collect::<Vec<_>>()
                .join(",")
        ),
    );
    // The (bank, PCR) pairs whose events the quote vouches for: a log's
    // digest counts only where its replay gave the quoted value.
    let mut vouched = std::collections::BTreeSet::new();
    let mut unreplayable = std::collections::BTreeSet::new();
    for (&(bank, pcr), quoted) in pcrs {
        let name = format!("pcr {bank}:{pcr}");
        if FIRMWARE_PCRS.contains(&pcr) && !log.banks.contains(&bank) {
            unreplayable.insert(bank);
            continue;
        }
        match replayed.get(&(bank, pcr)) {
            Some(value) if value == quoted => {
                vouched.insert((bank, pcr));
                report.add(name, true, "the firmware log replays to the quoted value");
            }
            Some(value) => {
                report.add(
                    name,
                    false,
                    format!(
                        "the firmware log replays to {}; the quote has {}",
                        hex::encode(value),
                        hex::encode(quoted)
                    ),
                );
            }
            None if FIRMWARE_PCRS.contains(&pcr) && log.banks.contains(&bank) => {
                let untouched = quoted.iter().all(|b| *b == 0);
                report.add(
                    name,
                    untouched,
                    if untouched {
                        "not extended, as the firmware log says".to_owned()
                    } else {
                        format!(
                            "the firmware log has no event for it, but it is {}",
                            hex::encode(quoted)
                        )
                    },
                );
            }
            None => {}
        }
    }
    for bank in unreplayable {
        report.add(
            format!("firmware log {bank}"),
            false,
            format!(
                "the quote covers firmware PCRs in {bank}, but the log carries only {}: it cannot be replayed against them; quote a bank the log carries",
                log.banks.iter().map(|b| b.name()).collect::<Vec<_>>().join(",")
            ),
        );
    }
    for (pcr, bank, digest, name) in policy.map_or(&[][..], |p| p.events.as_slice()) {
        let found = log
            .events
            .iter()
            .any(|e| e.pcr == *pcr && e.digests.iter().any(|(b, d)| b == bank && d == digest));
        let vouched = vouched.contains(&(*bank, *pcr));
        report.add(
            format!("event {name}"),
            found && vouched,
            match (found, vouched) {
                (true, true) => format!("in the firmware log, PCR {pcr}"),
                (true, false) => format!(
                    "in the firmware log, but the quote does not vouch for it: PCR {bank}:{pcr} is not quoted or does not replay"
                ),
                (false, _) => format!(
                    "not in the firmware log (PCR {pcr}, {bank} {})",
                    hex::encode(digest)
                ),
            },
        );
    }
}

/// The IMA entries the quote covers (the log's prefix that replays PCR 10).
fn check_ima_log(
    report: &mut Report,
    bytes: &[u8],
    pcrs: &BTreeMap<(Bank, u32), Vec<u8>>,
) -> Option<Vec<ima_log::Entry>> {
    let entries = match ima_log::parse(bytes) {
        Ok(e) => e,
        Err(why) => {
            report.add("ima log", false, why);
            return None;
        }
    };
    let quoted: Vec<(Bank, &Vec<u8>)> = pcrs
        .iter()
        .filter(|((_, pcr), _)| *pcr == 10)
        .map(|((bank, _), value)| (*bank, value))
        .collect();
    if quoted.is_empty() {
        report.add(
            "ima log",
            false,
            "the quote does not cover PCR 10, which IMA extends",
        );
        return None;
    }
    // The log was read after the quote: it may hold entries the quote does
    // not. The quote covers the first `n` whose replay gives its values.
    let mut values: Vec<Vec<u8>> = quoted
        .iter()
        .map(|(bank, _)| vec![0; bank.size()])
        .collect();
    let matches = |values: &[Vec<u8>]| quoted.iter().zip(values).all(|((_, q), v)| *q == v);
    let mut covered = matches(&values).then_some(0);
    for (n, entry) in entries.iter().enumerate() {
        if entry.pcr != 10 {
            continue;
        }
        // The SHA-1 bank takes the stored template digest, not the data: a
        // rewritten path or file digest would replay unnoticed there.
        if !entry.is_violation() && Bank::Sha1.hash(&entry.data) != entry.template_digest {
            report.add(
                "pcr 10 (ima)",
                false,
                format!(
                    "IMA entry {} ({}): its template digest is not the SHA-1 of its data",
                    n + 1,
                    entry.path().unwrap_or_default()
                ),
            );
            return None;
        }
        for ((bank, _), value) in quoted.iter().zip(values.iter_mut()) {
            bank.extend(value, &entry.measurement(*bank));
        }
        if matches(&values) {
            covered = Some(n + 1);
        }
    }
    match covered {
        Some(n) => {
            report.add(
                "pcr 10 (ima)",
                true,
                format!(
                    "the first {n} of {} IMA entries replay to the quoted value",
                    entries.len()
                ),
            );
            Some(entries[..n].to_vec())
        }
        None => {
            report.add(
                "pcr 10 (ima)",
                false,
                format!(
                    "no prefix of the {} IMA entries replays to the quoted PCR 10",
                    entries.len()
                ),
            );
            None
        }
    }
}

fn check_policy(
    report: &mut Report,
    policy: &Checked,
    pcrs: &BTreeMap<(Bank, u32), Vec<u8>>,
    measured: Option<&[ima_log::Entry]>,
) {
    for (&(bank, pcr), expected) in &policy.pcrs {
        let name = format!("policy pcr {bank}:{pcr}");
        match pcrs.get(&(bank, pcr)) {
            Some(v) if v == expected => report.add(name, true, "as the policy expects"),
            Some(v) => report.add(
                name,
                false,
                format!(
                    "quoted {}; the policy expects {}",
                    hex::encode(v),
                    hex::encode(expected)
                ),
            ),
            None => report.add(
                name,
                false,
                "the policy names it, but the quote does not cover it",
            ),
        };
    }
    for (path, digest) in &policy.files {
        let name = format!("policy file {path}");
        let Some(entries) = measured else {
            report.add(
                name,
                false,
                "the policy names files, but no IMA log replays the quote",
            );
            continue;
        };
        let seen: Vec<String> = entries
            .iter()
            // A violation's data is not what the kernel extended: no proof.
            .filter(|e| !e.is_violation() && e.path().as_deref() == Some(path.as_str()))
            .filter_map(|e| e.file_digest())
            .collect();
        if seen.is_empty() {
            report.add(name, false, "IMA never measured it");
        } else if let Some(other) = seen.iter().find(|d| *d != digest) {
            report.add(
                name,
                false,
                format!("IMA measured it as {other}; the policy expects {digest}"),
            );
        } else {
            report.add(name, true, format!("measured as {digest}"));
        }
    }
}
