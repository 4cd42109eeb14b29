//! The Slurm executor from the config (`[executor.slurm]`), `run --detach`,
//! and the task command its batch scripts call.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;

use super::{RunFailed, Session, UsageError};
use crate::cli::SlurmTaskArgs;
use crate::engine::batch::slurm::Slurm;
use crate::engine::batch::{self, task, Batch, BatchSpec, BatchSystem, TaskState};
use crate::engine::{Outcome, RunOptions, Silent};

/// The executor for this session's config; the run folder is new.
pub fn executor(s: &Session) -> Result<Batch<Slurm>> {
    let c = &s.loaded.config.executor.slurm;
    let mut args = Vec::new();
    for (flag, v) in [
        ("partition", &c.partition),
        ("account", &c.account),
        ("qos", &c.qos),
        ("time", &c.time),
    ] {
        if let Some(v) = v {
            args.push(format!("--{flag}={v}"));
        }
    }
    args.extend(c.extra_args.iter().cloned());
    for stage in c.stages.keys() {
        if !s.plan.stages.contains(&stage.as_str()) {
            return Err(UsageError(format!(
                "executor.slurm.stages.{stage} in {}: no stage {stage} in the plan (stages: {})",
                s.loaded.file_name(),
                s.plan.stages.join(", ")
            ))
            .into());
        }
    }
    let mut stage_args = std::collections::BTreeMap::new();
    for stage in &s.plan.stages {
        let r = c.stages.get(*stage).cloned().unwrap_or_default();
        let mut a = Vec::new();
        if let Some(n) = r.cpus {
            a.push(format!("--cpus-per-task={n}"));
        }
        if let Some(m) = &r.mem {
            a.push(format!("--mem={m}"));
        }
        if let Some(g) = r.gpus {
            a.push(format!("--gpus-per-task={g}"));
        }
        if let Some(t) = &r.time {
            a.push(format!("--time={t}"));
        }
        stage_args.insert(stage.to_string(), a);
    }
    let exe = std::env::current_exe()?;
    let mut task_argv = vec![
        exe.display().to_string(),
        "-c".into(),
        s.config_file().display().to_string(),
    ];
    for o in &s.overrides {
        task_argv.extend(["--set".to_string(), o.clone()]);
    }
    task_argv.push("slurm-task".into());
    let store = std::fs::canonicalize(s.loaded.store_dir())?;
    // Unix seconds first, so run folders sort by time.
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    Ok(Batch {
        system: Slurm,
        spec: BatchSpec {
            args,
            stage_args,
            max_array_size: c.max_array_size,
            poll: Duration::from_secs_f64(c.poll_seconds),
            task_argv,
            workdir: std::env::current_dir()?,
        },
        run_dir: batch::runs_dir(&store, &Slurm).join(format!("{stamp}-{}", std::process::id())),
    })
}

/// `run --detach`: submit what is stale and return.
pub fn detach(s: &Session, ex: &Batch<Slurm>, opts: &RunOptions, json: bool) -> Result<()> {
    let sub = s
        .engine
        .with_work(&s.plan, opts, |w| ex.submit(&s.engine, w))??;
    let fresh = sub.outcomes.iter().flatten().count();
    if json {
        let doc = serde_json::json!({
            "run_dir": sub.record.arrays.first().map(|_| ex.run_dir.display().to_string()),
            "fresh": fresh,
            "submitted": sub.tasks.len(),
            "arrays": sub.record.arrays.iter().map(|a| serde_json::json!({
                "name": a.name, "stage": a.stage, "job": a.job, "tasks": a.tasks.len(),
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    if sub.record.arrays.is_empty() {
        println!("nothing to submit: {fresh} instances fresh");
        return Ok(());
    }
    for a in &sub.record.arrays {
        println!(
            "submitted {} ({} tasks): job {}",
            a.name,
            a.tasks.len(),
            a.job
        );
    }
    println!(
        "{} tasks in {} arrays; logs in {}; `seedconv status` shows their progress, \
         `seedconv run` records the results once they end",
        sub.tasks.len(),
        sub.record.arrays.len(),
        ex.run_dir.display()
    );
    Ok(())
}

/// One task: compute its instance; exit 1 with one line when it fails or
/// its upstream is missing.
pub fn slurm_task(s: &Session, args: &SlurmTaskArgs) -> Result<()> {
    // The cores Slurm gave the task.
    let threads = ["SLURM_CPUS_PER_TASK", "SLURM_CPUS_ON_NODE"]
        .iter()
        .find_map(|v| std::env::var(v).ok()?.parse::<usize>().ok())
        .unwrap_or_else(super::default_jobs);
    let run_dir: PathBuf = args.run_dir.clone();
    let outcome = task::run_task(
        &s.engine,
        &s.plan,
        &run_dir,
        &args.array,
        args.task,
        threads,
        &Silent,
    )?;
    s.engine.memo.save()?;
    match outcome {
        Outcome::Computed(m) => {
            println!(
                "computed {}[{}] {} in {:.2} s",
                m.stage, m.label, m.key, m.seconds
            );
            Ok(())
        }
        Outcome::Reused(m) => {
            println!("reused {}[{}] {}", m.stage, m.label, m.key);
            Ok(())
        }
        Outcome::Failed(e) | Outcome::Skipped(e) => Err(RunFailed(e).into()),
        Outcome::Cancelled => Err(RunFailed("interrupted".into()).into()),
    }
}

/// Instances of this store's unfinished Slurm runs that Slurm still has
/// queued or running: id → (queued, where), e.g. `running as Slurm task
/// 12_3 (log …)`. Empty where Slurm is not installed.
pub fn live_tasks(s: &Session) -> std::collections::HashMap<String, (bool, String)> {
    let mut out = std::collections::HashMap::new();
    let runs = batch::unfinished_runs(&batch::runs_dir(&s.loaded.store_dir(), &Slurm));
    let jobs: Vec<String> = runs.iter().flat_map(|(_, r)| r.jobs()).collect();
    let Ok(states) = Slurm.states(&jobs) else {
        return out;
    };
    for (dir, r) in &runs {
        for a in &r.arrays {
            for (t, id) in a.tasks.iter().enumerate() {
                let task = format!("{}_{t}", a.job);
                let queued = match states.get(&(a.job.clone(), t)) {
                    Some(TaskState::Queued) => true,
                    Some(TaskState::Running) => false,
                    _ => continue,
                };
                let log = batch::log_path(dir, &a.name, t);
                let what = if queued { "queued" } else { "running" };
                out.insert(
                    id.clone(),
                    (
                        queued,
                        format!("{what} as Slurm task {task} (log {})", log.display()),
                    ),
                );
            }
        }
    }
    out
}
