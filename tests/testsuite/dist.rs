//! Distributions and divergences on real-world exports (`torch.onnx`
//! GPT-NeoX models with padded logits, external data, an extra
//! `position_ids` input), checked against float64 references computed here,
//! and the failure modes: missing checkpoints, wrong signature, mismatched
//! vocabularies, NaN logits.

use crate::common;
use common::{fixtures, Project};

use arrow_array::{
    Array, BooleanArray, Float32Array, Float64Array, ListArray, StringArray, UInt32Array,
};
use seedconv::lm::onnx::runtime::OrtModel;

use common::{causal, hf_suite_config as suite_config, lsm64};

fn probe_ids() -> Vec<i64> {
    let m: serde_json::Value = serde_json::from_slice(
        &std::fs::read(fixtures().join("hf_onnx_samples/manifest.json")).unwrap(),
    )
    .unwrap();
    m["probe_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect()
}

#[test]
fn real_world_exports_match_their_float64_reference_logits() {
    let ids = probe_ids();
    let cases = [
        ("neox-seed11/step0", "neox-seed11/step0"),
        ("neox-seed11/step50", "neox-seed11/step50"),
        ("neox-seed11/step300", "neox-seed11/step300"),
        ("neox-seed12/step0", "neox-seed12/step0"),
        ("neox-seed12/step50", "neox-seed12/step50"),
        ("neox-seed12/step300", "neox-seed12/step300"),
        ("variants/with-position-ids", "neox-seed12/step300"),
        ("variants/dynamo-external-data", "neox-seed12/step300"),
    ];
    for (model, reference) in cases {
        let mut m = OrtModel::from_file(&causal().join(model).join("model.onnx"), 1).unwrap();
        let (got, width) = m.logits(&ids, 1, ids.len()).unwrap();
        assert_eq!(width, 768, "{model}: logits padded to 768 for 700 tokens");
        let want = common::read_npy_f64(
            &causal()
                .join(reference)
                .join("reference_logits_float64.npy"),
        );
        assert_eq!(want.len(), got.len());
        let max = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (*a as f64 - b).abs())
            .fold(0.0, f64::max);
        assert!(max < 1e-4, "{model}: max |Δ| = {max:e}");
    }
    let m =
        OrtModel::from_file(&causal().join("variants/with-position-ids/model.onnx"), 1).unwrap();
    assert_eq!(
        m.input_names(),
        ["input_ids", "attention_mask", "position_ids"]
    );
}

/// The unembedding pruned to the rows read (`head::prune`, how every stage
/// loads a model) gives those rows' logits bit for bit as the graph as
/// exported does, on every shipped export: padded logits, position_ids,
/// external data (found from memory through ORT's folder setting), a
/// masked LM with token_type_ids; rows in any order, padded sequences.
#[test]
fn pruned_unembedding_gives_the_exported_graphs_logits_bit_for_bit() {
    use seedconv::lm::onnx::runtime::logits_f32;
    let ids = probe_ids();
    let t = ids.len();
    let models = [
        causal().join("neox-seed11/step50/model.onnx"),
        causal().join("variants/with-position-ids/model.onnx"),
        causal().join("variants/dynamo-external-data/model.onnx"),
        fixtures().join("hf_onnx_samples/mlm/bert-seed21/step0/model.onnx"),
    ];
    // Two sequences, the second padded after 20 tokens; ids < 600 fit both vocabularies.
    let mut batch: Vec<i64> = ids.iter().map(|&i| i % 600).collect();
    batch.extend(ids.iter().rev().map(|&i| i % 600));
    let lens = [t, 20];
    let rows: Vec<i64> = vec![(t + 19) as i64, 3, 0, (t - 1) as i64, t as i64, 7];
    for path in &models {
        let mut plain = OrtModel::plain_from_file(path, 1).unwrap();
        let mut pruned = OrtModel::from_file(path, 1).unwrap();
        assert!(!plain.prunes_rows());
        assert!(pruned.prunes_rows(), "{}", path.display());
        assert_eq!(plain.input_names(), pruned.input_names());
        let (all, w) = plain.run(&batch, &lens, t, None).unwrap();
        let all = logits_f32(&all).unwrap();
        let (got, w2) = pruned.run(&batch, &lens, t, Some(&rows)).unwrap();
        let got = logits_f32(&got).unwrap();
        assert_eq!(w, w2);
        assert_eq!(got.len(), rows.len() * w);
        for (j, &r) in rows.iter().enumerate() {
            let want = &all[r as usize * w..(r as usize + 1) * w];
            let have = &got[j * w..(j + 1) * w];
            assert!(
                want.iter()
                    .zip(have)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{}: row {r} differs",
                path.display()
            );
        }
        // Asked for every row (no `rows`), it computes them all: [b, t, width].
        let (full, _) = pruned.logits_padded(&batch, &lens, t).unwrap();
        assert_eq!(full.len(), all.len());
        assert!(full
            .iter()
            .zip(&all)
            .all(|(a, b)| a.to_bits() == b.to_bits()));
    }
}

use common::col;

/// Shipped exports (a seed's steps, position_ids, external data) and the
/// checkpoint whose float64 reference logits they reproduce.
const EXPORTS_AND_REFERENCES: [(&str, &str); 4] = [
    ("neox-seed11/step0", "neox-seed11/step0"),
    ("neox-seed12/step300", "neox-seed12/step300"),
    ("variants/with-position-ids", "neox-seed12/step300"),
    ("variants/dynamo-external-data", "neox-seed12/step300"),
];

/// From float64 log-probs: the probabilities, the entropy and KL(p ‖ q).
fn entropy_and_kl(lp: &[f64], lq: &[f64]) -> (Vec<f64>, f64, f64) {
    let p: Vec<f64> = lp.iter().map(|l| l.exp()).collect();
    let h = -p.iter().zip(lp).map(|(p, l)| p * l).sum::<f64>();
    let kl = p
        .iter()
        .zip(lp)
        .zip(lq)
        .map(|((p, l), q)| p * (l - q))
        .sum();
    (p, h, kl)
}

/// A skewed unigram log-distribution over `n` tokens (normalised).
fn skewed_unigram(n: usize) -> Vec<f64> {
    let raw: Vec<f64> = (0..n).map(|i| -((i % 37) as f64) / 5.0).collect();
    let z = raw.iter().map(|x| x.exp()).sum::<f64>().ln();
    raw.iter().map(|x| x - z).collect()
}
/// The log-probs (the host kernel and the ONNX Runtime graph) and the vectorised row statistics
/// that replace the per-element f64 path, against float64 computed here
/// from the torch reference logits, on every shipped export: padded logits
/// (768 for 700), external data, an extra position_ids input.
#[test]
fn log_prob_graph_and_row_statistics_match_float64_on_real_exports() {
    use seedconv::analysis::{divergence, kernels};
    use seedconv::lm::onnx::logprobs::LogProbGraph;
    let ids = probe_ids();
    let t = ids.len();
    let n = 700;
    let lq = skewed_unigram(n);
    for (model, reference) in EXPORTS_AND_REFERENCES {
        let mut m = OrtModel::from_file(&causal().join(model).join("model.onnx"), 1).unwrap();
        let (logits, _) = m.run(&ids, &[t], t, None).unwrap();
        let rows: Vec<i64> = (0..t as i64).collect();
        // The host kernel (what the CPU runs) and the ONNX graph (what a
        // device runs) both against float64, and within an ulp or two of
        // each other.
        let host = LogProbGraph::new(1).run(model, &logits, &rows, n).unwrap();
        let graph = LogProbGraph::graph_only(1)
            .run(model, &logits, &rows, n)
            .unwrap();
        for (h, g) in host.iter().zip(&graph) {
            assert!(
                (h - g).abs() <= 4.0 * h.abs().max(1.0) * f32::EPSILON,
                "{model}: {h} vs {g}"
            );
        }
        for lp in [graph, host.clone()] {
            let want = common::read_npy_f64(
                &causal()
                    .join(reference)
                    .join("reference_logits_float64.npy"),
            );
            let mut p = vec![0f32; n];
            for r in 0..t {
                let w: Vec<f32> = want[r * 768..r * 768 + 768]
                    .iter()
                    .map(|&x| x as f32)
                    .collect();
                let ref64 = lsm64(&w, n);
                let got = &lp[r * n..(r + 1) * n];
                for (g, w) in got.iter().zip(&ref64) {
                    assert!((*g as f64 - w).abs() < 2e-4, "{model} row {r}: {g} vs {w}");
                }
                // Row statistics: the vectorised pass against f64 sums over the
                // f64 reference distribution.
                let s = kernels::row_stats(got, 3, 16, &lq, &mut p);
                // The one-pass kernel the CPU runs, from the model's logits:
                // the same log-probs and (to f32 rounding of p) statistics.
                let raw = seedconv::lm::onnx::runtime::logits_f32(&logits).unwrap();
                let mut row = raw[r * 768..r * 768 + n].to_vec();
                let one = kernels::row_stats_logits(&mut row, 3, 16, &lq, &mut p).unwrap();
                assert_eq!(row, &host[r * n..(r + 1) * n], "{model} row {r}");
                assert_eq!(one.topk_ids, divergence::top_k(&row, 16));
                for (a, b) in [
                    (one.entropy, s.entropy),
                    (one.kl_uniform, s.kl_uniform),
                    (one.kl_unigram, s.kl_unigram),
                    (one.log_mass_outside, s.log_mass_outside),
                ] {
                    assert!((a - b).abs() < 1e-5, "{model} row {r}: {a} vs {b}");
                }
                let (_, h, kq) = entropy_and_kl(&ref64, &lq);
                assert!(
                    (s.entropy - h).abs() < 1e-4,
                    "{model}: entropy {} vs {h}",
                    s.entropy
                );
                assert!((s.kl_uniform - ((n as f64).ln() - h)).abs() < 1e-4);
                assert!(
                    (s.kl_unigram - kq).abs() < 1e-4,
                    "{model}: {} vs {kq}",
                    s.kl_unigram
                );
                // And exactly what the f64 reference code makes of the same
                // f32 log-probs, to f32 rounding of p.
                let f = divergence::row_stats(got, 3, 16, &lq);
                assert_eq!(s.topk_ids, f.topk_ids);
                assert!((s.log_mass_outside - f.log_mass_outside).abs() < 1e-5);
            }
        }
    }
}

#[test]
fn one_forward_pass_per_checkpoint_and_the_budget_fallback_give_identical_tables() {
    let p = Project::micro();
    let cfg = suite_config(&common::hf_models(), "[0, 300]");
    p.write_config(&cfg);
    p.ok(&["run"]);
    // Every kl instance read the arrays its dist instances wrote, then
    // deleted them: nothing transient is left.
    for step in [0, 300] {
        let m = p.manifest_of("kl", &format!("tiny-step{step}.kl.parquet"));
        assert_eq!(m["extra"]["seeds_recomputed"], 0, "step {step}");
    }
    assert!(
        p.find(|n| n == "full.f32").is_empty(),
        "transient arrays deleted"
    );
    let tables = |p: &Project| -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        for stage in ["dist", "kl"] {
            let dir = p.store().join(stage).join("current");
            let mut names: Vec<_> = std::fs::read_dir(&dir)
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| n.ends_with(".parquet"))
                .collect();
            names.sort();
            for n in names {
                out.push((n.clone(), std::fs::read(dir.join(&n)).unwrap()));
            }
        }
        out
    };
    let first = tables(&p);
    // A budget of zero: no array is written, every kl instance runs the
    // seeds' models again; the tables are the same bytes.
    p.write_config(&format!("{cfg}scratch_budget = 0\n"));
    p.ok(&["run", "--force", "dist", "--force", "kl"]);
    for step in [0, 300] {
        let m = p.manifest_of("kl", &format!("tiny-step{step}.kl.parquet"));
        assert_eq!(m["extra"]["seeds_recomputed"], 2, "step {step}");
        let d = p.manifest_of("dist", &format!("tiny-seed11-step{step}.dist.parquet"));
        assert_eq!(d["extra"]["full_array"], false);
        assert_eq!(d["extra"]["unembedding_pruned"], true);
    }
    let second = tables(&p);
    assert_eq!(first.len(), second.len());
    for ((n1, b1), (n2, b2)) in first.iter().zip(&second) {
        assert_eq!(n1, n2);
        assert!(b1 == b2, "{n1} differs between one pass and recomputation");
    }
}

/// The row statistics computed inside ONNX Runtime (`StatsGraph`, the
/// CUDA path) against float64 computed here from the torch reference
/// logits, on the shipped exports: padded logits (768 for 700, truncated),
/// external data, position_ids; both the graph as exported ([b, t, width]
/// with flat rows) and the pruned one ([1, R, width]) over a padded batch,
/// also through I/O binding. Tolerances as stated in the README: against float64 1e-4 nats (as the
/// host pass), log-probs within 2e-4 of float64 and 4 ulp of the host's.
#[test]
fn statistics_in_the_graph_match_float64_on_real_exports() {
    use seedconv::analysis::{divergence, kernels};
    use seedconv::lm::onnx::runtime::logits_f32;
    use seedconv::lm::onnx::statgraph::StatsGraph;
    let ids = probe_ids();
    let t = ids.len();
    let n = 700;
    let k = 16;
    let lq = skewed_unigram(n);
    for (model, reference) in EXPORTS_AND_REFERENCES {
        let path = causal().join(model).join("model.onnx");
        let want = common::read_npy_f64(
            &causal()
                .join(reference)
                .join("reference_logits_float64.npy"),
        );
        // Rows 1..t of the probe sequence; each row's target is the next id.
        let rows: Vec<usize> = (0..t - 1).collect();
        let targets: Vec<u32> = rows.iter().map(|&r| ids[r + 1] as u32 % n as u32).collect();
        // The graph as exported: [1, t, 768], flat rows. The pruned graph: a
        // batch of the probe and a copy padded after 40 tokens, the probe's
        // rows read ([1, R, 768]).
        let mut plain = OrtModel::plain_from_file(&path, 1).unwrap();
        let (all, _) = plain.run(&ids, &[t], t, None).unwrap();
        let flat: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
        let mut pruned = OrtModel::from_file(&path, 1).unwrap();
        assert!(pruned.prunes_rows());
        let mut batch = ids.clone();
        batch.extend(&ids);
        let (some, _) = pruned.run(&batch, &[t, 40], t, Some(&flat)).unwrap();
        // Through I/O binding (how a CUDA run keeps the logits on its
        // device; bound to host memory here): the same bits.
        pruned.keep_logits_on_device().unwrap();
        let (bound, _) = pruned.run(&batch, &[t, 40], t, Some(&flat)).unwrap();
        assert_eq!(logits_f32(&bound).unwrap(), logits_f32(&some).unwrap());
        let identity: Vec<i64> = (0..rows.len() as i64).collect();
        let host = logits_f32(&all).unwrap();
        for (logits, at) in [(&all, &flat), (&some, &identity), (&bound, &identity)] {
            let mut g = StatsGraph::new(1, None, &lq);
            let got = g.run(model, logits, at, &targets, k, true).unwrap();
            let lp = got.log_probs_f32().unwrap();
            assert_eq!(lp.len(), rows.len() * n);
            let mut e = vec![0f32; n];
            for (i, &r) in rows.iter().enumerate() {
                let s = got.stats[i].as_ref().unwrap();
                let ref64 = lsm64(
                    &want[r * 768..r * 768 + 768]
                        .iter()
                        .map(|&x| x as f32)
                        .collect::<Vec<_>>(),
                    n,
                );
                let row = &lp[i * n..(i + 1) * n];
                // The host pass over the same logits: log-probs within 4 ulp.
                let mut hrow = host[r * 768..r * 768 + n].to_vec();
                let h = kernels::row_stats_logits(&mut hrow, targets[i] as usize, k, &lq, &mut e)
                    .unwrap();
                for ((g, w), hv) in row.iter().zip(&ref64).zip(&hrow) {
                    assert!((*g as f64 - w).abs() < 2e-4, "{model} row {r}: {g} vs {w}");
                    assert!((g - hv).abs() <= 4.0 * hv.abs().max(1.0) * f32::EPSILON);
                }
                let (pr, ent, kq) = entropy_and_kl(&ref64, &lq);
                let top =
                    divergence::top_k(&ref64.iter().map(|&x| x as f32).collect::<Vec<_>>(), k);
                let outside: f64 = (0..n)
                    .filter(|j| !top.contains(&(*j as u32)))
                    .map(|j| pr[j])
                    .sum();
                for (what, a, b) in [
                    ("entropy", s.entropy, ent),
                    ("kl_uniform", s.kl_uniform, (n as f64).ln() - ent),
                    ("kl_unigram", s.kl_unigram, kq),
                    ("log_mass_outside", s.log_mass_outside, outside.ln()),
                    (
                        "target",
                        s.target_logprob as f64,
                        ref64[targets[i] as usize],
                    ),
                ] {
                    assert!((a - b).abs() < 1e-4, "{model} row {r} {what}: {a} vs {b}");
                }
                assert_eq!(s.topk_ids, h.topk_ids, "{model} row {r}");
                assert_eq!(s.topk_ids, top, "{model} row {r}");
                for (a, b) in s.topk_logprobs.iter().zip(&h.topk_logprobs) {
                    assert!((a - b).abs() <= 4.0 * b.abs().max(1.0) * f32::EPSILON);
                }
            }
            // Without the log-probs: the same statistics.
            let again = g.run(model, logits, at, &targets, k, false).unwrap();
            assert!(again.log_probs.is_none());
            for (a, b) in again.stats.iter().zip(&got.stats) {
                assert_eq!(a.as_ref().unwrap().entropy, b.as_ref().unwrap().entropy);
            }
        }
    }
}

/// At Pythia's vocabulary (50,277 kept of 50,304 logits) the graph's
/// statistics stay within the stated 1e-6 nats of the host pass's, on
/// peaked and flat rows; a row with a NaN logit comes out without
/// statistics and leaves its neighbours alone.
#[test]
fn statistics_in_the_graph_hold_their_tolerance_at_a_50k_vocabulary() {
    use seedconv::analysis::kernels;
    use seedconv::lm::onnx::statgraph::StatsGraph;
    let (r, w, n, k) = (24usize, 50_304usize, 50_277usize, 64usize);
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut unif = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 40) as f64 / (1u64 << 24) as f64
    };
    let mut logits = vec![0f32; r * w];
    for i in 0..r {
        // Zipf-like ranks at temperatures from peaked (0.3) to flat (3).
        let temp = 0.3 + 2.7 * i as f64 / (r - 1) as f64;
        for j in 0..w {
            let rank = (j * 7919 + i * 104_729) % w + 1;
            logits[i * w + j] = (-(rank as f64).ln() / temp + 0.5 * unif()) as f32;
        }
    }
    logits[5 * w + 123] = f32::NAN;
    let lq: Vec<f64> = {
        let raw: Vec<f64> = (0..n).map(|j| -((j % 101) as f64) / 9.0).collect();
        let z = raw.iter().map(|x| x.exp()).sum::<f64>().ln();
        raw.iter().map(|x| x - z).collect()
    };
    let targets: Vec<u32> = (0..r as u32).map(|i| i * 2011 % n as u32).collect();
    seedconv::lm::ortlib::env().unwrap(); // loads the ONNX Runtime library
    let value = ort::value::Tensor::from_array((vec![1, r as i64, w as i64], logits.clone()))
        .unwrap()
        .into_dyn();
    let rows: Vec<i64> = (0..r as i64).collect();
    let got = StatsGraph::new(2, None, &lq)
        .run("synthetic", &value, &rows, &targets, k, false)
        .unwrap();
    let mut e = vec![0f32; n];
    let mut worst = 0f64;
    for i in 0..r {
        let mut row = logits[i * w..i * w + n].to_vec();
        let host = kernels::row_stats_logits(&mut row, targets[i] as usize, k, &lq, &mut e);
        let s = &got.stats[i];
        if i == 5 {
            assert!(
                host.is_none() && s.is_none(),
                "the NaN row has no statistics"
            );
            continue;
        }
        let (s, h) = (s.as_ref().unwrap(), host.unwrap());
        for (what, a, b) in [
            ("entropy", s.entropy, h.entropy),
            ("kl_uniform", s.kl_uniform, h.kl_uniform),
            ("kl_unigram", s.kl_unigram, h.kl_unigram),
            ("log_mass_outside", s.log_mass_outside, h.log_mass_outside),
            ("target", s.target_logprob as f64, h.target_logprob as f64),
        ] {
            assert!((a - b).abs() < 1e-6, "row {i} {what}: {a} vs {b}");
            worst = worst.max((a - b).abs());
        }
        assert_eq!(s.topk_ids, h.topk_ids, "row {i}");
        for (a, b) in s.topk_logprobs.iter().zip(&h.topk_logprobs) {
            assert!(
                (a - b).abs() <= 4.0 * b.abs().max(1.0) * f32::EPSILON,
                "row {i}"
            );
        }
    }
    eprintln!("largest |graph − host| at 50k: {worst:e}");
}

/// `dist.statistics = "graph"` (what a CUDA run uses): every dist table
/// holds the host pass's rows, top-k ids and targets, its statistics within
/// 1e-6 nats and top-k log-probs within 4 ulp; the kl stage reads the
/// graph's log-probs from the transient arrays and gives the same KL within
/// 1e-6. Each manifest says where its statistics came from.
#[test]
fn statistics_in_the_graph_give_the_host_passs_tables_within_tolerance() {
    let p = Project::micro();
    let cfg = suite_config(&common::hf_models(), "[0, 300]");
    p.write_config(&cfg);
    p.ok(&["run", "kl"]);
    let read = |p: &Project, stage: &str, name: &str| {
        common::read_table(&p.store().join(stage).join("current").join(name))
    };
    let names: Vec<String> = [11, 12]
        .iter()
        .flat_map(|s| [0, 300].map(|t| format!("tiny-seed{s}-step{t}.dist.parquet")))
        .collect();
    let host: Vec<_> = names.iter().map(|n| read(&p, "dist", n)).collect();
    let host_kl: Vec<_> = [0, 300]
        .iter()
        .map(|t| read(&p, "kl", &format!("tiny-step{t}.kl.parquet")))
        .collect();
    p.write_config(&format!("{cfg}statistics = \"graph\"\n"));
    p.ok(&["run", "--force", "dist", "--force", "kl", "kl"]);
    for (name, h) in names.iter().zip(&host) {
        let m = p.manifest_of("dist", name);
        assert_eq!(m["extra"]["statistics"], "graph", "{name}");
        assert_eq!(m["extra"]["full_array"], true, "{name}");
        common::assert_dist_tables_close(&read(&p, "dist", name), h, name);
    }
    for (t, h) in [0, 300].iter().zip(&host_kl) {
        let m = p.manifest_of("kl", &format!("tiny-step{t}.kl.parquet"));
        assert_eq!(
            m["extra"]["seeds_recomputed"], 0,
            "the graph's arrays were read"
        );
        let g = read(&p, "kl", &format!("tiny-step{t}.kl.parquet"));
        assert_eq!(g.num_rows(), h.num_rows());
        for (a, b) in col::<Float64Array>(&g, "kl")
            .iter()
            .zip(col::<Float64Array>(h, "kl"))
        {
            let (a, b) = (a.unwrap(), b.unwrap());
            assert!(
                (a - b).abs() <= 1e-6 + 1e-6 * b.abs(),
                "step {t}: kl {a} vs {b}"
            );
        }
    }
}

/// Two forward workers (two sessions of one thread, alternating batches:
/// what a dist instance with two threads runs on a small model) give the
/// same table bytes as one session, with and without the transient arrays
/// the kl stage then reads.
#[test]
fn two_forward_workers_give_one_sessions_tables_byte_for_byte() {
    let p = Project::micro();
    let cfg = suite_config(&common::hf_models(), "[0, 300]");
    let tables = |p: &Project, stage: &str| -> Vec<Vec<u8>> {
        let dir = p.store().join(stage).join("current");
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|n| n.extension().is_some_and(|e| e == "parquet"))
            .collect();
        names.sort();
        names.iter().map(|n| std::fs::read(n).unwrap()).collect()
    };
    let mut seen = Vec::new();
    // Two workers three times: their interleaving varies from run to run.
    for threads in [1, 2, 2, 2] {
        // batch_size 1: many batches, so the two workers interleave.
        p.write_config(
            &format!("{cfg}threads = {threads}\nbatch_size = 1\n").replace("batch_size = 3\n", ""),
        );
        p.ok(&["run", "--force", "dist", "--force", "kl", "kl"]);
        let m = p.manifest_of("dist", "tiny-seed12-step300.dist.parquet");
        assert_eq!(
            m["extra"]["forward_workers"], threads,
            "threads = {threads}"
        );
        let k = p.manifest_of("kl", "tiny-step300.kl.parquet");
        assert_eq!(k["extra"]["seeds_recomputed"], 0);
        seen.push((tables(&p, "dist"), tables(&p, "kl")));
    }
    assert_eq!(seen[0].0.len(), 4);
    for s in &seen[1..] {
        assert!(seen[0] == *s, "two workers changed a dist or kl table");
    }
}

#[test]
fn external_suite_dist_and_kl_match_an_independent_float64_computation() {
    let p = Project::micro();
    p.write_config(&suite_config(&common::hf_models(), "[0, 50, 300]"));
    p.ok(&["run"]);
    let store = p.store();
    // Provenance: each table names the blake3 of the model file it came from.
    for seed in [11, 12] {
        for step in [0, 50, 300] {
            common::assert_model_hash(
                &store.join(format!(
                    "dist/current/tiny-seed{seed}-step{step}.dist.parquet"
                )),
                &common::causal().join(format!("neox-seed{seed}/step{step}/model.onnx")),
            );
        }
    }
    let rows = seedconv::table::read(&store.join("corpus/current/rows.parquet")).unwrap();
    let tokens = seedconv::table::read(&store.join("corpus/current/tokens.parquet")).unwrap();
    let tok: Vec<i64> = col::<UInt32Array>(&tokens, "token_id")
        .values()
        .iter()
        .map(|&x| x as i64)
        .collect();
    let row_pos = col::<UInt32Array>(&rows, "row").values().to_vec();
    let cstart = col::<UInt32Array>(&rows, "context_start").values().to_vec();
    let targets = col::<UInt32Array>(&rows, "target_id").values().to_vec();
    assert!(row_pos.len() > 100);
    let n = 700;
    let uni = seedconv::table::read(&store.join("unigram/current/unigram.parquet")).unwrap();
    let lq_raw = col::<Float64Array>(&uni, "log_prob").values().to_vec();
    let lq_norm = lq_raw[..n].iter().map(|x| x.exp()).sum::<f64>().ln();

    for step in [0, 50, 300] {
        // Every row recomputed alone: its own context, batch of one, no padding.
        let mut lps: Vec<Vec<Vec<f64>>> = Vec::new();
        for seed in [11, 12] {
            let mut m = OrtModel::from_file(
                &causal().join(format!("neox-seed{seed}/step{step}/model.onnx")),
                1,
            )
            .unwrap();
            let mut per_row = Vec::new();
            for (i, &r) in row_pos.iter().enumerate() {
                let ctx = &tok[cstart[i] as usize..=r as usize];
                let (logits, w) = m.logits(ctx, 1, ctx.len()).unwrap();
                per_row.push(lsm64(&logits[(ctx.len() - 1) * w..ctx.len() * w], n));
            }
            let d = seedconv::table::read(&store.join(format!(
                "dist/current/tiny-seed{seed}-step{step}.dist.parquet"
            )))
            .unwrap();
            assert_eq!(d.num_rows(), row_pos.len());
            let tlp = col::<Float32Array>(&d, "target_logprob");
            let ent = col::<Float32Array>(&d, "entropy");
            let klu = col::<Float32Array>(&d, "kl_uniform");
            let klq = col::<Float32Array>(&d, "kl_unigram");
            let topk = col::<ListArray>(&d, "topk_ids");
            for (i, lp) in per_row.iter().enumerate() {
                let p: Vec<f64> = lp.iter().map(|l| l.exp()).collect();
                let h = -p.iter().zip(lp).map(|(p, l)| p * l).sum::<f64>();
                let kq: f64 = p
                    .iter()
                    .zip(lp)
                    .enumerate()
                    .map(|(j, (p, l))| p * (l - (lq_raw[j] - lq_norm)))
                    .sum();
                assert!(
                    (tlp.value(i) as f64 - lp[targets[i] as usize]).abs() < 1e-4,
                    "row {i}"
                );
                assert!((ent.value(i) as f64 - h).abs() < 1e-4);
                assert!((klu.value(i) as f64 - ((n as f64).ln() - h)).abs() < 1e-4);
                assert!((klq.value(i) as f64 - kq).abs() < 1e-4);
                let ids = topk.value(i);
                let ids = ids.as_any().downcast_ref::<UInt32Array>().unwrap();
                let mut order: Vec<usize> = (0..n).collect();
                order.sort_by(|&a, &b| lp[b].total_cmp(&lp[a]));
                assert_eq!(
                    ids.value(0) as usize,
                    order[0],
                    "row {i}: most likely token"
                );
                for j in 0..8 {
                    // The stored top 8 are eight of the largest (ties aside).
                    assert!(lp[ids.value(j) as usize] >= lp[order[7]] - 1e-6);
                }
            }
            lps.push(per_row);
        }
        // Exact KL per ordered pair and row.
        let k =
            seedconv::table::read(&store.join(format!("kl/current/tiny-step{step}.kl.parquet")))
                .unwrap();
        assert_eq!(k.num_rows(), 2 * row_pos.len());
        let (sa, kl) = (
            col::<StringArray>(&k, "seed_a"),
            col::<Float64Array>(&k, "kl"),
        );
        let (mut got_sum, mut want_sum) = (0.0, 0.0);
        for i in 0..k.num_rows() {
            let (a, b) = if sa.value(i) == "11" { (0, 1) } else { (1, 0) };
            let r = i / 2;
            let want: f64 = lps[a][r]
                .iter()
                .zip(&lps[b][r])
                .map(|(x, y)| x.exp() * (x - y))
                .sum();
            let got = kl.value(i);
            assert!(
                (got - want).abs() <= (0.01 * want).max(1e-4),
                "step {step} row {r}: {got} vs {want}"
            );
            got_sum += got;
            want_sum += want;
        }
        let rel = ((got_sum - want_sum) / want_sum).abs();
        assert!(rel < 1e-3, "step {step}: mean KL off by {rel:e}");
        // The pair battery: total variation, Δp of the target, top-1
        // agreement; and the group's JSD and ensemble gain.
        let (tv, dp, agree) = (
            col::<Float64Array>(&k, "tv"),
            col::<Float64Array>(&k, "dp"),
            col::<BooleanArray>(&k, "top1_agree"),
        );
        let argmax = |l: &[f64]| {
            (0..l.len())
                .max_by(|&x, &y| l[x].total_cmp(&l[y]).then(y.cmp(&x)))
                .unwrap()
        };
        for i in 0..k.num_rows() {
            let (a, b) = if sa.value(i) == "11" { (0, 1) } else { (1, 0) };
            let r = i / 2;
            let (la, lb) = (&lps[a][r], &lps[b][r]);
            let want_tv = 0.5
                * la.iter()
                    .zip(lb)
                    .map(|(x, y)| (x.exp() - y.exp()).abs())
                    .sum::<f64>();
            assert!(
                (tv.value(i) - want_tv).abs() < 1e-5,
                "step {step} row {r}: tv {} vs {want_tv}",
                tv.value(i)
            );
            let y = targets[r] as usize;
            let want_dp = lb[y].exp() - la[y].exp();
            assert!((dp.value(i) - want_dp).abs() < 1e-5, "row {r}: dp");
            assert_eq!(
                agree.value(i),
                argmax(la) == argmax(lb),
                "row {r}: agreement"
            );
        }
        let g =
            seedconv::table::read(&store.join(format!("kl/current/tiny-step{step}.group.parquet")))
                .unwrap();
        assert_eq!(g.num_rows(), row_pos.len());
        let (jsd, gain) = (
            col::<Float64Array>(&g, "jsd"),
            col::<Float64Array>(&g, "ens_gain"),
        );
        for r in 0..row_pos.len() {
            let (la, lb) = (&lps[0][r], &lps[1][r]);
            let h = |q: &mut dyn Iterator<Item = f64>| {
                -q.filter(|&x| x > 0.0).map(|x| x * x.ln()).sum::<f64>()
            };
            let mix = h(&mut la.iter().zip(lb).map(|(x, y)| 0.5 * (x.exp() + y.exp())));
            let want = mix
                - 0.5 * (h(&mut la.iter().map(|x| x.exp())) + h(&mut lb.iter().map(|x| x.exp())));
            assert!(
                (jsd.value(r) - want).abs() < 1e-5,
                "step {step} row {r}: jsd {} vs {want}",
                jsd.value(r)
            );
            assert!(jsd.value(r) <= 2f64.ln() + 1e-6);
            let y = targets[r] as usize;
            let want_gain = (0.5 * (la[y].exp() + lb[y].exp())).ln() - 0.5 * (la[y] + lb[y]);
            assert!((gain.value(r) - want_gain).abs() < 1e-4, "row {r}: gain");
        }
        let conv =
            seedconv::table::read(&store.join(format!("kl/current/tiny-step{step}.conv.parquet")))
                .unwrap();
        let c = col::<Float64Array>(&conv, "conv");
        assert!((c.value(0) + (kl.value(0) + kl.value(1)) / 2.0).abs() < 1e-12);
    }
    // The estimator validation table exists for the k below the vocabulary.
    let v = seedconv::table::read(&store.join("kl/current/tiny-step300.topk_validation.parquet"))
        .unwrap();
    assert_eq!(
        col::<UInt32Array>(&v, "k").values().to_vec(),
        vec![16, 64, 256]
    );
    // More rows than the default sample of 256: every stride-th row is
    // validated, against the exact mean KL of those rows.
    let stride = row_pos.len().div_ceil(256);
    assert!(stride > 1);
    let sampled: Vec<usize> = (0..row_pos.len()).filter(|r| r % stride == 0).collect();
    assert!(col::<UInt32Array>(&v, "rows")
        .values()
        .iter()
        .all(|&r| r as usize == sampled.len()));
    let kl = seedconv::table::read(&store.join("kl/current/tiny-step300.kl.parquet")).unwrap();
    let kl = col::<Float64Array>(&kl, "kl");
    let mean = sampled
        .iter()
        .map(|&r| kl.value(2 * r) + kl.value(2 * r + 1))
        .sum::<f64>()
        / (2 * sampled.len()) as f64;
    let exact = col::<Float64Array>(&v, "kl_exact");
    assert!(exact
        .values()
        .iter()
        .all(|&e| (e - mean).abs() <= 1e-12 * mean));
    let se = col::<Float64Array>(&v, "rel_error_se");
    assert!(se.values().iter().all(|s| s.is_finite() && *s > 0.0));
}

#[test]
fn retained_arrays_serve_the_kl_stage_and_give_the_same_values() {
    let p = Project::micro();
    let cfg = suite_config(&common::hf_models(), "[50]");
    p.write_config(&cfg);
    p.ok(&["run"]);
    let a = p.path().join("before.parquet");
    std::fs::copy(p.store().join("kl/current/tiny-step50.kl.parquet"), &a).unwrap();
    p.write_config(&format!("{cfg}retain_full = true\n"));
    // The dist instances rerun to leave their arrays; their tables come out
    // the same, so the kl instance is still fresh (early cutoff).
    let r = p.ok(&["run"]);
    assert_eq!(
        r.computed_ids(),
        vec!["dist[tiny-seed11-step50]", "dist[tiny-seed12-step50]"]
    );
    let arrays = p.find(|n| n == "full.f32");
    assert_eq!(arrays.len(), 2, "one retained array per seed");
    p.ok(&["run", "--force", "kl"]);
    let m = p.manifest_of("kl", "tiny-step50.kl.parquet");
    assert_eq!(m["extra"]["seeds_recomputed"], 0);
    let read = |path: &std::path::Path| {
        col::<Float64Array>(&seedconv::table::read(path).unwrap(), "kl")
            .values()
            .to_vec()
    };
    let (x, y) = (
        read(&a),
        read(&p.store().join("kl/current/tiny-step50.kl.parquet")),
    );
    assert_eq!(x.len(), y.len());
    for (u, v) in x.iter().zip(&y) {
        assert!((u - v).abs() <= 1e-6 * u.abs().max(1e-3), "{u} vs {v}");
    }
}

#[test]
fn missing_checkpoints_are_all_reported_before_any_work() {
    let p = Project::micro();
    p.write_config(&suite_config(&common::hf_models(), "[0, 50, 999]"));
    let r = p.run(&["run"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("2 of 6 checkpoints are missing"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("neox-seed11/step999/model.onnx")
            && r.stderr.contains("neox-seed12/step999/model.onnx"),
        "{}",
        r.stderr
    );
    assert!(!p.store().join("tokenizer").exists(), "nothing ran");
}

#[test]
fn identical_steps_are_warned_about() {
    let p = Project::micro();
    let dir = p.path().join("suite");
    for seed in [11, 12] {
        for (step, src) in [(0, 0), (50, 50), (300, 50)] {
            let d = dir.join(format!("neox-seed{seed}/step{step}"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::copy(
                causal().join(format!("neox-seed{seed}/step{src}/model.onnx")),
                d.join("model.onnx"),
            )
            .unwrap();
        }
    }
    p.write_config(&suite_config(
        "suite/neox-seed{seed}/step{step}/model.onnx",
        "[0, 50, 300]",
    ));
    let s = p.ok(&["status"]);
    assert!(
        s.stderr
            .contains("tiny seed 11: steps 50 and 300 have identical weights"),
        "{}",
        s.stderr
    );
}

/// Write a built-in-style model with `f` applied to its weights.
fn write_model(
    path: &std::path::Path,
    vocab_padded: usize,
    f: impl Fn(&mut seedconv::lm::model::Weights),
) {
    let shape = seedconv::lm::model::Shape {
        vocab: 700,
        vocab_padded,
        layers: 1,
        d_model: 16,
        heads: 2,
        context: 32,
    };
    let mut w = shape.init(3);
    f(&mut w);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, seedconv::lm::onnx::export::to_bytes(&shape, &w)).unwrap();
}

fn own_suite(p: &Project, widths: [usize; 2], nan_in_seed_2: bool) {
    for (i, seed) in [1, 2].into_iter().enumerate() {
        write_model(
            &p.path().join(format!("own/s{seed}/step0/model.onnx")),
            widths[i],
            |w| {
                if nan_in_seed_2 && seed == 2 {
                    w.get_mut("unembed.w").unwrap().1[5] = f32::NAN;
                }
            },
        );
    }
    let cfg = suite_config("own/s{seed}/step{step}/model.onnx", "[0]")
        .replace("seeds = [11, 12]", "seeds = [1, 2]");
    p.write_config(&cfg);
}

#[test]
fn mismatched_vocabulary_widths_name_both_checkpoints() {
    let p = Project::micro();
    own_suite(&p, [704, 768], false);
    let r = p.run(&["run"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("vocabulary widths differ within size tiny"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("own/s1/step0/model.onnx emits 704")
            && r.stderr.contains("own/s2/step0/model.onnx emits 768"),
        "{}",
        r.stderr
    );
    // Both dist entries were computed and kept.
    assert_eq!(p.ok(&["show", "dist"]).stdout.lines().count(), 2);
}

#[test]
fn nan_logits_name_the_checkpoint_and_keep_other_work() {
    let p = Project::micro();
    own_suite(&p, [704, 704], true);
    let r = p.run(&["run"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("dist[tiny-seed2-step0]")
            && r.stderr
                .contains("own/s2/step0/model.onnx: non-finite logit"),
        "{}",
        r.stderr
    );
    assert!(p
        .store()
        .join("dist/current/tiny-seed1-step0.dist.parquet")
        .exists());
}

#[test]
fn wrong_signature_names_the_model_and_its_inputs() {
    use prost::Message;
    let p = Project::micro();
    own_suite(&p, [704, 704], false);
    let path = p.path().join("own/s2/step0/model.onnx");
    let mut m =
        seedconv::lm::onnx::proto::ModelProto::decode(std::fs::read(&path).unwrap().as_slice())
            .unwrap();
    let g = m.graph.as_mut().unwrap();
    g.output[0].name = Some("scores".into());
    g.node.last_mut().unwrap().output[0] = "scores".into();
    std::fs::write(&path, m.encode_to_vec()).unwrap();
    let r = p.run(&["run"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("own/s2/step0/model.onnx: unsupported model signature: inputs [input_ids, attention_mask], outputs [scores]"),
        "{}",
        r.stderr
    );
}

#[test]
fn device_cuda_without_cuda_is_an_error_not_a_silent_fallback() {
    let p = Project::micro();
    let cfg = suite_config(&common::hf_models(), "[0]");
    p.write_config(&cfg.replace("[dist]\n", "[dist]\ndevice = \"cuda\"\n"));
    let r = p.run(&["run"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("device = \"cuda\" but the CUDA execution provider failed"),
        "{}",
        r.stderr
    );
}
