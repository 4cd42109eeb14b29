//! What a stage hands the engine: instances (a name, a version, key
//! parameters, input files, upstream instances) and the job each runs, and
//! what a running job sees of the engine.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use super::store;
use crate::error::StageError;

/// The work of one stage instance.
pub trait Job: Send + Sync {
    /// Write outputs into `ctx.out`. Return stage-specific facts for the
    /// manifest (`null` if none).
    fn run(&self, ctx: &JobCtx) -> Result<serde_json::Value, StageError>;
}

/// What a running job sees.
pub struct JobCtx<'a> {
    /// Temporary output folder; the engine moves it into the store.
    pub out: &'a Path,
    /// Folder for evictable intermediates of this instance (not outputs: not
    /// in the manifest, not hashed; whoever reads them must verify them).
    /// Keyed like the entry, created on demand, removed by `gc`.
    pub scratch: PathBuf,
    /// Threads this job may use.
    pub threads: usize,
    /// The GPU (CUDA device id) this job was given, when the run assigns
    /// devices (`gpu` instances under a local run with GPUs); else `None`:
    /// the default device, e.g. the one Slurm made visible.
    pub gpu: Option<u32>,
    pub(super) upstream: &'a HashMap<String, (PathBuf, PathBuf)>,
    /// Output files of each upstream instance, with their hashes.
    pub(super) upstream_outputs: &'a HashMap<String, &'a BTreeMap<String, store::OutputFile>>,
    /// blake3 of each named input file (hashed for the key already).
    pub(super) inputs: &'a BTreeMap<String, String>,
    pub(super) cancel: &'a AtomicBool,
    pub(super) progress: &'a (dyn Fn(u64, u64, &str) + Sync),
}

impl JobCtx<'_> {
    /// Entry folder of an upstream instance.
    pub fn upstream(&self, stage: &str, label: &str) -> Result<&Path, StageError> {
        let id = instance_id(stage, label);
        self.upstream
            .get(&id)
            .map(|p| p.0.as_path())
            .ok_or_else(|| StageError::Other(format!("upstream {id} is not a declared dependency")))
    }
    /// Scratch folder of an upstream instance (may not exist).
    pub fn upstream_scratch(&self, stage: &str, label: &str) -> Result<&Path, StageError> {
        let id = instance_id(stage, label);
        self.upstream
            .get(&id)
            .map(|p| p.1.as_path())
            .ok_or_else(|| StageError::Other(format!("upstream {id} is not a declared dependency")))
    }
    /// blake3 of a named input file, as the key used it.
    pub fn input_hash(&self, name: &str) -> Option<&str> {
        self.inputs.get(name).map(String::as_str)
    }
    /// blake3 of an output file `rel` of an upstream instance, from its manifest.
    pub fn upstream_output_hash(&self, stage: &str, label: &str, rel: &str) -> Option<&str> {
        self.upstream_outputs
            .get(&instance_id(stage, label))
            .and_then(|o| o.get(rel))
            .map(|f| f.blake3.as_str())
    }
    /// Progress inside a long instance: `done` of `total` units (`rows`,
    /// `steps`, …), shown with rate and ETA by the reporter.
    pub fn progress(&self, done: u64, total: u64, unit: &str) {
        (self.progress)(done, total, unit)
    }
    /// Return `Err(Cancelled)` once Ctrl-C was pressed; jobs call this
    /// between units of work.
    pub fn check_cancel(&self) -> Result<(), StageError> {
        if self.cancel.load(Ordering::Relaxed) {
            Err(StageError::Cancelled)
        } else {
            Ok(())
        }
    }
}

/// One node of the plan.
pub struct Instance {
    pub stage: &'static str,
    pub version: u32,
    /// Unique within the stage; "" for single-instance stages. Used in file
    /// names of the `current` view, so only `[A-Za-z0-9._=-]`.
    pub label: String,
    pub params: serde_json::Value,
    /// Named input files whose content is part of the key.
    pub inputs: Vec<(String, PathBuf)>,
    /// Upstream instances as (stage, label).
    pub deps: Vec<(&'static str, String)>,
    /// Runs models on a GPU when one is there: a local run with GPUs gives
    /// it a device of its own (one such instance per device at once).
    pub gpu: bool,
    /// At most this many instances of the named class run at once, beside
    /// the cores' work (e.g. network-bound downloads).
    pub limit: Option<(&'static str, usize)>,
    /// Its outputs may be deleted once every instance reading it has
    /// finished (e.g. a fetched checkpoint); recomputed if a reader must
    /// run again.
    pub evictable: bool,
    /// Evictable instances of one group (e.g. one size × step, every seed)
    /// are on disk together: a run bounds the groups open at once.
    pub group: Option<String>,
    /// Of evictable upstream entries it reads the manifests only (e.g. the
    /// report's timings): it neither holds their eviction nor needs them back.
    pub manifests_only: bool,
    pub job: Box<dyn Job>,
}

pub fn instance_id(stage: &str, label: &str) -> String {
    if label.is_empty() {
        stage.to_string()
    } else {
        format!("{stage}[{label}]")
    }
}

impl Instance {
    /// An instance whose key parameters are `params`, with no inputs or
    /// upstream yet (see `inputs`, `deps`).
    pub fn new(
        stage: &'static str,
        version: u32,
        label: impl Into<String>,
        params: serde_json::Value,
        job: Box<dyn Job>,
    ) -> Instance {
        Instance {
            stage,
            version,
            label: label.into(),
            params,
            inputs: vec![],
            deps: vec![],
            gpu: false,
            limit: None,
            evictable: false,
            group: None,
            manifests_only: false,
            job,
        }
    }
    pub fn inputs(mut self, inputs: Vec<(String, PathBuf)>) -> Instance {
        self.inputs = inputs;
        self
    }
    pub fn deps(mut self, deps: Vec<(&'static str, String)>) -> Instance {
        self.deps = deps;
        self
    }
    /// Whether it runs models on a GPU when there is one.
    pub fn on_gpu(mut self, yes: bool) -> Instance {
        self.gpu = yes;
        self
    }
    /// At most `n` instances of `class` at once, not on the cores' slots.
    pub fn limit(mut self, class: &'static str, n: usize) -> Instance {
        self.limit = Some((class, n.max(1)));
        self
    }
    /// Outputs deleted once read by every reader (see `evictable`), kept
    /// on disk with the rest of `group`.
    pub fn evictable_in(mut self, yes: bool, group: impl Into<String>) -> Instance {
        self.evictable = yes;
        self.group = yes.then(|| group.into());
        self
    }
    /// See `manifests_only`.
    pub fn manifests_only(mut self) -> Instance {
        self.manifests_only = true;
        self
    }
    pub fn id(&self) -> String {
        instance_id(self.stage, &self.label)
    }
}
