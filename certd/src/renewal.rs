//! Background renewal: each issued certificate is renewed once its policy's
//! share of its lifetime has passed; failures retry with doubling backoff.
//! A restart loses nothing: the schedule is recomputed from the stored
//! certificates, and a renewal cut short left the old certificate in place.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;

use crate::api::RenewalPolicy;
use crate::certs::Certd;
use crate::chain::Chain;
use crate::store::CertRecord;

/// Longest sleep between looks at the store (certificates imported or
/// changed behind certd's back are picked up within this).
const MAX_SLEEP: Duration = Duration::from_secs(3600);

/// When `record` is due for renewal by `policy`.
pub fn due(record: &CertRecord, policy: &RenewalPolicy) -> Option<OffsetDateTime> {
    let chain = Chain::from_pem(&record.pem).ok()?;
    let (from, to) = chain.leaf().validity();
    if let Some(secs) = policy.before_expiry_secs {
        // Longer than the certificate has: due from its start.
        let before = time::Duration::seconds(i64::try_from(secs).unwrap_or(i64::MAX));
        return Some(to.checked_sub(before).unwrap_or(from).max(from));
    }
    let span = to - from;
    Some(from + span * (f64::from(policy.threshold_percent) / 100.0))
}

/// How long to wait after the `attempts`th failed renewal of `record`: the
/// policy's own period, else doubling from `min` up to `max`.
fn retry_after(
    record: &CertRecord,
    policy: &RenewalPolicy,
    attempts: u32,
    (min, max): (Duration, Duration),
) -> Duration {
    let own = match (policy.retry_secs, policy.retry_percent) {
        (Some(secs), _) => Some(Duration::from_secs(secs)),
        (None, Some(percent)) => Chain::from_pem(&record.pem).ok().map(|chain| {
            let (from, to) = chain.leaf().validity();
            let span: Duration = (to - from).try_into().unwrap_or(Duration::ZERO);
            span.mul_f64(f64::from(percent) / 100.0)
        }),
        (None, None) => None,
    };
    match own {
        Some(period) => period.max(Duration::from_secs(1)),
        None => min
            .saturating_mul(1u32 << attempts.min(16).saturating_sub(1))
            .min(max),
    }
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
            let Some(policy) = certd.policy_of(record) else {
                continue;
            };
            let Some(mut at) = due(record, &policy) else {
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
                    let delay = retry_after(record, &policy, attempts, (retry_min, retry_max));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::IssuerKind;
    use crate::store::Origin;

    /// A record of a self-signed certificate valid for the next `secs`.
    fn record_valid_for(secs: i64) -> CertRecord {
        let mut params = rcgen::CertificateParams::new(vec!["x".to_owned()]).unwrap();
        let now = OffsetDateTime::now_utc();
        params.not_before = now;
        params.not_after = now + time::Duration::seconds(secs);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        CertRecord::new("x", Origin::Issued(IssuerKind::LocalCa), cert.pem())
    }

    #[test]
    fn due_is_a_share_of_the_lifetime_or_a_time_before_expiry() {
        let record = record_valid_for(1000);
        let (from, to) = Chain::from_pem(&record.pem).unwrap().leaf().validity();
        let mut policy = RenewalPolicy {
            threshold_percent: 75,
            ..RenewalPolicy::default()
        };
        assert_eq!(due(&record, &policy), Some(from + (to - from) * 0.75));
        policy.before_expiry_secs = Some(100);
        assert_eq!(
            due(&record, &policy),
            Some(to - time::Duration::seconds(100))
        );
        // More than the certificate's lifetime: due from its start, no overflow.
        policy.before_expiry_secs = Some(u64::MAX);
        assert_eq!(due(&record, &policy), Some(from));
    }

    #[test]
    fn a_failed_renewal_is_retried_after_the_policys_period_else_by_doubling_backoff() {
        let record = record_valid_for(1000);
        let bounds = (Duration::from_secs(5), Duration::from_secs(30));
        let mut policy = RenewalPolicy::default();
        let backoff: Vec<u64> = (1..=4)
            .map(|n| retry_after(&record, &policy, n, bounds).as_secs())
            .collect();
        assert_eq!(backoff, [5, 10, 20, 30]);
        policy.retry_percent = Some(4);
        assert_eq!(retry_after(&record, &policy, 3, bounds).as_secs(), 40);
        policy.retry_percent = None;
        policy.retry_secs = Some(90);
        assert_eq!(retry_after(&record, &policy, 3, bounds).as_secs(), 90);
    }
}
