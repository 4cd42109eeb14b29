//! The plan: stage instances checked (labels, unique ids, known
//! dependencies, no cycle) and put in topological order.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use super::job::{instance_id, Instance};
use crate::error::EngineError;

/// A validated DAG of instances in topological order.
pub struct Plan {
    pub instances: Vec<Instance>,
    /// Stage names in declaration order.
    pub stages: Vec<&'static str>,
    /// Upstream instances of each instance, as indices.
    pub(super) deps: Vec<Vec<usize>>,
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
    /// Upstream instances of instance `i`, as indices (all before `i`).
    pub fn deps_of(&self, i: usize) -> &[usize] {
        &self.deps[i]
    }

    /// Whether instance `i` matches a selector: `STAGE`, or
    /// `STAGE:LABEL-GLOB` (e.g. `dist:d64-seed*-step512`).
    pub fn matches(&self, i: usize, selector: &str) -> bool {
        let inst = &self.instances[i];
        match selector.split_once(':') {
            None => inst.stage == selector,
            Some((stage, label)) => {
                inst.stage == stage
                    && glob::Pattern::new(label).is_ok_and(|p| p.matches(&inst.label))
            }
        }
    }

    /// Each selector names a stage of the plan and matches an instance.
    pub fn check_selectors<'a>(
        &self,
        selectors: impl IntoIterator<Item = &'a String>,
    ) -> Result<(), EngineError> {
        for s in selectors {
            let stage = s.split_once(':').map_or(s.as_str(), |x| x.0);
            if !self.stages.contains(&stage) {
                return Err(EngineError::Plan(format!(
                    "unknown stage {stage} (stages: {})",
                    self.stages.join(", ")
                )));
            }
            if let Some((_, label)) = s.split_once(':') {
                glob::Pattern::new(label)
                    .map_err(|e| EngineError::Plan(format!("selector {s}: {e}")))?;
                if !(0..self.len()).any(|i| self.matches(i, s)) {
                    return Err(EngineError::Plan(format!(
                        "selector {s}: no instance of {stage} has a label matching {label}"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Instance `i` and everything upstream of it.
    pub fn upstream_closure(&self, i: usize) -> Vec<bool> {
        let mut sel = vec![false; self.len()];
        sel[i] = true;
        // Reverse topological order: an instance's deps come before it.
        for k in (0..=i).rev() {
            if sel[k] {
                for &j in &self.deps[k] {
                    sel[j] = true;
                }
            }
        }
        sel
    }

    /// The instances `selectors` match and everything upstream of them (all
    /// when there are none).
    pub fn closure(&self, selectors: &[String]) -> Vec<bool> {
        self.closure_with(selectors, false)
    }

    /// As `closure`; with `downstream`, also every instance downstream of a
    /// matched one (with what those need upstream).
    pub fn closure_with(&self, selectors: &[String], downstream: bool) -> Vec<bool> {
        let mut sel = vec![selectors.is_empty(); self.len()];
        if selectors.is_empty() {
            return sel;
        }
        for (i, s) in sel.iter_mut().enumerate() {
            *s = selectors.iter().any(|x| self.matches(i, x));
        }
        if downstream {
            // Topological order: an instance's deps come before it.
            for i in 0..self.len() {
                if !sel[i] && self.deps[i].iter().any(|&j| sel[j]) {
                    sel[i] = true;
                }
            }
        }
        for i in (0..self.len()).rev() {
            if sel[i] {
                for &j in &self.deps[i] {
                    sel[j] = true;
                }
            }
        }
        sel
    }
}
