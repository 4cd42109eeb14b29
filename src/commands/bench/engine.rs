//! `bench engine`: the engine's own overhead, measured on a synthetic plan
//! so that no stage's science is in the numbers.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use serde_json::json;

use super::{machine, secs};
use crate::cli::BenchEngineArgs;
use crate::engine::hashcache::hash_file;
use crate::engine::{Engine, Instance, Job, JobCtx, Plan, RunOptions, Silent};
use crate::error::StageError;

/// Writes the blake3 of its input: the cheapest job that still reads input
/// and writes an artefact.
pub(super) struct Digest(pub(super) std::path::PathBuf);

impl Job for Digest {
    fn run(&self, ctx: &JobCtx) -> Result<serde_json::Value, StageError> {
        let bytes = std::fs::read(&self.0).map_err(|e| StageError::io(&self.0, e))?;
        let out = ctx.out.join("digest.txt");
        std::fs::write(&out, blake3::hash(&bytes).to_hex().as_bytes())
            .map_err(|e| StageError::io(&out, e))?;
        Ok(serde_json::Value::Null)
    }
}

fn synthetic_plan(inputs: &Path, n: usize) -> Result<Plan> {
    let instances = (0..n)
        .map(|i| {
            let file = inputs.join(format!("{i}.txt"));
            Instance::new(
                "bench",
                1,
                format!("i{i}"),
                json!({ "i": i }),
                Box::new(Digest(file.clone())),
            )
            .inputs(vec![("file".into(), file)])
        })
        .collect();
    Ok(Plan::new(instances)?)
}

pub fn engine(a: &BenchEngineArgs) -> Result<()> {
    let (n, hash_mib, dir) = (a.instances, a.hash_mib, a.dir.as_deref());
    let tmp;
    let root = match dir {
        Some(d) => d.to_path_buf(),
        None => {
            tmp = tempfile::TempDir::new()?;
            tmp.path().to_path_buf()
        }
    };
    let inputs = root.join("inputs");
    let store = root.join("stages");
    std::fs::create_dir_all(&inputs)?;
    for i in 0..n {
        std::fs::write(inputs.join(format!("{i}.txt")), format!("input file {i}\n"))?;
    }
    let jobs = crate::commands::default_jobs();
    let opts = RunOptions {
        jobs,
        ..Default::default()
    };
    let mut rows: Vec<(String, String)> = Vec::new();

    // Each measurement opens the engine afresh, as a new `seedconv run` would.
    let t = Instant::now();
    let plan = synthetic_plan(&inputs, n)?;
    let r = Engine::open(&store)?.run(&plan, &opts, &Silent)?;
    rows.push((
        format!("cold run, {n} instances (computed {})", r.computed),
        secs(t),
    ));

    for k in 1..=3 {
        let t = Instant::now();
        let plan = synthetic_plan(&inputs, n)?;
        let r = Engine::open(&store)?.run(&plan, &opts, &Silent)?;
        anyhow::ensure!(r.computed == 0, "no-op run computed {}", r.computed);
        rows.push((format!("no-op run #{k} (reused {})", r.reused), secs(t)));
    }

    let t = Instant::now();
    let plan = synthetic_plan(&inputs, n)?;
    let e = Engine::open(&store)?;
    let v = e.evaluate(&plan, &vec![true; n])?;
    rows.push((
        format!("status evaluation ({} instances)", v.len()),
        secs(t),
    ));

    std::fs::write(inputs.join("0.txt"), "changed\n")?;
    let t = Instant::now();
    let plan = synthetic_plan(&inputs, n)?;
    let r = Engine::open(&store)?.run(&plan, &opts, &Silent)?;
    rows.push((
        format!("one input changed (computed {})", r.computed),
        secs(t),
    ));

    // Hash throughput on one large file with a warm page cache.
    if hash_mib > 0 {
        let big = root.join("big.bin");
        {
            let mut f = std::io::BufWriter::new(std::fs::File::create(&big)?);
            let mut block = vec![0u8; 1 << 20];
            for i in 0..hash_mib {
                block
                    .iter_mut()
                    .enumerate()
                    .for_each(|(j, b)| *b = (i * 31 + j * 7) as u8);
                f.write_all(&block)?;
            }
        }
        let _ = hash_file(&big)?; // warm the page cache
        let mut best = f64::MAX;
        for _ in 0..3 {
            let t = Instant::now();
            hash_file(&big)?;
            best = best.min(t.elapsed().as_secs_f64());
        }
        let gbs = hash_mib as f64 * 1048576.0 / 1e9 / best;
        rows.push((
            format!("blake3 of a {hash_mib} MiB file (warm, best of 3)"),
            format!("{best:.3} s = {gbs:.2} GB/s"),
        ));
        std::fs::remove_file(&big)?;
    }

    println!("| measurement | time |");
    println!("| --- | --- |");
    for (k, v) in rows {
        println!("| {k} | {v} |");
    }
    println!("({})", machine());
    Ok(())
}
