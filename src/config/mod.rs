//! The typed pipeline configuration (`pipeline.toml`).
//!
//! Parsing happens in two passes so that every error can name the file, the
//! key path and the line: serde (through `serde_path_to_error`) catches syntax
//! errors, unknown keys and wrong types; `validate` then checks values that
//! types cannot express (an odd window, a missing input file). Relative paths
//! resolve against the folder of the config file, never the working directory.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

pub const DEFAULT_CONFIG: &str = "pipeline.toml";

/// The whole pipeline, as written in `pipeline.toml` with defaults filled in.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub train_corpus: TrainCorpusConfig,
    #[serde(default)]
    pub tokenizer: TokenizerConfig,
    pub corpus: CorpusConfig,
    #[serde(default)]
    pub frequency: FrequencyConfig,
    /// A built-in seed suite trained here (absent: no training).
    #[serde(default)]
    pub train: Option<TrainConfig>,
    /// An external seed suite of ONNX checkpoints (instead of `[train]`).
    #[serde(default)]
    pub suite: Option<SuiteConfig>,
    #[serde(default)]
    pub dist: DistConfig,
    #[serde(default)]
    pub kl: KlConfig,
    #[serde(default)]
    pub aggregate: AggregateConfig,
    #[serde(default)]
    pub annotate: AnnotateConfig,
    #[serde(default)]
    pub report: ReportConfig,
    /// BLiMP downstream convergence (absent: not scored).
    #[serde(default)]
    pub blimp: Option<BlimpConfig>,
    /// The in-context-learning score (absent: not computed).
    #[serde(default)]
    pub icl: Option<IclConfig>,
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

fn is_causal(o: &Objective) -> bool {
    *o == Objective::Causal
}

fn default_blimp_dir() -> PathBuf {
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

/// The band drawn around each size's E[conv] curve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Band {
    /// ±1 SD over the seed pairs' means (the paper's main curves).
    SdPairs,
    /// ±1 SD of conv(row) over contexts.
    SdRows,
    /// The joint pair × row bootstrap 95% interval.
    Ci,
}

/// Figures, HTML and Markdown of the `report` stage.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportConfig {
    #[serde(default = "default_band")]
    pub band: Band,
    /// Sizes that get conditional panels (empty: every size).
    #[serde(default)]
    pub sizes: Vec<String>,
    /// Most levels drawn in one conditional panel (those with most rows);
    /// the CSV keeps every level.
    #[serde(default = "default_max_levels")]
    pub max_levels: usize,
    /// Tokens listed per end of the token table.
    #[serde(default = "default_token_rows")]
    pub token_rows: usize,
    /// Figure size in pixels.
    #[serde(default = "default_fig_width")]
    pub width: u32,
    #[serde(default = "default_fig_height")]
    pub height: u32,
    /// Also render every figure as PNG (SVG is always written).
    #[serde(default = "default_true")]
    pub png: bool,
}

impl Default for ReportConfig {
    fn default() -> Self {
        ReportConfig {
            band: default_band(),
            sizes: vec![],
            max_levels: default_max_levels(),
            token_rows: default_token_rows(),
            width: default_fig_width(),
            height: default_fig_height(),
            png: true,
        }
    }
}

fn default_band() -> Band {
    Band::SdPairs
}
fn default_max_levels() -> usize {
    8
}
fn default_token_rows() -> usize {
    10
}
fn default_fig_width() -> u32 {
    900
}
fn default_fig_height() -> u32 {
    480
}
fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PosSource {
    /// Gold tags for CoNLL-U corpora, the built-in tagger otherwise.
    Auto,
    Gold,
    Tagger,
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
}

impl Default for AnnotateConfig {
    fn default() -> Self {
        AnnotateConfig {
            pos: default_pos(),
            tagger_train: default_tagger_train(),
            tagger_test: default_tagger_test(),
        }
    }
}

fn default_pos() -> PosSource {
    PosSource::Auto
}
fn default_tagger_train() -> PathBuf {
    PathBuf::from("data/ud_english_ewt/en_ewt-ud-train.conllu")
}
fn default_tagger_test() -> PathBuf {
    PathBuf::from("data/ud_english_ewt/en_ewt-ud-test.conllu")
}

impl Config {
    /// What the suite's models predict.
    pub fn objective(&self) -> Objective {
        match (&self.train, &self.suite) {
            (Some(t), _) => t.objective,
            (_, Some(s)) => s.kind,
            _ => Objective::Causal,
        }
    }

    /// Whether the built-in tagger supplies part of speech.
    pub fn uses_tagger(&self) -> bool {
        let conllu = self.corpus.format == TextFormat::Conllu
            || (self.corpus.format == TextFormat::Auto
                && self.corpus.path.extension().is_some_and(|e| e == "conllu"));
        match self.annotate.pos {
            PosSource::Tagger => true,
            PosSource::Gold => false,
            PosSource::Auto => !conllu,
        }
    }
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

/// An external multi-seed suite: model files found through a path template.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuiteConfig {
    /// `causal` (default) or `mlm` (inputs input_ids, attention_mask,
    /// token_type_ids; output logits at every position).
    #[serde(default, skip_serializing_if = "is_causal")]
    pub kind: Objective,
    /// Path template with `{size}`, `{seed}` and `{step}`, e.g.
    /// `models/pythia-{size}-seed{seed}/step{step}/model.onnx`.
    pub models: String,
    pub sizes: Vec<String>,
    pub seeds: Vec<u64>,
    pub steps: Vec<usize>,
    /// Keep the first N logits and renormalise (default: the tokenizer's
    /// vocabulary; Pythia emits 50,304 logits for 50,277 tokens).
    #[serde(default)]
    pub vocab: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    /// CUDA when available, else CPU with a warning.
    Auto,
    Cpu,
    /// CUDA or fail.
    Cuda,
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
    /// Keep the full log-probability arrays after the kl stage used them
    /// (then adding a seed recomputes no other seed's forward pass).
    #[serde(default)]
    pub retain_full: bool,
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
            retain_full: false,
            mlm_scoring: None,
        }
    }
}

fn default_top_k() -> usize {
    64
}
fn default_dist_batch() -> usize {
    16
}
fn default_device() -> Device {
    Device::Auto
}

/// Exact KL across seeds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KlConfig {
    /// k values for which the error of a top-k KL estimate is measured.
    #[serde(default = "default_validation_k")]
    pub validation_k: Vec<usize>,
}

impl Default for KlConfig {
    fn default() -> Self {
        KlConfig {
            validation_k: default_validation_k(),
        }
    }
}

fn default_validation_k() -> Vec<usize> {
    vec![16, 64, 256]
}

/// One model size of a built-in suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SizeConfig {
    pub layers: usize,
    pub d_model: usize,
    pub heads: usize,
    /// Context length (learned positions): also the training window.
    pub context: usize,
}

/// A seed: one number for both initialisation and data order, or the two
/// separately (PolyPythia's decoupled runs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// `causal` (default) or `mlm`: BERT-style masked LMs.
    #[serde(default, skip_serializing_if = "is_causal")]
    pub objective: Objective,
    pub seeds: Vec<SeedSpec>,
    /// Model sizes by name (the name is `{size}` in paths).
    pub sizes: std::collections::BTreeMap<String, SizeConfig>,
    /// Optimizer updates per run.
    pub steps: usize,
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    #[serde(default = "default_lr")]
    pub learning_rate: f64,
    /// Warmup as a fraction of `steps` (Pythia: 1%).
    #[serde(default = "default_warmup")]
    pub warmup_fraction: f64,
    #[serde(default = "default_min_lr")]
    pub min_lr_fraction: f64,
    #[serde(default = "default_wd")]
    pub weight_decay: f64,
    /// Checkpoint steps; empty = 0, 1, 2, 4, …, 512, every doubling, last.
    #[serde(default)]
    pub checkpoints: Vec<usize>,
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

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Artefact store folder.
    #[serde(default = "default_store_dir")]
    pub dir: PathBuf,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            dir: default_store_dir(),
        }
    }
}

fn default_store_dir() -> PathBuf {
    PathBuf::from("stages")
}

/// Text formats seedconv reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainCorpusConfig {
    #[serde(default)]
    pub files: Vec<PathBuf>,
    #[serde(default = "default_format")]
    pub format: TextFormat,
    #[serde(default = "default_text_field")]
    pub text_field: String,
}

impl Default for TrainCorpusConfig {
    fn default() -> Self {
        TrainCorpusConfig {
            files: Vec::new(),
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
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizerConfig {
    /// An existing Hugging Face `tokenizer.json`; when set, nothing is trained.
    #[serde(default)]
    pub path: Option<PathBuf>,
    #[serde(default = "default_vocab_size")]
    pub vocab_size: usize,
    #[serde(default = "default_min_frequency")]
    pub min_frequency: u64,
    /// Document separator, also used as BOS and EOS (Pythia's convention).
    #[serde(default = "default_eos")]
    pub eos_token: String,
    /// More special tokens for a trained tokenizer (masked-LM suites need
    /// `["[CLS]", "[SEP]", "[MASK]"]`).
    #[serde(default)]
    pub extra_special_tokens: Vec<String>,
    /// Masked-LM special tokens (used only by masked-LM suites).
    #[serde(default = "default_cls")]
    pub cls_token: String,
    #[serde(default = "default_sep")]
    pub sep_token: String,
    #[serde(default = "default_mask")]
    pub mask_token: String,
}

fn default_cls() -> String {
    "[CLS]".into()
}
fn default_sep() -> String {
    "[SEP]".into()
}
fn default_mask() -> String {
    "[MASK]".into()
}

/// What a suite's models predict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Objective {
    /// The next token (GPT-style).
    #[default]
    Causal,
    /// Masked tokens (BERT-style; 15% masking, 80/10/10).
    Mlm,
}

/// How a masked LM's distribution at a position is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
            path: None,
            vocab_size: default_vocab_size(),
            min_frequency: default_min_frequency(),
            eos_token: default_eos(),
            extra_special_tokens: vec![],
            cls_token: default_cls(),
            sep_token: default_sep(),
            mask_token: default_mask(),
        }
    }
}

fn default_vocab_size() -> usize {
    4096
}
fn default_min_frequency() -> u64 {
    2
}
fn default_eos() -> String {
    "<|endoftext|>".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorpusConfig {
    pub path: PathBuf,
    #[serde(default = "default_format")]
    pub format: TextFormat,
    #[serde(default = "default_text_field")]
    pub text_field: String,
    #[serde(default = "default_mode")]
    pub mode: CorpusMode,
    /// Window length W in tokens (the model's context); stride is W/2.
    #[serde(default = "default_window")]
    pub window: usize,
    /// Keep only the first N documents (0 = all).
    #[serde(default)]
    pub max_documents: usize,
}

fn default_mode() -> CorpusMode {
    CorpusMode::Stream
}
fn default_window() -> usize {
    2048
}

/// Token counts for frequency bins and the unigram baseline.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrequencyConfig {
    /// Files to count; empty means the training corpus.
    #[serde(default)]
    pub files: Vec<PathBuf>,
    #[serde(default = "default_format")]
    pub format: TextFormat,
    #[serde(default = "default_text_field")]
    pub text_field: String,
}

impl Default for FrequencyConfig {
    fn default() -> Self {
        FrequencyConfig {
            files: Vec::new(),
            format: default_format(),
            text_field: default_text_field(),
        }
    }
}

/// A loaded configuration with the file it came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    /// The config file as given.
    pub file: PathBuf,
    /// Folder that relative paths resolve against.
    pub root: PathBuf,
}

impl Loaded {
    pub fn store_dir(&self) -> PathBuf {
        self.config.store.dir.clone()
    }
    /// Display form of the config file name used in messages.
    pub fn file_name(&self) -> String {
        self.file.display().to_string()
    }
}

/// Load, resolve and validate a config file.
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let file = path.display().to_string();
    let raw = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
        file: file.clone(),
        source: e,
    })?;
    let mut config = parse(&raw, &file)?;
    let root = path
        .parent()
        .map(|p| {
            if p.as_os_str().is_empty() {
                Path::new(".")
            } else {
                p
            }
        })
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let root = std::fs::canonicalize(&root).unwrap_or(root);
    resolve_paths(&mut config, &root, &file, &raw)?;
    let loaded = Loaded {
        config,
        file: path.to_path_buf(),
        root,
    };
    validate(&loaded, &raw)?;
    Ok(loaded)
}

/// Parse TOML text into a `Config`, turning serde errors into messages with
/// key path, line and a suggestion.
pub fn parse(raw: &str, file: &str) -> Result<Config, ConfigError> {
    let de = toml::Deserializer::parse(raw).map_err(|e| ConfigError::Syntax {
        file: file.to_string(),
        line: e.span().map(|s| line_of(raw, s.start)).unwrap_or(0),
        message: e.message().to_string(),
    })?;
    serde_path_to_error::deserialize::<_, Config>(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.inner();
        let line = inner.span().map(|s| line_of(raw, s.start)).unwrap_or(0);
        let msg = inner.message();
        if let Some(rest) = msg.strip_prefix("unknown field `") {
            let name = rest.split('`').next().unwrap_or("").to_string();
            let expected: Vec<String> = rest
                .split("expected ")
                .nth(1)
                .unwrap_or("")
                .split('`')
                .enumerate()
                .filter(|(i, _)| i % 2 == 1)
                .map(|(_, s)| s.to_string())
                .collect();
            // serde_path_to_error stops at the table holding the unknown key.
            let key = if path == "." || path.is_empty() {
                name.clone()
            } else if path.ends_with(&name) {
                path.clone()
            } else {
                format!("{path}.{name}")
            };
            let suggestion = expected
                .iter()
                .map(|c| (strsim::levenshtein(&name, c), c))
                .filter(|(d, c)| *d <= 2.max(c.len() / 3))
                .min()
                .map(|(_, c)| format!(" — did you mean {c}?"))
                .unwrap_or_else(|| format!(" — expected one of: {}", expected.join(", ")));
            ConfigError::UnknownKey {
                file: file.to_string(),
                line,
                key,
                suggestion,
            }
        } else {
            ConfigError::Invalid {
                file: file.to_string(),
                line,
                key: if path == "." {
                    "(top level)".into()
                } else {
                    path
                },
                message: msg.to_string(),
            }
        }
    })
}

/// 1-based line number of a byte offset.
pub fn line_of(raw: &str, offset: usize) -> usize {
    raw[..offset.min(raw.len())].matches('\n').count() + 1
}

/// Line of a dotted key in the TOML source, for validation errors; for a
/// key that is absent, the line of its table (0: not in the file at all).
pub fn line_of_key(raw: &str, key: &str) -> usize {
    let Ok(doc) = toml::de::DeTable::parse(raw) else {
        return 0;
    };
    let mut table = doc.get_ref();
    let parts: Vec<&str> = key.split('.').collect();
    let mut found = 0;
    for (i, part) in parts.iter().enumerate() {
        let Some((k, v)) = table.iter().find(|(k, _)| k.get_ref().as_ref() == *part) else {
            return found;
        };
        found = line_of(raw, k.span().start);
        if i + 1 == parts.len() {
            return line_of(raw, k.span().start);
        }
        match v.get_ref() {
            toml::de::DeValue::Table(t) => table = t,
            _ => return line_of(raw, k.span().start),
        }
    }
    0
}

fn resolve(root: &Path, p: &mut PathBuf) {
    if p.is_relative() {
        *p = root.join(&*p);
    }
}

/// Resolve a file list against `root`, expanding glob patterns (sorted).
fn resolve_list(
    root: &Path,
    list: &mut Vec<PathBuf>,
    key: &str,
    file: &str,
    raw: &str,
) -> Result<(), ConfigError> {
    let mut out = Vec::new();
    for p in list.iter() {
        let mut p = p.clone();
        resolve(root, &mut p);
        let s = p.to_string_lossy();
        if !s.contains(['*', '?', '[']) {
            out.push(p);
            continue;
        }
        let bad = |message: String| ConfigError::Invalid {
            file: file.to_string(),
            line: line_of_key(raw, key),
            key: key.to_string(),
            message,
        };
        let mut matched: Vec<PathBuf> = glob::glob(&s)
            .map_err(|e| bad(format!("bad pattern {s}: {e}")))?
            .flatten()
            .filter(|p| p.is_file())
            .collect();
        if matched.is_empty() {
            return Err(bad(format!("pattern {s} matches no file")));
        }
        matched.sort();
        out.extend(matched);
    }
    *list = out;
    Ok(())
}

fn resolve_paths(c: &mut Config, root: &Path, file: &str, raw: &str) -> Result<(), ConfigError> {
    resolve(root, &mut c.store.dir);
    resolve_list(
        root,
        &mut c.train_corpus.files,
        "train_corpus.files",
        file,
        raw,
    )?;
    if let Some(p) = c.tokenizer.path.as_mut() {
        resolve(root, p);
    }
    resolve(root, &mut c.corpus.path);
    // The tagger's defaults name the shipped EWT files: beside the config
    // if it has them, else in the source tree this binary was built from.
    for (p, default) in [
        (&mut c.annotate.tagger_train, default_tagger_train()),
        (&mut c.annotate.tagger_test, default_tagger_test()),
    ] {
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join(&default);
        let is_default = *p == default;
        resolve(root, p);
        if is_default && !p.exists() && shipped.exists() {
            *p = shipped;
        }
    }
    if let Some(b) = c.blimp.as_mut() {
        // Like the tagger's files: the shipped BLiMP when none is beside the config.
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join(default_blimp_dir());
        let is_default = b.dir == default_blimp_dir();
        resolve(root, &mut b.dir);
        if is_default && !b.dir.is_dir() && shipped.is_dir() {
            b.dir = shipped;
        }
    }
    if let Some(su) = c.suite.as_mut() {
        if Path::new(&su.models).is_relative() {
            su.models = root.join(&su.models).to_string_lossy().to_string();
        }
    }
    resolve_list(root, &mut c.frequency.files, "frequency.files", file, raw)
}

fn validate(l: &Loaded, raw: &str) -> Result<(), ConfigError> {
    let c = &l.config;
    let bad = |key: &str, message: String| ConfigError::Invalid {
        file: l.file_name(),
        line: line_of_key(raw, key),
        key: key.to_string(),
        message,
    };
    let missing = |key: &str, p: &Path| {
        if p.is_file() {
            Ok(())
        } else {
            Err(bad(
                key,
                format!("input file {} does not exist", p.display()),
            ))
        }
    };
    if c.corpus.window < 2 || !c.corpus.window.is_multiple_of(2) {
        return Err(bad(
            "corpus.window",
            format!("must be an even number ≥ 2 (got {})", c.corpus.window),
        ));
    }
    missing("corpus.path", &c.corpus.path)?;
    for p in &c.train_corpus.files {
        missing("train_corpus.files", p)?;
    }
    for p in &c.frequency.files {
        missing("frequency.files", p)?;
    }
    match &c.tokenizer.path {
        Some(p) => missing("tokenizer.path", p)?,
        None => {
            if c.train_corpus.files.is_empty() {
                return Err(bad(
                    "tokenizer",
                    "no tokenizer.path and no train_corpus.files to train one on".into(),
                ));
            }
            if c.tokenizer.vocab_size < 260 {
                return Err(bad(
                    "tokenizer.vocab_size",
                    format!(
                        "must be ≥ 260 (256 bytes + special tokens), got {}",
                        c.tokenizer.vocab_size
                    ),
                ));
            }
        }
    }
    if let Some(t) = &c.train {
        if c.train_corpus.files.is_empty() {
            return Err(bad(
                "train",
                "a built-in suite needs train_corpus.files".into(),
            ));
        }
        if t.seeds.is_empty() {
            return Err(bad("train.seeds", "no seeds".into()));
        }
        let labels: std::collections::BTreeSet<String> =
            t.seeds.iter().map(|s| s.label()).collect();
        if labels.len() != t.seeds.len() {
            return Err(bad("train.seeds", "a seed is listed twice".into()));
        }
        if t.sizes.is_empty() {
            return Err(bad("train.sizes", "no model sizes".into()));
        }
        for (name, s) in &t.sizes {
            let key = format!("train.sizes.{name}");
            if !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.".contains(c))
            {
                return Err(bad(
                    &key,
                    "size names may use letters, digits, `_` and `.`".into(),
                ));
            }
            if s.layers == 0 || s.heads == 0 || s.d_model == 0 || s.d_model % s.heads != 0 {
                return Err(bad(
                    &key,
                    format!(
                        "d_model ({}) must be a positive multiple of heads ({}), layers ≥ 1",
                        s.d_model, s.heads
                    ),
                ));
            }
            if s.context < 2 {
                return Err(bad(&key, "context must be ≥ 2".into()));
            }
        }
        if t.steps == 0 || t.batch_size == 0 || t.pad_vocab_multiple == 0 {
            return Err(bad(
                "train",
                "steps, batch_size and pad_vocab_multiple must be ≥ 1".into(),
            ));
        }
        if !(0.0..1.0).contains(&t.warmup_fraction) || !(0.0..=1.0).contains(&t.min_lr_fraction) {
            return Err(bad(
                "train",
                "warmup_fraction must be in [0, 1) and min_lr_fraction in [0, 1]".into(),
            ));
        }
        if let Some((name, s)) = t.sizes.iter().find(|(_, s)| s.context < c.corpus.window) {
            return Err(bad(
                "corpus.window",
                format!(
                    "{} is longer than the context of size {name} ({}): windows must fit the model",
                    c.corpus.window, s.context
                ),
            ));
        }
        if let Some(&s) = t.checkpoints.iter().find(|&&s| s > t.steps) {
            return Err(bad(
                "train.checkpoints",
                format!("step {s} is beyond train.steps = {}", t.steps),
            ));
        }
    }
    if let Some(su) = &c.suite {
        if c.train.is_some() {
            return Err(bad(
                "suite",
                "give either [suite] (external checkpoints) or [train] (built-in), not both".into(),
            ));
        }
        let needed: &[&str] = if su.sizes.len() > 1 {
            &["{size}", "{seed}", "{step}"]
        } else {
            &["{seed}", "{step}"]
        };
        for ph in needed {
            if !su.models.contains(ph) {
                return Err(bad("suite.models", format!("the path template lacks {ph}")));
            }
        }
        if su.sizes.is_empty() || su.seeds.len() < 2 || su.steps.is_empty() {
            return Err(bad(
                "suite",
                "needs sizes, at least two seeds, and steps".into(),
            ));
        }
        if su.vocab == Some(0) {
            return Err(bad("suite.vocab", "must be ≥ 1".into()));
        }
    }
    if c.uses_tagger() {
        missing("annotate.tagger_train", &c.annotate.tagger_train)?;
        missing("annotate.tagger_test", &c.annotate.tagger_test)?;
    }
    if c.annotate.pos == PosSource::Gold
        && !matches!(c.corpus.format, TextFormat::Conllu | TextFormat::Auto)
    {
        return Err(bad(
            "annotate.pos",
            "gold tags need a CoNLL-U corpus".into(),
        ));
    }
    if c.aggregate.final_surprisal_seed != "mean" {
        let seeds: Vec<String> = match (&c.train, &c.suite) {
            (Some(t), _) => t.seeds.iter().map(|s| s.label()).collect(),
            (_, Some(su)) => su.seeds.iter().map(|s| s.to_string()).collect(),
            _ => vec![],
        };
        if !seeds.contains(&c.aggregate.final_surprisal_seed) {
            return Err(bad(
                "aggregate.final_surprisal_seed",
                format!(
                    "\"{}\" is neither \"mean\" nor a seed of the suite ({})",
                    c.aggregate.final_surprisal_seed,
                    seeds.join(", ")
                ),
            ));
        }
    }
    let sizes: Vec<String> = match (&c.train, &c.suite) {
        (Some(t), _) => t.sizes.keys().cloned().collect(),
        (_, Some(su)) => su.sizes.clone(),
        _ => vec![],
    };
    for s in &c.report.sizes {
        if !sizes.contains(s) {
            return Err(bad(
                "report.sizes",
                format!("\"{s}\" is not a size of the suite ({})", sizes.join(", ")),
            ));
        }
    }
    if c.report.width < 400 || c.report.height < 250 || c.report.max_levels == 0 {
        return Err(bad(
            "report",
            "width ≥ 400, height ≥ 250 and max_levels ≥ 1 are needed".into(),
        ));
    }
    if let Some(b) = &c.blimp {
        if !b.dir.is_dir() {
            return Err(bad(
                "blimp.dir",
                format!("folder {} does not exist", b.dir.display()),
            ));
        }
        let files = b.files();
        if files.is_empty() {
            return Err(bad(
                "blimp.dir",
                format!("{} has no .jsonl paradigm files", b.dir.display()),
            ));
        }
        for f in &files {
            missing("blimp.paradigms", f)?;
        }
        if b.pairs == 0 || b.batch_size == 0 {
            return Err(bad("blimp", "pairs and batch_size must be ≥ 1".into()));
        }
    }
    if c.objective() == Objective::Mlm {
        let key = if c.train.is_some() {
            "train.objective"
        } else {
            "suite.kind"
        };
        if c.corpus.mode != CorpusMode::Mlm {
            return Err(bad(
                "corpus.mode",
                format!("a masked-LM suite ({key} = \"mlm\") needs corpus.mode = \"mlm\""),
            ));
        }
        if c.dist.mlm_scoring.is_none() {
            return Err(bad(
                "dist.mlm_scoring",
                "a masked-LM suite must say how to read its distributions: \"unmasked\" (the authors' code) or \"masked\"".into(),
            ));
        }
        if c.tokenizer.path.is_none() {
            let t = &c.tokenizer;
            for (token, key) in [
                (&t.cls_token, "cls_token"),
                (&t.sep_token, "sep_token"),
                (&t.mask_token, "mask_token"),
            ] {
                if !t.extra_special_tokens.contains(token) {
                    return Err(bad(
                        "tokenizer.extra_special_tokens",
                        format!("a masked-LM suite trains its tokenizer with {token:?} (tokenizer.{key}): add it here"),
                    ));
                }
            }
        }
        if c.blimp.is_some() || c.icl.is_some() {
            return Err(bad(
                if c.blimp.is_some() { "blimp" } else { "icl" },
                "BLiMP and the ICL score need a causal suite".into(),
            ));
        }
    } else if c.corpus.mode == CorpusMode::Mlm {
        return Err(bad(
            "corpus.mode",
            "\"mlm\" is for masked-LM suites (train.objective or suite.kind = \"mlm\")".into(),
        ));
    } else if c.dist.mlm_scoring.is_some() {
        return Err(bad(
            "dist.mlm_scoring",
            "applies to masked-LM suites only".into(),
        ));
    }
    if let Some(i) = &c.icl {
        if !(i.short_context >= 1
            && i.short_context < i.long_context
            && i.long_context < i.position
            && i.position <= i.min_tokens
            && i.batch_size >= 1)
        {
            return Err(bad(
                "icl",
                format!(
                    "needs 1 ≤ short_context < long_context < position ≤ min_tokens and batch_size ≥ 1 (got {}, {}, {}, {})",
                    i.short_context, i.long_context, i.position, i.min_tokens
                ),
            ));
        }
        if let Some(t) = &c.train {
            if let Some((name, s)) = t.sizes.iter().find(|(_, s)| s.context < i.long_context) {
                return Err(bad(
                    "icl.long_context",
                    format!(
                        "{} exceeds the context of size {name} ({})",
                        i.long_context, s.context
                    ),
                ));
            }
        }
    }
    if c.dist.top_k == 0 || c.dist.batch_size == 0 {
        return Err(bad("dist", "top_k and batch_size must be ≥ 1".into()));
    }
    if c.frequency.files.is_empty() && c.train_corpus.files.is_empty() {
        return Err(bad(
            "frequency.files",
            "empty, and there is no train_corpus.files to count instead".into(),
        ));
    }
    Ok(())
}

/// The fully resolved configuration as TOML (for `seedconv config`).
pub fn render(c: &Config) -> String {
    toml::to_string_pretty(c).unwrap_or_else(|e| format!("# cannot render: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_key_points_at_its_table() {
        let raw = "[corpus]\npath = \"a\"\n\n[dist]\ntop_k = 8\n";
        assert_eq!(line_of_key(raw, "dist.top_k"), 5);
        assert_eq!(line_of_key(raw, "dist.mlm_scoring"), 4);
        assert_eq!(line_of_key(raw, "blimp.pairs"), 0);
        let e = ConfigError::Invalid {
            file: "p.toml".into(),
            line: 0,
            key: "blimp".into(),
            message: "m".into(),
        };
        assert_eq!(e.to_string(), "bad value for blimp at p.toml: m");
    }
}
