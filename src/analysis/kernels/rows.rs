//! One row's statistics (target log-prob, entropy, KL to uniform and to
//! the unigram, top-k) and log-softmax, from logits or log-probs.

use super::topk::top_k;
use super::*;
use crate::analysis::divergence::RowStats;

pub(super) fn row_sums_body(lp: &[f32], lq: &[f64], p: &mut [f32]) -> (f64, f64) {
    for (d, &x) in p.iter_mut().zip(lp) {
        *d = exp_f32(x);
    }
    let n8 = lp.len() / LANES * LANES;
    let (mut pl, mut pq) = ([0f64; LANES], [0f64; LANES]);
    for ((pc, lc), qc) in p[..n8]
        .chunks_exact(LANES)
        .zip(lp[..n8].chunks_exact(LANES))
        .zip(lq[..n8].chunks_exact(LANES))
    {
        for i in 0..LANES {
            let pi = pc[i] as f64;
            pl[i] += pi * lc[i] as f64;
            pq[i] += pi * qc[i];
        }
    }
    let tail = |f: &dyn Fn(usize) -> f64| (n8..lp.len()).map(f).sum::<f64>();
    (
        combine(pl, tail(&|i| p[i] as f64 * lp[i] as f64)),
        combine(pq, tail(&|i| p[i] as f64 * lq[i])),
    )
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub(super) unsafe fn row_sums_avx2(lp: &[f32], lq: &[f64], p: &mut [f32]) -> (f64, f64) {
    row_sums_body(lp, lq, p)
}

/// In place, a row of logits to log-probs: `divergence::log_softmax` (the
/// f64 reference) with its exponentials in f32 (`exp_f32`, ≤ 2 ulp) summed
/// in f64, and each x − lse rounded once from f64. Replaces ORT's
/// LogSoftmax kernel on the CPU, which with a gather in front cost 30–60%
/// of a small model's forward pass. `e`: a buffer of the row's length.
/// Returns false, the row left as it was, where a value is not finite (the
/// caller names it).
pub fn log_softmax(x: &mut [f32], e: &mut [f32]) -> bool {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2 (checked above).
        return unsafe { log_softmax_avx2(x, e) };
    }
    log_softmax_body(x, e)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub(super) unsafe fn log_softmax_avx2(x: &mut [f32], e: &mut [f32]) -> bool {
    log_softmax_body(x, e)
}

#[inline(always)]
pub(super) fn log_softmax_body(x: &mut [f32], e: &mut [f32]) -> bool {
    if x.is_empty() {
        return true;
    }
    let Some((lse, _)) = normaliser(x, e) else {
        return false;
    };
    for v in x.iter_mut() {
        *v = (*v as f64 - lse) as f32;
    }
    true
}

/// log Σ exp(x) of a row and Σ exp(x − max), leaving exp(x − max) in `e`
/// (the row's length); `None` where a value is not finite. Shared by
/// [`log_softmax`] and [`row_stats_logits`], so both give the same bits.
#[inline(always)]
pub(super) fn normaliser(x: &[f32], e: &mut [f32]) -> Option<(f64, f64)> {
    let max = finite_max(x)?;
    // Two loops (exp into a buffer, then the f64 sum) both vectorise; one
    // loop of exp and f64 sums did not.
    for (d, &v) in e.iter_mut().zip(x) {
        *d = exp_f32(v - max);
    }
    let s = sum_body(&e[..x.len()]);
    Some((max as f64 + s.ln(), s))
}

/// One row's statistics from its logits `x`, left as log-probs in place:
/// [`log_softmax`] and [`row_stats`] in one pass over a row in the cache,
/// with p = e / Σ e from the normaliser's exponentials `e` (a buffer of the
/// row's length) instead of a second exp(lp). As the f64 reference
/// (`divergence::log_softmax`, then `divergence::row_stats`) to f32
/// rounding of p. `None`, the row untouched, where a logit is not finite.
pub fn row_stats_logits(
    x: &mut [f32],
    target: usize,
    k: usize,
    lq: &[f64],
    e: &mut [f32],
) -> Option<RowStats> {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2 (checked above).
        return unsafe { row_stats_logits_avx2(x, target, k, lq, e) };
    }
    row_stats_logits_body::<false>(x, target, k, lq, e)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub(super) unsafe fn row_stats_logits_avx2(
    x: &mut [f32],
    target: usize,
    k: usize,
    lq: &[f64],
    e: &mut [f32],
) -> Option<RowStats> {
    row_stats_logits_body::<true>(x, target, k, lq, e)
}

/// Over whole eights of `x`: lp = x − lse in place (rounded once from
/// f64), with Σ e·lp and Σ e·log q in eight f64 lanes.
#[inline(always)]
pub(super) fn lp_sums(
    x: &mut [f32],
    e: &[f32],
    lq: &[f64],
    lse: f64,
) -> ([f64; LANES], [f64; LANES]) {
    let n8 = x.len() / LANES * LANES;
    let (mut pl, mut pq) = ([0f64; LANES], [0f64; LANES]);
    for ((xc, ec), qc) in x[..n8]
        .chunks_exact_mut(LANES)
        .zip(e[..n8].chunks_exact(LANES))
        .zip(lq[..n8].chunks_exact(LANES))
    {
        for i in 0..LANES {
            let l = (xc[i] as f64 - lse) as f32;
            xc[i] = l;
            pl[i] += ec[i] as f64 * l as f64;
            pq[i] += ec[i] as f64 * qc[i];
        }
    }
    (pl, pq)
}

#[inline(always)]
pub(super) fn row_stats_logits_body<const AVX2: bool>(
    x: &mut [f32],
    target: usize,
    k: usize,
    lq: &[f64],
    e: &mut [f32],
) -> Option<RowStats> {
    let n = x.len();
    assert!(n > 0 && lq.len() == n && e.len() == n && target < n);
    let (lse, s) = normaliser(x, e)?;
    // lp = x − lse in place, with Σ e·lp and Σ e·log q.
    let n8 = n / LANES * LANES;
    #[cfg(target_arch = "x86_64")]
    let (pl, pq) = if AVX2 {
        // SAFETY: AVX2 is true only in code the dispatch runs on AVX2 CPUs.
        unsafe { avx2::lp_sums(x, e, lq, lse) }
    } else {
        lp_sums(x, e, lq, lse)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let (pl, pq) = lp_sums(x, e, lq, lse);
    let (mut tl, mut tq) = (0f64, 0f64);
    for i in n8..n {
        let l = (x[i] as f64 - lse) as f32;
        x[i] = l;
        tl += e[i] as f64 * l as f64;
        tq += e[i] as f64 * lq[i];
    }
    let (pl, pq) = (combine(pl, tl) / s, combine(pq, tq) / s);
    let lp: &[f32] = x;
    let ids = top_k(lp, k);
    let rest = if ids.len() >= n {
        0.0
    } else {
        ids.iter().for_each(|&i| e[i as usize] = 0.0);
        sum_body(e) / s
    };
    Some(RowStats {
        target_logprob: lp[target],
        entropy: -pl,
        log_mass_outside: rest.ln(),
        kl_uniform: pl + (n as f64).ln(),
        kl_unigram: pl - pq,
        topk_logprobs: ids.iter().map(|&i| lp[i as usize]).collect(),
        topk_ids: ids,
    })
}

/// The maximum of `x`, or `None` where a value is not finite: one
/// lane-wise pass (|v| < ∞ is false for NaN and ±∞), so that `exp_f32`
/// only ever sees finite values.
#[inline(always)]
pub(super) fn finite_max(x: &[f32]) -> Option<f32> {
    let n8 = x.len() / LANES * LANES;
    let (mut m, mut ok) = ([f32::NEG_INFINITY; LANES], [1u32; LANES]);
    for c in x[..n8].chunks_exact(LANES) {
        for i in 0..LANES {
            m[i] = if c[i] > m[i] { c[i] } else { m[i] };
            ok[i] &= (c[i].abs() < f32::INFINITY) as u32;
        }
    }
    if ok.contains(&0) || x[n8..].iter().any(|v| !v.is_finite()) {
        return None;
    }
    let mut max = f32::NEG_INFINITY;
    for &v in x[n8..].iter().chain(&m) {
        max = if v > max { v } else { max };
    }
    Some(max)
}

/// One row's statistics from its log-probs (as `divergence::row_stats`, the
/// f64 reference, to f32 rounding of p): one vectorised pass for p =
/// exp(lp), Σ p·lp and Σ p·log q, then the top-k and the mass outside it
/// summed directly (not 1 − top mass, so a tiny tail keeps its precision).
/// `p` is a buffer of the row's length.
pub fn row_stats(lp: &[f32], target: usize, k: usize, lq: &[f64], p: &mut [f32]) -> RowStats {
    let n = lp.len();
    assert!(lq.len() == n && p.len() == n);
    #[cfg(target_arch = "x86_64")]
    let (pl, pq) = if has_avx2() {
        // SAFETY: the CPU has AVX2 (checked above).
        unsafe { row_sums_avx2(lp, lq, p) }
    } else {
        row_sums_body(lp, lq, p)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let (pl, pq) = row_sums_body(lp, lq, p);
    let total = sum(p);
    let ids = top_k(lp, k);
    let rest = if ids.len() >= n {
        0.0
    } else {
        ids.iter().for_each(|&i| p[i as usize] = 0.0);
        sum(p)
    };
    RowStats {
        target_logprob: lp[target],
        entropy: -pl,
        log_mass_outside: rest.ln(),
        kl_uniform: pl + (n as f64).ln() * total,
        kl_unigram: pl - pq,
        topk_logprobs: ids.iter().map(|&i| lp[i as usize]).collect(),
        topk_ids: ids,
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// [`super::lp_sums`] with explicit vectors: the compiler's version of
    /// the loop moved 128-bit halves about with shuffles, at twice the
    /// time. The same operations, lanes and rounding: the same bits.
    #[target_feature(enable = "avx2")]
    pub unsafe fn lp_sums(x: &mut [f32], e: &[f32], lq: &[f64], lse: f64) -> ([f64; 8], [f64; 8]) {
        let n8 = x.len() / 8 * 8;
        assert!(e.len() >= n8 && lq.len() >= n8);
        let l = _mm256_set1_pd(lse);
        let z = _mm256_setzero_pd();
        let (mut pl0, mut pl1, mut pq0, mut pq1) = (z, z, z, z);
        let wide = |v: __m256| {
            (
                _mm256_cvtps_pd(_mm256_castps256_ps128(v)),
                _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)),
            )
        };
        for i in (0..n8).step_by(8) {
            let (x0, x1) = wide(_mm256_loadu_ps(x.as_ptr().add(i)));
            let r0 = _mm256_cvtpd_ps(_mm256_sub_pd(x0, l));
            let r1 = _mm256_cvtpd_ps(_mm256_sub_pd(x1, l));
            _mm256_storeu_ps(x.as_mut_ptr().add(i), _mm256_set_m128(r1, r0));
            let (e0, e1) = wide(_mm256_loadu_ps(e.as_ptr().add(i)));
            pl0 = _mm256_add_pd(pl0, _mm256_mul_pd(e0, _mm256_cvtps_pd(r0)));
            pl1 = _mm256_add_pd(pl1, _mm256_mul_pd(e1, _mm256_cvtps_pd(r1)));
            let q = lq.as_ptr().add(i);
            pq0 = _mm256_add_pd(pq0, _mm256_mul_pd(e0, _mm256_loadu_pd(q)));
            pq1 = _mm256_add_pd(pq1, _mm256_mul_pd(e1, _mm256_loadu_pd(q.add(4))));
        }
        let (mut pl, mut pq) = ([0f64; 8], [0f64; 8]);
        _mm256_storeu_pd(pl.as_mut_ptr(), pl0);
        _mm256_storeu_pd(pl.as_mut_ptr().add(4), pl1);
        _mm256_storeu_pd(pq.as_mut_ptr(), pq0);
        _mm256_storeu_pd(pq.as_mut_ptr().add(4), pq1);
        (pl, pq)
    }
}
