//! Reading the reference's configs: typed values with the file and line of
//! a bad one, and the small table edits [`super::map`] writes with.

use toml::{Table, Value};

use super::files::{value_at as get, Layered};

/// Reading typed values, with the place of a bad one in the error.
pub(super) struct Reader<'a>(pub(super) &'a Layered);

impl Reader<'_> {
    pub(super) fn bad(&self, path: &[&str], what: &str) -> String {
        format!("{}: key '{}' {what}", self.0.at(path), path.join("."))
    }

    pub(super) fn str(&self, path: &[&str]) -> Result<Option<String>, String> {
        match get(&self.0.merged, path) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(self.bad(path, "must be a string")),
        }
    }

    pub(super) fn need_str(&self, path: &[&str]) -> Result<String, String> {
        self.str(path)?.ok_or_else(|| {
            format!(
                "the reference's {} config ({}): key '{}' is missing",
                self.0.daemon,
                self.0.files(),
                path.join(".")
            )
        })
    }

    pub(super) fn uint(&self, path: &[&str]) -> Result<Option<i64>, String> {
        match get(&self.0.merged, path) {
            None => Ok(None),
            Some(Value::Integer(n)) if *n >= 0 => Ok(Some(*n)),
            Some(_) => Err(self.bad(path, "must be a non-negative integer")),
        }
    }

    pub(super) fn bool(&self, path: &[&str]) -> Result<Option<bool>, String> {
        match get(&self.0.merged, path) {
            None => Ok(None),
            Some(Value::Boolean(b)) => Ok(Some(*b)),
            Some(_) => Err(self.bad(path, "must be true or false")),
        }
    }

    pub(super) fn strings(&self, path: &[&str]) -> Result<Vec<String>, String> {
        match get(&self.0.merged, path) {
            None => Ok(Vec::new()),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| v.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| self.bad(path, "must be an array of strings")),
            Some(_) => Err(self.bad(path, "must be an array of strings")),
        }
    }

    /// The `[[principal]]` entries, each with its index.
    pub(super) fn principals(&self) -> Vec<&Table> {
        match get(&self.0.merged, &["principal"]) {
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_table).collect(),
            _ => Vec::new(),
        }
    }

    /// A principal's `key`, typed by `f`, with the place of the principal.
    pub(super) fn principal_field<T>(
        &self,
        p: &Table,
        key: &str,
        f: impl Fn(&Value) -> Option<T>,
        what: &str,
    ) -> Result<T, String> {
        p.get(key).and_then(&f).ok_or_else(|| {
            format!(
                "{}: a [[principal]] ({}) {}",
                self.0.at_principal(p, key),
                principal_shown(p),
                if p.contains_key(key) {
                    format!("has a bad '{key}': it must be {what}")
                } else {
                    format!("has no '{key}'")
                }
            )
        })
    }
}

pub(super) fn principal_shown(p: &Table) -> String {
    p.iter()
        .filter(|(k, _)| *k == "uid" || *k == "name")
        .map(|(k, v)| format!("{k} = {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) fn as_uid(v: &Value) -> Option<u32> {
    v.as_integer().and_then(|n| u32::try_from(n).ok())
}

pub(super) fn string_list(v: &Value) -> Option<Vec<Value>> {
    let a = v.as_array()?;
    a.iter().all(Value::is_str).then(|| a.clone())
}

pub(super) fn sub<'a>(t: &'a mut Table, key: &str) -> &'a mut Table {
    let v = t
        .entry(key.to_owned())
        .or_insert_with(|| Value::Table(Table::new()));
    if !v.is_table() {
        *v = Value::Table(Table::new());
    }
    match v {
        Value::Table(t) => t,
        _ => unreachable_table(),
    }
}

pub(super) fn unreachable_table() -> ! {
    // `sub` has just made it a table.
    unreachable!("a table was just inserted")
}

pub(super) fn push(t: &mut Table, key: &str, v: Value) {
    match t
        .entry(key.to_owned())
        .or_insert_with(|| Value::Array(Vec::new()))
    {
        Value::Array(a) => a.push(v),
        other => *other = Value::Array(vec![v]),
    }
}

/// `max_requests` (concurrent requests per uid in the reference) becomes the
/// connections one uid may hold, the same share by another count.
pub(super) fn max_requests(r: &Reader, out: &mut Table) -> Result<(), String> {
    if let Some(n) = r.uint(&["max_requests"])? {
        if n == 0 {
            return Err(r.bad(&["max_requests"], "must be at least 1"));
        }
        sub(out, "server").insert("max_connections_per_caller".into(), Value::Integer(n));
    }
    Ok(())
}

/// The path of a `file:` URI, as the reference writes them (`file:///abs/path`).
pub(super) fn file_uri(r: &Reader, path: &[&str], uri: &str) -> Result<String, String> {
    if uri.starts_with("pkcs11:") {
        return Err(r.bad(
            path,
            "names a key in a PKCS#11 token: edgeid cannot take a token's own objects yet; \
             let keyd create the key in its [keys.pkcs11] token instead",
        ));
    }
    let Some(file) = uri.strip_prefix("file://") else {
        return Err(r.bad(
            path,
            &format!("'{uri}': unrecognized scheme (file: or pkcs11:)"),
        ));
    };
    if !file.starts_with('/') || file.contains(['%', '?', '#']) {
        return Err(r.bad(
            path,
            &format!("'{uri}': give a file:///absolute/path with no %-escapes, query or fragment"),
        ));
    }
    Ok(file.to_owned())
}

pub(super) fn aziot_principal(uid: u32, what: &str, grants: Vec<Value>) -> Value {
    Value::Table(Table::from_iter([
        (
            "name".to_owned(),
            Value::String(format!("aziot principal uid {uid}")),
        ),
        ("uid".to_owned(), Value::Integer(i64::from(uid))),
        (what.to_owned(), Value::Array(grants)),
    ]))
}
