//! The floors of the house, checked on the source: libraries below the
//! stages never name a stage or the CLI; the engine names nothing of the
//! science; a stage names only stages before it in the registry; and in
//! every folder the modules import each other without a cycle.

use crate::common;

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
const ABOVE: [&str; 4] = ["main", "lib", "cli", "commands"];

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
        for up in ["stages", "cli", "commands"] {
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

/// A file's module path: `engine/batch/mod.rs` → `engine::batch`,
/// `engine/evict.rs` → `engine::evict`, `lib.rs` → the crate root.
fn module_of(rel: &str) -> Vec<String> {
    let mut m: Vec<String> = rel
        .trim_end_matches(".rs")
        .split('/')
        .map(str::to_string)
        .collect();
    if matches!(m.last().map(String::as_str), Some("mod" | "lib" | "main")) {
        m.pop();
    }
    m
}

/// Every module path a file's code names through `crate::`, `super::` or
/// `self::`, resolved from `module` (the file's module path) and with
/// `{…}` groups expanded: `super::{evict::X, plan}` in `engine/scheduler.rs`
/// gives `engine::evict::X` and `engine::plan`.
fn paths_named(code: &str, module: &[String]) -> Vec<Vec<String>> {
    // A `mod.rs` is its folder's module, so `super` is one pop for every
    // file: `engine::batch` (batch/mod.rs) and `engine::evict` → `engine`.
    let base: Vec<String> = module.to_vec();
    fn expand(rest: &str, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
        let rest = rest.trim_start();
        if let Some(list) = rest.strip_prefix('{') {
            // The group up to its matching brace, split at top-level commas.
            let (mut depth, mut start, mut items) = (0, 0, Vec::new());
            for (k, c) in list.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        items.push(&list[start..k]);
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        items.push(&list[start..k]);
                        start = k + 1;
                    }
                    _ => {}
                }
            }
            for it in items {
                expand(it, prefix.clone(), out);
            }
            return;
        }
        let word: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if word.is_empty() {
            out.push(prefix);
            return;
        }
        let mut p = prefix;
        p.push(word.clone());
        match rest[word.len()..].strip_prefix("::") {
            Some(more) => expand(more, p, out),
            None => out.push(p),
        }
    }
    let mut out = Vec::new();
    for start in ["crate::", "super::", "self::"] {
        for (i, _) in code.match_indices(start) {
            // Part of a longer path (`super::super::`, `x::self::`): taken
            // from its first segment only.
            let before = &code[..i];
            if before.ends_with("::")
                || before.ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
            {
                continue;
            }
            let mut rest = &code[i..];
            let prefix: Vec<String> = match start {
                "crate::" => {
                    rest = &rest["crate::".len()..];
                    Vec::new()
                }
                "self::" => {
                    rest = &rest["self::".len()..];
                    base.clone()
                }
                _ => {
                    let mut p = base.clone();
                    while let Some(r) = rest.strip_prefix("super::") {
                        rest = r;
                        p.pop();
                    }
                    p
                }
            };
            expand(rest, prefix, &mut out);
        }
    }
    out
}

/// In every folder of `src/` (the crate root included), the modules it
/// holds import each other without a cycle: an edge `a → b` in folder `F`
/// when code under `F/a` names something under `F/b`.
#[test]
fn no_folder_has_an_import_cycle() {
    let src = Path::new(REPO).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    // Folder → its modules' edges.
    let mut graphs: BTreeMap<Vec<String>, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for (p, text) in &files {
        let r = rel(p);
        let from = module_of(&r);
        for to in paths_named(&code(text), &from) {
            // The deepest folder holding both.
            let n = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
            let (Some(a), Some(b)) = (from.get(n), to.get(n)) else {
                continue;
            };
            let folder = &from[..n];
            // Only modules of that folder count (not items of its mod.rs).
            let dir = folder.iter().fold(src.clone(), |d, s| d.join(s));
            if !dir.join(format!("{b}.rs")).exists() && !dir.join(b).is_dir() {
                continue;
            }
            // Above the stages, the CLI drives everything: not part of the
            // crate root's layering.
            if folder.is_empty() && (ABOVE.contains(&a.as_str()) || ABOVE.contains(&b.as_str())) {
                continue;
            }
            graphs
                .entry(folder.to_vec())
                .or_default()
                .entry(a.clone())
                .or_default()
                .insert(b.clone());
        }
    }
    assert!(
        graphs
            .get(&vec!["engine".to_string()])
            .is_some_and(|g| g.len() >= 5),
        "the engine's imports were not found: {graphs:?}"
    );
    let mut cycles = Vec::new();
    for (folder, g) in &graphs {
        if let Some(c) = find_cycle(g) {
            let at = if folder.is_empty() {
                "src".to_string()
            } else {
                format!("src/{}", folder.join("/"))
            };
            cycles.push(format!("in {at}: {}", c.join(" → ")));
        }
    }
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}

/// A cycle of `g`, by depth-first search for a back edge.
fn find_cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
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
    g.keys()
        .find_map(|n| visit(n, g, &mut state, &mut Vec::new()))
}

/// The resolver itself, on the shapes the source uses.
#[test]
fn import_paths_resolve_as_rust_does() {
    let m = |s: &str| s.split("::").map(str::to_string).collect::<Vec<_>>();
    let got = paths_named(
        "use super::executor::{Outcome, Reporter};\nuse crate::engine::{batch::{self, slurm::Slurm}, plan};",
        &m("engine::evict"),
    );
    assert!(got.contains(&m("engine::executor::Outcome")), "{got:?}");
    assert!(got.contains(&m("engine::batch::slurm::Slurm")), "{got:?}");
    assert!(got.contains(&m("engine::batch::self")), "{got:?}");
    assert!(got.contains(&m("engine::plan")), "{got:?}");
    let got = paths_named(
        "use super::super::fsutil::write_atomic;",
        &m("engine::batch::task"),
    );
    assert_eq!(got, vec![m("engine::fsutil::write_atomic")]);
}
