//! The router's determinism, kept by a test rather than by care: no hash map or set in its
//! source draws a per-process seed of its own. A map whose order can reach the outputs or
//! the log is a `BTreeMap`; one that is only looked up by key uses the shard's hasher, keyed
//! by the seed the shell hands in (`Config::hash_seed`).

use std::path::{Path, PathBuf};

/// The `.rs` files under `dir`, in name order.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    entries.sort();
    let mut files = Vec::new();
    for path in entries {
        if path.is_dir() {
            files.extend(sources(&path));
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.push(path);
        }
    }
    files
}

/// What is wrong with one line of code, if anything.
fn self_keyed_hashing(line: &str) -> Option<&'static str> {
    let code = line.trim_start();
    if code.starts_with("//") {
        return None;
    }
    if code.contains("RandomState") {
        return Some("names RandomState");
    }
    let self_keyed_constructors = ["HashMap::new(", "HashSet::new(", "::with_capacity("];
    if (code.contains("HashMap::") || code.contains("HashSet::"))
        && self_keyed_constructors.iter().any(|c| code.contains(c))
    {
        return Some("builds a map with RandomState, which draws its own keys");
    }
    if (code.contains("HashMap<") || code.contains("HashSet<")) && !code.contains("SeededState") {
        return Some("declares a hash map or set without SeededState");
    }
    None
}

#[test]
fn every_hash_map_in_the_router_uses_the_shards_seeded_hasher() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let this_file = Path::new(file!()).file_name().unwrap();
    let mut found = Vec::new();
    for path in sources(&src) {
        // This file spells out the patterns it looks for.
        if path.ends_with(Path::new("tests").join(this_file)) {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for (number, line) in text.lines().enumerate() {
            if let Some(problem) = self_keyed_hashing(line) {
                found.push(format!("{}:{}: {problem}", path.display(), number + 1));
            }
        }
    }
    assert!(
        found.is_empty(),
        "hash maps keying themselves in the router:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_check_catches_self_keyed_maps_and_passes_seeded_ones() {
    assert!(self_keyed_hashing("    users: HashMap<UserId, Box<User>>,").is_some());
    assert!(self_keyed_hashing("            users: HashMap::new(),").is_some());
    assert!(self_keyed_hashing("let set = HashSet::with_capacity(8);").is_some());
    assert!(self_keyed_hashing("use std::collections::hash_map::RandomState;").is_some());
    assert!(self_keyed_hashing("    users: HashMap<UserId, Box<User>, SeededState>,").is_none());
    assert!(self_keyed_hashing("            users: HashMap::with_hasher(hashing),").is_none());
    assert!(self_keyed_hashing("    /// A HashMap<K, V> would do here.").is_none());
}
