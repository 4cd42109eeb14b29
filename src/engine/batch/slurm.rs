//! Slurm as a [`BatchSystem`]: `sbatch` job arrays (`#SBATCH` header,
//! `$SLURM_ARRAY_TASK_ID`), `squeue`, `scontrol`, `scancel`. Each failure
//! is one line naming the command.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use super::{ArrayScript, BatchSystem, TaskState};
use crate::error::EngineError;

/// The Slurm cluster this machine submits to.
pub struct Slurm;

impl BatchSystem for Slurm {
    fn name(&self) -> &'static str {
        "Slurm"
    }
    fn max_array_size(&self) -> Result<usize, EngineError> {
        max_array_size()
    }
    fn header(&self, a: &ArrayScript) -> Vec<String> {
        let dir = a.run_dir.display();
        let mut lines = vec![
            "#!/bin/bash".to_string(),
            format!("#SBATCH --job-name=seedconv-{}", a.stage),
            format!("#SBATCH --array=0-{}", a.tasks - 1),
            // %a: the task index, as `log_path` names the log.
            format!("#SBATCH --output={dir}/{}-%a.log", a.name),
            format!("#SBATCH --chdir={}", a.workdir.display()),
        ];
        lines.extend(a.args.iter().map(|x| format!("#SBATCH {x}")));
        lines
    }
    fn task_index(&self) -> &'static str {
        "$SLURM_ARRAY_TASK_ID"
    }
    fn submit(&self, script: &Path, after: &[&str]) -> Result<String, EngineError> {
        let mut args = Vec::new();
        if !after.is_empty() {
            args.push(format!("--dependency=afterany:{}", after.join(":")));
        }
        sbatch(script, &args)
    }
    fn states(&self, jobs: &[String]) -> Result<HashMap<(String, usize), TaskState>, EngineError> {
        Ok(task_states(jobs)?
            .into_iter()
            .filter_map(|(id, state)| {
                // `JOB_TASK`; a pending array's not-yet-split rest shows as
                // `JOB_[2-5]` and is expanded by `-r`.
                let (job, task) = id.split_once('_')?;
                let state = match state.as_str() {
                    "RUNNING" => TaskState::Running,
                    s if !ended(s) => TaskState::Queued,
                    _ => TaskState::Ended(state),
                };
                Some(((job.to_string(), task.parse().ok()?), state))
            })
            .collect())
    }
    fn cancel(&self, jobs: &[String]) -> Result<(), EngineError> {
        scancel(jobs)
    }
}

fn run(cmd: &mut Command) -> Result<String, EngineError> {
    let name = format!("{:?}", cmd.get_program())
        .trim_matches('"')
        .to_string();
    let out = cmd.output().map_err(|e| {
        EngineError::Failed(format!(
            "{name}: {e} (is Slurm installed? scripts/slurm-local.sh start brings up a one-node cluster)"
        ))
    })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(EngineError::Failed(format!(
            "{name} failed ({}): {}",
            out.status,
            err.lines().last().unwrap_or("").trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Submit `script` with `args`; the job id.
fn sbatch(script: &Path, args: &[String]) -> Result<String, EngineError> {
    let out = run(Command::new("sbatch")
        .arg("--parsable")
        .args(args)
        .arg(script))?;
    // `--parsable` prints `jobid` or `jobid;cluster`.
    let id = out.trim().split(';').next().unwrap_or("").to_string();
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
        return Err(EngineError::Failed(format!(
            "sbatch {}: unexpected answer {out:?}",
            script.display()
        )));
    }
    Ok(id)
}

/// The state of every task of `jobs` the controller still knows, by
/// `JOB_TASK` (e.g. `12_3` → `RUNNING`); finished tasks stay listed (as
/// COMPLETED, FAILED, TIMEOUT, …) until the controller purges them.
fn task_states(jobs: &[String]) -> Result<HashMap<String, String>, EngineError> {
    if jobs.is_empty() {
        return Ok(HashMap::new());
    }
    let out = Command::new("squeue")
        .args([
            "-h",
            "-r",
            "-t",
            "all",
            "-o",
            "%i %T",
            "-j",
            &jobs.join(","),
        ])
        .output()
        .map_err(|e| EngineError::Failed(format!("squeue: {e}")))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        // Every job already purged: nothing is listed.
        if err.contains("Invalid job id") {
            return Ok(HashMap::new());
        }
        return Err(EngineError::Failed(format!(
            "squeue failed ({}): {}",
            out.status,
            err.lines().last().unwrap_or("").trim()
        )));
    }
    Ok(text
        .lines()
        .filter_map(|l| {
            let (id, state) = l.trim().split_once(' ')?;
            Some((id.to_string(), state.trim().to_string()))
        })
        .collect())
}

/// Whether a task state is final.
fn ended(state: &str) -> bool {
    !matches!(
        state,
        "PENDING"
            | "RUNNING"
            | "CONFIGURING"
            | "COMPLETING"
            | "REQUEUED"
            | "RESIZING"
            | "SUSPENDED"
            | "SIGNALING"
            | "STAGE_OUT"
            | "REQUEUE_HOLD"
            | "REQUEUE_FED"
            | "RESV_DEL_HOLD"
    )
}

/// The controller's `MaxArraySize` (array indices run from 0 to it − 1).
fn max_array_size() -> Result<usize, EngineError> {
    let out = run(Command::new("scontrol").args(["show", "config"]))?;
    Ok(out
        .lines()
        .find(|l| l.trim_start().starts_with("MaxArraySize"))
        .and_then(|l| l.split('=').nth(1))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(1001))
}

/// Cancel `jobs` (every task of each).
fn scancel(jobs: &[String]) -> Result<(), EngineError> {
    if jobs.is_empty() {
        return Ok(());
    }
    run(Command::new("scancel").args(jobs)).map(|_| ())
}
