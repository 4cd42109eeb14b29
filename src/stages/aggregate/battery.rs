//! `llama_stats.parquet`: llama.cpp's `perplexity --kl-divergence` battery
//! (tools/perplexity/perplexity.cpp) per (size, step) and ordered seed pair,
//! seed a as llama.cpp's base and seed b as its Q: the KLD distribution
//! (mean ± SE, max, 99.9 … 0.1% percentiles, min), Δp of the gold token
//! (p_b(y) − p_a(y): mean ± SE, percentiles, RMS Δp ± SE), "same top p"
//! (share of rows whose argmax agrees, binomial SE) and the correlation of
//! per-token NLL, Cor(ln PPL(Q), ln PPL(base)), with its Spearman (rank)
//! version (Summers & Dinneen 2021 report both). Percentiles follow numpy's
//! linear rule; the ± are llama.cpp's i.i.d.-token SEs (the seed- and
//! document-aware intervals are the aggregate tables' own).

use std::collections::BTreeMap;
use std::path::PathBuf;

use arrow_array::{Array, Float32Array, ListArray, StringArray, UInt32Array};
use polars::prelude::*;

use super::frames::{perr, write};
use crate::analysis::intervals::{Cells, Jackknife};
use crate::analysis::stats::quantile;
use crate::engine::JobCtx;
use crate::error::StageError;

/// KLD percentiles as llama.cpp prints them: (fraction, column suffix).
pub const KLD_PERCENTILES: [(f64, &str); 9] = [
    (0.999, "p99_9"),
    (0.99, "p99"),
    (0.95, "p95"),
    (0.90, "p90"),
    (0.5, "median"),
    (0.10, "p10"),
    (0.05, "p5"),
    (0.01, "p1"),
    (0.001, "p0_1"),
];

/// Δp percentiles (llama.cpp adds the quartiles).
pub const DP_PERCENTILES: [(f64, &str); 11] = [
    (0.999, "p99_9"),
    (0.99, "p99"),
    (0.95, "p95"),
    (0.90, "p90"),
    (0.75, "p75"),
    (0.5, "median"),
    (0.25, "p25"),
    (0.10, "p10"),
    (0.05, "p5"),
    (0.01, "p1"),
    (0.001, "p0_1"),
];

/// One seed's rows at one checkpoint: per row id, (target log-prob, argmax).
pub(super) type SeedRows = Vec<Option<(f64, u32)>>;

/// (size, step, seed) → its rows, from the dist tables.
pub(super) fn read_dists(
    files: &[PathBuf],
) -> Result<BTreeMap<(String, u32, String), SeedRows>, StageError> {
    let mut out: BTreeMap<(String, u32, String), SeedRows> = BTreeMap::new();
    for f in files {
        let t = crate::table::read(f)?;
        let size = crate::table::column::<StringArray>(&t, "size", f)?;
        let seed = crate::table::column::<StringArray>(&t, "seed", f)?;
        let step = crate::table::column::<UInt32Array>(&t, "step", f)?;
        let row = crate::table::column::<UInt32Array>(&t, "row", f)?;
        let lp = crate::table::column::<Float32Array>(&t, "target_logprob", f)?;
        let ids = crate::table::column::<ListArray>(&t, "topk_ids", f)?;
        for i in 0..t.num_rows() {
            let key = (
                size.value(i).to_string(),
                step.value(i),
                seed.value(i).to_string(),
            );
            let v = out.entry(key).or_default();
            let r = row.value(i) as usize;
            if v.len() <= r {
                v.resize(r + 1, None);
            }
            let top = ids.value(i);
            let top = top
                .as_any()
                .downcast_ref::<UInt32Array>()
                .filter(|a| !a.is_empty())
                .map(|a| a.value(0))
                .ok_or_else(|| StageError::input(f, format!("row {r}: empty topk_ids")))?;
            v[r] = Some((lp.value(i) as f64, top));
        }
    }
    Ok(out)
}

/// The battery of one ordered pair over its rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Battery {
    pub kld_mean: f64,
    pub kld_se: f64,
    pub kld_max: f64,
    pub kld_min: f64,
    pub kld_pct: [f64; 9],
    pub dp_mean: f64,
    pub dp_se: f64,
    pub dp_max: f64,
    pub dp_min: f64,
    pub dp_pct: [f64; 11],
    pub dp_rms: f64,
    pub dp_rms_se: f64,
    pub same_top: f64,
    pub same_top_se: f64,
    pub nll_cor: f64,
    pub nll_spearman: f64,
    pub n: usize,
}

/// Ranks 1..n, ties given their average rank.
fn ranks(x: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut r = vec![0.0; x.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && x[idx[j + 1]] == x[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            r[k] = avg;
        }
        i = j + 1;
    }
    r
}

/// Pearson correlation of two equally long series.
fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        sab += (x - ma) * (y - mb);
        saa += (x - ma) * (x - ma);
        sbb += (y - mb) * (y - mb);
    }
    sab / (saa * sbb).sqrt()
}

/// Mean and llama.cpp's SE, sqrt((mean(x²) − mean²)/(n − 1)): the same
/// value as the sample SD / √n of `stats::mean_se`.
fn mean_se(x: &[f64]) -> (f64, f64) {
    let (m, se, _) = crate::analysis::stats::mean_se(x);
    (m, se)
}

/// `kl[i]`, `lp_a[i]`, `lp_b[i]` (target log-probs), `top_a[i]`, `top_b[i]`
/// of the same rows.
pub fn battery(kl: &[f64], lp_a: &[f64], lp_b: &[f64], top_a: &[u32], top_b: &[u32]) -> Battery {
    let n = kl.len();
    let sorted = |v: &[f64]| {
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        s
    };
    let ks = sorted(kl);
    let (kld_mean, kld_se) = mean_se(kl);
    let dp: Vec<f64> = lp_a
        .iter()
        .zip(lp_b)
        .map(|(a, b)| b.exp() - a.exp())
        .collect();
    let ds = sorted(&dp);
    let (dp_mean, dp_se) = mean_se(&dp);
    let sq: Vec<f64> = dp.iter().map(|d| d * d).collect();
    let (ms, ms_se) = mean_se(&sq);
    let dp_rms = ms.sqrt();
    let same = top_a.iter().zip(top_b).filter(|(a, b)| a == b).count() as f64 / n as f64;
    Battery {
        kld_mean,
        kld_se,
        kld_max: ks[n - 1],
        kld_min: ks[0],
        kld_pct: KLD_PERCENTILES.map(|(q, _)| quantile(&ks, q)),
        dp_mean,
        dp_se,
        dp_max: ds[n - 1],
        dp_min: ds[0],
        dp_pct: DP_PERCENTILES.map(|(q, _)| quantile(&ds, q)),
        dp_rms,
        dp_rms_se: if dp_rms > 0.0 {
            ms_se / (2.0 * dp_rms)
        } else {
            0.0
        },
        same_top: same,
        same_top_se: (same * (1.0 - same) / (n as f64 - 1.0)).sqrt(),
        nll_cor: pearson(lp_a, lp_b),
        nll_spearman: pearson(&ranks(lp_a), &ranks(lp_b)),
        n,
    }
}

/// The seed ensemble's cross-entropy gain at the target, per row:
/// log mean_i p_i(y) − mean_i log p_i(y) (≥ 0, Jensen), from each seed's
/// target log-prob `lp[seed][row]`.
pub fn ensemble_gain(lp: &[&[f64]]) -> Vec<f64> {
    let mut row = vec![0.0; lp.len()];
    (0..lp.first().map_or(0, |v| v.len()))
        .map(|r| {
            for (x, v) in row.iter_mut().zip(lp) {
                *x = v[r];
            }
            crate::analysis::divergence::ensemble_gain(&row)
        })
        .collect()
}

/// Per seed k, the gain per row of the ensemble of the other seeds (None
/// when fewer than two are left).
pub fn ensemble_gain_without(lp: &[Vec<f64>]) -> Vec<Option<Vec<f64>>> {
    (0..lp.len())
        .map(|k| {
            let rest: Vec<&[f64]> = (0..lp.len())
                .filter(|&j| j != k)
                .map(|j| lp[j].as_slice())
                .collect();
            (rest.len() >= 2).then(|| ensemble_gain(&rest))
        })
        .collect()
}

/// The mean ensemble gain of one (size, step) over its rows, with its
/// leave-one-seed-out (the ensemble of the others) and leave-one-document-out
/// replicates.
pub(super) fn ensemble_jackknife(lp: &[Vec<f64>], docs: &[usize], n_docs: usize) -> Jackknife {
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let all: Vec<&[f64]> = lp.iter().map(Vec::as_slice).collect();
    let gain = ensemble_gain(&all);
    let seeds = ensemble_gain_without(lp)
        .iter()
        .map(|g| g.as_deref().map_or(f64::NAN, mean))
        .collect();
    // The documents' replicates: the gain as one unit's per-row value.
    let mut cells = Cells::new(0, vec![(0, None)], n_docs);
    for (g, &d) in gain.iter().zip(docs) {
        cells.sums[0][d] += g;
        cells.rows[d] += 1.0;
    }
    Jackknife {
        seeds,
        ..cells.jackknife()
    }
}

/// The rows of `llama_stats.parquet`, collected per (size, step).
#[derive(Default)]
pub(super) struct Table {
    keys: Vec<(String, u32, String, String)>,
    rows: Vec<Battery>,
    /// `ensemble.parquet`: (size, step, seeds) and the gain's jackknife.
    ensemble: Vec<(String, u32, u32, Jackknife)>,
}

impl Table {
    /// Every ordered pair of one (size, step): its KL matrix `kl[pair][row]`
    /// over `rows`, the pairs' seed labels, and the dist rows.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn add(
        &mut self,
        size: &str,
        step: u32,
        pairs: &[(String, String)],
        kl: &[Vec<f64>],
        rows: &[u32],
        dists: &BTreeMap<(String, u32, String), SeedRows>,
        file: &std::path::Path,
    ) -> Result<(), StageError> {
        let seed_rows = |s: &str| -> Result<(Vec<f64>, Vec<u32>), StageError> {
            let v = dists
                .get(&(size.to_string(), step, s.to_string()))
                .ok_or_else(|| {
                    StageError::input(
                        file,
                        format!("no dist table for seed {s} at {size} step {step}"),
                    )
                })?;
            let mut lp = Vec::with_capacity(rows.len());
            let mut top = Vec::with_capacity(rows.len());
            for &r in rows {
                let (l, t) = v.get(r as usize).copied().flatten().ok_or_else(|| {
                    StageError::input(file, format!("row {r} missing from seed {s}'s dist table"))
                })?;
                lp.push(l);
                top.push(t);
            }
            Ok((lp, top))
        };
        for ((a, b), k) in pairs.iter().zip(kl) {
            let (la, ta) = seed_rows(a)?;
            let (lb, tb) = seed_rows(b)?;
            self.keys
                .push((size.to_string(), step, a.clone(), b.clone()));
            self.rows.push(battery(k, &la, &lb, &ta, &tb));
        }
        Ok(())
    }

    /// The seed ensemble's gain at one (size, step): `seeds` in suite order,
    /// `docs[i]` the document of `rows[i]`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn add_ensemble(
        &mut self,
        size: &str,
        step: u32,
        seeds: &[String],
        rows: &[u32],
        docs: &[usize],
        n_docs: usize,
        dists: &BTreeMap<(String, u32, String), SeedRows>,
    ) {
        let lp: Vec<Vec<f64>> = seeds
            .iter()
            .filter_map(|s| dists.get(&(size.to_string(), step, s.clone())))
            .map(|v| {
                rows.iter()
                    .map(|&r| {
                        v.get(r as usize)
                            .copied()
                            .flatten()
                            .map_or(f64::NAN, |x| x.0)
                    })
                    .collect()
            })
            .collect();
        if lp.len() < 2 {
            return;
        }
        let jk = ensemble_jackknife(&lp, docs, n_docs);
        self.ensemble
            .push((size.to_string(), step, lp.len() as u32, jk));
    }

    pub(super) fn write(self, ctx: &JobCtx) -> Result<(), StageError> {
        let n = self.rows.len();
        let f = |name: String, g: &dyn Fn(&Battery) -> f64| {
            Column::new(name.into(), self.rows.iter().map(g).collect::<Vec<f64>>())
        };
        let mut cols = vec![
            Column::new(
                "size".into(),
                self.keys.iter().map(|k| k.0.clone()).collect::<Vec<_>>(),
            ),
            Column::new(
                "step".into(),
                self.keys.iter().map(|k| k.1).collect::<Vec<_>>(),
            ),
            Column::new(
                "seed_a".into(),
                self.keys.iter().map(|k| k.2.clone()).collect::<Vec<_>>(),
            ),
            Column::new(
                "seed_b".into(),
                self.keys.iter().map(|k| k.3.clone()).collect::<Vec<_>>(),
            ),
            f("kld_mean".into(), &|b| b.kld_mean),
            f("kld_se".into(), &|b| b.kld_se),
            f("kld_max".into(), &|b| b.kld_max),
        ];
        for (i, (_, name)) in KLD_PERCENTILES.iter().enumerate() {
            cols.push(f(format!("kld_{name}"), &|b| b.kld_pct[i]));
        }
        cols.extend([
            f("kld_min".into(), &|b| b.kld_min),
            f("dp_mean".into(), &|b| b.dp_mean),
            f("dp_se".into(), &|b| b.dp_se),
            f("dp_max".into(), &|b| b.dp_max),
        ]);
        for (i, (_, name)) in DP_PERCENTILES.iter().enumerate() {
            cols.push(f(format!("dp_{name}"), &|b| b.dp_pct[i]));
        }
        cols.extend([
            f("dp_min".into(), &|b| b.dp_min),
            f("dp_rms".into(), &|b| b.dp_rms),
            f("dp_rms_se".into(), &|b| b.dp_rms_se),
            f("same_top_p".into(), &|b| b.same_top),
            f("same_top_p_se".into(), &|b| b.same_top_se),
            f("nll_cor".into(), &|b| b.nll_cor),
            f("nll_spearman".into(), &|b| b.nll_spearman),
            Column::new(
                "n_rows".into(),
                self.rows.iter().map(|b| b.n as u32).collect::<Vec<_>>(),
            ),
        ]);
        let mut df = DataFrame::new(n, cols).map_err(perr)?;
        write(ctx, "llama_stats.parquet", &mut df)?;
        let e = &self.ensemble;
        let ivs: Vec<_> = e.iter().map(|x| x.3.interval()).collect();
        let mut cols = vec![
            Column::new(
                "size".into(),
                e.iter().map(|x| x.0.clone()).collect::<Vec<_>>(),
            ),
            Column::new("step".into(), e.iter().map(|x| x.1).collect::<Vec<_>>()),
            Column::new(
                "gain".into(),
                ivs.iter().map(|i| i.est).collect::<Vec<f64>>(),
            ),
        ];
        cols.extend(super::frames::interval_columns(&ivs, false));
        cols.push(Column::new(
            "n_seeds".into(),
            e.iter().map(|x| x.2).collect::<Vec<_>>(),
        ));
        let mut df = DataFrame::new(e.len(), cols).map_err(perr)?;
        write(ctx, "ensemble.parquet", &mut df)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// numpy's linear rule, written here: h = q(n − 1), interpolate.
    fn np_percentile(v: &[f64], q: f64) -> f64 {
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        let h = q * (s.len() - 1) as f64;
        let lo = h.floor() as usize;
        let hi = (lo + 1).min(s.len() - 1);
        s[lo] + (h - lo as f64) * (s[hi] - s[lo])
    }

    #[test]
    fn ensemble_gain_by_hand() {
        // Two seeds: p = 0.5 and 0.125 at the target; log(0.3125) − mean log.
        let a = [0.5f64.ln()];
        let b = [0.125f64.ln()];
        let g = ensemble_gain(&[&a, &b]);
        let want = 0.3125f64.ln() - (0.5f64.ln() + 0.125f64.ln()) / 2.0;
        assert!((g[0] - want).abs() < 1e-15 && g[0] > 0.0);
        // Identical seeds gain nothing.
        assert!(ensemble_gain(&[&a, &a])[0].abs() < 1e-15);
    }

    #[test]
    fn battery_by_hand() {
        let kl = [0.0, 0.1, 0.4, 0.2, 0.3];
        let lp_a = [-1.0f64, -2.0, -0.5, -3.0, -1.5];
        let lp_b = [-1.2f64, -1.0, -0.5, -2.0, -2.5];
        let (ta, tb) = ([1, 2, 3, 4, 5], [1, 9, 3, 4, 0]);
        let b = battery(&kl, &lp_a, &lp_b, &ta, &tb);
        assert!((b.kld_mean - 0.2).abs() < 1e-15);
        // SE: population variance 0.02, / (n − 1) = 0.005.
        assert!((b.kld_se - 0.005f64.sqrt()).abs() < 1e-15);
        assert_eq!((b.kld_min, b.kld_max), (0.0, 0.4));
        for (i, (q, _)) in KLD_PERCENTILES.iter().enumerate() {
            assert!((b.kld_pct[i] - np_percentile(&kl, *q)).abs() < 1e-15);
        }
        let dp: Vec<f64> = lp_a
            .iter()
            .zip(&lp_b)
            .map(|(a, c)| c.exp() - a.exp())
            .collect();
        for (i, (q, _)) in DP_PERCENTILES.iter().enumerate() {
            assert!((b.dp_pct[i] - np_percentile(&dp, *q)).abs() < 1e-15);
        }
        let rms = (dp.iter().map(|d| d * d).sum::<f64>() / 5.0).sqrt();
        assert!((b.dp_rms - rms).abs() < 1e-15);
        assert!((b.same_top - 0.6).abs() < 1e-15);
        assert!((b.same_top_se - (0.6f64 * 0.4 / 4.0).sqrt()).abs() < 1e-15);
        // Δp is antisymmetric; the correlation symmetric.
        let r = battery(&kl, &lp_b, &lp_a, &tb, &ta);
        assert!((r.dp_mean + b.dp_mean).abs() < 1e-15);
        assert!((r.nll_cor - b.nll_cor).abs() < 1e-15);
        // Spearman: ranks of −1, −2, −0.5, −3, −1.5 are 4, 2, 5, 1, 3 and of
        // −1.2, −1, −0.5, −2, −2.5 are 3, 4, 5, 2, 1: 1 − 6Σd²/(n(n²−1)).
        let d2 = [1.0f64, 4.0, 0.0, 1.0, 4.0].iter().sum::<f64>();
        assert!((b.nll_spearman - (1.0 - 6.0 * d2 / (5.0 * 24.0))).abs() < 1e-12);
        // Ties share their average rank.
        assert_eq!(ranks(&[3.0, 1.0, 3.0, 2.0]), vec![3.5, 1.0, 3.5, 2.0]);
        // Identical seeds: Δp 0, same top 1, correlation 1.
        let same = battery(&[0.0; 5], &lp_a, &lp_a, &ta, &ta);
        assert_eq!((same.dp_rms, same.same_top), (0.0, 1.0));
        assert!((same.nll_cor - 1.0).abs() < 1e-12);
    }
}
