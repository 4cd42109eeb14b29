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

/// An external suite's seed: a number (`3`) or a name (`"data-seed1"`),
/// each `{seed}` in the path template.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(untagged)]
pub enum SeedName {
    Number(u64),
    Name(String),
}

impl std::fmt::Display for SeedName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SeedName::Number(n) => write!(f, "{n}"),
            SeedName::Name(s) => f.write_str(s),
        }
    }
}

/// A seed's factors: what its run varied, e.g. `{ init = 1, data = 0 }`.
pub type Factors = std::collections::BTreeMap<String, u64>;

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
    /// Seed labels, each `{seed}` in the template: numbers (`[1, 3, 5,
    /// 7, 9]`) or names (`["data-seed1", "weight-seed1"]`; letters, digits,
    /// `.`, `_`, `-`).
    pub seeds: Vec<SeedName>,
    /// What each seed's run varied, by factor (e.g. `"data-seed1" = {
    /// init = 0, data = 1 }`): every seed, the same factors. With factors,
    /// `aggregate` splits the divergence by the factors a pair differs in
    /// (`seed_factors.parquet`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub seed_factors: std::collections::BTreeMap<String, Factors>,
    /// A name per run, `{run}` in `models` and `fetch`, keyed
    /// `"{size}/{seed}"` (runs whose hub names do not follow one pattern,
    /// e.g. Mistral's `alias-gpt2-small-x21`); every size and seed.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub runs: std::collections::BTreeMap<String, String>,
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

impl SuiteConfig {
    fn check_runs(&self, ck: &Check, used: bool) -> Result<(), ConfigError> {
        let seeds: Vec<String> = self.seeds.iter().map(|s| s.to_string()).collect();
        for key in self.runs.keys() {
            let ok = key.split_once('/').is_some_and(|(z, s)| {
                self.size_names().iter().any(|x| x == z) && seeds.iter().any(|x| x == s)
            });
            if !ok {
                return Err(ck.bad(
                    "suite.runs",
                    format!("{key:?} is not \"size/seed\" of a listed size and seed"),
                ));
            }
        }
        if used {
            for z in self.size_names() {
                for s in &seeds {
                    if !self.runs.contains_key(&format!("{z}/{s}")) {
                        return Err(ck.bad(
                            "suite.runs",
                            format!(
                                "the templates use {{run}} but no run is named for \"{z}/{s}\""
                            ),
                        ));
                    }
                }
            }
        } else if !self.runs.is_empty() {
            return Err(ck.bad(
                "suite.runs",
                "neither suite.models nor suite.fetch uses {run}".into(),
            ));
        }
        Ok(())
    }

    fn check_factors(&self, ck: &Check) -> Result<(), ConfigError> {
        if self.seed_factors.is_empty() {
            return Ok(());
        }
        let seeds: Vec<String> = self.seeds.iter().map(|s| s.to_string()).collect();
        if let Some(k) = self.seed_factors.keys().find(|k| !seeds.contains(k)) {
            return Err(ck.bad("suite.seed_factors", format!("{k:?} is not a listed seed")));
        }
        if let Some(s) = seeds.iter().find(|s| !self.seed_factors.contains_key(*s)) {
            return Err(ck.bad(
                "suite.seed_factors",
                format!("seed {s:?} has no factors (give every seed)"),
            ));
        }
        let names = |f: &Factors| f.keys().cloned().collect::<Vec<_>>();
        let first = names(self.seed_factors.values().next().expect("not empty"));
        if first.is_empty() {
            return Err(ck.bad("suite.seed_factors", "no factors given".into()));
        }
        if let Some((s, f)) = self.seed_factors.iter().find(|(_, f)| names(f) != first) {
            return Err(ck.bad(
                "suite.seed_factors",
                format!(
                    "seed {s:?} has factors {} where the others have {}",
                    names(f).join(", "),
                    first.join(", ")
                ),
            ));
        }
        Ok(())
    }
}

/// The size name of a suite whose path template has no `{size}`.
pub const ONE_SIZE: &str = "model";

impl SuiteConfig {
    /// A template (`models`, `fetch`) with `{size}`, `{seed}`, `{step}`
    /// and `{run}` filled in (`{out}` stays).
    pub fn expand(&self, template: &str, size: &str, seed: &str, step: usize) -> String {
        let mut t = template
            .replace("{size}", size)
            .replace("{seed}", seed)
            .replace("{step}", &step.to_string());
        if let Some(run) = self.runs.get(&format!("{size}/{seed}")) {
            t = t.replace("{run}", run);
        }
        t
    }

    /// The seeds' factors by label, when given.
    pub fn factors(&self) -> Option<std::collections::BTreeMap<String, Factors>> {
        (!self.seed_factors.is_empty()).then(|| self.seed_factors.clone())
    }

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
        let uses_run = su.models.contains("{run}");
        let needed: &[&str] = match (su.sizes.len() > 1, uses_run) {
            (_, true) => &["{step}"],
            (true, false) => &["{size}", "{seed}", "{step}"],
            (false, false) => &["{seed}", "{step}"],
        };
        for ph in needed {
            if !su.models.contains(ph) {
                return Err(ck.bad("suite.models", format!("the path template lacks {ph}")));
            }
        }
        for seed in &su.seeds {
            if let SeedName::Name(n) = seed {
                if n.is_empty()
                    || !n
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
                {
                    return Err(ck.bad(
                        "suite.seeds",
                        format!("{n:?}: a seed name is letters, digits, '.', '_' and '-'"),
                    ));
                }
            }
        }
        self.check_runs(
            ck,
            uses_run || su.fetch.as_ref().is_some_and(|f| f.contains("{run}")),
        )?;
        self.check_factors(ck)?;
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
