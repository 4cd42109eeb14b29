//! One Slurm task: compute exactly one instance through the same engine
//! calls as a local run (same key, lock and atomic write), its key resolved
//! when it starts from the upstream entries already in the store.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{RunRecord, RESULT_SUFFIX};
use crate::engine::fsutil::write_atomic;
use crate::engine::plan::Plan;
use crate::engine::scheduler::{Outcome, Reporter};
use crate::engine::{Engine, Verdict};
use crate::error::EngineError;

/// What a task leaves for the run that follows it (`<array>-<task>.result.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskResult {
    /// `computed`, `reused`, `failed` or `skipped`.
    pub outcome: String,
    pub key: Option<String>,
    pub message: Option<String>,
    pub seconds: f64,
}

impl TaskResult {
    fn of(o: &Outcome, seconds: f64) -> TaskResult {
        let (outcome, key, message) = match o {
            Outcome::Computed(m) => ("computed", Some(m.key.clone()), None),
            Outcome::Reused(m) => ("reused", Some(m.key.clone()), None),
            Outcome::Failed(e) => ("failed", None, Some(e.clone())),
            Outcome::Skipped(e) => ("skipped", None, Some(e.clone())),
            Outcome::Cancelled => ("failed", None, Some("interrupted".into())),
        };
        TaskResult {
            outcome: outcome.into(),
            key,
            message,
            seconds,
        }
    }
}

/// Task `task` of array `array` of the run in `run_dir`: find its instance
/// in `plan`, check its upstream entries, compute it with `threads`, and
/// record the result beside the task's log.
pub fn run_task(
    engine: &Engine,
    plan: &Plan,
    run_dir: &Path,
    array: &str,
    task: usize,
    threads: usize,
    reporter: &dyn Reporter,
) -> Result<Outcome, EngineError> {
    let record = RunRecord::read(run_dir)?;
    let a = record
        .arrays
        .iter()
        .find(|a| a.name == array)
        .ok_or_else(|| EngineError::Failed(format!("{}: no array {array}", run_dir.display())))?;
    let id = a.tasks.get(task).ok_or_else(|| {
        EngineError::Failed(format!(
            "{}: array {array} has no task {task}",
            run_dir.display()
        ))
    })?;
    let i = (0..plan.len())
        .find(|&i| plan.instances[i].id() == *id)
        .ok_or_else(|| {
            EngineError::Failed(format!(
                "{id} is not in the plan of this config (was it edited after submitting?)"
            ))
        })?;
    let t0 = std::time::Instant::now();
    let outcome = compute_one(engine, plan, i, a.forced.contains(&task), threads, reporter)?;
    let result = TaskResult::of(&outcome, t0.elapsed().as_secs_f64());
    let path = run_dir.join(format!("{array}-{task}{RESULT_SUFFIX}"));
    write_atomic(
        &path,
        &serde_json::to_vec_pretty(&result).expect("result serialises"),
    )?;
    Ok(outcome)
}

/// Instance `i` with its upstream taken from the store: each upstream
/// instance must be fresh (its task finished); a missing one is not
/// computed here.
fn compute_one(
    engine: &Engine,
    plan: &Plan,
    i: usize,
    forced: bool,
    threads: usize,
    reporter: &dyn Reporter,
) -> Result<Outcome, EngineError> {
    let sel = plan.upstream_closure(i);
    let verdicts = engine.evaluate(plan, &sel)?;
    let mut upstream = Vec::new();
    for &j in plan.deps_of(i) {
        match &verdicts[j] {
            Some((Verdict::Fresh(m), _)) => upstream.push((plan.instances[j].id(), m.clone())),
            _ => {
                return Ok(Outcome::Skipped(format!(
                    "upstream {} is missing (its task failed or has not run); not computed here",
                    plan.instances[j].id()
                )))
            }
        }
    }
    let only: Vec<bool> = (0..plan.len()).map(|k| k == i).collect();
    let inputs = engine.input_hashes(plan, &only)?;
    let inst = &plan.instances[i];
    // Evicted upstream entries (deleted after use) come back first.
    if !inst.manifests_only
        && upstream.iter().any(|(_, m)| m.evicted)
        && !engine.would_reuse(inst, &inputs[i], &upstream, forced)
    {
        let all = engine.input_hashes(plan, &sel)?;
        let manifest = |k: usize| match &verdicts[k] {
            Some((Verdict::Fresh(m), _)) => Some((plan.instances[k].id(), m.clone())),
            _ => None,
        };
        for (slot, &j) in plan.deps_of(i).iter().enumerate() {
            if !upstream[slot].1.evicted {
                continue;
            }
            let up_j: Vec<_> = plan
                .deps_of(j)
                .iter()
                .filter_map(|&k| manifest(k))
                .collect();
            match engine.restore(&plan.instances[j], &all[j], &up_j, reporter) {
                Outcome::Computed(m) | Outcome::Reused(m) => upstream[slot].1 = m,
                Outcome::Failed(e) => {
                    return Ok(Outcome::Failed(format!(
                        "restoring {}: {e}",
                        plan.instances[j].id()
                    )))
                }
                _ => return Ok(Outcome::Cancelled),
            }
        }
    }
    reporter.begin(&inst.id());
    Ok(match engine.claim(inst, &inputs[i], &upstream, forced) {
        Err(done) => done,
        Ok(claim) => engine.compute(inst, claim, &upstream, threads, None, reporter),
    })
}
