//! The floors of the house, checked on the source: libraries below the
//! stages never name a stage or the CLI; the engine names nothing of the
//! science; a stage names only stages before it in the registry; and the
//! top-level modules import each other without a cycle.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use common::REPO;

/// Every `.rs` file under `dir`, with its text.
fn sources(dir: &Path, out: &mut Vec<(PathBuf, String)>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push((p.clone(), std::fs::read_to_string(&p).unwrap()));
        }
    }
}

/// The path below `src/`, e.g. `stages/report/mod.rs`.
fn rel(p: &Path) -> String {
    p.strip_prefix(Path::new(REPO).join("src"))
        .unwrap()
        .display()
        .to_string()
}

/// Names that follow `prefix` in `text`: `crate::stages::dist` and
/// `crate::stages::{corpus, dist::X}` both give `dist` (and `corpus`).
fn named_after(text: &str, prefix: &str) -> BTreeSet<String> {
    let word = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices(prefix) {
        let rest = &text[i + prefix.len()..];
        if let Some(list) = rest.strip_prefix('{') {
            let list = &list[..list.find('}').unwrap_or(list.len())];
            for item in list.split(',') {
                let w = word(item.trim());
                if !w.is_empty() {
                    out.insert(w);
                }
            }
        } else {
            let w = word(rest);
            if !w.is_empty() {
                out.insert(w);
            }
        }
    }
    out
}

/// The code of a file without its comments (doc text may name anything).
fn code(text: &str) -> String {
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Top-level module of a file: `stages`, `engine`, `lib`, `eval`, …
fn top(rel: &str) -> String {
    rel.split(['/', '.']).next().unwrap().to_string()
}

/// Modules above the stages: the CLI and what drives it.
const ABOVE: [&str; 5] = ["main", "lib", "cli", "commands", "bench"];

#[test]
fn libraries_never_name_a_stage_or_the_cli() {
    let mut files = Vec::new();
    sources(&Path::new(REPO).join("src"), &mut files);
    let mut bad = Vec::new();
    for (p, text) in &files {
        let (r, t) = (rel(p), top(&rel(p)));
        if t == "stages" || ABOVE.contains(&t.as_str()) {
            continue;
        }
        let named = named_after(&code(text), "crate::");
        for up in ["stages", "cli", "commands", "bench"] {
            if named.contains(up) {
                bad.push(format!("{r} names crate::{up}"));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "imports against the layers:\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_engine_knows_nothing_of_the_science() {
    let mut files = Vec::new();
    sources(&Path::new(REPO).join("src/engine"), &mut files);
    let mut bad = Vec::new();
    for (p, text) in &files {
        for m in named_after(&code(text), "crate::") {
            if !["engine", "error"].contains(&m.as_str()) {
                bad.push(format!("{} names crate::{m}", rel(p)));
            }
        }
    }
    assert!(bad.is_empty(), "engine imports:\n{}", bad.join("\n"));
}

/// Stage modules in registry order, read from `stages/mod.rs`.
fn registry() -> Vec<String> {
    let text = std::fs::read_to_string(Path::new(REPO).join("src/stages/mod.rs")).unwrap();
    let body = &text[text.find("pub const REGISTRY").expect("a REGISTRY")..];
    let body = &body[..body.find("];").unwrap()];
    body.lines()
        .filter_map(|l| l.trim().strip_prefix('&'))
        .map(|l| l.split("::").next().unwrap().to_string())
        .collect()
}

#[test]
fn a_stage_names_only_stages_before_it() {
    let order = registry();
    assert!(order.len() >= 10, "registry not found: {order:?}");
    let mut files = Vec::new();
    sources(&Path::new(REPO).join("src/stages"), &mut files);
    let mut bad = Vec::new();
    for (p, text) in &files {
        let r = rel(p);
        // stages/dist.rs → dist; stages/report/conditional.rs → report.
        let Some(stage) = r.strip_prefix("stages/").map(top) else {
            continue;
        };
        if stage == "mod" {
            continue;
        }
        let me = order
            .iter()
            .position(|s| *s == stage)
            .unwrap_or_else(|| panic!("{r}: stage {stage} is not in the registry"));
        let mut named = named_after(&code(text), "crate::stages::");
        named.extend(named_after(&code(text), "stages::"));
        for other in named {
            if let Some(j) = order.iter().position(|s| *s == other) {
                if j > me {
                    bad.push(format!("{r} ({stage}) names the later stage {other}"));
                }
            }
        }
    }
    assert!(bad.is_empty(), "downstream imports:\n{}", bad.join("\n"));
}

#[test]
fn top_level_modules_form_no_cycle() {
    let mut files = Vec::new();
    sources(&Path::new(REPO).join("src"), &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (p, text) in &files {
        let from = top(&rel(p));
        if ABOVE.contains(&from.as_str()) {
            continue;
        }
        let to = graph.entry(from.clone()).or_default();
        for m in named_after(&code(text), "crate::") {
            if m != from && !ABOVE.contains(&m.as_str()) {
                to.insert(m);
            }
        }
    }
    // Depth-first search for a back edge.
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(n) {
            Some(1) => {
                let i = path.iter().position(|x| x == n).unwrap();
                let mut cycle = path[i..].to_vec();
                cycle.push(n.to_string());
                return Some(cycle);
            }
            Some(_) => return None,
            None => {}
        }
        state.insert(n.to_string(), 1);
        path.push(n.to_string());
        for m in g.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, g, state, path) {
                return Some(c);
            }
        }
        path.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in graph.keys() {
        if let Some(c) = visit(n, &graph, &mut state, &mut Vec::new()) {
            panic!("import cycle: {}", c.join(" → "));
        }
    }
}
