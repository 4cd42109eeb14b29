//! Downstream measurements per checkpoint: BLiMP (`[blimp]`) and the
//! in-context-learning score (`[icl]`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Check, Config};
use crate::error::ConfigError;

/// Which logits a sentence's log-probability is normalised over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BlimpVocab {
    /// Every logit the model emits (the paper).
    Full,
    /// The kept vocabulary (`suite.vocab` or the tokenizer's), renormalised.
    Kept,
}

/// Per-item results of lm-evaluation-harness runs (`--log_samples`), one
/// file per checkpoint and task, compared item by item across seeds.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LmEvalConfig {
    /// Path template of a checkpoint's samples file for a task, with
    /// `{size}`, `{seed}`, `{step}` and `{task}`; its file name may hold a `*`
    /// for the harness's timestamp (`samples_{task}_*.jsonl`). Exactly one
    /// file must match.
    pub samples: String,
    /// Tasks, each `{task}` in the template (e.g. `["arc_easy", "piqa"]`).
    pub tasks: Vec<String>,
    /// The per-item metric read as correctness.
    #[serde(default = "default_metric")]
    #[schemars(extend("default" = "acc"))]
    pub metric: String,
    /// Which filter's rows to read where a task logs several per item
    /// (e.g. `strict-match`).
    #[serde(default = "default_filter")]
    #[schemars(extend("default" = "none"))]
    pub filter: String,
}

fn default_metric() -> String {
    "acc".into()
}
fn default_filter() -> String {
    "none".into()
}

impl LmEvalConfig {
    pub(super) fn check(&self, ck: &Check) -> Result<(), ConfigError> {
        for ph in ["{seed}", "{step}", "{task}"] {
            if !self.samples.contains(ph) {
                return Err(ck.bad("lm_eval.samples", format!("the template lacks {ph}")));
            }
        }
        if self.tasks.is_empty() {
            return Err(ck.bad("lm_eval.tasks", "no tasks".into()));
        }
        super::no_duplicates(ck, "lm_eval.tasks", &self.tasks)
    }
}

/// BLiMP minimal pairs scored at every checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[serde(default)]
pub struct BlimpConfig {
    /// Folder of `<paradigm>.jsonl` files (the shipped copy when the default is not beside the
    /// config).
    pub dir: PathBuf,
    /// Paradigms (file stems) to score; empty: every file in `dir`.
    pub paradigms: Vec<String>,
    /// The first N pairs of each paradigm (the paper: 100; the default pipeline: 20); a file with
    /// fewer is an error.
    pub pairs: usize,
    /// `full`: softmax over every emitted logit (the paper); `kept`: over the kept vocabulary.
    pub vocab: BlimpVocab,
    /// Sentences per ONNX Runtime call.
    pub batch_size: usize,
}

impl Default for BlimpConfig {
    fn default() -> Self {
        BlimpConfig {
            dir: PathBuf::from("data/blimp"),
            paradigms: Default::default(),
            pairs: 100,
            vocab: BlimpVocab::Full,
            batch_size: 64,
        }
    }
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

/// In-context-learning score: the loss on document token `position` (1-based)
/// given the `long_context` tokens before it, minus the loss given the
/// `short_context` tokens before it (the paper: 501, 401, 51; documents of
/// at least 505 tokens).
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[serde(default)]
pub struct IclConfig {
    /// The predicted document token (1-based); 1 ≤ short < long < position.
    pub position: usize,
    /// Tokens of the long context before it.
    pub long_context: usize,
    /// Tokens of the short context before it.
    pub short_context: usize,
    /// Documents with fewer of their own tokens (BOS/EOS not counted; the authors' 505 with both is
    /// 503 here) are skipped (≥ position).
    pub min_tokens: usize,
    /// Contexts per ONNX Runtime call.
    pub batch_size: usize,
    /// Text of the ICL documents, read like `corpus.path` (its format and
    /// separator); default: the evaluation corpus itself. The authors used
    /// a Pile sample of their own for the ICL score
    /// (`working_dir/icl_score/input_text.txt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corpus: Option<PathBuf>,
}

impl Default for IclConfig {
    fn default() -> Self {
        IclConfig {
            position: 501,
            long_context: 401,
            short_context: 51,
            min_tokens: 505,
            batch_size: 8,
            corpus: None,
        }
    }
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
        if let Some(p) = &i.corpus {
            ck.file("icl.corpus", p)?;
        }
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
