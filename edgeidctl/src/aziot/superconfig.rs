//! `/etc/aziot/config.toml` turned into each daemon's part, as
//! `aziotctl config apply` turns it into `config.d/00-super.toml` (its
//! `aziotctl-common/src/config/apply.rs`, for the parts edgeid reads; the
//! schema refuses the rest). An inline device key goes where aziotctl puts
//! it: `/var/secrets/aziot/keyd/device-id`, raw bytes, 0600, keyd's user's.

use std::path::{Path, PathBuf};

use toml::{Table, Value};
use zeroize::Zeroizing;

use super::files::{value_at, Layer};
use super::schema;

/// The key id aziotctl gives the device's key.
const DEVICE_KEY: &str = "device-id";
/// Where aziotctl writes an inline device key.
pub const DEVICE_KEY_FILE: &str = "var/secrets/aziot/keyd/device-id";

/// Each daemon's part of the super-config, and the device key to write.
pub struct Parts {
    /// keyd, certd, identityd, tpmd.
    pub parts: [(&'static str, Table); 4],
    /// An inline key's bytes, for [`DEVICE_KEY_FILE`].
    pub device_key: Option<Zeroizing<Vec<u8>>>,
    /// The file they came from.
    pub path: PathBuf,
}

impl Parts {
    /// `daemon`'s part as a layer standing for its `00-super.toml`.
    pub fn layer(&self, daemon: &str) -> Result<Option<Layer>, String> {
        let Some((_, table)) = self.parts.iter().find(|(d, _)| *d == daemon) else {
            return Ok(None);
        };
        let shown = PathBuf::from(format!("{} (its {daemon} part)", self.path.display()));
        Layer::synthetic(&shown, table).map(Some)
    }
}

/// Reads `<root>/etc/aziot/config.toml`, if there is one.
pub fn read(root: &Path) -> Result<Option<Parts>, String> {
    let path = root.join("etc/aziot/config.toml");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let layer = Layer::parse(&path, text)?;
    layer.check(&schema::SUPER)?;
    let c = layer.table()?;
    let here = |keys: &[&str], what: &str| {
        let keys: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
        format!("{}: key '{}' {what}", layer.at(&keys), keys.join("."))
    };
    let get = |keys: &[&str]| value_at(&c, keys).cloned();
    let string = |keys: &[&str]| -> Result<Option<String>, String> {
        match get(keys) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(here(keys, "must be a string")),
        }
    };
    let need = |keys: &[&str]| -> Result<String, String> {
        string(keys)?.ok_or_else(|| here(keys, "is missing"))
    };
    let s = |k: &str, v: &str| (k.to_owned(), Value::String(v.to_owned()));
    // A `{ value = base64 }` or `{ uri = ... }` key: where keyd finds it,
    // and the bytes to write there for a value.
    type Key = (String, Option<Zeroizing<Vec<u8>>>);
    let key_location = |keys: &[&str]| -> Result<Key, String> {
        let mut value = keys.to_vec();
        value.push("value");
        if let Some(b64) = string(&value)? {
            let bytes = edgeid_identityd::connection_string::decode_key(&b64)
                .map_err(|e| here(&value, &e))?;
            return Ok((format!("file:///{DEVICE_KEY_FILE}"), Some(bytes)));
        }
        let mut uri = keys.to_vec();
        uri.push("uri");
        let uri = string(&uri)?.ok_or_else(|| here(keys, "needs value or uri"))?;
        Ok((uri, None))
    };
    let mut device_key = None;
    let mut certd_certs = Table::new();
    // An X.509 identity in files (`identity_cert`, `identity_pk` URIs):
    // preloaded as `device-id`, as aziotctl preloads them; a key on a
    // PKCS#11 token keeps its label as its id (keyd finds token keys by
    // label). One certd is to issue (a table) is only read as `iotedge
    // config apply` writes it. Returns the key's id.
    let mut x509_identity = |base: &[&str], keyd_keys: &mut Table| -> Result<String, String> {
        let at = |k: &'static str| [base, &[k]].concat();
        if matches!(get(&at("identity_cert")), Some(Value::Table(_))) {
            return Err(here(
                &at("identity_cert"),
                "is a certificate to issue: edgeid reads that as `iotedge config apply` or \
                 `aziotctl config apply` writes it out (run one), or give the certificate's file",
            ));
        }
        certd_certs.insert(
            DEVICE_KEY.into(),
            Value::String(need(&at("identity_cert"))?),
        );
        let pk = need(&at("identity_pk"))?;
        let key_id = match pk.strip_prefix("pkcs11:") {
            Some(_) => super::pkcs11::parse(&pk)
                .map_err(|why| here(&at("identity_pk"), &why))?
                .object
                .ok_or_else(|| here(&at("identity_pk"), "names no object (object=<label>)"))?,
            None => DEVICE_KEY.to_owned(),
        };
        keyd_keys.insert(key_id.clone(), Value::String(pk));
        Ok(key_id)
    };

    let mut identityd = Table::from_iter([s("homedir", "/var/lib/aziot/identityd")]);
    let hostname = match string(&["hostname"])? {
        Some(h) => h,
        None => crate::daemons::hostname()?,
    };
    identityd.insert("hostname".into(), Value::String(hostname));
    for key in [
        "prefer_module_identity_cache",
        "cloud_timeout_sec",
        "cloud_retries",
    ] {
        if let Some(v) = get(&[key]) {
            identityd.insert(key.into(), v);
        }
    }
    let mut keyd_keys = Table::new();
    let source = need(&["provisioning", "source"])?;
    let mut provisioning = Table::from_iter([s("source", &source)]);
    match source.as_str() {
        "manual" => {
            let mut x509 = None;
            let (hub, device) = if let Some(cs) = string(&["provisioning", "connection_string"])? {
                let cs = edgeid_identityd::connection_string::ConnectionString::parse(&cs)
                    .map_err(|e| here(&["provisioning", "connection_string"], &e))?;
                device_key = Some(cs.key.clone());
                keyd_keys.insert(
                    DEVICE_KEY.into(),
                    Value::String(format!("file:///{DEVICE_KEY_FILE}")),
                );
                (cs.hub.clone(), cs.device_id.clone())
            } else {
                let base = ["provisioning", "authentication"];
                let method = need(&["provisioning", "authentication", "method"])?;
                match method.as_str() {
                    "sas" => {
                        let (location, bytes) =
                            key_location(&[&base[..], &["device_id_pk"]].concat())?;
                        device_key = bytes;
                        keyd_keys.insert(DEVICE_KEY.into(), Value::String(location));
                    }
                    "x509" => x509 = Some(x509_identity(&base, &mut keyd_keys)?),
                    _ => {
                        return Err(here(
                            &["provisioning", "authentication", "method"],
                            "is not supported here: sas or x509",
                        ))
                    }
                }
                (
                    need(&["provisioning", "iothub_hostname"])?,
                    need(&["provisioning", "device_id"])?,
                )
            };
            let authentication = if let Some(key_id) = x509 {
                Table::from_iter([
                    s("method", "x509"),
                    s("identity_cert", DEVICE_KEY),
                    s("identity_pk", &key_id),
                ])
            } else {
                Table::from_iter([s("method", "sas"), s("device_id_pk", DEVICE_KEY)])
            };
            provisioning.extend([
                s("iothub_hostname", &hub),
                s("device_id", &device),
                ("authentication".to_owned(), Value::Table(authentication)),
            ]);
        }
        "dps" => {
            let method = need(&["provisioning", "attestation", "method"])?;
            let mut attestation = Table::from_iter([s("method", &method)]);
            let registration_id = ["provisioning", "attestation", "registration_id"];
            match string(&registration_id)? {
                Some(id) => attestation.extend([s("registration_id", &id)]),
                // The certificate's CN, for x509 alone.
                None if method == "x509" => {}
                None => return Err(here(&registration_id, "is missing")),
            }
            match method.as_str() {
                "symmetric_key" => {
                    let (location, bytes) =
                        key_location(&["provisioning", "attestation", "symmetric_key"])?;
                    device_key = bytes;
                    keyd_keys.insert(DEVICE_KEY.into(), Value::String(location));
                    attestation.extend([s("symmetric_key", DEVICE_KEY)]);
                }
                "tpm" => {}
                "x509" => {
                    let key_id = x509_identity(&["provisioning", "attestation"], &mut keyd_keys)?;
                    attestation.extend([s("identity_cert", DEVICE_KEY), s("identity_pk", &key_id)]);
                }
                _ => {
                    return Err(here(
                        &["provisioning", "attestation", "method"],
                        "is not supported here: symmetric_key, x509 or tpm",
                    ))
                }
            }
            provisioning.extend([
                s(
                    "global_endpoint",
                    &need(&["provisioning", "global_endpoint"])?,
                ),
                s("scope_id", &need(&["provisioning", "id_scope"])?),
                ("attestation".to_owned(), Value::Table(attestation)),
            ]);
            if let Some(payload) = get(&["provisioning", "payload"]) {
                provisioning.insert("payload".into(), payload);
            }
        }
        "none" => {}
        other => {
            return Err(here(
                &["provisioning", "source"],
                &format!("'{other}': manual, dps or none"),
            ))
        }
    }
    identityd.insert("provisioning".into(), Value::Table(provisioning));

    let mut aziot_keys = Table::from_iter([s("homedir_path", "/var/lib/aziot/keyd")]);
    for key in ["pkcs11_lib_path", "pkcs11_base_slot"] {
        if let Some(v) = get(&["aziot_keys", key]) {
            aziot_keys.insert(key.into(), v);
        }
    }
    let mut keyd = Table::from_iter([("aziot_keys".to_owned(), Value::Table(aziot_keys))]);
    // The super-config's own preloaded keys and certificates, then those
    // provisioning names (aziotctl's order: provisioning's win).
    let own = |key: &str| match get(&[key]) {
        Some(Value::Table(t)) => t,
        _ => Table::new(),
    };
    let mut preloaded_keys = own("preloaded_keys");
    preloaded_keys.extend(keyd_keys);
    if !preloaded_keys.is_empty() {
        keyd.insert("preloaded_keys".into(), Value::Table(preloaded_keys));
    }
    let mut certd = Table::from_iter([s("homedir_path", "/var/lib/aziot/certd")]);
    let mut preloaded_certs = own("preloaded_certs");
    preloaded_certs.extend(certd_certs);
    if !preloaded_certs.is_empty() {
        certd.insert("preloaded_certs".into(), Value::Table(preloaded_certs));
    }
    let mut tpmd = Table::new();
    for (name, part) in [
        ("keyd", &mut keyd),
        ("certd", &mut certd),
        ("identityd", &mut identityd),
        ("tpmd", &mut tpmd),
    ] {
        if let Some(n) = get(&["aziot_max_requests", name]) {
            part.insert("max_requests".into(), n);
        }
    }
    Ok(Some(Parts {
        parts: [
            ("keyd", keyd),
            ("certd", certd),
            ("identityd", identityd),
            ("tpmd", tpmd),
        ],
        device_key,
        path,
    }))
}
