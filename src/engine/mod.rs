//! The stage engine: plans, keys, locks, runs and records stage instances.
//!
//! It knows nothing of language models. A stage expands into `Instance`s,
//! each with a name, an explicit version, JSON parameters, named input files
//! and upstream instances; the engine turns those into a cache key
//! (`Ingredients::key`), reuses a valid store entry with that key, or runs the
//! instance's `Job` into a temp folder and commits it. Keys include upstream
//! *output* hashes, so an upstream rerun that reproduces its bytes reruns
//! nothing downstream (early cutoff).

pub mod hashcache;
pub mod store;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use rayon::prelude::*;

use crate::error::{EngineError, StageError};
use hashcache::HashCache;
use store::{EntryLock, EntryState, Ingredients, Manifest, Store};

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
    upstream: &'a HashMap<String, (PathBuf, PathBuf)>,
    /// Output files of each upstream instance, with their hashes.
    upstream_outputs: &'a HashMap<String, &'a BTreeMap<String, store::OutputFile>>,
    /// blake3 of each named input file (hashed for the key already).
    inputs: &'a BTreeMap<String, String>,
    cancel: &'a AtomicBool,
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
    /// Uses every core by itself (e.g. training): runs while nothing else
    /// computes, since two such jobs sharing the cores are slower than one
    /// after the other.
    pub exclusive: bool,
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
    pub fn id(&self) -> String {
        instance_id(self.stage, &self.label)
    }
}

/// A validated DAG of instances in topological order.
pub struct Plan {
    pub instances: Vec<Instance>,
    /// Stage names in declaration order.
    pub stages: Vec<&'static str>,
    deps: Vec<Vec<usize>>,
}

impl Plan {
    /// Check labels, resolve dependencies and order the instances.
    pub fn new(instances: Vec<Instance>) -> Result<Plan, EngineError> {
        let mut index = HashMap::new();
        let mut stages = Vec::new();
        for (i, inst) in instances.iter().enumerate() {
            if !inst
                .label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._=-".contains(c))
            {
                return Err(EngineError::Plan(format!("bad label in {}", inst.id())));
            }
            if index.insert(inst.id(), i).is_some() {
                return Err(EngineError::Plan(format!(
                    "duplicate instance {}",
                    inst.id()
                )));
            }
            if !stages.contains(&inst.stage) {
                stages.push(inst.stage);
            }
        }
        let mut deps = Vec::with_capacity(instances.len());
        for inst in &instances {
            let mut d = Vec::new();
            for (s, l) in &inst.deps {
                let id = instance_id(s, l);
                match index.get(&id) {
                    Some(&j) => d.push(j),
                    None => {
                        return Err(EngineError::Plan(format!(
                            "{} depends on unknown instance {id}",
                            inst.id()
                        )))
                    }
                }
            }
            deps.push(d);
        }
        // Kahn's algorithm; a leftover node means a cycle.
        let n = instances.len();
        let mut indeg: Vec<usize> = deps.iter().map(|d| d.len()).collect();
        let mut dependents = vec![Vec::new(); n];
        for (i, d) in deps.iter().enumerate() {
            for &j in d {
                dependents[j].push(i);
            }
        }
        // Among free nodes take the earliest declared, so instances keep the
        // order their stage listed them in (e.g. grouped by size and step).
        let mut queue: BinaryHeap<Reverse<usize>> =
            (0..n).filter(|&i| indeg[i] == 0).map(Reverse).collect();
        let mut order = Vec::with_capacity(n);
        while let Some(Reverse(i)) = queue.pop() {
            order.push(i);
            for &k in &dependents[i] {
                indeg[k] -= 1;
                if indeg[k] == 0 {
                    queue.push(Reverse(k));
                }
            }
        }
        if order.len() != n {
            return Err(EngineError::Plan("dependency cycle".into()));
        }
        // Re-index in topological order.
        let mut pos = vec![0; n];
        for (new, &old) in order.iter().enumerate() {
            pos[old] = new;
        }
        let mut slots: Vec<Option<Instance>> = instances.into_iter().map(Some).collect();
        let instances: Vec<Instance> = order.iter().map(|&o| slots[o].take().unwrap()).collect();
        let deps = order
            .iter()
            .map(|&o| deps[o].iter().map(|&j| pos[j]).collect())
            .collect();
        Ok(Plan {
            instances,
            stages,
            deps,
        })
    }

    pub fn len(&self) -> usize {
        self.instances.len()
    }
    pub fn is_empty(&self) -> bool {
        self.instances.is_empty()
    }

    /// Indices of the instances of `stages` and everything upstream of them.
    pub fn closure(&self, stages: &[String]) -> Vec<bool> {
        let mut sel = vec![stages.is_empty(); self.len()];
        if stages.is_empty() {
            return sel;
        }
        for i in (0..self.len()).rev() {
            if stages.iter().any(|s| s == self.instances[i].stage) {
                sel[i] = true;
            }
            if sel[i] {
                for &j in &self.deps[i] {
                    sel[j] = true;
                }
            }
        }
        sel
    }
}

/// Why an instance is not fresh, or that it is.
#[derive(Debug, Clone)]
pub enum Verdict {
    Fresh(Box<Manifest>),
    /// Must run, with human-readable reasons.
    Stale(Vec<String>),
    /// Cannot be judged until these upstream instances have run; `changes`
    /// lists what is already known to differ from the last run.
    Pending {
        upstream: Vec<String>,
        changes: Vec<String>,
    },
}

/// The engine bound to a store.
pub struct Engine {
    pub store: Store,
    pub memo: HashCache,
    pub cancel: Arc<AtomicBool>,
    /// Held shared while an instance computes, exclusively by `exclusive` ones.
    cores: RwLock<()>,
}

/// Options of `run`.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub targets: Vec<String>,
    pub force: Vec<String>,
    pub jobs: usize,
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
    fn finish(&self) {}
}

/// A reporter that says nothing (benchmarks, tests).
pub struct Silent;
impl Reporter for Silent {}

struct Shared {
    /// Ready instances, deepest (latest in topological order) first, so a
    /// consumer runs as soon as its inputs exist and evictable intermediates
    /// do not pile up.
    ready: BinaryHeap<usize>,
    outcomes: Vec<Option<Outcome>>,
    waiting: Vec<usize>,
    in_flight: usize,
    remaining: usize,
}

impl Engine {
    pub fn open(store_dir: &Path) -> Result<Engine, EngineError> {
        std::fs::create_dir_all(store_dir).map_err(|e| EngineError::io(store_dir, e))?;
        Ok(Engine {
            store: Store::new(store_dir),
            memo: HashCache::open(store_dir),
            cancel: Arc::new(AtomicBool::new(false)),
            cores: RwLock::new(()),
        })
    }

    /// Hash every input file of the selected instances (memoised, parallel).
    fn input_hashes(
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

    fn ingredients(
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

    /// Judge one instance given its upstream output hashes.
    fn judge(&self, inst: &Instance, ing: &Ingredients) -> Verdict {
        let key = ing.key();
        match self.store.check(inst.stage, &key, &self.memo) {
            EntryState::Valid(m) => Verdict::Fresh(m),
            EntryState::Corrupt(why) => Verdict::Stale(vec![format!("entry {key}: {why}")]),
            EntryState::NoManifest => Verdict::Stale(vec![format!(
                "entry {key} has no valid manifest (interrupted write)"
            )]),
            EntryState::Absent => Verdict::Stale(self.explain(inst, ing, &key)),
        }
    }

    /// Compare with the entry that was current for this label last time.
    fn explain(&self, inst: &Instance, ing: &Ingredients, key: &str) -> Vec<String> {
        let index = self.store.read_index(inst.stage);
        let Some(old_key) = index.get(&inst.label) else {
            return vec!["never run".into()];
        };
        if old_key == key {
            return vec![format!("entry {key} was deleted")];
        }
        let Some(old) = self.store.read_manifest(inst.stage, old_key) else {
            return vec![format!("previous entry {old_key} is gone")];
        };
        let mut why = Self::diff(inst, &old.ingredients, ing);
        if why.is_empty() {
            why.push(format!("key changed {old_key} → {key}"));
        }
        why
    }

    /// Human-readable differences between two sets of key ingredients.
    fn diff(inst: &Instance, o: &Ingredients, ing: &Ingredients) -> Vec<String> {
        let mut why = Vec::new();
        if o.version != ing.version {
            why.push(format!("stage version {} → {}", o.version, ing.version));
        }
        diff_params("params", &o.params, &ing.params, &mut why);
        for (name, h) in &ing.inputs {
            match o.inputs.get(name) {
                None => why.push(format!("new input {name}")),
                Some(oh) if oh != h => why.push(format!(
                    "input {name} changed ({})",
                    inst.inputs
                        .iter()
                        .find(|(n, _)| n == name)
                        .map(|(_, p)| p.display().to_string())
                        .unwrap_or_default()
                )),
                _ => {}
            }
        }
        for name in o.inputs.keys() {
            if !ing.inputs.contains_key(name) {
                why.push(format!("input {name} removed"));
            }
        }
        for (id, h) in &ing.upstream {
            match o.upstream.get(id) {
                None => why.push(format!("new upstream {id}")),
                Some(oh) if oh != h => why.push(format!("upstream {id} output changed")),
                _ => {}
            }
        }
        for id in o.upstream.keys() {
            if !ing.upstream.contains_key(id) {
                why.push(format!("upstream {id} removed"));
            }
        }
        why
    }

    /// Judge every selected instance without running anything (status,
    /// dry-run, gc). Instances downstream of a stale one are `Pending`.
    pub fn evaluate(
        &self,
        plan: &Plan,
        sel: &[bool],
    ) -> Result<Vec<Option<(Verdict, String)>>, EngineError> {
        let inputs = self.input_hashes(plan, sel)?;
        let mut out: Vec<Option<(Verdict, String)>> = Vec::with_capacity(plan.len());
        let mut out_hash: Vec<Option<String>> = vec![None; plan.len()];
        for (i, inst) in plan.instances.iter().enumerate() {
            if !sel[i] {
                out.push(None);
                continue;
            }
            let mut upstream = BTreeMap::new();
            let mut pending = Vec::new();
            for &j in &plan.deps[i] {
                match &out_hash[j] {
                    Some(h) => {
                        upstream.insert(plan.instances[j].id(), h.clone());
                    }
                    None => pending.push(plan.instances[j].id()),
                }
            }
            if !pending.is_empty() {
                // Show the entry last current and what is already known to
                // differ from it; unknown upstream hashes are taken as equal.
                let key = self
                    .store
                    .read_index(inst.stage)
                    .get(&inst.label)
                    .cloned()
                    .unwrap_or_default();
                let mut changes = Vec::new();
                if let Some(old) = self.store.read_manifest(inst.stage, &key) {
                    let mut ing = Self::ingredients(inst, &inputs[i], upstream);
                    for (id, h) in &old.ingredients.upstream {
                        ing.upstream.entry(id.clone()).or_insert_with(|| h.clone());
                    }
                    changes = Self::diff(inst, &old.ingredients, &ing);
                }
                out.push(Some((
                    Verdict::Pending {
                        upstream: pending,
                        changes,
                    },
                    key,
                )));
                continue;
            }
            let ing = Self::ingredients(inst, &inputs[i], upstream);
            let key = ing.key();
            let v = self.judge(inst, &ing);
            if let Verdict::Fresh(m) = &v {
                out_hash[i] = Some(m.output_hash.clone());
            }
            out.push(Some((v, key)));
        }
        Ok(out)
    }

    /// Run what is stale among the selected instances, `opts.jobs` at a time.
    pub fn run(
        &self,
        plan: &Plan,
        opts: &RunOptions,
        reporter: &dyn Reporter,
    ) -> Result<RunReport, EngineError> {
        for s in opts.targets.iter().chain(&opts.force) {
            if !plan.stages.iter().any(|p| p == s) {
                return Err(EngineError::Plan(format!(
                    "unknown stage {s} (stages: {})",
                    plan.stages.join(", ")
                )));
            }
        }
        let sel = plan.closure(&opts.targets);
        let inputs = self.input_hashes(plan, &sel)?;
        let n = plan.len();
        let mut dependents = vec![Vec::new(); n];
        let mut waiting = vec![0usize; n];
        for i in 0..n {
            if !sel[i] {
                continue;
            }
            for &j in &plan.deps[i] {
                dependents[j].push(i);
                waiting[i] += 1;
            }
        }
        let total = sel.iter().filter(|&&s| s).count();
        let shared = Mutex::new(Shared {
            ready: (0..n).filter(|&i| sel[i] && waiting[i] == 0).collect(),
            outcomes: vec![None; n],
            waiting,
            in_flight: 0,
            remaining: total,
        });
        let cv = Condvar::new();
        let jobs = opts.jobs.max(1);
        reporter.start(total);
        std::thread::scope(|scope| {
            for _ in 0..jobs.min(total.max(1)) {
                scope.spawn(|| loop {
                    let i = {
                        let mut s = shared.lock().unwrap();
                        loop {
                            if s.remaining == 0 {
                                return;
                            }
                            if let Some(i) = s.ready.pop() {
                                s.in_flight += 1;
                                break i;
                            }
                            s = cv.wait(s).unwrap();
                        }
                    };
                    let inst = &plan.instances[i];
                    let upstream: Option<Vec<(String, Box<Manifest>)>> = {
                        let s = shared.lock().unwrap();
                        plan.deps[i]
                            .iter()
                            .map(|&j| match &s.outcomes[j] {
                                Some(Outcome::Reused(m)) | Some(Outcome::Computed(m)) => {
                                    Some((plan.instances[j].id(), m.clone()))
                                }
                                _ => None,
                            })
                            .collect()
                    };
                    let t0 = Instant::now();
                    let outcome = match upstream {
                        _ if self.cancel.load(Ordering::Relaxed) => Outcome::Cancelled,
                        None => Outcome::Skipped("an upstream instance did not finish".into()),
                        Some(up) => {
                            let forced = opts.force.iter().any(|f| f == inst.stage);
                            self.run_one(inst, &inputs[i], &up, forced, jobs, reporter)
                        }
                    };
                    reporter.done(&inst.id(), &outcome, t0.elapsed().as_secs_f64());
                    let mut s = shared.lock().unwrap();
                    s.outcomes[i] = Some(outcome);
                    s.in_flight -= 1;
                    s.remaining -= 1;
                    for &k in &dependents[i] {
                        s.waiting[k] -= 1;
                        if s.waiting[k] == 0 {
                            s.ready.push(k);
                        }
                    }
                    cv.notify_all();
                });
            }
        });
        reporter.finish();
        let shared = shared.into_inner().unwrap();
        let mut report = RunReport::default();
        let mut updates: BTreeMap<&'static str, BTreeMap<String, String>> = BTreeMap::new();
        for (i, o) in shared.outcomes.into_iter().enumerate() {
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
            self.store.update_index(stage, up, Some(&labels))?;
        }
        self.memo.save()?;
        Ok(report)
    }

    fn run_one(
        &self,
        inst: &Instance,
        inputs: &BTreeMap<String, String>,
        upstream: &[(String, Box<Manifest>)],
        forced: bool,
        jobs: usize,
        reporter: &dyn Reporter,
    ) -> Outcome {
        let up_hashes = upstream
            .iter()
            .map(|(id, m)| (id.clone(), m.output_hash.clone()))
            .collect();
        let ing = Self::ingredients(inst, inputs, up_hashes);
        let key = ing.key();
        if !forced {
            if let EntryState::Valid(m) = self.store.check(inst.stage, &key, &self.memo) {
                // A lock file beside a valid entry is left by a process killed
                // between its commit and its cleanup; remove it unless held.
                let lock = self.store.lock_path(inst.stage, &key);
                if lock.exists() {
                    if let Ok(Some(l)) = EntryLock::try_acquire(&lock) {
                        drop(l);
                    }
                }
                return Outcome::Reused(m);
            }
        }
        let sdir = self.store.stage_dir(inst.stage);
        if let Err(e) = std::fs::create_dir_all(&sdir) {
            return Outcome::Failed(format!("{}: {e}", sdir.display()));
        }
        let lock = match EntryLock::acquire(&self.store.lock_path(inst.stage, &key)) {
            Ok(l) => l,
            Err(e) => return Outcome::Failed(e.to_string()),
        };
        // Another process may have computed it while we waited for the lock.
        if !forced {
            if let EntryState::Valid(m) = self.store.check(inst.stage, &key, &self.memo) {
                return Outcome::Reused(m);
            }
        }
        if self.cancel.load(Ordering::Relaxed) {
            return Outcome::Cancelled;
        }
        let _cores = if inst.exclusive {
            (
                None,
                Some(self.cores.write().unwrap_or_else(|e| e.into_inner())),
            )
        } else {
            (
                Some(self.cores.read().unwrap_or_else(|e| e.into_inner())),
                None,
            )
        };
        reporter.begin(&inst.id());
        let threads = if inst.exclusive {
            rayon::current_num_threads()
        } else {
            rayon::current_num_threads().div_ceil(jobs).max(1)
        };
        let outcome = self.compute(inst, ing, key, upstream, threads);
        drop(lock);
        outcome
    }

    fn compute(
        &self,
        inst: &Instance,
        ing: Ingredients,
        key: String,
        upstream: &[(String, Box<Manifest>)],
        threads: usize,
    ) -> Outcome {
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let t0 = Instant::now();
        let tmp = match self.store.fresh_tmp(inst.stage, &key) {
            Ok(t) => t,
            Err(e) => return Outcome::Failed(e.to_string()),
        };
        let up_dirs: HashMap<String, (PathBuf, PathBuf)> = upstream
            .iter()
            .map(|(id, m)| {
                (
                    id.clone(),
                    (
                        self.store.entry_dir(&m.stage, &m.key),
                        self.store.scratch_dir(&m.stage, &m.key),
                    ),
                )
            })
            .collect();
        let up_outputs: HashMap<String, &BTreeMap<String, store::OutputFile>> = upstream
            .iter()
            .map(|(id, m)| (id.clone(), &m.outputs))
            .collect();
        let ctx = JobCtx {
            out: &tmp,
            scratch: self.store.scratch_dir(inst.stage, &key),
            threads,
            upstream: &up_dirs,
            upstream_outputs: &up_outputs,
            inputs: &ing.inputs,
            cancel: &self.cancel,
        };
        let result = inst.job.run(&ctx);
        let finish = |extra: serde_json::Value| -> Result<Box<Manifest>, EngineError> {
            let (outputs, stamps) = self.store.seal_outputs(&tmp)?;
            let manifest = Manifest {
                seedconv_version: env!("CARGO_PKG_VERSION").to_string(),
                stage: inst.stage.to_string(),
                label: inst.label.clone(),
                key: key.clone(),
                output_hash: store::output_hash(&outputs),
                ingredients: ing,
                input_paths: inst.inputs.iter().cloned().collect(),
                outputs,
                started_unix: started,
                seconds: t0.elapsed().as_secs_f64(),
                pid: std::process::id(),
                extra,
            };
            self.store.commit(&tmp, &manifest, &stamps, &self.memo)?;
            Ok(Box::new(manifest))
        };
        let outcome = match result {
            Ok(extra) if !self.cancel.load(Ordering::Relaxed) => match finish(extra) {
                Ok(m) => Outcome::Computed(m),
                Err(e) => Outcome::Failed(e.to_string()),
            },
            Ok(_) | Err(StageError::Cancelled) => Outcome::Cancelled,
            Err(e) => Outcome::Failed(e.to_string()),
        };
        if !matches!(outcome, Outcome::Computed(_)) {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        outcome
    }
}

/// Describe parameter differences as `params.x: old → new`.
fn diff_params(
    path: &str,
    old: &serde_json::Value,
    new: &serde_json::Value,
    out: &mut Vec<String>,
) {
    use serde_json::Value;
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for k in keys {
                let p = format!("{path}.{k}");
                match (a.get(k), b.get(k)) {
                    (Some(x), Some(y)) => diff_params(&p, x, y, out),
                    (None, Some(y)) => out.push(format!("{p} added ({y})")),
                    (Some(x), None) => out.push(format!("{p} removed (was {x})")),
                    (None, None) => {}
                }
            }
        }
        (a, b) if a != b => out.push(format!("{path} changed {a} → {b}")),
        _ => {}
    }
}
