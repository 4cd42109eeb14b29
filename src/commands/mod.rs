//! What each subcommand does, given parsed arguments.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Result;

use crate::config::{self, Loaded};
use crate::engine::{Engine, Plan};
use crate::error::ConfigError;
use crate::stages;

mod export;
mod gc;
mod init;
mod inspect;
mod run;

pub use export::export;
pub use gc::gc;
pub use init::init;
pub use inspect::{dag, doctor, show, show_config, status, verify};
pub use run::{run, CliReporter};

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
        Ok(Session {
            loaded,
            plan,
            engine,
            overrides: overrides.to_vec(),
        })
    }

    /// The config file, absolute.
    pub fn config_file(&self) -> PathBuf {
        std::fs::canonicalize(&self.loaded.file).unwrap_or_else(|_| self.loaded.file.clone())
    }

    /// This config's id among the roots of its store: its file and
    /// overrides (a `--set` sweep point is a config of its own).
    pub fn root_id(&self) -> String {
        let text = format!(
            "{}\n{}",
            self.config_file().display(),
            self.overrides.join("\n")
        );
        blake3::hash(text.as_bytes()).to_hex()[..16].to_string()
    }

    /// Warn about suite checkpoints whose files are identical across steps.
    fn warn_duplicates(&self) -> Result<()> {
        if let Some(suite) = crate::suite::from_config(&self.loaded)? {
            let memo = &self.engine.memo;
            for w in crate::suite::duplicate_steps(&suite, &|p| memo.hash(p).ok()) {
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
