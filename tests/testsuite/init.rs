//! `seedconv init` on the shipped real exports: causal and masked LM, one
//! size and several, a grid with a missing checkpoint. Each written config
//! runs to a report; what init found is checked against the files.

use crate::common;

use std::path::Path;

use common::{fixtures, Project};

fn samples() -> std::path::PathBuf {
    fixtures().join("hf_onnx_samples")
}

/// `init` then `run` in the micro project (one small text for the
/// frequency counts); returns the written config.
fn init_and_run(p: &Project, args: &[&str]) -> String {
    let mut all = vec!["init", "--force", "--frequency", "text/a.txt"];
    all.extend_from_slice(args);
    p.ok(&all);
    let cfg = p.config();
    p.ok(&["run"]);
    assert!(p.store().join("report/current/report.html").exists());
    cfg
}

fn line<'a>(cfg: &'a str, key: &str) -> &'a str {
    cfg.lines()
        .find(|l| l.starts_with(&format!("{key} =")))
        .unwrap_or_else(|| panic!("no {key} in:\n{cfg}"))
}

#[test]
fn an_existing_config_is_kept_without_force() {
    let p = Project::micro();
    let before = p.config();
    let models = format!(
        "{}/causal/neox-seed{{seed}}/step{{step}}/model.onnx",
        samples().display()
    );
    let r = p.run(&["init", "--models", &models]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("pipeline.toml exists: pass --force"),
        "{}",
        r.stderr
    );
    assert_eq!(p.config(), before);
}

#[test]
fn a_causal_suite_of_one_size_runs_to_a_report() {
    let p = Project::micro();
    let models = format!(
        "{}/causal/neox-seed{{seed}}/step{{step}}/model.onnx",
        samples().display()
    );
    let cfg = init_and_run(&p, &["--models", &models, "--corpus", "text/eval.conllu"]);
    assert_eq!(line(&cfg, "seeds"), "seeds = [11, 12]");
    assert_eq!(line(&cfg, "steps"), "steps = [0, 50, 300]");
    assert!(!cfg.contains("\nsizes ="), "{cfg}");
    // The tokenizer beside the exports (700 tokens) under 768 logits.
    assert!(
        line(&cfg, "path").contains("causal/tokenizer.json"),
        "{cfg}"
    );
    assert!(line(&cfg, "vocab").starts_with("vocab = 700"), "{cfg}");
    assert!(line(&cfg, "mode").starts_with("mode = \"stream\""), "{cfg}");
    assert!(!cfg.contains("kind = \"mlm\""));
}

#[test]
fn a_masked_lm_suite_runs_to_a_report() {
    let p = Project::micro();
    let models = format!(
        "{}/mlm/bert-seed{{seed}}/step{{step}}/model.onnx",
        samples().display()
    );
    // No --corpus: the shipped EWT test split.
    let cfg = init_and_run(&p, &["--models", &models]);
    assert!(line(&cfg, "path").contains("mlm/tokenizer.json"), "{cfg}");
    assert!(
        cfg.contains("data/ud_english_ewt/en_ewt-ud-test.conllu"),
        "{cfg}"
    );
    assert!(cfg.contains("kind = \"mlm\""), "{cfg}");
    assert!(line(&cfg, "mode").starts_with("mode = \"mlm\""), "{cfg}");
    assert!(line(&cfg, "mlm_scoring").starts_with("mlm_scoring = \"unmasked\""));
    assert_eq!(line(&cfg, "seeds"), "seeds = [21, 22]");
    // The BERT exports take at most 128 positions: the window fits them.
    assert!(line(&cfg, "window").starts_with("window = 128"), "{cfg}");
    // 600 tokens, 600 logits: nothing to truncate.
    assert!(!cfg.contains("\nvocab ="), "{cfg}");
}

/// `models/{size}/s{seed}/step{step}/model.onnx` from the causal samples,
/// without one checkpoint.
fn sized_grid(p: &Project) -> String {
    for size in ["70m", "14m"] {
        for seed in [11, 12] {
            for step in [0, 50] {
                if (size, seed, step) == ("70m", 12, 50) {
                    continue;
                }
                let dir = p.path().join(format!("models/{size}/s{seed}/step{step}"));
                std::fs::create_dir_all(&dir).unwrap();
                let src = samples().join(format!("causal/neox-seed{seed}/step{step}/model.onnx"));
                std::fs::copy(src, dir.join("model.onnx")).unwrap();
            }
        }
    }
    "models/{size}/s{seed}/step{step}/model.onnx".into()
}

#[test]
fn several_sizes_with_a_missing_checkpoint_keep_the_complete_steps() {
    let p = Project::micro();
    let models = sized_grid(&p);
    let tok = samples().join("causal/tokenizer.json");
    let cfg = init_and_run(
        &p,
        &[
            "--models",
            &models,
            "--tokenizer",
            tok.to_str().unwrap(),
            "--corpus",
            "text/eval.conllu",
        ],
    );
    // Sizes by magnitude; step 50 dropped, the missing checkpoint named.
    assert_eq!(line(&cfg, "sizes"), "sizes = [\"14m\", \"70m\"]");
    assert_eq!(line(&cfg, "steps"), "steps = [0]");
    assert!(cfg.contains("#   size 70m, seed 12, step 50"), "{cfg}");
    // The template is written relative to the config's folder.
    assert_eq!(line(&cfg, "models"), format!("models = \"{models}\""));
    assert!(Path::new(&p.store())
        .join("kl/current/14m-step0.kl.parquet")
        .exists());
}

#[test]
fn no_tokenizer_and_no_files_are_one_line_errors() {
    let p = Project::micro();
    let models = sized_grid(&p);
    // Each a usage error (exit 2) of one line containing every `want`.
    let fails = |template: &str, want: &[&str]| {
        let r = p.run(&["init", "--force", "--models", template]);
        assert_eq!(r.code, 2, "{}", r.stderr);
        assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.stderr);
        for w in want {
            assert!(r.stderr.contains(w), "{w}: {}", r.stderr);
        }
    };
    fails(&models, &["no tokenizer.json beside", "pass --tokenizer"]);
    fails(
        "nothing/s{seed}/step{step}/model.onnx",
        &["--models nothing/s{seed}/step{step}/model.onnx: no file matches"],
    );
    fails(
        "models/{size}/s{seed}/model.onnx",
        &["the template lacks {step}"],
    );
}
