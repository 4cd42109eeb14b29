//! `bench slurm`: the Slurm executor's submission cost and each stage's
//! per-task key resolution.

use std::time::Instant;

use anyhow::Result;
use serde_json::json;

use super::engine::Digest;
use crate::cli::BenchSlurmArgs;
use crate::engine::{Engine, Instance, Plan, RunOptions};

/// Submission cost of the Slurm executor for a synthetic plan of `n`
/// instances in `k` stages (a chain per instance), with every task held and
/// then cancelled; and the key resolution a task does when it starts, for
/// the last instance of each stage of the config's plan on its store.
pub fn slurm(s: &crate::commands::Session, a: &BenchSlurmArgs) -> Result<()> {
    let (n, k) = (a.instances, a.stages);
    use crate::engine::batch::slurm::Slurm;
    use crate::engine::batch::{Batch, BatchSpec, BatchSystem};
    const NAMES: [&str; 12] = [
        "s01", "s02", "s03", "s04", "s05", "s06", "s07", "s08", "s09", "s10", "s11", "s12",
    ];
    anyhow::ensure!((1..=NAMES.len()).contains(&k), "--stages must be 1 to 12");
    let tmp = tempfile::TempDir::new_in(std::env::current_dir()?)?;
    let inputs = tmp.path().join("inputs");
    std::fs::create_dir_all(&inputs)?;
    let per = n.div_ceil(k);
    for i in 0..per {
        std::fs::write(inputs.join(format!("{i}.txt")), format!("input file {i}\n"))?;
    }
    let instances = (0..k)
        .flat_map(|st| (0..per).map(move |i| (st, i)))
        .take(n)
        .map(|(st, i)| {
            let file = inputs.join(format!("{i}.txt"));
            let inst = Instance::new(
                NAMES[st],
                1,
                format!("i{i}"),
                json!({ "i": i }),
                Box::new(Digest(file.clone())),
            );
            if st == 0 {
                inst.inputs(vec![("file".into(), file)])
            } else {
                inst.deps(vec![(NAMES[st - 1], format!("i{i}"))])
            }
        })
        .collect();
    let plan = Plan::new(instances)?;
    let engine = Engine::open(&tmp.path().join("stages"))?;
    let ex = Batch {
        system: Slurm,
        spec: BatchSpec {
            // Held: measured, never run.
            args: vec!["--hold".into()],
            stage_args: Default::default(),
            max_array_size: 0,
            poll: std::time::Duration::from_secs(1),
            task_argv: vec!["true".into()],
            workdir: tmp.path().to_path_buf(),
        },
        run_dir: tmp.path().join("stages/.slurm/bench"),
    };
    let t = Instant::now();
    let sub = engine.with_work(&plan, &RunOptions::default(), |w| ex.submit(&engine, w))??;
    let submit = t.elapsed().as_secs_f64();
    Slurm.cancel(&sub.record.jobs())?;
    println!("| measurement | value |");
    println!("| --- | --- |");
    println!("| synthetic plan | {n} instances in {k} stages |");
    println!(
        "| sbatch calls | {} ({:.1} per stage) |",
        sub.record.arrays.len(),
        sub.record.arrays.len() as f64 / k as f64
    );
    println!("| submission (evaluate, scripts, sbatch) | {submit:.3} s |");
    // A task's start: open the config and plan, then judge its upstream.
    for stage in &s.plan.stages {
        let Some(i) = (0..s.plan.len())
            .rev()
            .find(|&i| s.plan.instances[i].stage == *stage)
        else {
            continue;
        };
        let t = Instant::now();
        let session = crate::commands::Session::open(
            &s.loaded.file,
            &s.overrides,
            std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
        )?;
        session
            .engine
            .evaluate(&session.plan, &session.plan.upstream_closure(i))?;
        println!(
            "| task key resolution, {} ({} upstream) | {:.3} s |",
            s.plan.instances[i].id(),
            session
                .plan
                .upstream_closure(i)
                .iter()
                .filter(|&&x| x)
                .count()
                - 1,
            t.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
