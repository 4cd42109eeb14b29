//! Vectorised row kernels for exact KL over full vocabularies: the kl stage
//! streams seeds × rows × vocabulary through these, so they decide whether it
//! runs at memory bandwidth. Every sum keeps eight f64 lanes combined in a
//! fixed order, and each multiply-add is fused on every path or on none
//! (`mul_add` is fused in software where the CPU lacks FMA), so the AVX-512,
//! AVX2 and portable paths give the same bits on every machine.
//!
//! By family: `kl` (the exact pass over seeds' rows), `rows` (one row's
//! statistics and log-softmax), `topk` (selection, with the block maxima
//! the exact pass leaves); here, what they share (exp, lanes, dispatch).

mod kl;
mod rows;
#[cfg(test)]
mod tests;
mod topk;

pub use kl::{exp_wide, kl_row, kl_row_full, row_buffer, RowBattery, RowBuffer};
pub use rows::{log_softmax, row_stats, row_stats_logits};
pub use topk::{max_blocks, top_k, top_k_with};

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

/// Reciprocals r_j ≈ 1/(1 + (j + ½)/32) of the 32 mantissa intervals of
/// [`log_f32_in`] (f32 bit patterns, so every path reads the same).
const LOG_R: [u32; 32] = [
    0x3f7c_0fc1,
    0x3f74_898d,
    0x3f6d_7304,
    0x3f66_c2b4,
    0x3f60_7038,
    0x3f5a_740e,
    0x3f54_c77b,
    0x3f4f_6475,
    0x3f4a_4588,
    0x3f45_65c8,
    0x3f40_c0c1,
    0x3f3c_5264,
    0x3f38_1703,
    0x3f34_0b41,
    0x3f30_2c0b,
    0x3f2c_7692,
    0x3f28_e83f,
    0x3f25_7eb5,
    0x3f22_37c3,
    0x3f1f_1166,
    0x3f1c_09c1,
    0x3f19_1f1a,
    0x3f16_4fda,
    0x3f13_9a86,
    0x3f10_fdbc,
    0x3f0e_7835,
    0x3f0c_08c1,
    0x3f09_ae41,
    0x3f07_67ab,
    0x3f05_3408,
    0x3f03_126f,
    0x3f01_0204,
];
/// −ln r_j, rounded to f32.
const LOG_T: [u32; 32] = [
    0x3c7e_0545,
    0x3d3b_a2ce,
    0x3d9a_0eba,
    0x3dd4_936c,
    0x3e06_bbf4,
    0x3e22_695a,
    0x3e3d_5c48,
    0x3e57_9e49,
    0x3e71_383b,
    0x3e85_1928,
    0x3e91_4a0f,
    0x3e9d_3263,
    0x3ea8_d56c,
    0x3eb4_3640,
    0x3ebf_57c2,
    0x3eca_3c9f,
    0x3ed4_e766,
    0x3edf_5a6d,
    0x3ee9_97f4,
    0x3ef3_a213,
    0x3efd_7ac3,
    0x3f03_91f3,
    0x3f08_4f9e,
    0x3f0c_f735,
    0x3f11_8987,
    0x3f16_0750,
    0x3f1a_7144,
    0x3f1e_c812,
    0x3f23_0c5f,
    0x3f27_3ec1,
    0x3f2b_5fce,
    0x3f2f_7015,
];
/// ln(x) in f32 for a probability, by table: x = m · 2^e with m in [1, 2);
/// the top five bits of m pick r_j ≈ 1/m from 32, f = m·r_j − 1 is within
/// ±0.0154, and ln x = e·ln 2 − ln r_j + ln(1 + f) with ln(1 + f) to f³
/// (truncation ≤ 1.4e-8) and ln 2 as one f32 (off by 1.9e-9 per unit of
/// e: below the rounding of the result). Within an f32 epsilon of
/// max(|ln x|, 1) (the battery weighs it by a probability). Branch-free,
/// so it vectorises; 32 entries are two AVX-512 registers, so each lookup
/// is one two-table permute there ([`kl`]'s `log16`). Inputs below the
/// smallest normal f32 are raised to it. With its table of −ln r_j
/// given: [`log_table`]`(s)` gives ln(x) + s in the same operations.
#[inline(always)]
fn log_f32_in<const FUSED: bool>(x: f32, t: &[f32; 32]) -> f32 {
    let x = x.max(f32::MIN_POSITIVE);
    let bits = x.to_bits();
    let e = ((bits >> 23) as i32 - 127) as f32;
    let j = ((bits >> 18) & 31) as usize;
    let m = f32::from_bits((bits & 0x007f_ffff) | 0x3f80_0000);
    let f = madd::<FUSED>(m, f32::from_bits(LOG_R[j]), -1.0);
    let mut q = madd::<FUSED>(1.0 / 3.0, f, -0.5);
    q = madd::<FUSED>(q, f, 1.0);
    madd::<FUSED>(e, std::f32::consts::LN_2, madd::<FUSED>(q, f, t[j]))
}

/// [`log_f32_in`]'s table for ln(x) + `shift`: each −ln r_j + shift,
/// rounded to f32 (the battery's ln p̄ = ln Σ_s p_s − ln K without a
/// division per entry).
fn log_table(shift: f64) -> [f32; 32] {
    LOG_T.map(|t| (f32::from_bits(t) as f64 + shift) as f32)
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
    #[target_feature(enable = "avx2")]
    pub unsafe fn sum(x: &[f32]) -> f64 {
        super::sum_body(x)
    }
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

/// Vocabulary entries per block of [`kl_row`] (and a multiple of
/// `topk`'s maxima blocks): every seed's p (f32) and
/// difference to seed 0 (f64) of one block (seeds × 512 × 12 B) stay in cache
/// while every pair reads them, so each row is read from memory once.
const BLOCK: usize = 512;
