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

pub mod map;
pub mod schema;
pub mod state;
pub mod superconfig;

use std::path::{Path, PathBuf};

use toml::{Table, Value};

/// One file's text, parsed with its spans.
pub struct Layer {
    /// Where it is.
    pub path: PathBuf,
    doc: toml_edit::ImDocument<String>,
    /// Made here from another file (the super-config): its lines are not the file's.
    synthetic: bool,
}

impl Layer {
    /// Parses `text`, read from `path`.
    pub fn parse(path: &Path, text: String) -> Result<Self, String> {
        let doc = toml_edit::ImDocument::parse(text)
            .map_err(|e| format!("{}: {}", path.display(), e.to_string().trim()))?;
        Ok(Self {
            path: path.to_owned(),
            doc,
            synthetic: false,
        })
    }

    /// A layer made from `table`, standing for (a part of) the file at `path`.
    pub fn synthetic(path: &Path, table: &Table) -> Result<Self, String> {
        let text = toml::to_string(table).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Self {
            synthetic: true,
            ..Self::parse(path, text)?
        })
    }

    /// `file, line N` of the key at `path`, or the file alone.
    pub fn at(&self, path: &[String]) -> String {
        match self.line_of(path).filter(|_| !self.synthetic) {
            Some(line) => format!("{}, line {line}", self.path.display()),
            None => self.path.display().to_string(),
        }
    }

    fn line_of(&self, path: &[String]) -> Option<usize> {
        let mut table: &dyn toml_edit::TableLike = self.doc.as_table();
        let mut span = None;
        for (i, key) in path.iter().enumerate() {
            let (k, item) = table.get_key_value(key)?;
            span = k.span().or_else(|| item.span()).or(span);
            if i + 1 == path.len() {
                break;
            }
            table = match item {
                toml_edit::Item::ArrayOfTables(a) => {
                    // The first element that has the next key.
                    let next = &path[i + 1];
                    a.iter().find(|t| t.contains_key(next))? as &dyn toml_edit::TableLike
                }
                other => other.as_table_like()?,
            };
        }
        let start = span?.start;
        Some(
            self.doc.raw()[..start.min(self.doc.raw().len())]
                .matches('\n')
                .count()
                + 1,
        )
    }

    /// The file as a plain table.
    fn table(&self) -> Result<Table, String> {
        self.doc
            .raw()
            .parse::<Table>()
            .map_err(|e| format!("{}: {}", self.path.display(), e.to_string().trim()))
    }
}

/// A daemon's config as the reference reads it: its layers and their merge.
pub struct Layered {
    /// The daemon (`keyd`, `certd`, `identityd`, `tpmd`).
    pub daemon: &'static str,
    /// The files, in the order merged.
    pub layers: Vec<Layer>,
    /// Their merge.
    pub merged: Table,
}

impl Layered {
    /// Where the key at `path` was last set (the file whose value counts), with its line.
    pub fn at(&self, path: &[&str]) -> String {
        let path: Vec<String> = path.iter().map(|s| (*s).to_owned()).collect();
        self.layers
            .iter()
            .rev()
            .find(|l| l.line_of(&path).is_some())
            .map(|l| l.at(&path))
            .unwrap_or_else(|| format!("the reference's {} config", self.daemon))
    }

    /// Whether any file was found.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }
}

/// The reference's merge: tables key by key (recursively), arrays
/// appended, anything else replaced.
pub fn merge(into: &mut Table, from: Table) {
    for (key, value) in from {
        match (into.get_mut(&key), value) {
            (Some(Value::Table(a)), Value::Table(b)) => merge(a, b),
            (Some(Value::Array(a)), Value::Array(b)) => a.extend(b),
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
}

/// Reads `<root>/etc/aziot/<daemon>/config.toml` and its `config.d`, with
/// `super_part` (this daemon's part of the super-config) in the place of a
/// missing `config.d/00-super.toml`; each file checked against the
/// reference's keys.
pub fn read(
    root: &Path,
    daemon: &'static str,
    rule: &schema::Rule,
    super_part: Option<Layer>,
) -> Result<Layered, String> {
    let base = root.join("etc/aziot").join(daemon);
    let mut layers = Vec::new();
    let main = base.join("config.toml");
    match std::fs::read_to_string(&main) {
        Ok(text) => layers.push(Layer::parse(&main, text)?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot read {}: {e}", main.display())),
    }
    let dir = base.join("config.d");
    enum Entry {
        File(PathBuf),
        Super(Box<Layer>),
    }
    let mut entries: Vec<(std::ffi::OsString, Entry)> = Vec::new();
    match std::fs::read_dir(&dir) {
        Ok(found) => {
            for entry in found {
                let entry = entry.map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
                let is_file = entry
                    .file_type()
                    .map_err(|e| format!("cannot read {}: {e}", entry.path().display()))?
                    .is_file();
                let path = entry.path();
                if is_file && path.extension().is_some_and(|x| x == "toml") {
                    entries.push((entry.file_name(), Entry::File(path)));
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot read {}: {e}", dir.display())),
    }
    if let Some(part) = super_part {
        if !entries.iter().any(|(name, _)| name == "00-super.toml") {
            entries.push(("00-super.toml".into(), Entry::Super(Box::new(part))));
        }
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    for (_, entry) in entries {
        layers.push(match entry {
            Entry::Super(part) => *part,
            Entry::File(path) => {
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                Layer::parse(&path, text)?
            }
        });
    }
    let mut merged = Table::new();
    for layer in &layers {
        schema::check(rule, layer.doc.as_table(), &mut Vec::new(), &|p| {
            layer.at(p)
        })?;
        merge(&mut merged, layer.table()?);
    }
    Ok(Layered {
        daemon,
        layers,
        merged,
    })
}

/// What the reference's configs added, for `config apply` to report and write.
#[derive(Default)]
pub struct Overlay {
    /// Lines to print: which files were read, what they replaced.
    pub notes: Vec<String>,
    /// The device key an inline super-config key becomes (keyd's preloaded file).
    pub device_key: Option<zeroize::Zeroizing<Vec<u8>>>,
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
        let part = match &parts {
            Some(p) => p.layer(name)?,
            None => None,
        };
        if name == "keyd" {
            // keyd holds the TPM: tpmd's settings are checked with it.
            let tpm_part = match &parts {
                Some(p) => p.layer("tpmd")?,
                None => None,
            };
            map::tpmd(&read(root, "tpmd", &schema::TPMD, tpm_part)?)?;
        }
        let layered = read(root, name, rule, part)?;
        if layered.is_empty() {
            continue;
        }
        let files: Vec<String> = layered
            .layers
            .iter()
            .map(|l| l.path.display().to_string())
            .collect();
        out.notes.push(format!(
            "{name:<10} reads the reference's {}",
            files.join(", ")
        ));
        match name {
            "keyd" => {
                map::keyd(&layered, config)?;
                if layered.layers.iter().any(|l| l.synthetic) {
                    out.device_key = parts.as_ref().and_then(|p| p.device_key.clone());
                }
            }
            "certd" => map::certd(&layered, config)?,
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
    Ok(out)
}
