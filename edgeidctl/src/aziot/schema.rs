//! Every key the reference's configs accept (read from its `*-config`
//! crates and `aziotctl-common`'s super-config, 1.6.0), as a tree. Each key
//! a file holds is checked against it, with the file and line in the
//! message: a key the reference does not know is refused (the reference
//! ignores it, so a typo there is silent), and a key edgeid cannot honour
//! yet is refused with what to do instead. Types are checked where a value
//! is read ([`super::map`]).

/// What a key may hold.
pub enum Rule {
    /// A value, checked where it is read.
    Value,
    /// A table with these keys.
    Table(&'static [(&'static str, Rule)]),
    /// A table with these keys, and any other key holding the second rule.
    Open(&'static [(&'static str, Rule)], &'static Rule),
    /// A table with any keys, each holding this.
    Map(&'static Rule),
    /// An array of these.
    Array(&'static Rule),
    /// A key the reference has and edgeid refuses, and why.
    Refused(&'static str),
    /// A key that belongs to another program (aziot-edged's tables in the
    /// IoT Edge super-config): left to it, not read here.
    Foreign,
}

use Rule::*;

const ENDPOINTS: Rule = Refused(
    "[endpoints] is a setting of the reference's debug builds only (its release builds ignore it); \
     edgeid's sockets are /run/aziot/*.sock, links to /run/edgeid/*.sock",
);

/// `[localid]`: the domain local identities' names end in.
const LOCAL_ID: Rule = Table(&[("domain", Value)]);

/// A principal's `localid`: its local identity's options.
const PRINCIPAL_LOCAL_ID: Rule = Table(&[("type", Value), ("attributes", Value)]);

/// `/etc/aziot/keyd/config.toml` and its drop-ins.
pub const KEYD: Rule = Table(&[
    ("max_requests", Value),
    (
        "aziot_keys",
        Table(&[
            ("homedir_path", Value),
            ("pkcs11_lib_path", Value),
            ("pkcs11_base_slot", Value),
        ]),
    ),
    ("preloaded_keys", Map(&Value)),
    ("endpoints", ENDPOINTS),
    (
        "principal",
        Array(&Table(&[("uid", Value), ("keys", Value)])),
    ),
]);

/// The reference's `cert_renewal::AutoRenewConfig`: read by [`super::renewal`].
const AUTO_RENEW: Rule = Table(&[
    ("rotate_key", Value),
    ("threshold", Value),
    ("retry", Value),
]);

/// `[cert_issuance.est]`: read by [`super::est`].
const EST: Rule = Table(&[
    ("trusted_certs", Value),
    ("username", Value),
    ("password", Value),
    ("identity_cert", Value),
    ("identity_pk", Value),
    ("bootstrap_identity_cert", Value),
    ("bootstrap_identity_pk", Value),
    ("urls", Map(&Value)),
    ("identity_auto_renew", AUTO_RENEW),
]);

/// The super-config's `[cert_issuance.est]`: as certd's, its credentials in
/// an `auth` table (aziotctl-common's `super_config::Est`).
const SUPER_EST: Rule = Table(&[
    ("trusted_certs", Value),
    ("identity_auto_renew", AUTO_RENEW),
    ("auth", EST_AUTH),
    ("urls", Map(&Value)),
]);

/// EST credentials: `[cert_issuance.est.auth]` in the super-config.
const EST_AUTH: Rule = Table(&[
    ("username", Value),
    ("password", Value),
    ("identity_cert", Value),
    ("identity_pk", Value),
    ("bootstrap_identity_cert", Value),
    ("bootstrap_identity_pk", Value),
]);

/// `/etc/aziot/certd/config.toml` and its drop-ins.
pub const CERTD: Rule = Table(&[
    ("homedir_path", Value),
    ("max_requests", Value),
    (
        "cert_issuance",
        Open(
            &[
                ("est", EST),
                ("local_ca", Table(&[("cert", Value), ("pk", Value)])),
            ],
            // Any other key is a certificate id.
            &CERTD_ISSUANCE,
        ),
    ),
    ("preloaded_certs", Map(&Value)),
    ("endpoints", ENDPOINTS),
    (
        "principal",
        Array(&Table(&[("uid", Value), ("certs", Value)])),
    ),
]);

/// `[cert_issuance.<cert id>]` in certd's config.
pub const CERTD_ISSUANCE: Rule = Table(&[
    ("method", Value),
    ("expiry_days", Value),
    ("url", Value),
    ("username", Value),
    ("password", Value),
    ("identity_cert", Value),
    ("identity_pk", Value),
    ("bootstrap_identity_cert", Value),
    ("bootstrap_identity_pk", Value),
    ("common_name", Value),
    ("subject", Map(&Value)),
]);

const TPMD_SETTING: Rule = Refused(
    "edgeid has no tpmd: keyd holds the TPM; give its settings in /etc/edgeid/config.toml \
     [keys.tpm] (tcti, owner_auth_file)",
);

/// `/etc/aziot/tpmd/config.toml` and its drop-ins.
pub const TPMD: Rule = Table(&[
    ("max_requests", Value),
    ("tcti", TPMD_SETTING),
    ("auth_key_index", TPMD_SETTING),
    ("hierarchy_authorization", TPMD_SETTING),
    ("endpoints", ENDPOINTS),
]);

/// `/etc/aziot/identityd/config.toml` and its drop-ins.
pub const IDENTITYD: Rule = Table(&[
    ("hostname", Value),
    ("homedir", Value),
    ("prefer_module_identity_cache", Value),
    ("max_requests", Value),
    ("cloud_timeout_sec", Value),
    ("cloud_retries", Value),
    (
        "provisioning",
        Table(&[
            ("source", Value),
            ("local_gateway_hostname", Value),
            ("iothub_hostname", Value),
            ("device_id", Value),
            (
                "authentication",
                Table(&[
                    ("method", Value),
                    ("device_id_pk", Value),
                    ("identity_cert", Value),
                    ("identity_pk", Value),
                    ("csr_subject", Value),
                ]),
            ),
            ("global_endpoint", Value),
            ("scope_id", Value),
            (
                "attestation",
                Table(&[
                    ("method", Value),
                    ("registration_id", Value),
                    ("symmetric_key", Value),
                    ("identity_cert", Value),
                    ("identity_pk", Value),
                    ("identity_auto_renew", AUTO_RENEW),
                ]),
            ),
            ("payload", Table(&[("uri", Value)])),
        ]),
    ),
    (
        "principal",
        Array(&Table(&[
            ("uid", Value),
            ("name", Value),
            ("idtype", Value),
            ("localid", PRINCIPAL_LOCAL_ID),
        ])),
    ),
    ("localid", LOCAL_ID),
    ("endpoints", ENDPOINTS),
]);

const SUPER_SYMMETRIC_KEY: Rule = Table(&[("value", Value), ("uri", Value)]);

const SUPER_NOT_YET: Rule = Refused(
    "edgeid reads this part of /etc/aziot/config.toml only as `iotedge config apply` or \
     `aziotctl config apply` writes it out: run one of them, or give it in /etc/edgeid/config.toml",
);

/// `/etc/aziot/config.toml`, the super-config (aziotctl's and, with the
/// tables only aziot-edged reads, IoT Edge's).
pub const SUPER: Rule = Table(&[
    ("hostname", Value),
    // The parent device of nested IoT Edge: identityd's
    // [provisioning] local_gateway_hostname (IoT Edge's name for it, and
    // the identity service's).
    ("parent_hostname", Value),
    ("local_gateway_hostname", Value),
    ("cloud_timeout_sec", Value),
    ("cloud_retries", Value),
    (
        "aziot_max_requests",
        Table(&[
            ("keyd", Value),
            ("certd", Value),
            ("tpmd", Value),
            ("identityd", Value),
        ]),
    ),
    ("prefer_module_identity_cache", Value),
    (
        "provisioning",
        Table(&[
            ("source", Value),
            ("connection_string", Value),
            ("iothub_hostname", Value),
            ("device_id", Value),
            (
                "authentication",
                Table(&[
                    ("method", Value),
                    ("device_id_pk", SUPER_SYMMETRIC_KEY),
                    ("identity_cert", Value),
                    ("identity_pk", Value),
                ]),
            ),
            ("global_endpoint", Value),
            ("id_scope", Value),
            (
                "attestation",
                Table(&[
                    ("method", Value),
                    ("registration_id", Value),
                    ("symmetric_key", SUPER_SYMMETRIC_KEY),
                    ("identity_cert", Value),
                    ("identity_pk", Value),
                    ("auto_renew", SUPER_NOT_YET),
                ]),
            ),
            ("payload", Table(&[("uri", Value)])),
        ]),
    ),
    ("localid", LOCAL_ID),
    (
        "aziot_keys",
        Table(&[
            ("homedir_path", Value),
            ("pkcs11_lib_path", Value),
            ("pkcs11_base_slot", Value),
        ]),
    ),
    ("preloaded_keys", Map(&Value)),
    (
        "cert_issuance",
        Table(&[
            // As certd's (its file URIs become preloaded ids).
            ("est", SUPER_EST),
            ("local_ca", Table(&[("cert", Value), ("pk", Value)])),
        ]),
    ),
    ("preloaded_certs", Map(&Value)),
    (
        "tpm",
        Table(&[
            ("tcti", TPMD_SETTING),
            ("auth_key_index", TPMD_SETTING),
            ("hierarchy_authorization", TPMD_SETTING),
        ]),
    ),
    ("endpoints", ENDPOINTS),
    // IoT Edge's own (edgelet/iotedge/src/config/super_config.rs): aziot-edged's.
    ("trust_bundle_cert", Foreign),
    ("allow_elevated_docker_permissions", Foreign),
    ("auto_reprovisioning_mode", Foreign),
    ("imported_master_encryption_key", Foreign),
    ("additional_info", Foreign),
    ("iotedge_max_requests", Foreign),
    ("manifest_trust_bundle_cert", Foreign),
    ("agent", Foreign),
    ("connect", Foreign),
    ("listen", Foreign),
    ("watchdog", Foreign),
    ("edge_ca", Foreign),
    ("moby_runtime", Foreign),
    ("image_garbage_collection", Foreign),
]);

/// Checks `table` against `rule`; the first problem, with its place
/// (`at` names the file and line of a key path).
pub fn check(
    rule: &Rule,
    table: &dyn toml_edit::TableLike,
    path: &mut Vec<String>,
    at: &dyn Fn(&[String]) -> String,
) -> Result<(), String> {
    let (keys, other): (&[(&str, Rule)], Option<&Rule>) = match rule {
        Table(keys) => (keys, None),
        Open(keys, other) => (keys, Some(other)),
        _ => return Ok(()),
    };
    for (key, item) in table.iter() {
        path.push(key.to_owned());
        let sub = keys
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, r)| r)
            .or(other);
        let Some(sub) = sub else {
            return Err(format!(
                "{}: unknown key '{}' (not a key the reference reads here; a misspelling?)",
                at(path),
                path.join(".")
            ));
        };
        check_item(sub, item, path, at)?;
        path.pop();
    }
    Ok(())
}

fn check_item(
    rule: &Rule,
    item: &toml_edit::Item,
    path: &mut Vec<String>,
    at: &dyn Fn(&[String]) -> String,
) -> Result<(), String> {
    let here =
        |path: &[String], what: &str| format!("{}: key '{}' {what}", at(path), path.join("."));
    match rule {
        Value | Foreign => Ok(()),
        Refused(why) => Err(here(path, &format!("is not supported: {why}"))),
        Table(_) | Open(..) => match item.as_table_like() {
            Some(t) => check(rule, t, path, at),
            None => Err(here(path, "must be a table")),
        },
        Map(each) => match item.as_table_like() {
            Some(t) => {
                for (key, sub) in t.iter() {
                    path.push(key.to_owned());
                    check_item(each, sub, path, at)?;
                    path.pop();
                }
                Ok(())
            }
            None => Err(here(path, "must be a table")),
        },
        Array(each) => match item {
            toml_edit::Item::ArrayOfTables(a) => a.iter().try_for_each(|t| match each {
                Table(_) | Open(..) => check(each, t, path, at),
                _ => Err(here(path, "must be an array of values")),
            }),
            toml_edit::Item::Value(toml_edit::Value::Array(a)) => {
                a.iter().try_for_each(|v| match (each, v) {
                    (Table(_) | Open(..), toml_edit::Value::InlineTable(t)) => {
                        check(each, t, path, at)
                    }
                    (Table(_) | Open(..), _) => Err(here(path, "must be an array of tables")),
                    _ => Ok(()),
                })
            }
            _ => Err(here(path, "must be an array")),
        },
    }
}
