//! The event logs the kernel shows, which explain a quote's PCR values:
//! read as they are (a verifier parses them), in bounded pieces.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Most of the IMA log one answer carries; the caller asks again from the
/// offset where this one stopped.
const IMA_CHUNK: u64 = 1 << 20;
/// Most of the firmware (BIOS/UEFI) event log one answer carries: real logs
/// are tens of KiB.
const FIRMWARE_LOG_MAX: u64 = 4 << 20;

/// Where the kernel shows the event logs (`[tpm.event_logs]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventLogs {
    /// The firmware's TCG event log (crypto-agile format).
    #[serde(default = "default_firmware_log")]
    pub firmware: PathBuf,
    /// IMA's measurement list (binary, ima-ng template).
    #[serde(default = "default_ima_log")]
    pub ima: PathBuf,
}

impl Default for EventLogs {
    fn default() -> Self {
        Self {
            firmware: default_firmware_log(),
            ima: default_ima_log(),
        }
    }
}

fn default_firmware_log() -> PathBuf {
    PathBuf::from("/sys/kernel/security/tpm0/binary_bios_measurements")
}

fn default_ima_log() -> PathBuf {
    PathBuf::from("/sys/kernel/security/ima/binary_runtime_measurements")
}

/// An event log read for a quote.
#[derive(Debug, Clone)]
pub enum EventLog {
    /// The bytes from `offset`, and whether they reach the end of the log.
    Read {
        /// Where these bytes start in the log.
        offset: u64,
        /// The bytes.
        data: Vec<u8>,
        /// No more bytes follow (else ask again from `offset + data.len()`).
        complete: bool,
    },
    /// The log is not there, or keyd may not read it.
    Unavailable(String),
}

/// Reads up to `max` bytes of the log at `path` from `offset`.
pub fn read_event_log(path: &Path, offset: u64, max: u64) -> EventLog {
    let open = || -> std::io::Result<(Vec<u8>, bool)> {
        let mut file = File::open(path)?;
        if offset > 0 {
            file.seek(SeekFrom::Start(offset))?;
        }
        let mut data = Vec::new();
        // One byte more than allowed tells whether the log goes on.
        file.take(max + 1).read_to_end(&mut data)?;
        let complete = data.len() as u64 <= max;
        data.truncate(usize::try_from(max).unwrap_or(usize::MAX));
        Ok((data, complete))
    };
    match open() {
        Ok((data, complete)) => EventLog::Read {
            offset,
            data,
            complete,
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            EventLog::Unavailable(format!("{} does not exist on this device", path.display()))
        }
        Err(e) => EventLog::Unavailable(format!("cannot read {}: {e}", path.display())),
    }
}

/// The firmware log (whole, up to its limit) and the IMA log from `ima_offset`.
pub fn event_logs(paths: &EventLogs, ima_offset: u64) -> (EventLog, EventLog) {
    (
        read_event_log(&paths.firmware, 0, FIRMWARE_LOG_MAX),
        read_event_log(&paths.ima, ima_offset, IMA_CHUNK),
    )
}
