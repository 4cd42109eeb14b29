//! Where `run` computes the plan (`[executor]`): this machine, or a Slurm
//! cluster. Nothing here is part of any key: where an instance runs never
//! changes what it computes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Check;
use crate::error::ConfigError;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ExecutorKind {
    /// A pool of threads on this machine.
    #[default]
    Local,
    /// One Slurm job array per stage, followed to the end.
    Slurm,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[serde(default)]
pub struct ExecutorConfig {
    /// Where `run` computes: `local` (threads on this machine) or `slurm` (job arrays; `run
    /// --executor` overrides).
    pub kind: ExecutorKind,
    pub slurm: SlurmConfig,
}

/// `sbatch` settings: for every task, and per stage.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[serde(default)]
pub struct SlurmConfig {
    /// `sbatch --partition` of every task.
    pub partition: Option<String>,
    /// `sbatch --account` of every task.
    pub account: Option<String>,
    /// `sbatch --qos` of every task.
    pub qos: Option<String>,
    /// Time limit of a task unless its stage sets one (`sbatch --time`).
    pub time: Option<String>,
    /// More `sbatch` arguments, as given (e.g. `["--constraint=a100"]`).
    pub extra_args: Vec<String>,
    /// Largest array submitted at once (0: ask the cluster's `MaxArraySize`).
    pub max_array_size: usize,
    /// Seconds between polls of `squeue` while following.
    pub poll_seconds: f64,
    /// Per-stage resources, e.g. `[executor.slurm.stages.dist] gpus = 1`.
    pub stages: BTreeMap<String, StageResources>,
}

impl Default for SlurmConfig {
    fn default() -> Self {
        SlurmConfig {
            partition: None,
            account: None,
            qos: None,
            time: None,
            extra_args: vec![],
            max_array_size: 0,
            poll_seconds: 2.0,
            stages: BTreeMap::new(),
        }
    }
}

/// What one task of a stage asks Slurm for.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StageResources {
    /// `--cpus-per-task`; the task's threads.
    pub cpus: Option<usize>,
    /// `--mem`, e.g. `"8G"`.
    pub mem: Option<String>,
    /// `--gpus-per-task`; the task runs on the GPU Slurm gives it.
    pub gpus: Option<usize>,
    /// `--time`, e.g. `"02:00:00"`.
    pub time: Option<String>,
}

impl ExecutorConfig {
    pub(super) fn check(&self, ck: &Check) -> Result<(), ConfigError> {
        let s = &self.slurm;
        if !(s.poll_seconds > 0.0 && s.poll_seconds.is_finite()) {
            return Err(ck.bad(
                "executor.slurm.poll_seconds",
                "must be a positive number of seconds".into(),
            ));
        }
        for (stage, r) in &s.stages {
            if r.cpus == Some(0) {
                return Err(ck.bad(
                    &format!("executor.slurm.stages.{stage}.cpus"),
                    "must be at least 1".into(),
                ));
            }
        }
        Ok(())
    }
}

/// What a local run may use (`[resources]`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResourcesConfig {
    /// CUDA devices for model-running instances, one instance per device
    /// at once (absent: every visible device unless `dist.device = "cpu"`;
    /// `[]`: none, models share the cores).
    pub gpus: Option<Vec<u32>>,
}
