//! `conv.parquet` and `phases.parquet`: unconditional E[conv] per (size,
//! step) with its seed- and document-aware interval, and the four phases of
//! each size's curve with where their boundaries fall across replicate
//! draws of seeds and documents.

use std::collections::BTreeMap;
use std::path::PathBuf;

use polars::prelude::*;

use super::battery::{SeedRows, Table as BatteryTable};
use super::frames::{interval_columns, perr, scan, strings, write};
use super::{AggregateJob, Clusters};
use crate::analysis::intervals::{draws, Cells, Jackknife};
use crate::analysis::phases;
use crate::analysis::stats::{conv_stats, quantile, SPREAD_QUANTILES};
use crate::engine::JobCtx;
use crate::error::StageError;

/// One (size, step): its KL cells, their jackknife (of E[KL]), and per row
/// the KL averaged over ordered pairs, also without each seed (the
/// regression's response and its seed replicates).
pub(super) struct StepKl {
    pub size: String,
    pub step: u32,
    pub cells: Cells,
    pub kl: Jackknife,
    pub rows: Vec<u32>,
    /// The document of each of `rows`.
    pub docs: Vec<usize>,
    pub y: Vec<f64>,
    pub y_without_seed: Vec<Vec<f64>>,
}

/// Read one (size, step)'s KL table into a `StepKl`.
fn step_kl(f: &PathBuf, cl: &Clusters) -> Result<(StepKl, Vec<Vec<f64>>), StageError> {
    let df = scan(std::slice::from_ref(f))?
        .sort(["seed_a", "seed_b", "row"], SortMultipleOptions::default())
        .collect()
        .map_err(perr)?;
    let size = strings(&df.slice(0, 1), "size")?.pop().unwrap_or_default();
    let step = df
        .column("step")
        .map_err(perr)?
        .u32()
        .map_err(perr)?
        .get(0)
        .unwrap_or_default();
    let klv: Vec<f64> = df
        .column("kl")
        .map_err(perr)?
        .f64()
        .map_err(perr)?
        .into_no_null_iter()
        .collect();
    let n_rows = df.column("row").map_err(perr)?.n_unique().map_err(perr)?;
    let matrix: Vec<Vec<f64>> = klv.chunks(n_rows.max(1)).map(|c| c.to_vec()).collect();
    let rows: Vec<u32> = df
        .column("row")
        .map_err(perr)?
        .u32()
        .map_err(perr)?
        .into_no_null_iter()
        .take(n_rows)
        .collect();
    let (sa, sb) = (strings(&df, "seed_a")?, strings(&df, "seed_b")?);
    let units = (0..matrix.len())
        .map(|u| {
            let i = u * n_rows;
            Ok((cl.seed(&sa[i], f)?, Some(cl.seed(&sb[i], f)?)))
        })
        .collect::<Result<Vec<_>, StageError>>()?;
    let docs: Vec<usize> = rows
        .iter()
        .map(|&r| cl.doc(r, f))
        .collect::<Result<_, _>>()?;
    let mut cells = Cells::new(cl.seeds.len(), units.clone(), cl.n_docs);
    for (u, m) in matrix.iter().enumerate() {
        for (x, &d) in m.iter().zip(&docs) {
            cells.sums[u][d] += x;
        }
    }
    for &d in &docs {
        cells.rows[d] += 1.0;
    }
    let row_mean = |keep: &[usize]| -> Vec<f64> {
        if keep.is_empty() {
            return vec![f64::NAN; n_rows];
        }
        (0..n_rows)
            .map(|r| keep.iter().map(|&u| matrix[u][r]).sum::<f64>() / keep.len() as f64)
            .collect()
    };
    let all: Vec<usize> = (0..units.len()).collect();
    let y = row_mean(&all);
    let y_without_seed = (0..cl.seeds.len())
        .map(|k| {
            let keep: Vec<usize> = all
                .iter()
                .copied()
                .filter(|&u| units[u].0 != k && units[u].1 != Some(k))
                .collect();
            row_mean(&keep)
        })
        .collect();
    let kl = cells.jackknife();
    Ok((
        StepKl {
            size,
            step,
            cells,
            kl,
            rows,
            docs,
            y,
            y_without_seed,
        },
        matrix,
    ))
}

impl AggregateJob {
    /// `conv.parquet`: E[conv] with its spreads, interval and quantiles, one
    /// (size, step) at a time.
    ///
    /// Also fills llama.cpp's battery per ordered pair (`battery`), while
    /// each step's pair × row matrix is in memory.
    pub(super) fn conv(
        &self,
        ctx: &JobCtx,
        kl_files: &[PathBuf],
        cl: &Clusters,
        dists: &BTreeMap<(String, u32, String), SeedRows>,
        battery: &mut BatteryTable,
    ) -> Result<Vec<StepKl>, StageError> {
        let mut stats: Vec<[f64; 8]> = Vec::new();
        let mut out = Vec::new();
        let mut ivs = Vec::new();
        let mut n_pairs = Vec::new();
        for f in kl_files {
            ctx.check_cancel()?;
            let (s, matrix) = step_kl(f, cl)?;
            let pairs: Vec<(String, String)> = s
                .cells
                .units
                .iter()
                .map(|&(a, b)| (cl.seeds[a].clone(), cl.seeds[b.unwrap_or(a)].clone()))
                .collect();
            battery.add(&s.size, s.step, &pairs, &matrix, &s.rows, dists, f)?;
            battery.add_ensemble(
                &s.size, s.step, &cl.seeds, &s.rows, &s.docs, cl.n_docs, dists,
            );
            stats.push(conv_stats(&matrix));
            ivs.push(s.kl.scaled(-1.0).interval());
            n_pairs.push(matrix.len() as u32);
            out.push(s);
        }
        let f = |i: usize| stats.iter().map(|s| s[i]).collect::<Vec<f64>>();
        let mut cols = vec![
            Column::new(
                "size".into(),
                out.iter().map(|s| s.size.clone()).collect::<Vec<_>>(),
            ),
            Column::new(
                "step".into(),
                out.iter().map(|s| s.step).collect::<Vec<_>>(),
            ),
            Column::new("conv".into(), f(0)),
            Column::new("sd_pairs".into(), f(1)),
            Column::new("sd_rows".into(), f(2)),
        ];
        cols.extend(interval_columns(&ivs, false));
        cols.extend([
            Column::new(
                "n_rows".into(),
                out.iter().map(|s| s.rows.len() as u32).collect::<Vec<_>>(),
            ),
            Column::new("n_pairs".into(), n_pairs),
            Column::new(
                "n_docs".into(),
                out.iter()
                    .map(|s| s.cells.rows.iter().filter(|&&r| r > 0.0).count() as u32)
                    .collect::<Vec<_>>(),
            ),
        ]);
        for (i, (_, name)) in SPREAD_QUANTILES.iter().enumerate() {
            cols.push(Column::new((*name).into(), f(3 + i)));
        }
        let mut conv = DataFrame::new(out.len(), cols).map_err(perr)?;
        write(ctx, "conv.parquet", &mut conv)?;
        self.replicates(ctx, &out, cl)?;
        Ok(out)
    }

    /// `conv_replicates.parquet`: E[conv] of each (size, step) without each
    /// seed and without each document (NaN where undefined), so intervals
    /// and comparisons can be rebuilt outside the stage (`seedconv compare`).
    fn replicates(&self, ctx: &JobCtx, steps: &[StepKl], cl: &Clusters) -> Result<(), StageError> {
        let (mut size, mut step, mut source, mut unit, mut value) =
            (vec![], vec![], vec![], vec![], vec![]);
        for s in steps {
            let c = s.kl.scaled(-1.0);
            let units = cl
                .seeds
                .iter()
                .map(|l| ("seed", l.clone()))
                .zip(&c.seeds)
                .chain((0..cl.n_docs).map(|d| ("doc", d.to_string())).zip(&c.docs));
            for ((src, u), v) in units {
                size.push(s.size.clone());
                step.push(s.step);
                source.push(src);
                unit.push(u);
                value.push(*v);
            }
        }
        let mut t = df!(
            "size" => size, "step" => step, "source" => source, "unit" => unit, "conv" => value
        )
        .map_err(perr)?;
        write(ctx, "conv_replicates.parquet", &mut t)
    }

    /// `phases.parquet`: the four phases of each size's E[KL] curve; with
    /// `bootstrap` replicate draws of seeds and documents (the same draws
    /// for every size and step), the share of replicates in which a phase is
    /// present and the 2.5–97.5% range of its start and end steps.
    /// `phase_steps.parquet`: the whole distribution of each boundary.
    pub(super) fn phases(
        &self,
        ctx: &JobCtx,
        steps: &[StepKl],
        cl: &Clusters,
    ) -> Result<(), StageError> {
        let mut by_size: BTreeMap<&str, Vec<&StepKl>> = BTreeMap::new();
        for s in steps {
            by_size.entry(&s.size).or_default().push(s);
        }
        let reps = draws(
            cl.seeds.len(),
            cl.n_docs,
            self.bootstrap,
            self.bootstrap_seed,
        );
        let mut t = PhaseTable::default();
        for (size, mut pts) in by_size {
            ctx.check_cancel()?;
            pts.sort_by_key(|s| s.step);
            let curve: Vec<(u64, f64)> = pts.iter().map(|s| (s.step as u64, s.kl.est)).collect();
            let found = phases::detect(&curve, self.phase_tolerance);
            // phase name → replicate spans (None: absent in that replicate).
            let mut spans: BTreeMap<&str, Vec<Option<(u64, u64)>>> = BTreeMap::new();
            for d in &reps {
                let c: Vec<(u64, f64)> = pts
                    .iter()
                    .map(|s| (s.step as u64, s.cells.replicate(d)))
                    .collect();
                if c.iter().any(|p| !p.1.is_finite()) {
                    continue;
                }
                for ph in phases::detect(&c, self.phase_tolerance) {
                    spans.entry(ph.name).or_default().push(ph.span);
                }
            }
            for ph in found {
                t.push(size, &ph, spans.get(ph.name).map_or(&[][..], |v| v));
            }
        }
        let mut phases = t.phases()?;
        write(ctx, "phases.parquet", &mut phases)?;
        let mut steps = t.steps()?;
        write(ctx, "phase_steps.parquet", &mut steps)
    }
}

#[derive(Default)]
struct PhaseTable {
    size: Vec<String>,
    phase: Vec<&'static str>,
    start: Vec<Option<u32>>,
    end: Vec<Option<u32>>,
    present: Vec<bool>,
    note: Vec<String>,
    n_reps: Vec<u32>,
    present_share: Vec<f64>,
    bounds: [Vec<Option<u32>>; 4],
    same: [Vec<f64>; 2],
    /// phase_steps rows: size, phase, edge, step, share
    dist: Vec<(String, &'static str, &'static str, u32, f64)>,
}

impl PhaseTable {
    fn push(&mut self, size: &str, ph: &phases::Phase, reps: &[Option<(u64, u64)>]) {
        self.size.push(size.into());
        self.phase.push(ph.name);
        self.start.push(ph.span.map(|s| s.0 as u32));
        self.end.push(ph.span.map(|s| s.1 as u32));
        self.present.push(ph.span.is_some());
        self.note.push(ph.note.clone());
        let n = reps.len();
        self.n_reps.push(n as u32);
        let present: Vec<(u64, u64)> = reps.iter().flatten().copied().collect();
        self.present_share.push(if n == 0 {
            f64::NAN
        } else {
            present.len() as f64 / n as f64
        });
        for (e, (edge, pick)) in [("start", 0usize), ("end", 1)].into_iter().enumerate() {
            let mut v: Vec<f64> = present
                .iter()
                .map(|s| if pick == 0 { s.0 } else { s.1 } as f64)
                .collect();
            v.sort_by(f64::total_cmp);
            // Steps are discrete: the 2.5% and 97.5% order statistics.
            let q = |p: f64| (!v.is_empty()).then(|| quantile(&v, p).round() as u32);
            let q = |p: f64| {
                q(p).map(|x| {
                    // Snap to an observed step (interpolation may fall between).
                    v.iter()
                        .map(|&s| s as u32)
                        .min_by_key(|&s| s.abs_diff(x))
                        .unwrap_or(x)
                })
            };
            self.bounds[2 * e].push(q(0.025));
            self.bounds[2 * e + 1].push(q(0.975));
            let at = if pick == 0 {
                ph.span.map(|s| s.0)
            } else {
                ph.span.map(|s| s.1)
            };
            self.same[e].push(match at {
                Some(a) if n > 0 => v.iter().filter(|&&s| s as u64 == a).count() as f64 / n as f64,
                _ => f64::NAN,
            });
            let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
            for &s in &v {
                *counts.entry(s as u32).or_default() += 1;
            }
            for (s, c) in counts {
                self.dist
                    .push((size.into(), ph.name, edge, s, c as f64 / n as f64));
            }
        }
    }

    fn phases(&self) -> Result<DataFrame, StageError> {
        df!(
            "size" => self.size.clone(), "phase" => self.phase.clone(),
            "start_step" => self.start.clone(), "end_step" => self.end.clone(),
            "present" => self.present.clone(), "note" => self.note.clone(),
            "n_replicates" => self.n_reps.clone(), "present_share" => self.present_share.clone(),
            "start_low" => self.bounds[0].clone(), "start_high" => self.bounds[1].clone(),
            "start_share" => self.same[0].clone(),
            "end_low" => self.bounds[2].clone(), "end_high" => self.bounds[3].clone(),
            "end_share" => self.same[1].clone()
        )
        .map_err(perr)
    }

    fn steps(&self) -> Result<DataFrame, StageError> {
        let d = &self.dist;
        df!(
            "size" => d.iter().map(|r| r.0.clone()).collect::<Vec<_>>(),
            "phase" => d.iter().map(|r| r.1).collect::<Vec<_>>(),
            "edge" => d.iter().map(|r| r.2).collect::<Vec<_>>(),
            "step" => d.iter().map(|r| r.3).collect::<Vec<_>>(),
            "share" => d.iter().map(|r| r.4).collect::<Vec<_>>()
        )
        .map_err(perr)
    }
}
