//! The built-in seed suite: determinism, seed independence, the ONNX export
//! against an independent float64 forward pass, and learning.

use crate::common;
use common::Project;

use arrow_array::{Float32Array, StringArray, UInt32Array};
use seedconv::lm::model::{Shape, Weights};

fn suite_config(seeds: &str, extra: &str) -> String {
    common::builtin_suite(seeds, "[0, 1, 8, 24]", extra)
}

/// (seed label, step) → weights hash from every `checkpoints.parquet`.
fn hashes(p: &Project) -> std::collections::BTreeMap<(String, u32), String> {
    let mut out = std::collections::BTreeMap::new();
    for f in p.find(|n| n.ends_with("checkpoints.parquet")) {
        if f.to_string_lossy().contains("/current/") {
            continue;
        }
        let b = seedconv::table::read(&f).unwrap();
        let seed = b
            .column_by_name("seed")
            .unwrap()
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        let step = b
            .column_by_name("step")
            .unwrap()
            .as_any()
            .downcast_ref::<UInt32Array>()
            .unwrap();
        let hash = b
            .column_by_name("weights_blake3")
            .unwrap()
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        for i in 0..b.num_rows() {
            out.insert(
                (seed.value(i).to_string(), step.value(i)),
                hash.value(i).to_string(),
            );
        }
    }
    out
}

#[test]
fn same_config_gives_identical_weights_on_any_thread_count_and_seeds_act_independently() {
    let seeds = "[1, 2, { init_seed = 1, data_seed = 1 }, { init_seed = 1, data_seed = 2 }, { init_seed = 2, data_seed = 1 }]";
    let a = Project::micro();
    a.write_config(&suite_config(seeds, ""));
    a.ok(&["run", "train"]);
    // `a` trains in worker processes, as many at once as cores, one thread
    // each; `b` one at a time in the run's own process on every core.
    let b = Project::micro();
    b.write_config(&suite_config(seeds, ""));
    let out = b
        .cmd(&["run", "train", "-j", "1"])
        .env("SEEDCONV_TRAIN_IN_PROCESS", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (ha, hb) = (hashes(&a), hashes(&b));
    assert_eq!(ha.len(), 5 * 4);
    assert_eq!(
        ha, hb,
        "weights differ between worker and in-process training (thread counts differ)"
    );
    // With two or more cores, trainings of `a` overlapped in time.
    if std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2 {
        let spans: Vec<(f64, f64)> = a
            .find(|n| n == "manifest.json")
            .iter()
            .filter(|f| {
                let f = f.to_string_lossy();
                f.contains("/train/") && !f.contains("/current")
            })
            .map(|f| {
                let m: serde_json::Value =
                    serde_json::from_str(&std::fs::read_to_string(f).unwrap()).unwrap();
                let t0 = m["started_unix"].as_f64().unwrap();
                (t0, t0 + m["seconds"].as_f64().unwrap())
            })
            .collect();
        assert_eq!(spans.len(), 5);
        let overlap = spans
            .iter()
            .enumerate()
            .any(|(i, x)| spans[i + 1..].iter().any(|y| x.0 < y.1 && y.0 < x.1));
        assert!(overlap, "no two trainings ran at once: {spans:?}");
    }
    // The ONNX files are byte-identical too.
    for (x, y) in a
        .find(|n| n == "model.onnx")
        .iter()
        .zip(b.find(|n| n == "model.onnx"))
    {
        assert_eq!(std::fs::read(x).unwrap(), std::fs::read(y).unwrap());
    }

    let h = |seed: &str, step: u32| ha[&(seed.to_string(), step)].clone();
    // Different seeds: different weights from the start.
    assert_ne!(h("1", 0), h("2", 0));
    assert_ne!(h("1", 24), h("2", 24));
    // `seed = 1` is init_seed = data_seed = 1.
    for step in [0, 1, 8, 24] {
        assert_eq!(h("1", step), h("i1-d1", step));
    }
    // Data order alone: same start, different end.
    assert_eq!(h("i1-d2", 0), h("1", 0));
    assert_ne!(h("i1-d2", 24), h("1", 24));
    // Initialisation alone: different start.
    assert_ne!(h("i2-d1", 0), h("1", 0));
    assert_ne!(h("i2-d1", 24), h("1", 24));
}

/// Pids of live (not zombie) processes whose parent is `parent`.
fn children(parent: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // "pid (comm) state ppid …": fields after the last ')'.
            let rest: Vec<&str> = stat
                .rsplit_once(')')
                .map(|r| r.1.split_whitespace().collect())
                .unwrap_or_default();
            rest.len() > 1 && rest[0] != "Z" && rest[1] == parent.to_string()
        })
        .collect()
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .map(|r| r.1.trim_start().starts_with('Z'))
                == Some(false)
        })
        .unwrap_or(false)
}

/// kill -9 of a run leaves no training worker behind: each notices it lost
/// its parent and stops; the next run trains to the end.
#[test]
fn training_workers_stop_when_their_run_is_killed() {
    let p = Project::micro();
    p.write_config(&suite_config("[1, 2]", "").replace("steps = 24", "steps = 100000"));
    p.ok(&["run", "traindata"]);
    let mut run = p.spawn(&["run", "train"]);
    let t0 = std::time::Instant::now();
    let workers = loop {
        let w = children(run.id());
        if !w.is_empty() {
            break w;
        }
        assert!(t0.elapsed().as_secs() < 60, "no training worker started");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    std::thread::sleep(std::time::Duration::from_millis(500));
    run.kill().unwrap();
    run.wait().unwrap();
    let t1 = std::time::Instant::now();
    while workers.iter().any(|&w| alive(w)) {
        assert!(
            t1.elapsed().as_secs() < 20,
            "workers {workers:?} outlived their run"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    p.write_config(&suite_config("[1, 2]", ""));
    p.ok(&["run", "train"]);
    assert_eq!(hashes(&p).len(), 2 * 4);
}

#[test]
fn loss_decreases_on_the_shipped_corpus() {
    let p = Project::micro();
    let cfg = suite_config("[7]", "learning_rate = 3e-3")
        .replace("steps = 24\n", "steps = 120\n")
        .replace("checkpoints = [0, 1, 8, 24]", "checkpoints = [120]");
    p.write_config(&cfg);
    p.ok(&["run", "train"]);
    let f = p.store().join("train/current/t16-seed7.loss.parquet");
    let b = seedconv::table::read(&f).unwrap();
    let loss = b
        .column_by_name("loss")
        .unwrap()
        .as_any()
        .downcast_ref::<Float32Array>()
        .unwrap();
    let first = loss.value(0) as f64;
    let n = loss.len();
    let last: f64 = (n - 10..n).map(|i| loss.value(i) as f64).sum::<f64>() / 10.0;
    // Untrained, the loss is about ln(vocab); a working trainer gets well below.
    let ln_v = 300f64.ln();
    assert!(
        (first - ln_v).abs() < 0.3,
        "initial loss {first} vs ln V {ln_v}"
    );
    assert!(last < first - 1.0, "loss went from {first:.3} to {last:.3}");
}

#[test]
fn export_check_failure_names_the_checkpoint() {
    let p = Project::micro();
    p.write_config(&suite_config("[1]", "check_tolerance = 1e-12"));
    let r = p.run(&["run", "train"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("t16-seed1 step 0")
            && r.stderr.contains("differ from the training forward"),
        "{}",
        r.stderr
    );
    assert!(
        p.find(|n| n == "model.onnx").is_empty(),
        "nothing of the failed run is kept"
    );
}

#[test]
fn suite_layout_matches_a_path_template() {
    let p = Project::micro();
    p.write_config(&suite_config("[1, 2]", ""));
    p.ok(&["run"]);
    for seed in [1, 2] {
        for step in [0, 1, 8, 24] {
            let path = p.store().join(format!(
                "train/current/t16-seed{seed}/step{step}/model.onnx"
            ));
            assert!(path.is_file(), "{}", path.display());
        }
    }
    let m = p.manifest_of("train", "t16-seed1.loss.parquet");
    let d = m["extra"]["max_abs_dlogit"].as_f64().unwrap();
    assert!(d < 1e-4, "max |Δ logit| {d}");
}

// ---- the exported graph against an independent float64 forward pass ----

fn rng_weights(shape: &Shape, seed: u64) -> Weights {
    // A plain LCG: every parameter (biases and LayerNorm included) random.
    let mut s = seed;
    let mut next = move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 11) as f64 / (1u64 << 53) as f64) as f32 - 0.5
    };
    shape
        .params()
        .into_iter()
        .map(|(name, dims, _)| {
            let n: usize = dims.iter().product();
            let scale = if name.ends_with(".w") && dims.len() == 1 {
                0.5
            } else {
                0.4
            };
            let offset = if name.ends_with(".w") && dims.len() == 1 {
                1.0
            } else {
                0.0
            };
            (
                name,
                (dims, (0..n).map(|_| offset + scale * next()).collect()),
            )
        })
        .collect()
}

fn get<'a>(w: &'a Weights, name: &str) -> &'a [f32] {
    &w[name].1
}

fn layer_norm(x: &[f64], g: &[f32], b: &[f32]) -> Vec<f64> {
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    x.iter()
        .enumerate()
        .map(|(i, v)| (v - mean) / (var + 1e-5).sqrt() * g[i] as f64 + b[i] as f64)
        .collect()
}

/// y = x · W + b with W stored [in, out].
fn linear(x: &[f64], w: &[f32], b: Option<&[f32]>, out: usize) -> Vec<f64> {
    (0..out)
        .map(|j| {
            x.iter()
                .enumerate()
                .map(|(i, v)| v * w[i * out + j] as f64)
                .sum::<f64>()
                + b.map_or(0.0, |b| b[j] as f64)
        })
        .collect()
}

/// Naive float64 forward of one sequence: logits [t][vocab_padded];
/// `bidirectional`: every position attends to every position (masked LM).
fn reference(shape: &Shape, w: &Weights, ids: &[usize], bidirectional: bool) -> Vec<Vec<f64>> {
    let (d, h) = (shape.d_model, shape.heads);
    let hd = d / h;
    let mut x: Vec<Vec<f64>> = ids
        .iter()
        .enumerate()
        .map(|(p, &id)| {
            (0..d)
                .map(|k| get(w, "wte")[id * d + k] as f64 + get(w, "wpe")[p * d + k] as f64)
                .collect()
        })
        .collect();
    for l in 0..shape.layers {
        let n = |k: &str| format!("h.{l:02}.{k}");
        let a: Vec<Vec<f64>> = x
            .iter()
            .map(|r| layer_norm(r, get(w, &n("ln1.w")), get(w, &n("ln1.b"))))
            .collect();
        let qkv: Vec<Vec<f64>> = a
            .iter()
            .map(|r| {
                linear(
                    r,
                    get(w, &n("attn.qkv.w")),
                    Some(get(w, &n("attn.qkv.b"))),
                    3 * d,
                )
            })
            .collect();
        let mut y = vec![vec![0.0; d]; ids.len()];
        for head in 0..h {
            for i in 0..ids.len() {
                let q = &qkv[i][head * hd..(head + 1) * hd];
                let visible = if bidirectional { ids.len() } else { i + 1 };
                let scores: Vec<f64> = (0..visible)
                    .map(|j| {
                        q.iter()
                            .zip(&qkv[j][d + head * hd..d + (head + 1) * hd])
                            .map(|(a, b)| a * b)
                            .sum::<f64>()
                            / (hd as f64).sqrt()
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f64::MIN, f64::max);
                let z: f64 = scores.iter().map(|s| (s - m).exp()).sum();
                for (j, s) in scores.iter().enumerate() {
                    let p = (s - m).exp() / z;
                    for k in 0..hd {
                        y[i][head * hd + k] += p * qkv[j][2 * d + head * hd + k];
                    }
                }
            }
        }
        for i in 0..ids.len() {
            let o = linear(
                &y[i],
                get(w, &n("attn.out.w")),
                Some(get(w, &n("attn.out.b"))),
                d,
            );
            x[i].iter_mut().zip(o).for_each(|(a, b)| *a += b);
            let a = layer_norm(&x[i], get(w, &n("ln2.w")), get(w, &n("ln2.b")));
            let f: Vec<f64> = linear(
                &a,
                get(w, &n("mlp.fc.w")),
                Some(get(w, &n("mlp.fc.b"))),
                4 * d,
            )
            .into_iter()
            .map(|v| 0.5 * v * (1.0 + libm::erf(v / std::f64::consts::SQRT_2)))
            .collect();
            let o = linear(
                &f,
                get(w, &n("mlp.proj.w")),
                Some(get(w, &n("mlp.proj.b"))),
                d,
            );
            x[i].iter_mut().zip(o).for_each(|(a, b)| *a += b);
        }
    }
    x.iter()
        .map(|r| {
            linear(
                &layer_norm(r, get(w, "ln_f.w"), get(w, "ln_f.b")),
                get(w, "unembed.w"),
                None,
                shape.vocab_padded,
            )
        })
        .collect()
}

#[test]
fn exported_onnx_matches_a_float64_reference_forward_with_vocab_padding() {
    let shape = Shape {
        vocab: 50,
        vocab_padded: 64, // logits wider than the vocabulary, like Pythia's
        layers: 2,
        d_model: 24,
        heads: 3,
        context: 20,
    };
    let w = rng_weights(&shape, 11);
    let dir = tempfile::TempDir::new().unwrap();
    let path = dir.path().join("model.onnx");
    std::fs::write(&path, seedconv::lm::onnx::export::to_bytes(&shape, &w)).unwrap();
    let mut m = seedconv::lm::onnx::runtime::OrtModel::from_file(&path, 1).unwrap();
    assert_eq!(m.input_names(), ["input_ids", "attention_mask"]);
    // Random ids, two batch shapes (dynamic batch and sequence).
    let mut s = 5u64;
    for (b, t) in [(3usize, 20usize), (1, 7)] {
        let ids: Vec<usize> = (0..b * t)
            .map(|_| {
                s = s.wrapping_mul(2862933555777941757).wrapping_add(3037000493);
                (s >> 33) as usize % shape.vocab
            })
            .collect();
        let ids64: Vec<i64> = ids.iter().map(|&x| x as i64).collect();
        let (got, width) = m.logits(&ids64, b, t).unwrap();
        assert_eq!(width, 64);
        let mut max = 0f64;
        for r in 0..b {
            let want = reference(&shape, &w, &ids[r * t..(r + 1) * t], false);
            for (i, row) in want.iter().enumerate() {
                for (j, v) in row.iter().enumerate() {
                    max = max.max((got[(r * t + i) * width + j] as f64 - v).abs());
                }
            }
        }
        assert!(max < 1e-4, "max |Δ logit| = {max:e} for batch {b}×{t}");
    }
}

#[test]
fn corpus_window_longer_than_the_model_context_is_a_config_error() {
    let p = Project::micro();
    p.write_config(&suite_config("[1, 2]", "").replace("window = 16", "window = 64"));
    let r = p.run(&["run"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("corpus.window") && r.stderr.contains("context of size t16 (16)"),
        "{}",
        r.stderr
    );
}

#[test]
fn exported_masked_lm_matches_a_float64_bidirectional_forward_with_padding() {
    let shape = Shape {
        vocab: 50,
        vocab_padded: 64,
        layers: 2,
        d_model: 24,
        heads: 3,
        context: 20,
    };
    let w = rng_weights(&shape, 12);
    let bytes =
        seedconv::lm::onnx::export::to_bytes_for(&shape, &w, seedconv::config::Objective::Mlm);
    let mut m = seedconv::lm::onnx::runtime::OrtModel::from_bytes(&bytes, "mlm", 1).unwrap();
    assert_eq!(
        m.input_names(),
        ["input_ids", "attention_mask", "token_type_ids"]
    );
    // Three sequences right-padded to 12: padding must be invisible to the
    // real positions although attention runs both ways.
    let lens = [12usize, 5, 9];
    let t = 12;
    let mut s = 9u64;
    let ids: Vec<usize> = (0..3 * t)
        .map(|_| {
            s = s.wrapping_mul(2862933555777941757).wrapping_add(3037000493);
            (s >> 33) as usize % shape.vocab
        })
        .collect();
    let ids64: Vec<i64> = ids.iter().map(|&x| x as i64).collect();
    let (got, width) = m.logits_padded(&ids64, &lens, t).unwrap();
    let mut max = 0f64;
    for (r, &len) in lens.iter().enumerate() {
        let want = reference(&shape, &w, &ids[r * t..r * t + len], true);
        for (i, row) in want.iter().enumerate() {
            for (j, v) in row.iter().enumerate() {
                max = max.max((got[(r * t + i) * width + j] as f64 - v).abs());
            }
        }
    }
    assert!(max < 1e-4, "max |Δ logit| = {max:e}");
    // And it is not the causal model: position 0 sees what follows it.
    let causal = reference(&shape, &w, &ids[..t], false);
    let diff = (got[0] as f64 - causal[0][0]).abs();
    assert!(diff > 1e-3, "{diff}");
}

#[test]
fn builtin_masked_lm_suite_trains_exports_and_scores() {
    let p = Project::micro();
    p.write_config(
        r#"[train_corpus]
files = ["text/a.txt", "text/b.txt"]

[tokenizer]
vocab_size = 300
extra_special_tokens = ["[CLS]", "[SEP]", "[MASK]"]

[corpus]
path = "text/eval.conllu"
mode = "mlm"
window = 16

[train]
objective = "mlm"
seeds = [1, 2]
steps = 60
batch_size = 8
learning_rate = 5e-3
log_every = 1
checkpoints = [0, 60]

[train.sizes.m16]
layers = 2
d_model = 16
heads = 2
context = 16

[dist]
mlm_scoring = "masked"
"#,
    );
    p.ok(&["run"]);
    let s = p.store();
    // Exported with the BERT signature; ONNX Runtime agrees with candle.
    let m = p.manifest_of("train", "m16-seed1.loss.parquet");
    assert!(m["extra"]["max_abs_dlogit"].as_f64().unwrap() < 1e-4);
    let model = s.join("train/current/m16-seed1/step60/model.onnx");
    let ort = seedconv::lm::onnx::runtime::OrtModel::from_file(&model, 1).unwrap();
    assert_eq!(
        ort.input_names(),
        ["input_ids", "attention_mask", "token_type_ids"]
    );
    // The masked-LM loss falls while training (first vs last logged steps).
    let loss = seedconv::table::read(&s.join("train/current/m16-seed1.loss.parquet")).unwrap();
    let l = loss
        .column_by_name("loss")
        .unwrap()
        .as_any()
        .downcast_ref::<arrow_array::Float32Array>()
        .unwrap();
    let first: f32 = (0..5).map(|i| l.value(i)).sum::<f32>() / 5.0;
    let last: f32 = (l.len() - 5..l.len()).map(|i| l.value(i)).sum::<f32>() / 5.0;
    assert!(last < first - 0.3, "loss {first} → {last}");
    // dist names the exported file it read (hash from the train manifest).
    common::assert_model_hash(
        &s.join("dist/current/m16-seed1-step60.dist.parquet"),
        &model,
    );
    // The suite went through distributions, KL, aggregates and the report.
    assert!(s.join("aggregate/current/conv.parquet").exists());
    assert!(s.join("report/current/report.html").exists());
}
