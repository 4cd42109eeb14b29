//! The measurement: distributions (`[dist]`), KL (`[kl]`), per-row
//! annotations (`[annotate]`) and the analysis tables (`[aggregate]`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Check, Config, MlmScoring, TextFormat};
use crate::error::ConfigError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    /// CUDA when available, else CPU with a warning.
    Auto,
    Cpu,
    /// CUDA or fail.
    Cuda,
}

/// Where dist computes its row statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
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
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[serde(default)]
pub struct DistConfig {
    /// Top-k ids and log-probs stored per row, for inspection (KL always comes from the full
    /// distributions); 16 since `bench dist --top-k` showed 64 cost more than the rest of dist beside ONNX Runtime on tiny models.
    pub top_k: usize,
    /// Windows per ONNX Runtime call.
    pub batch_size: usize,
    /// ONNX Runtime threads (0: the engine's share of the cores); with 2 or more on the CPU, a
    /// model file ≤ 512 MB and batches' logits ≤ 256 MB, two sessions of half as many run
    /// alternating batches.
    pub threads: usize,
    /// `auto` (CUDA if present, else CPU with a warning), `cpu`, `cuda` (failure is an error).
    pub device: Device,
    /// Where the row statistics are computed: `auto` (in an ONNX Runtime graph on CUDA, the logits
    /// kept on the device; the Rust pass on the CPU), `host`, `graph`; unkeyed (they agree within
    /// 1e-6 nats).
    pub statistics: Statistics,
    /// Keep the full log-probability arrays after the kl stage used them
    /// (then adding a seed recomputes no other seed's forward pass).
    pub retain_full: bool,
    /// GB of transient full arrays (dist → kl) on disk at once; beyond it a
    /// kl instance runs the missing seeds' models again.
    pub scratch_budget: f64,
    /// Masked-LM suites only, and required there: `unmasked` or `masked`.
    pub mlm_scoring: Option<MlmScoring>,
}

impl Default for DistConfig {
    fn default() -> Self {
        DistConfig {
            top_k: DEFAULT_TOP_K,
            batch_size: 16,
            threads: Default::default(),
            device: Device::Auto,
            statistics: Statistics::Auto,
            retain_full: Default::default(),
            scratch_budget: 8.0,
            mlm_scoring: Default::default(),
        }
    }
}

/// Entries of each row's top list by default. 16 and not 64: the lists are
/// for inspection (KL always comes from the full distributions), and on the
/// tiny default models selecting and storing 64 per row cost more than the
/// rest of dist beside ONNX Runtime (docs/benchmarks.md, "bench dist --top-k").
pub const DEFAULT_TOP_K: usize = 16;

/// `seedconv explore`'s port, which the report's links name.
pub const EXPLORE_PORT: u16 = 8737;

impl DistConfig {
    pub fn scratch_budget_bytes(&self) -> u64 {
        (self.scratch_budget.max(0.0) * 1e9) as u64
    }
}

/// Exact KL across seeds.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[serde(default)]
pub struct KlConfig {
    /// k values for which the error of a top-k KL estimate is measured.
    pub validation_k: Vec<usize>,
    /// Rows per (size, step) the validation measures, evenly spaced: every
    /// ⌈rows / validation_rows⌉-th row (0: every row). The estimate needs
    /// each seed's exact top-k of every validated row, which on a Pythia
    /// group costs 0.6× the exact pass when every row is validated; 256
    /// rows put the relative errors' standard errors at a few tenths to
    /// three percentage points on the default suite.
    pub validation_rows: usize,
    /// Trajectories (the `drift` stage): each checkpoint's exact KL and TV
    /// to its own previous and final checkpoints, and, in suites with
    /// several sizes of one vocabulary width, between the sizes of one seed
    /// at each step. Each checkpoint's model runs once more per comparison
    /// group unless `dist.retain_full` holds its array. Not with fetched
    /// checkpoints kept `until_consumed` (a trajectory needs every step's
    /// model on disk at once).
    pub drift: bool,
    /// MB of full log-prob arrays `kl` and `drift` hold in memory at once:
    /// rows are compared in spans that fit (all seeds' arrays, or drift's
    /// three), and a span's pages leave the process once compared. Bounds
    /// their resident memory whatever the suite's rows and vocabulary (a
    /// Pythia group's five arrays are 4.7 GB). Speed only: the bytes out are
    /// the same at any value.
    pub resident_mb: usize,
}

impl Default for KlConfig {
    fn default() -> Self {
        KlConfig {
            validation_k: vec![16, 64, 256],
            validation_rows: 256,
            drift: true,
            resident_mb: 128,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
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
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[serde(default)]
pub struct AnnotateConfig {
    /// `auto` (gold tags for CoNLL-U, the built-in tagger otherwise), `gold`, `tagger`, `file`.
    pub pos: PosSource,
    /// CoNLL-U file the built-in tagger trains on (its Penn XPOS tags; the
    /// shipped copy when the default is not beside the config).
    pub tagger_train: PathBuf,
    /// CoNLL-U file the built-in tagger's accuracy is measured on.
    pub tagger_test: PathBuf,
    /// With `pos = "file"`: one Penn tag per stream token — a JSON list of
    /// `[token, tag]` (the authors' `pos_tagged_tokens.json`), or a Parquet
    /// / CSV table with `token_index, tag` (and optionally `token`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pos_file: Option<PathBuf>,
    /// Regexes over each document's text whose matches are left untagged
    /// (UNK), e.g. markup blocks that are not prose (the authors erased two
    /// HTML/CSS blocks of their sample).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    /// User labels, a CSV or Parquet table with `label` and either `doc`
    /// (per document) or `row` (per row): the conditioning variable `label`
    /// of `conv_by` / `ce_by` (e.g. a domain, or code vs prose).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<PathBuf>,
}

impl Default for AnnotateConfig {
    fn default() -> Self {
        AnnotateConfig {
            pos: PosSource::Auto,
            tagger_train: PathBuf::from("data/ud_english_ewt/en_ewt-ud-train.conllu"),
            tagger_test: PathBuf::from("data/ud_english_ewt/en_ewt-ud-test.conllu"),
            pos_file: Default::default(),
            exclude: Default::default(),
            labels: Default::default(),
        }
    }
}

/// The design of the regression of per-row KL (`aggregate.regression`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RegressionModel {
    /// seedconv's own: per-size intercepts and six part-of-speech group flags.
    Groups,
    /// The authors' design: a dummy per Penn tag and per size, minimum norm.
    Paper,
}

impl RegressionModel {
    pub fn name(self) -> &'static str {
        match self {
            RegressionModel::Groups => "groups",
            RegressionModel::Paper => "paper",
        }
    }
}

/// A paired comparison of two cells of E[conv] (`[[compare]]`): a − b, with
/// its interval and p-value, in `aggregate/compare.parquet`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CompareConfig {
    /// The comparison's name in the table and the report.
    pub name: String,
    pub a: Selection,
    pub b: Selection,
}

/// One arm of a comparison: E[conv] at a size and step, over all rows or
/// over the rows of one level of a conditioning variable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Selection {
    /// A model size of the suite.
    pub size: String,
    /// A checkpoint step of the suite.
    pub step: usize,
    /// A conditioning variable of `conv_by.parquet` (e.g. `pos_group`), with `level`.
    #[serde(default)]
    pub variable: Option<String>,
    /// One of its levels (e.g. `function`).
    #[serde(default)]
    pub level: Option<String>,
}

/// The analysis tables.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[serde(default)]
pub struct AggregateConfig {
    /// Replicate draws of seeds and documents (with replacement) for where
    /// the phase boundaries fall (`phases.parquet`, `phase_steps.parquet`;
    /// 0: none). Every interval is the seed- and document-aware jackknife,
    /// which needs no draws.
    pub bootstrap: usize,
    /// RNG seed of those draws (part of the key: same seed, same draws).
    pub bootstrap_seed: u64,
    /// The regression's design: `groups` (seedconv's own: per-size
    /// intercepts, log10(count + 1), noun / verb / function flags of target
    /// and context) or `paper` (the authors': log10 count, a dummy per Penn
    /// tag of target and context, a dummy per size, an intercept, the
    /// minimum-norm solution).
    pub regression: RegressionModel,
    /// Conditional cells with fewer rows are flagged `few_rows` (kept, not dropped).
    pub min_rows: usize,
    /// Final surprisal: mean over seeds, or one seed's label (the paper used seed 1).
    pub final_surprisal_seed: String,
    /// Tokens in each of the lowest / middle / highest groups of the token table.
    pub token_table_n: usize,
    /// Also write `token_table_pooled.parquet`, the authors' table: pooled
    /// over sizes, UNK-tagged targets left out.
    pub token_table_pooled: bool,
    /// Relative band around the step-0 E[KL] that counts as "unchanged" when
    /// locating the four phases.
    pub phase_tolerance: f64,
    /// The divergences averaged in `measures.parquet` and conditioned in
    /// `measures_by.parquet` (default: every one: kl, tv, abs_dp, churn,
    /// jsd, ens_gain).
    pub measures: Vec<String>,
    /// The conditioning variables of `measures_by.parquet` (default: every
    /// one; `conv_by` and `ce_by` always have them all).
    pub variables: Vec<String>,
}

impl Default for AggregateConfig {
    fn default() -> Self {
        AggregateConfig {
            bootstrap: 1000,
            bootstrap_seed: Default::default(),
            regression: RegressionModel::Groups,
            min_rows: 30,
            final_surprisal_seed: "mean".into(),
            token_table_n: 20,
            token_table_pooled: Default::default(),
            phase_tolerance: 0.05,
            measures: crate::analysis::measures::MEASURES
                .iter()
                .map(|m| m.name.to_string())
                .collect(),
            variables: crate::analysis::conditioning::VARIABLES
                .iter()
                .map(|v| v.name.to_string())
                .collect(),
        }
    }
}

impl AnnotateConfig {
    pub(super) fn check(&self, c: &Config, ck: &Check) -> Result<(), ConfigError> {
        if let Some(l) = &self.labels {
            ck.file("annotate.labels", l)?;
        }
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
        use crate::analysis::{conditioning::VARIABLES, measures};
        let names = |key: &str, given: &[String], known: &[&str]| {
            for g in given {
                if !known.contains(&g.as_str()) {
                    let hint = super::suggestion(g, known);
                    return Err(ck.bad(key, format!("unknown name \"{g}\"{hint}")));
                }
            }
            super::no_duplicates(ck, key, given)
        };
        let m: Vec<&str> = measures::MEASURES.iter().map(|m| m.name).collect();
        names("aggregate.measures", &self.measures, &m)?;
        let v: Vec<&str> = VARIABLES.iter().map(|v| v.name).collect();
        names("aggregate.variables", &self.variables, &v)?;
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
