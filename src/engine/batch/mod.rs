//! Batch executors: the plan's stale instances as one job array per stage
//! (chunked under the system's largest array), each array after the arrays
//! its instances depend on, then followed to the end. What any batch system
//! needs lives here; what is one system's (its commands, its script header,
//! its states) is a [`BatchSystem`], one file each: [`slurm`].
//!
//! A task computes one instance through [`task::run_task`]: same key, lock
//! and atomic write as a local run, its key resolved when it starts (a
//! downstream key depends on upstream output hashes that exist only then).
//! Arrays depend on each other "after any" end, not "after success": a
//! failed instance then holds back only what needs it (its dependents' tasks
//! end at once, skipped, naming it), as in a local run, instead of every
//! task of every later array.
//!
//! Everything a run writes lies in its run folder (`<store>/.<system>/<run>/`):
//! `run.json` (arrays, job ids, tasks), one `<array>.sh` per array, and per
//! task `<array>-<task>.log` and `<array>-<task>.result.json`.

pub mod slurm;
pub mod task;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::executor::{Executor, Outcome, Reporter, Work};
use super::fsutil::write_atomic;
use super::{Engine, Verdict};
use crate::error::EngineError;
use task::TaskResult;

/// Where a task stands, as a batch system reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskState {
    Queued,
    Running,
    /// Ended, with the system's word for how (COMPLETED, FAILED, …).
    Ended(String),
}

/// One array's batch script, as the system's header needs it.
pub struct ArrayScript<'a> {
    pub stage: &'a str,
    /// Array name (`<stage>` or `<stage>-c<k>`): logs go to
    /// `<run_dir>/<name>-<task>.log` ([`log_path`]).
    pub name: &'a str,
    pub tasks: usize,
    pub run_dir: &'a Path,
    pub workdir: &'a Path,
    /// Submission arguments of every task of the array.
    pub args: Vec<&'a str>,
}

/// What one batch system (Slurm, PBS, LSF, Kubernetes jobs) is to the
/// executor: how to submit an array, ask how its tasks stand, cancel it.
pub trait BatchSystem: Send + Sync {
    /// Its name in messages ("Slurm"); lower-cased, its runs' folder.
    fn name(&self) -> &'static str;
    /// The largest array it takes (tasks 0 to it − 1).
    fn max_array_size(&self) -> Result<usize, EngineError>;
    /// The script's lines before its command: interpreter, job name, array
    /// range, log files, working folder, `args`.
    fn header(&self, script: &ArrayScript) -> Vec<String>;
    /// The shell expression of the task's index inside the script.
    fn task_index(&self) -> &'static str;
    /// Submit a script to run after every job of `after` has ended (in any
    /// way); its job id.
    fn submit(&self, script: &Path, after: &[&str]) -> Result<String, EngineError>;
    /// Every task of `jobs` the system still knows, by (job, task index).
    fn states(&self, jobs: &[String]) -> Result<HashMap<(String, usize), TaskState>, EngineError>;
    /// Cancel every task of `jobs`.
    fn cancel(&self, jobs: &[String]) -> Result<(), EngineError>;
}

const RECORD: &str = "run.json";
const RESULT_SUFFIX: &str = ".result.json";

/// Folder of a system's runs, under the store: `.slurm`.
pub fn runs_dir(store: &Path, system: &dyn BatchSystem) -> PathBuf {
    store.join(format!(".{}", system.name().to_lowercase()))
}

/// How to submit: everything but the plan.
#[derive(Debug, Clone)]
pub struct BatchSpec {
    /// Submission arguments of every task (partition, account, time, …).
    pub args: Vec<String>,
    /// More submission arguments per stage (cpus, mem, gpus, time).
    pub stage_args: BTreeMap<String, Vec<String>>,
    /// Largest array; 0: the system's own limit.
    pub max_array_size: usize,
    pub poll: Duration,
    /// The task command; `<run dir> <array> <task index>` are appended.
    pub task_argv: Vec<String>,
    /// Folder the tasks run in.
    pub workdir: PathBuf,
}

/// One submitted array.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArrayRecord {
    /// `<stage>`, or `<stage>-c<k>` when a stage needs several arrays.
    pub name: String,
    pub stage: String,
    pub job: String,
    /// Instance ids, by task index.
    pub tasks: Vec<String>,
    /// Task indices recomputed even when fresh.
    pub forced: BTreeSet<usize>,
}

/// What one batch run submitted (`run.json`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunRecord {
    pub submitted_unix: f64,
    pub arrays: Vec<ArrayRecord>,
    /// Set by the run that followed it to the end.
    #[serde(default)]
    pub finished: bool,
}

impl RunRecord {
    pub fn read(run_dir: &Path) -> Result<RunRecord, EngineError> {
        let p = run_dir.join(RECORD);
        let bytes = std::fs::read(&p).map_err(|e| EngineError::io(&p, e))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| EngineError::Failed(format!("{}: {e}", p.display())))
    }
    fn write(&self, run_dir: &Path) -> Result<(), EngineError> {
        write_atomic(
            &run_dir.join(RECORD),
            &serde_json::to_vec_pretty(self).expect("record serialises"),
        )
    }
    pub fn jobs(&self) -> Vec<String> {
        self.arrays.iter().map(|a| a.job.clone()).collect()
    }
}

/// The runs recorded in a runs folder ([`runs_dir`]) that no run followed to the end (submitted
/// with `--detach`, or whose follower was stopped), newest last.
pub fn unfinished_runs(runs: &Path) -> Vec<(PathBuf, RunRecord)> {
    let mut v: Vec<(PathBuf, RunRecord)> = std::fs::read_dir(runs)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.path(), RunRecord::read(&e.path()).ok()?)))
        .filter(|(_, r)| !r.finished)
        .collect();
    v.sort_by(|a, b| a.1.submitted_unix.total_cmp(&b.1.submitted_unix));
    v
}

/// A log file of a task.
pub fn log_path(run_dir: &Path, array: &str, task: usize) -> PathBuf {
    run_dir.join(format!("{array}-{task}.log"))
}

/// The batch executor on one system.
pub struct Batch<S: BatchSystem> {
    pub system: S,
    pub spec: BatchSpec,
    /// This run's folder (created on submission).
    pub run_dir: PathBuf,
}

/// What submitting left to follow.
pub struct Submitted {
    pub record: RunRecord,
    /// Outcomes known without the batch system (fresh instances reused).
    pub outcomes: Vec<Option<Outcome>>,
    /// Instance index of each (array, task).
    pub tasks: Vec<(usize, usize, usize)>,
}

impl<S: BatchSystem> Batch<S> {
    /// Submit the stale selected instances of `work`: one array per stage
    /// (or per chunk of the largest array), each depending on the arrays that
    /// hold its instances' upstream. Fresh instances are reused, not
    /// submitted; nothing is submitted when nothing is stale.
    pub fn submit(&self, engine: &Engine, work: &Work) -> Result<Submitted, EngineError> {
        let plan = work.plan;
        let verdicts = engine.evaluate(plan, work.sel)?;
        let mut outcomes: Vec<Option<Outcome>> = vec![None; plan.len()];
        // Stage → instances to submit, in topological order.
        let mut todo: Vec<(&'static str, Vec<usize>)> = Vec::new();
        for (i, v) in verdicts.into_iter().enumerate() {
            let Some((v, _)) = v else { continue };
            match v {
                Verdict::Fresh(m) if !work.forced[i] => outcomes[i] = Some(Outcome::Reused(m)),
                _ => {
                    let stage = plan.instances[i].stage;
                    match todo.iter_mut().find(|(s, _)| *s == stage) {
                        Some((_, v)) => v.push(i),
                        None => todo.push((stage, vec![i])),
                    }
                }
            }
        }
        let mut record = RunRecord {
            submitted_unix: unix_now(),
            ..RunRecord::default()
        };
        let mut tasks = Vec::new();
        if todo.is_empty() {
            return Ok(Submitted {
                record,
                outcomes,
                tasks,
            });
        }
        let max = match self.spec.max_array_size {
            0 => self.system.max_array_size()?,
            n => n,
        }
        .max(1);
        std::fs::create_dir_all(&self.run_dir).map_err(|e| EngineError::io(&self.run_dir, e))?;
        // Instance → the array that computes it.
        let mut array_of: BTreeMap<usize, usize> = BTreeMap::new();
        for (stage, insts) in &todo {
            let chunks: Vec<&[usize]> = insts.chunks(max).collect();
            for (c, chunk) in chunks.iter().enumerate() {
                let name = if chunks.len() == 1 {
                    stage.to_string()
                } else {
                    format!("{stage}-c{c}")
                };
                let deps: BTreeSet<&str> = chunk
                    .iter()
                    .flat_map(|&i| plan.deps_of(i))
                    .filter_map(|j| array_of.get(j))
                    .map(|&a| record.arrays[a].job.as_str())
                    .collect();
                let script = self.write_script(&name, stage, chunk.len())?;
                let after: Vec<&str> = deps.into_iter().collect();
                let job = match self.system.submit(&script, &after) {
                    Ok(j) => j,
                    Err(e) => {
                        // Nothing half-submitted keeps running.
                        let _ = self.system.cancel(&record.jobs());
                        return Err(e);
                    }
                };
                let a = record.arrays.len();
                for (t, &i) in chunk.iter().enumerate() {
                    array_of.insert(i, a);
                    tasks.push((a, t, i));
                }
                record.arrays.push(ArrayRecord {
                    name,
                    stage: stage.to_string(),
                    job,
                    tasks: chunk.iter().map(|&i| plan.instances[i].id()).collect(),
                    forced: (0..chunk.len())
                        .filter(|&t| work.forced[chunk[t]])
                        .collect(),
                });
                // Written after each array: a task reads it when it starts.
                record.write(&self.run_dir)?;
            }
        }
        Ok(Submitted {
            record,
            outcomes,
            tasks,
        })
    }

    /// The batch script of one array of `n` tasks.
    fn write_script(&self, name: &str, stage: &str, n: usize) -> Result<PathBuf, EngineError> {
        let q = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
        let args = self
            .spec
            .args
            .iter()
            .chain(self.spec.stage_args.get(stage).into_iter().flatten())
            .map(String::as_str)
            .collect();
        let mut lines = self.system.header(&ArrayScript {
            stage,
            name,
            tasks: n,
            run_dir: &self.run_dir,
            workdir: &self.spec.workdir,
            args,
        });
        let argv: Vec<String> = self.spec.task_argv.iter().map(|a| q(a)).collect();
        lines.push(format!(
            "exec {} {} {} \"{}\"",
            argv.join(" "),
            q(&self.run_dir.display().to_string()),
            q(name),
            self.system.task_index()
        ));
        let path = self.run_dir.join(format!("{name}.sh"));
        write_atomic(&path, (lines.join("\n") + "\n").as_bytes())?;
        Ok(path)
    }

    /// Follow submitted tasks until each has ended (or the run is
    /// cancelled: then its jobs are cancelled too), reporting as they start
    /// and end.
    pub fn follow(
        &self,
        engine: &Engine,
        work: &Work,
        mut sub: Submitted,
        reporter: &dyn Reporter,
    ) -> Result<Vec<Option<Outcome>>, EngineError> {
        let plan = work.plan;
        let jobs = sub.record.jobs();
        let mut open: Vec<(usize, usize, usize)> = sub.tasks.clone();
        let mut started: BTreeMap<usize, Instant> = BTreeMap::new();
        // Evictable entries go once their readers' tasks have ended.
        let mut evict = super::evict::Eviction::new(plan, work.sel, 0);
        let mut misses = 0u32;
        while !open.is_empty() {
            if engine.cancel.load(Ordering::Relaxed) {
                self.system.cancel(&jobs)?;
                for &(_, _, i) in &open {
                    sub.outcomes[i] = Some(Outcome::Cancelled);
                }
                return Ok(sub.outcomes);
            }
            let states = match self.system.states(&jobs) {
                Ok(s) => {
                    misses = 0;
                    s
                }
                // The controller may be briefly busy; give up after a minute.
                Err(e) if f64::from(misses) * self.spec.poll.as_secs_f64() < 60.0 => {
                    misses += 1;
                    tracing::warn!("{e}; retrying");
                    std::thread::sleep(self.spec.poll);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let mut still = Vec::new();
            for (a, t, i) in open {
                let array = &sub.record.arrays[a];
                let state = states.get(&(array.job.clone(), t));
                let id = plan.instances[i].id();
                match state {
                    Some(s @ (TaskState::Queued | TaskState::Running)) => {
                        if *s == TaskState::Running && !started.contains_key(&i) {
                            started.insert(i, Instant::now());
                            reporter.begin(&id);
                        }
                        still.push((a, t, i));
                    }
                    _ => {
                        let state = match state {
                            Some(TaskState::Ended(s)) => Some(s.as_str()),
                            _ => None,
                        };
                        let (o, secs) = self.outcome(engine, array, t, state);
                        // The task's own time; else as seen from here.
                        let secs = secs.unwrap_or_else(|| {
                            started.get(&i).map_or(0.0, |s| s.elapsed().as_secs_f64())
                        });
                        reporter.done(&id, &o, secs);
                        sub.outcomes[i] = Some(o);
                        for (stage, key) in evict.consumed(plan, work.sel, &mut sub.outcomes, i) {
                            if let Err(e) = engine.store.evict(stage, &key) {
                                tracing::warn!("could not evict {stage}/{key}: {e}");
                            }
                        }
                    }
                }
            }
            open = still;
            if !open.is_empty() {
                std::thread::sleep(self.spec.poll);
            }
        }
        if !sub.record.arrays.is_empty() {
            sub.record.finished = true;
            sub.record.write(&self.run_dir)?;
        }
        Ok(sub.outcomes)
    }

    /// How task `t` of `array` ended (its result file, else what the system
    /// says), and the seconds it took when it says.
    fn outcome(
        &self,
        engine: &Engine,
        array: &ArrayRecord,
        t: usize,
        state: Option<&str>,
    ) -> (Outcome, Option<f64>) {
        let log = log_path(&self.run_dir, &array.name, t);
        let result: Option<TaskResult> = std::fs::read(
            self.run_dir
                .join(format!("{}-{t}{RESULT_SUFFIX}", array.name)),
        )
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
        let state = state.unwrap_or("ENDED");
        let system = self.system.name();
        let seconds = result.as_ref().map(|r| r.seconds);
        let o = match result {
            Some(r) if r.outcome == "computed" || r.outcome == "reused" => {
                let key = r.key.unwrap_or_default();
                match engine.store.read_manifest(&array.stage, &key) {
                    Some(m) if r.outcome == "computed" => Outcome::Computed(Box::new(m)),
                    Some(m) => Outcome::Reused(Box::new(m)),
                    None => Outcome::Failed(format!(
                        "{} {key} is not in the store after the task ended; log {}",
                        array.stage,
                        log.display()
                    )),
                }
            }
            Some(r) if r.outcome == "skipped" => Outcome::Skipped(r.message.unwrap_or_default()),
            Some(r) => Outcome::Failed(format!(
                "{system} {state}: {}; log {}",
                r.message.unwrap_or_default(),
                log.display()
            )),
            None => Outcome::Failed(format!(
                "{system} {state}, no result (killed or never started); log {}",
                log.display()
            )),
        };
        (o, seconds)
    }
}

impl<S: BatchSystem> Executor for Batch<S> {
    fn execute(
        &self,
        engine: &Engine,
        work: &Work,
        reporter: &dyn Reporter,
    ) -> Result<Vec<Option<Outcome>>, EngineError> {
        reporter.start(work.sel.iter().filter(|&&s| s).count());
        let sub = self.submit(engine, work)?;
        for (i, o) in sub.outcomes.iter().enumerate() {
            if let Some(o) = o {
                reporter.done(&work.plan.instances[i].id(), o, 0.0);
            }
        }
        if !sub.record.arrays.is_empty() {
            tracing::info!(
                "submitted {} tasks in {} {} arrays (jobs {}); following",
                sub.tasks.len(),
                sub.record.arrays.len(),
                self.system.name(),
                sub.record.jobs().join(", ")
            );
        }
        self.follow(engine, work, sub, reporter)
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
