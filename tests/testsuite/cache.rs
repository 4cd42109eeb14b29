//! Incremental caching through the real binary: what each key ingredient
//! invalidates, early cutoff, and the no-op second run. One test per
//! ingredient, after casey/just's `tests/cache.rs`.

use crate::common;
use common::Project;

/// Instances of the micro pipeline: tokenizer, corpus, 2 × frequency, unigram, annotate.
const ALL: usize = 6;

fn fresh_project() -> Project {
    let p = Project::micro();
    let r = p.ok(&["run"]);
    assert_eq!(r.counts(), (ALL, 0));
    p
}

#[test]
fn second_run_does_nothing_and_status_is_all_fresh() {
    let p = fresh_project();
    let r = p.ok(&["run"]);
    assert_eq!(r.counts(), (0, ALL));
    let s = p.ok(&["status"]);
    assert_eq!(
        s.stdout.lines().filter(|l| l.starts_with("fresh ")).count(),
        ALL,
        "{}",
        s.stdout
    );
    assert!(
        s.stdout
            .contains("corpus: 1 fresh, 0 stale, 0 missing, 0 pending"),
        "{}",
        s.stdout
    );
    assert!(
        s.stdout.contains("frequency: 2 fresh, 0 stale"),
        "{}",
        s.stdout
    );
}

#[test]
fn status_before_any_run_says_missing_and_pending() {
    let p = Project::micro();
    let s = p.ok(&["status"]);
    assert!(
        s.stdout
            .lines()
            .any(|l| l.starts_with("missing  tokenizer") && l.contains("never run")),
        "{}",
        s.stdout
    );
    assert!(
        s.stdout
            .lines()
            .any(|l| l.starts_with("pending  corpus") && l.contains("waits on tokenizer")),
        "{}",
        s.stdout
    );
}

#[test]
fn changed_parameter_reruns_only_that_stage_and_status_says_old_and_new() {
    let p = fresh_project();
    p.write_config(&p.config().replace("window = 64", "window = 32"));
    let s = p.ok(&["status"]);
    let line = s.stdout.lines().find(|l| l.contains(" corpus ")).unwrap();
    assert!(line.starts_with("stale"), "{line}");
    assert!(line.contains("params.window changed 64 → 32"), "{line}");
    let dry = p.ok(&["run", "--dry-run"]);
    assert!(
        dry.stdout
            .contains("would run corpus: params.window changed 64 → 32"),
        "{}",
        dry.stdout
    );
    assert!(
        dry.stdout.contains("1 would run, 1 may run, 4 fresh"),
        "{}",
        dry.stdout
    );
    let r = p.ok(&["run"]);
    // The corpus tables changed, so the annotations built on them rerun.
    assert_eq!(r.computed_ids(), vec!["annotate", "corpus"]);
    assert_eq!(r.counts(), (2, ALL - 2));
}

#[test]
fn changed_input_file_reruns_its_instance_and_dependents_only() {
    let p = fresh_project();
    let b = p.path().join("text/b.txt");
    let mut text = std::fs::read_to_string(&b).unwrap();
    text.push_str("A brand new closing paragraph about the union.\n");
    std::fs::write(&b, text).unwrap();
    let s = p.ok(&["status"]);
    let line = s
        .stdout
        .lines()
        .find(|l| l.contains("frequency[b.txt]"))
        .unwrap();
    assert!(line.contains("input file changed"), "{line}");
    // The tokenizer trains on b.txt too, so it reruns; if its vocabulary
    // comes out the same, only the count of b.txt and the unigram follow.
    let before = std::fs::read(p.current_file("tokenizer", "tokenizer.json")).unwrap();
    let r = p.ok(&["run"]);
    let after = std::fs::read(p.current_file("tokenizer", "tokenizer.json")).unwrap();
    if before == after {
        assert_eq!(
            r.computed_ids(),
            vec!["annotate", "frequency[b.txt]", "tokenizer", "unigram"]
        );
    } else {
        assert_eq!(r.counts().0, ALL);
    }

    // The evaluation text feeds only the corpus.
    let e = p.path().join("text/eval.conllu");
    let text = std::fs::read_to_string(&e)
        .unwrap()
        .replacen("# text = ", "# text = Well, ", 1);
    std::fs::write(&e, text).unwrap();
    let r = p.ok(&["run"]);
    assert_eq!(r.computed_ids(), vec!["annotate", "corpus"]);
}

#[test]
fn frequency_file_change_reruns_its_count_and_the_unigram_only() {
    let p = Project::micro();
    // Count a separate file so the tokenizer does not depend on it.
    std::fs::write(
        p.path().join("text/freq.txt"),
        "the cat sat on the mat\nthe dog\n",
    )
    .unwrap();
    p.write_config(&format!(
        "{}\n[frequency]\nfiles = [\"text/freq.txt\", \"text/a.txt\"]\n",
        Project::micro_config()
    ));
    p.ok(&["run"]);
    std::fs::write(
        p.path().join("text/freq.txt"),
        "the cat sat on the mat\nthe dog barked\n",
    )
    .unwrap();
    let r = p.ok(&["run"]);
    assert_eq!(
        r.computed_ids(),
        vec!["annotate", "frequency[freq.txt]", "unigram"]
    );
}

#[test]
fn upstream_output_change_reruns_all_dependents() {
    let p = fresh_project();
    p.write_config(&p.config().replace("vocab_size = 300", "vocab_size = 320"));
    let s = p.ok(&["status"]);
    assert!(
        s.stdout.contains("params.vocab_size changed 300 → 320"),
        "{}",
        s.stdout
    );
    assert!(
        s.stdout.lines().any(|l| l.starts_with("pending  corpus")),
        "{}",
        s.stdout
    );
    let r = p.ok(&["run"]);
    assert_eq!(r.counts(), (ALL, 0));
    // And the reason recorded for a dependent is the upstream output.
    p.write_config(&p.config().replace("vocab_size = 320", "vocab_size = 300"));
    p.ok(&["run", "tokenizer"]);
    let s = p.ok(&["status"]);
    // Back to the old vocabulary: the old entries are valid again.
    assert_eq!(
        s.stdout.lines().filter(|l| l.starts_with("fresh ")).count(),
        ALL,
        "{}",
        s.stdout
    );
}

#[test]
fn early_cutoff_identical_upstream_output_reruns_nothing_downstream() {
    let p = fresh_project();
    // Forcing the tokenizer retrains it; the same bytes come out, so no
    // downstream instance reruns.
    let r = p.ok(&["run", "--force", "tokenizer"]);
    assert_eq!(r.computed_ids(), vec!["tokenizer"]);
    assert_eq!(r.counts(), (1, ALL - 1));

    // A frequency file whose lines are reordered has a new hash but the same
    // counts: its count reruns, the unigram does not.
    std::fs::write(p.path().join("text/freq.txt"), "one two three\nfour five\n").unwrap();
    p.write_config(&format!(
        "{}\n[frequency]\nfiles = [\"text/freq.txt\"]\n",
        Project::micro_config()
    ));
    p.ok(&["run"]);
    std::fs::write(p.path().join("text/freq.txt"), "four five\none two three\n").unwrap();
    let r = p.ok(&["run"]);
    assert_eq!(r.computed_ids(), vec!["frequency[freq.txt]"]);
}

#[test]
fn missing_output_file_reruns_that_instance() {
    let p = fresh_project();
    let rows = p.current_file("corpus", "rows.parquet");
    std::fs::remove_file(&rows).unwrap();
    let s = p.ok(&["status"]);
    let line = s.stdout.lines().find(|l| l.contains(" corpus ")).unwrap();
    assert!(
        line.starts_with("stale") && line.contains("output rows.parquet is missing"),
        "{line}"
    );
    let r = p.ok(&["run"]);
    assert_eq!(r.computed_ids(), vec!["corpus"]);
    assert!(rows.exists());
}

#[test]
fn deleted_manifest_reruns_that_instance() {
    let p = fresh_project();
    let tok = p.current_file("tokenizer", "tokenizer.json");
    std::fs::remove_file(tok.parent().unwrap().join("manifest.json")).unwrap();
    let s = p.ok(&["status"]);
    assert!(
        s.stdout
            .lines()
            .any(|l| l.starts_with("stale    tokenizer") && l.contains("no valid manifest")),
        "{}",
        s.stdout
    );
    let r = p.ok(&["run"]);
    // Same bytes again: early cutoff keeps everything downstream.
    assert_eq!(r.computed_ids(), vec!["tokenizer"]);
}

#[test]
fn run_of_named_stage_runs_only_it_and_its_upstream() {
    let p = Project::micro();
    let r = p.ok(&["run", "corpus"]);
    assert_eq!(r.computed_ids(), vec!["corpus", "tokenizer"]);
    let r = p.run(&["run", "nonsense"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("unknown stage nonsense"), "{}", r.stderr);
}

#[test]
fn moving_the_project_keeps_the_cache() {
    let p = fresh_project();
    let moved = tempfile::TempDir::new().unwrap();
    let dst = moved.path().join("proj");
    std::process::Command::new("cp")
        .arg("-a")
        .arg(p.path())
        .arg(&dst)
        .status()
        .unwrap();
    let out = std::process::Command::new(common::BIN)
        .arg("run")
        .current_dir(&dst)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("computed 0, reused {ALL}")),
        "{stderr}"
    );
}

#[test]
fn config_flag_resolves_paths_against_the_config_folder() {
    let p = fresh_project();
    let elsewhere = tempfile::TempDir::new().unwrap();
    let cfg = p.path().join("pipeline.toml");
    let out = std::process::Command::new(common::BIN)
        .args(["-c", cfg.to_str().unwrap(), "run"])
        .current_dir(elsewhere.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("computed 0, reused {ALL}")),
        "{stderr}"
    );
    assert!(
        std::fs::read_dir(elsewhere.path())
            .unwrap()
            .next()
            .is_none(),
        "nothing written in the working folder"
    );
}
