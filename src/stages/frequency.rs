//! `frequency`: token counts of a frequency corpus, once per file (so adding
//! a file counts only that file), tokenized the way the evaluation text is
//! tokenized: each document followed by the separator token. A `.npy` file
//! is counts already made, one per token id (the authors' Pile-validation
//! `frequency_count.npy`). `unigram` sums them.

use std::path::PathBuf;
use std::sync::Arc;

use arrow_array::{RecordBatch, UInt32Array, UInt64Array};
use arrow_schema::{DataType, Field, Schema};
use rayon::prelude::*;
use serde::Serialize;
use serde_json::json;

use crate::config::TextFormat;
use crate::engine::{Instance, Job, JobCtx};
use crate::error::StageError;
use crate::stages::tokenizer;
use crate::stages::{PlanCtx, Stage};
use crate::table;
use crate::text;

pub const NAME: &str = "frequency";
pub const VERSION: u32 = 1;
/// Each instance's output table.
pub const FILE: &str = "counts.parquet";

/// A filename-safe label for a file, unique among `taken`.
fn label_for(p: &std::path::Path, taken: &mut Vec<String>) -> String {
    let base: String = p
        .file_name()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut label = base.clone();
    let mut k = 2;
    while taken.contains(&label) {
        label = format!("{base}-{k}");
        k += 1;
    }
    taken.push(label.clone());
    label
}

/// The `frequency` stage: one instance per frequency file.
pub struct Frequency;

impl Stage for Frequency {
    const NAME: &'static str = NAME;
    const VERSION: u32 = VERSION;
    fn instances(&self, cx: &PlanCtx) -> Vec<Instance> {
        let c = cx.config();
        let (files, format, field) = if c.frequency.files.is_empty() {
            (
                &c.train_corpus.files,
                c.train_corpus.format,
                &c.train_corpus.text_field,
            )
        } else {
            (
                &c.frequency.files,
                c.frequency.format,
                &c.frequency.text_field,
            )
        };
        let mut taken = Vec::new();
        files
            .iter()
            .map(|p| {
                let job = CountJob {
                    path: p.clone(),
                    per_id: p.extension().is_some_and(|e| e == "npy"),
                    format,
                    text_field: field.clone(),
                    eos_token: c.tokenizer.eos_token.clone(),
                };
                self.instance(label_for(p, &mut taken), job)
                    .inputs(vec![("file".into(), p.clone())])
                    .deps(vec![(tokenizer::NAME, String::new())])
            })
            .collect()
    }
}

#[derive(Serialize)]
struct CountJob {
    /// unkeyed: its content is the input `file`.
    #[serde(skip)]
    path: PathBuf,
    /// A `.npy` of counts per token id rather than text (older keys lack it).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    per_id: bool,
    format: TextFormat,
    text_field: String,
    eos_token: String,
}

/// Counts per token id from a 1-D `.npy` (float64 or int64) of exactly the
/// tokenizer's size. Floats are rounded: the authors' counts are float64
/// from an uninitialised `np.ndarray`, so ids never seen hold leftovers
/// such as 6e-312, which round to 0.
fn read_counts(path: &std::path::Path, vocab: usize) -> Result<Vec<u64>, StageError> {
    let bad = |m: String| StageError::input(path, m);
    let open = || -> Result<npyz::NpyFile<std::io::BufReader<std::fs::File>>, StageError> {
        let f = std::fs::File::open(path).map_err(|e| StageError::io(path, e))?;
        npyz::NpyFile::new(std::io::BufReader::new(f))
            .map_err(|e| bad(format!("not a .npy file: {e}")))
    };
    let npy = open()?;
    if npy.shape().len() != 1 {
        return Err(bad(format!(
            "expected a 1-D array of counts per token id, got shape {:?}",
            npy.shape()
        )));
    }
    let values: Vec<f64> = match npy.into_vec::<f64>() {
        Ok(v) => v,
        Err(_) => open()?
            .into_vec::<i64>()
            .map_err(|e| bad(format!("expected float64 or int64 counts: {e}")))?
            .into_iter()
            .map(|x| x as f64)
            .collect(),
    };
    if values.len() != vocab {
        return Err(bad(format!(
            "{} counts for a tokenizer of {vocab} tokens (one count per token id)",
            values.len()
        )));
    }
    values
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            if v.is_finite() && v >= 0.0 {
                Ok(v.round() as u64)
            } else {
                Err(bad(format!("count of token {i} is {v}")))
            }
        })
        .collect()
}

impl Job for CountJob {
    fn run(&self, ctx: &JobCtx) -> Result<serde_json::Value, StageError> {
        let (tok, tok_path) = tokenizer::load_upstream(ctx)?;
        let eos = tokenizer::eos_id(&tok, &self.eos_token, &tok_path)? as usize;
        let vocab = tok.get_vocab_size(true);
        if self.per_id {
            let counts = read_counts(&self.path, vocab)?;
            let total: u64 = counts.iter().sum();
            write_counts(ctx, &self.path, counts)?;
            return Ok(json!({ "documents": 0, "tokens": total, "per_id_counts": true }));
        }
        let docs =
            text::read_documents(&self.path, self.format, &self.text_field, &self.eos_token)?;
        ctx.check_cancel()?;
        // Count per chunk of documents in parallel, then add up; checking for
        // Ctrl-C between chunks keeps interrupts prompt on big files.
        let mut counts = vec![0u64; vocab];
        for chunk in docs.chunks(2048) {
            ctx.check_cancel()?;
            let part = chunk
                .par_iter()
                .map(|d| {
                    let mut c = vec![0u64; vocab];
                    let enc = tok
                        .encode(d.text.as_str(), false)
                        .map_err(|e| StageError::input(&self.path, format!("tokenizing: {e}")))?;
                    for &id in enc.get_ids() {
                        c[id as usize] += 1;
                    }
                    c[eos] += 1;
                    Ok::<_, StageError>(c)
                })
                .try_reduce(
                    || vec![0u64; vocab],
                    |mut a, b| {
                        a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
                        Ok(a)
                    },
                )?;
            counts.iter_mut().zip(part).for_each(|(x, y)| *x += y);
        }
        let total: u64 = counts.iter().sum();
        write_counts(ctx, &self.path, counts)?;
        Ok(json!({ "documents": docs.len(), "tokens": total }))
    }
}

/// The counts table of one source file.
fn write_counts(
    ctx: &JobCtx,
    source: &std::path::Path,
    counts: Vec<u64>,
) -> Result<(), StageError> {
    let vocab = counts.len();
    let batch = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("token_id", DataType::UInt32, false),
            Field::new("count", DataType::UInt64, false),
        ])),
        vec![
            Arc::new(UInt32Array::from((0..vocab as u32).collect::<Vec<_>>())),
            Arc::new(UInt64Array::from(counts)),
        ],
    )?;
    table::write(
        &ctx.out.join(FILE),
        &batch,
        &[
            ("stage", NAME.into()),
            ("source", table::source_name(source)),
        ],
    )
}
