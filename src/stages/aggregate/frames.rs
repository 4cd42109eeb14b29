//! polars plumbing of the aggregate tables: scanning Parquet, writing a
//! table, and the reproducible per-group means behind `conv_by`, `ce_by`
//! and the token tables.

use std::path::PathBuf;

use polars::prelude::*;

use super::{Clusters, NAME};
use crate::analysis::intervals::{Cells, Interval, Jackknife};
use crate::analysis::stats::mean_sd;
use crate::engine::JobCtx;
use crate::error::StageError;

pub(super) fn perr(e: PolarsError) -> StageError {
    StageError::Other(format!("polars: {e}"))
}

/// The tables `paths` as one lazy frame (read through arrow-rs: `frame`).
pub(super) fn scan(paths: &[PathBuf]) -> Result<LazyFrame, StageError> {
    Ok(crate::frame::read(paths, None)?.lazy())
}

/// Only `columns` of the tables `paths`, as one lazy frame.
pub(super) fn scan_columns(paths: &[PathBuf], columns: &[&str]) -> Result<LazyFrame, StageError> {
    Ok(crate::frame::read(paths, Some(columns))?.lazy())
}

pub(super) fn write(ctx: &JobCtx, name: &str, df: &mut DataFrame) -> Result<(), StageError> {
    crate::frame::write(&ctx.out.join(name), df, &[("stage", NAME.to_string())])
}

/// Each row's list column as a mean summed left to right. polars' float
/// sums depend on how a group's values are chunked, which varies between
/// runs; with the lists sorted, this makes the tables byte-reproducible.
pub(super) fn seq_means(df: &DataFrame, list: &str) -> PolarsResult<Vec<f64>> {
    df.column(list)?
        .list()?
        .amortized_iter()
        .map(|v| {
            let Some(v) = v else { return Ok(f64::NAN) };
            let xs = v.as_ref().f64()?;
            let sum = xs.into_no_null_iter().fold(0.0, |a, x| a + x);
            Ok(sum / xs.len().max(1) as f64)
        })
        .collect()
}

/// What a conditional table averages: a per-row value, the units it is
/// averaged over (seed pairs, or seeds), and its output columns.
pub(super) struct Measure {
    pub value: &'static str,
    pub units: &'static [&'static str],
    /// Output value = sign × the mean over units.
    pub sign: f64,
    pub out: &'static str,
    pub sd: &'static str,
    pub n_units: &'static str,
}

/// Convergence: per ordered seed pair the mean KL; E[conv] = −its mean.
pub(super) const CONV: Measure = Measure {
    value: "kl",
    units: &["seed_a", "seed_b"],
    sign: -1.0,
    out: "conv",
    sd: "sd_pairs",
    n_units: "n_pairs",
};

/// Cross-entropy: per seed the mean surprisal of the target (nats).
pub(super) const CROSS_ENTROPY: Measure = Measure {
    value: "surprisal",
    units: &["seed"],
    sign: 1.0,
    out: "cross_entropy",
    sd: "sd_seeds",
    n_units: "n_seeds",
};

/// The interval columns every table with an interval has (`se`,
/// `se_seeds`, `se_docs`, `df`, `ci_low`, `ci_high`, and `p` for
/// differences), one row per interval.
pub fn interval_columns(ivs: &[Interval], with_p: bool) -> Vec<Column> {
    let col = |name: &str, h: fn(&Interval) -> f64| {
        Column::new(name.into(), ivs.iter().map(h).collect::<Vec<f64>>())
    };
    let mut out = vec![
        col("se", |i| i.se),
        col("se_seeds", |i| i.se_seeds),
        col("se_docs", |i| i.se_docs),
        col("df", |i| i.df),
        col("ci_low", |i| i.low),
        col("ci_high", |i| i.high),
    ];
    if with_p {
        out.push(col("p", |i| i.p));
    }
    out
}

/// A string column's values (null as "").
pub(super) fn strings(df: &DataFrame, c: &str) -> Result<Vec<String>, StageError> {
    Ok(df
        .column(c)
        .map_err(perr)?
        .str()
        .map_err(perr)?
        .iter()
        .map(|v| v.unwrap_or_default().to_string())
        .collect())
}

/// A conditional cell's key: (variable, size, step, level).
pub(super) type CellKey = (String, String, u32, String);

/// Per unit (seed pair or seed) the mean of `m.value` over the rows of each
/// level of `variable`, then mean and SD over units, and the seed- and
/// document-aware interval of that mean; `n_rows` is the rows per level (the
/// same for every unit). polars groups; the sums run here in a fixed order.
/// Also returns each cell's jackknife (in the output's sign) for the
/// comparisons. (Columns are not named `by`/`group`: both are SQL keywords.)
pub(super) fn conditional(
    lf: LazyFrame,
    level: Expr,
    variable: &str,
    m: &Measure,
    cl: &Clusters,
) -> Result<(DataFrame, Vec<(CellKey, Jackknife)>), StageError> {
    let mut keys = vec!["size", "step", "level"];
    keys.extend(m.units);
    let per_unit = lf
        .with_column(level.alias("level"))
        .group_by(keys.iter().map(|k| col(*k)).collect::<Vec<_>>())
        .agg([
            col(m.value)
                .sort_by([col("row")], SortMultipleOptions::default())
                .alias("vals"),
            col("row").sort(SortOptions::default()).alias("rows"),
            len().alias("n_rows"),
        ])
        .sort(keys.clone(), SortMultipleOptions::default())
        .collect()
        .map_err(perr)?;
    let unit_mean = seq_means(&per_unit, "vals").map_err(perr)?;
    let strs = |c: &str| strings(&per_unit, c);
    let u32s = |c: &str| -> Result<Vec<u32>, StageError> {
        Ok(per_unit
            .column(c)
            .map_err(perr)?
            .cast(&DataType::UInt32)
            .map_err(perr)?
            .u32()
            .map_err(perr)?
            .into_no_null_iter()
            .collect())
    };
    let (size, step, lvl, rows) = (
        strs("size")?,
        u32s("step")?,
        strs("level")?,
        u32s("n_rows")?,
    );
    let (mut o_size, mut o_step, mut o_level) = (vec![], vec![], vec![]);
    let (mut o_val, mut o_sd, mut o_rows, mut o_units) = (vec![], vec![], vec![], vec![]);
    let mut o_iv = Vec::new();
    let mut o_docs = Vec::new();
    let mut jks = Vec::new();
    // Each unit's seeds, and its per-document sums.
    let unit_seeds: Vec<Vec<String>> = m.units.iter().map(|u| strs(u)).collect::<Result<_, _>>()?;
    // What an error names (built once: `doc` runs for every row).
    let what = std::path::PathBuf::from(format!("{} ({variable})", m.out));
    let rows_list = per_unit
        .column("rows")
        .map_err(perr)?
        .list()
        .map_err(perr)?;
    let vals_list = per_unit
        .column("vals")
        .map_err(perr)?
        .list()
        .map_err(perr)?;
    let mut doc_sums: Vec<(Vec<f64>, Vec<f64>)> = Vec::with_capacity(per_unit.height());
    for (r, v) in rows_list.amortized_iter().zip(vals_list.amortized_iter()) {
        let (mut sums, mut counts) = (vec![0.0; cl.n_docs], vec![0.0; cl.n_docs]);
        if let (Some(r), Some(v)) = (r, v) {
            let r = r.as_ref().u32().map_err(perr)?;
            let v = v.as_ref().f64().map_err(perr)?;
            for (row, x) in r.into_no_null_iter().zip(v.into_no_null_iter()) {
                let d = cl.doc(row, &what)?;
                sums[d] += x;
                counts[d] += 1.0;
            }
        }
        doc_sums.push((sums, counts));
    }
    let mut i = 0;
    while i < unit_mean.len() {
        let same = |j: usize| size[j] == size[i] && step[j] == step[i] && lvl[j] == lvl[i];
        let mut j = i;
        while j < unit_mean.len() && same(j) {
            j += 1;
        }
        let (mean, sd) = mean_sd(&unit_mean[i..j]);
        let units = (i..j)
            .map(|u| {
                let a = cl.seed(&unit_seeds[0][u], &what)?;
                let b = match unit_seeds.get(1) {
                    Some(s) => Some(cl.seed(&s[u], &what)?),
                    None => None,
                };
                Ok((a, b))
            })
            .collect::<Result<Vec<_>, StageError>>()?;
        let mut cells = Cells::new(cl.seeds.len(), units, cl.n_docs);
        for (c, u) in cells.sums.iter_mut().zip(i..j) {
            c.clone_from(&doc_sums[u].0);
        }
        cells.rows.clone_from(&doc_sums[i].1);
        let jk = cells.jackknife().scaled(m.sign);
        o_iv.push(jk.interval());
        o_docs.push(cells.rows.iter().filter(|&&r| r > 0.0).count() as u32);
        jks.push((
            (
                variable.to_string(),
                size[i].clone(),
                step[i],
                lvl[i].clone(),
            ),
            jk,
        ));
        o_size.push(size[i].clone());
        o_step.push(step[i]);
        o_level.push(lvl[i].clone());
        o_val.push(m.sign * mean);
        o_sd.push(sd);
        o_rows.push(rows[i..j].iter().copied().max().unwrap_or(0));
        o_units.push((j - i) as u32);
        i = j;
    }
    let n = o_size.len();
    let mut cols = vec![
        Column::new("size".into(), o_size),
        Column::new("step".into(), o_step),
        Column::new("variable".into(), vec![variable; n]),
        Column::new("level".into(), o_level),
        Column::new(m.out.into(), o_val),
        Column::new(m.sd.into(), o_sd),
    ];
    cols.extend(interval_columns(&o_iv, false));
    cols.extend([
        Column::new("n_rows".into(), o_rows),
        Column::new(m.n_units.into(), o_units),
        Column::new("n_docs".into(), o_docs),
    ]);
    let df = DataFrame::new(n, cols).map_err(perr)?;
    Ok((df, jks))
}
