//! `tokenizer`: the suite's `tokenizer.json`, either trained here (byte-level
//! BPE, as GPT-NeoX/Pythia) on the training corpus or copied from a given
//! file after checking it loads. Downstream stages always read it from this
//! stage's entry, so both routes look the same to them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{RecordBatch, StringArray, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema};
use serde_json::json;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::processors::PostProcessorWrapper;
use tokenizers::{AddedToken, Tokenizer, TokenizerBuilder};

use crate::config::{Loaded, TextFormat};
use crate::engine::{Instance, Job, JobCtx};
use crate::error::StageError;
use crate::table;
use crate::text;

pub const NAME: &str = "tokenizer";
pub const VERSION: u32 = 1;
pub const FILE: &str = "tokenizer.json";
/// Pythia's second special token, kept for id-compatible layouts.
const PAD: &str = "<|padding|>";

/// The masked-LM special tokens a tokenizer must have, with their config keys.
pub fn mlm_specials(t: &crate::config::TokenizerConfig) -> Vec<(String, &'static str)> {
    vec![
        (t.cls_token.clone(), "tokenizer.cls_token"),
        (t.sep_token.clone(), "tokenizer.sep_token"),
        (t.mask_token.clone(), "tokenizer.mask_token"),
    ]
}

pub fn instances(l: &Loaded) -> Vec<Instance> {
    let c = &l.config;
    // Checked on the user's file, so errors name it (not the store's copy).
    let required = if c.objective() == crate::config::Objective::Mlm {
        mlm_specials(&c.tokenizer)
    } else {
        vec![]
    };
    match &c.tokenizer.path {
        Some(p) => vec![Instance {
            stage: NAME,
            version: VERSION,
            label: String::new(),
            params: if required.is_empty() {
                json!({ "mode": "file", "eos_token": c.tokenizer.eos_token })
            } else {
                json!({ "mode": "file", "eos_token": c.tokenizer.eos_token, "required": required.iter().map(|r| &r.0).collect::<Vec<_>>() })
            },
            inputs: vec![("tokenizer.path".into(), p.clone())],
            deps: vec![],
            exclusive: false,
            job: Box::new(CopyJob {
                path: p.clone(),
                eos: c.tokenizer.eos_token.clone(),
                required,
            }),
        }],
        None => {
            let files = c.train_corpus.files.clone();
            let mut params = json!({
                "mode": "train",
                "vocab_size": c.tokenizer.vocab_size,
                "min_frequency": c.tokenizer.min_frequency,
                "eos_token": c.tokenizer.eos_token,
                "format": c.train_corpus.format,
                "text_field": c.train_corpus.text_field,
            });
            if !c.tokenizer.extra_special_tokens.is_empty() {
                params["extra_special_tokens"] = json!(c.tokenizer.extra_special_tokens);
            }
            vec![Instance {
                stage: NAME,
                version: VERSION,
                label: String::new(),
                params,
                inputs: train_inputs(&files),
                deps: vec![],
                exclusive: false,
                job: Box::new(TrainJob {
                    files,
                    format: c.train_corpus.format,
                    text_field: c.train_corpus.text_field.clone(),
                    vocab_size: c.tokenizer.vocab_size,
                    min_frequency: c.tokenizer.min_frequency,
                    eos: c.tokenizer.eos_token.clone(),
                    extra: c.tokenizer.extra_special_tokens.clone(),
                }),
            }]
        }
    }
}

/// The training text files as named engine inputs.
pub fn train_inputs(files: &[PathBuf]) -> Vec<(String, PathBuf)> {
    files
        .iter()
        .enumerate()
        .map(|(i, p)| (format!("train_corpus.files[{i}]"), p.clone()))
        .collect()
}

/// Load the tokenizer an upstream `tokenizer` entry holds.
pub fn load_upstream(ctx: &JobCtx) -> Result<(Tokenizer, PathBuf), StageError> {
    let path = ctx.upstream(NAME, "")?.join(FILE);
    let tok = load(&path)?;
    Ok((tok, path))
}

pub fn load(path: &Path) -> Result<Tokenizer, StageError> {
    Tokenizer::from_file(path)
        .map_err(|e| StageError::input(path, format!("not a usable tokenizer.json: {e}")))
}

/// Id of the EOS/separator token, or an error naming the tokenizer file.
pub fn eos_id(tok: &Tokenizer, eos: &str, path: &Path) -> Result<u32, StageError> {
    special_id(tok, eos, path, "tokenizer.eos_token")
}

/// The id of a special token the config names under `key`.
pub fn special_id(tok: &Tokenizer, token: &str, path: &Path, key: &str) -> Result<u32, StageError> {
    tok.token_to_id(token)
        .ok_or_else(|| StageError::input(path, format!("has no token {token:?} ({key})")))
}

struct CopyJob {
    path: PathBuf,
    eos: String,
    /// More special tokens the suite needs: (token, config key).
    required: Vec<(String, &'static str)>,
}

impl Job for CopyJob {
    fn run(&self, ctx: &JobCtx) -> Result<serde_json::Value, StageError> {
        let tok = load(&self.path)?;
        eos_id(&tok, &self.eos, &self.path)?;
        for (token, key) in &self.required {
            special_id(&tok, token, &self.path, key)?;
        }
        let out = ctx.out.join(FILE);
        std::fs::copy(&self.path, &out).map_err(|e| StageError::io(&out, e))?;
        write_vocab(ctx.out, &tok)
    }
}

struct TrainJob {
    files: Vec<PathBuf>,
    format: TextFormat,
    text_field: String,
    vocab_size: usize,
    min_frequency: u64,
    eos: String,
    extra: Vec<String>,
}

impl Job for TrainJob {
    fn run(&self, ctx: &JobCtx) -> Result<serde_json::Value, StageError> {
        let mut docs = Vec::new();
        for f in &self.files {
            ctx.check_cancel()?;
            docs.extend(
                text::read_documents(f, self.format, &self.text_field, &self.eos)?
                    .into_iter()
                    .map(|d| d.text),
            );
        }
        let mut trainer = BpeTrainerBuilder::new()
            .show_progress(false)
            .vocab_size(self.vocab_size)
            .min_frequency(self.min_frequency)
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .special_tokens(
                [self.eos.clone(), PAD.to_string()]
                    .into_iter()
                    .chain(self.extra.iter().cloned())
                    .map(|t| AddedToken::from(t, true))
                    .collect(),
            )
            .build();
        // add_prefix_space = false, trim_offsets = false: offsets keep the
        // leading space, which the paper's PoS mapping counts as untagged.
        let byte_level = ByteLevel::new(false, false, true);
        let mut tok = TokenizerBuilder::<
            BPE,
            NormalizerWrapper,
            PreTokenizerWrapper,
            PostProcessorWrapper,
            DecoderWrapper,
        >::new()
        .with_model(BPE::default())
        .with_normalizer(None)
        .with_pre_tokenizer(Some(byte_level.into()))
        .with_post_processor(Some(byte_level.into()))
        .with_decoder(Some(byte_level.into()))
        .build()
        .map_err(|e| StageError::Other(format!("building tokenizer: {e}")))?;
        tok.train(&mut trainer, docs.iter())
            .map_err(|e| StageError::Other(format!("training tokenizer: {e}")))?;
        let out = ctx.out.join(FILE);
        tok.save(&out, false)
            .map_err(|e| StageError::Other(format!("{}: {e}", out.display())))?;
        let tok = load(&out)?;
        write_vocab(ctx.out, &tok)
    }
}

/// `vocab.parquet`: id → token string, for inspection and joins.
fn write_vocab(out: &Path, tok: &Tokenizer) -> Result<serde_json::Value, StageError> {
    let n = tok.get_vocab_size(true) as u32;
    let ids: Vec<u32> = (0..n).collect();
    let toks: Vec<String> = ids
        .iter()
        .map(|&i| tok.id_to_token(i).unwrap_or_default())
        .collect();
    let text: Vec<String> = ids
        .iter()
        .map(|&i| tok.decode(&[i], false).unwrap_or_default())
        .collect();
    let schema = Schema::new(vec![
        Field::new("token_id", DataType::UInt32, false),
        Field::new("token", DataType::Utf8, false),
        Field::new("text", DataType::Utf8, false),
    ]);
    let batch = RecordBatch::try_new(
        Arc::new(schema),
        vec![
            Arc::new(UInt32Array::from(ids)),
            Arc::new(StringArray::from(toks)),
            Arc::new(StringArray::from(text)),
        ],
    )?;
    table::write(
        &out.join("vocab.parquet"),
        &batch,
        &[("stage", NAME.into())],
    )?;
    Ok(json!({ "vocab_size": n }))
}
