//! The in-context-learning score on synthetic models whose answer is known:
//! token embeddings and every block's output projections are zero, so the
//! logits at window position p are LayerNorm(wpe[p]) · U whatever the
//! tokens. The loss with L tokens of context is then a function of L alone,
//! computed here in float64 from the weights.

use crate::common;
use common::{col, Project};

use arrow_array::{Array, Float64Array, StringArray, UInt32Array};
use seedconv::lm::model::{Shape, Weights, LN_EPS};
use std::collections::BTreeMap;

const SHAPE: Shape = Shape {
    vocab: 300,
    vocab_padded: 320,
    layers: 1,
    d_model: 16,
    heads: 2,
    context: 32,
};

fn synthetic(seed: u64) -> Weights {
    let mut w = SHAPE.init(seed);
    for (name, (_, data)) in w.iter_mut() {
        if name == "wte" || name.ends_with("attn.out.w") || name.ends_with("mlp.proj.w") {
            data.iter_mut().for_each(|x| *x = 0.0);
        }
    }
    w
}

/// The synthetic checkpoints as an external suite `models/syn-seed{s}/step0`.
fn write_suite(p: &Project, seeds: &[u64]) {
    for &s in seeds {
        let dir = p.path().join(format!("models/syn-seed{s}/step0"));
        std::fs::create_dir_all(&dir).unwrap();
        let bytes = seedconv::lm::onnx::export::to_bytes(&SHAPE, &synthetic(s));
        std::fs::write(dir.join("model.onnx"), bytes).unwrap();
    }
}

/// −log p(target) at window position `pos`, softmax over the first 300
/// logits (the kept vocabulary), float64.
fn loss_at(w: &Weights, pos: usize, target: usize) -> f64 {
    let d = SHAPE.d_model;
    let x: Vec<f64> = w["wpe"].1[pos * d..(pos + 1) * d]
        .iter()
        .map(|&v| v as f64)
        .collect();
    let mean = x.iter().sum::<f64>() / d as f64;
    let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / d as f64;
    let (g, b) = (&w["ln_f.w"].1, &w["ln_f.b"].1);
    let h: Vec<f64> = (0..d)
        .map(|i| (x[i] - mean) / (var + LN_EPS).sqrt() * g[i] as f64 + b[i] as f64)
        .collect();
    let u = &w["unembed.w"].1;
    let logits: Vec<f64> = (0..SHAPE.vocab)
        .map(|v| {
            (0..d)
                .map(|i| h[i] * u[i * SHAPE.vocab_padded + v] as f64)
                .sum()
        })
        .collect();
    let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let lse = m + logits.iter().map(|l| (l - m).exp()).sum::<f64>().ln();
    lse - logits[target]
}

/// Each document with at least `min` own tokens → its token d_pos (1-based),
/// from a corpus `tokens.parquet`.
fn eligible_docs(tokens: &std::path::Path, min: usize, pos: usize) -> BTreeMap<u32, u32> {
    let tok = seedconv::table::read(tokens).unwrap();
    let (doc, id, start) = (
        col::<UInt32Array>(&tok, "doc"),
        col::<UInt32Array>(&tok, "token_id"),
        col::<UInt32Array>(&tok, "char_start"),
    );
    let mut docs: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for i in 0..tok.num_rows() {
        if !start.is_null(i) {
            docs.entry(doc.value(i)).or_default().push(id.value(i));
        }
    }
    docs.into_iter()
        .filter(|(_, t)| t.len() >= min)
        .map(|(d, t)| (d, t[pos - 1]))
        .collect()
}

#[test]
fn icl_score_matches_the_known_answer_of_a_synthetic_model() {
    let p = Project::micro();
    let seeds = [1u64, 2];
    write_suite(&p, &seeds);
    let (pos, long, short, min) = (20usize, 16usize, 3usize, 24usize);
    p.write_config(&format!(
        "{}\n[suite]\nmodels = \"models/syn-seed{{seed}}/step{{step}}/model.onnx\"\nsizes = [\"syn\"]\nseeds = [1, 2]\nsteps = [0]\nvocab = 300\n\n[icl]\nposition = {pos}\nlong_context = {long}\nshort_context = {short}\nmin_tokens = {min}\nbatch_size = 2\n",
        // Windows within the synthetic models' 32 positions.
        Project::micro_config().replace("window = 64", "window = 32")
    ));
    p.ok(&["run", "icl"]);

    // Documents long enough, and their token d_P, from the corpus table.
    let eligible = eligible_docs(&p.store().join("corpus/current/tokens.parquet"), min, pos);
    assert!(eligible.len() >= 2, "{eligible:?}");

    let mut all = Vec::new();
    for s in seeds {
        let w = synthetic(s);
        let mut scores = Vec::new();
        let b = seedconv::table::read(
            &p.store()
                .join(format!("icl/current/syn-seed{s}-step0.icl.parquet")),
        )
        .unwrap();
        assert_eq!(b.num_rows(), eligible.len());
        assert_eq!(col::<StringArray>(&b, "seed").value(0), s.to_string());
        for i in 0..b.num_rows() {
            let target = eligible[&col::<UInt32Array>(&b, "doc").value(i)] as usize;
            let (l, sh) = (
                loss_at(&w, long - 1, target),
                loss_at(&w, short - 1, target),
            );
            let got = (
                col::<Float64Array>(&b, "loss_long").value(i),
                col::<Float64Array>(&b, "loss_short").value(i),
                col::<Float64Array>(&b, "icl").value(i),
            );
            assert!((got.0 - l).abs() < 1e-4, "{} vs {l}", got.0);
            assert!((got.1 - sh).abs() < 1e-4, "{} vs {sh}", got.1);
            assert!((got.2 - (l - sh)).abs() < 2e-4);
            scores.push(l - sh);
        }
        all.push(scores);
    }

    // The summary: mean ± SE per seed, and over seeds × documents.
    p.ok(&["run", "icl_summary"]);
    let mean_se = |v: &[f64]| {
        let n = v.len() as f64;
        let m = v.iter().sum::<f64>() / n;
        let sd = (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
        (m, sd / n.sqrt())
    };
    let by_seed =
        seedconv::table::read(&p.store().join("icl_summary/current/by_seed.parquet")).unwrap();
    for (k, s) in seeds.iter().enumerate() {
        let i = (0..by_seed.num_rows())
            .find(|&i| col::<StringArray>(&by_seed, "seed").value(i) == s.to_string())
            .unwrap();
        let (m, se) = mean_se(&all[k]);
        assert!((col::<Float64Array>(&by_seed, "mean_icl").value(i) - m).abs() < 2e-4);
        assert!((col::<Float64Array>(&by_seed, "se").value(i) - se).abs() < 2e-4);
        assert_eq!(
            col::<UInt32Array>(&by_seed, "n_docs").value(i) as usize,
            all[k].len()
        );
    }
    let pooled =
        seedconv::table::read(&p.store().join("icl_summary/current/pooled.parquet")).unwrap();
    let flat: Vec<f64> = all.concat();
    let (m, se) = mean_se(&flat);
    assert_eq!(pooled.num_rows(), 1);
    assert!((col::<Float64Array>(&pooled, "mean_icl").value(0) - m).abs() < 2e-4);
    assert!((col::<Float64Array>(&pooled, "se").value(0) - se).abs() < 2e-4);
    // Its interval over seeds and documents: leave one seed out (the other
    // seed's mean), leave one document out; jackknife variances add.
    let jv = |r: &[f64]| {
        let n = r.len() as f64;
        let m = r.iter().sum::<f64>() / n;
        (n - 1.0) / n * r.iter().map(|x| (x - m).powi(2)).sum::<f64>()
    };
    let nd = all[0].len();
    let seed_reps: Vec<f64> = (0..2).map(|k| mean_se(&all[1 - k]).0).collect();
    let doc_reps: Vec<f64> = (0..nd)
        .map(|d| {
            let rest: Vec<f64> = all
                .iter()
                .flat_map(|v| v.iter().enumerate().filter(|(j, _)| *j != d).map(|x| *x.1))
                .collect();
            mean_se(&rest).0
        })
        .collect();
    let (vs, vd) = (jv(&seed_reps), jv(&doc_reps));
    let got = |c: &str| col::<Float64Array>(&pooled, c).value(0);
    assert!(
        (got("se_seeds") - vs.sqrt()).abs() < 2e-4,
        "{} vs {}",
        got("se_seeds"),
        vs.sqrt()
    );
    assert!((got("se_docs") - vd.sqrt()).abs() < 2e-4);
    assert!(got("ci_low") < m && m < got("ci_high"));
    // The report plots it with the paper's sign (short − long).
    p.ok(&["run"]);
    let html = std::fs::read_to_string(p.store().join("report/current/report.html")).unwrap();
    assert!(html.contains("<h2>In-context learning</h2>"));
    let csv = std::fs::read_to_string(p.store().join("report/current/figures/icl.csv")).unwrap();
    let row: Vec<&str> = csv.lines().nth(1).unwrap().split(',').collect();
    assert!((row[2].parse::<f64>().unwrap() + m).abs() < 2e-4, "{csv}");
}

#[test]
fn icl_settings_are_checked() {
    let p = Project::micro();
    p.write_config(&format!(
        "{}\n[icl]\nposition = 20\nlong_context = 30\nshort_context = 5\nmin_tokens = 20\n",
        Project::micro_config()
    ));
    let r = p.run(&["run"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("icl") && r.stderr.contains("long_context < position"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_window_longer_than_an_external_models_context_is_a_one_line_error() {
    let p = Project::micro();
    write_suite(&p, &[1, 2]);
    // The micro corpus has 64-token windows; the models know 32 positions.
    p.write_config(&format!(
        "{}\n[suite]\nmodels = \"models/syn-seed{{seed}}/step{{step}}/model.onnx\"\nsizes = [\"syn\"]\nseeds = [1, 2]\nsteps = [0]\nvocab = 300\n",
        Project::micro_config()
    ));
    let r = p.run(&["run", "dist"]);
    assert_eq!(r.code, 1);
    let line = r
        .stderr
        .lines()
        .find(|l| l.starts_with("error: dist[syn-seed1-step0]"))
        .unwrap_or_else(|| panic!("{}", r.stderr));
    assert!(
        line.contains("syn-seed1/step0/model.onnx")
            && line.contains(
                "sequences of 64 tokens (is the window longer than the model's context?)"
            ),
        "{line}"
    );
}

#[test]
fn icl_reads_its_own_corpus_when_given() {
    let p = Project::micro();
    write_suite(&p, &[1, 2]);
    std::fs::write(
        p.path().join("text/icl.conllu"),
        common::conllu_docs(&common::data("ud_english_ewt/en_ewt-ud-train.conllu"), 6),
    )
    .unwrap();
    let (pos, long, short, min) = (20usize, 16usize, 3usize, 24usize);
    p.write_config(&format!(
        "{}\n[suite]\nmodels = \"models/syn-seed{{seed}}/step{{step}}/model.onnx\"\nsizes = [\"syn\"]\nseeds = [1, 2]\nsteps = [0]\nvocab = 300\n\n[icl]\ncorpus = \"text/icl.conllu\"\nposition = {pos}\nlong_context = {long}\nshort_context = {short}\nmin_tokens = {min}\nbatch_size = 2\n",
        Project::micro_config().replace("window = 64", "window = 32")
    ));
    p.ok(&["run", "corpus", "icl"]);
    // The ICL documents are the second corpus instance's, not the
    // evaluation corpus's.
    let docs_of = |f: &str| eligible_docs(&p.store().join(f), min, pos);
    let eligible = docs_of("corpus/current/icl.tokens.parquet");
    assert_ne!(eligible, docs_of("corpus/current/tokens.parquet"));
    let b =
        seedconv::table::read(&p.store().join("icl/current/syn-seed1-step0.icl.parquet")).unwrap();
    assert_eq!(b.num_rows(), eligible.len());
    let w = synthetic(1);
    for i in 0..b.num_rows() {
        let target = eligible[&col::<UInt32Array>(&b, "doc").value(i)] as usize;
        let want = loss_at(&w, long - 1, target) - loss_at(&w, short - 1, target);
        assert!((col::<Float64Array>(&b, "icl").value(i) - want).abs() < 2e-4);
    }
}
