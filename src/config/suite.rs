//! The seed suite: built-in (`[train]`) or external ONNX checkpoints
//! (`[suite]`).

use serde::{Deserialize, Serialize};

use super::{no_duplicates, Check, Config, Objective};
use crate::error::ConfigError;

/// One model size of a built-in suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SizeConfig {
    /// Transformer blocks.
    pub layers: usize,
    /// Width of the residual stream (a multiple of `heads`).
    pub d_model: usize,
    /// Attention heads.
    pub heads: usize,
    /// Context length (learned positions): also the training window.
    pub context: usize,
}

/// A seed: one number for both initialisation and data order, or the two
/// separately (PolyPythia's decoupled runs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum SeedSpec {
    Both(u64),
    Split { init_seed: u64, data_seed: u64 },
}

impl SeedSpec {
    pub fn init(&self) -> u64 {
        match *self {
            SeedSpec::Both(s) => s,
            SeedSpec::Split { init_seed, .. } => init_seed,
        }
    }
    pub fn data(&self) -> u64 {
        match *self {
            SeedSpec::Both(s) => s,
            SeedSpec::Split { data_seed, .. } => data_seed,
        }
    }
    /// What `{seed}` expands to: `3`, or `i3-d5` for split seeds.
    pub fn label(&self) -> String {
        match *self {
            SeedSpec::Both(s) => s.to_string(),
            SeedSpec::Split {
                init_seed,
                data_seed,
            } => format!("i{init_seed}-d{data_seed}"),
        }
    }
}

/// A built-in seed suite: sizes × seeds, trained on `train_corpus`.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// `causal` (default) or `mlm`: BERT-style masked LMs.
    #[serde(default, skip_serializing_if = "is_causal")]
    #[schemars(extend("default" = "causal"))]
    pub objective: Objective,
    /// List of seeds: `3` or `{ init_seed = 1, data_seed = 2 }`.
    pub seeds: Vec<SeedSpec>,
    /// Model sizes by name (the name is `{size}` in paths).
    pub sizes: std::collections::BTreeMap<String, SizeConfig>,
    /// Optimizer updates per run.
    pub steps: usize,
    /// Windows per update (each `context` + 1 tokens).
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Peak learning rate.
    #[serde(default = "default_lr")]
    pub learning_rate: f64,
    /// Warmup as a fraction of `steps` (Pythia: 1%).
    #[serde(default = "default_warmup")]
    pub warmup_fraction: f64,
    /// Final learning rate of the cosine decay, as a fraction of the peak.
    #[serde(default = "default_min_lr")]
    pub min_lr_fraction: f64,
    /// AdamW weight decay (matrices only).
    #[serde(default = "default_wd")]
    pub weight_decay: f64,
    /// Checkpoint steps; empty = 0, 1, 2, 4, …, 512, every doubling, last.
    #[serde(default)]
    pub checkpoints: Vec<usize>,
    /// Steps between rows of `loss.parquet`.
    #[serde(default = "default_log_every")]
    pub log_every: usize,
    /// Pad the logits to a multiple of this many columns (Pythia: 128).
    #[serde(default = "default_pad")]
    pub pad_vocab_multiple: usize,
    /// Windows on which each exported checkpoint is checked against the
    /// training forward pass.
    #[serde(default = "default_check_windows")]
    pub check_windows: usize,
    /// Largest |Δ logit| allowed between ONNX Runtime and the training forward.
    #[serde(default = "default_check_tolerance")]
    pub check_tolerance: f64,
}

fn default_batch() -> usize {
    16
}
fn default_lr() -> f64 {
    1e-3
}
fn default_warmup() -> f64 {
    0.01
}
fn default_min_lr() -> f64 {
    0.1
}
fn default_wd() -> f64 {
    0.01
}
fn default_log_every() -> usize {
    10
}
fn default_pad() -> usize {
    1
}
fn default_check_windows() -> usize {
    4
}
fn default_check_tolerance() -> f64 {
    1e-4
}

/// An external multi-seed suite: model files found through a path template.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SuiteConfig {
    /// `causal` (default) or `mlm` (inputs input_ids, attention_mask,
    /// token_type_ids; output logits at every position).
    #[serde(default, skip_serializing_if = "is_causal")]
    #[schemars(extend("default" = "causal"))]
    pub kind: Objective,
    /// Path template with `{size}`, `{seed}` and `{step}`, e.g.
    /// `models/pythia-{size}-seed{seed}/step{step}/model.onnx`.
    pub models: String,
    /// Needed only when the template has `{size}`; one unnamed size is
    /// called `ONE_SIZE`.
    #[serde(default)]
    pub sizes: Vec<String>,
    /// Seed labels, each `{seed}` in the template (e.g. `[1, 3, 5, 7, 9]`).
    pub seeds: Vec<u64>,
    /// Checkpoint steps, each `{step}` in the template; a step missing a
    /// checkpoint of some seed is an error naming the file.
    pub steps: Vec<usize>,
    /// Keep the first N logits and renormalise (default: the tokenizer's
    /// vocabulary; Pythia emits 50,304 logits for 50,277 tokens).
    #[serde(default)]
    pub vocab: Option<usize>,
    /// A command that makes a checkpoint whose file does not exist yet, run
    /// by the `fetch` stage in a fresh folder of the store: placeholders
    /// `{size}`, `{seed}`, `{step}`, `{out}` (e.g. an `optimum-cli export
    /// onnx` call). It must leave `{out}/model.onnx`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fetch: Option<String>,
    /// Fetched models kept on disk: `all`, or `until_consumed` (deleted
    /// once every instance that reads them has finished).
    #[serde(default, skip_serializing_if = "Keep::is_all")]
    #[schemars(extend("default" = "all"))]
    pub keep: Keep,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Keep {
    #[default]
    All,
    UntilConsumed,
}

impl Keep {
    fn is_all(&self) -> bool {
        *self == Keep::All
    }
}

/// How checkpoints are fetched (`[fetch]`).
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[serde(default)]
pub struct FetchConfig {
    /// Fetches run at once in a local run (network-bound: they do not take
    /// the cores' slots).
    pub jobs: usize,
    /// With `suite.keep = "until_consumed"`: checkpoint groups (one size ×
    /// step, every seed) on disk at once.
    pub max_groups_on_disk: usize,
}

impl Default for FetchConfig {
    fn default() -> Self {
        FetchConfig {
            jobs: 2,
            max_groups_on_disk: 2,
        }
    }
}

fn is_causal(o: &Objective) -> bool {
    *o == Objective::Causal
}

impl TrainConfig {
    pub(super) fn check(&self, c: &Config, ck: &Check) -> Result<(), ConfigError> {
        let t = self;
        if c.train_corpus.files.is_empty() {
            return Err(ck.bad("train", "a built-in suite needs train_corpus.files".into()));
        }
        if t.seeds.is_empty() {
            return Err(ck.bad("train.seeds", "no seeds".into()));
        }
        let labels: Vec<String> = t.seeds.iter().map(|s| s.label()).collect();
        no_duplicates(ck, "train.seeds", &labels)?;
        no_duplicates(ck, "train.checkpoints", &t.checkpoints)?;
        if t.sizes.is_empty() {
            return Err(ck.bad("train.sizes", "no model sizes".into()));
        }
        for (name, s) in &t.sizes {
            let key = format!("train.sizes.{name}");
            if !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.".contains(c))
            {
                return Err(ck.bad(
                    &key,
                    "size names may use letters, digits, `_` and `.`".into(),
                ));
            }
            if s.layers == 0 || s.heads == 0 || s.d_model == 0 || s.d_model % s.heads != 0 {
                return Err(ck.bad(
                    &key,
                    format!(
                        "d_model ({}) must be a positive multiple of heads ({}), layers ≥ 1",
                        s.d_model, s.heads
                    ),
                ));
            }
            if s.context < 2 {
                return Err(ck.bad(&key, "context must be ≥ 2".into()));
            }
        }
        if t.steps == 0 || t.batch_size == 0 || t.pad_vocab_multiple == 0 {
            return Err(ck.bad(
                "train",
                "steps, batch_size and pad_vocab_multiple must be ≥ 1".into(),
            ));
        }
        if !(0.0..1.0).contains(&t.warmup_fraction) || !(0.0..=1.0).contains(&t.min_lr_fraction) {
            return Err(ck.bad(
                "train",
                "warmup_fraction must be in [0, 1) and min_lr_fraction in [0, 1]".into(),
            ));
        }
        if let Some((name, s)) = t.sizes.iter().find(|(_, s)| s.context < c.corpus.window) {
            return Err(ck.bad(
                "corpus.window",
                format!(
                    "{} is longer than the context of size {name} ({}): windows must fit the model",
                    c.corpus.window, s.context
                ),
            ));
        }
        if let Some(&s) = t.checkpoints.iter().find(|&&s| s > t.steps) {
            return Err(ck.bad(
                "train.checkpoints",
                format!("step {s} is beyond train.steps = {}", t.steps),
            ));
        }
        Ok(())
    }
}

/// The size name of a suite whose path template has no `{size}`.
pub const ONE_SIZE: &str = "model";

impl SuiteConfig {
    /// The sizes: as listed, or the one unnamed size.
    pub fn size_names(&self) -> Vec<String> {
        if self.sizes.is_empty() {
            vec![ONE_SIZE.to_string()]
        } else {
            self.sizes.clone()
        }
    }

    pub(super) fn check(&self, c: &Config, ck: &Check) -> Result<(), ConfigError> {
        let su = self;
        if c.train.is_some() {
            return Err(ck.bad(
                "suite",
                "give either [suite] (external checkpoints) or [train] (built-in), not both".into(),
            ));
        }
        no_duplicates(ck, "suite.sizes", &su.sizes)?;
        no_duplicates(ck, "suite.seeds", &su.seeds)?;
        no_duplicates(ck, "suite.steps", &su.steps)?;
        if su.sizes.is_empty() && su.models.contains("{size}") {
            return Err(ck.bad(
                "suite.sizes",
                "the path template has {size}: list the sizes".into(),
            ));
        }
        let needed: &[&str] = if su.sizes.len() > 1 {
            &["{size}", "{seed}", "{step}"]
        } else {
            &["{seed}", "{step}"]
        };
        for ph in needed {
            if !su.models.contains(ph) {
                return Err(ck.bad("suite.models", format!("the path template lacks {ph}")));
            }
        }
        if su.seeds.len() < 2 || su.steps.is_empty() {
            return Err(ck.bad("suite", "needs at least two seeds, and steps".into()));
        }
        if su.vocab == Some(0) {
            return Err(ck.bad("suite.vocab", "must be ≥ 1".into()));
        }
        if let Some(cmd) = &su.fetch {
            if !cmd.contains("{out}") && !cmd.contains("SEEDCONV_OUT") {
                return Err(ck.bad(
                    "suite.fetch",
                    "the command must write into {out} (or $SEEDCONV_OUT)".into(),
                ));
            }
        }
        if c.fetch.jobs == 0 || c.fetch.max_groups_on_disk == 0 {
            return Err(ck.bad("fetch", "jobs and max_groups_on_disk must be ≥ 1".into()));
        }
        Ok(())
    }
}
