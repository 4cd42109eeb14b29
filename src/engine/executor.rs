//! The executor contract: what an [`Executor`] is asked to run ([`Work`]),
//! how each instance ended ([`Outcome`]), how progress is told
//! ([`Reporter`]), and the engine's side of a run around any executor
//! ([`Engine::run_with`]). The local pool (`scheduler`), batch systems
//! (`batch`) and eviction (`evict`) all stand on it.

use std::collections::{BTreeMap, BTreeSet};

use super::plan::Plan;
use super::store::Manifest;
use super::Engine;
use crate::error::EngineError;

/// Options of `run`.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Selectors (`STAGE` or `STAGE:LABEL-GLOB`) of what to bring up to
    /// date, with what they need upstream; empty: everything.
    pub targets: Vec<String>,
    /// Also everything downstream of the targets.
    pub downstream: bool,
    /// Selectors of instances recomputed even when fresh.
    pub force: Vec<String>,
    pub jobs: usize,
    /// CUDA devices for `gpu` instances, one instance per device at once.
    pub gpus: Vec<u32>,
    /// Groups of evictable instances open at once (0: no bound).
    pub max_groups: usize,
}

/// How one instance ended in a run.
#[derive(Debug, Clone)]
pub enum Outcome {
    Reused(Box<Manifest>),
    Computed(Box<Manifest>),
    Failed(String),
    Skipped(String),
    Cancelled,
}

/// Summary of a run.
#[derive(Debug, Default)]
pub struct RunReport {
    pub computed: usize,
    pub reused: usize,
    pub failed: Vec<String>,
    pub skipped: usize,
    pub cancelled: bool,
    pub outcomes: Vec<(String, Outcome)>,
}

/// Progress and log lines; implemented by the CLI (bars or tracing).
pub trait Reporter: Send + Sync {
    fn start(&self, _total: usize) {}
    fn begin(&self, _id: &str) {}
    fn done(&self, _id: &str, _outcome: &Outcome, _seconds: f64) {}
    /// A running instance reports `done` of `total` `unit`s.
    fn progress(&self, _id: &str, _done: u64, _total: u64, _unit: &str) {}
    fn finish(&self) {}
}

/// A reporter that says nothing (benchmarks, tests).
pub struct Silent;
impl Reporter for Silent {}

/// What an executor is asked to run.
pub struct Work<'a> {
    pub plan: &'a Plan,
    /// Which instances are selected (the targets and their upstream).
    pub sel: &'a [bool],
    /// Each instance's input-file hashes (empty when not selected).
    pub inputs: &'a [BTreeMap<String, String>],
    /// Instances recomputed even when fresh.
    pub forced: &'a [bool],
}

impl Work<'_> {
    /// The manifests of instance `i`'s upstream instances, from the
    /// outcomes so far; `None` while one has not ended reused or computed.
    pub fn upstream_of(
        &self,
        i: usize,
        outcomes: &[Option<Outcome>],
    ) -> Option<Vec<(String, Box<Manifest>)>> {
        self.plan
            .deps_of(i)
            .iter()
            .map(|&j| match &outcomes[j] {
                Some(Outcome::Reused(m)) | Some(Outcome::Computed(m)) => {
                    Some((self.plan.instances[j].id(), m.clone()))
                }
                _ => None,
            })
            .collect()
    }
}

/// Where and when instances are computed.
pub trait Executor {
    /// Compute the selected instances of `work`, each after its upstream;
    /// return every selected instance's outcome (None where not selected).
    /// An error means the executor itself failed (e.g. no cluster).
    fn execute(
        &self,
        engine: &Engine,
        work: &Work,
        reporter: &dyn Reporter,
    ) -> Result<Vec<Option<Outcome>>, EngineError>;
}

impl Engine {
    /// The work `opts` asks of `plan` (selection, forced instances, input
    /// hashes), handed to `f`.
    pub fn with_work<T>(
        &self,
        plan: &Plan,
        opts: &RunOptions,
        f: impl FnOnce(&Work) -> T,
    ) -> Result<T, EngineError> {
        plan.check_selectors(opts.targets.iter().chain(&opts.force))?;
        let sel = plan.closure_with(&opts.targets, opts.downstream);
        let forced: Vec<bool> = (0..plan.len())
            .map(|i| opts.force.iter().any(|f| plan.matches(i, f)))
            .collect();
        let inputs = self.input_hashes(plan, &sel)?;
        Ok(f(&Work {
            plan,
            sel: &sel,
            inputs: &inputs,
            forced: &forced,
        }))
    }

    /// Run what is stale among the selected instances on `executor`, then
    /// record each computed or reused entry as current.
    pub fn run_with(
        &self,
        executor: &dyn Executor,
        plan: &Plan,
        opts: &RunOptions,
        reporter: &dyn Reporter,
    ) -> Result<RunReport, EngineError> {
        let outcomes = self.with_work(plan, opts, |work| executor.execute(self, work, reporter));
        reporter.finish();
        let outcomes = outcomes??;
        let mut report = RunReport::default();
        let mut updates: BTreeMap<&'static str, BTreeMap<String, String>> = BTreeMap::new();
        for (i, o) in outcomes.into_iter().enumerate() {
            let Some(o) = o else { continue };
            let inst = &plan.instances[i];
            match &o {
                Outcome::Reused(m) | Outcome::Computed(m) => {
                    if matches!(o, Outcome::Reused(_)) {
                        report.reused += 1;
                    } else {
                        report.computed += 1;
                    }
                    updates
                        .entry(inst.stage)
                        .or_default()
                        .insert(inst.label.clone(), m.key.clone());
                }
                Outcome::Failed(e) => report.failed.push(format!("{}: {e}", inst.id())),
                Outcome::Skipped(_) => report.skipped += 1,
                Outcome::Cancelled => report.cancelled = true,
            }
            report.outcomes.push((inst.id(), o));
        }
        // Labels the plan no longer has are dropped from the index.
        for (stage, up) in &updates {
            let labels: BTreeSet<String> = plan
                .instances
                .iter()
                .filter(|x| x.stage == *stage)
                .map(|x| x.label.clone())
                .collect();
            // The view is rewritten when an entry was evicted, or computed:
            // a recompute under the same key (`run --force` after a code
            // change) may leave other file names than the entry it replaced.
            let refresh = report.outcomes.iter().any(|(_, o)| match o {
                Outcome::Reused(m) => m.evicted && m.stage == *stage,
                Outcome::Computed(m) => m.stage == *stage,
                _ => false,
            });
            self.store
                .update_index_refreshing(stage, up, Some(&labels), refresh)?;
        }
        self.memo.save()?;
        Ok(report)
    }
}
