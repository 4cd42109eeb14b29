//! `aggregate`: the paper's curves as tidy tables a researcher plots
//! directly. polars joins the per-pair KL tables with the per-row
//! annotations and final surprisal and does the group-bys; the bootstrap,
//! which polars has no verb for, is plain Rust over each (size, step)'s
//! pair × row matrix.
//!
//! Estimators (PAPER.md): per ordered pair the mean KL over the rows (of a
//! subset S), then mean and SD over pairs; E[conv] = −that mean. The same
//! subsets condition the cross-entropy (per seed, then over seeds), and the
//! per-row KL is regressed per step on frequency, part of speech and size.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use polars::prelude::*;
use serde::Serialize;
use serde_json::json;

use crate::analysis::conditioning::{
    Levels, CONFIDENCE_BINS, POSITION_BINS, SURPRISAL_BINS, VARIABLES,
};
use crate::analysis::intervals::{Cells, Jackknife};
use crate::config::{CompareConfig, RegressionModel};
use crate::engine::{Instance, Job, JobCtx};
use crate::error::StageError;
use crate::stages::{annotate, corpus, dist, drift, kl, tokenizer, PlanCtx, Stage};
pub use frames::interval_columns;
use frames::{
    conditional, perr, scan, scan_columns, seq_means, write, CellKey, Measure, CONV, CROSS_ENTROPY,
};
pub use seeds::Z_APART;

mod battery;
pub mod compare;
mod conv;
mod factors;
mod frames;
mod measures;
mod regression;
mod seeds;
mod trajectories;

pub const NAME: &str = "aggregate";
pub const VERSION: u32 = 15;

/// A float column's bin label by upper bounds (the last bin open).
fn binned(column: &str, bins: &[(f64, &'static str)]) -> Expr {
    let mut e = lit(bins[bins.len() - 1].1);
    for &(hi, label) in bins[..bins.len() - 1].iter().rev() {
        e = when(col(column).lt(lit(hi))).then(lit(label)).otherwise(e);
    }
    e
}

/// The clusters of the intervals: the suite's seeds (by label, in suite
/// order) and each row's document.
pub(super) struct Clusters {
    seeds: Vec<String>,
    /// Document of row r at index r.
    doc: Vec<u32>,
    n_docs: usize,
}

impl Clusters {
    fn read(seeds: &[String], rows: &Path) -> Result<Clusters, StageError> {
        let t = crate::table::read(rows)?;
        let row = crate::table::column::<arrow_array::UInt32Array>(&t, "row", rows)?;
        let doc = crate::table::column::<arrow_array::UInt32Array>(&t, "doc", rows)?;
        let mut by_row = vec![0u32; t.num_rows()];
        for i in 0..t.num_rows() {
            let r = row.value(i) as usize;
            if r >= by_row.len() {
                by_row.resize(r + 1, 0);
            }
            by_row[r] = doc.value(i);
        }
        let n_docs = by_row.iter().max().map_or(0, |d| *d as usize + 1);
        Ok(Clusters {
            seeds: seeds.to_vec(),
            doc: by_row,
            n_docs,
        })
    }

    fn seed(&self, label: &str, file: &Path) -> Result<usize, StageError> {
        self.seeds.iter().position(|s| s == label).ok_or_else(|| {
            StageError::Other(format!(
                "{}: seed '{label}' is not a seed of the suite ({})",
                file.display(),
                self.seeds.join(", ")
            ))
        })
    }

    fn doc(&self, row: u32, file: &Path) -> Result<usize, StageError> {
        self.doc
            .get(row as usize)
            .map(|&d| d as usize)
            .ok_or_else(|| {
                StageError::Other(format!(
                    "{}: row {row} is not a row of the corpus",
                    file.display()
                ))
            })
    }
}

/// The `aggregate` stage: one instance over a suite of ≥ 2 seeds.
pub struct Aggregate;

impl Stage for Aggregate {
    const NAME: &'static str = NAME;
    const VERSION: u32 = VERSION;
    fn instances(&self, cx: &PlanCtx) -> Vec<Instance> {
        let Some(suite) = cx.seeds_to_compare() else {
            return vec![];
        };
        let a = &cx.config().aggregate;
        let mut deps = vec![
            (annotate::NAME, String::new()),
            (tokenizer::NAME, String::new()),
            (corpus::NAME, String::new()),
        ];
        let mut kls = Vec::new();
        for size in &suite.sizes {
            for &step in &suite.steps {
                kls.push(format!("{size}-step{step}"));
            }
        }
        let dists: Vec<String> = suite.checkpoints.iter().map(|c| c.label()).collect();
        deps.extend(kls.iter().map(|k| (kl::NAME, k.clone())));
        deps.extend(dists.iter().map(|d| (dist::NAME, d.clone())));
        let drifts: Vec<String> = cx
            .planned
            .iter()
            .filter(|i| i.stage == drift::NAME)
            .map(|i| i.label.clone())
            .collect();
        deps.extend(drifts.iter().map(|d| (drift::NAME, d.clone())));
        let job = AggregateJob {
            kls,
            dists,
            drifts,
            seeds: suite.seeds.clone(),
            final_step: suite.steps.iter().copied().max().unwrap_or(0),
            bootstrap: a.bootstrap,
            bootstrap_seed: a.bootstrap_seed,
            min_rows: a.min_rows,
            final_surprisal_seed: a.final_surprisal_seed.clone(),
            token_table_n: a.token_table_n,
            token_table_pooled: a.token_table_pooled,
            phase_tolerance: a.phase_tolerance,
            regression: a.regression,
            compares: cx.config().compare.clone(),
            measures: a
                .measures
                .iter()
                .filter_map(|n| crate::analysis::measures::find(n))
                .collect(),
            variables: a.variables.clone(),
            factors: suite.factors.clone().unwrap_or_default(),
        };
        vec![self.instance("", job).deps(deps)]
    }
}

#[derive(Serialize)]
struct AggregateJob {
    /// unkeyed: upstream entries are keyed by their output hashes.
    #[serde(skip)]
    kls: Vec<String>,
    #[serde(skip)]
    dists: Vec<String>,
    #[serde(skip)]
    drifts: Vec<String>,
    seeds: Vec<String>,
    final_step: usize,
    bootstrap: usize,
    bootstrap_seed: u64,
    min_rows: usize,
    final_surprisal_seed: String,
    token_table_n: usize,
    token_table_pooled: bool,
    phase_tolerance: f64,
    regression: RegressionModel,
    compares: Vec<CompareConfig>,
    /// The selected measures' whole declarations (a changed definition or
    /// kernel re-keys).
    measures: Vec<&'static crate::analysis::measures::Measure>,
    variables: Vec<String>,
    /// What each seed's run varied (`seed_factors.parquet`); absent from
    /// the key when there are none.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    factors: BTreeMap<String, crate::config::Factors>,
}

impl Job for AggregateJob {
    fn run(&self, ctx: &JobCtx) -> Result<serde_json::Value, StageError> {
        let kl_files: Vec<PathBuf> = self
            .kls
            .iter()
            .map(|l| ctx.upstream(kl::NAME, l).map(|d| d.join(kl::FILE)))
            .collect::<Result<_, _>>()?;
        let dist_files: Vec<PathBuf> = self
            .dists
            .iter()
            .map(|l| ctx.upstream(dist::NAME, l).map(|d| d.join(dist::FILE)))
            .collect::<Result<_, _>>()?;
        let ann = ctx.upstream(annotate::NAME, "")?.join(annotate::FILE);
        let cl = Clusters::read(
            &self.seeds,
            &ctx.upstream(corpus::NAME, "")?.join("rows.parquet"),
        )?;
        let mut llama = battery::Table::default();
        let seed_rows = battery::read_dists(&dist_files)?;
        let steps = self.conv(ctx, &kl_files, &cl, &seed_rows, &mut llama)?;
        llama.write(ctx)?;
        self.phases(ctx, &steps, &cl)?;
        let flagged = self.seeds(ctx, &steps, &cl)?;
        self.seed_factors(ctx, &steps, &cl)?;
        // The per-row statistics, not the top-k lists (inspection only).
        let dists = scan_columns(
            &dist_files,
            &[
                "size",
                "seed",
                "step",
                "row",
                "target_logprob",
                "kl_uniform",
                "kl_unigram",
                "entropy",
            ],
        )?;
        self.baselines(ctx, &dists, &cl)?;
        // Collected once (per size and row: small), so that the per-row
        // statistics of every checkpoint can go after the cross-entropy.
        let surprisal = self
            .surprisal(dists.clone())
            .collect()
            .map_err(perr)?
            .lazy();
        // Each row's target position in its window, binned, beside its tags.
        let rows = ctx.upstream(corpus::NAME, "")?.join("rows.parquet");
        let positions = scan_columns(&[rows], &["row", "context_start"])?
            .with_column(
                (col("row").cast(DataType::Float64) - col("context_start").cast(DataType::Float64)
                    + lit(1.0))
                .alias("position"),
            )
            .select([
                col("row"),
                binned("position", &POSITION_BINS).alias("position_bin"),
            ]);
        // `label` exists only with annotate.labels: otherwise all null.
        let mut annotations = scan(std::slice::from_ref(&ann))?;
        if crate::table::schema(&ann)?
            .schema
            .field_with_name("label")
            .is_err()
        {
            annotations = annotations.with_column(lit(NULL).cast(DataType::String).alias("label"));
        }
        let annotations = annotations.join(
            positions,
            [col("row")],
            [col("row")],
            JoinArgs::new(JoinType::Left),
        );
        let (conv_by, levels) = self.by_variables(
            ctx,
            "conv_by.parquet",
            &CONV,
            kl_files.iter().map(|f| {
                scan_columns(
                    std::slice::from_ref(f),
                    &["size", "step", "seed_a", "seed_b", "row", "kl"],
                )
            }),
            annotations.clone(),
            surprisal.clone(),
            &cl,
        )?;
        let per_seed = dists.select([
            col("size"),
            col("step"),
            col("seed"),
            col("row"),
            (lit(0.0) - col("target_logprob").cast(DataType::Float64)).alias("surprisal"),
        ]);
        let (ce_by, _) = self.by_variables(
            ctx,
            "ce_by.parquet",
            &CROSS_ENTROPY,
            // One (size, step) at a time, as conv_by.
            steps.iter().map(|s| {
                Ok(per_seed.clone().filter(
                    col("size")
                        .eq(lit(s.size.clone()))
                        .and(col("step").eq(lit(s.step))),
                ))
            }),
            annotations.clone(),
            surprisal.clone(),
            &cl,
        )?;
        // Every declared measure, unconditional and by each variable.
        let group_files: Vec<PathBuf> = self
            .kls
            .iter()
            .map(|l| ctx.upstream(kl::NAME, l).map(|d| d.join(kl::GROUP_FILE)))
            .collect::<Result<_, _>>()?;
        let files: Vec<measures::StepFiles> = kl_files
            .iter()
            .zip(&group_files)
            .map(|(kl, group)| measures::StepFiles { kl, group })
            .collect();
        let vars: Vec<&crate::analysis::conditioning::Variable> = VARIABLES
            .iter()
            .filter(|v| self.variables.iter().any(|n| n == v.name))
            .collect();
        let (measure_rows, measure_by_rows) = measures::measures(
            ctx,
            &files,
            &self.measures,
            &vars,
            surprisal.clone().join(
                annotations.clone(),
                [col("row")],
                [col("row")],
                JoinArgs::new(JoinType::Left),
            ),
            &cl,
            &seed_rows,
            self.min_rows,
            self.phase_tolerance,
        )?;
        let drift_files: Vec<PathBuf> = self
            .drifts
            .iter()
            .map(|l| ctx.upstream(drift::NAME, l).map(|d| d.join(drift::FILE)))
            .collect::<Result<_, _>>()?;
        let trajectory_rows = if drift_files.is_empty() {
            0
        } else {
            trajectories::trajectories(ctx, &drift_files, &cl)?
        };
        let regression = self.regression(ctx, &steps, &ann, &cl)?;
        let compare = self.compare(ctx, &steps, &levels)?;
        self.final_surprisal(ctx, surprisal)?;
        // Only the last step's kl tables are read for the token tables
        // (`steps` is per kl file, in order).
        let final_files: Vec<PathBuf> = kl_files
            .iter()
            .zip(&steps)
            .filter(|(_, s)| s.step as usize == self.final_step)
            .map(|(f, _)| f.clone())
            .collect();
        let token_table = self.token_table(ctx, &final_files, annotations.clone())?;
        if self.token_table_pooled {
            self.token_table_pooled(ctx, &final_files, annotations)?;
        }
        Ok(json!({
            "conv_rows": steps.len(),
            "compare_rows": compare,
            "flagged_seed_steps": flagged,
            "conv_by_rows": conv_by.height(),
            "measures_rows": measure_rows,
            "measures_by_rows": measure_by_rows,
            "trajectory_rows": trajectory_rows,
            "ce_by_rows": ce_by.height(),
            "regression_rows": regression,
            "token_table_rows": token_table.height(),
        }))
    }
}

/// One function per output table, each writing its file.
impl AggregateJob {
    /// `baselines.parquet`: per (size, step, seed) KL to the uniform and
    /// unigram distributions and cross-entropy.
    ///
    /// `baselines_mean.parquet`: per (size, step) and measure, the mean over
    /// seeds with its seed- and document-aware interval.
    fn baselines(&self, ctx: &JobCtx, dists: &LazyFrame, cl: &Clusters) -> Result<(), StageError> {
        let mut base = dists
            .clone()
            .group_by([col("size"), col("step"), col("seed")])
            .agg([
                col("kl_uniform")
                    .cast(DataType::Float64)
                    .mean()
                    .alias("kl_uniform"),
                col("kl_unigram")
                    .cast(DataType::Float64)
                    .mean()
                    .alias("kl_unigram"),
                (lit(0.0) - col("target_logprob").cast(DataType::Float64))
                    .mean()
                    .alias("cross_entropy"),
                len().alias("n_rows"),
            ])
            .sort(["size", "step", "seed"], SortMultipleOptions::default())
            .collect()
            .map_err(perr)?;
        write(ctx, "baselines.parquet", &mut base)?;
        const MEASURES: [&str; 3] = ["kl_uniform", "kl_unigram", "cross_entropy"];
        let lists = dists
            .clone()
            .with_column(
                (lit(0.0) - col("target_logprob").cast(DataType::Float64)).alias("cross_entropy"),
            )
            .group_by([col("size"), col("step"), col("seed")])
            .agg([
                col("row").sort(SortOptions::default()).alias("rows"),
                col("kl_uniform")
                    .cast(DataType::Float64)
                    .sort_by([col("row")], SortMultipleOptions::default()),
                col("kl_unigram")
                    .cast(DataType::Float64)
                    .sort_by([col("row")], SortMultipleOptions::default()),
                col("cross_entropy").sort_by([col("row")], SortMultipleOptions::default()),
            ])
            .sort(["size", "step", "seed"], SortMultipleOptions::default())
            .collect()
            .map_err(perr)?;
        let what = Path::new("baselines");
        let size = lists
            .column("size")
            .map_err(perr)?
            .str()
            .map_err(perr)?
            .clone();
        let step = lists
            .column("step")
            .map_err(perr)?
            .u32()
            .map_err(perr)?
            .clone();
        let seed = lists
            .column("seed")
            .map_err(perr)?
            .str()
            .map_err(perr)?
            .clone();
        // (size, step) → measure → cells over seeds.
        let mut cells: BTreeMap<(String, u32), Vec<Cells>> = BTreeMap::new();
        let rows = lists
            .column("rows")
            .map_err(perr)?
            .list()
            .map_err(perr)?
            .clone();
        let vals: Vec<_> = MEASURES
            .iter()
            .map(|m| Ok(lists.column(m).map_err(perr)?.list().map_err(perr)?.clone()))
            .collect::<Result<_, StageError>>()?;
        for i in 0..lists.height() {
            let key = (
                size.get(i).unwrap_or_default().to_string(),
                step.get(i).unwrap_or_default(),
            );
            let s = cl.seed(seed.get(i).unwrap_or_default(), what)?;
            let r = rows.get_as_series(i).unwrap_or_default();
            let docs: Vec<usize> = r
                .u32()
                .map_err(perr)?
                .into_no_null_iter()
                .map(|row| cl.doc(row, what))
                .collect::<Result<_, _>>()?;
            let entry = cells.entry(key).or_insert_with(|| {
                (0..MEASURES.len())
                    .map(|_| Cells::new(cl.seeds.len(), vec![], cl.n_docs))
                    .collect()
            });
            for (c, v) in entry.iter_mut().zip(&vals) {
                let v = v.get_as_series(i).unwrap_or_default();
                let mut sums = vec![0.0; cl.n_docs];
                let mut n = vec![0.0; cl.n_docs];
                for (x, &d) in v.f64().map_err(perr)?.into_no_null_iter().zip(&docs) {
                    sums[d] += x;
                    n[d] += 1.0;
                }
                c.units.push((s, None));
                c.sums.push(sums);
                c.rows = n;
            }
        }
        let (mut o_size, mut o_step, mut o_measure, mut o_iv, mut o_n) =
            (vec![], vec![], vec![], vec![], vec![]);
        for ((sz, st), cs) in cells {
            for (c, m) in cs.iter().zip(MEASURES) {
                o_size.push(sz.clone());
                o_step.push(st);
                o_measure.push(m);
                o_iv.push(c.jackknife().interval());
                o_n.push(c.units.len() as u32);
            }
        }
        let n = o_size.len();
        let mut cols = vec![
            Column::new("size".into(), o_size),
            Column::new("step".into(), o_step),
            Column::new("measure".into(), o_measure),
            Column::new(
                "mean".into(),
                o_iv.iter().map(|i| i.est).collect::<Vec<f64>>(),
            ),
        ];
        cols.extend(interval_columns(&o_iv, false));
        cols.push(Column::new("n_seeds".into(), o_n));
        let mut mean = DataFrame::new(n, cols).map_err(perr)?;
        write(ctx, "baselines_mean.parquet", &mut mean)
    }

    /// Final surprisal per (size, row), mean over seeds or one seed, binned;
    /// with the final entropy (mean over every seed), binned as confidence.
    fn surprisal(&self, dists: LazyFrame) -> LazyFrame {
        let last = dists.filter(col("step").eq(lit(self.final_step as u32)));
        let entropy = last
            .clone()
            .group_by([col("size"), col("row")])
            .agg([col("entropy")
                .cast(DataType::Float64)
                .mean()
                .alias("final_entropy")])
            .with_column(binned("final_entropy", &CONFIDENCE_BINS).alias("confidence_bin"));
        let last = if self.final_surprisal_seed == "mean" {
            last
        } else {
            last.filter(col("seed").eq(lit(self.final_surprisal_seed.clone())))
        };
        let bin = binned("final_surprisal", &SURPRISAL_BINS);
        last.group_by([col("size"), col("row")])
            .agg([(lit(0.0) - col("target_logprob").cast(DataType::Float64))
                .mean()
                .alias("final_surprisal")])
            .with_column(bin.alias("surprisal_bin"))
            .join(
                entropy,
                [col("size"), col("row")],
                [col("size"), col("row")],
                JoinArgs::new(JoinType::Left),
            )
    }

    /// `conv_by.parquet` (per pair KL) and `ce_by.parquet` (per seed
    /// surprisal): every per-row value joined with the row's annotations and
    /// final surprisal, grouped by each conditioning variable.
    #[allow(clippy::too_many_arguments)]
    fn by_variables(
        &self,
        ctx: &JobCtx,
        file: &str,
        m: &Measure,
        chunks: impl Iterator<Item = Result<LazyFrame, StageError>>,
        annotations: LazyFrame,
        surprisal: LazyFrame,
        cl: &Clusters,
    ) -> Result<(DataFrame, Vec<(CellKey, Jackknife)>), StageError> {
        let mut parts = Vec::new();
        let mut jks = Vec::new();
        // One chunk (a step's table) at a time: every cell is within one
        // (size, step), and the whole suite's pairs × rows joined with the
        // annotations at once held gigabytes.
        for values in chunks {
            let joined = values?
                .join(
                    annotations.clone(),
                    [col("row")],
                    [col("row")],
                    JoinArgs::new(JoinType::Left),
                )
                .join(
                    surprisal.clone(),
                    [col("size"), col("row")],
                    [col("size"), col("row")],
                    JoinArgs::new(JoinType::Left),
                );
            let mut add = |(df, j): (DataFrame, Vec<(CellKey, Jackknife)>)| {
                parts.push(df.lazy());
                jks.extend(j);
            };
            for v in VARIABLES {
                ctx.check_cancel()?;
                match v.levels {
                    Levels::Column => add(conditional(
                        joined.clone().filter(col(v.name).is_not_null()),
                        col(v.name).cast(DataType::String),
                        v.name,
                        m,
                        cl,
                    )?),
                    Levels::Flags(flags) => {
                        for &(flag, label) in flags {
                            add(conditional(
                                joined.clone().filter(col(flag).eq(lit(true))),
                                lit(label),
                                v.name,
                                m,
                                cl,
                            )?);
                        }
                    }
                }
            }
        }
        let mut table = concat(parts, UnionArgs::default())
            .map_err(perr)?
            .with_column(
                col("n_rows")
                    .lt(lit(self.min_rows as u32))
                    .alias("few_rows"),
            )
            .sort(
                ["variable", "size", "level", "step"],
                SortMultipleOptions::default(),
            )
            .collect()
            .map_err(perr)?;
        write(ctx, file, &mut table)?;
        Ok((table, jks))
    }

    /// `final_surprisal.parquet`: per row, for plotting and joins.
    fn final_surprisal(&self, ctx: &JobCtx, surprisal: LazyFrame) -> Result<(), StageError> {
        let mut s = surprisal
            .sort(["size", "row"], SortMultipleOptions::default())
            .collect()
            .map_err(perr)?;
        write(ctx, "final_surprisal.parquet", &mut s)?;
        Ok(())
    }

    /// `token_table.parquet`: at the final step, mean KL per target token;
    /// the lowest, middle and highest of each size.
    fn token_table(
        &self,
        ctx: &JobCtx,
        final_files: &[PathBuf],
        annotations: LazyFrame,
    ) -> Result<DataFrame, StageError> {
        let rows = scan(final_files)?
            .filter(col("step").eq(lit(self.final_step as u32)))
            .join(
                annotations.select([col("row"), col("target_id")]),
                [col("row")],
                [col("row")],
                JoinArgs::new(JoinType::Left),
            );
        let per_token = token_means(ctx, rows, &["size"])?;
        let mut tables = Vec::new();
        let sizes_all = per_token
            .column("size")
            .map_err(perr)?
            .unique_stable()
            .map_err(perr)?;
        let sizes_all: Vec<String> = sizes_all
            .str()
            .map_err(perr)?
            .iter()
            .flatten()
            .map(String::from)
            .collect();
        for size in sizes_all.iter().map(String::as_str) {
            let t = per_token
                .clone()
                .lazy()
                .filter(col("size").eq(lit(size)))
                .collect()
                .map_err(perr)?;
            let n = t.height();
            let k = self.token_table_n.min(n / 3).max(1).min(n);
            for (label, offset) in [("lowest", 0), ("middle", (n - k) / 2), ("highest", n - k)] {
                tables.push(
                    t.slice(offset as i64, k)
                        .lazy()
                        .with_column(lit(label).alias("position")),
                );
            }
        }
        let mut token_table = concat(tables, UnionArgs::default())
            .map_err(perr)?
            .collect()
            .map_err(perr)?;
        write(ctx, "token_table.parquet", &mut token_table)?;
        Ok(token_table)
    }

    /// `token_table_pooled.parquet`: the table as the authors built it — at
    /// the final step, every (size, pair, row) whose target has a tag (UNK
    /// and untagged left out) pooled over sizes, mean KL per target token;
    /// the `token_table_n` lowest, middle (around n/2, as their slice
    /// `[n/2 − k/2, n/2 + k/2)`) and highest.
    fn token_table_pooled(
        &self,
        ctx: &JobCtx,
        final_files: &[PathBuf],
        annotations: LazyFrame,
    ) -> Result<(), StageError> {
        let rows = scan(final_files)?
            .filter(col("step").eq(lit(self.final_step as u32)))
            .join(
                annotations.select([col("row"), col("target_id"), col("xpos"), col("upos")]),
                [col("row")],
                [col("row")],
                JoinArgs::new(JoinType::Left),
            )
            .filter(
                (col("xpos")
                    .is_not_null()
                    .and(col("xpos").neq(lit(crate::text::pos::UNK))))
                .or(col("upos")
                    .is_not_null()
                    .and(col("upos").neq(lit(crate::text::pos::UNK)))),
            );
        let t = token_means(ctx, rows, &[])?;
        let n = t.height();
        let k = self.token_table_n.min(n);
        let mid = (n / 2).saturating_sub(k / 2).min(n - k);
        let parts = [("lowest", 0), ("middle", mid), ("highest", n - k)]
            .into_iter()
            .map(|(label, offset)| {
                t.slice(offset as i64, k)
                    .lazy()
                    .with_column(lit(label).alias("position"))
            })
            .collect::<Vec<_>>();
        let mut table = concat(parts, UnionArgs::default())
            .map_err(perr)?
            .collect()
            .map_err(perr)?;
        write(ctx, "token_table_pooled.parquet", &mut table)
    }
}

/// Mean KL per target token (per `keys` group, e.g. size) of the rows given,
/// summed in a fixed order (size, row, pair) for reproducible bits; with the
/// token's text; sorted by `keys`, mean KL, token id.
fn token_means(ctx: &JobCtx, rows: LazyFrame, keys: &[&str]) -> Result<DataFrame, StageError> {
    let vocab = scan(&[ctx.upstream(tokenizer::NAME, "")?.join("vocab.parquet")])?
        .select([col("token_id"), col("text")]);
    let mut group: Vec<Expr> = keys.iter().map(|k| col(*k)).collect();
    group.push(col("target_id"));
    let per_token = rows
        .group_by(group.clone())
        .agg([
            col("kl")
                .sort_by(
                    [col("size"), col("row"), col("seed_a"), col("seed_b")],
                    SortMultipleOptions::default(),
                )
                .alias("kls"),
            len().alias("n"),
        ])
        .collect()
        .map_err(perr)?;
    let mean_kl = seq_means(&per_token, "kls").map_err(perr)?;
    let mut select = group;
    select.extend([col("mean_kl"), col("n")]);
    let mut order: Vec<&str> = keys.to_vec();
    order.extend(["mean_kl", "target_id"]);
    per_token
        .lazy()
        .with_column(lit(Series::new("mean_kl".into(), mean_kl)).alias("mean_kl"))
        .select(select)
        .join(
            vocab,
            [col("target_id")],
            [col("token_id")],
            JoinArgs::new(JoinType::Left),
        )
        .sort(order, SortMultipleOptions::default())
        .collect()
        .map_err(perr)
}
