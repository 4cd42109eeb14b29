//! `bench blimp`: BLiMP scoring throughput by batch size.

use std::path::Path;
use std::time::Instant;

use anyhow::Result;

use super::{bench_shape, machine};
use crate::cli::BenchBlimpArgs;

/// BLiMP scoring throughput by batch size (the stage's own `score`).
pub fn blimp(a: &BenchBlimpArgs) -> Result<()> {
    let (pairs, vocab, d_model, layers) = (a.pairs, a.model.vocab, a.model.d_model, a.model.layers);
    use crate::stages::blimp;
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
    let tok = crate::stages::tokenizer::load(&data.join("paper_sample/tokenizer.json"))?;
    let mut sentences = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(data.join("blimp"))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    for f in &files {
        for p in blimp::read_pairs(f, pairs)? {
            sentences.push(p.good);
            sentences.push(p.bad);
        }
    }
    let refs: Vec<&str> = sentences.iter().map(String::as_str).collect();
    // Pythia ids folded into the random model's vocabulary.
    let seqs: Vec<Vec<u32>> = blimp::encode(&tok, 0, &refs)?
        .into_iter()
        .map(|s| s.into_iter().map(|i| i % vocab as u32).collect())
        .collect();
    let longest = seqs.iter().map(Vec::len).max().unwrap_or(1);
    let shape = bench_shape(vocab, d_model, layers, longest.next_power_of_two());
    let bytes = crate::lm::onnx::export::to_bytes(&shape, &shape.init(1));
    let threads = crate::commands::default_jobs();
    let mut model = crate::lm::onnx::runtime::OrtModel::from_bytes(&bytes, "random", threads)?;
    let tokens: usize = seqs.iter().map(Vec::len).sum();
    println!(
        "{} sentences ({} pairs × {} paradigms), {tokens} tokens, longest {longest}; d_model {d_model}, {layers} layers, vocab {vocab}, {threads} threads; {}",
        seqs.len(),
        pairs,
        files.len(),
        machine()
    );
    println!("| batch | seconds | sentences/s |");
    println!("| ---: | ---: | ---: |");
    blimp::score(&mut model, &seqs[..seqs.len().min(64)], 64, None, &|_| {
        Ok(())
    })?;
    for batch in [1, 8, 64, 256] {
        let t = Instant::now();
        blimp::score(&mut model, &seqs, batch, None, &|_| Ok(()))?;
        let s = t.elapsed().as_secs_f64();
        println!("| {batch} | {s:.2} | {:.0} |", seqs.len() as f64 / s);
    }
    Ok(())
}
