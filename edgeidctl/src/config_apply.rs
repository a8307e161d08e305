//! `edgeidctl config apply`: the one file a person edits
//! (`/etc/edgeid/config.toml`) becomes each daemon's own config under
//! `/etc/edgeid/<daemon>.d/config.toml`, 0600 and the daemon's user's, with
//! the principals that let the daemons call each other filled in.
//!
//! All four configs are built and checked by the daemons' own config types
//! first; only if every one is good is anything written (each file
//! atomically), and only daemons whose config changed are restarted.

use std::path::{Path, PathBuf};

use edgeid_certd::config::{CaConfig, EstConfig, RenewalConfig};
use edgeid_identityd::config::{CloudConfig, ModulesConfig, ProvisioningConfig};
use edgeid_keyd::backend::BackendKind;
use edgeid_keyd::config::{BackendOverride, Pkcs11Config, TpmConfig};
use edgeid_workloadapi::config::CertificatePolicy;
use serde::Deserialize;
use toml::{Table, Value};

use crate::apply_files;
use crate::aziot::files::value_at as at;
use crate::daemons::DAEMONS;

/// The user-edited file, typed so that every mistake is reported with the
/// file, line and key (the daemons' own types check each section).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // read for checking; the raw table is what is written out
struct EdgeidConfig {
    #[serde(default)]
    keys: KeysSection,
    #[serde(default)]
    certificates: CertificatesSection,
    provisioning: ProvisioningConfig,
    #[serde(default)]
    modules: Option<ModulesConfig>,
    #[serde(default)]
    cloud: Option<CloudConfig>,
    #[serde(default)]
    workload: WorkloadSection,
    #[serde(default, rename = "orchestrator")]
    orchestrators: Vec<Party>,
    #[serde(default, rename = "module")]
    module_callers: Vec<Party>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct KeysSection {
    backend: Option<BackendKind>,
    #[serde(default, rename = "override")]
    overrides: Vec<BackendOverride>,
    master_key_file: Option<PathBuf>,
    master_key: Option<edgeid_keyd::config::MasterKey>,
    #[serde(default)]
    seal_pcrs: std::collections::BTreeMap<String, Vec<u32>>,
    tpm: Option<TpmConfig>,
    pkcs11: Option<Pkcs11Config>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct CertificatesSection {
    ca: Option<CaConfig>,
    renewal: Option<RenewalConfig>,
    est: Option<EstConfig>,
    leaf_lifetime_days: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct WorkloadSection {
    certificates: Option<CertificatePolicy>,
    manifest_trust_bundle: Option<PathBuf>,
    identity_cache_secs: Option<u64>,
    spiffe: Option<edgeid_workloadapi::config::SpiffeConfig>,
}

/// An orchestrator or a module process: a name and a uid.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Party {
    name: String,
    uid: u32,
}

/// Each daemon's user's (uid, gid), in `DAEMONS` order.
type Users = [(u32, u32); 4];

/// Options of `config apply`.
pub struct Apply {
    /// The user-edited file.
    pub config: PathBuf,
    /// Write under this root (image builds, tests); users are looked up in
    /// its `etc/passwd`.
    pub root: PathBuf,
    /// Check only; write nothing.
    pub dry_run: bool,
    /// Do not restart daemons whose config changed.
    pub no_restart: bool,
    /// Write this daemon's config and those of the daemons it calls (its
    /// unit's `ExecStartPre`, so that a restart reads `/etc/aziot` anew, as
    /// the reference's does); see [`scope`].
    pub only: Option<String>,
}

/// The daemons `--only <daemon>` brings up to date: that daemon, and the
/// daemons it calls, whose configs must match its own (identityd's device
/// key is keyd's preloaded key; certd's issuing keys are keyd's). Those
/// others are restarted if their config changed and they run; the daemon
/// itself is being started by its unit.
fn scope(only: Option<&str>) -> Vec<&'static str> {
    match only {
        None => DAEMONS.iter().map(|d| d.name).collect(),
        Some("identityd") => vec!["identityd", "keyd", "certd"],
        Some("certd") => vec!["certd", "keyd"],
        Some(one) => DAEMONS
            .iter()
            .map(|d| d.name)
            .filter(|d| *d == one)
            .collect(),
    }
}

/// A daemon user's uid and gid from `etc/passwd` under the root.
pub fn user(root: &Path, name: &str) -> Result<(u32, u32), String> {
    let passwd = root.join("etc/passwd");
    let text = std::fs::read_to_string(&passwd)
        .map_err(|e| format!("cannot read {}: {e}", passwd.display()))?;
    text.lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.first() == Some(&name))
        .and_then(|f| Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?)))
        .ok_or_else(|| {
            format!(
                "user '{name}' does not exist in {} (the package's sysusers.d creates it: systemd-sysusers)",
                passwd.display()
            )
        })
}

fn table(pairs: Vec<(&str, Value)>) -> Value {
    Value::Table(pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

fn s(v: &str) -> Value {
    Value::String(v.to_owned())
}

fn strings(v: &[&str]) -> Value {
    Value::Array(v.iter().map(|x| s(x)).collect())
}

fn uid(v: u32) -> Value {
    Value::Integer(i64::from(v))
}

/// Copies `raw[from]` into `out[to]` when present.
fn pass(out: &mut Table, to: &str, raw: &Table, from: &[&str]) {
    if let Some(v) = at(raw, from) {
        out.insert(to.to_owned(), v.clone());
    }
}

/// The four daemon configs, in `DAEMONS` order.
fn build(raw: &Table, users: &Users) -> [Table; 4] {
    let [_ks, cs, id, wl] = users.map(|(u, _)| u);
    let server = |sock: &str| table(vec![("socket", s(&format!("/run/edgeid/{sock}")))]);

    let mut keyd = Table::new();
    keyd.insert("state_dir".into(), s("/var/lib/edgeid/keyd"));
    keyd.insert("server".into(), server("keyd.sock"));
    let mut backend = Table::new();
    backend.insert(
        "default".into(),
        at(raw, &["keys", "backend"])
            .cloned()
            .unwrap_or_else(|| s("software")),
    );
    pass(&mut backend, "override", raw, &["keys", "override"]);
    keyd.insert("backend".into(), Value::Table(backend));
    let mut software = Table::new();
    pass(
        &mut software,
        "master_key_file",
        raw,
        &["keys", "master_key_file"],
    );
    pass(&mut software, "master_key", raw, &["keys", "master_key"]);
    pass(&mut software, "seal_pcrs", raw, &["keys", "seal_pcrs"]);
    if !software.is_empty() {
        keyd.insert("software".into(), Value::Table(software));
    }
    pass(&mut keyd, "tpm", raw, &["keys", "tpm"]);
    pass(&mut keyd, "pkcs11", raw, &["keys", "pkcs11"]);
    // The bases of derivation: module keys, module encryption keys, and a
    // DPS group enrollment's key (the device key is derived from it).
    let mut bases: Vec<String> = edgeid_keyd::config::DEFAULT_DERIVE_ONLY
        .iter()
        .map(|b| (*b).to_owned())
        .collect();
    let attestation = at(raw, &["provisioning", "attestation"]);
    if attestation
        .and_then(|a| a.get("group"))
        .and_then(Value::as_bool)
        .unwrap_or(false)
    {
        let group_key = attestation
            .and_then(|a| a.get("key_id"))
            .and_then(Value::as_str)
            .unwrap_or("dps-enrollment");
        bases.push(group_key.to_owned());
    }
    keyd.insert(
        "derive_only".into(),
        Value::Array(bases.into_iter().map(Value::String).collect()),
    );
    keyd.insert(
        "principal".into(),
        Value::Array(vec![
            table(vec![
                ("name", s("certd")),
                ("uid", uid(cs)),
                (
                    "keys",
                    strings(&[
                        "device-ca",
                        "device-ca.r*",
                        "device-id",
                        "device-id.r*",
                        "module/*",
                        "module-hex/*",
                    ]),
                ),
            ]),
            table(vec![
                ("name", s("identityd")),
                ("uid", uid(id)),
                (
                    "keys",
                    strings(&[
                        "device-id",
                        "device-id.r*",
                        "dps-enrollment",
                        "module-derivation",
                        "module/*",
                        "module-hex/*",
                        // DPS TPM attestation reads the EK and SRK.
                        "tpm/attestation-keys",
                    ]),
                ),
                // Module keys go to the hub when a module is registered.
                ("export", strings(&["module-derivation"])),
            ]),
            table(vec![
                ("name", s("workloadd")),
                ("uid", uid(wl)),
                (
                    "keys",
                    strings(&[
                        "module-derivation",
                        "workload-encryption",
                        "spiffe-jwt/*",
                        // Quotes for modules, and the EK they are proved by.
                        "tpm/quote",
                        "tpm/attestation-keys",
                    ]),
                ),
            ]),
        ]),
    );

    let mut certd = Table::new();
    certd.insert("state_dir".into(), s("/var/lib/edgeid/certd"));
    certd.insert("keyd_socket".into(), s("/run/edgeid/keyd.sock"));
    certd.insert("server".into(), server("certd.sock"));
    pass(&mut certd, "ca", raw, &["certificates", "ca"]);
    pass(&mut certd, "renewal", raw, &["certificates", "renewal"]);
    pass(&mut certd, "est", raw, &["certificates", "est"]);
    pass(
        &mut certd,
        "leaf_lifetime_days",
        raw,
        &["certificates", "leaf_lifetime_days"],
    );
    certd.insert(
        "principal".into(),
        Value::Array(vec![
            table(vec![
                ("name", s("identityd")),
                ("uid", uid(id)),
                ("certs", strings(&["device-id", "module/*", "module-hex/*"])),
                // Device and module ids (no `/` in either).
                ("names", strings(&["*"])),
            ]),
            table(vec![
                ("name", s("workloadd")),
                ("uid", uid(wl)),
                // workload/module/<id>/<kind>: a subtree.
                ("certs", strings(&["workload/**"])),
                // Module ids and server names (which workloadd checks per
                // module), and SPIFFE IDs (which hold `/`); no other URI.
                ("names", strings(&["*", "spiffe://**"])),
            ]),
        ]),
    );

    let parties = |key: &str| -> Vec<Value> {
        at(raw, &[key])
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let mut identityd = Table::new();
    identityd.insert("state_dir".into(), s("/var/lib/edgeid/identityd"));
    identityd.insert("keyd_socket".into(), s("/run/edgeid/keyd.sock"));
    identityd.insert("certd_socket".into(), s("/run/edgeid/certd.sock"));
    identityd.insert("server".into(), server("identityd.sock"));
    pass(&mut identityd, "provisioning", raw, &["provisioning"]);
    pass(&mut identityd, "modules", raw, &["modules"]);
    pass(&mut identityd, "cloud", raw, &["cloud"]);
    let mut principals = vec![table(vec![
        ("name", s("workloadd")),
        ("uid", uid(wl)),
        ("role", s("orchestrator")),
    ])];
    for p in parties("orchestrator") {
        principals.push(table(vec![
            (
                "name",
                p.get("name").cloned().unwrap_or_else(|| s("orchestrator")),
            ),
            ("uid", p.get("uid").cloned().unwrap_or(Value::Integer(-1))),
            ("role", s("orchestrator")),
        ]));
    }
    for p in parties("module") {
        principals.push(table(vec![
            (
                "name",
                p.get("name").cloned().unwrap_or_else(|| s("module")),
            ),
            ("uid", p.get("uid").cloned().unwrap_or(Value::Integer(-1))),
            ("role", s("module")),
        ]));
    }
    identityd.insert("principal".into(), Value::Array(principals));

    let mut workloadd = Table::new();
    workloadd.insert("identityd_socket".into(), s("/run/edgeid/identityd.sock"));
    workloadd.insert("keyd_socket".into(), s("/run/edgeid/keyd.sock"));
    workloadd.insert("certd_socket".into(), s("/run/edgeid/certd.sock"));
    workloadd.insert("sockets_dir".into(), s("/run/edgeid/modules"));
    workloadd.insert("server".into(), server("workload.sock"));
    pass(
        &mut workloadd,
        "certificates",
        raw,
        &["workload", "certificates"],
    );
    pass(
        &mut workloadd,
        "manifest_trust_bundle",
        raw,
        &["workload", "manifest_trust_bundle"],
    );
    pass(
        &mut workloadd,
        "identity_cache_secs",
        raw,
        &["workload", "identity_cache_secs"],
    );
    pass(&mut workloadd, "spiffe", raw, &["workload", "spiffe"]);
    workloadd.insert(
        "orchestrator_uids".into(),
        Value::Array(
            parties("orchestrator")
                .iter()
                .filter_map(|p| p.get("uid").cloned())
                .collect(),
        ),
    );
    workloadd.insert("module".into(), Value::Array(parties("module")));

    [keyd, certd, identityd, workloadd]
}

/// A daemon's config as the text written.
fn config_text(config: &Table, aziot: bool) -> String {
    format!(
        "# Written by `edgeidctl config apply` from /etc/edgeid/config.toml{}; edit {}, not this one.\n{}",
        if aziot { " and the reference's files under /etc/aziot" } else { "" },
        if aziot { "those" } else { "that file" },
        toml::to_string(config).unwrap_or_default()
    )
}

/// Checks a generated config with the daemon's own config type.
fn check_generated(daemon: &str, text: &str) -> Result<(), String> {
    let name = PathBuf::from(format!("<generated {daemon} config>"));
    let p = &name;
    let problem = |e: String| {
        format!("{daemon}: {e} (a bug in config apply, or a value only {daemon} checks)")
    };
    match daemon {
        "keyd" => edgeid_common::config::parse::<edgeid_keyd::KeydConfig>(p, text)
            .map(|_| ())
            .map_err(|e| problem(e.to_string())),
        "certd" => edgeid_common::config::parse::<edgeid_certd::CertdConfig>(p, text)
            .map_err(|e| problem(e.to_string()))?
            .validate()
            .map_err(problem),
        "identityd" => edgeid_common::config::parse::<edgeid_identityd::IdentitydConfig>(p, text)
            .map_err(|e| problem(e.to_string()))?
            .validate()
            .map_err(problem),
        _ => edgeid_common::config::parse::<edgeid_workloadapi::WorkloadConfig>(p, text)
            .map_err(|e| problem(e.to_string()))?
            .validate()
            .map_err(problem),
    }
}

/// Steps 1-3 of `apply`: everything checked, nothing written.
pub fn check_only(opts: &Apply) -> Result<(), String> {
    prepare(opts).map(|_| ())
}

/// The user's file checked, the users found, every daemon's config built
/// (with what the reference's files under `/etc/aziot` say) and checked by
/// the daemon's own types.
fn prepare(opts: &Apply) -> Result<(Vec<String>, Users, crate::aziot::Overlay), String> {
    // 1. The user's file, checked with file, line and key in every message.
    let _typed: EdgeidConfig =
        edgeid_common::config::load(&opts.config).map_err(|e| e.to_string())?;
    let text = std::fs::read_to_string(&opts.config)
        .map_err(|e| format!("cannot read {}: {e}", opts.config.display()))?;
    let raw: Table = text
        .parse()
        .map_err(|e| format!("config file {}: {e}", opts.config.display()))?;
    // 2. The daemons' users.
    let mut users = [(0u32, 0u32); 4];
    for (i, d) in DAEMONS.iter().enumerate() {
        users[i] = user(&opts.root, d.user)?;
    }
    // 3. Every daemon's config, checked by the daemon's own types, before anything is written.
    let mut tables = build(&raw, &users);
    let mut named: Vec<(&str, &mut Table)> = DAEMONS
        .iter()
        .map(|d| d.name)
        .zip(tables.iter_mut())
        .collect();
    let scope = scope(opts.only.as_deref());
    let overlay = crate::aziot::overlay(&opts.root, &mut named, &|d: &str| scope.contains(&d))?;
    let aziot = !overlay.notes.is_empty();
    let configs: Vec<String> = tables.iter().map(|t| config_text(t, aziot)).collect();
    for (d, text) in DAEMONS.iter().zip(&configs) {
        if scope.contains(&d.name) {
            check_generated(d.name, text)?;
        }
    }
    Ok((configs, users, overlay))
}

/// `edgeidctl config apply`.
pub fn apply(opts: &Apply) -> Result<(), String> {
    if let Some(only) = &opts.only {
        if !DAEMONS.iter().any(|d| d.name == only) {
            return Err(format!(
                "--only {only}: not a daemon (keyd, certd, identityd, workloadd)"
            ));
        }
    }
    let one_at_a_time = match opts.dry_run {
        true => None,
        false => apply_files::one_at_a_time(&opts.config)?,
    };
    let (configs, users, overlay) = prepare(opts)?;
    for note in &overlay.notes {
        outln!("{note}");
    }
    if opts.dry_run {
        outln!(
            "{}: good; nothing written (--dry-run)",
            opts.config.display()
        );
        return Ok(());
    }
    // 4. Write what changed; restart those daemons.
    let mut changed = Vec::new();
    // Daemons read these at start: a new one restarts its daemon.
    let scope = scope(opts.only.as_deref());
    for (daemon, secret, rel, what) in overlay.secrets() {
        let Some(i) = DAEMONS.iter().position(|d| d.name == daemon) else {
            continue;
        };
        if !scope.contains(&daemon) {
            continue;
        }
        if apply_files::write_secret(&opts.root, rel, secret, daemon, what, users[i])?
            && opts.only.as_deref() != Some(daemon)
            && !changed.contains(&daemon)
        {
            changed.push(daemon);
        }
    }
    for ((d, text), (uid, gid)) in DAEMONS.iter().zip(&configs).zip(users) {
        let daemon = d.name;
        if !scope.contains(&daemon) {
            continue;
        }
        let dir = opts.root.join(format!("etc/edgeid/{daemon}.d"));
        let file = dir.join("config.toml");
        if std::fs::read_to_string(&file).ok().as_deref() == Some(text.as_str()) {
            outln!("{daemon:<10} unchanged  {}", file.display());
            continue;
        }
        apply_files::write_private(&file, text.as_bytes(), (uid, gid))?;
        outln!("{daemon:<10} written    {}", file.display());
        if opts.only.as_deref() != Some(daemon) && !changed.contains(&daemon) {
            changed.push(daemon);
        }
    }
    // Released before the restarts: each restarted unit's ExecStartPre is
    // a config apply of its own, which takes it.
    drop(one_at_a_time);
    let systemd = opts.root == Path::new("/") && Path::new("/run/systemd/system").exists();
    if !opts.no_restart && systemd && !changed.is_empty() {
        let units: Vec<String> = changed
            .iter()
            .map(|d| format!("edgeid-{d}.service"))
            .collect();
        let status = std::process::Command::new("systemctl")
            .arg("try-restart")
            .args(&units)
            .status()
            .map_err(|e| format!("cannot run systemctl: {e}"))?;
        if !status.success() {
            return Err(format!(
                "systemctl try-restart {} failed: {status}",
                units.join(" ")
            ));
        }
        outln!("restarted (if running): {}", units.join(" "));
    }
    Ok(())
}
