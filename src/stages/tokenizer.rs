//! `tokenizer`: the suite's `tokenizer.json`, either trained here (byte-level
//! BPE, as GPT-NeoX/Pythia) on the training corpus or copied from a given
//! file after checking it loads. Downstream stages always read it from this
//! stage's entry, so both routes look the same to them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{RecordBatch, StringArray, UInt32Array};
use arrow_schema::{DataType, Field, Schema};
use serde_json::json;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::processors::PostProcessorWrapper;
use tokenizers::{AddedToken, Tokenizer as HfTokenizer, TokenizerBuilder};

use serde::Serialize;

use crate::config::TextFormat;
use crate::engine::{Instance, Job, JobCtx};
use crate::error::StageError;
use crate::stages::{PlanCtx, Stage};
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

/// The `tokenizer` stage.
pub struct Tokenizer;

impl Stage for Tokenizer {
    const NAME: &'static str = NAME;
    const VERSION: u32 = VERSION;
    fn instances(&self, cx: &PlanCtx) -> Vec<Instance> {
        let c = cx.config();
        // Checked on the user's file, so errors name it (not the store's copy).
        let required = if c.objective() == crate::config::Objective::Mlm {
            mlm_specials(&c.tokenizer)
        } else {
            vec![]
        };
        match &c.tokenizer.path {
            Some(p) => vec![self
                .instance(
                    "",
                    CopyJob {
                        mode: "file",
                        path: p.clone(),
                        eos_token: c.tokenizer.eos_token.clone(),
                        required,
                    },
                )
                .inputs(vec![("tokenizer.path".into(), p.clone())])],
            None => {
                let files = c.train_corpus.files.clone();
                vec![self
                    .instance(
                        "",
                        TrainJob {
                            mode: "train",
                            files,
                            format: c.train_corpus.format,
                            text_field: c.train_corpus.text_field.clone(),
                            vocab_size: c.tokenizer.vocab_size,
                            min_frequency: c.tokenizer.min_frequency,
                            eos_token: c.tokenizer.eos_token.clone(),
                            extra_special_tokens: c.tokenizer.extra_special_tokens.clone(),
                        },
                    )
                    .inputs(train_inputs(&c.train_corpus.files))]
            }
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
pub fn load_upstream(ctx: &JobCtx) -> Result<(HfTokenizer, PathBuf), StageError> {
    let path = ctx.upstream(NAME, "")?.join(FILE);
    let tok = load(&path)?;
    Ok((tok, path))
}

pub fn load(path: &Path) -> Result<HfTokenizer, StageError> {
    HfTokenizer::from_file(path)
        .map_err(|e| StageError::input(path, format!("not a usable tokenizer.json: {e}")))
}

/// The id of the mask token `token` in an upstream `tokenizer` entry.
pub fn mask_id(ctx: &JobCtx, token: &str) -> Result<u32, StageError> {
    let (tok, path) = load_upstream(ctx)?;
    special_id(&tok, token, &path, "tokenizer.mask_token")
}

/// The kept vocabulary N: configured, else the tokenizer's.
pub fn kept_vocab(vocab: Option<usize>, ctx: &JobCtx) -> Result<usize, StageError> {
    match vocab {
        Some(n) => Ok(n),
        None => Ok(load_upstream(ctx)?.0.get_vocab_size(true)),
    }
}

/// Id of the EOS/separator token, or an error naming the tokenizer file.
pub fn eos_id(tok: &HfTokenizer, eos: &str, path: &Path) -> Result<u32, StageError> {
    special_id(tok, eos, path, "tokenizer.eos_token")
}

/// The id of a special token the config names under `key`.
pub fn special_id(
    tok: &HfTokenizer,
    token: &str,
    path: &Path,
    key: &str,
) -> Result<u32, StageError> {
    tok.token_to_id(token)
        .ok_or_else(|| StageError::input(path, format!("has no token {token:?} ({key})")))
}

#[derive(Serialize)]
struct CopyJob {
    mode: &'static str,
    /// unkeyed: the file's content is the input `tokenizer.path`.
    #[serde(skip)]
    path: PathBuf,
    eos_token: String,
    /// More special tokens the suite needs: (token, config key); keyed by
    /// the tokens alone.
    #[serde(skip_serializing_if = "Vec::is_empty", serialize_with = "tokens_only")]
    required: Vec<(String, &'static str)>,
}

fn tokens_only<S: serde::Serializer>(
    v: &[(String, &'static str)],
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|(t, _)| t))
}

impl Job for CopyJob {
    fn run(&self, ctx: &JobCtx) -> Result<serde_json::Value, StageError> {
        let tok = load(&self.path)?;
        eos_id(&tok, &self.eos_token, &self.path)?;
        for (token, key) in &self.required {
            special_id(&tok, token, &self.path, key)?;
        }
        let out = ctx.out.join(FILE);
        std::fs::copy(&self.path, &out).map_err(|e| StageError::io(&out, e))?;
        write_vocab(ctx.out, &tok)
    }
}

#[derive(Serialize)]
struct TrainJob {
    mode: &'static str,
    /// unkeyed: their content is keyed as the inputs `train_corpus.files[i]`.
    #[serde(skip)]
    files: Vec<PathBuf>,
    format: TextFormat,
    text_field: String,
    vocab_size: usize,
    min_frequency: u64,
    eos_token: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    extra_special_tokens: Vec<String>,
}

impl Job for TrainJob {
    fn run(&self, ctx: &JobCtx) -> Result<serde_json::Value, StageError> {
        let mut docs = Vec::new();
        for f in &self.files {
            ctx.check_cancel()?;
            docs.extend(
                text::read_documents(f, self.format, &self.text_field, &self.eos_token)?
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
                [self.eos_token.clone(), PAD.to_string()]
                    .into_iter()
                    .chain(self.extra_special_tokens.iter().cloned())
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
fn write_vocab(out: &Path, tok: &HfTokenizer) -> Result<serde_json::Value, StageError> {
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
