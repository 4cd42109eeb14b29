//! Ordinary least squares in f64: the paper's regression of per-token KL on
//! log frequency, part of speech and model size, fitted once per step.
//! Twelve-odd regressors, so the normal equations with a Cholesky factor
//! are plenty (no linear-algebra crate needed); a near-zero pivot marks the
//! design singular instead of returning noise.

/// A fitted model: coefficients, their classical standard errors
/// (σ̂² (XᵀX)⁻¹, σ̂² = RSS / (n − p)) and R².
#[derive(Debug, Clone, PartialEq)]
pub struct Fit {
    pub coef: Vec<f64>,
    pub se: Vec<f64>,
    pub r2: f64,
    pub n: usize,
}

/// Least squares of `y` on the columns of `x` (rows × p, row-major, no
/// implicit intercept). None when n ≤ p or XᵀX is singular.
pub fn ols(x: &[Vec<f64>], y: &[f64]) -> Option<Fit> {
    let n = y.len();
    let p = x.first().map_or(0, Vec::len);
    if n <= p || p == 0 || x.len() != n {
        return None;
    }
    let mut xtx = vec![vec![0.0; p]; p];
    let mut xty = vec![0.0; p];
    for (row, &yi) in x.iter().zip(y) {
        for j in 0..p {
            xty[j] += row[j] * yi;
            for k in 0..=j {
                xtx[j][k] += row[j] * row[k];
            }
        }
    }
    let l = cholesky(&xtx)?;
    let coef = solve(&l, &xty);
    let mean = y.iter().sum::<f64>() / n as f64;
    let (mut rss, mut tss) = (0.0, 0.0);
    for (row, &yi) in x.iter().zip(y) {
        let fit: f64 = row.iter().zip(&coef).map(|(a, b)| a * b).sum();
        rss += (yi - fit) * (yi - fit);
        tss += (yi - mean) * (yi - mean);
    }
    let sigma2 = rss / (n - p) as f64;
    // Diagonal of (XᵀX)⁻¹: solve for each unit vector.
    let se = (0..p)
        .map(|j| {
            let mut e = vec![0.0; p];
            e[j] = 1.0;
            (sigma2 * solve(&l, &e)[j]).sqrt()
        })
        .collect();
    Some(Fit {
        coef,
        se,
        r2: if tss > 0.0 { 1.0 - rss / tss } else { f64::NAN },
        n,
    })
}

/// Lower-triangular L with L Lᵀ = A (A symmetric, lower half filled).
fn cholesky(a: &[Vec<f64>]) -> Option<Vec<Vec<f64>>> {
    let p = a.len();
    let scale = (0..p).map(|i| a[i][i]).fold(0.0, f64::max);
    let mut l = vec![vec![0.0; p]; p];
    for j in 0..p {
        let d = a[j][j] - (0..j).map(|k| l[j][k] * l[j][k]).sum::<f64>();
        if d <= 1e-12 * scale.max(f64::MIN_POSITIVE) {
            return None;
        }
        l[j][j] = d.sqrt();
        for i in j + 1..p {
            let s = a[i][j] - (0..j).map(|k| l[i][k] * l[j][k]).sum::<f64>();
            l[i][j] = s / l[j][j];
        }
    }
    Some(l)
}

/// x with L Lᵀ x = b.
fn solve(l: &[Vec<f64>], b: &[f64]) -> Vec<f64> {
    let p = b.len();
    let mut z = vec![0.0; p];
    for i in 0..p {
        z[i] = (b[i] - (0..i).map(|k| l[i][k] * z[k]).sum::<f64>()) / l[i][i];
    }
    let mut x = vec![0.0; p];
    for i in (0..p).rev() {
        x[i] = (z[i] - (i + 1..p).map(|k| l[k][i] * x[k]).sum::<f64>()) / l[i][i];
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// (XᵀX)⁻¹ by Gauss–Jordan elimination with partial pivoting: a
    /// reference independent of the Cholesky path.
    fn inverse(a: &[Vec<f64>]) -> Vec<Vec<f64>> {
        let p = a.len();
        let mut m: Vec<Vec<f64>> = a
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let mut r = r.clone();
                r.extend((0..p).map(|j| f64::from(u8::from(i == j))));
                r
            })
            .collect();
        for c in 0..p {
            let piv = (c..p)
                .max_by(|&i, &j| m[i][c].abs().total_cmp(&m[j][c].abs()))
                .unwrap();
            m.swap(c, piv);
            let d = m[c][c];
            m[c].iter_mut().for_each(|v| *v /= d);
            for i in (0..p).filter(|&i| i != c) {
                let f = m[i][c];
                let rc = m[c].clone();
                m[i].iter_mut().zip(&rc).for_each(|(v, r)| *v -= f * r);
            }
        }
        m.into_iter().map(|r| r[p..].to_vec()).collect()
    }

    /// A design like the paper's: two size intercepts, log10 frequency and
    /// two 0/1 PoS indicators.
    fn design(n: usize, rng: &mut impl Rng) -> Vec<Vec<f64>> {
        (0..n)
            .map(|i| {
                let big = (i % 2) as f64;
                vec![
                    1.0 - big,
                    big,
                    rng.random_range(0.0..6.0),
                    f64::from(u8::from(rng.random_bool(0.3))),
                    f64::from(u8::from(rng.random_bool(0.2))),
                ]
            })
            .collect()
    }

    #[test]
    fn recovers_known_coefficients_exactly_without_noise() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let beta = [2.0, 1.5, -0.25, 0.4, -0.1];
        let x = design(200, &mut rng);
        let y: Vec<f64> = x
            .iter()
            .map(|r| r.iter().zip(&beta).map(|(a, b)| a * b).sum())
            .collect();
        let f = ols(&x, &y).unwrap();
        for (c, b) in f.coef.iter().zip(beta) {
            assert!((c - b).abs() < 1e-10, "{c} vs {b}");
        }
        assert!(f.se.iter().all(|s| *s < 1e-6), "{:?}", f.se);
        assert!((f.r2 - 1.0).abs() < 1e-12);
    }

    #[test]
    fn coefficients_and_standard_errors_match_an_independent_reference() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let beta = [2.0, 1.5, -0.25, 0.4, -0.1];
        let n = 5000;
        let x = design(n, &mut rng);
        let y: Vec<f64> = x
            .iter()
            .map(|r| {
                let e: f64 = rng.sample::<f64, _>(rand_distr::StandardNormal) * 0.3;
                r.iter().zip(&beta).map(|(a, b)| a * b).sum::<f64>() + e
            })
            .collect();
        let f = ols(&x, &y).unwrap();
        // Reference: β̂ = (XᵀX)⁻¹Xᵀy by Gauss–Jordan, SE from its diagonal.
        let p = beta.len();
        let mut xtx = vec![vec![0.0; p]; p];
        let mut xty = vec![0.0; p];
        for (r, yi) in x.iter().zip(&y) {
            for j in 0..p {
                xty[j] += r[j] * yi;
                for k in 0..p {
                    xtx[j][k] += r[j] * r[k];
                }
            }
        }
        let inv = inverse(&xtx);
        let b: Vec<f64> = (0..p)
            .map(|j| (0..p).map(|k| inv[j][k] * xty[k]).sum())
            .collect();
        let rss: f64 = x
            .iter()
            .zip(&y)
            .map(|(r, yi)| {
                let e = yi - r.iter().zip(&b).map(|(a, c)| a * c).sum::<f64>();
                e * e
            })
            .sum();
        let s2 = rss / (n - p) as f64;
        for j in 0..p {
            assert!((f.coef[j] - b[j]).abs() < 1e-9, "coef {j}");
            let se = (s2 * inv[j][j]).sqrt();
            assert!((f.se[j] - se).abs() < 1e-9 * se.max(1.0), "se {j}");
            // And the truth lies within 4 SE.
            assert!((f.coef[j] - beta[j]).abs() < 4.0 * f.se[j], "β{j}");
        }
    }

    #[test]
    fn singular_designs_and_too_few_rows_give_none() {
        let x = vec![vec![1.0, 2.0], vec![2.0, 4.0], vec![3.0, 6.0]];
        assert!(ols(&x, &[1.0, 2.0, 3.0]).is_none());
        assert!(ols(&[vec![1.0, 0.0]], &[1.0]).is_none());
    }
}
