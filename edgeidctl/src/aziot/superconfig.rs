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
    let mut issuance = Table::new();
    // An X.509 identity in files (`identity_cert`, `identity_pk` URIs):
    // preloaded as `device-id`, as aziotctl preloads them (a key on a
    // PKCS#11 token under its own label too: keyd's `[pkcs11] labels`
    // maps the id to it). One certd is to issue (a table: method, expiry_days, url,
    // common_name or subject) is certd's `[cert_issuance.device-id]`, as
    // aziotctl writes it; its `auto_renew` is identityd's
    // `identity_auto_renew`. Returns the key's id, the subject's attributes
    // other than its CN, and that `auto_renew`.
    let mut x509_identity = |base: &[&str],
                             keyd_keys: &mut Table|
     -> Result<(String, Table, Option<Value>), String> {
        let at = |k: &'static str| [base, &[k]].concat();
        if let Some(Value::Table(mut issued)) = get(&at("identity_cert")) {
            const ISSUED: [&str; 11] = [
                "method",
                "expiry_days",
                "url",
                "common_name",
                "subject",
                "username",
                "password",
                "identity_cert",
                "identity_pk",
                "bootstrap_identity_cert",
                "bootstrap_identity_pk",
            ];
            let auto_renew = issued.remove("auto_renew");
            if let Some(other) = issued.keys().find(|k| !ISSUED.contains(&k.as_str())) {
                return Err(here(
                    &at("identity_cert"),
                    &format!("sets '{other}', which the reference does not read here"),
                ));
            }
            // Its own EST credentials, as aziotctl writes them: the files
            // preloaded as est-id-device-id (est-bootstrap-id-device-id for
            // a bootstrap identity, which enrolls est-id-device-id).
            let own = |kind: &str| format!("{kind}-{DEVICE_KEY}");
            for (cert, pk, id) in [
                ("identity_cert", "identity_pk", own("est-id")),
                (
                    "bootstrap_identity_cert",
                    "bootstrap_identity_pk",
                    own("est-bootstrap-id"),
                ),
            ] {
                if let (Some(c), Some(k)) = (issued.get(cert).cloned(), issued.get(pk).cloned()) {
                    certd_certs.insert(id.clone(), c);
                    keyd_keys.insert(id.clone(), k);
                    issued.insert(cert.into(), Value::String(id.clone()));
                    issued.insert(pk.into(), Value::String(id));
                }
            }
            if issued.contains_key("bootstrap_identity_cert") {
                issued.insert("identity_cert".into(), Value::String(own("est-id")));
                issued.insert("identity_pk".into(), Value::String(own("est-id")));
            }
            if get(&at("identity_pk")).is_some() {
                return Err(here(
                    &at("identity_pk"),
                    "is not read with an identity certificate certd issues (its key is keyd's device-id, made for it)",
                ));
            }
            let rest = match issued.get("subject") {
                Some(Value::Table(subject)) => subject
                    .iter()
                    .filter(|(k, _)| !k.eq_ignore_ascii_case("cn"))
                    .map(|(k, v)| (k.to_uppercase(), v.clone()))
                    .collect(),
                _ => Table::new(),
            };
            issuance.insert(DEVICE_KEY.into(), Value::Table(issued));
            return Ok((DEVICE_KEY.to_owned(), rest, auto_renew));
        }
        certd_certs.insert(
            DEVICE_KEY.into(),
            Value::String(need(&at("identity_cert"))?),
        );
        let pk = need(&at("identity_pk"))?;
        if pk.starts_with("pkcs11:") {
            let uri = super::pkcs11::parse(&pk).map_err(|why| here(&at("identity_pk"), &why))?;
            if uri.object.is_none() {
                return Err(here(&at("identity_pk"), "names no object (object=<label>)"));
            }
        }
        keyd_keys.insert(DEVICE_KEY.into(), Value::String(pk));
        Ok((DEVICE_KEY.to_owned(), Table::new(), None))
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
    // Nested IoT Edge's parent device, under either of its names (IoT
    // Edge's, the identity service's), as aziotctl writes it to identityd.
    let parent = match (
        string(&["parent_hostname"])?,
        string(&["local_gateway_hostname"])?,
    ) {
        (Some(_), Some(_)) => {
            return Err(here(
                &["local_gateway_hostname"],
                "is parent_hostname by another name: give one of them",
            ))
        }
        (one, other) => one.or(other),
    };
    if let Some(parent) = parent {
        if source != "manual" {
            return Err(here(
                &["parent_hostname"],
                "is for manual provisioning: DPS provisioning is not supported in nested mode",
            ));
        }
        provisioning.insert("local_gateway_hostname".into(), Value::String(parent));
    }
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
            let authentication = if let Some((key_id, rest, auto_renew)) = x509 {
                if auto_renew.is_some() {
                    let at = [
                        "provisioning",
                        "authentication",
                        "identity_cert",
                        "auto_renew",
                    ];
                    return Err(here(
                        &at,
                        "renews a manual device's certificate, which the reference does not: \
                         certd renews it by its [certificates.renewal] policy in /etc/edgeid/config.toml",
                    ));
                }
                let mut auth = Table::from_iter([
                    s("method", "x509"),
                    s("identity_cert", DEVICE_KEY),
                    s("identity_pk", &key_id),
                ]);
                if !rest.is_empty() {
                    // Its CN is the device id, as aziotctl writes it.
                    let mut subject = Table::from_iter([s("CN", &device)]);
                    subject.extend(rest);
                    auth.insert("csr_subject".into(), Value::Table(subject));
                }
                auth
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
                    let (key_id, rest, auto_renew) =
                        x509_identity(&["provisioning", "attestation"], &mut keyd_keys)?;
                    attestation.extend([s("identity_cert", DEVICE_KEY), s("identity_pk", &key_id)]);
                    if let Some(auto_renew) = auto_renew {
                        attestation.insert("identity_auto_renew".into(), auto_renew);
                    }
                    if let (Some(Value::String(id)), false) =
                        (attestation.get("registration_id").cloned(), rest.is_empty())
                    {
                        let mut subject = Table::from_iter([s("CN", &id)]);
                        subject.extend(rest);
                        attestation.insert("registration_id".into(), Value::Table(subject));
                    }
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
    let mut extra_keys = Table::new();
    cert_issuance(
        &c,
        &here,
        &mut issuance,
        &mut preloaded_certs,
        &mut extra_keys,
    )?;
    if let Some(Value::Table(keys)) = keyd.get_mut("preloaded_keys") {
        keys.extend(extra_keys);
    } else if !extra_keys.is_empty() {
        keyd.insert("preloaded_keys".into(), Value::Table(extra_keys));
    }
    if !issuance.is_empty() {
        certd.insert("cert_issuance".into(), Value::Table(issuance));
    }
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

/// The super-config's `[cert_issuance]` as aziotctl writes it into certd's
/// config: `est` with its trusted certificates and X.509 credentials as
/// preloaded ids (`est-server-ca-<n>`, `est-id`, `est-bootstrap-id`), and a
/// `local_ca` in files as `local-ca`. A local CA certd is to issue is
/// refused (issue it, then give its files).
fn cert_issuance(
    c: &Table,
    here: &dyn Fn(&[&str], &str) -> String,
    issuance: &mut Table,
    certs: &mut Table,
    keys: &mut Table,
) -> Result<(), String> {
    if let Some(Value::Table(est)) = value_at(c, &["cert_issuance", "est"]) {
        let mut out = Table::new();
        // Its credentials are in `[cert_issuance.est.auth]`; certd's are flat.
        let auth = match est.get("auth") {
            Some(Value::Table(auth)) => auth.clone(),
            _ => Table::new(),
        };
        for (k, v) in est.iter().filter(|(k, _)| *k != "auth").chain(&auth) {
            let id = match k.as_str() {
                "identity_cert" | "identity_pk" => "est-id",
                _ => "est-bootstrap-id",
            };
            match k.as_str() {
                "trusted_certs" => {
                    let uris = v.as_array().cloned().unwrap_or_default();
                    let mut ids = Vec::new();
                    for (i, uri) in uris.iter().enumerate() {
                        let id = format!("est-server-ca-{}", i + 1);
                        certs.insert(id.clone(), uri.clone());
                        ids.push(Value::String(id));
                    }
                    out.insert(k.clone(), Value::Array(ids));
                }
                "bootstrap_identity_cert" | "identity_cert" => {
                    certs.insert(id.into(), v.clone());
                    out.insert(k.clone(), Value::String(id.into()));
                }
                "bootstrap_identity_pk" | "identity_pk" => {
                    keys.insert(id.into(), v.clone());
                    out.insert(k.clone(), Value::String(id.into()));
                }
                _ => {
                    out.insert(k.clone(), v.clone());
                }
            }
        }
        // A bootstrap identity enrolls the identity certd keeps as est-id.
        if out.contains_key("bootstrap_identity_cert") {
            out.insert("identity_cert".into(), Value::String("est-id".into()));
            out.insert("identity_pk".into(), Value::String("est-id".into()));
        }
        issuance.insert("est".into(), Value::Table(out));
    }
    if let Some(Value::Table(local)) = value_at(c, &["cert_issuance", "local_ca"]) {
        let file = |k: &str| local.get(k).and_then(Value::as_str).map(str::to_owned);
        let (Some(cert), Some(pk)) = (file("cert"), file("pk")) else {
            return Err(here(
                &["cert_issuance", "local_ca", "cert"],
                "must be the CA's certificate file, with pk its key's (a local CA certd is to \
                 issue is not supported: issue it, then give its files)",
            ));
        };
        certs.insert("local-ca".into(), Value::String(cert));
        keys.insert("local-ca".into(), Value::String(pk));
        issuance.insert(
            "local_ca".into(),
            Value::Table(Table::from_iter([
                ("cert".to_owned(), Value::String("local-ca".into())),
                ("pk".to_owned(), Value::String("local-ca".into())),
            ])),
        );
    }
    Ok(())
}
