//! The reference's `identity_auto_renew` (identityd's
//! `[provisioning.attestation]`, the super-config's `identity_cert.auto_renew`):
//! when and how the device's identity certificate is renewed. edgeid's certd
//! renews every certificate it issues, so the policy becomes the certificate's
//! `[issuance."<id>"] renewal` in certd's config.
//!
//! The reference's values, read as its `cert_renewal` reads them: all three
//! keys given, `threshold` and `retry` an integer and a unit, `%` (1-99, a
//! share of the certificate's lifetime), `min` or `day` (before expiry, and
//! between retries).

use toml::{Table, Value};

use super::files::Layered;
use super::read::Reader;

/// A threshold or retry as certd's renewal policy holds it.
enum Period {
    Percent(u8),
    Secs(u64),
}

fn period(r: &Reader, at: &[&str]) -> Result<Period, String> {
    let text = r.need_str(at)?;
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let value: u64 = digits.parse().map_err(|_| {
        r.bad(
            at,
            &format!(
                "is '{text}', not a number and a unit (%, min or day), as \"80%\" or \"1day\""
            ),
        )
    })?;
    if value == 0 {
        return Err(r.bad(at, "must be positive"));
    }
    match unit {
        "%" => u8::try_from(value)
            .ok()
            .filter(|p| *p < 100)
            .map(Period::Percent)
            .ok_or_else(|| r.bad(at, "must be less than 100% (a share of the lifetime)")),
        "min" | "day" => {
            let unit_secs = if unit == "min" { 60 } else { 86_400 };
            value
                .checked_mul(unit_secs)
                .filter(|secs| *secs <= 100 * 365 * 86_400)
                .map(Period::Secs)
                .ok_or_else(|| r.bad(at, "is longer than 100 years"))
        }
        "" => Err(r.bad(at, &format!("is '{text}', with no unit: %, min or day"))),
        other => Err(r.bad(at, &format!("has unit '{other}', not one of %, min, day"))),
    }
}

/// The renewal policy for certd of the `auto_renew` table at `at`.
pub(super) fn policy(r: &Reader, at: &[&str]) -> Result<Table, String> {
    let key = |k: &'static str| [at, &[k]].concat();
    let rekey = r
        .bool(&key("rotate_key"))?
        .ok_or_else(|| r.bad(&key("rotate_key"), "is required"))?;
    let mut out = Table::from_iter([("rekey".to_owned(), Value::Boolean(rekey))]);
    let int = |n: u64| Value::Integer(i64::try_from(n).unwrap_or(i64::MAX));
    match period(r, &key("threshold"))? {
        Period::Percent(p) => out.insert("threshold_percent".into(), int(p.into())),
        Period::Secs(s) => {
            out.insert("threshold_percent".into(), int(80));
            out.insert("before_expiry_secs".into(), int(s))
        }
    };
    match period(r, &key("retry"))? {
        Period::Percent(p) => out.insert("retry_percent".into(), int(p.into())),
        Period::Secs(s) => out.insert("retry_secs".into(), int(s)),
    };
    Ok(out)
}

/// identityd's `identity_auto_renew`, if set: the identity certificate's id
/// and certd's renewal policy for it.
pub fn of_identityd(l: &Layered) -> Result<Option<(String, Table)>, String> {
    let r = Reader(l);
    let at = ["provisioning", "attestation", "identity_auto_renew"];
    if super::files::value_at(&l.merged, &at).is_none() {
        return Ok(None);
    }
    let cert_id = r.need_str(&["provisioning", "attestation", "identity_cert"])?;
    Ok(Some((cert_id, policy(&r, &at)?)))
}

/// Sets certd's policy for identityd's identity certificate (`identityd`:
/// identityd's configs). It must be one certd issues.
pub fn into_certd(identityd: &Layered, certd: &mut Table) -> Result<(), String> {
    let Some((cert_id, policy)) = of_identityd(identityd)? else {
        return Ok(());
    };
    let at = ["provisioning", "attestation", "identity_auto_renew"];
    match certd
        .get_mut("issuance")
        .and_then(|i| i.get_mut(&cert_id))
        .and_then(Value::as_table_mut)
    {
        Some(issuance) => {
            issuance.insert("renewal".into(), Value::Table(policy));
            Ok(())
        }
        None => Err(Reader(identityd).bad(
            &at,
            &format!(
                "renews certificate '{cert_id}', which certd does not issue: \
                 its config has no [cert_issuance.{cert_id}]"
            ),
        )),
    }
}
