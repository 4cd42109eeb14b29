//! Comparisons: `[[compare]]` in the pipeline (custom rows of
//! `aggregate/compare.parquet`, bad selections refused before anything is
//! written) and `seedconv compare` of two procedures.

use crate::common;
use common::{col, hf_suite_config, read_table, Project};

use arrow_array::{BooleanArray, Float64Array, StringArray, UInt32Array};

/// The value of `column` in the conv_by row of (variable, level, step).
fn conv_by(
    b: &arrow_array::RecordBatch,
    variable: &str,
    level: &str,
    step: u32,
    column: &str,
) -> f64 {
    let i = (0..b.num_rows())
        .find(|&i| {
            col::<StringArray>(b, "variable").value(i) == variable
                && col::<StringArray>(b, "level").value(i) == level
                && col::<UInt32Array>(b, "step").value(i) == step
        })
        .unwrap_or_else(|| panic!("no {variable}={level} at {step}"));
    col::<Float64Array>(b, column).value(i)
}

#[test]
fn custom_comparisons_are_paired_differences_and_bad_ones_write_nothing() {
    let p = Project::micro();
    let cfg = hf_suite_config(&common::hf_models(), "[0, 50, 300]");
    let compare = |a: &str, b: &str| {
        format!("{cfg}\n[[compare]]\nname = \"fn-vs-content\"\na = {{ {a} }}\nb = {{ {b} }}\n")
    };
    // A size the suite does not have: a plan error, one line, no run.
    p.write_config(&compare(
        "size = \"huge\", step = 300",
        "size = \"tiny\", step = 300",
    ));
    let r = p.run(&["run"]);
    assert_ne!(r.code, 0);
    let err = r.stderr.trim();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("'fn-vs-content': a.size 'huge'"), "{err}");
    assert!(!p.store().join("kl").exists(), "something ran");
    // A step it does not have.
    p.write_config(&compare(
        "size = \"tiny\", step = 300",
        "size = \"tiny\", step = 7",
    ));
    let err = p.run(&["run"]).stderr;
    assert!(err.contains("b.step 7 is not a step"), "{err}");
    // A level no row has: the aggregate fails naming it; no entry written.
    p.write_config(&compare(
        "size = \"tiny\", step = 300, variable = \"pos_group\", level = \"function\"",
        "size = \"tiny\", step = 300, variable = \"pos_group\", level = \"adverbial\"",
    ));
    let r = p.run(&["run", "aggregate"]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr
            .contains("[[compare]] 'fn-vs-content': b selects level 'adverbial' of pos_group"),
        "{}",
        r.stderr
    );
    assert!(!p.store().join("aggregate/current").exists());

    // A good one: function vs content words at step 300.
    p.write_config(&compare(
        "size = \"tiny\", step = 300, variable = \"pos_group\", level = \"function\"",
        "size = \"tiny\", step = 300, variable = \"pos_group\", level = \"content\"",
    ));
    p.ok(&["run", "aggregate"]);
    let s = p.store();
    let cmp = read_table(&s.join("aggregate/current/compare.parquet"));
    let by = read_table(&s.join("aggregate/current/conv_by.parquet"));
    let kind = col::<StringArray>(&cmp, "kind");
    let i = (0..cmp.num_rows())
        .find(|&i| kind.value(i) == "custom")
        .unwrap();
    assert_eq!(col::<StringArray>(&cmp, "name").value(i), "fn-vs-content");
    let f = conv_by(&by, "pos_group", "function", 300, "conv");
    let c = conv_by(&by, "pos_group", "content", 300, "conv");
    let delta = col::<Float64Array>(&cmp, "delta").value(i);
    assert!((delta - (f - c)).abs() < 1e-12, "{delta} vs {}", f - c);
    let (lo, hi) = (
        col::<Float64Array>(&cmp, "ci_low").value(i),
        col::<Float64Array>(&cmp, "ci_high").value(i),
    );
    let pv = col::<Float64Array>(&cmp, "p").value(i);
    assert!(
        lo < delta && delta < hi && (0.0..=1.0).contains(&pv),
        "{lo} {delta} {hi} {pv}"
    );
    // The built-in ones are there too: the same level pair, and each step
    // against the last.
    let n_builtin = (0..cmp.num_rows())
        .filter(|&j| {
            kind.value(j) == "level"
                && col::<StringArray>(&cmp, "level_a").value(j) == "function"
                && col::<StringArray>(&cmp, "level_b").value(j) == "content"
                && col::<UInt32Array>(&cmp, "step_a").value(j) == 300
        })
        .count();
    assert_eq!(n_builtin, 1);
    let last: Vec<usize> = (0..cmp.num_rows())
        .filter(|&j| kind.value(j) == "step_vs_last")
        .collect();
    assert_eq!(last.len(), 2);
}

/// A built-in suite of 3 seeds, trained for 24 steps; `extra` goes into
/// `[train]`.
fn builtin(extra: &str) -> String {
    common::builtin_suite("[1, 2, 3]", "[0, 8, 24]", extra)
}

#[test]
fn compare_two_procedures_and_a_procedure_with_itself() {
    let p = Project::micro();
    std::fs::write(p.path().join("a.toml"), builtin("learning_rate = 1e-3")).unwrap();
    std::fs::write(p.path().join("b.toml"), builtin("learning_rate = 1e-2")).unwrap();
    for c in ["a.toml", "b.toml"] {
        p.ok(&["-c", c, "run", "aggregate"]);
    }
    // Before B's results exist for a sweep point: one line, nothing written.
    let r = p.run(&[
        "compare",
        "a.toml",
        "--set-b",
        "train.learning_rate=3e-3",
        "--out",
        "none",
    ]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("no fresh `aggregate` results"),
        "{}",
        r.stderr
    );
    assert!(!p.path().join("none").exists());

    p.ok(&["compare", "a.toml", "b.toml", "--out", "ab"]);
    let t = read_table(&p.path().join("ab/compare.parquet"));
    assert_eq!(t.num_rows(), 3);
    // Each config's own view of the store.
    let (a_conv, b_conv) = (
        read_table(&p.store().join("aggregate/current.a/conv.parquet")),
        read_table(&p.store().join("aggregate/current.b/conv.parquet")),
    );
    for i in 0..3 {
        let step = col::<UInt32Array>(&t, "step").value(i);
        let at = |b: &arrow_array::RecordBatch| {
            let j = (0..b.num_rows())
                .find(|&j| col::<UInt32Array>(b, "step").value(j) == step)
                .unwrap();
            col::<Float64Array>(b, "conv").value(j)
        };
        let d = col::<Float64Array>(&t, "delta").value(i);
        assert!((d - (at(&a_conv) - at(&b_conv))).abs() < 1e-12);
        let (lo, hi, pv) = (
            col::<Float64Array>(&t, "ci_low").value(i),
            col::<Float64Array>(&t, "ci_high").value(i),
            col::<Float64Array>(&t, "p").value(i),
        );
        if step == 0 {
            // The same initialisations: the learning rate has not acted yet.
            assert_eq!((d, lo, hi, pv), (0.0, 0.0, 0.0, 1.0));
        } else {
            assert!(lo < d && d < hi, "step {step}: {lo} {d} {hi}");
        }
        assert!((0.0..=1.0).contains(&pv));
        // Same seed labels and corpus: paired on both.
        assert!(col::<BooleanArray>(&t, "paired_seeds").value(i));
        assert!(col::<BooleanArray>(&t, "paired_docs").value(i));
    }
    // After training the learning rates differ: their E[conv] does too.
    let last = (0..3)
        .find(|&i| col::<UInt32Array>(&t, "step").value(i) == 24)
        .unwrap();
    assert!(col::<Float64Array>(&t, "delta").value(last).abs() > 0.0);
    for f in ["compare.svg", "compare.csv", "compare.md"] {
        assert!(p.path().join("ab").join(f).exists(), "{f}");
    }

    // A procedure against itself: Δ = 0 exactly, p = 1.
    p.ok(&["compare", "a.toml", "a.toml", "--out", "aa"]);
    let t = read_table(&p.path().join("aa/compare.parquet"));
    for i in 0..t.num_rows() {
        for c in ["delta", "ci_low", "ci_high"] {
            assert_eq!(col::<Float64Array>(&t, c).value(i), 0.0, "{c}");
        }
        assert_eq!(col::<Float64Array>(&t, "p").value(i), 1.0);
    }

    // Suites without a common (size, step): one line naming both, no folder.
    std::fs::write(
        p.path().join("c.toml"),
        hf_suite_config(&common::hf_models(), "[0, 50]"),
    )
    .unwrap();
    p.ok(&["-c", "c.toml", "run", "aggregate"]);
    let r = p.run(&["compare", "a.toml", "c.toml", "--out", "ac"]);
    assert_ne!(r.code, 0);
    let err = r.stderr.trim();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("a.toml and c.toml have no (size, step) in common"),
        "{err}"
    );
    assert!(!p.path().join("ac").exists());
}
