//! BLiMP scoring on the shipped GPT-NeoX samples against an independent
//! computation (one unpadded sentence per ONNX Runtime call, float64
//! log-softmax here), and blimp_conv recomputed from the per-pair tables.

use crate::common;
use common::{col, hf_suite_config, Project};

use arrow_array::{BooleanArray, Float64Array, StringArray, UInt32Array};
use std::collections::BTreeMap;

const PARADIGMS: [&str; 2] = [
    "principle_A_case_2",
    "regular_plural_subject_verb_agreement_1",
];

fn setup() -> (Project, String) {
    let p = Project::micro();
    let dir = p.path().join("blimp");
    std::fs::create_dir_all(&dir).unwrap();
    for name in PARADIGMS {
        let text = std::fs::read_to_string(common::data(&format!("blimp/{name}.jsonl"))).unwrap();
        let head: String = text.lines().take(6).map(|l| format!("{l}\n")).collect();
        std::fs::write(dir.join(format!("{name}.jsonl")), head).unwrap();
    }
    let cfg = hf_suite_config(&common::hf_models(), "[0, 300]");
    (p, cfg)
}

/// log P(BOS s EOS) with the logits of one unpadded call, softmax over the
/// first `n` logits (all of them when None), in f64.
fn reference_logp(
    model: &mut seedconv::lm::onnx::runtime::OrtModel,
    tok: &tokenizers::Tokenizer,
    s: &str,
    n: Option<usize>,
) -> f64 {
    let mut ids: Vec<i64> = vec![0];
    ids.extend(
        tok.encode(s, false)
            .unwrap()
            .get_ids()
            .iter()
            .map(|&i| i as i64),
    );
    ids.push(0);
    let t = ids.len();
    let (logits, w) = model.logits(&ids, 1, t).unwrap();
    let n = n.unwrap_or(w);
    (1..t)
        .map(|k| {
            let row: Vec<f64> = logits[(k - 1) * w..][..n]
                .iter()
                .map(|&x| x as f64)
                .collect();
            let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = m + row.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
            row[ids[k] as usize] - lse
        })
        .sum()
}

fn strs(b: &arrow_array::RecordBatch, name: &str) -> Vec<String> {
    let c = col::<StringArray>(b, name);
    (0..b.num_rows()).map(|i| c.value(i).to_string()).collect()
}

fn check_scores(p: &Project, n: Option<usize>) {
    let tok = tokenizers::Tokenizer::from_file(common::causal().join("tokenizer.json")).unwrap();
    for seed in ["11", "12"] {
        let b = seedconv::table::read(&p.store().join(format!(
            "blimp/current/tiny-seed{seed}-step300.blimp.parquet"
        )))
        .unwrap();
        assert_eq!(b.num_rows(), 2 * 4);
        let mut model = seedconv::lm::onnx::runtime::OrtModel::from_file(
            &common::causal().join(format!("neox-seed{seed}/step300/model.onnx")),
            1,
        )
        .unwrap();
        let fields = strs(&b, "field");
        assert!(fields.iter().all(|f| f != "syntax/semantics"));
        assert!(fields.iter().any(|f| f == "syntax_semantics"));
        let paradigms = strs(&b, "paradigm");
        let ids = col::<UInt32Array>(&b, "pair_id");
        for (i, paradigm) in paradigms.iter().enumerate() {
            let src =
                std::fs::read_to_string(p.path().join(format!("blimp/{paradigm}.jsonl"))).unwrap();
            let line: serde_json::Value = serde_json::from_str(
                src.lines()
                    .find(|l| l.contains(&format!("\"pairID\": \"{}\"", ids.value(i))))
                    .unwrap(),
            )
            .unwrap();
            let good = reference_logp(&mut model, &tok, line["sentence_good"].as_str().unwrap(), n);
            let bad = reference_logp(&mut model, &tok, line["sentence_bad"].as_str().unwrap(), n);
            let (g, bd) = (
                col::<Float64Array>(&b, "logp_good").value(i),
                col::<Float64Array>(&b, "logp_bad").value(i),
            );
            // Padded batches of 3 against unpadded single calls.
            assert!((g - good).abs() < 1e-4, "{g} vs {good}");
            assert!((bd - bad).abs() < 1e-4, "{bd} vs {bad}");
            assert_eq!(col::<BooleanArray>(&b, "correct").value(i), g > bd);
            let q = col::<Float64Array>(&b, "q_good").value(i);
            assert!((q - good.exp() / (good.exp() + bad.exp())).abs() < 1e-6);
        }
    }
}

#[test]
fn blimp_scores_match_an_independent_computation() {
    let (p, cfg) = setup();
    let with = |vocab: &str| {
        format!("{cfg}\n[blimp]\ndir = \"blimp\"\npairs = 4\nbatch_size = 3\nvocab = \"{vocab}\"\n")
    };
    p.write_config(&with("full"));
    p.ok(&["run", "blimp_conv"]);
    // The models emit 768 logits for a 700-token vocabulary.
    check_scores(&p, None);
    // Renormalising over the kept vocabulary reruns the scoring only.
    p.write_config(&with("kept"));
    let run = p.ok(&["run", "blimp_conv"]);
    let ids = run.computed_ids();
    assert!(ids.iter().all(|i| i.starts_with("blimp")), "{ids:?}");
    assert_eq!(ids.iter().filter(|i| i.starts_with("blimp[")).count(), 4);
    check_scores(&p, Some(700));
}

#[test]
fn blimp_convergence_matches_the_per_pair_tables() {
    let (p, cfg) = setup();
    p.write_config(&format!("{cfg}\n[blimp]\ndir = \"blimp\"\npairs = 5\n"));
    p.ok(&["run"]);
    let s = p.store();
    let conv = seedconv::table::read(&s.join("blimp_conv/current/conv.parquet")).unwrap();
    let par = seedconv::table::read(&s.join("blimp_conv/current/paradigms.parquet")).unwrap();
    for step in [0u32, 300] {
        // paradigm → seed → (mean q, accuracy)
        let mut q: BTreeMap<String, BTreeMap<String, (f64, f64)>> = BTreeMap::new();
        for seed in ["11", "12"] {
            let b = seedconv::table::read(&s.join(format!(
                "blimp/current/tiny-seed{seed}-step{step}.blimp.parquet"
            )))
            .unwrap();
            let paradigm = strs(&b, "paradigm");
            for (i, name) in paradigm.iter().enumerate() {
                let e = q
                    .entry(name.clone())
                    .or_default()
                    .entry(seed.to_string())
                    .or_default();
                e.0 += col::<Float64Array>(&b, "q_good").value(i) / 5.0;
                e.1 += col::<BooleanArray>(&b, "correct").value(i) as u8 as f64 / 5.0;
            }
        }
        let kl = |a: f64, b: f64| a * (a / b).ln() + (1.0 - a) * ((1.0 - a) / (1.0 - b)).ln();
        let (mut ordered, mut unordered) = (vec![], vec![]);
        // Per paradigm: (ordered pairs' values, the unordered pair's).
        let mut per_paradigm: Vec<(Vec<f64>, Vec<f64>)> = Vec::new();
        for (paradigm, seeds) in &q {
            let (a, b) = (seeds["11"].0, seeds["12"].0);
            ordered.extend([kl(a, b), kl(b, a)]);
            unordered.push(kl(a, b));
            per_paradigm.push((vec![kl(a, b), kl(b, a)], vec![kl(a, b)]));
            let i = (0..par.num_rows())
                .find(|&i| {
                    col::<UInt32Array>(&par, "step").value(i) == step
                        && col::<StringArray>(&par, "paradigm").value(i) == paradigm
                })
                .unwrap();
            let got = col::<Float64Array>(&par, "kl_unordered").value(i);
            assert!((got - kl(a, b)).abs() < 1e-12, "{got}");
        }
        let acc: f64 = ["11", "12"]
            .iter()
            .map(|s| q.values().map(|m| m[*s].1).sum::<f64>() / q.len() as f64)
            .sum::<f64>()
            / 2.0;
        for (ordering, v) in [("ordered", &ordered), ("unordered", &unordered)] {
            let n = v.len() as f64;
            let mean = v.iter().sum::<f64>() / n;
            let sd = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
            let i = (0..conv.num_rows())
                .find(|&i| {
                    col::<UInt32Array>(&conv, "step").value(i) == step
                        && col::<StringArray>(&conv, "ordering").value(i) == ordering
                })
                .unwrap();
            assert!((col::<Float64Array>(&conv, "conv").value(i) + mean).abs() < 1e-12);
            assert!((col::<Float64Array>(&conv, "se").value(i) - sd / n.sqrt()).abs() < 1e-12);
            assert_eq!(col::<UInt32Array>(&conv, "n").value(i) as f64, n);
            assert!((col::<Float64Array>(&conv, "accuracy").value(i) - acc).abs() < 1e-12);
            // The interval: with 2 seeds only paradigms vary; leave each
            // paradigm out of the mean, jackknife variance, t(P − 1).
            let pick = |x: &(Vec<f64>, Vec<f64>)| -> Vec<f64> {
                if ordering == "ordered" {
                    x.0.clone()
                } else {
                    x.1.clone()
                }
            };
            let np = per_paradigm.len() as f64;
            let reps: Vec<f64> = (0..per_paradigm.len())
                .map(|o| {
                    let rest: Vec<f64> = per_paradigm
                        .iter()
                        .enumerate()
                        .filter(|(j, _)| *j != o)
                        .flat_map(|(_, x)| pick(x))
                        .collect();
                    -rest.iter().sum::<f64>() / rest.len() as f64
                })
                .collect();
            let rm = reps.iter().sum::<f64>() / np;
            let se_p =
                ((np - 1.0) / np * reps.iter().map(|x| (x - rm).powi(2)).sum::<f64>()).sqrt();
            let got = |c: &str| col::<Float64Array>(&conv, c).value(i);
            assert!(
                (got("se_paradigms") - se_p).abs() < 1e-12,
                "{} vs {se_p}",
                got("se_paradigms")
            );
            assert!(got("se_seeds").is_nan());
            assert!((got("df") - (np - 1.0)).abs() < 1e-9);
            let c = got("conv");
            assert!(got("ci_low") < c && c < got("ci_high"));
            assert!(((got("ci_high") - c) - (c - got("ci_low"))).abs() < 1e-12);
        }
    }
    // The report shows BLiMP.
    let html = std::fs::read_to_string(s.join("report/current/report.html")).unwrap();
    assert!(html.contains("<h2>BLiMP downstream convergence</h2>"));
    assert!(s.join("report/current/figures/blimp_conv.csv").exists());
}

#[test]
fn a_short_paradigm_file_is_a_clear_error() {
    let (p, cfg) = setup();
    p.write_config(&format!("{cfg}\n[blimp]\ndir = \"blimp\"\npairs = 50\n"));
    let r = p.run(&["run", "blimp"]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("principle_A_case_2.jsonl")
            && r.stderr.contains("fewer than blimp.pairs = 50"),
        "{}",
        r.stderr
    );
}
