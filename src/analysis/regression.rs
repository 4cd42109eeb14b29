//! Least squares in f64 for the regression of per-token KL on frequency,
//! part of speech and model size, fitted once per step.
//!
//! The designs are dummy-coded blocks (one column per tag, per size) beside
//! an intercept, so they are rank-deficient by construction; like the
//! authors' sklearn `LinearRegression` (centred columns, minimum-norm
//! `lstsq`), the solution here is the minimum-norm one, which makes each
//! complete dummy block sum to zero. The observations arrive as sparse rows
//! (five non-zeros of a hundred-odd columns) and are reduced to per-document
//! normal equations, so the jackknife refits (one per seed left out, one per
//! document left out) cost a p × p solve each, not a pass over the rows.

use super::intervals::Jackknife;

/// A design row: its non-zero (column, value) entries.
pub type Row = Vec<(usize, f64)>;

/// Sufficient statistics of least squares over a set of observations.
#[derive(Debug, Clone, PartialEq)]
pub struct Gram {
    p: usize,
    /// XᵀX, row-major p × p.
    xtx: Vec<f64>,
    xty: Vec<f64>,
    /// Column sums of X.
    xs: Vec<f64>,
    yy: f64,
    ys: f64,
    n: f64,
}

impl Gram {
    pub fn new(p: usize) -> Gram {
        Gram {
            p,
            xtx: vec![0.0; p * p],
            xty: vec![0.0; p],
            xs: vec![0.0; p],
            yy: 0.0,
            ys: 0.0,
            n: 0.0,
        }
    }

    pub fn add(&mut self, row: &Row, y: f64) {
        for &(j, a) in row {
            self.xty[j] += a * y;
            self.xs[j] += a;
            for &(k, b) in row {
                self.xtx[j * self.p + k] += a * b;
            }
        }
        self.yy += y * y;
        self.ys += y;
        self.n += 1.0;
    }

    /// The same X with another response (for the seed-left-out refits).
    fn with_y(&self, rows: &[Row], y: &[f64]) -> Gram {
        let mut g = Gram {
            xty: vec![0.0; self.p],
            yy: 0.0,
            ys: 0.0,
            ..self.clone()
        };
        for (row, &v) in rows.iter().zip(y) {
            for &(j, a) in row {
                g.xty[j] += a * v;
            }
            g.yy += v * v;
            g.ys += v;
        }
        g
    }

    fn minus(&self, o: &Gram) -> Gram {
        let d = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x - y).collect();
        Gram {
            p: self.p,
            xtx: d(&self.xtx, &o.xtx),
            xty: d(&self.xty, &o.xty),
            xs: d(&self.xs, &o.xs),
            yy: self.yy - o.yy,
            ys: self.ys - o.ys,
            n: self.n - o.n,
        }
    }
}

/// A fit: intercept (0 without one), coefficients, R² and observations.
#[derive(Debug, Clone, PartialEq)]
pub struct Fit {
    pub intercept: f64,
    pub coef: Vec<f64>,
    pub r2: f64,
    pub n: usize,
}

/// Minimum-norm least squares from the normal equations. With `intercept`
/// the columns and y are centred first and the intercept is ȳ − x̄ᵀβ
/// (sklearn's rule; the intercept is not part of the norm). None when
/// there are no observations.
pub fn min_norm(g: &Gram, intercept: bool) -> Option<Fit> {
    let p = g.p;
    if g.n < 1.0 {
        return None;
    }
    let (mut c, mut b, mut yy) = (g.xtx.clone(), g.xty.clone(), g.yy);
    if intercept {
        for j in 0..p {
            for k in 0..p {
                c[j * p + k] -= g.xs[j] * g.xs[k] / g.n;
            }
            b[j] -= g.xs[j] * g.ys / g.n;
        }
        yy -= g.ys * g.ys / g.n;
    }
    // Sequential Cholesky: a column whose residual pivot vanishes depends
    // on the kept ones before it.
    let scale = (0..p).map(|j| c[j * p + j]).fold(0.0, f64::max);
    let tol = 1e-10 * scale.max(f64::MIN_POSITIVE);
    let mut kept: Vec<usize> = Vec::new();
    let mut dep: Vec<usize> = Vec::new();
    // l[i][j] over positions in `kept`.
    let mut l: Vec<Vec<f64>> = Vec::new();
    for j in 0..p {
        let r: Vec<f64> = kept.iter().map(|&k| c[j * p + k]).collect();
        let w = forward(&l, &r);
        let d = c[j * p + j] - w.iter().map(|x| x * x).sum::<f64>();
        if d <= tol {
            dep.push(j);
            continue;
        }
        let mut row = w;
        row.push(d.sqrt());
        l.push(row);
        kept.push(j);
    }
    let bk: Vec<f64> = kept.iter().map(|&k| b[k]).collect();
    let sol = back(&l, &forward(&l, &bk));
    let mut beta = vec![0.0; p];
    for (i, &k) in kept.iter().enumerate() {
        beta[k] = sol[i];
    }
    // Null vectors n_j = e_j − Σ w_k e_k with C[K,K] w = C[K,j]; remove
    // β's component in their span: β −= N (NᵀN)⁻¹ Nᵀβ.
    if !dep.is_empty() {
        let null: Vec<Vec<f64>> = dep
            .iter()
            .map(|&j| {
                let r: Vec<f64> = kept.iter().map(|&k| c[k * p + j]).collect();
                let w = back(&l, &forward(&l, &r));
                let mut v = vec![0.0; p];
                v[j] = 1.0;
                for (i, &k) in kept.iter().enumerate() {
                    v[k] = -w[i];
                }
                v
            })
            .collect();
        let m = null.len();
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
        let ntn: Vec<Vec<f64>> = (0..m)
            .map(|i| (0..=i).map(|j| dot(&null[i], &null[j])).collect())
            .collect();
        let ln = cholesky_lower(&ntn)?;
        let ntb: Vec<f64> = null.iter().map(|v| dot(v, &beta)).collect();
        let a = back(&ln, &forward(&ln, &ntb));
        for (v, ai) in null.iter().zip(&a) {
            for (bj, vj) in beta.iter_mut().zip(v) {
                *bj -= ai * vj;
            }
        }
    }
    let fitted: f64 = (0..p)
        .map(|j| {
            (0..p)
                .map(|k| beta[j] * c[j * p + k] * beta[k])
                .sum::<f64>()
        })
        .sum();
    let rss = yy - 2.0 * beta.iter().zip(&b).map(|(x, y)| x * y).sum::<f64>() + fitted;
    let icpt = if intercept {
        (g.ys - beta.iter().zip(&g.xs).map(|(x, s)| x * s).sum::<f64>()) / g.n
    } else {
        0.0
    };
    Some(Fit {
        intercept: icpt,
        coef: beta,
        r2: if yy > 0.0 { 1.0 - rss / yy } else { f64::NAN },
        n: g.n as usize,
    })
}

/// Lower-triangular factor of a symmetric positive-definite matrix given
/// by its lower half (rows of growing length); None when singular.
fn cholesky_lower(a: &[Vec<f64>]) -> Option<Vec<Vec<f64>>> {
    let mut l: Vec<Vec<f64>> = Vec::new();
    for (j, row) in a.iter().enumerate() {
        let w = forward(&l, &row[..j]);
        let d = row[j] - w.iter().map(|x| x * x).sum::<f64>();
        if d <= 0.0 {
            return None;
        }
        let mut r = w;
        r.push(d.sqrt());
        l.push(r);
    }
    Some(l)
}

/// z with L z = b (L lower-triangular, row i of length i + 1).
fn forward(l: &[Vec<f64>], b: &[f64]) -> Vec<f64> {
    let mut z: Vec<f64> = Vec::with_capacity(b.len());
    for (i, bi) in b.iter().enumerate() {
        let s: f64 = (0..i).map(|k| l[i][k] * z[k]).sum();
        z.push((bi - s) / l[i][i]);
    }
    z
}

/// x with Lᵀ x = z.
fn back(l: &[Vec<f64>], z: &[f64]) -> Vec<f64> {
    let p = z.len();
    let mut x = vec![0.0; p];
    for i in (0..p).rev() {
        let s: f64 = (i + 1..p).map(|k| l[k][i] * x[k]).sum();
        x[i] = (z[i] - s) / l[i][i];
    }
    x
}

/// The observations of one fit, grouped for the jackknife.
pub struct Observations {
    pub p: usize,
    pub rows: Vec<Row>,
    pub y: Vec<f64>,
    /// Document of each observation, below `n_docs`.
    pub doc: Vec<usize>,
    pub n_docs: usize,
    /// `y_without_seed[k][i]`: observation i's response recomputed without
    /// seed k (NaN where undefined: the refit is skipped).
    pub y_without_seed: Vec<Vec<f64>>,
}

/// The fit and, per coefficient (intercept first when fitted), its
/// leave-one-seed-out and leave-one-document-out replicates.
pub fn fit_jackknife(o: &Observations, intercept: bool) -> Option<(Fit, Vec<Jackknife>)> {
    let mut per_doc = vec![Gram::new(o.p); o.n_docs];
    let mut all = Gram::new(o.p);
    for ((row, &y), &d) in o.rows.iter().zip(&o.y).zip(&o.doc) {
        per_doc[d].add(row, y);
        all.add(row, y);
    }
    let fit = min_norm(&all, intercept)?;
    let flat = |f: &Fit| -> Vec<f64> {
        let mut v = if intercept { vec![f.intercept] } else { vec![] };
        v.extend(&f.coef);
        v
    };
    let est = flat(&fit);
    let nan = vec![f64::NAN; est.len()];
    let refit = |g: &Gram| min_norm(g, intercept).map_or(nan.clone(), |f| flat(&f));
    let seeds: Vec<Vec<f64>> = o
        .y_without_seed
        .iter()
        .map(|y| {
            if y.iter().any(|v| !v.is_finite()) {
                nan.clone()
            } else {
                refit(&all.with_y(&o.rows, y))
            }
        })
        .collect();
    let docs: Vec<Vec<f64>> = per_doc
        .iter()
        .map(|g| {
            if g.n == 0.0 {
                est.clone()
            } else {
                refit(&all.minus(g))
            }
        })
        .collect();
    let jk = (0..est.len())
        .map(|j| Jackknife {
            est: est[j],
            seeds: seeds.iter().map(|r| r[j]).collect(),
            docs: docs.iter().map(|r| r[j]).collect(),
        })
        .collect();
    Some((fit, jk))
}

#[cfg(test)]
mod tests;
