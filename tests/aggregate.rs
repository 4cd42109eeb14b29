//! The analysis tables, recomputed here from the per-row tables they
//! summarise (an external suite of the shipped samples: 2 seeds × 3 steps).

mod common;
use common::{hf_suite_config, Project};

use arrow::array::{Array, BooleanArray, Float32Array, Float64Array, StringArray, UInt32Array};
use std::collections::BTreeMap;

use common::{col, read_table};

#[test]
fn aggregates_match_an_independent_computation() {
    let p = Project::micro();
    let cfg = hf_suite_config(&common::hf_models(), "[0, 50, 300]");
    p.write_config(&format!(
        "{cfg}\n[aggregate]\nbootstrap = 200\nmin_rows = 40\n"
    ));
    p.ok(&["run"]);
    let s = p.store();
    let read = |rel: &str| read_table(&s.join(rel));
    let conv = read("aggregate/current/conv.parquet");
    let conv_by = read("aggregate/current/conv_by.parquet");
    // conv_by holds exactly the declared conditioning variables.
    let variables: std::collections::BTreeSet<&str> = (0..conv_by.num_rows())
        .map(|j| col::<StringArray>(&conv_by, "variable").value(j))
        .collect();
    let declared: std::collections::BTreeSet<&str> = seedconv::analysis::conditioning::VARIABLES
        .iter()
        .map(|v| v.name)
        .collect();
    assert_eq!(variables, declared);
    let base = read("aggregate/current/baselines.parquet");
    let ann = read("annotate/current/annotations.parquet");
    let fs = read("aggregate/current/final_surprisal.parquet");
    let bin_of_row: BTreeMap<u32, String> = (0..ann.num_rows())
        .map(|i| {
            (
                col::<UInt32Array>(&ann, "row").value(i),
                col::<StringArray>(&ann, "freq_bin").value(i).to_string(),
            )
        })
        .collect();
    let noun_of_row: BTreeMap<u32, bool> = (0..ann.num_rows())
        .filter(|&i| !col::<BooleanArray>(&ann, "is_noun").is_null(i))
        .map(|i| {
            (
                col::<UInt32Array>(&ann, "row").value(i),
                col::<BooleanArray>(&ann, "is_noun").value(i),
            )
        })
        .collect();
    let sbin: BTreeMap<u32, String> = (0..fs.num_rows())
        .map(|i| {
            (
                col::<UInt32Array>(&fs, "row").value(i),
                col::<StringArray>(&fs, "surprisal_bin")
                    .value(i)
                    .to_string(),
            )
        })
        .collect();

    for step in [0u32, 50, 300] {
        let k = read(&format!("kl/current/tiny-step{step}.kl.parquet"));
        let (sa, row, kl) = (
            col::<StringArray>(&k, "seed_a"),
            col::<UInt32Array>(&k, "row"),
            col::<Float64Array>(&k, "kl"),
        );
        // pair → rows' KL
        let mut pairs: BTreeMap<String, Vec<(u32, f64)>> = BTreeMap::new();
        for i in 0..k.num_rows() {
            pairs
                .entry(sa.value(i).to_string())
                .or_default()
                .push((row.value(i), kl.value(i)));
        }
        let means: Vec<f64> = pairs
            .values()
            .map(|v| v.iter().map(|x| x.1).sum::<f64>() / v.len() as f64)
            .collect();
        let want = -(means.iter().sum::<f64>() / means.len() as f64);
        let sd_pairs = ((means[0] - means[1]).powi(2) / 2.0).sqrt();
        let i = (0..conv.num_rows())
            .find(|&i| col::<UInt32Array>(&conv, "step").value(i) == step)
            .unwrap();
        assert!((col::<Float64Array>(&conv, "conv").value(i) - want).abs() < 1e-12);
        assert!((col::<Float64Array>(&conv, "sd_pairs").value(i) - sd_pairs).abs() < 1e-12);
        let (lo, hi) = (
            col::<Float64Array>(&conv, "ci_low").value(i),
            col::<Float64Array>(&conv, "ci_high").value(i),
        );
        assert!(lo <= want && want <= hi, "{lo} {want} {hi}");
        // Spread across contexts: quantiles of conv(row) = −mean over pairs.
        let mut conv_row: BTreeMap<u32, f64> = BTreeMap::new();
        for v in pairs.values() {
            for &(r, x) in v {
                *conv_row.entry(r).or_default() -= x / pairs.len() as f64;
            }
        }
        let mut sorted: Vec<f64> = conv_row.into_values().collect();
        sorted.sort_by(f64::total_cmp);
        for (q, name) in [(0.05, "q05"), (0.5, "q50"), (0.95, "q95")] {
            // numpy's default: linear interpolation between order statistics.
            let h = q * (sorted.len() - 1) as f64;
            let (j, f) = (h.floor() as usize, h.fract());
            let want = sorted[j] + f * (sorted[(j + 1).min(sorted.len() - 1)] - sorted[j]);
            let got = col::<Float64Array>(&conv, name).value(i);
            assert!((got - want).abs() < 1e-12, "{name}: {got} vs {want}");
        }

        // Conditional on frequency bin, on nouns and on the surprisal bin.
        type Key = fn(
            &BTreeMap<u32, String>,
            &BTreeMap<u32, bool>,
            &BTreeMap<u32, String>,
            u32,
        ) -> Option<String>;
        let keys: [(&str, Key); 3] = [
            ("freq_bin", |b, _, _, r| b.get(&r).cloned()),
            ("pos_group", |_, n, _, r| {
                n.get(&r).and_then(|&x| x.then(|| "noun".to_string()))
            }),
            ("surprisal_bin", |_, _, s, r| s.get(&r).cloned()),
        ];
        for (by, key) in keys {
            let mut cells: BTreeMap<String, Vec<f64>> = BTreeMap::new();
            let mut counts: BTreeMap<String, usize> = BTreeMap::new();
            for v in pairs.values() {
                let mut per: BTreeMap<String, (f64, usize)> = BTreeMap::new();
                for &(r, x) in v {
                    if let Some(g) = key(&bin_of_row, &noun_of_row, &sbin, r) {
                        let e = per.entry(g).or_default();
                        e.0 += x;
                        e.1 += 1;
                    }
                }
                for (g, (sum, n)) in per {
                    cells.entry(g.clone()).or_default().push(sum / n as f64);
                    counts.insert(g, n);
                }
            }
            assert!(!cells.is_empty(), "{by}");
            for (g, m) in cells {
                let j = (0..conv_by.num_rows())
                    .find(|&j| {
                        col::<StringArray>(&conv_by, "variable").value(j) == by
                            && col::<StringArray>(&conv_by, "level").value(j) == g
                            && col::<UInt32Array>(&conv_by, "step").value(j) == step
                    })
                    .unwrap_or_else(|| panic!("no cell {by} = {g} at step {step}"));
                let want = -(m.iter().sum::<f64>() / m.len() as f64);
                assert!(
                    (col::<Float64Array>(&conv_by, "conv").value(j) - want).abs() < 1e-12,
                    "{by} {g}"
                );
                let n = counts[&g];
                assert_eq!(col::<UInt32Array>(&conv_by, "n_rows").value(j) as usize, n);
                assert_eq!(col::<BooleanArray>(&conv_by, "few_rows").value(j), n < 40);
            }
        }

        // Baselines and cross-entropy: means over each seed's dist table.
        for seed in ["11", "12"] {
            let d = read(&format!(
                "dist/current/tiny-seed{seed}-step{step}.dist.parquet"
            ));
            let m = |c: &str| {
                col::<Float32Array>(&d, c)
                    .values()
                    .iter()
                    .map(|&x| x as f64)
                    .sum::<f64>()
                    / d.num_rows() as f64
            };
            let j = (0..base.num_rows())
                .find(|&j| {
                    col::<UInt32Array>(&base, "step").value(j) == step
                        && col::<StringArray>(&base, "seed").value(j) == seed
                })
                .unwrap();
            assert!(
                (col::<Float64Array>(&base, "kl_uniform").value(j) - m("kl_uniform")).abs() < 1e-9
            );
            assert!(
                (col::<Float64Array>(&base, "kl_unigram").value(j) - m("kl_unigram")).abs() < 1e-9
            );
            assert!(
                (col::<Float64Array>(&base, "cross_entropy").value(j) + m("target_logprob")).abs()
                    < 1e-9
            );
        }
    }
    // Final surprisal: mean over both seeds of −log p(target) at the last step.
    let d11 = read("dist/current/tiny-seed11-step300.dist.parquet");
    let d12 = read("dist/current/tiny-seed12-step300.dist.parquet");
    let fsv = col::<Float64Array>(&fs, "final_surprisal");
    let fsr = col::<UInt32Array>(&fs, "row");
    let lp = |d: &arrow::array::RecordBatch, r: u32| {
        let rows = col::<UInt32Array>(d, "row");
        let i = (0..d.num_rows()).find(|&i| rows.value(i) == r).unwrap();
        col::<Float32Array>(d, "target_logprob").value(i) as f64
    };
    for i in (0..fs.num_rows()).step_by(7) {
        let r = fsr.value(i);
        let want = -(lp(&d11, r) + lp(&d12, r)) / 2.0;
        assert!((fsv.value(i) - want).abs() < 1e-9);
        let bin = match want {
            x if x < 1.0 => "[0,1)",
            x if x < 2.0 => "[1,2)",
            x if x < 4.0 => "[2,4)",
            x if x < 8.0 => "[4,8)",
            _ => ">=8",
        };
        assert_eq!(sbin[&r], bin);
    }
    // Four phases per size, the uniform one starting at step 0.
    let ph = read("aggregate/current/phases.parquet");
    assert_eq!(ph.num_rows(), 4);
    assert_eq!(col::<StringArray>(&ph, "phase").value(0), "uniform");
    assert_eq!(col::<UInt32Array>(&ph, "start_step").value(0), 0);
    let t = read("aggregate/current/token_table.parquet");
    let pos = col::<StringArray>(&t, "position");
    let mk = col::<Float64Array>(&t, "mean_kl");
    let max_low = (0..t.num_rows())
        .filter(|&i| pos.value(i) == "lowest")
        .map(|i| mk.value(i))
        .fold(f64::MIN, f64::max);
    let min_high = (0..t.num_rows())
        .filter(|&i| pos.value(i) == "highest")
        .map(|i| mk.value(i))
        .fold(f64::MAX, f64::min);
    assert!(max_low <= min_high);

    // Recomputed, every aggregate table is byte-identical (float sums run in
    // a fixed order), so downstream stages see an unchanged output.
    let before = p.artefacts();
    let r = p.ok(&["run", "--force", "aggregate"]);
    assert!(r.computed_ids().contains(&"aggregate".to_string()));
    let after = p.artefacts();
    let changed: Vec<&String> = before
        .keys()
        .filter(|k| k.starts_with("aggregate/") && before.get(*k) != after.get(*k))
        .collect();
    assert!(changed.is_empty(), "not reproducible: {changed:?}");
    assert!(
        !r.computed_ids().contains(&"report".to_string()),
        "early cutoff"
    );
}
