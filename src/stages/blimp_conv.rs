//! `blimp_conv`: downstream convergence on BLiMP across seeds (PAPER.md).
//! Per (size, step, seed, paradigm) the mean over pairs of
//! q = softmax([log P(good), log P(bad)]) and the accuracy; per (size, step,
//! paradigm) the KL between the seeds' mean q, over unordered seed pairs (the
//! paper: KL(q_i ‖ q_j) for i < j in seed order) and over ordered pairs (our
//! main metric, as for next-token KL); per (size, step) −mean KL ± 1 SE over
//! the (paradigm × seed pair) values, and its seed- and paradigm-aware 95%
//! interval (`analysis::intervals`: paradigms are the clusters).

use std::collections::BTreeMap;
use std::path::PathBuf;

use arrow_array::{Array, BooleanArray, Float64Array, RecordBatch, StringArray, UInt32Array};
use serde::Serialize;
use serde_json::json;

use crate::analysis::intervals::Cells;
use crate::analysis::stats::{mean_sd, mean_se};
use crate::engine::{Instance, Job, JobCtx};
use crate::error::StageError;
use crate::stages::{blimp, PlanCtx, Stage};
use crate::table;

pub const NAME: &str = "blimp_conv";
pub const VERSION: u32 = 2;

/// The `blimp_conv` stage: one instance over the blimp tables of ≥ 2 seeds.
pub struct BlimpConv;

impl Stage for BlimpConv {
    const NAME: &'static str = NAME;
    const VERSION: u32 = VERSION;
    fn instances(&self, cx: &PlanCtx) -> Vec<Instance> {
        let Some(suite) = cx.seeds_to_compare() else {
            return vec![];
        };
        if cx.config().blimp.is_none() {
            return vec![];
        }
        let labels: Vec<String> = suite.checkpoints.iter().map(|c| c.label()).collect();
        let deps = labels.iter().map(|l| (blimp::NAME, l.clone())).collect();
        let job = BlimpConvJob {
            labels,
            seeds: suite.seeds.clone(),
        };
        vec![self.instance("", job).deps(deps)]
    }
}

#[derive(Serialize)]
struct BlimpConvJob {
    /// unkeyed: upstream entries are keyed by their output hashes.
    #[serde(skip)]
    labels: Vec<String>,
    /// Seed order of the suite: unordered pairs are (i, j) with i before j.
    seeds: Vec<String>,
}

/// KL between two Bernoulli distributions (q, 1 − q), nats; 0·log 0 = 0.
pub fn kl2(a: f64, b: f64) -> f64 {
    let term = |p: f64, q: f64| if p == 0.0 { 0.0 } else { p * (p / q).ln() };
    term(a, b) + term(1.0 - a, 1.0 - b)
}

/// Per paradigm and seed: (mean q_good, accuracy, pairs).
type Cell = (f64, f64, usize);

fn str_col(b: &RecordBatch, name: &str, p: &std::path::Path) -> Result<Vec<String>, StageError> {
    let c = table::column::<StringArray>(b, name, p)?;
    Ok((0..c.len()).map(|i| c.value(i).to_string()).collect())
}

impl Job for BlimpConvJob {
    fn run(&self, ctx: &JobCtx) -> Result<serde_json::Value, StageError> {
        // (size, step) → paradigm → seed → cell; paradigm → (field, term).
        let mut cells: BTreeMap<(String, u32), BTreeMap<String, BTreeMap<String, Cell>>> =
            BTreeMap::new();
        let mut meta: BTreeMap<String, (String, String)> = BTreeMap::new();
        for label in &self.labels {
            let p: PathBuf = ctx.upstream(blimp::NAME, label)?.join(blimp::FILE);
            let b = table::read(&p)?;
            let (size, seed, paradigm, field, term) = (
                str_col(&b, "size", &p)?,
                str_col(&b, "seed", &p)?,
                str_col(&b, "paradigm", &p)?,
                str_col(&b, "field", &p)?,
                str_col(&b, "term", &p)?,
            );
            let step = table::column::<UInt32Array>(&b, "step", &p)?;
            let q = table::column::<Float64Array>(&b, "q_good", &p)?;
            let correct = table::column::<BooleanArray>(&b, "correct", &p)?;
            for i in 0..b.num_rows() {
                let c = cells
                    .entry((size[i].clone(), step.value(i)))
                    .or_default()
                    .entry(paradigm[i].clone())
                    .or_default()
                    .entry(seed[i].clone())
                    .or_default();
                c.0 += q.value(i);
                c.1 += correct.value(i) as u8 as f64;
                c.2 += 1;
                meta.entry(paradigm[i].clone())
                    .or_insert_with(|| (field[i].clone(), term[i].clone()));
            }
        }

        let mut acc = table::Columns::default();
        let mut par = table::Columns::default();
        let mut conv = table::Columns::default();
        for ((size, step), paradigms) in &cells {
            let mut kls: [Vec<f64>; 2] = [vec![], vec![]];
            // Per ordering: (seed a, seed b) → paradigm → KL, for the interval.
            let mut by_pair: [BTreeMap<(usize, usize), Vec<f64>>; 2] = Default::default();
            let n_par = paradigms.len();
            let mut per_seed_acc: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
            for (p_idx, (paradigm, seeds)) in paradigms.iter().enumerate() {
                let (field, term) = &meta[paradigm];
                let mean: BTreeMap<&str, (f64, f64)> = seeds
                    .iter()
                    .map(|(s, c)| (s.as_str(), (c.0 / c.2 as f64, c.1 / c.2 as f64)))
                    .collect();
                for (s, c) in seeds {
                    let (q, a) = mean[s.as_str()];
                    acc.s("size", size)
                        .u("step", *step)
                        .s("seed", s)
                        .s("paradigm", paradigm);
                    acc.s("field", field).s("term", term);
                    acc.f("accuracy", a)
                        .f("mean_q_good", q)
                        .u("n_pairs", c.2 as u32);
                    per_seed_acc.entry(s).or_default().push(a);
                }
                // Seeds in suite order, those this paradigm has.
                let order: Vec<&str> = self
                    .seeds
                    .iter()
                    .map(String::as_str)
                    .filter(|s| mean.contains_key(s))
                    .collect();
                let (mut ordered, mut unordered) = (vec![], vec![]);
                let at = |s: &str| self.seeds.iter().position(|x| x == s).unwrap_or(0);
                for (i, a) in order.iter().enumerate() {
                    for (j, b) in order.iter().enumerate() {
                        if i != j {
                            let kl = kl2(mean[a].0, mean[b].0);
                            ordered.push(kl);
                            let key = (at(a), at(b));
                            let mut put = |o: usize| {
                                by_pair[o]
                                    .entry(key)
                                    .or_insert_with(|| vec![f64::NAN; n_par])[p_idx] = kl
                            };
                            put(0);
                            if i < j {
                                unordered.push(kl);
                                put(1);
                            }
                        }
                    }
                }
                par.s("size", size).u("step", *step).s("paradigm", paradigm);
                par.s("field", field).s("term", term);
                par.f("kl_ordered", mean_sd(&ordered).0)
                    .f("kl_unordered", mean_sd(&unordered).0)
                    .u("n_seeds", order.len() as u32);
                kls[0].extend(ordered);
                kls[1].extend(unordered);
            }
            let seed_means: Vec<f64> = per_seed_acc.values().map(|v| mean_sd(v).0).collect();
            let (acc_mean, acc_sd) = mean_sd(&seed_means);
            for (k, ordering) in ["ordered", "unordered"].iter().enumerate() {
                let (m, se, n) = mean_se(&kls[k]);
                // Paradigms every pair has (all, unless a seed lacks one).
                let full: Vec<usize> = (0..n_par)
                    .filter(|&p| by_pair[k].values().all(|v| v[p].is_finite()))
                    .collect();
                let mut c = Cells::new(
                    self.seeds.len(),
                    by_pair[k].keys().map(|&(a, b)| (a, Some(b))).collect(),
                    n_par,
                );
                for (u, v) in by_pair[k].values().enumerate() {
                    for &p in &full {
                        c.sums[u][p] = v[p];
                    }
                }
                for &p in &full {
                    c.rows[p] = 1.0;
                }
                let iv = c.jackknife().scaled(-1.0).interval();
                conv.s("size", size)
                    .u("step", *step)
                    .s("ordering", ordering);
                conv.f("conv", -m).f("se", se).u("n", n);
                conv.f("se_seeds", iv.se_seeds)
                    .f("se_paradigms", iv.se_docs)
                    .f("df", iv.df)
                    .f("ci_low", iv.low)
                    .f("ci_high", iv.high);
                conv.f("accuracy", acc_mean).f("accuracy_sd_seeds", acc_sd);
            }
        }
        let meta_kv = [("stage", NAME.to_string())];
        table::write(&ctx.out.join("accuracy.parquet"), &acc.batch()?, &meta_kv)?;
        table::write(&ctx.out.join("paradigms.parquet"), &par.batch()?, &meta_kv)?;
        table::write(&ctx.out.join("conv.parquet"), &conv.batch()?, &meta_kv)?;
        Ok(json!({ "points": cells.len(), "paradigms": meta.len() }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bernoulli_kl() {
        assert_eq!(kl2(0.3, 0.3), 0.0);
        let want = 0.9 * (0.9f64 / 0.6).ln() + 0.1 * (0.1f64 / 0.4).ln();
        assert!((kl2(0.9, 0.6) - want).abs() < 1e-15);
        assert!((kl2(1.0, 0.5) - 2f64.ln()).abs() < 1e-15);
    }
}
