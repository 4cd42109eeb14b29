//! The stage engine: plans, keys, locks, runs and records stage instances.
//!
//! It knows nothing of language models. A stage expands into `Instance`s,
//! each with a name, an explicit version, JSON parameters, named input files
//! and upstream instances; the engine turns those into a cache key
//! (`Ingredients::key`), reuses a valid store entry with that key, or runs the
//! instance's `Job` into a temp folder and commits it. Keys include upstream
//! *output* hashes, so an upstream rerun that reproduces its bytes reruns
//! nothing downstream (early cutoff).
//!
//! One concern a module, as cargo's `core/compiler`: `job` (what stages hand
//! in), `plan` (the DAG), `verdict` (fresh or why not), `compute` (one
//! instance: claim, run, commit), `scheduler` (executors: which instance
//! runs when and where), `store` and `hashcache` (entries and the file-hash
//! memo) over `fsutil`.

pub mod batch;
pub mod compute;
pub mod evict;
pub mod executor;
pub mod fsutil;
pub mod hashcache;
pub mod job;
pub mod memory;
pub mod plan;
pub mod scheduler;
pub mod store;
pub mod verdict;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use rayon::prelude::*;

use crate::error::EngineError;
use hashcache::HashCache;
use store::{Ingredients, Store};

pub use compute::Claim;
pub use executor::{Executor, Outcome, Reporter, RunOptions, RunReport, Silent, Work};
pub use job::{instance_id, Instance, Job, JobCtx};
pub use plan::Plan;
pub use scheduler::Local;
pub use verdict::{Reason, Verdict};

/// The engine bound to a store.
pub struct Engine {
    pub store: Store,
    pub memo: HashCache,
    pub cancel: Arc<AtomicBool>,
    /// Stage → label → the entry this config last made current (its root);
    /// status reasons compare with it before the store's last run.
    pub previous: BTreeMap<String, BTreeMap<String, String>>,
}

impl Engine {
    pub fn open(store_dir: &Path) -> Result<Engine, EngineError> {
        std::fs::create_dir_all(store_dir).map_err(|e| EngineError::io(store_dir, e))?;
        Ok(Engine {
            store: Store::new(store_dir),
            memo: HashCache::open(store_dir),
            cancel: Arc::new(AtomicBool::new(false)),
            previous: BTreeMap::new(),
        })
    }

    /// The entry last current for an instance: this config's own when it
    /// has one, else the last run's on the store (so a new sweep point's
    /// reasons name what it changed relative to the run before it).
    pub fn last_key(&self, stage: &str, label: &str) -> Option<String> {
        self.previous
            .get(stage)
            .and_then(|m| m.get(label))
            .cloned()
            .or_else(|| self.store.read_index(stage).get(label).cloned())
    }

    /// Hash every input file of the selected instances (memoised, parallel).
    pub(super) fn input_hashes(
        &self,
        plan: &Plan,
        sel: &[bool],
    ) -> Result<Vec<BTreeMap<String, String>>, EngineError> {
        plan.instances
            .par_iter()
            .zip(sel.par_iter())
            .map(|(inst, &s)| {
                if !s {
                    return Ok(BTreeMap::new());
                }
                inst.inputs
                    .iter()
                    .map(|(name, p)| {
                        self.memo
                            .hash(p)
                            .map(|h| (name.clone(), h))
                            .map_err(|e| match e {
                                EngineError::Io { path, source } => EngineError::Failed(format!(
                                    "{}: input {name} ({}): {source}",
                                    inst.id(),
                                    path.display()
                                )),
                                e => e,
                            })
                    })
                    .collect()
            })
            .collect()
    }

    /// The key ingredients of an instance given its upstream output hashes.
    pub(super) fn ingredients(
        inst: &Instance,
        inputs: &BTreeMap<String, String>,
        upstream: BTreeMap<String, String>,
    ) -> Ingredients {
        Ingredients {
            stage: inst.stage.to_string(),
            version: inst.version,
            params: inst.params.clone(),
            inputs: inputs.clone(),
            upstream,
        }
    }
}
