//! The kernels against float64 references and against each other (every
//! path the same bits).

use super::kl::*;
use super::rows::*;
#[cfg(target_arch = "x86_64")]
use super::topk::avx2 as topk_avx2;
use super::topk::*;
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
    let y = kl_row_body::<false, false>(&lp, &mut buf, &pairs, &mut [], None);
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
                    Simd::Avx512 => kl_row_avx512(&lp, &mut buf, &pairs, &mut [], None),
                    _ => kl_row_avx2(&lp, &mut buf, &pairs, &mut [], None),
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
    let y5 = kl_row_body::<false, false>(&lp5, &mut buf5, &all, &mut [], None);
    assert_eq!(x5, y5, "five seeds");
    #[cfg(target_arch = "x86_64")]
    if simd() != Simd::None {
        // SAFETY: the CPU has AVX2 and FMA (checked above).
        let z5 = unsafe { kl_row_avx2(&lp5, &mut buf5, &all, &mut [], None) };
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
        let fused = kl_row_full(&lp, &mut buf, &pairs, &mut maxima, None);
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
                unsafe { topk_avx2::block_maxima(&r[..whole], &mut fast) };
                assert_eq!(fast, plain);
                let mut c1 = Vec::new();
                // SAFETY: as above.
                unsafe { topk_avx2::candidates(r, m, thr, &mut c1) };
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

#[test]
fn log_is_within_an_epsilon_of_f64_shifts_by_its_table_and_floors_at_the_smallest_normal() {
    let plain = log_table(0.0);
    assert_eq!(
        plain.map(f32::to_bits),
        LOG_T,
        "an unshifted table is the table"
    );
    let five = log_table(-5f64.ln());
    let mut x = 1e-37f32;
    while x < 5.0 {
        for fused in [false, true] {
            let ln = |t| {
                if fused {
                    log_f32_in::<true>(x, t)
                } else {
                    log_f32_in::<false>(x, t)
                }
            };
            let want = (x as f64).ln();
            let (got, shifted) = (ln(&plain) as f64, ln(&five) as f64);
            assert!(
                (got - want).abs() <= f32::EPSILON as f64 * want.abs().max(1.0),
                "ln {x}: {got} vs {want}"
            );
            let want = want - 5f64.ln();
            assert!(
                (shifted - want).abs() <= f32::EPSILON as f64 * want.abs().max(1.0),
                "ln {x}/5: {shifted} vs {want}"
            );
        }
        x *= 1.0137;
    }
    assert!(log_f32_in::<true>(1.0, &plain).abs() < 1e-7);
    let floor = log_f32_in::<true>(f32::MIN_POSITIVE, &plain);
    assert_eq!(log_f32_in::<true>(0.0, &plain), floor);
    assert!((floor as f64 - (f32::MIN_POSITIVE as f64).ln()).abs() < 1e-5);
}

/// Float64 references of the battery: TV per unordered pair and the
/// generalised JSD, from normalised probabilities.
fn battery_reference(lp: &[&[f32]]) -> (Vec<f64>, f64) {
    let k = lp.len();
    let p: Vec<Vec<f64>> = lp
        .iter()
        .map(|l| {
            let e: Vec<f64> = l.iter().map(|&v| (v as f64).exp()).collect();
            let z: f64 = e.iter().sum();
            e.iter().map(|x| x / z).collect()
        })
        .collect();
    let mut tv = Vec::new();
    for a in 0..k {
        for b in a + 1..k {
            tv.push(
                0.5 * p[a]
                    .iter()
                    .zip(&p[b])
                    .map(|(x, y)| (x - y).abs())
                    .sum::<f64>(),
            );
        }
    }
    let n = p[0].len();
    let h = |q: &[f64]| {
        -q.iter()
            .filter(|&&x| x > 0.0)
            .map(|x| x * x.ln())
            .sum::<f64>()
    };
    let mix: Vec<f64> = (0..n)
        .map(|i| p.iter().map(|s| s[i]).sum::<f64>() / k as f64)
        .collect();
    let jsd = h(&mix) - p.iter().map(|s| h(s)).sum::<f64>() / k as f64;
    (tv, jsd)
}

#[test]
fn battery_matches_a_float64_reference_on_every_path_and_is_bounded() {
    for (seed, n, k) in [
        (1u64, 50_277usize, 5usize),
        (2, 1001, 3),
        (3, 4103, 2),
        (4, 517, 5),
    ] {
        let rows: Vec<Vec<f32>> = (0..k as u64)
            .map(|s| {
                let mut lp = vec![0f32; n];
                divergence::log_softmax(&rand(seed * 10 + s, n, 9.0), &mut lp).unwrap();
                lp
            })
            .collect();
        let lp: Vec<&[f32]> = rows.iter().map(|r| r.as_slice()).collect();
        let pairs: Vec<(usize, usize)> = (0..k)
            .flat_map(|a| (0..k).filter(move |&b| b != a).map(move |b| (a, b)))
            .collect();
        let mut buf = row_buffer(k);
        let mut got = RowBattery::default();
        let kl = kl_row_full(&lp, &mut buf, &pairs, &mut [], Some(&mut got));
        // The battery leaves the KL's bits alone.
        assert_eq!(kl, kl_row(&lp, &mut buf, &pairs));
        let (tv, jsd) = battery_reference(&lp);
        assert_eq!(got.tv.len(), k * (k - 1) / 2);
        for (g, w) in got.tv.iter().zip(&tv) {
            assert!((g - w).abs() <= 1e-6 * w + 1e-7, "n {n} tv {g} vs {w}");
        }
        assert!(
            (got.jsd - jsd).abs() <= 1e-5 * jsd + 1e-6,
            "n {n} jsd {} vs {jsd}",
            got.jsd
        );
        assert!(got.jsd > 0.0 && got.jsd <= (k as f64).ln());
        // Every path: the same bits.
        let mut plain = RowBattery::default();
        kl_row_body::<false, false>(&lp, &mut buf, &pairs, &mut [], Some(&mut plain));
        assert_eq!(plain, got, "portable, n {n}");
        #[cfg(target_arch = "x86_64")]
        if simd() != Simd::None {
            let mut wide = RowBattery::default();
            // SAFETY: the CPU has AVX2 and FMA (checked above).
            unsafe { kl_row_avx2(&lp, &mut buf, &pairs, &mut [], Some(&mut wide)) };
            assert_eq!(wide, got, "AVX2, n {n}");
        }
    }
}

#[test]
fn battery_of_identical_seeds_is_zero_and_of_disjoint_ones_is_its_bound() {
    let n = 3000;
    let mut lp = vec![0f32; n];
    divergence::log_softmax(&rand(5, n, 9.0), &mut lp).unwrap();
    let same: Vec<&[f32]> = vec![&lp; 5];
    let mut got = RowBattery::default();
    kl_row_full(
        &same,
        &mut row_buffer(5),
        &[(0, 1)],
        &mut [],
        Some(&mut got),
    );
    assert!(got.tv.iter().all(|&t| t.abs() < 1e-6), "{:?}", got.tv);
    assert!(got.jsd.abs() < 1e-6, "{}", got.jsd);
    // Three seeds each certain of a different token: JSD = ln 3, TV = 1.
    let rows: Vec<Vec<f32>> = (0..3)
        .map(|s| {
            let mut x = vec![-80.0f32; n];
            x[s * 7] = 0.0;
            let mut l = vec![0f32; n];
            divergence::log_softmax(&x, &mut l).unwrap();
            l
        })
        .collect();
    let lp3: Vec<&[f32]> = rows.iter().map(|r| r.as_slice()).collect();
    kl_row_full(&lp3, &mut row_buffer(3), &[(0, 1)], &mut [], Some(&mut got));
    assert!((got.jsd - 3f64.ln()).abs() < 1e-5, "{}", got.jsd);
    assert!(
        got.tv.iter().all(|&t| (t - 1.0).abs() < 1e-5),
        "{:?}",
        got.tv
    );
}

#[test]
fn battery_argmax_is_the_first_largest_log_prob_on_every_path() {
    // Rows whose largest value sits in the first block, a later block, a
    // late lane, the entries after the last whole block, or ties between
    // blocks and lanes (the lower id wins, as top_k).
    let n = 3 * BLOCK + 21;
    let cases: Vec<Vec<usize>> = vec![
        vec![0],
        vec![BLOCK + 15],
        vec![2 * BLOCK + 7, BLOCK + 300],
        vec![n - 1],
        vec![n - 3, n - 1],
        vec![BLOCK + 31, 2 * BLOCK + 2, BLOCK + 17],
        vec![40, 41, 3 * BLOCK + 1],
    ];
    for (c, tops) in cases.iter().enumerate() {
        let seeds: Vec<Vec<f32>> = (0..5u64)
            .map(|s| {
                let mut x = rand(100 + c as u64 * 7 + s, n, 9.0);
                // Seed s has the case's maxima shifted by s entries, all
                // ties at the same value.
                for &t in tops {
                    x[(t + s as usize) % n] = 20.0;
                }
                let mut lp = vec![0f32; n];
                divergence::log_softmax(&x, &mut lp).unwrap();
                lp
            })
            .collect();
        let lp: Vec<&[f32]> = seeds.iter().map(|r| r.as_slice()).collect();
        let want: Vec<u32> = lp.iter().map(|l| divergence::top_k(l, 1)[0]).collect();
        let pairs = [(0, 1)];
        let mut buf = row_buffer(5);
        let mut got = RowBattery::with_argmax();
        kl_row_full(&lp, &mut buf, &pairs, &mut [], Some(&mut got));
        assert_eq!(got.top, want, "case {c}");
        // From the block maxima (a validated row) and on the portable path.
        let mut maxima = vec![vec![0f32; max_blocks(n)]; 5];
        let mut with = RowBattery::with_argmax();
        kl_row_full(&lp, &mut buf, &pairs, &mut maxima, Some(&mut with));
        assert_eq!(with, got, "case {c}: with maxima");
        let mut plain = RowBattery::with_argmax();
        kl_row_body::<false, false>(&lp, &mut buf, &pairs, &mut [], Some(&mut plain));
        assert_eq!(plain, got, "case {c}: portable");
    }
}
