//! `blimp`: one instance per checkpoint. Scores every BLiMP minimal pair:
//! log P(sentence) = Σ_k log p(tok_k | tok_<k) with BOS prepended and EOS
//! appended (the EOS term included), normalised over every logit the model
//! emits (the paper) or over the kept vocabulary. Sentences are sorted by
//! length and batched with right padding, so the stage is bound by the
//! forward passes, not per-sentence overhead.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{ArrayRef, BooleanArray, Float64Array, RecordBatch, StringArray, UInt32Array};
use rayon::prelude::*;
use serde::Serialize;
use serde_json::json;

use crate::analysis::divergence;
use crate::config::BlimpVocab;
use crate::engine::{Instance, Job, JobCtx};
use crate::error::StageError;
use crate::lm::eval::{self, RunSettings};
use crate::lm::onnx::runtime::OrtModel;
use crate::stages::{tokenizer, PlanCtx, Stage};
use crate::suite::Checkpoint;
use crate::table;

pub const NAME: &str = "blimp";
pub const VERSION: u32 = 1;
pub const FILE: &str = "blimp.parquet";

/// The `blimp` stage: one instance per checkpoint, when `[blimp]` is set.
pub struct Blimp;

impl Stage for Blimp {
    const NAME: &'static str = NAME;
    const VERSION: u32 = VERSION;
    fn instances(&self, cx: &PlanCtx) -> Vec<Instance> {
        let (Some(b), Some(suite)) = (&cx.config().blimp, cx.suite) else {
            return vec![];
        };
        let files = b.files();
        let set = RunSettings {
            batch_size: b.batch_size,
            ..eval::settings(cx.loaded)
        };
        suite
            .checkpoints
            .iter()
            .map(|c| {
                let (mut deps, mut inputs) = c.reach();
                deps.push((tokenizer::NAME, String::new()));
                inputs.extend(
                    files
                        .iter()
                        .map(|f| (format!("paradigm[{}]", table::source_name(f)), f.clone())),
                );
                let job = BlimpJob {
                    ckpt: c.clone(),
                    files: files.clone(),
                    pairs: b.pairs,
                    vocab: b.vocab,
                    kept: suite.vocab,
                    eos_token: cx.config().tokenizer.eos_token.clone(),
                    set: set.clone(),
                };
                let gpu = job.set.uses_gpu();
                self.instance(c.label(), job)
                    .inputs(inputs)
                    .deps(deps)
                    .on_gpu(gpu)
            })
            .collect()
    }
}

#[derive(Serialize)]
struct BlimpJob {
    #[serde(flatten)]
    ckpt: Checkpoint,
    /// unkeyed: their content is keyed as the inputs `paradigm[NAME]`.
    #[serde(skip)]
    files: Vec<PathBuf>,
    pairs: usize,
    vocab: BlimpVocab,
    /// The suite's kept vocabulary (used when `vocab` is `kept`).
    kept: Option<usize>,
    eos_token: String,
    /// Its batch size is keyed, as wherever a model runs.
    #[serde(flatten)]
    set: RunSettings,
}

/// One minimal pair as read from a paradigm file.
#[derive(Debug, Clone, PartialEq)]
pub struct Pair {
    pub paradigm: String,
    /// `syntax/semantics` (one paradigm's spelling) is read as `syntax_semantics`.
    pub field: String,
    pub term: String,
    pub pair_id: u32,
    pub good: String,
    pub bad: String,
}

/// The first `n` pairs of a paradigm file; errors name the file and line.
pub fn read_pairs(path: &Path, n: usize) -> Result<Vec<Pair>, StageError> {
    let text = std::fs::read_to_string(path).map_err(|e| StageError::io(path, e))?;
    let mut out = Vec::with_capacity(n);
    for (i, line) in text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .take(n)
        .enumerate()
    {
        let at = |m: String| StageError::input(path, format!("line {}: {m}", i + 1));
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| at(format!("not JSON: {e}")))?;
        let field = |k: &str| -> Result<String, StageError> {
            v.get(k)
                .and_then(|x| x.as_str())
                .map(String::from)
                .ok_or_else(|| at(format!("missing string field {k}")))
        };
        let pair_id = field("pairID")?;
        out.push(Pair {
            paradigm: field("UID")?,
            field: field("field")?.replace('/', "_"),
            term: field("linguistics_term")?,
            pair_id: pair_id
                .parse()
                .map_err(|_| at(format!("pairID {pair_id:?} is not a number")))?,
            good: field("sentence_good")?,
            bad: field("sentence_bad")?,
        });
    }
    if out.len() < n {
        return Err(StageError::input(
            path,
            format!("has {} pairs, fewer than blimp.pairs = {n}", out.len()),
        ));
    }
    Ok(out)
}

/// `BOS ids EOS` for each sentence.
pub fn encode(
    tok: &tokenizers::Tokenizer,
    eos: u32,
    sentences: &[&str],
) -> Result<Vec<Vec<u32>>, StageError> {
    sentences
        .par_iter()
        .map(|s| {
            let enc = tok
                .encode(*s, false)
                .map_err(|e| StageError::Other(format!("tokenizing {s:?}: {e}")))?;
            let mut ids = Vec::with_capacity(enc.len() + 2);
            ids.push(eos);
            ids.extend_from_slice(enc.get_ids());
            ids.push(eos);
            Ok(ids)
        })
        .collect()
}

/// log P(sentence) for every sequence: batches of similar length, right
/// padded; `width` limits the softmax to the first `width` logits (None: all).
pub fn score(
    model: &mut OrtModel,
    seqs: &[Vec<u32>],
    batch_size: usize,
    width: Option<usize>,
    tick: &dyn Fn(usize) -> Result<(), StageError>,
) -> Result<Vec<f64>, StageError> {
    let mut order: Vec<usize> = (0..seqs.len()).collect();
    order.sort_by_key(|&i| (seqs[i].len(), i));
    let mut out = vec![0.0; seqs.len()];
    for (k, chunk) in order.chunks(batch_size).enumerate() {
        tick(k * batch_size)?;
        let t = chunk.iter().map(|&i| seqs[i].len()).max().unwrap_or(1);
        let mut ids = vec![0i64; chunk.len() * t];
        let lens: Vec<usize> = chunk.iter().map(|&i| seqs[i].len()).collect();
        for (j, &i) in chunk.iter().enumerate() {
            for (k, &id) in seqs[i].iter().enumerate() {
                ids[j * t + k] = id as i64;
            }
        }
        let (logits, w) = model.logits_padded(&ids, &lens, t)?;
        let n = width.unwrap_or(w);
        if n > w {
            return Err(StageError::Other(format!(
                "{}: emits {w} logits, fewer than the kept vocabulary {n}",
                model.name()
            )));
        }
        let scores: Vec<f64> = chunk
            .par_iter()
            .enumerate()
            .map(|(j, &i)| {
                let s = &seqs[i];
                (1..s.len())
                    .map(|k| {
                        let row = &logits[(j * t + k - 1) * w..][..n];
                        divergence::log_prob_of(row, s[k] as usize)
                    })
                    .sum()
            })
            .collect();
        for (&i, sc) in chunk.iter().zip(scores) {
            out[i] = sc;
        }
    }
    Ok(out)
}

/// P(good) of the 2-way softmax over (log P(good), log P(bad)).
pub fn q_good(lp_good: f64, lp_bad: f64) -> f64 {
    1.0 / (1.0 + (lp_bad - lp_good).exp())
}

impl Job for BlimpJob {
    fn run(&self, ctx: &JobCtx) -> Result<serde_json::Value, StageError> {
        let mut pairs = Vec::new();
        for f in &self.files {
            pairs.extend(read_pairs(f, self.pairs)?);
        }
        let (tok, tok_path) = tokenizer::load_upstream(ctx)?;
        let eos = tokenizer::eos_id(&tok, &self.eos_token, &tok_path)?;
        let sentences: Vec<&str> = pairs
            .iter()
            .flat_map(|p| [p.good.as_str(), p.bad.as_str()])
            .collect();
        let seqs = encode(&tok, eos, &sentences)?;
        let width = match self.vocab {
            BlimpVocab::Full => None,
            BlimpVocab::Kept => Some(tokenizer::kept_vocab(self.kept, ctx)?),
        };
        let path = self.ckpt.model_path(ctx)?;
        let (mut model, cuda) = self.set.open(&path, ctx.threads, ctx.gpu)?;
        let t0 = std::time::Instant::now();
        let total = seqs.len() as u64;
        let lp = score(&mut model, &seqs, self.set.batch_size, width, &|done| {
            ctx.progress(done as u64, total, "sentences");
            ctx.check_cancel()
        })?;
        let secs = t0.elapsed().as_secs_f64();

        let n = pairs.len();
        let good: Vec<f64> = (0..n).map(|i| lp[2 * i]).collect();
        let bad: Vec<f64> = (0..n).map(|i| lp[2 * i + 1]).collect();
        let correct: Vec<bool> = good.iter().zip(&bad).map(|(g, b)| g > b).collect();
        let accuracy = correct.iter().filter(|&&c| c).count() as f64 / n as f64;
        let c = &self.ckpt;
        let strs = |f: &dyn Fn(&Pair) -> &str| -> ArrayRef {
            Arc::new(StringArray::from_iter_values(pairs.iter().map(f)))
        };
        let batch = RecordBatch::try_from_iter(vec![
            (
                "size",
                Arc::new(StringArray::from(vec![c.size.clone(); n])) as ArrayRef,
            ),
            ("seed", Arc::new(StringArray::from(vec![c.seed.clone(); n]))),
            ("step", Arc::new(UInt32Array::from(vec![c.step as u32; n]))),
            ("paradigm", strs(&|p| &p.paradigm)),
            ("field", strs(&|p| &p.field)),
            ("term", strs(&|p| &p.term)),
            (
                "pair_id",
                Arc::new(UInt32Array::from_iter_values(
                    pairs.iter().map(|p| p.pair_id),
                )),
            ),
            ("logp_good", Arc::new(Float64Array::from(good.clone()))),
            ("logp_bad", Arc::new(Float64Array::from(bad.clone()))),
            (
                "q_good",
                Arc::new(Float64Array::from_iter_values(
                    good.iter().zip(&bad).map(|(g, b)| q_good(*g, *b)),
                )),
            ),
            ("correct", Arc::new(BooleanArray::from(correct))),
        ])?;
        table::write(
            &ctx.out.join(FILE),
            &batch,
            &[
                ("stage", NAME.into()),
                ("vocab", format!("{:?}", self.vocab).to_lowercase()),
            ],
        )?;
        Ok(json!({
            "pairs": n,
            "accuracy": accuracy,
            "cuda": cuda,
            "onnxruntime": crate::lm::ortlib::info(),
            "gpu": crate::lm::ortlib::gpu_name(cuda, ctx.gpu),
            "sentences_per_second": (2 * n) as f64 / secs.max(1e-9),
            "seconds_scoring": secs,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pairs_and_normalises_the_field_spelling() {
        let dir = tempfile::TempDir::new().unwrap();
        let f = dir.path().join("p.jsonl");
        let line = |id: u32, field: &str| {
            format!(
                "{{\"sentence_good\": \"A b.\", \"sentence_bad\": \"B a.\", \"field\": \"{field}\", \"linguistics_term\": \"binding\", \"UID\": \"p\", \"pairID\": \"{id}\"}}\n"
            )
        };
        std::fs::write(&f, line(0, "syntax/semantics") + &line(1, "syntax")).unwrap();
        let p = read_pairs(&f, 2).unwrap();
        assert_eq!(p[0].field, "syntax_semantics");
        assert_eq!(p[1].pair_id, 1);
        let e = read_pairs(&f, 3).unwrap_err().to_string();
        assert!(
            e.contains("p.jsonl") && e.contains("fewer than blimp.pairs = 3"),
            "{e}"
        );
        std::fs::write(&f, "{\"sentence_good\": 1}\n").unwrap();
        let e = read_pairs(&f, 1).unwrap_err().to_string();
        assert!(
            e.contains("line 1") && e.contains("missing string field"),
            "{e}"
        );
    }

    #[test]
    fn q_is_the_two_way_softmax() {
        assert!((q_good(-10.0, -10.0) - 0.5).abs() < 1e-15);
        let (g, b) = (-12.5f64, -14.0f64);
        let want = g.exp() / (g.exp() + b.exp());
        assert!((q_good(g, b) - want).abs() < 1e-15);
    }
}
