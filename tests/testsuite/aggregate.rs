//! The analysis tables, recomputed here from the per-row tables they
//! summarise (an external suite of the shipped samples: 2 seeds × 3 steps).

use crate::common;
use common::{hf_suite_config, Project};

use arrow_array::{Array, BooleanArray, Float32Array, Float64Array, StringArray, UInt32Array};
use std::collections::BTreeMap;

use common::{col, read_table};

#[test]
fn aggregates_match_an_independent_computation() {
    let p = Project::micro();
    let cfg = hf_suite_config(&common::hf_models(), "[0, 50, 300]");
    p.write_config(&format!(
        "{cfg}\n[aggregate]\nbootstrap = 200\nmin_rows = 40\ntoken_table_pooled = true\n"
    ));
    p.ok(&["run"]);
    let s = p.store();
    let read = |rel: &str| read_table(&s.join(rel));
    let conv = read("aggregate/current/conv.parquet");
    let conv_by = read("aggregate/current/conv_by.parquet");
    // conv_by holds exactly the declared conditioning variables (`label`
    // only with annotate.labels, which this pipeline has not: tests/labels.rs).
    let variables: std::collections::BTreeSet<&str> = (0..conv_by.num_rows())
        .map(|j| col::<StringArray>(&conv_by, "variable").value(j))
        .collect();
    let declared: std::collections::BTreeSet<&str> = seedconv::analysis::conditioning::VARIABLES
        .iter()
        .map(|v| v.name)
        .filter(|n| *n != "label")
        .collect();
    assert_eq!(variables, declared);
    let base = read("aggregate/current/baselines.parquet");
    let rows = read("corpus/current/rows.parquet");
    // Position of the target in its window: context tokens seen, binned
    // by the bounds written here (1–7, 8–15, 16–31, 32–63, …).
    let pbin: BTreeMap<u32, String> = (0..rows.num_rows())
        .map(|i| {
            let r = col::<UInt32Array>(&rows, "row").value(i);
            let n = r - col::<UInt32Array>(&rows, "context_start").value(i) + 1;
            let label = match n {
                1..=7 => "[1,8)",
                8..=15 => "[8,16)",
                16..=31 => "[16,32)",
                32..=63 => "[32,64)",
                64..=255 => "[64,256)",
                256..=1023 => "[256,1024)",
                _ => ">=1024",
            };
            (r, label.to_string())
        })
        .collect();
    // Final entropy: the mean over both seeds' dist tables at step 300.
    let mut ent: BTreeMap<u32, f64> = BTreeMap::new();
    for seed in ["11", "12"] {
        let d = read(&format!(
            "dist/current/tiny-seed{seed}-step300.dist.parquet"
        ));
        for i in 0..d.num_rows() {
            *ent.entry(col::<UInt32Array>(&d, "row").value(i))
                .or_default() += col::<Float32Array>(&d, "entropy").value(i) as f64 / 2.0;
        }
    }
    let cbin: BTreeMap<u32, String> = ent
        .into_iter()
        .map(|(r, h)| {
            let label = if h < 1.0 {
                "[0,1)"
            } else if h < 2.0 {
                "[1,2)"
            } else if h < 4.0 {
                "[2,4)"
            } else if h < 8.0 {
                "[4,8)"
            } else {
                ">=8"
            };
            (r, label.to_string())
        })
        .collect();
    let doc_of_row: BTreeMap<u32, u32> = (0..rows.num_rows())
        .map(|i| {
            (
                col::<UInt32Array>(&rows, "row").value(i),
                col::<UInt32Array>(&rows, "doc").value(i),
            )
        })
        .collect();
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

        // The interval: with 2 seeds no pair is left without a seed, so
        // only documents vary; delete-one-document jackknife over the
        // corpus's documents, t with D − 1 = 2 degrees of freedom.
        let mut by_doc: BTreeMap<u32, (f64, f64)> = BTreeMap::new();
        for v in pairs.values() {
            for &(r, x) in v {
                let e = by_doc.entry(doc_of_row[&r]).or_default();
                e.0 += x;
                e.1 += 1.0;
            }
        }
        assert_eq!(by_doc.len(), 3);
        let (tot, n): (f64, f64) = by_doc
            .values()
            .fold((0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
        let reps: Vec<f64> = by_doc.values().map(|(s, m)| -(tot - s) / (n - m)).collect();
        let rm = reps.iter().sum::<f64>() / 3.0;
        let se = (2.0 / 3.0 * reps.iter().map(|x| (x - rm).powi(2)).sum::<f64>()).sqrt();
        let got = |c: &str| col::<Float64Array>(&conv, c).value(i);
        assert!(
            (got("se") - se).abs() < 1e-12 * se.max(1e-300),
            "se {} vs {se}",
            got("se")
        );
        assert!((got("se_docs") - se).abs() < 1e-12 * se.max(1e-300));
        assert!(got("se_seeds").is_nan());
        assert!((got("df") - 2.0).abs() < 1e-12);
        // t(2)'s 97.5% quantile in closed form: (2q − 1)/√(2q(1 − q)).
        let t2 = 0.95 / (2.0f64 * 0.975 * 0.025).sqrt();
        assert!((got("ci_low") - (want - t2 * se)).abs() < 1e-9 * se.max(1e-12));
        assert!((got("ci_high") - (want + t2 * se)).abs() < 1e-9 * se.max(1e-12));

        // Conditional on frequency bin, on nouns, on the surprisal bin, on
        // the target's position in its window and on the final entropy.
        type Key<'a> = Box<dyn Fn(u32) -> Option<String> + 'a>;
        let keys: [(&str, Key); 5] = [
            ("freq_bin", Box::new(|r| bin_of_row.get(&r).cloned())),
            (
                "pos_group",
                Box::new(|r| {
                    noun_of_row
                        .get(&r)
                        .and_then(|&x| x.then(|| "noun".to_string()))
                }),
            ),
            ("surprisal_bin", Box::new(|r| sbin.get(&r).cloned())),
            ("position_bin", Box::new(|r| pbin.get(&r).cloned())),
            ("confidence_bin", Box::new(|r| cbin.get(&r).cloned())),
        ];
        for (by, key) in keys {
            let mut cells: BTreeMap<String, Vec<f64>> = BTreeMap::new();
            let mut counts: BTreeMap<String, usize> = BTreeMap::new();
            for v in pairs.values() {
                let mut per: BTreeMap<String, (f64, usize)> = BTreeMap::new();
                for &(r, x) in v {
                    if let Some(g) = key(r) {
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

        // Cross-entropy by frequency bin: per seed the mean surprisal over
        // the bin's rows, then the mean over seeds.
        let ce_by = read("aggregate/current/ce_by.parquet");
        let mut ce_cells: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for seed in ["11", "12"] {
            let d = read(&format!(
                "dist/current/tiny-seed{seed}-step{step}.dist.parquet"
            ));
            let mut per: BTreeMap<String, (f64, usize)> = BTreeMap::new();
            for i in 0..d.num_rows() {
                let r = col::<UInt32Array>(&d, "row").value(i);
                let e = per.entry(bin_of_row[&r].clone()).or_default();
                e.0 -= col::<Float32Array>(&d, "target_logprob").value(i) as f64;
                e.1 += 1;
            }
            for (g, (sum, n)) in per {
                ce_cells.entry(g).or_default().push(sum / n as f64);
            }
        }
        for (g, m) in &ce_cells {
            let j = (0..ce_by.num_rows())
                .find(|&j| {
                    col::<StringArray>(&ce_by, "variable").value(j) == "freq_bin"
                        && col::<StringArray>(&ce_by, "level").value(j) == g
                        && col::<UInt32Array>(&ce_by, "step").value(j) == step
                })
                .unwrap_or_else(|| panic!("no ce_by cell {g} at step {step}"));
            let want = m.iter().sum::<f64>() / m.len() as f64;
            let got = col::<Float64Array>(&ce_by, "cross_entropy").value(j);
            assert!((got - want).abs() < 1e-9, "ce_by {g}: {got} vs {want}");
            assert_eq!(col::<UInt32Array>(&ce_by, "n_seeds").value(j), 2);
        }

        // The regression at this step, solved here by Gauss–Jordan on the
        // normal equations with the groups spelled out independently.
        regression_matches(
            &ann,
            &pairs,
            step,
            &read("aggregate/current/regression.parquet"),
        );

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
    let lp = |d: &arrow_array::RecordBatch, r: u32| {
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
    // Four phases per size, the uniform one starting at step 0; the same
    // rule on the measures' curves finds KL's phases where E[KL]'s are.
    let ph = read("aggregate/current/phases.parquet");
    assert_eq!(ph.num_rows(), 4);
    let mp = read("aggregate/current/measure_phases.parquet");
    let kl_rows: Vec<usize> = (0..mp.num_rows())
        .filter(|&i| col::<StringArray>(&mp, "measure").value(i) == "kl")
        .collect();
    assert_eq!(kl_rows.len(), 4);
    for &i in &kl_rows {
        let k = (0..4)
            .find(|&k| {
                col::<StringArray>(&ph, "phase").value(k)
                    == col::<StringArray>(&mp, "phase").value(i)
            })
            .unwrap();
        for c in ["start_step", "end_step"] {
            let (a, b) = (col::<UInt32Array>(&mp, c), col::<UInt32Array>(&ph, c));
            assert_eq!(a.is_null(i), b.is_null(k), "{c}");
            if !a.is_null(i) {
                assert_eq!(a.value(i), b.value(k), "{c}");
            }
        }
    }
    assert!(!(0..mp.num_rows()).any(|i| col::<StringArray>(&mp, "measure").value(i) == "churn"));
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
    pooled_table_matches(
        &ann,
        &read("kl/current/tiny-step300.kl.parquet"),
        &read("aggregate/current/token_table_pooled.parquet"),
    );
    measures_match(
        &read("kl/current/tiny-step300.kl.parquet"),
        &read("kl/current/tiny-step300.group.parquet"),
        &read("aggregate/current/measures.parquet"),
        &read("aggregate/current/measures_by.parquet"),
        &conv,
        &bin_of_row,
        &doc_of_row,
    );
    llama_stats_match(
        &read("kl/current/tiny-step300.kl.parquet"),
        &read("dist/current/tiny-seed11-step300.dist.parquet"),
        &read("dist/current/tiny-seed12-step300.dist.parquet"),
        &read("aggregate/current/llama_stats.parquet"),
        &read("aggregate/current/ensemble.parquet"),
    );

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

/// The measures' tables at step 300, recomputed from the kl stage's per-row
/// tables: each measure's mean over rows (both pairs share them), its
/// document jackknife, and its mean within each frequency bin.
fn measures_match(
    kl: &arrow_array::RecordBatch,
    group: &arrow_array::RecordBatch,
    m: &arrow_array::RecordBatch,
    by: &arrow_array::RecordBatch,
    conv: &arrow_array::RecordBatch,
    bin_of_row: &BTreeMap<u32, String>,
    doc_of_row: &BTreeMap<u32, u32>,
) {
    // (measure, row, value) of every per-row value.
    let mut vals: Vec<(&str, u32, f64)> = Vec::new();
    let row = col::<UInt32Array>(kl, "row");
    for i in 0..kl.num_rows() {
        let r = row.value(i);
        vals.push(("kl", r, col::<Float64Array>(kl, "kl").value(i)));
        vals.push(("tv", r, col::<Float64Array>(kl, "tv").value(i)));
        vals.push(("abs_dp", r, col::<Float64Array>(kl, "dp").value(i).abs()));
        let agree = col::<BooleanArray>(kl, "top1_agree").value(i);
        vals.push(("churn", r, if agree { 0.0 } else { 1.0 }));
    }
    let grow = col::<UInt32Array>(group, "row");
    for i in 0..group.num_rows() {
        let r = grow.value(i);
        vals.push(("jsd", r, col::<Float64Array>(group, "jsd").value(i)));
        vals.push((
            "ens_gain",
            r,
            col::<Float64Array>(group, "ens_gain").value(i),
        ));
    }
    let find = |t: &arrow_array::RecordBatch, measure: &str, level: Option<&str>| {
        (0..t.num_rows()).find(|&i| {
            col::<StringArray>(t, "measure").value(i) == measure
                && col::<UInt32Array>(t, "step").value(i) == 300
                && level.is_none_or(|l| {
                    col::<StringArray>(t, "variable").value(i) == "freq_bin"
                        && col::<StringArray>(t, "level").value(i) == l
                })
        })
    };
    let names: Vec<&str> = seedconv::analysis::measures::MEASURES
        .iter()
        .map(|m| m.name)
        .collect();
    assert_eq!(names.len(), 6);
    for name in names {
        let v: Vec<(u32, f64)> = vals
            .iter()
            .filter(|x| x.0 == name)
            .map(|x| (x.1, x.2))
            .collect();
        let mean = v.iter().map(|x| x.1).sum::<f64>() / v.len() as f64;
        let i = find(m, name, None).unwrap_or_else(|| panic!("{name} missing"));
        let got = |c: &str| col::<Float64Array>(m, c).value(i);
        assert!(
            (got("value") - mean).abs() <= 1e-12 * mean.abs().max(1e-12),
            "{name}: {} vs {mean}",
            got("value")
        );
        // Two seeds: no seed can leave (a pair or a group of one seed is
        // no estimate), so only the three documents vary.
        assert!(got("se_seeds").is_nan(), "{name}");
        let mut by_doc: BTreeMap<u32, (f64, f64)> = BTreeMap::new();
        for &(r, x) in &v {
            let e = by_doc.entry(doc_of_row[&r]).or_default();
            e.0 += x;
            e.1 += 1.0;
        }
        let (tot, n) = by_doc
            .values()
            .fold((0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
        let reps: Vec<f64> = by_doc.values().map(|(s, c)| (tot - s) / (n - c)).collect();
        let rm = reps.iter().sum::<f64>() / reps.len() as f64;
        let k = reps.len() as f64;
        let se = ((k - 1.0) / k * reps.iter().map(|x| (x - rm).powi(2)).sum::<f64>()).sqrt();
        assert!(
            (got("se") - se).abs() <= 1e-9 * se.max(1e-12),
            "{name} se {} vs {se}",
            got("se")
        );
        assert!(got("ci_low") <= mean && mean <= got("ci_high"));
        // Within each frequency bin.
        let mut per_bin: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
        for &(r, x) in &v {
            let e = per_bin.entry(bin_of_row[&r].as_str()).or_default();
            e.0 += x;
            e.1 += 1.0;
        }
        for (bin, (s, c)) in per_bin {
            let j = find(by, name, Some(bin)).unwrap_or_else(|| panic!("{name} {bin}"));
            let got = col::<Float64Array>(by, "value").value(j);
            assert!(
                (got - s / c).abs() <= 1e-12 * got.abs().max(1e-12),
                "{name} {bin}"
            );
        }
    }
    // KL's row is E[conv]'s, sign aside, interval and all.
    let i = find(m, "kl", None).unwrap();
    let c = (0..conv.num_rows())
        .find(|&j| col::<UInt32Array>(conv, "step").value(j) == 300)
        .unwrap();
    for (a, b) in [("value", "conv"), ("se", "se")] {
        let (x, y) = (
            col::<Float64Array>(m, a).value(i),
            col::<Float64Array>(conv, b).value(c),
        );
        assert!(
            (x.abs() - y.abs()).abs() <= 1e-12 * y.abs(),
            "{a}: {x} vs {y}"
        );
    }
}

/// Penn groups (noun, verb, function) of a tag, UPOS where Penn is missing.
fn groups_of(xpos: Option<&str>, upos: Option<&str>) -> [f64; 3] {
    let f = |b: bool| if b { 1.0 } else { 0.0 };
    match (xpos, upos) {
        (Some(x), _) if x != "UNK" && x != "_" => [
            f(["NN", "NNS", "NNP", "NNPS"].contains(&x)),
            f(["VB", "VBD", "VBG", "VBN", "VBP", "VBZ"].contains(&x)),
            f(["DT", "IN", "MD", "PRP", "PRP$", "CC", "TO"].contains(&x)),
        ],
        (_, Some(u)) if u != "UNK" => [
            f(["NOUN", "PROPN"].contains(&u)),
            f(u == "VERB"),
            f(["ADP", "AUX", "CCONJ", "DET", "PART", "PRON", "SCONJ"].contains(&u)),
        ],
        _ => [0.0; 3],
    }
}

fn regression_matches(
    ann: &arrow_array::RecordBatch,
    pairs: &BTreeMap<String, Vec<(u32, f64)>>,
    step: u32,
    reg: &arrow_array::RecordBatch,
) {
    let opt = |c: &str, i: usize| {
        let a = col::<StringArray>(ann, c);
        (!a.is_null(i)).then(|| a.value(i))
    };
    let mut feat: BTreeMap<u32, Vec<f64>> = BTreeMap::new();
    for i in 0..ann.num_rows() {
        let mut x = vec![
            1.0,
            ((col::<arrow_array::UInt64Array>(ann, "count").value(i) + 1) as f64).log10(),
        ];
        x.extend(groups_of(opt("xpos", i), opt("upos", i)));
        x.extend(groups_of(opt("context_xpos", i), opt("context_upos", i)));
        feat.insert(col::<UInt32Array>(ann, "row").value(i), x);
    }
    let names = [
        "size_tiny",
        "log10_freq",
        "target_noun",
        "target_verb",
        "target_function",
        "context_noun",
        "context_verb",
        "context_function",
    ];
    let mut y: BTreeMap<u32, f64> = BTreeMap::new();
    for v in pairs.values() {
        for &(r, k) in v {
            *y.entry(r).or_default() += k / pairs.len() as f64;
        }
    }
    let rows: Vec<(Vec<f64>, f64)> = y.iter().map(|(r, v)| (feat[r].clone(), *v)).collect();
    let keep: Vec<usize> = (0..names.len())
        .filter(|&j| rows.iter().any(|r| r.0[j] != 0.0))
        .collect();
    let p = keep.len();
    // [XᵀX | Xᵀy], reduced to [I | β].
    let mut m = vec![vec![0.0; p + 1]; p];
    for (x, yv) in &rows {
        for (a, &ja) in keep.iter().enumerate() {
            for (b, &jb) in keep.iter().enumerate() {
                m[a][b] += x[ja] * x[jb];
            }
            m[a][p] += x[ja] * yv;
        }
    }
    for c in 0..p {
        let piv = (c..p)
            .max_by(|&i, &j| m[i][c].abs().total_cmp(&m[j][c].abs()))
            .unwrap();
        m.swap(c, piv);
        let d = m[c][c];
        m[c].iter_mut().for_each(|v| *v /= d);
        for i in (0..p).filter(|&i| i != c) {
            let f = m[i][c];
            let rc = m[c].clone();
            m[i].iter_mut().zip(&rc).for_each(|(v, r)| *v -= f * r);
        }
    }
    let terms: Vec<(&str, f64)> = (0..reg.num_rows())
        .filter(|&i| col::<UInt32Array>(reg, "step").value(i) == step)
        .map(|i| {
            (
                col::<StringArray>(reg, "term").value(i),
                col::<Float64Array>(reg, "coef").value(i),
            )
        })
        .collect();
    assert_eq!(terms.len(), p, "terms at step {step}: {terms:?}");
    for (a, &j) in keep.iter().enumerate() {
        let got = terms
            .iter()
            .find(|t| t.0 == names[j])
            .unwrap_or_else(|| panic!("{}", names[j]))
            .1;
        assert!(
            (got - m[a][p]).abs() < 1e-8 * m[a][p].abs().max(1.0),
            "step {step} {}: {got} vs {}",
            names[j],
            m[a][p]
        );
    }
}

/// The authors' token table: tagged targets only, mean KL per token over
/// every pair and row, lowest / middle / highest 20.
fn pooled_table_matches(
    ann: &arrow_array::RecordBatch,
    kl: &arrow_array::RecordBatch,
    table: &arrow_array::RecordBatch,
) {
    let mut target: BTreeMap<u32, u32> = BTreeMap::new();
    for i in 0..ann.num_rows() {
        let x = col::<StringArray>(ann, "xpos");
        if !x.is_null(i) && x.value(i) != "UNK" {
            target.insert(
                col::<UInt32Array>(ann, "row").value(i),
                col::<UInt32Array>(ann, "target_id").value(i),
            );
        }
    }
    let mut per: BTreeMap<u32, (f64, usize)> = BTreeMap::new();
    for i in 0..kl.num_rows() {
        if let Some(&t) = target.get(&col::<UInt32Array>(kl, "row").value(i)) {
            let e = per.entry(t).or_default();
            e.0 += col::<Float64Array>(kl, "kl").value(i);
            e.1 += 1;
        }
    }
    let mut means: Vec<(f64, u32)> = per.iter().map(|(t, (s, n))| (s / *n as f64, *t)).collect();
    means.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let n = means.len();
    assert!(n > 60, "{n} tagged target tokens");
    let mid = n / 2 - 10;
    for (label, start) in [("lowest", 0), ("middle", mid), ("highest", n - 20)] {
        let got: Vec<(f64, u32)> = (0..table.num_rows())
            .filter(|&i| col::<StringArray>(table, "position").value(i) == label)
            .map(|i| {
                (
                    col::<Float64Array>(table, "mean_kl").value(i),
                    col::<UInt32Array>(table, "target_id").value(i),
                )
            })
            .collect();
        assert_eq!(got.len(), 20, "{label}");
        for (g, w) in got.iter().zip(&means[start..start + 20]) {
            assert_eq!(g.1, w.1, "{label}");
            assert!((g.0 - w.0).abs() < 1e-12, "{label}");
        }
    }
}

/// llama.cpp's battery for seed 11 as base and 12 as Q at step 300, from
/// the kl and dist tables: KLD mean and median, Δp, same top p, NLL
/// correlation; Δp antisymmetric between the two orders.
fn llama_stats_match(
    kl: &arrow_array::RecordBatch,
    d11: &arrow_array::RecordBatch,
    d12: &arrow_array::RecordBatch,
    t: &arrow_array::RecordBatch,
    ens: &arrow_array::RecordBatch,
) {
    let kls: Vec<f64> = (0..kl.num_rows())
        .filter(|&i| col::<StringArray>(kl, "seed_a").value(i) == "11")
        .map(|i| col::<Float64Array>(kl, "kl").value(i))
        .collect();
    let per_row = |d: &arrow_array::RecordBatch| -> BTreeMap<u32, (f64, u32)> {
        let ids = col::<arrow_array::ListArray>(d, "topk_ids");
        (0..d.num_rows())
            .map(|i| {
                let top = ids.value(i);
                let top = top.as_any().downcast_ref::<UInt32Array>().unwrap().value(0);
                (
                    col::<UInt32Array>(d, "row").value(i),
                    (
                        col::<Float32Array>(d, "target_logprob").value(i) as f64,
                        top,
                    ),
                )
            })
            .collect()
    };
    let (a, b) = (per_row(d11), per_row(d12));
    let n = a.len() as f64;
    assert_eq!(kls.len(), a.len());
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let dp: Vec<f64> = a.keys().map(|r| b[r].0.exp() - a[r].0.exp()).collect();
    let same = a.keys().filter(|r| a[r].1 == b[r].1).count() as f64 / n;
    let (la, lb): (Vec<f64>, Vec<f64>) = a.keys().map(|r| (a[r].0, b[r].0)).unzip();
    let (ma, mb) = (mean(&la), mean(&lb));
    let cov: f64 = la.iter().zip(&lb).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = la.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = lb.iter().map(|y| (y - mb).powi(2)).sum();
    let mut sorted = kls.clone();
    sorted.sort_by(f64::total_cmp);
    let h = 0.5 * (sorted.len() - 1) as f64;
    let median = sorted[h.floor() as usize]
        + h.fract()
            * (sorted[(h.floor() as usize + 1).min(sorted.len() - 1)] - sorted[h.floor() as usize]);
    let find = |sa: &str| {
        (0..t.num_rows())
            .find(|&i| {
                col::<UInt32Array>(t, "step").value(i) == 300
                    && col::<StringArray>(t, "seed_a").value(i) == sa
            })
            .unwrap()
    };
    let (i, j) = (find("11"), find("12"));
    let got = |c: &str, i: usize| col::<Float64Array>(t, c).value(i);
    assert!((got("kld_mean", i) - mean(&kls)).abs() < 1e-12);
    assert!((got("kld_median", i) - median).abs() < 1e-12);
    assert!((got("dp_mean", i) - mean(&dp)).abs() < 1e-12);
    assert!((got("same_top_p", i) - same).abs() < 1e-12);
    assert!((got("nll_cor", i) - cov / (va * vb).sqrt()).abs() < 1e-9);
    assert!((got("dp_mean", j) + got("dp_mean", i)).abs() < 1e-12);
    assert_eq!(got("same_top_p", j), got("same_top_p", i));
    // The two-seed ensemble's gain at the target: log of the mean
    // probability minus the mean log-probability, averaged over rows.
    let gain = mean(
        &la.iter()
            .zip(&lb)
            .map(|(x, y)| ((x.exp() + y.exp()) / 2.0).ln() - (x + y) / 2.0)
            .collect::<Vec<f64>>(),
    );
    let e = (0..ens.num_rows())
        .find(|&i| col::<UInt32Array>(ens, "step").value(i) == 300)
        .unwrap();
    assert!((col::<Float64Array>(ens, "gain").value(e) - gain).abs() < 1e-12);
    assert!(gain > 0.0);
    // With two seeds no ensemble survives a seed's deletion.
    assert!(col::<Float64Array>(ens, "se_seeds").value(e).is_nan());
}
