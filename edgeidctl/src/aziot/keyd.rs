//! keyd's part of the reference's configs: `max_requests`, `preloaded_keys`
//! (files, and keys a factory put on a PKCS#11 token, under any label),
//! the token itself (`[aziot_keys]`), and `[[principal]]`, as keyd's own
//! config tables ([`super::map`] holds certd's and identityd's).

use toml::{Table, Value};
use zeroize::Zeroizing;

use super::files::{value_at as get, Layered};
use super::pkcs11;
use super::read::{
    as_uid, aziot_principal, file_uri, max_requests, push, string_list, sub, Reader,
};

/// Where `config apply` writes the PIN of a `pkcs11:` URI's `pin-value`
/// (under the root; keyd's, 0600, beside its config).
pub const PKCS11_PIN_FILE: &str = "etc/edgeid/keyd.d/aziot-pkcs11.pin";

/// keyd: `max_requests`, `preloaded_keys` (files, and keys on the token
/// by their label), the PKCS#11 token (`[aziot_keys] pkcs11_lib_path`,
/// `pkcs11_base_slot`: keyd's `[pkcs11]`, and with a base slot the store of
/// every key, as the reference then makes every key there), `[[principal]]
/// uid, keys`. `[aziot_keys] homedir_path` is accepted: the reference's key
/// directory, read only when its state is imported. Returns a PIN given
/// in a URI, for [`PKCS11_PIN_FILE`].
pub fn keyd(l: &Layered, out: &mut Table) -> Result<Option<Zeroizing<String>>, String> {
    let r = Reader(l);
    max_requests(&r, out)?;
    r.str(&["aziot_keys", "homedir_path"])?;
    let base_at = ["aziot_keys", "pkcs11_base_slot"];
    let base = r
        .str(&base_at)?
        .map(|text| pkcs11::parse(&text).map_err(|why| r.bad(&base_at, &why)))
        .transpose()?;
    if base.as_ref().is_some_and(|b| b.object.is_some()) {
        return Err(r.bad(&base_at, "names an object: a base slot names a token only"));
    }
    // The token keyd uses, and where it was first named.
    let mut token: Option<(pkcs11::Uri, Vec<String>)> =
        base.map(|b| (b, base_at.iter().map(|s| (*s).to_owned()).collect()));
    let mut on_token = Vec::new();
    let mut labels = Table::new();
    if let Some(Value::Table(keys)) = get(&l.merged, &["preloaded_keys"]) {
        for (id, location) in keys {
            let path = ["preloaded_keys", id.as_str()];
            let uri = location
                .as_str()
                .ok_or_else(|| r.bad(&path, "must be a string (a file: or pkcs11: URI)"))?;
            if uri.starts_with("pkcs11:") {
                let key = pkcs11::parse(uri).map_err(|why| r.bad(&path, &why))?;
                match key.object.as_deref() {
                    None => {
                        return Err(r.bad(&path, "names no object: give object=<the key's label>"))
                    }
                    // keyd finds a token's keys by their label: this id's is another.
                    Some(label) if label != id => {
                        labels.insert(id.clone(), Value::String(label.to_owned()));
                    }
                    Some(_) => {}
                }
                match &token {
                    Some((t, _)) if !t.same_token(&key) => {
                        let first: Vec<&str> = token
                            .as_ref()
                            .map(|(_, at)| at.iter().map(String::as_str).collect())
                            .unwrap_or_default();
                        return Err(r.bad(
                            &path,
                            &format!(
                                "names another token than {}: keyd holds one token",
                                r.0.at(&first)
                            ),
                        ));
                    }
                    Some(_) => {}
                    None => token = Some((key, path.iter().map(|s| (*s).to_owned()).collect())),
                }
                on_token.push(Value::String(id.clone()));
                continue;
            }
            let file = file_uri(&r, &path, uri)?;
            let mut entry = Table::from_iter([
                ("id".to_owned(), Value::String(id.clone())),
                ("file".to_owned(), Value::String(file)),
            ]);
            // IoT Edge's imported_master_encryption_key: an AES key.
            if let Some(kind) = super::state::symmetric_kind(id) {
                entry.insert("symmetric".into(), Value::String(kind.into()));
            }
            push(out, "preloaded_key", Value::Table(entry));
        }
    }
    let pin = match token {
        Some((uri, at)) => token_tables(&r, uri, &at, on_token, labels, out)?,
        None => None,
    };
    for p in r.principals() {
        let uid = r.principal_field(p, "uid", as_uid, "a uid")?;
        let keys = r.principal_field(p, "keys", string_list, "an array of key ids or globs")?;
        push(out, "principal", aziot_principal(uid, "keys", keys));
    }
    Ok(pin)
}

/// keyd's `[pkcs11]` for the token `uri` names (first named at `at`), and
/// its backend: every key's with a base slot, else the `on_token` keys'.
fn token_tables(
    r: &Reader,
    uri: pkcs11::Uri,
    at: &[String],
    on_token: Vec<Value>,
    labels: Table,
    out: &mut Table,
) -> Result<Option<Zeroizing<String>>, String> {
    let at: Vec<&str> = at.iter().map(String::as_str).collect();
    let lib_at = ["aziot_keys", "pkcs11_lib_path"];
    let library = r.str(&lib_at)?.ok_or_else(|| {
        r.bad(
            &at,
            "needs aziot_keys.pkcs11_lib_path (the PKCS#11 module) as well",
        )
    })?;
    let (pin_file, pin) = match uri.pin {
        Some(pkcs11::Pin::Value(pin)) => (format!("/{PKCS11_PIN_FILE}"), Some(pin)),
        Some(pkcs11::Pin::File(file)) => (file.display().to_string(), None),
        None => {
            return Err(r.bad(
                &at,
                "gives no PIN: keyd logs in to the token as its user; add ?pin-value=... \
                 (config apply keeps it in a 0600 file of keyd's) or ?pin-source=file:/path",
            ))
        }
    };
    let mut table = Table::from_iter([
        ("library".to_owned(), Value::String(library)),
        ("pin_file".to_owned(), Value::String(pin_file)),
    ]);
    match (uri.slot, uri.token) {
        (Some(slot), _) => {
            let slot = i64::try_from(slot).map_err(|_| r.bad(&at, "has a slot-id too large"))?;
            table.insert("slot".into(), Value::Integer(slot))
        }
        (None, Some(label)) => table.insert("token_label".into(), Value::String(label)),
        (None, None) => None,
    };
    if !labels.is_empty() {
        table.insert("labels".into(), Value::Table(labels));
    }
    out.insert("pkcs11".into(), Value::Table(table));
    let backend = sub(out, "backend");
    if at == ["aziot_keys", "pkcs11_base_slot"] {
        backend.insert("default".into(), Value::String("pkcs11".into()));
    } else {
        // Before any other override: the first match wins.
        let entry = Value::Table(Table::from_iter([
            ("keys".to_owned(), Value::Array(on_token)),
            ("backend".to_owned(), Value::String("pkcs11".into())),
        ]));
        match backend
            .entry("override".to_owned())
            .or_insert_with(|| Value::Array(Vec::new()))
        {
            Value::Array(a) => a.insert(0, entry),
            other => *other = Value::Array(vec![entry]),
        }
    }
    Ok(pin)
}

/// The keyd keys certd signs with by what the reference's certd configs
/// say (`certd`: those configs): the EST identity's and bootstrap
/// identity's keys, globally and per certificate, and the local CA's. They
/// are added to certd's grants in keyd's config (`out`), with `<id>.r*`
/// for the EST identity's renewals, whichever daemon `config apply` was
/// run for, so keyd's config alone does not lose them.
pub fn grant_certd(certd: &Layered, out: &mut Table) {
    let mut keys = Vec::new();
    let mut key_at = |path: &[&str], renewed: bool| {
        if let Some(Value::String(id)) = get(&certd.merged, path) {
            if renewed {
                keys.push(format!("{id}.r*"));
            }
            keys.push(id.clone());
        }
    };
    key_at(&["cert_issuance", "local_ca", "pk"], false);
    let mut tables = vec!["est".to_owned()];
    if let Some(Value::Table(certs)) = get(&certd.merged, &["cert_issuance"]) {
        tables.extend(
            certs
                .keys()
                .filter(|k| *k != "est" && *k != "local_ca")
                .cloned(),
        );
    }
    for table in &tables {
        key_at(&["cert_issuance", table, "identity_pk"], true);
        key_at(&["cert_issuance", table, "bootstrap_identity_pk"], false);
    }
    if keys.is_empty() {
        return;
    }
    let Some(Value::Array(principals)) = out.get_mut("principal") else {
        return;
    };
    for principal in principals.iter_mut().filter_map(Value::as_table_mut) {
        if principal.get("name").and_then(Value::as_str) != Some("certd") {
            continue;
        }
        if let Some(Value::Array(granted)) = principal.get_mut("keys") {
            for key in &keys {
                let key = Value::String(key.clone());
                if !granted.contains(&key) {
                    granted.push(key);
                }
            }
        }
    }
}
