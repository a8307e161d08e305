//! The reference's configuration, as a device that ran aziot-identity-service
//! (or IoT Edge) has it: each daemon's `/etc/aziot/<daemon>/config.toml`
//! and `config.d/*.toml` drop-ins (what `aziotctl config apply` and
//! `iotedge config apply` write, and how host packages add principals), and
//! the super-config `/etc/aziot/config.toml`. `edgeidctl config apply`
//! reads them as a second input beside `/etc/edgeid/config.toml` and writes
//! what they say into each daemon's own config ([`map`]).
//!
//! Read as the reference reads them (its `config-common`): the main file
//! (absent: empty), then the drop-ins, regular `*.toml` files only (links
//! are skipped), in byte order of their names, each merged into what came
//! before: tables key by key, arrays appended, other values replaced.
//!
//! The super-config is what those tools turn into `config.d/00-super.toml`;
//! where a daemon has no `00-super.toml` (neither tool ran, as on a device
//! without aziotctl, which the edgeid package replaces), its part of the
//! super-config is read in that file's place.

pub mod est;
pub mod files;
pub mod keyd;
pub mod map;
pub mod pkcs11;
mod read;
pub mod renewal;
pub mod schema;
pub mod state;
pub mod superconfig;

use std::path::Path;

use toml::Table;

use files::read;

/// What the reference's configs added, for `config apply` to report and write.
#[derive(Default)]
pub struct Overlay {
    /// Lines to print: which files were read, what they replaced.
    pub notes: Vec<String>,
    /// The device key an inline super-config key becomes (keyd's preloaded file).
    pub device_key: Option<zeroize::Zeroizing<Vec<u8>>>,
    /// The PIN a `pkcs11:` URI gave, for [`map::PKCS11_PIN_FILE`].
    pub pkcs11_pin: Option<zeroize::Zeroizing<String>>,
    /// The EST password, for [`est::EST_PASSWORD_FILE`].
    pub est_password: Option<zeroize::Zeroizing<String>>,
}

impl Overlay {
    /// The secrets daemons read from files `config apply` writes: each
    /// one's daemon, bytes, file (under the root) and what it is.
    pub fn secrets(&self) -> Vec<(&'static str, &[u8], &'static str, &'static str)> {
        let device_key = self.device_key.as_ref().map(|k| {
            let what = "the device key of /etc/aziot/config.toml";
            ("keyd", k.as_slice(), superconfig::DEVICE_KEY_FILE, what)
        });
        let pin = self.pkcs11_pin.as_ref().map(|p| {
            let what = "the PKCS#11 PIN of the reference's pkcs11: URI";
            ("keyd", p.as_bytes(), map::PKCS11_PIN_FILE, what)
        });
        let password = self.est_password.as_ref().map(|p| {
            let what = "the EST password of the reference's [cert_issuance.est]";
            ("certd", p.as_bytes(), est::EST_PASSWORD_FILE, what)
        });
        device_key.into_iter().chain(pin).chain(password).collect()
    }
}

/// Reads the reference's configs under `root` and writes what they say into
/// edgeid's daemon configs (`keyd`, `certd`, `identityd` by name; those
/// `wanted` only). Nothing there: nothing changes.
pub fn overlay(
    root: &Path,
    configs: &mut [(&str, &mut Table)],
    wanted: &dyn Fn(&str) -> bool,
) -> Result<Overlay, String> {
    let parts = superconfig::read(root)?;
    let (left_keys, left_certs) = state::taken_over(root);
    let mut out = Overlay::default();
    for (daemon, config) in configs.iter_mut() {
        let (name, rule): (&'static str, &schema::Rule) = match *daemon {
            "keyd" => ("keyd", &schema::KEYD),
            "certd" => ("certd", &schema::CERTD),
            "identityd" => ("identityd", &schema::IDENTITYD),
            _ => continue,
        };
        if !wanted(name) {
            continue;
        }
        match name {
            "keyd" => take_over(name, "imported_key", &left_keys, config, &mut out.notes),
            "certd" => take_over(name, "imported_cert", &left_certs, config, &mut out.notes),
            _ => {}
        }
        // A daemon's part of the super-config, standing for its 00-super.toml.
        let part_of = |d: &str| parts.as_ref().map(|p| p.layer(d)).transpose();
        if name == "keyd" {
            // The keys certd signs with, by certd's configs.
            let certd = read(root, "certd", &schema::CERTD, part_of("certd")?.flatten())?;
            keyd::grant_certd(&certd, config);
            // keyd holds the TPM: tpmd's settings are checked with it.
            let tpmd = read(root, "tpmd", &schema::TPMD, part_of("tpmd")?.flatten())?;
            map::tpmd(&tpmd)?;
        }
        let layered = read(root, name, rule, part_of(name)?.flatten())?;
        if !layered.is_empty() {
            out.notes.push(format!(
                "{name:<10} reads the reference's {}",
                layered.files()
            ));
            match name {
                "keyd" => {
                    out.pkcs11_pin = map::keyd(&layered, config)?;
                    if layered.layers.iter().any(files::Layer::is_synthetic) {
                        out.device_key = parts.as_ref().and_then(|p| p.device_key.clone());
                    }
                }
                "certd" => out.est_password = map::certd(&layered, config)?,
                _ => {
                    if map::identityd(&layered, config)? {
                        out.notes.push(format!(
                            "{name:<10} provisioning from the reference's config ({}), not /etc/edgeid/config.toml's",
                            layered.at(&["provisioning", "source"])
                        ));
                    }
                }
            }
        }
        if name == "certd" {
            // certd renews the identity certificate identityd's config names.
            let identityd = part_of("identityd")?.flatten();
            let identityd = read(root, "identityd", &schema::IDENTITYD, identityd)?;
            renewal::into_certd(&identityd, config)?;
        }
    }
    Ok(out)
}

/// keyd's `[[imported_key]]` and certd's `[[imported_cert]]` (`table`):
/// the files an installed aziot-identity-service left that they take over
/// ([`state::taken_over`]).
fn take_over(
    daemon: &str,
    table: &str,
    found: &state::Found,
    config: &mut Table,
    notes: &mut Vec<String>,
) {
    if found.is_empty() {
        return;
    }
    notes.push(format!(
        "{daemon:<10} takes over, once, what aziot-identity-service left: {}",
        found
            .iter()
            .map(|(id, _)| id.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let entries = found
        .iter()
        .map(|(id, file)| {
            let mut entry = Table::new();
            entry.insert("id".into(), toml::Value::String(id.clone()));
            entry.insert(
                "file".into(),
                toml::Value::String(file.display().to_string()),
            );
            if let Some(kind) = state::symmetric_kind(id).filter(|_| table == "imported_key") {
                entry.insert("symmetric".into(), toml::Value::String(kind.into()));
            }
            toml::Value::Table(entry)
        })
        .collect();
    config.insert(table.into(), toml::Value::Array(entries));
}
