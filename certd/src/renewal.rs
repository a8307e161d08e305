//! Background renewal: each issued certificate is renewed once its policy's
//! share of its lifetime has passed; failures retry with doubling backoff.
//! A restart loses nothing: the schedule is recomputed from the stored
//! certificates, and a renewal cut short left the old certificate in place.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;

use crate::certs::Certd;
use crate::chain::Chain;
use crate::store::{CertRecord, Origin};

/// Longest sleep between looks at the store (certificates imported or
/// changed behind certd's back are picked up within this).
const MAX_SLEEP: Duration = Duration::from_secs(3600);

/// When `record` is due for renewal; `None` if certd does not renew it.
pub fn due(record: &CertRecord) -> Option<OffsetDateTime> {
    let (Origin::Issued(_), Some(policy)) = (record.origin, record.renewal) else {
        return None;
    };
    let chain = Chain::from_pem(&record.pem).ok()?;
    let (from, to) = chain.leaf().validity();
    let span = to - from;
    Some(from + span * (f64::from(policy.threshold_percent) / 100.0))
}

/// Runs until `shutdown` resolves.
pub async fn run(certd: Arc<Certd>, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    let retry_min = Duration::from_secs(certd.config().renewal.retry_min_secs);
    let retry_max = Duration::from_secs(certd.config().renewal.retry_max_secs);
    // Per id: failed attempts so far, and when to try again.
    let mut backoff: HashMap<String, (u32, OffsetDateTime)> = HashMap::new();
    // Keys a rekey replaced but could not delete before a restart.
    if let Ok(records) = certd.store().list() {
        for mut record in records.into_iter().filter(|r| r.retired_key_id.is_some()) {
            certd.retire_key(&mut record).await;
        }
    }
    loop {
        let now = OffsetDateTime::now_utc();
        let mut wake = now + MAX_SLEEP;
        let records = match certd.store().list() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot list certificates for renewal");
                Vec::new()
            }
        };
        backoff.retain(|id, _| records.iter().any(|r| &r.id == id));
        for record in &records {
            let Some(mut at) = due(record) else {
                continue;
            };
            if let Some((_, retry)) = backoff.get(&record.id) {
                at = at.max(*retry);
            }
            if at > now {
                wake = wake.min(at);
                continue;
            }
            match certd.renew(&record.id).await {
                Ok(()) => {
                    backoff.remove(&record.id);
                }
                Err(e) => {
                    let attempts = backoff.get(&record.id).map_or(0, |(n, _)| *n) + 1;
                    let delay = retry_min
                        .saturating_mul(1u32 << attempts.min(16).saturating_sub(1))
                        .min(retry_max);
                    let retry = OffsetDateTime::now_utc() + delay;
                    tracing::warn!(cert = %record.id, error = %e, attempts, retry_in_secs = delay.as_secs(), "renewal failed; the current certificate stays in place");
                    backoff.insert(record.id.clone(), (attempts, retry));
                    wake = wake.min(retry);
                }
            }
            // Renewed or not, look at the store again right away.
            wake = wake.min(OffsetDateTime::now_utc());
        }
        let sleep = (wake - OffsetDateTime::now_utc())
            .try_into()
            .unwrap_or(Duration::ZERO)
            .min(MAX_SLEEP);
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = certd.changed.notified() => {}
            _ = &mut shutdown => return,
        }
    }
}
