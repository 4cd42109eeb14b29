//! `traindata`: the training corpus as one token stream (each document
//! followed by the separator token), for the built-in trainer.

use std::path::PathBuf;
use std::sync::Arc;

use arrow_array::{RecordBatch, UInt32Array};
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

pub const NAME: &str = "traindata";
pub const VERSION: u32 = 1;
pub const FILE: &str = "train_tokens.parquet";

/// The `traindata` stage: present only for a built-in suite.
pub struct TrainData;

impl Stage for TrainData {
    const NAME: &'static str = NAME;
    const VERSION: u32 = VERSION;
    fn instances(&self, cx: &PlanCtx) -> Vec<Instance> {
        let c = cx.config();
        if c.train.is_none() {
            return vec![];
        }
        let files = c.train_corpus.files.clone();
        let inputs = tokenizer::train_inputs(&files);
        let job = TrainDataJob {
            files,
            format: c.train_corpus.format,
            text_field: c.train_corpus.text_field.clone(),
            eos_token: c.tokenizer.eos_token.clone(),
        };
        vec![self
            .instance("", job)
            .inputs(inputs)
            .deps(vec![(tokenizer::NAME, String::new())])]
    }
}

#[derive(Serialize)]
struct TrainDataJob {
    /// unkeyed: their content is keyed as the inputs `train_corpus.files[i]`.
    #[serde(skip)]
    files: Vec<PathBuf>,
    format: TextFormat,
    text_field: String,
    eos_token: String,
}

impl Job for TrainDataJob {
    fn run(&self, ctx: &JobCtx) -> Result<serde_json::Value, StageError> {
        let (tok, tok_path) = tokenizer::load_upstream(ctx)?;
        let eos = tokenizer::eos_id(&tok, &self.eos_token, &tok_path)?;
        let mut stream: Vec<u32> = Vec::new();
        let mut docs = 0usize;
        for f in &self.files {
            ctx.check_cancel()?;
            let d = text::read_documents(f, self.format, &self.text_field, &self.eos_token)?;
            docs += d.len();
            let enc: Vec<Vec<u32>> = d
                .par_iter()
                .map(|doc| {
                    tok.encode(doc.text.as_str(), false)
                        .map(|e| e.get_ids().to_vec())
                        .map_err(|e| StageError::input(f, format!("tokenizing: {e}")))
                })
                .collect::<Result<_, _>>()?;
            for ids in enc {
                stream.extend(ids);
                stream.push(eos);
            }
        }
        let n = stream.len();
        let batch = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new(
                "token_id",
                DataType::UInt32,
                false,
            )])),
            vec![Arc::new(UInt32Array::from(stream))],
        )?;
        table::write(
            &ctx.out.join(FILE),
            &batch,
            &[("stage", NAME.into()), ("documents", docs.to_string())],
        )?;
        Ok(json!({ "documents": docs, "tokens": n }))
    }
}

/// The training stream, read back from a `traindata` entry's table.
pub fn read(path: &std::path::Path) -> Result<Vec<u32>, StageError> {
    let batch = table::read(path)?;
    Ok(table::column::<UInt32Array>(&batch, "token_id", path)?
        .values()
        .to_vec())
}
