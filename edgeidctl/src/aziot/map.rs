//! What the reference's per-daemon configs say, written into edgeid's own
//! daemon configs (the tables `config apply` builds): each key the schema
//! lets through is either carried over here or named in the docs as
//! accepted with no effect on edgeid (and why). Errors name the file and
//! line where the value was set. keyd's part is [`super::keyd`]'s.

use toml::{Table, Value};
use zeroize::Zeroizing;

use super::files::{value_at as get, Layered};
use super::read::{
    as_uid, aziot_principal, file_uri, max_requests, push, string_list, sub, Reader,
};

pub use super::keyd::{keyd, PKCS11_PIN_FILE};

/// certd: `max_requests`, `[cert_issuance.local_ca]` (certd's local CA
/// becomes that certificate and key), `[cert_issuance.<id>]` (method,
/// expiry_days), `preloaded_certs` (files and lists of ids), `[[principal]]
/// uid, certs`. `homedir_path` is accepted: the reference's certificate
/// directory.
pub fn certd(l: &Layered, out: &mut Table) -> Result<Option<Zeroizing<String>>, String> {
    let r = Reader(l);
    let (est_password, est_urls) = super::est::certd(&r, out)?;
    max_requests(&r, out)?;
    r.str(&["homedir_path"])?;
    if get(&l.merged, &["cert_issuance", "local_ca"]).is_some() {
        let at = |k: &'static str| ["cert_issuance", "local_ca", k];
        let ca = Table::from_iter([
            (
                "cert_id".to_owned(),
                Value::String(r.need_str(&at("cert"))?),
            ),
            ("key_id".to_owned(), Value::String(r.need_str(&at("pk"))?)),
            ("provided".to_owned(), Value::Boolean(true)),
        ]);
        out.insert("ca".into(), Value::Table(ca));
    }
    if let Some(Value::Table(certs)) = get(&l.merged, &["cert_issuance"]) {
        for id in certs.keys().filter(|k| *k != "local_ca" && *k != "est") {
            let method = r.need_str(&["cert_issuance", id, "method"])?;
            let method = match method.as_str() {
                "self_signed" => "self-signed",
                "local_ca" => "local-ca",
                "est" => "est",
                other => {
                    return Err(r.bad(
                        &["cert_issuance", id, "method"],
                        &format!("'{other}': one of self_signed, local_ca, est"),
                    ))
                }
            };
            let mut issuance = Table::from_iter([
                ("method".to_owned(), Value::String(method.into())),
                // The reference issues whatever the CSR asks for, CA rights
                // too; an administrator wrote this entry.
                ("ca".to_owned(), Value::Boolean(true)),
            ]);
            if let Some(days) = r.uint(&["cert_issuance", id, "expiry_days"])? {
                if days == 0 {
                    return Err(r.bad(&["cert_issuance", id, "expiry_days"], "must be at least 1"));
                }
                issuance.insert("expiry_days".into(), Value::Integer(days));
            }
            if let Some(subject) = subject(&r, id)? {
                issuance.insert("subject".into(), Value::Table(subject));
            }
            if let Some((_, url)) = est_urls.iter().find(|(at, _)| at == id) {
                issuance.insert("est_url".into(), Value::String(url.clone()));
            }
            sub(out, "issuance").insert(id.clone(), Value::Table(issuance));
        }
    }
    if let Some(Value::Table(certs)) = get(&l.merged, &["preloaded_certs"]) {
        for (id, location) in certs {
            let path = ["preloaded_certs", id.as_str()];
            let entry = match location {
                Value::String(uri) => Table::from_iter([(
                    "file".to_owned(),
                    Value::String(file_uri(&r, &path, uri)?),
                )]),
                Value::Array(_) => Table::from_iter([(
                    "ids".to_owned(),
                    Value::Array(r.strings(&path)?.into_iter().map(Value::String).collect()),
                )]),
                _ => return Err(r.bad(&path, "must be a file: URI or an array of certificate ids")),
            };
            sub(out, "preloaded").insert(id.clone(), Value::Table(entry));
        }
    }
    for p in r.principals() {
        let uid = r.principal_field(p, "uid", as_uid, "a uid")?;
        let certs = r.principal_field(
            p,
            "certs",
            string_list,
            "an array of certificate ids or globs",
        )?;
        let Value::Table(mut principal) = aziot_principal(uid, "certs", certs) else {
            continue;
        };
        // The reference checks no names in a CSR; its principals may ask for any.
        principal.insert(
            "names".into(),
            Value::Array(vec![Value::String("**".into())]),
        );
        push(out, "principal", Value::Table(principal));
    }
    Ok(est_password)
}

/// `[cert_issuance.<id>] common_name` or `subject`: the subject certd
/// gives the id's certificates, checked as certd checks it.
fn subject(r: &Reader, id: &str) -> Result<Option<Table>, String> {
    let at = |k: &'static str| ["cert_issuance", id, k];
    let subject = match (r.str(&at("common_name"))?, get(&r.0.merged, &at("subject"))) {
        (Some(_), Some(_)) => {
            return Err(r.bad(
                &at("subject"),
                "and 'common_name' are both set: give one (the reference takes one)",
            ))
        }
        (Some(cn), None) => Table::from_iter([("CN".to_owned(), Value::String(cn))]),
        (None, Some(Value::Table(t))) => {
            for (k, v) in t {
                if !v.is_str() {
                    return Err(r.bad(&["cert_issuance", id, "subject", k], "must be a string"));
                }
            }
            t.clone()
        }
        (None, Some(_)) => return Err(r.bad(&at("subject"), "must be a table")),
        (None, None) => return Ok(None),
    };
    let attributes = subject
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str().unwrap_or_default()));
    let set = if get(&r.0.merged, &at("subject")).is_some() {
        at("subject")
    } else {
        at("common_name")
    };
    edgeid_certd::issuer::configured_name(attributes).map_err(|why| r.bad(&set, &why))?;
    Ok(Some(subject))
}

/// tpmd: only `max_requests` gets this far (the schema refuses the TPM
/// settings); edgeid has no tpmd of its own, so it has no effect.
pub fn tpmd(l: &Layered) -> Result<(), String> {
    Reader(l).uint(&["max_requests"]).map(|_| ())
}

/// identityd: provisioning (replacing `/etc/edgeid/config.toml`'s, which
/// is reported), principals with their idtypes, cloud timeout and retries,
/// `max_requests`. Accepted with no effect: `homedir` (the reference's
/// state, read only when imported) and `prefer_module_identity_cache`
/// (edgeid answers module identities from its own store either way).
/// Returns whether provisioning was set.
pub fn identityd(l: &Layered, out: &mut Table) -> Result<bool, String> {
    let r = Reader(l);
    max_requests(&r, out)?;
    r.str(&["homedir"])?;
    r.bool(&["prefer_module_identity_cache"])?;
    let hostname = r.str(&["hostname"])?;
    if let Some(secs) = r.uint(&["cloud_timeout_sec"])? {
        if secs < 70 {
            return Err(r.bad(
                &["cloud_timeout_sec"],
                "must be at least 70 (as in the reference)",
            ));
        }
        sub(out, "cloud").insert("timeout_secs".into(), Value::Integer(secs));
    }
    if let Some(retries) = r.uint(&["cloud_retries"])? {
        sub(out, "cloud").insert("attempts".into(), Value::Integer(retries.saturating_add(1)));
    }
    if let Some(domain) = r.str(&["localid", "domain"])? {
        // As the reference names them: <module>.<hostname>.<domain>.
        let host = match &hostname {
            Some(h) => h.clone(),
            None => crate::daemons::hostname()?,
        };
        sub(out, "modules").insert(
            "local_cn_suffix".into(),
            Value::String(format!("{host}.{domain}")),
        );
    }
    let provisioning = match get(&l.merged, &["provisioning"]) {
        Some(_) => Some(provisioning(&r, hostname.as_deref())?),
        None => None,
    };
    let set = provisioning.is_some();
    if let Some(p) = provisioning {
        out.insert("provisioning".into(), Value::Table(p));
    }
    principals(&r, out)?;
    Ok(set)
}

fn provisioning(r: &Reader, hostname: Option<&str>) -> Result<Table, String> {
    let p = |k: &'static str| ["provisioning", k];
    let s = |k: &str, v: String| (k.to_owned(), Value::String(v));
    let source = r.need_str(&p("source"))?;
    Ok(match source.as_str() {
        "manual" => {
            let at = |k: &'static str| ["provisioning", "authentication", k];
            let method = r.need_str(&at("method"))?;
            let auth = match method.as_str() {
                "sas" => Table::from_iter([
                    s("method", "sas".into()),
                    s("key_id", r.need_str(&at("device_id_pk"))?),
                ]),
                "x509" => {
                    let mut auth = Table::from_iter([
                        s("method", "x509".into()),
                        s("cert_id", r.need_str(&at("identity_cert"))?),
                        s("key_id", r.need_str(&at("identity_pk"))?),
                    ]);
                    // Its CN is the device id, as the reference makes it.
                    if let Some((_, rest)) = csr_subject(r, &at("csr_subject"))? {
                        if !rest.is_empty() {
                            auth.insert("subject".into(), Value::Table(rest));
                        }
                    }
                    auth
                }
                other => return Err(r.bad(&at("method"), &format!("'{other}': sas or x509"))),
            };
            let mut manual = Table::from_iter([
                s("source", "manual".into()),
                s("hub", r.need_str(&p("iothub_hostname"))?),
                s("device_id", r.need_str(&p("device_id"))?),
                ("auth".to_owned(), Value::Table(auth)),
            ]);
            // Nested IoT Edge: the parent device the hub is reached through.
            if let Some(parent) = r.str(&p("local_gateway_hostname"))? {
                manual.insert("gateway".into(), Value::String(parent));
            }
            manual
        }
        "dps" => {
            if r.str(&p("local_gateway_hostname"))?.is_some() {
                // As the reference refuses it.
                return Err(r.bad(
                    &p("local_gateway_hostname"),
                    "is for manual provisioning: DPS provisioning is not supported in nested mode",
                ));
            }
            let at = |k: &'static str| ["provisioning", "attestation", k];
            let method = r.need_str(&at("method"))?;
            let mut attestation = Table::from_iter([s("method", method.clone())]);
            match method.as_str() {
                "symmetric_key" => {
                    attestation.extend([
                        s("registration_id", r.need_str(&at("registration_id"))?),
                        s("key_id", r.need_str(&at("symmetric_key"))?),
                    ]);
                }
                "x509" => {
                    if let Some((cn, rest)) = csr_subject(r, &at("registration_id"))? {
                        attestation.extend([s("registration_id", cn)]);
                        if !rest.is_empty() {
                            attestation.insert("subject".into(), Value::Table(rest));
                        }
                    }
                    attestation.extend([
                        s("cert_id", r.need_str(&at("identity_cert"))?),
                        s("key_id", r.need_str(&at("identity_pk"))?),
                    ]);
                }
                "tpm" => {
                    attestation.extend([s("registration_id", r.need_str(&at("registration_id"))?)]);
                }
                other => {
                    return Err(r.bad(
                        &at("method"),
                        &format!("'{other}': symmetric_key, x509 or tpm"),
                    ))
                }
            }
            let mut dps = Table::from_iter([
                s("source", "dps".into()),
                s("global_endpoint", r.need_str(&p("global_endpoint"))?),
                s("id_scope", r.need_str(&p("scope_id"))?),
                ("attestation".to_owned(), Value::Table(attestation)),
            ]);
            let payload = ["provisioning", "payload", "uri"];
            if get(&r.0.merged, &payload[..2]).is_some() {
                let uri = r.need_str(&payload)?;
                dps.extend([s("payload_file", file_uri(r, &payload, &uri)?)]);
            }
            dps
        }
        // No cloud: edgeid's local provisioning, the device named by the host name.
        "none" => {
            let device = match hostname {
                Some(h) => h.to_owned(),
                None => crate::daemons::hostname()?,
            };
            Table::from_iter([s("source", "local".into()), s("device_id", device)])
        }
        other => return Err(r.bad(&p("source"), &format!("'{other}': manual, dps or none"))),
    })
}

/// The reference's principals: no idtype is the one daemon (the first such;
/// the reference ignores later ones, edgeid refuses them), `device` reads
/// the device identity, `module` and `local` are the module named `name`.
fn principals(r: &Reader, out: &mut Table) -> Result<(), String> {
    let mut daemon: Option<String> = None;
    let mut names = std::collections::BTreeSet::new();
    for p in r.principals() {
        let uid = r.principal_field(p, "uid", as_uid, "a uid")?;
        let name = r.principal_field(p, "name", |v| v.as_str().map(str::to_owned), "a string")?;
        if !names.insert(name.clone()) {
            return Err(format!(
                "{}: two principals are named '{name}' (the reference refuses this too)",
                r.0.at_principal(p, "name")
            ));
        }
        let idtypes = match p.get("idtype") {
            None => None,
            Some(_) => Some(r.principal_field(
                p,
                "idtype",
                |v| {
                    v.as_array()?
                        .iter()
                        .map(|t| match t.as_str()? {
                            t @ ("device" | "module" | "local") => Some(t.to_owned()),
                            _ => None,
                        })
                        .collect::<Option<Vec<_>>>()
                },
                "an array of \"device\", \"module\", \"local\"",
            )?),
        };
        // `module`: the module named `name`; `keep`: identityd makes its
        // identity (idtype module, not local alone, as the reference).
        let entry = |role: &str, module: bool, keep: bool| {
            let mut t = Table::from_iter([
                ("name".to_owned(), Value::String(name.clone())),
                ("uid".to_owned(), Value::Integer(i64::from(uid))),
                ("role".to_owned(), Value::String(role.to_owned())),
            ]);
            if module {
                t.insert("module_id".into(), Value::String(name.clone()));
            }
            if keep {
                t.insert("keep_module".into(), Value::Boolean(true));
            }
            Value::Table(t)
        };
        match idtypes {
            None => {
                if let Some(first) = &daemon {
                    return Err(format!(
                        "{}: principal '{name}' has no idtype, and '{first}' already is the one \
                         principal without (the reference would ignore '{name}'); give it an idtype",
                        r.0.at_principal(p, "name")
                    ));
                }
                daemon = Some(name.clone());
                push(out, "principal", entry("orchestrator", false, false));
            }
            Some(types) => {
                if types.iter().any(|t| t == "device") {
                    let Value::Table(mut t) = entry("device", false, false) else {
                        continue;
                    };
                    t.insert("name".into(), Value::String(format!("{name} (device)")));
                    push(out, "principal", Value::Table(t));
                }
                if types.iter().any(|t| t == "module" || t == "local") {
                    let keep = types.iter().any(|t| t == "module");
                    let Value::Table(mut t) = entry("module", true, keep) else {
                        continue;
                    };
                    if types.iter().any(|t| t == "local") {
                        t.insert("local_id".into(), Value::String(local_kind(r, p)?.into()));
                    }
                    push(out, "principal", Value::Table(t));
                }
            }
        }
    }
    Ok(())
}

/// A local principal's `localid = { type = "x509", attributes = ... }`:
/// the kind of its local identity (`client` without one, as the reference).
fn local_kind(r: &Reader, p: &Table) -> Result<&'static str, String> {
    let Some(opts) = p.get("localid") else {
        return Ok("client");
    };
    let bad = |what: &str| {
        format!(
            "{}: a [[principal]] ({}) has a bad 'localid': {what}",
            r.0.at_principal(p, "localid"),
            p.get("name").and_then(Value::as_str).unwrap_or_default()
        )
    };
    let opts = opts.as_table().ok_or_else(|| bad("it must be a table"))?;
    if opts.get("type").and_then(Value::as_str) != Some("x509") {
        return Err(bad(
            "type must be \"x509\" (the only kind the reference has)",
        ));
    }
    match opts.get("attributes").map(|a| a.as_str()) {
        None | Some(Some("client")) => Ok("client"),
        Some(Some("server")) => Ok("server"),
        _ => Err(bad("attributes must be \"client\" or \"server\"")),
    }
}

/// The reference's `CsrSubject` at `path`: a common name, or a table with a
/// `CN` and more attributes (keys upper-cased, as the reference reads
/// them): the CN and the rest, checked as certd checks a subject.
fn csr_subject(r: &Reader, path: &[&str]) -> Result<Option<(String, Table)>, String> {
    let (cn, rest) = match get(&r.0.merged, path) {
        None => return Ok(None),
        Some(Value::String(cn)) => (cn.clone(), Table::new()),
        Some(Value::Table(t)) => {
            let mut rest = Table::new();
            let mut cn = None;
            for (k, v) in t {
                let Some(v) = v.as_str() else {
                    return Err(r.bad(path, &format!("has '{k}', which must be a string")));
                };
                match k.to_uppercase().as_str() {
                    "CN" => cn = Some(v.to_owned()),
                    other => {
                        rest.insert(other.to_owned(), Value::String(v.to_owned()));
                    }
                }
            }
            let cn = cn.ok_or_else(|| r.bad(path, "has no CN"))?;
            (cn, rest)
        }
        Some(_) => return Err(r.bad(path, "must be a string or a table")),
    };
    let attributes = std::iter::once(("CN", cn.as_str())).chain(
        rest.iter()
            .map(|(k, v)| (k.as_str(), v.as_str().unwrap_or_default())),
    );
    edgeid_certd::issuer::configured_name(attributes).map_err(|why| r.bad(path, &why))?;
    Ok(Some((cn, rest)))
}
