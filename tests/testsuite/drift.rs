//! Trajectories: each checkpoint's KL to its own previous and final
//! checkpoints and between sizes, against a float64 recomputation from the
//! real exports; a checkpoint against itself is exactly 0.

use std::collections::BTreeMap;

use crate::common;
use arrow_array::{Float64Array, StringArray, UInt32Array};
use common::{causal, col, hf_suite_config, lsm64, read_table, Project};
use seedconv::lm::onnx::runtime::OrtModel;

/// Row id → (kl, tv) of one comparison.
type PerRow = BTreeMap<u32, (f64, f64)>;

/// A config of two sizes over the same files (steps 0, 50, 300): the same
/// seed's "sizes" are one model, so their divergence is exactly 0 and their
/// trajectories are equal.
fn twin_sizes(p: &Project) -> String {
    let models = p.path().join("models");
    std::fs::create_dir_all(&models).unwrap();
    for size in ["tiny", "twin"] {
        std::os::unix::fs::symlink(causal(), models.join(size)).unwrap();
    }
    let template = format!(
        "{}/{{size}}/neox-seed{{seed}}/step{{step}}/model.onnx",
        models.display()
    );
    hf_suite_config(&template, "[0, 50, 300]")
        .replace("sizes = [\"tiny\"]", "sizes = [\"tiny\", \"twin\"]")
}

#[test]
fn self_drift_and_sizes_match_float64_and_a_checkpoint_against_itself_is_zero() {
    let p = Project::micro();
    let cfg = twin_sizes(&p);
    p.write_config(&cfg);
    p.ok(&["run"]);
    let s = p.store();
    let rows = read_table(&s.join("corpus/current/rows.parquet"));
    let tokens = read_table(&s.join("corpus/current/tokens.parquet"));
    let tok: Vec<i64> = col::<UInt32Array>(&tokens, "token_id")
        .values()
        .iter()
        .map(|&x| x as i64)
        .collect();
    let (row_id, cstart) = (
        col::<UInt32Array>(&rows, "row").values().to_vec(),
        col::<UInt32Array>(&rows, "context_start").values().to_vec(),
    );
    let n = 700;
    // Every 9th row of seed 11 at each step, alone, in float64.
    let sample: Vec<usize> = (0..row_id.len()).step_by(9).collect();
    let mut lp: BTreeMap<u32, Vec<Vec<f64>>> = BTreeMap::new();
    for step in [0u32, 50, 300] {
        let mut m = OrtModel::from_file(
            &causal().join(format!("neox-seed11/step{step}/model.onnx")),
            1,
        )
        .unwrap();
        let per: Vec<Vec<f64>> = sample
            .iter()
            .map(|&i| {
                let ctx = &tok[cstart[i] as usize..=row_id[i] as usize];
                let (logits, w) = m.logits(ctx, 1, ctx.len()).unwrap();
                lsm64(&logits[(ctx.len() - 1) * w..ctx.len() * w], n)
            })
            .collect();
        lp.insert(step, per);
    }
    let kl = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x.exp() * (x - y)).sum::<f64>();
    let tv = |a: &[f64], b: &[f64]| {
        0.5 * a
            .iter()
            .zip(b)
            .map(|(x, y)| (x.exp() - y.exp()).abs())
            .sum::<f64>()
    };
    for size in ["tiny", "twin"] {
        let d = read_table(&s.join(format!("drift/current/{size}-seed11.drift.parquet")));
        let (reference, step, ref_step, row) = (
            col::<StringArray>(&d, "reference"),
            col::<UInt32Array>(&d, "step"),
            col::<UInt32Array>(&d, "ref_step"),
            col::<UInt32Array>(&d, "row"),
        );
        let (dk, dt) = (col::<Float64Array>(&d, "kl"), col::<Float64Array>(&d, "tv"));
        // (reference, step, ref_step) → row id → (kl, tv)
        let mut got: BTreeMap<(String, u32, u32), PerRow> = BTreeMap::new();
        for i in 0..d.num_rows() {
            got.entry((
                reference.value(i).to_string(),
                step.value(i),
                ref_step.value(i),
            ))
            .or_default()
            .insert(row.value(i), (dk.value(i), dt.value(i)));
        }
        let want_keys = [
            ("final", 0, 300),
            ("final", 50, 300),
            ("final", 300, 300),
            ("previous", 50, 0),
            ("previous", 300, 50),
        ];
        assert_eq!(
            got.keys().cloned().collect::<Vec<_>>(),
            want_keys
                .iter()
                .map(|(r, a, b)| (r.to_string(), *a, *b))
                .collect::<Vec<_>>()
        );
        for ((r, a, b), per_row) in &got {
            assert_eq!(per_row.len(), row_id.len());
            if a == b {
                assert!(
                    per_row.values().all(|&(k, t)| k == 0.0 && t.abs() < 1e-6),
                    "{r} {a}"
                );
                continue;
            }
            for (j, &i) in sample.iter().enumerate() {
                let (x, y) = (&lp[a][j], &lp[b][j]);
                let (k, t) = per_row[&row_id[i]];
                let (wk, wt) = (kl(x, y), tv(x, y));
                assert!(
                    (k - wk).abs() <= (0.01 * wk).max(1e-4),
                    "{size} {r} {a}→{b} row {i}: {k} vs {wk}"
                );
                assert!(
                    (t - wt).abs() <= 1e-5,
                    "{size} {r} {a}→{b} row {i}: tv {t} vs {wt}"
                );
            }
        }
    }
    // Between the two "sizes" of one seed at a step: exactly 0.
    let a = read_table(&s.join("drift/current/seed12-step50.drift.parquet"));
    assert_eq!(a.num_rows(), 2 * row_id.len());
    assert!(col::<StringArray>(&a, "reference")
        .iter()
        .all(|r| r == Some("size")));
    assert!(col::<Float64Array>(&a, "kl")
        .values()
        .iter()
        .all(|&k| k == 0.0));
    // The aggregate: per (reference, size, step) the mean over seeds of each
    // seed's mean over rows.
    let t = read_table(&s.join("aggregate/current/trajectories.parquet"));
    let mut checked = 0;
    for i in 0..t.num_rows() {
        let (r, size, st, m) = (
            col::<StringArray>(&t, "reference").value(i),
            col::<StringArray>(&t, "size").value(i),
            col::<UInt32Array>(&t, "step").value(i),
            col::<StringArray>(&t, "measure").value(i),
        );
        if r != "previous" || size != "tiny" || m != "kl" {
            continue;
        }
        let mean_of = |seed: u32| {
            let d = read_table(&s.join(format!("drift/current/tiny-seed{seed}.drift.parquet")));
            let v: Vec<f64> = (0..d.num_rows())
                .filter(|&j| {
                    col::<StringArray>(&d, "reference").value(j) == "previous"
                        && col::<UInt32Array>(&d, "step").value(j) == st
                })
                .map(|j| col::<Float64Array>(&d, "kl").value(j))
                .collect();
            v.iter().sum::<f64>() / v.len() as f64
        };
        let want = (mean_of(11) + mean_of(12)) / 2.0;
        let got = col::<Float64Array>(&t, "value").value(i);
        assert!((got - want).abs() <= 1e-12 * want, "{st}: {got} vs {want}");
        assert_eq!(col::<UInt32Array>(&t, "n_seeds").value(i), 2);
        checked += 1;
    }
    assert_eq!(checked, 2);
}

#[test]
fn identical_seeds_have_zero_divergence_and_agree_on_every_top_token() {
    // Seed 12's checkpoints are seed 11's files: every measure of the
    // battery must say "the same model".
    let p = Project::micro();
    let models = p.path().join("models");
    std::fs::create_dir_all(&models).unwrap();
    for seed in [11, 12] {
        std::os::unix::fs::symlink(
            causal().join("neox-seed11"),
            models.join(format!("neox-seed{seed}")),
        )
        .unwrap();
    }
    let template = format!(
        "{}/neox-seed{{seed}}/step{{step}}/model.onnx",
        models.display()
    );
    p.write_config(&format!(
        "{}\n[kl]\ndrift = false\n",
        hf_suite_config(&template, "[0, 300]")
    ));
    p.ok(&["run"]);
    let s = p.store();
    assert!(!s.join("drift").exists() || std::fs::read_dir(s.join("drift")).unwrap().count() == 0);
    for step in [0, 300] {
        let k = read_table(&s.join(format!("kl/current/tiny-step{step}.kl.parquet")));
        assert!(col::<Float64Array>(&k, "kl")
            .values()
            .iter()
            .all(|&x| x == 0.0));
        assert!(col::<Float64Array>(&k, "tv")
            .values()
            .iter()
            .all(|&x| x.abs() < 1e-6));
        assert!(col::<Float64Array>(&k, "dp")
            .values()
            .iter()
            .all(|&x| x == 0.0));
        let agree = col::<arrow_array::BooleanArray>(&k, "top1_agree");
        assert_eq!(agree.true_count(), k.num_rows());
        let g = read_table(&s.join(format!("kl/current/tiny-step{step}.group.parquet")));
        assert!(col::<Float64Array>(&g, "jsd")
            .values()
            .iter()
            .all(|&x| x.abs() < 1e-6));
        assert!(col::<Float64Array>(&g, "ens_gain")
            .values()
            .iter()
            .all(|&x| x.abs() < 1e-12));
    }
}

/// `kl.resident_mb` changes memory only: spans of one row in kl and one
/// batch per drift chunk — from dist's arrays and from the models, mapped
/// and recomputed — give every kl and drift table the same bytes, and the
/// setting is in no key (the default config finds everything fresh).
#[test]
fn any_resident_memory_setting_gives_the_same_kl_and_drift_bytes() {
    let p = Project::micro();
    let cfg = twin_sizes(&p);
    p.write_config(&cfg);
    p.ok(&["run", "drift", "kl"]);
    let tables = |p: &Project| -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        for stage in ["kl", "drift"] {
            let dir = p.store().join(stage).join("current");
            for e in std::fs::read_dir(&dir).unwrap().flatten() {
                let n = e.file_name().to_string_lossy().to_string();
                if n.ends_with(".parquet") {
                    out.insert(format!("{stage}/{n}"), std::fs::read(e.path()).unwrap());
                }
            }
        }
        out
    };
    let first = tables(&p);
    assert!(first.keys().any(|n| n.starts_with("drift/")));
    let force = ["--force", "dist", "--force", "kl", "--force", "drift"];
    for retain in ["false", "true"] {
        let retain = format!("dist.retain_full={retain}");
        let mut args = vec!["run", "--set", "kl.resident_mb=0", "--set", &retain];
        args.extend(force);
        args.extend(["drift", "kl"]);
        p.ok(&args);
        let m = p.manifest_of("drift", "tiny-seed11.drift.parquet");
        assert!(
            m["extra"]["chunks"].as_u64().unwrap() > 1,
            "{retain}: one chunk a batch, several batches: {m}"
        );
        let again = tables(&p);
        assert_eq!(first.len(), again.len());
        for (n, b) in &first {
            assert!(
                again[n] == *b,
                "{n} differs with kl.resident_mb = 0, {retain}"
            );
        }
    }
    // Not keyed: the default config has nothing to run.
    let dry = p.ok(&["run", "--dry-run", "drift", "kl"]);
    assert!(
        dry.stdout.contains("0 would run, 0 may run"),
        "{}",
        dry.stdout
    );
}
