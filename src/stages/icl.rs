//! `icl`: the in-context-learning score of one checkpoint (Olsson et al.'s,
//! as in the paper's code). For every evaluation document with at least
//! `min_tokens` tokens d_1 … d_n: the loss on d_P (P = `position`) given the
//! L = `long_context` tokens d_{P−L} … d_{P−1}, minus the loss given the
//! S = `short_context` tokens d_{P−S} … d_{P−1}. Each context is run alone
//! (positions from 0, no BOS); probabilities are renormalised over the kept
//! vocabulary as in `dist`. Negative scores: more context helps.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use arrow_array::{Array, ArrayRef, Float64Array, RecordBatch, StringArray, UInt32Array};
use serde::Serialize;
use serde_json::json;

use crate::analysis::divergence;
use crate::config::IclConfig;
use crate::engine::{Instance, Job, JobCtx};
use crate::error::StageError;
use crate::lm::eval::{self, RunSettings};
use crate::lm::onnx::runtime::OrtModel;
use crate::stages::{corpus, tokenizer, PlanCtx, Stage};
use crate::suite::Checkpoint;
use crate::table;

pub const NAME: &str = "icl";
pub const VERSION: u32 = 1;
pub const FILE: &str = "icl.parquet";

/// The `icl` stage: one instance per checkpoint, when `[icl]` is set.
pub struct Icl;

impl Stage for Icl {
    const NAME: &'static str = NAME;
    const VERSION: u32 = VERSION;
    fn instances(&self, cx: &PlanCtx) -> Vec<Instance> {
        let (Some(cfg), Some(suite)) = (&cx.config().icl, cx.suite) else {
            return vec![];
        };
        let set = RunSettings {
            batch_size: cfg.batch_size,
            ..eval::settings(cx.loaded)
        };
        suite
            .checkpoints
            .iter()
            .map(|c| {
                let (mut deps, inputs) = c.reach();
                deps.extend([
                    (corpus::NAME, corpus_label(cfg).to_string()),
                    (tokenizer::NAME, String::new()),
                ]);
                let job = IclJob {
                    ckpt: c.clone(),
                    // Its text is keyed by the corpus instance's outputs.
                    cfg: IclConfig {
                        corpus: None,
                        ..cfg.clone()
                    },
                    docs: corpus_label(cfg),
                    vocab: suite.vocab,
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

/// The corpus instance the documents come from: `icl.corpus`'s own, or
/// the evaluation corpus.
fn corpus_label(cfg: &IclConfig) -> &'static str {
    if cfg.corpus.is_some() {
        corpus::ICL
    } else {
        ""
    }
}

#[derive(Serialize)]
struct IclJob {
    #[serde(flatten)]
    ckpt: Checkpoint,
    /// Its `batch_size` is the batch size of this stage's model runs.
    #[serde(rename = "icl")]
    cfg: IclConfig,
    vocab: Option<usize>,
    /// unkeyed: the corpus instance of the documents (its outputs are keyed).
    #[serde(skip)]
    docs: &'static str,
    /// unkeyed: threads and device (the batch size is keyed in `icl`).
    #[serde(skip)]
    set: RunSettings,
}

/// Each document's own tokens (no BOS, EOS or separators), by document.
pub fn document_tokens(path: &std::path::Path) -> Result<BTreeMap<u32, Vec<u32>>, StageError> {
    let b = table::read(path)?;
    let doc = table::column::<UInt32Array>(&b, "doc", path)?;
    let id = table::column::<UInt32Array>(&b, "token_id", path)?;
    let start = table::column::<UInt32Array>(&b, "char_start", path)?;
    let mut out: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for i in 0..b.num_rows() {
        if !start.is_null(i) {
            out.entry(doc.value(i)).or_default().push(id.value(i));
        }
    }
    Ok(out)
}

/// −log p(target | context) for each (context, target), all contexts of
/// one length `t`, over the first `n` logits.
fn losses(
    model: &mut OrtModel,
    items: &[(&[u32], u32)],
    t: usize,
    n: usize,
    batch: usize,
    cancel: &dyn Fn() -> Result<(), StageError>,
) -> Result<Vec<f64>, StageError> {
    let mut out = Vec::with_capacity(items.len());
    for chunk in items.chunks(batch) {
        cancel()?;
        let ids: Vec<i64> = chunk
            .iter()
            .flat_map(|(c, _)| c.iter().map(|&x| x as i64))
            .collect();
        let (logits, w) = model.logits(&ids, chunk.len(), t)?;
        if n > w {
            return Err(StageError::Other(format!(
                "{}: emits {w} logits, fewer than the kept vocabulary {n}",
                model.name()
            )));
        }
        for (j, (_, target)) in chunk.iter().enumerate() {
            let row = &logits[(j * t + t - 1) * w..][..n];
            out.push(-divergence::log_prob_of(row, *target as usize));
        }
    }
    Ok(out)
}

impl Job for IclJob {
    fn run(&self, ctx: &JobCtx) -> Result<serde_json::Value, StageError> {
        let cfg = &self.cfg;
        let tokens: PathBuf = ctx
            .upstream(corpus::NAME, self.docs)?
            .join("tokens.parquet");
        let docs: Vec<(u32, Vec<u32>)> = document_tokens(&tokens)?
            .into_iter()
            .filter(|(_, t)| t.len() >= cfg.min_tokens)
            .collect();
        if docs.is_empty() {
            return Err(StageError::input(
                &tokens,
                format!(
                    "no document has icl.min_tokens = {} tokens; lower the icl settings or use longer documents",
                    cfg.min_tokens
                ),
            ));
        }
        let n = tokenizer::kept_vocab(self.vocab, ctx)?;
        let path = self.ckpt.model_path(ctx)?;
        let (mut model, cuda) = self.set.open(&path, ctx.threads, ctx.gpu)?;
        // d_P is index P − 1; its context of length L starts at index P − 1 − L.
        let p = cfg.position - 1;
        let items = |len: usize| -> Vec<(&[u32], u32)> {
            docs.iter().map(|(_, t)| (&t[p - len..p], t[p])).collect()
        };
        let cancel = || ctx.check_cancel();
        let long = losses(
            &mut model,
            &items(cfg.long_context),
            cfg.long_context,
            n,
            cfg.batch_size,
            &cancel,
        )?;
        let short = losses(
            &mut model,
            &items(cfg.short_context),
            cfg.short_context,
            n,
            cfg.batch_size,
            &cancel,
        )?;
        let score: Vec<f64> = long.iter().zip(&short).map(|(l, s)| l - s).collect();
        let k = docs.len();
        let c = &self.ckpt;
        let batch = RecordBatch::try_from_iter(vec![
            (
                "size",
                Arc::new(StringArray::from(vec![c.size.clone(); k])) as ArrayRef,
            ),
            ("seed", Arc::new(StringArray::from(vec![c.seed.clone(); k]))),
            ("step", Arc::new(UInt32Array::from(vec![c.step as u32; k]))),
            (
                "doc",
                Arc::new(UInt32Array::from_iter_values(docs.iter().map(|d| d.0))),
            ),
            ("loss_long", Arc::new(Float64Array::from(long))),
            ("loss_short", Arc::new(Float64Array::from(short))),
            ("icl", Arc::new(Float64Array::from(score.clone()))),
        ])?;
        table::write(&ctx.out.join(FILE), &batch, &[("stage", NAME.into())])?;
        Ok(json!({
            "documents": k,
            "mean_icl": score.iter().sum::<f64>() / k as f64,
            "cuda": cuda,
            "onnxruntime": crate::lm::ortlib::info(),
            "gpu": crate::lm::ortlib::gpu_name(cuda, ctx.gpu),
        }))
    }
}
