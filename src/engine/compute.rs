//! Computing one instance: claim its entry (reuse it if valid, else take
//! its lock), then run its job into a temp folder and commit it. Every
//! executor computes instances through these two calls, so a key, a lock and
//! an entry mean the same whoever schedules the work.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::executor::{Outcome, Reporter};
use super::job::{Instance, JobCtx};
use super::store::{self, EntryLock, EntryState, Ingredients, Manifest};
use super::Engine;
use crate::error::{EngineError, StageError};

/// An instance whose entry must be computed, with its entry lock held.
pub struct Claim {
    ing: Ingredients,
    key: String,
    _lock: EntryLock,
}

/// What a claim may reuse instead of computing.
#[derive(Clone, Copy)]
enum Want {
    /// A whole or an evicted entry (a run: evicted entries stay current).
    Any,
    /// Only a whole one (restoring an evicted entry for a reader).
    Whole,
    /// Nothing (`--force`).
    Fresh,
}

impl Want {
    fn of(forced: bool) -> Want {
        if forced {
            Want::Fresh
        } else {
            Want::Any
        }
    }
    fn reusable(self, state: EntryState) -> Option<Box<Manifest>> {
        match (self, state) {
            (Want::Any | Want::Whole, EntryState::Valid(m))
            | (Want::Any, EntryState::Evicted(m)) => Some(m),
            _ => None,
        }
    }
}

fn hashes(upstream: &[(String, Box<Manifest>)]) -> BTreeMap<String, String> {
    upstream
        .iter()
        .map(|(id, m)| (id.clone(), m.output_hash.clone()))
        .collect()
}

impl Engine {
    /// Reuse the instance's valid entry (unless `forced`), or lock the entry
    /// for computing. `upstream`: the manifests of its upstream instances.
    pub fn claim(
        &self,
        inst: &Instance,
        inputs: &BTreeMap<String, String>,
        upstream: &[(String, Box<Manifest>)],
        forced: bool,
    ) -> Result<Claim, Outcome> {
        self.claim_inner(inst, inputs, upstream, Want::of(forced), true)
            .map(|c| c.expect("a waiting claim always gets the lock"))
    }

    /// Bring back an evicted entry (its outputs deleted after use) because
    /// a reader must run again: recompute it unless it is whole (another
    /// run may have restored it meanwhile).
    pub fn restore(
        &self,
        inst: &Instance,
        inputs: &BTreeMap<String, String>,
        upstream: &[(String, Box<Manifest>)],
        reporter: &dyn Reporter,
    ) -> Outcome {
        match self.claim_inner(inst, inputs, upstream, Want::Whole, true) {
            Ok(Some(claim)) => {
                reporter.begin(&inst.id());
                self.compute(inst, claim, upstream, 1, None, reporter)
            }
            Ok(None) => unreachable!("a waiting claim always gets the lock"),
            Err(done) => done,
        }
    }

    /// Whether `claim` would reuse an entry (whole or evicted) without
    /// computing.
    pub fn would_reuse(
        &self,
        inst: &Instance,
        inputs: &BTreeMap<String, String>,
        upstream: &[(String, Box<Manifest>)],
        forced: bool,
    ) -> bool {
        let key = Self::ingredients(inst, inputs, hashes(upstream)).key();
        !forced
            && matches!(
                self.store.check(inst.stage, &key, &self.memo),
                EntryState::Valid(_) | EntryState::Evicted(_)
            )
    }

    /// As `claim`, but `Ok(None)` at once when another run holds the entry's
    /// lock (it is computing it), so the caller can do other work first.
    pub fn try_claim(
        &self,
        inst: &Instance,
        inputs: &BTreeMap<String, String>,
        upstream: &[(String, Box<Manifest>)],
        forced: bool,
    ) -> Result<Option<Claim>, Outcome> {
        self.claim_inner(inst, inputs, upstream, Want::of(forced), false)
    }

    fn claim_inner(
        &self,
        inst: &Instance,
        inputs: &BTreeMap<String, String>,
        upstream: &[(String, Box<Manifest>)],
        want: Want,
        wait: bool,
    ) -> Result<Option<Claim>, Outcome> {
        let ing = Self::ingredients(inst, inputs, hashes(upstream));
        let key = ing.key();
        if let Some(m) = want.reusable(self.store.check(inst.stage, &key, &self.memo)) {
            // A lock file beside a valid entry is left by a process killed
            // between its commit and its cleanup; remove it unless held.
            let lock = self.store.lock_path(inst.stage, &key);
            if lock.exists() {
                if let Ok(Some(l)) = EntryLock::try_acquire(&lock) {
                    drop(l);
                }
            }
            return Err(Outcome::Reused(m));
        }
        let sdir = self.store.stage_dir(inst.stage);
        if let Err(e) = std::fs::create_dir_all(&sdir) {
            return Err(Outcome::Failed(format!("{}: {e}", sdir.display())));
        }
        let path = self.store.lock_path(inst.stage, &key);
        let acquired = if wait {
            EntryLock::acquire(&path).map(Some)
        } else {
            EntryLock::try_acquire(&path)
        };
        let Some(lock) = acquired.map_err(|e| Outcome::Failed(e.to_string()))? else {
            return Ok(None);
        };
        // Another process may have computed it while we waited for the lock.
        if let Some(m) = want.reusable(self.store.check(inst.stage, &key, &self.memo)) {
            return Err(Outcome::Reused(m));
        }
        if self.cancel.load(Ordering::Relaxed) {
            return Err(Outcome::Cancelled);
        }
        Ok(Some(Claim {
            ing,
            key,
            _lock: lock,
        }))
    }

    /// Run a claimed instance's job with `threads` (and GPU `gpu` when the
    /// run assigns one) and commit its entry;
    /// the claim's lock is released when this returns.
    pub fn compute(
        &self,
        inst: &Instance,
        claim: Claim,
        upstream: &[(String, Box<Manifest>)],
        threads: usize,
        gpu: Option<u32>,
        reporter: &dyn Reporter,
    ) -> Outcome {
        let Claim { ing, key, _lock } = claim;
        let id = inst.id();
        let progress =
            |done: u64, total: u64, unit: &str| reporter.progress(&id, done, total, unit);
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
            gpu,
            upstream: &up_dirs,
            upstream_outputs: &up_outputs,
            inputs: &ing.inputs,
            cancel: &self.cancel,
            progress: &progress,
        };
        // A panicking job (a bug) fails its instance like an error: left to
        // unwind, it ended the scheduler's worker thread and the run waited
        // for it forever.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inst.job.run(&ctx)))
            .unwrap_or_else(|p| {
                let what = p
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                Err(StageError::Other(format!(
                    "internal error (a bug; please report it): panicked: {}",
                    what.split_whitespace().collect::<Vec<_>>().join(" ")
                )))
            });
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
                provenance: Some(store::Provenance::here(threads, gpu)),
                evicted: false,
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
        super::memory::release_free();
        outcome
    }
}
