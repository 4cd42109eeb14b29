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

/// Reciprocals r_j ≈ 1/(1 + (j + ½)/16) of the sixteen mantissa intervals
/// of [`log_f32_with`] (f32 bit patterns, so every path reads the same).
const LOG_R: [u32; 16] = [
    0x3f78_3e10,
    0x3f6a_0ea1,
    0x3f5d_67c9,
    0x3f52_0d21,
    0x3f47_ce0c,
    0x3f3e_82fa,
    0x3f36_0b61,
    0x3f2e_4c41,
    0x3f27_2f05,
    0x3f20_a0a1,
    0x3f1a_90e8,
    0x3f14_f209,
    0x3f0f_b824,
    0x3f0a_d8f3,
    0x3f06_4b8a,
    0x3f02_0821,
];
/// −ln r_j, rounded to f32.
const LOG_T: [u32; 16] = [
    0x3cfc_14c8,
    0x3db7_8694,
    0x3e14_aa96,
    0x3e4a_92d4,
    0x3e7d_c8c6,
    0x3e97_4716,
    0x3eae_8ded,
    0x3ec4_d19d,
    0x3eda_27bd,
    0x3eee_a34f,
    0x3f01_2a95,
    0x3f0a_a61f,
    0x3f13_caf0,
    0x3f1c_9f07,
    0x3f25_27c4,
    0x3f2d_6a01,
];
/// ln 2 in two parts: e · `LN2_HI` is exact for |e| < 2^9.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;

/// ln(x) in f32 for a probability, by table: x = m · 2^e with m in [1, 2);
/// the top four bits of m pick r_j ≈ 1/m from sixteen, f = m·r_j − 1 is
/// within ±0.031, and ln x = e·ln 2 − ln r_j + ln(1 + f) with ln(1 + f) to
/// f⁴ (truncation ≤ 5e-9). Absolute error ≤ 1e-7 (the battery weighs it by
/// a probability). Branch-free, so it vectorises; sixteen entries are one
/// AVX-512 register, so the lookup is one permute there ([`kl`]'s
/// `log16`). Inputs below the smallest normal f32 are raised to it.
#[inline(always)]
fn log_f32_with<const FUSED: bool>(x: f32) -> f32 {
    let x = x.max(f32::MIN_POSITIVE);
    let bits = x.to_bits();
    let e = ((bits >> 23) as i32 - 127) as f32;
    let j = ((bits >> 19) & 15) as usize;
    let m = f32::from_bits((bits & 0x007f_ffff) | 0x3f80_0000);
    let f = madd::<FUSED>(m, f32::from_bits(LOG_R[j]), -1.0);
    let mut q = madd::<FUSED>(-0.25, f, 1.0 / 3.0);
    q = madd::<FUSED>(q, f, -0.5);
    q = madd::<FUSED>(q, f, 1.0);
    let y = madd::<FUSED>(e, LN2_LO, f32::from_bits(LOG_T[j]) + q * f);
    madd::<FUSED>(e, LN2_HI, y)
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
