//! `bench kl`: exact KL over synthetic log-prob arrays.

use std::time::Instant;

use anyhow::Result;

use super::{machine, median};
use crate::cli::BenchKlArgs;

/// Rounds of the alternating passes.
const ROUNDS: usize = 7;

/// Exact KL over synthetic log-prob arrays, against reading them once.
pub fn kl(a: &BenchKlArgs) -> Result<()> {
    let (seeds, rows, vocab, zipf) = (a.seeds, a.rows, a.vocab, a.zipf);
    use rayon::prelude::*;
    anyhow::ensure!(seeds >= 2, "need at least two seeds");
    let t = Instant::now();
    let arrays: Vec<Vec<f32>> = (0..seeds)
        .map(|s| {
            let mut a = vec![0f32; rows * vocab];
            a.par_chunks_mut(vocab).enumerate().for_each(|(r, row)| {
                let mut x = (s * 1_000_003 + r) as u64 | 1;
                let logits: Vec<f32> = (0..vocab)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let u = (x >> 40) as f32 / (1u64 << 24) as f32;
                        if zipf {
                            -2.0 * (u + 1e-7).ln()
                        } else {
                            u * 12.0
                        }
                    })
                    .collect();
                crate::analysis::divergence::log_softmax(&logits, row).expect("finite");
            });
            a
        })
        .collect();
    let gen = t.elapsed().as_secs_f64();
    let views: Vec<&[f32]> = arrays.iter().map(|a| a.as_slice()).collect();
    let pairs: Vec<(usize, usize)> = (0..seeds)
        .flat_map(|a| (0..seeds).filter(move |&b| b != a).map(move |b| (a, b)))
        .collect();
    // Memory bandwidth: one parallel pass reading every array.
    let read_all = || {
        arrays
            .iter()
            .map(|a| {
                a.par_chunks(1 << 16)
                    .map(crate::analysis::kernels::sum)
                    .sum::<f64>()
            })
            .sum::<f64>()
    };
    let (mut read, mut sum) = (f64::INFINITY, 0.0);
    let bytes = (seeds * rows * vocab * 4) as f64;
    // Best of seven, alternating the read and the passes: this
    // machine's other load only ever slows a run down, and comes and goes;
    // the read itself swings by half from one run to the next, so the ratio
    // is also taken within each round (read, then exact pass).
    use crate::stages::kl::{block_kl, validation_stride};
    let crate::config::KlConfig {
        validation_k: ks,
        validation_rows: sample,
        ..
    } = crate::config::KlConfig::default();
    let every = validation_stride(rows, sample);
    let (mut kl_secs, mut val_secs, mut all_secs) = (f64::INFINITY, f64::INFINITY, f64::INFINITY);
    let mut bat_secs = f64::INFINITY;
    // The stage's pass (validation and battery) over the same pass without
    // the battery, within each round (over the mean of the passes without
    // it just before and after).
    let mut bat_ratio = Vec::new();
    let mut exact = Vec::new();
    let mut ratios = Vec::new();
    // Each round's validation passes over its exact pass, less one.
    let mut extra: Vec<(f64, f64)> = Vec::new();
    for _ in 0..ROUNDS {
        let t = Instant::now();
        sum = read_all();
        let r = t.elapsed().as_secs_f64();
        read = read.min(r);
        let t = Instant::now();
        exact = block_kl(&views, 0..rows, vocab, &pairs, &[], 1, false);
        let e = t.elapsed().as_secs_f64();
        kl_secs = kl_secs.min(e);
        ratios.push(e / r);
        let t = Instant::now();
        block_kl(&views, 0..rows, vocab, &pairs, &ks, 1, false);
        let a = t.elapsed().as_secs_f64();
        all_secs = all_secs.min(a);
        // The pass without the battery just before and just after the
        // pass with it: the machine's drift within a round cancels.
        let pass = |battery| {
            let t = Instant::now();
            block_kl(&views, 0..rows, vocab, &pairs, &ks, every, battery);
            t.elapsed().as_secs_f64()
        };
        let (v0, b, v1) = (pass(false), pass(true), pass(false));
        val_secs = val_secs.min(v0).min(v1);
        bat_secs = bat_secs.min(b);
        bat_ratio.push(2.0 * b / (v0 + v1));
        extra.push(((v0 + v1) / 2.0 / e - 1.0, a / e - 1.0));
    }
    let ratio = median(ratios);
    let val_extra = median(extra.iter().map(|e| e.0).collect());
    let all_extra = median(extra.iter().map(|e| e.1).collect());
    let work = (rows * pairs.len() * vocab) as f64;
    let mean: f64 =
        exact.iter().flat_map(|e| e.kl.iter()).sum::<f64>() / (rows * pairs.len()) as f64;
    println!("| measurement | value |");
    println!("| --- | ---: |");
    println!(
        "| arrays | {seeds} seeds × {rows} rows × {vocab} vocab, f32 ({:.2} GB; {}; made in {gen:.1} s) |",
        bytes / 1e9,
        if zipf { "power-law logits" } else { "logits uniform on [0, 12)" }
    );
    println!(
        "| one read of all arrays (bandwidth bound) | {read:.3} s = {:.1} GB/s |",
        bytes / 1e9 / read
    );
    println!("| exact KL, {} ordered pairs | {kl_secs:.3} s = {:.2} G row·pair·vocab/s ({:.1}× the best read: {:.0}% of the bandwidth) |", pairs.len(), work / kl_secs / 1e9, kl_secs / read, 100.0 * read / kl_secs);
    println!(
        "| exact KL ÷ the read just before it, median of the rounds | {ratio:.2}× ({:.0}% of the bandwidth) |",
        100.0 / ratio
    );
    println!(
        "| exact KL + top-k validation (k = {ks:?}) of 1 row in {every} ({} rows, the default `kl.validation_rows = {sample}`) | {val_secs:.3} s (+{:.0}% best to best; +{:.0}% median within a round) |",
        rows.div_ceil(every),
        100.0 * (val_secs / kl_secs - 1.0),
        100.0 * val_extra
    );
    println!(
        "| exact KL + top-k validation of every row (`kl.validation_rows = 0`) | {all_secs:.3} s (+{:.0}%; +{:.0}%) |",
        100.0 * (all_secs / kl_secs - 1.0),
        100.0 * all_extra
    );
    println!(
        "| the kl stage's pass: exact KL + validation + battery (TV, JSD, argmax) | {bat_secs:.3} s ({:.2}× the pass without the battery, best to best; {:.2}× median within a round, against the passes without it just before and after) |",
        bat_secs / val_secs,
        median(bat_ratio)
    );
    println!(
        "(mean KL {mean:.4} nats; checksum {sum:.1}; {}; best of {ROUNDS} alternating runs each)",
        machine()
    );
    Ok(())
}
