//! Top-k selection: a lower bound of the k-th largest value from block
//! maxima (computed here, or left by the exact pass), then one vectorised
//! compare and a sort of the few candidates.

use super::*;

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
pub(super) const MAX_BLOCK: usize = 64;
const _: () = assert!(BLOCK.is_multiple_of(MAX_BLOCK));

/// The number of block maxima of a row of `n`.
pub fn max_blocks(n: usize) -> usize {
    n.div_ceil(MAX_BLOCK)
}

#[inline(always)]
pub(super) fn block_max(c: &[f32]) -> f32 {
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
pub(super) fn lane_maxima(c: &[f32]) -> [f32; 8] {
    let mut m = [f32::NEG_INFINITY; 8];
    for ch in c.chunks_exact(8) {
        for i in 0..8 {
            m[i] = if ch[i] > m[i] { ch[i] } else { m[i] };
        }
    }
    m
}

/// The maxima of each 64-entry block of a row, the last one partial.
pub(super) fn row_block_maxima(x: &[f32]) -> Vec<f32> {
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
pub(super) fn block_maxima<const AVX2: bool>(x: &[f32], out: &mut [f32]) {
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
/// [`kl_row_full`] leaves them). A row of fewer than k blocks has every
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
pub(super) fn top_k_above(x: &[f32], k: usize, maxima: &[f32], thr: f32) -> Vec<u32> {
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
pub(super) fn candidates(x: &[f32], maxima: &[f32], thr: f32, cand: &mut Vec<u64>) {
    for (bi, &m) in maxima.iter().enumerate() {
        if m >= thr {
            let start = bi * MAX_BLOCK;
            scan(x, start..(start + MAX_BLOCK).min(x.len()), thr, cand);
        }
    }
}

/// The keys of the entries of `x[range]` reaching `thr`, one at a time.
#[inline(always)]
pub(super) fn scan(x: &[f32], range: std::ops::Range<usize>, thr: f32, cand: &mut Vec<u64>) {
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
pub(super) fn rank_key(v: f32, i: usize) -> u64 {
    ((value_key(v) as u64) << 32) | i as u64
}

/// A value as an integer that sorts it descending (finite values).
#[inline(always)]
pub(super) fn value_key(v: f32) -> u32 {
    let b = v.to_bits();
    let asc = if b >> 31 == 1 { !b } else { b | 0x8000_0000 };
    !asc
}

/// The value [`value_key`] made `key` of.
pub(super) fn key_value(key: u32) -> f32 {
    let asc = !key;
    f32::from_bits(if asc >> 31 == 1 {
        asc & 0x7fff_ffff
    } else {
        !asc
    })
}

#[cfg(target_arch = "x86_64")]
pub(super) mod avx2 {
    use std::arch::x86_64::*;

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
