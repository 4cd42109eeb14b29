//! The inputs: the store, the training text, the tokenizer, the evaluation
//! corpus and the frequency counts.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{no_duplicates, Check, Config};
use crate::error::ConfigError;

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[serde(default)]
/// Where the artefacts live.
pub struct StoreConfig {
    /// Artefact store folder.
    pub dir: PathBuf,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            dir: PathBuf::from("stages"),
        }
    }
}

/// Text formats seedconv reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TextFormat {
    /// Decide from the file extension (`.txt`, `.jsonl`, `.conllu`).
    Auto,
    /// One document per line; blank lines are skipped.
    Txt,
    /// The whole file is one text whose documents are separated by the
    /// tokenizer's EOS literal (`<|endoftext|>`), as in the paper's sample.
    Raw,
    /// One JSON object per line; the document is its `text_field`.
    Jsonl,
    /// CoNLL-U: documents from `# newdoc`, text from `# text`.
    Conllu,
}

/// Training text shared by the tokenizer trainer, the frequency counts and
/// (later) the built-in model trainer.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[serde(default)]
pub struct TrainCorpusConfig {
    /// Training text files (globs allowed).
    pub files: Vec<PathBuf>,
    /// `txt` (one document per line), `raw` (whole file; documents separated by the EOS literal),
    /// `jsonl`, `conllu`; `auto` decides by extension.
    pub format: TextFormat,
    /// JSON field for `jsonl`.
    pub text_field: String,
}

impl Default for TrainCorpusConfig {
    fn default() -> Self {
        TrainCorpusConfig {
            files: Default::default(),
            format: default_format(),
            text_field: default_text_field(),
        }
    }
}

fn default_format() -> TextFormat {
    TextFormat::Auto
}
fn default_text_field() -> String {
    "text".into()
}

/// Either an existing `tokenizer.json` (`path`) or a byte-level BPE trained on
/// the training corpus.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[serde(default)]
pub struct TokenizerConfig {
    /// An existing Hugging Face `tokenizer.json` (nothing is trained); when unset a byte-level
    /// BPE is trained on `train_corpus`.
    pub path: Option<PathBuf>,
    /// BPE vocabulary size (training only).
    pub vocab_size: usize,
    /// BPE minimum pair frequency (training only).
    pub min_frequency: u64,
    /// Document separator, also used as BOS and EOS (Pythia's convention).
    pub eos_token: String,
    /// More special tokens for a trained tokenizer (masked-LM suites need
    /// `["[CLS]", "[SEP]", "[MASK]"]`).
    pub extra_special_tokens: Vec<String>,
    /// The masked-LM sequence start (used only by masked-LM suites).
    pub cls_token: String,
    /// The masked-LM sequence end; also the document separator of an
    /// external masked-LM suite when `eos_token` is unset.
    pub sep_token: String,
    /// The masked-LM mask token (`dist.mlm_scoring = "masked"`, training).
    pub mask_token: String,
}

/// What a suite's models predict.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Objective {
    /// The next token (GPT-style).
    #[default]
    Causal,
    /// Masked tokens (BERT-style; 15% masking, 80/10/10).
    Mlm,
}

/// How a masked LM's distribution at a position is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MlmScoring {
    /// The MLM head at every visible position of the unmasked text (the
    /// authors' code).
    Unmasked,
    /// Each position masked in its own copy of the sequence (the
    /// pseudo-log-likelihood reading).
    Masked,
}

impl Default for TokenizerConfig {
    fn default() -> Self {
        TokenizerConfig {
            path: Default::default(),
            vocab_size: 4096,
            min_frequency: 2,
            eos_token: "<|endoftext|>".into(),
            extra_special_tokens: Default::default(),
            cls_token: "[CLS]".into(),
            sep_token: "[SEP]".into(),
            mask_token: "[MASK]".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CorpusMode {
    /// The paper's protocol: one token stream, sliding windows with stride W/2.
    Stream,
    /// Each document is its own sequence, windowed at W.
    Documents,
    /// Masked-LM suites: each document alone as `[CLS] … [SEP]`, split into
    /// chunks of at most W tokens (specials included); a row per document token.
    Mlm,
}

/// The evaluation text.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CorpusConfig {
    /// Evaluation text.
    pub path: PathBuf,
    /// Format of `path`, as `train_corpus.format`.
    #[serde(default = "default_format")]
    pub format: TextFormat,
    /// JSON field for `jsonl`.
    #[serde(default = "default_text_field")]
    pub text_field: String,
    /// `stream`: the paper's protocol (BOS, each document + separator, EOS, one stream, windows W /
    /// stride W/2); `documents`: each document its own `BOS doc EOS` sequence, windowed the same
    /// way; `mlm`: masked-LM suites, each document alone as `[CLS] … [SEP]` in chunks of at most W.
    #[serde(default = "default_mode")]
    pub mode: CorpusMode,
    /// Window length W in tokens (the model's context); stride is W/2.
    #[serde(default = "default_window")]
    pub window: usize,
    /// Keep only the first N documents (0 = all).
    #[serde(default)]
    pub max_documents: usize,
    /// What separates documents in a `raw` file (default: the tokenizer's
    /// `eos_token`, e.g. `<|endoftext|>`; the authors' BERT samples use
    /// `[SEP][CLS]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub separator: Option<String>,
    /// Masked LMs: also the rows whose target is a sequence's `[CLS]` or
    /// `[SEP]`, as the authors' code keeps them (all but the first `[CLS]`,
    /// which no row precedes, and the final `[SEP]`, which they drop).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mlm_special_rows: bool,
}

fn default_mode() -> CorpusMode {
    CorpusMode::Stream
}
fn default_window() -> usize {
    2048
}

/// Token counts for frequency bins and the unigram baseline.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[serde(default)]
pub struct FrequencyConfig {
    /// Frequency corpus (globs); empty = `train_corpus.files`; a `.npy` file is counts already
    /// made, one per token id (float64 or int64, rounded; e.g. the authors' `frequency_count.npy`),
    /// and its length must be the tokenizer's.
    pub files: Vec<PathBuf>,
    /// Format of the text files, as `train_corpus.format`.
    pub format: TextFormat,
    /// JSON field for `jsonl`.
    pub text_field: String,
}

impl Default for FrequencyConfig {
    fn default() -> Self {
        FrequencyConfig {
            files: Default::default(),
            format: TextFormat::Auto,
            text_field: "text".into(),
        }
    }
}

impl CorpusConfig {
    pub(super) fn check(&self, ck: &Check) -> Result<(), ConfigError> {
        if self.window < 2 || !self.window.is_multiple_of(2) {
            return Err(ck.bad(
                "corpus.window",
                format!("must be an even number ≥ 2 (got {})", self.window),
            ));
        }
        if self.mlm_special_rows && self.mode != CorpusMode::Mlm {
            return Err(ck.bad(
                "corpus.mlm_special_rows",
                "applies to mode = \"mlm\" only".into(),
            ));
        }
        if self.separator.as_deref() == Some("") {
            return Err(ck.bad("corpus.separator", "must not be empty".into()));
        }
        ck.file("corpus.path", &self.path)
    }
}

impl TrainCorpusConfig {
    pub(super) fn check(&self, ck: &Check) -> Result<(), ConfigError> {
        ck.files("train_corpus.files", &self.files)
    }
}

impl FrequencyConfig {
    pub(super) fn check_files(&self, ck: &Check) -> Result<(), ConfigError> {
        ck.files("frequency.files", &self.files)
    }

    /// Something to count: these files or the training text.
    pub(super) fn check_source(&self, c: &Config, ck: &Check) -> Result<(), ConfigError> {
        if self.files.is_empty() && c.train_corpus.files.is_empty() {
            return Err(ck.bad(
                "frequency.files",
                "empty, and there is no train_corpus.files to count instead".into(),
            ));
        }
        Ok(())
    }
}

impl TokenizerConfig {
    pub(super) fn check(&self, c: &Config, ck: &Check) -> Result<(), ConfigError> {
        no_duplicates(
            ck,
            "tokenizer.extra_special_tokens",
            &self.extra_special_tokens,
        )?;
        match &self.path {
            Some(p) => ck.file("tokenizer.path", p),
            None => {
                if c.train_corpus.files.is_empty() {
                    return Err(ck.bad(
                        "tokenizer",
                        "no tokenizer.path and no train_corpus.files to train one on".into(),
                    ));
                }
                if self.vocab_size < 260 {
                    return Err(ck.bad(
                        "tokenizer.vocab_size",
                        format!(
                            "must be ≥ 260 (256 bytes + special tokens), got {}",
                            self.vocab_size
                        ),
                    ));
                }
                Ok(())
            }
        }
    }
}
