//! The typed pipeline configuration (`pipeline.toml`).
//!
//! Parsing happens in two passes so that every error can name the file, the
//! key path and the line: serde (through `serde_path_to_error`) catches syntax
//! errors, unknown keys and wrong types; `validate` then checks values that
//! types cannot express (an odd window, a missing input file). Relative paths
//! resolve against the folder of the config file, never the working directory.

mod downstream;
mod executor;
mod inputs;
mod measure;
mod reference;
mod report;
mod suite;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

pub use downstream::{BlimpConfig, BlimpVocab, IclConfig, LmEvalConfig};
pub use executor::{ExecutorConfig, ExecutorKind, ResourcesConfig, SlurmConfig, StageResources};
pub use inputs::{
    CorpusConfig, CorpusMode, FrequencyConfig, MlmScoring, Objective, StoreConfig, TextFormat,
    TokenizerConfig, TrainCorpusConfig,
};
pub use measure::{
    AggregateConfig, AnnotateConfig, CompareConfig, Device, DistConfig, KlConfig, PosSource,
    RegressionModel, Selection, Statistics, DEFAULT_TOP_K, EXPLORE_PORT,
};
pub use reference::reference;
pub use report::{Band, ReportConfig};
pub use suite::{
    Factors, FetchConfig, Keep, SeedName, SeedSpec, SizeConfig, SuiteConfig, TrainConfig, ONE_SIZE,
};

pub const DEFAULT_CONFIG: &str = "pipeline.toml";

/// The whole pipeline, as written in `pipeline.toml` with defaults filled in.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
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
    /// Paired comparisons of E[conv] cells (`[[compare]]`), beside the
    /// built-in ones in `aggregate/compare.parquet`.
    #[serde(default)]
    pub compare: Vec<CompareConfig>,
    #[serde(default)]
    pub annotate: AnnotateConfig,
    #[serde(default)]
    pub report: ReportConfig,
    /// BLiMP downstream convergence (absent: not scored).
    #[serde(default)]
    pub blimp: Option<BlimpConfig>,
    /// Item-level downstream agreement from lm-evaluation-harness sample
    /// files (absent: only BLiMP's pairs, when scored).
    #[serde(default)]
    pub lm_eval: Option<LmEvalConfig>,
    /// The in-context-learning score (absent: not computed).
    #[serde(default)]
    pub icl: Option<IclConfig>,
    /// Where `run` computes (this machine unless `kind = "slurm"`).
    #[serde(default)]
    pub executor: ExecutorConfig,
    /// What a local run may use (GPUs).
    #[serde(default)]
    pub resources: ResourcesConfig,
    /// How checkpoints are fetched (`suite.fetch`).
    #[serde(default)]
    pub fetch: FetchConfig,
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
            PosSource::File => false,
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
    load_with(path, &[])
}

/// Load a config file with `KEY=VALUE` overrides (`--set`) applied on top.
/// Errors in the file name its lines; errors in an override name the
/// override, so both read like the file's own.
pub fn load_with(path: &Path, overrides: &[String]) -> Result<Loaded, ConfigError> {
    let file = path.display().to_string();
    let raw = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
        file: file.clone(),
        source: e,
    })?;
    let mut config = parse(&raw, &file)?;
    let merged = if overrides.is_empty() {
        raw.clone()
    } else {
        let text = overridden(&raw, overrides)?;
        config = parse(&text, &file).map_err(|e| blame(e, overrides))?;
        text
    };
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
    resolve_paths(&mut config, &root, &file, &raw).map_err(|e| blame(e, overrides))?;
    resolve_separator(&mut config, &merged);
    let loaded = Loaded {
        config,
        file: path.to_path_buf(),
        root,
    };
    validate(&loaded, &raw).map_err(|e| blame(e, overrides))?;
    Ok(loaded)
}

/// The config text with each `KEY=VALUE` set: VALUE as TOML (`64`,
/// `[1, 2]`, `"x"`), or as a string when it is not TOML (`data/a.txt`).
fn overridden(raw: &str, overrides: &[String]) -> Result<String, ConfigError> {
    let mut doc: toml::Table = toml::from_str(raw).unwrap_or_default();
    for o in overrides {
        let bad = |message: &str| ConfigError::Invalid {
            file: format!("--set {o}"),
            line: 0,
            key: o.split('=').next().unwrap_or_default().to_string(),
            message: message.to_string(),
        };
        let Some((key, value)) = o.split_once('=') else {
            return Err(bad("expected KEY=VALUE"));
        };
        let value = toml::from_str::<toml::Table>(&format!("v = {value}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(value.to_string()));
        let parts: Vec<&str> = key.split('.').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(bad("expected KEY=VALUE with a dotted key"));
        }
        let mut table = &mut doc;
        for p in &parts[..parts.len() - 1] {
            let entry = table
                .entry(p.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            table = entry
                .as_table_mut()
                .ok_or_else(|| bad(&format!("{p} is a value, not a table")))?;
        }
        table.insert(parts[parts.len() - 1].to_string(), value);
    }
    Ok(toml::to_string(&doc).expect("a TOML table serialises"))
}

/// An error about an overridden key, told as the override's.
fn blame(mut e: ConfigError, overrides: &[String]) -> ConfigError {
    if let ConfigError::Invalid {
        key, file, line, ..
    }
    | ConfigError::UnknownKey {
        key, file, line, ..
    } = &mut e
    {
        let culprit = overrides.iter().find(|o| {
            let k = o.split('=').next().unwrap_or_default();
            k == key || key.starts_with(&format!("{k}.")) || k.starts_with(&format!("{key}."))
        });
        if let Some(o) = culprit {
            *file = format!("--set {o}");
            *line = 0;
        }
    }
    e
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
            let suggestion = suggestion(&name, &expected);
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
/// What an error about the unknown `name` adds: " — did you mean X?" for
/// the closest of `known` by edit distance, when close, else the list.
fn suggestion(name: &str, known: &[impl AsRef<str>]) -> String {
    known
        .iter()
        .map(|c| (strsim::levenshtein(name, c.as_ref()), c.as_ref()))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min()
        .map(|(_, c)| format!(" — did you mean {c}?"))
        .unwrap_or_else(|| {
            let all: Vec<&str> = known.iter().map(AsRef::as_ref).collect();
            format!(" — expected one of: {}", all.join(", "))
        })
}

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

/// An external masked-LM suite separates documents with `[SEP]`, and its
/// tokenizer (BERT's) need not have `<|endoftext|>`: there an unset
/// `tokenizer.eos_token` is `tokenizer.sep_token`. (Built-in suites train
/// their tokenizer with `<|endoftext|>`, so their default stays.)
fn resolve_separator(c: &mut Config, raw: &str) {
    let set = toml::from_str::<toml::Table>(raw)
        .ok()
        .and_then(|t| t.get("tokenizer")?.get("eos_token").cloned())
        .is_some();
    if !set && c.suite.as_ref().is_some_and(|s| s.kind == Objective::Mlm) {
        c.tokenizer.eos_token = c.tokenizer.sep_token.clone();
    }
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
    if let Some(p) = c.icl.as_mut().and_then(|i| i.corpus.as_mut()) {
        resolve(root, p);
    }
    if let Some(p) = c.annotate.pos_file.as_mut() {
        resolve(root, p);
    }
    if let Some(p) = c.annotate.labels.as_mut() {
        resolve(root, p);
    }
    // The tagger's defaults name the shipped EWT files: beside the config
    // if it has them, else in the source tree this binary was built from.
    let defaults = AnnotateConfig::default();
    for (p, default) in [
        (&mut c.annotate.tagger_train, defaults.tagger_train),
        (&mut c.annotate.tagger_test, defaults.tagger_test),
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
        let default = BlimpConfig::default().dir;
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join(&default);
        let is_default = b.dir == default;
        resolve(root, &mut b.dir);
        if is_default && !b.dir.is_dir() && shipped.is_dir() {
            b.dir = shipped;
        }
    }
    if let Some(e) = c.lm_eval.as_mut() {
        if Path::new(&e.samples).is_relative() {
            e.samples = root.join(&e.samples).to_string_lossy().to_string();
        }
    }
    if let Some(su) = c.suite.as_mut() {
        if Path::new(&su.models).is_relative() {
            su.models = root.join(&su.models).to_string_lossy().to_string();
        }
    }
    resolve_list(root, &mut c.frequency.files, "frequency.files", file, raw)
}

/// What section checks report errors through: the loaded file and its
/// text, so each error names the file, the key and its line.
struct Check<'a> {
    loaded: &'a Loaded,
    raw: &'a str,
}

impl Check<'_> {
    fn bad(&self, key: &str, message: String) -> ConfigError {
        ConfigError::Invalid {
            file: self.loaded.file_name(),
            line: line_of_key(self.raw, key),
            key: key.to_string(),
            message,
        }
    }

    /// A file list: each listed once, each existing.
    fn files(&self, key: &str, files: &[PathBuf]) -> Result<(), ConfigError> {
        let shown: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
        no_duplicates(self, key, &shown)?;
        files.iter().try_for_each(|p| self.file(key, p))
    }

    /// An error unless the input file `p` (from `key`) exists.
    fn file(&self, key: &str, p: &Path) -> Result<(), ConfigError> {
        if p.is_file() {
            Ok(())
        } else {
            Err(self.bad(key, format!("input file {} does not exist", p.display())))
        }
    }
}

/// Values that types cannot express, section by section (each section's
/// checks sit beside its struct); the first error wins, in this order.
fn validate(l: &Loaded, raw: &str) -> Result<(), ConfigError> {
    let c = &l.config;
    let ck = Check { loaded: l, raw };
    c.corpus.check(&ck)?;
    c.train_corpus.check(&ck)?;
    c.frequency.check_files(&ck)?;
    c.tokenizer.check(c, &ck)?;
    if let Some(t) = &c.train {
        t.check(c, &ck)?;
    }
    if let Some(su) = &c.suite {
        su.check(c, &ck)?;
    }
    c.annotate.check(c, &ck)?;
    c.aggregate.check(c, &ck)?;
    c.report.check(c, &ck)?;
    if let Some(b) = &c.blimp {
        b.check(&ck)?;
    }
    if let Some(e) = &c.lm_eval {
        e.check(&ck)?;
    }
    check_objective(c, &ck)?;
    if let Some(i) = &c.icl {
        i.check(c, &ck)?;
    }
    c.dist.check(&ck)?;
    c.kl.check(&ck)?;
    c.executor.check(&ck)?;
    c.frequency.check_source(c, &ck)
}

/// The suite's objective against every section it constrains.
fn check_objective(c: &Config, ck: &Check) -> Result<(), ConfigError> {
    if c.objective() == Objective::Mlm {
        let key = if c.train.is_some() {
            "train.objective"
        } else {
            "suite.kind"
        };
        if c.corpus.mode != CorpusMode::Mlm {
            return Err(ck.bad(
                "corpus.mode",
                format!("a masked-LM suite ({key} = \"mlm\") needs corpus.mode = \"mlm\""),
            ));
        }
        if c.dist.mlm_scoring.is_none() {
            return Err(ck.bad(
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
                    return Err(ck.bad(
                        "tokenizer.extra_special_tokens",
                        format!("a masked-LM suite trains its tokenizer with {token:?} (tokenizer.{key}): add it here"),
                    ));
                }
            }
        }
        if c.blimp.is_some() || c.icl.is_some() {
            return Err(ck.bad(
                if c.blimp.is_some() { "blimp" } else { "icl" },
                "BLiMP and the ICL score need a causal suite".into(),
            ));
        }
    } else if c.corpus.mode == CorpusMode::Mlm {
        return Err(ck.bad(
            "corpus.mode",
            "\"mlm\" is for masked-LM suites (train.objective or suite.kind = \"mlm\")".into(),
        ));
    } else if c.dist.mlm_scoring.is_some() {
        return Err(ck.bad(
            "dist.mlm_scoring",
            "applies to masked-LM suites only".into(),
        ));
    }
    Ok(())
}

/// An error naming `key` and the first value listed twice.
fn no_duplicates<T: std::fmt::Display + Ord>(
    ck: &Check,
    key: &str,
    items: &[T],
) -> Result<(), ConfigError> {
    let mut seen = std::collections::BTreeSet::new();
    match items.iter().find(|x| !seen.insert(*x)) {
        Some(x) => Err(ck.bad(key, format!("{x} is listed twice"))),
        None => Ok(()),
    }
}

/// The sizes of the suite, built-in or external.
fn suite_sizes(c: &Config) -> Vec<String> {
    match (&c.train, &c.suite) {
        (Some(t), _) => t.sizes.keys().cloned().collect(),
        (_, Some(su)) => su.size_names(),
        _ => vec![],
    }
}

/// The seed labels of the suite, built-in or external.
fn suite_seeds(c: &Config) -> Vec<String> {
    match (&c.train, &c.suite) {
        (Some(t), _) => t.seeds.iter().map(|s| s.label()).collect(),
        (_, Some(su)) => su.seeds.iter().map(|s| s.to_string()).collect(),
        _ => vec![],
    }
}

/// The fully resolved configuration as TOML (for `seedconv config`).
pub fn render(c: &Config) -> String {
    toml::to_string_pretty(c).unwrap_or_else(|e| format!("# cannot render: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_name_the_closest_or_list_them_all() {
        let names = ["kl", "tv", "abs_dp", "churn", "jsd", "ens_gain"];
        assert_eq!(suggestion("jds", &names), " — did you mean jsd?");
        assert_eq!(suggestion("chrun", &names), " — did you mean churn?");
        assert_eq!(
            suggestion("entropy", &names),
            " — expected one of: kl, tv, abs_dp, churn, jsd, ens_gain"
        );
    }

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
