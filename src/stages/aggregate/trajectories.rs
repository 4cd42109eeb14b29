//! `trajectories.parquet`: how far each seed's checkpoints move, beside how
//! far the seeds part. From the drift stage's per-row tables: per
//! (reference, size, ref_size, step) and measure (KL, TV), the mean over
//! seeds of each seed's mean over rows, with the seed- and document-aware
//! interval (units are seeds: leaving one out drops its trajectory).

use std::collections::BTreeMap;
use std::path::PathBuf;

use arrow_array::{Float64Array, StringArray, UInt32Array};
use polars::prelude::*;

use super::frames::{interval_columns, perr, write};
use super::Clusters;
use crate::analysis::intervals::{Cells, Interval};
use crate::engine::JobCtx;
use crate::error::StageError;

/// (reference, size, ref_size, step, measure).
type Key = (String, String, String, u32, &'static str);

/// One key's sums: per seed its per-document sums, the rows per document,
/// and the seed whose rows are counted (the first seen: all share them).
struct Sums {
    per_seed: BTreeMap<usize, Vec<f64>>,
    rows: Vec<f64>,
    counter: usize,
}

pub(super) fn trajectories(
    ctx: &JobCtx,
    files: &[PathBuf],
    cl: &Clusters,
) -> Result<usize, StageError> {
    let mut acc: BTreeMap<Key, Sums> = BTreeMap::new();
    for f in files {
        ctx.check_cancel()?;
        let t = crate::table::read(f)?;
        let s = |c| crate::table::column::<StringArray>(&t, c, f);
        let u = |c| crate::table::column::<UInt32Array>(&t, c, f);
        let (reference, seed, size, ref_size) =
            (s("reference")?, s("seed")?, s("size")?, s("ref_size")?);
        let (step, row) = (u("step")?, u("row")?);
        let kl = crate::table::column::<Float64Array>(&t, "kl", f)?;
        let tv = crate::table::column::<Float64Array>(&t, "tv", f)?;
        // Rows come in runs of one comparison: resolve each run's key once.
        let mut i = 0;
        while i < t.num_rows() {
            let same = |j: usize| {
                reference.value(j) == reference.value(i)
                    && seed.value(j) == seed.value(i)
                    && size.value(j) == size.value(i)
                    && ref_size.value(j) == ref_size.value(i)
                    && step.value(j) == step.value(i)
            };
            let mut end = i;
            while end < t.num_rows() && same(end) {
                end += 1;
            }
            let sd = cl.seed(seed.value(i), f)?;
            for (m, x) in [("kl", kl), ("tv", tv)] {
                let key = (
                    reference.value(i).to_string(),
                    size.value(i).to_string(),
                    ref_size.value(i).to_string(),
                    step.value(i),
                    m,
                );
                let e = acc.entry(key).or_insert_with(|| Sums {
                    per_seed: BTreeMap::new(),
                    rows: vec![0.0; cl.n_docs],
                    counter: sd,
                });
                let counts = sd == e.counter;
                let sums = e.per_seed.entry(sd).or_insert_with(|| vec![0.0; cl.n_docs]);
                for j in i..end {
                    let d = cl.doc(row.value(j), f)?;
                    sums[d] += x.value(j);
                    if counts {
                        e.rows[d] += 1.0;
                    }
                }
            }
            i = end;
        }
    }
    let n = acc.len();
    let (mut o_ref, mut o_size, mut o_rsize, mut o_step, mut o_m) =
        (vec![], vec![], vec![], vec![], vec![]);
    let (mut o_iv, mut o_seeds, mut o_rows): (Vec<Interval>, Vec<u32>, Vec<u32>) =
        (vec![], vec![], vec![]);
    for ((r, s, rs, st, m), Sums { per_seed, rows, .. }) in acc {
        let units: Vec<(usize, Option<usize>)> = per_seed.keys().map(|&k| (k, None)).collect();
        let mut cells = Cells::new(cl.seeds.len(), units, cl.n_docs);
        for (c, sums) in cells.sums.iter_mut().zip(per_seed.values()) {
            c.clone_from(sums);
        }
        cells.rows = rows;
        o_iv.push(cells.jackknife().interval());
        o_seeds.push(per_seed.len() as u32);
        o_rows.push(cells.rows.iter().sum::<f64>() as u32);
        o_ref.push(r);
        o_size.push(s);
        o_rsize.push(rs);
        o_step.push(st);
        o_m.push(m);
    }
    let mut cols = vec![
        Column::new("reference".into(), o_ref),
        Column::new("size".into(), o_size),
        Column::new("ref_size".into(), o_rsize),
        Column::new("step".into(), o_step),
        Column::new("measure".into(), o_m),
        Column::new(
            "value".into(),
            o_iv.iter().map(|i| i.est).collect::<Vec<f64>>(),
        ),
    ];
    cols.extend(interval_columns(&o_iv, false));
    cols.push(Column::new("n_seeds".into(), o_seeds));
    cols.push(Column::new("n_rows".into(), o_rows));
    let mut df = DataFrame::new(n, cols).map_err(perr)?;
    write(ctx, "trajectories.parquet", &mut df)?;
    Ok(n)
}
