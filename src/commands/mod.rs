//! What each subcommand does, given parsed arguments.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Result;

use crate::config::{self, Loaded};
use crate::engine::{Engine, Plan};
use crate::error::ConfigError;
use crate::stages;

mod bench;
mod compare;
mod explore;
mod export;
mod gc;
mod init;
mod inspect;
mod run;
mod slurm;

pub use bench::bench;
pub use compare::compare;
pub use explore::explore;
pub use export::export;
pub use gc::gc;
pub use init::init;
pub use inspect::{dag, doctor, show, show_config, status, verify};
pub use run::{run, CliReporter};
pub use slurm::slurm_task;

/// A usage mistake (unknown stage, …): exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// A run that finished with failures: exit code 1, message already printed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RunFailed(pub String);

pub struct Session {
    pub loaded: Loaded,
    pub plan: Plan,
    pub engine: Engine,
    /// The `--set` overrides the config was loaded with.
    pub overrides: Vec<String>,
}

impl Session {
    pub fn open(
        config_path: &Path,
        overrides: &[String],
        cancel: Arc<AtomicBool>,
    ) -> Result<Session> {
        let loaded = config::load_with(config_path, overrides)?;
        let plan = stages::plan(&loaded)?;
        let mut engine = Engine::open(&loaded.store_dir())?;
        engine.cancel = cancel;
        let mut s = Session {
            loaded,
            plan,
            engine,
            overrides: overrides.to_vec(),
        };
        if let Some(root) = s.engine.store.root_of(&s.root_id()) {
            s.engine.previous = root.current;
        }
        Ok(s)
    }

    /// The config file, absolute.
    pub fn config_file(&self) -> PathBuf {
        std::fs::canonicalize(&self.loaded.file).unwrap_or_else(|_| self.loaded.file.clone())
    }

    /// This config's id among the roots of its store: its file and
    /// overrides (a `--set` sweep point is a config of its own).
    pub fn root_id(&self) -> String {
        let what = self.config_overrides();
        let text = format!("{}\n{}", self.config_file().display(), what.join("\n"));
        blake3::hash(text.as_bytes()).to_hex()[..16].to_string()
    }

    /// The overrides that make another config: all but `executor.*` (where
    /// a run computes is not what it computes).
    fn config_overrides(&self) -> Vec<&str> {
        self.overrides
            .iter()
            .map(String::as_str)
            .filter(|o| !o.starts_with("executor."))
            .collect()
    }

    /// This config's views are `<stage>/current.<view>`: the config file's
    /// stem, with the id appended for a `--set` sweep point or when another
    /// config of the same stem already ran on the store. Kept once chosen.
    pub fn view_name(&self) -> String {
        let id = self.root_id();
        let store = &self.engine.store;
        if let Some(root) = store.root_of(&id).filter(|r| !r.view.is_empty()) {
            return root.view;
        }
        let stem = self
            .loaded
            .file
            .file_stem()
            .map_or_else(|| "config".into(), |s| s.to_string_lossy().to_string());
        let taken = store
            .roots()
            .iter()
            .any(|(i, r)| *i != id && r.view == stem);
        if self.config_overrides().is_empty() && !taken {
            stem
        } else {
            format!("{stem}-{}", &id[..8])
        }
    }

    /// The CUDA devices a local run gives model-running instances:
    /// `[resources] gpus`, else every visible one unless `dist.device` is
    /// `cpu`. A listed device that is not visible is a usage error.
    pub fn gpus(&self) -> Result<Vec<u32>> {
        let c = &self.loaded.config;
        let visible = crate::lm::ortlib::visible_gpus();
        match &c.resources.gpus {
            Some(g) => {
                if let Some(bad) = g.iter().find(|&&d| d as usize >= visible.len()) {
                    return Err(UsageError(format!(
                        "resources.gpus in {}: device {bad} is not visible ({} GPUs: {})",
                        self.loaded.file_name(),
                        visible.len(),
                        if visible.is_empty() {
                            "none".to_string()
                        } else {
                            visible.join(", ")
                        }
                    ))
                    .into());
                }
                Ok(g.clone())
            }
            None if c.dist.device == crate::config::Device::Cpu => Ok(vec![]),
            None => Ok((0..visible.len() as u32).collect()),
        }
    }

    /// Checkpoint groups on disk at once: `fetch.max_groups_on_disk` when
    /// fetched models are deleted after use, else no bound.
    pub fn max_groups(&self) -> usize {
        let c = &self.loaded.config;
        match &c.suite {
            Some(su) if su.keep == crate::config::Keep::UntilConsumed => c.fetch.max_groups_on_disk,
            _ => 0,
        }
    }

    /// Warn about suite checkpoints whose files are identical across steps.
    fn warn_duplicates(&self) -> Result<()> {
        if let Some(suite) = crate::suite::from_config(&self.loaded)? {
            let memo = &self.engine.memo;
            // External files by their bytes; fetched models, once fetched,
            // by the outputs of their fetch entry.
            let identity = |c: &crate::suite::Checkpoint| match &c.model {
                crate::suite::ModelRef::File(p) => {
                    crate::suite::file_identity(p, &|f| memo.hash(f).ok())
                }
                crate::suite::ModelRef::Fetched { label } => {
                    let stage = crate::suite::FETCH_STAGE;
                    let key = self.engine.last_key(stage, label)?;
                    Some(self.engine.store.read_manifest(stage, &key)?.output_hash)
                }
                crate::suite::ModelRef::Builtin { .. } => None,
            };
            for w in crate::suite::duplicate_steps(&suite, &identity) {
                tracing::warn!("{w}");
            }
        }
        Ok(())
    }

    /// Each selector (`STAGE` or `STAGE:LABEL-GLOB`) matches the plan.
    fn check_selectors<'a>(&self, selectors: impl IntoIterator<Item = &'a String>) -> Result<()> {
        self.plan
            .check_selectors(selectors)
            .map_err(|e| UsageError(format!("{e} in {}", self.loaded.file_name())).into())
    }
}

pub fn default_jobs() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Exit code for an error: 2 for configuration and usage, 1 otherwise.
pub fn exit_code(e: &anyhow::Error) -> i32 {
    if e.downcast_ref::<ConfigError>().is_some() || e.downcast_ref::<UsageError>().is_some() {
        2
    } else {
        1
    }
}
