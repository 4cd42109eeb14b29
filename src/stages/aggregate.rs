//! `aggregate`: the paper's curves as tidy tables a researcher plots
//! directly. polars joins the per-pair KL tables with the per-row
//! annotations and final surprisal and does the group-bys; the bootstrap,
//! which polars has no verb for, is plain Rust over each (size, step)'s
//! pair × row matrix.
//!
//! Estimators (PAPER.md): per ordered pair the mean KL over the rows (of a
//! subset S), then mean and SD over pairs; E[conv] = −that mean.

use std::fs::File;
use std::path::PathBuf;

use polars::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;

use crate::config::Loaded;
use crate::engine::{Instance, Job, JobCtx};
use crate::error::StageError;
use crate::stages::{annotate, dist, kl, tokenizer};
use crate::suite::Suite;

pub const NAME: &str = "aggregate";
pub const VERSION: u32 = 5;

/// Final-surprisal bins in nats.
pub const SURPRISAL_BINS: [(f64, &str); 5] = [
    (1.0, "[0,1)"),
    (2.0, "[1,2)"),
    (4.0, "[2,4)"),
    (8.0, "[4,8)"),
    (f64::INFINITY, ">=8"),
];

pub fn instances(l: &Loaded, suite: &Suite) -> Vec<Instance> {
    if suite.seeds.len() < 2 {
        return vec![];
    }
    let a = &l.config.aggregate;
    let mut deps = vec![
        (annotate::NAME, String::new()),
        (tokenizer::NAME, String::new()),
    ];
    let mut kls = Vec::new();
    let mut dists = Vec::new();
    for size in &suite.sizes {
        for &step in &suite.steps {
            kls.push(format!("{size}-step{step}"));
        }
    }
    for c in &suite.checkpoints {
        dists.push(c.label());
    }
    deps.extend(kls.iter().map(|k| (kl::NAME, k.clone())));
    deps.extend(dists.iter().map(|d| (dist::NAME, d.clone())));
    let last = suite.steps.iter().copied().max().unwrap_or(0);
    vec![Instance {
        stage: NAME,
        version: VERSION,
        label: String::new(),
        params: json!({
            "bootstrap": a.bootstrap, "bootstrap_seed": a.bootstrap_seed, "min_rows": a.min_rows,
            "final_surprisal_seed": a.final_surprisal_seed, "token_table_n": a.token_table_n,
            "phase_tolerance": a.phase_tolerance,
            "final_step": last,
        }),
        inputs: vec![],
        deps,
        exclusive: false,
        job: Box::new(AggregateJob {
            kls,
            dists,
            final_step: last,
            bootstrap: a.bootstrap,
            seed: a.bootstrap_seed,
            min_rows: a.min_rows,
            surprisal_seed: a.final_surprisal_seed.clone(),
            token_n: a.token_table_n,
            phase_tol: a.phase_tolerance,
        }),
    }]
}

struct AggregateJob {
    kls: Vec<String>,
    dists: Vec<String>,
    final_step: usize,
    bootstrap: usize,
    seed: u64,
    min_rows: usize,
    surprisal_seed: String,
    token_n: usize,
    phase_tol: f64,
}

fn perr(e: PolarsError) -> StageError {
    StageError::Other(format!("polars: {e}"))
}

fn scan(paths: &[PathBuf]) -> Result<LazyFrame, StageError> {
    let lfs = paths
        .iter()
        .map(|p| {
            let p = PlRefPath::try_from_path(p).map_err(perr)?;
            LazyFrame::scan_parquet(p, ScanArgsParquet::default()).map_err(perr)
        })
        .collect::<Result<Vec<_>, _>>()?;
    concat(lfs, UnionArgs::default()).map_err(perr)
}

fn write(ctx: &JobCtx, name: &str, df: &mut DataFrame) -> Result<(), StageError> {
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

/// Mean and sample SD (ddof 1; 0 for a single value).
pub fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    if v.len() < 2 {
        return (m, 0.0);
    }
    (
        m,
        (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)).sqrt(),
    )
}

/// Mean, standard error (SD ddof 1 / √n) and n of a sample.
pub fn mean_se(v: &[f64]) -> (f64, f64, u32) {
    let (m, sd) = mean_sd(v);
    (m, sd / (v.len() as f64).sqrt(), v.len() as u32)
}

/// Quantiles of conv(row) across contexts reported in `conv.parquet`.
pub const SPREAD_QUANTILES: [(f64, &str); 5] = [
    (0.05, "q05"),
    (0.25, "q25"),
    (0.5, "q50"),
    (0.75, "q75"),
    (0.95, "q95"),
];

/// Quantile of sorted values by linear interpolation (numpy's default).
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    let h = q * (sorted.len() - 1) as f64;
    let (i, f) = (h.floor() as usize, h - h.floor());
    match sorted.get(i + 1) {
        Some(next) => sorted[i] + f * (next - sorted[i]),
        None => sorted[i],
    }
}

/// Unconditional statistics of one (size, step) from its KL matrix
/// `kl[pair][row]`: conv, SD over pair means, SD over rows of conv(row),
/// SE over rows, a percentile bootstrap CI resampling pairs and rows
/// jointly (the multi-bootstrap idea), then the `SPREAD_QUANTILES` of
/// conv(row).
pub fn conv_stats(kl: &[Vec<f64>], b: usize, seed: u64) -> [f64; 11] {
    let (p, r) = (kl.len(), kl[0].len());
    let pair_means: Vec<f64> = kl
        .iter()
        .map(|row| row.iter().sum::<f64>() / r as f64)
        .collect();
    let (m, sd_pairs) = mean_sd(&pair_means);
    let conv_row: Vec<f64> = (0..r)
        .map(|j| -kl.iter().map(|row| row[j]).sum::<f64>() / p as f64)
        .collect();
    let (_, sd_rows) = mean_sd(&conv_row);
    let mut sorted = conv_row.clone();
    sorted.sort_by(f64::total_cmp);
    let qs = SPREAD_QUANTILES.map(|(q, _)| quantile(&sorted, q));
    let se = sd_rows / (r as f64).sqrt();
    let (mut lo, mut hi) = (-m, -m);
    if b > 0 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut reps: Vec<f64> = (0..b)
            .map(|_| {
                let pairs: Vec<usize> = (0..p).map(|_| rng.random_range(0..p)).collect();
                let mut s = 0.0;
                for _ in 0..r {
                    let j = rng.random_range(0..r);
                    s += pairs.iter().map(|&q| kl[q][j]).sum::<f64>();
                }
                -s / (p * r) as f64
            })
            .collect();
        reps.sort_by(f64::total_cmp);
        let q = |f: f64| reps[((f * (b - 1) as f64).round() as usize).min(b - 1)];
        lo = q(0.025);
        hi = q(0.975);
    }
    let mut out = [-m, sd_pairs, sd_rows, se, lo, hi, 0.0, 0.0, 0.0, 0.0, 0.0];
    out[6..].copy_from_slice(&qs);
    out
}

impl Job for AggregateJob {
    fn run(&self, ctx: &JobCtx) -> Result<serde_json::Value, StageError> {
        let kl_files: Vec<PathBuf> = self
            .kls
            .iter()
            .map(|l| ctx.upstream(kl::NAME, l).map(|d| d.join("kl.parquet")))
            .collect::<Result<_, _>>()?;
        let dist_files: Vec<PathBuf> = self
            .dists
            .iter()
            .map(|l| ctx.upstream(dist::NAME, l).map(|d| d.join("dist.parquet")))
            .collect::<Result<_, _>>()?;
        let ann = ctx
            .upstream(annotate::NAME, "")?
            .join("annotations.parquet");

        // Unconditional E[conv] with its bands, one (size, step) at a time.
        let mut cols: Vec<Vec<f64>> = vec![Vec::new(); 11];
        let (mut sizes, mut steps, mut n_rows, mut n_pairs) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
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
            let stats = conv_stats(&matrix, self.bootstrap, self.seed.wrapping_add(i as u64));
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

        // The four phases of each size's E[KL] curve.
        let mut curves: std::collections::BTreeMap<&str, Vec<(u64, f64)>> =
            std::collections::BTreeMap::new();
        for ((size, step), c) in sizes.iter().zip(&steps).zip(&cols[0]) {
            curves
                .entry(size.as_str())
                .or_default()
                .push((*step as u64, -c));
        }
        let (mut ps, mut pn, mut p0, mut p1, mut pp, mut pnote) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        for (size, mut curve) in curves {
            curve.sort_by_key(|p| p.0);
            for ph in crate::phases::detect(&curve, self.phase_tol) {
                ps.push(size.to_string());
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

        // Per (size, step, seed): baselines and cross-entropy.
        let dists = scan(&dist_files)?;
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

        // Final surprisal per (size, row), mean over seeds or one seed.
        let last = dists.filter(col("step").eq(lit(self.final_step as u32)));
        let last = if self.surprisal_seed == "mean" {
            last
        } else {
            last.filter(col("seed").eq(lit(self.surprisal_seed.clone())))
        };
        let mut bin = lit(SURPRISAL_BINS[4].1);
        for &(hi, label) in SURPRISAL_BINS[..4].iter().rev() {
            bin = when(col("final_surprisal").lt(lit(hi)))
                .then(lit(label))
                .otherwise(bin);
        }
        let surprisal = last
            .group_by([col("size"), col("row")])
            .agg([(lit(0.0) - col("target_logprob").cast(DataType::Float64))
                .mean()
                .alias("final_surprisal")])
            .with_column(bin.alias("surprisal_bin"));

        // Conditional convergence: join every pair's per-row KL with the row's
        // annotations and final surprisal, then group.
        let annotations = scan(std::slice::from_ref(&ann))?;
        let joined = scan(&kl_files)?
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
        let mut parts = Vec::new();
        let by_cols = [
            "freq_bin",
            "xpos",
            "upos",
            "context_xpos",
            "context_upos",
            "surprisal_bin",
        ];
        for by in by_cols {
            ctx.check_cancel()?;
            parts.push(
                conditional(
                    joined.clone().filter(col(by).is_not_null()),
                    col(by).cast(DataType::String),
                    by,
                )?
                .lazy(),
            );
        }
        for (flag, label) in [
            ("is_noun", "noun"),
            ("is_verb", "verb"),
            ("is_function", "function"),
            ("is_content", "content"),
        ] {
            parts.push(
                conditional(
                    joined.clone().filter(col(flag).eq(lit(true))),
                    lit(label),
                    "pos_group",
                )?
                .lazy(),
            );
        }
        let mut conv_by = concat(parts, UnionArgs::default())
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
        write(ctx, "conv_by.parquet", &mut conv_by)?;

        // Final surprisal per row, for plotting and joins.
        let mut s = surprisal
            .sort(["size", "row"], SortMultipleOptions::default())
            .collect()
            .map_err(perr)?;
        write(ctx, "final_surprisal.parquet", &mut s)?;

        // Token table at the final step: mean KL per target token.
        let vocab = scan(&[ctx.upstream(tokenizer::NAME, "")?.join("vocab.parquet")])?
            .select([col("token_id"), col("text")]);
        let per_token = scan(&kl_files)?
            .filter(col("step").eq(lit(self.final_step as u32)))
            .join(
                annotations.clone().select([col("row"), col("target_id")]),
                [col("row")],
                [col("row")],
                JoinArgs::new(JoinType::Left),
            )
            .group_by([col("size"), col("target_id")])
            .agg([
                col("kl")
                    .sort_by(
                        [col("row"), col("seed_a"), col("seed_b")],
                        SortMultipleOptions::default(),
                    )
                    .alias("kls"),
                len().alias("n"),
            ])
            .collect()
            .map_err(perr)?;
        let mean_kl = seq_means(&per_token, "kls").map_err(perr)?;
        let per_token = per_token
            .lazy()
            .with_column(lit(Series::new("mean_kl".into(), mean_kl)).alias("mean_kl"))
            .select([col("size"), col("target_id"), col("mean_kl"), col("n")])
            .join(
                vocab,
                [col("target_id")],
                [col("token_id")],
                JoinArgs::new(JoinType::Left),
            )
            .sort(
                ["size", "mean_kl", "target_id"],
                SortMultipleOptions::default(),
            )
            .collect()
            .map_err(perr)?;
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
            let k = self.token_n.min(n / 3).max(1).min(n);
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
        Ok(
            json!({ "conv_rows": conv.height(), "conv_by_rows": conv_by.height(), "token_table_rows": token_table.height() }),
        )
    }
}

/// Each row's list column as a mean summed left to right. polars' float
/// sums depend on how a group's values are chunked, which varies between
/// runs; with the lists sorted, this makes the tables byte-reproducible.
fn seq_means(df: &DataFrame, list: &str) -> PolarsResult<Vec<f64>> {
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
fn conditional(lf: LazyFrame, level: Expr, variable: &str) -> Result<DataFrame, StageError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_standard_error() {
        let (m, se, n) = mean_se(&[1.0, 2.0, 3.0, 6.0]);
        assert_eq!((m, n), (3.0, 4));
        // SD (ddof 1) = √(14/3); SE = SD/2.
        assert!((se - (14.0f64 / 3.0).sqrt() / 2.0).abs() < 1e-15);
    }

    #[test]
    fn conv_stats_match_hand_computed_values() {
        // Two pairs × three rows.
        let kl = vec![vec![0.1, 0.2, 0.3], vec![0.3, 0.4, 0.5]];
        let [conv, sd_pairs, sd_rows, se, lo, hi, q05, _, q50, _, q95] = conv_stats(&kl, 500, 1);
        // Quantiles of conv(row) = −0.2, −0.3, −0.4 (numpy's linear rule).
        assert!((q50 + 0.3).abs() < 1e-12);
        assert!((q05 - (-0.4 + 0.1 * 0.1)).abs() < 1e-12);
        assert!((q95 - (-0.2 - 0.1 * 0.1)).abs() < 1e-12);
        assert!((conv + 0.3).abs() < 1e-12);
        // Pair means 0.2 and 0.4: SD (ddof 1) = 0.1414…
        assert!((sd_pairs - 0.02f64.sqrt()).abs() < 1e-12);
        // conv(row) = −0.2, −0.3, −0.4: SD = 0.1, SE = 0.1/√3.
        assert!((sd_rows - 0.1).abs() < 1e-12);
        assert!((se - 0.1 / 3f64.sqrt()).abs() < 1e-12);
        assert!(
            lo <= conv && conv <= hi && lo >= -0.5 && hi <= -0.1,
            "{lo} {hi}"
        );
        // Same seed, same interval.
        assert_eq!(conv_stats(&kl, 500, 1)[4], lo);
    }
}
