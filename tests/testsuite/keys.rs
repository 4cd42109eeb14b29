//! The safety net under every refactoring: the key recipe of each instance
//! (stage, VERSION, params, input names, deps) of the default pipeline and of
//! each preset, compared with a checked-in golden file. A silent re-key
//! throws away a user's hours of ONNX Runtime work, so a change here must be
//! deliberate: rerun with `SEEDCONV_BLESS=1` and say in the commit that it
//! re-keys, and why.

use crate::common;

use std::path::{Path, PathBuf};

use common::REPO;
use serde_json::json;

/// One line per instance, sorted by id, with machine-specific paths replaced.
fn recipes(config: &Path, roots: &[(&Path, &str)]) -> String {
    let loaded =
        seedconv::config::load(config).unwrap_or_else(|e| panic!("{}: {e}", config.display()));
    let plan = seedconv::stages::plan(&loaded).unwrap_or_else(|e| panic!("{e}"));
    let mut lines: Vec<(String, String)> = plan
        .instances
        .iter()
        .map(|inst| {
            let mut deps: Vec<String> = inst
                .deps
                .iter()
                .map(|(s, l)| seedconv::engine::instance_id(s, l))
                .collect();
            deps.sort();
            let mut inputs: Vec<&str> = inst.inputs.iter().map(|(n, _)| n.as_str()).collect();
            inputs.sort();
            let line = json!({
                "id": inst.id(),
                "version": inst.version,
                "params": inst.params,
                "inputs": inputs,
                "deps": deps,
            })
            .to_string();
            (inst.id(), line)
        })
        .collect();
    lines.sort();
    let mut text: String = lines.into_iter().map(|(_, l)| l + "\n").collect();
    for (root, name) in roots {
        for form in [root.to_path_buf(), std::fs::canonicalize(root).unwrap()] {
            text = text.replace(&form.display().to_string(), name);
        }
    }
    text
}

fn check(name: &str, text: &str) {
    let golden = Path::new(REPO).join(format!("tests/golden/keys/{name}.jsonl"));
    if std::env::var_os("SEEDCONV_BLESS").is_some() {
        std::fs::create_dir_all(golden.parent().unwrap()).unwrap();
        std::fs::write(&golden, text).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&golden)
        .unwrap_or_else(|e| panic!("{}: {e} (SEEDCONV_BLESS=1 writes it)", golden.display()));
    if want == text {
        return;
    }
    let (w, g): (Vec<&str>, Vec<&str>) = (want.lines().collect(), text.lines().collect());
    let first = w
        .iter()
        .zip(&g)
        .position(|(a, b)| a != b)
        .unwrap_or(w.len().min(g.len()));
    // Name the first changed instance and only the fields that differ.
    let field = |line: Option<&&str>, k: &str| -> String {
        let v: serde_json::Value = line
            .and_then(|l| serde_json::from_str(l).ok())
            .unwrap_or_default();
        let s = v
            .get(k)
            .map(|x| x.to_string())
            .unwrap_or_else(|| "<none>".into());
        if s.len() > 300 {
            format!("{}…", &s[..300])
        } else {
            s
        }
    };
    let (a, b) = (w.get(first), g.get(first));
    let diffs: Vec<String> = ["version", "params", "inputs", "deps"]
        .iter()
        .filter(|k| field(a, k) != field(b, k))
        .map(|k| format!("  {k}: golden {} / now {}", field(a, k), field(b, k)))
        .collect();
    panic!(
        "{name}: key recipes changed ({} golden, {} now), first at line {} ({} / {}):\n{}\n(SEEDCONV_BLESS=1 rewrites the golden files: only for a deliberate re-key)",
        w.len(),
        g.len(),
        first + 1,
        field(a, "id"),
        field(b, "id"),
        diffs.join("\n")
    );
}

#[test]
fn default_pipeline_keys_are_unchanged() {
    let repo = Path::new(REPO);
    check(
        "pipeline",
        &recipes(&repo.join("pipeline.toml"), &[(repo, "<repo>")]),
    );
}

#[test]
fn mlm_preset_keys_are_unchanged() {
    let repo = Path::new(REPO);
    check(
        "mlm",
        &recipes(&repo.join("presets/mlm.toml"), &[(repo, "<repo>")]),
    );
}

/// A copy of an external-suite preset beside the shipped data, with an
/// empty file for every checkpoint (recipes name inputs, not their hashes)
/// and `tokenizer` copied where the preset expects one.
fn external_preset(name: &str, tokenizer: Option<(&str, PathBuf)>) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let presets = tmp.path().join("presets");
    std::fs::create_dir_all(&presets).unwrap();
    std::os::unix::fs::symlink(Path::new(REPO).join("data"), tmp.path().join("data")).unwrap();
    let raw =
        std::fs::read_to_string(Path::new(REPO).join(format!("presets/{name}.toml"))).unwrap();
    let config = seedconv::config::parse(&raw, name).unwrap();
    let suite = config.suite.expect("an external suite");
    for size in &suite.sizes {
        for seed in &suite.seeds {
            for step in &suite.steps {
                let rel = suite
                    .models
                    .replace("{size}", size)
                    .replace("{seed}", &seed.to_string())
                    .replace("{step}", &step.to_string());
                let p = presets.join(rel);
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(&p, b"").unwrap();
            }
        }
    }
    if let Some((rel, src)) = tokenizer {
        let p = presets.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::copy(src, p).unwrap();
    }
    let file = presets.join(format!("{name}.toml"));
    std::fs::write(&file, raw).unwrap();
    (tmp, file)
}

#[test]
fn polypythia_preset_keys_are_unchanged() {
    let (tmp, file) = external_preset("polypythia", None);
    let repo = Path::new(REPO);
    check(
        "polypythia",
        &recipes(&file, &[(tmp.path(), "<tmp>"), (repo, "<repo>")]),
    );
}

#[test]
fn multiberts_preset_keys_are_unchanged() {
    let tok = common::fixtures().join("hf_onnx_samples/mlm/tokenizer.json");
    let (tmp, file) = external_preset(
        "multiberts",
        Some(("models/multiberts-seed0/step_0k/tokenizer.json", tok)),
    );
    let repo = Path::new(REPO);
    check(
        "multiberts",
        &recipes(&file, &[(tmp.path(), "<tmp>"), (repo, "<repo>")]),
    );
}

/// Every field left out of a key says so, the one visible way: a
/// `#[serde(skip)]` with an `unkeyed:` comment above it (one comment may
/// cover a run of skipped fields).
#[test]
fn every_unkeyed_field_says_why() {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(&Path::new(REPO).join("src"), &mut files);
    let mut silent = Vec::new();
    let mut seen = 0;
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            if l.trim() != "#[serde(skip)]" {
                continue;
            }
            seen += 1;
            // Back over doc comments and the skipped fields of the same run.
            let mut j = i;
            let mut said = false;
            while j > 0 {
                j -= 1;
                let t = lines[j].trim();
                if t.contains("unkeyed:") {
                    said = true;
                    break;
                }
                let skipped_field = j > 0 && lines[j - 1].trim() == "#[serde(skip)]";
                if !(t.starts_with("///") || t == "#[serde(skip)]" || skipped_field) {
                    break;
                }
            }
            if !said {
                silent.push(format!("{}:{}", f.display(), i + 1));
            }
        }
    }
    assert!(seen >= 10, "found only {seen} skipped fields");
    assert!(
        silent.is_empty(),
        "skipped without `unkeyed:`:\n{}",
        silent.join("\n")
    );
}
