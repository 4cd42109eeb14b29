//! Running a plan on one machine: [`Local`], the executor of this
//! machine, a pool of threads that computes each selected instance through
//! [`Engine::claim`] and [`Engine::compute`], consumers first.

use std::collections::{BTreeMap, BinaryHeap};
use std::sync::atomic::Ordering;
use std::sync::{Condvar, Mutex};
use std::time::Instant;

use super::evict::{restore_upstream, Eviction};
use super::executor::{Executor, Outcome, Reporter, RunOptions, RunReport, Work};
use super::plan::Plan;
use super::store::Manifest;
use super::Engine;
use crate::error::EngineError;

/// This machine: `jobs` instances on the cores at once, each with its
/// share of the threads (training too: it runs in a worker process with
/// its own thread pool). With
/// `gpus`, each `gpu` instance takes a device of its own (one per device at
/// once) beside the instances on the cores.
pub struct Local {
    pub jobs: usize,
    pub gpus: Vec<u32>,
    /// Groups of evictable instances open at once (0: no bound).
    pub max_groups: usize,
}

/// What a running instance holds: a share of the cores, a GPU, or a place
/// in its class's limit.
#[derive(Clone, Copy)]
enum Slot {
    Cores,
    Gpu(u32),
    Limited(&'static str),
}

struct Shared {
    /// Ready instances, deepest (latest in topological order) first, so a
    /// consumer runs as soon as its inputs exist and evictable intermediates
    /// do not pile up.
    ready: BinaryHeap<usize>,
    /// Ready instances another run is computing (their entry lock is held):
    /// tried again after other work, waited on only when nothing is ready.
    deferred: Vec<usize>,
    outcomes: Vec<Option<Outcome>>,
    waiting: Vec<usize>,
    remaining: usize,
    /// Instances on the cores now, and GPUs not in use.
    on_cores: usize,
    free_gpus: Vec<u32>,
    /// Running instances of each limited class, and each class's limit.
    limited: BTreeMap<&'static str, usize>,
    limits: BTreeMap<&'static str, usize>,
    evict: Eviction,
}

impl Shared {
    /// The slot instance `i` would run in now, taken; None while its kind
    /// of slot is all in use.
    fn take(&mut self, local: &Local, plan: &Plan, i: usize) -> Option<Slot> {
        if let Some((class, n)) = plan.instances[i].limit {
            let running = self.limited.entry(class).or_default();
            return (*running < n).then(|| {
                *running += 1;
                Slot::Limited(class)
            });
        }
        if plan.instances[i].gpu && !local.gpus.is_empty() {
            self.free_gpus.pop().map(Slot::Gpu)
        } else if self.on_cores < local.jobs {
            self.on_cores += 1;
            Some(Slot::Cores)
        } else {
            None
        }
    }
    fn give_back(&mut self, slot: Slot) {
        match slot {
            Slot::Cores => self.on_cores -= 1,
            Slot::Gpu(g) => self.free_gpus.push(g),
            Slot::Limited(class) => *self.limited.entry(class).or_default() -= 1,
        }
    }
    /// The deepest ready instance that has a free slot, taken (then a
    /// deferred one, to be waited on).
    fn next(&mut self, local: &Local, plan: &Plan) -> Option<(usize, Slot, bool)> {
        // Every slot taken: no need to look through what is ready.
        let limited_free = self
            .limits
            .iter()
            .any(|(c, n)| self.limited.get(c).map_or(0, |r| *r) < *n);
        if self.on_cores >= local.jobs && self.free_gpus.is_empty() && !limited_free {
            return None;
        }
        let mut skipped = Vec::new();
        let mut found = None;
        while let Some(i) = self.ready.pop() {
            if self.evict.may_start(plan, i) {
                if let Some(slot) = self.take(local, plan, i) {
                    self.evict.started(plan, i);
                    found = Some((i, slot, false));
                    break;
                }
            }
            skipped.push(i);
        }
        self.ready.extend(skipped);
        if found.is_none() {
            for k in (0..self.deferred.len()).rev() {
                let i = self.deferred[k];
                if let Some(slot) = self.take(local, plan, i) {
                    self.deferred.remove(k);
                    found = Some((i, slot, true));
                    break;
                }
            }
        }
        found
    }
}

impl Local {
    pub fn new(jobs: usize) -> Local {
        Local {
            jobs: jobs.max(1),
            gpus: Vec::new(),
            max_groups: 0,
        }
    }

    /// Open at most `n` groups of evictable instances at once (0: no bound).
    pub fn with_groups(mut self, n: usize) -> Local {
        self.max_groups = n;
        self
    }

    /// Give each `gpu` instance one of these CUDA devices.
    pub fn with_gpus(mut self, gpus: Vec<u32>) -> Local {
        self.gpus = gpus;
        self
    }

    /// Instance `i` of `work`; `None` when another run holds it and `wait`
    /// is false.
    fn run_one(
        &self,
        engine: &Engine,
        work: &Work,
        i: usize,
        upstream: &[(String, Box<Manifest>)],
        (slot, wait): (Slot, bool),
        reporter: &dyn Reporter,
    ) -> Option<Outcome> {
        let (inst, inputs, forced) = (&work.plan.instances[i], &work.inputs[i], work.forced[i]);
        let claimed = if wait {
            engine.claim(inst, inputs, upstream, forced).map(Some)
        } else {
            engine.try_claim(inst, inputs, upstream, forced)
        };
        let claim = match claimed {
            Ok(Some(c)) => c,
            // Another run is computing it: come back to it later.
            Ok(None) => return None,
            Err(done) => return Some(done),
        };
        match slot {
            // On its own device: the cores are the others'.
            Slot::Gpu(g) => {
                reporter.begin(&inst.id());
                return Some(engine.compute(inst, claim, upstream, 1, Some(g), reporter));
            }
            // Waiting on something else (a download): not on the cores.
            Slot::Limited(_) => {
                reporter.begin(&inst.id());
                return Some(engine.compute(inst, claim, upstream, 1, None, reporter));
            }
            Slot::Cores => {}
        }
        reporter.begin(&inst.id());
        let threads = rayon::current_num_threads().div_ceil(self.jobs).max(1);
        Some(engine.compute(inst, claim, upstream, threads, None, reporter))
    }
}

impl Executor for Local {
    fn execute(
        &self,
        engine: &Engine,
        work: &Work,
        reporter: &dyn Reporter,
    ) -> Result<Vec<Option<Outcome>>, EngineError> {
        let plan = work.plan;
        let n = plan.len();
        let mut dependents = vec![Vec::new(); n];
        let mut waiting = vec![0usize; n];
        for (i, w) in waiting.iter_mut().enumerate() {
            if !work.sel[i] {
                continue;
            }
            for &j in &plan.deps[i] {
                dependents[j].push(i);
                *w += 1;
            }
        }
        let evict = Eviction::new(plan, work.sel, self.max_groups);
        evict.check(plan, work.sel).map_err(EngineError::Plan)?;
        let total = work.sel.iter().filter(|&&s| s).count();
        // Limited classes run beside the cores' work: room for them too.
        let limits: BTreeMap<&'static str, usize> =
            plan.instances.iter().filter_map(|i| i.limit).collect();
        let limited: usize = limits.values().sum();
        let workers = self.jobs + self.gpus.len() + limited;
        let shared = Mutex::new(Shared {
            ready: (0..n).filter(|&i| work.sel[i] && waiting[i] == 0).collect(),
            deferred: Vec::new(),
            outcomes: vec![None; n],
            waiting,
            remaining: total,
            on_cores: 0,
            // Popped from the end: device order.
            free_gpus: self.gpus.iter().rev().copied().collect(),
            limited: BTreeMap::new(),
            limits,
            evict,
        });
        let cv = Condvar::new();
        reporter.start(total);
        std::thread::scope(|scope| {
            for _ in 0..workers.min(total.max(1)) {
                scope.spawn(|| loop {
                    let (i, slot, wait) = {
                        let mut s = shared.lock().unwrap();
                        loop {
                            if s.remaining == 0 {
                                return;
                            }
                            if let Some(next) = s.next(self, plan) {
                                break next;
                            }
                            s = cv.wait(s).unwrap();
                        }
                    };
                    let inst = &plan.instances[i];
                    let mut upstream = work.upstream_of(i, &shared.lock().unwrap().outcomes);
                    let t0 = Instant::now();
                    // Evicted upstream entries come back before a reader runs.
                    let mut restore_failed = None;
                    if upstream
                        .as_ref()
                        .is_some_and(|up| up.iter().any(|(_, m)| m.evicted))
                    {
                        let snapshot = shared.lock().unwrap().outcomes.clone();
                        let up = upstream.as_deref().unwrap_or_default();
                        match restore_upstream(engine, work, &snapshot, i, up, reporter) {
                            Ok(back) if !back.is_empty() => {
                                let mut s = shared.lock().unwrap();
                                for (j, o) in back {
                                    s.outcomes[j] = Some(o);
                                    s.evict.restored(j);
                                }
                                upstream = work.upstream_of(i, &s.outcomes);
                            }
                            Ok(_) => {}
                            Err(e) => restore_failed = Some(e),
                        }
                    }
                    let outcome = match upstream {
                        _ if engine.cancel.load(Ordering::Relaxed) => Some(Outcome::Cancelled),
                        _ if restore_failed.is_some() => restore_failed.take().map(Outcome::Failed),
                        None => Some(Outcome::Skipped(
                            "an upstream instance did not finish".into(),
                        )),
                        Some(up) => self.run_one(engine, work, i, &up, (slot, wait), reporter),
                    };
                    let Some(outcome) = outcome else {
                        let mut s = shared.lock().unwrap();
                        s.deferred.push(i);
                        s.give_back(slot);
                        cv.notify_all();
                        continue;
                    };
                    reporter.done(&inst.id(), &outcome, t0.elapsed().as_secs_f64());
                    let mut s = shared.lock().unwrap();
                    // What was deferred may be done by now: try it again.
                    let deferred = std::mem::take(&mut s.deferred);
                    s.ready.extend(deferred);
                    s.outcomes[i] = Some(outcome);
                    s.give_back(slot);
                    s.remaining -= 1;
                    s.evict.ended(i);
                    let consumed = {
                        let Shared {
                            evict, outcomes, ..
                        } = &mut *s;
                        evict.consumed(plan, work.sel, outcomes, i)
                    };
                    for &k in &dependents[i] {
                        s.waiting[k] -= 1;
                        if s.waiting[k] == 0 {
                            s.ready.push(k);
                        }
                    }
                    drop(s);
                    for (stage, key) in consumed {
                        if let Err(e) = engine.store.evict(stage, &key) {
                            tracing::warn!("could not evict {stage}/{key}: {e}");
                        }
                    }
                    cv.notify_all();
                });
            }
        });
        Ok(shared.into_inner().unwrap().outcomes)
    }
}

impl Engine {
    /// Run what is stale among the selected instances on this machine,
    /// `opts.jobs` at a time.
    pub fn run(
        &self,
        plan: &Plan,
        opts: &RunOptions,
        reporter: &dyn Reporter,
    ) -> Result<RunReport, EngineError> {
        self.run_with(
            &Local::new(opts.jobs)
                .with_gpus(opts.gpus.clone())
                .with_groups(opts.max_groups),
            plan,
            opts,
            reporter,
        )
    }
}
