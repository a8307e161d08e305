//! The house rules every crate keeps, checked on its source with a real
//! Rust parser (syn), not by grepping:
//! - **no circle between files**: within a crate, a file that names an item
//!   of another file (through `crate::`, `super::`, `self::` or a child
//!   module's name) depends on it, and those dependencies form no cycle. A
//!   `mod.rs` that re-exports its children (`pub use child::Item`) is a
//!   table of contents, not a dependency; the crate root (`lib.rs`,
//!   `main.rs`), which declares every module and starts the daemon, is left
//!   out.
//! - **no file over 600 lines** in a crate's `src/`, except those named
//!   below with the one job each does.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use syn::visit::Visit;

const CRATES: &[&str] = &[
    "common",
    "keyd",
    "certd",
    "identityd",
    "workloadapi",
    "edgeidctl",
    "bench",
    "tests",
];

/// Files over the limit, each doing one job.
const LONG_FILES: &[(&str, &str)] = &[
    (
        "keyd/src/backend/tpm/mod.rs",
        "the TPM key store: one backend behind keyd's Backend trait",
    ),
    (
        "keyd/src/backend/pkcs11.rs",
        "the PKCS#11 key store: one backend behind keyd's Backend trait",
    ),
    (
        "certd/src/certs/mod.rs",
        "certd's domain: one certificate's authorization, issuance, import and renewal",
    ),
    (
        "bench/src/main.rs",
        "the benchmark command (issue 22 gives it a floor server and splits it)",
    ),
    (
        "tests/src/cloud.rs",
        "one test fixture: the DPS and IoT Hub stand-in, sharing one enrolment state",
    ),
];

const MAX_LINES: usize = 600;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the workspace")
        .to_owned()
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_owned()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// A file's module path in its crate: `src/server/http1.rs` is
/// `["server", "http1"]`, `src/server/mod.rs` is `["server"]`, the root `[]`.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    if parts.len() == 1 && (parts[0] == "lib" || parts[0] == "main") {
        parts.clear();
    }
    // A binary's other files hang off main.rs as its children (src/bin is not used here).
    parts
}

/// Every path a file names that starts in the crate, made absolute.
struct Names<'a> {
    /// The module the visitor is in (the file's, then inline modules).
    here: Vec<String>,
    /// Modules that are files, to know what a relative first segment is.
    file_modules: &'a BTreeSet<Vec<String>>,
    found: Vec<Vec<String>>,
    /// Inside a `pub use` of a table-of-contents file.
    in_reexport: bool,
    is_facade_file: bool,
}

impl Names<'_> {
    fn absolute(&self, segments: &[String]) -> Option<Vec<String>> {
        let first = segments.first()?;
        let mut base: Vec<String> = match first.as_str() {
            "crate" => Vec::new(),
            "self" => self.here.clone(),
            "super" => {
                let mut up = self.here.clone();
                let mut rest = segments;
                while rest.first().is_some_and(|s| s == "super") {
                    up.pop()?;
                    rest = &rest[1..];
                }
                let mut out = up;
                out.extend(rest.iter().cloned());
                return Some(out);
            }
            // A relative path naming a child module of this one.
            name => {
                let mut child = self.here.clone();
                child.push(name.to_owned());
                if !self.file_modules.contains(&child) {
                    return None;
                }
                let mut out = self.here.clone();
                out.extend(segments.iter().cloned());
                return Some(out);
            }
        };
        base.extend(segments[1..].iter().cloned());
        Some(base)
    }

    fn record(&mut self, segments: Vec<String>) {
        if self.in_reexport {
            return;
        }
        if let Some(abs) = self.absolute(&segments) {
            self.found.push(abs);
        }
    }

    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Name(n) => {
                let mut full = prefix.clone();
                full.push(n.ident.to_string());
                self.record(full);
            }
            syn::UseTree::Rename(r) => {
                let mut full = prefix.clone();
                full.push(r.ident.to_string());
                self.record(full);
            }
            syn::UseTree::Glob(_) => self.record(prefix.clone()),
            syn::UseTree::Group(g) => {
                for t in &g.items {
                    self.use_tree(prefix, t);
                }
            }
        }
    }
}

impl<'ast> Visit<'ast> for Names<'_> {
    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        if m.content.is_some() {
            self.here.push(m.ident.to_string());
            syn::visit::visit_item_mod(self, m);
            self.here.pop();
        }
    }

    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        let reexport = matches!(u.vis, syn::Visibility::Public(_)) && self.is_facade_file;
        self.in_reexport = reexport;
        self.use_tree(&mut Vec::new(), &u.tree);
        self.in_reexport = false;
    }

    fn visit_path(&mut self, p: &'ast syn::Path) {
        // A one-segment path is a local name (a variable `grpc` is not the
        // module `grpc`); an item of another file is reached by a longer
        // path or through a `use`, which is read above.
        if p.leading_colon.is_none() && p.segments.len() > 1 {
            let segments: Vec<String> = p.segments.iter().map(|s| s.ident.to_string()).collect();
            self.record(segments);
        }
        syn::visit::visit_path(self, p);
    }

    fn visit_macro(&mut self, m: &'ast syn::Macro) {
        // Paths inside macro calls (`format!`, `tracing::warn!`...) are
        // tokens; the ones that matter are also named outside them.
        syn::visit::visit_macro(self, m);
    }
}

/// The longest prefix of `path` that is a file module.
fn file_of(path: &[String], file_modules: &BTreeSet<Vec<String>>) -> Option<Vec<String>> {
    (0..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|p| file_modules.contains(p))
}

/// The dependency graph of one crate's files (module paths).
fn graph(crate_dir: &Path) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let src = crate_dir.join("src");
    let files = rust_files(&src);
    let file_modules: BTreeSet<Vec<String>> = files.iter().map(|f| module_of(&src, f)).collect();
    let mut edges = BTreeMap::new();
    for file in &files {
        let module = module_of(&src, file);
        if module.is_empty() {
            continue;
        }
        let text = std::fs::read_to_string(file).unwrap();
        let parsed = syn::parse_file(&text)
            .unwrap_or_else(|e| panic!("{}: does not parse: {e}", file.display()));
        let is_facade_file = file.file_name().is_some_and(|n| n == "mod.rs");
        let mut names = Names {
            here: module.clone(),
            file_modules: &file_modules,
            found: Vec::new(),
            in_reexport: false,
            is_facade_file,
        };
        names.visit_file(&parsed);
        let deps: BTreeSet<Vec<String>> = names
            .found
            .iter()
            .filter_map(|p| file_of(p, &file_modules))
            .filter(|target| !target.is_empty() && *target != module)
            .collect();
        edges.insert(module, deps);
    }
    edges
}

/// A cycle in the graph, if there is one.
fn find_cycle(edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn walk(
        node: &Vec<String>,
        edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        marks: &mut BTreeMap<Vec<String>, Mark>,
        stack: &mut Vec<Vec<String>>,
    ) -> Option<Vec<String>> {
        marks.insert(node.clone(), Mark::Open);
        stack.push(node.clone());
        for next in edges.get(node).into_iter().flatten() {
            match marks.get(next) {
                Some(Mark::Open) => {
                    let from = stack.iter().position(|n| n == next).unwrap();
                    let mut cycle: Vec<String> =
                        stack[from..].iter().map(|m| m.join("::")).collect();
                    cycle.push(next.join("::"));
                    return Some(cycle);
                }
                Some(Mark::Done) => {}
                None => {
                    if let Some(c) = walk(next, edges, marks, stack) {
                        return Some(c);
                    }
                }
            }
        }
        stack.pop();
        marks.insert(node.clone(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for node in edges.keys() {
        if !marks.contains_key(node) {
            if let Some(c) = walk(node, edges, &mut marks, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

#[test]
fn no_file_of_a_crate_reaches_up_in_a_circle() {
    let root = workspace();
    let mut circles = Vec::new();
    for krate in CRATES {
        let edges = graph(&root.join(krate));
        assert!(edges.len() > 1, "{krate}: no files found");
        if let Some(cycle) = find_cycle(&edges) {
            circles.push(format!("{krate}: {}", cycle.join(" -> ")));
        }
    }
    assert!(
        circles.is_empty(),
        "files that depend on each other in a circle:\n{}",
        circles.join("\n")
    );
}

#[test]
fn the_circle_check_sees_a_circle() {
    // Two files naming each other, as identityd's config and provision did.
    let dir = edgeid_testkit::temp_dir();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("lib.rs"), "mod a;\nmod b;\n").unwrap();
    std::fs::write(src.join("a.rs"), "use crate::b::B;\npub struct A(B);\n").unwrap();
    std::fs::write(
        src.join("b.rs"),
        "pub struct B;\nfn f() { let _ = super::a::A(B); }\n",
    )
    .unwrap();
    let cycle = find_cycle(&graph(dir.path())).expect("a circle");
    assert!(
        cycle.contains(&"a".to_owned()) && cycle.contains(&"b".to_owned()),
        "{cycle:?}"
    );
    // A table of contents that re-exports a child is no circle.
    std::fs::create_dir(src.join("c")).unwrap();
    std::fs::write(
        src.join("c/mod.rs"),
        "mod d;\npub use d::D;\npub struct Limits;\n",
    )
    .unwrap();
    std::fs::write(
        src.join("c/d.rs"),
        "use super::Limits;\npub struct D(Limits);\n",
    )
    .unwrap();
    std::fs::write(src.join("b.rs"), "pub struct B;\n").unwrap();
    assert_eq!(find_cycle(&graph(dir.path())), None);
}

#[test]
fn no_long_file_does_more_than_one_job() {
    let root = workspace();
    let mut long = Vec::new();
    for krate in CRATES {
        for file in rust_files(&root.join(krate).join("src")) {
            let lines = std::fs::read_to_string(&file).unwrap().lines().count();
            let rel = file
                .strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if lines > MAX_LINES && !LONG_FILES.iter().any(|(f, _)| *f == rel) {
                long.push(format!("{rel}: {lines} lines"));
            }
        }
    }
    assert!(
        long.is_empty(),
        "over {MAX_LINES} lines: split them, or name their one job in LONG_FILES:\n{}",
        long.join("\n")
    );
    for (file, _) in LONG_FILES {
        assert!(
            root.join(file).is_file(),
            "{file} is gone: take it off LONG_FILES"
        );
    }
}
