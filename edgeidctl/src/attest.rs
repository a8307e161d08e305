//! `edgeidctl attest`: a quote on the device, written as the files
//! tpm2-tools reads; and its verification anywhere, with no TPM
//! ([`edgeid_attest`]).

use std::path::{Path, PathBuf};

use clap::Subcommand;
use edgeid_attest::policy::Policy;
use edgeid_attest::AkTrust;
use edgeid_attest::{Bank, Evidence};
use edgeid_keyd::api::{TpmEventLog, TpmQuoteResponse};
use edgeid_keyd::KeydClient;

/// How much of the IMA log one run fetches at most (256 answers of 1 MiB).
const MAX_IMA_PIECES: usize = 256;

#[derive(Subcommand)]
pub enum AttestAction {
    /// On the device: have the TPM quote PCRs over a verifier's nonce and
    /// write ak.pem, quote.msg, quote.sig, quote.pcrs and the event logs
    /// (eventlog, eventlog.ima) into a directory. `tpm2_checkquote -u
    /// DIR/ak.pem -m DIR/quote.msg -s DIR/quote.sig -f DIR/quote.pcrs -g
    /// sha256 -q NONCE` checks them.
    Quote {
        /// The verifier's nonce, 8-64 bytes in hex.
        #[arg(long)]
        nonce: String,
        /// PCRs to quote, `BANK:N,N,...`; repeat for several banks.
        #[arg(
            long = "pcrs",
            value_name = "BANK:PCRS",
            default_value = "sha256:0,1,2,3,4,5,6,7"
        )]
        pcrs: Vec<String>,
        /// The directory to write (created 0700 if missing).
        #[arg(long)]
        out: PathBuf,
    },
    /// Anywhere: check a quote's files — the AK's signature, the nonce, the
    /// PCR values, the event logs replayed against them, and a policy of
    /// expected values. Exits non-zero when any check fails.
    Verify {
        /// The nonce the quote must carry, hex.
        #[arg(long)]
        nonce: String,
        /// Expected PCR values, events and IMA-measured files (TOML).
        #[arg(long)]
        policy: Option<PathBuf>,
        /// The attestation key the quote must be signed by (PEM): the one
        /// you proved is in the device's TPM. Overrides the policy's `ak`.
        #[arg(long)]
        ak: Option<PathBuf>,
        /// Accept the directory's own ak.pem: only for files that came over
        /// a channel that already authenticates the device.
        #[arg(long, conflicts_with = "ak")]
        trust_evidence_ak: bool,
        /// `text` or `json`.
        #[arg(long, default_value = "text", value_parser = ["text", "json"])]
        output: String,
        /// The directory `attest quote` wrote.
        dir: PathBuf,
    },
}

/// Runs an `attest` command; `keyd` is the socket for `quote`.
pub async fn run(keyd: &Path, action: &AttestAction) -> Result<(), String> {
    match action {
        AttestAction::Quote { nonce, pcrs, out } => {
            quote(&KeydClient::new(keyd), nonce, pcrs, out).await
        }
        AttestAction::Verify {
            nonce,
            policy,
            ak,
            trust_evidence_ak,
            output,
            dir,
        } => verify(
            nonce,
            policy.as_deref(),
            ak.as_deref(),
            *trust_evidence_ak,
            output == "json",
            dir,
        ),
    }
}

fn parse_nonce(hex_text: &str) -> Result<Vec<u8>, String> {
    let nonce =
        hex::decode(hex_text.trim()).map_err(|_| format!("--nonce '{hex_text}' is not hex"))?;
    if !(8..=64).contains(&nonce.len()) {
        return Err(format!("--nonce is {} bytes; a nonce is 8-64", nonce.len()));
    }
    Ok(nonce)
}

/// `sha256:0,1,7` → (sha256, [0, 1, 7]).
fn parse_pcrs(specs: &[String]) -> Result<Vec<(String, Vec<u32>)>, String> {
    specs
        .iter()
        .map(|spec| {
            let (bank, list) = spec
                .split_once(':')
                .ok_or_else(|| format!("--pcrs '{spec}' is not BANK:N,N (sha256:0,1,7)"))?;
            if Bank::parse(bank).is_none() {
                return Err(format!(
                    "--pcrs '{spec}': unknown bank '{bank}' (sha1, sha256, sha384)"
                ));
            }
            let pcrs = list
                .split(',')
                .map(|n| {
                    n.trim()
                        .parse::<u32>()
                        .map_err(|_| format!("--pcrs '{spec}': '{n}' is not a PCR number"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok((bank.to_owned(), pcrs))
        })
        .collect()
}

async fn quote(keyd: &KeydClient, nonce: &str, pcrs: &[String], out: &Path) -> Result<(), String> {
    let nonce = parse_nonce(nonce)?;
    let selection = parse_pcrs(pcrs)?;
    let ak = keyd
        .tpm_ak()
        .await
        .map_err(|e| format!("keyd: the attestation key: {e}"))?;
    let mut quote = keyd
        .tpm_quote(&nonce, &selection, 0)
        .await
        .map_err(|e| format!("keyd: quote: {e}"))?;
    // IMA's log comes in pieces; each answer is a fresh quote, and the log
    // only grows, so the last quote's PCR 10 is a prefix of what is gathered.
    let mut ima = take_log(&mut quote.event_logs.ima);
    let mut pieces = 1;
    while let Some((bytes, false)) = &ima {
        if pieces >= MAX_IMA_PIECES {
            return Err(format!(
                "the IMA log is longer than {pieces} MiB; not fetched whole"
            ));
        }
        let offset = bytes.len() as u64;
        let mut next = keyd
            .tpm_quote(&nonce, &selection, offset)
            .await
            .map_err(|e| format!("keyd: quote: {e}"))?;
        let piece = take_log(&mut next.event_logs.ima);
        let mut gathered = ima.take().map(|(b, _)| b).unwrap_or_default();
        let complete = match piece {
            Some((more, complete)) => {
                gathered.extend(more);
                complete
            }
            None => true,
        };
        ima = Some((gathered, complete));
        quote = next;
        pieces += 1;
    }
    let firmware = take_log(&mut quote.event_logs.firmware).map(|(b, _)| b);
    let evidence = evidence_of(&ak.pem, &quote, firmware, ima.map(|(b, _)| b))?;
    evidence.write(out)?;
    summarize(&quote, &evidence, &ak.name.0, out);
    Ok(())
}

/// A log's bytes and whether they are all of it; None (said on stderr) if
/// keyd could not read it.
fn take_log(log: &mut TpmEventLog) -> Option<(Vec<u8>, bool)> {
    match log.data.take() {
        Some(data) => Some((data.0, log.complete)),
        None => {
            if let Some(why) = &log.error {
                errln!("edgeidctl: no event log: {why}");
            }
            None
        }
    }
}

fn evidence_of(
    ak_pem: &str,
    quote: &TpmQuoteResponse,
    firmware_log: Option<Vec<u8>>,
    ima_log: Option<Vec<u8>>,
) -> Result<Evidence, String> {
    let mut pcrs = Vec::new();
    for (bank, values) in &quote.pcrs {
        let bank = Bank::parse(bank)
            .ok_or_else(|| format!("keyd answered an unknown PCR bank '{bank}'"))?;
        pcrs.push((
            bank,
            values.iter().map(|(i, v)| (*i, v.0.clone())).collect(),
        ));
    }
    pcrs.sort_by_key(|(bank, _)| *bank);
    Ok(Evidence {
        ak_pem: ak_pem.replace("\r\n", "\n"),
        attest: quote.attest.0.clone(),
        signature: quote.signature.0.clone(),
        pcrs,
        firmware_log,
        ima_log,
    })
}

fn summarize(quote: &TpmQuoteResponse, evidence: &Evidence, ak_name: &[u8], out: &Path) {
    let banks: Vec<String> = evidence
        .pcrs
        .iter()
        .map(|(b, v)| {
            format!(
                "{b}:{}",
                v.iter()
                    .map(|(i, _)| i.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            )
        })
        .collect();
    outln!(
        "quoted {} with the attestation key {}",
        banks.join(" "),
        hex::encode(ak_name)
    );
    outln!(
        "  TPM clock {} ms, reboot {} (resumes {}), firmware {:#x}",
        quote.clock.clock,
        quote.clock.reset_count,
        quote.clock.restart_count,
        quote.clock.firmware_version
    );
    let size = |log: &Option<Vec<u8>>| {
        log.as_ref()
            .map_or("none".to_owned(), |b| format!("{} bytes", b.len()))
    };
    outln!(
        "  firmware event log: {}; IMA log: {}",
        size(&evidence.firmware_log),
        size(&evidence.ima_log)
    );
    outln!("wrote {}", out.display());
    outln!(
        "check anywhere: edgeidctl attest verify --nonce NONCE --ak PROVED-AK.pem {0}   (or tpm2_checkquote -u {0}/ak.pem -m {0}/quote.msg -s {0}/quote.sig -f {0}/quote.pcrs -g sha256 -q NONCE)",
        out.display()
    );
}

fn verify(
    nonce: &str,
    policy: Option<&Path>,
    ak: Option<&Path>,
    trust_evidence_ak: bool,
    json: bool,
    dir: &Path,
) -> Result<(), String> {
    let nonce = hex::decode(nonce.trim()).map_err(|_| format!("--nonce '{nonce}' is not hex"))?;
    let policy = match policy {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            Some(Policy::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?)
        }
        None => None,
    };
    let pinned = match ak {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?,
        ),
        None => policy.as_ref().and_then(|p| p.ak.clone()),
    };
    let trust = match &pinned {
        Some(pem) => AkTrust::Pinned(pem),
        None if trust_evidence_ak => AkTrust::FromEvidence,
        None => AkTrust::Unpinned,
    };
    let evidence = Evidence::read(dir)?;
    let report = edgeid_attest::verify(&evidence, &nonce, trust, policy.as_ref());
    if json {
        let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        outln!("{text}");
    } else {
        for check in &report.checks {
            outln!(
                "{} {:<24} {}",
                if check.ok { "ok  " } else { "FAIL" },
                check.name,
                check.detail
            );
        }
    }
    let failed = report.checks.iter().filter(|c| !c.ok).count();
    if failed > 0 {
        return Err(format!("{failed} of {} checks failed", report.checks.len()));
    }
    if !json {
        outln!("verified: {} checks passed", report.checks.len());
    }
    Ok(())
}
