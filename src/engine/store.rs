//! The artefact store: `<store>/<stage>/<key>/` entries with a `manifest.json`.
//!
//! Invariants that make crashes harmless:
//! - an entry is trusted only if its `manifest.json` parses, names the same
//!   stage and key, and every output it lists has the recorded hash;
//! - outputs are written into `.tmp-<key>-<pid>/`, fsynced, renamed into
//!   place, and the manifest is written (atomically) last;
//! - each entry is computed under its own lock file `<key>.lock`, held with
//!   `flock`, which the kernel releases when the holder dies (even kill -9),
//!   and which the holder deletes before unlocking;
//! - `<stage>/current` is a symlink swapped atomically to a view folder of
//!   symlinks, so readers (DuckDB, polars) never see a half-updated set.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::fsutil::{remove_if_present, sync_dir, tmp_sibling, write_atomic};
use super::hashcache::{hash_file, HashCache, Stamp};
use crate::error::EngineError;

pub const MANIFEST: &str = "manifest.json";
const INDEX: &str = "index.json";
/// The view of the last run on the store; `current.<view>` are configs' own.
pub const CURRENT: &str = "current";

/// What a cache key is made of. Its canonical JSON (sorted maps) is hashed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ingredients {
    pub stage: String,
    pub version: u32,
    pub params: serde_json::Value,
    /// Input name → blake3 of its content (paths are not part of the key, so
    /// moving a project keeps its cache).
    pub inputs: BTreeMap<String, String>,
    /// Upstream instance id → its output hash (early cutoff).
    pub upstream: BTreeMap<String, String>,
}

impl Ingredients {
    pub fn key(&self) -> String {
        let bytes = serde_json::to_vec(self).expect("ingredients serialise");
        blake3::hash(&bytes).to_hex()[..32].to_string()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputFile {
    pub blake3: String,
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub seedconv_version: String,
    pub stage: String,
    pub label: String,
    pub key: String,
    pub ingredients: Ingredients,
    /// Input name → path it was read from (informational, not in the key).
    pub input_paths: BTreeMap<String, PathBuf>,
    pub outputs: BTreeMap<String, OutputFile>,
    /// blake3 over `outputs`; what downstream keys depend on.
    pub output_hash: String,
    pub started_unix: f64,
    pub seconds: f64,
    pub pid: u32,
    /// Stage-specific facts (e.g. row counts, validation errors).
    #[serde(default)]
    pub extra: serde_json::Value,
    /// Where and by what the entry was made (absent in older entries).
    #[serde(default)]
    pub provenance: Option<Provenance>,
    /// Its output files were deleted once every reader had used them
    /// (`Instance::evictable`): still current and fresh, its hashes still
    /// keying downstream; recomputed only when a reader must run again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub evicted: bool,
}

/// Folder of the roots: one file per config that ran on this store.
pub const ROOTS: &str = ".roots";

/// The entries one config's runs made current: its own `current.<view>`
/// folders, the previous entries its `status` compares with, and what `gc`
/// run from another config on the same store keeps.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Root {
    /// The config file, and the `--set` overrides it ran with.
    pub config: PathBuf,
    pub overrides: Vec<String>,
    pub finished_unix: f64,
    /// Its views are `<stage>/current.<view>`.
    pub view: String,
    /// Stage → label → entry key.
    pub current: BTreeMap<String, BTreeMap<String, String>>,
}

impl Root {
    /// Stage → the entry keys this config holds current.
    pub fn entries(&self) -> BTreeMap<String, std::collections::BTreeSet<String>> {
        self.current
            .iter()
            .map(|(stage, labels)| (stage.clone(), labels.values().cloned().collect()))
            .collect()
    }
}

/// The build and machine that computed an entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// `seedconv 0.1.0 (3f2a9c1b0d4e)`, `+dirty` when built from a modified
    /// checkout.
    pub build: String,
    pub host: String,
    pub cpu: String,
    pub threads: usize,
    /// The CUDA device the run assigned the job (local runs with GPUs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<u32>,
}

impl Provenance {
    /// This process on this machine, running a job with `threads` (and
    /// CUDA device `gpu`).
    pub fn here(threads: usize, gpu: Option<u32>) -> Provenance {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        Provenance {
            build: build(),
            host: host.trim().to_string(),
            cpu: cpu_model(),
            threads,
            gpu,
        }
    }
}

/// This machine's CPU: its model name in /proc/cpuinfo, else the
/// architecture.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// This binary's build: version, git commit, and whether the checkout was
/// modified when it was built.
pub fn build() -> String {
    format!(
        "seedconv {} ({}{})",
        env!("CARGO_PKG_VERSION"),
        env!("SEEDCONV_GIT_COMMIT"),
        if env!("SEEDCONV_GIT_DIRTY") == "true" {
            "+dirty"
        } else {
            ""
        }
    )
}

pub fn output_hash(outputs: &BTreeMap<String, OutputFile>) -> String {
    blake3::hash(&serde_json::to_vec(outputs).expect("outputs serialise"))
        .to_hex()
        .to_string()
}

/// The state of one entry on disk.
#[derive(Debug)]
pub enum EntryState {
    Valid(Box<Manifest>),
    /// No entry folder.
    Absent,
    /// Folder without a readable manifest (an interrupted write).
    NoManifest,
    /// Manifest present but an output is missing or differs.
    Corrupt(String),
    /// Outputs deleted on purpose after use; the manifest stands.
    Evicted(Box<Manifest>),
}

/// Hashes of a finished job's outputs and the stamps to memoise them under.
pub type Sealed = (BTreeMap<String, OutputFile>, Vec<(String, Stamp)>);

pub struct Store {
    pub root: PathBuf,
}

/// Where an output appears in the `current` view: as it is for a
/// single-instance stage; `<label>.<file>` for flat outputs of a multi-instance
/// stage (so `current/*.parquet` globs them); `<label>/<path>` for outputs in
/// subfolders (so `{label}/step{N}/model.onnx` is a path template).
pub fn view_name(label: &str, name: &str) -> String {
    if label.is_empty() {
        name.to_string()
    } else if name.contains('/') {
        format!("{label}/{name}")
    } else {
        format!("{label}.{name}")
    }
}

/// Relative paths (with `/`) of every regular file under `dir`; every
/// subfolder is fsynced on the way, so the tree is durable before the
/// entry is renamed into place.
fn collect_files(dir: &Path, prefix: &str, out: &mut Vec<String>) -> std::io::Result<()> {
    for e in fs::read_dir(dir)? {
        let e = e?;
        let name = format!("{prefix}{}", e.file_name().to_string_lossy());
        let t = e.file_type()?;
        if t.is_dir() {
            sync_dir(&e.path())?;
            collect_files(&e.path(), &format!("{name}/"), out)?;
        } else if t.is_file() {
            out.push(name);
        }
    }
    Ok(())
}

/// Exclusive per-entry lock. Dropping it deletes the lock file, then unlocks.
pub struct EntryLock {
    file: Option<File>,
    path: PathBuf,
}

impl EntryLock {
    /// Block until the lock is ours. The lock file may be deleted by the
    /// previous holder between our open and our flock; then we hold a lock on
    /// an orphaned inode and must retry on the new file.
    pub fn acquire(path: &Path) -> Result<EntryLock, EngineError> {
        loop {
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(path)
                .map_err(|e| EngineError::io(path, e))?;
            file.lock().map_err(|e| EngineError::io(path, e))?;
            if Self::still_current(&file, path) {
                return Ok(EntryLock {
                    file: Some(file),
                    path: path.to_path_buf(),
                });
            }
        }
    }

    /// Non-blocking variant: `None` when another process holds it.
    pub fn try_acquire(path: &Path) -> Result<Option<EntryLock>, EngineError> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| EngineError::io(path, e))?;
        match file.try_lock() {
            Ok(()) if Self::still_current(&file, path) => Ok(Some(EntryLock {
                file: Some(file),
                path: path.to_path_buf(),
            })),
            Ok(()) => Ok(None),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => Err(EngineError::io(path, e)),
        }
    }

    fn still_current(file: &File, path: &Path) -> bool {
        match (file.metadata(), fs::metadata(path)) {
            (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
            _ => false,
        }
    }
}

impl Drop for EntryLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
        drop(self.file.take());
    }
}

/// Shared/exclusive lock on a stage folder, for the index read-modify-write.
/// Locks a folder, not a file, so nothing is left behind.
struct DirLock(#[allow(dead_code)] File);

impl DirLock {
    fn exclusive(dir: &Path) -> Result<DirLock, EngineError> {
        let f = File::open(dir).map_err(|e| EngineError::io(dir, e))?;
        f.lock().map_err(|e| EngineError::io(dir, e))?;
        Ok(DirLock(f))
    }
}

impl Store {
    pub fn new(root: impl Into<PathBuf>) -> Store {
        Store { root: root.into() }
    }

    pub fn stage_dir(&self, stage: &str) -> PathBuf {
        self.root.join(stage)
    }
    pub fn entry_dir(&self, stage: &str, key: &str) -> PathBuf {
        self.stage_dir(stage).join(key)
    }
    /// Evictable intermediates of an entry (see `JobCtx::scratch`).
    pub fn scratch_dir(&self, stage: &str, key: &str) -> PathBuf {
        self.root.join(".scratch").join(stage).join(key)
    }
    /// Whether a run holds an entry's lock now (it is computing it).
    pub fn is_held(&self, stage: &str, key: &str) -> bool {
        let Ok(f) = File::open(self.lock_path(stage, key)) else {
            return false;
        };
        matches!(f.try_lock(), Err(fs::TryLockError::WouldBlock))
    }

    pub fn lock_path(&self, stage: &str, key: &str) -> PathBuf {
        self.stage_dir(stage).join(format!("{key}.lock"))
    }

    pub fn read_manifest(&self, stage: &str, key: &str) -> Option<Manifest> {
        let p = self.entry_dir(stage, key).join(MANIFEST);
        let m: Manifest = serde_json::from_slice(&fs::read(p).ok()?).ok()?;
        (m.stage == stage && m.key == key).then_some(m)
    }

    /// Check an entry. Output hashes come from the memo, so this is cheap
    /// unless a file was touched since it was last hashed.
    pub fn check(&self, stage: &str, key: &str, memo: &HashCache) -> EntryState {
        let dir = self.entry_dir(stage, key);
        if !dir.is_dir() {
            return EntryState::Absent;
        }
        let Some(m) = self.read_manifest(stage, key) else {
            return EntryState::NoManifest;
        };
        if m.evicted {
            return EntryState::Evicted(Box::new(m));
        }
        for (name, out) in &m.outputs {
            let p = dir.join(name);
            match memo.hash(&p) {
                Ok(h) if h == out.blake3 => {}
                Ok(_) => {
                    return EntryState::Corrupt(format!(
                        "output {name} differs from its manifest hash"
                    ))
                }
                Err(_) => return EntryState::Corrupt(format!("output {name} is missing")),
            }
        }
        EntryState::Valid(Box::new(m))
    }

    /// Delete an entry's output files, keeping its manifest (marked
    /// evicted first, so a crash in between leaves an entry that reads as
    /// evicted, never as trusted-but-incomplete). Skipped while a run holds
    /// the entry's lock. Returns the bytes freed.
    pub fn evict(&self, stage: &str, key: &str) -> Result<u64, EngineError> {
        let Some(_lock) = EntryLock::try_acquire(&self.lock_path(stage, key))? else {
            return Ok(0);
        };
        let Some(mut m) = self.read_manifest(stage, key) else {
            return Ok(0);
        };
        if m.evicted {
            return Ok(0);
        }
        m.evicted = true;
        let dir = self.entry_dir(stage, key);
        write_atomic(
            &dir.join(MANIFEST),
            &serde_json::to_vec_pretty(&m).expect("manifest serialises"),
        )?;
        let mut freed = 0;
        for (name, f) in &m.outputs {
            let p = dir.join(name);
            if fs::remove_file(&p).is_ok() {
                freed += f.bytes;
            }
        }
        // Subfolders the outputs lived in, now empty.
        for name in m.outputs.keys().filter(|n| n.contains('/')) {
            let mut d = dir.join(name);
            while d.pop() && d != dir && fs::remove_dir(&d).is_ok() {}
        }
        Ok(freed)
    }

    /// A fresh temporary folder for computing `key`; stale ones from killed
    /// runs are removed (the caller holds the entry lock).
    pub fn fresh_tmp(&self, stage: &str, key: &str) -> Result<PathBuf, EngineError> {
        let sdir = self.stage_dir(stage);
        let prefix = format!(".tmp-{key}-");
        if let Ok(rd) = fs::read_dir(&sdir) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with(&prefix) {
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
        let tmp = sdir.join(format!("{prefix}{}", std::process::id()));
        fs::create_dir_all(&tmp).map_err(|e| EngineError::io(&tmp, e))?;
        Ok(tmp)
    }

    /// Hash and fsync every file a job wrote into `tmp` (subfolders
    /// included: output names are relative paths with `/`).
    pub fn seal_outputs(&self, tmp: &Path) -> Result<Sealed, EngineError> {
        let mut files = Vec::new();
        collect_files(tmp, "", &mut files).map_err(|e| EngineError::io(tmp, e))?;
        files.retain(|n| n != MANIFEST);
        files.sort();
        let mut outputs = BTreeMap::new();
        let mut stamps = Vec::new();
        for name in files {
            let p = tmp.join(&name);
            File::open(&p)
                .and_then(|f| f.sync_all())
                .map_err(|e| EngineError::io(&p, e))?;
            let meta = fs::metadata(&p).map_err(|e| EngineError::io(&p, e))?;
            let hash = hash_file(&p)?;
            stamps.push((name.clone(), Stamp::of(&meta)));
            outputs.insert(
                name,
                OutputFile {
                    blake3: hash,
                    bytes: meta.len(),
                },
            );
        }
        Ok((outputs, stamps))
    }

    /// Move a sealed temp folder into place and write its manifest last.
    pub fn commit(
        &self,
        tmp: &Path,
        manifest: &Manifest,
        stamps: &[(String, Stamp)],
        memo: &HashCache,
    ) -> Result<(), EngineError> {
        let dir = self.entry_dir(&manifest.stage, &manifest.key);
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(|e| EngineError::io(&dir, e))?;
        }
        fs::rename(tmp, &dir).map_err(|e| EngineError::io(&dir, e))?;
        let sdir = self.stage_dir(&manifest.stage);
        sync_dir(&sdir).map_err(|e| EngineError::io(&sdir, e))?;
        let bytes = serde_json::to_vec_pretty(manifest).expect("manifest serialises");
        write_atomic(&dir.join(MANIFEST), &bytes)?;
        for (name, stamp) in stamps {
            memo.remember(&dir.join(name), *stamp, &manifest.outputs[name].blake3);
        }
        Ok(())
    }

    pub fn read_index(&self, stage: &str) -> BTreeMap<String, String> {
        fs::read(self.stage_dir(stage).join(INDEX))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Record which entry is current for each label of a stage and refresh
    /// the `current` view. `retain`, when given, drops labels not in it.
    pub fn update_index(
        &self,
        stage: &str,
        updates: &BTreeMap<String, String>,
        retain: Option<&std::collections::BTreeSet<String>>,
    ) -> Result<(), EngineError> {
        self.update_index_refreshing(stage, updates, retain, false)
    }

    /// As `update_index`; `refresh` rewrites the view even when the index
    /// is unchanged (entries of the stage were evicted).
    pub fn update_index_refreshing(
        &self,
        stage: &str,
        updates: &BTreeMap<String, String>,
        retain: Option<&std::collections::BTreeSet<String>>,
        refresh: bool,
    ) -> Result<(), EngineError> {
        let sdir = self.stage_dir(stage);
        fs::create_dir_all(&sdir).map_err(|e| EngineError::io(&sdir, e))?;
        let _guard = DirLock::exclusive(&sdir)?;
        let old = self.read_index(stage);
        let mut index = old.clone();
        index.extend(updates.iter().map(|(k, v)| (k.clone(), v.clone())));
        if let Some(keep) = retain {
            index.retain(|label, _| keep.contains(label));
        }
        let current = sdir.join(CURRENT);
        if index == old && current.exists() && !refresh {
            return Ok(());
        }
        write_atomic(
            &sdir.join(INDEX),
            &serde_json::to_vec_pretty(&index).expect("index serialises"),
        )?;
        self.write_view(stage, CURRENT, &index)
    }

    /// Point `<stage>/current.<view>` at a view of `index` (one config's
    /// own current entries).
    pub fn set_config_view(
        &self,
        stage: &str,
        view: &str,
        index: &BTreeMap<String, String>,
    ) -> Result<(), EngineError> {
        let sdir = self.stage_dir(stage);
        fs::create_dir_all(&sdir).map_err(|e| EngineError::io(&sdir, e))?;
        let _guard = DirLock::exclusive(&sdir)?;
        self.write_view(stage, &format!("{CURRENT}.{view}"), index)
    }

    /// Remove `<stage>/current.<view>` (a forgotten config's view).
    pub fn remove_config_view(&self, stage: &str, view: &str) -> Result<(), EngineError> {
        remove_if_present(&self.stage_dir(stage).join(format!("{CURRENT}.{view}")))
    }

    /// The view folders that `current` and every `current.<view>` of a
    /// stage point at (what `gc` keeps).
    pub fn live_views(&self, stage: &str) -> std::collections::BTreeSet<PathBuf> {
        let sdir = self.stage_dir(stage);
        fs::read_dir(&sdir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| {
                let n = e.file_name().to_string_lossy().to_string();
                n == CURRENT || n.starts_with(&format!("{CURRENT}."))
            })
            .filter_map(|e| fs::read_link(e.path()).ok())
            .map(|t| sdir.join(t))
            .collect()
    }

    /// Write (or reuse) the view folder of `index` and swap the symlink
    /// `<stage>/<link_name>` to it.
    fn write_view(
        &self,
        stage: &str,
        link_name: &str,
        index: &BTreeMap<String, String>,
    ) -> Result<(), EngineError> {
        let sdir = self.stage_dir(stage);
        let mut links: BTreeMap<String, String> = BTreeMap::new();
        for (label, key) in index {
            // An evicted entry's files are gone: nothing to link.
            let Some(m) = self.read_manifest(stage, key).filter(|m| !m.evicted) else {
                continue;
            };
            for name in m.outputs.keys() {
                let view_name = view_name(label, name);
                // Climb out of the view's own subfolders, then out of `.views/<h>`.
                let depth = view_name.matches('/').count();
                links.insert(
                    view_name,
                    format!("{}../../{key}/{name}", "../".repeat(depth)),
                );
            }
        }
        let vhash = blake3::hash(&serde_json::to_vec(&links).expect("links serialise")).to_hex();
        let views = sdir.join(".views");
        let view = views.join(&vhash[..16]);
        if !view.is_dir() {
            let tmp = tmp_sibling(&view);
            fs::create_dir_all(&tmp).map_err(|e| EngineError::io(&tmp, e))?;
            for (name, target) in &links {
                let link = tmp.join(name);
                if let Some(parent) = link.parent() {
                    fs::create_dir_all(parent).map_err(|e| EngineError::io(parent, e))?;
                }
                std::os::unix::fs::symlink(target, &link).map_err(|e| EngineError::io(&link, e))?;
            }
            if let Err(e) = fs::rename(&tmp, &view) {
                let _ = fs::remove_dir_all(&tmp);
                if !view.is_dir() {
                    return Err(EngineError::io(&view, e));
                }
            }
        }
        let link = sdir.join(link_name);
        let tmp_link = tmp_sibling(&link);
        std::os::unix::fs::symlink(format!(".views/{}", &vhash[..16]), &tmp_link)
            .map_err(|e| EngineError::io(&tmp_link, e))?;
        fs::rename(&tmp_link, &link).map_err(|e| EngineError::io(&link, e))?;
        sync_dir(&sdir).map_err(|e| EngineError::io(&sdir, e))
    }

    /// Record `root` as the last run of config `id` (replacing its last).
    pub fn write_root(&self, id: &str, root: &Root) -> Result<(), EngineError> {
        let dir = self.root.join(ROOTS);
        fs::create_dir_all(&dir).map_err(|e| EngineError::io(&dir, e))?;
        let bytes = serde_json::to_vec_pretty(root).expect("roots serialise");
        write_atomic(&dir.join(format!("{id}.json")), &bytes)
    }

    /// Every recorded root, by id; unreadable ones are skipped.
    pub fn roots(&self) -> Vec<(String, Root)> {
        let mut v: Vec<(String, Root)> = fs::read_dir(self.root.join(ROOTS))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let id = e
                    .file_name()
                    .to_string_lossy()
                    .strip_suffix(".json")?
                    .to_string();
                let root = serde_json::from_slice(&fs::read(e.path()).ok()?).ok()?;
                Some((id, root))
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Config `id`'s root, if it ran on this store.
    pub fn root_of(&self, id: &str) -> Option<Root> {
        let p = self.root.join(ROOTS).join(format!("{id}.json"));
        serde_json::from_slice(&fs::read(p).ok()?).ok()
    }

    /// Forget config `id`'s last run.
    pub fn remove_root(&self, id: &str) -> Result<(), EngineError> {
        remove_if_present(&self.root.join(ROOTS).join(format!("{id}.json")))
    }

    /// Stage folders present in the store.
    pub fn stages(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(&self.root)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.file_name().to_string_lossy().to_string())
                    .filter(|n| !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Entry keys (folders that are not temp/view folders) of a stage.
    pub fn entries(&self, stage: &str) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.stage_dir(stage))
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
                    .map(|e| e.file_name().to_string_lossy().to_string())
                    .filter(|n| !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}
