//! Which files `explore` may read: the Parquet outputs of this config's
//! current entries, by (stage, file name). Requests name tables, never
//! paths, and a table's real path must stay inside the store: a symlink out
//! of it is refused like a name that is not there.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::super::Session;
use crate::engine::store::view_name;

pub struct Catalog {
    /// The store (or folder), canonical.
    root: PathBuf,
    files: BTreeMap<(String, String), PathBuf>,
}

/// Why a table cannot be read.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Not a table of this config (or its real path leaves the store).
    NotATable,
    /// Listed, but not on disk now: a `run` is rewriting its entry.
    Missing,
}

impl Catalog {
    /// The current entries of the session's config, as `status` sees them
    /// (committed entries only: a manifest is written after its files).
    pub fn from_session(s: &Session) -> Result<Catalog> {
        let store = &s.engine.store;
        let root = std::fs::canonicalize(&store.root)
            .with_context(|| format!("store {}", store.root.display()))?;
        let mut files = BTreeMap::new();
        for (stage, label, m) in super::super::inspect::config_entries(s, &[])? {
            for name in m.outputs.keys().filter(|n| n.ends_with(".parquet")) {
                // Named as in the `current` view (`d32-step512.kl.parquet`).
                files.insert(
                    (stage.to_string(), view_name(&label, name)),
                    store.entry_dir(stage, &m.key).join(name),
                );
            }
        }
        Ok(Catalog { root, files })
    }

    /// A folder of `<stage>/<table>.parquet` (the benchmark's synthetic
    /// stores).
    pub fn from_dir(dir: &Path) -> Result<Catalog> {
        let root = std::fs::canonicalize(dir).with_context(|| dir.display().to_string())?;
        let mut files = BTreeMap::new();
        for st in std::fs::read_dir(&root).with_context(|| root.display().to_string())? {
            let st = st?;
            if !st.file_type()?.is_dir() {
                continue;
            }
            for f in std::fs::read_dir(st.path())? {
                let f = f?;
                let name = f.file_name().to_string_lossy().to_string();
                if name.ends_with(".parquet") {
                    let stage = st.file_name().to_string_lossy().to_string();
                    files.insert((stage, name), f.path());
                }
            }
        }
        Ok(Catalog { root, files })
    }

    /// The table names of a stage, in order.
    pub fn names<'a>(&'a self, stage: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.files
            .range((stage.to_string(), String::new())..)
            .take_while(move |((s, _), _)| s == stage)
            .map(|((_, n), _)| n.as_str())
    }

    pub fn has(&self, stage: &str, name: &str) -> bool {
        self.files
            .contains_key(&(stage.to_string(), name.to_string()))
    }

    /// Every (stage, table) listed.
    pub fn tables(&self) -> impl Iterator<Item = (&str, &str)> {
        self.files.keys().map(|(s, n)| (s.as_str(), n.as_str()))
    }

    /// The file to open for a table: listed, and really inside the root.
    pub fn resolve(&self, stage: &str, name: &str) -> Result<PathBuf, Refusal> {
        let p = self
            .files
            .get(&(stage.to_string(), name.to_string()))
            .ok_or(Refusal::NotATable)?;
        match std::fs::canonicalize(p) {
            Ok(real) if real.starts_with(&self.root) => Ok(real),
            Ok(_) => Err(Refusal::NotATable),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Refusal::Missing),
            Err(_) => Err(Refusal::NotATable),
        }
    }
}
