//! `compare.parquet`: paired comparisons of E[conv], each a difference
//! a − b with its seed- and document-aware interval and p-value, both arms
//! on the same draws (the same seed and document left out; `intervals`):
//!
//! - `step_vs_previous`, `step_vs_last`: each step of a size against the
//!   step before it and against the last step;
//! - `size`: each pair of sizes at each step (seeds paired by name);
//! - `level`: at each (size, step), each pair of levels of a conditioning
//!   variable (adjacent bins of the binned ones);
//! - `custom`: the `[[compare]]` entries of the pipeline.

use std::collections::BTreeMap;

use polars::prelude::*;

use super::conv::StepKl;
use super::frames::{interval_columns, perr, write, CellKey};
use super::AggregateJob;
use crate::analysis::conditioning::{
    BINS, CONFIDENCE_BINS, POSITION_BINS, SURPRISAL_BINS, VARIABLES,
};
use crate::analysis::intervals::{difference, Interval, Jackknife, PAIRED};
use crate::config::{CompareConfig, Selection};
use crate::engine::JobCtx;
use crate::error::StageError;

/// (size, step, variable, level) of one arm; variable "" is all rows.
type Arm = (String, u32, String, String);

/// A level of a conditioning variable: its name, its arm and jackknife.
type LevelArm<'a> = (&'a str, Arm, &'a Jackknife);

#[derive(Default)]
struct Rows {
    kind: Vec<&'static str>,
    name: Vec<String>,
    a: Vec<Arm>,
    b: Vec<Arm>,
    va: Vec<f64>,
    vb: Vec<f64>,
    iv: Vec<Interval>,
}

impl Rows {
    fn push(
        &mut self,
        kind: &'static str,
        name: String,
        a: (&Arm, &Jackknife),
        b: (&Arm, &Jackknife),
    ) {
        self.kind.push(kind);
        self.name.push(name);
        self.a.push(a.0.clone());
        self.b.push(b.0.clone());
        self.va.push(a.1.est);
        self.vb.push(b.1.est);
        self.iv.push(difference(a.1, b.1, PAIRED));
    }

    fn frame(self) -> Result<DataFrame, StageError> {
        let arm = |v: &[Arm], i: usize| -> Column {
            let n = ["size", "step", "variable", "level"][i];
            match i {
                1 => Column::new(n.into(), v.iter().map(|a| a.1).collect::<Vec<_>>()),
                _ => Column::new(
                    n.into(),
                    v.iter()
                        .map(|a| [&a.0, &a.0, &a.2, &a.3][i].clone())
                        .collect::<Vec<_>>(),
                ),
            }
        };
        let iv = |h: fn(&Interval) -> f64| self.iv.iter().map(h).collect::<Vec<f64>>();
        let mut cols = vec![
            Column::new("kind".into(), self.kind.clone()),
            Column::new("name".into(), self.name.clone()),
        ];
        for (side, v) in [("a", &self.a), ("b", &self.b)] {
            for i in 0..4 {
                let c = arm(v, i);
                let n = format!("{}_{side}", c.name());
                cols.push(c.with_name(n.into()));
            }
        }
        cols.extend([
            Column::new("conv_a".into(), self.va.clone()),
            Column::new("conv_b".into(), self.vb.clone()),
            Column::new("delta".into(), iv(|i| i.est)),
        ]);
        cols.extend(interval_columns(&self.iv, true));
        DataFrame::new(self.kind.len(), cols).map_err(perr)
    }
}

/// Position of a level in its variable's natural order (bins in order,
/// other levels alphabetically after them).
fn bin_rank(variable: &str, level: &str) -> Option<usize> {
    match variable {
        "freq_bin" => BINS.iter().position(|b| *b == level),
        "surprisal_bin" => SURPRISAL_BINS.iter().position(|b| b.1 == level),
        "confidence_bin" => CONFIDENCE_BINS.iter().position(|b| b.1 == level),
        "position_bin" => POSITION_BINS.iter().position(|b| b.1 == level),
        _ => None,
    }
}

impl AggregateJob {
    /// Writes `compare.parquet`; errors (before writing) when a
    /// `[[compare]]` names a cell that does not exist.
    pub(super) fn compare(
        &self,
        ctx: &JobCtx,
        steps: &[StepKl],
        levels: &[(CellKey, Jackknife)],
    ) -> Result<usize, StageError> {
        let mut arms: BTreeMap<Arm, Jackknife> = BTreeMap::new();
        let mut sizes: Vec<&str> = Vec::new();
        for s in steps {
            arms.insert(
                (s.size.clone(), s.step, String::new(), String::new()),
                s.kl.scaled(-1.0),
            );
            if !sizes.contains(&s.size.as_str()) {
                sizes.push(&s.size);
            }
        }
        let mut out = Rows::default();
        // Custom ones first: a bad selection fails before anything is built.
        for c in &self.compares {
            let get = |side: &str, s: &Selection| -> Result<(Arm, Jackknife), StageError> {
                let arm = arm_of(s);
                let found = if s.variable.is_none() {
                    arms.get(&arm).cloned()
                } else {
                    levels
                        .iter()
                        .find(|(k, _)| k.0 == arm.2 && k.1 == arm.0 && k.2 == arm.1 && k.3 == arm.3)
                        .map(|x| x.1.clone())
                };
                found.map(|j| (arm.clone(), j)).ok_or_else(|| {
                    StageError::Other(format!(
                        "[[compare]] '{}': {side} selects {} at size {}, step {}, which has no rows",
                        c.name,
                        s.variable.as_ref().map_or("E[conv]".to_string(), |v| format!(
                            "level '{}' of {v}",
                            s.level.as_deref().unwrap_or("")
                        )),
                        s.size,
                        s.step
                    ))
                })
            };
            let (a, b) = (get("a", &c.a)?, get("b", &c.b)?);
            out.push("custom", c.name.clone(), (&a.0, &a.1), (&b.0, &b.1));
        }
        // Steps within each size.
        for &size in &sizes {
            let mine: Vec<(&Arm, &Jackknife)> = arms.iter().filter(|(k, _)| k.0 == size).collect();
            let Some(last) = mine.last().copied() else {
                continue;
            };
            for w in mine.windows(2) {
                out.push("step_vs_previous", String::new(), w[1], w[0]);
            }
            for &m in &mine[..mine.len() - 1] {
                out.push("step_vs_last", String::new(), m, last);
            }
        }
        // Each pair of sizes at each step.
        let all_steps: std::collections::BTreeSet<u32> = arms.keys().map(|k| k.1).collect();
        for step in all_steps {
            for (i, &a) in sizes.iter().enumerate() {
                for &b in &sizes[i + 1..] {
                    let ka = (a.to_string(), step, String::new(), String::new());
                    let kb = (b.to_string(), step, String::new(), String::new());
                    if let (Some(ja), Some(jb)) = (arms.get(&ka), arms.get(&kb)) {
                        out.push("size", String::new(), (&ka, ja), (&kb, jb));
                    }
                }
            }
        }
        // Levels of each variable within each (size, step).
        let mut cells: BTreeMap<(usize, &str, u32), Vec<LevelArm>> = BTreeMap::new();
        for (k, j) in levels {
            let v = VARIABLES
                .iter()
                .position(|v| v.name == k.0)
                .unwrap_or(usize::MAX);
            cells.entry((v, &k.1, k.2)).or_default().push((
                &k.3,
                (k.1.clone(), k.2, k.0.clone(), k.3.clone()),
                j,
            ));
        }
        for (_, mut lv) in cells {
            ctx.check_cancel()?;
            let var = lv[0].1 .2.clone();
            if bin_rank(&var, lv[0].0).is_some() {
                lv.sort_by_key(|l| bin_rank(&var, l.0));
                for w in lv.windows(2) {
                    out.push("level", String::new(), (&w[1].1, w[1].2), (&w[0].1, w[0].2));
                }
            } else {
                for i in 0..lv.len() {
                    for j in i + 1..lv.len() {
                        out.push(
                            "level",
                            String::new(),
                            (&lv[i].1, lv[i].2),
                            (&lv[j].1, lv[j].2),
                        );
                    }
                }
            }
        }
        let n = out.kind.len();
        let mut table = out.frame()?;
        write(ctx, "compare.parquet", &mut table)?;
        Ok(n)
    }
}

fn arm_of(s: &Selection) -> Arm {
    (
        s.size.clone(),
        s.step as u32,
        s.variable.clone().unwrap_or_default(),
        s.level.clone().unwrap_or_default(),
    )
}

/// Plan-time checks of the `[[compare]]` entries against the suite: sizes,
/// steps and variables (levels are known only once rows are annotated).
pub fn check(compares: &[CompareConfig], sizes: &[String], steps: &[usize]) -> Result<(), String> {
    for c in compares {
        for (side, s) in [("a", &c.a), ("b", &c.b)] {
            let at = format!("[[compare]] '{}': {side}", c.name);
            if !sizes.contains(&s.size) {
                return Err(format!(
                    "{at}.size '{}' is not a size of the suite ({})",
                    s.size,
                    sizes.join(", ")
                ));
            }
            if !steps.contains(&s.step) {
                return Err(format!("{at}.step {} is not a step of the suite", s.step));
            }
            match (&s.variable, &s.level) {
                (None, None) => {}
                (Some(v), Some(_)) if VARIABLES.iter().any(|x| x.name == v) => {}
                (Some(v), Some(_)) => {
                    let names: Vec<&str> = VARIABLES.iter().map(|x| x.name).collect();
                    return Err(format!(
                        "{at}.variable '{v}' is not one of {}",
                        names.join(", ")
                    ));
                }
                _ => {
                    return Err(format!(
                        "{at}: give both `variable` and `level`, or neither"
                    ))
                }
            }
        }
    }
    Ok(())
}
