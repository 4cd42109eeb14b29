//! Vectorised row kernels for exact KL over full vocabularies: the kl stage
//! streams seeds × rows × vocabulary through these, so they decide whether it
//! runs at memory bandwidth. Every sum keeps eight f64 lanes combined in a
//! fixed order, and each multiply-add is fused on every path or on none
//! (`mul_add` is fused in software where the CPU lacks FMA), so the AVX-512,
//! AVX2 and portable paths give the same bits on every machine.

use crate::analysis::divergence::RowStats;

/// exp(x) in f32 for log-probabilities: Cephes' `expf` (range reduction by
/// ln 2 in two parts, degree-6 polynomial, ≤ 2 ulp), written as plain
/// branch-free arithmetic so that the compiler vectorises it inside the
/// AVX2 kernels below (a SIMD crate's exp is compiled for the baseline
/// SSE2 only and runs 4–7× slower here). Inputs above 88 are clamped (log-probs
/// are ≤ 0). Below −87.3 (p < 1.2e-38, where
/// f32 leaves normal numbers) it returns 0.
#[inline(always)]
fn exp_f32(x: f32) -> f32 {
    exp_f32_with::<false>(x)
}

/// `a·b + c`, fused when `FUSED` (then the same bits on every path:
/// `mul_add` is fused in software where the CPU cannot).
#[inline(always)]
fn madd<const FUSED: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FUSED {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// [`exp_f32`] with its multiply-adds fused when `FUSED` (a third fewer
/// instructions; the kl stage's kernels, built for CPUs with FMA, use it).
#[inline(always)]
fn exp_f32_with<const FUSED: bool>(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5 · 2^23: adding it rounds to an integer
    let under = x < -87.3;
    let x = x.clamp(-87.3, 88.0);
    let fx = madd::<FUSED>(x, LOG2E, ROUND) - ROUND;
    let r = madd::<FUSED>(-fx, C2, madd::<FUSED>(-fx, C1, x));
    let mut y = 1.987_569_1e-4;
    y = madd::<FUSED>(y, r, 1.398_199_9e-3);
    y = madd::<FUSED>(y, r, 8.333_452e-3);
    y = madd::<FUSED>(y, r, 4.166_579_6e-2);
    y = madd::<FUSED>(y, r, 1.666_666_5e-1);
    y = madd::<FUSED>(y, r, 0.5);
    y = madd::<FUSED>(y, r * r, r) + 1.0;
    // SAFETY: fx is an integer in [-126, 127] (x was clamped), so the
    // conversion is exact; unchecked, it vectorises (no saturation logic).
    let k = unsafe { fx.to_int_unchecked::<i32>() };
    let scale = f32::from_bits(((k + 127) as u32) << 23);
    if under {
        0.0
    } else {
        y * scale
    }
}

/// f64 lanes of the sums: two AVX2 registers per sum; kl_row keeps two
/// sums per pair, enough independent additions to hide their latency.
const LANES: usize = 8;

#[inline(always)]
fn combine(acc: [f64; LANES], tail: f64) -> f64 {
    let mut v = acc;
    let mut w = LANES / 2;
    while w > 0 {
        for i in 0..w {
            v[i] += v[i + w];
        }
        w /= 2;
    }
    v[0] + tail
}

#[inline(always)]
fn sum_body(x: &[f32]) -> f64 {
    let mut acc = [0f64; LANES];
    let n8 = x.len() / LANES * LANES;
    for c in x[..n8].chunks_exact(LANES) {
        for i in 0..LANES {
            acc[i] += c[i] as f64;
        }
    }
    combine(acc, x[n8..].iter().map(|&v| v as f64).sum())
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2")]
    pub unsafe fn sum(x: &[f32]) -> f64 {
        super::sum_body(x)
    }

    #[target_feature(enable = "avx2")]
    pub unsafe fn exp_wide(x: &[f32], out: &mut [f64]) {
        super::exp_wide_body(x, out)
    }

    /// [`super::block_maxima`]: eight vector maxima per block, then one
    /// horizontal maximum (the compiler leaves the plain loop scalar).
    #[target_feature(enable = "avx2")]
    pub unsafe fn block_maxima(x: &[f32], out: &mut [f32]) {
        for (c, o) in x.chunks_exact(super::MAX_BLOCK).zip(out) {
            let p = c.as_ptr();
            let v = |i: usize| _mm256_loadu_ps(p.add(8 * i));
            let m = _mm256_max_ps(
                _mm256_max_ps(_mm256_max_ps(v(0), v(1)), _mm256_max_ps(v(2), v(3))),
                _mm256_max_ps(_mm256_max_ps(v(4), v(5)), _mm256_max_ps(v(6), v(7))),
            );
            let h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
            let h = _mm_max_ps(h, _mm_movehl_ps(h, h));
            let h = _mm_max_ss(h, _mm_shuffle_ps(h, h, 1));
            *o = _mm_cvtss_f32(h);
        }
    }

    /// [`super::candidates`]: eight entries per compare, the indices of
    /// those reaching `thr` packed to the front of a vector by a permutation
    /// looked up from the compare's bit mask (no branch per entry: which
    /// entries pass is data, and a branch on it mispredicted about half the
    /// time), then keyed.
    #[target_feature(enable = "avx2")]
    pub unsafe fn candidates(x: &[f32], maxima: &[f32], thr: f32, cand: &mut Vec<u64>) {
        let t = _mm256_set1_ps(thr);
        let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        // One block's passing indices; eight spare for the last store.
        let mut idx = [0u32; super::MAX_BLOCK + 8];
        for (bi, &m) in maxima.iter().enumerate() {
            if m < thr {
                continue;
            }
            let start = bi * super::MAX_BLOCK;
            let end = (start + super::MAX_BLOCK).min(x.len());
            if end - start < super::MAX_BLOCK {
                // The row's last, partial block.
                super::scan(x, start..end, thr, cand);
                continue;
            }
            let mut len = 0;
            for e in 0..super::MAX_BLOCK / 8 {
                let at = start + 8 * e;
                let v = _mm256_loadu_ps(x.as_ptr().add(at));
                let mask = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_GE_OQ>(v, t)) as usize;
                let ids = _mm256_add_epi32(_mm256_set1_epi32(at as i32), lanes);
                let perm = _mm256_loadu_si256(PACK[mask].as_ptr() as *const __m256i);
                let packed = _mm256_permutevar8x32_epi32(ids, perm);
                _mm256_storeu_si256(idx.as_mut_ptr().add(len) as *mut __m256i, packed);
                len += mask.count_ones() as usize;
            }
            cand.extend(
                idx[..len]
                    .iter()
                    .map(|&i| super::rank_key(x[i as usize], i as usize)),
            );
        }
    }

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

    /// For each 8-bit mask, the lanes whose bit is set, in order, first.
    static PACK: [[u32; 8]; 256] = {
        let mut t = [[0u32; 8]; 256];
        let mut m = 0;
        while m < 256 {
            let (mut j, mut n) = (0, 0);
            while j < 8 {
                if m >> j & 1 == 1 {
                    t[m][n] = j as u32;
                    n += 1;
                }
                j += 1;
            }
            m += 1;
        }
        t
    };
}

/// The widest vector code the multiply-add kernels may run here. All of
/// them give the same bits: lanes are independent and fused either way
/// (`mul_add` is fused on every path).
#[derive(Clone, Copy, PartialEq, Debug)]
enum Simd {
    Avx512,
    Avx2,
    None,
}

fn simd() -> Simd {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f") && has!("avx2") && has!("fma") {
            return Simd::Avx512;
        }
        if has!("avx2") && has!("fma") {
            return Simd::Avx2;
        }
    }
    Simd::None
}

fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Σ x in f64.
pub fn sum(x: &[f32]) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2 (checked above).
        return unsafe { avx2::sum(x) };
    }
    sum_body(x)
}

/// Vocabulary entries per block of [`kl_row`]: every seed's p (f32) and
/// difference to seed 0 (f64) of one block (seeds × 512 × 12 B) stay in cache
/// while every pair reads them, so each row is read from memory once.
const BLOCK: usize = 512;

/// exp of each log-prob of `x` into `out`, in f64 from [`exp_f32`] (≤ 2 ulp
/// of f32): the top-k probabilities of the kl stage's validation, where f32
/// precision is ample (an estimate off by tens of percent is measured) and
/// glibc's f64 exp cost 14% of an exact pass. The same bits on every path.
pub fn exp_wide(x: &[f32], out: &mut [f64]) {
    assert_eq!(x.len(), out.len());
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2 (checked above).
        return unsafe { avx2::exp_wide(x, out) };
    }
    exp_wide_body(x, out)
}

#[inline(always)]
fn exp_wide_body(x: &[f32], out: &mut [f64]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = exp_f32(v) as f64;
    }
}

/// How far ahead of the exp loop a row is fetched into the cache, in
/// entries: the hardware's own prefetch of the seeds' five streams falls
/// behind, and the first read of each block then waits on memory.
const AHEAD: usize = 4096;

#[inline(always)]
fn prefetch(x: &[f32], at: usize) {
    #[cfg(target_arch = "x86_64")]
    if at < x.len() {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: a prefetch of an address inside the slice.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(x.as_ptr().add(at) as *const i8) };
    }
}

/// Σ_i p[i]·d_j[i] for each of `G` arrays `d_j`, added into `acc[j]` lane by
/// lane with one fused multiply-add each. `G` ≤ 4 sums at once: each chunk
/// of p is loaded once for all of them, and their lanes stay in registers.
#[inline(always)]
fn gram<const G: usize>(p: &[f32], d: [&[f64]; G], acc: &mut [[f64; LANES]]) {
    assert!(d.iter().all(|x| x.len() == p.len()) && acc.len() == G);
    let mut loc = [[0f64; LANES]; G];
    loc.copy_from_slice(acc);
    for (c, pc) in p.chunks_exact(LANES).enumerate() {
        for j in 0..G {
            let dc = &d[j][c * LANES..c * LANES + LANES];
            for i in 0..LANES {
                loc[j][i] = (pc[i] as f64).mul_add(dc[i], loc[j][i]);
            }
        }
    }
    acc.copy_from_slice(&loc);
}

/// Seeds and other seeds of [`gram_tile`]: five seeds (the paper's and
/// the presets') are one tile.
const TILE_A: usize = 5;
const TILE_B: usize = TILE_A - 1;

/// Every Gram sum of five seeds in one pass over a block, in AVX-512
/// registers: per chunk of eight entries the four differences to seed 0
/// are taken once and stay in registers with the twenty sums and the five
/// Z (`z`), so neither goes through memory. Same lanes and the same
/// operations in the same order as [`gram`] and the Z loop: the same bits.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gram_tile(
    p: [&[f32]; TILE_A],
    lb: [&[f32]; TILE_B],
    l0: &[f32],
    acc: &mut [[f64; LANES]],
    z: &mut [[f64; LANES]],
) {
    use std::arch::x86_64::*;
    const _: () = assert!(LANES == 8);
    let len = l0.len() / LANES * LANES;
    assert!(p.iter().all(|x| x.len() >= len) && lb.iter().all(|x| x.len() >= len));
    assert!(acc.len() == TILE_A * TILE_B && z.len() == TILE_A);
    let wide = |x: &[f32], c: usize| _mm512_cvtps_pd(_mm256_loadu_ps(x.as_ptr().add(c)));
    let mut g: [[__m512d; TILE_B]; TILE_A] = std::array::from_fn(|a| {
        std::array::from_fn(|j| _mm512_loadu_pd(acc[a * TILE_B + j].as_ptr()))
    });
    let mut zs: [__m512d; TILE_A] = std::array::from_fn(|a| _mm512_loadu_pd(z[a].as_ptr()));
    for c in (0..len).step_by(LANES) {
        let first = wide(l0, c);
        let d: [__m512d; TILE_B] = std::array::from_fn(|j| _mm512_sub_pd(wide(lb[j], c), first));
        for ((ga, za), pa) in g.iter_mut().zip(&mut zs).zip(&p) {
            let pa = wide(pa, c);
            *za = _mm512_add_pd(*za, pa);
            for (gj, dj) in ga.iter_mut().zip(&d) {
                *gj = _mm512_fmadd_pd(pa, *dj, *gj);
            }
        }
    }
    for (a, ga) in g.iter().enumerate() {
        for (j, gj) in ga.iter().enumerate() {
            _mm512_storeu_pd(acc[a * TILE_B + j].as_mut_ptr(), *gj);
        }
    }
    for (za, zs) in z.iter_mut().zip(&zs) {
        _mm512_storeu_pd(za.as_mut_ptr(), *zs);
    }
}

#[inline(always)]
fn kl_row_body<const AVX2: bool, const TILE: bool>(
    lp: &[&[f32]],
    buf: &mut RowBuffer,
    pairs: &[(usize, usize)],
    maxima: &mut [Vec<f32>],
) -> Vec<f64> {
    let seeds = lp.len();
    let n = lp.first().map_or(0, |l| l.len());
    let n8 = n / LANES * LANES;
    // KL(a‖b) = Σ p_a·(lp_a − lp_b) = g[a][a] − g[a][b] with the Gram sums
    // g[a][b] = Σ p_a·δ_b against seed 0, δ_b = lp_b − lp_0 (δ_0 = 0): one
    // multiply-add per (seed, other seed) and entry serves every ordered
    // pair (20 for five seeds, against 20 multiplies and 20 adds over the
    // pairs' own differences). δ is taken in f64, where the difference of
    // two f32 is exact, and the products are fused, so the only rounding is
    // the sums' (≈ 1e-16 of Σ p|δ|, small where the seeds are close).
    let others = seeds.saturating_sub(1);
    assert!(buf.p.len() >= seeds * BLOCK && buf.d.len() >= others * BLOCK);
    let RowBuffer { p: p32, d: d64 } = buf;
    let mut acc_z = vec![[0f64; LANES]; seeds];
    let tile = TILE && seeds == TILE_A;
    let mut acc_g = vec![[0f64; LANES]; seeds * others];
    let mut start = 0;
    while start < n8 {
        let end = (start + BLOCK).min(n8);
        let len = end - start;
        for (s, l) in lp.iter().enumerate() {
            // exp in f32 lanes (sixteen or eight per instruction); the sums
            // widen p to f64 as they read it.
            let p = &mut p32[s * BLOCK..s * BLOCK + len];
            for (c, (d, x)) in p
                .chunks_exact_mut(16)
                .zip(l[start..end].chunks_exact(16))
                .enumerate()
            {
                prefetch(l, start + c * 16 + AHEAD);
                for i in 0..16 {
                    d[i] = exp_f32_with::<true>(x[i]);
                }
            }
            for (d, &x) in p[len / 16 * 16..]
                .iter_mut()
                .zip(&l[start + len / 16 * 16..end])
            {
                *d = exp_f32_with::<true>(x);
            }
            // The top-k's block maxima while the block is in cache.
            if let Some(m) = maxima.get_mut(s) {
                let whole = len / MAX_BLOCK;
                let out = &mut m[start / MAX_BLOCK..start / MAX_BLOCK + whole];
                block_maxima::<AVX2>(&l[start..start + whole * MAX_BLOCK], out);
            }
            if tile {
                // The tile sums Z with the Gram sums.
                continue;
            }
            // A local copy keeps the lanes in registers.
            let mut az = acc_z[s];
            for c in p.chunks_exact(LANES) {
                for i in 0..LANES {
                    az[i] += c[i] as f64;
                }
            }
            acc_z[s] = az;
        }
        let l0 = &lp[0][start..end];
        if tile {
            let p: [&[f32]; TILE_A] = std::array::from_fn(|a| &p32[a * BLOCK..a * BLOCK + len]);
            let lb: [&[f32]; TILE_B] = std::array::from_fn(|j| &lp[j + 1][start..end]);
            // SAFETY: TILE is true only in the AVX-512 kernel.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                gram_tile(p, lb, l0, &mut acc_g, &mut acc_z)
            };
            start = end;
            continue;
        }
        for b in 1..seeds {
            let d = &mut d64[(b - 1) * BLOCK..(b - 1) * BLOCK + len];
            for ((d, &x), &y) in d.iter_mut().zip(&lp[b][start..end]).zip(l0) {
                *d = x as f64 - y as f64;
            }
        }
        let d: Vec<&[f64]> = (0..others)
            .map(|b| &d64[b * BLOCK..b * BLOCK + len])
            .collect();
        for a in 0..seeds {
            let p = &p32[a * BLOCK..a * BLOCK + len];
            let g = &mut acc_g[a * others..(a + 1) * others];
            for (dj, gj) in d.chunks(4).zip(g.chunks_mut(4)) {
                match *dj {
                    [d0, d1, d2, d3] => gram(p, [d0, d1, d2, d3], gj),
                    [d0, d1, d2] => gram(p, [d0, d1, d2], gj),
                    [d0, d1] => gram(p, [d0, d1], gj),
                    [d0] => gram(p, [d0], gj),
                    _ => unreachable!("chunks of one to four"),
                }
            }
        }
        start = end;
    }
    // Maxima of the blocks after the last whole one the loop saw.
    let whole = n8 / MAX_BLOCK * MAX_BLOCK;
    for (m, l) in maxima.iter_mut().zip(lp) {
        for (c, x) in l[whole..].chunks(MAX_BLOCK).enumerate() {
            m[whole / MAX_BLOCK + c] = block_max(x);
        }
    }
    // The last n mod LANES entries, one at a time, in the same operations.
    let tail_p: Vec<Vec<f64>> = lp
        .iter()
        .map(|l| {
            l[n8..]
                .iter()
                .map(|&v| exp_f32_with::<true>(v) as f64)
                .collect()
        })
        .collect();
    let z: Vec<f64> = (0..seeds)
        .map(|s| combine(acc_z[s], tail_p[s].iter().sum()))
        .collect();
    // g[a][b] whole; seed 0's column is zero.
    let g = |a: usize, b: usize| -> f64 {
        if b == 0 {
            return 0.0;
        }
        let tail = (n8..n).fold(0.0, |t: f64, i| {
            let d = lp[b][i] as f64 - lp[0][i] as f64;
            tail_p[a][i - n8].mul_add(d, t)
        });
        combine(acc_g[a * others + b - 1], tail)
    };
    pairs
        .iter()
        .map(|&(a, b)| (g(a, a) - g(a, b)) / z[a] - z[a].ln() + z[b].ln())
        .collect()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn kl_row_avx2(
    lp: &[&[f32]],
    buf: &mut RowBuffer,
    pairs: &[(usize, usize)],
    maxima: &mut [Vec<f32>],
) -> Vec<f64> {
    kl_row_body::<true, false>(lp, buf, pairs, maxima)
}

/// [`kl_row_avx2`] in 512-bit registers: half the instructions, and 32
/// registers hold every Gram lane of a chunk.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn kl_row_avx512(
    lp: &[&[f32]],
    buf: &mut RowBuffer,
    pairs: &[(usize, usize)],
    maxima: &mut [Vec<f32>],
) -> Vec<f64> {
    kl_row_body::<true, true>(lp, buf, pairs, maxima)
}

/// Exact KL(a ‖ b) in nats for each of `pairs` of one row, given each
/// seed's log-probs (`buf`: a [`row_buffer`] for as many seeds). The stored
/// log-probs are normalised only to f32 rounding (their log-sum-exp can be
/// off by ~1e-7: a shift of the whole row that would bias a small KL), so
/// the distributions they describe are measured exactly:
/// KL = Σ p_a(lp_a − lp_b)/Z_a − ln Z_a + ln Z_b with p = exp(lp), Z = Σ p.
pub fn kl_row(lp: &[&[f32]], buf: &mut RowBuffer, pairs: &[(usize, usize)]) -> Vec<f64> {
    kl_row_maxima(lp, buf, pairs, &mut [])
}

/// [`kl_row`], also filling `maxima[s]` (when given: one per seed, each of
/// [`max_blocks`] entries) with the block maxima [`top_k_with`] selects
/// from, read while each block is in cache.
pub fn kl_row_maxima(
    lp: &[&[f32]],
    buf: &mut RowBuffer,
    pairs: &[(usize, usize)],
    maxima: &mut [Vec<f32>],
) -> Vec<f64> {
    assert!(lp.windows(2).all(|w| w[0].len() == w[1].len()));
    let n = lp.first().map_or(0, |l| l.len());
    assert!(maxima.is_empty() || maxima.len() == lp.len());
    assert!(maxima.iter().all(|m| m.len() == max_blocks(n)));
    #[cfg(target_arch = "x86_64")]
    match simd() {
        // SAFETY: the CPU has the features (checked by `simd`).
        Simd::Avx512 => return unsafe { kl_row_avx512(lp, buf, pairs, maxima) },
        Simd::Avx2 => return unsafe { kl_row_avx2(lp, buf, pairs, maxima) },
        Simd::None => {}
    }
    kl_row_body::<false, false>(lp, buf, pairs, maxima)
}

/// What [`kl_row`] works in, for one block: each seed's p, and each but
/// the first one's difference to the first.
pub struct RowBuffer {
    p: Vec<f32>,
    d: Vec<f64>,
}

/// The buffer [`kl_row`] needs for `seeds` seeds.
pub fn row_buffer(seeds: usize) -> RowBuffer {
    RowBuffer {
        p: vec![0f32; seeds * BLOCK],
        d: vec![0f64; seeds.saturating_sub(1) * BLOCK],
    }
}

#[inline(always)]
fn row_sums_body(lp: &[f32], lq: &[f64], p: &mut [f32]) -> (f64, f64) {
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
unsafe fn row_sums_avx2(lp: &[f32], lq: &[f64], p: &mut [f32]) -> (f64, f64) {
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
unsafe fn log_softmax_avx2(x: &mut [f32], e: &mut [f32]) -> bool {
    log_softmax_body(x, e)
}

#[inline(always)]
fn log_softmax_body(x: &mut [f32], e: &mut [f32]) -> bool {
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
fn normaliser(x: &[f32], e: &mut [f32]) -> Option<(f64, f64)> {
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
unsafe fn row_stats_logits_avx2(
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
fn lp_sums(x: &mut [f32], e: &[f32], lq: &[f64], lse: f64) -> ([f64; LANES], [f64; LANES]) {
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
fn row_stats_logits_body<const AVX2: bool>(
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
fn finite_max(x: &[f32]) -> Option<f32> {
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

/// Indices of the `k` largest values, largest first, ties to the lower id
/// (as `divergence::top_k`): the k-th largest maximum of groups of eight
/// entries is a lower bound of the k-th largest value, so one vectorised
/// compare against it leaves a few candidates to select and sort.
pub fn top_k(x: &[f32], k: usize) -> Vec<u32> {
    let n = x.len();
    let k = k.min(n);
    if k == 0 {
        return Vec::new();
    }
    if n < 8 * k {
        // Fewer groups than k: one selection over every key.
        let mut all: Vec<u64> = (0..n).map(|i| rank_key(x[i], i)).collect();
        if k < n {
            all.select_nth_unstable(k - 1);
            all.truncate(k);
        }
        all.sort_unstable();
        return all.into_iter().map(|c| (c & 0xffff_ffff) as u32).collect();
    }
    if max_blocks(n) >= 4 * k {
        // A long row (a 50k vocabulary): the 64-entry blocks' maxima alone
        // bound the k-th value closely enough, from a selection over an
        // eighth of the keys the groups below would give (786 against
        // 6,285: 11 µs against 19 per row).
        return top_k_with(x, k, &row_block_maxima(x));
    }
    // Groups: within each 64-entry block the eight entries of one vector
    // lane (lane-wise maxima, no horizontal step); in a partial last block,
    // runs of eight. The blocks' maxima let the scan skip whole blocks.
    let mut groups: Vec<u32> = Vec::with_capacity(n.div_ceil(8));
    let mut blocks: Vec<f32> = Vec::with_capacity(max_blocks(n));
    let top = |a: f32, b: f32| if b > a { b } else { a };
    for c in x.chunks(MAX_BLOCK) {
        let mut m = [f32::NEG_INFINITY; 8];
        if c.len() == MAX_BLOCK {
            m = lane_maxima(c);
        } else {
            for (mi, ch) in m.iter_mut().zip(c.chunks(8)) {
                *mi = ch.iter().copied().fold(f32::NEG_INFINITY, top);
            }
        }
        let used = c.len().div_ceil(8).min(8);
        groups.extend(m[..used].iter().map(|&v| value_key(v)));
        blocks.push(m.iter().copied().fold(f32::NEG_INFINITY, top));
    }
    let (_, kth, _) = groups.select_nth_unstable(k - 1);
    top_k_above(x, k, &blocks, key_value(*kth))
}

/// Entries per block of the maxima [`top_k`] selects from (a divisor of
/// [`kl_row`]'s blocks).
const MAX_BLOCK: usize = 64;
const _: () = assert!(BLOCK.is_multiple_of(MAX_BLOCK));

/// The number of block maxima of a row of `n`.
pub fn max_blocks(n: usize) -> usize {
    n.div_ceil(MAX_BLOCK)
}

#[inline(always)]
fn block_max(c: &[f32]) -> f32 {
    // Lane-wise maxima, then the eight lanes and the rest.
    let n8 = c.len() / 8 * 8;
    let m = lane_maxima(&c[..n8]);
    let mut best = f32::NEG_INFINITY;
    for &v in c[n8..].iter().chain(&m) {
        best = if v > best { v } else { best };
    }
    best
}

/// The maxima of each of eight lanes over `c` (a whole number of eights):
/// independent lanes and a plain compare, one vmaxps per eight, as
/// log-probs are never NaN.
#[inline(always)]
fn lane_maxima(c: &[f32]) -> [f32; 8] {
    let mut m = [f32::NEG_INFINITY; 8];
    for ch in c.chunks_exact(8) {
        for i in 0..8 {
            m[i] = if ch[i] > m[i] { ch[i] } else { m[i] };
        }
    }
    m
}

/// The maxima of each 64-entry block of a row, the last one partial.
fn row_block_maxima(x: &[f32]) -> Vec<f32> {
    let full = x.len() / MAX_BLOCK * MAX_BLOCK;
    let mut m = vec![0f32; max_blocks(x.len())];
    if has_avx2() {
        block_maxima::<true>(&x[..full], &mut m);
    } else {
        block_maxima::<false>(&x[..full], &mut m);
    }
    if full < x.len() {
        m[full / MAX_BLOCK] = block_max(&x[full..]);
    }
    m
}

/// The maxima of `x`'s 64-entry blocks (`x` a whole number of them), with
/// explicit AVX2 when `AVX2` (only inside an AVX2 kernel).
#[inline(always)]
fn block_maxima<const AVX2: bool>(x: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if AVX2 {
        // SAFETY: AVX2 is true only in code the dispatch runs on AVX2 CPUs.
        return unsafe { avx2::block_maxima(x, out) };
    }
    for (c, o) in x.chunks_exact(MAX_BLOCK).zip(out) {
        *o = block_max(c);
    }
}

/// [`top_k`] of a row given the maxima of its 64-entry blocks (as
/// [`kl_row_maxima`] leaves them). A row of fewer than k blocks has every
/// entry as a candidate: one selection, as [`top_k`] does for short rows.
pub fn top_k_with(x: &[f32], k: usize, maxima: &[f32]) -> Vec<u32> {
    let n = x.len();
    let k = k.min(n);
    if k == 0 {
        return Vec::new();
    }
    // The k-th largest of the block maxima is a lower bound of the k-th
    // largest value (each of those k blocks holds a value at least that
    // large), so only blocks whose maximum reaches it can hold the top k,
    // and within them only values reaching it.
    let thr = if k <= maxima.len() {
        // Selected as integers.
        let mut keys: Vec<u32> = maxima.iter().map(|&m| value_key(m)).collect();
        let (_, kth, _) = keys.select_nth_unstable(k - 1);
        key_value(*kth)
    } else {
        f32::NEG_INFINITY
    };
    top_k_above(x, k, maxima, thr)
}

/// The top `k` of `x` given its blocks' `maxima` and a lower bound `thr`
/// of its k-th largest value.
fn top_k_above(x: &[f32], k: usize, maxima: &[f32], thr: f32) -> Vec<u32> {
    let mut cand: Vec<u64> = Vec::with_capacity(4 * k);
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2 (checked above).
        unsafe { avx2::candidates(x, maxima, thr, &mut cand) };
    } else {
        candidates(x, maxima, thr, &mut cand);
    }
    #[cfg(not(target_arch = "x86_64"))]
    candidates(x, maxima, thr, &mut cand);
    if cand.len() > 2 * k {
        cand.select_nth_unstable(k - 1);
        cand.truncate(k);
    }
    // A few more than k: one sort beats a selection and a sort.
    cand.sort_unstable();
    cand.truncate(k);
    cand.into_iter().map(|c| (c & 0xffff_ffff) as u32).collect()
}

/// The keys of the entries of `x` reaching `thr` in blocks whose maximum
/// does.
fn candidates(x: &[f32], maxima: &[f32], thr: f32, cand: &mut Vec<u64>) {
    for (bi, &m) in maxima.iter().enumerate() {
        if m >= thr {
            let start = bi * MAX_BLOCK;
            scan(x, start..(start + MAX_BLOCK).min(x.len()), thr, cand);
        }
    }
}

/// The keys of the entries of `x[range]` reaching `thr`, one at a time.
#[inline(always)]
fn scan(x: &[f32], range: std::ops::Range<usize>, thr: f32, cand: &mut Vec<u64>) {
    let start = range.start;
    for (j, &v) in x[range].iter().enumerate() {
        if v >= thr {
            cand.push(rank_key(v, start + j));
        }
    }
}

/// The order [`top_k`] ranks entries by, as one integer: value descending,
/// then id ascending, so selection and sorting compare integers.
#[inline(always)]
fn rank_key(v: f32, i: usize) -> u64 {
    ((value_key(v) as u64) << 32) | i as u64
}

/// A value as an integer that sorts it descending (finite values).
#[inline(always)]
fn value_key(v: f32) -> u32 {
    let b = v.to_bits();
    let asc = if b >> 31 == 1 { !b } else { b | 0x8000_0000 };
    !asc
}

/// The value [`value_key`] made `key` of.
fn key_value(key: u32) -> f32 {
    let asc = !key;
    f32::from_bits(if asc >> 31 == 1 {
        asc & 0x7fff_ffff
    } else {
        !asc
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::divergence;

    use divergence::tests::random_logits as rand;

    /// p = exp(lp) (fused, as `kl_row` takes it) and Σ p, unblocked.
    fn exp_into(lp: &[f32], p: &mut [f32]) -> f64 {
        for (d, &l) in p.iter_mut().zip(lp) {
            *d = exp_f32_with::<true>(l);
        }
        sum(p)
    }

    /// Σ p·(b − a) with the difference in f64, unblocked, in the same lanes
    /// and multiply-adds as `kl_row`'s Gram sums.
    fn dot_diff(p: &[f32], a: &[f32], b: &[f32]) -> f64 {
        let n8 = p.len() / LANES * LANES;
        let mut acc = [0f64; LANES];
        for i in 0..n8 {
            let d = b[i] as f64 - a[i] as f64;
            acc[i % LANES] = (p[i] as f64).mul_add(d, acc[i % LANES]);
        }
        let tail = (n8..p.len()).fold(0.0, |t: f64, i| {
            (p[i] as f64).mul_add(b[i] as f64 - a[i] as f64, t)
        });
        combine(acc, tail)
    }

    #[test]
    fn exp_is_within_two_ulp_of_f64_and_sums_in_f64() {
        let lp: Vec<f32> = rand(1, 1003, 87.0).iter().map(|v| 0.01 - v).collect();
        for fused in [false, true] {
            let p: Vec<f32> = lp
                .iter()
                .map(|&l| {
                    if fused {
                        exp_f32_with::<true>(l)
                    } else {
                        exp_f32(l)
                    }
                })
                .collect();
            let z = sum(&p);
            let mut want = 0.0;
            for (&l, &q) in lp.iter().zip(&p) {
                let e = (l as f64).exp();
                want += q as f64;
                if e > 1e-37 {
                    assert!(
                        ((q as f64) - e).abs() <= 2.5 * e * f32::EPSILON as f64,
                        "{l} fused {fused}"
                    );
                }
            }
            assert!((z - want).abs() <= 1e-15 * want);
        }
        // The widened exp of the validation: exp_f32's values, on every path.
        let mut wide = vec![0f64; lp.len()];
        exp_wide(&lp, &mut wide);
        let mut portable = vec![0f64; lp.len()];
        exp_wide_body(&lp, &mut portable);
        for ((&w, &q), &l) in wide.iter().zip(&portable).zip(&lp) {
            assert_eq!(w.to_bits(), q.to_bits(), "{l}");
            assert_eq!(w, exp_f32(l) as f64, "{l}");
        }
    }

    #[test]
    fn pair_kl_matches_a_float64_reference_and_ignores_a_shift() {
        for seed in 0..20 {
            let n = 517;
            let mut a = vec![0f32; n];
            let mut b = vec![0f32; n];
            divergence::log_softmax(&rand(seed, n, 9.0), &mut a).unwrap();
            divergence::log_softmax(&rand(seed + 99, n, 9.0), &mut b).unwrap();
            let want: f64 = a
                .iter()
                .zip(&b)
                .map(|(&x, &y)| (x as f64).exp() * (x as f64 - y as f64))
                .sum();
            // A normalisation off by 1e-5 in either row changes nothing.
            let a2: Vec<f32> = a.iter().map(|v| v + 1e-5).collect();
            let b2: Vec<f32> = b.iter().map(|v| v - 1e-5).collect();
            for (x, y) in [(&a, &b), (&a2, &b2)] {
                let got = kl_row(&[x, y], &mut row_buffer(2), &[(0, 1)])[0];
                assert!((got - want).abs() <= 2e-6 * want + 1e-9, "{got} vs {want}");
            }
        }
    }

    #[test]
    fn portable_and_dispatched_paths_agree_bit_for_bit() {
        let (p, a, b) = (rand(1, 1001, 1.0), rand(2, 1001, 9.0), rand(3, 1001, 9.0));
        assert_eq!(sum(&p).to_bits(), sum_body(&p).to_bits());
        let mut buf = row_buffer(3);
        let lp: [&[f32]; 3] = [&a, &b, &p];
        let pairs = [(0, 1), (1, 0), (2, 1), (0, 2)];
        let x = kl_row(&lp, &mut buf, &pairs);
        let y = kl_row_body::<false, false>(&lp, &mut buf, &pairs, &mut []);
        assert_eq!(x, y);
        // Every vector width this CPU has gives the same bits.
        #[cfg(target_arch = "x86_64")]
        for level in [Simd::Avx2, Simd::Avx512] {
            let has = match level {
                Simd::Avx512 => simd() == Simd::Avx512,
                _ => simd() != Simd::None,
            };
            if has {
                // SAFETY: the CPU has the level's features (checked above).
                let z = unsafe {
                    match level {
                        Simd::Avx512 => kl_row_avx512(&lp, &mut buf, &pairs, &mut []),
                        _ => kl_row_avx2(&lp, &mut buf, &pairs, &mut []),
                    }
                };
                assert_eq!(x, z, "{level:?}");
            }
        }
        // Five seeds: the AVX-512 kernel's register tile, every ordered pair.
        let five: Vec<Vec<f32>> = (0..5).map(|s| rand(10 + s, 1001, 9.0)).collect();
        let lp5: Vec<&[f32]> = five.iter().map(|v| v.as_slice()).collect();
        let all: Vec<(usize, usize)> = (0..5)
            .flat_map(|a| (0..5).filter(move |&b| b != a).map(move |b| (a, b)))
            .collect();
        let mut buf5 = row_buffer(5);
        let x5 = kl_row(&lp5, &mut buf5, &all);
        let y5 = kl_row_body::<false, false>(&lp5, &mut buf5, &all, &mut []);
        assert_eq!(x5, y5, "five seeds");
        #[cfg(target_arch = "x86_64")]
        if simd() != Simd::None {
            // SAFETY: the CPU has AVX2 and FMA (checked above).
            let z5 = unsafe { kl_row_avx2(&lp5, &mut buf5, &all, &mut []) };
            assert_eq!(x5, z5, "five seeds, AVX2");
        }
        // Blocked or not, the lanes see the same sums: KL(0‖1) is
        // (g[0][0] − g[0][1])/Z_0 − ln Z_0 + ln Z_1 with g[0][0] = 0.
        let mut p0 = vec![0f32; a.len()];
        let z0 = exp_into(&a, &mut p0);
        let mut p1 = vec![0f32; b.len()];
        let z1 = exp_into(&b, &mut p1);
        let want = (0.0 - dot_diff(&p0, &a, &b)) / z0 - z0.ln() + z1.ln();
        assert_eq!(x[0].to_bits(), want.to_bits());
    }

    #[test]
    fn gram_sums_are_exact_for_identical_seeds_and_close_seeds_far_from_the_first() {
        // Seed 0 far from seeds 1 and 2, which are close to each other: the
        // differences to seed 0 are large, KL(1‖2) tiny. Its error must be
        // relative to it, not to the differences (f64 differences, fused
        // products).
        let n = 50_000;
        let mut far = vec![0f32; n];
        let mut a = vec![0f32; n];
        divergence::log_softmax(&rand(7, n, 12.0), &mut far).unwrap();
        divergence::log_softmax(&rand(8, n, 12.0), &mut a).unwrap();
        let nudge = rand(9, n, 1e-3);
        let mut b = vec![0f32; n];
        let xb: Vec<f32> = a.iter().zip(&nudge).map(|(x, e)| x + e).collect();
        divergence::log_softmax(&xb, &mut b).unwrap();
        let lp: [&[f32]; 4] = [&far, &a, &b, &a];
        let pairs = [(1, 2), (2, 1), (1, 3), (3, 1), (0, 1), (1, 0)];
        let got = kl_row(&lp, &mut row_buffer(4), &pairs);
        // The reference in f64 over the same stored log-probs, with p from
        // the same f32 exponentials (their ≤ 2 ulp alone move a KL of 4e-8
        // by ~1e-3 of itself). The Gram sums round at ~1e-16 of Σ p|δ| ≈ 5
        // here, ~1e-7 of this KL; differences to seed 0 taken in f32 would
        // cost ~1e-2.
        let reference = |x: &[f32], y: &[f32]| -> f64 {
            let p = |v: f32| exp_f32_with::<true>(v) as f64;
            let z: f64 = x.iter().map(|&v| p(v)).sum();
            let zy: f64 = y.iter().map(|&v| p(v)).sum();
            x.iter()
                .zip(y)
                .map(|(&u, &v)| p(u) * (u as f64 - v as f64))
                .sum::<f64>()
                / z
                - z.ln()
                + zy.ln()
        };
        for (&(i, j), &g) in pairs.iter().zip(&got) {
            let want = reference(lp[i], lp[j]);
            if i == 1 && j == 3 || i == 3 && j == 1 {
                assert_eq!(g, 0.0, "identical seeds {i} {j}");
            } else {
                assert!((g - want).abs() <= 1e-6 * want, "KL({i}‖{j}) {g} vs {want}");
            }
        }
        assert!(got[0] < 1e-6 && got[0] > 0.0, "{}", got[0]);
    }

    #[test]
    fn log_softmax_matches_the_float64_reference_and_refuses_non_finite_rows() {
        for (seed, n) in [(1u64, 1024usize), (2, 1003), (3, 50), (4, 7), (5, 1)] {
            let x = rand(seed, n, 25.0);
            let mut want = vec![0f32; n];
            divergence::log_softmax(&x, &mut want).unwrap();
            let mut got = x.clone();
            assert!(log_softmax(&mut got, &mut vec![0f32; n]));
            for (g, w) in got.iter().zip(&want) {
                // The f64 reference rounds once; the f32 exponentials move
                // lse by ≤ 2.4e-7 relative to the sum, so at most an ulp.
                assert!(
                    (g - w).abs() <= 2.0 * w.abs().max(1.0) * f32::EPSILON,
                    "{g} vs {w}"
                );
            }
            let mut plain = x.clone();
            assert!(log_softmax_body(&mut plain, &mut vec![0f32; n]));
            assert_eq!(plain, got, "portable and dispatched paths");
            for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                let mut y = x.clone();
                y[n / 2] = bad;
                let before = y.clone();
                assert!(!log_softmax(&mut y, &mut vec![0f32; n]));
                assert_eq!(
                    y.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    before.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
                );
            }
        }
        assert!(log_softmax(&mut [], &mut []));
    }

    #[test]
    fn row_stats_from_logits_match_the_float64_reference() {
        for (seed, n) in [(0u64, 1003usize), (1, 1024), (2, 64), (3, 9), (4, 5000)] {
            for scale in [3.0, 14.0, 40.0] {
                let x = rand(seed, n, scale);
                let mut lq = vec![0f32; n];
                divergence::log_softmax(&rand(seed + 7, n, 3.0), &mut lq).unwrap();
                let lq: Vec<f64> = lq.iter().map(|&x| x as f64).collect();
                let mut got_lp = x.clone();
                let (t, k) = (n / 3, 16.min(n));
                let got = row_stats_logits(&mut got_lp, t, k, &lq, &mut vec![0f32; n]).unwrap();
                // The log-probs: as log_softmax gives them.
                let mut lp = x.clone();
                assert!(log_softmax(&mut lp, &mut vec![0f32; n]));
                for (g, w) in got_lp.iter().zip(&lp) {
                    assert!((g - w).abs() <= 2.0 * w.abs().max(1.0) * f32::EPSILON);
                }
                // Ids, their log-probs and the target's: exactly the
                // reference's on the row's own log-probs.
                let want = divergence::row_stats(&got_lp, t, k, &lq);
                assert_eq!(got.topk_ids, want.topk_ids);
                assert_eq!(got.topk_logprobs, want.topk_logprobs);
                assert_eq!(got.target_logprob, want.target_logprob);
                // The sums: against float64 from the logits themselves.
                let mut l64 = vec![0f64; n];
                let m = x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
                let z = m + x.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
                l64.iter_mut().zip(&x).for_each(|(d, &v)| *d = v as f64 - z);
                let h = -l64.iter().map(|l| l.exp() * l).sum::<f64>();
                let kq: f64 = l64.iter().zip(&lq).map(|(l, q)| l.exp() * (l - q)).sum();
                let mut top: Vec<f64> = l64.clone();
                top.sort_by(|a, b| b.total_cmp(a));
                let rest: f64 = top[k..].iter().map(|l| l.exp()).sum();
                for (what, g, w) in [
                    ("entropy", got.entropy, h),
                    ("kl_uniform", got.kl_uniform, (n as f64).ln() - h),
                    ("kl_unigram", got.kl_unigram, kq),
                    ("log_mass_outside", got.log_mass_outside, rest.ln()),
                ] {
                    assert!(
                        g == w || (g - w).abs() <= 2e-6 * w.abs().max(1e-2),
                        "n {n} scale {scale} {what}: {g} vs {w}"
                    );
                }
                // The portable path gives the same bits.
                let mut plain_lp = x.clone();
                let plain =
                    row_stats_logits_body::<false>(&mut plain_lp, t, k, &lq, &mut vec![0f32; n])
                        .unwrap();
                assert_eq!(plain, got);
                assert_eq!(plain_lp, got_lp);
            }
        }
        // A non-finite logit: None, the row untouched.
        let mut x = rand(9, 100, 5.0);
        x[40] = f32::NAN;
        let before: Vec<u32> = x.iter().map(|v| v.to_bits()).collect();
        assert!(row_stats_logits(&mut x, 0, 5, &[0.0; 100], &mut [0.0; 100]).is_none());
        assert_eq!(x.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), before);
    }

    #[test]
    fn row_stats_match_the_float64_reference() {
        for seed in 0..10 {
            let n = 1003;
            let mut lp = vec![0f32; n];
            divergence::log_softmax(&rand(seed, n, 14.0), &mut lp).unwrap();
            let mut lq = vec![0f32; n];
            divergence::log_softmax(&rand(seed + 7, n, 3.0), &mut lq).unwrap();
            let lq: Vec<f64> = lq.iter().map(|&x| x as f64).collect();
            let want = divergence::row_stats(&lp, 5, 16, &lq);
            let got = row_stats(&lp, 5, 16, &lq, &mut vec![0f32; n]);
            assert_eq!(got.topk_ids, want.topk_ids);
            assert_eq!(got.topk_logprobs, want.topk_logprobs);
            assert_eq!(got.target_logprob, want.target_logprob);
            for (g, w) in [
                (got.entropy, want.entropy),
                (got.kl_uniform, want.kl_uniform),
                (got.kl_unigram, want.kl_unigram),
                (got.log_mass_outside, want.log_mass_outside),
            ] {
                assert!((g - w).abs() <= 1e-6 * w.abs().max(1e-3), "{g} vs {w}");
            }
        }
    }

    #[test]
    fn block_maxima_from_the_exact_pass_give_the_same_kl_and_top_k() {
        // Lengths around the block sizes (8, 64, 512), values with ties.
        for (seed, n) in [
            (1u64, 4103usize),
            (2, 4096),
            (3, 5000),
            (4, 6151),
            (5, 9000),
            (6, 1000),
            (7, 300),
        ] {
            let rows: Vec<Vec<f32>> = (0..3)
                .map(|s| {
                    let x: Vec<f32> = rand(seed * 10 + s, n, 30.0)
                        .iter()
                        .map(|v| (v * 4.0).floor() / 4.0)
                        .collect();
                    let mut lp = vec![0f32; n];
                    divergence::log_softmax(&x, &mut lp).unwrap();
                    lp
                })
                .collect();
            let lp: Vec<&[f32]> = rows.iter().map(|r| r.as_slice()).collect();
            let pairs = [(0, 1), (1, 0), (2, 0), (1, 2)];
            let mut buf = row_buffer(3);
            let plain = kl_row(&lp, &mut buf, &pairs);
            let mut maxima = vec![vec![f32::NAN; max_blocks(n)]; 3];
            let fused = kl_row_maxima(&lp, &mut buf, &pairs, &mut maxima);
            assert_eq!(
                plain.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                fused.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            );
            for (r, m) in rows.iter().zip(&maxima) {
                let want: Vec<f32> = r
                    .chunks(64)
                    .map(|c| c.iter().copied().fold(f32::NEG_INFINITY, f32::max))
                    .collect();
                assert_eq!(m, &want, "n {n}");
                for k in [1, 16, 64, 256] {
                    assert_eq!(top_k_with(r, k, m), divergence::top_k(r, k), "n {n} k {k}");
                }
                // The portable and the AVX2 pieces agree.
                let whole = n / 64 * 64;
                let mut plain = vec![0f32; whole / 64];
                block_maxima::<false>(&r[..whole], &mut plain);
                assert_eq!(plain, want[..whole / 64]);
                let thr = r[n / 2];
                let mut c0 = Vec::new();
                candidates(r, m, thr, &mut c0);
                #[cfg(target_arch = "x86_64")]
                if has_avx2() {
                    let mut fast = vec![0f32; whole / 64];
                    // SAFETY: the CPU has AVX2 (checked above).
                    unsafe { avx2::block_maxima(&r[..whole], &mut fast) };
                    assert_eq!(fast, plain);
                    let mut c1 = Vec::new();
                    // SAFETY: as above.
                    unsafe { avx2::candidates(r, m, thr, &mut c1) };
                    assert_eq!(c0, c1, "n {n}");
                }
            }
        }
    }

    #[test]
    fn top_k_equals_the_sorting_definition_with_ties() {
        // Lengths on and off the 8- and 64-entry groups; k on both sides of
        // n / 8 (the selection over every key below it) and of n / 256 (the
        // blocks' maxima alone above it).
        for (seed, n) in (0..30)
            .map(|s| (s, 3000))
            .chain([(31, 1024), (32, 1003), (33, 130), (34, 64), (35, 9)])
            .chain([(36, 50_277), (37, 40_000)])
        {
            // Coarse values force many ties.
            let x: Vec<f32> = rand(seed, n, 40.0).iter().map(|v| v.floor()).collect();
            for k in [1, 5, 16, 64, 128, 256, n - 1, n, n + 1000] {
                assert_eq!(
                    top_k(&x, k),
                    divergence::top_k(&x, k),
                    "seed {seed} n {n} k {k}"
                );
            }
        }
    }
}
