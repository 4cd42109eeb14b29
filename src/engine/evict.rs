//! Evictable entries (`Instance::evictable`, e.g. fetched checkpoints): their
//! output files are deleted once every instance reading them has finished,
//! the manifest staying (fresh, current, keying downstream); a reader that
//! must run again first restores them. Evictable instances come in groups
//! (one size × step, every seed): a run opens at most `max_groups` at once,
//! so the disk holds a few groups, not the grid.

use std::collections::{BTreeMap, BTreeSet};

use super::executor::{Outcome, Reporter, Work};
use super::plan::Plan;
use super::Engine;

pub struct Eviction {
    /// Every instance of the plan reading instance j (selected or not).
    readers: Vec<Vec<usize>>,
    /// Groups instance k keeps open: its own and its evictable upstreams'.
    touches: Vec<Vec<String>>,
    /// Per group: selected instances touching it that have not ended.
    pending: BTreeMap<String, usize>,
    open: BTreeSet<String>,
    max_groups: usize,
    evicted: Vec<bool>,
}

impl Eviction {
    /// `max_groups` 0: no bound.
    pub fn new(plan: &Plan, sel: &[bool], max_groups: usize) -> Eviction {
        let n = plan.len();
        let mut readers = vec![Vec::new(); n];
        let mut touches = vec![Vec::new(); n];
        for (k, (inst, touched)) in plan.instances.iter().zip(touches.iter_mut()).enumerate() {
            if inst.manifests_only {
                continue;
            }
            for &j in plan.deps_of(k) {
                readers[j].push(k);
            }
            let mut g: BTreeSet<String> = inst.group.iter().cloned().collect();
            g.extend(
                plan.deps_of(k)
                    .iter()
                    .filter_map(|&j| plan.instances[j].group.clone()),
            );
            *touched = g.into_iter().collect();
        }
        let mut pending = BTreeMap::new();
        for k in (0..n).filter(|&k| sel[k]) {
            for g in &touches[k] {
                *pending.entry(g.clone()).or_insert(0) += 1;
            }
        }
        Eviction {
            readers,
            touches,
            pending,
            open: BTreeSet::new(),
            max_groups,
            evicted: vec![false; n],
        }
    }

    /// A selected instance reading more groups than may be open at once
    /// could never start (its groups stay open for it while it waits for
    /// the others): the first such one, as a one-line plan error.
    pub fn check(&self, plan: &Plan, sel: &[bool]) -> Result<(), String> {
        if self.max_groups == 0 {
            return Ok(());
        }
        match (0..plan.len()).find(|&k| sel[k] && self.touches[k].len() > self.max_groups) {
            None => Ok(()),
            Some(k) => Err(format!(
                "{} reads {} groups of evictable entries ({}, …) but at most {} may be on disk at once (fetch.max_groups_on_disk)",
                plan.instances[k].id(),
                self.touches[k].len(),
                self.touches[k][0],
                self.max_groups
            )),
        }
    }

    /// Whether instance `i` may start now: it has no group, its group is
    /// open, or one more may open.
    pub fn may_start(&self, plan: &Plan, i: usize) -> bool {
        match &plan.instances[i].group {
            None => true,
            Some(g) => {
                self.max_groups == 0 || self.open.contains(g) || self.open.len() < self.max_groups
            }
        }
    }

    /// Instance `i` starts: its group is open until nothing needs it.
    pub fn started(&mut self, plan: &Plan, i: usize) {
        if let Some(g) = &plan.instances[i].group {
            self.open.insert(g.clone());
        }
    }

    /// Instance `k` ended (however): groups no selected instance still
    /// needs close.
    pub fn ended(&mut self, k: usize) {
        for g in &self.touches[k] {
            if let Some(p) = self.pending.get_mut(g) {
                *p -= 1;
                if *p == 0 {
                    self.open.remove(g);
                }
            }
        }
    }

    /// Evictable upstreams of `k` every reader of which has now finished
    /// (computed or reused, all selected): their (stage, key), marked.
    pub fn consumed(
        &mut self,
        plan: &Plan,
        sel: &[bool],
        outcomes: &mut [Option<Outcome>],
        k: usize,
    ) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        for &j in plan.deps_of(k) {
            if !plan.instances[j].evictable || self.evicted[j] {
                continue;
            }
            let all_done = self.readers[j].iter().all(|&r| {
                sel[r] && matches!(outcomes[r], Some(Outcome::Computed(_) | Outcome::Reused(_)))
            });
            if !all_done {
                continue;
            }
            if let Some(Outcome::Computed(m) | Outcome::Reused(m)) = &mut outcomes[j] {
                self.evicted[j] = true;
                m.evicted = true;
                out.push((plan.instances[j].stage, m.key.clone()));
            }
        }
        out
    }

    /// Instance `j` is whole again (restored for a reader).
    pub fn restored(&mut self, j: usize) {
        self.evicted[j] = false;
    }
}

/// Before instance `i` computes: restore its evicted upstream entries
/// (`upstream` from the outcomes so far). Returns each restored upstream's
/// new outcome, or the error that stops `i`. Nothing when `i` is fresh.
pub fn restore_upstream(
    engine: &Engine,
    work: &Work,
    outcomes: &[Option<Outcome>],
    i: usize,
    upstream: &[(String, Box<super::store::Manifest>)],
    reporter: &dyn Reporter,
) -> Result<Vec<(usize, Outcome)>, String> {
    let plan = work.plan;
    if plan.instances[i].manifests_only
        || !upstream.iter().any(|(_, m)| m.evicted)
        || engine.would_reuse(
            &plan.instances[i],
            &work.inputs[i],
            upstream,
            work.forced[i],
        )
    {
        return Ok(vec![]);
    }
    let mut restored = Vec::new();
    for &j in plan.deps_of(i) {
        let evicted =
            matches!(&outcomes[j], Some(Outcome::Computed(m) | Outcome::Reused(m)) if m.evicted);
        if !evicted {
            continue;
        }
        let up = work.upstream_of(j, outcomes).ok_or_else(|| {
            format!(
                "restoring {}: its upstream is missing",
                plan.instances[j].id()
            )
        })?;
        match engine.restore(&plan.instances[j], &work.inputs[j], &up, reporter) {
            o @ (Outcome::Computed(_) | Outcome::Reused(_)) => restored.push((j, o)),
            Outcome::Failed(e) => return Err(format!("restoring {}: {e}", plan.instances[j].id())),
            _ => return Err(format!("restoring {}: interrupted", plan.instances[j].id())),
        }
    }
    Ok(restored)
}
