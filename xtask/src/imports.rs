//! A host test that el1-host's modules form no import circle: each file's
//! `crate::` and `super::` paths are resolved to the module (file) they name,
//! and the graph must have no cycle. Circles are how glue grows into a knot
//! (docs/README.md, module map); this keeps them from coming back.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

/// Module path (`vm::instance`, `` for the crate root) to its source.
fn modules(src: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let rel = p.strip_prefix(src).unwrap().with_extension("");
                let mut parts: Vec<String> = rel.iter().map(|s| s.to_string_lossy().into_owned()).collect();
                if parts.last().is_some_and(|l| l == "mod" || l == "main" || l == "lib") {
                    parts.pop();
                }
                let text = fs::read_to_string(&p).unwrap();
                // Unit tests may reach anywhere.
                let text = text.split("#[cfg(test)]\nmod tests").next().unwrap_or("").to_string();
                out.insert(parts.join("::"), text);
            }
        }
    }
    out
}

/// The longest module prefix of `path` that exists.
fn resolve(mods: &BTreeMap<String, String>, path: &str) -> Option<String> {
    let parts: Vec<&str> = path.split("::").filter(|p| !p.is_empty()).collect();
    (1..=parts.len()).rev().map(|i| parts[..i].join("::")).find(|m| mods.contains_key(m))
}

fn ident_path(s: &str) -> String {
    s.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':').collect()
}

/// Every `crate::…` (with `{a, b::c}` groups) and `super::…` a file names.
fn paths(module: &str, text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let parent = module.rsplit_once("::").map_or("", |(p, _)| p);
    for (prefix, base) in [("crate::", String::new()), ("super::", parent.to_string())] {
        let mut rest = text;
        while let Some(i) = rest.find(prefix) {
            let before = rest[..i].chars().last();
            rest = &rest[i + prefix.len()..];
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                continue;
            }
            let head = ident_path(rest);
            let join = |tail: &str| if base.is_empty() { tail.to_string() } else { format!("{base}::{tail}") };
            if head.ends_with("::") || head.is_empty() {
                let after = &rest[head.len()..];
                if let Some(group) = after.strip_prefix('{').and_then(|g| g.split_once('}')).map(|(g, _)| g) {
                    for item in group.split(',') {
                        let item = ident_path(item.trim());
                        if !item.is_empty() && item != "self" {
                            out.push(join(&format!("{head}{item}")));
                        } else if item == "self" {
                            out.push(join(head.trim_end_matches("::")));
                        }
                    }
                }
            } else {
                out.push(join(&head));
            }
        }
    }
    for line in text.lines() {
        if let Some(m) = line.trim().strip_prefix("pub use ").and_then(|l| l.strip_suffix("::*;")) {
            if !m.contains("::") && !m.starts_with("crate") {
                out.push(if module.is_empty() { m.to_string() } else { format!("{module}::{m}") });
            }
        }
    }
    out
}

/// One module cycle, if the graph has any.
fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        v: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(v.to_string(), 1);
        stack.push(v.to_string());
        for w in edges.get(v).into_iter().flatten() {
            match state.get(w.as_str()).copied().unwrap_or(0) {
                0 => {
                    if let Some(c) = visit(w, edges, state, stack) {
                        return Some(c);
                    }
                }
                1 => {
                    let start = stack.iter().position(|s| s == w).unwrap();
                    return Some(stack[start..].to_vec());
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(v.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for v in edges.keys() {
        if state.get(v.as_str()).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(v, edges, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mods = modules(src);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, text) in &mods {
        let set = edges.entry(m.clone()).or_default();
        for p in paths(m, text) {
            if let Some(r) = resolve(&mods, &p).filter(|r| r != m && !r.is_empty()) {
                set.insert(r);
            }
        }
    }
    edges
}

#[test]
fn finds_a_planted_cycle() {
    let dir = std::env::temp_dir().join(format!("imports-test-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("a")).unwrap();
    fs::write(dir.join("main.rs"), "mod a;\nmod b;\n").unwrap();
    fs::write(dir.join("a/mod.rs"), "pub mod x;\n").unwrap();
    fs::write(dir.join("a/x.rs"), "use crate::{b, gone};\n").unwrap();
    fs::write(dir.join("b.rs"), "fn f() { super::a::x::g(); }\n").unwrap();
    let cycle = find_cycle(&graph(&dir));
    fs::remove_dir_all(&dir).unwrap();
    let mut c = cycle.expect("a::x -> b -> a::x");
    c.sort();
    assert_eq!(c, ["a::x", "b"]);
}

#[test]
fn el1_host_has_no_import_circle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../el1-host/src");
    let edges = graph(&src);
    assert!(edges.len() > 40, "el1-host's modules were not found ({})", edges.len());
    if let Some(c) = find_cycle(&edges) {
        panic!("el1-host has an import circle: {} -> {}", c.join(" -> "), c[0]);
    }
}
