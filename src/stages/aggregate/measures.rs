//! `measures.parquet` and `measures_by.parquet`: every declared divergence
//! (`analysis::measures::MEASURES`) averaged per (size, step) over its units
//! and rows, and within each level of each conditioning variable, with the
//! seed- and document-aware interval of the statistics issue. One pass per
//! (size, step) adds every row's values into per-(measure, level, unit,
//! document) sums; the jackknife needs nothing more.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use arrow_array::{BooleanArray, Float64Array, StringArray, UInt32Array};
use polars::prelude::*;

use super::battery::{ensemble_gain_without, SeedRows};
use super::frames::{interval_columns, perr, write};
use super::Clusters;
use crate::analysis::conditioning::{Levels, Variable};
use crate::analysis::intervals::{Cells, Interval, Jackknife};
use crate::analysis::measures::{Measure, Source};
use crate::analysis::stats::mean_sd;
use crate::engine::JobCtx;
use crate::error::StageError;

/// The pseudo-variable of the unconditional table: one level, every row.
const ALL: &str = "all";

/// Each row's levels under each variable, for one size.
struct RowLevels {
    /// Level names per variable.
    names: Vec<Vec<String>>,
    /// `of_row[variable][row id]`: the row's level indices (several for flag
    /// variables, none where the variable is missing).
    of_row: Vec<Vec<Vec<u16>>>,
}

/// Per size, every row's levels, from the annotations joined with the
/// per-(size, row) final surprisal and confidence.
fn row_levels(
    joined: LazyFrame,
    vars: &[&Variable],
) -> Result<BTreeMap<String, RowLevels>, StageError> {
    let df = joined.collect().map_err(perr)?;
    let size = df
        .column("size")
        .map_err(perr)?
        .str()
        .map_err(perr)?
        .clone();
    let row = df
        .column("row")
        .map_err(perr)?
        .cast(&DataType::UInt32)
        .map_err(perr)?
        .u32()
        .map_err(perr)?
        .clone();
    let max_row = row.max().unwrap_or(0) as usize;
    let mut out: BTreeMap<String, RowLevels> = BTreeMap::new();
    let mut index: BTreeMap<(String, usize, String), u16> = BTreeMap::new();
    for (vi, v) in vars.iter().enumerate() {
        // (flag column or the variable's own, fixed level name).
        let sources: Vec<(&str, Option<&str>)> = match v.levels {
            Levels::Column => vec![(v.name, None)],
            Levels::Flags(f) => f.iter().map(|&(c, l)| (c, Some(l))).collect(),
        };
        for (column, fixed) in sources {
            let c = df.column(column).map_err(perr)?;
            let (strs, flags) = match fixed {
                None => (Some(c.cast(&DataType::String).map_err(perr)?), None),
                Some(_) => (None, Some(c.bool().map_err(perr)?.clone())),
            };
            for i in 0..df.height() {
                let (Some(sz), Some(r)) = (size.get(i), row.get(i)) else {
                    continue;
                };
                let level = match (&strs, &flags, fixed) {
                    (Some(s), _, _) => s.str().map_err(perr)?.get(i).map(str::to_string),
                    (_, Some(f), Some(l)) => (f.get(i) == Some(true)).then(|| l.to_string()),
                    _ => None,
                };
                let Some(level) = level else { continue };
                let entry = out.entry(sz.to_string()).or_insert_with(|| RowLevels {
                    names: vec![Vec::new(); vars.len()],
                    of_row: vec![vec![Vec::new(); max_row + 1]; vars.len()],
                });
                let key = (sz.to_string(), vi, level.clone());
                let li = *index.entry(key).or_insert_with(|| {
                    entry.names[vi].push(level);
                    (entry.names[vi].len() - 1) as u16
                });
                entry.of_row[vi][r as usize].push(li);
            }
        }
    }
    Ok(out)
}

/// One output row's key and statistics.
struct Out {
    measure: &'static str,
    variable: String,
    level: String,
    size: String,
    step: u32,
    iv: Interval,
    sd: f64,
    n_rows: u32,
    n_units: u32,
    n_docs: u32,
}

/// Sums of one measure in one level: per unit and document (pair
/// measures), or per document with per-seed leave-one-out totals (group
/// measures).
struct Acc {
    cells: Cells,
    /// Group measures: Σ over rows of the value without seed s.
    loo: Vec<f64>,
}

impl Acc {
    fn jackknife(&self, m: &Measure) -> Jackknife {
        let jk = self.cells.jackknife();
        if !matches!(m.source, Source::Group(_)) {
            return jk;
        }
        let n: f64 = self.cells.rows.iter().sum();
        let seeds = if m.seed_replicates {
            self.loo.iter().map(|t| t / n).collect()
        } else {
            vec![f64::NAN; self.loo.len()]
        };
        Jackknife { seeds, ..jk }
    }

    /// SD over units of the units' means (NaN for one unit).
    fn sd(&self) -> f64 {
        let n: f64 = self.cells.rows.iter().sum();
        let means: Vec<f64> = self
            .cells
            .sums
            .iter()
            .map(|s| s.iter().sum::<f64>() / n)
            .collect();
        if means.len() < 2 {
            return f64::NAN;
        }
        mean_sd(&means).1
    }
}

/// What the pass reads of one (size, step).
pub(super) struct StepFiles<'a> {
    pub kl: &'a Path,
    pub group: &'a Path,
}

/// The measures' tables over every (size, step).
#[allow(clippy::too_many_arguments)]
pub(super) fn measures(
    ctx: &JobCtx,
    steps: &[StepFiles],
    measures: &[&'static Measure],
    vars: &[&Variable],
    joined: LazyFrame,
    cl: &Clusters,
    dists: &BTreeMap<(String, u32, String), SeedRows>,
    min_rows: usize,
    phase_tolerance: f64,
) -> Result<(usize, usize), StageError> {
    let levels = row_levels(joined, vars)?;
    let mut all = Vec::new();
    let mut by = Vec::new();
    for f in steps {
        ctx.check_cancel()?;
        let (a, b) = one_step(f, measures, vars, &levels, cl, dists)?;
        all.extend(a);
        by.extend(b);
    }
    let (na, nb) = (all.len(), by.len());
    let mut t = frame(&all, false, min_rows)?;
    write(ctx, "measures.parquet", &mut t)?;
    let mut t = frame(&by, true, min_rows)?;
    write(ctx, "measures_by.parquet", &mut t)?;
    let mut t = measure_phases(&all, measures, phase_tolerance)?;
    write(ctx, "measure_phases.parquet", &mut t)?;
    Ok((na, nb))
}

/// `measure_phases.parquet`: the paper's phases located on each size's
/// curve of every measure that has them (the same rule as `phases.parquet`
/// on E[KL], without its replicate draws).
fn measure_phases(
    all: &[Out],
    measures: &[&'static Measure],
    tol: f64,
) -> Result<DataFrame, StageError> {
    let mut curves: BTreeMap<(&str, &str), Vec<(u64, f64)>> = BTreeMap::new();
    for o in all {
        if measures.iter().any(|m| m.name == o.measure && m.phases) {
            curves
                .entry((o.measure, o.size.as_str()))
                .or_default()
                .push((o.step as u64, o.iv.est));
        }
    }
    let (mut m, mut sz, mut ph, mut present, mut start, mut end, mut note) =
        (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    for ((measure, size), mut c) in curves {
        c.sort_by_key(|p| p.0);
        for p in crate::analysis::phases::detect(&c, tol) {
            m.push(measure);
            sz.push(size.to_string());
            ph.push(p.name);
            present.push(p.span.is_some());
            start.push(p.span.map(|s| s.0 as u32));
            end.push(p.span.map(|s| s.1 as u32));
            note.push(p.note);
        }
    }
    let n = m.len();
    DataFrame::new(
        n,
        vec![
            Column::new("measure".into(), m),
            Column::new("size".into(), sz),
            Column::new("phase".into(), ph),
            Column::new("present".into(), present),
            Column::new("start_step".into(), start),
            Column::new("end_step".into(), end),
            Column::new("note".into(), note),
        ],
    )
    .map_err(perr)
}

/// The per-row values of one measure, with each row's id (pair measures:
/// one per row and pair, with the pair's unit index).
struct Values<'a> {
    rows: &'a [u32],
    /// None: one unit (a group measure).
    units: Option<&'a [usize]>,
    vals: Vec<f64>,
}

fn one_step(
    f: &StepFiles,
    measures: &[&'static Measure],
    vars: &[&Variable],
    levels: &BTreeMap<String, RowLevels>,
    cl: &Clusters,
    dists: &BTreeMap<(String, u32, String), SeedRows>,
) -> Result<(Vec<Out>, Vec<Out>), StageError> {
    let kl = crate::table::read(f.kl)?;
    let size = crate::table::column::<StringArray>(&kl, "size", f.kl)?
        .value(0)
        .to_string();
    let step = crate::table::column::<UInt32Array>(&kl, "step", f.kl)?.value(0);
    let sa = crate::table::column::<StringArray>(&kl, "seed_a", f.kl)?;
    let sb = crate::table::column::<StringArray>(&kl, "seed_b", f.kl)?;
    let krow = crate::table::column::<UInt32Array>(&kl, "row", f.kl)?;
    // Units: the ordered pairs in order of appearance.
    let mut unit_of: HashMap<(usize, usize), usize> = HashMap::new();
    let mut units: Vec<(usize, Option<usize>)> = Vec::new();
    let mut pair_unit = Vec::with_capacity(kl.num_rows());
    for i in 0..kl.num_rows() {
        let (a, b) = (cl.seed(sa.value(i), f.kl)?, cl.seed(sb.value(i), f.kl)?);
        let u = *unit_of.entry((a, b)).or_insert_with(|| {
            units.push((a, Some(b)));
            units.len() - 1
        });
        pair_unit.push(u);
    }
    let group = crate::table::read(f.group)?;
    let grow = crate::table::column::<UInt32Array>(&group, "row", f.group)?;
    let values = |m: &Measure| -> Result<Values, StageError> {
        let pair = |g: &dyn Fn(usize) -> f64| -> Result<Values, StageError> {
            Ok(Values {
                rows: krow.values(),
                units: Some(&pair_unit),
                vals: (0..kl.num_rows()).map(g).collect(),
            })
        };
        match m.source {
            Source::Pair(c) => {
                let x = crate::table::column::<Float64Array>(&kl, c, f.kl)?;
                pair(&|i| x.value(i))
            }
            Source::PairAbs(c) => {
                let x = crate::table::column::<Float64Array>(&kl, c, f.kl)?;
                pair(&|i| x.value(i).abs())
            }
            Source::PairNot(c) => {
                let x = crate::table::column::<BooleanArray>(&kl, c, f.kl)?;
                pair(&|i| if x.value(i) { 0.0 } else { 1.0 })
            }
            Source::Group(c) => {
                let x = crate::table::column::<Float64Array>(&group, c, f.group)?;
                Ok(Values {
                    rows: grow.values(),
                    units: None,
                    vals: x.values().to_vec(),
                })
            }
        }
    };
    // Leave-one-seed-out values of the ensemble gain, per row, from each
    // seed's target log-prob (the dist tables).
    let loo_gain = |rows: &[u32]| -> Vec<Vec<f64>> {
        let lp: Vec<Vec<f64>> = cl
            .seeds
            .iter()
            .map(|s| {
                let v = dists.get(&(size.clone(), step, s.clone()));
                rows.iter()
                    .map(|&r| {
                        v.and_then(|v| v.get(r as usize).copied().flatten())
                            .map_or(f64::NAN, |x| x.0)
                    })
                    .collect()
            })
            .collect();
        ensemble_gain_without(&lp)
            .into_iter()
            .map(|g| g.unwrap_or_else(|| vec![f64::NAN; rows.len()]))
            .collect()
    };
    let lv = levels.get(&size);
    let what = PathBuf::from(format!("measures ({size} step {step})"));
    let (mut all, mut by) = (Vec::new(), Vec::new());
    for &m in measures {
        let v = values(m)?;
        let group = matches!(m.source, Source::Group(_));
        let munits: Vec<(usize, Option<usize>)> = if group {
            vec![(usize::MAX, None)]
        } else {
            units.clone()
        };
        let loo = if group && m.seed_replicates {
            Some(loo_gain(v.rows))
        } else {
            None
        };
        let fresh = || Acc {
            cells: Cells::new(cl.seeds.len(), munits.clone(), cl.n_docs),
            loo: vec![0.0; if group { cl.seeds.len() } else { 0 }],
        };
        // Variable ALL (index 0), then each variable's levels.
        let nvars = lv.map_or(0, |l| l.names.len());
        let mut accs: Vec<Vec<Acc>> = vec![vec![fresh()]];
        for vi in 0..nvars {
            let n = lv.map_or(0, |l| l.names[vi].len());
            accs.push((0..n).map(|_| fresh()).collect());
        }
        let no_levels: Vec<u16> = Vec::new();
        for i in 0..v.vals.len() {
            let (r, u, x) = (v.rows[i], v.units.map_or(0, |u| u[i]), v.vals[i]);
            let d = cl.doc(r, &what)?;
            let add = |acc: &mut Acc| {
                acc.cells.sums[u][d] += x;
                // Every unit has the same rows: count them once.
                if u == 0 {
                    acc.cells.rows[d] += 1.0;
                }
                if let Some(loo) = &loo {
                    for (t, l) in acc.loo.iter_mut().zip(loo) {
                        *t += l[i];
                    }
                }
            };
            add(&mut accs[0][0]);
            for vi in 0..nvars {
                let ls = lv
                    .and_then(|l| l.of_row[vi].get(r as usize))
                    .unwrap_or(&no_levels);
                for &li in ls {
                    add(&mut accs[vi + 1][li as usize]);
                }
            }
        }
        for (vi, accs) in accs.iter().enumerate() {
            for (li, acc) in accs.iter().enumerate() {
                let n_rows: f64 = acc.cells.rows.iter().sum();
                if n_rows == 0.0 {
                    continue;
                }
                let (variable, level) = if vi == 0 {
                    (ALL.to_string(), ALL.to_string())
                } else {
                    let l = lv.expect("levels exist where variables do");
                    (vars[vi - 1].name.to_string(), l.names[vi - 1][li].clone())
                };
                let o = Out {
                    measure: m.name,
                    variable,
                    level,
                    size: size.clone(),
                    step,
                    iv: acc.jackknife(m).interval(),
                    sd: acc.sd(),
                    n_rows: n_rows as u32,
                    n_units: acc.cells.units.len() as u32,
                    n_docs: acc.cells.rows.iter().filter(|&&r| r > 0.0).count() as u32,
                };
                if vi == 0 {
                    all.push(o);
                } else {
                    by.push(o);
                }
            }
        }
    }
    Ok((all, by))
}

/// The table of `rows` (with the variable and level when `by`).
fn frame(rows: &[Out], by: bool, min_rows: usize) -> Result<DataFrame, StageError> {
    let n = rows.len();
    let mut cols = vec![Column::new(
        "measure".into(),
        rows.iter().map(|o| o.measure).collect::<Vec<_>>(),
    )];
    if by {
        cols.push(Column::new(
            "variable".into(),
            rows.iter().map(|o| o.variable.as_str()).collect::<Vec<_>>(),
        ));
        cols.push(Column::new(
            "level".into(),
            rows.iter().map(|o| o.level.as_str()).collect::<Vec<_>>(),
        ));
    }
    cols.extend([
        Column::new(
            "size".into(),
            rows.iter().map(|o| o.size.as_str()).collect::<Vec<_>>(),
        ),
        Column::new(
            "step".into(),
            rows.iter().map(|o| o.step).collect::<Vec<_>>(),
        ),
        Column::new(
            "value".into(),
            rows.iter().map(|o| o.iv.est).collect::<Vec<f64>>(),
        ),
        Column::new(
            "sd_units".into(),
            rows.iter().map(|o| o.sd).collect::<Vec<f64>>(),
        ),
    ]);
    let ivs: Vec<Interval> = rows.iter().map(|o| o.iv).collect();
    cols.extend(interval_columns(&ivs, false));
    cols.extend([
        Column::new(
            "n_rows".into(),
            rows.iter().map(|o| o.n_rows).collect::<Vec<_>>(),
        ),
        Column::new(
            "n_units".into(),
            rows.iter().map(|o| o.n_units).collect::<Vec<_>>(),
        ),
        Column::new(
            "n_docs".into(),
            rows.iter().map(|o| o.n_docs).collect::<Vec<_>>(),
        ),
        Column::new(
            "few_rows".into(),
            rows.iter()
                .map(|o| (o.n_rows as usize) < min_rows)
                .collect::<Vec<_>>(),
        ),
    ]);
    let mut keys = vec!["measure"];
    if by {
        keys.extend(["variable", "size", "level", "step"]);
    } else {
        keys.extend(["size", "step"]);
    }
    DataFrame::new(n, cols)
        .map_err(perr)?
        .sort(keys, SortMultipleOptions::default())
        .map_err(perr)
}
