//! JWT-SVIDs (the SPIFFE JWT-SVID specification): ES256 tokens signed by a
//! P-256 key in keyd, their JWK set, and their validation.
//!
//! Signing keys rotate with overlap. Each key's id in keyd is
//! `spiffe-jwt/<activation time>`: it is made and published in the JWK set
//! one overlap period before it starts signing (so validators holding a
//! cached set already know it), signs for a rotation period, and is retired
//! (dropped from the set, deleted from keyd) once every token it signed has
//! expired. The schedule is read back from keyd's key list on start, so a
//! restart keeps it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use edgeid_common::sync::{lock, read, write};
use edgeid_keyd::api::{KeyHandle, KeyPairSpec, SignAlgorithm};
use edgeid_keyd::KeydClient;
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey;
use serde_json::{json, Map, Value};
use tokio::sync::watch;

use crate::error::Error;
use crate::spiffe::id;

/// keyd ids of JWT signing keys start with this.
const KEY_PREFIX: &str = "spiffe-jwt/";
/// Longest token `validate` looks at.
const MAX_TOKEN: usize = 16 * 1024;
/// Most audiences a token is asked for with.
const MAX_AUDIENCES: usize = 16;
/// Longest audience.
const MAX_AUDIENCE: usize = 512;
/// Extra time a retired key stays published past its last token's expiry,
/// for validators whose clocks lag (bounded by the token lifetime).
const RETIRE_MARGIN_SECS: i64 = 30;
/// Most tokens kept for reuse.
const MAX_CACHED: usize = 4096;
/// How long a JWT-SVID request made before the first signing key exists
/// waits for it.
const FIRST_KEY_WAIT: Duration = Duration::from_secs(10);

/// One signing key.
struct SigningKey {
    /// Its keyd id, also its JWK `kid`.
    id: String,
    /// When it starts signing (Unix seconds).
    activates: i64,
    handle: KeyHandle,
    verifying: VerifyingKey,
}

/// A token kept for reuse until half its lifetime has passed.
struct Cached {
    token: String,
    kid: String,
    expires: i64,
}

/// Issues and validates the trust domain's JWT-SVIDs.
pub struct JwtAuthority {
    keyd: KeydClient,
    trust_domain: String,
    lifetime: i64,
    rotation: i64,
    /// By activation time.
    keys: RwLock<Vec<Arc<SigningKey>>>,
    jwks: watch::Sender<Arc<Vec<u8>>>,
    cache: Mutex<HashMap<(String, Vec<String>), Cached>>,
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn secs(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX / 4).min(i64::MAX / 4)
}

impl JwtAuthority {
    /// An authority for `trust_domain` whose tokens live `lifetime` and whose
    /// keys sign for `rotation` each. No key is loaded until [`Self::rotate`].
    pub fn new(keyd: KeydClient, trust_domain: &str, lifetime: u64, rotation: u64) -> Self {
        Self {
            keyd,
            trust_domain: trust_domain.to_owned(),
            lifetime: secs(lifetime),
            rotation: secs(rotation),
            keys: RwLock::new(Vec::new()),
            jwks: watch::channel(Arc::new(Vec::new())).0,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// How long before activation a key is published, and so how long the
    /// old and new keys overlap in the set: a token's lifetime, at most half
    /// a rotation.
    fn prepublish(&self) -> i64 {
        self.lifetime.min(self.rotation / 2).max(1)
    }

    /// How often [`Self::rotate`] should run.
    pub fn tick(&self) -> Duration {
        let every = (self.prepublish() / 2).clamp(1, 60);
        Duration::from_secs(u64::try_from(every).unwrap_or(60))
    }

    /// The JWK set, as it changes.
    pub fn jwks(&self) -> watch::Receiver<Arc<Vec<u8>>> {
        self.jwks.subscribe()
    }

    /// Brings the key set up to date: loads it from keyd the first time,
    /// makes the next key when due, retires keys whose tokens have all
    /// expired, and publishes the set if it changed.
    pub async fn rotate(&self) -> Result<(), Error> {
        let mut keys: Vec<Arc<SigningKey>> = read(&self.keys).clone();
        let mut changed = false;
        if keys.is_empty() {
            keys = self.load().await?;
            changed = !keys.is_empty();
        }
        let now = now();
        let prepublish = self.prepublish();
        let next = match signer_index(&keys, now) {
            None => Some(now),
            Some(i) => {
                let signer = &keys[i];
                let pending = keys.iter().any(|k| k.activates > now);
                let due = now >= signer.activates + self.rotation - prepublish;
                (!pending && due).then(|| (signer.activates + self.rotation).max(now + prepublish))
            }
        };
        if let Some(activates) = next {
            keys.push(Arc::new(self.make(activates).await?));
            changed = true;
        }
        // A key is done once a later key has been signing for a token's
        // lifetime (plus a margin): nothing it signed is still valid.
        let margin = RETIRE_MARGIN_SECS.min(self.lifetime);
        let done = |i: usize| {
            keys[i + 1..]
                .iter()
                .any(|later| later.activates + self.lifetime + margin <= now)
        };
        let retired: Vec<usize> = (0..keys.len()).filter(|&i| done(i)).collect();
        for &i in retired.iter().rev() {
            let key = keys.remove(i);
            changed = true;
            if let Err(e) = self.keyd.delete_key_pair(&key.id).await {
                // Harmless: it is out of the set; it is deleted next start.
                tracing::warn!(key = %key.id, error = %e, "cannot delete a retired JWT signing key");
            } else {
                tracing::info!(key = %key.id, "retired a JWT signing key");
            }
        }
        if changed {
            let set = jwk_set(&keys);
            *write(&self.keys) = keys;
            self.jwks.send_replace(Arc::new(set));
        }
        Ok(())
    }

    /// The signing keys in keyd, by activation time.
    async fn load(&self) -> Result<Vec<Arc<SigningKey>>, Error> {
        let listed = self
            .keyd
            .list_keys()
            .await
            .map_err(|e| Error::from_daemon("keyd", "listing the JWT signing keys", e))?;
        let mut keys = Vec::new();
        for info in listed {
            let Some(activates) = info
                .id
                .strip_prefix(KEY_PREFIX)
                .and_then(|t| t.parse::<i64>().ok())
            else {
                continue;
            };
            match self.open(&info.id, activates).await {
                Ok(k) => keys.push(Arc::new(k)),
                Err(e) => {
                    tracing::warn!(key = %info.id, error = %e, "ignoring an unusable JWT signing key")
                }
            }
        }
        keys.sort_by_key(|k| k.activates);
        Ok(keys)
    }

    async fn make(&self, activates: i64) -> Result<SigningKey, Error> {
        let id = format!("{KEY_PREFIX}{activates}");
        self.keyd
            .create_key_pair(&id, KeyPairSpec::EcP256)
            .await
            .map_err(|e| Error::from_daemon("keyd", &format!("key '{id}'"), e))?;
        tracing::info!(key = %id, activates, "made a JWT signing key");
        self.open(&id, activates).await
    }

    async fn open(&self, id: &str, activates: i64) -> Result<SigningKey, Error> {
        let handle = self
            .keyd
            .key_pair(id)
            .await
            .map_err(|e| Error::from_daemon("keyd", &format!("key '{id}'"), e))?;
        let public = self
            .keyd
            .public_key(&handle)
            .await
            .map_err(|e| Error::from_daemon("keyd", &format!("key '{id}'"), e))?;
        if public.spec != KeyPairSpec::EcP256 {
            return Err(Error::Internal(format!(
                "key '{id}' is {}, not ec-p256",
                public.spec
            )));
        }
        let verifying = VerifyingKey::from_public_key_pem(&public.pem)
            .map_err(|e| Error::Internal(format!("key '{id}': unreadable public key: {e}")))?;
        Ok(SigningKey {
            id: id.to_owned(),
            activates,
            handle,
            verifying,
        })
    }

    /// The key that signs now, if there is one.
    fn signer(&self) -> Option<Arc<SigningKey>> {
        let keys = read(&self.keys);
        signer_index(&keys, now()).map(|i| keys[i].clone())
    }

    /// A JWT-SVID for `spiffe_id` with audience `audience` (checked here),
    /// reused while more than half its lifetime is left and its key still signs.
    pub async fn svid(&self, spiffe_id: &str, audience: &[String]) -> Result<String, Error> {
        let audience = check_audience(audience)?;
        let signer = match self.signer() {
            Some(signer) => signer,
            None => {
                // Just started: the first key is being made. A caller waits
                // for it (a while) rather than being told to come back.
                let mut set = self.jwks.subscribe();
                let _ = tokio::time::timeout(FIRST_KEY_WAIT, set.wait_for(|s| !s.is_empty())).await;
                self.signer()
                    .ok_or_else(|| Error::Unavailable("no JWT signing key yet".into()))?
            }
        };
        let key = (spiffe_id.to_owned(), audience);
        if let Some(c) = lock(&self.cache).get(&key) {
            if c.kid == signer.id && c.expires - now() > self.lifetime / 2 {
                return Ok(c.token.clone());
            }
        }
        let iat = now();
        let expires = iat + self.lifetime;
        let header = json!({"alg": "ES256", "kid": signer.id, "typ": "JWT"});
        let aud: &[String] = &key.1;
        let claims = json!({"sub": spiffe_id, "aud": aud, "exp": expires, "iat": iat});
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let der = self
            .keyd
            .sign(
                &signer.handle,
                SignAlgorithm::EcdsaSha256,
                input.as_bytes(),
                false,
            )
            .await
            .map_err(|e| Error::from_daemon("keyd", "signing the JWT-SVID", e))?;
        let signature = Signature::from_der(&der).map_err(|e| {
            Error::Internal(format!("keyd sent an unreadable ECDSA signature: {e}"))
        })?;
        // Low-S, whatever the key store returned (validation takes no other).
        let raw = signature.normalize_s().unwrap_or(signature).to_bytes();
        let token = format!("{input}.{}", URL_SAFE_NO_PAD.encode(raw));
        let mut cache = lock(&self.cache);
        if cache.len() >= MAX_CACHED {
            let now = now();
            cache.retain(|_, c| c.expires > now);
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
        }
        cache.insert(
            key,
            Cached {
                token: token.clone(),
                kid: signer.id.clone(),
                expires,
            },
        );
        Ok(token)
    }

    /// Validates a JWT-SVID for `audience` by the JWT-SVID specification:
    /// ES256 by a key of this trust domain's set, `sub` a SPIFFE ID of this
    /// trust domain, `aud` holding `audience`, `exp` in the future. Returns
    /// the SPIFFE ID and the claims; any failure is a 400 saying why.
    pub fn validate(
        &self,
        token: &str,
        audience: &str,
    ) -> Result<(String, Map<String, Value>), Error> {
        let bad = |why: &str| Error::BadRequest(format!("the JWT-SVID is not valid: {why}"));
        if audience.is_empty() {
            return Err(Error::BadRequest("audience is required".into()));
        }
        if token.is_empty() {
            return Err(Error::BadRequest("svid is required".into()));
        }
        if token.len() > MAX_TOKEN {
            return Err(bad("it is longer than 16 KiB"));
        }
        let mut parts = token.split('.');
        let (Some(h), Some(c), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad(
                "it is not a JWS in compact serialization (three '.'-separated parts)",
            ));
        };
        let json_part = |part: &str, what: &str| -> Result<Map<String, Value>, Error> {
            let bytes = URL_SAFE_NO_PAD
                .decode(part)
                .map_err(|_| bad(&format!("its {what} is not base64url")))?;
            match serde_json::from_slice(&bytes) {
                Ok(Value::Object(m)) => Ok(m),
                _ => Err(bad(&format!("its {what} is not a JSON object"))),
            }
        };
        let header = json_part(h, "header")?;
        match header.get("alg").and_then(Value::as_str) {
            Some("ES256") => {}
            Some(other) => {
                return Err(bad(&format!(
                    "alg '{}' is not accepted; this trust domain signs with ES256",
                    other.escape_default()
                )))
            }
            None => return Err(bad("its header has no alg")),
        }
        if let Some(typ) = header.get("typ") {
            if !matches!(typ.as_str(), Some("JWT" | "JOSE")) {
                return Err(bad("typ must be JWT or JOSE"));
            }
        }
        let kid = header
            .get("kid")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("its header has no kid"))?;
        let key = read(&self.keys)
            .iter()
            .find(|k| k.id == kid)
            .cloned()
            .ok_or_else(|| bad("its kid is not a key of this trust domain's JWT bundle"))?;
        let signature = URL_SAFE_NO_PAD
            .decode(s)
            .ok()
            .and_then(|raw| Signature::from_slice(&raw).ok())
            .ok_or_else(|| bad("its signature is not an ES256 signature"))?;
        // Of the two signatures (s and n - s) of one token, only the low-S
        // one is ever issued: its twin is refused, not a second valid token.
        if signature.normalize_s().is_some() {
            return Err(bad("its signature is not in low-S form"));
        }
        let input = &token[..h.len() + 1 + c.len()];
        key.verifying
            .verify(input.as_bytes(), &signature)
            .map_err(|_| bad("the signature does not verify"))?;
        let claims = json_part(c, "payload")?;
        let sub = claims
            .get("sub")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("it has no sub"))?;
        let (td, path) = id::parse(sub).map_err(|e| bad(&format!("sub: {e}")))?;
        if td != self.trust_domain || path.is_empty() {
            return Err(bad("sub is not a workload of this trust domain"));
        }
        let audiences: Vec<&str> = match claims.get("aud") {
            Some(Value::String(a)) => vec![a.as_str()],
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
            _ => return Err(bad("it has no aud")),
        };
        if !audiences.contains(&audience) {
            return Err(bad("its aud does not include the audience"));
        }
        let exp = claims
            .get("exp")
            .and_then(Value::as_f64)
            .ok_or_else(|| bad("it has no exp"))?;
        if exp <= now() as f64 {
            return Err(bad("it has expired"));
        }
        if let Some(nbf) = claims.get("nbf").and_then(Value::as_f64) {
            if nbf > now() as f64 {
                return Err(bad("it is not valid yet (nbf)"));
            }
        }
        Ok((sub.to_owned(), claims))
    }
}

/// The key that signs at `now`: the last one active, else (none active
/// yet: the very first key) the first.
fn signer_index(keys: &[Arc<SigningKey>], now: i64) -> Option<usize> {
    keys.iter()
        .rposition(|k| k.activates <= now)
        .or(if keys.is_empty() { None } else { Some(0) })
}

/// The audiences, checked, sorted and without repeats.
fn check_audience(audience: &[String]) -> Result<Vec<String>, Error> {
    if audience.is_empty() {
        return Err(Error::BadRequest("audience is required".into()));
    }
    if audience.len() > MAX_AUDIENCES {
        return Err(Error::BadRequest(format!(
            "at most {MAX_AUDIENCES} audiences are allowed"
        )));
    }
    for a in audience {
        if a.is_empty() || a.len() > MAX_AUDIENCE || a.chars().any(char::is_control) {
            return Err(Error::BadRequest(format!(
                "audience '{}' must be 1 to {MAX_AUDIENCE} bytes without control characters",
                a.chars().take(64).collect::<String>().escape_default()
            )));
        }
    }
    let mut sorted = audience.to_vec();
    sorted.sort();
    sorted.dedup();
    Ok(sorted)
}

/// The JWK set (RFC 7517) of `keys`, as the SPIFFE bundle format has it:
/// EC P-256 keys with their `kid`, `use` `jwt-svid`.
fn jwk_set(keys: &[Arc<SigningKey>]) -> Vec<u8> {
    let jwks: Vec<Value> = keys
        .iter()
        .map(|k| {
            let point = k.verifying.to_encoded_point(false);
            let coordinate = |c: Option<&p256::FieldBytes>| {
                URL_SAFE_NO_PAD.encode(c.map(|b| &b[..]).unwrap_or_default())
            };
            json!({
                "kty": "EC",
                "crv": "P-256",
                "x": coordinate(point.x()),
                "y": coordinate(point.y()),
                "kid": k.id,
                "use": "jwt-svid",
                "alg": "ES256",
            })
        })
        .collect();
    json!({ "keys": jwks }).to_string().into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audiences_are_checked_and_normalised() {
        let a = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            check_audience(&a(&["b", "a", "b"])).unwrap(),
            a(&["a", "b"])
        );
        assert!(check_audience(&[]).is_err());
        assert!(check_audience(&a(&[""])).is_err());
        assert!(check_audience(&a(&["x\ny"])).is_err());
        assert!(check_audience(&vec!["a".to_string(); 17]).is_err());
        assert!(check_audience(&a(&[&"a".repeat(513)])).is_err());
    }
}
