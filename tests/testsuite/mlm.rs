//! Masked-LM suites on the shipped BertForMaskedLM exports (torch.onnx;
//! inputs input_ids, attention_mask, token_type_ids), in both scoring modes,
//! against a reference computed here: one unpadded sequence per ONNX Runtime
//! call (the masked copy built here), float64 log-softmax and KL.

use crate::common;
use common::{col, fixtures, Project};

use arrow_array::{Float32Array, Float64Array, StringArray, UInt32Array};
use seedconv::lm::onnx::runtime::OrtModel;

const VOCAB: usize = 600;
const MASK_ID: i64 = 4;

pub(crate) fn config(scoring: &str, special: bool) -> String {
    let mlm = fixtures().join("hf_onnx_samples/mlm");
    format!(
        r#"[tokenizer]
path = "{tok}"
eos_token = "[SEP]"

[corpus]
path = "text/eval.conllu"
mode = "mlm"
window = 24
mlm_special_rows = {special}

[frequency]
files = ["text/a.txt"]

[suite]
kind = "mlm"
models = "{mlm}/bert-seed{{seed}}/step{{step}}/model.onnx"
sizes = ["tiny"]
seeds = [21, 22]
steps = [0]

[dist]
top_k = 8
batch_size = 3
mlm_scoring = "{scoring}"
"#,
        tok = mlm.join("tokenizer.json").display(),
        mlm = mlm.display(),
    )
}

/// Float64 log-softmax over the kept vocabulary of the row's distribution,
/// from one unpadded call on the row's own (masked) sequence.
fn reference(model: &mut OrtModel, seq: &[i64], read: usize, masked: bool) -> Vec<f64> {
    let mut ids = seq.to_vec();
    if masked {
        ids[read] = MASK_ID;
    }
    let (logits, w) = model.logits(&ids, 1, ids.len()).unwrap();
    let row: Vec<f64> = logits[read * w..][..VOCAB]
        .iter()
        .map(|&x| x as f64)
        .collect();
    let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let lse = m + row.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
    row.iter().map(|x| x - lse).collect()
}

fn check(scoring: &str, special: bool) {
    let masked = scoring == "masked";
    let p = Project::micro();
    p.write_config(&config(scoring, special));
    p.ok(&["run", "kl"]);
    let s = p.store();
    let tokens = seedconv::table::read(&s.join("corpus/current/tokens.parquet")).unwrap();
    let tok_ids: Vec<i64> = col::<UInt32Array>(&tokens, "token_id")
        .values()
        .iter()
        .map(|&x| x as i64)
        .collect();
    let rows = seedconv::table::read(&s.join("corpus/current/rows.parquet")).unwrap();
    let (row, start, end, target) = (
        col::<UInt32Array>(&rows, "row"),
        col::<UInt32Array>(&rows, "context_start"),
        col::<UInt32Array>(&rows, "context_end"),
        col::<UInt32Array>(&rows, "target_id"),
    );
    // Every sequence is [CLS] … [SEP] of at most the window, and every row's
    // target is a document token inside it — or, with the authors' special
    // rows, also its [CLS] (but the first) or [SEP] (but the last).
    let mut specials = [0, 0];
    let mut seqs = std::collections::BTreeSet::new();
    for i in 0..rows.num_rows() {
        let (a, e) = (start.value(i) as usize, end.value(i) as usize);
        assert!(e - a <= 24);
        assert_eq!((tok_ids[a], tok_ids[e - 1]), (2, 3));
        seqs.insert(a);
        let t = row.value(i) as usize + 1;
        if special {
            assert!(a <= t && t < e);
        } else {
            assert!(a < t && t < e - 1);
        }
        assert_eq!(tok_ids[t], target.value(i) as i64);
        if t == a {
            specials[0] += 1;
        } else if t == e - 1 {
            specials[1] += 1;
        }
    }
    let n = seqs.len();
    assert!(n > 2, "{n} sequences");
    let want = if special { [n - 1, n - 1] } else { [0, 0] };
    assert_eq!(specials, want, "[CLS] and [SEP] target rows");
    let models: Vec<OrtModel> = ["21", "22"]
        .iter()
        .map(|seed| {
            OrtModel::from_file(
                &fixtures().join(format!(
                    "hf_onnx_samples/mlm/bert-seed{seed}/step0/model.onnx"
                )),
                1,
            )
            .unwrap()
        })
        .collect();
    let mut models = models;
    let refs: Vec<Vec<Vec<f64>>> = models
        .iter_mut()
        .map(|m| {
            (0..rows.num_rows())
                .map(|i| {
                    let (a, e) = (start.value(i) as usize, end.value(i) as usize);
                    reference(m, &tok_ids[a..e], row.value(i) as usize + 1 - a, masked)
                })
                .collect()
        })
        .collect();
    for (k, seed) in ["21", "22"].iter().enumerate() {
        let d = seedconv::table::read(
            &s.join(format!("dist/current/tiny-seed{seed}-step0.dist.parquet")),
        )
        .unwrap();
        assert_eq!(d.num_rows(), rows.num_rows());
        let (lp, ent) = (
            col::<Float32Array>(&d, "target_logprob"),
            col::<Float32Array>(&d, "entropy"),
        );
        for i in 0..d.num_rows() {
            let r = &refs[k][i];
            let want = r[target.value(i) as usize];
            assert!(
                (lp.value(i) as f64 - want).abs() < 1e-4,
                "row {i}: {} vs {want}",
                lp.value(i)
            );
            let h: f64 = -r.iter().map(|l| l.exp() * l).sum::<f64>();
            assert!((ent.value(i) as f64 - h).abs() < 1e-4);
        }
    }
    let kl = seedconv::table::read(&s.join("kl/current/tiny-step0.kl.parquet")).unwrap();
    let (sa, krow, kv) = (
        col::<StringArray>(&kl, "seed_a"),
        col::<UInt32Array>(&kl, "row"),
        col::<Float64Array>(&kl, "kl"),
    );
    let index: std::collections::HashMap<u32, usize> =
        (0..rows.num_rows()).map(|i| (row.value(i), i)).collect();
    for j in 0..kl.num_rows() {
        let i = index[&krow.value(j)];
        let (a, b) = if sa.value(j) == "21" { (0, 1) } else { (1, 0) };
        let want: f64 = refs[a][i]
            .iter()
            .zip(&refs[b][i])
            .map(|(x, y)| x.exp() * (x - y))
            .sum();
        assert!(
            (kv.value(j) - want).abs() <= 1e-4 * want.max(1e-2),
            "kl row {}: {} vs {want}",
            krow.value(j),
            kv.value(j)
        );
    }
    // The analysis and the report run on masked-LM suites as on causal ones.
    p.ok(&["run"]);
    let conv = seedconv::table::read(&s.join("aggregate/current/conv.parquet")).unwrap();
    assert_eq!(conv.num_rows(), 1);
    assert!(s.join("report/current/report.html").exists());
}

/// The statistics graph (the CUDA path) on masked-LM exports, both
/// scorings (masked: one copy per row, read at the mask): the host pass's
/// tables within the stated tolerances.
#[test]
fn statistics_in_the_graph_match_the_host_pass_on_masked_lms() {
    for scoring in ["unmasked", "masked"] {
        let p = Project::micro();
        let cfg = config(scoring, false);
        p.write_config(&cfg);
        p.ok(&["run", "dist"]);
        let names = [
            "tiny-seed21-step0.dist.parquet",
            "tiny-seed22-step0.dist.parquet",
        ];
        let read =
            |n: &str| seedconv::table::read(&p.store().join("dist/current").join(n)).unwrap();
        let host: Vec<_> = names.iter().map(|n| read(n)).collect();
        p.write_config(&format!("{cfg}statistics = \"graph\"\n"));
        p.ok(&["run", "--force", "dist", "dist"]);
        for (n, h) in names.iter().zip(&host) {
            assert_eq!(p.manifest_of("dist", n)["extra"]["statistics"], "graph");
            common::assert_dist_tables_close(&read(n), h, &format!("{scoring} {n}"));
        }
    }
}

#[test]
fn unmasked_scoring_matches_a_float64_reference() {
    check("unmasked", false);
}

#[test]
fn masked_scoring_matches_a_float64_reference() {
    check("masked", false);
}

/// `corpus.mlm_special_rows`: the [CLS] / [SEP] rows the authors keep, read
/// at the special token's own position.
#[test]
fn the_authors_special_token_rows_match_a_float64_reference() {
    check("unmasked", true);
}

#[test]
fn the_scoring_mode_is_required_and_part_of_the_key() {
    let p = Project::micro();
    let cfg = config("unmasked", false);
    p.write_config(&cfg.replace("mlm_scoring = \"unmasked\"\n", ""));
    let r = p.run(&["run"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("dist.mlm_scoring"), "{}", r.stderr);
    p.write_config(&cfg);
    p.ok(&["run", "dist"]);
    p.write_config(&config("masked", false));
    let r = p.ok(&["run", "dist"]);
    // Only the distributions rerun; the corpus and tokenizer are reused.
    let ids = r.computed_ids();
    assert_eq!(
        ids,
        ["dist[tiny-seed21-step0]", "dist[tiny-seed22-step0]"],
        "{ids:?}"
    );
}

#[test]
fn missing_masked_lm_special_tokens_are_named_where_the_user_can_fix_them() {
    // A given tokenizer without [CLS]: the error names that file.
    let p = Project::micro();
    let causal_tok = common::causal().join("tokenizer.json");
    p.write_config(
        &config("masked", false)
            .replace(
                &fixtures()
                    .join("hf_onnx_samples/mlm/tokenizer.json")
                    .display()
                    .to_string(),
                &causal_tok.display().to_string(),
            )
            // The causal tokenizer's own separator, so the [CLS] check is reached.
            .replace("eos_token = \"[SEP]\"", "eos_token = \"<|endoftext|>\""),
    );
    let r = p.run(&["run"]);
    assert_eq!(r.code, 1);
    let line = r
        .stderr
        .lines()
        .find(|l| l.starts_with("error: tokenizer"))
        .unwrap();
    assert!(
        line.contains(&causal_tok.display().to_string()) && line.contains("tokenizer.cls_token"),
        "{line}"
    );
    // A trained tokenizer without the specials: a config error.
    let p = Project::micro();
    p.write_config(
        "[train_corpus]\nfiles = [\"text/a.txt\"]\n\n[tokenizer]\nvocab_size = 300\n\n[corpus]\npath = \"text/eval.conllu\"\nmode = \"mlm\"\nwindow = 16\n\n[train]\nobjective = \"mlm\"\nseeds = [1, 2]\nsteps = 2\n\n[train.sizes.m]\nlayers = 1\nd_model = 16\nheads = 2\ncontext = 16\n\n[dist]\nmlm_scoring = \"unmasked\"\n",
    );
    let r = p.run(&["run"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("tokenizer.extra_special_tokens") && r.stderr.contains("[CLS]"),
        "{}",
        r.stderr
    );
}
