//! Seed × seed matrices and outlier seeds: a suite in which one seed's
//! checkpoints come from another training run (another learning rate) has
//! that seed flagged where it differs; a coherent suite flags none.

use crate::common;
use common::{col, read_table, Project};

use arrow_array::{BooleanArray, Float64Array, StringArray, UInt32Array};

/// A built-in suite of 4 seeds, 24 steps; `extra` goes into `[train]`.
fn builtin(extra: &str) -> String {
    common::builtin_suite("[1, 2, 3, 4]", "[0, 8, 24]", extra)
}

/// (seed, step) → (flagged, apart, robust z) of a config's seed_outliers.
fn outliers(p: &Project, view: &str) -> Vec<(String, u32, bool, bool, f64)> {
    let t = read_table(
        &p.store()
            .join(format!("aggregate/{view}/seed_outliers.parquet")),
    );
    (0..t.num_rows())
        .map(|i| {
            (
                col::<StringArray>(&t, "seed").value(i).to_string(),
                col::<UInt32Array>(&t, "step").value(i),
                col::<BooleanArray>(&t, "flagged").value(i),
                col::<BooleanArray>(&t, "apart").value(i),
                col::<Float64Array>(&t, "robust_z").value(i),
            )
        })
        .collect()
}

#[test]
fn a_seed_from_another_training_run_is_flagged_and_a_coherent_suite_is_not() {
    let p = Project::micro();
    std::fs::write(p.path().join("a.toml"), builtin("learning_rate = 1e-3")).unwrap();
    std::fs::write(p.path().join("b.toml"), builtin("learning_rate = 3e-2")).unwrap();
    p.ok(&["-c", "a.toml", "run", "aggregate"]);
    p.ok(&["-c", "b.toml", "run", "train"]);
    // The coherent suite: nothing stands apart anywhere.
    let a = outliers(&p, "current.a");
    assert_eq!(a.len(), 4 * 3);
    assert!(a.iter().all(|o| !o.2 && !o.3), "{a:?}");
    // Its matrix: every ordered pair at every step, the pair's mean KL.
    let m = read_table(&p.store().join("aggregate/current.a/seeds.parquet"));
    assert_eq!(m.num_rows(), 12 * 3);
    let conv = read_table(&p.store().join("aggregate/current.a/conv.parquet"));
    for i in 0..conv.num_rows() {
        let step = col::<UInt32Array>(&conv, "step").value(i);
        let kls: Vec<f64> = (0..m.num_rows())
            .filter(|&j| col::<UInt32Array>(&m, "step").value(j) == step)
            .map(|j| col::<Float64Array>(&m, "kl").value(j))
            .collect();
        let mean = kls.iter().sum::<f64>() / kls.len() as f64;
        let want = -col::<Float64Array>(&conv, "conv").value(i);
        assert!(
            (mean - want).abs() < 1e-12 * want.max(1e-300),
            "{mean} vs {want}"
        );
    }

    // A suite of A's seeds 1–3 and B's seed 4, exported files as they are.
    let export = |cfg: &str, seed: u32, step: u32| {
        p.store().join(format!(
            "train/current.{cfg}/t16-seed{seed}/step{step}/model.onnx"
        ))
    };
    for seed in 1..=4u32 {
        for step in [0u32, 8, 24] {
            let from = export(if seed == 4 { "b" } else { "a" }, seed, step);
            let to = p
                .path()
                .join(format!("mixed/t16-seed{seed}/step{step}/model.onnx"));
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(&from, &to).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
        }
    }
    let tok = p.store().join("tokenizer/current/tokenizer.json");
    std::fs::write(
        p.path().join("mixed.toml"),
        format!(
            "[tokenizer]\npath = \"{}\"\n\n[corpus]\npath = \"text/eval.conllu\"\nwindow = 16\n\n[frequency]\nfiles = [\"text/a.txt\"]\n\n[suite]\nmodels = \"mixed/t16-seed{{seed}}/step{{step}}/model.onnx\"\nsizes = [\"t16\"]\nseeds = [1, 2, 3, 4]\nsteps = [0, 8, 24]\n",
            tok.display()
        ),
    )
    .unwrap();
    p.ok(&["-c", "mixed.toml", "run", "aggregate"]);
    let mixed = outliers(&p, "current.mixed");
    for o in &mixed {
        println!(
            "mixed suite: seed {} step {}: robust z {:.2}",
            o.0, o.1, o.4
        );
    }
    for (seed, step, flagged, apart, z) in &mixed {
        let want = seed == "4" && *step > 0;
        assert_eq!(*flagged, want, "seed {seed} step {step}: z {z}");
        // At step 0 the initialisations are the same: nothing differs.
        if *step == 0 {
            assert!(!apart);
        }
    }
    // The report lists it.
    p.ok(&["-c", "mixed.toml", "run"]);
    let md = std::fs::read_to_string(p.store().join("report/current.mixed/report.md")).unwrap();
    assert!(md.contains("seed 4 stands apart at steps 8, 24"), "{md}");
    // The heat map at the last step holds seeds.parquet's matrix.
    let csv = std::fs::read_to_string(
        p.store()
            .join("report/current.mixed/figures/seeds_t16_step24.csv"),
    )
    .unwrap();
    let m = read_table(&p.store().join("aggregate/current.mixed/seeds.parquet"));
    let mut n = 0;
    for j in (0..m.num_rows()).filter(|&j| col::<UInt32Array>(&m, "step").value(j) == 24) {
        let line = format!(
            "{},{},{}",
            col::<StringArray>(&m, "seed_a").value(j),
            col::<StringArray>(&m, "seed_b").value(j),
            col::<Float64Array>(&m, "kl").value(j)
        );
        assert!(csv.lines().any(|l| l == line), "{line} not in\n{csv}");
        n += 1;
    }
    assert_eq!((n, csv.lines().count()), (12, 13));
}
