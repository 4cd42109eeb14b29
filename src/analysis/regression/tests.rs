//! The minimum-norm solver against independent solves (Gauss–Jordan on an
//! effect-coded design, and the ridge limit), on the paper sample's real
//! tags and counts; the jackknife's coverage on simulated suites.

use super::*;
use crate::analysis::intervals::ordered_pairs;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

/// x with A x = b by Gauss–Jordan elimination with partial pivoting (a
/// reference independent of the Cholesky path).
fn gauss_jordan(a: &[Vec<f64>], b: &[f64]) -> Vec<f64> {
    let p = a.len();
    let mut m: Vec<Vec<f64>> = a
        .iter()
        .zip(b)
        .map(|(r, &v)| {
            let mut r = r.clone();
            r.push(v);
            r
        })
        .collect();
    for c in 0..p {
        let piv = (c..p)
            .max_by(|&i, &j| m[i][c].abs().total_cmp(&m[j][c].abs()))
            .unwrap();
        m.swap(c, piv);
        let d = m[c][c];
        assert!(d.abs() > 1e-12, "singular reference system");
        m[c].iter_mut().for_each(|v| *v /= d);
        for i in (0..p).filter(|&i| i != c) {
            let f = m[i][c];
            let rc = m[c].clone();
            m[i].iter_mut().zip(&rc).for_each(|(v, r)| *v -= f * r);
        }
    }
    m.into_iter().map(|r| r[p]).collect()
}

fn dense(rows: &[Row], p: usize) -> Vec<Vec<f64>> {
    rows.iter()
        .map(|r| {
            let mut v = vec![0.0; p];
            for &(j, a) in r {
                v[j] += a;
            }
            v
        })
        .collect()
}

fn gram(rows: &[Row], y: &[f64], p: usize) -> Gram {
    let mut g = Gram::new(p);
    for (r, &v) in rows.iter().zip(y) {
        g.add(r, v);
    }
    g
}

#[test]
fn full_rank_least_squares_recovers_known_coefficients() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let beta = [2.0, 1.5, -0.25, 0.4, -0.1];
    let rows: Vec<Row> = (0..200)
        .map(|i| {
            let big = (i % 2) as f64;
            vec![
                (0, 1.0 - big),
                (1, big),
                (2, rng.random_range(0.0..6.0)),
                (3, f64::from(u8::from(rng.random_bool(0.3)))),
                (4, f64::from(u8::from(rng.random_bool(0.2)))),
            ]
        })
        .collect();
    let y: Vec<f64> = rows
        .iter()
        .map(|r| r.iter().map(|&(j, a)| a * beta[j]).sum())
        .collect();
    let f = min_norm(&gram(&rows, &y, 5), false).unwrap();
    for (c, b) in f.coef.iter().zip(beta) {
        assert!((c - b).abs() < 1e-10, "{c} vs {b}");
    }
    assert!((f.r2 - 1.0).abs() < 1e-12);
}

/// Row x of the paper sample: target token x + 1 after context token x.
struct PaperRows {
    log_count: Vec<f64>,
    target: Vec<usize>,
    context: Vec<usize>,
    doc: Vec<usize>,
    n_tags: usize,
    n_docs: usize,
}

fn paper_rows() -> PaperRows {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/paper_sample");
    let read = |f: &str| std::fs::read(dir.join(f)).unwrap();
    // float64 counts, as the authors saved them.
    let counts: Vec<f64> = npyz::NpyFile::new(&read("frequency_count.npy")[..])
        .unwrap()
        .into_vec()
        .unwrap();
    let ids: Vec<i64> = npyz::NpyFile::new(&read("input_text_encoded.npy")[..])
        .unwrap()
        .into_vec()
        .unwrap();
    let tags: Vec<(String, String)> =
        serde_json::from_slice(&read("pos_tagged_tokens.json")).unwrap();
    let mut names: Vec<&str> = tags.iter().map(|t| t.1.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let idx = |x: usize| names.binary_search(&tags[x].1.as_str()).unwrap();
    let mut out = PaperRows {
        log_count: vec![],
        target: vec![],
        context: vec![],
        doc: vec![],
        n_tags: names.len(),
        n_docs: 0,
    };
    let mut doc = 0;
    for x in 0..ids.len() - 1 {
        if x > 0 && tags[x].0 == "<|endoftext|>" {
            doc += 1;
        }
        out.log_count
            .push(counts[ids[x + 1] as usize].round().max(1.0).log10());
        out.target.push(idx(x + 1));
        out.context.push(idx(x));
        out.doc.push(doc);
    }
    out.n_docs = doc + 1;
    out
}

#[test]
fn paper_design_on_the_paper_sample_is_the_minimum_norm_solution() {
    let pr = paper_rows();
    // Ten documents, each ending in <|endoftext|> (and one more marker at the end).
    assert!(pr.n_docs >= 10, "{}", pr.n_docs);
    let (t, s) = (pr.n_tags, 3);
    // Columns: log10 count, target tags, context tags, sizes.
    let p = 1 + 2 * t + s;
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let tag_fx: Vec<f64> = (0..2 * t).map(|_| rng.random_range(-0.5..0.5)).collect();
    let (mut rows, mut y) = (Vec::new(), Vec::new());
    for size in 0..s {
        for i in 0..pr.target.len() {
            rows.push(vec![
                (0, pr.log_count[i]),
                (1 + pr.target[i], 1.0),
                (1 + t + pr.context[i], 1.0),
                (1 + 2 * t + size, 1.0),
            ]);
            y.push(
                2.0 - 0.3 * size as f64 - 0.1 * pr.log_count[i]
                    + tag_fx[pr.target[i]]
                    + tag_fx[t + pr.context[i]]
                    + rng.random_range(-0.4..0.4),
            );
        }
    }
    let f = min_norm(&gram(&rows, &y, p), true).unwrap();
    // Each complete dummy block sums to zero (tags present in the sample).
    let block = |lo: usize, n: usize| f.coef[lo..lo + n].iter().sum::<f64>();
    assert!(block(1, t).abs() < 1e-10, "{}", block(1, t));
    assert!(block(1 + t, t).abs() < 1e-10);
    assert!(block(1 + 2 * t, s).abs() < 1e-12);
    // δ_s = size mean − overall mean (every row once per size).
    let n = pr.target.len();
    let all = y.iter().sum::<f64>() / y.len() as f64;
    for size in 0..s {
        let m = y[size * n..(size + 1) * n].iter().sum::<f64>() / n as f64;
        let d = f.coef[1 + 2 * t + size];
        assert!(
            (d - (m - all)).abs() < 1e-12,
            "δ_{size}: {d} vs {}",
            m - all
        );
    }
    // Independent solve: each block effect-coded (last level = −Σ others),
    // the full-rank system by Gauss–Jordan, then mapped back.
    let x = dense(&rows, p);
    let blocks = [(1, t), (1 + t, t), (1 + 2 * t, s)];
    let reduced = |r: &[f64]| -> Vec<f64> {
        let mut v = vec![1.0, r[0]];
        for &(lo, m) in &blocks {
            v.extend((0..m - 1).map(|j| r[lo + j] - r[lo + m - 1]));
        }
        v
    };
    let xr: Vec<Vec<f64>> = x.iter().map(|r| reduced(r)).collect();
    let q = xr[0].len();
    let mut a = vec![vec![0.0; q]; q];
    let mut b = vec![0.0; q];
    for (r, &v) in xr.iter().zip(&y) {
        for j in 0..q {
            b[j] += r[j] * v;
            for k in 0..q {
                a[j][k] += r[j] * r[k];
            }
        }
    }
    let g = gauss_jordan(&a, &b);
    assert!(
        (f.intercept - g[0]).abs() < 1e-9,
        "{} {}",
        f.intercept,
        g[0]
    );
    assert!(
        (f.coef[0] - g[1]).abs() < 1e-9,
        "α: {} vs {}",
        f.coef[0],
        g[1]
    );
    let mut at = 2;
    for &(lo, m) in &blocks {
        let free = &g[at..at + m - 1];
        for j in 0..m {
            let want = if j + 1 < m {
                free[j]
            } else {
                -free.iter().sum::<f64>()
            };
            assert!((f.coef[lo + j] - want).abs() < 1e-9, "column {}", lo + j);
        }
        at += m - 1;
    }
}

#[test]
fn rank_deficient_design_matches_the_ridge_limit() {
    // Columns 2 = 0 + 1 and 4 = 3 exactly, column 5 all zero: the
    // minimum-norm solution is the limit of ridge solutions as λ → 0.
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let (mut rows, mut y) = (Vec::new(), Vec::new());
    for _ in 0..300 {
        let (a, b, c) = (
            rng.random_range(-1.0..1.0),
            rng.random_range(-1.0..1.0),
            rng.random_range(-1.0..1.0),
        );
        rows.push(vec![
            (0, a),
            (1, b),
            (2, a + b),
            (3, c),
            (4, c),
            (6, rng.random_range(-1.0..1.0)),
        ]);
        y.push(0.3 * a - 0.7 * b + 1.1 * c + rng.random_range(-0.1..0.1));
    }
    let p = 7;
    let f = min_norm(&gram(&rows, &y, p), false).unwrap();
    let x = dense(&rows, p);
    let lambda = 1e-7;
    let mut a = vec![vec![0.0; p]; p];
    let mut b = vec![0.0; p];
    for (r, &v) in x.iter().zip(&y) {
        for j in 0..p {
            b[j] += r[j] * v;
            for k in 0..p {
                a[j][k] += r[j] * r[k];
            }
        }
    }
    for (j, row) in a.iter_mut().enumerate() {
        row[j] += lambda;
    }
    let ridge = gauss_jordan(&a, &b);
    for (j, (c, r)) in f.coef.iter().zip(&ridge).enumerate() {
        assert!((c - r).abs() < 1e-6, "{j}: {c} vs {r}");
    }
    assert_eq!(f.coef[5], 0.0);
    assert!((f.coef[3] - f.coef[4]).abs() < 1e-9);
}

#[test]
fn jackknife_interval_of_a_coefficient_covers_the_truth() {
    // Per (pair, row): KL = 1 + (β + w_a + w_b + s_d)·x + u_a + v_b + g_d + e,
    // x a frequency-like covariate; the fit regresses each row's mean over
    // pairs on [1, x]; the truth of the slope is β.
    let beta = -0.2;
    let (k, d, suites) = (5, 30, 500);
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let n = |s: f64| Normal::new(0.0, s).unwrap();
    let pairs = ordered_pairs(k);
    let (mut hit, mut classical_hit) = (0, 0);
    for _ in 0..suites {
        let w: Vec<f64> = (0..k).map(|_| n(0.03).sample(&mut rng)).collect();
        let u: Vec<f64> = (0..k).map(|_| n(0.05).sample(&mut rng)).collect();
        let v: Vec<f64> = (0..k).map(|_| n(0.05).sample(&mut rng)).collect();
        let g: Vec<f64> = (0..d).map(|_| n(0.1).sample(&mut rng)).collect();
        let sd: Vec<f64> = (0..d).map(|_| n(0.03).sample(&mut rng)).collect();
        let mut doc = Vec::new();
        let mut x = Vec::new();
        for dd in 0..d {
            for _ in 0..rng.random_range(10..=40) {
                doc.push(dd);
                x.push(rng.random_range(0.0..5.0));
            }
        }
        let r = doc.len();
        let kl: Vec<Vec<f64>> = pairs
            .iter()
            .map(|&(a, b)| {
                let b = b.unwrap();
                (0..r)
                    .map(|i| {
                        1.0 + (beta + w[a] + w[b] + sd[doc[i]]) * x[i]
                            + u[a]
                            + v[b]
                            + g[doc[i]]
                            + n(0.3).sample(&mut rng)
                    })
                    .collect()
            })
            .collect();
        let mean_without = |skip: Option<usize>| -> Vec<f64> {
            let keep: Vec<usize> = (0..pairs.len())
                .filter(|&q| skip.is_none_or(|s| pairs[q].0 != s && pairs[q].1 != Some(s)))
                .collect();
            (0..r)
                .map(|i| keep.iter().map(|&q| kl[q][i]).sum::<f64>() / keep.len() as f64)
                .collect()
        };
        let obs = Observations {
            p: 1,
            rows: x.iter().map(|&xi| vec![(0, xi)]).collect(),
            y: mean_without(None),
            doc,
            n_docs: d,
            y_without_seed: (0..k).map(|s| mean_without(Some(s))).collect(),
        };
        let (fit, jk) = fit_jackknife(&obs, true).unwrap();
        let iv = jk[1].interval();
        assert!((iv.est - fit.coef[0]).abs() < 1e-15);
        hit += usize::from(iv.low <= beta && beta <= iv.high);
        // The classical OLS SE of the slope, for comparison.
        let xm = x.iter().sum::<f64>() / r as f64;
        let sxx: f64 = x.iter().map(|xi| (xi - xm).powi(2)).sum();
        let rss: f64 = x
            .iter()
            .zip(&obs.y)
            .map(|(xi, yi)| (yi - fit.intercept - fit.coef[0] * xi).powi(2))
            .sum();
        let se = (rss / (r - 2) as f64 / sxx).sqrt();
        classical_hit += usize::from((fit.coef[0] - beta).abs() <= 1.96 * se);
    }
    let cov = hit as f64 / suites as f64;
    println!(
        "regression slope, 5 seeds, 30 documents: jackknife-t covers {cov:.3} of {suites} suites; classical OLS ±1.96 SE {:.3}",
        classical_hit as f64 / suites as f64
    );
    assert!((0.92..=0.98).contains(&cov), "{cov}");
}
