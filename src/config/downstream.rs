//! Downstream measurements per checkpoint: BLiMP (`[blimp]`) and the
//! in-context-learning score (`[icl]`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Check, Config};
use crate::error::ConfigError;

/// Which logits a sentence's log-probability is normalised over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlimpVocab {
    /// Every logit the model emits (the paper).
    Full,
    /// The kept vocabulary (`suite.vocab` or the tokenizer's), renormalised.
    Kept,
}

/// BLiMP minimal pairs scored at every checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlimpConfig {
    /// Folder of BLiMP paradigm files `<UID>.jsonl`.
    #[serde(default = "default_blimp_dir")]
    pub dir: PathBuf,
    /// Paradigms (file stems) to score; empty: every file in `dir`.
    #[serde(default)]
    pub paradigms: Vec<String>,
    /// The first N pairs of each paradigm (the paper: 100).
    #[serde(default = "default_blimp_pairs")]
    pub pairs: usize,
    #[serde(default = "default_blimp_vocab")]
    pub vocab: BlimpVocab,
    /// Sentences per ONNX Runtime call.
    #[serde(default = "default_blimp_batch")]
    pub batch_size: usize,
}

impl BlimpConfig {
    /// The paradigm files, sorted by name.
    pub fn files(&self) -> Vec<PathBuf> {
        if self.paradigms.is_empty() {
            let mut v: Vec<PathBuf> = std::fs::read_dir(&self.dir)
                .map(|d| {
                    d.flatten()
                        .map(|e| e.path())
                        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
                        .collect()
                })
                .unwrap_or_default();
            v.sort();
            v
        } else {
            let mut v: Vec<PathBuf> = self
                .paradigms
                .iter()
                .map(|p| self.dir.join(format!("{p}.jsonl")))
                .collect();
            v.sort();
            v
        }
    }
}

pub(super) fn default_blimp_dir() -> PathBuf {
    PathBuf::from("data/blimp")
}
fn default_blimp_pairs() -> usize {
    100
}
fn default_blimp_vocab() -> BlimpVocab {
    BlimpVocab::Full
}
fn default_blimp_batch() -> usize {
    64
}

/// In-context-learning score: the loss on document token `position` (1-based)
/// given the `long_context` tokens before it, minus the loss given the
/// `short_context` tokens before it (the paper: 501, 401, 51; documents of
/// at least 505 tokens).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IclConfig {
    #[serde(default = "default_icl_position")]
    pub position: usize,
    #[serde(default = "default_icl_long")]
    pub long_context: usize,
    #[serde(default = "default_icl_short")]
    pub short_context: usize,
    /// Documents shorter than this (in tokens) are skipped.
    #[serde(default = "default_icl_min")]
    pub min_tokens: usize,
    #[serde(default = "default_icl_batch")]
    pub batch_size: usize,
}

fn default_icl_position() -> usize {
    501
}
fn default_icl_long() -> usize {
    401
}
fn default_icl_short() -> usize {
    51
}
fn default_icl_min() -> usize {
    505
}
fn default_icl_batch() -> usize {
    8
}

impl BlimpConfig {
    pub(super) fn check(&self, ck: &Check) -> Result<(), ConfigError> {
        super::no_duplicates(ck, "blimp.paradigms", &self.paradigms)?;
        if !self.dir.is_dir() {
            return Err(ck.bad(
                "blimp.dir",
                format!("folder {} does not exist", self.dir.display()),
            ));
        }
        let files = self.files();
        if files.is_empty() {
            return Err(ck.bad(
                "blimp.dir",
                format!("{} has no .jsonl paradigm files", self.dir.display()),
            ));
        }
        for f in &files {
            ck.file("blimp.paradigms", f)?;
        }
        if self.pairs == 0 || self.batch_size == 0 {
            return Err(ck.bad("blimp", "pairs and batch_size must be ≥ 1".into()));
        }
        Ok(())
    }
}

impl IclConfig {
    pub(super) fn check(&self, c: &Config, ck: &Check) -> Result<(), ConfigError> {
        let i = self;
        if !(i.short_context >= 1
            && i.short_context < i.long_context
            && i.long_context < i.position
            && i.position <= i.min_tokens
            && i.batch_size >= 1)
        {
            return Err(ck.bad(
                "icl",
                format!(
                    "needs 1 ≤ short_context < long_context < position ≤ min_tokens and batch_size ≥ 1 (got {}, {}, {}, {})",
                    i.short_context, i.long_context, i.position, i.min_tokens
                ),
            ));
        }
        if let Some(t) = &c.train {
            if let Some((name, s)) = t.sizes.iter().find(|(_, s)| s.context < i.long_context) {
                return Err(ck.bad(
                    "icl.long_context",
                    format!(
                        "{} exceeds the context of size {name} ({})",
                        i.long_context, s.context
                    ),
                ));
            }
        }
        Ok(())
    }
}
