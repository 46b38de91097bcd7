//! The import rule of `ARCHITECTURE.md`, checked on the source: each layer imports only from
//! the layers below it (and from itself, without circles between files), and names are taken
//! from the module that defines them, never through the crate root's re-exports.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, top first; a file's layer is that of its top-level module.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "public face",
        &[
            "lib", "layer", "service", "reload", "future", "config", "fuzz", "hooks", "tls", "jwt",
            "control",
        ],
    ),
    ("serve", &["serve"]),
    ("handshake", &["handshake"]),
    ("session", &["session"]),
    (
        "upstream, registry, metrics",
        &["upstream", "registry", "metrics"],
    ),
    ("shared vocabulary", &["error", "transport", "identity"]),
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every library source file (the binary in `src/bin` is not part of the crate), by path
/// relative to `src`.
fn files() -> BTreeMap<PathBuf, String> {
    fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                if path.file_name() != Some("bin".as_ref()) {
                    walk(&path, out);
                }
            } else if path.extension() == Some("rs".as_ref()) {
                let rel = path.strip_prefix(src()).unwrap().to_owned();
                out.insert(rel, std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(&src(), &mut out);
    out
}

/// A file's module path: `session/tunnel/mod.rs` is `[session, tunnel]`, `lib.rs` is `[]`.
fn module_of(file: &Path) -> Vec<String> {
    let mut parts: Vec<String> = file
        .with_extension("")
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    parts
}

/// The file a module path lives in: the longest prefix of `path` that is a file.
fn resolve(path: &[String], files: &BTreeMap<PathBuf, String>) -> Option<PathBuf> {
    (1..=path.len()).rev().find_map(|n| {
        let base: PathBuf = path[..n].iter().collect();
        [base.with_extension("rs"), base.join("mod.rs")]
            .into_iter()
            .find(|f| files.contains_key(f))
    })
}

fn rank(top: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, mods)| mods.contains(&top))
}

/// Code without comments (doc comments included) and string literals, as far as paths go.
fn code(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("//") {
            out.push('\n');
            continue;
        }
        let mut in_str = false;
        let chars: Vec<char> = line.chars().collect();
        for (i, &c) in chars.iter().enumerate() {
            let prev = i.checked_sub(1).map_or(' ', |p| chars[p]);
            // `'"'` and `b'"'` are characters, not the start of a string.
            let char_literal = prev == '\'' && chars.get(i + 1) == Some(&'\'');
            if c == '"' && prev != '\\' && !char_literal {
                in_str = !in_str;
            } else if !in_str {
                out.push(c);
            }
        }
        out.push('\n');
    }
    out
}

/// The module paths `text` names, from `crate::`, `super::` and `self::` (use trees with
/// braces expanded), resolved against `module`, the module the file is, and the inline
/// modules (`mod tests { .. }`) each path sits in.
fn references(text: &str, module: &[String]) -> Vec<Vec<String>> {
    let text = code(text).replace("'{'", "' '").replace("'}'", "' '");
    let s: Vec<char> = text.chars().collect();
    let mut found = Vec::new();
    // Inline modules open around the current position: (brace depth inside, name).
    let mut inline: Vec<(usize, String)> = Vec::new();
    let mut depth = 0;
    let mut i = 0;
    let word_at = |i: usize, w: &str| {
        let starts = i == 0 || !(s[i - 1].is_alphanumeric() || s[i - 1] == '_');
        starts && s[i..].iter().take(w.len()).copied().eq(w.chars())
    };
    while i < s.len() {
        match s[i] {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                while inline.last().is_some_and(|(d, _)| *d > depth) {
                    inline.pop();
                }
            }
            _ => {}
        }
        let here = || {
            let mut m = module.to_vec();
            m.extend(inline.iter().map(|(_, n)| n.clone()));
            m
        };
        if word_at(i, "mod ") {
            let name: String = s[i + 4..]
                .iter()
                .take_while(|c| c.is_alphanumeric() || **c == '_')
                .collect();
            let after = i + 4 + name.len();
            let rest: String = s[after..].iter().take_while(|c| **c != '\n').collect();
            if rest.trim_start().starts_with('{') {
                inline.push((depth + 1, name));
            }
            i = after;
            continue;
        }
        let base = if word_at(i, "crate::") {
            i += 7;
            Some(Vec::new())
        } else if word_at(i, "super::") {
            i += 7;
            let mut m = here();
            m.pop();
            Some(m)
        } else if word_at(i, "self::") {
            i += 6;
            Some(here())
        } else {
            None
        };
        match base {
            Some(base) => i = tree(&s, i, base, &mut found),
            None => i += 1,
        }
    }
    found
}

/// Parses a path or use tree at `at` below `prefix`, pushing each full path; returns where it
/// ended.
fn tree(s: &[char], mut at: usize, prefix: Vec<String>, out: &mut Vec<Vec<String>>) -> usize {
    let mut path = prefix;
    loop {
        while s.get(at).is_some_and(|c| c.is_whitespace()) {
            at += 1;
        }
        if s.get(at) == Some(&'{') {
            at += 1;
            loop {
                at = tree(s, at, path.clone(), out);
                while s.get(at).is_some_and(|c| c.is_whitespace() || *c == ',') {
                    at += 1;
                }
                if s.get(at) == Some(&'}') || at >= s.len() {
                    return at + 1;
                }
            }
        }
        let start = at;
        while s.get(at).is_some_and(|c| c.is_alphanumeric() || *c == '_') {
            at += 1;
        }
        if at > start {
            path.push(s[start..at].iter().collect());
        }
        if s.get(at) == Some(&':') && s.get(at + 1) == Some(&':') {
            at += 2;
            continue;
        }
        out.push(path);
        return at;
    }
}

struct Graph {
    edges: BTreeMap<PathBuf, BTreeSet<PathBuf>>,
    problems: Vec<String>,
}

fn graph() -> Graph {
    let files = files();
    let lib = files[Path::new("lib.rs")].clone();
    // Top-level modules, as lib.rs declares them (`fuzz.rs` is `mod __fuzz` by path).
    let mut tops: BTreeSet<String> = code(&lib)
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let l = l.strip_prefix("pub ").unwrap_or(l);
            l.strip_prefix("mod ")?.strip_suffix(';').map(str::to_owned)
        })
        .collect();
    tops.insert("fuzz".into());
    let mut edges: BTreeMap<PathBuf, BTreeSet<PathBuf>> = BTreeMap::new();
    let mut problems = Vec::new();
    for (file, text) in &files {
        let module = module_of(file);
        let own_top = module.first().map_or("lib", String::as_str);
        let own_rank = rank(own_top).unwrap_or_else(|| panic!("{file:?}: no layer for {own_top}"));
        for path in references(text, &module) {
            let Some(top) = path.first() else { continue };
            let top = if top == "__fuzz" {
                "fuzz"
            } else {
                top.as_str()
            };
            if !tops.contains(top) {
                if file != Path::new("lib.rs") && !path.is_empty() {
                    problems.push(format!(
                        "{}: `{}` through the crate root; name its module",
                        file.display(),
                        path.join("::")
                    ));
                }
                continue;
            }
            let to_rank = rank(top).unwrap_or_else(|| panic!("no layer for module {top}"));
            if to_rank < own_rank {
                problems.push(format!(
                    "{}: imports `{}` from the {} layer, above its own ({})",
                    file.display(),
                    path.join("::"),
                    LAYERS[to_rank].0,
                    LAYERS[own_rank].0
                ));
            }
            if let Some(target) = resolve(&path, &files).filter(|t| t != file) {
                edges.entry(file.clone()).or_default().insert(target);
            }
        }
    }
    Graph { edges, problems }
}

/// Files that import each other, directly or round a circle.
fn cycles(edges: &BTreeMap<PathBuf, BTreeSet<PathBuf>>) -> Vec<Vec<PathBuf>> {
    fn reach(from: &Path, to: &Path, edges: &BTreeMap<PathBuf, BTreeSet<PathBuf>>) -> bool {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.to_owned()];
        while let Some(f) = stack.pop() {
            for next in edges.get(&f).into_iter().flatten() {
                if next == to {
                    return true;
                }
                if seen.insert(next.clone()) {
                    stack.push(next.clone());
                }
            }
        }
        false
    }
    let mut found = Vec::new();
    for (from, tos) in edges {
        for to in tos {
            if from < to && reach(to, from, edges) {
                found.push(vec![from.clone(), to.clone()]);
            }
        }
    }
    found
}

#[test]
fn layers_import_downward_and_names_come_from_their_modules() {
    let graph = graph();
    assert!(
        graph.problems.is_empty(),
        "imports that break ARCHITECTURE.md's rule:\n{}",
        graph.problems.join("\n")
    );
}

#[test]
fn no_two_files_import_each_other_even_round_a_circle() {
    let graph = graph();
    assert!(
        graph.edges.len() > 30,
        "the scan found too few imports to be reading the source"
    );
    let cycles = cycles(&graph.edges);
    assert!(cycles.is_empty(), "files in a circle: {cycles:?}");
}

/// The checker itself: an upward import, a root re-export and a circle are each found.
#[test]
fn the_checker_finds_what_it_looks_for() {
    let module = vec!["session".to_owned(), "spawn".to_owned()];
    let refs = references(
        "use crate::handshake::{upgrade, detect::Upgrade};\nlet x = crate::ProxyError::X;\n// crate::hidden\nlet s = \"crate::in_string\";\nuse super::leg;",
        &module,
    );
    let joined: Vec<String> = refs.iter().map(|p| p.join("::")).collect();
    assert_eq!(
        joined,
        [
            "handshake::upgrade",
            "handshake::detect::Upgrade",
            "ProxyError::X",
            "session::leg"
        ]
    );
    assert!(
        rank("handshake") < rank("session"),
        "handshake sits above session"
    );
    let edge = |a: &str, b: &str| (PathBuf::from(a), BTreeSet::from([PathBuf::from(b)]));
    let circle = BTreeMap::from([
        edge("a.rs", "b.rs"),
        edge("b.rs", "c.rs"),
        edge("c.rs", "a.rs"),
    ]);
    assert_eq!(cycles(&circle).len(), 2);
}
