//! The exact pass: KL of every ordered seed pair of a row from each seed's
//! log-probs, in blocks that stay in cache while every pair reads them.

use super::topk::{block_max, block_maxima, max_blocks, MAX_BLOCK};
use super::*;

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
pub(super) fn exp_wide_body(x: &[f32], out: &mut [f64]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = exp_f32(v) as f64;
    }
}

/// How far ahead of the exp loop a row is fetched into the cache, in
/// entries: the hardware's own prefetch of the seeds' five streams falls
/// behind, and the first read of each block then waits on memory.
pub(super) const AHEAD: usize = 4096;

#[inline(always)]
pub(super) fn prefetch(x: &[f32], at: usize) {
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
pub(super) fn gram<const G: usize>(p: &[f32], d: [&[f64]; G], acc: &mut [[f64; LANES]]) {
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
pub(super) const TILE_A: usize = 5;
pub(super) const TILE_B: usize = TILE_A - 1;

/// Every Gram sum of five seeds in one pass over a block, in AVX-512
/// registers: per chunk of eight entries the four differences to seed 0
/// are taken once and stay in registers with the twenty sums and the five
/// Z (`z`), so neither goes through memory. Same lanes and the same
/// operations in the same order as [`gram`] and the Z loop: the same bits.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn gram_tile(
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
pub(super) fn kl_row_body<const AVX2: bool, const TILE: bool>(
    lp: &[&[f32]],
    buf: &mut RowBuffer,
    pairs: &[(usize, usize)],
    maxima: &mut [Vec<f32>],
    battery: Option<&mut RowBattery>,
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
    // The battery's totals: per unordered pair Σ max(p_a, p_b), and
    // K·Σ p̄·(lp_0 − ln p̄) (ln p̄ from the table shifted by −ln K).
    let mut tv = vec![[0f64; XL]; seeds * others / 2];
    let lt = log_table(-(seeds as f64).ln());
    let mut j0 = [0f64; XL];
    let mut acc_z = vec![[0f64; LANES]; seeds];
    let tile = TILE && seeds == TILE_A;
    let mut acc_g = vec![[0f64; LANES]; seeds * others];
    // The battery's argmax without the block maxima (a validated row has
    // them): per seed and lane of sixteen the largest log-prob seen and the
    // first block holding it, taken while the block is in cache (one max
    // per sixteen entries, where the maxima cost a max per eight and a
    // reduction per 64); then one block is searched.
    let argmax = battery.as_deref().is_some_and(|b| b.argmax);
    let track = argmax && maxima.is_empty();
    let mut best = vec![([f32::NEG_INFINITY; 16], [0u32; 16]); if track { seeds } else { 0 }];
    let mut start = 0;
    while start < n8 {
        let end = (start + BLOCK).min(n8);
        let len = end - start;
        for (s, l) in lp.iter().enumerate() {
            // exp in f32 lanes (sixteen or eight per instruction); the sums
            // widen p to f64 as they read it.
            let p = &mut p32[s * BLOCK..s * BLOCK + len];
            exp_block(l, start, p);
            if let Some(b) = best.get_mut(s) {
                keep_first_max(b, lane_max16(&l[start..end]), start);
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
            if battery.is_some() {
                battery_block::<TILE>(&p, l0, &lt, &mut tv, &mut j0);
            }
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
        if battery.is_some() {
            let p: Vec<&[f32]> = (0..seeds)
                .map(|a| &p32[a * BLOCK..a * BLOCK + len])
                .collect();
            battery_block::<false>(&p, l0, &lt, &mut tv, &mut j0);
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
    if let Some(out) = battery {
        out.top = if !argmax {
            Vec::new()
        } else if track {
            lp.iter()
                .zip(&best)
                .map(|(l, (v, at))| {
                    // The earliest block holding the lanes' maximum, the
                    // tail after the blocks, then the first entry equal to
                    // the maximum (ties to the lower id, as top_k).
                    let mut b = (f32::NEG_INFINITY, 0usize);
                    for (&v, &at) in v.iter().zip(at) {
                        let at = at as usize;
                        if v > b.0 || (v == b.0 && at < b.1) {
                            b = (v, at);
                        }
                    }
                    let (m, at) = l[n8..]
                        .iter()
                        .fold(b, |b, &v| if v > b.0 { (v, n8) } else { b });
                    let end = if at == n8 { n } else { (at + BLOCK).min(n8) };
                    let i = l[at..end].iter().position(|&v| v == m);
                    (at + i.unwrap_or(0)) as u32
                })
                .collect()
        } else {
            lp.iter()
                .zip(maxima.iter())
                .map(|(l, m)| top_k_with(l, 1, m)[0])
                .collect()
        };
        // The last n mod LANES entries through the same block sums.
        let tp: Vec<Vec<f32>> = lp
            .iter()
            .map(|l| l[n8..].iter().map(|&v| exp_f32_with::<true>(v)).collect())
            .collect();
        let tp: Vec<&[f32]> = tp.iter().map(|v| v.as_slice()).collect();
        battery_block::<false>(&tp, &lp[0][n8..], &lt, &mut tv, &mut j0);
        let mut t = 0;
        out.tv = Vec::with_capacity(tv.len());
        for a in 0..seeds {
            for b in a + 1..seeds {
                out.tv.push(total(&tv[t]) - 0.5 * (z[a] + z[b]));
                t += 1;
            }
        }
        let k = seeds as f64;
        let z_mean = z.iter().sum::<f64>() / k;
        out.jsd = (0..seeds).map(|a| g(a, a) / z[a]).sum::<f64>() / k + total(&j0) / k / z_mean;
    }
    pairs
        .iter()
        .map(|&(a, b)| (g(a, a) - g(a, b)) / z[a] - z[a].ln() + z[b].ln())
        .collect()
}

/// p = exp(lp) of one block (`l[start..]`, as long as `p`) into `p`,
/// prefetching ahead in the row `l`.
#[inline(always)]
fn exp_block(l: &[f32], start: usize, p: &mut [f32]) {
    let len = p.len();
    for (c, (d, x)) in p
        .chunks_exact_mut(16)
        .zip(l[start..start + len].chunks_exact(16))
        .enumerate()
    {
        prefetch(l, start + c * 16 + AHEAD);
        // A copy: the loop then needs no check that p and l overlap.
        let x: [f32; 16] = x.try_into().expect("sixteen");
        for i in 0..16 {
            d[i] = exp_f32_with::<true>(x[i]);
        }
    }
    let rest = len / 16 * 16;
    for (d, &x) in p[rest..].iter_mut().zip(&l[start + rest..start + len]) {
        *d = exp_f32_with::<true>(x);
    }
}

/// The largest value of each of sixteen lanes of `x` (entries after the
/// last whole sixteen in lane 0): one max per sixteen entries, no
/// reduction across lanes, in four independent chains (one chain waits on
/// each max's latency).
#[inline(always)]
fn lane_max16(x: &[f32]) -> [f32; 16] {
    let top = |m: &mut [f32; 16], c: &[f32]| keep_max(m, c.try_into().expect("sixteen"));
    let mut m = [[f32::NEG_INFINITY; 16]; 4];
    let quads = x.len() / 64 * 64;
    for q in x[..quads].chunks_exact(64) {
        for (mj, c) in m.iter_mut().zip(q.chunks_exact(16)) {
            top(mj, c);
        }
    }
    let whole = x.len() / 16 * 16;
    for c in x[quads..whole].chunks_exact(16) {
        top(&mut m[0], c);
    }
    let [mut a, b, c, d] = m;
    keep_max(&mut a, &b);
    keep_max(&mut a, &c);
    keep_max(&mut a, &d);
    for &v in &x[whole..] {
        a[0] = if v > a[0] { v } else { a[0] };
    }
    a
}

/// Each lane's largest value of `x` kept in `m`.
#[inline(always)]
fn keep_max(m: &mut [f32; 16], x: &[f32; 16]) {
    for i in 0..16 {
        m[i] = if x[i] > m[i] { x[i] } else { m[i] };
    }
}

/// The battery's argmax, per lane: `b` holds the largest value so far and
/// the first block (by its start) that holds it; `lm` is block `start`'s
/// lanes. A compare and two blends per block.
#[inline(always)]
fn keep_first_max(b: &mut ([f32; 16], [u32; 16]), lm: [f32; 16], start: usize) {
    // Locals, so the blends vectorise.
    let (mut v, mut at) = *b;
    for i in 0..16 {
        let up = lm[i] > v[i];
        v[i] = if up { lm[i] } else { v[i] };
        at[i] = if up { start as u32 } else { at[i] };
    }
    *b = (v, at);
}

/// f32 lanes of the battery's sums within a block.
const XL: usize = 16;

/// The battery's sums over one block (`p`: each seed's block, `l0`: seed
/// 0's log-probs there): per
/// unordered pair a < b, in order, Σ max(p_a, p_b) into `tv` (Σ|p_a − p_b|
/// = 2 Σ max − Z_a − Z_b), and Σ p̄·(lp_0 − ln p̄) into `j0`, p̄ the seeds'
/// mean (JSD = mean_a Σ p_a·(lp_a − ln p̄), the mutual information of seed
/// and token, is that plus the Gram sums' mean_a Σ p_a·(lp_a − lp_0): both
/// parts small where the seeds are close). Each sum runs in f32 lanes over
/// the block's whole chunks of [`XL`] (32 entries per lane), then over the
/// rest, each added to its f64 total, lanes in order: the same operations
/// on every path, so the same bits (five seeds with AVX-512:
/// [`battery_tile`]).
#[inline(always)]
fn battery_block<const TILE: bool>(
    p: &[&[f32]],
    l0: &[f32],
    lt: &[f32; 32],
    tv: &mut [Wide],
    j0: &mut Wide,
) {
    let len = l0.len();
    let whole = len / XL * XL;
    #[cfg(target_arch = "x86_64")]
    if TILE && p.len() == TILE_A {
        let pt: [&[f32]; TILE_A] = std::array::from_fn(|s| &p[s][..whole]);
        // SAFETY: TILE is true only in the AVX-512 kernel.
        unsafe { battery_tile(pt, &l0[..whole], lt, tv, j0) };
    } else {
        battery_lanes(p, l0, 0..whole, lt, tv, j0);
    }
    #[cfg(not(target_arch = "x86_64"))]
    battery_lanes(p, l0, 0..whole, lt, tv, j0);
    battery_lanes(p, l0, whole..len, lt, tv, j0);
}

/// [`battery_block`]'s sums over the entries `range` in lanes of [`XL`]
/// (the last chunk may be partial), flushed once.
#[inline(always)]
fn battery_lanes(
    p: &[&[f32]],
    l0: &[f32],
    range: std::ops::Range<usize>,
    lt: &[f32; 32],
    tv: &mut [Wide],
    j0: &mut Wide,
) {
    let k = p.len();
    if range.is_empty() {
        return;
    }
    let ps: Vec<&[f32]> = p.iter().map(|x| &x[range.clone()]).collect();
    let l0 = &l0[range];
    let mut acc = [0f32; XL];
    for (i, &l) in l0.iter().enumerate() {
        // S = Σ_s p_s = K·p̄, and ln p̄ = ln S − ln K from the shifted
        // table: K·Σ p̄(lp_0 − ln p̄), divided by K once per row.
        let m = ps[1..].iter().fold(ps[0][i], |t, s| t + s[i]);
        acc[i % XL] = m.mul_add(l - log_f32_in::<true>(m, lt), acc[i % XL]);
    }
    widen(acc, j0);
    let mut t = 0;
    for a in 0..k {
        for b in a + 1..k {
            let mut acc = [0f32; XL];
            for (x, y) in ps[a].chunks(XL).zip(ps[b].chunks(XL)) {
                for i in 0..x.len() {
                    acc[i] += x[i].max(y[i]);
                }
            }
            widen(acc, &mut tv[t]);
            t += 1;
        }
    }
}

/// The battery's f64 totals, lane by lane: each block's f32 lanes are
/// added to them (exact widening, one add per lane), and they are summed
/// in lane order once per row ([`total`]), not per block.
type Wide = [f64; XL];

#[inline(always)]
fn widen(acc: [f32; XL], to: &mut Wide) {
    for (t, &x) in to.iter_mut().zip(&acc) {
        *t += x as f64;
    }
}

#[inline(always)]
fn total(w: &Wide) -> f64 {
    w.iter().fold(0f64, |t, &x| t + x)
}

/// A 32-entry table in two AVX-512 registers.
#[cfg(target_arch = "x86_64")]
type Table = (std::arch::x86_64::__m512, std::arch::x86_64::__m512);

/// [`log_f32_in::<true>`] of sixteen lanes, the same operations, given its
/// tables (`r`: the r_j, `t`: the −ln r_j, maybe shifted) in registers;
/// each lookup is one two-table permute.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn log16(x: std::arch::x86_64::__m512, r: Table, t: Table) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let splat = _mm512_set1_ps;
    let look = |j: __m512i, (lo, hi): Table| _mm512_permutex2var_ps(lo, j, hi);
    let x = _mm512_max_ps(x, splat(f32::MIN_POSITIVE));
    // x is normal: its exponent and its mantissa in [1, 2) as the portable
    // code takes them from the bits, one instruction each.
    let e = _mm512_getexp_ps(x);
    let m = _mm512_getmant_ps::<_MM_MANT_NORM_1_2, _MM_MANT_SIGN_SRC>(x);
    // The permutes read only each index's low five bits: the top five of
    // the mantissa, with no mask.
    let j = _mm512_srli_epi32::<18>(_mm512_castps_si512(x));
    let f = _mm512_fmadd_ps(m, look(j, r), splat(-1.0));
    let mut q = _mm512_fmadd_ps(splat(1.0 / 3.0), f, splat(-0.5));
    q = _mm512_fmadd_ps(q, f, splat(1.0));
    let y = _mm512_fmadd_ps(q, f, look(j, t));
    _mm512_fmadd_ps(e, splat(std::f32::consts::LN_2), y)
}

/// [`battery_lanes`] over whole chunks for five seeds in AVX-512
/// registers: each chunk's p of every seed is loaded once for p̄ and the
/// ten pairs, and the eleven sums stay in registers for the block. The
/// same operations lane by lane.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn battery_tile(
    p: [&[f32]; TILE_A],
    l0: &[f32],
    lt: &[f32; 32],
    tv: &mut [Wide],
    j0: &mut Wide,
) {
    use std::arch::x86_64::*;
    const _: () = assert!(XL == 16);
    const PAIRS: usize = TILE_A * (TILE_A - 1) / 2;
    let len = l0.len();
    assert!(len.is_multiple_of(XL) && p.iter().all(|x| x.len() == len));
    assert!(tv.len() == PAIRS);
    let table = |t: *const f32| (_mm512_loadu_ps(t), _mm512_loadu_ps(t.add(16)));
    let r = table(super::LOG_R.as_ptr() as *const f32);
    let lt = table(lt.as_ptr());
    let mut acc_j = _mm512_setzero_ps();
    let mut acc_t = [_mm512_setzero_ps(); PAIRS];
    for c in (0..len).step_by(XL) {
        let pc: [__m512; TILE_A] = std::array::from_fn(|s| _mm512_loadu_ps(p[s].as_ptr().add(c)));
        let mut m = pc[0];
        for x in &pc[1..] {
            m = _mm512_add_ps(m, *x);
        }
        let d = _mm512_sub_ps(_mm512_loadu_ps(l0.as_ptr().add(c)), log16(m, r, lt));
        acc_j = _mm512_fmadd_ps(m, d, acc_j);
        let mut t = 0;
        for a in 0..TILE_A {
            for b in a + 1..TILE_A {
                acc_t[t] = _mm512_add_ps(acc_t[t], _mm512_max_ps(pc[a], pc[b]));
                t += 1;
            }
        }
    }
    // [`widen`] in registers: the two halves to f64, one add each.
    let out = |v: __m512, to: &mut Wide| {
        let lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
        let hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(
            _mm512_castps_pd(v),
        )));
        let t = to.as_mut_ptr();
        _mm512_storeu_pd(t, _mm512_add_pd(_mm512_loadu_pd(t), lo));
        _mm512_storeu_pd(t.add(8), _mm512_add_pd(_mm512_loadu_pd(t.add(8)), hi));
    };
    out(acc_j, j0);
    for (ts, v) in tv.iter_mut().zip(acc_t) {
        out(v, ts);
    }
}

/// What the battery adds to a row's exact pass: per unordered seed pair
/// (a < b, in order) the total variation ½Σ|p_a − p_b|, and the seeds'
/// generalised Jensen–Shannon divergence H(p̄) − mean_s H(p_s), the mutual
/// information between seed and next token (≤ ln K), both in f64 to
/// ~1e-6 (f32 lanes within a block, f32 ln p̄).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RowBattery {
    pub tv: Vec<f64>,
    pub jsd: f64,
    /// Each seed's argmax (ties to the lower id), when asked for
    /// ([`RowBattery::with_argmax`]); else empty.
    pub top: Vec<u32>,
    argmax: bool,
}

impl RowBattery {
    /// A battery that also takes each seed's argmax (the kl stage's churn;
    /// drift, which reads only TV, does without its cost).
    pub fn with_argmax() -> Self {
        Self {
            argmax: true,
            ..Self::default()
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn kl_row_avx2(
    lp: &[&[f32]],
    buf: &mut RowBuffer,
    pairs: &[(usize, usize)],
    maxima: &mut [Vec<f32>],
    battery: Option<&mut RowBattery>,
) -> Vec<f64> {
    kl_row_body::<true, false>(lp, buf, pairs, maxima, battery)
}

/// [`kl_row_avx2`] in 512-bit registers: half the instructions, and 32
/// registers hold every Gram lane of a chunk.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
pub(super) unsafe fn kl_row_avx512(
    lp: &[&[f32]],
    buf: &mut RowBuffer,
    pairs: &[(usize, usize)],
    maxima: &mut [Vec<f32>],
    battery: Option<&mut RowBattery>,
) -> Vec<f64> {
    kl_row_body::<true, true>(lp, buf, pairs, maxima, battery)
}

/// Exact KL(a ‖ b) in nats for each of `pairs` of one row, given each
/// seed's log-probs (`buf`: a [`row_buffer`] for as many seeds). The stored
/// log-probs are normalised only to f32 rounding (their log-sum-exp can be
/// off by ~1e-7: a shift of the whole row that would bias a small KL), so
/// the distributions they describe are measured exactly:
/// KL = Σ p_a(lp_a − lp_b)/Z_a − ln Z_a + ln Z_b with p = exp(lp), Z = Σ p.
pub fn kl_row(lp: &[&[f32]], buf: &mut RowBuffer, pairs: &[(usize, usize)]) -> Vec<f64> {
    kl_row_full(lp, buf, pairs, &mut [], None)
}

/// [`kl_row`], also filling `maxima[s]` (when given: one per seed, each of
/// [`max_blocks`] entries) with the block maxima [`top_k_with`] selects
/// from, and `battery` (when given) with the row's total variations and
/// Jensen–Shannon divergence (and each seed's argmax, for a
/// [`RowBattery::with_argmax`]), all read while each block is in cache.
pub fn kl_row_full(
    lp: &[&[f32]],
    buf: &mut RowBuffer,
    pairs: &[(usize, usize)],
    maxima: &mut [Vec<f32>],
    battery: Option<&mut RowBattery>,
) -> Vec<f64> {
    assert!(lp.windows(2).all(|w| w[0].len() == w[1].len()));
    let n = lp.first().map_or(0, |l| l.len());
    assert!(maxima.is_empty() || maxima.len() == lp.len());
    assert!(maxima.iter().all(|m| m.len() == max_blocks(n)));
    #[cfg(target_arch = "x86_64")]
    match simd() {
        // SAFETY: the CPU has the features (checked by `simd`).
        Simd::Avx512 => return unsafe { kl_row_avx512(lp, buf, pairs, maxima, battery) },
        Simd::Avx2 => return unsafe { kl_row_avx2(lp, buf, pairs, maxima, battery) },
        Simd::None => {}
    }
    kl_row_body::<false, false>(lp, buf, pairs, maxima, battery)
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

#[cfg(target_arch = "x86_64")]
mod avx2 {
    #[target_feature(enable = "avx2")]
    pub unsafe fn exp_wide(x: &[f32], out: &mut [f64]) {
        super::exp_wide_body(x, out)
    }
}
