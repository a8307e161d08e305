//! X.509-SVIDs (the SPIFFE X509-SVID specification) and the trust domain's
//! X.509 bundle, kept current for the streams that watch them.
//!
//! A module's SVID is a fresh P-256 key and a certificate from certd's local
//! CA with the module's SPIFFE ID as its only URI SAN, CA:FALSE,
//! digitalSignature, serverAuth and clientAuth. The key is the module's (the
//! specification hands it over), so it lives here in memory, never on disk;
//! it is replaced with a new key and certificate once the configured share
//! of the lifetime has passed, and every open stream gets the new one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edgeid_certd::api::{Profile, SubjectAltNames};
use edgeid_common::sync::lock;
use time::OffsetDateTime;
use tokio::sync::{watch, Notify};
use zeroize::Zeroizing;

use crate::config::SpiffeConfig;
use crate::error::Error;
use crate::spiffe::id;
use crate::workload::Workload;

/// One X.509-SVID and its key.
pub struct Svid {
    /// The SPIFFE ID it carries.
    pub spiffe_id: String,
    /// DER certificates, leaf first, without the root.
    pub chain: Vec<u8>,
    /// DER PKCS#8 private key.
    pub key: Zeroizing<Vec<u8>>,
    /// When it is replaced.
    pub renew_at: OffsetDateTime,
    /// When its certificate expires.
    pub not_after: OffsetDateTime,
}

/// The trust domain's CA certificates, DER, one after the other.
pub type Bundle = Arc<Vec<u8>>;

/// Foreign trust domains' bundles (DER certificates), by trust domain
/// SPIFFE ID.
pub type Federated = Arc<std::collections::BTreeMap<String, Vec<u8>>>;

/// What is kept per module.
struct Slot {
    svid: watch::Sender<Option<Arc<Svid>>>,
    /// One issuance at a time per module.
    issuing: Arc<tokio::sync::Mutex<()>>,
    /// Renewal failures in a row, and when to try again.
    failures: u32,
    retry_at: Option<OffsetDateTime>,
}

/// Issues, renews and hands out X.509-SVIDs and the bundle.
pub struct X509Authority {
    workload: Arc<Workload>,
    trust_domain: String,
    lifetime: Duration,
    threshold_percent: u8,
    bundle_refresh: Duration,
    slots: Mutex<HashMap<String, Slot>>,
    bundle: watch::Sender<Bundle>,
    /// `[spiffe] federation`: the files, and what they last held.
    federation: std::collections::BTreeMap<String, std::path::PathBuf>,
    federated: watch::Sender<Federated>,
    /// Wakes the renewal task when a new SVID is issued.
    wake: Notify,
}

impl X509Authority {
    /// An authority for `config`'s trust domain, issuing through `workload`.
    pub fn new(workload: Arc<Workload>, config: &SpiffeConfig) -> Self {
        Self {
            workload,
            trust_domain: config.trust_domain.clone(),
            lifetime: Duration::from_secs(config.svid_lifetime_secs),
            threshold_percent: config.renewal_threshold_percent,
            bundle_refresh: Duration::from_secs(config.bundle_refresh_secs),
            slots: Mutex::new(HashMap::new()),
            bundle: watch::channel(Arc::new(Vec::new())).0,
            federation: config.federation.clone(),
            federated: watch::channel(Arc::new(Default::default())).0,
            wake: Notify::new(),
        }
    }

    /// The module's SVID as it changes, with a current one in it.
    pub async fn subscribe(
        &self,
        module: &str,
    ) -> Result<watch::Receiver<Option<Arc<Svid>>>, Error> {
        let (rx, issuing) = {
            let mut slots = lock(&self.slots);
            let slot = slots.entry(module.to_owned()).or_insert_with(|| Slot {
                svid: watch::channel(None).0,
                issuing: Arc::new(tokio::sync::Mutex::new(())),
                failures: 0,
                retry_at: None,
            });
            (slot.svid.subscribe(), slot.issuing.clone())
        };
        let fresh = |rx: &watch::Receiver<Option<Arc<Svid>>>| {
            rx.borrow()
                .as_ref()
                .is_some_and(|s| OffsetDateTime::now_utc() < s.renew_at)
        };
        if !fresh(&rx) {
            let _one = issuing.lock().await;
            // Another request may have issued it while this one waited.
            if !fresh(&rx) {
                if let Err(e) = self.renew(module).await {
                    // Due but not expired: the current SVID still serves
                    // (the renewal task keeps trying); nothing usable: the error.
                    let now = OffsetDateTime::now_utc();
                    if rx.borrow().as_ref().is_none_or(|s| now >= s.not_after) {
                        return Err(e);
                    }
                    tracing::warn!(module, error = %e, "cannot renew an X.509-SVID; serving the current one");
                }
            }
        }
        Ok(rx)
    }

    /// The bundle as it changes, read from certd first if not yet.
    pub async fn bundle(&self) -> Result<watch::Receiver<Bundle>, Error> {
        if self.bundle.borrow().is_empty() {
            self.refresh_bundle().await?;
        }
        Ok(self.bundle.subscribe())
    }

    /// The federated bundles, as they change.
    pub async fn federated(&self) -> watch::Receiver<Federated> {
        if self.federated.borrow().is_empty() && !self.federation.is_empty() {
            self.refresh_federation();
        }
        self.federated.subscribe()
    }

    /// Rereads the federated bundles' files; a file that cannot be read
    /// keeps its last bundle (and is said once per read).
    fn refresh_federation(&self) {
        let mut next = (**self.federated.borrow()).clone();
        for (td, path) in &self.federation {
            match read_bundle_file(path) {
                Ok(der) => {
                    next.insert(id::of_trust_domain(td), der);
                }
                Err(e) => {
                    tracing::warn!(trust_domain = %td, error = %e, "cannot read a federated bundle; keeping the last one")
                }
            }
        }
        self.federated.send_if_modified(|current| {
            if **current == next {
                return false;
            }
            tracing::info!(trust_domains = next.len(), "the federated bundles changed");
            *current = Arc::new(next);
            true
        });
    }

    /// The trust domain's bundle key (`spiffe://<trust domain>`).
    pub fn trust_domain_id(&self) -> String {
        id::of_trust_domain(&self.trust_domain)
    }

    /// Reads certd's trust bundle; publishes it if it changed.
    async fn refresh_bundle(&self) -> Result<(), Error> {
        let pem_text = self.workload.trust_bundle().await?.certificate;
        let blocks = pem::parse_many(&pem_text)
            .map_err(|e| Error::Internal(format!("certd sent an unreadable trust bundle: {e}")))?;
        let der: Vec<u8> = blocks
            .iter()
            .filter(|b| b.tag() == "CERTIFICATE")
            .flat_map(|b| b.contents().iter().copied())
            .collect();
        if der.is_empty() {
            return Err(Error::Unavailable("certd's trust bundle is empty".into()));
        }
        self.bundle.send_if_modified(|current| {
            if **current == der {
                return false;
            }
            tracing::info!(bytes = der.len(), "the X.509 bundle changed");
            *current = Arc::new(der);
            true
        });
        Ok(())
    }

    /// The SPIFFE ID of `module` on this device now.
    pub async fn spiffe_id(&self, module: &str) -> Result<String, Error> {
        let device = self.workload.device().await?;
        id::of_module(&self.trust_domain, &device.device_id, module).map_err(Error::Forbidden)
    }

    /// Issues a new SVID for `module` and publishes it.
    async fn renew(&self, module: &str) -> Result<(), Error> {
        let identity = self.workload.fetch_identity(module).await?;
        let spiffe_id = self.spiffe_id(&identity.module_id).await?;
        let san = SubjectAltNames {
            uri: vec![spiffe_id.clone()],
            ..Default::default()
        };
        let (key, chain_pem) = self
            .workload
            .issue_for_fresh_key(
                &identity.module_id,
                "spiffe",
                Profile::ClientServer,
                &identity.module_id,
                san,
                self.lifetime,
            )
            .await?;
        let blocks = pem::parse_many(&chain_pem)
            .map_err(|e| Error::Internal(format!("certd sent an unreadable chain: {e}")))?;
        let leaf = blocks
            .first()
            .ok_or_else(|| Error::Internal("certd sent an empty chain".into()))?;
        let (not_before, not_after) = {
            let (_, cert) = x509_parser::parse_x509_certificate(leaf.contents()).map_err(|e| {
                Error::Internal(format!("certd sent an unreadable certificate: {e}"))
            })?;
            let v = cert.validity();
            (v.not_before.to_datetime(), v.not_after.to_datetime())
        };
        let renew_at = renewal_time(not_before, not_after, self.threshold_percent, jitter());
        let svid = Svid {
            spiffe_id,
            chain: blocks
                .iter()
                .flat_map(|b| b.contents().iter().copied())
                .collect(),
            key: Zeroizing::new(key.serialize_der()),
            renew_at,
            not_after,
        };
        tracing::info!(module, spiffe_id = %svid.spiffe_id, %not_after, %renew_at, "issued an X.509-SVID");
        if let Some(slot) = lock(&self.slots).get_mut(module) {
            slot.failures = 0;
            slot.retry_at = None;
            slot.svid.send_replace(Some(Arc::new(svid)));
        }
        self.wake.notify_one();
        Ok(())
    }

    /// Renews SVIDs when due and rereads the bundle, until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut next_bundle = OffsetDateTime::now_utc();
        loop {
            let now = OffsetDateTime::now_utc();
            if now >= next_bundle {
                if let Err(e) = self.refresh_bundle().await {
                    tracing::warn!(error = %e, "cannot read the trust bundle; keeping the last one");
                }
                self.refresh_federation();
                next_bundle = now + self.bundle_refresh;
            }
            for module in self.due(now) {
                let issuing = lock(&self.slots).get(&module).map(|s| s.issuing.clone());
                let Some(issuing) = issuing else { continue };
                let _one = issuing.lock().await;
                // A request may have renewed it while this waited for the lock.
                let still_due = lock(&self.slots)
                    .get(&module)
                    .is_some_and(|s| due_at(s.svid.borrow().as_ref(), OffsetDateTime::now_utc()));
                if !still_due {
                    continue;
                }
                if let Err(e) = self.renew(&module).await {
                    self.failed(&module, &e);
                }
            }
            let wake_at = self.next_wake().min(next_bundle);
            let sleep = (wake_at - OffsetDateTime::now_utc())
                .try_into()
                .unwrap_or(Duration::ZERO)
                .max(Duration::from_millis(100));
            tokio::select! {
                () = tokio::time::sleep(sleep) => {}
                () = self.wake.notified() => {}
                () = &mut shutdown => return,
            }
        }
    }

    /// Modules whose SVID is due for renewal and has someone watching;
    /// the SVIDs nobody watches are dropped (issued again when asked for).
    fn due(&self, now: OffsetDateTime) -> Vec<String> {
        let mut slots = lock(&self.slots);
        slots.retain(|_, slot| {
            let due = due_at(slot.svid.borrow().as_ref(), now);
            !(due && slot.svid.receiver_count() == 0)
        });
        slots
            .iter()
            .filter(|(_, slot)| {
                due_at(slot.svid.borrow().as_ref(), now) && slot.retry_at.is_none_or(|t| now >= t)
            })
            .map(|(m, _)| m.clone())
            .collect()
    }

    fn failed(&self, module: &str, e: &Error) {
        let mut slots = lock(&self.slots);
        let Some(slot) = slots.get_mut(module) else {
            return;
        };
        slot.failures = slot.failures.saturating_add(1);
        let backoff = Duration::from_secs(1 << slot.failures.min(6));
        slot.retry_at = Some(OffsetDateTime::now_utc() + backoff);
        tracing::warn!(module, error = %e, retry_in = ?backoff, "cannot renew an X.509-SVID; the current one stays until it expires");
    }

    fn next_wake(&self) -> OffsetDateTime {
        let far = OffsetDateTime::now_utc() + Duration::from_secs(3600);
        lock(&self.slots)
            .values()
            .filter_map(|slot| {
                let renew = slot.svid.borrow().as_ref().map(|s| s.renew_at);
                match (renew, slot.retry_at) {
                    (Some(r), Some(t)) => Some(r.max(t)),
                    (r, t) => r.or(t),
                }
            })
            .fold(far, OffsetDateTime::min)
    }
}

/// Whether `svid` (if any) is due for replacement at `now`.
fn due_at(svid: Option<&Arc<Svid>>, now: OffsetDateTime) -> bool {
    svid.is_none_or(|s| now >= s.renew_at)
}

/// The DER certificates one after another in `bytes`, as the Workload API
/// sends chains and bundles, each checked to be one.
pub fn certificates(mut bytes: &[u8]) -> Result<Vec<&[u8]>, String> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let (rest, _) = x509_parser::parse_x509_certificate(bytes)
            .map_err(|e| format!("a chain or bundle holds something not a certificate: {e}"))?;
        let used = bytes.len() - rest.len();
        out.push(&bytes[..used]);
        bytes = rest;
    }
    Ok(out)
}

/// Those certificates as PEM, as files and Envoy hold them.
pub fn certificates_pem(bytes: &[u8]) -> Result<String, String> {
    Ok(certificates(bytes)?
        .iter()
        .map(|d| pem::encode(&pem::Pem::new("CERTIFICATE", d.to_vec())))
        .collect())
}

/// The DER certificates of a PEM bundle file (at least one).
fn read_bundle_file(path: &std::path::Path) -> Result<Vec<u8>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let blocks = pem::parse_many(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut der = Vec::new();
    for block in blocks.iter().filter(|b| b.tag() == "CERTIFICATE") {
        x509_parser::parse_x509_certificate(block.contents())
            .map_err(|e| format!("{}: not a certificate: {e}", path.display()))?;
        der.extend_from_slice(block.contents());
    }
    if der.is_empty() {
        return Err(format!("{}: no CERTIFICATE in it", path.display()));
    }
    Ok(der)
}

/// Largest departure from the renewal threshold, as a fraction of it: SVIDs
/// issued together (a device's modules, at boot) renew spread over ±10% of
/// the threshold, not in one burst at certd and keyd.
const JITTER: f64 = 0.10;

/// When an SVID valid from `not_before` to `not_after` is renewed: at
/// `threshold_percent` of its lifetime, moved by `jitter` (-1..=1) times
/// [`JITTER`] of that, and never before 1% or after 99% of it.
fn renewal_time(
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    threshold_percent: u8,
    jitter: f64,
) -> OffsetDateTime {
    let span = not_after - not_before;
    let at = f64::from(threshold_percent) / 100.0 * (1.0 + JITTER * jitter.clamp(-1.0, 1.0));
    not_before + span * at.clamp(0.01, 0.99)
}

/// A uniform draw in -1..=1 (0 if the system's generator fails: the
/// threshold itself).
fn jitter() -> f64 {
    let mut bytes = [0u8; 4];
    if aws_lc_rs::rand::fill(&mut bytes).is_err() {
        return 0.0;
    }
    f64::from(u32::from_le_bytes(bytes)) / f64::from(u32::MAX) * 2.0 - 1.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewals_of_svids_issued_together_spread_over_the_threshold_plus_minus_ten_percent() {
        let not_before = OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000);
        let not_after = not_before + time::Duration::hours(1);
        // 50 modules' SVIDs, issued in the same second, threshold 50%.
        let mut times: Vec<OffsetDateTime> = (0..50)
            .map(|_| renewal_time(not_before, not_after, 50, jitter()))
            .collect();
        times.sort();
        let earliest = not_before + time::Duration::seconds(1620); // 45% of an hour
        let latest = not_before + time::Duration::seconds(1980); // 55%
        assert!(times[0] >= earliest && times[49] <= latest, "{times:?}");
        // Spread: they fill most of the 6-minute window, and no second has more than 5 (3 would fail one run in 200).
        assert!(
            times[49] - times[0] > time::Duration::seconds(240),
            "{times:?}"
        );
        let mut per_second = std::collections::HashMap::new();
        for t in &times {
            *per_second.entry(t.unix_timestamp()).or_insert(0) += 1;
        }
        assert!(per_second.values().all(|n| *n <= 5), "{per_second:?}");
        // The bounds hold at the extremes, and never leave the lifetime.
        assert_eq!(renewal_time(not_before, not_after, 50, -1.0), earliest);
        assert_eq!(renewal_time(not_before, not_after, 50, 1.0), latest);
        assert!(renewal_time(not_before, not_after, 99, 1.0) < not_after);
        assert!(renewal_time(not_before, not_after, 1, -1.0) > not_before);
    }
}
