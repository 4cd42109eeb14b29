//! The science, one module per stage. Each stage is a type implementing
//! [`Stage`]; [`REGISTRY`] lists them in plan order and [`plan`] is a loop
//! over it. Adding a stage means a new module and one line in the registry.
//!
//! **Keys.** A job's serialised fields are its key parameters
//! ([`Stage::instance`]), so what a job reads is what its key holds. A field
//! left out of the key is marked `#[serde(skip)]` with a comment `unkeyed:`
//! saying why; the rules, the same in every stage:
//! - input files are keyed by content (the engine hashes them), not by path;
//! - upstream entries are keyed by their output hashes, not by label lists;
//! - threads and device change speed, not results within float tolerance;
//! - batch size *is* keyed wherever a model runs (padding changes the float
//!   summation order, and outputs are compared byte for byte).
//!
//! **Layers.** A stage imports only upstream stages (for their names and the
//! readers of their outputs) and the libraries below (`lm::eval`,
//! `analysis`, `suite`, `text`, `table`, …), never a downstream stage
//! (`tests/testsuite/layers.rs` checks it).

pub mod aggregate;
pub mod agreement;
pub mod annotate;
pub mod blimp;
pub mod blimp_conv;
pub mod corpus;
pub mod dist;
pub mod drift;
pub mod fetch;
pub mod frequency;
pub mod icl;
pub mod icl_summary;
pub mod kl;
pub mod lineage;
pub mod report;
pub mod tagger;
pub mod tokenizer;
pub mod train;
pub mod traindata;
pub mod unigram;

use serde::Serialize;

use crate::config::Loaded;
use crate::engine::{Instance, Job, Plan};
use crate::error::ConfigError;
use crate::suite::Suite;

/// What a stage sees while it plans its instances.
pub struct PlanCtx<'a> {
    pub loaded: &'a Loaded,
    /// The checkpoint suite, when the config has one.
    pub suite: Option<&'a Suite>,
    /// Instances of the stages before this one in the registry.
    pub planned: &'a [Instance],
}

impl PlanCtx<'_> {
    pub fn config(&self) -> &crate::config::Config {
        &self.loaded.config
    }
    /// The suite, when it has seeds to compare (two or more).
    pub fn seeds_to_compare(&self) -> Option<&Suite> {
        self.suite.filter(|s| s.seeds.len() >= 2)
    }
}

/// A stage of the pipeline: a name, a version (bumped whenever its outputs
/// would change) and the instances it expands the config into.
pub trait Stage: Sync {
    const NAME: &'static str;
    const VERSION: u32;
    fn instances(&self, cx: &PlanCtx) -> Vec<Instance>;

    /// An instance of this stage running `job`, keyed by the job's fields.
    fn instance<J: Job + Serialize + 'static>(&self, label: impl Into<String>, job: J) -> Instance {
        let params = serde_json::to_value(&job).expect("job parameters serialise");
        Instance::new(Self::NAME, Self::VERSION, label, params, Box::new(job))
    }
}

/// A `Stage` as the registry holds it.
pub trait DynStage: Sync {
    fn name(&self) -> &'static str;
    fn instances(&self, cx: &PlanCtx) -> Vec<Instance>;
}

impl<S: Stage> DynStage for S {
    fn name(&self) -> &'static str {
        S::NAME
    }
    fn instances(&self, cx: &PlanCtx) -> Vec<Instance> {
        Stage::instances(self, cx)
    }
}

/// Every stage, in plan order (each after the stages it reads).
pub const REGISTRY: &[&dyn DynStage] = &[
    &tokenizer::Tokenizer,
    &corpus::Corpus,
    &frequency::Frequency,
    &unigram::Unigram,
    &tagger::Tagger,
    &annotate::Annotate,
    &traindata::TrainData,
    &train::Train,
    &fetch::Fetch,
    &lineage::Lineage,
    &dist::Dist,
    &kl::Kl,
    &drift::Drift,
    &aggregate::Aggregate,
    &blimp::Blimp,
    &blimp_conv::BlimpConv,
    &agreement::Agreement,
    &icl::Icl,
    &icl_summary::IclSummary,
    &report::Report,
];

/// Expand a loaded configuration into the plan of stage instances.
pub fn plan(l: &Loaded) -> Result<Plan, ConfigError> {
    let suite = crate::suite::from_config(l)?;
    agreement::check(l, suite.as_ref())?;
    if let Some(s) = suite.as_ref() {
        aggregate::compare::check(&l.config.compare, &s.sizes, &s.steps)
            .map_err(|e| ConfigError::Plan(format!("{}: {e}", l.file_name())))?;
    }
    let mut instances = Vec::new();
    for stage in REGISTRY {
        let cx = PlanCtx {
            loaded: l,
            suite: suite.as_ref(),
            planned: &instances,
        };
        let new = stage.instances(&cx);
        instances.extend(new);
    }
    Plan::new(instances).map_err(|e| ConfigError::Plan(format!("{}: {e}", l.file_name())))
}
