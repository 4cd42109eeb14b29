//! `seeds.parquet` and `seed_outliers.parquet`: which seed stands apart.
//!
//! Per (size, step) the matrix of mean KL for every ordered seed pair, and
//! per seed its mean divergence to the others d_s (the mean over the
//! ordered pairs that contain it, in either role). The rule, after
//! PolyPythias' outlier seeds: a seed *stands apart* at a step when its
//! robust z, (d_s − median d) / max(1.4826·MAD(d), 5% of median d), exceeds
//! `Z_APART`; it is *flagged* at a step when it stands apart there and at a
//! neighbouring step of the suite (persistent, not one noisy checkpoint).
//! Only seeds farther from the rest count: a seed closer to every other one
//! is not an outlier of interest.

use std::collections::BTreeMap;

use polars::prelude::*;

use super::conv::StepKl;
use super::frames::{perr, write};
use super::{AggregateJob, Clusters};
use crate::analysis::stats::quantile;
use crate::engine::JobCtx;
use crate::error::StageError;

/// A seed's (d_s, robust z) at a step; None when it has no pair there.
type SeedZ = Option<(f64, f64)>;

/// Robust z above which a seed stands apart at a step.
pub const Z_APART: f64 = 3.5;

/// The robust z of each value: (x − median) / max(1.4826·MAD, 5% of |median|).
pub fn robust_z(d: &[f64]) -> Vec<f64> {
    let med = |v: &[f64]| {
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        quantile(&s, 0.5)
    };
    let m = med(d);
    let dev: Vec<f64> = d.iter().map(|x| (x - m).abs()).collect();
    let scale = (1.4826 * med(&dev)).max(0.05 * m.abs());
    d.iter()
        .map(|x| if scale > 0.0 { (x - m) / scale } else { 0.0 })
        .collect()
}

impl AggregateJob {
    /// Writes both tables; returns the flagged (size, seed, step)s.
    pub(super) fn seeds(
        &self,
        ctx: &JobCtx,
        steps: &[StepKl],
        cl: &Clusters,
    ) -> Result<usize, StageError> {
        let (mut m_size, mut m_step, mut m_a, mut m_b, mut m_kl) =
            (vec![], vec![], vec![], vec![], vec![]);
        // (size, step) → per seed (d_s, z_s); None for a seed without pairs.
        let mut per: BTreeMap<(String, u32), Vec<SeedZ>> = BTreeMap::new();
        for s in steps {
            let n: f64 = s.cells.rows.iter().sum();
            let mut d = vec![(0.0, 0usize); cl.seeds.len()];
            for (u, &(a, b)) in s.cells.units.iter().enumerate() {
                let Some(b) = b else { continue };
                let kl = s.cells.sums[u].iter().sum::<f64>() / n;
                m_size.push(s.size.clone());
                m_step.push(s.step);
                m_a.push(cl.seeds[a].clone());
                m_b.push(cl.seeds[b].clone());
                m_kl.push(kl);
                for x in [a, b] {
                    d[x].0 += kl;
                    d[x].1 += 1;
                }
            }
            let present: Vec<usize> = (0..d.len()).filter(|&k| d[k].1 > 0).collect();
            let means: Vec<f64> = present.iter().map(|&k| d[k].0 / d[k].1 as f64).collect();
            let z = robust_z(&means);
            let mut row = vec![None; cl.seeds.len()];
            for (i, &k) in present.iter().enumerate() {
                row[k] = Some((means[i], z[i]));
            }
            per.insert((s.size.clone(), s.step), row);
        }
        let mut matrix = df!(
            "size" => m_size, "step" => m_step, "seed_a" => m_a, "seed_b" => m_b, "kl" => m_kl
        )
        .map_err(perr)?;
        write(ctx, "seeds.parquet", &mut matrix)?;

        let (mut o_size, mut o_step, mut o_seed, mut o_d, mut o_z, mut o_apart, mut o_flag) =
            (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
        let mut flagged = 0;
        let keys: Vec<&(String, u32)> = per.keys().collect();
        for (i, key) in keys.iter().enumerate() {
            let apart = |j: usize, k: usize| {
                keys.get(j)
                    .filter(|o| o.0 == key.0)
                    .and_then(|o| per[*o][k])
                    .is_some_and(|(_, z)| z > Z_APART)
            };
            for (k, v) in per[*key].iter().enumerate() {
                let Some((d, z)) = *v else { continue };
                let here = z > Z_APART;
                let flag = here && ((i > 0 && apart(i - 1, k)) || apart(i + 1, k));
                flagged += usize::from(flag);
                o_size.push(key.0.clone());
                o_step.push(key.1);
                o_seed.push(cl.seeds[k].clone());
                o_d.push(d);
                o_z.push(z);
                o_apart.push(here);
                o_flag.push(flag);
            }
        }
        let mut out = df!(
            "size" => o_size, "step" => o_step, "seed" => o_seed, "mean_kl" => o_d,
            "robust_z" => o_z, "apart" => o_apart, "flagged" => o_flag
        )
        .map_err(perr)?;
        write(ctx, "seed_outliers.parquet", &mut out)?;
        Ok(flagged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn robust_z_by_hand() {
        // Median 2, deviations 1, 0, 0, 1, 8: MAD 1, scale 1.4826.
        let z = robust_z(&[1.0, 2.0, 2.0, 3.0, 10.0]);
        assert!((z[4] - 8.0 / 1.4826).abs() < 1e-12);
        assert!((z[0] + 1.0 / 1.4826).abs() < 1e-12);
        // Identical values: scale floored at 5% of the median, z = 0.
        assert_eq!(robust_z(&[0.2; 4]), vec![0.0; 4]);
        // MAD 0 but one value far: the floor keeps z finite.
        let z = robust_z(&[1.0, 1.0, 1.0, 2.0]);
        assert!((z[3] - 1.0 / 0.05).abs() < 1e-12);
    }
}
