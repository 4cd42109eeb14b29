//! A multi-seed suite: sizes × seeds × steps of causal-LM checkpoints, either
//! external ONNX files found through a path template or the built-in
//! trainer's exports. Everything downstream sees the same `Checkpoint`s.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::config::{Loaded, Objective, SeedSpec, TrainConfig};
use crate::engine::JobCtx;
use crate::error::{ConfigError, StageError};

/// Where a checkpoint's model comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelRef {
    /// An external file (plus external-data files beside it).
    File(PathBuf),
    /// `rel` inside the entry of the built-in `train` instance `label`.
    Builtin { label: String, rel: String },
    /// `model.onnx` inside the entry of the `fetch` instance `label`: made
    /// by `suite.fetch` since the file did not exist.
    Fetched { label: String },
}

/// One checkpoint; as part of a job it is keyed by (size, seed, step), its
/// model by content (an input file's or an upstream output's hash).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Checkpoint {
    pub size: String,
    pub seed: String,
    pub step: usize,
    /// unkeyed: the model's bytes are keyed through `reach`.
    #[serde(skip)]
    pub model: ModelRef,
}

/// Upstream instances and named input files of an engine instance.
pub type Reach = (Vec<(&'static str, String)>, Vec<(String, PathBuf)>);

impl Checkpoint {
    /// Instance label: `{size}-seed{seed}-step{step}`.
    pub fn label(&self) -> String {
        format!("{}-seed{}-step{}", self.size, self.seed, self.step)
    }
    /// Upstream instances and input files that reach the model.
    pub fn reach(&self) -> Reach {
        match &self.model {
            ModelRef::File(p) => (
                vec![],
                model_files(p)
                    .into_iter()
                    .enumerate()
                    .map(|(i, f)| {
                        (
                            if i == 0 {
                                "model".to_string()
                            } else {
                                format!("model_data[{i}]")
                            },
                            f,
                        )
                    })
                    .collect(),
            ),
            ModelRef::Builtin { label, .. } => (vec![(BUILTIN_STAGE, label.clone())], vec![]),
            ModelRef::Fetched { label } => (vec![(FETCH_STAGE, label.clone())], vec![]),
        }
    }

    /// The model file, given the job's upstream entries.
    pub fn model_path(&self, ctx: &JobCtx) -> Result<PathBuf, StageError> {
        match &self.model {
            ModelRef::File(p) => Ok(p.clone()),
            ModelRef::Builtin { label, rel } => Ok(ctx.upstream(BUILTIN_STAGE, label)?.join(rel)),
            ModelRef::Fetched { label } => {
                Ok(ctx.upstream(FETCH_STAGE, label)?.join(FETCHED_MODEL))
            }
        }
    }

    /// blake3 of the model file: already known to the engine (an input
    /// file's hash, or an upstream train output's), so not read again.
    pub fn model_hash(&self, ctx: &JobCtx, path: &Path) -> Result<String, StageError> {
        let known = match &self.model {
            ModelRef::File(_) => ctx.input_hash("model"),
            ModelRef::Builtin { label, rel } => ctx.upstream_output_hash(BUILTIN_STAGE, label, rel),
            ModelRef::Fetched { label } => {
                ctx.upstream_output_hash(FETCH_STAGE, label, FETCHED_MODEL)
            }
        };
        match known {
            Some(h) => Ok(h.to_string()),
            None => crate::engine::hashcache::hash_file(path)
                .map_err(|e| StageError::Other(e.to_string())),
        }
    }

    /// Human-readable name for messages.
    pub fn name(&self) -> String {
        match &self.model {
            ModelRef::File(p) => p.display().to_string(),
            ModelRef::Builtin { label, rel } => format!("train[{label}]/{rel}"),
            ModelRef::Fetched { label } => format!("fetch[{label}]/{FETCHED_MODEL}"),
        }
    }
}

/// What reaches the models of several checkpoints: their upstream
/// instances, and their files as inputs named `<checkpoint label>.<name>`.
pub fn models_reach(ckpts: &[Checkpoint]) -> Reach {
    let (mut deps, mut inputs) = (Vec::new(), Vec::new());
    for c in ckpts {
        let (d, i) = c.reach();
        deps.extend(d);
        inputs.extend(
            i.into_iter()
                .map(|(name, p)| (format!("{}.{name}", c.label()), p)),
        );
    }
    (deps, inputs)
}

#[derive(Debug, Clone)]
pub struct Suite {
    pub sizes: Vec<String>,
    pub seeds: Vec<String>,
    pub steps: Vec<usize>,
    /// Logits kept (None: the tokenizer's vocabulary size).
    pub vocab: Option<usize>,
    pub checkpoints: Vec<Checkpoint>,
    pub builtin: bool,
    pub objective: Objective,
    /// What each seed's run varied, by seed label and factor (`init`,
    /// `data`): the built-in suite's split seeds, or `suite.seed_factors`.
    pub factors: Option<BTreeMap<String, crate::config::Factors>>,
}

impl Suite {
    pub fn get(&self, size: &str, seed: &str, step: usize) -> Option<&Checkpoint> {
        self.checkpoints
            .iter()
            .find(|c| c.size == size && c.seed == seed && c.step == step)
    }
}

/// The stage whose entries hold the built-in suite's checkpoints.
pub const BUILTIN_STAGE: &str = "train";

/// The stage whose entries hold fetched checkpoints, each at `model.onnx`.
pub const FETCH_STAGE: &str = "fetch";
pub const FETCHED_MODEL: &str = "model.onnx";

/// The built-in suite's naming scheme: the `train` instance of (size, seed)
/// is labelled `{size}-seed{seed}` and holds checkpoint `step` at
/// `step{step}/model.onnx`, so `stages/train/current/` reads as the external
/// path template `{size}-seed{seed}/step{step}/model.onnx`.
pub fn builtin_label(size: &str, seed: &SeedSpec) -> String {
    format!("{size}-seed{}", seed.label())
}

/// Relative path of a checkpoint inside a `train` entry.
pub fn builtin_checkpoint_path(step: usize) -> String {
    format!("step{step}/model.onnx")
}

/// The checkpoint steps of the built-in suite, sorted and unique.
pub fn builtin_steps(t: &TrainConfig) -> Vec<usize> {
    if t.checkpoints.is_empty() {
        crate::lm::train::default_checkpoints(t.steps)
    } else {
        let mut v = t.checkpoints.clone();
        v.sort_unstable();
        v.dedup();
        v
    }
}

/// Files that make up an external model: the `.onnx` and any external-data
/// file beside it named after it (`model.onnx.data`, `model.onnx_data`).
pub fn model_files(path: &Path) -> Vec<PathBuf> {
    let mut files = vec![path.to_path_buf()];
    if let (Some(dir), Some(name)) = (
        path.parent(),
        path.file_name().map(|n| n.to_string_lossy().to_string()),
    ) {
        if let Ok(rd) = std::fs::read_dir(dir) {
            let mut extra: Vec<PathBuf> = rd
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    let n = p
                        .file_name()
                        .map(|n| n.to_string_lossy().to_string())
                        .unwrap_or_default();
                    n != name && n.starts_with(&name) && p.is_file()
                })
                .collect();
            extra.sort();
            files.extend(extra);
        }
    }
    files
}

/// The configured suite, if any. For an external suite every checkpoint must
/// exist; all missing ones are reported at once.
pub fn from_config(l: &Loaded) -> Result<Option<Suite>, ConfigError> {
    let c = &l.config;
    if let Some(t) = &c.train {
        let steps = builtin_steps(t);
        let seeds: Vec<String> = t.seeds.iter().map(|s| s.label()).collect();
        let mut checkpoints = Vec::new();
        for size in t.sizes.keys() {
            for (spec, seed) in t.seeds.iter().zip(&seeds) {
                for &step in &steps {
                    checkpoints.push(Checkpoint {
                        size: size.clone(),
                        seed: seed.clone(),
                        step,
                        model: ModelRef::Builtin {
                            label: builtin_label(size, spec),
                            rel: builtin_checkpoint_path(step),
                        },
                    });
                }
            }
        }
        // Split seeds name their factors; one number for both does not.
        let factors = t
            .seeds
            .iter()
            .any(|s| matches!(s, crate::config::SeedSpec::Split { .. }))
            .then(|| {
                t.seeds
                    .iter()
                    .map(|s| {
                        let f = [
                            ("init".to_string(), s.init()),
                            ("data".to_string(), s.data()),
                        ];
                        (s.label(), f.into_iter().collect())
                    })
                    .collect()
            });
        return Ok(Some(Suite {
            sizes: t.sizes.keys().cloned().collect(),
            seeds,
            steps,
            vocab: None,
            checkpoints,
            builtin: true,
            objective: t.objective,
            factors,
        }));
    }
    let Some(su) = &c.suite else {
        return Ok(None);
    };
    let mut checkpoints = Vec::new();
    let mut missing = Vec::new();
    let sizes = su.size_names();
    for size in &sizes {
        for seed in &su.seeds {
            for &step in &su.steps {
                let path = PathBuf::from(su.expand(&su.models, size, &seed.to_string(), step));
                let mut ckpt = Checkpoint {
                    size: size.clone(),
                    seed: seed.to_string(),
                    step,
                    model: ModelRef::File(path.clone()),
                };
                if !path.is_file() {
                    // Declared files that exist are used; the rest fetched.
                    match &su.fetch {
                        Some(_) => {
                            ckpt.model = ModelRef::Fetched {
                                label: ckpt.label(),
                            }
                        }
                        None => missing.push(path.display().to_string()),
                    }
                }
                checkpoints.push(ckpt);
            }
        }
    }
    if !missing.is_empty() {
        return Err(ConfigError::Invalid {
            file: l.file_name(),
            line: std::fs::read_to_string(&l.file)
                .map_or(0, |raw| crate::config::line_of_key(&raw, "suite.models")),
            key: "suite.models".into(),
            message: format!(
                "{} of {} checkpoints are missing (export them, or set suite.fetch): {}{}",
                missing.len(),
                checkpoints.len(),
                missing[..missing.len().min(3)].join(", "),
                if missing.len() > 3 {
                    format!(" and {} more", missing.len() - 3)
                } else {
                    String::new()
                }
            ),
        });
    }
    Ok(Some(Suite {
        sizes,
        seeds: su.seeds.iter().map(|s| s.to_string()).collect(),
        steps: su.steps.clone(),
        vocab: su.vocab,
        checkpoints,
        builtin: false,
        objective: su.kind,
        factors: su.factors(),
    }))
}

/// Warnings about an external suite: two steps of one run with identical
/// model files (published Pythia branches have this fault).
pub fn duplicate_steps(
    suite: &Suite,
    identity: &dyn Fn(&Checkpoint) -> Option<String>,
) -> Vec<String> {
    let mut seen: BTreeMap<(String, String, String), usize> = BTreeMap::new();
    let mut warnings = Vec::new();
    for c in &suite.checkpoints {
        let Some(id) = identity(c) else {
            continue;
        };
        let key = (c.size.clone(), c.seed.clone(), id);
        if let Some(prev) = seen.insert(key, c.step) {
            warnings.push(format!(
                "{} seed {}: steps {prev} and {} have identical weights ({})",
                c.size,
                c.seed,
                c.step,
                c.name()
            ));
        }
    }
    warnings
}

/// An external model's identity: the hashes of its files (the `.onnx` and
/// any external data beside it); None when one cannot be hashed.
pub fn file_identity(path: &Path, hash: &dyn Fn(&Path) -> Option<String>) -> Option<String> {
    model_files(path)
        .iter()
        .map(|f| hash(f))
        .collect::<Option<Vec<String>>>()
        .map(|h| h.join(","))
}
