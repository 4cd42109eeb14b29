//! The Slurm commands the executor calls: `sbatch`, `squeue`, `scontrol`,
//! `scancel`. Each failure is one line naming the command.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use crate::error::EngineError;

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
pub fn sbatch(script: &Path, args: &[String]) -> Result<String, EngineError> {
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
pub fn task_states(jobs: &[String]) -> Result<HashMap<String, String>, EngineError> {
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
pub fn ended(state: &str) -> bool {
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
pub fn max_array_size() -> Result<usize, EngineError> {
    let out = run(Command::new("scontrol").args(["show", "config"]))?;
    Ok(out
        .lines()
        .find(|l| l.trim_start().starts_with("MaxArraySize"))
        .and_then(|l| l.split('=').nth(1))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(1001))
}

/// Cancel `jobs` (every task of each).
pub fn scancel(jobs: &[String]) -> Result<(), EngineError> {
    if jobs.is_empty() {
        return Ok(());
    }
    run(Command::new("scancel").args(jobs)).map(|_| ())
}
