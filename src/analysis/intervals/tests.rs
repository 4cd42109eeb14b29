//! The intervals against simulated suites whose truth is known, and the
//! jackknife against hand-computed replicates.

use super::*;
use rand_distr::{Distribution, Normal};

/// A stated process for per-(pair, row) KL: μ + u_a + v_b (seed effects,
/// shared by every pair containing the seed, as first and as second model)
/// plus g_d (document), c_ad + c_bd (seed × document) and e (row). Rows per
/// document vary (10–40). E over seeds and documents is μ.
struct Process {
    mu: f64,
    seed: f64,
    doc: f64,
    seed_doc: f64,
    row: f64,
}

/// One simulated suite: per pair, per row (kl, doc); also the per-seed
/// effects so a second arm can share them.
struct Suite {
    k: usize,
    docs: Vec<usize>,
    kl: Vec<Vec<f64>>,
}

struct Effects {
    u: Vec<f64>,
    v: Vec<f64>,
    g: Vec<f64>,
    c: Vec<Vec<f64>>,
}

fn effects(p: &Process, k: usize, d: usize, rng: &mut ChaCha8Rng) -> Effects {
    let n = |s: f64| Normal::new(0.0, s).unwrap();
    Effects {
        u: (0..k).map(|_| n(p.seed).sample(rng)).collect(),
        v: (0..k).map(|_| n(p.seed).sample(rng)).collect(),
        g: (0..d).map(|_| n(p.doc).sample(rng)).collect(),
        c: (0..k)
            .map(|_| (0..d).map(|_| n(p.seed_doc).sample(rng)).collect())
            .collect(),
    }
}

fn suite(p: &Process, e: &Effects, docs: &[usize], rng: &mut ChaCha8Rng) -> Suite {
    let k = e.u.len();
    let noise = Normal::new(0.0, p.row).unwrap();
    let kl = ordered_pairs(k)
        .iter()
        .map(|&(a, b)| {
            let b = b.unwrap();
            docs.iter()
                .map(|&d| {
                    p.mu + e.u[a] + e.v[b] + e.g[d] + e.c[a][d] + e.c[b][d] + noise.sample(rng)
                })
                .collect()
        })
        .collect();
    Suite {
        k,
        docs: docs.to_vec(),
        kl,
    }
}

fn doc_of_rows(d: usize, rng: &mut ChaCha8Rng) -> Vec<usize> {
    (0..d)
        .flat_map(|doc| std::iter::repeat_n(doc, rng.random_range(10..=40)))
        .collect()
}

fn cells(s: &Suite, d: usize) -> Cells {
    let mut c = Cells::new(s.k, ordered_pairs(s.k), d);
    for (u, kl) in s.kl.iter().enumerate() {
        for (x, &doc) in kl.iter().zip(&s.docs) {
            c.sums[u][doc] += x;
        }
    }
    for &doc in &s.docs {
        c.rows[doc] += 1.0;
    }
    c
}

/// Today's method before this module: pairs and rows resampled i.i.d.,
/// percentile interval (written here independently).
fn old_bootstrap(s: &Suite, b: usize, rng: &mut ChaCha8Rng) -> (f64, f64) {
    let (p, r) = (s.kl.len(), s.docs.len());
    let mut reps: Vec<f64> = (0..b)
        .map(|_| {
            let pairs: Vec<usize> = (0..p).map(|_| rng.random_range(0..p)).collect();
            let mut t = 0.0;
            for _ in 0..r {
                let j = rng.random_range(0..r);
                t += pairs.iter().map(|&q| s.kl[q][j]).sum::<f64>();
            }
            t / (p * r) as f64
        })
        .collect();
    reps.sort_by(f64::total_cmp);
    (
        reps[(0.025 * b as f64) as usize],
        reps[(0.975 * b as f64) as usize - 1],
    )
}

const MIXED: Process = Process {
    mu: 1.0,
    seed: 0.05,
    doc: 0.1,
    seed_doc: 0.02,
    row: 0.3,
};

/// Share of `n` simulated suites (k seeds, d documents) whose interval
/// covers μ, and the old bootstrap's share on the first `n_old`.
fn coverage(p: &Process, k: usize, d: usize, n: usize, n_old: usize, seed: u64) -> (f64, f64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (mut hit, mut hit_old) = (0, 0);
    for i in 0..n {
        let e = effects(p, k, d, &mut rng);
        let docs = doc_of_rows(d, &mut rng);
        let s = suite(p, &e, &docs, &mut rng);
        let iv = cells(&s, d).jackknife().interval();
        hit += usize::from(iv.low <= p.mu && p.mu <= iv.high);
        if i < n_old {
            let (lo, hi) = old_bootstrap(&s, 200, &mut rng);
            hit_old += usize::from(lo <= p.mu && p.mu <= hi);
        }
    }
    (hit as f64 / n as f64, hit_old as f64 / n_old.max(1) as f64)
}

#[test]
fn e_conv_interval_covers_the_truth_with_five_seeds() {
    for (name, p) in [
        ("seed and document effects", MIXED),
        (
            "seed effects dominate",
            Process {
                seed: 0.15,
                doc: 0.03,
                ..MIXED
            },
        ),
        (
            "document effects dominate",
            Process {
                seed: 0.01,
                doc: 0.2,
                ..MIXED
            },
        ),
    ] {
        let (cov, old) = coverage(&p, 5, 30, 500, 200, 11);
        println!("E[conv], 5 seeds, 30 documents, {name}: jackknife-t covers {cov:.3} of 500 suites; the old pair × row bootstrap {old:.3} of 200");
        assert!((0.92..=0.98).contains(&cov), "{name}: {cov}");
        assert!(old < 0.9, "{name}: the old interval covered {old}");
    }
}

#[test]
fn with_three_seeds_the_interval_is_wide_and_still_covers() {
    let (cov, old) = coverage(
        &Process {
            seed: 0.15,
            doc: 0.03,
            ..MIXED
        },
        3,
        30,
        500,
        200,
        12,
    );
    println!("E[conv], 3 seeds, seed effects dominate: jackknife-t covers {cov:.3}; old bootstrap {old:.3}");
    assert!((0.9..=0.99).contains(&cov), "{cov}");
}

#[test]
fn paired_difference_covers_and_cancels_shared_effects() {
    // Two arms on the same seeds and documents (e.g. two steps): arm b
    // keeps 80% of arm a's effects plus its own, and a shift of 0.05.
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    let (k, d, n) = (5, 30, 500);
    let (mut hit, mut hit_unpaired, mut width_ratio) = (0, 0, Vec::new());
    for _ in 0..n {
        let ea = effects(&MIXED, k, d, &mut rng);
        let own = effects(&MIXED, k, d, &mut rng);
        let mix = |x: &[f64], y: &[f64]| -> Vec<f64> {
            x.iter().zip(y).map(|(a, b)| 0.8 * a + 0.6 * b).collect()
        };
        let eb = Effects {
            u: mix(&ea.u, &own.u),
            v: mix(&ea.v, &own.v),
            g: mix(&ea.g, &own.g),
            c: ea.c.iter().zip(&own.c).map(|(x, y)| mix(x, y)).collect(),
        };
        let docs = doc_of_rows(d, &mut rng);
        let a = cells(&suite(&MIXED, &ea, &docs, &mut rng), d).jackknife();
        let pb = Process { mu: 0.95, ..MIXED };
        let b = cells(&suite(&pb, &eb, &docs, &mut rng), d).jackknife();
        let iv = difference(&a, &b, PAIRED);
        hit += usize::from(iv.low <= 0.05 && 0.05 <= iv.high);
        let un = difference(
            &a,
            &b,
            Pairing {
                seeds: false,
                docs: false,
            },
        );
        hit_unpaired += usize::from(un.low <= 0.05 && 0.05 <= un.high);
        width_ratio.push(iv.se / un.se);
    }
    let cov = hit as f64 / n as f64;
    width_ratio.sort_by(f64::total_cmp);
    let ratio = width_ratio[n / 2];
    println!("paired Δ, 5 seeds: covers {cov:.3}; median SE paired / unpaired {ratio:.2}; unpaired covers {:.3}", hit_unpaired as f64 / n as f64);
    assert!((0.92..=0.98).contains(&cov), "{cov}");
    // Shared effects cancel: the paired SE is clearly smaller.
    assert!(ratio < 0.8, "{ratio}");
}

#[test]
fn jackknife_replicates_match_hand_computed_values() {
    // 3 seeds (6 ordered pairs), 2 documents with 1 and 2 rows.
    let units = ordered_pairs(3);
    let mut c = Cells::new(3, units.clone(), 2);
    c.rows = vec![1.0, 2.0];
    for (u, s) in c.sums.iter_mut().enumerate() {
        *s = vec![u as f64, 2.0 * u as f64 + 1.0];
    }
    let j = c.jackknife();
    // Unit u's rows sum to 3u + 1 over 3 rows.
    let unit_mean = |u: usize| (3.0 * u as f64 + 1.0) / 3.0;
    let all: f64 = (0..6).map(unit_mean).sum::<f64>() / 6.0;
    assert!((j.est - all).abs() < 1e-12);
    assert!((c.mean() - all).abs() < 1e-12);
    for k in 0..3 {
        let keep: Vec<usize> = (0..6)
            .filter(|&u| units[u].0 != k && units[u].1 != Some(k))
            .collect();
        assert_eq!(keep.len(), 2);
        let want = keep.iter().map(|&u| unit_mean(u)).sum::<f64>() / 2.0;
        assert!((j.seeds[k] - want).abs() < 1e-12);
    }
    // Without document 0: one... two rows, sums 2u + 1.
    let want0 = (0..6).map(|u| (2.0 * u as f64 + 1.0) / 2.0).sum::<f64>() / 6.0;
    let want1 = (0..6).map(|u| u as f64).sum::<f64>() / 6.0;
    assert!((j.docs[0] - want0).abs() < 1e-12 && (j.docs[1] - want1).abs() < 1e-12);
    // The interval: (n−1)/n Σ (θᵢ − θ̄)² per source, Satterthwaite, t.
    let jv = |v: &[f64]| {
        let m = v.iter().sum::<f64>() / v.len() as f64;
        (v.len() as f64 - 1.0) / v.len() as f64 * v.iter().map(|x| (x - m).powi(2)).sum::<f64>()
    };
    let (vs, vd) = (jv(&j.seeds), jv(&j.docs));
    let iv = j.interval();
    assert!((iv.se - (vs + vd).sqrt()).abs() < 1e-12);
    let df = (vs + vd).powi(2) / (vs * vs / 2.0 + vd * vd / 1.0);
    assert!((iv.df - df).abs() < 1e-9, "{} {df}", iv.df);
    assert!(iv.low < j.est && j.est < iv.high);
    // A difference of a statistic with itself is exactly 0, p = 1.
    let d = difference(&j, &j, PAIRED);
    assert_eq!((d.est, d.low, d.high, d.p), (0.0, 0.0, 0.0, 1.0));
}

#[test]
fn replicates_rebuild_pairs_from_the_drawn_seeds() {
    let mut c = Cells::new(3, ordered_pairs(3), 2);
    c.rows = vec![1.0, 1.0];
    for (u, s) in c.sums.iter_mut().enumerate() {
        *s = vec![u as f64, 10.0 * u as f64];
    }
    // Seeds 0, 0, 2: pairs (0,2) twice and (2,0) twice, (0,0) left out;
    // document 1 drawn twice.
    let d = Draw {
        seeds: vec![0, 0, 2],
        docs: vec![0.0, 2.0],
    };
    let u02 = ordered_pairs(3)
        .iter()
        .position(|&p| p == (0, Some(2)))
        .unwrap();
    let u20 = ordered_pairs(3)
        .iter()
        .position(|&p| p == (2, Some(0)))
        .unwrap();
    let want = (10.0 * u02 as f64 + 10.0 * u20 as f64) / 2.0;
    assert!((c.replicate(&d) - want).abs() < 1e-12);
    // One seed drawn K times: no pair.
    assert!(c
        .replicate(&Draw {
            seeds: vec![1, 1, 1],
            docs: vec![1.0, 1.0]
        })
        .is_nan());
    // Draws are reproducible and differ by seed.
    assert_eq!(draws(5, 30, 3, 7), draws(5, 30, 3, 7));
    assert_ne!(draws(5, 30, 3, 7), draws(5, 30, 3, 8));
}
