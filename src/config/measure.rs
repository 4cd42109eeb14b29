//! The measurement: distributions (`[dist]`), KL (`[kl]`), per-row
//! annotations (`[annotate]`) and the analysis tables (`[aggregate]`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Check, Config, MlmScoring, TextFormat};
use crate::error::ConfigError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    /// CUDA when available, else CPU with a warning.
    Auto,
    Cpu,
    /// CUDA or fail.
    Cuda,
}

/// Where dist computes its row statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Statistics {
    /// In the graph on CUDA (the logits stay on the device), else on the host.
    Auto,
    /// The vectorised Rust pass over logits in host memory.
    Host,
    /// A graph in ONNX Runtime on the model's device (`lm::onnx::statgraph`).
    Graph,
}

/// Per-checkpoint next-token distributions.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistConfig {
    /// Top-k token ids and log-probs stored per row.
    #[serde(default = "default_top_k")]
    pub top_k: usize,
    /// Windows per ONNX Runtime call.
    #[serde(default = "default_dist_batch")]
    pub batch_size: usize,
    /// ONNX Runtime intra-op threads (0: all cores).
    #[serde(default)]
    pub threads: usize,
    #[serde(default = "default_device")]
    pub device: Device,
    /// Row statistics on the host or in the ONNX Runtime graph (unkeyed:
    /// the two agree within 1e-6 nats).
    #[serde(default = "default_statistics")]
    pub statistics: Statistics,
    /// Keep the full log-probability arrays after the kl stage used them
    /// (then adding a seed recomputes no other seed's forward pass).
    #[serde(default)]
    pub retain_full: bool,
    /// GB of transient full arrays (dist → kl) on disk at once; beyond it a
    /// kl instance runs the missing seeds' models again.
    #[serde(default = "default_scratch_budget")]
    pub scratch_budget: f64,
    /// Masked-LM suites only, and required there: `unmasked` or `masked`.
    #[serde(default)]
    pub mlm_scoring: Option<MlmScoring>,
}

impl Default for DistConfig {
    fn default() -> Self {
        DistConfig {
            top_k: default_top_k(),
            batch_size: default_dist_batch(),
            threads: 0,
            device: default_device(),
            statistics: default_statistics(),
            retain_full: false,
            scratch_budget: default_scratch_budget(),
            mlm_scoring: None,
        }
    }
}

/// Entries of each row's top list by default. 16 and not 64: the lists are
/// for inspection (KL always comes from the full distributions), and on the
/// tiny default models selecting and storing 64 per row cost more than the
/// rest of dist beside ONNX Runtime (README, "bench dist --top-k").
pub const DEFAULT_TOP_K: usize = 16;

fn default_top_k() -> usize {
    DEFAULT_TOP_K
}
fn default_scratch_budget() -> f64 {
    8.0
}
impl DistConfig {
    pub fn scratch_budget_bytes(&self) -> u64 {
        (self.scratch_budget.max(0.0) * 1e9) as u64
    }
}
fn default_dist_batch() -> usize {
    16
}
fn default_device() -> Device {
    Device::Auto
}
fn default_statistics() -> Statistics {
    Statistics::Auto
}

/// Exact KL across seeds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KlConfig {
    /// k values for which the error of a top-k KL estimate is measured.
    #[serde(default = "default_validation_k")]
    pub validation_k: Vec<usize>,
    /// Rows per (size, step) the validation measures, evenly spaced: every
    /// ⌈rows / validation_rows⌉-th row (0: every row). The estimate needs
    /// each seed's exact top-k of every validated row, which on a Pythia
    /// group costs 0.6× the exact pass when every row is validated; 256
    /// rows put the relative errors' standard errors at a few tenths to
    /// three percentage points on the default suite.
    #[serde(default = "default_validation_rows")]
    pub validation_rows: usize,
}

impl Default for KlConfig {
    fn default() -> Self {
        KlConfig {
            validation_k: default_validation_k(),
            validation_rows: default_validation_rows(),
        }
    }
}

fn default_validation_k() -> Vec<usize> {
    vec![16, 64, 256]
}
fn default_validation_rows() -> usize {
    256
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PosSource {
    /// Gold tags for CoNLL-U corpora, the built-in tagger otherwise.
    Auto,
    Gold,
    Tagger,
    /// Tags aligned to the corpus token stream, read from `annotate.pos_file`.
    File,
}

/// Per-row annotations.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnnotateConfig {
    #[serde(default = "default_pos")]
    pub pos: PosSource,
    /// CoNLL-U files the built-in tagger trains on (Penn XPOS)…
    #[serde(default = "default_tagger_train")]
    pub tagger_train: PathBuf,
    /// …and is scored on.
    #[serde(default = "default_tagger_test")]
    pub tagger_test: PathBuf,
    /// With `pos = "file"`: one Penn tag per stream token — a JSON list of
    /// `[token, tag]` (the authors' `pos_tagged_tokens.json`), or a Parquet
    /// / CSV table with `token_index, tag` (and optionally `token`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pos_file: Option<PathBuf>,
    /// Regexes over each document's text whose matches are left untagged
    /// (UNK), e.g. markup blocks that are not prose (the authors erased two
    /// HTML/CSS blocks of their sample).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
}

impl Default for AnnotateConfig {
    fn default() -> Self {
        AnnotateConfig {
            pos: default_pos(),
            tagger_train: default_tagger_train(),
            tagger_test: default_tagger_test(),
            pos_file: None,
            exclude: Vec::new(),
        }
    }
}

fn default_pos() -> PosSource {
    PosSource::Auto
}
pub(super) fn default_tagger_train() -> PathBuf {
    PathBuf::from("data/ud_english_ewt/en_ewt-ud-train.conllu")
}
pub(super) fn default_tagger_test() -> PathBuf {
    PathBuf::from("data/ud_english_ewt/en_ewt-ud-test.conllu")
}

/// The analysis tables.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateConfig {
    /// Bootstrap replicates for the E[conv] interval (0: none).
    #[serde(default = "default_bootstrap")]
    pub bootstrap: usize,
    #[serde(default)]
    pub bootstrap_seed: u64,
    /// Cells with fewer rows are flagged (`few_rows`), not dropped.
    #[serde(default = "default_min_rows")]
    pub min_rows: usize,
    /// "mean" over seeds (default) or one seed's label (the paper: seed 1).
    #[serde(default = "default_surprisal_seed")]
    pub final_surprisal_seed: String,
    /// Tokens in each of the lowest / middle / highest groups of the token table.
    #[serde(default = "default_token_n")]
    pub token_table_n: usize,
    /// Also write `token_table_pooled.parquet`, the authors' table: pooled
    /// over sizes, UNK-tagged targets left out.
    #[serde(default)]
    pub token_table_pooled: bool,
    /// Relative band around the step-0 E[KL] that counts as "unchanged" when
    /// locating the four phases.
    #[serde(default = "default_phase_tol")]
    pub phase_tolerance: f64,
}

fn default_phase_tol() -> f64 {
    0.05
}

impl Default for AggregateConfig {
    fn default() -> Self {
        AggregateConfig {
            bootstrap: default_bootstrap(),
            bootstrap_seed: 0,
            min_rows: default_min_rows(),
            final_surprisal_seed: default_surprisal_seed(),
            token_table_n: default_token_n(),
            token_table_pooled: false,
            phase_tolerance: default_phase_tol(),
        }
    }
}

fn default_bootstrap() -> usize {
    1000
}
fn default_min_rows() -> usize {
    30
}
fn default_surprisal_seed() -> String {
    "mean".into()
}
fn default_token_n() -> usize {
    20
}

impl AnnotateConfig {
    pub(super) fn check(&self, c: &Config, ck: &Check) -> Result<(), ConfigError> {
        if c.uses_tagger() {
            ck.file("annotate.tagger_train", &self.tagger_train)?;
            ck.file("annotate.tagger_test", &self.tagger_test)?;
        }
        if self.pos == PosSource::Gold
            && !matches!(c.corpus.format, TextFormat::Conllu | TextFormat::Auto)
        {
            return Err(ck.bad("annotate.pos", "gold tags need a CoNLL-U corpus".into()));
        }
        match (&self.pos, &self.pos_file) {
            (PosSource::File, None) => {
                return Err(ck.bad(
                    "annotate.pos_file",
                    "pos = \"file\" needs annotate.pos_file (JSON [token, tag] list, or Parquet/CSV with token_index, tag)".into(),
                ))
            }
            (PosSource::File, Some(f)) => {
                ck.file("annotate.pos_file", f)?;
                let ext = f.extension().and_then(|e| e.to_str()).unwrap_or("");
                if !matches!(ext, "json" | "parquet" | "csv") {
                    return Err(ck.bad(
                        "annotate.pos_file",
                        format!("{}: expected a .json, .parquet or .csv file", f.display()),
                    ));
                }
            }
            _ => {}
        }
        for (i, re) in self.exclude.iter().enumerate() {
            if let Err(e) = regex::Regex::new(re) {
                let first = e.to_string().lines().last().unwrap_or_default().to_string();
                return Err(ck.bad(
                    &format!("annotate.exclude[{i}]"),
                    format!("not a regex: {}", first.trim()),
                ));
            }
        }
        Ok(())
    }
}

impl AggregateConfig {
    pub(super) fn check(&self, c: &Config, ck: &Check) -> Result<(), ConfigError> {
        if self.final_surprisal_seed != "mean" {
            let seeds = super::suite_seeds(c);
            if !seeds.contains(&self.final_surprisal_seed) {
                return Err(ck.bad(
                    "aggregate.final_surprisal_seed",
                    format!(
                        "\"{}\" is neither \"mean\" nor a seed of the suite ({})",
                        self.final_surprisal_seed,
                        seeds.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl KlConfig {
    pub(super) fn check(&self, ck: &Check) -> Result<(), ConfigError> {
        super::no_duplicates(ck, "kl.validation_k", &self.validation_k)
    }
}

impl DistConfig {
    pub(super) fn check(&self, ck: &Check) -> Result<(), ConfigError> {
        if self.top_k == 0 || self.batch_size == 0 {
            return Err(ck.bad("dist", "top_k and batch_size must be ≥ 1".into()));
        }
        Ok(())
    }
}
