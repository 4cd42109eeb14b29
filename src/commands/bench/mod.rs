//! `seedconv bench …`: benchmarks that print a Markdown table, each with
//! the machine it ran on. One module a benchmark, each taking its own clap
//! arguments (`cli::Bench*Args`): `engine` (the engine's own overhead on a
//! synthetic plan), `slurm` (submission and per-task key resolution),
//! `train`, `dist` (against bare ONNX Runtime), `kl`, `blimp`, `explore`
//! (the viewer's latency and memory), `lineage` and `memory` (dist's and
//! kl's peaks at the paper's scale, by setting).

mod blimp;
mod dist;
mod engine;
mod explore;
mod kl;
mod lineage;
mod memory;
mod slurm;
mod train;

use std::time::Instant;

use anyhow::Result;

use super::Session;
use crate::cli::{BenchArgs, BenchWhat};

/// Run the benchmark `args` names; `session` opens the config's session
/// for the benchmarks that read it.
pub fn bench(
    args: &BenchArgs,
    config: &std::path::Path,
    set: &[String],
    session: impl FnOnce() -> Result<Session>,
) -> Result<()> {
    match &args.what {
        BenchWhat::Engine(a) => engine::engine(a),
        BenchWhat::Dist(a) => dist::dist(a),
        BenchWhat::Kl(a) => kl::kl(a),
        BenchWhat::Blimp(a) => blimp::blimp(a),
        BenchWhat::Explore(a) => explore::explore(a, session),
        BenchWhat::Lineage(a) => lineage::lineage(a),
        BenchWhat::Memory(a) => memory::memory(a),
        BenchWhat::Slurm(a) => slurm::slurm(&session()?, a),
        BenchWhat::Train(a) => train::train(&crate::config::load_with(config, set)?, a),
    }
}

/// This process's user + system CPU seconds (Linux `/proc/self/stat`, in
/// the kernel's fixed 100 Hz user ticks); 0 elsewhere.
pub(super) fn cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the parenthesised command name; utime, stime are 14, 15.
            let rest = &s[s.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / 100.0)
        })
        .unwrap_or(0.0)
}

pub(super) fn secs(t: Instant) -> String {
    format!("{:.3} s", t.elapsed().as_secs_f64())
}

pub(super) fn lcg_tokens(n: usize, vocab: usize) -> Vec<u32> {
    let mut s = 7u64;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) % vocab as u64) as u32
        })
        .collect()
}

/// A benchmark model: 4 heads, no logit padding.
pub(super) fn bench_shape(
    vocab: usize,
    d_model: usize,
    layers: usize,
    context: usize,
) -> crate::lm::model::Shape {
    crate::lm::model::Shape {
        vocab,
        vocab_padded: vocab,
        layers,
        d_model,
        heads: 4,
        context,
    }
}

/// The machine a table was measured on, for its footer: timings mean
/// little without the CPU (named as the manifests' provenance names it).
pub(super) fn machine() -> String {
    format!(
        "CPU: {}, {} cores",
        crate::engine::store::cpu_model(),
        crate::commands::default_jobs()
    )
}

/// The middle value of a run's rounds (the upper one of an even count).
pub(super) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
