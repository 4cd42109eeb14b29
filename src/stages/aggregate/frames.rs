//! polars plumbing of the aggregate tables: scanning Parquet, writing a
//! table, and the reproducible per-group means behind `conv_by` and the
//! token table.

use std::fs::File;
use std::path::PathBuf;

use polars::prelude::*;

use super::NAME;
use crate::analysis::stats::mean_sd;
use crate::engine::JobCtx;
use crate::error::StageError;

pub(super) fn perr(e: PolarsError) -> StageError {
    StageError::Other(format!("polars: {e}"))
}

pub(super) fn scan(paths: &[PathBuf]) -> Result<LazyFrame, StageError> {
    let lfs = paths
        .iter()
        .map(|p| {
            let p = PlRefPath::try_from_path(p).map_err(perr)?;
            LazyFrame::scan_parquet(p, ScanArgsParquet::default()).map_err(perr)
        })
        .collect::<Result<Vec<_>, _>>()?;
    concat(lfs, UnionArgs::default()).map_err(perr)
}

pub(super) fn write(ctx: &JobCtx, name: &str, df: &mut DataFrame) -> Result<(), StageError> {
    let path = ctx.out.join(name);
    let f = File::create(&path).map_err(|e| StageError::io(&path, e))?;
    ParquetWriter::new(f)
        .with_key_value_metadata(Some(KeyValueMetadata::from_static(vec![(
            "seedconv.stage".into(),
            NAME.into(),
        )])))
        .finish(df)
        .map_err(perr)?;
    Ok(())
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

/// Per pair the mean KL over the rows of each level of `variable`, then
/// mean and SD over pairs; `n_rows` is the rows per level (the same for
/// every pair). polars groups; the sums run here in a fixed order.
/// (Columns are not named `by`/`group`: both are SQL keywords.)
pub(super) fn conditional(
    lf: LazyFrame,
    level: Expr,
    variable: &str,
) -> Result<DataFrame, StageError> {
    let keys = ["size", "step", "level", "seed_a", "seed_b"];
    let per_pair = lf
        .with_column(level.alias("level"))
        .group_by(keys.map(col))
        .agg([
            col("kl")
                .sort_by([col("row")], SortMultipleOptions::default())
                .alias("kls"),
            len().alias("n_rows"),
        ])
        .sort(keys, SortMultipleOptions::default())
        .collect()
        .map_err(perr)?;
    let pair_kl = seq_means(&per_pair, "kls").map_err(perr)?;
    let strs = |c: &str| -> Result<Vec<String>, StageError> {
        Ok(per_pair
            .column(c)
            .map_err(perr)?
            .str()
            .map_err(perr)?
            .iter()
            .map(|v| v.unwrap_or_default().to_string())
            .collect())
    };
    let u32s = |c: &str| -> Result<Vec<u32>, StageError> {
        Ok(per_pair
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
    let (mut o_conv, mut o_sd, mut o_rows, mut o_pairs) = (vec![], vec![], vec![], vec![]);
    let mut i = 0;
    while i < pair_kl.len() {
        let same = |j: usize| size[j] == size[i] && step[j] == step[i] && lvl[j] == lvl[i];
        let mut j = i;
        while j < pair_kl.len() && same(j) {
            j += 1;
        }
        let (m, sd) = mean_sd(&pair_kl[i..j]);
        o_size.push(size[i].clone());
        o_step.push(step[i]);
        o_level.push(lvl[i].clone());
        o_conv.push(-m);
        o_sd.push(sd);
        o_rows.push(rows[i..j].iter().copied().max().unwrap_or(0));
        o_pairs.push((j - i) as u32);
        i = j;
    }
    let n = o_size.len();
    df!(
        "size" => o_size, "step" => o_step, "variable" => vec![variable; n], "level" => o_level,
        "conv" => o_conv, "sd_pairs" => o_sd, "n_rows" => o_rows, "n_pairs" => o_pairs
    )
    .map_err(perr)
}
