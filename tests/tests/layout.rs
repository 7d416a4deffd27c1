//! The shape of the source, checked as a test so that it stays true: the gateway's folders
//! are its layers, and this test reads every `crate::` path in `gateway/src` and fails when
//! an import cycle comes back, between two files or between two folders, or when a folder
//! imports one that ARCHITECTURE.md puts above it; and every source file of the server's
//! crates opens with a `//!` line saying what it is for and stays short.
//!
//! It reads the source as text, the way a newcomer reads the `use` lines: a path is resolved
//! to the deepest module file it names, `super::` and `self::` relative to the file. Test
//! code (files named `tests.rs`, and inline `#[cfg(test)] mod tests { .. }`) may import
//! anything and is left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each folder (or top-level file) of `gateway/src`, with the folders it may import. The
/// order is ARCHITECTURE.md's picture: leaves first, then `session` on them, `shard` on
/// `session`, and the control plane and the commands on top. `main` is the crate root.
const LAYERS: &[(&str, &[&str])] = &[
    ("config", &[]),
    ("net", &[]),
    ("storage", &[]),
    ("auth", &["config"]),
    // The push thread reads its settings, and nothing else of the server.
    ("push", &["config"]),
    // The cluster bridge too, and it hands the push thread the hints of users connected to
    // no node; the shards hold its rings' ends.
    ("cluster", &["config", "push"]),
    ("metrics", &["auth"]),
    ("session", &["config", "net", "auth", "metrics"]),
    (
        "shard",
        &[
            "config", "net", "storage", "auth", "metrics", "session", "push", "cluster",
        ],
    ),
    // `storage` for the history thread's queue only (`storage::history`), which it asks as the
    // shards do; `push` for the push thread's counters.
    (
        "control",
        &[
            "config", "storage", "auth", "metrics", "shard", "push", "cluster",
        ],
    ),
    (
        "cli",
        &[
            "config", "net", "storage", "auth", "metrics", "session", "shard", "control", "push",
            "cluster",
        ],
    ),
    (
        "main",
        &[
            "config", "net", "storage", "auth", "metrics", "session", "shard", "control", "cli",
            "push", "cluster",
        ],
    ),
];

fn gateway_src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../gateway/src")
}

/// Every `.rs` file under `dir`, with its module path (`shard/router_loop.rs` is
/// `["shard", "router_loop"]`, a `mod.rs` is its folder's module, `main.rs` the root).
fn modules(root: &Path, dir: &Path, out: &mut BTreeMap<Vec<String>, PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            modules(root, &path, out);
            continue;
        }
        if path.extension().is_none_or(|ext| ext != "rs") {
            continue;
        }
        let relative = path.strip_prefix(root).unwrap();
        let mut module: Vec<String> = relative
            .with_extension("")
            .components()
            .map(|part| part.as_os_str().to_string_lossy().into_owned())
            .collect();
        if matches!(module.last().map(String::as_str), Some("mod" | "main")) {
            module.pop();
        }
        out.insert(module, path);
    }
}

/// The source without its inline test module: from `#[cfg(test)]` followed by `mod tests {`
/// to the end of the file (the test modules close their files here).
fn without_tests(source: &str) -> &str {
    match source.find("#[cfg(test)]\nmod tests {") {
        Some(at) => &source[..at],
        None => source,
    }
}

/// Paths a piece of source names, each as its segments: `use crate::a::{b::C, d}` names
/// `crate::a::b::C` and `crate::a::d`; `super::x` and `self::x` likewise.
fn paths(source: &str) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    let bytes = source.as_bytes();
    for start in ["crate::", "super::", "self::"] {
        let mut from = 0;
        while let Some(offset) = source[from..].find(start) {
            let at = from + offset;
            from = at + start.len();
            // Only a path's first segment: not `a::self::b`, not `my_crate::`.
            if at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_') {
                continue;
            }
            if at >= 2 && &source[at - 2..at] == "::" {
                continue;
            }
            let head = start.trim_end_matches("::").to_owned();
            expand(&source[from..], vec![head], &mut found);
        }
    }
    found
}

/// Reads `a::b::{c, d::e}` after a prefix and pushes every full path it spells.
fn expand(text: &str, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    let mut path = prefix;
    let mut rest = text;
    loop {
        let ident_len = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        if ident_len == 0 {
            if let Some(group) = rest.strip_prefix('{') {
                for item in split_group(group) {
                    expand(item.trim(), path.clone(), out);
                }
                return;
            }
            break;
        }
        path.push(rest[..ident_len].to_owned());
        rest = &rest[ident_len..];
        match rest.strip_prefix("::") {
            Some(next) => rest = next,
            None => break,
        }
    }
    out.push(path);
}

/// The items of a `{ .. }` group up to its closing brace, split at its top-level commas.
fn split_group(group: &str) -> Vec<&str> {
    let mut items = Vec::new();
    let mut depth = 0;
    let mut start = 0;
    for (index, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                items.push(&group[start..index]);
                return items;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&group[start..index]);
                start = index + 1;
            }
            _ => {}
        }
    }
    items
}

/// The module a path names: the deepest known module among its prefixes.
fn resolve(
    path: &[String],
    file_module: &[String],
    is_mod_file: bool,
    known: &BTreeMap<Vec<String>, PathBuf>,
) -> Option<Vec<String>> {
    let (mut base, rest) = match path[0].as_str() {
        "crate" => (Vec::new(), &path[1..]),
        "self" if is_mod_file => (file_module.to_vec(), &path[1..]),
        "self" => (file_module.to_vec(), &path[1..]),
        "super" => {
            // In a `mod.rs` (or `main.rs`) `super` is the folder's parent; in `a/b.rs` it is `a`.
            let mut base = file_module.to_vec();
            base.pop();
            let mut rest = &path[1..];
            while rest.first().is_some_and(|segment| segment == "super") {
                base.pop();
                rest = &rest[1..];
            }
            (base, rest)
        }
        _ => return None,
    };
    let mut deepest = known.contains_key(&base).then(|| base.clone());
    for segment in rest {
        base.push(segment.clone());
        if known.contains_key(&base) {
            deepest = Some(base.clone());
        } else {
            break;
        }
    }
    deepest
}

/// The edges between the gateway's modules (files), test code left out.
fn import_graph() -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let root = gateway_src();
    let mut known = BTreeMap::new();
    modules(&root, &root, &mut known);
    assert!(
        known.len() > 10,
        "the gateway's files were not found under {}",
        root.display()
    );
    let mut graph = BTreeMap::new();
    for (module, path) in &known {
        if module.last().is_some_and(|name| name == "tests") {
            continue;
        }
        let source = std::fs::read_to_string(path).unwrap();
        let is_mod_file = path
            .file_name()
            .is_some_and(|name| name == "mod.rs" || name == "main.rs");
        let edges: &mut BTreeSet<Vec<String>> = graph.entry(module.clone()).or_default();
        for named in paths(without_tests(&source)) {
            if let Some(target) = resolve(&named, module, is_mod_file, &known)
                && &target != module
                && target.last().is_none_or(|name| name != "tests")
            {
                edges.insert(target);
            }
        }
    }
    graph
}

/// A cycle through the graph, if there is one, as the modules along it.
fn find_cycle<N: Ord + Clone>(graph: &BTreeMap<N, BTreeSet<N>>) -> Option<Vec<N>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit<N: Ord + Clone>(
        node: &N,
        graph: &BTreeMap<N, BTreeSet<N>>,
        marks: &mut BTreeMap<N, Mark>,
        stack: &mut Vec<N>,
    ) -> Option<Vec<N>> {
        match marks.get(node) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let from = stack.iter().position(|n| n == node).unwrap();
                let mut cycle = stack[from..].to_vec();
                cycle.push(node.clone());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(node.clone(), Mark::Open);
        stack.push(node.clone());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, marks, stack) {
                return Some(cycle);
            }
        }
        stack.pop();
        marks.insert(node.clone(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for node in graph.keys() {
        if let Some(cycle) = visit(node, graph, &mut marks, &mut Vec::new()) {
            return Some(cycle);
        }
    }
    None
}

fn folder(module: &[String]) -> String {
    module.first().cloned().unwrap_or_else(|| "main".to_owned())
}

fn show(module: &[String]) -> String {
    if module.is_empty() {
        "main".to_owned()
    } else {
        module.join("::")
    }
}

#[test]
fn no_import_cycle_between_the_gateways_files() {
    let graph = import_graph();
    if let Some(cycle) = find_cycle(&graph) {
        let names: Vec<String> = cycle.iter().map(|m| show(m)).collect();
        panic!("an import cycle: {}", names.join(" -> "));
    }
}

#[test]
fn no_import_cycle_between_the_gateways_folders_and_each_imports_only_below_it() {
    let graph = import_graph();
    let mut folders: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut wrong = Vec::new();
    for (module, targets) in &graph {
        let from = folder(module);
        let allowed = LAYERS
            .iter()
            .find(|(name, _)| *name == from)
            .map(|(_, allowed)| *allowed)
            .unwrap_or_else(|| {
                panic!("folder {from} is not in LAYERS: add it, below what uses it")
            });
        for target in targets {
            let to = folder(target);
            if to == from {
                continue;
            }
            folders.entry(from.clone()).or_default().insert(to.clone());
            if !allowed.contains(&to.as_str()) {
                wrong.push(format!("{} imports {}", show(module), show(target)));
            }
        }
    }
    let cycle = find_cycle(&folders).map(|cycle| cycle.join(" -> "));
    assert!(
        cycle.is_none() && wrong.is_empty(),
        "an import cycle between folders: {}\nimports against the layers of ARCHITECTURE.md:\n{}",
        cycle.as_deref().unwrap_or("none"),
        wrong.join("\n")
    );
}

#[test]
fn the_checker_sees_paths_groups_and_cycles() {
    let source = "use crate::a::{b::C, d::{E, f}};\nuse super::g;\nx = crate::h::i(1);\n\
                  fn y() { my_crate::z(); self::w(); }\n";
    let found: Vec<String> = paths(source).iter().map(|p| p.join("::")).collect();
    assert_eq!(
        found,
        [
            "crate::a::b::C",
            "crate::a::d::E",
            "crate::a::d::f",
            "crate::h::i",
            "super::g",
            "self::w"
        ]
    );
    let mut graph: BTreeMap<u8, BTreeSet<u8>> = BTreeMap::new();
    graph.insert(1, [2].into());
    graph.insert(2, [3].into());
    graph.insert(3, BTreeSet::new());
    assert_eq!(find_cycle(&graph), None);
    graph.insert(3, [1].into());
    assert_eq!(find_cycle(&graph), Some(vec![1, 2, 3, 1]));
}

/// Lines a source file may have: past about this many, a file holds more than one concern
/// and a reader loses its thread. Generated code is left out.
const FILE_LINES_MAX: usize = 850;

#[test]
fn every_source_file_opens_with_its_purpose_and_stays_short() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut problems = Vec::new();
    for crate_dir in ["gateway/src", "router/src", "router/tests", "wire/src"] {
        let mut files = BTreeMap::new();
        let dir = root.join(crate_dir);
        modules(&dir, &dir, &mut files);
        for path in files.values() {
            let name = path.strip_prefix(&root).unwrap().display().to_string();
            if name.ends_with("_generated.rs") {
                continue;
            }
            let source = std::fs::read_to_string(path).unwrap();
            if !source.starts_with("//! ") {
                problems.push(format!("{name}: does not open with a `//!` line"));
            }
            let lines = source.lines().count();
            if lines > FILE_LINES_MAX {
                problems.push(format!("{name}: {lines} lines, over {FILE_LINES_MAX}"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
