//! Seed- and document-aware uncertainty (the MultiBERTs multi-bootstrap's
//! question: what would another draw of seeds and of evaluation text give?).
//!
//! An estimate is an average over units (ordered seed pairs, or seeds) and
//! over rows that cluster in documents. Its two sources of uncertainty are
//! crossed, so the interval is a two-way delete-one jackknife:
//!
//! - seeds: the estimate recomputed without seed k (every pair containing k
//!   leaves with it), for each of the suite's K seeds;
//! - documents: the estimate recomputed without document d's rows, for each
//!   of the corpus's D documents (a document without rows in a cell leaves
//!   the estimate unchanged, the domain-estimation rule);
//!
//! V = V_seeds + V_docs, each (n − 1)/n Σ (θ₍₋ᵢ₎ − θ̄)²; the interval is
//! θ ± t·√V with Satterthwaite's degrees of freedom from (V_seeds, K − 1) and
//! (V_docs, D − 1), so it widens to t(K − 1) when seeds dominate. A plain
//! percentile bootstrap over seeds and documents under-covers with 5 seeds;
//! this one covers 95% in the simulations of the tests below.
//!
//! Replicate draws of seeds and documents (with replacement) are also made
//! here, for statistics without a jackknife (where a phase boundary falls).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use statrs::distribution::{ContinuousCDF, StudentsT};

/// Confidence level of every interval seedconv reports.
pub const CONFIDENCE: f64 = 0.95;

/// An estimate with its leave-one-seed-out and leave-one-document-out
/// replicates (NaN where a replicate is not defined, e.g. a pair statistic
/// of two seeds without one of them).
#[derive(Debug, Clone, PartialEq)]
pub struct Jackknife {
    pub est: f64,
    pub seeds: Vec<f64>,
    pub docs: Vec<f64>,
}

/// A reported interval: estimate, SE and its two parts, Satterthwaite's
/// degrees of freedom, the 95% t interval and the two-sided p-value of
/// "the true value is 0" (for differences).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interval {
    pub est: f64,
    pub se: f64,
    pub se_seeds: f64,
    pub se_docs: f64,
    pub df: f64,
    pub low: f64,
    pub high: f64,
    pub p: f64,
}

/// Variance components with their degrees of freedom.
type Components = Vec<(f64, f64)>;

/// Jackknife variance of finite replicates, with its degrees of freedom
/// (None below two).
fn jk_var(reps: &[f64]) -> Option<(f64, f64)> {
    let v: Vec<f64> = reps.iter().copied().filter(|x| x.is_finite()).collect();
    let n = v.len() as f64;
    if v.len() < 2 {
        return None;
    }
    let m = v.iter().sum::<f64>() / n;
    let ss: f64 = v.iter().map(|x| (x - m) * (x - m)).sum();
    Some(((n - 1.0) / n * ss, n - 1.0))
}

/// The interval of an estimate from independent variance components
/// (variance, degrees of freedom): Satterthwaite's df, then t.
pub fn interval(est: f64, seeds: &[(f64, f64)], docs: &[(f64, f64)]) -> Interval {
    let vs: f64 = seeds.iter().map(|c| c.0).sum();
    let vd: f64 = docs.iter().map(|c| c.0).sum();
    let parts: Vec<(f64, f64)> = seeds.iter().chain(docs).copied().collect();
    let v = vs + vd;
    let se = v.sqrt();
    let nan = f64::NAN;
    let na = |x: &[(f64, f64)], v: f64| if x.is_empty() { nan } else { v.sqrt() };
    if parts.is_empty() || !est.is_finite() {
        return Interval {
            est,
            se: nan,
            se_seeds: nan,
            se_docs: nan,
            df: nan,
            low: nan,
            high: nan,
            p: nan,
        };
    }
    let denom: f64 = parts.iter().map(|(v, d)| v * v / d).sum();
    let df = if denom > 0.0 {
        v * v / denom
    } else {
        parts.iter().map(|c| c.1).fold(f64::INFINITY, f64::min)
    };
    let (t, p) = if v > 0.0 {
        let dist = StudentsT::new(0.0, 1.0, df).expect("df > 0");
        let t = dist.inverse_cdf(0.5 + CONFIDENCE / 2.0);
        (t, 2.0 * dist.sf((est / se).abs()))
    } else {
        (0.0, if est == 0.0 { 1.0 } else { 0.0 })
    };
    Interval {
        est,
        se,
        se_seeds: na(seeds, vs),
        se_docs: na(docs, vd),
        df,
        low: est - t * se,
        high: est + t * se,
        p,
    }
}

impl Jackknife {
    fn parts(&self) -> (Components, Components) {
        (
            jk_var(&self.seeds).into_iter().collect(),
            jk_var(&self.docs).into_iter().collect(),
        )
    }

    pub fn interval(&self) -> Interval {
        let (s, d) = self.parts();
        interval(self.est, &s, &d)
    }

    /// The same statistic times `k` (e.g. −1: KL → convergence).
    pub fn scaled(&self, k: f64) -> Jackknife {
        let m = |v: &[f64]| v.iter().map(|x| x * k).collect();
        Jackknife {
            est: self.est * k,
            seeds: m(&self.seeds),
            docs: m(&self.docs),
        }
    }
}

/// How the two arms of a difference share their draws.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pairing {
    /// Seed k of one arm is seed k of the other (same name).
    pub seeds: bool,
    /// Same documents, in the same order.
    pub docs: bool,
}

pub const PAIRED: Pairing = Pairing {
    seeds: true,
    docs: true,
};

/// a − b with its interval and p-value. A shared source is differenced
/// replicate by replicate (its variation cancels where both arms move
/// together); an unshared one adds the two arms' variances.
pub fn difference(a: &Jackknife, b: &Jackknife, pairing: Pairing) -> Interval {
    let diff = |x: &[f64], y: &[f64]| -> Vec<f64> { x.iter().zip(y).map(|(p, q)| p - q).collect() };
    let (sa, da) = a.parts();
    let (sb, db) = b.parts();
    let seeds: Vec<(f64, f64)> = if pairing.seeds && a.seeds.len() == b.seeds.len() {
        jk_var(&diff(&a.seeds, &b.seeds)).into_iter().collect()
    } else {
        sa.into_iter().chain(sb).collect()
    };
    let docs: Vec<(f64, f64)> = if pairing.docs && a.docs.len() == b.docs.len() {
        jk_var(&diff(&a.docs, &b.docs)).into_iter().collect()
    } else {
        da.into_iter().chain(db).collect()
    };
    interval(a.est - b.est, &seeds, &docs)
}

/// Per-document sums of a per-row value, for each unit: an ordered seed
/// pair (a, Some(b)) or a seed (a, None). Every unit has the same rows;
/// `rows[d]` of them in document d.
#[derive(Debug, Clone, PartialEq)]
pub struct Cells {
    /// Seeds in the suite (unit seeds are indices below it).
    pub k: usize,
    pub units: Vec<(usize, Option<usize>)>,
    /// `sums[unit][doc]`.
    pub sums: Vec<Vec<f64>>,
    pub rows: Vec<f64>,
}

impl Cells {
    pub fn new(k: usize, units: Vec<(usize, Option<usize>)>, docs: usize) -> Cells {
        Cells {
            k,
            sums: vec![vec![0.0; docs]; units.len()],
            units,
            rows: vec![0.0; docs],
        }
    }

    fn involves(&self, u: usize, seed: usize) -> bool {
        let (a, b) = self.units[u];
        a == seed || b == Some(seed)
    }

    /// The mean over units of each unit's mean over rows.
    pub fn mean(&self) -> f64 {
        let n: f64 = self.rows.iter().sum();
        let s: f64 = self.sums.iter().flatten().sum();
        s / (n * self.units.len() as f64)
    }

    /// The estimate and its leave-one-out replicates.
    pub fn jackknife(&self) -> Jackknife {
        let unit_tot: Vec<f64> = self.sums.iter().map(|s| s.iter().sum()).collect();
        let n: f64 = self.rows.iter().sum();
        let total: f64 = unit_tot.iter().sum();
        let seeds = (0..self.k)
            .map(|k| {
                let keep: Vec<usize> = (0..self.units.len())
                    .filter(|&u| !self.involves(u, k))
                    .collect();
                if keep.is_empty() {
                    return f64::NAN;
                }
                keep.iter().map(|&u| unit_tot[u]).sum::<f64>() / (n * keep.len() as f64)
            })
            .collect();
        let docs = (0..self.rows.len())
            .map(|d| {
                let out: f64 = self.sums.iter().map(|s| s[d]).sum();
                let left = n - self.rows[d];
                if left <= 0.0 {
                    f64::NAN
                } else {
                    (total - out) / (left * self.units.len() as f64)
                }
            })
            .collect();
        Jackknife {
            est: total / (n * self.units.len() as f64),
            seeds,
            docs,
        }
    }

    /// The estimate on one replicate draw: units rebuilt from the drawn
    /// seeds (a pair of two draws of the same seed is left out: a seed's KL
    /// to itself is 0, not a draw of the between-seed divergence), rows
    /// weighted by how often their document was drawn. NaN when the draw
    /// leaves no unit or no row.
    pub fn replicate(&self, draw: &Draw) -> f64 {
        let k = self.k;
        // Weighted per-unit sums, looked up by seed (pair).
        let mut by_seed: Vec<Option<f64>> = vec![None; k * (k + 1)];
        for (u, &(a, b)) in self.units.iter().enumerate() {
            let s: f64 = self.sums[u]
                .iter()
                .zip(&draw.docs)
                .map(|(x, w)| x * w)
                .sum();
            by_seed[a * (k + 1) + b.unwrap_or(k)] = Some(s);
        }
        let n: f64 = self.rows.iter().zip(&draw.docs).map(|(x, w)| x * w).sum();
        let (mut s, mut m) = (0.0, 0usize);
        let pairs = self.units.first().is_some_and(|u| u.1.is_some());
        for &a in &draw.seeds {
            if pairs {
                for &b in &draw.seeds {
                    if a != b {
                        if let Some(v) = by_seed[a * (k + 1) + b] {
                            s += v;
                            m += 1;
                        }
                    }
                }
            } else if let Some(v) = by_seed[a * (k + 1) + k] {
                s += v;
                m += 1;
            }
        }
        if m == 0 || n <= 0.0 {
            return f64::NAN;
        }
        s / (n * m as f64)
    }
}

/// One replicate draw: K seed indices and a weight (times drawn) per
/// document, both with replacement.
#[derive(Debug, Clone, PartialEq)]
pub struct Draw {
    pub seeds: Vec<usize>,
    pub docs: Vec<f64>,
}

/// `b` deterministic draws for a suite of `k` seeds and `d` documents.
pub fn draws(k: usize, d: usize, b: usize, seed: u64) -> Vec<Draw> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..b)
        .map(|_| {
            let seeds = (0..k).map(|_| rng.random_range(0..k)).collect();
            let mut docs = vec![0.0; d];
            for _ in 0..d {
                docs[rng.random_range(0..d)] += 1.0;
            }
            Draw { seeds, docs }
        })
        .collect()
}

/// All ordered pairs of `k` seeds, (0, 1), (0, 2), …, (k−1, k−2).
pub fn ordered_pairs(k: usize) -> Vec<(usize, Option<usize>)> {
    (0..k)
        .flat_map(|a| (0..k).filter(move |&b| b != a).map(move |b| (a, Some(b))))
        .collect()
}

#[cfg(test)]
mod tests;
