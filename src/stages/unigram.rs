//! `unigram`: the per-file `frequency` counts summed into the table the
//! analysis joins on: raw count, decade bin (labelled by its true bounds) and
//! the add-one smoothed unigram log-probability used for the KL(p ‖ unigram)
//! baseline (no token has probability zero).

use std::sync::Arc;

use arrow_array::{Float64Array, RecordBatch, StringArray, UInt32Array, UInt64Array};
use arrow_schema::{DataType, Field, Schema};
use serde::Serialize;
use serde_json::json;

use crate::analysis::conditioning::{bin_of, BINS};
use crate::engine::{Instance, Job, JobCtx};
use crate::error::StageError;
use crate::stages::frequency;
use crate::stages::{tokenizer, PlanCtx, Stage};
use crate::table;

pub const NAME: &str = "unigram";
pub const VERSION: u32 = 1;
pub const FILE: &str = "unigram.parquet";

/// The `unigram` stage: one instance over every `frequency` instance.
pub struct Unigram;

impl Stage for Unigram {
    const NAME: &'static str = NAME;
    const VERSION: u32 = VERSION;
    fn instances(&self, cx: &PlanCtx) -> Vec<Instance> {
        let labels: Vec<String> = cx
            .planned
            .iter()
            .filter(|i| i.stage == frequency::NAME)
            .map(|i| i.label.clone())
            .collect();
        let deps = std::iter::once((tokenizer::NAME, String::new()))
            .chain(labels.iter().map(|l| (frequency::NAME, l.clone())))
            .collect();
        let job = UnigramJob {
            smoothing: "add-one",
            labels,
        };
        vec![self.instance("", job).deps(deps)]
    }
}

#[derive(Serialize)]
struct UnigramJob {
    smoothing: &'static str,
    /// unkeyed: upstream entries are keyed by their output hashes.
    #[serde(skip)]
    labels: Vec<String>,
}

impl Job for UnigramJob {
    fn run(&self, ctx: &JobCtx) -> Result<serde_json::Value, StageError> {
        let (tok, _) = tokenizer::load_upstream(ctx)?;
        let vocab = tok.get_vocab_size(true);
        let mut counts = vec![0u64; vocab];
        for label in &self.labels {
            let path = ctx.upstream(frequency::NAME, label)?.join(frequency::FILE);
            let batch = table::read(&path)?;
            let ids = table::column::<UInt32Array>(&batch, "token_id", &path)?;
            let cs = table::column::<UInt64Array>(&batch, "count", &path)?;
            for (id, c) in ids.values().iter().zip(cs.values().iter()) {
                let slot = counts.get_mut(*id as usize).ok_or_else(|| {
                    StageError::input(
                        &path,
                        format!("token id {id} outside the vocabulary ({vocab})"),
                    )
                })?;
                *slot += c;
            }
        }
        let total: u64 = counts.iter().sum();
        let denom = (total + vocab as u64) as f64;
        let log_prob: Vec<f64> = counts
            .iter()
            .map(|&c| ((c + 1) as f64 / denom).ln())
            .collect();
        let bins: Vec<&str> = counts.iter().map(|&c| BINS[bin_of(c)]).collect();
        let text: Vec<String> = (0..vocab as u32)
            .map(|i| tok.decode(&[i], false).unwrap_or_default())
            .collect();
        let batch = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("token_id", DataType::UInt32, false),
                Field::new("token", DataType::Utf8, false),
                Field::new("count", DataType::UInt64, false),
                Field::new("freq_bin", DataType::Utf8, false),
                Field::new("log_prob", DataType::Float64, false),
            ])),
            vec![
                Arc::new(UInt32Array::from((0..vocab as u32).collect::<Vec<_>>())),
                Arc::new(StringArray::from(text)),
                Arc::new(UInt64Array::from(counts.clone())),
                Arc::new(StringArray::from(bins)),
                Arc::new(Float64Array::from(log_prob)),
            ],
        )?;
        table::write(
            &ctx.out.join(FILE),
            &batch,
            &[("stage", NAME.into()), ("smoothing", self.smoothing.into())],
        )?;
        Ok(json!({ "tokens": total, "unseen": counts.iter().filter(|&&c| c == 0).count() }))
    }
}

/// Unigram log-probs truncated to N and renormalised.
pub fn log_probs(ctx: &JobCtx, n: usize) -> Result<Vec<f64>, StageError> {
    let p = ctx.upstream(NAME, "")?.join(FILE);
    let b = table::read(&p)?;
    let lq = table::column::<Float64Array>(&b, "log_prob", &p)?.values();
    if lq.len() < n {
        return Err(StageError::input(
            &p,
            format!(
                "has {} tokens, fewer than the kept vocabulary {n}",
                lq.len()
            ),
        ));
    }
    let lse = lq[..n].iter().map(|&x| x.exp()).sum::<f64>().ln();
    Ok(lq[..n].iter().map(|&x| x - lse).collect())
}
