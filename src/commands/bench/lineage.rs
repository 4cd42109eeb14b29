//! `bench lineage`: what the lineage check costs beside the forward passes
//! it sits next to. A synthetic suite of random models of a given shape
//! (default: Pythia-70M's, 6 layers × d_model 512, vocabulary 50,304), each
//! run's later checkpoint its start nudged; the check over all of them
//! against one ONNX Runtime forward over the paper's 4,662 rows (windows of
//! 2,048 with stride 1,024: 4 windows) of one checkpoint.

use std::time::Instant;

use anyhow::Result;

use super::{bench_shape, machine};
use crate::cli::BenchLineageArgs;
use crate::lm::onnx::weights::Weights;

pub fn lineage(a: &BenchLineageArgs) -> Result<()> {
    let shape = bench_shape(a.vocab, a.d_model, a.layers, a.window);
    let dir = tempfile::TempDir::new()?;
    let t = Instant::now();
    let mut paths = Vec::new();
    let mut starts = Vec::new();
    for seed in 0..a.seeds as u64 {
        let w0 = shape.init(seed + 1);
        let r = shape.init(1000 + seed);
        let w1: crate::lm::model::Weights = w0
            .iter()
            .map(|(n, (s, x))| {
                let y = x.iter().zip(&r[n].1).map(|(p, q)| p + 0.1 * q).collect();
                (n.clone(), (s.clone(), y))
            })
            .collect();
        for (step, w) in [(0, &w0), (1, &w1)] {
            let p = dir.path().join(format!("seed{seed}-step{step}.onnx"));
            std::fs::write(&p, crate::lm::onnx::export::to_bytes(&shape, w))?;
            if step == 0 {
                starts.push(paths.len());
            }
            paths.push(p);
        }
    }
    let bytes: u64 = paths
        .iter()
        .map(|p| p.metadata().map_or(0, |m| m.len()))
        .sum();
    eprintln!(
        "bench lineage: {} checkpoints of {} parameters ({:.0} MB) written in {:.1} s",
        paths.len(),
        shape.n_params(),
        bytes as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    // The check as the stage runs it: open, common tensors, measure.
    let t = Instant::now();
    let models: Vec<Weights> = paths
        .iter()
        .map(|p| Weights::open(p))
        .collect::<Result<_, _>>()?;
    let names: Vec<String> = models[0].names().map(String::from).collect();
    let m = crate::stages::lineage::measure(&models, &starts, &names)?;
    let check = t.elapsed().as_secs_f64();
    let flagged = (0..paths.len())
        .filter(|&i| {
            let own = starts
                .iter()
                .position(|&s| s == i - i % 2)
                .expect("a start");
            let same: Vec<bool> = (0..starts.len()).map(|s| s == own).collect();
            crate::stages::lineage::nearest_other(&m.rel[i], own, &same).is_some_and(|n| n.2)
        })
        .count();
    // One checkpoint's forward over the windows of the paper's rows.
    let threads = crate::commands::default_jobs();
    let mut model = crate::lm::onnx::runtime::OrtModel::from_file(&paths[1], threads)?;
    let ids: Vec<i64> = (0..a.window as i64)
        .map(|i| i * 7919 % a.vocab as i64)
        .collect();
    model.logits(&ids, 1, a.window)?; // warm-up
    let t = Instant::now();
    model.logits(&ids, 1, a.window)?;
    let window = t.elapsed().as_secs_f64();
    let forward = window * a.windows as f64;
    let per = check / paths.len() as f64;
    println!(
        "{} seeds × 2 checkpoints, {} layers × d_model {} × vocabulary {} ({} parameters); {}",
        a.seeds,
        a.layers,
        a.d_model,
        a.vocab,
        shape.n_params(),
        machine()
    );
    println!("| measurement | seconds |");
    println!("| --- | ---: |");
    println!(
        "| lineage check, all {} checkpoints | {check:.2} |",
        paths.len()
    );
    println!("| … per checkpoint | {per:.3} |");
    println!(
        "| one forward of {} tokens (ONNX Runtime, {threads} threads) | {window:.2} |",
        a.window
    );
    println!(
        "| dist's forwards per checkpoint ({} windows) | {forward:.2} |",
        a.windows
    );
    println!("| lineage / dist per checkpoint | {:.3} |", per / forward);
    println!("\nflagged: {flagged} (0 expected: each later checkpoint is its own start nudged)");
    Ok(())
}
