//! The reference's EST settings (`[cert_issuance.est]` and the `est`
//! method's own `url` and credentials) as certd's one `[est]`: the URL and
//! credentials each EST certificate resolves to, as the reference resolves
//! them (its own, else `urls.<id>`, else `urls.default`; its own
//! credentials, else the global ones): the credentials must be the same for
//! all of them, since certd enrolls with one identity; a URL other than
//! `[est] url` (`urls.default`, else the first) is the certificate's own
//! `[issuance."<id>"] est_url`, at the same server's trust. `trusted_certs`
//! name preloaded certificate files; none means the system's bundle, as the
//! reference then trusts openssl's default store. A password goes to a
//! 0600 file of certd's, never into its config.

use toml::{Table, Value};
use zeroize::Zeroizing;

use super::files::value_at as get;
use super::read::{file_uri, Reader};

/// Where `config apply` writes the EST password (under the root).
pub const EST_PASSWORD_FILE: &str = "etc/edgeid/certd.d/aziot-est.password";
/// The trust anchors when `trusted_certs` names none.
const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// The credentials keys, as the reference names them, and certd's names.
const AUTH: [(&str, &str); 6] = [
    ("username", "username"),
    ("password", "password_file"),
    ("identity_cert", "identity_cert"),
    ("identity_pk", "identity_key"),
    ("bootstrap_identity_cert", "bootstrap_cert"),
    ("bootstrap_identity_pk", "bootstrap_key"),
];

/// What one EST certificate enrolls with.
struct Settings {
    url: String,
    /// The credentials keys set (reference names), in [`AUTH`] order.
    auth: Vec<(&'static str, Zeroizing<String>)>,
}

/// What [`certd`] found beside `[est]`: the password for
/// [`EST_PASSWORD_FILE`], and the certificates (id, URL) that enroll at a
/// URL of their own.
pub(super) type Found = (Option<Zeroizing<String>>, Vec<(String, String)>);

/// certd's `[est]`, if a certificate is issued by EST or a default URL is set.
pub(super) fn certd(r: &Reader, out: &mut Table) -> Result<Found, String> {
    let global = ["cert_issuance", "est"];
    let auth_of = |base: &[&str]| -> Result<Vec<(&'static str, Zeroizing<String>)>, String> {
        let mut set = Vec::new();
        for (key, _) in AUTH {
            let path = [base, &[key]].concat();
            if let Some(value) = r.str(&path)? {
                set.push((key, Zeroizing::new(value)));
            }
        }
        Ok(set)
    };
    let global_auth = auth_of(&global)?;
    // Read (so checked) even where no certificate is enrolled by EST.
    let renew = [&global[..], &["identity_auto_renew"]].concat();
    let identity_renewal = match get(&r.0.merged, &renew) {
        Some(_) => Some(super::renewal::policy(r, &renew)?),
        None => None,
    };
    let url_for = |id: &str| r.str(&["cert_issuance", "est", "urls", id]);
    let ids: Vec<String> = match get(&r.0.merged, &["cert_issuance"]) {
        Some(Value::Table(t)) => t
            .keys()
            .filter(|k| *k != "est" && *k != "local_ca")
            .cloned()
            .collect(),
        _ => Vec::new(),
    };
    let mut chosen: Option<(Settings, String)> = None;
    let mut urls = Vec::new();
    for id in &ids {
        let method = ["cert_issuance", id.as_str(), "method"];
        if r.str(&method)?.as_deref() != Some("est") {
            continue;
        }
        let url = match r.str(&["cert_issuance", id, "url"])? {
            Some(url) => url,
            None => url_for(id)?.or(url_for("default")?).ok_or_else(|| {
                r.bad(
                    &method,
                    "is est, but no EST URL is set: give url here or [cert_issuance.est.urls] default",
                )
            })?,
        };
        let own = auth_of(&["cert_issuance", id])?;
        let auth = if own.is_empty() {
            global_auth.clone()
        } else {
            own
        };
        if auth.is_empty() {
            return Err(r.bad(
                &method,
                "is est, but no EST credentials are set (username and password, or identity_cert and identity_pk)",
            ));
        }
        match &chosen {
            Some((first, at)) if first.auth != auth => {
                return Err(r.bad(
                    &method,
                    &format!(
                        "enrolls with other EST credentials than cert_issuance.{at}: \
                         edgeid enrolls with one EST identity"
                    ),
                ))
            }
            Some(_) => {}
            None => {
                let settings = Settings {
                    url: url.clone(),
                    auth,
                };
                chosen = Some((settings, id.clone()));
            }
        }
        urls.push((id.clone(), url));
    }
    let settings = match chosen {
        Some((mut settings, _)) => {
            if let Some(default) = url_for("default")? {
                settings.url = default;
            }
            settings
        }
        None => match url_for("default")? {
            Some(url) if !global_auth.is_empty() => Settings {
                url,
                auth: global_auth,
            },
            _ => return Ok((None, Vec::new())),
        },
    };
    // The rest are checked as [est] url is.
    for (id, url) in &urls {
        if url != &settings.url && !url.starts_with("https://") {
            return Err(r.bad(
                &["cert_issuance", id, "url"],
                "names an EST URL that is not https://: edgeid enrolls over TLS only",
            ));
        }
    }
    let own = urls
        .into_iter()
        .filter(|(_, url)| *url != settings.url)
        .collect();
    let (table, password) = est_table(r, settings, identity_renewal)?;
    out.insert("est".into(), Value::Table(table));
    Ok((password, own))
}

/// `[est]` for `settings`, and the password to write.
fn est_table(
    r: &Reader,
    settings: Settings,
    identity_renewal: Option<Table>,
) -> Result<(Table, Option<Zeroizing<String>>), String> {
    let global = ["cert_issuance", "est"];
    if !settings.url.starts_with("https://") {
        return Err(r.bad(
            &[&global[..], &["urls"]].concat(),
            "names an EST URL that is not https://: edgeid enrolls over TLS only",
        ));
    }
    let mut anchors = Vec::new();
    for id in r.strings(&[&global[..], &["trusted_certs"]].concat())? {
        let path = ["preloaded_certs", id.as_str()];
        let Some(uri) = r.str(&path).ok().flatten() else {
            return Err(r.bad(
                &[&global[..], &["trusted_certs"]].concat(),
                &format!("names '{id}', which is not a preloaded certificate file (preloaded_certs.{id} = \"file:///...\")"),
            ));
        };
        anchors.push(Value::String(file_uri(r, &path, &uri)?));
    }
    if anchors.is_empty() {
        anchors.push(Value::String(SYSTEM_BUNDLE.into()));
    }
    let mut table = Table::from_iter([
        ("url".to_owned(), Value::String(settings.url)),
        ("trust_anchors".to_owned(), Value::Array(anchors)),
    ]);
    let has = |k: &str| settings.auth.iter().any(|(key, _)| *key == k);
    for (a, b) in [
        ("username", "password"),
        ("identity_cert", "identity_pk"),
        ("bootstrap_identity_cert", "bootstrap_identity_pk"),
    ] {
        if has(a) != has(b) {
            return Err(r.bad(&global, &format!("sets one of {a} and {b}: give both")));
        }
    }
    if has("bootstrap_identity_cert") && !has("identity_cert") {
        return Err(r.bad(
            &global,
            "sets a bootstrap identity without identity_cert and identity_pk (the identity it enrolls)",
        ));
    }
    let mut password = None;
    for (key, value) in settings.auth {
        let Some((_, ours)) = AUTH.iter().find(|(k, _)| *k == key) else {
            continue;
        };
        if key == "password" {
            table.insert(
                (*ours).into(),
                Value::String(format!("/{EST_PASSWORD_FILE}")),
            );
            password = Some(value);
        } else {
            table.insert((*ours).into(), Value::String(value.to_string()));
        }
    }
    if let Some(policy) = identity_renewal {
        table.insert("identity_renewal".into(), Value::Table(policy));
    }
    Ok((table, password))
}
