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

use crate::analysis::conditioning::{Levels, SURPRISAL_BINS, VARIABLES};
use crate::analysis::stats::{conv_stats, SPREAD_QUANTILES};
use crate::engine::{Instance, Job, JobCtx};
use crate::error::StageError;
use crate::stages::{annotate, dist, kl, tokenizer, PlanCtx, Stage};
use frames::{
    conditional, perr, scan, scan_columns, seq_means, write, Measure, CONV, CROSS_ENTROPY,
};

mod frames;

pub const NAME: &str = "aggregate";
pub const VERSION: u32 = 6;

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
        let job = AggregateJob {
            kls,
            dists,
            final_step: suite.steps.iter().copied().max().unwrap_or(0),
            bootstrap: a.bootstrap,
            bootstrap_seed: a.bootstrap_seed,
            min_rows: a.min_rows,
            final_surprisal_seed: a.final_surprisal_seed.clone(),
            token_table_n: a.token_table_n,
            token_table_pooled: a.token_table_pooled,
            phase_tolerance: a.phase_tolerance,
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
    final_step: usize,
    bootstrap: usize,
    bootstrap_seed: u64,
    min_rows: usize,
    final_surprisal_seed: String,
    token_table_n: usize,
    token_table_pooled: bool,
    phase_tolerance: f64,
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
        let (conv, curves, row_kl) = self.conv(ctx, &kl_files)?;
        self.phases(ctx, curves)?;
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
            ],
        )?;
        self.baselines(ctx, &dists)?;
        let surprisal = self.surprisal(dists.clone());
        let annotations = scan(std::slice::from_ref(&ann))?;
        let conv_by = self.by_variables(
            ctx,
            "conv_by.parquet",
            &CONV,
            scan(&kl_files)?,
            annotations.clone(),
            surprisal.clone(),
        )?;
        let per_seed = dists.select([
            col("size"),
            col("step"),
            col("seed"),
            col("row"),
            (lit(0.0) - col("target_logprob").cast(DataType::Float64)).alias("surprisal"),
        ]);
        let ce_by = self.by_variables(
            ctx,
            "ce_by.parquet",
            &CROSS_ENTROPY,
            per_seed,
            annotations.clone(),
            surprisal.clone(),
        )?;
        let regression = self.regression(ctx, &row_kl, &ann)?;
        self.final_surprisal(ctx, surprisal)?;
        let token_table = self.token_table(ctx, &kl_files, annotations.clone())?;
        if self.token_table_pooled {
            self.token_table_pooled(ctx, &kl_files, annotations)?;
        }
        Ok(json!({
            "conv_rows": conv.height(),
            "conv_by_rows": conv_by.height(),
            "ce_by_rows": ce_by.height(),
            "regression_rows": regression,
            "token_table_rows": token_table.height(),
        }))
    }
}

/// Each size's E[KL] curve: (step, E[KL]) points.
type Curves = BTreeMap<String, Vec<(u64, f64)>>;

/// Per (size, step): each row and its KL averaged over ordered pairs.
type RowKl = Vec<(String, u32, Vec<u32>, Vec<f64>)>;

/// One function per output table, each writing its file.
impl AggregateJob {
    /// `conv.parquet`: unconditional E[conv] with its bands, one (size, step)
    /// at a time; also each size's curve for the phases.
    fn conv(
        &self,
        ctx: &JobCtx,
        kl_files: &[PathBuf],
    ) -> Result<(DataFrame, Curves, RowKl), StageError> {
        let mut cols: Vec<Vec<f64>> = vec![Vec::new(); 11];
        let (mut sizes, mut steps, mut n_rows, mut n_pairs) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut row_kl: RowKl = Vec::new();
        for (i, f) in kl_files.iter().enumerate() {
            ctx.check_cancel()?;
            let df = scan(std::slice::from_ref(f))?
                .sort(["seed_a", "seed_b", "row"], SortMultipleOptions::default())
                .collect()
                .map_err(perr)?;
            let size = df
                .column("size")
                .map_err(perr)?
                .str()
                .map_err(perr)?
                .get(0)
                .unwrap_or_default()
                .to_string();
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
            let rows = df.column("row").map_err(perr)?.n_unique().map_err(perr)?;
            let pairs = klv.len() / rows.max(1);
            let matrix: Vec<Vec<f64>> = klv.chunks(rows).map(|c| c.to_vec()).collect();
            let row_ids: Vec<u32> = df
                .column("row")
                .map_err(perr)?
                .u32()
                .map_err(perr)?
                .into_no_null_iter()
                .take(rows)
                .collect();
            let means: Vec<f64> = (0..rows)
                .map(|r| matrix.iter().map(|m| m[r]).sum::<f64>() / matrix.len() as f64)
                .collect();
            row_kl.push((size.clone(), step, row_ids, means));
            let stats = conv_stats(
                &matrix,
                self.bootstrap,
                self.bootstrap_seed.wrapping_add(i as u64),
            );
            for (c, v) in cols.iter_mut().zip(stats) {
                c.push(v);
            }
            sizes.push(size);
            steps.push(step);
            n_rows.push(rows as u32);
            n_pairs.push(pairs as u32);
        }
        let mut conv = df!(
        "size" => sizes.clone(), "step" => steps.clone(), "conv" => &cols[0], "sd_pairs" => &cols[1], "sd_rows" => &cols[2],
        "se" => &cols[3], "ci_low" => &cols[4], "ci_high" => &cols[5], "n_rows" => n_rows, "n_pairs" => n_pairs
    )
    .map_err(perr)?;
        for (i, (_, name)) in SPREAD_QUANTILES.iter().enumerate() {
            conv.with_column(Column::new((*name).into(), &cols[6 + i]))
                .map_err(perr)?;
        }
        write(ctx, "conv.parquet", &mut conv)?;
        let mut curves: Curves = BTreeMap::new();
        for ((size, step), c) in sizes.iter().zip(&steps).zip(&cols[0]) {
            curves
                .entry(size.clone())
                .or_default()
                .push((*step as u64, -c));
        }
        Ok((conv, curves, row_kl))
    }

    /// `phases.parquet`: the four phases of each size's E[KL] curve.
    fn phases(&self, ctx: &JobCtx, curves: Curves) -> Result<(), StageError> {
        let (mut ps, mut pn, mut p0, mut p1, mut pp, mut pnote) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        for (size, mut curve) in curves {
            curve.sort_by_key(|p| p.0);
            for ph in crate::analysis::phases::detect(&curve, self.phase_tolerance) {
                ps.push(size.clone());
                pn.push(ph.name);
                p0.push(ph.span.map(|s| s.0 as u32));
                p1.push(ph.span.map(|s| s.1 as u32));
                pp.push(ph.span.is_some());
                pnote.push(ph.note);
            }
        }
        let mut phases = df!(
        "size" => ps, "phase" => pn, "start_step" => p0, "end_step" => p1, "present" => pp, "note" => pnote
    )
    .map_err(perr)?;
        write(ctx, "phases.parquet", &mut phases)?;
        Ok(())
    }

    /// `baselines.parquet`: per (size, step, seed) KL to the uniform and
    /// unigram distributions and cross-entropy.
    fn baselines(&self, ctx: &JobCtx, dists: &LazyFrame) -> Result<(), StageError> {
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
        Ok(())
    }

    /// Final surprisal per (size, row), mean over seeds or one seed, binned.
    fn surprisal(&self, dists: LazyFrame) -> LazyFrame {
        let last = dists.filter(col("step").eq(lit(self.final_step as u32)));
        let last = if self.final_surprisal_seed == "mean" {
            last
        } else {
            last.filter(col("seed").eq(lit(self.final_surprisal_seed.clone())))
        };
        let mut bin = lit(SURPRISAL_BINS[4].1);
        for &(hi, label) in SURPRISAL_BINS[..4].iter().rev() {
            bin = when(col("final_surprisal").lt(lit(hi)))
                .then(lit(label))
                .otherwise(bin);
        }
        last.group_by([col("size"), col("row")])
            .agg([(lit(0.0) - col("target_logprob").cast(DataType::Float64))
                .mean()
                .alias("final_surprisal")])
            .with_column(bin.alias("surprisal_bin"))
    }

    /// `conv_by.parquet` (per pair KL) and `ce_by.parquet` (per seed
    /// surprisal): every per-row value joined with the row's annotations and
    /// final surprisal, grouped by each conditioning variable.
    fn by_variables(
        &self,
        ctx: &JobCtx,
        file: &str,
        m: &Measure,
        values: LazyFrame,
        annotations: LazyFrame,
        surprisal: LazyFrame,
    ) -> Result<DataFrame, StageError> {
        let joined = values
            .join(
                annotations,
                [col("row")],
                [col("row")],
                JoinArgs::new(JoinType::Left),
            )
            .join(
                surprisal,
                [col("size"), col("row")],
                [col("size"), col("row")],
                JoinArgs::new(JoinType::Left),
            );
        let mut parts = Vec::new();
        for v in VARIABLES {
            ctx.check_cancel()?;
            match v.levels {
                Levels::Column => parts.push(
                    conditional(
                        joined.clone().filter(col(v.name).is_not_null()),
                        col(v.name).cast(DataType::String),
                        v.name,
                        m,
                    )?
                    .lazy(),
                ),
                Levels::Flags(flags) => {
                    for &(flag, label) in flags {
                        parts.push(
                            conditional(
                                joined.clone().filter(col(flag).eq(lit(true))),
                                lit(label),
                                v.name,
                                m,
                            )?
                            .lazy(),
                        );
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
        Ok(table)
    }

    /// `regression.parquet`: per step, least squares of each (size, row)'s
    /// KL (mean over ordered pairs) on one indicator per size (no common
    /// intercept), log10(count + 1) of the target, and noun / verb /
    /// function indicators of the target and of the last context token
    /// (other tags and UNK are the baseline). Terms that are constant zero
    /// at a step (e.g. no tags) are left out. Returns the rows written.
    fn regression(&self, ctx: &JobCtx, row_kl: &RowKl, ann: &Path) -> Result<usize, StageError> {
        let a = crate::table::read(ann)?;
        let tcol = |n: &str| crate::table::column::<arrow_array::StringArray>(&a, n, ann);
        let rows = crate::table::column::<arrow_array::UInt32Array>(&a, "row", ann)?;
        let count = crate::table::column::<arrow_array::UInt64Array>(&a, "count", ann)?;
        let (tx, tu, cx, cu) = (
            tcol("xpos")?,
            tcol("upos")?,
            tcol("context_xpos")?,
            tcol("context_upos")?,
        );
        use arrow_array::Array;
        // The (noun, verb, function, content) groups of row i's tags in
        // the given Penn and UPOS columns; none for untagged tokens.
        fn tag(c: &arrow_array::StringArray, i: usize) -> Option<&str> {
            (!c.is_null(i)).then(|| c.value(i))
        }
        let groups = |x: &arrow_array::StringArray, u: &arrow_array::StringArray, i: usize| {
            crate::text::pos::groups(tag(x, i), tag(u, i)).unwrap_or([false; 4])
        };
        // row → (log10 freq, target groups, context groups)
        let mut features: BTreeMap<u32, [f64; 7]> = BTreeMap::new();
        for i in 0..a.num_rows() {
            let t = groups(tx, tu, i);
            let c = groups(cx, cu, i);
            let f = |b: bool| f64::from(u8::from(b));
            features.insert(
                rows.value(i),
                [
                    ((count.value(i) + 1) as f64).log10(),
                    f(t[0]),
                    f(t[1]),
                    f(t[2]),
                    f(c[0]),
                    f(c[1]),
                    f(c[2]),
                ],
            );
        }
        const TERMS: [&str; 7] = [
            "log10_freq",
            "target_noun",
            "target_verb",
            "target_function",
            "context_noun",
            "context_verb",
            "context_function",
        ];
        let sizes: Vec<String> = {
            let mut v: Vec<String> = Vec::new();
            for (s, ..) in row_kl {
                if !v.contains(s) {
                    v.push(s.clone());
                }
            }
            v
        };
        let mut steps: Vec<u32> = row_kl.iter().map(|r| r.1).collect();
        steps.sort_unstable();
        steps.dedup();
        let (mut o_step, mut o_term, mut o_coef, mut o_se, mut o_n, mut o_r2) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        for step in steps {
            ctx.check_cancel()?;
            let (mut x, mut y) = (Vec::new(), Vec::new());
            for (size, _, rs, kl) in row_kl.iter().filter(|r| r.1 == step) {
                let si = sizes.iter().position(|s| s == size).unwrap_or(0);
                for (r, k) in rs.iter().zip(kl) {
                    let Some(f) = features.get(r) else { continue };
                    let mut row: Vec<f64> = (0..sizes.len())
                        .map(|j| f64::from(u8::from(j == si)))
                        .collect();
                    row.extend_from_slice(f);
                    x.push(row);
                    y.push(*k);
                }
            }
            let names: Vec<String> = sizes
                .iter()
                .map(|s| format!("size_{s}"))
                .chain(TERMS.iter().map(|t| t.to_string()))
                .collect();
            // Keep the columns with any non-zero value.
            let keep: Vec<usize> = (0..names.len())
                .filter(|&j| x.iter().any(|r| r[j] != 0.0))
                .collect();
            let xk: Vec<Vec<f64>> = x
                .iter()
                .map(|r| keep.iter().map(|&j| r[j]).collect())
                .collect();
            let fit = crate::analysis::regression::ols(&xk, &y);
            for (k, &j) in keep.iter().enumerate() {
                o_step.push(step);
                o_term.push(names[j].clone());
                o_coef.push(fit.as_ref().map_or(f64::NAN, |f| f.coef[k]));
                o_se.push(fit.as_ref().map_or(f64::NAN, |f| f.se[k]));
                o_n.push(y.len() as u32);
                o_r2.push(fit.as_ref().map_or(f64::NAN, |f| f.r2));
            }
        }
        let n = o_step.len();
        let mut table = df!(
            "step" => o_step, "term" => o_term, "coef" => o_coef, "se" => o_se,
            "n_obs" => o_n, "r2" => o_r2
        )
        .map_err(perr)?;
        write(ctx, "regression.parquet", &mut table)?;
        Ok(n)
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
        kl_files: &[PathBuf],
        annotations: LazyFrame,
    ) -> Result<DataFrame, StageError> {
        let rows = scan(kl_files)?
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
        kl_files: &[PathBuf],
        annotations: LazyFrame,
    ) -> Result<(), StageError> {
        let rows = scan(kl_files)?
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
