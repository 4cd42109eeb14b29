//! One batch task: compute exactly one instance through the same engine
//! calls as a local run (same key, lock and atomic write), its key resolved
//! when it starts from the upstream entries already in the store.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{RunRecord, RESULT_SUFFIX};
use crate::engine::evict::restore_upstream;
use crate::engine::executor::{Outcome, Reporter, Work};
use crate::engine::fsutil::write_atomic;
use crate::engine::plan::Plan;
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
    // The store's fresh entries stand for the upstream tasks that finished.
    let mut outcomes: Vec<Option<Outcome>> = engine
        .evaluate(plan, &sel)?
        .into_iter()
        .map(|v| match v {
            Some((Verdict::Fresh(m), _)) => Some(Outcome::Reused(m)),
            _ => None,
        })
        .collect();
    if let Some(&j) = plan.deps_of(i).iter().find(|&&j| outcomes[j].is_none()) {
        return Ok(Outcome::Skipped(format!(
            "upstream {} is missing (its task failed or has not run); not computed here",
            plan.instances[j].id()
        )));
    }
    let inputs = engine.input_hashes(plan, &sel)?;
    let flags: Vec<bool> = (0..plan.len()).map(|k| k == i && forced).collect();
    let work = Work {
        plan,
        sel: &sel,
        inputs: &inputs,
        forced: &flags,
    };
    let mut upstream = work
        .upstream_of(i, &outcomes)
        .expect("every upstream is fresh");
    // Evicted upstream entries (deleted after use) come back first.
    match restore_upstream(engine, &work, &outcomes, i, &upstream, reporter) {
        Ok(back) if !back.is_empty() => {
            for (j, o) in back {
                outcomes[j] = Some(o);
            }
            upstream = work
                .upstream_of(i, &outcomes)
                .expect("every upstream is fresh");
        }
        Ok(_) => {}
        Err(e) => return Ok(Outcome::Failed(e)),
    }
    let inst = &plan.instances[i];
    reporter.begin(&inst.id());
    Ok(match engine.claim(inst, &inputs[i], &upstream, forced) {
        Err(done) => done,
        Ok(claim) => engine.compute(inst, claim, &upstream, threads, None, reporter),
    })
}
