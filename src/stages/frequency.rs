//! `frequency` and `unigram`: token counts of a frequency corpus.
//!
//! `frequency` runs once per file (so adding a file counts only that file)
//! and tokenizes it the way the evaluation text is tokenized: each document
//! followed by the separator token. `unigram` sums the per-file counts into
//! the table the analysis joins on: raw count, decade bin (labelled by its
//! true bounds) and the add-one smoothed unigram log-probability used for the
//! KL(p ‖ unigram) baseline (no token has probability zero).

use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{Float64Array, RecordBatch, StringArray, UInt32Array, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema};
use rayon::prelude::*;
use serde_json::json;

use crate::config::{Loaded, TextFormat};
use crate::engine::{Instance, Job, JobCtx};
use crate::error::StageError;
use crate::stages::tokenizer;
use crate::table;
use crate::text;

pub const NAME: &str = "frequency";
pub const VERSION: u32 = 1;
pub const UNIGRAM: &str = "unigram";
pub const UNIGRAM_VERSION: u32 = 1;

/// Decade bins of a raw count, labelled by their true bounds.
pub const BINS: [&str; 6] = ["<10", "10-100", "100-1e3", "1e3-1e4", "1e4-1e5", ">=1e5"];

pub fn bin_of(count: u64) -> usize {
    match count {
        0..=9 => 0,
        10..=99 => 1,
        100..=999 => 2,
        1_000..=9_999 => 3,
        10_000..=99_999 => 4,
        _ => 5,
    }
}

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

pub fn instances(l: &Loaded) -> Vec<Instance> {
    let c = &l.config;
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
    let mut out: Vec<Instance> = files
        .iter()
        .map(|p| Instance {
            stage: NAME,
            version: VERSION,
            label: label_for(p, &mut taken),
            params: json!({ "format": format, "text_field": field, "eos_token": c.tokenizer.eos_token }),
            inputs: vec![("file".into(), p.clone())],
            deps: vec![(tokenizer::NAME, String::new())],
            exclusive: false,
            job: Box::new(CountJob {
                path: p.clone(),
                format,
                text_field: field.clone(),
                eos: c.tokenizer.eos_token.clone(),
            }),
        })
        .collect();
    let labels = taken.clone();
    out.push(Instance {
        stage: UNIGRAM,
        version: UNIGRAM_VERSION,
        label: String::new(),
        params: json!({ "smoothing": "add-one" }),
        inputs: vec![],
        deps: std::iter::once((tokenizer::NAME, String::new()))
            .chain(labels.iter().map(|l| (NAME, l.clone())))
            .collect(),
        exclusive: false,
        job: Box::new(UnigramJob { labels }),
    });
    out
}

struct CountJob {
    path: PathBuf,
    format: TextFormat,
    text_field: String,
    eos: String,
}

impl Job for CountJob {
    fn run(&self, ctx: &JobCtx) -> Result<serde_json::Value, StageError> {
        let (tok, tok_path) = tokenizer::load_upstream(ctx)?;
        let eos = tokenizer::eos_id(&tok, &self.eos, &tok_path)? as usize;
        let vocab = tok.get_vocab_size(true);
        let docs = text::read_documents(&self.path, self.format, &self.text_field, &self.eos)?;
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
            &ctx.out.join("counts.parquet"),
            &batch,
            &[
                ("stage", NAME.into()),
                ("source", table::source_name(&self.path)),
            ],
        )?;
        Ok(json!({ "documents": docs.len(), "tokens": total }))
    }
}

struct UnigramJob {
    labels: Vec<String>,
}

impl Job for UnigramJob {
    fn run(&self, ctx: &JobCtx) -> Result<serde_json::Value, StageError> {
        let (tok, _) = tokenizer::load_upstream(ctx)?;
        let vocab = tok.get_vocab_size(true);
        let mut counts = vec![0u64; vocab];
        for label in &self.labels {
            let path = ctx.upstream(NAME, label)?.join("counts.parquet");
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
            &ctx.out.join("unigram.parquet"),
            &batch,
            &[("stage", UNIGRAM.into()), ("smoothing", "add-one".into())],
        )?;
        Ok(json!({ "tokens": total, "unseen": counts.iter().filter(|&&c| c == 0).count() }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_follow_true_decades() {
        let cases = [
            (0, "<10"),
            (9, "<10"),
            (10, "10-100"),
            (99, "10-100"),
            (100, "100-1e3"),
            (999, "100-1e3"),
            (1000, "1e3-1e4"),
            (12_345, "1e4-1e5"),
            (100_000, ">=1e5"),
            (u64::MAX, ">=1e5"),
        ];
        for (c, want) in cases {
            assert_eq!(BINS[bin_of(c)], want, "count {c}");
        }
    }
}
