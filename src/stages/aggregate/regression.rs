//! `regression.parquet`: per step, per-row KL (mean over ordered pairs) on
//! frequency, part of speech and size, in one of two designs, each with
//! seed- and document-aware intervals (`analysis::intervals`; refits
//! without each seed and without each document).
//!
//! - `paper`, the authors' (`stable-plots/seeds_frequency_pos_linear_regression.py`):
//!   log10(count), one dummy per Penn tag of the target and of the context
//!   token, one per size, an intercept, sklearn's minimum-norm solution (so
//!   each dummy block sums to zero and δ_s = size mean − mean over sizes).
//!   Rows whose target has count 0 are left out (log10 0 is undefined;
//!   the authors' Pile counts have none). Untagged tokens are `UNK`.
//! - `groups`, seedconv's own: one intercept per size (no common one),
//!   log10(count + 1), noun / verb / function flags of target and context.

use std::collections::BTreeMap;
use std::path::Path;

use arrow_array::{Array, StringArray, UInt32Array, UInt64Array};
use polars::prelude::*;

use super::conv::StepKl;
use super::frames::{interval_columns, perr, write};
use super::{AggregateJob, Clusters};
use crate::analysis::intervals::{interval, Interval};
use crate::analysis::regression::{fit_jackknife, Observations, Row};
use crate::config::RegressionModel;
use crate::engine::JobCtx;
use crate::error::StageError;

/// One row's regressors before coding.
struct Features {
    count: u64,
    target: String,
    context: String,
    /// (noun, verb, function) of target and of context.
    groups: [bool; 6],
}

fn features(ann: &Path) -> Result<BTreeMap<u32, Features>, StageError> {
    let a = crate::table::read(ann)?;
    let tcol = |n: &str| crate::table::column::<StringArray>(&a, n, ann);
    let rows = crate::table::column::<UInt32Array>(&a, "row", ann)?;
    let count = crate::table::column::<UInt64Array>(&a, "count", ann)?;
    let (tx, tu, cx, cu) = (
        tcol("xpos")?,
        tcol("upos")?,
        tcol("context_xpos")?,
        tcol("context_upos")?,
    );
    fn tag(c: &StringArray, i: usize) -> Option<&str> {
        (!c.is_null(i)).then(|| c.value(i))
    }
    let groups = |x: &StringArray, u: &StringArray, i: usize| {
        crate::text::pos::groups(tag(x, i), tag(u, i)).unwrap_or([false; 4])
    };
    let unk = |x: Option<&str>| x.unwrap_or(crate::text::pos::UNK).to_string();
    let mut out = BTreeMap::new();
    for i in 0..a.num_rows() {
        let (t, c) = (groups(tx, tu, i), groups(cx, cu, i));
        out.insert(
            rows.value(i),
            Features {
                count: count.value(i),
                target: unk(tag(tx, i)),
                context: unk(tag(cx, i)),
                groups: [t[0], t[1], t[2], c[0], c[1], c[2]],
            },
        );
    }
    Ok(out)
}

const GROUP_TERMS: [&str; 7] = [
    "log10_freq",
    "target_noun",
    "target_verb",
    "target_function",
    "context_noun",
    "context_verb",
    "context_function",
];

/// The columns of a design: names, and each observation's sparse row.
struct Design {
    names: Vec<String>,
    /// Column of each name (rows are built once per observation and step).
    index: std::collections::HashMap<String, usize>,
    intercept: bool,
}

impl Design {
    fn new(model: RegressionModel, sizes: &[String], feats: &BTreeMap<u32, Features>) -> Design {
        let size_names = sizes.iter().map(|s| format!("size_{s}"));
        let (names, intercept): (Vec<String>, bool) = match model {
            RegressionModel::Groups => (
                size_names
                    .chain(GROUP_TERMS.iter().map(|t| t.to_string()))
                    .collect(),
                false,
            ),
            RegressionModel::Paper => {
                let tags = |f: fn(&Features) -> &str| {
                    let mut v: Vec<&str> = feats.values().filter(|x| x.count > 0).map(f).collect();
                    v.sort_unstable();
                    v.dedup();
                    v.into_iter().map(String::from).collect::<Vec<_>>()
                };
                let mut names = vec!["log10_freq".to_string()];
                names.extend(tags(|x| &x.target).iter().map(|t| format!("target_{t}")));
                names.extend(tags(|x| &x.context).iter().map(|t| format!("context_{t}")));
                names.extend(size_names);
                (names, true)
            }
        };
        let index = names
            .iter()
            .enumerate()
            .map(|(j, n)| (n.clone(), j))
            .collect();
        Design {
            names,
            index,
            intercept,
        }
    }

    /// The row of a (size, row) observation; None when it is left out.
    fn row(&self, model: RegressionModel, size: &str, f: &Features) -> Option<Row> {
        let col = |n: &str| self.index.get(n).copied();
        let size = col(&format!("size_{size}"))?;
        match model {
            RegressionModel::Groups => {
                let mut r = vec![(size, 1.0)];
                let base = self.names.len() - GROUP_TERMS.len();
                r.push((base, ((f.count + 1) as f64).log10()));
                for (j, &g) in f.groups.iter().enumerate() {
                    if g {
                        r.push((base + 1 + j, 1.0));
                    }
                }
                Some(r)
            }
            RegressionModel::Paper => {
                if f.count == 0 {
                    return None;
                }
                Some(vec![
                    (0, (f.count as f64).log10()),
                    (col(&format!("target_{}", f.target))?, 1.0),
                    (col(&format!("context_{}", f.context))?, 1.0),
                    (size, 1.0),
                ])
            }
        }
    }
}

impl AggregateJob {
    /// Writes `regression.parquet`; returns the rows written.
    pub(super) fn regression(
        &self,
        ctx: &JobCtx,
        steps: &[StepKl],
        ann: &Path,
        cl: &Clusters,
    ) -> Result<usize, StageError> {
        let feats = features(ann)?;
        let model = self.regression;
        let mut sizes: Vec<String> = Vec::new();
        for s in steps {
            if !sizes.contains(&s.size) {
                sizes.push(s.size.clone());
            }
        }
        let design = Design::new(model, &sizes, &feats);
        let mut all_steps: Vec<u32> = steps.iter().map(|s| s.step).collect();
        all_steps.sort_unstable();
        all_steps.dedup();
        let mut t = RegTable::default();
        for step in all_steps {
            ctx.check_cancel()?;
            let mut o = Observations {
                p: design.names.len(),
                rows: vec![],
                y: vec![],
                doc: vec![],
                n_docs: cl.n_docs,
                y_without_seed: vec![vec![]; cl.seeds.len()],
            };
            for s in steps.iter().filter(|s| s.step == step) {
                for (i, r) in s.rows.iter().enumerate() {
                    let Some(f) = feats.get(r) else { continue };
                    let Some(row) = design.row(model, &s.size, f) else {
                        continue;
                    };
                    o.rows.push(row);
                    o.y.push(s.y[i]);
                    o.doc.push(s.docs[i]);
                    for (k, y) in o.y_without_seed.iter_mut().enumerate() {
                        y.push(s.y_without_seed[k][i]);
                    }
                }
            }
            // Terms never non-zero at this step (no tags: the flags) are
            // left out of the table (their minimum-norm coefficient is 0).
            let mut used = vec![false; design.names.len()];
            for r in &o.rows {
                for &(j, v) in r {
                    used[j] |= v != 0.0;
                }
            }
            let fit = fit_jackknife(&o, design.intercept);
            let mut terms: Vec<(String, Option<usize>)> = Vec::new();
            if design.intercept {
                terms.push(("intercept".into(), Some(0)));
            }
            let off = usize::from(design.intercept);
            for (j, n) in design.names.iter().enumerate() {
                if used[j] {
                    terms.push((n.clone(), Some(j + off)));
                }
            }
            for (name, at) in terms {
                let (coef, iv, r2) = match (&fit, at) {
                    (Some((f, jk)), Some(j)) => (jk[j].est, Some(jk[j].interval()), f.r2),
                    _ => (f64::NAN, None, f64::NAN),
                };
                t.push(model, step, name, coef, iv, o.y.len(), r2);
            }
        }
        let n = t.step.len();
        let mut table = t.frame()?;
        write(ctx, "regression.parquet", &mut table)?;
        Ok(n)
    }
}

#[derive(Default)]
struct RegTable {
    model: Vec<&'static str>,
    step: Vec<u32>,
    term: Vec<String>,
    coef: Vec<f64>,
    iv: Vec<Interval>,
    n: Vec<u32>,
    r2: Vec<f64>,
}

impl RegTable {
    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        model: RegressionModel,
        step: u32,
        term: String,
        coef: f64,
        iv: Option<Interval>,
        n: usize,
        r2: f64,
    ) {
        self.model.push(model.name());
        self.step.push(step);
        self.term.push(term);
        self.coef.push(coef);
        self.iv
            .push(iv.unwrap_or_else(|| interval(f64::NAN, &[], &[])));
        self.n.push(n as u32);
        self.r2.push(r2);
    }

    fn frame(self) -> Result<DataFrame, StageError> {
        let n = self.step.len();
        let mut cols = vec![
            Column::new("model".into(), self.model),
            Column::new("step".into(), self.step),
            Column::new("term".into(), self.term),
            Column::new("coef".into(), self.coef),
        ];
        cols.extend(interval_columns(&self.iv, true));
        cols.extend([
            Column::new("n_obs".into(), self.n),
            Column::new("r2".into(), self.r2),
        ]);
        DataFrame::new(n, cols).map_err(perr)
    }
}
