//! The numerics of next-token distributions: log-softmax over the kept
//! vocabulary, per-row statistics, exact KL, and the top-k estimate that
//! storing only top-k distributions would force. Sums run in f64; arrays
//! are stored as f32 log-probabilities (relative error ~6e-8, far inside the
//! per-row KL tolerance of max(1%, 1e-4 nats)).

/// Log-softmax of `logits[..dst.len()]` into `dst` (truncation to the kept
/// vocabulary and renormalisation in one step). `Err(i)` names the first
/// non-finite logit.
pub fn log_softmax(logits: &[f32], dst: &mut [f32]) -> Result<(), usize> {
    let n = dst.len();
    let x = &logits[..n];
    if let Some(i) = x.iter().position(|v| !v.is_finite()) {
        return Err(i);
    }
    let m = x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let s: f64 = x.iter().map(|&v| (v as f64 - m).exp()).sum();
    let lse = m + s.ln();
    for (d, &v) in dst.iter_mut().zip(x) {
        *d = (v as f64 - lse) as f32;
    }
    Ok(())
}

/// log p(target) under the softmax of `logits` (all of them), in f64.
pub fn log_prob_of(logits: &[f32], target: usize) -> f64 {
    let m = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let s: f64 = logits.iter().map(|&v| (v as f64 - m).exp()).sum();
    logits[target] as f64 - m - s.ln()
}

/// What the dist stage keeps of one row's distribution.
#[derive(Debug, Clone, PartialEq)]
pub struct RowStats {
    pub target_logprob: f32,
    pub entropy: f64,
    /// log of the probability mass outside the top-k (−∞ when k ≥ N).
    pub log_mass_outside: f64,
    pub kl_uniform: f64,
    pub kl_unigram: f64,
    pub topk_ids: Vec<u32>,
    pub topk_logprobs: Vec<f32>,
}

/// Indices of the `k` largest log-probs, largest first (ties: lower id).
pub fn top_k(lp: &[f32], k: usize) -> Vec<u32> {
    let k = k.min(lp.len());
    let mut idx: Vec<u32> = (0..lp.len() as u32).collect();
    let cmp = |a: &u32, b: &u32| lp[*b as usize].total_cmp(&lp[*a as usize]).then(a.cmp(b));
    if k < idx.len() && k > 0 {
        idx.select_nth_unstable_by(k - 1, cmp);
    }
    idx.truncate(k);
    idx.sort_unstable_by(cmp);
    idx
}

/// Statistics of one row. `lq` is the unigram log-distribution over the
/// same kept vocabulary.
pub fn row_stats(lp: &[f32], target: usize, k: usize, lq: &[f64]) -> RowStats {
    let n = lp.len();
    let ln_n = (n as f64).ln();
    let p: Vec<f64> = lp.iter().map(|&l| (l as f64).exp()).collect();
    let mut entropy = 0.0;
    let mut cross_q = 0.0;
    let mut cross_u = 0.0;
    for ((&pi, &l), &q) in p.iter().zip(lp).zip(lq) {
        let l = l as f64;
        entropy -= pi * l;
        cross_q += pi * (l - q);
        cross_u += pi * (l + ln_n);
    }
    let ids = top_k(lp, k);
    // Mass outside the top-k summed directly (not 1 − top mass), so a tiny
    // tail keeps its precision.
    let rest = if ids.len() >= n {
        0.0
    } else {
        let mut in_top = vec![false; n];
        ids.iter().for_each(|&i| in_top[i as usize] = true);
        p.iter()
            .zip(&in_top)
            .filter(|(_, &t)| !t)
            .map(|(&x, _)| x)
            .sum::<f64>()
    };
    RowStats {
        target_logprob: lp[target],
        entropy,
        log_mass_outside: rest.ln(),
        kl_uniform: cross_u,
        kl_unigram: cross_q,
        topk_logprobs: ids.iter().map(|&i| lp[i as usize]).collect(),
        topk_ids: ids,
    }
}

/// The seed ensemble's cross-entropy gain at one row's target, from each
/// seed's log-prob of it: ln mean_s p_s(y) − mean_s ln p_s(y) (≥ 0, Jensen).
pub fn ensemble_gain(lp: &[f64]) -> f64 {
    let k = lp.len() as f64;
    let m = lp.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let lse = m + lp.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
    (lse - k.ln()) - lp.iter().sum::<f64>() / k
}

/// Exact forward KL(p_a ‖ p_b) in nats from log-probabilities.
pub fn kl(lp_a: &[f32], lp_b: &[f32]) -> f64 {
    lp_a.iter()
        .zip(lp_b)
        .map(|(&a, &b)| {
            let a = a as f64;
            a.exp() * (a - b as f64)
        })
        .sum()
}

/// `kl` with p_a = exp(lp_a) precomputed (once per seed and row instead of
/// once per pair). Differences of log-probs are taken in f32 (exact when
/// close, by Sterbenz), products summed in f64.
pub fn kl_with_p(p_a: &[f32], lp_a: &[f32], lp_b: &[f32]) -> f64 {
    p_a.iter()
        .zip(lp_a)
        .zip(lp_b)
        .map(|((&p, &a), &b)| p as f64 * (a - b) as f64)
        .sum()
}

/// The KL a top-k store could estimate, with a flat-tail correction: each
/// distribution's mass outside its top-k is spread evenly over the other
/// N − k tokens. `top_a`/`top_b` are the top-k ids; `rank_b[v]` is true
/// when v is in `top_b`.
pub fn kl_topk(lp_a: &[f32], lp_b: &[f32], top_a: &[u32], top_b: &[u32], in_b: &[bool]) -> f64 {
    let n = lp_a.len();
    let k = top_a.len();
    if k >= n {
        return kl(lp_a, lp_b);
    }
    let p_a: Vec<f64> = top_a
        .iter()
        .map(|&i| (lp_a[i as usize] as f64).exp())
        .collect();
    let mass_b: f64 = top_b.iter().map(|&i| (lp_b[i as usize] as f64).exp()).sum();
    kl_topk_with(
        TopK::new(lp_a, top_a, &p_a, p_a.iter().sum()),
        lp_b,
        mass_b,
        in_b,
    )
}

/// One distribution's top-k as [`kl_topk_with`] reads it.
#[derive(Clone, Copy)]
pub struct TopK<'a> {
    pub lp: &'a [f32],
    pub ids: &'a [u32],
    /// exp of each top log-prob (f64), in `ids` order.
    pub p: &'a [f64],
    /// Σ p over the top-k, summed in `ids` order.
    pub mass: f64,
}

impl<'a> TopK<'a> {
    pub fn new(lp: &'a [f32], ids: &'a [u32], p: &'a [f64], mass: f64) -> TopK<'a> {
        TopK { lp, ids, p, mass }
    }
}

/// [`kl_topk`] from precomputed top-k probabilities and masses (the kl
/// stage computes them once per seed and row, not once per pair), with
/// k < N. `mass_b` is the top-k mass of b for the same k.
pub fn kl_topk_with(a: TopK, lp_b: &[f32], mass_b: f64, in_b: &[bool]) -> f64 {
    let terms = a.ids.iter().zip(a.p).map(|(&v, &pa)| {
        let v = v as usize;
        (pa, a.lp[v] as f64, in_b[v].then(|| lp_b[v] as f64))
    });
    flat_tail(&a, mass_b, terms)
}

/// The estimate from a's top entries as (p, log-prob, b's log-prob when
/// b's top list has the entry), each distribution's remaining mass spread
/// evenly over the other N − k tokens.
fn flat_tail(a: &TopK, mass_b: f64, terms: impl Iterator<Item = (f64, f64, Option<f64>)>) -> f64 {
    let n = a.lp.len();
    let k = a.ids.len();
    let tail_a = (1.0 - a.mass).max(1e-300);
    let tail_b = (1.0 - mass_b).max(1e-300);
    let flat_b = (tail_b / (n - k) as f64).ln();
    let mut est = 0.0;
    for (pa, la, lb) in terms {
        est += pa * (la - lb.unwrap_or(flat_b));
    }
    est + tail_a * (tail_a / tail_b).ln()
}

/// [`kl_topk_with`] reading every log-prob from the top-k lists rather than
/// from the rows (whose entries, scattered over a large vocabulary, miss
/// the cache): `a_lp[i]` is the log-prob of `a.ids[i]`; `rank_b[v]` is one
/// more than v's rank in b's top list (0 outside), `b_lp` b's top
/// log-probs in rank order, of which the first `k_b` count. The same
/// arithmetic in the same order, so the same bits.
pub fn kl_topk_ranked(
    a: TopK,
    a_lp: &[f32],
    b_lp: &[f32],
    k_b: usize,
    rank_b: &[u32],
    mass_b: f64,
) -> f64 {
    let terms = a.ids.iter().zip(a.p).zip(a_lp).map(|((&v, &pa), &la)| {
        let r = rank_b[v as usize] as usize;
        (
            pa,
            la as f64,
            (r != 0 && r <= k_b).then(|| b_lp[r - 1] as f64),
        )
    });
    flat_tail(&a, mass_b, terms)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Reproducible pseudo-random values in [0, scale) (other modules' tests use it too).
    pub(crate) fn random_logits(seed: u64, n: usize, scale: f32) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 11) as f64 / (1u64 << 53) as f64) as f32 * scale
            })
            .collect()
    }

    fn lsm(x: &[f32], n: usize) -> Vec<f32> {
        let mut d = vec![0.0; n];
        log_softmax(x, &mut d).unwrap();
        d
    }

    #[test]
    fn kl_of_a_distribution_with_itself_is_zero_and_otherwise_positive() {
        for seed in 0..50 {
            let a = lsm(&random_logits(seed, 97, 8.0), 97);
            let b = lsm(&random_logits(seed + 1000, 97, 8.0), 97);
            assert_eq!(kl(&a, &a), 0.0);
            let pa: Vec<f32> = a.iter().map(|&l| (l as f64).exp() as f32).collect();
            assert_eq!(kl_with_p(&pa, &a, &a), 0.0);
            assert!((kl_with_p(&pa, &a, &b) - kl(&a, &b)).abs() < 1e-6 * kl(&a, &b));
            assert!(kl(&a, &b) > 0.0);
            assert!(kl(&b, &a) > 0.0);
        }
    }

    #[test]
    fn truncation_renormalises_over_the_kept_vocabulary() {
        // 768 logits for a 700-token vocabulary, as in the shipped samples.
        let x = random_logits(3, 768, 10.0);
        let lp = lsm(&x, 700);
        let total: f64 = lp.iter().map(|&l| (l as f64).exp()).sum();
        assert!((total - 1.0).abs() < 1e-6, "{total}");
        // Same as a float64 log-softmax of the first 700 logits alone.
        let m = x[..700].iter().cloned().fold(f32::MIN, f32::max) as f64;
        let lse = m + x[..700]
            .iter()
            .map(|&v| (v as f64 - m).exp())
            .sum::<f64>()
            .ln();
        for i in 0..700 {
            assert!((lp[i] as f64 - (x[i] as f64 - lse)).abs() < 1e-5);
        }
    }

    #[test]
    fn non_finite_logits_are_reported() {
        let mut x = random_logits(1, 10, 1.0);
        x[4] = f32::NAN;
        assert_eq!(log_softmax(&x, &mut [0.0; 10]), Err(4));
    }

    #[test]
    fn row_stats_match_definitions() {
        let n = 50;
        let lp = lsm(&random_logits(9, n, 6.0), n);
        let lq = vec![-(n as f64).ln(); n];
        let s = row_stats(&lp, 3, 5, &lq);
        // Against the uniform unigram, both baselines coincide.
        assert!((s.kl_uniform - s.kl_unigram).abs() < 1e-9);
        let h: f64 = -lp.iter().map(|&l| (l as f64).exp() * l as f64).sum::<f64>();
        assert!((s.entropy - h).abs() < 1e-12);
        assert_eq!(s.topk_ids.len(), 5);
        for w in s.topk_logprobs.windows(2) {
            assert!(w[0] >= w[1]);
        }
        let top_mass: f64 = s.topk_logprobs.iter().map(|&l| (l as f64).exp()).sum();
        assert!((top_mass + s.log_mass_outside.exp() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn ranked_topk_estimate_has_the_bits_of_the_row_reading_one() {
        let n = 3000;
        for seed in 0..6 {
            let a = lsm(&random_logits(seed, n, 8.0), n);
            let b = lsm(&random_logits(seed + 100, n, 8.0), n);
            let kmax = 256;
            let (ta, tb) = (top_k(&a, kmax), top_k(&b, kmax));
            let pa: Vec<f64> = ta.iter().map(|&i| (a[i as usize] as f64).exp()).collect();
            let pb: Vec<f64> = tb.iter().map(|&i| (b[i as usize] as f64).exp()).collect();
            let la: Vec<f32> = ta.iter().map(|&i| a[i as usize]).collect();
            let lb: Vec<f32> = tb.iter().map(|&i| b[i as usize]).collect();
            let mut rank = vec![0u32; n];
            tb.iter()
                .enumerate()
                .for_each(|(r, &v)| rank[v as usize] = r as u32 + 1);
            for k in [1, 16, 64, 256] {
                let (ma, mb) = (pa[..k].iter().sum::<f64>(), pb[..k].iter().sum::<f64>());
                let mut in_b = vec![false; n];
                tb[..k].iter().for_each(|&v| in_b[v as usize] = true);
                let top = TopK::new(&a, &ta[..k], &pa[..k], ma);
                let want = kl_topk_with(top, &b, mb, &in_b);
                let got = kl_topk_ranked(top, &la[..k], &lb, k, &rank, mb);
                assert_eq!(want.to_bits(), got.to_bits(), "seed {seed} k {k}");
            }
        }
    }

    #[test]
    fn topk_estimate_is_exact_when_k_covers_the_vocabulary() {
        let n = 40;
        let a = lsm(&random_logits(5, n, 6.0), n);
        let b = lsm(&random_logits(6, n, 6.0), n);
        let (ta, tb) = (top_k(&a, n), top_k(&b, n));
        let in_b = vec![true; n];
        assert!((kl_topk(&a, &b, &ta, &tb, &in_b) - kl(&a, &b)).abs() < 1e-12);
        // And it is an estimate, not the exact value, below that.
        let (ta, tb) = (top_k(&a, 4), top_k(&b, 4));
        let mut in_b = vec![false; n];
        tb.iter().for_each(|&i| in_b[i as usize] = true);
        assert!((kl_topk(&a, &b, &ta, &tb, &in_b) - kl(&a, &b)).abs() > 1e-6);
    }
}
