//! The reference's config files of one daemon, read and merged as the
//! reference reads them (its `config-common`), each checked against the
//! reference's keys ([`super::schema`]) with its lines kept for messages.

use std::path::{Path, PathBuf};

use toml::{Table, Value};

use super::schema;

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
        // The message and the place, never the line's text (it may hold a
        // connection string).
        let doc = toml_edit::ImDocument::parse(text.clone()).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            let at = line.map(|l| format!(", line {l}")).unwrap_or_default();
            format!("{}{at}: not TOML: {}", path.display(), e.message().trim())
        })?;
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

    /// The line of `key` in the `index`th `[[principal]]` (or of that
    /// principal, if it has no such key).
    fn line_of_principal(&self, index: usize, key: &str) -> Option<usize> {
        let item = self.doc.as_table().get("principal")?;
        let span = match item {
            toml_edit::Item::ArrayOfTables(a) => {
                let t = a.get(index)?;
                t.get_key_value(key)
                    .and_then(|(k, _)| k.span())
                    .or_else(|| t.span())
            }
            toml_edit::Item::Value(toml_edit::Value::Array(a)) => a.get(index)?.span(),
            _ => None,
        }?;
        let raw = self.doc.raw();
        Some(raw[..span.start.min(raw.len())].matches('\n').count() + 1)
    }

    /// Whether it was made from another file (the super-config).
    pub fn is_synthetic(&self) -> bool {
        self.synthetic
    }

    /// Checks the file against `rule`: the first problem, with its line.
    pub fn check(&self, rule: &schema::Rule) -> Result<(), String> {
        schema::check(rule, self.doc.as_table(), &mut Vec::new(), &|p| self.at(p))
    }

    /// The file as a plain table.
    pub fn table(&self) -> Result<Table, String> {
        self.doc
            .raw()
            .parse::<Table>()
            .map_err(|e| format!("{}: not TOML: {}", self.path.display(), e.message().trim()))
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

    /// Where the `[[principal]]` `p` is (the last file that holds one equal
    /// to it), with the line of its `key` (or of the principal).
    pub fn at_principal(&self, p: &Table, key: &str) -> String {
        for layer in self.layers.iter().rev() {
            let Ok(table) = layer.table() else { continue };
            let Some(index) = table
                .get("principal")
                .and_then(Value::as_array)
                .and_then(|a| a.iter().position(|x| x.as_table() == Some(p)))
            else {
                continue;
            };
            return match layer
                .line_of_principal(index, key)
                .filter(|_| !layer.synthetic)
            {
                Some(line) => format!("{}, line {line}", layer.path.display()),
                None => layer.path.display().to_string(),
            };
        }
        self.at(&["principal", key])
    }

    /// Its files, in the order merged, for messages.
    pub fn files(&self) -> String {
        let names: Vec<String> = self
            .layers
            .iter()
            .map(|l| l.path.display().to_string())
            .collect();
        names.join(", ")
    }

    /// Whether any file was found.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }
}

/// `t[path]`, if present.
pub fn value_at<'a>(t: &'a Table, path: &[&str]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    rest.iter().try_fold(t.get(*first)?, |v, k| v.get(*k))
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
        layer.check(rule)?;
        merge(&mut merged, layer.table()?);
    }
    Ok(Layered {
        daemon,
        layers,
        merged,
    })
}
